"""Random image augmentation layers (Keras 3 names, arguments and formulas), active only in
training, on NHWC batches.

Each layer draws its per-image parameters from its own NumPy Generator, seeded by ``seed``
(None: drawn from ``fastnet.utils.set_random_seed``'s generator when the layer is built), and
hands them to one kernel of ``fastnet.ops.augment``.  The same seed gives the same sequence of
batches, bitwise, for any thread count.  At inference (``training=False``) every layer is the
identity, except RandomCrop, which takes the centre crop.  Calling a layer directly defaults to
``training=True``, as Keras 3's preprocessing layers do; inside a model the model passes it.

They sit at the front of a model (``Sequential([RandomFlip(), RandomRotation(0.05), Conv2D...])``)
and are saved with it: they have a ``get_config`` and no weights.  Their backward pass is the
exact adjoint of the transform applied in the forward pass, so they may also sit deeper.

MixUp mixes labels as well as images, so it cannot sit inside a model: it is a batch transform
for ``fastnet.data.Dataset.map``.
"""
import math
import numbers

import numpy as np

from fastnet.layers.base import Layer, _has_symbolic
from fastnet.ops import augment as aug_ops
from fastnet.utils.random import get_rng

__all__ = ["RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomCrop",
           "RandomBrightness", "RandomContrast", "CutOut", "RandomCutout", "MixUp"]


def _check_seed(seed, owner):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < 2 ** 63):
        raise ValueError(f"{owner}: seed must be a non-negative integer or None, got {seed!r}")
    return None if seed is None else int(seed)


def _generator(seed):
    """A Generator from ``seed``, or from a seed drawn from the global generator when None
    (so ``fastnet.utils.set_random_seed`` makes unseeded layers reproducible too)."""
    return np.random.default_rng(seed if seed is not None else
                                 int(get_rng().integers(0, 2 ** 63)))


def _factor_range(factor, name, owner, *, low=None, high=None, symmetric=True):
    """(lower, upper) from a number f ((-f, f), or (0, f) when not symmetric) or a pair."""
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2:
            raise ValueError(f"{owner}: {name} must be a number or a pair (lower, upper), "
                             f"got {factor!r}")
        lo, hi = factor
    else:
        lo, hi = (-factor, factor) if symmetric else (0.0, factor)
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{owner}: {name} must hold finite numbers, got {factor!r}")
    lo, hi = float(lo), float(hi)
    if lo > hi:
        raise ValueError(f"{owner}: {name} lower bound {lo} exceeds the upper bound {hi}")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise ValueError(f"{owner}: {name} must lie in [{low}, {high}], got {factor!r}")
    return lo, hi


def _value_range(value_range, owner):
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(f"{owner}: value_range must be a pair (low, high), got {value_range!r}")
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"{owner}: value_range must be finite with low < high, "
                         f"got {value_range!r}")
    return lo, hi


class BaseRandomLayer(Layer):
    """Seed handling, the NHWC input check and Keras 3's ``training=True`` call default."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = _check_seed(seed, type(self).__name__)
        self._rng = None
        self._active = False

    @property
    def rng(self):
        """The layer's Generator (created on first use from ``seed``)."""
        if self._rng is None:
            self._rng = _generator(self.seed)
        return self._rng

    def build_weights(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expects images (batch, height, width, channels), "
                             f"got inputs of shape (batch, {', '.join(map(str, input_shape))})")
        self.rng  # noqa: B018 (draw the seed now, in model-building order)

    def __call__(self, x, training=True):
        """Apply the layer to a batch (or one image of shape (H, W, C)); returns a new array."""
        if not _has_symbolic(x) and np.ndim(x) == 3:
            return super().__call__(np.asarray(x)[np.newaxis], training=training)[0]
        return super().__call__(x, training=training)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        if not self._active:
            return dy
        return self._adjoint(dy)

    _CONFIG_KEYS = ()       # constructor arguments stored under the same attribute names

    def get_config(self):
        cfg = super().get_config()
        cfg["seed"] = self.seed
        for key in self._CONFIG_KEYS:
            value = getattr(self, key)
            cfg[key] = list(value) if isinstance(value, tuple) else value
        return cfg


