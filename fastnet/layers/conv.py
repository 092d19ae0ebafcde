"""Convolution layers (channels last): Conv2D and the argument checks its relatives share."""
import numpy as np

from fastnet import activations, regularizers
from fastnet.layers.base import ActivationMixin, Layer
from fastnet.ops import activations as act_ops
from fastnet.ops import conv as conv_ops
from fastnet.ops import conv_general as general_ops
from fastnet.ops._checks import check_padding, check_positive_int, conv_output_size, pair


# ------------------------------------------------------------------ shared by the conv layers
def check_filters(cls_name, filters, what="filters"):
    if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
        raise ValueError(f"{cls_name}: {what} must be a positive integer, got {filters!r}")
    return int(filters)


def check_data_format(cls_name, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{cls_name}: only data_format='channels_last' is supported, "
                         f"got {data_format!r}")


def check_dilation(cls_name, strides, dilation_rate, rank=2):
    """Keras refuses strides > 1 together with dilation_rate > 1."""
    dilation = pair(dilation_rate, "dilation_rate") if rank == 2 else \
        (1, check_positive_int(dilation_rate, "dilation_rate"))
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError(f"{cls_name}: strides > 1 not supported in conjunction with "
                         f"dilation_rate > 1, got strides={strides} and dilation_rate="
                         f"{dilation_rate}")
    return dilation


def check_groups(cls_name, filters, groups):
    groups = check_positive_int(groups, "groups")
    if filters % groups:
        raise ValueError(f"{cls_name}: filters={filters} must be divisible by groups={groups}")
    return groups


def check_group_channels(layer, input_shape):
    if input_shape[-1] % layer.groups:
        raise ValueError(f"{layer.name}: the {input_shape[-1]} input channels must be "
                         f"divisible by groups={layer.groups} (input {input_shape})")


