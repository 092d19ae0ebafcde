"""Merge layers: forward against NumPy, float64 finite-difference gradients, shape errors."""
import numpy as np
import pytest

from fastnet import layers
from _gradcheck import numeric_grad

RNG = np.random.default_rng(0)

# (layer factory, NumPy reference on a list of arrays)
ELEMENTWISE = {
    "Add": (layers.Add, lambda xs: sum(xs)),
    "Subtract": (layers.Subtract, lambda xs: xs[0] - xs[1]),
    "Multiply": (layers.Multiply, lambda xs: np.prod(np.stack(np.broadcast_arrays(*xs)), 0)),
    "Average": (layers.Average, lambda xs: sum(xs) / len(xs)),
    "Maximum": (layers.Maximum, lambda xs: np.max(np.stack(np.broadcast_arrays(*xs)), 0)),
    "Minimum": (layers.Minimum, lambda xs: np.min(np.stack(np.broadcast_arrays(*xs)), 0)),
}

SHAPES = [  # per-sample shapes of the inputs
    [(7,), (7,)],
    [(3, 5, 2), (3, 5, 2), (3, 5, 2)],
    [(4, 1, 3), (4, 6, 3)],          # broadcast over an axis of size 1
    [(1, 1, 5), (2, 3, 5), (2, 3, 1)],
]


def cases():
    for name in ELEMENTWISE:
        for shapes in SHAPES:
            if name == "Subtract" and len(shapes) != 2:
                continue
            yield name, shapes


def inputs(shapes, batch, dtype, rng=RNG):
    return [rng.standard_normal((batch,) + s).astype(dtype) for s in shapes]


def check_multi_grads(layer, xs, rtol=1e-6, atol=1e-8):
    """Finite differences of sum(forward(xs) * r) against backward(r), for every input."""
    y = layer.forward(xs, training=True)
    r = np.random.default_rng(1).standard_normal(y.shape)

    def f():
        return float(np.sum(layer.forward(xs, training=True) * r))

    layer.forward(xs, training=True)
    dxs = [None if g is None else np.array(g, copy=True) for g in layer.backward(r.copy())]
    assert len(dxs) == len(xs)
    for i, (x, dx) in enumerate(zip(xs, dxs)):
        assert dx.shape == x.shape, f"{layer.name}: gradient {i} shape"
        idx, num = numeric_grad(f, x, max_points=40)
        np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=rtol, atol=atol,
                                   err_msg=f"{layer.name}: gradient of input {i}")


@pytest.mark.parametrize("name,shapes", list(cases()))
@pytest.mark.parametrize("batch", [1, 3])
def test_elementwise_forward_matches_numpy(name, shapes, batch):
    cls, ref = ELEMENTWISE[name]
    xs = inputs(shapes, batch, np.float32)
    y = cls()(xs)
    expected = ref([x.astype(np.float64) for x in xs])
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,shapes", list(cases()))
def test_elementwise_gradients_float64(name, shapes):
    cls, _ = ELEMENTWISE[name]
    layer = cls(dtype="float64")
    xs = inputs(shapes, 2, np.float64)
    layer.build([x.shape[1:] for x in xs])
    check_multi_grads(layer, xs)


@pytest.mark.parametrize("cls", [layers.Maximum, layers.Minimum])
def test_extremum_ties_go_to_the_first_input(cls):
    layer = cls(dtype="float64")
    x = np.array([[1.0, 2.0, 3.0]])
    layer.build([(3,), (3,), (3,)])
    layer.forward([x, x.copy(), x - 1 if cls is layers.Maximum else x + 1], training=True)
    d0, d1, d2 = layer.backward(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(d0, [[1, 2, 3]])
    np.testing.assert_array_equal(d1, 0)
    np.testing.assert_array_equal(d2, 0)


@pytest.mark.parametrize("axis,shapes", [
    (-1, [(4, 3, 2), (4, 3, 5)]),
    (1, [(2, 3), (5, 3), (1, 3)]),
    (2, [(4, 1, 2), (4, 3, 2)]),
    (-2, [(2, 6), (7, 6)]),
])
@pytest.mark.parametrize("batch", [1, 2])
def test_concatenate_forward_and_gradients(axis, shapes, batch):
    xs = inputs(shapes, batch, np.float64)
    layer = layers.Concatenate(axis=axis, dtype="float64")
    y = layer(xs)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    assert layer.output_shape == y.shape[1:]
    check_multi_grads(layer, xs)


def test_single_input_is_the_identity():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    for cls in (layers.Add, layers.Multiply, layers.Average, layers.Maximum, layers.Concatenate):
        np.testing.assert_array_equal(cls()([x]), x)


def test_gradients_not_needed_give_none():
    layer = layers.Add()
    xs = inputs([(3,), (3,)], 2, np.float32)
    layer.build([(3,), (3,)])
    layer.need_input_grad = False
    layer.forward(xs)
    assert layer.backward(np.ones((2, 3), np.float32)) == [None, None]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="incompatible shapes"):
        layers.Add().build([(4, 3), (4, 5)])
    with pytest.raises(ValueError, match="same rank"):
        layers.Multiply().build([(4, 3), (3,)])
    with pytest.raises(ValueError, match="exactly 2 inputs"):
        layers.Subtract().build([(3,), (3,), (3,)])
    with pytest.raises(ValueError, match="match on every other axis"):
        layers.Concatenate().build([(4, 3), (5, 3)])
    with pytest.raises(ValueError, match="batch axis"):
        layers.Concatenate(axis=0).build([(4, 3), (4, 3)])
    with pytest.raises(ValueError, match="out of range"):
        layers.Concatenate(axis=3).build([(4, 3), (4, 3)])
    with pytest.raises(TypeError, match="list of inputs"):
        layers.Add()(np.ones((2, 3)))
    with pytest.raises(TypeError, match="axis must be an integer"):
        layers.Concatenate(axis=1.5)
    a, b = layers.Input(shape=(4, 3)), layers.Input(shape=(4, 5))
    with pytest.raises(ValueError, match=r"incompatible shapes \[\(None, 4, 3\), \(None, 4, 5\)\]"):
        layers.Add()([a, b])


def test_buffers_are_reused_across_calls():
    layer = layers.Add()
    xs = inputs([(5,), (5,)], 4, np.float32)
    layer.build([(5,), (5,)])
    y1 = layer.forward(xs)
    y2 = layer.forward(inputs([(5,), (5,)], 4, np.float32))
    assert y1 is y2


def test_config_round_trip():
    for layer in (layers.Add(name="a1"), layers.Concatenate(axis=1, name="c1"),
                  layers.Maximum(dtype="float64")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
