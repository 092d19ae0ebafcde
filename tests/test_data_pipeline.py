"""fastnet.data: the Dataset pipeline (slicing, shuffle buffer, batch, map, filter, repeat, take,
skip, prefetch on a background thread), seeded reproducibility of whole augmented pipelines,
stratified splits, and Model.fit / evaluate / predict on datasets, generators and Sequence-like
objects."""
import threading
import time
import warnings

import numpy as np
import pytest

import fastnet
from fastnet import layers, models, optimizers
from fastnet import preprocessing as pp
from fastnet.data import (INFINITE, UNKNOWN, Dataset, is_dataset_like, train_test_split,
                          validation_split)


def _xy(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4, 4, 1)).astype(np.float32), np.arange(n) % 3


def _batches(ds):
    return [tuple(np.array(a) for a in b) if isinstance(b, tuple) else np.array(b) for b in ds]


# ---- elements and batches ----------------------------------------------------------------------

def test_from_tensor_slices_structures_and_batching():
    x, y = _xy()
    ds = Dataset.from_tensor_slices((x, y))
    assert ds.cardinality() == 23 and len(ds) == 23
    first = next(iter(ds))
    np.testing.assert_array_equal(first[0], x[0]) and first[1] == y[0]
    b = list(ds.batch(5))
    assert len(b) == 5 == ds.batch(5).cardinality() and b[-1][0].shape == (3, 4, 4, 1)
    np.testing.assert_array_equal(np.concatenate([u for u, _ in b]), x)
    assert len(list(ds.batch(5, drop_remainder=True))) == 4 == len(ds.batch(5, True))
    d = list(Dataset.from_tensor_slices({"a": x, "b": (y, y * 2)}).batch(10))
    np.testing.assert_array_equal(d[0]["b"][1], y[:10] * 2)
    with pytest.raises(ValueError, match="different lengths"):
        Dataset.from_tensor_slices((x, y[:5]))
    with pytest.raises(ValueError, match="scalar"):
        Dataset.from_tensor_slices((x, 3))
    with pytest.raises(ValueError, match="different shapes"):
        list(Dataset.from_generator(lambda: iter([np.zeros(2), np.zeros(3)])).batch(2))


def test_from_arrays_checks_labels():
    x, y = _xy()
    with pytest.raises(ValueError, match="22 labels but x has 23"):
        Dataset.from_arrays(x, y[:-1])
    with pytest.raises(TypeError, match="numbers"):
        Dataset.from_arrays(x, np.array(["a"] * 23))
    with pytest.raises(ValueError, match="sample_weight"):
        Dataset.from_arrays(x, y, -np.ones(23))
    (xb, yb, wb), = list(Dataset.from_arrays(x, y, np.ones(23)).batch(50))
    assert xb.shape == (23, 4, 4, 1) and wb.shape == (23,)


def test_shuffle_is_seeded_a_permutation_and_reshuffles_each_iteration():
    x, y = _xy(100)
    ds = Dataset.from_tensor_slices((x, y)).shuffle(100, seed=7).batch(16)
    one, two = _batches(ds), _batches(ds)
    order1 = np.concatenate([b[0] for b in one]).reshape(100, -1)[:, 0]
    order2 = np.concatenate([b[0] for b in two]).reshape(100, -1)[:, 0]
    assert sorted(order1) == sorted(x.reshape(100, -1)[:, 0])
    assert not np.array_equal(order1, order2)                      # new order each pass
    again = Dataset.from_tensor_slices((x, y)).shuffle(100, seed=7).batch(16)
    for a, b in zip(one + two, _batches(again) + _batches(again)):   # same seed: same passes
        np.testing.assert_array_equal(a[0], b[0])
    fixed = Dataset.from_tensor_slices(y).shuffle(100, seed=1, reshuffle_each_iteration=False)
    assert list(fixed) == list(fixed)
    # with a buffer of 5, the item at output position k was at most the (k + 4)-th input
    small = np.array(list(Dataset.from_tensor_slices(np.arange(100)).shuffle(5, seed=3)))
    assert sorted(small) == list(range(100)) and (small - np.arange(100) <= 4).all()


