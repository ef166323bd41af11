"""NumPy reference of Keras 3's absmax quantizer (:func:`wqkernels.keras_schemes.absmax_quantize`).

What ``keras.quantizers.abs_max_quantize`` computes on the host, in float32, written as NumPy
operations in slices of about a million elements.
"""
from __future__ import annotations

import math

import numpy as np

from ..keras_schemes import EPSILON, INT8
from .statistics import compare

#: elements per slice of work
_SLICE = 1 << 20


def absmax_quantize(x, axes, code_range=INT8, out=None, values=None, *, measure=None, scale=None):
    """Codes and multipliers of Keras's absmax quantizer (see the fast function), or the codes of
    the given multipliers `scale` (checked by the fast function); with `measure`, also the
    reference :func:`~wqkernels.reference.statistics.compare` of `measure` and ``codes / scale``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    axes = tuple(sorted({a % x.ndim for a in axes})) if x.ndim else ()
    low, high = code_range
    codes = np.empty(x.shape, np.int8) if out is None else out
    keep = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    amax = np.zeros(keep, np.float32)
    for rows, index in _slices(x.shape, 0 in axes):  # max|x| = max(max x, -min x), exactly
        if x[rows].size:
            top = x[rows].max(axis=axes, keepdims=True)
            np.maximum(top, -x[rows].min(axis=axes, keepdims=True), out=top)
            np.maximum(amax[index], top, out=amax[index])
    scale = np.float32(high) / (amax + np.float32(EPSILON)) if scale is None else np.asarray(scale, np.float32)
    work = None
    for rows, index in _slices(x.shape, 0 in axes):
        part = x[rows]
        if work is None or work.size < part.size:
            work = np.empty(part.size, np.float32)
        y = work[:part.size].reshape(part.shape)
        np.multiply(part, scale[index], out=y)
        np.rint(y, out=y)
        np.clip(y, low, high, out=y)
        codes[rows] = y
        if values is not None:
            np.divide(y, scale[index], out=values[rows])
    if measure is None:
        return codes, scale
    return codes, scale, compare(measure, np.divide(codes, scale, dtype=np.float32))


def _slices(shape: tuple, reduced_first: bool):
    """(rows, index of their scales) for slices of about _SLICE elements along axis 0: the
    scales of all rows when axis 0 is reduced, else those of the slice's rows."""
    if not shape:
        yield (), ()
        return
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, _SLICE // per_row)
    for start in range(0, shape[0], step):
        rows = slice(start, min(start + step, shape[0]))
        yield rows, slice(None) if reduced_first else rows
