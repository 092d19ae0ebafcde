"""Losses with Keras 3 names, arguments and formulas.

Eager use: ``loss(y_true, y_pred, sample_weight=None)`` returns the reduced loss as a float.

Inside ``fit`` the model calls ``targets = loss.prepare_targets(y, output_shape, dtype)`` once
(every check on the targets happens there), then per batch
``loss.compute(y_pred, targets_batch, grad_out, sample_weight=None)``, which returns the batch
loss and writes its exact gradient wrt y_pred into ``grad_out`` (when not None) in the same
compiled pass.  With the default reduction 'sum_over_batch_size' the batch loss is
sum_i w_i loss_i / N (N = the number of per-sample losses: the batch size for (N, C) outputs),
so without weights it is the batch mean.  Cross-entropies on probabilities also offer
``compute_fused_softmax`` for a model whose last layer is a softmax (``fuses_softmax``).

The formulas are in ``fastnet/ops/losses.py`` and ``fastnet/_kernels/losses.pyx``.
"""
import numbers

import numpy as np

from fastnet.ops import losses as loss_ops
from fastnet.utils import serialization as _serial

__all__ = [
    "Loss", "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy",
    "MeanSquaredError", "MeanAbsoluteError", "Huber", "KLDivergence", "get", "serialize",
    "deserialize", "prepare_sample_weight", "class_weight_to_sample_weight",
]

REDUCTIONS = ("sum_over_batch_size", "mean", "sum")


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_unit_interval(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _numeric(y, what="y"):
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be numeric, got dtype {y.dtype}")
    return y


def _check_batch(y, output_shape, what):
    if output_shape[0] is not None and y.shape[0] != output_shape[0]:
        raise ValueError(f"{what}: y has {y.shape[0]} samples but the predictions have "
                         f"{output_shape[0]}")


def _as_float(y, dtype, what="y"):
    """``y`` as a contiguous array of ``dtype`` after the finiteness check."""
    y = np.ascontiguousarray(y, dtype=dtype)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what} holds NaN or infinite values")
    return y


def prepare_sample_weight(sample_weight, n, dtype):
    """Check per-sample weights once: returns None or a contiguous (n,) array of ``dtype``.

    Accepts a scalar (the same weight for every sample), shape (n,) or (n, 1); weights must be
    finite real numbers.
    """
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "fiub":
        raise TypeError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
    if w.ndim == 0:
        w = np.full(n, w, dtype=dtype)
    if w.shape not in ((n,), (n, 1)):
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per sample), "
                         f"got {w.shape}")
    w = np.ascontiguousarray(w.reshape(n), dtype=dtype)
    if not np.all(np.isfinite(w)):
        raise ValueError("sample_weight holds NaN or infinite values")
    return w


