"""A small ``tf.data``-style input pipeline: from_tensor_slices -> shuffle -> batch -> map ->
prefetch, which ``Model.fit`` accepts like Keras accepts a ``tf.data.Dataset``.

>>> ds = (Dataset.from_tensor_slices((x_train, y_train))
...       .shuffle(10_000, seed=1).batch(64)
...       .map(lambda x, y: (augment(x, training=True), y))
...       .prefetch(2))
>>> model.fit(ds, epochs=5)

Design
------
A Dataset is an immutable node; each transformation returns a new node over its parent.
Iterating a node starts a fresh pass (an *iteration*).  Elements are a single array, a tuple
or a dict of arrays (nested tuples/dicts allowed): from_tensor_slices slices every leaf along
its first axis.

Over arrays, ``shuffle``, ``repeat``, ``take`` and ``skip`` work on int64 index chunks, not on
elements: ``batch`` then gathers each batch with one ``np.take`` per array.  The shuffle buffer
(tf.data's rule, in a compiled loop) permutes indices only, so shuffling 60,000 images costs
microseconds and no copies.  Everything else (generators, ``map`` before ``batch``, ``filter``)
goes element by element.

``map`` functions get the element unpacked when it is a tuple (``fn(x, y)``), as in tf.data.
Functions that transform whole batches (augmentation layers, MixUp) belong after ``batch``.

``prefetch(n)`` runs everything upstream on a background thread that keeps up to n batches
ready.  The kernels (np.take, the augmentation kernels, the training step) release the GIL, so
the next batches are prepared while the current step trains; fastnet's augmentation ops run
single-threaded on that thread so they never start a second OpenMP team beside training's.

Randomness: ``shuffle(seed=s)`` orders iteration k with ``default_rng([s, k])``, so every pass
is reproducible (and a different order when ``reshuffle_each_iteration``, the default).  A
seeded augmentation layer in ``map`` draws from its own generator in batch order, so a pipeline
run to the end of each pass is reproducible bitwise; a pass abandoned mid-way under
``prefetch`` may have drawn for up to n extra batches.
"""
import collections.abc
import numbers
import os
import queue
import threading
import warnings

import numpy as np

from fastnet import config
from fastnet.ops import augment as aug_ops
from fastnet.utils.random import get_rng

__all__ = ["Dataset", "INFINITE", "UNKNOWN", "AUTOTUNE"]

INFINITE = -1          # tf.data.INFINITE_CARDINALITY
UNKNOWN = -2           # tf.data.UNKNOWN_CARDINALITY
AUTOTUNE = -1          # prefetch(AUTOTUNE): a default depth of 2
_INDEX_CHUNK = 4096    # indices handed down at a time through shuffle/repeat/take


# ---- element structures ----------------------------------------------------------------------

def _flatten(s):
    if isinstance(s, tuple):
        return [leaf for item in s for leaf in _flatten(item)]
    if isinstance(s, dict):
        return [leaf for key in s for leaf in _flatten(s[key])]
    return [s]


def _pack(s, leaves):
    """Rebuild structure ``s`` from ``leaves`` (an iterator)."""
    if isinstance(s, tuple):
        return tuple(_pack(item, leaves) for item in s)
    if isinstance(s, dict):
        return {key: _pack(s[key], leaves) for key in s}
    return next(leaves)


def _map_structure(fn, s):
    return _pack(s, iter([fn(leaf) for leaf in _flatten(s)]))


def _normalize(tensors):
    """Lists become tuples (tf.data slices a list as one array; fastnet reads (x, y) lists as a
    pair, the common intent), leaves become arrays."""
    if isinstance(tensors, (tuple, list)):
        return tuple(_normalize(t) for t in tensors)
    if isinstance(tensors, dict):
        return {k: _normalize(v) for k, v in tensors.items()}
    return np.asarray(tensors)


