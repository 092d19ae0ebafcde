"""fastnet model -> ONNX graph (see ``fastnet.onnx``)."""
import math
import numbers
import os
import sys

import numpy as np

from fastnet.onnx._common import (MIN_OPSET, channels_first, channels_last, onnx_dtype,
                                  require_onnx)


class _Graph:
    """Nodes, initializers and the ONNX name (and layout) of every model tensor."""

    def __init__(self, model, opset):
        onnx = require_onnx()
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.model, self.opset = model, opset
        self.dtype = np.dtype(model.dtype)
        self.shapes = dict(enumerate(model._slot_shapes))   # (+ wrappers' inner tensors)
        self.nodes, self.inits, self.used = [], [], set()
        self.value = {}       # model slot -> {layout: onnx name}; layout 'nchw' or 'nhwc'
        self.transposed = {}

    # -- names, constants, nodes ---------------------------------------------------------------
    def fresh(self, base):
        base = "".join(c if c.isalnum() or c in "_./" else "_" for c in base) or "t"
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, base, array, dtype=None):
        array = np.array(array, dtype=dtype or self.dtype, order="C")   # 0-d stays 0-d
        name = self.fresh(base)
        self.inits.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, base, n_out=1, **attrs):
        outs = [self.fresh(f"{base}" if n_out == 1 else f"{base}_{i}") for i in range(n_out)]
        self.nodes.append(self.helper.make_node(op, list(inputs), outs, name=self.fresh(base),
                                                **attrs))
        return outs[0] if n_out == 1 else outs

    # -- tensors and layouts -------------------------------------------------------------------
    def rank(self, slot):
        return len(self.shapes[slot]) + 1

    def put(self, slot, name, layout="nhwc"):
        self.value[slot] = {layout: name}

    def layout_of(self, slot):
        return "nchw" if "nchw" in self.value[slot] and "nhwc" not in self.value[slot] \
            else "nhwc"

    def get(self, slot, layout):
        """The tensor of ``slot`` in ``layout``: 'nhwc' (fastnet's, channels last) or 'nchw'
        (channels first, for ranks 3 and 4), transposing once."""
        have = self.value[slot]
        rank = self.rank(slot)
        if rank not in (3, 4):
            layout = "nhwc"
        if layout not in have:
            src = next(iter(have.values()))
            perm = channels_first(rank) if layout == "nchw" else channels_last(rank)
            have[layout] = self.node("Transpose", [src], f"{src}_{layout}", perm=list(perm))
        return have[layout]

    def preferred(self, slots):
        """'nchw' when one of the tensors is already channels-first."""
        return "nchw" if any(self.layout_of(s) == "nchw" for s in slots) else "nhwc"

    # -- pieces --------------------------------------------------------------------------------
    def activation(self, name, alpha, x, base, layout, rank):
        """``name`` applied to the ONNX tensor x (in ``layout``); returns the result's name."""
        if name is None or name == "linear":
            return x
        simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
        if name in simple:
            return self.node(simple[name], [x], base)
        if name == "softmax":     # over the channels
            axis = 1 if layout == "nchw" else -1
            return self.node("Softmax", [x], base, axis=axis)
        if name in ("swish", "silu"):
            return self.node("Mul", [x, self.node("Sigmoid", [x], base + "_sigmoid")], base)
        if name == "elu":
            return self.node("Elu", [x], base, alpha=float(1.0 if alpha is None else alpha))
        if name == "leaky_relu":
            return self.node("LeakyRelu", [x], base, alpha=float(0.2 if alpha is None else alpha))
        if name in ("gelu", "gelu_tanh"):
            approximate = "tanh" if name == "gelu_tanh" else "none"
            if self.opset >= 20:
                return self.node("Gelu", [x], base, approximate=approximate)
            half = self.const(base + "_half", 0.5)
            one = self.const(base + "_one", 1.0)
            if name == "gelu":      # x/2 (1 + erf(x / sqrt 2))
                inner = self.node("Erf", [self.node("Mul", [x, self.const(
                    base + "_rsqrt2", 1.0 / math.sqrt(2.0))], base + "_scaled")], base + "_erf")
            else:                   # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                cube = self.node("Mul", [self.node("Mul", [x, x], base + "_sq"), x],
                                 base + "_cube")
                u = self.node("Add", [x, self.node("Mul", [cube, self.const(
                    base + "_a", 0.044715)], base + "_acube")], base + "_u")
                inner = self.node("Tanh", [self.node("Mul", [u, self.const(
                    base + "_c", math.sqrt(2.0 / math.pi))], base + "_cu")], base + "_tanh")
            return self.node("Mul", [self.node("Mul", [x, half], base + "_halfx"),
                                     self.node("Add", [inner, one], base + "_1p")], base)
        raise NotImplementedError(f"fastnet.onnx.export: activation {name!r} has no ONNX "
                                  f"equivalent here")

    def pads(self, in_sizes, k_sizes, strides, padding, dilations=None):
        """ONNX pads [begin..., end...] of fastnet's (TensorFlow's) 'valid' / 'same' padding
        over the spatial axes (the effective, dilated window for 'same')."""
        from fastnet.ops._checks import conv_output_size
        dilations = dilations or [1] * len(in_sizes)
        begin, end = [], []
        for size, k, s, d in zip(in_sizes, k_sizes, strides, dilations):
            _, b, e = conv_output_size(size, (k - 1) * d + 1, s, padding, what="pool")
            begin.append(int(b))
            end.append(int(e))
        return begin + end


