"""Two processes (jax.distributed on 127.0.0.1, 2 CPU devices each) train like one process."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mixer_jax import lock, trainer
from test_input_pipeline import make_image_folder
from training import (ROOT, SMALL_MODEL_FLAGS, cpu_devices, error_line, file_size_limit,
                      restore_params, run_train_py, small_config)

# SGD, as in test_eight_devices_train_like_one: Adam would amplify rounding noise in the
# token-mixing output biases, whose gradient is exactly zero.
OVERRIDES = dict(total_steps=10, warmup_steps=2, checkpoint_every=5, eval_every=10,
                 optimizer='sgd', learning_rate=0.1)
FLAGS = [*[f'--config.{k}={v}' for k, v in OVERRIDES.items()], *SMALL_MODEL_FLAGS]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(*flags_of_each, prefixes=None, timeout=240):
  """train.py as processes 0, 1, ... of one run on 127.0.0.1, 2 CPU devices each: (status, output)
  of each. `flags_of_each[i]`: process i's flags (a --num_processes there wins); `prefixes[i]`:
  a command it runs under."""
  env = cpu_devices(2)
  address = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen(
      [*(prefixes or {}).get(i, []), sys.executable, str(ROOT / 'train.py'),
       f'--num_processes={len(flags_of_each)}', *flags, f'--coordinator_address={address}',
       f'--process_id={i}'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
      for i, flags in enumerate(flags_of_each)]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [p.returncode for p in procs], outputs, address


def test_two_processes_train_like_one_process(tmp_path):
  flags = [f'--workdir={tmp_path / "two"}', *FLAGS]
  codes, outputs, address = run_processes(flags, flags)
  assert codes == [0, 0], outputs
  for i, out in enumerate(outputs):
    assert f'Process {i} of 2: waiting for all 2 processes to connect to {address}.' in out
  # Metrics and the result line come from process 0 only.
  assert 'Final test accuracy' in outputs[0] and 'Final test accuracy' not in outputs[1]
  assert 'test/accuracy' not in outputs[1]

  # One device in this process: the same global batch (test_eight_devices_train_like_one).
  trainer.train_and_evaluate(small_config(**OVERRIDES), str(tmp_path / 'one'))
  for step in (5, 10):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 restore_params(tmp_path / 'two', step), restore_params(tmp_path / 'one', step))


def test_processes_started_with_other_settings_stop_at_once_naming_them(tmp_path):
  # Before: a different total_steps trained on two schedules, then hung past SIGTERM; a
  # different batch_size trained to a wrong result; a different width aborted inside gloo.
  codes, outputs, _ = run_processes(
      [f'--workdir={tmp_path / "a"}', *FLAGS],
      [f'--workdir={tmp_path / "b"}', *FLAGS, '--config.total_steps=30', '--num_processes=3'],
      timeout=120)
  assert codes == [1, 1], outputs
  # A process count other than process 0's is not one of the run's settings: it is said.
  assert ('Process 1: --num_processes=3, but process 0 started 2 processes: training with 2. '
          'Give every process the same --num_processes.') in outputs[1], outputs[1]
  assert error_line(outputs[1]) == (
      f"error: Process 1 was started with other settings than process 0: total_steps is 10 in "
      f"process 0, 30 here; workdir is '{tmp_path / 'a'}' in process 0, '{tmp_path / 'b'}' here. "
      'Stopping every process: give every process the same --config, --config.<field> '
      'overrides and --workdir.')
  assert error_line(outputs[0]).startswith(
      'error: Process(es) 1 were started with other settings than this process 0')
  assert not list(tmp_path.iterdir())  # nothing written


def test_a_workdir_only_process_0_can_see_stops_every_process(tmp_path):
  """As on two hosts that each have their own disk: before, the first checkpoint hung."""
  own_disk = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
              f'mount -t tmpfs none {tmp_path} && exec "$@"', 'sh']
  if subprocess.run([*own_disk, 'true'], capture_output=True).returncode:
    pytest.skip('needs mount namespaces (unshare, as root) to give process 1 a disk of its own')
  flags = [f'--workdir={tmp_path / "run"}', *FLAGS]
  codes, outputs, _ = run_processes(flags, flags, prefixes={1: own_disk}, timeout=120)
  assert codes == [1, 1], outputs
  for out in outputs:
    assert error_line(out) == (
        f'error: Process(es) 1 cannot see the workdir {tmp_path / "run"} that process 0 created '
        '(its lock.json): with several hosts the workdir must be storage every host reaches, a '
        "network file system or a gs:// bucket, not a folder on each host's disk.")
  assert not list(tmp_path.iterdir())  # the run's new workdir and its lock are gone


def test_data_one_host_lacks_stops_every_process_naming_it(tmp_path):
  """`~/data` in each host's home, as after copying it to the first host only. Before: the one
  process said so, and both waited 5 minutes (past this timeout), then aborted with stack dumps."""
  make_image_folder(tmp_path / 'home0' / 'data')
  (tmp_path / 'home1').mkdir()
  flags = [f'--workdir={tmp_path / "run"}', *FLAGS, '--config.dataset=folder',
           '--config.data_dir=~/data', '--config.image_size=16', '--config.batch_size=4',
           '--config.eval_batch_size=4']
  codes, outputs, _ = run_processes(flags, flags, timeout=120, prefixes={
      i: ['env', f'HOME={tmp_path / f"home{i}"}'] for i in (0, 1)})
  assert codes == [1, 1], outputs
  missing = (f'Image folder {tmp_path / "home1" / "data"} does not exist. Expected '
             '<data_dir>/train/<class>/*.jpg|png|... and <data_dir>/test/<class>/...; set '
             '--config.data_dir to that folder.')
  assert error_line(outputs[1]) == f'error: {missing}'
  assert error_line(outputs[0]) == (f'error: Process 1 stopped: {missing} Stopping every '
                                    'process: fix that, then start them all again.')
  assert not (tmp_path / 'run').exists()  # nothing was written in it


def test_a_workdir_process_0_cannot_use_is_named_by_every_process(tmp_path):
  (tmp_path / 'run').write_text('')
  flags = [f'--workdir={tmp_path / "run"}', *FLAGS]
  codes, outputs, _ = run_processes(flags, flags, timeout=120)
  assert codes == [1, 1], outputs
  is_a_file = (f'The workdir {tmp_path / "run"} is a file, not a folder: give a --workdir that is '
               'a folder, or a new name.')
  assert error_line(outputs[0]) == f'error: {is_a_file}'
  assert error_line(outputs[1]) == (f'error: Process 0 stopped: {is_a_file} Stopping '
                                    'every process: fix that, then start them all again.')


def test_a_write_that_fails_on_process_0_mid_run_stops_every_process(tmp_path):
  """Process 0 alone writes the metrics. Before: it stopped with its error, and process 1 waited
  at the next step's collective for 5 minutes (past this timeout), then both aborted."""
  settings = {**OVERRIDES, 'total_steps': 40, 'log_every': 1, 'checkpoint_every': 1000}
  flags = [f'--workdir={tmp_path / "run"}', *[f'--config.{k}={v}' for k, v in settings.items()],
           *SMALL_MODEL_FLAGS]
  codes, outputs, _ = run_processes(flags, flags, prefixes={0: file_size_limit(2)},  # ~13 records
                                    timeout=120)
  assert codes == [1, 1], outputs
  failed = error_line(outputs[0])
  assert re.fullmatch(rf'error: Writing the metrics to {tmp_path / "run"} failed \(.*File too '
                      r'large\), so the run stopped\. .*', failed), outputs[0]
  assert error_line(outputs[1]) == (f'error: Process 0 stopped: {failed[len("error: "):]} '
                                    'Stopping every process: fix that, then start them all again.')