def test_generic_path_matches_index_path():
    x, y = _xy(40)
    fast = Dataset.from_tensor_slices((x, y)).shuffle(8, seed=2).batch(6)
    slow = Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a, b)).shuffle(8, seed=2).batch(6)
    for a, b in zip(_batches(fast), _batches(slow)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_repeat_take_skip_filter_and_cardinality():
    base = Dataset.from_tensor_slices(np.arange(10))
    assert list(base.repeat(2).take(13)) == list(range(10)) + [0, 1, 2]
    assert list(base.skip(7)) == [7, 8, 9] and base.skip(7).cardinality() == 3
    assert base.repeat().cardinality() == INFINITE and base.repeat(3).cardinality() == 30
    assert base.repeat().take(4).cardinality() == 4 and list(base.repeat().take(25))[-1] == 4
    assert list(base.take(0)) == [] and list(base.skip(-1)) == [] and list(base.take(-1)) == \
        list(range(10))
    even = base.filter(lambda v: v % 2 == 0)
    assert list(even) == [0, 2, 4, 6, 8] and even.cardinality() == UNKNOWN
    assert list(base.map(lambda v: v * 10).skip(8)) == [80, 90]
    assert list(Dataset.from_tensor_slices(np.zeros(0)).repeat()) == []
    with pytest.raises(TypeError, match="infinite"):
        len(base.repeat())
    with pytest.raises(ValueError, match="buffer_size"):
        base.shuffle(0)
    with pytest.raises(TypeError, match="callable"):
        base.map(3)


def test_from_generator_callable_and_one_shot():
    ds = Dataset.from_generator(lambda: (i * i for i in range(4)))
    assert list(ds) == list(ds) == [0, 1, 4, 9]
    once = Dataset.from_generator(iter([1, 2]))
    assert list(once) == [1, 2]
    with pytest.raises(RuntimeError, match="consumed"):
        list(once)
    assert list(Dataset.from_generator([5, 6]).repeat(2)) == [5, 6, 5, 6]


# ---- prefetch --------------------------------------------------------------------------------

def test_prefetch_yields_the_same_batches_in_order():
    x, y = _xy(50)
    plain = Dataset.from_tensor_slices((x, y)).shuffle(50, seed=4).batch(8)
    pre = Dataset.from_tensor_slices((x, y)).shuffle(50, seed=4).batch(8).prefetch(3)
    for a, b in zip(_batches(plain), _batches(pre)):
        np.testing.assert_array_equal(a[0], b[0])


def test_prefetch_runs_upstream_on_a_background_thread_and_overlaps():
    seen = []

    def slow(v):
        seen.append(threading.current_thread().name)
        time.sleep(0.02)
        return v

    ds = Dataset.from_tensor_slices(np.arange(6)).map(slow).prefetch(6, background=True)
    it = iter(ds)
    time.sleep(0.3)                            # the thread fills the queue meanwhile
    t0 = time.perf_counter()
    assert list(it) == list(range(6))
    assert set(seen) == {"fastnet-prefetch"}
    assert time.perf_counter() - t0 < 0.1      # nothing left to compute: already prepared


def test_prefetch_propagates_errors_and_stops_when_abandoned():
    def boom(v):
        if v == 3:
            raise ZeroDivisionError("bad element 3")
        return v

    it = iter(Dataset.from_tensor_slices(np.arange(10)).map(boom).prefetch(2, background=True))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ZeroDivisionError, match="bad element 3"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    it = iter(Dataset.from_tensor_slices(np.arange(10 ** 6)).repeat().prefetch(2, background=True))
    next(it)
    thread = it._thread
    it.close()
    assert not thread.is_alive()
    it = iter(Dataset.from_tensor_slices(np.arange(10 ** 6)).repeat().prefetch(2, background=True))
    next(it)
    thread = it._thread
    del it                                      # abandoned without close()
    thread.join(timeout=5.0)
    assert not thread.is_alive()


def test_prefetch_uses_a_thread_only_when_a_core_is_free(monkeypatch):
    from fastnet.data import dataset as dsmod
    seen = []

    def where(v):
        seen.append(threading.current_thread().name)
        return v

    base = Dataset.from_tensor_slices(np.arange(4)).map(where)
    main = threading.current_thread().name
    for cpus, threads, expect in ((4, 2, "fastnet-prefetch"), (2, 2, main), (2, 1,
                                                                            "fastnet-prefetch")):
        monkeypatch.setattr(dsmod.os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)),
                            raising=False)
        old = fastnet.get_num_threads()
        fastnet.set_num_threads(threads)
        try:
            seen.clear()
            assert list(base.prefetch(2)) == [0, 1, 2, 3]
            assert set(seen) == {expect}, (cpus, threads)
        finally:
            fastnet.set_num_threads(old)
    seen.clear()
    assert list(base.prefetch(2, background=False)) == [0, 1, 2, 3] and set(seen) == {main}
    seen.clear()
    assert list(base.prefetch(2, background=True)) == [0, 1, 2, 3]
    assert set(seen) == {"fastnet-prefetch"}
    with pytest.raises(TypeError, match="background"):
        base.prefetch(2, background="yes")


