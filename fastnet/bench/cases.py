"""What a benchmark case is, and what each library configuration is.

A :class:`Case` is one row of the results (a GEMM shape, a convolution pass, a training step);
a :class:`Config` is one way of running a library (PyTorch with channels_last and the tuned
allocator, ONNX Runtime with I/O binding, ...).  Every (config, thread count) runs in its own
fresh process, which times every case that library implements.
"""
import importlib.util
import os
import sys
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Case", "Bench", "Config", "Peer", "PEERS", "FASTNET", "TUNED_ALLOC", "installed",
           "peer_configs", "checksum"]

# glibc keeps freed memory instead of returning it to the OS (DESIGN.md): PyTorch's many
# per-step allocations get cheap.  Read by glibc at process start, so only a fresh process can
# be measured with it.
TUNED_ALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "10000000000"}
# Set on some machines to pick an OpenBLAS kernel by hand; unset, OpenBLAS detects the CPU.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

_UNIT_SCALE = {"GFLOP/s": 1e9, "GB/s": 1e9, "images/s": 1.0}


@dataclass(frozen=True)
class Case:
    """One benchmark row: ``work`` units (FLOP, bytes, images) are done by one call."""
    suite: str
    name: str
    shape: str
    work: float
    unit: str
    params: tuple = ()
    batch: int = None
    quick: bool = False

    @property
    def key(self):
        return f"{self.suite}/{self.name}" + (f"/b{self.batch}" if self.batch else "")

    def rate(self, seconds):
        """Throughput in ``unit`` for one call taking ``seconds``."""
        return self.work / seconds / _UNIT_SCALE[self.unit]


@dataclass
class Bench:
    """A ready-to-time case: ``fn()`` is the timed call (inputs and outputs preallocated);
    ``probe()`` makes the first call itself and returns a checksum of its result, compared
    across libraries so that every one is seen to compute the same thing."""
    fn: object
    probe: object


@dataclass(frozen=True)
class Config:
    """One way of running a library.  ``default`` marks what a user gets out of the box;
    ``options`` are read by the suites (layout, fused optimizer, I/O binding), ``env`` is set
    and ``unset`` removed in the child's environment."""
    name: str
    library: str
    description: str
    default: bool = False
    quick: bool = True
    options: tuple = ()
    env: tuple = ()
    unset: tuple = ()

    def option(self, name):
        return dict(self.options).get(name, False)

    def child_env(self, base, threads):
        """The environment of this configuration's worker process at ``threads`` threads."""
        env = dict(base)
        n = str(threads)
        # The library under test gets n threads; any other pool in the process gets one, since
        # an idle pool spins for a while after each call and would take a core from the
        # library being measured.
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n,
                   OPENBLAS_NUM_THREADS=n if self.library == "numpy" else "1")
        for var in tuple(TUNED_ALLOC) + self.unset:
            env.pop(var, None)
        env.update(dict(self.env))
        return env


@dataclass(frozen=True)
class Peer:
    name: str          # the library name in results and on the command line
    module: str        # what is imported
    label: str         # for the table
    configs: tuple = field(default=())


FASTNET = Config("fastnet", "fastnet", "fastnet as installed", default=True)

PEERS = (
    Peer("numpy", "numpy", "NumPy", (
        Config("numpy", "numpy", "NumPy as installed: np.matmul on its BLAS, Adam in ufuncs",
               default=True),
        Config("numpy-native", "numpy", "OpenBLAS picks its kernel for the CPU "
               "(OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset)", unset=OPENBLAS_OVERRIDES),
    )),
    Peer("torch", "torch", "PyTorch", (
        Config("torch", "torch", "PyTorch defaults: NCHW, torch.optim.Adam(), glibc malloc "
               "defaults", default=True),
        Config("torch-cl", "torch", "channels_last, Adam(fused=True)", quick=False,
               options=(("channels_last", True), ("fused_adam", True))),
        Config("torch-nchw-alloc", "torch", "NCHW, Adam(fused=True), tuned glibc allocator",
               quick=False, options=(("fused_adam", True),), env=tuple(TUNED_ALLOC.items())),
        Config("torch-cl-alloc", "torch", "channels_last, Adam(fused=True), tuned glibc "
               "allocator", options=(("channels_last", True), ("fused_adam", True)),
               env=tuple(TUNED_ALLOC.items())),
    )),
    Peer("onnxruntime", "onnxruntime", "ONNX Runtime", (
        Config("ort", "onnxruntime", "InferenceSession defaults, session.run", default=True),
        Config("ort-best", "onnxruntime", "I/O binding into preallocated outputs, "
               "denormals as zero, tuned glibc allocator",
               options=(("io_binding", True), ("denormal_as_zero", True)),
               env=tuple(TUNED_ALLOC.items())),
    )),
)


def installed(module):
    """True when ``module`` can be imported (without importing it: PyTorch takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None   # None: import blocked (tests use this)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def peer_configs(peer, quick, environ=None):
    """The configurations of ``peer`` to measure.  A configuration that would run exactly like
    the default one on this machine (numpy-native when no OpenBLAS override is set) is left
    out; --quick keeps the default and the best-known one."""
    environ = os.environ if environ is None else environ
    out = []
    for c in peer.configs:
        if c.unset and not c.env and not c.options and not any(v in environ for v in c.unset):
            continue
        if quick and not c.quick:
            continue
        out.append(c)
    return out


def checksum(a):
    """(sum, sum of squares, max) of an array in float64: independent of the memory layout
    (NCHW or NHWC), so every library's result can be compared with fastnet's."""
    a = np.asarray(a, dtype=np.float64)
    return [float(a.sum()), float(np.square(a).sum()), float(a.max())]
