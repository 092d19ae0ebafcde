"""The convolution layers beyond plain Conv2D: Conv2D(dilation_rate, groups), DepthwiseConv2D,
SeparableConv2D, Conv2DTranspose, Conv1D and UpSampling2D - NumPy references, float64
finite-difference gradients, training in a Sequential model, configs and bad arguments."""
import json

import numpy as np
import pytest

import fastnet
from fastnet import layers, models
from _gradcheck import check_layer_grads
from test_conv_general import (ref_conv, ref_depthwise, ref_transpose, ref_upsampling)


# --------------------------------------------------------------------- forward vs references
def test_conv2d_dilated_grouped_forward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 11, 6))
    layer = layers.Conv2D(4, 3, padding="same", dilation_rate=(2, 1), groups=2,
                          activation="relu", dtype="float64")
    y = layer(x)
    ref = ref_conv(x, layer.params["kernel"], layer.params["bias"], (1, 1), "same", (2, 1), 2)
    np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-10, atol=1e-10)
    assert layer.params["kernel"].shape == (3, 3, 3, 4)


@pytest.mark.parametrize("shape,dilation,padding", [((10, 12, 3), 2, "same"),
                                                   ((12, 7, 2), (3, 1), "valid"),
                                                   ((5, 5, 2), 4, "same")])   # no phases
