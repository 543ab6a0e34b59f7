"""How the entry points end on a mistake: one line, the status, nothing else."""
import gc
import os
import subprocess
import sys
import textwrap

import pytest

from mixer_jax import errors
from training import ROOT, file_size_limit


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


def test_the_error_line_stays_whole_while_another_thread_logs():
  """TensorFlow's summary writer logs from its own thread, straight to file descriptor 2, as the
  trainer reports the failed write that stopped the run: no log line may land inside ours."""
  run = subprocess.run([sys.executable, '-c', textwrap.dedent("""
      import os, threading
      from mixer_jax import errors

      def log():
        while True:
          os.write(2, b'W tf: could not flush events\\n')

      threading.Thread(target=log, daemon=True).start()
      for _ in range(2000):
        errors.say('error: ' + 'x' * 200)
      errors.exit_with('error: the last one')""")], capture_output=True, text=True, timeout=60)
  lines = [line for line in run.stderr.splitlines() if not line.startswith('W tf: ')]
  assert run.returncode == 1 and lines == ['error: ' + 'x' * 200] * 2000 + ['error: the last one']


def test_a_full_disk_is_one_line_and_other_os_errors_keep_their_traceback(tmp_path):
  """Any entry point (a study's figure, a benchmark's JSON lines) that cannot write for want of
  space says so in one line; a missing file is a mistake to see whole."""
  program = textwrap.dedent("""
      import sys
      from mixer_jax import errors

      @errors.reported
      def main(argv):
        with open(sys.argv[1], 'w') as f:
          f.write('x' * 10_000)

      main(['study.py'])""")
  # Files stop at 1 KiB, as on a full disk.
  run = subprocess.run([*file_size_limit(1), sys.executable, '-c', program,
                        str(tmp_path / 'figure.png')],
                       capture_output=True, text=True, timeout=60)
  assert (run.returncode, run.stderr) == (1, 'error: File too large: free space, or write to a '
                                             'folder on another disk, and run the same command '
                                             'again.\n')
  run = subprocess.run([sys.executable, '-c', program, str(tmp_path / 'no' / 'figure.png')],
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 1 and run.stderr.rstrip().endswith(
      f"FileNotFoundError: [Errno 2] No such file or directory: '{tmp_path / 'no' / 'figure.png'}'")


@pytest.mark.parametrize('error, expected', [
    (ValueError('first line\nsecond line'), 'first line'),
    (ValueError('\n  \nXLA put a blank line first\nthen details'), 'XLA put a blank line first'),
    (ValueError(''), 'ValueError'),
    (OSError('Error opening "file" driver: Not found [tensorstore_spec=\'{"driver":"zarr"}\']'),
     'Error opening "file" driver: Not found'),
    (ValueError('{{function_node __wrapped__DecodeImage}} Unknown image file format. '
                '[Op:DecodeImage] name: '), 'Unknown image file format.'),
])
def test_gist_is_the_first_line_that_says_something_without_library_wrapping(error, expected):
  assert errors.gist(error) == expected


@pytest.mark.parametrize('command, error', [
    (['train.py', '--config.total_steps=-1'],
     'error: total_steps=-1: must be a positive integer (--config.total_steps=N).'),
    (['benchmarks/throughput.py', '--devices=99'], 'error: --devices=99: only 1 here.'),
])
def test_a_mistake_found_after_jax_starts_is_the_only_line_written(tmp_path, command, error):
  """As a user runs it (JAX chooses the backend): no INFO line that a TPU was looked for first."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  run = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
  assert run.returncode == 1
  assert run.stderr.splitlines() == [error], run.stderr
  assert not list(tmp_path.iterdir())  # train.py's runs/digits was not made
