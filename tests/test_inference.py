"""The compiled inference path: equal to the layer-by-layer forward, fused where it should be,
no per-call allocation, thread-safe, and refusing bad input."""
import threading
import tracemalloc

import numpy as np
import pytest

import fastnet
from fastnet import inference, layers as L, models
from fastnet.cli import build_classic_cnn
from fastnet.layers.base import Layer
from fastnet.utils import set_random_seed

from _bn_stats import randomize_bn


def reference(model, x):
    """The model's own (layer-by-layer) inference forward."""
    out = model._forward(x, training=False)
    return [o.copy() for o in out] if isinstance(out, list) else out.copy()


@pytest.fixture(scope="module")
def cnn():
    set_random_seed(0)
    return build_classic_cnn()


def assert_matches(got, want, exact):
    """Bit for bit where the plan runs the layers' kernels; within float rounding where it
    runs a small-M product (another summation order)."""
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def small_m(fast, n):
    return any(k in ("smallm", "conv_smallm") for k in fast.plan(n))


def test_classic_cnn(cnn):
    fast = inference.compile(cnn)
    x = np.random.default_rng(0).random((65, 28, 28, 1)).astype(np.float32)
    # conv1 + ReLU + pool fused; conv3 and dense1 on the small-M kernel at batch 1
    assert fast.plan(1) == ["conv_pool", "conv", "pool", "conv_smallm", "smallm", "gemm",
                            "softmax"]
    assert fast.plan(64) == ["conv_pool", "conv", "pool", "conv", "gemm", "gemm", "softmax"]
    for n in (1, 2, 7, 64, 65):
        assert_matches(fast(x[:n]), reference(cnn, x[:n]), exact=not small_m(fast, n))
    np.testing.assert_array_equal(fast.predict(x, batch_size=16), cnn.predict(x, verbose=0))
    np.testing.assert_array_equal(fast(x[:1]), cnn.predict(x[:1], verbose=0))
    assert fast.input_shape == (None, 28, 28, 1) and fast.output_shape == (None, 10)


def test_every_layer_kind_float32_and_float64():
    for dtype in ("float32", "float64"):
        set_random_seed(1)
        m = models.Sequential([
            L.Input(shape=(11, 10, 3)),
            L.ZeroPadding2D(((1, 0), (2, 1)), dtype=dtype),
            L.Conv2D(8, 3, padding="same", use_bias=False, dtype=dtype),
            L.BatchNormalization(dtype=dtype), L.ReLU(dtype=dtype),
            L.Conv2D(6, (2, 3), strides=(2, 1), activation="tanh", dtype=dtype),
            L.AveragePooling2D(3, strides=2, padding="same", dtype=dtype),
            L.BatchNormalization(dtype=dtype), L.Dropout(0.5, dtype=dtype),
            L.Conv2D(5, 1, activation="gelu", dtype=dtype), L.LeakyReLU(0.1, dtype=dtype),
            L.MaxPooling2D(2, padding="same", dtype=dtype), L.ELU(dtype=dtype),
            L.Reshape((-1, 5), dtype=dtype), L.Dense(7, dtype=dtype),
            L.BatchNormalization(dtype=dtype), L.Activation("relu", dtype=dtype),
            L.Flatten(dtype=dtype), L.Dense(9, activation="sigmoid", dtype=dtype),
            L.Dense(4, dtype=dtype), L.Softmax(dtype=dtype)])
        randomize_bn(m)
        x = np.random.default_rng(2).standard_normal((40, 11, 10, 3))
        fast = inference.compile(m)
        kinds = fast.plan(40)
        assert kinds.count("affine") == 1          # the BatchNorm after pooling
        assert "python" in kinds                   # gelu, leaky_relu, elu via their kernels
        for n in (1, 5, 40):
            got = fast(x[:n])
            assert got.dtype == np.dtype(dtype)
            assert_matches(got, reference(m, x[:n].astype(dtype)), not small_m(fast, n))