def test_augmented_prefetched_pipeline_is_reproducible_bitwise():
    x, y = _xy(64)

    def pipeline():
        rot = pp.RandomRotation(0.1, seed=11)
        trans = pp.RandomTranslation(0.2, 0.2, seed=12)
        return (Dataset.from_tensor_slices((x, y)).shuffle(64, seed=13).batch(10)
                .map(lambda a, b: (trans(rot(a, training=True), training=True), b))
                .prefetch(2))

    a, b = pipeline(), pipeline()
    for _ in range(2):                                  # two epochs each
        for u, v in zip(_batches(a), _batches(b)):
            np.testing.assert_array_equal(u[0], v[0])
            np.testing.assert_array_equal(u[1], v[1])


# ---- splits ------------------------------------------------------------------------------------

def test_stratified_split_keeps_class_proportions():
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=1003, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    x = np.arange(1003)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, seed=1)
    assert len(x_te) == 201 and len(x_tr) == 802
    assert sorted(np.concatenate([x_tr, x_te])) == list(range(1003))
    np.testing.assert_array_equal(y[x_tr], y_tr)
    counts = np.bincount(y, minlength=5)
    test_counts = np.bincount(y_te, minlength=5)
    assert (np.abs(test_counts - counts * 201 / 1003) < 1).all()
    assert (np.abs(np.bincount(y_tr, minlength=5) - counts * 802 / 1003) < 1).all()
    again = train_test_split(x, y, test_size=0.2, stratify=y, seed=1)
    np.testing.assert_array_equal(again[1], x_te)
    other = train_test_split(x, y, test_size=0.2, stratify=y, seed=2)
    assert not np.array_equal(other[1], x_te)
    onehot = np.eye(5)[y]
    assert (np.bincount(train_test_split(x, onehot, test_size=0.2, stratify=onehot,
                                         seed=1)[3].argmax(1), minlength=5) == test_counts).all()


def test_split_sizes_and_errors():
    x = np.arange(10)
    a, b = train_test_split(x, test_size=3, shuffle=False)
    assert a.tolist() == list(range(7)) and b.tolist() == [7, 8, 9]
    a, b = train_test_split(x, train_size=0.5, seed=0)
    assert len(a) == 5 and len(b) == 5
    assert len(train_test_split(x, seed=0)[1]) == 3                  # 25% rounded up
    (xt, yt), (xv, yv) = validation_split(np.arange(40), np.arange(40) % 4, 0.25, seed=0)
    assert len(xv) == 10 and np.bincount(yv).tolist() == [3, 3, 2, 2] or \
        sorted(np.bincount(yv).tolist()) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="one row per sample"):
        train_test_split(x, np.arange(9))
    with pytest.raises(ValueError, match="single sample"):
        train_test_split(x, stratify=[0] * 9 + [1])
    with pytest.raises(ValueError, match="fraction"):
        train_test_split(x, test_size=1.5)
    with pytest.raises(ValueError, match="at least one"):
        train_test_split(x, test_size=10)


# ---- fit / evaluate / predict ------------------------------------------------------------------

