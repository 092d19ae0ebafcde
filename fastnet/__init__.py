"""fastnet: a Keras-compatible neural-network engine with Cython/C/OpenMP kernels for CPUs.

>>> from fastnet import layers, models
>>> model = models.Sequential([layers.Dense(10, activation="softmax", input_shape=(784,))])
"""
import importlib

__version__ = "0.1.0"

from fastnet.config import get_num_threads, set_num_threads  # noqa: F401,E402

_SUBMODULES = ("activations", "callbacks", "config", "datasets", "initializers", "layers",
               "losses", "metrics", "models", "ops", "optimizers", "regularizers", "saving",
               "schedules", "utils")


def __getattr__(name):
    # Submodules load on first use, so `import fastnet` stays cheap.
    if name in _SUBMODULES:
        return importlib.import_module(f"fastnet.{name}")
    raise AttributeError(f"module 'fastnet' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
