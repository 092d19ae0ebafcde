"""Data-parallel ``fit`` over MPI ranks: the DataParallel callback and ``fit``.

Every rank runs the same ``Model.fit`` on the same data set.  At the start the ranks check that
they build the same model, then take rank 0's weights, optimizer state and shuffling seed, so
they all draw the same permutation every epoch and cut it into the same global batches.  Each
rank trains on its own slice of every global batch (``shard_range``); the gradient allreduce
(``DistributedOptimizer``) weights each slice by its size, so N ranks with a global batch of B
take the steps one process takes with batch B.  After each step one small allreduce sums the
loss, the metric statistics and BatchNormalization's moving statistics (averaged), so the logs,
the progress bar and every callback see global values, identical on all ranks.
"""
import copy
import hashlib
import json
import numbers

import numpy as np

from fastnet.callbacks import Callback, CSVLogger, ModelCheckpoint
from fastnet.distributed import _comm
from fastnet.distributed.optimizer import (DEFAULT_BUCKET_BYTES, GradientAllreduce,
                                           distributed_class, is_distributed)
from fastnet.utils.random import get_rng

# Callbacks that write files: in ``fit`` only rank 0 keeps them.
ROOT_ONLY_CALLBACKS = (ModelCheckpoint, CSVLogger)


