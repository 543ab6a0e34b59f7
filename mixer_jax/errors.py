"""Errors in what the user asked for, as opposed to bugs, and how the entry points report them.

train.py, predict.py and the benchmarks print their message, which names the problem, the value
and the fix, as one `error:` line without a traceback, and exit with status 1. A run stopped by a
signal after saving its checkpoint says so in one line and exits with 128 + the signal.
"""
import functools
import os
import signal
import sys

from absl import flags


class UserError(ValueError):
  """A config value, data set, checkpoint or launch setting that cannot work as given."""


class Stopped(Exception):
  """A run stopped by a signal after saving a checkpoint: the same command resumes it."""

  def __init__(self, signal_name: str, step: int, workdir):
    super().__init__(f'Stopped at step {step} on {signal_name}; the checkpoint is saved in '
                     f'{workdir}. Run the same command to resume.')
    # 128 + the signal, as the shell reports a process the signal ended: not 0, so that a
    # Kubernetes Job, a TPU queued resource or a retry loop sees the run unfinished and reruns it.
    self.exit_status = 128 + signal.Signals[signal_name]


def exit_with(message: str, status: int = 1):
  print(message, file=sys.stderr, flush=True)
  sys.exit(status)


def _unless_loop_closed(unraisable):
  # When orbax's restore fails (a corrupt checkpoint), tensorstore still completes its other
  # reads and calls back into the closed event loop: a traceback each, burying the message.
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    sys.__unraisablehook__(unraisable)


def _interrupted_while_starting(*_):
  print('Interrupted (Ctrl-C).', file=sys.stderr, flush=True)
  os._exit(130)  # not SystemExit: unwinding a half-imported extension can crash the interpreter


def end_quietly_on_ctrl_c_while_starting():
  """Ctrl-C during an entry point's seconds of imports ends it with one line, status 130.

  A KeyboardInterrupt raised while jaxlib is being imported killed the interpreter with a
  segmentation fault. `reported` restores the KeyboardInterrupt once main starts.
  """
  signal.signal(signal.SIGINT, _interrupted_while_starting)


def reported(main):
  """An absl main whose UserError, Stopped or Ctrl-C ends the program with one line."""
  @functools.wraps(main)
  def wrapped(argv):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.unraisablehook = _unless_loop_closed
    try:
      return main(argv)
    except (UserError, FloatingPointError) as e:  # FloatingPointError: the run diverged
      exit_with(f'error: {e}')
    except Stopped as e:
      exit_with(str(e), e.exit_status)
    except KeyboardInterrupt:
      exit_with('Interrupted (Ctrl-C).', 130)
  return wrapped


def parse_flags(argv):
  """absl's flag parsing, with a bad flag reported as one `error:` line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with(f'error: {e} (--helpfull lists the flags).')
