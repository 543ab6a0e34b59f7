"""Images/s, FLOP/s and model FLOP utilisation of Mixer inference and training, in one run.

  python benchmarks/throughput.py --variant=S/32 --batch_size=32
  python benchmarks/throughput.py --variant=B/16 --batch_size=8,16,32 --mode=train
  python benchmarks/throughput.py --variant=B/16 --dtype=bfloat16 --batch_size=64,256 --impl=ours

Implementations, all timed in one run:
  ours       mixer_jax.models.MlpMixer (token-major, transpose-free token mixing, matmul stem);
  reference  the official code's formulation (benchmarks/reference_mixer.py): same parameters,
             same process and host settings as ours;
  reference_default_host
             the same, as the official code runs it on a CPU: in a child process with glibc's
             default memory settings (ours keeps freed host memory, see mixer_jax.host);
  timm       timm's MlpMixer in PyTorch (AdamW, clipping), where torch and timm are installed,
             in a child process (with the host setting of ours).
The training step is the trainer's own (forward, backward, gradient all-reduce, Adam with weight
decay and clipping) on random data already on the devices: it measures the accelerator, not the
input pipeline. --batch_size is per device; with several sizes each is measured and the best is
reported, as in the paper. The implementations take turns over --repeats rounds of --steps
steps and each keeps its fastest round, so slow drift on a shared machine hits all alike.

FLOPs are analytic (mixer_jax.flops: matmuls, training = 3x forward). MFU divides the achieved
FLOP/s by the matmul rate this run measures on one device (a square jnp.dot in the compute
dtype, timed in the same rounds as the models) times the number of devices. Memory: XLA's
compiled size of the step (arguments, outputs and temporaries) and, where the backend reports
it, the device's peak bytes in use.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference_mixer  # noqa: E402
from mixer_jax import flops, host, models, optim, steps  # noqa: E402

_VARIANT = flags.DEFINE_string('variant', 'S/32', f'One of {", ".join(models.VARIANTS)}.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Image height and width.')
_BATCH = flags.DEFINE_list('batch_size', ['32'], 'Images per device; several: a sweep.')
_MODE = flags.DEFINE_enum('mode', 'both', ['inference', 'train', 'both'], 'What to time.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_IMPL = flags.DEFINE_list('impl', ['ours', 'reference', 'reference_default_host', 'timm'],
                          'Implementations to time.')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Use the first N devices (0: all).')
_REMAT = flags.DEFINE_bool('remat', False, 'Rematerialise block activations (ours only).')
_STEPS = flags.DEFINE_integer('steps', 0, 'Timed steps per round (0: 3 on CPU, 30 otherwise).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Rounds; each implementation keeps its best.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 0,
                                    'N of the NxN matmul (0: 2048 on CPU, 8192 otherwise).')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Append one JSON line per measurement here.')
_SERVE_ROUNDS = flags.DEFINE_bool(
    'serve_rounds', False, 'Internal: time one implementation in rounds asked for on stdin (the '
    'child process of a run that times timm or reference_default_host).')
_KEEP_MEMORY = flags.DEFINE_bool(
    'keep_freed_memory', True, 'On CPU, keep freed host memory for reuse, as train.py does '
    '(mixer_jax.host); applies to every implementation in the run.')

# Adam with the pre-training recipe's clipping and weight decay; the values do not affect speed.
_RECIPE = types.SimpleNamespace(optimizer='adam', learning_rate=1e-3, warmup_steps=10,
                                total_steps=1000, lr_decay='linear', weight_decay=0.1,
                                grad_clip_norm=1.0)
_TIMM_NAMES = {'S/32': 'mixer_s32_224', 'S/16': 'mixer_s16_224', 'B/32': 'mixer_b32_224',
               'B/16': 'mixer_b16_224', 'L/32': 'mixer_l32_224', 'L/16': 'mixer_l16_224'}


def matmul_rounds(dtype, n: int, device) -> tuple[Callable[[int], float], float]:
  """Rounds of steps of about 0.3 s of n x n x n matmuls on one device (in flight together), as
  local_rounds times them, and the FLOPs of a step."""
  a, b = (jax.device_put(jax.random.normal(jax.random.key(i), (n, n), dtype), device)
          for i in (0, 1))
  dot = jax.jit(jnp.dot)
  calls = int(min(max(0.3 / local_rounds(lambda: dot(a, b), False)(1), 3), 1000))

  def run_step():
    for _ in range(calls):
      out = dot(a, b)
    return out
  return local_rounds(run_step, False), calls * 2 * n ** 3


def local_rounds(run_step: Callable, sync_every_step: bool) -> Callable[[int], float]:
  """Compiles and warms up a step of this process; returns a function timing n steps."""
  for _ in range(2):
    jax.block_until_ready(run_step())

  def run_round(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      out = run_step()
      if sync_every_step:
        jax.block_until_ready(out)
    jax.block_until_ready(out)
    return time.perf_counter() - start
  return run_round


def time_rounds(run_rounds: dict[str, Callable[[int], float]], num_steps: int,
                repeats: int) -> dict[str, float]:
  """Seconds per step of each implementation: fastest of `repeats` rounds, taking turns."""
  best = {name: float('inf') for name in run_rounds}
  for _ in range(repeats):
    for name, run_round in run_rounds.items():
      best[name] = min(best[name], run_round(num_steps) / num_steps)
  return best


def jax_step(impl: str, mode: str, batch_size: int, mesh):
  """A no-argument function running one step, and XLA's compiled memory size of that step."""
  kwargs = dict(num_classes=1000, dtype=jnp.dtype(_DTYPE.value))
  if impl == 'ours':
    model = models.create_model(_VARIANT.value, remat=_REMAT.value, **kwargs)
  else:
    model = reference_mixer.create_reference_model(_VARIANT.value, **kwargs)
  res, n = _RESOLUTION.value, mesh.size
  sharding = NamedSharding(mesh, P(steps.AXIS))
  images = jax.device_put(jax.random.uniform(jax.random.key(0), (n * batch_size, res, res, 3),
                                             minval=-1, maxval=1), sharding)
  batch = {'image': images, 'label': jax.device_put(
      jax.random.randint(jax.random.key(1), (n * batch_size,), 0, 1000), sharding)}
  lr_fn = optim.create_learning_rate_fn(_RECIPE)
  state = steps.create_train_state(model, optim.create_optimizer(_RECIPE, lr_fn), (res, res, 3),
                                   jax.random.key(2), mesh)
  if mode == 'train':
    train_step = steps.make_train_step(model, lr_fn, mesh, num_classes=1000)
    compiled = train_step.lower(state, batch, jax.random.key(3)).compile()
    holder = [state]

    def run_step():
      holder[0], metrics = compiled(holder[0], batch, jax.random.key(3))
      return metrics
  else:
    predict = jax.jit(jax.shard_map(lambda p, x: model.apply({'params': p}, x), mesh=mesh,
                                    in_specs=(P(), P(steps.AXIS)), out_specs=P(steps.AXIS)))
    compiled = predict.lower(state.params, images).compile()
    run_step = lambda: compiled(state.params, images)
  memory = compiled.memory_analysis()
  step_bytes = None
  if memory is not None:
    step_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                  + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return run_step, step_bytes


