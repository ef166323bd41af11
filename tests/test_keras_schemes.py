"""Keras's absmax quantizer in the kernels against its NumPy twin (the twin is checked against
Keras itself in test_keras_native.py): codes, scales and values bit for bit, the error measured
in the same pass as the statistics measure it."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wqkernels import keras_schemes
from wqkernels.reference import keras_schemes as reference
from wqkernels.statistics import compare

from .helpers import assert_bit_equal, float_arrays


@st.composite
def arrays_and_axes(draw):
    x = draw(float_arrays(min_dims=1, max_dims=5, max_side=7, dtypes=(np.float32,)))
    x = np.ascontiguousarray(x) * np.float32(10.0 ** draw(st.integers(-30, 3)))
    axes = draw(st.sets(st.integers(0, x.ndim - 1), min_size=1))
    return x, tuple(sorted(axes))


def _check(x, axes, code_range, pruned=None):
    start = x if pruned is None else pruned
    fast_values, slow_values = np.empty_like(start), np.empty_like(start)
    codes, scale, (stats, before, after) = keras_schemes.absmax_quantize(start, axes, code_range, values=fast_values,
                                                                         measure=x)
    want_codes, want_scale = reference.absmax_quantize(start, axes, code_range, values=slow_values)
    assert_bit_equal(codes, want_codes, "codes")
    assert_bit_equal(scale, want_scale, "scales")
    assert scale.shape == want_scale.shape
    np.testing.assert_array_equal(fast_values, slow_values)
    want_stats, want_before, want_after = compare(x, slow_values)
    assert (before, after) == (want_before, want_after)
    assert stats.max_abs == want_stats.max_abs
    np.testing.assert_allclose(stats.mse, want_stats.mse, rtol=1e-12)
    if np.isfinite(want_stats.sqnr_db):
        np.testing.assert_allclose(stats.sqnr_db, want_stats.sqnr_db, rtol=1e-12)
    else:
        assert stats.sqnr_db == want_stats.sqnr_db


@given(arrays_and_axes(), st.sampled_from([keras_schemes.INT8, keras_schemes.INT4]))
def test_absmax_kernel_is_its_numpy_twin(case, code_range):
    x, axes = case
    _check(x, axes, code_range)


@pytest.mark.parametrize("shape,axes", [((4096, 70), (0,)), ((70, 4096), (1,)), ((33, 20, 70), (1,)),
                                        ((6, 300, 7), (0, 2)), ((2, 3, 4, 5, 6), (0, 2, 4))])
def test_absmax_kernel_on_large_and_pruned_arrays(shape, axes):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * rng.uniform(1e-3, 2.0, size=shape[-1:])).astype(np.float32)
    x[..., :3] = 0  # all-zero channels, or zeros in each
    pruned = np.where(np.abs(x) < 0.3, np.float32(0), x)
    for code_range in (keras_schemes.INT8, keras_schemes.INT4):
        _check(x, axes, code_range)
        _check(x, axes, code_range, pruned)


def test_absmax_kernel_values_may_be_x():
    x = np.random.default_rng(1).standard_normal((300, 40)).astype(np.float32)
    want = reference.absmax_quantize(x, (0,), values=np.empty_like(x))
    values = x.copy()
    codes, scale, (stats, _, _) = keras_schemes.absmax_quantize(values, (0,), values=values, measure=values)
    assert_bit_equal(codes, want[0], "codes")
    np.testing.assert_array_equal(values, codes / scale)
    assert stats.mse == pytest.approx(compare(x, values)[0].mse, rel=1e-12)


def test_absmax_kernel_refuses_nonfinite_values():
    x = np.ones((5, 4), np.float32)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"x has 1 NaN or infinite value.*\(3, 2\)"):
        keras_schemes.absmax_quantize(x, (0,))


@pytest.mark.parametrize("shape,block,axis", [((300, 70), 128, 0), ((129, 50), 32, 0), ((40, 1030), 128, 1),
                                              ((2049, 600), 48, 1), ((7, 3), 1, 1)])
def test_grouped_error_is_measured_as_the_statistics_measure_it(shape, block, axis):
    rng = np.random.default_rng(sum(shape) + block)
    x = (rng.standard_normal(shape) * rng.uniform(1e-3, 2.0, size=shape[-1:])).astype(np.float32)
    x[:, :2] = 0
    pruned = np.where(np.abs(x) < 0.2, np.float32(0), x)
    for start in (x, pruned):
        values = np.empty_like(x)
        want = keras_schemes.grouped_quantize(start, block, axis, values=values)
        *got, (stats, before, after) = keras_schemes.grouped_quantize(start, block, axis, measure=x)
        for a, b in zip(got, want):
            assert_bit_equal(a, b)
        want_stats, want_before, want_after = compare(x, values)
        assert (before, after) == (want_before, want_after)
        assert stats.max_abs == want_stats.max_abs
        np.testing.assert_allclose(stats.mse, want_stats.mse, rtol=1e-12)
