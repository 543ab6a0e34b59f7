"""The model against the paper: parameter counts, names, and an independent NumPy forward."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixer_jax import formulations, models

# Published counts with a 1000-class head at 224 (official code's tests) and Table 1 (millions,
# without the head).
EXACT_COUNTS = {'B/16': 59_880_472, 'B/32': 60_293_428, 'L/16': 208_196_168}
TABLE_1_MILLIONS = {'S/32': 19, 'S/16': 18, 'B/32': 60, 'B/16': 59, 'L/32': 206, 'L/16': 207,
                    'H/14': 431}


def abstract_params(model, images=jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)):
  """The parameters' shapes and dtypes for these images, without initialising anything."""
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)['params']


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('variant', list(models.VARIANTS))
def test_parameter_counts_match_paper(variant):
  params = abstract_params(models.create_model(variant, num_classes=1000))
  total = count(params)
  if variant in EXACT_COUNTS:
    assert total == EXACT_COUNTS[variant]
  without_head = total - count(params['head'])
  assert round(without_head / 1e6) == TABLE_1_MILLIONS[variant]


def test_parameter_names_match_official_checkpoints():
  params = abstract_params(models.create_model('Mixer-B/16', num_classes=1000))
  assert set(params) == {'stem', 'pre_head_layer_norm', 'head'} | {
      f'MixerBlock_{i}' for i in range(12)}
  block = params['MixerBlock_0']
  assert set(block) == {'LayerNorm_0', 'token_mixing', 'LayerNorm_1', 'channel_mixing'}
  assert block['token_mixing']['Dense_0']['kernel'].shape == (196, 384)
  assert block['token_mixing']['Dense_1']['kernel'].shape == (384, 196)
  assert block['channel_mixing']['Dense_0']['kernel'].shape == (768, 3072)
  assert params['stem']['kernel'].shape == (16, 16, 3, 768)
  assert set(block['LayerNorm_0']) == {'scale', 'bias'}


def test_create_model_names():
  assert models.create_model('Mixer-S/32') == models.create_model('S/32')
  assert models.create_model('S/32', num_blocks=2).num_blocks == 2
  assert models.create_model('S/32', patch_size=None).patch_size == 32  # a recipe's unset size
  with pytest.raises(ValueError, match='Unknown Mixer variant .*B/16'):
    models.create_model('B/8')


def test_resolution_not_multiple_of_patch_size_is_a_clear_error():
  model = models.create_model('B/16', num_classes=10)
  with pytest.raises(ValueError, match=r'100x100.*patch size 16'):
    model.init(jax.random.key(0), jnp.zeros((1, 100, 100, 3)))


# --- An independent float64 NumPy implementation of Appendix E. ---

def np_gelu(x):  # tanh approximation, as flax.linen.gelu
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_mlp(x, p):
  h = np_gelu(x @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])
  return h @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def np_mixer(params, images, patch):
  n, height, width, channels = images.shape
  gh, gw = height // patch, width // patch
  patches = images.reshape(n, gh, patch, gw, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(n, gh * gw, patch * patch * channels)
  kernel = params['stem']['kernel'].reshape(-1, params['stem']['kernel'].shape[-1])
  x = patches @ kernel + params['stem']['bias']
  i = 0
  while f'MixerBlock_{i}' in params:
    p = params[f'MixerBlock_{i}']
    y = np_layer_norm(x, p['LayerNorm_0']).transpose(0, 2, 1)
    x = x + np_mlp(y, p['token_mixing']).transpose(0, 2, 1)
    x = x + np_mlp(np_layer_norm(x, p['LayerNorm_1']), p['channel_mixing'])
    i += 1
  x = np_layer_norm(x, params['pre_head_layer_norm']).mean(1)
  return x @ params['head']['kernel'] + params['head']['bias']


def random_params(model, images, seed=1):
  """Parameters with every leaf random (the zero-initialised head and biases included)."""
  # Drawn by NumPy on the shapes alone: initialising and drawing with JAX compiles each
  # initialiser for each shape, op by op (seconds a test on CPU).
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype),
                      abstract_params(model, images))


def test_forward_equals_float64_numpy_reference():
  # 12x8 images, patch 2: S=24 tokens, C=16 channels, D_S=10, D_C=20, 3 blocks.
  model = models.MlpMixer(num_classes=7, num_blocks=3, patch_size=2, hidden_dim=16,
                          tokens_mlp_dim=10, channels_mlp_dim=20)
  images = jax.random.uniform(jax.random.key(2), (4, 12, 8, 3), minval=-1, maxval=1)
  params = random_params(model, images)
  with jax.default_matmul_precision('highest'):  # GPUs would otherwise use TF32
    logits = np.asarray(model.apply({'params': params}, images, train=False))
  expected = np_mixer(jax.tree.map(lambda x: np.asarray(x, np.float64), params),
                      np.asarray(images, np.float64), patch=2)
  assert logits.shape == (4, 7)
  rel_err = np.abs(logits - expected).max() / np.abs(expected).max()
  assert rel_err < 1e-5


def small_model(**kw):
  return models.MlpMixer(num_classes=5, num_blocks=2, patch_size=4, hidden_dim=32,
                         tokens_mlp_dim=16, channels_mlp_dim=64, **kw)


def test_fresh_model_has_zero_logits_and_features_without_head():
  images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
  model = small_model()
  variables = model.init(jax.random.key(1), images)
  logits = model.apply(variables, images)
  assert logits.shape == (3, 5) and not np.any(np.asarray(logits))
  features = model.clone(num_classes=None).apply(
      {'params': {k: v for k, v in variables['params'].items() if k != 'head'}}, images)
  assert features.shape == (3, 32) and np.any(np.asarray(features))


