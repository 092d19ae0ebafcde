"""Weight penalties of the L1/L2 regularizers: value and gradient (Keras formulas).

    penalty(w)  = l1 * sum(|w|) + l2 * sum(w**2)          (Keras: no 1/2 on the L2 term)
    d penalty   = l1 * sign(w) + 2 * l2 * w               (sign(0) = 0, as TensorFlow's abs)

The sums are accumulated in double in a fixed order (chunks of the flat array, then the chunks
in order), so the value is bitwise reproducible for any thread count.
"""
import math
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import penalty as _k
from fastnet.ops._checks import check_array
from fastnet.ops._workspace import scratch

__all__ = ["weight_penalty", "weight_penalty_grad"]

# Elements from which two threads pay, measured on Zen 4 (a parallel region costs 1-2 us).
PARALLEL_MIN_ELEMENTS = 16384


def _threads(n):
    return config.get_num_threads() if n >= PARALLEL_MIN_ELEMENTS else 1


def _check_factor(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


def weight_penalty(w, l1=0.0, l2=0.0):
    """l1 * sum(|w|) + l2 * sum(w**2) as a Python float, for a C-contiguous float array w."""
    check_array(w, "w")
    l1 = _check_factor(l1, "l1")
    l2 = _check_factor(l2, "l2")
    if w.size == 0 or (l1 == 0.0 and l2 == 0.0):
        return 0.0
    flat = w.reshape(-1)
    partials = scratch("penalty.partials", (2 * -(-flat.size // _k.CHUNK),), np.float64)
    s1, s2 = _k.penalty_sums(flat, partials, _threads(flat.size))
    return l1 * s1 + l2 * s2


def weight_penalty_grad(w, grad, l1=0.0, l2=0.0):
    """Add the penalty's gradient ``l1 * sign(w) + 2 * l2 * w`` into ``grad`` in place.

    ``grad`` must have w's shape and dtype, be C-contiguous and writeable and not overlap w.
    Returns ``grad``.
    """
    check_array(w, "w")
    check_array(grad, "grad", dtype=w.dtype)
    if grad.shape != w.shape:
        raise ValueError(f"grad must have the shape of w {w.shape}, got {grad.shape}")
    if not grad.flags.writeable:
        raise ValueError("grad must be writeable")
    if np.may_share_memory(w, grad):
        raise ValueError("grad must not overlap w in memory")
    l1 = _check_factor(l1, "l1")
    l2 = _check_factor(l2, "l2")
    if w.size == 0 or (l1 == 0.0 and l2 == 0.0):
        return grad
    _k.penalty_grad_add(w.reshape(-1), grad.reshape(-1), l1, l2, _threads(w.size))
    return grad
