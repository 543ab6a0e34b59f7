"""Checkpoints: orbax training checkpoints in the workdir, with errors that say what is wrong."""
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from mixer_jax.errors import UserError


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


def manager(workdir: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  # Saves are asynchronous and atomic: a step folder appears only once it is complete, so a
  # run killed while writing leaves the previous checkpoints as they were.
  return ocp.CheckpointManager(workdir / 'checkpoints',
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep),
                               item_handlers=ocp.StandardCheckpointHandler())


def restore_latest(checkpoints: ocp.CheckpointManager, state):
  """(state, step) from the newest checkpoint, or (state, 0) when there is none."""
  step = checkpoints.latest_step()
  if step is None:
    return state, 0
  path = pathlib.Path(checkpoints.directory) / str(step)
  unreadable = (
      f'The checkpoint {path} cannot be read; it is corrupt or truncated ({{error}}). Nothing '
      f'was deleted. Move that folder out of {checkpoints.directory} to resume from the '
      f'checkpoint before it, or use a new --workdir to start afresh.')
  try:
    found = checkpoints.item_metadata(step).tree
  except Exception as e:  # orbax and tensorstore raise many kinds of errors here
    raise UserError(unreadable.format(error=(str(e).splitlines() or [type(e).__name__])[0])) from e
  mismatches = tree_mismatches(state.params, found.get('params', {}))
  if mismatches:
    raise UserError(
        f'The checkpoint {path} holds another model than the config describes:\n  '
        + '\n  '.join(mismatches) + '\nResume with the config this run started with '
        '(saved as config.json beside checkpoints/), or train the new model in a new --workdir.')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    return checkpoints.restore(step, args=ocp.args.StandardRestore(abstract)), step
  except Exception as e:
    raise UserError(unreadable.format(error=(str(e).splitlines() or [type(e).__name__])[0])) from e
