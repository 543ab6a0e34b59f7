"""The digits pipeline: shapes and ranges, exact resume, process shards, exact evaluation."""
import itertools
import shutil

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from configs import digits, finetune
from mixer_jax import input_pipeline
from mixer_jax.errors import UserError


@pytest.fixture
def config():
  config = digits.get_config()
  config.batch_size = 32
  config.eval_batch_size = 64
  return config


def batches(config, start_step=0, num=3, process_index=0, process_count=1):
  ds = input_pipeline.create_train_dataset(config, start_step, process_index, process_count)
  return list(itertools.islice(ds.as_numpy_iterator(), num))


def test_digits_split_is_fixed_and_stratified():
  train, test = input_pipeline.load_digits('train'), input_pipeline.load_digits('test')
  assert len(train.labels) == 1437 and len(test.labels) == 360
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
  assert set(np.bincount(test.labels)) <= {35, 36, 37}  # ~36 of each of the 10 classes
  np.testing.assert_array_equal(test.labels, input_pipeline.load_digits('test').labels)


def test_train_batches_have_configured_shape_dtype_and_range(config):
  for batch in batches(config):
    assert batch['image'].shape == (32, 16, 16, 3) and batch['image'].dtype == np.float32
    assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0
    assert batch['image'].min() == -1.0 and batch['image'].max() > 0.5  # background and ink
    assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(10))


