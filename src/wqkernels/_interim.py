"""Stand-ins for the pruning kernels of issue 3 until they are merged (NumPy; removed then)."""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

ErrorStats = namedtuple("ErrorStats", "mse max_abs sqnr_db")


def _mask(values, k):
    order = np.argsort(values, kind="stable")
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def prune(x, sparsity):
    x = np.asarray(x)
    out = x.copy()
    out.reshape(-1)[_mask(np.abs(x).reshape(-1), math.floor(sparsity * x.size))] = 0
    return out


def prune_global(arrays, sparsity):
    keys = list(arrays)
    flat = np.concatenate([np.abs(np.asarray(arrays[k])).reshape(-1) for k in keys])
    mask = _mask(flat, math.floor(sparsity * flat.size))
    out, start = {}, 0
    for k in keys:
        x = np.asarray(arrays[k])
        y = x.copy()
        y.reshape(-1)[mask[start:start + x.size]] = 0
        out[k], start = y, start + x.size
    return out


def error(x, x_hat):
    x = np.asarray(x, dtype=np.float64)
    d = x - np.asarray(x_hat, dtype=np.float64)
    noise = float(np.sum(d * d))
    signal = float(np.sum(x * x))
    sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    return ErrorStats(noise / max(x.size, 1), float(np.abs(d).max()) if d.size else 0.0, sqnr)
