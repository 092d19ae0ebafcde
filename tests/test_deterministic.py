"""fastnet.config.deterministic: results independent of the thread count.

Every op with a reduction whose partition used to follow the thread count (weight and bias
gradients, the backward inputs' shared images, overlapping pooling windows) runs at 1, 2 and 3
threads (3: oversubscribed on a 2-core machine) in deterministic mode and must give bitwise
identical outputs; shapes are random and odd, with batch 1 and larger, and large enough that the
ops really split their work (the ops run small problems on one thread).  The deterministic
results are also checked against the default path (itself tested against NumPy references in
tests/test_conv*.py, test_pool.py, ...).  A whole small model trained at 1 and 2 threads in fresh
subprocesses must end with the same weight bytes, predictions and losses.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet import config
from fastnet.ops import conv as conv_ops
from fastnet.ops import conv_general as cg_ops
from fastnet.ops import losses as loss_ops
from fastnet.ops import metrics as metric_ops
from fastnet.ops import norm as norm_ops
from fastnet.ops import optim as optim_ops
from fastnet.ops import penalty as penalty_ops
from fastnet.ops import pool as pool_ops
from fastnet.ops import recurrent as rnn_ops

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))
THREADS = (1, 2, 3)

pytestmark = pytest.mark.skipif(not config.openmp_enabled(),
                                reason="built without OpenMP: one thread only")


@pytest.fixture(autouse=True)
def _restore():
    threads, det = config.get_num_threads(), config.is_deterministic()
    yield
    config.set_num_threads(threads)
    config.deterministic(det)


def _copy(result):
    if isinstance(result, (tuple, list)):
        return tuple(_copy(r) for r in result)
    if isinstance(result, np.ndarray):
        return result.copy()
    return result


def _at_threads(fn):
    """fn()'s results (copied) at each thread count, in deterministic mode."""
    out = []
    with config.deterministic():
        for n in THREADS:
            config.set_num_threads(n)
            out.append(_copy(fn()))
    return out


def _assert_bitwise(results):
    ref = results[0]
    for n, res in zip(THREADS[1:], results[1:]):
        for i, (a, b) in enumerate(zip(ref, res)):
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert a.tobytes() == b.tobytes(), f"output {i} differs at {n} threads"
            else:
                assert a == b or (a is None and b is None), f"output {i} differs at {n} threads"


def _assert_matches_default(fn, det_result):
    """The deterministic result agrees (up to float32 rounding of long sums) with the default
    path's."""
    config.set_num_threads(2)
    with config.deterministic(False):
        ref = _copy(fn())
    for a, b in zip(det_result, ref):
        if isinstance(a, np.ndarray):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))
        elif isinstance(a, float):
            assert a == pytest.approx(b, rel=1e-5)


def _check(fn):
    results = _at_threads(fn)
    _assert_bitwise(results)
    _assert_matches_default(fn, results[0])
    return results[0]


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------- config API
def test_api_default_off_context_manager_and_setter():
    config.deterministic(False)
    assert config.is_deterministic() is False
    with config.deterministic():
        assert config.is_deterministic() is True
        with config.deterministic(False):
            assert config.is_deterministic() is False
        assert config.is_deterministic() is True
    assert config.is_deterministic() is False
    config.deterministic(True)
    assert config.is_deterministic() is True
    config.deterministic(False)
    assert config.is_deterministic() is False
    with pytest.raises(TypeError, match="flag"):
        config.deterministic("yes")


