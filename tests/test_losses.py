"""fastnet.losses: every Loss class against NumPy versions of the Keras 3 formulas and against
PyTorch where it has the same loss, float64 finite-difference gradients of ``compute``, the
fused softmax path, target checks, names and config round trips."""
import numpy as np
import pytest

from fastnet import losses
from fastnet.ops.losses import EPSILON

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)


# ---- NumPy references of the Keras 3 formulas (float64) ----------------------------------------

def ref_per_sample(loss, y, p):
    """Keras's per-sample loss values (before the reduction) for (N, K) arrays."""
    p, y = p.astype(np.float64), y.astype(np.float64)
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        y = np.eye(p.shape[1])[y.astype(int)]
    if isinstance(loss, (losses.CategoricalCrossentropy, losses.SparseCategoricalCrossentropy)):
        ls = getattr(loss, "label_smoothing", 0.0)
        y = y * (1 - ls) + ls / p.shape[1]
        if loss.from_logits:
            z = p - p.max(1, keepdims=True)
            return -(y * (z - np.log(np.exp(z).sum(1, keepdims=True)))).sum(1)
        o = np.clip(p / p.sum(1, keepdims=True), EPSILON, 1 - EPSILON)
        return -(y * np.log(o)).sum(1)
    if isinstance(loss, losses.BinaryCrossentropy):
        y = y * (1 - loss.label_smoothing) + 0.5 * loss.label_smoothing
        if loss.from_logits:
            v = np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
        else:
            q = np.clip(p, EPSILON, 1 - EPSILON)
            v = -(y * np.log(q) + (1 - y) * np.log(1 - q))
        return v.mean(1)
    if isinstance(loss, losses.MeanSquaredError):
        return ((p - y) ** 2).mean(1)
    if isinstance(loss, losses.MeanAbsoluteError):
        return np.abs(p - y).mean(1)
    if isinstance(loss, losses.Huber):
        d = np.abs(p - y)
        return np.where(d <= loss.delta, 0.5 * d * d, loss.delta * d - 0.5 * loss.delta ** 2
                        ).mean(1)
    if isinstance(loss, losses.KLDivergence):
        yc, pc = np.clip(y, EPSILON, 1), np.clip(p, EPSILON, 1)
        return (yc * np.log(yc / pc)).sum(1)
    raise AssertionError(loss)


def data_for(loss, n=12, k=5, dtype=np.float64, rng=RNG):
    """(y_true, y_pred) in a loss's domain, away from clips and kinks."""
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        y = rng.integers(0, k, n)
    elif isinstance(loss, losses.CategoricalCrossentropy):
        y = np.eye(k)[rng.integers(0, k, n)]
        y[::3] = rng.dirichlet(np.ones(k), len(y[::3]))     # some soft targets
    elif isinstance(loss, (losses.BinaryCrossentropy, losses.KLDivergence)):
        y = rng.uniform(0, 1, (n, k))
        y[:, ::2] = np.round(y[:, ::2])
    else:
        y = rng.standard_normal((n, k))
    if getattr(loss, "from_logits", True) and not isinstance(loss, losses.KLDivergence) \
            and isinstance(loss, (losses.BinaryCrossentropy, losses.CategoricalCrossentropy,
                                  losses.SparseCategoricalCrossentropy)):
        p = rng.standard_normal((n, k)) * 2
    elif isinstance(loss, (losses.CategoricalCrossentropy, losses.SparseCategoricalCrossentropy)):
        p = rng.dirichlet(np.ones(k), n) * rng.uniform(0.5, 2, (n, 1))   # unnormalized too
        p = np.maximum(p, 1e-3)
    elif isinstance(loss, (losses.BinaryCrossentropy, losses.KLDivergence)):
        p = rng.uniform(0.02, 0.98, (n, k))
    else:
        p = rng.standard_normal((n, k))
        d = p - y
        p = np.where(np.abs(d) < 1e-2, y + 0.05, p)                       # MAE's kink
        if isinstance(loss, losses.Huber):
            d = p - y
            p = np.where(np.abs(np.abs(d) - loss.delta) < 1e-2, p + 0.05, p)
    return y, p.astype(dtype)


