"""Convolution and pooling kernels on the classic MNIST CNN's shapes (batch 64, float32, NHWC).

As pytest-benchmark tests::

    python -m pytest benchmarks/bench_conv.py --benchmark-only

As a script (a table of medians in microseconds, 1 and 2 threads)::

    python benchmarks/bench_conv.py [--repeat 20] [--rounds 5] [--threads 1,2] [--algorithms]
                                    [--big]

Each cell is the lowest of ``--rounds`` medians of ``--repeat`` calls, the rounds of all cells
interleaved: on a shared machine a round that overlapped someone else's work is dropped.
``--algorithms`` adds a row per forced kernel path (``_algorithm``) next to the default choice.
"""
import argparse
import time

import numpy as np
import pytest

import fastnet
from fastnet.ops.conv import conv2d, conv2d_backward_input, conv2d_backward_weight
from fastnet.ops.pool import max_pool2d, max_pool2d_backward

BATCH = 64
# name: (H, W, Cin, Cout, k, padding), stride 1
CONVS = {
    "conv 1->32 28x28": (28, 28, 1, 32, 3, "valid"),
    "conv 32->64 13x13": (13, 13, 32, 64, 3, "valid"),
    "conv 64->64 5x5": (5, 5, 64, 64, 3, "valid"),
}
BIG_CONVS = {"conv 64->128 32x32 same": (32, 32, 64, 128, 3, "same")}   # --big
POOL = (26, 26, 32)


def _conv_ops(name, algorithm=None):
    """{op name: zero-argument callable} for one conv shape, outputs preallocated."""
    h, w, cin, cout, k, padding = {**CONVS, **BIG_CONVS}[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, h, w, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) * 0.1).astype(np.float32)
    bias = np.zeros(cout, np.float32)
    y = conv2d(x, kernel, bias, padding=padding, activation="relu")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk, db = np.empty_like(x), np.empty_like(kernel), np.empty_like(bias)
    ops = {
        "fwd": lambda: conv2d(x, kernel, bias, padding=padding, activation="relu", out=y,
                              _algorithm=algorithm),
        "bwd": lambda: conv2d_backward_input(dy, kernel, x.shape, padding=padding, out=dx,
                                             _algorithm=algorithm),
        "bwd-w": lambda: conv2d_backward_weight(x, dy, k, padding=padding, out=dk,
                                                bias_grad=db, _algorithm=algorithm),
    }
    if algorithm == "direct":   # no direct backward-input kernel
        del ops["bwd"]
    return ops


def _pool_ops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *POOL)).astype(np.float32)
    y = max_pool2d(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.empty_like(x)
    return {"fwd": lambda: max_pool2d(x, out=y),
            "bwd": lambda: max_pool2d_backward(x, y, dy, out=dx)}


# --------------------------------------------------------------------- pytest-benchmark style
@pytest.fixture(params=[1, 2], ids=lambda t: f"t{t}")
def threads(request):
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    yield request.param
    fastnet.set_num_threads(old)


@pytest.mark.parametrize("op", ["fwd", "bwd", "bwd-w"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv(benchmark, threads, name, op):
    benchmark(_conv_ops(name)[op])


@pytest.mark.parametrize("op", ["fwd", "bwd"])
def test_max_pool(benchmark, threads, op):
    benchmark(_pool_ops()[op])


# ------------------------------------------------------------------------------------ script
def _median_us(fn, repeat):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--algorithms", action="store_true",
                        help="also time every forced kernel path")
    parser.add_argument("--big", action="store_true",
                        help="also time the bigger layer (64->128 on 32x32, 'same'; slow)")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]

    rows = []   # (label, op, algorithm) -> callable factory
    for name in list(CONVS) + (list(BIG_CONVS) if args.big else []):
        algs = [None]
        if args.algorithms:
            algs += ["direct", "gemm", "shared"]
        for alg in algs:
            for op in ("fwd", "bwd", "bwd-w"):
                rows.append((name, op, alg, lambda n=name, a=alg, o=op: _conv_ops(n, a).get(o)))
    for op in ("fwd", "bwd"):
        rows.append(("maxpool 2x2 26x26x32", op, None, lambda o=op: _pool_ops()[o]))

    best = {}
    for _ in range(args.rounds):
        for i, (_, _, _, factory) in enumerate(rows):
            for t in thread_counts:
                fastnet.set_num_threads(t)
                fn = factory()
                if fn is not None:
                    us = _median_us(fn, args.repeat)
                    best[i, t] = min(best.get((i, t), us), us)

    header = f"{'shape (batch 64, float32)':24} {'op':6} {'algorithm':9}" + "".join(
        f" {f'{t} thr (us)':>12}" for t in thread_counts)
    print(f"fastnet {fastnet.__version__}: lowest of {args.rounds} medians of {args.repeat} calls")
    print(header)
    print("-" * len(header))
    for i, (label, op, alg, _) in enumerate(rows):
        cells = "".join(f" {best[i, t]:12.0f}" if (i, t) in best else f" {'-':>12}"
                        for t in thread_counts)
        print(f"{label:24} {op:6} {alg or 'default':9}" + cells)


if __name__ == "__main__":
    main()
