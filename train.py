"""Trains and evaluates an MLP-Mixer.

  python train.py                                    # embedded digits default, runs/digits
  python train.py --config configs/digits.py --workdir runs/digits --config.batch_size=64

A run resumes from the newest checkpoint in its workdir. Several hosts: see README ("Many hosts").
"""
import importlib.util
import logging as std_logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # hide TensorFlow's C++ start-up notices

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from mixer_jax import errors, host, trainer

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, 'configs', 'digits.py')


def _config_path(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return _DEFAULT_CONFIG


def _load_config(argv):
  """The config the --config file (or the default) builds, without any overrides."""
  path, _, arg = _config_path(argv).partition(':')
  module = importlib.util.module_from_spec(importlib.util.spec_from_file_location('cfg', path))
  module.__loader__.exec_module(module)
  return module.get_config(*([arg] if arg else []))


def _field_names(config, prefix=''):
  for key, value in config.items():
    yield from (_field_names(value, f'{prefix}{key}.') if hasattr(value, 'items')
                else [f'{prefix}{key}'])


def _has_field(config, dotted: str) -> bool:
  for part in dotted.split('.'):
    if not hasattr(config, 'keys') or part not in config.keys():
      return False
    config = config[part]
  return True


def _exit_on_unknown_fields(argv, config, error):
  """Names every --config.<field> that the config file lacks, with the fields it has."""
  path = _config_path(argv)
  overrides = [arg.split('=')[0] for arg in argv[1:] if arg.startswith('--config.')]
  if overrides and config is None:  # parsing stopped before the flag held its config
    try:
      config = _load_config(argv)
    except Exception:  # the file itself fails: its own error is the one to report
      overrides = []
  unknown = [o for o in overrides if not _has_field(config, o[len('--config.'):])]
  if not unknown:
    message = str(error)
    if 'Traceback' in message:  # raised by the config file's get_config: its message suffices
      message = f'{message.splitlines()[0]} {message.strip().splitlines()[-1]}'
    sys.exit(f'error: {message}\nPass --helpfull to see the flags.')
  sys.exit(f'error: {", ".join(unknown)}: no such field in {path}. Its fields are: '
           f'{", ".join(sorted(_field_names(config)))}.')


try:  # config_flags applies --config.<field> overrides already here, at definition
  config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config file (configs/*.py).',
                                  lock_config=True)
except (AttributeError, KeyError, TypeError) as e:  # TypeError: a path through a plain value
  _exit_on_unknown_fields(sys.argv, None, e)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics and results go here (default: runs/<config name>).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0, for several processes outside TPU pods, SLURM and Open MPI '
    '(default: $JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', int(os.environ.get('JAX_NUM_PROCESSES', 1)),
    'Number of processes (default: $JAX_NUM_PROCESSES or 1).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', int(os.environ.get('JAX_PROCESS_ID', 0)),
    'This process\'s index (default: $JAX_PROCESS_ID or 0).')


def parse_flags(argv):
  """absl flag parsing, with config-field mistakes reported without a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError) as e:
    _exit_on_unknown_fields(argv, flags.FLAGS['config'].value, e)


def initialize_distributed():
  """jax.distributed on a cluster JAX can detect, or with explicit coordinator flags."""
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif (int(os.environ.get('SLURM_NTASKS', 1)) > 1
        or int(os.environ.get('OMPI_COMM_WORLD_SIZE', 1)) > 1
        or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')):
    jax.distributed.initialize()  # TPU pod slice, SLURM or Open MPI: JAX finds the rest
  elif _NUM_PROCESSES.value > 1:
    raise errors.UserError(
        f'--num_processes={_NUM_PROCESSES.value} needs --coordinator_address=host:port of '
        'process 0 (or $JAX_COORDINATOR_ADDRESS).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname)
  config_path = flags.FLAGS['config'].config_filename
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  workdir = _WORKDIR.value or os.path.join('runs', name)
  try:
    initialize_distributed()
    host.keep_freed_memory_on_cpu()  # before the backend starts: ~1.25x faster CPU steps
    results = trainer.train_and_evaluate(flags.FLAGS.config, workdir)
  except (errors.UserError, FloatingPointError) as e:
    sys.exit(f'error: {e}')
  if jax.process_index() != 0:
    return
  if results.get('preempted'):
    print(f"Stopped at step {results['step']} on SIGTERM; the checkpoint is saved in {workdir}. "
          'Run the same command to resume.')
  else:
    split = flags.FLAGS.config.eval_split
    print(f"Final {split} accuracy: {results[f'{split}_accuracy']:.4f} "
          f"(step {results['step']}; written to {os.path.join(workdir, 'results.json')})")


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
