"""Functional models: any directed acyclic graph of layers, with several inputs and outputs and
shared layers (``Model(inputs, outputs)``); Sequential is the special case of a chain.

How a graph runs
----------------
Construction walks the recorded nodes back from the outputs, checks the graph (every tensor
reachable from the inputs, every input used, unique layer names) and compiles it into flat
step lists over integer tensor slots:

* training forward: the nodes in creation order (a topological order), each step
  ``layer.forward(slot values)``; a layer called more than once in the model (shared) first
  loads that call's own state (``Layer._enter_call``), so each call keeps its activations;
* inference forward: the same, except that a Conv2D/Dense (any layer with
  ``forward_folded``) followed only by a BatchNormalization (and a ReLU) runs as one folded
  kernel call;
* backward: the live nodes (those a loss depends on) in reverse order.  A tensor read by
  several nodes receives several gradients: they are summed into a buffer owned by the model
  (one ``np.add`` per extra consumer; a single consumer's gradient is passed on as is).  The
  second and later backward calls of a shared layer write their weight gradients into scratch
  arrays that are added to the layer's gradients (its regularization gradient is added once).

Buffers (gradient sums, zero gradients for unused outputs of multi-output layers) are keyed by
shape and reused every step; a step allocates nothing in steady state.

Nested models
-------------
A built model called on symbolic tensors (``out = encoder(inp)``, or a model listed in a
Sequential) replays its own nodes on them: its layers run as part of the outer graph (shared
layers and per-call state work as above, so one model can be called several times) and keep
their weight arrays, so both models train the same weights.  For ``layers``, the weights'
order, the summary and the configuration, the nested model is one entry (``_top_level``): it
exposes the layer protocol the model needs (``params`` / ``grads`` mappings named
``"layer/weight"``, ``trainable``, ``trainable_weight_names``, ...).  Setting ``trainable``
on a model sets it on each of its layers, as in Keras.

None sizes
----------
``Input(shape=(None, 16))``: layers are built on symbolic tensors with a probe size in place of
None (``fastnet.layers.node.call_with_none_dims``; a layer whose weights would depend on it is
refused there).  Running such a model picks, per input shape, a concrete graph of copies of the
layers built for that shape, whose weight and gradient dicts are this model's own
(``_graph_for``); the last ``_MAX_SHAPE_GRAPHS`` shapes keep their graphs (layer buffers and
compiled prediction plans), older ones are released.
"""
import threading
from collections import OrderedDict
from collections.abc import MutableMapping

import numpy as np

from fastnet.layers.base import Layer
from fastnet.layers.core import InputLayer
from fastnet.layers.node import KerasTensor
from fastnet.models.model import Model, _shape_text


_MAX_SHAPE_GRAPHS = 8   # input shapes whose graphs a model with None sizes keeps (LRU)
_SHAPE_LOCK = threading.RLock()   # guards the choice of a shape's graph (see _graph_for)


def _borrowed_weights(layer):
    """An ``add_weight`` for a copy of ``layer`` that returns ``layer``'s own arrays."""
    def add_weight(name, shape, initializer, trainable=True, regularizer=None):
        value = layer.params[name]
        if value.shape != tuple(shape):
            raise ValueError(f"layer {layer.name}: weight {name} would have shape "
                             f"{tuple(shape)} for these inputs, but has {value.shape}")
        return value
    return add_weight


def _tensor_list(value, what):
    """(list of KerasTensors, given as a single tensor?)"""
    if isinstance(value, KerasTensor):
        return [value], True
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)) and value and all(isinstance(t, KerasTensor)
                                                          for t in value):
        return list(value), False
    raise TypeError(f"Model: {what} must be a symbolic tensor from fastnet.layers.Input (or a "
                    f"layer called on one), or a non-empty list of them; got {value!r}")


class _NestedCall:
    """One call of a model on symbolic tensors while another model is being built: the nested
    model's nodes are replayed on ``inputs`` (each replayed node's ``owner`` is this record)
    and ``outputs`` are what the call returned."""

    def __init__(self, model, inputs):
        self.model, self.inputs, self.outputs = model, list(inputs), []


class _NestedArrays(MutableMapping):
    """A nested model's ``params`` or ``grads`` (``kind``) as one mapping ``"layer/weight"`` ->
    array over its layers' own dicts, Keras order: the outer model binds and reads them like a
    layer's, and setting an entry sets the inner layer's."""

    def __init__(self, model, kind):
        self._model, self._kind = model, kind

    def _locate(self, key):
        layer_name, _, name = str(key).partition("/")
        for layer in self._model.layers:
            if layer.name == layer_name and name in layer.params:
                return getattr(layer, self._kind), name
        raise KeyError(key)

    def __getitem__(self, key):
        arrays, name = self._locate(key)
        return arrays[name]

    def __setitem__(self, key, value):
        arrays, name = self._locate(key)
        arrays[name] = value

    def __delitem__(self, key):
        arrays, name = self._locate(key)
        del arrays[name]

    def __iter__(self):
        for layer in self._model.layers:
            for name in list(getattr(layer, self._kind)):
                yield f"{layer.name}/{name}"

    def __len__(self):
        return sum(len(getattr(layer, self._kind)) for layer in self._model.layers)


