"""Reshaping layers: Reshape (a view) and ZeroPadding2D (a compiled copy)."""
import numpy as np

from fastnet.layers.base import Layer
from fastnet.ops import spatial as spatial_ops


class Reshape(Layer):
    """(batch, *input_shape) -> (batch, *target_shape), row-major (a view, no copy).

    ``target_shape`` excludes the batch axis and may hold one -1, inferred from the size.

    >>> Reshape((7, 7, 16))          # (batch, 784) -> (batch, 7, 7, 16)
    >>> Reshape((-1, 8))
    """

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        try:
            target = tuple(target_shape)
        except TypeError:
            raise TypeError(f"Reshape: target_shape must be a tuple of integers, "
                            f"got {target_shape!r}") from None
        for s in target:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or \
                    (s < 1 and s != -1):
                raise ValueError(f"Reshape: target_shape must hold positive integers and at "
                                 f"most one -1, got {target_shape!r}")
        if sum(1 for s in target if s == -1) > 1:
            raise ValueError(f"Reshape: target_shape may hold at most one -1, "
                             f"got {target_shape!r}")
        self.target_shape = tuple(int(s) for s in target)

    def compute_output_shape(self, input_shape):
        size = int(np.prod(input_shape))
        known = int(np.prod([s for s in self.target_shape if s != -1]))
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"{self.name}: cannot reshape input {input_shape} "
                                 f"({size} values) into {self.target_shape}")
            return tuple(size // known if s == -1 else s for s in self.target_shape)
        if known != size:
            raise ValueError(f"{self.name}: cannot reshape input {input_shape} ({size} values) "
                             f"into {self.target_shape} ({known} values)")
        return self.target_shape

    def forward(self, x, training=False):
        self._in_shape = x.shape
        return x.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy):
        return dy.reshape(self._in_shape) if self.need_input_grad else None

    def get_config(self):
        cfg = super().get_config()
        cfg["target_shape"] = self.target_shape
        return cfg


class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around NHWC images.

    padding: an int (the same on all four sides), (sym_h, sym_w), or
    ((top, bottom), (left, right)), as in Keras.  (batch, H, W, C) -> (batch, top + H + bottom,
    left + W + right, C).
    """

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"ZeroPadding2D: only data_format='channels_last' is supported, "
                             f"got {data_format!r}")
        self.padding = spatial_ops.normalize_padding2d(padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: ZeroPadding2D expects inputs (batch, height, width, "
                             f"channels), got per-sample shape {input_shape}")
        (t, b), (l, r) = self.padding
        h, w, c = input_shape
        return (t + h + b, l + w + r, c)

    def forward(self, x, training=False):
        return spatial_ops.zero_pad2d(x, self.padding,
                                      out=self.buffer("y", (x.shape[0],) + self.output_shape))

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return spatial_ops.zero_pad2d_backward(dy, self.padding, out=self.buffer(
            "dx", (dy.shape[0],) + self.input_shape))

    def get_config(self):
        cfg = super().get_config()
        cfg["padding"] = self.padding
        return cfg
