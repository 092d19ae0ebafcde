"""One measurement process: a fresh interpreter that runs one library configuration at one
thread count, times every case it is given and prints one JSON line.

    python -m fastnet.bench.worker '{"config": "torch-cl-alloc", "threads": 2, "cases": [...]}'
    python -m fastnet.bench.worker --export-onnx PATH

The runner (``fastnet.bench.runner``) starts these with the configuration's environment
(thread counts, allocator settings), so nothing of one library's state (thread pools, allocator,
clock) reaches another's measurement.
"""
import json
import sys
import time
from dataclasses import dataclass, field

__all__ = ["time_calls", "measure", "WorkerContext", "all_configs"]


@dataclass
class WorkerContext:
    """What a suite's ``make`` may need besides the case and the configuration."""
    threads: int = 1
    workdir: str = None
    sessions: list = field(default_factory=list)   # ONNX Runtime sessions, to read threads back


def all_configs():
    """{name: Config} of fastnet and every peer configuration."""
    from fastnet.bench.cases import FASTNET, PEERS
    return {c.name: c for c in (FASTNET, *[c for p in PEERS for c in p.configs])}


def time_calls(fn, budget=0.3, warmup=0.1, min_calls=5, max_calls=1000, min_sample=1e-3):
    """Seconds per call of ``fn``, one value per sample.

    Warm up for ``warmup`` seconds (at least two calls: thread pools awake, buffers planned,
    clocks up), then take as many samples as fit in ``budget`` seconds, within [min_calls,
    max_calls].  Calls shorter than ``min_sample`` are timed in groups (a sample is the mean of
    its group) so the timer's resolution and overhead do not count."""
    perf = time.perf_counter
    t_end, calls = perf() + warmup, 0
    while True:
        t0 = perf()
        fn()
        once = perf() - t0
        calls += 1
        if calls >= 2 and perf() >= t_end:
            break
    once = max(once, 1e-8)
    inner = max(1, int(min_sample / once))
    samples = int(min(max_calls, max(min_calls, budget / (once * inner))))
    times = []
    for _ in range(samples):
        t0 = perf()
        for _ in range(inner):
            fn()
        times.append((perf() - t0) / inner)
    return times


def _library_facts(library):
    """Details of the library under test that the report should carry."""
    if library == "torch":
        import torch
        return {"version": torch.__version__,
                "parallel_info": torch.__config__.parallel_info().strip().splitlines()}
    if library == "onnxruntime":
        import onnxruntime
        return {"version": onnxruntime.__version__,
                "providers": onnxruntime.get_available_providers()}
    if library == "numpy":
        import numpy
        return {"version": numpy.__version__}
    import fastnet
    return {"version": fastnet.__version__}


def measure(spec):
    """Run a worker spec (see the module docstring) in this process; returns the result dict."""
    from fastnet.bench import env
    from fastnet.bench.cases import Case
    from fastnet.bench.suites import SUITES

    t_start = time.perf_counter()
    config = all_configs()[spec["config"]]
    threads = int(spec["threads"])
    env.pin_threads(config.library, threads)
    ctx = WorkerContext(threads=threads, workdir=spec.get("workdir"))
    results, errors = {}, {}
    warmup = spec.get("first_warmup", 0.5)
    cases = [Case(**{**f, "params": tuple(f["params"])}) for f in spec["cases"]]
    # the FMA peak, before and after the cases, for the fraction of it each GEMM reaches
    want_peak = config.library == "fastnet" and any(c.unit == "GFLOP/s" for c in cases)
    peaks = [env.fma_peak(threads)] if want_peak else []
    for case in cases:
        try:
            bench = SUITES[case.suite].make(case, config, ctx)
            if bench is None:
                continue
            check = bench.probe()
            times = time_calls(bench.fn, budget=spec.get("budget", 0.3), warmup=warmup,
                               min_calls=spec.get("min_calls", 5))
        except Exception as e:  # one broken case must not hide the others
            errors[case.key] = f"{type(e).__name__}: {e}"
            continue
        finally:
            warmup = spec.get("warmup", 0.1)
        results[case.key] = {"times": times, "check": check}
    if want_peak:
        peaks.append(env.fma_peak(threads))
    return {"fma_peak_gflops": sum(peaks) / len(peaks) if peaks else None,
            "config": config.name, "library": config.library, "threads": threads,
            "threads_verified": env.read_back_threads(config.library, threads, ctx.sessions),
            "denormals_main_thread": env.denormal_state(),
            "gemm_denormals_as_zero": env.gemm_denormals(config.library),
            "facts": _library_facts(config.library),
            "cases": results, "errors": errors, "seconds": time.perf_counter() - t_start}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--export-onnx"]:
        from fastnet.bench.suites import cnn
        out = {"source": cnn.export_onnx(argv[1])}
    else:
        out = measure(json.loads(argv[0]))
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
