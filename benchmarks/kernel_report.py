"""What the fused token-mixing kernels cost on a Hopper GPU, compiled here, without one.

  python benchmarks/kernel_report.py                  # S/32, B/16 and H/14's token counts
  python benchmarks/kernel_report.py --variant=L/16 --batch_size=256

Lowers `mixer_jax/fused_token_mlp.py`'s forward and backward kernels for CUDA as the trainer
would (bfloat16, the variant's tokens, channels and D_S), compiles their Triton IR with the
`triton` package for sm_90a (H100 and H200), and prints per kernel what decides whether it can
run fast: the tiles, warps, shared memory, registers per thread and spilled bytes (from ptxas),
and the Hopper matrix instructions (wgmma) in the code. Spills or no wgmma mean a slow kernel;
fix them here before spending device time. Needs `triton` (it comes with PyTorch on GPU
machines): `pip install triton`. The Triton inside jaxlib, which compiles the kernels on the
GPU, may be another version, so the numbers are a close guide, not the device's own.
"""
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile

from absl import app, flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mixer_jax import errors, fused_token_mlp, models  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402

_VARIANT = flags.DEFINE_list('variant', ['S/32', 'B/16', 'H/14'],
                             f'Some of {", ".join(models.VARIANTS)}, or all.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Image height and width.', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Images per device.', lower_bound=1)
_ARCH = flags.DEFINE_string('arch', 'sm_90a', 'GPU architecture for ptxas (sm_90a: Hopper).')


def triton_modules(tokens: int, n: int, mlp_dim: int) -> dict[str, str]:
  """The Triton IR of the forward and backward kernels, as text without debug locations."""
  shapes = fused_token_mlp.operand_shapes(tokens, n, mlp_dim)
  grad = jax.grad(lambda *a: jnp.sum(fused_token_mlp.token_mlp(*a).astype(jnp.float32)),
                  argnums=range(5))
  printed = io.StringIO()
  fused_token_mlp.DEBUG = True  # pallas_call prints each kernel's Triton module
  try:
    with contextlib.redirect_stdout(printed):
      for fn in (fused_token_mlp.token_mlp, grad):
        # A new function each time: a cached lowering would print nothing.
        fused_token_mlp.export_for_hopper(lambda *a: fn(*a), *shapes)
  finally:
    fused_token_mlp.DEBUG = False
  modules = {}
  for name, text in re.findall(r'\nmodule @(\w+) \{(.*?)\n\}', printed.getvalue(), re.S):
    text = re.sub(r' \[unknown\]| "[^"\n]*"\(#loc\d+\)| loc\([^\n]*\)', '', text)
    modules[name] = 'module {' + text + '\n}\n'
  return modules


def compile_report(ttir: str, num_warps: int, num_stages: int, arch: str) -> dict:
  import triton  # noqa: PLC0415  (optional: only this tool needs it)
  from triton.backends.compiler import GPUTarget  # noqa: PLC0415
  capability = int(re.sub(r'\D', '', arch))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'kernel.ttir')
    with open(path, 'w') as f:
      f.write(ttir)
    kernel = triton.compile(path, target=GPUTarget('cuda', capability, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = os.path.join(tmp, 'kernel.ptx')
    with open(ptx, 'w') as f:
      f.write(kernel.asm['ptx'])
    ptxas = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')
    info = subprocess.run([ptxas, '-v', f'--gpu-name={arch}', ptx, '-o', os.devnull],
                          capture_output=True, text=True, check=True).stderr
  registers = re.search(r'Used (\d+) registers', info)
  spills = re.search(r'(\d+) bytes spill stores', info)
  return {'shared_kb': kernel.metadata.shared / 1024,
          'registers': int(registers[1]) if registers else None,
          'spill_bytes': int(spills[1]) if spills else None,
          'wgmma': len(re.findall(r'wgmma\.mma_async', kernel.asm['ptx']))}


@errors.reported
def main(argv):
  del argv
  variants = list(models.VARIANTS) if _VARIANT.value == ['all'] else _VARIANT.value
  unknown = [v for v in variants if v not in models.VARIANTS]
  if unknown:
    raise UserError(f'--variant: unknown {", ".join(unknown)}; choose from '
                    f'{", ".join(models.VARIANTS)}.')
  try:
    import triton  # noqa: F401, PLC0415
  except ImportError:
    raise UserError('This report compiles with the triton package, which is not installed: '
                    'pip install triton.') from None
  print('| variant | kernel | tokens (padded) | tile N | D_S slice | warps, stages | shared KB | '
        'registers | spilled bytes | wgmma |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for name in variants:
    v = models.VARIANTS[name]
    tokens = (_RESOLUTION.value // v['patch_size']) ** 2
    n = _BATCH.value * v['hidden_dim']
    config = fused_token_mlp.kernel_config(tokens, n, v['tokens_mlp_dim'])
    if not fused_token_mlp.supports(tokens, n, v['tokens_mlp_dim'], approximate_gelu=True):
      print(f'| {name} | - | {tokens} | the kernels do not take these sizes |')
      continue
    for kernel, ttir in triton_modules(tokens, n, v['tokens_mlp_dim']).items():
      k = config.kernels[kernel]
      r = compile_report(ttir, k.num_warps, k.num_stages, _ARCH.value)
      print(f"| {name} | {kernel} | {tokens} ({config.padded}) | {k.tile_n} | "
            f"{config.block_d} | {k.num_warps}, {k.num_stages} | {r['shared_kb']:.0f} | "
            f"{r['registers']} | {r['spill_bytes']} | {r['wgmma']} |", flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=errors.parse_flags)
