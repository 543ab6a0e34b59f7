"""Data-parallel training and evaluation steps, pmap style.

Each step is written for one device (its slice of the batch) and averages gradients and
metrics over the mesh axis `batch`; `jax.shard_map` under `jax.jit` maps it over all devices
of all processes. Parameters and optimiser state are replicated; batches are split on axis 0.
"""
import collections
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from mixer_jax.errors import UserError

AXIS = 'batch'


def create_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (AXIS,))


def check_batch_size(batch_size: int, num_devices: int, name: str = 'batch_size') -> int:
  """The per-device batch; a global batch that does not split evenly is a config error."""
  if batch_size % num_devices:
    raise UserError(
        f'{name}={batch_size} does not divide evenly over {num_devices} devices: use a '
        f'multiple of {num_devices} (e.g. {max(batch_size // num_devices, 1) * num_devices}).')
  return batch_size // num_devices


def create_train_state(model, tx: optax.GradientTransformation, image_shape, rng,
                       mesh) -> train_state.TrainState:
  """Initialises parameters and optimiser state, replicated over the mesh."""
  def init():
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return train_state.TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx)
  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def shard_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's part of the global batch -> global arrays split over `batch`."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def mixup(rng, images, labels, alpha: float):
  """Mixes each example with its neighbour in the batch, images and one-hot labels alike.

  One weight lam ~ Beta(alpha, alpha) per (device) batch: x <- lam x + (1 - lam) roll(x).
  """
  lam = jax.random.beta(rng, alpha, alpha)
  mix = lambda x: lam * x + (1 - lam) * jnp.roll(x, 1, axis=0)
  return mix(images), mix(labels)


def prefetch_to_mesh(batches, mesh, size: int = 2):
  """Yields global arrays, copying up to `size` batches ahead so the devices need not wait."""
  queue = collections.deque()
  for batch in batches:
    queue.append(shard_batch(batch, mesh))
    if len(queue) == size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def make_train_step(model, learning_rate_fn, mesh, num_classes: int, mixup_alpha: float = 0.0,
                    accum_steps: int = 1) -> Callable[..., Any]:
  """(state, batch, rng) -> (state, metrics); the input state's buffers are donated.

  With accum_steps > 1 each device's batch is processed in that many micro-batches whose
  gradients are averaged: the same update with a fraction of the activation memory.
  """

  def loss_fn(params, apply_fn, images, labels, rng):
    logits = apply_fn({'params': params}, images, train=True, rngs={'dropout': rng})
    return optax.softmax_cross_entropy(logits, labels).mean(), logits

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def device_step(state, batch, rng):
    # Different dropout (stochastic depth) and mixup draws on every step and device.
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    dropout_rng, mixup_rng = jax.random.split(rng)
    images, labels = batch['image'], jax.nn.one_hot(batch['label'], num_classes)
    if mixup_alpha > 0:
      images, labels = mixup(mixup_rng, images, labels, mixup_alpha)

    # Differentiate this device's copy: otherwise shard_map's transpose of the implicit
    # broadcast would already sum gradients over devices, and the pmean below would not average.
    params = jax.lax.pcast(state.params, AXIS, to='varying')
    if accum_steps == 1:
      (loss, logits), grads = grad_fn(params, state.apply_fn, images, labels, dropout_rng)
    else:
      micro = lambda x: x.reshape(accum_steps, -1, *x.shape[1:])

      def accumulate(total, inputs):
        (loss, logits), grads = grad_fn(params, state.apply_fn, *inputs)
        return jax.tree.map(jnp.add, total, (loss, grads)), logits

      zero = (jax.lax.pcast(jnp.zeros(()), AXIS, to='varying'),
              jax.tree.map(jnp.zeros_like, params))
      (loss, grads), logits = jax.lax.scan(accumulate, zero, (
          micro(images), micro(labels), jax.random.split(dropout_rng, accum_steps)))
      loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
      logits = logits.reshape(-1, logits.shape[-1])
    grads = jax.lax.pmean(grads, AXIS)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'grad_norm': optax.global_norm(grads),
        'learning_rate': learning_rate_fn(state.step),
    }
    return state.apply_gradients(grads=grads), jax.lax.pmean(metrics, AXIS)

  step = jax.shard_map(device_step, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def make_eval_step(mesh) -> Callable[..., Any]:
  """(params, batch) -> summed loss, correct count and example count over the mesh.

  `batch['mask']` is 0 for padding, so the last partial batch is counted exactly.
  """

  def device_step(state, batch):
    logits = state.apply_fn({'params': state.params}, batch['image'], train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    sums = {'loss': jnp.sum(loss * batch['mask']),
            'correct': jnp.sum(correct * batch['mask']),
            'count': jnp.sum(batch['mask'])}
    return jax.lax.psum(sums, AXIS)

  return jax.jit(jax.shard_map(device_step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P()))
