"""pytest-benchmark over the cases of ``wqkernels bench``: each case is a group, each
implementation (wqkernels, its bandwidth floor, numpy, torch, onnxruntime) a member.

Compare wqkernels with the group's floor member: its name and the goal for their ratio are in
each member's extra_info.
"""
import pytest

from wqkernels import bench

CASES = [(size, builder) for size in bench.SIZES for builder in bench.CASE_BUILDERS]


def _members():
    for size, builder in CASES:
        for case in builder(size):
            for impl in case.impls:
                yield pytest.param(size, builder, case.name, impl, id=f"{case.name}-{size}-{impl}")


_cache = {}


def _case(size, builder, name):
    key = (size, builder, name)
    if key not in _cache:
        _cache.clear()  # keep one size's inputs alive at a time
        for case in builder(size):
            _cache[(size, builder, case.name)] = case
    return _cache[key]


@pytest.mark.parametrize("size, builder, name, impl", list(_members()))
def test_kernel(benchmark, size, builder, name, impl):
    case = _case(size, builder, name)
    benchmark.group = f"{name} n={case.size}"
    benchmark.extra_info["floor"] = case.floor
    benchmark.extra_info["goal"] = case.goal
    benchmark(case.impls[impl])