def class_weight_to_sample_weight(y, class_weight, dtype=np.float32):
    """Per-sample weights from a ``{class: weight}`` dict, as Keras: the class of a sample is
    argmax(y) for (N, C) targets with C > 1, else round(y); classes missing from the dict get
    weight 1.  Returns a contiguous (N,) array of ``dtype``."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class: weight}}, "
                        f"got {type(class_weight).__name__}")
    y = _numeric(y)
    if y.ndim not in (1, 2):
        raise ValueError(f"class_weight needs targets (N,) or (N, C), got shape {y.shape}")
    if y.ndim == 2 and y.shape[1] != 1:
        classes = np.argmax(y, axis=-1)
    else:
        classes = y.reshape(-1)
        if classes.dtype.kind == "f":
            if not np.all(np.isfinite(classes)):
                raise ValueError("y holds NaN or infinite values")
            classes = np.round(classes)
        classes = classes.astype(np.int64)
    keys, values = [], []
    for k, v in class_weight.items():
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
            raise TypeError(f"class_weight keys must be integer classes, got {k!r}")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) \
                or not np.isfinite(v):
            raise ValueError(f"class_weight[{k}] must be a finite number, got {v!r}")
        keys.append(int(k))
        values.append(float(v))
    w = np.ones(classes.shape[0], dtype=dtype)
    if keys:
        order = np.argsort(keys)
        keys = np.asarray(keys, np.int64)[order]
        values = np.asarray(values, np.float64)[order]
        pos = np.clip(np.searchsorted(keys, classes), 0, len(keys) - 1)
        hit = keys[pos] == classes
        w[hit] = values[pos[hit]]
    return w


class Loss:
    """Base class.  Subclasses implement ``prepare_targets`` and ``_compute``.

    Args:
        name: the loss's name (default: the Keras name of the class).
        reduction: 'sum_over_batch_size' (default; 'mean' is a synonym) divides the weighted
            sum of the per-sample losses by their number, 'sum' does not divide.
    """

    name = "loss"

    def __init__(self, name=None, reduction="sum_over_batch_size"):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {type(name).__name__}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.name = name or type(self).name
        self.reduction = reduction

    # Cross-entropies on probabilities override this (see compute_fused_softmax).
    fuses_softmax = False

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The reduced loss of (y_true, y_pred) as a float.  A 1-D y_pred is one sample."""
        y_pred = _numeric(y_pred, "y_pred")
        if y_pred.dtype not in (np.float32, np.float64):
            y_pred = y_pred.astype(np.result_type(y_pred.dtype, np.float32))
        if y_pred.ndim == 0:
            raise ValueError("y_pred must have at least one dimension")
        y_true = np.asarray(y_true)
        if y_pred.ndim == 1:
            y_pred, y_true = y_pred[np.newaxis], y_true[np.newaxis]
        y_pred = np.ascontiguousarray(y_pred)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        weights = prepare_sample_weight(sample_weight, y_pred.shape[0], y_pred.dtype)
        return float(self.compute(y_pred, targets, None, sample_weight=weights))

    def prepare_targets(self, y, output_shape, dtype):
        """Check the targets of a whole data set once and convert them for ``compute``."""
        raise NotImplementedError

    def compute(self, y_pred, y_true, grad_out=None, sample_weight=None):
        """Loss of one batch (``y_true`` from ``prepare_targets``); writes the gradient of that
        value wrt ``y_pred`` into ``grad_out`` when given.  ``sample_weight``: None or (N,)
        weights, best already in y_pred's dtype (see ``prepare_sample_weight``)."""
        return self._compute(y_pred, y_true, grad_out, sample_weight, self._divisor())

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        raise NotImplementedError

    def _divisor(self):
        return 1.0 if self.reduction == "sum" else None

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# ---- cross-entropies ---------------------------------------------------------------------------

