"""Input pipelines on tf.data.

Every process reads its own share of each global batch; `steps.shard_batch` then splits it over
the process's devices. The training stream is a pure function of (seed, step): example order
and augmentation draws are derived from the seed and the example's position, so a run resumed
at step k sees exactly the batches an uninterrupted run would have seen from step k on.
"""
import dataclasses

import numpy as np
import tensorflow as tf

DATASETS = ('digits',)


@dataclasses.dataclass(frozen=True)
class Split:
  """An in-memory split: uint8 images (N, H, W, channels) and int32 labels (N,)."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


def load_digits(split: str) -> Split:
  """scikit-learn's bundled handwritten digits (8x8, 10 classes), a fixed stratified split.

  1,437 training and 360 test images; no download.
  """
  from sklearn import datasets, model_selection
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, digits.target.astype(np.int32), test_size=0.2, stratify=digits.target,
      random_state=0)
  if split == 'train':
    return Split(train_x, train_y, num_classes=10)
  if split == 'test':
    return Split(test_x, test_y, num_classes=10)
  raise ValueError(f"Unknown split {split!r} of 'digits': use 'train' or 'test'.")


def load_split(config, split: str) -> Split:
  if config.dataset == 'digits':
    return load_digits(split)
  raise ValueError(f'Unknown dataset {config.dataset!r}: choose one of {", ".join(DATASETS)}.')


def to_model_input(image_uint8, image_size: int):
  """Resize to image_size x image_size, make 3 channels and scale to [-1, 1]."""
  image = tf.image.resize(tf.cast(image_uint8, tf.float32), [image_size, image_size],
                          method='bilinear', antialias=True)
  image = tf.broadcast_to(image, [image_size, image_size, 3]) if image.shape[-1] == 1 else image
  return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


def random_shift(image, max_shift: int, seed):
  """Translates by up to max_shift pixels each way, filling with background (-1).

  Digits are centred with a margin, so a shift keeps the whole digit; flips and tight crops
  would change or cut the class-defining shape.
  """
  if max_shift == 0:
    return image
  padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]],
                  constant_values=-1.0)
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


def create_train_dataset(config, start_step: int, process_index: int,
                         process_count: int) -> tf.data.Dataset:
  """Endless augmented batches of this process's share, starting at `start_step`."""
  data = load_split(config, 'train')
  n = len(data.labels)
  images, labels = tf.constant(data.images), tf.constant(data.labels)
  seed = config.seed

  # Global example positions: epoch e holds positions [e*n, (e+1)*n) in a seeded order.
  start = start_step * config.batch_size
  epochs = tf.data.Dataset.counter(start // n)
  order = epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(
      tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([seed, e]))))
  ds = order.skip(start % n).enumerate(start=start)
  ds = ds.shard(process_count, process_index)

  max_shift = round(config.augment.max_shift * config.image_size)

  def example(position, index):
    image = to_model_input(tf.gather(images, index), config.image_size)
    image = random_shift(image, max_shift, seed=tf.stack([tf.cast(seed, tf.int64), position]))
    return {'image': image, 'label': tf.gather(labels, index)}

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(config.batch_size // process_count, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def create_eval_dataset(config, split: str, process_index: int,
                        process_count: int) -> tf.data.Dataset:
  """One pass over `split`, padded with mask-0 examples to whole global batches."""
  data = load_split(config, split)
  n, batch = len(data.labels), config.eval_batch_size
  padded = -(-n // batch) * batch
  pad = lambda x: np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
  ds = tf.data.Dataset.from_tensor_slices({
      'image': pad(data.images), 'label': pad(data.labels),
      'mask': (np.arange(padded) < n).astype(np.float32)})
  ds = ds.shard(process_count, process_index)
  ds = ds.map(lambda ex: {**ex, 'image': to_model_input(ex['image'], config.image_size)},
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch // process_count).prefetch(tf.data.AUTOTUNE)


def num_classes(config) -> int:
  return load_split(config, 'train').num_classes
