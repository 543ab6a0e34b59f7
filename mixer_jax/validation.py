"""Checks of a training config that need no data, devices or compilation.

`check_config` runs before anything is loaded or written, so that a mistake stops the run in a
second with a message naming the field, its value and the fix, instead of a traceback (or a
wrong result) after hours of training.
"""
import math

from mixer_jax import config_files, models
from mixer_jax.errors import UserError

IN_MEMORY = ('digits', 'folder')  # other names but 'synthetic' are tensorflow-datasets names
MODEL_SIZES = ('num_blocks', 'patch_size', 'hidden_dim', 'tokens_mlp_dim', 'channels_mlp_dim')
POSITIVE_INTS = ('batch_size', 'eval_batch_size', 'total_steps', 'grad_accum_steps', 'log_every',
                 'eval_every', 'checkpoint_every', 'image_size', 'shuffle_buffer', 'num_classes',
                 *(f'model.{size}' for size in MODEL_SIZES))
NON_NEGATIVE = ('warmup_steps', 'randaug_layers', 'randaug_magnitude', 'mixup', 'weight_decay')
# NaN passes every range check below (each comparison is False), and inf some of them.
FLOATS = ('learning_rate', 'grad_clip_norm', 'randaug_magnitude', 'mixup', 'weight_decay',
          'stoch_depth', 'augment.max_shift')
CHOICES = {'dtype': ('float32', 'bfloat16', 'float16'), 'optimizer': ('adam', 'sgd'),
           'lr_decay': ('cosine', 'linear'), 'eval_split': ('test', 'validation', 'train')}


# What the trainer reads from every config (each recipe in configs/ sets them all).
REQUIRED = ('batch_size', 'checkpoint_every', 'dataset', 'dtype', 'eval_batch_size', 'eval_every',
            'eval_split', 'grad_accum_steps', 'grad_clip_norm', 'image_size', 'init_from',
            'keep_checkpoints', 'learning_rate', 'log_every', 'lr_decay', 'mixup', 'model',
            'optimizer', 'seed', 'stoch_depth', 'total_steps', 'variant', 'warmup_steps',
            'weight_decay')


def missing_fields(config) -> list[str]:
  """The fields this config's run would read and the config lacks."""
  missing = [f for f in REQUIRED if f not in config]
  dataset = config.get('dataset')
  if dataset not in ('synthetic', None):
    if 'augment' not in config:  # without one, the ImageNet-style pipeline (RandAugment)
      missing += [f for f in ('randaug_layers', 'randaug_magnitude') if f not in config]
    if dataset != 'digits':
      missing += [f for f in ('data_dir',) if f not in config]
  return missing


def model_sizes(config) -> dict[str, int]:
  """The five Table 1 sizes the run builds: the variant's, with `config.model` overriding."""
  variant = models.variant_name(config.variant)
  if variant and variant not in models.VARIANTS:
    raise UserError(f'variant={config.variant!r} is not a Table 1 variant: use one of '
                    f'{", ".join(models.VARIANTS)}, or \'\' with the sizes in config.model.')
  given = {k: config.model[k] for k in MODEL_SIZES if config.model.get(k) is not None}
  if variant and len(given) == len(MODEL_SIZES):
    raise UserError(
        f'variant={config.variant} would have no effect: config.model sets all of its sizes ('
        + ', '.join(f'{k}={v}' for k, v in given.items()) + '). Use a recipe built on variants '
        '(configs/finetune.py, pretrain_*.py, synthetic.py), or set the sizes with '
        '--config.model.<size>.')
  sizes = {**models.VARIANTS.get(variant, {}), **given}
  missing = [k for k in MODEL_SIZES if k not in sizes]
  if missing:
    raise UserError(f'No model size for {", ".join(missing)}: set --config.variant to a Table 1 '
                    f'variant ({", ".join(models.VARIANTS)}) or give --config.model.<size>.')
  return sizes


