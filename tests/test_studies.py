"""studies/: every study end to end at a tiny size, and its numbers against independent references."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from mixer_jax.errors import UserError
from studies import curves, study

ROOT = pathlib.Path(__file__).resolve().parent.parent


def read_png(path, size_inches=None) -> np.ndarray:
  """The decoded picture, checked to be a PNG (signature, decodes, not blank, expected size)."""
  assert pathlib.Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and pixels[..., :3].std() > 0.05
  if size_inches:
    assert pixels.shape[:2] == (round(size_inches[1] * study.DPI), round(size_inches[0] * study.DPI))
  return pixels


def read_json(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


# --- Training curves ---

def write_metrics(workdir: pathlib.Path, records):
  workdir.mkdir(parents=True)
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_curves_summarise_and_plot_several_runs(tmp_path):
  write_metrics(tmp_path / 'a', [
      {'step': 10, 'split': 'train', 'loss': 2.0, 'accuracy': 0.3},
      {'step': 20, 'split': 'train', 'loss': 1.0, 'accuracy': 0.6},
      {'step': 10, 'split': 'test', 'loss': 1.5, 'accuracy': 0.5},
      {'step': 20, 'split': 'test', 'loss': 1.2, 'accuracy': 0.7},
      {'step': 20, 'split': 'test', 'loss': 1.1, 'accuracy': 0.65}])  # re-evaluated: last wins
  write_metrics(tmp_path / 'b', [{'step': 5, 'split': 'train', 'loss': 3.0, 'accuracy': 0.1}])
  curves.main(['curves.py', str(tmp_path / 'a'), str(tmp_path / 'b'), f'--out={tmp_path}'])
  rows = read_json(tmp_path / 'curves.json')['runs']
  assert rows == [{'run': 'a', 'step': 20, 'train_loss': 1.0, 'eval_split': 'test',
                   'accuracy': 0.65, 'best_accuracy': 0.65, 'best_step': 20},
                  {'run': 'b', 'step': 5, 'train_loss': 3.0}]
  read_png(tmp_path / 'curves.png', (9, 3.6))


def test_a_folder_without_metrics_stops_the_command_with_one_line(tmp_path):
  run = subprocess.run([sys.executable, 'studies/curves.py', str(tmp_path), f'--out={tmp_path}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip() == f'error: {tmp_path} has no metrics.jsonl: give the workdirs of train.py runs.'
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "split": "train"}\nnot json\n')
  with pytest.raises(UserError, match=r'metrics.jsonl, line 2, is not a metrics record'):
    curves.main(['curves.py', str(tmp_path)])
