"""Checkpoints that cannot be resumed give errors naming the problem, and nothing is deleted."""
import importlib.util
import pathlib
import re

import pytest

from mixer_jax import checkpoints, trainer
from mixer_jax.errors import UserError
import training


def small_config(**overrides):
  """training.py's small config on synthetic data: checkpoints need no data set or TensorFlow
  (so these tests also run on accelerator machines that have JAX alone)."""
  return training.small_config(dataset='synthetic', num_classes=10, **overrides)


def step_folders(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def test_tree_mismatches_name_every_offending_path():
  import numpy as np
  expected = {'stem': {'kernel': np.zeros((4, 4, 3, 8)), 'bias': np.zeros(8)},
              'head': {'kernel': np.zeros((8, 10))}}
  found = {'stem': {'kernel': np.zeros((4, 4, 3, 16)), 'bias': np.zeros(8)},
           'extra': {'kernel': np.zeros((2,))}}
  assert checkpoints.tree_mismatches(expected, found) == [
      'head/kernel: expected (8, 10), missing',
      'extra/kernel: unexpected, found (2,)',
      'stem/kernel: expected (4, 4, 3, 8), found (4, 4, 3, 16)',
  ]
  assert checkpoints.tree_mismatches(expected, expected) == []


def test_checkpoint_of_another_model_or_optimizer_is_a_clear_error(tmp_path):
  trainer.train_and_evaluate(small_config(total_steps=10, checkpoint_every=10), str(tmp_path))
  wider = small_config(total_steps=20)
  wider.model.hidden_dim = 96
  with pytest.raises(UserError) as error:
    trainer.train_and_evaluate(wider, str(tmp_path))
  message = str(error.value)
  assert 'holds another model than the config describes' in message
  assert 'stem/kernel: expected (4, 4, 3, 96), found (4, 4, 3, 64)' in message
  assert 'config.json' in message and 'new --workdir' in message
  assert re.search(r'they differ in [^)]*model/hidden_dim: 64 -> 96', message)  # what to set back
  # Adam's moments are not SGD's momentum: this used to be reported as a corrupt checkpoint.
  with pytest.raises(UserError, match=r'holds the state of another optimizer than the config '
                                      r'describes .*config.json'):
    trainer.train_and_evaluate(small_config(total_steps=20, optimizer='sgd'), str(tmp_path))
  assert step_folders(tmp_path) == [10]


@pytest.mark.parametrize('damage', ['truncate', 'delete_metadata', 'overwrite_data'])
def test_corrupt_checkpoint_is_a_clear_error_and_keeps_the_others(tmp_path, damage):
  trainer.train_and_evaluate(small_config(total_steps=20, checkpoint_every=10), str(tmp_path))
  newest = tmp_path / 'checkpoints' / '20'
  files = [p for p in newest.rglob('*') if p.is_file()]
  for path in files:
    if damage == 'truncate':  # every file cut short, as after a full disk
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
    elif damage == 'delete_metadata' and 'METADATA' in path.name.upper():
      path.unlink()
    elif damage == 'overwrite_data' and path.parent.name == 'd':  # the arrays' bytes
      path.write_bytes(np.random.default_rng(0).bytes(100))
  with pytest.raises(UserError, match=r'checkpoints/20 cannot be read; it is corrupt or '
                     r'truncated.*Nothing was deleted. Move that folder out') as error:
    trainer.train_and_evaluate(small_config(total_steps=30), str(tmp_path))
  assert 'TensorStore' not in str(error.value)  # its details are kilobytes of spec
  assert step_folders(tmp_path) == [10, 20]


# --- Weights in and out ---

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mixer_jax import models  # noqa: E402
from test_models import random_params, small_model  # noqa: E402


def params_equal(a, b):
  assert checkpoints.tree_mismatches(a, b) == []
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture
def params():
  return jax.device_get(random_params(small_model(), jnp.zeros((1, 16, 16, 3))))


def test_npz_round_trip_is_identical(tmp_path, params):
  checkpoints.save_npz(params, tmp_path / 'mixer.npz')
  with np.load(tmp_path / 'mixer.npz') as f:
    assert 'MixerBlock_1/token_mixing/Dense_0/kernel' in f.files  # the official key format
  params_equal(checkpoints.load_npz(str(tmp_path / 'mixer.npz')), params)


def test_pre_linen_npz_loads_to_the_same_tree(tmp_path, params):
  # Pre-linen names: one module counter per parent (LayerNorm_0, LayerNorm_2) and
  # Mixer/encoderblock_{i}/{token,channel}_mixing_phase_0/{kernel1,bias1,kernel2,bias2}.
  flat = {'embedding/kernel': params['stem']['kernel'], 'embedding/bias': params['stem']['bias'],
          'head/kernel': params['head']['kernel'], 'head/bias': params['head']['bias']}
  for name in ('scale', 'bias'):
    flat[f'Mixer/encoder_norm/{name}'] = params['pre_head_layer_norm'][name]
  for i in range(2):
    block = params[f'MixerBlock_{i}']
    for ours, theirs in (('LayerNorm_0', 'LayerNorm_0'), ('LayerNorm_1', 'LayerNorm_2')):
      for name in ('scale', 'bias'):
        flat[f'Mixer/encoderblock_{i}/{theirs}/{name}'] = block[ours][name]
    for mix in ('token_mixing', 'channel_mixing'):
      for j in (0, 1):
        for name in ('kernel', 'bias'):
          flat[f'Mixer/encoderblock_{i}/{mix}_phase_0/{name}{j + 1}'] = block[mix][f'Dense_{j}'][name]
  np.savez(tmp_path / 'old.npz', **flat)
  params_equal(checkpoints.load_npz(str(tmp_path / 'old.npz')), params)


def test_timm_conversion_round_trip(params):
  state_dict = checkpoints.to_timm(params)
  assert state_dict['stem.proj.weight'].shape == (32, 3, 4, 4)  # OIHW
  assert state_dict['blocks.1.mlp_tokens.fc1.weight'].shape == (16, 16)  # (D_S, S)
  assert state_dict['blocks.0.mlp_channels.fc2.weight'].shape == (32, 64)  # (C, D_C)
  params_equal(checkpoints.from_timm(state_dict), params)


@pytest.mark.parametrize('wrapper', [None, 'state_dict', 'model'])
def test_timm_pth_files_load_bare_or_as_training_scripts_wrap_them(params, tmp_path, wrapper):
  torch = pytest.importorskip('torch')
  state_dict = {k: torch.from_numpy(np.array(v)) for k, v in checkpoints.to_timm(params).items()}
  torch.save({wrapper: state_dict} if wrapper else state_dict, tmp_path / 'mixer.pth')
  params_equal(checkpoints.load_params(str(tmp_path / 'mixer.pth')), params)


def test_timm_model_and_ours_give_the_same_logits():
  torch = pytest.importorskip('torch')
  mlp_mixer = pytest.importorskip('timm.models.mlp_mixer')
  torch.manual_seed(0)
  # 32x32 images, patch 8 (S=16), C=64, D_S=32, D_C=256, 3 blocks; weights random, biases too.
  theirs = mlp_mixer.MlpMixer(num_classes=7, img_size=32, patch_size=8, num_blocks=3,
                              embed_dim=64, mlp_ratio=(0.5, 4.0)).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0, 0.2)
  ours = models.MlpMixer(num_classes=7, num_blocks=3, patch_size=8, hidden_dim=64,
                         tokens_mlp_dim=32, channels_mlp_dim=256, approximate_gelu=False)
  params = checkpoints.from_timm(theirs.state_dict())
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = theirs(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(ours.apply({'params': params}, images))
  assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
  # And back: our parameters load into timm unchanged.
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoints.to_timm(params).items()})


