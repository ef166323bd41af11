"""Keras 3's own int8 and int4 weight quantization, bit for bit, without Keras.

What ``model.quantize("int8" | "int4")`` computes (``keras.quantizers`` of Keras 3.15, its NumPy
path), on the host, in the weights' own float type:

- **absmax** (int8, and int4 per channel): per output channel, over the reduced (contracted)
  axes, ``scale = qmax / (max|w| + 1e-7)``, a *multiplier*; ``q = clip(round(w * scale), lo, qmax)``
  with ``(lo, qmax) = (-127, 127)`` for int8 and ``(-8, 7)`` for int4 (whose codes reach +-7).
  The weight Keras computes with is ``q / scale``.
- **grouped** (int4 sub-channel): groups of `block_size` rows along axis 0, zero-padded to whole
  groups (the padding joins the last group's min and max); per group and column
  ``scale = (max - min + 1e-7) / 15`` (a *divisor*), ``zero = clip(round(-min / scale) - 8, -8, 7)``,
  ``q = clip(round(w / scale) + zero, -8, 7)``; Keras computes with ``(q - zero) * scale``.
- **int4 packing**: two signed nibbles per int8 byte along the last axis, element 2j in the low
  nibble, 2j + 1 in the high one; an odd length is padded with a zero code.

Rounding is half to even throughout, in float32.  bfloat16 weights are computed as NumPy
computes on ``ml_dtypes.bfloat16`` arrays: their max and min are exact, ``max - min`` is rounded
to bfloat16, every other operation promotes to float32, and Keras stores the scales rounded to
bfloat16 (:func:`bfloat16_bits`), the codes being those of the float32 scales.  Work runs in
slices of about a million elements, so memory beyond the inputs and outputs stays small.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core
from ._checks import check_int, nonfinite_error
from .packing import pack_bits, unpack_bits
from .statistics import ErrorStats

__all__ = ["EPSILON", "INT8", "INT4", "absmax_quantize", "grouped_quantize", "pack_int4", "unpack_int4",
           "absmax_dequantize", "grouped_dequantize", "round_bfloat16", "bfloat16_bits", "bfloat16_values"]

#: Keras's ``backend.epsilon()``
EPSILON = 1e-7
#: (lowest code, highest code) of Keras's int8 and int4 absmax quantizers
INT8 = (-127, 127)
INT4 = (-8, 7)
#: elements per slice of work
_SLICE = 1 << 20


def round_bfloat16(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32.

    Examples
    --------
    >>> import numpy as np
    >>> round_bfloat16(np.array([1.0, 1.00390625, 1.01171875], np.float32))
    array([1.      , 1.      , 1.015625], dtype=float32)
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x) if out is None else out
    bits = x.view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    np.bitwise_and(rounded, np.uint32(0xFFFF0000), out=out.view(np.uint32))
    return out


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """The bfloat16 nearest to each float32 value, as its 16 bits (uint16)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.uint16)
    flat, dst = x.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, _SLICE):
        dst[i:i + _SLICE] = round_bfloat16(flat[i:i + _SLICE]).view(np.uint32) >> np.uint32(16)
    return out


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 numbers given as their 16 bits (uint16, or 2-byte opaque data) as float32."""
    bits = np.ascontiguousarray(bits).view(np.uint16)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def absmax_quantize(x: np.ndarray, axes, code_range=INT8, out: np.ndarray | None = None,
                    values: np.ndarray | None = None, *, measure: np.ndarray | None = None,
                    scale: np.ndarray | None = None):
    """Keras's ``abs_max_quantize``: int8 codes of `x` and the multiplier of each channel.

    Parameters
    ----------
    x : ndarray of float32
        C-contiguous (bfloat16 weights: their values as float32).
    axes : tuple of int
        The reduced axes: one scale per index of the other axes.
    code_range : (int, int)
        :data:`INT8` or :data:`INT4`.
    out : ndarray of int8, optional
        The codes, of x's shape.
    values : ndarray of float32, optional
        Receives ``codes / scale``, the weight Keras computes with (x's shape; may be x).
    measure : ndarray of float32, optional
        An array of x's shape (x itself, or x before it was pruned): the error of
        ``codes / scale`` against it is measured in the same pass (the values need not be kept).
    scale : ndarray of float32, optional
        The multipliers to use instead of Keras's (x's shape with the reduced axes of size 1;
        positive and finite): the codes of a grid chosen elsewhere, as Keras computes with it.

    Returns
    -------
    (codes, scale)
        int8 codes of x's shape; float32 scales of x's shape with the reduced axes of size 1.
    (codes, scale, (ErrorStats, float, float))
        With `measure`, also :func:`wqkernels.statistics.compare` of `measure` and
        ``codes / scale``: the error, the sparsity of `measure` and that of the values.

    Raises
    ------
    ValueError
        x holds NaN or infinity.

    Notes
    -----
    Two passes over x: the largest magnitude of every channel (which also finds NaN and
    infinity), then the codes (and values, and error) element by element.  Bit for bit :func:`wqkernels.reference.keras_schemes.absmax_quantize`.

    Examples
    --------
    >>> import numpy as np
    >>> codes, scale = absmax_quantize(np.array([[0.5, -2.0], [1.0, 4.0]], np.float32), axes=(0,))
    >>> codes
    array([[ 63, -64],
           [127, 127]], dtype=int8)
    >>> scale.shape
    (1, 2)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    axes = tuple(sorted({a % x.ndim for a in axes})) if x.ndim else ()
    low, high = code_range
    codes = np.empty(x.shape, np.int8) if out is None else out
    keep = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    given = None if scale is None else _given_scale(scale, keep, "scale")
    segments = _segments(x.shape, axes)
    if segments is None:  # more than three alternations of reduced and kept axes: no kernel layout
        from .reference.keras_schemes import absmax_quantize as numpy_absmax
        return numpy_absmax(x, axes, code_range, codes, values, measure=measure, scale=given)
    measured = x if measure is None else np.ascontiguousarray(measure, dtype=np.float32)
    if measured.shape != x.shape:
        raise ValueError(f"measure must have x's shape {x.shape}, got {measured.shape}")
    outer, n, inner, kept_middle = segments
    amax = np.zeros(math.prod(keep), np.float32)
    if x.size and not _core.group_stats(x.reshape(-1), outer, n, inner, 1 if kept_middle else n, kept_middle,
                                        False, np.empty_like(amax), amax):
        raise nonfinite_error(x)
    scale = (np.float32(high) / (amax + np.float32(EPSILON))).reshape(keep) if given is None else given
    # runs of the innermost axes (or of the middle ones), each with one scale for all its
    # elements or one per element; run r takes its scales from group (r // div) % mod on
    if inner > 1:
        run, vector, div, mod = (inner, False, 1, n) if kept_middle else (inner, True, n, outer)
    else:
        run, vector, div, mod = (n, True, 1, 1) if kept_middle else (n, False, 1, outer)
    sums, zeros = np.zeros(3, np.float64), np.zeros(2, np.int64)
    finite = _core.keras_absmax_codes(x.reshape(-1), measured.reshape(-1).view(np.uint32), codes.reshape(-1),
                                      _NO_VALUES if values is None else values.reshape(-1), max(run, 1), div,
                                      max(mod, 1), vector, scale.reshape(-1), low, high, sums, zeros)
    if measure is None:
        return codes, scale
    if not finite:
        raise nonfinite_error(measured, "measure")
    return codes, scale, _measured(sums, zeros, x.size)


