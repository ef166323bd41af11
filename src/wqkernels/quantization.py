"""Quantize, dequantize and fake-quantize float arrays, per tensor, per axis or in blocks.

Semantics follow ONNX QuantizeLinear / DequantizeLinear (opset 21), in float32 arithmetic::

    q = saturate(round_half_to_even(x / scale) + zero_point)
    x_hat = (q - zero_point) * scale

with a true division, so codes are bit-identical to NumPy's ``np.rint(np.float32(x) / scale)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _core
from ._checks import as_float32, check_bits, check_int, is_real, nonfinite_error, normalize_axis
from ._schemes import DEFAULT_PERCENTILE, MSE_FULL_BELOW, MSE_RATIOS, MSE_STEPS, Groups, groups, scheme
from .packing import pack_bits, packed_size, unpack_bits

__all__ = ["QuantizedArray", "PackedArray", "quantize", "quantize_packed", "dequantize", "fake_quantize"]

METHODS = ("minmax", "mse", "percentile")
ROUNDINGS = ("nearest", "sum")
_CHUNK = 1 << 16  # per-tensor work is cut into blocks of this many elements


class QuotientOverflowError(OverflowError, ValueError):
    """rounding="sum" with a scale under which some x / scale overflows float32: the group's sum
    of x / scale is infinite or NaN and no integer is nearest it.  An OverflowError, as the
    infinity is, and a ValueError, as the scale is one that does not suit x."""


@dataclass(frozen=True, eq=False)
class QuantizedArray:
    """Integer codes with the scales and zero points that map them back to floats.

    Attributes
    ----------
    values : ndarray
        Codes with the original shape: int8 (symmetric, fixed point) or uint8 (asymmetric).
    scale : ndarray
        float32; shape ``()`` per tensor, ``(shape[axis],)`` per axis, or the blocked shape.
    zero_point : ndarray
        Same shape as `scale`, dtype of `values`.
    bits : int
        Bits per code, 2 to 8.
    axis, block_size : int or None
        The granularity: both None per tensor, `axis` alone per axis, both when blocked.
    """

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    axis: int | None = None
    block_size: int | None = None

    @property
    def shape(self) -> tuple:
        """Shape of the quantized array."""
        return self.values.shape

    @property
    def nbytes(self) -> int:
        """Bytes the codes take once bit-packed, plus the scales and zero points."""
        return -(-self.values.size * self.bits // 8) + self.scale.nbytes + self.zero_point.nbytes

    def dequantize(self, out: np.ndarray | None = None) -> np.ndarray:
        """``(values - zero_point) * scale`` as float32; see :func:`dequantize`."""
        return dequantize(self, out=out)

    def __repr__(self) -> str:
        where = "per-tensor" if self.axis is None else f"axis={self.axis}"
        if self.block_size is not None:
            where += f", block_size={self.block_size}"
        return f"QuantizedArray(shape={self.shape}, bits={self.bits}, {where}, dtype={self.values.dtype})"


@dataclass(frozen=True, eq=False)
class PackedArray:
    """Integer codes bit-packed (the stream of :func:`~wqkernels.pack_bits`), with the scales
    and zero points that map them back to floats.

    Attributes
    ----------
    packed : ndarray
        1-D uint8, ``ceil(size * bits / 8)`` bytes: the codes in C order, `bits` each, LSB first.
    shape : tuple
        Shape of the quantized array.
    signed : bool
        Whether the codes are signed (int8 once unpacked) or unsigned (uint8).
    scale, zero_point, bits, axis, block_size
        As in :class:`QuantizedArray`.
    """

    packed: np.ndarray
    shape: tuple
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    axis: int | None = None
    block_size: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes, the scales and the zero points."""
        return self.packed.nbytes + self.scale.nbytes + self.zero_point.nbytes

    def unpack(self) -> QuantizedArray:
        """The codes unpacked, as a :class:`QuantizedArray`."""
        values = unpack_bits(self.packed, self.bits, math.prod(self.shape), self.signed).reshape(self.shape)
        return QuantizedArray(values, self.scale, self.zero_point, self.bits, self.axis, self.block_size)

    def dequantize(self, out: np.ndarray | None = None) -> np.ndarray:
        """``(values - zero_point) * scale`` as float32; see :func:`dequantize`."""
        return dequantize(self.unpack(), out=out)

    def __repr__(self) -> str:
        where = "per-tensor" if self.axis is None else f"axis={self.axis}"
        if self.block_size is not None:
            where += f", block_size={self.block_size}"
        kind = "signed" if self.signed else "unsigned"
        return f"PackedArray(shape={self.shape}, bits={self.bits}, {where}, {kind}, {self.packed.nbytes} bytes)"


