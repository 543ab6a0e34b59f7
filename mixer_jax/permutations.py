"""Fixed pixel permutations of the input (paper section 3.4) and the Mixer weights that absorb them.

A permutation is one order of the H*W pixel positions (row-major), shared by every image, in
training and evaluation alike, and moves each pixel's channels together:
`permuted.reshape(-1, C) == image.reshape(-1, C)[order]`.

- `original`: the identity.
- `patch_pixel`: the P x P patches in a shuffled order, and the pixels inside every patch
  permuted by one permutation shared by all patches.
- `global`: all pixel positions shuffled.

`permute_mixer_params` is why a Mixer's `original` and `patch_pixel` curves coincide: permuting
the stem kernel's pixel positions and the token-mixing weights as the data were permuted gives,
on the permuted images, exactly the logits of the original model on the originals.
"""
import numpy as np

from mixer_jax.errors import UserError

KINDS = ('original', 'patch_pixel', 'global')


def patch_pixel_orders(image_size: int, patch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(patch order (S,), in-patch pixel order (P*P,)) of the `patch_pixel` permutation."""
  if image_size % patch_size:
    raise UserError(f'Image size {image_size} is not a multiple of the permutation\'s patch size '
                    f'{patch_size}: use a divisor of {image_size}.')
  rng = np.random.default_rng(seed)
  return rng.permutation((image_size // patch_size) ** 2), rng.permutation(patch_size ** 2)


def pixel_order(kind: str, image_size: int, patch_size: int, seed: int) -> np.ndarray:
  """For each row-major pixel position of the permuted image, the position it is taken from."""
  if kind == 'original':
    return np.arange(image_size ** 2)
  if kind == 'global':
    return np.random.default_rng(seed).permutation(image_size ** 2)
  if kind == 'patch_pixel':
    patches, pixels = patch_pixel_orders(image_size, patch_size, seed)
    g, p = image_size // patch_size, patch_size
    # position[k, j]: the row-major position of pixel j (row-major in the patch) of patch k.
    position = np.arange(image_size ** 2).reshape(g, p, g, p).transpose(0, 2, 1, 3).reshape(g * g, p * p)
    order = np.empty(image_size ** 2, np.int64)
    order[position] = position[patches][:, pixels]
    return order
  raise UserError(f'Unknown permutation {kind!r}: use one of {", ".join(KINDS)}.')


def permute(images, order):
  """Images (..., H, W, C), NumPy or JAX, with their pixel positions taken in `order`."""
  *lead, h, w, c = images.shape
  return images.reshape(*lead, h * w, c)[..., order, :].reshape(images.shape)


def permute_mixer_params(params, patch_order, pixel_order_in_patch):
  """Mixer parameters whose logits on `patch_pixel`-permuted images equal `params`' on originals.

  The stem kernel's P x P positions take the in-patch order (each token then embeds as its
  source patch did); `token_mixing/Dense_0`'s rows and `Dense_1`'s columns and bias take the
  patch order (each token is then mixed as its source token was). LayerNorm and the channel MLP
  act per token and the mean over tokens ignores their order, so nothing else changes.
  """
  kernel = params['stem']['kernel']
  p = kernel.shape[0]
  stem = kernel.reshape(p * p, *kernel.shape[2:])[pixel_order_in_patch].reshape(kernel.shape)
  out = {**params, 'stem': {**params['stem'], 'kernel': stem}}
  for name, block in params.items():
    if name.startswith('MixerBlock_'):
      dense_0, dense_1 = block['token_mixing']['Dense_0'], block['token_mixing']['Dense_1']
      out[name] = {**block, 'token_mixing': {
          'Dense_0': {'kernel': dense_0['kernel'][patch_order], 'bias': dense_0['bias']},
          'Dense_1': {'kernel': dense_1['kernel'][:, patch_order],
                      'bias': dense_1['bias'][patch_order]}}}
  return out
