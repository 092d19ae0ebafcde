"""Layer wrappers: Bidirectional (an RNN run both ways) and TimeDistributed (a layer applied to
every step).

A wrapper owns its inner layers' weights: they are created through the wrapper's own
``add_weight`` under prefixed names (Bidirectional: ``forward_lstm/kernel``, ...;
TimeDistributed: the inner names), so a model puts them in its flat buffers like any other
weight; before each forward/backward the inner layers are pointed at the wrapper's current
arrays (the model may have moved them into its buffers).
"""
import numpy as np

from fastnet.layers.base import Layer


def _inner_from_config(entry):
    from fastnet import layers as layers_mod
    from fastnet.saving import _from_class_config
    return _from_class_config(layers_mod, Layer, entry)


def _class_config(layer):
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


class Wrapper(Layer):
    """Base of the wrappers: builds inner layers through its own ``add_weight`` and keeps them
    pointed at its weights, trainability and input-gradient flag."""

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer):
            raise TypeError(f"{type(self).__name__}: layer must be a fastnet Layer, got "
                            f"{type(layer).__name__}")
        if kwargs.get("input_shape") is None and kwargs.get("input_dim") is None \
                and layer.batch_input_shape is not None:
            kwargs["input_shape"] = layer.batch_input_shape
        kwargs.setdefault("dtype", layer.dtype.name)
        super().__init__(**kwargs)
        self._links = {}   # wrapper weight name -> (inner layer, inner name)

    @property
    def inner_layers(self):
        raise NotImplementedError

    def _build_inner(self, layer, prefix, input_shape):
        """Build ``layer`` for ``input_shape`` with its weights created as this wrapper's
        weights ``prefix + name`` (also under a shape-only dry build, see fastnet.saving)."""
        if layer.dtype != self.dtype:
            raise TypeError(f"{self.name}: the wrapped layer {layer.name} has dtype "
                            f"{layer.dtype} but the wrapper {self.dtype}")
        wrapper = self

        def add_weight(name, shape, initializer, trainable=True, regularizer=None):
            value = wrapper.add_weight(prefix + name, shape, initializer, trainable=trainable,
                                       regularizer=regularizer)
            layer.params[name] = value
            if trainable:
                layer.grads[name] = wrapper.grads.get(prefix + name)
            else:
                layer._non_trainable.add(name)
            wrapper._links[prefix + name] = (layer, name)
            return value

        layer.add_weight = add_weight
        try:
            layer.build(input_shape)
        finally:
            del layer.add_weight
        # what exists now is the layer's own; what forward adds is per-call state
        layer._state_keys = frozenset(layer.__dict__) - {"_buffers"}

    def _enter_call(self, slot):
        # a shared wrapper: its inner layers keep one set of per-call state per call too
        super()._enter_call(slot)
        for layer in self.inner_layers:
            layer._enter_call(slot)

    def _sync(self):
        """Point the inner layers at this wrapper's current weight and gradient arrays."""
        params, grads = self.params, self.grads
        for key, (layer, name) in self._links.items():
            layer.params[name] = params[key]
            g = grads.get(key)
            if g is None:
                layer.grads.pop(name, None)
            else:
                layer.grads[name] = g
        for layer in self.inner_layers:
            layer.trainable = self.trainable
            layer.need_input_grad = self.need_input_grad

    def release_buffers(self):
        super().release_buffers()
        for layer in self.inner_layers:
            layer.release_buffers()

    @classmethod
    def from_config(cls, config):
        """A new wrapper from ``get_config()``: the inner layers' configs become layers."""
        config = dict(config)
        for key in ("layer", "backward_layer"):
            if config.get(key) is not None:
                config[key] = _inner_from_config(config[key])
        return cls(**config)