def timm_step(mode: str, batch_size: int):
  """timm's MlpMixer on the matching torch device, or None where it cannot run here."""
  try:
    import torchvision  # noqa: F401  (imported before timm, which needs it)
    import timm
    import torch
  except ImportError:
    print('timm: not installed (pip install torch torchvision timm), skipped')
    return None
  if _VARIANT.value not in _TIMM_NAMES or _DEVICES.value > 1:
    print(f'timm: no {_VARIANT.value} model or several devices asked for, skipped')
    return None
  on_gpu = jax.default_backend() == 'gpu' and torch.cuda.is_available()
  device = 'cuda' if on_gpu else 'cpu'
  if not on_gpu:
    torch.set_num_threads(os.cpu_count())
  amp = torch.autocast(device, torch.bfloat16, enabled=_DTYPE.value == 'bfloat16')
  model = timm.create_model(_TIMM_NAMES[_VARIANT.value], num_classes=1000,
                            img_size=_RESOLUTION.value).to(device)
  x = torch.rand(batch_size, 3, _RESOLUTION.value, _RESOLUTION.value, device=device) * 2 - 1
  y = torch.randint(0, 1000, (batch_size,), device=device)
  if mode == 'train':
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    def run_step():
      opt.zero_grad(set_to_none=True)
      with amp:
        loss = torch.nn.functional.cross_entropy(model(x), y)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      return _TorchSync(loss)
  else:
    model.eval()

    def run_step():
      with torch.inference_mode(), amp:
        return _TorchSync(model(x))
  return run_step


class _TorchSync:
  """Lets time_rounds wait for a torch result as jax.block_until_ready does for JAX."""

  def __init__(self, tensor):
    self.tensor = tensor

  def block_until_ready(self):
    self.tensor.sum().item()
    return self