def _stack(elements, spec):
    leaves = [_flatten(e) for e in elements]
    out = []
    for j in range(len(leaves[0])):
        parts = [np.asarray(lv[j]) for lv in leaves]
        shapes = {p.shape for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"Dataset.batch: elements have different shapes {sorted(shapes)} "
                             f"in component {j}; images of mixed sizes need resizing (or "
                             f"RandomCrop) before batching")
        out.append(np.stack(parts))
    return _pack(spec, iter(out))


def _call(fn, element):
    return fn(*element) if isinstance(element, tuple) else fn(element)


def _check_count(v, name, allow_minus_one=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if v < (-1 if allow_minus_one else 0):
        raise ValueError(f"{name} must be >= {-1 if allow_minus_one else 0}, got {v}")
    return int(v)


# ---- the Dataset -----------------------------------------------------------------------------

class Dataset:
    """A pipeline of elements; build one with ``from_tensor_slices``, ``from_arrays`` or
    ``from_generator`` and chain ``shuffle``, ``batch``, ``map``, ``filter``, ``repeat``,
    ``take``, ``skip``, ``prefetch``."""

    def __init__(self, parent=None):
        self._parent = parent

    # -- constructors ------------------------------------------------------------------------
    @staticmethod
    def from_tensor_slices(tensors):
        """Elements tensors[i] for i < N: every leaf array (of a tuple or dict) sliced along its
        first axis; all leaves must have the same length N."""
        return _Slices(_normalize(tensors))

    @staticmethod
    def from_arrays(x, y=None, sample_weight=None):
        """Elements x[i], (x[i], y[i]) or (x[i], y[i], w[i]) after checking the arrays: numeric,
        one label (and one weight) per sample, finite non-negative weights."""
        xa = np.asarray(x)
        if xa.ndim < 1 or xa.dtype.kind not in "fiub":
            raise TypeError(f"x must be a numeric array with a sample axis, got {xa.dtype} "
                            f"{xa.shape}")
        if y is None:
            if sample_weight is not None:
                raise ValueError("sample_weight needs y")
            return _Slices(xa)
        from fastnet.preprocessing.cleaning import check_labels
        ya = check_labels(y, xa.shape[0])
        if sample_weight is None:
            return _Slices((xa, ya))
        w = check_labels(sample_weight, xa.shape[0], "sample_weight")
        if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("sample_weight must be 1-D, finite and >= 0")
        return _Slices((xa, ya, w))

    @staticmethod
    def from_generator(generator):
        """Elements from ``generator``: a callable returning an iterable (called at the start
        of every iteration, like tf.data) or an iterable (``iter()`` each time; a one-shot
        iterator can be iterated once)."""
        if not callable(generator) and not isinstance(generator, collections.abc.Iterable):
            raise TypeError(f"from_generator needs a callable or an iterable, "
                            f"got {type(generator).__name__}")
        return _Generator(generator)

    # -- transformations -----------------------------------------------------------------------
    def shuffle(self, buffer_size, seed=None, reshuffle_each_iteration=True):
        """Shuffle through a buffer of ``buffer_size`` elements (>= the dataset size: a uniform
        permutation).  ``seed`` None draws one from the global generator now."""
        buffer_size = _check_count(buffer_size, "buffer_size")
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if seed is not None:
            seed = _check_count(seed, "seed")
        return _Shuffle(self, buffer_size, seed, bool(reshuffle_each_iteration))

    def batch(self, batch_size, drop_remainder=False):
        """Stack ``batch_size`` consecutive elements (the last batch may be smaller unless
        ``drop_remainder``)."""
        batch_size = _check_count(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        return _Batch(self, batch_size, bool(drop_remainder))

    def map(self, fn):
        """Apply ``fn`` to every element (``fn(*element)`` for a tuple element)."""
        if not callable(fn):
            raise TypeError(f"map needs a callable, got {type(fn).__name__}")
        return _Map(self, fn)

    def filter(self, predicate):
        """Keep the elements for which ``predicate`` (called like ``map``'s fn) is true."""
        if not callable(predicate):
            raise TypeError(f"filter needs a callable, got {type(predicate).__name__}")
        return _Filter(self, predicate)

    def repeat(self, count=None):
        """Iterate ``count`` times (None or -1: forever)."""
        count = -1 if count is None else _check_count(count, "count", allow_minus_one=True)
        return _Repeat(self, count)

    def take(self, count):
        """The first ``count`` elements (-1: all)."""
        return _Take(self, _check_count(count, "count", allow_minus_one=True))

    def skip(self, count):
        """All but the first ``count`` elements (-1: none)."""
        return _Skip(self, _check_count(count, "count", allow_minus_one=True))

    def prefetch(self, buffer_size=AUTOTUNE, background=None):
        """Prepare up to ``buffer_size`` elements ahead (AUTOTUNE: 2) on a background thread.

        ``background``: True always uses the thread; False runs the upstream pipeline on the
        consumer's thread when an element is asked for; None (the default) decides at each
        iteration: the thread when this process may use more CPUs than fastnet's kernel
        threads (a core is free for it), else the consumer's thread.  On a machine whose
        cores all run the training step's OpenMP team, a producer thread can only run by
        preempting one of the team's threads, and the whole team then waits at its next
        barrier: the classic CNN at 2 threads on 2 cores trained 5-7% slower fed by the
        thread and 2-4% slower producing on its own thread (benchmarks/bench_data.py).  The
        elements are the same either way."""
        buffer_size = _check_count(buffer_size, "buffer_size", allow_minus_one=True)
        if background is not None and not isinstance(background, bool):
            raise TypeError(f"background must be True, False or None, got {background!r}")
        return _Prefetch(self, 2 if buffer_size == AUTOTUNE else max(buffer_size, 1),
                         background)

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self):
        return self._elements()

    def as_numpy_iterator(self):
        """An iterator over the elements (they are NumPy arrays already)."""
        return iter(self)

    def cardinality(self):
        """The number of elements, INFINITE (-1) or UNKNOWN (-2)."""
        return UNKNOWN

    def __len__(self):
        n = self.cardinality()
        if n == INFINITE:
            raise TypeError("the dataset is infinite")
        if n == UNKNOWN:
            raise TypeError("the dataset's length is unknown")
        return n

    def _elements(self):
        raise NotImplementedError

    def _index_source(self):
        """The _Slices node under an index-only chain (shuffle/repeat/take/skip), or None."""
        return None

    def _index_chunks(self):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__.lstrip('_')}Dataset cardinality={self.cardinality()}>"


