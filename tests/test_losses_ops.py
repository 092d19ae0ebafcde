"""fastnet.ops.losses against NumPy versions of the Keras 3 formulas, finite differences,
thread-count determinism and bad inputs (the Loss classes: test_losses.py)."""
import numpy as np
import pytest

import fastnet
from fastnet.ops import losses as loss_ops
from fastnet.ops.losses import (
    EPSILON, binary_crossentropy, categorical_accuracy, categorical_crossentropy, huber,
    kl_divergence, mean_absolute_error, mean_squared_error, softmax_cross_entropy,
    softmax_crossentropy_fused_grad, sparse_accuracy, sparse_categorical_crossentropy)

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 5), (7, 1), (13, 10), (64, 10), (37, 300)]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


# ---- NumPy references (Keras 3 formulas) -------------------------------------------------------

def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_onehot(labels, c, dtype):
    return np.eye(c, dtype=dtype)[labels]


def np_cce_probs(p, t):
    o = p / p.sum(axis=-1, keepdims=True)
    o = np.clip(o, EPSILON, 1 - EPSILON)
    return float(np.mean(-(t * np.log(o)).sum(axis=-1)))


def np_cce_logits(x, t):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return float(np.mean((t * (lse - x)).sum(axis=-1)))


def random_case(rng, shape, dtype, scale=1.0):
    n, c = shape
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    labels = rng.integers(0, c, n)
    return x, labels, np_onehot(labels, c, dtype)


def numeric_grad(f, x, h=1e-6):
    g = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


@pytest.fixture
def parallel(monkeypatch):
    """Force the parallel path at any size."""
    monkeypatch.setattr(loss_ops, "PARALLEL_MIN_EXP", 1)
    monkeypatch.setattr(loss_ops, "PARALLEL_MIN_CHEAP", 1)
    old = fastnet.get_num_threads()
    yield
    fastnet.set_num_threads(old)


# ---- values and gradients against NumPy --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 40.0])
def test_from_logits_match_numpy(dtype, scale):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x, labels, onehot = random_case(rng, shape, dtype, scale)
        n = shape[0]
        p_ref = np_softmax(x.astype(np.float64))
        ref = np_cce_logits(x, onehot)
        grad, probs = np.empty_like(x), np.empty_like(x)
        loss = softmax_cross_entropy(x, labels, grad_out=grad, probs_out=probs)
        assert isinstance(loss, float)
        np.testing.assert_allclose(loss, ref, **TOL[dtype])
        np.testing.assert_allclose(probs, p_ref, **TOL[dtype])
        np.testing.assert_allclose(grad, (p_ref - onehot) / n, **TOL[dtype])
        g2 = np.empty_like(x)
        assert sparse_categorical_crossentropy(x, labels, from_logits=True, grad_out=g2) == loss
        np.testing.assert_array_equal(g2, grad)
        g3 = np.empty_like(x)
        l3 = categorical_crossentropy(x, onehot, from_logits=True, grad_out=g3)
        np.testing.assert_allclose(l3, ref, **TOL[dtype])
        np.testing.assert_allclose(g3, grad, **TOL[dtype])
        assert softmax_cross_entropy(x, labels) == loss  # no outputs: loss only


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_probs_match_keras_formula(dtype):
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        x, labels, onehot = random_case(rng, shape, dtype)
        n = shape[0]
        for p in (np_softmax(x).astype(dtype),                                # normalized
                  rng.uniform(0.05, 2.0, shape).astype(dtype)):               # not normalized
            ref = np_cce_probs(p.astype(np.float64), onehot)
            ls = sparse_categorical_crossentropy(p, labels, from_logits=False)
            ld = categorical_crossentropy(p, onehot, from_logits=False)
            np.testing.assert_allclose(ls, ref, **TOL[dtype])
            np.testing.assert_allclose(ld, ref, **TOL[dtype])
            # gradient: d/dp of -log(o_t), o = p / S  ->  (o_t - [k == t]) / (o_t S) / n
            p64 = p.astype(np.float64)
            s = p64.sum(axis=1, keepdims=True)
            o_t = (p64 / s)[np.arange(n), labels][:, None]
            g_ref = (o_t - onehot) / (o_t * s) / n
            g_ref[(o_t[:, 0] < EPSILON) | (o_t[:, 0] > 1 - EPSILON)] = 0
            gs, gd = np.empty_like(p), np.empty_like(p)
            sparse_categorical_crossentropy(p, labels, from_logits=False, grad_out=gs)
            categorical_crossentropy(p, onehot, from_logits=False, grad_out=gd)
            np.testing.assert_allclose(gs, g_ref, rtol=TOL[dtype]["rtol"] * 10, atol=1e-12)
            np.testing.assert_allclose(gd, g_ref, rtol=TOL[dtype]["rtol"] * 10, atol=1e-12)