def test_stochastic_depth_acts_only_in_training():
  images = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1, maxval=1)
  model = small_model(stoch_depth=0.5)
  params = random_params(model, images)
  apply = lambda train, seed: model.apply({'params': params}, images, train=train,
                                          rngs={'dropout': jax.random.key(seed)})
  eval_out = apply(False, 0)
  np.testing.assert_array_equal(eval_out, apply(False, 1))
  train_a, train_b = apply(True, 0), apply(True, 1)
  assert not np.allclose(train_a, eval_out) and not np.allclose(train_a, train_b)
  # Rate 0 at the first block: with one block nothing can be dropped.
  one_block = model.clone(num_blocks=1)
  p1 = random_params(one_block, images)
  np.testing.assert_allclose(
      one_block.apply({'params': p1}, images, train=True, rngs={'dropout': jax.random.key(3)}),
      one_block.apply({'params': p1}, images, train=False), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters():
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  params = random_params(small_model(), images)
  model16 = small_model(dtype=jnp.bfloat16)
  params16 = model16.init(jax.random.key(0), images)['params']
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
  out16 = model16.apply({'params': params}, images)
  out32 = small_model().apply({'params': params}, images)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, rtol=0.1, atol=0.1 * float(jnp.abs(out32).max()))


def _plain_and_fast(name, **fields):
  kw = dict(num_classes=10, num_blocks=3, patch_size=8, hidden_dim=32, tokens_mlp_dim=64,
            channels_mlp_dim=48, stoch_depth=0.3, **fields)
  plain = models.MlpMixer(**kw)
  return plain, formulations.for_platform(plain, formulation=formulations.NAMED[name])


FAST = [name for name in formulations.NAMED if name != 'plain']


@pytest.mark.parametrize('name', FAST)
@pytest.mark.parametrize('train', [False, True])
def test_every_formulation_equals_the_plain_one(name, train):
  plain, fast = _plain_and_fast(name)
  images = jax.random.normal(jax.random.key(2), (4, 32, 48, 3))  # 4x6 tokens, not square
  params = random_params(plain, images)
  # Same parameter tree, shapes and initialisation: checkpoints are interchangeable.
  assert jax.tree.all(jax.tree.map(jnp.array_equal, plain.init(jax.random.key(0), images),
                                   fast.init(jax.random.key(0), images)))
  # In training, the same stochastic-depth draws too.
  run = lambda m, p: m.apply({'params': p}, images, train=train, rngs={'dropout': jax.random.key(3)})
  want, got = run(plain, params), run(fast, params)
  assert float(jnp.max(jnp.abs(want))) > 0.5
  np.testing.assert_allclose(got, want, atol=2e-6 * float(jnp.max(jnp.abs(want))))

  grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(run(m, p) ** 2)))(params)
  want, got = grad(plain), grad(fast)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    w = functools.reduce(lambda t, k: t[k.key], path, want)
    np.testing.assert_allclose(g, w, atol=2e-6 * scale, err_msg=jax.tree_util.keystr(path))


def test_each_platform_gets_its_measured_formulation_and_others_the_plain_one():
  plain = small_model()
  assert formulations.for_platform(plain, 'tpu') is plain  # not measured there
  for platform, formulation in formulations.MEASURED.items():
    fast = formulations.for_platform(plain, platform)
    assert fast.formulation == formulation and fast.num_blocks == plain.num_blocks


def test_rematerialised_model_gives_the_same_gradients():
  # The CPU formulation: its blocks hold the custom-gradient matmuls that remat recomputes.
  _, model = _plain_and_fast('cpu')
  _, remat = _plain_and_fast('cpu', remat=True)
  images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  params = random_params(model, images)
  grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply(
      {'params': p}, images, train=True, rngs={'dropout': jax.random.key(3)}) ** 2)))(params)
  want, got = grad(model), grad(remat)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', list(formulations.NAMED))
def test_model_applies_to_a_batch_sharded_global_array(name):
  """Outside shard_map, on a batch-sharded array (explicit sharding), it computes the same."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  model = formulations.for_platform(small_model(), formulation=formulations.NAMED[name])
  images = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  params = random_params(model, images)
  mesh = jax.make_mesh((jax.device_count(),), ('batch',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  sharded = jax.device_put(images, NamedSharding(mesh, P('batch')))
  apply = jax.jit(lambda x: model.apply({'params': params}, x))
  got = apply(sharded)
  assert jax.typeof(got).sharding.spec[0] == 'batch'
  np.testing.assert_allclose(got, apply(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('n, k, m', [(40, 6, 24), (40, 24, 6)])  # a narrower or wider than g
def test_matmul_gradients_equal_float64_numpy(n, k, m):
  """`matmul` transposes its operands itself on CPU for the gradient; the values are a @ b's."""
  rng = np.random.default_rng(0)
  a, b, w = rng.normal(size=(n, k)), rng.normal(size=(k, m)), rng.normal(size=(n, m))
  loss = lambda a, b: jnp.sum(formulations.matmul(a, b) * w.astype(np.float32))
  value = jax.jit(formulations.matmul)(a.astype(np.float32), b.astype(np.float32))
  da, db = jax.jit(jax.grad(loss, argnums=(0, 1)))(a.astype(np.float32), b.astype(np.float32))
  np.testing.assert_allclose(value, a @ b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(da, w @ b.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(db, a.T @ w, rtol=1e-5, atol=1e-5)
