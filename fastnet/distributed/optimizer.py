"""DistributedOptimizer: a fastnet optimizer whose step first sums the gradients of all ranks.

The model's trainable gradients live in one flat float32 buffer, so a step moves one buffer:
each rank multiplies its gradients by its weight (its share of the global batch, ``n_rank /
n_global``; ``1 / size`` by default) and an in-place MPI allreduce sums them, which leaves every
rank with the gradient of the whole global batch.  Backward runs from the last layer to the
first and the buffer holds the gradients in layer order, so the finished gradients are always a
suffix of the buffer: with a model that reports finished layers (``Model._grad_ready_hook``),
that suffix is sent in buckets of at least ``bucket_bytes`` while backward goes on, and
``apply`` sends the rest and waits.
"""
import time

import numpy as np

from fastnet import optimizers
from fastnet.distributed import _comm

DEFAULT_BUCKET_BYTES = 256 * 1024


class GradientAllreduce:
    """Sums a model's flat gradient buffer over the ranks once per step (see the module doc).

    ``attach(model)`` plans the buckets from the layers' gradient views and installs the hook;
    per step ``begin(weight)``, the hook, then ``finish(grads)``.  Layers that report more than
    once per step (shared layers) are done after as many reports as the first step saw; the
    first step after planning sends everything in ``finish``.

    ``wait_seconds`` and ``steps`` add up the time ``finish`` waited (the communication backward
    did not hide) and the steps taken; ``overlapped`` counts the buckets sent during backward.
    """

    def __init__(self, world, bucket_bytes=DEFAULT_BUCKET_BYTES):
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) \
                or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be a positive integer, got {bucket_bytes!r}")
        self.world = world
        self.bucket_bytes = int(bucket_bytes)
        self.weight = 1.0 / world.size
        self.wait_seconds, self.steps, self.overlapped = 0.0, 0, 0
        self._model = None
        self._plan_key = None
        self._buf = None
        self._ranges = []       # (start offset, layer id), descending start
        self._calls = None      # layer id -> reports per step, learned in the first step
        self._counts = {}
        self._requests = []
        self._active = False
        self._sent = 0          # [_sent, end) of the buffer is on its way
        self._next = 0          # _ranges[:_next] are finished this step

    # -- set-up ------------------------------------------------------------------------------
    def attach(self, model):
        """Plan for ``model``'s buffer and let its backward report finished layers."""
        self._model = model
        self._plan_key = None
        if hasattr(model, "_grad_ready_hook"):
            model._grad_ready_hook = self.layer_done

    def detach(self):
        model, self._model = self._model, None
        if model is not None and getattr(model, "_grad_ready_hook", None) == self.layer_done:
            model._grad_ready_hook = None
        self._active = False

    def _plan(self, grads, n):
        """Where each layer's gradients start in the trainable part of ``grads``."""
        self._buf = grads[:n]
        self._plan_key = (grads.__array_interface__["data"][0], n)
        base, itemsize = self._plan_key[0], grads.itemsize
        starts = {}
        for layer in self._model.layers:
            for g in getattr(layer, "grads", {}).values():
                if not isinstance(g, np.ndarray) or g.size == 0:
                    continue
                off = (g.__array_interface__["data"][0] - base) // itemsize
                if 0 <= off < n:
                    starts[id(layer)] = min(off, starts.get(id(layer), n))
        self._ranges = sorted(((s, k) for k, s in starts.items()), reverse=True)
        self._calls = None

    # -- one step ------------------------------------------------------------------------------
    def begin(self, weight):
        """Start a step whose gradients count with ``weight`` in the sum."""
        self.weight = float(weight)
        self._requests.clear()
        self._active = self._model is not None
        if not self._active:
            return
        grads, n = self._model._flat_grads, self._model._n_trainable
        if (grads.__array_interface__["data"][0], n) != self._plan_key:
            self._plan(grads, n)
        self._sent, self._next = n, 0
        self._counts.clear()

    def layer_done(self, layer):
        """The model's hook: ``layer``'s gradients are written.  Sends the finished suffix of
        the buffer once it reaches a bucket, and lets MPI progress the sends in flight."""
        if not self._active:
            return
        key = id(layer)
        self._counts[key] = self._counts.get(key, 0) + 1
        calls = self._calls
        if calls is not None:
            ranges, i = self._ranges, self._next
            while i < len(ranges) and self._counts.get(ranges[i][1], 0) >= \
                    calls.get(ranges[i][1], 1 << 30):
                i += 1
            self._next = i
            if i:
                done_from = ranges[i - 1][0]
                if (self._sent - done_from) * self._buf.itemsize >= self.bucket_bytes:
                    self._send(done_from, self._sent)
                    self.overlapped += 1
        if self._requests:
            self.world.MPI.Request.Testall(self._requests)

    def _send(self, lo, hi):
        view = self._buf[lo:hi]
        if self.weight != 1.0:
            np.multiply(view, self.weight, out=view)
        if self.world.size > 1:
            self._requests.append(self.world.comm.Iallreduce(self.world.MPI.IN_PLACE, view,
                                                             op=self.world.MPI.SUM))
        self._sent = lo

    def finish(self, grads):
        """Send what is left of ``grads`` and wait until every rank holds the sum."""
        planned = self._active and self._buf is not None and grads.size == self._buf.size and \
            grads.__array_interface__["data"][0] == self._plan_key[0]
        if not planned:
            # not attached to a model (a hand-written loop): the whole buffer, now
            self._buf, self._sent, self._plan_key = grads, grads.size, None
            self._requests.clear()
        if self._sent > 0:
            self._send(0, self._sent)
        if planned and self._calls is None:
            self._calls = dict(self._counts)
        t0 = time.perf_counter()
        self.world.wait(self._requests, "the gradient allreduce")
        self.wait_seconds += time.perf_counter() - t0
        self.steps += 1
        self._active = False
        self.weight = 1.0 / self.world.size


