"""Per-thread scratch buffers that ops reuse across calls, so a training step allocates nothing.

Each Python thread has its own buffers (concurrent ``predict`` calls never share scratch).  A
buffer is only valid until the next ``scratch`` call with the same ``key`` on the same thread:
ops use it for the duration of one kernel call, never to hand data to another op.
"""
import threading

import numpy as np

_local = threading.local()
_ALIGN = 64


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
        raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        start = -raw.ctypes.data % _ALIGN  # 64-byte aligned: SIMD loads, no false sharing
        buf = pool[key] = raw[start:start + nbytes]
    return buf[: n * dtype.itemsize].view(dtype).reshape(shape)


def clear():
    """Free this thread's scratch buffers."""
    _local.pool = {}