class RandomFlip(BaseRandomLayer):
    """Flips each image left-right and/or upside down with probability 1/2 (Keras RandomFlip).

    Args:
        mode: "horizontal", "vertical" or "horizontal_and_vertical".
        seed: integer seed (None: from the global generator).
    """

    _CONFIG_KEYS = ('mode',)

    _MODES = {"horizontal": 1, "vertical": 2, "horizontal_and_vertical": 3}

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if mode not in self._MODES:
            raise ValueError(f"RandomFlip: mode must be one of {sorted(self._MODES)}, "
                             f"got {mode!r}")
        self.mode = mode

    def forward(self, x, training=False):
        self._active = bool(training)
        if not self._active:
            return x
        n = x.shape[0]
        bits = self._MODES[self.mode]
        flags = np.zeros(n, dtype=np.uint8)
        if bits & 1:
            flags |= (self.rng.random(n) < 0.5).astype(np.uint8)
        if bits & 2:
            flags |= (self.rng.random(n) < 0.5).astype(np.uint8) << 1
        self._flags = flags
        return aug_ops.flip(x, flags, out=self.buffer("y", x.shape))

    def _adjoint(self, dy):
        return aug_ops.flip(dy, self._flags, out=self.buffer("dx", dy.shape))


class _RandomWarp(BaseRandomLayer):
    """Shared by the layers that resample through a per-image transform."""

    _CONFIG_KEYS = ('fill_mode', 'interpolation', 'fill_value')

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.fill_mode = aug_ops.check_fill_mode(fill_mode)
        self.interpolation = aug_ops.check_interpolation(interpolation)
        if isinstance(fill_value, bool) or not isinstance(fill_value, numbers.Real):
            raise TypeError(f"{type(self).__name__}: fill_value must be a number, "
                            f"got {fill_value!r}")
        self.fill_value = float(fill_value)

    def forward(self, x, training=False):
        self._active = bool(training)
        if not self._active:
            return x
        self._transforms = self._draw_transforms(x.shape[0], x.shape[1], x.shape[2])
        return aug_ops.warp(x, self._transforms, interpolation=self.interpolation,
                            fill_mode=self.fill_mode, fill_value=self.fill_value,
                            out=self.buffer("y", x.shape))

    def _adjoint(self, dy):
        return aug_ops.warp_backward(dy, self._transforms, dy.shape[1:3],
                                     interpolation=self.interpolation, fill_mode=self.fill_mode,
                                     out=self.buffer("dx", dy.shape))


class RandomRotation(_RandomWarp):
    """Rotates each image about its centre by a random angle (Keras RandomRotation).

    Args:
        factor: a fraction of a full turn: f rotates by an angle in [-f * 2 pi, f * 2 pi];
            a pair (lower, upper) gives the range.  Positive angles turn counter-clockwise.
            E.g. factor=10 / 360 is +-10 degrees.
        fill_mode: "reflect" (default), "constant", "nearest" or "wrap": how points outside
            the image are filled.
        interpolation: "bilinear" (default) or "nearest".
        seed: integer seed.
        fill_value: the value of fill_mode="constant".
    """

    _CONFIG_KEYS = _RandomWarp._CONFIG_KEYS + ('factor',)

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)
        self.factor = factor
        self._range = _factor_range(factor, "factor", "RandomRotation")

    def _draw_transforms(self, n, h, w):
        lo, hi = self._range
        angles = self.rng.uniform(lo, hi, n) * (2.0 * np.pi)
        return aug_ops.rotation_transforms(angles, h, w)