def shard_range(n, rank=None, size=None):
    """(lo, hi): the contiguous part of ``n`` items that ``rank`` of ``size`` takes.  The parts
    tile [0, n) in rank order and differ in length by at most one."""
    if rank is None or size is None:
        world = _comm.world()
        rank = world.rank if rank is None else rank
        size = world.size if size is None else size
    for name, v, low in (("n", n, 0), ("size", size, 1), ("rank", rank, 0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if rank >= size:
        raise ValueError(f"rank must be < size ({size}), got {rank}")
    return rank * n // size, (rank + 1) * n // size


# -- start of training: same model everywhere, rank 0's state everywhere ---------------------------
def _describe(model, extra):
    """Lines that must be equal on every rank for the ranks to train one model together."""
    def text(obj):
        return json.dumps(obj, sort_keys=True, default=repr)

    def config(obj):
        cfg = dict(obj.get_config()) if hasattr(obj, "get_config") else {}
        cfg.pop("name", None)   # auto-generated names may differ between processes
        return f"{type(obj).__name__} {text(cfg)}"

    lines = [f"model {type(model).__name__}: input {model.input_shape}, output "
             f"{model.output_shape}, {model.dtype}"]
    for i, layer in enumerate(model.layers):
        weights = ", ".join(f"{n}{tuple(w.shape)}" for n, w in layer.params.items())
        lines.append(f"layer {i}: {config(layer)}; weights [{weights}]; trainable "
                     f"{list(layer.trainable_weight_names)}")
    if getattr(model, "compiled", False):
        lines.append(f"optimizer: {config(model.optimizer)}")
        lines.append(f"loss: {config(model.loss)}")
        lines.append(f"metrics: {[config(m) for m in model.metrics]}")
    lines += [f"{k}: {v!r}" for k, v in sorted(extra.items())]
    return lines


def check_same_model(model, extra=None):
    """Raise ValueError on every rank unless all ranks describe the same model (layers, their
    configs and weight shapes, optimizer, loss, metrics) and the same ``extra`` settings."""
    world = _comm.world()
    lines = _describe(model, extra or {})
    blob = "\n".join(lines).encode()
    digests = world.allgather_bytes(hashlib.sha256(blob).digest(), "the model check at the "
                                    "start of training")
    if len(set(digests)) == 1:
        return
    texts = [b.decode().split("\n") for b in
             world.allgather_bytes(blob, "the model check at the start of training")]
    problems = []
    for r, other in enumerate(texts):
        if other == texts[0]:
            continue
        k = next((i for i, (a, b) in enumerate(zip(texts[0], other)) if a != b),
                 min(len(texts[0]), len(other)))
        a = texts[0][k] if k < len(texts[0]) else "(nothing)"
        b = other[k] if k < len(other) else "(nothing)"
        problems.append(f"rank {r} differs from rank 0:\n    rank 0: {a}\n    rank {r}: {b}")
    raise ValueError("fastnet.distributed: the ranks do not train the same model (every rank "
                     "must build and compile the same model and call fit with the same data "
                     "size, batch size and epochs):\n  " + "\n  ".join(problems))


def broadcast_model(model, root=0):
    """Overwrite every rank's weights and optimizer state (iterations, learning rate, slots)
    with rank ``root``'s."""
    world = _comm.world()
    for w in model.weights:
        if w.flags.c_contiguous:
            world.bcast_(w, "the weight broadcast", root)
        else:
            tmp = np.ascontiguousarray(w)
            w[...] = world.bcast_(tmp, "the weight broadcast", root)
    opt = getattr(model, "optimizer", None)
    if opt is None or not hasattr(opt, "get_state"):
        return
    state = opt.get_state() if world.rank == root else {}
    meta = world.bcast_bytes(json.dumps({k: [np.asarray(v).dtype.str, list(np.shape(v))]
                                         for k, v in state.items()}).encode(),
                             "the optimizer-state broadcast", root)
    received = {}
    for name, (dtype, shape) in sorted(json.loads(meta).items()):
        arr = np.ascontiguousarray(state[name]) if world.rank == root \
            else np.empty(shape, np.dtype(dtype))
        received[name] = world.bcast_(arr, "the optimizer-state broadcast", root)
    if world.rank != root:
        opt.set_state(received)


def broadcast_rng(root=0):
    """Give every rank rank ``root``'s fastnet random generator state (in place, so a fit that
    already holds the generator draws the same permutations everywhere)."""
    world = _comm.world()
    rng = get_rng()
    state = world.bcast_bytes(json.dumps(rng.bit_generator.state).encode(),
                              "the random-seed broadcast", root)
    if world.rank != root:
        rng.bit_generator.state = json.loads(state)


# -- metric statistics -----------------------------------------------------------------------------
def _state_names(metric):
    """The attributes ``reset_state`` assigns: the statistics the metric accumulates."""
    names = []
    cls = type(metric)

    def record(self, key, value):
        names.append(key)
        object.__setattr__(self, key, value)

    probe = copy.deepcopy(metric)
    probe.__class__ = type(cls.__name__, (cls,), {"__setattr__": record})
    probe.reset_state()
    if not names:
        raise TypeError(f"metric {metric.name!r} ({cls.__name__}): reset_state() assigns no "
                        f"attributes, so its state cannot be summed across ranks")
    return tuple(dict.fromkeys(names))


def _as_stat(value, metric, name):
    if value is None:
        return None
    if isinstance(value, (numbers.Real, np.ndarray, np.generic)) and \
            np.asarray(value).dtype.kind in "fiub":
        return np.asarray(value, np.float64)
    raise TypeError(f"metric {metric.name!r}: state {name} is a {type(value).__name__}; "
                    f"fastnet.distributed sums metric states across ranks, so they must be "
                    f"numbers or arrays")


def _rows(batch, lo, hi):
    """Rows lo:hi of a batch: an array, None, or a list of them (one per model input/output)."""
    if isinstance(batch, list):
        return [None if a is None else a[lo:hi] for a in batch]
    return None if batch is None else batch[lo:hi]


class _ReplicaStep:
    """Stands in for ``model._train_step`` during a distributed fit: trains on this rank's
    slice of the global batch, then sums loss, metric statistics and moving statistics."""

    def __init__(self, world, model, reducer, shard):
        self.world, self.model, self.reducer, self.shard = world, model, reducer, shard
        self.original = model._train_step
        self.metrics = [(m, _state_names(m)) for m in model.metrics]
        # moving statistics of layers that train (BatchNormalization): averaged every step
        self.running = [layer.params[name] for layer in model.layers if layer.trainable
                        for name in layer.non_trainable_weight_names]
        self.stats = np.zeros(0)

    def __call__(self, xb, yb, wb=None):
        world = self.world
        m = (xb[0] if isinstance(xb, list) else xb).shape[0]
        counts = True
        if not self.shard:
            weight = 1.0 / world.size
        elif m >= world.size:
            lo, hi = shard_range(m, world.rank, world.size)
            weight = (hi - lo) / m
            xb, yb, wb = _rows(xb, lo, hi), _rows(yb, lo, hi), _rows(wb, lo, hi)
        else:
            # fewer samples than ranks (a last partial batch): every rank takes all of them,
            # each counts 1/size in the gradient and rank 0 alone in the metrics
            weight = 1.0 / world.size
            counts = world.rank == 0
        saved = [[getattr(metric, a) for a in names] for metric, names in self.metrics]
        for metric, _ in self.metrics:
            metric.reset_state()   # from here the metrics hold this step's counts only
        self.reducer.begin(weight)
        loss = self.original(xb, yb, wb)
        return self._sum_stats(loss * weight, weight, saved, counts)

    def _sum_stats(self, loss, weight, saved, counts):
        # per-output losses of a multi-output model (its logs show them)
        outputs = getattr(self.model, "_last_losses", None)
        outputs = [i for i, v in enumerate(outputs) if v is not None] \
            if isinstance(outputs, list) and len(outputs) > 1 else []
        incs = [[_as_stat(getattr(metric, a), metric, a) for a in names]
                for metric, names in self.metrics]
        size = 1 + len(outputs) + sum(v.size for vs in incs for v in vs if v is not None) + \
            sum(r.size for r in self.running)
        if self.stats.size != size:
            self.stats = np.zeros(size)
        stats = self.stats
        stats[0] = loss
        for k, i in enumerate(outputs, 1):
            stats[k] = self.model._last_losses[i] * weight
        k = 1 + len(outputs)
        for vs in incs:
            for v in vs:
                if v is not None:
                    stats[k:k + v.size] = v.reshape(-1) if counts else 0.0
                    k += v.size
        inv = 1.0 / self.world.size
        for r in self.running:
            np.multiply(r.reshape(-1), inv, out=stats[k:k + r.size])
            k += r.size
        self.world.allreduce_(stats, "the loss and metrics allreduce")
        for k, i in enumerate(outputs, 1):
            self.model._last_losses[i] = float(stats[k])
        k = 1 + len(outputs)
        for (metric, names), vs, old in zip(self.metrics, incs, saved):
            for a, v, prev in zip(names, vs, old):
                if v is None:
                    setattr(metric, a, prev)
                    continue
                total = stats[k:k + v.size].reshape(v.shape)
                k += v.size
                if prev is not None:
                    total = total + np.asarray(prev, np.float64)
                total = total.copy() if isinstance(getattr(metric, a), np.ndarray) \
                    else float(total)
                setattr(metric, a, total)
        for r in self.running:
            np.copyto(r.reshape(-1), stats[k:k + r.size], casting="same_kind")
            k += r.size
        return float(stats[0])


class DataParallel(Callback):
    """Makes ``Model.fit`` data-parallel over the MPI ranks; ``fastnet.distributed.fit`` adds
    it (last) for you.

    At the start of training: checks that every rank has the same model and fit settings,
    broadcasts rank 0's weights, optimizer state and shuffling seed, makes the optimizer
    distributed (for the duration of fit) and takes over the per-step work.  With
    ``shard=True`` every rank must pass the whole data set and the global ``batch_size``; with
    ``shard=False`` each rank trains on the batches of its own data and the gradients are
    averaged (Horovod's convention).  After each batch and epoch the ranks agree on
    ``stop_training`` (any rank stopping stops all), so it must come after the callbacks that
    set it.
    """

    def __init__(self, shard=True, bucket_bytes=DEFAULT_BUCKET_BYTES, fit_settings=None):
        super().__init__()
        self.shard = bool(shard)
        self.bucket_bytes = bucket_bytes
        self.fit_settings = dict(fit_settings or {})
        self._installed = None

    def on_train_begin(self, logs=None):
        world = _comm.world()
        model = self.model
        for attr in ("_train_step", "_flat_grads", "_n_trainable", "metrics", "optimizer"):
            if not hasattr(model, attr):
                raise TypeError(f"DataParallel needs a fastnet model with {attr}; got "
                                f"{type(model).__name__}")
        settings = dict(self.fit_settings, epochs=self.params.get("epochs"),
                        steps=self.params.get("steps"), shard=self.shard, ranks=world.size)
        check_same_model(model, settings)
        broadcast_model(model)
        broadcast_rng()
        opt = model.optimizer
        original_class = None
        if not is_distributed(opt):
            original_class = type(opt)
            opt.__class__ = distributed_class(original_class)
        reducer = opt.__dict__.get("_allreduce")
        if reducer is None:
            reducer = opt._allreduce = GradientAllreduce(world, self.bucket_bytes)
        reducer.attach(model)
        had_step = "_train_step" in model.__dict__
        step = _ReplicaStep(world, model, reducer, self.shard)
        model._train_step = step
        self._installed = (model, opt, original_class, reducer, had_step, step.original)
        world.training = True

    def _agree_to_stop(self):
        world = _comm.world()
        flag = np.array([1 if self.model.stop_training else 0], np.int32)
        world.allreduce_(flag, "the stop-training agreement", op="max")
        self.model.stop_training = bool(flag[0])

    def on_train_batch_end(self, batch, logs=None):
        self._agree_to_stop()

    def on_epoch_end(self, epoch, logs=None):
        self._agree_to_stop()

    def on_train_end(self, logs=None):
        self.uninstall()
        _comm.world().training = False

    def uninstall(self):
        """Give the model back its own step and optimizer (idempotent)."""
        if self._installed is None:
            return
        model, opt, original_class, reducer, had_step, original_step = self._installed
        self._installed = None
        reducer.detach()
        if had_step:
            model._train_step = original_step
        else:
            model.__dict__.pop("_train_step", None)
        if original_class is not None:
            opt.__dict__.pop("_allreduce", None)
            opt.__class__ = original_class


def _num_samples(x):
    """Samples in ``x``: an array, or a list / dict of arrays (one per model input)."""
    if isinstance(x, dict):
        x = next(iter(x.values()), None)
    elif isinstance(x, (list, tuple)) and x and np.ndim(x[0]) > 0 and not np.isscalar(x[0]):
        x = x[0]
    shape = np.shape(x) if x is not None else ()
    return int(shape[0]) if shape else None


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        shard=True, bucket_bytes=DEFAULT_BUCKET_BYTES, **kwargs):
    """``model.fit(x, y, ...)`` data-parallel over every MPI rank; returns the History.

    Every rank passes the same (x, y) and the global ``batch_size``: each epoch all ranks draw
    one permutation (rank 0's seed) and each trains on its slice of every batch, so N ranks
    take the same steps as one process with ``batch_size`` (up to float rounding).  Only rank 0
    shows progress and keeps the file-writing callbacks (ModelCheckpoint, CSVLogger); the other
    arguments are ``Model.fit``'s.

    >>> from fastnet import distributed as dist
    >>> dist.init()
    >>> dist.fit(model, x_train, y_train, batch_size=64, epochs=5)
    """
    world = _comm.world()
    cbs = list(callbacks or [])
    if world.rank != 0:
        verbose = 0
        cbs = [cb for cb in cbs if not isinstance(cb, ROOT_ONLY_CALLBACKS)]
    settings = {"samples": _num_samples(x), "batch_size": batch_size,
                "shuffle": kwargs.get("shuffle", True),
                "validation_split": kwargs.get("validation_split", 0.0),
                "initial_epoch": kwargs.get("initial_epoch", 0)}
    parallel = DataParallel(shard=shard, bucket_bytes=bucket_bytes, fit_settings=settings)
    cbs.append(parallel)
    try:
        return model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                         callbacks=cbs, **kwargs)
    finally:
        parallel.uninstall()
