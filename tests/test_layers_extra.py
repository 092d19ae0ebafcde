"""Layers of issue 5: activation layers, string activations on Dense/Conv2D, pooling, reshaping
and Dropout; forward against NumPy references, backward against finite differences (float64)."""
import numpy as np
import pytest

import fastnet
from fastnet import layers
from fastnet.ops import dropout as dropout_ops
from _gradcheck import check_layer_grads
from test_activations import ref64
from test_layers import conv_reference

STRING_ACTS = ["softplus", "swish", "silu", "gelu", "elu", "leaky_relu", "relu", "sigmoid",
               "tanh", "softmax", "linear"]


def act_ref(name, z):
    if name in ("softplus", "swish", "gelu", "elu", "leaky_relu"):
        return ref64(name, z)[0]
    if name == "silu":
        return ref64("swish", z)[0]
    return {"relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)), "tanh": np.tanh(z),
            "softmax": np.exp(z) / np.exp(z).sum(-1, keepdims=True), "linear": z}[name]


# ------------------------------------------------------------------ activations as strings
@pytest.mark.parametrize("act", STRING_ACTS)
def test_dense_and_conv_with_string_activations(act):
    rng = np.random.default_rng(STRING_ACTS.index(act))
    dense = layers.Dense(4, activation=act, dtype="float64")
    x = rng.standard_normal((3, 6))
    y = dense(x)
    np.testing.assert_allclose(
        y, act_ref(act, x @ dense.params["kernel"] + dense.params["bias"]), rtol=1e-12,
        atol=1e-14)
    check_layer_grads(layers.Dense(4, activation=act, dtype="float64"), (6,), batch=3)
    conv = layers.Conv2D(3, 3, padding="same", activation=act, dtype="float64")
    conv.build((5, 4, 2))
    conv.set_weights([rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3)])
    x = rng.standard_normal((2, 5, 4, 2))
    z = conv_reference(x, conv.params["kernel"], conv.params["bias"], (1, 1), "same")
    np.testing.assert_allclose(conv(x), act_ref(act, z), rtol=1e-11, atol=1e-13)
    check_layer_grads(conv, (5, 4, 2), batch=2)
    check_layer_grads(layers.Activation(act, dtype="float64"), (2, 5), batch=3)
    assert layers.Activation(act).get_config()["activation"] == \
        {"silu": "swish"}.get(act, act)


@pytest.mark.parametrize("layer,ref", [
    (lambda **k: layers.ReLU(**k), lambda x: np.maximum(x, 0)),
    (lambda **k: layers.ReLU(negative_slope=0.1, **k),
     lambda x: np.where(x > 0, x, 0.1 * x)),
    (lambda **k: layers.LeakyReLU(**k), lambda x: np.where(x > 0, x, 0.3 * x)),  # Keras 3
    (lambda **k: layers.LeakyReLU(negative_slope=0.05, **k),
     lambda x: np.where(x > 0, x, 0.05 * x)),
    (lambda **k: layers.LeakyReLU(alpha=0.5, **k), lambda x: np.where(x > 0, x, 0.5 * x)),
    (lambda **k: layers.ELU(**k), lambda x: np.where(x > 0, x, np.expm1(x))),
    (lambda **k: layers.ELU(alpha=0.4, **k), lambda x: np.where(x > 0, x, 0.4 * np.expm1(x))),
    (lambda **k: layers.GELU(**k), lambda x: ref64("gelu", x)[0]),
    (lambda **k: layers.GELU(approximate=True, **k), lambda x: ref64("gelu_tanh", x)[0]),
    (lambda **k: layers.Softmax(**k), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
])
def test_activation_layers(layer, ref):
    x = np.random.default_rng(3).standard_normal((3, 4, 5)) * 2
    np.testing.assert_allclose(layer(dtype="float64")(x), ref(x), rtol=1e-12, atol=1e-15)
    lay = layer(dtype="float64")
    check_layer_grads(lay, (4, 5), batch=3)
    cfg = lay.get_config()
    assert cfg["name"] == lay.name


def test_activation_layers_match_pytorch_modules():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((6, 9)) * 3
    t = torch.tensor(x)
    nn = torch.nn
    pairs = [(layers.ELU(alpha=0.8, dtype="float64"), nn.ELU(0.8)),
             (layers.LeakyReLU(0.3, dtype="float64"), nn.LeakyReLU(0.3)),
             (layers.GELU(dtype="float64"), nn.GELU()),
             (layers.GELU(approximate=True, dtype="float64"), nn.GELU(approximate="tanh"))]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours(x), theirs(t).numpy(), rtol=1e-12, atol=1e-15)


