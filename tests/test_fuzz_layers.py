"""Hypothesis fuzzing of the public layers (fastnet.layers): random configurations (strides,
paddings, dilations, groups, units, return_sequences ...) and random inputs: shapes (batch 0 and
1, odd sizes, a wrong rank), dtypes (float32, float64, int32, bool, and the wrong complex64,
object and string), memory orders (C, Fortran, strided views) and extreme values (NaN, inf,
huge, subnormal).  Every call either raises ValueError/TypeError or gives the same answer as the
same layer (same seed, same weights) called on a C-contiguous float copy, and that answer matches
a plain NumPy reference where the layer has one; inputs that are canonical (C-contiguous floats,
finite, non-empty, valid shape) are never refused; the trained layers' backward runs too.
The cases run in a child process so that a crash is reported as a failure; the child prints the
number of cases."""
import functools
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnet

CHILD = os.environ.get("FASTNET_FUZZ_CHILD") == "1"
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fastnet import layers as L  # noqa: E402
from fastnet.utils import set_random_seed  # noqa: E402

EXAMPLES = int(os.environ.get("FASTNET_FUZZ_EXAMPLES", "40"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
child_only = pytest.mark.skipif(not CHILD, reason="runs inside test_fuzz_layers_in_subprocess")
CASES = {"matched": 0, "refused": 0, "reference": 0}
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))

REAL = [np.float32, np.float64, np.int32, np.bool_]
WRONG = [np.complex64, object, np.str_]
LAYOUTS = ["C", "F", "strided"]


class Input:
    """One fuzzed input: the array as given and whether it is canonical (must be accepted)."""

    def __init__(self, array, canonical, finite):
        self.array, self.canonical, self.finite = array, canonical, finite


