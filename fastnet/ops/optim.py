"""Fused, in-place optimizer steps over flat 1-D parameter buffers (Keras 3 formulas).

A model keeps its parameters, gradients and optimizer slots in flat buffers, so one call updates
every weight in one pass over memory.  All buffers of a call must be 1-D, C-contiguous, of the
same float dtype and length, and must not overlap one another.

Every update op applies, in Keras 3's order and in the same pass over memory:

1. gradient clipping: ``g * grad_scale`` (a float, or one scale per variable given by
   ``segments``; see :func:`gradient_clip_scale` for Keras's clipnorm / global_clipnorm), then
   ``clip(g, -clipvalue, clipvalue)`` when ``clipvalue`` is set;
2. decoupled weight decay when ``weight_decay`` > 0: ``param -= param * weight_decay * lr``
   (Keras's ``BaseOptimizer._apply_weight_decay``, the step's own ``lr``);
3. the rule's ``update_step``.

``segments`` lists the (offset, size) of each variable inside the flat buffers; elements outside
every segment (alignment padding) use a scale of 1.
"""
import functools
import math
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import optim as _k
from fastnet.ops._checks import check_array, check_positive_int

__all__ = ["adagrad_update", "adam_update", "gradient_clip_scale", "rmsprop_update",
           "segment_norms", "sgd_update"]

# From this many parameters two threads beat one (measured on Zen 4: a parallel region costs
# about a microsecond, an Adam element about 0.3 ns while it stays in cache).
PARALLEL_MIN_PARAMS = 16384
# Sums of squares are reduced per chunk of this many elements (never per thread), so a norm's
# bits do not depend on the thread count.
NORM_CHUNK = 32768

