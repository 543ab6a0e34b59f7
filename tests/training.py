"""Helpers of the tests that train: a small digits config, train.py in a subprocess, checkpoints.

Without TensorFlow, so that the tests the accelerator check runs on a machine with JAX alone
(benchmarks/accelerator_check.sh) can use them.
"""
import os
import pathlib
import subprocess
import sys

import jax
import orbax.checkpoint as ocp

from configs import digits

ROOT = pathlib.Path(__file__).resolve().parent.parent


# Half the digits recipe's depth and width: about 3x faster steps, still 93% after 150 steps.
SMALL_MODEL = dict(num_blocks=2, hidden_dim=64, tokens_mlp_dim=32, channels_mlp_dim=128)
SMALL_MODEL_FLAGS = [f'--config.model.{k}={v}' for k, v in SMALL_MODEL.items()]


def small_config(**overrides):
  config = digits.get_config()
  config.update(dict(total_steps=40, warmup_steps=10, log_every=10, eval_every=20,
                     checkpoint_every=20), **overrides)
  config.model.update(SMALL_MODEL)
  return config


def restore_params(workdir, step):
  """Parameters of a checkpoint, on this process's first device whatever it was saved from."""
  on_one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'default'
  with ocp.StandardCheckpointer() as checkpointer:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=on_one_device),
                          checkpointer.metadata(path).item_metadata.tree)
    return checkpointer.restore(path, target)['params']


def cpu_devices(n: int) -> dict[str, str]:
  """The environment of a process with `n` CPU devices, and the suite's other XLA flags."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  return {**os.environ, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': ' '.join([*flags, f'--xla_force_host_platform_device_count={n}'])}


def file_size_limit(kib: int) -> list[str]:
  """A command prefix: no file the command writes grows past `kib` KiB, and writes beyond fail
  as on a full disk (EFBIG, with the SIGXFSZ that would kill it ignored). Set by a shell: a
  preexec_fn would fork this multithreaded (JAX) process."""
  return ['bash', '-c', f'trap "" XFSZ; ulimit -f {kib}; exec "$@"', 'bash']


def run_train_py(workdir, *flags, devices=1, timeout=300, wait=True, file_kib=None):
  """train.py's (exit status, output); with `file_kib`, no file it writes grows past that many
  KiB (file_size_limit)."""
  env = cpu_devices(devices)
  cmd = [sys.executable, str(ROOT / 'train.py'), f'--workdir={workdir}', *flags]
  if file_kib:
    cmd = [*file_size_limit(file_kib), *cmd]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=ROOT)
  if not wait:
    return proc
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    proc.kill()
  return proc.returncode, out


def error_line(out: str) -> str:
  """The one line of an entry point's output that says what is wrong; no traceback."""
  assert 'Traceback' not in out, out
  [line] = [line for line in out.splitlines() if line.startswith('error: ')]
  return line
