"""dataset=synthetic: device-made batches, a stream that resumes exactly, no TensorFlow needed."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from configs import synthetic as synthetic_config
from mixer_jax import steps, synthetic
from training import ROOT


def small_config():
  config = synthetic_config.get_config('S/32,smoke')
  config.num_classes = 7
  return config


def test_batches_are_random_global_arrays_and_a_resumed_stream_continues_the_same():
  config, mesh = small_config(), steps.create_mesh()
  stream = synthetic.train_batches(config, 0, mesh)
  first = [jax.device_get(next(stream)) for _ in range(4)]
  for batch in first:
    assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.float32
    assert -1 <= batch['image'].min() < -0.9 and 0.9 < batch['image'].max() <= 1
    assert batch['label'].shape == (8,) and set(batch['label']) <= set(range(7))
  assert len({batch['image'].tobytes() for batch in first}) == 4  # a new batch every step
  batch = next(synthetic.train_batches(config, 2, mesh))  # what a run resumed at step 2 sees
  assert batch['image'].sharding.spec == jax.sharding.PartitionSpec(steps.AXIS)
  np.testing.assert_array_equal(jax.device_get(batch['image']), first[2]['image'])
  np.testing.assert_array_equal(jax.device_get(batch['label']), first[2]['label'])
  [evaluation] = list(synthetic.eval_batches(config, 'test', mesh))
  assert np.all(np.asarray(evaluation['mask']) == 1)
  assert not any(np.array_equal(evaluation['image'], b['image']) for b in first)
  config.seed = 1
  assert not np.array_equal(jax.device_get(next(synthetic.train_batches(config, 0, mesh))['image']),
                            first[0]['image'])


def test_train_py_on_synthetic_data_runs_where_tensorflow_is_missing(tmp_path):
  """As on an accelerator machine with JAX alone: metrics.jsonl, no TensorBoard events."""
  block_tensorflow = (
      "import runpy, sys; sys.modules['tensorflow'] = None; "  # `import tensorflow` fails
      f"sys.argv = ['train.py', '--config=configs/synthetic.py:S/32,smoke', "
      f"'--workdir={tmp_path}']; runpy.run_path('train.py', run_name='__main__')")
  run = subprocess.run([sys.executable, '-c', block_tensorflow], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'No TensorBoard events' in run.stderr
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['split'] for r in records] == ['train', 'test']
  assert records[0]['step'] == 3 and np.isfinite(records[0]['loss'])
  assert not list(tmp_path.glob('events.out.tfevents.*'))
  assert 'Final test accuracy' in run.stdout
