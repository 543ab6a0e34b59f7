"""Token-mixing weight pictures (paper section 3.5, Figure 5; Appendix D, Figures 6-7).

  python studies/weights.py --weights=runs/digits_p2                    # one of our runs
  python studies/weights.py --weights=Mixer-B_16.npz --blocks=0,1,2 --units=96
  python studies/weights.py --weights=mixer_b16_224.safetensors --out=runs/weights_timm

Reads any weights mixer_jax.checkpoints loads (an official .npz, timm weights, a workdir or its
checkpoints/<step>). For each block in --blocks, every hidden unit j of the first token-mixing
layer, `MixerBlock_b/token_mixing/Dense_0/kernel[:, j]` (one weight per token), is drawn on the
patch grid (tokens are row-major over it), red positive, blue negative, each map scaled to its
own largest magnitude. Units are sorted from low to high spatial frequency, measured as the
spectral centroid of the map: the power-weighted mean of sqrt(fx^2 + fy^2) over the 2-D DFT of
the mean-subtracted map, in cycles per token (0 to 0.71). Each unit is followed by its partner,
the unit most anti-correlated with it (greedily, in frequency order, among units not yet shown),
so opposite pairs sit side by side. The stem's kernels are drawn as P x P RGB tiles. Writes
weights.png and weights.json (per block: the display order, frequencies, pairs with their
correlations, each unit's most anti-correlated unit) in --out. The printed table gives per block
the median frequency, the median correlation within pairs and the fraction of units that are
each other's most anti-correlated unit, each beside the same statistic of Gaussian noise of the
block's shape: what an untrained layer shows.
"""
import math
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from mixer_jax import checkpoints  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402
from studies import study  # noqa: E402


def spectral_frequency(maps_GGD: np.ndarray) -> np.ndarray:
  """Spectral centroid (cycles per token) of each map maps[:, :, j], its mean removed."""
  g_rows, g_cols, _ = maps_GGD.shape
  centred = maps_GGD - maps_GGD.mean(axis=(0, 1), keepdims=True)
  power = np.abs(np.fft.fft2(centred, axes=(0, 1))) ** 2
  radius = np.hypot(*np.meshgrid(np.fft.fftfreq(g_rows), np.fft.fftfreq(g_cols), indexing='ij'))
  total = power.sum(axis=(0, 1))
  return np.where(total > 0, np.einsum('rc,rcd->d', radius, power) / np.maximum(total, 1e-30), 0)


def order_and_pairs(weights_SD: np.ndarray, grid: int) -> dict:
  """Display order (low frequency first, each unit followed by its partner) and its data."""
  frequency = spectral_frequency(weights_SD.reshape(grid, grid, -1))
  correlation = np.corrcoef(weights_SD.T)
  np.fill_diagonal(correlation, np.inf)
  order, pairs, shown = [], [], set()
  for unit in np.argsort(frequency, kind='stable'):
    if unit in shown:
      continue
    candidates = [u for u in np.argsort(correlation[unit], kind='stable')
                  if u not in shown and u != unit]
    group = [int(unit)] + [int(candidates[0])] * bool(candidates)
    shown.update(group)
    order += group
    if len(group) == 2:
      pairs.append([*group, float(correlation[unit, group[1]])])
  most_anti = correlation.argmin(axis=1)
  return {'order': order, 'frequency': [float(f) for f in frequency], 'pairs': pairs,
          'most_anticorrelated': [int(u) for u in most_anti],
          'most_anticorrelated_correlation': [float(correlation[j, u])
                                              for j, u in enumerate(most_anti)],
          'mutual_fraction': float(np.mean(most_anti[most_anti] == np.arange(len(most_anti))))}


def summary(found: dict) -> dict:
  """Median frequency, median pair correlation and the fraction of mutual opposites."""
  return {'median_frequency': float(np.median(found['frequency'])),
          'median_pair_correlation': (float(np.median([p[2] for p in found['pairs']]))
                                      if found['pairs'] else None),
          'mutual_fraction': found['mutual_fraction']}


def token_grid(params, block: str) -> tuple[np.ndarray, int]:
  """(Dense_0 kernel (S, D_S), grid side) of a block; weights that are no Mixer's are an error."""
  try:
    kernel = np.asarray(params[block]['token_mixing']['Dense_0']['kernel'], np.float64)
  except (KeyError, TypeError) as e:
    raise UserError(f'The weights have no {block}/token_mixing/Dense_0/kernel: give the weights '
                    'of an MLP-Mixer.') from e
  grid = math.isqrt(kernel.shape[0]) if kernel.ndim == 2 else 0
  if grid * grid != kernel.shape[0] or kernel.ndim != 2:
    raise UserError(f'{block}/token_mixing/Dense_0/kernel has shape {kernel.shape}: expected '
                    '(tokens, hidden units) with a square number of tokens (a square patch grid).')
  return kernel, grid


def stem_kernel(params) -> np.ndarray:
  kernel = np.asarray(params['stem']['kernel'])  # load_params requires a stem
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
    raise UserError(f'stem/kernel has shape {kernel.shape}: expected (P, P, channels, C).')
  return kernel


def mosaic(tiles: np.ndarray, columns: int, pad_value=np.nan) -> np.ndarray:
  """(N, h, w, ...) tiles -> one image of `columns` tiles per row, a 1-pixel gap between."""
  n, h, w = tiles.shape[:3]
  rows = -(-n // columns)
  out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, *tiles.shape[3:]), pad_value)
  for i, tile in enumerate(tiles):
    r, c = divmod(i, columns)
    out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tile
  return out


