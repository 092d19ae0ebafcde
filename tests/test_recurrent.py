"""Recurrent layers (SimpleRNN, LSTM, GRU): forward against a NumPy implementation of Keras'
equations with Keras-layout weights, backward against finite differences (float64), the
multi-threaded time loop, training, configs and bad arguments."""
import numpy as np
import pytest

import fastnet
from fastnet import layers, models
from fastnet.ops import recurrent as rnn_ops
from _gradcheck import numeric_grad


# ------------------------------------------------------------------ NumPy reference (Keras)
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


ACTS = {"tanh": np.tanh, "sigmoid": _sigmoid, "relu": lambda x: np.maximum(x, 0),
        "linear": lambda x: x, None: lambda x: x}


def keras_rnn(cell, x, kernel, recurrent_kernel, bias, activation="tanh",
              recurrent_activation="sigmoid", reset_after=True, go_backwards=False):
    """(sequence (B, T, u) in processing order, h, c) by Keras' cell equations, step by step."""
    act, ract = ACTS[activation], ACTS[recurrent_activation]
    B, T, _ = x.shape
    u = recurrent_kernel.shape[0]
    h, c, seq = np.zeros((B, u)), np.zeros((B, u)), []
    for t in (range(T - 1, -1, -1) if go_backwards else range(T)):
        xt = x[:, t]
        if cell == "simple_rnn":
            h = act(xt @ kernel + h @ recurrent_kernel + (0 if bias is None else bias))
        elif cell == "lstm":
            z = xt @ kernel + h @ recurrent_kernel + (0 if bias is None else bias)
            zi, zf, zc, zo = np.split(z, 4, axis=1)
            i, f, o = ract(zi), ract(zf), ract(zo)
            c = f * c + i * act(zc)
            h = o * act(c)
        elif reset_after:
            b_in, b_rec = (0, 0) if bias is None else (bias[0], bias[1])
            x_z, x_r, x_h = np.split(xt @ kernel + b_in, 3, axis=1)
            r_z, r_r, r_h = np.split(h @ recurrent_kernel + b_rec, 3, axis=1)
            z, r = ract(x_z + r_z), ract(x_r + r_r)
            hh = act(x_h + r * r_h)
            h = z * h + (1 - z) * hh
        else:
            x_z, x_r, x_h = np.split(xt @ kernel + (0 if bias is None else bias), 3, axis=1)
            inner = h @ recurrent_kernel[:, :2 * u]
            z, r = ract(x_z + inner[:, :u]), ract(x_r + inner[:, u:])
            hh = act(x_h + (r * h) @ recurrent_kernel[:, 2 * u:])
            h = z * h + (1 - z) * hh
        seq.append(h)
    return np.stack(seq, axis=1), h, c


def make_layer(cell, units, **kwargs):
    kwargs.setdefault("dtype", "float64")
    if cell == "gru_v1":
        return layers.GRU(units, reset_after=False, **kwargs)
    return {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}[cell](
        units, **kwargs)


def random_weights(layer, rng, scale=0.6):
    layer.set_weights([rng.standard_normal(w.shape) * scale for w in layer.get_weights()])


def expected_outputs(layer, x):
    W = layer.get_weights()
    seq, h, c = keras_rnn(layer._cell, x, W[0], W[1], W[2] if layer.use_bias else None,
                          layer.activation, layer.recurrent_activation,
                          getattr(layer, "reset_after", True), layer.go_backwards)
    out = seq if layer.return_sequences else h
    if not layer.return_state:
        return [out]
    return [out, h] + ([c] if layer._cell == "lstm" else [])


CELLS = ["simple_rnn", "lstm", "gru", "gru_v1"]


# ------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(3, 5, 4, 7), (1, 1, 2, 3), (1, 9, 3, 5), (6, 4, 1, 17)])
@pytest.mark.parametrize("options", [{}, {"return_sequences": True}, {"go_backwards": True},
                                     {"return_state": True},
                                     {"return_sequences": True, "return_state": True,
                                      "go_backwards": True}])
