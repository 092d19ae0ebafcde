"""Robustness of the native engine: the GIL is released in the kernels, concurrent predict is
safe, fit works in a forked child, training is bitwise reproducible, thread-count changes take
effect, no leaks over many steps, and every OpenMP worker runs with flush-to-zero."""
import gc
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastnet
from fastnet import layers as L, models, ops
from fastnet._kernels import threads as _threads
from fastnet.cli import build_classic_cnn
from fastnet.utils import set_random_seed

# Child interpreters run from the folder holding the fastnet this test imported (the
# installed one in CI): started from a source checkout they would import its unbuilt copy.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))


@pytest.fixture(autouse=True)
def _restore_threads():
    n = fastnet.config.get_num_threads()
    yield
    fastnet.config.set_num_threads(n)


def small_cnn(seed=0, classes=3):
    set_random_seed(seed)
    model = models.Sequential([
        L.Conv2D(8, 3, activation="relu", input_shape=(10, 10, 1)),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(16, activation="relu"),
        L.Dense(classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def toy_data(n=64, seed=1, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 10, 10, 1), dtype=np.float32)
    y = (x[:, :5].sum(axis=(1, 2, 3)) * classes / 50.0).astype(np.int64).clip(0, classes - 1)
    return x, y


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- (a) the GIL is released while a kernel runs ----------------------------------------------

def _gil_held_fraction(call):
    """The longest stretch, as a fraction of ``call()``'s duration, during which a second Python
    thread could not run while ``call()`` ran: near 1 when the call holds the GIL throughout,
    a few switch intervals (5 ms) when its kernel releases the GIL."""
    stalls, stop, started = [], threading.Event(), threading.Event()

    def counter():
        last = time.perf_counter()
        started.set()
        while not stop.is_set():
            now = time.perf_counter()
            if now - last > 0.002:
                stalls.append((last, now))
            last = now

    t = threading.Thread(target=counter)
    t.start()
    started.wait()
    try:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    inside = [min(e, t1) - max(s, t0) for s, e in stalls if e > t0 and s < t1]
    return max(inside, default=0.0) / (t1 - t0)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_gil_released_in_kernels():
    fastnet.config.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.random((8, 64, 64, 32), dtype=np.float32)
    k = rng.random((3, 3, 32, 64), dtype=np.float32)
    y = ops.conv2d(x, k, padding="same")
    a = rng.random((768, 768), dtype=np.float32)
    calls = {
        "conv2d": lambda: ops.conv2d(x, k, padding="same", out=y),
        "matmul": lambda: ops.matmul(a, a),
        "max_pool2d": lambda: [ops.max_pool2d(y, 2) for _ in range(3)],
    }
    # the control: pure Python holds the GIL (switches only every 5 ms)
    assert _gil_held_fraction(lambda: sum(range(3_000_000))) > 0.7
    for name, call in calls.items():
        frac = _gil_held_fraction(call)
        assert frac < 0.5, f"{name} kept another thread waiting for {frac:.0%} of its run"


# --- (b) concurrent predict --------------------------------------------------------------------

def test_concurrent_predict_matches_serial():
    set_random_seed(0)
    model = build_classic_cnn()
    rng = np.random.default_rng(0)
    batches = [rng.random((n, 28, 28, 1), dtype=np.float32) for n in (1, 3, 7, 16, 5, 2, 9, 33)]
    want = [model.predict(b, verbose=0) for b in batches]
    got, errors = [None] * 8, []

    def worker(i):
        try:
            for _ in range(4):
                out = model.predict(batches[i], verbose=0)
                if got[i] is not None and not np.array_equal(out, got[i]):
                    raise AssertionError(f"thread {i}: predict changed between calls")
                got[i] = out
        except BaseException as e:   # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


# --- (c) fit in a child forked after OpenMP ran ----------------------------------------------

def _fit_in_child(queue):
    try:
        x, y = toy_data()
        model = small_cnn()
        hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        queue.put(("ok", float(hist.history["loss"][-1])))
    except BaseException as e:
        queue.put(("error", repr(e)))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork on this platform")
def test_fit_in_forked_child_after_openmp():
    fastnet.config.set_num_threads(2)
    rng = np.random.default_rng(0)
    ops.conv2d(rng.random((4, 32, 32, 8), dtype=np.float32),
               rng.random((3, 3, 8, 16), dtype=np.float32))   # the parent's OpenMP team exists
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fit_in_child, args=(queue,))
    proc.start()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail("fit hung in a child forked after OpenMP ran")
    assert proc.exitcode == 0, f"the forked child died (exit code {proc.exitcode})"
    status, value = queue.get(timeout=10)
    assert status == "ok", value
    assert np.isfinite(value)


# --- (d) bitwise reproducibility ----------------------------------------------------------------

@pytest.mark.parametrize("nthreads", [1, 2])
def test_same_seed_same_threads_bitwise_identical(nthreads):
    fastnet.config.set_num_threads(nthreads)
    x, y = toy_data()
    runs = []
    for _ in range(2):
        model = small_cnn(seed=5)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=True)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# --- (e) set_num_threads takes effect between steps ------------------------------------------

