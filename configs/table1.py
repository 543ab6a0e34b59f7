"""The `model` block of the recipes built on a Table 1 variant (finetune, pretrain_*, synthetic)."""
import ml_collections

from mixer_jax.validation import MODEL_SIZES


def model() -> ml_collections.ConfigDict:
  """The GELU, remat, and the five sizes unset: a size set (--config.model.patch_size=8)
  replaces the variant's."""
  return ml_collections.ConfigDict(dict(
      approximate_gelu=True,  # tanh, as the official code; False: exact, as timm's weights
      remat=False,  # recompute each block's activations in the backward pass: less memory
      **{size: ml_collections.config_dict.placeholder(int) for size in MODEL_SIZES}))
