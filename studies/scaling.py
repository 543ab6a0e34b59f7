"""Cost of more tokens (paper section 2): Mixer linear at a fixed token-MLP width, ViT quadratic.

  python studies/scaling.py --depth=1                                   # this CPU, about 3.5 min
  python studies/scaling.py --dtype=bfloat16 --batch_sizes=8,32,128     # B/16 on an accelerator

Times inference (images/s, each model at its best batch size in --batch_sizes, per device, one
device) and counts forward FLOPs (analytic: matmuls, 2 per multiply-add) of three models of the
same width, depth and patch size (--variant, with --width and --depth to shrink it) at each of
--resolutions: a Mixer with the token-MLP width D_S fixed; a Mixer with D_S grown in proportion
to the token count, as the paper's Appendix C does when fine-tuning at a higher resolution
(D_S x S / S at --base_resolution), both in the formulation the trainer runs on this platform
(mixer_jax.formulations); and a plain ViT (studies/vit.py: heads of 64 channels, MLP
width D_C). The models take turns in the same timing rounds (benchmarks/throughput.py's
local_rounds and time_rounds). Writes scaling.png (log-log: images/s and GFLOPs per image
against tokens) and scaling.json in --out, and prints each model's growth exponent between the
two largest resolutions (time per image ~ tokens^k: 1 is linear, 2 quadratic). Ctrl-C writes
the resolutions finished before it, then ends the run as interrupted (status 130).
"""
import math
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags  # noqa: E402
from matplotlib import ticker  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import throughput  # noqa: E402
from mixer_jax import flops, formulations, host, models  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402
from studies import study, vit  # noqa: E402

