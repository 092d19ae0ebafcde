"""Max and average pooling and their gradients against plain NumPy loop references."""
import numpy as np
import pytest

import fastnet
from fastnet.ops import pool as pool_ops
from fastnet.ops.pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward


# ----------------------------------------------------------------------------- references
def _out_and_pad(size, k, s, padding):
    if padding == "valid":
        return (size - k) // s + 1, 0
    out = -(-size // s)
    return out, max((out - 1) * s + k - size, 0) // 2


def _windows(shape, pool, strides, padding):
    """Yield (oh, ow, row slice, col slice) of every window, clipped to the input."""
    _, h, w, _ = shape
    oh, pt = _out_and_pad(h, pool[0], strides[0], padding)
    ow, pl = _out_and_pad(w, pool[1], strides[1], padding)
    for i in range(oh):
        r0 = i * strides[0] - pt
        for j in range(ow):
            c0 = j * strides[1] - pl
            yield i, j, slice(max(r0, 0), min(r0 + pool[0], h)), \
                slice(max(c0, 0), min(c0 + pool[1], w))


def _out_shape(shape, pool, strides, padding):
    n, h, w, c = shape
    return (n, _out_and_pad(h, pool[0], strides[0], padding)[0],
            _out_and_pad(w, pool[1], strides[1], padding)[0], c)


def ref_pool(x, pool, strides, padding, average):
    y = np.zeros(_out_shape(x.shape, pool, strides, padding))
    for i, j, rs, cs in _windows(x.shape, pool, strides, padding):
        win = x[:, rs, cs, :].astype(np.float64)
        y[:, i, j, :] = win.mean(axis=(1, 2)) if average else win.max(axis=(1, 2))
    return y


def ref_max_pool_backward(x, dy, pool, strides, padding):
    dx = np.zeros(x.shape)
    for i, j, rs, cs in _windows(x.shape, pool, strides, padding):
        win = x[:, rs, cs, :]
        wh, ww = win.shape[1:3]
        first = win.reshape(x.shape[0], wh * ww, x.shape[3]).argmax(axis=1)  # first maximum
        for n in range(x.shape[0]):
            for c in range(x.shape[3]):
                a, b = divmod(first[n, c], ww)
                dx[n, rs.start + a, cs.start + b, c] += dy[n, i, j, c]
    return dx


def ref_argmax(x, pool, strides, padding):
    """Each window's first maximum as i * pool_w + j, (i, j) from the unclipped window's corner."""
    am = np.zeros(_out_shape(x.shape, pool, strides, padding), np.uint8)
    _, h, w, _ = x.shape
    pt = _out_and_pad(h, pool[0], strides[0], padding)[1]
    pl = _out_and_pad(w, pool[1], strides[1], padding)[1]
    for i, j, rs, cs in _windows(x.shape, pool, strides, padding):
        win = x[:, rs, cs, :]
        wh, ww = win.shape[1:3]
        a, b = np.divmod(win.reshape(x.shape[0], wh * ww, x.shape[3]).argmax(axis=1), ww)
        am[:, i, j, :] = (rs.start + a - (i * strides[0] - pt)) * pool[1] + \
            (cs.start + b - (j * strides[1] - pl))
    return am


def ref_avg_pool_backward(dy, input_shape, pool, strides, padding):
    dx = np.zeros(input_shape)
    for i, j, rs, cs in _windows(input_shape, pool, strides, padding):
        count = (rs.stop - rs.start) * (cs.stop - cs.start)
        dx[:, rs, cs, :] += dy[:, i, j, None, None, :] / count
    return dx


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"t{t}")
def threads(request, monkeypatch):
    monkeypatch.setattr(pool_ops, "_PARALLEL_MIN_WORK", 0)
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    yield request.param
    fastnet.set_num_threads(old)


