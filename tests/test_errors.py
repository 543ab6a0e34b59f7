"""How the entry points end on a mistake: one line, the status, nothing else."""
import gc
import subprocess
import sys
import textwrap

import pytest

from mixer_jax import errors


class RaisesWhenCollected:
  """What tensorstore's late callbacks into orbax's closed event loop look like to Python."""

  def __init__(self, error):
    self.error = error

  def __del__(self):
    raise self.error


def test_a_user_error_is_one_line_and_late_callbacks_into_a_closed_loop_are_not_printed(
    monkeypatch, capsys):
  monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)  # restored afterwards

  @errors.reported
  def main(argv):
    del argv
    RaisesWhenCollected(RuntimeError('Event loop is closed'))
    RaisesWhenCollected(KeyError('a real problem'))
    gc.collect()
    raise errors.UserError('batch_size=0: must be a positive integer.')

  with pytest.raises(SystemExit) as exit_:
    main(['train.py'])
  assert exit_.value.code == 1
  err = capsys.readouterr().err
  assert err.endswith('error: batch_size=0: must be a positive integer.\n')
  assert 'a real problem' in err and 'Event loop is closed' not in err


def test_ctrl_c_outside_the_training_loop_is_one_line_and_status_130():
  # In a process of its own: the report ends it without interpreter shutdown (os._exit).
  run = subprocess.run([sys.executable, '-c', textwrap.dedent("""
      from mixer_jax import errors

      @errors.reported
      def main(argv):
        print('started')
        raise KeyboardInterrupt

      main(['train.py'])
      print('not reached')""")], capture_output=True, text=True, timeout=60)
  assert (run.returncode, run.stdout, run.stderr) == (130, 'started\n', 'Interrupted (Ctrl-C).\n')
