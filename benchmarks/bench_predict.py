"""Inference with the classic Keras CNN at batch 1 and 64, images/s: fastnet ``model.predict``
against PyTorch (``torch.inference_mode``, the same weights) and ONNX Runtime on the model
exported to ONNX - the cases of ``fastnet bench infer`` (fastnet/bench/suites/infer.py).

    fastnet bench infer [--threads 1,2] [--batch 1,64]   # the comparison (fresh processes)
    python benchmarks/bench_predict.py [options]         # the same
    pytest benchmarks/bench_predict.py --benchmark-only
"""
import pytest

import _source_checkout  # noqa: F401
from fastnet.bench.pytest_cases import script_main, suite_test

pytestmark = pytest.mark.ci
test_infer = suite_test("infer")

if __name__ == "__main__":
    script_main("infer")
