"""Lets ``python benchmarks/bench_*.py`` run from a source checkout built in place
(``python setup.py build_ext --inplace``) without installing fastnet."""
import os
import sys

try:
    import fastnet  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
