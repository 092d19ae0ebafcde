"""Convolutions beyond the plain Conv2D: dilated, grouped, depthwise, transposed; upsampling.

NHWC activations and Keras weight layouts::

    conv2d_general     x (N, H, W, Cin), kernel (kh, kw, Cin/groups, Cout), bias (Cout,)
    depthwise_conv2d   x (N, H, W, Cin), kernel (kh, kw, Cin, dm), bias (Cin*dm,);
                       output channel c*dm + m = x channel c convolved with kernel[..., c, m]
    conv2d_transpose   x (N, H, W, Cin), kernel (kh, kw, filters, Cin), bias (filters,)
    upsampling2d       x (N, H, W, C) -> (N, H*sh, W*sw, C), 'nearest' or 'bilinear'

With dilation d a k-tap window spans k_eff = (k - 1)*d + 1 input pixels; the output size and
'same' padding follow TensorFlow with k_eff in place of k: 'valid' OH = (H - k_eff) // s + 1,
'same' OH = ceil(H / s), total padding max((OH - 1)*s + k_eff - H, 0), the odd row at the
bottom.  ``padding`` may also be explicit, ((top, bottom), (left, right)) (Conv1D's 'causal' is
((0, 0), ((k - 1)*d, 0))).  The transposed convolution's output size is Keras's
(``conv_transpose_output_length``); it is the gradient of the convolution of its output.

Dispatch: groups == 1 with no dilation and a string padding goes to ``fastnet.ops.conv`` (the
implicit-GEMM kernels); one input channel per group (groups == Cin) to the depthwise kernels;
the rest to im2col panels + GEMM per group (``fastnet/_kernels/conv_general.pyx``); a stride-1
input gradient is computed as the forward convolution of dy by the flipped kernel (a gather,
no col2im).  ``phase_plan`` / ``space_to_batch2d`` / ``batch_to_space2d`` let a layer run a
dilated convolution on fastnet.ops.conv's kernels instead (Conv2D does).  Every op
validates its arguments, takes its thread count from ``fastnet.config`` and its temporaries
from ``fastnet.ops._workspace``; outputs are written into ``out`` when given.

Example::

    >>> x = np.random.rand(2, 16, 16, 8).astype(np.float32)
    >>> k = np.random.rand(3, 3, 8, 2).astype(np.float32)
    >>> depthwise_conv2d(x, k, padding="same").shape
    (2, 16, 16, 16)
"""
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import conv_general as _kernels
from fastnet.ops import conv as conv_ops
from fastnet.ops._checks import (check_array, check_out, check_padding, check_positive_int,
                                 conv_output_size, pair)
from fastnet.ops._workspace import scratch

__all__ = ["conv2d_general", "conv2d_general_backward_input", "conv2d_general_backward_weight",
           "depthwise_conv2d", "depthwise_conv2d_backward_input",
           "depthwise_conv2d_backward_weight", "conv2d_transpose",
           "conv2d_transpose_backward_input", "conv2d_transpose_backward_weight",
           "conv_transpose_output_length", "upsampling2d", "upsampling2d_backward",
           "phase_plan", "space_to_batch2d", "batch_to_space2d"]

_ACTIVATIONS = {None: 0, "linear": 0, "relu": 1}   # codes of fastnet._kernels.gemm ACT_*
# im2col panels: this many bytes per thread keep a tile in L2 beside the GEMM's packed panels
# (as fastnet.ops.conv); 'shared' walks the rows in chunks of _SHARED_BYTES.
_PANEL_BYTES = 256 * 1024
_SHARED_BYTES = 4 * 1024 * 1024
_MIN_ROWS_PER_THREAD = 128     # fewer output pixels per thread: one GEMM with every thread
_PARALLEL_MIN_WORK = 1 << 20   # multiply-adds below which a kernel runs on one thread
_PARALLEL_MIN_ELEMENTS = 1 << 15   # copies (upsampling, bias): elements per extra thread
# phase_plan: the phases' convolutions may compute at most this much more than the dilated one
# (the outputs past OH / OW that round each phase up)
_PHASE_MAX_WASTE = 1.15


# ------------------------------------------------------------------------------ argument checks
def _threads(work, minimum=_PARALLEL_MIN_WORK):
    return 1 if work < minimum else config.get_num_threads()


def _check_nonempty(a, name):
    if a.size == 0:
        raise ValueError(f"{name} must not have a zero-sized dimension, got shape {a.shape}")


def _check_operands(a, name, kernel):
    """``a`` (x or dy) and the kernel: 4-D, C-contiguous, one float dtype, no zero sizes."""
    a = check_array(a, name, ndim=4)
    kernel = check_array(kernel, "kernel", ndim=4, dtype=a.dtype)
    _check_nonempty(a, name)
    _check_nonempty(kernel, "kernel")
    return a, kernel


