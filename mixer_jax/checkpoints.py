"""Checkpoints in and out: orbax training checkpoints, official .npz files, timm weights.

Every loader returns a nested dict of NumPy arrays with the parameter names of
`mixer_jax.models`; `adapt` fits such a tree to a model (new head, higher resolution) and
names every path that does not fit.
"""
import contextlib
import io
import json
import logging as std_logging
import math
import os
import re
import warnings
import zipfile
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from mixer_jax import models, paths, validation
from mixer_jax.errors import UserError, gist


def flatten(tree) -> dict[str, Any]:
  """{'a/b/c': leaf} for a nested dict of arrays (or of anything with a .shape)."""
  if not hasattr(tree, 'items'):
    return {'': tree}
  out = {}
  for key, value in tree.items():
    for sub, leaf in flatten(value).items():
      out[f'{key}/{sub}' if sub else str(key)] = leaf
  return out


def tree_mismatches(expected, found) -> list[str]:
  """One line per missing, unexpected or wrongly shaped leaf; empty when the trees agree."""
  expected, found = flatten(expected), flatten(found)
  lines = [f'{path}: expected {tuple(expected[path].shape)}, missing'
           for path in sorted(expected.keys() - found.keys())]
  lines += [f'{path}: unexpected, found {tuple(found[path].shape)}'
            for path in sorted(found.keys() - expected.keys())]
  lines += [f'{path}: expected {tuple(expected[path].shape)}, found {tuple(found[path].shape)}'
            for path in sorted(expected.keys() & found.keys())
            if tuple(expected[path].shape) != tuple(found[path].shape)]
  return lines


def manager(workdir: epath.Path, keep: int) -> ocp.CheckpointManager:
  # Saves are asynchronous and atomic: a step folder appears only once it is complete, so a
  # run killed while writing leaves the previous checkpoints as they were, plus the partial
  # write in a <step>.orbax-checkpoint-tmp-* folder, which orbax removes here.
  folder = workdir / 'checkpoints'
  unfinished = (sorted(p.name for p in folder.glob('*.orbax-checkpoint-tmp*'))
                if jax.process_index() == 0 and folder.exists() else [])
  if unfinished:
    logging.warning('Removing %d unfinished checkpoint write(s) left by a run stopped while '
                    'saving: %s.', len(unfinished), ', '.join(str(folder / n) for n in unfinished))
  # Only then: orbax's cleanup lists the folder again in a thread of its own on every start.
  return _Manager(
      folder, options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                   cleanup_tmp_directories=bool(unfinished)),
      item_handlers=ocp.StandardCheckpointHandler())


def _writer_thread_error(record, *libraries: str) -> bool:
  """Whether a log record is a report of a failure, with its exception, from these libraries."""
  return bool(record.levelno >= logging.ERROR and record.exc_info
              and any(f'/{name}/' in record.pathname for name in libraries))


def _not_reported_again(record) -> bool:
  """False for orbax's and clu's writer threads' error reports: the error is raised again where
  the run waits for the write, and writes_explained reports it there, in one line."""
  return not _writer_thread_error(record, 'orbax', 'clu')


def _not_an_unretrieved_task(record) -> bool:
  """False for asyncio's report of a task whose error no one retrieved (here orbax's write tasks,
  whose failure orbax reports too)."""
  return 'exception was never retrieved' not in record.getMessage()


def _writer_threads_quiet_for_good():
  # New function objects: writer_threads_quiet removes its own filters as the program unwinds.
  logging.get_absl_logger().addFilter(lambda record: _not_reported_again(record))
  std_logging.getLogger('asyncio').addFilter(lambda record: _not_an_unretrieved_task(record))
  warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)


@contextlib.contextmanager
def writer_threads_quiet():
  """While it lasts, writer threads' reports of a failed write (a traceback each) are dropped,
  and asyncio's of orbax's failed write tasks, which can come before the run stops (with
  several processes, at the next log step or save)."""
  with _filtered_log(_not_reported_again), \
      _filtered_log(_not_an_unretrieved_task, std_logging.getLogger('asyncio')):
    yield


