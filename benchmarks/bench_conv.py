"""Convolution and pooling kernels, fastnet against PyTorch 2.13 CPU in the same run.

The shapes are DESIGN.md's "Kernel shapes to benchmark" (batch 64, float32, 3x3 kernels,
stride 1): the classic MNIST CNN's three convolutions, a bigger 64->128 32x32 'same' layer and
the 2x2 max pool on 26x26x32.  Each op is timed on its own:

    fwd     fastnet: conv + bias + ReLU (fused, as the Conv2D layer calls it);
            PyTorch: conv + bias only (its ReLU is a separate op, not counted)
    bwd     gradient of the input  (PyTorch: aten.convolution_backward, mask [1, 0, 0])
    bwd-w   gradient of the kernel and the bias (mask [0, 1, 1])
    pool fwd / bwd: max_pool2d writing its uint8 argmax, and the backward reading it (x and y
            untouched); PyTorch's backward is max_pool2d_with_indices_backward with the indices
            computed beforehand (its forward is timed without indices, the cheaper)

fastnet-only rows (no PyTorch counterpart): ``bwd+relu`` / ``bwd-w+relu`` with the fused
ReLU's mask applied inside the kernel (``relu_output=y``; PyTorch needs a separate
threshold_backward pass), ``fwd-noargmax`` / ``bwd-xy`` the pool without the argmax.

Script mode (the comparison; a few minutes)::

    python benchmarks/bench_conv.py [--threads 1,2] [--rounds 3] [--only conv2] [--no-big]

follows DESIGN.md's method: every configuration runs in a fresh process - fastnet, PyTorch
NCHW, PyTorch channels_last, and both again with the tuned glibc allocator
(MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_) - interleaved round by round, each child
timing every cell (median of many calls).  A cell's figure is the median over the rounds; the
PyTorch figure is its best configuration for that cell, and the ratio is fastnet / PyTorch
(time: below 1 is faster).  Each child starts once the CPUs have been idle for 2 s (at most
10 min of waiting), and a child during which other processes used more than 0.15 CPU (from
/proc/stat minus the child's own CPU time) is run again, up to 3 times.  Children run
with OPENBLAS_NUM_THREADS=1 (OpenBLAS's spinning threads would steal the second core) and
without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE.  The load average is printed per round.

``--fastnet-only`` times fastnet in-process only (quick iterations); ``--algorithms`` adds a row
per forced kernel path (``_algorithm``).  As pytest-benchmark tests (fastnet only)::

    python -m pytest benchmarks/bench_conv.py --benchmark-only
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

# Run from a source checkout without installing (children inherit it through PYTHONPATH).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BATCH = 64
# name: (H, W, Cin, Cout, k, padding), stride 1
CONVS = {
    "conv1 1->32 28x28 valid": (28, 28, 1, 32, 3, "valid"),
    "conv2 32->64 13x13 valid": (13, 13, 32, 64, 3, "valid"),
    "conv3 64->64 5x5 valid": (5, 5, 64, 64, 3, "valid"),
}
BIG_CONVS = {"conv 64->128 32x32 same": (32, 32, 64, 128, 3, "same")}
POOL_NAME, POOL = "maxpool 2x2 26x26x32", (26, 26, 32)
CONV_OPS = ("fwd", "bwd", "bwd-w")
POOL_OPS = ("fwd", "bwd")
FASTNET_EXTRA = {"conv": ("bwd+relu", "bwd-w+relu"), "pool": ("fwd-noargmax", "bwd-xy")}
TUNED_ALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "10000000000"}
ALGORITHMS = ["direct", "implicit", "gemm", "shared"]   # --algorithms: forced kernel paths
TORCH_KINDS = ("torch-nchw", "torch-cl", "torch-nchw-alloc", "torch-cl-alloc")


def _conv_data(name):
    h, w, cin, cout, k, padding = {**CONVS, **BIG_CONVS}[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, h, w, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    oh = h - k + 1 if padding == "valid" else h
    ow = w - k + 1 if padding == "valid" else w
    dy = rng.standard_normal((BATCH, oh, ow, cout)).astype(np.float32)
    return x, kernel, bias, dy, k, padding


def _pool_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *POOL)).astype(np.float32)
    dy = rng.standard_normal((BATCH, POOL[0] // 2, POOL[1] // 2, POOL[2])).astype(np.float32)
    return x, dy


# ------------------------------------------------------------------------------ fastnet cells
def fastnet_conv_ops(name, algorithm=None):
    """{op: zero-argument callable} for one conv shape, outputs preallocated."""
    from fastnet.ops.conv import conv2d, conv2d_backward_input, conv2d_backward_weight
    x, kernel, bias, dy, k, padding = _conv_data(name)
    y = np.empty(dy.shape, np.float32)
    dx, dk, db = np.empty_like(x), np.empty_like(kernel), np.empty_like(bias)
    conv2d(x, kernel, bias, padding=padding, activation="relu", out=y)
    ops = {
        "fwd": lambda: conv2d(x, kernel, bias, padding=padding, activation="relu", out=y,
                              _algorithm=algorithm),
        "bwd": lambda: conv2d_backward_input(dy, kernel, x.shape, padding=padding, out=dx,
                                             _algorithm=algorithm),
        "bwd-w": lambda: conv2d_backward_weight(x, dy, k, padding=padding, out=dk,
                                                bias_grad=db, _algorithm=algorithm),
        # with the fused ReLU's mask applied inside (what the Conv2D layer needs)
        "bwd+relu": lambda: conv2d_backward_input(dy, kernel, x.shape, padding=padding, out=dx,
                                                  relu_output=y, _algorithm=algorithm),
        "bwd-w+relu": lambda: conv2d_backward_weight(x, dy, k, padding=padding, out=dk,
                                                     bias_grad=db, relu_output=y,
                                                     _algorithm=algorithm),
    }
    return ops


def fastnet_pool_ops():
    from fastnet.ops.pool import max_pool2d, max_pool2d_backward
    x, dy = _pool_data()
    y = max_pool2d(x)
    argmax = np.empty(y.shape, np.uint8)
    max_pool2d(x, out=y, argmax=argmax)
    dx = np.empty_like(x)
    return {"fwd": lambda: max_pool2d(x, out=y, argmax=argmax),   # the argmax for backward
            "bwd": lambda: max_pool2d_backward(x, y, dy, out=dx, argmax=argmax),
            "fwd-noargmax": lambda: max_pool2d(x, out=y),
            "bwd-xy": lambda: max_pool2d_backward(x, y, dy, out=dx)}


# ------------------------------------------------------------------------------ PyTorch cells
def torch_conv_ops(name, channels_last):
    import torch
    import torch.nn.functional as F
    x, kernel, bias, dy, k, padding = _conv_data(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    wt = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=fmt)
    bt = torch.from_numpy(bias)
    dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    pad = 0 if padding == "valid" else (k - 1) // 2   # 3x3 stride 1: symmetric
    back = torch.ops.aten.convolution_backward

    def fwd():
        with torch.no_grad():
            return F.conv2d(xt, wt, bt, padding=pad)

    def bwd():
        return back(dyt, xt, wt, [bt.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                    [True, False, False])

    def bwd_w():
        return back(dyt, xt, wt, [bt.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                    [False, True, True])
    return {"fwd": fwd, "bwd": bwd, "bwd-w": bwd_w}


def torch_pool_ops(channels_last):
    import torch
    import torch.nn.functional as F
    x, dy = _pool_data()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
    _, idx = torch.ops.aten.max_pool2d_with_indices(xt, [2, 2], [2, 2], [0, 0], [1, 1], False)

    def fwd():
        with torch.no_grad():
            return F.max_pool2d(xt, 2)

    def bwd():
        return torch.ops.aten.max_pool2d_with_indices_backward(dyt, xt, [2, 2], [2, 2], [0, 0],
                                                                [1, 1], False, idx)
    return {"fwd": fwd, "bwd": bwd}


# ------------------------------------------------------------------------------------- timing
def median_us(fn, budget=0.25, min_calls=7, max_calls=200):
    """Median time of one call in microseconds: warm up, then as many single calls as fit in
    ``budget`` seconds (within [min_calls, max_calls])."""
    fn()
    t0 = time.perf_counter()
    fn()
    est = time.perf_counter() - t0
    calls = int(min(max_calls, max(min_calls, budget / max(est, 1e-7))))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _cells(big, only, extra=False):
    names = list(CONVS) + (list(BIG_CONVS) if big else [])
    conv_ops = CONV_OPS + (FASTNET_EXTRA["conv"] if extra else ())
    pool_ops = POOL_OPS + (FASTNET_EXTRA["pool"] if extra else ())
    cells = [(n, op) for n in names for op in conv_ops] + [(POOL_NAME, op) for op in pool_ops]
    if only:
        cells = [c for c in cells if any(o in c[0] for o in only)]
    return cells


def _warm_up(fn, seconds=1.0):
    """Run fn for a while first: the CPU leaves its idle clock, thread pools and allocators
    settle (the machine was idle before this child: see _wait_quiet)."""
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        fn()


def _child(kind, threads, big, only, algorithms):
    """Time every cell in this (fresh) process; print one JSON line {"name|op|alg": us}."""
    out = {}
    warm = True
    if kind == "fastnet":
        import fastnet
        fastnet.set_num_threads(threads)
        algs = [None] + (ALGORITHMS if algorithms else [])
        for name, op in _cells(big, only, extra=True):
            for alg in algs:
                if name == POOL_NAME:
                    if alg is not None:
                        continue
                    fn = fastnet_pool_ops()[op]
                else:
                    fn = fastnet_conv_ops(name, alg)[op]
                try:
                    if warm:
                        _warm_up(fn)
                        warm = False
                    out[f"{name}|{op}|{alg or ''}"] = median_us(fn)
                except ValueError:   # a path that does not exist for this op
                    pass
    else:
        import torch
        torch.set_num_threads(threads)
        cl = kind.startswith("torch-cl")
        for name, op in _cells(big, only):
            fn = (torch_pool_ops(cl) if name == POOL_NAME else torch_conv_ops(name, cl))[op]
            if warm:
                _warm_up(fn)
                warm = False
            out[f"{name}|{op}|"] = median_us(fn)
    print(json.dumps(out))


def _child_env(kind, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", *TUNED_ALLOC):
        env.pop(var, None)
    if kind.endswith("-alloc"):
        env.update(TUNED_ALLOC)
    return env


def _cpu_busy_seconds():
    """Seconds of CPU time spent on all CPUs so far (from /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_quiet(max_wait, quiet=2.0):
    """Wait (up to ``max_wait`` seconds) until the CPUs have been idle for ``quiet`` seconds."""
    t_end, calm = time.perf_counter() + max_wait, 0.0
    while time.perf_counter() < t_end and calm < quiet:
        busy0, t0 = _cpu_busy_seconds(), time.perf_counter()
        if busy0 is None:
            return
        time.sleep(0.5)
        share = (_cpu_busy_seconds() - busy0) / (time.perf_counter() - t0)
        calm = calm + 0.5 if share < 0.1 else 0.0


def _run_child(cmd, env, max_foreign=0.15, tries=4, max_wait=600):
    """Run one child once the machine is quiet; run it again when other processes used more
    than ``max_foreign`` of a CPU on average while it ran (a shared machine).  Returns (stdout,
    foreign CPU share)."""
    for attempt in range(tries):
        _wait_quiet(max_wait)
        busy0, t0 = _cpu_busy_seconds(), time.perf_counter()
        own0 = os.times()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        own1, wall = os.times(), time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"child {cmd[-1]} failed:\n{res.stderr}")
        if busy0 is None:
            return res.stdout, 0.0
        own = (own1.children_user - own0.children_user) + \
            (own1.children_system - own0.children_system)
        foreign = max(0.0, (_cpu_busy_seconds() - busy0 - own) / wall)
        if foreign <= max_foreign or attempt == tries - 1:
            return res.stdout, foreign
        print(f"    other processes used {foreign:.2f} CPU during the run: again", flush=True)


