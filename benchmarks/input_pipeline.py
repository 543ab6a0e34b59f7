"""Host images/s of the ImageNet-style training pipeline, on JPEGs generated in memory.

  python benchmarks/input_pipeline.py                       # pretrain_imagenet's preprocessing
  python benchmarks/input_pipeline.py --randaug_layers=0 --image_size=448

Decodes, Inception-crops, resizes, flips and RandAugments exactly as training does
(`input_pipeline.train_example`), with tf.data's parallelism, and prints images/s with and
without RandAugment. Compare with the device's training images/s (benchmarks/throughput.py):
if the host is slower, the accelerator waits on it.
"""
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # as train.py: TensorFlow's start-up notices
from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import pretrain_imagenet  # noqa: E402
from mixer_jax import errors, paths  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer('num_images', 256, 'Distinct JPEGs to generate.', lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Model resolution.', lower_bound=1)
_LAYERS = flags.DEFINE_integer('randaug_layers', 2, 'RandAugment ops per image.', lower_bound=0)
_MAGNITUDE = flags.DEFINE_float('randaug_magnitude', 15, 'RandAugment magnitude.', lower_bound=0)
_SECONDS = flags.DEFINE_float('seconds', 20, 'How long to time each setting.', lower_bound=0.1)
_JSON_OUT = flags.DEFINE_string('json_out', None,
                                'Append one JSON line per setting here (a file or gs:// URL).')


def generate_jpegs(n: int) -> list[bytes]:
  """Smooth random images of ImageNet's typical sizes (about 500x375), JPEG-encoded."""
  import tensorflow as tf  # seconds to import, which a mistyped flag need not wait for
  rng = np.random.default_rng(0)
  jpegs = []
  for _ in range(n):
    h, w = rng.integers(300, 500), rng.integers(375, 600)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    image = tf.image.resize(small, [h, w]).numpy().clip(0, 255).astype(np.uint8)
    jpegs.append(tf.io.encode_jpeg(image, quality=90).numpy())
  return jpegs


def images_per_sec(config, jpegs: list[bytes], seconds: float) -> float:
  import tensorflow as tf
  from mixer_jax import input_pipeline
  labels = np.zeros(len(jpegs), np.int64)
  ds = tf.data.Dataset.from_tensor_slices((jpegs, labels)).repeat().enumerate()
  ds = ds.map(lambda position, example: input_pipeline.train_example(
      config, position, input_pipeline.decode_image(example[0]), example[1]),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(64).prefetch(tf.data.AUTOTUNE)
  it = iter(ds)
  for _ in range(3):  # warm-up: graph building and thread start
    next(it)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += next(it)['image'].shape[0]
  return count / (time.perf_counter() - start)


@errors.reported
def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  json_out = (paths.open_to_append(_JSON_OUT.value, 'json_out') if _JSON_OUT.value is not None
              else None)
  print(f'Encoding {_NUM_IMAGES.value} JPEGs of ImageNet\'s sizes, then timing each setting for '
        f'{_SECONDS.value:g} s ...', flush=True)
  jpegs = generate_jpegs(_NUM_IMAGES.value)
  config = pretrain_imagenet.get_config('B/16')
  config.image_size = _IMAGE_SIZE.value
  settings = [(_LAYERS.value, _MAGNITUDE.value)] if _LAYERS.value else []
  settings.append((0, 0))  # the decode and resize alone, for comparison
  for layers, magnitude in settings:
    config.randaug_layers, config.randaug_magnitude = layers, magnitude
    rate = images_per_sec(config, jpegs, _SECONDS.value)
    print(f'{os.cpu_count()} host cores, {config.image_size}px, RandAugment {layers} ops at '
          f'magnitude {magnitude:g}: {rate:.1f} images/s', flush=True)
    if json_out:
      json_out.write(json.dumps({'host_cores': os.cpu_count(), 'image_size': config.image_size,
                                 'randaug_layers': layers, 'randaug_magnitude': magnitude,
                                 'images_per_sec': rate,
                                 'date': time.strftime('%Y-%m-%d %H:%M')}) + '\n')
      json_out.flush()
  if json_out:
    json_out.close()


if __name__ == '__main__':
  app.run(main, flags_parser=errors.parse_flags)
