"""Embedding, Bidirectional and TimeDistributed: forward against NumPy references, backward
against finite differences (float64), configs, models, bad arguments."""
import numpy as np
import pytest

import fastnet
from fastnet import layers, models
from fastnet.ops import recurrent as rnn_ops
from _gradcheck import check_layer_grads, numeric_grad
from test_recurrent import check_multi_output_grads, keras_rnn, random_weights


# ------------------------------------------------------------------------------ Embedding
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_forward_float_and_int_indices(dtype):
    rng = np.random.default_rng(0)
    layer = layers.Embedding(11, 5, dtype=dtype)
    idx = rng.integers(0, 11, size=(4, 7))
    y = layer(idx)                       # integers, cast to the layer's dtype by __call__
    table = layer.get_weights()[0]
    np.testing.assert_array_equal(y, table[idx])
    assert y.shape == (4, 7, 5) and y.dtype == dtype
    np.testing.assert_array_equal(layer.forward(idx.astype(dtype)), table[idx])
    for int_dtype in (np.int32, np.int64, np.uint8):
        np.testing.assert_array_equal(rnn_ops.embedding_lookup(idx.astype(int_dtype), table),
                                      table[idx])
    assert np.all(np.abs(table) <= 0.05)   # Keras' 'uniform' initializer


def test_embedding_gradient_scatter_adds_repeated_indices():
    rng = np.random.default_rng(1)
    layer = layers.Embedding(6, 3, dtype="float64")
    idx = np.array([[0, 5, 5, 2], [2, 2, 0, 1]], dtype=np.float64)
    layer.build(idx.shape[1:])
    layer.forward(idx)
    dy = rng.standard_normal((2, 4, 3))
    assert layer.backward(dy) is None
    ref = np.zeros((6, 3))
    np.add.at(ref, idx.astype(int).reshape(-1), dy.reshape(-1, 3))
    np.testing.assert_allclose(layer.grads["embeddings"], ref, rtol=1e-14, atol=1e-14)
    check_layer_grads(layers.Embedding(6, 3, dtype="float64"), (4,), batch=3,
                      x=rng.integers(0, 6, size=(3, 4)).astype(np.float64))


def test_embedding_threaded_scatter_matches_reference():
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 50, size=(64, 30))
    dy = rng.standard_normal((64, 30, 96))
    out = np.empty((50, 96))
    table = rng.standard_normal((50, 96))
    old = fastnet.get_num_threads()
    try:
        fastnet.set_num_threads(2)
        rnn_ops.embedding_grad(idx, dy, out)
        y = rnn_ops.embedding_lookup(idx, table)
    finally:
        fastnet.set_num_threads(old)
    ref = np.zeros((50, 96))
    np.add.at(ref, idx.reshape(-1), dy.reshape(-1, 96))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y, table[idx])


@pytest.mark.parametrize("bad", [-1, 11, 2.5, np.nan, np.inf])
def test_embedding_rejects_bad_indices(bad):
    layer = layers.Embedding(11, 2, dtype="float64")
    x = np.zeros((2, 3))
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"integers in \[0, 11\).*position 5"):
        layer(x)


def test_embedding_bad_arguments_and_config():
    with pytest.raises(ValueError, match="input_dim"):
        layers.Embedding(0, 3)
    with pytest.raises(ValueError, match="output_dim"):
        layers.Embedding(3, 2.0)
    with pytest.raises(ValueError, match="mask_zero"):
        layers.Embedding(3, 2, mask_zero=True)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        layers.Embedding(1 << 25, 2)
    layers.Embedding(1 << 25, 2, dtype="float64")
    with pytest.raises(TypeError, match="integers"):
        rnn_ops.embedding_lookup(np.zeros(3, bool), np.zeros((2, 2)))
    layer = layers.Embedding(9, 4, embeddings_regularizer="l2", name="emb_cfg")
    cfg = layer.get_config()
    assert layers.Embedding.from_config(cfg).get_config() == cfg
    assert cfg["input_dim"] == 9 and cfg["output_dim"] == 4


