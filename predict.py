"""Classifies image files with a Mixer checkpoint and prints the top classes.

  python predict.py --checkpoint runs/digits image.png [more images ...]   # the run's class names
  python predict.py --checkpoint runs/digits photos/    # every image in the folder (gs:// too)
  python predict.py --checkpoint Mixer-B_16.npz --labels imagenet_labels.txt cat.jpg

The checkpoint is a workdir (its newest checkpoint), a checkpoints/<step> folder, an official
.npz file or timm weights; the architecture and resolution are read from the weights. Every
path may be a gs:// URL.
"""
import os
from typing import Iterator

from mixer_jax import errors

errors.end_quietly_on_ctrl_c_while_starting()  # the imports below take seconds
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's notices and warnings

from absl import app, flags, logging
from etils import epath
import jax
import ml_collections
import numpy as np

from mixer_jax import checkpoints, models, paths
from mixer_jax.errors import UserError

_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Weights to classify with: a train.py workdir, one of its '
    'checkpoints/<step> folders, an official .npz file or timm weights.')
_LABELS = flags.DEFINE_string(
    'labels', None, 'Text file with one class name per line (default: the labels.txt of the '
    'train.py run the checkpoint is from).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many classes to print per image.', lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 32, 'Images classified at once: memory holds this many, not all of them.',
    lower_bound=1)


def run_config(checkpoint: str) -> ml_collections.ConfigDict | None:
  """The config.json of the train.py run that `checkpoint` is from."""
  saved = checkpoints.run_file(checkpoint, 'config.json')
  return ml_collections.ConfigDict(checkpoints.run_config(saved)) if saved else None


def classify(params, image_files: list[str], checkpoint: str, batch_size: int,
             skippable=frozenset()) -> Iterator[tuple[str, np.ndarray]]:
  """(path, class probabilities (classes,)) of each image in turn, at the weights' training
  resolution. A file in `skippable` (found in a folder) that cannot be decoded is skipped with a
  warning; another stops the command.

  Images from a train.py run are prepared as its evaluation prepared them (resize and central
  crop, or the small-image resize; an input permutation); other weights get the whole image
  resized, as the official fine-tuning evaluates. Each runs with the GELU its weights were
  trained with (timm's: the exact one).
  """
  kwargs = checkpoints.model_kwargs(params)
  resolution = kwargs.pop('resolution')
  config = run_config(checkpoint)
  if config is not None:
    config.image_size = resolution
  model = models.MlpMixer(**kwargs, approximate_gelu=checkpoints.trained_gelu(checkpoint)
                         is not False)  # unknown: the official code's tanh GELU
  # Imported here: TensorFlow takes seconds, which a mistyped flag or file need not wait for.
  import tensorflow as tf
  from mixer_jax import input_pipeline

  def prepared(path):
    try:
      image = input_pipeline.decode_image(tf.io.read_file(str(paths.resolve(path))))
    except tf.errors.OpError as e:  # not an image, or gone or unreadable since it was listed
      if path in skippable:  # a folder's one bad file (a cut-off download) does not stop the rest
        logging.warning('Skipped %s, which cannot be read as an image (%s).', path,
                        input_pipeline.why_undecodable(e))
        return None
      raise UserError(f'Cannot read {path} as an image ({input_pipeline.why_undecodable(e)}): '
                      'give JPEG, PNG, GIF, BMP or WebP files.') from e
    return (input_pipeline.eval_image(config, image) if config is not None
            else input_pipeline.to_model_input(image, resolution)).numpy()

  batch_size = min(batch_size, len(image_files))
  probabilities = jax.jit(lambda variables, x: jax.nn.softmax(model.apply(variables, x)))
  for start in range(0, len(image_files), batch_size):
    batch = [(path, prepared(path)) for path in image_files[start:start + batch_size]]
    batch = [(path, image) for path, image in batch if image is not None]
    if batch:
      images = [image for _, image in batch]
      padded = images + images[:1] * (batch_size - len(images))  # one shape, one compilation
      found = np.asarray(probabilities({'params': params}, np.stack(padded)))
      yield from zip([path for path, _ in batch], found)  # the padding's left out


