"""Device-days a training recipe takes, next to the paper's TPUv3 core-days.

  python benchmarks/core_days.py --config=configs/pretrain_imagenet.py:B/16 \\
      --images_per_sec_per_core=400   # your device's training images/s (throughput.py)
  python benchmarks/core_days.py --config=configs/finetune.py:B/16,cifar10 --measure

Training time is steps x global batch / (per-device training throughput x devices); device-days
are that time x devices, so they depend only on the per-device throughput. Give it with
--images_per_sec_per_core (e.g. from benchmarks/throughput.py on your accelerator), or let
--measure run benchmarks/throughput.py here (the recipe's variant, image size and dtype, our
implementation, training step, the best of --measure_batch_sizes per device). The same recipe at
the paper's TPUv3 training throughput is printed beside it. The paper's Table 2-3 figures are
inference images/s/core, so TPUv3 training is taken as a third of them (backward = 2x forward);
the core-days the paper publishes for whole runs are listed where the variant matches.
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
from mixer_jax import config_files, errors, models, validation  # noqa: E402
from mixer_jax.errors import UserError  # noqa: E402

config_files.exit_unless_loadable(sys.argv, None)  # before config_flags loads it
_CONFIG = config_flags.DEFINE_config_file('config', None, 'A recipe, e.g. '
                                          'configs/pretrain_imagenet.py:B/16.')
_THROUGHPUT = flags.DEFINE_float('images_per_sec_per_core', None,
                                 'Training images/s per device; or use --measure.')
_MEASURE = flags.DEFINE_bool('measure', False, 'Measure it here with benchmarks/throughput.py.')
_MEASURE_BATCHES = flags.DEFINE_list('measure_batch_sizes', ['8', '32'],
                                     'Per-device batch sizes tried by --measure.')
_DATASET_SIZE = flags.DEFINE_integer('dataset_size', 0, 'Training examples, to print epochs.',
                                     lower_bound=0)

# Paper Tables 2-3: inference images/s/core on TPUv3 at 224, best batch (MIXER_NOTES section 7).
PAPER_TPUV3_IMAGES_PER_SEC = {'S/32': 11_489, 'S/16': 3_994, 'B/32': 4_208, 'B/16': 1_384,
                              'L/32': 1_314, 'L/16': 419, 'H/14': 194}
# Whole pre-training runs whose TPUv3 core-days the paper publishes.
PAPER_CORE_DAYS = {'H/14': 'JFT-300M pre-training: 1.01k TPUv3 core-days',
                   'L/16': 'ImageNet-21k pre-training: 0.41k TPUv3 core-days'}


def device_days(total_steps: int, global_batch: int, images_per_sec_per_device: float) -> float:
  """Device-days of `total_steps` steps of `global_batch` images, on any number of devices."""
  return total_steps * global_batch / images_per_sec_per_device / 86_400


def measure(config) -> float:
  """Best per-device training images/s of the recipe's model here, by benchmarks/throughput.py;
  on Ctrl-C, the best of the batch sizes it finished."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'results.jsonl')
    throughput = os.path.join(os.path.dirname(__file__), 'throughput.py')
    child = subprocess.Popen([
        sys.executable, throughput, f'--variant={models.variant_name(config.variant)}',
        f'--resolution={config.image_size}', f'--dtype={config.dtype}', '--mode=train',
        '--impl=ours', f'--remat={bool(config.model.get("remat"))}',
        f'--batch_size={",".join(_MEASURE_BATCHES.value)}', f'--json_out={out}'])
    try:
      status = child.wait()
    except KeyboardInterrupt:  # the child had the Ctrl-C too, and says so
      try:
        child.wait(timeout=30)
      except subprocess.TimeoutExpired:
        child.kill()
      status = None
    results = []
    if os.path.exists(out):
      with open(out) as f:
        results = [json.loads(line) for line in f]
    if status is None:
      if not results:
        sys.exit(130)  # nothing measured: the child's line said it was interrupted
      done = ', '.join(str(r['batch_per_device']) for r in results)
      print(f'Interrupted: using batch size {done} of --measure_batch_sizes='
            f'{",".join(_MEASURE_BATCHES.value)}, measured before it.')
    elif status:
      raise UserError(f'benchmarks/throughput.py failed (exit status {status}; its '
                      'message is above): pass --images_per_sec_per_core instead of --measure.')
    return max(r['images_per_sec_per_device'] for r in results)


@errors.reported
def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  config = _CONFIG.value
  if config is None:
    raise UserError('--config is required, e.g. --config=configs/pretrain_imagenet.py:B/16')
  if not config.get('variant'):
    raise UserError(f'--config={flags.FLAGS["config"].config_filename} has no Table 1 variant '
                    '(config.variant): nothing to compare.')
  models.create_model(config.variant)  # an unknown one is an error naming the seven
  variant = models.variant_name(config.variant)
  changed = {k: v for k, v in validation.model_sizes(config).items()
             if v != models.VARIANTS[variant][k]}
  sizes = ', '.join(f'{k}={v}' for k, v in changed.items())
  if changed and _MEASURE.value:
    raise UserError(
        f'--measure times Table 1 models, and this config gives Mixer-{variant} other sizes '
        f'({sizes}; a smoke recipe does): drop the size overrides, or time this model yourself '
        'and pass --images_per_sec_per_core.')
  if (_THROUGHPUT.value is None) == (not _MEASURE.value):
    raise UserError('Give exactly one of --images_per_sec_per_core=N and --measure.')
  if _THROUGHPUT.value is not None and _THROUGHPUT.value <= 0:
    raise UserError(f'--images_per_sec_per_core={_THROUGHPUT.value}: must be more than 0.')
  if not all(b.isdigit() and int(b) > 0 for b in _MEASURE_BATCHES.value):
    raise UserError(f'--measure_batch_sizes={",".join(_MEASURE_BATCHES.value)}: give positive '
                    'integers, e.g. 8,32.')
  throughput = measure(config) if _MEASURE.value else _THROUGHPUT.value
  images = config.total_steps * config.batch_size
  epochs = f', {images / _DATASET_SIZE.value:.1f} epochs' if _DATASET_SIZE.value else ''
  model = f'Mixer-{variant}' + (f' ({sizes})' if changed else '')
  print(f'{model} at {config.image_size}px: {config.total_steps:,} steps x batch '
        f'{config.batch_size:,} = {images / 1e6:,.1f}M images{epochs}.')
  ours = device_days(config.total_steps, config.batch_size, throughput)
  print(f'  at {throughput:,.1f} training images/s per device: {ours:,.2f} device-days '
        f'({ours * 24:,.1f} device-hours)')
  if changed:
    return  # the paper's figures are for the Table 1 sizes
  if config.image_size == 224:
    tpu = PAPER_TPUV3_IMAGES_PER_SEC[variant] / 3
    print(f'  at the paper\'s TPUv3 rate ({PAPER_TPUV3_IMAGES_PER_SEC[variant]:,} '
          f'inference images/s/core, ~{tpu:,.0f} training): '
          f'{device_days(config.total_steps, config.batch_size, tpu):,.2f} TPUv3 core-days')
  if variant in PAPER_CORE_DAYS:
    print(f'  paper, Mixer-{variant}: {PAPER_CORE_DAYS[variant]}')


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: config_files.parse_flags(argv, None))