# ------------------------------------------------------------------------------ layer exporters
def _conv_node(g, x, in_sizes, kernel, bias, strides, padding, dilations, group, base):
    """An ONNX Conv of x (channels first) with ``kernel`` in ONNX's (out, in / group, *k)
    layout; ``padding`` 'valid', 'same' or explicit [begin..., end...]."""
    inputs = [x, g.const(f"{base}.kernel", kernel)]
    if bias is not None:
        inputs.append(g.const(f"{base}.bias", bias))
    k = list(kernel.shape[2:])
    pads = padding if isinstance(padding, list) else \
        g.pads(in_sizes, k, strides, padding, dilations)
    return g.node("Conv", inputs, base, kernel_shape=k, strides=list(strides), pads=pads,
                  dilations=list(dilations), group=int(group))


def _finish(g, layer, y, outs, rank):
    """The layer's activation on its channels-first output y."""
    g.put(outs[0], g.activation(layer.activation, getattr(layer, "activation_alpha", None), y,
                                layer.name + "_act", "nchw", rank), "nchw")


def _conv(g, layer, ins, outs):
    h, w, _ = g.shapes[ins[0]]
    y = _conv_node(g, g.get(ins[0], "nchw"), (h, w), layer.params["kernel"].transpose(3, 2, 0, 1),
                   layer.params.get("bias"), layer.strides, layer.padding,
                   getattr(layer, "dilation_rate", (1, 1)), getattr(layer, "groups", 1),
                   layer.name)
    _finish(g, layer, y, outs, 4)


def _depthwise_kernel(k):
    """(kh, kw, cin, mult) -> ONNX's grouped (cin * mult, 1, kh, kw); output channel c * mult
    + m, as Keras orders them."""
    kh, kw, cin, mult = k.shape
    return k.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]


def _depthwise(g, layer, ins, outs):
    h, w, cin = g.shapes[ins[0]]
    y = _conv_node(g, g.get(ins[0], "nchw"), (h, w), _depthwise_kernel(layer.params["kernel"]),
                   layer.params.get("bias"), layer.strides, layer.padding,
                   layer.dilation_rate, cin, layer.name)
    _finish(g, layer, y, outs, 4)


def _separable(g, layer, ins, outs):
    h, w, cin = g.shapes[ins[0]]
    d = _conv_node(g, g.get(ins[0], "nchw"), (h, w),
                   _depthwise_kernel(layer.params["depthwise_kernel"]), None, layer.strides,
                   layer.padding, layer.dilation_rate, cin, layer.name + "_depthwise")
    pointwise = layer.params["pointwise_kernel"].transpose(3, 2, 0, 1)
    y = _conv_node(g, d, None, pointwise, layer.params.get("bias"), (1, 1), [0, 0, 0, 0],
                   (1, 1), 1, layer.name)
    _finish(g, layer, y, outs, 4)


def _conv1d(g, layer, ins, outs):
    steps, _ = g.shapes[ins[0]]
    k, d = layer.kernel_size, layer.dilation_rate
    padding = [(k - 1) * d, 0] if layer.padding == "causal" else layer.padding
    y = _conv_node(g, g.get(ins[0], "nchw"), (steps,),
                   layer.params["kernel"].transpose(2, 1, 0), layer.params.get("bias"),
                   (layer.strides,), padding, (d,), layer.groups, layer.name)
    _finish(g, layer, y, outs, 3)


def _upsampling(g, layer, ins, outs):
    scales = g.const(f"{layer.name}.scales", [1.0, 1.0] + [float(s) for s in layer.size],
                     dtype=np.float32)
    if layer.interpolation == "nearest":    # each pixel repeated in a size[0] x size[1] block
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    else:                                   # TensorFlow's bilinear resize (half-pixel centres)
        attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
    y = g.node("Resize", [g.get(ins[0], "nchw"), "", scales], layer.name, **attrs)
    g.put(outs[0], y, "nchw")


def _embedding(g, layer, ins, outs):
    onnx = require_onnx()
    idx = g.node("Cast", [g.get(ins[0], "nhwc")], layer.name + "_indices",
                 to=onnx.TensorProto.INT64)
    g.put(outs[0], g.node("Gather", [g.const(f"{layer.name}.embeddings",
                                             layer.params["embeddings"]), idx], layer.name,
                          axis=0))


