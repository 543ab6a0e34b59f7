"""MLP-Mixer (Tolstikhin et al., 2021), as in the paper's Appendix E.

Parameter names follow the official code so that its checkpoints load unchanged.
Shapes use the paper's letters: B batch, S tokens (patches), C channels (hidden).
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
from flax.linen.dtypes import promote_dtype
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

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


# On CPU, XLA folds a transpose into the dot that reads it, and a dot contracting its left
# operand's leading axis goes to Eigen at about 0.78 of the matmul rate instead of to YNNPACK
# at about 1. An optimization barrier keeps the transpose a copy of its own (an S/32 channel-mixing
# weight gradient: 20 ms against 16, the copy included).


def _transposed(x):
  """x.T, on CPU as an array of its own, for the left operand of a dot."""
  return lax.platform_dependent(x, cpu=lambda x: lax.optimization_barrier(x.T),
                                default=lambda x: x.T)


def _left_transposed_matmul(a, g):
  """a.T @ g, the gradient of a matmul's right operand; on CPU copying the smaller of a, g."""
  def on_cpu(a, g):
    if a.shape[1] <= g.shape[1]:
      return lax.optimization_barrier(a.T) @ g
    return lax.optimization_barrier(lax.optimization_barrier(g.T) @ a).T
  return lax.platform_dependent(a, g, cpu=on_cpu, default=lambda a, g: a.T @ g)


@jax.custom_vjp
def matmul(a, b):
  """a @ b of 2-D arrays, with the gradient of b in the form XLA's CPU runs fastest."""
  return a @ b


def _matmul_fwd(a, b):
  return a @ b, (a, b)


def _matmul_bwd(residuals, g):
  a, b = residuals
  return g @ b.T, _left_transposed_matmul(a, g)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None):
  """lax.dot_general as nn.Dense calls it, through `matmul` where lhs is not sharded."""
  if (dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or precision is not None
      or any(jax.typeof(lhs).sharding.spec)):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision)
  y = matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
  return y.reshape(*lhs.shape[:-1], rhs.shape[-1])


def _patches_SBK(images_BHWC, p: int):
  """Non-overlapping P x P patches, token-major, each flattened in the kernel's (p, q, c) order.

  einops' 'b (h p) (w q) c -> (h w) b (p q c)', except that a global array sharded over its
  batch axis (explicit sharding) keeps that sharding, which a reshape must be told.
  """
  b, h, w, c = images_BHWC.shape
  sharding = jax.typeof(images_BHWC).sharding
  batch_axis = sharding.spec[0] if sharding.spec else None

  def keep_batch_axis(*spec):
    return NamedSharding(sharding.mesh, P(*spec)) if batch_axis else None

  x = jnp.reshape(images_BHWC, (b, h // p, p, w // p, p, c),
                  out_sharding=keep_batch_axis(batch_axis))
  x = jnp.transpose(x, (1, 3, 0, 2, 4, 5))
  return jnp.reshape(x, (-1, b, p * p * c), out_sharding=keep_batch_axis(None, batch_axis))


class Stem(nn.Module):
  """The per-patch linear embedding, as nn.Conv with stride = kernel = P, but one matmul.

  The official code's nn.Conv parameters (kernel P x P x 3 x C, bias C) and function. XLA's CPU
  convolution ran this at 2/3 the speed of the matmul over flattened patches (S/32 training:
  90 ms a step against 59). Returns token-major embeddings x_SBC.
  """
  patch_size: int
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC):
    p = self.patch_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (p, p, images_BHWC.shape[-1], self.hidden_dim))
    bias = self.param('bias', nn.initializers.zeros, (self.hidden_dim,))
    patches_SBK, kernel, bias = promote_dtype(_patches_SBK(images_BHWC, p), kernel, bias,
                                              dtype=self.dtype)
    kernel = kernel.reshape(-1, self.hidden_dim)
    return dot_general(patches_SBK, kernel, (((2,), (0,)), ((), ()))) + bias