def test_reduction_parts():
    with config.deterministic(False):
        assert config.reduction_parts(3, 1000) == 3
    with config.deterministic():
        assert config.reduction_parts(1, 1000) == config.DETERMINISTIC_PARTS
        assert config.reduction_parts(7, 1000) == config.DETERMINISTIC_PARTS
        assert config.reduction_parts(2, 3) == 3
        assert config.reduction_parts(2, 0) == 1


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False)])
def test_environment_variable(value, expected):
    env = dict(os.environ, FASTNET_DETERMINISTIC=value)
    out = subprocess.run([sys.executable, "-c", "import fastnet.config as c; "
                          "print(c.is_deterministic())"], env=env, cwd=_PKG_PARENT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


def test_environment_variable_rejects_garbage():
    env = dict(os.environ, FASTNET_DETERMINISTIC="maybe")
    out = subprocess.run([sys.executable, "-c", "import fastnet.config"], env=env,
                         cwd=_PKG_PARENT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "FASTNET_DETERMINISTIC" in out.stderr


# -------------------------------------------------------------------------------- conv2d
# (x shape, kernel (kh, kw, Cout), strides, padding, algorithm); all above the ops' 1-thread
# work threshold.  None: the op's own choice (direct / implicit by shape).
CONV_CASES = [
    ((5, 37, 29, 3), (3, 3, 17), 1, "same", None),          # direct weight gradient
    ((1, 71, 61, 3), (3, 3, 13), 1, "valid", None),         # direct, batch 1
    ((3, 17, 15, 19), (3, 3, 21), 1, "same", None),         # implicit
    ((1, 45, 43, 17), (3, 3, 23), 2, "same", None),         # implicit, batch 1, strided
    ((3, 23, 21, 9), (3, 3, 14), 1, "valid", "gemm"),
    ((1, 31, 29, 9), (5, 3, 11), 1, "same", "shared"),
    ((5, 23, 21, 23), (1, 1, 29), 1, "valid", "1x1"),
]


@pytest.mark.parametrize("xs, ks, s, pad, alg", CONV_CASES)
def test_conv2d_backward(xs, ks, s, pad, alg):
    rng = np.random.default_rng(abs(hash((xs, ks))) % 2**32)
    x = _rand(rng, *xs)
    kernel = _rand(rng, ks[0], ks[1], xs[3], ks[2])
    y = conv_ops.conv2d(x, kernel, strides=s, padding=pad, activation="relu")
    dy = _rand(rng, *y.shape)
    relu = y if alg is None else None   # the csrc kernels mask on the fly

    def weight():
        return conv_ops.conv2d_backward_weight(
            x, dy, ks[:2], strides=s, padding=pad, bias_grad=np.empty(ks[2], np.float32),
            relu_output=relu, _algorithm=alg)

    _check(weight)
    input_alg = alg if alg != "1x1" or s == 1 else None
    if xs[3] >= 16 or alg is not None:
        _check(lambda: (conv_ops.conv2d_backward_input(dy, kernel, xs, strides=s, padding=pad,
                                                        relu_output=relu,
                                                        _algorithm=input_alg),))
    _check(lambda: (conv_ops.conv2d(x, kernel, strides=s, padding=pad, _algorithm=alg),))


@pytest.mark.parametrize("n", [1, 4])
def test_conv2d_backward_input_implicit_images_split_mid_image(n):
    # Blocks of dy pixels start inside images: the private-image buffers are summed in order.
    rng = np.random.default_rng(n)
    xs = (n, 19, 17, 16)
    kernel = _rand(rng, 3, 3, 16, 13)
    dy = _rand(rng, n, 17, 15, 13)
    _check(lambda: (conv_ops.conv2d_backward_input(dy, kernel, xs, padding="valid",
                                                    _algorithm="implicit"),))


@pytest.mark.parametrize("n", [1, 3])
def test_conv2d_backward_weight_pooled(n):
    rng = np.random.default_rng(10 + n)
    x = _rand(rng, n, 39, 37, 5)
    kernel = _rand(rng, 3, 3, 5, 22)
    y = conv_ops.conv2d(x, kernel, activation="relu")
    argmax = np.empty((n, 18, 17, 22), np.uint8)
    pool_ops.max_pool2d(y, 2, argmax=argmax, relu_input=True)
    dyp = _rand(rng, n, 18, 17, 22)
    _check(lambda: conv_ops.conv2d_backward_weight_pooled(
        x, dyp, argmax, 3, bias_grad=np.empty(22, np.float32)))


# ----------------------------------------------------------------- grouped / depthwise / bias
@pytest.mark.parametrize("n", [1, 3])
def test_conv2d_general_grouped_dilated(n):
    rng = np.random.default_rng(20 + n)
    x = _rand(rng, *((1, 63, 61, 16) if n == 1 else (n, 45, 43, 16)))
    kernel = _rand(rng, 3, 3, 8, 32)     # groups=2
    kw = dict(strides=2, padding="same", dilation_rate=1, groups=2)
    y = cg_ops.conv2d_general(x, kernel, **kw)
    dy = _rand(rng, *y.shape)
    _check(lambda: cg_ops.conv2d_general_backward_weight(
        x, dy, 3, bias_grad=np.empty(32, np.float32), **kw))
    _check(lambda: (cg_ops.conv2d_general_backward_input(dy, kernel, x.shape, **kw),))
    kw2 = dict(strides=1, padding="valid", dilation_rate=2, groups=2)
    _check(lambda: (cg_ops.conv2d_general(x, kernel, **kw2),))


@pytest.mark.parametrize("n", [1, 5])
def test_depthwise_backward_weight(n):
    rng = np.random.default_rng(30 + n)
    x = _rand(rng, n, 61, 59, 23)
    dy = _rand(rng, n, 59, 57, 46)       # depth multiplier 2
    _check(lambda: cg_ops.depthwise_conv2d_backward_weight(
        x, dy, 3, bias_grad=np.empty(46, np.float32)))


def test_conv2d_transpose_bias_gradient():
    rng = np.random.default_rng(40)
    x = _rand(rng, 3, 23, 27, 7)
    dy = _rand(rng, 3, 47, 55, 9)        # strides 2, 'valid', 3x3: (23-1)*2+3 = 47
    _check(lambda: cg_ops.conv2d_transpose_backward_weight(
        x, dy, 3, strides=2, padding="valid", bias_grad=np.empty(9, np.float32)))


# ------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("n", [1, 2, 9])
@pytest.mark.parametrize("pool, strides", [(3, 1), (5, 2)])
def test_pool_backward_overlapping(n, pool, strides):
    rng = np.random.default_rng(50 + n + pool)
    x = _rand(rng, n, 61, 33, 11)
    y = pool_ops.max_pool2d(x, pool, strides, "same")
    dy = _rand(rng, *y.shape)
    _check(lambda: (pool_ops.max_pool2d_backward(x, y, dy, pool, strides, "same"),))
    _check(lambda: (pool_ops.avg_pool2d_backward(dy, x.shape, pool, strides, "same"),))


# ---------------------------------------------------------- already shape-partitioned ops
@pytest.mark.parametrize("rows", [1, 4097, 30011])
def test_batch_norm(rows):
    rng = np.random.default_rng(rows)
    x = _rand(rng, rows, 37)
    dy = _rand(rng, rows, 37)
    gamma, beta = _rand(rng, 37), _rand(rng, 37)

    def run():
        mm, mv = np.zeros(37, np.float32), np.ones(37, np.float32)
        y, mean, inv_std = norm_ops.batch_norm_forward(x, gamma, beta, mm, mv, training=True)
        dg, db = np.empty(37, np.float32), np.empty(37, np.float32)
        dx = norm_ops.batch_norm_backward(dy, x, gamma, mean, inv_std, dgamma=dg, dbeta=db)
        return y, mean, inv_std, mm, mv, dx, dg, db

    _check(run)


def test_losses():
    rng = np.random.default_rng(60)
    logits = _rand(rng, 3001, 13)
    labels = rng.integers(0, 13, 3001)
    target = _rand(rng, 257, 301)

    def run():
        g1, g2 = np.empty_like(logits), np.empty_like(target)
        l1 = loss_ops.softmax_cross_entropy(logits, labels, grad_out=g1)
        l2 = loss_ops.mean_squared_error(target * 0.5, target, grad_out=g2)
        return l1, g1, l2, g2

    _check(run)


def test_penalty_optimizer_and_metrics():
    rng = np.random.default_rng(65)
    w = _rand(rng, 300007)
    grad = _rand(rng, 300007)
    pred = _rand(rng, 40013, 7)
    labels = rng.integers(0, 7, 40013)
    targets = (rng.random((40013, 7)) < 0.3).astype(np.float32)
    scores = rng.random(40013).astype(np.float32)

    def run():
        p, m, v = w.copy(), np.zeros_like(w), np.zeros_like(w)
        segments = [(0, 100003), (100003, 200004)]
        norms = optim_ops.segment_norms(grad, segments)
        scale = optim_ops.gradient_clip_scale(grad, segments, global_clipnorm=1.0)
        optim_ops.adam_update(p, grad, m, v, lr=1e-3, step=3)
        g = grad.copy()
        penalty_ops.weight_penalty_grad(w, g, l1=0.01, l2=0.02)
        return (penalty_ops.weight_penalty(w, l1=0.01, l2=0.02), norms, scale, p, m, v, g,
                metric_ops.sparse_categorical_accuracy_sums(pred, labels),
                metric_ops.fscore_counts(pred, targets, threshold=0.1),
                metric_ops.threshold_histogram(scores, targets[:, 0].copy(), num_thresholds=50))

    _check(run)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent(cell):
    rng = np.random.default_rng(70)
    b, t, f, u = 37, 5, 11, 19
    g = {"lstm": 4, "gru": 3}[cell]
    x = _rand(rng, b, t, f)
    kernel, rec = _rand(rng, f, g * u) * 0.3, _rand(rng, u, g * u) * 0.3
    bias = _rand(rng, 2, g * u) if cell == "gru" else _rand(rng, g * u)
    dy = _rand(rng, b, t, u)

    def run():
        tape = rnn_ops.recurrent_forward(cell, x, kernel, rec, bias)
        kg, rg, bg = np.empty_like(kernel), np.empty_like(rec), np.empty_like(bias)
        dx = rnn_ops.recurrent_backward(tape, dy, kernel_grad=kg, recurrent_grad=rg,
                                        bias_grad=bg)
        return tape.sequence().copy(), dx, kg, rg, bg

    _check(run)


# ------------------------------------------------------------------------- a whole model
MODEL_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import fastnet
from fastnet import config, layers, models, optimizers, utils
fastnet.set_num_threads(int(sys.argv[1]))
assert config.is_deterministic()
utils.set_random_seed(1234)
rng = np.random.default_rng(7)
x = rng.standard_normal((160, 20, 20, 3)).astype(np.float32)
y = rng.integers(0, 10, 160)
model = models.Sequential([
    layers.Conv2D(16, 3, activation="relu", input_shape=(20, 20, 3)),
    layers.BatchNormalization(),
    layers.MaxPooling2D(2),
    layers.Conv2D(24, 3, padding="same", activation="relu"),
    layers.MaxPooling2D(3, strides=1),
    layers.Flatten(),
    layers.Dense(32, activation="relu"),
    layers.Dropout(0.3),
    layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
hist = model.fit(x, y, epochs=3, batch_size=48, verbose=0)
weights = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes()
                                  for w in model.get_weights())).hexdigest()
pred = model.predict(x[:40], verbose=0)
print(json.dumps({"weights": weights, "pred": hashlib.sha256(pred.tobytes()).hexdigest(),
                  "loss": [float(v).hex() for v in hist.history["loss"]],
                  "accuracy": [float(v).hex() for v in hist.history["accuracy"]]}))
"""


def test_model_training_is_bitwise_identical_at_1_and_2_threads():
    results = []
    for n in (1, 2):
        env = dict(os.environ, FASTNET_DETERMINISTIC="1", OMP_NUM_THREADS=str(n))
        out = subprocess.run([sys.executable, "-c", MODEL_SCRIPT, str(n)], env=env,
                             cwd=_PKG_PARENT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert results[0] == results[1]
