"""Weight initializers (Keras names and formulas), drawing from fastnet's global seed."""
import numpy as np

from fastnet.utils.random import get_rng


def _fans(shape):
    """(fan_in, fan_out) as Keras computes them: conv kernels (kh, kw, in, out), dense (in, out)."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Base: ``init(shape, dtype)`` returns a new array."""

    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError

    def get_config(self):
        return {}


class Zeros(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)


class Ones(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


class GlorotUniform(Initializer):
    """U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""

    def __init__(self, seed=None):
        self.seed = seed

    def _rng(self):
        return np.random.default_rng(self.seed) if self.seed is not None else get_rng()

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(shape)
        limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))
        return self._rng().uniform(-limit, limit, size=shape).astype(dtype)

    def get_config(self):
        return {"seed": self.seed}


class GlorotNormal(GlorotUniform):
    """Truncated normal (2 std) with std = sqrt(2 / (fan_in + fan_out))."""

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = _fans(shape)
        return _truncated_normal(self._rng(), shape, np.sqrt(2.0 / max(fan_in + fan_out, 1)), dtype)


class HeNormal(GlorotUniform):
    """Truncated normal (2 std) with std = sqrt(2 / fan_in)."""

    def __call__(self, shape, dtype="float32"):
        fan_in, _ = _fans(shape)
        return _truncated_normal(self._rng(), shape, np.sqrt(2.0 / max(fan_in, 1)), dtype)


class HeUniform(GlorotUniform):
    """U(-l, l) with l = sqrt(6 / fan_in)."""

    def __call__(self, shape, dtype="float32"):
        fan_in, _ = _fans(shape)
        limit = np.sqrt(6.0 / max(fan_in, 1))
        return self._rng().uniform(-limit, limit, size=shape).astype(dtype)


class RandomNormal(GlorotUniform):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def __call__(self, shape, dtype="float32"):
        return self._rng().normal(self.mean, self.stddev, size=shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(GlorotUniform):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = minval, maxval

    def __call__(self, shape, dtype="float32"):
        return self._rng().uniform(self.minval, self.maxval, size=shape).astype(dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class Orthogonal(GlorotUniform):
    """Keras' orthogonal initializer: the weight viewed as (prod(shape[:-1]), shape[-1]) has
    orthonormal rows or columns (whichever are fewer), times ``gain``.  Q of the QR of a
    standard normal (max, min) matrix, its columns' signs fixed by diag(R)."""

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = gain

    def __call__(self, shape, dtype="float32"):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"the orthogonal initializer needs a shape of rank >= 2, "
                             f"got {shape}")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)
        if rows < cols:
            q = q.T
        return (self.gain * q).reshape(shape).astype(dtype)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


def _truncated_normal(rng, shape, std, dtype):
    x = rng.standard_normal(size=shape)
    bad = np.abs(x) > 2
    while bad.any():  # redraw the tails: a handful of passes, vectorized
        x[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(x) > 2
    return (x * std).astype(dtype)


_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "he_normal": HeNormal, "he_uniform": HeUniform, "random_normal": RandomNormal,
    "random_uniform": RandomUniform, "orthogonal": Orthogonal,
    "uniform": RandomUniform, "normal": RandomNormal,   # Keras 3 aliases
}


def get(identifier):
    """An initializer from a name (Keras spelling) or an Initializer/callable."""
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown initializer {identifier!r}; expected one of {sorted(_BY_NAME)}")
        return _BY_NAME[key]()
    if callable(identifier):
        return identifier
    raise TypeError(f"initializer must be a name or a callable, got {type(identifier).__name__}")