def mosaic(images_2x2):
  """Four (B, R, R, 3) image batches -> one (B, 2R, 2R, 3) batch, [[0, 1], [2, 3]]."""
  top = np.concatenate(images_2x2[:2], axis=2)
  bottom = np.concatenate(images_2x2[2:], axis=2)
  return np.concatenate([top, bottom], axis=1)


def test_expanded_model_on_a_mosaic_averages_the_original_logits(params):
  model = small_model()  # 16x16 images, patch 4: a 4x4 token grid
  big = model.clone(tokens_mlp_dim=model.tokens_mlp_dim * 4)
  expanded = checkpoints.expand_token_mixing(params, 2)
  assert checkpoints.tree_mismatches(
      big.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'], expanded) == []
  rng = np.random.default_rng(1)
  quarters = [rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32) for _ in range(4)]
  small_logits = [np.asarray(model.apply({'params': params}, q)) for q in quarters]
  big_logits = np.asarray(big.apply({'params': expanded}, mosaic(quarters)))
  expected = np.mean(small_logits, axis=0)
  assert np.abs(big_logits - expected).max() / np.abs(expected).max() < 1e-5
  same = np.asarray(big.apply({'params': expanded}, mosaic([quarters[0]] * 4)))
  assert np.abs(same - small_logits[0]).max() / np.abs(small_logits[0]).max() < 1e-5


