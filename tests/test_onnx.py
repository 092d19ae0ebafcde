"""ONNX export (run in ONNX Runtime, equal to fastnet within 1e-5), import, round trips, and the
``fastnet export`` command."""
import sys

import numpy as np
import pytest

from fastnet import layers as L, models
from fastnet.cli import build_classic_cnn, main as cli_main
from fastnet.utils import set_random_seed

from _bn_stats import randomize_bn
from _onnx_run import run_ort

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import fastnet.onnx  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def fastnet_out(model, xs):
    out = model.predict(xs, verbose=0)
    return out if isinstance(out, list) else [out]


def every_layer_model(dtype="float32"):
    set_random_seed(1)
    kw = dict(dtype=dtype)
    m = models.Sequential([
        L.Input(shape=(11, 10, 3)),
        L.Rescaling(0.5, offset=-0.25, **kw),
        L.ZeroPadding2D(((1, 0), (2, 1)), **kw),
        L.Conv2D(8, 3, padding="same", use_bias=False, **kw), L.BatchNormalization(**kw),
        L.ReLU(**kw),
        L.Conv2D(6, (2, 3), strides=(2, 1), activation="tanh", **kw),
        L.AveragePooling2D(3, strides=2, padding="same", **kw),
        L.BatchNormalization(**kw), L.Dropout(0.5, **kw),
        L.Conv2D(5, 1, activation="gelu", **kw), L.LeakyReLU(0.1, **kw),
        L.MaxPooling2D(2, padding="same", **kw), L.ELU(**kw),
        L.Conv2D(7, 1, activation="swish", **kw), L.Activation("softplus", **kw),
        L.Reshape((-1, 7), **kw), L.Dense(7, **kw), L.Activation("sigmoid", **kw),
        L.GELU(approximate=True, **kw),
        L.Flatten(**kw), L.Dense(9, activation="relu", **kw),
        L.BatchNormalization(**kw), L.Dense(4, **kw), L.Softmax(**kw)])
    randomize_bn(m)
    return m


def functional_model():
    set_random_seed(3)
    a = L.Input(shape=(8, 8, 3), name="image")
    b = L.Input(shape=(5,), name="meta")
    shared = L.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    ha, hb = shared(a), shared(L.ZeroPadding2D(0)(a))
    s = L.Add()([ha, hb])
    d = L.Subtract()([ha, hb])
    p = L.Multiply()([s, d, ha])
    avg = L.Average()([ha, hb, s])
    mx, mn = L.Maximum()([ha, hb]), L.Minimum()([ha, d])
    cat = L.Concatenate()([p, avg, mx, mn])
    cat1 = L.Concatenate(axis=2)([cat, cat])
    res = L.Add()([L.Conv2D(16, 3, padding="same")(cat1), cat1])
    g = L.GlobalAveragePooling2D()(res)
    gm = L.Flatten()(L.GlobalMaxPooling2D(keepdims=True)(res))
    h = L.Concatenate()([g, gm, L.Dense(6, activation="elu")(b)])
    out1 = L.Dense(3, activation="softmax", name="probs")(h)
    out2 = L.Dense(2, name="value")(L.Flatten()(L.MaxPooling2D()(mn)))
    return models.Model([a, b], [out1, out2])


@pytest.mark.parametrize("threads", [1, 2])
def test_classic_cnn_in_onnx_runtime(tmp_path, threads):
    set_random_seed(0)
    model = build_classic_cnn()
    proto = fastnet.onnx.export(model, tmp_path / "cnn.onnx")
    assert (tmp_path / "cnn.onnx").read_bytes() == proto.SerializeToString()
    x = np.random.default_rng(0).random((7, 28, 28, 1)).astype(np.float32)
    for n in (1, 7):
        np.testing.assert_allclose(run_ort(proto, x[:n], threads)[0], fastnet_out(model, x[:n])[0],
                                   **TOL)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("opset", [17, 20])
