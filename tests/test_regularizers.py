"""L1 / L2 / L1L2 regularizers: penalty values and gradients against NumPy (Keras formulas), and
the layer interface the model uses (regularization_loss, gradients added in backward)."""
import numpy as np
import pytest

import fastnet
from fastnet import layers, regularizers
from fastnet.ops import penalty as penalty_ops
from _gradcheck import numeric_grad


def np_penalty(w, l1, l2):
    w = w.astype(np.float64)
    return l1 * np.abs(w).sum() + l2 * (w * w).sum()          # Keras: no 1/2 on the L2 term


def np_penalty_grad(w, l1, l2):
    return l1 * np.sign(w) + 2 * l2 * w


@pytest.mark.parametrize("reg,l1,l2", [(regularizers.L1(), 0.01, 0.0),
                                       (regularizers.L2(), 0.0, 0.01),
                                       (regularizers.L1L2(), 0.0, 0.0),
                                       (regularizers.l1(0.3), 0.3, 0.0),
                                       (regularizers.l2(1e-4), 0.0, 1e-4),
                                       (regularizers.l1_l2(l1=0.2, l2=0.05), 0.2, 0.05)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_penalty_and_gradient_match_numpy(reg, l1, l2, dtype):
    rng = np.random.default_rng(0)
    for shape in [(1,), (3, 3, 2, 5), (10001,), (257, 129)]:
        w = rng.standard_normal(shape).astype(dtype)
        w.reshape(-1)[0] = 0.0                        # sign(0) = 0
        assert reg(w) == pytest.approx(np_penalty(w, l1, l2), rel=1e-12, abs=1e-300)
        g0 = rng.standard_normal(shape).astype(dtype)
        g = g0.copy()
        assert reg.add_gradient(w, g) is g
        np.testing.assert_allclose(g, g0 + np_penalty_grad(w, l1, l2),
                                   rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)


def test_penalty_threads_bitwise_identical(monkeypatch):
    monkeypatch.setattr(penalty_ops, "PARALLEL_MIN_ELEMENTS", 1)
    w = np.random.default_rng(1).standard_normal(300_001).astype(np.float32)
    old = fastnet.get_num_threads()
    res = {}
    try:
        for n in (1, 2):
            fastnet.set_num_threads(n)
            g = np.ones_like(w)
            penalty_ops.weight_penalty_grad(w, g, 0.1, 0.2)
            res[n] = (penalty_ops.weight_penalty(w, 0.1, 0.2), g.tobytes())
    finally:
        fastnet.set_num_threads(old)
    assert res[1] == res[2]


def test_get_serialize_and_defaults():
    assert regularizers.get(None) is None
    assert regularizers.get("l2") == regularizers.L2(0.01)
    assert regularizers.get("L1") == regularizers.L1(0.01)
    assert regularizers.get("l1_l2") == regularizers.L1L2(0.0, 0.0)     # as Keras 3
    r = regularizers.L1L2(l1=0.1, l2=0.2)
    assert regularizers.get(r) is r
    assert r.get_config() == {"l1": 0.1, "l2": 0.2}
    assert regularizers.deserialize(regularizers.serialize(r)) == r
    assert regularizers.get({"class_name": "L2", "config": {"l2": 0.5}}) == regularizers.L2(0.5)
    assert regularizers.L2.from_config({"l2": 0.3}).l2 == 0.3
    with pytest.raises(ValueError, match="unknown regularizer"):
        regularizers.get("l3")
    with pytest.raises(TypeError, match="regularizer must be"):
        regularizers.get(0.01)
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        regularizers.L2(-1.0)
    with pytest.raises(TypeError, match="l1 must be a real number"):
        regularizers.L1("0.1")
    with pytest.raises(ValueError, match="unknown regularizer class"):
        regularizers.deserialize({"class_name": "Orthogonal"})
    with pytest.raises(ValueError, match="grad must have the shape of w"):
        penalty_ops.weight_penalty_grad(np.ones(3), np.ones(4), 0.1, 0.1)
    w = np.ones(3)
    with pytest.raises(ValueError, match="grad must not overlap w"):
        penalty_ops.weight_penalty_grad(w, w, 0.1, 0.1)


def _layer_objective_check(layer, input_shape, batch=3, seed=0):
    """backward's grads == finite differences of sum(y * r) + regularization_loss()."""
    rng = np.random.default_rng(seed)
    layer.build(input_shape)
    x = rng.standard_normal((batch,) + input_shape)
    r = rng.standard_normal((batch,) + layer.output_shape)

    def f():
        return float(np.sum(layer.forward(x, training=True) * r)) + layer.regularization_loss()

    layer.forward(x, training=True)
    layer.backward(r.copy())
    for name in layer.grads:
        idx, num = numeric_grad(f, layer.params[name])
        np.testing.assert_allclose(layer.grads[name].reshape(-1)[idx], num, rtol=1e-6,
                                   atol=1e-8, err_msg=f"{layer.name}: gradient of {name}")


@pytest.mark.parametrize("need_input_grad", [True, False])
def test_dense_and_conv_regularizers_in_loss_and_gradients(need_input_grad):
    dense = layers.Dense(4, kernel_regularizer=regularizers.l2(0.3),
                         bias_regularizer=regularizers.l1(0.2), dtype="float64")
    dense.need_input_grad = need_input_grad
    _layer_objective_check(dense, (6,))
    k, b = dense.params["kernel"], dense.params["bias"]
    assert dense.regularization_loss() == pytest.approx(
        np_penalty(k, 0, 0.3) + np_penalty(b, 0.2, 0), rel=1e-13)
    conv = layers.Conv2D(3, 3, activation="tanh", kernel_regularizer="l1",
                         bias_regularizer=regularizers.l1_l2(0.1, 0.1), dtype="float64")
    conv.need_input_grad = need_input_grad
    conv.bias_initializer = "random_normal"
    _layer_objective_check(conv, (5, 5, 2), batch=2, seed=1)
    assert conv.regularization_loss() == pytest.approx(
        np_penalty(conv.params["kernel"], 0.01, 0) + np_penalty(conv.params["bias"], 0.1, 0.1))


def test_no_regularizer_and_frozen_layers_add_nothing():
    plain = layers.Dense(3, dtype="float64")
    plain.build((4,))
    assert plain.regularization_loss() == 0.0
    frozen = layers.Dense(3, kernel_regularizer="l2", dtype="float64", trainable=False)
    frozen.build((4,))
    assert frozen.regularization_loss() == 0.0          # Keras: only trainable weights count
    x = np.random.default_rng(2).standard_normal((2, 4))
    frozen.grads["kernel"][...] = 7.0
    frozen.forward(x, training=True)
    dx = frozen.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(frozen.grads["kernel"], 7.0)   # frozen: no weight gradient
    np.testing.assert_allclose(dx, np.ones((2, 3)) @ frozen.params["kernel"].T)
    bn = layers.BatchNormalization(gamma_regularizer="l2", dtype="float64")
    bn.build((3,))
    assert bn.regularization_loss() == pytest.approx(0.01 * 3)    # gamma = 1
    assert layers.Dense(2, kernel_regularizer="l2").get_config()["kernel_regularizer"] == \
        {"class_name": "L2", "config": {"l2": 0.01}}

