"""Images/s, FLOP/s and model FLOP utilisation of Mixer inference and training, in one run.

  python benchmarks/throughput.py --variant=S/32 --batch_size=32
  python benchmarks/throughput.py --variant=B/16 --batch_size=8,16,32 --mode=train
  python benchmarks/throughput.py --variant=all --dtype=bfloat16 --impl=ours,reference   # GPU/TPU

Implementations, all timed in one run:
  ours       the formulation measured fastest on this platform (mixer_jax.formulations.MEASURED;
             the plain one where nothing was measured);
  reference  the plain formulation of mixer_jax/models.py, as the official code computes it;
  token_major, matmul_stem, plain, cpu
             a named formulation (mixer_jax.formulations.NAMED), on any platform: how a choice
             is measured on a new platform;
  reference_default_host
             the reference as the official code runs on a CPU: in a child process with glibc's
             default memory settings (the others keep freed host memory, see mixer_jax.host);
  timm       timm's MlpMixer in PyTorch (AdamW, clipping), where torch and timm are installed,
             in a child process (with the host setting of ours).
Implementations that are the same formulation here are timed once and reported under each name.
The training step is the trainer's own (forward, backward, gradient all-reduce, Adam with weight
decay and clipping) on random data already on the devices: it measures the accelerator, not the
input pipeline. --batch_size is per device; with several sizes each that fits is measured and
the best reported, as in the paper (`auto`: 32 on CPU, AUTO_BATCH_SIZES on accelerators);
--largest_that_fits measures only the largest of them that fits each step, trying the next
smaller where one does not (a GPU runs fastest at the largest batch that fits: half the
compilations of a sweep).
The implementations take turns over --repeats rounds and each keeps its fastest round, so slow
drift on a shared machine hits all alike. On accelerators each variant's steps are compiled in
parallel threads before any is timed; a persistent compilation cache (JAX_COMPILATION_CACHE_DIR)
makes a second run skip compilation.

FLOPs are analytic (mixer_jax.flops: matmuls, training = 3x forward). MFU divides the achieved
FLOP/s by the matmul rate this run measures on one device (a square jnp.dot in the compute
dtype, timed in the same rounds as the models) times the number of devices. Memory: XLA's
compiled size of the step (arguments, outputs and temporaries) and, where the backend reports
it, the device's peak bytes in use.
"""
import concurrent.futures
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
from benchmarks import accelerator_summary  # noqa: E402
from mixer_jax import errors, flops, formulations, host, models, optim, paths, steps  # noqa: E402

# Per-device batch sizes tried on accelerators (`--batch_size=auto`), smallest first. Each
# costs a compilation of every step (15-60 s on an H200): B/16 at 256 was 2% slower than at 512.
# With --largest_that_fits (the accelerator check) the larger is compiled first and the smaller
# only where the larger does not fit (an 80 GB H100 against a 141 GB H200).
AUTO_BATCH_SIZES = {'S/32': (512, 1024), 'S/16': (256, 512), 'B/32': (256, 512), 'B/16': (512,),
                    'L/32': (256, 512), 'L/16': (128, 256), 'H/14': (64, 128)}
_CHILDREN = {'timm': 'timm', 'reference_default_host': 'reference'}  # impl: what the child times
_JAX_IMPLS = ['ours', 'reference', *formulations.NAMED]
_IMPLS = [*_JAX_IMPLS, *_CHILDREN]

_VARIANT = flags.DEFINE_list('variant', ['S/32'], f'Some of {", ".join(models.VARIANTS)}, or all.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Image height and width.')
_BATCH = flags.DEFINE_list('batch_size', ['auto'], 'Images per device; several: a sweep.')
_LARGEST = flags.DEFINE_bool('largest_that_fits', False, 'Of several batch sizes, measure only '
                             'the largest that fits each step.')
_MEMORY_LIMIT = flags.DEFINE_float('memory_limit_gb', 0, 'A step whose compiled size exceeds '
                                   'this does not fit (0: the device\'s own limit).')
_MODE = flags.DEFINE_enum('mode', 'both', ['inference', 'train', 'both'], 'What to time.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_IMPL = flags.DEFINE_list('impl', ['ours', 'reference', 'reference_default_host', 'timm'],
                          f'Implementations to time: some of {", ".join(_IMPLS)}.')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Use the first N devices (0: all).')
