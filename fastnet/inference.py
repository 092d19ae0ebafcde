"""Low-latency inference: a model compiled into one planned forward pass.

    >>> fast = model.compile_inference()        # or fastnet.inference.compile(model)
    >>> probs = fast(x)                          # x (batch, *input_shape): one call, any batch
    >>> probs = fast.predict(x, batch_size=64)   # in batches, like Model.predict

Compiling lowers the model's graph once:

* a Conv2D or Dense followed only by a BatchNormalization gets the normalization folded into
  its kernel and bias (``fold_batchnorm``, float64 arithmetic), and a ReLU after either (an
  ``activation='relu'``, an ``Activation('relu')`` or a ``ReLU()``) runs in the GEMM / conv
  epilogue, so conv + BN + ReLU is one kernel call;
* a first-layer convolution (few values per patch, the direct kernel's domain) followed by a
  max pooling with 'valid' windows runs as one kernel that never writes the convolution's
  output;
* Dropout, Flatten, Reshape, linear activations and the random augmentation layers become
  views (no step at all);
* every other layer maps to one kernel of ``fastnet._kernels.infer`` (pooling, padding,
  softmax, the merge layers, a BatchNormalization that could not be folded, ...); softmax and
  the other activations after a Conv2D / Dense run in place on its output.

Per batch size, products with few rows (a batch-1 dense layer, a late convolution with a few
output pixels) run on a small-M kernel that streams the layer's kernel in place with all
accumulators in registers: for such products the blocked GEMM's set-up (packing, blocking, the
implicit convolution's pointer tables) costs more than the arithmetic.

For each batch size (and thread count) a *plan* is made, once per Python thread: every shape
checked, every kernel chosen as the ops would choose it (and its thread count too, except that
steps under ~1M multiply-adds stay on the calling thread: see _MIN_TEAM_WORK), and every
intermediate array laid out in one arena (arrays whose lifetimes do not overlap share bytes;
the last layer writes straight into the caller's output array).  A call then validates the
input, and runs the whole plan in C without the GIL: no per-layer Python, no allocation but the
returned array (none with ``out=``).

Threads: each Python thread gets its own plans and arenas (``threading.local``), the folded
weights are shared read-only, so concurrent calls from several threads are safe and give the
same answers as sequential ones.  Dilated, grouped and depthwise convolutions run their ops
(per-thread scratch) from a Python step.  A layer without an inference kernel here (a custom
``Layer``, the recurrent layers, Conv1D, Conv2DTranspose, SeparableConv2D, UpSampling2D,
Embedding) runs through its own ``forward`` under a per-layer lock: correct from any thread,
serialized on that layer.

Weights: ``compile_inference()`` takes a snapshot (BatchNorm folding bakes them in); call
``refresh()`` after changing the model's weights (not while other threads are predicting), or
compile again.  ``Model.predict`` uses a live per-thread compilation refreshed on each call.

Results equal the model's layer-by-layer inference forward (which folds BatchNormalization the
same way) bit for bit where the plan runs the same kernels, e.g. the classic CNN from batch 13
up; the small-M products and a padded fused convolution sum in another order (within float
rounding).  Every plan is deterministic: a given batch size and thread count always gives the
same bits, whatever other threads do.
"""
import threading
import weakref
from collections import OrderedDict

import numpy as np

from fastnet import config
from fastnet._kernels import infer as _infer

__all__ = ["compile", "CompiledModel", "predict"]

_ALIGN = 64
_PLANS_PER_THREAD = 4       # batch sizes kept per thread (LRU)
_SMALL_M_ROWS = 12          # see _small_m
# A step runs on one thread below this much work (multiply-adds or element visits, ~10 us on a
# Zen 4 core): a fork/join costs ~2 us on a quiet machine but, when the cores are oversubscribed,
# up to a scheduler slice (ms) waiting for the second thread; the ops' own thresholds are tuned
# for training steps.  Forward results do not depend on the team size.  At batch 1 the classic
# CNN's second convolution (2.2M) runs on the team, the rest on the calling thread.  Measured at
# 2 threads, batch 1 (benchmarks/bench_infer.py): 2**23 gave 71 us, 2**20 61 us, 2**17 60 us
# but a slower batch 64.
_MIN_TEAM_WORK = 1 << 20
_layer_locks = weakref.WeakKeyDictionary()     # layer -> lock (see _layer_lock)
_layer_locks_guard = threading.Lock()
# Model.predict's compilations: model -> threading.local (kept off the model object, which
# stays free of unpicklable state, and dropped with the model)
_predict_locals = weakref.WeakKeyDictionary()


def _layer_lock(layer):
    """The lock serializing the fallback ``forward`` of ``layer`` (its buffers are shared)."""
    with _layer_locks_guard:
        lock = _layer_locks.get(layer)
        if lock is None:
            lock = _layer_locks[layer] = threading.Lock()
        return lock


