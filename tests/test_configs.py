"""Every recipe runs end to end on its real data pipeline, served by tfds.testing.mock_data."""
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import cifar10_scratch, digits, finetune, pretrain_imagenet, pretrain_imagenet21k
from mixer_jax import checkpoints, config_files, input_pipeline, models, trainer
from mixer_jax.errors import UserError
from training import ROOT

TFDS_DATASETS = ['cifar10', 'cifar100', 'oxford_iiit_pet', 'oxford_flowers102', 'imagenet2012']
# The published class counts (the names come with the prepared data, which mock_data lacks).
CLASSES = {'cifar10': 10, 'cifar100': 100, 'oxford_iiit_pet': 37, 'oxford_flowers102': 102,
           'imagenet2012': 1000}


def pets_as_dataset(self, split, decoders=None, as_supervised=False, **kwargs):
  """Random PNGs of mixed sizes with 37 labels: tfds' own random pets fail on their boxes."""
  del self, split, decoders, kwargs
  rng = np.random.default_rng(0)
  images = [tf.io.encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).numpy()
            for h, w in rng.integers(40, 90, size=(10, 2))]
  ds = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 37, 10)))
  return ds if as_supervised else ds.map(lambda i, l: {'image': i, 'label': l})


def mocked(name):
  extra = {'as_dataset_fn': pets_as_dataset} if name == 'oxford_iiit_pet' else {}
  return tfds.testing.mock_data(num_examples=10, **extra)


def recipe(name):
  if name == 'imagenet2012_pretrain':  # RandAugment, mixup and stochastic depth switched on
    return pretrain_imagenet.get_config('B/16,smoke')
  if name == 'cifar10_scratch':  # shifts, flips and mixup on 32x32 images, patch 4
    return cifar10_scratch.get_config('4,smoke')
  return finetune.get_config(f'B/16,{name},smoke')


@pytest.mark.parametrize('name', TFDS_DATASETS + ['imagenet2012_pretrain', 'cifar10_scratch'])
def test_recipe_trains_evaluates_and_checkpoints(tmp_path, name):
  config = recipe(name)
  name = config.dataset
  config.data_dir = str(tmp_path / 'tfds')
  with mocked(name):
    batch = next(input_pipeline.create_train_dataset(config, 0, 0, 1).as_numpy_iterator())
    assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.float32
    assert -1.0 <= batch['image'].min() < 0 < batch['image'].max() <= 1.0
    assert batch['label'].dtype == np.int32
    results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 3 and 0.0 <= results['test_accuracy'] <= 1.0
  assert (tmp_path / 'run' / 'checkpoints' / '3').is_dir()
  assert (tmp_path / 'run' / 'metrics.jsonl').read_text().count('"split": "test"') == 1
  names = (tmp_path / 'run' / 'labels.txt').read_text().splitlines()  # what predict.py prints
  assert len(names) == len(set(names)) == CLASSES[name]


def test_a_data_set_split_smaller_than_the_eval_batch_is_one_batch_of_its_size(tmp_path):
  """10 examples with eval_batch_size=512: one batch of 10, not 502 of padding. (mock_data
  gives each process's shard 10 examples: test_input_pipeline splits a small split over 7.)"""
  config = recipe('cifar10')
  config.data_dir, config.eval_batch_size = str(tmp_path / 'tfds'), 512
  with mocked('cifar10'):
    [batch] = list(input_pipeline.create_eval_dataset(config, 'test', 0, 1).as_numpy_iterator())
    labels = [label for _, label in tfds.load('cifar10', split='test', data_dir=config.data_dir,
                                              as_supervised=True).as_numpy_iterator()]
  assert batch['image'].shape == (10, 32, 32, 3) and batch['mask'].tolist() == [1.0] * 10
  assert batch['label'].tolist() == labels