@st.composite
def inputs(draw, shape, ints=None):
    """An Input of ``shape``: half the draws canonical float32/float64; the others any dtype,
    layout and values.  ``ints``: draw integers in [0, ints) (indices) instead of normals."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        dtype, layout, kind = draw(st.sampled_from([np.float32, np.float64])), "C", "normal"
    else:
        dtype = draw(st.sampled_from(REAL + WRONG))
        layout = draw(st.sampled_from(LAYOUTS))
        kind = draw(st.sampled_from(["normal", "extreme"]))
    full = tuple(2 * s if layout == "strided" else s for s in shape)
    a = rng.integers(0, ints, full).astype(np.float64) if ints else rng.standard_normal(full)
    if kind == "extreme" and a.size:
        special = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-40, 0.0])
        mask = rng.random(full) < 0.3
        a[mask] = rng.choice(special, size=int(mask.sum()))
    with np.errstate(all="ignore"):
        a = a.astype(np.float64 if dtype in (object, np.str_) else dtype)
        if dtype is object:
            a = a.astype(object)
        elif dtype is np.str_:
            a = a.astype(str)
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided":
        a = a[tuple(slice(None, None, 2) for _ in shape)]
    finite = kind == "normal"
    canonical = (dtype in (np.float32, np.float64) and a.flags.c_contiguous and finite
                 and a.size > 0)
    return Input(a, canonical, finite)


def canonical_copy(a, dtype):
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(a, dtype=dtype)


def call(make, x, seed, training):
    """A fresh layer from ``make()`` (global seed fixed first: the same weights and random
    draws every time) called on ``x``; returns (layer, output)."""
    set_random_seed(seed)
    layer = make()
    set_random_seed(seed + 1)
    return layer, layer(x, training=training)


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def close(got, want, rtol, what):
    for g, w in zip(as_list(got), as_list(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=rtol * (1 + np.nanmax(np.abs(np.where(
                                       np.isfinite(w), w, 0)), initial=0)),
                                   equal_nan=True, err_msg=what)


def check(make, xs, reference=None, seed=0, training=False, dtype=np.float32, valid=True,
          backward=False):
    """Run the fuzz property on layer ``make()`` and inputs ``xs`` (an Input or a list).

    ``reference(layer, arrays)``: the NumPy answer (float64) from the layer's own weights on
    the canonical float arrays (checked on finite inputs); ``valid``: False when the input
    shape is wrong for the layer (a refusal is then required); ``backward``: also run the
    training forward and backward on the copy (finite gradients of the input's shape).
    """
    multi = isinstance(xs, list)
    items = xs if multi else [xs]
    arrays = [i.array for i in items]
    wrong_dtype = any(a.dtype.kind not in "fiub" for a in arrays)
    canonical = valid and all(i.canonical for i in items)
    rtol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-9
    try:
        _, got = call(make, arrays if multi else arrays[0], seed, training)
    except (ValueError, TypeError) as e:
        assert not canonical, f"a canonical input was refused: {type(e).__name__}: {e}"
        CASES["refused"] += 1
        return
    assert not wrong_dtype, f"a {[a.dtype for a in arrays]} input was accepted"
    assert valid, f"an input of the wrong shape {[a.shape for a in arrays]} was accepted"
    copies = [canonical_copy(a, dtype) for a in arrays]
    layer, want = call(make, copies if multi else copies[0], seed, training)
    close(got, want, 0, "the same call on a C-contiguous copy")   # the same kernel: exact
    if reference is not None and all(i.finite for i in items):
        with np.errstate(all="ignore"):
            ref = reference(layer, [c.astype(np.float64) for c in copies])
        close(want, ref, 10 * rtol, "the NumPy reference")
        CASES["reference"] += 1
    if backward and all(i.finite for i in items) and copies[0].shape[0] > 0:
        y = layer.forward(copies if multi else copies[0], training=True)
        dys = [np.ones_like(v) for v in as_list(y)]
        dx = layer.backward(dys if isinstance(y, list) else dys[0])
        for g, c in zip(as_list(dx), copies):
            if g is not None:
                assert g.shape == c.shape and np.isfinite(g).all(), "backward"
        for name, g in layer.grads.items():
            assert np.isfinite(g).all(), f"gradient of {name}"
    CASES["matched"] += 1


# --- NumPy references -------------------------------------------------------------------------

def same_or_valid(size, k_eff, s, padding):
    """(output length, padding before, padding after), TensorFlow's rule; ValueError if empty."""
    if padding == "valid":
        out, before, after = (size - k_eff) // s + 1, 0, 0
    else:
        out = -(-size // s)
        total = max((out - 1) * s + k_eff - size, 0)
        before, after = total // 2, total - total // 2
    if out < 1:
        raise ValueError("empty output")
    return out, before, after


def ref_conv2d(x, kernel, bias, strides, padding, dilation=(1, 1), groups=1):
    """x (n, h, w, c), kernel (kh, kw, c / groups, f) -> (n, oh, ow, f)."""
    kh, kw, cg, f = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh, t, b = same_or_valid(x.shape[1], (kh - 1) * dh + 1, sh, padding)
    ow, l, r = same_or_valid(x.shape[2], (kw - 1) * dw + 1, sw, padding)
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    y = np.zeros((x.shape[0], oh, ow, f))
    fg = f // groups
    for g in range(groups):
        xs = xp[..., g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
                y[..., g * fg:(g + 1) * fg] += patch @ kernel[i, j][:, g * fg:(g + 1) * fg]
    return y + (0 if bias is None else bias)


def ref_pool(x, ps, strides, padding, average):
    oh, t, _ = same_or_valid(x.shape[1], ps[0], strides[0], padding)
    ow, l, _ = same_or_valid(x.shape[2], ps[1], strides[1], padding)
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        r0 = i * strides[0] - t
        for j in range(ow):
            c0 = j * strides[1] - l
            win = x[:, max(r0, 0):min(r0 + ps[0], x.shape[1]),
                    max(c0, 0):min(c0 + ps[1], x.shape[2]), :]
            y[:, i, j] = win.mean(axis=(1, 2)) if average else win.max(axis=(1, 2))
    return y


def params(layer):
    return [p.astype(np.float64) for p in layer.get_weights()]


_erf = np.vectorize(math.erf, otypes=[np.float64])


def ref_activation(name, x, alpha=None):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "leaky_relu":
        return np.where(x > 0, x, alpha * x)
    if name == "elu":
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if name == "gelu":
        return 0.5 * x * (1 + _erf(x / np.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    if name is None or name == "linear":
        return x
    raise AssertionError(name)


# --- strategies shared by the tests -----------------------------------------------------------

def batch():
    return st.sampled_from([0, 1, 1, 2, 3, 5])


def image_shape(draw, n, lo=1, hi=9, channels=(1, 6)):
    return (n, draw(st.integers(lo, hi)), draw(st.integers(lo, hi)),
            draw(st.integers(*channels)))


def maybe_wrong_rank(draw, shape):
    """(shape, valid): sometimes one axis dropped or one added (the layer must refuse)."""
    k = draw(st.sampled_from(["ok"] * 6 + ["drop", "add"]))
    if k == "drop":
        return shape[:-1], False
    if k == "add":
        return shape + (1,), False
    return shape, True


# --- convolutions -----------------------------------------------------------------------------

@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 2, 3]),
       st.sampled_from(["valid", "same"]), st.sampled_from([1, 2]), st.sampled_from([1, 2, 3]),
       st.sampled_from([None, "relu", "tanh"]), st.sampled_from([np.float32, np.float64]))
def test_fuzz_conv2d(data, n, kh, kw, stride, padding, dilation, groups, activation, dtype):
    if dilation > 1:
        stride = 1   # Keras: strides > 1 with dilation_rate > 1 is not supported
    cg, fg = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    shape = (n, data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)), cg * groups)
    shape, valid = maybe_wrong_rank(data.draw, shape)
    x = data.draw(inputs(shape))

    def make():
        return L.Conv2D(fg * groups, (kh, kw), strides=stride, padding=padding,
                        dilation_rate=dilation, groups=groups, activation=activation,
                        bias_initializer="glorot_uniform", dtype=dtype)

    def reference(layer, xs):
        k, b = params(layer)
        return ref_activation(activation, ref_conv2d(xs[0], k, b, (stride, stride), padding,
                                                     (dilation, dilation), groups))
    if valid:   # a valid-padding kernel larger than the input: the layer must refuse
        try:
            same_or_valid(shape[1], (kh - 1) * dilation + 1, stride, padding)
            same_or_valid(shape[2], (kw - 1) * dilation + 1, stride, padding)
        except ValueError:
            valid = False
    check(make, x, reference, dtype=dtype, valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 3), st.sampled_from([1, 2]),
       st.sampled_from(["valid", "same"]), st.integers(1, 3), st.booleans())