class _Crossentropy(Loss):
    def __init__(self, from_logits=False, name=None, reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        self.from_logits = _check_bool(from_logits, "from_logits")

    @property
    def fuses_softmax(self):
        """True when the loss takes probabilities: a model ending in a softmax may then call
        ``compute_fused_softmax`` and skip the softmax's backward."""
        return not self.from_logits

    def compute_fused_softmax(self, probs, y_true, grad_out, sample_weight=None):
        """The loss on softmax outputs ``probs`` (as ``compute``) and, in ``grad_out`` (which
        may be ``probs`` itself), the gradient wrt the softmax's input (the logits)."""
        if self.from_logits:
            raise ValueError("compute_fused_softmax needs from_logits=False")
        return loss_ops.softmax_crossentropy_fused_grad(
            probs, y_true, grad_out, label_smoothing=getattr(self, "label_smoothing", 0.0),
            sample_weight=sample_weight, divisor=self._divisor())

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(_Crossentropy):
    """Cross-entropy with integer class labels: y_true (N,) for y_pred (N, C).

    y_pred holds probabilities (from_logits=False: normalized and clipped to [1e-7, 1 - 1e-7]
    as Keras does) or raw scores (from_logits=True, softmax applied in the same fused kernel).
    Outputs (N, ..., C) take labels (N, ...).
    """

    name = "sparse_categorical_crossentropy"

    def prepare_targets(self, y, output_shape, dtype):
        y = np.asarray(y)
        output_shape = tuple(output_shape)
        if len(output_shape) < 2:
            raise ValueError(f"{self.name} needs model outputs (batch, classes), "
                             f"got {output_shape}")
        lead, classes = output_shape[:-1], output_shape[-1]
        if y.ndim == len(output_shape) and y.shape[-1] == 1:
            y = y.reshape(y.shape[:-1])
        if y.ndim != len(lead) or y.shape[1:] != tuple(lead[1:]):
            shape = "(batch,)" if len(lead) == 1 else str((None,) + tuple(lead[1:]))
            raise ValueError(f"y must hold one integer class label per sample (shape {shape}), "
                             f"got shape {y.shape}")
        _check_batch(y, output_shape, self.name)
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.floor(y)):
                raise ValueError("y must hold integer class labels; got non-integer values")
        elif y.dtype.kind not in "iu":
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
        if y.size:
            lo, hi = y.min(), y.max()
            if lo < 0 or hi >= classes:
                raise ValueError(f"y holds labels in [{lo}, {hi}] but the model has {classes} "
                                 f"classes: labels must be in [0, {classes - 1}]")
        return np.ascontiguousarray(y, dtype=np.int64)

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.sparse_categorical_crossentropy(
            y_pred, y_true, from_logits=self.from_logits, grad_out=grad_out,
            sample_weight=sample_weight, divisor=divisor)


class CategoricalCrossentropy(_Crossentropy):
    """Cross-entropy with one-hot (or soft) targets y_true of y_pred's shape (N, C).

    label_smoothing in [0, 1]: the targets become y (1 - ls) + ls / C (Keras).
    """

    name = "categorical_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None,
                 reduction="sum_over_batch_size"):
        super().__init__(from_logits, name, reduction)
        self.label_smoothing = _check_unit_interval(label_smoothing, "label_smoothing")

    def prepare_targets(self, y, output_shape, dtype):
        y = _numeric(y)
        output_shape = tuple(output_shape)
        if y.shape[1:] != output_shape[1:] or y.ndim != len(output_shape):
            hint = ("; for integer labels use sparse_categorical_crossentropy"
                    if y.ndim == len(output_shape) - 1 or y.shape[-1:] == (1,) else "")
            raise ValueError(f"y must have shape {(None,) + output_shape[1:]} (one-hot "
                             f"targets), got {y.shape}{hint}")
        _check_batch(y, output_shape, self.name)
        y = _as_float(y, dtype)
        if y.size and y.min() < 0:
            raise ValueError("y (categorical targets) must not be negative")
        return y

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.categorical_crossentropy(
            y_pred, y_true, from_logits=self.from_logits, label_smoothing=self.label_smoothing,
            grad_out=grad_out, sample_weight=sample_weight, divisor=divisor)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


# ---- elementwise losses ------------------------------------------------------------------------

class _ElementwiseLoss(Loss):
    """Targets with the output's shape ((N,) accepted for an (N, 1) output)."""

    def prepare_targets(self, y, output_shape, dtype):
        y = _numeric(y)
        output_shape = tuple(output_shape)
        if y.ndim == len(output_shape) - 1 and output_shape[-1] == 1:
            y = y.reshape(y.shape + (1,))
        if y.ndim != len(output_shape) or y.shape[1:] != output_shape[1:]:
            raise ValueError(f"y must have per-sample shape {output_shape[1:]} like the "
                             f"model's output, got {y.shape[1:]}")
        _check_batch(y, output_shape, self.name)
        return self._check_values(_as_float(y, dtype))

    def _check_values(self, y):
        return y