class _Slices(Dataset):
    def __init__(self, tensors):
        super().__init__()
        leaves = _flatten(tensors)
        if not leaves:
            raise ValueError("from_tensor_slices needs at least one array")
        lengths = []
        for leaf in leaves:
            if leaf.ndim < 1:
                raise ValueError(f"from_tensor_slices: every array needs a first axis to slice, "
                                 f"got a scalar {leaf!r}")
            if leaf.dtype == object:
                raise TypeError("from_tensor_slices: object arrays are not supported "
                                "(ragged data? stack equal-shaped arrays)")
            lengths.append(leaf.shape[0])
        if len(set(lengths)) > 1:
            raise ValueError(f"from_tensor_slices: the arrays have different lengths {lengths}; "
                             f"x and y need one row per sample")
        self._tensors = tensors
        self._leaves = leaves
        self._n = lengths[0]

    def cardinality(self):
        return self._n

    def _index_source(self):
        return self

    def _index_chunks(self):
        for lo in range(0, self._n, _INDEX_CHUNK):
            yield np.arange(lo, min(self._n, lo + _INDEX_CHUNK), dtype=np.int64)

    def _gather(self, idx):
        return _pack(self._tensors, iter([np.take(leaf, idx, axis=0) for leaf in self._leaves]))

    def _elements(self):
        return _elements_from_indices(self, self._index_chunks())


def _elements_from_indices(source, chunks):
    for chunk in chunks:
        for i in chunk:
            yield _pack(source._tensors, iter([leaf[i] for leaf in source._leaves]))


