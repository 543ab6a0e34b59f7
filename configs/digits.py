"""The embedded default: a small Mixer on scikit-learn's bundled handwritten digits.

  python train.py                      # same as --config configs/digits.py
  python train.py --config configs/digits.py --workdir runs/digits --config.total_steps=800

No download. Expect about 98.9% test accuracy in under a minute on 2 CPU cores.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: 1,437 train / 360 test images, upsampled from 8x8.
  config.dataset = 'digits'  # or 'folder': <data_dir>/{train,test}/<class>/*.{jpg,png}
  config.data_dir = ''
  config.eval_split = 'test'  # at eval_every and at the end (digits has no validation split)
  config.image_size = 16
  config.augment = ml_collections.ConfigDict()
  config.augment.max_shift = 0.125  # random translation, as a fraction of the image size

  # Model: '' builds a custom Mixer from `model`; a Table 1 name ('B/16') uses its sizes,
  # with `model` fields overriding them.
  config.variant = ''
  config.model = ml_collections.ConfigDict(dict(
      num_blocks=4, patch_size=4, hidden_dim=128, tokens_mlp_dim=64, channels_mlp_dim=256,
      approximate_gelu=True))  # False: exact GELU, as timm's weights expect
  config.stoch_depth = 0.0  # drop rate of the last block (stochastic depth)
  config.dtype = 'float32'  # compute dtype; 'bfloat16' on accelerators
  # Start from these weights: .npz (official), .pth/.bin/.safetensors (timm), or a workdir.
  # The head is replaced when the class count differs; an integer multiple of the weights'
  # resolution expands the token-mixing MLPs (paper Appendix C).
  config.init_from = ''

  # Optimisation.
  config.batch_size = 128  # global, over all devices and processes
  config.eval_batch_size = 200
  config.total_steps = 400
  config.optimizer = 'adam'  # 'adam' (AdamW) or 'sgd' (momentum 0.9)
  config.learning_rate = 3e-3
  config.warmup_steps = 100
  config.lr_decay = 'cosine'  # or 'linear'
  config.weight_decay = 1e-4
  config.grad_clip_norm = 1.0
  config.mixup = 0.0  # Beta(p, p) mixup of each device batch; 0 turns it off
  config.grad_accum_steps = 1  # micro-batches per device batch, for less memory

  # Bookkeeping.
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 100
  config.keep_checkpoints = 3
  return config
