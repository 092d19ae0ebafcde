"""int8 inference of the classic Keras CNN (batch 64, 28x28x1): fastnet int8 vs fastnet float32.

Script mode (``python benchmarks/bench_int8.py [--threads 1,2] [--rounds 3]``):

1. trains the classic CNN on the bundled MNIST split (``--epochs``, default 3), saves it, and
   reports the test accuracy of the float model and of ``fastnet.quantize(model, 500 training
   images)``;
2. times one batch-64 (and batch-1) inference call of each configuration in a fresh process,
   interleaved round by round, at each thread count, and reports medians and the ratio
   fastnet float32 / fastnet int8 (the issue's target: >= 2x at batch 64):

   fastnet-float    ``model.compile_inference()`` (BatchNorm folded, fused epilogues, planned
                    buffers: fastnet's fastest float32 path)
   fastnet-int8     ``fastnet.quantize(model, ...)``
   torch-float      PyTorch 2.13 ``inference_mode``, channels_last (when installed)
   torch-int8       PyTorch eager static quantization, x86 backend (when installed)
   fastnet-sparse80 the float model with 80% of every kernel zeroed by magnitude pruning
   fastnet-filters50  the float model with half the filters of conv2, conv3 and dense1
                    removed (``fastnet.pruning.prune_filters``: structured pruning, a smaller
                    model; about half the multiply-adds)

The last two answer "what speed does pruning buy": with dense kernels, unstructured zeros
cost exactly as much as any other weight; only removing whole filters/units (structured
pruning) shrinks the GEMMs.

The machine may be shared: every figure is a median over rounds of fresh processes, and the
ratios compare configurations measured in the same run.  At 1 thread the CPU time of the calling
thread is reported too: on a busy machine a long call is preempted more often than a short one,
which skews wall-clock medians in favour of the faster configuration.  OPENBLAS_NUM_THREADS=1 everywhere;
torch.set_num_threads(n) matches fastnet.set_num_threads(n).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH = 64
CONFIGS = ("fastnet-float", "fastnet-int8", "torch-float", "torch-int8", "fastnet-sparse80",
           "fastnet-filters50")


def _data():
    from fastnet import datasets
    return datasets.load_digits()


def train_and_save(path, epochs, threads):
    """Train the classic CNN, save it to ``path``; return (float accuracy, int8 accuracy)."""
    import fastnet
    from fastnet.cli import build_classic_cnn
    from fastnet.utils import set_random_seed
    fastnet.set_num_threads(threads)
    set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = _data()
    model = build_classic_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    model.save(path)
    acc_float = float((model.predict(x_test, batch_size=256, verbose=0).argmax(1)
                       == y_test).mean())
    qmodel = fastnet.quantize(model, x_train[:500])
    acc_int8 = float((qmodel.predict(x_test, batch_size=256).argmax(1) == y_test).mean())
    return acc_float, acc_int8


# ---- workers (one configuration per fresh process) ------------------------------------------
def _fastnet_callable(config, path):
    import fastnet
    from fastnet import models
    model = models.load_model(path, compile=False)
    (x_train, _), _ = _data()
    if config == "fastnet-int8":
        qmodel = fastnet.quantize(model, x_train[:500])
        return qmodel
    if config == "fastnet-sparse80":
        from fastnet import pruning
        pruning.prune_low_magnitude(model, 0.8, scope="layer")
    elif config == "fastnet-filters50":
        from fastnet import pruning
        # conv2, conv3 and dense1 (the first conv is cheap and keeps its 32 filters)
        convs = [l.name for l in model.layers if type(l).__name__ in ("Conv2D", "Dense")]
        model = pruning.prune_filters(model, 0.5, layers=convs[1:])
    fast = model.compile_inference()
    return fast


def _torch_net(path, x_calib, int8):
    import torch
    import torch.nn as nn
    from fastnet import models
    keras = models.load_model(path, compile=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.dequant = torch.ao.quantization.DeQuantStub()
            self.c1, self.c2, self.c3 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
            self.r1, self.r2, self.r3, self.r4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
            self.d1, self.d2 = nn.Linear(576, 64), nn.Linear(64, 10)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            x = self.quant(x)
            x = self.pool(self.r1(self.c1(x)))
            x = self.pool(self.r2(self.c2(x)))
            x = self.r3(self.c3(x))
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras' NHWC flatten order
            x = self.d2(self.r4(self.d1(x)))
            return torch.softmax(self.dequant(x), dim=1)

    net = Net().eval()
    convs = [l for l in keras.layers if type(l).__name__ == "Conv2D"]
    dense = [l for l in keras.layers if type(l).__name__ == "Dense"]
    with torch.no_grad():
        for mod, layer in zip((net.c1, net.c2, net.c3), convs):
            mod.weight.copy_(torch.from_numpy(layer.params["kernel"].transpose(3, 2, 0, 1).copy()))
            mod.bias.copy_(torch.from_numpy(layer.params["bias"]))
        for mod, layer in zip((net.d1, net.d2), dense):
            mod.weight.copy_(torch.from_numpy(layer.params["kernel"].T.copy()))
            mod.bias.copy_(torch.from_numpy(layer.params["bias"]))
    if int8:
        torch.backends.quantized.engine = "x86"
        net.qconfig = torch.ao.quantization.get_default_qconfig("x86")
        net = torch.ao.quantization.fuse_modules(
            net, [["c1", "r1"], ["c2", "r2"], ["c3", "r3"], ["d1", "r4"]])
        net = torch.ao.quantization.prepare(net)
        with torch.inference_mode():
            net(torch.from_numpy(x_calib.transpose(0, 3, 1, 2).copy()))
        net = torch.ao.quantization.convert(net)
    return net


def _torch_callable(config, path):
    import torch
    (x_train, _), _ = _data()
    int8 = config == "torch-int8"
    net = _torch_net(path, x_train[:500], int8)
    fmt = torch.contiguous_format if int8 else torch.channels_last
    if not int8:
        net = net.to(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
            return net(t).numpy()
    return run


def worker(config, threads, path, reps):
    import fastnet
    fastnet.set_num_threads(threads)
    if config.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
        fn = _torch_callable(config, path)
    else:
        fn = _fastnet_callable(config, path)
    (_, _), (x_test, _) = _data()
    result = {}
    for batch, n_reps in ((BATCH, reps), (1, reps * 4)):
        x = np.ascontiguousarray(x_test[:batch])
        for _ in range(max(10, n_reps // 10)):
            fn(x)
        times, cpu = [], []
        for _ in range(n_reps):
            c0, t0 = time.thread_time(), time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        result[f"ms{batch}"] = statistics.median(times) * 1e3
        result[f"cpu{batch}"] = statistics.median(cpu) * 1e3
    return result


# ---- driver ---------------------------------------------------------------------------------
def _run_worker(config, threads, path, reps):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--threads",
           str(threads), "--model", path, "--reps", str(reps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--worker", default=None)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, threads[0], args.model, args.reps)))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "classic_cnn.fnet")
        acc_float, acc_int8 = train_and_save(path, args.epochs, max(threads))
        print(f"classic CNN, {args.epochs} epochs on the bundled MNIST split: test accuracy "
              f"float32 {acc_float:.4f}, int8 {acc_int8:.4f} "
              f"(drop {100 * (acc_float - acc_int8):+.1f} points)")
        from fastnet._kernels import int8 as K
        print(f"int8 path: {K.isa()}; {args.rounds} rounds of fresh processes, medians "
              f"(the machine may be shared)")
        samples = {(c, t): [] for c in configs for t in threads}
        for _ in range(args.rounds):
            for t in threads:
                for c in configs:
                    samples[(c, t)].append(_run_worker(c, t, path, args.reps))
    for t in threads:
        cpu_col = "  batch 64: CPU ms" if t == 1 else ""
        print(f"\n{t} thread(s)          batch 64: ms   images/s   batch 1: ms{cpu_col}")
        med, cpu = {}, {}
        for c in configs:
            ok = [s for s in samples[(c, t)] if "error" not in s]
            if not ok:
                print(f"  {c:18s} unavailable: {samples[(c, t)][0]['error']}")
                continue
            m64 = statistics.median(s["ms64"] for s in ok)
            m1 = statistics.median(s["ms1"] for s in ok)
            med[c] = m64
            cpu[c] = statistics.median(s["cpu64"] for s in ok)
            extra = f"{cpu[c]:18.3f}" if t == 1 else ""
            print(f"  {c:18s} {m64:8.3f} {BATCH / m64 * 1e3:10,.0f} {m1:12.4f}{extra}")
        if "fastnet-float" in med and "fastnet-int8" in med:
            print(f"  int8 speed-up over fastnet float32 at batch 64: "
                  f"{med['fastnet-float'] / med['fastnet-int8']:.2f}x (wall-clock medians)")
            if t == 1:   # CPU time of the one thread: what preemption on a busy machine hides
                print(f"  same on the thread's CPU time: "
                      f"{cpu['fastnet-float'] / cpu['fastnet-int8']:.2f}x")
        for c in ("fastnet-sparse80", "fastnet-filters50"):
            if "fastnet-float" in med and c in med:
                print(f"  {c} / dense float time: {med[c] / med['fastnet-float']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
