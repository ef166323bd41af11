"""The histograms of statistics.compare: bit for bit numpy.histogram of the clipped values."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_bit_equal, float_arrays
from hypothesis import given
from hypothesis import strategies as st

import wqkernels
from wqkernels.reference import statistics as ref
from wqkernels.statistics import compare, histogram, histogram_edges

ranges = st.one_of(st.none(), st.tuples(st.floats(-50, 50), st.floats(0, 100)).map(lambda t: (t[0], t[0] + t[1])))


@given(x=float_arrays(), bins=st.integers(1, 300), range_=ranges, data=st.data())
def test_histograms_match_numpy(x, bins, range_, data):
    x_hat = data.draw(st.sampled_from(["pruned", "quantized", "half", "same"]))
    if x_hat == "pruned":
        x_hat = wqkernels.prune(x, 0.5)
    elif x_hat == "quantized":
        x_hat = wqkernels.fake_quantize(x.astype(np.float32), 3)
    elif x_hat == "half":
        x_hat = x.astype(np.float16)
    else:
        x_hat = x
    before, before_hat = x.copy(), np.array(x_hat, copy=True)
    stats, sx, sxh, counts, edges = compare(x, x_hat, bins=bins, range=range_)
    expected = ref.compare(x, x_hat, bins, range_)
    assert (sx, sxh) == expected[1:3]
    assert stats == compare(x, x_hat)[0]
    assert_bit_equal(counts, expected[3], "counts")
    assert_bit_equal(edges, expected[4], "edges")
    assert counts.shape == (2, bins) and (counts.sum(axis=1) == x.size).all()
    assert_bit_equal(x, before, "x unchanged")
    assert_bit_equal(x_hat, before_hat, "x_hat unchanged")


def test_values_on_the_edges_and_outside_the_range():
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0, -3.0, 7.0], np.float32)
    _, _, _, counts, edges = compare(x, x, bins=4, range=(0, 1))
    assert edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert counts[0].tolist() == [2, 1, 1, 3]  # -3 in the first bin; 1.0 and 7 in the last


def test_default_range_and_degenerate_ranges():
    x = np.array([-1.0, 2.0], np.float64)
    assert compare(x, np.zeros(2), bins=3)[4].tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert compare(np.full(3, 2.0), np.full(3, 2.0), bins=2)[4].tolist() == [1.5, 2.0, 2.5]
    big = compare(np.full(3, 3e30, np.float32), np.full(3, 3e30, np.float32), bins=4)
    assert big[3].tolist() == [[0, 0, 3, 0], [0, 0, 3, 0]] and big[4][0] < 3e30 < big[4][-1]
    empty = compare(np.zeros(0, np.float32), np.zeros(0, np.float32), bins=2)
    assert empty[3].tolist() == [[0, 0], [0, 0]] and empty[4].tolist() == [0.0, 0.5, 1.0]


def test_large_arrays_across_blocks():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_003).astype(np.float32)
    x_hat = wqkernels.fake_quantize(wqkernels.prune(x, 0.7), 4, method="mse")
    got, expected = compare(x, x_hat, bins=128), ref.compare(x, x_hat, 128)
    assert_bit_equal(got[3], expected[3], "counts")
    assert got[3][1].nonzero()[0].size <= 16  # the 4-bit grid: at most 15 levels and zero


@pytest.mark.parametrize("kwargs,error,match", [
    ({"bins": -1}, ValueError, "bins must be >= 0"),
    ({"bins": 2.5}, TypeError, "bins must be an integer"),
    ({"bins": 4, "range": (1, 0)}, ValueError, "range must run from low to high"),
    ({"bins": 4, "range": (0, np.inf)}, ValueError, "range must be finite"),
    ({"bins": 4, "range": (0, np.nan)}, ValueError, "range must be finite"),
    ({"bins": 4, "range": "ab"}, TypeError, "range must be a pair"),
    ({"bins": 4, "range": (0, 1, 2)}, TypeError, "range must be a pair"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        compare(np.ones(3), np.ones(3), **kwargs)


def test_nonfinite_values_refused_before_counting():
    with pytest.raises(ValueError, match="x_hat has 1 NaN"):
        compare(np.ones(3), np.array([1.0, np.nan, 1.0]), bins=4)


def test_histogram_edges():
    assert histogram_edges(4, (0, 2)).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="bins must be >= 1"):
        histogram_edges(0, (0, 1))


@given(x=float_arrays(), bins=st.integers(1, 200), range_=ranges)
def test_histogram_of_one_array(x, bins, range_):
    counts, edges = histogram(x, bins, range_)
    expected = ref.histogram(x, bins, range_)
    assert_bit_equal(counts, expected[0], "counts")
    assert_bit_equal(edges, expected[1], "edges")
    if x.size:
        assert_bit_equal(counts, compare(x, x, bins=bins, range=range_)[3][0], "as compare counts")


def test_histogram_refuses_nonfinite_values():
    with pytest.raises(ValueError, match="x has 1 NaN"):
        histogram(np.array([1.0, np.inf]), 4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_same_counts_on_any_number_of_threads(dtype):
    """Each thread counts into its own bins: the sums of them do not depend on the threads."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(700_001).astype(dtype)
    x_hat = wqkernels.fake_quantize(x, 3).astype(dtype)
    saved = wqkernels.max_threads()
    try:
        results = []
        for threads in (1, 2):
            wqkernels.set_max_threads(threads)
            results.append(compare(x, x_hat, bins=97))
    finally:
        wqkernels.set_max_threads(saved)
    assert results[0][:3] == results[1][:3] == compare(x, x_hat)
    assert_bit_equal(results[0][3], results[1][3], "counts")
    assert_bit_equal(results[0][3], ref.compare(x, x_hat, 97)[3], "counts against numpy")