# (N, H, W, C, pool, strides, padding)
CASES = [
    (2, 6, 6, 3, (2, 2), None, "valid"),
    (1, 7, 7, 1, (2, 2), None, "valid"),        # odd size: last row/col dropped
    (3, 7, 5, 4, (2, 2), None, "same"),         # odd size: partial windows at bottom/right
    (2, 8, 9, 5, (3, 3), (2, 2), "valid"),      # overlapping windows
    (2, 9, 8, 3, (3, 2), (1, 2), "same"),       # overlap in H only, non-square
    (1, 10, 11, 2, (2, 3), (3, 1), "same"),     # overlap in W only, gaps in H
    (3, 5, 5, 7, (5, 5), (1, 1), "same"),       # big window, stride 1
    (2, 6, 7, 2, (1, 1), (2, 3), "valid"),      # 1x1 window with strides (subsampling)
    (4, 9, 9, 17, (3, 3), (3, 3), "valid"),     # C not a multiple of the vector width
    (1, 4, 4, 3, (4, 4), None, "valid"),        # one window covers the whole image
    (2, 7, 6, 40, (2, 2), None, "same"),        # whole vectors of channels and a tail
    (1, 9, 8, 33, (3, 3), (2, 1), "same"),      # overlapping, vectors and a tail
    (1, 12, 7, 5, (3, 2), (1, 1), "valid"),     # overlapping rows, one image: row blocks
]
IDS = ["n{}_{}x{}x{}_p{}{}_s{}_{}".format(c[0], c[1], c[2], c[3], *c[4], c[5], c[6])
       for c in CASES]


def _untied(shape, rng, dtype=np.float64):
    """Distinct values (no ties in any window), in random order."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 3).astype(dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool(case, threads):
    n, h, w, c, pool, strides, padding = case
    rng = np.random.default_rng(0)
    x = _untied((n, h, w, c), rng)
    s = pool if strides is None else strides
    y = max_pool2d(x, pool, strides, padding)
    np.testing.assert_array_equal(y, ref_pool(x, pool, s, padding, False))
    dy = rng.standard_normal(y.shape)
    dx = max_pool2d_backward(x, y, dy, pool, strides, padding)
    ref_dx = ref_max_pool_backward(x, dy, pool, s, padding)
    np.testing.assert_allclose(dx, ref_dx, atol=1e-14)
    # the uint8 argmax: filled by the forward, read by the backward instead of x and y
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        argmax = np.full(y.shape, 255, np.uint8)
        y2 = max_pool2d(xd, pool, strides, padding, argmax=argmax)
        np.testing.assert_array_equal(y2, y.astype(dtype))
        np.testing.assert_array_equal(argmax, ref_argmax(x, pool, s, padding))
        dx2 = max_pool2d_backward(xd, None, dy.astype(dtype), pool, strides, padding,
                                  argmax=argmax)
        np.testing.assert_allclose(dx2, ref_dx, rtol=1e-6, atol=1e-6)
    dx3 = max_pool2d_backward(x, y, dy, pool, strides, padding, argmax=argmax)
    np.testing.assert_array_equal(dx3, dx)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool_relu_input(case, threads):
    """relu_input: the ReLU's backward fused into the pool's (windows with no positive value
    pass no gradient), so dx is the gradient of the ReLU's input."""
    n, h, w, c, pool, strides, padding = case
    rng = np.random.default_rng(6)
    z = _untied((n, h, w, c), rng) + 2.5          # values around 0: some windows all <= 0
    z[:, ::3] = -1.0                               # and whole rows of exact ties at 0
    x = np.maximum(z, 0)
    s = pool if strides is None else strides
    argmax = np.empty(_out_shape(x.shape, pool, s, padding), np.uint8)
    y = max_pool2d(x, pool, strides, padding, argmax=argmax, relu_input=True)
    np.testing.assert_array_equal(y, ref_pool(x, pool, s, padding, False))
    dy = rng.standard_normal(y.shape)
    dx = max_pool2d_backward(x, None, dy, pool, strides, padding, argmax=argmax)
    np.testing.assert_allclose(dx, ref_max_pool_backward(x, dy, pool, s, padding) * (z > 0),
                               atol=1e-14)
    assert (argmax == 255).any() or (y > 0).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_avg_pool(case, threads):
    n, h, w, c, pool, strides, padding = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c))
    s = pool if strides is None else strides
    y = avg_pool2d(x, pool, strides, padding)
    np.testing.assert_allclose(y, ref_pool(x, pool, s, padding, True), rtol=1e-13, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    dx = avg_pool2d_backward(dy, x.shape, pool, strides, padding)
    np.testing.assert_allclose(dx, ref_avg_pool_backward(dy, x.shape, pool, s, padding),
                               rtol=1e-13, atol=1e-14)


def _random_cases(count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        pool = tuple(int(v) for v in rng.integers(1, 5, size=2))
        h, w = (int(v) for v in rng.integers(1, 12, size=2))
        padding = ["valid", "same"][rng.integers(2)]
        if padding == "valid" and (pool[0] > h or pool[1] > w):
            continue
        strides = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 4, 2))
        cases.append((int(rng.integers(1, 4)), h, w, int(rng.integers(1, 20)), pool, strides,
                      padding))
    return cases


