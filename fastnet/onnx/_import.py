"""ONNX graph -> fastnet model (see ``fastnet.onnx``).

Every ONNX value is represented by a fastnet tensor and a layout:

``nhwc``      the ONNX value is the fastnet tensor itself (any rank);
``nchw``      the ONNX value is the channels-first transpose of a 3-D or 4-D fastnet
              (channels-last) tensor;
``chw_flat``  the ONNX value is the channels-first flattening (N, C*H*W) of a fastnet
              tensor whose channels-last flattening the fastnet graph holds; only a dense layer
              may read it (its kernel rows are permuted to fastnet's order).

Recurrent ops' outputs carry transient layouts that only the expected reader accepts
(``_LAYOUT_READERS``): ``time_major`` (T, N, C), ``rnn_seq`` / ``rnn_state`` (a one-direction
op's Y / Y_h, Y_c), ``*_rev`` (a 'reverse' op's sequence in input order, which Keras's
go_backwards layer returns reversed), ``rnn_seq2`` / ``rnn_state2`` (a bidirectional op's
outputs: the vid is the pair (forward, backward)).

A Reshape (N, T, ...) -> (N * T, ...) starts per-step tensors (``self.td``): layers applied
to them are recorded wrapped in TimeDistributed, until a Reshape back to (N, T, ...).

Transposes between the two 4-D layouts cost nothing (the layout changes), so the NHWC <-> NCHW
transposes of an exported graph vanish on import.  Nodes are first lowered to a list of layer
calls; a chain becomes a Sequential model, anything else a functional Model.
"""
import os

import numpy as np

from fastnet.onnx._common import channels_first, channels_last, require_onnx

