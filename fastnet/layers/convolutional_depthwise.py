"""Depthwise and depthwise-separable convolution layers (channels last)."""
from fastnet import regularizers
from fastnet.layers.conv import (OpConvLayer, check_data_format, check_dilation, check_filters,
                                 grad_through_activation, image_output_hw)
from fastnet.ops import conv as conv_ops
from fastnet.ops import conv_general as general_ops
from fastnet.ops._checks import check_padding, pair


class _DepthwiseBase(OpConvLayer):
    """The depthwise step's arguments and checks, shared by the two layers below."""

    _CONFIG_KEYS = ("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate",
                    "depthwise_regularizer")

    def __init__(self, cls_name, kernel_size, strides, padding, depth_multiplier, dilation_rate,
                 activation, use_bias, depthwise_initializer, bias_initializer,
                 depthwise_regularizer, bias_regularizer, data_format, **kwargs):
        super().__init__(**kwargs)
        check_data_format(cls_name, data_format)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = check_padding(padding)
        self.dilation_rate = check_dilation(cls_name, self.strides, dilation_rate)
        self.depth_multiplier = check_filters(cls_name, depth_multiplier, "depth_multiplier")
        self._init_common(activation, use_bias, bias_initializer, bias_regularizer)
        self.depthwise_initializer = depthwise_initializer
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)

    def _depthwise_args(self):
        return dict(strides=self.strides, padding=self.padding,
                    dilation_rate=self.dilation_rate)

    def _output_hw(self, input_shape):
        return image_output_hw(self, input_shape, self.kernel_size, self.strides,
                               self.dilation_rate, self.padding)


class DepthwiseConv2D(_DepthwiseBase):
    """Depthwise 2-D convolution: each input channel convolved with its own
    ``depth_multiplier`` filters.

    x (batch, H, W, in) -> y (batch, OH, OW, in * depth_multiplier), output channel
    c * depth_multiplier + m from input channel c; kernel (kh, kw, in, depth_multiplier) (Keras
    3's layout and name), bias (in * depth_multiplier,).  OH as for Conv2D.  ReLU is fused.

    >>> DepthwiseConv2D(3, padding="same", depth_multiplier=2)
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__("DepthwiseConv2D", kernel_size, strides, padding, depth_multiplier,
                         dilation_rate, activation, use_bias, depthwise_initializer,
                         bias_initializer, depthwise_regularizer, bias_regularizer, data_format,
                         **kwargs)

    def compute_output_shape(self, input_shape):
        return self._output_hw(input_shape) + (input_shape[-1] * self.depth_multiplier,)

    def build_weights(self, input_shape):
        self.add_weight("kernel", self.kernel_size + (input_shape[-1], self.depth_multiplier),
                        self.depthwise_initializer, regularizer=self.depthwise_regularizer)
        self._add_bias(input_shape[-1] * self.depth_multiplier)

    def _forward_op(self, x, activation, out):
        return general_ops.depthwise_conv2d(x, self.params["kernel"], self.params.get("bias"),
                                            activation=activation, out=out,
                                            **self._depthwise_args())

    def _weight_grad_op(self, x, dy, out, bias_grad):
        general_ops.depthwise_conv2d_backward_weight(x, dy, self.kernel_size, out=out,
                                                     bias_grad=bias_grad,
                                                     **self._depthwise_args())

    def _input_grad_op(self, dy, input_shape, out):
        return general_ops.depthwise_conv2d_backward_input(dy, self.params["kernel"],
                                                           input_shape, out=out,
                                                           **self._depthwise_args())


class SeparableConv2D(_DepthwiseBase):
    """Depthwise-separable 2-D convolution: a depthwise convolution (strides, padding and
    dilation apply to it) followed by a 1x1 convolution to ``filters`` channels, then bias and
    activation.

    Weights (Keras order and layouts): depthwise_kernel (kh, kw, in, depth_multiplier),
    pointwise_kernel (1, 1, in * depth_multiplier, filters), bias (filters,).  The 1x1 step
    runs on fastnet.ops.conv's kernels with the bias and ReLU in its epilogue.

    >>> SeparableConv2D(64, 3, padding="same", activation="relu")
    """

    _CONFIG_KEYS = _DepthwiseBase._CONFIG_KEYS + ("filters", "pointwise_regularizer")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, **kwargs):
        super().__init__("SeparableConv2D", kernel_size, strides, padding, depth_multiplier,
                         dilation_rate, activation, use_bias, depthwise_initializer,
                         bias_initializer, depthwise_regularizer, bias_regularizer, data_format,
                         **kwargs)
        self.filters = check_filters("SeparableConv2D", filters)
        self.pointwise_initializer = pointwise_initializer
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)

    def compute_output_shape(self, input_shape):
        return self._output_hw(input_shape) + (self.filters,)

    def build_weights(self, input_shape):
        mid = input_shape[-1] * self.depth_multiplier
        self.add_weight("depthwise_kernel",
                        self.kernel_size + (input_shape[-1], self.depth_multiplier),
                        self.depthwise_initializer, regularizer=self.depthwise_regularizer)
        self.add_weight("pointwise_kernel", (1, 1, mid, self.filters),
                        self.pointwise_initializer, regularizer=self.pointwise_regularizer)
        self._add_bias(self.filters)

    def forward(self, x, training=False):
        n = x.shape[0]
        mid = self.output_shape[:2] + (x.shape[3] * self.depth_multiplier,)
        d = general_ops.depthwise_conv2d(x, self.params["depthwise_kernel"],
                                         out=self.buffer("depthwise", (n,) + mid),
                                         **self._depthwise_args())
        fused = self.activation if self.activation == "relu" else None
        z = conv_ops.conv2d(d, self.params["pointwise_kernel"], self.params.get("bias"),
                            activation=fused, out=self.buffer("z", (n,) + self.output_shape))
        y = z if fused is not None else self.apply_activation(z)
        self._x, self._d, self._z, self._y = x, d, z, y
        return y

    def backward(self, dy):
        if not self.trainable and not self.need_input_grad:
            return None
        relu = None
        if self.activation == "relu" and not self.skip_activation_grad:
            relu = self._y   # the 1x1 kernels mask dy by y > 0 as they read it
        else:
            dy = grad_through_activation(self, dy)
        if self.trainable:
            conv_ops.conv2d_backward_weight(self._d, dy, (1, 1),
                                            out=self.grads["pointwise_kernel"],
                                            bias_grad=self.grads.get("bias"), relu_output=relu)
        dd = conv_ops.conv2d_backward_input(dy, self.params["pointwise_kernel"], self._d.shape,
                                            out=self.buffer("dd", self._d.shape),
                                            relu_output=relu)
        if self.trainable:
            general_ops.depthwise_conv2d_backward_weight(
                self._x, dd, self.kernel_size, out=self.grads["depthwise_kernel"],
                **self._depthwise_args())
            self.add_regularization_grads()
        if not self.need_input_grad:
            return None
        return general_ops.depthwise_conv2d_backward_input(
            dd, self.params["depthwise_kernel"], self._x.shape,
            out=self.buffer("dx", self._x.shape), **self._depthwise_args())
