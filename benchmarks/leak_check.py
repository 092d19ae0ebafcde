"""Leak check of the training and inference loops (issue 10): N training steps and M predict
calls of the classic Keras CNN (28x28x1, batch 32 for training, 8 for predict), reporting the
growth of RSS and of the Python heap (tracemalloc) after a warm-up, per block of calls.

    python benchmarks/leak_check.py [--steps 5000] [--predicts 50000] [--threads 1]

A flat loop shows the same figures block after block; the test with a stated tolerance is
tests/test_robustness.py (300 steps / 3,000 predicts of a smaller network).
"""
import argparse
import gc
import os
import time
import tracemalloc

import numpy as np

import _source_checkout  # noqa: F401
import fastnet
from fastnet.cli import build_classic_cnn
from fastnet.utils import set_random_seed


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(name, step, n, warmup, blocks=10):
    for _ in range(warmup):
        step()
    gc.collect()
    tracemalloc.start()
    py0, rss0, t0 = tracemalloc.get_traced_memory()[0], rss_mib(), time.perf_counter()
    print(f"{name}: warm-up {warmup} calls done, RSS {rss0:.1f} MiB")
    rows = []
    for b in range(blocks):
        for _ in range(n // blocks):
            step()
        gc.collect()
        py, rss = tracemalloc.get_traced_memory()[0], rss_mib()
        rows.append((py - py0, rss - rss0))
        print(f"  after {(b + 1) * (n // blocks):>6} calls: python heap {py - py0:+9d} B,"
              f"  RSS {rss - rss0:+7.2f} MiB   ({time.perf_counter() - t0:.0f} s)", flush=True)
    tracemalloc.stop()
    half = blocks // 2
    late_py = rows[-1][0] - min(r[0] for r in rows[:half])
    late_rss = max(r[1] for r in rows[half:]) - min(r[1] for r in rows[:half])
    print(f"{name}: growth over the second half: python heap {late_py:+d} B, "
          f"RSS {late_rss:+.2f} MiB")
    return late_py, late_rss


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--predicts", type=int, default=50000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    fastnet.config.set_num_threads(args.threads)
    set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_classic_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    xp = x[:8].copy()
    print(f"fastnet leak check, {args.threads} thread(s), pid {os.getpid()}")
    if args.steps:
        run("train_on_batch", lambda: model.train_on_batch(x, y), args.steps, 100)
    if args.predicts:
        run("predict", lambda: model.predict(xp, verbose=0), args.predicts, 500)


if __name__ == "__main__":
    main()