def _given_scale(scale, shape: tuple, name: str) -> np.ndarray:
    """Given scales (multipliers or divisors) as float32 of `shape`, checked positive and finite."""
    a = np.asarray(scale)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be an array of numbers, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must be of shape {tuple(shape)}, got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    bad = ~(np.isfinite(a) & (a > 0))
    if bad.any():
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.ravel())), a.shape))
        raise ValueError(f"{name} must be positive and finite, got {a[first].item()!r} at index {first}")
    return a


def _measured(sums: np.ndarray, zeros: np.ndarray, size: int) -> tuple:
    """(ErrorStats, sparsity of the weight, sparsity of the values) from the kernels' error sums
    (sum of squares, of squared errors, largest error) and zero counts over `size` elements."""
    per = max(size, 1)
    return ErrorStats.of_sums(*(float(v) for v in sums), size), int(zeros[0]) / per, int(zeros[1]) / per


#: no values wanted
_NO_VALUES = np.zeros(0, np.float32)


def _segments(shape: tuple, axes: tuple) -> tuple | None:
    """x of `shape` as (outer, n, inner, kept_middle): three runs of axes, the middle one kept
    (then the outer and inner ones are reduced) or reduced (the others kept); None when the
    reduced and kept axes alternate more often.  Axes of size 1 belong to either."""
    runs = []  # [reduced, size] of consecutive axes alike
    for a, size in enumerate(shape):
        if size == 1:
            continue
        reduced = a in axes
        if runs and runs[-1][0] == reduced:
            runs[-1][1] *= size
        else:
            runs.append([reduced, size])
    if not runs:
        return 1, 1, 1, False
    if len(runs) > 3:
        return None
    if len(runs) == 3:
        return runs[0][1], runs[1][1], runs[2][1], not runs[1][0]
    if len(runs) == 2:  # (reduced, kept): the middle kept; (kept, reduced): the middle reduced
        return runs[0][1], runs[1][1], 1, not runs[1][0]
    return (1, runs[0][1], 1, False) if runs[0][0] else (runs[0][1], 1, 1, False)