def test_every_layer_in_onnx_runtime(opset):
    from fastnet.onnx._export import to_onnx
    model = every_layer_model()
    proto = to_onnx(model, opset)
    ops = {n.op_type for n in proto.graph.node}
    assert ("Gelu" in ops) == (opset >= 20)
    x = np.random.default_rng(2).standard_normal((5, 11, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(proto, x)[0], fastnet_out(model, x)[0], **TOL)


def test_functional_model_in_onnx_runtime():
    model = functional_model()
    from fastnet.onnx._export import to_onnx
    proto = to_onnx(model)
    assert [o.name for o in proto.graph.output] == ["probs", "value"]
    assert [i.name for i in proto.graph.input] == ["image", "meta"]
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((3, 8, 8, 3)).astype(np.float32),
          rng.standard_normal((3, 5)).astype(np.float32)]
    for got, want in zip(run_ort(proto, xs), fastnet_out(model, xs)):
        np.testing.assert_allclose(got, want, **TOL)


def test_float64_model_in_onnx_runtime():
    set_random_seed(5)
    model = models.Sequential([L.Input(shape=(6,)), L.Dense(5, activation="tanh",
                                                            dtype="float64"),
                               L.Dense(3, activation="softmax", dtype="float64")])
    from fastnet.onnx._export import to_onnx
    proto = to_onnx(model)
    x = np.random.default_rng(5).standard_normal((4, 6))
    np.testing.assert_allclose(run_ort(proto, x)[0], fastnet_out(model, x)[0], rtol=1e-12)


@pytest.mark.parametrize("make", ["cnn", "every", "functional"])
def test_round_trip_import(tmp_path, make):
    if make == "cnn":
        set_random_seed(0)
        model = build_classic_cnn()
        xs = np.random.default_rng(6).random((4, 28, 28, 1)).astype(np.float32)
    elif make == "every":
        model = every_layer_model()
        xs = np.random.default_rng(6).standard_normal((4, 11, 10, 3)).astype(np.float32)
    else:
        model = functional_model()
        rng = np.random.default_rng(6)
        xs = [rng.standard_normal((4, 8, 8, 3)).astype(np.float32),
              rng.standard_normal((4, 5)).astype(np.float32)]
    fastnet.onnx.export(model, tmp_path / "m.onnx", opset=20)
    back = fastnet.onnx.import_model(tmp_path / "m.onnx")
    for got, want in zip(fastnet_out(back, xs), fastnet_out(model, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if make == "cnn":    # the same layers and weights, as a Sequential
        assert isinstance(back, models.Sequential)
        assert [type(l).__name__ for l in back.layers] == \
            [type(l).__name__ for l in model.layers]
        for a, b in zip(back.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fastnet_out(back, xs)[0], fastnet_out(model, xs)[0])


def _nchw_graph():
    """A channels-first graph as PyTorch exports it: Conv + Relu, MaxPool, Flatten of NCHW
    features, Gemm with transB, Softmax."""
    h = onnx.helper
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    fc = rng.standard_normal((5, 4 * 3 * 3)).astype(np.float32)      # (out, in): transB
    fcb = rng.standard_normal(5).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in
             ((w, "w"), (bias, "b"), (fc, "fc"), (fcb, "fcb"))]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Flatten", ["p"], ["f"], axis=1),
             h.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1),
             h.make_node("Softmax", ["g"], ["y"], axis=1)]
    graph = h.make_graph(nodes, "torchish", [h.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])], [h.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, ["N", 5])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_import_channels_first_graph():
    proto = _nchw_graph()
    model = fastnet.onnx.import_model(proto.SerializeToString())
    assert model.input_shape == (None, 6, 6, 2)       # NHWC
    assert [type(l).__name__ for l in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten",
                                                        "Dense"]
    assert model.layers[0].activation == "relu" and model.layers[0].padding == "same"
    assert model.layers[-1].activation == "softmax"
    x = np.random.default_rng(8).standard_normal((3, 2, 6, 6)).astype(np.float32)
    want = run_ort(proto, x)[0]
    np.testing.assert_allclose(fastnet_out(model, x.transpose(0, 2, 3, 1))[0], want, **TOL)


