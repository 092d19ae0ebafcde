"""Dropout with inverted scaling and a counter-based, thread-count-independent random mask.

    training:  y = x * mask / (1 - rate),  mask[i] ~ Bernoulli(1 - rate)
    backward:  dx = dy * mask / (1 - rate)

The mask of a call is a pure function of (seed, step, element index) — see
``fastnet/_kernels/dropout.pyx`` — so the same (seed, step) gives the same mask bitwise, for
any thread count, and a layer advances ``step`` once per training call.  The forward keeps the
mask (uint8, 1 = kept) for the backward.

With ``noise_shape`` (Keras semantics: the mask has that shape and is broadcast over x, e.g.
(N, 1, 1, C) drops whole channels) the op draws the noise-shaped multipliers (scale or 0) and
NumPy's broadcasting multiply applies them (compiled, single-threaded).
"""
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import dropout as _k
from fastnet.ops._checks import check_array, check_out

__all__ = ["dropout_forward", "dropout_backward", "dropout_mask_values", "check_rate"]

# Elements from which two threads pay, measured on Zen 4 (the hash costs ~1 cycle per element;
# a parallel region ~1-2 us).
PARALLEL_MIN_ELEMENTS = 16384
_MAX_ELEMENTS = 2 ** 32 - 1


def check_rate(rate):
    """``rate`` as a float after checking 0 <= rate < 1."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"rate must be a real number, got {type(rate).__name__}")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    return rate


def _check_int(v, name, bits):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if not 0 <= v < 2 ** bits:
        raise ValueError(f"{name} must be in [0, 2**{bits}), got {v}")
    return int(v)


def _key_and_threshold(rate, seed, step):
    rate = check_rate(rate)
    seed = _check_int(seed, "seed", 64)
    step = _check_int(step, "step", 64)
    threshold = min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)
    k0, k1 = _k.call_key(seed, step)
    return rate, k0, k1, threshold


def _threads(n):
    return config.get_num_threads() if n >= PARALLEL_MIN_ELEMENTS else 1


def _check_size(a, name):
    if a.size > _MAX_ELEMENTS:
        raise ValueError(f"{name} has {a.size} elements; dropout supports fewer than 2**32")


def dropout_forward(x, rate, seed, step, out=None, mask=None):
    """Inverted dropout of x (C-contiguous float32/float64, any shape) for call ``step``.

    Args:
        x: the input.
        rate: fraction dropped, 0 <= rate < 1.
        seed, step: non-negative integers below 2**64 choosing the mask.
        out: optional output buffer like x (may be x itself).
        mask: optional uint8 C-contiguous buffer of x's shape receiving the mask (1 = kept).

    Returns (out, mask).  Example: ``y, m = dropout_forward(x, 0.5, seed=1, step=0)``.
    """
    check_array(x, "x")
    _check_size(x, "x")
    rate, k0, k1, threshold = _key_and_threshold(rate, seed, step)
    out = check_out(out, "out", x.shape, x.dtype)
    if out is not x and np.may_share_memory(out, x):
        raise ValueError("out must be x itself or not overlap it in memory")
    if mask is None:
        mask = np.empty(x.shape, dtype=np.uint8)
    elif not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.shape != x.shape \
            or not mask.flags.c_contiguous or not mask.flags.writeable:
        raise ValueError(f"mask must be a writeable C-contiguous uint8 array of shape {x.shape}")
    elif np.may_share_memory(mask, x) or np.may_share_memory(mask, out):
        raise ValueError("mask must not overlap x or out in memory")
    if x.size == 0:
        return out, mask
    _k.dropout_forward(x.reshape(-1), out.reshape(-1), mask.reshape(-1), k0, k1, threshold,
                       1.0 / (1.0 - rate), _threads(x.size))
    return out, mask


def dropout_backward(dy, mask, rate, out=None):
    """dx = dy * mask / (1 - rate) for the uint8 ``mask`` of ``dropout_forward``.

    dy C-contiguous float32/float64, mask uint8 of its shape; ``out`` may be dy itself."""
    check_array(dy, "dy")
    _check_size(dy, "dy")
    rate = check_rate(rate)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.shape != dy.shape \
            or not mask.flags.c_contiguous:
        raise ValueError(f"mask must be a C-contiguous uint8 array of shape {dy.shape}")
    out = check_out(out, "out", dy.shape, dy.dtype)
    if out is not dy and np.may_share_memory(out, dy):
        raise ValueError("out must be dy itself or not overlap it in memory")
    if np.may_share_memory(out, mask):
        raise ValueError("out must not overlap mask in memory")
    if dy.size == 0:
        return out
    _k.dropout_backward(dy.reshape(-1), mask.reshape(-1), out.reshape(-1), 1.0 / (1.0 - rate),
                        _threads(dy.size))
    return out


def dropout_mask_values(shape, dtype, rate, seed, step, out=None):
    """The multipliers of a dropout mask of ``shape``: 1 / (1 - rate) where kept, 0 where
    dropped (for a mask broadcast over ``noise_shape``); same (seed, step) -> same values."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    rate, k0, k1, threshold = _key_and_threshold(rate, seed, step)
    out = check_out(out, "out", tuple(shape), dtype)
    _check_size(out, "out")
    if out.size:
        _k.mask_values(out.reshape(-1), k0, k1, threshold, 1.0 / (1.0 - rate))
    return out
