"""Functional models: DAGs with several inputs/outputs and shared layers, end to end."""
import json

import numpy as np
import pytest

from fastnet import layers, models
from fastnet.layers.base import Layer
from fastnet.utils import set_random_seed
from _gradcheck import numeric_grad


def residual_dag(dtype="float64"):
    """Two image inputs, a shared convolution (with an L2 penalty), BatchNorm, a residual Add,
    every merge layer, a softmax classifier and a linear regression output."""
    D = dtype
    a = layers.Input(shape=(5, 5, 2), name="img_a", dtype=D)
    b = layers.Input(shape=(5, 5, 2), name="img_b", dtype=D)
    shared = layers.Conv2D(3, 3, padding="same", activation="tanh", kernel_regularizer="l2",
                           dtype=D, name="shared_conv")
    ca, cb = shared(a), shared(b)
    r = layers.Add(dtype=D)([layers.BatchNormalization(dtype=D)(ca), cb])
    res = layers.Add(dtype=D)([r, layers.Conv2D(3, 3, padding="same", dtype=D)(r)])
    cat = layers.Concatenate(dtype=D)([layers.Multiply(dtype=D)([res, cb]), ca])
    cls = layers.Dense(4, activation="softmax", dtype=D, name="cls")(layers.Flatten(dtype=D)(cat))
    g = layers.GlobalAveragePooling2D(dtype=D)(layers.Subtract(dtype=D)([res, ca]))
    m = layers.Maximum(dtype=D)([g, layers.Dense(3, dtype=D)(g)])
    reg = layers.Dense(2, dtype=D, name="reg")(layers.Average(dtype=D)([g, m]))
    return models.Model([a, b], [cls, reg], name="residual_dag")


def total_loss_and_grads(model, xs, ys):
    outs = model._forward_list(xs, True)
    loss, grads = model._losses_grads(outs, ys, [None] * len(ys))
    return loss + model._regularization_loss(), grads


def test_dag_gradients_match_finite_differences():
    set_random_seed(0)
    model = residual_dag()
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.7])
    assert model._fused_softmax == [True, False]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, 5, 5, 2)), rng.standard_normal((3, 5, 5, 2))]
    ys = [model._losses[0].prepare_targets(np.array([0, 3, 1]), (3, 4), np.float64),
          model._losses[1].prepare_targets(rng.standard_normal((3, 2)), (3, 2), np.float64)]
    _, grads = total_loss_and_grads(model, xs, ys)
    model._backward_list(grads)
    analytic = model._flat_grads.copy()

    def f():
        outs = model._forward_list(xs, True)
        model._losses_grads(outs, ys, [None, None], need_grad=False)
        return sum(l for l in model._last_losses) + model._regularization_loss()

    idx, num = numeric_grad(f, model._flat_params[:model._n_trainable], max_points=250)
    np.testing.assert_allclose(analytic[idx], num, rtol=1e-5, atol=1e-8)
    # the shared convolution's gradient is the sum over both calls: nonzero and checked above
    assert np.abs(model.get_layer("shared_conv").grads["kernel"]).sum() > 0


def toy_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, 8)), rng.standard_normal((n, 8))
    label = np.argmax(a[:, :3] - b[:, :3], axis=1)
    target = (a[:, 3:6].sum(1) + b[:, 3:6].sum(1))[:, None]
    return a.astype(np.float32), b.astype(np.float32), label, target.astype(np.float32)


def toy_model():
    a, b = layers.Input(shape=(8,), name="a"), layers.Input(shape=(8,), name="b")
    shared = layers.Dense(32, activation="relu", name="shared")
    ha, hb = shared(a), shared(b)
    cls = layers.Dense(3, activation="softmax", name="cls")(layers.Subtract()([ha, hb]))
    reg = layers.Dense(1, name="reg")(layers.Concatenate()([ha, hb]))
    return models.Model([a, b], [cls, reg])


