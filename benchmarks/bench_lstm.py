"""One training step of an LSTM classifier: batch 64, 28 steps of 28 features, LSTM(128),
Dense(10) softmax, Adam; fastnet ``train_on_batch`` against ``torch.nn.LSTM`` + ``Linear``
with the same weights and batch, at the same thread count.

    python benchmarks/bench_lstm.py [--threads 1,2] [--rounds 3] [--steps 30]

Every (library, thread count) runs in fresh processes, interleaved round by round; the table
gives the median time per step and fastnet's time as a ratio of PyTorch's (the issue's target:
<= 1.0).  OPENBLAS_NUM_THREADS=1 in every child (NumPy's BLAS is not used by fastnet's step).

    pytest benchmarks/bench_lstm.py --benchmark-only      # the same step, pytest-benchmark
"""
import argparse

import numpy as np
import pytest

import _source_checkout  # noqa: F401
from _interleaved import medians, report_child, run_rounds

pytestmark = pytest.mark.ci   # the CI's plain `pytest` runs each case once, untimed

BATCH, STEPS, FEATURES, UNITS, CLASSES = 64, 28, 28, 128, 10


def batch_data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((BATCH, STEPS, FEATURES), dtype=np.float32),
            rng.integers(0, CLASSES, BATCH))


def fastnet_model():
    import fastnet
    from fastnet import layers, models
    fastnet.utils.set_random_seed(0)
    model = models.Sequential([layers.LSTM(UNITS, input_shape=(STEPS, FEATURES)),
                               layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def fastnet_step_fn():
    model = fastnet_model()
    x, y = batch_data()
    model.train_on_batch(x, y)   # build and plan the buffers
    return lambda: model.train_on_batch(x, y)


def torch_modules(weights=None):
    """torch.nn.LSTM + Linear, with fastnet's weights (Keras layouts) when given: the gate
    order i, f, c (g), o is shared, kernels are transposed, torch's second bias is zero."""
    import torch
    lstm = torch.nn.LSTM(FEATURES, UNITS, batch_first=True)
    fc = torch.nn.Linear(UNITS, CLASSES)
    if weights is not None:
        kernel, rec, bias, dense_k, dense_b = weights
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(torch.from_numpy(kernel.T.copy()))
            lstm.weight_hh_l0.copy_(torch.from_numpy(rec.T.copy()))
            lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
            lstm.bias_hh_l0.zero_()
            fc.weight.copy_(torch.from_numpy(dense_k.T.copy()))
            fc.bias.copy_(torch.from_numpy(dense_b))
    return lstm, fc


def torch_step_fn(weights=None):
    import torch
    lstm, fc = torch_modules(weights)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(fc.parameters()), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = batch_data()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = lstm(xt)
        loss = loss_fn(fc(out[:, -1]), yt)
        loss.backward()
        opt.step()
        return loss
    step()
    return step


def check_same_loss():
    """The loss of one batch in fastnet and in PyTorch with the same weights."""
    import torch
    model = fastnet_model()
    model.build((None, STEPS, FEATURES))
    lstm, fc = torch_modules(model.get_weights())
    x, y = batch_data()
    ours = model.evaluate(x, y, batch_size=BATCH, verbose=0)
    with torch.no_grad():
        out, _ = lstm(torch.from_numpy(x))
        theirs = float(torch.nn.functional.cross_entropy(fc(out[:, -1]), torch.from_numpy(y)))
    return ours, theirs


# -- pytest-benchmark --------------------------------------------------------------------------
def test_fastnet_lstm_train_step(benchmark):
    benchmark.extra_info["sequences_per_step"] = BATCH
    benchmark(fastnet_step_fn())


def test_torch_lstm_train_step(benchmark):
    torch = pytest.importorskip("torch")
    import fastnet
    torch.set_num_threads(fastnet.get_num_threads())
    benchmark.extra_info["sequences_per_step"] = BATCH
    benchmark(torch_step_fn())


# -- script mode: fresh processes, interleaved -------------------------------------------------
def _child(kind, threads, steps, repeats):
    if kind == "fastnet":
        import fastnet
        fastnet.set_num_threads(threads)
        step = fastnet_step_fn()
    else:
        import torch
        torch.set_num_threads(threads)
        step = torch_step_fn()
    report_child(kind, threads, step, steps, repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per configuration")
    ap.add_argument("--steps", type=int, default=30, help="training steps per timing")
    ap.add_argument("--repeats", type=int, default=5, help="timings per process (median)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, threads = args.child.split(":")
        return _child(kind, int(threads), args.steps, args.repeats)
    try:
        import torch
        kinds = ["fastnet", "torch"]
        print(f"PyTorch {torch.__version__}", end="; ")
        ours, theirs = check_same_loss()
        print(f"first-step loss with the same weights: fastnet {ours:.6f}, torch {theirs:.6f}")
    except ImportError:
        print("PyTorch not installed (pip install torch==2.13.0): fastnet only")
        kinds = ["fastnet"]
    results = run_rounds(__file__, kinds, [int(t) for t in args.threads.split(",")],
                         args.rounds, args.steps, args.repeats)
    print(f"\nLSTM({UNITS}) + Dense({CLASSES}) training step, batch {BATCH}, {STEPS} steps x "
          f"{FEATURES} features, Adam; median of {args.rounds} fresh processes.  Wall time is "
          f"the figure; CPU time (all threads) is steadier on a shared machine.")
    print(f"{'threads':>7}  {'fastnet ms':>10}  {'torch ms':>9}  {'fastnet/torch':>13}  "
          f"{'CPU ms fastnet':>14}  {'torch':>7}  {'ratio':>6}")
    for threads in sorted({t for _, t in results}):
        fw, fc = medians(results, "fastnet", threads)
        if "torch" in kinds:
            tw, tc = medians(results, "torch", threads)
            print(f"{threads:>7}  {fw:10.2f}  {tw:9.2f}  {fw / tw:13.2f}  {fc:14.2f}  "
                  f"{tc:7.2f}  {fc / tc:6.2f}")
        else:
            print(f"{threads:>7}  {fw:10.2f}  {'':9}  {'':13}  {fc:14.2f}")


if __name__ == "__main__":
    main()
