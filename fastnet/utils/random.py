"""The seed every random choice in fastnet (initializers, shuffling) draws from."""
import numbers

import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed):
    """Seed weight initialization and shuffling, like ``keras.utils.set_random_seed``."""
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _rng = np.random.default_rng(int(seed))


def get_rng():
    """The process-wide numpy Generator (re-created by ``set_random_seed``)."""
    return _rng


def make_rng(seed):
    """A Generator from an explicit ``seed`` (int) or, when None, a child of the global one."""
    if seed is None:
        return np.random.default_rng(_rng.integers(0, 2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(int(seed))
