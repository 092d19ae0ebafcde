"""What the ONNX exporter and importer share: the lazy import and the layout permutations."""
import numpy as np

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)


def channels_first(rank):
    """The Transpose perm taking a channels-last tensor of ``rank`` to channels first."""
    return (0, rank - 1) + tuple(range(1, rank - 1))


def channels_last(rank):
    """The inverse of ``channels_first(rank)``."""
    return (0,) + tuple(range(2, rank)) + (1,)
MIN_OPSET = 13      # single-axis Softmax, Pad/Reshape shapes as inputs


def require_onnx():
    """The ``onnx`` module, or an ImportError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ImportError("fastnet.onnx needs the optional 'onnx' package: "
                          "pip install 'fastnet[onnx]' (or pip install onnx onnxruntime)") from None
    return onnx


def onnx_dtype(dtype):
    onnx = require_onnx()
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return onnx.TensorProto.FLOAT
    if dtype == np.float64:
        return onnx.TensorProto.DOUBLE
    raise TypeError(f"ONNX export supports float32 and float64 models, got {dtype}")
