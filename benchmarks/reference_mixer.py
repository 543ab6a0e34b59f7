"""The straightforward Appendix-E Mixer, as the official Flax code writes it: the baseline.

Token mixing transposes the (B, S, C) activations, applies nn.Dense over the last axis and
transposes back, in every block. Same parameter tree, initialisation and options as
mixer_jax.models.MlpMixer, so the same parameters run in both: benchmarks time the two in one
run, and the tests check that they compute the same function.
"""
import einops
import flax.linen as nn
import jax.numpy as jnp

from mixer_jax import models


class MlpBlock(nn.Module):
  mlp_dim: int
  approximate_gelu: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.mlp_dim, dtype=self.dtype)(x)
    y = nn.gelu(y, approximate=self.approximate_gelu)
    return nn.Dense(x.shape[-1], dtype=self.dtype)(y)


class MixerBlock(nn.Module):
  tokens_mlp_dim: int
  channels_mlp_dim: int
  drop_rate: float = 0.0
  approximate_gelu: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    drop_path = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2), deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = jnp.swapaxes(y, 1, 2)
    y = MlpBlock(self.tokens_mlp_dim, self.approximate_gelu, self.dtype, name='token_mixing')(y)
    y = jnp.swapaxes(y, 1, 2)
    x = x + drop_path(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = MlpBlock(self.channels_mlp_dim, self.approximate_gelu, self.dtype,
                 name='channel_mixing')(y)
    return x + drop_path(y)


class ReferenceMlpMixer(models.MlpMixer):
  """models.MlpMixer's fields and parameters; the official code's computation."""

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    p = self.patch_size
    x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), dtype=self.dtype, name='stem')(images)
    x = einops.rearrange(x, 'n h w c -> n (h w) c')
    for i in range(self.num_blocks):
      rate = self.stoch_depth * i / max(self.num_blocks - 1, 1)
      x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, rate, self.approximate_gelu,
                     self.dtype, name=f'MixerBlock_{i}')(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name='pre_head_layer_norm')(x)
    x = jnp.mean(x, axis=1)
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='head')(x)
    return x.astype(jnp.float32)


def create_reference_model(variant: str, num_classes=1000, **overrides) -> ReferenceMlpMixer:
  model = models.create_model(variant, num_classes, **overrides)
  return ReferenceMlpMixer(**{f: getattr(model, f) for f in model.__dataclass_fields__
                              if f not in ('parent', 'name')})
