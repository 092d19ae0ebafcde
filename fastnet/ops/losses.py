"""Losses with their gradients in one pass: cross-entropies (sparse and dense, from logits or
probabilities, with label smoothing), binary cross-entropy, squared and absolute error, Huber
and KL divergence, each with optional per-sample weights.

Shapes
------
Cross-entropies: predictions (logits or probabilities) are (N, ..., C), C the classes on the
last axis (usually (N, C)); sparse labels have the predictions' shape without the last axis
(with or without a trailing 1) and an integer dtype, values in [0, C); dense (one-hot or soft)
targets have the predictions' shape and dtype.  One row is one (..., C) vector.
Elementwise losses: predictions and targets of one shape (N, ..., K); a 1-D array is (N, 1).
One "entry" is one vector along the last axis; its loss is the mean over that axis (the sum for
``kl_divergence``), as in Keras.
All arrays are C-contiguous float32/float64 (labels: any integer dtype).

Weights and reduction (Keras 3's 'sum_over_batch_size')
-------------------------------------------------------
``sample_weight`` (optional) holds one weight per sample, shape (N,) (or (N, 1)), any real
dtype (converted to the predictions' dtype when it differs: pass it in that dtype to avoid a
copy); it multiplies every row or entry of its sample.  Every loss returns::

    sum over rows/entries r of w_r * loss_r / divisor

as a Python float, ``divisor`` defaulting to the number of rows/entries (N for (N, C)
predictions), so that without weights the result is the batch mean; pass ``divisor=1.0`` for
Keras's 'sum' reduction.  The sum is taken in float64 in a fixed order (rows in order, or
fixed blocks of elements), so it does not depend on the thread count.  The gradient of exactly
that value with respect to the predictions is written into ``grad_out`` when it is given (and
not computed otherwise).  Output buffers must not overlap the inputs or each other (the one
exception, documented there: ``softmax_crossentropy_fused_grad`` may write its gradient over
``probs``).

The probability losses follow Keras 3 exactly (``keras.ops.categorical_crossentropy`` with
``from_logits=False``)::

    o = p / sum(p, axis=-1, keepdims=True)
    loss_r = -sum(T * log(clip(o, EPSILON, 1 - EPSILON)), axis=-1)

and their gradient is that formula's exact derivative, through the normalization, with a zero
gradient where the clip was active (o outside [EPSILON, 1 - EPSILON]); likewise the binary
cross-entropy on probabilities and the KL divergence clip as Keras does and have zero gradient
where their clip is active.  The formulas of every loss are in ``fastnet/_kernels/losses.pyx``.
"""
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import losses as _k
from fastnet.ops._checks import check_array, check_out
from fastnet.ops._workspace import scratch

__all__ = [
    "EPSILON", "softmax_cross_entropy", "sparse_categorical_crossentropy",
    "categorical_crossentropy", "softmax_crossentropy_fused_grad", "binary_crossentropy",
    "mean_squared_error", "mean_absolute_error", "huber", "kl_divergence",
    "sparse_accuracy", "categorical_accuracy",
]

EPSILON = 1e-7  # keras.backend.epsilon()

# Work (elements) from which two threads beat one, measured on Zen 4: rows that call libm's exp
# or log per element pay from ~2K elements, the cheaper passes from ~32K.
PARALLEL_MIN_EXP = 2048
PARALLEL_MIN_CHEAP = 32768

# elementwise kinds of fastnet._kernels.losses.elementwise_loss
_MSE, _MAE, _HUBER, _BCE_PROBS, _BCE_LOGITS, _KLD = range(6)


def _num_threads(work, threshold):
    return config.get_num_threads() if work >= threshold else 1


# ---- argument checks ---------------------------------------------------------------------------

def _check_pred(pred, name):
    """(rows, classes) of cross-entropy predictions (N, ..., C) after the checks."""
    check_array(pred, name)
    if pred.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (batch, ..., classes), got "
                         f"shape {pred.shape}")
    if pred.size == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape "
                         f"{pred.shape}")
    classes = pred.shape[-1]
    return pred.size // classes, classes


def _rows(arr, cols):
    """A 2-D (rows, cols) view of a C-contiguous array."""
    return arr if arr is None or arr.ndim == 2 else arr.reshape(-1, cols)


