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


def _unless_expected(unraisable):
  # When orbax's restore fails (a corrupt checkpoint), tensorstore still completes its other
  # reads and calls back into the closed event loop: a traceback each, burying the message.
  # A Ctrl-C that JAX's garbage-collection callback dropped is remembered (ctrl_c_pressed).
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
          or isinstance(error, KeyboardInterrupt) and ctrl_c_pressed):
    sys.__unraisablehook__(unraisable)


def interrupted_now(*_):
  """Ends the process with one line and status 130, without unwinding or interpreter shutdown:
  either can crash with a segmentation fault when the Ctrl-C came inside jaxlib's import or
  XLA's compilation. A signal handler, for Ctrl-C during imports and for a second Ctrl-C."""
  sys.stdout.flush()
  print('Interrupted (Ctrl-C).', file=sys.stderr, flush=True)
  os._exit(130)


def _on_ctrl_c(handler):
  """SIGINT's handler, unless the shell set it to be ignored (`train.py &` in a script)."""
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, handler)


def end_quietly_on_ctrl_c_while_starting():
  """Ctrl-C during an entry point's seconds of imports ends it with one line, status 130.

  A KeyboardInterrupt raised while jaxlib is being imported killed the interpreter with a
  segmentation fault. `reported` restores the KeyboardInterrupt once main starts.
  """
  _on_ctrl_c(interrupted_now)


ctrl_c_pressed = False


def _ctrl_c(signum, frame):
  # Remembered too: JAX's garbage-collection callback drops exceptions raised while it runs,
  # and the run went on as if the key had not been pressed (trainer.Preemption checks this).
  global ctrl_c_pressed
  ctrl_c_pressed = True
  raise KeyboardInterrupt


def reported(main):
  """An absl main whose UserError, Stopped or Ctrl-C ends the program with one line."""
  @functools.wraps(main)
  def wrapped(argv):
    _on_ctrl_c(_ctrl_c)
    sys.unraisablehook = _unless_expected
    try:
      return main(argv)
    except (UserError, FloatingPointError) as e:  # FloatingPointError: the run diverged
      exit_with(f'error: {e}')
    except Stopped as e:
      exit_with(str(e), e.exit_status)
    except KeyboardInterrupt:
      interrupted_now()  # the unwinding has run: the workdir's lock is released
  return wrapped


def parse_flags(argv):
  """absl's flag parsing, with a bad flag reported as one `error:` line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with(f'error: {e} (--helpfull lists the flags).')
