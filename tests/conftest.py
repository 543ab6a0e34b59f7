import importlib.util
import os
import sys

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
