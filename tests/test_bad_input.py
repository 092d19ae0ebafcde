"""Bad calls raise ValueError/TypeError naming the argument, before any kernel runs."""
import numpy as np
import pytest

import fastnet
from fastnet import layers, models, optimizers


def compiled(input_shape=(8, 8, 1), classes=3):
    model = models.Sequential([
        layers.Conv2D(2, 3, activation="relu", input_shape=input_shape),
        layers.Flatten(),
        layers.Dense(classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


X = np.zeros((4, 8, 8, 1), np.float32)
Y = np.array([0, 1, 2, 0])


@pytest.mark.parametrize("x,y,kwargs,exc,match", [
    (np.zeros((4, 8, 8)), Y, {}, ValueError, r"x must have shape \(batch, 8, 8, 1\)"),
    (np.zeros((4, 8, 8, 3)), Y, {}, ValueError, r"x must have shape"),
    (np.zeros((4, 9, 8, 1)), Y, {}, ValueError, r"x must have shape"),
    (X, np.array([0, 1, 3, 0]), {}, ValueError, r"labels must be in \[0, 2\]"),
    (X, np.array([0, -1, 2, 0]), {}, ValueError, r"labels must be in"),
    (X, np.array([0.5, 1, 2, 0]), {}, ValueError, r"integer class labels"),
    (X, Y[:3], {}, ValueError, r"x has 4 samples but y has 3"),
    (np.zeros((0, 8, 8, 1)), Y[:0], {}, ValueError, r"x is empty"),
    (X, Y, {"batch_size": 0}, ValueError, r"batch_size must be >= 1"),
    (X, Y, {"batch_size": 2.5}, TypeError, r"batch_size must be a positive integer"),
    (np.array([["a"] * 64] * 4).reshape(4, 8, 8, 1), Y, {}, TypeError, r"x must hold real numbers"),
    (X, np.array(["a", "b", "c", "d"]), {}, TypeError, r"integer class labels"),
    (X, Y, {"epochs": -1}, ValueError, r"epochs must be"),
    (X, Y, {"validation_split": 1.5}, ValueError, r"validation_split"),
    (np.full((4, 8, 8, 1), np.nan), Y, {}, ValueError, r"NaN or infinite"),
    (X, Y, {"verbose": 5}, ValueError, r"verbose must be"),
])
def test_fit_rejects(x, y, kwargs, exc, match):
    model = compiled()
    before = model.get_weights()
    with pytest.raises(exc, match=match):
        model.fit(x, y, **{"verbose": 0, **kwargs})
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_predict_and_evaluate_reject():
    model = compiled()
    with pytest.raises(ValueError, match="x must have shape"):
        model.predict(np.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError, match="x is empty"):
        model.predict(np.zeros((0, 8, 8, 1)))
    with pytest.raises(TypeError, match="real numbers"):
        model.predict(np.array([object()] * 64).reshape(1, 8, 8, 1))
    with pytest.raises(ValueError, match="batch_size"):
        model.evaluate(X, Y, batch_size=-3)


def test_uncompiled_model():
    model = models.Sequential([layers.Dense(2, input_shape=(3,))])
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(np.zeros((2, 3)), np.zeros(2))


def test_set_weights_checks_count_and_shapes():
    model = compiled()
    w = model.get_weights()
    with pytest.raises(ValueError, match="has 4 weight arrays, got 3"):
        model.set_weights(w[:3])
    bad = list(w)
    bad[0] = np.zeros((3, 3, 1, 5))
    with pytest.raises(ValueError, match=r"kernel must have shape \(3, 3, 1, 2\)"):
        model.set_weights(bad)
    for a, b in zip(w, model.get_weights()):  # nothing was half-written
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 2 arrays"):
        model.layers[0].set_weights([w[0]])
    with pytest.raises(TypeError, match="list of arrays"):
        model.set_weights(w[0])


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m.compile(optimizer="adamm", loss="mse"), ValueError, "unknown optimizer 'adamm'"),
    (lambda m: m.compile(optimizer="adam", loss="crossent"), ValueError, "unknown loss 'crossent'"),
    (lambda m: m.compile(optimizer="adam", loss="mse", metrics=["f1"]), ValueError, "unknown metric"),
    (lambda m: m.compile(optimizer=3, loss="mse"), TypeError, "optimizer must be"),
    (lambda m: optimizers.Adam(learning_rate=-1), ValueError, "learning_rate must be >= 0"),
    (lambda m: optimizers.Adam(beta_1=1.0), ValueError, "beta_1 must be < 1"),
    (lambda m: optimizers.Adam(beta_2=-0.1), ValueError, "beta_2 must be >= 0"),
    (lambda m: optimizers.Adam(epsilon=float("nan")), ValueError, "epsilon must be finite"),
    (lambda m: optimizers.SGD(momentum=2), ValueError, "momentum must be <= 1"),
    (lambda m: optimizers.SGD(learning_rate="fast"), TypeError, "learning_rate must be a number"),
])
def test_compile_and_optimizer_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(compiled())


@pytest.mark.parametrize("make,match", [
    (lambda: layers.Conv2D(0, 3), "filters must be a positive integer"),
    (lambda: layers.Conv2D(4, 0), "kernel_size must be >= 1"),
    (lambda: layers.Conv2D(4, 3, strides=0), "strides must be >= 1"),
    (lambda: layers.Conv2D(4, 3, padding="full"), "padding must be 'valid' or 'same'"),
    (lambda: layers.Conv2D(4, (3, 3, 3)), "kernel_size must be an integer or a pair"),
    (lambda: layers.Dense(0), "units must be a positive integer"),
    (lambda: layers.Dense(4, activation="swishy"), "unknown activation"),
    (lambda: layers.MaxPooling2D(0), "pool_size must be >= 1"),
    (lambda: layers.Dense(4, input_shape=(0,)), "input_shape must hold positive integers"),
])
def test_layer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kernel_larger_than_input_and_wrong_rank():
    with pytest.raises(ValueError, match="kernel size 5 is larger than the input size 4"):
        models.Sequential([layers.Conv2D(2, 5, input_shape=(4, 4, 1))])
    with pytest.raises(ValueError, match="Conv2D expects inputs"):
        models.Sequential([layers.Conv2D(2, 3, input_shape=(8, 8))])
    with pytest.raises(ValueError, match="pool size 3 is larger"):
        models.Sequential([layers.MaxPooling2D(3, input_shape=(2, 2, 1))])
    # 'same' padding makes any kernel fit
    models.Sequential([layers.Conv2D(2, 5, padding="same", input_shape=(4, 4, 1))])


def test_unknown_keyword_and_threads():
    with pytest.raises(TypeError, match="unexpected keyword"):
        layers.Dense(3, unitz=4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        fastnet.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        fastnet.set_num_threads(1.5)
