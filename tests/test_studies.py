"""studies/: every study end to end at a tiny size, and its numbers against independent references."""
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from matplotlib import image as mpimg

from mixer_jax import checkpoints, models
from mixer_jax.errors import UserError
from studies import curves, from_scratch, permutation, resnet, scaling, study, vit, weights
from training import ROOT
# A 1-block Mixer on 8x8 digits (patch 2: a 4x4 token grid), 2 steps: seconds per run.
TINY_RECIPE = ['--config.total_steps=2', '--config.warmup_steps=1', '--config.checkpoint_every=2',
               '--config.log_every=1', '--config.image_size=8', '--config.model.patch_size=2',
               '--config.model.num_blocks=1', '--config.model.hidden_dim=16',
               '--config.model.tokens_mlp_dim=8', '--config.model.channels_mlp_dim=16']


def read_png(path, size_inches=None) -> np.ndarray:
  """The decoded picture, checked to be a PNG (signature, decodes, not blank, expected size)."""
  assert pathlib.Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and pixels[..., :3].std() > 0.05
  if size_inches:
    assert pixels.shape[:2] == (round(size_inches[1] * study.DPI), round(size_inches[0] * study.DPI))
  return pixels


def read_json(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


# --- Training curves ---

def write_metrics(workdir: pathlib.Path, records):
  workdir.mkdir(parents=True)
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_curves_summarise_and_plot_several_runs(tmp_path, caplog, capsys):
  write_metrics(tmp_path / 'a', [
      {'step': 10, 'split': 'train', 'loss': 2.0, 'accuracy': 0.3},
      {'step': 20, 'split': 'train', 'loss': 1.0, 'accuracy': 0.6},
      {'step': 10, 'split': 'test', 'loss': 1.5, 'accuracy': 0.5},
      {'step': 20, 'split': 'test', 'loss': 1.2, 'accuracy': 0.7},
      {'step': 20, 'split': 'test', 'loss': 1.1, 'accuracy': 0.65}])  # re-evaluated: last wins
  write_metrics(tmp_path / 'b', [{'step': 5, 'split': 'train', 'loss': 3.0, 'accuracy': 0.1}])
  with (tmp_path / 'b' / 'metrics.jsonl').open('a') as f:
    f.write('{"step": 10, "split": "tr')  # a line the run is still writing
  (tmp_path / 'b' / 'config.json').write_text('{"total_steps": 400}')  # in progress
  (tmp_path / 'c').mkdir()
  (tmp_path / 'c' / 'config.json').write_text('{"total_steps": 400}')  # started, not yet logged
  curves.main(['curves.py', *(str(tmp_path / run) for run in 'abc'), f'--out={tmp_path}'])
  assert f'{tmp_path / "c"} has not logged anything yet: left out.' in caplog.messages
  rows = read_json(tmp_path / 'curves.json')['runs']
  assert rows == [{'run': 'a', 'step': 20, 'train_loss': 1.0, 'eval_split': 'test',
                   'accuracy': 0.65, 'best_accuracy': 0.65, 'best_step': 20, 'total_steps': None},
                  {'run': 'b', 'step': 5, 'train_loss': 3.0, 'total_steps': 400}]
  assert re.search(r'^b +5 +400 +3 +- ', capsys.readouterr().out, re.M)  # 5 of 400 steps
  read_png(tmp_path / 'curves.png', (9, 3.6))
  with pytest.raises(UserError, match=r'None of .*/c has logged anything yet'):
    curves.main(['curves.py', str(tmp_path / 'c'), f'--out={tmp_path}'])


def test_a_folder_without_metrics_stops_the_command_with_one_line(tmp_path):
  run = subprocess.run([sys.executable, 'studies/curves.py', str(tmp_path), f'--out={tmp_path}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip() == f'error: {tmp_path} has no metrics.jsonl: give the workdirs of train.py runs.'
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "split": "train"}\nnot json\n')
  with pytest.raises(UserError, match=r'metrics.jsonl, line 2, is not a metrics record'):
    curves.main(['curves.py', str(tmp_path)])
  with pytest.raises(UserError, match=rf"metrics.jsonl: give the run's folder, {tmp_path}, "
                                      'rather than its metrics.jsonl'):
    curves.main(['curves.py', str(tmp_path / 'metrics.jsonl')])
  with pytest.raises(UserError, match=r'/typo does not exist: give the workdirs of train.py runs'):
    curves.main(['curves.py', str(tmp_path / 'typo')])


# --- Input permutations (section 3.4) ---

@pytest.fixture(scope='module')
def permutation_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('permutation')
  permutation.main(['permutation.py', f'--workdir={workdir}', *TINY_RECIPE, '--resnet_width=4',
                    '--resnet_stage_sizes=1', '--seed=3', '--permutations=original,global'])
  return workdir


def test_permutation_study_trains_each_model_on_each_permutation(permutation_workdir):
  table = read_json(permutation_workdir / 'permutation.json')
  rows = {(r['model'], r['permutation']): r for r in table['results']}
  assert set(rows) == {(m, k) for m in ('mixer', 'resnet') for k in ('original', 'global')}
  for (model, kind), row in rows.items():
    run = permutation_workdir / f'{model}_{kind}'
    assert row['accuracy'] == read_json(run / 'results.json')['test_accuracy']
    config = read_json(run / 'config.json')
    assert config['input_permutation'] == {'kind': kind, 'patch_size': 2, 'seed': 3}
    original = rows[model, 'original']['accuracy']
    assert row['relative_drop'] == pytest.approx((original - row['accuracy']) / original)
  check = table['weight_permutation_check']
  assert check['images'] == 360  # the whole test split
  assert check['accuracy_original'] == rows['mixer', 'original']['accuracy']
  assert check['max_abs_logit_difference'] <= 1e-5 * max(1.0, check['max_abs_logit'])
  assert check['same_predictions']
  assert check['accuracy_patch_pixel_weights_permuted'] == check['accuracy_original']
  read_png(permutation_workdir / 'permutation.png', (8, 6))


def test_shuffling_only_at_test_time_reuses_the_original_runs(permutation_workdir):
  steps_before = sorted(p.name for p in (permutation_workdir / 'mixer_original' / 'checkpoints').iterdir())
  permutation.main(['permutation.py', f'--workdir={permutation_workdir}', *TINY_RECIPE,
                    '--resnet_width=4', '--resnet_stage_sizes=1', '--seed=3', '--shuffle=test_only',
                    '--permutations=original,patch_pixel,global'])
  assert sorted(p.name for p in (permutation_workdir / 'mixer_original' / 'checkpoints').iterdir()) == steps_before
  rows = {(r['model'], r['test_images']): r for r in
          read_json(permutation_workdir / 'permutation_test_only.json')['results']}
  for model in ('mixer', 'resnet'):
    trained = read_json(permutation_workdir / f'{model}_original' / 'results.json')
    assert rows[model, 'original']['accuracy'] == trained['test_accuracy']
  # Its weights permuted, the trained Mixer classifies patch_pixel images as it did the originals.
  assert rows['mixer, weights permuted', 'patch_pixel']['accuracy'] == rows['mixer', 'original']['accuracy']
  read_png(permutation_workdir / 'permutation_test_only.png', (8, 4.2))


def test_a_rerun_with_other_settings_is_refused_before_any_run_trains(permutation_workdir):
  recipe = [f for f in TINY_RECIPE if 'total_steps' not in f] + ['--config.total_steps=4']
  # mixer_patch_pixel is new and first in line: before, it trained, then mixer_original refused.
  with pytest.raises(UserError, match=r'mixer_original holds a run with other settings \('
                                      r'total_steps: 2 -> 4\): give this study another --workdir'):
    permutation.main(['permutation.py', f'--workdir={permutation_workdir}', *recipe,
                      '--resnet_width=4', '--resnet_stage_sizes=1', '--seed=3',
                      '--permutations=patch_pixel,original,global'])
  assert [p.name for p in (permutation_workdir / 'mixer_original' / 'checkpoints').iterdir()] == ['2']
  assert not (permutation_workdir / 'mixer_patch_pixel').exists()


@pytest.mark.parametrize('flag,message', [
    ('--permutations=original,rotate', 'Unknown permutation rotate: choose from original, patch_pixel, global'),
    ('--models=mixer,vgg', 'Unknown model vgg: choose from mixer, resnet'),
    ('--shuffle=sometimes', 'Unknown shuffle sometimes: choose from train_and_test, test_only'),
    ('--colour=red', "Unknown command line flag 'colour'"),
    ('--workdir=/dev/null/runs', r'--workdir=/dev/null/runs cannot be made a folder \(Not a '
                                 r'directory\): give a folder'),  # before, after the training
    ('--workdir=', r'--workdir is empty'),  # before, the current folder
    ('--config.model.depth=3', '--config.model.depth: no such field in the recipe'),
    ('--config=configs/no_such_recipe.py', 'Cannot load the recipe: .* No such file'),
    ('--config=README.md', r'--config=README.md is not a recipe: give a Python file'),
    # The recipe's get_config refused its argument: its reason, not absl's quoted traceback.
    ('--config=configs/cifar10_scratch.py:4,smokey',
     r"Error whilst parsing config file: ValueError: unknown option 'smokey': the argument is "
     r'PATCH\[,smoke\]'),
    (('--config.total_steps=3', '--config=configs/digits.py'),
     r'--config.total_steps=3 comes before --config: give --config=configs/digits.py first'),
])
def test_unknown_study_options_are_one_line_errors(tmp_path, flag, message):
  flags = [flag] if isinstance(flag, str) else list(flag)
  with pytest.raises(UserError, match=message) as error:
    permutation.main(['permutation.py', f'--workdir={tmp_path}', *flags])
  assert '\n' not in str(error.value)
  assert not list(tmp_path.iterdir())  # nothing trained


def test_a_mistyped_study_flag_is_answered_before_tensorflow_is_imported():
  """TensorFlow takes seconds to import: only the tf.data pipeline may need it, not the flags."""
  script = """
import sys
sys.modules['tensorflow'] = None  # `import tensorflow` fails
from mixer_jax.errors import UserError
from studies import curves, from_scratch, permutation, scaling, weights
for study in (curves, from_scratch, permutation, scaling, weights):
  try:
    study.main([study.__name__, '--colour=red'])
  except UserError as e:
    print(e)
"""
  run = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.splitlines() == [
      "Unknown command line flag 'colour' (--help lists the flags)."] * 5, run.stdout


def test_resnet_is_pre_activation_with_standardised_weights():
  model = resnet.ResNet(num_classes=3, stage_sizes=(1, 1), width=8)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  assert set(shapes) == {'stem', 'stage0_unit0', 'stage1_unit0', 'pre_head_norm', 'head'}
  assert 'proj' in shapes['stage1_unit0'] and 'proj' not in shapes['stage0_unit0']
  # Scaling or shifting a filter does not change the function: convolutions standardise them.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  changed = jax.tree.map(np.copy, params)
  changed['stage1_unit0']['StdConv_0']['kernel'] = 5 * params['stage1_unit0']['StdConv_0']['kernel'] + 2
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  images = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(apply(changed, images), apply(params, images), rtol=1e-4, atol=1e-4)
  changed['stage1_unit0']['StdConv_1']['kernel'] = params['stage1_unit0']['StdConv_1']['kernel'][..., ::-1]
  assert np.abs(apply(changed, images) - apply(params, images)).max() > 1e-2


# --- Weight pictures (section 3.5) ---

def sinusoid_units(grid: int, frequencies, rng) -> tuple[np.ndarray, list[float]]:
  """Units (grid^2, 2F): each cosine of a random phase and its negative, columns shuffled."""
  r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')
  units, radii = [], []
  for fr, fc in frequencies:
    wave = np.cos(2 * np.pi * (fr * r + fc * c) / grid + rng.uniform(0, 2 * np.pi)).ravel()
    units += [wave, -wave + 0.01 * rng.standard_normal(wave.shape)]
    radii += [math.hypot(fr, fc) / grid] * 2
  shuffle = rng.permutation(len(units))
  return np.stack(units, axis=1)[:, shuffle], [radii[i] for i in shuffle]


def test_units_sort_by_spatial_frequency_and_pair_with_their_opposites():
  rng = np.random.default_rng(0)
  grid = 8
  kernel, radii = sinusoid_units(grid, [(3, 3), (0, 1), (2, 1), (1, 1), (0, 3), (2, 2)], rng)
  frequency = weights.spectral_frequency(kernel.reshape(grid, grid, -1))
  np.testing.assert_allclose(frequency, radii, atol=2e-3)  # cycles per token of each cosine
  assert weights.spectral_frequency(np.ones((grid, grid, 1)))[0] == 0

  found = weights.order_and_pairs(kernel, grid)
  assert sorted(found['order']) == list(range(kernel.shape[1]))
  shown = [radii[u] for u in found['order']]
  assert shown == sorted(shown)  # low to high frequency
  for a, b, correlation in found['pairs']:  # each cosine beside its own negative
    assert radii[a] == radii[b] and correlation < -0.99
    assert np.corrcoef(kernel[:, a], kernel[:, b])[0, 1] == pytest.approx(correlation)
  assert [u for pair in found['pairs'] for u in pair[:2]] == found['order']
  assert found['mutual_fraction'] == 1.0


@pytest.fixture(scope='module')
def tiny_mixer_params():
  model = models.MlpMixer(num_classes=10, num_blocks=2, patch_size=2, hidden_dim=8,
                          tokens_mlp_dim=6, channels_mlp_dim=8)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def weights_in(form: str, params, folder: pathlib.Path) -> str:
  """The same parameters as an official .npz, timm safetensors or an orbax workdir."""
  if form == 'npz':
    checkpoints.save_npz(params, folder / 'mixer.npz')
    return str(folder / 'mixer.npz')
  if form == 'timm':
    safetensors = pytest.importorskip('safetensors.numpy')
    safetensors.save_file(checkpoints.to_timm(params), str(folder / 'mixer.safetensors'))
    return str(folder / 'mixer.safetensors')
  with ocp.CheckpointManager(folder / 'run' / 'checkpoints',
                             item_handlers=ocp.StandardCheckpointHandler()) as manager:
    manager.save(1, args=ocp.args.StandardSave({'params': params}))
  return str(folder / 'run')


@pytest.mark.parametrize('form', ['npz', 'timm', 'orbax'])
def test_weight_pictures_read_every_checkpoint_format(tmp_path, tiny_mixer_params, form):
  path = weights_in(form, tiny_mixer_params, tmp_path)
  weights.main(['weights.py', f'--weights={path}', '--blocks=0,1,5', '--stem_units=0',
                f'--out={tmp_path}'])
  table = read_json(tmp_path / 'weights.json')
  assert set(table['blocks']) == {'MixerBlock_0', 'MixerBlock_1'}  # block 5 does not exist
  for name, block in table['blocks'].items():
    kernel = tiny_mixer_params[name]['token_mixing']['Dense_0']['kernel']
    expected = weights.order_and_pairs(kernel.astype(np.float64), 4)
    assert block['order'] == expected['order'] and block['pairs'] == expected['pairs']
    assert block['grid'] == 4 and block['units'] == 6
  pixels = read_png(tmp_path / 'weights.png')
  assert pixels.shape[1] == 10 * study.DPI


def test_weights_that_do_not_fit_are_one_line_errors(tmp_path, tiny_mixer_params):
  bad = {**tiny_mixer_params, 'MixerBlock_0': {
      **tiny_mixer_params['MixerBlock_0'],
      'token_mixing': {'Dense_0': {'kernel': np.zeros((15, 6)), 'bias': np.zeros(6)}}}}
  checkpoints.save_npz(bad, tmp_path / 'bad.npz')
  no_stem = {k: v for k, v in tiny_mixer_params.items() if k != 'stem'}
  checkpoints.save_npz(no_stem, tmp_path / 'no_stem.npz')
  flat_stem = {**tiny_mixer_params, 'stem': {'kernel': np.zeros((4, 4)), 'bias': np.zeros(4)}}
  checkpoints.save_npz(flat_stem, tmp_path / 'flat_stem.npz')
  for arguments, message in [
      ([f'--weights={tmp_path}/bad.npz'], r'kernel has shape \(15, 6\): expected \(tokens, hidden '
                                           r'units\) with a square number of tokens'),
      ([f'--weights={tmp_path}/no_stem.npz'], r'--weights=.*no_stem.npz holds no Mixer parameters'),
      ([f'--weights={tmp_path}/flat_stem.npz'], r'stem/kernel has shape \(4, 4\)'),
      ([f'--weights={tmp_path}/bad.npz', '--blocks=4'], 'no block among 4: they have 2 blocks'),
      ([f'--weights={tmp_path}/missing.npz'], 'does not exist'),
      ([f'--weights={tmp_path}/bad.npz', '--blocks=first'], '--blocks takes integers of at least 0'),
      ([f'--weights={tmp_path}/bad.npz', '--columns=3'],
       r'--columns=3: must be even.*use 2 or 4 \(--help lists the flags\)\.$'),
  ]:
    with pytest.raises(UserError, match=message) as error:
      weights.main(['weights.py', *arguments, f'--out={tmp_path}/out'])
    assert '\n' not in str(error.value)
    assert not (tmp_path / 'out').exists()  # checked writable, not made, before the error


# --- Token-count scaling (section 2) ---

def mixer_macs(c, blocks, patch, d_s, d_c, resolution, classes=1000) -> int:
  """Multiply-adds by hand: patch embedding, per block two token and two channel Dense, head."""
  s = (resolution // patch) ** 2
  return s * patch * patch * 3 * c + blocks * (c * (s * d_s + d_s * s) + s * (c * d_c + d_c * c)) + c * classes


def vit_macs(c, blocks, patch, mlp, resolution, classes=1000) -> int:
  """Multiply-adds by hand: patch embedding, per block Q, K, V, QK^T, AV, output, MLP, head."""
  s = (resolution // patch) ** 2
  n = s + 1
  per_block = 3 * n * c * c + n * n * c + n * n * c + n * c * c + n * c * mlp + n * mlp * c
  return s * patch * patch * 3 * c + blocks * per_block + c * classes


def scaling_flags(*arguments):
  return study.parse_flags(['scaling.py', *arguments], '', scaling.define_flags)[0]


def test_scaling_flops_of_b16_are_the_hand_count_and_the_published_figures():
  values = scaling_flags('--variant=B/16')
  # Forward GMACs at 224/448/896 px (MIXER_NOTES section 10, from the paper's sizes).
  published = {'Mixer, D_S fixed': (12.6, 50.4, 201.6), 'Mixer, D_S grown': (12.6, 67.1, 534.6),
               'ViT': (17.6, 78.5, 449.7)}
  for i, resolution in enumerate((224, 448, 896)):
    built = scaling.build_models(values, resolution)
    grown_d_s = 384 * (resolution // 224) ** 2
    assert built['Mixer, D_S grown'][0].tokens_mlp_dim == grown_d_s
    hand = {'Mixer, D_S fixed': mixer_macs(768, 12, 16, 384, 3072, resolution),
            'Mixer, D_S grown': mixer_macs(768, 12, 16, grown_d_s, 3072, resolution),
            'ViT': vit_macs(768, 12, 16, 3072, resolution)}
    for name, (_, flops) in built.items():
      assert flops == 2 * hand[name], name
      assert flops / 2e9 == pytest.approx(published[name][i], abs=0.06), (name, resolution)


def test_vit_flops_match_xla_cost_analysis():
  model = vit.ViT(num_classes=10, patch_size=4, hidden_dim=64, num_layers=2, num_heads=2, mlp_dim=256)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)['params']
  cost = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, images).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA also counts softmax, LayerNorm, GELU and the adds, a few percent at this small width.
  assert 1.0 <= cost['flops'] / vit.forward_flops(model, 32) < 1.1


def test_scaling_study_times_three_models_and_plots_them(tmp_path):
  scaling.main(['scaling.py', '--variant=S/32', '--width=32', '--depth=1', '--resolutions=128,64',
                '--base_resolution=64', '--batch_sizes=1', '--steps=1', '--repeats=1',
                f'--out={tmp_path}'])
  table = read_json(tmp_path / 'scaling.json')
  rows = {(r['model'], r['resolution']): r for r in table['results']}
  assert set(rows) == {(m, r) for m in scaling.NAMES for r in (64, 128)}
  # S/32 shrunk to C=32: D_S 16, D_C 128; the grown Mixer's D_S follows the 4x tokens at 128 px.
  assert rows['Mixer, D_S fixed', 128]['tokens_mlp_dim'] == 16
  assert rows['Mixer, D_S grown', 128]['tokens_mlp_dim'] == 64
  for r in (64, 128):
    assert rows['Mixer, D_S fixed', r]['gflops_per_image'] * 1e9 == 2 * mixer_macs(32, 1, 32, 16, 128, r)
    assert rows['Mixer, D_S grown', r]['gflops_per_image'] * 1e9 == pytest.approx(
        2 * mixer_macs(32, 1, 32, 16 * (r // 64) ** 2, 128, r))
    assert rows['ViT', r]['gflops_per_image'] * 1e9 == pytest.approx(2 * vit_macs(32, 1, 32, 128, r))
  for row in table['results']:
    assert row['best_batch'] == 1 and row['images_per_sec'] > 0
  for growth in table['growth']:
    small, large = rows[growth['model'], 64], rows[growth['model'], 128]
    assert growth['time_exponent'] == pytest.approx(
        math.log(small['images_per_sec'] / large['images_per_sec']) / math.log(4))
  read_png(tmp_path / 'scaling.png', (9, 3.8))


def test_scaling_interrupted_writes_the_resolutions_it_finished(tmp_path):
  proc = subprocess.Popen(
      [sys.executable, 'studies/scaling.py', '--variant=S/32', '--width=32', '--depth=1',
       '--resolutions=64,128,256', '--base_resolution=64', '--batch_sizes=1', '--steps=1',
       '--repeats=1', f'--out={tmp_path}'], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True,
      env={**os.environ, 'PYTHONUNBUFFERED': '1'})
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('ViT') and '  64px' in line:  # the last row of the first resolution
      os.killpg(proc.pid, signal.SIGINT)
      break
  out, err = proc.communicate(timeout=120)
  out = ''.join(lines) + out
  assert proc.returncode == 130, err[-3000:]
  assert err.strip().endswith('Interrupted (Ctrl-C).')
  table = read_json(tmp_path / 'scaling.json')
  measured = sorted({r['resolution'] for r in table['results']})
  assert measured in ([64], [64, 128])  # 128 px may finish before the signal lands
  assert table['resolutions_asked'] == [64, 128, 256]
  assert f'Interrupted: keeping the resolutions measured before it ({", ".join(map(str, measured))} px' in out
  assert len(table['results']) == 3 * len(measured)
  read_png(tmp_path / 'scaling.png', (9, 3.8))


def test_scaling_options_that_cannot_work_are_one_line_errors(tmp_path):
  for arguments, message in [(['--resolutions=224,abc'], '--resolutions takes integers of at least 1'),
                             (['--variant=Q/7'], "Unknown Mixer variant 'Q/7'"),
                             (['--resolutions=100'], '--resolutions: 100 is not a multiple of the '
                              'patch size 16 of B/16; use a multiple such as 96 or 112\\.'),
                             (['--base_resolution=8'], '--base_resolution: 8 is not a multiple '
                              'of the patch size 16 of B/16; use a multiple such as 16\\.'),
                             (['--resolutions=224,448,224'], '--resolutions lists 224 more than once'),
                             (['--dtype=int8'], 'Unknown --dtype=int8')]:
    with pytest.raises(UserError, match=message):
      scaling.main(['scaling.py', *arguments, f'--out={tmp_path}'])


# --- Mixers against ResNets from scratch, over seeds ---

def resnet_params(units: int, width: int, classes: int) -> int:
  """By hand: stem conv with bias; per unit two GroupNorms, two bias-free 3x3 convs, a 1x1
  projection where the shape changes; the head's GroupNorm and Dense."""
  total, channels = 3 * 3 * 3 * width + width, width
  for stage in range(3):
    out = width * 2 ** stage
    for unit in range(units):
      total += 2 * channels + 9 * channels * out + 2 * out + 9 * out * out
      total += channels * out if channels != out or (stage and not unit) else 0
      channels = out
  return total + 2 * channels + channels * classes + classes


def test_ctrl_c_stops_a_study_as_a_whole_with_its_run_checkpointed(tmp_path):
  long_runs = [f for f in TINY_RECIPE if 'total_steps' not in f] + ['--config.total_steps=100000']
  proc = subprocess.Popen(
      [sys.executable, 'studies/from_scratch.py', f'--workdir={tmp_path}', *long_runs,
       '--mixers=1x8', '--resnets=', '--seeds=0,1'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not (tmp_path / 'mixer_1x8_seed0' / 'metrics.jsonl').exists():  # training
      assert proc.poll() is None and time.time() < deadline, proc.communicate()
      time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  # Before, the study went on to its next run (or failed on the missing accuracy).
  assert proc.returncode == 130 and 'Traceback' not in err, err
  assert err.strip().splitlines()[-1].startswith('Stopped at step ') and (
      f'on SIGINT; the checkpoint is saved in {tmp_path / "mixer_1x8_seed0"}.' in err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['mixer_1x8_seed0']
  assert list((tmp_path / 'mixer_1x8_seed0' / 'checkpoints').iterdir())
  stopped_at = int(re.search(r'Stopped at step (\d+)', err).group(1))
  proc = subprocess.Popen(proc.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
  try:  # the same command again says it resumes, before it trains on
    first_line = proc.stdout.readline()
  finally:
    proc.kill()
  assert first_line == (f'mixer_1x8, seed 0: resuming from step {stopped_at} of 100000 in '
                        f'{tmp_path / "mixer_1x8_seed0"}\n')


def test_from_scratch_study_repeats_each_model_over_seeds(tmp_path, capsys):
  arguments = ['from_scratch.py', f'--workdir={tmp_path}', *TINY_RECIPE, '--mixers=1x8',
               '--resnets=', '--seeds=0,1']
  from_scratch.main(arguments)  # ResNets train in the permutation study's test
  assert f'mixer_1x8, seed 1: training in {tmp_path / "mixer_1x8_seed1"}\n' in capsys.readouterr().out
  rows = {r['model']: r for r in read_json(tmp_path / 'from_scratch.json')['results']}
  # The recipe's ratios D_S = C/2 and D_C = C; 16 tokens of 2x2x3 pixels; 10 classes.
  mixer_params = lambda blocks, c: (12 * c + c) + blocks * (
      2 * c + (16 * c // 2 + c // 2) + (c // 2 * 16 + 16) + 2 * c + 2 * (c * c + c)) + 2 * c + 10 * c + 10
  assert rows['mixer_1x8']['params'] == mixer_params(1, 8) == 534
  for name, row in rows.items():
    runs = [read_json(tmp_path / f'{name}_seed{seed}' / 'results.json')['test_accuracy']
            for seed in (0, 1)]
    assert row['accuracies'] == runs
    assert row['mean'] == pytest.approx(np.mean(runs))
    assert row['std'] == pytest.approx(np.std(runs, ddof=1))
  seeds = [read_json(tmp_path / f'mixer_1x8_seed{s}' / 'config.json')['seed'] for s in (0, 1)]
  assert seeds == [0, 1]
  read_png(tmp_path / 'from_scratch.png', (7, 4.2))
  from_scratch.main(arguments)  # again: the finished runs are reused, and it says so
  assert (f'mixer_1x8, seed 0: finished at step 2, evaluating it again in '
          f'{tmp_path / "mixer_1x8_seed0"}\n') in capsys.readouterr().out
  assert read_json(tmp_path / 'from_scratch.json')['results'] == [rows['mixer_1x8']]
  assert [p.name for p in (tmp_path / 'mixer_1x8_seed0' / 'checkpoints').iterdir()] == ['2']
  from_scratch.main([*arguments[:-3], '--mixers=1x4', '--resnets=', '--seeds=0'])
  assert [r['model'] for r in read_json(tmp_path / 'from_scratch.json')['results']] == ['mixer_1x4']
  assert (f'The previous from_scratch.png and .json also showed mixer_1x8; their runs are kept '
          f'in {tmp_path}: name them in --mixers or --resnets') in capsys.readouterr().out

  values, _ = study.parse_flags(arguments[:-3] + ['--mixers=2x4', '--resnets=1x4,2x8'], '',
                                lambda v: from_scratch.define_flags(v, arguments))
  built = from_scratch.model_configs(values.config, values)
  assert from_scratch.parameter_count(*built['mixer_2x4']) == mixer_params(2, 4)
  for spec, (units, width) in (('1x4', (1, 4)), ('2x8', (2, 8))):
    assert from_scratch.parameter_count(*built[f'resnet_{spec}']) == resnet_params(units, width, 10)


@pytest.mark.parametrize('arguments, message', [
    (['--mixers=', '--resnets='], r'No models to train: give --mixers=BLOCKSxWIDTH'),
    (['--seeds=0,1,0'], r'--seeds lists 0 more than once: give each once'),  # a fake spread
    (['--mixers=4x'], r'--mixers takes BLOCKSxWIDTH entries such as 4x128'),
])
def test_from_scratch_options_that_cannot_work_are_one_line_errors(tmp_path, arguments, message):
  with pytest.raises(UserError, match=message):
    from_scratch.main(['from_scratch.py', f'--workdir={tmp_path}', *TINY_RECIPE, *arguments])
  assert list(tmp_path.iterdir()) == []