@pytest.mark.parametrize('failing', [0, 1])
def test_a_checkpoint_write_that_fails_on_one_process_stops_every_process(tmp_path, failing):
  """Each process writes its part of a checkpoint in the background. Before: the write failed
  without a word, the run went on saving no checkpoint, and at the next save every process
  waited for the others in orbax's barriers for 20 minutes (past this timeout)."""
  settings = {**OVERRIDES, 'total_steps': 15, 'log_every': 5, 'checkpoint_every': 10,
              'eval_every': 1000}
  flags = [f'--workdir={tmp_path / "run"}', *[f'--config.{k}={v}' for k, v in settings.items()],
           *SMALL_MODEL_FLAGS]
  # Its checkpoint files are 13-90 kB; config.json, the metrics and labels.txt under 2 kB.
  codes, outputs, _ = run_processes(flags, flags, prefixes={failing: file_size_limit(12)},
                                    timeout=120)
  assert codes == [1, 1], outputs
  failed = error_line(outputs[failing])
  assert failed == (
      f'error: Writing a checkpoint to {tmp_path / "run" / "checkpoints"} failed (File too large), '
      'so the run stopped. Free space there (keep_checkpoints sets how many checkpoints are kept) '
      'or restore access, then run the same command: it starts again, as no checkpoint was '
      'complete.'), outputs[failing]
  assert error_line(outputs[1 - failing]) == (
      f'error: Process {failing} stopped: {failed[len("error: "):]} Stopping every process: fix '
      'that, then start them all again.'), outputs[1 - failing]
  assert all(out.rstrip().endswith(error_line(out)) for out in outputs), outputs
  names = {p.name for p in (tmp_path / 'run').iterdir()}
  assert {'config.json', 'metrics.jsonl'} <= names and not {'lock.json', 'results.json'} & names
  # The unfinished write, which the rerun removes (test_train.py checks that).
  assert [p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()] == [
      '10.orbax-checkpoint-tmp']


def test_a_process_whose_peers_never_connect_stops_with_one_line(tmp_path):
  """Before: 5 minutes of silence, then XLA's abort and stack dump blaming a task that died."""
  address = f'127.0.0.1:{free_port()}'
  code, out = run_train_py(tmp_path / 'run', *FLAGS, f'--coordinator_address={address}',
                           '--num_processes=2', '--process_id=0', '--connect_timeout=6',
                           devices=2, timeout=60)
  assert code == 1 and out.strip().splitlines()[-1] == (
      f'error: Process 0 of 2: not all 2 processes connected to {address} within 6 s. Start '
      'every one with the same --coordinator_address and --num_processes and its own '
      '--process_id from 0 to 1, check that every host reaches that address, or wait longer '
      'with --connect_timeout=SECONDS.'), out
  assert not (tmp_path / 'run').exists()


def test_a_process_started_again_while_its_run_holds_the_workdir_stops_before_connecting(
    tmp_path):
  """Before: it connected as its running namesake, and JAX's coordinator stopped every process
  of that run with stack dumps."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'token': 'running',
            'started': time.time(), 'heartbeat': time.time()}  # this live test process holds it
  (workdir / lock.FILE).write_text(json.dumps(record))
  code, out = run_train_py(workdir, *FLAGS, f'--coordinator_address=127.0.0.1:{free_port()}',
                           '--num_processes=2', '--process_id=1', '--connect_timeout=30',
                           devices=2, timeout=60)
  assert code == 1 and out.strip().splitlines()[-1].startswith(
      f'error: {workdir} is in use by another run: process {os.getpid()} on host '
      f'{socket.gethostname()}, started '), out
  assert 'waiting for all 2 processes to connect' not in out
  assert json.loads((workdir / lock.FILE).read_text()) == record
