"""Optimizers: each step is one fused compiled pass over the model's flat parameter buffer."""
import math
import numbers

import numpy as np

from fastnet.ops import optim as optim_ops


def _check_float(value, name, *, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


class Optimizer:
    """Base: ``build(size, dtype)`` creates the slot buffers, ``apply(params, grads)`` one step."""

    def __init__(self, learning_rate, name):
        self.name = name
        self.learning_rate = learning_rate
        self.iterations = 0
        self._size = None

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = _check_float(value, "learning_rate", low=0.0)

    def build(self, size, dtype):
        """Allocate the optimizer's state for a flat buffer of ``size`` parameters."""
        self._size, self._dtype = int(size), np.dtype(dtype)
        self._build_slots()

    def _build_slots(self):
        pass

    def apply(self, params, grads, segments=None):
        """One update of the flat ``params`` (1-D) with the flat ``grads`` (1-D), in place.

        ``segments`` lists the (offset, size) of each variable inside the flat buffers, for
        rules that act per variable; None means one variable spanning the buffer."""
        if self._size != params.size or self._dtype != params.dtype:
            self.build(params.size, params.dtype)
        self.iterations += 1
        self._update(params, grads)

    def get_config(self):
        return {"name": self.name, "learning_rate": self.learning_rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("name", None)
        return cls(**config)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras' formula:
    v = momentum * v - lr * g;  p += v  (nesterov: p += momentum * v - lr * g)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD"):
        super().__init__(learning_rate, name)
        self.momentum = _check_float(momentum, "momentum", low=0.0, high=1.0)
        self.nesterov = bool(nesterov)

    def _build_slots(self):
        self.velocity = np.zeros(self._size, self._dtype) if self.momentum else None

    def _update(self, params, grads):
        optim_ops.sgd_update(params, grads, self.velocity, lr=self.learning_rate,
                             momentum=self.momentum, nesterov=self.nesterov)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, nesterov=self.nesterov)
        return cfg


class Adam(Optimizer):
    """Adam with Keras' defaults and formula (epsilon added to sqrt(v), bias correction in lr)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="Adam"):
        super().__init__(learning_rate, name)
        self.beta_1 = _check_float(beta_1, "beta_1", low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_float(beta_2, "beta_2", low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_float(epsilon, "epsilon", low=0.0)

    def _build_slots(self):
        self.m = np.zeros(self._size, self._dtype)
        self.v = np.zeros(self._size, self._dtype)

    def _update(self, params, grads):
        optim_ops.adam_update(params, grads, self.m, self.v, lr=self.learning_rate,
                              beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                              step=self.iterations)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return cfg


_BY_NAME = {"sgd": SGD, "adam": Adam}


def get(identifier):
    """An optimizer from its name ('adam', 'sgd') or an Optimizer instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown optimizer {identifier!r}; expected one of {sorted(_BY_NAME)} "
                             f"or a fastnet.optimizers.Optimizer")
        return _BY_NAME[key]()
    raise TypeError(f"optimizer must be a name or a fastnet.optimizers.Optimizer, "
                    f"got {type(identifier).__name__}")
