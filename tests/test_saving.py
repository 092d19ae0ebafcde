"""Model files: round trips, bit-for-bit resumed training, compile settings, weights files."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnet import layers, models, optimizers, schedules
from fastnet.utils import set_random_seed
from fastnet.utils.files import TMP_SUFFIX, _host_tag
from fastnet.utils.random import get_rng


def cnn():
    set_random_seed(0)
    model = models.Sequential([layers.Input(shape=(8, 8, 1)),
                               layers.Conv2D(4, 3, activation="relu", padding="same"),
                               layers.MaxPooling2D(), layers.Flatten(),
                               layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    return model


def stateful_cnn(seed=0):
    """Every kind of training state: BatchNorm moving statistics, Dropout's seed and step
    counter, an optimizer with slots and a schedule, a frozen layer."""
    set_random_seed(seed)
    model = models.Sequential([
        layers.Input(shape=(9, 9, 2)),
        layers.Conv2D(5, 3, padding="same", use_bias=False),
        layers.BatchNormalization(), layers.Activation("relu"),
        layers.MaxPooling2D(), layers.Dropout(0.3),
        layers.Conv2D(6, 2, activation="relu"),
        layers.Flatten(), layers.Dense(7, activation="tanh"),
        layers.Dense(3, activation="softmax")])
    model.layers[-2].trainable = False
    lr = schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.9)
    model.compile(optimizers.Adam(lr, amsgrad=True), "sparse_categorical_crossentropy",
                  ["accuracy"])
    return model


X = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
Y = np.arange(40) % 3
X9 = np.random.default_rng(1).standard_normal((37, 9, 9, 2)).astype(np.float32)
Y9 = np.arange(37) % 3


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_round_trip_predictions_bit_for_bit(tmp_path):
    model = stateful_cnn()
    model.fit(X9, Y9, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.fnet")
    loaded = models.load_model(tmp_path / "m.fnet")
    np.testing.assert_array_equal(loaded.predict(X9, verbose=0), model.predict(X9, verbose=0))
    np.testing.assert_array_equal(loaded.predict(X9[:1], verbose=0),
                                  model.predict(X9[:1], verbose=0))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    assert [l.trainable for l in loaded.layers] == [l.trainable for l in model.layers]
    assert_same_weights(model, loaded)
    # compile settings and optimizer state, step count included
    assert loaded.compiled
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations == 5
    for k, v in model.optimizer.get_state().items():
        np.testing.assert_array_equal(loaded.optimizer.get_state()[k], v)
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()
    assert [m.name for m in loaded.metrics] == [m.name for m in model.metrics]
    assert loaded.layers[4]._seed == model.layers[4]._seed
    assert loaded.layers[4].step == model.layers[4].step == 5
    assert loaded.evaluate(X9, Y9, verbose=0) == model.evaluate(X9, Y9, verbose=0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_resumed_training_equals_uninterrupted(tmp_path, shuffle):
    """Save mid-training (optimizer state, schedule position, dropout counters, BatchNorm
    statistics, the shuffling generator), load, continue: the weights equal, bit for bit,
    those of a run that never stopped."""
    ref = stateful_cnn()
    ref.fit(X9, Y9, epochs=3, batch_size=8, verbose=0, shuffle=shuffle)

    first = stateful_cnn()
    first.fit(X9, Y9, epochs=1, batch_size=8, verbose=0, shuffle=shuffle)
    first.save(tmp_path / "ckpt.fnet")
    del first
    set_random_seed(12345)          # whatever happened in between
    get_rng().integers(0, 10, 7)
    resumed = models.load_model(tmp_path / "ckpt.fnet", restore_random_state=True)
    resumed.fit(X9, Y9, epochs=3, initial_epoch=1, batch_size=8, verbose=0, shuffle=shuffle)
    assert resumed.optimizer.iterations == ref.optimizer.iterations == 15
    assert_same_weights(ref, resumed)
    for k, v in ref.optimizer.get_state().items():
        np.testing.assert_array_equal(resumed.optimizer.get_state()[k], v)


def test_resume_with_train_on_batch_and_sgd(tmp_path):
    def build():
        set_random_seed(3)
        m = models.Sequential([layers.Dense(6, activation="relu", input_shape=(5,)),
                               layers.Dense(2)])
        m.compile(optimizers.SGD(0.05, momentum=0.9, nesterov=True), "mse")
        return m
    x = np.random.default_rng(2).standard_normal((16, 5)).astype(np.float32)
    y = np.random.default_rng(3).standard_normal((16, 2)).astype(np.float32)
    ref = build()
    for _ in range(6):
        ref.train_on_batch(x, y)
    half = build()
    for _ in range(3):
        half.train_on_batch(x, y)
    half.save(tmp_path / "h.fnet")
    resumed = models.load_model(tmp_path / "h.fnet")
    for _ in range(3):
        resumed.train_on_batch(x, y)
    assert_same_weights(ref, resumed)


def test_uncompiled_and_compile_false(tmp_path):
    model = models.Sequential([layers.Dense(3, input_shape=(4,))])
    model.save(tmp_path / "u.fnet")
    loaded = models.load_model(tmp_path / "u.fnet")
    assert not loaded.compiled
    assert_same_weights(model, loaded)
    compiled = cnn()
    compiled.save(tmp_path / "c.fnet")
    assert not models.load_model(tmp_path / "c.fnet", compile=False).compiled


def test_float64_model(tmp_path):
    set_random_seed(1)
    model = models.Sequential([layers.Dense(4, activation="relu", input_shape=(3,),
                                            dtype="float64"),
                               layers.Dense(2, dtype="float64")])
    model.compile("rmsprop", "mse")
    x = np.random.default_rng(0).standard_normal((10, 3))
    model.fit(x, x[:, :2], epochs=1, verbose=0)
    model.save(tmp_path / "d.fnet")
    loaded = models.load_model(tmp_path / "d.fnet")
    assert loaded.get_weights()[0].dtype == np.float64
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_weights_files(tmp_path):
    model = cnn()
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    model.save_weights(tmp_path / "w.fnw")
    other = cnn()
    other.load_weights(tmp_path / "w.fnw")
    assert_same_weights(model, other)
    with pytest.raises(ValueError, match="holds only weights"):
        models.load_model(tmp_path / "w.fnw")
    model.save(tmp_path / "m.fnet")          # a model file also feeds load_weights
    third = cnn()
    third.load_weights(tmp_path / "m.fnet")
    assert_same_weights(model, third)
    wrong = models.Sequential([layers.Dense(2, input_shape=(3,))])
    with pytest.raises(ValueError, match="weight arrays but the model has 2"):
        wrong.load_weights(tmp_path / "w.fnw")
    wrong_shape = models.Sequential([layers.Input(shape=(8, 8, 1)),
                                     layers.Conv2D(5, 3, padding="same"),
                                     layers.MaxPooling2D(), layers.Flatten(),
                                     layers.Dense(3)])
    with pytest.raises(ValueError, match="needs"):
        wrong_shape.load_weights(tmp_path / "w.fnw")


@pytest.mark.parametrize("what", ["save", "save_weights"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, what, error):
    """An error in the middle of writing (a full disk, Ctrl-C) keeps the previous file and
    leaves no temporary file behind."""
    path = tmp_path / "m.fnet"
    model = cnn()
    getattr(model, what)(path)
    before = path.read_bytes()
    real_write_array = np.lib.format.write_array
    calls = []

    def interrupted(fp, arr, *args, **kwargs):
        calls.append(arr.shape)
        if len(calls) == 2:         # the first array is in the temporary file already
            raise error
        return real_write_array(fp, arr, *args, **kwargs)
    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    model.fit(X, Y, epochs=1, verbose=0)
    with pytest.raises(type(error)):
        getattr(model, what)(path)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.fnet"]  # no temporary file left behind
    monkeypatch.undo()
    # a writer killed outright leaves its temporary file: the next save removes it
    stale = tmp_path / f".m.fnet.{dead_pid()}@{_host_tag()}.{'0' * 16}{TMP_SUFFIX}"
    stale.write_bytes(b"partial")
    getattr(model, what)(path)
    assert os.listdir(tmp_path) == ["m.fnet"]


def dead_pid():
    """The pid of a process that has exited."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
    return proc.pid


