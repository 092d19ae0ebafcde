"""Image augmentation ops on NHWC batches: validate, allocate, call one kernel of
``fastnet/_kernels/augment.pyx``.

Shape contract (x is (N, H, W, C), C-contiguous float32 or float64)::

    warp(x, transforms (N, 8), output_size=(OH, OW))      -> (N, OH, OW, C)
    warp_backward(dy (N, OH, OW, C), transforms, (H, W))  -> (N, H, W, C)
    flip(x, flags (N,) uint8)                             -> (N, H, W, C)
    shift_crop(x, offsets (N, 2) int, (OH, OW))           -> (N, OH, OW, C)
    cutout(x, boxes (N, 4) int)                           -> (N, H, W, C)
    scale_shift_clip(x, scale (N, C), shift (N, C))       -> (N, H, W, C)
    channel_means(x)                                      -> (N, C) float64
    mix(x, partner (N,), weight (N,))                     -> (N, H, W, C)  (any trailing shape)
    affine_channels(x, scale (K,), shift (K,), axis)      -> x's shape

Random choices are not made here: the layers draw the per-image parameters from a seeded NumPy
Generator and pass them in, so an op is deterministic and thread-count independent.  The
``*_transforms`` helpers build Keras's 8-coefficient ``affine_transform`` rows (output pixel
(x, y) samples input ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1).

A thread that prepares data beside training (``fastnet.data``'s prefetch) runs these ops on one
thread inside ``single_threaded()``, so it never starts a second OpenMP team that would fight
the training kernels for the cores.
"""
import contextlib
import numbers
import threading

import numpy as np

from fastnet import config
from fastnet._kernels import augment as _k
from fastnet.ops._checks import check_array, check_out

__all__ = ["FILL_MODES", "INTERPOLATIONS", "warp", "warp_backward", "flip", "shift_crop",
           "cutout", "scale_shift_clip", "scale_shift_clip_backward", "channel_means", "mix",
           "affine_channels", "ShuffleBuffer", "rotation_transforms",
           "translation_transforms", "zoom_transforms", "single_threaded",
           "check_fill_mode", "check_interpolation"]

FILL_MODES = {"constant": 0, "nearest": 1, "reflect": 2, "wrap": 3}
INTERPOLATIONS = {"nearest": 0, "bilinear": 1}

# Elements from which a second thread pays (a parallel region costs 1-2 us; a bilinear warp
# ~5 ns per element, a copy well under 1 ns).
PARALLEL_MIN_ELEMENTS = 32768

_local = threading.local()


@contextlib.contextmanager
def single_threaded():
    """Within the block, on this thread, every op here runs on one thread."""
    prev = getattr(_local, "single", False)
    _local.single = True
    try:
        yield
    finally:
        _local.single = prev


def _threads(n_elements, n_parts):
    if getattr(_local, "single", False) or n_elements < PARALLEL_MIN_ELEMENTS or n_parts < 2:
        return 1
    return max(1, min(config.get_num_threads(), n_parts))


def check_fill_mode(fill_mode):
    if not isinstance(fill_mode, str) or fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {sorted(FILL_MODES)}, got {fill_mode!r}")
    return fill_mode


def check_interpolation(interpolation):
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    return interpolation


def _check_images(x, name):
    check_array(x, name, ndim=4)
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{name} must have H, W, C >= 1, got shape {x.shape}")
    return x


def _check_size2(size, name):
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"{name} must be a pair (height, width), got {size!r}")
    for s in size:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"{name} must hold positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _param(a, name, shape, dtype):
    """A per-image parameter array as a C-contiguous array of ``dtype`` and exact ``shape``."""
    a = np.asarray(a)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if np.dtype(dtype).kind == "f":
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be numeric, got {a.dtype}")
        a = np.ascontiguousarray(a, dtype=dtype)
        if not np.isfinite(a).all():
            raise ValueError(f"{name} must be finite")
    else:
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got {a.dtype}")
        a = np.ascontiguousarray(a, dtype=dtype)
    return a


def _fresh_out(out, name, shape, dtype, *inputs):
    out = check_out(out, name, shape, dtype)
    for a in inputs:
        if np.may_share_memory(out, a):
            raise ValueError(f"{name} must not overlap the input")
    return out


