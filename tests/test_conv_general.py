"""fastnet.ops.conv_general (dilated, grouped, depthwise, transposed convolutions; upsampling)
against plain NumPy float64 references, forward and both gradients, every schedule forced."""
import zlib

import numpy as np
import pytest

import fastnet
from fastnet.ops import conv_general as cg
from fastnet.ops.conv_general import (
    conv2d_general, conv2d_general_backward_input, conv2d_general_backward_weight,
    conv2d_transpose, conv2d_transpose_backward_input, conv2d_transpose_backward_weight,
    conv_transpose_output_length, depthwise_conv2d, depthwise_conv2d_backward_input,
    depthwise_conv2d_backward_weight, upsampling2d, upsampling2d_backward)


# ----------------------------------------------------------------------------- references
def _axis(size, k, s, d, padding):
    """(out, pad_before, pad_after) along one axis (TensorFlow's 'same', explicit pairs)."""
    k_eff = (k - 1) * d + 1
    if padding == "valid":
        return (size - k_eff) // s + 1, 0, 0
    if padding == "same":
        out = -(-size // s)
        total = max((out - 1) * s + k_eff - size, 0)
        return out, total // 2, total - total // 2
    a, b = padding
    return (size + a + b - k_eff) // s + 1, a, b


def _geometry(xshape, khw, strides, dilation, padding):
    pads = (padding, padding) if isinstance(padding, str) else padding
    oh, pt, pb = _axis(xshape[1], khw[0], strides[0], dilation[0], pads[0])
    ow, pl, pr = _axis(xshape[2], khw[1], strides[1], dilation[1], pads[1])
    return oh, ow, ((0, 0), (pt, pb), (pl, pr), (0, 0))


def _window(xp, i, j, oh, ow, strides, dilation):
    (sh, sw), (dh, dw) = strides, dilation
    return xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]


def ref_conv(x, k, bias, strides, padding, dilation=(1, 1), groups=1):
    x, k = x.astype(np.float64), k.astype(np.float64)
    oh, ow, pads = _geometry(x.shape, k.shape, strides, dilation, padding)
    xp = np.pad(x, pads)
    cgrp, og = x.shape[3] // groups, k.shape[3] // groups
    y = np.zeros((x.shape[0], oh, ow, k.shape[3]))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            win = _window(xp, i, j, oh, ow, strides, dilation)
            for g in range(groups):
                y[..., g * og:(g + 1) * og] += np.einsum(
                    "nhwc,cd->nhwd", win[..., g * cgrp:(g + 1) * cgrp],
                    k[i, j, :, g * og:(g + 1) * og])
    return y if bias is None else y + bias


def ref_conv_backward_input(dy, k, xshape, strides, padding, dilation=(1, 1), groups=1):
    dy, k = dy.astype(np.float64), k.astype(np.float64)
    oh, ow, pads = _geometry(xshape, k.shape, strides, dilation, padding)
    n, h, w, c = xshape
    dxp = np.zeros((n, h + sum(pads[1]), w + sum(pads[2]), c))
    cgrp, og = c // groups, k.shape[3] // groups
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            win = _window(dxp, i, j, oh, ow, strides, dilation)
            for g in range(groups):
                win[..., g * cgrp:(g + 1) * cgrp] += np.einsum(
                    "nhwd,cd->nhwc", dy[..., g * og:(g + 1) * og],
                    k[i, j, :, g * og:(g + 1) * og])
    return dxp[:, pads[1][0]:pads[1][0] + h, pads[2][0]:pads[2][0] + w, :]


def ref_conv_backward_weight(x, dy, khw, strides, padding, dilation=(1, 1), groups=1):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    oh, ow, pads = _geometry(x.shape, khw, strides, dilation, padding)
    xp = np.pad(x, pads)
    cgrp, og = x.shape[3] // groups, dy.shape[3] // groups
    dk = np.zeros(tuple(khw) + (cgrp, dy.shape[3]))
    for i in range(khw[0]):
        for j in range(khw[1]):
            win = _window(xp, i, j, oh, ow, strides, dilation)
            for g in range(groups):
                dk[i, j, :, g * og:(g + 1) * og] = np.einsum(
                    "nhwc,nhwd->cd", win[..., g * cgrp:(g + 1) * cgrp],
                    dy[..., g * og:(g + 1) * og])
    return dk


