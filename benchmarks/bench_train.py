"""One training step of the classic Keras CNN (batch 64, 28x28x1, Adam): fastnet vs PyTorch.

pytest-benchmark mode (``pytest benchmarks/bench_train.py --benchmark-only``) times one step of
fastnet and, when installed, of PyTorch with the same network in the same run.

Script mode (``python benchmarks/bench_train.py [--threads 1,2] [--rounds 3]``) follows
DESIGN.md's method: every configuration runs in a fresh process, interleaved round by round
(fastnet, torch NCHW, torch channels_last, torch channels_last + tuned allocator, ...), and the
medians of images/s are compared.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH = 64
TUNED_ALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "10000000000"}


def fastnet_model():
    from fastnet.cli import build_classic_cnn
    from fastnet.utils import set_random_seed
    set_random_seed(0)
    model = build_classic_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def batch_data(n=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)


def fastnet_step_fn(model):
    x, y = batch_data()
    model.train_on_batch(x, y)  # build and plan the buffers
    return lambda: model.train_on_batch(x, y)


def torch_step_fn(channels_last, keras_model=None):
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
            self.d1, self.d2 = nn.Linear(576, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
            x = torch.relu(self.c3(x))
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten in NHWC order, like Keras
            return self.d2(torch.relu(self.d1(x)))

    net = Net()
    if keras_model is not None:  # same weights as fastnet
        w = keras_model.get_weights()
        with torch.no_grad():
            for i, conv in enumerate((net.c1, net.c2, net.c3)):
                conv.weight.copy_(torch.from_numpy(w[2 * i].transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(w[2 * i + 1]))
            for i, lin in enumerate((net.d1, net.d2)):
                lin.weight.copy_(torch.from_numpy(w[6 + 2 * i].T.copy()))
                lin.bias.copy_(torch.from_numpy(w[7 + 2 * i]))
    x, y = batch_data()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss
    step()
    return step


# -- pytest-benchmark --------------------------------------------------------------------------
def test_fastnet_train_step(benchmark):
    step = fastnet_step_fn(fastnet_model())
    benchmark.extra_info["images_per_step"] = BATCH
    benchmark(step)


def test_torch_train_step_channels_last(benchmark):
    import pytest
    torch = pytest.importorskip("torch")
    import fastnet
    torch.set_num_threads(fastnet.get_num_threads())
    step = torch_step_fn(True)
    benchmark.extra_info["images_per_step"] = BATCH
    benchmark(step)


# -- script mode: fresh processes, interleaved -------------------------------------------------
def _measure(kind, threads, steps, repeats):
    """Run in a child process: print JSON with images/s medians."""
    if kind == "fastnet":
        import fastnet
        fastnet.set_num_threads(threads)
        step = fastnet_step_fn(fastnet_model())
    else:
        import torch
        torch.set_num_threads(threads)
        step = torch_step_fn(kind.startswith("torch-cl"))
    for _ in range(10):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * BATCH / (time.perf_counter() - t0))
    print(json.dumps({"kind": kind, "threads": threads, "images_per_s": statistics.median(rates)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per configuration")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, threads = args.child.split(":")
        return _measure(kind, int(threads), args.steps, args.repeats)
    try:
        import torch  # noqa: F401
        kinds = ["fastnet", "torch-nchw", "torch-cl", "torch-cl-alloc"]
    except ImportError:
        print("PyTorch not installed (pip install torch==2.13.0): fastnet only")
        kinds = ["fastnet"]
    results = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        for rnd in range(args.rounds):
            for kind in kinds:
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                if kind.endswith("-alloc"):
                    env.update(TUNED_ALLOC)
                out = subprocess.run([sys.executable, __file__, "--child", f"{kind}:{threads}",
                                      "--steps", str(args.steps), "--repeats", str(args.repeats)],
                                     env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((kind, threads), []).append(r["images_per_s"])
                print(f"  round {rnd + 1} {kind:15s} {threads} thread(s): "
                      f"{r['images_per_s']:8.0f} images/s", flush=True)
    print(f"\nclassic CNN training step, batch {BATCH}, median of {args.rounds} fresh processes")
    print(f"{'threads':>7}  {'config':16s} {'images/s':>9}  {'fastnet / this':>14}")
    for threads in sorted({t for _, t in results}):
        fn = statistics.median(results[("fastnet", threads)])
        for kind in kinds:
            v = statistics.median(results[(kind, threads)])
            print(f"{threads:>7}  {kind:16s} {v:9.0f}  {fn / v:14.2f}")


if __name__ == "__main__":
    main()
