"""int8 inference ops: the uint8 x int8 GEMM and convolution with int32 accumulation and a
requantizing epilogue, uint8 pooling, and float32 <-> uint8 (de)quantization.

Number formats (``fastnet.quantize`` builds models on them):
  activations  uint8 q with a per-tensor scale s and zero point zp: x = (q - zp) * s
  weights      int8 w in [-127, 127] per output channel j with scale sw[j]: W = w * sw[j]

The GEMM/convolution computes, per output (i, j), the exact int32 ``acc = sum_p a[i,p] b[p,j]``
and then, by ``output``:
  'int32'    acc
  'float32'  f = min(max(float(acc + corr[j]) * scale[j] + offset[j], lo), hi)
  'uint8'    rint(f) with 0 <= lo <= hi <= 255 (round half to even)
in float32, multiply then add (never fused), so every ISA path gives the same bits as this
NumPy formula.  With corr = -zp * w.sum(axis=0), scale = s * sw / s_out and
offset = bias / s_out + zp_out the uint8 output is the next layer's quantized input, and
lo = zp_out is a ReLU.

Shapes::

    qgemm:   a (M, K) uint8, packed weights of (K, N)              -> (M, N)
    qconv2d: x (N, H, W, C) uint8, packed kernel (kh, kw, C, F)      -> (N, OH, OW, F)
             OH as fastnet.ops.conv ('valid' / TensorFlow 'same'); padding stands for a real 0,
             so padded inputs read as the zero point; optionally max-pooled in the same pass
    qpool2d: x (N, H, W, C) uint8 -> (N, OH, OW, C), max or average (rounded half up)

Example::

    >>> packed = pack_weights(w_int8)                  # (K, N) int8, once
    >>> y = qgemm(a_uint8, packed, output="int32")     # exact a @ w
"""
import numbers

import numpy as np

from fastnet import config
from fastnet._kernels import int8 as _kernels
from fastnet.ops._checks import check_out, check_padding, conv_output_size, pair

__all__ = ["PackedWeights", "pack_weights", "qgemm", "qconv2d", "qpool2d", "quantize",
           "dequantize", "isa", "available_isas", "set_isa"]

_OUTPUTS = {"int32": (_kernels.OUT_S32, np.dtype(np.int32)),
            "float32": (_kernels.OUT_F32, np.dtype(np.float32)),
            "uint8": (_kernels.OUT_U8, np.dtype(np.uint8))}

isa = _kernels.isa
available_isas = _kernels.available_isas
set_isa = _kernels.set_isa


class PackedWeights:
    """A (K, N) int8 matrix packed for the int8 GEMM (any ISA path reads the same layout).

    ``k``, ``n``: the matrix shape; ``data``: the packed bytes; ``column_sums``: int64 (N,)
    sums of each column (the zero-point correction is ``-zp * column_sums``)."""

    __slots__ = ("k", "n", "data", "column_sums")

    def __init__(self, k, n, data, column_sums):
        self.k, self.n, self.data, self.column_sums = k, n, data, column_sums

    def __repr__(self):
        return f"<PackedWeights {self.k}x{self.n}>"


