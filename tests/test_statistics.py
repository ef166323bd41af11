"""sparsity and error: against the NumPy reference (error to float64 rounding), edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import float_arrays
from hypothesis import given

import wqkernels
from wqkernels import reference as ref
from wqkernels.statistics import compare


@given(x=float_arrays())
def test_sparsity_matches_reference(x):
    assert wqkernels.sparsity(x) == ref.sparsity(x)


def test_sparsity_counts_signed_zeros_and_allows_nan():
    assert wqkernels.sparsity(np.array([0.0, -0.0, np.nan, np.inf])) == 0.5
    assert wqkernels.sparsity(np.zeros((0, 4), np.float16)) == 0.0
    x = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    assert wqkernels.sparsity(wqkernels.prune(x, 0.3)) == pytest.approx(0.3, abs=1e-5)


@given(x=float_arrays(min_dims=1))
def test_error_matches_reference(x):
    x_hat = wqkernels.prune(x, 0.5)
    got, expected = wqkernels.error(x, x_hat), ref.error(x, x_hat)
    assert isinstance(got, wqkernels.ErrorStats)
    assert got.max_abs == expected.max_abs
    assert got.mse == pytest.approx(expected.mse, rel=1e-12, abs=0)
    assert got.sqnr_db == pytest.approx(expected.sqnr_db, rel=1e-12, abs=1e-12)


@given(x=float_arrays(min_dims=1))
def test_compare_is_error_and_both_sparsities(x):
    x_hat = wqkernels.prune(x, 0.5)
    stats, before, after = compare(x, x_hat)
    assert stats == wqkernels.error(x, x_hat)
    assert (before, after) == (ref.sparsity(x), ref.sparsity(x_hat))


def test_compare_counts_zeros_across_chunks_and_threads():
    from wqkernels import _core

    x = np.random.default_rng(2).standard_normal(300_001).astype(np.float32)
    x[::7] = -0.0
    x_hat = wqkernels.prune(x, 0.6).astype(np.float16)  # dtypes differ: compared in float32
    saved = _core.max_threads()
    try:
        results = []
        for threads in (1, 2):
            _core.set_max_threads(threads)
            results.append(compare(x, x_hat))
    finally:
        _core.set_max_threads(saved)
    assert results[0] == results[1]
    assert results[0][1:] == (ref.sparsity(x), ref.sparsity(x_hat))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_compare_counts_runs_of_zeros_and_finds_a_late_nan(dtype):
    """Zeros are counted in integers of the values' own width, run by run: a chunk of nothing
    but zeros (float16: more than a 16-bit counter holds) counts whole, and a NaN anywhere in a
    chunk is found."""
    x = np.zeros(200_000, dtype)
    x_hat = x.copy()
    x_hat[70_000:70_003] = 1
    stats, before, after = compare(x, x_hat)
    assert (before, after) == (1.0, (x.size - 3) / x.size) and stats.max_abs == 1.0
    for at in (4095, 4096, 65_535, 199_999):
        bad = x_hat.copy()
        bad[at] = np.nan
        with pytest.raises(ValueError, match="x_hat has 1 NaN"):
            compare(x, bad)


def test_error_conventions():
    x = np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32)
    assert wqkernels.error(x, x) == (0.0, 0.0, math.inf)
    assert wqkernels.error(np.zeros(3), np.zeros(3)) == (0.0, 0.0, math.inf)
    assert wqkernels.error(np.zeros(2), np.ones(2)) == (1.0, 1.0, -math.inf)
    assert wqkernels.error(np.zeros(0), np.zeros(0)) == (0.0, 0.0, math.inf)
    stats = wqkernels.error(x, np.zeros(4, np.float16))  # dtypes differ: compared in float32
    assert stats.mse == pytest.approx((1 + 4 + 9 + 0.25) / 4)
    assert stats.sqnr_db == 0.0


def test_error_large_and_thread_independent():
    from wqkernels import _core

    x = np.random.default_rng(1).standard_normal(500_000).astype(np.float32)
    x_hat = wqkernels.prune(x, 0.5)
    saved = _core.max_threads()
    try:
        results = []
        for threads in (1, 2):
            _core.set_max_threads(threads)
            results.append(wqkernels.error(x, x_hat))
    finally:
        _core.set_max_threads(saved)
    assert results[0] == results[1]
    assert results[0].mse == pytest.approx(ref.error(x, x_hat).mse, rel=1e-12)


@pytest.mark.parametrize("call, error, match", [
    (lambda: wqkernels.error(np.ones(3), np.ones(4)), ValueError, "same shape"),
    (lambda: wqkernels.error(np.ones(3), np.arange(3)), TypeError, "x_hat must be an array of float16"),
    (lambda: wqkernels.error(np.array([1.0, np.nan]), np.ones(2)), ValueError, "x has 1 NaN"),
    (lambda: wqkernels.error(np.ones(2), np.array([1.0, np.inf])), ValueError, "x_hat has 1 NaN or infinite"),
    (lambda: compare(np.array([1.0, np.nan]), np.ones(2)), ValueError, "x has 1 NaN"),
    (lambda: compare(np.ones((2, 2)), np.ones(4)), ValueError, "same shape"),
    (lambda: wqkernels.sparsity(np.arange(3)), TypeError, "float16, float32 or float64"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
