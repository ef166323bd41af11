"""pack_bits / unpack_bits: layout, round trips and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import wqkernels
import wqkernels.reference as ref
from helpers import assert_bit_equal


@st.composite
def codes(draw):
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    values = draw(hnp.arrays(np.int8 if signed else np.uint8, st.integers(0, 300), elements=st.integers(low, high)))
    return values, bits, signed


@given(codes())
def test_round_trip_and_reference(case):
    values, bits, signed = case
    packed = wqkernels.pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.shape == (-(-values.size * bits // 8),)
    assert packed.size == wqkernels.packed_size(values.size, bits)
    assert_bit_equal(packed, ref.pack_bits(values, bits))
    assert_bit_equal(wqkernels.unpack_bits(packed, bits, values.size, signed=signed), values)
    assert_bit_equal(ref.unpack_bits(packed, bits, values.size, signed=signed), values)


def test_nibble_order_and_sign_extension():
    packed = wqkernels.pack_bits(np.array([1, -2, 7], np.int8), 4)
    np.testing.assert_array_equal(packed, [0xE1, 0x07])  # element 0 in the low nibble of byte 0
    np.testing.assert_array_equal(wqkernels.unpack_bits(packed, 4, 3), [1, -2, 7])
    np.testing.assert_array_equal(wqkernels.unpack_bits(packed, 4, 3, signed=False), [1, 14, 7])
    three = wqkernels.pack_bits(np.array([5, 3, 7], np.uint8), 3)  # 101 011 111 -> 0b11_011_101, 0b1
    np.testing.assert_array_equal(three, [0b11011101, 0b1])


def test_large_streams_over_threads():
    rng = np.random.default_rng(0)
    for bits in (3, 4, 7):
        v = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=300_001).astype(np.int8)
        packed = wqkernels.pack_bits(v, bits)
        assert_bit_equal(packed, ref.pack_bits(v, bits))
        assert_bit_equal(wqkernels.unpack_bits(packed, bits, v.size), v)


def test_wider_integer_dtypes_and_shapes():
    v = np.array([[3, -4], [0, 1]], np.int64)
    packed = wqkernels.pack_bits(v, 3)
    np.testing.assert_array_equal(wqkernels.unpack_bits(packed, 3, 4), v.reshape(-1))


@pytest.mark.parametrize("values, bits", [([8], 4), ([-9], 4), ([2], 2), ([-3], 2), ([128], 8)])
def test_codes_that_do_not_fit(values, bits):
    with pytest.raises(ValueError, match=f"values must fit in {bits} bits"):
        wqkernels.pack_bits(np.array(values, np.int16), bits)
    if -128 <= values[0] <= 127:
        with pytest.raises(ValueError, match=f"values must fit in {bits} bits"):
            wqkernels.pack_bits(np.array(values, np.int8), bits)


def test_unsigned_codes_that_do_not_fit():
    with pytest.raises(ValueError, match="as unsigned codes"):
        wqkernels.pack_bits(np.array([0, 16], np.uint8), 4)


def test_bad_arguments():
    with pytest.raises(TypeError, match="values must be an array of integers"):
        wqkernels.pack_bits(np.ones(3), 4)
    with pytest.raises(ValueError, match="bits must be from 2 to 8"):
        wqkernels.pack_bits(np.ones(3, np.int8), 1)
    with pytest.raises(TypeError, match="packed must be a uint8 array"):
        wqkernels.unpack_bits(np.ones(3, np.int8), 4, 6)
    with pytest.raises(ValueError, match=r"packed must be 1-D with ceil\(5 \* 4 / 8\) = 3 bytes"):
        wqkernels.unpack_bits(np.ones(2, np.uint8), 4, 5)
    with pytest.raises(ValueError, match="count must be >= 0"):
        wqkernels.unpack_bits(np.ones(2, np.uint8), 4, -1)


def test_empty():
    assert wqkernels.pack_bits(np.array([], np.int8), 5).size == 0
    assert wqkernels.unpack_bits(np.array([], np.uint8), 5, 0).size == 0


@given(st.binary(min_size=2, max_size=9), st.lists(st.integers(0, 3), max_size=1500), st.integers(0, 1600))
def test_find_bytes_is_bytes_find(pattern, picks, start):
    """Data drawn from the pattern's own bytes and one other: starts that match at both ends
    but not whole are common, and runs of the scan hold several."""
    from wqkernels.packing import find_bytes
    alphabet = [pattern[0], pattern[-1], pattern[len(pattern) // 2], (pattern[0] + 1) % 256]
    data = bytes(alphabet[k] for k in picks)
    assert find_bytes(data, pattern, start) == data.find(pattern, start)


def test_find_bytes_at_every_offset_near_the_scan_runs():
    """A signature at each offset around the first runs of the scan, in data where its first and
    last bytes both match at many other starts, is found where bytes.find finds it."""
    from wqkernels.packing import find_bytes
    sig = b"GCOL\x01\x00\x00\x00"
    rng = np.random.default_rng(5)
    noise = bytes(rng.choice(np.frombuffer(b"G\x00C", np.uint8), 1100))
    assert find_bytes(noise, sig) == -1
    for at in range(0, 1090):
        data = noise[:at] + sig + noise[at + len(sig):]
        want = data.find(sig)
        assert find_bytes(data, sig) == want
        assert find_bytes(data, sig, want + 1) == data.find(sig, want + 1)