def test_recipe_defaults_follow_the_paper():
  config = finetune.get_config('L/16,oxford_iiit_pet')
  assert (config.optimizer, config.batch_size, config.grad_clip_norm, config.weight_decay,
          config.lr_decay, config.image_size) == ('sgd', 512, 1.0, 0.0, 'cosine', 224)
  assert config.total_steps == 500
  assert finetune.get_config('B/16,cifar10').total_steps == 10_000
  assert finetune.get_config('B/16,imagenet2012').total_steps == 20_000
  assert digits.get_config().dataset == 'digits'
  pre = pretrain_imagenet.get_config('L/16')
  assert (pre.optimizer, pre.batch_size, pre.warmup_steps, pre.lr_decay, pre.learning_rate,
          pre.weight_decay, pre.randaug_layers, pre.randaug_magnitude, pre.mixup,
          pre.stoch_depth) == ('adam', 4096, 10_000, 'linear', 1e-3, 0.1, 2, 15, 0.5, 0.1)
  assert pre.total_steps == 300 * 1_268_355 // 4096  # 300 epochs
  # ImageNet-21k: Table 4's own RandAugment and mixup per size, the rest as ImageNet-1k.
  for variant, magnitude, mixup in (('B/16', 10, 0.2), ('L/16', 20, 0.5)):
    in21k = pretrain_imagenet21k.get_config(variant)
    assert (in21k.randaug_magnitude, in21k.mixup) == (magnitude, mixup)
    assert (in21k.optimizer, in21k.batch_size, in21k.warmup_steps, in21k.lr_decay,
            in21k.weight_decay, in21k.stoch_depth) == ('adam', 4096, 10_000, 'linear', 0.1, 0.1)
    assert in21k.total_steps == 300 * 14_197_122 // 4096
  scratch = cifar10_scratch.get_config('2')
  assert (scratch.image_size, scratch.model.patch_size, scratch.dataset) == (32, 2, 'cifar10')


def test_imagenet21k_recipe_trains_on_an_unverified_folder_and_skips_bad_files(tmp_path):
  from test_input_pipeline import make_image_folder
  root = make_image_folder(tmp_path / 'in21k', per_class=6)
  (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'not an image')
  config = pretrain_imagenet21k.get_config('B/16,smoke')
  config.data_dir = str(root)
  # Unverified: the corrupt training file is listed, then skipped as the stream reads it.
  assert len(input_pipeline.load_split(config, 'train').labels) == 19
  epoch = list(input_pipeline.create_train_dataset(config, 0, 0, 1).take(2).as_numpy_iterator())
  assert all(b['image'].shape == (8, 32, 32, 3) for b in epoch)
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 3 and 0.0 <= results['test_accuracy'] <= 1.0
  assert (tmp_path / 'run' / 'checkpoints' / '3').is_dir()


@pytest.mark.parametrize('arg, message', [
    ('finetune.py:B/16,cifar10,smok', r"unknown option 'smok': the argument is VARIANT,DATASET"),
    ('finetune.py:B/16', r"the argument is VARIANT,DATASET\[,smoke\].* not 'B/16'"),
    ('pretrain_imagenet.py:B/16,smoke,fast', r"unknown option 'fast': the argument is VARIANT"),
    ('synthetic.py:S/32,smoke,x', r"unknown option 'x'"),
    ('cifar10_scratch.py:4,smokey', r"unknown option 'smokey': the argument is PATCH"),
    ('digits.py:B/16', r'digits.py takes no argument after ":" \(got \'B/16\'\)'),
    ('digits.py:', r'digits.py takes no argument after ":" \(got \'\'\)'),
    # A helper module, not a recipe: "module 'cfg' has no attribute 'get_config'" before.
    ('smoke.py', r'smoke.py defines no get_config\(\), so it is not a recipe'),
])
def test_a_recipe_refuses_an_argument_it_does_not_know(arg, message):
  # A misspelt `smoke` used to run the full recipe: hours instead of seconds.
  with pytest.raises(ValueError, match=message):
    config_files.load(os.path.join(os.path.dirname(digits.__file__), arg))


@pytest.mark.parametrize('returned, kind', [('config.to_dict()', 'dict'), ('None', 'NoneType')])
def test_a_config_file_must_build_a_config_dict(tmp_path, returned, kind):
  path = tmp_path / 'mine.py'
  path.write_text('from configs import digits\n\n\ndef get_config():\n'
                  f'  config = digits.get_config()\n  return {returned}\n')
  with pytest.raises(TypeError, match=rf'get_config\(\) returned {kind}, not an '
                     r'ml_collections.ConfigDict'):
    config_files.load(str(path))