class _Manager(ocp.CheckpointManager):
  """orbax's manager, with a failed write (a full disk, a bucket out of reach) one UserError that
  names the cause and where a rerun resumes.

  With several processes, the error of a write that failed on this one is kept from orbax's log
  report of it: orbax's thread holds it while it waits for the others in a barrier, which they
  reach only after 20 minutes (they wait in another).
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.thread_errors, self.abandoned = [], False
    # First: a filter that drops a record (writer_threads_quiet's) ends the logger's checks.
    logging.get_absl_logger().filters.insert(0, self._keep_thread_error)

  def _keep_thread_error(self, record) -> bool:
    if _writer_thread_error(record, 'orbax'):
      self.thread_errors.append(record.exc_info[1])
    return True  # whether it is shown is writer_threads_quiet's business

  def close(self):
    logging.get_absl_logger().removeFilter(self._keep_thread_error)
    super().close()

  def abandon(self):
    """Gives up on the writes in progress: they are not waited for, and their threads' reports,
    as the processes end under their barriers, are not shown."""
    self.abandoned = True
    _writer_threads_quiet_for_good()

  def _writes(self):  # tensorstore's errors are ValueErrors
    return writes_explained('a checkpoint', self.directory, self.directory, ValueError)

  def save(self, *args, **kwargs):
    with self._writes():
      return super().save(*args, **kwargs)

  def wait_until_finished(self):
    with self._writes():
      super().wait_until_finished()

  def check_for_errors(self):
    """Raises if a save in the background failed: called between saves, so that a run stops soon
    after a lost checkpoint, not one checkpoint interval later. (orbax's own check misses a
    failure that its finalising thread holds; joining that finished thread raises it.)"""
    with self._writes():
      if self.thread_errors:
        raise self.thread_errors[0]
      super().check_for_errors()
      if not self.is_saving_in_progress():
        super().wait_until_finished()


@contextlib.contextmanager
def writes_explained(what: str, where, checkpoints_folder, *more_errors: type[Exception]):
  """A write to a run's workdir that fails (a full disk, a quota, a bucket out of reach) ends
  the run with one UserError naming the cause and the step that the same command resumes from.
  `more_errors`: what else the writer raises for it (tensorstore: ValueError)."""
  try:
    yield
  except UserError:
    raise
  except (*more_errors, *paths.storage_errors()) as e:
    while e.__cause__ is not None:  # e.g. clu's AsyncError, around the error in its thread
      e = e.__cause__
    # Said here once: the writes left undone would each be reported again as the program ends.
    _writer_threads_quiet_for_good()
    code = re.search(r"os_error_code='(\d+)'", str(e))
    cause = (os.strerror(int(code.group(1))) if code else
             e.strerror if isinstance(e, OSError) and e.strerror else gist(e))
    try:
      with reader(epath.Path(checkpoints_folder)) as saved:  # as a rerun finds them
        resumes = (f'resumes from the checkpoint of step {saved.latest_step()}'
                   if saved.latest_step() is not None else 'starts again, as no checkpoint was '
                   'complete')
    except (ValueError, *paths.storage_errors()):  # the storage is out of reach altogether
      resumes = 'resumes from the newest complete checkpoint there, if any'
    raise UserError(
        f'Writing {what} to {where} failed ({cause}), so the run stopped. Free space there '
        '(keep_checkpoints sets how many checkpoints are kept) or restore access, then run the '
        f'same command: it {resumes}.') from e


@contextlib.contextmanager
def _filtered_log(keep, logger=None):
  """Log records (absl's, unless another `logger` is given) for which `keep` is false are
  dropped while the context lasts."""
  logger = logger or logging.get_absl_logger()
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


@contextlib.contextmanager
def reader(folder: epath.Path):
  """A read-only CheckpointManager of `folder` (which may not exist), without orbax's notes."""
  # orbax warns that a read-only manager is read-only: what was asked for, not news.
  quiet = _filtered_log(lambda record: 'read only' not in record.getMessage().replace('_', ' '))
  # Without save_root_metadata, which a reader never writes, orbax's __init__ makes no barrier
  # across processes: one process alone may read (to name the step a failed write resumes from).
  with quiet:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_root_metadata=False)
    with ocp.CheckpointManager(folder, options=options,
                               item_handlers=ocp.PyTreeCheckpointHandler()) as checkpoints:
      yield checkpoints


