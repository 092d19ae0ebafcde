"""Losses, Keras names and formulas.  ``loss(y_true, y_pred)`` gives the mean over the batch.

Inside ``fit`` the model calls ``compute(y_pred, y_true, grad_out)``, which returns the mean
loss and writes dL/dy_pred into ``grad_out`` in the same compiled pass.
"""
import numpy as np

from fastnet.ops import losses as loss_ops


class Loss:
    """Base class: ``prepare_targets`` checks a whole target array once, ``compute`` runs a batch."""

    name = "loss"

    def __call__(self, y_true, y_pred):
        y_pred = np.ascontiguousarray(y_pred, dtype=np.result_type(np.asarray(y_pred).dtype,
                                                                    np.float32))
        if y_pred.dtype not in (np.float32, np.float64):
            y_pred = y_pred.astype(np.float64)
        targets = self.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        return float(self.compute(y_pred, targets, None))

    def prepare_targets(self, y, output_shape, dtype):
        raise NotImplementedError

    def compute(self, y_pred, y_true, grad_out):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}


def _check_len(y, n, what):
    if y.shape[0] != n:
        raise ValueError(f"{what}: y has {y.shape[0]} samples but the predictions have {n}")


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy with integer class labels y_true (batch,) and y_pred (batch, classes).

    y_pred holds probabilities (from_logits=False, clipped to [1e-7, 1 - 1e-7] as Keras does)
    or raw scores (from_logits=True, softmax applied in the same fused kernel).
    """

    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def prepare_targets(self, y, output_shape, dtype):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y must hold one integer class label per sample (shape (batch,)), "
                             f"got shape {y.shape}")
        if len(output_shape) != 2:
            raise ValueError(f"{self.name} needs model outputs (batch, classes), "
                             f"got {output_shape}")
        _check_len(y, output_shape[0], self.name) if output_shape[0] is not None else None
        classes = output_shape[1]
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.floor(y)):
                raise ValueError("y must hold integer class labels; got non-integer values")
        elif y.dtype.kind not in "iub":
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
        if y.size:
            lo, hi = y.min(), y.max()
            if lo < 0 or hi >= classes:
                raise ValueError(f"y holds labels in [{lo}, {hi}] but the model has {classes} "
                                 f"classes: labels must be in [0, {classes - 1}]")
        return np.ascontiguousarray(y, dtype=np.int64)

    def compute(self, y_pred, y_true, grad_out):
        return loss_ops.sparse_categorical_crossentropy(y_pred, y_true, from_logits=self.from_logits,
                                                        grad_out=grad_out)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class CategoricalCrossentropy(SparseCategoricalCrossentropy):
    """Cross-entropy with one-hot (or soft) targets y_true (batch, classes)."""

    name = "categorical_crossentropy"

    def prepare_targets(self, y, output_shape, dtype):
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"y must be numeric one-hot targets, got dtype {y.dtype}")
        if y.ndim != 2 or y.shape[1] != output_shape[-1]:
            raise ValueError(f"y must have shape (batch, {output_shape[-1]}) (one-hot targets), "
                             f"got {y.shape}")
        y = np.ascontiguousarray(y, dtype=dtype)
        if not np.all(np.isfinite(y)):
            raise ValueError("y holds NaN or infinite values")
        return y

    def compute(self, y_pred, y_true, grad_out):
        return loss_ops.categorical_crossentropy(y_pred, y_true, from_logits=self.from_logits,
                                                 grad_out=grad_out)


class MeanSquaredError(Loss):
    """mean((y_true - y_pred)^2), y_true with the shape of the model's output."""

    name = "mean_squared_error"

    def prepare_targets(self, y, output_shape, dtype):
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"y must be numeric, got dtype {y.dtype}")
        if y.ndim == len(output_shape) - 1 and output_shape[-1] == 1:
            y = y.reshape(y.shape + (1,))
        if y.shape[1:] != tuple(output_shape[1:]):
            raise ValueError(f"y must have per-sample shape {tuple(output_shape[1:])} like the "
                             f"model's output, got {y.shape[1:]}")
        y = np.ascontiguousarray(y, dtype=dtype)
        if not np.all(np.isfinite(y)):
            raise ValueError("y holds NaN or infinite values")
        return y

    def compute(self, y_pred, y_true, grad_out):
        return loss_ops.mean_squared_error(y_pred, y_true, grad_out=grad_out)


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}


def get(identifier):
    """A Loss from its Keras name or a Loss instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown loss {identifier!r}; expected one of {sorted(_BY_NAME)} "
                             f"or a fastnet.losses.Loss")
        return _BY_NAME[key]()
    raise TypeError(f"loss must be a name or a fastnet.losses.Loss, got {type(identifier).__name__}")
