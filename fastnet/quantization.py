"""Post-training int8 quantization: ``fastnet.quantize(model, calibration_data)``.

The result, a :class:`QuantizedModel`, runs inference with 8-bit integer arithmetic:

* weights: int8, symmetric, one scale per output channel (``sw = max|W[:, j]| / 127``);
  a BatchNormalization after a Conv2D/Dense is folded into its kernel and bias first;
* activations: uint8 with one scale and zero point per tensor, calibrated by running the float
  model on ``calibration_data`` (``method='minmax'``: the observed range; ``'percentile'``:
  the range between the ``100 - p`` and ``p`` percentiles of a histogram, which ignores
  outliers); the range always includes 0, so 0 (and the padding) is exact;
* Conv2D and Dense: uint8 x int8 products summed in int32 (``fastnet.ops.int8``, AVX-512 VNNI
  where the CPU has it), then one fused epilogue: zero-point correction, bias, ReLU and
  requantization to the next layer's uint8 scale (or dequantization to float32 before a float
  layer and at the end);
* MaxPooling2D runs on the uint8 codes (max commutes with the monotone quantization map, so the
  scale is unchanged), AveragePooling2D too (rounded mean), Flatten/Reshape are views and
  Dropout vanishes;
* any other layer (a softmax at the end, GELU, ...) runs in float32 between a dequantization and,
  if an int8 layer follows, a quantization calibrated at that point.

Supports models whose layers form one chain (every Sequential).  ``QuantizedModel.save(path)``
writes a fastnet zip (JSON + .npy, no pickle, checksummed, the same reader as model files);
``load_quantized(path)`` reads it back.  ``fastnet quantize MODEL.fnet OUT`` does both from the
command line.

>>> qmodel = fastnet.quantize(model, x_train[:500])
>>> probs = qmodel.predict(x_test)
"""
import numbers
import sys
import threading
from collections import OrderedDict

import numpy as np

from fastnet import config
from fastnet._kernels import int8 as _K
from fastnet.ops import int8 as q8
from fastnet.ops._checks import as_real_array

__all__ = ["quantize", "QuantizedModel", "load_quantized", "quantize_weights",
           "choose_qparams"]

_KIND = "quantized_model"
_PLANS_PER_THREAD = 4       # batch sizes whose buffers a thread keeps
_MAX_DIM = 1 << 20          # any single dimension in a loaded file
_MAX_ELEMENTS = 1 << 31     # elements of any single array in a loaded file


# ---- number formats -------------------------------------------------------------------------
def choose_qparams(lo, hi):
    """(scale, zero_point) of the uint8 format covering [lo, hi] widened to include 0, so that
    a real 0 is exactly representable (zero padding, ReLU outputs)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"calibration saw non-finite values (range [{lo}, {hi}])")
    if hi - lo < 1e-30:
        return 1.0, 0
    scale = float(np.float32((hi - lo) / 255.0))
    zero_point = int(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zero_point


def quantize_weights(kernel):
    """Per-output-channel symmetric int8 weights of a (..., out) kernel.

    Returns (w (K, out) int8 in [-127, 127], scales (out,) float64) with K the product of the
    leading axes: kernel[..., j] ~= w[:, j] * scales[j]."""
    w = np.asarray(kernel, dtype=np.float64).reshape(-1, np.shape(kernel)[-1])
    if not np.isfinite(w).all():
        raise ValueError("the kernel holds NaN or infinite values")
    scales = np.abs(w).max(axis=0) / 127.0
    scales[scales == 0.0] = 1.0     # an all-zero channel: any scale gives 0
    wq = np.clip(np.rint(w / scales), -127, 127).astype(np.int8)
    return wq, scales


# ---- stages of a quantized model ------------------------------------------------------------
def _int(v, what, lo=0, hi=_MAX_DIM):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _float(v, what, positive=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) \
            or (positive and not v > 0):
        raise ValueError(f"{what} must be a finite{' positive' if positive else ''} number, "
                         f"got {v!r}")
    return float(v)


def _ints(v, what, n):
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ValueError(f"{what} must be a list of {n} integers, got {v!r}")
    return tuple(_int(s, what, 1) for s in v)


def _qparams(v, what):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"{what} must be [scale, zero_point], got {v!r}")
    return _float(v[0], f"{what} scale", positive=True), _int(v[1], f"{what} zero point", 0, 255)


class _Stage:
    """One step of a quantized forward: ``run(x, out)`` with ``out`` a buffer of
    ``out_shape`` / ``out_dtype`` (None: the stage returns a view or its own array)."""

    out_dtype = None
    arrays = ()      # names of the stage's arrays in a file

    def build(self, in_shape, in_dtype):
        """Check the input (per-sample shape, dtype) and set ``out_shape``."""
        raise NotImplementedError

    def get_config(self):
        return {}

    def get_arrays(self):
        return {}

    @classmethod
    def array_specs(cls, config):
        """{name: (shape, dtype)} the stage's file arrays must have, from its config."""
        return {}

    def bind(self, x, out):
        """A no-argument function running this stage on the planned arrays x -> out, calling
        the kernel directly (``run`` validated the same call when the plan was made)."""
        return lambda: self.run(x, out)

    def describe(self):
        return type(self).__name__.lstrip("_")