def _layer_or_model_class(name):
    """The class a layer entry of a configuration names: a fastnet layer or a nested model."""
    from fastnet import layers as layers_mod
    from fastnet import models as models_mod
    if name in ("Functional", "Sequential"):
        return getattr(models_mod, name)
    return getattr(layers_mod, name, None)


def _compute_layers(entry):
    """The layers that run for a top-level entry: a nested model's own, or the layer."""
    if isinstance(entry, Functional):
        return [l for l in entry._graph_layers if not isinstance(l, InputLayer)]
    return [entry]


def _top_level(inputs, nodes, layer_order=None):
    """(entries, calls): the model's top-level layers and nested models (inputs first, then by
    first call; ``layer_order`` names: from_config's saved order, which the weights follow)
    and its calls ``(entry, input tensors, output tensors)`` in graph order."""
    top = [t._keras_history[0] for t in inputs]
    listed = {id(l) for l in top}
    calls, seen = [], set()
    for node in nodes:
        nested = node.owner
        if nested is None:
            entry, call = node.layer, (node.layer, node.inputs, node.outputs)
        elif id(nested) in seen:
            continue
        else:
            seen.add(id(nested))
            entry, call = nested.model, (nested.model, nested.inputs, nested.outputs)
        calls.append(call)
        if id(entry) not in listed:
            listed.add(id(entry))
            top.append(entry)
    if layer_order is not None:
        pos = {name: i for i, name in enumerate(layer_order)}
        top.sort(key=lambda l: pos.get(l.name, len(pos)))
    names, dup = set(), set()
    for entry in top:
        (dup if entry.name in names else names).add(entry.name)
    if dup:
        raise ValueError(f"Model: layer names must be unique, but {sorted(dup)} are used by "
                         f"more than one layer; pass name= to the layers")
    owner = {}   # each weight is bound once: a layer belongs to one entry
    for entry in top:
        for layer in _compute_layers(entry):
            other = owner.setdefault(id(layer), entry)
            if other is not entry:
                raise ValueError(f"Model: layer {layer.name} is used both by {other.name} and "
                                 f"by {entry.name}; a layer may belong to one nested model "
                                 f"(or to the outer model) only")
    return top, calls


def entry_shape_text(entry):
    """The summary's output shape of a layer or of a nested model."""
    if isinstance(entry, Model):
        return str(entry.output_shape) if entry.built else "?"
    return _shape_text(entry)


