"""The fused token-mixing kernels: float64 NumPy by hand, the model's formulation, GPU lowering.

On a GPU the kernels themselves run (the accelerator check runs this file there); elsewhere in
Pallas's interpreter, with their lowering for CUDA (Triton) checked ahead of time.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mixer_jax import formulations, fused_token_mlp, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = np.sqrt(2 / np.pi)
INTERPRET = jax.default_backend() != 'gpu'


def numpy_token_mlp(x, w1, b1, w2, b2, dy):
  """y = W2^T gelu(W1^T x + b1) + b2 and its gradients, by hand in float64."""
  z = w1.T @ x + b1[:, None]
  t = np.tanh(C * (z + 0.044715 * z ** 3))
  a = 0.5 * z * (1 + t)
  y = w2.T @ a + b2[:, None]
  da = w2 @ dy
  dz = da * (0.5 * (1 + t) + 0.5 * z * (1 - t ** 2) * C * (1 + 3 * 0.044715 * z ** 2))
  return y, (w1 @ dz, x @ dz.T, dz.sum(1), a @ dy.T, dy.sum(1))


@pytest.mark.parametrize('tokens, n, mlp_dim', [(9, 32, 32), (49, 96, 64), (20, 256, 128)])
def test_kernels_equal_float64_numpy(tokens, n, mlp_dim):
  rng = np.random.default_rng(tokens)
  x, dy = rng.standard_normal((tokens, n)), rng.standard_normal((tokens, n))
  w1 = rng.standard_normal((tokens, mlp_dim)) / np.sqrt(tokens)
  w2 = rng.standard_normal((mlp_dim, tokens)) / np.sqrt(mlp_dim)
  b1, b2 = rng.standard_normal(mlp_dim), rng.standard_normal(tokens)
  assert fused_token_mlp.supports(tokens, n, mlp_dim, approximate_gelu=True)
  want, want_grads = numpy_token_mlp(x, w1, b1, w2, b2, dy)
  args = [jnp.asarray(a, jnp.float32) for a in (x, w1, b1, w2, b2)]
  y, vjp = jax.vjp(lambda *a: fused_token_mlp.token_mlp(*a, interpret=INTERPRET), *args)
  assert y.shape == (tokens, n) and y.dtype == jnp.float32
  rel = lambda got, want: np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
  assert rel(y, want) < 1e-6
  for name, got, w in zip(['x', 'w1', 'b1', 'w2', 'b2'], vjp(jnp.asarray(dy, jnp.float32)),
                          want_grads):
    assert got.shape == w.shape and rel(got, w) < 1e-6, name


def test_kernels_keep_bfloat16_and_its_accuracy():
  rng = np.random.default_rng(1)
  shapes = [(49, 128), (49, 64), (64,), (64, 49), (49,)]
  args = [jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), jnp.bfloat16) for s in shapes]
  y = fused_token_mlp.token_mlp(*args, interpret=INTERPRET)
  want, _ = numpy_token_mlp(*[np.asarray(a, np.float64) for a in args], np.zeros((49, 128)))
  assert y.dtype == jnp.bfloat16
  assert np.linalg.norm(np.asarray(y, np.float64) - want) / np.linalg.norm(want) < 1e-2


def test_sizes_the_kernels_do_not_take_fall_back_to_xla():
  assert not fused_token_mlp.supports(196, 768 * 8, 384, approximate_gelu=False)  # no erf
  assert not fused_token_mlp.supports(49, 8, 256, approximate_gelu=True)  # N under a tile
  assert not fused_token_mlp.supports(49, 512, 72, approximate_gelu=True)  # D_S in parts
  assert not fused_token_mlp.supports(49, 512, 24, approximate_gelu=True)  # a slice of 24
  assert not fused_token_mlp.supports(576, 768 * 8, 384, approximate_gelu=True)  # B/16 at 384 px
  # test_models' model for the formulations: there the kernels run.
  kw = dict(num_classes=10, num_blocks=2, patch_size=8, hidden_dim=32, tokens_mlp_dim=64,
            channels_mlp_dim=48)
  images = jax.random.normal(jax.random.key(0), (4, 32, 48, 3))
  for approximate in (True, False):
    model = formulations.for_platform(models.MlpMixer(**kw, approximate_gelu=approximate),
                                      formulation=formulations.NAMED['fused'])
    params = model.init(jax.random.key(1), images)
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, images))(params))
    # The kernels run where they apply (tanh GELU), and the formulation is still exact where
    # they do not (test_models checks the outputs and gradients against the plain model).
    assert ('pallas_call' in jaxpr) == approximate


@pytest.mark.parametrize('variant', ['S/32', 'B/16', 'H/14'])
def test_kernels_lower_for_cuda(variant):
  """Triton's rules (power-of-two tiles, matrix shapes) hold at the variants' real sizes, also
  inside shard_map as the trainer and the benchmark run them (activations varying over the
  batch axis; weights replicated for inference, made varying for their gradients)."""
  v = models.VARIANTS[variant]
  tokens, n, mlp_dim = (224 // v['patch_size']) ** 2, 256 * v['hidden_dim'], v['tokens_mlp_dim']
  assert fused_token_mlp.supports(tokens, n, mlp_dim, approximate_gelu=True)
  shapes = fused_token_mlp.operand_shapes(tokens, n, mlp_dim)
  loss = lambda *a: jnp.sum(fused_token_mlp.token_mlp(*a).astype(jnp.float32))
  grads = jax.value_and_grad(loss, argnums=range(5))

  def device_step(x, *w):
    w = [jax.lax.pcast(a, 'batch', to='varying') for a in w]
    return jax.lax.pmean(grads(x, *w)[1][1:], 'batch')

  specs = (P(None, 'batch'), *[P()] * 4)
  in_shard_map = lambda f, out: lambda x, *w: jax.shard_map(f, in_specs=specs, out_specs=out)(
      jax.reshard(x, P(None, 'batch')), *w)
  for fn in (grads, in_shard_map(fused_token_mlp.token_mlp, P(None, 'batch')),
             in_shard_map(device_step, P())):
    text = fused_token_mlp.export_for_hopper(fn, *shapes).mlir_module()
    calls = text.count('stablehlo.custom_call @__gpu$xla.gpu.triton')
    assert calls == (1 if fn is not grads else 2)  # backward (and forward for the value)


def test_kernel_report_finds_no_spills_and_hopper_matrix_instructions():
  pytest.importorskip('triton')
  run = subprocess.run([sys.executable, 'benchmarks/kernel_report.py', '--variant=S/32,B/16'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  rows = [line.split('|')[1:-1] for line in run.stdout.splitlines() if line.startswith('| S/32')
          or line.startswith('| B/16')]
  assert len(rows) == 4
  for row in rows:
    shared_kb, registers, spilled, wgmma = (float(c) for c in row[-4:])
    assert shared_kb <= 227 and registers <= 255 and spilled == 0 and wgmma > 0, row
