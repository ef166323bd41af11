"""NumPy reference of quantize / dequantize / fake_quantize (float32 arithmetic throughout)."""
from __future__ import annotations

import numpy as np

from .._schemes import DEFAULT_PERCENTILE, MSE_FULL_BELOW, MSE_RATIOS, MSE_STEPS, groups, scheme
from ..quantization import PackedArray, QuantizedArray
from .packing import pack_bits

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


def _sum_preserving(x, q, s, zp, g, sch):
    """Sum-preserving rounding, one group at a time: move the codes nearest a rounding boundary
    one step until the group's codes sum to the nearest integer of sum(x / scale + zero point)."""
    positions = g.matrix(np.arange(x.size, dtype=np.float64).reshape(x.shape))  # NaN: padding
    xs, qs = x.reshape(-1), q.reshape(-1).copy()  # C order, whatever the layout of x and q
    ss = np.broadcast_to(_broadcast(s, g), (g.outer, g.n, g.inner)).reshape(-1)
    zs = np.broadcast_to(_broadcast(zp, g), (g.outer, g.n, g.inner)).reshape(-1)
    for row in positions:
        members = [int(i) for i in row if not np.isnan(i)]
        residual = {i: float(xs[i] / ss[i]) + float(zs[i]) - float(qs[i]) for i in members}
        total = 0.0
        for i in members:
            total += residual[i]
        k = int(np.rint(total))
        if k == 0:
            continue
        step = 1 if k > 0 else -1
        movable = [i for i in members if sch.qmin <= qs[i] + step <= sch.qmax]
        movable.sort(key=lambda i: 1.0 - 2.0 * step * residual[i])  # stable: earlier first on ties
        for i in movable[:abs(k)]:
            qs[i] += step
    q[...] = qs.reshape(q.shape)


def quantize(x, bits=8, *, symmetric=True, axis=None, block_size=None, method="minmax",
             frac_bits=None, scale=None, zero_point=None, percentile=DEFAULT_PERCENTILE, rounding="nearest"):
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
    if rounding == "sum":
        _sum_preserving(x, q, s, zp, g, sch)
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


def quantize_packed(x, bits=8, **options):
    qa = quantize(x, bits, **options)
    return PackedArray(pack_bits(qa.values, bits), qa.shape, qa.values.dtype == np.int8, qa.scale, qa.zero_point,
                       bits, qa.axis, qa.block_size)
