"""Activation functions by name, as Keras spells them (``activation='relu'`` on any layer).

Names: linear, relu, sigmoid, tanh, softmax, softplus, swish (alias silu), gelu (the exact erf
form, Keras 3's default ``approximate=False``), elu (alpha 1), leaky_relu (negative slope 0.2,
Keras 3's ``keras.activations.leaky_relu`` default).  The functions below take a float32/float64
array and return a new one; layers call ``fastnet.ops.activations`` directly with their buffers.
"""
from fastnet.ops import activations as _ops

SUPPORTED = ("linear", "relu", "sigmoid", "tanh", "softmax", "softplus", "swish", "silu", "gelu",
             "elu", "leaky_relu")
_ALIASES = {"silu": "swish"}


def get(identifier):
    """Canonical activation name for a string, one of this module's functions, or None.

    Returns None for the identity ('linear' or None), so layers can test ``if self.activation``;
    'silu' comes back as 'swish'.
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
    name = _ALIASES.get(name, name)
    return None if name == "linear" else name


def serialize(name):
    """The Keras name of a canonical activation (None -> 'linear')."""
    return name or "linear"


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


def softplus(x):
    """log(1 + exp(x)) elementwise, computed as max(x, 0) + log1p(exp(-|x|))."""
    return _ops.activation_forward("softplus", x)


def swish(x):
    """x * sigmoid(x) elementwise (also called silu)."""
    return _ops.activation_forward("swish", x)


def silu(x):
    """x * sigmoid(x) elementwise (also called swish)."""
    return _ops.activation_forward("swish", x)


def gelu(x, approximate=False):
    """x * Phi(x) = x/2 (1 + erf(x / sqrt 2)); with ``approximate=True`` the tanh form
    x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3))), as ``keras.activations.gelu``."""
    return _ops.activation_forward("gelu_tanh" if approximate else "gelu", x)


def elu(x, alpha=1.0):
    """x for x > 0, alpha (exp(x) - 1) otherwise (alpha >= 0)."""
    return _ops.activation_forward("elu", x, alpha=alpha)


def leaky_relu(x, negative_slope=0.2):
    """x for x > 0, negative_slope * x otherwise (negative_slope >= 0)."""
    return _ops.activation_forward("leaky_relu", x, alpha=negative_slope)
