"""Process-wide settings: the OpenMP thread count every kernel is given, and the deterministic
mode.

Deterministic mode (``deterministic(True)``, ``with deterministic(): ...`` or the environment
variable ``FASTNET_DETERMINISTIC=1`` at import; off by default).  By default a kernel that sums
over many items (a weight or bias gradient over the batch, a pooling backward with overlapping
windows) cuts the sum into one block per thread and adds the blocks in thread order: results
are bitwise reproducible for a given ``set_num_threads``, but change (by rounding) with it.  In
deterministic mode every such reduction is cut into a number of blocks fixed by the problem
size alone (at most ``DETERMINISTIC_PARTS``), the threads take blocks in turn and the blocks are
added in block order, and shape-based kernel choices stop looking at the thread count: the same
model trained from the same seed gives bitwise-identical weights, predictions and losses at any
thread count (on the same machine and instruction set: ``FASTNET_ISA`` still changes rounding).
What it costs, qualitatively (not measured): more partial-sum buffers (one per block instead of
one per thread: more memory, e.g. up to DETERMINISTIC_PARTS - 1 copies of a weight gradient or
of one input image for a convolution's input gradient, and more adding at the end of each
reduction, even when a small problem runs on one thread), threads that may get unequal numbers
of blocks, and on machines with more than ``DETERMINISTIC_PARTS`` threads some threads idle
during those reductions.  Operations already independent of the thread count (the GEMM, the
implicit / direct forward convolutions, batch-norm statistics, losses, metrics, optimizer steps
and norms, penalties, recurrent cells, dropout masks) are unchanged.
"""
import os

from fastnet._kernels import threads as _threads

__all__ = ["set_num_threads", "get_num_threads", "default_num_threads", "openmp_enabled",
           "deterministic", "is_deterministic", "reduction_parts", "DETERMINISTIC_PARTS"]

# Blocks of a reduction in deterministic mode: enough to keep a typical CPU's threads busy while
# bounding the partial-sum memory (a weight gradient's partials are (parts - 1) x its size).
DETERMINISTIC_PARTS = 8


def _cgroup_cpu_limit():
    """CPUs allowed by a cgroup v2/v1 quota, or None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, quota // period)
    except (OSError, ValueError):
        pass
    return None


def default_num_threads():
    """OMP_NUM_THREADS if set, else the cores this process may use (affinity and cgroup quota)."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


_num_threads = default_num_threads() if _threads.openmp_enabled() else 1


def set_num_threads(n):
    """Use ``n`` OpenMP threads in every kernel from now on (n >= 1)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n if _threads.openmp_enabled() else 1


def get_num_threads():
    """The number of OpenMP threads kernels use."""
    return _num_threads


def openmp_enabled():
    """True when the kernels were built with OpenMP (else everything runs on one thread)."""
    return _threads.openmp_enabled()


def _env_flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 0 or 1 (or true/false, yes/no, on/off), got {value!r}")


_deterministic = _env_flag("FASTNET_DETERMINISTIC")


class deterministic:
    """Turn deterministic mode on (``flag`` True, the default) or off, now.

    ``fastnet.config.deterministic(True)`` sets it for the rest of the process; as a context
    manager (``with fastnet.config.deterministic(): ...``) the previous setting comes back on
    exit.  See the module docstring for what it guarantees and costs.
    """

    def __init__(self, flag=True):
        global _deterministic
        if not isinstance(flag, (bool, int)):
            raise TypeError(f"deterministic: flag must be a bool, got {type(flag).__name__}")
        self._previous = _deterministic
        self._flag = bool(flag)
        _deterministic = self._flag

    def __enter__(self):
        global _deterministic
        _deterministic = self._flag
        return self

    def __exit__(self, *exc):
        global _deterministic
        _deterministic = self._previous
        return False


def is_deterministic():
    """True when deterministic mode is on (see ``deterministic``)."""
    return _deterministic


def reduction_parts(nthreads, units):
    """Blocks a reduction over ``units`` items is cut into with ``nthreads`` threads: nthreads
    (the fast default), or in deterministic mode min(DETERMINISTIC_PARTS, units), a number that
    does not depend on the thread count.  Ops read it once per call and pass it to the kernel."""
    if not _deterministic:
        return nthreads
    return max(1, min(DETERMINISTIC_PARTS, int(units)))
