"""fastnet.ops.activations against NumPy references, finite differences and bad inputs."""
import math

import numpy as np
import pytest

import fastnet
from fastnet.ops import activations as act_ops
from fastnet.ops.activations import activation_backward, activation_forward

NAMES = ["relu", "sigmoid", "tanh", "softmax", "linear"]
DTYPES = [np.float32, np.float64]
SHAPES = [(1,), (1, 1), (1, 9), (9, 1), (3, 5), (17, 33), (2, 3, 4), (1001,)]
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


def ref_forward(name, x):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))),
                            np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))
    if name == "tanh":
        return np.tanh(x)
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return x.copy()


def ref_backward(name, dy, y):
    if name == "relu":
        return dy * (y > 0)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "softmax":
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
    return dy.copy()


@pytest.fixture
def two_threads(monkeypatch):
    """Force the parallel path at any size, on 2 threads."""
    monkeypatch.setattr(act_ops, "PARALLEL_MIN_CHEAP", 1)
    monkeypatch.setattr(act_ops, "PARALLEL_MIN_TRANSCENDENTAL",
                        dict.fromkeys(act_ops.PARALLEL_MIN_TRANSCENDENTAL, 1))
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(2)
    yield
    fastnet.set_num_threads(old)


def backward_error_bound(name, dy, y, ref, dtype):
    """Rounding-error bound of dx computed in ``dtype`` from the same dy and y.

    (1 - y**2) and softmax's (dy - sum(dy * y)) cancel, so the bound scales with the terms
    that cancel rather than with the result.
    """
    unit = 1e-6 if dtype == np.float32 else 1e-14
    dy, y = np.abs(dy.astype(np.float64)), np.abs(y.astype(np.float64))
    if name == "softmax":
        terms = (dy * y).sum(axis=-1, keepdims=True)
        scale = y * (dy + np.sqrt(y.shape[-1]) * terms)
    else:
        scale = dy
    return unit * (np.abs(ref) + scale) + np.finfo(dtype).tiny  # subnormal results: absolute


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_forward_backward_match_numpy(name, dtype, scale):
    rng = np.random.default_rng([NAMES.index(name), int(scale * 1000), np.dtype(dtype).itemsize])
    for shape in SHAPES:
        x = (rng.standard_normal(shape) * scale).astype(dtype)
        y = activation_forward(name, x)
        assert y.dtype == dtype and y.shape == shape
        np.testing.assert_allclose(y, ref_forward(name, x), **TOL[dtype])
        dy = rng.standard_normal(shape).astype(dtype)
        dx = activation_backward(name, dy, y)
        assert dx.dtype == dtype and dx.shape == shape
        ref = ref_backward(name, dy.astype(np.float64), y.astype(np.float64))
        assert np.all(np.abs(dx - ref) <= backward_error_bound(name, dy, y, ref, dtype)), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_are_stable(dtype):
    x = np.array([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]], dtype=dtype)
    with np.errstate(all="raise"):
        s = activation_forward("sigmoid", x)
        t = activation_forward("tanh", x)
        sm = activation_forward("softmax", x)
    assert np.all(np.isfinite(s)) and s[0, 0] == 0 and s[0, -1] == 1 and s[0, 3] == 0.5
    np.testing.assert_array_equal(t[0, [0, -1]], [-1, 1])
    np.testing.assert_allclose(sm.sum(), 1, rtol=1e-6)
    assert sm[0, -1] == 1 and sm[0, 0] == 0
    big = np.full((2, 3), 1e30, dtype=dtype)  # equal huge logits: uniform, not NaN
    np.testing.assert_allclose(activation_forward("softmax", big), np.full((2, 3), 1 / 3),
                               rtol=1e-6)
    r = activation_forward("relu", np.array([np.nan, -np.inf, np.inf, -0.0], dtype=dtype))
    assert np.isnan(r[0]) and r[1] == 0 and r[2] == np.inf and r[3] == 0


