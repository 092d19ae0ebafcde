"""Learning-rate schedules, Keras 3's ``keras.optimizers.schedules`` (names, arguments, formulas).

A schedule is a callable ``schedule(step) -> float``.  Give one to an optimizer as its
``learning_rate``: each step the optimizer evaluates it at ``optimizer.iterations`` (the number
of steps already taken, as Keras does), so the first step uses ``schedule(0)``.

>>> from fastnet import optimizers
>>> from fastnet.optimizers.schedules import CosineDecay
>>> opt = optimizers.Adam(learning_rate=CosineDecay(1e-3, decay_steps=1000))

Also reachable as ``fastnet.optimizers.schedules``.  Values are computed in float64 (Keras
computes them in the dtype of ``initial_learning_rate``, float32 for a Python float).
"""
import math
import numbers
from fastnet.utils import serialization as _serial

__all__ = ["CosineDecay", "ExponentialDecay", "LearningRateSchedule", "PiecewiseConstantDecay",
           "deserialize", "serialize"]


def _real(value, name, *, low=None, low_open=False, high=None):
    """``value`` as a float after checking it is a finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _number(value):
    """Keep ints as ints in configs (Keras writes decay_steps=1000, not 1000.0)."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check_step(step):
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a number, got {type(step).__name__}")
    step = float(step)
    if not step >= 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    return name


class LearningRateSchedule:
    """Base class: subclasses implement ``__call__(step) -> float`` and, to be serializable,
    ``get_config()`` (a dict of ``__init__`` arguments; ``from_config`` calls ``cls(**config)``).

    >>> class InverseTime(LearningRateSchedule):
    ...     def __init__(self, lr):
    ...         self.lr = lr
    ...     def __call__(self, step):
    ...         return self.lr / (step + 1)
    ...     def get_config(self):
    ...         return {"lr": self.lr}
    """

    def __call__(self, step):
        raise NotImplementedError(f"learning-rate schedule {type(self).__name__} must override "
                                  f"__call__(self, step)")

    def get_config(self):
        raise NotImplementedError(f"learning-rate schedule {type(self).__name__} must override "
                                  f"get_config() to be serializable")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = ""
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase`` the
    exponent is ``floor(step / decay_steps)`` (the rate drops every ``decay_steps`` steps).

    Args:
        initial_learning_rate: finite, >= 0.
        decay_steps: > 0.
        decay_rate: finite, >= 0 (< 1 decays).
        staircase: bool.
        name: a string, kept in the config.
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        _real(initial_learning_rate, "initial_learning_rate", low=0.0)
        _real(decay_steps, "decay_steps", low=0.0, low_open=True)
        _real(decay_rate, "decay_rate", low=0.0)
        if not isinstance(staircase, bool):
            raise TypeError(f"staircase must be a bool, got {type(staircase).__name__}")
        self.initial_learning_rate = _number(initial_learning_rate)
        self.decay_steps = _number(decay_steps)
        self.decay_rate = _number(decay_rate)
        self.staircase = staircase
        self.name = _check_name(name)

    def __call__(self, step):
        p = _check_step(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return float(self.initial_learning_rate * float(self.decay_rate) ** p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, and ``values[-1]`` after ``boundaries[-1]``.

    Args:
        boundaries: strictly increasing numbers (steps).
        values: finite numbers >= 0, one more than ``boundaries``.
        name: a string, kept in the config.

    >>> PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])(150)
    0.5
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if not isinstance(boundaries, (list, tuple)):
            raise TypeError(f"boundaries must be a list of numbers, "
                            f"got {type(boundaries).__name__}")
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"values must be a list of numbers, got {type(values).__name__}")
        if len(boundaries) != len(values) - 1:
            raise ValueError(f"values must have one more element than boundaries; got "
                             f"{len(boundaries)} boundaries and {len(values)} values")
        for i, b in enumerate(boundaries):
            _real(b, f"boundaries[{i}]")
        for i, v in enumerate(values):
            _real(v, f"values[{i}]", low=0.0)
        for i in range(1, len(boundaries)):
            if not boundaries[i] > boundaries[i - 1]:
                raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)}")
        self.boundaries = [_number(b) for b in boundaries]
        self.values = [_number(v) for v in values]
        self.name = _check_name(name)

    def __call__(self, step):
        step = _check_step(step)
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return float(v)
        return float(self.values[-1])

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values),
                "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay, with an optional linear warm-up first (Loshchilov & Hutter, SGDR).

    Without warm-up (``warmup_target`` None)::

        s = min(step, decay_steps)
        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)

    With warm-up, for ``step < warmup_steps`` the rate rises linearly from
    ``initial_learning_rate`` to ``warmup_target``::

        lr = initial_learning_rate + (warmup_target - initial_learning_rate) * step / warmup_steps

    and then decays from ``warmup_target`` as above with ``s = min(step - warmup_steps,
    decay_steps)``.

    Args:
        initial_learning_rate: finite, >= 0.
        decay_steps: > 0, the length of the decay.
        alpha: in [0, 1], the final rate as a fraction of the rate decay starts from.
        warmup_target: None (no warm-up) or finite >= 0.
        warmup_steps: >= 0, the length of the warm-up.
        name: a string, kept in the config.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        _real(initial_learning_rate, "initial_learning_rate", low=0.0)
        _real(decay_steps, "decay_steps", low=0.0, low_open=True)
        _real(alpha, "alpha", low=0.0, high=1.0)
        if warmup_target is not None:
            _real(warmup_target, "warmup_target", low=0.0)
        _real(warmup_steps, "warmup_steps", low=0.0)
        self.initial_learning_rate = _number(initial_learning_rate)
        self.decay_steps = _number(decay_steps)
        self.alpha = _number(alpha)
        self.name = _check_name(name)
        self.warmup_target = None if warmup_target is None else _number(warmup_target)
        self.warmup_steps = _number(warmup_steps)

    def _decay(self, step, decay_from):
        fraction = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return decay_from * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = _check_step(step)
        if self.warmup_target is None:
            return float(self._decay(min(step, self.decay_steps), self.initial_learning_rate))
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return float(delta * (step / self.warmup_steps) + self.initial_learning_rate)
        return float(self._decay(step - self.warmup_steps, self.warmup_target))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_BUILTIN = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    """``{"class_name": ..., "config": schedule.get_config()}``, JSON-compatible."""
    return _serial.serialize(schedule, LearningRateSchedule, "LearningRateSchedule")


def deserialize(config, custom_objects=None):
    """The schedule described by ``{"class_name": ..., "config": {...}}`` (what
    :func:`serialize` and Keras write; other keys such as Keras's "module" are ignored).

    ``custom_objects`` maps class names to user-defined LearningRateSchedule subclasses."""
    return _serial.deserialize(config, _BUILTIN, LearningRateSchedule, "learning-rate schedule",
                               custom_objects)
