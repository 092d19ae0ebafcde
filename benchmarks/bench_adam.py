"""Adam step on 10M float32 parameters: fastnet at 1 and 2 threads against the machine's copy
bandwidth (NumPy) and PyTorch's fused CPU Adam, measured interleaved in one run.

An Adam step reads param, grad, m, v and writes param, m, v: 28 bytes per float32 parameter, so
GB/s = 28 * n / seconds.  The copy is counted as STREAM does (bytes read + bytes written:
2 x 64 MiB per copy of a 64 MiB array); at 2 threads two Python threads each copy one half
(NumPy releases the GIL while copying).  Targets (issue 5): Adam >= 80% of the copy's GB/s at the
same thread count, and faster than ``torch.optim.Adam(fused=True)`` on one 10M-element tensor.

Rounds are interleaved (each round times every row once, in order) so that a neighbour's load
hits all rows alike, and each timed call follows an untimed one of the same row (hot threads);
the table gives medians.  ``cpu/wall`` well below the thread count means a
core was taken by another process during that row (the static split then waits for the
preempted thread): rerun.

    python benchmarks/bench_adam.py                       # the table (PyTorch rows if importable)
    python -m pytest benchmarks/bench_adam.py --benchmark-columns=median,rounds
"""
import argparse
import math
import os
import statistics
import sys
import threading
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
COPY_BYTES = 64 * 2 ** 20
LR, BETA_1, BETA_2, EPSILON = 1e-3, 0.9, 0.999, 1e-7


def make_state(n, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32)
    return param, grad, np.zeros(n, np.float32), np.zeros(n, np.float32)


def fastnet_step(state, nthreads):
    param, grad, m, v = state
    counter = [0]

    def run():
        old = fastnet.get_num_threads()
        fastnet.set_num_threads(nthreads)
        try:
            counter[0] += 1
            adam_update(param, grad, m, v, lr=LR, beta_1=BETA_1, beta_2=BETA_2,
                        epsilon=EPSILON, step=counter[0])
        finally:
            fastnet.set_num_threads(old)
    return run


def numpy_adam_step(state):
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


class _Workers:
    """Persistent threads that each run one slice of a job (NumPy copies release the GIL)."""

    def __init__(self, n):
        self.n, self.job = n, None
        self.go = [threading.Event() for _ in range(n)]
        self.done = [threading.Event() for _ in range(n)]
        for i in range(1, n):
            threading.Thread(target=self._loop, args=(i,), daemon=True).start()

    def _loop(self, i):
        while True:
            self.go[i].wait()
            self.go[i].clear()
            self.job(i)
            self.done[i].set()

    def run(self, job):
        self.job = job
        for i in range(1, self.n):
            self.go[i].set()
        job(0)
        for i in range(1, self.n):
            self.done[i].wait()
            self.done[i].clear()


def numpy_copy(nthreads, nbytes=COPY_BYTES):
    """Copy of a ``nbytes`` float32 array, split among ``nthreads`` Python threads."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    bounds = [len(src) * i // nthreads // 16 * 16 for i in range(nthreads)] + [len(src)]
    if nthreads == 1:
        return lambda: np.copyto(dst, src)
    workers = _Workers(nthreads)

    def part(i):
        np.copyto(dst[bounds[i]:bounds[i + 1]], src[bounds[i]:bounds[i + 1]])
    return lambda: workers.run(part)


def torch_fused_adam(n, nthreads):
    """PyTorch's fused CPU Adam on one n-element float32 tensor (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(n, generator=gen, requires_grad=True)
    p.grad = torch.randn(n, generator=gen)
    opt = torch.optim.Adam([p], lr=LR, betas=(BETA_1, BETA_2), eps=EPSILON, fused=True)

    def run():
        torch.set_num_threads(nthreads)
        opt.step()
    return run


def gbps(seconds, n=N_PARAMS):
    return BYTES_PER_PARAM * n / seconds / 1e9


# ---- pytest-benchmark ---------------------------------------------------------------------------

def _bench(benchmark, fn, nbytes=BYTES_PER_PARAM * N_PARAMS):
    benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)
    if benchmark.stats is not None:   # None under --benchmark-disable
        benchmark.extra_info["GB/s (median)"] = round(
            nbytes / benchmark.stats.stats.median / 1e9, 1)


def test_adam_fastnet_1_thread(benchmark):
    _bench(benchmark, fastnet_step(make_state(N_PARAMS), 1))


