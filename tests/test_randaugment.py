"""Each RandAugment op does what its name says; the policy is seeded and shape-preserving."""
import numpy as np
import pytest
import tensorflow as tf

from mixer_jax import randaugment as ra

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (24, 32, 3)).astype(np.uint8)


def run(op, image=IMAGE, *args):
  out = op(tf.constant(image), *args).numpy()
  assert out.dtype == np.uint8 and out.shape == image.shape
  return out


def grey(image):  # tf.image.rgb_to_grayscale's weights
  return image.astype(np.float64) @ [0.2989, 0.587, 0.114]


@pytest.mark.parametrize('op, neutral', [
    (ra.rotate, 0.0), (ra.shear_x, 0.0), (ra.shear_y, 0.0), (ra.translate_x, 0.0),
    (ra.translate_y, 0.0), (ra.solarize, 256), (ra.posterize, 8), (ra.color, 1.0),
    (ra.contrast, 1.0), (ra.brightness, 1.0), (ra.sharpness, 1.0)])
def test_ops_at_their_neutral_argument_are_the_identity(op, neutral):
  np.testing.assert_array_equal(run(op, IMAGE, neutral), IMAGE)


def test_identity():
  np.testing.assert_array_equal(run(ra.identity), IMAGE)


def test_auto_contrast_stretches_each_channel_to_the_full_range():
  dull = (100 + IMAGE // 8).astype(np.uint8)  # values 100..131
  out = run(ra.auto_contrast, dull)
  assert (out.min(axis=(0, 1)) == 0).all() and (out.max(axis=(0, 1)) == 255).all()
  # Monotone: the order of values within a channel is kept.
  c = dull[..., 0].ravel()
  assert (np.diff(out[..., 0].ravel()[np.argsort(c, kind='stable')].astype(int)) >= 0).all()


def test_equalize_matches_pil():
  image_module = pytest.importorskip('PIL.Image')
  ops = pytest.importorskip('PIL.ImageOps')
  skewed = (IMAGE.astype(np.float64) ** 2 / 255).astype(np.uint8)  # most values near 0
  expected = np.asarray(ops.equalize(image_module.fromarray(skewed)))
  np.testing.assert_array_equal(run(ra.equalize, skewed), expected)
  assert run(ra.equalize, skewed).mean() > skewed.mean() + 30


def test_rotate_moves_a_pixel_counter_clockwise_about_the_centre():
  image = np.zeros((21, 21, 3), np.uint8)
  image[10, 16] = 255  # right of the centre (10, 10)
  out = run(ra.rotate, image, 90.0)
  assert tuple(np.argwhere(out[..., 0] == 255)[0]) == (4, 10)  # now above it
  assert run(ra.rotate, image, 45.0)[0, 0, 0] == ra.FILL  # corners come from outside: grey


def test_shear_and_translate_move_pixels_as_documented():
  image = np.zeros((20, 20, 3), np.uint8)
  image[10, 5] = 255
  assert tuple(np.argwhere(run(ra.translate_x, image, 3.0)[..., 0] == 255)[0]) == (10, 8)
  assert tuple(np.argwhere(run(ra.translate_y, image, -4.0)[..., 0] == 255)[0]) == (6, 5)
  # shear_x: output (x, y) reads input (x + 0.2 y, y), so input x=5 at y=10 lands at x=3.
  assert tuple(np.argwhere(run(ra.shear_x, image, 0.2)[..., 0] == 255)[0]) == (10, 3)
  image = np.zeros((20, 20, 3), np.uint8)
  image[5, 10] = 255
  assert tuple(np.argwhere(run(ra.shear_y, image, 0.2)[..., 0] == 255)[0]) == (3, 10)


def test_solarize_inverts_values_at_or_above_the_threshold():
  out = run(ra.solarize, IMAGE, 128)
  np.testing.assert_array_equal(out, np.where(IMAGE >= 128, 255 - IMAGE, IMAGE))


def test_posterize_keeps_the_top_bits():
  np.testing.assert_array_equal(run(ra.posterize, IMAGE, 3), IMAGE & 0b11100000)


def test_color_at_zero_is_greyscale_and_brightness_scales():
  out = run(ra.color, IMAGE, 0.0).astype(int)
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  np.testing.assert_allclose(out[..., 0], grey(IMAGE), atol=1.0)
  np.testing.assert_allclose(run(ra.brightness, IMAGE, 0.5), np.round(IMAGE * 0.5), atol=1)
  assert not run(ra.brightness, IMAGE, 0.0).any()


def test_contrast_at_zero_is_the_mean_grey_and_above_one_spreads_values():
  flat = run(ra.contrast, IMAGE, 0.0)
  assert len(np.unique(flat)) == 1 and abs(int(flat[0, 0, 0]) - grey(IMAGE).mean()) <= 1
  assert run(ra.contrast, IMAGE, 1.5).std() > IMAGE.std()


def test_sharpness_at_zero_smooths_the_interior_and_keeps_the_border():
  out = run(ra.sharpness, IMAGE, 0.0).astype(float)
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
  y, x = 7, 9
  expected = (IMAGE[y - 1:y + 2, x - 1:x + 2].astype(float) * kernel[..., None]).sum((0, 1))
  np.testing.assert_allclose(out[y, x], np.round(expected), atol=1)
  np.testing.assert_array_equal(out[0], IMAGE[0])
  assert out[1:-1, 1:-1].std() < IMAGE[1:-1, 1:-1].std()


def test_randaugment_without_layers_is_the_identity_and_is_seeded():
  seed = tf.constant([3, 4], tf.int64)
  np.testing.assert_array_equal(ra.randaugment(tf.constant(IMAGE), 0, 0, seed).numpy(), IMAGE)
  np.testing.assert_array_equal(ra.randaugment(tf.constant(IMAGE), 0, 15, seed).numpy(), IMAGE)
  outs = [ra.randaugment(tf.constant(IMAGE), 2, 10, tf.constant([s, 4], tf.int64)).numpy()
          for s in range(12)]
  assert all(o.shape == IMAGE.shape and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) >= 8  # different ops for different seeds
  np.testing.assert_array_equal(
      outs[0], ra.randaugment(tf.constant(IMAGE), 2, 10, tf.constant([0, 4], tf.int64)).numpy())
