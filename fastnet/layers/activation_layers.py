"""Activation layers with parameters: ReLU, LeakyReLU, ELU, GELU, Softmax (Keras 3 defaults)."""
import numbers

from fastnet.layers.base import ActivationMixin, Layer


def _nonneg(v, name, cls):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{cls}: {name} must be a real number, got {type(v).__name__}")
    if not v >= 0:
        raise ValueError(f"{cls}: {name} must be >= 0, got {v}")
    return float(v)


class _ActivationLayer(ActivationMixin, Layer):
    """forward y = f(x) into a layer buffer, backward from y (and x where f needs it)."""

    def forward(self, x, training=False):
        self._x = x
        self._y = self.apply_activation(x)
        return self._y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return self.activation_grad(dy, self._y, self._x)


class ReLU(_ActivationLayer):
    """max(x, 0); with ``negative_slope`` > 0, a leaky ReLU.  ``max_value`` and ``threshold``
    (Keras's clipped/thresholded variants) are not supported beyond their defaults."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None:
            raise ValueError("ReLU: max_value is not supported (only None)")
        if threshold != 0.0:
            raise ValueError(f"ReLU: threshold must be 0.0, got {threshold!r}")
        self.negative_slope = _nonneg(negative_slope, "negative_slope", "ReLU")
        if self.negative_slope:
            self.activation, self.activation_alpha = "leaky_relu", self.negative_slope
        else:
            self.activation = "relu"

    def get_config(self):
        cfg = super().get_config()
        cfg.update(max_value=None, negative_slope=self.negative_slope, threshold=0.0)
        return cfg


class LeakyReLU(_ActivationLayer):
    """x for x > 0, negative_slope * x otherwise (Keras 3 layer default 0.3; the legacy
    ``alpha=`` keyword is accepted)."""

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:
            negative_slope = kwargs.pop("alpha")
        super().__init__(**kwargs)
        if negative_slope is None:
            raise ValueError("LeakyReLU: negative_slope cannot be None")
        self.negative_slope = _nonneg(negative_slope, "negative_slope", "LeakyReLU")
        self.activation, self.activation_alpha = "leaky_relu", self.negative_slope

    def get_config(self):
        cfg = super().get_config()
        cfg["negative_slope"] = self.negative_slope
        return cfg


class ELU(_ActivationLayer):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (alpha >= 0)."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _nonneg(alpha, "alpha", "ELU")
        self.activation, self.activation_alpha = "elu", self.alpha

    def get_config(self):
        cfg = super().get_config()
        cfg["alpha"] = self.alpha
        return cfg


class GELU(_ActivationLayer):
    """x * Phi(x), the exact erf form (``approximate=False``, Keras's and PyTorch's default) or
    the tanh approximation (``approximate=True``)."""

    def __init__(self, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = bool(approximate)
        self.activation = "gelu_tanh" if self.approximate else "gelu"

    def get_config(self):
        cfg = super().get_config()
        cfg["approximate"] = self.approximate
        return cfg


class Softmax(_ActivationLayer):
    """Softmax over the last axis (``axis=-1`` only)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if axis != -1:
            raise ValueError(f"Softmax: only axis=-1 is supported, got {axis!r}")
        self.axis = -1
        self.activation = "softmax"

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg
