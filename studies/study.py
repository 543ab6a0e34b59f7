"""What the study scripts share: their command line and their outputs.

Each study is one command, `python studies/<name>.py [--flags]`, that ends by writing
`<out>/<name>.png` and `<out>/<name>.json` and printing its table. Flags live in a FlagValues of
the study's own, so `main(argv)` can also be called from Python (the tests do). A mistake in
what was asked for (an unknown flag or option, weights or folders that do not fit) stops it with
a one-line `error: ...` and exit status 1.
"""
import json
import os
import sys
from typing import Any, Callable, Sequence

from absl import flags
import matplotlib
from ml_collections import config_flags

matplotlib.use('Agg')  # files only, no display
from matplotlib.figure import Figure  # noqa: E402

from mixer_jax import checkpoints, config_files, errors, paths, trainer  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, 'configs', 'digits.py')
DPI = 80  # committed pictures stay small


def parse_flags(argv: Sequence[str], doc: str, define: Callable[[flags.FlagValues], None],
                takes_arguments: bool = False) -> tuple[flags.FlagValues, list[str]]:
  """(flags defined by `define`, positional arguments) from argv; --help prints `doc` and them."""
  values = flags.FlagValues()
  define(values)
  if any(arg in ('-h', '--help', '--helpfull') for arg in argv[1:]):
    print(doc.strip() + '\n\nFlags:\n' + values.get_help(include_special_flags=False))
    sys.exit(0)
  try:
    positional = values(list(argv))[1:]
  except flags.Error as e:
    # A validator's own sentence ends before ours.
    message = config_files.flag_error_message(e).strip().rstrip('.')
    raise UserError(' '.join(f'{message} (--help lists the flags).'.split())) from e
  if positional and not takes_arguments:
    raise UserError(f'Unexpected arguments: {" ".join(positional)} (--help lists the flags).')
  for name in ('out', 'workdir'):  # where the outputs go: checked now, rather than after the work
    if name in values:
      check_can_make(values[name].value, name)
  return values, positional


def check_can_make(folder: str, flag: str) -> None:
  """Raises unless `folder` is, or can be made, a folder this user writes; makes nothing, so a
  command that stops on another error leaves no empty folder behind."""
  if not folder.strip():  # else the current folder, silently
    raise UserError(f'--{flag} is empty (an unset variable in the command?): give a folder, or '
                    'leave the flag out for its default.')
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  problem = ('Not a directory' if not os.path.isdir(existing) else
             'Permission denied' if not os.access(existing, os.W_OK | os.X_OK) else None)
  if problem:
    raise UserError(f'--{flag}={folder} cannot be made a folder ({problem}): give a folder this '
                    'user can write.')


def define_recipe(values: flags.FlagValues, argv: Sequence[str]):
  """--config=configs/<recipe>.py[:arg] (default digits) with --config.<field>=value overrides."""
  config_files.check_is_python(config_files.config_arg(argv, DIGITS))  # config_flags runs any file
  config_files.check_fields_follow_config(argv)
  try:
    config_flags.DEFINE_config_file(
        'config', DIGITS, 'The recipe to train with (configs/*.py, digits by default); override '
        'its fields as --config.<field>=value.', flag_values=values, lock_config=False,
        sys_argv=list(argv))
  except (AttributeError, KeyError, TypeError) as e:  # an override of a field the recipe lacks
    field = str(e.args[0] if e.args else e).strip('\'"')
    named = [arg.split('=')[0] for arg in argv
             if arg.startswith('--config.') and arg.split('=')[0].endswith(f'.{field}')]
    raise UserError(f'{", ".join(named) or field}: no such field in the recipe '
                    '(--help lists the flags).') from e


def recipe(values: flags.FlagValues):
  """The parsed --config; a recipe file that cannot be loaded is a UserError."""
  try:
    return values.config.copy_and_resolve_references()
  except OSError as e:  # config_flags defers a failed load to the first use
    raise UserError(f'Cannot load the recipe: {str(e).strip().splitlines()[-1].strip()}.') from e


def refuse_changed_runs(runs: Sequence[tuple[Any, str]]) -> None:
  """Every (config, workdir) a study plans, checked before the first one trains.

  A run there with other settings is another experiment: reusing it would mix the two.
  """
  for config, workdir in runs:
    changes = trainer.config_changes(trainer.saved_config(paths.resolve(workdir)), config)
    if changes:
      raise UserError(f'{workdir} holds a run with other settings ({"; ".join(changes)}): give '
                      'this study another --workdir, or delete that run to train it again.')


def train(config, workdir: str, build, what: str) -> dict[str, Any]:
  """One run of a study (checked by refuse_changed_runs): trained now, resumed, or found
  finished in `workdir`, and a line saying which."""
  with checkpoints.reader(paths.resolve(workdir) / 'checkpoints') as found:
    step = found.latest_step()
  if step is None:
    doing = 'training'
  elif step < config.total_steps:
    doing = f'resuming from step {step} of {config.total_steps}'
  else:
    doing = f'finished at step {step}, evaluating it again'
  print(f'{what}: {doing} in {workdir}', flush=True)
  return trainer.train_and_evaluate(config, workdir, build)


def split_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
  """Comma-separated names, each one of `allowed`."""
  names = [name for name in text.split(',') if name]
  unknown = [name for name in names if name not in allowed]
  if unknown or not names:
    raise UserError(f'Unknown {what} {", ".join(unknown) or repr(text)}: choose from '
                    f'{", ".join(allowed)}.')
  return names


def int_list(texts: Sequence[str], flag: str, minimum: int = 1,
             unique: bool = False) -> list[int]:
  """The integers of a list flag, each at least `minimum` (and each once, if `unique`)."""
  try:
    numbers = [int(t) for t in texts]
  except ValueError:
    numbers = []
  if not numbers or min(numbers) < minimum:
    raise UserError(f'--{flag} takes integers of at least {minimum} separated by commas, not '
                    f'{",".join(texts)!r}.')
  repeated = sorted({n for n in numbers if numbers.count(n) > 1})
  if unique and repeated:
    raise UserError(f'--{flag} lists {", ".join(map(str, repeated))} more than once: give each '
                    'once.')
  return numbers


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
  """Rows as aligned text, floats to 4 significant digits, None as -."""
  def cell(value):
    if isinstance(value, (list, tuple)):
      return ' '.join(map(cell, value))
    if isinstance(value, float):
      return f'{value:.4g}'
    return '-' if value is None else str(value)
  cells = [list(columns)] + [[cell(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  return '\n'.join('  '.join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells)


def new_figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height), dpi=DPI, layout='constrained')


def write_outputs(out_dir: str, name: str, figure: Figure, table: dict[str, Any],
                  text: str) -> None:
  """Saves `<name>.png` and `<name>.json` in out_dir and prints `text` and where they went."""
  os.makedirs(out_dir, exist_ok=True)
  png, json_path = (os.path.join(out_dir, f'{name}.{ext}') for ext in ('png', 'json'))
  figure.savefig(png, dpi=DPI)
  with open(json_path, 'w') as f:
    json.dump(table, f, indent=2)
    f.write('\n')
  print(f'{text}\nWrote {png} and {json_path}', flush=True)


def run(main: Callable[[Sequence[str]], None]) -> None:
  """main(sys.argv), reported as train.py reports: a UserError, a run stopped by SIGTERM or
  Ctrl-C (the whole study stops; its same command resumes) end the process with one line."""
  errors.reported(main)(sys.argv)
