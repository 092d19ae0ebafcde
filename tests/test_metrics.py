"""fastnet.metrics: every metric against a NumPy reference computed here (Keras 3 semantics,
no sklearn), Keras's documented examples, streaming over uneven batches, thread-count
determinism of the metric ops, names/configs, bad inputs, and metrics inside ``fit``."""
import numpy as np
import pytest

import fastnet
from fastnet import layers, losses, metrics, models
from fastnet.ops import metrics as metric_ops

EPS = 1e-7


# ---- NumPy references --------------------------------------------------------------------------

def weighted_mean(per_sample, w):
    w = np.ones(len(per_sample)) if w is None else np.asarray(w, np.float64)
    return (w * per_sample).sum() / w.sum()


def ref_counts(y, p, thresholds, w=None):
    """tp, fp, fn, tn per threshold, Keras's direct definition (label != 0, pred > t), the
    thresholds cast to the predictions' dtype as Keras does."""
    lab = (np.asarray(y) != 0).reshape(len(p), -1)
    cast = np.asarray(p).dtype.type if np.asarray(p).dtype.kind == "f" else np.float64
    thresholds = [float(cast(t)) for t in thresholds]
    p = np.asarray(p, np.float64).reshape(len(p), -1)
    ww = np.ones_like(p) if w is None else np.broadcast_to(np.asarray(w)[:, None], p.shape)
    out = []
    for t in thresholds:
        pos = p > t
        out.append([(ww * (lab & pos)).sum(), (ww * (~lab & pos)).sum(),
                    (ww * (lab & ~pos)).sum(), (ww * (~lab & ~pos)).sum()])
    return np.array(out).T


def ref_auc(y, p, num_thresholds=200, curve="ROC", method="interpolation", w=None):
    """Keras's AUC, transcribed: evenly spaced thresholds with epsilon ends, predictions
    clipped to [0, 1], Riemann sums (PR interpolation after Davis & Goadrich)."""
    t = num_thresholds
    thr = [-EPS] + [(i + 1) / (t - 1) for i in range(t - 2)] + [1 + EPS]
    tp, fp, fn, tn = ref_counts(y, np.clip(p, 0, 1), thr, w)

    def div(a, b):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0.0)

    if curve == "PR" and method == "interpolation":
        dtp = tp[:-1] - tp[1:]
        pp = tp + fp
        dp = pp[:-1] - pp[1:]
        slope = div(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * pp[1:]
        ratio = np.where((pp[:-1] > 0) & (pp[1:] > 0), div(pp[:-1], np.maximum(pp[1:], 0)), 1)
        return div(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0)
                   ).sum()
    rec = div(tp, tp + fn)
    x, yy = (div(fp, fp + tn), rec) if curve == "ROC" else (rec, div(tp, tp + fp))
    h = {"interpolation": (yy[:-1] + yy[1:]) / 2, "minoring": np.minimum(yy[:-1], yy[1:]),
         "majoring": np.maximum(yy[:-1], yy[1:])}[method]
    return ((x[:-1] - x[1:]) * h).sum()


def ref_f1(y, p, threshold=None, average=None, w=None):
    if threshold is None:
        pb = (p >= p.max(1, keepdims=True)) & (np.abs(p) > 1e-9)
    else:
        pb = p > threshold
    pb = pb.astype(np.float64)
    ww = np.ones((len(p), 1)) if w is None else np.asarray(w, np.float64)[:, None]
    tp, fp = (ww * pb * y).sum(0), (ww * pb * (1 - y)).sum(0)
    fn, sup = (ww * (1 - pb) * y).sum(0), (ww * y).sum(0)
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    prec, rec = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
    f1 = 2 * prec * rec / (prec + rec + EPS)
    if average == "weighted":
        return (f1 * sup / (sup.sum() + EPS)).sum()
    return f1.mean() if average else f1


