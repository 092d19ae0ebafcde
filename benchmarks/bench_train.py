"""One training step of the classic Keras CNN (batch 64, 28x28x1, Adam), images/s: fastnet
``train_on_batch`` against the same network, weights and batch in PyTorch - the cases of
``fastnet bench train`` (fastnet/bench/suites/train.py).

    fastnet bench train [--threads 1,2] [--batch 64]   # the comparison: fresh processes,
                                                       # PyTorch NCHW / channels_last / tuned
                                                       # allocator, interleaved
    python benchmarks/bench_train.py [options]         # the same
    pytest benchmarks/bench_train.py --benchmark-only
"""
import pytest

import _source_checkout  # noqa: F401
from fastnet.bench.pytest_cases import script_main, suite_test

pytestmark = pytest.mark.ci
test_train = suite_test("train")

if __name__ == "__main__":
    script_main("train")