# ---------------------------------------------------------------------------- Bidirectional
def _bidirectional_reference(bi, x):
    """Outputs of ``bi`` from the NumPy reference of its two layers."""
    f, b = bi.forward_layer, bi.backward_layer
    outs = []
    for layer in (f, b):
        W = layer.get_weights()
        seq, h, c = keras_rnn(layer._cell, x, *W, layer.activation, layer.recurrent_activation,
                              getattr(layer, "reset_after", True), layer.go_backwards)
        outs.append((seq if layer.return_sequences else h, h, c))
    yf, yb = outs[0][0], outs[1][0]
    if bi.return_sequences:
        yb = yb[:, ::-1]
    merged = {"concat": lambda: [np.concatenate([yf, yb], -1)], "sum": lambda: [yf + yb],
              "ave": lambda: [(yf + yb) / 2], "mul": lambda: [yf * yb],
              None: lambda: [yf, yb]}[bi.merge_mode]()
    if bi.return_state:
        n = f.n_states
        merged += list(outs[0][1:1 + n]) + list(outs[1][1:1 + n])
    return merged


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("cell,options", [
    ("LSTM", {}), ("GRU", {"return_sequences": True}), ("SimpleRNN", {"return_state": True}),
    ("LSTM", {"return_sequences": True, "return_state": True})])
def test_bidirectional_forward_and_gradients(merge_mode, cell, options):
    rng = np.random.default_rng(3)
    bi = layers.Bidirectional(getattr(layers, cell)(4, dtype="float64", **options),
                              merge_mode=merge_mode)
    bi.build((5, 3))
    random_weights(bi, rng, 0.5)
    x = rng.standard_normal((2, 5, 3))
    out = bi(x)
    out = out if isinstance(out, list) else [out]
    ref = _bidirectional_reference(bi, x)
    assert len(out) == len(ref)
    for a, e in zip(out, ref):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    shapes = bi.compute_output_shape((5, 3))
    assert [a.shape[1:] for a in out] == (shapes if isinstance(shapes, list) else [shapes])
    check_multi_output_grads(bi, x, max_points=25)


def test_bidirectional_weights_names_order_and_config():
    lstm = layers.LSTM(3, return_sequences=True, name="enc", input_shape=(4, 2))
    bi = layers.Bidirectional(lstm)
    assert bi.batch_input_shape == (4, 2)
    bi.build((4, 2))
    assert list(bi.params) == ["forward_enc/kernel", "forward_enc/recurrent_kernel",
                               "forward_enc/bias", "backward_enc/kernel",
                               "backward_enc/recurrent_kernel", "backward_enc/bias"]
    assert bi.forward_layer.name == "forward_enc" and bi.backward_layer.go_backwards
    cfg = bi.get_config()
    clone = layers.Bidirectional.from_config(cfg)
    assert clone.get_config() == cfg
    custom = layers.Bidirectional(layers.GRU(3), backward_layer=layers.GRU(3, go_backwards=True),
                                  merge_mode="sum")
    assert custom.backward_layer.go_backwards


def test_bidirectional_bad_arguments():
    with pytest.raises(TypeError, match="recurrent layer"):
        layers.Bidirectional(layers.Dense(3))
    with pytest.raises(ValueError, match="merge_mode"):
        layers.Bidirectional(layers.LSTM(3), merge_mode="max")
    with pytest.raises(ValueError, match="go_backwards"):
        layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(3))
    with pytest.raises(ValueError, match="return_sequences"):
        layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(
            3, go_backwards=True, return_sequences=True))
    with pytest.raises(TypeError, match="dtype"):
        layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(
            3, go_backwards=True, dtype="float64"))


# -------------------------------------------------------------------------- TimeDistributed
def test_time_distributed_dense_forward_and_gradients():
    rng = np.random.default_rng(4)
    td = layers.TimeDistributed(layers.Dense(3, activation="tanh", dtype="float64"))
    td.build((5, 4))
    random_weights(td, rng)
    assert list(td.params) == ["kernel", "bias"]
    x = rng.standard_normal((2, 5, 4))
    k, b = td.get_weights()
    np.testing.assert_allclose(td(x), np.tanh(x @ k + b), rtol=1e-12, atol=1e-12)
    check_layer_grads(td, (5, 4), batch=2)


def test_time_distributed_conv_and_embedding():
    rng = np.random.default_rng(5)
    td = layers.TimeDistributed(layers.Conv2D(2, 3, padding="same", dtype="float64"))
    td.build((3, 6, 5, 2))
    x = rng.standard_normal((2, 3, 6, 5, 2))
    y = td(x)
    inner = td.layer
    for t in range(3):
        np.testing.assert_allclose(y[:, t], inner(x[:, t]), rtol=1e-12, atol=1e-12)
    check_layer_grads(td, (3, 6, 5, 2), batch=2)
    emb = layers.TimeDistributed(layers.Embedding(7, 2, dtype="float64"))
    idx = rng.integers(0, 7, size=(2, 3, 4)).astype(np.float64)
    np.testing.assert_array_equal(emb(idx), emb.get_weights()[0][idx.astype(int)])


