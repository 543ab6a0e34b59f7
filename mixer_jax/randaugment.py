"""RandAugment (Cubuk et al., 2020) on tf.image: `num_layers` random ops per image, one magnitude.

The op set and magnitude scale (0-10) follow the TPU reference implementation that the paper's
recipes used; values above 10 (the paper's 15 and 20) extrapolate. Unlike the reference, every
op with a magnitude is the identity at magnitude 0, and the enhancement ops move their factor
away from 1 in a random direction (1 +- 0.9 m/10), as timm's "increasing" variant does. Images
are uint8 (H, W, 3) in and out; geometric ops fill with grey (128).
"""
import math

import tensorflow as tf

FILL = 128


def _blend(degenerate, image, factor):
  """degenerate + factor * (image - degenerate), clipped to uint8; factor 1 is the image."""
  out = tf.cast(degenerate, tf.float32) + factor * (
      tf.cast(image, tf.float32) - tf.cast(degenerate, tf.float32))
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def identity(image):
  return image


def auto_contrast(image):
  """Stretches each channel to the full 0-255 range (channels that are flat stay as they are)."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  stretched = (x - lo) * 255.0 / tf.maximum(hi - lo, 1.0)
  out = tf.where(hi > lo, stretched, x)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def _equalize_channel(channel):
  histogram = tf.histogram_fixed_width(channel, [0, 255], nbins=256)
  nonzero = tf.boolean_mask(histogram, histogram > 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
  lut = (tf.cumsum(histogram) + step // 2) // tf.maximum(step, 1)
  lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
  return tf.where(step == 0, channel, tf.gather(lut, channel))


def equalize(image):
  """Histogram equalisation of each channel (PIL's ImageOps.equalize)."""
  channels = [_equalize_channel(tf.cast(image[..., c], tf.int32)) for c in range(3)]
  return tf.cast(tf.stack(channels, -1), tf.uint8)


def _affine(image, transform):
  """Applies a projective transform [a0, a1, a2, b0, b1, b2, 0, 0] (output -> input coords)."""
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=tf.cast(tf.reshape(transform, [1, 8]), tf.float32),
      output_shape=tf.shape(image)[:2], fill_value=float(FILL), interpolation='NEAREST',
      fill_mode='CONSTANT')
  return out[0]


def rotate(image, degrees):
  """Rotates counter-clockwise by `degrees` about the image centre."""
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  theta = degrees * math.pi / 180
  cos, sin = tf.cos(theta), tf.sin(theta)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  # Output pixel (x, y) reads input (cos*(x-cx) - sin*(y-cy) + cx, sin*(x-cx) + cos*(y-cy) + cy).
  return _affine(image, tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                                  sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]))


def shear_x(image, shear):
  """Output pixel (x, y) reads input (x + shear * y, y)."""
  return _affine(image, tf.stack([1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, shear):
  """Output pixel (x, y) reads input (x, y + shear * x)."""
  return _affine(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, pixels):
  """Moves the content `pixels` to the right (left when negative)."""
  return _affine(image, tf.stack([1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
  """Moves the content `pixels` down (up when negative)."""
  return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0]))


def solarize(image, threshold):
  """Inverts every value at or above `threshold` (256: no change)."""
  return tf.where(tf.cast(image, tf.int32) >= tf.cast(threshold, tf.int32), 255 - image, image)


def posterize(image, bits):
  """Keeps the `bits` most significant bits of each value."""
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def _grey(image):
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def color(image, factor):
  """Saturation: 0 is greyscale, 1 the image."""
  return _blend(_grey(image), image, factor)


def contrast(image, factor):
  """0 is a flat image of the mean grey level, 1 the image."""
  mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
  return _blend(tf.fill(tf.shape(image), tf.round(mean)), image, factor)


def brightness(image, factor):
  """0 is black, 1 the image."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """0 is the image smoothed by PIL's 3x3 SMOOTH kernel (border pixels kept), 1 the image."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                  'VALID')[0]
  smooth = tf.pad(tf.round(smooth), [[1, 1], [1, 1], [0, 0]])
  border = tf.pad(tf.zeros(tf.shape(smooth)[:2] - 2, tf.bool), [[1, 1], [1, 1]],
                  constant_values=True)[..., None]
  degenerate = tf.where(border, tf.cast(image, tf.float32), smooth)
  return _blend(degenerate, image, factor)


def _ops(image, m, sign):
  """Each op as a function of the image alone, at magnitude m (0-10 scale) and a random sign."""
  size = tf.cast(tf.shape(image)[1], tf.float32)
  enhance = 1.0 + sign * 0.9 * m / 10
  return [
      lambda: identity(image),
      lambda: auto_contrast(image),
      lambda: equalize(image),
      lambda: rotate(image, sign * 30.0 * m / 10),
      lambda: solarize(image, tf.cast(tf.round(256 - 256 * m / 10), tf.int32)),
      lambda: color(image, enhance),
      lambda: posterize(image, tf.clip_by_value(8 - tf.cast(4 * m / 10, tf.int32), 1, 8)),
      lambda: contrast(image, enhance),
      lambda: brightness(image, enhance),
      lambda: sharpness(image, enhance),
      lambda: shear_x(image, sign * 0.3 * m / 10),
      lambda: shear_y(image, sign * 0.3 * m / 10),
      # 100 pixels at 224, as in the reference, scaled with the image.
      lambda: translate_x(image, sign * size * (100 / 224) * m / 10),
      lambda: translate_y(image, sign * size * (100 / 224) * m / 10),
  ]


NUM_OPS = 14


def randaugment(image, num_layers: int, magnitude: float, seed):
  """`num_layers` ops, each drawn uniformly from the 14, at `magnitude`; uint8 in and out."""
  for layer in range(num_layers):
    op_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(
            seed, layer), 2))
    index = tf.random.stateless_uniform([], op_seed, 0, NUM_OPS, dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
    image = tf.switch_case(index, _ops(image, float(magnitude), sign))
    image = tf.ensure_shape(image, [None, None, 3])
  return image
