"""Input pipelines on tf.data.

Every process reads its own share of each global batch; `steps.shard_batch` then splits it over
the process's devices. The training stream is a pure function of (seed, step): example order
and augmentation draws are derived from the seed and the example's position, so a run resumed
at step k sees exactly the batches an uninterrupted run would have seen from step k on.
"""
import dataclasses
import functools
import math
import os

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
import tqdm
from absl import logging

from mixer_jax import errors, paths, permutations, randaugment, steps, validation
from mixer_jax.errors import UserError

tf.config.set_visible_devices([], 'GPU')  # tf.data runs on the host; leave accelerators to JAX

SHUFFLE_BUFFER = 50_000  # encoded examples, where a recipe sets none (the small-image ones)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')  # what decode_image reads
# The paper's splits (following ViT): a slice of train validates, the test split reports.
TFDS_SPLITS = {
    'cifar10': {'train': 'train[:98%]', 'validation': 'train[98%:]', 'test': 'test'},
    'cifar100': {'train': 'train[:98%]', 'validation': 'train[98%:]', 'test': 'test'},
    'oxford_iiit_pet': {'train': 'train[:90%]', 'validation': 'train[90%:]', 'test': 'test'},
    'oxford_flowers102': {'train': 'train[:90%]', 'validation': 'train[90%:]', 'test': 'test'},
    'imagenet2012': {'train': 'train[:99%]', 'validation': 'train[99%:]', 'test': 'validation'},
}


@dataclasses.dataclass(frozen=True)
class Split:
  """Images and int32 labels (N,): uint8 pixels (N, H, W, channels) or encoded-file paths (N,);
  the data set's class names, in label order."""
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


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
  names = tuple(str(digit) for digit in range(10))
  if split == 'train':
    return Split(train_x, train_y, names)
  if split == 'test':
    return Split(test_x, test_y, names)
  raise UserError(f"Unknown split {split!r} of 'digits': use 'train' or 'test'.")