class _Quantize(_Stage):
    out_dtype = np.dtype(np.uint8)

    def __init__(self, qparams):
        self.scale, self.zero_point = qparams

    def build(self, in_shape, in_dtype):
        if in_dtype != np.float32:
            raise ValueError("Quantize needs a float32 input")
        self.out_shape = in_shape

    def run(self, x, out):
        return q8.quantize(x, self.scale, self.zero_point, out=out)

    def bind(self, x, out):
        inv, zp = float(np.float32(1.0 / self.scale)), self.zero_point
        return lambda: _K.quantize(x, out, inv, zp, config.get_num_threads())

    def get_config(self):
        return {"qparams": [self.scale, self.zero_point]}

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(_qparams(cfg.get("qparams"), "Quantize qparams"))

    def describe(self):
        return f"Quantize (scale {self.scale:.4g}, zero point {self.zero_point})"


class _Dequantize(_Quantize):
    out_dtype = np.dtype(np.float32)

    def build(self, in_shape, in_dtype):
        if in_dtype != np.uint8:
            raise ValueError("Dequantize needs a uint8 input")
        self.out_shape = in_shape

    def run(self, x, out):
        return q8.dequantize(x, self.scale, self.zero_point, out=out)

    def bind(self, x, out):
        scale, zp = float(np.float32(self.scale)), self.zero_point
        return lambda: _K.dequantize(x, out, scale, zp, config.get_num_threads())

    def describe(self):
        return f"Dequantize (scale {self.scale:.4g}, zero point {self.zero_point})"


class _QLinear(_Stage):
    """Shared by the int8 Conv2D and Dense: weights, scales and the fused epilogue.

    in_q / out_q: (scale, zero point) of the uint8 input / output; out_q None: float32 output.
    """

    arrays = ("kernel", "kernel_scale", "bias")

    def __init__(self, name, wq, w_scale, bias, in_q, out_q, relu):
        self.name = name
        self.wq = np.ascontiguousarray(wq, dtype=np.int8)
        self.w_scale = np.asarray(w_scale, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.in_q, self.out_q, self.relu = tuple(in_q), (tuple(out_q) if out_q else None), relu
        self.packed = q8.pack_weights(self.wq)
        s_in, zp_in = self.in_q
        # zero point correction: sum_p (q - zp) w = sum_p q w - zp * sum_p w
        self.corr = (-zp_in * self.packed.column_sums).astype(np.int32)
        if self.out_q is None:
            self.output = "float32"
            self.mult = (s_in * self.w_scale).astype(np.float32)
            self.add = self.bias.copy()
            self.lo, self.hi = (0.0 if relu else None), None
        else:
            s_out, zp_out = self.out_q
            self.output = "uint8"
            self.mult = (s_in * self.w_scale / s_out).astype(np.float32)
            self.add = (self.bias.astype(np.float64) / s_out + zp_out).astype(np.float32)
            self.lo, self.hi = (float(zp_out) if relu else 0.0), 255.0
        self.out_dtype = np.dtype(np.uint8 if self.out_q else np.float32)

    def _epilogue(self):
        return dict(output=self.output, corr=self.corr, scale=self.mult, offset=self.add,
                    lo=self.lo, hi=self.hi)

    def _kernel_epilogue(self):
        """(mode, corr, mult, add, lo, hi) as the kernels take them."""
        mode = _K.OUT_U8 if self.out_q else _K.OUT_F32
        lo = -np.inf if self.lo is None else self.lo
        hi = np.inf if self.hi is None else self.hi
        return mode, self.corr, self.mult, self.add, lo, hi

    def get_config(self):
        return {"name": self.name, "in_q": list(self.in_q),
                "out_q": list(self.out_q) if self.out_q else None, "relu": self.relu,
                "k": int(self.wq.shape[0]), "units": int(self.wq.shape[1])}

    def get_arrays(self):
        # int8 codes travel as their uint8 bytes (fastnet files hold no int8 dtype)
        return {"kernel": self.wq.view(np.uint8), "kernel_scale": self.w_scale,
                "bias": self.bias}

    @classmethod
    def _common_config(cls, cfg):
        k = _int(cfg.get("k"), "k", 1, q8._kernels.MAX_K)
        units = _int(cfg.get("units"), "units", 1)
        if k * units > _MAX_ELEMENTS:
            raise ValueError(f"a {k} x {units} kernel is too large")
        name = cfg.get("name")
        if not isinstance(name, str) or len(name) > 256:
            raise ValueError(f"malformed layer name {name!r}")
        out_q = cfg.get("out_q")
        relu = cfg.get("relu")
        if not isinstance(relu, bool):
            raise ValueError(f"relu must be true or false, got {relu!r}")
        return dict(name=name, in_q=_qparams(cfg.get("in_q"), "in_q"),
                    out_q=None if out_q is None else _qparams(out_q, "out_q"), relu=relu), k, units

    @classmethod
    def array_specs(cls, cfg):
        _, k, units = cls._common_config(cfg)
        return {"kernel": ((k, units), np.uint8), "kernel_scale": ((units,), np.float64),
                "bias": ((units,), np.float32)}

    @staticmethod
    def _weights(arrays):
        w_scale = arrays["kernel_scale"]
        if not (np.isfinite(w_scale).all() and (w_scale > 0).all()
                and np.isfinite(arrays["bias"]).all()):
            raise ValueError("kernel scales must be finite and positive, biases finite")
        return arrays["kernel"].view(np.int8), w_scale, arrays["bias"]


class _QConv2D(_QLinear):
    """pool (ph, pw) or None: a MaxPooling2D (strides = pool, 'valid') fused after the
    convolution, which needs a uint8 output."""

    def __init__(self, name, wq, w_scale, bias, in_q, out_q, relu, kernel_size, strides,
                 padding, pool=None):
        super().__init__(name, wq, w_scale, bias, in_q, out_q, relu)
        self.kernel_size, self.strides, self.padding = tuple(kernel_size), tuple(strides), padding
        self.pool = tuple(pool) if pool else None
        if self.pool and self.out_q is None:
            raise ValueError(f"{name}: a fused max pooling needs a uint8 output")

    def build(self, in_shape, in_dtype):
        kh, kw = self.kernel_size
        if in_dtype != np.uint8 or len(in_shape) != 3 or kh * kw * in_shape[2] != self.wq.shape[0]:
            raise ValueError(f"{self.name}: a {kh}x{kw} int8 convolution with K = "
                             f"{self.wq.shape[0]} cannot take a {in_dtype} input {in_shape}")
        (oh, ow), _ = q8.conv_geometry(in_shape[:2], self.kernel_size, self.strides,
                                       self.padding)
        if self.pool:
            if oh < self.pool[0] or ow < self.pool[1]:
                raise ValueError(f"{self.name}: pool {self.pool} larger than the output {oh, ow}")
            oh, ow = oh // self.pool[0], ow // self.pool[1]
        self.out_shape = (oh, ow, self.wq.shape[1])

    def run(self, x, out):
        return q8.qconv2d(x, self.packed, self.kernel_size, strides=self.strides,
                          padding=self.padding, zero_point=self.in_q[1], pool_size=self.pool,
                          out=out, **self._epilogue())

    def bind(self, x, out):
        (oh, ow), geom = q8.conv_geometry(x.shape[1:3], self.kernel_size, self.strides,
                                          self.padding)
        args = (x, geom + (oh, ow), self.packed.data, self.in_q[1], out) + \
            self._kernel_epilogue()
        pool = self.pool
        return lambda: _K.conv2d(*args, config.get_num_threads(), pool)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(kernel_size=list(self.kernel_size), strides=list(self.strides),
                   padding=self.padding, pool=list(self.pool) if self.pool else None)
        return cfg

    @classmethod
    def from_config(cls, cfg, arrays):
        common, _, _ = cls._common_config(cfg)
        padding = cfg.get("padding")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        pool = cfg.get("pool")
        return cls(common["name"], *cls._weights(arrays), common["in_q"], common["out_q"],
                   common["relu"], _ints(cfg.get("kernel_size"), "kernel_size", 2),
                   _ints(cfg.get("strides"), "strides", 2), padding,
                   None if pool is None else _ints(pool, "pool", 2))

    def describe(self):
        kh, kw = self.kernel_size
        pool = f" +max pool {self.pool[0]}x{self.pool[1]}" if self.pool else ""
        return (f"int8 Conv2D {self.name} {kh}x{kw}x{self.wq.shape[0] // (kh * kw)}"
                f"->{self.wq.shape[1]}{' +ReLU' if self.relu else ''}{pool} -> {self.output}")


class _QDense(_QLinear):
    def build(self, in_shape, in_dtype):
        if in_dtype != np.uint8 or len(in_shape) != 1 or in_shape[0] != self.wq.shape[0]:
            raise ValueError(f"{self.name}: an int8 Dense with {self.wq.shape[0]} inputs cannot "
                             f"take a {in_dtype} input {in_shape}")
        self.out_shape = (self.wq.shape[1],)

    def run(self, x, out):
        return q8.qgemm(x, self.packed, out=out, **self._epilogue())

    def bind(self, x, out):
        args = (x, self.packed.data, self.packed.n, out) + self._kernel_epilogue()
        return lambda: _K.gemm(*args, config.get_num_threads())

    @classmethod
    def from_config(cls, cfg, arrays):
        common, _, _ = cls._common_config(cfg)
        return cls(common["name"], *cls._weights(arrays), common["in_q"], common["out_q"],
                   common["relu"])

    def describe(self):
        return (f"int8 Dense {self.name} {self.wq.shape[0]}->{self.wq.shape[1]}"
                f"{' +ReLU' if self.relu else ''} -> {self.output}")


class _QPool(_Stage):
    out_dtype = np.dtype(np.uint8)

    def __init__(self, mode, pool_size, strides, padding):
        self.mode, self.pool_size, self.strides, self.padding = mode, tuple(pool_size), \
            tuple(strides), padding

    def build(self, in_shape, in_dtype):
        if in_dtype != np.uint8 or len(in_shape) != 3:
            raise ValueError(f"int8 pooling cannot take a {in_dtype} input {in_shape}")
        (oh, ow), _ = q8.conv_geometry(in_shape[:2], self.pool_size, self.strides, self.padding)
        self.out_shape = (oh, ow, in_shape[2])

    def run(self, x, out):
        return q8.qpool2d(x, self.pool_size, self.strides, self.padding, mode=self.mode,
                          out=out)

    def bind(self, x, out):
        _, geom = q8.conv_geometry(x.shape[1:3], self.pool_size, self.strides, self.padding)
        average = self.mode == "average"
        return lambda: _K.pool2d(x, out, geom, average, config.get_num_threads())

    def get_config(self):
        return {"mode": self.mode, "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}

    @classmethod
    def from_config(cls, cfg, arrays):
        mode, padding = cfg.get("mode"), cfg.get("padding")
        if mode not in ("max", "average") or padding not in ("valid", "same"):
            raise ValueError(f"malformed pooling config {cfg!r}")
        return cls(mode, _ints(cfg.get("pool_size"), "pool_size", 2),
                   _ints(cfg.get("strides"), "strides", 2), padding)

    def describe(self):
        return f"int8 {self.mode} pool {self.pool_size[0]}x{self.pool_size[1]}"


class _Reshape(_Stage):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def build(self, in_shape, in_dtype):
        if int(np.prod(in_shape)) != int(np.prod(self.shape)):
            raise ValueError(f"cannot reshape {in_shape} to {self.shape}")
        self.out_shape = self.shape
        self.out_dtype = in_dtype

    def run(self, x, out):
        return x.reshape((x.shape[0],) + self.shape)

    def get_config(self):
        return {"shape": list(self.shape)}

    @classmethod
    def from_config(cls, cfg, arrays):
        shape = cfg.get("shape")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
            raise ValueError(f"malformed reshape {shape!r}")
        return cls(_ints(shape, "shape", len(shape)))

    def describe(self):
        return f"Reshape {self.shape}"


class _FloatActivation(_Stage):
    out_dtype = np.dtype(np.float32)

    def __init__(self, activation, alpha=None):
        from fastnet import activations
        self.activation = activations.get(activation)
        self.alpha = alpha

    def build(self, in_shape, in_dtype):
        if in_dtype != np.float32:
            raise ValueError("a float activation needs a float32 input")
        self.out_shape = in_shape

    def run(self, x, out):
        from fastnet.ops.activations import activation_forward
        return activation_forward(self.activation, x, out=out, alpha=self.alpha)

    def get_config(self):
        return {"activation": self.activation, "alpha": self.alpha}

    @classmethod
    def from_config(cls, cfg, arrays):
        alpha = cfg.get("alpha")
        if alpha is not None:
            alpha = _float(alpha, "alpha")
        return cls(cfg.get("activation"), alpha)

    def describe(self):
        return f"float32 {self.activation}"


class _FloatLayer(_Stage):
    """A layer with no int8 kernel, run in float32 as it is (its own buffers: serialized by a
    lock, so concurrent ``predict`` calls stay correct)."""

    out_dtype = np.dtype(np.float32)

    def __init__(self, layer):
        self.layer = layer
        self.lock = threading.Lock()

    @classmethod
    def copy_of(cls, layer):
        """A stage over a copy of ``layer`` (same config and weights, its own buffers)."""
        clone = type(layer).from_config(layer.get_config())
        clone.build(layer.input_shape)
        clone.set_weights(layer.get_weights())
        return cls(clone)

    def build(self, in_shape, in_dtype):
        if in_dtype != np.float32:
            raise ValueError(f"{self.layer.name} needs a float32 input")
        if not self.layer.built:
            self.layer.build(in_shape)
        elif self.layer.input_shape != tuple(in_shape):
            raise ValueError(f"{self.layer.name} was built for {self.layer.input_shape}, "
                             f"receives {in_shape}")
        self.out_shape = tuple(self.layer.output_shape)

    def run(self, x, out):
        with self.lock:
            y = self.layer.forward(x.astype(self.layer.dtype, copy=False), False)
            np.copyto(out, y, casting="same_kind")
        return out

    def get_config(self):
        return {"layer": {"class_name": type(self.layer).__name__,
                          "config": self.layer.get_config()},
                "weights": len(self.layer.params)}

    def get_arrays(self):
        return {f"w{i}": w for i, w in enumerate(self.layer.get_weights())}

    def describe(self):
        return f"float32 {type(self.layer).__name__} {self.layer.name}"


_STAGES = {cls.__name__.lstrip("_"): cls for cls in
           (_Quantize, _Dequantize, _QConv2D, _QDense, _QPool, _Reshape, _FloatActivation,
            _FloatLayer)}


# ---- the model ------------------------------------------------------------------------------
class QuantizedModel:
    """An int8 inference model (from :func:`quantize` or :func:`load_quantized`).

    ``predict(x)`` takes float inputs shaped like the float model's and returns float32
    outputs; buffers are planned per batch size and reused, per thread (concurrent ``predict``
    calls from several threads are safe; each thread keeps its last 4 batch sizes)."""

    def __init__(self, stages, input_shape, name="quantized"):
        self.stages = list(stages)
        self.name = name
        self._input_shape = tuple(int(s) for s in input_shape)
        shape, dtype = self._input_shape, np.dtype(np.float32)
        for st in self.stages:
            st.build(shape, dtype)
            shape = tuple(st.out_shape)
            dtype = st.out_dtype if st.out_dtype is not None else dtype
        if dtype != np.float32:
            raise ValueError("a quantized model must end in float32")
        self._output_shape = shape
        self._local = threading.local()

    @property
    def input_shape(self):
        return (None,) + self._input_shape

    @property
    def output_shape(self):
        return (None,) + self._output_shape

    def _plan(self, n):
        """This thread's plan for batch size n, made once: (input buffer, output array, the
        stages bound to their buffers).  Making it runs every stage once through the checked
        ops, so the bound kernel calls are known to be valid."""
        cache = getattr(self._local, "plans", None)
        if cache is None:
            cache = self._local.plans = OrderedDict()
        plan = cache.get(n)
        if plan is not None:
            cache.move_to_end(n)
        else:
            if len(cache) >= _PLANS_PER_THREAD:   # least recently used batch size goes
                cache.popitem(last=False)
            x0 = x = np.zeros((n,) + self._input_shape, np.float32)
            calls = []
            for st in self.stages:
                out = None if isinstance(st, _Reshape) else \
                    np.empty((n,) + tuple(st.out_shape), st.out_dtype)
                y = st.run(x, out)
                if out is not None:
                    calls.append(st.bind(x, out))
                x = y
            plan = cache[n] = (x0, x, calls)
        return plan

    def _forward(self, xb):
        """Outputs of one batch (checked by _check_x) in this thread's planned buffer."""
        x0, y, calls = self._plan(xb.shape[0])
        np.copyto(x0, xb, casting="unsafe")
        if xb.dtype.kind == "f" and not np.isfinite(x0).all():
            raise ValueError("x holds NaN or infinite values")
        for call in calls:
            call()
        return y

    def _check_x(self, x, what):
        x = as_real_array(x, f"{what}: x")
        if x.ndim < 1 or x.shape[1:] != self._input_shape or x.shape[0] == 0:
            raise ValueError(f"{what}: x must have shape (batch, "
                             f"{', '.join(map(str, self._input_shape))}) with batch >= 1, "
                             f"got {x.shape}")
        return x

    def predict(self, x, batch_size=None, verbose=0):
        """float32 outputs (samples, *output_shape) for every sample of x, in batches."""
        from fastnet.utils.progbar import Progbar
        x = self._check_x(x, "predict")
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = x.shape[0]
        result = np.empty((n,) + self._output_shape, np.float32)
        steps = -(-n // batch_size)
        bar = Progbar(steps, verbose=verbose)
        for step in range(steps):
            lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
            result[lo:hi] = self._forward(x[lo:hi])
            bar.update(step + 1)
        return result

    def __call__(self, x):
        """Outputs of one batch x (a new float32 array): ``predict`` without batching."""
        x = self._check_x(x, "call")
        return self._forward(x).copy()

    def weight_bytes(self):
        """Bytes of the int8 kernels plus float scales and biases (and any float layer)."""
        total = 0
        for st in self.stages:
            total += sum(a.nbytes for a in st.get_arrays().values())
        return total

    def summary(self, print_fn=None):
        print_fn = print_fn or print
        print_fn(f'Quantized model "{self.name}": input {self.input_shape}, output '
                 f'{self.output_shape}, int8 path {q8.isa()}')
        for st in self.stages:
            print_fn(f"  {st.describe()}")
        print_fn(f"Weights: {self.weight_bytes():,} bytes")

    # -- files ---------------------------------------------------------------------------
    def save(self, path):
        """Write the quantized model to ``path`` (atomic; the fastnet zip format)."""
        from fastnet import saving
        stages, arrays = [], {}
        for i, st in enumerate(self.stages):
            stages.append({"class_name": type(st).__name__.lstrip("_"),
                           "config": st.get_config()})
            for name, arr in st.get_arrays().items():
                arrays[f"s{i}_{name}"] = arr
        meta = {"format": saving.FORMAT, "version": saving.VERSION, "kind": _KIND,
                "quantized": {"name": self.name, "input_shape": list(self._input_shape),
                              "stages": stages}}
        saving._write(path, meta, arrays)


def load_quantized(path):
    """Read a model written by ``QuantizedModel.save``.  The file is checked as model files are
    (no pickle, checksums, shapes from the configuration before any array is read)."""
    from fastnet import layers as layers_mod
    from fastnet import saving
    from fastnet.layers.base import Layer
    from fastnet.utils import serialization as _serial

    reader = saving._Reader(path)
    try:
        if reader.meta.get("kind") != _KIND:
            raise ValueError(f"{path} holds no quantized model (kind "
                             f"{reader.meta.get('kind')!r}); load it with "
                             f"fastnet.models.load_model")
        spec = reader.meta.get("quantized")
        if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
            raise ValueError(f"{path}: malformed quantized model description")
        input_shape = spec.get("input_shape")
        if not isinstance(input_shape, list) or not 1 <= len(input_shape) <= 8:
            raise ValueError(f"{path}: malformed input shape {input_shape!r}")
        input_shape = _ints(input_shape, "input_shape", len(input_shape))
        plans = []
        for i, entry in enumerate(spec["stages"]):
            if not isinstance(entry, dict) or entry.get("class_name") not in _STAGES \
                    or not isinstance(entry.get("config"), dict):
                raise ValueError(f"{path}: stage {i} is not a known quantized stage")
            cls, cfg = _STAGES[entry["class_name"]], entry["config"]
            if cls is _FloatLayer:
                layer = _serial.deserialize(cfg.get("layer"),
                                            lambda n: getattr(layers_mod, n, None), Layer,
                                            "layer")
                specs = None
            else:
                specs = cls.array_specs(cfg)
            plans.append((cls, cfg, layer if cls is _FloatLayer else None, specs))
        # every array's size is known from the configuration before any is read
        reader.check_fits([s for _, _, _, specs in plans if specs for s in specs.values()])
        stages, shape, dtype = [], input_shape, np.dtype(np.float32)
        for i, (cls, cfg, layer, specs) in enumerate(plans):
            if cls is _FloatLayer:
                st = _FloatLayer(layer)
                st.build(shape, dtype)
                n = _int(cfg.get("weights"), "weights", 0, 1 << 16)
                if n != len(layer.params):
                    raise ValueError(f"{path}: stage {i} ({layer.name}) has {len(layer.params)} "
                                     f"weights, the file says {n}")
                layer.set_weights([reader.array(f"s{i}_w{j}", w.shape, w.dtype)
                                   for j, w in enumerate(layer.params.values())])
            else:
                arrays = {name: reader.array(f"s{i}_{name}", s, d)
                          for name, (s, d) in specs.items()}
                st = cls.from_config(cfg, arrays)
                st.build(shape, dtype)
            stages.append(st)
            shape = tuple(st.out_shape)
            dtype = st.out_dtype if st.out_dtype is not None else dtype
        name = spec.get("name")
        return QuantizedModel(stages, input_shape,
                              name=name if isinstance(name, str) else "quantized")
    except (TypeError, KeyError) as e:
        raise ValueError(f"{path}: malformed quantized model: {e}") from None
    finally:
        reader.close()


# ---- planning and calibration ---------------------------------------------------------------
class _Op:
    """A step of the float model as the quantizer sees it: layers [first, last] fused."""

    def __init__(self, kind, first, last, **attrs):
        self.kind, self.first, self.last = kind, first, last
        self.__dict__.update(attrs)


def _chain_layers(model):
    """The model's layers, checked to form one chain from the input to the output."""
    if not getattr(model, "built", False):
        raise ValueError("quantize: the model is not built yet; fit it or call build first")
    layers = list(model.layers)
    if not layers:
        raise ValueError("quantize: the model has no layers")
    shape = tuple(model.input_shape[1:])
    for layer in layers:
        if getattr(layer, "multi_input", False) or isinstance(layer.output_shape, list) \
                or tuple(layer.input_shape) != shape:
            raise ValueError(f"quantize supports models whose layers form one chain (every "
                             f"Sequential); {layer.name} breaks the chain")
        shape = tuple(layer.output_shape)
    if tuple(model.output_shape[1:]) != shape:
        raise ValueError("quantize supports models whose layers form one chain")
    return layers


def _is_relu_layer(layer):
    from fastnet.layers.activation_layers import ReLU
    from fastnet.layers.core import Activation
    return (type(layer) is Activation and layer.activation == "relu") or \
        (type(layer) is ReLU and layer.activation == "relu")


def _plan(layers):
    """The float model as a list of _Op: Conv2D/Dense with a folded BatchNormalization and a
    fused ReLU, pools, reshapes, identities and float layers."""
    from fastnet.layers.conv import Conv2D
    from fastnet.layers.core import Activation, Dense, Flatten, InputLayer
    from fastnet.layers.normalization import BatchNormalization, fold_batchnorm
    from fastnet.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D,
                                        GlobalMaxPooling2D, MaxPooling2D)
    from fastnet.layers.regularization import Dropout
    from fastnet.layers.reshaping import Reshape

    ops, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if type(layer) in (Conv2D, Dense):
            kernel, bias = layer.params["kernel"], layer.params.get("bias")
            j = i + 1
            act, alpha = layer.activation, getattr(layer, "activation_alpha", None)
            nxt = layers[j] if j < len(layers) else None
            if act is None and type(nxt) is BatchNormalization and nxt.axis in (
                    -1, len(layer.output_shape)):
                kernel, bias = fold_batchnorm(kernel, bias, nxt)
                j += 1
            while j < len(layers) and act is None and (
                    _is_relu_layer(layers[j]) or (type(layers[j]) is Activation
                                                  and layers[j].activation is None)):
                act = layers[j].activation
                j += 1
            if bias is None:
                bias = np.zeros(kernel.shape[-1])
            relu = act == "relu"
            kind = "conv" if type(layer) is Conv2D else "dense"
            extra = dict(kernel_size=layer.kernel_size, strides=layer.strides,
                         padding=layer.padding) if kind == "conv" else {}
            float_act = None if act in (None, "relu") else (act, alpha)
            ops.append(_Op(kind, i, j - 1, name=layer.name, kernel=np.asarray(kernel),
                           bias=np.asarray(bias), relu=relu, float_act=float_act, **extra))
            i = j
            continue
        if type(layer) in (MaxPooling2D, AveragePooling2D):
            ops.append(_Op("pool", i, i, layer=layer,
                           mode="max" if type(layer) is MaxPooling2D else "average",
                           pool_size=layer.pool_size, strides=layer.strides,
                           padding=layer.padding))
        elif type(layer) in (GlobalMaxPooling2D, GlobalAveragePooling2D):
            h, w = layer.input_shape[:2]
            ops.append(_Op("pool", i, i, layer=layer,
                           mode="max" if type(layer) is GlobalMaxPooling2D else "average",
                           pool_size=(h, w), strides=(h, w), padding="valid"))   # one window
            ops.append(_Op("reshape", i, i, shape=tuple(layer.output_shape)))
        elif type(layer) in (Flatten, Reshape):
            ops.append(_Op("reshape", i, i, shape=tuple(layer.output_shape)))
        elif type(layer) in (Dropout, InputLayer) or (type(layer) is Activation
                                                      and layer.activation is None):
            ops.append(_Op("identity", i, i))
        else:
            ops.append(_Op("float", i, i, layer=layer))
        i += 1
    return ops


def _batches(data, batch_size):
    """Calibration batches (float32, C-contiguous) from an array or an iterable of arrays."""
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], np.ndarray) \
            and data[0].ndim >= 2 and len({d.shape[1:] for d in data}) == 1 and len(data) > 1:
        for d in data:
            yield from _batches(d, batch_size)
        return
    x = np.asarray(data)
    if x.dtype.kind not in "fiub" or x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"calibration_data must be a non-empty array of samples, got "
                         f"{x.dtype} {x.shape}")
    for lo in range(0, x.shape[0], batch_size):
        yield np.ascontiguousarray(x[lo:lo + batch_size], dtype=np.float32)


class _RangeObserver:
    """Running min/max of one tensor and, in a second pass, a histogram for percentiles."""

    BINS = 2048

    def __init__(self):
        self.lo, self.hi, self.hist = np.inf, -np.inf, None

    def observe(self, x):
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def observe_hist(self, x):
        if self.hist is None:
            self.hist = np.zeros(self.BINS, np.int64)
        if self.hi > self.lo:
            h, _ = np.histogram(x, bins=self.BINS, range=(self.lo, self.hi))
            self.hist += h

    def qparams(self, percentile=None):
        lo, hi = self.lo, self.hi
        if percentile is not None and self.hist is not None and self.hi > self.lo:
            cdf = np.cumsum(self.hist) / max(int(self.hist.sum()), 1)
            edges = np.linspace(self.lo, self.hi, self.BINS + 1)
            q = percentile / 100.0
            lo = float(edges[np.searchsorted(cdf, 1.0 - q, side="left")])
            hi = float(edges[min(np.searchsorted(cdf, q, side="left") + 1, self.BINS)])
        return choose_qparams(lo, hi)


def _calibrate(model, layers, data, batch_size, method):
    """Observers of the model input (key -1) and of every layer's output (key = index)."""
    observers = {i: _RangeObserver() for i in range(-1, len(layers))}
    dtype = model.dtype
    passes = ("observe",) if method == "minmax" else ("observe", "observe_hist")
    seen = 0
    for what in passes:
        seen = 0
        for xb in _batches(data, batch_size):
            if xb.shape[1:] != tuple(model.input_shape[1:]):
                raise ValueError(f"calibration_data must have samples of shape "
                                 f"{tuple(model.input_shape[1:])}, got {xb.shape[1:]}")
            if not np.isfinite(xb).all():
                raise ValueError("calibration_data holds NaN or infinite values")
            seen += xb.shape[0]
            getattr(observers[-1], what)(xb)
            x = xb.astype(dtype, copy=False)
            for i, layer in enumerate(layers):
                x = layer.forward(x, False)
                getattr(observers[i], what)(x)
    if seen == 0:
        raise ValueError("calibration_data holds no samples")
    return observers


