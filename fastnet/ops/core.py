"""Small reductions the layers need (bias gradients)."""
import numpy as np

from fastnet.ops._checks import check_array, check_out


def bias_grad(dy, out=None):
    """Sum of ``dy`` (rows, units) over rows -> (units,): the gradient of a bias."""
    check_array(dy, "dy", ndim=2)
    out = check_out(out, "out", (dy.shape[1],), dy.dtype)
    # numpy's add.reduce over axis 0 is a vectorized row accumulation (compiled, no temporaries)
    np.add.reduce(dy, axis=0, out=out)
    return out
