"""benchmarks/: the throughput tool's counts and arithmetic, and the core-days estimator."""
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import zipfile

import pytest

from benchmarks import accelerator_summary
from mixer_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mixer_forward_flops(variant: str, resolution: int, num_classes: int = 1000) -> int:
  """Appendix E by hand: stem, N x (token MLP + channel MLP), head; 2 FLOPs per multiply-add."""
  v = models.VARIANTS[variant]
  p, c = v['patch_size'], v['hidden_dim']
  s = (resolution // p) ** 2
  per_block = 2 * (2 * c * s * v['tokens_mlp_dim']) + 2 * (2 * s * c * v['channels_mlp_dim'])
  return 2 * s * (p * p * 3) * c + v['num_blocks'] * per_block + 2 * c * num_classes


def wheel_in_pieces(folder, piece_bytes: int = 200) -> bytes:
  """A small pure-Python wheel, split as `split -b` would, with its sha256 beside the pieces."""
  buffer = io.BytesIO()
  info = 'check_probe-1.0.dist-info'
  files = {'check_probe.py': 'ANSWER = 42\n',
           f'{info}/METADATA': 'Metadata-Version: 2.1\nName: check-probe\nVersion: 1.0\n',
           f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n'
                            'Tag: py3-none-any\n'}
  files[f'{info}/RECORD'] = ''.join(f'{name},,\n' for name in [*files, f'{info}/RECORD'])
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as z:
    for name, text in files.items():
      z.writestr(name, text)
  data = buffer.getvalue()
  name = folder / 'check_probe-1.0-py3-none-any.whl'
  for i in range(0, len(data), piece_bytes):
    (folder / f'{name.name}.part-a{chr(ord("a") + i // piece_bytes)}').write_bytes(
        data[i:i + piece_bytes])
  (folder / f'{name.name}.sha256').write_text(f'{hashlib.sha256(data).hexdigest()}  {name}\n')
  return data


@pytest.fixture(scope='module')
def check(tmp_path_factory):
  """benchmarks/accelerator_check.sh rehearsed on this CPU at tiny sizes: every step runs, with
  a wheel that travelled in pieces."""
  out, wheels = tmp_path_factory.mktemp('check'), tmp_path_factory.mktemp('wheels')
  wheel_in_pieces(wheels)
  run = subprocess.run(['bash', 'benchmarks/accelerator_check.sh', str(out), '--tiny',
                        '--wheels', str(wheels)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stdout[-3000:]
  lines = [json.loads(line) for line in (out / 'throughput.jsonl').read_text().splitlines()]
  return out, lines, run.stdout


def _has_timm():
  try:
    import timm  # noqa: F401
    return True
  except ImportError:
    return False


def test_accelerator_check_runs_every_step_and_summarises_them(check):
  out, lines, stdout = check
  summary = (out / 'summary.md').read_text()
  assert summary == stdout[stdout.index('# Accelerator check'):stdout.index('== done')]
  for line in lines:  # what BENCHMARKS.md's tables are made of
    assert {'impl', 'device_kind', 'mfu', 'date', 'formulation'} <= set(line)
  ours = next(r for r in lines if r['impl'] == 'ours' and r['mode'] == 'train')
  ref = next(r for r in lines if r['impl'] == 'reference' and r['mode'] == 'train')
  rate = accelerator_summary.rate
  assert (f"| S/32 | train | {rate(ours['images_per_sec'])} (2), {ours['mfu']:.1%} | "
          f"{rate(ref['images_per_sec'])} (2), {ref['mfu']:.1%} |") in summary
  assert f"{ours['images_per_sec'] / ref['images_per_sec']:.2f}x | 35% " in summary
  # train.py on synthetic data at the sweep's batch, against the benchmark's training step.
  metrics = [json.loads(line) for line in (out / 'train_synthetic.jsonl').read_text().splitlines()]
  assert metrics[-1] == {'config': 'configs/synthetic.py:S/32,smoke', 'batch_size': 2}
  windows = [r['steps_per_sec'] for r in metrics if r.get('split') == 'train']
  assert len(windows) == 2
  loop = windows[1] * 2  # the window after the one that compiled, times the batch
  assert (f'train.py on synthetic data (configs/synthetic.py:S/32,smoke, batch 2): {loop:,.1f} '
          'images/s') in summary
  assert f"ratio {loop / ours['images_per_sec']:.2f}" in summary
  pipeline = [json.loads(line) for line in (out / 'input_pipeline.jsonl').read_text().splitlines()]
  assert [p['randaug_layers'] for p in pipeline] == [2, 0]
  assert f"| {pipeline[0]['images_per_sec']:,.1f} | S/32 trains at" in summary
  assert re.search(r'Tests: 1 passed', summary)
  joined = re.search(r'joined check_probe-1.0-py3-none-any.whl from (\d+) pieces\n'
                     r'installed 1 wheels: check_probe-1.0-py3-none-any.whl', stdout)
  assert joined and int(joined[1]) > 1


def test_the_tables_give_small_rates_to_three_digits_and_large_ones_to_the_unit():
  line = dict(variant='L/16', mode='train', impl='ours', batch_per_device=8, mfu=0.41)
  table = accelerator_summary.markdown_table([{**line, 'images_per_sec': 0.5234},
                                              {**line, 'mode': 'inference', 'images_per_sec': 1234.4}])
  assert '| L/16 | train | 0.523 (8), 41.0% |' in table  # was 1, from the rounding to the unit
  assert '| L/16 | inference | 1,234 (8), 41.0% |' in table


def test_accelerator_check_refuses_a_wheel_with_a_missing_piece_before_anything_runs(tmp_path):
  wheels = tmp_path / 'wheels'
  wheels.mkdir()
  wheel_in_pieces(wheels)
  pieces = sorted(wheels.glob('*.part-*'))
  pieces[1].unlink()  # a piece that did not travel
  run = subprocess.run(['bash', 'benchmarks/accelerator_check.sh', str(tmp_path / 'out'),
                        '--tiny', '--wheels', str(wheels)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
  assert run.returncode == 2
  assert (f'error: check_probe-1.0-py3-none-any.whl: its {len(pieces) - 1} pieces in '
          in run.stdout
          and 'a piece is missing or damaged' in run.stdout), run.stdout
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['check.log']


@pytest.mark.parametrize('args, message', [
    (['--steps', 'sweep,bench'], '--steps: unknown step bench'),
    (['--wheels', '/nonexistent'], '--wheels /nonexistent: no such folder'),
    (['--budget', '8m'], '--budget 8m: give whole seconds'),
])
def test_accelerator_check_arguments_are_checked(tmp_path, args, message):
  run = subprocess.run(['bash', 'benchmarks/accelerator_check.sh', str(tmp_path), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and f'error: {message}' in run.stdout + run.stderr


@pytest.mark.parametrize('first, code', [('--help', 0), ('--tiny', 2), ('', 2)])
def test_accelerator_check_wants_its_output_folder_first_and_starts_nothing_without_it(
    tmp_path, first, code):
  script = os.path.join(ROOT, 'benchmarks', 'accelerator_check.sh')
  run = subprocess.run(['bash', script, first, str(tmp_path / 'out')], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
  out = run.stdout + run.stderr
  assert run.returncode == code and 'usage: benchmarks/accelerator_check.sh OUT_DIR' in out, out
  assert ('error: the first argument is the output folder' in out) == (code == 2)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('args, message', [
    (['--piece-mib', '64'], '--piece-mib 64: give whole MiB from 1 to 63'),
    (['--piece-mib', '0'], '--piece-mib 0: give whole MiB from 1 to 63'),
    (['--python', '3.12'], 'unknown argument --python'),
])
def test_carry_wheels_checks_its_arguments_before_downloading(tmp_path, args, message):
  run = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'carry_wheels.sh'), *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and f'error: {message}' in run.stderr, run.stderr


# What the lent GPU machine lacks and cannot be given in one call (notes section 11, BENCHMARKS.md).
NOT_ON_THE_DEVICE = ('tensorflow', 'tensorflow_datasets', 'clu')


def test_the_accelerator_checks_tests_import_without_tensorflow():
  """The check's tests run on a machine with JAX alone: none of them may import TensorFlow."""
  script = open(os.path.join(ROOT, 'benchmarks', 'accelerator_check.sh')).read()
  files = max((re.findall(r'tests/test_\w+\.py', group)
               for group in re.findall(r'\btests=\(([^)]*)\)', script)), key=len)
  assert len(files) >= 5, files
  blocker = f"""
import sys
sys.modules.update(dict.fromkeys({NOT_ON_THE_DEVICE!r}))  # None: `import` fails, find_spec is None
import pytest
sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))
"""
  run = subprocess.run([sys.executable, '-c', blocker, *files], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-3000:]
  assert re.search(r'^\d+ tests collected', run.stdout, re.M), run.stdout[-1000:]


def test_throughput_counts_model_flops_by_the_formula(check):
  _, lines, _ = check
  forward = mixer_forward_flops('S/32', 64)
  for r in lines:
    want = (3 if r['mode'] == 'train' else 1) * forward  # backward: twice the forward
    assert r['gflops_per_image'] * 1e9 == pytest.approx(want, rel=1e-12), r


def test_throughput_arithmetic_is_consistent(check):
  _, lines, stdout = check
  order = ['ours', 'reference', 'fused', 'reference_default_host', 'timm']
  for mode in ('inference', 'train'):
    assert [r['impl'] for r in lines if r['mode'] == mode] == order[:5 if _has_timm() else 4]
    # One matmul rate for the whole measurement: it was timed in the same rounds as the models.
    assert len({r['matmul_tflops_per_sec_per_device'] for r in lines if r['mode'] == mode}) == 1
  # The header names the XLA_FLAGS of every record, which the JSON lines also hold.
  assert len({r['xla_flags'] for r in lines}) == 1
  assert f"XLA_FLAGS={lines[0]['xla_flags'] or '(none)'}\n" in stdout
  for r in lines:
    assert r['images_per_sec'] == pytest.approx(
        r['devices'] * r['batch_per_device'] / (r['step_ms'] / 1e3))
    assert r['tflops_per_sec'] == pytest.approx(r['images_per_sec'] * r['gflops_per_image'] / 1e3)
    assert r['mfu'] == pytest.approx(
        r['tflops_per_sec'] / (r['devices'] * r['matmul_tflops_per_sec_per_device']))
    if r['impl'] in ('ours', 'reference'):  # XLA's buffer assignment: at least the parameters
      assert r['step_memory_gb'] * 1e9 > 4 * 18e6
  speed = {r['impl']: r['images_per_sec'] for r in lines if r['mode'] == 'train'}
  ratio = float(re.search(r'ours, train, best batches: ([\d.]+)x reference', stdout).group(1))
  assert ratio == pytest.approx(speed['ours'] / speed['reference'], abs=0.006)
  # On CPU ours is the cpu formulation, the reference the plain one: timed apart.
  assert {r['formulation'] for r in lines if r['impl'] in ('ours', 'reference')} == {'cpu', 'plain'}


def test_throughput_flags_are_checked_before_anything_runs():
  for flag, message in (('--impl=ours,fast', 'unknown fast; choose from ours, reference'),
                        ('--variant=B/8', 'unknown B/8; choose from S/32'),
                        ('--batch_size=0', 'give positive integers or auto'),
                        ('--variant=S/32,B/16,S/32', '--variant=S/32,B/16,S/32: S/32 given twice'),
                        ('--memory_limit_gb=-1', '--memory_limit_gb=-1.0: must be 0'),
                        ('--deadline=-5', '--deadline=-5.0: must be 0 (no limit) or positive'),
                        ('--resolution=100', 'not a multiple of the patch sizes 32'),
                        ('--json_out=/nowhere/out.jsonl', '--json_out=/nowhere/out.jsonl cannot '
                         'be written'),
                        # An unset $VAR: the measurements went nowhere, silently.
                        ('--json_out=', '--json_out is empty (an unset variable')):
    run = subprocess.run([sys.executable, 'benchmarks/throughput.py', flag], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith('error: ')
    assert message in run.stderr and 'Traceback' not in run.stderr


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
  assert out.read_text() == ''  # nothing measured, no line (the file is checked at start)
  assert 'ours = ' not in run.stdout  # the header describes only what is timed


def test_largest_batch_that_fits_is_measured_and_smaller_ones_only_where_it_does_not(tmp_path):
  out = tmp_path / 'results.jsonl'
  # S/32 inference at 64 px compiles to about 0.1 GB at batch 32 and 0.23 GB at 256.
  run = subprocess.run(
      [sys.executable, 'benchmarks/throughput.py', '--variant=S/32', '--resolution=64',
       '--batch_size=2,256,32', '--largest_that_fits', '--memory_limit_gb=0.15',
       '--mode=inference', '--impl=ours', '--steps=1', '--repeats=1', '--matmul_size=64',
       f'--json_out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert re.search(r'S/32 batch 256 inference cpu: does not fit \(RESOURCE_EXHAUSTED: needs '
                   r'[\d.]+ GB, the device has 0.15 GB\), skipped', run.stdout), run.stdout
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r['batch_per_device'] for r in lines] == [32]  # not 2: 32 fitted
  assert lines[0]['step_memory_gb'] < 0.15


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
  smoke = subprocess.run(
      [sys.executable, 'benchmarks/core_days.py', '--config=configs/pretrain_imagenet.py:L/16,smoke',
       '--images_per_sec_per_core=50'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert smoke.returncode == 0, smoke.stderr[-3000:]
  assert 'Mixer-L/16 (num_blocks=2, hidden_dim=32' in smoke.stdout  # not the Table 1 model
  assert 'TPUv3' not in smoke.stdout  # the paper's figures are for Table 1 sizes


def test_core_days_measure_interrupted_keeps_the_batch_sizes_it_finished():
  proc = subprocess.Popen(
      [sys.executable, 'benchmarks/core_days.py', '--config=configs/pretrain_imagenet.py:S/32',
       '--config.image_size=32', '--config.total_steps=1000', '--measure',
       '--measure_batch_sizes=2,8'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, start_new_session=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if 'batch 8 train: timing' in line:  # batch 2 is measured
      os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: both processes get it
      break
  out, err = proc.communicate(timeout=120)
  out = ''.join(lines) + out
  assert proc.returncode == 0, err[-3000:]
  rate = float(re.search(r'batch/device 2: [\d.,]+ img/s \(([\d.,]+)/device\)', out)
               .group(1).replace(',', ''))
  assert 'Interrupted: using batch size 2 of --measure_batch_sizes=2,8' in out
  assert f'at {rate:,.1f} training images/s per device' in out
  assert err.count('Interrupted (Ctrl-C).') == 1  # the child's line, not a second one


def test_core_days_and_input_pipeline_flags_are_checked_before_anything_runs():
  recipe = '--config=configs/pretrain_imagenet.py:L/16'
  for script, flags, message in (
      ('core_days.py', [recipe, '--images_per_sec_per_core=0'], 'must be more than 0'),
      # absl's lower bounds let NaN through: 'nan device-days' before, 0.0 images/s for --seconds.
      ('core_days.py', [recipe, '--images_per_sec_per_core=nan'],
       'error: flag --images_per_sec_per_core=nan: must be a finite number'),
      ('input_pipeline.py', ['--seconds=inf'], 'error: flag --seconds=inf: must be a finite number'),
      ('core_days.py', [recipe, '--config.lr=1', '--measure'], '--config.lr: no such field'),
      ('core_days.py', ['--config=configs/nope.py', '--measure'], 'no such file'),
      ('core_days.py', ['--config=configs/digits.py', '--measure'], 'has no Table 1 variant'),
      ('core_days.py', ['--config=configs/pretrain_imagenet.py:X/9', '--measure'],
       "Unknown Mixer variant 'X/9': choose one of S/32"),
      ('core_days.py', ['--config=configs/pretrain_imagenet.py:B/16,smoke', '--measure'],
       '--measure times Table 1 models, and this config gives Mixer-B/16 other sizes'),
      ('input_pipeline.py', ['--json_out=/nowhere/out.jsonl'], 'cannot be written')):
    # Without the suite's TF_CPP_MIN_LOG_LEVEL: each script keeps TensorFlow's notices out itself.
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    run = subprocess.run([sys.executable, f'benchmarks/{script}', *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith('error: ')
    assert message in run.stderr and 'Traceback' not in run.stderr
    assert 'cpu_feature_guard' not in run.stderr, run.stderr
