"""quantize / dequantize / fake_quantize against the NumPy reference, bit for bit."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import wqkernels
import wqkernels.reference as ref
from helpers import assert_bit_equal, axes_for, float_arrays
from wqkernels._schemes import MSE_RATIOS
from wqkernels.reference import quantization as ref_quantization

GRANULARITIES = [dict(), dict(axis=0), dict(axis=-1), dict(axis=0, block_size=3), dict(axis=1, block_size=32)]


@st.composite
def quantize_cases(draw, methods=("minmax", "percentile")):
    x = draw(float_arrays())
    axis = draw(axes_for(x.ndim))
    block = None if axis is None else draw(st.one_of(st.none(), st.integers(1, 12)))
    options = dict(bits=draw(st.integers(2, 8)), symmetric=draw(st.booleans()), axis=axis,
                   block_size=block, method=draw(st.sampled_from(methods)))
    return x, options


def assert_same_quantization(a, b):
    assert_bit_equal(a.values, b.values, "values")
    assert_bit_equal(a.scale, b.scale, "scale")
    assert_bit_equal(a.zero_point, b.zero_point, "zero_point")
    assert (a.bits, a.axis, a.block_size) == (b.bits, b.axis, b.block_size)


@given(quantize_cases())
def test_quantize_matches_reference(case):
    x, options = case
    original = x.copy()
    qa = wqkernels.quantize(x, **options)
    assert_same_quantization(qa, ref.quantize(x, **options))
    assert_bit_equal(x, original, "input")


@given(quantize_cases())
def test_fake_quantize_is_quantize_then_dequantize(case):
    x, options = case
    qa = wqkernels.quantize(x, **options)
    y = wqkernels.fake_quantize(x, **options)
    assert_bit_equal(y, qa.dequantize(), "fake_quantize")
    assert_bit_equal(y, ref.dequantize(qa), "reference dequantize")
    assert_bit_equal(y, ref.fake_quantize(x, **options), "reference fake_quantize")


@given(quantize_cases(methods=("minmax",)))
def test_codes_in_range_and_error_within_half_a_step(case):
    x, options = case
    qa = wqkernels.quantize(x, **options)
    bits = options["bits"]
    if options["symmetric"]:
        assert qa.values.dtype == np.int8 and qa.zero_point.dtype == np.int8
        low, high = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        assert not qa.zero_point.any()
    else:
        assert qa.values.dtype == np.uint8 and qa.zero_point.dtype == np.uint8
        low, high = 0, 2**bits - 1
    assert qa.values.shape == x.shape and qa.scale.dtype == np.float32
    assert qa.scale.shape == qa.zero_point.shape
    if x.size:
        assert low <= qa.values.min() and qa.values.max() <= high
    # min/max clipping covers every value: the error is at most half a step (plus float32 slack)
    xf = x.astype(np.float32)
    scale = _scale_of_each_element(qa)
    err = np.abs(xf.astype(np.float64) - qa.dequantize())
    assert (err <= scale.astype(np.float64) * (0.5 + 1e-5) + 1e-30).all()


def _scale_of_each_element(qa):
    """Each element's scale, by dequantizing unit codes."""
    ones = wqkernels.QuantizedArray(np.ones(qa.shape, np.int8), qa.scale, np.zeros_like(qa.scale, np.int8),
                                    qa.bits, qa.axis, qa.block_size)
    return ones.dequantize()


@given(quantize_cases(methods=("mse",)))
def test_mse_never_worse_than_minmax_and_agrees_with_reference(case):
    x, options = case
    qa = wqkernels.quantize(x, **options)
    minmax = wqkernels.quantize(x, **{**options, "method": "minmax"})
    reference = ref.quantize(x, **options)
    xf = x.astype(np.float64)
    for other in (minmax, reference):
        ours, theirs = _group_errors(xf, qa), _group_errors(xf, other)
        assert (ours <= theirs * (1 + 1e-4) + 1e-12).all()
    # the codes are those of the chosen scales, made by true division
    again = wqkernels.quantize(x, **{**options, "method": "minmax"}, scale=qa.scale, zero_point=qa.zero_point)
    assert_same_quantization(qa, again)


def _group_errors(xf, qa):
    """Squared error summed per group (as many entries as scales)."""
    err = (xf - qa.dequantize()) ** 2
    owner = _scale_index(qa)
    return np.bincount(owner.reshape(-1), err.reshape(-1), minlength=qa.scale.size)


def _scale_index(qa):
    """Each element's flat index into qa.scale."""
    index = np.arange(qa.scale.size, dtype=np.float32).reshape(qa.scale.shape)
    # scale 1 + index with zero point 0 dequantizes unit codes to the index + 1: exact below 2^24
    probe = wqkernels.QuantizedArray(np.ones(qa.shape, np.int8), index + 1, np.zeros(qa.scale.shape, np.int8),
                                     qa.bits, qa.axis, qa.block_size)
    return probe.dequantize().astype(np.int64) - 1


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", ["minmax", "mse", "percentile"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_of_options_on_weights(bits, granularity, method, symmetric):
    x = np.random.default_rng(bits).standard_normal((40, 33)).astype(np.float32) * 0.05
    options = dict(bits=bits, symmetric=symmetric, method=method, **granularity)
    qa = wqkernels.quantize(x, **options)
    assert_bit_equal(wqkernels.fake_quantize(x, **options), qa.dequantize())
    if method != "mse":
        assert_same_quantization(qa, ref.quantize(x, **options))
    else:
        assert _group_errors(x.astype(np.float64), qa).sum() <= _group_errors(
            x.astype(np.float64), wqkernels.quantize(x, **{**options, "method": "minmax"})).sum()


