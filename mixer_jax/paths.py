"""Local paths and cloud-storage URLs (gs://bucket/...) alike, through etils.epath.

With TensorFlow installed epath goes through tf.io.gfile, as tfds, clu and orbax do on a pod.
"""
import os
import sys

from etils import epath


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
