"""Faster formulations of `models.MlpMixer`: the same function and parameters, per platform.

Each choice below is applied only on the platforms where it was measured to help (`MEASURED`);
anywhere else the plain Appendix-E formulation of `models.py` runs. The tests check that every
combination computes the plain formulation's outputs and gradients, so checkpoints, converters
and recipes never see the difference. BENCHMARKS.md has the measurements.
"""
import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from mixer_jax import fused_token_mlp, models


@dataclasses.dataclass(frozen=True)
class Formulation:
  """Independent choices; all False is the plain formulation."""
  # Activations token-major, x_SBC: token mixing is one matmul over the leading axis, without
  # the plain formulation's two transposes per block, and every Dense is a 2-D matmul.
  # CPU: 1.11x the plain S/32 training step (2026-11-25); XLA's CPU backward of a 3-D Dense was
  # about 1.5x slower than the 2-D one.
  token_major: bool = False
  # The stem as one matmul over flattened patches with nn.Conv's kernel. CPU: XLA's convolution
  # took 90 ms of an S/32 training step (batch 32) where the matmul takes 59; 1.12x -> 1.16x the
  # plain formulation (2026-11-26).
  matmul_stem: bool = False
  # Weight gradients (and the token-mixing forward) with their transposed operand copied, so
  # that XLA's CPU backend runs them on YNNPACK instead of Eigen (which took 0.78 of the matmul
  # rate): 1.6-3.2% of an S/32 or B/16 training step (2026-11-27). Needs token_major.
  cpu_matmuls: bool = False
  # The token-mixing MLP as Pallas kernels (mixer_jax/fused_token_mlp.py): its hidden units never
  # reach device memory. Needs token_major; GPU (Triton), tanh GELU. Compiled for sm_90 without
  # spills (benchmarks/kernel_report.py); not yet timed on a GPU, so in no platform's choice.
  fused_token_mlp: bool = False


PLAIN = Formulation()
# Choices by JAX platform, as measured there. A platform without an entry (TPU) runs PLAIN.
MEASURED = {
    'cpu': Formulation(token_major=True, matmul_stem=True, cpu_matmuls=True),
    # H200, bf16, 224 px, one run (2026-11-27, benchmarks/results/h200_2026-11-27.jsonl): the
    # token-major layout with the matmul stem, measured together, against the plain formulation:
    # B/16 training 1.13x (5,413 against 4,782 img/s at batch 512) and 1.15x at 256, B/16
    # inference 1.15x, S/32 inference 1.74x (126k against 73k img/s at 256).
    'gpu': Formulation(token_major=True, matmul_stem=True),
}
# Named formulations the benchmark can time side by side on any platform.
NAMED = {
    'plain': PLAIN,
    'token_major': Formulation(token_major=True, matmul_stem=True),
    'matmul_stem': Formulation(matmul_stem=True),
    'cpu': MEASURED['cpu'],
    'fused': Formulation(token_major=True, matmul_stem=True, fused_token_mlp=True),
}


def for_platform(model: models.MlpMixer, platform: Optional[str] = None,
                 formulation: Optional[Formulation] = None) -> models.MlpMixer:
  """`model` in `formulation`, by default the one measured fastest on `platform` (by default
  JAX's default backend): plain `models.MlpMixer` where no choice applies."""
  if formulation is None:
    formulation = MEASURED.get(platform or jax.default_backend(), PLAIN)
  if formulation == PLAIN:
    return model
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(models.MlpMixer)
            if f.name not in ('parent', 'name')}
  return FastMlpMixer(**fields, formulation=formulation)


# --- CPU matmuls: transposes that XLA may not fold into the dot. ---

def _transposed(x):
  """x.T as an array of its own, for the left operand of a dot."""
  return lax.optimization_barrier(x.T)


@jax.custom_vjp
def matmul(a, b):
  """a @ b of 2-D arrays, with the gradient of b in the form XLA's CPU runs fastest."""
  return a @ b


def _matmul_fwd(a, b):
  return a @ b, (a, b)