def test_activation_layer_bad_arguments():
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        layers.LeakyReLU(-0.1)
    with pytest.raises(ValueError, match="negative_slope cannot be None"):
        layers.LeakyReLU(None)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        layers.ELU(-1.0)
    with pytest.raises(ValueError, match="max_value"):
        layers.ReLU(max_value=6.0)
    with pytest.raises(ValueError, match="axis=-1"):
        layers.Softmax(axis=1)
    with pytest.raises(ValueError, match="unknown activation"):
        layers.Dense(3, activation="mish")


# ----------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("pool,strides,padding", [((2, 2), None, "valid"), ((3, 3), 2, "same"),
                                                  ((2, 3), (1, 2), "valid")])
def test_average_pooling(pool, strides, padding):
    layer = layers.AveragePooling2D(pool, strides=strides, padding=padding, dtype="float64")
    x = np.random.default_rng(5).standard_normal((2, 7, 8, 3))
    y = layer(x)
    ph, pw = layer.pool_size
    sh, sw = layer.strides
    if padding == "same":
        oh, ow = -(-7 // sh), -(-8 // sw)
        th, tw = max((oh - 1) * sh + ph - 7, 0) // 2, max((ow - 1) * sw + pw - 8, 0) // 2
    else:
        oh, ow, th, tw = (7 - ph) // sh + 1, (8 - pw) // sw + 1, 0, 0
    ref = np.empty((2, oh, ow, 3))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * sh - th, j * sw - tw
            win = x[:, max(r0, 0):min(r0 + ph, 7), max(c0, 0):min(c0 + pw, 8)]
            ref[:, i, j] = win.mean(axis=(1, 2))      # padded cells excluded, as TensorFlow
    np.testing.assert_allclose(y, ref, rtol=1e-13)
    check_layer_grads(layer, (7, 8, 3), batch=2)


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(keepdims):
    x = np.random.default_rng(6).standard_normal((3, 4, 5, 6))
    avg = layers.GlobalAveragePooling2D(keepdims=keepdims, dtype="float64")
    mx = layers.GlobalMaxPooling2D(keepdims=keepdims, dtype="float64")
    np.testing.assert_allclose(avg(x), x.mean(axis=(1, 2), keepdims=keepdims), rtol=1e-13)
    np.testing.assert_array_equal(mx(x), x.max(axis=(1, 2), keepdims=keepdims))
    assert avg.output_shape == ((1, 1, 6) if keepdims else (6,))
    check_layer_grads(layers.GlobalAveragePooling2D(keepdims=keepdims, dtype="float64"),
                      (4, 5, 6), batch=3)
    check_layer_grads(layers.GlobalMaxPooling2D(keepdims=keepdims, dtype="float64"),
                      (4, 5, 6), batch=3)


def test_global_max_pooling_splits_ties_evenly_like_tensorflow():
    x = np.zeros((1, 2, 2, 2))
    x[0, :, :, 0] = [[1.0, 3.0], [3.0, 3.0]]      # three maxima share the gradient
    x[0, :, :, 1] = [[5.0, 1.0], [2.0, 0.0]]
    layer = layers.GlobalMaxPooling2D(dtype="float64")
    layer.build((2, 2, 2))
    layer.forward(x, training=True)
    dx = layer.backward(np.array([[6.0, 2.0]]))
    np.testing.assert_allclose(dx[0, :, :, 0], [[0, 2], [2, 2]])
    np.testing.assert_allclose(dx[0, :, :, 1], [[2, 0], [0, 0]])


def test_global_pooling_threads_bitwise_identical(monkeypatch):
    from fastnet.ops import spatial
    monkeypatch.setattr(spatial, "PARALLEL_MIN_ELEMENTS", 1)
    x = np.random.default_rng(7).standard_normal((5, 9, 7, 33)).astype(np.float32)
    dy = np.random.default_rng(8).standard_normal((5, 33)).astype(np.float32)
    out = {}
    old = fastnet.get_num_threads()
    try:
        for n in (1, 2):
            fastnet.set_num_threads(n)
            ya = spatial.global_avg_pool2d(x)
            ym = spatial.global_max_pool2d(x)
            out[n] = [ya, ym, spatial.global_avg_pool2d_backward(dy, x.shape),
                      spatial.global_max_pool2d_backward(x, ym, dy),
                      spatial.zero_pad2d(x, ((1, 2), (3, 0)))]
    finally:
        fastnet.set_num_threads(old)
    for a, b in zip(out[1], out[2]):
        assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- reshaping
def test_reshape():
    x = np.arange(2 * 12.0).reshape(2, 3, 4)
    for target, shape in (((12,), (12,)), ((-1, 2), (6, 2)), ((2, -1, 3), (2, 2, 3))):
        layer = layers.Reshape(target, dtype="float64")
        np.testing.assert_array_equal(layer(x), x.reshape((2,) + shape))
        assert layer.output_shape == shape
    check_layer_grads(layers.Reshape((2, -1), dtype="float64"), (3, 4), batch=2)
    with pytest.raises(ValueError, match="at most one -1"):
        layers.Reshape((-1, -1))
    with pytest.raises(ValueError, match="cannot reshape"):
        layers.Reshape((5,)).build((3, 4))
    with pytest.raises(ValueError, match="cannot reshape"):
        layers.Reshape((-1, 5)).build((3, 4))


@pytest.mark.parametrize("padding,expected", [(1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))),
                                              (((1, 2), (3, 0)), ((1, 2), (3, 0)))])
