"""Embedding: integer indices -> rows of a trainable table."""
import numpy as np

from fastnet import initializers, regularizers
from fastnet.layers.base import Layer
from fastnet.ops.recurrent import embedding_grad, embedding_lookup

# float32 holds every integer up to 2**24 exactly: larger vocabularies need float64 batches.
_FLOAT32_EXACT = 1 << 24


class Embedding(Layer):
    """Turns indices into dense vectors: x (batch, ...) -> y (batch, ..., output_dim), with
    y[..., :] = embeddings[x[...]].

    The indices may come as floats (a model casts every batch to its dtype) or integers; each
    must be an integer in [0, input_dim) or a ValueError names the first bad one.  embeddings
    (input_dim, output_dim), initialized U(-0.05, 0.05) ('uniform') as in Keras.  No gradient
    flows to the indices: ``backward`` returns None.

    >>> Embedding(1000, 64, input_shape=(20,))      # 20 tokens -> (batch, 20, 64)
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, mask_zero=False, **kwargs):
        super().__init__(**kwargs)
        for name, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Embedding: {name} must be a positive integer, got {v!r}")
        if mask_zero:
            raise ValueError("Embedding: mask_zero=True is not supported (fastnet layers do "
                             "not propagate masks)")
        if self.dtype == np.float32 and input_dim > _FLOAT32_EXACT:
            raise ValueError(f"Embedding: input_dim={input_dim} exceeds 2**24, the largest "
                             f"index float32 batches hold exactly; use dtype='float64'")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        initializers.get(embeddings_initializer)
        self.embeddings_initializer = embeddings_initializer
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        self.need_input_grad = False

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def build_weights(self, input_shape):
        self.add_weight("embeddings", (self.input_dim, self.output_dim),
                        self.embeddings_initializer, regularizer=self.embeddings_regularizer)

    def forward(self, x, training=False):
        y = embedding_lookup(x, self.params["embeddings"],
                             out=self.buffer("y", x.shape + (self.output_dim,)))
        self._x = x
        return y

    def backward(self, dy):
        if self.trainable:
            embedding_grad(self._x, np.ascontiguousarray(dy), out=self.grads["embeddings"])
            self.add_regularization_grads()
        return None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(input_dim=self.input_dim, output_dim=self.output_dim,
                   embeddings_regularizer=regularizers.serialize(self.embeddings_regularizer),
                   mask_zero=False)
        if isinstance(self.embeddings_initializer, str):
            cfg["embeddings_initializer"] = self.embeddings_initializer
        return cfg
