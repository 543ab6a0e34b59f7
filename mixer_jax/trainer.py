"""Training and evaluation loop: data-parallel over every device, resumable from the workdir."""
import contextlib
import json
import logging as std_logging
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mixer_jax import checkpoints as ckpt
from mixer_jax import errors, formulations, lock, models, optim, paths, steps, synthetic, validation
from mixer_jax.errors import UserError


def data_source(config):
  """The module serving `config.dataset`; only the tf.data pipelines import TensorFlow."""
  if config.dataset == 'synthetic':
    return synthetic
  from mixer_jax import input_pipeline
  return input_pipeline


def build_model(config, num_classes: int) -> models.MlpMixer:
  """A Table 1 variant (`config.variant`) or a custom Mixer; `config.model` overrides fields.

  Computed in the formulation measured fastest on this platform (mixer_jax.formulations).
  """
  kwargs = dict(num_classes=num_classes, stoch_depth=config.stoch_depth,
                dtype=jax.numpy.dtype(config.dtype), **config.model)
  if config.variant:
    model = models.create_model(config.variant, **kwargs)
  else:
    model = models.MlpMixer(**kwargs)
  return formulations.for_platform(model)


def evaluate(eval_step, state, config, mesh) -> dict[str, float]:
  """Exact loss and accuracy over the whole evaluation split (padding is masked out)."""
  totals = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}
  with out_of_memory_explained(config, 'eval_batch_size'):
    for batch in data_source(config).eval_batches(config, config.eval_split, mesh):
      sums = jax.device_get(eval_step(state, batch))
      totals = {k: totals[k] + float(sums[k]) for k in totals}
  return {'loss': totals['loss'] / totals['count'],
          'accuracy': totals['correct'] / totals['count']}


def fetch_finite(records, latest_checkpoint) -> list[dict[str, float]]:
  """Host copies of each (step, metrics); a non-finite loss or gradient norm stops the run.

  Called before every checkpoint save, so a diverged state is never saved.
  """
  host = []
  for step, metrics in records:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (np.isfinite(metrics['loss']) and np.isfinite(metrics['grad_norm'])):
      fix = 'Lower --config.learning_rate or lengthen --config.warmup_steps'
      then = (f'The newest checkpoint, step {latest_checkpoint}, holds the last good state and '
              f'stays the latest. {fix}, then run again: it resumes from that step'
              if latest_checkpoint is not None else
              f'No checkpoint was saved. {fix}, then run again: it starts from the beginning')
      raise FloatingPointError(
          f"Training diverged at step {step}: loss {metrics['loss']}, gradient norm "
          f"{metrics['grad_norm']}. {then}.")
    host.append(metrics)
  return host


class Preemption:
  """Whether the run was asked to stop (SIGTERM, or Ctrl-C), at a step all processes agree on.

  A second Ctrl-C stops at once, without the checkpoint.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None
    self.multi_process = jax.process_count() > 1

  def __enter__(self):
    if errors.pending:  # a Ctrl-C or SIGTERM during start-up whose exception was dropped
      raise errors.pending
    # Across processes JAX's preemption service catches SIGTERM and picks the step.
    # A signal the shell set to be ignored (SIGINT for `train.py &` in a script) stays ignored.
    if not self.multi_process:
      self.previous = {s: signal.signal(s, self._request) for s in self.SIGNALS
                       if signal.getsignal(s) is not signal.SIG_IGN}
    return self

  def _request(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:  # a second one stops at once; the save under way stays a
      signal.signal(signal.SIGINT, errors.interrupted_now)  # temporary folder, never read

  def reached(self, step: int):
    """The name of the signal that stops the run at `step`, or None."""
    if self.multi_process:
      return 'SIGTERM' if multihost_utils.reached_preemption_sync_point(step) else None
    return self.requested

  def __exit__(self, *exc):
    if not self.multi_process:
      for s, handler in self.previous.items():
        signal.signal(s, handler)


class _AboveTheBar(std_logging.Handler):
  """Another handler's records printed above the progress bar, which is cleared for each and
  drawn again after it: they ran on from the bar's line, leaving a piece of it at every log."""

  def __init__(self, handler: std_logging.Handler):
    super().__init__(handler.level)
    self.handler = handler

  def emit(self, record):
    with tqdm.tqdm.external_write_mode():
      self.handler.handle(record)