def test_two_inputs_two_outputs_shared_layer_trains():
    set_random_seed(1)
    a, b, label, target = toy_data()
    model = toy_model()
    model.compile(optimizers_adam(0.01), loss={"cls": "sparse_categorical_crossentropy",
                                               "reg": "mse"},
                  metrics={"cls": "accuracy"}, loss_weights={"reg": 0.5})
    hist = model.fit({"a": a, "b": b}, {"cls": label, "reg": target}, epochs=25, batch_size=32,
                     verbose=0, validation_split=0.2)
    h = hist.history
    assert sorted(h) == sorted(["loss", "cls_loss", "reg_loss", "cls_accuracy", "val_loss",
                                "val_cls_loss", "val_reg_loss", "val_cls_accuracy"])
    assert h["loss"][-1] < 0.3 * h["loss"][0]
    np.testing.assert_allclose(h["loss"], np.add(h["cls_loss"], h["reg_loss"]), rtol=1e-5)
    assert h["val_cls_accuracy"][-1] >= 0.9
    logs = model.evaluate([a, b], [label, target], verbose=0, return_dict=True)
    assert list(logs) == ["loss", "cls_loss", "reg_loss", "cls_accuracy"]
    assert model.evaluate([a, b], [label, target], verbose=0) == pytest.approx(list(logs.values()))
    p_cls, p_reg = model.predict([a, b], batch_size=64, verbose=0)
    assert p_cls.shape == (600, 3) and p_reg.shape == (600, 1)
    assert np.mean(np.argmax(p_cls, 1) == label) == pytest.approx(logs["cls_accuracy"])
    single = model.train_on_batch([a[:32], b[:32]], [label[:32], target[:32]], return_dict=True)
    assert set(single) == {"loss", "cls_loss", "reg_loss", "cls_accuracy"}


def optimizers_adam(lr):
    from fastnet import optimizers
    return optimizers.Adam(learning_rate=lr)


def chain_layers():
    return [layers.Conv2D(4, 3, padding="same"), layers.BatchNormalization(),
            layers.Activation("relu"), layers.MaxPooling2D(), layers.Dropout(0.3, seed=3),
            layers.Flatten(), layers.Dense(6, activation="relu"),
            layers.Dense(3, activation="softmax")]


def test_sequential_and_functional_chain_are_identical():
    set_random_seed(2)
    seq = models.Sequential([layers.Input(shape=(6, 6, 2))] + chain_layers())
    x = inp = layers.Input(shape=(6, 6, 2))
    for layer in chain_layers():
        x = layer(x)
    fun = models.Model(inp, x)
    fun.set_weights(seq.get_weights())
    rng = np.random.default_rng(0)
    data = rng.standard_normal((40, 6, 6, 2)).astype(np.float32)
    labels = np.arange(40) % 3
    np.testing.assert_array_equal(seq.predict(data, verbose=0), fun.predict(data, verbose=0))
    for model in (seq, fun):
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    h1 = seq.fit(data, labels, epochs=3, batch_size=8, shuffle=False, verbose=0)
    h2 = fun.fit(data, labels, epochs=3, batch_size=8, shuffle=False, verbose=0)
    assert h1.history == h2.history
    for w1, w2 in zip(seq.get_weights(), fun.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(seq.predict(data, verbose=0), fun.predict(data, verbose=0))
    # both fold BatchNormalization and the ReLU into the convolution at inference
    for model in (seq, fun):
        folds = [(type(l).__name__, act) for l, bn, act in model._inference_plan if bn is not None]
        assert folds == [("Conv2D", "relu")]


def test_config_round_trip_keeps_graph_and_shared_layers():
    set_random_seed(3)
    model = residual_dag("float32")
    cfg = model.get_config()
    cfg = json.loads(json.dumps(cfg))   # JSON-ready
    clone = models.Functional.from_config(cfg)
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert [type(l) for l in clone.layers] == [type(l) for l in model.layers]
    assert len(clone.get_layer("shared_conv")._inbound_nodes) == 2
    assert json.loads(json.dumps(clone.get_config())) == cfg
    clone.set_weights(model.get_weights())
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((4, 5, 5, 2)).astype(np.float32) for _ in range(2)]
    for p, q in zip(model.predict(xs, verbose=0), clone.predict(xs, verbose=0)):
        np.testing.assert_array_equal(p, q)
    assert cfg["input_layers"] == [["img_a", 0, 0], ["img_b", 0, 0]]
    assert cfg["output_layers"] == [["cls", 0, 0], ["reg", 0, 0]]
    # a single input and output stay single
    x = layers.Input(shape=(3,))
    single = models.Model(x, layers.Dense(2)(x))
    back = models.Functional.from_config(single.get_config())
    assert back.input_shape == (None, 3) and back.output_shape == (None, 2)
    assert isinstance(back, models.Model)


