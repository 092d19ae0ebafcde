"""The int8 kernels (fastnet._kernels.int8 through fastnet.ops.int8) on every ISA path.

Each path this build and CPU can run is forced with ``set_isa``.  The int32 products must equal
NumPy's int64 ones exactly (random shapes, odd sizes, K not a multiple of 4, the full uint8 x
int8 range, so any int16 saturation would show); the float32 and uint8 epilogues must equal
the documented float32 formula bit for bit; so every path gives the same bits.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet._kernels import int8 as K
from fastnet.ops import int8 as Q
from fastnet.ops._checks import conv_output_size

# Child interpreters run from the folder holding the fastnet this test imported (the
# installed one in CI): started from a source checkout they would import its unbuilt copy.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))

ISAS = K.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    old = K.isa()
    K.set_isa(request.param)
    yield request.param
    K.set_isa(old)


@pytest.fixture(params=[1, 2])
def threads(request):
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    yield request.param
    fastnet.set_num_threads(old)


def _operands(rng, m, n, k):
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    return a, w


def _ref(a, w):
    return a.astype(np.int64) @ w.astype(np.int64)


def _epilogue_ref(acc, corr, scale, offset, lo, hi, output):
    f = (acc + corr).astype(np.int32).astype(np.float32) * scale + offset
    f = np.minimum(np.maximum(f, np.float32(lo)), np.float32(hi))
    return np.rint(f).astype(np.uint8) if output == "uint8" else f


SHAPES = [(1, 1, 1), (1, 1, 3), (2, 3, 5), (7, 9, 4), (9, 31, 9), (8, 32, 16), (13, 33, 13),
          (17, 16, 1), (33, 65, 67), (64, 10, 64), (64, 64, 576), (100, 47, 287), (5, 100, 3),
          (300, 40, 30), (1, 200, 1001)]


def test_int32_products_exact(isa, threads):
    rng = np.random.default_rng(0)
    for m, n, k in SHAPES:
        a, w = _operands(rng, m, n, k)
        got = Q.qgemm(a, Q.pack_weights(w))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, _ref(a, w), err_msg=f"{isa} {m}x{n}x{k}")


def test_extreme_values_no_saturation(isa):
    # 255 * -128 summed over the largest K: vpmaddubsw would saturate, int16 sums would wrap
    for k in (4, 5, 1023, 4099):
        a = np.full((9, k), 255, np.uint8)
        for v in (-128, 127):
            w = np.full((k, 17), v, np.int8)
            got = Q.qgemm(a, Q.pack_weights(w))
            assert (got == 255 * v * k).all()


def test_max_depth_fits_int32(isa):
    k = K.MAX_K
    a = np.full((1, k), 255, np.uint8)
    w = np.full((k, 1), -128, np.int8)
    assert Q.qgemm(a, Q.pack_weights(w))[0, 0] == -255 * 128 * k


def test_strided_rows(isa):
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (40, 70), dtype=np.uint8)
    a = big[3:37:2, 5:38]             # rows strided, bytes contiguous
    w = rng.integers(-128, 128, (33, 21), dtype=np.int8)
    np.testing.assert_array_equal(Q.qgemm(a, Q.pack_weights(w)), _ref(a, w))
    np.testing.assert_array_equal(Q.qgemm(big[:, ::2][:, :33], Q.pack_weights(w)),
                                  _ref(big[:, ::2][:, :33], w))   # copied, still right


@pytest.mark.parametrize("output", ["float32", "uint8"])
def test_epilogue_bitwise(isa, threads, output):
    rng = np.random.default_rng(2)
    for m, n, k in SHAPES:
        a, w = _operands(rng, m, n, k)
        corr = rng.integers(-50000, 50000, n).astype(np.int32)
        scale = (rng.random(n) * 0.02).astype(np.float32)
        offset = (rng.standard_normal(n) * 50 + (128 if output == "uint8" else 0)).astype(
            np.float32)
        lo, hi = (7.0, 250.0) if output == "uint8" else (-3.5, 1e3)
        got = Q.qgemm(a, Q.pack_weights(w), output=output, corr=corr, scale=scale,
                      offset=offset, lo=lo, hi=hi)
        ref = _epilogue_ref(_ref(a, w), corr, scale, offset, lo, hi, output)
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref, err_msg=f"{isa} {output} {m}x{n}x{k}")


def test_epilogue_defaults_and_rounding(isa):
    a = np.arange(8, dtype=np.uint8).reshape(8, 1)
    w = np.ones((1, 3), np.int8)
    half = np.full(3, 0.5, np.float32)
    u8 = Q.qgemm(a, Q.pack_weights(w), output="uint8", scale=half)   # 0, .5, 1, 1.5, ...
    np.testing.assert_array_equal(u8[:, 0], np.rint(np.arange(8) * 0.5))   # half to even
    f = Q.qgemm(a, Q.pack_weights(w), output="float32", scale=np.full(3, -1.0, np.float32))
    np.testing.assert_array_equal(f[:, 1], -np.arange(8, dtype=np.float32))  # no clamp


def test_outputs_identical_across_paths():
    rng = np.random.default_rng(3)
    a, w = _operands(rng, 37, 45, 51)
    packed = Q.pack_weights(w)
    kw = dict(output="uint8", corr=rng.integers(-9999, 9999, 45).astype(np.int32),
              scale=(rng.random(45) * 0.01).astype(np.float32),
              offset=np.full(45, 100, np.float32))
    old = K.isa()
    try:
        results = []
        for name in ISAS:
            K.set_isa(name)
            results.append(Q.qgemm(a, packed, **kw))
    finally:
        K.set_isa(old)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# ---- convolution ----------------------------------------------------------------------------
def _conv_ref(x, w, strides, padding, zp):
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    sh, sw = strides
    oh, pt, pb = conv_output_size(h, kh, sh, padding)
    ow, pl, pr = conv_output_size(wd, kw, sw, padding)
    xp = np.full((n, h + pt + pb, wd + pl + pr, c), zp, np.int64)
    xp[:, pt:pt + h, pl:pl + wd] = x
    out = np.zeros((n, oh, ow, f), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            out += patch @ w[i, j].astype(np.int64)
    return out


def test_conv_exact_random_geometries(isa, threads):
    rng = np.random.default_rng(4)
    for _ in range(25):
        n, h, wd = rng.integers(1, 4), rng.integers(1, 13), rng.integers(1, 13)
        c, f = rng.integers(1, 20), rng.integers(1, 40)
        kh, kw = rng.integers(1, 5), rng.integers(1, 5)
        strides = tuple(int(s) for s in rng.integers(1, 3, 2))
        padding = "same" if h < kh or wd < kw or rng.random() < 0.5 else "valid"
        zp = int(rng.integers(0, 256))
        x = rng.integers(0, 256, (n, h, wd, c), dtype=np.uint8)
        w = rng.integers(-128, 128, (kh, kw, c, f), dtype=np.int8)
        got = Q.qconv2d(x, Q.pack_weights(w.reshape(-1, f)), (kh, kw), strides=strides,
                        padding=padding, zero_point=zp)
        np.testing.assert_array_equal(got, _conv_ref(x, w, strides, padding, zp),
                                      err_msg=f"{x.shape} {w.shape} {strides} {padding}")


@pytest.mark.parametrize("shape,kernel", [((64, 28, 28, 1), (3, 3, 1, 32)),
                                          ((3, 13, 13, 32), (3, 3, 32, 64)),
                                          ((2, 7, 5, 24), (1, 1, 24, 9))])
def test_conv_cnn_shapes_and_1x1(isa, shape, kernel):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    w = rng.integers(-128, 128, kernel, dtype=np.int8)
    got = Q.qconv2d(x, Q.pack_weights(w.reshape(-1, kernel[-1])), kernel[:2], zero_point=3)
    np.testing.assert_array_equal(got, _conv_ref(x, w, (1, 1), "valid", 3))


def test_conv_uint8_epilogue(isa):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (2, 9, 8, 5), dtype=np.uint8)
    w = rng.integers(-128, 128, (3, 3, 5, 19), dtype=np.int8)
    scale = (rng.random(19) * 1e-3).astype(np.float32)
    offset = np.full(19, 40, np.float32)
    got = Q.qconv2d(x, Q.pack_weights(w.reshape(-1, 19)), 3, padding="same", zero_point=17,
                    output="uint8", scale=scale, offset=offset, lo=40)
    acc = _conv_ref(x, w, (1, 1), "same", 17)
    np.testing.assert_array_equal(got, _epilogue_ref(acc, 0, scale, offset, 40, 255, "uint8"))


def test_conv_with_fused_max_pool(isa, threads):
    rng = np.random.default_rng(11)
    for shape, kernel, strides, padding, pool in [
            ((64, 28, 28, 1), (3, 3, 1, 32), 1, "valid", (2, 2)),
            ((3, 13, 13, 32), (3, 3, 32, 64), 1, "valid", (2, 2)),     # 11x11: last row unused
            ((2, 9, 10, 5), (2, 3, 5, 19), 1, "same", (3, 2)),
            ((1, 7, 7, 3), (1, 1, 3, 40), 1, "valid", (7, 7)),
            ((2, 12, 11, 4), (3, 3, 4, 8), 2, "same", (1, 1))]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        w = rng.integers(-128, 128, kernel, dtype=np.int8)
        p = Q.pack_weights(w.reshape(-1, kernel[-1]))
        kw = dict(strides=strides, padding=padding, zero_point=9, output="uint8",
                  scale=(rng.random(kernel[-1]) * 2e-3).astype(np.float32),
                  offset=np.full(kernel[-1], 60, np.float32), lo=60)
        full = Q.qconv2d(x, p, kernel[:2], **kw)
        fused = Q.qconv2d(x, p, kernel[:2], pool_size=pool, **kw)
        np.testing.assert_array_equal(fused, Q.qpool2d(full, pool, pool, "valid"),
                                      err_msg=f"{isa} {shape} {kernel} {pool}")


# ---- pooling and (de)quantization -----------------------------------------------------------
def _pool_ref(x, pool, strides, padding, mode):
    n, h, w, c = x.shape
    oh, pt, _ = conv_output_size(h, pool[0], strides[0], padding)
    ow, pl, _ = conv_output_size(w, pool[1], strides[1], padding)
    out = np.empty((n, oh, ow, c), np.uint8)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * strides[0] - pt, j * strides[1] - pl
            win = x[:, max(r0, 0):r0 + pool[0], max(c0, 0):c0 + pool[1]].astype(np.int64)
            if mode == "max":
                out[:, i, j] = win.max(axis=(1, 2))
            else:
                cnt = win.shape[1] * win.shape[2]
                out[:, i, j] = (win.sum(axis=(1, 2)) + cnt // 2) // cnt
    return out


@pytest.mark.parametrize("mode", ["max", "average"])
def test_pool(mode, threads):
    rng = np.random.default_rng(7)
    for shape, pool, strides, padding in [((3, 26, 26, 32), (2, 2), (2, 2), "valid"),
                                          ((2, 7, 9, 5), (3, 3), (2, 1), "same"),
                                          ((1, 5, 5, 3), (5, 5), (1, 1), "valid"),
                                          ((64, 11, 11, 64), (2, 2), (2, 2), "valid")]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        got = Q.qpool2d(x, pool, strides, padding, mode=mode)
        np.testing.assert_array_equal(got, _pool_ref(x, pool, strides, padding, mode))


def test_max_pool_commutes_with_quantization():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    from fastnet.ops.pool import max_pool2d
    q_then_pool = Q.qpool2d(Q.quantize(x, 0.02, 120), mode="max")
    pool_then_q = Q.quantize(max_pool2d(x, (2, 2)), 0.02, 120)
    np.testing.assert_array_equal(q_then_pool, pool_then_q)


def test_quantize_dequantize(threads):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((5, 40000)) * 3).astype(np.float32)
    x[0, :4] = [np.float32(0.5) * 0.04, 1e9, -1e9, 0.0]
    q = Q.quantize(x, 0.04, 128)
    inv = np.float32(1 / 0.04)
    ref = np.rint(np.clip(x * inv + np.float32(128), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(q, ref)
    d = Q.dequantize(q, 0.04, 128)
    np.testing.assert_array_equal(d, (q.astype(np.int32) - 128).astype(np.float32)
                                  * np.float32(0.04))
    assert np.abs(d - x)[np.abs(x) < 5].max() <= 0.02 + 1e-6


# ---- validation -----------------------------------------------------------------------------
def test_bad_arguments():
    a = np.zeros((4, 6), np.uint8)
    w = np.zeros((6, 3), np.int8)
    p = Q.pack_weights(w)
    with pytest.raises(TypeError, match="int8"):
        Q.pack_weights(w.astype(np.int16))
    with pytest.raises(ValueError, match="K <= 65536"):
        Q.pack_weights(np.zeros((K.MAX_K + 1, 1), np.int8))
    with pytest.raises(ValueError, match="2-D"):
        Q.pack_weights(np.zeros(5, np.int8))
    with pytest.raises(TypeError, match="uint8"):
        Q.qgemm(a.astype(np.int8), p)
    with pytest.raises(ValueError, match="K = 6"):
        Q.qgemm(np.zeros((4, 7), np.uint8), p)
    with pytest.raises(ValueError, match="output must be one of"):
        Q.qgemm(a, p, output="int8")
    with pytest.raises(ValueError, match="needs scale"):
        Q.qgemm(a, p, output="uint8")
    with pytest.raises(ValueError, match="scale must be"):
        Q.qgemm(a, p, output="float32", scale=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 255"):
        Q.qgemm(a, p, output="uint8", scale=np.ones(3, np.float32), lo=-1)
    with pytest.raises(ValueError, match="takes no"):
        Q.qgemm(a, p, scale=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        Q.qgemm(a, p, output="float32", scale=np.full(3, np.nan, np.float32))
    with pytest.raises(ValueError, match="out must be"):
        Q.qgemm(a, p, out=np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="pack_weights"):
        Q.qgemm(a, w)
    x = np.zeros((1, 5, 5, 2), np.uint8)
    with pytest.raises(ValueError, match="K = 6"):
        Q.qconv2d(x, p, (3, 3))
    with pytest.raises(ValueError, match="zero_point"):
        Q.qconv2d(x, Q.pack_weights(np.zeros((18, 3), np.int8)), 3, zero_point=256)
    with pytest.raises(ValueError, match="larger than the input"):
        Q.qconv2d(x, Q.pack_weights(np.zeros((72, 3), np.int8)), 6)
    p18 = Q.pack_weights(np.zeros((18, 3), np.int8))
    with pytest.raises(ValueError, match="needs output='uint8'"):
        Q.qconv2d(x, p18, 3, pool_size=2)
    with pytest.raises(ValueError, match="larger than the convolution's output"):
        Q.qconv2d(x, p18, 3, pool_size=4, output="uint8", scale=np.ones(3, np.float32))
    buf = np.zeros(64, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        Q.qpool2d(buf.reshape(1, 4, 4, 4), out=buf[:16].reshape(1, 2, 2, 4))
    with pytest.raises(ValueError, match="mode"):
        Q.qpool2d(x, mode="min")
    with pytest.raises(ValueError, match="scale"):
        Q.quantize(np.zeros(3, np.float32), 0.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        Q.dequantize(np.zeros(3, np.uint8), 1.0, -1)
    with pytest.raises(TypeError, match="float32"):
        Q.quantize(np.zeros(3, np.float64), 1.0, 0)


def test_empty_batch():
    p = Q.pack_weights(np.ones((4, 2), np.int8))
    assert Q.qgemm(np.zeros((0, 4), np.uint8), p).shape == (0, 2)
    assert Q.qconv2d(np.zeros((0, 3, 3, 1), np.uint8),
                     Q.pack_weights(np.ones((4, 2), np.int8)), 2).shape == (0, 2, 2, 2)


def test_isa_selection():
    assert ISAS[-1] == "generic"
    assert K.isa() in ISAS
    old = K.isa()
    try:
        for name in ISAS:
            K.set_isa(name)
            assert K.isa() == name
        with pytest.raises(ValueError, match="isa must be one of"):
            K.set_isa("sse9")
    finally:
        K.set_isa(old)


@pytest.mark.parametrize("env,expected", [({"FASTNET_INT8_ISA": "generic"}, "generic"),
                                          ({"FASTNET_ISA": "generic"}, "generic"),
                                          ({"FASTNET_ISA": "avx2"}, "avx2")])
def test_isa_from_environment(env, expected):
    if expected not in ISAS:
        pytest.skip(f"{expected} is not usable here")
    code = "from fastnet._kernels import int8; print(int8.isa())"
    full = {k: v for k, v in os.environ.items() if k not in ("FASTNET_ISA", "FASTNET_INT8_ISA")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=full, cwd=_PKG_PARENT,
                         capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == expected