class TimeDistributed(Wrapper):
    """Applies ``layer`` to every step: x (batch, steps, ...) -> (batch, steps, layer's output).

    The batch and step axes are merged into one, (batch * steps, ...), a view (no copy), for
    the inner layer; its weights are shared by all steps.

    >>> TimeDistributed(Dense(10), input_shape=(28, 64))     # (batch, 28, 64) -> (batch, 28, 10)
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        self.layer = layer

    @property
    def inner_layers(self):
        return (self.layer,)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: TimeDistributed needs inputs (batch, steps, ...) of "
                             f"rank >= 3, got per-sample shape {tuple(input_shape)}")
        inner = self.layer.compute_output_shape(tuple(input_shape[1:]))
        if isinstance(inner, list):
            raise ValueError(f"{self.name}: TimeDistributed cannot wrap a layer with several "
                             f"outputs ({self.layer.name})")
        return (input_shape[0],) + tuple(inner)

    def build_weights(self, input_shape):
        self._build_inner(self.layer, "", tuple(input_shape[1:]))

    def forward(self, x, training=False):
        self._sync()
        b, t = x.shape[0], x.shape[1]
        y = self.layer.forward(x.reshape((b * t,) + x.shape[2:]), training)
        return y.reshape((b, t) + y.shape[1:])

    def backward(self, dy):
        self._sync()
        b, t = dy.shape[0], dy.shape[1]
        dx = self.layer.backward(dy.reshape((b * t,) + dy.shape[2:]))
        if self.trainable:
            self.add_regularization_grads()
        if dx is None or not self.need_input_grad:
            return None
        return dx.reshape((b, t) + dx.shape[1:])

    def get_config(self):
        cfg = super().get_config()
        cfg["layer"] = _class_config(self.layer)
        return cfg


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(Wrapper):
    """Runs a recurrent layer forwards and a copy of it backwards over the same inputs and
    merges their outputs (``merge_mode`` 'concat' (default), 'sum', 'mul', 'ave', or None for
    the two outputs separately).  The backward copy's sequence output is reversed back to the
    input order before merging, as Keras does.  With ``return_state`` the outputs are the
    merged output(s), then the forward layer's states, then the backward layer's.

    Weights: the forward layer's, then the backward layer's (Keras order), named
    ``forward_<name>/...`` and ``backward_<name>/...``.

    >>> Bidirectional(LSTM(64, return_sequences=True), input_shape=(20, 16))   # -> (batch, 20, 128)
    """

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        from fastnet.layers.recurrent import RNNBase
        if not isinstance(layer, RNNBase):
            raise TypeError(f"Bidirectional: layer must be a recurrent layer (SimpleRNN, LSTM, "
                            f"GRU), got {type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"Bidirectional: merge_mode must be one of {_MERGE_MODES}, "
                             f"got {merge_mode!r}")
        super().__init__(layer, **kwargs)
        self.merge_mode = merge_mode
        # fresh copies from the configuration, so the wrapped instance carries no state in
        base = layer.name
        for p in ("forward_", "backward_"):
            base = base[len(p):] if base.startswith(p) else base
        cfg = layer.get_config()
        cfg.pop("input_shape", None)
        self.forward_layer = type(layer).from_config(dict(cfg, name="forward_" + base))
        if backward_layer is None:
            self.backward_layer = type(layer).from_config(
                dict(cfg, name="backward_" + base, go_backwards=not layer.go_backwards))
        else:
            if not isinstance(backward_layer, RNNBase):
                raise TypeError(f"Bidirectional: backward_layer must be a recurrent layer, got "
                                f"{type(backward_layer).__name__}")
            self.backward_layer = backward_layer
        f, b = self.forward_layer, self.backward_layer
        if f.go_backwards == b.go_backwards:
            raise ValueError("Bidirectional: the forward and backward layers must have "
                             "different go_backwards values")
        for attr in ("return_sequences", "return_state"):
            if getattr(f, attr) != getattr(b, attr):
                raise ValueError(f"Bidirectional: the forward and backward layers must have "
                                 f"the same {attr}")
        if f.dtype != self.dtype or b.dtype != self.dtype:
            raise TypeError("Bidirectional: the wrapped layers must have the wrapper's dtype")
        if f.units != b.units and merge_mode in ("sum", "mul", "ave"):
            raise ValueError(f"Bidirectional: merge_mode={merge_mode!r} needs both layers to "
                             f"have the same units")
        self.return_sequences = f.return_sequences
        self.return_state = f.return_state

    @property
    def inner_layers(self):
        return (self.forward_layer, self.backward_layer)

    def _split_states(self, out):
        if self.return_state:
            return out[0], list(out[1:])
        return out, []

    def compute_output_shape(self, input_shape):
        fo, fs = self._split_states(self.forward_layer.compute_output_shape(input_shape))
        bo, bs = self._split_states(self.backward_layer.compute_output_shape(input_shape))
        if self.merge_mode == "concat":
            outs = [tuple(fo[:-1]) + (fo[-1] + bo[-1],)]
        elif self.merge_mode is None:
            outs = [tuple(fo), tuple(bo)]
        else:
            outs = [tuple(fo)]
        if not self.return_state and len(outs) == 1:
            return outs[0]
        return outs + fs + bs

    def build_weights(self, input_shape):
        for layer in self.inner_layers:
            self._build_inner(layer, layer.name + "/", tuple(input_shape))

    def _aligned(self, y):
        """The backward layer's output in input order (a reversed view of its steps)."""
        return y[:, ::-1] if self.return_sequences else y

    def forward(self, x, training=False):
        self._sync()
        yf, sf = self._split_states(self.forward_layer.forward(x, training))
        yb, sb = self._split_states(self.backward_layer.forward(x, training))
        yb = self._aligned(yb)
        self._yf, self._yb = yf, yb
        mode = self.merge_mode
        if mode == "concat":
            uf = yf.shape[-1]
            out = self.buffer("y", yf.shape[:-1] + (uf + yb.shape[-1],))
            out[..., :uf] = yf
            out[..., uf:] = yb
            outs = [out]
        elif mode is None:
            yb_in_order = self.buffer("yb", yb.shape)
            np.copyto(yb_in_order, yb)
            outs = [yf, yb_in_order]
        else:
            out = self.buffer("y", yf.shape)
            if mode == "mul":
                np.multiply(yf, yb, out=out)
            else:
                np.add(yf, yb, out=out)
                if mode == "ave":
                    out *= 0.5
            outs = [out]
        if not self.return_state and len(outs) == 1:
            return outs[0]
        return outs + sf + sb

    def backward(self, dy):
        self._sync()
        n_out = 2 if self.merge_mode is None else 1
        ns = self.forward_layer.n_states if self.return_state else 0
        if n_out + 2 * ns > 1:
            if not isinstance(dy, (list, tuple)) or len(dy) != n_out + 2 * ns:
                raise ValueError(f"{self.name}: backward needs a list of {n_out + 2 * ns} "
                                 f"gradients (one per output)")
            douts, dsf, dsb = list(dy[:n_out]), list(dy[n_out:n_out + ns]), list(dy[n_out + ns:])
        else:
            douts, dsf, dsb = [dy], [], []
        mode = self.merge_mode
        if mode == "concat":
            uf = self._yf.shape[-1]
            dyf, dyb = douts[0][..., :uf], douts[0][..., uf:]
        elif mode is None:
            dyf, dyb = douts
        elif mode == "sum":
            dyf = dyb = douts[0]
        elif mode == "ave":
            dyf = dyb = np.multiply(douts[0], 0.5, out=self.buffer("dave", douts[0].shape))
        else:
            dyf = np.multiply(douts[0], self._yb, out=self.buffer("dmul_f", douts[0].shape))
            dyb = np.multiply(douts[0], self._yf, out=self.buffer("dmul_b", douts[0].shape))
        if dyb is not None:
            dyb = self._aligned(dyb)
        dxf = self.forward_layer.backward([dyf] + dsf if self.return_state else dyf)
        dxb = self.backward_layer.backward([dyb] + dsb if self.return_state else dyb)
        if self.trainable:
            self.add_regularization_grads()
        if not self.need_input_grad:
            return None
        return np.add(dxf, dxb, out=self.buffer("dx", dxf.shape))

    def get_config(self):
        cfg = super().get_config()
        cfg["merge_mode"] = self.merge_mode
        cfg["layer"] = _class_config(self.forward_layer)
        cfg["backward_layer"] = _class_config(self.backward_layer)
        return cfg
