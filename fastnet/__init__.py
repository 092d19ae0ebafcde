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


# Functions exported from a submodule, loaded on first use too: name -> module.
_LAZY_FUNCTIONS = {"quantize": "quantization"}
_SUBMODULES += ("quantization", "pruning", "distillation", "data", "preprocessing", "inference",
                "onnx", "distributed", "bench", "examples")


def __getattr__(name):
    # Submodules load on first use, so `import fastnet` stays cheap.
    if name in _SUBMODULES:
        return importlib.import_module(f"fastnet.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f"fastnet.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module 'fastnet' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_LAZY_FUNCTIONS))
