"""Merge layers: combine several tensors into one (Add, Subtract, Multiply, Average, Maximum,
Minimum, Concatenate), for residual and skip connections in functional models.

Every forward and backward is a handful of whole-array NumPy ufunc calls writing into the
layer's reused buffers (compiled loops, no per-element Python).  The element-wise layers take
inputs of the same rank whose per-sample sizes are equal or 1 (broadcast, as Keras); the
gradient of a broadcast input is summed over the broadcast axes.
"""
import numbers

import numpy as np

from fastnet.layers.base import Layer


class _Merge(Layer):
    """Element-wise merge of ``len(inputs) >= min_inputs`` tensors (``max_inputs`` if set)."""

    multi_input = True
    min_inputs, max_inputs = 1, None

    def compute_output_shape(self, input_shape):
        n = len(input_shape)
        kind = type(self).__name__
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.min_inputs == self.max_inputs
                    else f"at least {self.min_inputs}")
            raise ValueError(f"{self.name}: {kind} takes {want} inputs, got {n}")
        ranks = {len(s) for s in input_shape}
        if len(ranks) != 1:
            raise ValueError(f"{self.name}: {kind} needs inputs of the same rank, got shapes "
                             f"{[(None,) + tuple(s) for s in input_shape]}")
        out = []
        for dims in zip(*input_shape):
            big = {d for d in dims if d != 1}
            if len(big) > 1:
                raise ValueError(f"{self.name}: {kind} got inputs of incompatible shapes "
                                 f"{[(None,) + tuple(s) for s in input_shape]}: each axis must "
                                 f"have the same size in every input (or 1, broadcast)")
            out.append(big.pop() if big else 1)
        return tuple(out)

    def build_weights(self, input_shape):
        out = self.output_shape
        # axes (batch axis included) over which each input was broadcast
        self._reduce_axes = [tuple(a + 1 for a, (d, o) in enumerate(zip(s, out)) if d != o)
                             for s in input_shape]

    def _to_input(self, i, g, n):
        """The gradient ``g`` (output shape) summed down to input ``i``'s shape."""
        axes = self._reduce_axes[i]
        if not axes:
            return g
        return np.sum(g, axis=axes, keepdims=True,
                      out=self.buffer(f"dx{i}", (n,) + self.input_shape[i]))

    def _fold(self, ufunc, xs):
        """ufunc(...ufunc(ufunc(x0, x1), x2)..., xk) into the output buffer (x0 itself for a
        single input)."""
        if len(xs) == 1:
            return xs[0]
        y = ufunc(xs[0], xs[1], out=self.buffer("y", (xs[0].shape[0],) + self.output_shape))
        for x in xs[2:]:
            ufunc(y, x, out=y)
        return y

    def backward(self, dy):
        if not self.need_input_grad:
            return [None] * len(self.input_shape)
        return self._backward(dy, dy.shape[0])


class Add(_Merge):
    """y = x0 + x1 + ...  (same shapes, or sizes of 1 broadcast).

    >>> y = Add()([x, shortcut])           # a residual connection
    """

    def forward(self, xs, training=False):
        return self._fold(np.add, xs)

    def _backward(self, dy, n):
        return [self._to_input(i, dy, n) for i in range(len(self.input_shape))]


class Subtract(_Merge):
    """y = x0 - x1 (exactly two inputs)."""

    min_inputs = max_inputs = 2

    def forward(self, xs, training=False):
        return self._fold(np.subtract, xs)

    def _backward(self, dy, n):
        neg = self._to_input(1, dy, n)
        neg = np.negative(neg, out=self.buffer("dx1", neg.shape))
        return [self._to_input(0, dy, n), neg]


class Multiply(_Merge):
    """y = x0 * x1 * ... element-wise."""

    def forward(self, xs, training=False):
        self._xs = list(xs)
        return self._fold(np.multiply, xs)

    def _backward(self, dy, n):
        xs, grads = self._xs, []
        if len(xs) == 1:
            return [dy]
        for i in range(len(xs)):
            t = self.buffer(f"t{i}", dy.shape)   # dy times every other input
            others = [x for j, x in enumerate(xs) if j != i]
            np.multiply(dy, others[0], out=t)
            for x in others[1:]:
                np.multiply(t, x, out=t)
            grads.append(self._to_input(i, t, n))
        return grads