def test_semantics_by_hand():
    x = np.array([-1.0, -0.25, 0.0, 0.5, 1.0], np.float32)
    qa = wqkernels.quantize(x, 8)
    assert qa.scale == np.float32(1) / np.float32(127) and qa.scale.shape == ()
    np.testing.assert_array_equal(qa.values, [-127, -32, 0, 64, 127])  # 31.75 -> 32, 63.5 -> 64 (even)
    asym = wqkernels.quantize(x, 8, symmetric=False)
    assert asym.scale == np.float32(2) / np.float32(255)
    assert asym.zero_point == np.rint(np.float32(1) / asym.scale) == 127  # 127.49999
    assert asym.values.dtype == np.uint8 and asym.values[2] == asym.zero_point  # zero is exact
    fixed = wqkernels.quantize(np.array([0.3, -2.0, 5.0]), 4, frac_bits=2)
    np.testing.assert_array_equal(fixed.values, [1, -8, 7])  # round(0.3 * 4) = 1; saturates to [-8, 7]
    assert fixed.scale == np.float32(0.25)


def test_half_to_even_and_true_division():
    scale = np.float32(0.1)
    x = (np.arange(-50, 51, dtype=np.float32) + np.float32(0.5)) * scale  # near ties everywhere
    qa = wqkernels.quantize(x, 8, scale=scale)
    np.testing.assert_array_equal(qa.values, np.clip(np.rint(x / scale), -127, 127).astype(np.int8))
    ties = wqkernels.quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32), 8, scale=1.0)
    np.testing.assert_array_equal(ties.values, [0, 2, 2, 0, -2])


def test_block_layout_follows_onnx():
    x = np.arange(2 * 7 * 3, dtype=np.float32).reshape(2, 7, 3) - 20
    qa = wqkernels.quantize(x, 4, axis=1, block_size=3)
    assert qa.scale.shape == (2, 3, 3)  # ceil(7 / 3) blocks, the last one short
    block = x[1, 6:7, 2]
    assert qa.scale[1, 2, 2] == np.float32(np.abs(block).max()) / np.float32(7)
    per_axis = wqkernels.quantize(x, 4, axis=-1)
    assert per_axis.scale.shape == (3,) and per_axis.axis == 2


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 2)])
@pytest.mark.parametrize("granularity", [dict(), dict(axis=0), dict(axis=-1, block_size=2)])
def test_empty(shape, granularity):
    x = np.zeros(shape, np.float32)
    qa = wqkernels.quantize(x, 4, **granularity, method="mse")
    assert qa.values.shape == shape
    assert (qa.scale == 1).all()
    assert wqkernels.fake_quantize(x, 4, **granularity).shape == shape


def test_zero_dimensional_and_single_element():
    qa = wqkernels.quantize(np.float64(-3.0), 8)
    assert qa.values.shape == () and qa.values == -127 and qa.dequantize() == -3.0
    one = wqkernels.quantize(np.array([2.0]), 2, axis=0)
    assert one.values[0] == 1 and one.scale[0] == 2.0


def test_all_zeros_get_scale_one():
    qa = wqkernels.quantize(np.zeros((4, 5)), 4, axis=1, symmetric=False, method="mse")
    assert (qa.scale == 1).all() and not qa.values.any() and not qa.zero_point.any()


@pytest.mark.parametrize("value", [3e38, -3e38, 1e-30, 1e-40, 1e-45])
def test_extreme_magnitudes(value):
    x = np.array([value, -value / 3, 0.0], np.float32)
    for symmetric in (True, False):
        qa = wqkernels.quantize(x, 8, symmetric=symmetric)
        assert np.isfinite(qa.scale).all() and qa.scale > 0
        assert np.isfinite(qa.dequantize()).all()
        assert_same_quantization(qa, ref.quantize(x, 8, symmetric=symmetric))


def test_asymmetric_range_overflowing_float32():
    x = np.array([3e38, -3e38], np.float32)
    qa = wqkernels.quantize(x, 8, symmetric=False)
    assert np.isfinite(qa.scale) and np.isfinite(qa.dequantize()).all()
    np.testing.assert_allclose(qa.dequantize(), x, rtol=0.01)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("symmetric", [True, False])
