"""fastnet.preprocessing: the random augmentation layers (active only in training, seeded,
formulas against NumPy, gradients by finite differences), Normalization / Rescaling /
MinMaxScaling (adapt against NumPy statistics), cleaning reports, MixUp, and a model that
carries its preprocessing layers through save / load."""
import numpy as np
import pytest
from _gradcheck import numeric_grad

import fastnet
from fastnet import layers, models
from fastnet import preprocessing as pp
from fastnet.ops import augment as A

RANDOM_LAYERS = [
    lambda s: pp.RandomFlip(seed=s),
    lambda s: pp.RandomFlip("vertical", seed=s),
    lambda s: pp.RandomRotation(0.2, seed=s),
    lambda s: pp.RandomRotation((-0.1, 0.3), fill_mode="constant", interpolation="nearest",
                                seed=s),
    lambda s: pp.RandomTranslation(0.2, (-0.3, 0.1), fill_mode="wrap", seed=s),
    lambda s: pp.RandomZoom(0.3, seed=s),
    lambda s: pp.RandomZoom((-0.2, 0.0), (0.1, 0.4), fill_mode="nearest", seed=s),
    lambda s: pp.RandomCrop(5, 6, padding=2, seed=s),
    lambda s: pp.RandomBrightness(0.3, value_range=(0, 1), seed=s),
    lambda s: pp.RandomContrast(0.5, value_range=(0, 1), seed=s),
    lambda s: pp.CutOut(0.5, seed=s),
]


def _x(shape=(4, 7, 8, 3), seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(dtype)


@pytest.mark.parametrize("make", RANDOM_LAYERS)
def test_random_layers_are_seeded_and_identity_at_inference(make):
    x = _x()
    a, b, c = make(3), make(3), make(4)
    ya = [a(x, training=True) for _ in range(3)]
    yb = [b(x, training=True) for _ in range(3)]
    for u, v in zip(ya, yb):
        np.testing.assert_array_equal(u, v)               # same seed, same sequence
    assert not np.array_equal(ya[0], ya[1]) or isinstance(a, pp.RandomFlip)
    assert not all(np.array_equal(u, c(x, training=True)) for u in ya)
    inf = a(x, training=False)
    if isinstance(a, pp.RandomCrop):
        np.testing.assert_array_equal(inf, np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))[
            :, 3:8, 3:9])                                    # the centre window
    else:
        np.testing.assert_array_equal(inf, x)
    assert a(x[0], training=True).shape == ya[0].shape[1:]   # one image without batch axis


def test_layers_default_to_training_when_called_like_keras_3():
    x = _x()
    assert not np.array_equal(pp.RandomRotation(0.2, seed=1)(x), x)


def test_random_flip_draws_per_image_with_probability_one_half():
    x = _x((400, 2, 3, 1))
    y = pp.RandomFlip("horizontal", seed=5)(x)
    flipped = np.array([np.array_equal(y[i], x[i, :, ::-1]) for i in range(400)])
    kept = np.array([np.array_equal(y[i], x[i]) for i in range(400)])
    assert (flipped | kept).all() and 150 < flipped.sum() < 250


def test_rotation_and_translation_follow_their_drawn_parameters():
    x = _x((6, 9, 9, 2))
    layer = pp.RandomRotation(0.25, fill_mode="constant", seed=7)
    y = layer(x)
    angles = np.random.default_rng(7).uniform(-0.25, 0.25, 6) * 2 * np.pi
    np.testing.assert_array_equal(y, A.warp(x, A.rotation_transforms(angles, 9, 9),
                                            fill_mode="constant"))
    tr = pp.RandomTranslation(0.5, 0.5, fill_mode="constant", interpolation="nearest", seed=8)
    y = tr(x)
    g = np.random.default_rng(8)
    dy, dx = g.uniform(-0.5, 0.5, 6) * 9, g.uniform(-0.5, 0.5, 6) * 9
    for i in range(6):
        sy, sx = int(np.floor(dy[i] + 0.5)), int(np.floor(dx[i] + 0.5))
        ref = np.zeros_like(x[i])
        ys, xs = slice(max(sy, 0), 9 + min(sy, 0)), slice(max(sx, 0), 9 + min(sx, 0))
        ref[ys, xs] = x[i, max(-sy, 0):9 - max(sy, 0), max(-sx, 0):9 - max(sx, 0)]
        np.testing.assert_array_equal(y[i], ref)


