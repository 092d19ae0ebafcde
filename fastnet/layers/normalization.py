"""BatchNormalization (Keras 3 semantics) and folding it into the preceding layer."""
import numbers

import numpy as np

from fastnet import regularizers
from fastnet.layers.base import Layer
from fastnet.ops import norm as norm_ops


class BatchNormalization(Layer):
    """Normalizes each channel (the last axis) with batch statistics in training and with the
    moving statistics at inference, then scales by gamma and shifts by beta.

    Weights, in Keras order: gamma, beta (trainable; absent when scale / center is False),
    moving_mean, moving_variance (NON-trainable: the optimizer never sees them; the layer
    updates them during training calls).

    Training (``training=True`` and the layer trainable)::

        mean, var = mean and biased variance of x over all axes but the last
        y = (x - mean) / sqrt(var + epsilon) * gamma + beta
        moving_mean     = moving_mean * momentum + mean * (1 - momentum)
        moving_variance = moving_variance * momentum + var * (1 - momentum)

    Inference (``training=False``, or any call while ``trainable`` is False, as Keras does for a
    frozen BatchNormalization): y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma
    + beta, and the moving statistics do not change.

    Inputs are NHWC (batch, H, W, C) or (batch, C) (any rank >= 2), axis = -1 only.  PyTorch's
    BatchNorm differs: its momentum weighs the new batch (0.1 ~ Keras 0.9) and its running
    variance is the unbiased one.

    >>> BatchNormalization()                # after a Conv2D, before its activation
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        if axis != -1 and not (isinstance(axis, numbers.Integral) and not isinstance(axis, bool)):
            raise ValueError(f"BatchNormalization: axis must be -1 (the channels), got {axis!r}")
        self.axis = int(axis)
        for v, name in ((momentum, "momentum"), (epsilon, "epsilon")):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"BatchNormalization: {name} must be a real number, "
                                f"got {type(v).__name__}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1], got {momentum}")
        if not epsilon > 0.0:
            raise ValueError(f"BatchNormalization: epsilon must be > 0, got {epsilon}")
        if beta_constraint is not None or gamma_constraint is not None:
            raise ValueError("BatchNormalization: constraints are not supported")
        if synchronized:
            raise ValueError("BatchNormalization: synchronized=True is not supported")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: BatchNormalization needs inputs of rank >= 2 "
                             f"(batch, ..., channels)")
        if self.axis not in (-1, len(input_shape)):
            raise ValueError(f"{self.name}: only the last axis (channels) can be normalized; "
                             f"axis={self.axis} for inputs of rank {len(input_shape) + 1}")
        return tuple(input_shape)

    def build_weights(self, input_shape):
        c = (input_shape[-1],)
        if self.scale:
            self.add_weight("gamma", c, self.gamma_initializer,
                            regularizer=self.gamma_regularizer)
        if self.center:
            self.add_weight("beta", c, self.beta_initializer, regularizer=self.beta_regularizer)
        self.add_weight("moving_mean", c, self.moving_mean_initializer, trainable=False)
        self.add_weight("moving_variance", c, self.moving_variance_initializer, trainable=False)

    def forward(self, x, training=False):
        self._training = bool(training) and self.trainable
        c = x.shape[-1]
        y, self._mean, self._inv_std = norm_ops.batch_norm_forward(
            x, self.params.get("gamma"), self.params.get("beta"), self.params["moving_mean"],
            self.params["moving_variance"], training=self._training, momentum=self.momentum,
            epsilon=self.epsilon, out=self.buffer("y", x.shape),
            mean_out=self.buffer("mean", (c,)), inv_std_out=self.buffer("inv_std", (c,)))
        self._x = x
        return y

    def backward(self, dy):
        dx = norm_ops.batch_norm_backward(
            dy, self._x, self.params.get("gamma"), self._mean, self._inv_std,
            training=self._training, out=self.buffer("dx", dy.shape) if self.need_input_grad
            else None, dgamma=self.grads.get("gamma") if self.trainable else None,
            dbeta=self.grads.get("beta") if self.trainable else None,
            need_input_grad=self.need_input_grad)
        self.add_regularization_grads()
        return dx

    def folded_scale_shift(self):
        """(s, t) per channel with inference-mode y = x * s + t (float64 arrays)."""
        s = 1.0 / np.sqrt(self.params["moving_variance"].astype(np.float64) + self.epsilon)
        if self.scale:
            s = s * self.params["gamma"]
        t = -self.params["moving_mean"] * s
        if self.center:
            t = t + self.params["beta"]
        return s, t

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon,
                   center=self.center, scale=self.scale,
                   beta_regularizer=regularizers.serialize(self.beta_regularizer),
                   gamma_regularizer=regularizers.serialize(self.gamma_regularizer))
        return cfg


def fold_batchnorm(kernel, bias, bn):
    """The (kernel, bias) of a Conv2D / Dense followed by the inference-mode BatchNormalization
    ``bn``, folded into one layer: ``bn(conv(x, kernel) + bias) == conv(x, k') + b'`` with
    k' = kernel * s and b' = (bias - moving_mean) * s + beta, s = gamma / sqrt(var + eps) per
    output channel (the kernel's last axis).  ``bias`` may be None.  Returns new arrays of the
    kernel's dtype; the inputs are not modified.

    >>> k, b = fold_batchnorm(conv.params["kernel"], conv.params.get("bias"), bn)
    """
    if not isinstance(bn, BatchNormalization):
        raise TypeError(f"bn must be a BatchNormalization layer, got {type(bn).__name__}")
    if not bn.built:
        raise ValueError(f"{bn.name} is not built yet")
    return norm_ops.fold_batch_norm(kernel, bias, bn.params.get("gamma"), bn.params.get("beta"),
                                    bn.params["moving_mean"], bn.params["moving_variance"],
                                    bn.epsilon)


def fold_into_conv(layer, bn):
    """Fold the inference-mode ``bn`` into ``layer`` (a Conv2D or Dense with no activation,
    i.e. whose output feeds ``bn`` directly): overwrites its kernel in place and its bias (which
    must exist: build the layer with use_bias=True) — after this, ``layer`` alone computes
    ``bn(layer(x))`` at inference.  For exporting / inference only."""
    if getattr(layer, "activation", None) is not None:
        raise ValueError(f"{layer.name}: cannot fold a batch norm through its activation "
                         f"{layer.activation!r}")
    if "kernel" not in layer.params or "bias" not in layer.params:
        raise ValueError(f"{layer.name}: needs a kernel and a bias (use_bias=True) to fold into")
    k, b = fold_batchnorm(layer.params["kernel"], layer.params["bias"], bn)
    layer.params["kernel"][...] = k
    layer.params["bias"][...] = b
    return layer