def test_train_py_help_lists_the_fields_of_the_config_it_is_given():
  run = subprocess.run([sys.executable, 'train.py', '--config=configs/finetune.py:B/16,cifar10',
                        '--help'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0 and 'Traceback' not in run.stderr, run.stderr  # absl's status: 1
  help_text = ' '.join(run.stdout.split())  # absl wraps long lines
  config = finetune.get_config('B/16,cifar10')
  assert 'The fields of configs/finetune.py:B/16,cifar10, each set with --config.<field>=' in (
      help_text)
  for field in ('batch_size', 'learning_rate', 'model.remat', 'optimizer', 'total_steps'):
    assert f'{field}: {config_files.lookup(config, field)!r}' in help_text
  assert "dataset: 'cifar10'" in help_text and "variant: 'B/16'" in help_text


def test_recipe_options_shrink_the_recipe():
  full, smoke = finetune.get_config('B/16,cifar10'), finetune.get_config('B/16,cifar10,smoke')
  assert (full.total_steps, full.batch_size) == (10_000, 512)
  assert (smoke.total_steps, smoke.batch_size) == (3, 8)


def test_data_set_not_on_disk_fails_at_once_with_where_and_how(tmp_path):
  config = finetune.get_config('S/32,cifar10,smoke')
  config.data_dir = str(tmp_path)  # empty
  start = time.time()
  with pytest.raises(UserError, match=rf"'cifar10' is not prepared in {tmp_path}.*"
                     r'tfds build cifar10 --data_dir=DIR.*--config.data_dir=DIR'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert time.time() - start < 10
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not any(
      (tmp_path / 'run' / 'checkpoints').iterdir())


@pytest.mark.parametrize('recipe, manual', [
    (lambda: finetune.get_config('S/32,cifar10,smoke'), None),
    (lambda: pretrain_imagenet.get_config('S/32'),
     'two files: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar')],
    ids=['cifar10', 'imagenet2012'])
def test_data_set_built_from_fetched_files_says_which(tmp_path, recipe, manual):
  # tfds' own instructions for data sets it cannot download, and only for those.
  config = recipe()
  config.data_dir = str(tmp_path)
  with pytest.raises(UserError) as error:
    input_pipeline.load_tfds(config, 'train')
  message = str(error.value)
  assert f'`tfds build {config.dataset} --data_dir=DIR`' in message
  if manual:
    assert f'Before `tfds build`: DIR/downloads/manual should contain {manual}' in message
  else:
    assert 'downloads/manual' not in message and 'ILSVRC' not in message


@pytest.mark.parametrize('dataset, problem', [
    ('cifar10:9.9.9', 'cannot be loaded at version 9.9.9, only: 3.0.2'),
    ('cifar10/grayscale', 'BuilderConfig grayscale not found')])
def test_a_version_or_config_the_data_set_lacks_is_named_not_called_unprepared(
    tmp_path, dataset, problem):
  config = finetune.get_config('S/32,cifar10,smoke')
  config.update(dict(dataset=dataset, data_dir=str(tmp_path)))
  with pytest.raises(UserError, match=rf"tensorflow-datasets cannot load '{dataset}' \(.*"
                     rf'{problem}.*\): check --config.dataset, written NAME, NAME/CONFIG'):
    input_pipeline.load_tfds(config, 'train')


def test_data_dir_that_is_a_file_is_named_as_one(tmp_path):
  config = finetune.get_config('S/32,cifar10,smoke')
  config.data_dir = str(tmp_path / 'cifar10.tar')
  (tmp_path / 'cifar10.tar').write_bytes(b'not a folder')
  with pytest.raises(UserError, match=rf'--config.data_dir={tmp_path}/cifar10.tar is a file, not '
                     r'a folder: give the folder that `tfds build cifar10 --data_dir=DIR` filled'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


class TinyTwoSplits(tfds.core.GeneratorBasedBuilder):
  """A prepared tensorflow-datasets data set with train and test splits only."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, supervised_keys=('image', 'label'),
                                 features=tfds.features.FeaturesDict({
                                     'image': tfds.features.Image(shape=(8, 8, 3)),
                                     'label': tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(), 'test': self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {'image': np.zeros((8, 8, 3), np.uint8), 'label': i % 2}


def test_an_evaluation_split_the_data_set_lacks_fails_before_training(tmp_path):
  TinyTwoSplits(data_dir=str(tmp_path / 'tfds')).download_and_prepare()
  config = finetune.get_config('B/16,tiny_two_splits,smoke')
  config.update(dict(data_dir=str(tmp_path / 'tfds'), eval_split='validation'))
  with pytest.raises(UserError, match=r"'tiny_two_splits' has no split 'validation' \(Unknown "
                                      r"split 'validation'.*\): choose another"):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # nothing written, not even the workdir


def test_walkthrough_npz_to_cifar10_at_the_same_and_at_twice_the_resolution(tmp_path):
  """README walkthrough in small: .npz weights of another head -> fine-tune at 1x and 2x."""
  config = finetune.get_config('B/16,cifar10,smoke')
  config.data_dir = str(tmp_path / 'tfds')
  pretrained = models.create_model('B/16', num_classes=21, **config.model)  # another head
  params = pretrained.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  checkpoints.save_npz(jax.device_get(params), tmp_path / 'pre.npz')
  config.init_from = str(tmp_path / 'pre.npz')
  with mocked('cifar10'):
    trainer.train_and_evaluate(config, str(tmp_path / 'at32'))
    config.image_size = 64
    trainer.train_and_evaluate(config, str(tmp_path / 'at64'))
  for run, tokens in (('at32', 4), ('at64', 16)):
    tuned = checkpoints.load_params(str(tmp_path / run))
    assert tuned['head']['kernel'].shape == (32, 10)
    assert tuned['MixerBlock_0']['token_mixing']['Dense_0']['kernel'].shape == (tokens, 8 * tokens // 4)


def test_fine_tuning_without_weights_is_an_error_unless_asked_for(tmp_path):
  """finetune.py leaves init_from unset: forgetting it would train from random weights."""
  config = finetune.get_config('S/32,digits,smoke')
  assert finetune.get_config('S/32,digits').init_from is None
  config.init_from = None
  with pytest.raises(UserError, match=r"fine-tunes pre-trained weights, and init_from is not "
                     r"set: give --config.init_from=WEIGHTS \(give an .npz.*--config.init_from=''"
                     ' to train from random weights'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
  config.init_from = ''
  trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  config.init_from, config.total_steps = None, 6  # a rerun resumes, with or without it
  assert trainer.train_and_evaluate(config, str(tmp_path / 'run'))['step'] == 6


def test_weights_of_other_sizes_name_flags_the_recipe_takes(tmp_path):
  """The fix a misfit names is settable (locked, as train.py's config): it once named
  --config.model.patch_size, which finetune.py had no field for."""
  custom = models.MlpMixer(num_classes=10, num_blocks=2, patch_size=4, hidden_dim=16,
                           tokens_mlp_dim=8, channels_mlp_dim=32)
  params = custom.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  checkpoints.save_npz(jax.device_get(params), tmp_path / 'custom.npz')
  config = finetune.get_config('S/32,digits,smoke')
  config.init_from = str(tmp_path / 'custom.npz')
  config.lock()
  with pytest.raises(UserError, match='The weights have 4x4 patches') as error:
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  named = re.findall(r'--config\.model\.(\w+)=(\d+)', str(error.value))
  assert dict(named) == dict(num_blocks='2', patch_size='4', hidden_dim='16', tokens_mlp_dim='8',
                             channels_mlp_dim='32')
  assert "--config.variant='' --config.model.num_blocks" in str(error.value)
  config.variant = ''
  for field, value in named:
    config.model[field] = int(value)
  assert trainer.train_and_evaluate(config, str(tmp_path / 'run'))['step'] == 3
  tuned = checkpoints.load_params(str(tmp_path / 'run'))['stem']['kernel']
  assert np.corrcoef(tuned.ravel(), params['stem']['kernel'].ravel())[0, 1] > 0.9  # started there