def ref_depthwise(x, k, bias, strides, padding, dilation=(1, 1)):
    """Written from the definition: output channel c*dm + m = x[..., c] (*) k[..., c, m]."""
    x, k = x.astype(np.float64), k.astype(np.float64)
    kh, kw, cin, dm = k.shape
    oh, ow, pads = _geometry(x.shape, k.shape, strides, dilation, padding)
    xp = np.pad(x, pads)
    y = np.zeros((x.shape[0], oh, ow, cin, dm))
    for i in range(kh):
        for j in range(kw):
            y += _window(xp, i, j, oh, ow, strides, dilation)[..., None] * k[i, j]
    y = y.reshape(x.shape[0], oh, ow, cin * dm)
    return y if bias is None else y + bias


def ref_transpose(x, k, strides, padding, output_padding=None, dilation=(1, 1)):
    """Scatter every input pixel through the kernel onto the full canvas, then crop the
    window TensorFlow's padding of the matching convolution selects."""
    x, k = x.astype(np.float64), k.astype(np.float64)
    n, h, w, _ = x.shape
    kh, kw, f, _ = k.shape
    (sh, sw), (dh, dw) = strides, dilation
    outs, starts = [], []
    for size, kk, s, d, a in ((h, kh, sh, dh, 0), (w, kw, sw, dw, 1)):
        op = None if output_padding is None else output_padding[a]
        o = conv_transpose_output_length(size, kk, s, padding, op, d)
        k_eff = (kk - 1) * d + 1
        outs.append(o)
        starts.append(max((size - 1) * s + k_eff - o, 0) // 2)
    ch = (h - 1) * sh + (kh - 1) * dh + 1 + outs[0]
    cw = (w - 1) * sw + (kw - 1) * dw + 1 + outs[1]
    canvas = np.zeros((n, ch, cw, f))
    for i in range(kh):
        for j in range(kw):
            canvas[:, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (w - 1) + 1:sw] \
                += np.einsum("nhwc,fc->nhwf", x, k[i, j])
    return canvas[:, starts[0]:starts[0] + outs[0], starts[1]:starts[1] + outs[1]]


def _interp_matrix(size, scale, interpolation):
    """(size*scale, size) matrix A with y = A x along one axis."""
    out = size * scale
    a = np.zeros((out, size))
    for o in range(out):
        if interpolation == "nearest":
            a[o, o // scale] = 1.0
            continue
        src = (o + 0.5) / scale - 0.5
        lo = int(np.floor(src))
        t = src - lo
        a[o, min(max(lo, 0), size - 1)] += 1.0 - t
        a[o, min(max(lo + 1, 0), size - 1)] += t
    return a


def ref_upsampling(x, size, interpolation):
    ah = _interp_matrix(x.shape[1], size[0], interpolation)
    aw = _interp_matrix(x.shape[2], size[1], interpolation)
    return np.einsum("ph,qw,nhwc->npqc", ah, aw, x.astype(np.float64))


def ref_upsampling_backward(dy, size, interpolation):
    ah = _interp_matrix(dy.shape[1] // size[0], size[0], interpolation)
    aw = _interp_matrix(dy.shape[2] // size[1], size[1], interpolation)
    return np.einsum("ph,qw,npqc->nhwc", ah, aw, dy.astype(np.float64))


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"t{t}")
def threads(request, monkeypatch):
    """1, 2 and 3 threads (3 > cores: uneven partitions), even on tiny shapes."""
    monkeypatch.setattr(cg, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(cg, "_PARALLEL_MIN_ELEMENTS", 0)
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    yield request.param
    fastnet.set_num_threads(old)


@pytest.fixture(params=["blocks", "shared"])
def schedule(request, monkeypatch):
    """Force the im2col schedules: 'shared' whenever more than one thread runs."""
    if request.param == "shared":
        monkeypatch.setattr(cg, "_MIN_ROWS_PER_THREAD", 1 << 30)
    return request.param


def _seed(case):
    """A seed from a test case, the same in every process (str hashes are salted)."""
    return zlib.crc32(repr(case).encode())


def _rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# (N, H, W, Cin, Cout, kh, kw, strides, dilation, groups, padding)
GENERAL_CASES = [
    (1, 7, 9, 4, 6, 3, 3, (1, 1), (2, 2), 1, "same"),
    (2, 11, 8, 6, 4, 3, 2, (1, 1), (3, 1), 2, "valid"),
    (1, 9, 9, 8, 8, 5, 5, (1, 1), (2, 2), 4, "same"),
    (3, 10, 7, 4, 8, 3, 3, (2, 3), (1, 1), 2, "same"),
    (2, 8, 8, 8, 4, 1, 1, (1, 1), (1, 1), 4, "valid"),
    (1, 6, 13, 3, 5, 2, 4, (1, 1), (2, 3), 1, ((1, 2), (0, 3))),
    (2, 12, 12, 8, 16, 3, 3, (3, 2), (1, 1), 4, "valid"),
    (1, 5, 5, 2, 2, 3, 3, (1, 1), (1, 1), 1, ((2, 0), (1, 1))),   # explicit pad, groups 1
]


@pytest.mark.parametrize("case", GENERAL_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_general_forward_and_gradients(case, threads, schedule):
    n, h, w, cin, cout, kh, kw, strides, dil, groups, padding = case
    rng = np.random.default_rng(_seed(case))
    for dtype in (np.float32, np.float64):
        x = _rand(rng, (n, h, w, cin), dtype)
        k = _rand(rng, (kh, kw, cin // groups, cout), dtype)
        b = _rand(rng, (cout,), dtype)
        kw_args = dict(strides=strides, padding=padding, dilation_rate=dil, groups=groups)
        y = conv2d_general(x, k, b, **kw_args)
        ref = ref_conv(x, k, b, strides, padding, dil, groups)
        np.testing.assert_allclose(y, ref, **_tol(dtype))
        yr = conv2d_general(x, k, b, activation="relu", **kw_args)
        np.testing.assert_allclose(yr, np.maximum(ref, 0), **_tol(dtype))
        dy = _rand(rng, y.shape, dtype)
        dx = conv2d_general_backward_input(dy, k, x.shape, **kw_args)
        np.testing.assert_allclose(
            dx, ref_conv_backward_input(dy, k, x.shape, strides, padding, dil, groups),
            **_tol(dtype))
        db = np.empty(cout, dtype)
        dk, db2 = conv2d_general_backward_weight(x, dy, (kh, kw), bias_grad=db, **kw_args)
        assert db2 is db
        np.testing.assert_allclose(
            dk, ref_conv_backward_weight(x, dy, (kh, kw), strides, padding, dil, groups),
            **_tol(dtype))
        np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2)), **_tol(dtype))


def _random_geometry(rng):
    """(N, H, W, kh, kw, strides, dilation, padding): kernels 1..5, strides 1-3 or dilations
    1-3 (never both, as Keras), odd sizes, batch 1 or 2."""
    kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
    if rng.random() < 0.5:
        strides, dil = tuple(int(v) for v in rng.integers(1, 4, size=2)), (1, 1)
    else:
        strides, dil = (1, 1), tuple(int(v) for v in rng.integers(1, 4, size=2))
    h = int(rng.integers((kh - 1) * dil[0] + 1, 15))
    w = int(rng.integers((kw - 1) * dil[1] + 1, 15))
    return (int(rng.integers(1, 3)), h, w, kh, kw, strides, dil,
            str(rng.choice(["valid", "same"])))


def test_general_random_shapes(threads):
    """Random odd shapes: strides 1-3 or dilation 1-3, groups 1/2/4, kernels 1x1..5x5."""
    rng = np.random.default_rng(7)
    for _ in range(12):
        groups = int(rng.choice([1, 2, 4]))
        cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        n, h, w, kh, kw, strides, dil, padding = _random_geometry(rng)
        x = _rand(rng, (n, h, w, cin))
        k = _rand(rng, (kh, kw, cin // groups, cout))
        args = dict(strides=strides, padding=padding, dilation_rate=dil, groups=groups)
        y = conv2d_general(x, k, **args)
        np.testing.assert_allclose(y, ref_conv(x, k, None, strides, padding, dil, groups),
                                   rtol=1e-10, atol=1e-10)
        dy = _rand(rng, y.shape)
        np.testing.assert_allclose(
            conv2d_general_backward_input(dy, k, x.shape, **args),
            ref_conv_backward_input(dy, k, x.shape, strides, padding, dil, groups),
            rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            conv2d_general_backward_weight(x, dy, (kh, kw), **args)[0],
            ref_conv_backward_weight(x, dy, (kh, kw), strides, padding, dil, groups),
            rtol=1e-10, atol=1e-10)


def test_plain_case_uses_fast_conv(monkeypatch):
    """groups 1, no dilation, padding mode: fastnet.ops.conv's kernels, same results."""
    calls = []
    monkeypatch.setattr(cg.conv_ops, "conv2d", lambda *a, **k: calls.append(1) or "fast")
    x = np.ones((1, 5, 5, 2), np.float32)
    k = np.ones((3, 3, 2, 4), np.float32)
    assert conv2d_general(x, k) == "fast" and calls


# (N, H, W, Cin, dm, kh, kw, strides, dilation, padding)
DEPTHWISE_CASES = [
    (1, 9, 7, 5, 1, 3, 3, (1, 1), (1, 1), "same"),
    (2, 8, 8, 3, 2, 3, 3, (2, 2), (1, 1), "valid"),
    (1, 11, 9, 20, 1, 5, 3, (1, 1), (2, 3), "same"),
    (2, 7, 7, 17, 2, 2, 2, (1, 3), (1, 1), "same"),
    (1, 6, 10, 70, 1, 3, 3, (1, 1), (1, 1), "same"),     # 4 + 1 vectors + scalar tail
    (1, 5, 5, 33, 2, 1, 1, (1, 1), (1, 1), "valid"),
    (3, 12, 5, 8, 3, 4, 2, (3, 2), (1, 1), "same"),
    (2, 9, 13, 24, 2, 3, 5, (1, 1), (1, 2), "same"),     # tiles with dm > 1, 4 + 1 taps
    (1, 4, 16, 40, 1, 1, 7, (1, 1), (1, 1), "valid"),
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_depthwise(case, threads):
    n, h, w, cin, dm, kh, kw, strides, dil, padding = case
    rng = np.random.default_rng(_seed(case))
    for dtype in (np.float32, np.float64):
        x = _rand(rng, (n, h, w, cin), dtype)
        k = _rand(rng, (kh, kw, cin, dm), dtype)
        b = _rand(rng, (cin * dm,), dtype)
        args = dict(strides=strides, padding=padding, dilation_rate=dil)
        y = depthwise_conv2d(x, k, b, **args)
        ref = ref_depthwise(x, k, b, strides, padding, dil)
        np.testing.assert_allclose(y, ref, **_tol(dtype))
        np.testing.assert_allclose(depthwise_conv2d(x, k, b, activation="relu", **args),
                                   np.maximum(ref, 0), **_tol(dtype))
        # the same numbers as a grouped convolution with groups = Cin
        kg = k.reshape(kh, kw, 1, cin * dm)
        gargs = dict(args, groups=cin)
        np.testing.assert_allclose(conv2d_general(x, kg, b, **gargs), ref, **_tol(dtype))
        dy = _rand(rng, y.shape, dtype)
        dx_ref = ref_conv_backward_input(dy, kg, x.shape, strides, padding, dil, cin)
        np.testing.assert_allclose(depthwise_conv2d_backward_input(dy, k, x.shape, **args),
                                   dx_ref, **_tol(dtype))
        np.testing.assert_allclose(conv2d_general_backward_input(dy, kg, x.shape, **gargs),
                                   dx_ref, **_tol(dtype))
        dk_ref = ref_conv_backward_weight(x, dy, (kh, kw), strides, padding, dil, cin)
        db = np.empty(cin * dm, dtype)
        dk, _ = depthwise_conv2d_backward_weight(x, dy, (kh, kw), bias_grad=db, **args)
        np.testing.assert_allclose(dk, dk_ref.reshape(kh, kw, cin, dm), **_tol(dtype))
        np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2)), **_tol(dtype))


def test_depthwise_random_shapes(threads):
    """Random odd shapes: strides 1-3 or dilation 1-3, depth_multiplier 1-2, kernels 1..5."""
    rng = np.random.default_rng(17)
    for _ in range(12):
        cin, dm = int(rng.integers(1, 40)), int(rng.integers(1, 3))
        n, h, w, kh, kw, strides, dil, padding = _random_geometry(rng)
        x = _rand(rng, (n, h, w, cin))
        k = _rand(rng, (kh, kw, cin, dm))
        args = dict(strides=strides, padding=padding, dilation_rate=dil)
        y = depthwise_conv2d(x, k, **args)
        np.testing.assert_allclose(y, ref_depthwise(x, k, None, strides, padding, dil),
                                   rtol=1e-10, atol=1e-10)
        dy = _rand(rng, y.shape)
        kg = k.reshape(kh, kw, 1, cin * dm)
        np.testing.assert_allclose(
            depthwise_conv2d_backward_input(dy, k, x.shape, **args),
            ref_conv_backward_input(dy, kg, x.shape, strides, padding, dil, cin),
            rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            depthwise_conv2d_backward_weight(x, dy, (kh, kw), **args)[0].reshape(kg.shape),
            ref_conv_backward_weight(x, dy, (kh, kw), strides, padding, dil, cin),
            rtol=1e-10, atol=1e-10)


def test_backward_weight_reproducible():
    """Same thread count, same bits; the partial sums are added in a fixed order."""
    rng = np.random.default_rng(3)
    x = _rand(rng, (4, 16, 16, 32), np.float32)
    dy = _rand(rng, (4, 16, 16, 32), np.float32)
    a = depthwise_conv2d_backward_weight(x, dy, 3, padding="same")[0].copy()
    b = depthwise_conv2d_backward_weight(x, dy, 3, padding="same")[0]
    np.testing.assert_array_equal(a, b)
    k = _rand(rng, (3, 3, 16, 32), np.float32)
    a = conv2d_general_backward_weight(x, dy, 3, padding="same", groups=2)[0].copy()
    b = conv2d_general_backward_weight(x, dy, 3, padding="same", groups=2)[0]
    np.testing.assert_array_equal(a, b)
    assert k.shape == a.shape


# (N, H, W, Cin, filters, kh, kw, strides, padding, output_padding, dilation)
TRANSPOSE_CASES = [
    (2, 4, 5, 3, 4, 3, 3, (2, 2), "same", None, (1, 1)),
    (1, 5, 4, 2, 3, 3, 3, (2, 2), "valid", None, (1, 1)),
    (2, 3, 3, 4, 2, 2, 2, (2, 2), "same", (0, 0), (1, 1)),    # even kernel, op 0: general
    (1, 4, 6, 3, 5, 4, 3, (3, 2), "same", (2, 1), (1, 1)),
    (1, 5, 5, 2, 2, 3, 5, (3, 3), "valid", (1, 2), (1, 1)),
    (2, 6, 5, 3, 3, 3, 3, (1, 1), "same", None, (2, 2)),      # dilation: general
    (1, 3, 4, 2, 3, 1, 1, (3, 2), "valid", None, (1, 1)),     # kernel < stride
    (1, 7, 7, 4, 4, 5, 5, (1, 1), "valid", None, (1, 1)),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: "x".join(map(str, c[:9])))
def test_conv2d_transpose(case, threads):
    n, h, w, cin, f, kh, kw, strides, padding, op, dil = case
    rng = np.random.default_rng(_seed(case))
    for dtype in (np.float32, np.float64):
        x = _rand(rng, (n, h, w, cin), dtype)
        k = _rand(rng, (kh, kw, f, cin), dtype)
        b = _rand(rng, (f,), dtype)
        args = dict(strides=strides, padding=padding, output_padding=op, dilation_rate=dil)
        y = conv2d_transpose(x, k, b, **args)
        ref = ref_transpose(x, k, strides, padding, op, dil) + b
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, **_tol(dtype))
        np.testing.assert_allclose(conv2d_transpose(x, k, b, activation="relu", **args),
                                   np.maximum(ref, 0), **_tol(dtype))
        # gradients by the adjoint identity <y(x), dy> = <x, dx(dy)>, <y(k), dy> = <k, dk>
        dy = _rand(rng, y.shape, dtype)
        dx = conv2d_transpose_backward_input(dy, k, x.shape, **args)
        db = np.empty(f, dtype)
        dk, _ = conv2d_transpose_backward_weight(x, dy, (kh, kw), bias_grad=db, **args)
        jac_x = np.stack([ref_transpose(e.reshape(x.shape), k, strides, padding, op, dil)
                          .reshape(-1) for e in np.eye(x.size)], 1)
        np.testing.assert_allclose(dx.reshape(-1), jac_x.T @ dy.reshape(-1).astype(np.float64),
                                   **_tol(dtype))
        jac_k = np.stack([ref_transpose(x, e.reshape(k.shape), strides, padding, op, dil)
                          .reshape(-1) for e in np.eye(k.size)], 1)
        np.testing.assert_allclose(dk.reshape(-1), jac_k.T @ dy.reshape(-1).astype(np.float64),
                                   **_tol(dtype))
        np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2)), **_tol(dtype))