def test_brightness_contrast_cutout_formulas():
    x = _x((5, 4, 6, 3))
    y = pp.RandomBrightness((-0.5, 0.5), value_range=(0, 1), seed=2)(x)
    delta = np.random.default_rng(2).uniform(-0.5, 0.5, 5)
    np.testing.assert_allclose(y, np.clip(x + delta[:, None, None, None], 0, 1), atol=1e-6)
    y = pp.RandomContrast((0.5, 0.8), value_range=(0, 1), seed=3)(x)
    f = np.random.default_rng(3).uniform(0.5, 1.8, 5)[:, None, None, None]
    mean = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, np.clip((x - mean) * f + mean, 0, 1), atol=1e-6)
    y = pp.CutOut(0.5, 0.5, fill_value=-1.0, seed=4)(x)
    cut = (y == -1.0).all(axis=3)
    for i in range(5):
        rows, cols = np.nonzero(cut[i])
        if rows.size:              # a rectangle, the rest untouched
            assert cut[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert rows.max() - rows.min() + 1 <= 2 and cols.max() - cols.min() + 1 <= 3
        np.testing.assert_array_equal(y[i][~cut[i]], x[i][~cut[i]])


def test_random_crop_padding_and_shapes():
    x = _x((8, 6, 6, 1))
    layer = pp.RandomCrop(6, 6, padding=2, seed=1)
    y = layer(x)
    p = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(8):                    # every output is some 6x6 window of the padding
        assert any(np.array_equal(y[i], p[i, t:t + 6, l:l + 6])
                   for t in range(5) for l in range(5))
    with pytest.raises(ValueError, match="cannot crop"):
        pp.RandomCrop(11, 6, padding=2)(x)


@pytest.mark.parametrize("make", RANDOM_LAYERS + [
    lambda s: pp.Normalization(mean=[0.2, 0.5, 0.1], variance=[4.0, 0.25, 1.0]),
    lambda s: pp.Rescaling(0.5, offset=-1.0),
    lambda s: pp.MinMaxScaling()])
def test_backward_matches_finite_differences(make):
    """Each layer's backward against finite differences of a forward with the same random
    parameters (a second layer with the same seed draws them)."""
    x = _x((2, 5, 4, 3), seed=1, dtype=np.float64) * 0.8 + 0.1
    layer = make(11) if not isinstance(make(0), pp.MinMaxScaling) else make(0)
    layer.dtype = np.dtype(np.float64)
    if isinstance(layer, pp.MinMaxScaling):
        layer.adapt(x)
    layer.build(x.shape[1:])
    y = layer.forward(x, training=True).copy()
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx = layer.backward(dy).copy()

    def f(z):
        twin = make(11)
        twin.dtype = np.dtype(np.float64)
        twin.build(z.shape[1:])
        for name in twin.params:
            twin.params[name][...] = layer.params[name]
        return twin.forward(z, training=True)

    idx, num = numeric_grad(lambda: float(np.sum(f(x) * dy)), x)
    np.testing.assert_allclose(dx.reshape(-1)[idx], num, atol=1e-6)
    layer.need_input_grad = False
    assert layer.backward(dy) is None


# ---- scaling layers --------------------------------------------------------------------------

def test_normalization_adapt_matches_numpy_and_streams():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (50, 6, 5, 3)).astype(np.uint8)
    norm = pp.Normalization()
    norm.adapt(x)
    mean, var = norm.get_weights()
    ref = x.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, ref.var(0), rtol=1e-5)
    y = norm(x)
    np.testing.assert_allclose(y.reshape(-1, 3).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.reshape(-1, 3).std(0), 1, atol=1e-4)
    streamed = pp.Normalization()
    streamed.adapt(fastnet.data.Dataset.from_tensor_slices((x, np.zeros(50))).batch(7))
    for a, b in zip(streamed.get_weights(), norm.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    chunks = pp.Normalization()
    chunks.adapt(x, batch_size=9)
    np.testing.assert_allclose(chunks.get_weights()[1], var, rtol=1e-5)


def test_normalization_axes_invert_and_fixed_statistics():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 4, 3)).astype(np.float32) * 3 + 1
    for axis, keep in [(-1, (2,)), (1, (1,)), ((1, 2), (1, 2)), (None, ())]:
        norm = pp.Normalization(axis=axis)
        norm.adapt(x)
        red = tuple(a for a in range(3) if a not in keep)
        np.testing.assert_allclose(norm.get_weights()[0].reshape(-1),
                                   x.mean(axis=red).reshape(-1), rtol=1e-5, atol=1e-6)
        y = norm(x)
        np.testing.assert_allclose(y.mean(axis=red), 0, atol=1e-5)
        inv = pp.Normalization(axis=axis, invert=True)
        inv.build(x.shape[1:])
        inv.set_weights(norm.get_weights())
        np.testing.assert_allclose(inv(y), x, rtol=1e-4, atol=1e-4)
    fixed = pp.Normalization(mean=2.0, variance=4.0)
    np.testing.assert_allclose(fixed(np.full((1, 3), 6.0)), 2.0)
    with pytest.raises(ValueError, match="batch axis"):
        pp.Normalization(axis=0).build((3,))
    with pytest.raises(ValueError, match="both"):
        pp.Normalization(mean=1.0)
    with pytest.raises(ValueError, match="NaN"):
        pp.Normalization().adapt(np.array([[1.0], [np.nan]]))