def _prod(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


class _Op:
    """One lowered operation: ``kind``, input tensor ids, output tensor ids, arguments."""
    __slots__ = ("kind", "ins", "outs", "args")

    def __init__(self, kind, ins, outs, **args):
        self.kind, self.ins, self.outs, self.args = kind, list(ins), list(outs), args


class _Weights:
    """The arrays the kernels read, and how to recompute the ones that are not the model's own
    (folded kernels, BatchNorm scale/shift, or snapshot copies)."""

    def __init__(self, dtype, live):
        self.dtype, self.live = np.dtype(dtype), live
        self.derived = []        # (target array, function returning the current value)
        self.refs = []           # (params dict, name, array) used in place (live mode)

    def param(self, layer, name):
        """layer.params[name] as the kernels need it: in place (live) or a snapshot copy."""
        value = layer.params.get(name)
        if value is None:
            return None
        if self.live and value.dtype == self.dtype and value.flags.c_contiguous:
            self.refs.append((layer.params, name, value))
            return value
        return self.derived_array(lambda: layer.params[name])

    def derived_array(self, compute):
        target = np.ascontiguousarray(compute(), dtype=self.dtype).copy()
        self.derived.append((target, compute))
        return target

    def stale(self):
        for params, name, arr in self.refs:     # a loop: a generator costs ~1 us per call
            if params.get(name) is not arr:
                return True
        return False

    def refresh(self):
        for target, compute in self.derived:
            np.copyto(target, compute(), casting="same_kind")


# ------------------------------------------------------------------------------------ lowering
def _is_relu(layer):
    from fastnet.layers.activation_layers import ReLU
    from fastnet.layers.core import Activation
    return type(layer) in (Activation, ReLU) and layer.activation == "relu"


def _inference_identity(layer):
    """Random augmentation layers are the identity at inference (RandomCrop excepted)."""
    from fastnet.preprocessing.augmentation import BaseRandomLayer, RandomCrop
    return isinstance(layer, BaseRandomLayer) and not isinstance(layer, RandomCrop)


def _activation_op(name, alpha, x, y):
    """The op applying activation ``name`` to tensor x into y (None: identity)."""
    if name is None or name == "linear":
        return None
    if name == "relu":
        return _Op("relu", [x], [y])
    if name == "softmax":
        return _Op("softmax", [x], [y])
    return _Op("act", [x], [y], name=name, alpha=alpha)


class _Lowering:
    """The model's graph as ops over tensor ids (the model's slots; views share a root)."""

    def __init__(self, model, live):
        from fastnet.models.functional import Functional
        if not isinstance(model, Functional):
            raise TypeError(f"compile: expected a fastnet model (Sequential or Model), got "
                            f"{type(model).__name__}")
        model._require_built("compile_inference")
        self.model = model
        self.graph = model._node_info      # replaced by the model when its graph changes
        self.dtype = np.dtype(model.dtype)
        self.weights = _Weights(self.dtype, live)
        self.shapes = list(model._slot_shapes)
        self.root = list(range(model._n_slots))
        self.inputs = list(model._input_idx)
        self.outputs = list(model._output_idx)
        self.ops = []
        self._lower()

    def alias(self, y, x):
        self.root[y] = self.root[x]

    def _lower(self):
        model = self.model
        info = model._node_info
        outputs = set(self.outputs)

        def sole_consumer(k):
            outs = info[k][3]
            if len(outs) != 1 or outs[0] in outputs or len(model._consumers[outs[0]]) != 1:
                return None
            c = model._consumers[outs[0]][0]
            return c if len(info[c][2]) == 1 and not info[c][5] else None

        absorbed = set()
        for k, (layer, shared, ins, outs, multi_in, multi_out, _) in enumerate(info):
            if k in absorbed:
                continue
            if not multi_in and not multi_out and self._lower_kernel_layer(
                    k, layer, ins[0], outs[0], sole_consumer, absorbed):
                continue
            if not multi_out and self._lower_simple(layer, ins, outs[0], multi_in):
                continue
            self.ops.append(_Op("layer", ins, outs, layer=layer, shared=shared,
                                multi_in=multi_in, multi_out=multi_out))

    def _lower_kernel_layer(self, k, layer, x, y, sole_consumer, absorbed):
        """Conv2D / DepthwiseConv2D / Dense, with a following BatchNormalization (not for the
        depthwise kernel, whose output channels are not its last axis) and ReLU folded in."""
        from fastnet.layers.conv import Conv2D
        from fastnet.layers.convolutional_depthwise import DepthwiseConv2D
        from fastnet.layers.core import Dense
        from fastnet.layers.normalization import BatchNormalization, fold_batchnorm
        from fastnet.layers.pooling import MaxPooling2D
        t = type(layer)
        if t not in (Conv2D, Dense, DepthwiseConv2D):
            return False
        if t is Dense:
            kind, extra = "dense", {}
        elif t is DepthwiseConv2D:
            kind, extra = "depthwise", dict(strides=layer.strides, padding=layer.padding,
                                            dilation_rate=layer.dilation_rate)
        elif tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            kind, extra = "conv_general", dict(strides=layer.strides, padding=layer.padding,
                                               dilation_rate=layer.dilation_rate,
                                               groups=layer.groups)
        else:
            kind, extra = "conv", dict(strides=layer.strides, padding=layer.padding)
        info = self.model._node_info
        act, alpha = layer.activation, getattr(layer, "activation_alpha", None)
        bn, last = None, k
        if act is None:
            c = sole_consumer(k)
            if c is not None and kind != "depthwise" and \
                    type(info[c][0]) is BatchNormalization and \
                    info[c][0].axis in (-1, len(self.shapes[info[c][3][0]])):
                bn, y, last = info[c][0], info[c][3][0], c
                absorbed.add(c)
                c = sole_consumer(c)
            if c is not None and _is_relu(info[c][0]):
                act, y, last = "relu", info[c][3][0], c
                absorbed.add(c)
        w = self.weights
        if bn is not None:
            def folded(i, layer=layer, bn=bn):
                return fold_batchnorm(layer.params["kernel"], layer.params.get("bias"), bn)[i]
            kernel, bias = w.derived_array(lambda: folded(0)), w.derived_array(lambda: folded(1))
        else:
            kernel, bias = w.param(layer, "kernel"), w.param(layer, "bias")
        relu = act == "relu"
        pre = y if relu or act in (None, "linear") else ("pre", y)
        if pre == y:
            p = sole_consumer(last) if kind == "conv" else None
            pool = info[p][0] if p is not None else None
            if type(pool) is MaxPooling2D and pool.padding == "valid":
                # conv (+ ReLU) + max pooling: one pass when the planner has a kernel for it
                absorbed.add(p)
                self.ops.append(_Op("conv_pool", [x], [info[p][3][0]], kernel=kernel,
                                    bias=bias, relu=relu, conv_out=y, pool=pool.pool_size,
                                    pool_strides=pool.strides, **extra))
                return True
            self.ops.append(_Op(kind, [x], [y], kernel=kernel, bias=bias, relu=relu, **extra))
            return True
        # another activation: the product into y, then the activation in place
        self.ops.append(_Op(kind, [x], [y], kernel=kernel, bias=bias, relu=False, **extra))
        self.ops.append(_activation_op(act, alpha, y, y))
        return True

    def _lower_simple(self, layer, ins, y, multi_in):
        from fastnet.layers import merge
        from fastnet.layers.activation_layers import ELU, GELU, LeakyReLU, ReLU, Softmax
        from fastnet.layers.core import Activation, Flatten
        from fastnet.layers.normalization import BatchNormalization
        from fastnet.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D,
                                            GlobalMaxPooling2D, MaxPooling2D)
        from fastnet.layers.regularization import Dropout
        from fastnet.layers.reshaping import Reshape, ZeroPadding2D
        t = type(layer)
        x = ins[0]
        if multi_in:
            shapes = [self.shapes[i] for i in ins]
            if len(ins) == 1:
                self.alias(y, x)
                return True
            ops = {merge.Add: "add", merge.Subtract: "subtract", merge.Multiply: "multiply",
                   merge.Maximum: "maximum", merge.Minimum: "minimum", merge.Average: "add"}
            if t in ops and all(s == self.shapes[y] for s in shapes):
                self.ops.append(_Op("merge", ins, [y], op=ops[t],
                                    scale=1.0 / len(ins) if t is merge.Average else None))
                return True
            if t is merge.Concatenate:
                self.ops.append(_Op("concat", ins, [y],
                                    axis=layer._sample_axis(len(self.shapes[y]))))
                return True
            return False
        if t in (Flatten, Reshape, Dropout) or _inference_identity(layer):
            self.alias(y, x)
            return True
        if t in (Activation, ReLU, LeakyReLU, ELU, GELU, Softmax):
            op = _activation_op(layer.activation, getattr(layer, "activation_alpha", None), x, y)
            if op is None:
                self.alias(y, x)
            else:
                self.ops.append(op)
            return True
        if t in (MaxPooling2D, AveragePooling2D):
            self.ops.append(_Op("pool", [x], [y], average=t is AveragePooling2D,
                                pool=layer.pool_size, strides=layer.strides,
                                padding=layer.padding))
            return True
        if t in (GlobalAveragePooling2D, GlobalMaxPooling2D):
            self.ops.append(_Op("global", [x], [y], average=t is GlobalAveragePooling2D))
            return True
        if t is ZeroPadding2D:
            self.ops.append(_Op("pad", [x], [y], padding=layer.padding))
            return True
        if t is BatchNormalization and layer.axis in (-1, len(self.shapes[x])):
            self.ops.append(self._affine(layer, x, y))
            return True
        return False

    def _affine(self, bn, x, y):
        """Inference BatchNormalization as (x - m) * a + c, a computed as the norm kernel does
        (1 / sqrt(var + eps) in float64, times gamma, rounded once)."""
        dt = self.dtype

        def scale():
            inv = 1.0 / np.sqrt(bn.params["moving_variance"].astype(np.float64) + bn.epsilon)
            gamma = bn.params.get("gamma")
            return (inv * gamma.astype(np.float64) if gamma is not None else inv).astype(dt)

        def shift():
            beta = bn.params.get("beta")
            return beta if beta is not None else np.zeros(bn.params["moving_mean"].shape, dt)
        w = self.weights
        return _Op("affine", [x], [y], mean=w.derived_array(lambda: bn.params["moving_mean"]),
                   scale=w.derived_array(scale), shift=w.derived_array(shift))


