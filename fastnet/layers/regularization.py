"""Dropout: inverted dropout with a seeded, counter-based mask (Keras ``Dropout``)."""
import numbers

import numpy as np

from fastnet.layers.base import Layer
from fastnet.ops import dropout as dropout_ops
from fastnet.utils.random import get_rng


class Dropout(Layer):
    """Sets a fraction ``rate`` of its inputs to 0 in training and scales the rest by
    1 / (1 - rate), so the expected value is unchanged; the identity at inference
    (``training=False``), as Keras.

    Args:
        rate: fraction dropped, 0 <= rate < 1 (0: the identity).
        noise_shape: the shape of the mask, broadcast over the input (batch axis included,
            None entries take the input's size), e.g. (None, 1, 1, C) drops whole channels.
        seed: non-negative integer; None draws one from ``fastnet.utils.set_random_seed``'s
            generator when the layer is built.

    Every training call draws a new mask: call k of a layer uses (seed, k), so two layers (or
    runs) with the same seed drop the same units, bitwise, for any thread count.

    >>> Dropout(0.5, seed=1)
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = dropout_ops.check_rate(rate)
        if noise_shape is not None:
            try:
                noise_shape = tuple(noise_shape)
            except TypeError:
                raise TypeError(f"Dropout: noise_shape must be a tuple, "
                                f"got {noise_shape!r}") from None
            for s in noise_shape:
                if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Integral)
                                      or s < 1):
                    raise ValueError(f"Dropout: noise_shape must hold positive integers or None, "
                                     f"got {noise_shape!r}")
        self.noise_shape = noise_shape
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2 ** 64):
            raise ValueError(f"Dropout: seed must be a non-negative integer or None, "
                             f"got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._seed = self.seed
        self.step = 0          # training calls so far: the mask of the next one is (seed, step)
        self._active = False

    def build_weights(self, input_shape):
        if self._seed is None:
            self._seed = int(get_rng().integers(0, 2 ** 63 - 1))
        if self.noise_shape is not None and len(self.noise_shape) != len(input_shape) + 1:
            raise ValueError(f"{self.name}: noise_shape {self.noise_shape} must have the rank of "
                             f"the input (batch axis included), got inputs {input_shape}")

    def _mask_shape(self, shape):
        ns = tuple(s if n is None else n for n, s in zip(self.noise_shape, shape))
        for n, s in zip(ns, shape):
            if n != 1 and n != s:
                raise ValueError(f"{self.name}: noise_shape {self.noise_shape} does not broadcast "
                                 f"to the input shape {shape}")
        return ns

    def forward(self, x, training=False):
        self._active = bool(training) and self.rate > 0.0
        if not self._active:
            return x
        step, self.step = self.step, self.step + 1
        y = self.buffer("y", x.shape)
        if self.noise_shape is None:
            dropout_ops.dropout_forward(x, self.rate, self._seed, step, out=y,
                                        mask=self.buffer("mask", x.shape, np.uint8))
            self._broadcast = False
        else:
            mult = self.buffer("mult", self._mask_shape(x.shape))
            dropout_ops.dropout_mask_values(mult.shape, x.dtype, self.rate, self._seed, step,
                                            out=mult)
            np.multiply(x, mult, out=y)     # broadcast: compiled in NumPy
            self._broadcast = True
        return y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        if not self._active:
            return dy
        dx = self.buffer("dx", dy.shape)
        if self._broadcast:
            np.multiply(dy, self._buffers["mult"], out=dx)
            return dx
        return dropout_ops.dropout_backward(dy, self._buffers["mask"], self.rate, out=dx)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate, noise_shape=self.noise_shape, seed=self.seed)
        return cfg
