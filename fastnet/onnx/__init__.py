"""ONNX export and import (optional: ``pip install "fastnet[onnx]"``, which brings ``onnx`` and,
to run the exported models, ``onnxruntime``).

    >>> import fastnet.onnx
    >>> fastnet.onnx.export(model, "cnn.onnx", opset=17)      # any layer ONNX can express
    >>> model2 = fastnet.onnx.import_model("cnn.onnx")         # back to a fastnet model

Layouts: fastnet is channels-last (NHWC), ONNX's Conv / pooling / BatchNormalization are
channels-first (NCHW).  The exported graph keeps fastnet's NHWC inputs and outputs; the kernels
are transposed to ONNX's (out, in, kh, kw) once, a Transpose enters NCHW before the first
convolution-like node and leaves it where a layer needs fastnet's order (Flatten, Reshape,
Dense on images, the outputs), so the ONNX model computes exactly what fastnet computes.
The importer reverses this, and also reads channels-first graphs (e.g. exported from PyTorch):
their 4-D inputs become NHWC inputs of the fastnet model, and a Flatten of NCHW features
followed by a dense layer is absorbed by permuting that layer's kernel rows.
"""
from fastnet.onnx._export import export  # noqa: F401
from fastnet.onnx._import import import_model  # noqa: F401

load = import_model

__all__ = ["export", "import_model", "load"]
