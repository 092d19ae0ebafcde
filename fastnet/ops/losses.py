"""Losses with their gradients in one pass, and argmax accuracy counts.

Shapes: predictions (logits or probabilities) are (N, C); sparse labels are (N,) or (N, 1) of an
integer dtype with values in [0, C); dense (one-hot or soft) targets are (N, C) of the
predictions' dtype.  Predictions, targets and gradient buffers are C-contiguous float32/float64.

Return convention: every loss returns the batch-mean loss as a Python float (summed in float64
in row order, so it does not depend on the thread count).  The gradient of that mean with
respect to the predictions is written into ``grad_out`` when it is given, and not computed
otherwise.  Output buffers must not overlap the inputs or each other (the one exception,
documented there: ``softmax_crossentropy_fused_grad`` may write its gradient over ``probs``).

The probability losses follow Keras 3 exactly (``keras.ops.categorical_crossentropy`` with
``from_logits=False``)::

    o = p / sum(p, axis=-1, keepdims=True)
    loss = mean over rows of -sum(T * log(clip(o, EPSILON, 1 - EPSILON)), axis=-1)

and their gradient is that formula's exact derivative, through the normalization, with a zero
gradient where the clip was active (o outside [EPSILON, 1 - EPSILON]).
"""
import numpy as np

from fastnet import config
from fastnet._kernels import losses as _k
from fastnet.ops._checks import check_array, check_out
from fastnet.ops._workspace import scratch

__all__ = [
    "EPSILON", "softmax_cross_entropy", "sparse_categorical_crossentropy",
    "categorical_crossentropy", "mean_squared_error", "softmax_crossentropy_fused_grad",
    "sparse_accuracy", "categorical_accuracy",
]

EPSILON = 1e-7  # keras.backend.epsilon()

# Work (N * C elements) from which two threads beat one, measured on Zen 4: rows that call
# libm's exp or log per element pay from ~2K elements, the cheaper passes from ~32K.
PARALLEL_MIN_EXP = 2048
PARALLEL_MIN_CHEAP = 32768


def _num_threads(work, threshold):
    return config.get_num_threads() if work >= threshold else 1


def _check_pred(pred, name):
    check_array(pred, name, ndim=2)
    if pred.shape[0] < 1 or pred.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape "
                         f"{pred.shape}")
    return pred