class BinaryCrossentropy(_ElementwiseLoss):
    """Binary cross-entropy with 0/1 (or soft) targets in [0, 1], averaged over the last axis.

    from_logits=False: y_pred are probabilities, clipped to [1e-7, 1 - 1e-7] (Keras 3);
    from_logits=True: y_pred are logits (stable log-sigmoid form).  label_smoothing in [0, 1]:
    the targets become y (1 - ls) + ls / 2.  Targets (N,) fit an (N, 1) output.
    """

    name = "binary_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None,
                 reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        self.from_logits = _check_bool(from_logits, "from_logits")
        self.label_smoothing = _check_unit_interval(label_smoothing, "label_smoothing")

    def _check_values(self, y):
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"y (binary targets) must be in [0, 1], got values in "
                             f"[{y.min()}, {y.max()}]")
        return y

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.binary_crossentropy(
            y_pred, y_true, from_logits=self.from_logits, label_smoothing=self.label_smoothing,
            grad_out=grad_out, sample_weight=sample_weight, divisor=divisor)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing}


class MeanSquaredError(_ElementwiseLoss):
    """mean((y_true - y_pred)**2, axis=-1) per sample."""

    name = "mean_squared_error"

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.mean_squared_error(y_pred, y_true, grad_out=grad_out,
                                           sample_weight=sample_weight, divisor=divisor)


class MeanAbsoluteError(_ElementwiseLoss):
    """mean(|y_true - y_pred|, axis=-1) per sample (gradient sign(y_pred - y_true), 0 at 0)."""

    name = "mean_absolute_error"

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.mean_absolute_error(y_pred, y_true, grad_out=grad_out,
                                            sample_weight=sample_weight, divisor=divisor)


class Huber(_ElementwiseLoss):
    """Huber loss, mean over the last axis of 0.5 d**2 (|d| <= delta) or
    delta |d| - 0.5 delta**2 (elsewhere), d = y_pred - y_true."""

    name = "huber_loss"

    def __init__(self, delta=1.0, name=None, reduction="sum_over_batch_size"):
        super().__init__(name, reduction)
        if isinstance(delta, (bool, np.bool_)) or not isinstance(delta, numbers.Real):
            raise TypeError(f"delta must be a positive number, got {type(delta).__name__}")
        if not (np.isfinite(delta) and delta > 0):
            raise ValueError(f"delta must be a positive finite number, got {delta}")
        self.delta = float(delta)

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.huber(y_pred, y_true, delta=self.delta, grad_out=grad_out,
                              sample_weight=sample_weight, divisor=divisor)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class KLDivergence(_ElementwiseLoss):
    """sum(y_true * log(y_true / y_pred), axis=-1) per sample, both clipped to [1e-7, 1] as
    Keras does."""

    name = "kl_divergence"

    def _compute(self, y_pred, y_true, grad_out, sample_weight, divisor):
        return loss_ops.kl_divergence(y_pred, y_true, grad_out=grad_out,
                                      sample_weight=sample_weight, divisor=divisor)


# ---- lookup ------------------------------------------------------------------------------------

_BY_NAME = {
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
    "huber_loss": Huber,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
}
_CLASSES = {cls.__name__: cls for cls in (
    BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
    MeanSquaredError, MeanAbsoluteError, Huber, KLDivergence)}


def serialize(loss):
    """``{"class_name": ..., "config": ...}`` of a Loss; ``deserialize`` reverses it."""
    return _serial.serialize(loss, Loss, "fastnet.losses.Loss")


def deserialize(config):
    """A Loss from ``serialize``'s dict."""
    return _serial.deserialize(config, _CLASSES, Loss, "loss")


def get(identifier):
    """A Loss from its Keras name ('mse', 'binary_crossentropy', ...), class name, class,
    ``serialize`` dict, or a Loss instance (returned as is)."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown loss {identifier!r}; expected one of {sorted(_BY_NAME)} "
                             f"or a fastnet.losses.Loss")
        return _BY_NAME[key]()
    raise TypeError(f"loss must be a name or a fastnet.losses.Loss, "
                    f"got {type(identifier).__name__}")
