"""Local paths and cloud-storage URLs (gs://bucket/...) alike, through etils.epath.

With TensorFlow installed epath goes through tf.io.gfile, as tfds, clu and orbax do on a pod.
"""
import os
import sys

from etils import epath

from mixer_jax.errors import UserError


def is_url(path) -> bool:
  return '://' in os.fspath(path)


def resolve(path) -> epath.Path:
  """`~` expanded and local paths made absolute; URLs are kept as they are."""
  path = os.fspath(path)
  return epath.Path(path if is_url(path) else os.path.abspath(os.path.expanduser(path)))


def storage_errors() -> tuple[type[Exception], ...]:
  """What a file operation raises: OSError, and TensorFlow's errors where tf.io.gfile serves it."""
  tf = sys.modules.get('tensorflow')
  return (OSError, tf.errors.OpError) if tf else (OSError,)


def open_to_append(path: str, flag: str):
  """`path` opened for appending now, so that a wrong --`flag` stops a job before its work."""
  if not path.strip():  # else no output at all, silently
    raise UserError(f'--{flag} is empty (an unset variable in the command?): give a file, or '
                    'leave the flag out.')
  try:
    return resolve(path).open('a')
  except storage_errors() as e:
    raise UserError(f'--{flag}={path} cannot be written ({e}): give a file in an existing '
                    'folder this user can write.') from e