def quantize(x, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
             block_size: int | None = None, method: str = "minmax", frac_bits: int | None = None,
             scale=None, zero_point=None, percentile: float = DEFAULT_PERCENTILE,
             rounding: str = "nearest") -> QuantizedArray:
    """Quantize a float array to `bits`-bit integer codes.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
        Any shape and memory order; computed in float32; never modified.
    bits : int
        2 to 8.
    symmetric : bool
        True: codes in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, zero point 0, ``scale = amax / qmax``.
        False: codes in ``[0, 2^b - 1]`` over ``[min(x.min(), 0), max(x.max(), 0)]``.
    axis : int, optional
        One scale per index along `axis` (negative counts from the end); None: one scale.
    block_size : int, optional
        With `axis`: one scale per block of `block_size` consecutive elements along `axis`;
        the last block may be short.
    method : {"minmax", "mse", "percentile"}
        How each group's clipping range is chosen: its full range; the ratio of it in (0.3, 1]
        with the least squared reconstruction error among those tried, never worse than
        min/max (64 candidates; groups of 1024 elements or more search them coarse to fine,
        12 of them, see ``MSE_STEPS``); or the `percentile`-th percentile of ``|x|`` (of x's
        tails when asymmetric).
    frac_bits : int, optional
        Fixed point ``q = round(x * 2^frac_bits)``: scale ``2^-frac_bits``, zero point 0, the full
        signed range ``[-2^(b-1), 2^(b-1) - 1]``, saturating.
    scale, zero_point : array_like, optional
        Given explicitly (a scalar or the granularity's shape): no search.  `zero_point`
        defaults to 0 and must be 0 when symmetric.
    percentile : float
        For ``method="percentile"``, in (0, 100].
    rounding : {"nearest", "sum"}
        "nearest": round half to even.  "sum": sum-preserving rounding within each group (the
        tensor, a channel or a block): after rounding to nearest, the fewest codes are moved one
        step so that the group's codes add up to the integer nearest the sum of their unrounded
        values ``x / scale + zero_point`` (clipped codes included), so the dequantized group keeps
        the sum of x to within half a step whenever enough codes can move.  The codes moved are
        those nearest a rounding boundary (least added squared error); equal costs: the earlier
        element of the group (C order within the group).  The sum is accumulated in float64, in
        that order.  Keeps the mean output of a layer whose inputs share a mean, which rounding
        each weight alone does not.

    Returns
    -------
    QuantizedArray

    Raises
    ------
    TypeError
        x is not an array of real floats, or bits is not an integer.
    ValueError
        bits outside 2..8, a bad axis or block size, an unknown method or rounding, NaN or
        infinity in x (the message says how many and where the first is), or a bad scale or
        zero point.
    OverflowError
        With ``rounding="sum"``, a scale (given, ``2^-frac_bits`` or a percentile's) under which
        some ``x / scale`` overflows float32 (a QuotientOverflowError, which is a ValueError too).

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.array([0.4, 0.4, 0.4, 1.0])
    >>> wqkernels.quantize(x, bits=2, axis=0, block_size=4).values.ravel()  # sum of codes 1, of x / scale 2.2
    array([0, 0, 0, 1], dtype=int8)
    >>> wqkernels.quantize(x, bits=2, axis=0, block_size=4, rounding="sum").values.ravel()
    array([1, 0, 0, 1], dtype=int8)
    >>> qa = wqkernels.quantize(np.array([-1.0, 0.0, 0.5, 1.0]), bits=8)
    >>> qa.values
    array([-127,    0,   64,  127], dtype=int8)
    >>> bool(qa.scale == np.float32(1.0) / np.float32(127))
    True
    >>> bool(qa.dequantize()[2] == np.float32(64) * qa.scale)
    True
    """
    rounding = _check_rounding(rounding)  # before _prepare, whose scale search may be long
    xf, g, sch, s, zp, fit = _prepare(x, bits, symmetric, axis, block_size, method, frac_bits, scale,
                                      zero_point, percentile, rounding)
    codes = _codes(xf, g, sch, s, zp, fit, rounding)
    return QuantizedArray(codes, s.reshape(g.scale_shape), _zero_points(zp, g, sch), bits, g.axis, g.block)


