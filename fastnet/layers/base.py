"""The Layer base class: weights, configuration and reusable buffers; the math is in ops."""
import re

import numpy as np

from fastnet import initializers, regularizers
from fastnet.ops._checks import as_real_array
from fastnet.ops._workspace import check_nbytes, nbytes_of

_name_counts = {}


def _auto_name(cls_name):
    # Keras' to_snake_case: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d
    base = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", cls_name)
    base = re.sub("([a-z])([A-Z])", r"\1_\2", base).lower()
    n = _name_counts.get(base, 0)
    _name_counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def _is_shape_list(shape):
    """True for a list of shapes (several inputs or outputs), False for one shape."""
    return isinstance(shape, list) or (isinstance(shape, tuple) and len(shape) > 0 and all(
        isinstance(s, (tuple, list)) for s in shape))


def _has_symbolic(x):
    from fastnet.layers.node import KerasTensor
    if isinstance(x, KerasTensor):
        return True
    return isinstance(x, (list, tuple)) and any(isinstance(t, KerasTensor) for t in x)


def _as_shape(shape, name, allow_none=False):
    """``shape`` as a tuple of positive ints (``allow_none``: None marks a size known only when
    data arrive, e.g. ``Input(shape=(None, 16))``)."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of integers, got {shape!r}") from None
    for s in shape:
        if s is None and allow_none:
            continue
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"{name} must hold positive integers{' or None' * allow_none}, "
                             f"got {shape!r}")
    return tuple(None if s is None else int(s) for s in shape)


class Layer:
    """A layer holds its weights, its configuration and its output/gradient buffers.

    Subclasses implement ``build_weights(input_shape)``, ``compute_output_shape(input_shape)``,
    ``forward(x, training)`` and ``backward(dy)``; shapes exclude the batch axis.
    ``forward`` returns an array owned by the layer (reused on the next call of the same batch
    size); ``backward`` writes the gradients of exactly the ``trainable_weight_names`` into
    ``self.grads`` (data gradient, then ``add_regularization_grads``) and returns dL/dx (or
    None when the model said the input gradient is not needed).  ``backward`` must treat ``dy``
    as read-only: the model may pass the same array to several layers.

    Several inputs: a layer with the class attribute ``multi_input = True`` gets a list of
    shapes in ``build`` / ``compute_output_shape``, a list of arrays in ``forward(xs,
    training)``, and returns a list of gradients from ``backward`` (entries may be None when
    ``need_input_grad`` is False).  Several outputs: when ``compute_output_shape`` returns a
    list of shapes, ``forward`` returns a list of arrays and ``backward`` receives a list of
    gradients, one per output; an output nothing depends on gets a zero array (never None).

    Calling a layer on a ``KerasTensor`` (or a list of them) records a node of the functional
    API and returns KerasTensor(s); on NumPy arrays it computes at once.  A layer called on
    several tensors (a shared layer) keeps one set of per-call state per call: everything
    ``forward`` stores on ``self`` (and the ``buffer`` arrays) belongs to one call, so state
    meant to persist across calls (counters, caches of weights) must exist once the layer is
    built.
    """

    multi_input = False
    # attributes the model sets before each call: never part of the per-call state
    _SHARED_STATE = frozenset(("need_input_grad", "skip_activation_grad", "trainable", "grads",
                               "_regularizers", "_call_slot", "_call_states", "_state_keys"))

    def __init__(self, name=None, trainable=True, dtype=None, input_shape=None, input_dim=None,
                 **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) "
                            f"{sorted(kwargs)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self.name = name or _auto_name(type(self).__name__)
        self.trainable = bool(trainable)
        dt = np.dtype(dtype or "float32")
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.dtype = dt
        if input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        self.batch_input_shape = _as_shape(input_shape, "input_shape", allow_none=True) \
            if input_shape is not None else None
        self.built = False
        self.input_shape = self.output_shape = None
        self.params = {}   # name -> array, Keras order (a view into the model's flat buffer)
        self.grads = {}    # name -> array, same shapes; trainable weights only
        self.need_input_grad = True
        self._buffers = {}
        self._non_trainable = set()   # weights never given a gradient (BatchNorm moving stats)
        self._regularizers = {}       # weight name -> Regularizer
        self._inbound_nodes = []      # functional API: one Node per symbolic call
        self._call_slot = None        # which call's state is loaded (shared layers)
        self._call_states = {}

    # -- weights ---------------------------------------------------------------------------
    def add_weight(self, name, shape, initializer, trainable=True, regularizer=None):
        """Create a weight of ``shape`` initialized by ``initializer`` (name or callable).

        ``trainable=False`` makes a state variable the optimizer never touches (BatchNorm's
        moving statistics): it gets no entry in ``self.grads``, the layer updates it itself in
        ``forward``.  ``regularizer`` (a ``fastnet.regularizers`` identifier) adds a penalty on
        the weight to ``regularization_loss()`` and its gradient to ``grads`` in ``backward``.
        """
        shape = tuple(shape)
        # the weight, its gradient and the initializer's float64 draw, refused before any exists
        check_nbytes(nbytes_of(shape, self.dtype) * (2 if trainable else 1)
                     + nbytes_of(shape, np.float64),
                     f"{self.name}: weight {name} of shape {shape}")
        value = np.ascontiguousarray(initializers.get(initializer)(shape, self.dtype),
                                     dtype=self.dtype)
        self.params[name] = value
        if trainable:
            self.grads[name] = np.zeros_like(value)
            self._non_trainable.discard(name)
        else:
            self._non_trainable.add(name)
        if regularizer is not None:
            self._regularizers[name] = regularizers.get(regularizer)
        return value

    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape`` (no batch axis; a list of shapes
        for a ``multi_input`` layer)."""
        input_shape = self._check_input_shapes(input_shape)
        out = self.compute_output_shape(input_shape)
        self.output_shape = [_as_shape(s, "output shape") for s in out] if _is_shape_list(out) \
            else _as_shape(out, "output shape")
        self.input_shape = input_shape
        self.build_weights(input_shape)
        self.built = True

    def _check_input_shapes(self, input_shape):
        if not self.multi_input:
            return _as_shape(input_shape, "input_shape")
        if not _is_shape_list(input_shape):
            raise TypeError(f"{self.name}: {type(self).__name__} takes a list of inputs; got "
                            f"the single shape {input_shape!r}")
        return [_as_shape(s, f"input_shape[{i}]") for i, s in enumerate(input_shape)]

    def _build_once(self, input_shape):
        """Build for ``input_shape`` (or check it against the built one) and remember which
        attributes exist after building: the rest is per-call state (see ``_enter_call``)."""
        shape = self._check_input_shapes(input_shape)
        if not self.built:
            self.build(shape)
            self._state_keys = frozenset(self.__dict__) - {"_buffers"}
        elif shape != self.input_shape:
            raise ValueError(f"layer {self.name} was built for inputs {self.input_shape} but "
                             f"receives {shape}")
        elif "_state_keys" not in self.__dict__:   # built directly with build()
            self._state_keys = frozenset(self.__dict__) - {"_buffers"}

    def _enter_call(self, slot):
        """Load the per-call state (buffers and whatever ``forward`` stored on ``self``) of
        call ``slot`` of a shared layer, saving the state of the call loaded before.  Costs a
        few dict operations; only the models' shared layers use it."""
        if slot == self._call_slot:
            return
        d = self.__dict__
        keep = d.get("_state_keys")
        if keep is None:   # built outside _build_once: what exists now is the layer's own
            keep = self._state_keys = frozenset(d) - {"_buffers"}
        current = {k: d[k] for k in d if k not in keep and k not in self._SHARED_STATE}
        for k in current:
            del d[k]
        self._call_states[self._call_slot] = current
        d.update(self._call_states.pop(slot, None) or {"_buffers": {}})
        self._call_slot = slot

    def build_weights(self, input_shape):
        pass

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    @property
    def weights(self):
        """The weight arrays themselves, Keras order."""
        return list(self.params.values())

    @property
    def trainable_weight_names(self):
        """Names of the weights the optimizer updates, Keras order (none if not trainable).

        The model puts exactly these in the optimizer's region of the flat buffers; every other
        weight (``non_trainable_weight_names``) sits after it and gets no gradient."""
        if not self.trainable:
            return []
        return [n for n in self.params if n not in self._non_trainable]

    @property
    def non_trainable_weight_names(self):
        """Names of the weights the optimizer must not touch, Keras order."""
        trainable = set(self.trainable_weight_names)
        return [n for n in self.params if n not in trainable]

    @property
    def trainable_weights(self):
        return [self.params[n] for n in self.trainable_weight_names]

    @property
    def non_trainable_weights(self):
        return [self.params[n] for n in self.non_trainable_weight_names]

    # -- regularization --------------------------------------------------------------------
    def regularization_loss(self):
        """Sum of the penalties of this layer's regularized trainable weights (0.0 if none).

        As in Keras, only trainable weights count: a frozen layer adds nothing."""
        total = 0.0
        if self._regularizers:
            for name in self.trainable_weight_names:
                reg = self._regularizers.get(name)
                if reg is not None:
                    total += reg(self.params[name])
        return total

    def add_regularization_grads(self):
        """grads[name] += the penalty's gradient, for every regularized trainable weight.

        Called by ``backward`` after it wrote the data gradients."""
        if self._regularizers:
            for name in self.trainable_weight_names:
                reg = self._regularizers.get(name)
                if reg is not None:
                    reg.add_gradient(self.params[name], self.grads[name])

    def get_weights(self):
        """Copies of the weights, Keras order and layouts."""
        return [w.copy() for w in self.params.values()]

    def set_weights(self, weights):
        """Set every weight from a list of arrays in Keras order and layouts."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{self.name}.set_weights: weights must be a list of arrays, "
                            f"got {type(weights).__name__}")
        if len(weights) != len(self.params):
            raise ValueError(f"{self.name}.set_weights: expected {len(self.params)} arrays "
                             f"({', '.join(self.params) or 'none'}), got {len(weights)}")
        checked = []
        for (name, current), new in zip(self.params.items(), weights):
            new = np.asarray(new)
            if new.dtype.kind not in "fiub":
                raise TypeError(f"{self.name}.set_weights: {name} must be numeric, got {new.dtype}")
            if new.shape != current.shape:
                raise ValueError(f"{self.name}.set_weights: {name} must have shape "
                                 f"{current.shape}, got {new.shape}")
            checked.append(new)
        for current, new in zip(self.params.values(), checked):
            current[...] = new  # in place: the flat parameter buffer stays the storage

    def count_params(self):
        return int(sum(w.size for w in self.params.values()))

    # -- buffers ---------------------------------------------------------------------------
    def buffer(self, key, shape, dtype=None):
        """A layer-owned array of ``shape`` (and ``dtype``, default the layer's), reused across
        steps of the same batch size."""
        shape = tuple(shape)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            check_nbytes(nbytes_of(shape, dtype), f"{self.name}: buffer {key!r} of shape {shape}")
            buf = self._buffers[key] = np.empty(shape, dtype=dtype)
        return buf

    def release_buffers(self):
        self._buffers = {}

    # -- computation -----------------------------------------------------------------------
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x, training=False):
        """On KerasTensor(s): record a functional-API node and return KerasTensor(s).  On NumPy
        batches: build on first use, compute, and return new array(s)."""
        if _has_symbolic(x):
            return self._call_symbolic(x)
        if self.multi_input:
            if not isinstance(x, (list, tuple)) or not x:
                raise TypeError(f"{self.name}: {type(self).__name__} takes a list of inputs, "
                                f"got {type(x).__name__}")
            xs = [self._as_batch(v, f"input {i}") for i, v in enumerate(x)]
            if any(v.ndim < 1 for v in xs) or len({v.shape[0] for v in xs}) != 1:
                raise ValueError(f"{self.name}: every input needs the same batch axis, got "
                                 f"shapes {[v.shape for v in xs]}")
            self._build_once([v.shape[1:] for v in xs])
            y = self.forward(xs, training=training)
        else:
            x = self._as_batch(x, "input")
            if x.ndim < 1:
                raise ValueError(f"{self.name}: input must have a batch axis, got shape "
                                 f"{x.shape}")
            if self.built and x.shape[1:] != self.input_shape:
                raise ValueError(f"{self.name}: expected input shape (batch, "
                                 f"{', '.join(map(str, self.input_shape))}), got {x.shape}")
            self._build_once(x.shape[1:])
            y = self.forward(x, training=training)
        return [v.copy() for v in y] if isinstance(y, list) else y.copy()

    def _as_batch(self, x, label):
        """``x`` as a C-contiguous array of the layer's dtype; like the models, only real
        numbers (float, int, bool) are cast: complex, object and string arrays are refused
        rather than silently truncated or parsed."""
        return np.ascontiguousarray(as_real_array(x, f"{self.name}: {label}"), dtype=self.dtype)

    def _call_symbolic(self, x):
        from fastnet.layers.node import KerasTensor, Node
        tensors = list(x) if isinstance(x, (list, tuple)) else [x]
        for t in tensors:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"{self.name}: cannot mix symbolic tensors (from Input) and "
                                f"{type(t).__name__} in one call")
        if self.multi_input:
            if not isinstance(x, (list, tuple)):
                raise TypeError(f"{self.name}: {type(self).__name__} takes a list of inputs, "
                                f"e.g. {type(self).__name__}()([a, b])")
            shapes = [t.shape[1:] for t in tensors]
        else:
            if len(tensors) != 1:
                raise TypeError(f"{self.name}: {type(self).__name__} takes one input, got a "
                                f"list of {len(tensors)}")
            shapes = tensors[0].shape[1:]
        if None in (shapes if not self.multi_input else [d for s in shapes for d in s]):
            from fastnet.layers.node import call_with_none_dims   # Input(shape=(None, ...))
            return call_with_none_dims(self, tensors, shapes)
        self._build_once(shapes)
        node = Node(self, tensors, self.output_shape, _is_shape_list(self.output_shape))
        return list(node.outputs) if node.multi_output else node.outputs[0]

    @classmethod
    def from_config(cls, config):
        """A new layer from ``get_config()``'s dict (weights are not part of it)."""
        return cls(**config)

    def get_config(self):
        cfg = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype.name}
        if self.batch_input_shape is not None:
            cfg["input_shape"] = self.batch_input_shape
        return cfg

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


class ActivationMixin:
    """Shared by layers with an ``activation=`` argument: apply it and its gradient.

    ReLU is fused into the GEMM/conv epilogue by the layers themselves; the rest go through
    the activation ops.  ``skip_activation_grad`` is set by the model when the loss already
    returns the gradient with respect to the pre-activation (softmax + cross-entropy).
    ``activation_alpha`` is elu's alpha / leaky_relu's slope (None: the op's default).
    """

    skip_activation_grad = False
    activation_alpha = None

    def apply_activation(self, z, key="y"):
        """y = activation(z) into the layer buffer ``key`` (z itself for the identity)."""
        from fastnet.ops.activations import activation_forward
        if self.activation is None:
            return z
        return activation_forward(self.activation, z, out=self.buffer(key, z.shape),
                                  alpha=self.activation_alpha)

    def activation_grad(self, dy, y, x=None):
        """dL/dz from dL/dy, the forward output y and (for gelu, swish, softplus) input x."""
        from fastnet.ops.activations import activation_backward
        if self.activation is None or self.skip_activation_grad:
            return dy
        return activation_backward(self.activation, dy, y, x=x, out=self.buffer("dz", dy.shape),
                                   alpha=self.activation_alpha)