def test_fuzz_depthwise_and_separable(data, n, k, stride, padding, mult, separable):
    shape = image_shape(data.draw, n, lo=3)
    shape, valid = maybe_wrong_rank(data.draw, shape)
    x = data.draw(inputs(shape))
    filters = data.draw(st.integers(1, 4))

    def make():
        if separable:
            return L.SeparableConv2D(filters, k, strides=stride, padding=padding,
                                     depth_multiplier=mult, bias_initializer="glorot_uniform")
        return L.DepthwiseConv2D(k, strides=stride, padding=padding, depth_multiplier=mult,
                                 bias_initializer="glorot_uniform")

    def reference(layer, xs):
        w = params(layer)
        c = xs[0].shape[-1]
        # depthwise = grouped convolution with one group per channel, channel-major outputs
        dk = w[0].reshape(k, k, 1, c * mult)
        y = ref_conv2d(xs[0], dk, None if separable else w[1], (stride, stride), padding,
                       groups=c)
        if separable:
            y = y @ w[1][0, 0] + w[2]
        return y
    check(make, x, reference, valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 4), st.sampled_from([1, 2, 3]),
       st.sampled_from(["valid", "same"]), st.integers(1, 4))
def test_fuzz_conv2d_transpose(data, n, k, stride, padding, filters):
    shape = image_shape(data.draw, n, hi=6)
    shape, valid = maybe_wrong_rank(data.draw, shape)
    x = data.draw(inputs(shape))

    def make():
        return L.Conv2DTranspose(filters, k, strides=stride, padding=padding,
                                 bias_initializer="glorot_uniform")

    def reference(layer, xs):
        kern, b = params(layer)           # (k, k, filters, in)
        x0 = xs[0]
        nb, h, w, _ = x0.shape
        full = np.zeros((nb, (h - 1) * stride + k, (w - 1) * stride + k, filters))
        for i in range(k):
            for j in range(k):
                full[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride] \
                    += x0 @ kern[i, j].T
        sizes = [h * stride + (max(k - stride, 0) if padding == "valid" else 0),
                 w * stride + (max(k - stride, 0) if padding == "valid" else 0)]
        y = np.zeros((nb, sizes[0], sizes[1], filters))
        crop = [max((s_in - 1) * stride + k - s_out, 0) // 2 if padding == "same" else 0
                for s_in, s_out in zip((h, w), sizes)]
        part = full[:, crop[0]:crop[0] + sizes[0], crop[1]:crop[1] + sizes[1]]
        y[:, :part.shape[1], :part.shape[2]] = part
        return y + b
    check(make, x, reference, valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 4), st.sampled_from([1, 2]),
       st.sampled_from(["valid", "same", "causal"]), st.sampled_from([1, 2]),
       st.sampled_from([1, 2]))