def unknown_dataset(name: str) -> UserError:
  return UserError(f'Unknown dataset {name!r}: use digits, folder (with data_dir), or a '
                   'tensorflow-datasets name such as cifar10, cifar100, oxford_iiit_pet, '
                   'oxford_flowers102 or imagenet2012.')


def check_dataset_name(name: str):
  """A name tensorflow-datasets does not know, looked up in its registry, which needs no
  TensorFlow: the mistake is named before TensorFlow's import (seconds) and any loading."""
  if name in (*IN_MEMORY, 'synthetic'):
    return
  try:
    import tensorflow_datasets as tfds
  except ImportError:  # the input pipeline's import names what is missing
    return
  try:
    parsed, _ = tfds.core.naming.parse_builder_name_kwargs(name)
    if parsed.namespace:  # a community data set: looking it up imports TensorFlow, reads GCS
      return
    tfds.builder_cls(str(parsed))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise unknown_dataset(name) from e
  except ValueError as e:
    if 'builder name' in str(e):  # not NAME[/CONFIG][:VERSION]
      raise unknown_dataset(name) from e
  except Exception:  # noqa: BLE001 (a builder's own import problem: the loader reports it)
    pass


def check_config(config):
  """Raises UserError for the first field that cannot work, naming its value and the fix."""
  missing = missing_fields(config)
  if missing:
    raise UserError(
        f'The config has no field {", ".join(missing)}, which this run reads: add '
        f'{"it" if len(missing) == 1 else "them"} to the config file (configs/digits.py and '
        'configs/finetune.py set every field, with what each means).')
  for field in FLOATS:
    value = config_files.lookup(config, field)
    if value is not None and not math.isfinite(value):
      raise UserError(f'{field}={value}: must be a finite number (--config.{field}=X).')
  for field in POSITIVE_INTS:
    value = config_files.lookup(config, field)
    if value is not None and value < 1:
      raise UserError(f'{field}={value}: must be a positive integer (--config.{field}=N).')
  for field in NON_NEGATIVE:
    value = config_files.lookup(config, field)
    if value is not None and value < 0:
      raise UserError(f'{field}={value}: must be 0 or more (--config.{field}=N).')
  for field in ('learning_rate', 'grad_clip_norm'):
    if config[field] <= 0:
      raise UserError(f'{field}={config[field]}: must be more than 0.')
  if config.keep_checkpoints < 1:
    raise UserError(
        f'keep_checkpoints={config.keep_checkpoints}: at least the newest checkpoint must be '
        'kept, it is the run\'s state (and a resumed run\'s only copy). Use 1 or more.')
  if not 0 <= config.stoch_depth < 1:
    raise UserError(f'stoch_depth={config.stoch_depth}: must be in [0, 1).')
  max_shift = config_files.lookup(config, 'augment.max_shift', 0)
  if not 0 <= max_shift <= 0.5:
    raise UserError(f'augment.max_shift={max_shift}: must be a fraction of the image size in '
                    '[0, 0.5].')
  for field, choices in CHOICES.items():
    if config[field] not in choices:
      raise UserError(f'{field}={config[field]!r} is not one of {", ".join(choices)}.')
  check_dataset_name(config.dataset)
  if config.dataset == 'digits' and config.eval_split not in ('train', 'test'):
    raise UserError(f"eval_split={config.eval_split!r}: 'digits' has only train and test.")
  if config.dataset == 'folder' and not config.data_dir:
    raise UserError('dataset=folder needs --config.data_dir=<folder holding train/ and test/>.')
  patch = model_sizes(config)['patch_size']
  if config.image_size % patch:
    below = config.image_size // patch * patch
    options = ' or '.join(str(s) for s in sorted({below or patch, below + patch}))
    raise UserError(f'image_size={config.image_size} is not a multiple of the patch size {patch}: '
                    f'use {options}.')
