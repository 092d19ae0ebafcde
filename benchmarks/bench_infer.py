"""Inference latency of the classic Keras CNN (28x28x1) at batch 1 and batch 64: fastnet's
compiled model (``model.compile_inference()``, called with a preallocated output) against
PyTorch 2.13 (``torch.inference_mode``, the faster of NCHW and channels_last) and ONNX Runtime
(the model exported by ``fastnet.onnx.export``, ``intra_op_num_threads`` = the thread count),
all with the same weights, at 1 and 2 threads.

Every (engine, thread count) runs in a fresh process; the processes of one round are
interleaved and the rounds repeated, so slow drift of a shared machine hits every engine alike.
A process times ``--calls`` back-to-back calls per batch size after a warm-up and reports the
median and the 10th percentile; the tables show the median over rounds of each, and the ratios
other / fastnet (> 1: fastnet is faster).  On an oversubscribed machine the OpenMP engines
(fastnet, PyTorch) at 2 threads see calls that wait a scheduler slice for their second thread
(bimodal latencies: ~50 us or ~30 ms at batch 1); the 10th percentile shows the machine's
quiet moments.

    python benchmarks/bench_infer.py [--threads 1,2] [--rounds 5] [--calls 400]

Targets (issue 8): fastnet at least as fast as both peers at batch 1, within 10% of the faster
one at batch 64.  OPENBLAS_NUM_THREADS=1 and OMP_NUM_THREADS=n in every child.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCHES = (1, 64)
ENGINES = ("fastnet", "fastnet-predict", "torch", "torch-cl", "onnxruntime")


def _timed(fn, calls, budget=2.0):
    """(median, 10th percentile) seconds per call of ``fn`` over ``calls`` calls (fewer if
    over ``budget`` s)."""
    for _ in range(max(10, calls // 10)):       # warm-up: plans, caches, thread pools
        fn()
    times, start = [], time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    times.sort()
    return statistics.median(times), times[len(times) // 10]


def child(engine, threads, calls, onnx_file):
    """Run in a fresh process: {batch: median seconds per call}."""
    sys.path.insert(0, ROOT)
    import fastnet
    from fastnet.bench.suites import cnn
    fastnet.set_num_threads(threads)
    model = cnn.fastnet_model()
    out = {}
    for batch in BATCHES:
        x = cnn.batch_data(batch)[0]
        if engine == "fastnet":
            fast = model.compile_inference()
            y = np.empty((batch, cnn.CLASSES), np.float32)
            fn = lambda: fast(x, out=y)  # noqa: E731
        elif engine == "fastnet-predict":
            fn = lambda: model.predict(x, batch_size=batch, verbose=0)  # noqa: E731
        elif engine.startswith("torch"):
            import torch
            torch.set_num_threads(threads)
            channels_last = engine == "torch-cl"
            net = cnn.torch_net(model.get_weights(), softmax=True).eval()
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            xt = cnn.to_torch(x, channels_last)

            def fn(net=net, xt=xt):
                with torch.inference_mode():
                    return net(xt)
        else:
            import onnxruntime as ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(onnx_file, so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            fn = lambda: sess.run(None, {name: x})  # noqa: E731
        out[batch] = _timed(fn, calls)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "THREADS", "CALLS", "ONNX"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        engine, threads, calls, onnx_file = args.child
        print(json.dumps(child(engine, int(threads), int(calls), onnx_file)))
        return 0
    sys.path.insert(0, ROOT)
    from fastnet.bench.suites import cnn
    import fastnet.onnx
    threads = [int(t) for t in args.threads.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench_infer_")
    onnx_file = os.path.join(tmp, "classic_cnn.onnx")
    fastnet.onnx.export(cnn.fastnet_model(), onnx_file)
    results = {}      # (engine, threads, batch) -> [(median, p10) seconds per round]
    for r in range(args.rounds):
        for t in threads:
            for engine in ENGINES:
                env = dict(os.environ, OMP_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS="1",
                           MKL_NUM_THREADS=str(t), PYTHONPATH=ROOT)
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                       engine, str(t), str(args.calls), onnx_file],
                                      env=env, capture_output=True, text=True)
                if proc.returncode:
                    print(f"{engine} ({t} threads) failed:\n{proc.stderr}", file=sys.stderr)
                    continue
                for b, sec in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                    results.setdefault((engine, t, int(b)), []).append(sec)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"classic CNN inference latency, {args.rounds} rounds x up to {args.calls} calls, "
          f"fresh process per engine and round (shared machine: {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f})")
    for stat, label in ((0, "median of the per-round medians"),
                        (1, "median of the per-round 10th percentiles (the quiet moments)")):
        med = {k: statistics.median(s[stat] for s in v) for k, v in results.items()}
        _table(med, threads, label)
    print("(microseconds per call; ratios other/fastnet, > 1 = fastnet faster; torch/fn uses "
          "the faster PyTorch layout)")
    return 0


def _table(med, threads, label):
    print(f"\n{label}")
    print(f"{'threads':>7} {'batch':>5} | {'fastnet':>10} {'fn.predict':>10} {'torch':>10} "
          f"{'torch-cl':>10} {'ORT':>10} | {'torch/fn':>8} {'ORT/fn':>7}   target")

    def us(v):
        return f"{v * 1e6:9.1f}u" if v is not None else f"{'-':>10}"
    for t in threads:
        for b in BATCHES:
            row = {e: med.get((e, t, b)) for e in ENGINES}
            fn, ort_t = row["fastnet"], row["onnxruntime"]
            torches = [v for v in (row["torch"], row["torch-cl"]) if v is not None]
            if fn is None or ort_t is None or not torches:
                print(f"{t:>7} {b:>5} | (an engine failed)")
                continue
            r_torch, r_ort = min(torches) / fn, ort_t / fn
            ok = (r_torch >= 1.0 and r_ort >= 1.0) if b == 1 else min(r_torch, r_ort) >= 1 / 1.1
            print(f"{t:>7} {b:>5} | {us(fn)} {us(row['fastnet-predict'])} {us(row['torch'])} "
                  f"{us(row['torch-cl'])} {us(ort_t)} | {r_torch:8.2f} {r_ort:7.2f}   "
                  f"{'>= 1 both' if b == 1 else 'within 10%'}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