def test_fuzz_conv1d(data, n, k, stride, padding, dilation, groups):
    if dilation > 1:
        stride = 1
    length = data.draw(st.integers(1, 12))
    shape = (n, length, groups * data.draw(st.integers(1, 3)))
    shape, valid = maybe_wrong_rank(data.draw, shape)
    x = data.draw(inputs(shape))
    filters = groups * data.draw(st.integers(1, 3))
    k_eff = (k - 1) * dilation + 1
    if valid and padding == "valid" and k_eff > length:
        valid = False

    def make():
        return L.Conv1D(filters, k, strides=stride, padding=padding, dilation_rate=dilation,
                        groups=groups, bias_initializer="glorot_uniform")

    def reference(layer, xs):
        kern, b = params(layer)
        x0 = xs[0]
        pad = padding
        if padding == "causal":
            x0, pad = np.pad(x0, ((0, 0), (k_eff - 1, 0), (0, 0))), "valid"
        return ref_conv2d(x0[:, None], kern[None], b, (1, stride), pad, (1, dilation),
                          groups)[:, 0]
    check(make, x, reference, valid=valid, backward=True)


# --- dense, pooling, reshaping ----------------------------------------------------------------

@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 7), st.integers(1, 9),
       st.sampled_from([None, "relu", "sigmoid", "softmax", "tanh"]), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2))
def test_fuzz_dense(data, n, fin, units, activation, use_bias, dtype, extra_axes):
    shape = (n,) + tuple(data.draw(st.integers(1, 3)) for _ in range(extra_axes)) + (fin,)
    x = data.draw(inputs(shape))

    def make():
        return L.Dense(units, activation=activation, use_bias=use_bias,
                       bias_initializer="glorot_uniform", dtype=dtype)

    def reference(layer, xs):
        w = params(layer)
        return ref_activation(activation, xs[0] @ w[0] + (w[1] if use_bias else 0))
    check(make, x, reference, dtype=dtype, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.sampled_from([1, 2, 3]), st.sampled_from([None, 1, 2, 3]),
       st.sampled_from(["valid", "same"]), st.booleans())
def test_fuzz_pooling2d(data, n, ps, stride, padding, average):
    shape = image_shape(data.draw, n)
    shape, valid = maybe_wrong_rank(data.draw, shape)
    x = data.draw(inputs(shape))
    s = stride or ps
    if valid:
        try:
            same_or_valid(shape[1], ps, s, padding)
            same_or_valid(shape[2], ps, s, padding)
        except ValueError:
            valid = False

    def make():
        cls = L.AveragePooling2D if average else L.MaxPooling2D
        return cls(ps, strides=stride, padding=padding)
    check(make, x, lambda layer, xs: ref_pool(xs[0], (ps, ps), (s, s), padding, average),
          valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.booleans(), st.booleans())
def test_fuzz_global_pooling(data, n, average, keepdims):
    shape, valid = maybe_wrong_rank(data.draw, image_shape(data.draw, n))
    x = data.draw(inputs(shape))

    def make():
        return (L.GlobalAveragePooling2D if average else L.GlobalMaxPooling2D)(keepdims=keepdims)

    def reference(layer, xs):
        f = np.mean if average else np.max
        return f(xs[0], axis=(1, 2), keepdims=keepdims)
    check(make, x, reference, valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from(["nearest", "bilinear"]))
