"""Per-thread scratch buffers that ops reuse across calls, so a training step allocates nothing.

Each Python thread has its own buffers (concurrent ``predict`` calls never share scratch).  A
buffer is only valid until the next ``scratch`` call with the same ``key`` on the same thread:
ops use it for the duration of one kernel call, never to hand data to another op.
"""
import os
import threading

import numpy as np

_local = threading.local()
_ALIGN = 64
_machine_bytes = None


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # cgroup v2 "max": no limit


def memory_limit():
    """Bytes this process can ever hold: physical memory, lowered by a cgroup memory limit and
    by RLIMIT_AS.  An allocation above it can only fail or get the process killed."""
    global _machine_bytes
    if _machine_bytes is None:
        limits = []
        try:
            limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):   # not POSIX
            pass
        limits += [v for v in (_read_int("/sys/fs/cgroup/memory.max"),
                               _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
                   if v]
        _machine_bytes = min(limits) if limits else 1 << 62
    limit = _machine_bytes
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft)
    except (ImportError, ValueError, OSError):
        pass
    return limit


def _human(nbytes):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def nbytes_of(shape, dtype):
    """The byte size of an array of ``shape`` and ``dtype`` (Python ints: no overflow)."""
    n = np.dtype(dtype).itemsize
    for s in shape:
        n *= int(s)
    return n


def check_nbytes(nbytes, what):
    """Refuse, with a ValueError naming ``what``, an allocation of ``nbytes`` that exceeds
    ``memory_limit()``: checked before allocating, so an absurd channel or unit count fails at
    once instead of after the system ran out of memory."""
    limit = memory_limit()
    if nbytes > limit:
        raise ValueError(f"{what} would need {_human(nbytes)}, more than the {_human(limit)} "
                         f"of memory this process may use")


def scratch(key, shape, dtype):
    """A C-contiguous array of ``shape`` and ``dtype`` backed by a grow-only per-thread buffer."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= int(s)
    nbytes = max(n * dtype.itemsize, 1)
    buf = pool.get(key)
    if buf is None or buf.nbytes < nbytes:
        check_nbytes(nbytes, f"workspace {key!r} of shape {tuple(shape)} ({dtype})")
        raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        start = -raw.ctypes.data % _ALIGN  # 64-byte aligned: SIMD loads, no false sharing
        buf = pool[key] = raw[start:start + nbytes]
    return buf[: n * dtype.itemsize].view(dtype).reshape(shape)


def clear():
    """Free this thread's scratch buffers."""
    _local.pool = {}
