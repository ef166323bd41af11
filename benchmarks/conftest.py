"""Benchmarks run single-threaded unless WQKERNELS_BENCH_THREADS says otherwise.

Run: ``python -m pytest benchmarks --benchmark-group-by=group`` (add ``-k "not 16777216"`` to
skip the 64 MiB cases).  Every kernel is grouped with its NumPy reference and, when installed,
its torch and onnxruntime peers; compare within a group.
"""
import os

import pytest

from wqkernels import bench


@pytest.fixture(scope="session", autouse=True)
def threads():
    n = int(os.environ.get("WQKERNELS_BENCH_THREADS", "1"))
    bench.set_threads(n)
    return n