def test_clipping_follows_keras():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1e-12, 1.0, 1.0]])
    labels = np.array([0, 2, 0])
    onehot = np_onehot(labels, 3, np.float64)
    ref = np_cce_probs(p, onehot)
    assert ref > 10  # the clipped terms dominate
    g = np.empty_like(p)
    loss = sparse_categorical_crossentropy(p, labels, from_logits=False, grad_out=g)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_array_equal(g, 0)  # every labelled probability is clipped
    loss_d = categorical_crossentropy(p, onehot, from_logits=False, grad_out=g)
    np.testing.assert_allclose(loss_d, ref, rtol=1e-12)


def test_float32_epsilon_matches_keras_float32():
    p = np.array([[1.0, 0.0]], np.float32)
    o = np.clip(p, np.float32(EPSILON), np.float32(1 - EPSILON))
    keras_value = float(-np.log(o[0, 0]))  # what Keras computes in float32
    assert sparse_categorical_crossentropy(p, np.array([0]), from_logits=False) == \
        pytest.approx(keras_value, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    for shape in [(1,), (1, 1), (7, 1), (3, 5), (2, 3, 4), (5000, 3)]:
        p = rng.standard_normal(shape).astype(dtype)
        t = rng.standard_normal(shape).astype(dtype)
        g = np.empty_like(p)
        loss = mean_squared_error(p, t, grad_out=g)
        d = p.astype(np.float64) - t
        np.testing.assert_allclose(loss, np.mean(d * d), **TOL[dtype])
        np.testing.assert_allclose(g, 2 * d / p.size, **TOL[dtype])
        assert mean_squared_error(p, t) == loss


# ---- finite differences (float64) --------------------------------------------------------------

def test_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    x, labels, onehot = random_case(rng, (4, 5), np.float64)
    soft = rng.uniform(0, 1, (4, 5))
    soft /= soft.sum(axis=1, keepdims=True)  # soft targets (label-smoothing style)
    p = rng.uniform(0.05, 1.5, (4, 5))       # unnormalized positive "probabilities"
    cases = [
        (lambda z: softmax_cross_entropy(z, labels), x,
         lambda z, g: softmax_cross_entropy(z, labels, grad_out=g)),
        (lambda z: sparse_categorical_crossentropy(z, labels, from_logits=False), p,
         lambda z, g: sparse_categorical_crossentropy(z, labels, from_logits=False, grad_out=g)),
        (lambda z: categorical_crossentropy(z, soft, from_logits=True), x,
         lambda z, g: categorical_crossentropy(z, soft, from_logits=True, grad_out=g)),
        (lambda z: categorical_crossentropy(z, soft, from_logits=False), p,
         lambda z, g: categorical_crossentropy(z, soft, from_logits=False, grad_out=g)),
        (lambda z: categorical_crossentropy(z, 2 * onehot, from_logits=True), x,
         lambda z, g: categorical_crossentropy(z, 2 * onehot, from_logits=True, grad_out=g)),
        (lambda z: mean_squared_error(z, soft), x,
         lambda z, g: mean_squared_error(z, soft, grad_out=g)),
    ]
    for loss_fn, z, with_grad in cases:
        g = np.empty_like(z)
        with_grad(z, g)
        np.testing.assert_allclose(g, numeric_grad(loss_fn, z), rtol=1e-6, atol=1e-9)


def test_probs_gradient_with_a_clipped_entry():
    # One entry far below EPSILON after normalization: its clip stays active within the
    # finite-difference step, so the analytic zero there must match the numeric derivative.
    p = np.array([[1e-10, 0.6, 0.4], [0.2, 0.3, 0.5]])
    t = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    g = np.empty_like(p)
    categorical_crossentropy(p, t, from_logits=False, grad_out=g)
    numeric = numeric_grad(lambda z: categorical_crossentropy(z, t, from_logits=False), p, 1e-8)
    np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-6)


