"""Adam step on 10M float32 parameters: fastnet at 1 and 2 threads against NumPy, in GB/s.

An Adam step reads param, grad, m, v and writes param, m, v: 28 bytes per float32 parameter, so
GB/s = 28 * n / seconds.  (DESIGN.md: PyTorch's fused Adam reaches about 40 / 44 GB/s at 1 / 2
threads on this machine.)

    python -m pytest benchmarks/bench_adam.py --benchmark-columns=median,rounds
    python benchmarks/bench_adam.py            # a table of medians
"""
import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

try:
    import fastnet
except ImportError:  # run as a script from a source checkout (built in place)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fastnet
from fastnet.ops.optim import adam_update

N_PARAMS = 10_000_000
BYTES_PER_PARAM = 28
LR, BETA_1, BETA_2, EPSILON = 1e-3, 0.9, 0.999, 1e-7


def make_state(n, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32)
    return param, grad, np.zeros(n, np.float32), np.zeros(n, np.float32)


def fastnet_step(state, nthreads):
    param, grad, m, v = state
    counter = [0]

    def step():
        counter[0] += 1
        adam_update(param, grad, m, v, lr=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON,
                    step=counter[0])

    def run():
        old = fastnet.get_num_threads()
        fastnet.set_num_threads(nthreads)
        try:
            step()
        finally:
            fastnet.set_num_threads(old)
    return run


def numpy_step(state):
    """The Keras 3 formula with NumPy ufuncs and one preallocated temporary (no allocation)."""
    param, grad, m, v = state
    tmp = np.empty_like(param)
    b1c, b2c, eps = np.float32(1 - BETA_1), np.float32(1 - BETA_2), np.float32(EPSILON)
    counter = [0]

    def run():
        counter[0] += 1
        t = counter[0]
        lr_t = np.float32(LR * math.sqrt(1 - BETA_2 ** t) / (1 - BETA_1 ** t))
        np.subtract(grad, m, out=tmp)
        np.multiply(tmp, b1c, out=tmp)
        np.add(m, tmp, out=m)
        np.multiply(grad, grad, out=tmp)
        np.subtract(tmp, v, out=tmp)
        np.multiply(tmp, b2c, out=tmp)
        np.add(v, tmp, out=v)
        np.sqrt(v, out=tmp)
        np.add(tmp, eps, out=tmp)
        np.divide(m, tmp, out=tmp)
        np.multiply(tmp, lr_t, out=tmp)
        np.subtract(param, tmp, out=param)
    return run


def gbps(seconds, n=N_PARAMS):
    return BYTES_PER_PARAM * n / seconds / 1e9


# ---- pytest-benchmark ---------------------------------------------------------------------------

def _bench(benchmark, fn):
    benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)
    benchmark.extra_info["params"] = N_PARAMS
    benchmark.extra_info["GB/s (median)"] = round(gbps(benchmark.stats.stats.median), 1)


def test_adam_fastnet_1_thread(benchmark):
    _bench(benchmark, fastnet_step(make_state(N_PARAMS), 1))


def test_adam_fastnet_2_threads(benchmark):
    _bench(benchmark, fastnet_step(make_state(N_PARAMS), 2))


def test_adam_numpy(benchmark):
    _bench(benchmark, numpy_step(make_state(N_PARAMS)))


# ---- a plain table ------------------------------------------------------------------------------

def _median_seconds(fn, repeats, warmup=3):
    """(median wall seconds, process CPU seconds / wall seconds over the timed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    cpu0 = time.process_time()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (time.process_time() - cpu0) / sum(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=N_PARAMS)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    n = args.params
    state = make_state(n)
    rows = [
        ("fastnet adam_update, 1 thread", fastnet_step(state, 1)),
        ("fastnet adam_update, 2 threads", fastnet_step(state, 2)),
        ("NumPy (Keras formula, in place)", numpy_step(state)),
    ]
    print(f"Adam step, {n:,} float32 params, {BYTES_PER_PARAM} B/param "
          f"(OpenMP {'on' if fastnet.config.openmp_enabled() else 'off'})")
    print(f"{'implementation':34s} {'median ms':>10s} {'GB/s':>8s} {'cpu/wall':>9s}")
    for name, fn in rows:
        s, busy = _median_seconds(fn, args.repeats)
        print(f"{name:34s} {s * 1e3:10.2f} {gbps(s, n):8.1f} {busy:9.2f}")
    print("cpu/wall well below the thread count means another process held a core (the static "
          "split then waits for the preempted thread): rerun on an idle machine.")


if __name__ == "__main__":
    main()