def test_nan_and_inf_are_refused_with_count_and_place(bad, symmetric):
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = bad
    x[2, 3] = bad
    with pytest.raises(ValueError, match=r"x has 2 NaN or infinite values; the first is .* at index \(1, 2\)"):
        wqkernels.quantize(x, 8, symmetric=symmetric)
    with pytest.raises(ValueError, match="NaN or infinite"):
        wqkernels.fake_quantize(x, 4, axis=0, scale=np.ones(3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        wqkernels.quantize(x, 4, frac_bits=3)


def test_float64_overflowing_float32_is_refused():
    with pytest.raises(ValueError, match="infinite"):
        wqkernels.quantize(np.array([1e300]), 8)


@pytest.mark.parametrize("x", [np.arange(5), np.ones(3, bool), np.ones(2, np.complex64), ["a"]])
def test_non_float_input_is_a_type_error(x):
    with pytest.raises(TypeError, match="x must be an array of real floats"):
        wqkernels.quantize(x)
    with pytest.raises(TypeError):
        wqkernels.fake_quantize(x)


@pytest.mark.parametrize("bits", [1, 9, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=f"bits must be from 2 to 8, got {bits}"):
        wqkernels.quantize(np.ones(3), bits)


@pytest.mark.parametrize("bits", [4.0, "8", True])
def test_bits_of_wrong_type(bits):
    with pytest.raises(TypeError, match="bits must be an integer"):
        wqkernels.quantize(np.ones(3), bits)


def test_bad_axis_and_block_size():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        wqkernels.quantize(x, axis=2)
    with pytest.raises(ValueError, match="axis -3 is out of bounds"):
        wqkernels.quantize(x, axis=-3)
    with pytest.raises(ValueError, match="axis 0 is out of bounds for an array of dimension 0"):
        wqkernels.quantize(np.float32(1), axis=0)
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        wqkernels.quantize(x, axis=1, block_size=0)
    with pytest.raises(ValueError, match="block_size needs an axis"):
        wqkernels.quantize(x, block_size=4)
    with pytest.raises(ValueError, match="method must be one of"):
        wqkernels.quantize(x, method="kl")


def test_block_larger_than_axis_is_one_short_block():
    x = np.random.default_rng(0).standard_normal((5, 3))
    qa = wqkernels.quantize(x, 8, axis=0, block_size=100)
    assert qa.scale.shape == (1, 3)
    assert_bit_equal(qa.scale[0], wqkernels.quantize(x, 8, axis=1).scale)


def test_explicit_scale_and_zero_point():
    x = np.linspace(-1, 3, 12).reshape(3, 4)
    qa = wqkernels.quantize(x, 8, symmetric=False, axis=0, scale=[0.1, 0.2, 0.3], zero_point=[0, 10, 255])
    assert_same_quantization(qa, ref.quantize(x, 8, symmetric=False, axis=0, scale=[0.1, 0.2, 0.3],
                                              zero_point=[0, 10, 255]))
    with pytest.raises(ValueError, match=r"scale must be a scalar or of shape \(3,\)"):
        wqkernels.quantize(x, axis=0, scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="scale must be positive and finite"):
        wqkernels.quantize(x, scale=0.0)
    with pytest.raises(ValueError, match="zero_point must be integers in"):
        wqkernels.quantize(x, symmetric=False, scale=1.0, zero_point=256)
    with pytest.raises(ValueError, match="0 when symmetric"):
        wqkernels.quantize(x, scale=1.0, zero_point=1)
    with pytest.raises(ValueError, match="zero_point needs scale"):
        wqkernels.quantize(x, zero_point=0)
    with pytest.raises(ValueError, match="frac_bits sets the scale"):
        wqkernels.quantize(x, frac_bits=3, scale=1.0)


def test_percentile_clips_outliers():
    x = np.concatenate([np.linspace(-1, 1, 9999), [100.0]]).astype(np.float32)
    qa = wqkernels.quantize(x, 8, method="percentile", percentile=99.9)
    assert qa.scale < np.float32(100) / 127
    with pytest.raises(ValueError, match="percentile must be in"):
        wqkernels.quantize(x, method="percentile", percentile=0)


def test_out_argument_and_in_place():
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    expected = wqkernels.fake_quantize(x, 4, axis=1)
    y = x.copy()
    assert wqkernels.fake_quantize(y, 4, axis=1, out=y) is y
    assert_bit_equal(y, expected)
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32 array"):
        wqkernels.fake_quantize(x, out=np.empty((8, 16), np.float64))


def test_dequantize_validates():
    with pytest.raises(TypeError, match="qa must be a QuantizedArray"):
        wqkernels.dequantize(np.ones(3))
    qa = wqkernels.quantize(np.ones((2, 3)), axis=1)
    broken = wqkernels.QuantizedArray(qa.values, qa.scale[:2], qa.zero_point[:2], 8, 1)
    with pytest.raises(ValueError, match=r"qa.scale must be a scalar or of shape \(3,\)"):
        broken.dequantize()


def test_quantized_array_reports_itself():
    qa = wqkernels.quantize(np.ones((4, 6)), 4, axis=1, block_size=2)
    assert repr(qa) == "QuantizedArray(shape=(4, 6), bits=4, axis=1, block_size=2, dtype=int8)"
    assert qa.nbytes == 12 + qa.scale.nbytes + qa.zero_point.nbytes


def test_large_arrays_split_over_threads_agree_with_reference():
    x = np.random.default_rng(5).standard_normal((300, 1200)).astype(np.float32)  # > threading threshold
    for options in GRANULARITIES:
        assert_same_quantization(wqkernels.quantize(x, 4, **options), ref.quantize(x, 4, **options))


@pytest.mark.parametrize("offset", range(16))
def test_long_rows_at_every_offset_from_a_cache_line_agree_with_reference(offset):
    """Runs of 2048 elements and more split off their head so that their loads are aligned."""
    base = np.random.default_rng(offset).standard_normal(24 * 2100 + 16).astype(np.float32)
    x = base[offset:offset + 24 * 2100].reshape(24, 2100)  # a view: rows start at every offset
    assert x.base is base
    for options in (dict(), dict(axis=0), dict(axis=-1), dict(axis=0, block_size=2100)):
        for symmetric in (True, False):
            expected = ref.quantize(x, 8, symmetric=symmetric, **options)
            assert_same_quantization(wqkernels.quantize(x, 8, symmetric=symmetric, **options), expected)
            assert_bit_equal(wqkernels.fake_quantize(x, 8, symmetric=symmetric, **options),
                             ref.dequantize(expected), "fake_quantize")
    for bad in (np.nan, np.inf, -np.inf):  # seen in a block of rows, past its head
        y = x.copy()
        y[13, 1500] = bad
        for symmetric in (True, False):
            with pytest.raises(ValueError, match="13, 1500"):
                wqkernels.quantize(y, 8, symmetric=symmetric, axis=-1)


def test_kernels_are_thread_safe():
    """Concurrent calls give the results of serial ones (that they run concurrently: test_gil.py)."""
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((256, 512)).astype(np.float32) for _ in range(8)]
    expected = [wqkernels.fake_quantize(a, 4, axis=0, method="mse") for a in arrays]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda a: wqkernels.fake_quantize(a, 4, axis=0, method="mse"), arrays))
    for e, g in zip(expected, got):
        assert_bit_equal(e, g)


