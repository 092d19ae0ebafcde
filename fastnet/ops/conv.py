"""2-D convolution ops (NHWC activations, Keras (kh, kw, in, out) kernels).

Shape contract (Keras / TensorFlow)::

    x       (N, H, W, Cin)
    kernel  (kh, kw, Cin, Cout)
    bias    (Cout,)
    y       (N, OH, OW, Cout)
    'valid': OH = (H - kh) // sh + 1
    'same' : OH = ceil(H / sh), total padding max((OH - 1) * sh + kh - H, 0), the odd row at the
             bottom (likewise for the width, the odd column at the right)

Example::

    >>> x = np.random.rand(8, 28, 28, 1).astype(np.float32)
    >>> k = np.random.rand(3, 3, 1, 32).astype(np.float32)
    >>> conv2d(x, k, np.zeros(32, np.float32), activation="relu").shape
    (8, 26, 26, 32)

Every op validates its arguments, takes its thread count from ``fastnet.config`` and its
temporary buffers (packed kernels, per-thread tables and partial sums, im2col panels) from
``fastnet.ops._workspace``, allocated once and reused; only the outputs are allocated, and not
even those when ``out`` is given.  The backward ops take ``relu_output`` (the forward's output
when it fused a ReLU) and mask the incoming gradient themselves.  ``_algorithm`` (private, for
tests and benchmarks) forces one kernel path; see ``fastnet/_kernels/conv.pyx`` for each.

Sums over pixels are cut into ``nparts`` blocks added in block order: one per thread by
default, a number fixed by the shape in ``fastnet.config.deterministic`` mode (results then
independent of the thread count; the kernel choice then looks at nparts, not the threads).
"""
import numpy as np

from fastnet import config
from fastnet._kernels import conv as _kernels
from fastnet.ops._checks import check_array, check_out, check_padding, check_positive_int
from fastnet.ops._checks import check_no_overlap as _check_no_overlap
from fastnet.ops._checks import check_nonempty as _check_nonempty
from fastnet.ops._checks import conv_output_size
from fastnet.ops._checks import fast_pair as _pair
from fastnet.ops._workspace import scratch

__all__ = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_weight_pooled"]

_ACTIVATIONS = {None: 0, "linear": 0, "relu": 1}   # codes of fastnet._kernels.gemm ACT_*
# Which kernel, by shape (measured on Zen 4, batch 32-64, float32; see benchmarks/bench_conv.py
# --algorithms).  direct: the register tile runs over kw*Cin contiguous values per kernel row,
# so it wins while that run is too short for the implicit GEMM's per-segment setup (Cin <= 4 at
# 3x3: 511 vs 616 us forward, 711 vs 1319 us weight gradient at Cin = 3); implicit everywhere
# else up to K = kh*kw*Cin = 4096, where its packed kernel panel stops fitting L2; its
# backward input wants a vector of input channels per tap (Cin >= 16: 2660 vs 3222 us; at
# Cin = 8 im2col + GEMM wins, 2081 vs 3178 us).
_DIRECT_MAX_ROW = 16           # forward: kw*Cin up to this -> direct
_DIRECT_MAX_CIN = 4            # weight gradient: Cin up to this -> direct
_IMPLICIT_MAX_K = 4096
_IMPLICIT_MIN_CIN = 16         # backward input
_DIRECT_MASK_MAX_COUT = 4096   # the direct weight gradient masks dy in a buffer of this size
                               # (CV_DIRECT_MASK_BUF in csrc/conv/direct_impl.h)
