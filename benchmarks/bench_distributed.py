"""Data-parallel training on MPI: 2 ranks x 1 thread against 1 rank x 2 threads (and 1 x 1).

The classic Keras CNN (batch 64 global, Adam) on the bundled digits, each configuration in
fresh processes, interleaved round by round; the medians of images/s are compared.  The
distributed run also reports, per step, the time ``apply`` still waited for the gradient
allreduce (what backward did not hide), a blocking allreduce of the whole gradient buffer
timed on its own, and the traffic of a run on two machines: a ring allreduce sends and
receives 2 (N - 1) / N times the buffer per rank and step, which at 10 Gbit/s costs
bytes / 1.25 GB/s plus two network latencies.

With ``--torch``, PyTorch 2.13's DistributedDataParallel (gloo) runs the same network at
2 ranks x 1 thread and 1 x 2 in the same rounds, as the peer.

    python benchmarks/bench_distributed.py [--rounds 3] [--epochs 2] [--torch] [--json out.json]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 64
TEN_GBIT = 10e9 / 8      # bytes/s
NET_LATENCY = 30e-6      # s, one TCP message on a 10 GbE link (typical)


# -- children --------------------------------------------------------------------------------------
def _data():
    from fastnet import datasets
    (x, y), _ = datasets.load_digits()
    return x, y


def _time_allreduce(world, buf, repeats=200):
    """(median, best) ms of an in-place allreduce of ``buf`` (fastnet's polled wait), the
    ranks lined up first.  On a busy machine the median includes the times a rank was
    descheduled mid-exchange (a scheduler quantum, several ms); the best is the exchange."""
    times = []
    for _ in range(repeats):
        world.barrier()
        t0 = time.perf_counter()
        world.allreduce_(buf, "the benchmark allreduce")
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def child_fastnet(args):
    import fastnet
    from fastnet.cli import build_classic_cnn
    from fastnet.utils import set_random_seed
    dist = None
    if args.distributed:
        from fastnet import distributed as dist
        dist.init(num_threads=args.threads)
    fastnet.set_num_threads(args.threads)
    set_random_seed(0)
    x, y = _data()
    model = build_classic_cnn(x.shape[1:], 10)
    opt = "adam"
    if dist is not None:
        opt = dist.DistributedOptimizer("adam", bucket_bytes=args.bucket_bytes)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def fit(epochs):
        if dist is None:
            return model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
        return dist.fit(model, x, y, batch_size=BATCH, epochs=epochs, verbose=0)

    fit(1)   # warm-up: buffers planned, caches hot
    reducer = getattr(model.optimizer, "_allreduce", None)
    if reducer is not None:
        reducer.wait_seconds, reducer.steps = 0.0, 0
    history = fit(args.epochs)
    result = {"images_per_s": model._train_samples / model._train_seconds,
              "step_ms": 1e3 * model._train_seconds * BATCH / model._train_samples,
              "accuracy": history.history["accuracy"][-1],
              "threads": fastnet.get_num_threads()}
    if dist is not None:
        grads = model._flat_grads[:model._n_trainable]
        result.update(ranks=dist.size(), gradient_bytes=int(grads.nbytes),
                      overlap_hook=hasattr(model, "_grad_ready_hook"),
                      exposed_wait_ms=1e3 * reducer.wait_seconds / max(reducer.steps, 1))
        world = dist._world()
        result["allreduce_ms"], result["allreduce_best_ms"] = _time_allreduce(
            world, np.zeros(grads.size, np.float32))
        result["small_allreduce_ms"], _ = _time_allreduce(world, np.zeros(3))
        if dist.rank() != 0:
            return
    print("RESULT " + json.dumps(result), flush=True)


def child_torch(args):
    import torch
    import torch.distributed as tdist
    import torch.nn as nn
    torch.set_num_threads(args.threads)
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if size > 1:
        tdist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
            self.c3 = nn.Conv2d(64, 64, 3)
            self.d1, self.d2 = nn.Linear(576, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
            x = torch.relu(self.c3(x))
            return self.d2(torch.relu(self.d1(x.flatten(1))))

    net = Net().to(memory_format=torch.channels_last)
    model = nn.parallel.DistributedDataParallel(net) if size > 1 else net
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    x, y = _data()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)
    yt = torch.from_numpy(y.astype(np.int64))
    n, local = xt.shape[0], BATCH // size
    gen = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        seen = 0
        for lo in range(0, n - BATCH + 1, BATCH):
            idx = order[lo + rank * local: lo + (rank + 1) * local]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            seen += BATCH
        return seen, time.perf_counter() - t0

    epoch()
    seen = secs = 0
    for _ in range(args.epochs):
        s, t = epoch()
        seen, secs = seen + s, secs + t
    if rank == 0:
        print("RESULT " + json.dumps({"images_per_s": seen / secs,
                                      "step_ms": 1e3 * secs * BATCH / seen,
                                      "threads": torch.get_num_threads()}), flush=True)
    if size > 1:
        tdist.destroy_process_group()


# -- driver ---------------------------------------------------------------------------------------
def _env(threads):
    try:   # the children import the fastnet this driver sees (installed, else this checkout)
        import fastnet
        root = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))
    except ImportError:
        root = os.path.dirname(HERE)
    return dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


def _result(out, what):
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{what} printed no result:\n{out}")


def run_fastnet(ranks, threads, args, bucket_bytes):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "fastnet", "--threads",
           str(threads), "--epochs", str(args.epochs), "--bucket-bytes", str(bucket_bytes)]
    if ranks > 1:
        exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        exe = exe if os.access(exe, os.X_OK) else shutil.which("mpiexec")
        launch = [exe, "-n", str(ranks), "--bind-to", args.bind, "--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            launch.append("--allow-run-as-root")
        cmd = launch + cmd + ["--distributed"]
    proc = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, timeout=1800)
    return _result(proc.stdout + proc.stderr, f"fastnet {ranks}x{threads}")


def run_torch(ranks, threads, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "torch", "--threads",
           str(threads), "--epochs", str(args.epochs)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(ranks):
        env = dict(_env(threads), RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    return _result(outs[0], f"torch {ranks}x{threads}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="measured epochs of 63 steps each")
    ap.add_argument("--bind", default="none", choices=("none", "core"),
                    help="mpiexec --bind-to for the 2-rank runs")
    ap.add_argument("--torch", action="store_true", help="PyTorch DDP (gloo) as the peer")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=("fastnet", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bucket-bytes", type=int, default=256 * 1024, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "fastnet":
        return child_fastnet(args)
    if args.child == "torch":
        return child_torch(args)

    configs = [("fastnet 1x1", lambda: run_fastnet(1, 1, args, 0)),
               ("fastnet 1x2", lambda: run_fastnet(1, 2, args, 0)),
               ("fastnet 2x1", lambda: run_fastnet(2, 1, args, 256 * 1024)),
               ("fastnet 2x1 no overlap", lambda: run_fastnet(2, 1, args, 1 << 40))]
    if args.torch:
        configs += [("torch 1x1", lambda: run_torch(1, 1, args)),
                    ("torch 1x2", lambda: run_torch(1, 2, args)),
                    ("torch 2x1 DDP", lambda: run_torch(2, 1, args))]
    results = {name: [] for name, _ in configs}
    for r in range(args.rounds):
        for name, fn in configs:
            res = fn()
            results[name].append(res)
            print(f"round {r + 1}: {name:24s} {res['images_per_s']:8,.0f} images/s "
                  f"({res['step_ms']:.1f} ms/step)", flush=True)

    def med(name, key="images_per_s"):
        return statistics.median(r[key] for r in results[name])

    print(f"\nmedians over {args.rounds} rounds (fresh processes, interleaved; this machine is "
          f"shared, so compare within the run)")
    for name, _ in configs:
        print(f"  {name:24s} {med(name):8,.0f} images/s  {med(name, 'step_ms'):6.1f} ms/step")
    d = results["fastnet 2x1"]
    grad_bytes = d[0]["gradient_bytes"]
    allreduce_ms = statistics.median(r["allreduce_ms"] for r in d)
    allreduce_best = min(r["allreduce_best_ms"] for r in d)
    small_ms = statistics.median(r["small_allreduce_ms"] for r in d)
    exposed_ms = statistics.median(r["exposed_wait_ms"] for r in d)
    step_ms = med("fastnet 2x1", "step_ms")
    print(f"\n2 ranks x 1 thread / 1 rank x 2 threads: "
          f"{med('fastnet 2x1') / med('fastnet 1x2'):.2f}x")
    print(f"scaling efficiency, 2 ranks over 2 x (1 rank x 1 thread): "
          f"{med('fastnet 2x1') / (2 * med('fastnet 1x1')):.0%}")
    print(f"gradient buffer: {grad_bytes:,} bytes; blocking allreduce of it here: "
          f"{allreduce_ms:.3f} ms (best {allreduce_best:.3f} ms), of the loss/metrics: "
          f"{small_ms:.3f} ms; the step waited "
          f"{exposed_ms:.3f} ms for the gradients (overlap hook "
          f"{'on' if d[0]['overlap_hook'] else 'not available in this model'}; "
          f"{step_ms:.1f} ms/step)")
    ring = 2 * (2 - 1) / 2 * grad_bytes
    net_ms = 1e3 * (ring / TEN_GBIT + 2 * NET_LATENCY)
    print(f"two machines (1 rank each): {ring:,.0f} bytes sent and received per rank and step; "
          f"at 10 Gbit/s about {net_ms:.2f} ms per step ({net_ms / step_ms:.1%} of this step)")
    if args.torch:
        print(f"torch DDP 2x1 / torch 1x2: {med('torch 2x1 DDP') / med('torch 1x2'):.2f}x; "
              f"fastnet 2x1 / torch 2x1 DDP: {med('fastnet 2x1') / med('torch 2x1 DDP'):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "gradient_bytes": grad_bytes,
                       "allreduce_ms": allreduce_ms, "allreduce_best_ms": allreduce_best,
                       "exposed_wait_ms": exposed_ms,
                       "ten_gbit_ms": net_ms}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
