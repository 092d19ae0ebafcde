"""pytest set-up of the benchmarks.

``pytest benchmarks/ --benchmark-only`` runs every benchmark here.  A plain ``pytest`` from the
project root (the CI's command, once ``testpaths`` lists ``benchmarks``) is a smoke run: only
the files that opt in with a ``pytestmark = pytest.mark.ci`` line are collected, and each of
their cases runs once, at one thread, with benchmarking disabled (as ``--benchmark-disable``),
so CI checks that they still work without timing anything.
"""
import pytest

OPT_IN = "pytestmark = pytest.mark.ci"


def _smoke_run(config):
    """Plain ``pytest`` through testpaths, without an explicit benchmark option."""
    sources = getattr(pytest.Config, "ArgsSource", None)   # pytest >= 7.2
    return (sources is not None and config.args_source == sources.TESTPATHS
            and not config.getoption("benchmark_only", False)
            and not config.getoption("benchmark_enable", False))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "ci: a benchmark file that the CI's plain `pytest` runs "
                                       "once, with benchmarking disabled")
    if _smoke_run(config) and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


def pytest_ignore_collect(collection_path, config):
    # not even imported unless opted in: a file still in the works cannot break CI
    if _smoke_run(config) and collection_path.suffix == ".py" and \
            collection_path.name.startswith("bench_"):
        if not config.pluginmanager.hasplugin("benchmark"):   # pytest-benchmark missing
            return True
        with open(collection_path, encoding="utf-8") as f:
            if not any(line.startswith(OPT_IN) for line in f):
                return True
    return None


def pytest_collection_modifyitems(config, items):
    if not (_smoke_run(config) or config.getoption("benchmark_disable", False)):
        return
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        one_thread = spec is None or spec.params.get("threads", 1) == 1
        mine = item.get_closest_marker("ci") is not None
        (drop if mine and not one_thread else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