def classification_data(rng, n=97, c=6, dtype=np.float32):
    p = rng.dirichlet(np.ones(c), n).astype(dtype)
    p[::7] = np.round(p[::7], 1)              # ties
    labels = rng.integers(0, c, n)
    labels[::3] = p[::3].argmax(1)            # some hits
    return p, labels, np.eye(c, dtype=dtype)[labels]


# ---- accuracies --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accuracies_match_numpy(dtype):
    rng = np.random.default_rng(0)
    p, labels, onehot = classification_data(rng, dtype=dtype)
    w = rng.uniform(0, 2, len(p))
    for weights in (None, w):
        m = metrics.SparseCategoricalAccuracy()
        m.update_state(labels, p, sample_weight=weights)
        assert m.result() == pytest.approx(weighted_mean(p.argmax(1) == labels, weights))
        m = metrics.CategoricalAccuracy()
        m.update_state(onehot, p, sample_weight=weights)
        assert m.result() == pytest.approx(weighted_mean(p.argmax(1) == labels, weights))
        for k in (1, 2, 5, 6):
            label_score = p[np.arange(len(p)), labels]
            hits = (p > label_score[:, None]).sum(1) < k       # ties at the boundary count
            for m, y in ((metrics.SparseTopKCategoricalAccuracy(k), labels),
                         (metrics.TopKCategoricalAccuracy(k), onehot)):
                m.update_state(y, p, sample_weight=weights)
                assert m.result() == pytest.approx(weighted_mean(hits, weights))
        yb = (rng.uniform(size=(len(p), 3)) > 0.5).astype(dtype)
        pb = rng.uniform(size=(len(p), 3)).astype(dtype)
        for thr in (0.5, 0.3):
            m = metrics.BinaryAccuracy(threshold=thr)
            m.update_state(yb, pb, sample_weight=weights)
            per_sample = (yb == (pb > thr)).mean(1)
            assert m.result() == pytest.approx(weighted_mean(per_sample, weights))
        m = metrics.Accuracy()
        yi = rng.integers(0, 3, (len(p), 2))
        pi = rng.integers(0, 3, (len(p), 2))
        m.update_state(yi, pi, sample_weight=weights)
        assert m.result() == pytest.approx(weighted_mean((yi == pi).mean(1), weights))


def test_keras_documented_examples():
    def run(m, y, p, w=None):
        m.update_state(np.array(y), np.array(p), sample_weight=w)
        return m.result()

    assert run(metrics.Accuracy(), [[1], [2], [3], [4]], [[0], [2], [3], [4]]) == 0.75
    assert run(metrics.Accuracy(), [[1], [2], [3], [4]], [[0], [2], [3], [4]],
               [1, 1, 0, 0]) == 0.5
    assert run(metrics.BinaryAccuracy(), [[1], [1], [0], [0]], [[0.98], [1], [0], [0.6]]) == 0.75
    assert run(metrics.CategoricalAccuracy(), [[0, 0, 1], [0, 1, 0]],
               [[0.1, 0.9, 0.8], [0.05, 0.95, 0]], [0.7, 0.3]) == pytest.approx(0.3)
    assert run(metrics.SparseCategoricalAccuracy(), [[2], [1]],
               [[0.1, 0.6, 0.3], [0.05, 0.95, 0]], [0.7, 0.3]) == pytest.approx(0.3)
    assert run(metrics.TopKCategoricalAccuracy(k=1), [[0, 0, 1], [0, 1, 0]],
               [[0.1, 0.9, 0.8], [0.05, 0.95, 0]]) == 0.5
    assert run(metrics.SparseTopKCategoricalAccuracy(k=1), [2, 1],
               [[0.1, 0.9, 0.8], [0.05, 0.95, 0]], [0.7, 0.3]) == pytest.approx(0.3)
    assert run(metrics.Precision(), [0, 1, 1, 1], [1, 0, 1, 1]) == pytest.approx(2 / 3)
    assert run(metrics.Precision(), [0, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0]) == 1.0
    assert run(metrics.Precision(top_k=2), [[0, 0, 1, 1]], [[1, 1, 1, 1]]) == 0.0
    assert run(metrics.Precision(top_k=4), [[0, 0, 1, 1]], [[1, 1, 1, 1]]) == 0.5
    assert run(metrics.Recall(), [0, 1, 1, 1], [1, 0, 1, 1]) == pytest.approx(2 / 3)
    assert run(metrics.Recall(), [0, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0]) == 1.0
    assert run(metrics.AUC(num_thresholds=3), [0, 0, 1, 1], [0, 0.5, 0.3, 0.9]) == 0.75
    assert run(metrics.AUC(num_thresholds=3), [0, 0, 1, 1], [0, 0.5, 0.3, 0.9],
               [1, 0, 0, 1]) == 1.0
    np.testing.assert_allclose(
        run(metrics.F1Score(threshold=0.5), [[1, 1, 1], [1, 0, 0], [1, 1, 0]],
            np.array([[0.2, 0.6, 0.7], [0.2, 0.6, 0.6], [0.6, 0.8, 0.0]], np.float32)),
        [0.5, 0.8, 0.6666667], rtol=1e-6)
    m = metrics.Mean()
    m.update_state([1, 3, 5, 7])
    assert m.result() == 4.0
    m.reset_state()
    m.update_state([1, 3, 5, 7], sample_weight=[1, 1, 0, 0])
    assert m.result() == 2.0


