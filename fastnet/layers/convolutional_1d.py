"""1-D convolution layer over (batch, steps, channels) sequences."""
from fastnet import regularizers
from fastnet.layers.conv import (OpConvLayer, check_data_format, check_dilation, check_filters,
                                 check_group_channels, check_groups)
from fastnet.ops import conv_general as general_ops
from fastnet.ops._checks import check_positive_int


def _single(v, name):
    """An int or a 1-tuple (Keras accepts both for 1-D arguments)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{name} must be an integer or a tuple of one integer, got {v!r}")
        v = v[0]
    return check_positive_int(v, name)


class Conv1D(OpConvLayer):
    """1-D convolution: x (batch, steps, in) -> y (batch, out_steps, filters).

    kernel (k, in / groups, filters), bias (filters,).  padding 'valid' (out_steps =
    (steps - k_eff) // s + 1), 'same' (ceil(steps / s)) or 'causal' (ceil(steps / s), the
    window padded with (k - 1) * dilation zeros on the left only, so step t sees no input after
    t); k_eff = (k - 1) * dilation + 1.  Runs as a 1 x k Conv2D on the (batch, 1, steps, in)
    view of the input: the Conv2D kernels when there is no dilation, no groups and no causal
    padding.  ReLU is fused.

    >>> Conv1D(32, 5, padding="causal", dilation_rate=2, input_shape=(100, 8))
    """

    _CONFIG_KEYS = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups",
                    "kernel_regularizer")

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_filters("Conv1D", filters)
        check_data_format("Conv1D", data_format)
        self.kernel_size = _single(kernel_size, "kernel_size")
        self.strides = _single(strides, "strides")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same", "causal"):
            raise ValueError(f"Conv1D: padding must be 'valid', 'same' or 'causal', "
                             f"got {padding!r}")
        self.padding = padding.lower()
        self.dilation_rate = check_dilation("Conv1D", (1, self.strides),
                                            _single(dilation_rate, "dilation_rate"), rank=1)[1]
        self.groups = check_groups("Conv1D", self.filters, groups)
        self._init_common(activation, use_bias, bias_initializer, bias_regularizer)
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        if self.padding == "causal":
            self._padding2d = ((0, 0), ((self.kernel_size - 1) * self.dilation_rate, 0))
        else:
            self._padding2d = self.padding

    def _args(self):
        return dict(strides=(1, self.strides), padding=self._padding2d,
                    dilation_rate=(1, self.dilation_rate), groups=self.groups)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: Conv1D expects inputs (batch, steps, channels), "
                             f"got per-sample shape {input_shape}")
        try:
            (_, steps), _ = general_ops.output_geometry(
                (1, input_shape[0]), (1, self.kernel_size), (1, self.strides),
                (1, self.dilation_rate), general_ops.normalize_padding(self._padding2d))
        except ValueError as e:
            raise ValueError(f"{self.name}: {e} (input {input_shape})") from None
        return (steps, self.filters)

    def build_weights(self, input_shape):
        check_group_channels(self, input_shape)
        self.add_weight("kernel", (self.kernel_size, input_shape[-1] // self.groups,
                                   self.filters),
                        self.kernel_initializer, regularizer=self.kernel_regularizer)
        self._add_bias(self.filters)

    @staticmethod
    def _as_image(a):
        """(N, L, C) -> its (N, 1, L, C) view."""
        return a.reshape(a.shape[:1] + (1,) + a.shape[1:])

    def _forward_op(self, x, activation, out):
        general_ops.conv2d_general(self._as_image(x), self._kernel2d(), self.params.get("bias"),
                                   activation=activation, out=self._as_image(out),
                                   **self._args())
        return out

    def _kernel2d(self, kernel=None):
        """The kernel (k, in / groups, filters) (or ``kernel``) as its (1, k, ...) view."""
        k = self.params["kernel"] if kernel is None else kernel
        return k.reshape((1,) + k.shape)

    def _weight_grad_op(self, x, dy, out, bias_grad):
        general_ops.conv2d_general_backward_weight(
            self._as_image(x), self._as_image(dy), (1, self.kernel_size),
            out=self._kernel2d(out), bias_grad=bias_grad, **self._args())

    def _input_grad_op(self, dy, input_shape, out):
        general_ops.conv2d_general_backward_input(
            self._as_image(dy), self._kernel2d(), self._as_image(out).shape,
            out=self._as_image(out), **self._args())
        return out