class Functional(Model):
    """A model over a graph of layers; see ``Model`` for the API and this module's docstring
    for how it runs.

    >>> a, b = layers.Input(shape=(16,)), layers.Input(shape=(16,))
    >>> shared = layers.Dense(8, activation="relu")
    >>> merged = layers.Concatenate()([shared(a), shared(b)])
    >>> model = Model([a, b], [layers.Dense(1, activation="sigmoid", name="same")(merged),
    ...                        layers.Dense(3, activation="softmax", name="kind")(merged)])
    """

    def __init__(self, inputs, outputs, name=None):
        super().__init__(name=name or "functional")
        self._init_graph(inputs, outputs)
        self._bind_flat_buffers()
        self.built = True

    def build(self, input_shape=None):
        """A functional model is built when it is made; ``input_shape`` (if given) must match."""
        if input_shape is None:
            return
        given = input_shape if isinstance(input_shape, list) else [input_shape]
        if [tuple(s)[1:] for s in given] != self._input_shapes:
            raise ValueError(f"build: model {self.name} takes inputs {self.input_shape}, "
                             f"got {input_shape}")

    # -- the graph -----------------------------------------------------------------------------
    def _init_graph(self, inputs, outputs, layer_order=None):
        inputs, self._single_input = _tensor_list(inputs, "inputs")
        outputs, self._single_output = _tensor_list(outputs, "outputs")
        for t in inputs:
            if not isinstance(t._keras_history[0], InputLayer):
                raise ValueError(f"Model inputs must come from fastnet.layers.Input; {t.name} "
                                 f"is the output of layer {t._keras_history[0].name}")
        if len({id(t) for t in inputs}) != len(inputs):
            raise ValueError("Model: the same input tensor is listed more than once in inputs")
        input_ids = {id(t) for t in inputs}

        # walk back from the outputs: every node the outputs depend on
        nodes, seen, stack = [], set(), [(t, None) for t in outputs]
        reached = set()
        while stack:
            t, consumer = stack.pop()
            node = t.node
            if isinstance(node.layer, InputLayer):
                if id(t) not in input_ids:
                    raise ValueError(
                        f"Graph disconnected: layer {consumer.name if consumer else '?'} needs "
                        f"tensor {t.name} from Input layer {node.layer.name!r}, which is not "
                        f"among the model's inputs {[i.name for i in inputs]}")
                reached.add(id(t))
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            nodes.append(node)
            stack.extend((x, node.layer) for x in node.inputs)
        unused = [t.name for t in inputs if id(t) not in reached]
        if unused:
            raise ValueError(f"Model: input(s) {unused} are not connected to any output; "
                             f"every input must be used")
        nodes.sort(key=lambda nd: nd.id)

        # the layers the steps run: inputs first (in ``inputs`` order), then by first call
        layers = [t._keras_history[0] for t in inputs]
        listed = {id(l) for l in layers}
        for node in nodes:
            if id(node.layer) not in listed:
                listed.add(id(node.layer))
                layers.append(node.layer)
        self._graph_layers = layers
        # what ``layers``, the weights, the summary and the config show: a nested model is one
        # entry there (its layers run as part of this graph)
        self._top_layers, self._calls = _top_level(inputs, nodes, layer_order)
        self._nodes = nodes
        self._inputs, self._outputs = inputs, outputs

        # tensor slots: inputs, then every node output
        slot = {id(t): i for i, t in enumerate(inputs)}
        for node in nodes:
            for t in node.outputs:
                slot[id(t)] = len(slot)
        self._n_slots = len(slot)
        self._input_idx = [slot[id(t)] for t in inputs]
        self._output_idx = [slot[id(t)] for t in outputs]
        calls = {}
        for node in nodes:
            calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
        self._node_info = []
        consumers = [[] for _ in range(self._n_slots)]
        for k, node in enumerate(nodes):
            ins = tuple(slot[id(t)] for t in node.inputs)
            outs = tuple(slot[id(t)] for t in node.outputs)
            for i in ins:
                consumers[i].append(k)
            need_in = any(not isinstance(t._keras_history[0], InputLayer) for t in node.inputs)
            shared = node.id if calls[id(node.layer)] > 1 else None
            self._node_info.append((node.layer, shared, ins, outs, node.layer.multi_input,
                                    node.multi_output, need_in))
        self._consumers = consumers
        self._train_steps = [info + (None,) for info in self._node_info]
        self._infer_steps = self._plan_inference()

        self._input_names = [t._keras_history[0].name for t in inputs]
        out_names, counts = [], {}
        for t in outputs:
            base = t._keras_history[0].name
            counts[base] = counts.get(base, 0) + 1
            out_names.append(base if counts[base] == 1 else f"{base}_{counts[base] - 1}")
        self._output_names = out_names
        self._set_io_shapes([t.shape[1:] for t in inputs], [t.shape[1:] for t in outputs])
        self._slot_shapes = [None] * self._n_slots
        for t in inputs:
            self._slot_shapes[slot[id(t)]] = t.shape[1:]
        for node in nodes:
            for t in node.outputs:
                self._slot_shapes[slot[id(t)]] = t.shape[1:]
        self._values = [None] * self._n_slots
        self._pending = [[] for _ in range(self._n_slots)]
        self._sum_buffers, self._zero_buffers = {}, {}
        self._fusable = [False] * len(outputs)
        self._bsteps, self._dead_layers = [], []
        # None sizes in the inputs: the graph runs as per-shape copies (see _graph_for)
        self._dynamic = any(None in s for s in self._input_shapes)
        self._symbolic_outputs = list(self._output_shapes)
        self._shape_graphs = OrderedDict()
        self._running = self
        self._generation = 0

    def _plan_inference(self):
        """Inference steps: ``(..., folded)`` where ``folded`` is None (run the layer) or
        ``(bn, activation)`` (run ``layer.forward_folded`` for the layer, the BatchNormalization
        reading only its output, and a following ReLU, and write the last one's output)."""
        from fastnet.layers.activation_layers import ReLU
        from fastnet.layers.core import Activation
        from fastnet.layers.normalization import BatchNormalization
        outputs = set(self._output_idx)
        nodes, info = self._nodes, self._node_info

        def sole_consumer(k):
            """The node alone reading node k's single output (not a model output), or None."""
            outs = info[k][3]
            if len(outs) != 1 or outs[0] in outputs or len(self._consumers[outs[0]]) != 1:
                return None
            c = self._consumers[outs[0]][0]
            return c if len(info[c][2]) == 1 else None

        steps, absorbed = [], set()
        for k, node in enumerate(nodes):
            if k in absorbed:
                continue
            layer = node.layer
            b = sole_consumer(k) if callable(getattr(layer, "forward_folded", None)) and \
                getattr(layer, "activation", "x") is None else None
            bn = nodes[b].layer if b is not None else None
            if isinstance(bn, BatchNormalization) and bn.axis in (-1, len(bn.input_shape)):
                last, act = b, None
                c = sole_consumer(b)
                if c is not None:
                    nxt = nodes[c].layer
                    if (type(nxt) is Activation or type(nxt) is ReLU) and \
                            nxt.activation == "relu":
                        last, act = c, "relu"
                absorbed.update({b, last})
                layer_, shared, ins, _, multi_in, _, need_in = info[k]
                steps.append((layer_, shared, ins, info[last][3], multi_in, False, need_in,
                              (bn, act)))
            else:
                steps.append(info[k] + (None,))
        return steps

    @property
    def _inference_plan(self):
        """(layer, bn, activation) per inference step (bn None: the layer runs as is)."""
        return [(s[0], s[7][0], s[7][1]) if s[7] is not None else (s[0], None, None)
                for s in self._infer_steps]

    @property
    def layers(self):
        return list(self._top_layers)

    @property
    def inputs(self):
        return list(self._inputs)

    @property
    def outputs(self):
        return list(self._outputs)

    @property
    def input(self):
        return self._inputs[0] if len(self._inputs) == 1 else list(self._inputs)

    @property
    def output(self):
        return self._outputs[0] if len(self._outputs) == 1 else list(self._outputs)

    # -- used as a layer of another model ------------------------------------------------------
    def __call__(self, x, training=False):
        """On symbolic tensors: nest this model in the model being built (its layers are called
        on ``x`` and keep their weights: both models share them); returns the output
        tensor(s).  On arrays: the eager forward pass (``Model.__call__``)."""
        from fastnet.layers.base import _has_symbolic
        if _has_symbolic(x):
            return self._call_nested(x)
        return Model.__call__(self, x, training=training)

    def _call_nested(self, x):
        tensors, _ = _tensor_list(x, f"the input of model {self.name}")
        if not self.built and len(tensors) == 1:   # a Sequential without an input shape yet
            self.build((None,) + tuple(tensors[0].shape[1:]))
        if len(tensors) != len(self._inputs):
            raise ValueError(f"model {self.name} takes {len(self._inputs)} input(s), got "
                             f"{len(tensors)}")
        for i, (t, own) in enumerate(zip(tensors, self._inputs)):
            if tuple(t.shape[1:]) != tuple(own.shape[1:]):
                raise ValueError(f"model {self.name}: input {i} must have shape "
                                 f"{(None,) + tuple(own.shape[1:])}, got {t.shape}")
        call = _NestedCall(self, tensors)
        mapping = {id(own): t for own, t in zip(self._inputs, tensors)}
        for node in self._nodes:
            args = [mapping[id(t)] for t in node.inputs]
            out = node.layer(args if node.layer.multi_input else args[0])
            outs = out if isinstance(out, list) else [out]
            outs[0].node.owner = call
            mapping.update(zip(map(id, node.outputs), outs))
        call.outputs = [mapping[id(t)] for t in self._outputs]
        return call.outputs[0] if self._single_output else list(call.outputs)

    @property
    def trainable(self):
        """False freezes every layer of the model (also where it is nested), as in Keras."""
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    @property
    def params(self):
        """Every weight as ``{"layer/weight": array}``, Keras order (the layer protocol)."""
        return _NestedArrays(self, "params")

    @property
    def grads(self):
        return _NestedArrays(self, "grads")

    @property
    def trainable_weight_names(self):
        return [f"{l.name}/{n}" for l in self.layers for n in l.trainable_weight_names]

    @property
    def non_trainable_weight_names(self):
        return [f"{l.name}/{n}" for l in self.layers for n in l.non_trainable_weight_names]

    @property
    def _regularizers(self):
        return {f"{l.name}/{n}": r for l in self.layers
                for n, r in (getattr(l, "_regularizers", None) or {}).items()}

    def regularization_loss(self):
        return float(sum(l.regularization_loss() for l in self.layers))

    @property
    def batch_input_shape(self):
        """The per-sample input shape (one input), so Sequential([model, ...]) builds."""
        shapes = getattr(self, "_input_shapes", None)
        return shapes[0] if self.built and len(shapes) == 1 else None

    @property
    def multi_input(self):
        return bool(self.built and len(self._input_shapes) > 1)

    def release_buffers(self):
        for layer in getattr(self, "_graph_layers", None) or self.layers:
            layer.release_buffers()
        graphs = getattr(self, "_shape_graphs", None) or {}
        while graphs:
            self._release_graph(graphs.popitem()[1])

    # -- loss-dependent plan ---------------------------------------------------------------------
    def _plan_losses(self, fusable):
        self._generation = getattr(self, "_generation", 0) + 1
        self._fusable = list(fusable)
        self._plan_backward()

    def _on_rebind(self):
        if getattr(self, "_nodes", None) is not None:
            self._generation += 1
            self._plan_backward()

    def _plan_backward(self):
        """Backward steps over the nodes some loss depends on, with the gradient bookkeeping
        (which calls accumulate, after which call each layer's gradients are final)."""
        from fastnet.layers.base import ActivationMixin
        info, n_out = self._node_info, len(self._output_idx)
        losses = getattr(self, "_losses", None) or [True] * n_out
        live_slots = {i for i, l in zip(self._output_idx, losses) if l is not None}
        # fused softmax + cross-entropy: the output's node is a single-output softmax layer and
        # the loss is the only thing reading that tensor
        fused = [False] * n_out
        skip_nodes = set()
        for o, i in enumerate(self._output_idx):
            if not (self._fusable[o] and losses[o] is not None):
                continue
            k = next((k for k, s in enumerate(info) if i in s[3]), None)
            if k is None or info[k][5] or self._consumers[i] or self._output_idx.count(i) != 1:
                continue
            layer = info[k][0]
            if isinstance(layer, ActivationMixin) and layer.activation == "softmax":
                fused[o] = True
                skip_nodes.add(k)
        live = [False] * len(info)
        for k in range(len(info) - 1, -1, -1):
            if any(i in live_slots for i in info[k][3]):
                live[k] = True
                live_slots.update(info[k][2])
        pooled = self._fuse_pool_backward(live)
        steps, done = [], set()
        for k in range(len(info) - 1, -1, -1):
            if not live[k]:
                continue
            layer, shared, ins, outs, multi_in, multi_out, need_in = info[k]
            first = id(layer) not in done
            done.add(id(layer))
            scratch = None if first or not layer.grads else \
                {n: np.empty_like(g) for n, g in layer.grads.items()}
            skip = (k in skip_nodes) if isinstance(layer, ActivationMixin) else None
            steps.append([layer, shared, ins, outs, multi_in, multi_out, need_in, skip, scratch,
                          False, pooled.get(k)])
        last_seen = set()
        for st in reversed(steps):   # the last backward call of each layer reports it
            if id(st[0]) not in last_seen:
                last_seen.add(id(st[0]))
                st[9] = True
        self._fused_softmax = fused
        self._bsteps = [tuple(st) for st in steps]
        self._dead_layers = [l for l in self._graph_layers
                             if id(l) not in done and not isinstance(l, InputLayer)]

    def _fuse_pool_backward(self, live):
        """Let a max pooling that alone reads the output of a first-layer convolution (one
        whose input gradient is not needed) take over that convolution's backward
        (``MaxPooling2D.fuse_conv_backward``); returns {conv node: pooling layer}."""
        info, outputs, pooled = self._node_info, set(self._output_idx), {}
        producer = {i: k for k, s in enumerate(info) for i in s[3]}
        for k, (layer, shared, ins, _, _, _, _) in enumerate(info):
            if not callable(getattr(layer, "fuse_conv_backward", None)):
                continue
            j = producer.get(ins[0]) if len(ins) == 1 else None
            conv = info[j][0] if j is not None else None
            if conv is None or not live[k] or shared is not None or info[j][1] is not None \
                    or info[j][6] or info[j][5] or ins[0] in outputs \
                    or self._consumers[ins[0]] != [k]:
                layer.fuse_conv_backward(None)
                continue
            conv.need_input_grad = False
            if layer.fuse_conv_backward(conv):
                pooled[j] = layer
        return pooled

    # -- None sizes: one concrete graph per input shape -----------------------------------------
    @property
    def output_shape(self):
        """(None, *shape) of the output (None where a size follows the inputs'); a list of
        them for several outputs."""
        if not self.built:
            return None
        shapes = [(None,) + tuple(s) for s in self._symbolic_outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def _check_x(self, x, what):
        """Model._check_x against the inputs' shapes with each None size taken from ``x``;
        selects the concrete graph for those shapes (its output shapes serve the targets)."""
        if not (self.built and self._dynamic):
            return Model._check_x(self, x, what)
        symbolic = self._input_shapes
        concrete = []
        for v, sym in zip(self._as_list(x, self.input_names, what, "input"), symbolic):
            shape = getattr(v, "shape", None)
            if shape is None:
                try:
                    shape = np.shape(v)
                except ValueError:   # ragged nested lists: Model._check_x says what is wrong
                    shape = ()
            shape = tuple(shape)[1:]
            concrete.append(tuple(d if s is None else s for s, d in zip(sym, shape))
                            if len(shape) == len(sym) else sym)
        with _SHAPE_LOCK:   # predict may run in several threads: one shape switch at a time
            self._input_shapes = concrete
            try:
                xs = Model._check_x(self, x, what)
            finally:
                self._input_shapes = symbolic
            graph = self._graph_for([v.shape[1:] for v in xs])
            self._output_shapes = list(graph._output_shapes)
        return xs

    def compile_inference(self):
        if self.built and self._dynamic:
            raise ValueError(f"compile_inference: model {self.name} has None sizes in its input "
                             f"shape(s) {self.input_shape}; a compiled model needs fixed sizes: "
                             f"build the same layers on Input(shape=...) with fixed sizes (or "
                             f"use predict, which plans each input shape it sees)")
        return Model.compile_inference(self)

    def predict(self, x, batch_size=None, verbose="auto"):
        """Model.predict; with None sizes, through the compiled plans of the graph for x's
        shapes (each call's samples share one shape)."""
        from fastnet.data.adapter import is_dataset_like
        if not (self.built and self._dynamic) or is_dataset_like(x):
            return Model.predict(self, x, batch_size=batch_size, verbose=verbose)
        from fastnet import inference
        from fastnet.models.model import _check_batch_size, _check_verbose
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        xs = self._check_x(x, "predict")
        with _SHAPE_LOCK:
            graph = self._graph_for([v.shape[1:] for v in xs])
        return inference.predict(graph, xs, batch_size, verbose)

    def _graph_for(self, shapes):
        """The graph for inputs of per-sample ``shapes`` (None sizes filled): a Functional over
        copies of this model's layers built for those shapes, sharing this model's weight and
        gradient arrays.  The last ``_MAX_SHAPE_GRAPHS`` shapes are kept (LRU): each keeps its
        layers' buffers and compiled inference plans, so a shape seen again allocates nothing;
        an evicted shape's memory is released."""
        key = tuple(tuple(int(d) for d in s) for s in shapes)
        graph = self._shape_graphs.get(key)
        if graph is None:
            for i, (s, sym) in enumerate(zip(key, self._input_shapes)):
                if len(s) != len(sym) or any(a is not None and a != b for a, b in zip(sym, s)):
                    raise ValueError(f"model {self.name}: input {i} must have shape (batch, "
                                     f"{', '.join(map(str, sym))}), got (batch, "
                                     f"{', '.join(map(str, s))})")
            graph = self._shape_graphs[key] = self._specialize(key)
            while len(self._shape_graphs) > _MAX_SHAPE_GRAPHS:
                self._release_graph(self._shape_graphs.popitem(last=False)[1])
        else:
            self._shape_graphs.move_to_end(key)
        for layer, twin in graph._twins:
            twin.trainable = layer.trainable
        if graph._generation != self._generation:   # new losses or weight layout: re-plan
            graph._losses = getattr(self, "_losses", None)
            graph._plan_losses(self._fusable)
            graph._generation = self._generation
        self._fused_softmax = graph._fused_softmax
        hook = self._grad_ready_hook
        if graph._hook_source is not hook:   # report this model's layers, not the copies
            graph._hook_source = hook
            graph._grad_ready_hook = None if hook is None else \
                (lambda twin, own=graph._own: hook(own[id(twin)]))
        return graph

    def _specialize(self, shapes):
        twins, copies = [], {}

        def twin_of(layer):
            twin = copies.get(id(layer))
            if twin is None:
                twin = copies[id(layer)] = type(layer).from_config(layer.get_config())
                # the same dicts: the twin reads and trains this model's arrays
                twin.params, twin.grads = layer.params, layer.grads
                twin._non_trainable, twin._regularizers = layer._non_trainable, \
                    layer._regularizers
                twin.trainable = layer.trainable
                twin.add_weight = _borrowed_weights(layer)
                twins.append((layer, twin))
            return twin

        inputs = [InputLayer(shape=s, dtype=t.dtype, name=t._keras_history[0].name).output
                  for s, t in zip(shapes, self._inputs)]
        mapping = {id(t): i for t, i in zip(self._inputs, inputs)}
        try:
            for node in self._nodes:
                twin = twin_of(node.layer)
                args = [mapping[id(t)] for t in node.inputs]
                try:
                    out = twin(args if twin.multi_input else args[0])
                except ValueError as e:
                    raise ValueError(f"model {self.name}: inputs of shape "
                                     f"{[(None,) + s for s in shapes]} do not fit layer "
                                     f"{node.layer.name}: {e}") from None
                mapping.update(zip(map(id, node.outputs), out if isinstance(out, list)
                                   else [out]))
        finally:
            for _, twin in twins:
                twin.__dict__.pop("add_weight", None)
        graph = Functional.__new__(Functional)
        Model.__init__(graph, name=self.name)
        graph._init_graph(inputs, [mapping[id(t)] for t in self._outputs])
        graph.built = True
        graph._twins, graph._generation = twins, -1
        graph._own = {id(twin): layer for layer, twin in twins}
        graph._hook_source = None
        return graph

    def _release_graph(self, graph):
        """Drop an evicted shape's graph: its compiled inference plans (held by the inference
        module per model) and the batch buffers sized for it."""
        import sys
        inference = sys.modules.get("fastnet.inference")
        if inference is not None:
            inference._predict_locals.pop(graph, None)
        self._batch_buffers.clear()
        self._running = self if self._running is graph else self._running

    # -- running ---------------------------------------------------------------------------------
    def _forward_list(self, xs, training):
        if self._dynamic:
            self._running = self._graph_for([x.shape[1:] for x in xs])
            return self._running._forward_list(xs, training)
        vals = self._values
        for i, x in zip(self._input_idx, xs):
            vals[i] = x
        for layer, shared, ins, outs, multi_in, multi_out, need_in, folded in (
                self._train_steps if training else self._infer_steps):
            if shared is not None:
                layer._enter_call(shared)
            layer.need_input_grad = need_in
            x = [vals[i] for i in ins] if multi_in else vals[ins[0]]
            if folded is None:
                y = layer.forward(x, training)
            else:
                y = layer.forward_folded(x, folded[0], folded[1])
            if multi_out:
                for i, v in zip(outs, y):
                    vals[i] = v
            else:
                vals[outs[0]] = y
        return [vals[i] for i in self._output_idx]

    def _gradient(self, i):
        """The gradient of tensor slot ``i``: its single contribution, or their sum in a
        model-owned buffer; None when nothing contributed."""
        parts = self._pending[i]
        if not parts:
            return None
        g = parts[0]
        if len(parts) > 1:
            key = (i, g.shape, g.dtype)
            acc = self._sum_buffers.get(key)
            if acc is None:
                acc = self._sum_buffers[key] = np.empty(g.shape, g.dtype)
            np.add(g, parts[1], out=acc)
            for h in parts[2:]:
                np.add(acc, h, out=acc)
            g = acc
        return g

    def _zeros(self, i, n):
        """A zero gradient for slot ``i`` (an output no loss depends on), batch ``n``."""
        shape = (n,) + self._slot_shapes[i]
        z = self._zero_buffers.get(shape)
        if z is None:
            z = self._zero_buffers[shape] = np.zeros(shape, self.dtype)
        return z

    def _backward_list(self, dys):
        if self._dynamic:   # the graph of the last forward
            return self._running._backward_list(dys)
        pending = self._pending
        for parts in pending:
            parts.clear()
        n = None
        for i, g in zip(self._output_idx, dys):
            if g is not None:
                pending[i].append(g)
                n = g.shape[0]
        hook = self._grad_ready_hook
        dead = self._dead_layers if n is not None else \
            [l for l in self._graph_layers if not isinstance(l, InputLayer)]
        for layer in dead:   # no loss depends on these: zero gradients
            for g in layer.grads.values():
                g.fill(0)
            if hook is not None:
                hook(layer)
        if n is None:
            return None
        for layer, shared, ins, outs, multi_in, multi_out, need_in, skip, scratch, last, pool in \
                self._bsteps:
            if pool is not None and pool._conv is layer:   # the pooling did its backward
                if last and hook is not None:
                    hook(layer)
                continue
            if multi_out:
                dy = [self._gradient(i) for i in outs]
                dy = [self._zeros(i, n) if g is None else g for i, g in zip(outs, dy)]
            else:
                dy = self._gradient(outs[0])
                if dy is None:
                    dy = self._zeros(outs[0], n)
            if shared is not None:
                layer._enter_call(shared)
            layer.need_input_grad = need_in
            if skip is not None:
                layer.skip_activation_grad = skip
            if scratch is None:
                dx = layer.backward(dy)
            else:   # a later call of a shared layer: add its weight gradients to the first's
                grads, regs = layer.grads, layer._regularizers
                layer.grads, layer._regularizers = scratch, {}
                try:
                    dx = layer.backward(dy)
                finally:
                    layer.grads, layer._regularizers = grads, regs
                for name, g in grads.items():
                    np.add(g, scratch[name], out=g)
            if last and hook is not None:
                hook(layer)
            if need_in:
                if multi_in:
                    for i, g in zip(ins, dx):
                        if g is not None:
                            pending[i].append(g)
                elif dx is not None:
                    pending[ins[0]].append(dx)
        return None

    # -- description ---------------------------------------------------------------------------
    def _node_refs(self):
        """{id(tensor): (layer name, call index within this model, tensor index)}"""
        index, refs = {}, {}
        for t in self._inputs:
            refs[id(t)] = (t._keras_history[0].name, 0, 0)
        for entry, _, outs in self._calls:
            k = index[id(entry)] = index.get(id(entry), -1) + 1
            for j, t in enumerate(outs):
                refs[id(t)] = (entry.name, k, j)
        return refs

    def _inbound(self, entry, refs):
        """Per call of ``entry`` (a top-level layer or nested model): its inputs' refs."""
        return [[refs[id(t)] for t in ins] for e, ins, _ in self._calls if e is entry]

    def _summary_rows(self):
        refs = self._node_refs()
        rows = [("Layer (type)", "Output Shape", "Param #", "Connected to")]
        for layer in self._top_layers:
            connected = [f"{r[0]}[{r[1]}][{r[2]}]" for call in self._inbound(layer, refs)
                         for r in call]
            rows.append((f"{layer.name} ({type(layer).__name__})", entry_shape_text(layer),
                         str(layer.count_params()), ", ".join(connected) or "-"))
        return rows

    def get_config(self):
        """The graph as JSON-ready data (Keras' functional format):

        ``{"name", "layers": [{"class_name", "config", "name", "inbound_nodes"}],
        "input_layers", "output_layers"}``; each layer's ``inbound_nodes`` holds one entry per
        call of the layer in this model, the list of ``[layer name, node index, tensor index]``
        it was called on; ``input_layers`` / ``output_layers`` are such references (one
        reference instead of a list when the model was made with a single tensor)."""
        refs = self._node_refs()
        entries = []
        for layer in self._top_layers:
            inbound = [[list(r) for r in call] for call in self._inbound(layer, refs)]
            entries.append({"class_name": type(layer).__name__, "config": layer.get_config(),
                            "name": layer.name, "inbound_nodes": inbound})
        ins = [list(refs[id(t)]) for t in self._inputs]
        outs = [list(refs[id(t)]) for t in self._outputs]
        return {"name": self.name, "layers": entries,
                "input_layers": ins[0] if self._single_input else ins,
                "output_layers": outs[0] if self._single_output else outs}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuild a model from ``get_config()``: layer classes are looked up among fastnet's
        own (and ``custom_objects``), and the layers are called as recorded."""
        from fastnet.utils import serialization as _serial

        def bad(why):
            return ValueError(f"malformed functional model configuration: {why}")
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise bad("needs a dict with a list of layers")
        created, pending, order = {}, [], []
        for entry in config["layers"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("inbound_nodes", []), list):
                raise bad(f"layer entry {entry!r}")
            layer = _serial.deserialize(entry, _layer_or_model_class, (Layer, Model), "layer",
                                        custom_objects)
            name = entry.get("name", layer.name)
            if name in created:
                raise bad(f"layer name {name!r} appears twice")
            created[name] = layer
            order.append(name)
            pending.append((name, list(entry.get("inbound_nodes", []))))
        outputs = {}    # (layer name, node index) -> output tensors
        for name, layer in created.items():
            if isinstance(layer, InputLayer):
                outputs[(name, 0)] = [layer.output]

        def tensor(ref):
            if not (isinstance(ref, (list, tuple)) and len(ref) >= 3):
                raise bad(f"tensor reference {ref!r}")
            got = outputs.get((ref[0], ref[1]))
            if got is None:
                return None
            if not isinstance(ref[2], int) or not 0 <= ref[2] < len(got):
                raise bad(f"tensor reference {ref!r}")
            return got[ref[2]]

        made = {name: 0 for name in created}
        progress = True
        while progress:
            progress = False
            for name, inbound in pending:
                layer = created[name]
                while made[name] < len(inbound):
                    refs = inbound[made[name]]
                    if not isinstance(refs, list) or not refs:
                        raise bad(f"inbound node of {name}: {refs!r}")
                    args = [tensor(r) for r in refs]
                    if any(a is None for a in args):
                        break
                    out = layer(args if layer.multi_input else args[0])
                    outputs[(name, made[name])] = out if isinstance(out, list) else [out]
                    made[name] += 1
                    progress = True
        stuck = [n for n, inbound in pending if made[n] < len(inbound)]
        if stuck:
            raise bad(f"cannot connect the inbound nodes of {stuck}")

        def refs_to_tensors(value):
            single = isinstance(value, (list, tuple)) and len(value) == 3 and \
                isinstance(value[0], str)
            ts = [tensor(r) for r in ([value] if single else value)]
            if any(t is None for t in ts):
                raise bad(f"unknown tensor in {value!r}")
            return ts[0] if single else ts
        try:
            ins = refs_to_tensors(config["input_layers"])
            outs = refs_to_tensors(config["output_layers"])
        except (KeyError, TypeError) as e:
            raise bad(f"input_layers / output_layers: {e}") from None
        model = cls.__new__(cls)
        Model.__init__(model, name=config.get("name"))
        model._init_graph(ins, outs, layer_order=order)
        model._bind_flat_buffers()
        model.built = True
        return model
