"""fastnet GEMM against NumPy's BLAS, float32, at 1 and 2 threads, in the same process.

pytest-benchmark:  python -m pytest benchmarks/bench_gemm.py --benchmark-only
script (table of medians, GFLOP/s, ratio to NumPy, fraction of FMA peak):
                   python benchmarks/bench_gemm.py [--threads 1,2] [--only square|cnn] [--reps N]
The machine is shared: other processes on the second core wreck 2-thread timings (a descheduled
OpenMP thread stalls the whole team), so check `uptime` first and compare medians of blocks.
The script runs each library in fresh processes (interleaved, --blocks of them) so that the two
thread pools never share a process: an idle OpenBLAS pool spins for about 0.1 s after each call
(even one that only changed its thread count) and takes the second core from OpenMP, and vice
versa, which wrecks 2-thread timings.  In the pytest-benchmark mode both live in one process
(fastnet runs with OpenBLAS limited to 1 thread after a pause), so prefer the script for
2-thread numbers.
NumPy's thread count is set with threadpoolctl when it is installed (and OPENBLAS_NUM_THREADS in
the script's workers).  For the fairest comparison unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
in the benchmark command only.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np

try:
    import fastnet
except ImportError:  # run as a script from a source checkout (built in place)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fastnet
from fastnet._kernels import gemm as G
from fastnet.ops import matmul

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

PEAK_PER_CORE = 114.0  # GFLOP/s, FP32 FMA loop on this machine (DESIGN.md)

# name, M, N, K, transpose_a, transpose_b
SQUARE = [("sq512", 512, 512, 512, False, False), ("sq1024", 1024, 1024, 1024, False, False),
          ("sq2048", 2048, 2048, 2048, False, False)]
CNN = [
    ("conv1 fwd", 43264, 32, 9, False, False),
    ("conv1 dW", 9, 32, 43264, True, False),
    ("conv2 fwd", 7744, 64, 288, False, False),
    ("conv2 dW", 288, 64, 7744, True, False),
    ("conv2 dX", 7744, 288, 64, False, True),
    ("conv3 fwd", 576, 64, 576, False, False),
    ("conv3 dW", 576, 64, 576, True, False),
    ("conv3 dX", 576, 576, 64, False, True),
    ("dense1 fwd", 64, 64, 576, False, False),
    ("dense1 dW", 576, 64, 64, True, False),
    ("dense1 dX", 64, 576, 64, False, True),
    ("dense2 fwd", 64, 10, 64, False, False),
    ("dense2 dW", 64, 10, 64, True, False),
    ("dense2 dX", 64, 64, 10, False, True),
]


def _operands(m, n, k, ta, tb, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b, np.empty((m, n), np.float32)


def _numpy_threads(n):
    return threadpool_limits(limits=n, user_api="blas") if threadpool_limits \
        else contextlib.nullcontext()


def _callables(m, n, k, ta, tb):
    a, b, out = _operands(m, n, k, ta, tb)
    aa = a.T if ta else a
    bb = b.T if tb else b
    out2 = np.empty_like(out)
    return (lambda: matmul(a, b, transpose_a=ta, transpose_b=tb, out=out),
            lambda: np.matmul(aa, bb, out=out2))


def _median_time(fn, min_time=0.2, reps=None):
    t_end = time.perf_counter() + 0.05  # warm up: thread pool, scratch buffers, clocks
    while True:
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        if t0 + once >= t_end:
            break
    inner = max(1, int(0.02 / once))
    rounds = reps or max(5, min(50, int(min_time / (once * inner))))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return float(np.median(times))


# ---- pytest-benchmark -------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    CASES = [c for c in SQUARE + CNN]

    @pytest.mark.parametrize("threads", [1, 2])
    @pytest.mark.parametrize("lib", ["fastnet", "numpy"])
    @pytest.mark.parametrize("case", CASES, ids=[c[0].replace(" ", "-") for c in CASES])
    def test_gemm(benchmark, case, lib, threads):
        name, m, n, k, ta, tb = case
        ours, theirs = _callables(m, n, k, ta, tb)
        old = fastnet.get_num_threads()
        fastnet.set_num_threads(threads)
        try:
            # OpenBLAS's pool spins ~0.1 s after a call and would take a core from OpenMP.
            with _numpy_threads(threads if lib == "numpy" else 1):
                if lib == "fastnet":
                    time.sleep(0.15)
                benchmark(ours if lib == "fastnet" else theirs)
        finally:
            fastnet.set_num_threads(old)
        sec = benchmark.stats.stats.median
        gflops = 2.0 * m * n * k / sec / 1e9
        benchmark.extra_info.update(gflops=round(gflops, 1),
                                    peak_fraction=round(gflops / (PEAK_PER_CORE * threads), 3))
        print(f"\n{name} {lib} {threads}T: {gflops:.1f} GFLOP/s")


def _worker(lib, threads, cases, min_time, reps):
    """Median seconds per case for one library in this (fresh) process."""
    fastnet.set_num_threads(threads)
    times = []
    with _numpy_threads(threads) if lib == "numpy" else contextlib.nullcontext():
        for _, m, n, k, ta, tb in cases:
            ours, theirs = _callables(m, n, k, ta, tb)
            times.append(_median_time(ours if lib == "fastnet" else theirs, min_time, reps))
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--only", choices=["square", "cnn"], default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per timing block")
    p.add_argument("--blocks", type=int, default=3,
                   help="fresh processes per library and thread count (median of their medians)")
    p.add_argument("--worker", choices=["fastnet", "numpy"], help=argparse.SUPPRESS)
    args = p.parse_args()
    cases = SQUARE if args.only == "square" else CNN if args.only == "cnn" else SQUARE + CNN
    if args.worker:
        print(json.dumps(_worker(args.worker, int(args.threads), cases, args.min_time,
                                 args.reps)))
        return
    print(f"fastnet GEMM path: {G.isa()} (available: {','.join(G.available_isas())}); "
          f"numpy threads: {'threadpoolctl' if threadpool_limits else 'NOT controlled'}; "
          f"each library in its own fresh processes, interleaved, median of {args.blocks}")
    print(f"{'product':<12}{'MxNxK':>18} {'thr':>3} {'fastnet':>9} {'numpy':>9} "
          f"{'ratio':>6} {'%peak':>6}")
    for threads in [int(t) for t in args.threads.split(",")]:
        res = {"fastnet": [], "numpy": []}
        for _ in range(args.blocks):
            for lib in ("fastnet", "numpy"):
                env = dict(os.environ)
                # A library's idle pool spins after each call and would steal the second core
                # from the other one: never let both pools live in one process.
                env["OPENBLAS_NUM_THREADS"] = str(threads) if lib == "numpy" else "1"
                env["OMP_NUM_THREADS"] = str(threads)
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib,
                       "--threads", str(threads), "--min-time", str(args.min_time)]
                if args.only:
                    cmd += ["--only", args.only]
                if args.reps:
                    cmd += ["--reps", str(args.reps)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                res[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for i, (name, m, n, k, ta, tb) in enumerate(cases):
            t_ours = float(np.median([r[i] for r in res["fastnet"]]))
            t_np = float(np.median([r[i] for r in res["numpy"]]))
            f = 2.0 * m * n * k / 1e9
            g_ours, g_np = f / t_ours, f / t_np
            print(f"{name:<12}{f'{m}x{n}x{k}':>18} {threads:>3} {g_ours:>9.1f} {g_np:>9.1f} "
                  f"{g_ours / g_np:>6.2f} {100 * g_ours / (PEAK_PER_CORE * threads):>5.0f}%",
                  flush=True)


if __name__ == "__main__":
    main()