def test_transpose_output_length_matches_keras():
    # Keras 3: valid (i-1)s + max(k, s) (+ op), same i*s or (i-1)s + k%2 + op
    assert conv_transpose_output_length(4, 3, 2, "same") == 8
    assert conv_transpose_output_length(4, 3, 2, "valid") == 9
    assert conv_transpose_output_length(4, 1, 3, "valid") == 12
    assert conv_transpose_output_length(4, 3, 2, "same", 1) == 8
    assert conv_transpose_output_length(4, 2, 2, "same", 0) == 6
    assert conv_transpose_output_length(4, 3, 2, "valid", 1) == 10
    assert conv_transpose_output_length(5, 3, 1, "same", None, 2) == 5


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape,size", [((1, 5, 7, 3), (2, 2)), ((2, 4, 3, 17), (3, 2)),
                                        ((1, 1, 6, 1), (1, 4)), ((2, 6, 6, 64), (2, 3))])
def test_upsampling(shape, size, interpolation, threads):
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        x = _rand(rng, shape, dtype)
        y = upsampling2d(x, size, interpolation)
        np.testing.assert_allclose(y, ref_upsampling(x, size, interpolation), **_tol(dtype))
        dy = _rand(rng, y.shape, dtype)
        np.testing.assert_allclose(upsampling2d_backward(dy, size, interpolation),
                                   ref_upsampling_backward(dy, size, interpolation),
                                   **_tol(dtype))