@contextlib.contextmanager
def logging_above_progress():
  root = std_logging.getLogger()
  handlers = root.handlers
  root.handlers = [_AboveTheBar(h) for h in handlers]
  try:
    yield
  finally:
    root.handlers = handlers


class MetricsLog:
  """TensorBoard events (through clu) plus one JSON line per record, from process 0 only.

  clu writes events with TensorFlow; on a machine with JAX alone (synthetic data) the JSON
  lines are written without them. metrics.jsonl holds one record a step and split: a resumed
  run repeats the steps after its checkpoint, so the stopped run's records of them are dropped
  first (TensorBoard drops them itself when it sees a step go back), and a finished run
  evaluated again replaces its evaluation.
  """

  def __init__(self, workdir: epath.Path, start_step: int):
    self.is_main = jax.process_index() == 0
    self.writer = None
    self.path = workdir / 'metrics.jsonl'
    self.thread_error = ()  # what clu's writer raises for a failure in its thread
    if self.is_main:
      with self._writing():
        torn, dropped = self._keep(lambda record: record['step'] <= start_step)
      if torn:
        logging.info('metrics.jsonl: dropped %d line(s) that were not whole records, as a run '
                     'stopped while writing one leaves.', torn)
      if dropped:
        logging.info('metrics.jsonl: dropped %d records of steps after %d, which this run '
                     'repeats.', dropped, start_step)
      try:
        from clu import asynclib, metric_writers
        self.writer = metric_writers.create_default_writer(str(workdir))
        self.thread_error = (asynclib.AsyncError,)
      except ImportError as e:
        logging.warning('No TensorBoard events (%s); metrics go to metrics.jsonl only.', e)

  def _keep(self, keep) -> tuple[int, int]:
    """Rewrites metrics.jsonl with the records that `keep`; a line torn by a kill goes too.

    Returns how many torn lines and how many records went; remembers the (step, split) of
    those kept.
    """
    lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    records = [_record(line) for line in lines]
    kept = [(line, r) for line, r in zip(lines, records) if r is not None and keep(r)]
    if len(kept) < len(lines):
      tmp = self.path.with_name('metrics.jsonl.tmp')
      tmp.write_text(''.join(line for line, _ in kept))
      tmp.replace(self.path)
    self.logged = {(r['step'], r['split']) for _, r in kept}
    torn = records.count(None)
    return torn, len(lines) - len(kept) - torn

  def _writing(self):
    return ckpt.writes_explained('the metrics', self.path.parent, self.path.parent / 'checkpoints',
                                 *self.thread_error)

  def write(self, step: int, split: str, metrics: dict[str, float]):
    if not self.is_main:
      return
    with self._writing():
      if self.writer:
        self.writer.write_scalars(step, {f'{split}/{k}': v for k, v in metrics.items()})
      if (step, split) in self.logged:  # a finished run evaluated again: the new record replaces it
        self._keep(lambda record: (record['step'], record['split']) != (step, split))
      self.logged.add((step, split))
      with self.path.open('a') as f:
        f.write(json.dumps({'step': step, 'split': split, **metrics}) + '\n')

  def close(self):
    if self.writer:
      with self._writing():
        self.writer.close()


def _record(line: str) -> dict | None:
  """One metrics.jsonl line as a record; None for a line that is not a whole record."""
  try:
    record = json.loads(line) if line.endswith('\n') else None
    return record if isinstance(record, dict) and {'step', 'split'} <= record.keys() else None
  except ValueError:
    return None


