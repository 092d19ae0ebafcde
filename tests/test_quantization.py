"""fastnet.quantize: int8 post-training quantization of trained models.

The headline check trains a small version of the classic CNN (Conv 16 -> pool -> Conv 32 + BN
+ ReLU -> pool -> Conv 32 -> Dense 32 -> Dense 10 softmax) for 2 epochs on the bundled MNIST
split and requires the int8 model to lose at most 1 accuracy point (10 of the 1,000 test images)
against the float model.
"""
import threading

import numpy as np
import pytest

import fastnet
from fastnet import datasets, layers, models
from fastnet._kernels import int8 as K
from fastnet.quantization import (QuantizedModel, choose_qparams, load_quantized, quantize,
                                  quantize_weights)
from fastnet.utils import set_random_seed


def _small_classic_cnn():
    return models.Sequential([
        layers.Conv2D(16, 3, activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Flatten(),
        layers.Dropout(0.2),
        layers.Dense(32, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def trained():
    set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    model = _small_classic_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    qmodel = quantize(model, x_train[:500])
    return model, qmodel, (x_train, y_train), (x_test, y_test)


def test_accuracy_within_one_point(trained):
    model, qmodel, _, (x_test, y_test) = trained
    p_float = model.predict(x_test, batch_size=256, verbose=0)
    p_int8 = qmodel.predict(x_test, batch_size=256)
    acc_float = float((p_float.argmax(1) == y_test).mean())
    acc_int8 = float((p_int8.argmax(1) == y_test).mean())
    assert acc_float >= 0.85, acc_float
    assert acc_int8 >= acc_float - 0.01, (acc_float, acc_int8)
    assert (p_int8.argmax(1) == p_float.argmax(1)).mean() >= 0.98
    assert np.abs(p_int8 - p_float).max() < 0.2
    np.testing.assert_allclose(p_int8.sum(1), 1.0, atol=1e-5)


def test_percentile_calibration(trained):
    model, _, (x_train, _), (x_test, y_test) = trained
    q = quantize(model, [x_train[:256], x_train[256:512]], method="percentile",
                 percentile=99.99)
    acc_float = (model.predict(x_test, batch_size=256, verbose=0).argmax(1) == y_test).mean()
    assert (q.predict(x_test, batch_size=256).argmax(1) == y_test).mean() >= acc_float - 0.01


def test_plan_is_int8_end_to_end(trained):
    _, qmodel, _, _ = trained
    kinds = [type(s).__name__ for s in qmodel.stages]
    # input quantized once; every conv/dense int8 with BN folded and the ReLUs fused; the
    # pools on uint8; one float32 stage (the softmax) after the last Dense dequantizes
    # the max pools fused into the convolutions before them (the conv output never hits memory)
    assert kinds == ["_Quantize", "_QConv2D", "_QConv2D", "_QConv2D", "_Reshape", "_QDense",
                     "_QDense", "_FloatActivation"]
    assert [s.pool for s in qmodel.stages[1:4]] == [(2, 2), (2, 2), None]
    assert [s.output for s in qmodel.stages if hasattr(s, "output")] == \
        ["uint8"] * 4 + ["float32"]
    assert all(s.relu for s in qmodel.stages[1:6] if hasattr(s, "relu"))
    assert qmodel.weight_bytes() < sum(w.nbytes for w in trained[0].get_weights()) / 3


def test_batch_independent_and_same_on_every_path(trained):
    _, qmodel, _, (x_test, _) = trained
    x = x_test[:70]
    full = qmodel.predict(x, batch_size=64)
    one = np.concatenate([qmodel.predict(x[i:i + 1]) for i in range(0, 70, 7)])
    np.testing.assert_array_equal(one, full[::7])   # per-tensor scales: samples independent
    old = K.isa()
    try:
        for isa in K.available_isas():
            K.set_isa(isa)
            np.testing.assert_array_equal(qmodel.predict(x, batch_size=64), full, err_msg=isa)
    finally:
        K.set_isa(old)


def test_thread_counts_and_concurrent_predict(trained):
    _, qmodel, _, (x_test, _) = trained
    x = x_test[:128]
    old = fastnet.get_num_threads()
    try:
        fastnet.set_num_threads(1)
        ref = qmodel.predict(x, batch_size=64)
        fastnet.set_num_threads(2)
        np.testing.assert_array_equal(qmodel.predict(x, batch_size=64), ref)
    finally:
        fastnet.set_num_threads(old)
    results = [None] * 4

    def work(i):
        results[i] = qmodel.predict(x, batch_size=16 * (i + 1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, ref)


def test_save_load_roundtrip_and_refusals(trained, tmp_path):
    model, qmodel, _, (x_test, _) = trained
    path = tmp_path / "q.fnet"
    qmodel.save(path)
    loaded = load_quantized(path)
    assert isinstance(loaded, QuantizedModel)
    np.testing.assert_array_equal(loaded.predict(x_test[:50]), qmodel.predict(x_test[:50]))
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40            # a flipped bit inside an array
    bad = tmp_path / "bad.fnet"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        load_quantized(bad)
    bad.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(ValueError):
        load_quantized(bad)
    model.save(tmp_path / "float.fnet")
    with pytest.raises(ValueError, match="no quantized model"):
        load_quantized(tmp_path / "float.fnet")


def test_cli_quantize(trained, tmp_path, capsys):
    from fastnet.cli import main
    model, _, (x_train, _), (x_test, _) = trained
    model.save(tmp_path / "m.fnet")
    np.save(tmp_path / "calib.npy", x_train[:300])
    assert main(["quantize", str(tmp_path / "m.fnet"), str(tmp_path / "q.fnet"),
                 "--calibration", str(tmp_path / "calib.npy"), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "int8 Conv2D" in out and "top-1 agreement" in out
    q = load_quantized(tmp_path / "q.fnet")
    np.testing.assert_array_equal(q.predict(x_test[:20]),
                                  quantize(model, x_train[:200]).predict(x_test[:20]))


def test_float_stages_and_folding():
    """Layers without an int8 kernel run in float32 between (de)quantization stages."""
    set_random_seed(1)
    model = models.Sequential([
        layers.Conv2D(8, 3, padding="same", input_shape=(10, 10, 3)),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2D(12, 3, strides=2, activation="tanh"),
        layers.Conv2D(12, 1),
        layers.GELU(),
        layers.AveragePooling2D(2, padding="same"),
        layers.Conv2D(6, 1, activation="relu"),
        layers.GlobalMaxPooling2D(),
        layers.Dense(5),
    ])
    model.build((None, 10, 10, 3))
    bn = model.layers[1]
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.standard_normal(8) * 0.1,
                    rng.standard_normal(8) * 0.1, rng.uniform(0.5, 2.0, 8)])
    x = rng.random((40, 10, 10, 3)).astype(np.float32) * 2 - 1   # negative inputs: zp > 0
    q = quantize(model, x)
    kinds = [type(s).__name__.lstrip("_") for s in q.stages]
    assert kinds[:3] == ["Quantize", "QConv2D", "QConv2D"]    # BN folded, ReLU fused
    assert q.stages[0].zero_point > 0
    assert "FloatActivation" in kinds and "FloatLayer" in kinds
    assert q.stages[-3].pool == (2, 2)     # the global max pooling, fused into the last conv
    ref = model.predict(x, verbose=0)
    got = q.predict(x)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_uint8_pools_that_do_not_fuse():
    set_random_seed(3)
    model = models.Sequential([layers.Conv2D(6, 3, activation="relu", input_shape=(12, 12, 2)),
                               layers.MaxPooling2D(3, strides=2),      # overlapping windows
                               layers.AveragePooling2D(2, padding="same"),
                               layers.Flatten(),
                               layers.Dense(3)])
    x = np.random.default_rng(4).random((16, 12, 12, 2)).astype(np.float32)
    q = quantize(model, x)
    assert [type(s).__name__.lstrip("_") for s in q.stages] == \
        ["Quantize", "QConv2D", "QPool", "QPool", "Reshape", "QDense"]
    assert [s.mode for s in q.stages[2:4]] == ["max", "average"]
    ref = model.predict(x, verbose=0)
    assert np.abs(q.predict(x) - ref).max() <= 0.03 * np.abs(ref).max()


def test_quantize_weights_and_qparams():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((3, 3, 4, 6)) * np.array([1, 10, 0.01, 0, 3, 1])
    wq, scales = quantize_weights(kernel)
    assert wq.dtype == np.int8 and wq.shape == (36, 6) and np.abs(wq).max() <= 127
    err = np.abs(wq * scales - kernel.reshape(36, 6))
    assert (err <= scales / 2 + 1e-12).all()
    assert (np.abs(wq).max(axis=0)[[0, 1, 2, 4, 5]] == 127).all() and (wq[:, 3] == 0).all()
    scale, zp = choose_qparams(-1.0, 3.0)
    assert zp == 64 and abs(scale - 4 / 255) < 1e-7
    assert choose_qparams(0.5, 2.0)[1] == 0            # widened to include 0
    assert choose_qparams(-3.0, -1.0)[1] == 255
    assert choose_qparams(0.0, 0.0) == (1.0, 0)


def test_bad_calls(trained):
    model, _, (x_train, _), _ = trained
    with pytest.raises(ValueError, match="not built"):
        quantize(models.Sequential([layers.Dense(3)]), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="method"):
        quantize(model, x_train[:10], method="kl")
    with pytest.raises(ValueError, match="percentile"):
        quantize(model, x_train[:10], method="percentile", percentile=20)
    with pytest.raises(ValueError, match="shape"):
        quantize(model, np.zeros((4, 28, 28), np.float32))
    bad = x_train[:8].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize(model, bad)
    with pytest.raises(ValueError, match="non-empty"):
        quantize(model, np.zeros((0, 28, 28, 1), np.float32))
    q = quantize(model, x_train[:16])
    with pytest.raises(ValueError, match="shape"):
        q.predict(np.zeros((2, 28, 28), np.float32))
    inp = layers.Input((6,))
    chain = models.Model(inp, layers.Dense(3)(layers.Dense(4, activation="relu")(inp)))
    q = quantize(chain, np.random.default_rng(0).random((8, 6)))
    assert [type(s).__name__ for s in q.stages] == ["_Quantize", "_QDense", "_QDense"]
    merge = getattr(layers, "Add", None)
    if merge is not None:
        inp = layers.Input((6,))
        a = layers.Dense(4)(inp)
        b = layers.Dense(4)(inp)
        branchy = models.Model(inp, merge()([a, b]))
        with pytest.raises(ValueError, match="one chain"):
            quantize(branchy, np.zeros((4, 6), np.float32))
