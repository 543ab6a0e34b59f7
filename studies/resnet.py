"""The studies' convolutional baseline: a small pre-activation ResNet (ResNet-v2, as BiT's).

The paper compares Mixer-B/16 with BiT's ResNet-50x1: pre-activation residual units, GroupNorm
and weight-standardised convolutions. This keeps those and sizes the network for the data:
basic 3x3 units (as CIFAR ResNets), `stage_sizes` units per stage, `width` channels in the first
stage doubling at each later one (which halves the resolution). GroupNorm rather than BatchNorm
also keeps the model a pure function of its parameters, which the trainer's steps expect.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class StdConv(nn.Conv):
  """A convolution whose every filter is standardised to zero mean and unit variance (BiT)."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == 'kernel':
      mean = value.mean(axis=(0, 1, 2), keepdims=True)
      value = (value - mean) / jnp.sqrt(value.var(axis=(0, 1, 2), keepdims=True) + 1e-10)
    return value


def _group_norm(channels: int, dtype, name=None):
  # BiT's 32 groups, fewer for narrow layers so that each group keeps at least 4 channels.
  return nn.GroupNorm(num_groups=max(1, min(32, channels // 4)), dtype=dtype, name=name)


class PreActUnit(nn.Module):
  """GroupNorm -> ReLU -> 3x3 conv, twice, plus the input (projected where the shape changes)."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_group_norm(x.shape[-1], self.dtype)(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = StdConv(self.features, (1, 1), self.strides, use_bias=False, dtype=self.dtype,
                         name='proj')(y)
    y = StdConv(self.features, (3, 3), self.strides, use_bias=False, dtype=self.dtype)(y)
    y = nn.relu(_group_norm(self.features, self.dtype)(y))
    return shortcut + StdConv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)


class ResNet(nn.Module):
  """Stem, stages of pre-activation units, GroupNorm -> ReLU -> global mean -> zero-init head."""
  num_classes: int
  stage_sizes: Sequence[int] = (1, 1, 1)
  width: int = 32
  imagenet_stem: bool = False  # 7x7/2 conv and 3x3/2 max-pool (ImageNet sizes); else 3x3/1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False):
    del train  # no dropout or batch statistics
    if self.imagenet_stem:
      x = StdConv(self.width, (7, 7), 2, dtype=self.dtype, name='stem')(images_BHWC)
      x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
    else:
      x = StdConv(self.width, (3, 3), dtype=self.dtype, name='stem')(images_BHWC)
    for stage, units in enumerate(self.stage_sizes):
      for unit in range(units):
        x = PreActUnit(self.width * 2 ** stage, 2 if stage and not unit else 1, self.dtype,
                       name=f'stage{stage}_unit{unit}')(x)
    x = nn.relu(_group_norm(x.shape[-1], self.dtype, name='pre_head_norm')(x))
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                 name='head')(jnp.mean(x, axis=(1, 2)))
    return x.astype(jnp.float32)


def build(config, num_classes: int) -> ResNet:
  """The trainer's `build` for a config with a `resnet` block (stage_sizes, width, imagenet_stem)."""
  return ResNet(num_classes=num_classes, stage_sizes=tuple(config.resnet.stage_sizes),
                width=config.resnet.width, imagenet_stem=config.resnet.imagenet_stem,
                dtype=jnp.dtype(config.dtype))
