import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
# Tests import `configs` and `train` from the repository root, wherever pytest starts.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