def pack_weights(w):
    """Pack an int8 matrix (K, N) (a Conv2D kernel reshaped to (kh*kw*cin, filters), or a
    Dense kernel) once; K <= 65536 so that no int32 sum can overflow."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a numpy.ndarray, got {type(w).__name__}")
    if w.dtype != np.int8:
        raise TypeError(f"w must have dtype int8, got {w.dtype}")
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"w must be a non-empty 2-D (K, N) matrix, got shape {w.shape}")
    k, n = w.shape
    if k > _kernels.MAX_K:
        raise ValueError(f"w has K = {k} rows; the int8 GEMM supports K <= {_kernels.MAX_K} "
                         f"(int32 accumulation)")
    w = np.ascontiguousarray(w)
    data = np.empty(_kernels.packed_size(k, n), dtype=np.int8)
    _kernels.pack_b(w, data)
    return PackedWeights(int(k), int(n), data, w.sum(axis=0, dtype=np.int64))


def _check_u8(x, name, ndim):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def _check_vector(v, name, n, dtype):
    if not isinstance(v, np.ndarray) or v.dtype != dtype or v.shape != (n,) \
            or not v.flags.c_contiguous:
        got = f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype)} array of shape "
                         f"({n},), got {got}")
    return v


def _epilogue(output, n, corr, scale, offset, lo, hi):
    """(mode, dtype, corr, scale, offset, lo, hi) after checking them."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {sorted(_OUTPUTS)}, got {output!r}")
    mode, dtype = _OUTPUTS[output]
    if output == "int32":
        if any(v is not None for v in (corr, scale, offset, lo, hi)):
            raise ValueError("output='int32' takes no corr, scale, offset, lo or hi")
        return mode, dtype, None, None, None, 0.0, 0.0
    if corr is not None:
        _check_vector(corr, "corr", n, np.int32)
    if scale is None:
        raise ValueError(f"output={output!r} needs scale, a float32 array of shape ({n},)")
    _check_vector(scale, "scale", n, np.float32)
    if offset is None:
        offset = np.zeros(n, np.float32)
    _check_vector(offset, "offset", n, np.float32)
    if not (np.isfinite(scale).all() and np.isfinite(offset).all()):
        raise ValueError("scale and offset must be finite")
    for v, name in ((lo, "lo"), (hi, "hi")):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                              or np.isnan(v)):
            raise TypeError(f"{name} must be a real number or None, got {v!r}")
    if output == "uint8":
        lo = 0.0 if lo is None else float(lo)
        hi = 255.0 if hi is None else float(hi)
        if not 0.0 <= lo <= hi <= 255.0:
            raise ValueError(f"output='uint8' needs 0 <= lo <= hi <= 255, got lo={lo}, hi={hi}")
    else:
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        if not lo <= hi:
            raise ValueError(f"lo must be <= hi, got lo={lo}, hi={hi}")
    return mode, dtype, corr, scale, offset, lo, hi


def _check_no_alias(out, x):
    if np.may_share_memory(out, x):
        raise ValueError("out must not overlap the input")


def _check_packed(packed):
    if not isinstance(packed, PackedWeights):
        raise TypeError(f"packed must come from pack_weights, got {type(packed).__name__}")
    if packed.data.size != _kernels.packed_size(packed.k, packed.n):
        raise ValueError("packed holds the wrong number of bytes for its shape")
    return packed


def qgemm(a, packed, *, output="int32", corr=None, scale=None, offset=None, lo=None, hi=None,
          out=None):
    """a (M, K) uint8 (rows may be strided, bytes contiguous) times the packed (K, N) int8
    weights, int32 accumulation, then the epilogue of ``output`` (module docstring)."""
    _check_u8(a, "a", 2)
    packed = _check_packed(packed)
    if a.shape[1] != packed.k:
        raise ValueError(f"a has {a.shape[1]} columns but the packed weights have K = {packed.k}")
    if a.strides[1] != 1 or a.strides[0] < a.shape[1]:
        a = np.ascontiguousarray(a)
    mode, dtype, corr, scale, offset, lo, hi = _epilogue(output, packed.n, corr, scale, offset,
                                                          lo, hi)
    out = check_out(out, "out", (a.shape[0], packed.n), dtype)
    _check_no_alias(out, a)
    if a.shape[0]:
        _kernels.gemm(a, packed.data, packed.n, out, mode, corr, scale, offset, lo, hi,
                      config.get_num_threads())
    return out