def test_fuzz_upsampling_and_padding(data, n, a, b, interpolation):
    shape, valid = maybe_wrong_rank(data.draw, image_shape(data.draw, n, hi=6))
    x = data.draw(inputs(shape))
    check(lambda: L.UpSampling2D((a, b), interpolation=interpolation), x,
          (lambda layer, xs: xs[0].repeat(a, axis=1).repeat(b, axis=2))
          if interpolation == "nearest" else None, valid=valid, backward=True)
    check(lambda: L.ZeroPadding2D(((a, b), (b, a))), x,
          lambda layer, xs: np.pad(xs[0], ((0, 0), (a, b), (b, a), (0, 0))), valid=valid,
          backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_fuzz_flatten_reshape(data, n, dims):
    x = data.draw(inputs((n,) + tuple(dims)))
    size = int(np.prod(dims))
    check(L.Flatten, x, lambda layer, xs: xs[0].reshape(xs[0].shape[0], size))
    target = data.draw(st.sampled_from([(size,), (-1,), (1, size), (size, -1), (size + 1,)]))
    valid = -1 in target or int(np.prod(target)) == size
    check(lambda: L.Reshape(target), x,
          lambda layer, xs: xs[0].reshape((xs[0].shape[0],) + layer.output_shape), valid=valid)


# --- activations, normalization, dropout ------------------------------------------------------

ACTIVATION_LAYERS = {   # name: (layer from keyword arguments, reference, alpha)
    "relu": (lambda **kw: L.ReLU(**kw), "relu", None),
    "leaky": (lambda **kw: L.ReLU(negative_slope=0.2, **kw), "leaky_relu", 0.2),
    "leaky_relu": (lambda **kw: L.LeakyReLU(0.1, **kw), "leaky_relu", 0.1),
    "elu": (lambda **kw: L.ELU(0.7, **kw), "elu", 0.7),
    "gelu": (lambda **kw: L.GELU(**kw), "gelu", None),
    "gelu_tanh": (lambda **kw: L.GELU(approximate=True, **kw), "gelu_tanh", None),
    "softmax": (lambda **kw: L.Softmax(**kw), "softmax", None),
    "sigmoid": (lambda **kw: L.Activation("sigmoid", **kw), "sigmoid", None),
    "tanh": (lambda **kw: L.Activation("tanh", **kw), "tanh", None),
}


@child_only
@fuzz
@given(st.data(), batch(), st.lists(st.integers(1, 5), min_size=1, max_size=3),
       st.sampled_from(sorted(ACTIVATION_LAYERS)), st.sampled_from([np.float32, np.float64]))
def test_fuzz_activation_layers(data, n, dims, name, dtype):
    x = data.draw(inputs((n,) + tuple(dims)))
    make, ref, alpha = ACTIVATION_LAYERS[name]
    check(lambda: make(dtype=dtype), x, lambda layer, xs: ref_activation(ref, xs[0], alpha), dtype=dtype,
          backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.lists(st.integers(1, 5), min_size=1, max_size=3), st.booleans(),
       st.booleans(), st.booleans())
def test_fuzz_batch_normalization(data, n, dims, training, center, scale):
    x = data.draw(inputs((n,) + tuple(dims)))
    eps = 1e-3

    def make():
        return L.BatchNormalization(epsilon=eps, center=center, scale=scale)

    def reference(layer, xs):
        x0 = xs[0]
        if not training:
            return x0 / np.sqrt(1 + eps)
        axes = tuple(range(x0.ndim - 1))
        mean, var = x0.mean(axis=axes), x0.var(axis=axes)
        return (x0 - mean) / np.sqrt(var + eps)
    check(make, x, reference, training=training, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.lists(st.integers(1, 6), min_size=1, max_size=3),
       st.sampled_from([0.0, 0.1, 0.5, 0.9]), st.booleans())
def test_fuzz_dropout(data, n, dims, rate, training):
    x = data.draw(inputs((n,) + tuple(dims)))

    def reference(layer, xs):
        if not training or rate == 0:
            return xs[0]
        # every entry dropped (0) or scaled by 1 / (1 - rate): rebuild from the layer's output
        _, y = call(lambda: L.Dropout(rate), xs[0].astype(np.float32), 0, True)
        kept = y != 0
        return np.where(kept, xs[0] / (1 - rate), 0)
    check(lambda: L.Dropout(rate), x, reference, training=training)


# --- merge layers -----------------------------------------------------------------------------

MERGES = {   # NumPy broadcasting, as the merge layers (size-1 axes broadcast)
    "add": (L.Add, lambda xs: functools.reduce(np.add, xs)),
    "subtract": (L.Subtract, lambda xs: xs[0] - xs[1]),
    "multiply": (L.Multiply, lambda xs: functools.reduce(np.multiply, xs)),
    "average": (L.Average, lambda xs: functools.reduce(np.add, xs) / len(xs)),
    "maximum": (L.Maximum, lambda xs: functools.reduce(np.maximum, xs)),
    "minimum": (L.Minimum, lambda xs: functools.reduce(np.minimum, xs)),
}


@child_only
@fuzz
@given(st.data(), batch(), st.lists(st.integers(1, 4), min_size=1, max_size=3),
       st.sampled_from(sorted(MERGES) + ["concatenate"]), st.integers(2, 3), st.booleans())
def test_fuzz_merge(data, n, dims, kind, count, mismatch):
    if kind == "subtract":
        count = 2
    shape = (n,) + tuple(dims)
    shapes = [shape] * count
    valid = True
    if mismatch:   # one input of another shape: refused unless concatenated or broadcast
        other = shape[:-1] + (shape[-1] + 1,)
        shapes[-1] = other
        valid = kind == "concatenate" or shape[-1] == 1
    xs = [data.draw(inputs(s)) for s in shapes]
    if kind == "concatenate":
        check(lambda: L.Concatenate(axis=-1), xs,
              lambda layer, arrays: np.concatenate(arrays, axis=-1), valid=valid,
              backward=True)
        return
    cls, ref = MERGES[kind]
    check(cls, xs, lambda layer, arrays: ref(arrays), valid=valid, backward=True)


# --- recurrent, embedding, wrappers -----------------------------------------------------------

def ref_simple_rnn(weights, x, return_sequences):
    w, u, b = weights
    h = np.zeros((x.shape[0], w.shape[1]))
    seq = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w + h @ u + b)
        seq.append(h)
    return np.stack(seq, axis=1) if return_sequences else h


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 6), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from(["SimpleRNN", "LSTM", "GRU"]), st.booleans(), st.booleans())
def test_fuzz_recurrent(data, n, steps, features, units, kind, return_sequences, go_backwards):
    shape, valid = maybe_wrong_rank(data.draw, (n, steps, features))
    x = data.draw(inputs(shape))

    def make():
        return getattr(L, kind)(units, return_sequences=return_sequences,
                                go_backwards=go_backwards, bias_initializer="glorot_uniform")

    def reference(layer, xs):
        x0 = xs[0][:, ::-1] if go_backwards else xs[0]
        return ref_simple_rnn(params(layer), x0, return_sequences)
    check(make, x, reference if kind == "SimpleRNN" else None, valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 5), st.integers(1, 3),
       st.sampled_from(["SimpleRNN", "LSTM", "GRU"]),
       st.sampled_from(["concat", "sum", "mul", "ave"]), st.booleans())
