"""Non-trivial BatchNorm statistics for tests of inference and export (folding is only
exercised when the moving statistics are not the initial zeros and ones)."""
import numpy as np

from fastnet import layers as L


def randomize_bn(model, seed=0):
    """Give every BatchNormalization of ``model`` random gamma, beta, mean and variance."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.params["moving_mean"].shape
            values = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.3, c),
                      "moving_mean": rng.normal(0, 0.3, c),
                      "moving_variance": rng.uniform(0.5, 2.0, c)}
            layer.set_weights([values[n] for n in layer.params])
