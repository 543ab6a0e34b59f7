"""The token-mixing MLP, Dense -> GELU -> Dense over tokens, as Pallas (Triton) kernels.

Token-major, y_SN = W2^T gelu(W1^T x_SN + b1) + b2 with N = batch x channels. The hidden
activations (D_S x N: 5x the input at 49 tokens, 2x at 196) are what makes this MLP
memory-bound on a GPU: XLA writes them, reads them back for the GELU and again for the second
matmul, and keeps them for the backward pass. Here the forward pass computes each tile of N
start to end in one kernel, the hidden units in slices of BLOCK_D that never leave the chip, and
keeps only x; the backward pass recomputes the hidden units in a second kernel, which writes
the two D_S x N arrays the weight gradients need (their matmuls over N are XLA's).

Triton needs power-of-two tiles: the tokens are padded to the next power of two inside the
kernels (49 -> 64, 196 -> 256) by masked loads and stores and zero rows of the weights, so that
x and y keep their shapes and no padded copy of them is written. GPU only (Triton); elsewhere
`interpret=True` runs the same kernels for the tests.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

BLOCK_D = 64  # hidden units per step of a kernel's loop: wgmma's smallest M
MAX_TOKENS = 256  # beyond, the weight slices no longer fit in shared memory beside a tile
DEBUG = False  # print each kernel's Triton IR (benchmarks/kernel_report.py reads it)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """One kernel's launch: programs over N in tiles of tile_n columns."""
  tile_n: int
  num_warps: int
  num_stages: int


@dataclasses.dataclass(frozen=True)
class Config:
  padded: int  # tokens, padded to a power of two
  block_d: int
  kernels: dict  # KernelConfig by kernel name


def kernel_config(tokens: int, n: int, mlp_dim: int) -> Config:
  """Tiles chosen by benchmarks/kernel_report.py for sm_90 (2026-11-27): no spilled registers,
  wgmma for every matmul, shared memory under the H100's 227 KB (the backward kernel at 256
  tokens needs one pipeline stage for that). Not yet timed on a GPU."""
  padded = max(16, 1 << (tokens - 1).bit_length())

  def tile(elements, most):  # padded x tile_n <= elements, tile_n dividing n
    t = min(most, elements // padded)
    while t > 1 and n % t:
      t //= 2
    return t

  return Config(padded, min(BLOCK_D, mlp_dim), {
      'forward_kernel': KernelConfig(tile(16384, 128), num_warps=8, num_stages=2),
      'backward_kernel': KernelConfig(tile(8192, 64), num_warps=8,
                                      num_stages=2 if padded <= 128 else 1)})


def supports(tokens: int, n: int, mlp_dim: int, approximate_gelu: bool) -> bool:
  """Whether the kernels take these sizes: tanh GELU (Triton has no erf), at most MAX_TOKENS,
  Triton's tiles (powers of two, at least 16 for its matrix units), hidden units in whole
  slices. Elsewhere the formulation runs XLA's token mixing."""
  c = kernel_config(tokens, n, mlp_dim)
  power_of_two = lambda k: k >= 16 and k & (k - 1) == 0
  return (approximate_gelu and tokens <= MAX_TOKENS and mlp_dim % c.block_d == 0
          and power_of_two(c.block_d) and all(power_of_two(k.tile_n) for k in c.kernels.values()))


def token_mlp(x_SN, w1_SD, b1_D, w2_DS, b2_S, interpret: bool = False):
  """W2^T gelu(W1^T x + b1) + b2 over the first axis of x (the tokens), tanh GELU; every operand
  in the compute dtype, which the result keeps."""
  return _token_mlp(x_SN, w1_SD, b1_D, w2_DS, b2_S, interpret)


def operand_shapes(tokens: int, n: int, mlp_dim: int, dtype=jnp.bfloat16):
  """Abstract x, W1, b1, W2, b2 of `token_mlp` at these sizes: what to lower it for."""
  return [jax.ShapeDtypeStruct(s, dtype)
          for s in [(tokens, n), (tokens, mlp_dim), (mlp_dim,), (mlp_dim, tokens), (tokens,)]]


def export_for_hopper(fn, *shapes, axis: str = 'batch'):
  """fn lowered for CUDA as on an H100 or H200, on any machine (ahead of time, without a GPU):
  the test that Triton's rules hold, and the input of benchmarks/kernel_report.py. fn may
  shard_map over a one-device mesh axis `axis` (the context's mesh)."""
  device = jax.sharding.AbstractDevice('NVIDIA H100', None, 'gpu')
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh(
      (1,), (axis,), axis_types=(jax.sharding.AxisType.Explicit,), abstract_device=device)):
    return jax.export.export(jax.jit(fn), platforms=['cuda'], disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')])(*shapes)


def _gelu_and_slope(z):
  """tanh GELU and its derivative, in float32."""
  u = _SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)
  t = jnp.tanh(u)
  slope = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
  return 0.5 * z * (1 + t), slope