_REMAT = flags.DEFINE_bool('remat', False, 'Rematerialise block activations (JAX impls).')
_STEPS = flags.DEFINE_integer('steps', 0, 'Timed steps per round (0: 3 on CPU; elsewhere '
                              'enough for about 0.3 s, 5 to 100).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Rounds; each implementation keeps its best.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 0,
                                    'N of the NxN matmul (0: 2048 on CPU, 8192 otherwise).')
_COMPILE_THREADS = flags.DEFINE_integer(
    'compile_threads', 0, 'Threads compiling a variant\'s steps before they are timed '
    '(0: 1 on CPU, 8 elsewhere).')
_DEADLINE = flags.DEFINE_float('deadline', 0, 'Start no measurement after this many seconds '
                               '(0: no limit); those left are listed as skipped.')
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


def check_flags() -> list[str]:
  """The variants to measure; raises UserError naming a bad flag value and the fix."""
  unknown = [i for i in _IMPL.value if i not in _IMPLS]
  if unknown or not _IMPL.value:
    raise errors.UserError(f'--impl={",".join(_IMPL.value)}: unknown {", ".join(unknown) or "(none)"};'
                     f' choose from {", ".join(_IMPLS)}.')
  for name, flag in (('impl', _IMPL), ('variant', _VARIANT), ('batch_size', _BATCH)):
    twice = sorted({v for v in flag.value if flag.value.count(v) > 1})
    if twice:  # each would be timed twice and printed twice
      raise errors.UserError(f'--{name}={",".join(flag.value)}: {", ".join(twice)} given twice.')
  variants = list(models.VARIANTS) if _VARIANT.value == ['all'] else _VARIANT.value
  bad = [v for v in variants if v not in models.VARIANTS]
  if bad or not variants:
    raise errors.UserError(f'--variant={",".join(_VARIANT.value)}: unknown {", ".join(bad)}; choose '
                     f'from {", ".join(models.VARIANTS)} or all.')
  if _BATCH.value != ['auto'] and not all(b.isdigit() and int(b) > 0 for b in _BATCH.value):
    raise errors.UserError(f'--batch_size={",".join(_BATCH.value)}: give positive integers or auto.')
  for name, flag in (('resolution', _RESOLUTION), ('repeats', _REPEATS)):
    if flag.value < 1:
      raise errors.UserError(f'--{name}={flag.value}: must be at least 1.')
  for name, flag, zero in (('steps', _STEPS, 'automatic'),
                           ('matmul_size', _MATMUL_SIZE, 'automatic'),
                           ('devices', _DEVICES, 'all'),
                           ('compile_threads', _COMPILE_THREADS, 'automatic'),
                           ('deadline', _DEADLINE, 'no limit'),
                           ('memory_limit_gb', _MEMORY_LIMIT, "the device's own limit")):
    if flag.value < 0:
      raise errors.UserError(f'--{name}={flag.value}: must be 0 ({zero}) or positive.')
  if _JSON_OUT.value is not None:  # now, rather than after the timing
    paths.open_to_append(_JSON_OUT.value, 'json_out').close()
  if _DEVICES.value > jax.device_count():
    raise errors.UserError(f'--devices={_DEVICES.value}: only {jax.device_count()} here.')
  patches = sorted({models.VARIANTS[v]['patch_size'] for v in variants})
  if any(_RESOLUTION.value % p for p in patches):
    raise errors.UserError(f'--resolution={_RESOLUTION.value} is not a multiple of the patch sizes '
                     f'{", ".join(map(str, patches))}: use a common multiple (e.g. 224).')
  return variants


def batch_sizes(variant: str, on_cpu: bool) -> list[int]:
  """The sizes to measure, in order: largest first with --largest_that_fits."""
  if _BATCH.value == ['auto']:
    sizes = [32] if on_cpu else list(AUTO_BATCH_SIZES[variant])
  else:
    sizes = [int(b) for b in _BATCH.value]
  return sorted(sizes, reverse=True) if _LARGEST.value else sizes


def formulation_of(impl: str) -> formulations.Formulation:
  if impl == 'ours':
    return formulations.MEASURED.get(jax.default_backend(), formulations.PLAIN)
  return formulations.PLAIN if impl == 'reference' else formulations.NAMED[impl]


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
                repeats: int, progress: str | None = None) -> dict[str, float]:
  """Seconds per step of each implementation: fastest of `repeats` rounds, taking turns.
  With `progress`, a line after each round (rounds on a CPU can take a minute)."""
  best, start = {name: float('inf') for name in run_rounds}, time.perf_counter()
  if progress:
    print(f'{progress}: timing {repeats} rounds ...', flush=True)
  for i in range(repeats):
    for name, run_round in run_rounds.items():
      best[name] = min(best[name], run_round(num_steps) / num_steps)
    if progress:
      print(f'{progress}: round {i + 1} of {repeats} timed ({len(run_rounds)} programs, '
            f'{num_steps} steps each, {time.perf_counter() - start:.0f} s)', flush=True)
  return best


