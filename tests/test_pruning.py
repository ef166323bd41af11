"""Pruning: bit-exact agreement with the NumPy reference, exact counts, in place, edge cases."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import FLOAT_DTYPES, assert_bit_equal, float_arrays
from hypothesis import given, settings
from hypothesis import strategies as st

import wqkernels
import wqkernels.pruning as pruning
from wqkernels import reference as ref

fractions = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.25, 0.9]), st.floats(0, 1))


@pytest.fixture(params=["radix", "window"])
def selection(request, monkeypatch):
    """Run a test once with the plain radix select and once through the sampled window (on
    small arrays too, with a tiny sample so that the window often misses)."""
    if request.param == "window":
        monkeypatch.setattr(pruning, "SAMPLE_MIN", 0)
        monkeypatch.setattr(pruning, "SAMPLE_SIZE", 64)
    return request.param


# ---- prune by sparsity and by threshold ----------------------------------------------------

@given(x=float_arrays(), sparsity=fractions)
def test_prune_matches_reference(x, sparsity):
    before = x.copy()
    y = wqkernels.prune(x, sparsity)
    assert_bit_equal(y, ref.prune(x, sparsity))
    assert_bit_equal(x, before, "input")
    assert np.count_nonzero(y == 0) >= math.floor(sparsity * x.size)


@given(x=float_arrays(dtypes=(np.float32,), max_dims=2, max_side=40), sparsity=fractions,
       sample=st.sampled_from([8, 64, 1000]))
def test_prune_window_path_matches_reference(x, sparsity, sample):
    saved = pruning.SAMPLE_MIN, pruning.SAMPLE_SIZE
    pruning.SAMPLE_MIN, pruning.SAMPLE_SIZE = 0, sample
    try:
        assert_bit_equal(wqkernels.prune(x, sparsity), ref.prune(x, sparsity))
    finally:
        pruning.SAMPLE_MIN, pruning.SAMPLE_SIZE = saved


@given(x=float_arrays(), threshold=st.one_of(st.floats(0, 1e3), st.sampled_from([0.0, 0.25, 0.7, math.inf])))
def test_prune_threshold_matches_reference(x, threshold):
    assert_bit_equal(wqkernels.prune(x, threshold=threshold), ref.prune(x, threshold=threshold))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1000, 70_001])
def test_prune_exact_count_with_ties_and_signed_zeros(dtype, n, selection):
    rng = np.random.default_rng(n)
    x = (rng.integers(-3, 4, n) / 2).astype(dtype)  # few magnitudes: many ties
    x[rng.random(n) < 0.2] = -0.0
    for sparsity in (0.0, 0.1, 0.5, 0.77, 1.0):
        y = wqkernels.prune(x, sparsity)
        k = math.floor(sparsity * n)
        assert_bit_equal(y, ref.prune(x, sparsity))
        assert np.count_nonzero(y == 0) == max(k, np.count_nonzero(x == 0))
        bits = pruning.BITS[x.dtype]
        assert np.count_nonzero(y.view(bits) != x.view(bits)) <= k  # only the k selected change


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_prune_large_normal_array(dtype, selection):
    x = np.random.default_rng(3).standard_normal(300_000).astype(dtype)
    for sparsity in (0.5, 0.97):
        assert_bit_equal(wqkernels.prune(x, sparsity), ref.prune(x, sparsity))


def test_prune_sorted_and_periodic_data_fall_back_exactly(monkeypatch):
    monkeypatch.setattr(pruning, "SAMPLE_MIN", 0)
    x = np.linspace(-1, 1, 200_001, dtype=np.float32)
    periodic = np.tile(np.array([1e-3, 1.0, 1e3, 5.0], np.float32), 50_000) * np.repeat(
        np.arange(1, 50_001, dtype=np.float32), 4)
    for a in (x, periodic, np.full(100_000, -2.5, np.float32)):
        for sparsity in (0.3, 0.5):
            assert_bit_equal(wqkernels.prune(a, sparsity), ref.prune(a, sparsity))


def test_prune_in_place(selection):
    x = np.random.default_rng(1).standard_normal((300, 400)).astype(np.float32)
    expected = ref.prune(x, 0.6)
    y = wqkernels.prune(x, 0.6, out=x)
    assert y is x
    assert_bit_equal(x, expected)
    x = np.random.default_rng(2).standard_normal(1000)
    expected = ref.prune(x, threshold=0.5)
    assert wqkernels.prune(x, threshold=0.5, out=x) is x
    assert_bit_equal(x, expected)


def test_prune_out_arrays():
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float16)
    out = np.empty_like(x)
    assert wqkernels.prune(x, 0.5, out=out) is out
    assert_bit_equal(out, ref.prune(x, 0.5))
    strided = np.empty((6, 16), np.float16)[:, ::2]  # not contiguous: written through a copy
    assert wqkernels.prune(x, 0.5, out=strided) is strided
    assert_bit_equal(strided, ref.prune(x, 0.5))
    fortran = np.asfortranarray(x.copy())  # x itself, in place, not C-contiguous
    assert wqkernels.prune(fortran, 0.5, out=fortran) is fortran
    assert_bit_equal(fortran, ref.prune(x, 0.5))


def test_prune_edge_cases():
    empty = np.zeros((0, 3), np.float32)
    assert wqkernels.prune(empty, 0.5).shape == (0, 3)
    one = np.array([-2.0], np.float16)
    assert_bit_equal(wqkernels.prune(one, 0.99), one)
    assert_bit_equal(wqkernels.prune(one, 1.0), np.zeros(1, np.float16))
    scalar = np.float64(3.0)
    assert wqkernels.prune(scalar, 1.0).shape == ()
    same = np.full(10, -1.0, np.float32)
    assert_bit_equal(wqkernels.prune(same, 0.35), np.array([0, 0, 0] + [-1.0] * 7, np.float32))
    assert_bit_equal(wqkernels.prune([1.0, -0.0, 0.0, 2.0], 0.25), np.array([1.0, 0.0, 0.0, 2.0]))
    assert wqkernels.prune(np.arange(4, dtype=np.float32), 0.5).dtype == np.float32


# ---- N:M -------------------------------------------------------------------------------------

@given(data=st.data(), x=float_arrays(min_dims=1))
def test_prune_n_m_matches_reference(data, x):
    m = data.draw(st.integers(1, 9))
    n = data.draw(st.integers(0, m))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    assert_bit_equal(wqkernels.prune_n_m(x, n, m, axis), ref.prune_n_m(x, n, m, axis))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_prune_n_m_two_four_counts_and_in_place(axis):
    x = np.random.default_rng(0).standard_normal((64, 48, 8)).astype(np.float32)
    expected = ref.prune_n_m(x, 2, 4, axis)
    runs = np.moveaxis(wqkernels.prune_n_m(x, 2, 4, axis), axis, -1).reshape(-1, 4)
    assert ((runs != 0).sum(axis=1) == 2).all()
    y = x.copy()
    assert wqkernels.prune_n_m(y, 2, 4, axis, out=y) is y
    assert_bit_equal(y, expected)


def test_prune_n_m_edge_cases():
    x = np.array([[1.0, -1.0, 1.0, 2.0, -3.0]], np.float32)  # ties, then a short run of 1
    assert_bit_equal(wqkernels.prune_n_m(x, 2, 4), np.array([[1.0, 0.0, 0.0, 2.0, -3.0]], np.float32))
    assert_bit_equal(wqkernels.prune_n_m(x, 4, 4), x)  # n == m keeps all
    assert_bit_equal(wqkernels.prune_n_m(x, 0, 4), np.zeros_like(x))
    assert_bit_equal(wqkernels.prune_n_m(x, 1, 8), np.array([[0, 0, 0, 0, -3.0]], np.float32))  # m > length
    assert wqkernels.prune_n_m(np.zeros((3, 0)), 2, 4).shape == (3, 0)


# ---- channels ------------------------------------------------------------------------------

grid_arrays = float_arrays(min_dims=1, max_dims=3, ties=True).map(
    lambda a: np.round(a * 4) / 4)  # quarter steps: float64 norms are exact, any order


@given(data=st.data(), x=grid_arrays, sparsity=fractions)
def test_prune_channels_matches_reference(data, x, sparsity):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    order = data.draw(st.sampled_from([1, 2]))
    assert_bit_equal(wqkernels.prune_channels(x, sparsity, axis, order),
                     ref.prune_channels(x, sparsity, axis, order))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_prune_channels_zeroes_whole_slices(axis):
    x = np.random.default_rng(axis).standard_normal((20, 30, 40)).astype(np.float32)
    y = wqkernels.prune_channels(x, 0.4, axis)
    zero = ~np.moveaxis(y, axis, 0).reshape(x.shape[axis], -1).any(axis=1)
    assert zero.sum() == math.floor(0.4 * x.shape[axis])
    norms = np.sqrt((np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64) ** 2).sum(axis=1))
    assert norms[zero].max() <= norms[~zero].min()
    z = x.copy()
    assert wqkernels.prune_channels(z, 0.4, axis, out=z) is z
    assert_bit_equal(z, y)


def test_prune_channels_single_channel_and_ties():
    x = np.ones((1, 5), np.float32)
    assert_bit_equal(wqkernels.prune_channels(x, 0.99, axis=0), x)
    assert_bit_equal(wqkernels.prune_channels(x, 1.0, axis=0), np.zeros_like(x))
    assert_bit_equal(wqkernels.prune_channels(x, 0.4, axis=1), np.array([[0, 0, 1, 1, 1]], np.float32))


# ---- global ----------------------------------------------------------------------------------

@given(arrays=st.lists(float_arrays(dtypes=(np.float32,), max_dims=2), max_size=4), sparsity=fractions)
def test_prune_global_matches_reference(arrays, sparsity):
    named = {f"w{i}": a for i, a in enumerate(arrays)}
    got, expected = wqkernels.prune_global(named, sparsity), ref.prune_global(named, sparsity)
    assert list(got) == list(named)
    for name in named:
        assert_bit_equal(got[name], expected[name], name)
    total = sum(a.size for a in arrays)
    assert sum(np.count_nonzero(a == 0) for a in got.values()) >= math.floor(sparsity * total)


def test_prune_global_many_arrays_and_mixed_dtypes(selection):
    rng = np.random.default_rng(5)
    named = {f"layer{i}": rng.standard_normal(rng.integers(0, 5000)).astype(np.float32) for i in range(50)}
    named["half"] = rng.standard_normal((30, 7)).astype(np.float16)
    before = {k: v.copy() for k, v in named.items()}
    got, expected = wqkernels.prune_global(named, 0.8), ref.prune_global(named, 0.8)
    for name in named:
        assert got[name].dtype == named[name].dtype
        assert_bit_equal(got[name], expected[name], name)
        assert_bit_equal(named[name], before[name], "input")
    assert wqkernels.prune_global({}, 0.5) == {}


def test_prune_global_ties_follow_dict_order():
    got = wqkernels.prune_global({"b": np.ones(2), "a": np.ones(3)}, 0.6)
    assert_bit_equal(got["b"], np.zeros(2))
    assert_bit_equal(got["a"], np.array([0.0, 1.0, 1.0]))


# ---- clip and shrink ---------------------------------------------------------------------

bounds = st.floats(-1e3, 1e3, allow_nan=False)


@given(x=float_arrays(), lo=bounds, hi=bounds)
def test_clip_matches_reference(x, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    assert_bit_equal(wqkernels.clip(x, lo, hi), ref.clip(x, lo, hi))


def test_clip_signed_zeros_and_open_sides():
    x = np.array([0.0, -0.0, -5.0, 5.0], np.float32)
    assert_bit_equal(wqkernels.clip(x, -0.0, 0.0), np.clip(x, -0.0, 0.0))
    assert_bit_equal(wqkernels.clip(x, None, 1.0), np.array([0.0, -0.0, -5.0, 1.0], np.float32))
    assert_bit_equal(wqkernels.clip(x, -1.0, None), np.array([0.0, -0.0, -1.0, 5.0], np.float32))


@given(x=float_arrays(), alpha=st.one_of(st.floats(0, 1e3), st.sampled_from([0.0, 0.25, 1.0])))
def test_shrink_matches_reference(x, alpha):
    y = wqkernels.shrink(x, alpha)
    assert_bit_equal(y, ref.shrink(x, alpha))
    assert not (np.signbit(y) & (y != 0) & ~np.signbit(x)).any()  # nothing crosses zero


def test_clip_and_shrink_in_place():
    x = np.random.default_rng(0).standard_normal(500).astype(np.float16)
    c, s = ref.clip(x, -0.5, 0.5), ref.shrink(x, 0.5)
    a, b = x.copy(), x.copy()
    assert wqkernels.clip(a, -0.5, 0.5, out=a) is a
    assert wqkernels.shrink(b, 0.5, out=b) is b
    assert_bit_equal(a, c)
    assert_bit_equal(b, s)


# ---- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda x: wqkernels.prune(x, 0.5),
    lambda x: wqkernels.prune(x, threshold=0.5),
    lambda x: wqkernels.prune(x, 0.5, out=x),
    lambda x: wqkernels.prune(x, threshold=0.5, out=x),
    lambda x: wqkernels.prune_n_m(x, 2, 4),
    lambda x: wqkernels.prune_n_m(x, 2, 4, out=x),
    lambda x: wqkernels.prune_channels(x, 0.5),
    lambda x: wqkernels.prune_global({"a": np.ones(3, x.dtype), "b": x}, 0.5),
    lambda x: wqkernels.clip(x, -1, 1, out=x),
    lambda x: wqkernels.shrink(x, 0.1),
])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("size", [10, 300_000])
def test_nonfinite_input_is_refused_untouched(call, bad, size):
    x = np.linspace(-1, 1, size, dtype=np.float32).reshape(-1, 10)
    x[-1, 3] = bad
    before = x.copy()
    with pytest.raises(ValueError, match="NaN or infinite"):
        call(x)
    assert_bit_equal(x, before, "input")


@pytest.mark.parametrize("call, error, match", [
    (lambda: wqkernels.prune(np.arange(4), 0.5), TypeError, "float16, float32 or float64"),
    (lambda: wqkernels.prune(np.ones(4, np.complex64), 0.5), TypeError, "complex64"),
    (lambda: wqkernels.prune(np.ones(4), 1.5), ValueError, "sparsity must be between 0 and 1, got 1.5"),
    (lambda: wqkernels.prune(np.ones(4), -0.1), ValueError, "sparsity"),
    (lambda: wqkernels.prune(np.ones(4), float("nan")), ValueError, "sparsity"),
    (lambda: wqkernels.prune(np.ones(4)), TypeError, "exactly one of sparsity and threshold"),
    (lambda: wqkernels.prune(np.ones(4), 0.5, threshold=1.0), TypeError, "exactly one"),
    (lambda: wqkernels.prune(np.ones(4), threshold=-1.0), ValueError, "threshold must be >= 0, got -1.0"),
    (lambda: wqkernels.prune(np.ones(4), threshold=float("nan")), ValueError, "threshold"),
    (lambda: wqkernels.prune(np.ones(4), 0.5, out=np.ones(4, np.float32)), ValueError, "out must be"),
    (lambda: wqkernels.prune(np.ones(4), 0.5, out=np.ones(3)), ValueError, "shape"),
    (lambda: wqkernels.prune_n_m(np.ones(8), 2, 0), ValueError, "m must be >= 1, got 0"),
    (lambda: wqkernels.prune_n_m(np.ones(8), 5, 4), ValueError, "n must be <= m, got n=5 and m=4"),
    (lambda: wqkernels.prune_n_m(np.ones(8), -1, 4), ValueError, "n must be >= 0, got -1"),
    (lambda: wqkernels.prune_n_m(np.ones(8), 2.0, 4), TypeError, "n must be an integer"),
    (lambda: wqkernels.prune_n_m(np.ones(8), 2, 4, axis=1), ValueError, "axis 1 is out of bounds"),
    (lambda: wqkernels.prune_n_m(np.float32(1), 2, 4), ValueError, "axis"),
    (lambda: wqkernels.prune_channels(np.ones((2, 2)), 0.5, ord=3), ValueError, "ord must be 1 or 2, got 3"),
    (lambda: wqkernels.prune_channels(np.ones((2, 2)), 0.5, axis=-3), ValueError, "axis -3"),
    (lambda: wqkernels.prune_global([np.ones(2)], 0.5), TypeError, "mapping"),
    (lambda: wqkernels.prune_global({"a": np.arange(2)}, 0.5), TypeError, r"arrays\['a'\]"),
    (lambda: wqkernels.clip(np.ones(2), 1.0, -1.0), ValueError, "lo must be <= hi"),
    (lambda: wqkernels.clip(np.ones(2), "a", 1.0), TypeError, "lo must be a real number"),
    (lambda: wqkernels.shrink(np.ones(2), -0.5), ValueError, "alpha must be >= 0, got -0.5"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_out_overlapping_x_is_refused():
    x = np.ones(10)
    with pytest.raises(ValueError, match="overlaps"):
        wqkernels.prune(x[:9], 0.5, out=x[1:])


# ---- the scan's paths ----------------------------------------------------------------------

@pytest.fixture(params=["avx512", "portable"])
def scan_path(request):
    """Run a test with the AVX-512 scan of the sampled window (where the CPU has it) and with the
    portable one; both must give the reference's result."""
    from wqkernels import _core

    available = _core.use_avx512_scan(True)
    if request.param == "avx512" and not available:
        pytest.skip("this CPU has no AVX-512")
    _core.use_avx512_scan(request.param == "avx512")
    yield request.param
    _core.use_avx512_scan(True)


