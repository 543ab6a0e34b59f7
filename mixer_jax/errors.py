"""Errors in what the user asked for, as opposed to bugs, and how the entry points report them.

train.py, predict.py and the benchmarks print their message, which names the problem, the value
and the fix, as one `error:` line without a traceback, and exit with status 1. A run stopped by a
signal after saving its checkpoint says so in one line and exits with 128 + the signal; SIGTERM
or Ctrl-C elsewhere (start-up, the final evaluation, between a study's runs) unwinds, which
releases the workdir's lock, and ends with one line and the same status.
"""
import errno
import functools
import logging
import math
import os
import re
import signal
import sys

from absl import flags


class UserError(ValueError):
  """A config value, data set, checkpoint or launch setting that cannot work as given."""


class EndAtOnce(UserError):
  """A UserError after which the program ends without Python's shutdown, which waits for every
  thread: after a checkpoint write failed on one of several processes, orbax's threads wait in
  barriers for the others for 20 minutes. `before_exit` runs once the message is out: where
  the processes meet (jax.distributed.shutdown), as JAX's coordinator, on process 0, aborts any
  process still running when it ends."""

  def __init__(self, message: str, before_exit):
    super().__init__(message)
    self.before_exit = before_exit


class Terminated(BaseException):
  """SIGTERM outside the training loop (which saves a checkpoint first): like KeyboardInterrupt,
  not caught by `except Exception`, so the program unwinds to `reported`."""


class Stopped(Exception):
  """A run stopped by a signal after saving a checkpoint: the same command resumes it."""

  def __init__(self, signal_name: str, step: int, workdir):
    super().__init__(f'Stopped at step {step} on {signal_name}; the checkpoint is saved in '
                     f'{workdir}. Run the same command to resume.')
    # 128 + the signal, as the shell reports a process the signal ended: not 0, so that a
    # Kubernetes Job, a TPU queued resource or a retry loop sees the run unfinished and reruns it.
    self.exit_status = 128 + signal.Signals[signal_name]


def say(message: str):
  """One line on stderr in one write: print's two (text, then newline) let a C++ logger's line,
  such as TensorFlow's summary writer failing in its thread, end up inside ours."""
  sys.stderr.write(message + '\n')
  sys.stderr.flush()


def exit_with(message: str, status: int = 1):
  say(message)
  sys.exit(status)


def _unless_expected(unraisable):
  # When orbax's restore fails (a corrupt checkpoint), tensorstore still completes its other
  # reads and calls back into the closed event loop: a traceback each, burying the message.
  # A Ctrl-C or SIGTERM that JAX's garbage-collection callback dropped is remembered (pending).
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
          or isinstance(error, (KeyboardInterrupt, Terminated)) and pending):
    sys.__unraisablehook__(unraisable)


def end_now(message: str, status: int, before_exit=lambda: None):
  """Ends the process without unwinding or interpreter shutdown: either can crash with a
  segmentation fault when the signal came inside jaxlib's import or XLA's compilation."""
  sys.stdout.flush()
  say(message)
  before_exit()
  os._exit(status)


def interrupted_now(*_):
  """Ctrl-C: one line and status 130, at once. A signal handler, for Ctrl-C during imports and
  for a second Ctrl-C."""
  end_now('Interrupted (Ctrl-C).', 130)


def handle_unless_ignored(signum: int, handler):
  """Sets the signal's handler, unless the shell set it to be ignored (SIGINT for `train.py &`
  in a script)."""
  if signal.getsignal(signum) is not signal.SIG_IGN:
    signal.signal(signum, handler)


def end_quietly_on_ctrl_c_while_starting():
  """Ctrl-C during an entry point's seconds of imports ends it with one line, status 130.

  A KeyboardInterrupt raised while jaxlib is being imported killed the interpreter with a
  segmentation fault. `reported` restores the KeyboardInterrupt once main starts.
  """
  handle_unless_ignored(signal.SIGINT, interrupted_now)


