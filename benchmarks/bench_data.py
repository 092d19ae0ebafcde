"""The input pipeline against the training step it feeds (the data side's targets):

1. supply: an augmenting pipeline (shuffle -> batch 64 -> RandomRotation(+-10 deg) ->
   RandomTranslation(+-10%), bilinear) produces MNIST batches at least 10x faster than the
   classic Keras CNN's training step (batch 64, Adam) consumes them.  The pipeline is timed
   single-threaded, as it runs on the prefetch thread.  PyTorch's affine_grid + grid_sample
   (the same bilinear warp, zero padding) on the same batch is the peer for the warp itself.
2. overlap: one training epoch fed by the prefetching Dataset takes no more than 1.05x an
   epoch over pre-made (pre-augmented) arrays.  Epochs of the two kinds alternate on one
   model; the median of the back-to-back pairs' ratios.  ``prefetch()`` augments on a
   background thread when a core is free of the training threads, else on the training
   thread with every kernel thread (--prefetch thread / inline forces one or the other).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_data.py [--threads 2] [--rounds 5]
                          [--epoch-rounds 15] [--prefetch auto|thread|inline]

Uses the bundled 4,000-image MNIST sample (no download).  Timings on a shared machine are
noisy: the figures that matter are the ratios, measured in the same run.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import _source_checkout  # noqa: F401,E402
import fastnet  # noqa: E402
from fastnet import preprocessing as pp  # noqa: E402
from fastnet.cli import build_classic_cnn  # noqa: E402
from fastnet.data import Dataset  # noqa: E402
from fastnet.data import dataset as dataset_module  # noqa: E402
from fastnet.datasets import load_digits  # noqa: E402
from fastnet.ops import augment as aug_ops  # noqa: E402

BATCH = 64


def _augmenters(seed):
    rot = pp.RandomRotation(10 / 360, fill_mode="constant", seed=seed)
    trans = pp.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1)
    return lambda x, y: (trans(rot(x, training=True), training=True), y)


def pipeline(x, y, seed=0, prefetch=True, background=None):
    ds = (Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(BATCH)
          .map(_augmenters(seed)))
    return ds.prefetch(2, background=background) if prefetch else ds


def time_pipeline(x, y, rounds):
    """Seconds per batch of the augmenting pipeline, one thread, no prefetch (median of
    whole passes)."""
    per = []
    with aug_ops.single_threaded():
        ds = pipeline(x, y, prefetch=False)
        for _ in range(rounds):
            t0 = time.perf_counter()
            n = sum(1 for _ in ds)
            per.append((time.perf_counter() - t0) / n)
    return statistics.median(per)


def time_train_step(model, x, y, rounds, steps=30):
    xb, yb = x[:BATCH], y[:BATCH]
    for _ in range(3):
        model.train_on_batch(xb, yb)
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(xb, yb)
        per.append((time.perf_counter() - t0) / steps)
    return statistics.median(per)


def time_torch_warp(x, threads, rounds):
    """Seconds per batch of PyTorch's bilinear affine warp of the same images, or None."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)
    imgs = torch.from_numpy(np.ascontiguousarray(x[:BATCH].transpose(0, 3, 1, 2)))
    rng = np.random.default_rng(0)
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(20):
            a = rng.uniform(-10, 10, BATCH) * np.pi / 180
            t = rng.uniform(-0.2, 0.2, (BATCH, 2))       # +-10% in [-1, 1] coordinates
            theta = np.zeros((BATCH, 2, 3), np.float32)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = np.cos(a), -np.sin(a), t[:, 0]
            theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = np.sin(a), np.cos(a), t[:, 1]
            grid = F.affine_grid(torch.from_numpy(theta), list(imgs.shape), align_corners=False)
            F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        per.append((time.perf_counter() - t0) / 20)
    return statistics.median(per)