def image_files(args: list[str]) -> tuple[list[str], set[str]]:
  """The files named, each folder replaced by the image files under it, in sub-folders too
  (sorted: a shell's glob does not reach into gs:// folders); and the files found in folders."""
  files, in_folders = [], set()
  for path in args:
    found = paths.resolve(path)
    if found.is_dir():
      from mixer_jax import input_pipeline  # TensorFlow, which lists gs:// folders
      images, others = input_pipeline.image_files_under(
          path if paths.is_url(path) else os.path.expanduser(path))
      extensions = ', '.join(input_pipeline.IMAGE_EXTENSIONS)
      if not images:
        raise UserError(f'{path} is a folder without images ({extensions}, in sub-folders too): '
                        'give image files or a folder that holds them.')
      if others:
        logging.warning('%s: %d file(s) without an image extension (%s) are not classified.',
                        path, len(others), extensions)
      files += images
      in_folders.update(images)
    elif found.is_file():
      files.append(path)
    else:
      raise UserError(f'{path} {"is not a file" if found.exists() else "does not exist"}: give '
                      'JPEG, PNG, GIF, BMP or WebP files, or folders of them.')
  return files, in_folders


def read_labels(path, num_classes: int, what: str | None = None) -> list[str]:
  """One class name per line, as many as the weights have classes."""
  what = what or f'--labels={path}'
  try:
    text = paths.resolve(path).read_bytes().decode('utf-8-sig')  # a byte-order mark is no name
    labels = [line.strip() for line in text.splitlines() if line.strip()]
  except (*paths.storage_errors(), UnicodeDecodeError) as e:
    raise UserError(f'{what} cannot be read ({e}): give a text file with one class '
                    'name per line.') from e
  if len(labels) != num_classes:
    raise UserError(f'{what} has {len(labels)} names, the weights {num_classes} '
                    'classes: give --labels, a file with one name per class, in class order.')
  return labels


@errors.reported
def main(argv):
  if not _CHECKPOINT.value:  # absl's own message for a required flag names no choices
    raise UserError('Give the weights to classify with: --checkpoint=WORKDIR (a train.py run), '
                    'one of its checkpoints/<step> folders, an official .npz or timm weights.')
  if _LABELS.value is not None and not _LABELS.value.strip():  # else the run's labels, silently
    raise UserError('--labels is empty (an unset variable in the command?): give a text file '
                    'with one class name per line, or leave the flag out for the run\'s own.')
  if not argv[1:]:
    raise UserError('Give one or more image files, or folders of them, after the flags.')
  files, in_folders = image_files(argv[1:])  # before the weights, which take minutes to load
  logging.set_verbosity(logging.WARNING)  # the output is the classes, not orbax's progress
  params = checkpoints.load_params(_CHECKPOINT.value, '--checkpoint')
  num_classes = checkpoints.model_kwargs(params)['num_classes']
  if not num_classes:
    raise UserError(f'--checkpoint={_CHECKPOINT.value} has no classification head (features '
                    'only): give weights trained on your classes.')
  if _LABELS.value:
    labels = read_labels(_LABELS.value, num_classes)
  else:  # a train.py run's class names (its data set's), where it wrote them
    saved = checkpoints.run_file(_CHECKPOINT.value, 'labels.txt')
    labels = read_labels(saved, num_classes, str(saved)) if saved else None
  classified = 0
  for path, p in classify(params, files, _CHECKPOINT.value, _BATCH_SIZE.value, in_folders):
    print(path, flush=True)
    for k in np.argsort(-p)[:_TOP_K.value]:
      print(f'  {p[k]:7.2%}  {labels[k] if labels else f"class {k}"}')
    classified += 1
  if not classified:  # every one a folder's, and skipped: not a success
    raise UserError(f'None of the {len(files)} image file(s) could be decoded (the warnings name '
                    'each): give JPEG, PNG, GIF, BMP or WebP files.')


if __name__ == '__main__':
  app.run(main, flags_parser=errors.parse_flags)
