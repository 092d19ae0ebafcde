"""The fused weight gradient of a Conv2D followed by a max pooling (conv2d_backward_weight_pooled)
and the MaxPooling2D layer that takes over its conv's backward."""
import numpy as np
import pytest

import fastnet
from fastnet import layers, models
from fastnet.ops import conv as C
from fastnet.ops import pool as P


def _reference(x, k, g, conv, pool, relu):
    """The unfused path: pooling backward into the full conv gradient, then the conv's."""
    (kh, kw), s, pad = conv
    ps, pst, ppad = pool
    y = C.conv2d(x, k, strides=s, padding=pad, activation="relu" if relu else None)
    yp = P.max_pool2d(y, ps, pst, ppad)
    dy = P.max_pool2d_backward(y, yp, g, ps, pst, ppad)
    return C.conv2d_backward_weight(x, dy, (kh, kw), strides=s, padding=pad,
                                    bias_grad=np.empty(k.shape[3], x.dtype),
                                    relu_output=y if relu else None)


def _fused(x, k, g, conv, pool, relu, **kw):
    (kh, kw_), s, pad = conv
    ps, pst, ppad = pool
    y = C.conv2d(x, k, strides=s, padding=pad, activation="relu" if relu else None)
    am = np.empty(g.shape, np.uint8)
    P.max_pool2d(y, ps, pst, ppad, argmax=am, relu_input=relu)
    return C.conv2d_backward_weight_pooled(x, g, am, (kh, kw_), strides=s, padding=pad,
                                           pool_size=ps, pool_strides=pst, pool_padding=ppad,
                                           bias_grad=np.empty(k.shape[3], x.dtype), **kw)


def _case(rng):
    """Random conv + pool geometry that fits, as ((kh, kw), strides, padding), (pool, strides,
    padding) and the shapes."""
    while True:
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(4, 16)), int(rng.integers(4, 16))
        cin, cout = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        kern = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        pad = ("valid", "same")[rng.integers(2)]
        ps = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        pst = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        ppad = ("valid", "same")[rng.integers(2)]
        try:
            (oh, ow), _ = C._geometry((h, w), kern, s, pad)
            qshape = P._window((n, oh, ow, cout), ps, pst, ppad)[2]
        except ValueError:
            continue
        return (n, h, w, cin, cout), (kern, s, pad), (ps, pst, ppad), qshape


@pytest.mark.parametrize("seed", range(40))
def test_pooled_weight_gradient_matches_unfused_path(seed):
    rng = np.random.default_rng(seed)
    (n, h, w, cin, cout), conv, pool, qshape = _case(rng)
    relu = bool(seed % 2)
    x = rng.standard_normal((n, h, w, cin))
    k = rng.standard_normal(conv[0] + (cin, cout))
    g = rng.standard_normal(qshape)
    ref_k, ref_b = _reference(x, k, g, conv, pool, relu)
    got_k, got_b = _fused(x, k, g, conv, pool, relu)
    np.testing.assert_allclose(got_k, ref_k, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pooled_weight_gradient_float32_and_threads(threads):
    rng = np.random.default_rng(threads)
    x = rng.random((5, 28, 28, 1), dtype=np.float32)   # the classic CNN's first layer
    k = rng.standard_normal((3, 3, 1, 32)).astype(np.float32)
    g = rng.standard_normal((5, 13, 13, 32)).astype(np.float32)
    conv, pool = ((3, 3), (1, 1), "valid"), ((2, 2), (2, 2), "valid")
    ref_k, ref_b = _reference(x, k, g, conv, pool, True)
    old = fastnet.get_num_threads()
    try:
        fastnet.set_num_threads(threads)
        got_k, got_b = _fused(x, k, g, conv, pool, True)
        again_k, _ = _fused(x, k, g, conv, pool, True)
    finally:
        fastnet.set_num_threads(old)
    np.testing.assert_allclose(got_k, ref_k, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got_k, again_k)   # reproducible for a thread count


def test_pooled_weight_gradient_rejects_bad_arguments():
    x = np.zeros((2, 8, 8, 3))
    g = np.zeros((2, 3, 3, 4))
    am = np.zeros((2, 3, 3, 4), np.uint8)
    with pytest.raises(ValueError, match="dy_pool must have shape"):
        C.conv2d_backward_weight_pooled(x, np.zeros((2, 4, 3, 4)), am, 3)
    with pytest.raises(ValueError, match="argmax must be"):
        C.conv2d_backward_weight_pooled(x, g, am.astype(np.int32), 3)
    with pytest.raises(ValueError, match="argmax must be"):
        C.conv2d_backward_weight_pooled(x, g, am[:, :2], 3)
    with pytest.raises(TypeError, match="dy_pool must have dtype"):
        C.conv2d_backward_weight_pooled(x, g.astype(np.float32), am, 3)
    with pytest.raises(ValueError, match="out must be"):
        C.conv2d_backward_weight_pooled(x, g, am, 3, out=np.zeros((3, 3, 3, 5)))
    # argmax values that point nowhere are ignored, never read out of bounds
    dk, _ = C.conv2d_backward_weight_pooled(x + 1, g + 1, np.full_like(am, 200), 3)
    assert np.all(dk == 0)


def _model(dtype, fused, activation="relu", first=None):
    stack = [layers.Conv2D(6, 3, activation=activation, padding="same", input_shape=(9, 11, 2),
                           kernel_regularizer="l2", dtype=dtype),
             layers.MaxPooling2D((2, 3), dtype=dtype),
             layers.Conv2D(4, 2, activation="relu", dtype=dtype),
             layers.MaxPooling2D(2, dtype=dtype),
             layers.Flatten(dtype=dtype), layers.Dense(5, activation="softmax", dtype=dtype)]
    if first is not None:
        stack.insert(0, first)
    m = models.Sequential(stack)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pools = [layer for layer in m.layers if isinstance(layer, layers.MaxPooling2D)]
    if not fused:
        for p in pools:
            p.fuse_conv_backward(None)
    return m, pools


@pytest.mark.parametrize("activation", ["relu", None])
def test_model_trains_identically_with_the_fused_backward(activation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 9, 11, 2))
    y = rng.integers(0, 5, 7)
    plain, _ = _model("float64", False, activation)
    fused, pools = _model("float64", True, activation)
    assert pools[0]._conv is fused.layers[0]   # the first conv is fused ...
    assert pools[1]._conv is None              # ... the second needs its input gradient
    fused.set_weights(plain.get_weights())
    for _ in range(4):
        assert plain.train_on_batch(x, y) == pytest.approx(fused.train_on_batch(x, y), rel=1e-12)
    for a, b in zip(plain.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_no_fusion_when_the_conv_needs_its_input_gradient_or_another_activation():
    _, pools = _model("float32", True, activation="tanh")
    assert pools[0]._conv is None
    _, pools = _model("float32", True, first=layers.Dense(2, input_shape=(9, 11, 2)))
    assert pools[0]._conv is None