def test_folding_and_fusion():
    set_random_seed(2)
    m = models.Sequential([L.Input(shape=(9, 9, 4)),
                           L.Conv2D(6, 3, use_bias=False), L.BatchNormalization(), L.ReLU(),
                           L.Conv2D(6, 3), L.BatchNormalization(),
                           L.Conv2D(6, 1), L.Activation("relu"),
                           L.GlobalMaxPooling2D(), L.Dense(5), L.BatchNormalization(),
                           L.Dense(3, activation="softmax")])
    randomize_bn(m)
    fast = inference.compile(m)
    # conv+BN+ReLU (direct: 3 * 4 inputs per kernel row), conv+BN, conv+ReLU, global pool,
    # dense+BN, dense, softmax in place
    assert fast.plan(4) == ["direct", "conv", "conv", "global", "gemm", "gemm", "softmax"]
    x = np.random.default_rng(3).standard_normal((4, 9, 9, 4)).astype(np.float32)
    ref = reference(m, x)
    np.testing.assert_array_equal(fast(x), ref)
    # and the folded model equals the unfolded arithmetic within float rounding
    z = x
    for layer in m.layers:
        z = layer.forward(z, False)
    np.testing.assert_allclose(fast(x), z, rtol=1e-5, atol=1e-6)


def test_functional_graphs():
    set_random_seed(3)
    a = L.Input(shape=(8, 8, 3), name="a")
    b = L.Input(shape=(8, 8, 3), name="b")
    shared = L.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    ha, hb = shared(a), shared(b)                         # a layer called twice
    s = L.Add()([ha, hb])
    d = L.Subtract()([ha, hb])
    p = L.Multiply()([s, d, ha])
    avg = L.Average()([ha, hb, s])
    mx, mn = L.Maximum()([ha, hb]), L.Minimum()([ha, d])
    cat = L.Concatenate()([p, avg, mx, mn])               # last axis
    cat1 = L.Concatenate(axis=1)([cat, cat])              # rows
    res = L.Add()([L.Conv2D(16, 3, padding="same")(cat1), cat1])   # a residual connection
    out1 = L.Dense(3, activation="softmax", name="p")(L.GlobalAveragePooling2D()(res))
    out2 = L.Flatten(name="flat")(mn)                      # an output that is also read
    out3 = L.Dense(2, name="q")(L.Flatten()(L.Conv2D(2, 3)(mn)))
    m = models.Model([a, b], [out1, out2, out3])
    fast = inference.compile(m)
    rng = np.random.default_rng(4)
    xa, xb = (rng.standard_normal((3, 8, 8, 3)).astype(np.float32) for _ in range(2))
    got, ref = fast([xa, xb]), reference(m, [xa, xb])
    assert len(got) == 3 and "python" not in fast.plan(3)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    preds = m.predict([xa, xb], verbose=0)
    for g, r in zip(fast.predict([xa, xb], batch_size=2), preds):
        np.testing.assert_array_equal(g, r)


def test_identity_and_broadcast_and_custom_layers():
    class Double(Layer):
        def forward(self, x, training=False):
            return np.multiply(x, 2.0, out=self.buffer("y", x.shape))

    inp = L.Input(shape=(4, 5))
    small = L.Dense(1)(inp)                                 # (4, 1): broadcast in Add
    y = L.Add()([inp, small])
    m = models.Model(inp, [Double()(y), inp])              # a custom layer, the input itself
    fast = inference.compile(m)
    x = np.random.default_rng(5).standard_normal((3, 4, 5)).astype(np.float32)
    got, ref = fast(x), reference(m, x)
    assert fast.plan(3).count("python") == 2
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    assert got[1] is not x


def test_large_k_convolution_uses_the_op():
    set_random_seed(4)
    m = models.Sequential([L.Input(shape=(5, 5, 520)), L.Conv2D(3, 3, activation="relu"),
                           L.Flatten(), L.Dense(2)])
    fast = inference.compile(m)
    assert fast.plan(2) == ["copy", "python", "gemm"]       # the input copied for Python
    x = np.random.default_rng(6).standard_normal((2, 5, 5, 520)).astype(np.float32)
    np.testing.assert_array_equal(fast(x), reference(m, x))


