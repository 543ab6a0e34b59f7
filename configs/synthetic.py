"""Synthetic data: the training loop's own speed on any machine, without a data set.

  python train.py --config configs/synthetic.py:B/16 --workdir /tmp/synthetic_b16
  python train.py --config configs/synthetic.py:S/32 --config.batch_size=1024 --config.image_size=448

Random images and labels made on the devices (mixer_jax/synthetic.py), any size and class
count, with the pre-training recipe's model and optimiser (Adam, clipping, weight decay,
bfloat16 compute). The log's steps/s times batch_size is the training images/s to compare
with `benchmarks/throughput.py --mode=train` at the same per-device batch; the accuracy is
chance. Needs JAX alone: without TensorFlow, metrics go to metrics.jsonl only.
`smoke` shrinks it to seconds (tests).
"""
import ml_collections

from configs import smoke, table1


def get_config(arg: str = 'B/16') -> ml_collections.ConfigDict:
  variant, *options = arg.split(',')
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: made on the devices, a new batch every step.
  config.dataset = 'synthetic'
  config.num_classes = 1000
  config.image_size = 224
  config.eval_split = 'test'  # one batch of other random images

  # Model.
  config.variant = variant
  config.model = table1.model()
  config.stoch_depth = 0.0
  config.dtype = 'bfloat16'
  config.init_from = ''

  # Optimisation: the pre-training recipe's optimiser.
  config.batch_size = 256  # global: 256 per device on one accelerator
  config.grad_accum_steps = 1
  config.eval_batch_size = 256
  config.total_steps = 200
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.warmup_steps = 10
  config.lr_decay = 'linear'
  config.weight_decay = 0.1
  config.grad_clip_norm = 1.0
  config.mixup = 0.0

  # Bookkeeping: the first log window includes compilation, the later ones measure steps/s.
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200
  config.keep_checkpoints = 1
  return smoke.apply(config, options, 'VARIANT[,smoke], e.g. configs/synthetic.py:B/16')
