"""Fused, in-place optimizer steps over flat 1-D parameter buffers (Keras 3 formulas).

A model keeps its parameters, gradients and optimizer slots in flat buffers, so one call updates
every weight in one pass over memory.  All buffers of a call must be 1-D, C-contiguous, of the
same float dtype and length, and must not overlap one another.
"""
import math
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import optim as _k
from fastnet.ops._checks import check_array, check_positive_int

__all__ = ["adam_update", "sgd_update"]

# From this many parameters two threads beat one (measured on Zen 4: a parallel region costs
# about a microsecond, an Adam element about 0.3 ns while it stays in cache).
PARALLEL_MIN_PARAMS = 16384


def _num_threads(n):
    return config.get_num_threads() if n >= PARALLEL_MIN_PARAMS else 1


def _check_scalar(value, name, low, high, *, low_open=False, high_open=False):
    """Return ``value`` as float after checking it is a finite real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        lo_br = "(" if low_open else "["
        hi_br = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo_br}{low}, {high}{hi_br}, got {value}")
    return value


def _check_buffers(param, others):
    """Check ``param`` and each (array, name) in ``others``: 1-D, same dtype/length, disjoint."""
    check_array(param, "param", ndim=1)
    if not param.flags.writeable:
        raise ValueError("param must be writeable")
    for arr, name in others:
        check_array(arr, name, ndim=1, dtype=param.dtype)
        if arr.shape != param.shape:
            raise ValueError(f"{name} must have the shape of param {param.shape}, "
                             f"got {arr.shape}")
    arrays = [(param, "param")] + list(others)
    for i, (a, a_name) in enumerate(arrays):
        for b, b_name in arrays[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{a_name} and {b_name} must not overlap in memory")


def adam_update(param, grad, m, v, *, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step):
    """One Adam step in place, as Keras 3's ``Adam.update_step`` computes it.

    ::

        lr_t = lr * sqrt(1 - beta_2**step) / (1 - beta_1**step)
        m += (grad - m) * (1 - beta_1)
        v += (grad**2 - v) * (1 - beta_2)
        param -= (m * lr_t) / (sqrt(v) + epsilon)

    Args:
        param, grad, m, v: 1-D C-contiguous float32/float64 arrays of one length and dtype, no
            two overlapping; ``param``, ``m`` and ``v`` are updated in place.
        lr: learning rate, finite and >= 0.
        beta_1, beta_2: decay rates in [0, 1).
        epsilon: finite and >= 0.
        step: the 1-based number of this step (Keras's ``iterations + 1``).

    Returns None.  Example::

        adam_update(params, grads, m, v, lr=1e-3, step=optimizer_iterations + 1)
    """
    _check_buffers(param, [(grad, "grad"), (m, "m"), (v, "v")])
    for arr, name in ((m, "m"), (v, "v")):
        if not arr.flags.writeable:
            raise ValueError(f"{name} must be writeable")
    lr = _check_scalar(lr, "lr", 0.0, math.inf)
    beta_1 = _check_scalar(beta_1, "beta_1", 0.0, 1.0, high_open=True)
    beta_2 = _check_scalar(beta_2, "beta_2", 0.0, 1.0, high_open=True)
    epsilon = _check_scalar(epsilon, "epsilon", 0.0, math.inf)
    step = check_positive_int(step, "step", minimum=1)
    n = param.shape[0]
    if n == 0:
        return None
    lr_t = lr * math.sqrt(1.0 - beta_2 ** step) / (1.0 - beta_1 ** step)
    _k.adam(param, grad, m, v, lr_t, 1.0 - beta_1, 1.0 - beta_2, epsilon, _num_threads(n))
    return None


def sgd_update(param, grad, velocity=None, *, lr, momentum=0.0, nesterov=False):
    """One SGD step in place, as Keras 3's ``SGD.update_step`` computes it.

    ::

        momentum == 0:  param -= lr * grad                (velocity, if given, is untouched)
        otherwise:      velocity = momentum * velocity - lr * grad
                        param += velocity                                    (nesterov=False)
                        param += momentum * velocity - lr * grad             (nesterov=True)

    Args:
        param, grad: 1-D C-contiguous float32/float64 arrays of one length and dtype.
        velocity: the momentum slot (same length and dtype), required when momentum > 0.
        lr: learning rate, finite and >= 0.
        momentum: in [0, 1].
        nesterov: bool.

    Returns None.
    """
    lr = _check_scalar(lr, "lr", 0.0, math.inf)
    momentum = _check_scalar(momentum, "momentum", 0.0, 1.0)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
    use_velocity = momentum != 0.0
    if use_velocity and velocity is None:
        raise ValueError(f"velocity is required when momentum > 0 (momentum={momentum})")
    others = [(grad, "grad")]
    if velocity is not None:
        others.append((velocity, "velocity"))
    _check_buffers(param, others)
    if use_velocity and not velocity.flags.writeable:
        raise ValueError("velocity must be writeable")
    n = param.shape[0]
    if n == 0:
        return None
    _k.sgd(param, grad, velocity if use_velocity else None, lr, momentum, bool(nesterov),
           _num_threads(n))
    return None