_CHANNELS_FIRST_OPS = frozenset(("Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                                 "GlobalMaxPool", "BatchNormalization", "Pad", "ConvTranspose"))
_RNN_OPS = frozenset(("LSTM", "GRU", "RNN"))
_LAYOUT_READERS = {"time_major": {"Transpose"} | _RNN_OPS, "time_major_rev": {"Slice"},
                   "rnn_seq": {"Squeeze"}, "rnn_state": {"Squeeze"}, "rnn_seq_rev": {"Squeeze"},
                   "rnn_seq2": {"Gather"}, "rnn_state2": {"Gather"}, "batch_only": {"Unsqueeze"}}


def _text(v):
    """A string attribute (onnx returns bytes)."""
    return v.decode() if isinstance(v, bytes) else v


class _Value:
    __slots__ = ("vid", "layout")

    def __init__(self, vid, layout):
        self.vid, self.layout = vid, layout


class _Importer:
    def __init__(self, proto):
        onnx = require_onnx()
        self.onnx = onnx
        self.to_array = onnx.numpy_helper.to_array
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise ValueError(f"import_model: not a valid ONNX model: {e}") from None
        graph = proto.graph
        self.graph = graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                          None)
        if self.opset is None:
            raise ValueError("import_model: the model imports no standard ONNX opset")
        self.consts = {t.name: self.to_array(t) for t in graph.initializer}
        self.values = {}          # ONNX name -> _Value
        self.shapes = []          # vid -> per-sample fastnet shape
        self.calls = []           # (layer, [vid], vid)
        self.weights = {}         # id(layer) -> (layer, [arrays])
        self.inputs = []          # (vid, name)
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.skip = set()         # ids of nodes absorbed into an earlier layer
        self.names = set()
        self.dtype = None
        self.chw = {}             # vid of a chw_flat value -> the (h, w, c) it flattens
        self.td = {}              # vid of a per-step tensor -> (vid of (N, T, ...), T)

    # -- helpers -------------------------------------------------------------------------------
    def fail(self, node, why):
        return NotImplementedError(f"import_model: node {node.name or node.op_type!r} "
                                   f"({node.op_type}): {why}")

    def attrs(self, node):
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node, name, what):
        if name not in self.consts:
            raise self.fail(node, f"its {what} must be a constant (initializer)")
        return self.consts[name]

    def value(self, node, name):
        v = self.values.get(name)
        if v is None:
            if name in self.consts:
                raise self.fail(node, f"input {name!r} is a constant where a tensor is expected")
            raise self.fail(node, f"input {name!r} is not produced by a supported node")
        readers = _LAYOUT_READERS.get(v.layout)
        if readers is not None and node.op_type not in readers | {"Identity", "Dropout"}:
            raise self.fail(node, f"input {name!r} is a recurrent op's {v.layout} output, which "
                                  f"only {sorted(readers)} may read here")
        return v

    def new_vid(self, shape):
        self.shapes.append(tuple(int(s) for s in shape))
        return len(self.shapes) - 1

    def layer_name(self, node):
        base = "".join(c if c.isalnum() or c in "_" else "_" for c in (node.name or "")) or None
        if base is None or base in self.names:
            return None
        self.names.add(base)
        return base

    def call(self, layer, in_vids, weights=None):
        """Record ``layer`` applied to ``in_vids``; returns the output vid (a list of them for
        a layer with several outputs)."""
        if any(v in self.td for v in in_vids):
            return self._call_per_step(layer, in_vids, weights)
        shapes = [self.shapes[v] for v in in_vids]
        out = layer.compute_output_shape(shapes if layer.multi_input else shapes[0])
        several = isinstance(out, list)
        vids = [self.new_vid(o) for o in (out if several else [out])]
        self.calls.append((layer, list(in_vids), vids))
        if weights is not None:
            self.weights[id(layer)] = (layer, [np.asarray(w) for w in weights])
        return vids if several else vids[0]

    def _call_per_step(self, layer, in_vids, weights):
        """``layer`` on per-step tensors (batch * steps, ...): TimeDistributed(layer) on the
        (batch, steps, ...) tensor; returns the per-step output vid."""
        if len(in_vids) != 1 or layer.multi_input:
            raise NotImplementedError(f"import_model: {type(layer).__name__} reads tensors whose "
                                      f"batch axis merges the steps of a sequence: only "
                                      f"single-input layers are supported there")
        outer, steps = self.td[in_vids[0]]
        inner = layer.compute_output_shape(self.shapes[in_vids[0]])
        if isinstance(inner, list):
            raise NotImplementedError(f"import_model: {type(layer).__name__} has several "
                                      f"outputs and reads a per-step tensor")
        wrapper = self.layers_mod.TimeDistributed(layer)
        out = self.call(wrapper, [outer], weights)
        vid = self.new_vid(inner)
        self.td[vid] = (out, steps)
        return vid

    def only_consumer(self, name, op_type):
        """The single node reading ``name`` if it is an ``op_type`` and ``name`` is not a graph
        output, else None."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.graph_outputs:
            return users[0]
        return None

    def fuse_activation(self, out_name, channels_axis, rank):
        """(activation, final ONNX name): an activation node alone reading ``out_name`` (a
        softmax only over ``channels_axis``) is absorbed into the layer producing it."""
        simple = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
                  "Softmax": "softmax"}
        users = self.consumers.get(out_name, [])
        if len(users) != 1 or out_name in self.graph_outputs or users[0].op_type not in simple:
            return None, out_name
        node = users[0]
        if node.op_type == "Softmax":
            axis = self.attrs(node).get("axis", -1 if self.opset >= 13 else 1)
            if (axis + rank if axis < 0 else axis) != channels_axis or \
                    (self.opset < 13 and rank != 2):
                return None, out_name
        self.skip.add(id(node))
        return simple[node.op_type], node.output[0]

    def padding(self, node, sizes, ks, strides, pads, auto_pad, can_pad_zero, dilations=None):
        """'valid', 'same' (TensorFlow's, with the dilated window), or explicit zero padding
        [(before, after) per spatial axis]."""
        from fastnet.ops._checks import conv_output_size
        if auto_pad == "SAME_UPPER":
            return "same"
        if auto_pad == "VALID":
            return "valid"
        if auto_pad not in ("NOTSET", ""):
            raise self.fail(node, f"auto_pad={auto_pad} is not supported")
        r = len(sizes)
        pads = list(pads or [0] * 2 * r)
        if not any(pads):
            return "valid"
        dilations = dilations or [1] * r
        same = [conv_output_size(size, (k - 1) * d + 1, s, "same")[1:]
                for size, k, s, d in zip(sizes, ks, strides, dilations)]
        if pads == [b for b, _ in same] + [e for _, e in same]:
            return "same"
        if can_pad_zero and min(pads) >= 0:
            return [(pads[i], pads[i + r]) for i in range(r)]
        raise self.fail(node, f"pads {pads} are neither 'valid' nor TensorFlow's 'same'")

    def layout_4d(self, node, v, want):
        if len(self.shapes[v.vid]) != 3 or v.layout != want:
            raise self.fail(node, f"needs a 4-D {want.upper()} input (got a {v.layout} tensor of "
                                  f"per-sample shape {self.shapes[v.vid]})")

    # -- the graph -----------------------------------------------------------------------------
    def run(self):
        from fastnet import layers
        onnx = self.onnx
        for inp in self.graph.input:
            if inp.name in self.consts:
                continue
            ttype = inp.type.tensor_type
            if ttype.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                raise ValueError(f"import_model: input {inp.name!r} must be float32 or float64")
            dtype = "float32" if ttype.elem_type == onnx.TensorProto.FLOAT else "float64"
            if self.dtype not in (None, dtype):
                raise ValueError("import_model: all inputs must have one dtype")
            self.dtype = dtype
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in ttype.shape.dim]
            if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
                raise ValueError(f"import_model: input {inp.name!r} needs a static shape "
                                 f"(batch, ...), got {dims}")
            cf = len(dims) in (3, 4) and any(
                n.op_type in _CHANNELS_FIRST_OPS for n in self.consumers.get(inp.name, []))
            shape = tuple(dims[2:]) + (dims[1],) if cf else tuple(dims[1:])
            vid = self.new_vid(shape)
            self.inputs.append((vid, inp.name))
            self.values[inp.name] = _Value(vid, "nchw" if cf else "nhwc")
        if not self.inputs:
            raise ValueError("import_model: the graph has no inputs")
        self.layers_mod = layers
        for node in self.graph.node:
            if id(node) in self.skip:
                continue
            handler = getattr(self, "_op_" + node.op_type, None)
            if handler is None or node.domain not in ("", "ai.onnx"):
                raise self.fail(node, "this operator has no fastnet equivalent")
            handler(node)
        outputs = []
        for out in self.graph.output:
            v = self.values.get(out.name)
            if v is None:
                raise ValueError(f"import_model: output {out.name!r} is not computed by the "
                                 f"supported nodes")
            if v.layout == "chw_flat":
                raise NotImplementedError(f"import_model: output {out.name!r} is a "
                                          f"channels-first flattening, which fastnet's NHWC "
                                          f"graph does not hold")
            if v.layout in _LAYOUT_READERS or v.vid in self.td:
                raise NotImplementedError(f"import_model: output {out.name!r} is a "
                                          f"{'per-step' if v.vid in self.td else v.layout} "
                                          f"tensor, which no fastnet layer outputs")
            outputs.append((v.vid, out.name))
        return self.build(outputs)

    def kw(self, node):
        return {"name": self.layer_name(node), "dtype": self.dtype}

    # -- operators -----------------------------------------------------------------------------
    def _alias(self, node):
        self.values[node.output[0]] = self.value(node, node.input[0])

    _op_Identity = _alias

    def _op_Dropout(self, node):
        if len(node.output) > 1 and node.output[1] in self.consumers:
            raise self.fail(node, "its mask output is used")
        self._alias(node)

    def _op_Constant(self, node):
        a = self.attrs(node)
        if "value" not in a:
            raise self.fail(node, "only tensor constants are supported")
        self.consts[node.output[0]] = self.to_array(a["value"])

    def _op_Transpose(self, node):
        v = self.value(node, node.input[0])
        perm = tuple(self.attrs(node).get("perm", ()))
        rank = len(self.shapes[v.vid]) + 1
        swap = {("nhwc", 3): "time_major", ("time_major", 3): "nhwc"}   # (N, T, C) <-> (T, N, C)
        if rank in (3, 4) and perm == channels_first(rank) and v.layout == "nhwc":
            self.values[node.output[0]] = _Value(v.vid, "nchw")
        elif rank in (3, 4) and perm == channels_last(rank) and v.layout == "nchw":
            self.values[node.output[0]] = _Value(v.vid, "nhwc")
        elif perm == (1, 0, 2) and (v.layout, rank) in swap:
            self.values[node.output[0]] = _Value(v.vid, swap[(v.layout, rank)])
        else:
            raise self.fail(node, f"only the channels-last <-> channels-first transposes are "
                                  f"supported, got perm {perm} on a {v.layout} tensor")

    def _op_Conv(self, node):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        a = self.attrs(node)
        w = self.const(node, node.input[1], "kernel")
        if w.ndim not in (3, 4) or v.layout != "nchw" or len(self.shapes[v.vid]) != w.ndim - 1:
            raise self.fail(node, f"needs a channels-first 1-D or 2-D input and kernel (got a "
                                  f"{v.layout} input of per-sample shape {self.shapes[v.vid]}, "
                                  f"kernel {w.shape})")
        group = int(a.get("group", 1))
        r = w.ndim - 2
        cout, cin_g = w.shape[:2]
        ks = tuple(w.shape[2:])
        strides = tuple(a.get("strides", [1] * r))
        dil = tuple(a.get("dilations", [1] * r))
        sizes, c = self.shapes[v.vid][:-1], self.shapes[v.vid][-1]
        if c != cin_g * group or cout % group:
            raise self.fail(node, f"kernel {w.shape} with group={group} does not fit "
                                  f"{c} input channels")
        padding = self.padding(node, sizes, ks, strides, a.get("pads"),
                               _text(a.get("auto_pad", "NOTSET")), True, dil)
        bias = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            raise self.fail(node, "its bias must be a constant")
        vid = v.vid
        if r == 1:
            if isinstance(padding, list):
                if padding[0][1] or padding[0][0] != (ks[0] - 1) * dil[0]:
                    raise self.fail(node, f"1-D padding {padding} is neither 'valid', 'same' "
                                          f"nor causal")
                padding = "causal"
            act, out_name = self.fuse_activation(node.output[0], 1, 3)
            layer = L.Conv1D(cout, ks[0], strides=strides[0], padding=padding,
                             dilation_rate=dil[0], groups=group, activation=act,
                             use_bias=bias is not None, **self.kw(node))
            kernel = w.transpose(2, 1, 0)
        else:
            if isinstance(padding, list):
                vid = self.call(L.ZeroPadding2D(tuple(padding), dtype=self.dtype), [vid])
                padding = "valid"
            act, out_name = self.fuse_activation(node.output[0], 1, 4)
            common = dict(strides=strides, padding=padding, dilation_rate=dil, activation=act,
                          use_bias=bias is not None, **self.kw(node))
            if group == c and cin_g == 1 and group > 1:     # depthwise: (kh, kw, c, mult)
                mult = cout // c
                layer = L.DepthwiseConv2D(ks, depth_multiplier=mult, **common)
                kernel = w[:, 0].transpose(1, 2, 0).reshape(ks + (c, mult))
            else:
                layer = L.Conv2D(cout, ks, groups=group, **common)
                kernel = w.transpose(2, 3, 1, 0)
        weights = [kernel] + ([bias] if bias is not None else [])
        self.values[out_name] = _Value(self.call(layer, [vid], weights), "nchw")

    def _op_ConvTranspose(self, node):
        """ConvTranspose (2-D, one group) -> Conv2DTranspose, when its pads and
        output_padding crop what Keras's 'valid' or 'same' (with or without output_padding)
        crops: the output size and the crop at the start must both agree."""
        from fastnet.ops.conv_general import conv_transpose_output_length
        v = self.value(node, node.input[0])
        self.layout_4d(node, v, "nchw")
        a = self.attrs(node)
        w = self.const(node, node.input[1], "kernel")
        h, wd, c = self.shapes[v.vid]
        if w.ndim != 4 or w.shape[0] != c or int(a.get("group", 1)) != 1:
            raise self.fail(node, f"needs a 2-D kernel (in, out, kh, kw) with in = {c} and one "
                                  f"group (got kernel {w.shape}, group={a.get('group', 1)})")
        if _text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "") or "output_shape" in a:
            raise self.fail(node, "auto_pad and output_shape are not supported (explicit pads "
                                  "and output_padding are)")
        ks = tuple(int(k) for k in w.shape[2:])
        strides = tuple(a.get("strides", [1, 1]))
        dil = tuple(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        extra = list(a.get("output_padding", [0, 0]))
        want, begin = [], []
        for i, size in enumerate((h, wd)):
            full = (size - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1
            want.append(full + extra[i] - pads[i] - pads[i + 2])
            begin.append(pads[i])

        def geometry(padding, op):
            out = []
            for i, size in enumerate((h, wd)):
                o = conv_transpose_output_length(size, ks[i], strides[i], padding,
                                                 None if op is None else op[i], dil[i])
                full = (size - 1) * strides[i] + (ks[i] - 1) * dil[i] + 1
                out.append((o, max(full - o, 0) // 2))
            return out
        target = list(zip(want, begin))
        choices = [(p, None) for p in ("valid", "same")] + [
            (p, (i, j)) for p in ("valid", "same") for i in range(strides[0])
            for j in range(strides[1])]
        match = next(((p, op) for p, op in choices if geometry(p, op) == target), None)
        if match is None:
            raise self.fail(node, f"pads {pads} with output_padding {extra} crop the transposed "
                                  f"convolution differently from Keras's 'valid' or 'same'")
        bias = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            raise self.fail(node, "its bias must be a constant")
        act, out_name = self.fuse_activation(node.output[0], 1, 4)
        layer = self.layers_mod.Conv2DTranspose(
            w.shape[1], ks, strides=strides, padding=match[0], output_padding=match[1],
            dilation_rate=dil, activation=act, use_bias=bias is not None, **self.kw(node))
        weights = [w.transpose(2, 3, 1, 0)] + ([bias] if bias is not None else [])
        self.values[out_name] = _Value(self.call(layer, [v.vid], weights), "nchw")

    def _slice_args(self, node, rank):
        """A Slice's (start, end, step) for every axis of a rank-``rank`` tensor (None for
        the axes it leaves whole), as given (negative and clamped indices included)."""
        if len(node.input) < 3:
            raise self.fail(node, "needs starts and ends inputs (opset >= 10)")
        starts, ends = (self.const(node, n, what).astype(np.int64).reshape(-1) for n, what in
                        zip(node.input[1:3], ("starts", "ends")))
        axes = self.const(node, node.input[3], "axes").reshape(-1) if len(node.input) > 3 and \
            node.input[3] else np.arange(len(starts))
        steps = self.const(node, node.input[4], "steps").reshape(-1) if len(node.input) > 4 and \
            node.input[4] else np.ones(len(starts), np.int64)
        per_axis = [None] * rank
        for a, b, e, st in zip(axes, starts, ends, steps):
            per_axis[int(a) + rank if a < 0 else int(a)] = (int(b), int(e), int(st))
        return per_axis

    def _centre_crop(self, node, v, per_axis, pad, fill_value, out_name):
        """A Slice of a 4-D image keeping the centre window of the image padded by ``pad``
        (rows, columns) -> RandomCrop (its inference)."""
        shape = self.shapes[v.vid]
        hw_axes = (2, 3) if v.layout == "nchw" else (1, 2)
        size = []
        for axis in range(4):
            sl = per_axis[axis]
            if axis not in hw_axes:
                if sl is not None and slice(*sl).indices(1 << 62) != (0, 1 << 62, 1):
                    raise self.fail(node, "only the spatial axes of an image may be sliced")
                continue
            k = hw_axes.index(axis)
            dim = shape[k] + 2 * pad[k]
            begin, end, step = slice(*sl).indices(dim) if sl is not None else (0, dim, 1)
            n = end - begin
            if step != 1 or n < 1 or begin != (dim - n) // 2:
                raise self.fail(node, "only a centred crop of the spatial axes (RandomCrop at "
                                      "inference) is supported")
            size.append(n)
        from fastnet.preprocessing.augmentation import RandomCrop
        layer = RandomCrop(size[0], size[1], padding=tuple(pad), fill_value=fill_value,
                           **self.kw(node))
        self.values[out_name] = _Value(self.call(layer, [v.vid]), v.layout)

    def _op_Slice(self, node):
        v = self.value(node, node.input[0])
        if v.layout == "time_major_rev":      # a go_backwards layer's sequence, reversed
            per_axis = self._slice_args(node, 3)
            steps = self.shapes[v.vid][0]
            if per_axis[1:] != [None, None] or per_axis[0] is None or \
                    slice(*per_axis[0]).indices(steps) != (steps - 1, -1, -1):
                raise self.fail(node, "only the reversal of the time axis is supported here")
            self.values[node.output[0]] = _Value(v.vid, "time_major")
            return
        if len(self.shapes[v.vid]) != 3 or v.layout not in ("nhwc", "nchw"):
            raise self.fail(node, "only a centred crop of images (RandomCrop at inference) or "
                                  "the reversal of a recurrent sequence is supported")
        self._centre_crop(node, v, self._slice_args(node, 4), (0, 0), 0.0, node.output[0])

    def _op_Resize(self, node):
        a = self.attrs(node)
        v = self.value(node, node.input[0])
        self.layout_4d(node, v, "nchw")
        scales = self.consts.get(node.input[2]) if len(node.input) > 2 else None
        mode, coords = _text(a.get("mode", "nearest")), _text(
            a.get("coordinate_transformation_mode", "half_pixel"))
        nearest = (mode, coords, _text(a.get("nearest_mode", "round_prefer_floor"))) == \
            ("nearest", "asymmetric", "floor")
        bilinear = (mode, coords) == ("linear", "half_pixel")
        if scales is None or scales.size != 4 or list(scales[:2]) != [1, 1] or \
                any(s != int(s) or s < 1 for s in scales[2:]) or not (nearest or bilinear):
            raise self.fail(node, "only integer upsampling of the spatial axes, nearest "
                                  "(asymmetric, floor) or linear (half_pixel), is supported")
        layer = self.layers_mod.UpSampling2D(tuple(int(s) for s in scales[2:]),
                                             interpolation="nearest" if nearest else "bilinear",
                                             **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), "nchw")

    def _op_Squeeze(self, node):
        """The one-direction axis of a recurrent op's outputs (Y: axis 1, Y_h / Y_c: axis 0)."""
        v = self.value(node, node.input[0])
        axes = self.consts.get(node.input[1]) if len(node.input) > 1 else \
            self.attrs(node).get("axes")
        axes = None if axes is None else [int(a) for a in np.ravel(axes)]
        to = {("rnn_seq", (1,)): "time_major", ("rnn_state", (0,)): "nhwc",
              ("rnn_seq_rev", (1,)): "time_major_rev"}.get((v.layout, tuple(axes or ())))
        if to is None:
            raise self.fail(node, "only the direction axis of a recurrent op's output may be "
                                  "squeezed")
        self.values[node.output[0]] = _Value(v.vid, to)

    def _recurrent(self, node, cell):
        """ONNX RNN / GRU / LSTM (batch-second, no initial states or sequence lengths) ->
        SimpleRNN / GRU / LSTM ('forward'; go_backwards for 'reverse') or a Bidirectional of
        them with merge_mode=None ('bidirectional'); the outputs in use decide
        return_sequences and return_state."""
        L = self.layers_mod
        a = self.attrs(node)
        v = self.value(node, node.input[0])
        direction = _text(a.get("direction", "forward"))
        if v.layout != "time_major" or direction not in ("forward", "reverse", "bidirectional") \
                or a.get("layout", 0) or any(n for n in list(node.input)[4:]) or \
                a.get("clip") is not None or a.get("input_forget", 0):
            raise self.fail(node, "needs a time-major input without sequence lengths, initial "
                                  "states, clipping, input_forget or peepholes")
        n_dir = 2 if direction == "bidirectional" else 1
        w, r = (self.const(node, n, what) for n, what in zip(node.input[1:3], ("W", "R")))
        u = int(a["hidden_size"])
        order = {"lstm": [0, 3, 1, 2], "gru": [0, 1, 2], "rnn": [0]}[cell]
        inverse = list(np.argsort(order))
        if w.shape[0] != n_dir or r.shape[0] != n_dir:
            raise self.fail(node, f"W and R must hold {n_dir} direction(s)")

        def keras(m):       # (G*u, n) in ONNX's gate order -> (n, G*u) in Keras's
            return np.concatenate([m[j * u:(j + 1) * u] for j in inverse], axis=0).T
        names = {"Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu"}
        n_act = {"lstm": 3, "gru": 2, "rnn": 1}[cell]
        acts = [_text(x) for x in a.get("activations", [])] or \
            {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"],
             "rnn": ["Tanh"]}[cell] * n_dir
        if len(acts) != n_act * n_dir or any(x not in names for x in acts) or \
                (cell == "lstm" and any(acts[d * 3 + 1] != acts[d * 3 + 2]
                                        for d in range(n_dir))):
            raise self.fail(node, f"activations {acts} have no Keras equivalent")
        b = self.consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        gu = len(order) * u
        used = [bool(n) and (n in self.consumers or n in self.graph_outputs)
                for n in node.output] + [False] * 3
        seq = used[0]           # Y: the sequence; Y_h / Y_c: the last states
        state = (seq and (used[1] or used[2])) or (not seq and used[2])
        kw = dict(return_sequences=seq, return_state=state, use_bias=b is not None)
        cells, weights = [], []
        name = self.kw(node)["name"]
        for d in range(n_dir):
            go_back = direction == "reverse" or d == 1
            dacts = acts[d * n_act:(d + 1) * n_act]
            dkw = dict(kw, go_backwards=go_back, dtype=self.dtype,
                       name=name if n_dir == 1 else None)
            if cell == "rnn":
                layer = L.SimpleRNN(u, activation=names[dacts[0]], **dkw)
            else:
                dkw.update(activation=names[dacts[1]], recurrent_activation=names[dacts[0]])
                if cell == "gru":
                    dkw["reset_after"] = bool(a.get("linear_before_reset", 0))
                layer = (L.GRU if cell == "gru" else L.LSTM)(u, **dkw)
            cells.append(layer)
            weights += [keras(w[d]), keras(r[d])]
            if b is not None:
                wb, rb = b[d][:gu, None], b[d][gu:, None]
                weights.append(np.concatenate([keras(wb), keras(rb)]) if dkw.get("reset_after")
                               else keras(wb + rb)[0])
        merged = self._bidirectional_merge(node, seq) if n_dir == 2 and not state else None
        if n_dir == 1:
            layer = cells[0]
        else:
            layer = L.Bidirectional(cells[0], merge_mode=merged[0] if merged else None,
                                    backward_layer=cells[1], name=name)
        out = self.call(layer, [v.vid], weights)
        if merged:
            self.skip.update(id(n) for n in merged[1])
            self.values[merged[2]] = _Value(out, "nhwc")
            return
        outs = out if isinstance(out, list) else [out]
        if n_dir == 2:      # [y_f, y_b, states_f..., states_b...] -> per-output pairs
            ns = (len(outs) - 2) // 2
            pairs = [tuple(outs[:2])] + [(outs[2 + k], outs[2 + ns + k]) for k in range(ns)]
            seq_layout, state_layout = "rnn_seq2", "rnn_state2"
        else:
            pairs = outs
            seq_layout = "rnn_seq_rev" if direction == "reverse" else "rnn_seq"
            state_layout = "rnn_state"
        if state:       # [sequence or last h, h, (c)]
            targets = [(0, pairs[0], seq_layout)] if seq else []
            targets += [(i, vid, state_layout) for i, vid in zip((1, 2), pairs[1:])]
        else:
            targets = [(0, pairs[0], seq_layout)] if seq else [(1, pairs[0], state_layout)]
        for i, vid, layout in targets:
            if i < len(node.output) and node.output[i]:
                self.values[node.output[i]] = _Value(vid, layout)

    def _bidirectional_merge(self, node, seq):
        """(merge_mode, nodes to skip, merged output name) when the two directions of the
        bidirectional op ``node`` (its Y when ``seq``, else its Y_h) are only picked out
        (Gather; Transpose to batch-major for Y) and merged as Keras's Bidirectional does
        ('concat' on the last axis, 'sum', 'mul', 'ave'); else None."""
        name = node.output[0 if seq else 1]
        if name in self.graph_outputs:
            return None
        users = self.consumers.get(name, [])
        picks = [None, None]
        for user in users:
            index = self.consts.get(user.input[1]) if user.op_type == "Gather" and \
                len(user.input) > 1 else None
            if index is None or np.ndim(index) != 0 or int(index) not in (0, 1) or \
                    self.attrs(user).get("axis", 0) != (1 if seq else 0) or picks[int(index)]:
                return None
            picks[int(index)] = user
        if None in picks or len(users) != 2:
            return None
        chain, ends = list(picks), []
        for pick in picks:
            out = pick.output[0]
            if seq:
                t = self.only_consumer(out, "Transpose")
                if t is None or tuple(self.attrs(t).get("perm", ())) != (1, 0, 2):
                    return None
                chain.append(t)
                out = t.output[0]
            if out in self.graph_outputs or len(self.consumers.get(out, [])) != 1:
                return None
            ends.append(out)
        merge = self.consumers[ends[0]][0]
        if self.consumers[ends[1]][0] is not merge or list(merge.input) not in (ends,
                                                                                 ends[::-1]):
            return None
        rank = 3 if seq else 2
        if merge.op_type == "Concat" and list(merge.input) == ends and \
                self.attrs(merge).get("axis") in (-1, rank - 1):
            mode = "concat"
        elif merge.op_type in ("Add", "Mul"):
            mode = "sum" if merge.op_type == "Add" else "mul"
            half = self.only_consumer(merge.output[0], "Mul")
            if mode == "sum" and half is not None:
                other = [n for n in half.input if n != merge.output[0]]
                if len(other) == 1 and other[0] in self.consts and \
                        np.size(self.consts[other[0]]) == 1 and \
                        float(np.reshape(self.consts[other[0]], -1)[0]) == 0.5:
                    chain.append(merge)
                    mode, merge = "ave", half
        else:
            return None
        return mode, chain + [merge], merge.output[0]

    def _op_LSTM(self, node):
        self._recurrent(node, "lstm")

    def _op_GRU(self, node):
        self._recurrent(node, "gru")

    def _op_RNN(self, node):
        self._recurrent(node, "rnn")

    def _op_Cast(self, node):
        """Casts to an integer type feed Gather (embedding indices): the value is kept."""
        if self.attrs(node).get("to") not in (self.onnx.TensorProto.INT64,
                                              self.onnx.TensorProto.INT32):
            raise self.fail(node, "only casts to integer indices are supported")
        self._alias(node)

    def _op_Gather(self, node):
        if node.input[0] not in self.consts:
            return self._direction(node)
        table = self.const(node, node.input[0], "table")
        v = self.value(node, node.input[1])
        if self.attrs(node).get("axis", 0) != 0 or table.ndim != 2 or v.layout != "nhwc":
            raise self.fail(node, "only a lookup in a constant (input_dim, output_dim) table "
                                  "is supported")
        layer = self.layers_mod.Embedding(table.shape[0], table.shape[1], **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid], [table]), "nhwc")

    def _op_Einsum(self, node):
        """A batched dot product (the first letter shared as the batch, one letter contracted,
        the output the other axes of x0 then x1, in order) -> Dot."""
        eq = _text(self.attrs(node)["equation"]).replace(" ", "")
        vs = [self.value(node, n) for n in node.input]
        lhs, _, out = eq.partition("->")
        terms = lhs.split(",")
        ok = len(vs) == 2 and len(terms) == 2 and all(v.layout == "nhwc" for v in vs) and \
            all(len(t) == len(self.shapes[v.vid]) + 1 and len(set(t)) == len(t)
                for t, v in zip(terms, vs)) and terms[0][0] == terms[1][0]
        shared = set(terms[0][1:]) & set(terms[1][1:]) if ok else set()
        if not ok or len(shared) != 1 or terms[0][0] in terms[0][1:] + terms[1][1:]:
            raise self.fail(node, f"only a batched dot product of two tensors over one axis "
                                  f"is supported, got {eq!r}")
        k = shared.pop()
        if out != terms[0][0] + "".join(t[1:].replace(k, "") for t in terms):
            raise self.fail(node, f"the output axes of {eq!r} are not Keras Dot's order")
        layer = self.layers_mod.Dot(axes=(terms[0].index(k), terms[1].index(k)),
                                    **self.kw(node))
        vid = self.call(layer, [v.vid for v in vs])
        # nothing left but the batch: Keras's (batch, 1) is ONNX's (batch,) until Unsqueeze
        self.values[node.output[0]] = _Value(vid, "nhwc" if len(out) > 1 else "batch_only")

    def _op_Unsqueeze(self, node):
        v = self.value(node, node.input[0])
        axes = self.consts.get(node.input[1]) if len(node.input) > 1 else \
            self.attrs(node).get("axes")
        if v.layout != "batch_only" or axes is None or [int(a) for a in np.ravel(axes)] != [1]:
            raise self.fail(node, "only the (batch,) -> (batch, 1) of a dot product is "
                                  "supported")
        self.values[node.output[0]] = _Value(v.vid, "nhwc")

    def _direction(self, node):
        """One direction (index 0 forward, 1 backward) of a bidirectional op's Y (axis 1) or
        Y_h / Y_c (axis 0)."""
        v = self.value(node, node.input[0])
        index = np.asarray(self.const(node, node.input[1], "index"))
        axis = self.attrs(node).get("axis", 0)
        want = {"rnn_seq2": (1, "time_major"), "rnn_state2": (0, "nhwc")}.get(v.layout)
        if want is None or axis != want[0] or index.ndim != 0 or int(index) not in (0, 1):
            raise self.fail(node, "only an embedding lookup in a constant table, or one "
                                  "direction of a bidirectional recurrent op, is supported")
        self.values[node.output[0]] = _Value(v.vid[int(index)], want[1])

    def _pool(self, node, average):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        self.layout_4d(node, v, "nchw")
        a = self.attrs(node)
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])) or \
                len(node.output) > 1:
            raise self.fail(node, "ceil_mode, dilations and indices are not supported")
        k = tuple(a["kernel_shape"])
        strides = tuple(a.get("strides", [1, 1]))
        h, w, _ = self.shapes[v.vid]
        padding = self.padding(node, (h, w), k, strides, a.get("pads"),
                               _text(a.get("auto_pad", "NOTSET")), False)
        if average and padding == "same" and a.get("count_include_pad", 0):
            raise self.fail(node, "count_include_pad=1 with padding differs from Keras's mean")
        cls = L.AveragePooling2D if average else L.MaxPooling2D
        layer = cls(k, strides=strides, padding=padding, **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), "nchw")

    def _op_MaxPool(self, node):
        self._pool(node, False)

    def _op_AveragePool(self, node):
        self._pool(node, True)

    def _global(self, node, average):
        """Global pools of a channels-first 3-D (steps) or 4-D (image) tensor."""
        L = self.layers_mod
        v = self.value(node, node.input[0])
        if len(self.shapes[v.vid]) == 2 and v.layout == "nchw":
            cls = L.GlobalAveragePooling1D if average else L.GlobalMaxPooling1D
            layer = cls(keepdims=True, **self.kw(node))
            self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), "nchw")
            return
        self.layout_4d(node, v, "nchw")
        cls = L.GlobalAveragePooling2D if average else L.GlobalMaxPooling2D
        layer = cls(keepdims=True, **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), "nchw")

    def _op_GlobalAveragePool(self, node):
        self._global(node, True)

    def _op_GlobalMaxPool(self, node):
        self._global(node, False)

    def _op_BatchNormalization(self, node):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        rank = len(self.shapes[v.vid]) + 1
        if not (v.layout == "nchw" or (rank == 2 and v.layout == "nhwc")):
            raise self.fail(node, "the channels must be ONNX's axis 1 of a 2-D or "
                                  "channels-first input")
        if len(node.output) > 1:
            raise self.fail(node, "training-mode outputs are not supported")
        a = self.attrs(node)
        gamma, beta, mean, var = (self.const(node, n, what) for n, what in zip(
            node.input[1:5], ("scale", "bias", "mean", "variance")))
        layer = L.BatchNormalization(epsilon=float(a.get("epsilon", 1e-5)),
                                     momentum=float(a.get("momentum", 0.9)), **self.kw(node))
        self.values[node.output[0]] = _Value(
            self.call(layer, [v.vid], [gamma, beta, mean, var]), v.layout)

    def _dense(self, node, v, kernel, bias, out_name):
        """A Dense layer reading ``v`` (2-D, or rank > 2 over its last axis)."""
        L = self.layers_mod
        vid = v.vid
        if v.layout == "chw_flat":     # rows in (c, *spatial) order -> fastnet's (*spatial, c)
            shape = self.chw[vid]
            r = len(shape)
            kernel = kernel.reshape((shape[-1],) + shape[:-1] + (-1,)).transpose(
                tuple(range(1, r)) + (0, r)).reshape(int(np.prod(shape)), -1)
        elif v.layout != "nhwc":
            raise self.fail(node, "a dense product over the width axis of an NCHW tensor is "
                                  "not supported")
        if self.shapes[vid][-1] != kernel.shape[0]:
            raise self.fail(node, f"kernel {kernel.shape} does not fit the input "
                                  f"{self.shapes[vid]}")
        rank = len(self.shapes[vid]) + 1
        act, out_name = self.fuse_activation(out_name, rank - 1, rank)
        layer = L.Dense(kernel.shape[1], activation=act, use_bias=bias is not None,
                        **self.kw(node))
        weights = [kernel] + ([np.broadcast_to(bias, (kernel.shape[1],))]
                              if bias is not None else [])
        self.values[out_name] = _Value(self.call(layer, [vid], weights), "nhwc")

    def _op_Gemm(self, node):
        a = self.attrs(node)
        v = self.value(node, node.input[0])
        if a.get("transA", 0):
            raise self.fail(node, "transA=1 is not supported")
        b = self.const(node, node.input[1], "B")
        kernel = (b.T if a.get("transB", 0) else b) * a.get("alpha", 1.0)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self.const(node, node.input[2], "C") * a.get("beta", 1.0)
            if bias.size not in (1, kernel.shape[1]):
                raise self.fail(node, "C must broadcast along the output units")
        self._dense(node, v, kernel, bias, node.output[0])

    def _op_MatMul(self, node):
        v = self.value(node, node.input[0])
        kernel = self.const(node, node.input[1], "second operand")
        if kernel.ndim != 2:
            raise self.fail(node, "the constant operand must be a matrix")
        out, bias = node.output[0], None
        add = self.only_consumer(out, "Add")
        if add is not None:
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in self.consts and self.consts[other].size in (1, kernel.shape[1]) and \
                    self.consts[other].ndim <= 1:
                bias = self.consts[other].reshape(-1)
                self.skip.add(id(add))
                out = add.output[0]
        self._dense(node, v, kernel, bias, out)

    def _activation(self, node, activation=None, cls=None, **kwargs):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        if v.layout == "chw_flat":
            raise self.fail(node, "activations of a channels-first flattening are not supported")
        layer = (cls or L.Activation)(*([activation] if activation else []), **kwargs,
                                      **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), v.layout)

    def _op_Relu(self, node):
        self._activation(node, "relu")

    def _op_Sigmoid(self, node):
        self._activation(node, "sigmoid")

    def _op_Tanh(self, node):
        self._activation(node, "tanh")

    def _op_Softplus(self, node):
        self._activation(node, "softplus")

    def _op_Elu(self, node):
        self._activation(node, cls=self.layers_mod.ELU,
                         alpha=float(self.attrs(node).get("alpha", 1.0)))

    def _op_LeakyRelu(self, node):
        self._activation(node, cls=self.layers_mod.LeakyReLU,
                         negative_slope=float(self.attrs(node).get("alpha", 0.01)))

    def _op_Gelu(self, node):
        approx = _text(self.attrs(node).get("approximate", "none"))
        self._activation(node, cls=self.layers_mod.GELU, approximate=approx == "tanh")

    def _op_Softmax(self, node):
        v = self.value(node, node.input[0])
        rank = len(self.shapes[v.vid]) + 1
        axis = self.attrs(node).get("axis", -1 if self.opset >= 13 else 1)
        axis = axis + rank if axis < 0 else axis
        last = 1 if v.layout == "nchw" else rank - 1
        if axis != last or (self.opset < 13 and rank != 2):
            raise self.fail(node, "only a softmax over the channels (fastnet's last axis) is "
                                  "supported")
        self._activation(node, "softmax")

    def _op_Flatten(self, node):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        if self.attrs(node).get("axis", 1) != 1:
            raise self.fail(node, "only axis=1 is supported")
        shape = self.shapes[v.vid]
        self.values[node.output[0]] = self._flattened(node, v, L, shape)

    def _flattened(self, node, v, L, shape):
        if v.layout == "chw_flat" or len(shape) == 1:
            return v
        vid = self.call(L.Flatten(**self.kw(node)), [v.vid])
        if v.layout == "nchw" and shape[-1] > 1 and int(np.prod(shape[:-1])) > 1:
            self.chw[vid] = shape       # the orders differ: only a dense layer may read it
            return _Value(vid, "chw_flat")
        return _Value(vid, "nhwc")

    def _op_Reshape(self, node):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        target = [int(s) for s in self.const(node, node.input[1], "shape")]
        shape = self.shapes[v.vid]
        size = int(np.prod(shape))
        if v.vid in self.td:        # per-step tensors back to (batch, steps, ...)
            outer, steps = self.td[v.vid]
            if v.layout != "nhwc" or target != [-1, steps] + list(shape):
                raise self.fail(node, f"a tensor whose batch axis merges {steps} steps must be "
                                      f"reshaped back to (batch, {steps}, {shape})")
            self.values[node.output[0]] = _Value(outer, "nhwc")
            return
        if v.layout == "nhwc" and len(shape) >= 2 and shape[0] > 1 and \
                target == [-1] + list(shape[1:]):      # (batch, steps, ...) -> per step
            vid = self.new_vid(shape[1:])
            self.td[vid] = (v.vid, shape[0])
            self.values[node.output[0]] = _Value(vid, "nhwc")
            return
        if not target or target[0] not in (0, -1):
            raise self.fail(node, "the batch axis must be kept (shape[0] = 0 or -1)")
        if target[0] == -1 and -1 in target[1:]:
            raise self.fail(node, "the shape may hold one -1 besides the batch axis")
        rest = [shape[i] if (s == 0 and i < len(shape)) else s
                for i, s in enumerate(target[1:])]
        if target[0] == -1:     # -1 on the batch axis: the rest must cover a sample
            if int(np.prod(rest)) != size:
                raise self.fail(node, "a -1 batch axis must keep the per-sample size")
        if len(rest) == 1 and rest[0] in (-1, size):
            self.values[node.output[0]] = self._flattened(node, v, L, shape)
            return
        if v.layout != "nhwc":
            raise self.fail(node, "reshaping a channels-first tensor is not supported")
        layer = L.Reshape(tuple(rest), **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), "nhwc")

    def _op_Pad(self, node):
        L = self.layers_mod
        v = self.value(node, node.input[0])
        mode = _text(self.attrs(node).get("mode", "constant"))
        pads = [int(p) for p in (self.const(node, node.input[1], "pads") if len(node.input) > 1
                                 else self.attrs(node).get("pads", []))]
        value = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
        crop = self.only_consumer(node.output[0], "Slice")
        if crop is not None and mode == "constant" and len(pads) == 8 and \
                len(self.shapes[v.vid]) == 3 and np.size(value) == 1:
            hw = (2, 3) if v.layout == "nchw" else (1, 2)
            pad = (pads[hw[0]], pads[hw[1]])
            if pads == [pad[hw.index(i)] if i in hw else 0 for i in range(4)] * 2 and min(pad) >= 0:
                self.skip.add(id(crop))
                self._centre_crop(crop, v, self._slice_args(crop, 4), pad,
                                  float(np.reshape(value, -1)[0]), crop.output[0])
                return
        if mode != "constant" or np.any(np.asarray(value) != 0) or len(pads) != 8 or \
                min(pads) < 0 or len(self.shapes[v.vid]) != 3:
            raise self.fail(node, "only zero padding of the two spatial axes is supported")
        spatial = (2, 3) if v.layout == "nchw" else (1, 2)
        if any(pads[i] or pads[i + 4] for i in range(4) if i not in spatial):
            raise self.fail(node, "only the spatial axes may be padded")
        (t, b), (l, r) = ((pads[spatial[0]], pads[spatial[0] + 4]),
                          (pads[spatial[1]], pads[spatial[1] + 4]))
        layer = L.ZeroPadding2D(((t, b), (l, r)), **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), v.layout)

    def _merge(self, node, cls):
        vs = [self.value(node, n) for n in node.input]
        layouts = {v.layout for v in vs}
        if len(layouts) != 1 or "chw_flat" in layouts:
            raise self.fail(node, "its inputs must share one layout")
        layer = cls(**self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid for v in vs]),
                                             layouts.pop())

    def _rescale(self, node, scale):
        """Mul / Add of a tensor and a scalar constant: a Rescaling layer."""
        names = list(node.input)
        const = [n for n in names if n in self.consts]
        if len(names) != 2 or len(const) != 1 or self.consts[const[0]].size != 1:
            return False
        v = self.value(node, names[1 - names.index(const[0])])
        c = float(self.consts[const[0]].reshape(-1)[0])
        from fastnet.preprocessing.scaling import Rescaling
        layer = Rescaling(c if scale else 1.0, offset=0.0 if scale else c, **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid]), v.layout)
        return True

    def _per_sample_constant(self, node, v, name):
        """The constant ``name`` broadcast against the tensor ``v`` as a per-sample,
        channels-last array of v's rank (1 on the axes it does not vary along), or None when
        it does not broadcast that way (it would change the batch axis or the shape)."""
        c = np.asarray(self.consts[name])
        shape = self.shapes[v.vid]
        rank = len(shape) + 1
        if c.ndim > rank or v.layout not in ("nhwc", "nchw"):
            return None
        c = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if c.shape[0] != 1:
            return None
        c = c[0]
        if v.layout == "nchw":
            c = np.moveaxis(c, 0, -1)
        if any(d not in (1, s) for d, s in zip(c.shape, shape)):
            return None
        return c

    def _affine(self, node, scale):
        """Mul by (then Add of) a non-scalar constant broadcast over the batch: the per-axis
        affine map y = x * s + b of Normalization(invert=True) (mean b, variance s**2), which
        needs s > 0."""
        names = list(node.input)
        const = [n for n in names if n in self.consts]
        if len(names) != 2 or len(const) != 1:
            return False
        v = self.value(node, names[1 - names.index(const[0])])
        c = self._per_sample_constant(node, v, const[0])
        if c is None:
            return False
        out, s, b = node.output[0], None, None
        if scale:
            s = c
            add = self.only_consumer(out, "Add")
            if add is not None:
                other = add.input[1] if add.input[0] == out else add.input[0]
                bias = self._per_sample_constant(add, v, other) if other in self.consts \
                    else None
                if bias is not None:
                    b, out = bias, add.output[0]
                    self.skip.add(id(add))
        else:
            b = c
        shape = self.shapes[v.vid]
        s = np.ones((1,) * len(shape)) if s is None else s
        b = np.zeros((1,) * len(shape)) if b is None else b
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(b)) and np.all(s >= 1e-7)):
            raise self.fail(node, "a per-axis scale must be finite and >= 1e-7 (a "
                                  "Normalization's standard deviation)")
        keep = tuple(i for i in range(len(shape)) if max(s.shape[i], b.shape[i]) > 1)
        stat = tuple(shape[i] for i in keep)
        s = np.broadcast_to(s, shape)[tuple(slice(None) if i in keep else 0
                                            for i in range(len(shape)))].reshape(stat)
        b = np.broadcast_to(b, shape)[tuple(slice(None) if i in keep else 0
                                            for i in range(len(shape)))].reshape(stat)
        from fastnet.preprocessing.scaling import Normalization
        layer = Normalization(axis=[i + 1 for i in keep], invert=True, **self.kw(node))
        self.values[out] = _Value(self.call(layer, [v.vid], [b, np.square(
            s.astype(np.float64))]), v.layout)
        return True

    def _op_Add(self, node):
        if not (self._rescale(node, False) or self._affine(node, False)):
            self._merge(node, self.layers_mod.Add)

    def _op_Sum(self, node):
        self._merge(node, self.layers_mod.Add)

    def _op_Sub(self, node):
        self._merge(node, self.layers_mod.Subtract)

    def _op_Mul(self, node):
        if not (self._rescale(node, True) or self._affine(node, True)):
            self._merge(node, self.layers_mod.Multiply)

    def _op_Mean(self, node):
        self._merge(node, self.layers_mod.Average)

    def _op_Max(self, node):
        self._merge(node, self.layers_mod.Maximum)

    def _op_Min(self, node):
        self._merge(node, self.layers_mod.Minimum)

    def _op_Concat(self, node):
        vs = [self.value(node, n) for n in node.input]
        layouts = {v.layout for v in vs}
        if len(layouts) != 1 or "chw_flat" in layouts:
            raise self.fail(node, "its inputs must share one layout")
        layout = layouts.pop()
        rank = len(self.shapes[vs[0].vid]) + 1
        axis = self.attrs(node)["axis"]
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise self.fail(node, "concatenating along the batch axis is not supported")
        keras_axis = (rank - 1 if axis == 1 else axis - 1) if layout == "nchw" else axis
        layer = self.layers_mod.Concatenate(axis=keras_axis, **self.kw(node))
        self.values[node.output[0]] = _Value(self.call(layer, [v.vid for v in vs]), layout)

    # -- the fastnet model -----------------------------------------------------------------------
    def build(self, outputs):
        from fastnet import models
        L = self.layers_mod
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in self.graph.name) or None
        reads = {}
        for _, ins, _ in self.calls:
            for v in ins:
                reads[v] = reads.get(v, 0) + 1
        chain = len(self.inputs) == 1 and len(outputs) == 1 and self.calls and all(
            len(outs) == 1 for _, _, outs in self.calls) and all(
            len(ins) == 1 and ins[0] == (self.inputs[0][0] if i == 0 else self.calls[i - 1][2][0])
            for i, (_, ins, _) in enumerate(self.calls)) and \
            outputs[0][0] == self.calls[-1][2][0] and all(r == 1 for r in reads.values())
        if chain:
            vid, in_name = self.inputs[0]
            model = models.Sequential([L.Input(shape=self.shapes[vid], dtype=self.dtype,
                                               name=self._input_name(in_name))]
                                      + [layer for layer, _, _ in self.calls], name=name)
        else:
            tensors = {}
            for vid, in_name in self.inputs:
                tensors[vid] = L.Input(shape=self.shapes[vid], dtype=self.dtype,
                                       name=self._input_name(in_name))
            for layer, ins, vids in self.calls:
                args = [tensors[v] for v in ins]
                out = layer(args if layer.multi_input else args[0])
                tensors.update(zip(vids, out if isinstance(out, list) else [out]))
            outs = [tensors[vid] for vid, _ in outputs]
            model = models.Model([tensors[v] for v, _ in self.inputs],
                                 outs[0] if len(outs) == 1 else outs, name=name)
        for layer, weights in self.weights.values():
            layer.set_weights([np.asarray(w, dtype=layer.dtype) for w in weights])
        return model

    def _input_name(self, name):
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or None
        if base is None or base in self.names:
            return None
        self.names.add(base)
        return base