def warp(x, transforms, output_size=None, *, interpolation="bilinear", fill_mode="reflect",
         fill_value=0.0, out=None):
    """Resample every image through its projective transform (Keras ``affine_transform``).

    transforms: (N, 8) coefficients [a0, a1, a2, b0, b1, b2, c0, c1] per image, mapping an
    output pixel to the input point it samples.  output_size (OH, OW) defaults to (H, W).
    """
    _check_images(x, "x")
    n, h, w, c = x.shape
    oh, ow = (h, w) if output_size is None else _check_size2(output_size, "output_size")
    t = _param(transforms, "transforms", (n, 8), np.float64)
    mode = FILL_MODES[check_fill_mode(fill_mode)]
    interp = INTERPOLATIONS[check_interpolation(interpolation)]
    out = _fresh_out(out, "out", (n, oh, ow, c), x.dtype, x)
    if n:
        _k.warp(x, out, t, interp, mode, float(fill_value), _threads(out.size * 4, n * oh))
    return out


def warp_backward(dy, transforms, input_size, *, interpolation="bilinear", fill_mode="reflect",
                  out=None):
    """dL/dx of ``warp``: the adjoint of the sampling applied to dy (N, OH, OW, C)."""
    _check_images(dy, "dy")
    n, _, _, c = dy.shape
    h, w = _check_size2(input_size, "input_size")
    t = _param(transforms, "transforms", (n, 8), np.float64)
    mode = FILL_MODES[check_fill_mode(fill_mode)]
    interp = INTERPOLATIONS[check_interpolation(interpolation)]
    out = _fresh_out(out, "out", (n, h, w, c), dy.dtype, dy)
    if n:
        _k.warp_adjoint(dy, out, t, interp, mode, _threads(dy.size * 4, n))
    return out


def flip(x, flags, *, out=None):
    """Mirror image i left-right when flags[i] & 1 and upside down when flags[i] & 2."""
    _check_images(x, "x")
    f = _param(flags, "flags", (x.shape[0],), np.uint8)
    if (f > 3).any():
        raise ValueError("flags must be 0-3 (bit 0: horizontal, bit 1: vertical)")
    out = _fresh_out(out, "out", x.shape, x.dtype, x)
    if x.shape[0]:
        _k.flip(x, out, f, _threads(x.size, x.shape[0] * x.shape[1]))
    return out


def shift_crop(x, offsets, output_size, *, fill_value=0.0, out=None):
    """out[i, r, s] = x[i, r + offsets[i, 0], s + offsets[i, 1]] where that pixel exists, else
    fill_value.  A crop of x padded by p at offset (top, left) is offsets = (top - p, left - p)."""
    _check_images(x, "x")
    n, _, _, c = x.shape
    oh, ow = _check_size2(output_size, "output_size")
    o = _param(offsets, "offsets", (n, 2), np.int64)
    if n and np.abs(o).max() > 2 ** 40:
        raise ValueError("offsets are out of range")
    out = _fresh_out(out, "out", (n, oh, ow, c), x.dtype, x)
    if n:
        _k.shift_crop(x, out, o, float(fill_value), _threads(out.size, n * oh))
    return out


def cutout(x, boxes, *, fill_value=0.0, out=None):
    """x with rows [boxes[i,0], boxes[i,1]) and columns [boxes[i,2], boxes[i,3]) of image i set
    to fill_value; boxes are clipped to the image.  ``out`` may be x itself."""
    _check_images(x, "x")
    n, h, w, _ = x.shape
    b = _param(boxes, "boxes", (n, 4), np.int64).copy()
    np.clip(b[:, :2], 0, h, out=b[:, :2])
    np.clip(b[:, 2:], 0, w, out=b[:, 2:])
    out = check_out(out, "out", x.shape, x.dtype)
    if out is not x and np.may_share_memory(out, x):
        raise ValueError("out must be x itself or not overlap it")
    if n:
        _k.cutout(x, out, b, float(fill_value), _threads(x.size, n * h))
    return out


def _range(value_range):
    if value_range is None:
        return -np.inf, np.inf
    lo, hi = value_range
    return float(lo), float(hi)


