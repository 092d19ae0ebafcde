"""Pooling layers (channels last): max, average and global pooling."""
from fastnet.layers.base import Layer
from fastnet.ops import pool as pool_ops
from fastnet.ops import spatial as spatial_ops
from fastnet.ops._checks import check_padding, conv_output_size, pair


class MaxPooling2D(Layer):
    """Max over pool_size windows: x (batch, H, W, C) -> (batch, OH, OW, C).

    strides default to pool_size; 'valid' or 'same' padding as in Keras/TensorFlow.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__}: only data_format='channels_last' is "
                             f"supported, got {data_format!r}")
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = pair(strides, "strides") if strides is not None else self.pool_size
        self.padding = check_padding(padding)
        self._conv = None   # see fuse_conv_backward

    def fuse_conv_backward(self, conv):
        """Take over the backward of ``conv``, the layer whose output this pooling reads alone.

        The model calls this when ``conv`` is a Conv2D with no or a ReLU activation whose input
        gradient is not needed (a network's first layer): training forwards then record each
        window's argmax (ReLU-masked), and ``backward`` computes the conv's kernel and bias
        gradients straight from the pooled gradient
        (``fastnet.ops.conv.conv2d_backward_weight_pooled``) and returns None, so neither the
        full-size pooling gradient nor the conv backward is run.  ``None`` undoes it.
        Returns True when fused."""
        self._conv = None
        if conv is None:
            return False
        from fastnet.layers.conv import Conv2D
        plain = type(conv) is Conv2D and getattr(conv, "groups", 1) == 1 \
            and tuple(getattr(conv, "dilation_rate", (1, 1))) == (1, 1)
        if not (plain and not conv.need_input_grad
                and conv.activation in (None, "relu") and not conv.skip_activation_grad
                and conv.dtype == self.dtype
                and self.pool_size[0] * self.pool_size[1] <= 255):
            return False
        self._conv = conv
        return True

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs (batch, height, "
                             f"width, channels), got per-sample shape {input_shape}")
        try:
            oh = conv_output_size(input_shape[0], self.pool_size[0], self.strides[0],
                                  self.padding, what="pool")[0]
            ow = conv_output_size(input_shape[1], self.pool_size[1], self.strides[1],
                                  self.padding, what="pool")[0]
        except ValueError as e:
            raise ValueError(f"{self.name}: {e} (input {input_shape})") from None
        return (oh, ow, input_shape[2])

    def forward(self, x, training=False):
        shape = (x.shape[0],) + self.output_shape
        argmax = None
        if training and self._conv is not None:
            argmax = self.buffer("argmax", shape, "uint8")
        y = pool_ops.max_pool2d(x, self.pool_size, self.strides, self.padding,
                                out=self.buffer("y", shape), argmax=argmax,
                                relu_input=argmax is not None and self._conv.activation == "relu")
        self._x, self._y, self._argmax = x, y, argmax
        return y

    def backward(self, dy):
        conv = self._conv
        if conv is not None and self._argmax is not None:
            if conv.trainable:
                from fastnet.ops.conv import conv2d_backward_weight_pooled
                conv2d_backward_weight_pooled(
                    conv._x, dy, self._argmax, conv.kernel_size, strides=conv.strides,
                    padding=conv.padding, pool_size=self.pool_size, pool_strides=self.strides,
                    pool_padding=self.padding, out=conv.grads["kernel"],
                    bias_grad=conv.grads.get("bias"))
                conv.add_regularization_grads()
            return None
        if not self.need_input_grad:
            return None
        return pool_ops.max_pool2d_backward(self._x, self._y, dy, self.pool_size, self.strides,
                                            self.padding, out=self.buffer("dx", self._x.shape),
                                            argmax=self._argmax)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return cfg


class AveragePooling2D(MaxPooling2D):
    """Mean over pool_size windows: x (batch, H, W, C) -> (batch, OH, OW, C).

    strides default to pool_size; with 'same' padding the mean is over the real (non-padded)
    elements only, as in Keras/TensorFlow.
    """

    def forward(self, x, training=False):
        y = pool_ops.avg_pool2d(x, self.pool_size, self.strides, self.padding,
                                out=self.buffer("y", (x.shape[0],) + self.output_shape))
        self._x_shape = x.shape
        return y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return pool_ops.avg_pool2d_backward(dy, self._x_shape, self.pool_size, self.strides,
                                            self.padding, out=self.buffer("dx", self._x_shape))


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__}: only data_format='channels_last' is "
                             f"supported, got {data_format!r}")
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs (batch, height, "
                             f"width, channels), got per-sample shape {input_shape}")
        return (1, 1, input_shape[2]) if self.keepdims else (input_shape[2],)

    def _pooled_shape(self, x):
        return (x.shape[0], x.shape[3])

    def get_config(self):
        cfg = super().get_config()
        cfg["keepdims"] = self.keepdims
        return cfg


class GlobalAveragePooling2D(_GlobalPooling2D):
    """Mean over height and width: (batch, H, W, C) -> (batch, C) (keepdims: (batch, 1, 1, C))."""

    def forward(self, x, training=False):
        y = spatial_ops.global_avg_pool2d(x, out=self.buffer("y", self._pooled_shape(x)))
        self._x_shape = x.shape
        return y.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return spatial_ops.global_avg_pool2d_backward(
            dy.reshape(self._x_shape[0], self._x_shape[3]), self._x_shape,
            out=self.buffer("dx", self._x_shape))


class GlobalMaxPooling2D(_GlobalPooling2D):
    """Max over height and width: (batch, H, W, C) -> (batch, C) (keepdims: (batch, 1, 1, C)).

    The gradient is shared evenly by the pixels equal to the maximum (TensorFlow's rule)."""

    def forward(self, x, training=False):
        y = spatial_ops.global_max_pool2d(x, out=self.buffer("y", self._pooled_shape(x)))
        self._x, self._y = x, y
        return y.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return spatial_ops.global_max_pool2d_backward(
            self._x, self._y, dy.reshape(self._y.shape), out=self.buffer("dx", self._x.shape))
