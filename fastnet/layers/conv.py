"""Convolution layers (channels last)."""
import numpy as np

from fastnet import activations, regularizers
from fastnet.layers.base import ActivationMixin, Layer
from fastnet.ops import activations as act_ops
from fastnet.ops import conv as conv_ops
from fastnet.ops._checks import check_padding, conv_output_size, pair


class Conv2D(ActivationMixin, Layer):
    """2-D convolution over NHWC inputs.

    x (batch, H, W, in) -> y (batch, OH, OW, filters); kernel (kh, kw, in, filters), bias
    (filters,).  OH = (H - kh) // sh + 1 for 'valid', ceil(H / sh) for 'same' (TensorFlow's
    padding, the odd row at the bottom).  ReLU is fused into the convolution's epilogue.
    ``kernel_regularizer`` / ``bias_regularizer``: see ``fastnet.regularizers``.

    >>> Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1))
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"Conv2D: filters must be a positive integer, got {filters!r}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"Conv2D: only data_format='channels_last' is supported, "
                             f"got {data_format!r}")
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = check_padding(padding)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: Conv2D expects inputs (batch, height, width, "
                             f"channels), got per-sample shape {input_shape}")
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        try:
            oh = conv_output_size(input_shape[0], kh, sh, self.padding)[0]
            ow = conv_output_size(input_shape[1], kw, sw, self.padding)[0]
        except ValueError as e:
            raise ValueError(f"{self.name}: {e} (input {input_shape})") from None
        return (oh, ow, self.filters)

    def build_weights(self, input_shape):
        self.add_weight("kernel", self.kernel_size + (input_shape[-1], self.filters),
                        self.kernel_initializer, regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer,
                            regularizer=self.bias_regularizer)

    def forward(self, x, training=False):
        fused = self.activation if self.activation == "relu" else None
        shape = (x.shape[0],) + self.output_shape
        z = conv_ops.conv2d(x, self.params["kernel"], self.params.get("bias"),
                            strides=self.strides, padding=self.padding, activation=fused,
                            out=self.buffer("z", shape))
        y = z if fused is not None else self.apply_activation(z)
        self._x, self._z, self._y = x, z, y
        return y

    def forward_folded(self, x, bn, activation=None):
        """Inference: this convolution followed by the BatchNormalization ``bn`` (and a ReLU
        when ``activation='relu'``) in one pass: bn folded into kernel and bias, the ReLU into
        the epilogue.  Needs ``self.activation`` None (bn sees the raw convolution)."""
        from fastnet.layers.normalization import fold_batchnorm
        kernel, bias = fold_batchnorm(self.params["kernel"], self.params.get("bias"), bn)
        return conv_ops.conv2d(x, kernel, bias, strides=self.strides, padding=self.padding,
                               activation=activation,
                               out=self.buffer("folded", (x.shape[0],) + self.output_shape))

    def backward(self, dy):
        relu = None
        if self.activation == "relu" and not self.skip_activation_grad:
            relu = self._y  # the kernels mask dy by y > 0 as they read it: no separate pass
        else:
            dy = self.activation_grad(dy, self._y,
                                      self._z if self.activation in act_ops.NEEDS_INPUT else None)
        if self.trainable:        # a frozen layer's weights get no gradient
            conv_ops.conv2d_backward_weight(
                self._x, dy, self.kernel_size, strides=self.strides, padding=self.padding,
                out=self.grads["kernel"], bias_grad=self.grads.get("bias"), relu_output=relu)
            self.add_regularization_grads()
        if not self.need_input_grad:
            return None
        return conv_ops.conv2d_backward_input(
            dy, self.params["kernel"], self._x.shape, strides=self.strides, padding=self.padding,
            out=self.buffer("dx", self._x.shape), relu_output=relu)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                   padding=self.padding, activation=activations.serialize(self.activation),
                   use_bias=self.use_bias,
                   kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
                   bias_regularizer=regularizers.serialize(self.bias_regularizer))
        return cfg