def import_model(source):
    """A fastnet model computing what the ONNX model ``source`` (a path, bytes or an
    ``onnx.ModelProto``) computes, with its weights.

    Supported: Conv (1-D -> Conv1D, 'valid', 'same' or causal; 2-D -> Conv2D, or
    DepthwiseConv2D for one group per channel; dilations and groups; pads 'valid', TensorFlow
    'same' or explicit, which become a ZeroPadding2D), ConvTranspose (2-D, one group, pads
    cropping as Keras's 'valid' / 'same' with or without output_padding -> Conv2DTranspose),
    MaxPool / AveragePool, GlobalAveragePool / GlobalMaxPool (of 1-D and 2-D channels-first
    tensors), BatchNormalization (inference),
    Gemm, MatMul (+ Add of a bias), Relu, Sigmoid, Tanh, Softplus and Softmax (fused into the
    preceding Conv / ConvTranspose / Gemm / MatMul when they alone read it), Elu, LeakyRelu,
    Gelu, Flatten, Reshape (also (N, T, ...) <-> (N * T, ...): the layers between become
    TimeDistributed), Pad (zeros, spatial; any value when a centred Slice follows ->
    RandomCrop), Slice (a centred crop -> RandomCrop; the reversal of a go_backwards
    sequence), Transpose (channels last <-> first, batch <-> time), Squeeze (of a recurrent
    op's direction axis), Gather (one direction of a bidirectional op), Add / Sum / Sub / Mul
    / Mean / Max / Min of tensors, Mul / Add of a tensor and a scalar (Rescaling) or of a
    per-axis constant (Normalization(invert=True), scales >= 1e-7), Concat, Einsum of a
    batched dot product (+ Unsqueeze) -> Dot, Resize (integer upsampling -> UpSampling2D),
    Cast + Gather (Embedding), RNN / GRU / LSTM (no initial states; 'forward', 'reverse' ->
    go_backwards, 'bidirectional' -> Bidirectional with merge_mode=None, whose merge follows
    as merge layers), Identity, Dropout and Constant; GELU exported below opset 20 (as Erf /
    Tanh arithmetic) and Dot(normalize=True) (ReduceSum) are not
    recognized.  Anything else raises NotImplementedError naming the node.  Inputs read by
    channels-first nodes become channels-last inputs of the fastnet model, and outputs are
    channels-last.
    """
    onnx = require_onnx()
    if isinstance(source, (str, bytes, os.PathLike)) and not isinstance(source, bytes):
        proto = onnx.load(os.fspath(source))
    elif isinstance(source, bytes):
        proto = onnx.load_from_string(source)
    elif isinstance(source, onnx.ModelProto):
        proto = source
    else:
        raise TypeError(f"import_model: expected a path, bytes or onnx.ModelProto, got "
                        f"{type(source).__name__}")
    return _Importer(proto).run()