def test_resolution_that_is_not_a_multiple_is_a_clear_error(params):
  assert checkpoints.resolution_factor(params, 48, 4) == 3
  with pytest.raises(UserError, match=r'trained at 16x16 \(patch 4\).*24x24.*32, 48, 64'):
    checkpoints.resolution_factor(params, 24, 4)
  # Patch 8 at 32 px has the weights' 16 tokens: before, a "2x" expansion, then wrong shapes.
  with pytest.raises(UserError, match=r'The weights have 4x4 patches, the model the config '
                     r"describes 8x8: set the sizes they were trained with, --config.variant='' "
                     r'--config.model.num_blocks=2 --config.model.patch_size=4 --config.model.hidden_dim=32 '
                     r'--config.model.tokens_mlp_dim=16 --config.model.channels_mlp_dim=64\.$'):
    checkpoints.resolution_factor(params, 32, 8)


def test_adapt_replaces_the_head_only_when_the_class_count_differs(params, caplog):
  caplog.set_level('INFO', logger='absl')
  same = checkpoints.adapt(params, params)
  np.testing.assert_array_equal(same['head']['kernel'], params['head']['kernel'])
  assert 'head' not in caplog.text
  other = small_model().clone(num_classes=3).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  adapted = checkpoints.adapt(params, jax.device_get(other['params']))
  assert adapted['head']['kernel'].shape == (32, 3) and not adapted['head']['kernel'].any()
  classes = params['head']['bias'].shape[-1]
  assert f"head ({classes} classes) is replaced by a new zero head of 3 classes" in caplog.text
  np.testing.assert_array_equal(adapted['stem']['kernel'], params['stem']['kernel'])


@pytest.mark.parametrize('change, expected', [
    (lambda p: p['MixerBlock_0'].pop('LayerNorm_1'),
     'MixerBlock_0/LayerNorm_1/bias: expected (32,), missing'),
    (lambda p: p.update(MixerBlock_2=p['MixerBlock_1']),
     'MixerBlock_2/LayerNorm_0/bias: unexpected, found (32,)'),
    (lambda p: p['MixerBlock_1']['channel_mixing']['Dense_0'].update(kernel=np.zeros((32, 48))),
     'MixerBlock_1/channel_mixing/Dense_0/kernel: expected (32, 64), found (32, 48)'),
])
def test_weights_that_do_not_fit_name_every_offending_path(params, change, expected):
  loaded = jax.tree.map(np.copy, params)
  loaded = {k: dict(v) if isinstance(v, dict) else v for k, v in loaded.items()}
  loaded['MixerBlock_0'] = {k: dict(v) for k, v in loaded['MixerBlock_0'].items()}
  loaded['MixerBlock_1'] = {k: {kk: dict(vv) if isinstance(vv, dict) else vv
                                for kk, vv in v.items()} for k, v in loaded['MixerBlock_1'].items()}
  change(loaded)
  with pytest.raises(UserError, match='do not fit the model') as error:
    checkpoints.adapt(loaded, params)
  assert expected in str(error.value)


