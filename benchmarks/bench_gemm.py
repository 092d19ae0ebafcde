"""GEMM, float32: fastnet ``ops.matmul`` against NumPy's BLAS and PyTorch, on square shapes and
the classic CNN's products at batch 64 - the cases of ``fastnet bench gemm``
(fastnet/bench/suites/gemm.py).

    fastnet bench gemm [--threads 1,2] [--quick]   # the comparison (fresh processes, interleaved)
    python benchmarks/bench_gemm.py [options]      # the same
    pytest benchmarks/bench_gemm.py --benchmark-only

Under pytest every library runs in the one pytest process (an idle OpenBLAS pool spins after
each call and can take the second core from OpenMP): prefer the command for 2-thread figures.
"""
import pytest

import _source_checkout  # noqa: F401
from fastnet.bench.pytest_cases import script_main, suite_test

pytestmark = pytest.mark.ci
test_gemm = suite_test("gemm")

if __name__ == "__main__":
    script_main("gemm")