class Variant:
  """One variant's model in each formulation, its compiled steps and one training state."""

  def __init__(self, name: str, mesh):
    self.name, self.mesh = name, mesh
    self.plain = models.create_model(name, num_classes=1000, dtype=jnp.dtype(_DTYPE.value),
                                     remat=_REMAT.value)
    self.lr_fn = optim.create_learning_rate_fn(_RECIPE)
    self.tx = optim.create_optimizer(_RECIPE, self.lr_fn)
    self.compiled = {}  # (formulation, mode, batch) -> (executable, bytes, seconds) or error
    self._models, self._state = {}, None

  def model(self, formulation):
    # One instance per formulation: a compiled step accepts a state whose apply_fn is bound to
    # the very model it was compiled with.
    if formulation not in self._models:
      self._models[formulation] = formulations.for_platform(self.plain, formulation=formulation)
    return self._models[formulation]

  def _create_state(self, model):
    res = _RESOLUTION.value
    return steps.create_train_state(model, self.tx, (res, res, 3), jax.random.key(2), self.mesh)

  def _batch(self, batch_size: int, abstract: bool):
    n, res = self.mesh.size * batch_size, _RESOLUTION.value
    sharding = NamedSharding(self.mesh, P(steps.AXIS))
    shapes = {'image': ((n, res, res, 3), jnp.float32), 'label': ((n,), jnp.int32)}
    if abstract:
      return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}
    return {'image': jax.device_put(jax.random.uniform(
                jax.random.key(0), shapes['image'][0], minval=-1, maxval=1), sharding),
            'label': jax.device_put(jax.random.randint(
                jax.random.key(1), (n,), 0, 1000), sharding)}

  def _step_fn(self, model, mode: str):
    if mode == 'train':
      return steps.make_train_step(model, self.lr_fn, self.mesh, num_classes=1000)
    return jax.jit(jax.shard_map(lambda p, x: model.apply({'params': p}, x), mesh=self.mesh,
                                 in_specs=(P(), P(steps.AXIS)), out_specs=P(steps.AXIS)))

  def lower(self, formulation, mode: str, batch_size: int):
    """The step traced for abstract inputs (in this thread: tracing holds the GIL)."""
    model = self.model(formulation)
    state = jax.eval_shape(lambda: self._create_state(model))
    batch = self._batch(batch_size, abstract=True)
    if mode == 'train':
      return self._step_fn(model, mode).lower(state, batch, jax.random.key(3))
    return self._step_fn(model, mode).lower(state.params, batch['image'])

  def compile_all(self, keys, threads: int):
    """Compiles the steps of `keys` ((formulation, mode, batch) tuples), `threads` at a time."""
    def compile_one(key, lowered):
      start = time.perf_counter()
      try:
        compiled = lowered.compile()
      except Exception as e:  # noqa: BLE001  (an out-of-memory size is reported, not fatal)
        return key, e
      memory = compiled.memory_analysis()
      size = None if memory is None else (
          memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
      return key, (compiled, size, time.perf_counter() - start)

    with concurrent.futures.ThreadPoolExecutor(max(threads, 1)) as pool:
      futures = []
      for key in keys:
        try:
          futures.append(pool.submit(compile_one, key, self.lower(*key)))
        except Exception as e:  # noqa: BLE001  (reported when the step is measured)
          self.compiled[key] = e
      for future in futures:
        key, result = future.result()
        self.compiled[key] = result

  def runner(self, formulation, mode: str, batch_size: int) -> Callable[[], jax.Array]:
    """A no-argument function running one compiled step on real data."""
    compiled = self.compiled[formulation, mode, batch_size][0]
    model = self.model(formulation)
    if self._state is None:  # one state for the variant: parameters are the same in all
      self._state = self._create_state(self.plain)
    batch = self._batch(batch_size, abstract=False)
    key = jax.random.key(3)
    if mode == 'inference':
      return lambda: compiled(self._state.params, batch['image'])

    def run_step():  # the state is donated: keep its successor
      state, metrics = compiled(self._state.replace(apply_fn=model.apply), batch, key)
      self._state = state.replace(apply_fn=self.plain.apply)
      return metrics
    return run_step

  def reset_state(self):
    """A fresh state: a failed training step may have consumed the donated one, and the other
    implementations' runners read the state when they run."""
    if self._state is not None:
      self._state = self._create_state(self.plain)

  def release(self):
    self._state = None
    self.compiled.clear()


def timm_step(variant: str, mode: str, batch_size: int):
  """timm's MlpMixer on the matching torch device, or None where it cannot run here."""
  try:
    import torchvision  # noqa: F401  (imported before timm, which needs it)
    import timm
    import torch
  except ImportError:
    print('timm: not installed (pip install torch torchvision timm), skipped')
    return None
  if variant not in _TIMM_NAMES or _DEVICES.value > 1:
    print(f'timm: no {variant} model or several devices asked for, skipped')
    return None
  on_gpu = jax.default_backend() == 'gpu' and torch.cuda.is_available()
  device = 'cuda' if on_gpu else 'cpu'
  if not on_gpu:
    torch.set_num_threads(os.cpu_count())
  amp = torch.autocast(device, torch.bfloat16, enabled=_DTYPE.value == 'bfloat16')
  model = timm.create_model(_TIMM_NAMES[variant], num_classes=1000,
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


def bytes_limit(devices) -> int | None:
  if _MEMORY_LIMIT.value:
    return int(_MEMORY_LIMIT.value * 1e9)
  stats = devices[0].memory_stats()
  return stats.get('bytes_limit') if stats else None


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

  def __init__(self, impl: str, variant: str, mode: str, batch_size: int):
    self.impl, self._log = impl, tempfile.TemporaryFile('w+')
    keep = keeps_freed_memory(impl, _KEEP_MEMORY.value)
    self._child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--serve_rounds', f'--impl={_CHILDREN[impl]}',
         f'--mode={mode}', f'--batch_size={batch_size}', f'--variant={variant}',
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
  [impl], [variant] = _IMPL.value, _VARIANT.value
  if impl == 'timm':
    run_step = timm_step(variant, mode, batch_size)
    if run_step is None:
      return
  else:
    jax_variant = Variant(variant, mesh)
    key = (formulation_of(impl), mode, batch_size)
    jax_variant.compile_all([key], 1)
    run_step = jax_variant.runner(*key)
  run_round = local_rounds(run_step, jax.default_backend() == 'cpu')
  print('ready', flush=True)
  for line in sys.stdin:
    print(run_round(int(line)), flush=True)


def does_not_fit(error: Exception) -> bool:
  return any(s in str(error) for s in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory'))


def too_large(compiled, limit: int | None) -> bool:
  """Whether a compiled step (or its compilation's error) does not fit the device."""
  if isinstance(compiled, Exception):
    return does_not_fit(compiled)
  return bool(limit and compiled[1] and compiled[1] > limit)


def measure(variant: Variant, mode: str, batch_size: int,
            matmul: tuple[Callable, float]) -> list[dict]:
  """One line per implementation for this variant, mode and batch size.

  Every implementation, those in child processes included, and the matmul that sets the rate
  for MFU take turns in the same rounds: a slow spell of a shared machine cannot favour any side
  of a ratio. Implementations of the same formulation are timed once.
  """
  on_cpu = jax.default_backend() == 'cpu'
  mesh = variant.mesh
  if not on_cpu and 'reference_default_host' in _IMPL.value:
    print('reference_default_host: the same as reference off the CPU, skipped', flush=True)
  children = [ChildRounds(impl, variant.name, mode, batch_size) for impl in _IMPL.value
              if impl in _CHILDREN and (on_cpu or impl != 'reference_default_host')]
  timed_as = {impl: formulation_of(impl) for impl in _IMPL.value if impl not in _CHILDREN}
  # One step in flight on CPU, as the trainer does: collectives can deadlock otherwise, and a
  # step dispatched early allocates its buffers while the previous one still holds its own.
  run_rounds, step_bytes, compile_s = {'matmul': matmul[0]}, {}, {}
  limit = bytes_limit(mesh.devices.flat)
  for formulation in dict.fromkeys(timed_as.values()):
    what = f'{variant.name} batch {batch_size} {mode} {_formulation_name(formulation)}'
    compiled = variant.compiled.get((formulation, mode, batch_size))
    if compiled is None:  # --largest_that_fits: measured at a larger size already
      continue
    try:
      if isinstance(compiled, Exception):
        raise compiled
      if too_large(compiled, limit):
        raise MemoryError(f'RESOURCE_EXHAUSTED: needs {compiled[1] / 1e9:.2f} GB, the device '
                          f'has {limit / 1e9:.2f} GB')
      run_rounds[formulation] = local_rounds(variant.runner(formulation, mode, batch_size),
                                             sync_every_step=on_cpu)
    except Exception as e:  # noqa: BLE001  (one failure must not end a long sweep)
      reason = 'does not fit' if does_not_fit(e) else 'failed'
      print(f'{what}: {reason} ({errors.gist(e)[:300]}), skipped', flush=True)
      variant.reset_state()  # a failed training step may have consumed the donated state
      continue
    step_bytes[formulation], compile_s[formulation] = compiled[1], compiled[2]
  run_rounds.update({child.impl: child for child in children if child.ready()})
  if len(run_rounds) == 1:  # nothing but the matmul
    return []
  num_steps = _STEPS.value
  if not num_steps:  # from one more round of each: rounds of about 0.3 s
    slowest = max(run_round(3) / 3 for name, run_round in run_rounds.items() if name != 'matmul')
    num_steps = 3 if on_cpu else int(min(max(0.3 / slowest, 5), 100))
  per_image = (flops.train_step_flops if mode == 'train' else flops.forward_flops)(
      variant.plain, _RESOLUTION.value)
  seconds = time_rounds(run_rounds, num_steps, _REPEATS.value,
                        progress=f'{variant.name} batch {batch_size} {mode}')
  matmul_rate = matmul[1] / seconds.pop('matmul')
  for child in children:
    child.close()
  peak = peak_bytes(mesh.devices.flat)
  results = []
  for impl in _IMPL.value:
    key = timed_as.get(impl, impl)
    if key not in seconds:
      continue
    s = seconds[key]
    devices = 1 if impl == 'timm' else mesh.size
    images_per_sec = devices * batch_size / s
    same_as = [i for i in timed_as if timed_as[i] == key and i != impl]
    results.append({
        'impl': impl, 'formulation': _formulation_name(key), 'same_as': same_as,
        'variant': variant.name, 'resolution': _RESOLUTION.value, 'mode': mode,
        'dtype': _DTYPE.value, 'remat': _REMAT.value and impl not in _CHILDREN,
        'devices': devices, 'platform': jax.default_backend(),
        'device_kind': mesh.devices.flat[0].device_kind, 'batch_per_device': batch_size,
        'steps_per_round': num_steps, 'step_ms': 1e3 * s, 'images_per_sec': images_per_sec,
        'images_per_sec_per_device': images_per_sec / devices,
        'gflops_per_image': per_image / 1e9,
        'tflops_per_sec': images_per_sec * per_image / 1e12,
        'matmul_tflops_per_sec_per_device': matmul_rate / 1e12,
        'mfu': images_per_sec * per_image / (matmul_rate * devices),
        'step_memory_gb': step_bytes[key] / 1e9 if step_bytes.get(key) else None,
        'peak_memory_gb': None if impl in _CHILDREN or peak is None else peak / 1e9,
        'compile_s': compile_s.get(key), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'jax_version': jax.__version__,
        'date': time.strftime('%Y-%m-%d %H:%M'),
    })
  return results


def _formulation_name(key) -> str:
  if key in _CHILDREN:
    return key
  return next(name for name, f in formulations.NAMED.items() if f == key)


def report(r: dict) -> None:
  memory = ''.join(f", {label} {r[key]:.2f} GB" for key, label in
                   (('step_memory_gb', 'step'), ('peak_memory_gb', 'peak')) if r[key])
  same = f" (= {', '.join(r['same_as'])})" if r['same_as'] else ''
  print(f"{r['impl']:{max(map(len, _IMPL.value))}s} {r['variant']} {r['resolution']}px "
        f"{r['mode']:9s} {r['dtype']} {r['devices']}x {r['device_kind']} batch/device "
        f"{r['batch_per_device']}: {r['images_per_sec']:.1f} img/s "
        f"({r['images_per_sec_per_device']:.1f}/device), {r['step_ms']:.2f} ms/step, "
        f"{r['tflops_per_sec'] * 1e3:.1f} GFLOP/s, MFU {r['mfu']:.3f} (matmul "
        f"{r['matmul_tflops_per_sec_per_device'] * 1e3:.0f} GFLOP/s){memory}{same}", flush=True)


@errors.reported
def main(argv):
  del argv
  kept = _KEEP_MEMORY.value and host.keep_freed_memory_on_cpu()  # before JAX's backend starts
  variants = check_flags()
  start = time.perf_counter()
  devices = jax.devices()[:_DEVICES.value or None]
  mesh = jax.make_mesh((len(devices),), (steps.AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,))
  on_cpu = jax.default_backend() == 'cpu'
  modes = ['inference', 'train'] if _MODE.value == 'both' else [_MODE.value]
  if _SERVE_ROUNDS.value:
    return serve_rounds(modes[0], int(_BATCH.value[0]), mesh)
  n = _MATMUL_SIZE.value or (2048 if on_cpu else 8192)
  matmul = matmul_rounds(jnp.dtype(_DTYPE.value), n, devices[0])
  ours = (f'ours = the {_formulation_name(formulation_of("ours"))} formulation on '
          f'{jax.default_backend()}. ' if 'ours' in _IMPL.value else '')
  print(f'{ours}MFU against the rate of a '
        f'{n}x{n} {_DTYPE.value} matmul on one {devices[0].device_kind} device, timed in the '
        f'same rounds; freed host memory kept: {kept}; '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "") or "(none)"}', flush=True)
  formulations_timed = list(dict.fromkeys(formulation_of(i) for i in _IMPL.value
                                          if i not in _CHILDREN))
  threads = _COMPILE_THREADS.value or (1 if on_cpu else 8)
  best_lines = []
  for name in variants:
    if _DEADLINE.value and time.perf_counter() - start > _DEADLINE.value:
      print(f'{name}: skipped, past the --deadline of {_DEADLINE.value:.0f} s', flush=True)
      continue
    variant = Variant(name, mesh)
    sizes = batch_sizes(name, on_cpu)
    # --largest_that_fits: a size at a time, for the steps that no larger size fitted.
    rounds = [[size] for size in sizes] if _LARGEST.value else [sizes]
    pending = {(f, m) for m in modes for f in formulations_timed}
    lines = []
    for round_sizes in rounds:
      if round_sizes is not rounds[0]:  # the first also times the child processes
        if not pending:
          break
        if _DEADLINE.value and time.perf_counter() - start > _DEADLINE.value:
          print(f'{name} batch {round_sizes[0]}: skipped, past the deadline', flush=True)
          break
      compile_start = time.perf_counter()
      keys = [(f, m, b) for m in modes for b in round_sizes for f in formulations_timed
              if (f, m) in pending]
      variant.compile_all(keys, threads)
      each = [variant.compiled[k][2] for k in keys if not isinstance(variant.compiled[k], Exception)]
      print(f'{name}: {len(keys)} steps compiled in {time.perf_counter() - compile_start:.1f} s '
            f'({threads} threads; each {min(each, default=0):.1f}-{max(each, default=0):.1f} s)',
            flush=True)
      for mode in modes:
        for batch_size in round_sizes:
          if _DEADLINE.value and time.perf_counter() - start > _DEADLINE.value:
            print(f'{name} batch {batch_size} {mode}: skipped, past the deadline', flush=True)
            continue
          for r in measure(variant, mode, batch_size, matmul):
            r['keep_freed_memory'] = keeps_freed_memory(r['impl'], kept)
            report(r)
            if _JSON_OUT.value:
              with paths.resolve(_JSON_OUT.value).open('a') as f:
                f.write(json.dumps(r) + '\n')
            lines.append(r)
      limit = bytes_limit(mesh.devices.flat)
      pending = {(f, m) for f, m, b in keys if too_large(variant.compiled[f, m, b], limit)}
    for mode in modes:
      best = {}
      for r in lines:
        if r['mode'] == mode and r['images_per_sec'] > best.get(r['impl'], {}).get(
            'images_per_sec', 0):
          best[r['impl']] = r
      if len(sizes) > 1 and best:
        print(f'Best batch, {name} {mode}:')
        for r in best.values():
          report(r)
      if 'ours' in best and len(best) > 1:
        ratios = ', '.join(f"{best['ours']['images_per_sec'] / r['images_per_sec']:.2f}x {impl}"
                           for impl, r in best.items() if impl != 'ours')
        print(f'ours, {mode}, best batches: {ratios}', flush=True)
      best_lines += best.values()
    variant.release()
  if len(variants) > 1 and best_lines:
    print('\n' + '\n'.join(accelerator_summary.markdown_table(best_lines)))


if __name__ == '__main__':
  app.run(main, flags_parser=errors.parse_flags)
