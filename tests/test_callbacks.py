"""Callbacks and the training loop around them: early stopping, checkpoints, CSV, NaN,
learning-rate callbacks, steps_per_epoch, sample/class weights, Ctrl-C, History.plot."""
import csv
import os
import signal
import sys

import numpy as np
import pytest

from fastnet import callbacks, layers, models, optimizers
from fastnet.utils import set_random_seed


def mlp(lr=0.01):
    set_random_seed(0)
    model = models.Sequential([layers.Dense(8, activation="relu", input_shape=(4,)),
                               layers.Dense(3, activation="softmax")])
    model.compile(optimizer=optimizers.SGD(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)


class Recorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            self.calls.append(name)
        return super().__getattribute__(name)


def test_hooks_order_and_history():
    x, y = data()
    rec = Recorder()
    model = mlp()
    hist = model.fit(x, y, epochs=2, batch_size=30, verbose=0, callbacks=[rec],
                     validation_data=(x, y))
    assert rec.calls[0] == "on_train_begin" and rec.calls[-1] == "on_train_end"
    assert rec.calls.count("on_epoch_end") == 2 and rec.calls.count("on_train_batch_end") == 4
    assert hist.epoch == [0, 1] and len(hist.history["val_accuracy"]) == 2


def test_early_stopping_restores_best_weights():
    x, y = data()
    model = mlp(lr=0.0)  # nothing improves: stops after patience epochs
    es = callbacks.EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    hist = model.fit(x, y, epochs=20, verbose=0, callbacks=[es])
    assert len(hist.history["loss"]) == 3 and es.stopped_epoch == 2

    model = mlp(lr=0.5)
    best = {}

    class Keep(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            best[epoch] = (logs["val_loss"], self.model.get_weights())

    es = callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    xv, yv = data(seed=1)
    model.fit(x, y, epochs=15, verbose=0, callbacks=[Keep(), es], validation_data=(xv, -yv + 2))
    epoch = min(best, key=lambda e: best[e][0])
    for a, b in zip(model.get_weights(), best[epoch][1]):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_best_only(tmp_path):
    x, y = data()
    path = str(tmp_path / "ckpt-{epoch:02d}.fnet")
    model = mlp(lr=0.1)
    ck = callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[ck])
    files = sorted(os.listdir(tmp_path))
    assert files == ["ckpt-01.fnet", "ckpt-02.fnet", "ckpt-03.fnet"]  # loss falls every epoch
    restored = models.load_model(tmp_path / "ckpt-03.fnet")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    wpath = tmp_path / "w.fnet"
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(wpath, save_weights_only=True)])
    other = mlp()
    other.load_weights(wpath)
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))


def test_csv_logger(tmp_path):
    x, y = data()
    path = tmp_path / "log.csv"
    mlp().fit(x, y, epochs=3, verbose=0, callbacks=[callbacks.CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and "accuracy" in rows[0]


def test_terminate_on_nan():
    x, y = data()
    x[5, 0] = 1e30  # overflows the loss in float32 after one step at a huge learning rate
    model = mlp(lr=1e30)
    hist = model.fit(x, y, epochs=5, batch_size=10, verbose=0,
                     callbacks=[callbacks.TerminateOnNaN()])
    assert len(hist.history.get("loss", [])) <= 1


def test_lambda_and_lr_callbacks():
    x, y = data()
    seen = []
    model = mlp(lr=0.1)
    sched = callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    lam = callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(
        model.optimizer.learning_rate))
    hist = model.fit(x, y, epochs=3, verbose=0, callbacks=[sched, lam])
    assert seen == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert hist.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    model = mlp(lr=1e-9)  # the loss moves by far less than min_delta: a plateau
    plateau = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)
    hist = model.fit(x, y, epochs=6, verbose=0, callbacks=[plateau])
    # logs carry the rate each epoch ran with (Keras); epoch 0 sets the best, epochs 1-2
    # stall -> halved after epoch 2; epochs 3-4 stall -> halved after epoch 4
    assert hist.history["learning_rate"] == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10,
                                                          2.5e-10])
    with pytest.raises(ValueError, match="factor"):
        callbacks.ReduceLROnPlateau(factor=2)
    with pytest.raises(TypeError, match="unknown hook"):
        callbacks.LambdaCallback(on_batch=print)


def test_steps_per_epoch_streams_through_the_data():
    x, y = data(n=50)
    model = mlp()
    hist = model.fit(x, y, epochs=3, batch_size=20, steps_per_epoch=2, verbose=0)
    assert model.optimizer.iterations == 6 and len(hist.history["loss"]) == 3


def test_sample_and_class_weight():
    x, y = data()
    a, b = mlp(), mlp()
    a.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
          class_weight={0: 2.0, 1: 0.5, 2: 1.0})
    b.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
          sample_weight=np.array([2.0, 0.5, 1.0])[y])
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6)
    c = mlp()
    c.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    assert not np.allclose(c.get_weights()[0], a.get_weights()[0])
    # zero weight for every sample: the loss is 0 and nothing moves
    d = mlp()
    before = d.get_weights()
    d.fit(x, y, epochs=1, verbose=0, sample_weight=np.zeros(len(x)))
    for w0, w1 in zip(before, d.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    with pytest.raises(ValueError, match="sample_weight must be a 1-D array of 60"):
        mlp().fit(x, y, sample_weight=np.ones(3), verbose=0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        mlp().fit(x, y, sample_weight=-np.ones(60), verbose=0)
    with pytest.raises(TypeError, match="class_weight must be a dict"):
        mlp().fit(x, y, class_weight=[1, 2], verbose=0)


@pytest.fixture
def python_ctrl_c():
    """SIGINT -> KeyboardInterrupt for the test, whatever the runner inherited (a CI job
    started in the background by a shell inherits SIGINT ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_after_the_current_batch(capsys, python_ctrl_c):
    x, y = data(n=100)
    model = mlp()

    class Interrupt(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    hist = model.fit(x, y, epochs=5, batch_size=10, verbose=0, callbacks=[Interrupt()])
    assert model.optimizer.iterations == 3
    assert "Interrupted" in capsys.readouterr().out
    assert hist.history == {}
    assert np.isfinite(model.predict(x, verbose=0)).all()
    model.fit(x, y, epochs=1, verbose=0)  # usable, and the default handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_fit_leaves_an_ignored_or_custom_sigint_alone():
    x, y = data(n=40)
    model = mlp()
    seen = []
    for handler in (signal.SIG_IGN, lambda signum, frame: seen.append(signum)):
        old = signal.signal(signal.SIGINT, handler)
        try:
            class Interrupt(callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    if batch == 1:
                        os.kill(os.getpid(), signal.SIGINT)
                        assert signal.getsignal(signal.SIGINT) is handler

            model.fit(x, y, epochs=1, batch_size=10, verbose=0, callbacks=[Interrupt()])
            assert signal.getsignal(signal.SIGINT) is handler
        finally:
            signal.signal(signal.SIGINT, old)
    assert seen == [signal.SIGINT]      # the custom handler got the signal, fit did not stop


def test_history_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    x, y = data()
    hist = mlp().fit(x, y, epochs=3, verbose=0, validation_data=(x, y))
    path = tmp_path / "curves.png"
    hist.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        hist.plot(tmp_path / "other.png")
