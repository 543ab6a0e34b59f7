import importlib.util
import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
# Tests import `configs` and `train` from the repository root, wherever pytest starts.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

# Float32 matmuls in full float32 on every backend: GPUs would otherwise run them as TF32
# (relative errors near 3e-4), and the numerical tests compare against float64 references.
jax.config.update('jax_default_matmul_precision', 'highest')

# torchvision (imported by timm) crashes the process when TensorFlow was imported before it;
# the other order works. Only the timm parity test needs it.
if importlib.util.find_spec('torchvision') is not None:
  import torchvision  # noqa: F401


def pytest_configure(config):
  """One XLA compilation cache for the session, its workers and the processes they start.

  Many tests train the same small models, in this process or through train.py: each shape
  compiles once (about half of a short run's time). xdist workers, started after this, inherit
  the variable; JAX reads it when it is imported.
  """
  if hasattr(config, 'workerinput'):  # an xdist worker: the controller made the cache
    return
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='mixer_jax_xla_cache_')
    config.add_cleanup(lambda: shutil.rmtree(os.environ.pop('JAX_COMPILATION_CACHE_DIR'),
                                             ignore_errors=True))
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