# ONNX's gate order from Keras's, and the activations ONNX's recurrent ops take
_GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [0, 1, 2], "rnn": [0]}    # iofc <- ifco
_RNN_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}
_RNN_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_INT64_MIN = -(1 << 63)


def _cell_kind(layer):
    return layer._cell if layer._cell in ("lstm", "gru") else "rnn"


def _rnn_activations(layer):
    """The ONNX activations of one direction: [f, g(, h)] in ONNX's order."""
    cell = _cell_kind(layer)
    acts = [layer.activation] if cell == "rnn" else \
        [layer.recurrent_activation, layer.activation, layer.activation][:{"lstm": 3, "gru": 2}[
            cell]]
    if any(a not in _RNN_ACTIVATIONS for a in acts):
        raise NotImplementedError(f"fastnet.onnx.export: {layer.name}: activations {acts} have "
                                  f"no ONNX recurrent equivalent")
    return [_RNN_ACTIVATIONS[a] for a in acts]


def _rnn_weights(layer):
    """(W, R, B) of one direction in ONNX's layout and gate order: (G*u, in), (G*u, u),
    (2*G*u,) (input bias, then recurrent bias)."""
    cell = _cell_kind(layer)
    u, order = layer.units, _GATE_ORDER[cell]
    p = layer.params

    def gates(m):           # (..., G*u) blocks reordered, as (G*u, ...) rows
        return np.concatenate([m[..., i * u:(i + 1) * u] for i in order], axis=-1)
    gu = len(order) * u
    bias = p.get("bias")
    if bias is None:
        b = np.zeros(2 * gu, p["kernel"].dtype)
    elif bias.ndim == 2:    # GRU reset_after: [input bias, recurrent bias]
        b = np.concatenate([gates(bias[0]), gates(bias[1])])
    else:
        b = np.concatenate([gates(bias), np.zeros(gu, bias.dtype)])
    return gates(p["kernel"]).T, gates(p["recurrent_kernel"]).T, b


def _rnn_node(g, rnn_layers, direction, x, base, sequence, states):
    """One ONNX RNN / GRU / LSTM node over the time-major x running ``rnn_layers`` (one for
    'forward' / 'reverse', [forward, backward] for 'bidirectional'); returns, per direction,
    (its sequence (T, N, u) in input order, or None unless ``sequence``; the first ``states``
    of [h, (c)] (N, u)).  Only what is used is picked out: the importer reads the use."""
    first = rnn_layers[0]
    cell = _cell_kind(first)
    ws = [_rnn_weights(layer) for layer in rnn_layers]
    attrs = dict(hidden_size=first.units, direction=direction,
                 activations=[a for layer in rnn_layers for a in _rnn_activations(layer)])
    if cell == "gru":
        attrs["linear_before_reset"] = int(bool(first.reset_after))
    n_out = 3 if cell == "lstm" else 2
    res = g.node(_RNN_OPS[cell], [x, g.const(f"{base}.kernel", [w for w, _, _ in ws]),
                                  g.const(f"{base}.recurrent_kernel", [r for _, r, _ in ws]),
                                  g.const(f"{base}.bias", [b for _, _, b in ws])],
                 base + "_cell", n_out=n_out, **attrs)
    if len(rnn_layers) == 1:        # the direction axis squeezed
        axes0 = g.const(f"{base}.axis0", [0], dtype=np.int64)
        axes1 = g.const(f"{base}.axis1", [1], dtype=np.int64)
        return [(g.node("Squeeze", [res[0], axes1], base + "_sequence") if sequence else None,
                 [g.node("Squeeze", [res[k], axes0], f"{base}_state{k}")
                  for k in range(1, 1 + min(states, n_out - 1))])]
    out = []
    for d, tag in enumerate(("forward", "backward")):   # direction d picked out
        index = g.const(f"{base}.{tag}_index", d, dtype=np.int64)
        out.append((g.node("Gather", [res[0], index], f"{base}_{tag}_sequence", axis=1)
                    if sequence else None,
                    [g.node("Gather", [res[k], index], f"{base}_{tag}_state{k}", axis=0)
                     for k in range(1, 1 + min(states, n_out - 1))]))
    return out


def _reverse_time(g, x, base):
    """x (T, N, u) with its steps in reverse order."""
    return g.node("Slice", [x, g.const(base + ".start", [-1], dtype=np.int64),
                            g.const(base + ".end", [_INT64_MIN], dtype=np.int64),
                            g.const(base + ".axes", [0], dtype=np.int64),
                            g.const(base + ".steps", [-1], dtype=np.int64)], base)


def _batch_major(g, seq, reverse, base):
    if reverse:
        seq = _reverse_time(g, seq, base + "_reversed")
    return g.node("Transpose", [seq], base, perm=[1, 0, 2])


def _time_major(g, slot, base):
    return g.node("Transpose", [g.get(slot, "nhwc")], base + "_time_major", perm=[1, 0, 2])


