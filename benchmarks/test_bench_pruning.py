"""pytest-benchmark over the pruning cases of ``wqkernels bench``: one group per case (kernel,
size), with the NumPy reference, the torch peer (when installed) and the copy floor as members.

The 16 * 2^20-element cases are marked slow: deselect them with ``-m "not slow"``.
"""
import pytest

from wqkernels import bench


def _members():
    for size in bench.SIZES:
        marks = [pytest.mark.slow] if size >= bench.LARGE else []
        for case in bench.pruning_cases(size):
            for impl in case.impls:
                yield pytest.param(size, case.name, impl, id=f"{case.name}-{size}-{impl}", marks=marks)


_cache = {}


def _case(size, name):
    if (size, name) not in _cache:
        _cache.clear()  # keep one size's inputs alive at a time
        _cache.update({(size, case.name): case for case in bench.pruning_cases(size)})
    return _cache[(size, name)]


@pytest.mark.parametrize("size, name, impl", list(_members()))
def test_pruning(benchmark, size, name, impl):
    case = _case(size, name)
    benchmark.group = f"{name} n={case.size}"
    benchmark.extra_info["baseline"] = case.baseline
    benchmark(case.impls[impl])