def grouped_quantize(x: np.ndarray, block_size: int, axis: int = 0, bfloat16: bool = False,
                     values: np.ndarray | None = None, *, measure: np.ndarray | None = None,
                     scale: np.ndarray | None = None, zero: np.ndarray | None = None):
    """Keras's ``abs_max_quantize_grouped_with_zero_point`` (int4), along `axis` of a 2-D `x`.

    Groups of `block_size` consecutive indices along `axis` (0: Dense and EinsumDense kernels as
    (rows, columns); 1: Embedding matrices, grouped along their dimension as Keras does on the
    transpose), zero-padded to whole groups.  With `bfloat16` (x holds bfloat16 numbers), each
    group's ``max - min`` is rounded to bfloat16 as NumPy does on bfloat16 arrays.  `values`, if
    given (float32, x's shape; may be x), receives ``(codes - zero) * scale``.  `measure`, if
    given (x's shape: x itself, or x before it was pruned), has the error of those values
    against it measured slice by slice, as :func:`absmax_quantize` measures it.  Given `scale`
    and `zero` (of the shapes returned; positive finite scales, integer zero points in [-8, 7]),
    the codes are those of that grid instead of Keras's.

    Returns
    -------
    (codes, scale, zero)
        int8 codes in [-8, 7] of x's shape; float32 scales and int8 zero points of x's shape with
        `axis` of size ``ceil(n / block_size)``.
    (codes, scale, zero, (ErrorStats, float, float))
        With `measure`, also the error and the sparsities of `measure` and of the values.

    Examples
    --------
    >>> import numpy as np
    >>> codes, scale, zero = grouped_quantize(np.array([[-1.0], [2.0], [3.0]], np.float32), 2)
    >>> codes.ravel(), zero.ravel()
    (array([-8,  7,  7], dtype=int8), array([-3, -8], dtype=int8))
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    block = check_int(block_size, "block_size", 1)
    axis = check_int(axis, "axis", 0, 1)
    if measure is not None:
        measure = np.ascontiguousarray(measure, dtype=np.float32)
        if measure.shape != x.shape:
            raise ValueError(f"measure must have x's shape {x.shape}, got {measure.shape}")
    low, high = INT4
    rows, cols = x.shape
    n = x.shape[axis]
    groups = -(-n // block)
    codes = np.empty(x.shape, np.int8)
    grid_shape = (groups, cols) if axis == 0 else (rows, groups)
    given = scale is not None or zero is not None
    if given:
        if scale is None or zero is None:
            raise ValueError("scale and zero are given together")
        scale, zero = _given_scale(scale, grid_shape, "scale"), _given_zero(zero, grid_shape)
    else:
        scale, zero = np.empty(grid_shape, np.float32), np.empty(grid_shape, np.int8)
    error = _Error()
    # slices of whole rows (along axis 0: of whole groups of rows), read and written in place
    per = block * cols if axis == 0 else groups * block
    step = max(1, _SLICE // max(per, 1)) * (block if axis == 0 else 1)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        part = x[r0:r1]
        if axis == 0:  # (groups, block, columns), the last group padded with zero rows
            g0, g1 = r0 // block, -(-r1 // block)
            padded = part if (r1 - r0) == (g1 - g0) * block else np.zeros(((g1 - g0) * block, cols), np.float32)
            if padded is not part:
                padded[:r1 - r0] = part
            blocks, reduce, where = padded.reshape(g1 - g0, block, cols), 1, (slice(g0, g1), slice(None))
        else:  # (rows, groups, block), the last group padded with zero columns
            padded = part if n == groups * block else np.zeros((r1 - r0, groups * block), np.float32)
            if padded is not part:
                padded[:, :n] = part
            blocks, reduce, where = padded.reshape(r1 - r0, groups, block), 2, (slice(r0, r1), slice(None))
        if given:
            s = np.expand_dims(scale[where], reduce)
            z = np.expand_dims(zero[where], reduce).astype(np.float32)
        else:
            lo = blocks.min(axis=reduce, keepdims=True)
            hi = blocks.max(axis=reduce, keepdims=True)
            spread = hi - lo
            if bfloat16:
                round_bfloat16(spread, out=spread)
            s = (spread + np.float32(EPSILON)) / np.float32(high - low)
            z = np.clip(np.rint(-lo / s) + np.float32(low), low, high)
        q = blocks / s
        np.rint(q, out=q)
        q += z
        np.clip(q, low, high, out=q)
        flat = q.reshape(padded.shape)
        codes[r0:r1] = flat[:r1 - r0, :cols] if axis == 0 else flat[:, :n]
        if not given:
            scale[where] = s.squeeze(reduce)
            zero[where] = z.squeeze(reduce)
        if values is not None or measure is not None:
            q -= z
            q *= s
            got = flat[:r1 - r0, :cols] if axis == 0 else flat[:, :n]
            if values is not None:
                values[r0:r1] = got
            if measure is not None:
                error.add(measure[r0:r1], got)
    if measure is None:
        return codes, scale, zero
    return codes, scale, zero, error.result()


def _given_zero(zero, shape: tuple) -> np.ndarray:
    """Given int4 zero points as int8 of `shape`, checked to be integers in [-8, 7]."""
    a = np.asarray(zero)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"zero must be an array of integers, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"zero must be of shape {tuple(shape)}, got {a.shape}")
    bad = ~((a >= INT4[0]) & (a <= INT4[1]) & (a == np.round(a)))
    if bad.any():
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.ravel())), a.shape))
        raise ValueError(f"zero must be integers in [{INT4[0]}, {INT4[1]}], got {a[first].item()!r} at index {first}")
    return a.astype(np.int8)


class _Error:
    """The error of values against a weight, added up slice by slice (as statistics.compare)."""

    def __init__(self):
        self.sums, self.zeros, self.size = np.zeros(3, np.float64), np.zeros(2, np.int64), 0
        self._part, self._found = np.empty(3, np.float64), np.empty(2, np.int64)

    def add(self, a: np.ndarray, values: np.ndarray) -> None:
        """Add the error of `values` against `a` (finite, of one shape)."""
        if not a.size:
            return
        a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        _core.error_sums(a.view(np.uint32), values.view(np.uint32), self._part, self._found, _NO_EDGES, _NO_COUNTS)
        self.sums[:2] += self._part[:2]
        self.sums[2] = max(self.sums[2], self._part[2])
        self.zeros += self._found
        self.size += a.size

    def result(self) -> tuple:
        """(ErrorStats, sparsity of the weight, sparsity of the values)."""
        return _measured(self.sums, self.zeros, self.size)


#: no histogram edges and counts (statistics' error sums without histograms)
_NO_EDGES = np.zeros(0, np.float64)
_NO_COUNTS = np.zeros(0, np.int64)


def pack_int4(codes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Keras's ``pack_int4``: int4 codes (int8 in [-8, 7]) two per int8 byte along `axis`.

    Examples
    --------
    >>> import numpy as np
    >>> pack_int4(np.array([[-3, 7, 2], [-8, 1, 0]], np.int8))
    array([[125,   2],
           [ 24,   0]], dtype=int8)
    """
    codes = np.asarray(codes)
    if codes.dtype != np.int8:
        raise TypeError(f"codes must be int8, got dtype {codes.dtype}")
    moved = np.moveaxis(codes, axis, -1)
    n = moved.shape[-1]
    if n % 2 or not moved.flags.c_contiguous:
        padded = np.zeros(moved.shape[:-1] + (n + n % 2,), np.int8)
        padded[..., :n] = moved
        moved = padded
    packed = pack_bits(moved.reshape(-1), 4).view(np.int8).reshape(moved.shape[:-1] + (moved.shape[-1] // 2,))
    return np.ascontiguousarray(np.moveaxis(packed, -1, axis))


def unpack_int4(packed: np.ndarray, length: int, axis: int = -1) -> np.ndarray:
    """The int4 codes of :func:`pack_int4`'s output, `length` of them along `axis` (int8).

    Examples
    --------
    >>> import numpy as np
    >>> unpack_int4(np.array([[125, 2], [24, 0]], np.int8), 3)
    array([[-3,  7,  2],
           [-8,  1,  0]], dtype=int8)
    """
    packed = np.asarray(packed)
    if packed.dtype not in (np.int8, np.uint8):
        raise TypeError(f"packed must be int8, got dtype {packed.dtype}")
    moved = np.ascontiguousarray(np.moveaxis(packed, axis, -1))
    width = moved.shape[-1]
    length = check_int(length, "length", 0, 2 * width)
    if length < 2 * width - 1:
        raise ValueError(f"length must be {2 * width - 1} or {2 * width} for {width} packed bytes, got {length}")
    rows = math.prod(moved.shape[:-1])
    codes = unpack_bits(moved.reshape(-1).view(np.uint8), 4, 2 * moved.size).reshape(rows, 2 * width)
    codes = codes[:, :length].reshape(moved.shape[:-1] + (length,))
    return np.ascontiguousarray(np.moveaxis(codes, -1, axis))


def absmax_dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 weight Keras computes with from absmax codes: ``codes / scale`` (scale
    broadcast against the codes)."""
    return np.divide(np.asarray(codes, np.float32), np.asarray(scale, np.float32), dtype=np.float32)


def grouped_dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, block_size: int,
                       axis: int = 0) -> np.ndarray:
    """The float32 weight Keras computes with from grouped codes: ``(codes - zero) * scale`` with
    the group of each index along `axis` of the 2-D codes."""
    block = check_int(block_size, "block_size", 1)
    n = codes.shape[axis]
    groups = -(-n // block)
    for name, given in (("scale", scale), ("zero", zero)):
        shape = np.shape(given)
        if len(shape) != codes.ndim or shape[axis] != groups:
            raise ValueError(f"{name} must have {groups} groups of {block} along axis {axis} of codes of shape "
                             f"{codes.shape}, got shape {shape}")
    index = np.arange(n) // block
    s = np.take(np.asarray(scale, np.float32), index, axis=axis)
    z = np.take(np.asarray(zero, np.float32), index, axis=axis)
    return ((np.asarray(codes, np.float32) - z) * s).astype(np.float32, copy=False)
