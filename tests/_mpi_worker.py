"""One rank of the MPI tests in test_distributed.py:
``mpiexec -n 2 python _mpi_worker.py MODE OUT``.

Modes:
  train     data-parallel fit of a small CNN (Adam, gradients sent in small buckets) on data
            whose last global batch is partial, then of a BatchNormalization model (SGD), then
            (shard=False) of the CNN with each rank on its own half of every batch; each rank
            writes its final weights and history to OUT/rank<r>.npz / .json and
            OUT/halves<r>.npz; rank 0 alone keeps the checkpoint callbacks
  mismatch  rank 1 builds a different model: every rank must raise at the start of fit
  hang      rank 1 stops taking part at step 2: rank 0 must abort after FASTNET_MPI_TIMEOUT
  raise     rank 1 raises at step 2: the job must abort at once
  exit      rank 1 calls sys.exit(0) at step 2 (without an error): the job must abort
  kill      rank 1 is killed (SIGKILL) at step 2
"""
import json
import os
import signal
import sys
import time

import numpy as np

from fastnet import callbacks, distributed as dist, layers, models
from fastnet.utils import set_random_seed

TRAIN = dict(samples=103, batch_size=16, epochs=2, seed=7)   # 103 = 6 * 16 + 7: uneven tail


HALVES = dict(samples=96, batch_size=16, seed=11, optimizer="sgd")


def own_half(x, y, rank, batch=16):
    """Rank ``rank``'s half of every batch of ``batch`` samples of (x, y)."""
    rows = np.arange(len(x)).reshape(-1, 2, batch // 2)[:, rank].reshape(-1)
    return x[rows], y[rows]


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 10, 10, 1), dtype=np.float32)
    y = (x[:, 2:5, 2:5, 0].mean(axis=(1, 2)) * 9.99).astype(np.int64) % 5
    return x, y


def cnn(hidden=16):
    return models.Sequential([
        layers.Conv2D(6, (3, 3), activation="relu", input_shape=(10, 10, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(hidden, activation="relu"),
        layers.Dense(5, activation="softmax")])


def bn_model():
    return models.Sequential([
        layers.Conv2D(4, (3, 3), input_shape=(10, 10, 1)),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.Flatten(),
        layers.Dense(5, activation="softmax")])


class RankMarker(callbacks.ModelCheckpoint):
    """A checkpoint callback that also leaves a file naming the rank that ran it."""

    def __init__(self, out, **kwargs):
        super().__init__(os.path.join(out, "ckpt.fnm"), **kwargs)
        self.out = out

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        open(os.path.join(self.out, f"checkpoint_by_rank{dist.rank()}"), "w").close()


def train(out):
    rank = dist.rank()
    set_random_seed(TRAIN["seed"] + 1000 * rank)   # rank 0's weights and seed must win
    x, y = data(TRAIN["samples"])
    model = cnn()
    # small buckets: the layers' gradients are sent during backward (where the model reports
    # finished layers)
    model.compile(optimizer=dist.DistributedOptimizer("adam", bucket_bytes=256),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = dist.fit(model, x, y, batch_size=TRAIN["batch_size"], epochs=TRAIN["epochs"],
                       verbose=0, callbacks=[RankMarker(out, monitor="loss")])
    bn = bn_model()
    bn.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    dist.fit(bn, x, y, batch_size=TRAIN["batch_size"], epochs=1, verbose=0)
    # Horovod's way: each rank its own data (its half of every batch of 16), gradients averaged
    set_random_seed(HALVES["seed"])
    own = own_half(*data(HALVES["samples"]), rank)
    halves = cnn()
    halves.compile(optimizer=HALVES["optimizer"], loss="sparse_categorical_crossentropy")
    dist.fit(halves, *own, batch_size=HALVES["batch_size"] // 2, epochs=2, shuffle=False,
             shard=False, verbose=0)
    np.savez(os.path.join(out, f"rank{rank}.npz"), *(model.get_weights() + bn.get_weights()))
    np.savez(os.path.join(out, f"halves{rank}.npz"), *halves.get_weights())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"history": history.history, "size": dist.size(),
                   "overlapped": model.optimizer._allreduce.overlapped,
                   "hook": hasattr(model, "_grad_ready_hook")}, f)


def failing(mode):
    set_random_seed(0)
    x, y = data(64)
    model = cnn(hidden=8 if mode == "mismatch" and dist.rank() == 1 else 16)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")

    def misbehave(batch, logs=None):
        if dist.rank() != 1 or batch != 2:
            return
        if mode == "hang":
            time.sleep(3600)
        elif mode == "raise":
            raise RuntimeError("injected failure on rank 1")
        elif mode == "exit":
            sys.exit(0)
        elif mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    dist.fit(model, x, y, batch_size=8, epochs=3, verbose=0,
             callbacks=[callbacks.LambdaCallback(on_train_batch_begin=misbehave)])
    print(f"rank {dist.rank()} finished training", flush=True)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    dist.init()
    if mode == "train":
        train(out)
    else:
        failing(mode)
