"""A small Mixer trained from scratch on CIFAR-10 at 32x32, on one machine.

  python train.py --config configs/cifar10_scratch.py:4 --workdir runs/cifar10_p4
  python train.py --config configs/cifar10_scratch.py:2 --workdir runs/cifar10_p2

The argument is the patch size, 4 (64 tokens) or 2 (256 tokens), `[,smoke]` for tests. 8 blocks
of width 256 (4.4M parameters with patch 4, 6.3M with patch 2), AdamW with cosine decay, 200 epochs of
`train[:98%]` at batch 256; CIFAR's usual augmentation (4-pixel shifts and flips) plus mixup
and stochastic depth, since a Mixer without pre-training over-fits 50k images. No published
Mixer recipe exists for this setting: its accuracy has not been measured with this code yet.
CIFAR-10 must be prepared first: `tfds build cifar10 --data_dir=DIR`, then
--config.data_dir=DIR.
"""
import ml_collections

from configs import smoke

TRAIN_EXAMPLES = 49_000  # train[:98%]


def get_config(arg: str = '4') -> ml_collections.ConfigDict:
  patch, *options = arg.split(',')
  if patch not in ('1', '2', '4', '8', '16', '32'):
    raise ValueError(f'The argument of cifar10_scratch.py is a patch size that divides 32 '
                     f'(4 or 2, e.g. configs/cifar10_scratch.py:4), not {patch!r}.')
  patch = int(patch)
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data.
  config.dataset = 'cifar10'
  config.data_dir = ''  # '' is tfds' default, ~/tensorflow_datasets
  config.eval_split = 'test'  # 'validation' (train[98%:]) to tune
  config.image_size = 32
  config.shuffle_buffer = 50_000
  config.augment = ml_collections.ConfigDict()
  config.augment.max_shift = 0.125  # up to 4 pixels, CIFAR's usual pad-4-and-crop
  config.augment.flip = True
  config.mixup = 0.2  # Beta(p, p) per device batch

  # Model: a custom Mixer; tokens = (32 / patch)^2.
  config.variant = ''
  tokens = (32 // patch) ** 2
  config.model = ml_collections.ConfigDict(dict(
      num_blocks=8, patch_size=patch, hidden_dim=256, tokens_mlp_dim=2 * tokens,
      channels_mlp_dim=1024, approximate_gelu=True, remat=False))
  config.stoch_depth = 0.1
  config.dtype = 'bfloat16'  # 'float32' on CPU
  config.init_from = ''

  # Optimisation.
  config.batch_size = 256
  config.grad_accum_steps = 1
  config.eval_batch_size = 1000
  config.total_steps = 200 * TRAIN_EXAMPLES // 256
  config.optimizer = 'adam'  # AdamW: decoupled weight decay times the learning rate
  config.learning_rate = 1e-3
  config.warmup_steps = 5 * TRAIN_EXAMPLES // 256
  config.lr_decay = 'cosine'
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0

  # Bookkeeping.
  config.log_every = 100
  config.eval_every = 2_000
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  return smoke.apply(config, options, 'PATCH[,smoke], e.g. configs/cifar10_scratch.py:4')