def test_forward_matches_keras_equations(cell, shape, options):
    B, T, F, u = shape
    rng = np.random.default_rng(hash((cell, shape)) % 2**32)
    layer = make_layer(cell, u, **options)
    layer.build((T, F))
    random_weights(layer, rng)
    x = rng.standard_normal((B, T, F))
    out = layer(x)
    out = out if isinstance(out, list) else [out]
    expected = expected_outputs(layer, x)
    assert len(out) == len(expected)
    for a, e in zip(out, expected):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    shapes = layer.compute_output_shape((T, F))
    assert [tuple(a.shape[1:]) for a in out] == (shapes if isinstance(shapes, list) else [shapes])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("act,ract", [("relu", "sigmoid"), ("linear", "tanh"),
                                      ("sigmoid", "relu")])
def test_other_activations_and_no_bias(cell, act, ract):
    rng = np.random.default_rng(7)
    kwargs = {"activation": act, "use_bias": False, "return_sequences": True}
    if cell != "simple_rnn":
        kwargs["recurrent_activation"] = ract
    layer = make_layer(cell, 6, **kwargs)
    layer.build((4, 3))
    random_weights(layer, rng, 0.4)
    assert len(layer.get_weights()) == 2
    x = rng.standard_normal((2, 4, 3))
    np.testing.assert_allclose(layer(x), expected_outputs(layer, x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threaded_time_loop_matches_reference(cell, dtype):
    # batch 37 with 2 threads: rows split 16 / 21, every row computed like on one thread;
    # 150 units: several pre-packed panels of the recurrent kernel (and of its transpose)
    rng = np.random.default_rng(11)
    layer = make_layer(cell, 150, return_sequences=True, dtype=dtype)
    layer.build((6, 9))
    random_weights(layer, rng, 0.1)
    x = rng.standard_normal((37, 6, 9)).astype(dtype)
    old = fastnet.get_num_threads()
    try:
        fastnet.set_num_threads(2)
        y2 = layer(x)
        fastnet.set_num_threads(1)
        y1 = layer(x)
    finally:
        fastnet.set_num_threads(old)
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(y2, y1, rtol=tol, atol=tol)
    ref = expected_outputs(layer, x.astype(np.float64))[0]
    np.testing.assert_allclose(y1, ref, rtol=tol * 10, atol=tol * 10)


def test_lstm_weight_layout_and_unit_forget_bias():
    layer = layers.LSTM(5)
    layer.build((8, 3))
    assert [w.shape for w in layer.get_weights()] == [(3, 20), (5, 20), (20,)]
    assert list(layer.params) == ["kernel", "recurrent_kernel", "bias"]
    b = layer.params["bias"]
    np.testing.assert_array_equal(b[5:10], 1.0)
    np.testing.assert_array_equal(np.delete(b, np.s_[5:10]), 0.0)
    U = layer.params["recurrent_kernel"].astype(np.float64)
    np.testing.assert_allclose(U @ U.T, np.eye(5), atol=1e-5)   # orthogonal rows
    no_forget = layers.LSTM(5, unit_forget_bias=False)
    no_forget.build((8, 3))
    np.testing.assert_array_equal(no_forget.params["bias"], 0.0)
    gru = layers.GRU(4)
    gru.build((2, 3))
    assert [w.shape for w in gru.get_weights()] == [(3, 12), (4, 12), (2, 12)]
    gru1 = layers.GRU(4, reset_after=False)
    gru1.build((2, 3))
    assert gru1.params["bias"].shape == (12,)
    rnn = layers.SimpleRNN(4)
    rnn.build((2, 3))
    assert [w.shape for w in rnn.get_weights()] == [(3, 4), (4, 4), (4,)]


def test_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    B, T, F, u = 3, 7, 4, 6
    layer = layers.LSTM(u, return_sequences=True, return_state=True, dtype="float64")
    layer.build((T, F))
    random_weights(layer, rng, 0.5)
    kernel, rec, bias = layer.get_weights()
    ref = torch.nn.LSTM(F, u, batch_first=True).double()
    with torch.no_grad():   # torch's gate order i, f, g, o is Keras' i, f, c, o
        ref.weight_ih_l0.copy_(torch.from_numpy(kernel.T))
        ref.weight_hh_l0.copy_(torch.from_numpy(rec.T))
        ref.bias_ih_l0.copy_(torch.from_numpy(bias))
        ref.bias_hh_l0.zero_()
    x = rng.standard_normal((B, T, F))
    seq, h, c = layer(x)
    tseq, (th, tc) = ref(torch.from_numpy(x))
    np.testing.assert_allclose(seq, tseq.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, th[0].detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, tc[0].detach().numpy(), rtol=1e-12, atol=1e-12)


def test_gru_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    B, T, F, u = 2, 5, 3, 4
    layer = layers.GRU(u, return_sequences=True, dtype="float64")
    layer.build((T, F))
    random_weights(layer, rng, 0.5)
    kernel, rec, bias = layer.get_weights()

    def torch_order(w):   # Keras z, r, h -> torch r, z, n (along the last axis)
        z, r, h = np.split(w, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)
    ref = torch.nn.GRU(F, u, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(torch_order(kernel).T))
        ref.weight_hh_l0.copy_(torch.from_numpy(torch_order(rec).T))
        ref.bias_ih_l0.copy_(torch.from_numpy(torch_order(bias[0])))
        ref.bias_hh_l0.copy_(torch.from_numpy(torch_order(bias[1])))
    x = rng.standard_normal((B, T, F))
    np.testing.assert_allclose(layer(x), ref(torch.from_numpy(x))[0].detach().numpy(),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients
def check_multi_output_grads(layer, x, seed=0, rtol=1e-6, atol=1e-8, max_points=60):
    """Finite differences of sum_i <output_i, r_i> against backward([r_i]), for the input and
    every weight (the layer may have one or several outputs)."""
    rng = np.random.default_rng(seed)
    out = layer.forward(x, training=True)
    multi = isinstance(out, list)
    rs = [rng.standard_normal(o.shape) for o in (out if multi else [out])]

    def f():
        o = layer.forward(x, training=True)
        return float(sum(np.sum(a * r) for a, r in zip(o if multi else [o], rs)))

    layer.forward(x, training=True)
    dx = layer.backward([r.copy() for r in rs] if multi else rs[0].copy())
    dx = None if dx is None else np.array(dx)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    if dx is not None:
        idx, num = numeric_grad(f, x, max_points=max_points)
        np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=rtol, atol=atol,
                                   err_msg=f"{layer.name}: input gradient")
    for name, p in layer.params.items():
        idx, num = numeric_grad(f, p, max_points=max_points)
        np.testing.assert_allclose(grads[name].reshape(-1)[idx], num, rtol=rtol, atol=atol,
                                   err_msg=f"{layer.name}: gradient of {name}")
    return dx, grads


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("options", [{}, {"return_sequences": True, "go_backwards": True},
                                     {"return_state": True},
                                     {"return_sequences": True, "return_state": True}])
def test_gradients(cell, options):
    rng = np.random.default_rng(3)
    layer = make_layer(cell, 5, **options)
    layer.build((4, 3))
    random_weights(layer, rng, 0.5)
    layer.need_input_grad = True
    check_multi_output_grads(layer, rng.standard_normal((2, 4, 3)))


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_batch_one_single_step_and_threads(cell):
    rng = np.random.default_rng(4)
    layer = make_layer(cell, 3, return_sequences=True)
    layer.build((1, 2))
    random_weights(layer, rng)
    check_multi_output_grads(layer, rng.standard_normal((1, 1, 2)))
    # batch 24 x 70 units runs the time loops on 2 threads (rows 0-7 / 8-23), with two
    # panels of the recurrent kernel's transpose (float64 panels are 64 columns wide)
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(2)
    try:
        layer = make_layer(cell, 70, activation="relu" if cell == "simple_rnn" else "tanh")
        layer.build((3, 2))
        random_weights(layer, rng, 0.1)
        check_multi_output_grads(layer, rng.standard_normal((24, 3, 2)), rtol=1e-5, atol=1e-7,
                                 max_points=15)
    finally:
        fastnet.set_num_threads(old)


def test_frozen_layer_and_no_input_grad():
    rng = np.random.default_rng(8)
    layer = layers.LSTM(4, dtype="float64")
    layer.build((3, 2))
    x = rng.standard_normal((2, 3, 2))
    layer.need_input_grad = False
    layer.forward(x)
    assert layer.backward(rng.standard_normal((2, 4))) is None
    layer.trainable = False
    layer.need_input_grad = True
    before = {k: v.copy() for k, v in layer.grads.items()}
    layer.forward(x)
    dx = layer.backward(rng.standard_normal((2, 4)))
    assert dx.shape == x.shape
    for k in before:
        np.testing.assert_array_equal(layer.grads[k], before[k])


def test_regularizers_add_their_gradient():
    rng = np.random.default_rng(9)
    layer = layers.GRU(3, dtype="float64", kernel_regularizer="l2",
                       recurrent_regularizer="l1", bias_regularizer="l2")
    layer.build((2, 2))
    random_weights(layer, rng)
    x = rng.standard_normal((2, 2, 2))
    r = rng.standard_normal((2, 3))

    def f():
        return float(np.sum(layer.forward(x) * r)) + layer.regularization_loss()

    layer.forward(x)
    layer.backward(r)
    for name, p in layer.params.items():
        idx, num = numeric_grad(f, p)
        np.testing.assert_allclose(layer.grads[name].reshape(-1)[idx], num, rtol=1e-6,
                                   atol=1e-8)


# ------------------------------------------------------------------------------- training
def test_embedding_lstm_model_learns_a_sequence_task():
    """Label = the first token of a 6-token sequence: the LSTM must carry it to the end."""
    fastnet.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8, size=(1200, 6))
    y = x[:, 0] % 4
    model = models.Sequential([
        layers.Embedding(8, 8, input_shape=(6,)),
        layers.LSTM(24),
        layers.Dense(4, activation="softmax"),
    ])
    model.compile(optimizer=fastnet.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x[:1000], y[:1000], epochs=8, batch_size=50, verbose=0)
    loss, acc = model.evaluate(x[1000:], y[1000:], verbose=0)
    assert acc >= 0.95, acc


def test_stacked_recurrent_model_in_float64_trains_and_round_trips(tmp_path):
    fastnet.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 6, 3))
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    model = models.Sequential([
        layers.GRU(8, return_sequences=True, input_shape=(6, 3), dtype="float64"),
        layers.SimpleRNN(8, return_sequences=True, go_backwards=True, dtype="float64"),
        layers.LSTM(8, dtype="float64"),
        layers.Dense(2, activation="softmax", dtype="float64"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    path = tmp_path / "rnn.fastnet"
    model.save(path)
    loaded = models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ------------------------------------------------------------------------ config and errors
@pytest.mark.parametrize("cell", CELLS)
def test_get_config_round_trip(cell):
    layer = make_layer(cell, 9, return_sequences=True, go_backwards=True,
                       kernel_regularizer="l2", activation="relu", name=f"rt_{cell}")
    cfg = layer.get_config()
    clone = type(layer).from_config(cfg)
    assert clone.get_config() == cfg
    assert cfg["units"] == 9 and cfg["activation"] == "relu" and cfg["go_backwards"]
    if cell != "simple_rnn":
        assert cfg["recurrent_activation"] == "sigmoid"
    else:
        assert "recurrent_activation" not in cfg
    if cell == "gru_v1":
        assert cfg["reset_after"] is False


@pytest.mark.parametrize("kwargs,err", [
    ({"units": 0}, ValueError), ({"units": 2.5}, ValueError),
    ({"units": 3, "activation": "softmax"}, ValueError),
    ({"units": 3, "recurrent_activation": "gelu"}, ValueError),
    ({"units": 3, "dropout": 0.5}, ValueError),
    ({"units": 3, "recurrent_dropout": 0.1}, ValueError),
    ({"units": 3, "stateful": True}, ValueError),
    ({"units": 3, "return_sequences": "yes"}, TypeError),
    ({"units": 3, "kernel_initializer": "nope"}, ValueError),
    ({"units": 3, "bogus": 1}, TypeError),
])
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        layers.LSTM(**kwargs)


def test_bad_inputs_and_gradients():
    layer = layers.LSTM(3, return_state=True, dtype="float64")
    with pytest.raises(ValueError, match="steps, features"):
        layer(np.zeros((2, 5)))
    x = np.zeros((2, 4, 3))
    layer(x)
    layer.forward(x)
    with pytest.raises(ValueError, match="list of 3"):
        layer.backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one shape"):
        layer.backward([np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3))])
    with pytest.raises(RuntimeError, match="before forward"):
        layers.GRU(2).backward(np.zeros((1, 2)))
    with pytest.raises(TypeError):
        layers.SimpleRNN(3, recurrent_activation="sigmoid")


def test_op_argument_checks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    W, U = rng.standard_normal((4, 8)), rng.standard_normal((2, 8))
    with pytest.raises(ValueError, match="cell"):
        rnn_ops.recurrent_forward("lstmx", x, W, U)
    with pytest.raises(ValueError, match="kernel must have shape"):
        rnn_ops.recurrent_forward("lstm", x, W[:3], U)
    with pytest.raises(ValueError, match="recurrent_kernel"):
        rnn_ops.recurrent_forward("gru", x, W, U)
    with pytest.raises(TypeError, match="dtype"):
        rnn_ops.recurrent_forward("lstm", x.astype(np.float32), W, U)
    with pytest.raises(ValueError, match="bias must have shape"):
        rnn_ops.recurrent_forward("lstm", x, W, U, np.zeros(7))
    with pytest.raises(ValueError, match="dimensions"):
        rnn_ops.recurrent_forward("lstm", x[0], W, U)
    with pytest.raises(ValueError, match="C-contiguous"):
        rnn_ops.recurrent_forward("lstm", x[:, ::-1], W, U)
    tape = rnn_ops.recurrent_forward("lstm", x, W, U)
    with pytest.raises(ValueError, match="dy must have shape"):
        rnn_ops.recurrent_backward(tape, np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="kernel_grad"):
        rnn_ops.recurrent_backward(tape, kernel_grad=np.zeros((4, 7)))
    with pytest.raises(ValueError, match="bias_grad"):
        rnn_ops.recurrent_backward(tape, bias_grad=np.zeros(8))
    with pytest.raises(TypeError, match="RecurrentTape"):
        rnn_ops.recurrent_backward(None)
    # a reversed, strided dy is read in place and gives the same result as a copy
    dy = rng.standard_normal((2, 6, 2))[:, ::-2]
    a = rnn_ops.recurrent_backward(tape, dy).copy()
    b = rnn_ops.recurrent_backward(tape, np.ascontiguousarray(dy))
    np.testing.assert_array_equal(a, b)


def test_cli_demo_lstm_runs(capsys, monkeypatch):
    from fastnet import cli
    from fastnet.examples import lstm as example
    load = example.load_rows

    def few_rows():   # the plumbing only: a slice of the bundled digits keeps this test short
        (xt, yt), (xs, ys) = load()
        return (xt[:320], yt[:320]), (xs[:100], ys[:100])
    monkeypatch.setattr(example, "load_rows", few_rows)
    assert cli.main(["demo", "--model", "lstm", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "LSTM(128)" in out and "2 epochs" in out and "batch 32" in out
    acc = float(out.split("test accuracy:")[1].split()[0])
    assert 0.0 <= acc <= 1.0