def _unreadable(checkpoints: ocp.CheckpointManager, step: int, error: Exception) -> UserError:
  return UserError(
      f'The checkpoint {epath.Path(checkpoints.directory) / str(step)} cannot be read; it is '
      f'corrupt or truncated ({gist(error)}). Nothing was deleted. Move that folder out '
      f'of {checkpoints.directory} to resume from the checkpoint before it, or use a new '
      '--workdir to start afresh.')


def _tree(checkpoints: ocp.CheckpointManager, step: int):
  """The shapes and dtypes that the checkpoint of `step` holds."""
  try:
    return checkpoints.item_metadata(step).tree
  except Exception as e:  # orbax and tensorstore raise many kinds of errors here
    raise _unreadable(checkpoints, step, e) from e


def token_mixing_width(checkpoints: ocp.CheckpointManager) -> int | None:
  """The hidden width of the newest checkpoint's token-mixing MLPs; None for another model."""
  tree = _tree(checkpoints, checkpoints.latest_step())
  try:
    return tree['params']['MixerBlock_0']['token_mixing']['Dense_0']['kernel'].shape[-1]
  except (KeyError, TypeError):
    return None


def expansion(width: int, tokens_mlp_dim: int) -> int:
  """K where token-mixing MLPs `width` wide are the K x K expansion of `tokens_mlp_dim` (else 1).

  A fine-tune at K times its weights' resolution widens them K² times (`expand_token_mixing`).
  """
  k = math.isqrt(width // tokens_mlp_dim)
  return k if k > 1 and k * k * tokens_mlp_dim == width else 1


def restore_latest(checkpoints: ocp.CheckpointManager, state, changes: Sequence[str] = ()):
  """(state, step) from the newest checkpoint, or (state, 0) when there is none. `changes`
  ('field: old -> new' against the run's config.json) are named where the state does not fit."""
  step = checkpoints.latest_step()
  if step is None:
    return state, 0
  path = epath.Path(checkpoints.directory) / str(step)
  found = _tree(checkpoints, step)
  resume = ('Resume with the settings this run started with (its config.json' +
            (f'; they differ in {"; ".join(changes)}' if changes else '') +
            '), passed as the same --config and --config.<field> overrides')
  mismatches = tree_mismatches(state.params, found.get('params', {}))
  if mismatches:
    raise UserError(
        f'The checkpoint {path} holds another model than the config describes:\n  '
        + '\n  '.join(mismatches) + f'\n{resume}, or train the new model in a new --workdir.')
  shapes = lambda tree: sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(tree))
  if shapes(found.get('opt_state')) != shapes(state.opt_state):
    raise UserError(
        f'The checkpoint {path} holds the state of another optimizer than the config describes '
        f'(--config.optimizer and its settings). {resume}, or use a new --workdir.')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    return checkpoints.restore(step, args=ocp.args.StandardRestore(abstract)), step
  except Exception as e:
    raise _unreadable(checkpoints, step, e) from e


# --- Official .npz files (google-research/vision_transformer) ---

def save_npz(params, path):
  """Writes parameters as the official checkpoints store them: '/'-joined names -> arrays."""
  with paths.resolve(path).open('wb') as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flatten(params).items()})


def load_npz(path) -> dict[str, Any]:
  """An official (or `save_npz`) .npz file, in the linen or the older pre-linen naming."""
  try:
    data = io.BytesIO(paths.resolve(path).read_bytes())
  except paths.storage_errors() as e:
    raise UserError(f'Cannot read {path} ({gist(e)}).') from e
  if not zipfile.is_zipfile(data):  # else np.load takes it for a pickle and says so
    raise UserError(f'Cannot read {path} as an .npz checkpoint: it is not a zip archive, as an '
                    '.npz is (a truncated download, or another kind of file). Download it again.')
  try:
    with np.load(data) as f:
      flat = {k: f[k] for k in f.files}
  except (ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f'Cannot read {path} as an .npz checkpoint ({e}): it is damaged. Download it '
                    'again.') from e
  params = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})
  return _from_pre_linen(params) if 'Mixer' in params else params


