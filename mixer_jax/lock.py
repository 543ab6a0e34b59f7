"""One run per workdir: a lock file that names its holder and that a dead run does not leave.

`<workdir>/lock.json` holds the host, process id and a heartbeat time, rewritten every
`heartbeat_s` seconds. A new run takes the lock over when its holder is gone: on the same host
at once, when no process has that id or the one that has it started after the lock was taken
(the id reused); from another host (a shared file system or a gs:// workdir) once the heartbeat
is `stale_s` old. Plain files were chosen over flock because
cloud storage has no locks and network file systems implement them unevenly; the price is a
wait of `stale_s` after a crash on another host, and hosts whose clocks agree (NTP).
"""
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

from mixer_jax import paths
from mixer_jax.errors import UserError

FILE = 'lock.json'


def _start_time(pid: int) -> float | None:
  """When process `pid` started (seconds since the epoch, to 1 s); None without Linux's /proc."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # field 22, after the command name
    with open('/proc/stat') as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
  except (OSError, ValueError, IndexError, StopIteration):
    return None
  return boot + ticks / os.sysconf('SC_CLK_TCK')


def _pid_alive(pid: int, started: float) -> bool:
  """Whether the run that took the lock at `started` is process `pid`, and alive."""
  if pid == os.getpid():  # a restarted container can reuse the dead run's process id
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  # A process that started after the lock was taken reuses the id of the run that took it.
  start = _start_time(pid)
  return start is None or start < started + 2


class WorkdirLock:
  """Context manager holding `<workdir>/lock.json`; raises UserError while another run holds it."""

  def __init__(self, workdir: epath.Path, heartbeat_s: float = 30, stale_s: float = 120,
               settle_s: float | None = None):
    self.path = workdir / FILE
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    # Longer than a racing run's read-then-write: milliseconds locally, round trips in a bucket.
    self.settle_s = (1.0 if paths.is_url(workdir) else 0.1) if settle_s is None else settle_s
    self.record = {'host': socket.gethostname(), 'pid': os.getpid(), 'token': uuid.uuid4().hex,
                   'started': time.time()}
    self._stop = threading.Event()

  def _read(self):
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # half-written by a run that died while writing it
      return {}

  def _write(self):
    tmp = self.path.with_name(f'{FILE}.{self.record["token"]}.tmp')
    tmp.write_text(json.dumps({**self.record, 'heartbeat': time.time()}))
    tmp.replace(self.path)  # atomic: a reader sees the old or the new record

  def holder_alive(self, holder) -> bool:
    if not holder.get('pid'):
      return False
    if holder.get('host') == self.record['host']:
      return _pid_alive(holder['pid'], holder.get('started', float('inf')))
    return time.time() - holder.get('heartbeat', 0) < self.stale_s

  def _refuse(self, holder):
    age = time.time() - holder['heartbeat']
    gone = ('a lock whose process has died is taken over at once' if
            holder['host'] == self.record['host'] else
            'if that run is gone, its lock is taken over once its heartbeat is '
            f'{self.stale_s:.0f} s old')
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started']))
    raise UserError(
        f'{self.path.parent} is in use by another run: process {holder["pid"]} on host '
        f'{holder["host"]}, started {started}, heartbeat {age:.0f} s ago. Let it finish or stop '
        f'it, or use another --workdir ({gone}).')

  def refuse_if_held_on_this_host(self):
    """Raises UserError where a live process on this host holds the lock.

    For a process about to join a multi-process run: one that connects while its namesake's run
    holds the workdir (the same command started twice) makes JAX's coordinator stop every
    process of that run. A holder on another host is left to the lock itself: until its
    heartbeat is stale it cannot be told from a run that crashed a moment ago.
    """
    holder = self._read()
    if holder and holder.get('host') == self.record['host'] and self.holder_alive(holder):
      self._refuse(holder)

  def __enter__(self):
    holder = self._read()
    if holder and self.holder_alive(holder):
      self._refuse(holder)
    if holder is not None:
      logging.warning('Taking over the lock of a run that is gone: %s', holder or 'unreadable')
    self._write()
    try:
      # Two runs that started together both wrote: the last write wins, the other backs off.
      time.sleep(self.settle_s)
      holder = self._read()
    except BaseException:  # Ctrl-C or SIGTERM while settling: __exit__ will not run
      self._release()
      raise
    if holder and holder.get('token') != self.record['token']:
      self._refuse(holder)
    self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
    self._thread.start()
    return self

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      try:
        if (self._read() or {}).get('token') != self.record['token']:
          logging.error('Another run took over the lock of %s: this run should stop.',
                        self.path.parent)
          return
        self._write()
      except paths.storage_errors() as e:  # a passing storage hiccup; the next beat tries again
        logging.warning('Could not renew %s: %s', self.path, e)

  def _release(self):
    if (self._read() or {}).get('token') == self.record['token']:
      self.path.unlink()

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._release()
