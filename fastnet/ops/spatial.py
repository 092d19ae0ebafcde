"""Global pooling and zero padding on NHWC arrays (Keras ``GlobalAveragePooling2D``,
``GlobalMaxPooling2D``, ``ZeroPadding2D``).

Shape contract::

    global_avg_pool2d / global_max_pool2d:  x (N, H, W, C) -> y (N, C)
    zero_pad2d(x, ((t, b), (l, r))):        x (N, H, W, C) -> y (N, t + H + b, l + W + r, C)

The max pooling gradient is split evenly among the pixels equal to the maximum, as TensorFlow's
``reduce_max`` gradient (what Keras's GlobalMaxPooling2D differentiates) and PyTorch's ``amax``.

Example::

    >>> global_avg_pool2d(np.ones((2, 5, 5, 8), np.float32)).shape
    (2, 8)
"""
import numpy as np

from fastnet import config
from fastnet._kernels import spatial as _k
from fastnet.ops._checks import check_no_overlap as _check_no_overlap
from fastnet.ops._checks import check_array, check_out, check_positive_int
from fastnet.ops._workspace import scratch

__all__ = ["global_avg_pool2d", "global_max_pool2d", "global_avg_pool2d_backward",
           "global_max_pool2d_backward", "zero_pad2d", "zero_pad2d_backward",
           "normalize_padding2d"]

# Elements from which two threads pay, measured on Zen 4 (memory-bound passes; a parallel
# region costs 1-2 us).
PARALLEL_MIN_ELEMENTS = 16384


def _threads(n_elements, n_parts):
    if n_elements < PARALLEL_MIN_ELEMENTS or n_parts < 2:
        return 1
    return min(config.get_num_threads(), n_parts)


def _check_x4(x, name):
    check_array(x, name, ndim=4)
    if x.size == 0:
        raise ValueError(f"{name} must not have a zero-sized dimension, got shape {x.shape}")
    return x


def _check_shape4(shape, name):
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a tuple of 4 integers (N, H, W, C), got {shape!r}")
    return tuple(check_positive_int(s, name) for s in shape)


def _global(x, out, average):
    _check_x4(x, "x")
    out = check_out(out, "out", (x.shape[0], x.shape[3]), x.dtype)
    _check_no_overlap(out, "out", x)
    _k.global_pool2d(x, out, average, _threads(x.size, x.shape[0]))
    return out


def global_avg_pool2d(x, out=None):
    """Mean of x (N, H, W, C) over H and W -> (N, C) (into ``out`` when given)."""
    return _global(x, out, True)


def global_max_pool2d(x, out=None):
    """Max of x (N, H, W, C) over H and W -> (N, C) (into ``out`` when given)."""
    return _global(x, out, False)


def _scratch_for(nthreads, channels, dtype):
    # one slice of C per thread, padded to whole cache lines plus one (no false sharing)
    per_line = 64 // np.dtype(dtype).itemsize
    stride = (-(-channels // per_line) + 1) * per_line
    return scratch("spatial.pending", (nthreads * stride,), dtype)


def global_avg_pool2d_backward(dy, input_shape, out=None):
    """Gradient of ``global_avg_pool2d``: dy (N, C) spread evenly over H*W -> input_shape."""
    check_array(dy, "dy", ndim=2)
    input_shape = _check_shape4(input_shape, "input_shape")
    n, h, w, c = input_shape
    if dy.shape != (n, c):
        raise ValueError(f"dy must have shape {(n, c)} (the pooled input_shape "
                         f"{input_shape}), got {dy.shape}")
    out = check_out(out, "out", input_shape, dy.dtype)
    _check_no_overlap(out, "out", dy)
    nthreads = _threads(out.size, n)
    _k.global_pool2d_backward(out, dy, dy, out, True, _scratch_for(nthreads, c, dy.dtype),
                              nthreads)
    return out


def global_max_pool2d_backward(x, y, dy, out=None):
    """Gradient of ``global_max_pool2d``: x the forward input (N, H, W, C), y its output and dy
    the gradient of y (N, C); ties share the gradient evenly.  Returns dx like x."""
    _check_x4(x, "x")
    n, c = x.shape[0], x.shape[3]
    for a, name in ((y, "y"), (dy, "dy")):
        check_array(a, name, ndim=2, dtype=x.dtype)
        if a.shape != (n, c):
            raise ValueError(f"{name} must have shape {(n, c)}, got {a.shape}")
    out = check_out(out, "out", x.shape, x.dtype)
    _check_no_overlap(out, "out", x, y, dy)
    nthreads = _threads(x.size, n)
    _k.global_pool2d_backward(x, y, dy, out, False, _scratch_for(nthreads, c, x.dtype),
                              nthreads)
    return out


def normalize_padding2d(padding):
    """((top, bottom), (left, right)) from Keras's forms: an int, (sym_h, sym_w) or
    ((top, bottom), (left, right)); every value an integer >= 0."""
    def nonneg(v):
        return check_positive_int(v, "padding", minimum=0)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = nonneg(padding)
        return ((p, p), (p, p))
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(v, (tuple, list)) for v in padding):
            if any(len(v) != 2 for v in padding):
                raise ValueError(f"padding must be an int, (sym_h, sym_w) or ((top, bottom), "
                                 f"(left, right)), got {padding!r}")
            return tuple(tuple(nonneg(v) for v in pair) for pair in padding)
        if not any(isinstance(v, (tuple, list)) for v in padding):
            h, w = (nonneg(v) for v in padding)
            return ((h, h), (w, w))
    raise ValueError(f"padding must be an int, (sym_h, sym_w) or ((top, bottom), (left, right)), "
                     f"got {padding!r}")


def zero_pad2d(x, padding=1, out=None):
    """x (N, H, W, C) with zero rows/columns added: padding as ``normalize_padding2d``.
    Returns (N, t + H + b, l + W + r, C)."""
    _check_x4(x, "x")
    (t, b), (l, r) = normalize_padding2d(padding)
    n, h, w, c = x.shape
    out = check_out(out, "out", (n, t + h + b, l + w + r, c), x.dtype)
    _check_no_overlap(out, "out", x)
    _k.zero_pad2d(x, out, t, l, _threads(out.size, n * out.shape[1]))
    return out


def zero_pad2d_backward(dy, padding=1, out=None):
    """Gradient of ``zero_pad2d``: the interior of dy (the padded rows/columns dropped)."""
    check_array(dy, "dy", ndim=4)
    (t, b), (l, r) = normalize_padding2d(padding)
    n, oh, ow, c = dy.shape
    h, w = oh - t - b, ow - l - r
    if h < 1 or w < 1 or n < 1 or c < 1:
        raise ValueError(f"dy of shape {dy.shape} is too small for padding "
                         f"{((t, b), (l, r))}")
    out = check_out(out, "out", (n, h, w, c), dy.dtype)
    _check_no_overlap(out, "out", dy)
    _k.crop2d(dy, out, t, l, _threads(out.size, n * h))
    return out
