"""Optimizers with Keras 3's names, arguments and update rules.

Each step is one fused compiled pass over the model's flat parameter buffer: gradient clipping,
decoupled weight decay and the rule's update happen in the same loop (``fastnet.ops.optim``).
Per step an optimizer does what Keras 3's ``BaseOptimizer.apply`` does:

1. ``lr`` = ``learning_rate``, or the schedule evaluated at ``iterations`` (steps taken so far);
2. clip the gradients: ``clipnorm`` (each variable's gradient scaled to norm <= clipnorm),
   ``global_clipnorm`` (all gradients scaled together) or ``clipvalue`` (elementwise) -- at most
   one of the three, as Keras 3 requires;
3. if ``weight_decay`` is set: ``var -= var * weight_decay * lr`` (decoupled, every variable);
4. the rule's update (see each class), then ``iterations += 1``.

The state (``iterations``, the learning rate when it is a float, and every slot buffer) is read
with :meth:`Optimizer.get_state` and restored with :meth:`Optimizer.set_state` as plain arrays.
"""
import math
import numbers
import sys
import warnings

import numpy as np

from fastnet import schedules
from fastnet.ops import optim as optim_ops
from fastnet.schedules import LearningRateSchedule
from fastnet.utils import serialization as _serial

# `fastnet.optimizers.schedules.CosineDecay` and `from fastnet.optimizers.schedules import ...`
# work as in Keras (``keras.optimizers.schedules``).
sys.modules.setdefault(__name__ + ".schedules", schedules)

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "deserialize", "get",
           "schedules", "serialize"]