@given(st.integers(2, 8), st.booleans(), st.data())
def test_quantized_values_pack_round_trip(bits, symmetric, data):
    x = data.draw(float_arrays(min_dims=1))
    assume(x.size > 0)
    qa = wqkernels.quantize(x, bits, symmetric=symmetric)
    packed = wqkernels.pack_bits(qa.values, bits)
    assert packed.size == -(-x.size * bits // 8)
    back = wqkernels.unpack_bits(packed, bits, x.size, signed=symmetric)
    assert_bit_equal(back, qa.values.reshape(-1))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("method", ["minmax", "mse", "percentile"])
def test_empty_groups_get_scale_one_and_zero_point_zero(symmetric, method):
    x = np.zeros((3, 0), np.float16)
    for options in (dict(axis=0), dict(axis=0, block_size=2), dict()):
        qa = wqkernels.quantize(x, 2, symmetric=symmetric, method=method, **options)
        assert (qa.scale == 1).all() and not qa.zero_point.any()
        assert_same_quantization(qa, ref.quantize(x, 2, symmetric=symmetric, method=method, **options))


# ---- sum-preserving rounding ----------------------------------------------------------------

@given(quantize_cases(methods=("minmax", "mse", "percentile")))
def test_sum_rounding_matches_reference(case):
    x, options = case
    original = x.copy()
    qa = wqkernels.quantize(x, **options, rounding="sum")
    assert_same_quantization(qa, ref.quantize(x, **options, rounding="sum"))
    assert_bit_equal(wqkernels.fake_quantize(x, **options, rounding="sum"), qa.dequantize(), "fake_quantize")
    assert_bit_equal(x, original, "input")


@given(quantize_cases(methods=("minmax",)))
def test_sum_rounding_keeps_each_groups_sum_and_moves_codes_one_step(case):
    x, options = case
    nearest = wqkernels.quantize(x, **options)
    qa = wqkernels.quantize(x, **options, rounding="sum")
    # the same scales; every code is the nearest one or its neighbour
    assert_bit_equal(qa.scale, nearest.scale, "scale")
    assert_bit_equal(qa.zero_point, nearest.zero_point, "zero_point")
    assert (np.abs(qa.values.astype(np.int64) - nearest.values) <= 1).all()
    # each group's sum of codes reaches the nearest integer of the unrounded sum, so its
    # dequantized sum is within half a step of the float sum (+ float slack), unless codes at
    # the end of the grid had to move past it (a rounded zero point can leave the largest value
    # half a step beyond the top code)
    owner = _scale_index(qa).reshape(-1)
    scale = _scale_of_each_element(qa).reshape(-1).astype(np.float64)
    xf = x.astype(np.float32).astype(np.float64).reshape(-1)
    err = np.bincount(owner, qa.dequantize().astype(np.float64).reshape(-1) - xf, minlength=qa.scale.size)
    size = np.bincount(owner, minlength=qa.scale.size)
    step = np.asarray(qa.scale, np.float64).reshape(-1)
    bits, symmetric = options.get("bits", 8), options.get("symmetric", True)
    top = 2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1
    codes = qa.values.astype(np.int64).reshape(-1)
    at_top = np.bincount(owner, codes == top, minlength=qa.scale.size) > 0
    at_bottom = np.bincount(owner, codes == (-top if symmetric else 0), minlength=qa.scale.size) > 0
    free = ~((err < 0) & at_top | (err > 0) & at_bottom)  # codes below the sum could all move up
    assert (np.abs(err[free]) <= step[free] * (0.5 + 1e-4 * np.maximum(size[free], 1)) + 1e-30).all()
    assert (np.abs(xf - qa.dequantize().reshape(-1)) <= scale * (1 + 1e-5) + 1e-30).all()


def test_sum_rounding_moves_the_codes_nearest_a_boundary():
    x = np.array([0.4, 0.45, 0.4, 1.0, 0.2])  # scale 1: nearest codes 0 0 0 1 0, unrounded sum 2.45
    qa = wqkernels.quantize(x, bits=2, axis=0, block_size=5, rounding="sum")
    assert qa.values.tolist() == [0, 1, 0, 1, 0]  # one code up: the one with the largest remainder
    ties = wqkernels.quantize(np.array([0.4, 0.4, 0.4, 1.0]), bits=2, axis=0, block_size=4, rounding="sum")
    assert ties.values.tolist() == [1, 0, 0, 1]  # equal remainders: the earlier element


@pytest.mark.parametrize("options", [dict(axis=1), dict(axis=2), dict(axis=1, block_size=8),
                                     dict(axis=0, block_size=4), dict(), dict(axis=0, symmetric=True, method="mse")])
def test_sum_rounding_on_large_groups_agrees_with_reference(options):
    """Groups of hundreds to thousands of codes, many of them moved: the kernel's selection of
    the codes to move (no sort) picks those of the reference's stable sort."""
    x = np.random.default_rng(3).standard_normal((37, 29, 5)).astype(np.float32)
    x[:, 3] += 0.7  # a channel leaning to one side: many codes of it move
    options = {"symmetric": False, **options}
    qa = wqkernels.quantize(x, 3, rounding="sum", **options)
    assert_same_quantization(qa, ref.quantize(x, 3, rounding="sum", **options))
    assert (qa.values != wqkernels.quantize(x, 3, **options).values).any()


@pytest.mark.parametrize("symmetric", [True, False])
def test_sum_rounding_of_many_channels_side_by_side_agrees_with_reference(symmetric):
    """A Dense kernel's columns: tiles of channels across the last axis, one not full, and
    channels leaning to either end of the grid, where codes cannot move further."""
    x = np.random.default_rng(4).standard_normal((300, 150)).astype(np.float32)
    x[:, 7] += 2.5
    x[:, 140] -= 2.5
    opts = dict(bits=3, symmetric=symmetric, axis=-1, rounding="sum")
    assert_same_quantization(wqkernels.quantize(x, **opts), ref.quantize(x, **opts))


@pytest.mark.parametrize("symmetric", [True, False])
def test_sum_rounding_of_channels_whose_costs_are_not_spread_agrees_with_reference(symmetric):
    """Channels side by side keep, per channel, the members within a first bound of cost, sized
    for costs spread evenly: a channel whose every member is just above its code (every cost
    near 1: the bound takes none of the codes to move) and one whose members all sit near a
    half (all of them within it, more than its list holds) are settled on their own."""
    rng = np.random.default_rng(5)
    s = np.float32(0.1)
    x = rng.standard_normal((512, 130)).astype(np.float32)
    on_grid = np.rint(x / s) * s
    x[:, 3] = on_grid[:, 3] + s * np.float32(0.004)  # residuals ~0.004: k = 2, costs ~0.99
    x[:, 70] = on_grid[:, 70] + s * np.float32(0.45)  # residuals ~0.45: k ~ 230, costs ~0.1
    x[:, 129] = on_grid[:, 129] - s * np.float32(0.3)  # the tile that is not full, downwards
    zero_point = None if symmetric else np.full(130, 128, np.float32)
    opts = dict(bits=8, symmetric=symmetric, axis=-1, scale=np.full(130, s), zero_point=zero_point, rounding="sum")
    qa = wqkernels.quantize(x, **opts)
    assert_same_quantization(qa, ref.quantize(x, **opts))
    moved = (qa.values != wqkernels.quantize(x, **{**opts, "rounding": "nearest"}).values).sum(axis=0)
    assert moved[3] == 2 and moved[70] > 200 and moved[129] > 100


def test_sum_rounding_of_channels_with_quotients_beyond_float32_residuals_agrees_with_reference():
    """Channels side by side add up float32 residuals y - code while those are exact; quotients
    of 2^25 and 2^26, clamped to the top and bottom codes, leave residuals that float32 rounds
    (by one each, the three not cancelling): such a tile is settled from float64 residuals, and
    its codes still sum to the integer nearest the exact sum."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((300, 70)) * 20).astype(np.float32)
    x[:3, 5] = [-2.0 ** 26, 2.0 ** 25, 2.0 ** 25]  # residuals -(2^26 - 127), 2^25 - 127 twice: -127
    x[3:, 5] = np.rint(x[3:, 5]) + np.float32(0.25)  # and 297 residuals of 0.25 ...
    x[3:76, 5] -= np.float32(0.5)  # ... 73 of them -0.25: a sum of -89.25 (of float32 residuals -90.25)
    opts = dict(bits=8, axis=-1, scale=np.ones(70, np.float32), rounding="sum")
    qa = wqkernels.quantize(x, **opts)
    assert_same_quantization(qa, ref.quantize(x, **opts))
    codes = qa.values[:, 5].astype(np.int64)
    unrounded = np.sum(x[:, 5].astype(np.float64) - np.clip(np.rint(x[:, 5]), -127, 127))
    assert codes.sum() - np.clip(np.rint(x[:, 5]), -127, 127).sum() == np.rint(unrounded)


@pytest.mark.parametrize("column", [5, 69])
def test_sum_rounding_of_asymmetric_channels_with_quotients_beyond_float32_residuals_agrees_with_reference(column):
    """With zero points, channels side by side list the members within a bound by the float32
    residual y - (code - zero point), exact below 2^23: quotients of 2^25 and 2^26, clamped to
    the ends of the grid, leave residuals it rounds, which must neither be taken nor hide a
    cheaper member; the codes still sum to the integer nearest the exact sum."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((300, 70)) * 20).astype(np.float32)
    x[:3, column] = [-2.0 ** 26, 2.0 ** 25, 2.0 ** 25]  # residuals -(2^26 - 128), 2^25 - 127 twice
    x[3:, column] = np.rint(x[3:, column]) + np.float32(0.25)  # 297 residuals of 0.25 ...
    x[3:76, column] -= np.float32(0.5)  # ... 73 of them -0.25
    zero_point = np.full(70, 128, np.float32)
    opts = dict(bits=8, symmetric=False, axis=-1, scale=np.ones(70, np.float32), zero_point=zero_point,
                rounding="sum")
    qa = wqkernels.quantize(x, **opts)
    assert_same_quantization(qa, ref.quantize(x, **opts))
    nearest = np.clip(np.rint(x[:, column].astype(np.float64)) + 128, 0, 255)
    unrounded = np.sum((x[:, column].astype(np.float64) + 128) - nearest)
    assert qa.values[:, column].astype(np.int64).sum() - nearest.sum() == np.rint(unrounded)


def test_sum_rounding_of_asymmetric_channels_ranks_by_the_float64_residual():
    """Channels side by side list members by their float32 residual y - (code - zero point) but
    rank them by the reference's ((double)y + zero point) - code: a quotient of 2^-50 above its
    code has a float32 residual of 2^-50 and a float64 one of 0 (2^-50 + 128 rounds to 128), so
    it ties with the members on the grid, and the earlier of those move first.  The group's
    bound (50 moves of 150 members) takes costs up to 1, and lists those 60 members only."""
    x = np.zeros((150, 3), np.float32)
    x[0] = 199.25  # code 255 (clamped), residual 199.25 + 128 - 255 = 72.25
    x[31:61] = np.float32(2.0 ** -50)
    x[61:] = -0.25  # 89 residuals of -0.25: a sum of 50
    opts = dict(bits=8, symmetric=False, axis=-1, scale=np.ones(3, np.float32),
                zero_point=np.full(3, 128, np.float32), rounding="sum")
    qa = wqkernels.quantize(x, **opts)
    assert_same_quantization(qa, ref.quantize(x, **opts))
    assert (qa.values[1:51] == 129).all() and (qa.values[51:] == 128).all()


def test_sum_rounding_ties_in_a_long_group_go_to_the_earlier_elements():
    x = np.full(5000, 0.25, np.float32)
    # scale 2/3 and zero point 2 at 2 bits: -1.0 is 0.5 above its code (the cheapest move), 1.0 at
    # the top code, and 4998 equal remainders of 0.375 between
    x[0], x[-1] = -1.0, 1.0
    qa = wqkernels.quantize(x, 2, symmetric=False, rounding="sum")
    expected = ref.quantize(x, 2, symmetric=False, rounding="sum")
    assert_same_quantization(qa, expected)
    moved = np.flatnonzero(qa.values != wqkernels.quantize(x, 2, symmetric=False).values)
    assert moved.size > 1000 and (moved == np.arange(moved.size)).all()


@pytest.mark.parametrize("shape, options", [
    ((4,), dict(scale=np.float32(1e-45))),                    # per tensor: the reference's sum is NaN
    ((4, 3), dict(axis=-1, scale=np.full(3, np.float32(1e-45)))),  # per axis: its sum is infinite
    ((4, 3), dict(axis=0, scale=np.full(4, np.float32(1e-45)))),
    ((4, 3), dict(axis=0, block_size=2, scale=np.full((2, 3), np.float32(1e-45)))),
    ((4,), dict(frac_bits=126)),
    ((1000,), dict(method="percentile", percentile=50)),      # a percentile scale far below the outlier
])
def test_sum_rounding_refuses_quotients_overflowing_float32(shape, options):
    """Where some x / scale overflows float32 the reference raises (no integer is nearest an
    infinite or NaN sum); so do quantize, quantize_packed and fake_quantize, before any work."""
    x = np.zeros(shape, np.float32)
    x.flat[1], x.flat[2] = 3e38 if "scale" not in options else 1.0, -1e-38
    if options.get("method") == "percentile":
        x.flat[3:] = 1e-30
    with np.errstate(over="ignore"), pytest.raises((OverflowError, ValueError)):
        ref.quantize(x, 8, rounding="sum", **options)
    for fn in (wqkernels.quantize, wqkernels.quantize_packed, wqkernels.fake_quantize):
        with pytest.raises(OverflowError, match=r"rounding='sum' needs x / scale finite in float32, but "
                                                r"\|x\| / scale overflows in 1 group"):
            fn(x, 8, rounding="sum", **options)
        with pytest.raises(ValueError):
            fn(x, 8, rounding="sum", **options)
        fn(x, 8, **options)  # rounding to nearest clamps an infinite quotient: no error
    assert issubclass(wqkernels.quantization.QuotientOverflowError, ValueError)


def test_sum_rounding_with_the_largest_finite_quotients_agrees_with_reference():
    x = np.array([3.4e38, -3.4e38, 1.0, 0.5], np.float32)  # x / 1 at FLT_MAX: finite, not refused
    for options in (dict(scale=np.float32(1)), dict(frac_bits=0)):
        assert_same_quantization(wqkernels.quantize(x, 8, rounding="sum", **options),
                                 ref.quantize(x, 8, rounding="sum", **options))


@pytest.mark.parametrize("rounding", ["up", "", None, 1])
def test_unknown_rounding_is_refused(rounding):
    for fn in (wqkernels.quantize, wqkernels.fake_quantize):
        with pytest.raises(ValueError, match="rounding must be one of 'nearest', 'sum'"):
            fn(np.ones(4, np.float32), 4, rounding=rounding)


# ---- quantize_packed: the codes packed as they are made ------------------------------------

def assert_same_packed(pa, qa):
    """A PackedArray holds the codes of a QuantizedArray, bit-packed, with its scales."""
    assert_bit_equal(pa.packed, wqkernels.pack_bits(qa.values, qa.bits), "packed")
    assert_bit_equal(pa.scale, qa.scale, "scale")
    assert_bit_equal(pa.zero_point, qa.zero_point, "zero_point")
    assert (pa.shape, pa.signed, pa.bits, pa.axis, pa.block_size) == \
        (qa.shape, qa.values.dtype == np.int8, qa.bits, qa.axis, qa.block_size)


@st.composite
def packed_cases(draw):
    """Odd sizes and blocks that do not divide, any axis, every width, float16/32/64 in any layout."""
    x = draw(float_arrays(max_side=40))
    axis = draw(axes_for(x.ndim))
    block = None if axis is None else draw(st.one_of(st.none(), st.integers(1, 40)))
    options = dict(bits=draw(st.integers(2, 8)), symmetric=draw(st.booleans()), axis=axis, block_size=block,
                   method=draw(st.sampled_from(["minmax", "minmax", "mse"])),
                   rounding=draw(st.sampled_from(["nearest", "nearest", "sum"])))
    return x, options


@given(packed_cases())
def test_quantize_packed_is_pack_bits_of_quantize(case):
    x, options = case
    original = x.copy()
    pa = wqkernels.quantize_packed(x, **options)
    assert_same_packed(pa, ref.quantize(x, **options))
    expected = ref.quantize_packed(x, **options)
    assert_bit_equal(pa.packed, expected.packed, "reference packed")
    assert_same_quantization(pa.unpack(), wqkernels.quantize(x, **options))
    assert_bit_equal(pa.dequantize(), wqkernels.fake_quantize(x, **options), "dequantize")
    assert_bit_equal(x, original, "input")


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape, options", [
    ((300, 1203), dict(axis=0, block_size=32)), ((1203, 300), dict(axis=-1, block_size=32)),
    ((31, 77, 97), dict(axis=1, block_size=5)), ((2, 129, 1031), dict(axis=-1, block_size=7000)),
    ((513, 517), dict(axis=1)), ((517, 513), dict(axis=0)), ((3, 5, 13107),  dict(axis=1)), ((200003,), dict()),
])
def test_quantize_packed_over_threads_and_unaligned_spans(bits, shape, options):
    """Large enough to split over threads; spans of the stream that start and end inside bytes."""
    x = np.random.default_rng(bits).standard_normal(shape).astype(np.float32)
    for symmetric in (True, False):
        pa = wqkernels.quantize_packed(x, bits, symmetric=symmetric, **options)
        assert_same_packed(pa, wqkernels.quantize(x, bits, symmetric=symmetric, **options))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape, options", [
    ((300, 1203), dict(axis=0, block_size=32)), ((1203, 301), dict(axis=-1, block_size=32)),
    ((31, 77, 97), dict(axis=1, block_size=5)), ((5, 7, 9), dict(axis=-1, block_size=4)),
    ((513, 517), dict(axis=1)), ((517, 513), dict(axis=0)), ((3, 5, 13107), dict(axis=1)), ((200003,), dict()),
])
def test_quantize_packed_stream_need_not_be_zeroed(threads, bits, shape, options):
    """The kernel zeroes the bytes its pieces share before OR-ing codes into them and stores every
    other byte whole: whatever the stream held before, the result is pack_bits of the codes."""
    from wqkernels import _core
    from wqkernels.quantization import _grouping, _layout, _per_block
    x = np.random.default_rng(bits * 7 + len(shape)).standard_normal(shape).astype(np.float32)
    saved = _core.max_threads()
    try:
        _core.set_max_threads(threads)
        for symmetric, fill in ((True, 0xFF), (False, 0xA5)):
            qa = wqkernels.quantize(x, bits, symmetric=symmetric, **options)
            g = _grouping(x.shape, options.get("axis"), options.get("block_size"))
            stream = np.full(wqkernels.packed_size(x.size, bits), fill, np.uint8)
            s, zp = _per_block(qa.scale, g), _per_block(qa.zero_point, g)
            qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
            assert _core.quantize_packed_into(x.reshape(-1), stream, *_layout(g), s.copy(), zp.copy(),
                                              float(qmin), float(qmax), bits, False)
            assert_bit_equal(stream, wqkernels.pack_bits(qa.values, bits), "stream from given scales")
            if g.axis is not None:  # scales fit in the same visit
                stream[:] = fill
                s, zp = np.empty(g.count, np.float32), np.empty(g.count, np.float32)
                assert _core.quantize_packed_into(x.reshape(-1), stream, *_layout(g), s, zp,
                                                  float(qmin), float(qmax), bits, True)
                assert_bit_equal(stream, wqkernels.pack_bits(qa.values, bits), "stream with fit")
                assert_bit_equal(s, qa.scale.reshape(-1), "fit scale")
    finally:
        _core.set_max_threads(saved)