@pytest.mark.parametrize("case", _random_cases(30, seed=77), ids=lambda c: str(c))
def test_random_shapes(case, monkeypatch):
    monkeypatch.setattr(pool_ops, "_PARALLEL_MIN_WORK", 0)
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(2)
    try:
        n, h, w, c, pool, strides, padding = case
        s = pool if strides is None else strides
        rng = np.random.default_rng(5)
        x = _untied((n, h, w, c), rng)
        y = max_pool2d(x, pool, strides, padding)
        np.testing.assert_array_equal(y, ref_pool(x, pool, s, padding, False))
        dy = rng.standard_normal(y.shape)
        ref_dx = ref_max_pool_backward(x, dy, pool, s, padding)
        np.testing.assert_allclose(max_pool2d_backward(x, y, dy, pool, strides, padding),
                                   ref_dx, atol=1e-14)
        argmax = np.empty(y.shape, np.uint8)
        max_pool2d(x, pool, strides, padding, argmax=argmax)
        np.testing.assert_array_equal(argmax, ref_argmax(x, pool, s, padding))
        np.testing.assert_allclose(max_pool2d_backward(x, None, dy, pool, strides, padding,
                                                       argmax=argmax), ref_dx, atol=1e-14)
        np.testing.assert_allclose(avg_pool2d(x, pool, strides, padding),
                                   ref_pool(x, pool, s, padding, True), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(avg_pool2d_backward(dy, x.shape, pool, strides, padding),
                                   ref_avg_pool_backward(dy, x.shape, pool, s, padding),
                                   rtol=1e-13, atol=1e-14)
    finally:
        fastnet.set_num_threads(old)


def test_max_pool_ties_go_to_first_maximum(threads):
    x = np.zeros((1, 4, 4, 2))
    x[0, 1, 1, 0] = x[0, 1, 0, 0] = 5.0       # channel 0: a tie in the first window
    y = max_pool2d(x, 2)
    dx = max_pool2d_backward(x, y, np.ones_like(y), 2)
    expected = np.zeros_like(x)
    expected[0, 1, 0, 0] = 1                   # (1, 0) comes before (1, 1) in row-major order
    expected[0, 0, 0, 1] = expected[0, 0, 2, 1] = expected[0, 2, 0, 1] = expected[0, 2, 2, 1] = 1
    expected[0, 0, 2, 0] = expected[0, 2, 0, 0] = expected[0, 2, 2, 0] = 1
    np.testing.assert_array_equal(dx, expected)
    # Overlapping 3x3 windows at (0,0) (0,1) (1,0) (1,1): those holding (1, 0) send it their
    # whole gradient, the other two send theirs to (1, 1); the sums accumulate.
    dx = max_pool2d_backward(x, max_pool2d(x, 3, 1), np.ones((1, 2, 2, 2)), 3, 1)
    assert dx[0, 1, 0, 0] == 2 and dx[0, 1, 1, 0] == 2 and dx[..., 0].sum() == 4
    argmax = np.empty((1, 2, 2, 2), np.uint8)
    max_pool2d(x, 2, argmax=argmax)
    np.testing.assert_array_equal(argmax[0, 0, 0], [2, 0])   # (1, 0) first; all-zero: (0, 0)
    np.testing.assert_array_equal(
        max_pool2d_backward(x, None, np.ones((1, 2, 2, 2)), 2, argmax=argmax), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_default_paths(dtype):
    """Batch-sized shapes with the default thresholds (the MNIST CNN's pool, smaller)."""
    rng = np.random.default_rng(2)
    x = _untied((8, 26, 26, 32), rng, dtype)
    y = max_pool2d(x)
    assert y.dtype == dtype and y.shape == (8, 13, 13, 32)
    np.testing.assert_array_equal(y, ref_pool(x, (2, 2), (2, 2), "valid", False))
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(max_pool2d_backward(x, y, dy),
                               ref_max_pool_backward(x, dy, (2, 2), (2, 2), "valid"))
    argmax = np.empty(y.shape, np.uint8)
    np.testing.assert_array_equal(max_pool2d(x, argmax=argmax), y)
    np.testing.assert_array_equal(max_pool2d_backward(x, y, dy, argmax=argmax),
                                  max_pool2d_backward(x, y, dy))
    np.testing.assert_allclose(avg_pool2d(x, 3, 2, "same"),
                               ref_pool(x, (3, 3), (2, 2), "same", True), rtol=1e-5)
    dy = rng.standard_normal((8, 13, 13, 32)).astype(dtype)
    np.testing.assert_allclose(avg_pool2d_backward(dy, x.shape, 3, 2, "same"),
                               ref_avg_pool_backward(dy, x.shape, (3, 3), (2, 2), "same"),
                               rtol=1e-5, atol=1e-6)


def _finite_difference(f, a, idx, eps=1e-6):
    old = a[idx]
    a[idx] = old + eps
    fp = f()
    a[idx] = old - eps
    fm = f()
    a[idx] = old
    return (fp - fm) / (2 * eps)


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[4], CASES[6]],
                         ids=[IDS[2], IDS[3], IDS[4], IDS[6]])