def time_epochs(model, x, y, x_aug, y_aug, rounds, background=None):
    """(array epoch seconds, pipeline epoch seconds, median of the per-round ratios, arrays,
    piped): the two kinds alternate, the order swapped every round, and each round's ratio
    compares epochs run back to back, so the drift of a shared machine (epoch times moving by
    10-20% over a minute here) cancels out of the ratio."""
    arrays, piped, ratios = [], [], []
    ds = pipeline(x, y, seed=1, background=background)
    model.fit(x_aug, y_aug, batch_size=BATCH, epochs=1, verbose=0)   # warm both paths up
    model.fit(ds, epochs=1, verbose=0)
    for r in range(rounds):
        pair = {}
        for kind in (("arrays", "piped") if r % 2 == 0 else ("piped", "arrays")):
            t0 = time.perf_counter()
            if kind == "arrays":
                model.fit(x_aug, y_aug, batch_size=BATCH, epochs=1, verbose=0)
            else:
                model.fit(ds, epochs=1, verbose=0)
            pair[kind] = time.perf_counter() - t0
        arrays.append(pair["arrays"])
        piped.append(pair["piped"])
        ratios.append(pair["piped"] / pair["arrays"])
    return (statistics.median(arrays), statistics.median(piped), statistics.median(ratios),
            arrays, piped)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=fastnet.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epoch-rounds", type=int, default=15,
                        help="pairs of epochs (arrays, pipeline) for the overlap ratio")
    parser.add_argument("--prefetch", choices=("auto", "thread", "inline"), default="auto",
                        help="Dataset.prefetch's background argument: None, True, False")
    args = parser.parse_args(argv)
    fastnet.set_num_threads(args.threads)
    fastnet.utils.set_random_seed(0)
    (x, y), _ = load_digits()
    model = build_classic_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    print(f"bench_data: bundled MNIST ({len(x)} images), batch {BATCH}, "
          f"{args.threads} training thread(s), {args.rounds} rounds (medians)")

    t_pipe = time_pipeline(x, y, args.rounds)
    t_step = time_train_step(model, x, y, args.rounds)
    t_torch = time_torch_warp(x, args.threads, args.rounds)
    print(f"augmenting pipeline, 1 thread : {t_pipe * 1e3:8.3f} ms/batch "
          f"({BATCH / t_pipe:,.0f} images/s)")
    print(f"CNN training step, {args.threads} thread(s): {t_step * 1e3:8.3f} ms/batch "
          f"({BATCH / t_step:,.0f} images/s)")
    print(f"supply / demand ratio         : {t_step / t_pipe:8.1f}x  (target >= 10x)")
    if t_torch is not None:
        one = pp.RandomRotation(10 / 360, fill_mode="constant", seed=0)
        xb = x[:BATCH]
        for _ in range(3):
            one(xb)
        t0 = time.perf_counter()
        for _ in range(50):
            one(xb)
        t_fast = (time.perf_counter() - t0) / 50
        print(f"warp of one batch: fastnet RandomRotation {t_fast * 1e6:7.1f} us, PyTorch "
              f"affine_grid+grid_sample {t_torch * 1e6:7.1f} us ({args.threads} thread(s))")

    x_aug = np.concatenate([b[0] for b in pipeline(x, y, seed=2, prefetch=False)])
    y_aug = np.concatenate([b[1] for b in pipeline(x, y, seed=2, prefetch=False)])
    background = {"auto": None, "thread": True, "inline": False}[args.prefetch]
    t_arr, t_ds, ratio, arrays, piped = time_epochs(model, x, y, x_aug, y_aug,
                                                    args.epoch_rounds, background)
    mode = "thread" if (dataset_module._spare_core() if background is None else background) \
        else "training thread"
    print(f"prefetch={args.prefetch}: the pipeline ran on the {mode}")
    print(f"epoch on pre-made arrays      : {t_arr:8.3f} s  "
          f"({', '.join(f'{v:.2f}' for v in arrays)})")
    print(f"epoch on prefetching pipeline : {t_ds:8.3f} s  "
          f"({', '.join(f'{v:.2f}' for v in piped)})")
    print(f"pipeline / arrays             : {ratio:8.3f}x  median of the {len(arrays)} "
          f"back-to-back pairs (ratio of the medians {t_ds / t_arr:.3f}x; target <= 1.05x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
