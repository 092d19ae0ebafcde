"""Weight regularizers (Keras 3 names and formulas) for ``kernel_regularizer=`` and friends.

    L1(l1=0.01)            penalty = l1 * sum(|w|)
    L2(l2=0.01)            penalty = l2 * sum(w**2)         (no 1/2, as Keras)
    L1L2(l1=0.0, l2=0.0)   penalty = l1 * sum(|w|) + l2 * sum(w**2)

``l1``, ``l2`` and ``l1_l2`` are aliases of the classes, as in Keras 3.  A layer adds the penalty
of each regularized weight to ``layer.regularization_loss()`` and its gradient to ``layer.grads``
at the end of ``backward``; the model adds the penalties to the reported loss.

>>> from fastnet import layers, regularizers
>>> layers.Dense(64, kernel_regularizer=regularizers.l2(1e-4))
>>> layers.Conv2D(32, 3, kernel_regularizer="l2")         # L2(l2=0.01) by name
"""
import math
import numbers

from fastnet.ops.penalty import weight_penalty, weight_penalty_grad
from fastnet.utils import serialization as _serial

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get", "serialize",
           "deserialize"]


def _factor(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


class Regularizer:
    """Base class: ``reg(w)`` is the penalty (a float), ``reg.add_gradient(w, grad)`` adds its
    gradient into ``grad`` in place.  Subclasses here are (l1, l2) penalties; a custom one
    overrides both methods (with compiled code: they run every training step)."""

    l1 = 0.0
    l2 = 0.0

    def __call__(self, w):
        return weight_penalty(w, self.l1, self.l2)

    def add_gradient(self, w, grad):
        """grad += d penalty / d w (in place); returns grad."""
        return weight_penalty_grad(w, grad, self.l1, self.l2)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class L1(Regularizer):
    """penalty = l1 * sum(|w|)."""

    def __init__(self, l1=0.01):
        self.l1 = _factor(l1, "l1")

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """penalty = l2 * sum(w**2)."""

    def __init__(self, l2=0.01):
        self.l2 = _factor(l2, "l2")

    def get_config(self):
        return {"l2": self.l2}


class L1L2(Regularizer):
    """penalty = l1 * sum(|w|) + l2 * sum(w**2)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(l1, "l1")
        self.l2 = _factor(l2, "l2")

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


l1 = L1
l2 = L2
l1_l2 = L1L2

# Names accepted by get(): Keras 3's spellings, each the class with its defaults (so 'l1_l2' is
# L1L2(0.0, 0.0), exactly as keras.regularizers.get("l1_l2")).
_BY_NAME = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}


def serialize(regularizer):
    """{'class_name': ..., 'config': {...}} for a regularizer, None for None."""
    if regularizer is None:
        return None
    return _serial.serialize(regularizer, Regularizer, "fastnet.regularizers.Regularizer")


def deserialize(config):
    """A regularizer from ``serialize``'s dict."""
    return _serial.deserialize(config, {"L1": L1, "L2": L2, "L1L2": L1L2}, Regularizer,
                               "regularizer")


def get(identifier):
    """A regularizer from None, a name ('l1', 'l2', 'l1_l2'), a ``serialize`` dict or an
    instance."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown regularizer {identifier!r}; expected one of "
                             f"'l1', 'l2', 'l1_l2'")
        return _BY_NAME[key]()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(f"regularizer must be None, a name, a config dict or a Regularizer, "
                    f"got {type(identifier).__name__}")