def test_zero_padding(padding, expected):
    layer = layers.ZeroPadding2D(padding, dtype="float64")
    assert layer.padding == expected
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(layer(x), np.pad(x, ((0, 0),) + expected + ((0, 0),)))
    check_layer_grads(layers.ZeroPadding2D(padding, dtype="float64"), (3, 4, 5), batch=2)
    with pytest.raises(ValueError, match="padding must be"):
        layers.ZeroPadding2D((1, 2, 3))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        layers.ZeroPadding2D(-1)


# ------------------------------------------------------------------------------ dropout
def test_dropout_inference_is_the_identity_and_training_scales():
    x = np.random.default_rng(10).standard_normal((64, 26, 26, 8)).astype(np.float32)
    layer = layers.Dropout(0.3, seed=1)
    layer.build(x.shape[1:])
    assert layer.forward(x, training=False) is x          # identity at inference, no copy
    assert layer.backward(x) is x
    y = layer.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.003                  # P(keep) = 1 - rate
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / 0.7))   # inverted scaling
    dy = np.random.default_rng(11).standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, np.where(kept, dy * np.float32(1 / 0.7), 0))
    # the expected value is preserved: E[y] = x, over many masks
    small = np.full((1, 1000), 2.0)
    lay = layers.Dropout(0.5, seed=3, dtype="float64")
    mean = np.mean([lay(small, training=True).mean() for _ in range(200)])
    assert abs(mean - 2.0) < 0.02