# ---- the fused softmax + cross-entropy gradient ------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_grad(dtype):
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        x, labels, onehot = random_case(rng, shape, dtype)
        n = shape[0]
        probs = np_softmax(x).astype(dtype)
        g = np.empty_like(x)
        loss = softmax_crossentropy_fused_grad(probs, labels, g)
        assert loss == sparse_categorical_crossentropy(probs, labels, from_logits=False)
        np.testing.assert_allclose(g, (probs - onehot) / n, **TOL[dtype])
        gd = np.empty_like(x)
        loss_d = softmax_crossentropy_fused_grad(probs, onehot, gd)
        np.testing.assert_allclose(loss_d, loss, **TOL[dtype])
        np.testing.assert_allclose(gd, g, **TOL[dtype])
        in_place = probs.copy()
        assert softmax_crossentropy_fused_grad(in_place, labels, in_place) == loss
        np.testing.assert_array_equal(in_place, g)
        in_place = probs.copy()
        assert softmax_crossentropy_fused_grad(in_place, onehot, in_place) == loss_d
        np.testing.assert_array_equal(in_place, gd)
        # it is the chain of the exact probability gradient and the softmax backward
        if dtype == np.float64:
            gp = np.empty_like(x)
            sparse_categorical_crossentropy(probs, labels, from_logits=False, grad_out=gp)
            chained = probs * (gp - (gp * probs).sum(axis=1, keepdims=True))
            np.testing.assert_allclose(g, chained, rtol=1e-9, atol=1e-14)


# ---- accuracy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_matches_numpy(dtype):
    rng = np.random.default_rng(6)
    for shape in SHAPES:
        pred = rng.integers(0, 3, shape).astype(dtype)  # many ties: first maximum wins
        labels = rng.integers(0, shape[1], shape[0])
        targets = rng.integers(0, 3, shape).astype(dtype)
        assert sparse_accuracy(pred, labels) == int((pred.argmax(1) == labels).sum())
        assert categorical_accuracy(pred, targets) == \
            int((pred.argmax(1) == targets.argmax(1)).sum())
    pred = np.array([[0.1, np.nan, 0.9, np.nan], [np.nan, 1.0, 2.0, 0.0]], np.float32)
    assert sparse_accuracy(pred, np.array([1, 0])) == 2  # numpy: the first NaN is the argmax
    assert isinstance(sparse_accuracy(pred, np.array([1, 0])), int)


@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64,
                                         np.uint64])
def test_label_dtypes_and_column_labels(label_dtype):
    rng = np.random.default_rng(8)
    x, labels, _ = random_case(rng, (9, 4), np.float64)
    ref = softmax_cross_entropy(x, labels.astype(np.int64))
    lab = labels.astype(label_dtype)
    assert softmax_cross_entropy(x, lab) == ref
    assert softmax_cross_entropy(x, lab.reshape(9, 1)) == ref
    assert softmax_cross_entropy(x, np.repeat(lab, 2)[::2]) == ref  # strided labels are copied
    assert sparse_accuracy(x, lab.reshape(9, 1)) == int((x.argmax(1) == labels).sum())