class _DistributedStep:
    """Mixed in before an optimizer class: ``apply`` sums the ranks' gradients first."""

    def apply(self, params, grads, segments=None):
        if not isinstance(grads, np.ndarray) or grads.ndim != 1 or not grads.flags.c_contiguous:
            raise TypeError("grads must be a 1-D C-contiguous numpy.ndarray (the model's flat "
                            "gradient buffer)")
        reducer = self.__dict__.get("_allreduce")
        if reducer is None:
            reducer = self._allreduce = GradientAllreduce(_comm.world())
        reducer.finish(grads)
        super().apply(params, grads, segments)


_CLASSES = {}


def distributed_class(cls):
    """``cls`` with a distributed ``apply``, under the same name: files written during a
    distributed fit name the plain optimizer and load without fastnet.distributed."""
    if not (isinstance(cls, type) and issubclass(cls, optimizers.Optimizer)):
        raise TypeError(f"expected a fastnet.optimizers.Optimizer subclass, got {cls!r}")
    if issubclass(cls, _DistributedStep):
        return cls
    dcls = _CLASSES.get(cls)
    if dcls is None:
        dcls = _CLASSES[cls] = type(cls.__name__, (_DistributedStep, cls),
                                    {"__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    return dcls


def is_distributed(optimizer):
    return isinstance(optimizer, _DistributedStep)


def DistributedOptimizer(optimizer="adam", bucket_bytes=DEFAULT_BUCKET_BYTES):
    """A copy of ``optimizer`` (a name, config or Optimizer; its state is copied too) whose
    ``apply`` first sums the gradients of every MPI rank, each weighted by its share of the
    global batch (``1 / size`` unless ``fastnet.distributed.fit`` says otherwise).

    It is an instance of a subclass of the optimizer's own class with the same name, so
    ``isinstance(opt, Adam)`` holds and saved models name plain ``Adam``.  Every ``apply`` is a
    collective: all ranks must step together.

    >>> model.compile(optimizer=DistributedOptimizer("adam"), loss="mse")
    """
    opt = optimizers.get(optimizer)
    reducer = GradientAllreduce(_comm.world(), bucket_bytes)
    if is_distributed(opt):
        opt._allreduce = reducer
        return opt
    new = distributed_class(type(opt)).from_config(opt.get_config())
    if opt.built or opt.iterations:
        new.set_state(opt.get_state())
    new._allreduce = reducer
    return new