class _IndexOp(Dataset):
    """A transformation that works on index chunks when its parent does."""

    def _index_source(self):
        return self._parent._index_source()

    def _elements(self):
        source = self._index_source()
        if source is not None:
            return _elements_from_indices(source, self._index_chunks())
        return self._generic_elements()


class _Shuffle(_IndexOp):
    def __init__(self, parent, buffer_size, seed, reshuffle):
        super().__init__(parent)
        self.buffer_size = buffer_size
        self.seed = seed if seed is not None else int(get_rng().integers(0, 2 ** 63))
        self.reshuffle = reshuffle
        self._iterations = 0
        self._lock = threading.Lock()

    def cardinality(self):
        return self._parent.cardinality()

    def _new_rng(self):
        with self._lock:
            k = self._iterations
            if self.reshuffle:
                self._iterations += 1
        return np.random.default_rng([self.seed, k])

    def _index_chunks(self):
        buf = aug_ops.ShuffleBuffer(self.buffer_size, self._new_rng())
        for chunk in self._parent._index_chunks():
            out = buf.feed(chunk)
            if out.size:
                yield out
        out = buf.drain()
        if out.size:
            yield out

    def _generic_elements(self):
        rng = self._new_rng()
        pending = []
        for element in self._parent:
            if len(pending) < self.buffer_size:
                pending.append(element)
                continue
            j = int(rng.random() * len(pending))
            yield pending[j]
            pending[j] = element
        while pending:
            j = int(rng.random() * len(pending))
            yield pending[j]
            pending[j] = pending[-1]
            pending.pop()


class _Repeat(_IndexOp):
    def __init__(self, parent, count):
        super().__init__(parent)
        self.count = count

    def cardinality(self):
        n = self._parent.cardinality()
        if self.count == 0 or n == 0:
            return 0
        if self.count == -1 or n == INFINITE:
            return INFINITE if n != UNKNOWN else UNKNOWN
        return n * self.count if n != UNKNOWN else UNKNOWN

    def _passes(self, make):
        k = 0
        while self.count == -1 or k < self.count:
            empty = True
            for item in make():
                empty = False
                yield item
            if empty:
                return          # an empty dataset repeated forever is empty, not a hang
            k += 1

    def _index_chunks(self):
        return self._passes(self._parent._index_chunks)

    def _generic_elements(self):
        return self._passes(self._parent.__iter__)


class _Take(_IndexOp):
    def __init__(self, parent, count):
        super().__init__(parent)
        self.count = count

    def cardinality(self):
        n = self._parent.cardinality()
        if self.count == -1:
            return n
        if n in (INFINITE, UNKNOWN):
            return self.count if n == INFINITE else UNKNOWN
        return min(n, self.count)

    def _index_chunks(self):
        left = self.count
        if left == 0:
            return
        for chunk in self._parent._index_chunks():
            if left != -1 and chunk.size >= left:
                yield chunk[:left]
                return
            left = left - chunk.size if left != -1 else -1
            yield chunk

    def _generic_elements(self):
        if self.count == 0:
            return
        for k, element in enumerate(self._parent):
            yield element
            if self.count != -1 and k + 1 >= self.count:
                return


class _Skip(_IndexOp):
    def __init__(self, parent, count):
        super().__init__(parent)
        self.count = count

    def cardinality(self):
        n = self._parent.cardinality()
        if n in (INFINITE, UNKNOWN):
            return n
        return 0 if self.count == -1 else max(0, n - self.count)

    def _index_chunks(self):
        if self.count == -1:
            return
        left = self.count
        for chunk in self._parent._index_chunks():
            if left >= chunk.size:
                left -= chunk.size
                continue
            yield chunk[left:]
            left = 0

    def _generic_elements(self):
        if self.count == -1:
            return
        for k, element in enumerate(self._parent):
            if k >= self.count:
                yield element


