"""Batch normalization over the last (channel) axis: NHWC activations or (N, C) features.

Shape contract::

    x, y, dy, dx    (..., C)   statistics over every axis but the last (N*H*W rows for NHWC)
    gamma, beta     (C,) or None (None: 1 and 0, Keras's scale=False / center=False)
    moving_mean, moving_variance, mean, inv_std   (C,)

Training (Keras 3 ``BatchNormalization(training=True)``)::

    mean = mean(x), var = mean((x - mean)**2)          (biased: Keras normalizes with it and
    y = (x - mean) / sqrt(var + eps) * gamma + beta     also stores it in the moving variance)
    moving_mean     = moving_mean * momentum + mean * (1 - momentum)      (in place)
    moving_variance = moving_variance * momentum + var * (1 - momentum)

Inference: the same with the moving statistics, which are left alone.  (PyTorch differs: its
``momentum`` weighs the new value and its running variance is the unbiased one.)

The statistics are accumulated in double over fixed row chunks and reduced in a fixed order:
bitwise the same results for any thread count.

Example::

    >>> y, mean, inv_std = batch_norm_forward(x, gamma, beta, mm, mv, training=True)
    >>> dx = batch_norm_backward(dy, x, gamma, mean, inv_std, dgamma=dg, dbeta=db)
"""
import math
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import norm as _k
from fastnet.ops._checks import check_array, check_out
from fastnet.ops._workspace import scratch

__all__ = ["batch_norm_forward", "batch_norm_backward", "fold_batch_norm"]

# Elements from which two threads pay, measured on Zen 4 (the backward pays from ~16K, the
# forward from ~64K; a parallel region costs 1-2 us).
PARALLEL_MIN_ELEMENTS = 32768


def _threads(n):
    return config.get_num_threads() if n >= PARALLEL_MIN_ELEMENTS else 1


def _scalar(v, name, low, high, low_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {v}")
    return v


def _check_x(x, name):
    check_array(x, name)
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (batch, ..., channels), "
                         f"got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not have a zero-sized dimension, got shape {x.shape}")
    return x.reshape(-1, x.shape[-1])


def _check_vec(v, name, c, dtype, optional=False, writeable=False):
    if v is None and optional:
        return None
    check_array(v, name, ndim=1, dtype=dtype)
    if v.shape[0] != c:
        raise ValueError(f"{name} must have shape ({c},) (the channels of x), got {v.shape}")
    if writeable and not v.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return v


def _check_outputs(outputs, inputs):
    """No output (array, name) may overlap another output or any input; inputs may overlap one
    another (they are only read).  (An ``out`` allowed to be its input itself is left out of
    ``inputs`` by the caller.)"""
    hit = _k.first_overlap(tuple(a for a, _ in outputs), tuple(a for a, _ in inputs))
    if hit is not None:
        names = [n for _, n in outputs] + [n for _, n in inputs]
        raise ValueError(f"{names[hit[0]]} must not overlap {names[hit[1]]} in memory")


