"""Argument checks shared by every op.  Kernels trust their inputs; these make that safe."""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_array(x, name, *, ndim=None, dtype=None, contiguous=True):
    """Return ``x`` unchanged after checking it is a float32/float64 ndarray of ``ndim`` dims.

    Ops take already-converted arrays: the conversion of user input happens once per batch in
    the model, not in every op.  ``dtype`` pins the dtype (e.g. to match another argument).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (like the other inputs), "
                        f"got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if contiguous and not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    return x


def as_real_array(x, label):
    """``np.asarray(x)`` when it holds real numbers (float, int, bool); complex, object and
    string data raise TypeError naming ``label`` instead of being truncated or parsed."""
    try:
        v = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{label} must be array-like of numbers ({e})") from None
    if v.dtype.kind not in "fiub":
        raise TypeError(f"{label} must hold real numbers, got dtype {v.dtype}")
    return v


def check_nonempty(a, name):
    """Raise unless every dimension of ``a`` is non-zero."""
    if a.size == 0:
        raise ValueError(f"{name} must not have a zero-sized dimension, got shape {a.shape}")


def check_no_overlap(out, name, *arrays):
    """Raise if out's memory span meets any of the arrays' (None skipped): the bounds test of
    numpy.may_share_memory, three arrays per call to the GEMM module's sub-microsecond one."""
    if out is None:
        return
    from fastnet._kernels.gemm import first_overlap
    for i in range(0, len(arrays), 3):
        a, b, c = (arrays[i:i + 3] + (None, None))[:3]
        if first_overlap(out, a, b, c) >= 0:
            raise ValueError(f"{name} must not overlap the inputs")


def fast_pair(v, name):
    """``pair`` with fast paths for the common cases: a positive Python int, or two of them."""
    if type(v) is int and v >= 1:
        return v, v
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int \
            and v[0] >= 1 and v[1] >= 1:
        return v
    return pair(v, name)


def check_out(out, name, shape, dtype):
    """Check a caller-supplied output buffer, or allocate one when ``out`` is None."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous {np.dtype(dtype)} array of "
                         f"shape {tuple(shape)}, got {out.dtype} {out.shape}")
    return out


def check_positive_int(v, name, *, minimum=1):
    """Return ``v`` as int after checking it is an integer >= ``minimum``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def pair(v, name, *, minimum=1):
    """Normalize an int or a pair of ints (kernel size, strides) to a tuple of two ints."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, (tuple, list)):
        raise TypeError(f"{name} must be an integer or a pair of integers, got {v!r}")
    if len(v) != 2:
        raise ValueError(f"{name} must be an integer or a pair of integers, got {v!r}")
    return tuple(check_positive_int(x, name, minimum=minimum) for x in v)


def check_padding(padding):
    """Return the padding mode lower-cased after checking it is 'valid' or 'same'."""
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding.lower()


def conv_output_size(size, k, stride, padding, what="kernel"):
    """(output size, pad before, pad after) along one axis, TensorFlow's rule for 'same'.

    ``what`` names the window in the error message ('kernel' or 'pool')."""
    if padding == "valid":
        if size < k:
            raise ValueError(f"{what} size {k} is larger than the input size {size} "
                             f"with padding='valid'")
        return (size - k) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2
