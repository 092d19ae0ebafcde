"""Process-wide settings: the OpenMP thread count every kernel is given."""
import os

from fastnet._kernels import threads as _threads

__all__ = ["set_num_threads", "get_num_threads", "default_num_threads", "openmp_enabled"]


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