def test_rescaling_and_minmax():
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_allclose(pp.Rescaling(1 / 255.0)(x), x / 255.0, rtol=1e-6)
    np.testing.assert_allclose(pp.Rescaling(2.0, -1.0)(x), 2 * x - 1)
    table = np.array([[1.0, 5.0, 3.0], [3.0, 5.0, -1.0], [2.0, 5.0, 1.0]])
    scaled = pp.minmax_scale(table)
    ref = (table - table.min(0)) / np.where(np.ptp(table, 0) > 0, np.ptp(table, 0), 1.0)
    np.testing.assert_allclose(scaled, ref, atol=1e-7)
    layer = pp.MinMaxScaling((-1, 1))
    layer.adapt(table)
    np.testing.assert_allclose(layer(table), ref * 2 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="feature_range"):
        pp.MinMaxScaling((1, 0))


# ---- cleaning ----------------------------------------------------------------------------------

def test_drop_invalid_rows_reports_what_it_dropped():
    x = np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 2.0], [3.0, np.inf], [3.0, 4.0],
                  [3.0, 4.0], [-0.0, 5.0], [0.0, 5.0]])
    y = np.array([0, 1, 0, 1, 1, 0, 2, 2])
    xc, yc, report = pp.drop_invalid_rows(x, y)
    np.testing.assert_array_equal(xc, x[[0, 4, 5, 6]])
    np.testing.assert_array_equal(yc, y[[0, 4, 5, 6]])
    assert report.nonfinite.tolist() == [1, 3]
    assert report.duplicates.tolist() == [2, 7] and report.duplicate_of.tolist() == [0, 6]
    assert report.conflicting == 1 and report.n_kept == 4 and report.n_dropped == 4
    text = str(report)
    assert "dropped 4 of 8 rows" in text and "NaN or inf (rows 1, 3)" in text
    assert "2 repeats 0" in text and "different labels" in text
    xo, rep = pp.drop_invalid_rows(x, drop_duplicates=False)
    assert rep.nonfinite.tolist() == [1, 3] and len(xo) == 6
    assert str(pp.drop_invalid_rows(np.eye(3))[1]).endswith("nothing to clean")
    nan_label = pp.drop_invalid_rows(np.eye(2), np.array([0.0, np.nan]))[2]
    assert nan_label.nonfinite.tolist() == [1]
    with pytest.raises(ValueError, match="3 labels but x has 8"):
        pp.drop_invalid_rows(x, y[:3])
    with pytest.raises(TypeError, match="numbers"):
        pp.drop_invalid_rows(x, np.array(list("abcdefgh")))