def test_space_to_batch_round_trip(threads):
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        x = _rand(rng, (2, 7, 9, 5), dtype)
        dh, dw, pt, pl, q, r = 2, 3, 1, 2, 5, 4
        xs = cg.space_to_batch2d(x, (dh, dw), (pt, pl), (q, r))
        xp = np.zeros((2, dh * q + pt, dw * r + pl, 5), dtype)
        xp[:, pt:pt + 7, pl:pl + 9] = x
        for a in range(dh):
            for b in range(dw):
                np.testing.assert_array_equal(
                    xs.reshape(2, dh, dw, q, r, 5)[:, a, b],
                    xp[:, a:a + dh * q:dh, b:b + dw * r:dw][:, :q, :r])
        np.testing.assert_array_equal(cg.batch_to_space2d(xs, (dh, dw), (pt, pl), x.shape), x)
    with pytest.raises(ValueError, match="does not hold"):
        cg.batch_to_space2d(xs, (dh, dw), (pt, pl), (2, 12, 9, 5))


def test_phase_plan():
    assert cg.phase_plan((32, 32), 3, 2, "same") == ((32, 32), (2, 2), (18, 18), (16, 16))
    assert cg.phase_plan((8, 6), (3, 1), (2, 1), "valid") == ((4, 6), (0, 0), (4, 6), (2, 6))
    assert cg.phase_plan((7, 6), (3, 1), (2, 1), "valid") is None   # 2 phases of 3 rows: 4
    assert cg.phase_plan((5, 5), 3, 4, "same") is None      # 2x2 phases of 5x5: too much waste