def test_dropout_determinism_seed_steps_and_threads(monkeypatch):
    monkeypatch.setattr(dropout_ops, "PARALLEL_MIN_ELEMENTS", 1)
    x = np.random.default_rng(12).standard_normal((16, 13, 13, 32)).astype(np.float32)
    old = fastnet.get_num_threads()
    runs = {}
    try:
        for n in (1, 2):
            fastnet.set_num_threads(n)
            a, b = layers.Dropout(0.5, seed=42), layers.Dropout(0.5, seed=42)
            runs[n] = [a(x, training=True), a(x, training=True), b(x, training=True)]
    finally:
        fastnet.set_num_threads(old)
    for y1, y2 in zip(runs[1], runs[2]):
        assert y1.tobytes() == y2.tobytes()                 # 1 vs 2 threads: bitwise
    first, second, other_layer = runs[1]
    assert first.tobytes() == other_layer.tobytes()        # same seed, same step: same mask
    same = ((first != 0) == (second != 0)).mean()
    assert 0.45 < same < 0.55                              # next step: an independent mask
    assert layers.Dropout(0.5, seed=43)(x, training=True).tobytes() != first.tobytes()


def test_dropout_seed_from_global_seed():
    x = np.ones((4, 100), np.float32)
    fastnet.utils.set_random_seed(7)
    a = layers.Dropout(0.5)(x, training=True)
    fastnet.utils.set_random_seed(7)
    b = layers.Dropout(0.5)(x, training=True)
    assert a.tobytes() == b.tobytes()


def test_dropout_gradient_check_with_a_fixed_mask():
    class FixedMask(layers.Dropout):
        def forward(self, x, training=False):
            self.step = 0       # the same mask on every call, for finite differences
            return super().forward(x, training)

    check_layer_grads(FixedMask(0.4, seed=5, dtype="float64"), (6, 7), batch=3)
    check_layer_grads(FixedMask(0.4, noise_shape=(None, 1, 7), seed=5, dtype="float64"),
                      (6, 7), batch=3)


def test_dropout_noise_shape_broadcasts_the_mask():
    x = np.random.default_rng(13).standard_normal((8, 5, 5, 16))
    layer = layers.Dropout(0.5, noise_shape=(None, 1, 1, 16), seed=2, dtype="float64")
    y = layer(x, training=True)
    dropped = (y == 0).all(axis=(1, 2))                    # whole channels dropped per sample
    kept = (y != 0).all(axis=(1, 2))
    assert (dropped | kept).all() and dropped.any() and kept.any()
    np.testing.assert_allclose(y[kept[:, None, None, :].repeat(5, 1).repeat(5, 2)],
                               2 * x[kept[:, None, None, :].repeat(5, 1).repeat(5, 2)])
    with pytest.raises(ValueError, match="does not broadcast"):
        layers.Dropout(0.5, noise_shape=(None, 2, 1, 16), dtype="float64")(x, training=True)
    with pytest.raises(ValueError, match="must have the rank of the input"):
        layers.Dropout(0.5, noise_shape=(None, 16)).build((5, 5, 16))


def test_dropout_rate_zero_and_bad_arguments():
    x = np.ones((2, 3))
    assert np.array_equal(layers.Dropout(0.0, dtype="float64")(x, training=True), x)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rate must be in"):
            layers.Dropout(bad)
    with pytest.raises(TypeError, match="rate must be a real number"):
        layers.Dropout("0.5")
    with pytest.raises(ValueError, match="seed must be"):
        layers.Dropout(0.5, seed=-1)
    with pytest.raises(ValueError, match="noise_shape must hold"):
        layers.Dropout(0.5, noise_shape=(0, 1))
    x32 = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="mask must be"):
        dropout_ops.dropout_forward(x32, 0.5, 1, 0, mask=np.empty(10, np.int8))
    with pytest.raises(ValueError, match="step must be in"):
        dropout_ops.dropout_forward(x32, 0.5, 1, -1)
    cfg = layers.Dropout(0.25, seed=3).get_config()
    assert cfg["rate"] == 0.25 and cfg["seed"] == 3 and cfg["noise_shape"] is None


