"""Config files (`configs/*.py` with `get_config(arg)`) named by a --config flag."""
import importlib.util
import inspect
import os

from absl import flags
import ml_collections

from mixer_jax import errors


def config_arg(argv, default: str | None) -> str | None:
  """The value of --config in argv ('path[:arg]'), else `default` as the user would write it
  (relative to the working directory where it lies below it)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  if default and not os.path.relpath(default).startswith(os.pardir):
    return os.path.relpath(default)
  return default


def expand_home(argv: list[str]) -> list[str]:
  """argv with `--config=~/...` expanded, as the shell expands `--config ~/...`."""
  flag = '--config='
  return [flag + os.path.expanduser(a[len(flag):]) if a.startswith(flag + '~') else a
          for a in argv]


def check_is_python(path_and_arg: str):
  """A UserError unless `path[:arg]` names a Python file, as a recipe is: a run's config.json
  was taken for one."""
  if not path_and_arg.partition(':')[0].endswith('.py'):
    raise errors.UserError(
        f'--config={path_and_arg} is not a recipe: give a Python file with get_config(), e.g. '
        '--config=configs/digits.py. (A run\'s config.json records its settings: give the '
        'recipe the run started from, with those settings as --config.<field>=<value>.)')


def check_fields_follow_config(argv):
  """A UserError where a --config.<field> comes before --config: config_flags applies each one
  to the config the flags before it named, and there is none yet."""
  fields = [i for i, arg in enumerate(argv) if arg.startswith('--config.')]
  given = [i for i, arg in enumerate(argv) if arg == '--config' or arg.startswith('--config=')]
  if fields and given and fields[0] < given[0]:
    raise errors.UserError(
        f'{argv[fields[0]]} comes before --config: give --config={config_arg(argv, None)} '
        'first, then the --config.<field>=<value> settings of that recipe.')


def load(path_and_arg: str):
  """The config that `path[:arg]` builds, without any --config.<field> overrides."""
  path, colon, arg = path_and_arg.partition(':')
  module = importlib.util.module_from_spec(importlib.util.spec_from_file_location('cfg', path))
  module.__loader__.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise ValueError(f'{os.path.basename(path)} defines no get_config(), so it is not a recipe: '
                     'give one of the files in configs/ that do, e.g. configs/digits.py, or '
                     'write one like it.')
  if colon and not inspect.signature(module.get_config).parameters:
    raise ValueError(f'{os.path.basename(path)} takes no argument after ":" (got {arg!r}); its '
                     'settings are --config.<field>=<value>.')
  config = module.get_config(*([arg] if colon else []))
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f'get_config() returned {type(config).__name__}, not an '
                    'ml_collections.ConfigDict (configs/digits.py shows one).')
  return config


def exit_unless_loadable(argv, default: str | None):
  """The config that --config builds; ends the program with one line where the file is missing
  or fails to build.

  Call it before ml_collections' config_flags parses the flag: it reports these as tracebacks
  or defers them to the first use of the config.
  """
  path = config_arg(argv, default)
  if path is None:
    return
  file = path.partition(':')[0]
  if not os.path.isfile(file):
    what = ' is a folder, not a recipe' if os.path.isdir(file) else ': no such file'
    errors.exit_with(f'error: --config={path}{what}. The recipes are the files in configs/, '
                     'e.g. --config=configs/digits.py.')
  try:
    check_is_python(path)
    check_fields_follow_config(argv)
  except errors.UserError as e:
    errors.exit_with(f'error: {e}')
  try:
    return load(path)
  except Exception as e:  # the config file is the user's code: any error in it is theirs
    errors.exit_with(f'error: --config={path} cannot build its config: {type(e).__name__}: {e}')


def lookup(config, dotted: str, default=None):
  """config.a.b for 'a.b', or `default` where a part is missing."""
  for part in dotted.split('.'):
    if not hasattr(config, 'keys') or part not in config.keys():
      return default
    config = config[part]
  return config


def _field_names(config, prefix=''):
  for key, value in config.items():
    yield from (_field_names(value, f'{prefix}{key}.') if hasattr(value, 'items')
                else [f'{prefix}{key}'])


def fields_help(config, path: str) -> str:
  """--help's list of the config's fields and their values: what --config.<field> can set."""
  lines = [f'{name}: {lookup(config, name)!r}' for name in sorted(_field_names(config))]
  return (f'The fields of {path}, each set with --config.<field>=<value> (the file documents '
          'them):\n' + '\n'.join(lines))


def flag_error_message(error) -> str:
  """absl's error for a flag. Where a recipe's get_config raised (refusing its argument), absl
  quotes the whole traceback: its first line names the flag, its last says why."""
  message = errors.flag_error(error)
  if 'Traceback' in message:
    message = f'{message.splitlines()[0]} {message.strip().splitlines()[-1]}'
  return message


def exit_on_unknown_fields(argv, config, error, default: str | None):
  """Names every --config.<field> that the config file lacks, with the fields it has."""
  path = config_arg(argv, default)
  overrides = [arg.split('=')[0] for arg in argv[1:] if arg.startswith('--config.')]
  if overrides and config is None and path:  # parsing stopped before the flag held its config
    config = load(path)
  missing = object()
  unknown = [o for o in overrides
             if config is not None and lookup(config, o[len('--config.'):], missing) is missing]
  if not unknown:
    message = flag_error_message(error)
    hint = (f'{path.partition(":")[0]} documents each field' if message.startswith('flag --config.')
            else '--help lists the flags')
    errors.exit_with(f'error: {message} ({hint}).')
  errors.exit_with(f'error: {", ".join(unknown)}: no such field in {path}. Its fields are: '
                   f'{", ".join(sorted(_field_names(config)))}.')


def parse_flags(argv, default: str | None):
  """absl flag parsing for a program with a --config flag, mistakes reported in one line."""
  try:
    return errors.absl_flags(argv)
  except (flags.Error, AttributeError, KeyError, TypeError) as e:  # config_flags' overrides
    exit_on_unknown_fields(argv, flags.FLAGS['config'].value, e, default)
