"""Activation functions and their backward passes.

``activation_forward(name, x, alpha=None)`` computes y = f(x) for an array of any shape
(softmax over the last axis).  ``activation_backward(name, dy, y, x=None, alpha=None)`` computes
dx = dy * f'(x).  The derivative is written with the forward OUTPUT y where y determines it, and
with the forward INPUT x otherwise (``x`` is then required; see ``NEEDS_INPUT``)::

    relu        max(x, 0)                          dx = dy * (y > 0)
    sigmoid     1 / (1 + exp(-x))                  dx = dy * y * (1 - y)
    tanh        tanh(x)                            dx = dy * (1 - y**2)
    softmax     exp(x) / sum(exp(x), -1)           dx = y * (dy - sum(dy * y, -1))
    softplus    log(1 + exp(x))                    dx = dy * sigmoid(x)             (needs x)
    swish/silu  x * sigmoid(x)                     dx = dy * s (1 + x (1 - s))      (needs x)
    gelu        x/2 (1 + erf(x / sqrt 2))          dx = dy * (Phi(x) + x phi(x))    (needs x)
    gelu_tanh   x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))                  (needs x)
    elu         x if x > 0 else alpha (exp(x) - 1) dx = dy if y > 0 else dy (y + alpha)
    leaky_relu  x if x > 0 else alpha x            dx = dy if y > 0 else alpha dy
    linear      x                                  dx = dy

``alpha`` is elu's alpha (default 1.0) and leaky_relu's negative slope (default 0.2, Keras 3's
``keras.activations.leaky_relu``); it must be >= 0.  'gelu' is the exact (erf) form, Keras's
``gelu(x, approximate=False)`` and PyTorch's ``GELU()``; 'gelu_tanh' is ``approximate=True``.

Every array is a C-contiguous float32/float64 ndarray of one dtype and shape.  ``out`` may be
given to write the result into an existing buffer; it may be ``x`` itself (forward) or ``dy``
itself (backward) for in-place use.
"""
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import activations as _k
from fastnet.ops._checks import check_array, check_out

__all__ = ["ACTIVATIONS", "NEEDS_INPUT", "activation_forward", "activation_backward"]

_ELEMENTWISE = {"relu": _k.RELU, "sigmoid": _k.SIGMOID, "tanh": _k.TANH,
                "softplus": _k.SOFTPLUS, "swish": _k.SWISH, "silu": _k.SWISH, "gelu": _k.GELU,
                "gelu_tanh": _k.GELU_TANH, "elu": _k.ELU, "leaky_relu": _k.LEAKY_RELU}
ACTIVATIONS = tuple(_ELEMENTWISE) + ("softmax", "linear")
NEEDS_INPUT = frozenset(k for k, v in _ELEMENTWISE.items() if v in _k.NEEDS_INPUT)
DEFAULT_ALPHA = {"elu": 1.0, "leaky_relu": 0.2}

# Work (elements) from which two threads beat one, measured on Zen 4: the memory-bound loops
# (relu, leaky_relu, the backwards from y) pay from ~32K elements; the transcendental ones from
# ~8K in float32 (the vectorized exp, ~0.5 ns per element) and ~2K in float64 (libm, 5-10 ns
# per element).
PARALLEL_MIN_CHEAP = 32768
PARALLEL_MIN_TRANSCENDENTAL = {np.dtype(np.float32): 8192, np.dtype(np.float64): 2048}
_CHEAP_FORWARD = frozenset(("relu", "leaky_relu"))
_CHEAP_BACKWARD = frozenset(("relu", "sigmoid", "tanh", "elu", "leaky_relu", "softmax"))


def _num_threads(n, threshold):
    return config.get_num_threads() if n >= threshold else 1


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"name must be one of {ACTIVATIONS}, got {name!r}")
    return key