def _check_channels(channels, expected, name, kernel):
    if channels != expected:
        raise ValueError(f"{name} has {channels} channels but the kernel expects {expected} "
                         f"(kernel shape {kernel.shape})")


def _check_x_dy(x, dy, kernel_size):
    """The operands of a weight gradient: x and dy of one float dtype; (kh, kw)."""
    x = check_array(x, "x", ndim=4)
    dy = check_array(dy, "dy", ndim=4, dtype=x.dtype)
    _check_nonempty(x, "x")
    _check_nonempty(dy, "dy")
    return x, dy, pair(kernel_size, "kernel_size")


def _check_dy_spatial(dy, x, oh, ow):
    if dy.shape[:3] != (x.shape[0], oh, ow):
        raise ValueError(f"dy must have shape {(x.shape[0], oh, ow)} + (channels,) (the output "
                         f"for x of shape {x.shape}), got {dy.shape}")


def _check_weight_outputs(out, shape, bias_grad, x, dy):
    """(out, bias_grad) of a weight gradient: out allocated when None; bias_grad (Cout,)."""
    out = check_out(out, "out", shape, x.dtype)
    _check_no_overlap(out, "out", x, dy)
    if bias_grad is not None:
        check_out(bias_grad, "bias_grad", (dy.shape[3],), x.dtype)
        _check_no_overlap(bias_grad, "bias_grad", x, dy, out)
    return out


def _check_shape4(shape, name):
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a tuple of 4 integers (N, H, W, C), got {shape!r}")
    return tuple(check_positive_int(s, name) for s in shape)


def _check_no_overlap(out, name, *arrays):
    for a in arrays:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{name} must not overlap the inputs")


def _check_bias(bias, channels, dtype):
    if bias is None:
        return None
    bias = check_array(bias, "bias", ndim=1, dtype=dtype)
    if bias.shape[0] != channels:
        raise ValueError(f"bias must have shape ({channels},), got {bias.shape}")
    return bias


def _check_activation(activation):
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be None or a string, got {type(activation).__name__}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'linear' or 'relu', got {activation!r}")
    return _ACTIVATIONS[activation]


def _check_groups(groups):
    return check_positive_int(groups, "groups")


def normalize_padding(padding):
    """'valid' / 'same' (any case), or explicit ((top, bottom), (left, right)) ints >= 0."""
    if isinstance(padding, str):
        return check_padding(padding)
    try:
        (t, b), (l, r) = padding
    except (TypeError, ValueError):
        raise ValueError(f"padding must be 'valid', 'same' or ((top, bottom), (left, right)), "
                         f"got {padding!r}") from None
    for v in (t, b, l, r):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"explicit padding must hold integers >= 0, got {padding!r}")
    return (int(t), int(b)), (int(l), int(r))


def _axis(size, k, stride, dilation, padding):
    """(output size, pad before) along one axis; ``padding`` a mode or a (before, after) pair."""
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        out, before, _ = conv_output_size(size, k_eff, stride, padding)
        return out, before
    before, after = (0, 0) if padding == "valid" else padding
    span = size + before + after
    if span < k_eff:
        raise ValueError(f"kernel extent {k_eff} (kernel {k}, dilation {dilation}) is larger "
                         f"than the padded input size {span}")
    return (span - k_eff) // stride + 1, before


def output_geometry(hw, khw, strides, dilation_rate, padding):
    """((OH, OW), (pad_top, pad_left)) of a convolution of an (H, W) input; ``padding`` as
    ``normalize_padding`` returns it."""
    per_axis = (padding, padding) if isinstance(padding, str) else padding
    oh, pt = _axis(hw[0], khw[0], strides[0], dilation_rate[0], per_axis[0])
    ow, pl = _axis(hw[1], khw[1], strides[1], dilation_rate[1], per_axis[1])
    return (oh, ow), (pt, pl)


def _is_plain(groups, dilation, padding):
    """The case fastnet.ops.conv serves: no groups, no dilation, a padding mode."""
    return groups == 1 and dilation == (1, 1) and isinstance(padding, str)


def _conv_args(strides, padding, dilation_rate, groups):
    return (pair(strides, "strides"), normalize_padding(padding),
            pair(dilation_rate, "dilation_rate"), _check_groups(groups))


def _params(strides, dilation, pads, groups):
    return (strides[0], strides[1], dilation[0], dilation[1], pads[0], pads[1], groups)


