"""Trains and evaluates an MLP-Mixer.

  python train.py                                    # embedded digits default, runs/digits
  python train.py --config configs/digits.py --workdir runs/digits --config.batch_size=64

A run resumes from the newest checkpoint in its workdir.
"""
import logging as std_logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # hide TensorFlow's C++ start-up notices

from absl import app, flags, logging
from ml_collections import config_flags

from mixer_jax import trainer

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file(
    'config', os.path.join(_HERE, 'configs', 'digits.py'), 'Config file (configs/*.py).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics and results go here (default: runs/<config name>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname)
  config_path = flags.FLAGS['config'].config_filename
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  workdir = _WORKDIR.value or os.path.join('runs', name)
  results = trainer.train_and_evaluate(flags.FLAGS.config, workdir)
  print(f"Final test accuracy: {results['test_accuracy']:.4f} "
        f"(step {results['step']}; written to {os.path.join(workdir, 'results.json')})")


if __name__ == '__main__':
  app.run(main)
