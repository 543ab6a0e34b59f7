"""Input pipelines on tf.data.

Every process reads its own share of each global batch; `steps.shard_batch` then splits it over
the process's devices. The training stream is a pure function of (seed, step): example order
and augmentation draws are derived from the seed and the example's position, so a run resumed
at step k sees exactly the batches an uninterrupted run would have seen from step k on.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from mixer_jax.errors import UserError

DATASETS = ('digits', 'folder')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True)
class Split:
  """Images and int32 labels (N,): uint8 pixels (N, H, W, channels) or encoded-file paths (N,)."""
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


def _is_decodable(path: str) -> bool:
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return True
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
    return False


def load_image_folder(root: str, split: str) -> Split:
  """Images in `<root>/<split>/<class>/*.{jpg,jpeg,png}`; classes are the sorted train folders.

  Files that cannot be decoded are skipped, with their count and names in the log.
  """
  layout = (f'Expected <data_dir>/train/<class>/*.jpg|png and <data_dir>/test/<class>/*.jpg|png; '
            f'set --config.data_dir to that folder.')
  for folder in (root, os.path.join(root, split), os.path.join(root, 'train')):
    if not os.path.isdir(folder):
      raise UserError(f'Image folder {folder} does not exist. {layout}')
    if not os.access(folder, os.R_OK | os.X_OK):
      raise UserError(f'Image folder {folder} is not readable by this user: fix its permissions.')
  classes = sorted(e.name for e in os.scandir(os.path.join(root, 'train')) if e.is_dir())
  if not classes:
    raise UserError(f'{os.path.join(root, "train")} has no class folders. {layout}')
  paths, labels, corrupt = [], [], []
  for name in sorted(e.name for e in os.scandir(os.path.join(root, split)) if e.is_dir()):
    if name not in classes:
      raise UserError(f'Class folder {name!r} of {os.path.join(root, split)} is missing from '
                      f'the training split ({", ".join(classes)}): add it there or remove it.')
    folder = os.path.join(root, split, name)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise UserError(f'Class folder {folder} holds no images ({", ".join(IMAGE_EXTENSIONS)}): '
                      'add images or remove the folder.')
    for path in files:
      if _is_decodable(path):
        paths.append(path)
        labels.append(classes.index(name))
      else:
        corrupt.append(path)
  if corrupt:
    logging.warning('Skipped %d corrupt or unreadable image(s) in %s: %s%s', len(corrupt),
                    os.path.join(root, split), ', '.join(corrupt[:5]),
                    ' ...' if len(corrupt) > 5 else '')
  if not paths:
    raise UserError(f'{os.path.join(root, split)} holds no readable images. {layout}')
  return Split(np.array(paths), np.array(labels, np.int32), num_classes=len(classes))


def load_split(config, split: str) -> Split:
  if config.dataset == 'digits':
    return load_digits(split)
  if config.dataset == 'folder':
    return load_image_folder(config.data_dir, split)
  raise UserError(f'Unknown dataset {config.dataset!r}: choose one of {", ".join(DATASETS)}.')


def read_image(images, index):
  """The uint8 image at `index`: gathered from memory, or read and decoded from its file."""
  if images.dtype == tf.string:
    encoded = tf.io.read_file(tf.gather(images, index))
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.gather(images, index)


def to_model_input(image_uint8, image_size: int):
  """Resize to image_size x image_size, make 3 channels and scale to [-1, 1]."""
  image = tf.image.resize(tf.cast(image_uint8, tf.float32), [image_size, image_size],
                          method='bilinear', antialias=True)
  image = tf.broadcast_to(image, [image_size, image_size, 3])  # grey -> RGB
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
    image = to_model_input(read_image(images, index), config.image_size)
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
  images, labels = tf.constant(data.images), tf.constant(data.labels)
  # Padding repeats example 0 with mask 0, so every process sees whole batches.
  index = np.where(np.arange(padded) < n, np.arange(padded), 0)
  ds = tf.data.Dataset.from_tensor_slices((index, (np.arange(padded) < n).astype(np.float32)))
  ds = ds.shard(process_count, process_index)
  ds = ds.map(lambda i, mask: {'image': to_model_input(read_image(images, i), config.image_size),
                               'label': tf.gather(labels, i), 'mask': mask},
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch // process_count).prefetch(tf.data.AUTOTUNE)


def num_classes(config) -> int:
  return load_split(config, 'train').num_classes