def quantize_packed(x, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
                    block_size: int | None = None, method: str = "minmax", frac_bits: int | None = None,
                    scale=None, zero_point=None, percentile: float = DEFAULT_PERCENTILE,
                    rounding: str = "nearest") -> PackedArray:
    """Quantize to `bits`-bit codes and bit-pack them, in one pass over x.

    Takes the options of :func:`quantize`; the result's ``packed`` is, byte for byte,
    ``pack_bits(quantize(x, bits, ...).values, bits)``, and its scales and zero points are
    quantize's.  The codes are made a piece at a time in cache and packed straight into the
    stream, so the input is read once and no array of codes is written (with
    ``rounding="sum"``, which needs a group's codes whole before any is final, the codes are
    made first and then packed).

    Returns
    -------
    PackedArray

    Raises
    ------
    TypeError, ValueError
        As :func:`quantize`.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.array([[0.6, -1.0, 0.25, 1.0]])
    >>> pa = wqkernels.quantize_packed(x, bits=4, axis=1, block_size=32)
    >>> pa.packed  # codes 4, -7, 2, 7: the first of each two in the low nibble
    array([148, 114], dtype=uint8)
    >>> qa = wqkernels.quantize(x, bits=4, axis=1, block_size=32)
    >>> bool(np.array_equal(pa.packed, wqkernels.pack_bits(qa.values, 4)))
    True
    >>> pa.unpack().values
    array([[ 4, -7,  2,  7]], dtype=int8)
    """
    rounding = _check_rounding(rounding)
    xf, g, sch, s, zp, fit = _prepare(x, bits, symmetric, axis, block_size, method, frac_bits, scale,
                                      zero_point, percentile, rounding)
    bits = int(bits)  # checked by _prepare
    if rounding == "sum" or bits == 8:  # 8-bit codes are their own stream
        stream = _codes(xf, g, sch, s, zp, fit, rounding)
        stream = stream.reshape(-1).view(np.uint8) if bits == 8 else pack_bits(stream, bits)
    else:
        stream = np.empty(packed_size(xf.size, bits), dtype=np.uint8)
        if not _core.quantize_packed_into(xf.reshape(-1), stream, *_layout(g), _per_block(s, g),
                                          _per_block(zp, g), float(sch.qmin), float(sch.qmax), bits, fit):
            raise nonfinite_error(xf)
    return PackedArray(stream, g.shape, sch.dtype == np.int8, s.reshape(g.scale_shape), _zero_points(zp, g, sch),
                       bits, g.axis, g.block)


