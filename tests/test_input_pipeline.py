"""The digits pipeline: shapes and ranges, exact resume, process shards, exact evaluation."""
import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import digits
from mixer_jax import input_pipeline


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


def test_random_shift_is_a_translation_filled_with_background():
  image = tf.random.uniform((16, 16, 3), -0.9, 1.0)
  for seed in range(10):
    shifted = input_pipeline.random_shift(image, 2, seed=tf.constant([seed, 0])).numpy()
    padded = np.pad(image.numpy(), ((2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    offsets = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(padded[dy:dy + 16, dx:dx + 16], shifted)]
    assert len(offsets) == 1


def test_unknown_dataset_is_a_clear_error():
  config = ml_collections.ConfigDict({'dataset': 'mnist'})
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*digits"):
    input_pipeline.load_split(config, 'train')