def scale_shift_clip(x, scale, shift, value_range=None, *, out=None):
    """out[i, :, :, c] = clip(x[i, :, :, c] * scale[i, c] + shift[i, c], *value_range).
    ``out`` may be x itself."""
    _check_images(x, "x")
    n, h, _, c = x.shape
    s = _param(scale, "scale", (n, c), np.float64)
    t = _param(shift, "shift", (n, c), np.float64)
    lo, hi = _range(value_range)
    out = check_out(out, "out", x.shape, x.dtype)
    if out is not x and np.may_share_memory(out, x):
        raise ValueError("out must be x itself or not overlap it")
    if n:
        _k.scale_shift_clip(x, out, s, t, lo, hi, _threads(x.size, n * h))
    return out


def scale_shift_clip_backward(x, dy, scale, shift, value_range=None, *, contrast=False,
                              out=None):
    """dL/dx of ``scale_shift_clip`` for the forward input x.  With ``contrast=True`` the
    shift was (1 - scale) * channel_means(x) (RandomContrast), whose dependence on x adds
    (1 - scale) / (H W) * sum of the unclipped gradient.  ``out`` may be dy itself."""
    _check_images(x, "x")
    check_array(dy, "dy", dtype=x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have x's shape {x.shape}, got {dy.shape}")
    n, h, w, c = x.shape
    s = _param(scale, "scale", (n, c), np.float64)
    t = _param(shift, "shift", (n, c), np.float64)
    coef = (1.0 - s) / (h * w) if contrast else np.zeros_like(s)
    lo, hi = _range(value_range)
    out = check_out(out, "out", x.shape, x.dtype)
    if np.may_share_memory(out, x) or (out is not dy and np.may_share_memory(out, dy)):
        raise ValueError("out must be dy itself or not overlap x and dy")
    if n:
        _k.scale_shift_clip_adjoint(x, dy, out, s, t, coef, lo, hi, _threads(x.size, n))
    return out


def channel_means(x, *, out=None):
    """(N, C) float64 means of each image's channels."""
    _check_images(x, "x")
    out = check_out(out, "out", (x.shape[0], x.shape[3]), np.float64)
    if x.shape[0]:
        _k.channel_means(x, out, _threads(x.size, x.shape[0]))
    return out


def mix(x, partner, weight, *, out=None):
    """out[i] = weight[i] * x[i] + (1 - weight[i]) * x[partner[i]] (MixUp), x of any shape
    with the batch first."""
    if not isinstance(x, np.ndarray) or x.ndim < 1:
        raise TypeError("x must be a numpy.ndarray with a batch axis")
    check_array(x, "x")
    n = x.shape[0]
    p = _param(partner, "partner", (n,), np.int64)
    if n and (p.min() < 0 or p.max() >= n):
        raise ValueError(f"partner must hold indices in [0, {n})")
    wt = _param(weight, "weight", (n,), np.float64)
    out = _fresh_out(out, "out", x.shape, x.dtype, x)
    if n and x.size:
        flat = x.reshape(n, -1)
        _k.mix(flat, out.reshape(n, -1), p, wt, _threads(x.size, n))
    return out


def affine_channels(x, scale, shift, axis=-1, *, out=None):
    """out = x * scale + shift with scale/shift of shape (K,) along the contiguous block of axes
    ``axis`` (an int or a tuple of consecutive ints; K their total size; () or None: K = 1,
    one scalar).  ``out`` may be x itself."""
    check_array(x, "x")
    axes = _normalize_axes(axis, x.ndim)
    k = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    s = np.asarray(scale, dtype=x.dtype).reshape(-1)
    t = np.asarray(shift, dtype=x.dtype).reshape(-1)
    if s.shape != (k,) or t.shape != (k,):
        raise ValueError(f"scale and shift must have {k} values, got {s.size} and {t.size}")
    out = check_out(out, "out", x.shape, x.dtype)
    if out is not x and np.may_share_memory(out, x):
        raise ValueError("out must be x itself or not overlap it")
    if x.size == 0:
        return out
    inner = int(np.prod(x.shape[axes[-1] + 1:])) if axes else 1
    # Rows of length L hold whole repetitions of the (K, inner) pattern; widen short rows
    # along the axes before the block so the inner loop is long enough to vectorize.
    row = k * inner
    lead = list(x.shape[:axes[0]]) if axes else list(x.shape)
    reps = 1
    while lead and row * reps < 256:
        reps *= lead.pop()
    pattern_s = np.ascontiguousarray(np.tile(np.repeat(s, inner), reps))
    pattern_t = np.ascontiguousarray(np.tile(np.repeat(t, inner), reps))
    length = row * reps
    _k.affine_rows(x.reshape(-1, length), out.reshape(-1, length), pattern_s, pattern_t,
                   _threads(x.size, x.size // length))
    return out


def _normalize_axes(axis, ndim):
    if axis is None:
        return ()
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) \
        else tuple(axis)
    norm = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral) or not -ndim <= a < ndim:
            raise ValueError(f"axis {a!r} is out of range for {ndim} dimensions")
        norm.append(int(a) % ndim)
    norm = sorted(norm)
    if norm and norm != list(range(norm[0], norm[-1] + 1)):
        raise ValueError(f"axis must be consecutive axes, got {axis!r}")
    return tuple(norm)


class ShuffleBuffer:
    """A shuffle buffer of ``size`` int64 slots (tf.data's rule): the first ``size`` items fill
    it; each later item takes the place of a uniformly chosen slot, whose item is emitted;
    ``drain`` empties it in random order.  The uniform draws come from the caller's Generator,
    so the order is a function of the seed alone."""

    def __init__(self, size, rng):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {size!r}")
        self.size = int(size)
        self._rng = rng
        self._buf = np.empty(self.size, dtype=np.int64)
        self._filled = 0

    def feed(self, items):
        """Add ``items`` (1-D int64); returns the items emitted (possibly none)."""
        items = np.ascontiguousarray(items, dtype=np.int64)
        take = min(self.size - self._filled, items.size)
        self._buf[self._filled:self._filled + take] = items[:take]
        self._filled += take
        rest = items[take:]
        out = np.empty(rest.size, dtype=np.int64)
        if rest.size:
            _k.shuffle_feed(rest, out, self._rng.random(rest.size), self._buf)
        return out

    def drain(self):
        """The items still in the buffer, in random order; the buffer is then empty."""
        out = np.empty(self._filled, dtype=np.int64)
        if self._filled:
            _k.shuffle_drain(self._buf[:self._filled].copy(), out, self._rng.random(self._filled))
        self._filled = 0
        return out


# ---- transforms ---------------------------------------------------------------------------

def _column(v, n, name):
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size == 1:
        v = np.full(n, v[0])
    if v.shape != (n,):
        raise ValueError(f"{name} must have one value per image ({n}), got {v.size}")
    return v


def rotation_transforms(angles, height, width):
    """(N, 8) transforms rotating each image by angles[i] radians about its centre,
    counter-clockwise as displayed (Keras RandomRotation; pi/2 equals np.rot90)."""
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    cos, sin = np.cos(a), np.sin(a)
    h1, w1 = height - 1.0, width - 1.0
    t = np.zeros((a.size, 8))
    t[:, 0], t[:, 1] = cos, -sin
    t[:, 2] = (w1 - (cos * w1 - sin * h1)) / 2.0
    t[:, 3], t[:, 4] = sin, cos
    t[:, 5] = (h1 - (sin * w1 + cos * h1)) / 2.0
    return t


def translation_transforms(dx, dy):
    """(N, 8) transforms moving each image right by dx[i] and down by dy[i] pixels."""
    dx = np.asarray(dx, dtype=np.float64).reshape(-1)
    dy = _column(dy, dx.size, "dy")
    t = np.zeros((dx.size, 8))
    t[:, 0] = t[:, 4] = 1.0
    t[:, 2], t[:, 5] = -dx, -dy
    return t


def zoom_transforms(zx, zy, height, width):
    """(N, 8) transforms scaling about the centre: the output shows zx[i] (zy[i]) times the
    input's width (height); > 1 zooms out, < 1 zooms in (Keras RandomZoom's 1 + factor)."""
    zx = np.asarray(zx, dtype=np.float64).reshape(-1)
    zy = _column(zy, zx.size, "zy")
    t = np.zeros((zx.size, 8))
    t[:, 0], t[:, 4] = zx, zy
    t[:, 2] = (width - 1.0) / 2.0 * (1.0 - zx)
    t[:, 5] = (height - 1.0) / 2.0 * (1.0 - zy)
    return t