@contextlib.contextmanager
def out_of_memory_explained(config, batch: str = 'batch_size'):
  """A device out of memory ends the run with what to change, the checkpoints kept. `batch`:
  the setting whose batches did not fit (evaluation's can fail after training's fitted)."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(e).lower():
      raise
    size = config[batch]
    fixes = (['lower eval_batch_size'] if batch == 'eval_batch_size' else
             ['lower batch_size', 'raise grad_accum_steps']
             + (['set model.remat=True (recomputes activations)'] if 'remat' in config.model
                else []))
    raise UserError(
        f'Out of device memory ({errors.gist(e)[:200]}) with {batch}={size} '
        f'({size // jax.device_count()} a device) at {config.image_size}x{config.image_size}: '
        f'{", or ".join(fixes)}. The checkpoints written so far are kept.') from e


def flat_settings(config) -> dict[str, Any]:
  """{'model/hidden_dim': 64, ...}: the config as config.json records it, flattened."""
  return ckpt.flatten(json.loads(config.to_json_best_effort()))


def differences(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
  """(key, value in a, value in b) where two flat settings differ; '(unset)' where one lacks it."""
  return [(k, a.get(k, '(unset)'), b.get(k, '(unset)')) for k in sorted(a.keys() | b.keys())
          if a.get(k) != b.get(k)]


def broadcast_text(text: str, is_source: bool) -> str:
  """The `text` of the one process where `is_source`, on every process (a collective)."""
  data = np.frombuffer(text.encode(), np.uint8)
  length = int(multihost_utils.broadcast_one_to_all(np.int32(data.size), is_source))
  data = multihost_utils.broadcast_one_to_all(
      data if is_source else np.zeros(length, np.uint8), is_source)
  return np.asarray(data, np.uint8).tobytes().decode()


def stop_every_process_if_one_failed(error: Exception | None):
  """Raises `error` where there is one, and on the other processes a UserError with the first
  failed process's message (a collective): every process stops within seconds, and each log
  says why. Without it, the others waited at their next collective for 5 minutes, then aborted
  with a stack dump that named nothing."""
  if jax.process_count() > 1:
    failed = np.flatnonzero(multihost_utils.process_allgather(np.int32(error is not None)))
    if failed.size:
      said = '' if error is None else errors.gist(error) if isinstance(error, UserError) else (
          f'{type(error).__name__}: {errors.gist(error)} (its log has the traceback).')
      said = broadcast_text(said, jax.process_index() == failed[0])
      error = error or UserError(
          f'Process {failed[0]}{f" (and {failed.size - 1} other(s))" if failed.size > 1 else ""}'
          f' stopped: {said} Stopping every process: fix that, then start them all again.')
  if error:
    raise error


@contextlib.contextmanager
def stopping_every_process_on_error():
  """stop_every_process_if_one_failed at the end of a block that makes no collective: for what
  each host reads on its own (init_from weights, the data set), which one host may lack, and
  what process 0 alone writes (config.json, the metrics)."""
  error = None
  try:
    yield
  except Exception as e:  # a bug on one host stops them all too
    error = e
  stop_every_process_if_one_failed(error)


def check_saves(checkpoints, wait: bool = False):
  """Raises if a checkpoint write failed; with several processes, on every process if it failed
  on one, and with `wait` only once the save in progress ended on all of them (before the next
  save: orbax's own wait for the last one would hang on a failed one).

  The threads of a write that failed wait for each other in barriers that time out only after
  20 minutes: every process then stops without them (errors.EndAtOnce), within a second.
  """
  if jax.process_count() == 1:
    checkpoints.check_for_errors()
    return
  while True:
    try:
      with stopping_every_process_on_error():
        checkpoints.check_for_errors()
    except Exception as e:
      checkpoints.abandon()
      if isinstance(e, UserError):
        raise errors.EndAtOnce(str(e), jax.distributed.shutdown) from e
      raise
    saving = multihost_utils.process_allgather(np.bool_(checkpoints.is_saving_in_progress()))
    if not wait or not saving.any():
      return
    time.sleep(0.1)


def check_processes_agree(config, workdir: epath.Path):
  """Every process was given the same settings and workdir, or each stops naming what differs.

  Processes that disagree train on different schedules or batches without a word, hang in a
  collective or at the first checkpoint, or abort inside one.
  """
  if jax.process_count() == 1:
    return
  mine = {**flat_settings(config), 'workdir': str(workdir)}
  first = json.loads(broadcast_text(json.dumps(mine, sort_keys=True), jax.process_index() == 0))
  differ = [f'{k} is {a!r} in process 0, {b!r} here' for k, a, b in differences(first, mine)]
  others = np.flatnonzero(multihost_utils.process_allgather(np.int32(bool(differ))))
  fix = 'give every process the same --config, --config.<field> overrides and --workdir.'
  if differ:
    raise UserError(f'Process {jax.process_index()} was started with other settings than process '
                    f'0: {"; ".join(differ)}. Stopping every process: {fix}')
  if others.size:
    raise UserError(f'Process(es) {", ".join(map(str, others))} were started with other settings '
                    f'than this process 0 (each names them). Stopping every process: {fix}')


def _holds_token(lock_file: epath.Path, token: str) -> bool:
  with contextlib.suppress(OSError, ValueError, *paths.storage_errors()):
    return json.loads(lock_file.read_text()).get('token') == token
  return False


def _check_workdir_shared(workdir: epath.Path, token: np.ndarray):
  """Every process reads the lock process 0 wrote: orbax's multi-host checkpoints need storage
  all hosts reach, and with a folder on each host's own disk the first save hung."""
  sees, deadline = jax.process_index() == 0, time.time() + 10
  while not sees and time.time() < deadline:  # a network file system can show it late
    sees = _holds_token(workdir / lock.FILE, bytes(token).hex())
    if not sees:
      time.sleep(0.5)
  blind = np.flatnonzero(~multihost_utils.process_allgather(np.bool_(sees)))
  if blind.size:
    raise UserError(
        f'Process(es) {", ".join(map(str, blind))} cannot see the workdir {workdir} that process 0 '
        'created (its lock.json): with several hosts the workdir must be storage every host '
        'reaches, a network file system or a gs:// bucket, not a folder on each host\'s disk.')


@contextlib.contextmanager
def claim_workdir(workdir: epath.Path):
  """Creates the workdir and holds its lock (process 0); every process stops if that fails.

  A workdir this run created is removed again if the run stops before writing a file in it.
  """
  created = False
  try:
    with contextlib.ExitStack() as stack:
      error, token = None, np.zeros(16, np.uint8)
      if jax.process_index() == 0:
        try:
          created = not workdir.exists()
          if not created and not workdir.is_dir():
            raise UserError(f'The workdir {workdir} is a file, not a folder: give a --workdir '
                            'that is a folder, or a new name.')
          workdir.mkdir(parents=True, exist_ok=True)
          held = stack.enter_context(lock.WorkdirLock(workdir))
          token = np.frombuffer(bytes.fromhex(held.record['token']), np.uint8)
        except UserError as e:
          error = e
        except paths.storage_errors() as e:
          error = UserError(f'The workdir {workdir} cannot be created or written ('
                            f'{errors.gist(e)}): give a --workdir this user can write.')
      stop_every_process_if_one_failed(error)
      if jax.process_count() > 1:
        _check_workdir_shared(workdir, np.asarray(multihost_utils.broadcast_one_to_all(token)))
      yield
  except BaseException:
    with contextlib.suppress(*paths.storage_errors()):
      if created and all(p.is_dir() and not any(p.iterdir()) for p in workdir.iterdir()):
        workdir.rmtree()  # at most the empty checkpoints/ of orbax's manager in it
    raise


def saved_config(workdir: epath.Path) -> dict[str, Any] | None:
  """The config.json of the run in `workdir` (None where none has started, or it is damaged:
  the run goes on, and rewrites it)."""
  saved = workdir / 'config.json'
  try:
    return ckpt.run_config(saved) if saved.exists() else None
  except UserError as e:
    logging.warning('%s This run cannot list the settings it was started with, and goes on with '
                    'those given.', e)
    return None


def config_changes(saved: dict[str, Any] | None, config) -> list[str]:
  """'field: old -> new' for each setting that differs from a run's saved config.json."""
  if saved is None:
    return []
  return [f'{k}: {a!r} -> {b!r}' for k, a, b in differences(ckpt.flatten(saved),
                                                               flat_settings(config))]


def warn_of_another_gelu(config, init_params):
  """A warning where the weights were trained with the other GELU than model.approximate_gelu's."""
  trained = ckpt.trained_gelu(config.init_from) if init_params else None
  ours = config.model.get('approximate_gelu')
  if None not in (trained, ours) and trained != ours:
    kinds = {True: 'tanh-approximate GELU', False: 'exact GELU'}
    logging.warning('%s was trained with the %s, and model.approximate_gelu=%s computes the %s: '
                    'set --config.model.approximate_gelu=%s to fine-tune with the GELU of the '
                    'weights.', config.init_from, kinds[trained], ours, kinds[ours], trained)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir,
                       build=build_model) -> dict[str, Any]:
  """Trains to `config.total_steps`, resuming from the newest checkpoint in `workdir`.

  `workdir` is a folder or a gs:// URL. The config is checked before anything is loaded or
  written, and one run at a time holds the workdir. `build(config, num_classes)` makes the
  model: a Mixer, or a baseline of the studies. Returns the final evaluation metrics, also
  written to `workdir/results.json`; raises errors.Stopped when SIGTERM or Ctrl-C stopped it
  (after saving a checkpoint).
  """
  workdir = paths.resolve(workdir)
  check_processes_agree(config, workdir)  # first: a check one process fails would hang the rest
  validation.check_config(config)
  with claim_workdir(workdir):
    with out_of_memory_explained(config), \
        ckpt.writer_threads_quiet():  # a failed write is reported once, by writes_explained
      return _train(config, workdir, build)