def decode_image(encoded):
  """uint8 (H, W, 3) from JPEG, PNG, GIF, BMP or WebP bytes (grey images get 3 channels)."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def why_undecodable(error: tf.errors.OpError) -> str:
  """decode_image's error in a user's words. TensorFlow reads only the still WebP files: of an
  animated one it asks for 4 channels, which it then refuses too."""
  if 'WebP Animation' in str(error):
    return 'an animated WebP, which TensorFlow cannot decode: save a frame as PNG or JPEG'
  return errors.gist(error)


def _decoding_problem(path: str) -> str | None:
  """Why the file at `path` cannot be decoded, or None where it can."""
  try:
    decode_image(tf.io.read_file(path))
    return None
  except tf.errors.OpError as e:  # not an image; a broken link; no permission to read it
    return why_undecodable(e)


def _files_under(folder: str) -> list[str]:
  """Every file below `folder`, in sub-folders too, as torchvision's ImageFolder reads them, but
  not hidden ones: a viewer's `.thumbnails/` would be the images again, macOS's `._` files and
  `.DS_Store` are no images."""
  shown = lambda names: [name for name in names if not name.startswith('.')]
  if not paths.is_url(folder):
    found, seen, top = [], set(), os.path.realpath(folder)
    for parent, dirs, names in os.walk(folder, followlinks=True):
      found += [os.path.join(parent, name) for name in shown(names)]
      seen.add(os.path.realpath(parent))
      # A link back up (to the class folder or above it) would list images again, or another
      # class's images as this class's.
      dirs[:] = [d for d in shown(dirs) if (real := os.path.realpath(os.path.join(parent, d)))
                 not in seen and os.path.commonpath([real, top]) != real]
    return found
  # In cloud storage sub-folders are listed with a trailing '/': no request per file to ask.
  found = []
  for name in shown(tf.io.gfile.listdir(folder)):
    path = f'{folder.rstrip("/")}/{name}'
    found += _files_under(path) if name.endswith('/') else [path]
  return found


def image_files_under(folder: str) -> tuple[list[str], list[str]]:
  """The files below `folder` with an image extension, and the others; each sorted."""
  files = sorted(_files_under(folder))
  is_image = lambda f: f.lower().endswith(IMAGE_EXTENSIONS)
  return [f for f in files if is_image(f)], [f for f in files if not is_image(f)]


def _progress(items, what: str, unit: str, shown: bool):
  """`items`, with a progress bar on process 0 where `shown` (work of minutes, not seconds)."""
  return tqdm.tqdm(items, desc=what, unit=unit, mininterval=2.0,
                   disable=not shown or jax.process_index() != 0)


@functools.lru_cache(maxsize=8)
def load_image_folder(root: str, split: str, verify: bool = True) -> Split:
  """Images under `<root>/<split>/<class>/` (IMAGE_EXTENSIONS, in sub-folders too); classes are
  the sorted train folders, hidden ones left out. `root` may be a gs:// URL.

  With `verify`, every file is decoded once and those that fail are skipped, with their count
  and names in the log; without it (millions of files) files are only listed. Each split is
  read once a process: the class count, the training stream and every evaluation reuse it.
  """
  root = str(paths.resolve(root))
  evaluated = f'<data_dir>/{split}/<class>/... (--config.eval_split)' if split != 'train' else (
      '<data_dir>/test/<class>/...')
  layout = (f'Expected <data_dir>/train/<class>/*.jpg|png|... and {evaluated}; set '
            '--config.data_dir to that folder.')
  if os.path.basename(root.rstrip('/')) in ('train', split):  # a split folder given
    layout += f' Its parent, {os.path.dirname(root.rstrip("/"))}, may be the one.'
  for folder in (root, os.path.join(root, split), os.path.join(root, 'train')):
    if not tf.io.gfile.isdir(folder):
      what = 'is a file, not a folder' if tf.io.gfile.exists(folder) else 'does not exist'
      raise UserError(f'Image folder {folder} {what}. {layout}')
    if not paths.is_url(folder) and not os.access(folder, os.R_OK | os.X_OK):
      raise UserError(f'Image folder {folder} is not readable by this user: fix its permissions.')
  class_folders = lambda split_dir: sorted(  # hidden ones (.ipynb_checkpoints) are not classes
      name.rstrip('/') for name in tf.io.gfile.listdir(split_dir) if not name.startswith('.')
      and (name.endswith('/') or tf.io.gfile.isdir(os.path.join(split_dir, name))))
  classes = class_folders(os.path.join(root, 'train'))
  if len(classes) < 2:  # one class: loss 0 from the first step, accuracy 1, nothing learnt
    raise UserError(f'{os.path.join(root, "train")} has {len(classes) or "no"} class folder'
                    f'{"" if classes else "s"}{f" ({classes[0]})" if classes else ""}: a '
                    f'classifier needs two or more. {layout}')
  label_of = {name: label for label, name in enumerate(classes)}  # 21k classes: no list.index
  listed, ignored = [], []  # listed: (path, label)
  names = class_folders(os.path.join(root, split))
  for name in _progress(names, f'Listing the {split} folders', 'class', len(names) >= 1000):
    if name not in label_of:
      raise UserError(f'Class folder {name!r} of {os.path.join(root, split)} is missing from '
                      f'the training split ({", ".join(classes)}): add it there or remove it.')
    folder = os.path.join(root, split, name)
    files, others = image_files_under(folder)
    ignored += others
    if not files:
      raise UserError(f'Class folder {folder} holds no images ({", ".join(IMAGE_EXTENSIONS)}): '
                      'add images or remove the folder.')
    listed += [(path, label_of[name]) for path in files]
  image_paths, labels, corrupt = [], [], []
  for path, label in _progress(listed, f'Decoding each image of {split} once', 'image',
                               verify and len(listed) >= 5000):
    reason = _decoding_problem(path) if verify else None
    if reason is None:
      image_paths.append(path)
      labels.append(label)
    else:
      corrupt.append(f'{path} ({reason})')
  for problem, found in (('corrupt or unreadable image(s)', corrupt),
                         (f'file(s) without an image extension ({", ".join(IMAGE_EXTENSIONS)})',
                          ignored)):
    if found:
      logging.warning('Skipped %d %s in %s: %s%s', len(found), problem, os.path.join(root, split),
                      ', '.join(found[:5]), ' ...' if len(found) > 5 else '')
  if not image_paths:
    raise UserError(f'{os.path.join(root, split)} holds no readable images. {layout}')
  logging.info('%s: %d images of %d classes.', os.path.join(root, split), len(image_paths),
               len(set(labels)))
  return Split(np.array(image_paths), np.array(labels, np.int32), tuple(classes))


def check_eval_split(config):
  """Opens the evaluation split: a missing split, folder or class, or a corrupt image, is found
  before training rather than at the first evaluation (which reuses a folder's decoded split)."""
  if config.dataset == 'folder':
    split = load_split(config, config.eval_split)
    absent = sorted(set(split.class_names) - {split.class_names[i] for i in set(split.labels)})
    if absent:
      logging.warning('%s has no images of %d of the %d classes (%s%s): its accuracy says '
                      'nothing about them.', os.path.join(config.data_dir, config.eval_split),
                      len(absent), len(split.class_names), ', '.join(absent[:5]),
                      ' ...' if len(absent) > 5 else '')
  elif config.dataset == 'digits':
    load_digits(config.eval_split)
  else:
    load_tfds(config, config.eval_split)


def load_split(config, split: str) -> Split:
  if config.dataset == 'digits':
    return load_digits(split)
  if config.dataset == 'folder':
    # Training files may go unchecked (verify_images=False): the stream then skips bad ones.
    verify = config.get('verify_images', True) or split != 'train'
    return load_image_folder(config.data_dir, split, verify)
  raise ValueError(f'{config.dataset} is not an in-memory data set')


def _tfds_split(name: str, split: str) -> str:
  return TFDS_SPLITS.get(name, {'train': 'train', 'validation': 'validation',
                                'test': 'test'})[split]


def load_tfds(config, split: str, process_index: int = 0, process_count: int = 1,
              shuffle_files: bool = False):
  """(dataset of (encoded image, label), info) for this process's part of `split`.

  Never downloads: a data set that is not prepared under `data_dir` is an error at once.
  """
  name = config.dataset
  tfds_split = _tfds_split(name, split)
  where = config.data_dir or '~/tensorflow_datasets'
  data_dir = str(paths.resolve(config.data_dir)) if config.data_dir else None
  if data_dir and tf.io.gfile.exists(data_dir) and not tf.io.gfile.isdir(data_dir):
    raise UserError(f'--config.data_dir={config.data_dir} is a file, not a folder: give the '
                    f'folder that `tfds build {name} --data_dir=DIR` filled (DIR, which holds '
                    f'{name}/).')
  try:  # tfds.load without downloading, in two steps that fail for different reasons
    builder = tfds.builder(name, data_dir=data_dir)
  except (ValueError, AssertionError) as e:  # an unknown name, config or version
    first_line = errors.gist(e)
    if isinstance(e, tfds.core.registered.DatasetNotFoundError) or 'builder name' in first_line:
      raise validation.unknown_dataset(name) from e
    raise UserError(f'tensorflow-datasets cannot load {name!r} ({first_line}): check '
                    '--config.dataset, written NAME, NAME/CONFIG or NAME:VERSION.') from e
  try:
    ds = builder.as_dataset(
        split=tfds.even_splits(tfds_split, n=process_count)[process_index], as_supervised=True,
        shuffle_files=shuffle_files, read_config=tfds.ReadConfig(shuffle_seed=config.seed),
        decoders={'image': tfds.decode.SkipDecoding()})  # decode after shuffling the bytes
  except ValueError as e:
    raise UserError(f'{name!r} has no split {tfds_split!r} ({errors.gist(e)}): choose '
                    'another --config.eval_split.') from e
  except AssertionError as e:  # tfds' way of saying the prepared files are not there
    # Data sets such as imagenet2012 are built from files the user fetches: tfds says which.
    manual = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    manual = ' Before `tfds build`: ' + ' '.join(manual.split()).replace(
        'manual_dir', 'DIR/downloads/manual') if manual else ''
    raise UserError(
        f'Data set {name!r} is not prepared in {where}, and runs never download. On a machine '
        f'with internet run `tfds build {name} --data_dir=DIR`, copy DIR here, and pass '
        f'--config.data_dir=DIR.{manual}') from e
  return ds, builder.info


def count_examples(config, split: str) -> int:
  """Examples in the whole split: from the data set's metadata, else (mocked data) by reading."""
  ds, info = load_tfds(config, split)
  try:
    return info.splits[_tfds_split(config.dataset, split)].num_examples
  except (KeyError, ValueError):
    return int(ds.reduce(0, lambda n, _: n + 1))


def inception_crop(image, seed, area_range=(0.05, 1.0)):
  """A random crop of `area_range` of the image's area and aspect ratio in [3/4, 4/3]."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, area_range=area_range,
      aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.slice(image, begin, size)


def train_preprocess(image_uint8, image_size: int, seed, randaug_layers: int = 0,
                     randaug_magnitude: float = 0):
  """Inception crop, resize, random horizontal flip and RandAugment; float in [-1, 1]."""
  crop_seed, flip_seed, randaug_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = inception_crop(image_uint8, crop_seed)
  image = tf.image.resize(image, [image_size, image_size], antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = randaugment.randaugment(image, randaug_layers, randaug_magnitude, randaug_seed)
  return to_signed_unit(image)


def eval_preprocess(image_uint8, image_size: int):
  """Shorter side resized to image_size * 256/224, then the central image_size square."""
  shape = tf.cast(tf.shape(image_uint8)[:2], tf.float32)
  scale = image_size * 256 / 224 / tf.reduce_min(shape)
  size = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  image = tf.image.resize(tf.cast(image_uint8, tf.float32), size, antialias=True)
  top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
  return to_signed_unit(tf.image.crop_to_bounding_box(image, top, left, image_size, image_size))


def read_image(images, index):
  """The uint8 (H, W, 3) image at `index`: gathered from memory, or read and decoded from its
  file. Grey images in memory (digits) get 3 channels, as decode_image gives files."""
  if images.dtype == tf.string:
    return decode_image(tf.io.read_file(tf.gather(images, index)))
  image = tf.gather(images, index)
  return tf.image.grayscale_to_rgb(image) if images.shape[-1] == 1 else image


def to_signed_unit(image):
  """0..255 pixel values -> [-1, 1], as float32."""
  return tf.clip_by_value(tf.cast(image, tf.float32) / 127.5 - 1.0, -1.0, 1.0)


def to_model_input(image_uint8, image_size: int):
  """Resize to image_size x image_size, make 3 channels and scale to [-1, 1]."""
  image = tf.image.resize(tf.cast(image_uint8, tf.float32), [image_size, image_size],
                          method='bilinear', antialias=True)
  return to_signed_unit(tf.broadcast_to(image, [image_size, image_size, 3]))  # grey -> RGB


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
  if config.dataset not in validation.IN_MEMORY:
    return _tfds_train_dataset(config, start_step, process_index, process_count)
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

  ds = ds.map(lambda position, index: train_example(config, position, read_image(images, index),
                                                     tf.gather(labels, index)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not config.get('verify_images', True):  # unchecked files: skip any that fail to decode
    ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(config.batch_size // process_count, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_batch_size(config, num_examples: int, process_count: int) -> int:
  """config.eval_batch_size, or for a smaller split its size rounded up to whole devices and
  processes: a batch that is mostly padding costs its compute and memory (and can run out of
  it after a whole run's training) for nothing."""
  unit = math.lcm(jax.device_count(), process_count)
  return min(config.eval_batch_size, -(-num_examples // unit) * unit)


def create_eval_dataset(config, split: str, process_index: int,
                        process_count: int) -> tf.data.Dataset:
  """One pass over `split`, padded with mask-0 examples to whole global batches."""
  if config.dataset not in validation.IN_MEMORY:
    return _tfds_eval_dataset(config, split, process_index, process_count)
  data = load_split(config, split)
  n = len(data.labels)
  batch = eval_batch_size(config, n, process_count)
  padded = -(-n // batch) * batch
  images, labels = tf.constant(data.images), tf.constant(data.labels)
  # Padding repeats example 0 with mask 0, so every process sees whole batches.
  index = np.where(np.arange(padded) < n, np.arange(padded), 0)
  ds = tf.data.Dataset.from_tensor_slices((index, (np.arange(padded) < n).astype(np.float32)))
  ds = ds.shard(process_count, process_index)
  ds = ds.map(lambda i, mask: {'image': eval_image(config, read_image(images, i)),
                               'label': tf.gather(labels, i), 'mask': mask},
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch // process_count).prefetch(tf.data.AUTOTUNE)


def permuted(image_HWC, config):
  """`config.input_permutation` (kind, patch_size, seed) applied to one image, if set."""
  spec = config.get('input_permutation')
  if not spec or spec.kind == 'original':
    return image_HWC
  order = permutations.pixel_order(spec.kind, config.image_size, spec.patch_size, spec.seed)
  flat = tf.reshape(image_HWC, [-1, tf.shape(image_HWC)[-1]])
  return tf.reshape(tf.gather(flat, order), tf.shape(image_HWC))


def train_example(config, position, image_uint8, label):
  """One augmented training example; its random draws depend only on (seed, position).

  Recipes with an `augment` block (small images: digits, CIFAR from scratch) resize the whole
  image and shift it; the others take the ImageNet-style Inception crop, flip and RandAugment.
  A fixed pixel permutation (`input_permutation`, set by studies/permutation.py) comes last, in
  training and evaluation alike.
  """
  seed = tf.stack([tf.cast(config.seed, tf.int64), tf.cast(position, tf.int64)])
  if 'augment' in config:
    image = to_model_input(image_uint8, config.image_size)
    image = random_shift(image, round(config.augment.max_shift * config.image_size), seed)
    if config.augment.get('flip', False):
      flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  else:
    image = train_preprocess(image_uint8, config.image_size, seed, config.randaug_layers,
                             config.randaug_magnitude)
  return {'image': permuted(image, config),
          'label': tf.cast(label, tf.int32)}


def eval_image(config, image_uint8):
  """The deterministic evaluation view matching train_example's preprocessing."""
  if 'augment' in config:
    image = to_model_input(image_uint8, config.image_size)
  else:
    image = eval_preprocess(image_uint8, config.image_size)
  return permuted(image, config)


def _tfds_train_dataset(config, start_step, process_index, process_count):
  # Shuffled file order and a shuffle buffer of encoded bytes, both seeded; a resumed run skips
  # the encoded examples it has already trained on, so it continues the same stream.
  ds, _ = load_tfds(config, 'train', process_index, process_count, shuffle_files=True)
  local_batch = config.batch_size // process_count
  start = start_step * local_batch
  buffer = config.get('shuffle_buffer', SHUFFLE_BUFFER)
  ds = ds.repeat().shuffle(buffer, seed=config.seed).skip(start).enumerate(start)

  ds = ds.map(lambda position, example: train_example(config, position, decode_image(example[0]),
                                                       example[1]),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _tfds_eval_dataset(config, split, process_index, process_count):
  ds, _ = load_tfds(config, split, process_index, process_count)
  n = count_examples(config, split)
  local_batch = eval_batch_size(config, n, process_count) // process_count
  # Every process runs the same number of batches (collectives), padding with mask 0.
  per_process = -(-n // process_count)
  num_batches = -(-per_process // local_batch)
  ds = ds.map(lambda encoded, label: {
      'image': eval_image(config, decode_image(encoded)),
      'label': tf.cast(label, tf.int32), 'mask': tf.constant(1.0)},
      num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([config.image_size, config.image_size, 3]),
      'label': tf.constant(0), 'mask': tf.constant(0.0)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  return ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)


def train_batches(config, start_step: int, mesh):
  """Endless global training batches from `start_step` on, copied to the devices ahead."""
  ds = create_train_dataset(config, start_step, jax.process_index(), jax.process_count())
  return steps.prefetch_to_mesh(ds.as_numpy_iterator(), mesh)


def eval_batches(config, split: str, mesh):
  """One pass over `split` as global batches, padding masked out."""
  ds = create_eval_dataset(config, split, jax.process_index(), jax.process_count())
  return (steps.shard_batch(batch, mesh) for batch in ds.as_numpy_iterator())


def class_names(config) -> list[str]:
  """The names of the classes in label order: the digits, the image folder's class folders, or
  the tensorflow-datasets label names (its label numbers where it has none)."""
  if config.dataset not in validation.IN_MEMORY:
    return list(load_tfds(config, 'train')[1].features['label'].names)
  return list(load_split(config, 'train').class_names)


def num_classes(config) -> int:
  return len(class_names(config))