# --------------------------------------------------------------------------- bad arguments
def test_bad_arguments():
    x = np.zeros((1, 8, 8, 6), np.float32)
    with pytest.raises(ValueError, match="groups=4 must divide the 6 input"):
        conv2d_general(x, np.zeros((3, 3, 1, 8), np.float32), groups=4)
    with pytest.raises(ValueError, match="output channels"):
        conv2d_general(x, np.zeros((3, 3, 3, 5), np.float32), groups=2)
    with pytest.raises(ValueError, match="input channels per group"):
        conv2d_general(x, np.zeros((3, 3, 6, 4), np.float32), groups=2)
    with pytest.raises(ValueError, match="kernel extent 9"):
        conv2d_general(x, np.zeros((3, 3, 6, 4), np.float32), dilation_rate=4)
    with pytest.raises(ValueError, match="dilation_rate"):
        conv2d_general(x, np.zeros((3, 3, 6, 4), np.float32), dilation_rate=0)
    with pytest.raises(ValueError, match="padding"):
        conv2d_general(x, np.zeros((3, 3, 6, 4), np.float32), dilation_rate=2, padding="full")
    with pytest.raises(ValueError, match="explicit padding"):
        conv2d_general(x, np.zeros((3, 3, 6, 4), np.float32), padding=((1, -1), (0, 0)))
    with pytest.raises(TypeError, match="dtype"):
        conv2d_general(x, np.zeros((3, 3, 6, 4)), dilation_rate=2)
    with pytest.raises(ValueError, match="channels"):
        depthwise_conv2d(x, np.zeros((3, 3, 5, 1), np.float32))
    with pytest.raises(ValueError, match="multiple"):
        depthwise_conv2d_backward_weight(x, np.zeros((1, 6, 6, 7), np.float32), 3)
    with pytest.raises(ValueError, match="dy must have shape"):
        depthwise_conv2d_backward_input(np.zeros((1, 5, 5, 6), np.float32),
                                        np.zeros((3, 3, 6, 1), np.float32), x.shape)
    with pytest.raises(ValueError, match="output_padding must be < strides"):
        conv2d_transpose(x, np.zeros((3, 3, 4, 6), np.float32), strides=2, output_padding=2)
    with pytest.raises(ValueError, match="channels"):
        conv2d_transpose(x, np.zeros((3, 3, 6, 4), np.float32))
    with pytest.raises(ValueError, match="interpolation"):
        upsampling2d(x, 2, "bicubic")
    with pytest.raises(ValueError, match="multiple of size"):
        upsampling2d_backward(np.zeros((1, 5, 4, 2), np.float32), 2)
    with pytest.raises(ValueError, match="overlap"):
        depthwise_conv2d(x, np.zeros((1, 1, 6, 1), np.float32), out=x)
    with pytest.raises(ValueError, match="C-contiguous"):
        upsampling2d(x[:, ::2], 2)