# im2col panels (gemm / shared): this many bytes per thread (blocks schedule) keeps a tile in L2
# with the GEMM's packed panels; the shared schedule walks the rows in chunks of _SHARED_BYTES.
_PANEL_BYTES = 256 * 1024
_SHARED_BYTES = 4 * 1024 * 1024
_MIN_ROWS_PER_THREAD = 128     # fewer output pixels per thread: one GEMM with every thread
_PARALLEL_MIN_WORK = 1 << 20   # multiply-adds below which a kernel runs on one thread
_FORWARD_ALGORITHMS = ("direct", "implicit", "gemm", "shared", "1x1", "1x1_shared")
_BACKWARD_INPUT_ALGORITHMS = ("implicit", "gemm", "shared", "1x1", "1x1_shared")
_BACKWARD_WEIGHT_ALGORITHMS = ("direct", "implicit", "gemm", "shared", "1x1", "1x1_shared")
_IMPLICIT_OPS = {"forward": 0, "backward_input": 1, "backward_weight": 2,
                 "direct_forward": 3, "direct_weight": 4}   # FN_CONV_* of csrc/fastnet_conv.h


# ------------------------------------------------------------------------------ argument checks


def _check_shape4(shape, name):
    """A 4-tuple of positive ints (an ``input_shape`` argument)."""
    if type(shape) is tuple and len(shape) == 4 and all(type(s) is int and s >= 1 for s in shape):
        return shape    # the common case (an ndarray's shape), without the generic checks
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a tuple of 4 integers (N, H, W, C), got {shape!r}")
    return tuple(check_positive_int(s, name) for s in shape)


def _geometry(in_hw, k_hw, strides, padding):
    """((OH, OW), (pad_top, pad_left)) after checking the kernel fits the input."""
    (h, w), (kh, kw), (sh, sw) = in_hw, k_hw, strides
    oh, pt, _ = conv_output_size(h, kh, sh, padding)
    ow, pl, _ = conv_output_size(w, kw, sw, padding)
    return (oh, ow), (pt, pl)


def _check_algorithm(algorithm, allowed, kh, kw, strides):
    if algorithm is None:
        return None
    if algorithm not in allowed:
        raise ValueError(f"_algorithm must be one of {allowed} or None, got {algorithm!r}")
    if algorithm.startswith("1x1") and (kh, kw, *strides) != (1, 1, 1, 1):
        raise ValueError("_algorithm='1x1' needs a 1x1 kernel and strides 1")
    return algorithm


def _threads(work):
    """The team size for a kernel doing ``work`` multiply-adds (1 when too small to split)."""
    n = config.get_num_threads()
    return 1 if work < _PARALLEL_MIN_WORK else n


def _schedule(rows, nthreads, pointwise):
    """'gemm' (per-thread tiles) unless the rows are too few to share, then 'shared'."""
    base = "1x1" if pointwise else "gemm"
    if nthreads > 1 and rows < _MIN_ROWS_PER_THREAD * nthreads:
        return "shared" if base == "gemm" else "1x1_shared"
    return base


def _implicit_workspace(op, xshape, yshape, kh, kw, strides, pads, dtype, nthreads, nparts=0):
    """The workspace of a csrc/conv kernel: packed kernel, pointer tables, per-thread (or
    per-block, ``nparts``) buffers."""
    size = _kernels.implicit_workspace(_IMPLICIT_OPS[op], tuple(xshape), tuple(yshape), kh, kw,
                                       strides[0], strides[1], pads[0], pads[1],
                                       np.dtype(dtype) == np.float64, nthreads, nparts)
    return scratch("conv.implicit", (size,), dtype)


def _check_relu_output(relu_output, dy):
    """The forward output of a fused ReLU (same shape and dtype as dy), or None."""
    if relu_output is None:
        return None
    relu_output = check_array(relu_output, "relu_output", ndim=4, dtype=dy.dtype)
    if relu_output.shape != dy.shape:
        raise ValueError(f"relu_output must have the shape of dy {dy.shape}, "
                         f"got {relu_output.shape}")
    return relu_output


def _masked(dy, relu_output, nthreads):
    """dy where relu_output > 0, else 0, in scratch (for the paths that cannot mask on the fly)."""
    out = scratch("conv.masked_dy", dy.shape, dy.dtype)
    _kernels.relu_mask(dy.reshape(-1), relu_output.reshape(-1), out.reshape(-1), nthreads)
    return out