# ------------------------------------------------------------------------------------ planning
class _Planner:
    """Slots, steps and the arena of one Program (one batch size, one thread count)."""

    def __init__(self, low, n, nthreads):
        self.low, self.n, self.nthreads = low, n, nthreads
        self.item = low.dtype.itemsize
        self.n_in = len(low.inputs)
        self.sizes = [n * _prod(low.shapes[t]) * self.item for t in low.inputs] + [0]
        self.first = [0] * (self.n_in + 1)
        self.last = [0] * (self.n_in + 1)
        self.slot = {low.root[t]: i for i, t in enumerate(low.inputs)}
        self.steps = []          # (kind, a, out, kwargs, python builder or None)
        self.python_slots = set()
        self.last_read = self._last_reads()

    def _last_reads(self):
        """Index of the last op reading each root tensor (outputs: read at the end)."""
        low, last = self.low, {}
        for i, op in enumerate(low.ops):
            for t in op.ins:
                last[low.root[t]] = i
        for t in low.outputs:
            last[low.root[t]] = len(low.ops)
        return last

    @staticmethod
    def team(work, threads):
        """The team of a step doing ``work`` (multiply-adds, or element visits): the ops'
        choice ``threads`` from _MIN_TEAM_WORK up, else the calling thread alone."""
        return threads if work >= _MIN_TEAM_WORK else 1

    # -- slots --------------------------------------------------------------------------------
    def new_slot(self, nbytes):
        self.sizes.append(nbytes)
        self.first.append(len(self.steps))
        self.last.append(len(self.steps))
        return len(self.sizes) - 1

    def out_slot(self, t, in_place_of=None, op_index=None):
        """The slot of output tensor t: ``in_place_of``'s slot when that tensor dies here."""
        low = self.low
        root = low.root[t]
        if in_place_of is not None:
            src = low.root[in_place_of]
            s = self.slot[src]
            # the same tensor (an activation applied to a product in place), or one that no
            # later op and no output reads
            if s >= self.n_in and (src == root or (
                    self.last_read.get(src) == op_index
                    and src not in {low.root[o] for o in low.outputs})):
                self.slot[root] = s
                return s
        s = self.new_slot(self.n * _prod(low.shapes[t]) * self.item)
        self.slot[root] = s
        return s

    def read(self, t):
        s = self.slot[self.low.root[t]]
        self.last[s] = max(self.last[s], len(self.steps))
        return s

    def step(self, kind, a, out, python=None, **kw):
        self.last[out] = max(self.last[out], len(self.steps))
        self.steps.append((kind, a, out, kw, python))

    def python_view(self, t):
        """The slot of tensor t for a Python step: inputs are first copied into the arena."""
        s = self.read(t)
        if s < self.n_in:
            copy = self.new_slot(self.sizes[s])
            self.step("copy", s, copy, shape=(self.sizes[s] // self.item,))
            self.slot[self.low.root[t]] = s = copy
            self.read(t)
        self.python_slots.add(s)
        return s

    # -- ops ----------------------------------------------------------------------------------
    def emit(self, i, op):
        getattr(self, "_emit_" + op.kind)(i, op)

    def _emit_conv(self, i, op):
        from fastnet._kernels import conv as conv_kernels
        from fastnet.ops import conv as conv_ops
        from fastnet.ops._checks import conv_output_size
        x, y = op.ins[0], op.outs[0]
        n = self.n
        h, w, cin = self.low.shapes[x]
        kernel, bias = op.args["kernel"], op.args["bias"]
        kh, kw, _, cout = kernel.shape
        sh, sw = op.args["strides"]
        oh, pt, _ = conv_output_size(h, kh, sh, op.args["padding"])
        ow, pl, _ = conv_output_size(w, kw, sw, op.args["padding"])
        if (oh, ow, cout) != tuple(self.low.shapes[y]):
            raise ValueError(f"conv output {(oh, ow, cout)} differs from the model's "
                             f"{self.low.shapes[y]}")
        rows, k = n * oh * ow, kh * kw * cin
        nthreads = self.team(rows * k * cout, conv_ops._threads(rows * k * cout))
        pointwise = (kh, kw, sh, sw) == (1, 1, 1, 1)
        if _small_m(rows, cout) and kw * cin > conv_ops._DIRECT_MAX_ROW:
            a = self.read(x)
            self.sizes[self.n_in] = max(self.sizes[self.n_in], rows * k * self.item)
            self.step("conv_smallm", a, self.out_slot(y), flag=int(op.args["relu"]), w=kernel,
                      bias=bias, shape=(n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl))
            return
        if kw * cin <= conv_ops._DIRECT_MAX_ROW and not pointwise:
            kind, code = "direct", conv_ops._IMPLICIT_OPS["direct_forward"]
        elif k <= conv_ops._IMPLICIT_MAX_K:
            kind, code = "conv", conv_ops._IMPLICIT_OPS["forward"]
        else:   # im2col paths: the op itself (it takes its scratch per thread)
            xs = self.python_view(x)
            ys = self.out_slot(y)
            self.python_slots.add(ys)
            args = dict(strides=(sh, sw), padding=op.args["padding"],
                        activation="relu" if op.args["relu"] else None)

            def build(prog, xs=xs, ys=ys, xshape=(n, h, w, cin), yshape=(n, oh, ow, cout)):
                xv, yv = prog.view(xs, xshape), prog.view(ys, yshape)
                return lambda: conv_ops.conv2d(xv, kernel, bias, out=yv, **args)
            self.step("python", xs, ys, python=build)
            return
        a = self.read(x)
        ws = conv_kernels.implicit_workspace(code, (n, h, w, cin), (n, oh, ow, cout), kh, kw, sh,
                                             sw, pt, pl, self.low.dtype == np.float64, nthreads)
        self.sizes[self.n_in] = max(self.sizes[self.n_in], ws * self.item)
        out = self.out_slot(y)
        self.step(kind, a, out, nthreads=nthreads, flag=int(op.args["relu"]), w=kernel,
                  bias=bias, shape=(n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl))

    def _emit_conv_pool(self, i, op):
        """The fused kernel for first-layer shapes (the direct kernel's domain), else the
        convolution and the pooling as two steps."""
        from fastnet.ops import conv as conv_ops
        x, y, conv_y = op.ins[0], op.outs[0], op.args["conv_out"]
        n = self.n
        h, w, cin = self.low.shapes[x]
        kernel = op.args["kernel"]
        kh, kw, _, cout = kernel.shape
        (sh, sw), (ph, pw), (psh, psw) = op.args["strides"], op.args["pool"], \
            op.args["pool_strides"]
        if kw * cin > conv_ops._DIRECT_MAX_ROW or (kh, kw, sh, sw) == (1, 1, 1, 1) or \
                kh * kw * cin > 256 or ph * pw > 64:
            self._emit_conv(i, _Op("conv", [x], [conv_y], **{
                k: v for k, v in op.args.items() if k in ("kernel", "bias", "relu", "strides",
                                                          "padding")}))
            self._emit_pool(i, _Op("pool", [conv_y], [y], average=False, pool=(ph, pw),
                                   strides=(psh, psw), padding="valid"))
            return
        from fastnet.ops._checks import conv_output_size
        oh, pt, _ = conv_output_size(h, kh, sh, op.args["padding"])
        ow, pl, _ = conv_output_size(w, kw, sw, op.args["padding"])
        qh, qw = (oh - ph) // psh + 1, (ow - pw) // psw + 1
        if (qh, qw, cout) != tuple(self.low.shapes[y]):
            raise ValueError(f"conv + pool output {(qh, qw, cout)} differs from the model's "
                             f"{self.low.shapes[y]}")
        work = n * oh * ow * kh * kw * cin * cout
        nthreads = min(self.team(work, conv_ops._threads(work)), n * qh)
        self.sizes[self.n_in] = max(self.sizes[self.n_in],
                                    nthreads * ph * pw * kh * kw * cin * self.item)
        a = self.read(x)
        self.step("conv_pool", a, self.out_slot(y), nthreads=nthreads,
                  flag=int(op.args["relu"]), w=kernel, bias=op.args["bias"],
                  shape=(n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl),
                  extra=(ph, pw, psh, psw, qh, qw))

    def _emit_conv_general(self, i, op, depthwise=False):
        """Dilated / grouped / depthwise convolutions: their op (per-thread scratch, so no lock)
        on arena views, as a Python step."""
        from fastnet.ops import conv_general as general_ops
        x, y = op.ins[0], op.outs[0]
        xs = self.python_view(x)
        ys = self.out_slot(y)
        self.python_slots.add(ys)
        xshape, yshape = (self.n,) + tuple(self.low.shapes[x]), (self.n,) + tuple(
            self.low.shapes[y])
        fn = general_ops.depthwise_conv2d if depthwise else general_ops.conv2d_general
        args = {k: v for k, v in op.args.items() if k not in ("kernel", "bias", "relu")}
        args["activation"] = "relu" if op.args["relu"] else None
        kernel, bias = op.args["kernel"], op.args["bias"]

        def build(prog):
            xv, yv = prog.view(xs, xshape), prog.view(ys, yshape)
            return lambda: fn(xv, kernel, bias, out=yv, **args)
        self.step("python", xs, ys, python=build)

    def _emit_depthwise(self, i, op):
        self._emit_conv_general(i, op, depthwise=True)

    def _emit_dense(self, i, op):
        x, y = op.ins[0], op.outs[0]
        kernel, bias = op.args["kernel"], op.args["bias"]
        k, units = kernel.shape
        m = self.n * _prod(self.low.shapes[x][:-1])
        if self.low.shapes[x][-1] != k or tuple(self.low.shapes[y]) != \
                tuple(self.low.shapes[x][:-1]) + (units,):
            raise ValueError(f"dense shapes {self.low.shapes[x]} -> {self.low.shapes[y]} do not "
                             f"match its kernel {kernel.shape}")
        a = self.read(x)
        self.step("smallm" if _small_m(m, units) else "gemm", a, self.out_slot(y),
                  nthreads=1 if _small_m(m, units) else self.team(m * k * units, self.nthreads),
                  flag=int(op.args["relu"]), w=kernel, bias=bias, shape=(m, units, k))

    def _emit_pool(self, i, op):
        from fastnet.ops import pool as pool_ops
        x, y = op.ins[0], op.outs[0]
        n = self.n
        (ph, pw), (sh, sw) = op.args["pool"], op.args["strides"]
        pool, strides, out_shape, (pt, pl) = pool_ops._window(
            (n,) + tuple(self.low.shapes[x]), (ph, pw), (sh, sw), op.args["padding"])
        if out_shape[1:] != tuple(self.low.shapes[y]):
            raise ValueError(f"pool output {out_shape[1:]} differs from the model's "
                             f"{self.low.shapes[y]}")
        h, w, c = self.low.shapes[x]
        a = self.read(x)
        threads = self.team(_prod(out_shape) * ph * pw, pool_ops._threads(out_shape, pool))
        self.step("pool", a, self.out_slot(y), nthreads=threads,
                  flag=int(op.args["average"]),
                  shape=(n, h, w, c, out_shape[1], out_shape[2], ph, pw, sh, sw, pt, pl))

    def _emit_global(self, i, op):
        from fastnet.ops import spatial as spatial_ops
        x, y = op.ins[0], op.outs[0]
        h, w, c = self.low.shapes[x]
        a = self.read(x)
        self.step("global", a, self.out_slot(y),
                  nthreads=self.team(self.n * h * w * c,
                                     spatial_ops._threads(self.n * h * w * c, self.n)),
                  flag=int(op.args["average"]), shape=(self.n, h * w, c))

    def _emit_pad(self, i, op):
        x, y = op.ins[0], op.outs[0]
        (t, b), (l, r) = op.args["padding"]
        a = self.read(x)
        self.step("pad", a, self.out_slot(y), shape=(self.n,) + tuple(self.low.shapes[x]),
                  extra=(t, b, l, r))

    def _unary(self, i, op, kind, **kw):
        x, y = op.ins[0], op.outs[0]
        a = self.read(x)
        self.step(kind, a, self.out_slot(y, in_place_of=x, op_index=i), **kw)

    def _emit_relu(self, i, op):
        from fastnet.ops import activations as act_ops
        size = self.n * _prod(self.low.shapes[op.ins[0]])
        threads = self.team(size, act_ops._num_threads(size, act_ops.PARALLEL_MIN_CHEAP))
        self._unary(i, op, "elementwise", flag=_infer.ELEMENTWISE_OPS["relu"], shape=(size,),
                    nthreads=threads)

    def _emit_softmax(self, i, op):
        from fastnet.ops import activations as act_ops
        shape = self.low.shapes[op.ins[0]]
        rows, cols = self.n * _prod(shape[:-1]), shape[-1]
        self._unary(i, op, "softmax", shape=(rows, cols), nthreads=self.team(
            rows * cols, act_ops._num_threads(
                rows * cols, act_ops.PARALLEL_MIN_TRANSCENDENTAL[self.low.dtype])))

    def _emit_affine(self, i, op):
        from fastnet.ops import norm as norm_ops
        shape = self.low.shapes[op.ins[0]]
        rows, c = self.n * _prod(shape[:-1]), shape[-1]
        self._unary(i, op, "affine", shape=(rows, c), w=op.args["scale"],
                    bias=op.args["shift"], aux=op.args["mean"],
                    nthreads=self.team(rows * c, norm_ops._threads(rows * c)))

    def _emit_act(self, i, op):
        """Activations without an inference kernel of their own: the activation kernel
        directly, on arena views (a Python step, in place when possible)."""
        from fastnet._kernels import activations as act_kernels
        from fastnet.ops import activations as act_ops
        name, alpha = op.args["name"], op.args["alpha"]
        code = act_ops._ELEMENTWISE[name]
        if alpha is None:
            alpha = act_ops.DEFAULT_ALPHA.get(name, 0.0)
        x, y = op.ins[0], op.outs[0]
        size = self.n * _prod(self.low.shapes[x])
        threshold = act_ops.PARALLEL_MIN_CHEAP if name in act_ops._CHEAP_FORWARD else \
            act_ops.PARALLEL_MIN_TRANSCENDENTAL[self.low.dtype]
        nthreads = self.team(size, act_ops._num_threads(size, threshold))
        xs = self.python_view(x)
        ys = self.out_slot(y, in_place_of=x, op_index=i)
        self.python_slots.add(ys)

        def build(prog, xs=xs, ys=ys):
            xv, yv = prog.view(xs, (size,)), prog.view(ys, (size,))
            return lambda: act_kernels.elementwise_forward(code, xv, yv, nthreads, float(alpha))
        self.step("python", xs, ys, python=build)

    def _emit_merge(self, i, op):
        from fastnet.ops import activations as act_ops
        size = self.n * _prod(self.low.shapes[op.outs[0]])
        code = _infer.ELEMENTWISE_OPS[op.args["op"]]
        nthreads = self.team(size, act_ops._num_threads(size, act_ops.PARALLEL_MIN_CHEAP))
        a, b = self.read(op.ins[0]), self.read(op.ins[1])
        out = self.out_slot(op.outs[0])
        self.step("elementwise", a, out, b=b, flag=code, shape=(size,), nthreads=nthreads)
        for t in op.ins[2:]:    # y = y op x, in place, left to right (as the layers)
            self.step("elementwise", out, out, b=self.read(t), flag=code, shape=(size,),
                      nthreads=nthreads)
        if op.args["scale"] is not None:
            self.step("elementwise", out, out, flag=_infer.ELEMENTWISE_OPS["scale"],
                      shape=(size,), nthreads=nthreads,
                      alpha=float(self.low.dtype.type(op.args["scale"])))

    def _emit_concat(self, i, op):
        axis, y = op.args["axis"], op.outs[0]
        shape_y = self.low.shapes[y]
        rows = self.n * _prod(shape_y[:axis])
        width = _prod(shape_y[axis:])
        reads = [(self.read(t), _prod(self.low.shapes[t][axis:])) for t in op.ins]
        out = self.out_slot(y)
        off = 0
        for a, cols in reads:
            self.step("place", a, out, shape=(rows, cols, width, off))
            off += cols

    def _emit_layer(self, i, op):
        """A layer without an inference kernel: its own forward, under its lock."""
        layer, shared = op.args["layer"], op.args["shared"]
        multi_in, multi_out = op.args["multi_in"], op.args["multi_out"]
        n, low = self.n, self.low
        xs = [(self.python_view(t), (n,) + tuple(low.shapes[t])) for t in op.ins]
        ys = []
        for t in op.outs:
            s = self.out_slot(t)
            self.python_slots.add(s)
            ys.append((s, (n,) + tuple(low.shapes[t])))
        lock = _layer_lock(layer)

        def build(prog):
            xv = [prog.view(s, shape) for s, shape in xs]
            yv = [prog.view(s, shape) for s, shape in ys]

            def run():
                with lock:
                    if shared is not None:
                        layer._enter_call(shared)
                    out = layer.forward(xv if multi_in else xv[0], False)
                    for dst, src in zip(yv, out if multi_out else [out]):
                        np.copyto(dst, src)
            return run
        self.step("python", xs[0][0], ys[0][0], python=build)

    # -- the program ----------------------------------------------------------------------------
    def program(self):
        low = self.low
        for i, op in enumerate(low.ops):
            self.emit(i, op)
        # one slot per output: an input or a tensor listed twice gets a copy
        out_slots, seen = [], set()
        for t in low.outputs:
            s = self.read(t)
            if s < self.n_in or s in seen:
                copy = self.new_slot(self.sizes[s])
                self.step("copy", s, copy, shape=(self.sizes[s] // self.item,))
                s = copy
            seen.add(s)
            out_slots.append(s)
        external = [s not in self.python_slots for s in out_slots]
        end = len(self.steps)
        for s in out_slots:
            self.last[s] = end
        self.last[self.n_in], self.first[self.n_in] = end, 0     # the workspace: throughout
        offsets, total = self._place(skip=set(self.range_inputs()) | {
            s for s, e in zip(out_slots, external) if e})
        arena = _aligned_bytes(total)
        prog = _infer.Program(self.sizes, low.dtype, self.n_in, out_slots, external)
        prog.bind(arena, offsets)
        for kind, a, out, kw, python in self.steps:
            if python is not None:
                prog.add_step("python", a, out, callback=python(prog))
            else:
                prog.add_step(kind, a, out, **kw)
        return prog

    def range_inputs(self):
        return range(self.n_in)

    def _place(self, skip):
        """Offsets (multiples of 64 bytes) for every slot not in ``skip``: slots whose step
        ranges [first, last] overlap get disjoint bytes; first fit, largest first."""
        offsets = [0] * len(self.sizes)
        order = sorted((s for s in range(self.n_in, len(self.sizes)) if s not in skip),
                       key=lambda s: (-self.sizes[s], s))
        placed, total = [], 0
        for s in order:
            size = -(-self.sizes[s] // _ALIGN) * _ALIGN
            busy = sorted((o, e) for o, e, f, l in placed
                          if not (l < self.first[s] or self.last[s] < f))
            off = 0
            for o, e in busy:
                if off + size <= o:
                    break
                off = max(off, e)
            offsets[s] = off
            placed.append((off, off + size, self.first[s], self.last[s]))
            total = max(total, off + size)
        return offsets, total


def _small_m(rows, cols):
    """Whether a product of ``rows`` rows and ``cols`` output columns runs on the small-M
    kernel rather than the blocked GEMM (or the implicit convolution).  Measured on Zen 4,
    1 thread, a program of one step (us, small-M vs GEMM): 1x64x576 2.9 vs 4.0, 9x64x576 7.9 vs
    9.1, 16x64x576 equal; fewer than 16 columns fall to its scalar column loop, which loses."""
    return rows <= _SMALL_M_ROWS and cols >= 16


def _aligned_bytes(n):
    raw = np.empty(n + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + n]


# ------------------------------------------------------------------------------ the public API
class CompiledModel:
    """A model compiled for inference (see the module docstring).

    ``compiled(x, out=None)`` runs the whole batch x (a list of arrays for several inputs)
    and returns the output array (a list for several outputs), written into ``out`` when
    given.  ``predict(x, batch_size=None, verbose=0)`` runs in batches like Model.predict.
    """

    def __init__(self, model, live=False):
        self._low = _Lowering(model, live)
        self.model = model
        self.dtype = self._low.dtype
        self._in_shapes = [tuple(self._low.shapes[t]) for t in self._low.inputs]
        self._out_shapes = [tuple(self._low.shapes[t]) for t in self._low.outputs]
        self._single_in = len(self._in_shapes) == 1
        self._single_out = len(self._out_shapes) == 1
        self._local = threading.local()

    @property
    def input_shape(self):
        shapes = [(None,) + s for s in self._in_shapes]
        return shapes[0] if self._single_in else shapes

    @property
    def output_shape(self):
        shapes = [(None,) + s for s in self._out_shapes]
        return shapes[0] if self._single_out else shapes

    def refresh(self):
        """Re-read the model's weights (after training or set_weights)."""
        if self._low.weights.stale() or self._low.graph is not self.model._node_info:
            self._low = _Lowering(self.model, self._low.weights.live)
            self._local = threading.local()
        else:
            self._low.weights.refresh()

    def _program(self, n):
        local = self._local
        key = (n, config.get_num_threads())
        if getattr(local, "last_key", None) == key:      # the common case: same as last call
            return local.last
        progs = getattr(local, "programs", None)
        if progs is None:
            progs = local.programs = OrderedDict()
        prog = progs.get(key)
        if prog is None:
            prog = _Planner(self._low, n, key[1]).program()
            progs[key] = prog
            if len(progs) > _PLANS_PER_THREAD:
                progs.popitem(last=False)
        else:
            progs.move_to_end(key)
        local.last_key, local.last = key, prog
        return prog

    def _inputs(self, x):
        """x as a list of C-contiguous arrays of the model's dtype, shapes checked."""
        xs = [x] if self._single_in else x
        if not self._single_in and (not isinstance(xs, (list, tuple)) or
                                    len(xs) != len(self._in_shapes)):
            raise TypeError(f"inputs: expected a list of {len(self._in_shapes)} arrays")
        out = []
        for i, (v, shape) in enumerate(zip(xs, self._in_shapes)):
            if type(v) is not np.ndarray or v.dtype != self.dtype or not v.flags.c_contiguous:
                v = np.asarray(v)
                if v.dtype.kind not in "fiub":
                    raise TypeError(f"input {i} must hold real numbers, got dtype {v.dtype}")
                v = np.ascontiguousarray(v, dtype=self.dtype)
            if v.ndim != len(shape) + 1 or v.shape[1:] != shape or v.shape[0] < 1:
                raise ValueError(f"input {i} must have shape (batch >= 1, "
                                 f"{', '.join(map(str, shape))}), got {v.shape}")
            out.append(v)
        if len({v.shape[0] for v in out}) != 1:
            raise ValueError(f"the inputs have different batch sizes {[v.shape[0] for v in out]}")
        return out

    def _outputs(self, n, out):
        if out is None:
            return [np.empty((n,) + s, self.dtype) for s in self._out_shapes]
        outs = [out] if self._single_out else list(out)
        if len(outs) != len(self._out_shapes):
            raise ValueError(f"out must be {len(self._out_shapes)} arrays")
        for i, (o, s) in enumerate(zip(outs, self._out_shapes)):
            if type(o) is not np.ndarray or o.dtype != self.dtype or o.shape != (n,) + s \
                    or not o.flags.c_contiguous or not o.flags.writeable:
                raise ValueError(f"out[{i}] must be a writeable C-contiguous {self.dtype} array "
                                 f"of shape {(n,) + s}")
        return outs

    def __call__(self, x, out=None):
        if self._single_in and self._single_out and type(x) is np.ndarray and \
                x.dtype == self.dtype and x.shape[1:] == self._in_shapes[0] and x.shape[0] and \
                x.flags.c_contiguous:        # the fast path: nothing to convert (Program checks
            n = x.shape[0]                   # the sizes, dtypes and layouts again)
            if out is None:
                out = np.empty((n,) + self._out_shapes[0], self.dtype)
            elif type(out) is not np.ndarray or out.shape != (n,) + self._out_shapes[0]:
                self._outputs(n, out)        # raises the explanatory error
            return self._program(n).run1(x, out)
        xs = self._inputs(x)
        n = xs[0].shape[0]
        outs = self._outputs(n, out)
        self._program(n).run(xs, outs)
        return outs[0] if self._single_out else outs

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for every sample of x, computed ``batch_size`` (default 32) at a time."""
        from fastnet.models.model import _check_batch_size, _check_verbose
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        xs = [np.asarray(v) for v in ([x] if self._single_in else x)]
        n = xs[0].shape[0] if xs and xs[0].ndim else 0
        if n == 0:
            raise ValueError("predict: x is empty; need at least one sample")
        if n <= batch_size and verbose == 0 and self._single_in and self._single_out:
            xb = self._inputs(xs[0])[0]          # one batch: one run, no progress bar
            return self._program(n).run1(xb, np.empty((n,) + self._out_shapes[0], self.dtype))
        from fastnet.utils.progbar import Progbar
        results = [np.empty((n,) + s, self.dtype) for s in self._out_shapes]
        steps = -(-n // batch_size)
        bar = Progbar(steps, verbose=verbose)
        for step in range(steps):
            lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
            xb = self._inputs([v[lo:hi] for v in xs] if not self._single_in else xs[0][lo:hi])
            self._program(hi - lo).run(xb, [r[lo:hi] for r in results])
            bar.update(step + 1)
        return results[0] if self._single_out else results

    def profile(self, x, calls=100):
        """[(step kind, mean seconds per call)] of the planned steps over ``calls`` runs on
        the batch x: where the compiled forward pass spends its time."""
        xs = self._inputs(x)
        n = xs[0].shape[0]
        prog = self._program(n)
        times = prog.step_times(xs, self._outputs(n, None), int(calls))
        return list(zip(prog.step_kinds(), times))

    def plan(self, batch_size=1):
        """The kernel steps a batch of ``batch_size`` runs, by kind (for inspection)."""
        return self._program(batch_size).step_kinds()


def compile(model):
    """A ``CompiledModel`` of ``model`` (built), with a snapshot of its weights."""
    return CompiledModel(model, live=False)


def predict(model, xs, batch_size, verbose):
    """``Model.predict`` through a per-thread live compilation: ``xs`` the checked inputs."""
    local = _predict_locals.get(model)
    if local is None:
        with _layer_locks_guard:
            local = _predict_locals.get(model)
            if local is None:
                local = _predict_locals[model] = threading.local()
    compiled = getattr(local, "compiled", None)
    if compiled is None or compiled._low.graph is not model._node_info or \
            compiled._low.weights.stale():
        compiled = local.compiled = CompiledModel(model, live=True)
    else:
        compiled._low.weights.refresh()
    return compiled.predict(xs if len(xs) > 1 else xs[0], batch_size=batch_size,
                            verbose=verbose)
