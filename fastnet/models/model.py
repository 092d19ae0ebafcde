"""Training and inference loops shared by every model (compile, fit, evaluate, predict).

``Model(inputs, outputs)`` makes a functional model (``fastnet.models.functional``); Sequential
is a functional model whose graph is a chain.  A subclass provides the graph:
``_build_graph(input_shape)`` (models built lazily), ``_forward_list(xs, training)`` and
``_backward_list(dys)``.  This class owns what does not depend on the graph: the flat
parameter and gradient buffers (every layer's weights are views into them, so an optimizer
step is one fused pass), the conversion of user data (one array, or a list / dict per input
and output) into batches, the losses, metrics and progress.

Gradient hook (distributed training): ``model._grad_ready_hook`` (default None) may be set to
a callable ``hook(layer)``.  The backward pass calls it once per layer as soon as that layer's
gradients in ``layer.grads`` (views into ``model._flat_grads``) are final: right after the
layer's backward (after its last call, for a layer shared by several calls), the last layer
first.  Layers whose gradients are zero because no loss depends on them are reported before
the first backward.  An allreduce of the finished gradients can start while backward goes on;
the optimizer step runs after ``_backward_list`` returns.
"""
import copy
import numbers
import signal
import threading
import time

import numpy as np

from fastnet import losses as losses_mod
from fastnet import metrics as metrics_mod
from fastnet import optimizers as optimizers_mod
from fastnet.callbacks import CallbackList, History
from fastnet.ops._checks import as_real_array
from fastnet.utils.progbar import Progbar
from fastnet.utils.random import get_rng

_ALIGN = 16  # parameter offsets in elements: 64-byte alignment for float32


def _check_batch_size(batch_size):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be a positive integer, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def _check_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def _check_epochs(epochs, initial_epoch, steps_per_epoch):
    """fit's epochs, initial_epoch (integers >= 0) and steps_per_epoch (>= 1 or None)."""
    for name, v in (("epochs", epochs), ("initial_epoch", initial_epoch)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(
            steps_per_epoch, numbers.Integral) or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be a positive integer or None, "
                         f"got {steps_per_epoch!r}")


def _aligned_zeros(n, dtype):
    """A zeroed 1-D array whose data start on a 64-byte boundary (whole cache lines, full
    SIMD loads for every weight, whose offsets are multiples of _ALIGN elements)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(n * dtype.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + n * dtype.itemsize].view(dtype)


def _metric_value(metric):
    """A metric's result for the logs: a float, or an array for per-class metrics."""
    value = np.asarray(metric.result())
    return float(value) if value.ndim == 0 else value.copy()


def _update_metric(metric, y, out, w):
    if w is None:
        metric.update_state(y, out)
    else:
        metric.update_state(y, out, sample_weight=w)