def _from_pre_linen(params):
  """Renames `Mixer/encoderblock_{i}/..._mixing_phase_0/{kernel1,...}` etc. to linen names."""
  # Imported here: it imports TensorFlow, seconds that every start of train.py would wait.
  from flax.training import checkpoints as flax_checkpoints
  params = flax_checkpoints.convert_pre_linen(params)  # LayerNorm_0, LayerNorm_2 -> _0, _1
  mixer = dict(params.pop('Mixer'))
  out = {'stem': params.pop('embedding'), 'pre_head_layer_norm': mixer.pop('encoder_norm'),
         **params}
  two_dense = lambda d: {f'Dense_{i}': {'kernel': np.squeeze(d[f'kernel{i + 1}']),
                                        'bias': np.squeeze(d[f'bias{i + 1}'])} for i in (0, 1)}
  for name, block in mixer.items():
    block = dict(block)
    block['token_mixing'] = two_dense(block.pop('token_mixing_phase_0'))
    block['channel_mixing'] = two_dense(block.pop('channel_mixing_phase_0'))
    out['MixerBlock_' + name.removeprefix('encoderblock_')] = block
  return out


# --- timm's MlpMixer (PyTorch) ---

def _timm_names(num_blocks: int) -> dict[str, tuple[str, str]]:
  """timm name -> (our name, how to convert: 'dense' transposes, 'conv' OIHW -> HWIO)."""
  names = {'stem.proj.weight': ('stem/kernel', 'conv'), 'stem.proj.bias': ('stem/bias', ''),
           'norm.weight': ('pre_head_layer_norm/scale', ''),
           'norm.bias': ('pre_head_layer_norm/bias', ''),
           'head.weight': ('head/kernel', 'dense'), 'head.bias': ('head/bias', '')}
  for i in range(num_blocks):
    for theirs, ours in (('norm1', 'LayerNorm_0'), ('norm2', 'LayerNorm_1')):
      names[f'blocks.{i}.{theirs}.weight'] = (f'MixerBlock_{i}/{ours}/scale', '')
      names[f'blocks.{i}.{theirs}.bias'] = (f'MixerBlock_{i}/{ours}/bias', '')
    for theirs, ours in (('mlp_tokens', 'token_mixing'), ('mlp_channels', 'channel_mixing')):
      for fc, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
        names[f'blocks.{i}.{theirs}.{fc}.weight'] = (f'MixerBlock_{i}/{ours}/{dense}/kernel', 'dense')
        names[f'blocks.{i}.{theirs}.{fc}.bias'] = (f'MixerBlock_{i}/{ours}/{dense}/bias', '')
  return names


_TO_FLAX = {'': lambda w: w, 'dense': lambda w: w.T, 'conv': lambda w: w.transpose(2, 3, 1, 0)}
_TO_TORCH = {'': lambda w: w, 'dense': lambda w: w.T, 'conv': lambda w: w.transpose(3, 2, 0, 1)}


def from_timm(state_dict) -> dict[str, Any]:
  """timm `MlpMixer` weights (a state dict of tensors or arrays) -> our parameter tree."""
  arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
            for k, v in state_dict.items()}
  num_blocks = len({k.split('.')[1] for k in arrays if k.startswith('blocks.')})
  names = _timm_names(num_blocks)
  unknown = sorted(arrays.keys() - names.keys())
  if unknown:
    raise UserError('Not a timm MlpMixer state dict: no counterpart for ' + ', '.join(unknown))
  flat = {tuple(names[k][0].split('/')): _TO_FLAX[names[k][1]](v) for k, v in arrays.items()}
  return traverse_util.unflatten_dict(flat)


def to_timm(params) -> dict[str, np.ndarray]:
  """Our parameter tree -> a timm `MlpMixer` state dict of NumPy arrays (torch.from_numpy each)."""
  flat = flatten(params)
  num_blocks = len({k.split('/')[0] for k in flat if k.startswith('MixerBlock_')})
  return {theirs: np.ascontiguousarray(_TO_TORCH[how](np.asarray(flat[ours])))
          for theirs, (ours, how) in _timm_names(num_blocks).items() if ours in flat}


