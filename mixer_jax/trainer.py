"""Training and evaluation loop: data-parallel over every device, resumable from the workdir."""
import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
import tqdm
from absl import logging
from clu import metric_writers

from mixer_jax import input_pipeline, models, optim, steps


def build_model(config, num_classes: int) -> models.MlpMixer:
  """A Table 1 variant (`config.variant`) or a custom Mixer; `config.model` overrides fields."""
  kwargs = dict(num_classes=num_classes, stoch_depth=config.stoch_depth,
                dtype=jax.numpy.dtype(config.dtype), **config.model)
  if config.variant:
    return models.create_model(config.variant, **kwargs)
  return models.MlpMixer(**kwargs)


def evaluate(eval_step, state, config, mesh, split: str = 'test') -> dict[str, float]:
  """Exact loss and accuracy over the whole split (padding is masked out)."""
  ds = input_pipeline.create_eval_dataset(config, split, jax.process_index(), jax.process_count())
  totals = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in ds.as_numpy_iterator():
    sums = jax.device_get(eval_step(state, steps.shard_batch(batch, mesh)))
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  return {'loss': totals['loss'] / totals['count'],
          'accuracy': totals['correct'] / totals['count']}


class MetricsLog:
  """TensorBoard events (through clu) plus one JSON line per record, from process 0 only."""

  def __init__(self, workdir: pathlib.Path):
    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(str(workdir), just_logging=not self.is_main)
    self.path = workdir / 'metrics.jsonl'

  def write(self, step: int, split: str, metrics: dict[str, float]):
    self.writer.write_scalars(step, {f'{split}/{k}': v for k, v in metrics.items()})
    if self.is_main:
      with self.path.open('a') as f:
        f.write(json.dumps({'step': step, 'split': split, **metrics}) + '\n')

  def close(self):
    self.writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains to `config.total_steps`, resuming from the newest checkpoint in `workdir`.

  Returns the final evaluation metrics, also written to `workdir/results.json`.
  """
  tf.config.set_visible_devices([], 'GPU')  # tf.data runs on the host; leave accelerators to JAX
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = steps.create_mesh()
  steps.check_batch_size(config.batch_size, jax.device_count())
  steps.check_batch_size(config.eval_batch_size, jax.device_count(), 'eval_batch_size')

  model = build_model(config, input_pipeline.num_classes(config))
  learning_rate_fn = optim.create_learning_rate_fn(config)
  tx = optim.create_optimizer(config, learning_rate_fn)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  image_shape = (config.image_size, config.image_size, 3)
  state = steps.create_train_state(model, tx, image_shape, init_rng, mesh)

  checkpoints = ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints))
  start_step = 0
  if checkpoints.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(abstract))
    start_step = int(state.step)
    logging.info('Resumed from %s at step %d.', checkpoints.directory, start_step)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))

  train_step = steps.make_train_step(model, learning_rate_fn, mesh)
  eval_step = steps.make_eval_step(mesh)
  log = MetricsLog(workdir)
  train_iter = input_pipeline.create_train_dataset(
      config, start_step, jax.process_index(), jax.process_count()).as_numpy_iterator()
  # Several CPU devices on few cores can deadlock in all-reduce with more than one step in
  # flight; accelerators keep asynchronous dispatch and sync only when logging.
  one_step_in_flight = jax.default_backend() == 'cpu'

  progress = tqdm.tqdm(total=config.total_steps, initial=start_step, unit='step',
                       disable=jax.process_index() != 0, mininterval=1.0)
  pending, interval_start = [], time.perf_counter()
  for step in range(start_step + 1, config.total_steps + 1):
    state, metrics = train_step(state, steps.shard_batch(next(train_iter), mesh), dropout_rng)
    if one_step_in_flight:
      jax.block_until_ready(metrics)
    pending.append(metrics)
    progress.update(1)

    if step % config.log_every == 0 or step == config.total_steps:
      summary = {k: float(np.mean(v)) for k, v in
                 jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending)).items()}
      summary['steps_per_sec'] = len(pending) / (time.perf_counter() - interval_start)
      log.write(step, 'train', summary)
      progress.set_postfix(loss=f"{summary['loss']:.4f}", lr=f"{summary['learning_rate']:.2e}")
      pending, interval_start = [], time.perf_counter()
    if step % config.eval_every == 0 and step != config.total_steps:
      log.write(step, 'test', evaluate(eval_step, state, config, mesh))
    if step % config.checkpoint_every == 0 or step == config.total_steps:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
  progress.close()
  checkpoints.wait_until_finished()
  checkpoints.close()

  results = evaluate(eval_step, state, config, mesh)
  log.write(config.total_steps, 'test', results)
  log.close()
  results = {'step': config.total_steps, 'test_accuracy': results['accuracy'],
             'test_loss': results['loss']}
  if jax.process_index() == 0:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
  return results