def _windowed(monkeypatch, sample=1024):
    monkeypatch.setattr(pruning, "SAMPLE_MIN", 0)
    monkeypatch.setattr(pruning, "SAMPLE_SIZE", sample)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 33, 1000, 4099, 70_001])
def test_scan_paths_sizes_ties_and_signed_zeros(dtype, n, scan_path, monkeypatch):
    _windowed(monkeypatch, 256)
    rng = np.random.default_rng(n)
    values = [rng.standard_normal(n), rng.integers(-3, 4, n) / 2, np.full(n, -1.5)]
    for x in (v.astype(dtype) for v in values):
        x[rng.random(n) < 0.2] = -0.0
        for sparsity in (0.0, 0.05, 0.5, 0.7, 0.999, 1.0):
            y = wqkernels.prune(x, sparsity)
            assert_bit_equal(y, ref.prune(x, sparsity))
            bits = pruning.BITS[x.dtype]
            assert np.count_nonzero(y.view(bits) != x.view(bits)) <= math.floor(sparsity * n)


@settings(max_examples=60, deadline=None)
@given(x=float_arrays(max_dims=2, max_side=70), sparsity=fractions, sample=st.sampled_from([16, 64, 1000]))
def test_scan_paths_match_reference(x, sparsity, sample):
    from wqkernels import _core

    saved = pruning.SAMPLE_MIN, pruning.SAMPLE_SIZE
    pruning.SAMPLE_MIN, pruning.SAMPLE_SIZE = 0, sample
    try:
        expected = ref.prune(x, sparsity)
        for wide in (True, False):
            _core.use_avx512_scan(wide)
            assert_bit_equal(wqkernels.prune(x, sparsity), expected)
    finally:
        _core.use_avx512_scan(True)
        pruning.SAMPLE_MIN, pruning.SAMPLE_SIZE = saved


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_scan_paths_over_pages_and_threads(dtype, threads, scan_path):
    """Several huge pages of output (written at each page's end first), split between threads,
    into fresh, existing, unaligned and in-place outputs."""
    from wqkernels import _core

    n = (5 << 21) // np.dtype(dtype).itemsize + 37
    x = np.random.default_rng(threads).standard_normal(n).astype(dtype)
    x[::97] = -0.0
    x[5::89] = 0.75  # many equal values at the threshold
    saved = _core.max_threads()
    try:
        _core.set_max_threads(threads)
        for sparsity in (0.0, 0.3, 0.7, 1.0):
            expected = ref.prune(x, sparsity)
            assert_bit_equal(wqkernels.prune(x, sparsity), expected)
            out = np.full_like(x, 7.0)
            assert_bit_equal(wqkernels.prune(x, sparsity, out=out), expected)
            raw = np.zeros(x.nbytes + x.itemsize, np.uint8)  # an out aligned to a byte only
            odd = raw[1:1 + x.nbytes].view(x.dtype)
            assert not odd.flags.aligned
            assert_bit_equal(wqkernels.prune(x, sparsity, out=odd), expected)
            inplace = x.copy()
            assert_bit_equal(wqkernels.prune(inplace, sparsity, out=inplace), expected)
    finally:
        _core.set_max_threads(saved)