def _matmul_bwd(residuals, g):
  a, b = residuals
  # a.T @ g, copying the smaller of a and g transposed.
  if a.shape[1] <= g.shape[1]:
    return g @ b.T, _transposed(a) @ g
  return g @ b.T, lax.optimization_barrier(_transposed(g) @ a).T


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def cpu_dot_general(lhs, rhs, dimension_numbers, precision=None):
  """lax.dot_general as nn.Dense calls it, through `matmul` where lhs is not sharded."""
  if (dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or precision is not None
      or any(jax.typeof(lhs).sharding.spec)):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision)
  y = matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
  return y.reshape(*lhs.shape[:-1], rhs.shape[-1])


# --- Token-major modules, with the plain modules' parameters. ---

def _patches(images_BHWC, p: int, token_major: bool):
  """Non-overlapping P x P patches, each flattened in the conv kernel's (p, q, c) order:
  'b (h p) (w q) c -> (h w) b (p q c)' token-major, else '-> b (h w) (p q c)'.

  A global array sharded over its batch axis (explicit sharding) keeps that sharding, which a
  reshape must be told.
  """
  b, h, w, c = images_BHWC.shape
  sharding = jax.typeof(images_BHWC).sharding
  batch_axis = sharding.spec[0] if sharding.spec else None

  def keep_batch_axis(*spec):
    return NamedSharding(sharding.mesh, P(*spec)) if batch_axis else None

  x = jnp.reshape(images_BHWC, (b, h // p, p, w // p, p, c),
                  out_sharding=keep_batch_axis(batch_axis))
  if token_major:
    x = jnp.transpose(x, (1, 3, 0, 2, 4, 5))
    return jnp.reshape(x, (-1, b, p * p * c), out_sharding=keep_batch_axis(None, batch_axis))
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return jnp.reshape(x, (b, -1, p * p * c), out_sharding=keep_batch_axis(batch_axis))


class MatmulStem(nn.Module):
  """nn.Conv with stride = kernel = P, as one matmul: the same parameters and function."""
  patch_size: int
  hidden_dim: int
  token_major: bool
  cpu_matmuls: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC):
    p = self.patch_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (p, p, images_BHWC.shape[-1], self.hidden_dim))
    bias = self.param('bias', nn.initializers.zeros, (self.hidden_dim,))
    patches, kernel, bias = promote_dtype(_patches(images_BHWC, p, self.token_major), kernel,
                                          bias, dtype=self.dtype)
    kernel = kernel.reshape(-1, self.hidden_dim)
    if self.cpu_matmuls:
      return cpu_dot_general(patches, kernel, (((2,), (0,)), ((), ()))) + bias
    return patches @ kernel + bias


def _dense_params(module: nn.Module, in_features: int):
  """nn.Dense's kernel and bias, declared in `module`, in its compute dtype."""
  kernel = module.param('kernel', nn.initializers.lecun_normal(), (in_features, module.features))
  bias = module.param('bias', nn.initializers.zeros, (module.features,))
  return promote_dtype(kernel, bias, dtype=module.dtype)


class TokenDense(nn.Module):
  """nn.Dense over the first axis of a 2-D x: the same parameters, no transposes."""
  features: int
  cpu_matmuls: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel, bias = _dense_params(self, x.shape[0])
    x, = promote_dtype(x, dtype=self.dtype)
    if x.ndim != 2:  # a batch-sharded global array: see TokenMajorMlpBlock
      return jnp.tensordot(kernel.T, x, axes=1) + bias.reshape(-1, *[1] * (x.ndim - 1))
    if self.cpu_matmuls:
      return matmul(_transposed(kernel), x) + bias[:, None]
    return kernel.T @ x + bias[:, None]


