"""Metric ops: accuracy sums, thresholded confusion histograms, F-score counts, argmax and the
confusion matrix, each one compiled pass over the batch.

They return sums, not ratios, so a streaming metric adds them up over batches of any size and
divides at the end.  Every sum is taken in float64 in an order fixed by the data (rows in order,
or fixed chunks added in chunk order), so results do not depend on the thread count.

Shapes: predictions are C-contiguous float32/float64 arrays (N, ..., C) with the classes (or
outputs) on the last axis, a 1-D array counting as (N, 1); dense targets have the predictions'
shape and dtype; integer labels have the predictions' shape without the last axis (with or
without a trailing 1).  ``sample_weight`` is None or one weight per sample, shape (N,) (any real
dtype; converted to the predictions' dtype when it differs).
"""
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import metrics as _k
from fastnet.ops._checks import check_array, check_positive_int
from fastnet.ops._workspace import scratch
from fastnet.ops.losses import (
    PARALLEL_MIN_CHEAP, _check_labels, _check_pred, _check_sample_weight, _check_targets)

__all__ = [
    "sparse_accuracy", "categorical_accuracy", "sparse_categorical_accuracy_sums",
    "categorical_accuracy_sums", "sparse_top_k_accuracy_sums", "binary_accuracy_sums",
    "equal_accuracy_sums", "argmax", "threshold_histogram", "fscore_counts",
    "confusion_matrix",
]

# row_scores kinds
_SPARSE, _CATEGORICAL, _TOP_K, _BINARY, _EQUAL = range(5)
# threshold_histogram modes
_EVEN_EPS, _SORTED = 0, 1


def _num_threads(work, threshold=PARALLEL_MIN_CHEAP):
    return config.get_num_threads() if work >= threshold else 1


def _as_rows(arr, cols):
    return arr.reshape(-1, cols)


def _last(pred):
    return pred.shape[-1] if pred.ndim >= 2 else 1


def _check_any_pred(pred, name="pred"):
    check_array(pred, name)
    if pred.ndim == 0 or pred.size == 0:
        raise ValueError(f"{name} must have a batch axis and at least one element, got shape "
                         f"{pred.shape}")
    return pred


def _check_int_labels(labels, pred, pred_name):
    """Integer labels (pred's shape without the last axis), as a contiguous int32/int64 vector;
    values are not range-checked (a label outside [0, C) simply never matches)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    lead = pred.shape[:-1]
    if labels.shape not in (lead, lead + (1,)):
        raise ValueError(f"labels must have shape {lead} or {lead + (1,)} to match {pred_name} "
                         f"{pred.shape}, got {labels.shape}")
    labels = labels.reshape(-1)
    if labels.dtype == np.uint64:  # values above int64's range can never be a class index
        labels = np.minimum(labels, np.iinfo(np.int64).max)
    if labels.dtype not in (np.int32, np.int64) or not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return labels


def _row_scores(kind, pred, target, labels, sample_weight, k=0, threshold=0.5):
    cols = _last(pred)
    rows = pred.size // cols
    weights = _check_sample_weight(sample_weight, pred.shape[0], pred.dtype)
    values = scratch("fastnet.ops.metrics.values", (rows,), np.float64)
    total, count = _k.row_scores(kind, _as_rows(pred, cols),
                                 None if target is None else _as_rows(target, cols), labels, k,
                                 threshold, weights, rows // pred.shape[0], values,
                                 _num_threads(pred.size))
    return float(total), float(count)


# ---- accuracies --------------------------------------------------------------------------------

def sparse_categorical_accuracy_sums(pred, labels, *, sample_weight=None):
    """(sum_i w_i m_i, sum_i w_i), m_i the fraction of sample i's rows whose argmax (first
    maximum; the first NaN wins, as numpy) equals the label: Keras's SparseCategoricalAccuracy.

    pred: (N, C) (or (N, ..., C)); labels: integers of pred's shape without C (a label outside
    [0, C) never matches); sample_weight: optional (N,).
    """
    _check_pred(pred, "pred")
    labels = _check_int_labels(labels, pred, "pred")
    return _row_scores(_SPARSE, pred, None, labels, sample_weight)


def categorical_accuracy_sums(pred, targets, *, sample_weight=None):
    """Like ``sparse_categorical_accuracy_sums`` with the label argmax(targets) (Keras's
    CategoricalAccuracy); targets have pred's shape and dtype."""
    _check_pred(pred, "pred")
    _check_targets(targets, pred, "pred")
    return _row_scores(_CATEGORICAL, pred, targets, None, sample_weight)


