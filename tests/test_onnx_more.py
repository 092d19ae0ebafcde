"""ONNX export and import of the remaining layers: Conv2DTranspose, go_backwards recurrent
layers, Bidirectional, TimeDistributed, Normalization / MinMaxScaling / RandomCrop and the
augmentation layers; every public layer class has an exporter; the export file is atomic."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnet import layers as L, models
from fastnet.layers.base import Layer
from fastnet.utils import set_random_seed

from _bn_stats import randomize_bn
from _onnx_run import run_ort

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import fastnet.onnx  # noqa: E402
from fastnet.onnx._export import _exporters, to_onnx  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def outputs(model, x):
    out = model.predict(x, verbose=0)
    return out if isinstance(out, list) else [out]


def check(model, seed=0, importable=True):
    """ONNX Runtime on the exported graph and the imported model both give fastnet's
    predictions (1e-5), for batches of 1 and 3; returns the imported model."""
    proto = to_onnx(model)
    back = fastnet.onnx.import_model(proto) if importable else None
    rng = np.random.default_rng(seed)
    for n in (1, 3):
        x = rng.standard_normal((n,) + tuple(model.input_shape[1:])).astype(model.dtype)
        want = outputs(model, x)
        got = run_ort(proto, x)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, **TOL)
        if back is not None:
            for g, w in zip(outputs(back, x), want):
                np.testing.assert_allclose(g, w, **TOL)
    return back


def sequential(input_shape, *layer_list, seed=0):
    set_random_seed(seed)
    return models.Sequential([L.Input(shape=input_shape)] + list(layer_list))


def functional(input_shape, layer, seed=0):
    set_random_seed(seed)
    inp = L.Input(shape=input_shape)
    return models.Model(inp, layer(inp))


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("kernel,strides,output_padding,dilation", [
    (3, 2, None, 1), ((2, 4), (3, 2), None, 1), (3, (2, 3), (1, 2), 1), (4, 2, (1, 0), 1),
    (1, 3, None, 1), (3, 1, None, 2), ((2, 3), 1, None, (2, 1))])
def test_conv2d_transpose(padding, kernel, strides, output_padding, dilation):
    model = sequential((5, 6, 3), L.Conv2DTranspose(
        4, kernel, strides=strides, padding=padding, output_padding=output_padding,
        dilation_rate=dilation, activation="relu"), L.Conv2DTranspose(2, 2, use_bias=False))
    back = check(model)
    first = back.layers[0]      # (the same geometry: 'same' may come back as 'valid', k=1)
    assert type(first).__name__ == "Conv2DTranspose" and first.activation == "relu"
    assert (first.kernel_size, first.strides) == (model.layers[0].kernel_size,
                                                  model.layers[0].strides)


def test_scaling_and_crop_layers():
    rng = np.random.default_rng(1)
    norm = L.Normalization()
    images = rng.random((20, 7, 8, 3)) * 5 + 2
    norm.adapt(images)
    minmax = L.MinMaxScaling(feature_range=(-1, 2), axis=(1, 3))
    minmax.adapt(images)
    model = sequential((7, 8, 3), L.Rescaling(0.5, offset=1.0), norm,
                       L.Normalization(axis=(1, 2), mean=1.5, variance=2.0),
                       L.Normalization(mean=[1, 2, 3], variance=[4, 5, 6], invert=True), minmax,
                       L.RandomCrop(6, 7, padding=(2, 1), fill_value=0.5),
                       L.RandomCrop(3, 4), L.Conv2D(2, 2))
    back = check(model)
    kinds = [type(l).__name__ for l in back.layers]
    assert kinds.count("RandomCrop") == 2 and kinds.count("Normalization") == 4
    crop = back.layers[kinds.index("RandomCrop")]
    assert (crop.height, crop.width, crop._pad, crop.fill_value) == (6, 7, (2, 1), 0.5)
    features = sequential((5,), L.Normalization(mean=np.arange(5.0), variance=np.arange(1, 6.0)),
                          L.Dense(3))
    check(features)


def test_augmentation_layers_are_identities():
    """The random augmentation layers are identities at inference: exported as Identity
    (RandomCrop, the centre crop, above)."""
    model = sequential((8, 8, 3), L.RandomFlip(), L.RandomRotation(0.2),
                       L.RandomTranslation(0.1, 0.1), L.RandomZoom(0.2),
                       L.RandomBrightness(0.2, value_range=(0, 1)), L.RandomContrast(0.3),
                       L.CutOut(0.2, 0.2), L.Flatten(), L.Dense(2))
    proto = to_onnx(model)
    assert {n.op_type for n in proto.graph.node} == {"Flatten", "Gemm", "Identity"}
    check(model)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_v1", "rnn"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_go_backwards(cell, return_sequences):
    make = {"lstm": L.LSTM, "gru": L.GRU, "gru_v1": lambda u, **k: L.GRU(u, reset_after=False,
                                                                         **k),
            "rnn": L.SimpleRNN}[cell]
    model = functional((7, 4), make(5, go_backwards=True, return_sequences=return_sequences,
                                    return_state=True))
    proto = to_onnx(model)
    assert any(a.s == b"reverse" for n in proto.graph.node for a in n.attribute
               if a.name == "direction")
    back = check(model)
    rnn = [l for l in back.layers if hasattr(l, "go_backwards")][0]
    assert rnn.go_backwards and rnn.return_sequences == return_sequences


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional(cell, merge_mode):
    make = {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[cell]
    set_random_seed(2)
    inp = L.Input(shape=(6, 3))
    seq = L.Bidirectional(make(4, return_sequences=True), merge_mode=merge_mode)(inp)
    seq = seq if merge_mode is not None else L.Concatenate()(seq)
    last = L.Bidirectional(make(3, return_state=True), merge_mode=merge_mode)(seq)
    model = models.Model(inp, last)
    proto = to_onnx(model)
    directions = [a.s for n in proto.graph.node for a in n.attribute if a.name == "direction"]
    assert directions == [b"bidirectional"] * 2     # one ONNX node per Bidirectional
    back = check(model, seed=3)
    bidirectional = [l for l in back.layers if type(l).__name__ == "Bidirectional"]
    # the merge fused into the layer (not with return_state: the states are outputs too)
    assert [l.merge_mode for l in bidirectional] == [merge_mode or "concat", None]
    assert len(back.get_weights()) == len(model.get_weights())


def test_bidirectional_with_its_own_backward_layer():
    """A backward layer with other activations and no bias still takes one ONNX node; one of
    another size takes a node per direction: ONNX Runtime agrees, import_model refuses it
    by name."""
    same = functional((6, 3), L.Bidirectional(
        L.GRU(4, return_sequences=True, return_state=True),
        backward_layer=L.GRU(4, activation="relu", recurrent_activation="tanh", use_bias=False,
                             go_backwards=True, return_sequences=True, return_state=True)))
    check(same)
    other = functional((6, 3), L.Bidirectional(L.LSTM(4, return_sequences=True),
                                               backward_layer=L.LSTM(2, go_backwards=True,
                                                                     return_sequences=True)))
    check(other, importable=False)
    backwards = functional((6, 3), L.Bidirectional(L.SimpleRNN(3, go_backwards=True,
                                                               return_sequences=True)))
    check(backwards, importable=False)
    for model in (other, backwards):
        with pytest.raises(NotImplementedError, match="import_model: node .*time_major"):
            fastnet.onnx.import_model(to_onnx(model))


def test_time_distributed():
    model = sequential(
        (4, 9, 8, 3),
        L.TimeDistributed(L.Conv2D(5, 3, padding="same", activation="relu")),
        L.TimeDistributed(L.BatchNormalization()),
        L.TimeDistributed(L.MaxPooling2D()),
        L.TimeDistributed(L.Conv2DTranspose(2, 2, strides=2)),
        L.TimeDistributed(L.Flatten()),
        L.TimeDistributed(L.Dense(6, activation="tanh")),
        L.LSTM(5, return_sequences=True),
        L.TimeDistributed(L.Dense(3)), seed=4)
    randomize_bn(model)
    back = check(model)
    kinds = [l for l in back.layers if type(l).__name__ != "InputLayer"]
    assert [type(l).__name__ for l in kinds] == ["TimeDistributed"] * 6 + \
        ["LSTM", "TimeDistributed"]
    assert type(kinds[0].layer).__name__ == "Conv2D"
    seq = sequential((5, 7, 2), L.TimeDistributed(L.Conv1D(3, 3, padding="causal")),
                     L.TimeDistributed(L.GRU(4)), L.Bidirectional(L.LSTM(3)), seed=5)
    check(seq)


def test_global_pooling_1d():
    set_random_seed(8)
    inp = L.Input(shape=(9, 4))
    c = L.Conv1D(5, 3, activation="relu")(inp)
    out = L.Concatenate()([L.GlobalAveragePooling1D()(c), L.GlobalMaxPooling1D()(c),
                           L.Flatten()(L.GlobalMaxPooling1D(keepdims=True)(inp))])
    back = check(models.Model(inp, out))
    kinds = {type(l).__name__ for l in back.layers}
    assert {"GlobalAveragePooling1D", "GlobalMaxPooling1D"} <= kinds


@pytest.mark.parametrize("normalize", [False, True])
def test_dot(normalize):
    set_random_seed(6)
    a, b, c = L.Input(shape=(5, 4), name="a"), L.Input(shape=(3, 4), name="b"), \
        L.Input(shape=(4,), name="c")
    scores = L.Dot(axes=(2, 2), normalize=normalize)([a, b])            # (5, 3)
    mixed = L.Dot(axes=(1, 1), normalize=normalize)([scores, L.Dense(5)(c)])    # (3,)
    cos = L.Dot(axes=1, normalize=normalize)([L.Dense(6)(c), L.Dense(6)(c)])    # (1,)
    model = models.Model([a, b, c], [scores, mixed, cos])
    proto = to_onnx(model)
    assert sum(n.op_type == "Einsum" for n in proto.graph.node) == 3
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((3,) + s).astype(np.float32) for s in ((5, 4), (3, 4), (4,))]
    xs[2][0] = 0.0      # a zero vector: the norm's floor
    want = outputs(model, xs)
    for got, w in zip(run_ort(proto, xs), want):
        np.testing.assert_allclose(got, w, **TOL)
    if normalize:       # the normalization's ReduceSum has no layer to become
        with pytest.raises(NotImplementedError, match="ReduceSum"):
            fastnet.onnx.import_model(proto)
        return
    back = fastnet.onnx.import_model(proto)
    assert sum(type(l).__name__ == "Dot" for l in back.layers) == 3
    for got, w in zip(outputs(back, xs), want):
        np.testing.assert_allclose(got, w, **TOL)


def test_every_public_layer_has_an_exporter():
    import fastnet.preprocessing as pp
    table = _exporters()
    missing = set()
    for module in (L, pp):
        for name in dir(module):
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, Layer) and \
                    cls not in (Layer, L.InputLayer) and cls not in table:
                missing.add(cls.__name__)
    assert not missing


def test_unsupported_layers_are_named(tmp_path):
    class Custom(Layer):
        def forward(self, x, training=False):
            return x

    model = sequential((3, 4), L.TimeDistributed(Custom(name="mine")))
    with pytest.raises(NotImplementedError, match=r"layer time_distributed\w* \(TimeDistributed "
                                                  r"of mine: Custom\) has no ONNX export"):
        fastnet.onnx.export(model, tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = h.make_graph([h.make_node("ConvTranspose", ["x", "w"], ["y"], name="odd",
                                      strides=[2, 2], pads=[0, 2, 0, 0])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 5, 5])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 11, 9])],
                         [w])
    with pytest.raises(NotImplementedError, match="'odd' \\(ConvTranspose\\): pads"):
        fastnet.onnx.import_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))


def test_interrupted_export_keeps_the_previous_file(tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing the ONNX file: the previous file stays, no
    temporary file is left."""
    from fastnet.utils import files
    path = tmp_path / "m.onnx"
    model = sequential((4,), L.Dense(3))
    fastnet.onnx.export(model, path)
    before = path.read_bytes()

    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fastnet.onnx.export(sequential((4,), L.Dense(5), seed=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.onnx"]
    # a killed writer's temporary file (its pid gone) is removed by the next export
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        gone.wait()
    stale = tmp_path / f".m.onnx.{gone.pid}@{files._host_tag()}.{'0' * 16}{files.TMP_SUFFIX}"
    stale.write_bytes(b"partial")
    fastnet.onnx.export(model, path)
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_float64_models():
    """float64 models export as DOUBLE graphs and import back as float64.  ONNX Runtime's
    CPU kernels for Conv / ConvTranspose / LSTM / GRU / RNN are float32 only, so it runs the
    model without them."""
    set_random_seed(9)
    kw = dict(dtype="float64")
    x = np.random.default_rng(10).standard_normal((3, 4, 5))
    plain = models.Sequential([
        L.Input(shape=(4, 5)), L.TimeDistributed(L.Dense(3, **kw), **kw),
        L.Normalization(mean=[0.5, 1, 2], variance=[2.0, 3, 4], **kw),
        L.Flatten(**kw)])
    recurrent = models.Sequential([
        L.Input(shape=(4, 5)), L.TimeDistributed(L.Dense(3, **kw), **kw),
        L.Bidirectional(L.LSTM(3, return_sequences=True, **kw), merge_mode="ave", **kw),
        L.GRU(2, go_backwards=True, **kw)])
    for model in (plain, recurrent):
        proto = to_onnx(model)
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
        want = outputs(model, x)[0]
        if model is plain:
            np.testing.assert_allclose(run_ort(proto, x)[0], want, rtol=1e-12, atol=1e-12)
        back = fastnet.onnx.import_model(proto)
        assert back.dtype == np.float64
        np.testing.assert_allclose(outputs(back, x)[0], want, rtol=1e-12, atol=1e-12)


def test_models_used_as_layers_are_inlined():
    set_random_seed(11)
    enc = models.Sequential([L.Input(shape=(6,)), L.Dense(8, activation="tanh"),
                             L.BatchNormalization(), L.Dense(4)], name="encoder")
    a = L.Input(shape=(6,))
    inner = models.Model(a, L.Dense(5, activation="relu")(a), name="inner")
    x = L.Input(shape=(6,))
    h = L.Concatenate()([enc(x), inner(x), enc(L.Rescaling(0.5)(x))])   # enc called twice
    outer = models.Model(x, L.Dense(3, activation="softmax")(h))
    seq = models.Sequential([L.Input(shape=(6,)), outer, L.Dense(2)])
    randomize_bn(seq)
    back = check(seq)
    assert not any(isinstance(l, models.Model) for l in back.layers)


@pytest.mark.parametrize("opset", [13, 17])
def test_combined_model_at_opsets(opset):
    set_random_seed(12)
    x = L.Input(shape=(4, 6, 6, 2))
    h = L.TimeDistributed(L.Conv2DTranspose(3, 3, strides=2, padding="same"))(x)
    h = L.TimeDistributed(L.RandomCrop(8, 8, padding=1, fill_value=0.3))(h)
    h = L.Normalization(mean=0.1, variance=2.0)(L.TimeDistributed(L.Flatten())(h))
    s = L.Bidirectional(L.GRU(5, return_sequences=True))(h)
    model = models.Model(x, [L.LSTM(3, go_backwards=True)(s), L.Dot(axes=(2, 2))([s, s])])
    xs = np.random.default_rng(13).standard_normal((2, 4, 6, 6, 2)).astype(np.float32)
    want = outputs(model, xs)
    proto = to_onnx(model, opset)
    back = fastnet.onnx.import_model(proto)
    for got in (run_ort(proto, xs), outputs(back, xs)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **TOL)


def test_none_sizes_besides_the_batch_are_refused_clearly(tmp_path):
    inp = L.Input(shape=(None, 8))
    y = L.GlobalAveragePooling1D()(L.Conv1D(4, 3)(inp))
    model = models.Model(inp, L.Dense(2)(y))
    path = tmp_path / "m.onnx"
    with pytest.raises(NotImplementedError, match=r"None sizes besides the batch"):
        fastnet.onnx.export(model, path)
    assert not os.listdir(tmp_path)     # nothing written