def _train(config: ml_collections.ConfigDict, workdir: epath.Path, build) -> dict[str, Any]:
  mesh = steps.create_mesh()
  per_device = steps.check_batch_size(config.batch_size, jax.device_count())
  if per_device % config.grad_accum_steps:
    raise UserError(
        f'The per-device batch ({per_device}) does not split into grad_accum_steps='
        f'{config.grad_accum_steps} micro-batches: use a divisor of {per_device}.')
  steps.check_batch_size(config.eval_batch_size, jax.device_count(), 'eval_batch_size')

  # Weights to start from are read first: their resolution decides the token-MLP width. A run
  # resuming from its own checkpoint reads that width there, and needs them no more (nor
  # init_from: a fine-tune at 2x resumes with or without it).
  with ckpt.reader(workdir / 'checkpoints') as found:
    resuming = found.latest_step() is not None
    resumed_width = ckpt.token_mixing_width(found) if resuming else None
  started_with = saved_config(workdir) if resuming else None
  if resuming and not config.init_from:  # config.json keeps the weights the run started from
    config = config.copy_and_resolve_references()
    config.init_from = (started_with or {}).get('init_from', '')
  # Each host reads these on its own: one that lacks them stops every process, naming them.
  with stopping_every_process_on_error():
    if config.init_from is None and not resuming:  # None, not '': a recipe that fine-tunes
      raise UserError('This recipe fine-tunes pre-trained weights, and init_from is not set: give '
                      f'--config.init_from=WEIGHTS ({ckpt.WEIGHT_KINDS}), or '
                      "--config.init_from='' to train from random weights.")
    init_params = ckpt.load_params(config.init_from) if config.init_from and not resuming else None
    warn_of_another_gelu(config, init_params)
    factor = ckpt.resolution_factor(init_params, config.image_size, validation.model_sizes(
        config)['patch_size']) if init_params else 1  # before the data: a mistake found at once
    data = data_source(config)
    if data is synthetic:
      class_names, num_classes = None, synthetic.num_classes(config)
    else:  # read once: a tensorflow-datasets name opens the data set, maybe on gs://
      class_names = data.class_names(config)
      num_classes = len(class_names)
      data.check_eval_split(config)  # a missing or inconsistent one, now rather than later
    model = build(config, num_classes)
  if resumed_width:  # None where the checkpoint holds another model (a study's baseline)
    factor = ckpt.expansion(resumed_width, model.tokens_mlp_dim)
    if factor > 1:
      logging.info('The checkpoint\'s token-mixing MLPs are %d times model.tokens_mlp_dim=%d wide: '
                   'resuming a fine-tune at %dx the resolution of its weights.', factor ** 2,
                   model.tokens_mlp_dim, factor)
  if factor > 1:
    model = model.clone(tokens_mlp_dim=model.tokens_mlp_dim * factor ** 2)
    if init_params:
      logging.info('Fine-tuning at %dx the resolution of %s: token-mixing MLPs expanded to %d '
                   'block-diagonal copies.', factor, config.init_from, factor ** 2)
  learning_rate_fn = optim.create_learning_rate_fn(config)
  if config.warmup_steps >= config.total_steps:
    peak = config.total_steps / config.warmup_steps
    logging.warning('warmup_steps=%d is not below total_steps=%d: the learning rate rises for the '
                    'whole run, to %.3g (%.3g x learning_rate=%g) at its last step, and never '
                    'decays. Lower --config.warmup_steps for a run this short.',
                    config.warmup_steps, config.total_steps, peak * config.learning_rate, peak,
                    config.learning_rate)
  tx = optim.create_optimizer(config, learning_rate_fn)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  image_shape = (config.image_size, config.image_size, 3)
  state = steps.create_train_state(model, tx, image_shape, init_rng, mesh)

  # Resume order: this workdir's newest checkpoint, else the init_from weights, else scratch.
  checkpoints = ckpt.manager(workdir, config.keep_checkpoints)
  changes = config_changes(started_with, config)
  state, start_step = ckpt.restore_latest(checkpoints, state, changes)
  trains = start_step < config.total_steps  # else config.json stays the record of the training
  if start_step:
    logging.info('Resumed from %s at step %d%s.', checkpoints.directory, start_step,
                 f' (init_from={config.init_from} is not read: the checkpoint holds the run)'
                 if config.init_from else '')
    if changes:
      logging.warning('%s with settings that differ from those it was started with '
                      '(config.json, %s): %s. Use a new --workdir to start afresh instead.',
                      *(('This run continues', 'now updated') if trains else
                        ('This run\'s last checkpoint is evaluated', 'kept')), '; '.join(changes))
    if not trains:  # a finished run started again: news only if its settings changed
      (logging.warning if changes else logging.info)(
          'The checkpoint is at step %d, total_steps is %d: evaluating it without training.',
          start_step, config.total_steps)
  elif init_params is not None:
    params = ckpt.adapt(init_params, jax.device_get(state.params), factor)
    state = state.replace(params=jax.device_put(params, NamedSharding(mesh, P())))
    logging.info('Initialised from %s.', config.init_from)
  else:  # said, since a fine-tuning recipe run without init_from trains from random weights
    logging.info('Initialised at random (seed %d): no init_from.', config.seed)
  train_step = steps.make_train_step(model, learning_rate_fn, mesh, num_classes, config.mixup,
                                     config.grad_accum_steps)
  eval_step = steps.make_eval_step(mesh)
  with stopping_every_process_on_error():  # process 0 writes, each host opens its input
    if jax.process_index() == 0 and trains:
      with ckpt.writes_explained('config.json', workdir, workdir / 'checkpoints'):
        tmp = workdir / 'config.json.tmp'  # then renamed: a kill while writing leaves no half
        tmp.write_text(config.to_json_best_effort(indent=2))
        tmp.replace(workdir / 'config.json')
        if class_names is not None:  # predict.py prints these names (folder names: any script)
          (workdir / 'labels.txt').write_text(''.join(f'{n}\n' for n in class_names),
                                              encoding='utf-8')
    log = MetricsLog(workdir, start_step)
    train_iter = data.train_batches(config, start_step, mesh)
  # Several CPU devices on few cores can deadlock in all-reduce with more than one step in
  # flight; accelerators keep asynchronous dispatch and sync only to log and save.
  one_step_in_flight = jax.default_backend() == 'cpu'

  unchecked, window, window_start = [], [], time.perf_counter()
  step, preempted = start_step, None
  # The bar is drawn once Preemption holds the signals: a SIGTERM before that ends the run at
  # once, and its one line ran on from a bar already drawn.
  with Preemption() as preemption, logging_above_progress(), tqdm.tqdm(
      total=config.total_steps, initial=start_step, unit='step',
      disable=jax.process_index() != 0, mininterval=1.0) as progress:
    try:
      for step in range(start_step + 1, config.total_steps + 1):
        state, metrics = train_step(state, next(train_iter), dropout_rng)
        unchecked.append((step, metrics))
        progress.update(1)
        preempted = preemption.reached(step)
        log_now = step % config.log_every == 0 or step == config.total_steps
        save_now = step % config.checkpoint_every == 0 or step == config.total_steps or preempted
        eval_now = step % config.eval_every == 0 and step != config.total_steps
        if one_step_in_flight or log_now or save_now or eval_now:  # waits for the steps
          window += fetch_finite(unchecked, checkpoints.latest_step())
          unchecked = []

        if log_now:
          summary = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
          summary['learning_rate'] = window[-1]['learning_rate']  # the step's, not the mean
          summary['steps_per_sec'] = len(window) / (time.perf_counter() - window_start)
          # The paper's and the benchmark's unit (images/s/core on TPU), over every process.
          summary['images_per_sec_per_device'] = (summary['steps_per_sec'] * config.batch_size
                                                  / jax.device_count())
          with stopping_every_process_on_error():  # a write that failed on one process
            log.write(step, 'train', summary)
          check_saves(checkpoints)
          progress.set_postfix(loss=f"{summary['loss']:.4f}", lr=f"{summary['learning_rate']:.2e}")
          window, window_start = [], time.perf_counter()
        paused = time.perf_counter()  # steps_per_sec leaves evaluating and saving out
        if eval_now:
          results = evaluate(eval_step, state, config, mesh)
          with stopping_every_process_on_error():
            log.write(step, config.eval_split, results)
        if save_now:
          check_saves(checkpoints, wait=True)
          checkpoints.save(step, args=ocp.args.StandardSave(state))
        window_start += time.perf_counter() - paused
        if preempted:
          break
      check_saves(checkpoints, wait=True)
    finally:
      if checkpoints.abandoned:  # the program ends at once: TensorBoard's last events go now
        with contextlib.suppress(Exception):
          log.close()
      else:
        checkpoints.wait_until_finished()
        checkpoints.close()

  if preempted and step < config.total_steps:
    log.close()
    raise errors.Stopped(preempted, step, workdir)
  results = evaluate(eval_step, state, config, mesh)
  log.write(step, config.eval_split, results)
  log.close()
  results = {'step': step, f'{config.eval_split}_accuracy': results['accuracy'],
             f'{config.eval_split}_loss': results['loss']}
  if jax.process_index() == 0:
    with ckpt.writes_explained('results.json', workdir, workdir / 'checkpoints'):
      (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
  return results
