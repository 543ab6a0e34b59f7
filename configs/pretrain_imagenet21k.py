"""Pre-training on ImageNet-21k (paper Section 3, Appendix B, Table 4), from an image folder.

  python train.py --config configs/pretrain_imagenet21k.py:B/16 --workdir runs/b16_in21k \
      --config.data_dir=/data/imagenet21k

tensorflow-datasets has no ImageNet-21k builder, so the data is a folder:
<data_dir>/train/<wnid>/*.JPEG and a held-out <data_dir>/test/<wnid>/*.JPEG (for ImageNet-21k-P,
link its val/ as test/). Training files are only listed, not decoded up front (millions of
them); one that fails to decode is skipped with a warning. The held-out split is checked once.
Everything else is the ImageNet-1k recipe (configs/pretrain_imagenet.py): Adam, 10k warmup,
linear decay, batch 4096, weight decay 0.1, clipping at 1, 300 epochs, with Table 4's
ImageNet-21k rows: B RandAugment 10 and mixup 0.2, L RandAugment 20 and mixup 0.5 (S takes
B's row, H takes L's). The paper reports 0.41k TPUv3 core-days for Mixer-L/16 (see
benchmarks/core_days.py). `smoke` runs it in seconds (tests).
"""
import ml_collections

from configs import pretrain_imagenet, smoke

TRAIN_EXAMPLES = 14_197_122  # the full ImageNet-21k (fall 2011); set total_steps for others
TABLE_4 = {'S': (10.0, 0.2), 'B': (10.0, 0.2), 'L': (20.0, 0.5), 'H': (20.0, 0.5)}


def get_config(arg: str = 'B/16') -> ml_collections.ConfigDict:
  variant, *options = arg.split(',')
  config = pretrain_imagenet.get_config(variant)
  config.dataset = 'folder'
  config.data_dir = ''  # the folder holding train/ and test/
  config.verify_images = False  # list training files only; bad ones are skipped as read
  config.eval_split = 'test'
  size = variant.removeprefix('Mixer-')[0]
  if size not in TABLE_4:
    raise ValueError(f'Unknown Mixer variant {variant!r}: use S/32, S/16, B/32, B/16, L/32, '
                     'L/16 or H/14, e.g. configs/pretrain_imagenet21k.py:B/16.')
  config.randaug_magnitude, config.mixup = TABLE_4[size]
  config.total_steps = 300 * TRAIN_EXAMPLES // config.batch_size
  config.eval_every = 20_000
  return smoke.apply(config, options, 'VARIANT[,smoke], e.g. configs/pretrain_imagenet21k.py:L/16')