def _fmt(us):
    return f"{us:10.0f}" if us >= 100 else f"{us:10.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per configuration")
    ap.add_argument("--only", default="", help="comma-separated substrings of shape names")
    ap.add_argument("--no-big", action="store_true", help="skip the 64->128 32x32 layer")
    ap.add_argument("--kinds", default=",".join(("fastnet",) + TORCH_KINDS))
    ap.add_argument("--algorithms", action="store_true", help="also every forced fastnet path")
    ap.add_argument("--fastnet-only", action="store_true", help="in-process, fastnet only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    big = not args.no_big
    if args.child:
        kind, threads = args.child.split(":")
        return _child(kind, int(threads), big, only, args.algorithms)
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.fastnet_only:
        import fastnet
        for t in thread_counts:
            fastnet.set_num_threads(t)
            for name, op in _cells(big, only, extra=True):
                algs = [None] + (ALGORITHMS if args.algorithms else [])
                for alg in algs if name != POOL_NAME else [None]:
                    ops = fastnet_pool_ops() if name == POOL_NAME else fastnet_conv_ops(name, alg)
                    try:
                        print(f"{t} thr  {name:26} {op:6} {alg or 'default':8} "
                              f"{_fmt(median_us(ops[op]))} us", flush=True)
                    except ValueError:
                        pass
        return
    kinds = args.kinds.split(",")
    results = {}   # (kind, threads) -> {cell: [us per round]}
    for rnd in range(args.rounds):
        for t in thread_counts:
            load = os.getloadavg()[0]
            print(f"round {rnd + 1}/{args.rounds}, {t} thread(s), load average {load:.2f}",
                  flush=True)
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]   # rotate the order
            for kind in order:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{kind}:{t}",
                       "--only", args.only] + (["--no-big"] if not big else []) + \
                      (["--algorithms"] if args.algorithms else [])
                out, foreign = _run_child(cmd, _child_env(kind, t))
                if foreign > 0.15:
                    print(f"    {kind} {t}t: other processes used {foreign:.2f} CPU (kept)")
                for cell, us in json.loads(out.strip().splitlines()[-1]).items():
                    results.setdefault((kind, t), {}).setdefault(cell, []).append(us)

    med = {key: {c: statistics.median(v) for c, v in cells.items()}
           for key, cells in results.items()}
    print(f"\nbatch {BATCH}, float32, median over {args.rounds} fresh processes per "
          f"configuration; us per call; ratio = fastnet / best PyTorch (lower is better)")
    head = f"{'shape':26} {'op':6} {'alg':7}"
    for t in thread_counts:
        head += f" | {f'fastnet {t}t':>10} {f'torch {t}t':>10} {'(config)':14} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    fast_cells = med.get(("fastnet", thread_counts[0]), {})
    for cell in fast_cells:
        name, op, alg = cell.split("|")
        line = f"{name:26} {op:6} {alg or 'default':7}"
        for t in thread_counts:
            f = med.get(("fastnet", t), {}).get(cell)
            tc = [(med[(k, t)][f"{name}|{op}|"], k) for k in kinds
                  if k != "fastnet" and f"{name}|{op}|" in med.get((k, t), {})]
            best = min(tc) if tc else None
            line += " | " + (_fmt(f) if f is not None else f"{'-':>10}")
            if best:
                line += f" {_fmt(best[0])} {best[1][6:] or 'nchw':14} {f / best[0]:6.2f}"
            else:
                line += f" {'-':>10} {'':14} {'':>6}"
        print(line)
    print("\nall PyTorch configurations (median us):")
    for t in thread_counts:
        for k in kinds:
            if k == "fastnet" or (k, t) not in med:
                continue
            print(f"  {t}t {k:17}" + " ".join(f"{_fmt(v)}" for v in med[(k, t)].values()))


# --------------------------------------------------------------- pytest-benchmark (fastnet only)
@pytest.fixture(params=[1, 2], ids=lambda t: f"t{t}")
def threads(request):
    import fastnet
    old = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    yield request.param
    fastnet.set_num_threads(old)


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("name", list(CONVS))
def test_conv(benchmark, threads, name, op):
    benchmark(fastnet_conv_ops(name)[op])


@pytest.mark.parametrize("op", POOL_OPS)
def test_max_pool(benchmark, threads, op):
    benchmark(fastnet_pool_ops()[op])


if __name__ == "__main__":
    main()
