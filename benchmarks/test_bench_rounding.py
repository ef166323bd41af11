"""pytest-benchmark of sum-preserving rounding against rounding to nearest: one group per
layout (per channel along either axis of a Dense kernel, blocks of 32, per tensor) of a
4096x4096 float32 kernel at 4 bits, asymmetric (the default grid); members "nearest" and "sum".

    PYTHONPATH=src python -m pytest benchmarks/test_bench_rounding.py -p no:cacheprovider
"""
import numpy as np
import pytest

import wqkernels

LAYOUTS = {"channel axis 1": dict(axis=1), "channel axis 0": dict(axis=0),
           "block 32 axis 0": dict(axis=0, block_size=32), "tensor": dict()}

_x = {}


def _kernel():
    if "x" not in _x:
        _x["x"] = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    return _x["x"]


@pytest.mark.parametrize("rounding", ["nearest", "sum"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rounding(benchmark, layout, rounding):
    x = _kernel()
    benchmark.group = f"quantize int4 asymmetric {layout} {x.shape}"
    benchmark(lambda: wqkernels.quantize(x, 4, symmetric=False, rounding=rounding, **LAYOUTS[layout]))
