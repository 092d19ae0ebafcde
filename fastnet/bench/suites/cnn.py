"""The classic Keras CNN (Conv2D 32 -> pool -> Conv2D 64 -> pool -> Conv2D 64 -> Dense 64 ->
Dense 10, 28x28x1) in fastnet, the same network in PyTorch with the same weights, and its ONNX
graph for ONNX Runtime.  Shared by the ``train`` and ``infer`` suites."""
import os
import warnings

import numpy as np

INPUT_SHAPE = (28, 28, 1)
CLASSES = 10
ONNX_FILE = "classic_cnn.onnx"


def fastnet_model(seed=0):
    """The compiled fastnet model (Adam, sparse categorical cross-entropy); the same seed gives
    the same weights in every process."""
    from fastnet.cli import build_classic_cnn
    from fastnet.utils import set_random_seed
    set_random_seed(seed)
    model = build_classic_cnn(INPUT_SHAPE, CLASSES)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def batch_data(n, seed=0):
    """Images (n, 28, 28, 1) in [0, 1) and integer labels."""
    rng = np.random.default_rng(seed)
    return rng.random((n, *INPUT_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, n)


def torch_net(weights=None, softmax=False):
    """The same network in PyTorch (NCHW), with fastnet's weights when given; it flattens in
    NHWC order, like Keras, so the Dense weights carry over unchanged."""
    import torch
    import torch.nn as nn

    class ClassicCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
            self.c3 = nn.Conv2d(64, 64, 3)
            self.d1, self.d2 = nn.Linear(576, 64), nn.Linear(64, CLASSES)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
            x = torch.relu(self.c3(x))
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            x = self.d2(torch.relu(self.d1(x)))
            return torch.softmax(x, 1) if softmax else x

    net = ClassicCNN()
    if weights is not None:
        with torch.no_grad():
            for i, conv in enumerate((net.c1, net.c2, net.c3)):
                conv.weight.copy_(torch.from_numpy(weights[2 * i].transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
            for i, lin in enumerate((net.d1, net.d2)):
                lin.weight.copy_(torch.from_numpy(weights[6 + 2 * i].T.copy()))
                lin.bias.copy_(torch.from_numpy(weights[7 + 2 * i]))
    return net


def to_torch(x, channels_last):
    """NHWC images as an NCHW tensor (stored channels_last when asked)."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def export_onnx(path):
    """Write the classic CNN (softmax output, dynamic batch) to ``path``; returns how.

    fastnet's own exporter (``fastnet.onnx.export``) when this build has one, else
    ``torch.onnx.export`` of the same network with the same weights."""
    model = fastnet_model()
    try:
        from fastnet.onnx import export
    except ImportError:
        export = None
    if export is not None:
        try:
            export(model, path)
            return "fastnet.onnx.export"
        except Exception as e:  # an exporter still in the works: fall back, and say so
            fallback = f"torch.onnx.export (fastnet.onnx.export failed: {type(e).__name__}: {e})"
    else:
        fallback = "torch.onnx.export"
    import torch
    net = torch_net(model.get_weights(), softmax=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), path, dynamo=False,
                          input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=17)
    return fallback


def onnx_path(workdir):
    return os.path.join(workdir, ONNX_FILE)