def conv_geometry(input_shape, kernel_size, strides, padding):
    """((OH, OW), (kh, kw, sh, sw, pad_top, pad_left)) of a convolution or pooling window over
    per-sample NHWC ``input_shape``, TensorFlow's 'same' rule."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(strides, "strides")
    padding = check_padding(padding)
    oh, pt, _ = conv_output_size(input_shape[0], kh, sh, padding)
    ow, pl, _ = conv_output_size(input_shape[1], kw, sw, padding)
    return (oh, ow), (kh, kw, sh, sw, pt, pl)


def qconv2d(x, packed, kernel_size, *, strides=(1, 1), padding="valid", zero_point=0,
            output="int32", corr=None, scale=None, offset=None, lo=None, hi=None,
            pool_size=None, out=None):
    """2-D convolution of the uint8 NHWC x (zero point ``zero_point``) with the packed int8
    kernel (kh, kw, C, F) reshaped to (kh*kw*C, F): implicit GEMM, epilogue as ``qgemm``.

    ``pool_size`` (ph, pw), with ``output='uint8'``: the result is max-pooled (strides equal to
    the pool, 'valid') in the same pass, shape (N, OH // ph, OW // pw, F), so the full
    convolution output is never written to memory."""
    _check_u8(x, "x", 4)
    packed = _check_packed(packed)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use numpy.ascontiguousarray)")
    if isinstance(zero_point, bool) or not isinstance(zero_point, numbers.Integral) \
            or not 0 <= zero_point <= 255:
        raise ValueError(f"zero_point must be an integer in [0, 255], got {zero_point!r}")
    (oh, ow), geom = conv_geometry(x.shape[1:3], kernel_size, strides, padding)
    kh, kw = geom[:2]
    if packed.k != kh * kw * x.shape[3]:
        raise ValueError(f"the packed weights have K = {packed.k} but a {kh}x{kw} window over "
                         f"{x.shape[3]} channels needs {kh * kw * x.shape[3]}")
    mode, dtype, corr, scale, offset, lo, hi = _epilogue(output, packed.n, corr, scale, offset,
                                                          lo, hi)
    shape = (x.shape[0], oh, ow, packed.n)
    if pool_size is not None:
        pool_size = pair(pool_size, "pool_size")
        if output != "uint8":
            raise ValueError("pool_size needs output='uint8' (pooling runs on the codes)")
        if oh < pool_size[0] or ow < pool_size[1]:
            raise ValueError(f"pool_size {pool_size} is larger than the convolution's output "
                             f"{(oh, ow)}")
        shape = (x.shape[0], oh // pool_size[0], ow // pool_size[1], packed.n)
    out = check_out(out, "out", shape, dtype)
    _check_no_alias(out, x)
    if x.shape[0]:
        _kernels.conv2d(x, geom + (oh, ow), packed.data, int(zero_point), out, mode, corr, scale,
                        offset, lo, hi, config.get_num_threads(), pool_size)
    return out


def qpool2d(x, pool_size=(2, 2), strides=None, padding="valid", *, mode="max", out=None):
    """Max or average pooling of the uint8 NHWC x (windows clipped to the input, as
    fastnet.ops.pool).  Max commutes with the monotone quantization map, so the output keeps
    x's scale and zero point; the average is rounded half up."""
    _check_u8(x, "x", 4)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use numpy.ascontiguousarray)")
    if mode not in ("max", "average"):
        raise ValueError(f"mode must be 'max' or 'average', got {mode!r}")
    if strides is None:
        strides = pool_size
    (oh, ow), geom = conv_geometry(x.shape[1:3], pool_size, strides, padding)
    out = check_out(out, "out", (x.shape[0], oh, ow, x.shape[3]), np.dtype(np.uint8))
    _check_no_alias(out, x)
    if out.size:
        _kernels.pool2d(x, out, geom, mode == "average", config.get_num_threads())
    return out


def _check_qparams(scale, zero_point):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) \
            or not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, numbers.Integral) \
            or not 0 <= zero_point <= 255:
        raise ValueError(f"zero_point must be an integer in [0, 255], got {zero_point!r}")


def quantize(x, scale, zero_point, *, out=None):
    """uint8 q = rint(clip(x * float32(1 / scale) + zero_point, 0, 255)) of a float32 x."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise TypeError("x must be a C-contiguous float32 numpy.ndarray")
    _check_qparams(scale, zero_point)
    inv = np.float32(1.0 / scale)
    if not np.isfinite(inv):
        raise ValueError(f"scale {scale!r} is too small: 1 / scale overflows float32")
    out = check_out(out, "out", x.shape, np.dtype(np.uint8))
    _kernels.quantize(x, out, float(inv), int(zero_point), config.get_num_threads())
    return out


def dequantize(q, scale, zero_point, *, out=None):
    """float32 x = (q - zero_point) * float32(scale) of a uint8 q."""
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8 or not q.flags.c_contiguous:
        raise TypeError("q must be a C-contiguous uint8 numpy.ndarray")
    _check_qparams(scale, zero_point)
    out = check_out(out, "out", q.shape, np.dtype(np.float32))
    _kernels.dequantize(q, out, float(np.float32(scale)), int(zero_point),
                        config.get_num_threads())
    return out
