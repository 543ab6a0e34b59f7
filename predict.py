"""Classifies image files with a Mixer checkpoint and prints the top classes.

  python predict.py --checkpoint runs/digits image.png [more images ...]
  python predict.py --checkpoint Mixer-B_16.npz --labels imagenet_labels.txt cat.jpg

The checkpoint is a workdir (its newest checkpoint), a checkpoints/<step> folder, an official
.npz file or timm weights; the architecture and resolution are read from the weights.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app, flags
import jax
import numpy as np
import tensorflow as tf

from mixer_jax import checkpoints, input_pipeline, models
from mixer_jax.errors import UserError

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Weights to classify with.', required=True)
_LABELS = flags.DEFINE_string('labels', None, 'Text file with one class name per line.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many classes to print per image.')


def classify(params, paths: list[str]) -> np.ndarray:
  """Class probabilities (len(paths), classes) at the resolution the weights were trained at."""
  kwargs = checkpoints.model_kwargs(params)
  resolution = kwargs.pop('resolution')
  model = models.MlpMixer(**kwargs)
  images = []
  for path in paths:
    try:
      image = input_pipeline.decode_image(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      raise UserError(f'Cannot read {path} as an image ({e.message.splitlines()[0]}).') from e
    images.append(input_pipeline.to_model_input(image, resolution).numpy())
  logits = jax.jit(model.apply)({'params': params}, np.stack(images))
  return np.asarray(jax.nn.softmax(logits))


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give one or more image files after the flags.')
  try:
    probs = classify(checkpoints.load_params(_CHECKPOINT.value), paths)
  except UserError as e:
    raise SystemExit(f'error: {e}')
  labels = None
  if _LABELS.value:
    with open(_LABELS.value) as f:
      labels = [line.strip() for line in f if line.strip()]
  for path, p in zip(paths, probs):
    print(path)
    for k in np.argsort(-p)[:_TOP_K.value]:
      name = labels[k] if labels and k < len(labels) else f'class {k}'
      print(f'  {p[k]:7.2%}  {name}')


if __name__ == '__main__':
  app.run(main)
