"""Convolution, float32, batch 64, 3x3 kernels, stride 1: DESIGN.md's "kernel shapes to
benchmark" (the classic CNN's three layers and a bigger 64->128 32x32 'same' layer).

    fwd     fastnet: conv + bias + ReLU (fused, as the Conv2D layer calls it);
            PyTorch: conv + bias only (its ReLU is a separate op, not counted)
    bwd     gradient of the input  (PyTorch: aten.convolution_backward, mask [1, 0, 0])
    bwd-w   gradient of the kernel and the bias (mask [0, 1, 1])

The first layer's input gradient is never needed, so conv1 has no ``bwd`` row.
"""
import numpy as np

from fastnet.bench.cases import Bench, Case, checksum

SUITE = "conv"
LIBRARIES = ("fastnet", "torch")
BATCH = 64
# name: (H, W, Cin, Cout, k, padding)
SHAPES = {
    "conv1": (28, 28, 1, 32, 3, "valid"),
    "conv2": (13, 13, 32, 64, 3, "valid"),
    "conv3": (5, 5, 64, 64, 3, "valid"),
    "conv64x128": (32, 32, 64, 128, 3, "same"),
}
OPS = {"conv1": ("fwd", "bwd-w"), "conv2": ("fwd", "bwd", "bwd-w"),
       "conv3": ("fwd", "bwd", "bwd-w"), "conv64x128": ("fwd", "bwd", "bwd-w")}
QUICK = {("conv1", "fwd"), ("conv2", "fwd"), ("conv2", "bwd"), ("conv2", "bwd-w")}
# fastnet-only variants (benchmarks/bench_conv.py --fastnet-only): the fused ReLU's mask applied
# inside the backward kernels, as the Conv2D layer calls them.
FASTNET_EXTRA_OPS = ("bwd+relu", "bwd-w+relu")


def _out_hw(h, w, k, padding):
    return (h - k + 1, w - k + 1) if padding == "valid" else (h, w)


def cases(batches=None):
    out = []
    for name, (h, w, cin, cout, k, padding) in SHAPES.items():
        oh, ow = _out_hw(h, w, k, padding)
        flops = 2.0 * BATCH * oh * ow * cout * k * k * cin
        for op in OPS[name]:
            out.append(Case(SUITE, f"{name} {op}",
                            f"{BATCH}x{h}x{w}x{cin}->{cout} {k}x{k} {padding}", flops, "GFLOP/s",
                            params=(name, op), quick=(name, op) in QUICK))
    return out


def conv_data(name, seed=0):
    """x, kernel, bias, dy (NHWC, Keras layouts), kernel size and padding of a named shape."""
    h, w, cin, cout, k, padding = SHAPES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, h, w, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    dy = rng.standard_normal((BATCH, *_out_hw(h, w, k, padding), cout)).astype(np.float32)
    return x, kernel, bias, dy, k, padding


def fastnet_conv_ops(name, algorithm=None):
    """{op: (call, outputs)} for one shape, outputs preallocated; ``algorithm`` forces one
    kernel path (the ops' private ``_algorithm``)."""
    from fastnet.ops.conv import conv2d, conv2d_backward_input, conv2d_backward_weight
    x, kernel, bias, dy, k, padding = conv_data(name)
    y = np.empty(dy.shape, np.float32)
    dx, dk, db = np.empty_like(x), np.empty_like(kernel), np.empty_like(bias)
    conv2d(x, kernel, bias, padding=padding, activation="relu", out=y)  # relu_output below
    return {
        "fwd": (lambda: conv2d(x, kernel, bias, padding=padding, activation="relu", out=y,
                               _algorithm=algorithm), (y,)),
        "bwd": (lambda: conv2d_backward_input(dy, kernel, x.shape, padding=padding, out=dx,
                                              _algorithm=algorithm), (dx,)),
        "bwd-w": (lambda: conv2d_backward_weight(x, dy, k, padding=padding, out=dk,
                                                 bias_grad=db, _algorithm=algorithm), (dk, db)),
        "bwd+relu": (lambda: conv2d_backward_input(dy, kernel, x.shape, padding=padding,
                                                   out=dx, relu_output=y,
                                                   _algorithm=algorithm), (dx,)),
        "bwd-w+relu": (lambda: conv2d_backward_weight(x, dy, k, padding=padding, out=dk,
                                                      bias_grad=db, relu_output=y,
                                                      _algorithm=algorithm), (dk, db)),
    }


def torch_conv_ops(name, channels_last):
    """{op: (call, checksum of a call's result)} with PyTorch, NCHW or channels_last."""
    import torch
    import torch.nn.functional as F
    x, kernel, bias, dy, k, padding = conv_data(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    wt = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=fmt)
    bt = torch.from_numpy(bias)
    dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    pad = 0 if padding == "valid" else (k - 1) // 2   # odd k, stride 1: symmetric
    back = torch.ops.aten.convolution_backward
    args = ([bt.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1)

    def fwd():
        with torch.no_grad():
            return F.conv2d(xt, wt, bt, padding=pad)

    def bwd():
        return back(dyt, xt, wt, *args, [True, False, False])

    def bwd_w():
        return back(dyt, xt, wt, *args, [False, True, True])
    return {"fwd": (fwd, lambda: checksum(torch.relu(fwd()).numpy())),
            "bwd": (bwd, lambda: checksum(bwd()[0].numpy())),
            "bwd-w": (bwd_w, lambda: _grad_checksum(*bwd_w()[1:]))}


def _grad_checksum(dk, db):
    a = checksum(dk.numpy() if hasattr(dk, "numpy") else dk)
    b = checksum(db.numpy() if hasattr(db, "numpy") else db)
    return [u + v for u, v in zip(a[:2], b[:2])] + [max(a[2], b[2])]


def make(case, config, ctx):
    name, op = case.params
    if config.library == "fastnet":
        fn, outs = fastnet_conv_ops(name)[op]

        def probe():
            fn()
            return _grad_checksum(*outs) if len(outs) == 2 else checksum(outs[0])
        return Bench(fn, probe)
    if config.library == "torch":
        fn, probe = torch_conv_ops(name, config.option("channels_last"))[op]
        return Bench(fn, probe)
    return None