@pytest.mark.parametrize("shape, options", [
    ((300, 1203), dict(axis=0, block_size=32)), ((1203, 301), dict(axis=-1, block_size=32)),
    ((31, 77, 97), dict(axis=1, block_size=5)), ((2, 129, 1031), dict(axis=-1, block_size=7000)),
    ((513, 517), dict(axis=1)), ((517, 513), dict(axis=0)), ((300, 1031), dict(axis=0, block_size=64)),
])
@pytest.mark.parametrize("fit", [True, False])
def test_signed_codes_neither_read_nor_write_zero_points(shape, options, fit):
    """Signed codes have zero points 0: the kernels leave the zero-point array alone (a fresh
    array of zeros is never faulted in), whatever it holds, fitting scales or given them."""
    from wqkernels import _core
    from wqkernels.quantization import _grouping, _layout
    x = np.random.default_rng(len(shape) + fit).standard_normal(shape).astype(np.float32)
    qa = wqkernels.quantize(x, 4, **options)
    g = _grouping(x.shape, options.get("axis"), options.get("block_size"))
    given = qa.scale.reshape(-1).copy()
    for kernel, out, expected in (
            (_core.quantize_into, np.empty(x.size, np.uint8), qa.values.reshape(-1).view(np.uint8)),
            (_core.fake_quantize_into, np.empty(x.size, np.float32), ref.dequantize(qa).reshape(-1))):
        s = np.empty(g.count, np.float32) if fit else given.copy()
        zp = np.full(g.count, np.nan, np.float32)
        assert kernel(x.reshape(-1), out, *_layout(g), s, zp, -7.0, 7.0, fit)
        assert_bit_equal(out, expected, kernel.__name__)
        assert_bit_equal(s, given, "scale")
        assert np.isnan(zp).all(), f"{kernel.__name__} wrote zero points"
    stream = np.empty(wqkernels.packed_size(x.size, 4), np.uint8)
    s, zp = (np.empty(g.count, np.float32) if fit else given.copy()), np.full(g.count, np.nan, np.float32)
    assert _core.quantize_packed_into(x.reshape(-1), stream, *_layout(g), s, zp, -7.0, 7.0, 4, fit)
    assert_bit_equal(stream, wqkernels.pack_bits(qa.values, 4), "stream")
    assert np.isnan(zp).all(), "quantize_packed_into wrote zero points"


