import gc
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
  """The session's XLA settings and temporary files, for its workers and the processes they
  start: LLVM at -O1, one compilation cache, one temporary folder removed at the end.

  Many tests train the same small models, in this process or through train.py: each shape
  compiles once (about half of a short run's time). xdist workers, started after this, inherit
  the variables; JAX reads them when it is imported. Programs that compile in under a second
  are kept too (JAX's default leaves them out): about 1 s of each short train.py run.
  """
  if hasattr(config, 'workerinput'):  # an xdist worker: the controller made the folders
    return
  # LLVM at -O1 rather than XLA's -O2: a 20-step run of the small test model, mostly compiling,
  # took 17.5 CPU seconds instead of 25.7; the default digits run trained in 62 s against 58.
  # The HLO is the same, and the parameters after those 20 steps were bitwise equal. It applies
  # on whatever backend the tests run, the GPU of the accelerator check's tests step included.
  if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_backend_optimization_level=1').strip()
  # What libraries leave in the temporary folder goes with the session: tfds makes an empty
  # folder for each builder of unprepared data, TensorFlow's autograph files outlive killed
  # processes (about 190 a run, before). pytest's own tmp_path folders stay where they were,
  # its last three runs kept.
  os.environ.setdefault('PYTEST_DEBUG_TEMPROOT', tempfile.gettempdir())
  session = tempfile.mkdtemp(prefix='mixer_jax_tests_')
  config.add_cleanup(lambda: shutil.rmtree(session, ignore_errors=True))
  os.environ['TMPDIR'] = tempfile.tempdir = session
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(session, 'xla_cache'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])


def pytest_sessionfinish(session):
  """One garbage collection, then gc.freeze(), before an xdist worker reports that it finished.

  After that report pytest collects garbage five times, to find exceptions raised in __del__;
  over this session's heap (JAX's and TensorFlow's caches) that took 4-12 s, and execnet sends
  SIGINT to a worker still busy 5 s after it was told to end: a KeyboardInterrupt warning
  after 100%. This collection finds the same exceptions; frozen, the heap is not traversed again.
  """
  gc.collect()
  gc.freeze()
