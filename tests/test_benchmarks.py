"""benchmarks/: the throughput tool's counts and arithmetic, and the core-days estimator."""
import json
import os
import re
import subprocess
import sys

import pytest

from mixer_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mixer_forward_flops(variant: str, resolution: int, num_classes: int = 1000) -> int:
  """Appendix E by hand: stem, N x (token MLP + channel MLP), head; 2 FLOPs per multiply-add."""
  v = models.VARIANTS[variant]
  p, c = v['patch_size'], v['hidden_dim']
  s = (resolution // p) ** 2
  per_block = 2 * (2 * c * s * v['tokens_mlp_dim']) + 2 * (2 * s * c * v['channels_mlp_dim'])
  return 2 * s * (p * p * 3) * c + v['num_blocks'] * per_block + 2 * c * num_classes


@pytest.fixture(scope='module')
def throughput_lines(tmp_path_factory):
  out = tmp_path_factory.mktemp('bench') / 'results.jsonl'
  impls = 'ours,reference,reference_default_host' + (',timm' if _has_timm() else '')
  run = subprocess.run(
      [sys.executable, 'benchmarks/throughput.py', '--variant=S/32', '--resolution=64',
       '--batch_size=2', '--mode=train', f'--impl={impls}', '--steps=1', '--repeats=1', '--matmul_size=256',
       f'--json_out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  return [json.loads(line) for line in out.read_text().splitlines()], run.stdout


def _has_timm():
  try:
    import timm  # noqa: F401
    return True
  except ImportError:
    return False


def test_throughput_counts_model_flops_by_the_formula(throughput_lines):
  lines, _ = throughput_lines
  forward = mixer_forward_flops('S/32', 64)
  for r in lines:
    want = 3 * forward  # training: forward + backward of twice its cost
    assert r['gflops_per_image'] * 1e9 == pytest.approx(want, rel=1e-12), r


def test_throughput_arithmetic_is_consistent(throughput_lines):
  lines, stdout = throughput_lines
  order = ['ours', 'reference', 'reference_default_host', 'timm']
  assert [r['impl'] for r in lines] == order[:4 if _has_timm() else 3]
  # One matmul rate for the whole measurement: it was timed in the same rounds as the models.
  assert len({r['matmul_tflops_per_sec_per_device'] for r in lines}) == 1
  for r in lines:
    assert r['images_per_sec'] == pytest.approx(
        r['devices'] * r['batch_per_device'] / (r['step_ms'] / 1e3))
    assert r['tflops_per_sec'] == pytest.approx(r['images_per_sec'] * r['gflops_per_image'] / 1e3)
    assert r['mfu'] == pytest.approx(
        r['tflops_per_sec'] / (r['devices'] * r['matmul_tflops_per_sec_per_device']))
    if r['impl'] in ('ours', 'reference'):  # XLA's buffer assignment: at least the parameters
      assert r['step_memory_gb'] * 1e9 > 4 * 18e6
  speed = {r['impl']: r['images_per_sec'] for r in lines}
  ratio = float(re.search(r'ours, train, best batches: ([\d.]+)x reference', stdout).group(1))
  assert ratio == pytest.approx(speed['ours'] / speed['reference'], abs=0.006)


def test_an_implementation_that_cannot_run_is_skipped_with_the_reason(tmp_path):
  """timm has no H/14: its child process says so and the run goes on without it."""
  out = tmp_path / 'results.jsonl'
  run = subprocess.run(
      [sys.executable, 'benchmarks/throughput.py', '--variant=H/14', '--resolution=28',
       '--batch_size=1', '--mode=inference', '--impl=timm', '--steps=1', '--repeats=1',
       '--matmul_size=64', f'--json_out={out}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  reason = 'no H/14 model' if _has_timm() else 'not installed'
  assert re.search(rf'timm: skipped \(.*{reason}', run.stdout), run.stdout
  assert not out.exists()


def test_core_days_of_a_recipe_at_a_given_throughput():
  run = subprocess.run(
      [sys.executable, 'benchmarks/core_days.py', '--config=configs/pretrain_imagenet.py:L/16',
       '--config.total_steps=1000', '--images_per_sec_per_core=50'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  days = 1000 * 4096 / 50 / 86_400
  assert f'{days:,.2f} device-days' in run.stdout
  tpu_days = 1000 * 4096 / (419 / 3) / 86_400  # the paper's 419 inference images/s/core
  assert f'{tpu_days:,.2f} TPUv3 core-days' in run.stdout
  assert '0.41k TPUv3 core-days' in run.stdout  # the paper's published L/16 run
