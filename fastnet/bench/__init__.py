"""``fastnet bench``: side-by-side benchmarks of fastnet and the frameworks already installed
(NumPy's BLAS always, PyTorch CPU and ONNX Runtime when present), with the conditions recorded
next to the numbers.

Method: every (library configuration, thread count) runs in its own fresh process
(``fastnet.bench.worker``), all of them once per round in a rotated order, so drift hits every
library alike; each process pins every thread pool (threadpoolctl, ``torch.set_num_threads``,
ONNX Runtime's ``intra_op_num_threads``, fastnet's ``set_num_threads``) and reads the counts
back; it warms up, then times many calls per case.  A cell is the median of the processes'
medians with the interquartile range of all calls; each peer is measured as a user gets it
by default and in its best-known configurations (PyTorch channels_last, fused Adam, the tuned
glibc allocator; ONNX Runtime I/O binding), and fastnet's ratio is taken against the best.
Every library's result is checksummed against fastnet's, so all of them compute the same
thing.  A peer that is not installed is reported as skipped, never imitated.

    fastnet bench --quick
    fastnet bench conv pool --threads 1,2 --json out.json --plot out.png
    python -m fastnet.bench --list

Suites (``fastnet.bench.suites``): gemm, conv, pool, adam, train, infer.  The same cases run
under pytest-benchmark from ``benchmarks/`` (see ``fastnet.bench.pytest_cases``).
"""
from fastnet.bench.command import main
from fastnet.bench.runner import Settings, run
from fastnet.bench.suites import SUITES

__all__ = ["main", "run", "Settings", "SUITES"]