def batch_norm_forward(x, gamma, beta, moving_mean, moving_variance, *, training,
                       momentum=0.99, epsilon=1e-3, out=None, mean_out=None, inv_std_out=None):
    """Batch-normalize x over all axes but the last.

    Args:
        x: C-contiguous float32/float64 (..., C), at least 2-D.
        gamma, beta: (C,) of x's dtype, or None (scale 1 / offset 0).
        moving_mean, moving_variance: (C,); updated in place when ``training``.
        training: True: batch statistics (and update the moving ones); False: moving ones.
        momentum: in [0, 1]; epsilon: > 0.
        out: optional output buffer like x (may be x itself).
        mean_out, inv_std_out: optional (C,) buffers receiving the statistics used (batch or
            moving mean, 1 / sqrt(var + eps)) for ``batch_norm_backward``.

    Returns (y, mean, inv_std).
    """
    x2 = _check_x(x, "x")
    c = x.shape[-1]
    dt = x.dtype
    gamma = _check_vec(gamma, "gamma", c, dt, optional=True)
    beta = _check_vec(beta, "beta", c, dt, optional=True)
    moving_mean = _check_vec(moving_mean, "moving_mean", c, dt, writeable=training)
    moving_variance = _check_vec(moving_variance, "moving_variance", c, dt, writeable=training)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    momentum = _scalar(momentum, "momentum", 0.0, 1.0)
    epsilon = _scalar(epsilon, "epsilon", 0.0, math.inf, low_open=True)
    out = check_out(out, "out", x.shape, dt)
    mean_out = check_out(mean_out, "mean_out", (c,), dt)
    inv_std_out = check_out(inv_std_out, "inv_std_out", (c,), dt)
    if out is not x and np.may_share_memory(out, x):
        raise ValueError("out must be x itself or not overlap it in memory")
    moving = [(moving_mean, "moving_mean"), (moving_variance, "moving_variance")]
    _check_outputs([(mean_out, "mean_out"), (inv_std_out, "inv_std_out"), (out, "out")]
                   + (moving if training else []),
                   [(None if out is x else x, "x"), (gamma, "gamma"), (beta, "beta")]
                   + ([] if training else moving))
    rows = x2.shape[0]
    work = scratch("norm.work", (_k.work_size(rows, c),), dt)
    nthreads = _threads(x.size)
    if training:
        partials = scratch("norm.partials", (_k.partials_size(rows, c),), np.float64)
        _k.batch_norm_train(x2, gamma, beta, moving_mean, moving_variance, momentum, epsilon,
                            out.reshape(rows, c), mean_out, inv_std_out, partials, work,
                            nthreads)
    else:
        _k.batch_norm_infer(x2, gamma, beta, moving_mean, moving_variance, epsilon,
                            out.reshape(rows, c), mean_out, inv_std_out, work, nthreads)
    return out, mean_out, inv_std_out


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None, dgamma=None,
                        dbeta=None, need_input_grad=True):
    """Gradients of ``batch_norm_forward``.

    Args:
        dy: gradient of y, like x.
        x: the forward input.
        gamma: (C,) or None (scale 1), as in the forward.
        mean, inv_std: the (C,) statistics the forward returned.
        training: the forward's mode (training mode adds the terms through the batch stats).
        out: optional buffer for dx like dy (may be dy itself).
        dgamma, dbeta: optional (C,) buffers receiving sum(dy * xhat) and sum(dy).
        need_input_grad: False skips dx (returns None).

    Returns dx (or None).
    """
    dy2 = _check_x(dy, "dy")
    check_array(x, "x", dtype=dy.dtype)
    if x.shape != dy.shape:
        raise ValueError(f"x must have the shape of dy {dy.shape}, got {x.shape}")
    c = dy.shape[-1]
    dt = dy.dtype
    gamma = _check_vec(gamma, "gamma", c, dt, optional=True)
    mean = _check_vec(mean, "mean", c, dt)
    inv_std = _check_vec(inv_std, "inv_std", c, dt)
    dgamma = _check_vec(dgamma, "dgamma", c, dt, optional=True, writeable=True)
    dbeta = _check_vec(dbeta, "dbeta", c, dt, optional=True, writeable=True)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if need_input_grad:
        out = check_out(out, "out", dy.shape, dt)
        if out is not dy and np.may_share_memory(out, dy):
            raise ValueError("out must be dy itself or not overlap it in memory")
    else:
        out = None
    _check_outputs([(dgamma, "dgamma"), (dbeta, "dbeta"), (out, "out")],
                   [(x, "x"), (gamma, "gamma"), (mean, "mean"), (inv_std, "inv_std"),
                    (None if out is dy else dy, "dy")])
    rows = dy2.shape[0]
    partials = scratch("norm.partials", (_k.partials_size(rows, c),), np.float64)
    work = scratch("norm.work", (_k.work_size(rows, c),), dt)
    _k.batch_norm_backward(dy2, x.reshape(rows, c), gamma, mean, inv_std,
                           None if out is None else out.reshape(rows, c), dgamma, dbeta,
                           bool(training), partials, work, _threads(dy.size))
    return out


def fold_batch_norm(kernel, bias, gamma, beta, moving_mean, moving_variance, epsilon=1e-3):
    """Fold an inference-mode batch norm into the layer before it (a conv or dense whose output
    channels are the kernel's last axis): returns new (kernel, bias) with
    ``bn(conv(x, kernel) + bias) == conv(x, kernel') + bias'`` — kernel' = kernel * s,
    bias' = (bias - moving_mean) * s + beta, s = gamma / sqrt(moving_variance + eps).
    ``bias``, ``gamma``, ``beta`` may be None (0, 1, 0).  Computed in float64, returned in the
    kernel's dtype (a per-channel O(kernel) pass, done once, not per step)."""
    check_array(kernel, "kernel", contiguous=False)
    c = kernel.shape[-1]
    dt = kernel.dtype
    for v, name, optional in ((bias, "bias", True), (gamma, "gamma", True),
                              (beta, "beta", True), (moving_mean, "moving_mean", False),
                              (moving_variance, "moving_variance", False)):
        if v is None and optional:
            continue
        check_array(v, name, ndim=1, contiguous=False)
        if v.shape[0] != c:
            raise ValueError(f"{name} must have shape ({c},) (the kernel's output channels), "
                             f"got {v.shape}")
    epsilon = _scalar(epsilon, "epsilon", 0.0, math.inf, low_open=True)
    s = 1.0 / np.sqrt(moving_variance.astype(np.float64) + epsilon)
    if gamma is not None:
        s = s * gamma
    b = np.zeros(c) if bias is None else bias.astype(np.float64)
    b = (b - moving_mean) * s + (0.0 if beta is None else beta)
    return (kernel * s).astype(dt), b.astype(dt)