class Average(_Merge):
    """y = (x0 + x1 + ...) / number of inputs."""

    def forward(self, xs, training=False):
        if len(xs) == 1:
            return xs[0]
        y = self._fold(np.add, xs)
        return np.multiply(y, y.dtype.type(1.0 / len(xs)), out=y)

    def _backward(self, dy, n):
        k = len(self.input_shape)
        if k == 1:
            return [dy]
        scaled = np.multiply(dy, dy.dtype.type(1.0 / k), out=self.buffer("scaled", dy.shape))
        return [self._to_input(i, scaled, n) for i in range(k)]


class _Extremum(_Merge):
    """Maximum / Minimum: the gradient goes to the first input holding the extreme value
    (ties go to the earliest input, as TensorFlow's pairwise rule applied left to right)."""

    _ufunc = None

    def forward(self, xs, training=False):
        self._xs = list(xs)
        self._y = self._fold(self._ufunc, xs)
        return self._y

    def _backward(self, dy, n):
        xs = self._xs
        if len(xs) == 1:
            return [dy]
        mask = self.buffer("mask", dy.shape, np.bool_)
        rest = dy     # the gradient not yet given to an earlier input
        grads = []
        for i, x in enumerate(xs[:-1]):
            np.equal(x, self._y, out=mask)
            g = np.multiply(rest, mask, out=self.buffer(f"t{i}", dy.shape))
            if i + 1 < len(xs) - 1:
                rest = np.subtract(rest, g, out=self.buffer("rest", dy.shape))
            else:
                last = np.subtract(rest, g, out=self.buffer(f"t{i + 1}", dy.shape))
            grads.append(self._to_input(i, g, n))
        grads.append(self._to_input(len(xs) - 1, last, n))
        return grads


class Maximum(_Extremum):
    """y = element-wise maximum of the inputs."""

    _ufunc = staticmethod(np.maximum)


class Minimum(_Extremum):
    """y = element-wise minimum of the inputs."""

    _ufunc = staticmethod(np.minimum)


class Concatenate(Layer):
    """Joins the inputs along ``axis`` (default -1, the channels); every other axis must match.

    x0 (batch, ..., c0), x1 (batch, ..., c1) -> (batch, ..., c0 + c1) for axis=-1.  ``axis``
    counts the batch axis as Keras does (0 is the batch axis and is not allowed).

    >>> y = Concatenate()([branch_a, branch_b])
    """

    multi_input = True

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"Concatenate: axis must be an integer, got {axis!r}")
        self.axis = int(axis)

    def _sample_axis(self, rank):
        """The concatenation axis within a per-sample shape of ``rank`` dims."""
        ax = self.axis + rank + 1 if self.axis < 0 else self.axis
        if not 1 <= ax <= rank:
            raise ValueError(f"{self.name}: axis={self.axis} is out of range for inputs of rank "
                             f"{rank + 1} (the batch axis 0 cannot be concatenated)")
        return ax - 1

    def compute_output_shape(self, input_shape):
        ranks = {len(s) for s in input_shape}
        if len(ranks) != 1 or 0 in ranks:
            raise ValueError(f"{self.name}: Concatenate needs inputs of the same rank >= 2, got "
                             f"shapes {[(None,) + tuple(s) for s in input_shape]}")
        ax = self._sample_axis(ranks.pop())
        first = input_shape[0]
        for s in input_shape[1:]:
            if any(a != b for d, (a, b) in enumerate(zip(first, s)) if d != ax):
                raise ValueError(f"{self.name}: Concatenate(axis={self.axis}) needs inputs that "
                                 f"match on every other axis, got shapes "
                                 f"{[(None,) + tuple(s) for s in input_shape]}")
        out = list(first)
        out[ax] = sum(s[ax] for s in input_shape)
        return tuple(out)

    def build_weights(self, input_shape):
        ax = self._sample_axis(len(input_shape[0]))
        bounds = np.cumsum([0] + [s[ax] for s in input_shape])
        lead = (slice(None),) * (ax + 1)
        self._slices = [lead + (slice(int(a), int(b)),) for a, b in zip(bounds, bounds[1:])]

    def forward(self, xs, training=False):
        if len(xs) == 1:
            return xs[0]
        out = self.buffer("y", (xs[0].shape[0],) + self.output_shape)
        return np.concatenate(xs, axis=self._sample_axis(len(self.output_shape)) + 1, out=out)

    def backward(self, dy):
        k = len(self.input_shape)
        if not self.need_input_grad:
            return [None] * k
        if k == 1:
            return [dy]
        n = dy.shape[0]
        grads = []
        for i, sl in enumerate(self._slices):   # strided views: copied contiguous
            buf = self.buffer(f"dx{i}", (n,) + self.input_shape[i])
            np.copyto(buf, dy[sl])
            grads.append(buf)
        return grads

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg
