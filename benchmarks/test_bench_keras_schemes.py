"""pytest-benchmark of Keras's absmax quantizer: the kernel (codes and the report's error in one
pass) against its NumPy twin followed by the statistics of the values, on a 4096x4096 float32
Dense kernel (one scale per column) and the same matrix as an Embedding table (one per row);
members "kernel" and "numpy + compare".

    PYTHONPATH=src python -m pytest benchmarks/test_bench_keras_schemes.py -p no:cacheprovider
"""
import numpy as np
import pytest

from wqkernels import keras_schemes
from wqkernels.reference import keras_schemes as reference
from wqkernels.statistics import compare

#: the reduced axis of each layout
LAYOUTS = {"Dense (per column)": 0, "Embedding (per row)": 1}

_x = {}


def _matrix():
    if "x" not in _x:
        _x["x"] = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    return _x["x"]


def _numpy(x, axis, codes, values):
    reference.absmax_quantize(x, (axis,), out=codes, values=values)
    return compare(x, values)


@pytest.mark.parametrize("member", ["kernel", "numpy + compare"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_absmax(benchmark, layout, member):
    x, axis = _matrix(), LAYOUTS[layout]
    codes, values = np.empty(x.shape, np.int8), np.empty_like(x)
    benchmark.group = f"Keras absmax int8 {layout} {x.shape}"
    if member == "kernel":
        benchmark(lambda: keras_schemes.absmax_quantize(x, (axis,), out=codes, measure=x))
    else:
        benchmark(lambda: _numpy(x, axis, codes, values))