def _check_alpha(key, alpha):
    """alpha for elu / leaky_relu (default when None); ignored (but type-checked) otherwise."""
    if alpha is None:
        return DEFAULT_ALPHA.get(key, 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number or None, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (alpha >= 0.0 and np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    return alpha


def _check_same(arr, arr_name, ref, ref_name):
    check_array(arr, arr_name, dtype=ref.dtype)
    if arr.shape != ref.shape:
        raise ValueError(f"{arr_name} must have the shape of {ref_name} {ref.shape}, "
                         f"got {arr.shape}")


def _check_alias(out, inputs):
    """``out`` may be exactly one of ``inputs`` (same memory) but must not partly overlap any."""
    for arr, arr_name in inputs:
        if arr is not None and out is not arr and np.may_share_memory(out, arr) and \
                out.ctypes.data != arr.ctypes.data:
            raise ValueError(f"out must be {arr_name} itself or not overlap it in memory")


def _rows(a):
    """(rows, last axis) view of a C-contiguous array with at least 1 dimension."""
    return a.reshape(-1, a.shape[-1])


def activation_forward(name, x, out=None, alpha=None):
    """y = f(x) for ``name`` in ``ACTIVATIONS`` (softmax over the last axis).

    Args:
        name: the activation (case-insensitive).
        x: C-contiguous float32/float64 array, any shape (at least 1-D for softmax).
        out: optional C-contiguous array of x's shape and dtype to write into; may be ``x``.
        alpha: elu's alpha / leaky_relu's negative slope (>= 0); None for the default.

    Returns ``out`` (a new array when ``out`` is None; for linear a copy of x).
    Example: ``y = activation_forward("softmax", logits)  # rows sum to 1``
    """
    key = _check_name(name)
    alpha = _check_alpha(key, alpha)
    check_array(x, "x")
    if key == "softmax" and x.ndim == 0:
        raise ValueError("x must have at least 1 dimension for softmax, got a 0-d array")
    out = check_out(out, "out", x.shape, x.dtype)
    _check_alias(out, [(x, "x")])
    if x.size == 0:
        return out
    if key == "linear":
        if out is not x:
            np.copyto(out, x)
        return out
    if key == "softmax":
        x2, out2 = _rows(x), _rows(out)
        _k.softmax_forward(x2, out2, _num_threads(x.size, PARALLEL_MIN_TRANSCENDENTAL[x.dtype]))
        return out
    threshold = PARALLEL_MIN_CHEAP if key in _CHEAP_FORWARD else \
        PARALLEL_MIN_TRANSCENDENTAL[x.dtype]
    _k.elementwise_forward(_ELEMENTWISE[key], x.reshape(-1), out.reshape(-1),
                           _num_threads(x.size, threshold), alpha)
    return out


def activation_backward(name, dy, y, x=None, out=None, alpha=None):
    """dx = dy * f'(x) for ``name``, from the forward output ``y`` (and input ``x``).

    Args:
        name: the activation (case-insensitive).
        dy: gradient of the loss wrt y; C-contiguous float32/float64.
        y: the forward output (same shape and dtype as dy).
        x: the forward input (same shape and dtype); required for the names in
            ``NEEDS_INPUT`` (softplus, swish/silu, gelu, gelu_tanh), checked when given.
        out: optional buffer of dy's shape and dtype; may be ``dy`` (in place).
        alpha: as for ``activation_forward`` (must be the forward's).

    Returns ``out`` (a new array when ``out`` is None; for linear a copy of dy).
    """
    key = _check_name(name)
    alpha = _check_alpha(key, alpha)
    check_array(dy, "dy")
    _check_same(y, "y", dy, "dy")
    if x is not None:
        _check_same(x, "x", dy, "dy")
    elif key in NEEDS_INPUT:
        raise ValueError(f"x (the forward input) is required for the backward of {key!r}")
    if key == "softmax" and dy.ndim == 0:
        raise ValueError("dy must have at least 1 dimension for softmax, got a 0-d array")
    out = check_out(out, "out", dy.shape, dy.dtype)
    _check_alias(out, [(dy, "dy"), (y, "y"), (x, "x")])
    if dy.size == 0:
        return out
    if key == "linear":
        if out is not dy:
            np.copyto(out, dy)
        return out
    threshold = PARALLEL_MIN_CHEAP if key in _CHEAP_BACKWARD else \
        PARALLEL_MIN_TRANSCENDENTAL[dy.dtype]
    nthreads = _num_threads(dy.size, threshold)
    if key == "softmax":
        _k.softmax_backward(_rows(dy), _rows(y), _rows(out), nthreads)
        return out
    _k.elementwise_backward(_ELEMENTWISE[key], dy.reshape(-1), y.reshape(-1), out.reshape(-1),
                            nthreads, alpha, None if x is None else x.reshape(-1))
    return out