class _StopOnInterrupt:
    """Within ``fit``: the first Ctrl-C asks to stop after the current batch; a second one
    interrupts at once.  Only where Ctrl-C has Python's own meaning (KeyboardInterrupt): a
    process that ignores SIGINT (started with nohup or in the background by a shell) or that
    installed its own handler keeps it; outside the main thread, a no-op."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            try:
                self._old = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # not the main interpreter thread
                self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class Model:
    """A model: ``Model(inputs, outputs, name=None)`` builds a functional model from symbolic
    tensors (``fastnet.layers.Input`` and layer calls on them); ``Sequential`` is a chain.

    Both share compile, fit, evaluate, predict, the weights API, save/load and summary.  With
    several inputs, x is a list (in ``model.inputs`` order) or a dict by input name; with
    several outputs, y is a list or a dict by output name (``model.output_names``), and the
    loss, loss weights and metrics may be given per output.

    >>> x = layers.Input(shape=(32, 32, 3))
    >>> h = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    >>> y = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(h))
    >>> model = Model(x, y)
    """

    def __new__(cls, *args, **kwargs):
        if cls is Model:
            if not args and "inputs" not in kwargs:
                raise TypeError("Model(inputs, outputs, name=None) builds a functional model from "
                                "symbolic tensors (fastnet.layers.Input); for a plain stack of "
                                "layers use Sequential([...]).  Subclassed models with a "
                                "call() method are not supported.")
            from fastnet.models.functional import Functional
            return super().__new__(Functional)
        return super().__new__(cls)

    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self.name = name or "model"
        self.built = False
        self.compiled = False
        self.optimizer = self.loss = None
        self.metrics = []
        self.stop_training = False
        self.history = None
        self._flat_params = self._flat_grads = None
        self._n_trainable = 0
        self._batch_buffers = {}
        self._grad_ready_hook = None   # see the module docstring
        self._last_losses = []

    # -- graph hooks ---------------------------------------------------------------------------
    @property
    def layers(self):
        raise NotImplementedError

    def _build_graph(self, input_shape):
        raise NotImplementedError

    def _forward_list(self, xs, training):
        raise NotImplementedError

    def _backward_list(self, dys):
        raise NotImplementedError

    def _n_inputs(self):
        return len(self._input_shapes) if self.built else 1

    def _forward(self, x, training):
        """Forward of one batch: an array (or list of arrays, one per input) in, the output
        array (a list for several outputs) out; arrays are owned by the layers."""
        outs = self._forward_list(x if isinstance(x, (list, tuple)) else [x], training)
        return outs[0] if len(outs) == 1 else outs

    def _backward(self, dy):
        """Backward from dL/doutput (a list for several outputs)."""
        return self._backward_list(list(dy) if isinstance(dy, (list, tuple)) else [dy])

    @property
    def input_shape(self):
        """(None, *shape) of the input; a list of them for several inputs."""
        if not self.built:
            return None
        shapes = [(None,) + s for s in self._input_shapes]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        """(None, *shape) of the output; a list of them for several outputs."""
        if not self.built:
            return None
        shapes = [(None,) + s for s in self._output_shapes]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def dtype(self):
        from fastnet.layers.core import InputLayer
        layers = [l for l in self.layers if not isinstance(l, InputLayer)] or self.layers
        return layers[0].dtype if layers else np.dtype("float32")

    # -- building ------------------------------------------------------------------------------
    def build(self, input_shape=None):
        """Create every weight for inputs of ``input_shape`` (batch axis first, may be None)."""
        if input_shape is None:
            raise ValueError("build: input_shape is required, e.g. (None, 28, 28, 1)")
        shape = tuple(input_shape)[1:]
        self._build_graph(tuple(int(s) for s in shape))
        self._bind_flat_buffers()
        self.built = True
        if self.compiled:
            self._configure_loss_path()

    def _set_io_shapes(self, input_shapes, output_shapes):
        self._input_shapes = [tuple(s) for s in input_shapes]
        self._output_shapes = [tuple(s) for s in output_shapes]
        # single-input / single-output models keep the plain attributes
        self._input_shape = self._input_shapes[0]
        self._output_shape = self._output_shapes[0]

    def _bind_flat_buffers(self, reuse=False):
        """Move every weight into one flat buffer and the gradients into a second one.

        Trainable weights come first (the optimizer's region, with a gradient each), then the
        non-trainable ones (BatchNorm's moving statistics, frozen layers), which the optimizer
        never touches.  Each layer's ``params``/``grads`` become views into these buffers.
        ``reuse``: the layout is unchanged, keep the buffers (and the optimizer state)."""
        from fastnet.layers.core import InputLayer
        dtype = self.dtype
        for layer in self.layers:
            if layer.dtype != dtype and not isinstance(layer, InputLayer):
                raise TypeError(f"layer {layer.name} has dtype {layer.dtype} but the model "
                                f"uses {dtype}: every layer needs the same dtype")
        trainable = [(layer, name) for layer in self.layers
                     for name in layer.trainable_weight_names]
        frozen = [(layer, name) for layer in self.layers
                  for name in layer.non_trainable_weight_names]
        offsets, total, n_trainable = [], 0, 0
        for layer, name in trainable + frozen:
            if len(offsets) == len(trainable):
                n_trainable = total
            offsets.append(total)
            total += -(-layer.params[name].size // _ALIGN) * _ALIGN
        if not frozen:
            n_trainable = total
        if reuse and self._flat_params is not None and self._flat_params.size == total \
                and self._n_trainable == n_trainable:
            params, grads = self._flat_params, self._flat_grads
        else:
            params = _aligned_zeros(total, dtype)
            grads = _aligned_zeros(n_trainable, dtype)
        self._n_trainable = n_trainable
        bound = []
        for i, ((layer, name), off) in enumerate(zip(trainable + frozen, offsets)):
            value = layer.params[name]
            view = params[off:off + value.size].reshape(value.shape)
            if view is not value:
                view[...] = value
            layer.params[name] = view
            bound.append((layer.params, name, view))
            if i < len(trainable):
                layer.grads[name] = grads[off:off + value.size].reshape(value.shape)
            else:
                layer.grads.pop(name, None)
        self._flat_params, self._flat_grads = params, grads
        # (offset, size) of each trainable weight: per-variable rules (clipnorm) need them
        self._segments = [(off, layer.params[name].size)
                          for (layer, name), off in zip(trainable, offsets)]
        self._bound_trainable = [(layer, tuple(layer.trainable_weight_names))
                                 for layer in self.layers]
        self._bound_views = bound
        self._regularized = [l for l in self.layers if getattr(l, "_regularizers", None)]
        self._on_rebind()

    def _on_rebind(self):
        """Called after the flat buffers were (re)bound: the graph re-plans its gradients."""

    def _rebind_if_frozen_changed(self):
        """Re-lay the buffers when a layer's ``trainable`` flag changed since the last bind, and
        take the weights back when another model sharing these layers bound them to its own
        buffers (the layout is the same then, so the optimizer state stays)."""
        if any(tuple(layer.trainable_weight_names) != names
               for layer, names in self._bound_trainable):
            self._bind_flat_buffers()
            if self.optimizer is not None:
                self.optimizer.build(self._n_trainable, self.dtype)
        elif any(params.get(name) is not view for params, name, view in self._bound_views):
            self._bind_flat_buffers(reuse=True)

    def _regularization_loss(self):
        return float(sum(layer.regularization_loss() for layer in self._regularized))

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what}: the model is not built yet; give the first layer an "
                             f"input_shape, start with Input(shape), call build(), or fit first")

    # -- weights ------------------------------------------------------------------------------
    @property
    def weights(self):
        return [w for layer in self.layers for w in layer.weights]

    def get_weights(self):
        """Copies of every layer's weights, in layer order and Keras layouts."""
        self._require_built("get_weights")
        return [w.copy() for layer in self.layers for w in layer.weights]

    def set_weights(self, weights):
        """Set every weight from a list in ``get_weights`` order; checks count and shapes first."""
        self._require_built("set_weights")
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"set_weights: weights must be a list of arrays, "
                            f"got {type(weights).__name__}")
        expected = sum(len(layer.params) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"set_weights: the model has {expected} weight arrays, "
                             f"got {len(weights)}")
        slices, i = [], 0
        for layer in self.layers:
            n = len(layer.params)
            for (name, cur), new in zip(layer.params.items(), weights[i:i + n]):
                new = np.asarray(new)
                if new.shape != cur.shape:
                    raise ValueError(f"set_weights: {layer.name}/{name} must have shape "
                                     f"{cur.shape}, got {new.shape}")
                if new.dtype.kind not in "fiub":
                    raise TypeError(f"set_weights: {layer.name}/{name} must be numeric, "
                                    f"got {new.dtype}")
            slices.append((layer, weights[i:i + n]))
            i += n
        for layer, ws in slices:
            layer.set_weights(list(ws))

    def count_params(self):
        self._require_built("count_params")
        return sum(layer.count_params() for layer in self.layers)

    def get_layer(self, name=None, index=None):
        """The layer called ``name`` (or at position ``index`` of ``layers``)."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; the layers are "
                         f"{[l.name for l in self.layers]}")

    # -- compile -------------------------------------------------------------------------------
    @property
    def output_names(self):
        return list(self._output_names) if self.built else ["output"]

    @property
    def input_names(self):
        return list(self._input_names) if self.built else ["input"]

    def _per_output(self, value, what, convert, default):
        """``value`` given once (for every output), as a list (one per output) or a dict by
        output name, as a list of ``convert(v)`` (``default`` where a dict has no entry)."""
        names = self.output_names
        if isinstance(value, dict):
            unknown = [k for k in value if k not in names]
            if unknown:
                raise ValueError(f"compile: {what} names {unknown} but the model's outputs are "
                                 f"{names}")
            return [convert(value[n]) if n in value else default for n in names]
        if isinstance(value, (list, tuple)):
            if len(value) != len(names):
                raise ValueError(f"compile: {what} is a list of {len(value)} but the model has "
                                 f"{len(names)} output(s) {names}")
            return [convert(v) if v is not None else default for v in value]
        return [convert(value) for _ in names]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None):
        """Choose the optimizer, the loss(es) and the metrics (names or objects), as in Keras.

        With several outputs, ``loss`` is one loss for every output, a list (one per output,
        None for an output without loss) or a dict by output name; ``loss_weights`` (list or
        dict) weigh the outputs' losses in the total; ``metrics`` is a list applied to every
        output, a list of lists (one per output) or a dict by output name.  The logs then hold
        ``loss``, ``<output>_loss`` and ``<output>_<metric>``.
        """
        self.optimizer = optimizers_mod.get(optimizer)
        if loss is None:
            raise ValueError("compile: loss is required, e.g. 'sparse_categorical_crossentropy'")
        losses = self._per_output(loss, "loss", losses_mod.get, None)
        if all(l is None for l in losses):
            raise ValueError("compile: at least one output needs a loss")

        def weight(w):
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not np.isfinite(w):
                raise ValueError(f"compile: loss_weights must be finite numbers, got {w!r}")
            return float(w)
        weights = [1.0] * len(losses) if loss_weights is None else \
            self._per_output(loss_weights, "loss_weights", weight, 1.0)
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_mod.Metric)):
            metrics = [metrics]
        if isinstance(metrics, dict):
            per_output = self._per_output(
                metrics, "metrics", lambda m: list(m) if isinstance(m, (list, tuple)) else [m], [])
        elif isinstance(metrics, (list, tuple)):
            if any(isinstance(m, (list, tuple)) or m is None for m in metrics):
                per_output = self._per_output(
                    list(metrics), "metrics",
                    lambda m: list(m) if isinstance(m, (list, tuple)) else [m], [])
            else:   # a flat list: the same metrics for every output
                per_output = [list(metrics) for _ in losses]
        else:
            raise TypeError(f"metrics must be a list of names or Metric objects, "
                            f"got {type(metrics).__name__}")
        single = len(losses) == 1
        self._losses, self._loss_weights = losses, weights
        self._metric_ids_per_output = per_output
        # what the arguments were, in the shape saving expects (one output: plain values)
        self.loss = losses[0] if single else losses
        self._metric_ids = per_output[0] if single else per_output
        self._loss_weights_arg = None if loss_weights is None else (
            weights[0] if single else weights)
        self.metrics = self._make_metrics(None)
        self.compiled = True
        if self.built:
            self._configure_loss_path()

    def _make_metrics(self, output_shapes):
        """Fresh metric objects per output (a Metric object listed for several outputs is
        copied); returns the flat list and sets the per-output lists and log names."""
        per_output, seen = [], set()
        for o, ids in enumerate(self._metric_ids_per_output):
            shape = None if output_shapes is None else output_shapes[o]
            ms = []
            for m in ids:
                metric = metrics_mod.get(m, self._losses[o], shape)
                if id(metric) in seen:
                    metric = copy.deepcopy(metric)
                seen.add(id(metric))
                ms.append(metric)
            per_output.append(ms)
        self._output_metrics = per_output
        return [m for ms in per_output for m in ms]

    def _metric_names(self, per_output):
        """(log key, metric) pairs: the metric's name, prefixed by the output's name when the
        model has several outputs (Keras)."""
        if len(per_output) == 1:
            return [(m.name, m) for m in per_output[0]]
        names = self.output_names
        return [(f"{names[o]}_{m.name}", m) for o, ms in enumerate(per_output) for m in ms]

    def _loss_names(self):
        """Log keys of the per-output losses (several outputs only)."""
        if len(self._losses) == 1:
            return []
        names = self.output_names
        return [(o, f"{names[o]}_loss") for o, l in enumerate(self._losses) if l is not None]

    def _configure_loss_path(self):
        """Metrics for the built output shapes, and the graph's loss-dependent plan (fused
        softmax + cross-entropy, which layers get gradients)."""
        self.metrics = self._make_metrics(self._output_shapes)
        self._plan_losses([l is not None and getattr(l, "fuses_softmax", False)
                           for l in self._losses])

    def _plan_losses(self, fusable):
        """Graph hook: plan the backward pass for these losses; sets ``_fused_softmax``, per
        output whether softmax + cross-entropy are fused (``fusable``: the losses that could)."""
        raise NotImplementedError

    def _require_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"{what}: compile the model first, e.g. model.compile("
                               f"optimizer='adam', loss='sparse_categorical_crossentropy')")

    # -- data ----------------------------------------------------------------------------------
    def _as_list(self, value, names, what, kind):
        """One entry per name from a single value, a list / tuple, or a dict by name."""
        if isinstance(value, dict):
            unknown = [k for k in value if k not in names]
            if unknown:
                raise ValueError(f"{what}: {kind} names {unknown} but the model's {kind}s are "
                                 f"{names}")
            return [value.get(n) for n in names]
        if len(names) == 1:
            if isinstance(value, (list, tuple)) and len(value) == 1 and \
                    hasattr(value[0], "__array__") and np.ndim(value[0]) >= 1:
                value = value[0]    # [array]: that array ([3] or [[1, 2]] is one sample)
            return [value]
        if not isinstance(value, (list, tuple)) or len(value) != len(names):
            got = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else \
                type(value).__name__
            raise ValueError(f"{what}: the model has {len(names)} {kind}s {names}: pass a list "
                             f"of {len(names)} arrays or a dict by name, got {got}")
        return list(value)

    def _check_x(self, x, what):
        """The inputs as a list of arrays (one per model input) with matching sample counts."""
        names = self.input_names if self.built else ["input"]
        xs = self._as_list(x, names, what, "input")
        out = []
        for name, v in zip(names, xs):
            label = "x" if len(names) == 1 else f"x[{name!r}]"
            if v is None:
                raise ValueError(f"{what}: {label} is missing")
            v = as_real_array(v, f"{what}: {label}")
            if v.ndim < 1 or v.shape[0] == 0:
                raise ValueError(f"{what}: {label} is empty (shape {v.shape}); need at least one "
                                 f"sample")
            out.append(v)
        if len({v.shape[0] for v in out}) != 1:
            raise ValueError(f"{what}: the inputs have different numbers of samples "
                             f"{[v.shape[0] for v in out]}")
        if not self.built:
            self.build((None,) + out[0].shape[1:])
        for name, v, shape in zip(self.input_names, out, self._input_shapes):
            if v.shape[1:] != shape:
                label = "x" if len(out) == 1 else f"x[{name!r}]"
                raise ValueError(f"{what}: {label} must have shape (batch, "
                                 f"{', '.join(map(str, shape))}) for this model, got {v.shape}")
        return out

    def _prepare_xy(self, x, y, what):
        """(inputs, targets): lists of arrays; a target is None for an output without loss
        and metrics (or without data)."""
        xs = self._check_x(x, what)
        n = xs[0].shape[0]
        if y is None:
            raise ValueError(f"{what}: y (the targets) is required")
        names = self.output_names
        ys = self._as_list(y, names, what, "output")
        targets = []
        for o, (name, v) in enumerate(zip(names, ys)):
            label = "y" if len(names) == 1 else f"y[{name!r}]"
            loss = self._losses[o]
            if v is None:
                if loss is not None or self._output_metrics[o]:
                    raise ValueError(f"{what}: {label} (the targets of output {name!r}) is "
                                     f"required")
                targets.append(None)
                continue
            arr = np.asarray(v)
            if arr.ndim < 1 or arr.shape[0] != n:
                raise ValueError(f"{what}: x has {n} samples but {label} has "
                                 f"{arr.shape[0] if arr.ndim else 'no'} (shape {arr.shape}); "
                                 f"they must match")
            if loss is not None:
                arr = loss.prepare_targets(arr, (n,) + self._output_shapes[o], self.dtype)
            targets.append(arr)
        return xs, targets

    def _batch(self, x, idx, key):
        """x[idx] as a C-contiguous array (of the model's dtype for inputs, key ("x", i)), in
        a buffer reused every step."""
        n = len(idx) if not isinstance(idx, slice) else idx.stop - idx.start
        dtype = self.dtype if key[0] == "x" else x.dtype
        if isinstance(idx, slice) and x.dtype == dtype and x.flags.c_contiguous:
            return x[idx]  # already the right dtype and contiguous: a view, no copy
        buf = self._batch_buffers.get((key, n, x.shape[1:]))
        if buf is None:
            buf = np.empty((n,) + x.shape[1:], dtype=dtype)
            self._batch_buffers[(key, n, x.shape[1:])] = buf
        if isinstance(idx, slice) or x.dtype != buf.dtype:
            buf[...] = x[idx]  # numpy casts in one compiled pass
        else:
            np.take(x, idx, axis=0, out=buf)
        return buf

    def _batch_all(self, arrays, idx, kind):
        """``_batch`` of each array of a list (None stays None; an array listed twice, as a
        sample weight shared by every output, is gathered once)."""
        done, out = {}, []
        for i, a in enumerate(arrays):
            if a is None:
                out.append(None)
            elif id(a) in done:
                out.append(done[id(a)])
            else:
                b = done[id(a)] = self._batch(a, idx, (kind, i))
                out.append(b)
        return out

    # -- steps ---------------------------------------------------------------------------------
    def _loss_grad(self, out, yb, wb=None, need_grad=True, output=0):
        """Mean loss of output ``output`` on a batch and dL/dout in a reused buffer (None
        without ``need_grad``), both times the output's loss weight."""
        grad = None
        fused = self._fused_softmax[output]
        if need_grad or fused:
            key = ("dout", output, out.shape)
            grad = self._batch_buffers.get(key)
            if grad is None:
                grad = self._batch_buffers[key] = np.empty(out.shape, out.dtype)
        kwargs = {} if wb is None else {"sample_weight": wb}
        loss_fn = self._losses[output]
        if fused:
            loss = loss_fn.compute_fused_softmax(out, yb, grad, **kwargs)
        else:
            loss = loss_fn.compute(out, yb, grad, **kwargs)
        w = self._loss_weights[output]
        if w != 1.0:
            loss = loss * w
            if grad is not None:
                np.multiply(grad, grad.dtype.type(w), out=grad)
        return float(loss), grad

    def _losses_grads(self, outs, ys, ws, need_grad=True):
        """Total loss over the outputs with a loss (per-output values in ``_last_losses``) and
        dL/doutput per output (None for an output without loss)."""
        total, per, grads = 0.0, [], []
        for o, out in enumerate(outs):
            if self._losses[o] is None:
                per.append(None)
                grads.append(None)
                continue
            loss, grad = self._loss_grad(out, ys[o], ws[o], need_grad, o)
            total += loss
            per.append(loss)
            grads.append(grad)
        self._last_losses = per
        return total, grads

    def _update_metrics(self, per_output, ys, outs, ws):
        for o, ms in enumerate(per_output):
            for m in ms:
                _update_metric(m, ys[o], outs[o], ws[o])

    def _train_step(self, xs, ys, ws=None):
        """One optimizer step: lists of input batches, targets and sample weights (one per
        input / output), or plain arrays for a one-input, one-output model."""
        if not isinstance(xs, list):
            xs, ys, ws = [xs], [ys], [ws]
        outs = self._forward_list(xs, training=True)
        loss, grads = self._losses_grads(outs, ys, ws)
        loss += self._regularization_loss()  # before the step, as Keras reports it
        self._backward_list(grads)  # each layer adds its penalty's gradient to its own grads
        n = self._n_trainable
        self.optimizer.apply(self._flat_params[:n], self._flat_grads[:n], self._segments)
        self._update_metrics(self._output_metrics, ys, outs, ws)
        return loss

    def _call_train_step(self, xb, yb, wb):
        """``_train_step`` with plain arrays for a one-input, one-output model (the form that
        code wrapping ``_train_step``, e.g. fastnet.distributed, sees), lists otherwise."""
        if len(xb) == 1 and len(yb) == 1:
            return self._train_step(xb[0], yb[0], wb[0])
        return self._train_step(xb, yb, wb)

    def _logs(self, loss, loss_sums=None, seen=1, metrics=None):
        """The log dict: loss, per-output losses (several outputs), metrics."""
        logs = {"loss": loss}
        for o, key in self._loss_names():
            logs[key] = (loss_sums[o] / seen) if loss_sums is not None else self._last_losses[o]
        for key, m in self._metric_names(metrics or self._output_metrics):
            logs[key] = _metric_value(m)
        return logs

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on (x, y); returns the loss (and metrics) of this batch."""
        self._require_compiled("train_on_batch")
        xs, ys = self._prepare_xy(x, y, "train_on_batch")
        ws = self._prepare_weights(sample_weight, class_weight, ys, xs[0].shape[0],
                                   "train_on_batch")
        self._rebind_if_frozen_changed()
        for m in self.metrics:
            m.reset_state()
        xb = [self._batch(v, slice(0, v.shape[0]), ("x", i)) for i, v in enumerate(xs)]
        loss = self._call_train_step(xb, ys, ws)
        return self._result(self._logs(loss), return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """Loss (and metrics) of (x, y) without updating the weights."""
        return self.evaluate(x, y, batch_size=max(self._count(x), 1), verbose=0,
                             sample_weight=sample_weight, return_dict=return_dict)

    def predict_on_batch(self, x):
        """Model outputs for one batch, as a new array (a list for several outputs)."""
        return self.predict(x, batch_size=max(self._count(x), 1), verbose=0)

    def _count(self, x):
        if isinstance(x, dict):
            x = next(iter(x.values()), [])
        elif isinstance(x, (list, tuple)) and x and (self._n_inputs() > 1 or (
                len(x) == 1 and hasattr(x[0], "shape"))):
            x = x[0]
        return len(x)

    def _result(self, logs, return_dict):
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    # -- fit -----------------------------------------------------------------------------------
    def _prepare_weights(self, sample_weight, class_weight, ys, n, what):
        """Per-sample weights (n,) per output (None: unweighted) from ``sample_weight`` (one
        array for every output, a list or a dict by output name) and ``class_weight``."""
        names = self.output_names
        if isinstance(sample_weight, (dict, list, tuple)) and not (
                isinstance(sample_weight, (list, tuple)) and len(names) == 1
                and np.ndim(sample_weight) == 1):
            sws = self._as_list(sample_weight, names, what, "output")
        else:
            sws = [sample_weight] * len(names)
        if class_weight is not None and len(names) > 1:
            raise ValueError(f"{what}: class_weight is only supported for models with one "
                             f"output; use sample_weight per output")
        converted, out = {}, []
        for o, sw in enumerate(sws):
            if sw is None and class_weight is None:
                out.append(None)
                continue
            if id(sw) in converted and class_weight is None:
                out.append(converted[id(sw)])
                continue
            w = self._sample_weights(sw, class_weight, ys[o], n, what)
            converted[id(sw)] = w
            out.append(w)
        return out

    def _sample_weights(self, sample_weight, class_weight, y, n, what):
        """Per-sample weights (n,) from ``sample_weight`` and/or ``class_weight``, or None."""
        w = None
        if sample_weight is not None:
            w = np.asarray(sample_weight)
            if w.dtype.kind not in "fiub" or w.ndim != 1 or w.shape[0] != n:
                raise ValueError(f"{what}: sample_weight must be a 1-D array of {n} numbers "
                                 f"(one per sample), got {w.dtype} {w.shape}")
            w = np.ascontiguousarray(w, dtype=self.dtype)
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"{what}: sample_weight must be finite and >= 0")
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise TypeError(f"{what}: class_weight must be a dict {{class: weight}}")
            if y.ndim != 1 or y.dtype.kind not in "iu":
                labels = np.argmax(y.reshape(n, -1), axis=1) if y.ndim == 2 and y.shape[1] > 1 \
                    else np.rint(y.reshape(n)).astype(np.int64)
            else:
                labels = y
            table = np.ones(int(labels.max()) + 1 if labels.size else 1, dtype=self.dtype)
            for k, v in class_weight.items():
                if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
                    raise ValueError(f"{what}: class_weight keys must be class indices >= 0, "
                                     f"got {k!r}")
                if not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
                    raise ValueError(f"{what}: class_weight[{k}] must be a finite number >= 0")
                if k < table.size:
                    table[k] = v
            cw = table[labels]
            w = cw if w is None else w * cw
        return w

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None):
        """Train for ``epochs`` passes over (x, y); returns a History.

        x (samples, *input_shape) of any real dtype and memory layout (converted one batch at a
        time), or a list / dict of them for several inputs; y integer labels (samples,) or
        targets shaped like the output, or a list / dict of them for several outputs.
        ``sample_weight`` (samples,) and ``class_weight`` {class: weight} weight each sample's
        loss (Keras: sum(w * loss) / batch size).  ``steps_per_epoch`` batches make an epoch
        (the data are reshuffled whenever they run out).  Ctrl-C stops after the current batch
        and returns.
        """
        from fastnet.data.adapter import fit_dataset, is_dataset_like
        if is_dataset_like(x) or is_dataset_like(validation_data):  # Dataset / generator
            return fit_dataset(self, x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                               callbacks=callbacks, validation_split=validation_split,
                               validation_data=validation_data, shuffle=shuffle,
                               class_weight=class_weight, sample_weight=sample_weight,
                               initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch)
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        _check_epochs(epochs, initial_epoch, steps_per_epoch)
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        xs, ys = self._prepare_xy(x, y, "fit")
        self._rebind_if_frozen_changed()
        for v in xs:
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise ValueError("fit: x holds NaN or infinite values")
        n = xs[0].shape[0]
        weights = self._prepare_weights(sample_weight, class_weight, ys, n, "fit")
        if validation_data is None and validation_split:
            split = int(n * (1.0 - validation_split))  # Keras: the last fraction
            if split < 1 or split >= n:
                raise ValueError(f"validation_split={validation_split} leaves no training or no "
                                 f"validation samples out of {n}")

            def cut(arrays, part):
                return [None if a is None else a[part] for a in arrays]
            val = (cut(xs, slice(split, None)), cut(ys, slice(split, None)),
                   cut(weights, slice(split, None)))
            xs, ys, weights = (cut(xs, slice(None, split)), cut(ys, slice(None, split)),
                               cut(weights, slice(None, split)))
            n = split
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val[, sample_weight])")
            val_x, val_y = self._prepare_xy(validation_data[0], validation_data[1],
                                            "fit(validation_data)")
            val_w = self._prepare_weights(validation_data[2] if len(validation_data) == 3
                                          else None, None, val_y, val_x[0].shape[0],
                                          "fit(validation_data)")
            val = (val_x, val_y, val_w)
        else:
            val = None

        batches_per_pass = -(-n // batch_size)
        steps = steps_per_epoch or batches_per_pass
        history = History()
        cbs = CallbackList(list(callbacks or []) + [history], self,  # History last, as Keras
                           {"epochs": epochs, "steps": steps, "verbose": verbose})
        self.stop_training = False
        rng = get_rng()
        self._train_seconds, self._train_samples = 0.0, 0
        stream = {"order": None, "next": batches_per_pass}  # position in the current pass
        loss_keys = self._loss_names()
        with _StopOnInterrupt() as interrupt:
            cbs.on_train_begin({})
            for epoch in range(initial_epoch, epochs):
                if self.stop_training:
                    break
                cbs.on_epoch_begin(epoch, {})
                if verbose:
                    print(f"Epoch {epoch + 1}/{epochs}")
                bar = Progbar(steps, verbose=verbose)
                if steps_per_epoch is None:
                    stream["next"] = batches_per_pass  # each epoch is one fresh pass
                for m in self.metrics:
                    m.reset_state()
                loss_sum, seen = 0.0, 0
                out_sums = [0.0] * len(self._losses)
                t0 = time.perf_counter()
                for step in range(steps):
                    if stream["next"] >= batches_per_pass:
                        stream["order"] = rng.permutation(n) if shuffle else None
                        stream["next"] = 0
                    b = stream["next"]
                    stream["next"] += 1
                    lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
                    order = stream["order"]
                    idx = order[lo:hi] if order is not None else slice(lo, hi)
                    xb = self._batch_all(xs, idx, "x")
                    yb = self._batch_all(ys, idx, "y")
                    wb = self._batch_all(weights, idx, "w")
                    cbs.on_train_batch_begin(step, {})
                    loss = self._call_train_step(xb, yb, wb)
                    loss_sum += loss * (hi - lo)
                    for o, _ in loss_keys:
                        out_sums[o] += self._last_losses[o] * (hi - lo)
                    seen += hi - lo
                    logs = self._logs(loss_sum / seen, out_sums, seen)
                    cbs.on_train_batch_end(step, dict(logs))
                    bar.update(step + 1, list(logs.items()))
                    if interrupt.requested or self.stop_training:
                        break
                self._train_seconds += time.perf_counter() - t0
                self._train_samples += seen
                if interrupt.requested:
                    print(f"\nInterrupted: training stopped after batch {step + 1} of epoch "
                          f"{epoch + 1}; the model holds the weights of that step.")
                    self.stop_training = True
                    break
                epoch_logs = self._logs(loss_sum / max(seen, 1), out_sums, max(seen, 1))
                if val is not None:
                    vlogs = self._evaluate_arrays(val[0], val[1], batch_size, weights=val[2])
                    epoch_logs.update({f"val_{k}": v for k, v in vlogs.items()})
                    if verbose:
                        print("   " + " - ".join(f"val_{k}: {np.mean(v):.4f}"
                                                 for k, v in vlogs.items()))
                cbs.on_epoch_end(epoch, epoch_logs)
            cbs.on_train_end({})
        self.history = history
        return history

    # -- evaluate / predict ---------------------------------------------------------------------
    def _evaluate_arrays(self, xs, ys, batch_size, verbose=0, weights=None):
        if not isinstance(xs, list):
            xs, ys, weights = [xs], [ys], [weights]
        weights = weights or [None] * len(ys)
        # fresh copies: evaluation never mixes with the training epoch's running state
        metrics = [[copy.deepcopy(m) for m in ms] for ms in self._output_metrics]
        for ms in metrics:
            for m in ms:
                m.reset_state()
        n = xs[0].shape[0]
        steps = -(-n // batch_size)
        bar = Progbar(steps, verbose=verbose)
        loss_sum = 0.0
        out_sums = [0.0] * len(self._losses)
        for step in range(steps):
            lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
            sl = slice(lo, hi)
            outs = self._forward_list([self._batch(x, sl, ("x", i)) for i, x in enumerate(xs)],
                                      training=False)
            yb = [None if y is None else y[sl] for y in ys]
            wb = [None if w is None else w[sl] for w in weights]
            loss, _ = self._losses_grads(outs, yb, wb, need_grad=False)
            loss_sum += loss * (hi - lo)
            for o, l in enumerate(self._last_losses):
                if l is not None:
                    out_sums[o] += l * (hi - lo)
            self._update_metrics(metrics, yb, outs, wb)
            bar.update(step + 1, list(self._logs(loss_sum / hi, out_sums, hi, metrics).items()))
        return self._logs(loss_sum / n + self._regularization_loss(), out_sums, n, metrics)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 return_dict=False):
        """Loss and metrics on (x, y): ``[loss, *output losses, *metrics]`` (the loss alone
        without metrics and with one output), or the logs dict with ``return_dict``."""
        from fastnet.data.adapter import evaluate_dataset, is_dataset_like
        if is_dataset_like(x):  # a Dataset / generator of (x, y[, w]) batches
            return evaluate_dataset(self, x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, return_dict=return_dict)
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        xs, ys = self._prepare_xy(x, y, "evaluate")
        weights = self._prepare_weights(sample_weight, None, ys, xs[0].shape[0], "evaluate")
        logs = self._evaluate_arrays(xs, ys, batch_size, verbose, weights)
        return self._result(logs, return_dict)

    def predict(self, x, batch_size=None, verbose="auto"):
        """Outputs for every sample of x: an array (samples, *output_shape) of the model's dtype,
        a list of them for several outputs."""
        from fastnet.data.adapter import is_dataset_like, predict_dataset
        if is_dataset_like(x):  # a Dataset / generator of x (or (x, ...)) batches
            return predict_dataset(self, x, batch_size=batch_size, verbose=verbose)
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        xs = self._check_x(x, "predict")
        from fastnet import inference   # per-thread compiled plans: safe from several threads
        return inference.predict(self, xs, batch_size, verbose)

    def compile_inference(self):
        """This model's inference forward compiled into one planned kernel sequence
        (BatchNorm folded, bias + ReLU fused, buffers planned once, thread-safe): a
        ``fastnet.inference.CompiledModel`` over a snapshot of the weights."""
        from fastnet import inference
        return inference.compile(self)

    def __call__(self, x, training=False):
        """Eager forward pass on a NumPy batch (a list for several inputs); returns new
        array(s)."""
        from fastnet.layers.base import _has_symbolic
        if _has_symbolic(x):
            raise TypeError(f"model {self.name}: calling a model on symbolic tensors (nesting it "
                            f"in another model) is not supported; call its layers instead")
        xs = self._check_x(x, "call")
        outs = self._forward_list([self._batch(v, slice(0, v.shape[0]), ("x", i))
                                   for i, v in enumerate(xs)], training=training)
        outs = [o.copy() for o in outs]
        return outs[0] if len(outs) == 1 else outs

    # -- files ---------------------------------------------------------------------------------
    def save_weights(self, filepath):
        """Write every weight to ``filepath`` atomically (no pickle)."""
        from fastnet import saving
        saving.save_weights(self, filepath)

    def load_weights(self, filepath):
        """Read weights written by ``save_weights`` or ``save``; shapes are checked first."""
        from fastnet import saving
        saving.load_weights(self, filepath)

    def save(self, filepath):
        """Write the architecture, weights, compile settings and optimizer state atomically;
        ``fastnet.models.load_model(filepath)`` reads it back."""
        from fastnet import saving
        saving.save_model(self, filepath)

    # -- summary -------------------------------------------------------------------------------
    def _summary_rows(self):
        """Header and one row per layer (strings)."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self.layers:
            rows.append((f"{layer.name} ({type(layer).__name__})", _shape_text(layer),
                         str(layer.count_params()) if layer.built else "?"))
        return rows

    def summary(self, print_fn=None):
        """Print the layers, their output shapes and parameter counts (Keras' table); a
        functional model adds what each layer is connected to."""
        print_fn = print_fn or print
        rows = self._summary_rows()
        ncol = len(rows[0])
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(ncol)]
        line = "=" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * sum(widths))
        print_fn("".join(c.ljust(w) for c, w in zip(rows[0], widths)))
        print_fn(line)
        for r in rows[1:]:
            print_fn("".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        print_fn(line)
        if self.built:
            total = self.count_params()
            trainable = sum(int(np.prod(l.params[n].shape)) for l in self.layers
                            for n in l.trainable_weight_names)
            print_fn(f"Total params: {total:,}")
            print_fn(f"Trainable params: {trainable:,}")
            print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn("_" * sum(widths))


def _shape_text(layer):
    if not layer.built:
        return "?"
    shape = layer.output_shape
    if isinstance(shape, list):
        return "[" + ", ".join(str((None,) + tuple(s)) for s in shape) + "]"
    return str((None,) + tuple(shape))
