"""MLP-Mixer (Tolstikhin et al., 2021), as in the paper's Appendix E.

Parameter names follow the official code so that its checkpoints load unchanged. Shapes use the
paper's letters: B batch, S tokens (patches), C channels (hidden). This is the plain
formulation; `mixer_jax.formulations` computes the same function with the same parameters in
the ways measured to be faster on a given platform.
"""
from typing import Any, Optional

import einops
import flax.linen as nn
import jax.numpy as jnp

from mixer_jax.errors import UserError

# Paper Table 1: blocks N, patch P, hidden C, token-MLP D_S, channel-MLP D_C.
VARIANTS = {
    'S/32': dict(num_blocks=8, patch_size=32, hidden_dim=512, tokens_mlp_dim=256, channels_mlp_dim=2048),
    'S/16': dict(num_blocks=8, patch_size=16, hidden_dim=512, tokens_mlp_dim=256, channels_mlp_dim=2048),
    'B/32': dict(num_blocks=12, patch_size=32, hidden_dim=768, tokens_mlp_dim=384, channels_mlp_dim=3072),
    'B/16': dict(num_blocks=12, patch_size=16, hidden_dim=768, tokens_mlp_dim=384, channels_mlp_dim=3072),
    'L/32': dict(num_blocks=24, patch_size=32, hidden_dim=1024, tokens_mlp_dim=512, channels_mlp_dim=4096),
    'L/16': dict(num_blocks=24, patch_size=16, hidden_dim=1024, tokens_mlp_dim=512, channels_mlp_dim=4096),
    'H/14': dict(num_blocks=32, patch_size=14, hidden_dim=1280, tokens_mlp_dim=640, channels_mlp_dim=5120),
}


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense over the last axis."""
  mlp_dim: int
  approximate_gelu: bool = True  # tanh GELU, as the official code; False: exact, as PyTorch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.mlp_dim, dtype=self.dtype)(x)
    y = nn.gelu(y, approximate=self.approximate_gelu)
    return nn.Dense(x.shape[-1], dtype=self.dtype)(y)


class MixerBlock(nn.Module):
  """Token mixing then channel mixing, each pre-norm with a residual."""
  tokens_mlp_dim: int
  channels_mlp_dim: int
  drop_rate: float = 0.0  # stochastic depth: drop each residual branch per example
  approximate_gelu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BSC, train: bool = False):
    # One mask per example, rescaled by 1/(1-rate): the whole branch is kept or dropped.
    drop_path = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2), deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x_BSC)
    y = jnp.swapaxes(y, 1, 2)
    y = MlpBlock(self.tokens_mlp_dim, self.approximate_gelu, self.dtype, name='token_mixing')(y)
    x_BSC = x_BSC + drop_path(jnp.swapaxes(y, 1, 2))
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(x_BSC)
    y = MlpBlock(self.channels_mlp_dim, self.approximate_gelu, self.dtype,
                 name='channel_mixing')(y)
    return x_BSC + drop_path(y)


class MlpMixer(nn.Module):
  """Per-patch embedding, N Mixer blocks, global average pooling, linear head."""
  num_classes: Optional[int]  # None or 0: return the pooled features
  num_blocks: int
  patch_size: int
  hidden_dim: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  stoch_depth: float = 0.0  # drop rate of the last block; rises linearly from 0 at the first
  approximate_gelu: bool = True  # tanh GELU, as the official code; False: exact, as timm
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32
  remat: bool = False  # recompute each block's activations in the backward pass: less memory

  # The activation layout: tokens on axis 1, x_BSC. A formulation may keep another layout by
  # overriding `embed`, `block` and `token_axis` together.
  token_axis = 1

  def embed(self, images_BHWC):
    """The per-patch linear embedding, a P x P convolution with stride P, as tokens x_BSC."""
    p = self.patch_size
    x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), dtype=self.dtype,
                name='stem')(images_BHWC)
    return einops.rearrange(x, 'b h w c -> b (h w) c')  # row-major over the patch grid

  def block(self):
    return MixerBlock

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False):
    _, height, width, _ = images_BHWC.shape
    p = self.patch_size
    if height % p or width % p:
      raise UserError(
          f'Image size {height}x{width} is not a multiple of the patch size {p}: '
          f'use a resolution divisible by {p} (e.g. {max(height // p, 1) * p}).')
    x = self.embed(images_BHWC)
    block = nn.remat(self.block(), static_argnums=(2,)) if self.remat else self.block()
    for i in range(self.num_blocks):
      rate = self.stoch_depth * i / max(self.num_blocks - 1, 1)
      x = block(self.tokens_mlp_dim, self.channels_mlp_dim, drop_rate=rate,
                approximate_gelu=self.approximate_gelu, dtype=self.dtype,
                name=f'MixerBlock_{i}')(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name='pre_head_layer_norm')(x)
    x_BC = jnp.mean(x, axis=self.token_axis)
    if self.num_classes:
      x_BC = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                      name='head')(x_BC)
    return x_BC.astype(jnp.float32)


def variant_name(variant: str) -> str:
  """'B/16' for 'B/16' or 'Mixer-B/16': the key of VARIANTS."""
  return variant.removeprefix('Mixer-')


def create_model(variant: str, num_classes: Optional[int] = 1000, **overrides) -> MlpMixer:
  """A Table 1 variant by name ('B/16' or 'Mixer-B/16'); keyword overrides win, but None (a
  recipe's unset size) keeps the variant's."""
  name = variant_name(variant)
  if name not in VARIANTS:
    raise UserError(f'Unknown Mixer variant {variant!r}: choose one of {", ".join(VARIANTS)}.')
  given = {k: v for k, v in overrides.items() if v is not None}
  return MlpMixer(num_classes=num_classes, **{**VARIANTS[name], **given})