ALL_LOSSES = [
    losses.BinaryCrossentropy(), losses.BinaryCrossentropy(from_logits=True),
    losses.BinaryCrossentropy(label_smoothing=0.2),
    losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1),
    losses.CategoricalCrossentropy(), losses.CategoricalCrossentropy(from_logits=True),
    losses.CategoricalCrossentropy(label_smoothing=0.1),
    losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.3),
    losses.SparseCategoricalCrossentropy(), losses.SparseCategoricalCrossentropy(from_logits=True),
    losses.MeanSquaredError(), losses.MeanAbsoluteError(), losses.Huber(), losses.Huber(0.3),
    losses.KLDivergence(),
]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_keras_formula_with_sample_weights(loss, dtype):
    rng = np.random.default_rng(1)
    y, p = data_for(loss, dtype=dtype, rng=rng)
    per_sample = ref_per_sample(loss, y, p)
    w = rng.uniform(0, 3, len(p))
    tol = dict(rtol=2e-5) if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(loss(y, p), per_sample.mean(), **tol)
    np.testing.assert_allclose(loss(y, p, sample_weight=w), (w * per_sample).sum() / len(p),
                               **tol)
    np.testing.assert_allclose(loss(y, p, sample_weight=2.0), 2 * per_sample.mean(), **tol)
    summed = type(loss).from_config({**loss.get_config(), "reduction": "sum"})
    np.testing.assert_allclose(summed(y, p, sample_weight=w), (w * per_sample).sum(), **tol)
    # compute (the model's path) gives the same number from prepared targets
    targets = loss.prepare_targets(y, p.shape, p.dtype)
    assert loss.compute(p, targets, None) == loss(y, p)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=repr)
def test_compute_gradient_matches_finite_differences(loss):
    rng = np.random.default_rng(2)
    y, p = data_for(loss, n=4, k=3, rng=rng)
    targets = loss.prepare_targets(y, p.shape, p.dtype)
    w = rng.uniform(0.2, 2, 4)
    for sample_weight in (None, w):
        g = np.empty_like(p)
        value = loss.compute(p, targets, g, sample_weight=sample_weight)
        assert value == loss.compute(p, targets, None, sample_weight=sample_weight)
        num = np.empty_like(p)
        for i in np.ndindex(p.shape):
            hi, lo = p.copy(), p.copy()
            hi[i] += 1e-6
            lo[i] -= 1e-6
            num[i] = (loss.compute(hi, targets, None, sample_weight=sample_weight)
                      - loss.compute(lo, targets, None, sample_weight=sample_weight)) / 2e-6
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


# ---- against PyTorch ---------------------------------------------------------------------------

def torch_grad(fn, p):
    x = torch.tensor(p, requires_grad=True)
    out = fn(x)
    out.backward()
    return out.item(), x.grad.numpy()


def check_torch(loss, y, p, torch_fn, w=None, rtol=1e-10):
    targets = loss.prepare_targets(y, p.shape, p.dtype)
    g = np.empty_like(p)
    value = loss.compute(p, targets, g, sample_weight=w)
    t_value, t_grad = torch_grad(torch_fn, p)
    np.testing.assert_allclose(value, t_value, rtol=rtol)
    np.testing.assert_allclose(g, t_grad, rtol=rtol, atol=1e-14)