def test_resume_at_step_k_sees_the_same_batches(config):
  uninterrupted = batches(config, num=50)  # crosses the epoch boundary (1437 / 32 ~ 45)
  resumed = batches(config, start_step=44, num=6)
  for a, b in zip(uninterrupted[44:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_each_epoch_visits_every_training_example_once(config):
  config.augment.max_shift = 0.0
  config.batch_size = 1437  # one batch per epoch
  first, second = batches(config, num=2)
  for epoch in (first, second):
    np.testing.assert_array_equal(np.bincount(epoch['label']),
                                  np.bincount(input_pipeline.load_digits('train').labels))
  assert not np.array_equal(first['label'], second['label'])  # reshuffled


def test_process_shards_partition_the_global_batch(config):
  whole = batches(config, num=2)
  shards = [batches(config, num=2, process_index=i, process_count=2) for i in range(2)]
  for step in range(2):
    assert shards[0][step]['image'].shape[0] == 16
    # Example k of the global batch goes to process k % 2.
    np.testing.assert_array_equal(whole[step]['label'][0::2], shards[0][step]['label'])
    np.testing.assert_array_equal(whole[step]['image'][1::2], shards[1][step]['image'])


def test_eval_covers_every_test_example_once_with_padding_masked(config):
  ds = input_pipeline.create_eval_dataset(config, 'test', 0, 1)
  got = list(ds.as_numpy_iterator())
  assert len(got) == 6 and all(b['image'].shape == (64, 16, 16, 3) for b in got)  # 384 >= 360
  mask = np.concatenate([b['mask'] for b in got])
  labels = np.concatenate([b['label'] for b in got])
  assert mask.sum() == 360 and mask[:360].all()
  np.testing.assert_array_equal(labels[:360], input_pipeline.load_digits('test').labels)


def test_a_split_smaller_than_the_eval_batch_is_one_batch_of_its_size_over_processes(config):
  """Not 100,000 images of which 99,640 padding: 360 over 7 processes is 7 x 52, each test
  example once."""
  config.eval_batch_size = 100_000
  shards = [list(input_pipeline.create_eval_dataset(config, 'test', i, 7).as_numpy_iterator())
            for i in range(7)]
  assert all(len(s) == 1 and s[0]['image'].shape == (52, 16, 16, 3) for s in shards)
  mask = np.concatenate([s[0]['mask'] for s in shards])
  labels = np.concatenate([s[0]['label'] for s in shards])
  assert mask.sum() == 360
  np.testing.assert_array_equal(np.bincount(labels[mask == 1]),
                                np.bincount(input_pipeline.load_digits('test').labels))


def test_random_shift_is_a_translation_filled_with_background():
  image = tf.random.uniform((16, 16, 3), -0.9, 1.0)
  for seed in range(10):
    shifted = input_pipeline.random_shift(image, 2, seed=tf.constant([seed, 0])).numpy()
    padded = np.pad(image.numpy(), ((2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    offsets = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(padded[dy:dy + 16, dx:dx + 16], shifted)]
    assert len(offsets) == 1


def test_unknown_dataset_is_a_clear_error():
  config = ml_collections.ConfigDict({'dataset': 'no_such_data', 'data_dir': '', 'seed': 0})
  with pytest.raises(UserError, match="Unknown dataset 'no_such_data': use digits, folder"):
    input_pipeline.num_classes(config)


# --- Image folders: <root>/{train,test}/<class>/*.{jpg,png} ---

def make_image_folder(root, classes=('cat', 'dog', 'fox'), per_class=4, seed=0):
  """Small PNG and JPEG files of mixed sizes; class k is brightest in channel k."""
  rng = np.random.default_rng(seed)
  for split in ('train', 'test'):
    for k, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(per_class):
        h, w = rng.integers(12, 40, size=2)
        image = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
        image[..., k] += 180
        encode, ext = (tf.io.encode_png, 'png') if i % 2 else (tf.io.encode_jpeg, 'jpg')
        tf.io.write_file(str(folder / f'{i}.{ext}'), encode(image))
  return root


def folder_config(root):
  config = digits.get_config()
  config.update(dict(dataset='folder', data_dir=str(root), batch_size=4, eval_batch_size=4))
  return config


def test_image_folder_batches_have_configured_shape_and_labels(tmp_path):
  config = folder_config(make_image_folder(tmp_path))
  split = input_pipeline.load_split(config, 'train')
  assert split.num_classes == 3 and len(split.labels) == 12
  batch = batches(config, num=1)[0]
  assert batch['image'].shape == (4, 16, 16, 3) and batch['image'].dtype == np.float32
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  # Shifts fill with -1 at the border: the class channel is brightest at the centre.
  centre = batch['image'][:, 6:10, 6:10].mean(axis=(1, 2))
  np.testing.assert_array_equal(centre.argmax(-1), batch['label'])


def save_animated_webp(path):
  """Two frames, as web pages serve them: a format TensorFlow's decoder cannot read."""
  frames = [PIL.Image.new('RGB', (16, 16), colour) for colour in ('red', 'blue')]
  frames[0].save(path, save_all=True, append_images=frames[1:])


def test_image_folder_reads_sub_folders_and_logs_the_files_it_skips(tmp_path, caplog):
  root = make_image_folder(tmp_path)
  (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  (root / 'train' / 'cat' / 'empty.png').write_bytes(b'')
  (root / 'train' / 'fox' / 'more').mkdir()  # ignored without a word before
  (root / 'train' / 'fox' / '0.jpg').rename(root / 'train' / 'fox' / 'more' / '0.jpg')
  (root / 'train' / 'fox' / 'notes.txt').write_text('not an image')
  (root / 'train' / 'fox' / 'up').symlink_to('..')  # a loop: the other classes' images again
  (root / 'train' / '.ipynb_checkpoints').mkdir()  # hidden: not a class
  # Hidden files and folders are not the class's images: a viewer's thumbnails, macOS's ._ copies.
  (root / 'train' / 'cat' / '.thumbnails').mkdir()
  shutil.copy(root / 'train' / 'cat' / '0.jpg', root / 'train' / 'cat' / '.thumbnails')
  (root / 'train' / 'dog' / '._1.png').write_bytes(b'\x00\x05\x16\x07 AppleDouble')
  (root / 'train' / 'dog' / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
  # Any format decode_image reads counts (PIL comes with matplotlib).
  PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / 'train' / 'cat' / 'extra.gif')
  save_animated_webp(root / 'train' / 'dog' / 'animated.webp')
  split = input_pipeline.load_image_folder(str(root), 'train')
  assert len(split.labels) == 13 and any('fox/more/0.jpg' in p for p in split.images)
  assert split.num_classes == 3 and np.bincount(split.labels).tolist() == [5, 4, 4]
  # Each skipped file with the decoder's reason: a truncated download is not an animation.
  assert 'Skipped 3 corrupt or unreadable image(s)' in caplog.text
  assert 'cat/empty.png (Input is empty.)' in caplog.text and 'broken.jpg (' in caplog.text
  assert ('dog/animated.webp (an animated WebP, which TensorFlow cannot decode: save a frame as '
          'PNG or JPEG)') in caplog.text
  assert 'Skipped 1 file(s) without an image extension' in caplog.text and 'notes.txt' in (
      caplog.text)


def missing_root(root):
  return root / 'nowhere'


def class_unknown_to_train(root):
  (root / 'test' / 'cat').rename(root / 'test' / 'lion')
  return root


def empty_class_folder(root):
  for path in (root / 'test' / 'dog').iterdir():
    path.unlink()
  return root


def one_class(root):
  for split in ('train', 'test'):
    for name in ('dog', 'fox'):
      shutil.rmtree(root / split / name)
  return root


def a_file(root):
  (root / 'notes.txt').write_text('not images')
  return root / 'notes.txt'


def the_training_split(root):
  return root / 'train'


@pytest.mark.parametrize('damage, message', [
    (missing_root, r'nowhere does not exist. Expected <data_dir>/train/<class>/\S+ and '
                   r'<data_dir>/test/<class>/\.\.\. \(--config.eval_split\)'),
    (a_file, r'notes.txt is a file, not a folder\. Expected'),
    (one_class, r'train has 1 class folder \(cat\): a classifier needs two or more\.'),
    (the_training_split, r'train/test does not exist\. .* Its parent, .*/\w+, may be the one'),
    (class_unknown_to_train,
     r"Class folder 'lion' .* missing from the training split \(cat, dog, fox\)"),
    (empty_class_folder,
     r'test/dog holds no images \(.jpg, .jpeg, .png, .gif, .bmp, .webp\): add images or remove '
     r'the folder'),
])
def test_image_folder_problems_are_clear_errors(tmp_path, damage, message):
  root = damage(make_image_folder(tmp_path))
  with pytest.raises(UserError, match=message):
    input_pipeline.load_image_folder(str(root), 'test')


def test_an_evaluation_split_without_some_classes_is_named_before_training(tmp_path, caplog):
  whole = make_image_folder(tmp_path / 'whole')
  partial = make_image_folder(tmp_path / 'partial')
  shutil.rmtree(partial / 'test' / 'fox')  # its labels still come from the training split
  for root in (whole, partial):
    input_pipeline.check_eval_split(
        ml_collections.ConfigDict(dict(dataset='folder', data_dir=str(root), eval_split='test')))
  assert caplog.text.count('has no images of') == 1, caplog.text
  assert (f'{partial / "test"} has no images of 1 of the 3 classes (fox): its accuracy says '
          'nothing about them.') in caplog.text


# --- ImageNet-style preprocessing ---

def test_inception_crop_covers_the_stated_area_and_aspect_range():
  image = tf.zeros((200, 300, 3), tf.uint8)
  areas, ratios = [], []
  for seed in range(200):
    h, w, _ = input_pipeline.inception_crop(image, tf.constant([seed, 1])).shape
    areas.append(h * w / (200 * 300))
    ratios.append(w / h)
  assert 0.05 * 0.95 <= min(areas) and max(areas) <= 1.0
  assert min(areas) < 0.2 and max(areas) > 0.7  # the range is used, not one size
  # Rounding to whole pixels can move the ratio slightly outside [3/4, 4/3].
  assert 0.7 <= min(ratios) and max(ratios) <= 1.4


@pytest.mark.parametrize('flip', [False, True])
def test_small_image_augmentation_flips_only_when_asked(flip):
  config = digits.get_config()
  config.augment.update(max_shift=0.0, flip=flip)
  image = tf.constant(np.arange(16 * 16 * 3).reshape(16, 16, 3) % 256, tf.uint8)
  plain = input_pipeline.to_model_input(image, 16).numpy()
  outs = [input_pipeline.train_example(config, position, image, 0)['image'].numpy()
          for position in range(40)]
  mirrored = sum(np.array_equal(out, plain[:, ::-1]) for out in outs)
  assert mirrored + sum(np.array_equal(out, plain) for out in outs) == 40
  assert (10 <= mirrored <= 30) if flip else mirrored == 0


def test_train_preprocessing_flips_half_of_the_time():
  image = tf.constant(np.arange(40 * 40 * 3).reshape(40, 40, 3) % 256, tf.uint8)
  flipped = 0
  for seed in range(40):
    seed = tf.constant([seed, 7], tf.int64)
    crop_seed = tf.random.experimental.stateless_split(seed, 3)[0]
    crop = tf.image.resize(input_pipeline.inception_crop(image, crop_seed), [16, 16],
                           antialias=True)
    crop = tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)
    out = input_pipeline.train_preprocess(image, 16, seed).numpy()
    plain = input_pipeline.to_model_input(crop, 16).numpy()
    mirrored = input_pipeline.to_model_input(crop[:, ::-1], 16).numpy()
    assert np.allclose(out, plain) != np.allclose(out, mirrored)
    flipped += np.allclose(out, mirrored)
  assert 10 <= flipped <= 30


def test_eval_preprocessing_is_a_deterministic_central_crop():
  # Left half dark, right half bright, in a wide image: the central crop holds both halves.
  image = np.zeros((64, 128, 3), np.uint8)
  image[:, 64:] = 255
  a = input_pipeline.eval_preprocess(tf.constant(image), 32).numpy()
  np.testing.assert_array_equal(a, input_pipeline.eval_preprocess(tf.constant(image), 32).numpy())
  assert a.shape == (32, 32, 3)
  np.testing.assert_allclose(a[:, :12], -1.0, atol=1e-3)
  np.testing.assert_allclose(a[:, -12:], 1.0, atol=1e-3)


def test_an_imagenet_style_recipe_on_grey_digits_gets_three_equal_channels():
  # Inception crop and RandAugment (no `augment` block) on 1-channel images in memory: the
  # batches had 1 channel and the model failed on its stem's kernel shape.
  config = finetune.get_config('S/32,digits,smoke')
  train = next(input_pipeline.create_train_dataset(config, 0, 0, 1).as_numpy_iterator())
  test = next(input_pipeline.create_eval_dataset(config, 'test', 0, 1).as_numpy_iterator())
  for batch in (train, test):
    assert batch['image'].shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])
    assert batch['image'].std() > 0.1  # the digits, not a blank