def _states_used(layer):
    """How many of [h, (c)] a recurrent layer (or Bidirectional) outputs: all with
    return_state, else h alone when it is the output, else none."""
    return 2 if layer.return_state else int(not layer.return_sequences)


def _recurrent(g, layer, ins, outs):
    """SimpleRNN / LSTM / GRU as ONNX's RNN / LSTM / GRU (time-major inside); go_backwards
    is ONNX's 'reverse' direction, whose sequence (in input order) Keras returns reversed."""
    base = layer.name
    (seq, states), = _rnn_node(g, [layer], "reverse" if layer.go_backwards else "forward",
                               _time_major(g, ins[0], base), base, layer.return_sequences,
                               _states_used(layer))
    y = _batch_major(g, seq, layer.go_backwards, base) if layer.return_sequences else states[0]
    g.put(outs[0], y)
    for slot, state in zip(outs[1:], states):
        g.put(slot, state)


def _same_cell(f, b):
    """Whether one ONNX 'bidirectional' node can run both layers (the activations and the
    use of a bias may differ per direction)."""
    return type(f) is type(b) and f.units == b.units and \
        getattr(f, "reset_after", None) == getattr(b, "reset_after", None)


def _bidirectional(g, layer, ins, outs):
    """Bidirectional: one ONNX node with direction 'bidirectional', the backward sequence in
    input order as Keras aligns it, then the merge.  A backward_layer of another type, units
    or reset_after, or a wrapped go_backwards layer, takes one node per direction (which
    ``import_model`` does not read back)."""
    layer._sync()
    f, b = layer.forward_layer, layer.backward_layer
    base = layer.name
    x = _time_major(g, ins[0], base)
    if _same_cell(f, b) and not f.go_backwards:
        dirs = _rnn_node(g, [f, b], "bidirectional", x, base, layer.return_sequences,
                         _states_used(layer))
    else:
        dirs = [_rnn_node(g, [r], "reverse" if r.go_backwards else "forward", x, r.name,
                          layer.return_sequences, _states_used(layer))[0] for r in (f, b)]
    ys = []
    for (seq, states), r, reverse in ((dirs[0], f, f.go_backwards),
                                      (dirs[1], b, not b.go_backwards)):
        ys.append(_batch_major(g, seq, reverse, r.name + "_output")
                  if layer.return_sequences else states[0])
    mode = layer.merge_mode
    if mode is None:
        merged = ys
    elif mode == "concat":
        merged = [g.node("Concat", ys, base, axis=-1)]
    elif mode == "ave":
        merged = [g.node("Mul", [g.node("Add", ys, base + "_sum"),
                                 g.const(base + ".half", 0.5)], base)]
    else:
        merged = [g.node({"sum": "Add", "mul": "Mul"}[mode], ys, base)]
    state_names = [s for _, states in dirs for s in states] if layer.return_state else []
    for slot, name in zip(outs, merged + state_names):
        g.put(slot, name)


def _time_distributed(g, layer, ins, outs):
    """TimeDistributed: the inner layer's graph on (batch * steps, ...), reshaped back."""
    layer._sync()
    inner = layer.layer
    fn = g.table.get(type(inner))
    if fn is None:
        raise NotImplementedError(f"fastnet.onnx.export: layer {layer.name} "
                                  f"(TimeDistributed of {inner.name}: {type(inner).__name__}) "
                                  f"has no ONNX export")
    shape_in, shape_out = g.shapes[ins[0]], g.shapes[outs[0]]
    base = layer.name
    v_in, v_out = ("steps_in", base), ("steps_out", base)    # (batch * steps, ...) tensors
    g.shapes[v_in], g.shapes[v_out] = tuple(shape_in[1:]), tuple(shape_out[1:])
    g.put(v_in, g.node("Reshape", [g.get(ins[0], "nhwc"), g.const(
        f"{base}.merged_shape", [-1] + list(shape_in[1:]), dtype=np.int64)], base + "_merged"))
    fn(g, inner, [v_in], [v_out])
    g.put(outs[0], g.node("Reshape", [g.get(v_out, "nhwc"), g.const(
        f"{base}.shape", [-1] + list(shape_out), dtype=np.int64)], base))


def _conv_transpose(g, layer, ins, outs):
    """Conv2DTranspose as ONNX's ConvTranspose: Keras crops the full transposed convolution
    ((H - 1) * s + k_eff) at TensorFlow's 'same' padding-before; ONNX's pads crop the same,
    and output_padding extends the end where Keras's output is longer than the full one."""
    (h, w, _), (oh, ow, _) = g.shapes[ins[0]], g.shapes[outs[0]]
    begin, end, extra = [], [], []
    for size, o, k, s, d in zip((h, w), (oh, ow), layer.kernel_size, layer.strides,
                                layer.dilation_rate):
        full = (size - 1) * s + (k - 1) * d + 1
        b = max(full - o, 0) // 2
        e = full - o - b
        begin.append(b)
        end.append(max(e, 0))
        extra.append(max(-e, 0))
    base = layer.name
    inputs = [g.get(ins[0], "nchw"), g.const(f"{base}.kernel",
                                             layer.params["kernel"].transpose(3, 2, 0, 1))]
    if layer.params.get("bias") is not None:
        inputs.append(g.const(f"{base}.bias", layer.params["bias"]))
    y = g.node("ConvTranspose", inputs, base, kernel_shape=list(layer.kernel_size),
               strides=list(layer.strides), dilations=list(layer.dilation_rate),
               pads=begin + end, output_padding=extra)
    _finish(g, layer, y, outs, 4)