class TokenDense(nn.Module):
  """nn.Dense over the first axis: the same parameters, no transposes."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (x.shape[0], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    bias = bias.reshape(-1, *[1] * (x.ndim - 1))
    if x.ndim == 2:
      return matmul(_transposed(kernel), x) + bias
    return jnp.tensordot(kernel.T, x, axes=1) + bias


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense over the last axis, or the first with `over_first_axis`."""
  mlp_dim: int
  over_first_axis: bool = False
  approximate_gelu: bool = True  # tanh GELU, as the official code; False: exact, as PyTorch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # As one 2-D matmul per Dense: XLA's CPU backward of a 3-D Dense is about 1.5x slower.
    # A global array sharded over its batch axis (explicit sharding, outside shard_map) stays
    # 3-D: no sharding can describe the batch axis merged into another.
    n = x.shape[0] if self.over_first_axis else x.shape[-1]
    y = x
    if not any(jax.typeof(x).sharding.spec):
      y = x.reshape(n, -1) if self.over_first_axis else x.reshape(-1, n)
    dense = functools.partial(TokenDense, dtype=self.dtype) if self.over_first_axis else \
        functools.partial(nn.Dense, dtype=self.dtype, dot_general=dot_general)
    y = dense(self.mlp_dim, name='Dense_0')(y)
    y = nn.gelu(y, approximate=self.approximate_gelu)
    return dense(n, name='Dense_1')(y).reshape(x.shape)


class MixerBlock(nn.Module):
  """Token mixing then channel mixing, each pre-norm with a residual.

  Activations are token-major, x_SBC: token mixing is then a matmul over the leading axis, with
  none of the two transposes per block of the (B, S, C) formulation.
  """
  tokens_mlp_dim: int
  channels_mlp_dim: int
  drop_rate: float = 0.0  # stochastic depth: drop each residual branch per example
  approximate_gelu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_SBC, train: bool = False):
    # One mask per example, rescaled by 1/(1-rate): the whole branch is kept or dropped.
    drop_path = nn.Dropout(self.drop_rate, broadcast_dims=(0, 2), deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x_SBC)
    y = MlpBlock(self.tokens_mlp_dim, True, self.approximate_gelu, self.dtype,
                 name='token_mixing')(y)
    x_SBC = x_SBC + drop_path(y)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(x_SBC)
    y = MlpBlock(self.channels_mlp_dim, False, self.approximate_gelu, self.dtype,
                 name='channel_mixing')(y)
    return x_SBC + drop_path(y)


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

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False):
    _, height, width, _ = images_BHWC.shape
    p = self.patch_size
    if height % p or width % p:
      raise UserError(
          f'Image size {height}x{width} is not a multiple of the patch size {p}: '
          f'use a resolution divisible by {p} (e.g. {max(height // p, 1) * p}).')
    x_SBC = Stem(p, self.hidden_dim, self.dtype, name='stem')(images_BHWC)
    block = nn.remat(MixerBlock, static_argnums=(2,)) if self.remat else MixerBlock
    for i in range(self.num_blocks):
      rate = self.stoch_depth * i / max(self.num_blocks - 1, 1)
      x_SBC = block(self.tokens_mlp_dim, self.channels_mlp_dim, drop_rate=rate,
                    approximate_gelu=self.approximate_gelu, dtype=self.dtype,
                    name=f'MixerBlock_{i}')(x_SBC, train)
    x_SBC = nn.LayerNorm(dtype=self.dtype, name='pre_head_layer_norm')(x_SBC)
    x_BC = jnp.mean(x_SBC, axis=0)
    if self.num_classes:
      x_BC = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                      name='head')(x_BC)
    return x_BC.astype(jnp.float32)


def create_model(variant: str, num_classes: Optional[int] = 1000, **overrides) -> MlpMixer:
  """A Table 1 variant by name ('B/16' or 'Mixer-B/16'); keyword overrides win."""
  name = variant.removeprefix('Mixer-')
  if name not in VARIANTS:
    raise UserError(f'Unknown Mixer variant {variant!r}: choose one of {", ".join(VARIANTS)}.')
  return MlpMixer(num_classes=num_classes, **{**VARIANTS[name], **overrides})