def test_against_torch():
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    n, k = 16, 6
    w = rng.uniform(0, 2, n)
    tw = torch.tensor(w)
    x = rng.standard_normal((n, k)) * 3
    y01 = rng.uniform(0, 1, (n, k))
    y01[:, :3] = np.round(y01[:, :3])
    labels = rng.integers(0, k, n)
    onehot = np.eye(k)[labels]

    # binary cross-entropy with logits, label smoothing, sample weights
    for ls in (0.0, 0.2):
        ty = torch.tensor(y01 * (1 - ls) + 0.5 * ls)
        check_torch(losses.BinaryCrossentropy(from_logits=True, label_smoothing=ls), y01, x,
                    lambda z: F.binary_cross_entropy_with_logits(z, ty))
        check_torch(losses.BinaryCrossentropy(from_logits=True, label_smoothing=ls), y01, x,
                    lambda z: (F.binary_cross_entropy_with_logits(z, ty, reduction="none")
                               .mean(1) * tw).sum() / n, w=w)
    # binary cross-entropy on probabilities inside the clip range (torch clamps the log instead)
    probs = rng.uniform(0.01, 0.99, (n, k))
    check_torch(losses.BinaryCrossentropy(), y01, probs,
                lambda z: F.binary_cross_entropy(z, torch.tensor(y01)))
    # categorical cross-entropy from logits with label smoothing (same formula as torch's)
    for ls in (0.0, 0.1, 0.4):
        check_torch(losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ls),
                    onehot, x, lambda z: F.cross_entropy(z, torch.tensor(labels),
                                                         label_smoothing=ls))
        check_torch(losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ls),
                    onehot, x, lambda z: (F.cross_entropy(z, torch.tensor(labels),
                                                          label_smoothing=ls, reduction="none")
                                          * tw).sum() / n, w=w)
    check_torch(losses.SparseCategoricalCrossentropy(from_logits=True), labels, x,
                lambda z: (F.cross_entropy(z, torch.tensor(labels), reduction="none") * tw)
                .sum() / n, w=w)
    # Huber (torch's HuberLoss has Keras's formula; Keras averages the last axis, then the
    # batch: the same as torch's mean over every element)
    y = rng.standard_normal((n, k))
    for delta in (1.0, 0.4):
        check_torch(losses.Huber(delta), y, x, lambda z: F.huber_loss(z, torch.tensor(y),
                                                                      delta=delta))
    check_torch(losses.MeanSquaredError(), y, x, lambda z: F.mse_loss(z, torch.tensor(y)))
    check_torch(losses.MeanAbsoluteError(), y, x, lambda z: F.l1_loss(z, torch.tensor(y)))
    # KL divergence: torch takes log-probabilities; 'batchmean' is Keras's sum over the last
    # axis averaged over the batch (values inside Keras's clip range)
    q = rng.dirichlet(np.ones(k), n)
    pr = rng.dirichlet(np.ones(k), n)
    check_torch(losses.KLDivergence(), q, pr,
                lambda z: F.kl_div(torch.log(z), torch.tensor(q), reduction="batchmean"))
    check_torch(losses.KLDivergence(), q, pr,
                lambda z: (F.kl_div(torch.log(z), torch.tensor(q), reduction="none").sum(1)
                           * tw).sum() / n, w=w)


# ---- the fused softmax path --------------------------------------------------------------------

@pytest.mark.parametrize("loss", [losses.SparseCategoricalCrossentropy(),
                                  losses.CategoricalCrossentropy(),
                                  losses.CategoricalCrossentropy(label_smoothing=0.2)], ids=repr)
def test_fused_softmax_is_the_chain_rule(loss):
    rng = np.random.default_rng(4)
    n, k = 8, 5
    z = rng.standard_normal((n, k))
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = rng.integers(0, k, n) if isinstance(loss, losses.SparseCategoricalCrossentropy) \
        else np.eye(k)[rng.integers(0, k, n)]
    targets = loss.prepare_targets(y, probs.shape, probs.dtype)
    w = rng.uniform(0, 2, n)
    assert loss.fuses_softmax
    gp, gz = np.empty_like(probs), np.empty_like(probs)
    value = loss.compute(probs, targets, gp, sample_weight=w)
    assert loss.compute_fused_softmax(probs, targets, gz, sample_weight=w) == \
        pytest.approx(value, rel=1e-14)
    chained = probs * (gp - (gp * probs).sum(1, keepdims=True))   # softmax backward
    np.testing.assert_allclose(gz, chained, rtol=1e-9, atol=1e-15)
    # in place over the probabilities, as the model does
    inplace = probs.copy()
    loss.compute_fused_softmax(inplace, targets, inplace, sample_weight=w)
    np.testing.assert_array_equal(inplace, gz)
    assert not losses.CategoricalCrossentropy(from_logits=True).fuses_softmax
    assert not losses.MeanSquaredError().fuses_softmax