def _model(seed=0):
    from fastnet.utils import set_random_seed
    set_random_seed(seed)
    m = models.Sequential([layers.Input((4, 4, 1)), layers.Flatten(),
                           layers.Dense(3, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    return m


def test_fit_on_a_dataset_equals_fit_on_the_same_batches_as_arrays():
    x, y = _xy(40)
    a, b = _model(), _model()
    ha = a.fit(Dataset.from_tensor_slices((x, y)).batch(8), epochs=3, verbose=0)
    hb = b.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6)
    ds = Dataset.from_tensor_slices((x, y)).batch(16)
    np.testing.assert_allclose(a.evaluate(ds, verbose=0), a.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    np.testing.assert_allclose(a.predict(Dataset.from_tensor_slices(x).batch(7), verbose=0),
                               a.predict(x, verbose=0), rtol=1e-6)


def test_fit_with_generators_sequences_weights_and_validation():
    x, y = _xy(40)
    m = _model()

    def gen():
        for i in range(0, 40, 10):
            yield x[i:i + 10], y[i:i + 10], np.ones(len(y[i:i + 10]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = m.fit(Dataset.from_generator(gen), epochs=2, verbose=0,
                  validation_data=Dataset.from_tensor_slices((x, y)).batch(20))
    assert len(h.history["loss"]) == 2 and "val_accuracy" in h.history

    class Seq:
        epochs_ended = 0

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 10:(i + 1) * 10], y[i * 10:(i + 1) * 10]

        def on_epoch_end(self):
            Seq.epochs_ended += 1

    h = m.fit(Seq(), epochs=3, verbose=0, validation_data=(x, y))
    assert Seq.epochs_ended == 3 and len(h.history["val_loss"]) == 3
    assert is_dataset_like(Seq()) and not is_dataset_like(x) and not is_dataset_like([x, x])
    with pytest.warns(RuntimeWarning, match="exhausted"):
        h = m.fit(iter(list(gen())), epochs=3, verbose=0)       # a one-shot generator
    assert len(h.history["loss"]) == 1
    h = m.fit(x, y, batch_size=8, epochs=1, verbose=0,             # arrays + dataset val
              validation_data=Dataset.from_arrays(x, y).batch(8))
    assert "val_loss" in h.history


def test_fit_steps_per_epoch_over_a_repeated_dataset_and_errors():
    x, y = _xy(40)
    m = _model()
    seen = []

    class Count:
        def on_train_batch_end(self, batch, logs):
            seen.append(batch)

    from fastnet.callbacks import Callback
    cb = type("CB", (Callback,), {"on_train_batch_end": Count.on_train_batch_end})()
    m.fit(Dataset.from_tensor_slices((x, y)).batch(8).repeat(), epochs=2, steps_per_epoch=7,
          verbose=0, callbacks=[cb])
    assert seen == list(range(7)) * 2
    h = m.fit(Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, steps_per_epoch=7,
              verbose=0)                          # a finite dataset restarts when it runs out
    assert len(h.history["loss"]) == 2
    with pytest.raises(ValueError, match="infinite"):
        m.fit(Dataset.from_tensor_slices((x, y)).batch(8).repeat(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y must not be given"):
        m.fit(Dataset.from_tensor_slices((x, y)).batch(8), y, verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(Dataset.from_tensor_slices((x, y)).batch(8), batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        m.fit(Dataset.from_tensor_slices(x).batch(8), verbose=0)
    with pytest.raises(ValueError, match="NaN"):
        m.fit(Dataset.from_tensor_slices((x * np.nan, y)).batch(8), verbose=0)
    with pytest.raises(ValueError, match="no batches"):
        m.fit(Dataset.from_tensor_slices((x, y)).take(0).batch(8), verbose=0)


def test_fit_trains_a_model_with_augmentation_in_the_pipeline():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (300, 6, 6, 1)).astype(np.float32)
    y = (x[:, :, :3].mean(axis=(1, 2, 3)) > x[:, :, 3:].mean(axis=(1, 2, 3))).astype(np.int64)
    flip = pp.RandomFlip("vertical", seed=1)          # keeps the left/right label intact
    ds = (Dataset.from_tensor_slices((x, y)).shuffle(300, seed=1).batch(32)
          .map(lambda a, b: (flip(a), b)).prefetch(2))
    from fastnet.utils import set_random_seed
    set_random_seed(1)
    m = models.Sequential([layers.Input((6, 6, 1)), layers.Flatten(),
                           layers.Dense(16, activation="relu"),
                           layers.Dense(2, activation="softmax")])
    m.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(ds, epochs=15, verbose=0)
    assert m.evaluate(x, y, verbose=0)[1] > 0.9
