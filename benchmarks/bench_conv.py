"""Convolution and pooling kernels, float32, batch 64: fastnet against PyTorch - the cases of
``fastnet bench conv pool`` (fastnet/bench/suites/conv.py and pool.py: DESIGN.md's kernel
shapes, fwd / bwd / bwd-w, max and average 2x2 pooling).

    fastnet bench conv pool [--threads 1,2]       # the comparison: fresh processes, PyTorch
                                                  # NCHW / channels_last / tuned allocator,
                                                  # interleaved, load-checked
    python benchmarks/bench_conv.py [options]     # the same
    pytest benchmarks/bench_conv.py --benchmark-only

Kernel development (fastnet alone, in this process, quick)::

    python benchmarks/bench_conv.py --fastnet-only [--algorithms] [--threads 1,2] [--only conv2]

times every fastnet conv/pool op, with the fastnet-only variants (``bwd+relu``/``bwd-w+relu``:
the fused ReLU's mask applied inside the kernel; the pool without its argmax) and, with
``--algorithms``, one row per forced kernel path (the ops' private ``_algorithm``).
"""
import argparse
import sys

import pytest

import _source_checkout  # noqa: F401
from fastnet.bench.pytest_cases import script_main, suite_test

pytestmark = pytest.mark.ci
ALGORITHMS = ("direct", "implicit", "gemm", "shared")
test_conv = suite_test("conv")
test_pool = suite_test("pool")


def fastnet_only(threads, only, algorithms):
    """Median time of every fastnet conv and pool op (and forced path) in this process."""
    import fastnet
    from fastnet.bench.stats import median
    from fastnet.bench.suites import conv, pool
    from fastnet.bench.worker import time_calls
    for t in threads:
        fastnet.set_num_threads(t)
        rows = []
        for name in conv.SHAPES:
            for alg in (None, *ALGORITHMS) if algorithms else (None,):
                ops = conv.fastnet_conv_ops(name, alg)
                rows += [(name, op, alg, ops[op][0])
                         for op in (*conv.OPS[name], *conv.FASTNET_EXTRA_OPS)]
        ops = pool.fastnet_pool_ops()
        rows += [("pool", op, None, ops[op][0]) for op in (*pool.OPS, *pool.FASTNET_EXTRA_OPS)]
        for name, op, alg, fn in rows:
            if only and not any(o in name for o in only):
                continue
            try:
                us = median(time_calls(fn, budget=0.25, warmup=0.1)) * 1e6
            except ValueError:   # a forced path that does not exist for this op
                continue
            print(f"{t} thr  {name:11} {op:18} {alg or 'default':8} {us:10.1f} us", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--fastnet-only", action="store_true")
    ap.add_argument("--algorithms", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", default=None)
    known, rest = ap.parse_known_args()
    if known.fastnet_only:
        fastnet_only([int(t) for t in (known.threads or "1,2").split(",")],
                     [s for s in known.only.split(",") if s], known.algorithms)
        sys.exit(0)
    sys.argv[1:] = (["--threads", known.threads] if known.threads else []) + rest
    script_main("conv", "pool")
