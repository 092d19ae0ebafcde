"""2-D max and average pooling ops on NHWC arrays (Keras ``MaxPooling2D`` / ``AveragePooling2D``).

Shape contract::

    x  (N, H, W, C)  ->  y (N, OH, OW, C)
    'valid': OH = (H - ph) // sh + 1
    'same' : OH = ceil(H / sh), TensorFlow's padding (odd row at the bottom); padded positions
             are ignored: max over the real elements, average divided by their count

``strides`` defaults to ``pool_size``, as in Keras.

Example::

    >>> x = np.random.rand(64, 26, 26, 32).astype(np.float32)
    >>> max_pool2d(x).shape
    (64, 13, 13, 32)
"""
import numpy as np

from fastnet import config
from fastnet._kernels import pool as _kernels
from fastnet.ops._checks import check_array, check_out, check_padding, check_positive_int
from fastnet.ops._checks import check_no_overlap as _check_no_overlap
from fastnet.ops._checks import check_nonempty as _check_nonempty
from fastnet.ops._checks import conv_output_size
from fastnet.ops._checks import fast_pair as _pair
from fastnet.ops._workspace import scratch

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"]

_PARALLEL_MIN_WORK = 65536   # window-element visits below which a kernel runs on one thread


def _window(input_shape, pool_size, strides, padding):
    """(pool, strides, padding, output shape, (pad_top, pad_left)) after checking them."""
    pool = _pair(pool_size, "pool_size")
    strides = pool if strides is None else _pair(strides, "strides")
    padding = check_padding(padding)
    n, h, w, c = input_shape
    oh, pt, _ = conv_output_size(h, pool[0], strides[0], padding, what="pool")
    ow, pl, _ = conv_output_size(w, pool[1], strides[1], padding, what="pool")
    return pool, strides, (n, oh, ow, c), (pt, pl)