def test_adam_fastnet_2_threads(benchmark):
    _bench(benchmark, fastnet_step(make_state(N_PARAMS), 2))


def test_adam_numpy(benchmark):
    _bench(benchmark, numpy_adam_step(make_state(N_PARAMS)))


def test_copy_numpy_1_thread(benchmark):
    _bench(benchmark, numpy_copy(1), 2 * COPY_BYTES)


def test_copy_numpy_2_threads(benchmark):
    _bench(benchmark, numpy_copy(2), 2 * COPY_BYTES)


def test_adam_torch_fused_2_threads(benchmark):
    import pytest
    fn = torch_fused_adam(N_PARAMS, 2)
    if fn is None:
        pytest.skip("torch is not installed")
    _bench(benchmark, fn)


# ---- a plain table ------------------------------------------------------------------------------

def _interleaved(rows, repeats, warmup=3):
    """{name: (median seconds, cpu/wall)}, timing each row once per round.

    Each timed call follows an untimed call of the same row: the threads a row uses are then
    awake, as they are in training where the optimizer step follows the backward kernels.  (On
    this VM a worker thread that has gone to sleep takes about a millisecond to wake up, which
    a cold call would charge to whichever row happens to run after a switch.)"""
    for _ in range(warmup):
        for _, fn, _, _ in rows:
            fn()
    times = {name: [] for name, _, _, _ in rows}
    busy = {name: [] for name, _, _, _ in rows}
    for _ in range(repeats):
        for name, fn, _, _ in rows:
            fn()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            times[name].append(t1 - t0)
            busy[name].append(c1 - c0)
    return {name: (statistics.median(times[name]), sum(busy[name]) / sum(times[name]))
            for name in times}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=N_PARAMS)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch's fused Adam")
    parser.add_argument("--numpy-adam", action="store_true",
                        help="add the Keras formula written with NumPy ufuncs (slow)")
    args = parser.parse_args()
    n = args.params
    threads = [int(t) for t in args.threads.split(",")]
    adam_bytes = BYTES_PER_PARAM * n
    state = make_state(n)
    rows = []   # (name, fn, bytes moved per call, threads)
    for t in threads:
        rows.append((f"fastnet Adam, {t} thr", fastnet_step(state, t), adam_bytes, t))
        rows.append((f"NumPy copy 64 MiB, {t} thr", numpy_copy(t), 2 * COPY_BYTES, t))
        if not args.no_torch:
            fn = torch_fused_adam(n, t)
            if fn is not None:
                rows.append((f"torch fused Adam, {t} thr", fn, adam_bytes, t))
    if args.numpy_adam:
        rows.append(("NumPy Adam (Keras formula)", numpy_adam_step(state), adam_bytes, 1))
    res = _interleaved(rows, args.repeats)

    torch_version = ""
    if not args.no_torch:
        try:
            import torch
            torch_version = f", torch {torch.__version__}"
        except ImportError:
            torch_version = ", torch not installed"
    print(f"Adam step, {n:,} float32 params, {BYTES_PER_PARAM} B/param; "
          f"copy {COPY_BYTES >> 20} MiB (STREAM: read + write); {args.repeats} interleaved "
          f"rounds, medians "
          f"(OpenMP {'on' if fastnet.config.openmp_enabled() else 'off'}{torch_version})")
    print(f"{'row':30s} {'median ms':>10s} {'GB/s':>8s} {'cpu/wall':>9s}")
    preempted = False
    for name, _, nbytes, t in rows:
        s, b = res[name]
        flag = " *" if b < 0.9 * t else ""
        preempted = preempted or bool(flag)
        print(f"{name:30s} {s * 1e3:10.2f} {nbytes / s / 1e9:8.1f} {b:9.2f}{flag}")
    print()
    for t in threads:
        fast = res[f"fastnet Adam, {t} thr"][0]
        copy = res[f"NumPy copy 64 MiB, {t} thr"][0]
        line = (f"{t} thread(s): fastnet Adam at {adam_bytes / fast / (2 * COPY_BYTES / copy):.0%} "
                f"of the copy bandwidth (target >= 80%)")
        key = f"torch fused Adam, {t} thr"
        if key in res:
            line += f"; {res[key][0] / fast:.2f}x PyTorch fused Adam's speed (target > 1)"
        print(line)
    if preempted:
        print("* cpu/wall well below the thread count: another process held a core; rerun.")


if __name__ == "__main__":
    main()
