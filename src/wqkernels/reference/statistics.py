"""NumPy reference of the statistics (float64, NumPy's own summation order)."""
from __future__ import annotations

import math

import numpy as np

from ..statistics import ErrorStats


def sparsity(x):
    x = np.asarray(x)
    return float(np.count_nonzero(x == 0) / x.size) if x.size else 0.0


def error(x, x_hat):
    x = np.asarray(x, dtype=np.float64)
    d = x - np.asarray(x_hat, dtype=np.float64)
    if x.size == 0:
        return ErrorStats(0.0, 0.0, math.inf)
    signal, noise = float(np.sum(x * x)), float(np.sum(d * d))
    sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    return ErrorStats(noise / x.size, float(np.max(np.abs(d))), sqnr)


def compare(x, x_hat, bins=0, range=None):
    """error, both sparsities and (with bins) numpy.histogram of each, clipped to the range."""
    result = error(x, x_hat), sparsity(x), sparsity(x_hat)
    if not bins:
        return result
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, x_hat))
    if range is None:
        range = (0.0, 1.0) if a.size == 0 else (min(a.min(), b.min()), max(a.max(), b.max()))
    low, high = (float(v) + 0.0 for v in range)
    lo, hi = low, high
    for wide in (0.5, 0.5 * max(abs(low), abs(high))):  # a range too narrow for the bins, widened
        if not (np.diff(np.linspace(lo, hi, bins + 1)) > 0).all():
            lo, hi = low - wide, high + wide
    counts = np.stack([np.histogram(np.clip(v, lo, hi), bins, (lo, hi))[0] for v in (a, b)]).astype(np.int64)
    return (*result, counts, np.linspace(lo, hi, bins + 1))


def histogram(x, bins, range=None):
    """numpy.histogram of x in float64, clipped to the range (default: x's smallest to largest)."""
    _, _, _, counts, edges = compare(x, x, bins, range)
    return counts[0], edges
