"""BatchNormalization: Keras 3 training / inference semantics, gradients, moving statistics,
determinism and folding into the preceding layer."""
import numpy as np
import pytest

import fastnet
from fastnet import layers
from fastnet.layers.normalization import fold_batchnorm, fold_into_conv
from fastnet.ops import norm as norm_ops
from _gradcheck import check_layer_grads
from test_layers import conv_reference


def bn_reference(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def random_bn(shape, dtype="float64", seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    layer = layers.BatchNormalization(dtype=dtype, **kwargs)
    layer.build(shape)
    c = shape[-1]
    new = []
    for name in layer.params:
        v = {"gamma": rng.uniform(0.5, 2, c), "beta": rng.standard_normal(c),
             "moving_mean": rng.standard_normal(c), "moving_variance": rng.uniform(0.5, 2, c)}
        new.append(v[name])
    layer.set_weights(new)
    return layer


@pytest.mark.parametrize("shape", [(6, 5, 7), (9,), (3, 3, 1), (4, 4, 16)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_forward_and_moving_statistics_follow_keras(shape, dtype):
    layer = random_bn(shape, dtype, momentum=0.9, epsilon=1e-3)
    gamma, beta, mm, mv = (w.astype(np.float64) for w in layer.get_weights())
    x = (np.random.default_rng(1).standard_normal((8,) + shape) * 3 + 5).astype(dtype)
    y = layer(x, training=True)
    axes = tuple(range(x.ndim - 1))
    mean, var = x.astype(np.float64).mean(axes), x.astype(np.float64).var(axes)  # biased
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, bn_reference(x, gamma, beta, mean, var, 1e-3), **tol)
    _, _, mm1, mv1 = layer.get_weights()
    np.testing.assert_allclose(mm1, 0.9 * mm + 0.1 * mean, **tol)
    np.testing.assert_allclose(mv1, 0.9 * mv + 0.1 * var, **tol)     # biased var, as Keras


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_inference_uses_moving_statistics_and_leaves_them(dtype):
    layer = random_bn((4, 4, 3), dtype)
    before = layer.get_weights()
    gamma, beta, mm, mv = (w.astype(np.float64) for w in before)
    x = np.random.default_rng(2).standard_normal((5, 4, 4, 3)).astype(dtype)
    y = layer(x, training=False)
    tol = 1e-12 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(y, bn_reference(x, gamma, beta, mm, mv, 1e-3), rtol=tol, atol=tol)
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_frozen_layer_runs_in_inference_mode_like_keras():
    layer = random_bn((6,), trainable=False)
    before = layer.get_weights()
    x = np.random.default_rng(3).standard_normal((10, 6))
    np.testing.assert_array_equal(layer(x, training=True), layer(x, training=False))
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert layer.trainable_weight_names == []
    layer.grads["gamma"][...] = 7.0
    dy = np.random.default_rng(4).standard_normal(x.shape)
    layer.forward(x, training=True)
    dx = layer.backward(dy)
    gamma, _, _, mv = layer.get_weights()
    np.testing.assert_allclose(dx, dy * gamma / np.sqrt(mv + 1e-3), rtol=1e-14)
    np.testing.assert_array_equal(layer.grads["gamma"], 7.0)      # frozen: no weight gradient


def test_inference_mode_gradients_match_finite_differences():
    class InferenceBN(layers.BatchNormalization):
        def forward(self, x, training=False):
            return super().forward(x, training=False)

    layer = InferenceBN(dtype="float64")
    layer.build((3, 3, 4))
    rng = np.random.default_rng(15)
    layer.set_weights([rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4),
                       rng.uniform(0.5, 2, 4)])
    check_layer_grads(layer, (3, 3, 4), batch=2)


def test_moving_mean_converges_to_the_batch_mean():
    layer = layers.BatchNormalization(momentum=0.5, dtype="float64")
    x = np.random.default_rng(4).standard_normal((32, 3)) + [1.0, -2.0, 3.0]
    for k in range(1, 6):
        layer(x, training=True)
        np.testing.assert_allclose(layer.params["moving_mean"], x.mean(0) * (1 - 0.5 ** k),
                                   rtol=1e-12)


@pytest.mark.parametrize("shape,batch", [((4, 5, 3), 3), ((7,), 5), ((2, 3, 8), 4)])
def test_gradients_match_finite_differences(shape, batch):
    check_layer_grads(random_bn(shape, seed=5), shape, batch=batch)
    check_layer_grads(random_bn(shape, seed=6, center=False), shape, batch=batch)
    check_layer_grads(random_bn(shape, seed=7, scale=False, center=False), shape, batch=batch)


def test_gradients_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 5, 4, 7)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    layer = random_bn((5, 4, 7), seed=9, momentum=0.9)
    gamma, beta, mm, mv = layer.get_weights()
    y = layer.forward(x, training=True).copy()
    dx = layer.backward(dy).copy()
    tm = torch.nn.BatchNorm2d(7, eps=1e-3, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        tm.weight[:] = torch.tensor(gamma)
        tm.bias[:] = torch.tensor(beta)
        tm.running_mean[:] = torch.tensor(mm)
        tm.running_var[:] = torch.tensor(mv)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = tm(xt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-12)
    np.testing.assert_allclose(layer.grads["gamma"], tm.weight.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(layer.grads["beta"], tm.bias.grad.numpy(), atol=1e-11)
    # moving statistics: the same mean; PyTorch keeps the unbiased variance, Keras the biased
    m = x.shape[0] * x.shape[1] * x.shape[2]
    np.testing.assert_allclose(layer.params["moving_mean"], tm.running_mean.numpy(), atol=1e-12)
    var = x.reshape(-1, 7).var(0)
    np.testing.assert_allclose(tm.running_var.numpy() - layer.params["moving_variance"],
                               0.1 * var * (m / (m - 1) - 1), atol=1e-12)


def test_weights_order_trainability_and_config():
    layer = layers.BatchNormalization()
    layer.build((5, 5, 4))
    assert list(layer.params) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert layer.trainable_weight_names == ["gamma", "beta"]
    assert layer.non_trainable_weight_names == ["moving_mean", "moving_variance"]
    assert set(layer.grads) == {"gamma", "beta"}        # moving stats never get a gradient
    gamma, beta, mm, mv = layer.get_weights()
    np.testing.assert_array_equal(gamma, 1)
    np.testing.assert_array_equal(mv, 1)
    np.testing.assert_array_equal(beta, 0)
    np.testing.assert_array_equal(mm, 0)
    assert layer.count_params() == 16
    assert len(layer.trainable_weights) == 2 and len(layer.non_trainable_weights) == 2
    nc = layers.BatchNormalization(center=False, scale=False)
    nc.build((3,))
    assert list(nc.params) == ["moving_mean", "moving_variance"] and nc.trainable_weights == []
    cfg = layers.BatchNormalization(momentum=0.9, epsilon=1e-5).get_config()
    assert cfg["momentum"] == 0.9 and cfg["epsilon"] == 1e-5 and cfg["axis"] == -1


def test_threads_bitwise_identical_and_stable_for_large_offsets(monkeypatch):
    monkeypatch.setattr(norm_ops, "PARALLEL_MIN_ELEMENTS", 1)
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((16, 13, 13, 24)) * 0.01 + 1000).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out = {}
    old = fastnet.get_num_threads()
    try:
        for n in (1, 2):
            fastnet.set_num_threads(n)
            layer = random_bn((13, 13, 24), "float32", seed=11)
            y = layer.forward(x, training=True).copy()
            dx = layer.backward(dy).copy()
            out[n] = [y, dx, layer.grads["gamma"].copy()] + layer.get_weights()
    finally:
        fastnet.set_num_threads(old)
    for a, b in zip(out[1], out[2]):
        assert a.tobytes() == b.tobytes()
    # mean 1000, std 0.01: the shifted double accumulation keeps the variance exact
    var = x.astype(np.float64).reshape(-1, 24).var(0)
    y = out[1][0].astype(np.float64).reshape(-1, 24)
    gamma, beta = out[1][3], out[1][4]
    np.testing.assert_allclose(y.std(0), gamma * np.sqrt(var / (var + 1e-3)), rtol=2e-3)
    np.testing.assert_allclose(y.mean(0), beta, atol=2e-3)


def test_fold_batchnorm_into_conv_and_dense():
    rng = np.random.default_rng(12)
    conv = layers.Conv2D(5, 3, dtype="float64")
    conv.build((6, 6, 2))
    conv.set_weights([rng.standard_normal((3, 3, 2, 5)), rng.standard_normal(5)])
    bn = random_bn((4, 4, 5), seed=13)
    x = rng.standard_normal((2, 6, 6, 2))
    expected = bn(conv(x), training=False)
    k, b = fold_batchnorm(conv.params["kernel"], conv.params["bias"], bn)
    np.testing.assert_allclose(conv_reference(x, k, b, (1, 1), "valid"), expected, atol=1e-12)
    k0, _ = fold_batchnorm(conv.params["kernel"], None, bn)       # no bias: bias taken as 0
    np.testing.assert_array_equal(k0, k)
    fold_into_conv(conv, bn)
    np.testing.assert_allclose(conv(x), expected, atol=1e-12)
    dense = layers.Dense(4, dtype="float64")
    dense.build((3,))
    bn2 = random_bn((4,), seed=14)
    x2 = rng.standard_normal((5, 3))
    expected = bn2(dense(x2))
    fold_into_conv(dense, bn2)
    np.testing.assert_allclose(dense(x2), expected, atol=1e-12)
    with pytest.raises(ValueError, match="through its activation"):
        fold_into_conv(layers.Dense(4, activation="relu", input_shape=(3,)), bn2)
    with pytest.raises(TypeError, match="BatchNormalization"):
        fold_batchnorm(k, b, conv)


def test_bad_arguments():
    with pytest.raises(ValueError, match="axis must be -1"):
        layers.BatchNormalization(axis="x")
    with pytest.raises(ValueError, match="only the last axis"):
        layers.BatchNormalization(axis=1).build((4, 4, 3))
    with pytest.raises(ValueError, match="momentum must be in"):
        layers.BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        layers.BatchNormalization(epsilon=0)
    x = np.ones((4, 3), np.float32)
    c = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        norm_ops.batch_norm_forward(np.ones(3, np.float32), c, c, c.copy(), c.copy(),
                                    training=True)
    with pytest.raises(ValueError, match="gamma must have shape \\(3,\\)"):
        norm_ops.batch_norm_forward(x, np.ones(4, np.float32), c, c.copy(), c.copy(),
                                    training=True)
    with pytest.raises(TypeError, match="moving_mean must have dtype float32"):
        norm_ops.batch_norm_forward(x, c, c, np.ones(3), c.copy(), training=True)
    with pytest.raises(TypeError, match="training must be a bool"):
        norm_ops.batch_norm_forward(x, c, c, c.copy(), c.copy(), training=1)
    with pytest.raises(ValueError, match="momentum must be in"):
        norm_ops.batch_norm_forward(x, c, c, c.copy(), c.copy(), training=True, momentum=2)
    mm = c.copy()
    with pytest.raises(ValueError, match="must not overlap"):
        norm_ops.batch_norm_forward(x, c, c, mm, mm, training=True)
    with pytest.raises(ValueError, match="x must have the shape of dy"):
        norm_ops.batch_norm_backward(x, np.ones((5, 3), np.float32), c, c, c)