def sparse_top_k_accuracy_sums(pred, labels, k, *, sample_weight=None):
    """Like ``sparse_categorical_accuracy_sums`` with a hit when the label is among the k
    largest predictions of its row: fewer than k entries are strictly greater than the label's
    (ties at the boundary count as hits, as TensorFlow's in_top_k; a NaN label score or a label
    outside [0, C) is a miss).  k >= 1."""
    k = check_positive_int(k, "k")
    _check_pred(pred, "pred")
    labels = _check_int_labels(labels, pred, "pred")
    return _row_scores(_TOP_K, pred, None, labels, sample_weight, k=k)


def binary_accuracy_sums(pred, targets, *, threshold=0.5, sample_weight=None):
    """(sum_i w_i m_i, sum_i w_i) with m_i the mean over sample i's elements of
    [target == (pred > threshold)] (Keras's BinaryAccuracy: targets must be exactly 0 or 1 to
    match).  pred and targets of one shape (N, ..., K) and dtype."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    _check_any_pred(pred)
    _check_targets(targets, pred, "pred")
    return _row_scores(_BINARY, pred, targets, None, sample_weight, threshold=float(threshold))


def equal_accuracy_sums(pred, targets, *, sample_weight=None):
    """Like ``binary_accuracy_sums`` with [target == pred] (Keras's Accuracy)."""
    _check_any_pred(pred)
    _check_targets(targets, pred, "pred")
    return _row_scores(_EQUAL, pred, targets, None, sample_weight)


def sparse_accuracy(pred, labels):
    """Number of rows whose argmax (first maximum) equals the label, as an int.

    pred: (N, C) float32/float64; labels: (N,) or (N, 1) integers in [0, C) (checked).
    """
    _check_pred(pred, "pred")
    labels = _check_labels(labels, pred, "pred")
    return int(round(_row_scores(_SPARSE, pred, None, labels, None)[0]))


def categorical_accuracy(pred, targets):
    """Number of rows where argmax(pred) == argmax(targets), as an int.  Both (N, C)."""
    _check_pred(pred, "pred")
    _check_targets(targets, pred, "pred")
    return int(round(_row_scores(_CATEGORICAL, pred, targets, None, None)[0]))


def argmax(pred):
    """Index of the maximum along the last axis (first maximum; the first NaN wins, as
    numpy.argmax), int64 of pred's shape without the last axis."""
    _check_pred(pred, "pred")
    cols = pred.shape[-1]
    out = np.empty(pred.shape[:-1], np.int64)
    _k.argmax_rows(_as_rows(pred, cols), out.reshape(-1), _num_threads(pred.size))
    return out


# ---- thresholded confusion statistics ----------------------------------------------------------

def _check_thresholds(thresholds):
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be finite")
    if np.any(np.diff(t) < 0):
        raise ValueError("thresholds must be sorted in ascending order")
    return np.ascontiguousarray(t)


def threshold_histogram(pred, labels, *, thresholds=None, num_thresholds=None,
                        sample_weight=None):
    """Weighted counts of positives and negatives per threshold bucket.

    Bucket b of an element is the number of thresholds strictly below its prediction (0..T;
    NaN predictions go to bucket 0), so at threshold j the element is predicted positive iff
    b > j; from the result, tp[j] = pos[j+1:].sum(), fp[j] = neg[j+1:].sum(),
    fn[j] = pos[:j+1].sum(), tn[j] = neg[:j+1].sum().

    Args:
        pred: predictions, any shape (N, ...), float32/float64.
        labels: pred's shape and dtype; nonzero is positive (Keras casts to bool).
        thresholds: ascending thresholds (T of them), compared as pred > threshold; or None
            for Keras AUC's ``num_thresholds`` evenly spaced thresholds [-eps, 1/(T-1), ...,
            (T-2)/(T-1), 1 + eps], where predictions are clipped to [0, 1] and bucketed with
            Keras's formula ceil(p (T - 1)) in pred's precision.
        num_thresholds: T >= 2 when thresholds is None.
        sample_weight: optional (N,).

    Returns a (2, T + 1) float64 array [pos, neg].
    """
    _check_any_pred(pred)
    _check_targets(labels, pred, "pred", "labels")
    if thresholds is None:
        t_count = check_positive_int(num_thresholds, "num_thresholds", minimum=2)
        mode, thr = _EVEN_EPS, np.zeros(0)
    else:
        if num_thresholds is not None:
            raise ValueError("give thresholds or num_thresholds, not both")
        thr = _check_thresholds(thresholds)
        mode, t_count = _SORTED, thr.size
    weights = _check_sample_weight(sample_weight, pred.shape[0], pred.dtype)
    n = pred.size
    nchunks = -(-n // _k.chunk_size())
    partial = scratch("fastnet.ops.metrics.partial", (nchunks * 2 * (t_count + 1),), np.float64)
    out = np.empty((2, t_count + 1), np.float64)
    _k.threshold_histogram(mode, pred.reshape(-1), labels.reshape(-1), weights,
                           n // pred.shape[0], thr, t_count, out, partial,
                           config.get_num_threads() if nchunks > 1 else 1)
    return out


def fscore_counts(pred, targets, *, threshold=None, sample_weight=None):
    """Per-class [tp, fp, fn, support] of Keras's F1Score/FBetaScore, a (4, C) float64 array.

    The prediction of an entry is 1 where pred > threshold, or, with threshold None, where it
    equals its row's maximum and |pred| > 1e-9 (ties all count); tp += w p t,
    fp += w p (1 - t), fn += w (1 - p) t, support += w t with soft targets t allowed.

    pred: (N, C); targets: (N, C) of pred's dtype; sample_weight: optional (N,).
    """
    check_array(pred, "pred", ndim=2)
    if pred.size == 0:
        raise ValueError(f"pred must have at least one row and one column, got {pred.shape}")
    _check_targets(targets, pred, "pred")
    if threshold is not None:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be a real number or None, "
                            f"got {type(threshold).__name__}")
    weights = _check_sample_weight(sample_weight, pred.shape[0], pred.dtype)
    n, c = pred.shape
    crow = _k.fscore_chunk_rows(c)
    nchunks = -(-n // crow)
    partial = scratch("fastnet.ops.metrics.partial", (nchunks * 4 * c,), np.float64)
    out = np.empty((4, c), np.float64)
    _k.fscore_counts(pred, targets, weights, 1, threshold is None,
                     0.0 if threshold is None else float(threshold), out, partial,
                     config.get_num_threads() if nchunks > 1 else 1)
    return out


# ---- confusion matrix --------------------------------------------------------------------------

def _class_ids(values, name):
    if not isinstance(values, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(values).__name__}")
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    return values


def confusion_matrix(labels, predictions, num_classes, *, weights=None):
    """Counts of (label, prediction) pairs: ``out[i, j]`` = how many samples of class i were
    predicted as j (rows: true labels, columns: predictions, as tf.math.confusion_matrix).

    Args:
        labels, predictions: 1-D integer arrays of one length, values in [0, num_classes).
        num_classes: int >= 1.
        weights: optional 1-D real array of that length; each pair then adds its weight.

    Returns (num_classes, num_classes) int64, or float64 with weights.
    """
    labels = _class_ids(labels, "labels")
    predictions = _class_ids(predictions, "predictions")
    num_classes = check_positive_int(num_classes, "num_classes")
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions must have the shape of labels {labels.shape}, "
                         f"got {predictions.shape}")
    for arr, name in ((labels, "labels"), (predictions, "predictions")):
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got values in "
                             f"[{int(arr.min())}, {int(arr.max())}]")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    predictions = np.ascontiguousarray(predictions, dtype=np.int64)
    n = labels.shape[0]
    if weights is not None:
        if not isinstance(weights, np.ndarray) or weights.dtype.kind not in "fiub":
            raise TypeError("weights must be a numpy.ndarray of real numbers or None")
        if weights.shape != labels.shape:
            raise ValueError(f"weights must have the shape of labels {labels.shape}, "
                             f"got {weights.shape}")
        out = np.empty((num_classes, num_classes), np.float64)
        if n:
            _k.confusion_weighted(labels, predictions,
                                  np.ascontiguousarray(weights, dtype=np.float64), out)
        else:
            out[...] = 0
        return out
    out = np.empty((num_classes, num_classes), np.int64)
    cc = num_classes * num_classes
    nthreads = config.get_num_threads() if n >= 4 * PARALLEL_MIN_CHEAP and cc <= n // 4 else 1
    private = scratch("fastnet.ops.metrics.confusion", (nthreads, cc) if nthreads > 1 else (1, 1),
                      np.int64)
    if n:
        _k.confusion_counts(labels, predictions, out, private, nthreads)
    else:
        out[...] = 0
    return out
