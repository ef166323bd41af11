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
