"""Host memory settings for training on CPU."""
import ctypes
import ctypes.util
import sys

import jax

# glibc mallopt() parameters (malloc.h), each with the value we set and glibc's default.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_KEEP = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 40), (_M_TOP_PAD, 1 << 30))
_DEFAULTS = ((_M_ARENA_MAX, 0), (_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 << 10),
             (_M_TOP_PAD, 128 << 10))


def _mallopt(settings) -> bool:
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
  except (OSError, AttributeError):  # not glibc: no mallopt
    return False


def keep_freed_memory_on_cpu() -> bool:
  """Where JAX computes on the CPU, makes glibc keep freed memory for the next step.

  XLA's CPU runtime allocates each step's temporaries afresh (1.2 GB for S/32 at batch 32).
  By default glibc maps such blocks on allocation and unmaps them on free, so every step faults
  all of its pages in again, zeroed by the kernel: a fifth of a CPU training step here. One heap
  that is never unmapped or trimmed lets each step reuse the same resident pages. Call it
  before anything starts JAX's backend (its threads keep the settings they start with); on
  accelerators glibc's defaults are put back. Returns whether the setting is in effect.
  """
  if not _mallopt(_KEEP):
    return False
  if jax.default_backend() == 'cpu':
    return True
  _mallopt(_DEFAULTS)
  return False
