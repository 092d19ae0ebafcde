"""Training and inference loops shared by every model (compile, fit, evaluate, predict).

A subclass provides the layer graph: ``_build_layers(input_shape)``, ``_forward(x, training)``
and ``_backward(dy)``.  This class owns what does not depend on the graph: the flat parameter
and gradient buffers (every layer's weights are views into them, so an optimizer step is one
fused pass), the conversion of user data into batches, the loss, metrics and progress.
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
    interrupts at once.  Only the main thread can install signal handlers; elsewhere a no-op."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
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
    """Base of Sequential (and of the graph models): compile, fit, evaluate, predict."""

    def __init__(self, name=None):
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

    # -- graph hooks ---------------------------------------------------------------------------
    @property
    def layers(self):
        raise NotImplementedError

    def _build_layers(self, input_shape):
        raise NotImplementedError

    def _forward(self, x, training):
        raise NotImplementedError

    def _backward(self, dy):
        raise NotImplementedError

    @property
    def input_shape(self):
        return (None,) + self._input_shape if self.built else None

    @property
    def output_shape(self):
        return (None,) + self._output_shape if self.built else None

    @property
    def dtype(self):
        return self.layers[0].dtype if self.layers else np.dtype("float32")

    # -- building ------------------------------------------------------------------------------
    def build(self, input_shape=None):
        """Create every weight for inputs of ``input_shape`` (batch axis first, may be None)."""
        if input_shape is None:
            raise ValueError("build: input_shape is required, e.g. (None, 28, 28, 1)")
        shape = tuple(input_shape)[1:]
        self._input_shape = tuple(int(s) for s in shape)
        self._output_shape = self._build_layers(self._input_shape)
        self._bind_flat_buffers()
        self.built = True
        if self.compiled:
            self._configure_loss_path()

    def _bind_flat_buffers(self):
        """Move every weight into one flat buffer and the gradients into a second one.

        Trainable weights come first (the optimizer's region, with a gradient each), then the
        non-trainable ones (BatchNorm's moving statistics, frozen layers), which the optimizer
        never touches.  Each layer's ``params``/``grads`` become views into these buffers."""
        dtype = self.dtype
        for layer in self.layers:
            if layer.dtype != dtype:
                raise TypeError(f"layer {layer.name} has dtype {layer.dtype} but the model "
                                f"uses {dtype}: every layer needs the same dtype")
        trainable = [(layer, name) for layer in self.layers
                     for name in layer.trainable_weight_names]
        frozen = [(layer, name) for layer in self.layers
                  for name in layer.non_trainable_weight_names]
        offsets, total = [], 0
        for layer, name in trainable + frozen:
            if len(offsets) == len(trainable):
                self._n_trainable = total
            offsets.append(total)
            total += -(-layer.params[name].size // _ALIGN) * _ALIGN
        if not frozen:
            self._n_trainable = total
        params = _aligned_zeros(total, dtype)
        grads = _aligned_zeros(self._n_trainable, dtype)
        for i, ((layer, name), off) in enumerate(zip(trainable + frozen, offsets)):
            value = layer.params[name]
            view = params[off:off + value.size].reshape(value.shape)
            view[...] = value
            layer.params[name] = view
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
        self._regularized = [l for l in self.layers if getattr(l, "_regularizers", None)]

    def _rebind_if_frozen_changed(self):
        """Re-lay the buffers when a layer's ``trainable`` flag changed since the last bind."""
        if any(tuple(layer.trainable_weight_names) != names
               for layer, names in self._bound_trainable):
            self._bind_flat_buffers()
            if self.optimizer is not None:
                self.optimizer.build(self._n_trainable, self.dtype)

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

    # -- compile -------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, the loss and the metrics (names or objects), as in Keras."""
        self.optimizer = optimizers_mod.get(optimizer)
        if loss is None:
            raise ValueError("compile: loss is required, e.g. 'sparse_categorical_crossentropy'")
        self.loss = losses_mod.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_mod.Metric)):
            metrics = [metrics]
        if not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a list of names or Metric objects, "
                            f"got {type(metrics).__name__}")
        self._metric_ids = list(metrics)
        self.metrics = [metrics_mod.get(m, self.loss) for m in metrics]
        self.compiled = True
        if self.built:
            self._configure_loss_path()

    def _configure_loss_path(self):
        """Fuse softmax + cross-entropy when the last layer is a softmax and the loss takes
        probabilities: dL/dlogits = (p - y) / N, skipping the softmax Jacobian."""
        self.metrics = [metrics_mod.get(m, self.loss, self._output_shape)
                        for m in self._metric_ids]
        last = self.layers[-1]
        self._fused_softmax = (getattr(self.loss, "fuses_softmax", False)
                               and getattr(last, "activation", None) == "softmax")
        for layer in self.layers:
            layer.skip_activation_grad = False
        if self._fused_softmax:
            last.skip_activation_grad = True

    def _require_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"{what}: compile the model first, e.g. model.compile("
                               f"optimizer='adam', loss='sparse_categorical_crossentropy')")

    # -- data ----------------------------------------------------------------------------------
    def _check_x(self, x, what):
        if isinstance(x, (list, tuple)) and len(x) == 1:
            x = x[0]
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{what}: x must be array-like of numbers ({e})") from None
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{what}: x must hold real numbers, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{what}: x is empty (shape {x.shape}); need at least one sample")
        if not self.built:
            self.build((None,) + x.shape[1:])
        if x.shape[1:] != self._input_shape:
            raise ValueError(f"{what}: x must have shape (batch, "
                             f"{', '.join(map(str, self._input_shape))}) for this model, "
                             f"got {x.shape}")
        return x

    def _prepare_xy(self, x, y, what):
        x = self._check_x(x, what)
        if y is None:
            raise ValueError(f"{what}: y (the targets) is required")
        y_arr = np.asarray(y)
        if y_arr.ndim < 1 or y_arr.shape[0] != x.shape[0]:
            raise ValueError(f"{what}: x has {x.shape[0]} samples but y has "
                             f"{y_arr.shape[0] if y_arr.ndim else 'no'} (shape {y_arr.shape}); "
                             f"they must match")
        targets = self.loss.prepare_targets(y_arr, (x.shape[0],) + self._output_shape, self.dtype)
        return x, targets

    def _batch(self, x, idx, key):
        """x[idx] as a C-contiguous array of the model's dtype, in a buffer reused every step."""
        n = len(idx) if not isinstance(idx, slice) else idx.stop - idx.start
        dtype = self.dtype if key == "x" else x.dtype
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

    # -- steps ---------------------------------------------------------------------------------
    def _loss_grad(self, out, yb, wb=None, need_grad=True):
        """Mean loss of a batch (plus regularization) and dL/dout in a reused buffer."""
        grad = None
        if need_grad or self._fused_softmax:
            grad = self._batch_buffers.get(("dout", out.shape))
            if grad is None:
                grad = self._batch_buffers[("dout", out.shape)] = np.empty(out.shape, out.dtype)
        kwargs = {} if wb is None else {"sample_weight": wb}
        if self._fused_softmax:
            loss = self.loss.compute_fused_softmax(out, yb, grad, **kwargs)
        else:
            loss = self.loss.compute(out, yb, grad, **kwargs)
        return float(loss), grad

    def _train_step(self, xb, yb, wb=None):
        out = self._forward(xb, training=True)
        loss, grad = self._loss_grad(out, yb, wb)
        loss += self._regularization_loss()  # before the step, as Keras reports it
        self._backward(grad)  # each layer adds its penalty's gradient to its own grads
        n = self._n_trainable
        self.optimizer.apply(self._flat_params[:n], self._flat_grads[:n], self._segments)
        for m in self.metrics:
            _update_metric(m, yb, out, wb)
        return loss

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on (x, y); returns the loss (and metrics) of this batch."""
        self._require_compiled("train_on_batch")
        x, y = self._prepare_xy(x, y, "train_on_batch")
        w = self._prepare_weights(sample_weight, class_weight, y, x.shape[0], "train_on_batch")
        self._rebind_if_frozen_changed()
        for m in self.metrics:
            m.reset_state()
        loss = self._train_step(self._batch(x, slice(0, x.shape[0]), "x"), y, w)
        return self._result(loss, return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """Loss (and metrics) of (x, y) without updating the weights."""
        return self.evaluate(x, y, batch_size=max(len(x), 1), verbose=0,
                             sample_weight=sample_weight, return_dict=return_dict)

    def predict_on_batch(self, x):
        """Model outputs for one batch, as a new array."""
        return self.predict(x, batch_size=max(len(x), 1), verbose=0)

    def _result(self, loss, return_dict):
        logs = {"loss": loss}
        for m in self.metrics:
            logs[m.name] = _metric_value(m)
        if return_dict:
            return logs
        return loss if not self.metrics else [loss] + [logs[m.name] for m in self.metrics]

    # -- fit -----------------------------------------------------------------------------------
    def _prepare_weights(self, sample_weight, class_weight, y, n, what):
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
        time); y integer labels (samples,) or targets shaped like the output.  ``sample_weight``
        (samples,) and ``class_weight`` {class: weight} weight each sample's loss (Keras:
        sum(w * loss) / batch size).  ``steps_per_epoch`` batches make an epoch (the data are
        reshuffled whenever they run out).  Ctrl-C stops after the current batch and returns.
        """
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        for name, v in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(
                steps_per_epoch, numbers.Integral) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer or None, "
                             f"got {steps_per_epoch!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        x, y = self._prepare_xy(x, y, "fit")
        self._rebind_if_frozen_changed()
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError("fit: x holds NaN or infinite values")
        weights = self._prepare_weights(sample_weight, class_weight, y, x.shape[0], "fit")
        if validation_data is None and validation_split:
            split = int(x.shape[0] * (1.0 - validation_split))  # Keras: the last fraction
            if split < 1 or split >= x.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves no training or no "
                                 f"validation samples out of {x.shape[0]}")
            validation_data = (x[split:], y[split:])
            x, y = x[:split], y[:split]
            weights = weights[:split] if weights is not None else None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val[, sample_weight])")
            val_x, val_y = self._prepare_xy(validation_data[0], validation_data[1],
                                            "fit(validation_data)")
            val_w = self._prepare_weights(validation_data[2] if len(validation_data) == 3
                                          else None, None, val_y, val_x.shape[0],
                                          "fit(validation_data)")

        n = x.shape[0]
        batches_per_pass = -(-n // batch_size)
        steps = steps_per_epoch or batches_per_pass
        history = History()
        cbs = CallbackList(list(callbacks or []) + [history], self,  # History last, as Keras
                           {"epochs": epochs, "steps": steps, "verbose": verbose})
        self.stop_training = False
        rng = get_rng()
        self._train_seconds, self._train_samples = 0.0, 0
        stream = {"order": None, "next": batches_per_pass}  # position in the current pass
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
                    xb = self._batch(x, idx, "x")
                    yb = self._batch(y, idx, "y")
                    wb = self._batch(weights, idx, "w") if weights is not None else None
                    cbs.on_train_batch_begin(step, {})
                    loss = self._train_step(xb, yb, wb)
                    loss_sum += loss * (hi - lo)
                    seen += hi - lo
                    logs = [("loss", loss_sum / seen)] + [(m.name, _metric_value(m))
                                                          for m in self.metrics]
                    cbs.on_train_batch_end(step, dict(logs))
                    bar.update(step + 1, logs)
                    if interrupt.requested or self.stop_training:
                        break
                self._train_seconds += time.perf_counter() - t0
                self._train_samples += seen
                if interrupt.requested:
                    print(f"\nInterrupted: training stopped after batch {step + 1} of epoch "
                          f"{epoch + 1}; the model holds the weights of that step.")
                    self.stop_training = True
                    break
                epoch_logs = {"loss": loss_sum / max(seen, 1)}
                for m in self.metrics:
                    epoch_logs[m.name] = _metric_value(m)
                if validation_data is not None:
                    val = self._evaluate_arrays(val_x, val_y, batch_size, weights=val_w)
                    epoch_logs.update({f"val_{k}": v for k, v in val.items()})
                    if verbose:
                        print("   " + " - ".join(f"val_{k}: {v:.4f}" for k, v in val.items()))
                cbs.on_epoch_end(epoch, epoch_logs)
            cbs.on_train_end({})
        self.history = history
        return history

    # -- evaluate / predict ---------------------------------------------------------------------
    def _evaluate_arrays(self, x, y, batch_size, verbose=0, weights=None):
        # fresh copies: evaluation never mixes with the training epoch's running state
        metrics = [copy.deepcopy(metrics_mod.get(m, self.loss, self._output_shape))
                   for m in self._metric_ids]
        for m in metrics:
            m.reset_state()
        n = x.shape[0]
        steps = -(-n // batch_size)
        bar = Progbar(steps, verbose=verbose)
        loss_sum = 0.0
        for step in range(steps):
            lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
            out = self._forward(self._batch(x, slice(lo, hi), "x"), training=False)
            yb = y[lo:hi]
            wb = weights[lo:hi] if weights is not None else None
            loss, _ = self._loss_grad(out, yb, wb, need_grad=False)
            loss_sum += loss * (hi - lo)
            for m in metrics:
                _update_metric(m, yb, out, wb)
            bar.update(step + 1, [("loss", loss_sum / hi)] + [(m.name, _metric_value(m))
                                                              for m in metrics])
        logs = {"loss": loss_sum / n + self._regularization_loss()}
        for m in metrics:
            logs[m.name] = _metric_value(m)
        return logs

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 return_dict=False):
        """Loss and metrics on (x, y): ``[loss, *metrics]`` (or the loss alone without metrics)."""
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        x, y = self._prepare_xy(x, y, "evaluate")
        weights = self._prepare_weights(sample_weight, None, y, x.shape[0], "evaluate")
        logs = self._evaluate_arrays(x, y, batch_size, verbose, weights)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose="auto"):
        """Outputs for every sample of x: an array (samples, *output_shape) of the model's dtype."""
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        x = self._check_x(x, "predict")
        n = x.shape[0]
        result = np.empty((n,) + self._output_shape, dtype=self.dtype)
        steps = -(-n // batch_size)
        bar = Progbar(steps, verbose=verbose)
        for step in range(steps):
            lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
            result[lo:hi] = self._forward(self._batch(x, slice(lo, hi), "x"), training=False)
            bar.update(step + 1)
        return result

    def __call__(self, x, training=False):
        """Eager forward pass on a NumPy batch; returns a new array."""
        x = self._check_x(x, "call")
        return self._forward(self._batch(x, slice(0, x.shape[0]), "x"), training=training).copy()

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
    def summary(self, print_fn=None):
        """Print the layers, their output shapes and parameter counts (Keras' table)."""
        print_fn = print_fn or print
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self.layers:
            shape = str((None,) + layer.output_shape) if layer.built else "?"
            count = str(layer.count_params()) if layer.built else "?"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, count))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "=" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * sum(widths))
        print_fn("".join(c.ljust(w) for c, w in zip(rows[0], widths)))
        print_fn(line)
        for r in rows[1:]:
            print_fn("".join(c.ljust(w) for c, w in zip(r, widths)))
        print_fn(line)
        if self.built:
            total = self.count_params()
            trainable = sum(int(np.prod(l.params[n].shape)) for l in self.layers
                            for n in l.trainable_weight_names)
            print_fn(f"Total params: {total:,}")
            print_fn(f"Trainable params: {trainable:,}")
            print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn("_" * sum(widths))
