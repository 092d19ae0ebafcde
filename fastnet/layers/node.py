"""Symbolic tensors and the nodes that connect them: what the functional API records.

Calling a layer on a ``KerasTensor`` (or a list of them) runs no math: it builds the layer for
the tensors' shapes and records a ``Node`` (this layer, these input tensors, these output
tensors).  ``fastnet.models.Model(inputs, outputs)`` walks the nodes back from ``outputs`` to
find the graph it runs.
"""
import itertools

import numpy as np

_node_ids = itertools.count()


class KerasTensor:
    """A symbolic batch: ``shape`` (batch axis first, usually None) and ``dtype``.

    ``_keras_history`` is ``(layer, node_index, tensor_index)``, as in Keras: the layer that
    produces this tensor, which of that layer's calls (nodes), and which of that call's outputs.

    ``a + b``, ``a - b`` and ``a * b`` on two tensors of the same per-sample shape build the
    Add, Subtract and Multiply layers.
    """

    def __init__(self, shape, dtype, layer=None, node_index=0, tensor_index=0):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._keras_history = (layer, node_index, tensor_index)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def node(self):
        """The Node that produced this tensor."""
        layer, node_index, _ = self._keras_history
        return layer._inbound_nodes[node_index]

    @property
    def name(self):
        layer, node_index, tensor_index = self._keras_history
        return f"{layer.name}[{node_index}][{tensor_index}]"

    def _merge(self, other, cls_name):
        from fastnet.layers import merge
        if not isinstance(other, KerasTensor):
            raise TypeError(f"KerasTensor {cls_name}: both operands must be symbolic tensors, "
                            f"got {type(other).__name__}")
        return getattr(merge, cls_name)()([self, other])

    def __add__(self, other):
        return self._merge(other, "Add")

    def __sub__(self, other):
        return self._merge(other, "Subtract")

    def __mul__(self, other):
        return self._merge(other, "Multiply")

    def __repr__(self):
        return f"<KerasTensor shape={self.shape} dtype={self.dtype.name} name={self.name!r}>"


class Node:
    """One call of ``layer`` on ``inputs`` (KerasTensors) producing ``outputs`` (KerasTensors).

    ``id`` increases with creation, so sorting nodes by id is a topological order (a node can
    only be created after the tensors it reads exist)."""

    def __init__(self, layer, inputs, output_shapes, multi_output):
        self.id = next(_node_ids)
        self.layer = layer
        self.inputs = list(inputs)
        index = len(layer._inbound_nodes)
        shapes = output_shapes if multi_output else [output_shapes]
        self.outputs = [KerasTensor((None,) + tuple(s), layer.dtype, layer, index, i)
                        for i, s in enumerate(shapes)]
        self.multi_output = bool(multi_output)
        # the nested-model call (functional._NestedCall) this node was replayed for, if any
        self.owner = None
        layer._inbound_nodes.append(self)

    @property
    def index(self):
        """Position of this node among its layer's calls."""
        return self.outputs[0]._keras_history[1]

    def __repr__(self):
        return f"<Node {self.layer.name}[{self.index}] inputs={[t.name for t in self.inputs]}>"


# Sizes standing in for None while a layer is built on symbolic tensors: far apart and large
# enough for any kernel or pool, so an output size that depends on the None size differs
# between them (and becomes None), and a weight that depends on it is caught.
_PROBES = (97, 160)


def _fill(shape, size):
    return tuple(size if d is None else d for d in shape)


def _unify(a, b):
    """The symbolic shape(s) of two probe builds' outputs: None where they differ."""
    if isinstance(a, list):
        return [_unify(x, y) for x, y in zip(a, b)]
    return tuple(x if x == y else None for x, y in zip(a, b))


def call_with_none_dims(layer, tensors, shapes):
    """``layer`` called on symbolic tensors of which some sizes are None (``Input(shape=(None,
    16))``): build it as if those sizes were a probe size, check that its weights do not depend
    on them (a second build of a copy with another probe size), record the node with None
    where the output sizes depend on them.  The model runs copies of the layer built for each
    batch's actual sizes (``Functional``'s per-shape graphs)."""
    from fastnet.layers.base import _is_shape_list
    multi = layer.multi_input
    sym = [tuple(s) for s in shapes] if multi else tuple(shapes)
    if layer.built:
        if layer.input_shape != sym:
            raise ValueError(f"layer {layer.name} was built for inputs {layer.input_shape} but "
                             f"receives {sym}")
    else:
        probes = [[_fill(s, p) for s in sym] if multi else _fill(sym, p) for p in _PROBES]
        try:
            twin = type(layer).from_config(layer.get_config())
            twin._build_once(probes[1])
        except (TypeError, ValueError) as e:
            raise ValueError(f"layer {layer.name} cannot take inputs of shape "
                             f"{_shape_text(sym, multi)} with None sizes: {e}") from None
        layer._build_once(probes[0])
        for name, w in layer.params.items():
            if w.shape != twin.params[name].shape:
                src = [t._keras_history[0].name for t in tensors
                       if None in t.shape[1:]]
                axes = sorted({i + 1 for s in (sym if multi else [sym])
                               for i, d in enumerate(s) if d is None})
                raise ValueError(
                    f"layer {layer.name} ({type(layer).__name__}) needs a fixed size where its "
                    f"input {_shape_text(sym, multi)} has None (axis {', '.join(map(str, axes))}"
                    f", from layer {', '.join(src)}): its weight {name} would depend on it.  "
                    f"Give Input(shape=...) that size, or reduce that axis first (e.g. a "
                    f"GlobalAveragePooling layer instead of Flatten)")
        layer.input_shape = sym
        layer.output_shape = _unify(layer.output_shape, twin.output_shape)
    node = Node(layer, tensors, layer.output_shape, _is_shape_list(layer.output_shape))
    return list(node.outputs) if node.multi_output else node.outputs[0]


def _shape_text(sym, multi):
    return str([(None,) + s for s in sym]) if multi else str((None,) + sym)
