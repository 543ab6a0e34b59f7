"""Images/s of inference and of a full training step, on every available device.

  python benchmarks/throughput.py --variant=B/16 --resolution=224 --batch_size=32
  python benchmarks/throughput.py --variant=S/32 --mode=train --dtype=bfloat16 --batch_size=256

--batch_size is per device. The training step is the trainer's own (forward, backward, gradient
all-reduce, Adam update with clipping) on random data already on the devices, so this measures
the accelerator, not the input pipeline. FLOPs are analytic (mixer_jax.flops); training counts
3x the forward pass. One line per measurement, and a JSON line per measurement with --json_out.
"""
import json
import os
import sys
import time
import types

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mixer_jax import flops, models, optim, steps  # noqa: E402

_VARIANT = flags.DEFINE_string('variant', 'B/16', f'One of {", ".join(models.VARIANTS)}.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Image height and width.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Images per device.')
_MODE = flags.DEFINE_enum('mode', 'both', ['inference', 'train', 'both'], 'What to time.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_STEPS = flags.DEFINE_integer(
    'steps', 10, 'Timed steps, after 2 untimed warm-up steps (use 30 or more on GPUs).')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Append one JSON line per measurement here.')

# Adam with the pre-training recipe's clipping and weight decay; the values do not affect speed.
_RECIPE = types.SimpleNamespace(optimizer='adam', learning_rate=1e-3, warmup_steps=10,
                                total_steps=1000, lr_decay='linear', weight_decay=0.1,
                                grad_clip_norm=1.0)


def time_steps(run_step, num_steps: int, sync_every_step: bool) -> float:
  """Seconds per step, after two warm-up steps (the first compiles)."""
  for _ in range(2):
    jax.block_until_ready(run_step())
  start = time.perf_counter()
  for _ in range(num_steps):
    out = run_step()
    if sync_every_step:
      jax.block_until_ready(out)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / num_steps


def measure(mode: str) -> dict:
  model = models.create_model(_VARIANT.value, num_classes=1000, dtype=jnp.dtype(_DTYPE.value))
  mesh = steps.create_mesh()
  n = jax.device_count()
  batch = {
      'image': jax.random.uniform(jax.random.key(0), (n * _BATCH.value, _RESOLUTION.value,
                                                      _RESOLUTION.value, 3), minval=-1, maxval=1),
      'label': jax.random.randint(jax.random.key(1), (n * _BATCH.value,), 0, 1000),
  }
  batch = jax.device_put(batch, NamedSharding(mesh, P(steps.AXIS)))
  lr_fn = optim.create_learning_rate_fn(_RECIPE)
  state = steps.create_train_state(model, optim.create_optimizer(_RECIPE, lr_fn),
                                   (_RESOLUTION.value, _RESOLUTION.value, 3), jax.random.key(2),
                                   mesh)
  # CPU collectives can deadlock with several steps in flight (see trainer).
  sync = jax.default_backend() == 'cpu' and n > 1
  if mode == 'train':
    train_step = steps.make_train_step(model, lr_fn, mesh, num_classes=1000)
    holder = [state]

    def run_step():
      holder[0], metrics = train_step(holder[0], batch, jax.random.key(3))
      return metrics
    flops_per_image = flops.train_step_flops(model, _RESOLUTION.value)
  else:
    predict = jax.jit(lambda params, images: model.apply({'params': params}, images))
    run_step = lambda: predict(state.params, batch['image'])
    flops_per_image = flops.forward_flops(model, _RESOLUTION.value)

  seconds = time_steps(run_step, _STEPS.value, sync)
  images_per_sec = n * _BATCH.value / seconds
  return {
      'variant': _VARIANT.value, 'resolution': _RESOLUTION.value, 'mode': mode,
      'dtype': _DTYPE.value, 'devices': n, 'device_kind': jax.devices()[0].device_kind,
      'batch_per_device': _BATCH.value, 'step_ms': 1e3 * seconds,
      'images_per_sec': images_per_sec, 'images_per_sec_per_device': images_per_sec / n,
      'gflops_per_image': flops_per_image / 1e9,
      'tflops_per_sec': images_per_sec * flops_per_image / 1e12,
  }


def main(argv):
  del argv
  modes = ['inference', 'train'] if _MODE.value == 'both' else [_MODE.value]
  for mode in modes:
    r = measure(mode)
    print(f"{r['variant']} {r['resolution']}px {r['mode']:9s} {r['dtype']} "
          f"{r['devices']}x {r['device_kind']} batch/device {r['batch_per_device']}: "
          f"{r['images_per_sec']:.1f} img/s ({r['images_per_sec_per_device']:.1f}/device), "
          f"{r['step_ms']:.1f} ms/step, {r['gflops_per_image']:.2f} GFLOP/image, "
          f"{r['tflops_per_sec']:.3f} TFLOP/s", flush=True)
    if _JSON_OUT.value:
      with open(_JSON_OUT.value, 'a') as f:
        f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  app.run(main)
