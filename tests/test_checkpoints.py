"""Checkpoints that cannot be resumed give errors naming the problem, and nothing is deleted."""
import pathlib

import pytest

from mixer_jax import checkpoints, trainer
from mixer_jax.errors import UserError
from test_train import small_config


def step_folders(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir())


def test_tree_mismatches_name_every_offending_path():
  import numpy as np
  expected = {'stem': {'kernel': np.zeros((4, 4, 3, 8)), 'bias': np.zeros(8)},
              'head': {'kernel': np.zeros((8, 10))}}
  found = {'stem': {'kernel': np.zeros((4, 4, 3, 16)), 'bias': np.zeros(8)},
           'extra': {'kernel': np.zeros((2,))}}
  assert checkpoints.tree_mismatches(expected, found) == [
      'head/kernel: expected (8, 10), missing',
      'extra/kernel: unexpected, found (2,)',
      'stem/kernel: expected (4, 4, 3, 8), found (4, 4, 3, 16)',
  ]
  assert checkpoints.tree_mismatches(expected, expected) == []


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
  trainer.train_and_evaluate(small_config(total_steps=10, checkpoint_every=10), str(tmp_path))
  wider = small_config(total_steps=20)
  wider.model.hidden_dim = 96
  with pytest.raises(UserError) as error:
    trainer.train_and_evaluate(wider, str(tmp_path))
  message = str(error.value)
  assert 'holds another model than the config describes' in message
  assert 'stem/kernel: expected (4, 4, 3, 96), found (4, 4, 3, 128)' in message
  assert 'config.json' in message and 'new --workdir' in message
  assert step_folders(tmp_path) == [10]


@pytest.mark.parametrize('damage', ['truncate', 'delete_metadata'])
def test_corrupt_checkpoint_is_a_clear_error_and_keeps_the_others(tmp_path, damage):
  trainer.train_and_evaluate(small_config(total_steps=20, checkpoint_every=10), str(tmp_path))
  newest = tmp_path / 'checkpoints' / '20'
  files = [p for p in newest.rglob('*') if p.is_file()]
  if damage == 'truncate':  # every file cut short, as after a full disk
    for path in files:
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
  else:
    for path in files:
      if 'METADATA' in path.name.upper():
        path.unlink()
  with pytest.raises(UserError, match=r'checkpoints/20 cannot be read; it is corrupt or '
                     r'truncated.*Nothing was deleted. Move that folder out'):
    trainer.train_and_evaluate(small_config(total_steps=30), str(tmp_path))
  assert step_folders(tmp_path) == [10, 20]
