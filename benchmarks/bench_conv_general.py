"""Depthwise, transposed and dilated convolutions: fastnet against PyTorch 2.13 CPU, same run.

Cases (float32, batch 32, 3x3 kernels, with bias):

    depthwise   DepthwiseConv2D 32x32x64, stride 1, 'same'
    transpose   Conv2DTranspose 16x16x64 -> 32x32x32, stride 2, 'same'
    dilated     Conv2D 32x32x64 -> 64, dilation 2, 'same'

Each figure is one training step of the layer alone: forward, then the gradients of the input,
the kernel and the bias (fastnet: the layer's ``forward(x, training=True)`` and ``backward(dy)``;
PyTorch: the functional op and ``backward`` with ``x.requires_grad``).  PyTorch's transposed convolution runs with padding=1,
output_padding=1: the same 32x32 output and work as Keras's 'same' (its crop starts one pixel
later than TensorFlow's).  PyTorch runs in both layouts (NCHW and channels_last)
and its faster one is the reference; ratio = fastnet / PyTorch time (below 1 is faster).

    python benchmarks/bench_conv_general.py [--threads 1,2] [--rounds 3] [--repeats 30]
                                            [--clock wall|cpu]

Every (library, thread count) runs in a fresh process, interleaved round by round, with
OPENBLAS_NUM_THREADS=1 and ``torch.set_num_threads(n)`` matching ``fastnet.set_num_threads(n)``;
a cell is the median over the rounds of each child's median time.  The machine is shared:
compare the ratios, not the absolute times.  ``--clock cpu`` times each step by the process's
CPU time (all its threads) instead of the wall clock: on a busy machine it leaves out the time
spent waiting for a core, at one thread it is close to the time on an idle machine (at two it
also counts OpenMP's spinning).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BATCH = 32
CASES = ("depthwise", "transpose", "dilated")
KINDS = ("fastnet", "torch-nchw", "torch-cl")


def _data(case):
    rng = np.random.default_rng(0)
    if case == "depthwise":
        x, k, b = (BATCH, 32, 32, 64), (3, 3, 64, 1), (64,)
        y = (BATCH, 32, 32, 64)
    elif case == "transpose":
        x, k, b = (BATCH, 16, 16, 64), (3, 3, 32, 64), (32,)
        y = (BATCH, 32, 32, 32)
    else:
        x, k, b = (BATCH, 32, 32, 64), (3, 3, 64, 64), (64,)
        y = (BATCH, 32, 32, 64)
    return [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in (x, k, b, y)]


def _fastnet_step(case):
    from fastnet import layers
    x, k, b, dy = _data(case)
    if case == "depthwise":
        layer = layers.DepthwiseConv2D(3, padding="same")
    elif case == "transpose":
        layer = layers.Conv2DTranspose(32, 3, strides=2, padding="same")
    else:
        layer = layers.Conv2D(64, 3, padding="same", dilation_rate=2)
    layer.build(x.shape[1:])
    layer.set_weights([k, b])

    def step():
        layer.forward(x, training=True)
        layer.backward(dy)
    return step


def _torch_step(case, channels_last):
    import torch
    import torch.nn.functional as F
    x, k, b, dy = _data(case)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def nchw(a):
        return torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)

    tx, tdy = nchw(x).requires_grad_(True), nchw(dy)
    if case == "depthwise":   # (kh, kw, C, 1) -> (C, 1, kh, kw)
        tk = torch.from_numpy(k.transpose(2, 3, 0, 1).copy())
        def fwd():
            return F.conv2d(tx, tk, tb, padding=1, groups=64)
    elif case == "transpose":  # (kh, kw, out, in) -> (in, out, kh, kw); padding 1, out_pad 1
        tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        def fwd():
            return F.conv_transpose2d(tx, tk, tb, stride=2, padding=1, output_padding=1)
    else:
        tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        def fwd():
            return F.conv2d(tx, tk, tb, padding=2, dilation=2)
    tk = tk.contiguous(memory_format=fmt).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)

    def step():
        tx.grad = tk.grad = tb.grad = None
        fwd().backward(tdy)
    return step


def _child(kind, threads, repeats, clock):
    """Time every case in this process; print {case: median seconds} as JSON."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if kind == "fastnet":
        import fastnet
        fastnet.set_num_threads(threads)
        make = _fastnet_step
    else:
        import torch
        torch.set_num_threads(threads)
        make = lambda case: _torch_step(case, kind == "torch-cl")  # noqa: E731
    result = {}
    for case in CASES:
        step = make(case)
        for _ in range(3):
            step()
        times = []
        for _ in range(repeats):
            t0 = now()
            step()
            times.append(now() - t0)
        result[case] = statistics.median(times)
    print(json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.repeats, args.clock)
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=ROOT)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    threads = [int(t) for t in args.threads.split(",")]
    cells = {}   # (threads, kind, case) -> [seconds per round]
    for rnd in range(args.rounds):
        for t in threads:
            for kind in KINDS:
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(t),
                                      "--repeats", str(args.repeats), "--clock", args.clock],
                                     env=dict(env, OMP_NUM_THREADS=str(t)), check=True,
                                     capture_output=True, text=True).stdout
                for case, sec in json.loads(out.strip().splitlines()[-1]).items():
                    cells.setdefault((t, kind, case), []).append(sec)
        print(f"round {rnd + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}",
              file=sys.stderr)
    print(f"{args.clock} clock, ms per training step of the layer; ratio = fastnet / the "
          f"faster PyTorch layout")
    print(f"{'case':<10} {'threads':>7} {'fastnet ms':>11} {'torch-nchw':>11} "
          f"{'torch-cl':>9} {'ratio':>6}")
    for case in CASES:
        for t in threads:
            med = {k: statistics.median(cells[(t, k, case)]) * 1e3 for k in KINDS}
            best = min(med["torch-nchw"], med["torch-cl"])
            print(f"{case:<10} {t:>7} {med['fastnet']:>11.2f} {med['torch-nchw']:>11.2f} "
                  f"{med['torch-cl']:>9.2f} {med['fastnet'] / best:>6.2f}")


if __name__ == "__main__":
    main()
