"""Sequential models end to end: the Keras API surface, gradients of whole models, training."""
import io

import numpy as np
import pytest

import fastnet
from fastnet import layers, losses, models, optimizers
from fastnet.utils import set_random_seed
from _gradcheck import numeric_grad


def small_cnn(dtype="float32", last="softmax", input_shape=(8, 8, 1)):
    return models.Sequential([
        layers.Conv2D(3, (3, 3), activation="relu", input_shape=input_shape, dtype=dtype),
        layers.MaxPooling2D((2, 2), dtype=dtype),
        layers.Conv2D(4, (2, 2), activation="tanh", padding="same", dtype=dtype),
        layers.Flatten(dtype=dtype),
        layers.Dense(5, activation="relu", dtype=dtype),
        layers.Dense(3, activation=last, dtype=dtype),
    ])


@pytest.mark.parametrize("loss,last", [
    ("sparse_categorical_crossentropy", "softmax"),  # fused softmax + cross-entropy path
    (losses.SparseCategoricalCrossentropy(from_logits=True), None),
    ("categorical_crossentropy", "softmax"),
    (losses.CategoricalCrossentropy(label_smoothing=0.2), "softmax"),
    ("mse", "sigmoid"),
])
def test_whole_model_gradient_matches_finite_differences(loss, last):
    set_random_seed(0)
    model = small_cnn("float64", last)
    model.compile(optimizer="sgd", loss=loss)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 1))
    labels = np.array([0, 2, 1, 2])
    y = labels if "sparse" in model.loss.name else (
        np.eye(3)[labels] if "categorical" in model.loss.name else rng.random((4, 3)))
    y = model.loss.prepare_targets(y, (4, 3), np.float64)

    def f():
        return model._loss_grad(model._forward(x, training=True), y)[0]

    _, g = model._loss_grad(model._forward(x, training=True), y)
    model._backward(g)
    analytic = model._flat_grads.copy()
    idx, num = numeric_grad(f, model._flat_params, max_points=150)
    np.testing.assert_allclose(analytic[idx], num, rtol=1e-5, atol=1e-8)


def test_flat_buffer_holds_every_weight():
    model = small_cnn()
    offsets = []
    for layer in model.layers:
        for w in layer.weights:
            assert np.shares_memory(w, model._flat_params)
            offsets.append(w.__array_interface__["data"][0])
    assert offsets == sorted(offsets)
    assert model.count_params() == sum(w.size for w in model.get_weights())


def test_keras_api_surface(capsys):
    set_random_seed(1)
    model = models.Sequential()
    model.add(layers.Input(shape=(8, 8, 1)))
    model.add(layers.Conv2D(4, 3, activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(3, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    text = capsys.readouterr().out
    assert "conv2d" in text and "(None, 6, 6, 4)" in text and f"{model.count_params():,}" in text
    rng = np.random.default_rng(0)
    x = rng.random((50, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    hist = model.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_split=0.2)
    assert isinstance(hist, fastnet.callbacks.History)
    assert sorted(hist.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(v) == 3 for v in hist.history.values())
    loss, acc = model.evaluate(x, y, verbose=0)
    assert 0 <= acc <= 1 and loss > 0
    assert model.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(loss)
    p = model.predict(x, batch_size=7, verbose=0)
    assert p.shape == (50, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    out = model.train_on_batch(x[:10], y[:10])
    assert len(out) == 2
    weights = model.get_weights()
    model2 = models.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)),
                                layers.Flatten(), layers.Dense(3, activation="softmax")])
    model2.set_weights(weights)
    np.testing.assert_array_equal(model2.predict(x, verbose=0), model.predict(x, verbose=0))


def test_evaluate_without_metrics_returns_scalar_and_validation_data():
    model = small_cnn()
    model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((20, 8, 8, 1))
    y = np.arange(20) % 3
    hist = model.fit(x, y, epochs=2, batch_size=8, verbose=0, validation_data=(x[:6], y[:6]))
    assert set(hist.history) == {"loss", "val_loss"}
    assert isinstance(model.evaluate(x, y, verbose=0), float)


def test_progress_output(capsys):
    model = small_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).random((20, 8, 8, 1))
    model.fit(x, np.arange(20) % 3, epochs=2, batch_size=8, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "3/3" in out and "accuracy:" in out


def test_same_seed_same_weights():
    def run():
        set_random_seed(7)
        model = small_cnn()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(0).random((40, 8, 8, 1))
        model.fit(x, np.arange(40) % 3, epochs=2, batch_size=8, verbose=0)
        return model.get_weights()
    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_input_conversion_is_exact():
    """Any real dtype, order or strides gives the result of the contiguous float32 copy."""
    rng = np.random.default_rng(0)
    base = rng.random((30, 8, 8, 1)) * 255
    y = np.arange(30) % 3
    variants = {
        "float32": base.astype(np.float32),
        "float64": base,
        "fortran": np.asfortranarray(base),
        "strided": np.repeat(base, 2, axis=2)[:, :, ::2, :],
        "uint8": base.astype(np.uint8),
        "int": base.astype(np.int64),
    }
    results = {}
    for name, x in variants.items():
        set_random_seed(3)
        model = small_cnn()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        ref32 = np.ascontiguousarray(x, dtype=np.float32)
        results[name] = (model.predict(x, verbose=0), model.predict(ref32, verbose=0),
                         model.get_weights())
    for name, (p, pref, _) in results.items():
        np.testing.assert_array_equal(p, pref, err_msg=name)
    for name in ("float64", "fortran", "strided"):
        for a, b in zip(results[name][2], results["float32"][2]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_classic_cnn_reaches_95_percent_on_bundled_digits():
    from fastnet import datasets
    from fastnet.cli import build_classic_cnn
    set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    model = build_classic_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    assert acc >= 0.95, acc


def test_per_class_and_instance_metrics():
    from fastnet import metrics
    model = small_cnn()
    f1 = metrics.F1Score()
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=["accuracy", f1, metrics.SparseTopKCategoricalAccuracy(k=2)])
    x = np.random.default_rng(0).random((30, 8, 8, 1))
    y = np.arange(30) % 3
    hist = model.fit(x, y, epochs=2, batch_size=8, verbose=0, validation_data=(x, y))
    assert hist.history["f1_score"][0].shape == (3,)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    # evaluation uses fresh metric state: equal to the validation entry of the last epoch
    np.testing.assert_allclose(logs["f1_score"], hist.history["val_f1_score"][-1])
    assert logs["accuracy"] == pytest.approx(hist.history["val_accuracy"][-1])