# ---- determinism across thread counts ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_bitwise_identical(dtype, parallel):
    rng = np.random.default_rng(9)
    x, labels, onehot = random_case(rng, (301, 17), dtype)
    p = np_softmax(x).astype(dtype)
    big_p = rng.standard_normal(100_003).astype(dtype)
    big_t = rng.standard_normal(100_003).astype(dtype)

    def run():
        out = []
        for fn in (
            lambda g: softmax_cross_entropy(x, labels, grad_out=g),
            lambda g: categorical_crossentropy(x, onehot, from_logits=True, grad_out=g),
            lambda g: sparse_categorical_crossentropy(p, labels, from_logits=False, grad_out=g),
            lambda g: categorical_crossentropy(p, onehot, from_logits=False, grad_out=g),
            lambda g: softmax_crossentropy_fused_grad(p, labels, g),
        ):
            g = np.empty_like(x)
            out.append((fn(g), g.tobytes()))
        g = np.empty_like(big_p)
        out.append((mean_squared_error(big_p, big_t, grad_out=g), g.tobytes()))
        out.append((sparse_accuracy(x, labels), categorical_accuracy(x, onehot)))
        return out

    fastnet.set_num_threads(1)
    one = run()
    fastnet.set_num_threads(2)
    assert run() == one


# ---- bad inputs --------------------------------------------------------------------------------