def test_float32_exp_and_tanh_accuracy_over_the_whole_range():
    # sigmoid(x < 0) = e/(1+e) exercises the vectorized float32 exp from overflow to underflow.
    x = np.concatenate([np.linspace(-110, 95, 400_001), np.linspace(-1, 1, 100_001)])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        for name, ref in (("sigmoid", 1 / (1 + np.exp(-x64))), ("tanh", np.tanh(x64))):
            y = activation_forward(name, x)
            normal = np.abs(ref) > np.finfo(np.float32).tiny
            rel = np.abs(y[normal] - ref[normal]) / np.abs(ref[normal])
            assert rel.max() < 4e-7, name
            # results in the subnormal range: exact or flushed to zero (kernels run with FTZ)
            assert np.all(np.abs(y[~normal] - ref[~normal]) < np.finfo(np.float32).tiny), name
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    s = activation_forward("sigmoid", special)
    t = activation_forward("tanh", special)
    np.testing.assert_array_equal(s, [1, 0, np.nan, 0.5, 0.5])
    np.testing.assert_array_equal(t, [1, -1, np.nan, 0, 0])
    assert np.signbit(t[4])


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax", "linear"])
def test_backward_matches_finite_differences(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6))
    if name == "relu":  # keep clear of the kink
        x = np.where(np.abs(x) < 0.05, 0.3, x)
    w = rng.standard_normal(x.shape)
    y = activation_forward(name, x)
    analytic = activation_backward(name, w, y)
    h = 1e-6
    numeric = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        numeric[i] = ((w * activation_forward(name, xp)).sum()
                      - (w * activation_forward(name, xm)).sum()) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_and_out(name, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((33, 7)).astype(dtype)
    expected = activation_forward(name, x)
    buf = x.copy()
    assert activation_forward(name, buf, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)
    out = np.empty_like(x)
    assert activation_forward(name, x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    dy = rng.standard_normal(x.shape).astype(dtype)
    expected_dx = activation_backward(name, dy, expected)
    assert activation_backward(name, dy, expected, x=x, out=dy) is dy
    np.testing.assert_array_equal(dy, expected_dx)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_bitwise_identical(name, dtype, two_threads):
    rng = np.random.default_rng(11)
    for shape in [(1,), (5, 3), (1, 4099), (257, 131)]:
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y2 = activation_forward(name, x)
        dx2 = activation_backward(name, dy, y2)
        fastnet.set_num_threads(1)
        y1 = activation_forward(name, x)
        dx1 = activation_backward(name, dy, y1)
        fastnet.set_num_threads(2)
        assert y1.tobytes() == y2.tobytes()
        assert dx1.tobytes() == dx2.tobytes()


def test_empty_and_zero_d():
    for name in NAMES:
        assert activation_forward(name, np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert activation_forward("relu", np.array(-2.0)) == 0
    with pytest.raises(ValueError, match="at least 1 dimension"):
        activation_forward("softmax", np.array(1.0))


def test_bad_inputs():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="name must be one of"):
        activation_forward("mish", x)
    with pytest.raises(TypeError, match="name must be a string"):
        activation_forward(None, x)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        activation_forward("relu", [1.0, 2.0])
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        activation_forward("relu", np.ones(3, np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        activation_forward("relu", np.ones((3, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="out must be a writeable"):
        activation_forward("relu", x, out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="out must be a writeable"):
        activation_forward("relu", x, out=np.empty((2, 3), np.float64))
    big = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        activation_forward("relu", big[:8], out=big[2:])
    with pytest.raises(TypeError, match="y must have dtype float32"):
        activation_backward("relu", x, x.astype(np.float64))
    with pytest.raises(ValueError, match="y must have the shape of dy"):
        activation_backward("relu", x, np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="x must have the shape of dy"):
        activation_backward("relu", x, x, x=np.ones(6, np.float32))


def test_callers_floating_point_mode_is_restored(two_threads):
    # The kernels flush denormals while they run; NumPy code after them must still see them.
    x = np.full(70_000, -95.0, np.float32)  # sigmoid would be subnormal: flushed to 0
    for nthreads in (1, 2):
        fastnet.set_num_threads(nthreads)
        assert np.all(activation_forward("sigmoid", x) == 0)
        assert np.float32(1e-38) * np.float32(1e-3) != 0
        assert np.array([1e-40], np.float32)[0] * 2 != 0


# ----------------------------------------------------------------- softplus, swish, gelu, elu...
NEW = ["softplus", "swish", "gelu", "gelu_tanh", "elu", "leaky_relu"]
ALPHA = {"elu": 0.7, "leaky_relu": 0.15}


def ref64(name, x, alpha=None):
    """(f(x), f'(x)) in float64 from the textbook formulas (math.erfc for the normal CDF)."""
    x = x.astype(np.float64)
    s = np.exp(-np.logaddexp(0.0, -x))  # the logistic function, accurate in both tails
    if name == "softplus":
        return np.logaddexp(0.0, x), s
    if name == "swish":
        return x * s, s * (1 + x * (1 - s))
    if name == "gelu":
        cdf = 0.5 * np.vectorize(math.erfc)(-x / np.sqrt(2))
        return x * cdf, cdf + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    if name == "gelu_tanh":
        c = np.sqrt(2 / np.pi)
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        du = c * (1 + 3 * 0.044715 * x * x)
        return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    a = {"elu": 1.0, "leaky_relu": 0.2}[name] if alpha is None else alpha
    if name == "elu":
        neg = np.minimum(x, 0)
        return np.where(x > 0, x, a * np.expm1(neg)), np.where(x > 0, 1.0, a * np.exp(neg))
    return np.where(x > 0, x, a * x), np.where(x > 0, 1.0, a)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", DTYPES)
def test_new_activations_match_reference(name, dtype):
    rng = np.random.default_rng([NEW.index(name), np.dtype(dtype).itemsize])
    for scale in (1e-3, 1.0, 6.0):
        x = (rng.standard_normal((37, 29)) * scale).astype(dtype)
        for alpha in ((None, ALPHA[name]) if name in ALPHA else (None,)):
            y = activation_forward(name, x, alpha=alpha)
            ref, dref = ref64(name, x, alpha)
            dy = rng.standard_normal(x.shape).astype(dtype)
            dx = activation_backward(name, dy, y, x=x, alpha=alpha)
            if dtype == np.float64:
                # gelu_tanh's 1 + tanh(u) cancels for x < 0 (in every implementation)
                atol = 1e-15 * scale if name == "gelu_tanh" else 1e-300
                np.testing.assert_allclose(y, ref, rtol=1e-13, atol=atol)
                np.testing.assert_allclose(dx, dy * dref, rtol=1e-12,
                                           atol=max(atol, 1e-15) * 10 * np.abs(dy).max())
            else:
                # a few ulp of the result; gelu's erfc rounds z**2 (1e-6 relative at |x| ~ 6)
                rtol = 2e-6 if name in ("gelu", "gelu_tanh") else 5e-7
                np.testing.assert_allclose(y, ref, rtol=rtol, atol=2e-7 * scale)
                # elu's derivative y + alpha (from y) and cancellations: absolute in |dy|
                np.testing.assert_allclose(dx, dy * dref, rtol=2e-6, atol=3e-7 * np.abs(dy).max())


def test_new_activations_match_pytorch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).standard_normal((8, 50)) * 4
    t = torch.tensor(x)
    F = torch.nn.functional
    cases = {"softplus": F.softplus(t), "swish": F.silu(t), "gelu": F.gelu(t),
             "gelu_tanh": F.gelu(t, approximate="tanh"), "elu": F.elu(t),
             "leaky_relu": F.leaky_relu(t, 0.2)}
    for name, ref in cases.items():
        np.testing.assert_allclose(activation_forward(name, x), ref.numpy(), rtol=1e-12,
                                   atol=1e-15, err_msg=name)


@pytest.mark.parametrize("name", NEW)
def test_new_backward_matches_finite_differences(name):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6)) * 2
    x = np.where(np.abs(x) < 0.05, 0.3, x)     # keep clear of the kinks of elu / leaky_relu
    w = rng.standard_normal(x.shape)
    alpha = ALPHA.get(name)
    y = activation_forward(name, x, alpha=alpha)
    analytic = activation_backward(name, w, y, x=x, alpha=alpha)
    h = 1e-6
    numeric = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        numeric[i] = ((w * activation_forward(name, xp, alpha=alpha)).sum()
                      - (w * activation_forward(name, xm, alpha=alpha)).sum()) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NEW + ["silu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_new_threads_bitwise_identical_and_in_place(name, dtype, two_threads):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((257, 131)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y2 = activation_forward(name, x)
    dx2 = activation_backward(name, dy, y2, x=x)
    fastnet.set_num_threads(1)
    y1 = activation_forward(name, x)
    dx1 = activation_backward(name, dy, y1, x=x)
    fastnet.set_num_threads(2)
    assert y1.tobytes() == y2.tobytes() and dx1.tobytes() == dx2.tobytes()
    buf = x.copy()
    activation_forward(name, buf, out=buf)
    assert buf.tobytes() == y1.tobytes()
    g = dy.copy()
    activation_backward(name, g, y1, x=x, out=g)
    assert g.tobytes() == dx1.tobytes()


def test_new_extremes_and_special_values():
    for dtype in DTYPES:
        x = np.array([-1e4, -100.0, -30.0, -0.0, 0.0, 30.0, 100.0, 1e4, np.inf, -np.inf],
                     dtype=dtype)
        with np.errstate(all="raise"):
            sp = activation_forward("softplus", x)
            sw = activation_forward("swish", x)
            ge = activation_forward("gelu", x)
            el = activation_forward("elu", x)
        assert sp[0] == 0 and sp[7] == 1e4 and sp[8] == np.inf and sp[9] == 0
        assert sw[0] == 0 and sw[7] == 1e4 and sw[8] == np.inf
        assert ge[0] == 0 and ge[7] == 1e4 and ge[3] == 0 and ge[4] == 0
        np.testing.assert_array_equal(el[[0, 1, 9]], [-1, -1, -1])
        assert el[7] == 1e4
        np.testing.assert_allclose(sp[5], 30 + np.exp(-30.0), rtol=1e-6)
        np.testing.assert_allclose(activation_forward("softplus", np.array([-30.0], dtype)),
                                   [np.exp(-30.0)], rtol=1e-6)


def test_new_backward_needs_x_and_checks_alpha():
    x = np.ones((2, 3), np.float32)
    for name in ("softplus", "swish", "silu", "gelu", "gelu_tanh"):
        with pytest.raises(ValueError, match="x \\(the forward input\\) is required"):
            activation_backward(name, x, x)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        activation_forward("leaky_relu", x, alpha=-0.1)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        activation_forward("elu", x, alpha="1")
    np.testing.assert_array_equal(activation_forward("leaky_relu", -x), -0.2 * x)  # Keras 3 default
    np.testing.assert_allclose(activation_forward("elu", -x), np.expm1(-1.0) * x, rtol=1e-6)


def test_activations_module_names_and_functions():
    from fastnet import activations
    assert activations.get("silu") == "swish" and activations.get("SWISH") == "swish"
    assert activations.get("linear") is None and activations.get(None) is None
    assert activations.get(activations.gelu) == "gelu"
    for name in ("softplus", "swish", "silu", "gelu", "elu", "leaky_relu", "relu", "softmax"):
        assert activations.get(name) in act_ops.ACTIVATIONS
    with pytest.raises(ValueError, match="unknown activation"):
        activations.get("mish")
    x = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(activations.gelu(x, approximate=True),
                               activation_forward("gelu_tanh", x))
    np.testing.assert_allclose(activations.leaky_relu(x, negative_slope=0.5),
                               np.where(x > 0, x, 0.5 * x))
    np.testing.assert_allclose(activations.elu(x, alpha=2.0),
                               np.where(x > 0, x, 2 * np.expm1(x)), rtol=1e-14)
    np.testing.assert_allclose(activations.silu(x), activations.swish(x))
    np.testing.assert_allclose(activations.softplus(x), np.logaddexp(0, x), rtol=1e-14)