def test_clear_errors():
    a, b = layers.Input(shape=(4,)), layers.Input(shape=(4,))
    h = layers.Dense(3)(a)
    with pytest.raises(ValueError, match="Graph disconnected"):
        models.Model(a, layers.Add()([h, layers.Dense(3)(b)]))
    with pytest.raises(ValueError, match="not connected to any output"):
        models.Model([a, b], h)
    with pytest.raises(ValueError, match="incompatible shapes"):
        layers.Add()([h, a])
    d1 = layers.Dense(2, name="twin")(a)
    d2 = layers.Dense(2, name="twin")(a)
    with pytest.raises(ValueError, match="names must be unique.*twin"):
        models.Model(a, [d1, d2])
    with pytest.raises(ValueError, match="must come from fastnet.layers.Input"):
        models.Model(h, layers.Dense(1)(h))
    with pytest.raises(TypeError, match="symbolic tensor"):
        models.Model(np.ones((2, 4)), h)
    with pytest.raises(TypeError, match="Model\\(inputs, outputs"):
        models.Model()
    dense = layers.Dense(3)
    dense(a)
    with pytest.raises(ValueError, match="was built for inputs"):
        dense(layers.Input(shape=(5,)))     # a shared layer keeps its input shape
    with pytest.raises(TypeError, match="cannot mix"):
        layers.Add()([a, np.ones((1, 4))])
    with pytest.raises(TypeError, match="takes one input"):
        layers.Dense(2)([a, b])
    model = models.Model([a, b], layers.Add()([layers.Dense(3)(a), layers.Dense(3)(b)]))
    model.compile("sgd", "mse")
    x = np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="2 inputs"):
        model.fit(x, np.ones((5, 3)), verbose=0)
    with pytest.raises(ValueError, match="names \\['nope'\\]"):
        model.fit({"nope": x}, np.ones((5, 3)), verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        model.fit([x, x[:4]], np.ones((5, 3)), verbose=0)
    with pytest.raises(ValueError, match="must have shape"):
        model.predict([x, np.ones((5, 3))], verbose=0)
    with pytest.raises(ValueError, match="takes 2 input"):
        model(a)    # nesting a model (tests/test_nested_models.py): one tensor per input
    with pytest.raises(ValueError, match="several inputs"):
        models.Sequential([layers.Input(shape=(4,)), layers.Add()])
    two = models.Model(a, [layers.Dense(1, name="o1")(a), layers.Dense(1, name="o2")(a)])
    with pytest.raises(ValueError, match="list of 3"):
        two.compile("sgd", ["mse", "mse", "mse"])
    with pytest.raises(ValueError, match="names \\['o3'\\]"):
        two.compile("sgd", {"o3": "mse"})
    two.compile("sgd", "mse")
    with pytest.raises(ValueError, match="class_weight"):
        two.fit(x, [np.ones(5), np.ones(5)], class_weight={0: 1.0}, verbose=0)


def check_single_output_grads(model, xb, yb, max_points):
    """A float64 one-output model's weight gradients against finite differences (mse)."""
    _, g = model._loss_grad(model._forward(xb, True), yb)
    model._backward(g)
    analytic = model._flat_grads.copy()

    def f():
        return model._loss_grad(model._forward(xb, True), yb, need_grad=False)[0]

    idx, num = numeric_grad(f, model._flat_params, max_points=max_points)
    np.testing.assert_allclose(analytic[idx], num, rtol=1e-6, atol=1e-9)


class SplitHalves(Layer):
    """A layer with two outputs: (batch, 2k) -> [2 * first half, second half]."""

    def compute_output_shape(self, input_shape):
        k = input_shape[0] // 2
        return [(k,), (input_shape[0] - k,)]

    def forward(self, x, training=False):
        k = self.output_shape[0][0]
        a = np.multiply(x[:, :k], 2.0, out=self.buffer("a", (x.shape[0], k)))
        b = self.buffer("b", (x.shape[0], x.shape[1] - k))
        np.copyto(b, x[:, k:])
        return [a, b]

    def backward(self, dys):
        self.received = [np.array(d, copy=True) for d in dys]
        k = self.output_shape[0][0]
        dx = self.buffer("dx", (dys[0].shape[0], dys[0].shape[1] + dys[1].shape[1]))
        np.multiply(dys[0], 2.0, out=dx[:, :k])
        dx[:, k:] = dys[1]
        return dx


def test_multi_output_layer_protocol():
    set_random_seed(4)
    x = layers.Input(shape=(6,), dtype="float64")
    h = layers.Dense(6, activation="tanh", dtype="float64")(x)
    split = SplitHalves(dtype="float64")
    first, second = split(h)
    assert first.shape == (None, 3) and second.shape == (None, 3)
    used_one = models.Model(x, layers.Dense(2, dtype="float64")(first))
    used_one.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    xb, yb = rng.standard_normal((4, 6)), rng.standard_normal((4, 2))
    out = used_one._forward(xb, True)
    _, g = used_one._loss_grad(out, yb)
    used_one._backward(g)
    assert isinstance(split.received[1], np.ndarray) and not split.received[1].any()
    both = models.Model(x, layers.Add(dtype="float64")([first, second]))
    both.compile("sgd", "mse")
    check_single_output_grads(both, xb, rng.standard_normal((4, 3)), 80)
    eager = split(np.ones((2, 6)))
    assert isinstance(eager, list) and eager[0].shape == (2, 3)


def test_grad_ready_hook_reports_each_layer_once_with_final_gradients():
    set_random_seed(5)
    model = toy_model()
    model.compile("sgd", ["sparse_categorical_crossentropy", "mse"])
    seen = []
    model._grad_ready_hook = lambda layer: seen.append(
        (layer.name, {k: v.copy() for k, v in layer.grads.items()}))
    a, b, label, target = toy_data(16)
    xs, ys = model._prepare_xy([a, b], [label, target], "test")
    _, grads = total_loss_and_grads(model, xs, ys)
    model._backward_list(grads)
    names = [n for n, _ in seen]
    assert sorted(names) == sorted(l.name for l in model.layers if l.name not in ("a", "b"))
    assert names[-1] == "shared"          # the first layer (called twice) comes last
    concat = next(l.name for l in model.layers if isinstance(l, layers.Concatenate))
    assert names.index("reg") < names.index(concat)
    for name, grads_at_hook in seen:      # what the hook saw is what the step uses
        for k, v in grads_at_hook.items():
            np.testing.assert_array_equal(v, model.get_layer(name).grads[k])
    seen.clear()
    model.train_on_batch([a, b], [label, target])     # fit and train_on_batch call it too
    assert sorted(n for n, _ in seen) == sorted(names)


def test_output_without_loss_gets_no_gradient():
    set_random_seed(6)
    x = layers.Input(shape=(4,))
    h = layers.Dense(5, activation="relu")(x)
    main, aux = layers.Dense(1, name="main")(h), layers.Dense(2, name="aux")(h)
    model = models.Model(x, [main, aux])
    model.compile("sgd", loss={"main": "mse"})
    before = model.get_layer("aux").get_weights()
    for g in model.get_layer("aux").grads.values():
        g[...] = 1.0       # stale values: the backward must zero them
    rng = np.random.default_rng(0)
    data = rng.standard_normal((32, 4)).astype(np.float32)
    hist = model.fit(data, {"main": data[:, :1]}, epochs=2, batch_size=8, verbose=0)
    assert sorted(hist.history) == ["loss", "main_loss"]
    for w0, w1 in zip(before, model.get_layer("aux").get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert not any(g.any() for g in model.get_layer("aux").grads.values())
    assert [p.shape for p in model.predict(data, verbose=0)] == [(32, 1), (32, 2)]


def test_models_sharing_layers_train_the_same_weights():
    set_random_seed(7)
    x = layers.Input(shape=(4,))
    enc_layer = layers.Dense(3, name="enc")
    h = enc_layer(x)
    encoder = models.Model(x, h)
    full = models.Model(x, layers.Dense(1, name="head")(h))
    full.compile("sgd", "mse")
    encoder.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((16, 4)).astype(np.float32)
    full.fit(data, data[:, :1], epochs=1, verbose=0)
    np.testing.assert_allclose(encoder.predict(data, verbose=0), enc_layer(data), rtol=1e-6)
    k0 = enc_layer.get_weights()[0]
    encoder.fit(data, data[:, :3], epochs=2, verbose=0)        # takes the weights back
    k1 = enc_layer.get_weights()[0]
    assert not np.array_equal(k0, k1)
    full.fit(data, data[:, :1], epochs=1, verbose=0)
    assert not np.array_equal(k1, enc_layer.get_weights()[0])
    np.testing.assert_allclose(encoder.predict(data, verbose=0), enc_layer(data), rtol=1e-6)


def test_summary_shows_the_graph(capsys):
    toy_model().summary()
    text = capsys.readouterr().out
    assert "Connected to" in text
    assert "shared (Dense)" in text and "a[0][0], b[0][0]" in text
    assert "shared[0][0], shared[1][0]" in text


def test_symbolic_operators_and_eager_merge():
    a, b = layers.Input(shape=(3,)), layers.Input(shape=(3,))
    y = (a + b) * a - b
    model = models.Model([a, b], y)
    xa = np.arange(6, dtype=np.float32).reshape(2, 3)
    xb = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(model.predict([xa, xb], verbose=0), (xa + xb) * xa - xb)
    np.testing.assert_array_equal(model([xa, xb]), (xa + xb) * xa - xb)
    np.testing.assert_array_equal(layers.Add()([xa, xb]), xa + xb)


def test_shared_layer_keeps_separate_activations_per_call():
    """The second call of a shared layer must not overwrite the first call's saved input."""
    set_random_seed(8)
    x = layers.Input(shape=(5,), dtype="float64")
    d = layers.Dense(5, activation="tanh", dtype="float64")
    y = d(d(d(x)))                     # the same layer three times in a row
    model = models.Model(x, y)
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    check_single_output_grads(model, rng.standard_normal((3, 5)), rng.standard_normal((3, 5)),
                              40)


def test_resnet_example_builds_and_learns():
    from fastnet import cli
    from fastnet.examples import resnet
    assert "resnet" in cli.DEMO_EXAMPLES and callable(resnet.demo)
    set_random_seed(9)
    model = resnet.build_resnet()
    assert model.count_params() == 78426
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds.count("Add") == 3 and kinds.count("BatchNormalization") == 9
    (x, y), _ = resnet.load_padded_digits()
    assert x.shape[1:] == (32, 32, 1) and not x[:, :2].any() and not x[:, :, -2:].any()
    model.compile(optimizers_adam(2e-3), "sparse_categorical_crossentropy", ["accuracy"])
    hist = model.fit(x[:192], y[:192], epochs=4, batch_size=32, verbose=0)
    loss = hist.history["loss"]
    assert all(b < a for a, b in zip(loss, loss[1:])) and loss[-1] < 0.75 * loss[0], loss


def test_sample_weight_per_output_and_validation_data():
    set_random_seed(10)
    x = layers.Input(shape=(3,), name="x")
    h = layers.Dense(4, activation="relu")(x)
    model = models.Model(x, [layers.Dense(1, name="u")(h), layers.Dense(1, name="v")(h)])
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((10, 3)).astype(np.float32)
    yu, yv = rng.standard_normal((10, 1)), rng.standard_normal((10, 1))
    plain = model.evaluate(data, [yu, yv], verbose=0, return_dict=True)
    w = np.r_[np.ones(5), np.zeros(5)]
    weighted = model.evaluate(data, {"u": yu, "v": yv}, sample_weight={"v": w}, verbose=0,
                              return_dict=True)
    assert weighted["u_loss"] == pytest.approx(plain["u_loss"])
    pu, pv = model.predict(data, verbose=0)
    assert weighted["v_loss"] == pytest.approx(np.sum(w[:, None] * (pv - yv) ** 2) / 10,
                                               rel=1e-5)
    hist = model.fit(data, [yu, yv], sample_weight=w, epochs=2, batch_size=4, verbose=0,
                     validation_data=(data, [yu, yv]))
    assert {"val_u_loss", "val_v_loss", "val_loss"} <= set(hist.history)
    with pytest.raises(ValueError, match="y\\['v'\\]"):
        model.fit(data, {"u": yu}, verbose=0)
