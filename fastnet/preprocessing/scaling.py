"""Scaling layers for the front of a model: Normalization (Keras, with ``adapt``), Rescaling
(Keras) and MinMaxScaling (``adapt`` learns the range), plus ``minmax_scale`` on arrays.

The statistics are non-trainable weights, so ``model.save`` stores them and the optimizer never
touches them.  Fit them on the training split only (``layer.adapt(x_train)``): statistics of
the validation or test data would leak into training.  ``adapt`` streams the data in chunks
with float64 accumulators (Chan et al.'s pairwise merge of mean and variance), so a large
uint8 data set is never converted to float as a whole.
"""
import numbers

import numpy as np

from fastnet.layers.base import Layer
from fastnet.ops import augment as aug_ops

__all__ = ["Normalization", "Rescaling", "MinMaxScaling", "minmax_scale"]

EPSILON = 1e-7          # Keras backend.epsilon(): the smallest standard deviation divided by
_CHUNK_ELEMENTS = 1 << 22


def _keep_axes(axis, ndim, owner):
    """The kept axes (batch axis = 0) of an input of ``ndim`` dims, sorted."""
    if axis is None:
        return ()
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) \
        else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral) or not -ndim <= a < ndim:
            raise ValueError(f"{owner}: axis {a!r} is out of range for inputs of {ndim} "
                             f"dimensions (batch axis included)")
        a = int(a) % ndim
        if a == 0:
            raise ValueError(f"{owner}: axis must not be the batch axis 0")
        out.append(a)
    return tuple(sorted(set(out)))


