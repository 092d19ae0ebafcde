"""Core layers: Input, InputLayer, Dense, Flatten, Activation (KerasTensor: see node.py)."""
import numpy as np

from fastnet import activations, regularizers
from fastnet.layers.base import ActivationMixin, Layer, _as_shape
from fastnet.layers.node import KerasTensor, Node  # noqa: F401  (KerasTensor: public here)
from fastnet.ops import activations as act_ops
from fastnet.ops.core import bias_grad
from fastnet.ops.matmul import matmul


class InputLayer(Layer):
    """The entry of a model: declares the per-sample input shape; passes data through.

    ``output`` is its symbolic tensor (what ``Input`` returns)."""

    def __init__(self, input_shape=None, batch_size=None, dtype=None, name=None, shape=None,
                 **kwargs):
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError("InputLayer: shape (or input_shape) is required")
        super().__init__(name=name, dtype=dtype, input_shape=shape, **kwargs)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
                batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"InputLayer: batch_size must be a positive integer or None, "
                             f"got {batch_size!r}")
        self.batch_size = None if batch_size is None else int(batch_size)
        if None in self.batch_input_shape:   # sizes known when data arrive (node.py)
            self.input_shape = self.output_shape = self.batch_input_shape
            self.built = True
        else:
            self.build(self.batch_input_shape)
        self._state_keys = frozenset(self.__dict__) - {"_buffers"}
        node = Node(self, [], self.batch_input_shape, False)
        self.output = node.outputs[0]
        self.output.shape = (self.batch_size,) + self.batch_input_shape

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        cfg = super().get_config()
        cfg["batch_size"] = self.batch_size
        return cfg


def Input(shape=None, batch_size=None, dtype=None, name=None):
    """A symbolic input batch of ``shape`` (no batch axis): the start of a functional model
    (``x = Input(shape=(32, 32, 3)); y = Conv2D(8, 3)(x); Model(x, y)``) or the first entry
    of a Sequential model.  None in ``shape`` (``Input(shape=(None, 16))``: any number of
    steps) is a size fixed by each batch (see fastnet.layers.node)."""
    if shape is None:
        raise ValueError("Input: shape is required, e.g. Input(shape=(28, 28, 1))")
    return InputLayer(shape=_as_shape(shape, "shape", allow_none=True), batch_size=batch_size,
                      dtype=dtype, name=name).output


class Dense(ActivationMixin, Layer):
    """y = activation(x @ kernel + bias) over the last axis.

    x (batch, ..., in) -> y (batch, ..., units); kernel (in, units), bias (units,).
    ``kernel_regularizer`` / ``bias_regularizer``: see ``fastnet.regularizers``.
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: Dense needs inputs of rank >= 2 (batch, features)")
        return tuple(input_shape[:-1]) + (self.units,)

    def build_weights(self, input_shape):
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer,
                        regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer,
                            regularizer=self.bias_regularizer)

    def forward(self, x, training=False):
        x2 = x.reshape(-1, x.shape[-1])
        fused = self.activation if self.activation == "relu" else None
        z = matmul(x2, self.params["kernel"], bias=self.params.get("bias"), activation=fused,
                   out=self.buffer("z", (x2.shape[0], self.units)))
        y = z if fused is not None else self.apply_activation(z)
        self._x, self._z, self._y, self._x_shape = x2, z, y, x.shape
        return y.reshape(x.shape[:-1] + (self.units,))

    def forward_folded(self, x, bn, activation=None):
        """Inference: this layer followed by the BatchNormalization ``bn`` (and a ReLU when
        ``activation='relu'``) in one GEMM: bn folded into kernel and bias, the ReLU into the
        epilogue.  Needs ``self.activation`` None (bn sees the raw product)."""
        from fastnet.layers.normalization import fold_batchnorm
        kernel, bias = fold_batchnorm(self.params["kernel"], self.params.get("bias"), bn)
        x2 = x.reshape(-1, x.shape[-1])
        y = matmul(x2, kernel, bias=bias, activation=activation,
                   out=self.buffer("folded", (x2.shape[0], self.units)))
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward(self, dy):
        dy = self.activation_grad(dy.reshape(self._y.shape), self._y,
                                  self._z if self.activation in act_ops.NEEDS_INPUT else None)
        if self.trainable:        # a frozen layer's weights get no gradient
            matmul(self._x, dy, transpose_a=True, out=self.grads["kernel"])
            if self.use_bias:
                bias_grad(dy, out=self.grads["bias"])
            self.add_regularization_grads()
        if not self.need_input_grad:
            return None
        dx = matmul(dy, self.params["kernel"], transpose_b=True,
                    out=self.buffer("dx", self._x.shape))
        return dx.reshape(self._x_shape)   # (batch, ..., in) like x, not the 2-D GEMM view

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=activations.serialize(self.activation),
                   use_bias=self.use_bias,
                   kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
                   bias_regularizer=regularizers.serialize(self.bias_regularizer))
        return cfg


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...), row-major (NHWC order), a view."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self._in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._in_shape) if self.need_input_grad else None


class Activation(ActivationMixin, Layer):
    """Applies an activation by name: relu, sigmoid, tanh, softmax, softplus, swish/silu,
    gelu, elu, leaky_relu, linear (see ``fastnet.activations``)."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def forward(self, x, training=False):
        self._x = x
        self._y = self.apply_activation(x)
        return self._y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return self.activation_grad(dy, self._y, self._x)

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = activations.serialize(self.activation)
        return cfg