def test_scan_paths_window_overflow_and_misses(scan_path, monkeypatch):
    """A sample too small for the data: the window misses t or overflows its room, and the exact
    fallback gives the same result."""
    _windowed(monkeypatch, 16)
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(50_000), np.full(30_000, 0.5), rng.standard_normal(20_000) * 1e-3])
    for a in (x.astype(np.float32), np.sort(x), x[::-1].copy()):
        for sparsity in (0.2, 0.5, 0.69, 0.9):
            assert_bit_equal(wqkernels.prune(a, sparsity), ref.prune(a, sparsity))


def test_scan_paths_prune_global(scan_path, monkeypatch):
    _windowed(monkeypatch, 512)
    rng = np.random.default_rng(6)
    arrays = {f"w{i}": rng.standard_normal(size).astype(np.float32)
              for i, size in enumerate([1, 15, 33, 4097, 0, 20_000, 17])}
    arrays["w3"][::3] = -0.0
    for sparsity in (0.0, 0.4, 0.8, 1.0):
        got = wqkernels.prune_global(arrays, sparsity)
        want = ref.prune_global(arrays, sparsity)
        for name in arrays:
            assert_bit_equal(got[name], want[name], name)


@pytest.mark.parametrize("threads", [1, 2])
def test_scan_paths_prune_global_over_pages(threads, scan_path):
    """Arrays that end inside a huge page of the shared output, at one and two threads."""
    from wqkernels import _core

    rng = np.random.default_rng(threads)
    arrays = {f"w{i}": rng.standard_normal(size).astype(np.float32)
              for i, size in enumerate([300_001, 1_000_003, 5, 700_000, 262_145])}
    arrays["w1"][::7] = 0.25
    saved = _core.max_threads()
    try:
        _core.set_max_threads(threads)
        for sparsity in (0.3, 0.7):
            got = wqkernels.prune_global(arrays, sparsity)
            want = ref.prune_global(arrays, sparsity)
            for name in arrays:
                assert_bit_equal(got[name], want[name], name)
    finally:
        _core.set_max_threads(saved)