def test_bad_inputs():
    x = np.zeros((4, 3), np.float32)
    labels = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*got 3"):
        softmax_cross_entropy(x, np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*got -1"):
        sparse_categorical_crossentropy(x, np.array([0, -1, 2, 1]), from_logits=False)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        softmax_cross_entropy(x, labels.astype(np.float32))
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        softmax_cross_entropy(x, np.ones(4, bool))
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray"):
        softmax_cross_entropy(x, [0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\) or \(4, 1\)"):
        softmax_cross_entropy(x, labels[:3])
    with pytest.raises(ValueError, match="logits must have at least 2 dimensions"):
        softmax_cross_entropy(x.reshape(-1), labels)
    with pytest.raises(ValueError, match="at least one row"):
        softmax_cross_entropy(np.zeros((0, 3), np.float32), labels[:0])
    with pytest.raises(TypeError, match="logits must have dtype float32 or float64"):
        softmax_cross_entropy(x.astype(np.float16), labels)
    with pytest.raises(ValueError, match="grad_out must be a writeable"):
        softmax_cross_entropy(x, labels, grad_out=np.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="grad_out must not overlap logits"):
        softmax_cross_entropy(x, labels, grad_out=x)
    g = np.empty_like(x)
    with pytest.raises(ValueError, match="probs_out must not overlap grad_out"):
        softmax_cross_entropy(x, labels, grad_out=g, probs_out=g)
    with pytest.raises(TypeError, match="from_logits must be a bool"):
        sparse_categorical_crossentropy(x, labels, from_logits=1)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument"):
        categorical_crossentropy(x, x)
    with pytest.raises(TypeError, match="targets must have dtype float32"):
        categorical_crossentropy(x, x.astype(np.float64), from_logits=True)
    with pytest.raises(ValueError, match="targets must have the shape of pred"):
        categorical_crossentropy(x, np.zeros((4, 2), np.float32), from_logits=False)
    with pytest.raises(ValueError, match="target must have the shape of pred"):
        mean_squared_error(x, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        mean_squared_error(np.zeros((4, 6), np.float32)[:, ::2], x)
    with pytest.raises(ValueError, match="at least one element"):
        mean_squared_error(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="grad_out is required"):
        softmax_crossentropy_fused_grad(x, labels, None)
    with pytest.raises(TypeError, match="labels_or_targets must be a numpy.ndarray"):
        softmax_crossentropy_fused_grad(x, [0, 1, 2, 1], g)
    big = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="grad_out must not overlap probs"):
        softmax_crossentropy_fused_grad(big[:4], labels, big[1:])
    with pytest.raises(ValueError, match="targets must have the shape of probs"):
        softmax_crossentropy_fused_grad(x, np.zeros((4, 4), np.float32), g)
    with pytest.raises(ValueError, match="targets must have the shape of pred"):
        categorical_accuracy(x, np.zeros((4, 4), np.float32))


# ---- sample weights, divisor, label smoothing, rank > 2 (cross-entropies) ----------------------

def np_smooth(t, ls):
    return t * (1 - ls) + ls / t.shape[-1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_crossentropy_weights_divisor_smoothing(dtype):
    rng = np.random.default_rng(11)
    for shape in [(1, 3), (9, 4), (64, 10)]:
        x, labels, onehot = random_case(rng, shape, dtype)
        n = shape[0]
        w = rng.uniform(0, 2, n)
        w[0] = 0.0
        p = np_softmax(x.astype(np.float64)).astype(dtype)
        for ls in (0.0, 0.2):
            t = np_smooth(onehot.astype(np.float64), ls)
            row_logits = (t * (np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
                               - (x - x.max(1, keepdims=True)))).sum(1)
            o = np.clip(p / p.sum(1, keepdims=True), EPSILON, 1 - EPSILON)
            row_probs = -(t * np.log(o)).sum(1)
            for divisor in (None, 1.0, 3.5):
                d = n if divisor is None else divisor
                kw = dict(sample_weight=w.astype(dtype), divisor=divisor)
                np.testing.assert_allclose(
                    categorical_crossentropy(x, onehot, from_logits=True, label_smoothing=ls,
                                             **kw), (w * row_logits).sum() / d, **TOL[dtype])
                np.testing.assert_allclose(
                    categorical_crossentropy(p, onehot, from_logits=False, label_smoothing=ls,
                                             **kw), (w * row_probs).sum() / d,
                    rtol=TOL[dtype]["rtol"] * 10)
                g = np.empty_like(x)
                fused = softmax_crossentropy_fused_grad(p, onehot, g, label_smoothing=ls, **kw)
                np.testing.assert_allclose(fused, (w * row_probs).sum() / d,
                                           rtol=TOL[dtype]["rtol"] * 10)
                g_ref = (p.astype(np.float64) * t.sum(1, keepdims=True) - t) * w[:, None] / d
                np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7 if dtype ==
                                           np.float32 else 1e-15)
                if ls == 0:
                    np.testing.assert_allclose(
                        sparse_categorical_crossentropy(x, labels, from_logits=True, **kw),
                        (w * row_logits).sum() / d, **TOL[dtype])
                    np.testing.assert_allclose(
                        sparse_categorical_crossentropy(p, labels, from_logits=False, **kw),
                        (w * row_probs).sum() / d, rtol=TOL[dtype]["rtol"] * 10)
                    gs = np.empty_like(x)
                    assert softmax_crossentropy_fused_grad(p, labels, gs, **kw) == \
                        sparse_categorical_crossentropy(p, labels, from_logits=False, **kw)
                    np.testing.assert_allclose(gs, g, rtol=1e-6, atol=1e-7)


def test_unit_weights_and_default_divisor_change_nothing():
    rng = np.random.default_rng(12)
    x, labels, onehot = random_case(rng, (37, 7), np.float32)
    ones = np.ones(37, np.float32)
    for exact, fn in ((True, lambda **k: softmax_cross_entropy(x, labels, **k)),
                      (True, lambda **k: categorical_crossentropy(x, onehot, from_logits=True,
                                                                  **k)),
                      (False, lambda **k: mean_squared_error(x, onehot, **k)),
                      (False, lambda **k: binary_crossentropy(x, onehot, from_logits=True,
                                                              **k))):
        g1, g2 = np.empty_like(x), np.empty_like(x)
        a, b = fn(grad_out=g1), fn(grad_out=g2, sample_weight=ones, divisor=None)
        # elementwise sums are cut at sample boundaries when weighted: same value up to the
        # order of the float64 additions
        assert a == b if exact else a == pytest.approx(b, rel=1e-14)
        np.testing.assert_array_equal(g1, g2)


def test_crossentropy_on_rank3_outputs_is_per_row():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 5))
    labels = rng.integers(0, 5, (3, 4))
    onehot = np_onehot(labels, 5, np.float64)
    w = np.array([0.5, 1.0, 2.0])
    flat_w = np.repeat(w, 4)
    g3, g2 = np.empty_like(x), np.empty((12, 5))
    a = softmax_cross_entropy(x, labels, grad_out=g3, sample_weight=w)
    # the same rows flattened, each row weighted by its sample's weight (flat_w via a 12-sample
    # batch): identical per-row arithmetic
    b = softmax_cross_entropy(x.reshape(12, 5), labels.reshape(12), grad_out=g2,
                              sample_weight=flat_w)
    assert a == b
    np.testing.assert_array_equal(g3.reshape(12, 5), g2)
    assert categorical_crossentropy(x, onehot, from_logits=True, sample_weight=w) == \
        pytest.approx(a, rel=1e-13)
    assert sparse_categorical_crossentropy(x, labels[..., None], from_logits=True) == \
        softmax_cross_entropy(x, labels)


