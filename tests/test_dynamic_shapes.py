"""None sizes in Input shapes: models over sequences of any length / images of any size."""
import gc
import weakref

import numpy as np
import pytest

from fastnet import layers, models
from fastnet.utils.random import set_random_seed
from _gradcheck import check_layer_grads
from _model_grads import check_model_grads


def seq_model(steps=None, dtype="float32"):
    x = layers.Input(shape=(steps, 16), dtype=dtype)
    h = layers.LSTM(8, return_sequences=True, name="lstm", dtype=dtype)(x)
    h = layers.Conv1D(6, 3, padding="same", activation="relu", name="conv", dtype=dtype)(h)
    a = layers.GRU(5, name="gru", dtype=dtype)(h)
    b = layers.GlobalAveragePooling1D(name="gap", dtype=dtype)(h)
    c = layers.GlobalMaxPooling1D(name="gmp", dtype=dtype)(h)
    merged = layers.Concatenate(name="cat", dtype=dtype)([a, b, c])
    return models.Model(x, layers.Dense(3, activation="softmax", name="out",
                                        dtype=dtype)(merged))


def image_model(size=(None, None), dtype="float32"):
    x = layers.Input(shape=size + (3,), dtype=dtype)
    h = layers.Conv2D(4, 3, strides=2, activation="relu", name="c1", dtype=dtype)(x)
    h = layers.Conv2D(5, 3, padding="same", name="c2", dtype=dtype)(h)
    h = layers.GlobalAveragePooling2D(name="gap", dtype=dtype)(h)
    return models.Model(x, layers.Dense(2, activation="softmax", name="out", dtype=dtype)(h))


def text_model(steps=None, dtype="float32"):
    """Token ids -> Embedding -> Bidirectional LSTM -> TimeDistributed Dense -> pooled."""
    x = layers.Input(shape=(steps,), dtype=dtype)
    h = layers.Embedding(20, 6, name="emb", dtype=dtype)(x)
    h = layers.Bidirectional(layers.LSTM(4, return_sequences=True, dtype=dtype), name="bi",
                             dtype=dtype)(h)
    h = layers.TimeDistributed(layers.Dense(3, dtype=dtype), name="td", dtype=dtype)(h)
    return models.Model(x, layers.Dense(2, activation="softmax", name="out", dtype=dtype)(
        layers.GlobalMaxPooling1D(dtype=dtype)(h)))


def test_summary_and_shapes_show_none():
    model = seq_model()
    assert model.input_shape == (None, None, 16)
    assert model.output_shape == (None, 3)
    assert model.get_layer("conv").output_shape == (None, 6)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "(None, None, 16)" in text and "(None, None, 6)" in text
    assert image_model().get_layer("c1").output_shape == (None, None, 4)


