"""Streaming metrics with Keras 3 names and semantics: ``update_state(y_true, y_pred,
sample_weight=None)`` adds a batch, ``result()`` reads the value over everything added since
``reset_state()``; the result does not depend on how the data was cut into batches.

Each update is one compiled pass (``fastnet.ops.metrics``) that returns sums; the metric keeps
the sums (in float64) and divides in ``result``.  Per-sample weights ``sample_weight`` (N,)
weight every sample as in Keras.  Where Keras would see a 1-D y_pred as one vector, a metric
here sees N samples of one output (so that streaming stays exact).

Extensions over Keras: Precision, Recall, AUC and F1Score also take integer class labels
(N,) or (N, 1) for (N, C) predictions with C > 1 (one-hot encoded on the fly), which is what a
model compiled with ``sparse_categorical_crossentropy`` passes them.
"""
import numbers

import numpy as np

from fastnet.ops import metrics as metric_ops
from fastnet.utils import serialization as _serial

__all__ = [
    "Metric", "Mean", "Accuracy", "BinaryAccuracy", "CategoricalAccuracy",
    "SparseCategoricalAccuracy", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy",
    "Precision", "Recall", "F1Score", "AUC", "MeanSquaredError", "MeanAbsoluteError",
    "confusion_matrix", "get", "serialize", "deserialize",
]

EPSILON = 1e-7  # keras.backend.epsilon()


# ---- input conversion --------------------------------------------------------------------------

def _pred(y_pred):
    """y_pred as a C-contiguous float32/float64 array with a batch axis."""
    y = np.asarray(y_pred)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"y_pred must be numeric, got dtype {y.dtype}")
    if y.dtype not in (np.float32, np.float64):
        y = y.astype(np.float64)
    if y.ndim == 0 or y.shape[0] == 0:
        raise ValueError(f"y_pred must have a batch axis and at least one sample, got shape "
                         f"{y.shape}")
    return np.ascontiguousarray(y)


def _same_rank(y, shape):
    """Keras's squeeze_or_expand_to_same_rank for y_true against a prediction shape."""
    if y.ndim == len(shape) - 1 and shape[-1] == 1:
        return y.reshape(y.shape + (1,))
    if y.ndim == len(shape) + 1 and y.shape[-1] == 1:
        return y.reshape(y.shape[:-1])
    return y


def _dense_true(y_true, pred, what="y_true"):
    """y_true with pred's shape and dtype."""
    y = np.asarray(y_true)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be numeric, got dtype {y.dtype}")
    y = _same_rank(y, pred.shape)
    if y.shape != pred.shape:
        raise ValueError(f"{what} must have the shape of y_pred {pred.shape}, got {y.shape}")
    return np.ascontiguousarray(y, dtype=pred.dtype)


def _int_labels(y_true, pred):
    """Class labels for (N, ..., C) predictions: an integer array of pred.shape[:-1]; float
    labels that are not whole numbers become -1 (they match no class)."""
    y = np.asarray(y_true)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"y_true must hold class labels, got dtype {y.dtype}")
    lead = pred.shape[:-1]
    if y.shape == lead + (1,):
        y = y.reshape(lead)
    if y.shape != lead:
        raise ValueError(f"y_true must hold one class label per row, shape {lead} (or "
                         f"{lead + (1,)}), for y_pred {pred.shape}; got {y.shape}")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.floor(y)) & (np.abs(y) < 2.0 ** 62)
        y = np.where(whole, y, -1).astype(np.int64)
    elif y.dtype.kind == "b":
        y = y.astype(np.int64)
    return y


