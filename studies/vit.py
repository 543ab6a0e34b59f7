"""A plain Vision Transformer (Dosovitskiy et al., 2021) for the token-count scaling study.

ViT-B/16 by default: patch embedding, a class token and learned position embeddings, pre-norm
encoder blocks (multi-head self-attention, then a GELU MLP), the class token's final LayerNorm
and a zero-initialised head. Attention over N = S + 1 tokens costs O(N^2 C) per block where
everything else costs O(N C^2): its cost grows quadratically with the token count.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

B16 = dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072)


class EncoderBlock(nn.Module):
  """LayerNorm -> self-attention -> residual, LayerNorm -> Dense-GELU-Dense -> residual."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BNC):
    y = nn.LayerNorm(dtype=self.dtype)(x_BNC)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(y, y)
    x_BNC = x_BNC + y
    y = nn.LayerNorm(dtype=self.dtype)(x_BNC)
    y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype)(y))
    return x_BNC + nn.Dense(x_BNC.shape[-1], dtype=self.dtype)(y)


class ViT(nn.Module):
  num_classes: Optional[int] = 1000  # None or 0: the class token's features
  patch_size: int = 16
  hidden_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False):
    del train  # no dropout
    p = self.patch_size
    x = nn.Conv(self.hidden_dim, (p, p), (p, p), padding='VALID', dtype=self.dtype,
                name='embedding')(images_BHWC)
    b, h, w, c = x.shape
    cls = self.param('cls', nn.initializers.zeros, (1, 1, c)).astype(x.dtype)
    x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x.reshape(b, h * w, c)], axis=1)
    x = x + self.param('pos_embedding', nn.initializers.normal(0.02), (1, h * w + 1, c)).astype(x.dtype)
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dtype, name=f'encoderblock_{i}')(x)
    x = nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x[:, 0])
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='head')(x)
    return x.astype(jnp.float32)


def forward_flops(model: ViT, resolution: int, channels: int = 3) -> int:
  """FLOPs of one image's forward pass (2 per multiply-add, matmuls only, as mixer_jax.flops)."""
  p, c = model.patch_size, model.hidden_dim
  s = (resolution // p) ** 2
  n = s + 1  # the class token
  embedding = 2 * s * p * p * channels * c
  projections = 2 * n * c * 4 * c  # queries, keys, values and the output projection
  attention = 2 * 2 * n * n * c  # scores Q K^T and their weighted sum of V, over all heads
  mlp = 2 * n * c * model.mlp_dim * 2
  head = 2 * c * (model.num_classes or 0)
  return embedding + model.num_layers * (projections + attention + mlp) + head
