"""Recurrent layers: SimpleRNN, LSTM, GRU (Keras gate order, weight layouts and formulas).

Inputs (batch, steps, features).  Output: the last hidden state (batch, units), or with
``return_sequences=True`` every step's (batch, steps, units), in processing order (reversed
with ``go_backwards``, as Keras).  ``return_state=True`` makes the layer multi-output:
``[output, h]`` (LSTM ``[output, h, c]``), and ``backward`` then takes the list of their
gradients (None or zeros for the unused ones).  The initial state is zero.  The math is in
``fastnet.ops.recurrent``: all steps' input projections in one GEMM, the time loop compiled
with the recurrent GEMM and fused gate kernels per step, weight gradients as GEMMs over all
steps.
"""
import numpy as np

from fastnet import activations, initializers, regularizers
from fastnet.layers.base import Layer
from fastnet.ops import recurrent as rnn_ops


def _flag(value, name, cls):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{cls}: {name} must be a bool, got {value!r}")
    return bool(value)


class RNNBase(Layer):
    """Shared by SimpleRNN, LSTM and GRU: arguments, weights, outputs and the multi-output
    protocol.  Subclasses set ``_cell`` and ``_gates`` and may add arguments."""

    _cell = None
    _gates = 1
    _own_options = ()   # a subclass's extra __init__ flags, part of its config

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, **kwargs):
        super().__init__(**kwargs)
        cls = type(self).__name__
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{cls}: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        rnn_ops.check_activation(self.activation, f"{cls}: activation")
        rnn_ops.check_activation(self.recurrent_activation, f"{cls}: recurrent_activation")
        self.use_bias = _flag(use_bias, "use_bias", cls)
        for name, v in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != 0:
                raise ValueError(f"{cls}: {name}={v!r} is not supported (only 0.0); put a "
                                 f"Dropout layer before or after the recurrent layer instead")
        if _flag(stateful, "stateful", cls):
            raise ValueError(f"{cls}: stateful=True is not supported: every batch starts "
                             f"from a zero state")
        self.return_sequences = _flag(return_sequences, "return_sequences", cls)
        self.return_state = _flag(return_state, "return_state", cls)
        self.go_backwards = _flag(go_backwards, "go_backwards", cls)
        self.unroll = _flag(unroll, "unroll", cls)   # no effect: the loop is compiled anyway
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        for init in (kernel_initializer, recurrent_initializer, bias_initializer):
            initializers.get(init)   # an unknown name fails here, not at build time
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    # -- shapes and weights ------------------------------------------------------------------
    @property
    def n_states(self):
        return 2 if self._cell == "lstm" else 1

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: {type(self).__name__} expects inputs (batch, steps, "
                             f"features), got per-sample shape {tuple(input_shape)}")
        out = (input_shape[0], self.units) if self.return_sequences else (self.units,)
        if self.return_state:
            return [out] + [(self.units,)] * self.n_states
        return out

    def _bias_shape(self):
        return (self._gates * self.units,)

    def _bias_initializer(self):
        return self.bias_initializer

    def build_weights(self, input_shape):
        gu = self._gates * self.units
        self.add_weight("kernel", (input_shape[-1], gu), self.kernel_initializer,
                        regularizer=self.kernel_regularizer)
        self.add_weight("recurrent_kernel", (self.units, gu), self.recurrent_initializer,
                        regularizer=self.recurrent_regularizer)
        if self.use_bias:
            self.add_weight("bias", self._bias_shape(), self._bias_initializer(),
                            regularizer=self.bias_regularizer)

    # -- computation -------------------------------------------------------------------------
    def _forward_kwargs(self):
        return {}

    def forward(self, x, training=False):
        tape = rnn_ops.recurrent_forward(
            self._cell, x, self.params["kernel"], self.params["recurrent_kernel"],
            self.params.get("bias"), activation=self.activation,
            recurrent_activation=self.recurrent_activation, go_backwards=self.go_backwards,
            buffer=self.buffer, **self._forward_kwargs())
        self._tape = tape
        if self.return_sequences:
            y = tape.sequence(out=self.buffer("y", (x.shape[0], x.shape[1], self.units)))
        else:
            y = tape.last_h
        if self.return_state:
            return [y, tape.last_h] + ([tape.last_c] if self._cell == "lstm" else [])
        return y

    def backward(self, dy):
        tape = getattr(self, "_tape", None)   # per-call state: set by forward only
        if tape is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        dh = dc = None
        if self.return_state:
            if not isinstance(dy, (list, tuple)) or len(dy) != 1 + self.n_states:
                raise ValueError(f"{self.name}: with return_state=True backward needs a list "
                                 f"of {1 + self.n_states} gradients (output, then the states)")
            dy, dh, dc = dy[0], dy[1], (dy[2] if self._cell == "lstm" else None)
        if self.return_sequences:
            dy_seq, dh_last = dy, dh
        else:   # the output is the final state itself: its gradients add up
            dy_seq, dh_last = None, dy
            if dh is not None and dy is not None:
                if np.shape(dy) != np.shape(dh):
                    raise ValueError(f"{self.name}: the gradients of the output and of the "
                                     f"state must have one shape, got {np.shape(dy)} and "
                                     f"{np.shape(dh)}")
                dh_last = np.add(dy, dh, out=self.buffer("dh_sum", np.shape(dh)))
            elif dy is None:
                dh_last = dh
        grads = self.grads if self.trainable else {}
        dx = rnn_ops.recurrent_backward(
            tape, dy_seq, dh_last, dc, kernel_grad=grads.get("kernel"),
            recurrent_grad=grads.get("recurrent_kernel"), bias_grad=grads.get("bias"),
            need_input_grad=self.need_input_grad, buffer=self.buffer)
        if self.trainable:
            self.add_regularization_grads()
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=activations.serialize(self.activation),
                   recurrent_activation=activations.serialize(self.recurrent_activation),
                   use_bias=self.use_bias,
                   kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
                   recurrent_regularizer=regularizers.serialize(self.recurrent_regularizer),
                   bias_regularizer=regularizers.serialize(self.bias_regularizer),
                   dropout=0.0, recurrent_dropout=0.0, return_sequences=self.return_sequences,
                   return_state=self.return_state, go_backwards=self.go_backwards,
                   stateful=False, unroll=self.unroll)
        for name in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            init = getattr(self, name)
            if isinstance(init, str):   # initializer objects are not part of the config
                cfg[name] = init
        for name in self._own_options:
            cfg[name] = getattr(self, name)
        return cfg