def test_fuzz_bidirectional(data, n, steps, units, kind, merge_mode, return_sequences):
    shape, valid = maybe_wrong_rank(data.draw, (n, steps, data.draw(st.integers(1, 4))))
    x = data.draw(inputs(shape))

    def make():
        return L.Bidirectional(getattr(L, kind)(units, return_sequences=return_sequences),
                               merge_mode=merge_mode)

    def reference(layer, xs):
        w = params(layer)   # the forward layer's three weights, then the backward layer's
        fwd = ref_simple_rnn(w[:3], xs[0], return_sequences)
        bwd = ref_simple_rnn(w[3:], xs[0][:, ::-1], return_sequences)
        if return_sequences:
            bwd = bwd[:, ::-1]
        return {"concat": lambda: np.concatenate([fwd, bwd], -1), "sum": lambda: fwd + bwd,
                "mul": lambda: fwd * bwd, "ave": lambda: (fwd + bwd) / 2}[merge_mode]()
    check(make, x, reference if kind == "SimpleRNN" else None, valid=valid, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 4), st.booleans())
def test_fuzz_time_distributed(data, n, steps, conv):
    if conv:
        shape = (n, steps) + image_shape(data.draw, 1, lo=3, hi=6)[1:]
    else:
        shape = (n, steps, data.draw(st.integers(1, 5)))
    x = data.draw(inputs(shape))
    units = data.draw(st.integers(1, 4))

    def make():
        inner = L.Conv2D(units, 3, bias_initializer="glorot_uniform") if conv else \
            L.Dense(units, bias_initializer="glorot_uniform")
        return L.TimeDistributed(inner)

    def reference(layer, xs):
        w = params(layer)
        x0 = xs[0]
        flat = x0.reshape((-1,) + x0.shape[2:])
        y = ref_conv2d(flat, w[0], w[1], (1, 1), "valid") if conv else flat @ w[0] + w[1]
        return y.reshape(x0.shape[:2] + y.shape[1:])
    check(make, x, reference, backward=True)


@child_only
@fuzz
@given(st.data(), batch(), st.integers(1, 5), st.integers(1, 30), st.integers(1, 4),
       st.sampled_from(["ok", "negative", "too_big", "fraction"]))
