"""Layers: forward against NumPy references, backward against finite differences (float64)."""
import numpy as np
import pytest

from fastnet import layers
from _gradcheck import check_layer_grads


def conv_reference(x, k, b, strides, padding):
    n, h, w, c = x.shape
    kh, kw, _, o = k.shape
    sh, sw = strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph = max((oh - 1) * sh + kh - h, 0)
        pw = max((ow - 1) * sw + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
            y[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return y + (b if b is not None else 0)


@pytest.mark.parametrize("act", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_dense_forward_and_grads(act):
    layer = layers.Dense(7, activation=act, dtype="float64")
    layer.build((5,))
    x = np.random.default_rng(1).standard_normal((3, 5))
    z = x @ layer.params["kernel"] + layer.params["bias"]
    ref = {None: z, "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)), "tanh": np.tanh(z),
           "softmax": np.exp(z) / np.exp(z).sum(-1, keepdims=True)}[act]
    np.testing.assert_allclose(layer(x), ref, rtol=1e-12, atol=1e-12)
    check_layer_grads(layers.Dense(4, activation=act, dtype="float64"), (6,), batch=3)


def test_dense_on_rank3_input_acts_on_last_axis():
    layer = layers.Dense(4, dtype="float64")
    x = np.random.default_rng(2).standard_normal((2, 3, 5))
    y = layer(x)
    assert y.shape == (2, 3, 4)
    np.testing.assert_allclose(y, x @ layer.params["kernel"] + layer.params["bias"], atol=1e-12)
    check_layer_grads(layers.Dense(3, dtype="float64"), (2, 5), batch=2)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2, (1, 3)])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_conv2d_forward_and_grads(padding, strides, act):
    layer = layers.Conv2D(3, (3, 2), strides=strides, padding=padding, activation=act,
                          dtype="float64")
    layer.build((7, 6, 2))
    rng = np.random.default_rng(3)
    layer.set_weights([rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(3)])
    x = rng.standard_normal((2, 7, 6, 2))
    z = conv_reference(x, layer.params["kernel"], layer.params["bias"], layer.strides, padding)
    ref = {None: z, "relu": np.maximum(z, 0), "tanh": np.tanh(z)}[act]
    np.testing.assert_allclose(layer(x), ref, rtol=1e-10, atol=1e-10)
    check_layer_grads(layer, (7, 6, 2), batch=2)


def test_conv2d_batch1_no_bias():
    layer = layers.Conv2D(4, 3, use_bias=False, padding="same", dtype="float64")
    check_layer_grads(layer, (5, 5, 3), batch=1)
    assert [w.shape for w in layer.get_weights()] == [(3, 3, 3, 4)]


@pytest.mark.parametrize("pool,strides,padding", [((2, 2), None, "valid"), ((3, 3), 2, "same"),
                                                  ((2, 3), (1, 2), "valid"), (2, 2, "same")])
def test_maxpool_forward_and_grads(pool, strides, padding):
    layer = layers.MaxPooling2D(pool, strides=strides, padding=padding, dtype="float64")
    layer.build((7, 8, 3))
    x = np.random.default_rng(4).standard_normal((2, 7, 8, 3))
    y = layer(x)
    ph, pw = layer.pool_size
    sh, sw = layer.strides
    if padding == "same":
        oh, ow = -(-7 // sh), -(-8 // sw)
        th, tw = max((oh - 1) * sh + ph - 7, 0), max((ow - 1) * sw + pw - 8, 0)
        xp = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)),
                    constant_values=-np.inf)
    else:
        oh, ow, xp = (7 - ph) // sh + 1, (8 - pw) // sw + 1, x
    ref = np.stack([np.stack([xp[:, i * sh:i * sh + ph, j * sw:j * sw + pw].max(axis=(1, 2))
                              for j in range(ow)], 1) for i in range(oh)], 1)
    np.testing.assert_array_equal(y, ref)
    check_layer_grads(layer, (7, 8, 3), batch=2)


def test_flatten_and_activation_layers():
    check_layer_grads(layers.Flatten(dtype="float64"), (3, 4, 2))
    for act in ("relu", "sigmoid", "tanh", "softmax", "linear"):
        check_layer_grads(layers.Activation(act, dtype="float64"), (5,), batch=3)
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(layers.Flatten()(x), x.reshape(2, 12))


def test_glorot_uniform_and_zero_bias_defaults():
    layer = layers.Conv2D(64, (3, 3))
    layer.build((10, 10, 32))
    k, b = layer.get_weights()
    limit = np.sqrt(6 / (9 * 32 + 9 * 64))
    assert k.shape == (3, 3, 32, 64) and k.dtype == np.float32
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert abs(k.std() - limit / np.sqrt(3)) < 0.05 * limit
    np.testing.assert_array_equal(b, 0)
    d = layers.Dense(10)
    d.build((64,))
    assert [w.shape for w in d.get_weights()] == [(64, 10), (10,)]
