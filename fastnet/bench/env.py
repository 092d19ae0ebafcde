"""The conditions a benchmark ran under, recorded next to its numbers: the machine, the library
versions, fastnet's build, and the thread, allocator and denormal settings; and the pinning of
every thread pool in a worker to the same count, read back to verify it."""
import datetime
import importlib.metadata
import os
import platform
import re
import sys

import numpy as np

__all__ = ["capture", "machine", "versions", "fastnet_build", "denormal_state", "gemm_denormals",
           "pin_threads", "read_back_threads", "THREAD_ENV", "ALLOC_ENV"]

THREAD_ENV = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_WAIT_POLICY",
              "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
              "MKL_NUM_THREADS", "MKL_DYNAMIC", "KMP_AFFINITY", "KMP_BLOCKTIME", "FASTNET_ISA")
ALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
             "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
DISTRIBUTIONS = ("numpy", "torch", "onnxruntime", "onnx", "threadpoolctl", "matplotlib",
                 "pytest-benchmark")


def _env(names, environ=None):
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in names if k in environ}


def _meminfo_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine():
    """CPU model and features, cores (logical, usable by this process, cgroup quota), memory,
    OS, Python, load average."""
    from fastnet.cli import _cpu_flags, _cpu_model
    from fastnet.config import _cgroup_cpu_limit, default_num_threads
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": _cpu_model(), "arch": platform.machine(), "cpu_features": _cpu_flags(),
            "logical_cores": os.cpu_count(), "usable_cores": usable,
            "cgroup_cpu_limit": _cgroup_cpu_limit(), "default_threads": default_num_threads(),
            "memory_gib": _meminfo_gib(), "os": platform.platform(),
            "python": platform.python_version(), "load_average": load}


def versions():
    """Installed versions of fastnet and the peers (None when not installed), without importing
    the peers, and NumPy's BLAS as threadpoolctl sees it."""
    import fastnet
    out = {"fastnet": fastnet.__version__}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["numpy_blas"] = None
    try:
        from threadpoolctl import threadpool_info
        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if blas:
            out["numpy_blas"] = (f"{blas[0].get('internal_api')} {blas[0].get('version')} "
                                 f"({blas[0].get('architecture')})")
    except ImportError:
        pass
    return out