def test_fuzz_embedding(data, n, steps, vocab, dim, bad):
    x = data.draw(inputs((n, steps), ints=vocab))
    valid = True
    if bad != "ok" and x.array.size and x.array.dtype.kind in "fi":
        a = x.array.copy()
        a.flat[0] = {"negative": -1, "too_big": vocab, "fraction": 0.5}[bad]
        if a.dtype.kind == "i" and bad == "fraction":
            a.flat[0] = vocab + 3
        x = Input(a, x.canonical, x.finite)
        valid = False
    if x.array.dtype == np.bool_:
        valid = vocab > 1 or not x.array.any()
    a = x.array
    if a.dtype.kind == "f" and a.size and not (np.isfinite(a) & (a < vocab)).all():
        valid = False   # NaN / inf / 1e38 are no index

    def reference(layer, xs):
        return params(layer)[0][xs[0].astype(np.int64)]
    check(lambda: L.Embedding(vocab, dim), x, reference, valid=valid)


# --- preprocessing layers ---------------------------------------------------------------------

AUGMENT = {
    "flip": lambda: L.RandomFlip(seed=1),
    "rotation": lambda: L.RandomRotation(0.2, seed=2),
    "translation": lambda: L.RandomTranslation(0.2, 0.3, fill_mode="constant", seed=3),
    "zoom": lambda: L.RandomZoom(0.3, interpolation="nearest", seed=4),
    "crop": lambda: L.RandomCrop(3, 2, seed=5),
    "brightness": lambda: L.RandomBrightness(0.2, value_range=(0, 1), seed=6),
    "contrast": lambda: L.RandomContrast(0.3, seed=7),
    "cutout": lambda: L.CutOut(0.3, seed=8),
}


@child_only
@fuzz
@given(st.data(), batch(), st.sampled_from(sorted(AUGMENT)), st.booleans())
def test_fuzz_augmentation(data, n, name, training):
    shape, valid = maybe_wrong_rank(data.draw, image_shape(data.draw, n, lo=3, hi=8))
    if len(shape) == 3:   # one unbatched image (height, width, channels): accepted, as in Keras
        valid = True
    x = data.draw(inputs(shape))
    identity = not training and name != "crop"
    check(AUGMENT[name], x, (lambda layer, xs: xs[0]) if identity else None, training=training,
          valid=valid)


@child_only
@fuzz
@given(st.data(), batch(), st.lists(st.integers(1, 4), min_size=1, max_size=3),
       st.floats(-3, 3), st.floats(-2, 2), st.booleans())
def test_fuzz_scaling(data, n, dims, scale, offset, normalization):
    x = data.draw(inputs((n,) + tuple(dims)))
    if not normalization:
        check(lambda: L.Rescaling(scale, offset), x,
              lambda layer, xs: xs[0] * scale + offset, backward=True)
        return
    c = dims[-1]
    rng = np.random.default_rng(c)
    mean, var = rng.standard_normal(c), rng.random(c) + 0.1
    check(lambda: L.Normalization(mean=mean, variance=var), x,
          lambda layer, xs: (xs[0] - mean) / np.sqrt(var))


# --- whole models: predict, evaluate and fit take any layout and real dtype -----------------

_MODELS = {}


def fuzz_model(dtype):
    """One small CNN per dtype, built once (its weights never change: fit runs on a clone)."""
    if dtype not in _MODELS:
        from fastnet import models
        set_random_seed(11)
        _MODELS[dtype] = models.Sequential([
            L.Conv2D(3, 3, padding="same", activation="relu", input_shape=(6, 5, 2),
                     dtype=dtype),
            L.MaxPooling2D(2, dtype=dtype), L.Flatten(dtype=dtype),
            L.Dense(3, activation="softmax", dtype=dtype)])
        _MODELS[dtype].compile("sgd", "sparse_categorical_crossentropy")
    return _MODELS[dtype]


@child_only
@fuzz
@given(st.data(), st.sampled_from([0, 1, 2, 7]), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([None, 1, 3]))
def test_fuzz_model_predict_evaluate(data, n, dtype, batch_size):
    model = fuzz_model(dtype)
    shape, valid = maybe_wrong_rank(data.draw, (n, 6, 5, 2))
    x = data.draw(inputs(shape))
    a = x.array
    valid = valid and n > 0
    try:
        got = model.predict(a, batch_size=batch_size, verbose=0)
    except (ValueError, TypeError) as e:
        assert not (valid and x.canonical), f"a canonical input was refused: {e}"
        CASES["refused"] += 1
        return
    assert valid and a.dtype.kind in "fiub", f"accepted {a.dtype} {a.shape}"
    want = model.predict(canonical_copy(a, dtype), batch_size=batch_size, verbose=0)
    close(got, want, 0, "predict on a C-contiguous copy")
    if x.finite:
        labels = np.arange(n) % 3
        ev = model.evaluate(a, labels, batch_size=batch_size, verbose=0)
        ev_c = model.evaluate(canonical_copy(a, dtype), labels, batch_size=batch_size, verbose=0)
        close(ev, ev_c, 1e-6 if dtype == np.float32 else 1e-12, "evaluate on a copy")
    CASES["matched"] += 1