def _next_consumer_is_int8(ops, k):
    """True when op k's output reaches a Conv2D/Dense through pools, reshapes and identities
    only (so it should stay uint8)."""
    for op in ops[k + 1:]:
        if op.kind in ("conv", "dense"):
            return True
        if op.kind not in ("pool", "reshape", "identity"):
            return False
    return False


def quantize(model, calibration_data, *, method="minmax", percentile=99.99, batch_size=64):
    """An int8 :class:`QuantizedModel` of the float ``model``, calibrated on
    ``calibration_data`` (samples shaped like the model's input, e.g. a few hundred training
    images; an array or a list of batches).

    ``method``: 'minmax' (activation ranges as observed) or 'percentile' (the ``100 -
    percentile`` .. ``percentile`` range of a 2048-bin histogram per tensor; a second pass).
    The float model is not modified.

    >>> qmodel = fastnet.quantize(model, x_train[:500])
    >>> (qmodel.predict(x_test).argmax(1) == y_test).mean()
    """
    if method not in ("minmax", "percentile"):
        raise ValueError(f"method must be 'minmax' or 'percentile', got {method!r}")
    if method == "percentile":
        percentile = _float(percentile, "percentile")
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    else:
        percentile = None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = _chain_layers(model)
    ops = _plan(layers)
    observers = _calibrate(model, layers, calibration_data, int(batch_size), method)

    stages, domain, qp, point, fused = [], "f32", None, -1, set()
    for k, op in enumerate(ops):
        if k in fused:
            point = op.last
            continue
        if op.kind in ("conv", "dense"):
            if domain == "f32":
                qp = observers[point].qparams(percentile)
                stages.append(_Quantize(qp))
            wq, w_scale = quantize_weights(op.kernel)
            out_u8 = op.float_act is None and _next_consumer_is_int8(ops, k)
            out_q = observers[op.last].qparams(percentile) if out_u8 else None
            if op.kind == "conv":
                nxt = ops[k + 1] if k + 1 < len(ops) else None
                pool = None
                if out_u8 and nxt is not None and nxt.kind == "pool" and nxt.mode == "max" \
                        and nxt.padding == "valid" and tuple(nxt.strides) == tuple(nxt.pool_size):
                    pool = tuple(nxt.pool_size)   # fused: the conv output never hits memory
                    fused.add(k + 1)
                stages.append(_QConv2D(op.name, wq, w_scale, op.bias, qp, out_q, op.relu,
                                       op.kernel_size, op.strides, op.padding, pool))
            else:
                stages.append(_QDense(op.name, wq, w_scale, op.bias, qp, out_q, op.relu))
            if op.float_act is not None:
                stages.append(_FloatActivation(*op.float_act))
            domain, qp = ("u8", out_q) if out_u8 else ("f32", None)
        elif op.kind == "pool":
            stages.append(_QPool(op.mode, op.pool_size, op.strides, op.padding)
                          if domain == "u8" else _FloatLayer.copy_of(op.layer))
        elif op.kind == "reshape":
            stages.append(_Reshape(op.shape))
        elif op.kind == "float":
            if domain == "u8":
                stages.append(_Dequantize(qp))
                domain, qp = "f32", None
            stages.append(_FloatLayer.copy_of(op.layer))
        point = op.last
    if domain == "u8":
        stages.append(_Dequantize(qp))
    return QuantizedModel(stages, model.input_shape[1:], name=f"{model.name}_int8")