def test_weights_of_another_variant_are_a_clear_error():
  s32 = jax.eval_shape(lambda: models.create_model('S/32', 10).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3))))['params']
  b32 = jax.eval_shape(lambda: models.create_model('B/32', 10).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3))))['params']
  lines = checkpoints.tree_mismatches(s32, b32)
  assert 'stem/kernel: expected (32, 32, 3, 512), found (32, 32, 3, 768)' in lines
  assert 'MixerBlock_8/LayerNorm_0/bias: unexpected, found (768,)' in lines
  with pytest.raises(UserError, match=r'\n  stem/kernel: expected \(32, 32, 3, 512\), found .*\n'
                     r'To use these weights, fine-tune the variant they were trained with, '
                     r'--config.variant=B/32\.$'):
    checkpoints.adapt(b32, s32)


def test_orbax_workdir_loads_parameters_only(tmp_path):
  trainer.train_and_evaluate(small_config(total_steps=10, checkpoint_every=5), str(tmp_path))
  newest = checkpoints.load_params(str(tmp_path))
  older = checkpoints.load_params(str(tmp_path / 'checkpoints' / '5'))
  assert set(newest) >= {'stem', 'head', 'MixerBlock_1'} and 'opt_state' not in newest
  assert isinstance(newest['stem']['kernel'], np.ndarray)
  assert not np.array_equal(newest['stem']['kernel'], older['stem']['kernel'])
  with pytest.raises(UserError, match=r'--checkpoint=.*checkpoints/7 does not exist: that run '
                     r'holds the checkpoints of steps 5, 10; give one of those, or the run\'s'):
    checkpoints.load_params(str(tmp_path / 'checkpoints' / '7'), '--checkpoint')


def npz_of_other_arrays(path):
  np.savez(path / 'other.npz', a=np.zeros(3), b=np.ones(2))
  return path / 'other.npz'


def truncated_npz(path):
  np.savez(path / 'cut.npz', **{'stem/kernel': np.zeros((4, 4, 3, 8))})
  (path / 'cut.npz').write_bytes((path / 'cut.npz').read_bytes()[:100])
  return path / 'cut.npz'


def damaged_npz(path):
  """One flipped bit inside an array's data, as a bad disk or copy leaves: the zip's CRC fails."""
  np.savez(path / 'flipped.npz', **{'stem/kernel': np.zeros((4, 4, 3, 8))})
  data = bytearray((path / 'flipped.npz').read_bytes())
  data[200] ^= 1  # past the zip entry's and the .npy header, in the zeros
  (path / 'flipped.npz').write_bytes(bytes(data))
  return path / 'flipped.npz'


def text_file(path):
  (path / 'notes.txt').write_text('weights')
  return path / 'notes.txt'


def garbage_safetensors(path):
  (path / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}')
  return path / 'model.safetensors'


def empty_folder(path):
  (path / 'run').mkdir()
  return path / 'run'


def run_before_its_first_checkpoint(path):
  (path / 'run' / 'checkpoints').mkdir(parents=True)
  (path / 'run' / 'config.json').write_text('{}')
  return path / 'run'


@pytest.mark.parametrize('make, message', [
    (lambda path: path / 'nowhere.npz', r'init_from=.*nowhere.npz does not exist: give an .npz'),
    (text_file, r'init_from=.*notes.txt is a file of unknown kind: give an .npz'),
    (npz_of_other_arrays, r'init_from=.*other.npz holds no Mixer parameters \(it has a, b\)'),
    (truncated_npz, r'Cannot read .*cut.npz as an .npz checkpoint.*Download it again\.$'),
    (damaged_npz, r'Cannot read .*flipped.npz as an .npz checkpoint \(Bad CRC-32 .*\): it is '
                  r'damaged. Download it again\.$'),
    (garbage_safetensors, r'Cannot read .*model.safetensors as timm weights \('),
    (lambda path: path / 'text.npz', r'text.npz as an .npz checkpoint: it is not a zip archive'),
    pytest.param(lambda path: path / 'empty.pth', r'empty.pth as timm weights \(EOFError: the '
                 r'file ends early', marks=pytest.mark.skipif(
                     importlib.util.find_spec('torch') is None, reason='needs torch')),
    (empty_folder, r'init_from=.*run holds no checkpoint: give an .npz'),
    (run_before_its_first_checkpoint, r'init_from=.*run is a run that has saved no checkpoint '
                                      r'yet \(train.py saves one every checkpoint_every steps'),
])
def test_weights_of_the_wrong_kind_are_one_clear_error(tmp_path, make, message):
  """What init_from and predict.py's --checkpoint are given: a traceback for most before."""
  (tmp_path / 'text.npz').write_text('Not Found')  # what a failed download can leave
  (tmp_path / 'empty.pth').write_bytes(b'')
  with pytest.raises(UserError, match=message):
    checkpoints.load_params(str(make(tmp_path)))