def test_unsupported_layers_and_operators(tmp_path):
    from fastnet.layers.base import Layer

    class Custom(Layer):
        def forward(self, x, training=False):
            return x

    model = models.Sequential([L.Input(shape=(3,)), Custom(name="mine")])
    with pytest.raises(NotImplementedError, match="mine .*Custom.* no ONNX export"):
        fastnet.onnx.export(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="opset"):
        fastnet.onnx.export(build_classic_cnn(), tmp_path / "x.onnx", opset=9)
    h = onnx.helper
    graph = h.make_graph([h.make_node("Cos", ["x"], ["y"], name="cosine")], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])])
    with pytest.raises(NotImplementedError, match="'cosine' \\(Cos\\)"):
        fastnet.onnx.import_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        fastnet.onnx.import_model(h.make_model(h.make_graph(
            [h.make_node("Relu", ["nothing"], ["y"])], "g", [],
            [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N"])]),
            opset_imports=[h.make_opsetid("", 17)]))


def test_missing_onnx_message(monkeypatch):
    from fastnet.onnx import _common
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fastnet\[onnx\]'"):
        _common.require_onnx()


def test_export_command(tmp_path, capsys):
    set_random_seed(0)
    model = build_classic_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(tmp_path / "cnn.fnet")
    assert cli_main(["export", str(tmp_path / "cnn.fnet"), str(tmp_path / "cnn.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(9).random((2, 28, 28, 1)).astype(np.float32)
    proto = onnx.load(str(tmp_path / "cnn.onnx"))
    np.testing.assert_allclose(run_ort(proto, x)[0], fastnet_out(model, x)[0], **TOL)
    (tmp_path / "bad.fnet").write_bytes(b"not a model")
    assert cli_main(["export", str(tmp_path / "bad.fnet"), str(tmp_path / "b.onnx")]) == 1
    assert "not a valid fastnet file" in capsys.readouterr().err


def conv_family_model():
    set_random_seed(7)
    return models.Sequential([
        L.Input(shape=(12, 10, 4)),
        L.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu"),
        L.Conv2D(8, 3, groups=4, padding="same"),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu"),
        L.DepthwiseConv2D((2, 3), strides=2),
        L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, activation="relu"),
        L.UpSampling2D((2, 3)),
        L.UpSampling2D(2, interpolation="bilinear"),
        L.MaxPooling2D(4), L.GlobalAveragePooling2D(), L.Dense(3)])


def sequence_model():
    set_random_seed(8)
    tokens = L.Input(shape=(9,), name="tokens")
    e = L.Embedding(20, 6)(tokens)
    c = L.Conv1D(7, 3, padding="causal", dilation_rate=2, activation="relu")(e)
    c = L.Conv1D(8, 2, padding="same", groups=1)(c)
    c = L.Conv1D(8, 3, groups=2, strides=2)(c)
    lstm_seq = L.LSTM(5, return_sequences=True)(c)
    gru, gru_h = L.GRU(4, return_state=True)(lstm_seq)
    gru_old = L.GRU(3, reset_after=False)(lstm_seq)
    rnn = L.SimpleRNN(3, activation="relu")(c)
    out = L.Dense(2)(L.Concatenate()([gru, gru_h, gru_old, rnn]))
    return models.Model(tokens, [out, lstm_seq])


def test_convolution_family_in_onnx_runtime_and_back():
    from fastnet.onnx._export import to_onnx
    model = conv_family_model()
    x = np.random.default_rng(9).standard_normal((3, 12, 10, 4)).astype(np.float32)
    proto = to_onnx(model)
    np.testing.assert_allclose(run_ort(proto, x)[0], fastnet_out(model, x)[0], **TOL)
    back = fastnet.onnx.import_model(proto)
    np.testing.assert_allclose(fastnet_out(back, x)[0], fastnet_out(model, x)[0], **TOL)
    kinds = [type(l).__name__ for l in back.layers]
    assert kinds.count("DepthwiseConv2D") == 3 and kinds.count("UpSampling2D") == 2


def test_sequence_layers_in_onnx_runtime():
    from fastnet.onnx._export import to_onnx
    model = sequence_model()
    tokens = np.random.default_rng(10).integers(0, 20, (4, 9)).astype(np.float32)
    proto = to_onnx(model)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Gather", "LSTM", "GRU", "RNN", "Conv"} <= ops
    for got, want in zip(run_ort(proto, tokens), fastnet_out(model, tokens)):
        np.testing.assert_allclose(got, want, **TOL)
    back = fastnet.onnx.import_model(proto)
    kinds = [type(l).__name__ for l in back.layers]
    assert {"Embedding", "Conv1D", "LSTM", "GRU", "SimpleRNN"} <= set(kinds)
    for got, want in zip(fastnet_out(back, tokens), fastnet_out(model, tokens)):
        np.testing.assert_allclose(got, want, **TOL)
