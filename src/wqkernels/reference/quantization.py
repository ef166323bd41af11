"""NumPy reference of quantize / dequantize / fake_quantize (float32 arithmetic throughout)."""
from __future__ import annotations

import numpy as np

from .._schemes import DEFAULT_PERCENTILE, MSE_FULL_BELOW, MSE_RATIOS, MSE_STEPS, groups, scheme
from ..quantization import QuantizedArray

f32 = np.float32


def _grouped(x, g):
    """x as (groups, elements) float32 with NaN padding of short blocks."""
    return g.matrix(x).astype(f32)


def _params(lo, hi, ratio, symmetric, top):
    """Scale and zero point per group from (min, max) or (-, max|x|), clipped to ratio."""
    ratio = f32(ratio)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if symmetric:
            s = (ratio * hi) / f32(top)
            return np.where(s > 0, s, f32(1)).astype(f32), np.zeros_like(s)
        a = ratio * np.minimum(lo, f32(0))
        b = ratio * np.maximum(hi, f32(0))
        s = (b - a) / f32(top)
        s = np.where(np.isinf(s), b / f32(top) - a / f32(top), s)
        s = np.where(s > 0, s, f32(1)).astype(f32)
        zp = np.rint(np.clip(-a / s, f32(0), f32(top))).astype(f32)
    return s, zp


def _codes(x, s, zp, qmin, qmax):
    return np.clip(np.rint(x / s) + zp, f32(qmin), f32(qmax))


def _scales(x, g, sch, method, percentile):
    m = _grouped(x, g)
    top = sch.qmax if sch.symmetric else sch.qmax - sch.qmin
    if m.shape[1] == 0:
        return np.ones(m.shape[0], f32), np.zeros(m.shape[0], f32)
    if method == "percentile":
        md = m.astype(np.float64)
        if sch.symmetric:
            hi, lo = np.nanpercentile(np.abs(md), percentile, axis=1).astype(f32), None
        else:
            lo = np.nanpercentile(md, 100 - percentile, axis=1).astype(f32)
            hi = np.nanpercentile(md, percentile, axis=1).astype(f32)
    elif sch.symmetric:
        lo, hi = None, np.nanmax(np.abs(m), axis=1)
    else:
        lo, hi = np.nanmin(m, axis=1), np.nanmax(m, axis=1)
    s, zp = _params(lo, hi, 1, sch.symmetric, top)
    if method == "mse":
        errors = np.stack([  # (groups, candidates): the squared error of each candidate
            np.nansum(((_codes(m, cs[:, None], czp[:, None], sch.qmin, sch.qmax) - czp[:, None]) * cs[:, None]
                       - m).astype(np.float64) ** 2, axis=1)
            for cs, czp in (_params(lo, hi, ratio, sch.symmetric, top) for ratio in MSE_RATIOS)], axis=1)
        tried = _tried(errors, np.sum(~np.isnan(m), axis=1) >= MSE_FULL_BELOW)
        best = np.argmin(np.where(tried, errors, np.inf), axis=1)  # the first with the least error
        s, zp = _params(lo, hi, MSE_RATIOS[best], sch.symmetric, top)
    return s.astype(f32), zp.astype(f32)


def _tried(errors, coarse):
    """Which candidates each group tries: all; or, where `coarse`, every MSE_STEPS[0]-th, then
    for each later step those that many apart around the best so far, within the step before."""
    index = np.arange(errors.shape[1])
    tried = np.broadcast_to(index % MSE_STEPS[0] == 0, errors.shape)
    for before, step in zip(MSE_STEPS[:-1], MSE_STEPS[1:]):
        offset = index - np.argmin(np.where(tried, errors, np.inf), axis=1)[:, None]
        tried = tried | ((offset % step == 0) & (np.abs(offset) < before))
    return np.where(coarse[:, None], tried, True)


def _broadcast(v, g):
    """Per-group values to x's (outer, n, inner) shape."""
    if g.axis is None:
        return v.reshape(1, 1, 1)
    if g.block is None:
        return v.reshape(1, g.n, 1)
    nb = -(-g.n // g.block)
    return np.repeat(v.reshape(g.outer, nb, g.inner), g.block, axis=1)[:, : g.n]


def quantize(x, bits=8, *, symmetric=True, axis=None, block_size=None, method="minmax",
             frac_bits=None, scale=None, zero_point=None, percentile=DEFAULT_PERCENTILE):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be an array of real floats, got dtype {x.dtype}")
    x = x.astype(f32)
    if not np.isfinite(x).all():
        raise ValueError("x has NaN or infinite values")
    if axis is not None:
        axis %= x.ndim
    g = groups(x.shape, axis, block_size)
    sch = scheme(bits, symmetric, frac_bits is not None)
    if frac_bits is not None:
        s = np.full(g.count, f32(2.0 ** -frac_bits))
        zp = np.zeros(g.count, f32)
    elif scale is not None:
        s = np.broadcast_to(np.asarray(scale, f32), g.scale_shape).reshape(-1)
        zp = np.broadcast_to(np.asarray(0 if zero_point is None else zero_point, f32), g.scale_shape).reshape(-1)
    else:
        s, zp = _scales(x, g, sch, method, percentile)
    x3 = x.reshape(g.outer, g.n, g.inner)
    q = _codes(x3, _broadcast(s, g), _broadcast(zp, g), sch.qmin, sch.qmax)
    return QuantizedArray(q.astype(sch.dtype).reshape(x.shape), s.reshape(g.scale_shape).astype(f32),
                          zp.astype(sch.dtype).reshape(g.scale_shape), bits, axis, block_size)


def dequantize(qa):
    g = groups(qa.values.shape, None if qa.axis is None else qa.axis % qa.values.ndim, qa.block_size)
    q = qa.values.astype(f32).reshape(g.outer, g.n, g.inner)
    s = _broadcast(np.asarray(qa.scale, f32).reshape(-1), g)
    zp = _broadcast(np.asarray(qa.zero_point, f32).reshape(-1), g)
    return ((q - zp) * s).astype(f32).reshape(qa.values.shape)


def fake_quantize(x, bits=8, **options):
    return dequantize(quantize(x, bits, **options))