def _affine_scaling(g, layer, ins, outs):
    """Normalization / MinMaxScaling: y = x * scale + shift, the constants broadcast over the
    kept axes exactly as the layer computes them."""
    scale, shift = layer._scale_shift()
    shape = layer._broadcast
    base = layer.name
    y = g.node("Mul", [g.get(ins[0], "nhwc"), g.const(f"{base}.scale", scale.reshape(shape))],
               base + "_scaled")
    g.put(outs[0], g.node("Add", [y, g.const(f"{base}.shift", shift.reshape(shape))], base))


def _random_crop(g, layer, ins, outs):
    """RandomCrop at inference: the centre window of the image padded with fill_value."""
    h, w, _ = g.shapes[ins[0]]
    ph, pw = layer._pad
    layout = g.layout_of(ins[0])
    hw_axes = [2, 3] if layout == "nchw" else [1, 2]
    base = layer.name
    x = g.get(ins[0], layout)
    if ph or pw:
        pads = [0] * 8
        pads[hw_axes[0]] = pads[hw_axes[0] + 4] = ph
        pads[hw_axes[1]] = pads[hw_axes[1] + 4] = pw
        x = g.node("Pad", [x, g.const(f"{base}.pads", pads, dtype=np.int64),
                           g.const(f"{base}.fill_value", layer.fill_value)], base + "_padded",
                   mode="constant")
    top, left = (h + 2 * ph - layer.height) // 2, (w + 2 * pw - layer.width) // 2
    y = g.node("Slice", [x, g.const(f"{base}.starts", [top, left], dtype=np.int64),
                         g.const(f"{base}.ends", [top + layer.height, left + layer.width],
                                 dtype=np.int64),
                         g.const(f"{base}.axes", hw_axes, dtype=np.int64)], base)
    g.put(outs[0], y, layout)


def _dense(g, layer, ins, outs):
    base = layer.name
    kernel = g.const(f"{base}.kernel", layer.params["kernel"])
    bias = layer.params.get("bias")
    if g.rank(ins[0]) == 2:
        x = g.get(ins[0], "nhwc")
        inputs = [x, kernel] + ([g.const(f"{base}.bias", bias)] if bias is not None else [])
        y = g.node("Gemm", inputs, base, alpha=1.0, beta=1.0, transA=0, transB=0)
    else:   # the last axis of an NHWC (or any rank) tensor
        y = g.node("MatMul", [g.get(ins[0], "nhwc"), kernel], base + "_matmul")
        if bias is not None:
            y = g.node("Add", [y, g.const(f"{base}.bias", bias)], base)
    g.put(outs[0], g.activation(layer.activation, getattr(layer, "activation_alpha", None), y,
                                base + "_act", "nhwc", g.rank(outs[0])))


def _pool(g, layer, ins, outs):
    from fastnet.layers.pooling import AveragePooling2D
    x = g.get(ins[0], "nchw")
    h, w, _ = g.shapes[ins[0]]
    pads = g.pads((h, w), layer.pool_size, layer.strides, layer.padding)
    if isinstance(layer, AveragePooling2D):   # the mean over the real elements, as TensorFlow
        y = g.node("AveragePool", [x], layer.name, kernel_shape=list(layer.pool_size),
                   strides=list(layer.strides), pads=pads, count_include_pad=0)
    else:
        y = g.node("MaxPool", [x], layer.name, kernel_shape=list(layer.pool_size),
                   strides=list(layer.strides), pads=pads)
    g.put(outs[0], y, "nchw")


def _global_pool(g, layer, ins, outs):
    """Global{Average,Max}Pooling{1,2}D: ONNX's global pools over every axis after the
    channels (steps, or height and width)."""
    op = "GlobalAveragePool" if "Average" in type(layer).__name__ else "GlobalMaxPool"
    y = g.node(op, [g.get(ins[0], "nchw")], layer.name + ("" if layer.keepdims else "_4d"))
    if layer.keepdims:
        g.put(outs[0], y, "nchw")                   # (N, C, 1, 1)
    else:
        g.put(outs[0], g.node("Flatten", [y], layer.name, axis=1))