class RandomTranslation(_RandomWarp):
    """Shifts each image by a random fraction of its size (Keras RandomTranslation).

    Args:
        height_factor: f shifts vertically by up to f * height pixels either way ((-f, f)), a
            pair (lower, upper) gives the range; positive values move the image down.
        width_factor: the same horizontally; positive values move the image right.
        fill_mode, interpolation, seed, fill_value: as RandomRotation.
    """

    _CONFIG_KEYS = _RandomWarp._CONFIG_KEYS + ('height_factor', 'width_factor')

    def __init__(self, height_factor, width_factor, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._h = _factor_range(height_factor, "height_factor", "RandomTranslation",
                                low=-1.0, high=1.0)
        self._w = _factor_range(width_factor, "width_factor", "RandomTranslation",
                                low=-1.0, high=1.0)

    def _draw_transforms(self, n, h, w):
        dy = self.rng.uniform(*self._h, n) * h
        dx = self.rng.uniform(*self._w, n) * w
        return aug_ops.translation_transforms(dx, dy)


class RandomZoom(_RandomWarp):
    """Zooms each image about its centre by a random amount (Keras RandomZoom).

    Args:
        height_factor: f zooms by a factor in [1 - f, 1 + f] of the height ((lower, upper)
            gives 1 + lower .. 1 + upper); positive values zoom out, negative zoom in.
        width_factor: the same for the width; None keeps the aspect ratio (one zoom).
        fill_mode, interpolation, seed, fill_value: as RandomRotation.
    """

    _CONFIG_KEYS = _RandomWarp._CONFIG_KEYS + ('height_factor', 'width_factor')

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._h = _factor_range(height_factor, "height_factor", "RandomZoom", low=-1.0)
        self._w = None if width_factor is None else _factor_range(
            width_factor, "width_factor", "RandomZoom", low=-1.0)

    def _draw_transforms(self, n, h, w):
        zy = 1.0 + self.rng.uniform(*self._h, n)
        zx = zy if self._w is None else 1.0 + self.rng.uniform(*self._w, n)
        return aug_ops.zoom_transforms(zx, zy, h, w)


class RandomCrop(BaseRandomLayer):
    """Crops a random (height, width) window out of each image padded by ``padding`` pixels
    with ``fill_value`` (the CIFAR recipe: padding=4 and the original size); at inference the
    centre window.

    Args:
        height, width: the output size, at most the padded input size.
        padding: pixels added on every side before cropping: an int or (vertical, horizontal).
        fill_value: the value of the padding.
        seed: integer seed.
    """

    _CONFIG_KEYS = ('height', 'width', 'padding', 'fill_value')

    def __init__(self, height, width, padding=0, fill_value=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"RandomCrop: {name} must be a positive integer, got {v!r}")
        self.height, self.width = int(height), int(width)
        pad = (padding, padding) if isinstance(padding, numbers.Integral) else tuple(padding)
        if len(pad) != 2 or any(isinstance(p, bool) or not isinstance(p, numbers.Integral)
                                or p < 0 for p in pad):
            raise ValueError(f"RandomCrop: padding must be a non-negative integer or a pair, "
                             f"got {padding!r}")
        self.padding = padding if isinstance(padding, numbers.Integral) else list(pad)
        self._pad = (int(pad[0]), int(pad[1]))
        self.fill_value = float(fill_value)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expects images (batch, height, width, channels), "
                             f"got inputs of shape (batch, {', '.join(map(str, input_shape))})")
        ph, pw = input_shape[0] + 2 * self._pad[0], input_shape[1] + 2 * self._pad[1]
        if self.height > ph or self.width > pw:
            raise ValueError(f"{self.name}: cannot crop {self.height}x{self.width} out of "
                             f"{input_shape[0]}x{input_shape[1]} images padded to {ph}x{pw}")
        return (self.height, self.width, input_shape[2])

    def forward(self, x, training=False):
        self._active = bool(training)
        n, h, w, c = x.shape
        ph, pw = self._pad
        free_h, free_w = h + 2 * ph - self.height, w + 2 * pw - self.width
        if self._active:
            top = self.rng.integers(0, free_h + 1, n)
            left = self.rng.integers(0, free_w + 1, n)
        else:
            top = np.full(n, free_h // 2)
            left = np.full(n, free_w // 2)
        self._offsets = np.stack([top - ph, left - pw], axis=1).astype(np.int64)
        return aug_ops.shift_crop(x, self._offsets, (self.height, self.width),
                                  fill_value=self.fill_value,
                                  out=self.buffer("y", (n, self.height, self.width, c)))

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        n = dy.shape[0]
        h, w, c = self.input_shape
        return aug_ops.shift_crop(dy, -self._offsets, (h, w), fill_value=0.0,
                                  out=self.buffer("dx", (n, h, w, c)))


class RandomBrightness(BaseRandomLayer):
    """Adds a random amount to each image, then clips to ``value_range`` (Keras 3
    RandomBrightness): delta = uniform(lower, upper) * (high - low) per image.

    Args:
        factor: f in [-1, 1] gives (-f, f); a pair (lower, upper) in [-1, 1].
        value_range: (low, high) of the pixel values, default (0, 255); (0, 1) for scaled
            images.
        seed: integer seed.
    """

    _CONFIG_KEYS = ('factor', 'value_range')

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = factor
        self._range = _factor_range(factor, "factor", "RandomBrightness", low=-1.0, high=1.0)
        self.value_range = _value_range(value_range, "RandomBrightness")

    def forward(self, x, training=False):
        self._active = bool(training)
        if not self._active:
            return x
        n, _, _, c = x.shape
        lo, hi = self.value_range
        delta = self.rng.uniform(*self._range, n) * (hi - lo)
        self._scale = np.ones((n, c))
        self._shift = np.repeat(delta[:, None], c, axis=1)
        self._x = x
        return aug_ops.scale_shift_clip(x, self._scale, self._shift, self.value_range,
                                        out=self.buffer("y", x.shape))

    def _adjoint(self, dy):
        return aug_ops.scale_shift_clip_backward(self._x, dy, self._scale, self._shift,
                                                 self.value_range,
                                                 out=self.buffer("dx", dy.shape))


class RandomContrast(BaseRandomLayer):
    """Scales each image's deviation from its per-channel mean by a random factor, then clips
    to ``value_range`` (Keras 3 RandomContrast): y = (x - mean) * f + mean,
    f = uniform(1 - lower, 1 + upper) per image.

    Args:
        factor: f >= 0 gives (f, f), a pair (lower, upper); lower <= 1.
        value_range: (low, high) of the pixel values, default (0, 255).
        seed: integer seed.
    """

    _CONFIG_KEYS = ('factor', 'value_range')

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = factor
        pair = tuple(factor) if isinstance(factor, (tuple, list)) else (factor, factor)
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real)
                                 or not math.isfinite(v) for v in pair):
            raise ValueError(f"RandomContrast: factor must be a number or a pair (lower, upper), "
                             f"got {factor!r}")
        lower, upper = float(pair[0]), float(pair[1])
        if lower < 0 or upper < 0 or lower > 1:
            raise ValueError(f"RandomContrast: factor must be >= 0 with lower <= 1, "
                             f"got {factor!r}")
        self._range = (1.0 - lower, 1.0 + upper)
        self.value_range = _value_range(value_range, "RandomContrast")

    def forward(self, x, training=False):
        self._active = bool(training)
        if not self._active:
            return x
        n, _, _, c = x.shape
        f = self.rng.uniform(*self._range, n)
        self._scale = np.repeat(f[:, None], c, axis=1)
        self._shift = (1.0 - self._scale) * aug_ops.channel_means(x)
        self._x = x
        return aug_ops.scale_shift_clip(x, self._scale, self._shift, self.value_range,
                                        out=self.buffer("y", x.shape))

    def _adjoint(self, dy):
        return aug_ops.scale_shift_clip_backward(self._x, dy, self._scale, self._shift,
                                                 self.value_range, contrast=True,
                                                 out=self.buffer("dx", dy.shape))