def test_no_allocation_per_call(cnn):
    fast = inference.compile(cnn)
    for n in (1, 64):
        x = np.random.default_rng(7).random((n, 28, 28, 1)).astype(np.float32)
        out = np.empty((n, 10), np.float32)
        fast(x, out=out)
        tracemalloc.start()
        for _ in range(20):
            fast(x, out=out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8192, peak           # the arena for batch 64 alone is > 1 MB
        assert_matches(out, reference(cnn, x), not small_m(fast, n))


def test_concurrent_threads_match_sequential(cnn):
    fast = inference.compile(cnn)
    rng = np.random.default_rng(8)
    xs = [rng.random((n, 28, 28, 1)).astype(np.float32) for n in (1, 3, 1, 8, 1, 5)]
    expected = [fast(x) for x in xs]        # sequential answers
    errors = []

    def worker(k):
        try:
            for r in range(25):
                i = (k + r) % len(xs)
                np.testing.assert_array_equal(fast(xs[i]), expected[i])
                i = (k + 2 * r) % len(xs)
                np.testing.assert_array_equal(cnn.predict(xs[i], verbose=0), expected[i])
        except Exception as e:      # reported in the main thread
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_weights_snapshot_refresh_and_live_predict(cnn):
    set_random_seed(9)
    m = models.Sequential([L.Input(shape=(6,)), L.Dense(5), L.BatchNormalization(),
                           L.Dense(2)])
    randomize_bn(m)
    x = np.random.default_rng(9).standard_normal((4, 6)).astype(np.float32)
    fast = inference.compile(m)
    before = fast(x)
    np.testing.assert_array_equal(m.predict(x, verbose=0), before)
    m.set_weights([w * 1.5 for w in m.get_weights()])
    np.testing.assert_array_equal(fast(x), before)              # a snapshot
    np.testing.assert_array_equal(m.predict(x, verbose=0), reference(m, x))   # live
    fast.refresh()
    np.testing.assert_array_equal(fast(x), reference(m, x))
    m.compile("sgd", "mse")
    m.fit(x, np.zeros((4, 2)), epochs=2, verbose=0)            # training moves the weights
    np.testing.assert_array_equal(m.predict(x, verbose=0), reference(m, x))


def test_thread_count_changes_replan(cnn):
    fast = inference.compile(cnn)
    x = np.random.default_rng(10).random((16, 28, 28, 1)).astype(np.float32)
    old = fastnet.get_num_threads()
    try:
        for n in (1, 2):
            fastnet.set_num_threads(n)
            np.testing.assert_array_equal(fast(x), reference(cnn, x))
    finally:
        fastnet.set_num_threads(old)


def test_bad_input_is_refused(cnn):
    fast = inference.compile(cnn)
    with pytest.raises(ValueError, match=r"shape \(batch >= 1, 28, 28, 1\)"):
        fast(np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="batch >= 1"):
        fast(np.zeros((0, 28, 28, 1), np.float32))
    with pytest.raises(TypeError, match="real numbers"):
        fast(np.array([["a"]]))
    with pytest.raises(ValueError, match="out"):
        fast(np.zeros((2, 28, 28, 1), np.float32), out=np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match="out"):
        fast(np.zeros((2, 28, 28, 1), np.float32), out=np.zeros((2, 10), np.float64))
    # non-contiguous and integer inputs are converted
    x = np.random.default_rng(11).random((3, 28, 28, 2))[..., :1]
    np.testing.assert_array_equal(fast(x), fast(np.ascontiguousarray(x, np.float32)))
    np.testing.assert_array_equal(fast((x * 255).astype(np.uint8)),
                                  fast((x * 255).astype(np.uint8).astype(np.float32)))
    with pytest.raises(TypeError, match="Sequential or Model"):
        inference.compile(object())


def _program(kind, a, out_shape, dtype, **kw):
    from fastnet._kernels import infer
    y = np.empty(out_shape, dtype)
    ws = kw.pop("ws", 0)
    prog = infer.Program([a.nbytes, ws, y.nbytes], dtype, 1, [2], [True])
    prog.bind(np.zeros(ws + 64, np.uint8), [0, 0, 0])
    prog.add_step(kind, 0, 2, **kw)
    prog.run([a], [y])
    return y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_m_kernel_odd_shapes(dtype):
    rng = np.random.default_rng(12)
    for m, n, k in [(1, 16, 1), (3, 17, 7), (4, 64, 576), (5, 33, 64), (12, 80, 9),
                    (2, 20, 3)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        for bias, relu in ((b, 1), (None, 0)):
            y = _program("smallm", a, (m, n), dtype, shape=(m, n, k), w=w, bias=bias,
                         flag=relu)
            want = a.astype(np.float64) @ w + (0 if bias is None else b)
            np.testing.assert_allclose(y, np.maximum(want, 0) if relu else want,
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_m_convolutions_and_fused_pooling(dtype):
    """conv_smallm (padding, strides, odd channels) and conv_pool (first-layer shapes,
    overlapping pool windows, channels not a multiple of the vector) against the layers."""
    set_random_seed(13)
    kw = dict(dtype=dtype)
    m = models.Sequential([L.Input(shape=(13, 11, 2)),
                           L.Conv2D(20, 3, padding="same", use_bias=False, **kw),
                           L.BatchNormalization(**kw), L.ReLU(**kw),
                           L.MaxPooling2D(3, strides=2, **kw),           # fused with the conv
                           L.Conv2D(17, 2, strides=2, padding="same", **kw),   # no ReLU
                           L.MaxPooling2D(2, **kw),                      # K = 80: not fused
                           L.Conv2D(24, 2, padding="same", activation="relu", **kw),
                           L.Flatten(**kw), L.Dense(18, **kw)])
    randomize_bn(m)
    fast = inference.compile(m)
    assert fast.plan(1) == ["conv_pool", "conv_smallm", "pool", "conv_smallm", "smallm"]
    assert fast.plan(30) == ["conv_pool", "conv", "pool", "conv", "gemm"]
    x = np.random.default_rng(14).standard_normal((30, 13, 11, 2)).astype(dtype)
    for n in (1, 2, 30):     # (the direct kernel sums padded windows in another order)
        assert_matches(fast(x[:n]), reference(m, x[:n]), exact=False)


def test_program_refuses_inconsistent_steps():
    from fastnet._kernels import infer
    prog = infer.Program([64 * 4, 0, 64 * 4, 16], "float32", 1, [2], [False])
    prog.bind(np.zeros(1024, np.uint8), [0, 0, 0, 512])
    w = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="slot 2 holds 64"):
        prog.add_step("gemm", 0, 2, shape=(8, 16, 8), w=np.zeros((8, 16), np.float32))
    with pytest.raises(ValueError, match="inputs are read-only"):
        prog.add_step("elementwise", 2, 0, shape=(64,), flag=0)
    with pytest.raises(ValueError, match="gemm kernel"):
        prog.add_step("gemm", 0, 2, shape=(8, 8, 8), w=np.zeros((8, 9), np.float32))
    with pytest.raises(ValueError, match="inconsistent geometry"):
        prog.add_step("pool", 0, 2, shape=(1, 4, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0))
    with pytest.raises(ValueError, match="workspace"):
        prog.add_step("conv", 0, 2, shape=(1, 4, 4, 4, 2, 2, 4, 3, 3, 1, 1, 0, 0),
                      w=np.zeros((3, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="inputs must be"):
        prog.run([np.zeros(63, np.float32)], [np.zeros(64, np.float32)])


def test_dilated_grouped_depthwise_and_fallback_layers_from_threads():
    """Ops run from Python steps (dilated, grouped, depthwise convolutions) and layers run
    through their own forward under a lock (LSTM, Conv1D, UpSampling2D): equal to the layers,
    and to themselves from several threads."""
    set_random_seed(15)
    img = L.Input(shape=(10, 9, 4))
    h = L.Conv2D(8, 3, padding="same", dilation_rate=2, use_bias=False)(img)
    h = L.BatchNormalization()(h)                          # folded into the dilated conv
    h = L.Conv2D(8, 3, groups=4, activation="relu")(h)
    h = L.DepthwiseConv2D(3, depth_multiplier=2, activation="tanh")(h)
    h = L.UpSampling2D(2)(h)
    seq = L.Reshape((-1, 16))(h)
    s = L.Conv1D(6, 3, padding="causal")(seq)
    out = L.Dense(3)(L.LSTM(5)(s))
    m = models.Model(img, out)
    randomize_bn(m)
    fast = inference.compile(m)
    kinds = fast.plan(2)
    # dilated, grouped, depthwise, tanh, UpSampling2D, Conv1D, LSTM; BN folded
    assert kinds.count("python") == 7 and "affine" not in kinds
    x = np.random.default_rng(16).standard_normal((6, 10, 9, 4)).astype(np.float32)
    np.testing.assert_allclose(fast(x), reference(m, x), rtol=1e-5, atol=1e-6)
    expected = [fast(x[i:i + 2]) for i in range(0, 6, 2)]
    errors = []

    def worker(k):
        try:
            for r in range(6):
                i = (k + r) % 3
                np.testing.assert_array_equal(fast(x[2 * i:2 * i + 2]), expected[i])
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_profile_reports_every_step_and_leaves_the_output_alone(cnn):
    fast = cnn.compile_inference()
    x = np.random.default_rng(3).random((2, 28, 28, 1), dtype=np.float32)
    before = fast(x)
    prof = fast.profile(x, calls=5)
    assert [k for k, _ in prof] == fast.plan(2)
    assert all(t > 0 for _, t in prof)
    np.testing.assert_array_equal(fast(x), before)
    with pytest.raises(ValueError):
        fast.profile(x, calls=0)
    with pytest.raises(ValueError):
        fast.profile(x[:, :27])
