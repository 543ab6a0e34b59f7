"""Every setting that cannot work stops the run before anything is read, written or compiled."""
import os
import subprocess
import sys

import pytest

from configs import digits, finetune, synthetic
from mixer_jax import trainer, validation
from mixer_jax.errors import UserError
from training import ROOT


def digits_with(**fields):
  config = digits.get_config()
  for dotted, value in fields.items():
    *parents, name = dotted.split('__')
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def digits_without(*fields):
  """A hand-trimmed (or older) copy of the digits recipe."""
  config = digits.get_config()
  for field in fields:
    del config[field]
  return config


def finetune_without_variant():
  config = finetune.get_config('B/16,cifar10,smoke')
  config.variant = ''
  del config.model['num_blocks']
  return config


def synthetic_with_no_classes():
  config = synthetic.get_config('S/32,smoke')
  config.num_classes = 0
  return config


@pytest.mark.parametrize('config, message', [
    # Counts and intervals: zero or negative ones crashed or looped (a modulo by 0 after training).
    (digits_with(batch_size=0), r'batch_size=0: must be a positive integer'),
    (digits_with(eval_every=0), r'eval_every=0: must be a positive integer'),
    (digits_with(grad_accum_steps=-2), r'grad_accum_steps=-2: must be a positive integer'),
    (digits_with(model__hidden_dim=0), r'model.hidden_dim=0: must be a positive integer'),
    (synthetic_with_no_classes(), r'num_classes=0: must be a positive integer'),
    (digits_with(warmup_steps=-1), r'warmup_steps=-1: must be 0 or more'),
    (digits_with(learning_rate=0.0), r'learning_rate=0.0: must be more than 0'),
    # NaN and inf passed every range check: the run diverged at its first step, or (mixup) trained.
    (digits_with(learning_rate=float('nan')), r'learning_rate=nan: must be a finite number'),
    (digits_with(grad_clip_norm=float('inf')), r'grad_clip_norm=inf: must be a finite number'),
    (digits_with(mixup=float('nan')), r'mixup=nan: must be a finite number'),
    (digits_with(stoch_depth=1.0), r'stoch_depth=1.0: must be in \[0, 1\)'),
    (digits_with(augment__max_shift=0.9), r'augment.max_shift=0.9: must be a fraction'),
    # keep_checkpoints=0 made orbax delete every checkpoint, a resumed run's only state too.
    (digits_with(keep_checkpoints=0), r'keep_checkpoints=0: at least the newest checkpoint'),
    # Names.
    (digits_with(dtype='f16'), r"dtype='f16' is not one of float32, bfloat16, float16"),
    (digits_with(optimizer='adamw'), r"optimizer='adamw' is not one of adam, sgd"),
    (digits_with(eval_split='validation'), r"eval_split='validation': 'digits' has only train "
                                           r'and test'),
    (digits_with(dataset='folder'), r'dataset=folder needs --config.data_dir'),
    # Fields missing from one's own config: tracebacks from ml_collections before, some after
    # files were written; without `augment` the ImageNet-style pipeline failed inside tf.data.
    (digits_without('mixup'), r'The config has no field mixup, which this run reads: add it'),
    (digits_without('grad_accum_steps', 'stoch_depth'), r'no field grad_accum_steps, '
                                                       r'stoch_depth, .*add them'),
    (digits_without('augment'), r'no field randaug_layers, randaug_magnitude,'),
    # The model.
    (digits_with(variant='B/8'), r"variant='B/8' is not a Table 1 variant"),
    (digits_with(variant='B/16'), r'variant=B/16 would have no effect: config.model sets all of '
                                  r'its sizes \(num_blocks=4'),
    (finetune_without_variant(), r'No model size for num_blocks'),
    (digits_with(image_size=18), r'image_size=18 is not a multiple of the patch size 4: use 16 '
                                 r'or 20'),
])
def test_a_setting_that_cannot_work_stops_the_run_before_it_touches_the_workdir(
    tmp_path, config, message):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '100').mkdir(parents=True)  # an earlier run's state
  (workdir / 'checkpoints' / '100' / 'state').write_text('keep me')
  with pytest.raises(UserError, match=message):
    trainer.train_and_evaluate(config, str(workdir))
  assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob('*')) == [
      'checkpoints', 'checkpoints/100', 'checkpoints/100/state']


def test_an_unknown_dataset_is_named_before_tensorflow_is_imported(tmp_path):
  """TensorFlow takes seconds to import (train.py named one after 9.9 s before, 3.5 s now, on a
  slow day): tensorflow-datasets' registry, which needs none, names the mistake."""
  script = f"""
import sys
from configs import digits
from mixer_jax import trainer
from mixer_jax.errors import UserError
for name in ('imagenet', 'cifar-10'):
  config = digits.get_config()
  config.dataset, config.data_dir = name, ''
  try:
    trainer.train_and_evaluate(config, {str(tmp_path)!r} + '/' + name)
  except UserError as e:
    print(*str(e).split()[:4], 'tensorflow' in sys.modules)
"""
  run = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.splitlines() == ["Unknown dataset 'imagenet': use False",
                                     "Unknown dataset 'cifar-10': use False"], run.stdout
  assert not list(tmp_path.iterdir())
  # Names it knows, with a config or version too, and community ones, are left to the loader.
  for name in ('digits', 'folder', 'synthetic', 'cifar10', 'imagenet2012/5.1.0',
               'oxford_iiit_pet:4.*.*', 'huggingface:mnist'):
    validation.check_dataset_name(name)
