"""Trains and evaluates an MLP-Mixer.

  python train.py                                    # embedded digits default, runs/digits
  python train.py --config configs/digits.py --workdir runs/digits --config.batch_size=64

A run resumes from the newest checkpoint in its workdir. Several hosts: see README ("Many hosts").
"""
import contextlib
import logging as std_logging
import os
import signal
import sys
import threading
import time

from mixer_jax import errors

errors.end_quietly_on_ctrl_c_while_starting()  # the imports below take seconds
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # hide TensorFlow's C++ start-up notices

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from mixer_jax import config_files, host, lock, paths, trainer

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, 'configs', 'digits.py')


sys.argv[:] = config_files.expand_home(sys.argv)
_config = config_files.exit_unless_loadable(sys.argv, _DEFAULT_CONFIG)  # before config_flags
try:  # config_flags applies --config.<field> overrides already here, at definition
  config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG, 'Config file (configs/*.py[:argument]). ' +
      config_files.fields_help(_config, config_files.config_arg(sys.argv, _DEFAULT_CONFIG)),
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
_CONNECT_TIMEOUT = flags.DEFINE_integer(
    'connect_timeout', 300, 'Seconds the processes wait for each other to connect at start-up.',
    lower_bound=1)


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


@contextlib.contextmanager
def _reporting_the_wait(index: int, count: int, address: str, timeout: int):
  """A line a minute while the processes connect, and one error line where JAX, at the
  timeout, aborts with a stack dump that blames a task that died (it may never have started)."""
  connected, start = threading.Event(), time.monotonic()
  give_up = timeout - min(5, timeout / 10)  # just before JAX's own abort

  def watch():
    while not connected.wait(min(60, give_up - (time.monotonic() - start))):
      waited = time.monotonic() - start
      if waited >= give_up:
        errors.end_now(
            f'error: Process {index} of {count}: not all {count} processes connected to {address} '
            f'within {timeout} s. Start every one with the same --coordinator_address and '
            f'--num_processes and its own --process_id from 0 to {count - 1}, check that every '
            'host reaches that address, or wait longer with --connect_timeout=SECONDS.', 1)
      logging.info('Process %d of %d: still waiting for the others to connect (%.0f s of %d).',
                   index, count, waited, timeout)

  threading.Thread(target=watch, daemon=True, name='connect-watch').start()
  # Python's handlers would run only once JAX returns: Ctrl-C and SIGTERM end the wait at once
  # (nothing is written yet). JAX's preemption service takes SIGTERM over as it connects.
  ctrl_c = signal.getsignal(signal.SIGINT)
  for signum in (signal.SIGINT, signal.SIGTERM):
    errors.handle_unless_ignored(signum, signal.SIG_DFL)
  try:
    yield
  finally:
    connected.set()
    signal.signal(signal.SIGINT, ctrl_c)


def initialize_distributed(workdir):
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
  if address or detected:
    with contextlib.suppress(*paths.storage_errors()):  # the trainer names storage problems
      lock.WorkdirLock(workdir).refuse_if_held_on_this_host()
  try:
    if address:
      logging.info('Process %d of %d: waiting for all %d processes to connect to %s.', index,
                   count, count, address)
      with _reporting_the_wait(index, count, address, _CONNECT_TIMEOUT.value):
        jax.distributed.initialize(address, count, index,
                                   initialization_timeout=_CONNECT_TIMEOUT.value)
      if jax.process_count() != count:  # process 0's count holds, and the run trains with it
        logging.warning('Process %d: --num_processes=%d, but process 0 started %d processes: '
                        'training with %d. Give every process the same --num_processes.', index,
                        count, jax.process_count(), jax.process_count())
    elif detected:
      jax.distributed.initialize()  # TPU pod slice, SLURM or Open MPI
  except (RuntimeError, ValueError) as e:
    raise errors.UserError(f'jax.distributed could not start ({errors.gist(e)}): check '
                           '--coordinator_address, --num_processes and --process_id.') from e


@errors.reported
def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {" ".join(argv[1:])}: settings are '
                           '--config.<field>=<value>, the run\'s folder --workdir=DIR.')
  # orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname)
  if _WORKDIR.value is not None and not _WORKDIR.value.strip():  # else runs/<recipe>, silently
    raise errors.UserError('--workdir is empty (an unset variable in the command?): give a '
                           'folder or gs:// URL, or leave the flag out for runs/<recipe>.')
  config_path = flags.FLAGS['config'].config_filename
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  workdir = paths.resolve(_WORKDIR.value or os.path.join('runs', name))
  initialize_distributed(workdir)
  host.keep_freed_memory_on_cpu()  # before the backend starts: ~1.25x faster CPU steps
  results = trainer.train_and_evaluate(flags.FLAGS.config, workdir)
  if jax.process_index() == 0:
    split = flags.FLAGS.config.eval_split
    print(f"Final {split} accuracy: {results[f'{split}_accuracy']:.4f} "
          f"(step {results['step']}; written to {workdir / 'results.json'})")


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: config_files.parse_flags(argv, _DEFAULT_CONFIG))