def _pending(nthreads, channels, dtype):
    """Per-thread scratch for the backward kernels: one slice of ``channels`` per thread, padded
    to whole cache lines plus one, so threads never write the same line."""
    per_line = 64 // np.dtype(dtype).itemsize
    stride = (-(-channels // per_line) + 1) * per_line
    return scratch("pool.pending", (nthreads * stride,), dtype)


def _threads(out_shape, pool):
    work = out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3] * pool[0] * pool[1]
    return 1 if work < _PARALLEL_MIN_WORK else config.get_num_threads()


def _check_argmax(argmax, yshape, pool, writeable, relu_input=False):
    """The uint8 argmax buffer (shaped like y), or None."""
    if argmax is None:
        if relu_input:
            raise ValueError("relu_input=True needs an argmax buffer")
        return None
    if not isinstance(argmax, np.ndarray):
        raise TypeError(f"argmax must be a numpy.ndarray or None, got {type(argmax).__name__}")
    if argmax.dtype != np.uint8 or argmax.shape != tuple(yshape) or \
            not argmax.flags.c_contiguous or (writeable and not argmax.flags.writeable):
        raise ValueError(f"argmax must be a{' writeable' if writeable else ''} C-contiguous "
                         f"uint8 array of shape {tuple(yshape)}, got {argmax.dtype} "
                         f"{argmax.shape}")
    if pool[0] * pool[1] > 256 - relu_input:
        raise ValueError(f"argmax needs a pool of at most {256 - relu_input} elements"
                         f"{' with relu_input' if relu_input else ''}, got {pool}")
    return argmax


def _forward(x, pool_size, strides, padding, out, average, argmax=None, relu_input=False):
    x = check_array(x, "x", ndim=4)
    _check_nonempty(x, "x")
    pool, strides, yshape, (pt, pl) = _window(x.shape, pool_size, strides, padding)
    out = check_out(out, "out", yshape, x.dtype)
    _check_no_overlap(out, "out", x)
    argmax = _check_argmax(argmax, yshape, pool, True, bool(relu_input))
    _check_no_overlap(argmax, "argmax", x, out)
    _kernels.pool2d_forward(x, out, average, pool[0], pool[1], strides[0], strides[1], pt, pl,
                            _threads(yshape, pool), argmax, bool(relu_input))
    return out


def max_pool2d(x, pool_size=2, strides=None, padding="valid", out=None, argmax=None,
               relu_input=False):
    """Max over every ``pool_size`` window of x (N, H, W, C), float32 or float64.

    pool_size and strides are ints or pairs (strides default: pool_size); padding 'valid' or
    'same'.  Returns y (N, OH, OW, C), written into ``out`` when given.  ``argmax``: an
    optional uint8 array shaped like y (pools of at most 256 elements), filled with the
    position ``i * pool_w + j`` of each window's first maximum (row-major); give it to
    ``max_pool2d_backward``, which then reads one byte per output instead of x and y.

    ``relu_input=True`` (with ``argmax``; pools of at most 255 elements): x is the output of a
    ReLU, and windows whose maximum is not positive get argmax 255, so the backward sends them
    no gradient: its dx is then already the gradient of the ReLU's input, and the layer before
    needs no mask (e.g. no ``relu_output`` for ``conv2d_backward_weight``).
    """
    return _forward(x, pool_size, strides, padding, out, False, argmax, relu_input)


def avg_pool2d(x, pool_size=2, strides=None, padding="valid", out=None):
    """Mean over every ``pool_size`` window of x (N, H, W, C); with 'same' padding the mean is
    over the real (non-padded) elements only, as in TensorFlow.  Returns y (N, OH, OW, C)."""
    return _forward(x, pool_size, strides, padding, out, True)


def max_pool2d_backward(x, y, dy, pool_size=2, strides=None, padding="valid", out=None,
                        argmax=None):
    """Gradient of ``max_pool2d`` with respect to x.

    x is the forward input, y the forward output ``max_pool2d(x, ...)`` and dy the gradient of
    y, all of one float dtype; the window arguments must be the forward's.  Each window's
    gradient goes to its first maximum in row-major order (TensorFlow's rule); overlapping
    windows accumulate.  ``argmax``: the array the forward filled; then x is used for its shape
    only, and y may be None.  Returns dx shaped like x (into ``out`` when given).
    """
    x = check_array(x, "x", ndim=4)
    dy = check_array(dy, "dy", ndim=4, dtype=x.dtype)
    _check_nonempty(x, "x")
    pool, strides, yshape, (pt, pl) = _window(x.shape, pool_size, strides, padding)
    argmax = _check_argmax(argmax, yshape, pool, False)
    if y is None and argmax is not None:
        y = dy   # not read
    y = check_array(y, "y", ndim=4, dtype=x.dtype)
    if y.shape != yshape:
        raise ValueError(f"y must have shape {yshape} (max_pool2d of x), got {y.shape}")
    if dy.shape != yshape:
        raise ValueError(f"dy must have shape {yshape} (like y), got {dy.shape}")
    out = check_out(out, "out", x.shape, x.dtype)
    _check_no_overlap(out, "out", x, y, dy, argmax)
    nthreads = _threads(yshape, pool)
    pending = _pending(nthreads, x.shape[3], x.dtype)
    _kernels.max_pool2d_backward(x, y, dy, out, pool[0], pool[1], strides[0], strides[1], pt,
                                 pl, pending, nthreads, argmax,
                                 config.reduction_parts(nthreads, yshape[0] * yshape[1]))
    return out


def avg_pool2d_backward(dy, input_shape, pool_size=2, strides=None, padding="valid", out=None):
    """Gradient of ``avg_pool2d`` with respect to its input of shape ``input_shape``
    (N, H, W, C): each window's gradient is spread evenly over its real elements; overlapping
    windows accumulate.  Returns dx of shape ``input_shape`` and dy's dtype."""
    dy = check_array(dy, "dy", ndim=4)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4:
        raise ValueError(f"input_shape must be a tuple of 4 integers (N, H, W, C), "
                         f"got {input_shape!r}")
    input_shape = tuple(check_positive_int(s, "input_shape") for s in input_shape)
    pool, strides, yshape, (pt, pl) = _window(input_shape, pool_size, strides, padding)
    if dy.shape != yshape:
        raise ValueError(f"dy must have shape {yshape} (avg_pool2d of input_shape "
                         f"{input_shape}), got {dy.shape}")
    out = check_out(out, "out", input_shape, dy.dtype)
    _check_no_overlap(out, "out", dy)
    nthreads = _threads(yshape, pool)
    pending = _pending(nthreads, input_shape[3], dy.dtype)
    _kernels.avg_pool2d_backward(dy, out, pool[0], pool[1], strides[0], strides[1], pt, pl,
                                 pending, nthreads,
                                 config.reduction_parts(nthreads, yshape[0] * yshape[1]))
    return out