# Keras 3 optimizer arguments fastnet does not implement: accepted at their default value (so a
# Keras config loads), refused otherwise.
_KERAS_DEFAULTS = {"use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                   "loss_scale_factor": None, "gradient_accumulation_steps": None}


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


def _check_positive(value, name):
    """None, or a finite number > 0 (the clipping thresholds)."""
    if value is None:
        return None
    value = _check_float(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 (or None to disable it), got {value}")
    return value


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


class Optimizer:
    """Base class: the learning rate (float or schedule), clipping, weight decay, the step
    counter, the slot buffers and their state.

    A subclass names its slots in ``_slot_names()`` and applies its rule in ``_update``.  The
    model calls ``apply(flat_params, flat_grads, segments)`` once per step; ``build(size,
    dtype)`` (called by the first ``apply``) allocates the slots.
    """

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        for key, value in kwargs.items():
            if key not in _KERAS_DEFAULTS:
                raise ValueError(f"argument(s) not recognized: {sorted(kwargs)}")
            if value != _KERAS_DEFAULTS[key]:
                raise NotImplementedError(f"{key}={value!r} is not supported by fastnet "
                                          f"optimizers (only the default {_KERAS_DEFAULTS[key]!r})")
        if name is None:
            name = type(self).__name__.lower()
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self.name = name
        self.weight_decay = (None if weight_decay is None
                             else _check_float(weight_decay, "weight_decay", low=0.0))
        self.clipnorm = _check_positive(clipnorm, "clipnorm")
        self.clipvalue = _check_positive(clipvalue, "clipvalue")
        self.global_clipnorm = _check_positive(global_clipnorm, "global_clipnorm")
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(f"only one of clipnorm, clipvalue and global_clipnorm can be set "
                             f"(as in Keras 3); got clipnorm={clipnorm}, clipvalue={clipvalue}, "
                             f"global_clipnorm={global_clipnorm}")
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.iterations = 0
        self.built = False
        self._size = self._dtype = None
        self._slots = {}

    # -- learning rate -------------------------------------------------------------------------
    @property
    def learning_rate(self):
        """The learning rate of the next step, a float (a schedule is evaluated at
        ``iterations``).  Assign a float, or a LearningRateSchedule, to change it."""
        lr = self._learning_rate
        if not isinstance(lr, LearningRateSchedule):
            return lr
        value = lr(self.iterations)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"the learning-rate schedule {type(lr).__name__} returned "
                             f"{value!r} at step {self.iterations}; a learning rate must be a "
                             f"finite number >= 0")
        return float(value)

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError("this optimizer was created with a LearningRateSchedule as its "
                            "learning_rate, so its learning rate is not settable (as in Keras); "
                            "create it with a float learning_rate to change the rate by hand")
        self._learning_rate = _check_float(value, "learning_rate", low=0.0)

    # -- slots ---------------------------------------------------------------------------------
    def _slot_names(self):
        """Names of the slot buffers this configuration needs (Keras's variable names)."""
        return ()

    def _new_slot(self, name):
        return np.zeros(self._size, self._dtype)

    def build(self, size, dtype):
        """Allocate fresh slots for a flat buffer of ``size`` parameters of ``dtype``."""
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
            raise ValueError(f"size must be an integer >= 0, got {size!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self._size, self._dtype = int(size), dtype
        self._slots = {}
        for name in self._slot_names():
            self._slots[name] = self._new_slot(name)
        self.built = True

    # -- one step ------------------------------------------------------------------------------
    def apply(self, params, grads, segments=None):
        """One update of the flat ``params`` (1-D) with the flat ``grads`` (1-D), in place.

        ``segments`` lists the (offset, size) of each variable inside the flat buffers, for
        the per-variable rules (clipnorm); None means one variable spanning the buffer.
        Elements outside every segment (alignment padding) are updated with their own,
        normally zero, gradient."""
        if not isinstance(params, np.ndarray):
            raise TypeError(f"params must be a numpy.ndarray, got {type(params).__name__}")
        if not self.built or self._size != params.size or self._dtype != params.dtype:
            if self.built and self.iterations:
                warnings.warn(f"optimizer {self.name!r} was built for {self._size} {self._dtype} "
                              f"parameters and now gets {params.size} {params.dtype}: its slots "
                              f"restart from zero", RuntimeWarning, stacklevel=2)
            self.build(params.size, params.dtype)
        lr = self.learning_rate
        scale = 1.0
        if self.clipnorm is not None:
            scale = optim_ops.gradient_clip_scale(grads, segments, clipnorm=self.clipnorm)
        elif self.global_clipnorm is not None:
            scale = optim_ops.gradient_clip_scale(grads, segments,
                                                  global_clipnorm=self.global_clipnorm)
        self._update(params, grads, lr, dict(weight_decay=self.weight_decay or 0.0,
                                             clipvalue=self.clipvalue, grad_scale=scale,
                                             segments=segments))
        self.iterations += 1

    def _update(self, params, grads, lr, options):
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------
    def get_state(self):
        """The optimizer's state as plain arrays (copies): ``iterations`` (int64, shape (1,)),
        ``learning_rate`` (float64, shape (1,); only when it is a float, not a schedule) and
        each slot buffer by its Keras name (1-D, the parameters' dtype; only once built).

        The scalars are 1-element arrays rather than 0-d ones so that every writer keeps their
        shape (``np.ascontiguousarray`` turns a 0-d array into shape (1,))."""
        state = {"iterations": np.array([self.iterations], np.int64)}
        if not isinstance(self._learning_rate, LearningRateSchedule):
            state["learning_rate"] = np.array([self._learning_rate], np.float64)
        for name, slot in self._slots.items():
            state[name] = slot.copy()
        return state

    def set_state(self, state):
        """Restore what :meth:`get_state` returned (validated; the arrays are copied).

        The slot arrays must be exactly this configuration's slots, 1-D, of one length and
        float dtype -- the built size and dtype if the optimizer is built, else they build it.
        ``learning_rate`` is ignored when the learning rate is a schedule."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
        if "iterations" not in state:
            raise ValueError("state lacks 'iterations'")
        it = np.asarray(state["iterations"])
        if it.size != 1 or it.dtype.kind not in "iu" or int(it.reshape(-1)[0]) < 0:
            raise ValueError(f"state['iterations'] must be one integer >= 0, got {it!r}")
        lr = None
        if "learning_rate" in state:
            lr_arr = np.asarray(state["learning_rate"])
            if lr_arr.size != 1 or lr_arr.dtype.kind != "f":
                raise ValueError(f"state['learning_rate'] must be one float, got {lr_arr!r}")
            lr = _check_float(float(lr_arr.reshape(-1)[0]), "state['learning_rate']", low=0.0)
        expected = set(self._slot_names())
        given = set(state) - {"iterations", "learning_rate"}
        if given - expected:
            raise ValueError(f"state has unknown entries {sorted(given - expected)} for "
                             f"{type(self).__name__} with this configuration (slots: "
                             f"{sorted(expected) or 'none'})")
        if expected - given and (given or self.built):
            raise ValueError(f"state lacks the slot(s) {sorted(expected - given)} of "
                             f"{type(self).__name__} with this configuration")
        slots = {}
        for name in sorted(given):
            arr = state[name]
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"state[{name!r}] must be a numpy.ndarray, "
                                f"got {type(arr).__name__}")
            if arr.ndim != 1 or arr.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise ValueError(f"state[{name!r}] must be a 1-D float32/float64 array, "
                                 f"got {arr.dtype} {arr.shape}")
            slots[name] = arr
        if slots:
            sizes = {a.size for a in slots.values()}
            dtypes = {a.dtype for a in slots.values()}
            if len(sizes) > 1 or len(dtypes) > 1:
                raise ValueError(f"state slots must share one length and dtype, got "
                                 f"{ {k: (a.dtype.name, a.size) for k, a in slots.items()} }")
            size, dtype = sizes.pop(), dtypes.pop()
            if self.built and (size, dtype) != (self._size, self._dtype):
                raise ValueError(f"state slots hold {size} {dtype} values but the optimizer was "
                                 f"built for {self._size} {self._dtype} parameters")
            if not self.built:
                self.build(size, dtype)
            for name, arr in slots.items():
                np.copyto(self._slots[name], arr)
        self.iterations = int(it.reshape(-1)[0])
        if lr is not None and not isinstance(self._learning_rate, LearningRateSchedule):
            self._learning_rate = lr

    # -- config --------------------------------------------------------------------------------
    def get_config(self):
        """The constructor arguments as a JSON-compatible dict (a schedule as its
        ``{"class_name", "config"}``); ``from_config`` inverts it.  No state."""
        lr = self._learning_rate
        return {"name": self.name,
                "learning_rate": schedules.serialize(lr) if isinstance(lr, LearningRateSchedule)
                else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"],
                                                            custom_objects)
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} iterations={self.iterations}>"


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, Keras 3's ``SGD``::

        momentum == 0:  w -= lr * g
        otherwise:      velocity = momentum * velocity - lr * g
                        w += velocity                        (nesterov: w += momentum *
                                                              velocity - lr * g)

    PyTorch's ``SGD`` keeps ``buf = momentum * buf + g`` and steps ``-lr * buf``: the same
    trajectory while lr is constant.  ``weight_decay`` here is Keras's decoupled decay
    (``w -= w * weight_decay * lr`` before the step), not PyTorch's L2 term added to g.

    Slots: ``momentum`` (when momentum > 0).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="SGD", **kwargs):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)
        self.momentum = _check_float(momentum, "momentum", low=0.0, high=1.0)
        self.nesterov = _check_bool(nesterov, "nesterov")

    def _slot_names(self):
        return ("momentum",) if self.momentum != 0 else ()

    def _update(self, params, grads, lr, options):
        optim_ops.sgd_update(params, grads, self._slots.get("momentum"), lr=lr,
                             momentum=self.momentum, nesterov=self.nesterov, **options)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, nesterov=self.nesterov)
        return cfg


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras 3's ``Adam``::

        lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)          (t = iterations + 1)
        m += (g - m) * (1 - beta_1)
        v += (g**2 - v) * (1 - beta_2)
        amsgrad: v_hat = maximum(v_hat, v), used instead of v
        w -= m * lr_t / (sqrt(v) + epsilon)

    Keras (and this) adds epsilon to sqrt(v), the paper's "epsilon hat"; PyTorch adds it to
    sqrt(v / (1 - beta_2**t)).  The two coincide when epsilon is negligible.

    Slots: ``momentum`` (m), ``velocity`` (v), ``velocity_hat`` (when amsgrad).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adam", **kwargs):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)
        self.beta_1 = _check_float(beta_1, "beta_1", low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_float(beta_2, "beta_2", low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_float(epsilon, "epsilon", low=0.0)
        self.amsgrad = _check_bool(amsgrad, "amsgrad")

    def _slot_names(self):
        return ("momentum", "velocity") + (("velocity_hat",) if self.amsgrad else ())

    def _update(self, params, grads, lr, options):
        s = self._slots
        optim_ops.adam_update(params, grads, s["momentum"], s["velocity"], lr=lr,
                              beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                              step=self.iterations + 1, amsgrad=self.amsgrad,
                              v_hat=s.get("velocity_hat"), **options)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                   amsgrad=self.amsgrad)
        return cfg


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras 3's ``AdamW``: before the
    Adam step of :class:`Adam`, ``w -= w * weight_decay * lr`` (``lr`` the step's learning rate,
    not Adam's lr_t).  PyTorch's ``AdamW`` does the same (``w *= 1 - lr * weight_decay``).

    Slots: as :class:`Adam`.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adamw", **kwargs):
        if weight_decay is None:
            raise ValueError("weight_decay must be a number for AdamW, got None")
        super().__init__(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)


class RMSprop(Optimizer):
    """RMSprop (Hinton), Keras 3's ``RMSprop``::

        velocity = rho * velocity + (1 - rho) * g**2
        centered:  average_gradient = rho * average_gradient + (1 - rho) * g
                   denominator = velocity - average_gradient**2 + epsilon
        otherwise: denominator = velocity + epsilon
        increment = lr * g / sqrt(denominator)
        momentum > 0:  momentum_buf = momentum * momentum_buf + increment;  w -= momentum_buf
        otherwise:     w -= increment

    Keras puts epsilon inside the square root, PyTorch outside (``sqrt(v) + eps``), and
    PyTorch's default rho (alpha) is 0.99 against Keras's 0.9.

    Slots: ``velocity``, ``momentum`` (when momentum > 0), ``average_gradient`` (when centered).
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="rmsprop", **kwargs):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)
        self.rho = _check_float(rho, "rho", low=0.0, high=1.0, high_open=True)
        self.momentum = _check_float(momentum, "momentum", low=0.0, high=1.0)
        self.epsilon = _check_float(epsilon, "epsilon", low=0.0)
        self.centered = _check_bool(centered, "centered")

    def _slot_names(self):
        return (("velocity",) + (("momentum",) if self.momentum > 0 else ())
                + (("average_gradient",) if self.centered else ()))

    def _update(self, params, grads, lr, options):
        s = self._slots
        optim_ops.rmsprop_update(params, grads, s["velocity"], s.get("momentum"),
                                 s.get("average_gradient"), lr=lr, rho=self.rho,
                                 momentum=self.momentum, epsilon=self.epsilon,
                                 centered=self.centered, **options)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                   centered=self.centered)
        return cfg


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), Keras 3's ``Adagrad``::

        accumulator += g**2                 (starting at initial_accumulator_value)
        w -= lr * g / sqrt(accumulator + epsilon)

    Keras puts epsilon inside the square root and starts the accumulator at 0.1; PyTorch adds
    epsilon (1e-10) to the root and starts at 0 (its ``initial_accumulator_value``).

    Slots: ``accumulator``.
    """

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name="adagrad", **kwargs):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)
        self.initial_accumulator_value = _check_float(
            initial_accumulator_value, "initial_accumulator_value", low=0.0)
        self.epsilon = _check_float(epsilon, "epsilon", low=0.0)

    def _slot_names(self):
        return ("accumulator",)

    def _new_slot(self, name):
        return np.full(self._size, self.initial_accumulator_value, self._dtype)

    def _update(self, params, grads, lr, options):
        optim_ops.adagrad_update(params, grads, self._slots["accumulator"], lr=lr,
                                 epsilon=self.epsilon, **options)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(initial_accumulator_value=self.initial_accumulator_value,
                   epsilon=self.epsilon)
        return cfg


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def serialize(optimizer):
    """``{"class_name": ..., "config": optimizer.get_config()}``, JSON-compatible."""
    return _serial.serialize(optimizer, Optimizer, "fastnet.optimizers.Optimizer")


def deserialize(config, custom_objects=None):
    """The optimizer described by ``{"class_name": ..., "config": {...}}`` (what
    :func:`serialize` and Keras write).  ``custom_objects`` maps names to Optimizer subclasses
    or LearningRateSchedule subclasses used in the config."""
    cls = _serial.resolve(config, lambda name: _BY_NAME.get(name.lower()), Optimizer,
                          "optimizer", custom_objects)
    return cls.from_config(config.get("config") or {}, custom_objects)


def get(identifier):
    """An optimizer from its name ('sgd', 'adam', 'adamw', 'rmsprop', 'adagrad', with default
    arguments), a config dict ``{"class_name", "config"}``, or an Optimizer (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown optimizer {identifier!r}; expected one of "
                             f"{sorted(_BY_NAME)} or a fastnet.optimizers.Optimizer")
        return _BY_NAME[key]()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(f"optimizer must be a name, a config dict or a fastnet.optimizers.Optimizer, "
                    f"got {type(identifier).__name__}")