# ------------------------------------------------------------------- optional: PyTorch check
def test_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    x = _rand(rng, (2, 9, 10, 8))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    # dilated + grouped (same padding is symmetric here: k_eff - 1 = 4)
    k = _rand(rng, (3, 3, 4, 6))
    y = conv2d_general(x, k, padding="same", dilation_rate=2, groups=2)
    ty = F.conv2d(tx, torch.from_numpy(k.transpose(3, 2, 0, 1).copy()), padding=2, dilation=2,
                  groups=2)
    np.testing.assert_allclose(y, ty.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    # transposed: full canvas from torch (no padding), cropped as TensorFlow does
    kt = _rand(rng, (3, 3, 5, 8))
    y = conv2d_transpose(x, kt, strides=2, padding="same")
    ty = F.conv_transpose2d(tx, torch.from_numpy(kt.transpose(3, 2, 0, 1).copy()), stride=2)
    np.testing.assert_allclose(y, ty.numpy().transpose(0, 2, 3, 1)[:, 0:18, 0:20], rtol=1e-10,
                               atol=1e-10)
    # bilinear upsampling = interpolate(align_corners=False)
    y = upsampling2d(x, (2, 3), "bilinear")
    ty = F.interpolate(tx, scale_factor=(2, 3), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(y, ty.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    y = upsampling2d(x, (2, 3), "nearest")
    ty = F.interpolate(tx, scale_factor=(2, 3), mode="nearest")
    np.testing.assert_allclose(y, ty.numpy().transpose(0, 2, 3, 1), rtol=0, atol=0)
