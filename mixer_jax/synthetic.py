"""Random images and labels made on the devices: the training loop measured without input.

`dataset=synthetic` serves batches like those of the tf.data pipelines (global arrays split over
the mesh axis `batch`), made by a jitted function on the devices, as big_vision's and timm's
synthetic data are. Batch k depends only on (seed, k), so a resumed run sees the same stream.
No TensorFlow is needed: on a machine with JAX alone this measures the trainer's throughput.
"""
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from mixer_jax import steps

NUM_CLASSES = 1000  # unless the config sets num_classes


def num_classes(config) -> int:
  return config.get('num_classes') or NUM_CLASSES


def _batches(config, key, batch_size: int, mesh, first: int) -> Iterator[dict[str, jax.Array]]:
  """Batch k of the stream of `key`, for k = first, first + 1, ..."""
  shape = (batch_size, config.image_size, config.image_size, 3)

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P(steps.AXIS)))
  def make(index):
    image_key, label_key = jax.random.split(jax.random.fold_in(key, index))
    return {'image': jax.random.uniform(image_key, shape, jnp.float32, -1.0, 1.0),
            'label': jax.random.randint(label_key, shape[:1], 0, num_classes(config))}

  index = first
  while True:
    yield make(index)
    index += 1


def train_batches(config, start_step: int, mesh) -> Iterator[dict[str, jax.Array]]:
  """Endless global training batches from `start_step` on."""
  train_key, _ = jax.random.split(jax.random.key(config.seed))
  return _batches(config, train_key, config.batch_size, mesh, start_step)


def eval_batches(config, split: str, mesh) -> Iterator[dict[str, jax.Array]]:
  """One evaluation batch of other random examples (the accuracy is chance: a code path)."""
  del split
  _, key = jax.random.split(jax.random.key(config.seed))
  batch = next(_batches(config, key, config.eval_batch_size, mesh, 0))
  yield {**batch, 'mask': jnp.ones_like(batch['label'], jnp.float32)}