@pytest.mark.parametrize("average", [False, True], ids=["max", "avg"])
def test_gradients_finite_difference(case, average):
    n, h, w, c, pool, strides, padding = case
    rng = np.random.default_rng(3)
    x = _untied((n, h, w, c), rng)   # values 0.01 apart: eps never changes a window's argmax
    forward = avg_pool2d if average else max_pool2d
    y = forward(x, pool, strides, padding)
    g = rng.standard_normal(y.shape)
    if average:
        dx = avg_pool2d_backward(g, x.shape, pool, strides, padding)
    else:
        dx = max_pool2d_backward(x, y, g, pool, strides, padding)

    def loss():
        return np.sum(forward(x, pool, strides, padding) * g)

    for flat in rng.choice(x.size, size=min(x.size, 25), replace=False):
        idx = np.unravel_index(flat, x.shape)
        assert _finite_difference(loss, x, idx) == pytest.approx(dx[idx], rel=1e-6, abs=1e-8)


def test_out_buffers_and_defaults():
    x = _untied((2, 4, 6, 3), np.random.default_rng(4))
    y = np.empty((2, 2, 3, 3))
    assert max_pool2d(x, out=y) is y
    dx = np.empty_like(x)
    assert max_pool2d_backward(x, y, np.ones_like(y), out=dx) is dx
    assert avg_pool2d(x, out=y) is y
    assert avg_pool2d_backward(np.ones_like(y), x.shape, out=dx) is dx
    np.testing.assert_allclose(dx, 0.25)


