"""Pooling, float32, 2x2 windows on the classic CNN's first activation (batch 64, 26x26x32).

    max fwd   fastnet: max_pool2d writing its uint8 argmax (what the layer needs for backward);
              PyTorch: max_pool2d without indices (its cheaper forward)
    max bwd   the gradient from the recorded argmax (PyTorch: max_pool2d_with_indices_backward
              with the indices computed beforehand)
    avg fwd / avg bwd   average pooling and its gradient

GB/s counts the float32 tensors read and written once (x and y forward, dy and dx backward).
"""
import numpy as np

from fastnet.bench.cases import Bench, Case, checksum

SUITE = "pool"
LIBRARIES = ("fastnet", "torch")
BATCH = 64
H, W, C = 26, 26, 32
OPS = ("max fwd", "max bwd", "avg fwd", "avg bwd")
# fastnet-only variants (benchmarks/bench_conv.py --fastnet-only): without the argmax.
FASTNET_EXTRA_OPS = ("max fwd-noargmax", "max bwd-xy")


def cases(batches=None):
    nbytes = 4.0 * BATCH * (H * W * C + (H // 2) * (W // 2) * C)
    return [Case(SUITE, op, f"{BATCH}x{H}x{W}x{C} 2x2", nbytes, "GB/s", params=(op,),
                 quick=op.startswith("max")) for op in OPS]


def pool_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, H, W, C)).astype(np.float32)
    dy = rng.standard_normal((BATCH, H // 2, W // 2, C)).astype(np.float32)
    return x, dy


def fastnet_pool_ops():
    """{op: (call, output)} with outputs preallocated."""
    from fastnet.ops.pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
    x, dy = pool_data()
    y = max_pool2d(x)
    argmax = np.empty(y.shape, np.uint8)
    max_pool2d(x, out=y, argmax=argmax)
    ya, dx, dxa = np.empty_like(y), np.empty_like(x), np.empty_like(x)
    return {"max fwd": (lambda: max_pool2d(x, out=y, argmax=argmax), y),
            "max bwd": (lambda: max_pool2d_backward(x, y, dy, out=dx, argmax=argmax), dx),
            "avg fwd": (lambda: avg_pool2d(x, out=ya), ya),
            "avg bwd": (lambda: avg_pool2d_backward(dy, x.shape, out=dxa), dxa),
            "max fwd-noargmax": (lambda: max_pool2d(x, out=y), y),
            "max bwd-xy": (lambda: max_pool2d_backward(x, y, dy, out=dx), dx)}


def torch_pool_ops(channels_last):
    """{op: call} with PyTorch, NCHW or channels_last."""
    import torch
    import torch.nn.functional as F
    x, dy = pool_data()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    aten = torch.ops.aten
    _, idx = aten.max_pool2d_with_indices(xt, [2, 2], [2, 2], [0, 0], [1, 1], False)

    def max_fwd():
        with torch.no_grad():
            return F.max_pool2d(xt, 2)

    def avg_fwd():
        with torch.no_grad():
            return F.avg_pool2d(xt, 2)
    return {"max fwd": max_fwd,
            "max bwd": lambda: aten.max_pool2d_with_indices_backward(
                dyt, xt, [2, 2], [2, 2], [0, 0], [1, 1], False, idx),
            "avg fwd": avg_fwd,
            "avg bwd": lambda: aten.avg_pool2d_backward(dyt, xt, [2, 2], [2, 2], [0, 0], False,
                                                        True, None)}


def make(case, config, ctx):
    (op,) = case.params
    if config.library == "fastnet":
        fn, out = fastnet_pool_ops()[op]

        def probe():
            fn()
            return checksum(out)
        return Bench(fn, probe)
    if config.library == "torch":
        fn = torch_pool_ops(config.option("channels_last"))[op]
        return Bench(fn, lambda: checksum(fn().numpy()))
    return None
