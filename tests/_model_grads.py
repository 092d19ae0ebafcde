"""Whole-model float64 finite-difference gradient check shared by the model tests."""
import numpy as np

from _gradcheck import numeric_grad


def check_model_grads(model, x, labels, max_points=100):
    """The model's backward (flat trainable gradients) against central differences of its
    loss on (x, labels); the model is compiled, float64."""
    outs = model._forward(x, training=True)
    shape = (outs[0] if isinstance(outs, list) else outs).shape
    y = model.loss.prepare_targets(np.asarray(labels), shape, np.float64)

    def f():
        return model._loss_grad(model._forward(x, training=True), y)[0]

    _, g = model._loss_grad(model._forward(x, training=True), y)
    model._backward(g)
    analytic = model._flat_grads.copy()
    idx, num = numeric_grad(f, model._flat_params[:model._n_trainable], max_points=max_points)
    np.testing.assert_allclose(analytic[idx], num, rtol=1e-5, atol=1e-8)