# ---- targets, shapes and bad inputs ------------------------------------------------------------

def test_target_shapes():
    bce = losses.BinaryCrossentropy()
    t = bce.prepare_targets(np.array([0, 1, 1]), (3, 1), np.float32)
    assert t.shape == (3, 1) and t.dtype == np.float32 and t.flags.c_contiguous
    assert bce(np.array([0, 1, 1]), np.array([[0.2], [0.7], [0.9]])) == \
        pytest.approx(bce(np.array([[0], [1], [1]]), np.array([[0.2], [0.7], [0.9]])))
    # a 1-D pair is one sample, as in Keras: the mean over its entries
    assert bce([0, 1, 1], [0.2, 0.7, 0.9]) == pytest.approx(
        -np.mean(np.log([0.8, 0.7, 0.9])), rel=1e-6)
    assert losses.CategoricalCrossentropy()([0, 1, 0], [0.1, 0.8, 0.1]) == \
        pytest.approx(-np.log(0.8), rel=1e-6)
    scce = losses.SparseCategoricalCrossentropy()
    assert scce.prepare_targets(np.array([[1], [0]]), (2, 3), np.float32).shape == (2,)
    assert scce.prepare_targets(np.array([1.0, 2.0]), (2, 3), np.float32).dtype == np.int64
    # rank-3 outputs: labels per position, per-sample weights
    p = RNG.dirichlet(np.ones(4), (2, 3))
    lab = RNG.integers(0, 4, (2, 3))
    ref = -np.log(np.take_along_axis(p, lab[..., None], -1))[..., 0]
    np.testing.assert_allclose(scce(lab, p, sample_weight=np.array([1.0, 3.0])),
                               (ref * [[1.0], [3.0]]).sum() / 6, rtol=1e-12)
    mse = losses.MeanSquaredError()
    np.testing.assert_allclose(mse(np.zeros((2, 3, 4)), np.ones((2, 3, 4)),
                                   sample_weight=np.array([1.0, 0.0])), 0.5)


