"""The tables of an accelerator check (benchmarks/accelerator_check.sh), against the targets.

  python benchmarks/accelerator_summary.py OUT_DIR      # Markdown on stdout

Reads OUT_DIR/throughput.jsonl, train_synthetic.jsonl, input_pipeline.jsonl and tests.log,
whichever exist.
"""
import json
import os
import sys

# Issue 12's targets: MFU of our step at its best batch (bf16 compute, 224x224, one device).
MFU_TARGETS = {('B/16', 'train'): 0.50, ('L/16', 'train'): 0.55, ('S/32', 'train'): 0.35,
               ('B/16', 'inference'): 0.60}
TRAIN_LOOP_TARGET = 0.9  # train.py's images/s over the benchmark's at the same batch


def read_lines(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def rate(images_per_sec: float) -> str:
  """Images/s to the unit where it is large, to 3 digits where small (L/16 on a CPU: 0.52)."""
  return f'{images_per_sec:,.0f}' if images_per_sec >= 100 else f'{images_per_sec:.3g}'


def best_by(lines, *keys) -> dict:
  """The fastest line for each value of `keys`."""
  best = {}
  for r in lines:
    key = tuple(r[k] for k in keys)
    if key not in best or r['images_per_sec'] > best[key]['images_per_sec']:
      best[key] = r
  return best


def markdown_table(lines, mfu_targets=None) -> list[str]:
  """Each variant and mode at every implementation's best batch, side by side, with ours over
  the reference where both ran, and each target MFU met or missed where `mfu_targets` name one."""
  impls = list(dict.fromkeys(r['impl'] for r in lines))
  ratio_column = {'ours', 'reference'} <= set(impls)
  best = best_by(lines, 'variant', 'mode', 'impl')
  out = ['| variant | mode | ' + ' | '.join(f'{i}: img/s (batch), MFU' for i in impls)
         + (' | ours / reference' if ratio_column else '')
         + (' | target MFU' if mfu_targets else '') + ' |',
         '|' + ' --- |' * (len(impls) + 2 + ratio_column + bool(mfu_targets))]
  for variant, mode in dict.fromkeys((r['variant'], r['mode']) for r in lines):
    cells = []
    for impl in impls:
      r = best.get((variant, mode, impl))
      cells.append(f"{rate(r['images_per_sec'])} ({r['batch_per_device']}), {r['mfu']:.1%}"
                   if r else '-')
    ours, ref = best.get((variant, mode, 'ours')), best.get((variant, mode, 'reference'))
    if ratio_column:
      cells.append(f"{ours['images_per_sec'] / ref['images_per_sec']:.2f}x" if ours and ref
                   else '-')
    if mfu_targets:
      target = mfu_targets.get((variant, mode))
      met = '' if target is None or not ours else (' met' if ours['mfu'] >= target else ' missed')
      cells.append(f'{target:.0%}{met}' if target else '-')
    out.append(f'| {variant} | {mode} | ' + ' | '.join(cells) + ' |')
  return out


def throughput_table(lines) -> list[str]:
  r0 = lines[0]
  ours = next((r for r in lines if r['impl'] == 'ours'), r0)
  return [f"Device: {r0['devices']}x {r0['device_kind']}, {r0['dtype']}, {r0['resolution']}px, "
          f"jax {r0['jax_version']}; matmul rate {r0['matmul_tflops_per_sec_per_device']:.3g} "
          f"TFLOP/s; ours = the {ours['formulation']} formulation.", '',
          *markdown_table(lines, MFU_TARGETS)]


def train_loop_lines(metrics, throughput) -> list[str]:
  if not metrics:
    return ['train.py on synthetic data: no metrics (it did not run or failed).']
  *records, run = metrics
  windows = [r['steps_per_sec'] for r in records if r['split'] == 'train'][1:]  # 1st: compiling
  if not windows or not run['batch_size']:
    return [f"train.py on synthetic data ({run['config']}): too few steps to measure."]
  variant = run['config'].split(':')[1].split(',')[0]
  loop = max(windows) * run['batch_size']
  bench = [r for r in throughput if r['impl'] == 'ours' and r['mode'] == 'train'
           and r['variant'] == variant
           and r['batch_per_device'] * r['devices'] == run['batch_size']]
  line = (f"train.py on synthetic data ({run['config']}, batch {run['batch_size']}): "
          f'{loop:,.1f} images/s (best of {len(windows)} windows after the first)')
  if bench:
    ratio = loop / bench[0]['images_per_sec']
    line += (f"; the benchmark's training step: {bench[0]['images_per_sec']:,.1f} images/s; "
             f"ratio {ratio:.2f} (target {TRAIN_LOOP_TARGET:.2f}: "
             f"{'met' if ratio >= TRAIN_LOOP_TARGET else 'missed'})")
  return [line]


def input_pipeline_lines(pipeline, throughput) -> list[str]:
  if not pipeline:
    return ['Host input pipeline: not measured here (see check.log).']
  train = best_by([r for r in throughput if r['impl'] == 'ours' and r['mode'] == 'train'],
                  'variant')
  out = ['| host input pipeline | images/s | against the training step |', '| --- | --- | --- |']
  for p in pipeline:
    label = (f"{p['host_cores']} cores, {p['image_size']}px, RandAugment "
             f"{p['randaug_layers']} x {p['randaug_magnitude']:g}")
    against = []
    for (variant,), r in sorted(train.items()):
      if variant in ('S/32', 'B/16'):
        need = r['images_per_sec'] / p['images_per_sec']
        against.append(f"{variant} trains at {rate(r['images_per_sec'])}: "
                       + ('the host keeps up' if need <= 1 else
                          f'needs {need:.1f}x this host ({need * p["host_cores"]:.0f} cores)'))
    out.append(f"| {label} | {p['images_per_sec']:,.1f} | {'; '.join(against) or '-'} |")
  return out


def main(out_dir: str) -> None:
  throughput = read_lines(os.path.join(out_dir, 'throughput.jsonl'))
  print('# Accelerator check\n')
  print('\n'.join(throughput_table(throughput)) if throughput else 'No throughput lines.')
  print()
  print('\n'.join(train_loop_lines(read_lines(os.path.join(out_dir, 'train_synthetic.jsonl')),
                                   throughput)))
  print()
  print('\n'.join(input_pipeline_lines(
      read_lines(os.path.join(out_dir, 'input_pipeline.jsonl')), throughput)))
  tests = os.path.join(out_dir, 'tests.log')
  if os.path.exists(tests):
    with open(tests) as f:
      last = [line.strip() for line in f if line.strip()][-1:]
    print(f"\nTests: {last[0] if last else 'no output'}")


if __name__ == '__main__':
  if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
    sys.exit('error: give the accelerator check\'s output folder: '
             'python benchmarks/accelerator_summary.py OUT_DIR')
  main(sys.argv[1])