def _batches_of(data, owner):
    """Arrays from ``data``: an array (chunked here), or an iterable of batches (a fastnet
    Dataset, a generator) whose elements are arrays or (x, ...) tuples."""
    if isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and data and
                                        not isinstance(data[0], (list, tuple, dict))):
        arr = np.asarray(data)
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise ValueError(f"{owner}.adapt: data is empty (shape {arr.shape})")
        rows = max(1, _CHUNK_ELEMENTS // max(1, arr[0].size))
        for lo in range(0, arr.shape[0], rows):
            yield arr[lo:lo + rows]
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(f"{owner}.adapt: data must be an array or an iterable of batches, "
                        f"got {type(data).__name__}") from None
    for batch in iterator:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        elif isinstance(batch, dict):
            raise TypeError(f"{owner}.adapt: batches must be arrays or (x, y) tuples")
        yield np.asarray(batch)


def _check_numeric(arr, owner):
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{owner}.adapt: data must be numeric, got dtype {arr.dtype}")


class _AdaptedScaling(Layer):
    """Shared by Normalization and MinMaxScaling: axis handling, statistics weights, one
    per-channel affine kernel for forward and backward."""

    _STATS = ()          # weight names, created with these initial values

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if axis is not None and not isinstance(axis, (numbers.Integral, tuple, list)) \
                or isinstance(axis, bool):
            raise TypeError(f"{type(self).__name__}: axis must be an int, a tuple of ints or "
                            f"None, got {axis!r}")
        self.axis = list(axis) if isinstance(axis, (tuple, list)) else axis
        self._keep = None

    def build_weights(self, input_shape):
        ndim = len(input_shape) + 1
        self._keep = _keep_axes(self.axis, ndim, type(self).__name__)
        self._stat_shape = tuple(input_shape[a - 1] for a in self._keep)
        self._broadcast = tuple(input_shape[a - 1] if a in self._keep else 1
                                for a in range(1, ndim))
        # the kernel path needs the kept axes to be consecutive (always so for one axis)
        self._kernel_axes = self._keep if not self._keep or \
            self._keep == tuple(range(self._keep[0], self._keep[-1] + 1)) else None
        for name, init in self._STATS:
            self.add_weight(name, self._stat_shape, init, trainable=False)
        self._init_stats()

    def _init_stats(self):
        pass

    def _reduce_axes(self, ndim):
        return tuple(a for a in range(ndim) if a not in self._keep)

    def _ensure_built(self, sample, owner):
        if not self.built:
            self.build(sample.shape[1:])
        elif sample.shape[1:] != self.input_shape:
            raise ValueError(f"{owner}.adapt: data has samples of shape {sample.shape[1:]}, "
                             f"the layer was built for {self.input_shape}")

    def _adapt_batches(self, data, batch_size, steps):
        """(batch, reduced axes) for every non-empty batch of ``data`` (``steps`` at most),
        checked numeric; the first one builds the layer."""
        owner = type(self).__name__
        if batch_size is not None and isinstance(data, np.ndarray):
            source = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
        else:
            source = _batches_of(data, owner)
        for i, batch in enumerate(source):
            if steps is not None and i >= steps:
                break
            _check_numeric(batch, owner)
            if batch.ndim < 1 or batch.shape[0] == 0:
                continue
            self._ensure_built(batch, owner)
            yield batch, self._reduce_axes(batch.ndim)

    def _scale_shift(self):
        """(scale, shift) vectors of the stat shape: y = x * scale + shift."""
        raise NotImplementedError

    def _apply(self, x, scale, shift, key):
        out = self.buffer(key, x.shape)
        if self._kernel_axes is not None:
            return aug_ops.affine_channels(x, scale, shift, self._kernel_axes, out=out)
        # kept axes not consecutive (e.g. (1, 3)): NumPy's broadcasting, compiled
        np.multiply(x, scale.reshape((1,) + self._broadcast), out=out)
        np.add(out, shift.reshape((1,) + self._broadcast), out=out)
        return out

    def forward(self, x, training=False):
        scale, shift = self._scale_shift()
        return self._apply(x, scale, shift, "y")

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        scale, _ = self._scale_shift()
        zero = self.buffer("zero", scale.shape)
        zero[...] = 0
        return self._apply(dy, scale, zero, "dx")

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg


class Normalization(_AdaptedScaling):
    """Shifts and scales inputs to zero mean and unit variance per kept axis (Keras
    Normalization): y = (x - mean) / max(sqrt(variance), 1e-7), or with ``invert=True``
    x = mean + y * max(sqrt(variance), 1e-7).

    Args:
        axis: the axis (or consecutive-or-not tuple of axes) that keep their own statistics,
            batch axis 0 excluded; -1 (default) is per channel for NHWC images; None is one
            scalar mean and variance.
        mean, variance: fixed statistics (numbers or arrays broadcastable to the kept shape)
            instead of ``adapt``.
        invert: apply the inverse map.

    Call ``adapt(x_train)`` before training (or pass mean and variance).  The weights are
    [mean, variance], non-trainable, shaped like the kept axes (e.g. (C,)).

    >>> norm = Normalization(); norm.adapt(x_train)
    >>> model = Sequential([Input((28, 28, 1)), norm, Conv2D(32, 3), ...])
    """

    _STATS = (("mean", "zeros"), ("variance", "ones"))

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(axis=axis, **kwargs)
        if (mean is None) != (variance is None):
            raise ValueError("Normalization: pass both mean and variance, or neither")
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.variance = None if variance is None else np.asarray(variance, dtype=np.float64)
        if self.variance is not None and (self.variance < 0).any():
            raise ValueError("Normalization: variance must be >= 0")
        self.invert = bool(invert)

    def _init_stats(self):
        if self.mean is not None:
            try:
                self.params["mean"][...] = np.broadcast_to(self.mean, self._stat_shape)
                self.params["variance"][...] = np.broadcast_to(self.variance, self._stat_shape)
            except ValueError:
                raise ValueError(f"{self.name}: mean/variance of shape {self.mean.shape} do not "
                                 f"broadcast to the kept shape {self._stat_shape}") from None

    def adapt(self, data, batch_size=None, steps=None):
        """Compute mean and variance from ``data`` (an array (N, ...) or an iterable of
        batches, e.g. a fastnet Dataset; (x, y) batches use x).  ``steps`` limits the batches
        read; ``batch_size`` is accepted for Keras compatibility and sets the chunk size."""
        owner = type(self).__name__
        count, mean, m2 = 0, None, None
        for batch, red in self._adapt_batches(data, batch_size, steps):
            b = batch.astype(np.float64, copy=False)
            n_b = batch.size // max(1, int(np.prod(self._stat_shape)))
            mean_b = b.mean(axis=red)
            if not np.isfinite(mean_b).all():
                raise ValueError(f"{owner}.adapt: data holds NaN or infinite values "
                                 "(see fastnet.preprocessing.drop_invalid_rows)")
            m2_b = ((b - mean_b.reshape((1,) + self._broadcast)) ** 2).sum(axis=red)
            if mean is None:
                count, mean, m2 = n_b, mean_b, m2_b
            else:   # Chan et al.: merge two partial (count, mean, M2)
                total = count + n_b
                delta = mean_b - mean
                mean = mean + delta * (n_b / total)
                m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
                count = total
        if mean is None:
            raise ValueError(f"{owner}.adapt: data yielded no samples")
        self.params["mean"][...] = mean.reshape(self._stat_shape)
        self.params["variance"][...] = (m2 / count).reshape(self._stat_shape)

    def _scale_shift(self):
        mean = self.params["mean"].reshape(-1)
        std = self.buffer("std", mean.shape)
        np.sqrt(self.params["variance"].reshape(-1), out=std)
        np.maximum(std, EPSILON, out=std)
        scale, shift = self.buffer("scale", mean.shape), self.buffer("shift", mean.shape)
        if self.invert:
            scale[...] = std
            shift[...] = mean
        else:
            np.divide(1.0, std, out=scale)
            np.multiply(mean, scale, out=shift)
            np.negative(shift, out=shift)
        return scale, shift

    def get_config(self):
        cfg = super().get_config()
        cfg.update(invert=self.invert,
                   mean=None if self.mean is None else self.mean.tolist(),
                   variance=None if self.variance is None else self.variance.tolist())
        return cfg


class MinMaxScaling(_AdaptedScaling):
    """Maps the range seen by ``adapt`` to ``feature_range`` per kept axis:
    y = (x - min) / (max - min) * (b - a) + a (scikit-learn's MinMaxScaler; for a constant
    feature, max == min, the range counts as 1).

    Args:
        feature_range: (a, b), default (0, 1).
        axis: as Normalization (-1: per channel / per feature).

    The weights are [min, max], non-trainable.
    """

    _STATS = (("min", "zeros"), ("max", "ones"))

    def __init__(self, feature_range=(0.0, 1.0), axis=-1, **kwargs):
        super().__init__(axis=axis, **kwargs)
        self.feature_range = _check_range(feature_range, "MinMaxScaling")

    def adapt(self, data, batch_size=None, steps=None):
        """Record the minimum and maximum of ``data`` (array or iterable of batches)."""
        owner = type(self).__name__
        lo = hi = None
        for batch, red in self._adapt_batches(data, batch_size, steps):
            b_lo, b_hi = batch.min(axis=red), batch.max(axis=red)
            if not (np.isfinite(b_lo).all() and np.isfinite(b_hi).all()):
                raise ValueError(f"{owner}.adapt: data holds NaN or infinite values")
            lo = b_lo if lo is None else np.minimum(lo, b_lo)
            hi = b_hi if hi is None else np.maximum(hi, b_hi)
        if lo is None:
            raise ValueError(f"{owner}.adapt: data yielded no samples")
        self.params["min"][...] = np.reshape(lo, self._stat_shape)
        self.params["max"][...] = np.reshape(hi, self._stat_shape)

    def _scale_shift(self):
        lo = self.params["min"].reshape(-1)
        span = self.buffer("span", lo.shape)
        np.subtract(self.params["max"].reshape(-1), lo, out=span)
        a, b = self.feature_range
        scale, shift = self.buffer("scale", lo.shape), self.buffer("shift", lo.shape)
        span[span <= 0] = 1.0          # a constant feature: scikit-learn's unit range
        np.divide(b - a, span, out=scale)
        np.multiply(lo, scale, out=shift)
        np.subtract(a, shift, out=shift)
        return scale, shift

    def get_config(self):
        cfg = super().get_config()
        cfg["feature_range"] = list(self.feature_range)
        return cfg


def _check_range(r, owner):
    if not isinstance(r, (tuple, list)) or len(r) != 2:
        raise ValueError(f"{owner}: feature_range must be a pair (min, max), got {r!r}")
    a, b = float(r[0]), float(r[1])
    if not (np.isfinite(a) and np.isfinite(b)) or a >= b:
        raise ValueError(f"{owner}: feature_range must be finite with min < max, got {r!r}")
    return a, b


class Rescaling(Layer):
    """y = x * scale + offset (Keras Rescaling), e.g. ``Rescaling(1 / 255)`` for uint8 images
    or ``Rescaling(1 / 127.5, offset=-1)`` for [-1, 1]."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        for name, v in (("scale", scale), ("offset", offset)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
                raise ValueError(f"Rescaling: {name} must be a finite number, got {v!r}")
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x, training=False):
        return aug_ops.affine_channels(x, [self.scale], [self.offset], None,
                                       out=self.buffer("y", x.shape))

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return aug_ops.affine_channels(dy, [self.scale], [0.0], None,
                                       out=self.buffer("dx", dy.shape))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(scale=self.scale, offset=self.offset)
        return cfg


def minmax_scale(x, feature_range=(0.0, 1.0), axis=-1):
    """x scaled so that each index of the kept ``axis`` spans ``feature_range`` over all other
    axes (for a table (N, F) with axis=-1: per feature, as scikit-learn's ``minmax_scale``).
    Returns a new float32 (float64 for float64 input) array."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"minmax_scale: x must be numeric, got dtype {arr.dtype}")
    if arr.ndim < 2:
        arr = arr.reshape(-1, 1)
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    layer = MinMaxScaling(feature_range, axis=axis, dtype=dtype)
    layer.adapt(arr)
    return layer(arr).reshape(np.shape(x))