TIMM_SUFFIXES = ('.pth', '.bin', '.safetensors')


def load_timm(path) -> dict[str, Any]:
  """A timm checkpoint file (.safetensors, .pth or .bin); needs torch except for safetensors."""
  path = paths.resolve(path)
  try:
    if path.suffix == '.safetensors':
      from safetensors import numpy as safetensors_numpy  # comes with timm
      state_dict = safetensors_numpy.load(path.read_bytes())
    else:
      import torch  # optional: only this conversion needs it
      state_dict = torch.load(io.BytesIO(path.read_bytes()), map_location='cpu', weights_only=True)
      # Training scripts wrap it: {'state_dict': ...} (timm's own), {'model': ...} (many others).
      state_dict = state_dict.get('state_dict', state_dict.get('model', state_dict))
  except ImportError as e:
    raise UserError(f'Reading {path} needs {e.name}: pip install {e.name}.') from e
  except Exception as e:  # the parsers' many errors for a file that is not what it says
    detail = gist(e) if str(e) else 'the file ends early: empty or truncated'
    raise UserError(f'Cannot read {path} as timm weights ({type(e).__name__}: {detail}).') from e
  try:
    return from_timm(state_dict)
  except UserError as e:
    raise UserError(f'{path}: {e}') from e


# --- Starting from someone's weights ---

WEIGHT_KINDS = ('give an .npz, .pth, .bin or .safetensors file, a workdir, or a workdir\'s '
                'checkpoints/<step> folder')


def load_params(path, setting: str = 'init_from', mixer: bool = True) -> dict[str, Any]:
  """Parameters from an .npz, a timm file, or one of our workdirs / orbax step folders.

  `path` may be a gs:// URL; `setting` names it in errors. With `mixer`, parameters that are not
  a Mixer's are an error; without, a workdir of any model loads (the studies' baselines).
  """
  resolved = paths.resolve(path)
  try:
    if not resolved.exists():
      if _is_step_folder(resolved) and resolved.parent.is_dir():
        with reader(resolved.parent) as run:
          kept = sorted(run.all_steps())
        if kept:  # a step that the run never saved, or has since deleted (keep_checkpoints)
          raise UserError(f'{setting}={path} does not exist: that run holds the checkpoints of '
                          f'steps {", ".join(map(str, kept))}; give one of those, or the run\'s '
                          'folder for its newest.')
      raise UserError(f'{setting}={path} does not exist: {WEIGHT_KINDS}.')
    if resolved.suffix == '.npz':
      params = load_npz(resolved)
    elif resolved.suffix in TIMM_SUFFIXES:
      params = load_timm(resolved)
    elif resolved.is_dir():
      params = _load_orbax_params(resolved, f'{setting}={path}')
    else:
      raise UserError(f'{setting}={path} is a file of unknown kind: {WEIGHT_KINDS}.')
  except paths.storage_errors() as e:  # e.g. a bucket out of reach or without access
    raise UserError(f'{setting}={path} cannot be read ({gist(e)}): check the path, the '
                    'network and your access to it (for gs://, `gcloud auth application-default '
                    'login`).') from e
  if mixer and not {'stem', 'MixerBlock_0'} <= params.keys():
    raise UserError(f'{setting}={path} holds no Mixer parameters (it has '
                    f'{", ".join(sorted(params)[:8]) or "nothing"}): {WEIGHT_KINDS}.')
  return params


