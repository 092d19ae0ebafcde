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
        layer._inbound_nodes.append(self)

    @property
    def index(self):
        """Position of this node among its layer's calls."""
        return self.outputs[0]._keras_history[1]

    def __repr__(self):
        return f"<Node {self.layer.name}[{self.index}] inputs={[t.name for t in self.inputs]}>"
