"""Fine-tuning a pre-trained Mixer (paper Appendix C, following ViT).

  python train.py --config configs/finetune.py:B/16,cifar10 \
      --config.init_from=imagenet21k/Mixer-B_16.npz --workdir runs/b16_cifar10

The argument is `variant,dataset[,smoke]`. SGD with momentum 0.9, batch 512, cosine decay after
a linear warmup, clipping at global norm 1, no weight decay, a fresh zero-initialised head.
Steps: CIFAR-10/100 10,000; Pets and Flowers 500; ImageNet 20,000. The paper tunes the
learning rate over {0.003, 0.01, 0.03, 0.06} on the validation split (eval_split=validation).
Reference (official code, 4x V100): Mixer-B/16 from ImageNet-21k reaches 96.82% on CIFAR-10
in 9.6 h; Mixer-L/16 98.34%. `smoke` shrinks everything to run in seconds (tests).
"""
import ml_collections

from configs import smoke, table1

STEPS = {'cifar10': 10_000, 'cifar100': 10_000, 'oxford_iiit_pet': 500,
         'oxford_flowers102': 500, 'imagenet2012': 20_000}


def get_config(arg: str = 'B/16,cifar10') -> ml_collections.ConfigDict:
  if ',' not in arg:
    raise ValueError(f'the argument is VARIANT,DATASET[,smoke], e.g. configs/finetune.py:B/16,'
                     f'cifar10, not {arg!r}.')
  variant, dataset, *options = arg.split(',')
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: a tensorflow-datasets name, read from data_dir (never downloaded during a run).
  config.dataset = dataset
  config.data_dir = ''  # '' is tfds' default, ~/tensorflow_datasets
  config.eval_split = 'test'  # 'validation' (a held-out slice of train) to tune the lr
  config.image_size = 224  # an integer multiple of the weights' resolution expands them
  config.shuffle_buffer = 50_000  # encoded images
  config.randaug_layers = 0  # RandAugment ops per image (0: off); the paper fine-tunes without
  config.randaug_magnitude = 0.0  # on the 0-10 scale; 15 and 20 extrapolate

  # Model: a Table 1 variant; a size set in `model` replaces its own.
  config.variant = variant
  config.model = table1.model()
  config.stoch_depth = 0.0
  config.dtype = 'bfloat16'  # compute dtype; use 'float32' on CPU
  # The pre-trained weights: .npz, timm file or workdir. Unset is an error; '' trains from random.
  config.init_from = ml_collections.config_dict.placeholder(str)

  # Optimisation.
  config.batch_size = 512
  config.eval_batch_size = 512
  config.total_steps = STEPS.get(dataset, 10_000)
  config.optimizer = 'sgd'  # momentum 0.9
  config.learning_rate = 0.03
  config.warmup_steps = min(500, config.total_steps // 10)
  config.lr_decay = 'cosine'
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.mixup = 0.0  # Beta(p, p) mixup of each device batch; 0 turns it off
  config.grad_accum_steps = 1  # micro-batches per device batch, for less memory

  # Bookkeeping.
  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3

  return smoke.apply(config, options,
                     'VARIANT,DATASET[,smoke], e.g. configs/finetune.py:B/16,cifar10')
