"""Adam step on 10M float32 parameters (28 bytes per parameter, memory bound): fastnet
``ops.adam_update`` against the Keras formula in NumPy ufuncs and ``torch.optim.Adam`` (default
and ``fused=True``), with NumPy's copy bandwidth as the roof - the cases of ``fastnet bench
adam`` (fastnet/bench/suites/adam.py).

    fastnet bench adam [--threads 1,2]             # the comparison (fresh processes, interleaved)
    python benchmarks/bench_adam.py [options]      # the same
    pytest benchmarks/bench_adam.py --benchmark-only
"""
import pytest

import _source_checkout  # noqa: F401
from fastnet.bench.pytest_cases import script_main, suite_test

pytestmark = pytest.mark.ci
test_adam = suite_test("adam")

if __name__ == "__main__":
    script_main("adam")