def _batch_norm(g, layer, ins, outs):
    p = layer.params
    c = p["moving_mean"].shape[0]
    gamma = p.get("gamma", np.ones(c, g.dtype))
    beta = p.get("beta", np.zeros(c, g.dtype))
    base = layer.name
    rank = g.rank(ins[0])
    if rank in (2, 3, 4):   # channels on ONNX's axis 1
        x = g.get(ins[0], "nchw")
        y = g.node("BatchNormalization",
                   [x, g.const(f"{base}.gamma", gamma), g.const(f"{base}.beta", beta),
                    g.const(f"{base}.moving_mean", p["moving_mean"]),
                    g.const(f"{base}.moving_variance", p["moving_variance"])], base,
                   epsilon=float(layer.epsilon), momentum=float(layer.momentum))
        g.put(outs[0], y, "nchw" if rank > 2 else "nhwc")
        return
    # other ranks: channels last, broadcast over the leading axes
    scale = (np.asarray(gamma, np.float64) / np.sqrt(p["moving_variance"].astype(np.float64)
                                                     + layer.epsilon))
    x = g.get(ins[0], "nhwc")
    centered = g.node("Sub", [x, g.const(f"{base}.moving_mean", p["moving_mean"])],
                      base + "_centered")
    scaled = g.node("Mul", [centered, g.const(f"{base}.scale", scale)], base + "_scaled")
    g.put(outs[0], g.node("Add", [scaled, g.const(f"{base}.beta", beta)], base))


def _activation_layer(g, layer, ins, outs):
    layout = g.layout_of(ins[0])
    x = g.get(ins[0], layout)
    y = g.activation(layer.activation, getattr(layer, "activation_alpha", None), x, layer.name,
                     layout, g.rank(ins[0]))
    g.put(outs[0], y, layout)


def _identity(g, layer, ins, outs):
    g.value[outs[0]] = dict(g.value[ins[0]])


def _flatten(g, layer, ins, outs):
    g.put(outs[0], g.node("Flatten", [g.get(ins[0], "nhwc")], layer.name, axis=1))


def _reshape(g, layer, ins, outs):
    shape = g.const(f"{layer.name}.shape", [0] + [int(s) for s in layer.target_shape],
                    dtype=np.int64)
    g.put(outs[0], g.node("Reshape", [g.get(ins[0], "nhwc"), shape], layer.name))


def _zero_pad(g, layer, ins, outs):
    (t, b), (l, r) = layer.padding
    pads = g.const(f"{layer.name}.pads", [0, 0, t, l, 0, 0, b, r], dtype=np.int64)
    g.put(outs[0], g.node("Pad", [g.get(ins[0], "nchw"), pads], layer.name, mode="constant"),
          "nchw")


def _rescaling(g, layer, ins, outs):
    layout = g.layout_of(ins[0])
    y = g.node("Mul", [g.get(ins[0], layout), g.const(f"{layer.name}.scale", layer.scale)],
               layer.name + ("_scaled" if layer.offset else ""))
    if layer.offset:
        y = g.node("Add", [y, g.const(f"{layer.name}.offset", layer.offset)], layer.name)
    g.put(outs[0], y, layout)


def _merge(g, layer, ins, outs):
    from fastnet.layers import merge
    layout = g.preferred(ins)
    xs = [g.get(s, layout) for s in ins]
    base = layer.name
    t = type(layer)
    if len(xs) == 1:
        y = g.node("Identity", xs, base)
    elif t in (merge.Maximum, merge.Minimum, merge.Average):
        y = g.node({merge.Maximum: "Max", merge.Minimum: "Min", merge.Average: "Mean"}[t], xs,
                   base)
    else:   # left to right, as the layers compute
        op = {merge.Add: "Add", merge.Subtract: "Sub", merge.Multiply: "Mul"}[t]
        y = xs[0]
        for i, x in enumerate(xs[1:]):
            y = g.node(op, [y, x], base if i == len(xs) - 2 else f"{base}_{i}")
    g.put(outs[0], y, layout)


def _concatenate(g, layer, ins, outs):
    layout = g.preferred(ins) if g.rank(outs[0]) in (3, 4) else "nhwc"
    rank = g.rank(outs[0])
    ax = layer._sample_axis(rank - 1)      # per-sample axis, channels last
    axis = (1 if ax == rank - 2 else ax + 2) if layout == "nchw" else ax + 1
    g.put(outs[0], g.node("Concat", [g.get(s, layout) for s in ins], layer.name, axis=axis),
          layout)