# -------------------------------------------------------------------- in a Sequential model
def test_sequential_with_the_new_layers_trains_and_predicts():
    from fastnet import models
    fastnet.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 10, 10, 2)).astype(np.float32)
    y = (x[:, :5].mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    model = models.Sequential([
        layers.ZeroPadding2D(1, input_shape=(10, 10, 2)),
        layers.Conv2D(8, 3, activation="gelu", kernel_regularizer="l2"),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.AveragePooling2D(2),
        layers.Dropout(0.2, seed=1),
        layers.GlobalMaxPooling2D(),
        layers.Reshape((8,)),
        layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    bn = model.layers[2]
    mm = bn.params["moving_mean"].copy()
    p1 = model.predict(x, verbose=0)
    np.testing.assert_array_equal(bn.params["moving_mean"], mm)   # inference: stats unchanged
    hist = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert not np.array_equal(bn.params["moving_mean"], mm)       # training updated them
    p2 = model.predict(x, verbose=0)
    assert p2.shape == (96, 2) and not np.allclose(p1, p2)
    np.testing.assert_array_equal(p2, model.predict(x, verbose=0))   # inference deterministic


def test_new_layers_round_trip_through_save_and_load(tmp_path):
    from fastnet import models, regularizers
    fastnet.utils.set_random_seed(1)
    model = models.Sequential([
        layers.ZeroPadding2D(((1, 0), (2, 1)), input_shape=(6, 6, 3)),
        layers.Conv2D(4, 3, activation="swish", kernel_regularizer=regularizers.l1_l2(0.1, 0.2),
                      bias_regularizer="l2"),
        layers.BatchNormalization(momentum=0.9, epsilon=1e-4, gamma_regularizer="l1"),
        layers.ELU(alpha=0.5), layers.GELU(approximate=True), layers.ReLU(negative_slope=0.1),
        layers.AveragePooling2D(2, padding="same"),
        layers.Dropout(0.3, noise_shape=(None, 1, 1, 4), seed=9),
        layers.GlobalAveragePooling2D(keepdims=True), layers.Reshape((-1,)),
        layers.Dense(3, activation="leaky_relu"), layers.LeakyReLU(0.2), layers.Softmax(),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype(np.float32)
    model.fit(x, np.array([0, 1, 2, 1]), epochs=1, verbose=0)
    path = str(tmp_path / "m.fnet")
    model.save(path)
    loaded = models.load_model(path)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    import json
    for a, b in zip(model.layers, loaded.layers):
        ca, cb = (json.loads(json.dumps(lay.get_config())) for lay in (a, b))
        ca.pop("name"), cb.pop("name")
        assert type(a) is type(b) and ca == cb


def test_spatial_ops_reject_bad_arguments():
    from fastnet.ops import spatial
    x = np.ones((2, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        spatial.global_avg_pool2d(np.ones((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        spatial.global_max_pool2d(x.astype(np.int32))
    with pytest.raises(ValueError, match="out must be a writeable"):
        spatial.global_avg_pool2d(x, out=np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="dy must have shape \\(2, 4\\)"):
        spatial.global_avg_pool2d_backward(np.ones((2, 3), np.float32), x.shape)
    with pytest.raises(ValueError, match="y must have shape"):
        spatial.global_max_pool2d_backward(x, np.ones((2, 3), np.float32),
                                           np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="too small for padding"):
        spatial.zero_pad2d_backward(x, ((2, 1), (0, 0)))
    with pytest.raises(ValueError, match="out must not overlap"):
        spatial.global_avg_pool2d(x, out=x.reshape(-1)[:8].reshape(2, 4))
