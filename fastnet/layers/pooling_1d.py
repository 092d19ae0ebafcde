"""Global pooling over the steps of sequences: (batch, steps, channels) -> (batch, channels).

The steps axis is viewed as the height of a (batch, steps, 1, channels) image (a reshape, no
copy), so these run the compiled global-pooling kernels of ``fastnet.ops.spatial``; they take
any number of steps, e.g. after ``Input(shape=(None, 16))``.
"""
from fastnet.layers.pooling import _GlobalPooling2D
from fastnet.ops import spatial as spatial_ops


class _GlobalPooling1D(_GlobalPooling2D):
    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs (batch, steps, "
                             f"channels), got per-sample shape {input_shape}")
        return (1, input_shape[1]) if self.keepdims else (input_shape[1],)

    def _as_image(self, x):
        n, steps, c = x.shape
        self._x_shape = x.shape
        return x.reshape(n, steps, 1, c), self.buffer("y", (n, c))


class GlobalAveragePooling1D(_GlobalPooling1D):
    """Mean over the steps: (batch, steps, C) -> (batch, C) (keepdims: (batch, 1, C)).

    >>> GlobalAveragePooling1D()(layers.Conv1D(32, 3)(layers.Input(shape=(None, 16))))
    """

    def forward(self, x, training=False):
        x4, y = self._as_image(x)
        spatial_ops.global_avg_pool2d(x4, out=y)
        return y.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        n, steps, c = self._x_shape
        dx = spatial_ops.global_avg_pool2d_backward(
            dy.reshape(n, c), (n, steps, 1, c), out=self.buffer("dx", (n, steps, 1, c)))
        return dx.reshape(self._x_shape)


class GlobalMaxPooling1D(_GlobalPooling1D):
    """Max over the steps: (batch, steps, C) -> (batch, C) (keepdims: (batch, 1, C)).

    The gradient is shared evenly by the steps equal to the maximum (TensorFlow's rule)."""

    def forward(self, x, training=False):
        x4, y = self._as_image(x)
        spatial_ops.global_max_pool2d(x4, out=y)
        self._x4, self._y = x4, y
        return y.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        dx = spatial_ops.global_max_pool2d_backward(
            self._x4, self._y, dy.reshape(self._y.shape), out=self.buffer("dx", self._x4.shape))
        return dx.reshape(self._x_shape)
