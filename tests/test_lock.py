"""One run per workdir; the lock of a run that is gone is taken over."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mixer_jax import lock
from mixer_jax.errors import UserError
from training import ROOT


def dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def holder(tmp_path, host, pid, heartbeat_age, started_age=0):
  record = {'host': host, 'pid': pid, 'token': 'other', 'started': time.time() - started_age,
            'heartbeat': time.time() - heartbeat_age}
  (tmp_path / lock.FILE).write_text(json.dumps(record))


HERE = socket.gethostname()


@pytest.fixture
def process_started_now():
  process = subprocess.Popen(['sleep', '60'])
  yield process.pid
  process.kill()
  process.wait()


@pytest.mark.parametrize('host, pid, heartbeat_age, taken', [
    (HERE, os.getppid(), 1000, False),  # alive here: its heartbeat does not matter
    (HERE, 'dead', 5, True),  # gone here: taken over at once
    (HERE, 'reused', 5, True),  # its id now names a process started after the lock was taken
    ('elsewhere', 1, 30, False),  # another host, heartbeat fresh
    ('elsewhere', 1, 200, True),  # another host, heartbeat older than stale_s
])
def test_a_lock_is_refused_while_its_holder_lives_and_taken_over_when_it_is_gone(
    tmp_path, host, pid, heartbeat_age, taken, request):
  started_age = 0
  if pid == 'dead':
    pid = dead_pid()
  elif pid == 'reused':
    pid, started_age = request.getfixturevalue('process_started_now'), 3600
  holder(tmp_path, host, pid, heartbeat_age, started_age)
  workdir_lock = lock.WorkdirLock(tmp_path, stale_s=120, settle_s=0)
  if not taken:
    with pytest.raises(UserError, match=rf'{tmp_path} is in use by another run: process {pid} '
                                        rf'on host {host}, started .* heartbeat {heartbeat_age} s '
                                        r'ago\. Let it finish or stop it, or use another '
                                        r'--workdir'):
      workdir_lock.__enter__()
    assert json.loads((tmp_path / lock.FILE).read_text())['token'] == 'other'  # left as it was
    return
  with workdir_lock:
    record = json.loads((tmp_path / lock.FILE).read_text())
    assert (record['host'], record['pid']) == (HERE, os.getpid())
  assert not (tmp_path / lock.FILE).exists()


def test_the_heartbeat_is_renewed_and_an_unreadable_lock_is_taken_over(tmp_path):
  (tmp_path / lock.FILE).write_text('{"host": "elsew')  # a writer died mid-write
  with lock.WorkdirLock(tmp_path, heartbeat_s=0.05, settle_s=0):
    first = json.loads((tmp_path / lock.FILE).read_text())['heartbeat']
    time.sleep(0.3)
    assert json.loads((tmp_path / lock.FILE).read_text())['heartbeat'] > first
  assert os.listdir(tmp_path) == []  # no lock, no temporary files


def test_of_two_runs_starting_together_exactly_one_gets_the_lock(tmp_path):
  go = tmp_path / 'go'
  contender = (
      'import os, sys, time\n'
      'from etils import epath\n'
      'from mixer_jax import lock, errors\n'
      f'while not os.path.exists({str(go)!r}): time.sleep(0.01)\n'
      'try:\n'
      f'  with lock.WorkdirLock(epath.Path({str(tmp_path)!r}), settle_s=1): time.sleep(2)\n'
      'except errors.UserError as e: sys.exit(str(e))\n')
  processes = [subprocess.Popen([sys.executable, '-c', contender], stderr=subprocess.PIPE,
                                text=True, cwd=ROOT) for _ in range(2)]
  time.sleep(1)  # both imported and waiting
  go.touch()
  errors = [p.communicate(timeout=60)[1] for p in processes]
  assert sorted(p.returncode for p in processes) == [0, 1], errors
  assert 'is in use by another run' in ''.join(errors)