_INF = float("inf")


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


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_buffers(param, others, read_only=("grad",)):
    """Check ``param`` and each (array, name) in ``others``: 1-D, same dtype/length, disjoint.

    Every buffer not named in ``read_only`` is written, so it must be writeable."""
    check_array(param, "param", ndim=1)
    if not param.flags.writeable:
        raise ValueError("param must be writeable")
    for arr, name in others:
        check_array(arr, name, ndim=1, dtype=param.dtype)
        if arr.shape != param.shape:
            raise ValueError(f"{name} must have the shape of param {param.shape}, "
                             f"got {arr.shape}")
        if name not in read_only and not arr.flags.writeable:
            raise ValueError(f"{name} must be writeable")
    arrays = [(param, "param")] + list(others)
    for i, (a, a_name) in enumerate(arrays):
        for b, b_name in arrays[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{a_name} and {b_name} must not overlap in memory")


# ---- segments ---------------------------------------------------------------------------------

class _Plan:
    """How a list of segments cuts a flat buffer of n elements (validated, computed once and
    cached).

    pieces:  ``starts`` (P + 1 offsets, 0 .. n) cut the buffer into segments and the gaps
             between them; ``piece_of_segment[s]`` is segment s's piece (-1 when empty).
    chunks:  [chunk_lo[c], chunk_hi[c]) cut the non-empty segments, sorted by offset, into
             NORM_CHUNK-element pieces; ``chunk_first`` indexes each one's first chunk and
             ``chunk_segments`` says which segments (input order) they are.
    """

    def __init__(self, segments, n):
        for i, s in enumerate(segments):
            if not (isinstance(s, tuple) and len(s) == 2 and all(
                    isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in s)):
                raise TypeError(f"segments must be a list of (offset, size) integer pairs, "
                                f"got {s!r} at index {i}")
            off, size = int(s[0]), int(s[1])
            if off < 0 or size < 0 or off + size > n:
                raise ValueError(f"segment {i} ({off}, {size}) does not fit in a buffer of {n} "
                                 f"elements (need 0 <= offset, 0 <= size, offset + size <= {n})")
        self.n = n
        self.count = len(segments)
        nonempty = sorted((int(off), int(size), i) for i, (off, size) in enumerate(segments)
                          if size > 0)
        starts, piece_of_segment = [0], np.full(self.count, -1, np.intp)
        chunk_lo, chunk_hi, chunk_first, chunk_segments = [], [], [], []
        end = 0
        for off, size, i in nonempty:
            if off < end:
                raise ValueError(f"segments must not overlap: segment {i} ({off}, {size}) starts "
                                 f"before offset {end}, where the previous one ends")
            if off > end:
                starts.append(off)          # a gap piece, scale 1
            piece_of_segment[i] = len(starts) - 1
            end = off + size
            starts.append(end)
            chunk_first.append(len(chunk_lo))
            chunk_segments.append(i)
            lo = np.arange(off, end, NORM_CHUNK, dtype=np.intp)
            chunk_lo.extend(lo.tolist())
            chunk_hi.extend(np.minimum(lo + NORM_CHUNK, end).tolist())
        if end < n:
            starts.append(n)
        self.starts = np.asarray(starts, np.intp)
        self.piece_of_segment = piece_of_segment
        self.chunk_lo = np.asarray(chunk_lo, np.intp)
        self.chunk_hi = np.asarray(chunk_hi, np.intp)
        self.chunk_first = np.asarray(chunk_first, np.intp)
        self.chunk_segments = np.asarray(chunk_segments, np.intp)


@functools.lru_cache(maxsize=16)
def _cached_plan(key, n):
    return _Plan(key, n)


def _plan(segments, n):
    """The cached _Plan of ``segments`` (a sequence of (offset, size)) over n elements."""
    if isinstance(segments, (str, bytes)) or not hasattr(segments, "__len__"):
        raise TypeError(f"segments must be a list of (offset, size) pairs, "
                        f"got {type(segments).__name__}")
    try:
        return _cached_plan(tuple(segments), n)     # the model's list of tuples: one hash
    except TypeError:
        pass
    try:
        key = tuple(tuple(s) for s in segments)     # e.g. lists or arrays of pairs
        hash(key)
    except TypeError:
        raise TypeError("segments must be a list of (offset, size) integer pairs") from None
    return _cached_plan(key, n)


def _sums_of_squares(grad, plan):
    """Sum of squares of each segment of ``plan`` (input order), float64, deterministic."""
    sums = np.zeros(plan.count, np.float64)
    if plan.chunk_lo.size:
        chunk_sums = np.empty(plan.chunk_lo.size, np.float64)
        _k.chunk_sumsq(grad, plan.chunk_lo, plan.chunk_hi, chunk_sums, _num_threads(grad.size))
        # add.reduceat adds each segment's chunks in chunk order: a fixed partition
        sums[plan.chunk_segments] = np.add.reduceat(chunk_sums, plan.chunk_first)
    return sums


def segment_norms(grad, segments=None):
    """The L2 norm of each segment of the flat ``grad``, as a float64 array.

    Args:
        grad: 1-D C-contiguous float32/float64 array.
        segments: list of (offset, size) of each variable in ``grad``, non-overlapping; None
            means one variable spanning ``grad``.

    Squares are summed in float64 over fixed chunks of the buffer, so the result is bitwise
    the same for any thread count.  Example::

        segment_norms(np.array([3., 4., 1.]), [(0, 2), (2, 1)])  # -> array([5., 1.])
    """
    check_array(grad, "grad", ndim=1)
    if segments is None:
        segments = [(0, grad.shape[0])]
    return np.sqrt(_sums_of_squares(grad, _plan(segments, grad.shape[0])))


def gradient_clip_scale(grad, segments=None, *, clipnorm=None, global_clipnorm=None):
    """The factor Keras 3 multiplies the gradients by to clip them by norm.

    ::

        clipnorm (per variable):  scale_s = clipnorm / max(norm(g_s), clipnorm)
        global_clipnorm:          scale   = min(1, global_clipnorm / sqrt(sum_s norm(g_s)**2))

    (Keras: ``_clip_by_norm`` and ``clip_by_global_norm``; a non-finite global norm gives a NaN
    scale, as in Keras, so a diverged step shows up instead of being silently clipped.)

    Args:
        grad: 1-D C-contiguous float32/float64 array.
        segments: list of (offset, size) of each variable; None means one variable.
        clipnorm, global_clipnorm: exactly one of them, a finite number > 0.

    Returns a float (global_clipnorm, or clipnorm with ``segments`` None) or a float64 array
    with one scale per segment (clipnorm), ready for the update ops' ``grad_scale``.
    """
    if (clipnorm is None) == (global_clipnorm is None):
        raise ValueError("give exactly one of clipnorm and global_clipnorm")
    if clipnorm is not None:
        clip = _check_scalar(clipnorm, "clipnorm", 0.0, math.inf, low_open=True)
    else:
        clip = _check_scalar(global_clipnorm, "global_clipnorm", 0.0, math.inf, low_open=True)
    check_array(grad, "grad", ndim=1)
    n = grad.shape[0]
    sums = _sums_of_squares(grad, _plan([(0, n)] if segments is None else segments, n))
    if global_clipnorm is not None:
        total = math.sqrt(math.fsum(sums))           # fsum: exact, so order-free
        if not math.isfinite(total):
            return math.nan
        return 1.0 if total <= clip else clip / total
    norms = np.sqrt(sums)
    with np.errstate(invalid="ignore"):
        scales = clip / np.maximum(norms, clip)      # NaN norms stay NaN, as in Keras
    return float(scales[0]) if segments is None else scales


def _prepare_common(param, lr, weight_decay, clipvalue, grad_scale, segments):
    """Validate the options every rule shares; the kernel's (decay, wd, clip, scale, starts,
    scales) arguments."""
    lr = _check_scalar(lr, "lr", 0.0, math.inf)
    wd = _check_scalar(weight_decay, "weight_decay", 0.0, math.inf)
    clip = _INF if clipvalue is None else _check_scalar(clipvalue, "clipvalue", 0.0, math.inf,
                                                        low_open=True)
    n = param.shape[0]
    starts = scales = None
    if isinstance(grad_scale, np.ndarray):
        if segments is None:
            raise ValueError("grad_scale as an array (one scale per segment) needs segments")
        if grad_scale.ndim != 1 or grad_scale.dtype.kind != "f":
            raise TypeError(f"grad_scale must be a float or a 1-D float array, "
                            f"got {grad_scale.dtype} {grad_scale.shape}")
        plan = _plan(segments, n)
        if grad_scale.shape[0] != plan.count:
            raise ValueError(f"grad_scale has {grad_scale.shape[0]} scales for "
                             f"{plan.count} segments")
        if np.any(grad_scale < 0):
            raise ValueError("grad_scale must be >= 0")
        scale = 1.0
        if plan.starts.size >= 2:
            scales = np.ones(plan.starts.size - 1, np.float64)
            used = plan.piece_of_segment >= 0
            scales[plan.piece_of_segment[used]] = grad_scale[used]
            if np.all(scales == scales[0]):    # e.g. nothing clipped: the one-scale loop
                scale, scales = float(scales[0]), None
            else:
                starts = plan.starts
    else:
        if isinstance(grad_scale, bool) or not isinstance(grad_scale, numbers.Real):
            raise TypeError(f"grad_scale must be a real number or an array, "
                            f"got {type(grad_scale).__name__}")
        scale = float(grad_scale)
        if scale < 0:
            raise ValueError(f"grad_scale must be >= 0, got {scale}")
        if segments is not None:
            _plan(segments, n)                 # validate them all the same
    return lr, wd != 0.0, wd, clip, scale, starts, scales


# ---- update rules ---------------------------------------------------------------------------

def sgd_update(param, grad, velocity=None, *, lr, momentum=0.0, nesterov=False,
               weight_decay=0.0, clipvalue=None, grad_scale=1.0, segments=None):
    """One SGD step in place, as Keras 3's ``SGD.update_step`` computes it.

    ::

        momentum == 0:  param -= grad * lr                (velocity, if given, is untouched)
        otherwise:      velocity = velocity * momentum - grad * lr
                        param += velocity                                    (nesterov=False)
                        param += velocity * momentum - grad * lr             (nesterov=True)

    PyTorch keeps ``buf = momentum * buf + grad`` and steps ``-lr * buf``: the same trajectory
    at a constant learning rate (velocity = -lr * buf), different when lr changes.

    Args:
        param, grad: 1-D C-contiguous float32/float64 arrays of one length and dtype.
        velocity: the momentum slot (same length and dtype), required when momentum > 0.
        lr: learning rate, finite and >= 0.
        momentum: in [0, 1].
        nesterov: bool.
        weight_decay, clipvalue, grad_scale, segments: see the module docstring.

    Returns None.
    """
    lr = _check_scalar(lr, "lr", 0.0, math.inf)
    momentum = _check_scalar(momentum, "momentum", 0.0, 1.0)
    nesterov = _check_bool(nesterov, "nesterov")
    use_velocity = momentum != 0.0
    if use_velocity and velocity is None:
        raise ValueError(f"velocity is required when momentum > 0 (momentum={momentum})")
    others = [(grad, "grad")]
    if velocity is not None:
        others.append((velocity, "velocity"))
    _check_buffers(param, others, read_only=("grad",) if use_velocity else ("grad", "velocity"))
    lr, decay, wd, clip, scale, starts, scales = _prepare_common(
        param, lr, weight_decay, clipvalue, grad_scale, segments)
    n = param.shape[0]
    if n == 0:
        return None
    rule = (_k.RULE_SGD if not use_velocity else
            _k.RULE_SGD_NESTEROV if nesterov else _k.RULE_SGD_MOMENTUM)
    _k.step(rule, decay, param, grad, velocity if use_velocity else None, None, None,
            lr, wd, momentum, 0.0, 0.0, 0.0, clip, scale, starts, scales, _num_threads(n))
    return None


def adam_update(param, grad, m, v, *, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step,
                amsgrad=False, v_hat=None, weight_decay=0.0, clipvalue=None, grad_scale=1.0,
                segments=None):
    """One Adam (or AMSGrad, or with weight_decay AdamW) step in place, as Keras 3's
    ``Adam.update_step`` computes it.

    ::

        lr_t = lr * sqrt(1 - beta_2**step) / (1 - beta_1**step)
        m += (grad - m) * (1 - beta_1)
        v += (grad**2 - v) * (1 - beta_2)
        amsgrad:  v_hat = maximum(v_hat, v);  v = v_hat
        param -= (m * lr_t) / (sqrt(v) + epsilon)

    Keras adds epsilon to sqrt(v) (epsilon "hat"); PyTorch adds it to sqrt(v / (1 -
    beta_2**step)), i.e. Keras's epsilon is PyTorch's times sqrt(1 - beta_2**step).  The two
    agree when epsilon is negligible.

    Args:
        param, grad, m, v: 1-D C-contiguous float32/float64 arrays of one length and dtype, no
            two overlapping; ``param``, ``m`` and ``v`` are updated in place.
        lr: learning rate, finite and >= 0.
        beta_1, beta_2: decay rates in [0, 1).
        epsilon: finite and >= 0.
        step: the 1-based number of this step (Keras's ``iterations + 1``).
        amsgrad: bool; then ``v_hat`` (same length and dtype) is required and updated.
        weight_decay, clipvalue, grad_scale, segments: see the module docstring.

    Returns None.  Example::

        adam_update(params, grads, m, v, lr=1e-3, step=optimizer_iterations + 1)
    """
    amsgrad = _check_bool(amsgrad, "amsgrad")
    others = [(grad, "grad"), (m, "m"), (v, "v")]
    if amsgrad:
        if v_hat is None:
            raise ValueError("v_hat is required when amsgrad=True")
        others.append((v_hat, "v_hat"))
    _check_buffers(param, others)
    beta_1 = _check_scalar(beta_1, "beta_1", 0.0, 1.0, high_open=True)
    beta_2 = _check_scalar(beta_2, "beta_2", 0.0, 1.0, high_open=True)
    epsilon = _check_scalar(epsilon, "epsilon", 0.0, math.inf)
    step = check_positive_int(step, "step", minimum=1)
    lr, decay, wd, clip, scale, starts, scales = _prepare_common(
        param, lr, weight_decay, clipvalue, grad_scale, segments)
    n = param.shape[0]
    if n == 0:
        return None
    lr_t = lr * math.sqrt(1.0 - beta_2 ** step) / (1.0 - beta_1 ** step)
    _k.step(_k.RULE_ADAM_AMSGRAD if amsgrad else _k.RULE_ADAM, decay, param, grad, m, v,
            v_hat if amsgrad else None, lr, wd, lr_t, 1.0 - beta_1, 1.0 - beta_2, epsilon, clip,
            scale, starts, scales, _num_threads(n))
    return None


def rmsprop_update(param, grad, velocity, momentum_buffer=None, average_gradient=None, *, lr,
                   rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=0.0,
                   clipvalue=None, grad_scale=1.0, segments=None):
    """One RMSprop step in place, as Keras 3's ``RMSprop.update_step`` computes it.

    ::

        velocity = rho * velocity + (1 - rho) * grad**2
        centered:  average_gradient = rho * average_gradient + (1 - rho) * grad
                   denominator = velocity - average_gradient**2 + epsilon
        otherwise: denominator = velocity + epsilon
        increment = lr * grad / sqrt(denominator)
        momentum > 0:  momentum_buffer = momentum * momentum_buffer + increment
                       param -= momentum_buffer
        otherwise:     param -= increment

    Keras puts epsilon inside the square root, PyTorch outside (sqrt(velocity) + eps); with
    momentum PyTorch accumulates grad / denominator and multiplies by lr afterwards (the same
    at a constant lr).

    Args:
        param, grad, velocity: 1-D C-contiguous float32/float64 arrays of one length and dtype.
        momentum_buffer: required when momentum > 0; average_gradient: required when centered.
        lr: finite and >= 0.  rho: in [0, 1).  momentum: in [0, 1].  epsilon: >= 0.
        centered: bool.
        weight_decay, clipvalue, grad_scale, segments: see the module docstring.

    Returns None.
    """
    rho = _check_scalar(rho, "rho", 0.0, 1.0, high_open=True)
    momentum = _check_scalar(momentum, "momentum", 0.0, 1.0)
    epsilon = _check_scalar(epsilon, "epsilon", 0.0, math.inf)
    centered = _check_bool(centered, "centered")
    use_momentum = momentum > 0.0
    others = [(grad, "grad"), (velocity, "velocity")]
    if use_momentum:
        if momentum_buffer is None:
            raise ValueError(f"momentum_buffer is required when momentum > 0 "
                             f"(momentum={momentum})")
        others.append((momentum_buffer, "momentum_buffer"))
    if centered:
        if average_gradient is None:
            raise ValueError("average_gradient is required when centered=True")
        others.append((average_gradient, "average_gradient"))
    _check_buffers(param, others)
    lr, decay, wd, clip, scale, starts, scales = _prepare_common(
        param, lr, weight_decay, clipvalue, grad_scale, segments)
    n = param.shape[0]
    if n == 0:
        return None
    rule = (_k.RULE_RMSPROP_CENTERED_MOMENTUM if centered and use_momentum else
            _k.RULE_RMSPROP_CENTERED if centered else
            _k.RULE_RMSPROP_MOMENTUM if use_momentum else _k.RULE_RMSPROP)
    _k.step(rule, decay, param, grad, velocity, momentum_buffer if use_momentum else None,
            average_gradient if centered else None, lr, wd, rho, 1.0 - rho, momentum, epsilon,
            clip, scale, starts, scales, _num_threads(n))
    return None


def adagrad_update(param, grad, accumulator, *, lr, epsilon=1e-7, weight_decay=0.0,
                   clipvalue=None, grad_scale=1.0, segments=None):
    """One Adagrad step in place, as Keras 3's ``Adagrad.update_step`` computes it.

    ::

        accumulator += grad**2
        param -= lr * grad / sqrt(accumulator + epsilon)

    Keras puts epsilon inside the square root and starts the accumulator at 0.1 (the
    optimizer's ``initial_accumulator_value``); PyTorch adds epsilon to the root and starts at 0.

    Args:
        param, grad, accumulator: 1-D C-contiguous float32/float64 arrays of one length and
            dtype.
        lr: finite and >= 0.  epsilon: >= 0.
        weight_decay, clipvalue, grad_scale, segments: see the module docstring.

    Returns None.
    """
    epsilon = _check_scalar(epsilon, "epsilon", 0.0, math.inf)
    _check_buffers(param, [(grad, "grad"), (accumulator, "accumulator")])
    lr, decay, wd, clip, scale, starts, scales = _prepare_common(
        param, lr, weight_decay, clipvalue, grad_scale, segments)
    n = param.shape[0]
    if n == 0:
        return None
    _k.step(_k.RULE_ADAGRAD, decay, param, grad, accumulator, None, None, lr, wd, 0.0, 0.0, 0.0,
            epsilon, clip, scale, starts, scales, _num_threads(n))
    return None