def functional(seed=0):
    """Two inputs, two outputs, a shared layer, BatchNorm, Dropout and a residual Add."""
    set_random_seed(seed)
    a = layers.Input(shape=(6, 6, 2), name="a")
    b = layers.Input(shape=(6, 6, 2), name="b")
    shared = layers.Conv2D(4, 3, padding="same", name="shared")
    ha, hb = shared(a), shared(b)
    h = layers.Add()([layers.Activation("relu")(layers.BatchNormalization()(ha)), hb])
    h = layers.Dropout(0.25)(layers.Flatten()(h))
    cls = layers.Dense(3, activation="softmax", name="cls")(h)
    reg = layers.Dense(2, name="reg")(layers.Concatenate()([h, layers.Flatten()(b)]))
    model = models.Model([a, b], [cls, reg])
    model.compile(optimizers.Adam(0.01), loss={"cls": "sparse_categorical_crossentropy",
                                               "reg": "mse"},
                  metrics={"cls": ["accuracy"]}, loss_weights=[1.0, 0.5])
    return model


XA = np.random.default_rng(5).standard_normal((30, 6, 6, 2)).astype(np.float32)
XB = np.random.default_rng(6).standard_normal((30, 6, 6, 2)).astype(np.float32)
YC = np.arange(30) % 3
YR = np.random.default_rng(7).standard_normal((30, 2)).astype(np.float32)


def test_functional_round_trip_and_resume(tmp_path):
    ref = functional()
    ref.fit([XA, XB], [YC, YR], epochs=2, batch_size=8, verbose=0)

    first = functional()
    first.fit([XA, XB], [YC, YR], epochs=1, batch_size=8, verbose=0)
    first.save(tmp_path / "f.fnet")
    loaded = models.load_model(tmp_path / "f.fnet", restore_random_state=True)
    assert type(loaded).__name__ == type(first).__name__
    assert loaded.input_names == ["a", "b"] and loaded.output_names == ["cls", "reg"]
    assert_same_weights(first, loaded)
    for p, q in zip(loaded.predict([XA, XB], verbose=0), first.predict([XA, XB], verbose=0)):
        np.testing.assert_array_equal(p, q)
    assert loaded.evaluate([XA, XB], [YC, YR], verbose=0, return_dict=True) == \
        first.evaluate([XA, XB], [YC, YR], verbose=0, return_dict=True)
    loaded.fit([XA, XB], [YC, YR], epochs=2, initial_epoch=1, batch_size=8, verbose=0)
    assert_same_weights(ref, loaded)