class DenseParams(nn.Module):
  """nn.Dense's parameters alone, in the compute dtype, for a kernel that applies them."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    return _dense_params(self, in_features)


class TokenMajorMlpBlock(nn.Module):
  """models.MlpBlock over the last axis, or the first with `over_first_axis`, as 2-D matmuls."""
  mlp_dim: int
  over_first_axis: bool
  cpu_matmuls: bool
  approximate_gelu: bool = True
  dtype: Any = jnp.float32
  fused: bool = False  # over the first axis: fused_token_mlp's kernels, where they apply

  @nn.compact
  def __call__(self, x):
    # A global array sharded over its batch axis (explicit sharding, outside shard_map) stays
    # 3-D: no sharding can describe the batch axis merged into another.
    n = x.shape[0] if self.over_first_axis else x.shape[-1]
    y = x
    if not any(jax.typeof(x).sharding.spec):
      y = x.reshape(n, -1) if self.over_first_axis else x.reshape(-1, n)
      # Off the GPU the kernels run in Pallas's interpreter (the tests), which JAX 0.10-0.12
      # cannot run inside shard_map: there XLA's token mixing runs instead.
      on_gpu = jax.default_backend() == 'gpu'
      if (self.fused and (on_gpu or not jax.typeof(y).manual_axis_type.varying)
          and fused_token_mlp.supports(n, y.shape[1], self.mlp_dim, self.approximate_gelu)):
        w1, b1 = DenseParams(self.mlp_dim, self.dtype, name='Dense_0')(n)
        w2, b2 = DenseParams(n, self.dtype, name='Dense_1')(self.mlp_dim)
        y, = promote_dtype(y, dtype=self.dtype)
        return fused_token_mlp.token_mlp(y, w1, b1, w2, b2, interpret=not on_gpu).reshape(x.shape)
    if self.over_first_axis:
      dense = functools.partial(TokenDense, cpu_matmuls=self.cpu_matmuls, dtype=self.dtype)
    else:
      dense = functools.partial(nn.Dense, dtype=self.dtype,
                                **({'dot_general': cpu_dot_general} if self.cpu_matmuls else {}))
    y = dense(self.mlp_dim, name='Dense_0')(y)
    y = nn.gelu(y, approximate=self.approximate_gelu)
    return dense(n, name='Dense_1')(y).reshape(x.shape)


class TokenMajorMixerBlock(models.MixerBlock):
  """models.MixerBlock on token-major activations x_SBC."""
  cpu_matmuls: bool = False
  fused_token_mlp: bool = False

  @nn.compact
  def __call__(self, x_SBC, train: bool = False):
    drop_path = nn.Dropout(self.drop_rate, broadcast_dims=(0, 2), deterministic=not train)
    mlp = functools.partial(TokenMajorMlpBlock, cpu_matmuls=self.cpu_matmuls,
                            approximate_gelu=self.approximate_gelu, dtype=self.dtype)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x_SBC)
    token_mixing = mlp(self.tokens_mlp_dim, True, fused=self.fused_token_mlp, name='token_mixing')
    x_SBC = x_SBC + drop_path(token_mixing(y))
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(x_SBC)
    return x_SBC + drop_path(mlp(self.channels_mlp_dim, False, name='channel_mixing')(y))


class CpuTokenMajorMixerBlock(TokenMajorMixerBlock):
  cpu_matmuls: bool = True


class FusedTokenMajorMixerBlock(TokenMajorMixerBlock):
  fused_token_mlp: bool = True


class FastMlpMixer(models.MlpMixer):
  """models.MlpMixer computed in `formulation`."""
  formulation: Formulation = PLAIN

  @property
  def token_axis(self):
    return 0 if self.formulation.token_major else 1

  def embed(self, images_BHWC):
    f = self.formulation
    if f.matmul_stem:
      return MatmulStem(self.patch_size, self.hidden_dim, f.token_major, f.cpu_matmuls,
                        self.dtype, name='stem')(images_BHWC)
    x_BSC = super().embed(images_BHWC)
    return jnp.swapaxes(x_BSC, 0, 1) if f.token_major else x_BSC

  def block(self):
    f = self.formulation
    if not f.token_major:
      return models.MixerBlock
    if f.cpu_matmuls:
      return CpuTokenMajorMixerBlock
    return FusedTokenMajorMixerBlock if f.fused_token_mlp else TokenMajorMixerBlock