def _dot(a, b):
  # Float32 operands as float32 (the tests), not TF32; bfloat16 on the matrix units.
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jnp.dot(a, b, precision=precision, preferred_element_type=jnp.float32)


def _rows(tokens, padded):
  """The real tokens of a block of padded ones."""
  return jnp.arange(padded)[:, None] < tokens


def _forward_kernel(x_ref, w1t_ref, b1_ref, w2t_ref, b2_ref, y_ref, *, tokens, block_d):
  padded, mlp_dim = w2t_ref.shape
  rows = _rows(tokens, padded)
  x = plgpu.load(x_ref, mask=rows, other=0)

  def hidden_slice(k, acc):
    d = pl.ds(pl.multiple_of(k * block_d, block_d), block_d)
    z = _dot(w1t_ref[d, :], x) + b1_ref[d].astype(jnp.float32)[:, None]
    a, _ = _gelu_and_slope(z)
    return acc + _dot(w2t_ref[:, d], a.astype(x.dtype))

  acc = lax.fori_loop(0, mlp_dim // block_d, hidden_slice, jnp.zeros(x.shape, jnp.float32))
  y = acc + b2_ref[...].astype(jnp.float32)[:, None]
  plgpu.store(y_ref, y.astype(y_ref.dtype), mask=rows)


def _backward_kernel(x_ref, dy_ref, w1t_ref, w1_ref, b1_ref, w2_ref, dx_ref, dz_ref, a_ref, *,
                     tokens, block_d):
  padded, mlp_dim = w1_ref.shape
  rows = _rows(tokens, padded)
  x = plgpu.load(x_ref, mask=rows, other=0)
  dy = plgpu.load(dy_ref, mask=rows, other=0)

  def hidden_slice(k, dx):
    d = pl.ds(pl.multiple_of(k * block_d, block_d), block_d)
    z = _dot(w1t_ref[d, :], x) + b1_ref[d].astype(jnp.float32)[:, None]
    a, slope = _gelu_and_slope(z)
    dz = (_dot(w2_ref[d, :], dy) * slope).astype(x.dtype)
    dz_ref[d, :] = dz
    a_ref[d, :] = a.astype(x.dtype)
    return dx + _dot(w1_ref[:, d], dz)

  dx = lax.fori_loop(0, mlp_dim // block_d, hidden_slice, jnp.zeros(x.shape, jnp.float32))
  plgpu.store(dx_ref, dx.astype(dx_ref.dtype), mask=rows)


def _call(kernel, tokens, n, mlp_dim, interpret, operands, outputs):
  """The kernel over tiles of N. Operands and outputs come as (array or shape, kind): 'tokens'
  (tokens x N, in blocks of padded tokens x tile_n, the padded rows masked), 'hidden' (D_S x N,
  in blocks of D_S x tile_n) or 'whole' (a weight)."""
  c = kernel_config(tokens, n, mlp_dim)
  name = kernel.__name__.strip('_')
  k = c.kernels[name]

  def spec(array, kind):
    if kind == 'whole':
      return pl.BlockSpec(array.shape, lambda i: (0,) * len(array.shape))
    return pl.BlockSpec((c.padded if kind == 'tokens' else mlp_dim, k.tile_n), lambda i: (0, i))

  # Inside shard_map the outputs vary over the mesh axes as the activations do.
  varying = jax.typeof(operands[0][0]).manual_axis_type
  return pl.pallas_call(
      functools.partial(kernel, tokens=tokens, block_d=c.block_d),
      out_shape=[jax.ShapeDtypeStruct(a.shape, a.dtype, manual_axis_type=varying)
                 for a, _ in outputs],
      grid=(n // k.tile_n,), in_specs=[spec(*o) for o in operands],
      out_specs=[spec(*o) for o in outputs], interpret=interpret, name=name, debug=DEBUG,
      compiler_params=plgpu.CompilerParams(num_warps=k.num_warps, num_stages=k.num_stages),
  )(*[a for a, _ in operands])


def _pad_tokens(w, axis):
  """Zero weights for the padded tokens: they contribute nothing and receive nothing."""
  widths = [(0, 0)] * w.ndim
  tokens = w.shape[axis]
  widths[axis] = (0, kernel_config(tokens, 1, 1).padded - tokens)
  return jnp.pad(w, widths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _token_mlp(x_SN, w1_SD, b1_D, w2_DS, b2_S, interpret):
  (tokens, n), mlp_dim = x_SN.shape, w1_SD.shape[1]
  y, = _call(_forward_kernel, tokens, n, mlp_dim, interpret,
             [(x_SN, 'tokens'), (_pad_tokens(w1_SD, 0).T, 'whole'), (b1_D, 'whole'),
              (_pad_tokens(w2_DS, 1).T, 'whole'), (_pad_tokens(b2_S, 0), 'whole')],
             [(jax.ShapeDtypeStruct(x_SN.shape, x_SN.dtype), 'tokens')])
  return y


def _token_mlp_fwd(x_SN, w1_SD, b1_D, w2_DS, b2_S, interpret):
  return _token_mlp(x_SN, w1_SD, b1_D, w2_DS, b2_S, interpret), (x_SN, w1_SD, b1_D, w2_DS)


def _token_mlp_bwd(interpret, residuals, dy_SN):
  x_SN, w1_SD, b1_D, w2_DS = residuals
  (tokens, n), mlp_dim = x_SN.shape, w1_SD.shape[1]
  w1 = _pad_tokens(w1_SD, 0)
  hidden = jax.ShapeDtypeStruct((mlp_dim, n), x_SN.dtype)
  dx, dz_DN, a_DN = _call(
      _backward_kernel, tokens, n, mlp_dim, interpret,
      [(x_SN, 'tokens'), (dy_SN, 'tokens'), (w1.T, 'whole'), (w1, 'whole'), (b1_D, 'whole'),
       (_pad_tokens(w2_DS, 1), 'whole')],
      [(jax.ShapeDtypeStruct(x_SN.shape, x_SN.dtype), 'tokens'), (hidden, 'hidden'),
       (hidden, 'hidden')])
  over_n = (((1,), (1,)), ((), ()))
  dw1 = lax.dot_general(x_SN, dz_DN, over_n, preferred_element_type=jnp.float32)
  dw2 = lax.dot_general(a_DN, dy_SN, over_n, preferred_element_type=jnp.float32)
  db1 = jnp.sum(dz_DN, axis=1, dtype=jnp.float32)
  db2 = jnp.sum(dy_SN, axis=1, dtype=jnp.float32)
  return (dx, dw1.astype(w1_SD.dtype), db1.astype(b1_D.dtype), dw2.astype(w2_DS.dtype),
          db2.astype(x_SN.dtype))


_token_mlp.defvjp(_token_mlp_fwd, _token_mlp_bwd)