@pytest.mark.parametrize("loss,y,shape,exc,match", [
    (losses.SparseCategoricalCrossentropy(), np.array([0, 3]), (2, 3), ValueError,
     r"labels in \[0, 3\].*must be in \[0, 2\]"),
    (losses.SparseCategoricalCrossentropy(), np.array([0.5, 1]), (2, 3), ValueError,
     "non-integer"),
    (losses.SparseCategoricalCrossentropy(), np.array(["a", "b"]), (2, 3), TypeError,
     "integer class labels"),
    (losses.SparseCategoricalCrossentropy(), np.zeros((2, 3)), (2, 3), ValueError,
     "one integer class label per sample"),
    (losses.SparseCategoricalCrossentropy(), np.array([0, 1, 2]), (2, 3), ValueError,
     "3 samples but the predictions have 2"),
    (losses.CategoricalCrossentropy(), np.array([0, 2]), (2, 3), ValueError,
     "use sparse_categorical_crossentropy"),
    (losses.CategoricalCrossentropy(), np.array([[1, 0, -1], [0, 1, 0]]), (2, 3), ValueError,
     "must not be negative"),
    (losses.CategoricalCrossentropy(), np.array([[1, 0, np.nan], [0, 1, 0]]), (2, 3),
     ValueError, "NaN or infinite"),
    (losses.BinaryCrossentropy(), np.array([[0.0], [2.0]]), (2, 1), ValueError,
     r"must be in \[0, 1\]"),
    (losses.BinaryCrossentropy(), np.array([0, 1]), (2, 3), ValueError, "per-sample shape"),
    (losses.MeanSquaredError(), np.array([[1.0, np.inf]]), (1, 2), ValueError,
     "NaN or infinite"),
    (losses.Huber(), np.array([["x"]]), (1, 1), TypeError, "must be numeric"),
    (losses.KLDivergence(), np.zeros((2, 4)), (2, 3), ValueError, "per-sample shape"),
])
def test_bad_targets(loss, y, shape, exc, match):
    with pytest.raises(exc, match=match):
        loss.prepare_targets(y, shape, np.float32)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        losses.CategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(TypeError, match="label_smoothing must be a number"):
        losses.BinaryCrossentropy(label_smoothing="0.1")
    with pytest.raises(TypeError, match="from_logits must be a bool"):
        losses.BinaryCrossentropy(from_logits="yes")
    with pytest.raises(ValueError, match="delta must be a positive"):
        losses.Huber(delta=-1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.MeanSquaredError(reduction="none")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(2,\)"):
        losses.MeanSquaredError()(np.zeros((2, 1)), np.zeros((2, 1)), sample_weight=[1, 2, 3])
    with pytest.raises(ValueError, match="sample_weight holds NaN"):
        losses.MeanSquaredError()(np.zeros((2, 1)), np.zeros((2, 1)),
                                  sample_weight=[1, np.nan])
    with pytest.raises(TypeError, match="y_pred must be numeric"):
        losses.MeanSquaredError()(np.zeros(2), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="compute_fused_softmax needs from_logits=False"):
        losses.CategoricalCrossentropy(from_logits=True).compute_fused_softmax(
            np.ones((1, 2)), np.ones((1, 2)), np.empty((1, 2)))


def test_sample_weight_helpers():
    w = losses.prepare_sample_weight([1, 2, 3], 3, np.float32)
    assert w.dtype == np.float32 and w.shape == (3,)
    assert losses.prepare_sample_weight(None, 3, np.float32) is None
    np.testing.assert_array_equal(losses.prepare_sample_weight(2, 3, np.float64), [2, 2, 2])
    cw = {0: 1.0, 2: 5.0, 9: 3.0}
    np.testing.assert_array_equal(
        losses.class_weight_to_sample_weight(np.array([2, 0, 1, 2]), cw), [5, 1, 1, 5])
    np.testing.assert_array_equal(
        losses.class_weight_to_sample_weight(np.eye(3)[[2, 1]], cw), [5, 1])
    np.testing.assert_array_equal(
        losses.class_weight_to_sample_weight(np.array([[0.9], [0.2]]), {1: 4.0}), [4, 1])
    with pytest.raises(TypeError, match="class_weight must be a dict"):
        losses.class_weight_to_sample_weight(np.array([0]), [1.0])
    with pytest.raises(ValueError, match="must be a finite number"):
        losses.class_weight_to_sample_weight(np.array([0]), {0: np.nan})


# ---- names and configs -------------------------------------------------------------------------

@pytest.mark.parametrize("name,cls", [
    ("binary_crossentropy", losses.BinaryCrossentropy),
    ("categorical_crossentropy", losses.CategoricalCrossentropy),
    ("sparse_categorical_crossentropy", losses.SparseCategoricalCrossentropy),
    ("mean_squared_error", losses.MeanSquaredError), ("mse", losses.MeanSquaredError),
    ("mean_absolute_error", losses.MeanAbsoluteError), ("MAE", losses.MeanAbsoluteError),
    ("huber", losses.Huber), ("kl_divergence", losses.KLDivergence),
    ("kld", losses.KLDivergence), ("BinaryCrossentropy", losses.BinaryCrossentropy),
])
def test_get_by_name(name, cls):
    assert type(losses.get(name)) is cls
    assert type(losses.get(cls)) is cls


@pytest.mark.parametrize("loss", ALL_LOSSES + [losses.MeanSquaredError(name="m", reduction="sum")],
                         ids=repr)
def test_config_round_trip(loss):
    config = loss.get_config()
    again = type(loss).from_config(config)
    assert again.get_config() == config and type(again) is type(loss)
    assert losses.get(losses.serialize(loss)).get_config() == config
    y, p = data_for(loss, n=3, k=2)
    assert again(y, p) == loss(y, p)


def test_get_errors():
    assert losses.get(ALL_LOSSES[0]) is ALL_LOSSES[0]
    with pytest.raises(ValueError, match="unknown loss 'crossent'"):
        losses.get("crossent")
    with pytest.raises(TypeError, match="loss must be a name"):
        losses.get(3)
    with pytest.raises(ValueError, match="unknown loss class"):
        losses.get({"class_name": "Nope", "config": {}})
