"""Activation functions and their backward passes: relu, sigmoid, tanh, softmax, linear.

``activation_forward(name, x)`` computes y = f(x) for an array of any shape (softmax over the
last axis).  ``activation_backward(name, dy, y)`` computes dx = dy * f'(x) from the forward
OUTPUT y, which is all these five functions need::

    relu     dx = dy * (y > 0)
    sigmoid  dx = dy * y * (1 - y)
    tanh     dx = dy * (1 - y**2)
    softmax  dx = y * (dy - sum(dy * y, axis=-1, keepdims=True))
    linear   dx = dy

Every array is a C-contiguous float32/float64 ndarray of one dtype and shape.  ``out`` may be
given to write the result into an existing buffer; it may be ``x`` itself (forward) or ``dy``
itself (backward) for in-place use.
"""
import numpy as np

from fastnet import config
from fastnet._kernels import activations as _k
from fastnet.ops._checks import check_array, check_out

__all__ = ["ACTIVATIONS", "activation_forward", "activation_backward"]

ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "linear")
_ELEMENTWISE = {"relu": _k.RELU, "sigmoid": _k.SIGMOID, "tanh": _k.TANH}

# Work (elements) from which two threads beat one, measured on Zen 4: the memory-bound loops
# (relu, every backward) pay from ~32K elements; sigmoid/tanh/softmax from ~8K in float32 (the
# vectorized exp, ~0.5 ns per element) and ~2K in float64 (libm, 5-10 ns per element).
PARALLEL_MIN_CHEAP = 32768
PARALLEL_MIN_TRANSCENDENTAL = {np.dtype(np.float32): 8192, np.dtype(np.float64): 2048}


def _num_threads(n, threshold):
    return config.get_num_threads() if n >= threshold else 1


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"name must be one of {ACTIVATIONS}, got {name!r}")
    return key


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


def activation_forward(name, x, out=None):
    """y = f(x) for ``name`` in relu, sigmoid, tanh, softmax (over the last axis), linear.

    Args:
        name: the activation (case-insensitive).
        x: C-contiguous float32/float64 array, any shape (at least 1-D for softmax).
        out: optional C-contiguous array of x's shape and dtype to write into; may be ``x``.

    Returns ``out`` (a new array when ``out`` is None; for linear a copy of x).
    Example: ``y = activation_forward("softmax", logits)  # rows sum to 1``
    """
    key = _check_name(name)
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
    threshold = PARALLEL_MIN_CHEAP if key == "relu" else PARALLEL_MIN_TRANSCENDENTAL[x.dtype]
    _k.elementwise_forward(_ELEMENTWISE[key], x.reshape(-1), out.reshape(-1),
                           _num_threads(x.size, threshold))
    return out


def activation_backward(name, dy, y, x=None, out=None):
    """dx = dy * f'(x) for ``name``, computed from the forward output ``y``.

    Args:
        name: the activation (case-insensitive).
        dy: gradient of the loss wrt y; C-contiguous float32/float64.
        y: the forward output (same shape and dtype as dy).
        x: the forward input; not needed by these activations, checked when given (accepted so
            that every activation has one signature).
        out: optional buffer of dy's shape and dtype; may be ``dy`` (in place).

    Returns ``out`` (a new array when ``out`` is None; for linear a copy of dy).
    """
    key = _check_name(name)
    check_array(dy, "dy")
    _check_same(y, "y", dy, "dy")
    if x is not None:
        _check_same(x, "x", dy, "dy")
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
    nthreads = _num_threads(dy.size, PARALLEL_MIN_CHEAP)
    if key == "softmax":
        _k.softmax_backward(_rows(dy), _rows(y), _rows(out), nthreads)
        return out
    _k.elementwise_backward(_ELEMENTWISE[key], dy.reshape(-1), y.reshape(-1), out.reshape(-1),
                            nthreads)
    return out
