"""Adam step on 10M float32 parameters (one flat buffer, as a fastnet model keeps them).

An Adam step reads param, grad, m, v and writes param, m, v: 28 bytes per parameter, so
GB/s = 28 * n / seconds; it is memory bound.  fastnet's fused ``ops.adam_update`` against the
Keras formula written in NumPy ufuncs (one preallocated temporary) and ``torch.optim.Adam``
(default: the single-tensor loop; best: ``fused=True``).  The ``copy`` row is the machine's
copy bandwidth measured with NumPy (STREAM counting: bytes read + written; at n threads, n
Python threads each copy a slice), the roof for a memory-bound step.
"""
import math
import threading

import numpy as np

from fastnet.bench.cases import Bench, Case, checksum

SUITE = "adam"
LIBRARIES = ("fastnet", "numpy", "torch")
N_PARAMS = 10_000_000
BYTES_PER_PARAM = 28
COPY_BYTES = 64 * 2 ** 20
LR, BETA_1, BETA_2, EPSILON = 1e-3, 0.9, 0.999, 1e-7


def cases(batches=None):
    return [Case(SUITE, "adam", f"{N_PARAMS:,} params", float(BYTES_PER_PARAM * N_PARAMS),
                 "GB/s", params=("adam", N_PARAMS), quick=True),
            Case(SUITE, "copy (roof)", f"{COPY_BYTES >> 20} MiB", 2.0 * COPY_BYTES, "GB/s",
                 params=("copy", COPY_BYTES))]


def make_state(n, seed=0):
    """param, grad, m, v float32 (m and v zero, as after ``build``)."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32)
    return param, grad, np.zeros(n, np.float32), np.zeros(n, np.float32)


def fastnet_adam(state):
    from fastnet.ops.optim import adam_update
    param, grad, m, v = state
    step = [0]

    def run():
        step[0] += 1
        adam_update(param, grad, m, v, lr=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON,
                    step=step[0])
    return run


def numpy_adam(state):
    """The Keras 3 formula with NumPy ufuncs and one preallocated temporary (no allocation)."""
    param, grad, m, v = state
    tmp = np.empty_like(param)
    b1c, b2c, eps = np.float32(1 - BETA_1), np.float32(1 - BETA_2), np.float32(EPSILON)
    step = [0]

    def run():
        step[0] += 1
        t = step[0]
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


def torch_adam(state, fused):
    import torch
    param, grad, _, _ = state
    p = torch.from_numpy(param).requires_grad_(True)
    p.grad = torch.from_numpy(grad)
    opt = torch.optim.Adam([p], lr=LR, betas=(BETA_1, BETA_2), eps=EPSILON,
                           fused=True if fused else None)
    return opt.step


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
    """(copy call, destination): a ``nbytes`` float32 copy split among ``nthreads`` threads."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    if nthreads == 1:
        return (lambda: np.copyto(dst, src)), dst
    bounds = [len(src) * i // nthreads // 16 * 16 for i in range(nthreads)] + [len(src)]
    workers = _Workers(nthreads)

    def part(i):
        np.copyto(dst[bounds[i]:bounds[i + 1]], src[bounds[i]:bounds[i + 1]])
    return (lambda: workers.run(part)), dst


def make(case, config, ctx):
    kind, n = case.params
    if kind == "copy":
        if config.library != "numpy":
            return None
        fn, dst = numpy_copy(ctx.threads, n)
        return Bench(fn, lambda: (fn(), checksum(dst[:1024]))[1])
    state = make_state(n)
    if config.library == "fastnet":
        fn = fastnet_adam(state)
    elif config.library == "numpy":
        fn = numpy_adam(state)
    elif config.library == "torch":
        fn = torch_adam(state, config.option("fused_adam"))
    else:
        return None

    def probe():
        fn()
        return checksum(state[0])
    return Bench(fn, probe)