def _binary_true(y_true, pred):
    """y_true for the thresholded metrics: pred's shape and dtype; integer labels (N,)/(N, 1)
    against (N, C > 1) predictions are one-hot encoded."""
    y = np.asarray(y_true)
    if y.dtype.kind in "iu" and pred.ndim >= 2 and pred.shape[-1] > 1 and \
            y.shape in (pred.shape[:-1], pred.shape[:-1] + (1,)):
        labels = y.reshape(-1)
        onehot = np.zeros((labels.size, pred.shape[-1]), dtype=pred.dtype)
        ok = (labels >= 0) & (labels < pred.shape[-1])
        onehot[np.nonzero(ok)[0], labels[ok]] = 1
        return onehot.reshape(pred.shape)
    return _dense_true(y_true, pred)


def _weights(sample_weight, n):
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "fiub":
        raise TypeError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
    if w.ndim == 0:
        return np.full(n, w, dtype=np.float64)
    if w.shape not in ((n,), (n, 1)):
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per sample), "
                         f"got {w.shape}")
    return w.reshape(n)


def _snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or
                                   (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _divide_no_nan(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


# ---- base classes ------------------------------------------------------------------------------

class Metric:
    """Base class: ``update_state``, ``result``, ``reset_state``, ``name``, ``get_config``."""

    def __init__(self, name=None, dtype=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {type(name).__name__}")
        self.name = name or _snake(type(self).__name__)
        self.dtype = dtype  # accepted for Keras compatibility; results are float64
        self.reset_state()

    def reset_state(self):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Add one batch and return the result so far."""
        self.update_state(y_true, y_pred, sample_weight=sample_weight)
        return self.result()

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class _MeanMetric(Metric):
    """Weighted mean of per-sample values: total = sum w_i v_i, count = sum w_i."""

    def reset_state(self):
        self.total, self.count = 0.0, 0.0

    def result(self):
        return self.total / self.count if self.count else 0.0

    def _add(self, sums):
        self.total += sums[0]
        self.count += sums[1]


class Mean(_MeanMetric):
    """The (weighted) mean of the values given to ``update_state(values, sample_weight=None)``:
    each sample's value is the mean of its entries (a scalar is one sample)."""

    def __init__(self, name="mean", dtype=None):
        super().__init__(name, dtype)

    def update_state(self, values, sample_weight=None):
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 0:
            w = 1.0 if sample_weight is None else float(np.asarray(sample_weight))
            self.total += w * float(v)
            self.count += w
            return
        if v.size == 0:
            return
        per_sample = v.reshape(v.shape[0], -1).mean(axis=1)
        w = _weights(sample_weight, v.shape[0])
        if w is None:
            self.total += float(per_sample.sum())
            self.count += float(v.shape[0])
        else:
            w = w.astype(np.float64)
            self.total += float(np.sum(w * per_sample))
            self.count += float(w.sum())


# ---- accuracies --------------------------------------------------------------------------------

class Accuracy(_MeanMetric):
    """How often y_pred equals y_true exactly (per sample: the fraction of equal entries)."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(name, dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        self._add(metric_ops.equal_accuracy_sums(pred, _dense_true(y_true, pred),
                                                 sample_weight=_weights(sample_weight,
                                                                        pred.shape[0])))


class BinaryAccuracy(_MeanMetric):
    """How often (y_pred > threshold) equals y_true (0/1 targets), per sample the fraction of
    its outputs."""

    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be a number in (0, 1), "
                            f"got {type(threshold).__name__}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        super().__init__(name, dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        self._add(metric_ops.binary_accuracy_sums(
            pred, _dense_true(y_true, pred), threshold=self.threshold,
            sample_weight=_weights(sample_weight, pred.shape[0])))

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class CategoricalAccuracy(_MeanMetric):
    """How often argmax(y_pred) equals argmax(y_true) (one-hot targets of y_pred's shape)."""

    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(name, dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        if pred.ndim < 2:
            raise ValueError(f"y_pred must be (batch, classes), got shape {pred.shape}")
        self._add(metric_ops.categorical_accuracy_sums(
            pred, _dense_true(y_true, pred), sample_weight=_weights(sample_weight,
                                                                    pred.shape[0])))


class SparseCategoricalAccuracy(_MeanMetric):
    """How often argmax(y_pred) equals the integer label y_true ((N,) or (N, 1))."""

    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(name, dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        if pred.ndim < 2:
            raise ValueError(f"y_pred must be (batch, classes), got shape {pred.shape}")
        self._add(metric_ops.sparse_categorical_accuracy_sums(
            pred, _int_labels(y_true, pred), sample_weight=_weights(sample_weight,
                                                                    pred.shape[0])))


def _check_k(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


class SparseTopKCategoricalAccuracy(_MeanMetric):
    """How often the integer label is among the k highest predictions (ties at the k-th value
    count as hits, as TensorFlow's in_top_k)."""

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy", dtype=None):
        self.k = _check_k(k)
        super().__init__(name, dtype)

    def _labels(self, y_true, pred):
        return _int_labels(y_true, pred)

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        if pred.ndim < 2:
            raise ValueError(f"y_pred must be (batch, classes), got shape {pred.shape}")
        self._add(metric_ops.sparse_top_k_accuracy_sums(
            pred, self._labels(y_true, pred), self.k,
            sample_weight=_weights(sample_weight, pred.shape[0])))

    def get_config(self):
        return {"name": self.name, "k": self.k}


class TopKCategoricalAccuracy(SparseTopKCategoricalAccuracy):
    """How often argmax(y_true) (one-hot targets) is among the k highest predictions."""

    def __init__(self, k=5, name="top_k_categorical_accuracy", dtype=None):
        super().__init__(k, name, dtype)

    def _labels(self, y_true, pred):
        return metric_ops.argmax(_dense_true(y_true, pred))


# ---- confusion-based metrics -------------------------------------------------------------------

def _check_thresholds(thresholds, default):
    if thresholds is None:
        return [default]
    values = [thresholds] if isinstance(thresholds, numbers.Real) else list(thresholds)
    if not values:
        raise ValueError("thresholds must not be empty")
    for t in values:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real) \
                or not 0 <= t <= 1:
            raise ValueError(f"threshold values must be numbers in [0, 1], got {t!r}")
    return [float(t) for t in values]


class _ThresholdMetric(Metric):
    """Accumulates the weighted positives/negatives per threshold bucket (see
    fastnet.ops.metrics.threshold_histogram); tp/fp/tn/fn per threshold derive from them."""

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        self.init_thresholds = thresholds if thresholds is None or \
            isinstance(thresholds, numbers.Real) else [float(t) for t in thresholds]
        # Keras: with top_k and no thresholds, every kept (top-k) prediction is positive
        self.thresholds = [-1e10] if thresholds is None and top_k is not None \
            else _check_thresholds(thresholds, 0.5)
        if top_k is not None:
            top_k = _check_k(top_k)
        if class_id is not None and (isinstance(class_id, (bool, np.bool_)) or
                                     not isinstance(class_id, numbers.Integral) or class_id < 0):
            raise ValueError(f"class_id must be a non-negative integer or None, got {class_id!r}")
        self.top_k, self.class_id = top_k, class_id
        self._order = np.argsort(self.thresholds, kind="stable")
        self._sorted = np.asarray(self.thresholds, np.float64)[self._order]
        super().__init__(name, dtype)

    def reset_state(self):
        self._hist = np.zeros((2, len(self.thresholds) + 1))

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        true = _binary_true(y_true, pred)
        w = _weights(sample_weight, pred.shape[0])
        if self.top_k is not None:
            if pred.ndim < 2:
                raise ValueError(f"top_k needs y_pred (batch, classes), got {pred.shape}")
            pred = _filter_top_k(pred, self.top_k)
        if self.class_id is not None:
            if pred.ndim < 2 or self.class_id >= pred.shape[-1]:
                raise ValueError(f"class_id {self.class_id} needs y_pred (batch, classes) with "
                                 f"more than {self.class_id} classes, got {pred.shape}")
            pred = np.ascontiguousarray(pred[..., self.class_id])
            true = np.ascontiguousarray(true[..., self.class_id])
        self._hist += metric_ops.threshold_histogram(pred, true, thresholds=self._sorted,
                                                     sample_weight=w)

    def _confusion(self):
        """(tp, fp, fn, tn) per threshold, in the order the thresholds were given."""
        pos, neg = self._hist
        above_pos = np.cumsum(pos[::-1])[::-1]   # above_pos[b] = pos[b:].sum()
        above_neg = np.cumsum(neg[::-1])[::-1]
        tp, fp = above_pos[1:], above_neg[1:]
        fn, tn = pos.sum() - tp, neg.sum() - fp
        inv = np.empty_like(self._order)
        inv[self._order] = np.arange(self._order.size)
        return tp[inv], fp[inv], fn[inv], tn[inv]

    def _value(self, values):
        return float(values[0]) if len(self.thresholds) == 1 else values

    def get_config(self):
        return {"name": self.name, "thresholds": self.init_thresholds, "top_k": self.top_k,
                "class_id": self.class_id}


def _filter_top_k(pred, k):
    """Keep each row's k largest values (the lower index first among ties, as top_k), set the
    others to -1e10 (Keras's _filter_top_k)."""
    cols = pred.shape[-1]
    if k >= cols:
        return pred
    rows = pred.reshape(-1, cols)
    keep = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.full_like(rows, -1e10)
    np.put_along_axis(out, keep, np.take_along_axis(rows, keep, axis=1), axis=1)
    return out.reshape(pred.shape)


class Precision(_ThresholdMetric):
    """tp / (tp + fp) with predictions y_pred > threshold (default 0.5) against labels
    y_true != 0, over every element (multi-label data is flattened) or one column
    (``class_id``); one value per threshold when several are given.  0 when nothing was
    predicted positive."""

    def result(self):
        tp, fp, _, _ = self._confusion()
        return self._value(_divide_no_nan(tp, tp + fp))


class Recall(_ThresholdMetric):
    """tp / (tp + fn), as ``Precision``; 0 when there are no positives."""

    def result(self):
        tp, _, fn, _ = self._confusion()
        return self._value(_divide_no_nan(tp, tp + fn))


class AUC(Metric):
    """Area under the ROC or PR curve, Keras's approximation: predictions are counted into
    ``num_thresholds`` buckets (evenly spaced thresholds with -eps and 1 + eps at the ends, or
    the given ``thresholds``), and the area is a Riemann sum over them ('interpolation' — for PR
    the Davis & Goadrich interpolation — 'minoring' or 'majoring').  Labels: y_true != 0 is
    positive.  ``from_logits``: apply a sigmoid to y_pred first.  Multi-label data is
    flattened (``multi_label=True`` is not supported)."""

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, dtype=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        if multi_label or num_labels is not None or label_weights is not None:
            raise NotImplementedError("AUC: multi_label, num_labels and label_weights are not "
                                      "supported; multi-label data is flattened")
        if str(curve).upper() not in ("ROC", "PR"):
            raise ValueError(f"curve must be 'ROC' or 'PR', got {curve!r}")
        if str(summation_method).lower() not in ("interpolation", "minoring", "majoring"):
            raise ValueError(f"summation_method must be 'interpolation', 'minoring' or "
                             f"'majoring', got {summation_method!r}")
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(f"from_logits must be a bool, got {type(from_logits).__name__}")
        self.curve, self.summation_method = str(curve).upper(), str(summation_method).lower()
        self.from_logits = bool(from_logits)
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            inner = sorted(_check_thresholds(thresholds, 0.5))
            self.num_thresholds = len(inner) + 2
            even = np.arange(self.num_thresholds, dtype=np.float32) / (self.num_thresholds - 1)
            self._even = self.num_thresholds >= 3 and bool(
                np.allclose([0.0] + inner + [1.0], even, atol=EPSILON))
        else:
            if isinstance(num_thresholds, (bool, np.bool_)) or \
                    not isinstance(num_thresholds, numbers.Integral):
                raise TypeError(f"num_thresholds must be an integer, "
                                f"got {type(num_thresholds).__name__}")
            if num_thresholds <= 1:
                raise ValueError(f"num_thresholds must be an integer > 1, got {num_thresholds}")
            self.num_thresholds = int(num_thresholds)
            inner = [(i + 1) / (self.num_thresholds - 1) for i in range(self.num_thresholds - 2)]
            self._even = True
        self._thresholds = np.array([0.0 - EPSILON] + inner + [1.0 + EPSILON])
        super().__init__(name, dtype)

    @property
    def thresholds(self):
        return list(self._thresholds)

    def reset_state(self):
        self._hist = np.zeros((2, self.num_thresholds + 1))

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        true = _binary_true(y_true, pred)
        if self.from_logits:
            pred = np.exp(-np.logaddexp(0, -pred)).astype(pred.dtype)  # stable sigmoid
        w = _weights(sample_weight, pred.shape[0])
        if self._even:
            hist = metric_ops.threshold_histogram(pred, true, num_thresholds=self.num_thresholds,
                                                  sample_weight=w)
        else:
            hist = metric_ops.threshold_histogram(pred, true, thresholds=self._thresholds,
                                                  sample_weight=w)
        self._hist += hist

    def _confusion(self):
        pos, neg = self._hist
        tp = np.cumsum(pos[::-1])[::-1][1:]
        fp = np.cumsum(neg[::-1])[::-1][1:]
        return tp, fp, pos.sum() - tp, neg.sum() - fp

    def result(self):
        tp, fp, fn, tn = self._confusion()
        t = self.num_thresholds
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:t - 1] - tp[1:]
            p = tp + fp
            dp = p[:t - 1] - p[1:]
            slope = _divide_no_nan(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * p[1:]
            both = (p[:t - 1] > 0) & (p[1:] > 0)
            ratio = np.where(both, _divide_no_nan(p[:t - 1], np.maximum(p[1:], 0)), 1.0)
            increment = _divide_no_nan(slope * (dtp + intercept * np.log(ratio)),
                                       np.maximum(tp[1:] + fn[1:], 0))
            return float(np.sum(increment))
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        else:
            x, y = recall, _divide_no_nan(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:t - 1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:t - 1], y[1:])
        else:
            heights = np.maximum(y[:t - 1], y[1:])
        return float(np.sum((x[:t - 1] - x[1:]) * heights))

    def get_config(self):
        config = {"name": self.name, "num_thresholds": self.num_thresholds, "curve": self.curve,
                  "summation_method": self.summation_method, "from_logits": self.from_logits}
        if self._init_from_thresholds:
            config["thresholds"] = [float(t) for t in self._thresholds[1:-1]]
        return config


class F1Score(Metric):
    """F1 score per class (Keras 3): predictions are 1 where y_pred > threshold, or, with
    threshold None, where y_pred is its row's maximum (and not ~0); with tp, fp, fn summed per
    class, precision = tp / (tp + fp + eps), recall = tp / (tp + fn + eps) and
    F1 = 2 precision recall / (precision + recall + eps).

    average: None (one value per class, an ndarray), 'micro' (counts summed over classes
    first), 'macro' (mean of the per-class values) or 'weighted' (mean weighted by each class's
    support).  y_true: one-hot (N, C) (or integer labels, encoded on the fly).
    """

    def __init__(self, average=None, threshold=None, name="f1_score", dtype=None):
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError(f"average must be None, 'micro', 'macro' or 'weighted', "
                             f"got {average!r}")
        if threshold is not None:
            if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold,
                                                                         numbers.Real):
                raise TypeError(f"threshold must be a number in (0, 1] or None, "
                                f"got {type(threshold).__name__}")
            if not 0 < threshold <= 1:
                raise ValueError(f"threshold must be in (0, 1], got {threshold}")
            threshold = float(threshold)
        self.average, self.threshold, self.beta = average, threshold, 1.0
        super().__init__(name, dtype)

    def reset_state(self):
        self._counts = None   # (4, C): tp, fp, fn, support

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        if pred.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects y_pred (batch, classes), got shape "
                             f"{pred.shape}")
        true = _binary_true(y_true, pred)
        if self._counts is not None and self._counts.shape[1] != pred.shape[1]:
            raise ValueError(f"y_pred has {pred.shape[1]} classes but earlier batches had "
                             f"{self._counts.shape[1]}")
        counts = metric_ops.fscore_counts(pred, true, threshold=self.threshold,
                                          sample_weight=_weights(sample_weight, pred.shape[0]))
        self._counts = counts if self._counts is None else self._counts + counts

    def result(self):
        if self._counts is None:
            return 0.0 if self.average is not None else np.zeros(0)
        tp, fp, fn, support = self._counts
        if self.average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        precision = tp / (tp + fp + EPSILON)
        recall = tp / (tp + fn + EPSILON)
        b2 = self.beta ** 2
        score = (1 + b2) * precision * recall / (b2 * precision + recall + EPSILON)
        if self.average == "weighted":
            return float(np.sum(score * support / (support.sum() + EPSILON)))
        if self.average is not None:
            return float(np.mean(score))
        return score

    def get_config(self):
        return {"name": self.name, "average": self.average, "threshold": self.threshold}


# ---- losses as metrics -------------------------------------------------------------------------

class _LossMetric(_MeanMetric):
    """Weighted mean over samples of a loss's per-sample value (Keras's MeanMetricWrapper)."""

    _loss = None

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _pred(y_pred)
        if pred.ndim == 1:
            pred = pred.reshape(-1, 1)
        loss = self._loss
        targets = loss.prepare_targets(np.asarray(y_true), pred.shape, pred.dtype)
        w = _weights(sample_weight, pred.shape[0])
        entries = pred.size // pred.shape[-1] // pred.shape[0]   # per-sample losses per sample
        total = loss._compute(pred, targets, None, w, float(entries))
        self.total += total
        self.count += float(pred.shape[0]) if w is None else float(np.sum(w, dtype=np.float64))


class MeanSquaredError(_LossMetric):
    """Mean over samples of mean((y_true - y_pred)**2, axis=-1)."""

    def __init__(self, name="mean_squared_error", dtype=None):
        from fastnet import losses
        self._loss = losses.MeanSquaredError()
        super().__init__(name, dtype)


class MeanAbsoluteError(_LossMetric):
    """Mean over samples of mean(|y_true - y_pred|, axis=-1)."""

    def __init__(self, name="mean_absolute_error", dtype=None):
        from fastnet import losses
        self._loss = losses.MeanAbsoluteError()
        super().__init__(name, dtype)


# ---- confusion matrix --------------------------------------------------------------------------

def _class_vector(y, name):
    """1-D integer class ids from labels (N,)/(N, 1) or scores/one-hot rows (N, C) (argmax)."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        scores = np.ascontiguousarray(y, dtype=y.dtype if y.dtype in (np.float32, np.float64)
                                      else np.float64)
        return metric_ops.argmax(scores), y.shape[1]
    if y.ndim != 1:
        raise ValueError(f"{name} must be class ids (N,) or per-class scores (N, C), "
                         f"got shape {y.shape}")
    if y.dtype.kind == "f":
        if not (np.all(np.isfinite(y)) and np.all(y == np.floor(y))):
            raise ValueError(f"{name} must hold whole-number class ids")
        y = y.astype(np.int64)
    elif y.dtype.kind == "b":
        y = y.astype(np.int64)
    return y, None


def confusion_matrix(y_true, y_pred, num_classes=None, weights=None):
    """Confusion matrix: ``m[i, j]`` counts the samples of class i predicted as class j.

    Args:
        y_true: class ids (N,) or one-hot rows (N, C) (argmax taken).
        y_pred: class ids (N,) or per-class scores/probabilities (N, C) (argmax taken).
        num_classes: the matrix size; default C of a 2-D input, else max id + 1.
        weights: optional (N,) weights; each sample then adds its weight.

    Returns an int64 (num_classes, num_classes) array (float64 with weights).
    """
    labels, c_true = _class_vector(y_true, "y_true")
    preds, c_pred = _class_vector(y_pred, "y_pred")
    if labels.shape != preds.shape:
        raise ValueError(f"y_true and y_pred must hold the same number of samples, got "
                         f"{labels.shape[0]} and {preds.shape[0]}")
    if num_classes is None:
        sizes = [c for c in (c_true, c_pred) if c is not None]
        if sizes:
            num_classes = max(sizes)
        else:
            num_classes = int(max(labels.max(initial=-1), preds.max(initial=-1))) + 1
            if num_classes < 1:
                raise ValueError("confusion_matrix: no samples and no num_classes")
    if weights is not None:
        weights = np.asarray(weights)
    return metric_ops.confusion_matrix(labels, preds, num_classes, weights=weights)


# ---- lookup ------------------------------------------------------------------------------------

_BY_NAME = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "precision": Precision,
    "recall": Recall,
    "auc": AUC,
    "f1_score": F1Score,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
}
_CLASSES = {cls.__name__: cls for cls in (
    Mean, Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
    TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, Precision, Recall, F1Score, AUC,
    MeanSquaredError, MeanAbsoluteError)}


def _accuracy_for(loss, output_shape, name):
    """'accuracy' resolved by the loss, as Keras: binary / categorical / sparse categorical."""
    from fastnet import losses
    if isinstance(loss, losses.BinaryCrossentropy):
        return BinaryAccuracy(name)
    if isinstance(loss, losses.CategoricalCrossentropy):
        return CategoricalAccuracy(name)
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        return SparseCategoricalAccuracy(name)
    if output_shape is not None and len(output_shape) >= 1 and output_shape[-1] == 1:
        return BinaryAccuracy(name)
    if output_shape is not None and len(output_shape) >= 2:
        return CategoricalAccuracy(name)   # targets of the output's shape (Keras's choice)
    return Accuracy(name)


def serialize(metric):
    """``{"class_name": ..., "config": ...}`` of a Metric; ``deserialize`` reverses it."""
    return _serial.serialize(metric, Metric, "fastnet.metrics.Metric")


def deserialize(config):
    """A Metric from ``serialize``'s dict."""
    return _serial.deserialize(config, _CLASSES, Metric, "metric")


def get(identifier, loss=None, output_shape=None):
    """A Metric from a name, class name, class, ``serialize`` dict or instance (returned as is).

    'accuracy'/'acc' picks the variant that fits the loss, as Keras does: binary cross-entropy
    gives BinaryAccuracy, categorical CategoricalAccuracy, sparse categorical
    SparseCategoricalAccuracy; other losses decide by ``output_shape`` (the model's output,
    batch axis first or not): one output BinaryAccuracy, more CategoricalAccuracy.  A metric
    made from a string is named by that string, as in Keras's logs.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if not isinstance(identifier, str):
        raise TypeError(f"metric must be a name or a fastnet.metrics.Metric, "
                        f"got {type(identifier).__name__}")
    if identifier in _CLASSES:
        return _CLASSES[identifier]()
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        return _accuracy_for(loss, output_shape, identifier)
    if key not in _BY_NAME:
        raise ValueError(f"unknown metric {identifier!r}; expected 'accuracy' or one of "
                         f"{sorted(_BY_NAME)}")
    return _BY_NAME[key](name=identifier)