NAMES = ('Mixer, D_S fixed', 'Mixer, D_S grown', 'ViT')


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('variant', 'B/16', f'The Mixer whose sizes all three models take: '
                      f'{", ".join(models.VARIANTS)}.', flag_values=values)
  flags.DEFINE_integer('width', 0, 'Hidden width C instead of the variant\'s (D_S, D_C and the '
                       'ViT\'s heads scale with it); 0: the variant\'s.', lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer('depth', 0, 'Blocks instead of the variant\'s; 0: the variant\'s.',
                       lower_bound=0, flag_values=values)
  flags.DEFINE_list('resolutions', ['224', '448', '672', '896'], 'Image sizes.',
                    flag_values=values)
  flags.DEFINE_integer('base_resolution', 224, 'Where the grown Mixer has the variant\'s D_S.',
                       lower_bound=1, flag_values=values)
  flags.DEFINE_list('batch_sizes', ['1', '4'], 'Batch sizes tried; the best is kept.',
                    flag_values=values)
  flags.DEFINE_string('dtype', 'float32', 'Compute dtype: float32 or bfloat16.',
                      flag_values=values)
  flags.DEFINE_integer('steps', 3, 'Timed steps per round.', lower_bound=1, flag_values=values)
  flags.DEFINE_integer('repeats', 3, 'Rounds; each model keeps its fastest.', lower_bound=1,
                       flag_values=values)
  flags.DEFINE_string('out', 'runs/scaling', 'Folder for scaling.png and scaling.json.',
                      flag_values=values)


def build_models(values, resolution: int) -> dict[str, tuple]:
  """{name: (model, forward FLOPs per image)} at `resolution`."""
  models.create_model(values.variant)  # an unknown variant: an error naming the choices
  sizes = dict(models.VARIANTS[models.variant_name(values.variant)])
  scale = values.width / sizes['hidden_dim'] if values.width else 1
  sizes.update(hidden_dim=round(sizes['hidden_dim'] * scale),
               tokens_mlp_dim=max(1, round(sizes['tokens_mlp_dim'] * scale)),
               channels_mlp_dim=max(1, round(sizes['channels_mlp_dim'] * scale)),
               num_blocks=values.depth or sizes['num_blocks'])
  p = sizes['patch_size']
  for flag, r in (('resolutions', resolution), ('base_resolution', values.base_resolution)):
    if r % p:
      nearest = sorted({max(p, r // p * p), (r // p + 1) * p})
      raise UserError(f'--{flag}: {r} is not a multiple of the patch size {p} of '
                      f'{values.variant}; use a multiple such as {" or ".join(map(str, nearest))}.')
  growth = (resolution // p) ** 2 / (values.base_resolution // p) ** 2
  dtype = jnp.dtype(values.dtype)
  # The formulation the trainer runs on this platform: the same function, timed at its fastest.
  fixed = formulations.for_platform(models.MlpMixer(num_classes=1000, dtype=dtype, **sizes))
  grown = fixed.clone(tokens_mlp_dim=max(1, round(sizes['tokens_mlp_dim'] * growth)))
  transformer = vit.ViT(num_classes=1000, patch_size=p, hidden_dim=sizes['hidden_dim'],
                        num_layers=sizes['num_blocks'], num_heads=max(1, sizes['hidden_dim'] // 64),
                        mlp_dim=sizes['channels_mlp_dim'], dtype=dtype)
  return {NAMES[0]: (fixed, flops.forward_flops(fixed, resolution)),
          NAMES[1]: (grown, flops.forward_flops(grown, resolution)),
          NAMES[2]: (transformer, vit.forward_flops(transformer, resolution))}


def inference_rounds(model, resolution: int, batch_size: int):
  """local_rounds of one compiled forward pass on a batch of random images."""
  images = jax.random.uniform(jax.random.key(0), (batch_size, resolution, resolution, 3),
                              minval=-1, maxval=1)
  # Random values without compiling an initialiser: only the shapes matter for the timing.
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(model.init, jax.random.key(1), images[:1])['params']
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype), shapes)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, images).compile()
  return throughput.local_rounds(lambda: forward(params, images),
                                 jax.default_backend() == 'cpu')


def growth_exponent(points: list[dict], key: str) -> float | None:
  """d log(key) / d log(tokens) between the two largest resolutions."""
  if len(points) < 2:
    return None
  a, b = points[-2], points[-1]
  return math.log(b[key] / a[key]) / math.log(b['tokens'] / a['tokens'])


def plot(rows: list[dict], title: str):
  figure = study.new_figure(9, 3.8)
  speed_ax, flops_ax = figure.subplots(1, 2)
  for i, name in enumerate(NAMES):
    mine = [r for r in rows if r['model'] == name]
    style = dict(color=f'C{i}', marker='o', label=name)
    speed_ax.plot([r['tokens'] for r in mine], [r['images_per_sec'] for r in mine], **style)
    flops_ax.plot([r['tokens'] for r in mine], [r['gflops_per_image'] for r in mine], **style)
  resolution = {r['tokens']: r['resolution'] for r in rows}
  # Guides through the fixed-D_S Mixer's first point: cost linear and quadratic in the tokens.
  first = min((r for r in rows if r['model'] == NAMES[0]), key=lambda r: r['tokens'])
  ratio = np.array(sorted(resolution)) / first['tokens']
  for power, style in ((1, ':'), (2, '-.')):
    label = 'tokens^-1 (linear cost)' if power == 1 else 'tokens^-2 (quadratic cost)'
    speed_ax.plot(sorted(resolution), first['images_per_sec'] / ratio ** power, color='grey',
                  linestyle=style, linewidth=1, label=label)
  for ax, ylabel in ((speed_ax, 'images/s (best batch)'), (flops_ax, 'forward GFLOPs per image')):
    ax.set(xscale='log', yscale='log', xlabel='tokens (resolution)', ylabel=ylabel)
    ax.set_xticks(list(resolution), [f'{t}\n({r} px)' for t, r in resolution.items()])
    ax.minorticks_off()
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    ax.grid(alpha=0.3)
  speed_ax.legend(fontsize='small')
  figure.suptitle(title, fontsize='medium')
  return figure


def measure(values, resolutions: list[int], batch_sizes: list[int]) -> list[dict]:
  """A row per model and resolution, smallest resolution first. On Ctrl-C, the rows of the
  resolutions finished before it, if any (a full run takes minutes)."""
  rows = []
  try:  # around the loop: a signal is also taken at its back edge, between resolutions
    for resolution in resolutions:
      measure_resolution(values, resolution, batch_sizes, rows)
  except KeyboardInterrupt:
    if not rows:
      raise
    done = ', '.join(str(r) for r in sorted({row['resolution'] for row in rows}))
    print(f'Interrupted: keeping the resolutions measured before it ({done} px of '
          f'{",".join(map(str, resolutions))}).', flush=True)
  return rows


def measure_resolution(values, resolution: int, batch_sizes: list[int], rows: list[dict]):
  """Appends a row per model to `rows`: its images/s at its best batch size, and its FLOPs.
  The rows go in before the compiled programs are freed, which takes a while: a Ctrl-C then
  keeps them."""
  built = build_models(values, resolution)
  per_batch = {}
  for batch_size in batch_sizes:
    rounds = {name: inference_rounds(model, resolution, batch_size)
              for name, (model, _) in built.items()}
    seconds = throughput.time_rounds(rounds, values.steps, values.repeats,
                                     progress=f'{resolution} px, batch {batch_size}')
    per_batch[batch_size] = {name: batch_size / s for name, s in seconds.items()}
  new_rows = []
  for name, (model, forward) in built.items():
    speeds = {b: per_batch[b][name] for b in batch_sizes}
    best = max(speeds, key=speeds.get)
    new_rows.append({'model': name, 'resolution': resolution,
                     'tokens': (resolution // model.patch_size) ** 2,
                     'tokens_mlp_dim': getattr(model, 'tokens_mlp_dim', None),
                     'best_batch': best, 'images_per_sec': speeds[best],
                     'images_per_sec_by_batch': speeds, 'gflops_per_image': forward / 1e9,
                     'achieved_gflops_per_sec': speeds[best] * forward / 1e9})
  rows.extend(new_rows)  # the whole resolution at once
  for row in new_rows:
    print(f"{row['model']:16s} {resolution:4d}px: {row['images_per_sec']:9.2f} img/s (batch "
          f"{row['best_batch']}), {row['gflops_per_image']:.4g} GFLOPs/image", flush=True)


def main(argv: Sequence[str]) -> None:
  values, _ = study.parse_flags(argv, __doc__, define_flags)
  resolutions = sorted(study.int_list(values.resolutions, 'resolutions', unique=True))
  batch_sizes = study.int_list(values.batch_sizes, 'batch_sizes')
  if values.dtype not in ('float32', 'bfloat16'):
    raise UserError(f'Unknown --dtype={values.dtype}: use float32 or bfloat16.')
  for resolution in resolutions:  # every resolution's sizes, before the first is timed
    build_models(values, resolution)
  device = jax.devices()[0]
  rows = measure(values, resolutions, batch_sizes)
  measured = sorted({r['resolution'] for r in rows})

  exponents = []
  for name in NAMES:
    mine = [r for r in rows if r['model'] == name]
    seconds_per_image = [dict(r, seconds=1 / r['images_per_sec']) for r in mine]
    exponents.append({'model': name, 'time_exponent': growth_exponent(seconds_per_image, 'seconds'),
                      'flops_exponent': growth_exponent(mine, 'gflops_per_image')})
  first = build_models(values, measured[0])[NAMES[0]][0]
  described = (f'{values.variant} sizes: C={first.hidden_dim}, {first.num_blocks} blocks, patch '
               f'{first.patch_size}, {values.dtype}, one {device.device_kind}')
  text = (study.format_table(rows, ['model', 'resolution', 'tokens', 'tokens_mlp_dim',
                                    'best_batch', 'images_per_sec', 'gflops_per_image'])
          + f'\nGrowth between the two largest resolutions ({described}); time per image ~ '
          'tokens^k:\n' + study.format_table(exponents, ['model', 'time_exponent',
                                                         'flops_exponent'])
          + ('' if len(measured) > 1 else
             '\n(No growth from one resolution: give two or more, as --resolutions=224,448.)'))
  table = {'setup': described, 'variant': values.variant, 'hidden_dim': first.hidden_dim,
           'num_blocks': first.num_blocks, 'patch_size': first.patch_size,
           'dtype': values.dtype, 'device': device.device_kind, 'backend': jax.default_backend(),
           'resolutions_asked': resolutions, 'results': rows, 'growth': exponents}
  study.write_outputs(values.out, 'scaling', plot(rows, described), table, text)
  if measured != resolutions:
    raise KeyboardInterrupt  # the outputs hold what was measured; the run still ends as stopped


if __name__ == '__main__':
  host.keep_freed_memory_on_cpu()  # before JAX starts, as the benchmark: faster CPU steps
  study.run(main)