class SimpleRNN(RNNBase):
    """Fully connected RNN: h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias).

    kernel (features, units), recurrent_kernel (units, units), bias (units,).

    >>> SimpleRNN(32, return_sequences=True, input_shape=(10, 8))
    """

    _cell = "simple_rnn"
    _gates = 1

    def __init__(self, units, activation="tanh", use_bias=True, **kwargs):
        if "recurrent_activation" in kwargs:
            raise TypeError("SimpleRNN: unexpected keyword argument 'recurrent_activation'")
        super().__init__(units, activation=activation, recurrent_activation=None,
                         use_bias=use_bias, **kwargs)

    def get_config(self):
        cfg = super().get_config()
        del cfg["recurrent_activation"]
        return cfg


class LSTM(RNNBase):
    """Long Short-Term Memory (Hochreiter 1997), Keras' gate order i, f, c, o:

        z = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias       (split in 4 blocks of units)
        i, f, o = recurrent_activation(z_i, z_f, z_o);  g = activation(z_c)
        c_t = f * c_{t-1} + i * g;   h_t = o * activation(c_t)

    kernel (features, 4 units), recurrent_kernel (units, 4 units), bias (4 units,);
    ``unit_forget_bias`` initializes the forget gate's bias to 1 (the rest with
    ``bias_initializer``).  With ``return_state`` the outputs are [output, h, c].

    >>> LSTM(128, input_shape=(28, 28))          # 28 steps of 28 features -> (batch, 128)
    """

    _cell = "lstm"
    _gates = 4
    _own_options = ("unit_forget_bias",)

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = _flag(unit_forget_bias, "unit_forget_bias", "LSTM")

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        init, u = initializers.get(self.bias_initializer), self.units

        def forget_bias_one(shape, dtype="float32"):
            return np.concatenate([init((u,), dtype), np.ones((u,), dtype),
                                   init((2 * u,), dtype)]).astype(dtype)
        return forget_bias_one



class GRU(RNNBase):
    """Gated Recurrent Unit (Cho et al. 2014), Keras' gate order z, r, h:

        x_z, x_r, x_h = x_t @ kernel + b_in;   r_z, r_r, r_h = h_{t-1} @ recurrent_kernel (+ b_rec)
        z = recurrent_activation(x_z + r_z);   r = recurrent_activation(x_r + r_r)
        reset_after=True (default, cuDNN-compatible):  hh = activation(x_h + r * r_h)
        reset_after=False:  hh = activation(x_h + (r * h_{t-1}) @ recurrent_kernel[:, 2u:])
        h_t = z * h_{t-1} + (1 - z) * hh

    kernel (features, 3 units), recurrent_kernel (units, 3 units); bias (2, 3 units) =
    [b_in, b_rec] with reset_after=True, else (3 units,) (b_in only).

    >>> GRU(64, return_sequences=True, input_shape=(20, 16))
    """

    _cell = "gru"
    _gates = 3
    _own_options = ("reset_after",)

    def __init__(self, units, reset_after=True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = _flag(reset_after, "reset_after", "GRU")

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _forward_kwargs(self):
        return {"reset_after": self.reset_after}