# ---------------------------------------------------------------------- workspaces and kernels
def _im2col_plan(out_shape, kernel_shape, groups, dtype, whole_images=False):
    """(nthreads, nparts, shared, panel, tile_rows, K) for an im2col kernel over the output
    pixels of ``out_shape`` (N, OH, OW, Cout): 'blocks' (nparts blocks, one panel of tile_rows
    rows each, whole images per block with ``whole_images``) or 'shared' (too few rows or
    images to split).  nparts: one block per thread, or fixed by the shape in deterministic
    mode (``fastnet.config.reduction_parts``)."""
    n, oh, ow, cout = out_shape
    kh, kw, cg = kernel_shape[:3]
    rows, k = n * oh * ow, kh * kw * cg
    itemsize = np.dtype(dtype).itemsize
    nthreads = _threads(rows * k * cout // groups)
    if whole_images:
        nparts = config.reduction_parts(nthreads, n)
        shared, block = n < nparts, -(-n // nparts) * oh * ow
    else:
        nparts = config.reduction_parts(nthreads, rows)
        shared, block = nparts > 1 and rows < _MIN_ROWS_PER_THREAD * nparts, \
            -(-rows // nparts)
    if shared:
        tile = max(1, min(rows, _SHARED_BYTES // (k * itemsize)))
        return nthreads, nparts, True, scratch("conv_general.panel", (tile * k,), dtype), tile, k
    tile = max(1, min(block, _PANEL_BYTES // (k * itemsize)))
    if tile > 64:
        tile -= tile % 32   # whole register tiles for the GEMM
    return (nthreads, nparts, False,
            scratch("conv_general.panel", (nparts * tile * k,), dtype), tile, k)


def _general_forward(x, kernel, bias, out, params, act):
    nthreads, nparts, shared, panel, tile, _ = _im2col_plan(out.shape, kernel.shape, params[6],
                                                            x.dtype)
    _kernels.general_forward(x, kernel, bias, out, params, act, shared, panel, tile, nthreads,
                             nparts)


def _flipped_kernel(kernel, groups):
    """The kernel of the stride-1 convolution that is this one's input gradient: taps reversed,
    input and output channels swapped per group ((kh, kw, Cin/g, Cout) -> (kh, kw, Cout/g,
    Cin)), in scratch."""
    kh, kw, cg, cout = kernel.shape
    og = cout // groups
    flipped = scratch("conv_general.flipped", (kh, kw, og, groups * cg), kernel.dtype)
    np.copyto(flipped.reshape(kh, kw, og, groups, cg),
              kernel.reshape(kh, kw, cg, groups, og)[::-1, ::-1].transpose(0, 1, 4, 3, 2))
    return flipped


def _general_backward_input(dy, kernel, out, params):
    sh, sw, dh, dw, pt, pl, groups = params
    kh, kw = kernel.shape[:2]
    ft, fl = (kh - 1) * dh - pt, (kw - 1) * dw - pl
    if (sh, sw) == (1, 1) and ft >= 0 and fl >= 0:
        # A gather: the forward convolution of dy by the flipped kernel, instead of GEMM
        # tiles scattered into dx (col2im) - the same multiply-adds, less memory traffic.
        _general_forward(dy, _flipped_kernel(kernel, groups), None, out,
                         (1, 1, dh, dw, ft, fl, groups), 0)
        return
    nthreads, nparts, shared, panel, tile, _ = _im2col_plan(dy.shape, kernel.shape, groups,
                                                            dy.dtype, whole_images=True)
    _kernels.general_backward_input(dy, kernel, out, params, shared, panel, tile, nthreads,
                                    nparts)


def _general_backward_weight(x, dy, out, bias_grad, params):
    nthreads, nparts, shared, panel, tile, k = _im2col_plan(dy.shape, out.shape, params[6],
                                                            x.dtype)
    cout = dy.shape[3]
    per = cout if shared else k * cout + cout
    partials = scratch("conv_general.partials", ((nparts - 1) * per,), x.dtype) \
        if nparts > 1 else None
    _kernels.general_backward_weight(x, dy, out, bias_grad, params, shared, panel, tile,
                                     partials, nthreads, nparts)


def _depthwise_forward(x, kernel, bias, out, params, relu):
    """kernel (kh, kw, Cin, dm) (a grouped kernel (kh, kw, 1, Cout) has the same memory)."""
    n, oh, ow, cout = out.shape
    kh, kw = kernel.shape[:2]
    dm = cout // x.shape[3]
    nthreads = min(_threads(n * oh * ow * cout * kh * kw), n * oh)
    work = scratch("conv_general.work", (nthreads * kh * x.shape[2] * cout,), x.dtype) \
        if dm > 1 else None
    _kernels.depthwise_forward(x, kernel, bias, out, params, relu, work, nthreads)


def _depthwise_backward_input(dy, kernel, out, params):
    n, oh, ow, cout = dy.shape
    kh, kw = kernel.shape[:2]
    nthreads = min(_threads(n * oh * ow * cout * kh * kw), n * out.shape[1])
    work = scratch("conv_general.work", (nthreads * 4 * cout,), dy.dtype)
    taps = scratch("conv_general.taps", (nthreads * 2 * kh,), np.intp)
    _kernels.depthwise_backward_input(dy, kernel, out, params, work, taps, nthreads)


def _depthwise_backward_weight(x, dy, out, bias_grad, params):
    n, oh, ow, cout = dy.shape
    kh, kw = out.shape[:2]
    nthreads = min(_threads(n * oh * ow * cout * kh * kw), n * oh)
    nparts = config.reduction_parts(nthreads, n * oh)
    per = x.shape[2] * cout + kh * kw * cout + cout
    work = scratch("conv_general.work", (nparts * per,), x.dtype)
    _kernels.depthwise_backward_weight(x, dy, out, bias_grad, params, work, nthreads, nparts)


def _bias_act(y, bias, relu):
    if bias is None and not relu:
        return
    flat = y.reshape(-1, y.shape[-1])
    _kernels.bias_act(flat, bias, relu, _threads(flat.size, _PARALLEL_MIN_ELEMENTS))


def _bias_grad(dy, out):
    flat = dy.reshape(-1, dy.shape[-1])
    nthreads = min(_threads(flat.size, _PARALLEL_MIN_ELEMENTS), flat.shape[0])
    nparts = config.reduction_parts(nthreads, flat.shape[0])
    partials = scratch("conv_general.bias_partials", ((nparts - 1) * flat.shape[1],),
                       dy.dtype) if nparts > 1 else None
    _kernels.bias_grad(flat, out, partials, nthreads, nparts)


# --------------------------------------------------------------------- grouped / dilated conv
def _check_group_channels(cin, cout, groups):
    if cin % groups:
        raise ValueError(f"groups={groups} must divide the {cin} input channels")
    if cout % groups:
        raise ValueError(f"groups={groups} must divide the {cout} output channels")


def _check_grouped_kernel(kernel, cin, groups):
    _check_group_channels(cin, kernel.shape[3], groups)
    if kernel.shape[2] != cin // groups:
        raise ValueError(f"kernel must have {cin // groups} input channels per group "
                         f"(Cin={cin} / groups={groups}), got shape {kernel.shape}")


def conv2d_general(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1,
                   groups=1, activation=None, out=None):
    """``y = act(conv(x, kernel) + bias)`` with dilation and groups (Keras ``Conv2D``).

    x (N, H, W, Cin), kernel (kh, kw, Cin/groups, Cout): output channels [g*Cout/groups,
    (g+1)*Cout/groups) see input channels [g*Cin/groups, (g+1)*Cin/groups).  strides and
    dilation_rate an int or a pair; padding 'valid', 'same' or ((t, b), (l, r));
    activation None, 'linear' or 'relu' (fused).  Returns y (N, OH, OW, Cout).
    """
    x, kernel = _check_operands(x, "x", kernel)
    strides, padding, dilation, groups = _conv_args(strides, padding, dilation_rate, groups)
    _check_grouped_kernel(kernel, x.shape[3], groups)
    kh, kw, cg, cout = kernel.shape
    bias = _check_bias(bias, cout, x.dtype)
    act = _check_activation(activation)
    if _is_plain(groups, dilation, padding):
        return conv_ops.conv2d(x, kernel, bias, strides=strides, padding=padding,
                               activation=activation, out=out)
    (oh, ow), pads = output_geometry(x.shape[1:3], (kh, kw), strides, dilation, padding)
    out = check_out(out, "out", (x.shape[0], oh, ow, cout), x.dtype)
    _check_no_overlap(out, "out", x, kernel, bias)
    params = _params(strides, dilation, pads, groups)
    if cg == 1 and groups > 1:
        _depthwise_forward(x, kernel, bias, out, params, act)
    else:
        _general_forward(x, kernel, bias, out, params, act)
    return out


def conv2d_general_backward_input(dy, kernel, input_shape, *, strides=1, padding="valid",
                                  dilation_rate=1, groups=1, out=None):
    """Gradient of ``conv2d_general`` with respect to its input: dx of shape ``input_shape``
    (N, H, W, Cin) from dy (N, OH, OW, Cout) and kernel (kh, kw, Cin/groups, Cout)."""
    dy, kernel = _check_operands(dy, "dy", kernel)
    input_shape = _check_shape4(input_shape, "input_shape")
    strides, padding, dilation, groups = _conv_args(strides, padding, dilation_rate, groups)
    _check_grouped_kernel(kernel, input_shape[3], groups)
    if _is_plain(groups, dilation, padding):
        return conv_ops.conv2d_backward_input(dy, kernel, input_shape, strides=strides,
                                              padding=padding, out=out)
    kh, kw, cg, cout = kernel.shape
    (oh, ow), pads = output_geometry(input_shape[1:3], (kh, kw), strides, dilation, padding)
    expected = (input_shape[0], oh, ow, cout)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected} (the output for input_shape "
                         f"{input_shape}), got {dy.shape}")
    out = check_out(out, "out", input_shape, dy.dtype)
    _check_no_overlap(out, "out", dy, kernel)
    params = _params(strides, dilation, pads, groups)
    if cg == 1 and groups > 1:
        _depthwise_backward_input(dy, kernel, out, params)
    else:
        _general_backward_input(dy, kernel, out, params)
    return out


def conv2d_general_backward_weight(x, dy, kernel_size, *, strides=1, padding="valid",
                                   dilation_rate=1, groups=1, out=None, bias_grad=None):
    """Gradients of ``conv2d_general`` with respect to its kernel and (optionally) bias.

    x (N, H, W, Cin), dy (N, OH, OW, Cout).  Returns ``(dkernel, bias_grad)``: dkernel
    (kh, kw, Cin/groups, Cout) (into ``out`` when given); ``bias_grad`` the caller's (Cout,)
    array filled with dy summed over N, OH and OW, or None.  Sums are reduced in an order
    fixed by the thread count (bitwise reproducible for a given ``set_num_threads``).
    """
    x, dy, (kh, kw) = _check_x_dy(x, dy, kernel_size)
    strides, padding, dilation, groups = _conv_args(strides, padding, dilation_rate, groups)
    cin, cout = x.shape[3], dy.shape[3]
    _check_group_channels(cin, cout, groups)
    if _is_plain(groups, dilation, padding):
        return conv_ops.conv2d_backward_weight(x, dy, (kh, kw), strides=strides,
                                               padding=padding, out=out, bias_grad=bias_grad)
    (oh, ow), pads = output_geometry(x.shape[1:3], (kh, kw), strides, dilation, padding)
    _check_dy_spatial(dy, x, oh, ow)
    cg = cin // groups
    out = _check_weight_outputs(out, (kh, kw, cg, cout), bias_grad, x, dy)
    params = _params(strides, dilation, pads, groups)
    if cg == 1 and groups > 1:
        _depthwise_backward_weight(x, dy, out, bias_grad, params)
    else:
        _general_backward_weight(x, dy, out, bias_grad, params)
    return out, bias_grad


# ----------------------------------------------------------------------------------- depthwise
def _check_depthwise_args(strides, padding, dilation_rate):
    strides, padding = pair(strides, "strides"), normalize_padding(padding)
    return strides, padding, pair(dilation_rate, "dilation_rate")


def depthwise_conv2d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1,
                     activation=None, out=None):
    """Depthwise convolution (Keras ``DepthwiseConv2D``): x (N, H, W, Cin), kernel
    (kh, kw, Cin, dm), bias (Cin*dm,) -> y (N, OH, OW, Cin*dm), output channel c*dm + m =
    sum over the window of x[..., c] * kernel[..., c, m]; activation None or 'relu' (fused)."""
    x, kernel = _check_operands(x, "x", kernel)
    kh, kw, cin, dm = kernel.shape
    _check_channels(x.shape[3], cin, "x", kernel)
    strides, padding, dilation = _check_depthwise_args(strides, padding, dilation_rate)
    bias = _check_bias(bias, cin * dm, x.dtype)
    act = _check_activation(activation)
    (oh, ow), pads = output_geometry(x.shape[1:3], (kh, kw), strides, dilation, padding)
    out = check_out(out, "out", (x.shape[0], oh, ow, cin * dm), x.dtype)
    _check_no_overlap(out, "out", x, kernel, bias)
    _depthwise_forward(x, kernel, bias, out, _params(strides, dilation, pads, cin), act)
    return out


def depthwise_conv2d_backward_input(dy, kernel, input_shape, *, strides=1, padding="valid",
                                    dilation_rate=1, out=None):
    """dx (``input_shape`` = (N, H, W, Cin)) of ``depthwise_conv2d`` from dy (N, OH, OW,
    Cin*dm) and kernel (kh, kw, Cin, dm)."""
    dy, kernel = _check_operands(dy, "dy", kernel)
    input_shape = _check_shape4(input_shape, "input_shape")
    kh, kw, cin, dm = kernel.shape
    _check_channels(input_shape[3], cin, "input_shape", kernel)
    strides, padding, dilation = _check_depthwise_args(strides, padding, dilation_rate)
    (oh, ow), pads = output_geometry(input_shape[1:3], (kh, kw), strides, dilation, padding)
    expected = (input_shape[0], oh, ow, cin * dm)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected} (the output for input_shape "
                         f"{input_shape}), got {dy.shape}")
    out = check_out(out, "out", input_shape, dy.dtype)
    _check_no_overlap(out, "out", dy, kernel)
    _depthwise_backward_input(dy, kernel, out, _params(strides, dilation, pads, cin))
    return out


def depthwise_conv2d_backward_weight(x, dy, kernel_size, *, strides=1, padding="valid",
                                     dilation_rate=1, out=None, bias_grad=None):
    """``(dkernel, bias_grad)`` of ``depthwise_conv2d``: x (N, H, W, Cin), dy (N, OH, OW,
    Cin*dm); dkernel (kh, kw, Cin, dm) (into ``out`` when given), ``bias_grad`` the caller's
    (Cin*dm,) array filled with dy's sums, or None.  Reproducible for a given thread count (for
    any thread count in ``fastnet.config.deterministic`` mode)."""
    x, dy, (kh, kw) = _check_x_dy(x, dy, kernel_size)
    strides, padding, dilation = _check_depthwise_args(strides, padding, dilation_rate)
    cin, cout = x.shape[3], dy.shape[3]
    if cout % cin:
        raise ValueError(f"dy's {cout} channels must be a multiple of x's {cin} "
                         f"(Cin * depth_multiplier)")
    (oh, ow), pads = output_geometry(x.shape[1:3], (kh, kw), strides, dilation, padding)
    _check_dy_spatial(dy, x, oh, ow)
    out = _check_weight_outputs(out, (kh, kw, cin, cout // cin), bias_grad, x, dy)
    _depthwise_backward_weight(x, dy, out, bias_grad, _params(strides, dilation, pads, cin))
    return out, bias_grad


# ---------------------------------------------------------------------------------- transposed
def conv_transpose_output_length(size, kernel_size, stride, padding, output_padding=None,
                                 dilation=1):
    """Keras's transposed-convolution output length along one axis (k_eff the dilated size):
    'valid' (size-1)*stride + k_eff + output_padding (default max(k_eff, stride) - k_eff);
    'same' size*stride, or (size-1)*stride + k_eff % 2 + output_padding when given."""
    k_eff = (kernel_size - 1) * dilation + 1
    if padding == "valid":
        extra = max(k_eff, stride) - k_eff if output_padding is None else output_padding
        return (size - 1) * stride + k_eff + extra
    if output_padding is None:
        return size * stride
    return (size - 1) * stride + k_eff % 2 + output_padding


def _transpose_args(strides, padding, output_padding, dilation_rate):
    strides = pair(strides, "strides")
    padding = check_padding(padding)
    dilation = pair(dilation_rate, "dilation_rate")
    if output_padding is not None:
        output_padding = pair(output_padding, "output_padding", minimum=0)
        for p, s in zip(output_padding, strides):
            if p >= s:
                raise ValueError(f"output_padding must be < strides, got output_padding="
                                 f"{output_padding}, strides={strides}")
    return strides, padding, output_padding, dilation


def _transpose_geometry(hw, khw, strides, padding, output_padding, dilation):
    """((OH, OW), (pt, pl), fast): the output size, the padding before of the convolution
    whose gradient this is (TensorFlow's, from the sizes) and whether fastnet.ops.conv's
    geometry for that padding mode is the same (no dilation; consistent sizes)."""
    out_hw, pads, fast = [], [], dilation == (1, 1)
    for a in range(2):
        op = None if output_padding is None else output_padding[a]
        o = conv_transpose_output_length(hw[a], khw[a], strides[a], padding, op, dilation[a])
        if o < 1:
            raise ValueError(f"the output size along axis {a} would be {o} (input {hw}, "
                             f"kernel {khw}, strides {strides}, padding {padding!r})")
        k_eff = (khw[a] - 1) * dilation[a] + 1
        pt = max((hw[a] - 1) * strides[a] + k_eff - o, 0) // 2
        if fast and (o < khw[a] or conv_output_size(o, khw[a], strides[a], padding)[:2] !=
                     (hw[a], pt)):
            fast = False
        out_hw.append(o)
        pads.append(pt)
    return tuple(out_hw), tuple(pads), fast


def conv2d_transpose(x, kernel, bias=None, *, strides=1, padding="valid", output_padding=None,
                     dilation_rate=1, activation=None, out=None):
    """Transposed convolution (Keras ``Conv2DTranspose``): x (N, H, W, Cin), kernel
    (kh, kw, filters, Cin), bias (filters,) -> y (N, OH, OW, filters), OH from
    ``conv_transpose_output_length``; the gradient of a convolution of y by the same kernel.
    activation None or 'relu' (applied with the bias in one pass)."""
    x, kernel = _check_operands(x, "x", kernel)
    kh, kw, filters, cin = kernel.shape
    _check_channels(x.shape[3], cin, "x", kernel)
    strides, padding, output_padding, dilation = _transpose_args(strides, padding,
                                                                 output_padding, dilation_rate)
    bias = _check_bias(bias, filters, x.dtype)
    act = _check_activation(activation)
    (oh, ow), pads, fast = _transpose_geometry(x.shape[1:3], (kh, kw), strides, padding,
                                               output_padding, dilation)
    shape = (x.shape[0], oh, ow, filters)
    out = check_out(out, "out", shape, x.dtype)
    _check_no_overlap(out, "out", x, kernel, bias)
    if fast:
        conv_ops.conv2d_backward_input(x, kernel, shape, strides=strides, padding=padding,
                                       out=out)
    else:
        _general_backward_input(x, kernel, out, _params(strides, dilation, pads, 1))
    _bias_act(out, bias, act == 1)
    return out


def conv2d_transpose_backward_input(dy, kernel, input_shape, *, strides=1, padding="valid",
                                    output_padding=None, dilation_rate=1, out=None):
    """dx (``input_shape`` (N, H, W, Cin)) of ``conv2d_transpose`` from dy (N, OH, OW, filters):
    the forward convolution of dy by the kernel."""
    dy, kernel = _check_operands(dy, "dy", kernel)
    input_shape = _check_shape4(input_shape, "input_shape")
    kh, kw, filters, cin = kernel.shape
    _check_channels(input_shape[3], cin, "input_shape", kernel)
    strides, padding, output_padding, dilation = _transpose_args(strides, padding,
                                                                 output_padding, dilation_rate)
    (oh, ow), pads, fast = _transpose_geometry(input_shape[1:3], (kh, kw), strides, padding,
                                               output_padding, dilation)
    expected = (input_shape[0], oh, ow, filters)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected} (the output for input_shape "
                         f"{input_shape}), got {dy.shape}")
    out = check_out(out, "out", input_shape, dy.dtype)
    _check_no_overlap(out, "out", dy, kernel)
    if fast:
        return conv_ops.conv2d(dy, kernel, None, strides=strides, padding=padding, out=out)
    _general_forward(dy, kernel, None, out, _params(strides, dilation, pads, 1), 0)
    return out


def conv2d_transpose_backward_weight(x, dy, kernel_size, *, strides=1, padding="valid",
                                     output_padding=None, dilation_rate=1, out=None,
                                     bias_grad=None):
    """``(dkernel, bias_grad)`` of ``conv2d_transpose``: x (N, H, W, Cin), dy (N, OH, OW,
    filters); dkernel (kh, kw, filters, Cin) (into ``out`` when given), ``bias_grad`` the
    caller's (filters,) array filled with dy's sums, or None."""
    x, dy, (kh, kw) = _check_x_dy(x, dy, kernel_size)
    strides, padding, output_padding, dilation = _transpose_args(strides, padding,
                                                                 output_padding, dilation_rate)
    (oh, ow), pads, fast = _transpose_geometry(x.shape[1:3], (kh, kw), strides, padding,
                                               output_padding, dilation)
    _check_dy_spatial(dy, x, oh, ow)
    out = _check_weight_outputs(out, (kh, kw, dy.shape[3], x.shape[3]), bias_grad, x, dy)
    if fast:
        conv_ops.conv2d_backward_weight(dy, x, (kh, kw), strides=strides, padding=padding,
                                        out=out)
    else:
        _general_backward_weight(dy, x, out, None, _params(strides, dilation, pads, 1))
    if bias_grad is not None:
        _bias_grad(dy, bias_grad)
    return out, bias_grad


# ---------------------------------------------------------------------------------- upsampling
_INTERPOLATIONS = ("nearest", "bilinear")


def _check_upsampling(size, interpolation):
    size = pair(size, "size")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, "
                         f"got {interpolation!r}")
    return size


def upsampling2d(x, size=(2, 2), interpolation="nearest", out=None):
    """Keras ``UpSampling2D``: x (N, H, W, C) -> (N, H*sh, W*sw, C).  'nearest' repeats each
    pixel; 'bilinear' interpolates with half-pixel centres (``tf.image.resize``, PyTorch's
    ``interpolate(..., align_corners=False)``)."""
    x = check_array(x, "x", ndim=4)
    _check_nonempty(x, "x")
    sh, sw = _check_upsampling(size, interpolation)
    n, h, w, c = x.shape
    out = check_out(out, "out", (n, h * sh, w * sw, c), x.dtype)
    _check_no_overlap(out, "out", x)
    nthreads = min(_threads(out.size, _PARALLEL_MIN_ELEMENTS), n * h)
    if interpolation == "nearest":
        _kernels.upsample_nearest(x, out, sh, sw, nthreads)
    else:
        weights = scratch("conv_general.up_weights", (h * sh + w * sw,), x.dtype)
        index = scratch("conv_general.up_index", (2 * (h * sh + w * sw) + 2 * h,), np.intp)
        _kernels.upsample_bilinear(x, out, sh, sw, weights, index, nthreads)
    return out


def upsampling2d_backward(dy, size=(2, 2), interpolation="nearest", out=None):
    """dx (N, OH/sh, OW/sw, C) of ``upsampling2d`` from dy (N, OH, OW, C)."""
    dy = check_array(dy, "dy", ndim=4)
    _check_nonempty(dy, "dy")
    sh, sw = _check_upsampling(size, interpolation)
    n, oh, ow, c = dy.shape
    if oh % sh or ow % sw:
        raise ValueError(f"dy's spatial shape {(oh, ow)} must be a multiple of size {(sh, sw)}")
    h, w = oh // sh, ow // sw
    out = check_out(out, "out", (n, h, w, c), dy.dtype)
    _check_no_overlap(out, "out", dy)
    nthreads = min(_threads(dy.size, _PARALLEL_MIN_ELEMENTS), n * h)
    if interpolation == "nearest":
        _kernels.upsample_nearest_backward(dy, out, sh, sw, nthreads)
    else:
        contracted = scratch("conv_general.up_contracted", (n * oh * w * c,), dy.dtype)
        weights = scratch("conv_general.up_weights", (oh + ow,), dy.dtype)
        index = scratch("conv_general.up_index", (2 * (oh + ow) + 2 * h,), np.intp)
        _kernels.upsample_bilinear_backward(dy, out, sh, sw, contracted, weights, index,
                                            nthreads)
    return out


# ------------------------------------------------------------------ dilation as phases (atrous)
def phase_plan(hw, kernel_size, dilation_rate, padding):
    """A stride-1 convolution dilated by (dh, dw) is, for each of the dh*dw phases (a, b) of
    its padded input, the undilated 'valid' convolution of the pixels a + q*dh, b + r*dw
    (TensorFlow's atrous algorithm): so fastnet.ops.conv's kernels can run it.  Returns
    ``((OH, OW), (pad_top, pad_left), (Q, R), (P, S))``: the output size, the padding before,
    each phase's input (Q, R) and output (P, S) sizes; or None when the phases would compute
    more than ``_PHASE_MAX_WASTE`` times the outputs (tiny maps, large dilations)."""
    kh, kw = pair(kernel_size, "kernel_size")
    dh, dw = pair(dilation_rate, "dilation_rate")
    (oh, ow), pads = output_geometry(tuple(hw), (kh, kw), (1, 1), (dh, dw),
                                     normalize_padding(padding))
    p, q = -(-oh // dh), -(-ow // dw)
    if p * dh * q * dw > _PHASE_MAX_WASTE * oh * ow:
        return None
    return (oh, ow), pads, (p + kh - 1, q + kw - 1), (p, q)


def space_to_batch2d(x, block, pads, size, out=None):
    """x (N, H, W, C) -> xs (N*dh*dw, Q, R, C) with xs[(n*dh + a)*dw + b, q, r] =
    x[n, a + q*dh - pad_top, b + r*dw - pad_left] (zero outside x); block (dh, dw), pads
    (pad_top, pad_left) >= 0, size (Q, R)."""
    x = check_array(x, "x", ndim=4)
    _check_nonempty(x, "x")
    dh, dw = pair(block, "block")
    pt, pl = pair(pads, "pads", minimum=0)
    q, r = pair(size, "size")
    out = check_out(out, "out", (x.shape[0] * dh * dw, q, r, x.shape[3]), x.dtype)
    _check_no_overlap(out, "out", x)
    _kernels.space_to_batch(x, out, dh, dw, pt, pl,
                            min(_threads(out.size, _PARALLEL_MIN_ELEMENTS), out.shape[0] * q))
    return out


def batch_to_space2d(xs, block, offset, shape, out=None):
    """The inverse gather of ``space_to_batch2d``: y of ``shape`` (N, H, W, C) with
    y[n, i, j] = xs[(n*dh + a)*dw + b, q, r], i + off_top = a + q*dh, j + off_left = b + r*dw;
    xs (N*dh*dw, Q, R, C) must hold every such (q, r)."""
    xs = check_array(xs, "xs", ndim=4)
    _check_nonempty(xs, "xs")
    dh, dw = pair(block, "block")
    pt, pl = pair(offset, "offset", minimum=0)
    n, h, w, c = _check_shape4(shape, "shape")
    if xs.shape[0] != n * dh * dw or xs.shape[3] != c or (h - 1 + pt) // dh >= xs.shape[1] \
            or (w - 1 + pl) // dw >= xs.shape[2]:
        raise ValueError(f"xs of shape {xs.shape} does not hold the phases of shape {shape} "
                         f"(block {(dh, dw)}, offset {(pt, pl)})")
    out = check_out(out, "out", (n, h, w, c), xs.dtype)
    _check_no_overlap(out, "out", xs)
    _kernels.batch_to_space(xs, out, dh, dw, pt, pl,
                            min(_threads(out.size, _PARALLEL_MIN_ELEMENTS), n * h))
    return out
