"""Activation functions by name, as Keras spells them (``activation='relu'`` on any layer)."""
from fastnet.ops import activations as _ops

SUPPORTED = ("linear", "relu", "sigmoid", "tanh", "softmax")


def get(identifier):
    """Canonical activation name for a string, one of this module's functions, or None.

    Returns None for the identity ('linear' or None), so layers can test ``if self.activation``.
    """
    if identifier is None:
        return None
    if callable(identifier) and getattr(identifier, "__module__", None) == __name__:
        identifier = identifier.__name__
    if not isinstance(identifier, str):
        raise TypeError(f"activation must be a string among {SUPPORTED} or None, "
                        f"got {type(identifier).__name__}")
    name = identifier.lower()
    if name not in SUPPORTED:
        raise ValueError(f"unknown activation {identifier!r}; expected one of {SUPPORTED}")
    return None if name == "linear" else name


def linear(x):
    """Identity."""
    return x


def relu(x):
    """max(x, 0) elementwise; x a float32/float64 C-contiguous array."""
    return _ops.activation_forward("relu", x)


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise."""
    return _ops.activation_forward("sigmoid", x)


def tanh(x):
    """tanh(x) elementwise."""
    return _ops.activation_forward("tanh", x)


def softmax(x):
    """Softmax over the last axis."""
    return _ops.activation_forward("softmax", x)