@child_only
def test_dense_on_sequences_passes_gradients_of_the_input_shape():
    """Found by the fuzzing: Dense on (batch, steps, features) returned its input gradient as
    the (batch * steps, features) GEMM view, which broke a model adding it to another branch's
    (batch, steps, features) gradient."""
    from fastnet import models
    set_random_seed(0)
    i = L.Input(shape=(4, 5), dtype="float64")
    a = L.Dense(5, dtype="float64")(i)
    b = L.Dense(5, dtype="float64")(a)
    out = L.Dense(1, dtype="float64")(L.Flatten(dtype="float64")(L.Add(dtype="float64")([a, b])))
    model = models.Model(i, out)
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).random((3, 4, 5))
    y = np.ones((3, 1))
    w0 = model.get_weights()      # w0[0]: the first Dense's kernel
    base = model.evaluate(x, y, verbose=0)
    model.train_on_batch(x, y)   # sgd, lr 0.01: w1 = w0 - 0.01 * grad
    grad = (w0[0] - model.get_weights()[0]) / 0.01
    eps, (r, c) = 1e-6, (2, 3)
    bumped = [w.copy() for w in w0]
    bumped[0][r, c] += eps
    model.set_weights(bumped)
    numeric = (model.evaluate(x, y, verbose=0) - base) / eps
    np.testing.assert_allclose(grad[r, c], numeric, rtol=1e-3, atol=1e-6)
    CASES["reference"] += 1


# --- huge sizes are refused before anything is allocated --------------------------------------

@child_only
def test_huge_sizes_refused_before_allocation():
    import tracemalloc
    from fastnet.ops._workspace import memory_limit, scratch
    big = memory_limit() // 4 + 1   # elements whose float32 weight alone exceeds the memory
    cases = [
        (lambda: L.Dense(2**40), (4,)),
        (lambda: L.Dense(big), (1,)),
        (lambda: L.Conv2D(2**40, 3), (8, 8, 3)),
        (lambda: L.Conv2D(4, 3), (8, 8, 2**36)),
        (lambda: L.DepthwiseConv2D(3, depth_multiplier=2**40), (8, 8, 3)),
        (lambda: L.Conv2DTranspose(2**40, 3), (8, 8, 3)),
        (lambda: L.Embedding(2**24, 2**30), (4,)),
        (lambda: L.LSTM(2**31), (3, 4)),
    ]
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    linux = os.path.exists("/proc/self/statm")
    rss0 = rss() if linux else 0
    tracemalloc.start()
    try:
        for make, shape in cases:
            with pytest.raises(ValueError, match="memory"):
                make().build(shape)
            CASES["refused"] += 1
        # an output buffer (an upsampling of a small input) and an im2col-sized workspace
        up = L.UpSampling2D((2**20, 2**20))
        with pytest.raises(ValueError, match="memory"):
            up(np.zeros((1, 4, 4, 1), np.float32))
        with pytest.raises(ValueError, match="memory"):
            scratch("fuzz.huge", (2**20, 2**30), np.float32)
        CASES["refused"] += 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes were allocated before the refusals"
    if linux:
        assert rss() - rss0 < 64 << 20, "the refused layers grew the resident memory"


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if CHILD:
        print(f"\nFUZZ LAYER CASES matched={CASES['matched']} refused={CASES['refused']} "
              f"reference={CASES['reference']}")


# --- the parent: the whole file in a child process -------------------------------------------

@pytest.mark.skipif(CHILD, reason="the parent's test")
def test_fuzz_layers_in_subprocess():
    env = dict(os.environ, FASTNET_FUZZ_CHILD="1", OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))   # the same fastnet
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          "-W", "ignore::RuntimeWarning", os.path.abspath(__file__)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=_PKG_PARENT)
    report = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, f"fuzz child failed (exit code {out.returncode}):\n{report}"
    m = re.search(r"FUZZ LAYER CASES matched=(\d+) refused=(\d+) reference=(\d+)", out.stdout)
    assert m, report
    matched, refused, reference = map(int, m.groups())
    print(f"\nlayer fuzz cases: {matched} matched ({reference} against NumPy references), "
          f"{refused} refused")
    assert matched > 0 and refused > 0 and reference > 0, report