def check_image_shape(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{layer.name}: {type(layer).__name__} expects inputs (batch, height, "
                         f"width, channels), got per-sample shape {input_shape}")


def image_output_hw(layer, input_shape, kernel_size, strides, dilation, padding):
    """(OH, OW) of a convolution over the per-sample ``input_shape`` (H, W, C)."""
    check_image_shape(layer, input_shape)
    try:
        return general_ops.output_geometry(input_shape[:2], kernel_size, strides, dilation,
                                           padding)[0]
    except ValueError as e:
        raise ValueError(f"{layer.name}: {e} (input {input_shape})") from None


def grad_through_activation(layer, dy):
    """dL/dz from dL/dy for a layer that stored ``_y`` (and ``_z``) in forward."""
    return layer.activation_grad(dy, layer._y,
                                 layer._z if layer.activation in act_ops.NEEDS_INPUT else None)


class OpConvLayer(ActivationMixin, Layer):
    """A convolution-like layer made of three ops the subclass names:
    ``_forward_op(x, activation, out)`` (activation 'relu', fused, or None),
    ``_weight_grad_op(x, dy, out, bias_grad)`` and ``_input_grad_op(dy, input_shape, out)``;
    weights ``kernel`` and, with ``use_bias``, ``bias``.  ``get_config`` writes the attributes
    named in ``_CONFIG_KEYS`` (activation and ``*_regularizer`` serialized)."""

    _CONFIG_KEYS = ()

    def _init_common(self, activation, use_bias, bias_initializer, bias_regularizer):
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.bias_initializer = bias_initializer
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def _add_bias(self, channels):
        if self.use_bias:
            self.add_weight("bias", (channels,), self.bias_initializer,
                            regularizer=self.bias_regularizer)

    def forward(self, x, training=False):
        fused = self.activation if self.activation == "relu" else None
        z = self._forward_op(x, fused, self.buffer("z", (x.shape[0],) + self.output_shape))
        y = z if fused is not None else self.apply_activation(z)
        self._x, self._z, self._y = x, z, y
        return y

    def backward(self, dy):
        dy = grad_through_activation(self, dy)
        if self.trainable:        # a frozen layer's weights get no gradient
            self._weight_grad_op(self._x, dy, self.grads["kernel"], self.grads.get("bias"))
            self.add_regularization_grads()
        if not self.need_input_grad:
            return None
        return self._input_grad_op(dy, self._x.shape, self.buffer("dx", self._x.shape))

    def get_config(self):
        cfg = super().get_config()
        for key in self._CONFIG_KEYS + ("activation", "use_bias", "bias_regularizer"):
            value = getattr(self, key)
            if key == "activation":
                value = activations.serialize(value)
            elif key.endswith("_regularizer"):
                value = regularizers.serialize(value)
            cfg[key] = value
        return cfg


class Conv2D(OpConvLayer):
    """2-D convolution over NHWC inputs.

    x (batch, H, W, in) -> y (batch, OH, OW, filters); kernel (kh, kw, in / groups, filters),
    bias (filters,).  OH = (H - kh_eff) // sh + 1 for 'valid', ceil(H / sh) for 'same'
    (TensorFlow's padding, the odd row at the bottom), kh_eff = (kh - 1) * dilation + 1.
    ``groups``: the channels are split in this many groups, each convolved with filters /
    groups filters (both must divide by it).  ReLU is fused into the convolution's epilogue.
    Kernels: fastnet.ops.conv's with no dilation and no groups, and for a dilation without
    groups too, run on the dh*dw phases of the input (``fastnet.ops.conv_general.phase_plan``);
    fastnet.ops.conv_general's with groups.
    ``kernel_regularizer`` / ``bias_regularizer``: see ``fastnet.regularizers``.

    >>> Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1))
    >>> Conv2D(64, 3, padding="same", dilation_rate=2, groups=4)
    """

    _CONFIG_KEYS = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups",
                    "kernel_regularizer")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, data_format=None,
                 dilation_rate=(1, 1), groups=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_filters("Conv2D", filters)
        check_data_format("Conv2D", data_format)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = check_padding(padding)
        self.dilation_rate = check_dilation("Conv2D", self.strides, dilation_rate)
        self.groups = check_groups("Conv2D", self.filters, groups)
        # no dilation, no groups: fastnet.ops.conv's kernels, exactly as before both existed
        self._plain = self.dilation_rate == (1, 1) and self.groups == 1
        self._init_common(activation, use_bias, bias_initializer, bias_regularizer)
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)

    def compute_output_shape(self, input_shape):
        if not self._plain:
            return image_output_hw(self, input_shape, self.kernel_size, self.strides,
                                   self.dilation_rate, self.padding) + (self.filters,)
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
        check_group_channels(self, input_shape)
        self.add_weight("kernel",
                        self.kernel_size + (input_shape[-1] // self.groups, self.filters),
                        self.kernel_initializer, regularizer=self.kernel_regularizer)
        self._add_bias(self.filters)
        # dilated without groups: the input's phases through fastnet.ops.conv's kernels
        self._phases = None if self._plain or self.groups > 1 else general_ops.phase_plan(
            input_shape[:2], self.kernel_size, self.dilation_rate, self.padding)

    def _general_args(self):
        return dict(strides=self.strides, padding=self.padding,
                    dilation_rate=self.dilation_rate, groups=self.groups)

    def _phase_forward(self, x, kernel, bias, activation, out, key):
        """The dilated convolution as the undilated one of each phase of the input; returns
        the phases of x and of the output (N*dh*dw images each)."""
        _, pads, in_size, out_size = self._phases
        n = x.shape[0] * self.dilation_rate[0] * self.dilation_rate[1]
        xs = general_ops.space_to_batch2d(
            x, self.dilation_rate, pads, in_size,
            out=self.buffer(key + "xs", (n,) + in_size + (x.shape[3],)))
        ys = conv_ops.conv2d(xs, kernel, bias, activation=activation,
                             out=self.buffer(key + "ys", (n,) + out_size + (self.filters,)))
        general_ops.batch_to_space2d(ys, self.dilation_rate, (0, 0), out.shape, out=out)
        return xs, ys

    def _forward_op(self, x, activation, out):
        if self._phases is not None:
            self._xs, self._ys = self._phase_forward(x, self.params["kernel"],
                                                     self.params.get("bias"), activation, out,
                                                     "")
            return out
        if self._plain:
            return conv_ops.conv2d(x, self.params["kernel"], self.params.get("bias"),
                                   strides=self.strides, padding=self.padding,
                                   activation=activation, out=out)
        return general_ops.conv2d_general(x, self.params["kernel"], self.params.get("bias"),
                                          activation=activation, out=out,
                                          **self._general_args())

    def _weight_grad_op(self, x, dy, out, bias_grad):
        general_ops.conv2d_general_backward_weight(x, dy, self.kernel_size, out=out,
                                                   bias_grad=bias_grad, **self._general_args())

    def _input_grad_op(self, dy, input_shape, out):
        return general_ops.conv2d_general_backward_input(dy, self.params["kernel"], input_shape,
                                                         out=out, **self._general_args())

    def forward_folded(self, x, bn, activation=None):
        """Inference: this convolution followed by the BatchNormalization ``bn`` (and a ReLU
        when ``activation='relu'``) in one pass: bn folded into kernel and bias, the ReLU into
        the epilogue.  Needs ``self.activation`` None (bn sees the raw convolution)."""
        from fastnet.layers.normalization import fold_batchnorm
        kernel, bias = fold_batchnorm(self.params["kernel"], self.params.get("bias"), bn)
        out = self.buffer("folded", (x.shape[0],) + self.output_shape)
        if self._phases is not None:
            self._phase_forward(x, kernel, bias, activation, out, "folded_")
            return out
        if not self._plain:
            return general_ops.conv2d_general(x, kernel, bias, activation=activation, out=out,
                                              **self._general_args())
        return conv_ops.conv2d(x, kernel, bias, strides=self.strides, padding=self.padding,
                               activation=activation, out=out)

    def backward(self, dy):
        if not self._plain and self._phases is None:
            return super().backward(dy)
        relu = None
        if self.activation == "relu" and not self.skip_activation_grad:
            # the kernels mask dy by y > 0 as they read it: no separate pass
            relu = self._y if self._plain else self._ys
        else:
            dy = self.activation_grad(dy, self._y,
                                      self._z if self.activation in act_ops.NEEDS_INPUT else None)
        if self._plain:
            return self._fast_backward(self._x, dy, relu, self.strides, self.padding, "dx")
        _, pads, _, out_size = self._phases
        dys = general_ops.space_to_batch2d(dy, self.dilation_rate, (0, 0), out_size,
                                           out=self.buffer("dys", self._ys.shape))
        dxs = self._fast_backward(self._xs, dys, relu, (1, 1), "valid", "dxs")
        if dxs is None:
            return None
        return general_ops.batch_to_space2d(dxs, self.dilation_rate, pads, self._x.shape,
                                            out=self.buffer("dx", self._x.shape))

    def _fast_backward(self, x, dy, relu, strides, padding, dx_key):
        """The kernel and bias gradients and dL/dx (or None) by fastnet.ops.conv."""
        if self.trainable:        # a frozen layer's weights get no gradient
            conv_ops.conv2d_backward_weight(
                x, dy, self.kernel_size, strides=strides, padding=padding,
                out=self.grads["kernel"], bias_grad=self.grads.get("bias"), relu_output=relu)
            self.add_regularization_grads()
        if not self.need_input_grad:
            return None
        return conv_ops.conv2d_backward_input(
            dy, self.params["kernel"], x.shape, strides=strides, padding=padding,
            out=self.buffer(dx_key, x.shape), relu_output=relu)
