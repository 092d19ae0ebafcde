"""Merge layers: combine several tensors into one (Add, Subtract, Multiply, Average, Maximum,
Minimum, Concatenate, Dot), for residual and skip connections in functional models.

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


class Dot(Layer):
    """Batched dot product of two tensors along ``axes`` (Keras' ``Dot``, ``batch_dot``).

    ``axes`` is one axis for both inputs or a pair ``(axis of x0, axis of x1)``; axes count
    the batch axis (0, not allowed) and may be negative.  The contracted sizes must match.
    x0 (batch, *a, k, *b), x1 (batch, *c, k, *d) -> (batch, *a, *b, *c, *d); when nothing is
    left but the batch axis the output is (batch, 1).  ``normalize=True`` first divides each
    input by its L2 norm along its dot axis (``x / max(||x||, 1e-7)``, Keras 3), so the
    output is the cosine similarity.

    Both directions are one batched ``np.matmul`` over (batch, rows, k) x (batch, k, cols)
    views of the inputs (the dot axis moved last / first; a copy only when it is not already
    there).

    >>> Dot(axes=1)([a, b])            # a, b (batch, 16) -> (batch, 1)
    >>> Dot(axes=(2, 2))([q, k])       # (batch, n, d), (batch, m, d) -> (batch, n, m)
    """

    multi_input = True
    _EPSILON = 1e-7   # keras.config.epsilon(), the floor of the norm

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        pair = [axes] if isinstance(axes, numbers.Integral) else axes
        if isinstance(pair, (list, tuple)) and len(pair) in (1, 2) and all(
                isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in pair):
            pair = [int(a) for a in pair]
        else:
            raise TypeError(f"Dot: axes must be an integer or a pair of integers, got {axes!r}")
        self.axes = pair[0] if isinstance(axes, numbers.Integral) else tuple(pair)
        if not isinstance(normalize, (bool, np.bool_)):
            raise TypeError(f"Dot: normalize must be True or False, got {normalize!r}")
        self.normalize = bool(normalize)

    def _dot_axes(self, shapes):
        """The dot axis of each input within its per-sample shape (0-based, batch excluded)."""
        given = (self.axes, self.axes) if isinstance(self.axes, int) else self.axes
        if len(given) != 2:
            raise ValueError(f"{self.name}: Dot(axes={self.axes!r}) needs one axis per input")
        out = []
        for i, (a, s) in enumerate(zip(given, shapes)):
            rank = len(s) + 1
            ax = a % rank if a < 0 else a      # Keras: negative axes wrap around the full rank
            if not 1 <= ax < rank:
                raise ValueError(f"{self.name}: Dot axes={self.axes!r} is out of range for input "
                                 f"{i} of shape {(None,) + tuple(s)} (the batch axis 0 cannot "
                                 f"be contracted)")
            out.append(ax - 1)
        return out

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: Dot takes exactly 2 inputs, got {len(input_shape)}")
        s0, s1 = (tuple(s) for s in input_shape)
        if not s0 or not s1:
            raise ValueError(f"{self.name}: Dot needs inputs of rank >= 2, got shapes "
                             f"{[(None,) + s for s in (s0, s1)]}")
        a0, a1 = self._dot_axes([s0, s1])
        if s0[a0] is not None and s1[a1] is not None and s0[a0] != s1[a1]:
            raise ValueError(f"{self.name}: Dot(axes={self.axes!r}) contracts axis of size "
                             f"{s0[a0]} with one of size {s1[a1]} (shapes "
                             f"{[(None,) + s for s in (s0, s1)]}); they must be equal")
        out = s0[:a0] + s0[a0 + 1:] + s1[:a1] + s1[a1 + 1:]
        return out if out else (1,)

    def build_weights(self, input_shape):
        self._axes = self._dot_axes(input_shape)

    def _operands(self, x, i, n):
        """``x`` (or its normalized copy) as a (batch, rows, k) matrix for input 0 or a
        (batch, k, cols) matrix for input 1, and the normalization's norms (or None)."""
        ax = self._axes[i] + 1
        norm = None
        if self.normalize:
            sq = np.square(x, out=self.buffer(f"sq{i}", x.shape))
            norm = np.sum(sq, axis=ax, keepdims=True,
                          out=self.buffer(f"norm{i}", x.shape[:ax] + (1,) + x.shape[ax + 1:]))
            np.sqrt(norm, out=norm)
            np.maximum(norm, norm.dtype.type(self._EPSILON), out=norm)
            x = np.divide(x, norm, out=self.buffer(f"u{i}", x.shape))
        k = x.shape[ax]
        if i == 0:
            m = np.moveaxis(x, ax, -1).reshape(n, -1, k)
        else:
            m = np.moveaxis(x, ax, 1).reshape(n, k, -1)
        return m, x, norm

    def forward(self, xs, training=False):
        x0, x1 = xs
        n = x0.shape[0]
        self._m0, self._u0, self._norm0 = self._operands(x0, 0, n)
        self._m1, self._u1, self._norm1 = self._operands(x1, 1, n)
        y = self.buffer("y", (n,) + self.output_shape)
        np.matmul(self._m0, self._m1, out=y.reshape(n, self._m0.shape[1], self._m1.shape[2]))
        return y

    def _input_grad(self, i, g, n):
        """dL/dx_i from ``g``, the gradient of its matrix view; undoes the reshape, the axis
        move and (with ``normalize``) the division by the norm."""
        ax = self._axes[i] + 1
        shape = (n,) + tuple(self.input_shape[i])
        moved = list(shape)
        k = moved.pop(ax)
        if i == 0:
            g = np.moveaxis(g.reshape(moved + [k]), -1, ax)
        else:
            g = np.moveaxis(g.reshape(moved[:1] + [k] + moved[1:]), 1, ax)
        dx = self.buffer(f"dx{i}", shape)
        if not self.normalize:
            np.copyto(dx, g)
            return dx
        # u = x / n with n = max(||x||, eps): dx = (g - u * <g, u>) / n where ||x|| > eps
        u, norm = (self._u0, self._norm0) if i == 0 else (self._u1, self._norm1)
        gu = np.multiply(g, u, out=self.buffer(f"sq{i}", shape))
        proj = np.sum(gu, axis=ax, keepdims=True, out=self.buffer(f"proj{i}", norm.shape))
        np.multiply(proj, norm > norm.dtype.type(self._EPSILON), out=proj)
        np.multiply(u, proj, out=dx)
        np.subtract(g, dx, out=dx)
        return np.divide(dx, norm, out=dx)

    def backward(self, dy):
        if not self.need_input_grad:
            return [None, None]
        n = dy.shape[0]
        m0, m1 = self._m0, self._m1
        g = dy.reshape(n, m0.shape[1], m1.shape[2])
        g0 = np.matmul(g, np.swapaxes(m1, 1, 2), out=self.buffer("g0", m0.shape))
        g1 = np.matmul(np.swapaxes(m0, 1, 2), g, out=self.buffer("g1", m1.shape))
        return [self._input_grad(0, g0, n), self._input_grad(1, g1, n)]

    def get_config(self):
        cfg = super().get_config()
        cfg["axes"] = list(self.axes) if isinstance(self.axes, tuple) else self.axes
        cfg["normalize"] = self.normalize
        return cfg