# ---- elementwise losses ------------------------------------------------------------------------

def np_elementwise(kind, p, t, delta=1.0, ls=0.0):
    """Per-element value of each Keras elementwise loss, float64."""
    p, t = p.astype(np.float64), t.astype(np.float64)
    d = p - t
    if kind == "mse":
        return d * d
    if kind == "mae":
        return np.abs(d)
    if kind == "huber":
        return np.where(np.abs(d) <= delta, 0.5 * d * d, delta * np.abs(d) - 0.5 * delta ** 2)
    t = t * (1 - ls) + 0.5 * ls
    if kind == "bce":
        q = np.clip(p, EPSILON, 1 - EPSILON)
        return -(t * np.log(q) + (1 - t) * np.log(1 - q))
    if kind == "bce_logits":
        return np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))
    tc, pc = np.clip(t, EPSILON, 1), np.clip(p, EPSILON, 1)   # kld (no smoothing)
    return tc * np.log(tc / pc)


def np_reduce(values, w=None, divisor=None, mean_last=True):
    """Keras: entries = mean (or sum) over the last axis, weighted per sample, summed, divided
    by the number of entries (or ``divisor``)."""
    v = values.reshape(values.shape[0], -1) if values.ndim == 1 else values
    v = v.reshape(v.shape[0], -1, v.shape[-1]) if v.ndim > 2 else v.reshape(v.shape[0], 1, -1)
    entries = v.mean(-1) if mean_last else v.sum(-1)
    if w is not None:
        entries = entries * w[:, None]
    return entries.sum() / (entries.size if divisor is None else divisor)


ELEMENTWISE = {
    "mse": lambda p, t, **k: mean_squared_error(p, t, **k),
    "mae": lambda p, t, **k: mean_absolute_error(p, t, **k),
    "huber": lambda p, t, **k: huber(p, t, delta=0.7, **k),
    "bce": lambda p, t, **k: binary_crossentropy(p, t, from_logits=False, **k),
    "bce_ls": lambda p, t, **k: binary_crossentropy(p, t, from_logits=False,
                                                    label_smoothing=0.3, **k),
    "bce_logits": lambda p, t, **k: binary_crossentropy(p, t, from_logits=True, **k),
    "bce_logits_ls": lambda p, t, **k: binary_crossentropy(p, t, from_logits=True,
                                                           label_smoothing=0.1, **k),
    "kld": lambda p, t, **k: kl_divergence(p, t, **k),
}


def elementwise_case(kind, rng, shape, dtype):
    if kind.startswith("bce_logits"):
        p = rng.standard_normal(shape) * 3
    elif kind.startswith("bce"):
        p = rng.uniform(0.02, 0.98, shape)
    elif kind == "kld":
        p = rng.uniform(0.05, 1.0, shape)
    else:
        p = rng.standard_normal(shape)
    if kind.startswith("bce"):
        t = rng.uniform(0, 1, shape)
        t[..., ::2] = np.round(t[..., ::2])
    elif kind == "kld":
        t = rng.uniform(0, 1, shape)
        t[..., ::3] = 0          # clipped to EPSILON
    else:
        t = rng.standard_normal(shape)
    return p.astype(dtype), t.astype(dtype)


def elementwise_ref(kind, p, t):
    base = {"bce_ls": "bce", "bce_logits_ls": "bce_logits"}.get(kind, kind)
    ls = {"bce_ls": 0.3, "bce_logits_ls": 0.1}.get(kind, 0.0)
    return np_elementwise(base, p, t, delta=0.7, ls=ls), base != "kld"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(ELEMENTWISE))
def test_elementwise_match_numpy(kind, dtype):
    rng = np.random.default_rng(14)
    fn = ELEMENTWISE[kind]
    for shape in [(1,), (1, 1), (7, 1), (13, 5), (3, 4, 6), (5000, 3)]:
        p, t = elementwise_case(kind, rng, shape, dtype)
        values, mean_last = elementwise_ref(kind, p, t)
        w = rng.uniform(0, 2, shape[0])
        for weights, divisor in ((None, None), (w, None), (w, 2.5)):
            ref = np_reduce(values, weights, divisor, mean_last)
            g = np.empty_like(p)
            kw = dict(sample_weight=None if weights is None else weights.astype(dtype),
                      divisor=divisor)
            loss = fn(p, t, grad_out=g, **kw)
            assert isinstance(loss, float)
            np.testing.assert_allclose(loss, ref, rtol=TOL[dtype]["rtol"] * 10,
                                       atol=TOL[dtype]["atol"])
            # without the gradient: the same value up to the order of the float64 sum (the
            # SIMD loops with and without the gradient store may be vectorized differently)
            assert fn(p, t, **kw) == pytest.approx(loss, rel=1e-14)


@pytest.mark.parametrize("kind", sorted(ELEMENTWISE))
def test_elementwise_gradients_match_finite_differences(kind):
    rng = np.random.default_rng(15)
    fn = ELEMENTWISE[kind]
    for shape in [(4, 3), (2, 3, 2)]:
        p, t = elementwise_case(kind, rng, shape, np.float64)
        if kind in ("mae", "huber"):   # keep away from the kinks (d = 0, |d| = delta)
            d = p - t
            p = t + np.where(np.abs(np.abs(d) - 0.7) < 1e-3, d + 0.01, d)
            p = np.where(np.abs(p - t) < 1e-3, t + 0.01, p)
        w = rng.uniform(0.1, 2, shape[0])
        for kw in ({}, {"sample_weight": w, "divisor": 1.0}):
            g = np.empty_like(p)
            fn(p, t, grad_out=g, **kw)
            np.testing.assert_allclose(g, numeric_grad(lambda z: fn(z, t, **kw), p),
                                       rtol=1e-6, atol=1e-9)


def test_elementwise_clip_gradients_are_zero_where_clipped():
    p = np.array([[0.0, 1.0, 0.5, -0.2, 1.3]])
    t = np.array([[0.0, 1.0, 1.0, 0.5, 0.5]])
    g = np.empty_like(p)
    binary_crossentropy(p, t, from_logits=False, grad_out=g)
    assert np.all(g[0, [0, 1, 3, 4]] == 0) and g[0, 2] != 0
    kl_divergence(p, t, grad_out=g)
    assert np.all(g[0, [0, 3, 4]] == 0) and np.all(g[0, [1, 2]] != 0)
    # logits: no overflow for huge inputs
    x = np.array([[-800.0, 800.0, 0.0]])
    g = np.empty_like(x)
    loss = binary_crossentropy(x, np.array([[1.0, 0.0, 1.0]]), from_logits=True, grad_out=g)
    np.testing.assert_allclose(loss, (800 + 800 + np.log(2)) / 3)
    np.testing.assert_allclose(g, [[-1 / 3, 1 / 3, -1 / 6]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_losses_threads_bitwise_identical(dtype, parallel):
    rng = np.random.default_rng(16)
    x, labels, onehot = random_case(rng, (301, 17), dtype)
    p = np_softmax(x).astype(dtype)
    w = rng.uniform(0, 2, 301).astype(dtype)
    big_p = rng.uniform(0.01, 0.99, (20001, 5)).astype(dtype)
    big_t = rng.uniform(0, 1, (20001, 5)).astype(dtype)
    big_w = rng.uniform(0, 2, 20001).astype(dtype)

    def run():
        out = []
        for fn in (
            lambda g: softmax_cross_entropy(x, labels, grad_out=g, sample_weight=w),
            lambda g: categorical_crossentropy(x, onehot, from_logits=True, grad_out=g,
                                               label_smoothing=0.1, sample_weight=w),
            lambda g: categorical_crossentropy(p, onehot, from_logits=False, grad_out=g,
                                               sample_weight=w),
            lambda g: softmax_crossentropy_fused_grad(p, onehot, g, label_smoothing=0.1,
                                                      sample_weight=w),
        ):
            g = np.empty_like(x)
            out.append((fn(g), g.tobytes()))
        for fn in ELEMENTWISE.values():
            g = np.empty_like(big_p)
            out.append((fn(big_p, big_t, grad_out=g, sample_weight=big_w), g.tobytes()))
        return out

    fastnet.set_num_threads(1)
    one = run()
    fastnet.set_num_threads(2)
    assert run() == one


def test_bad_weights_divisor_and_options():
    x = np.zeros((4, 3), np.float32)
    labels = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        softmax_cross_entropy(x, labels, sample_weight=np.ones(3))
    with pytest.raises(TypeError, match="sample_weight must be a numpy.ndarray"):
        mean_squared_error(x, x.copy(), sample_weight=[1, 1, 1, 1])
    with pytest.raises(TypeError, match="sample_weight must hold real numbers"):
        mean_squared_error(x, x.copy(), sample_weight=np.array(["a"] * 4))
    with pytest.raises(ValueError, match="divisor must be > 0"):
        mean_squared_error(x, x.copy(), divisor=0)
    with pytest.raises(TypeError, match="divisor must be a real number"):
        mean_squared_error(x, x.copy(), divisor="1")
    with pytest.raises(ValueError, match="label_smoothing must be <= 1"):
        categorical_crossentropy(x, x.copy(), from_logits=True, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing must be >= 0"):
        binary_crossentropy(x, x.copy(), from_logits=True, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="label_smoothing needs dense"):
        softmax_crossentropy_fused_grad(x, labels, np.empty_like(x), label_smoothing=0.1)
    with pytest.raises(ValueError, match="delta must be > 0"):
        huber(x, x.copy(), delta=0.0)
    with pytest.raises(TypeError, match="from_logits must be a bool"):
        binary_crossentropy(x, x.copy(), from_logits=None)
    with pytest.raises(TypeError, match="target must have dtype float32"):
        kl_divergence(x, x.astype(np.float64))
    with pytest.raises(ValueError, match="pred must have at least one element"):
        huber(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="grad_out must not overlap target"):
        t = x.copy()
        mean_absolute_error(x, t, grad_out=t)
