"""Step time of a network driven into denormals (issue 10): a Dense/Conv network whose inputs
and weights are scaled so that its activations and gradients are float32 subnormals, against
the same network at ordinary scale, in the same run.  fastnet's workers run with flush-to-zero
and denormals-are-zero (MXCSR FTZ|DAZ), so the two step times should match; a NumPy matmul of
the same subnormal operands (no FTZ) is timed as the peer that shows the slowdown avoided.

    python benchmarks/bench_denormals.py [--threads 1] [--repeat 30]
"""
import argparse
import time

import numpy as np

import _source_checkout  # noqa: F401
import fastnet
from fastnet import layers as L, models, ops
from fastnet.utils import set_random_seed


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def build(scale):
    set_random_seed(0)
    model = models.Sequential([
        L.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(256, activation="relu"),
        L.Dense(10),
    ])
    model.compile(optimizer="sgd", loss="mse")
    model.set_weights([w * scale for w in model.get_weights()])
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    fastnet.config.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = np.zeros((64, 10), np.float32)
    print(f"denormal benchmark, {args.threads} thread(s), median of {args.repeat} (shared machine)")
    results = {}
    for name, scale, xs in (("normal", 1.0, 1.0), ("denormal", 1e-19, 1e-19)):
        model = build(scale)
        xin = (x * np.float32(xs)).astype(np.float32)
        results[name] = median_time(lambda: model.train_on_batch(xin, y), args.repeat)
    a = rng.random((256, 512), dtype=np.float32)
    b = rng.random((512, 256), dtype=np.float32)
    sub = np.float32(1e-20)
    for name, s in (("normal", 1.0), ("denormal", sub)):
        aa, bb = a * np.float32(s), b * np.float32(s) if s != 1.0 else b
        results["fastnet matmul " + name] = median_time(lambda: ops.matmul(aa, bb), args.repeat)
        results["numpy matmul " + name] = median_time(lambda: aa @ bb, args.repeat)
    for k, v in results.items():
        print(f"  {k:<28} {v * 1e3:8.3f} ms")
    print(f"train step   denormal/normal: {results['denormal'] / results['normal']:.2f}x")
    for lib in ("fastnet", "numpy"):
        r = results[f"{lib} matmul denormal"] / results[f"{lib} matmul normal"]
        print(f"{lib + ' matmul':<12} denormal/normal: {r:.2f}x")


if __name__ == "__main__":
    main()