def _load_orbax_params(folder: epath.Path, what: str) -> dict[str, Any]:
  if (folder / 'checkpoints').is_dir():
    folder = folder / 'checkpoints'
  step = None
  if (folder / 'default').is_dir() and folder.name.isdigit():  # a checkpoints/<step> folder
    folder, step = folder.parent, int(folder.name)
  with reader(folder) as checkpoints:
    step = checkpoints.latest_step() if step is None else step
    if step is None:
      run = folder.parent if folder.name == 'checkpoints' else folder
      if (run / 'config.json').exists():  # a train.py run, stopped before its first checkpoint
        raise UserError(f'{what} is a run that has saved no checkpoint yet (train.py saves one '
                        f'every checkpoint_every steps and when stopped): {WEIGHT_KINDS}.')
      raise UserError(f'{what} holds no checkpoint: {WEIGHT_KINDS}.')
    try:
      # Parameters only, as NumPy arrays: the optimiser state stays on disk.
      found = checkpoints.item_metadata(step).tree['params']
      target = {'params': jax.tree.map(lambda m: np.empty(m.shape, m.dtype), found)}
      as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
      return checkpoints.restore(step, args=ocp.args.PyTreeRestore(
          item=target, restore_args=as_numpy, partial_restore=True))['params']
    except Exception as e:  # orbax and tensorstore raise many kinds of errors here
      raise UserError(f'{what}: the checkpoint {folder / str(step)} cannot be read '
                      f'({gist(e)}).') from e


def _is_step_folder(path: epath.Path) -> bool:
  """Whether `path` names a train.py run's checkpoints/<step> folder (which may not exist)."""
  return path.name.isdigit() and path.parent.name == 'checkpoints'


def run_file(weights, name: str) -> epath.Path | None:
  """The file `name` of the train.py run that `weights` (a workdir, its checkpoints folder or a
  checkpoints/<step> folder) is from, where there is one."""
  folder = paths.resolve(weights)
  if not folder.is_dir():
    return None
  if _is_step_folder(folder):
    folder = folder.parent.parent
  elif folder.name == 'checkpoints':
    folder = folder.parent
  path = folder / name
  return path if path.exists() else None


def run_config(path: epath.Path) -> dict[str, Any]:
  """The settings a train.py run saved in its config.json; a damaged file is a UserError."""
  try:
    saved = json.loads(path.read_bytes())
    problem = None if isinstance(saved, dict) else f'a JSON {type(saved).__name__}, not an object'
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    problem = str(e)
  if problem:
    raise UserError(f'{path} is not the settings of a run ({problem}): a run writes that file '
                    'as it starts training; restore it, or delete it to let the next run that '
                    'trains in the workdir write it again.')
  return saved


def trained_gelu(weights) -> bool | None:
  """Whether the weights at `weights` were trained with the tanh-approximate GELU (None: not
  known). The official .npz files were (flax's nn.gelu), timm's were not (PyTorch's nn.GELU),
  and a train.py run's config.json says which it used."""
  suffix = paths.resolve(weights).suffix
  if suffix in ('.npz', *TIMM_SUFFIXES):
    return suffix == '.npz'
  saved = run_file(weights, 'config.json')
  return run_config(saved).get('model', {}).get('approximate_gelu') if saved else None


def model_kwargs(params) -> dict[str, Any]:
  """The architecture a parameter tree describes, and the resolution it was trained at."""
  stem = params['stem']['kernel']
  tokens = params['MixerBlock_0']['token_mixing']['Dense_0']['kernel']
  grid = math.isqrt(tokens.shape[0])
  return dict(num_blocks=sum(k.startswith('MixerBlock_') for k in params),
              patch_size=stem.shape[0], hidden_dim=stem.shape[-1],
              tokens_mlp_dim=tokens.shape[1],
              channels_mlp_dim=params['MixerBlock_0']['channel_mixing']['Dense_0']['kernel'].shape[1],
              num_classes=params['head']['kernel'].shape[1] if 'head' in params else None,
              resolution=grid * stem.shape[0])


def model_flags(params) -> str:
  """How to configure the model `params` are weights of: its Table 1 variant, else its sizes."""
  kw = model_kwargs(params)
  sizes = {k: kw[k] for k in validation.MODEL_SIZES}
  for name, variant in models.VARIANTS.items():
    if variant == sizes:
      return f'fine-tune the variant they were trained with, --config.variant={name}'
  return "set the sizes they were trained with, --config.variant='' " + ' '.join(
      f'--config.model.{k}={v}' for k, v in sizes.items())