def fake_quantize(x, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
                  block_size: int | None = None, method: str = "minmax", frac_bits: int | None = None,
                  scale=None, zero_point=None, percentile: float = DEFAULT_PERCENTILE,
                  rounding: str = "nearest", out: np.ndarray | None = None) -> np.ndarray:
    """Quantize and dequantize in one pass: float32 values on the quantization grid.

    Takes the options of :func:`quantize` and returns, bit for bit,
    ``quantize(x, ...).dequantize()`` without materialising the codes.  `out`, if given, is a
    C-contiguous float32 array of x's shape to write into (it may be x itself).

    The result is float32 for every float input: a grid value (code times a float32 scale) is a
    float32 number, which float16 would round off the grid.  (The pruning functions keep x's
    dtype: a zero is exact in every type.)

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.linspace(-1, 1, 7, dtype=np.float32)
    >>> y = wqkernels.fake_quantize(x, bits=3)
    >>> bool(np.array_equal(y, wqkernels.quantize(x, bits=3).dequantize()))
    True
    >>> y * 3
    array([-3., -2., -1.,  0.,  1.,  2.,  3.], dtype=float32)
    """
    rounding = _check_rounding(rounding)
    xf, g, sch, s, zp, fit = _prepare(x, bits, symmetric, axis, block_size, method, frac_bits, scale,
                                      zero_point, percentile, rounding)
    y = _output(out, g.shape)
    if rounding == "sum":  # the codes are needed whole before any value is written
        # (dequantized as dequantize() does, without validating again what _prepare made)
        _dequantized(_codes(xf, g, sch, s, zp, fit, rounding), g, s, zp, y)
    elif not _core.fake_quantize_into(xf.reshape(-1), y.reshape(-1), *_layout(g), _per_block(s, g),
                                      _per_block(zp, g), float(sch.qmin), float(sch.qmax), fit):
        raise nonfinite_error(xf)
    return y


def dequantize(qa: QuantizedArray, out: np.ndarray | None = None) -> np.ndarray:
    """``(values - zero_point) * scale`` in float32, with the scale of each element's group.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> qa = wqkernels.quantize(np.array([[0.5, -2.0], [1.0, 4.0]]), bits=4, axis=1)
    >>> qa.values  # 0.5 / float32(1 / 7) is 3.4999998: code 3
    array([[ 3, -3],
           [ 7,  7]], dtype=int8)
    >>> wqkernels.dequantize(qa)
    array([[ 0.42857146, -1.7142859 ],
           [ 1.        ,  4.        ]], dtype=float32)
    """
    if not isinstance(qa, QuantizedArray):
        raise TypeError(f"qa must be a QuantizedArray, got {type(qa).__name__}")
    values = np.asarray(qa.values, order="C")
    if values.dtype not in (np.int8, np.uint8):
        raise TypeError(f"qa.values must be int8 or uint8, got dtype {values.dtype}")
    axis = None if qa.axis is None else normalize_axis(qa.axis, values.ndim, "qa.axis")
    block = None if qa.block_size is None else check_int(qa.block_size, "qa.block_size", 1)
    g = groups(values.shape, axis, block)
    s = _given(qa.scale, g, "qa.scale")
    zp = _given(qa.zero_point, g, "qa.zero_point")
    return _dequantized(values, g, s, zp, _output(out, g.shape))