def peak_bytes(devices) -> int | None:
  stats = [d.memory_stats() for d in devices]
  return None if None in stats else max(s.get('peak_bytes_in_use', 0) for s in stats)


# Implementations timed in a child process of this run, and what the child times.
_CHILDREN = {'timm': 'timm', 'reference_default_host': 'reference'}


def keeps_freed_memory(impl: str, kept: bool) -> bool:
  """Whether `impl` runs with the host setting that this run has (`kept`) on."""
  return kept and impl != 'reference_default_host'


class ChildRounds:
  """`impl` timed by this tool in a child process, one round whenever called.

  timm: PyTorch's and XLA's thread pools each claim every core; in one process, whichever runs
  second finds the other's threads still spinning. reference_default_host: the reference
  formulation as the official code runs it, with glibc's default memory settings, which are
  process-wide. The child compiles and warms up, then waits on stdin, so its rounds take turns
  with this process's and a slow spell of a shared machine hits all alike.
  """

  def __init__(self, impl: str, mode: str, batch_size: int):
    self.impl, self._log = impl, tempfile.TemporaryFile('w+')
    keep = keeps_freed_memory(impl, _KEEP_MEMORY.value)
    self._child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--serve_rounds', f'--impl={_CHILDREN[impl]}',
         f'--mode={mode}', f'--batch_size={batch_size}', f'--variant={_VARIANT.value}',
         f'--resolution={_RESOLUTION.value}', f'--dtype={_DTYPE.value}',
         f'--keep_freed_memory={keep}', f'--devices={_DEVICES.value}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)

  def ready(self) -> bool:
    """Waits for the child's warm-up; False (and why, printed) if it cannot time `impl`."""
    output = []
    while (line := self._child.stdout.readline()) not in ('ready\n', ''):
      output.append(line)
    if line:
      return True
    print(f'{self.impl}: skipped ({self._last_words("".join(output))})', flush=True)
    self.close()
    return False

  def __call__(self, num_steps: int) -> float:
    self._child.stdin.write(f'{num_steps}\n')
    self._child.stdin.flush()
    if not (line := self._child.stdout.readline()):
      raise RuntimeError(f'{self.impl}: the child process ended ({self._last_words()})')
    return float(line)

  def _last_words(self, output: str = '') -> str:
    """The child's last line on stdout (where it says why it skips), else on stderr."""
    self._log.seek(0)
    return ' '.join((output.strip() or self._log.read().strip()).splitlines()[-1:])

  def close(self):
    self._child.stdin.close()
    self._child.wait()
    self._log.close()


def serve_rounds(mode: str, batch_size: int, mesh) -> None:
  """The child of ChildRounds: times its one implementation for each round asked on stdin."""
  [impl] = _IMPL.value
  run_step = (timm_step(mode, batch_size) if impl == 'timm'
              else jax_step(impl, mode, batch_size, mesh)[0])
  if run_step is None:
    return
  run_round = local_rounds(run_step, jax.default_backend() == 'cpu')
  print('ready', flush=True)
  for line in sys.stdin:
    print(run_round(int(line)), flush=True)