def _bad_cases():
    x = np.zeros((2, 6, 6, 3))
    y = np.zeros((2, 3, 3, 3))
    return [
        (lambda: max_pool2d(x.tolist()), TypeError, "x must be a numpy.ndarray"),
        (lambda: max_pool2d(x.astype(np.int64)), TypeError, "x must have dtype"),
        (lambda: max_pool2d(x[0]), ValueError, "x must have 4 dimensions"),
        (lambda: max_pool2d(x[:, ::2]), ValueError, "x must be C-contiguous"),
        (lambda: max_pool2d(np.zeros((2, 6, 6, 0))), ValueError, "zero-sized"),
        (lambda: max_pool2d(x, 0), ValueError, "pool_size must be >= 1"),
        (lambda: max_pool2d(x, (2, 2, 2)), ValueError, "pool_size must be an integer"),
        (lambda: max_pool2d(x, 2, 0), ValueError, "strides must be >= 1"),
        (lambda: max_pool2d(x, 2, padding="causal"), ValueError, "padding must be"),
        (lambda: max_pool2d(x, 7), ValueError, "larger than the input"),
        (lambda: avg_pool2d(x, (2, 7)), ValueError, "larger than the input"),
        (lambda: max_pool2d(x, out=np.zeros((2, 3, 3, 2))), ValueError, "out must be"),
        (lambda: max_pool2d(x, out=x), ValueError, "out must be"),
        (lambda: max_pool2d_backward(x, y.astype(np.float32), y), TypeError,
         "y must have dtype float64"),
        (lambda: max_pool2d_backward(x, y[:, :2].copy(), y), ValueError, "y must have shape"),
        (lambda: max_pool2d_backward(x, y, y[:, :2].copy()), ValueError, "dy must have shape"),
        (lambda: max_pool2d_backward(x, y, y, out=y), ValueError, "out must be"),
        (lambda: avg_pool2d_backward(y, (2, 6, 6)), ValueError, "input_shape must be"),
        (lambda: avg_pool2d_backward(y, (2, 6, 6, 0)), ValueError, "input_shape must be"),
        (lambda: avg_pool2d_backward(y, (2, 6, 6, 3), 3), ValueError, "dy must have shape"),
        (lambda: avg_pool2d_backward(y.tolist(), (2, 6, 6, 3)), TypeError, "dy must be"),
        (lambda: max_pool2d(x, argmax=np.zeros((2, 3, 3, 3), np.int8)), ValueError,
         "argmax must be a writeable C-contiguous uint8"),
        (lambda: max_pool2d(x, argmax=np.zeros((2, 3, 3, 2), np.uint8)), ValueError,
         "argmax must be"),
        (lambda: max_pool2d(x, argmax=[0]), TypeError, "argmax must be a numpy.ndarray"),
        (lambda: max_pool2d(np.zeros((1, 17, 17, 1)), 17,
                            argmax=np.zeros((1, 1, 1, 1), np.uint8)), ValueError, "at most 256"),
        (lambda: max_pool2d_backward(x, None, y), TypeError, "y must be a numpy.ndarray"),
        (lambda: max_pool2d(x, relu_input=True), ValueError, "relu_input=True needs an argmax"),
        (lambda: max_pool2d(np.zeros((1, 16, 16, 1)), 16, relu_input=True,
                            argmax=np.zeros((1, 1, 1, 1), np.uint8)), ValueError,
         "at most 255 elements with relu_input"),
        (lambda: max_pool2d_backward(x, y, y, argmax=np.zeros((2, 3, 3, 3), np.float64)),
         ValueError, "argmax must be a C-contiguous uint8"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_arguments(i):
    call, exc, match = _bad_cases()[i]
    with pytest.raises(exc, match=match):
        call()


def test_out_must_not_alias_input():
    x = np.zeros((1, 4, 4, 2))
    big = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="out must not overlap"):
        max_pool2d(x, 1, out=x)
    with pytest.raises(ValueError, match="out must not overlap"):
        avg_pool2d_backward(big, big.shape, 1, out=big)