_STAT_VALUES = st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, 3.4028235e38, -3.4028235e38,
                                1.0, -1.0, 0.1, 7.0, 1e-30]) | st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(st.lists(st.tuples(_STAT_VALUES, _STAT_VALUES), min_size=1, max_size=70),
       st.sampled_from([1.0, 0.5, float(MSE_RATIOS[37]), float(MSE_RATIOS[63])]), st.booleans(),
       st.sampled_from([1.0, 3.0, 7.0, 15.0, 127.0, 255.0]))
def test_scales_from_stats_match_the_reference_rule(pairs, ratio, symmetric, top):
    """Scales and zero points of many groups at once (a vectorised loop) are the reference's:
    zeros, signed zeros, subnormals, and ranges whose width overflows float32."""
    from wqkernels import _core
    a = np.array([min(p) for p in pairs], np.float32)
    b = np.array([max(p) for p in pairs], np.float32)
    lo, hi = (np.zeros_like(a), np.maximum(np.abs(a), np.abs(b))) if symmetric else (a, b)
    s, zp = np.empty_like(lo), np.empty_like(lo)
    _core.scales_from_stats(lo, hi, ratio, symmetric, top, s, zp)
    rs, rzp = ref_quantization._params(lo, hi, ratio, symmetric, top)
    assert_bit_equal(s, rs.astype(np.float32), "scale")
    assert_bit_equal(zp + np.float32(0), rzp.astype(np.float32) + np.float32(0), "zero_point")  # -0 and 0: one code


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("extra", [0, 5])
@pytest.mark.parametrize("symmetric", [True, False])
def test_blocks_of_common_sizes_along_the_last_axis(block, extra, symmetric):
    """Runs of 16, 32, 64 and 128 have loops of their own; a short last block goes the general way."""
    x = np.random.default_rng(block + extra).standard_normal((37, 8 * block + extra)).astype(np.float32)
    x[3, :block] *= 50
    opts = dict(bits=4, symmetric=symmetric, axis=-1, block_size=block)
    qa = ref.quantize(x, **opts)
    assert_same_quantization(wqkernels.quantize(x, **opts), qa)
    assert_same_packed(wqkernels.quantize_packed(x, **opts), qa)
    assert_bit_equal(wqkernels.fake_quantize(x, **opts), ref.dequantize(qa), "fake_quantize")


