"""Models used as layers: a Sequential or functional model called on symbolic tensors inside
another model (or added to a Sequential) shares its weights with the outer model."""
import numpy as np
import pytest

from fastnet import layers, models
from fastnet.utils.random import set_random_seed
from _model_grads import check_model_grads


def encoder(dtype="float32", name="encoder"):
    return models.Sequential([layers.Input(shape=(6,), dtype=dtype),
                              layers.Dense(8, activation="tanh", name=f"{name}_d1", dtype=dtype),
                              layers.BatchNormalization(name=f"{name}_bn", dtype=dtype),
                              layers.Dense(4, activation="tanh", name=f"{name}_d2", dtype=dtype)],
                             name=name)


def blobs(n=240, seed=0):
    """Three Gaussian blobs in 6-D: an easy 3-class task."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = rng.standard_normal((3, 6)) * 2.5
    x = (centers[labels] + rng.standard_normal((n, 6))).astype(np.float32)
    return x, labels


def outer_models(dtype="float32"):
    """The three ways of nesting: Sequential in functional, model in Sequential, functional in
    functional.  Each: (outer model, the nested model)."""
    enc = encoder(dtype)
    inp = layers.Input(shape=(6,), dtype=dtype)
    fun = models.Model(inp, layers.Dense(3, activation="softmax", name="head",
                                         dtype=dtype)(enc(inp)), name="fun")
    enc2 = encoder(dtype, "enc2")
    seq = models.Sequential([enc2, layers.Dense(3, activation="softmax", name="head2",
                                                dtype=dtype)], name="seq")
    a = layers.Input(shape=(6,), dtype=dtype)
    inner = models.Model(a, layers.Dense(5, activation="relu", name="inner_d",
                                         dtype=dtype)(a), name="inner")
    b = layers.Input(shape=(6,), dtype=dtype)
    h = layers.Concatenate(dtype=dtype)([inner(b), b])
    fun2 = models.Model(b, layers.Dense(3, activation="softmax", name="head3",
                                        dtype=dtype)(h), name="fun2")
    return [(fun, enc), (seq, enc2), (fun2, inner)]


def test_summary_layers_and_weight_order():
    set_random_seed(0)
    for outer, nested in outer_models():
        assert any(l is nested for l in outer.layers)
        lines = []
        outer.summary(print_fn=lines.append)
        text = "\n".join(lines)
        row = [l for l in lines if l.startswith(f"{nested.name} (")]
        assert len(row) == 1, text
        assert str(nested.count_params()) in row[0]
        assert not any(l.name in text for l in nested.layers if l.name.startswith("encoder_"))
        assert outer.count_params() == sum(l.count_params() for l in outer.layers)
        # Keras order: layer by layer, the nested model's weights as one block in its order
        got = outer.get_weights()
        k = next(i for i, l in enumerate(outer.layers) if l is nested)
        start = sum(len(l.get_weights()) for l in outer.layers[:k])
        inner = nested.get_weights()
        for a, b in zip(got[start:start + len(inner)], inner):
            np.testing.assert_array_equal(a, b)
        assert len(got) == start + len(inner) + 2      # then the head's kernel and bias
    fun, _ = outer_models()[0]
    assert [w.shape for w in fun.get_weights()] == [
        (6, 8), (8,), (8,), (8,), (8,), (8,), (8, 4), (4,), (4, 3), (3,)]
    assert [n for n in fun.layers[1].params][:3] == ["encoder_d1/kernel", "encoder_d1/bias",
                                                     "encoder_bn/gamma"]


def test_set_weights_round_trip_reaches_the_nested_model():
    set_random_seed(1)
    rng = np.random.default_rng(1)
    for outer, nested in outer_models():
        new = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in outer.get_weights()]
        outer.set_weights(new)
        for a, b in zip(outer.get_weights(), new):
            np.testing.assert_array_equal(a, b)
        k = next(i for i, l in enumerate(outer.layers) if l is nested)
        start = sum(len(l.get_weights()) for l in outer.layers[:k])
        for a, b in zip(nested.get_weights(), new[start:]):
            np.testing.assert_array_equal(a, b)
        x = rng.standard_normal((3, 6)).astype(np.float32)
        nested.predict(x, verbose=0)   # the nested model still runs on its own


@pytest.mark.parametrize("which", [0, 1, 2])
def test_end_to_end_gradient_float64(which):
    set_random_seed(2)
    outer, _ = outer_models("float64")[which]
    outer.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    check_model_grads(outer, rng.standard_normal((5, 6)), [0, 2, 1, 1, 0], max_points=120)


def test_fit_trains_the_shared_weights():
    set_random_seed(3)
    x, labels = blobs()
    for outer, nested in outer_models():
        before = nested.get_weights()
        outer.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        hist = outer.fit(x, labels, epochs=12, batch_size=16, verbose=0)
        assert hist.history["accuracy"][-1] > 0.9, (outer.name, hist.history["accuracy"])
        after = nested.get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(before, after))
        # the nested model computes with the trained weights on its own too
        inner_out = nested.predict(x[:7], verbose=0)
        for l in nested.layers:
            for w in l.weights:
                assert any(np.shares_memory(w, v) for v in outer.weights)
        assert np.isfinite(inner_out).all()


def test_frozen_nested_model_is_not_trained():
    set_random_seed(4)
    x, labels = blobs()
    outer, nested = outer_models()[0]
    nested.trainable = False
    assert all(not l.trainable for l in nested.layers)
    lines = []
    outer.summary(print_fn=lines.append)
    head = outer.get_layer("head").count_params()
    assert f"Trainable params: {head:,}" in lines
    frozen = nested.get_weights()
    head_before = outer.get_layer("head").get_weights()
    outer.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    outer.fit(x, labels, epochs=2, batch_size=32, verbose=0)
    for a, b in zip(frozen, nested.get_weights()):   # BatchNorm's statistics included
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(head_before[0], outer.get_layer("head").get_weights()[0])
    nested.trainable = True     # unfreezing re-lays the buffers: the nested weights train again
    outer.fit(x, labels, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(frozen[0], nested.get_weights()[0])


def test_shared_nested_model_called_twice():
    """A siamese network: one encoder on two inputs; gradients of both calls add up."""
    set_random_seed(5)
    enc = encoder("float64")
    a, b = layers.Input(shape=(6,), dtype="float64"), layers.Input(shape=(6,), dtype="float64")
    diff = layers.Subtract(dtype="float64")([enc(a), enc(b)])
    out = layers.Dense(1, activation="sigmoid", name="same", dtype="float64")(diff)
    model = models.Model([a, b], out)
    assert [l.name for l in model.layers].count("encoder") == 1
    lines = []
    model.summary(print_fn=lines.append)
    row = next(l for l in lines if l.startswith("encoder ("))
    assert "input_layer" in row and row.count("[0][0]") == 2
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    rng = np.random.default_rng(5)
    xa, xb = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    check_model_grads(model, [xa, xb], [[1.0], [0.0], [1.0], [0.0]], max_points=120)
    # the shared encoder gives the same features for the same input on both branches
    same = model.predict([xa, xa], verbose=0)
    np.testing.assert_allclose(same, 1.0 / (1.0 + np.exp(-model.get_layer("same").params[
        "bias"])) * np.ones((4, 1)), rtol=1e-12)


def test_nested_twice_deep():
    set_random_seed(6)
    x, labels = blobs(seed=6)
    enc = encoder()
    inp = layers.Input(shape=(6,))
    mid = models.Model(inp, layers.Dense(4, activation="relu", name="mid_d")(enc(inp)),
                       name="mid")
    outer = models.Sequential([mid, layers.Dense(3, activation="softmax", name="top")])
    assert [l.name for l in outer.layers] == ["mid", "top"]
    assert [l.name for l in mid.layers][1:] == ["encoder", "mid_d"]
    assert len(outer.get_weights()) == len(enc.get_weights()) + 4
    outer.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = outer.fit(x, labels, epochs=12, batch_size=16, verbose=0)
    assert hist.history["accuracy"][-1] > 0.9


@pytest.mark.parametrize("which", [0, 1, 2])
def test_save_load_round_trip_bit_identical(tmp_path, which):
    set_random_seed(7)
    x, labels = blobs(seed=7)
    outer, nested = outer_models()[which]
    outer.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    outer.fit(x, labels, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "nested.fnet"
    outer.save(path)
    again = models.load_model(path)
    assert [type(l).__name__ for l in again.layers] == [type(l).__name__ for l in outer.layers]
    assert again.get_config() == outer.get_config()
    np.testing.assert_array_equal(again.predict(x, verbose=0), outer.predict(x, verbose=0))
    for a, b in zip(again.get_weights(), outer.get_weights()):
        np.testing.assert_array_equal(a, b)
    # training resumes identically (optimizer state restored through the nested weights)
    h1 = outer.fit(x, labels, epochs=1, batch_size=32, shuffle=False, verbose=0)
    h2 = again.fit(x, labels, epochs=1, batch_size=32, shuffle=False, verbose=0)
    assert h1.history["loss"] == h2.history["loss"]


def test_errors():
    enc = encoder()
    with pytest.raises(ValueError, match="takes 1 input"):
        enc([layers.Input(shape=(6,)), layers.Input(shape=(6,))])
    with pytest.raises(ValueError, match="must have shape"):
        enc(layers.Input(shape=(5,)))
    late = models.Sequential([layers.Dense(3, name="late_d")], name="late")
    assert late(layers.Input(shape=(4,))).shape == (None, 3)    # builds on its first call
    assert late.built and late.input_shape == (None, 4)
    inp = layers.Input(shape=(6,))
    d1 = enc.get_layer("encoder_d1")
    with pytest.raises(ValueError, match="used both by"):
        models.Model(inp, layers.Add()([enc(inp), layers.Dense(4)(d1(inp))]))


def test_inner_and_outer_trained_in_turn_stay_consistent():
    set_random_seed(8)
    rng = np.random.default_rng(8)
    enc = models.Sequential([layers.Input(shape=(6,)), layers.Dense(5, activation="tanh",
                                                                    name="e1")], name="enc")
    inp = layers.Input(shape=(6,))
    outer = models.Model(inp, layers.Dense(2, name="h")(enc(inp)))
    outer.compile("adam", "mse")
    enc.compile("adam", "mse")
    x = rng.standard_normal((32, 6)).astype(np.float32)
    for model, width in ((outer, 2), (enc, 5), (outer, 2)):
        before = enc.get_weights()
        model.fit(x, rng.standard_normal((32, width)), epochs=1, verbose=0)
        assert not np.array_equal(before[0], enc.get_weights()[0])
        expected = outer.get_layer("h")(enc.predict(x, verbose=0))
        np.testing.assert_array_equal(outer.predict(x, verbose=0), expected)


def test_multi_output_nested_model_config_round_trip():
    set_random_seed(9)
    a = layers.Input(shape=(6,))
    two = models.Model(a, [layers.Dense(2, name="t1")(a), layers.Dense(3, name="t2")(a)],
                       name="two")
    b = layers.Input(shape=(6,))
    o1, o2 = two(b)
    model = models.Model(b, layers.Concatenate(name="cat")([o1, o2]))
    cfg = model.get_config()
    assert cfg["layers"][2]["inbound_nodes"] == [[["two", 0, 0], ["two", 0, 1]]]
    again = models.Functional.from_config(cfg)
    again.set_weights(model.get_weights())
    x = np.random.default_rng(9).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_nested_model_with_none_steps():
    set_random_seed(10)
    rng = np.random.default_rng(10)
    s = layers.Input(shape=(None, 4))
    enc = models.Model(s, layers.GlobalAveragePooling1D()(
        layers.LSTM(3, return_sequences=True)(s)), name="seq_enc")
    t = layers.Input(shape=(None, 4))
    outer = models.Model(t, layers.Dense(2, name="dh")(enc(t)))
    assert outer.get_layer("seq_enc").output_shape == (None, 3)
    outer.compile("adam", "mse")
    for steps in (3, 8):
        x = rng.standard_normal((10, steps, 4)).astype(np.float32)
        outer.fit(x, rng.standard_normal((10, 2)), epochs=1, verbose=0)
        np.testing.assert_array_equal(outer.predict(x, verbose=0),
                                      outer.get_layer("dh")(enc.predict(x, verbose=0)))