# ---- command line ---------------------------------------------------------------------------
def cli_main(args):
    """``fastnet quantize MODEL OUT``: quantize a saved model, write the int8 model to OUT and
    report sizes and the float/int8 agreement on the calibration samples."""
    import os

    from fastnet import models

    model = models.load_model(args.model, compile=False)
    if args.calibration is not None:
        x = np.load(args.calibration, allow_pickle=False)
        source = args.calibration
    elif tuple(model.input_shape[1:]) == (28, 28, 1):
        from fastnet import datasets
        (x, _), _ = datasets.load_digits()
        source = "the bundled MNIST training images"
    else:
        print(f"fastnet quantize: the model takes inputs {model.input_shape}; give calibration "
              f"samples with --calibration FILE.npy", file=sys.stderr)
        return 2
    x = np.asarray(x)[:args.samples]
    qmodel = quantize(model, x, method=args.method, percentile=args.percentile,
                      batch_size=args.batch_size)
    qmodel.save(args.out)
    qmodel.summary()
    agree = float(np.mean(model.predict(x, batch_size=256, verbose=0).reshape(len(x), -1)
                          .argmax(1) == qmodel.predict(x, batch_size=256).reshape(len(x), -1)
                          .argmax(1)))
    print(f"calibrated on {len(x)} samples of {source} ({args.method})")
    print(f"top-1 agreement with the float model on them: {agree:.4f}")
    print(f"wrote {args.out}: {os.path.getsize(args.out):,} bytes (float model file "
          f"{os.path.getsize(args.model):,} bytes)")
    return 0
