"""``Model.fit`` / ``evaluate`` / ``predict`` on batches from a Dataset, a generator or any
iterable (Keras's data adapters).

Accepted inputs (``is_dataset_like``): a ``fastnet.data.Dataset``; an iterator or generator
(one pass only); any other iterable (``iter()`` each epoch); a Keras ``Sequence``/``PyDataset``
style object with ``__len__`` and ``__getitem__`` (``on_epoch_end()`` called after each epoch).
Each batch is ``(x, y)``, ``(x, y, sample_weight)`` or, for ``predict``, ``x`` or ``(x,)``.

Epochs follow Keras: without ``steps_per_epoch`` an epoch is one full pass; with it, one
iterator runs on across epochs and is restarted when it runs out (a one-shot generator that
runs out stops training with a warning).  Each batch is checked and converted like the array
path's (shape, finite values, targets) and trained with the same step; callbacks, History,
progress bar and Ctrl-C behave as with arrays.
"""
import collections.abc
import copy
import numbers
import time
import warnings

import numpy as np

from fastnet.callbacks import CallbackList, History
from fastnet.data.dataset import INFINITE, Dataset
from fastnet.utils.progbar import Progbar

__all__ = ["is_dataset_like", "fit_dataset", "evaluate_dataset", "predict_dataset"]

_ARRAY_TYPES = (np.ndarray, list, tuple, dict, str, bytes, numbers.Number)


def is_dataset_like(x):
    """True for inputs that yield batches (Dataset, generator, iterable, Sequence), False for
    arrays, lists/tuples of arrays and None."""
    if x is None or isinstance(x, _ARRAY_TYPES) or hasattr(x, "__array__") \
            or hasattr(x, "__array_interface__"):
        return False
    if isinstance(x, (Dataset, collections.abc.Iterable)):
        return True
    return hasattr(x, "__getitem__") and hasattr(x, "__len__")


class _Batches:
    """One data source seen as passes of batches."""

    def __init__(self, data, what):
        self.data, self.what = data, what
        self.sequence = not isinstance(data, (Dataset, collections.abc.Iterable))
        self.one_shot = isinstance(data, collections.abc.Iterator)
        self._consumed = False
        if isinstance(data, Dataset) and data.cardinality() == INFINITE:
            self.size = INFINITE
        elif isinstance(data, Dataset) and data.cardinality() >= 0:
            self.size = data.cardinality()
        elif self.sequence:
            self.size = len(data)
        else:
            self.size = None

    def new_pass(self):
        if self.sequence:
            return (self.data[i] for i in range(len(self.data)))
        if self.one_shot:
            if self._consumed:
                return iter(())
            self._consumed = True
            return self.data
        return iter(self.data)

    def end_epoch(self):
        if self.sequence and hasattr(self.data, "on_epoch_end"):
            self.data.on_epoch_end()