def _dot(g, layer, ins, outs):
    """Dot as one Einsum (batch letter shared, the dot axes contracted), after the L2
    normalization x / max(||x||, 1e-7) along each dot axis when ``normalize``."""
    base = layer.name
    ranks = [g.rank(s) for s in ins]
    axes = [a + 1 for a in layer._axes]        # with the batch axis
    xs = []
    for i, (slot, ax) in enumerate(zip(ins, axes)):
        x = g.get(slot, "nhwc")
        if layer.normalize:
            sq = g.node("ReduceSum", [g.node("Mul", [x, x], f"{base}_sq{i}"),
                                      g.const(f"{base}.axis{i}", [ax], dtype=np.int64)],
                        f"{base}_sumsq{i}", keepdims=1)
            norm = g.node("Max", [g.node("Sqrt", [sq], f"{base}_norm{i}"),
                                  g.const(f"{base}.epsilon", layer._EPSILON)],
                          f"{base}_floored{i}")
            x = g.node("Div", [x, norm], f"{base}_unit{i}")
        xs.append(x)
    letters = iter("cdefghijlmnopqrstuvwxyz")    # b: batch, k: the contracted axis
    terms = ["b" + "".join("k" if a == ax else next(letters) for a in range(1, rank))
             for rank, ax in zip(ranks, axes)]
    out = "b" + "".join(t[1:].replace("k", "") for t in terms)
    y = g.node("Einsum", xs, base + ("_dot" if out == "b" else ""),
               equation=f"{terms[0]},{terms[1]}->{out}")
    if out == "b":      # nothing left but the batch: (batch, 1), as Keras
        y = g.node("Unsqueeze", [y, g.const(f"{base}.axis", [1], dtype=np.int64)], base)
    g.put(outs[0], y)