def _check_labels(labels, pred, pred_name):
    """Return the labels as a contiguous int32/int64 vector after checking shape and range."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    n, classes = pred.shape
    if labels.shape not in ((n,), (n, 1)):
        raise ValueError(f"labels must have shape ({n},) or ({n}, 1) to match {pred_name} "
                         f"{pred.shape}, got {labels.shape}")
    labels = labels.reshape(n)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"labels must be in [0, {classes}) for {classes} classes, got {bad}")
    if labels.dtype not in (np.int32, np.int64) or not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return labels


def _check_targets(targets, pred, pred_name):
    check_array(targets, "targets", ndim=2, dtype=pred.dtype)
    if targets.shape != pred.shape:
        raise ValueError(f"targets must have the shape of {pred_name} {pred.shape}, "
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


def _row_loss(n):
    return scratch("fastnet.ops.losses.row_loss", (n,), np.float64)


def _sparse_logits(logits, labels, grad_out, probs_out, name):
    _check_pred(logits, name)
    labels = _check_labels(labels, logits, name)
    shape, dtype = logits.shape, logits.dtype
    grad_out = _check_output(grad_out, "grad_out", shape, dtype, [(logits, name)])
    probs_out = _check_output(probs_out, "probs_out", shape, dtype,
                              [(logits, name), (grad_out, "grad_out")])
    n = shape[0]
    total = _k.sparse_from_logits(logits, labels, grad_out, probs_out, 1.0 / n, _row_loss(n),
                                  _num_threads(logits.size, PARALLEL_MIN_EXP))
    return total / n


def softmax_cross_entropy(logits, labels, *, grad_out=None, probs_out=None):
    """Fused softmax + sparse categorical cross-entropy on logits.

    Args:
        logits: (N, C) float32/float64.
        labels: (N,) or (N, 1) integer class indices in [0, C).
        grad_out: optional (N, C) buffer for d(mean loss)/d(logits) = (softmax(logits) - onehot)/N.
        probs_out: optional (N, C) buffer for softmax(logits).

    Returns the mean over rows of logsumexp(logits_i) - logits_i[label_i], as a float.
    Example: ``loss = softmax_cross_entropy(z, y, grad_out=dz)``
    """
    return _sparse_logits(logits, labels, grad_out, probs_out, "logits")


def sparse_categorical_crossentropy(pred, labels, *, from_logits, grad_out=None):
    """Keras's sparse categorical cross-entropy (mean over rows) and its gradient wrt ``pred``.

    Args:
        pred: (N, C) logits (from_logits=True) or probabilities (from_logits=False; each row is
            normalized to sum 1 and clipped to [EPSILON, 1 - EPSILON] as Keras 3 does).
        labels: (N,) or (N, 1) integer class indices in [0, C).
        from_logits: bool, required.
        grad_out: optional (N, C) buffer for d(mean loss)/d(pred).

    Returns the mean loss as a float.
    """
    from_logits = _check_bool(from_logits, "from_logits")
    if from_logits:
        return _sparse_logits(pred, labels, grad_out, None, "pred")
    _check_pred(pred, "pred")
    labels = _check_labels(labels, pred, "pred")
    grad_out = _check_output(grad_out, "grad_out", pred.shape, pred.dtype, [(pred, "pred")])
    n = pred.shape[0]
    total = _k.sparse_from_probs(pred, labels, grad_out, 1.0 / n, EPSILON, 1.0 - EPSILON, False,
                                 _row_loss(n), _num_threads(pred.size, PARALLEL_MIN_CHEAP))
    return total / n


def categorical_crossentropy(pred, targets, *, from_logits, grad_out=None):
    """Keras's categorical cross-entropy (mean over rows) and its gradient wrt ``pred``.

    Args:
        pred: (N, C) logits (from_logits=True) or probabilities (from_logits=False; normalized
            and clipped as Keras 3 does).
        targets: (N, C) one-hot or soft targets, same dtype as pred.
        from_logits: bool, required.
        grad_out: optional (N, C) buffer for d(mean loss)/d(pred); from logits it is
            (softmax(pred) * sum(targets, -1) - targets) / N.

    Returns the mean loss as a float.
    """
    from_logits = _check_bool(from_logits, "from_logits")
    _check_pred(pred, "pred")
    _check_targets(targets, pred, "pred")
    grad_out = _check_output(grad_out, "grad_out", pred.shape, pred.dtype,
                             [(pred, "pred"), (targets, "targets")])
    n = pred.shape[0]
    if from_logits:
        total = _k.dense_from_logits(pred, targets, grad_out, None, 1.0 / n, _row_loss(n),
                                     _num_threads(pred.size, PARALLEL_MIN_EXP))
    else:
        total = _k.dense_from_probs(pred, targets, grad_out, 1.0 / n, EPSILON, 1.0 - EPSILON,
                                    False, _row_loss(n), _num_threads(pred.size, PARALLEL_MIN_EXP))
    return total / n


def softmax_crossentropy_fused_grad(probs, labels_or_targets, grad_out):
    """Loss on softmax probabilities and the gradient wrt the softmax's INPUT (the logits).

    For a model whose last layer is a softmax and whose loss is (sparse) categorical
    cross-entropy on probabilities: the chain softmax-backward(loss-gradient) collapses to
    ``(probs * sum(T, -1) - T) / N`` (``(probs - onehot) / N`` for labels or one-hot targets),
    which is written into ``grad_out``; the model then skips the softmax's backward.  This is
    exact except where Keras's clip is active (a probability below EPSILON or above
    1 - EPSILON), where it gives the unclipped, well-behaved gradient that Keras's TensorFlow
    backend also uses (it recognizes the softmax and differentiates from its logits).

    Args:
        probs: (N, C) softmax output.
        labels_or_targets: (N,)/(N, 1) integer labels (sparse) or (N, C) targets of probs' dtype.
        grad_out: (N, C) buffer, required; it may be ``probs`` itself (the probabilities are
            then overwritten by the gradient, after the loss has been computed from them).

    Returns the Keras loss value on the probabilities (normalized and clipped), as a float.
    """
    _check_pred(probs, "probs")
    if grad_out is None:
        raise ValueError("grad_out is required (an (N, C) buffer for the gradient wrt logits)")
    n = probs.shape[0]
    if isinstance(labels_or_targets, np.ndarray) and labels_or_targets.dtype != np.bool_ and \
            np.issubdtype(labels_or_targets.dtype, np.integer):
        labels = _check_labels(labels_or_targets, probs, "probs")
        grad_out = _check_output(grad_out, "grad_out", probs.shape, probs.dtype,
                                 [(probs, "probs")], may_be=probs)
        total = _k.sparse_from_probs(probs, labels, grad_out, 1.0 / n, EPSILON, 1.0 - EPSILON,
                                     True, _row_loss(n),
                                     _num_threads(probs.size, PARALLEL_MIN_CHEAP))
    else:
        if not isinstance(labels_or_targets, np.ndarray):
            raise TypeError("labels_or_targets must be a numpy.ndarray, got "
                            f"{type(labels_or_targets).__name__}")
        targets = _check_targets(labels_or_targets, probs, "probs")
        grad_out = _check_output(grad_out, "grad_out", probs.shape, probs.dtype,
                                 [(probs, "probs"), (targets, "targets")], may_be=probs)
        total = _k.dense_from_probs(probs, targets, grad_out, 1.0 / n, EPSILON, 1.0 - EPSILON,
                                    True, _row_loss(n), _num_threads(probs.size, PARALLEL_MIN_EXP))
    return total / n


def mean_squared_error(pred, target, *, grad_out=None):
    """Mean of (pred - target)**2 over all elements, and its gradient 2 (pred - target) / size.

    Keras averages over the last axis and then over the batch, which is the same number when
    every row has the same length (always, for an array).

    Args:
        pred, target: C-contiguous float32/float64 arrays of one shape (at least one element).
        grad_out: optional buffer of that shape for d(mean loss)/d(pred).

    Returns the mean loss as a float (accumulated in float64).
    """
    check_array(pred, "pred")
    check_array(target, "target", dtype=pred.dtype)
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    if pred.size == 0:
        raise ValueError(f"pred must have at least one element, got shape {pred.shape}")
    grad_out = _check_output(grad_out, "grad_out", pred.shape, pred.dtype,
                             [(pred, "pred"), (target, "target")])
    n = pred.size
    partial = scratch("fastnet.ops.losses.partial", (-(-n // _k.block_size()),), np.float64)
    total = _k.squared_error(pred.reshape(-1), target.reshape(-1),
                             None if grad_out is None else grad_out.reshape(-1), 2.0 / n,
                             partial, _num_threads(n, 2 * PARALLEL_MIN_CHEAP))
    return total / n


def sparse_accuracy(pred, labels):
    """Number of rows whose argmax (first maximum) equals the label, as an int.

    pred: (N, C) float32/float64; labels: (N,) or (N, 1) integers in [0, C).
    """
    _check_pred(pred, "pred")
    labels = _check_labels(labels, pred, "pred")
    return int(_k.sparse_correct(pred, labels, _num_threads(pred.size, PARALLEL_MIN_CHEAP)))


def categorical_accuracy(pred, targets):
    """Number of rows where argmax(pred) == argmax(targets), as an int.  Both (N, C)."""
    _check_pred(pred, "pred")
    _check_targets(targets, pred, "pred")
    return int(_k.categorical_correct(pred, targets,
                                      _num_threads(pred.size, PARALLEL_MIN_CHEAP)))

