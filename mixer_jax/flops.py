"""Analytic FLOP counts of an MLP-Mixer (2 FLOPs per multiply-add, matmuls only).

LayerNorm, GELU and the residual adds are a fraction of a percent of the total and are left out,
as in the paper's and timm's counts.
"""
from mixer_jax.models import MlpMixer


def forward_flops(model: MlpMixer, resolution: int, channels: int = 3) -> int:
  """FLOPs of one image's forward pass at `resolution` x `resolution`."""
  p, c = model.patch_size, model.hidden_dim
  s = (resolution // p) ** 2
  stem = 2 * s * p * p * channels * c
  token_mixing = 2 * c * (s * model.tokens_mlp_dim * 2)
  channel_mixing = 2 * s * (c * model.channels_mlp_dim * 2)
  head = 2 * c * (model.num_classes or 0)
  return stem + model.num_blocks * (token_mixing + channel_mixing) + head


def train_step_flops(model: MlpMixer, resolution: int, channels: int = 3) -> int:
  """FLOPs of one image in a training step: forward plus a backward of twice its cost."""
  return 3 * forward_flops(model, resolution, channels)