def _panel(algorithm, rows, k, dtype, nparts, block_rows=None):
    """(panel, tile_rows) for an im2col / dcol workspace of ``nparts`` blocks; panel None when
    no im2col."""
    itemsize = np.dtype(dtype).itemsize
    if algorithm.startswith("1x1"):
        return None, max(rows, 1)
    if algorithm == "shared":
        tile = max(1, min(rows, _SHARED_BYTES // (k * itemsize)))
        return scratch("conv.panel", (tile * k,), dtype), tile
    # Blocks: a block holds about rows / nparts rows (whole images for the backward input).
    block = block_rows if block_rows is not None else -(-rows // nparts)
    tile = max(1, min(block, _PANEL_BYTES // (k * itemsize)))
    if tile > 64:
        tile -= tile % 32   # whole register tiles for the GEMM
    return scratch("conv.panel", (nparts * tile * k,), dtype), tile


# --------------------------------------------------------------------------------------- ops
def conv2d(x, kernel, bias=None, *, strides=1, padding="valid", activation=None, out=None,
           _algorithm=None):
    """2-D convolution ``y = act(conv(x, kernel) + bias)`` (Keras ``Conv2D``, NHWC).

    x (N, H, W, Cin) and kernel (kh, kw, Cin, Cout) float32 or float64 of the same dtype,
    C-contiguous; bias (Cout,) or None; strides an int or a pair; padding 'valid' or 'same';
    activation None, 'linear' or 'relu' (fused into the GEMM epilogue).  Returns y
    (N, OH, OW, Cout), written into ``out`` when given.
    """
    x = check_array(x, "x", ndim=4)
    kernel = check_array(kernel, "kernel", ndim=4, dtype=x.dtype)
    _check_nonempty(x, "x")
    _check_nonempty(kernel, "kernel")
    kh, kw, cin, cout = kernel.shape
    if x.shape[3] != cin:
        raise ValueError(f"x has {x.shape[3]} channels but kernel expects {cin} "
                         f"(kernel shape {kernel.shape})")
    if bias is not None:
        bias = check_array(bias, "bias", ndim=1, dtype=x.dtype)
        if bias.shape[0] != cout:
            raise ValueError(f"bias must have shape ({cout},) to match kernel, got {bias.shape}")
    strides = _pair(strides, "strides")
    padding = check_padding(padding)
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be None or a string, got {type(activation).__name__}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'linear' or 'relu', got {activation!r}")
    (oh, ow), (pt, pl) = _geometry(x.shape[1:3], (kh, kw), strides, padding)
    n = x.shape[0]
    out = check_out(out, "out", (n, oh, ow, cout), x.dtype)
    _check_no_overlap(out, "out", x, kernel, bias)
    algorithm = _check_algorithm(_algorithm, _FORWARD_ALGORITHMS, kh, kw, strides)

    rows, k = n * oh * ow, kh * kw * cin
    nthreads = _threads(rows * k * cout)
    nparts = config.reduction_parts(nthreads, rows)
    if algorithm is None:
        pointwise = (kh, kw, *strides) == (1, 1, 1, 1)
        algorithm = "direct" if kw * cin <= _DIRECT_MAX_ROW and not pointwise else \
            "implicit" if k <= _IMPLICIT_MAX_K else _schedule(rows, nparts, pointwise)
    if algorithm in ("implicit", "direct"):
        op = "forward" if algorithm == "implicit" else "direct_forward"
        panel, tile = _implicit_workspace(op, x.shape, out.shape, kh, kw, strides, (pt, pl),
                                          x.dtype, nthreads), 0
    else:
        panel, tile = _panel(algorithm, rows, k, x.dtype, nparts)
    _kernels.conv2d_forward(x, kernel, bias, out, strides[0], strides[1], pt, pl,
                            _ACTIVATIONS[activation], algorithm, panel, tile, nthreads, nparts)
    return out


def conv2d_backward_input(dy, kernel, input_shape, *, strides=1, padding="valid", out=None,
                          relu_output=None, _algorithm=None):
    """Gradient of ``conv2d`` with respect to its input.

    dy (N, OH, OW, Cout) and kernel (kh, kw, Cin, Cout) of the same float dtype; input_shape the
    forward input's shape (N, H, W, Cin).  ``relu_output``: the output y of a forward with
    ``activation='relu'`` (shaped like dy); dy is then masked where y <= 0 inside the kernel
    (the ReLU's backward, without a separate pass).  Returns dx of shape ``input_shape`` (into
    ``out`` when given).
    """
    dy = check_array(dy, "dy", ndim=4)
    kernel = check_array(kernel, "kernel", ndim=4, dtype=dy.dtype)
    _check_nonempty(kernel, "kernel")
    input_shape = _check_shape4(input_shape, "input_shape")
    kh, kw, cin, cout = kernel.shape
    n, h, w, c = input_shape
    if c != cin:
        raise ValueError(f"input_shape has {c} channels but kernel expects {cin} "
                         f"(kernel shape {kernel.shape})")
    strides = _pair(strides, "strides")
    padding = check_padding(padding)
    (oh, ow), (pt, pl) = _geometry((h, w), (kh, kw), strides, padding)
    if dy.shape != (n, oh, ow, cout):
        raise ValueError(f"dy must have shape {(n, oh, ow, cout)} (the conv2d output for "
                         f"input_shape {input_shape}), got {dy.shape}")
    relu_output = _check_relu_output(relu_output, dy)
    out = check_out(out, "out", input_shape, dy.dtype)
    _check_no_overlap(out, "out", dy, kernel, relu_output)
    algorithm = _check_algorithm(_algorithm, _BACKWARD_INPUT_ALGORITHMS, kh, kw, strides)

    rows, k = n * oh * ow, kh * kw * cin
    nthreads = _threads(rows * k * cout)
    pointwise = (kh, kw, *strides) == (1, 1, 1, 1)
    if algorithm is None:
        if cin >= _IMPLICIT_MIN_CIN and k <= _IMPLICIT_MAX_K:
            algorithm = "implicit"
        else:   # whole images per block need at least one image per block
            algorithm = ("1x1" if pointwise else "gemm") if \
                n >= config.reduction_parts(nthreads, n) else \
                ("1x1_shared" if pointwise else "shared")
    # blocks of dy pixels (implicit), of whole images (gemm / 1x1)
    nparts = config.reduction_parts(nthreads, rows if algorithm == "implicit" else n)
    if algorithm == "implicit":
        panel, tile = _implicit_workspace("backward_input", input_shape, dy.shape, kh, kw,
                                          strides, (pt, pl), dy.dtype, nthreads, nparts), 0
    else:
        if relu_output is not None:
            dy, relu_output = _masked(dy, relu_output, nthreads), None
        panel, tile = _panel(algorithm, rows, k, dy.dtype, nparts,
                             block_rows=-(-n // nparts) * oh * ow)
    _kernels.conv2d_backward_input(dy, kernel.reshape(k, cout), out, kh, kw, strides[0],
                                   strides[1], pt, pl, algorithm, panel, tile, nthreads,
                                   relu_output, nparts)
    return out


def conv2d_backward_weight(x, dy, kernel_size, *, strides=1, padding="valid", out=None,
                           bias_grad=None, relu_output=None, _algorithm=None):
    """Gradients of ``conv2d`` with respect to its kernel and (optionally) its bias.

    x (N, H, W, Cin) the forward input, dy (N, OH, OW, Cout) of the same float dtype,
    kernel_size an int or (kh, kw).  ``relu_output``: the output y of a forward with
    ``activation='relu'`` (shaped like dy); dy is then masked where y <= 0 inside the kernel.
    Returns the pair ``(dkernel, bias_grad)``: dkernel (kh, kw, Cin, Cout), written into
    ``out`` when given; ``bias_grad`` is None when not given, else the caller's (Cout,) array,
    filled with the (masked) dy summed over N, OH and OW.  The pair is returned either way, so
    ``dk, db = conv2d_backward_weight(...)`` always works.

    Sums over the batch are reduced in an order fixed by the thread count only: results are
    bitwise reproducible for a given ``fastnet.set_num_threads`` (for any thread count in
    ``fastnet.config.deterministic`` mode).
    """
    x = check_array(x, "x", ndim=4)
    dy = check_array(dy, "dy", ndim=4, dtype=x.dtype)
    _check_nonempty(x, "x")
    kh, kw = _pair(kernel_size, "kernel_size")
    strides = _pair(strides, "strides")
    padding = check_padding(padding)
    n, h, w, cin = x.shape
    (oh, ow), (pt, pl) = _geometry((h, w), (kh, kw), strides, padding)
    if dy.shape[:3] != (n, oh, ow) or dy.shape[3] < 1:
        raise ValueError(f"dy must have shape {(n, oh, ow)} + (Cout,) (the conv2d output for "
                         f"x of shape {x.shape}), got {dy.shape}")
    cout = dy.shape[3]
    relu_output = _check_relu_output(relu_output, dy)
    out = check_out(out, "out", (kh, kw, cin, cout), x.dtype)
    _check_no_overlap(out, "out", x, dy, relu_output)
    if bias_grad is not None:
        if not isinstance(bias_grad, np.ndarray):
            raise TypeError(f"bias_grad must be a numpy.ndarray or None, "
                            f"got {type(bias_grad).__name__}")
        check_out(bias_grad, "bias_grad", (cout,), x.dtype)
        _check_no_overlap(bias_grad, "bias_grad", x, dy, out, relu_output)
    algorithm = _check_algorithm(_algorithm, _BACKWARD_WEIGHT_ALGORITHMS, kh, kw, strides)

    rows, k = n * oh * ow, kh * kw * cin
    nthreads = _threads(rows * k * cout)
    nparts = config.reduction_parts(nthreads, rows)
    if algorithm is None:
        pointwise = (kh, kw, *strides) == (1, 1, 1, 1)
        algorithm = "direct" if cin <= _DIRECT_MAX_CIN and not pointwise else \
            "implicit" if k <= _IMPLICIT_MAX_K else _schedule(rows, nparts, pointwise)
    if relu_output is not None and (algorithm not in ("direct", "implicit") or (
            algorithm == "direct" and cout > _DIRECT_MASK_MAX_COUT)):
        dy, relu_output = _masked(dy, relu_output, nthreads), None
    partials = bias_partials = None
    if algorithm in ("implicit", "direct"):
        op = "backward_weight" if algorithm == "implicit" else "direct_weight"
        panel, tile = _implicit_workspace(op, x.shape, dy.shape, kh, kw, strides, (pt, pl),
                                          x.dtype, nthreads, nparts), 0
    else:
        panel, tile = _panel(algorithm, rows, k, x.dtype, nparts)
        if not algorithm.endswith("shared") and nparts > 1:
            partials = scratch("conv.partials", ((nparts - 1) * k * cout,), x.dtype)
    if bias_grad is not None and nparts > 1 and algorithm not in ("implicit", "direct"):
        bias_partials = scratch("conv.bias_partials", ((nparts - 1) * cout,), x.dtype)
    _kernels.conv2d_backward_weight(x, dy, out.reshape(k, cout), bias_grad, kh, kw, strides[0],
                                    strides[1], pt, pl, algorithm, panel, tile, partials,
                                    bias_partials, nthreads, relu_output, nparts)
    return out, bias_grad


def conv2d_backward_weight_pooled(x, dy_pool, argmax, kernel_size, *, strides=1, padding="valid",
                                  pool_size=2, pool_strides=None, pool_padding="valid",
                                  out=None, bias_grad=None):
    """``conv2d_backward_weight`` for a conv whose output y went straight into ``max_pool2d``,
    computed from the pooling's output gradient without the pooling backward.

    x (N, H, W, Cin) the conv input; dy_pool (N, QH, QW, Cout) the gradient of the pooling's
    output; argmax (N, QH, QW, Cout) uint8, the array ``max_pool2d(y, ..., argmax=argmax)``
    filled (with ``relu_input=True`` when the conv fused a ReLU: the ReLU mask is then in the
    argmax and this equals the masked gradient).  The window arguments are the conv's and the
    pooling's.  Returns ``(dkernel, bias_grad)`` like ``conv2d_backward_weight``, equal to it
    applied to ``max_pool2d_backward(y, ...)`` up to rounding, while reading only dy_pool and
    the argmax instead of two full-size arrays.  Use it when the conv's input gradient is not
    needed (the pooling's dx is never formed).
    """
    from fastnet._kernels import conv_pool as _cp
    from fastnet.ops.pool import _window
    x = check_array(x, "x", ndim=4)
    dy_pool = check_array(dy_pool, "dy_pool", ndim=4, dtype=x.dtype)
    _check_nonempty(x, "x")
    _check_nonempty(dy_pool, "dy_pool")
    kh, kw = _pair(kernel_size, "kernel_size")
    strides = _pair(strides, "strides")
    padding = check_padding(padding)
    n, h, w, cin = x.shape
    (oh, ow), (pt, pl) = _geometry((h, w), (kh, kw), strides, padding)
    cout = dy_pool.shape[3]
    pool, pstrides, qshape, (ppt, ppl) = _window((n, oh, ow, cout), pool_size, pool_strides,
                                                 pool_padding)
    if dy_pool.shape != qshape:
        raise ValueError(f"dy_pool must have shape {qshape} (max_pool2d of the conv2d output "
                         f"for x of shape {x.shape}), got {dy_pool.shape}")
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.uint8 \
            or argmax.shape != qshape or not argmax.flags.c_contiguous:
        raise ValueError(f"argmax must be a C-contiguous uint8 array of shape {qshape}, got "
                         f"{getattr(argmax, 'dtype', type(argmax).__name__)} "
                         f"{getattr(argmax, 'shape', '')}")
    out = check_out(out, "out", (kh, kw, cin, cout), x.dtype)
    _check_no_overlap(out, "out", x, dy_pool, argmax)
    if bias_grad is not None:
        if not isinstance(bias_grad, np.ndarray):
            raise TypeError(f"bias_grad must be a numpy.ndarray or None, "
                            f"got {type(bias_grad).__name__}")
        check_out(bias_grad, "bias_grad", (cout,), x.dtype)
        _check_no_overlap(bias_grad, "bias_grad", x, dy_pool, argmax)
        _check_no_overlap(bias_grad, "bias_grad", out)
    k = kh * kw * cin
    rows = n * qshape[1]
    nthreads = min(_threads(n * oh * ow * k * cout), rows)
    nparts = config.reduction_parts(nthreads, rows)
    per_line = 64 // x.itemsize
    stride = -(-(k * cout + 2 * cout + k) // per_line) * per_line
    partials = scratch("conv.pooled_partials", (nparts, stride), x.dtype)
    _cp.conv_pool_backward_weight(x, dy_pool, argmax, out.reshape(k, cout), bias_grad,
                                  (kh, kw, strides[0], strides[1], pt, pl),
                                  (pool[0], pool[1], pstrides[0], pstrides[1], ppt, ppl),
                                  oh, ow, partials, nthreads, nparts)
    return out, bias_grad
