"""Metrics accumulated over batches (``update_state``, ``result``, ``reset_state``)."""
import numpy as np

from fastnet.ops import losses as loss_ops


class Metric:
    """A running mean of a per-sample score."""

    def __init__(self, name):
        self.name = name
        self.reset_state()

    def reset_state(self):
        self.total, self.count = 0.0, 0

    def result(self):
        return self.total / self.count if self.count else 0.0

    def update_state(self, y_true, y_pred):
        raise NotImplementedError


class SparseCategoricalAccuracy(Metric):
    """Fraction of samples whose argmax prediction equals the integer label."""

    def __init__(self, name="accuracy"):
        super().__init__(name)

    def update_state(self, y_true, y_pred):
        self.total += loss_ops.sparse_accuracy(y_pred, y_true)
        self.count += y_pred.shape[0]


class CategoricalAccuracy(Metric):
    """Fraction of samples whose argmax prediction equals the argmax of the one-hot target."""

    def __init__(self, name="accuracy"):
        super().__init__(name)

    def update_state(self, y_true, y_pred):
        self.total += loss_ops.categorical_accuracy(y_pred, y_true)
        self.count += y_pred.shape[0]


class BinaryAccuracy(Metric):
    """Fraction of outputs on the right side of ``threshold`` (0/1 targets)."""

    def __init__(self, name="accuracy", threshold=0.5):
        self.threshold = threshold
        super().__init__(name)

    def update_state(self, y_true, y_pred):
        hits = np.count_nonzero((y_pred > self.threshold) == (y_true > 0.5))
        self.total += hits / (y_pred.size / y_pred.shape[0])
        self.count += y_pred.shape[0]


class Accuracy(Metric):
    """Fraction of outputs exactly equal to the targets."""

    def __init__(self, name="accuracy"):
        super().__init__(name)

    def update_state(self, y_true, y_pred):
        self.total += np.count_nonzero(y_pred == y_true) / (y_pred.size / y_pred.shape[0])
        self.count += y_pred.shape[0]


def get(identifier, loss=None, output_shape=None):
    """A Metric from a name; 'accuracy' picks the variant that fits the loss, as Keras does."""
    from fastnet import losses
    if isinstance(identifier, Metric):
        return identifier
    if not isinstance(identifier, str):
        raise TypeError(f"metric must be a name or a fastnet.metrics.Metric, "
                        f"got {type(identifier).__name__}")
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        if isinstance(loss, losses.CategoricalCrossentropy):
            return CategoricalAccuracy(identifier)
        if isinstance(loss, losses.SparseCategoricalCrossentropy):
            return SparseCategoricalAccuracy(identifier)
        if output_shape is not None and output_shape[-1] == 1:
            return BinaryAccuracy(identifier)
        return Accuracy(identifier)
    named = {"sparse_categorical_accuracy": SparseCategoricalAccuracy,
             "categorical_accuracy": CategoricalAccuracy, "binary_accuracy": BinaryAccuracy}
    if key not in named:
        raise ValueError(f"unknown metric {identifier!r}; expected 'accuracy' or one of "
                         f"{sorted(named)}")
    return named[key](key)
