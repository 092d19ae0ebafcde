"""Matrix product with a fused bias + activation epilogue, on the fastnet GEMM."""
import numpy as np

from fastnet import config
from fastnet._kernels import gemm as _gemm
from fastnet.ops._checks import check_array

__all__ = ["matmul"]

_ACTIVATIONS = {None: 0, "linear": 0, "relu": 1}


def _check_out(out, shape, dtype):
    """Allocate C, or check a caller's: writeable, unit inner stride (rows may be padded)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {np.dtype(dtype)} (like a and b), got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    item = out.itemsize
    s0, s1 = out.strides
    if out.size and (s1 != item or (shape[0] > 1 and (s0 <= 0 or s0 % item
                                                       or s0 < shape[1] * item))):
        raise ValueError(f"out must have unit stride along its last axis and a positive row "
                         f"stride of at least one row, got strides {out.strides}")
    return out


def matmul(a, b, *, bias=None, activation=None, transpose_a=False, transpose_b=False, out=None):
    """``activation(op(a) @ op(b) + bias)`` on 2-D float32/float64 arrays.

    ``op(a)`` is ``a.T`` when ``transpose_a`` (no copy is made: the kernel reads the transpose),
    likewise ``op(b)``.  With ``op(a)`` of shape (M, K) and ``op(b)`` of shape (K, N) the result
    has shape (M, N); ``bias`` has shape (N,) and is added to every row; ``activation`` is None,
    ``'linear'`` or ``'relu'``, applied while the result is still in registers.  ``out`` (shape
    (M, N), same dtype, unit inner stride) receives the result and is returned; it must not
    overlap ``a``, ``b`` or ``bias``.  The product runs on ``fastnet.get_num_threads()``
    threads.  Inputs with a unit inner stride (e.g. column slices of a bigger array) are read in
    place; others are copied once.

    Example::

        >>> x = np.ones((4, 3), np.float32); w = np.ones((3, 2), np.float32)
        >>> matmul(x, w, bias=np.array([1, -5], np.float32), activation='relu')
        array([[4., 0.], ... ], dtype=float32)
    """
    fast = _gemm.matmul_fast(a, b, bias, activation, transpose_a, transpose_b, out,
                             config._num_threads)
    if fast is not None:
        return fast
    check_array(a, "a", ndim=2, contiguous=False)
    dtype = a.dtype
    check_array(b, "b", ndim=2, dtype=dtype, contiguous=False)
    if transpose_a is not False and transpose_a is not True \
            and not isinstance(transpose_a, np.bool_):
        raise TypeError(f"transpose_a must be a bool, got {type(transpose_a).__name__}")
    if transpose_b is not False and transpose_b is not True \
            and not isinstance(transpose_b, np.bool_):
        raise TypeError(f"transpose_b must be a bool, got {type(transpose_b).__name__}")
    act = _ACTIVATIONS.get(activation, -1) if activation is None or type(activation) is str \
        else -1
    if act < 0:
        raise ValueError(f"activation must be None, 'linear' or 'relu', got {activation!r}")
    m, k = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if transpose_b else b.shape
    if k != kb:
        raise ValueError(f"inner dimensions differ: op(a) has shape {(m, k)} and op(b) has "
                         f"shape {(kb, n)} (transpose_a={bool(transpose_a)}, "
                         f"transpose_b={bool(transpose_b)})")
    if bias is not None:
        check_array(bias, "bias", ndim=1, dtype=dtype, contiguous=False)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
        if bias.strides[0] != bias.itemsize:
            bias = np.ascontiguousarray(bias)
    if out is None:
        out = np.empty((m, n), dtype)
    else:
        out = _check_out(out, (m, n), dtype)
        hit = _gemm.first_overlap(out, a, b, bias)  # numpy.may_share_memory, cheaper
        if hit >= 0:
            raise ValueError(f"out must not overlap {('a', 'b', 'bias')[hit]}")
    if m == 0 or n == 0:
        return out
    item = a.itemsize
    sa, sb = a.strides, b.strides
    if (sa[1] != item and a.shape[1] > 1) or (sa[0] < 0 or sa[0] % item):
        a = np.ascontiguousarray(a)
    if (sb[1] != item and b.shape[1] > 1) or (sb[0] < 0 or sb[0] % item):
        b = np.ascontiguousarray(b)
    _gemm.gemm_into(a, b, out, transpose_a, transpose_b, 1.0, 0.0, bias, act,
                    config.get_num_threads())
    return out