# ---- precision, recall, AUC, F1 ----------------------------------------------------------------

def test_precision_recall_match_numpy():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(120, 4)) > 0.6).astype(np.float32)
    p = rng.uniform(size=(120, 4)).astype(np.float32)
    p[::5] = np.round(p[::5], 1)              # predictions exactly at thresholds
    w = rng.uniform(0, 2, 120).astype(np.float32).astype(np.float64)  # exact in float32
    thresholds = [0.7, 0.0, 0.5, 0.3, 1.0]   # unsorted on purpose: results keep this order
    for weights in (None, w):
        tp, fp, fn, _ = ref_counts(y, p, thresholds, weights)
        prec, rec = metrics.Precision(thresholds), metrics.Recall(thresholds)
        prec.update_state(y, p, sample_weight=weights)
        rec.update_state(y, p, sample_weight=weights)
        with np.errstate(invalid="ignore"):
            ref_p = np.where(tp + fp > 0, tp / (tp + fp), 0)
            ref_r = np.where(tp + fn > 0, tp / (tp + fn), 0)
        np.testing.assert_allclose(prec.result(), ref_p, rtol=1e-12)
        np.testing.assert_allclose(rec.result(), ref_r, rtol=1e-12)
        for cid in (0, 3):
            tp, fp, fn, _ = ref_counts(y[:, cid], p[:, cid], [0.5], weights)
            m = metrics.Precision(class_id=cid)
            m.update_state(y, p, sample_weight=weights)
            assert m.result() == pytest.approx(float(tp[0] / (tp[0] + fp[0])))
            m = metrics.Recall(class_id=cid, thresholds=0.5)
            m.update_state(y, p, sample_weight=weights)
            assert m.result() == pytest.approx(float(tp[0] / (tp[0] + fn[0])))
    # thresholds are compared in the predictions' precision, as Keras casts them: 0.1f is not
    # above the threshold 0.1 for float32 predictions (it is in float64)
    for dtype, expected in ((np.float32, 0.0), (np.float64, 1.0)):
        m = metrics.Recall(thresholds=0.1)
        m.update_state(np.array([1.0]), np.array([np.float32(0.1)], dtype))
        assert m.result() == expected
    # nothing predicted positive / no positives: 0, as divide_no_nan
    m = metrics.Precision()
    m.update_state([[1], [0]], [[0.1], [0.2]])
    assert m.result() == 0.0
    # integer labels against (N, C) scores are one-hot encoded
    labels = rng.integers(0, 4, 120)
    m1, m2 = metrics.Recall(), metrics.Recall()
    m1.update_state(labels, p)
    m2.update_state(np.eye(4)[labels], p)
    assert m1.result() == m2.result()


