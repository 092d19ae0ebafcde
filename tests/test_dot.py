"""Dot merge layer: forward against a NumPy reference, float64 finite-difference gradients,
shapes, errors, and use in a functional model."""
import numpy as np
import pytest

from fastnet import layers, models, optimizers
from _gradcheck import numeric_grad


def reference(x0, x1, axes, normalize=False):
    """Keras' batch_dot (after optional L2 normalization) with a per-sample NumPy loop."""
    a0, a1 = (axes, axes) if isinstance(axes, int) else axes
    a0, a1 = a0 % x0.ndim, a1 % x1.ndim
    if normalize:
        x0 = x0 / np.maximum(np.sqrt(np.sum(x0 * x0, axis=a0, keepdims=True)), 1e-7)
        x1 = x1 / np.maximum(np.sqrt(np.sum(x1 * x1, axis=a1, keepdims=True)), 1e-7)
    out = np.stack([np.tensordot(p, q, axes=(a0 - 1, a1 - 1)) for p, q in zip(x0, x1)])
    return out.reshape(len(x0), 1) if out.ndim == 1 else out


# (per-sample shape of x0, of x1, axes)
CASES = [
    ((7,), (7,), 1),
    ((7,), (7,), -1),
    ((5, 3), (4, 3), 2),            # (b, n, d) x (b, m, d): attention scores
    ((5, 3), (4, 3), (-1, -1)),
    ((5, 3), (5, 2), (1, 1)),       # contract the steps axis
    ((5, 3), (3,), (2, 1)),         # 3-D with 2-D
    ((3,), (3, 6), (1, 1)),
    ((2, 3, 4), (4, 5), (3, 1)),    # rank 4 with rank 3
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("s0,s1,axes", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_matches_reference(s0, s1, axes, normalize, batch):
    rng = np.random.default_rng(len(s0) * 10 + len(s1) + batch)
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        x0 = rng.standard_normal((batch,) + s0).astype(dtype)
        x1 = rng.standard_normal((batch,) + s1).astype(dtype)
        layer = layers.Dot(axes, normalize=normalize, dtype=dtype)
        y = layer([x0, x1])
        ref = reference(x0.astype(np.float64), x1.astype(np.float64), axes, normalize)
        assert y.dtype == dtype
        assert y.shape == (batch,) + layer.compute_output_shape([s0, s1])
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("s0,s1,axes", CASES)
def test_gradients_float64(s0, s1, axes, normalize):
    rng = np.random.default_rng(7)
    layer = layers.Dot(axes, normalize=normalize, dtype="float64")
    layer.build([s0, s1])
    xs = [rng.standard_normal((2,) + s0), rng.standard_normal((2,) + s1)]
    r = rng.standard_normal((2,) + layer.output_shape)

    def f():
        return float(np.sum(layer.forward(xs, training=True) * r))

    layer.forward(xs, training=True)
    dxs = [np.array(g, copy=True) for g in layer.backward(r.copy())]
    for x, dx in zip(xs, dxs):
        assert dx.shape == x.shape
        idx, num = numeric_grad(f, x)
        np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=1e-6, atol=1e-8)


def test_normalize_cosine_and_zero_vector():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    a[1] = 0.0     # the norm floor keeps a zero vector finite
    y = layers.Dot(1, normalize=True, dtype="float64")([a, b])
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1), 1e-7) / \
        np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(y[:, 0], cos, rtol=1e-12, atol=1e-12)
    assert y[1, 0] == 0.0


def test_output_shapes_and_config():
    assert layers.Dot(1).compute_output_shape([(8,), (8,)]) == (1,)
    assert layers.Dot((2, 2)).compute_output_shape([(5, 3), (4, 3)]) == (5, 4)
    assert layers.Dot(-1).compute_output_shape([(5, 3), (3,)]) == (5,)
    d = layers.Dot((2, 1), normalize=True, name="sim")
    cfg = d.get_config()
    assert cfg["axes"] == [2, 1] and cfg["normalize"] is True
    d2 = layers.Dot.from_config(cfg)
    assert d2.axes == (2, 1) and d2.normalize and d2.name == "sim"


def test_errors():
    with pytest.raises(ValueError, match="size 3 with one of size 4"):
        layers.Dot(1).compute_output_shape([(3,), (4,)])
    with pytest.raises(ValueError, match="batch axis"):
        layers.Dot(0).compute_output_shape([(3,), (3,)])
    with pytest.raises(ValueError, match="out of range"):
        layers.Dot(3).compute_output_shape([(3,), (3,)])
    with pytest.raises(ValueError, match="exactly 2"):
        layers.Dot(1).compute_output_shape([(3,), (3,), (3,)])
    with pytest.raises(TypeError, match="axes"):
        layers.Dot("1")
    with pytest.raises(TypeError, match="axes"):
        layers.Dot((1, 2, 3))
    with pytest.raises(TypeError, match="normalize"):
        layers.Dot(1, normalize="yes")


def test_in_functional_model_trains_and_round_trips(tmp_path):
    """A similarity model: two towers, Dot(normalize=True), a sigmoid on the cosine."""
    rng = np.random.default_rng(0)
    n, d = 256, 6
    a_in, b_in = layers.Input(shape=(d,)), layers.Input(shape=(d,))
    tower = layers.Dense(8, name="tower")
    cos = layers.Dot(1, normalize=True, name="cos")([tower(a_in), tower(b_in)])
    out = layers.Dense(1, activation="sigmoid", name="out")(cos)
    model = models.Model([a_in, b_in], out)
    a = rng.standard_normal((n, d)).astype(np.float32)
    same = rng.integers(0, 2, n)
    b = np.where(same[:, None] == 1, a + 0.1 * rng.standard_normal((n, d)),
                 rng.standard_normal((n, d))).astype(np.float32)
    model.compile(optimizer=optimizers.Adam(0.05), loss="binary_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit([a, b], same.astype(np.float32), epochs=15, batch_size=32, verbose=0)
    assert hist.history["accuracy"][-1] > 0.85
    path = tmp_path / "dot.fnet"
    model.save(path)
    again = models.load_model(path)
    np.testing.assert_array_equal(again.predict([a, b], verbose=0),
                                  model.predict([a, b], verbose=0))


def test_random_shapes_and_axes():
    """Random ranks (2-D to 4-D inputs), odd sizes, any pair of axes, negative or not."""
    rng = np.random.default_rng(11)
    for _ in range(25):
        r0, r1 = rng.integers(1, 4, 2)       # per-sample ranks
        k = int(rng.integers(1, 6))
        s0 = [int(v) for v in rng.integers(1, 6, r0)]
        s1 = [int(v) for v in rng.integers(1, 6, r1)]
        a0, a1 = int(rng.integers(0, r0)), int(rng.integers(0, r1))
        s0[a0] = s1[a1] = k
        axes = (a0 + 1 - (r0 + 1) * int(rng.integers(0, 2)),
                a1 + 1 - (r1 + 1) * int(rng.integers(0, 2)))
        batch = int(rng.integers(1, 4))
        normalize = bool(rng.integers(0, 2))
        x0 = rng.standard_normal((batch,) + tuple(s0))
        x1 = rng.standard_normal((batch,) + tuple(s1))
        y = layers.Dot(axes, normalize=normalize, dtype="float64")([x0, x1])
        np.testing.assert_allclose(y, reference(x0, x1, axes, normalize), rtol=1e-12,
                                   atol=1e-12, err_msg=f"{s0} {s1} {axes}")