def test_quantize_packed_on_strided_input_and_given_scales():
    x = np.random.default_rng(3).standard_normal((64, 96)).astype(np.float64)[::2, ::3]
    assert_same_packed(wqkernels.quantize_packed(x, 4, axis=1, block_size=8), ref.quantize(x, 4, axis=1, block_size=8))
    s = np.full((32, 4), 0.25, np.float32)
    assert_same_packed(wqkernels.quantize_packed(x, 3, axis=1, block_size=8, scale=s),
                       ref.quantize(x, 3, axis=1, block_size=8, scale=s))


def test_quantize_packed_refuses_what_quantize_refuses():
    x = np.ones((4, 6), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        wqkernels.quantize_packed(x, 4, axis=0, block_size=2)
    with pytest.raises(ValueError, match="bits"):
        wqkernels.quantize_packed(np.ones(3), 9)
    with pytest.raises(TypeError, match="x must be an array of real floats"):
        wqkernels.quantize_packed(np.arange(3), 4)


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_quantize_packed_empty_and_reports_itself(shape):
    pa = wqkernels.quantize_packed(np.zeros(shape, np.float32), 4, axis=-1, block_size=2)
    assert pa.packed.shape == (0,) and pa.shape == shape and pa.unpack().values.shape == shape
    pa = wqkernels.quantize_packed(np.ones((4, 6)), 4, axis=1, block_size=2)
    assert repr(pa) == "PackedArray(shape=(4, 6), bits=4, axis=1, block_size=2, signed, 12 bytes)"
    assert pa.nbytes == 12 + pa.scale.nbytes + pa.zero_point.nbytes


@pytest.mark.parametrize("shape, options", [((2048, 40), dict(axis=-1)), ((9000, 35), dict(axis=1)),
                                            ((1500, 3), dict(axis=0))])
def test_mse_symmetric_search_is_even_in_x(shape, options):
    """A symmetric grid's error is the same for x and -x: the search scores magnitudes."""
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    flip = np.where(np.random.default_rng(6).random(shape) < 0.5, np.float32(-1), np.float32(1))
    opts = dict(bits=3, method="mse", **options)
    assert_bit_equal(wqkernels.quantize(x, **opts).scale, wqkernels.quantize(x * flip, **opts).scale)


def test_mse_coarse_to_fine_tries_twelve_of_sixty_four():
    errors = np.random.default_rng(2).random((50, len(MSE_RATIOS)))
    tried = ref_quantization._tried(errors, np.ones(50, bool))
    assert (tried.sum(axis=1) <= 12).all() and tried[:, ::16].all()


@pytest.mark.parametrize("shape, options", [
    ((2048, 40), dict(axis=-1)),                    # channels side by side, each read once for all passes
    ((9000, 35), dict(axis=1)),                     # too many rows for one read: the passes copy rows again
    ((3, 1100, 37), dict(axis=1, block_size=1050)),  # blocks across a strided axis, one short
])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_coarse_to_fine_on_large_groups_agrees_with_reference(shape, options, symmetric):
    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    x[..., 3] *= 40  # an outlier channel: its best ratio is far from 1
    opts = dict(bits=4, symmetric=symmetric, method="mse", **options)
    qa = wqkernels.quantize(x, **opts)
    xf = x.astype(np.float64)
    for other in (ref.quantize(x, **opts), wqkernels.quantize(x, **{**opts, "method": "minmax"})):
        assert (_group_errors(xf, qa) <= _group_errors(xf, other) * (1 + 1e-4) + 1e-12).all()
    assert_same_quantization(qa, wqkernels.quantize(x, **{**opts, "method": "minmax"}, scale=qa.scale,
                                                    zero_point=qa.zero_point))


@pytest.mark.parametrize("magnitude", [1e-36, 1e-38, 1e-40, 1e-43, 1e38])
@pytest.mark.parametrize("granularity", [dict(), dict(axis=0), dict(axis=-1), dict(axis=0, block_size=100),
                                         dict(axis=-1, block_size=6)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_on_subnormal_and_huge_data_agrees_with_reference(magnitude, granularity, symmetric):
    """Where a candidate scale is subnormal (its inverse overflows to infinity) or errors near
    FLT_MAX overflow float32, the search scores the errors as the reference does."""
    rng = np.random.default_rng(int(abs(np.log10(magnitude))) + 100 * symmetric)
    x = (rng.uniform(-1, 1, (300, 24)) * magnitude * 10.0 ** rng.uniform(-0.5, 0.5, 24)).astype(np.float32)
    for bits in (2, 6):
        opts = dict(bits=bits, symmetric=symmetric, method="mse", **granularity)
        with np.errstate(over="ignore"):  # the reference's float32 errors of data near FLT_MAX
            expected = ref.quantize(x, **opts)
        assert_same_quantization(wqkernels.quantize(x, **opts), expected)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_coarse_to_fine_on_subnormal_channels_agrees_with_reference(symmetric):
    x = np.random.default_rng(12).standard_normal((1100, 40)).astype(np.float32) * np.float32(1e-39)
    x[:, 3] *= 100  # channels of normal and subnormal scales in one unit
    for granularity in (dict(axis=-1), dict(), dict(axis=0, block_size=1050)):
        opts = dict(bits=4, symmetric=symmetric, method="mse", **granularity)
        assert_same_quantization(wqkernels.quantize(x, **opts), ref.quantize(x, **opts))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_outputs_over_many_pages_match_reference(threads, symmetric):
    """Outputs of several 2 MiB pages, each first written at its end by the unit that enters it:
    lanes units of 16384 columns (and a short last one) over 130 rows, so a page's end lies in
    a unit's later rows or in another unit's columns."""
    x = np.random.default_rng(7).standard_normal((130, 20000), dtype=np.float32)
    before = wqkernels.max_threads()
    wqkernels.set_max_threads(threads)
    try:
        qa = wqkernels.quantize(x, 8, symmetric=symmetric, axis=-1)
        fq = wqkernels.fake_quantize(x, 8, symmetric=symmetric, axis=-1)
        dq = wqkernels.dequantize(qa)
    finally:
        wqkernels.set_max_threads(before)
    expected = ref.quantize(x, 8, symmetric=symmetric, axis=-1)
    assert_bit_equal(qa.values, expected.values, "codes")
    assert_bit_equal(fq, ref.dequantize(expected), "fake-quantized values")
    assert_bit_equal(dq, ref.dequantize(expected), "dequantized values")
