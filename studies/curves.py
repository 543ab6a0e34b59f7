"""Training curves: loss and accuracy of one or several runs against steps, as a picture.

  python studies/curves.py runs/digits
  python studies/curves.py runs/permutation/mixer_original runs/permutation/resnet_original --out=runs/compare

Reads each workdir's metrics.jsonl (the trainer writes training loss and accuracy every
log_every steps, evaluation loss and accuracy every eval_every steps) and writes curves.png (loss
on a log scale and accuracy, training solid, evaluation dashed, one colour per run) and
curves.json (per run: last step and the run's total_steps, last training loss, final and best
evaluation accuracy) in --out. A run that has not logged yet is left out with a warning.
"""
import json
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags, logging  # noqa: E402

from mixer_jax import paths  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402
from studies import study  # noqa: E402


def read_metrics(workdir: str) -> dict[str, list[dict]]:
  """{split: records in step order} from a workdir's metrics.jsonl.

  A step logged twice (a finished run evaluated again on restart) keeps its last record; a last
  line without its newline (being written by a live run, or torn by a killed one) is left out.
  """
  folder = paths.resolve(workdir)  # a local folder or a gs:// one, as train.py writes them
  path = folder / 'metrics.jsonl'
  if not path.is_file():
    if not folder.exists():
      raise UserError(f'{workdir} does not exist: give the workdirs of train.py runs.')
    if (folder / 'config.json').is_file():  # started, nothing logged yet
      return {}
    if folder.name == 'metrics.jsonl':
      raise UserError(f'{workdir}: give the run\'s folder, {os.path.dirname(workdir) or "."}, '
                      'rather than its metrics.jsonl.')
    raise UserError(f'{workdir} has no metrics.jsonl: give the workdirs of train.py runs.')
  by_split = {}
  with path.open() as f:
    for number, line in enumerate(f, 1):
      if not line.endswith('\n'):
        break
      try:
        record = json.loads(line)
        by_split.setdefault(record['split'], {})[record['step']] = record
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f'{path}, line {number}, is not a metrics record ({e}).') from e
  return {split: [records[s] for s in sorted(records)] for split, records in by_split.items()}


def total_steps(workdir: str) -> int | None:
  """The run's total_steps, from its config.json (None without one)."""
  try:
    with (paths.resolve(workdir) / 'config.json').open() as f:
      return json.load(f).get('total_steps')
  except (*paths.storage_errors(), ValueError, AttributeError):  # tf.io.gfile's for gs://
    return None


def eval_split(metrics: dict[str, list[dict]]) -> str | None:
  """The run's evaluation split ('test' or 'validation'), None before its first evaluation."""
  return next((split for split in metrics if split != 'train'), None)


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  return [r['step'] for r in records if key in r], [r[key] for r in records if key in r]


def summary(name: str, metrics: dict[str, list[dict]]) -> dict:
  """One table row: last step and training loss, final and best evaluation accuracy."""
  row = {'run': name, 'step': max(r['step'] for records in metrics.values() for r in records)}
  if metrics.get('train'):
    row['train_loss'] = metrics['train'][-1]['loss']
  split = eval_split(metrics)
  if split:
    best = max(metrics[split], key=lambda r: r['accuracy'])
    row.update(eval_split=split, accuracy=metrics[split][-1]['accuracy'],
               best_accuracy=best['accuracy'], best_step=best['step'])
  return row


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Folder names, or the whole paths where two folders share a name."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def main(argv: Sequence[str]) -> None:
  def define(values):
    flags.DEFINE_string('out', 'runs/curves', 'Folder for curves.png and curves.json.',
                        flag_values=values)
  values, workdirs = study.parse_flags(argv, __doc__, define, takes_arguments=True)
  if not workdirs:
    raise UserError('Give one or more workdirs, e.g. python studies/curves.py runs/digits.')
  workdir_of, runs = dict(zip(run_names(workdirs), workdirs)), {}
  for name, workdir in workdir_of.items():
    runs[name] = read_metrics(workdir)
    if not runs[name]:
      del runs[name]
      logging.warning('%s has not logged anything yet: left out.', workdir)
  if not runs:
    raise UserError(f'None of {", ".join(workdirs)} has logged anything yet: rerun once they '
                    'have (every log_every steps).')

  figure = study.new_figure(9, 3.6)
  loss_ax, accuracy_ax = figure.subplots(1, 2)
  for i, (name, metrics) in enumerate(runs.items()):
    colour = f'C{i % 10}'
    for split, records in metrics.items():
      style = dict(color=colour, linestyle='-' if split == 'train' else '--',
                   marker=None if split == 'train' else 'o', markersize=3,
                   label=f'{name} ({split})')
      loss_ax.plot(*series(records, 'loss'), **style)
      accuracy_ax.plot(*series(records, 'accuracy'), **style)
  loss_ax.set(yscale='log', xlabel='step', ylabel='loss', title='Loss')
  accuracy_ax.set(xlabel='step', ylabel='accuracy', title='Accuracy')
  accuracy_ax.legend(fontsize='small')
  for ax in (loss_ax, accuracy_ax):
    ax.grid(alpha=0.3)

  rows = [{**summary(name, metrics), 'total_steps': total_steps(workdir_of[name])}
          for name, metrics in runs.items()]
  text = study.format_table(rows, ['run', 'step', 'total_steps', 'train_loss', 'eval_split',
                                   'accuracy', 'best_accuracy', 'best_step'])
  study.write_outputs(values.out, 'curves', figure, {'runs': rows}, text)


if __name__ == '__main__':
  study.run(main)