def _dequantized(codes: np.ndarray, g: Groups, s: np.ndarray, zp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`y` holding ``(codes - zp) * s`` per group of `g`: codes, scales and zero points already checked."""
    _core.dequantize_into(codes.reshape(-1).view(np.uint8), y.reshape(-1), *_layout(g), _per_block(s, g),
                          _per_block(zp, g), codes.dtype == np.int8)
    return y


# ---- validation and orchestration ---------------------------------------------------------

def _prepare(x, bits, symmetric, axis, block_size, method, frac_bits, scale, zero_point, percentile,
             rounding="nearest"):
    """Validate everything, then find each group's scale and zero point (float32, flat).

    Returns (x as float32, grouping, scheme, scale, zero point, fit): with fit, the scales are
    left to the kernel, which finds them in the same visit of the data as the codes.
    """
    xf = as_float32(x)
    bits = check_bits(bits)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    g = _grouping(xf.shape, axis, block_size)
    fixed = frac_bits is not None
    if fixed:
        frac_bits = check_int(frac_bits, "frac_bits", -126, 126)
        if not symmetric or scale is not None or zero_point is not None or method != "minmax":
            raise ValueError("frac_bits sets the scale: it excludes symmetric=False, scale, "
                             "zero_point and method")
    sch = scheme(bits, bool(symmetric), fixed)
    if method == "percentile":
        if not is_real(percentile) or not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if scale is None and zero_point is not None:
        raise ValueError("zero_point needs scale: give both or neither")

    # (sum-preserving rounding makes its codes from scales found first; symmetric zero points,
    # all 0, are left to a fresh array of zeros that the kernel never touches)
    if method == "minmax" and scale is None and not fixed and g.axis is not None and xf.size and rounding != "sum":
        zp = np.zeros(g.count, np.float32) if sch.symmetric else np.empty(g.count, np.float32)
        return xf, g, sch, np.empty(g.count, np.float32), zp, True
    lo, hi = _stats(xf, g, asymmetric=not sch.symmetric)
    if rounding == "sum":  # max |x| per group, before a percentile replaces lo and hi
        magnitude = hi if sch.symmetric else np.maximum(-lo, hi)
    if fixed:
        s = np.full(g.count, np.float32(2.0 ** -frac_bits), dtype=np.float32)
        zp = np.zeros(g.count, dtype=np.float32)
    elif scale is not None:
        s = _given(scale, g, "scale")
        if not (np.isfinite(s).all() and (s > 0).all()):
            raise ValueError("scale must be positive and finite")
        zp = np.zeros(g.count, np.float32) if zero_point is None else _given(zero_point, g, "zero_point")
        on_grid = (zp >= sch.qmin) & (zp <= sch.qmax) & (np.floor(zp) == zp)  # integers in range (NaN: no)
        if not (on_grid.all() and (not sch.symmetric or not zp.any())):
            raise ValueError(f"zero_point must be integers in [{sch.qmin}, {sch.qmax}]"
                             + (" and 0 when symmetric" if sch.symmetric else ""))
    else:
        if method == "percentile":
            lo, hi = _percentile_stats(xf, g, percentile, asymmetric=not sch.symmetric)
        top = float(sch.qmax if sch.symmetric else sch.qmax - sch.qmin)
        s = np.empty(g.count, np.float32)
        zp = np.empty(g.count, np.float32)
        _core.scales_from_stats(lo, hi, 1.0, sch.symmetric, top, s, zp)
        if method == "mse" and xf.size:
            _core.search_scales(xf.reshape(-1), *_layout(g, search=True), lo, hi, MSE_RATIOS, MSE_STEPS,
                                MSE_FULL_BELOW, sch.symmetric, float(sch.qmin), float(sch.qmax), s, zp)
    if rounding == "sum":
        _check_quotients(magnitude, s, g)
    return xf, g, sch, s, zp, False


def _codes(xf: np.ndarray, g: Groups, sch, s: np.ndarray, zp: np.ndarray, fit: bool, rounding: str) -> np.ndarray:
    """The codes of x; with fit, s and zp are set to the min/max scales as they are made."""
    codes = np.empty(g.shape, dtype=sch.dtype)
    if rounding == "sum":  # (x is finite: _prepare's statistics say so)
        _core.quantize_sums_into(xf.reshape(-1), codes.reshape(-1).view(np.uint8), *_layout(g, search=True),
                                 np.ascontiguousarray(s, dtype=np.float32).reshape(-1),
                                 np.ascontiguousarray(zp, dtype=np.float32).reshape(-1), float(sch.qmin),
                                 float(sch.qmax))
    elif not _core.quantize_into(xf.reshape(-1), codes.reshape(-1).view(np.uint8), *_layout(g),
                                 _per_block(s, g), _per_block(zp, g), float(sch.qmin), float(sch.qmax), fit):
        raise nonfinite_error(xf)
    return codes


def _zero_points(zp: np.ndarray, g: Groups, sch) -> np.ndarray:
    """The zero points as codes, of the granularity's shape: symmetric ones are all 0 (an array
    of zeros made without reading zp, whose pages may never have been touched)."""
    if sch.symmetric:
        return np.zeros(g.scale_shape, sch.dtype)
    return zp.astype(sch.dtype).reshape(g.scale_shape)


def _check_quotients(magnitude: np.ndarray, s: np.ndarray, g: Groups) -> None:
    """Sum-preserving rounding adds up x / scale: refuse scales under which a quotient overflows
    float32 (division is monotonic, so the group's largest |x| tells).  Min/max and mse scales
    never do; given ones, 2^-frac_bits and percentiles can."""
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(np.isinf(magnitude / s))
    if bad.size:
        i = int(bad[0])
        where = "" if g.axis is None else f" (of {g.count}; the first at scale index " \
                                         f"{tuple(int(j) for j in np.unravel_index(i, g.scale_shape))})"
        raise QuotientOverflowError(
            f"rounding='sum' needs x / scale finite in float32, but |x| / scale overflows in {bad.size} "
            f"group{'s' if bad.size != 1 else ''}{where}: max |x| {float(magnitude[i]):.9g} over scale "
            f"{float(s[i]):.9g}")


def _check_rounding(rounding) -> str:
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(map(repr, ROUNDINGS))}, got {rounding!r}")
    return rounding


def _grouping(shape, axis, block_size) -> Groups:
    if axis is None:
        if block_size is not None:
            raise ValueError("block_size needs an axis to run along")
        return groups(shape, None, None)
    axis = normalize_axis(axis, len(shape))
    block = None if block_size is None else check_int(block_size, "block_size", 1)
    return groups(shape, axis, block)


def _layout(g: Groups, search: bool = False) -> tuple:
    """Kernel layout arguments (outer, n, inner, block, per_axis).

    Per-tensor work is cut into blocks of _CHUNK elements (threads), except in the search, which
    needs the whole tensor as one group.
    """
    if g.axis is None:
        return (1, g.n, 1, max(g.n, 1) if search else _CHUNK, False)
    if g.block is None:
        return (g.outer, g.n, g.inner, 1, True)
    return (g.outer, g.n, g.inner, g.block, False)


def _per_block(values: np.ndarray, g: Groups) -> np.ndarray:
    """Per-group float32 values (the array itself when it can be), repeated over the blocks of
    per-tensor work."""
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if g.axis is None and g.n > _CHUNK:
        return np.full(-(-g.n // _CHUNK), values[0], dtype=np.float32)
    return values


def _stats(xf: np.ndarray, g: Groups, asymmetric: bool):
    """Per group: (min, max) or (unused, max|x|) as float32; raises on NaN or infinity."""
    outer, n, inner, block, per_axis = _layout(g)
    count = g.count if g.axis is not None else max(-(-n // block), 1)
    lo = np.zeros(count, np.float32)
    hi = np.zeros(count, np.float32)
    if not _core.group_stats(xf.reshape(-1), outer, n, inner, block, per_axis, asymmetric, lo, hi):
        raise nonfinite_error(xf)
    if g.axis is None and count > 1:  # combine the per-block results of the flat array
        return lo.min(keepdims=True), hi.max(keepdims=True)
    return lo, hi


def _percentile_stats(xf: np.ndarray, g: Groups, p: float, asymmetric: bool):
    """Per group: the (100 - p)-th and p-th percentiles of x, or the p-th of |x|, as float32."""
    m = g.matrix(xf)
    if m.size == 0 or m.shape[1] == 0:
        return np.zeros(g.count, np.float32), np.zeros(g.count, np.float32)
    if asymmetric:
        lo = np.nanpercentile(m, 100 - p, axis=1)
        hi = np.nanpercentile(m, p, axis=1)
    else:
        lo = np.zeros(m.shape[0])
        hi = np.nanpercentile(np.abs(m), p, axis=1)
    return lo.astype(np.float32), hi.astype(np.float32)


def _given(value, g: Groups, name: str) -> np.ndarray:
    """An explicit scale or zero point: a scalar, or an array of the granularity's shape."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(g.scale_shape, arr)
    if arr.shape != g.scale_shape:
        raise ValueError(f"{name} must be a scalar or of shape {g.scale_shape}, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)


def _output(out, shape) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != tuple(shape) \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {tuple(shape)}")
    return out