def test_conv2d_dilated_by_phases(shape, dilation, padding):
    """groups 1: the phases of the input through fastnet.ops.conv (or, when they would waste
    too much, the general kernels); forward, ReLU-masked gradients and inference folding."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2,) + shape)
    layer = layers.Conv2D(4, 3, padding=padding, dilation_rate=dilation, activation="relu",
                          dtype="float64")
    layer.build(shape)
    layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
    assert (layer._phases is None) == (shape == (5, 5, 2))
    ref = ref_conv(x, layer.params["kernel"], layer.params["bias"], (1, 1), padding,
                   layer.dilation_rate)
    np.testing.assert_allclose(layer(x), np.maximum(ref, 0), rtol=1e-10, atol=1e-10)
    check_layer_grads(layer, shape, batch=2, rtol=1e-5, atol=1e-7)
    bn = layers.BatchNormalization(dtype="float64")
    bn.build(layer.output_shape)
    bn.set_weights([rng.random(w.shape) + 0.5 for w in bn.get_weights()])
    lin = layers.Conv2D(4, 3, padding=padding, dilation_rate=dilation, dtype="float64")
    lin.build(shape)
    lin.set_weights(layer.get_weights())
    np.testing.assert_allclose(lin.forward_folded(x, bn, "relu"),
                               np.maximum(bn.forward(lin.forward(x), training=False), 0),
                               rtol=1e-9, atol=1e-9)


def test_plain_conv2d_keeps_the_fast_path(monkeypatch):
    from fastnet.ops import conv_general
    monkeypatch.setattr(conv_general, "conv2d_general", None)    # would fail if called
    layer = layers.Conv2D(4, 3, dilation_rate=1, groups=1)
    assert layer(np.ones((1, 5, 5, 2), np.float32)).shape == (1, 3, 3, 4)


def test_depthwise_separable_transpose_conv1d_upsampling_forward():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 8, 3))
    dw = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                dtype="float64")
    np.testing.assert_allclose(dw(x), ref_depthwise(x, dw.params["kernel"], dw.params["bias"],
                                                    (2, 2), "same"), rtol=1e-10, atol=1e-10)
    sep = layers.SeparableConv2D(5, 3, dilation_rate=2, depth_multiplier=2, dtype="float64")
    sep.build(x.shape[1:])
    d = ref_depthwise(x, sep.params["depthwise_kernel"], None, (1, 1), "valid", (2, 2))
    ref = np.einsum("nhwc,cf->nhwf", d, sep.params["pointwise_kernel"][0, 0]) + \
        sep.params["bias"]
    np.testing.assert_allclose(sep(x), ref, rtol=1e-10, atol=1e-10)
    tr = layers.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1,
                                dtype="float64")
    y = tr(x)
    np.testing.assert_allclose(y, ref_transpose(x, tr.params["kernel"], (2, 2), "same", (1, 1))
                               + tr.params["bias"], rtol=1e-10, atol=1e-10)
    assert y.shape == (2, 14, 16, 4)
    up = layers.UpSampling2D((2, 3), interpolation="bilinear", dtype="float64")
    np.testing.assert_allclose(up(x), ref_upsampling(x, (2, 3), "bilinear"), rtol=1e-10,
                               atol=1e-10)
    seq = rng.standard_normal((2, 10, 4))
    c1 = layers.Conv1D(3, 3, padding="causal", dilation_rate=2, dtype="float64")
    out = c1(seq)
    k = c1.params["kernel"]
    pad = np.concatenate([np.zeros((2, 4, 4)), seq], axis=1)      # (k - 1) * d zeros on the left
    ref = sum(np.einsum("ntc,cf->ntf", pad[:, 2 * j:2 * j + 10], k[j]) for j in range(3))
    np.testing.assert_allclose(out, ref + c1.params["bias"], rtol=1e-10, atol=1e-10)
    # causal: output step t does not depend on inputs after t
    seq2 = seq.copy()
    seq2[:, 6:] += 1.0
    np.testing.assert_allclose(c1(seq2)[:, :6], out[:, :6], rtol=1e-12, atol=1e-12)


def test_conv1d_shapes_match_keras():
    for padding, strides, dil, steps in [("valid", 1, 1, 8), ("valid", 2, 1, 4), ("same", 2, 1, 5),
                                         ("same", 1, 3, 10), ("causal", 3, 1, 4),
                                         ("causal", 1, 2, 10), ("valid", 1, 2, 6)]:
        layer = layers.Conv1D(2, 3, strides=strides, padding=padding, dilation_rate=dil)
        assert layer(np.zeros((1, 10, 2), np.float32)).shape == (1, steps, 2), (padding, strides)


# ------------------------------------------------------------------ finite-difference checks
GRAD_CASES = [
    ("conv2d dilated", lambda: layers.Conv2D(3, 3, padding="same", dilation_rate=2,
                                             activation="tanh", dtype="float64"), (7, 6, 2)),
    ("conv2d grouped", lambda: layers.Conv2D(4, (3, 2), strides=(2, 1), groups=2,
                                             activation="relu", dtype="float64"), (7, 6, 4)),
    ("conv2d groups=in", lambda: layers.Conv2D(6, 3, padding="same", groups=3,
                                               dtype="float64"), (5, 5, 3)),
    ("depthwise", lambda: layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                                 activation="relu", dtype="float64"), (6, 5, 3)),
    ("depthwise strided", lambda: layers.DepthwiseConv2D((2, 3), strides=(2, 3),
                                                         activation="swish",
                                                         dtype="float64"), (7, 8, 2)),
    ("depthwise dilated", lambda: layers.DepthwiseConv2D(3, dilation_rate=2,
                                                         dtype="float64"), (7, 7, 2)),
    ("separable", lambda: layers.SeparableConv2D(4, 3, padding="same", depth_multiplier=2,
                                                 activation="relu", dtype="float64"), (5, 6, 3)),
    ("separable strided", lambda: layers.SeparableConv2D(3, 3, strides=2, activation="tanh",
                                                         dtype="float64"), (7, 7, 2)),
    ("transpose same", lambda: layers.Conv2DTranspose(3, 3, strides=2, padding="same",
                                                      activation="relu", dtype="float64"),
     (3, 4, 2)),
    ("transpose valid op", lambda: layers.Conv2DTranspose(2, (2, 3), strides=(3, 2),
                                                          output_padding=(1, 1),
                                                          dtype="float64"), (3, 3, 2)),
    ("transpose dilated", lambda: layers.Conv2DTranspose(2, 3, padding="same", dilation_rate=2,
                                                         activation="tanh", dtype="float64"),
     (4, 4, 2)),
    ("transpose even same", lambda: layers.Conv2DTranspose(2, 2, strides=2, padding="same",
                                                           output_padding=0, dtype="float64"),
     (3, 3, 2)),
    ("conv1d causal", lambda: layers.Conv1D(3, 3, padding="causal", dilation_rate=2,
                                            activation="relu", dtype="float64"), (9, 2)),
    ("conv1d same strided", lambda: layers.Conv1D(4, 4, strides=2, padding="same", groups=2,
                                                  dtype="float64"), (9, 4)),
    ("conv1d plain", lambda: layers.Conv1D(3, 3, dtype="float64"), (8, 2)),
    ("upsampling nearest", lambda: layers.UpSampling2D((2, 3), dtype="float64"), (3, 4, 2)),
    ("upsampling bilinear", lambda: layers.UpSampling2D(2, interpolation="bilinear",
                                                        dtype="float64"), (3, 5, 2)),
]


@pytest.mark.parametrize("name,make,shape", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradients_finite_differences(name, make, shape):
    layer = make()
    layer.build(shape)
    if layer.params:   # random biases, so the ReLU masks are not all-or-nothing
        rng = np.random.default_rng(1)
        layer.set_weights([rng.standard_normal(w.shape) * 0.5 for w in layer.get_weights()])
    check_layer_grads(layer, shape, batch=2, rtol=1e-5, atol=1e-7)


def test_frozen_and_first_layer_skip_gradients():
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3))
    for layer in (layers.DepthwiseConv2D(3, dtype="float64"),
                  layers.SeparableConv2D(2, 3, dtype="float64"),
                  layers.Conv2DTranspose(2, 3, dtype="float64"),
                  layers.Conv2D(3, 3, groups=3, dtype="float64")):
        layer.build(x.shape[1:])
        layer.need_input_grad = False
        y = layer.forward(x, training=True)
        assert layer.backward(np.ones_like(y)) is None
        assert all(np.any(g != 0) for g in layer.grads.values())
        layer.trainable = False
        for g in layer.grads.values():
            g[...] = 0
        layer.need_input_grad = True
        assert layer.backward(np.ones_like(y)).shape == x.shape
        assert all(np.all(g == 0) for g in layer.grads.values())


# --------------------------------------------------------------------- training in a model
def _train(model, x, y, epochs=10):
    model.compile(optimizer=fastnet.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    first = model.evaluate(x, y, verbose=0)
    first = first[0] if isinstance(first, (list, tuple)) else first
    hist = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return first, hist.history["loss"][-1]


MODEL_CASES = {
    "conv2d": lambda: [layers.Conv2D(8, 3, padding="same", dilation_rate=2, groups=2,
                                     activation="relu"),
                       layers.Conv2D(8, 3, groups=4, activation="relu")],
    "depthwise": lambda: [layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"),
                          layers.Conv2D(8, 1, activation="relu")],
    "separable": lambda: [layers.SeparableConv2D(8, 3, padding="same", activation="relu"),
                          layers.SeparableConv2D(8, 3, strides=2, activation="relu")],
    "transpose": lambda: [layers.Conv2DTranspose(8, 3, strides=2, padding="same",
                                                 activation="relu"),
                          layers.Conv2D(8, 3, strides=2, activation="relu")],
    "upsampling": lambda: [layers.UpSampling2D(2, interpolation="bilinear"),
                           layers.Conv2D(8, 3, strides=2, activation="relu"),
                           layers.UpSampling2D(2)],
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_trains_in_sequential(case):
    fastnet.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 4)).astype(np.float32)
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    model = models.Sequential([layers.InputLayer(input_shape=(8, 8, 4))] + MODEL_CASES[case]()
                              + [layers.GlobalAveragePooling2D(), layers.Dense(2,
                                                                           activation="softmax")])
    first, last = _train(model, x, y)
    assert np.isfinite(last) and last < first * 0.8, (first, last)


def test_conv1d_trains_in_sequential():
    fastnet.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 16, 3)).astype(np.float32)
    y = (x[:, -4:, 0].sum(axis=1) > 0).astype(np.int64)
    model = models.Sequential([
        layers.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu",
                      input_shape=(16, 3)),
        layers.Conv1D(8, 3, strides=2, padding="same", activation="relu"),
        layers.Flatten(), layers.Dense(2, activation="softmax")])
    first, last = _train(model, x, y)
    assert np.isfinite(last) and last < first * 0.8, (first, last)


def test_folded_batchnorm_inference_with_grouped_conv():
    fastnet.utils.set_random_seed(2)
    x = np.random.default_rng(2).standard_normal((16, 6, 6, 4)).astype(np.float32)
    model = models.Sequential([layers.Conv2D(4, 3, groups=2, dilation_rate=2, padding="same",
                                             input_shape=(6, 6, 4)),
                               layers.BatchNormalization(), layers.Activation("relu"),
                               layers.GlobalAveragePooling2D(), layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.zeros((16, 2), np.float32), epochs=1, batch_size=8, verbose=0)
    y = x
    for layer in model.layers:
        y = layer.forward(y, training=False)
    np.testing.assert_allclose(model.predict(x, verbose=0), y, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- configs, save and load
def test_get_config_round_trip_and_save_load(tmp_path):
    fastnet.utils.set_random_seed(3)
    model = models.Sequential([
        layers.Conv2D(4, 3, padding="same", dilation_rate=2, groups=2, activation="relu",
                      input_shape=(8, 8, 2)),
        layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="tanh",
                               depthwise_regularizer="l2"),
        layers.SeparableConv2D(4, 3, strides=2, depth_multiplier=1, pointwise_regularizer="l1"),
        layers.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1),
        layers.UpSampling2D((1, 2), interpolation="bilinear"),
        layers.GlobalAveragePooling2D(), layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 2)).astype(np.float32)
    model.fit(x, np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    for layer in model.layers:
        cfg = json.loads(json.dumps(layer.get_config()))
        again = type(layer).from_config(cfg)
        assert json.loads(json.dumps(again.get_config())) == cfg
    path = str(tmp_path / "m.fnet")
    model.save(path)
    loaded = models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    c1 = layers.Conv1D(3, 5, strides=1, padding="causal", dilation_rate=2, groups=1)
    assert layers.Conv1D.from_config(c1.get_config()).get_config() == c1.get_config()
    cfg = layers.Conv2DTranspose(2, 3, strides=2, output_padding=1).get_config()
    assert cfg["output_padding"] == (1, 1) and cfg["strides"] == (2, 2)
    assert layers.DepthwiseConv2D(3, depth_multiplier=3).get_config()["depth_multiplier"] == 3


def test_keras_weight_layouts():
    x = np.zeros((1, 8, 8, 6), np.float32)
    for layer, shapes in [
            (layers.Conv2D(4, 3, groups=2), [(3, 3, 3, 4), (4,)]),
            (layers.DepthwiseConv2D((3, 2), depth_multiplier=2), [(3, 2, 6, 2), (12,)]),
            (layers.SeparableConv2D(5, 3, depth_multiplier=2),
             [(3, 3, 6, 2), (1, 1, 12, 5), (5,)]),
            (layers.Conv2DTranspose(5, (3, 2)), [(3, 2, 5, 6), (5,)])]:
        layer(x)
        assert [w.shape for w in layer.get_weights()] == shapes, layer
    c1 = layers.Conv1D(4, 3, groups=2)
    c1(np.zeros((1, 7, 6), np.float32))
    assert [w.shape for w in c1.get_weights()] == [(3, 3, 4), (4,)]
    sep = layers.SeparableConv2D(5, 3)
    sep(x)
    assert list(sep.params) == ["depthwise_kernel", "pointwise_kernel", "bias"]


# ------------------------------------------------------------------------------ bad arguments
def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        layers.Conv2D(6, 3, groups=4)
    with pytest.raises(ValueError, match="input channels must be divisible by groups=2"):
        layers.Conv2D(4, 3, groups=2)(np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="strides > 1 not supported in conjunction"):
        layers.Conv2D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="strides > 1 not supported in conjunction"):
        layers.DepthwiseConv2D(3, strides=(1, 2), dilation_rate=(2, 1))
    with pytest.raises(ValueError, match="strides > 1 not supported in conjunction"):
        layers.SeparableConv2D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="strides > 1 not supported in conjunction"):
        layers.Conv1D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="output_padding must be < strides"):
        layers.Conv2DTranspose(4, 3, strides=2, output_padding=2)
    with pytest.raises(ValueError, match="output_padding must be < strides"):
        layers.Conv2DTranspose(4, 3, output_padding=(0, 1))
    with pytest.raises(ValueError, match="groups"):
        layers.Conv2D(4, 3, groups=0)
    with pytest.raises(ValueError, match="depth_multiplier"):
        layers.DepthwiseConv2D(3, depth_multiplier=0)
    with pytest.raises(ValueError, match="'valid', 'same' or 'causal'"):
        layers.Conv1D(4, 3, padding="full")
    with pytest.raises(ValueError, match="padding"):
        layers.Conv2D(4, 3, padding="causal", dilation_rate=2)
    with pytest.raises(ValueError, match="interpolation"):
        layers.UpSampling2D(2, interpolation="bicubic")
    with pytest.raises(ValueError, match="channels_last"):
        layers.DepthwiseConv2D(3, data_format="channels_first")
    with pytest.raises(ValueError, match="kernel extent 7"):
        layers.Conv2D(4, 3, dilation_rate=3)(np.zeros((1, 6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="expects inputs"):
        layers.Conv1D(4, 3)(np.zeros((1, 6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="kernel_size"):
        layers.Conv1D(4, (3, 3))