@pytest.mark.parametrize("build", [seq_model, image_model])
def test_predict_on_varying_shapes_matches_fixed_shape_models(build):
    set_random_seed(0)
    model = build()
    rng = np.random.default_rng(0)
    shapes = [(5, 16), (9, 16), (1, 16), (5, 16)] if build is seq_model else \
        [(9, 11, 3), (16, 16, 3), (3, 3, 3), (9, 11, 3)]
    for batch, shape in zip((4, 1, 3, 2), shapes):
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        fixed = build(shape[0] if build is seq_model else shape[:2])
        fixed.set_weights(model.get_weights())
        np.testing.assert_allclose(model.predict(x, verbose=0), fixed.predict(x, verbose=0),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(model(x), fixed(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("build", [seq_model, image_model, text_model])
def test_gradient_float64_on_two_shapes(build):
    set_random_seed(1)
    model = build(dtype="float64")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    shapes = {seq_model: [(4, 16), (7, 16)], image_model: [(7, 9, 3), (5, 6, 3)],
              text_model: [(5,), (2,)]}[build]
    for shape in shapes:
        x = rng.integers(0, 20, (3,) + shape).astype(np.float64) if build is text_model \
            else rng.standard_normal((3,) + shape)
        check_model_grads(model, x, np.arange(3) % 2, max_points=80)


def test_text_model_trains_and_round_trips(tmp_path):
    set_random_seed(8)
    rng = np.random.default_rng(8)
    model = text_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    for steps in (4, 9):
        model.fit(rng.integers(0, 20, (16, steps)), rng.integers(0, 2, 16), epochs=1,
                  verbose=0)
    model.save(tmp_path / "text.fnet")
    again = models.load_model(tmp_path / "text.fnet")
    for steps in (3, 9):
        x = rng.integers(0, 20, (5, steps))
        np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def lengths_task(n, steps, rng):
    """Class = whether feature 0 is mostly positive over the sequence (any length)."""
    labels = rng.integers(0, 2, n)
    x = rng.standard_normal((n, steps, 16)).astype(np.float32) * 0.5
    x[:, :, 0] += np.where(labels == 1, 1.0, -1.0)[:, None]
    return x, labels


def test_fit_on_batches_of_different_lengths():
    set_random_seed(2)
    x_in = layers.Input(shape=(None, 16))
    h = layers.Conv1D(8, 3, padding="same", activation="relu")(x_in)
    h = layers.GRU(8, return_sequences=True)(h)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling1D()(h))
    model = models.Model(x_in, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(2)
    for epoch in range(3):
        for steps in (6, 11, 3, 8):
            x, y = lengths_task(64, steps, rng)
            model.fit(x, y, epochs=1, batch_size=16, verbose=0)
            model.train_on_batch(*lengths_task(8, steps + 1, rng))
    for steps in (4, 13):
        x, y = lengths_task(128, steps, rng)
        loss, acc = model.evaluate(x, y, verbose=0)
        assert acc > 0.9, (steps, acc)
        assert (np.argmax(model.predict(x, verbose=0), 1) == y).mean() == acc


def test_sequential_with_none_steps_and_frozen_layer():
    set_random_seed(3)
    model = models.Sequential([layers.LSTM(6, return_sequences=True, input_shape=(None, 4)),
                               layers.GlobalMaxPooling1D(), layers.Dense(2)])
    assert model.built and model.input_shape == (None, None, 4)
    model.layers[0].trainable = False
    frozen = model.layers[0].get_weights()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(3)
    for steps in (3, 7):
        model.fit(rng.standard_normal((16, steps, 4)), rng.standard_normal((16, 2)),
                  epochs=1, verbose=0)
    for a, b in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_per_shape_graphs_are_reused_and_bounded():
    from fastnet.models import functional
    set_random_seed(4)
    model = seq_model()
    rng = np.random.default_rng(4)
    x5 = rng.standard_normal((2, 5, 16)).astype(np.float32)
    model.predict(x5, verbose=0)
    graph = model._shape_graphs[((5, 16),)]
    model.predict(rng.standard_normal((2, 6, 16)), verbose=0)
    model.predict(x5, verbose=0)
    assert model._shape_graphs[((5, 16),)] is graph          # the same plans and buffers
    dense = graph.get_layer("out")
    y_buf = dense._buffers.get("z", dense._buffers.get("y"))
    model(x5)
    model(x5)
    assert y_buf is None or any(b is y_buf for b in dense._buffers.values())
    ref = weakref.ref(graph)
    del graph, dense, y_buf
    limit = functional._MAX_SHAPE_GRAPHS
    for steps in range(7, 7 + limit + 3):
        model.predict(rng.standard_normal((1, steps, 16)), verbose=0)
    assert len(model._shape_graphs) == limit
    gc.collect()
    assert ref() is None          # an evicted shape's graph, buffers and plans are freed
    model.predict(x5, verbose=0)  # an evicted shape is rebuilt on demand
    assert ((5, 16),) in model._shape_graphs


def test_fixed_size_layers_raise_at_build_time():
    x = layers.Input(shape=(None, 16))
    flat = layers.Flatten(name="flat")(x)
    with pytest.raises(ValueError, match=r"layer dense_fixed .*None .*axis 1.*flat"):
        layers.Dense(3, name="dense_fixed")(flat)
    with pytest.raises(ValueError, match="dense_seq.*None"):
        models.Sequential([layers.Input(shape=(None, None, 3)), layers.Conv2D(2, 3),
                           layers.Flatten(), layers.Dense(2, name="dense_seq")])
    # sizes that do not need to be fixed are fine after a Flatten
    assert layers.Flatten()(layers.Input(shape=(3, None))).shape == (None, None)


def test_bad_shapes_at_run_time():
    model = seq_model()
    with pytest.raises(ValueError, match="must have shape"):
        model.predict(np.zeros((2, 5, 15), np.float32), verbose=0)
    with pytest.raises(ValueError, match="must have shape"):
        model.predict(np.zeros((2, 5), np.float32), verbose=0)
    x = layers.Input(shape=(None, 4))
    valid = models.Model(x, layers.GlobalAveragePooling1D()(layers.Conv1D(2, 5, name="c5")(x)))
    with pytest.raises(ValueError, match="c5"):
        valid.predict(np.zeros((1, 3, 4), np.float32), verbose=0)
    with pytest.raises(ValueError, match="positive integers or None"):
        layers.Input(shape=(0, 4))


def test_save_load_round_trip(tmp_path):
    set_random_seed(5)
    model = seq_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(5)
    model.fit(rng.standard_normal((8, 6, 16)), np.arange(8) % 3, epochs=1, verbose=0)
    model.save(tmp_path / "dyn.fnet")
    again = models.load_model(tmp_path / "dyn.fnet")
    assert again.input_shape == (None, None, 16)
    for steps in (4, 10):
        x = rng.standard_normal((3, steps, 16)).astype(np.float32)
        np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("cls", [layers.GlobalAveragePooling1D, layers.GlobalMaxPooling1D])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_1d(cls, keepdims):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 7, 5))
    layer = cls(keepdims=keepdims, dtype="float64")
    ref = x.mean(1, keepdims=keepdims) if cls is layers.GlobalAveragePooling1D else \
        x.max(1, keepdims=keepdims)
    np.testing.assert_allclose(layer(x), ref, rtol=1e-12)
    check_layer_grads(cls(keepdims=keepdims, dtype="float64"), (7, 5), batch=2)
    assert cls.from_config(layer.get_config()).keepdims == keepdims


def test_generator_of_varying_lengths_and_gradient_hook():
    set_random_seed(7)
    rng = np.random.default_rng(7)
    x_in = layers.Input(shape=(None, 16))
    h = layers.Conv1D(8, 3, padding="same", activation="relu", name="c")(x_in)
    model = models.Model(x_in, layers.Dense(2, activation="softmax", name="d")(
        layers.GlobalAveragePooling1D(name="p")(h)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    reported = []
    model._grad_ready_hook = reported.append

    def batches(n):
        for i in range(n):
            yield lengths_task(16, 3 + i % 5, rng)
    hist = model.fit(batches(60), epochs=1, verbose=0)
    assert hist.history["accuracy"][0] > 0.8
    # the hook names the model's own layers, whatever shape's graph ran
    own = {id(l) for l in model.layers}
    assert reported and all(id(l) in own for l in reported)
    assert {l.name for l in reported} == {"c", "p", "d"}
    model._grad_ready_hook = None
    preds = model.predict((x for x, _ in batches(4)), verbose=0)
    assert preds.shape == (64, 2)
    with pytest.raises(ValueError, match="None sizes"):
        model.compile_inference()


def test_predict_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor
    set_random_seed(9)
    model = seq_model()
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((3, 3 + i % 4, 16)).astype(np.float32) for i in range(16)]
    expected = [model.predict(x, verbose=0) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: model.predict(x, verbose=0), xs))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