THREADS_SCRIPT = textwrap.dedent("""
    import os, numpy as np, fastnet
    from fastnet import ops
    def tasks():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = int(fields[11]) + int(fields[12])   # utime + stime, clock ticks
        return out
    rng = np.random.default_rng(0)
    x = rng.random((8, 64, 64, 16), dtype=np.float32)
    k = rng.random((3, 3, 16, 32), dtype=np.float32)
    def steps():
        for _ in range(12):
            ops.conv2d(x, k, padding="same")
    fastnet.config.set_num_threads(1); steps(); one = tasks()
    fastnet.config.set_num_threads(2); steps(); two = tasks()
    fastnet.config.set_num_threads(1); steps(); back = tasks()
    workers = [t for t in two if t not in one]
    print(len(one), len(two), sum(two[t] for t in workers), sum(back[t] for t in workers))
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not fastnet.config.openmp_enabled(),
                    reason="needs Linux /proc and an OpenMP build")
def test_set_num_threads_takes_effect_between_steps():
    env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))   # the same fastnet
    out = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, cwd=_PKG_PARENT,
                         capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n_one, n_two, cpu_two, cpu_back = map(int, out.stdout.split())
    assert n_two == n_one + 1, "set_num_threads(2) did not start a second worker"
    assert cpu_two > 0, "the second worker did no work at 2 threads"
    # passive waiting: an idle worker burns no CPU; 2 ticks of slack for the hand-over
    assert cpu_back - cpu_two <= 2, "the second worker kept working after set_num_threads(1)"


# --- (f) leaks --------------------------------------------------------------------------------

def _growth(step, warmup, n, every):
    """(tracemalloc growth, RSS growth) in bytes over n calls after warm-up (minimum of the
    samples taken after each block of ``every`` calls, so one late allocation of a lazily
    grown pool is not counted as a leak but steady growth is)."""
    for _ in range(warmup):
        step()
    gc.collect()
    tracemalloc.start()
    try:
        base_py, base_rss = tracemalloc.get_traced_memory()[0], rss_bytes()
        py, rss = [], []
        for i in range(n):
            step()
            if (i + 1) % every == 0:
                gc.collect()
                py.append(tracemalloc.get_traced_memory()[0])
                rss.append(rss_bytes())
    finally:
        tracemalloc.stop()
    half = len(py) // 2   # growth of the second half over the first: a leak shows up in both
    return (min(py[half:]) - base_py, max(rss[half:]) - min(rss[:half]), rss[-1] - base_rss)


def _steady_growth(step, warmup, n, every):
    """``_growth``, measured again once when the first measurement is over the limits: a leak
    grows in every round, while a one-off (a malloc arena or a pymalloc pool the allocator
    takes once, late) does not come back in the second round."""
    py, rss_late, _ = _growth(step, warmup, n, every)
    if py >= 64 * 1024 or rss_late >= 1024 * 1024:
        py, rss_late, _ = _growth(step, 0, n, every)
    return py, rss_late


def test_no_leak_training_steps():
    fastnet.config.set_num_threads(1)
    x, y = toy_data(16)
    model = small_cnn()
    py, rss_late = _steady_growth(lambda: model.train_on_batch(x, y), 30, 300, 30)
    assert py < 64 * 1024, f"Python heap grew by {py} bytes over 300 training steps"
    assert rss_late < 1024 * 1024, f"RSS grew by {rss_late} bytes over the last 150 steps"


def test_no_leak_predict():
    fastnet.config.set_num_threads(1)
    x, _ = toy_data(4)
    model = small_cnn()
    py, rss_late = _steady_growth(lambda: model.predict(x, verbose=0), 100, 3000, 300)
    assert py < 64 * 1024, f"Python heap grew by {py} bytes over 3,000 predict calls"
    assert rss_late < 1024 * 1024, f"RSS grew by {rss_late} bytes over the last 1,500 calls"


# --- (g) flush-to-zero / denormals-are-zero in every worker -----------------------------------

@pytest.mark.skipif(not any(m in os.uname().machine.lower() for m in ("x86_64", "amd64")),
                    reason="MXCSR is x86")
def test_ftz_daz_in_every_worker():
    n = 2 if fastnet.config.openmp_enabled() else 1
    seen, after = _threads.worker_mxcsr(n)
    assert len(seen) == n
    for csr in seen:
        assert csr & 0x8000, f"FTZ not set in a worker (MXCSR {csr:#x})"
        assert csr & 0x0040, f"DAZ not set in a worker (MXCSR {csr:#x})"
    assert not after & 0x8040, f"the caller's MXCSR was not restored ({after:#x})"
    # and the kernels flush: a subnormal product is 0, not a slow subnormal
    tiny = np.full((8, 8), 1e-20, np.float32)
    assert not ops.matmul(tiny, tiny).any()