pending = None  # the KeyboardInterrupt or Terminated last raised by a signal


def _raise_on_signal(signum, frame):
  # Remembered too: JAX's garbage-collection callback drops exceptions raised while it runs,
  # and the run went on as if the signal had not come (trainer.Preemption checks this).
  global pending
  pending = KeyboardInterrupt if signum == signal.SIGINT else Terminated
  raise pending


def gist(error: Exception) -> str:
  """An error's first line, without what libraries wrap around it: tensorstore's kilobytes of
  spec, TensorFlow's op name ('{{function_node ...}} Unknown image ... [Op:DecodeImage]')."""
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  line = line.split(' [tensorstore_spec=')[0].split('. See full TensorStore details')[0]
  return re.sub(r'^\{\{.*?\}\}\s*|\s*\[Op:\w+\].*$', '', line)


# A disk or quota that is full, or a file-size limit: never a mistake in the program.
_STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def reported(main):
  """An absl main whose UserError, Stopped, Ctrl-C or SIGTERM ends the program with one line."""
  @functools.wraps(main)
  def wrapped(argv):
    # Across processes, jax.distributed's preemption service takes SIGTERM over once started.
    for signum in (signal.SIGINT, signal.SIGTERM):
      handle_unless_ignored(signum, _raise_on_signal)
    sys.unraisablehook = _unless_expected
    # JAX's search for a TPU logs, on every other machine, "Unable to initialize backend 'tpu'".
    logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
    try:
      return main(argv)
    except EndAtOnce as e:  # unwound: the workdir's lock is released
      end_now(f'error: {e}', 1, e.before_exit)
    except (UserError, FloatingPointError) as e:  # FloatingPointError: the run diverged
      exit_with(f'error: {e}')
    except OSError as e:
      if e.errno not in _STORAGE_FULL:
        raise
      exit_with(f'error: {e.strerror}{f" ({e.filename})" if e.filename else ""}: free space, '
                'or write to a folder on another disk, and run the same command again.')
    except Stopped as e:
      exit_with(str(e), e.exit_status)
    except KeyboardInterrupt:  # the unwinding has run: the workdir's lock is released
      interrupted_now()
    except Terminated:
      end_now('Terminated (SIGTERM).', 128 + signal.SIGTERM)
  return wrapped


_HELP = {f'{dash}{name}' for dash in ('-', '--') for name in ('help', 'helpfull', 'helpshort',
                                                               'helpxml', '?')}


def absl_flags(argv):
  """flags.FLAGS(argv), except that help asked for ends with status 0 (absl's is 1, a failure
  to a shell or a script)."""
  try:
    rest = flags.FLAGS(argv)
  except SystemExit as e:
    if e.code == 1 and _HELP & set(argv[1:]):
      sys.exit(0)
    raise
  for name in flags.FLAGS:  # absl's bounds let NaN through (every comparison with it is False)
    value = flags.FLAGS[name].value
    if flags.FLAGS[name].present and isinstance(value, float) and not math.isfinite(value):
      raise flags.IllegalFlagValueError(f'flag --{name}={value}: must be a finite number')
  return rest


def flag_error(error: flags.Error) -> str:
  """absl's message for a bad flag, less its guesses among absl's logging flags (--log_dir for a
  mistyped --workdir), which these commands neither use nor list in --help."""
  message, _, guesses = str(error).partition('. Did you mean: ')
  logging_flags = {f.name for f in flags.FLAGS.get_flags_for_module('absl.logging')}
  ours = [g for g in guesses.rstrip(' ?').split(', ') if g and g not in logging_flags]
  return f'{message}. Did you mean: {", ".join(ours)} ?' if ours else message


def parse_flags(argv):
  """absl's flag parsing, with a bad flag reported as one `error:` line."""
  try:
    return absl_flags(argv)
  except flags.Error as e:
    exit_with(f'error: {flag_error(e)} (--help lists the flags).')