def unit_maps(kernel_SD: np.ndarray, grid: int, units: Sequence[int]) -> np.ndarray:
  """Maps (N, grid, grid) of the given units, each scaled to [-1, 1] by its largest magnitude."""
  maps = kernel_SD[:, list(units)].T.reshape(-1, grid, grid)
  return maps / np.maximum(np.abs(maps).max(axis=(1, 2), keepdims=True), 1e-30)


def stem_tiles(kernel: np.ndarray, count: int) -> np.ndarray:
  """The first `count` stem units as (N, P, P, 3) RGB tiles in [0, 1], each scaled on its own."""
  tiles = np.moveaxis(kernel[..., :count], -1, 0)
  if tiles.shape[-1] != 3:  # grey or other channel counts: show the channel mean
    tiles = np.repeat(tiles.mean(-1, keepdims=True), 3, axis=-1)
  low, high = tiles.min(axis=(1, 2, 3), keepdims=True), tiles.max(axis=(1, 2, 3), keepdims=True)
  return (tiles - low) / np.maximum(high - low, 1e-30)


def _even(columns: int) -> bool:
  if columns % 2:
    raise flags.ValidationError(f'must be even, so that each unit sits beside its pair: use '
                                f'{columns - 1} or {columns + 1}.')
  return True


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('weights', None, 'An official .npz, timm weights (.safetensors, .pth, '
                      '.bin), a workdir or its checkpoints/<step>.', flag_values=values)
  flags.DEFINE_list('blocks', ['0', '1', '2'], 'Blocks to draw (the first three by default; '
                    'those the weights lack are skipped).', flag_values=values)
  flags.DEFINE_integer('units', 0, 'Token-mixing units drawn per block, lowest frequencies first '
                       '(0: all).', lower_bound=0, flag_values=values)
  flags.DEFINE_integer('stem_units', 64, 'Stem kernels drawn (0: all).', lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer('columns', 32, 'Maps per row (even, so that pairs share a row).',
                       lower_bound=2, flag_values=values)
  flags.register_validator('columns', _even, flag_values=values)
  flags.DEFINE_string('out', 'runs/weights', 'Folder for weights.png and weights.json.',
                      flag_values=values)


def main(argv: Sequence[str]) -> None:
  values, _ = study.parse_flags(argv, __doc__, define_flags)
  if not values.weights:
    raise UserError('Give the weights with --weights=PATH.')
  blocks = study.int_list(values.blocks, 'blocks', minimum=0)
  params = checkpoints.load_params(values.weights, '--weights')
  stem = stem_kernel(params)
  present = [b for b in blocks if f'MixerBlock_{b}' in params]
  if not present:
    raise UserError(f'The weights have no block among {",".join(values.blocks)}: they have '
                    f'{sum(k.startswith("MixerBlock_") for k in params)} blocks, numbered from 0.')

  results, mosaics = {}, {}
  for b in present:
    kernel, grid = token_grid(params, f'MixerBlock_{b}')
    found = order_and_pairs(kernel, grid)
    shown = found['order'][:values.units or None]
    mosaics[b] = (mosaic(unit_maps(kernel, grid, shown), values.columns), len(shown))
    noise = np.random.default_rng(b).standard_normal(kernel.shape)
    results[f'MixerBlock_{b}'] = {'grid': grid, 'units': kernel.shape[1], **found,
                                  'random_baseline': summary(order_and_pairs(noise, grid))}
  tiles = stem_tiles(stem, values.stem_units or stem.shape[-1])

  heights = [m.shape[0] / m.shape[1] * 10 for m, _ in mosaics.values()]
  stem_image = mosaic(tiles, min(values.columns, len(tiles)), pad_value=1.0)
  heights.append(stem_image.shape[0] / stem_image.shape[1] * 10)
  figure = study.new_figure(10, sum(heights) + 0.45 * len(heights))
  axes = figure.subplots(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
  for ax, (b, (image, count)) in zip(axes, mosaics.items()):
    r = results[f'MixerBlock_{b}']
    ax.imshow(image, cmap='RdBu_r', vmin=-1, vmax=1, interpolation='nearest')
    ax.set_title(f'Block {b}: {count} of {r["units"]} token-mixing units on the {r["grid"]}x'
                 f'{r["grid"]} token grid, low frequency first, opposite pairs side by side',
                 fontsize='small')
  axes[-1].imshow(stem_image, interpolation='nearest')
  axes[-1].set_title(f'Stem: {len(tiles)} of {stem.shape[-1]} kernels, '
                     f'{stem.shape[0]}x{stem.shape[1]} RGB', fontsize='small')
  for ax in axes:
    ax.axis('off')

  rows = [{'block': name, 'grid': f'{r["grid"]}x{r["grid"]}', 'units': r['units'],
           **summary(r), **{f'random_{k}': v for k, v in r['random_baseline'].items()}}
          for name, r in results.items()]
  text = study.format_table(rows, list(rows[0])) + (
      '\nrandom_*: the same statistics of Gaussian noise of the same shape (an untrained layer), '
      'the level that learned structure must exceed.')
  study.write_outputs(values.out, 'weights', figure,
                      {'weights': os.fspath(values.weights), 'summary': rows, 'blocks': results},
                      text)


if __name__ == '__main__':
  study.run(main)