@pytest.mark.parametrize("curve,method", [("ROC", "interpolation"), ("ROC", "minoring"),
                                          ("ROC", "majoring"), ("PR", "interpolation"),
                                          ("PR", "minoring"), ("PR", "majoring")])
def test_auc_matches_keras_algorithm(curve, method):
    rng = np.random.default_rng(2)
    y = (rng.uniform(size=(300, 2)) > 0.5).astype(np.float64)
    p = np.clip(0.3 * y + rng.uniform(size=(300, 2)) * 0.8, 0, 1)
    p[::4] = np.round(p[::4], 2)
    w = rng.uniform(0, 2, 300)
    for t in (3, 50, 200):
        for weights in (None, w):
            m = metrics.AUC(num_thresholds=t, curve=curve, summation_method=method)
            m.update_state(y, p, sample_weight=weights)
            np.testing.assert_allclose(m.result(), ref_auc(y, p, t, curve, method, weights),
                                       rtol=1e-12, atol=1e-15)


def test_auc_approximates_the_exact_roc_auc_and_options():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    p = np.clip(0.25 * y + rng.uniform(size=2000) * 0.75, 0, 1)
    pos, neg = p[y == 1], p[y == 0]
    exact = ((pos[:, None] > neg[None, :]).mean()
             + 0.5 * (pos[:, None] == neg[None, :]).mean())        # Mann-Whitney
    m = metrics.AUC(num_thresholds=2000)
    m.update_state(y, p)
    assert m.result() == pytest.approx(exact, abs=2e-3)
    # from_logits applies a sigmoid
    logits = np.log(p + 1e-12) - np.log1p(-p + 1e-12)
    m1, m2 = metrics.AUC(from_logits=True), metrics.AUC()
    m1.update_state(y, logits)
    m2.update_state(y, 1 / (1 + np.exp(-logits)))
    assert m1.result() == pytest.approx(m2.result(), abs=1e-12)
    # explicit evenly spaced thresholds take the same path as num_thresholds
    m3 = metrics.AUC(thresholds=[0.25, 0.5, 0.75])
    m4 = metrics.AUC(num_thresholds=5)
    m3.update_state(y, p)
    m4.update_state(y, p)
    assert m3.result() == m4.result() and m3.num_thresholds == 5
    # uneven thresholds: direct comparison against [-eps, *thresholds, 1 + eps]
    m5 = metrics.AUC(thresholds=[0.9, 0.1, 0.45])
    m5.update_state(y, p)
    tp, fp, fn, tn = ref_counts(y, p, [-EPS, 0.1, 0.45, 0.9, 1 + EPS])
    tpr, fpr = tp / (tp + fn), fp / (fp + tn)
    assert m5.result() == pytest.approx(((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2).sum())
    assert m5.thresholds == [-EPS, 0.1, 0.45, 0.9, 1 + EPS]


@pytest.mark.parametrize("average", [None, "micro", "macro", "weighted"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_f1_matches_numpy(average, threshold):
    rng = np.random.default_rng(4)
    p, labels, onehot = classification_data(rng, n=150, c=5, dtype=np.float64)
    p[0] = 0.0                                 # an all-zero row predicts nothing
    soft = onehot * 0.8 + 0.04                 # soft targets are allowed
    w = rng.uniform(0, 2, 150)
    for y in (onehot, soft):
        for weights in (None, w):
            m = metrics.F1Score(average=average, threshold=threshold)
            m.update_state(y, p, sample_weight=weights)
            np.testing.assert_allclose(m.result(), ref_f1(y, p, threshold, average, weights),
                                       rtol=1e-12)
    m1, m2 = metrics.F1Score("macro"), metrics.F1Score("macro")
    m1.update_state(labels, p)                 # integer labels: one-hot on the fly
    m2.update_state(onehot, p)
    assert m1.result() == m2.result()


def test_mean_and_loss_metrics():
    rng = np.random.default_rng(5)
    v = rng.standard_normal((10, 3))
    w = rng.uniform(0, 1, 10)
    m = metrics.Mean()
    m.update_state(v, sample_weight=w)
    m.update_state(2.5)
    assert m.result() == pytest.approx(((w * v.mean(1)).sum() + 2.5) / (w.sum() + 1))
    y, p = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    for m, f in ((metrics.MeanSquaredError(), lambda d: d * d),
                 (metrics.MeanAbsoluteError(), np.abs)):
        m.update_state(y, p, sample_weight=w)
        assert m.result() == pytest.approx(weighted_mean(f(p - y).mean(1), w))


def test_confusion_matrix():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 7, 5000)
    yp = rng.integers(0, 7, 5000)
    ref = np.zeros((7, 7), np.int64)
    np.add.at(ref, (y, yp), 1)
    cm = metrics.confusion_matrix(y, yp)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, ref)
    scores = rng.standard_normal((5000, 9))
    ref = np.zeros((9, 9), np.int64)
    np.add.at(ref, (y, scores.argmax(1)), 1)
    np.testing.assert_array_equal(metrics.confusion_matrix(np.eye(9)[y], scores), ref)
    np.testing.assert_array_equal(metrics.confusion_matrix(y, scores.argmax(1), 9), ref)
    w = rng.uniform(size=5000)
    refw = np.zeros((9, 9))
    np.add.at(refw, (y, scores.argmax(1)), w)
    np.testing.assert_allclose(metrics.confusion_matrix(y, scores, weights=w), refw,
                               rtol=1e-12)
    np.testing.assert_array_equal(metrics.confusion_matrix([1, 2, 4], [2, 2, 4]),
                                  [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0],
                                   [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])


# ---- streaming: uneven batches equal one big batch ---------------------------------------------

STREAMING = [
    ("sparse", metrics.SparseCategoricalAccuracy), ("onehot", metrics.CategoricalAccuracy),
    ("sparse", lambda: metrics.SparseTopKCategoricalAccuracy(2)),
    ("onehot", lambda: metrics.TopKCategoricalAccuracy(3)),
    ("binary", metrics.BinaryAccuracy), ("binary", metrics.Accuracy),
    ("binary", lambda: metrics.Precision([0.2, 0.5, 0.8])), ("binary", metrics.Recall),
    ("onehot", lambda: metrics.Precision(class_id=1)), ("binary", metrics.AUC),
    ("binary", lambda: metrics.AUC(curve="PR")), ("onehot", metrics.F1Score),
    ("onehot", lambda: metrics.F1Score("micro", 0.2)), ("binary", metrics.MeanSquaredError),
    ("binary", metrics.MeanAbsoluteError),
]


@pytest.mark.parametrize("kind,make", STREAMING)
def test_streaming_over_uneven_batches(kind, make):
    rng = np.random.default_rng(7)
    p, labels, onehot = classification_data(rng, n=103, c=5)
    y = {"sparse": labels, "onehot": onehot, "binary": np.round(p)}[kind]
    w = rng.uniform(0, 2, 103)
    for weights in (None, w):
        whole = make()
        whole.update_state(y, p, sample_weight=weights)
        streamed = make()
        streamed.update_state(y[:5], p[:5], sample_weight=None if weights is None else w[:5])
        streamed.reset_state()   # reset really forgets
        for lo, hi in ((0, 1), (1, 8), (8, 38), (38, 103)):
            streamed.update_state(y[lo:hi], p[lo:hi],
                                  sample_weight=None if weights is None else weights[lo:hi])
        np.testing.assert_allclose(streamed.result(), whole.result(), rtol=1e-12, atol=1e-15)


# ---- thread-count determinism of the metric ops ------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_metric_ops_bitwise_identical_across_threads(dtype, monkeypatch):
    monkeypatch.setattr(metric_ops, "PARALLEL_MIN_CHEAP", 1)
    rng = np.random.default_rng(8)
    n, c = 40000, 10
    p = rng.uniform(size=(n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    onehot = np.eye(c, dtype=dtype)[labels]
    w = rng.uniform(0, 2, n).astype(dtype)
    big_labels = rng.integers(0, 5, 600_000)
    big_preds = rng.integers(0, 5, 600_000)

    def run():
        return [
            metric_ops.sparse_categorical_accuracy_sums(p, labels, sample_weight=w),
            metric_ops.categorical_accuracy_sums(p, onehot, sample_weight=w),
            metric_ops.sparse_top_k_accuracy_sums(p, labels, 3, sample_weight=w),
            metric_ops.binary_accuracy_sums(p, onehot, sample_weight=w),
            metric_ops.threshold_histogram(p, onehot, num_thresholds=200,
                                           sample_weight=w).tobytes(),
            metric_ops.threshold_histogram(p, onehot, thresholds=[0.1, 0.5],
                                           sample_weight=w).tobytes(),
            metric_ops.fscore_counts(p, onehot, sample_weight=w).tobytes(),
            metric_ops.argmax(p).tobytes(),
            metric_ops.confusion_matrix(big_labels, big_preds, 5).tobytes(),
        ]

    old = fastnet.get_num_threads()
    try:
        fastnet.set_num_threads(1)
        one = run()
        fastnet.set_num_threads(2)
        assert run() == one
    finally:
        fastnet.set_num_threads(old)


# ---- names, lookup, configs --------------------------------------------------------------------

def test_get_resolves_accuracy_by_loss():
    assert type(metrics.get("accuracy", losses.BinaryCrossentropy())) is metrics.BinaryAccuracy
    assert type(metrics.get("acc", losses.CategoricalCrossentropy())) is \
        metrics.CategoricalAccuracy
    assert type(metrics.get("accuracy", losses.SparseCategoricalCrossentropy())) is \
        metrics.SparseCategoricalAccuracy
    assert type(metrics.get("accuracy", losses.MeanSquaredError(), (None, 1))) is \
        metrics.BinaryAccuracy
    assert type(metrics.get("accuracy", losses.MeanSquaredError(), (None, 4))) is \
        metrics.CategoricalAccuracy
    assert metrics.get("acc", losses.BinaryCrossentropy()).name == "acc"


@pytest.mark.parametrize("name,cls", [
    ("binary_accuracy", metrics.BinaryAccuracy),
    ("categorical_accuracy", metrics.CategoricalAccuracy),
    ("sparse_categorical_accuracy", metrics.SparseCategoricalAccuracy),
    ("top_k_categorical_accuracy", metrics.TopKCategoricalAccuracy),
    ("sparse_top_k_categorical_accuracy", metrics.SparseTopKCategoricalAccuracy),
    ("precision", metrics.Precision), ("recall", metrics.Recall), ("auc", metrics.AUC),
    ("f1_score", metrics.F1Score), ("mse", metrics.MeanSquaredError),
    ("mae", metrics.MeanAbsoluteError), ("AUC", metrics.AUC), ("F1Score", metrics.F1Score),
])
def test_get_by_name(name, cls):
    m = metrics.get(name)
    assert type(m) is cls
    assert type(metrics.get(cls)) is cls
    again = metrics.get(metrics.serialize(m))
    assert type(again) is cls and again.get_config() == m.get_config()


def test_configs_round_trip():
    for m in (metrics.Precision([0.3, 0.6], class_id=2, name="p"), metrics.Recall(top_k=2),
              metrics.AUC(num_thresholds=50, curve="PR", summation_method="minoring"),
              metrics.AUC(thresholds=[0.2, 0.7]), metrics.F1Score("weighted", 0.4),
              metrics.BinaryAccuracy(threshold=0.7), metrics.TopKCategoricalAccuracy(3)):
        again = type(m).from_config(m.get_config())
        assert again.get_config() == m.get_config()
    assert metrics.Precision().name == "precision" and metrics.AUC().name == "auc"
    assert metrics.F1Score().name == "f1_score"


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        metrics.get("f1")
    with pytest.raises(TypeError, match="metric must be a name"):
        metrics.get(3.0)
    with pytest.raises(ValueError, match=r"threshold values must be numbers in \[0, 1\]"):
        metrics.Precision(thresholds=[0.5, 2])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        metrics.BinaryAccuracy(threshold=1.0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.TopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match="average must be None"):
        metrics.F1Score(average="samples")
    with pytest.raises(ValueError, match="num_thresholds must be an integer > 1"):
        metrics.AUC(num_thresholds=1)
    with pytest.raises(ValueError, match="curve must be"):
        metrics.AUC(curve="XY")
    with pytest.raises(NotImplementedError, match="multi_label"):
        metrics.AUC(multi_label=True)
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="class_id 5"):
        metrics.Precision(class_id=5).update_state(np.zeros((4, 3)), p)
    with pytest.raises(ValueError, match="y_true must have the shape of y_pred"):
        metrics.CategoricalAccuracy().update_state(np.zeros((4, 2)), p)
    with pytest.raises(ValueError, match="one class label per row"):
        metrics.SparseCategoricalAccuracy().update_state(np.zeros((4, 2)), p)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        metrics.BinaryAccuracy().update_state(np.zeros((4, 3)), p, sample_weight=[1, 2])
    with pytest.raises(TypeError, match="y_pred must be numeric"):
        metrics.Accuracy().update_state([1], ["a"])
    f1 = metrics.F1Score()
    f1.update_state(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="4 classes but earlier batches had 3"):
        f1.update_state(np.eye(4), np.eye(4))
    with pytest.raises(ValueError, match="expects y_pred"):
        metrics.F1Score().update_state(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"predictions must be in \[0, 3\)"):
        metrics.confusion_matrix([0, 1], [0, 3], num_classes=3)
    with pytest.raises(ValueError, match="same number of samples"):
        metrics.confusion_matrix([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="whole-number class ids"):
        metrics.confusion_matrix([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match="thresholds must be sorted"):
        metric_ops.threshold_histogram(p, p, thresholds=[0.5, 0.1])
    with pytest.raises(TypeError, match="labels must have dtype float64"):
        metric_ops.threshold_histogram(p, p.astype(np.float32), num_thresholds=3)
    with pytest.raises(ValueError, match="give thresholds or num_thresholds"):
        metric_ops.threshold_histogram(p, p, thresholds=[0.5], num_thresholds=3)


# ---- inside fit --------------------------------------------------------------------------------

def test_metrics_in_fit_and_evaluate():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    fastnet.utils.set_random_seed(0)
    model = models.Sequential([layers.Dense(8, activation="relu", input_shape=(4,)),
                               layers.Dense(1, activation="sigmoid")])
    model.compile("adam", losses.BinaryCrossentropy(label_smoothing=0.05),
                  metrics=["accuracy", "precision", "recall", "auc",
                           metrics.F1Score("micro", threshold=0.5)])
    hist = model.fit(x, y, epochs=2, batch_size=10, verbose=0)
    for key in ("loss", "accuracy", "precision", "recall", "auc", "f1_score"):
        assert np.all(np.isfinite(np.asarray(hist.history[key], np.float64))), key
    logs = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    assert logs["accuracy"] == pytest.approx(np.mean((pred[:, 0] > 0.5) == y))
    m = metrics.AUC()
    m.update_state(y, pred)
    assert logs["auc"] == pytest.approx(m.result(), abs=1e-12)