def _close(it):
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _split_batch(batch, what, need_y=True):
    """(x, y, w) from a batch of the forms above."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, tuple):
        if len(batch) == 1:
            x, y, w = batch[0], None, None
        elif len(batch) in (2, 3):
            x, y = batch[0], batch[1]
            w = batch[2] if len(batch) == 3 else None
        else:
            raise ValueError(f"{what}: a batch must be (x, y) or (x, y, sample_weight), got a "
                             f"tuple of {len(batch)}")
    else:
        x, y, w = batch, None, None
    if need_y and y is None:
        raise ValueError(f"{what}: the data must yield (x, y) or (x, y, sample_weight) batches, "
                         f"got {type(batch).__name__} without targets")
    return x, y, w


def _check_no_array_args(what, y=None, sample_weight=None, batch_size=None,
                         validation_split=0.0):
    if y is not None:
        raise ValueError(f"{what}: y must not be given when x is a dataset or generator "
                         "(it yields (x, y) batches)")
    if sample_weight is not None:
        raise ValueError(f"{what}: sample_weight must not be given when x is a dataset or "
                         "generator; yield (x, y, sample_weight) batches instead")
    if batch_size is not None:
        raise ValueError(f"{what}: batch_size must not be given when x is a dataset or "
                         "generator; the data are batched already (Dataset.batch)")
    if validation_split:
        raise ValueError(f"{what}: validation_split works only with arrays; pass "
                         "validation_data, or split first with fastnet.data.validation_split")


def _prepare_batch(model, batch, what, class_weight=None):
    """The batch as the model's lists (one entry per input / output): inputs in the model's
    dtype (C-contiguous, in reused buffers), prepared targets, per-sample weights."""
    x, y, w = _split_batch(batch, what)
    xs, ys = model._prepare_xy(x, y, what)
    for v in xs:
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"{what}: a batch of x holds NaN or infinite values")
    n = xs[0].shape[0]
    ws = model._prepare_weights(w, class_weight, ys, n, what)
    return [model._batch(v, slice(0, n), ("x", i)) for i, v in enumerate(xs)], ys, ws, n


def _as_array_dataset(x, y, sample_weight, batch_size, shuffle):
    """Arrays in a Dataset (for fit with arrays and a dataset as validation_data)."""
    ds = Dataset.from_arrays(x, y, sample_weight)
    if shuffle:
        ds = ds.shuffle(len(ds))
    return ds.batch(batch_size if batch_size is not None else 32)


def fit_dataset(model, x, y=None, *, batch_size=None, epochs=1, verbose="auto", callbacks=None,
                validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
                sample_weight=None, initial_epoch=0, steps_per_epoch=None):
    """``Model.fit`` for a dataset/generator ``x`` (or arrays with a dataset as
    ``validation_data``); same arguments and result (a History)."""
    from fastnet.models.model import _StopOnInterrupt, _check_epochs, _check_verbose
    model._require_compiled("fit")
    verbose = _check_verbose(verbose)
    _check_epochs(epochs, initial_epoch, steps_per_epoch)
    if is_dataset_like(x):
        _check_no_array_args("fit", y, sample_weight, batch_size, validation_split)
    else:   # arrays with a dataset as validation_data (which overrides validation_split)
        x = _as_array_dataset(x, y, sample_weight, batch_size, shuffle)
    source = _Batches(x, "fit")
    if source.size == INFINITE and steps_per_epoch is None:
        raise ValueError("fit: the dataset is infinite (repeat()); pass steps_per_epoch")
    val = None
    if validation_data is not None:
        if is_dataset_like(validation_data):
            val = _Batches(validation_data, "fit(validation_data)")
            if val.size == INFINITE:
                raise ValueError("fit: validation_data is infinite; use .take(n) on it")
        elif not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a dataset or a tuple "
                             "(x_val, y_val[, sample_weight])")

    steps = steps_per_epoch or (source.size if source.size and source.size > 0 else None)
    history = History()
    cbs = CallbackList(list(callbacks or []) + [history], model,
                       {"epochs": epochs, "steps": steps, "verbose": verbose})
    model.stop_training = False
    model._train_seconds, model._train_samples = 0.0, 0
    it, first = None, True
    try:
        with _StopOnInterrupt() as interrupt:
            cbs.on_train_begin({})
            for epoch in range(initial_epoch, epochs):
                if model.stop_training:
                    break
                cbs.on_epoch_begin(epoch, {})
                if verbose:
                    print(f"Epoch {epoch + 1}/{epochs}")
                bar = Progbar(steps, verbose=verbose) if steps else None
                if steps_per_epoch is None or it is None:
                    if it is not None:
                        _close(it)
                    it = source.new_pass()
                for m in model.metrics:
                    m.reset_state()
                loss_sum, seen, step, restarted, out_sums = 0.0, 0, 0, False, None
                t0 = time.perf_counter()
                while steps_per_epoch is None or step < steps_per_epoch:
                    try:
                        batch = next(it)
                    except StopIteration:
                        if steps_per_epoch is None:
                            break
                        source.end_epoch()
                        if source.one_shot or restarted:
                            warnings.warn("fit: the input ran out of data; training stops. "
                                          "Make sure it can yield steps_per_epoch * epochs "
                                          "batches (e.g. Dataset.repeat()).", RuntimeWarning)
                            model.stop_training = True
                            break
                        it, restarted = source.new_pass(), True
                        continue
                    restarted = False
                    xb, yb, wb, n = _prepare_batch(model, batch, "fit", class_weight)
                    if first:       # the first batch may have built the model
                        model._rebind_if_frozen_changed()
                        loss_keys, first = model._loss_names(), False
                    if out_sums is None:
                        out_sums = [0.0] * len(model._losses)
                    cbs.on_train_batch_begin(step, {})
                    loss = model._call_train_step(xb, yb, wb)
                    loss_sum += loss * n
                    for o, _ in loss_keys:
                        out_sums[o] += model._last_losses[o] * n
                    seen += n
                    step += 1
                    logs = model._logs(loss_sum / seen, out_sums, seen)
                    cbs.on_train_batch_end(step - 1, dict(logs))
                    if bar is not None:
                        bar.update(step, list(logs.items()))
                    if interrupt.requested or model.stop_training:
                        break
                model._train_seconds += time.perf_counter() - t0
                model._train_samples += seen
                if steps_per_epoch is None:
                    source.end_epoch()
                if seen == 0:
                    if epoch == initial_epoch or not source.one_shot:
                        raise ValueError("fit: the data yielded no batches")
                    warnings.warn("fit: the generator is exhausted (it can be iterated once); "
                                  "training stops. Pass a Dataset or a function-backed "
                                  "Dataset.from_generator to train for several epochs.",
                                  RuntimeWarning)
                    break
                if bar is None and verbose:
                    Progbar(step, verbose=verbose).update(step, list(logs.items()))
                if interrupt.requested:
                    print(f"\nInterrupted: training stopped after batch {step} of epoch "
                          f"{epoch + 1}; the model holds the weights of that step.")
                    model.stop_training = True
                    break
                epoch_logs = model._logs(loss_sum / seen, out_sums, seen)
                if validation_data is not None:
                    vlogs = (_evaluate(model, val, 0, "fit(validation_data)") if val is not None
                             else _evaluate_tuple(model, validation_data))
                    epoch_logs.update({f"val_{k}": v for k, v in vlogs.items()})
                    if verbose:
                        print("   " + " - ".join(f"val_{k}: {np.mean(v):.4f}"
                                                 for k, v in vlogs.items()))
                cbs.on_epoch_end(epoch, epoch_logs)
            cbs.on_train_end({})
    finally:
        if it is not None:
            _close(it)
    model.history = history
    return history


def _evaluate_tuple(model, validation_data):
    what = "fit(validation_data)"
    xs, ys = model._prepare_xy(validation_data[0], validation_data[1], what)
    ws = model._prepare_weights(validation_data[2] if len(validation_data) == 3 else None,
                                None, ys, xs[0].shape[0], what)
    return model._evaluate_arrays(xs, ys, 32, weights=ws)


def _evaluate(model, source, verbose, what, steps=None):
    """The logs of ``evaluate`` over one pass of ``source`` (``steps`` batches at most)."""
    metrics = None          # copied after the first batch, which may build the model
    bar = Progbar(steps or source.size, verbose=verbose) if (steps or source.size) else None
    loss_sum, seen, step, out_sums = 0.0, 0, 0, None
    it = source.new_pass()
    try:
        for batch in it:
            if steps is not None and step >= steps:
                break
            xb, yb, wb, n = _prepare_batch(model, batch, what)
            if metrics is None:
                # fresh copies: evaluation never mixes with the training epoch's state
                metrics = [[copy.deepcopy(m) for m in ms] for ms in model._output_metrics]
                for ms in metrics:
                    for m in ms:
                        m.reset_state()
                out_sums = [0.0] * len(model._losses)
            outs = model._forward_list(xb, training=False)
            loss, _ = model._losses_grads(outs, yb, wb, need_grad=False)
            loss_sum += loss * n
            for o, v in enumerate(model._last_losses):
                if v is not None:
                    out_sums[o] += v * n
            seen += n
            step += 1
            model._update_metrics(metrics, yb, outs, wb)
            if bar is not None:
                bar.update(step, list(model._logs(loss_sum / seen, out_sums, seen,
                                                  metrics).items()))
    finally:
        _close(it)
    source.end_epoch()
    if seen == 0:
        raise ValueError(f"{what}: the data yielded no batches"
                         + (" (a generator can be iterated only once)" if source.one_shot
                            else ""))
    return model._logs(loss_sum / seen + model._regularization_loss(), out_sums, seen, metrics)


def evaluate_dataset(model, x, y=None, *, batch_size=None, verbose="auto", sample_weight=None,
                     return_dict=False, steps=None):
    """``Model.evaluate`` on a dataset/generator of (x, y[, w]) batches."""
    from fastnet.models.model import _check_verbose
    model._require_compiled("evaluate")
    _check_no_array_args("evaluate", y, sample_weight, batch_size)
    source = _Batches(x, "evaluate")
    if source.size == INFINITE and steps is None:
        raise ValueError("evaluate: the dataset is infinite; pass steps")
    logs = _evaluate(model, source, _check_verbose(verbose), "evaluate", steps)
    return model._result(logs, return_dict)


def predict_dataset(model, x, *, batch_size=None, verbose="auto", steps=None):
    """``Model.predict`` on a dataset/generator of x (or (x, ...)) batches: the outputs of
    every batch, concatenated (a list for several outputs)."""
    from fastnet.models.model import _check_verbose
    _check_no_array_args("predict", batch_size=batch_size)
    verbose = _check_verbose(verbose)
    source = _Batches(x, "predict")
    if source.size == INFINITE and steps is None:
        raise ValueError("predict: the dataset is infinite; pass steps")
    target = steps or (source.size if source.size and source.size > 0 else None)
    bar = Progbar(target, verbose=verbose) if target else None
    outputs = []
    it = source.new_pass()
    try:
        for step, batch in enumerate(it):
            if steps is not None and step >= steps:
                break
            x_part, _, _ = _split_batch(batch, "predict", need_y=False)
            xs = model._check_x(x_part, "predict")
            n = xs[0].shape[0]
            outs = model._forward_list([model._batch(v, slice(0, n), ("x", i))
                                        for i, v in enumerate(xs)], training=False)
            outputs.append([o.copy() for o in outs])
            if bar is not None:
                bar.update(step + 1)
    finally:
        _close(it)
    source.end_epoch()
    if not outputs:
        raise ValueError("predict: the data yielded no batches")
    results = [np.concatenate(parts) for parts in zip(*outputs)]
    return results[0] if len(results) == 1 else results
