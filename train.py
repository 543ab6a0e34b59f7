"""Trains and evaluates an MLP-Mixer.

  python train.py                                    # embedded digits default, runs/digits
  python train.py --config configs/digits.py --workdir runs/digits --config.batch_size=64

A run resumes from the newest checkpoint in its workdir. Several hosts: see README ("Many hosts").
"""
import logging as std_logging
import os
import sys

from mixer_jax import errors

errors.end_quietly_on_ctrl_c_while_starting()  # the imports below take seconds
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # hide TensorFlow's C++ start-up notices

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from mixer_jax import config_files, host, paths, trainer

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, 'configs', 'digits.py')


sys.argv[:] = config_files.expand_home(sys.argv)
config_files.exit_unless_loadable(sys.argv, _DEFAULT_CONFIG)  # before config_flags loads it
try:  # config_flags applies --config.<field> overrides already here, at definition
  config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config file (configs/*.py).',
                                  lock_config=True)
except (AttributeError, KeyError, TypeError) as e:  # TypeError: a path through a plain value
  config_files.exit_on_unknown_fields(sys.argv, None, e, _DEFAULT_CONFIG)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics and results go here, a folder or a gs:// URL '
    '(default: runs/<config name>).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0, for several processes outside TPU pods, SLURM and Open MPI '
    '(default: $JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (default: $JAX_NUM_PROCESSES or 1).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process\'s index (default: $JAX_PROCESS_ID or 0).')


def _launch_setting(flag, variable: str, default):
  """A flag's value, else the environment variable's, as the flag's type."""
  if flag.value is not None:
    return flag.value
  value = os.environ.get(variable)
  if value is None:
    return default
  if isinstance(default, int) and not value.isdigit():
    raise errors.UserError(f'${variable}={value!r} is not a number: unset it or give '
                           f'--{flag.name}=N.')
  return type(default)(value)


def initialize_distributed():
  """jax.distributed on a cluster JAX can detect, or with explicit coordinator flags."""
  address = _launch_setting(_COORDINATOR, 'JAX_COORDINATOR_ADDRESS', '')
  count = _launch_setting(_NUM_PROCESSES, 'JAX_NUM_PROCESSES', 1)
  index = _launch_setting(_PROCESS_ID, 'JAX_PROCESS_ID', 0)
  if count < 1:
    raise errors.UserError(f'--num_processes={count}: must be 1 or more.')
  if not 0 <= index < count:
    raise errors.UserError(f'--process_id={index} with --num_processes={count}: give each '
                           f'process an id from 0 to {count - 1}.')
  coordinator, _, port = address.rpartition(':')
  if address and not (coordinator and port.isdigit()):
    raise errors.UserError(f'--coordinator_address={address!r}: give host:port of process 0, '
                           'e.g. 10.0.0.1:1234.')
  detected = (int(os.environ.get('SLURM_NTASKS', 1)) > 1
              or int(os.environ.get('OMPI_COMM_WORLD_SIZE', 1)) > 1
              or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''))  # JAX finds the rest
  if count > 1 and not (address or detected):
    raise errors.UserError(
        f'--num_processes={count} needs --coordinator_address=host:port of process 0 (or '
        '$JAX_COORDINATOR_ADDRESS).')
  try:
    if address:
      # Until every process has connected, JAX says nothing; it gives up after 5 minutes.
      logging.info('Process %d of %d: waiting for all %d processes to connect to %s.', index,
                   count, count, address)
      jax.distributed.initialize(address, count, index)
    elif detected:
      jax.distributed.initialize()  # TPU pod slice, SLURM or Open MPI
  except (RuntimeError, ValueError) as e:
    raise errors.UserError(f'jax.distributed could not start ({str(e).splitlines()[0]}): check '
                           '--coordinator_address, --num_processes and --process_id.') from e


@errors.reported
def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {" ".join(argv[1:])}: settings are '
                           '--config.<field>=<value>.')
  # orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname)
  config_path = flags.FLAGS['config'].config_filename
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  workdir = paths.resolve(_WORKDIR.value or os.path.join('runs', name))
  initialize_distributed()
  host.keep_freed_memory_on_cpu()  # before the backend starts: ~1.25x faster CPU steps
  results = trainer.train_and_evaluate(flags.FLAGS.config, workdir)
  if jax.process_index() == 0:
    split = flags.FLAGS.config.eval_split
    print(f"Final {split} accuracy: {results[f'{split}_accuracy']:.4f} "
          f"(step {results['step']}; written to {workdir / 'results.json'})")


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: config_files.parse_flags(argv, _DEFAULT_CONFIG))