def measure(mode: str, batch_size: int, mesh, matmul: tuple[Callable, float],
            num_steps: int) -> list[dict]:
  """One line per implementation for this mode and batch size.

  Every implementation, those in child processes included, and the matmul that sets the rate
  for MFU take turns in the same rounds: a slow spell of a shared machine cannot favour any side
  of a ratio.
  """
  on_cpu = jax.default_backend() == 'cpu'
  if not on_cpu and 'reference_default_host' in _IMPL.value:
    print('reference_default_host: the same as reference off the CPU, skipped', flush=True)
  children = [ChildRounds(impl, mode, batch_size) for impl in _IMPL.value
              if impl in _CHILDREN and (on_cpu or impl != 'reference_default_host')]
  # One step in flight on CPU, as the trainer does: collectives can deadlock otherwise, and a
  # step dispatched early allocates its buffers while the previous one still holds its own.
  run_rounds, step_bytes = {'matmul': matmul[0]}, {}
  for impl in _IMPL.value:
    if impl not in _CHILDREN:
      run_step, step_bytes[impl] = jax_step(impl, mode, batch_size, mesh)
      run_rounds[impl] = local_rounds(run_step, sync_every_step=on_cpu)
  run_rounds.update({child.impl: child for child in children if child.ready()})
  model = models.create_model(_VARIANT.value, num_classes=1000)  # the FLOPs of every impl
  per_image = (flops.train_step_flops if mode == 'train' else flops.forward_flops)(
      model, _RESOLUTION.value)
  seconds = time_rounds(run_rounds, num_steps, _REPEATS.value)
  matmul_rate = matmul[1] / seconds.pop('matmul')
  for child in run_rounds.values():
    if isinstance(child, ChildRounds):
      child.close()
  peak = peak_bytes(mesh.devices.flat)
  results = []
  for impl, s in sorted(seconds.items(), key=lambda item: _IMPL.value.index(item[0])):
    devices = 1 if impl == 'timm' else mesh.size
    images_per_sec = devices * batch_size / s
    results.append({
        'impl': impl, 'variant': _VARIANT.value, 'resolution': _RESOLUTION.value, 'mode': mode,
        'dtype': _DTYPE.value, 'remat': _REMAT.value and impl == 'ours', 'devices': devices,
        'device_kind': mesh.devices.flat[0].device_kind, 'batch_per_device': batch_size,
        'step_ms': 1e3 * s, 'images_per_sec': images_per_sec,
        'images_per_sec_per_device': images_per_sec / devices,
        'gflops_per_image': per_image / 1e9,
        'tflops_per_sec': images_per_sec * per_image / 1e12,
        'matmul_tflops_per_sec_per_device': matmul_rate / 1e12,
        'mfu': images_per_sec * per_image / (matmul_rate * devices),
        'step_memory_gb': step_bytes[impl] / 1e9 if step_bytes.get(impl) else None,
        'peak_memory_gb': None if impl in _CHILDREN or peak is None else peak / 1e9,
        'jax_version': jax.__version__, 'date': time.strftime('%Y-%m-%d %H:%M'),
    })
  return results


def report(r: dict) -> None:
  memory = ''.join(f", {label} {r[key]:.2f} GB" for key, label in
                   (('step_memory_gb', 'step'), ('peak_memory_gb', 'peak')) if r[key])
  print(f"{r['impl']:{max(map(len, _IMPL.value))}s} {r['variant']} {r['resolution']}px {r['mode']:9s} {r['dtype']} "
        f"{r['devices']}x {r['device_kind']} batch/device {r['batch_per_device']}: "
        f"{r['images_per_sec']:.1f} img/s ({r['images_per_sec_per_device']:.1f}/device), "
        f"{r['step_ms']:.1f} ms/step, {r['tflops_per_sec'] * 1e3:.1f} GFLOP/s, "
        f"MFU {r['mfu']:.3f} (matmul {r['matmul_tflops_per_sec_per_device'] * 1e3:.0f} GFLOP/s)"
        f"{memory}", flush=True)


def main(argv):
  del argv
  kept = _KEEP_MEMORY.value and host.keep_freed_memory_on_cpu()  # before JAX's backend starts
  devices = jax.devices()[:_DEVICES.value or None]
  mesh = jax.make_mesh((len(devices),), (steps.AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,))
  on_cpu = jax.default_backend() == 'cpu'
  modes = ['inference', 'train'] if _MODE.value == 'both' else [_MODE.value]
  if _SERVE_ROUNDS.value:
    return serve_rounds(modes[0], int(_BATCH.value[0]), mesh)
  num_steps = _STEPS.value or (3 if on_cpu else 30)
  n = _MATMUL_SIZE.value or (2048 if on_cpu else 8192)
  matmul = matmul_rounds(jnp.dtype(_DTYPE.value), n, devices[0])
  print(f'MFU against the rate of a {n}x{n} {_DTYPE.value} matmul on one {devices[0].device_kind} '
        f'device, timed in the same rounds; freed host memory kept: {kept}', flush=True)
  for mode in modes:
    best = {}
    for batch_size in map(int, _BATCH.value):
      for r in measure(mode, batch_size, mesh, matmul, num_steps):
        r['keep_freed_memory'] = keeps_freed_memory(r['impl'], kept)
        report(r)
        if _JSON_OUT.value:
          with open(_JSON_OUT.value, 'a') as f:
            f.write(json.dumps(r) + '\n')
        if r['images_per_sec'] > best.get(r['impl'], {}).get('images_per_sec', 0):
          best[r['impl']] = r
    if len(_BATCH.value) > 1:
      print(f'Best batch, {mode}:')
      for r in best.values():
        report(r)
    if 'ours' in best:
      ratios = ', '.join(f"{best['ours']['images_per_sec'] / r['images_per_sec']:.2f}x {impl}"
                         for impl, r in best.items() if impl != 'ours')
      print(f'ours, {mode}, best batches: {ratios or "nothing to compare"}', flush=True)


if __name__ == '__main__':
  app.run(main)