def test_checkpoint_left_half_written_by_a_kill_is_said_removed_and_ignored(tmp_path, caplog):
  caplog.set_level('INFO')
  trainer.train_and_evaluate(small_config(total_steps=20, checkpoint_every=10), str(tmp_path))
  # What a SIGKILL during the save of step 30 leaves: orbax's temporary folder, never renamed.
  partial = tmp_path / 'checkpoints' / '30.orbax-checkpoint-tmp-1795620000'
  (partial / 'default').mkdir(parents=True)
  (partial / 'default' / 'manifest.ocdbt').write_bytes(b'\x00' * 10)
  results = trainer.train_and_evaluate(small_config(total_steps=30, checkpoint_every=10),
                                       str(tmp_path))
  assert results['step'] == 30
  assert step_folders(tmp_path)[-1] == 30
  assert not partial.exists()
  assert f'Removing 1 unfinished checkpoint write(s) left by a run stopped while saving: ' \
         f'{partial}.' in caplog.text
  assert 'Resumed from' in caplog.text and 'at step 20' in caplog.text


def test_weights_trained_with_the_other_gelu_are_warned_of(tmp_path, caplog):
  """timm's weights use the exact GELU, the official .npz the tanh one; a run says which."""
  exact = small_config(total_steps=2, log_every=2, eval_every=2, checkpoint_every=2)
  exact.model.approximate_gelu = False
  trainer.train_and_evaluate(exact, str(tmp_path / 'exact'))
  for weights in ('exact', 'exact/checkpoints', 'exact/checkpoints/2', 'w.pth', 'w.safetensors'):
    assert checkpoints.trained_gelu(str(tmp_path / weights)) is False, weights
  checkpoints.save_npz(checkpoints.load_params(str(tmp_path / 'exact')), tmp_path / 'w.npz')
  assert checkpoints.trained_gelu(str(tmp_path / 'w.npz')) is True
  (tmp_path / 'bare').mkdir()
  assert checkpoints.trained_gelu(str(tmp_path / 'bare')) is None  # no config.json: unknown
  for damaged, problem in (('{"model": {"approx', 'Unterminated string'),
                           ('[1, 2]', 'a JSON list, not an object'), (b'{"a": "\x80"}', 'utf-8')):
    (tmp_path / 'bare' / 'config.json').write_bytes(
        damaged if isinstance(damaged, bytes) else damaged.encode())
    with pytest.raises(UserError, match=rf'bare/config.json is not the settings of a run \(.*'
                                        rf'{problem}.*\): a run writes that file'):
      checkpoints.trained_gelu(str(tmp_path / 'bare'))  # before: JSONDecodeError, AttributeError

  caplog.set_level('WARNING', logger='absl')
  tanh = dict(total_steps=2, log_every=2, eval_every=2, checkpoint_every=2)  # the default GELU
  trainer.train_and_evaluate(small_config(init_from=str(tmp_path / 'w.npz'), **tanh),
                             str(tmp_path / 'from_npz'))
  assert 'GELU' not in caplog.text
  trainer.train_and_evaluate(small_config(init_from=str(tmp_path / 'exact'), **tanh),
                             str(tmp_path / 'from_run'))
  assert (f"{tmp_path / 'exact'} was trained with the exact GELU, and model.approximate_gelu=True "
          'computes the tanh-approximate GELU: set --config.model.approximate_gelu=False'
          in caplog.text)
