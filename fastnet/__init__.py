"""fastnet: a Keras-compatible neural-network engine with Cython/C/OpenMP kernels for CPUs."""
__version__ = "0.1.0"

from fastnet.config import get_num_threads, set_num_threads  # noqa: F401
