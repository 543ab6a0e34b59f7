"""Two processes (jax.distributed on 127.0.0.1, 2 CPU devices each) train like one with 4."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from training import ROOT, SMALL_MODEL_FLAGS, restore_params, run_train_py

# SGD, as in test_eight_devices_train_like_one: Adam would amplify rounding noise in the
# token-mixing output biases, whose gradient is exactly zero.
FLAGS = ['--config.total_steps=20', '--config.warmup_steps=5', '--config.checkpoint_every=10',
         '--config.eval_every=10', '--config.optimizer=sgd', '--config.learning_rate=0.1',
         *SMALL_MODEL_FLAGS]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_PLATFORMS': 'cpu'}
  address = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / 'train.py'), f'--workdir={tmp_path / "two"}', *FLAGS,
       f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs
  for i, out in enumerate(outputs):
    assert f'Process {i} of 2: waiting for all 2 processes to connect to {address}.' in out
  # Metrics and the result line come from process 0 only.
  assert 'Final test accuracy' in outputs[0] and 'Final test accuracy' not in outputs[1]
  assert 'test/accuracy' not in outputs[1]

  code, out = run_train_py(tmp_path / 'one', *FLAGS, devices=4)
  assert code == 0, out
  for step in (10, 20):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 restore_params(tmp_path / 'two', step), restore_params(tmp_path / 'one', step))