def _exporters():
    from fastnet.layers import merge
    from fastnet.layers.activation_layers import ELU, GELU, LeakyReLU, ReLU, Softmax
    from fastnet.layers.conv import Conv2D
    from fastnet.layers.core import Activation, Dense, Flatten
    from fastnet.layers.normalization import BatchNormalization
    from fastnet.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D,
                                        GlobalMaxPooling2D, MaxPooling2D)
    from fastnet.layers.regularization import Dropout
    from fastnet.layers.reshaping import Reshape, ZeroPadding2D
    table = {Conv2D: _conv, Dense: _dense, MaxPooling2D: _pool, AveragePooling2D: _pool,
             GlobalAveragePooling2D: _global_pool, GlobalMaxPooling2D: _global_pool,
             BatchNormalization: _batch_norm, Flatten: _flatten, Reshape: _reshape,
             ZeroPadding2D: _zero_pad, Dropout: _identity, merge.Concatenate: _concatenate}
    for cls in (Activation, ReLU, LeakyReLU, ELU, GELU, Softmax):
        table[cls] = _activation_layer
    from fastnet.preprocessing import augmentation
    from fastnet.preprocessing.scaling import MinMaxScaling, Normalization, Rescaling
    table.update({Rescaling: _rescaling, Normalization: _affine_scaling,
                  MinMaxScaling: _affine_scaling, augmentation.RandomCrop: _random_crop})
    from fastnet.layers import (GRU, LSTM, Bidirectional, Conv1D, Conv2DTranspose,
                                DepthwiseConv2D, Embedding, SeparableConv2D, SimpleRNN,
                                TimeDistributed, UpSampling2D)
    table.update({DepthwiseConv2D: _depthwise, SeparableConv2D: _separable, Conv1D: _conv1d,
                  UpSampling2D: _upsampling, Embedding: _embedding, LSTM: _recurrent,
                  GRU: _recurrent, SimpleRNN: _recurrent, Conv2DTranspose: _conv_transpose,
                  Bidirectional: _bidirectional, TimeDistributed: _time_distributed})
    for name in dir(augmentation):      # identities at inference (RandomCrop: centre crop)
        cls = getattr(augmentation, name)
        if isinstance(cls, type) and issubclass(cls, augmentation.BaseRandomLayer) and \
                cls is not augmentation.RandomCrop:
            table[cls] = _identity
    for cls in (merge.Add, merge.Subtract, merge.Multiply, merge.Average, merge.Maximum,
                merge.Minimum):
        table[cls] = _merge
    if hasattr(merge, "Dot"):
        table[merge.Dot] = _dot
    import fastnet.layers as layers_mod
    for name in ("GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        if hasattr(layers_mod, name):
            table[getattr(layers_mod, name)] = _global_pool
    return table


def _emit_nodes(g, model, slot_of):
    """The ONNX nodes of every layer call of ``model``, its slots named by ``slot_of``."""
    from fastnet.models.functional import Functional
    for layer, _, ins, outs, _, multi_out, _ in model._node_info:
        ins, outs = [slot_of(s) for s in ins], [slot_of(s) for s in outs]
        if isinstance(layer, Functional):
            _nested(g, layer, ins, outs)
            continue
        fn = g.table.get(type(layer))
        if fn is None or (multi_out and fn not in (_recurrent, _bidirectional)):
            raise NotImplementedError(f"fastnet.onnx.export: layer {layer.name} "
                                      f"({type(layer).__name__}) has no ONNX export")
        fn(g, layer, ins, outs)


def _nested(g, model, ins, outs):
    """A model used as a layer: its graph inlined on tensors of its own (one set per call)."""
    call = g.fresh(model.name)

    def slot_of(slot):
        return ("nested", call, slot)
    for slot, shape in enumerate(model._slot_shapes):
        g.shapes[slot_of(slot)] = shape
    for outer, inner in zip(ins, model._input_idx):
        g.value[slot_of(inner)] = dict(g.value[outer])
    _emit_nodes(g, model, slot_of)
    for outer, inner in zip(outs, model._output_idx):
        g.value[outer] = dict(g.value[slot_of(inner)])


def to_onnx(model, opset=17):
    """The ONNX ``ModelProto`` of a built fastnet model (see ``export``)."""
    onnx = require_onnx()
    from fastnet import __version__
    from fastnet.models.functional import Functional
    if not isinstance(model, Functional):
        raise TypeError(f"export: expected a fastnet model, got {type(model).__name__}")
    model._require_built("export")
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or \
            not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an integer in [{MIN_OPSET}, "
                         f"{onnx.defs.onnx_opset_version()}], got {opset!r}")
    for shape in (model.input_shape if isinstance(model.input_shape, list)
                  else [model.input_shape]):
        if any(d is None for d in tuple(shape)[1:]):
            raise NotImplementedError(
                f"export: the model's input shape {tuple(shape)} has None sizes besides the "
                f"batch; export supports fixed sizes only: rebuild the model with "
                f"Input(shape=...) of the size to deploy and set_weights(model.get_weights())")
    g = _Graph(model, int(opset))
    elem = onnx_dtype(g.dtype)
    g.table = _exporters()
    inputs = []
    for slot, name in zip(model._input_idx, model.input_names):
        name = g.fresh(name)
        g.put(slot, name)
        inputs.append(g.helper.make_tensor_value_info(name, elem, ["batch"] + list(
            g.shapes[slot])))
    out_names = [g.fresh(name) for name in model.output_names]    # reserved for the outputs
    _emit_nodes(g, model, lambda slot: slot)
    outputs = []
    for slot, out_name in zip(model._output_idx, out_names):
        g.nodes.append(g.helper.make_node("Identity", [g.get(slot, "nhwc")], [out_name],
                                          name=g.fresh(out_name + "_identity")))
        outputs.append(g.helper.make_tensor_value_info(out_name, elem, ["batch"] + list(
            g.shapes[slot])))
    graph = g.helper.make_graph(g.nodes, model.name, inputs, outputs, g.inits)
    proto = g.helper.make_model(graph, producer_name="fastnet", producer_version=__version__,
                                opset_imports=[g.helper.make_opsetid("", int(opset))])
    onnx.checker.check_model(proto)
    return proto


def export(model, path, opset=17):
    """Write ``model`` (built; Sequential or functional) as an ONNX file at ``path``
    (atomically) and return the ``onnx.ModelProto``.

    Every layer ONNX can express is exported: Conv2D (dilated, grouped), Conv2DTranspose
    (ConvTranspose; 'valid' / 'same', output_padding, dilation), DepthwiseConv2D,
    SeparableConv2D, Conv1D (causal too), Dense, Max/AveragePooling2D, the global poolings
    (1-D and 2-D), UpSampling2D, BatchNormalization, ZeroPadding2D, Flatten, Reshape,
    Embedding, SimpleRNN / LSTM / GRU (go_backwards and return_state too), Bidirectional (one
    'bidirectional' ONNX node; every merge mode), TimeDistributed (of any exportable layer,
    over batch * steps), Rescaling, Normalization and MinMaxScaling (Mul + Add), Dropout,
    RandomCrop (its inference centre crop: Pad + Slice) and the other random augmentation
    layers (identities at inference), the activations and activation layers (GELU as
    ``Gelu`` from opset 20, as Erf/Tanh arithmetic before), and the merge layers (Add,
    Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot (an Einsum)); models used
    as layers are inlined (``import_model`` gives back one flat model).  Any other
    layer (a custom one) raises
    NotImplementedError naming it, before anything is written.  Inputs and outputs keep
    fastnet's names, NHWC layout and dtype, with a symbolic batch axis.  ``opset`` >= 13.
    """
    from fastnet.utils.files import atomic_write
    proto = to_onnx(model, opset)
    atomic_write(os.fspath(path), proto.SerializeToString())
    return proto


def cli_main(args):
    """``fastnet export MODEL OUT [--opset N]``: load a saved model (no compile state needed),
    write its ONNX graph, report what was written."""
    from fastnet.saving import load_model
    try:
        model = load_model(args.model, compile=False)
        proto = export(model, args.out, opset=args.opset)
    except (OSError, ValueError, TypeError, NotImplementedError, ImportError) as e:
        print(f"fastnet export: {e}", file=sys.stderr)
        return 1
    ops = sorted({n.op_type for n in proto.graph.node})
    inputs = ", ".join(f"{i.name} {shape}" for i, shape in zip(
        proto.graph.input, model.input_shape if isinstance(model.input_shape, list)
        else [model.input_shape]))
    print(f"wrote {args.out}: opset {args.opset}, {len(proto.graph.node)} nodes "
          f"({', '.join(ops)}), {model.count_params():,} parameters; NHWC input(s) {inputs}")
    return 0
