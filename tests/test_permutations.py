"""mixer_jax/permutations.py: the study's fixed pixel permutations and the weights that absorb them."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import digits
from mixer_jax import input_pipeline, models, permutations
from mixer_jax.errors import UserError


@pytest.mark.parametrize('image_size,patch_size', [(16, 4), (12, 4), (32, 8), (8, 1)])
@pytest.mark.parametrize('kind', ['patch_pixel', 'global'])
def test_each_permutation_is_a_bijection_fixed_by_its_seed(kind, image_size, patch_size):
  order = permutations.pixel_order(kind, image_size, patch_size, seed=0)
  np.testing.assert_array_equal(np.sort(order), np.arange(image_size ** 2))
  np.testing.assert_array_equal(order, permutations.pixel_order(kind, image_size, patch_size, 0))
  assert not np.array_equal(order, permutations.pixel_order(kind, image_size, patch_size, 1))
  assert not np.array_equal(order, np.arange(image_size ** 2))
  np.testing.assert_array_equal(permutations.pixel_order('original', image_size, patch_size, 0),
                                np.arange(image_size ** 2))


def test_patch_pixel_moves_whole_patches_with_one_in_patch_order():
  size, p = 12, 3
  rows, cols = np.divmod(np.arange(size * size), size)
  # Each pixel holds (its source patch, its place in that patch, a colour channel).
  image = np.stack([(rows // p) * (size // p) + cols // p, (rows % p) * p + cols % p,
                    rows * size + cols], axis=-1).reshape(size, size, 3)
  shuffled = permutations.permute(image, permutations.pixel_order('patch_pixel', size, p, 7))
  patches = shuffled.reshape(size // p, p, size // p, p, 3).transpose(0, 2, 1, 3, 4)
  patches = patches.reshape(-1, p * p, 3)
  sources = patches[:, :, 0]
  assert np.all(sources == sources[:, :1])  # every patch comes whole from one source patch
  np.testing.assert_array_equal(np.sort(sources[:, 0]), np.arange((size // p) ** 2))
  assert np.all(patches[:, :, 1] == patches[:1, :, 1])  # one in-patch order for all patches
  assert sorted(patches[0, :, 1]) == list(range(p * p))
  # Channels travel together: channel 2 still names the pixel that channels 0 and 1 describe.
  np.testing.assert_array_equal(shuffled.reshape(-1, 3), image.reshape(-1, 3)[shuffled[..., 2].ravel()])
  # A global permutation scatters patches.
  scattered = permutations.permute(image, permutations.pixel_order('global', size, p, 7))
  scattered = scattered.reshape(size // p, p, size // p, p, 3).transpose(0, 2, 1, 3, 4)
  assert np.mean(np.ptp(scattered.reshape(-1, p * p, 3)[:, :, 0], axis=1) > 0) > 0.9


def random_mixer_params(model, image_size, seed):
  """Every parameter random (biases, LayerNorm and head included), so each one is exercised."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes['params'])


@pytest.mark.parametrize('image_size,patch_size', [(8, 2), (16, 4), (24, 8), (12, 4)])
def test_permuted_weights_on_permuted_images_give_the_original_logits(image_size, patch_size):
  model = models.MlpMixer(num_classes=7, num_blocks=2, patch_size=patch_size, hidden_dim=16,
                          tokens_mlp_dim=12, channels_mlp_dim=24)
  params = random_mixer_params(model, image_size, seed=image_size)
  images = np.random.default_rng(3).uniform(-1, 1, (5, image_size, image_size, 3)).astype(np.float32)
  patch_order, pixel_order = permutations.patch_pixel_orders(image_size, patch_size, seed=11)
  order = permutations.pixel_order('patch_pixel', image_size, patch_size, seed=11)
  shuffled = permutations.permute(images, order)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))

  logits = np.asarray(apply(params, images))
  permuted = permutations.permute_mixer_params(params, patch_order, pixel_order)
  assert np.abs(logits).max() > 1  # a non-trivial function
  np.testing.assert_allclose(np.asarray(apply(permuted, shuffled)), logits, rtol=1e-5, atol=1e-5)
  # Neither half alone, nor the original weights, gives those logits on the shuffled images.
  for wrong in (params, permutations.permute_mixer_params(params, patch_order, np.arange(patch_size ** 2)),
                permutations.permute_mixer_params(params, np.arange(len(patch_order)), pixel_order)):
    assert np.abs(np.asarray(apply(wrong, shuffled)) - logits).max() > 1e-2


def permuted_config(kind):
  config = digits.get_config()
  config.input_permutation = ml_collections.ConfigDict(dict(kind=kind, patch_size=4, seed=5))
  return config


@pytest.mark.parametrize('kind', ['patch_pixel', 'global'])
def test_the_pipeline_permutes_training_and_evaluation_images_alike(kind):
  """Permuted batches are the plain batches (same shifts) with their pixels in one fixed order."""
  plain, shuffled = digits.get_config(), permuted_config(kind)
  order = permutations.pixel_order(kind, 16, 4, seed=5)
  first = lambda ds: next(ds.as_numpy_iterator())
  train_plain = first(input_pipeline.create_train_dataset(plain, 3, 0, 1))
  train_shuffled = first(input_pipeline.create_train_dataset(shuffled, 3, 0, 1))
  np.testing.assert_array_equal(train_shuffled['label'], train_plain['label'])
  np.testing.assert_array_equal(train_shuffled['image'],
                                permutations.permute(train_plain['image'], order))
  eval_plain = first(input_pipeline.create_eval_dataset(plain, 'test', 0, 1))
  eval_shuffled = first(input_pipeline.create_eval_dataset(shuffled, 'test', 0, 1))
  np.testing.assert_array_equal(eval_shuffled['image'],
                                permutations.permute(eval_plain['image'], order))
  assert not np.array_equal(eval_shuffled['image'], eval_plain['image'])


def test_unknown_permutation_or_misfit_patch_is_a_clear_error():
  with pytest.raises(UserError, match="Unknown permutation 'rotate': use one of original, "
                     'patch_pixel, global'):
    permutations.pixel_order('rotate', 16, 4, 0)
  with pytest.raises(UserError, match='Image size 16 is not a multiple of .* patch size 5'):
    permutations.pixel_order('patch_pixel', 16, 5, 0)