def test_time_distributed_bad_arguments_and_config():
    with pytest.raises(TypeError, match="Layer"):
        layers.TimeDistributed("dense")
    td = layers.TimeDistributed(layers.Dense(3))
    with pytest.raises(ValueError, match="rank >= 3"):
        td.build((4,))
    with pytest.raises(ValueError, match="several outputs"):
        layers.TimeDistributed(layers.LSTM(2, return_state=True)).build((3, 4, 2))
    cfg = layers.TimeDistributed(layers.Dense(3, kernel_regularizer="l2"), name="td_cfg") \
        .get_config()
    assert layers.TimeDistributed.from_config(cfg).get_config() == cfg


# ----------------------------------------------------------------------------------- models
def test_models_with_wrappers_train_save_and_load(tmp_path):
    fastnet.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 10, size=(256, 8))
    y = (x[:, -1] > x[:, 0]).astype(np.int64)        # compares both ends: both directions help
    model = models.Sequential([
        layers.Embedding(10, 6, input_shape=(8,)),
        layers.Bidirectional(layers.LSTM(12, return_sequences=True), merge_mode="concat"),
        layers.TimeDistributed(layers.Dense(8, activation="relu", kernel_regularizer="l2")),
        layers.Bidirectional(layers.GRU(8), merge_mode="ave"),
        layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=fastnet.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert len(model.get_weights()) == 1 + 6 + 2 + 6 + 2
    hist = model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    assert hist.history["accuracy"][-1] >= 0.9, hist.history["accuracy"]
    path = tmp_path / "wrappers.fastnet"
    model.save(path)
    loaded = models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # the frozen wrapper keeps its weights while the rest trains
    model.layers[1].trainable = False
    before = [w.copy() for w in model.layers[1].get_weights()]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for a, b in zip(before, model.layers[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrapper_regularization_is_counted_once():
    td = layers.TimeDistributed(layers.Dense(2, kernel_regularizer=fastnet.regularizers.L2(0.5),
                                             dtype="float64"))
    td.build((3, 4))
    k = td.params["kernel"]
    assert td.regularization_loss() == pytest.approx(0.5 * float(np.sum(k * k)))
    x = np.random.default_rng(6).standard_normal((2, 3, 4))
    r = np.random.default_rng(7).standard_normal((2, 3, 2))

    def f():
        return float(np.sum(td.forward(x) * r)) + td.regularization_loss()

    td.forward(x)
    td.backward(r)
    idx, num = numeric_grad(f, td.params["kernel"])
    np.testing.assert_allclose(td.grads["kernel"].reshape(-1)[idx], num, rtol=1e-6, atol=1e-8)


def test_functional_model_with_states_and_a_shared_wrapper_end_to_end_gradients():
    """LSTM with return_state feeding a Bidirectional GRU called twice (shared) and a
    TimeDistributed Dense: the model's gradients match finite differences of its loss."""
    fastnet.utils.set_random_seed(3)
    f64 = {"dtype": "float64"}
    inp = layers.Input(shape=(6, 3), **f64)
    seq, h, c = layers.LSTM(5, return_sequences=True, return_state=True, **f64)(inp)
    bi = layers.Bidirectional(layers.GRU(4, **f64), **f64)
    td = layers.TimeDistributed(layers.Dense(5, **f64), **f64)
    merged = layers.Concatenate(**f64)([bi(seq), bi(td(seq)), h, c])
    model = models.Model(inp, layers.Dense(3, activation="softmax", **f64)(merged))
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 6, 3)), rng.integers(0, 3, 8)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    targets = model.loss.prepare_targets(y, (8, 3), np.float64)
    out = model._forward(x, training=True)
    _, grad = model._loss_grad(out, targets)
    model._backward(grad)

    def loss():
        return model.evaluate(x, y, batch_size=8, verbose=0)

    checked = 0
    for layer in model.layers:
        for name, p in layer.params.items():
            analytic = layer.grads[name].copy()
            idx, num = numeric_grad(loss, p, max_points=8)
            np.testing.assert_allclose(analytic.reshape(-1)[idx], num, rtol=1e-6, atol=1e-9,
                                       err_msg=f"{layer.name}/{name}")
            checked += 1
    assert checked == 3 + 6 + 2 + 2
    hist = model.fit(x, y, epochs=3, batch_size=4, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