def _compiler(path):
    """The compiler that built a shared object, from its ELF .comment strings."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    found = sorted({s.decode("ascii", "replace") for s in
                    re.findall(rb"(?:GCC|clang version|Intel)[^\x00]{0,80}", data)})
    return "; ".join(found) or None


def fastnet_build():
    """How this fastnet was built and which kernels it runs: OpenMP, the ISA groups compiled in
    and the one dispatched, the GEMM blocking, the compiler."""
    from fastnet import config
    from fastnet._kernels import gemm
    isa = gemm.isa()
    return {"openmp": config.openmp_enabled(), "isa": isa,
            "isas_compiled": list(gemm.available_isas()),
            "isa_override": os.environ.get("FASTNET_ISA"),
            "gemm_blocking_float32": dict(gemm.blocking(isa, "float32")),
            "compiler": _compiler(gemm.__file__)}


def _denormal():
    return np.array([0x00100000], np.uint32).view(np.float32)   # a denormal, ~1.5e-39


def denormal_state():
    """Flush-to-zero and denormals-are-zero of this thread's floating-point unit, probed with
    NumPy float32 arithmetic (on x86 the MXCSR bits; elsewhere the equivalent behaviour)."""
    daz = not bool(np.greater(_denormal(), np.float32(0))[0])          # read as zero?
    small = np.array([0x0D800000], np.uint32).view(np.float32)          # 2**-100, normal
    product = np.multiply(small, np.array([0x30800000], np.uint32).view(np.float32))  # *2**-30
    ftz = bool(product.view(np.uint32)[0] == 0)                         # denormal result lost?
    return {"ftz": ftz, "daz": daz}


def gemm_denormals(library):
    """True when ``library``'s matrix product reads a denormal input as zero (its kernels run
    with denormals-are-zero), False when not, None for a library without one here."""
    a, one = _denormal().reshape(1, 1), np.ones((1, 1), np.float32)
    if library == "fastnet":
        from fastnet.ops import matmul
        c = matmul(a, one)
    elif library == "numpy":
        c = np.matmul(a, one)
    elif library == "torch":
        import torch
        c = torch.mm(torch.from_numpy(a), torch.from_numpy(one)).numpy()
    else:
        return None
    return bool(c[0, 0] == 0)


def fma_peak(threads, windows=5, seconds=0.02):
    """The FMA peak in GFLOP/s (float32) on ``threads`` threads: the median of ``windows``
    runs of fastnet's FMA loop (independent chains of the widest vector FMA its GEMM path
    uses), ``seconds`` each.  Measured in the process it describes, so that a GEMM's rate can
    be read as a fraction of what the cores delivered at that time."""
    from fastnet._kernels import gemm
    return float(np.median([gemm.fma_peak(threads, seconds) for _ in range(windows)]))


def pin_threads(library, n):
    """Give ``library`` n threads in this process, every other pool one: fastnet's OpenMP team,
    the BLAS and OpenMP pools threadpoolctl finds, PyTorch's intra-op pool.  Without
    threadpoolctl the environment variables the runner sets do the pinning of the pools.
    Returns a function that restores the previous settings."""
    import fastnet
    old_fastnet = fastnet.get_num_threads()
    fastnet.set_num_threads(n)
    limiters = []
    try:
        from threadpoolctl import ThreadpoolController
        controller = ThreadpoolController()
        limiters = [controller.limit(limits=n if library == "numpy" else 1, user_api="blas"),
                    controller.limit(limits=n, user_api="openmp")]
    except ImportError:
        pass
    old_torch = None
    if library == "torch":
        import torch
        old_torch = torch.get_num_threads()
        torch.set_num_threads(n)

    def restore():
        fastnet.set_num_threads(old_fastnet)
        for limiter in reversed(limiters):
            limiter.restore_original_limits()
        if old_torch is not None:
            import torch
            torch.set_num_threads(old_torch)
    return restore


def read_back_threads(library, n, sessions=()):
    """What every pool really uses, read back after ``pin_threads`` and the library's set-up;
    ``ok`` is False when the library under test does not run on n threads."""
    import fastnet
    out = {"requested": n, "fastnet": fastnet.get_num_threads()}
    ok = True
    try:
        from threadpoolctl import threadpool_info
        pools = threadpool_info()
        out["pools"] = [{"api": p.get("internal_api"), "prefix": p.get("prefix"),
                         "threads": p.get("num_threads")} for p in pools]
        if library == "numpy":
            ok &= all(p.get("num_threads") == n for p in pools if p.get("user_api") == "blas")
    except ImportError:
        out["pools"] = "threadpoolctl not installed: set by environment variables only"
    if library == "fastnet":
        ok &= out["fastnet"] == n
    if library == "torch":
        import torch
        out["torch"] = torch.get_num_threads()
        out["torch_interop"] = torch.get_num_interop_threads()
        ok &= out["torch"] == n
    if library == "onnxruntime":
        out["onnxruntime_intra_op"] = [s.get_session_options().intra_op_num_threads
                                       for s in sessions]
        ok &= all(t == n for t in out["onnxruntime_intra_op"])
    out["ok"] = bool(ok)
    return out


def capture(argv=None):
    """Everything about this run's conditions, for the JSON report."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["fastnet", "bench", *(argv or [])]),
            "machine": machine(), "versions": versions(), "fastnet_build": fastnet_build(),
            "thread_env": _env(THREAD_ENV), "allocator_env": _env(ALLOC_ENV),
            "denormals_main_thread": denormal_state(), "python_executable": sys.executable}
