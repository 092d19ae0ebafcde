"""Pooling layers (channels last)."""
from fastnet.layers.base import Layer
from fastnet.ops import pool as pool_ops
from fastnet.ops._checks import check_padding, conv_output_size, pair


class MaxPooling2D(Layer):
    """Max over pool_size windows: x (batch, H, W, C) -> (batch, OH, OW, C).

    strides default to pool_size; 'valid' or 'same' padding as in Keras/TensorFlow.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"MaxPooling2D: only data_format='channels_last' is supported, "
                             f"got {data_format!r}")
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = pair(strides, "strides") if strides is not None else self.pool_size
        self.padding = check_padding(padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: MaxPooling2D expects inputs (batch, height, width, "
                             f"channels), got per-sample shape {input_shape}")
        try:
            oh = conv_output_size(input_shape[0], self.pool_size[0], self.strides[0],
                                  self.padding, what="pool")[0]
            ow = conv_output_size(input_shape[1], self.pool_size[1], self.strides[1],
                                  self.padding, what="pool")[0]
        except ValueError as e:
            raise ValueError(f"{self.name}: {e} (input {input_shape})") from None
        return (oh, ow, input_shape[2])

    def forward(self, x, training=False):
        y = pool_ops.max_pool2d(x, self.pool_size, self.strides, self.padding,
                                out=self.buffer("y", (x.shape[0],) + self.output_shape))
        self._x, self._y = x, y
        return y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return pool_ops.max_pool2d_backward(self._x, self._y, dy, self.pool_size, self.strides,
                                            self.padding, out=self.buffer("dx", self._x.shape))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return cfg
