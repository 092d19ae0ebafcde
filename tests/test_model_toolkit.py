"""The model side of the training toolkit: non-trainable weights, frozen layers,
regularization in loss and gradients, every optimizer by name, demo --plot."""
import numpy as np
import pytest

from fastnet import layers, models, optimizers, regularizers
from fastnet.utils import set_random_seed
from _gradcheck import numeric_grad


def bn_cnn(dtype="float32", reg=None):
    set_random_seed(0)
    return models.Sequential([
        layers.Conv2D(4, 3, padding="same", input_shape=(6, 6, 2), dtype=dtype,
                      kernel_regularizer=reg),
        layers.BatchNormalization(dtype=dtype),
        layers.Activation("relu", dtype=dtype),
        layers.MaxPooling2D(dtype=dtype),
        layers.Flatten(dtype=dtype),
        layers.Dropout(0.25, seed=1, dtype=dtype),
        layers.Dense(3, activation="softmax", dtype=dtype,
                     kernel_regularizer=reg, bias_regularizer=reg),
    ])


X = np.random.default_rng(0).standard_normal((24, 6, 6, 2)).astype(np.float32)
Y = np.arange(24) % 3


def test_moving_statistics_live_outside_the_optimizer_region():
    model = bn_cnn()
    model.compile(optimizers.SGD(0.1, weight_decay=0.5), "sparse_categorical_crossentropy")
    bn = model.layers[1]
    n = model._n_trainable
    for name in ("moving_mean", "moving_variance"):
        offset = (bn.params[name].__array_interface__["data"][0]
                  - model._flat_params.__array_interface__["data"][0]) // 4
        assert offset >= n and name not in bn.grads
    assert model._flat_grads.size == n
    assert model._flat_params.__array_interface__["data"][0] % 64 == 0
    lines = []
    model.summary(print_fn=lines.append)
    assert "Non-trainable params: 8" in "\n".join(lines)
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    # moving stats follow Keras' update from (0, 1), not weight decay towards 0
    assert np.all(bn.params["moving_variance"] > 0.5)


def test_freezing_a_layer_after_compile():
    model = bn_cnn()
    model.compile("rmsprop", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    model.layers[0].trainable = False
    frozen = model.layers[0].get_weights()
    dense = model.layers[-1].get_weights()
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(dense[0], model.layers[-1].get_weights()[0])


def test_regularization_is_in_the_reported_loss_and_the_gradient():
    reg = regularizers.L1L2(l1=0.01, l2=0.02)
    model = bn_cnn("float64", reg)
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = X.astype(np.float64)[:6]
    y = model.loss.prepare_targets(Y[:6], (6, 3), np.float64)
    model.layers[5].rate = 0.0  # dropout off so the objective is deterministic

    def f():
        return model._loss_grad(model._forward(x, training=True), y)[0] + \
            model._regularization_loss()

    for layer in model.layers:  # freeze BN's moving statistics for the finite differences
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 1.0
    _, g = model._loss_grad(model._forward(x, training=True), y)
    model._backward(g)
    analytic = model._flat_grads.copy()
    idx, num = numeric_grad(f, model._flat_params[:model._n_trainable], max_points=120)
    np.testing.assert_allclose(analytic[idx], num, rtol=1e-5, atol=1e-8)
    # evaluate reports data loss + penalty, like Keras
    penalty = sum(reg(w) for l in (model.layers[0], model.layers[-1])
                  for w in ([l.params["kernel"]] + ([l.params["bias"]] if l is model.layers[-1]
                                                    else [])))
    data_loss = model.loss(Y[:6], model.predict(x, verbose=0))
    assert model.evaluate(x, Y[:6], verbose=0) == pytest.approx(data_loss + penalty, rel=1e-9)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_trains_by_name(name):
    model = bn_cnn()
    model.compile(name, "sparse_categorical_crossentropy")
    hist = model.fit(X, Y, epochs=3, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()


def test_inference_folds_batchnorm_and_relu_into_the_kernel():
    set_random_seed(2)
    model = models.Sequential([
        layers.Conv2D(5, 3, input_shape=(7, 7, 2)), layers.BatchNormalization(),
        layers.Activation("relu"), layers.MaxPooling2D(), layers.Flatten(),
        layers.Dense(6), layers.BatchNormalization(), layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(1).standard_normal((32, 7, 7, 2)).astype(np.float32)
    model.fit(x, np.arange(32) % 3, epochs=3, batch_size=8, verbose=0)
    folds = [(type(l).__name__, act) for l, bn, act in model._inference_plan if bn is not None]
    assert folds == [("Conv2D", "relu"), ("Dense", None)]
    unfused = x
    for layer in model.layers:  # layer by layer, nothing folded
        unfused = layer.forward(unfused, training=False)
    np.testing.assert_allclose(model.predict(x, verbose=0), unfused, rtol=1e-5, atol=1e-6)
    loss, _ = model.evaluate(x, np.arange(32) % 3, verbose=0), None
    assert np.isfinite(loss)
