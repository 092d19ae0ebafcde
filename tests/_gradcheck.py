"""Finite-difference gradient checks shared by the layer and model tests (float64)."""
import numpy as np


def numeric_grad(f, x, eps=1e-6, max_points=60, rng=None):
    """Central differences of scalar f() w.r.t. entries of x (modified in place, restored).

    Checks at most ``max_points`` random entries; returns (indices, numeric values)."""
    rng = rng or np.random.default_rng(0)
    flat = x.reshape(-1)
    idx = np.arange(flat.size) if flat.size <= max_points else \
        rng.choice(flat.size, max_points, replace=False)
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[j] = (fp - fm) / (2 * eps)
    return idx, out


def check_layer_grads(layer, input_shape, batch=2, seed=0, rtol=1e-5, atol=1e-7, x=None):
    """Compare a float64 layer's backward with finite differences of sum(forward(x) * r)."""
    rng = np.random.default_rng(seed)
    if not layer.built:
        layer.build(input_shape)
    x = rng.standard_normal((batch,) + tuple(input_shape)) if x is None else x
    y = layer.forward(x, training=True)
    r = rng.standard_normal(y.shape)

    def f():
        return float(np.sum(layer.forward(x, training=True) * r))

    layer.forward(x, training=True)
    dx = layer.backward(r.copy())
    dx = None if dx is None else np.array(dx, copy=True)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    if dx is not None:
        idx, num = numeric_grad(f, x)
        np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=rtol, atol=atol,
                                   err_msg=f"{layer.name}: input gradient")
    for name, p in layer.params.items():
        if name not in grads:   # non-trainable state (BatchNorm's moving statistics)
            continue
        idx, num = numeric_grad(f, p)
        np.testing.assert_allclose(grads[name].reshape(-1)[idx], num, rtol=rtol, atol=atol,
                                   err_msg=f"{layer.name}: gradient of {name}")
    return dx, grads