def resolution_factor(params, image_size: int, patch_size: int) -> int:
  """K such that a model of `patch_size` at `image_size` is the K x K expansion of `params`
  (1: same size)."""
  kw = model_kwargs(params)
  old, patch = kw['resolution'], kw['patch_size']
  if patch != patch_size:  # else the token counts differ and it looks like a resolution change
    raise UserError(f'The weights have {patch}x{patch} patches, the model the config describes '
                    f'{patch_size}x{patch_size}: {model_flags(params)}.')
  if image_size % old:
    raise UserError(
        f'The weights were trained at {old}x{old} (patch {patch}): a model at {image_size}x'
        f'{image_size} cannot use their token-mixing weights. Fine-tune at {old}, or at an integer '
        f'multiple of it ({", ".join(str(old * k) for k in (2, 3, 4))}, ...), where each token-'
        'mixing MLP is expanded to one block per sub-image (paper Appendix C).')
  return image_size // old


def expand_token_mixing(params, factor: int):
  """Token-mixing MLPs for `factor`-times the resolution: block-diagonal, one block per sub-image.

  The image at the new resolution is split into factor x factor sub-images of the old size;
  the tokens of each (in row-major order, not contiguous) are mixed by a copy of the old
  weights, and the hidden width grows by factor^2 (paper Appendix C).
  """
  if factor == 1:
    return params
  tokens = next(iter(params[k] for k in params if k.startswith('MixerBlock_')))
  grid = math.isqrt(tokens['token_mixing']['Dense_0']['kernel'].shape[0])
  k = factor
  # new_token[sub, t]: the row-major index at the new resolution of token t of sub-image sub.
  r, c = np.divmod(np.arange(grid * grid), grid)
  a, b = np.divmod(np.arange(k * k), k)
  new_token = (a[:, None] * grid + r) * (k * grid) + b[:, None] * grid + c  # (k^2, S)
  out = dict(params)
  for name, block in params.items():
    if not name.startswith('MixerBlock_'):
      continue
    w1, b1 = (np.asarray(block['token_mixing']['Dense_0'][n]) for n in ('kernel', 'bias'))
    w2, b2 = (np.asarray(block['token_mixing']['Dense_1'][n]) for n in ('kernel', 'bias'))
    s, d = w1.shape
    new_w1, new_w2 = np.zeros((k * k * s, k * k * d), w1.dtype), np.zeros((k * k * d, k * k * s), w2.dtype)
    new_b2 = np.zeros(k * k * s, b2.dtype)
    for sub in range(k * k):
      hidden = slice(sub * d, (sub + 1) * d)
      new_w1[new_token[sub], hidden] = w1
      new_w2[hidden, new_token[sub]] = w2
      new_b2[new_token[sub]] = b2
    out[name] = {**block, 'token_mixing': {
        'Dense_0': {'kernel': new_w1, 'bias': np.tile(b1, k * k)},
        'Dense_1': {'kernel': new_w2, 'bias': new_b2}}}
  return out


def adapt(loaded, init_params, factor: int = 1):
  """Fits loaded parameters to a model whose fresh parameters are `init_params`.

  Token mixing is expanded by `factor`; the head is kept when its class count matches and
  replaced by the model's fresh (zero) head otherwise. Anything else that differs is an error
  naming every offending path.
  """
  as_trained, loaded = loaded, expand_token_mixing(dict(loaded), factor)
  if 'head' in init_params and ('head' not in loaded or tree_mismatches(init_params['head'],
                                                                        loaded['head'])):
    logging.info('The weights\' head (%s classes) is replaced by a new zero head of %d classes.',
                 loaded['head']['bias'].shape[-1] if 'head' in loaded else 'no',
                 init_params['head']['bias'].shape[-1])
    loaded['head'] = init_params['head']
  mismatches = tree_mismatches(init_params, loaded)
  if mismatches:
    raise UserError('The weights do not fit the model the config describes:\n  '
                    + '\n  '.join(mismatches)
                    + f'\nTo use these weights, {model_flags(as_trained)}.')
  return jax.tree.map(lambda new, old: np.asarray(old, np.asarray(new).dtype), init_params, loaded)
