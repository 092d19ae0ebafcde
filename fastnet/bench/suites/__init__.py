"""The benchmark suites.  Each module defines ``SUITE``, ``LIBRARIES`` (the libraries that
implement it), ``cases(batches)`` (every case; ``Case.quick`` marks the --quick subset) and
``make(case, config, ctx)`` -> ``Bench`` (or None when that library has no such case)."""
from fastnet.bench.suites import adam, conv, gemm, infer, pool, train

SUITES = {m.SUITE: m for m in (gemm, conv, pool, adam, train, infer)}

__all__ = ["SUITES", "select_cases"]


def select_cases(suites, quick=False, batches=None):
    """The cases of the named suites, in suite order (only the --quick ones when quick)."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {list(SUITES)}")
    return [c for s in suites for c in SUITES[s].cases(batches) if c.quick or not quick]