def _check_labels(labels, pred, pred_name):
    """The labels as a contiguous int32/int64 vector (one per row) after the shape and range
    checks."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    lead, classes = pred.shape[:-1], pred.shape[-1]
    if labels.shape not in (lead, lead + (1,)):
        raise ValueError(f"labels must have shape {lead} or {lead + (1,)} to match {pred_name} "
                         f"{pred.shape}, got {labels.shape}")
    labels = labels.reshape(-1)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"labels must be in [0, {classes}) for {classes} classes, got {bad}")
    if labels.dtype not in (np.int32, np.int64) or not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return labels


def _check_targets(targets, pred, pred_name, what="targets"):
    check_array(targets, what, dtype=pred.dtype)
    if targets.shape != pred.shape:
        raise ValueError(f"{what} must have the shape of {pred_name} {pred.shape}, "
                         f"got {targets.shape}")
    return targets


def _check_output(out, name, shape, dtype, inputs, *, may_be=None):
    """check_out for an optional output that must not overlap any of ``inputs``.

    ``may_be``: an input that ``out`` may be exactly (same memory), for in-place use.
    """
    if out is None:
        return None
    out = check_out(out, name, shape, dtype)
    for arr, arr_name in inputs:
        if arr is None or not np.may_share_memory(out, arr):
            continue
        if arr is may_be and out.ctypes.data == arr.ctypes.data:
            continue
        raise ValueError(f"{name} must not overlap {arr_name} in memory")
    return out


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_real(value, name, lo=None, hi=None, *, lo_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def _check_sample_weight(sample_weight, n, dtype):
    """One weight per sample as a contiguous vector of ``dtype`` (or None)."""
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, np.ndarray):
        raise TypeError(f"sample_weight must be a numpy.ndarray or None, "
                        f"got {type(sample_weight).__name__}")
    if sample_weight.dtype.kind not in "fiub":
        raise TypeError(f"sample_weight must hold real numbers, got dtype {sample_weight.dtype}")
    if sample_weight.shape not in ((n,), (n, 1)):
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per sample), "
                         f"got {sample_weight.shape}")
    if sample_weight.dtype != dtype or not sample_weight.flags.c_contiguous:
        sample_weight = np.ascontiguousarray(sample_weight, dtype=dtype)
    return sample_weight.reshape(n)


def _check_divisor(divisor, default):
    if divisor is None:
        return default
    return _check_real(divisor, "divisor", 0.0, lo_open=True)


def _check_label_smoothing(label_smoothing):
    return _check_real(label_smoothing, "label_smoothing", 0.0, 1.0)


def _row_loss(n):
    return scratch("fastnet.ops.losses.row_loss", (n,), np.float64)


# ---- cross-entropies ---------------------------------------------------------------------------

def _sparse_logits(logits, labels, grad_out, probs_out, sample_weight, divisor, name):
    rows, classes = _check_pred(logits, name)
    labels = _check_labels(labels, logits, name)
    shape, dtype = logits.shape, logits.dtype
    grad_out = _check_output(grad_out, "grad_out", shape, dtype, [(logits, name)])
    probs_out = _check_output(probs_out, "probs_out", shape, dtype,
                              [(logits, name), (grad_out, "grad_out")])
    weights = _check_sample_weight(sample_weight, shape[0], dtype)
    divisor = _check_divisor(divisor, rows)
    total = _k.sparse_from_logits(_rows(logits, classes), labels, _rows(grad_out, classes),
                                  _rows(probs_out, classes), 1.0 / divisor, weights,
                                  rows // shape[0], _row_loss(rows),
                                  _num_threads(logits.size, PARALLEL_MIN_EXP))
    return total / divisor


def softmax_cross_entropy(logits, labels, *, grad_out=None, probs_out=None, sample_weight=None,
                          divisor=None):
    """Fused softmax + sparse categorical cross-entropy on logits.

    Args:
        logits: (N, C) (or (N, ..., C)) float32/float64.
        labels: (N,) or (N, 1) integer class indices in [0, C).
        grad_out: optional buffer like logits for the gradient,
            (softmax(logits) - onehot) * w / divisor.
        probs_out: optional buffer like logits for softmax(logits).
        sample_weight: optional (N,) per-sample weights.
        divisor: the reduction's divisor (default: the number of rows).

    Returns sum_r w_r (logsumexp(logits_r) - logits_r[label_r]) / divisor, as a float.
    Example: ``loss = softmax_cross_entropy(z, y, grad_out=dz)``
    """
    return _sparse_logits(logits, labels, grad_out, probs_out, sample_weight, divisor, "logits")


def sparse_categorical_crossentropy(pred, labels, *, from_logits, grad_out=None,
                                    sample_weight=None, divisor=None):
    """Keras's sparse categorical cross-entropy and its gradient wrt ``pred``.

    Args:
        pred: (N, C) (or (N, ..., C)) logits (from_logits=True) or probabilities
            (from_logits=False; each row is normalized to sum 1 and clipped to
            [EPSILON, 1 - EPSILON] as Keras 3 does).
        labels: (N,) or (N, 1) integer class indices in [0, C) (pred's shape without C).
        from_logits: bool, required.
        grad_out: optional buffer like pred for the gradient of the returned value.
        sample_weight: optional (N,) per-sample weights.
        divisor: the reduction's divisor (default: the number of rows).

    Returns sum_r w_r loss_r / divisor as a float.
    """
    from_logits = _check_bool(from_logits, "from_logits")
    if from_logits:
        return _sparse_logits(pred, labels, grad_out, None, sample_weight, divisor, "pred")
    rows, classes = _check_pred(pred, "pred")
    labels = _check_labels(labels, pred, "pred")
    grad_out = _check_output(grad_out, "grad_out", pred.shape, pred.dtype, [(pred, "pred")])
    weights = _check_sample_weight(sample_weight, pred.shape[0], pred.dtype)
    divisor = _check_divisor(divisor, rows)
    total = _k.sparse_from_probs(_rows(pred, classes), labels, _rows(grad_out, classes),
                                 1.0 / divisor, weights, rows // pred.shape[0], EPSILON,
                                 1.0 - EPSILON, False, _row_loss(rows),
                                 _num_threads(pred.size, PARALLEL_MIN_CHEAP))
    return total / divisor


def categorical_crossentropy(pred, targets, *, from_logits, label_smoothing=0.0, grad_out=None,
                             sample_weight=None, divisor=None):
    """Keras's categorical cross-entropy and its gradient wrt ``pred``.

    Args:
        pred: (N, C) (or (N, ..., C)) logits (from_logits=True) or probabilities
            (from_logits=False; normalized and clipped as Keras 3 does).
        targets: one-hot or soft targets of pred's shape and dtype.
        from_logits: bool, required.
        label_smoothing: in [0, 1]; the targets become T (1 - ls) + ls / C (Keras).
        grad_out: optional buffer like pred for the gradient of the returned value; from logits
            it is (softmax(pred) * sum(T') - T') * w / divisor.
        sample_weight: optional (N,) per-sample weights.
        divisor: the reduction's divisor (default: the number of rows).

    Returns sum_r w_r loss_r / divisor as a float.
    """
    from_logits = _check_bool(from_logits, "from_logits")
    ls = _check_label_smoothing(label_smoothing)
    rows, classes = _check_pred(pred, "pred")
    _check_targets(targets, pred, "pred")
    grad_out = _check_output(grad_out, "grad_out", pred.shape, pred.dtype,
                             [(pred, "pred"), (targets, "targets")])
    weights = _check_sample_weight(sample_weight, pred.shape[0], pred.dtype)
    divisor = _check_divisor(divisor, rows)
    per_weight = rows // pred.shape[0]
    p2, t2, g2 = _rows(pred, classes), _rows(targets, classes), _rows(grad_out, classes)
    if from_logits:
        total = _k.dense_from_logits(p2, t2, g2, None, 1.0 / divisor, weights, per_weight,
                                     1.0 - ls, ls / classes, _row_loss(rows),
                                     _num_threads(pred.size, PARALLEL_MIN_EXP))
    else:
        total = _k.dense_from_probs(p2, t2, g2, 1.0 / divisor, weights, per_weight, 1.0 - ls,
                                    ls / classes, EPSILON, 1.0 - EPSILON, False, _row_loss(rows),
                                    _num_threads(pred.size, PARALLEL_MIN_EXP))
    return total / divisor


def softmax_crossentropy_fused_grad(probs, labels_or_targets, grad_out, *, label_smoothing=0.0,
                                    sample_weight=None, divisor=None):
    """Loss on softmax probabilities and the gradient wrt the softmax's INPUT (the logits).

    For a model whose last layer is a softmax and whose loss is (sparse) categorical
    cross-entropy on probabilities: the chain softmax-backward(loss-gradient) collapses to
    ``(probs * sum(T', -1) - T') * w / divisor`` (``(probs - onehot) * w / divisor`` for labels
    or one-hot targets without smoothing), which is written into ``grad_out``; the model then
    skips the softmax's backward.  This is exact except where Keras's clip is active (a
    probability below EPSILON or above 1 - EPSILON), where it gives the unclipped, well-behaved
    gradient that Keras's TensorFlow backend also uses (it recognizes the softmax and
    differentiates from its logits).

    Args:
        probs: (N, C) (or (N, ..., C)) softmax output.
        labels_or_targets: integer labels (N,)/(N, 1) (sparse) or targets of probs' shape and
            dtype (dense).
        grad_out: buffer like probs, required; it may be ``probs`` itself (the probabilities are
            then overwritten by the gradient, after the loss has been computed from them).
        label_smoothing: in [0, 1], dense targets only (T' = T (1 - ls) + ls / C).
        sample_weight: optional (N,) per-sample weights.
        divisor: the reduction's divisor (default: the number of rows).

    Returns the Keras loss value on the probabilities (normalized and clipped, weighted and
    divided like the other losses), as a float.
    """
    rows, classes = _check_pred(probs, "probs")
    if grad_out is None:
        raise ValueError("grad_out is required (a buffer like probs for the gradient wrt logits)")
    ls = _check_label_smoothing(label_smoothing)
    weights = _check_sample_weight(sample_weight, probs.shape[0], probs.dtype)
    divisor = _check_divisor(divisor, rows)
    per_weight = rows // probs.shape[0]
    if isinstance(labels_or_targets, np.ndarray) and labels_or_targets.dtype != np.bool_ and \
            np.issubdtype(labels_or_targets.dtype, np.integer):
        if ls:
            raise ValueError("label_smoothing needs dense (one-hot) targets, got integer labels")
        labels = _check_labels(labels_or_targets, probs, "probs")
        grad_out = _check_output(grad_out, "grad_out", probs.shape, probs.dtype,
                                 [(probs, "probs")], may_be=probs)
        total = _k.sparse_from_probs(_rows(probs, classes), labels, _rows(grad_out, classes),
                                     1.0 / divisor, weights, per_weight, EPSILON, 1.0 - EPSILON,
                                     True, _row_loss(rows),
                                     _num_threads(probs.size, PARALLEL_MIN_CHEAP))
    else:
        if not isinstance(labels_or_targets, np.ndarray):
            raise TypeError("labels_or_targets must be a numpy.ndarray, got "
                            f"{type(labels_or_targets).__name__}")
        targets = _check_targets(labels_or_targets, probs, "probs")
        grad_out = _check_output(grad_out, "grad_out", probs.shape, probs.dtype,
                                 [(probs, "probs"), (targets, "targets")], may_be=probs)
        total = _k.dense_from_probs(_rows(probs, classes), _rows(targets, classes),
                                    _rows(grad_out, classes), 1.0 / divisor, weights,
                                    per_weight, 1.0 - ls, ls / classes, EPSILON, 1.0 - EPSILON,
                                    True, _row_loss(rows),
                                    _num_threads(probs.size, PARALLEL_MIN_EXP))
    return total / divisor


# ---- elementwise losses ------------------------------------------------------------------------

def _elementwise(kind, pred, target, grad_out, sample_weight, divisor, *, per_entry_mean=True,
                 p0=0.0, p1=0.0, threshold=PARALLEL_MIN_CHEAP):
    check_array(pred, "pred")
    check_array(target, "target", dtype=pred.dtype)
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    if pred.ndim == 0 or pred.size == 0:
        raise ValueError(f"pred must have at least one element and a batch axis, got shape "
                         f"{pred.shape}")
    grad_out = _check_output(grad_out, "grad_out", pred.shape, pred.dtype,
                             [(pred, "pred"), (target, "target")])
    n, size = pred.shape[0], pred.size
    last = pred.shape[-1] if pred.ndim >= 2 else 1
    weights = _check_sample_weight(sample_weight, n, pred.dtype)
    divisor = _check_divisor(divisor, size // last)
    denom = divisor * last if per_entry_mean else divisor
    partial = scratch("fastnet.ops.losses.partial", (-(-size // _k.block_size()),), np.float64)
    total = _k.elementwise_loss(kind, pred.reshape(-1), target.reshape(-1),
                                None if grad_out is None else grad_out.reshape(-1), weights,
                                size // n, 1.0 / denom, p0, p1, EPSILON, partial,
                                _num_threads(size, threshold))
    return total / denom


def mean_squared_error(pred, target, *, grad_out=None, sample_weight=None, divisor=None):
    """Keras's mean squared error: entries mean((pred - target)**2, axis=-1), weighted, summed
    and divided by ``divisor`` (default: the number of entries, which makes it the mean over all
    elements); the gradient 2 (pred - target) w / (K divisor) goes to ``grad_out``.

    Args:
        pred, target: C-contiguous float32/float64 arrays of one shape (N, ..., K), N >= 1.
        grad_out: optional buffer of that shape for the gradient.
        sample_weight: optional (N,) per-sample weights.
        divisor: the reduction's divisor.

    Returns the loss as a float (accumulated in float64).
    """
    return _elementwise(_MSE, pred, target, grad_out, sample_weight, divisor,
                        threshold=2 * PARALLEL_MIN_CHEAP)


def mean_absolute_error(pred, target, *, grad_out=None, sample_weight=None, divisor=None):
    """Keras's mean absolute error (entries mean(|pred - target|, axis=-1)); gradient
    sign(pred - target) w / (K divisor), 0 where pred == target.  Arguments as
    ``mean_squared_error``."""
    return _elementwise(_MAE, pred, target, grad_out, sample_weight, divisor,
                        threshold=2 * PARALLEL_MIN_CHEAP)


def huber(pred, target, *, delta=1.0, grad_out=None, sample_weight=None, divisor=None):
    """Keras's Huber loss: with d = pred - target, 0.5 d**2 where |d| <= delta and
    delta |d| - 0.5 delta**2 elsewhere, averaged over the last axis (entries).  ``delta`` > 0;
    the other arguments as ``mean_squared_error``."""
    delta = _check_real(delta, "delta", 0.0, lo_open=True)
    return _elementwise(_HUBER, pred, target, grad_out, sample_weight, divisor, p0=delta,
                        threshold=2 * PARALLEL_MIN_CHEAP)


def binary_crossentropy(pred, target, *, from_logits, label_smoothing=0.0, grad_out=None,
                        sample_weight=None, divisor=None):
    """Keras's binary cross-entropy, averaged over the last axis (entries).

    With t' = target (1 - ls) + ls / 2: from probabilities (Keras 3) q = clip(pred, EPSILON,
    1 - EPSILON) and the element loss is -(t' log q + (1 - t') log(1 - q)) (gradient 0 where
    the clip is active); from logits x it is max(x, 0) - x t' + log1p(exp(-|x|)) (gradient
    sigmoid(x) - t'), the stable form TensorFlow, JAX and PyTorch use.

    Args:
        pred: probabilities or logits, (N, ..., K) C-contiguous float32/float64.
        target: 0/1 or soft targets of pred's shape and dtype.
        from_logits: bool, required.
        label_smoothing: in [0, 1].
        grad_out, sample_weight, divisor: as ``mean_squared_error``.
    """
    from_logits = _check_bool(from_logits, "from_logits")
    ls = _check_label_smoothing(label_smoothing)
    return _elementwise(_BCE_LOGITS if from_logits else _BCE_PROBS, pred, target, grad_out,
                        sample_weight, divisor, p0=1.0 - ls, p1=0.5 * ls,
                        threshold=PARALLEL_MIN_EXP)


def kl_divergence(pred, target, *, grad_out=None, sample_weight=None, divisor=None):
    """Keras's KL divergence: entries sum(tc * log(tc / pc), axis=-1) with tc = clip(target,
    EPSILON, 1) and pc = clip(pred, EPSILON, 1); gradient -tc / pc w / divisor where pred is in
    [EPSILON, 1] (0 where clipped).  Arguments as ``mean_squared_error``."""
    return _elementwise(_KLD, pred, target, grad_out, sample_weight, divisor,
                        per_entry_mean=False, threshold=PARALLEL_MIN_EXP)


# Argmax accuracy counts live with the metrics; these names stay importable from here.
from fastnet.ops.metrics import categorical_accuracy, sparse_accuracy  # noqa: E402,F401
