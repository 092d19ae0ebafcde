"""Transposed 2-D convolution layer (channels last)."""
from fastnet import regularizers
from fastnet.layers.conv import (OpConvLayer, check_data_format, check_dilation, check_filters,
                                 check_image_shape)
from fastnet.ops import conv_general as general_ops
from fastnet.ops._checks import check_padding, pair


class Conv2DTranspose(OpConvLayer):
    """Transposed convolution ("deconvolution"): the gradient of a Conv2D with respect to its
    input, used to upsample.

    x (batch, H, W, in) -> y (batch, OH, OW, filters); kernel (kh, kw, filters, in) (Keras's
    layout), bias (filters,).  Keras's output size: 'valid' OH = (H - 1) * sh + max(kh, sh)
    (+ output_padding when given, instead of the max), 'same' OH = H * sh, or
    (H - 1) * sh + kh % 2 + output_padding when output_padding is given (< strides).  ReLU is
    applied with the bias in one pass.

    >>> Conv2DTranspose(32, 3, strides=2, padding="same")    # 16x16 -> 32x32
    """

    _CONFIG_KEYS = ("filters", "kernel_size", "strides", "padding", "output_padding",
                    "dilation_rate", "kernel_regularizer")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_filters("Conv2DTranspose", filters)
        check_data_format("Conv2DTranspose", data_format)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = check_padding(padding)
        self.dilation_rate = check_dilation("Conv2DTranspose", self.strides, dilation_rate)
        self.output_padding = None
        if output_padding is not None:
            self.output_padding = pair(output_padding, "output_padding", minimum=0)
            if any(p >= s for p, s in zip(self.output_padding, self.strides)):
                raise ValueError(f"Conv2DTranspose: output_padding must be < strides, got "
                                 f"output_padding={self.output_padding}, "
                                 f"strides={self.strides}")
        self._init_common(activation, use_bias, bias_initializer, bias_regularizer)
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)

    def _args(self):
        return dict(strides=self.strides, padding=self.padding,
                    output_padding=self.output_padding, dilation_rate=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        check_image_shape(self, input_shape)
        out = []
        for a in range(2):
            op = None if self.output_padding is None else self.output_padding[a]
            out.append(general_ops.conv_transpose_output_length(
                input_shape[a], self.kernel_size[a], self.strides[a], self.padding, op,
                self.dilation_rate[a]))
        if min(out) < 1:
            raise ValueError(f"{self.name}: the output would be empty ({tuple(out)}) for input "
                             f"{input_shape}")
        return tuple(out) + (self.filters,)

    def build_weights(self, input_shape):
        self.add_weight("kernel", self.kernel_size + (self.filters, input_shape[-1]),
                        self.kernel_initializer, regularizer=self.kernel_regularizer)
        self._add_bias(self.filters)

    def _forward_op(self, x, activation, out):
        return general_ops.conv2d_transpose(x, self.params["kernel"], self.params.get("bias"),
                                            activation=activation, out=out, **self._args())

    def _weight_grad_op(self, x, dy, out, bias_grad):
        general_ops.conv2d_transpose_backward_weight(x, dy, self.kernel_size, out=out,
                                                     bias_grad=bias_grad, **self._args())

    def _input_grad_op(self, dy, input_shape, out):
        return general_ops.conv2d_transpose_backward_input(dy, self.params["kernel"],
                                                           input_shape, out=out, **self._args())