class CutOut(BaseRandomLayer):
    """Sets a random rectangle of each image to ``fill_value`` (DeVries & Taylor's Cutout;
    KerasCV RandomCutout's arguments).  The rectangle's centre is uniform over the image and
    the parts outside the image are cut off.

    Args:
        height_factor: the rectangle's height as a fraction of the image height: f draws from
            (0, f), a pair from (lower, upper), within [0, 1].
        width_factor: the same for the width (None: the same draw as the height, a square
            fraction).
        fill_value: the value written into the rectangle.
        seed: integer seed.
    """

    _CONFIG_KEYS = ('height_factor', 'width_factor', 'fill_value')

    def __init__(self, height_factor, width_factor=None, fill_value=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._h = _factor_range(height_factor, "height_factor", type(self).__name__, low=0.0,
                                high=1.0, symmetric=False)
        self._w = None if width_factor is None else _factor_range(
            width_factor, "width_factor", type(self).__name__, low=0.0, high=1.0,
            symmetric=False)
        self.fill_value = float(fill_value)

    def _boxes(self, n, h, w):
        fh = self.rng.uniform(*self._h, n)
        fw = fh if self._w is None else self.rng.uniform(*self._w, n)
        ch = self.rng.integers(0, h, n)
        cw = self.rng.integers(0, w, n)
        sh = np.floor(fh * h).astype(np.int64)
        sw = np.floor(fw * w).astype(np.int64)
        y0, x0 = ch - sh // 2, cw - sw // 2
        return np.stack([y0, y0 + sh, x0, x0 + sw], axis=1)

    def forward(self, x, training=False):
        self._active = bool(training)
        if not self._active:
            return x
        self._box = self._boxes(*x.shape[:3])
        return aug_ops.cutout(x, self._box, fill_value=self.fill_value,
                              out=self.buffer("y", x.shape))

    def _adjoint(self, dy):
        return aug_ops.cutout(dy, self._box, fill_value=0.0, out=self.buffer("dx", dy.shape))



RandomCutout = CutOut


class MixUp:
    """MixUp (Zhang et al. 2018; Keras 3 MixUp): each sample becomes
    w * sample + (1 - w) * partner, labels alike, w ~ Beta(alpha, alpha) per sample and the
    partners a random permutation of the batch.

    A batch transform, not a model layer (it needs the labels)::

        mixup = MixUp(alpha=0.2, seed=1)
        ds = Dataset.from_tensor_slices((x, y_onehot)).batch(64).map(mixup)

    Call it with ``(images, labels)`` or ``{"images": ..., "labels": ...}``; labels are one-hot
    (or soft) floats (N, classes), or integer class ids when ``num_classes`` is given (they are
    then returned one-hot).  ``training=False`` returns the batch unchanged.
    """

    def __init__(self, alpha=0.2, num_classes=None, seed=None, name=None):
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0 \
                or not math.isfinite(alpha):
            raise ValueError(f"MixUp: alpha must be a positive number, got {alpha!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
                num_classes, numbers.Integral) or num_classes < 1):
            raise ValueError(f"MixUp: num_classes must be a positive integer or None, "
                             f"got {num_classes!r}")
        self.alpha = float(alpha)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = _check_seed(seed, "MixUp")
        self.name = name or "mix_up"
        self._rng = None

    @property
    def rng(self):
        if self._rng is None:
            self._rng = _generator(self.seed)
        return self._rng

    def _labels(self, labels, n):
        y = np.asarray(labels)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"MixUp: labels must have one row per image ({n}), "
                             f"got shape {y.shape}")
        if y.dtype.kind in "iub" and y.ndim == 1:
            if self.num_classes is None:
                raise TypeError("MixUp: integer class labels need num_classes=... (or pass "
                                "one-hot float labels)")
            if n and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"MixUp: labels must lie in [0, {self.num_classes})")
            onehot = np.zeros((n, self.num_classes), dtype=np.float32)
            onehot[np.arange(n), y] = 1.0
            return onehot
        if y.dtype.kind != "f":
            raise TypeError(f"MixUp: labels must be float (one-hot) or integer class ids, "
                            f"got {y.dtype}")
        return np.ascontiguousarray(y)

    def __call__(self, images, labels=None, training=True):
        as_dict = isinstance(images, dict)
        if as_dict:
            if labels is not None or set(images) != {"images", "labels"}:
                raise ValueError("MixUp: a dict batch must hold exactly 'images' and 'labels'")
            images, labels = images["images"], images["labels"]
        if labels is None:
            raise ValueError("MixUp needs the labels: call it with (images, labels)")
        x = np.asarray(images)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        x = np.ascontiguousarray(x)
        if x.ndim < 2:
            raise ValueError(f"MixUp: images must have a batch axis, got shape {x.shape}")
        n = x.shape[0]
        y = self._labels(labels, n)
        if training and n:
            w = self.rng.beta(self.alpha, self.alpha, n)
            partner = self.rng.permutation(n)
            x = aug_ops.mix(x, partner, w)
            y = aug_ops.mix(y if y.dtype in (np.float32, np.float64) else y.astype(np.float32),
                            partner, w)
        return {"images": x, "labels": y} if as_dict else (x, y)

    def get_config(self):
        return {"alpha": self.alpha, "num_classes": self.num_classes, "seed": self.seed,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<MixUp alpha={self.alpha} seed={self.seed}>"