# ---- threads -------------------------------------------------------------------------------

def test_kernels_agree_across_threads(selection):
    """Concurrent calls give the results of serial ones (that they run concurrently: test_gil.py)."""
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal(200_000).astype(np.float32) for _ in range(4)]
    calls = [
        lambda a: wqkernels.prune(a, 0.5),
        lambda a: wqkernels.prune(a, threshold=0.3),
        lambda a: wqkernels.prune_n_m(a.reshape(-1, 8), 2, 4, axis=0),
        lambda a: wqkernels.prune_channels(a.reshape(400, 500), 0.3),
        lambda a: wqkernels.shrink(a, 0.1),
    ]
    expected = [[call(a) for a in arrays] for call in calls]
    with ThreadPoolExecutor(4) as pool:
        for call, want in zip(calls, expected):
            for got, w in zip(pool.map(call, arrays), want):
                assert_bit_equal(got, w)


@settings(max_examples=20)
@given(threads=st.sampled_from([1, 2, 3]))
def test_results_do_not_depend_on_thread_count(threads):
    from wqkernels import _core

    x = np.random.default_rng(4).standard_normal(400_000).astype(np.float32)
    saved = _core.max_threads()
    try:
        _core.set_max_threads(threads)
        assert_bit_equal(wqkernels.prune(x, 0.5), ref.prune(x, 0.5))
        assert_bit_equal(wqkernels.prune_channels(x.reshape(800, 500), 0.5, axis=0),
                         ref.prune_channels(x.reshape(800, 500), 0.5, axis=0))
    finally:
        _core.set_max_threads(saved)