class _Batch(Dataset):
    def __init__(self, parent, batch_size, drop_remainder):
        super().__init__(parent)
        self.batch_size = batch_size
        self.drop_remainder = drop_remainder

    def cardinality(self):
        n = self._parent.cardinality()
        if n in (INFINITE, UNKNOWN):
            return n
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def _elements(self):
        source = self._parent._index_source()
        if source is not None:
            return self._gathered(source)
        return self._stacked()

    def _gathered(self, source):
        b = self.batch_size
        pending = np.empty(0, dtype=np.int64)
        for chunk in self._parent._index_chunks():
            pending = np.concatenate([pending, chunk]) if pending.size else chunk
            full = pending.size // b * b
            for lo in range(0, full, b):
                yield source._gather(pending[lo:lo + b])
            pending = pending[full:]
        if pending.size and not self.drop_remainder:
            yield source._gather(pending)

    def _stacked(self):
        group, spec = [], None
        for element in self._parent:
            if spec is None:
                spec = element
            group.append(element)
            if len(group) == self.batch_size:
                yield _stack(group, spec)
                group = []
        if group and not self.drop_remainder:
            yield _stack(group, spec)


class _Map(Dataset):
    def __init__(self, parent, fn):
        super().__init__(parent)
        self.fn = fn

    def cardinality(self):
        return self._parent.cardinality()

    def _elements(self):
        fn = self.fn
        for element in self._parent:
            yield _call(fn, element)


class _Filter(Dataset):
    def __init__(self, parent, predicate):
        super().__init__(parent)
        self.predicate = predicate

    def cardinality(self):
        n = self._parent.cardinality()
        return n if n == INFINITE else UNKNOWN

    def _elements(self):
        for element in self._parent:
            if bool(np.all(_call(self.predicate, element))):
                yield element


class _Generator(Dataset):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self._one_shot = not callable(generator) and isinstance(generator,
                                                                collections.abc.Iterator)
        self._used = False

    def _elements(self):
        if self._one_shot:
            if self._used:
                raise RuntimeError("from_generator: the iterator was already consumed; pass a "
                                   "function that returns a new generator to iterate again")
            self._used = True
            return iter(self.generator)
        return iter(self.generator() if callable(self.generator) else self.generator)


# ---- prefetch --------------------------------------------------------------------------------

_END = object()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


def _put(q, stop, item):
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(make_iterator, q, stop):
    """The prefetch thread: run the upstream pipeline into ``q`` until done or stopped."""
    try:
        with aug_ops.single_threaded():
            for item in make_iterator():
                if not _put(q, stop, item):
                    return
        _put(q, stop, _END)
    except BaseException as exc:      # handed to the consumer, raised there
        _put(q, stop, _Failure(exc))


def _spare_core():
    """Whether this process may run on more CPUs than the kernels' thread count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus > config.get_num_threads()


class _Prefetch(Dataset):
    def __init__(self, parent, depth, background=None):
        super().__init__(parent)
        self.depth = depth
        self.background = background

    def cardinality(self):
        return self._parent.cardinality()

    def _elements(self):
        background = _spare_core() if self.background is None else self.background
        if not background:
            return iter(self._parent)
        return PrefetchIterator(self._parent.__iter__, self.depth)


class PrefetchIterator:
    """Runs ``make_iterator()`` on a daemon thread that keeps up to ``depth`` items queued.

    Exceptions raised upstream are re-raised here in order.  ``close()`` (also called when the
    iterator is exhausted or garbage collected: the thread holds no reference to it) stops
    the thread."""

    def __init__(self, make_iterator, depth):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_produce,
                                        args=(make_iterator, self._queue, self._stop),
                                        name="fastnet-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self):
        """Stop the background thread and drop the queued items."""
        self._done = True
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                warnings.warn("fastnet Dataset.prefetch: the background thread is still busy "
                              "in an upstream step; it stops after that step", RuntimeWarning)

    def __del__(self):
        # abandoned mid-pass: tell the thread to stop, without waiting for it here
        try:
            self._stop.set()
            while True:
                self._queue.get_nowait()
        except Exception:               # queue.Empty, or interpreter shutdown
            pass
