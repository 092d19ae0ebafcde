"""The ``fastnet bench`` cases as pytest-benchmark tests, for ``benchmarks/bench_*.py``.

Every library runs in the pytest process here, so only the configurations that need nothing
at process start are included (not the tuned allocator, which glibc reads when a process
starts): ``fastnet bench`` remains the reference for comparisons; these keep the cases
runnable under pytest-benchmark and exercised in CI with ``--benchmark-disable``.
"""
import pytest

from fastnet.bench import env
from fastnet.bench.cases import FASTNET, PEERS, installed
from fastnet.bench.suites import SUITES
from fastnet.bench.worker import WorkerContext, all_configs

__all__ = ["suite_test", "script_main", "parametrize", "run_case"]


def _in_process(config):
    return not config.env and not config.unset


def thread_counts():
    """1 and the cores fastnet uses (when more than one)."""
    from fastnet.config import default_num_threads
    n = default_num_threads()
    return [1] + ([n] if n > 1 else [])


def parametrize(suite):
    """Decorator: parametrize a test over (case, config, threads) of ``suite``."""
    mod = SUITES[suite]
    configs = [FASTNET.name] + [c.name for p in PEERS if p.name in mod.LIBRARIES
                                for c in p.configs if _in_process(c)]
    params = [pytest.param(case, config, t, id=f"{case.key[len(suite) + 1:]}-{config}-{t}t"
                           .replace(" ", "_"))
              for case in mod.cases() for config in configs for t in thread_counts()]
    return pytest.mark.parametrize("case, config, threads", params)


def run_case(benchmark, case, config, threads, workdir=None):
    """Benchmark one case with one library configuration at ``threads`` threads; skips when
    the library is not installed or has no such case."""
    config = all_configs()[config]
    peer = next((p for p in PEERS if p.name == config.library), None)
    if peer is not None and not installed(peer.module):
        pytest.skip(f"{peer.label} is not installed")
    restore = env.pin_threads(config.library, threads)
    try:
        ctx = WorkerContext(threads=threads, workdir=workdir)
        bench = SUITES[case.suite].make(case, config, ctx)
        if bench is None:
            pytest.skip(f"{config.library} has no {case.key}")
        bench.probe()
        benchmark.extra_info.update(shape=case.shape, threads=threads, config=config.name)
        benchmark(bench.fn)
        if benchmark.stats is not None and not getattr(benchmark, "disabled", False):
            rate = case.rate(benchmark.stats.stats.median)
            benchmark.extra_info[case.unit] = round(rate, 2)
            if case.unit == "GFLOP/s":
                if threads not in _PEAKS:   # once per thread count and session
                    _PEAKS[threads] = env.fma_peak(threads)
                benchmark.extra_info["fma_peak_gflops"] = round(_PEAKS[threads], 1)
                benchmark.extra_info["of_peak"] = round(rate / _PEAKS[threads], 3)
    finally:
        restore()


_ONNX_WORKDIR = {}
_PEAKS = {}   # {threads: the FMA loop's GFLOP/s}, for the "of_peak" of GEMM rows


def _onnx_workdir(tmp_path_factory):
    """A directory holding the classic CNN's ONNX graph (exported once per session) for the
    ONNX Runtime cases; skips without an exporter."""
    from fastnet.bench.suites import cnn
    if "path" not in _ONNX_WORKDIR:
        if not installed("torch"):
            try:
                import fastnet.onnx  # noqa: F401
            except ImportError:
                pytest.skip("no ONNX exporter: needs PyTorch or fastnet.onnx")
        workdir = str(tmp_path_factory.mktemp("onnx"))
        cnn.export_onnx(cnn.onnx_path(workdir))
        _ONNX_WORKDIR["path"] = workdir
    return _ONNX_WORKDIR["path"]


def suite_test(suite):
    """A pytest-benchmark test over every (case, config, threads) of ``suite``; a benchmark
    file needs only ``test_<suite> = suite_test("<suite>")``."""
    @parametrize(suite)
    def test(benchmark, case, config, threads, request):
        workdir = None
        if getattr(SUITES[suite], "NEEDS_ONNX", False) and \
                all_configs()[config].library == "onnxruntime" and installed("onnxruntime"):
            workdir = _onnx_workdir(request.getfixturevalue("tmp_path_factory"))
        run_case(benchmark, case, config, threads, workdir)
    test.__name__ = f"test_{suite}"
    return test


def script_main(*suites):
    """``python benchmarks/bench_x.py [options]``: ``fastnet bench <suites> [options]``."""
    import sys

    from fastnet.bench import main
    sys.exit(main([*suites, *sys.argv[1:]]))
