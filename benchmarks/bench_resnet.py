"""One training step of a ResNet-style block stack: fastnet vs PyTorch in the same run.

The network: input (batch 32, 32x32, 64 channels) -> 4 basic residual blocks
(conv3x3-BN-ReLU-conv3x3-BN, + identity, ReLU; 64 channels, no conv bias) -> global average
pool -> Dense 10, softmax cross-entropy, Adam.  Both frameworks get the same weights.

pytest-benchmark mode (``pytest benchmarks/bench_resnet.py --benchmark-only``) times one step of
each in the same run.

Script mode (``python benchmarks/bench_resnet.py [--threads 1,2] [--rounds 3]``): every
configuration runs in a fresh process, interleaved round by round (fastnet, torch NCHW, torch
channels_last), and the medians of the step times are compared; the ratio is fastnet time /
the faster torch layout (<= 1.0 means fastnet is as fast or faster).
"""
import argparse

import numpy as np

import _source_checkout  # noqa: F401
from _interleaved import medians, report_child, run_rounds

BATCH, SIZE, CHANNELS, BLOCKS, CLASSES = 32, 32, 64, 4, 10


def fastnet_model():
    from fastnet import layers, models
    from fastnet.utils import set_random_seed
    set_random_seed(0)
    x = inp = layers.Input(shape=(SIZE, SIZE, CHANNELS))
    for _ in range(BLOCKS):
        h = layers.Conv2D(CHANNELS, 3, padding="same", use_bias=False)(x)
        h = layers.Activation("relu")(layers.BatchNormalization()(h))
        h = layers.Conv2D(CHANNELS, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        x = layers.Activation("relu")(layers.Add()([h, x]))
    out = layers.Dense(CLASSES, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    model = models.Model(inp, out, name="resnet_blocks")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def batch_data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, SIZE, SIZE, CHANNELS), dtype=np.float32),
            rng.integers(0, CLASSES, BATCH))


def fastnet_step_fn(model):
    x, y = batch_data()
    model.train_on_batch(x, y)  # build and plan the buffers
    return lambda: model.train_on_batch(x, y)


def torch_net(keras_model=None):
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
            self.b1 = nn.BatchNorm2d(CHANNELS, eps=1e-3, momentum=0.01)
            self.c2 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
            self.b2 = nn.BatchNorm2d(CHANNELS, eps=1e-3, momentum=0.01)

        def forward(self, x):
            h = torch.relu_(self.b1(self.c1(x)))
            h = self.b2(self.c2(h))
            return torch.relu_(h + x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(BLOCKS)])
            self.fc = nn.Linear(CHANNELS, CLASSES)

        def forward(self, x):
            return self.fc(self.blocks(x).mean((2, 3)))

    net = Net()
    if keras_model is not None:   # same weights: conv kernels, BN gamma/beta/mean/var, dense
        w = iter(keras_model.get_weights())
        with torch.no_grad():
            for block in net.blocks:
                for conv, bn in ((block.c1, block.b1), (block.c2, block.b2)):
                    conv.weight.copy_(torch.from_numpy(next(w).transpose(3, 2, 0, 1).copy()))
                    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                        t.copy_(torch.from_numpy(next(w)))
            net.fc.weight.copy_(torch.from_numpy(next(w).T.copy()))
            net.fc.bias.copy_(torch.from_numpy(next(w)))
    return net


def torch_step_fn(channels_last, keras_model=None):
    import torch
    import torch.nn as nn
    net = torch_net(keras_model)
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
def test_fastnet_resnet_step(benchmark):
    step = fastnet_step_fn(fastnet_model())
    benchmark.extra_info["images_per_step"] = BATCH
    benchmark(step)


def test_torch_resnet_step_channels_last(benchmark):
    import pytest
    torch = pytest.importorskip("torch")
    import fastnet
    torch.set_num_threads(fastnet.get_num_threads())
    step = torch_step_fn(True)
    benchmark.extra_info["images_per_step"] = BATCH
    benchmark(step)


def test_same_loss_as_torch():
    """Same weights, same batch: the two frameworks compute the same first-step loss."""
    import pytest
    torch = pytest.importorskip("torch")
    model = fastnet_model()
    x, y = batch_data()
    net = torch_net(model)
    with torch.no_grad():
        t_loss = torch.nn.functional.cross_entropy(
            net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), torch.from_numpy(y))
    f_loss = model.train_on_batch(x, y)
    assert abs(f_loss - float(t_loss)) < 1e-3 * max(1.0, abs(f_loss))


# -- script mode: fresh processes, interleaved -------------------------------------------------
def _measure(kind, threads, steps, repeats):
    """Run in a child process: print JSON with the median wall and CPU ms per step."""
    if kind == "fastnet":
        import fastnet
        fastnet.set_num_threads(threads)
        step = fastnet_step_fn(fastnet_model())
    else:
        import torch
        torch.set_num_threads(threads)
        step = torch_step_fn(kind == "torch-cl")
    report_child(kind, threads, step, steps, repeats, warmup=3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per configuration")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, threads = args.child.split(":")
        return _measure(kind, int(threads), args.steps, args.repeats)
    try:
        import torch  # noqa: F401
        kinds = ["fastnet", "torch-nchw", "torch-cl"]
    except ImportError:
        print("PyTorch not installed (pip install torch==2.13.0): fastnet only")
        kinds = ["fastnet"]
    results = run_rounds(__file__, kinds, [int(t) for t in args.threads.split(",")],
                         args.rounds, args.steps, args.repeats)
    print(f"\nResNet block stack training step (batch {BATCH}, {SIZE}x{SIZE}x{CHANNELS}, "
          f"{BLOCKS} basic blocks, Adam), median of {args.rounds} fresh processes; CPU time is "
          f"the fairer figure on a busy machine at 1 thread")
    print(f"{'threads':>7}  {'config':12s} {'ms/step':>8} {'CPU ms':>8}  "
          f"{'fastnet / this (wall, CPU)':>26}")
    for threads in sorted({t for _, t in results}):
        fn = medians(results, "fastnet", threads)
        for kind in kinds:
            v = medians(results, kind, threads)
            print(f"{threads:>7}  {kind:12s} {v[0]:8.1f} {v[1]:8.1f}  "
                  f"{fn[0] / v[0]:12.2f} {fn[1] / v[1]:12.2f}")
        torch_kinds = [k for k in kinds if k != "fastnet"]
        if torch_kinds:
            best = [min(medians(results, k, threads)[i] for k in torch_kinds) for i in (0, 1)]
            print(f"{threads:>7}  ratio vs the faster torch layout: {fn[0] / best[0]:.2f} wall, "
                  f"{fn[1] / best[1]:.2f} CPU time (target <= 1.0)")


if __name__ == "__main__":
    main()