# ---- MixUp --------------------------------------------------------------------------------------

def test_mixup_mixes_images_and_labels_alike():
    x = _x((6, 3, 3, 1))
    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    xm, ym = pp.MixUp(0.4, seed=5)(x, y)
    g = np.random.default_rng(5)
    w = g.beta(0.4, 0.4, 6)
    p = g.permutation(6)
    np.testing.assert_allclose(xm, w[:, None, None, None] * x
                               + (1 - w[:, None, None, None]) * x[p], atol=1e-6)
    np.testing.assert_allclose(ym, w[:, None] * y + (1 - w[:, None]) * y[p], atol=1e-6)
    np.testing.assert_allclose(ym.sum(1), 1, atol=1e-6)
    d = pp.MixUp(0.4, num_classes=4, seed=5)({"images": x, "labels": np.array([0, 1, 2, 3, 0, 1])})
    np.testing.assert_allclose(d["labels"], ym, atol=1e-6)
    xs, ys = pp.MixUp(seed=1)(x, y, training=False)
    np.testing.assert_array_equal(xs, x)
    with pytest.raises(TypeError, match="num_classes"):
        pp.MixUp()(x, np.arange(6))
    with pytest.raises(ValueError, match="labels"):
        pp.MixUp()(x)
    assert pp.MixUp.from_config(pp.MixUp(0.3, seed=2).get_config()).alpha == 0.3


# ---- in a model ------------------------------------------------------------------------------

def test_model_carries_preprocessing_layers_through_save_and_load(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 255, (64, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int64)
    norm = pp.Normalization()
    norm.adapt(x)
    model = models.Sequential([
        layers.Input((8, 8, 1)), norm, pp.RandomFlip("horizontal", seed=1),
        pp.RandomRotation(0.05, seed=2), pp.RandomTranslation(0.1, 0.1, seed=3),
        pp.RandomZoom(0.1, seed=4), pp.RandomCrop(8, 8, padding=1, seed=5),
        pp.RandomContrast(0.1, value_range=(-5, 5), seed=6),
        pp.RandomBrightness(0.05, value_range=(-5, 5), seed=7), pp.CutOut(0.2, seed=8),
        layers.Conv2D(4, 3, activation="relu"), layers.Flatten(),
        layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "m.fnet"
    model.save(path)
    loaded = models.load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    np.testing.assert_array_equal(loaded.layers[0].get_weights()[0], norm.get_weights()[0])
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert loaded.layers[2].get_config()["factor"] == 0.05
    assert norm.trainable_weight_names == [] and set(norm.non_trainable_weight_names) == {
        "mean", "variance"}


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="mode"):
        pp.RandomFlip("diagonal")
    with pytest.raises(ValueError, match="fill_mode"):
        pp.RandomRotation(0.1, fill_mode="mirror")
    with pytest.raises(ValueError, match="factor"):
        pp.RandomRotation((0.3, 0.1))
    with pytest.raises(ValueError, match="height_factor"):
        pp.RandomTranslation(1.5, 0.1)
    with pytest.raises(ValueError, match="seed"):
        pp.RandomZoom(0.1, seed=-1)
    with pytest.raises(ValueError, match="value_range"):
        pp.RandomBrightness(0.1, value_range=(1, 0))
    with pytest.raises(ValueError, match="factor"):
        pp.RandomContrast(-0.1)
    with pytest.raises(ValueError, match="images"):
        pp.RandomFlip()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="padding"):
        pp.RandomCrop(3, 3, padding=-1)
