"""NumPy reference of the pruning functions: stable argsorts on |x|, obviously exact."""
from __future__ import annotations

import math

import numpy as np


def _rounded(value, dtype):
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype=dtype)[()]


def _drop_smallest(flat: np.ndarray, k: int) -> np.ndarray:
    """flat with its k smallest |x| set to +0 (ties: lower index first)."""
    y = flat.copy()
    y[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
    return y


def prune(x, sparsity=None, *, threshold=None):
    x = np.asarray(x)
    if threshold is not None:
        return np.where(np.abs(x) < _rounded(threshold, x.dtype), x.dtype.type(0), x)
    k = math.floor(sparsity * x.size)
    return _drop_smallest(x.reshape(-1), k).reshape(x.shape)


def prune_n_m(x, n=2, m=4, axis=-1):
    x = np.asarray(x)
    moved = np.moveaxis(x, axis, -1)
    y = np.zeros_like(moved)
    length = moved.shape[-1]
    for start in range(0, length, m):  # one run position at a time, all lines at once
        run = moved[..., start:start + m]
        order = np.argsort(-np.abs(run), axis=-1, kind="stable")  # largest first, lower index first
        keep = order[..., :n]
        np.put_along_axis(y[..., start:start + m], keep, np.take_along_axis(run, keep, axis=-1), axis=-1)
    return np.moveaxis(y, -1, axis)


def prune_channels(x, sparsity, axis=-1, ord=2):
    x = np.asarray(x)
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], x.size // max(x.shape[axis], 1)).astype(np.float64)
    norms = (np.abs(moved) if ord == 1 else moved * moved).sum(axis=1)
    k = math.floor(sparsity * x.shape[axis])
    drop = np.argsort(norms, kind="stable")[:k]
    y = np.moveaxis(x.copy(), axis, 0)
    y[drop] = 0
    return np.moveaxis(y, 0, axis)


def prune_global(arrays, sparsity):
    common = np.result_type(*arrays.values()) if arrays else np.float32
    flats = [np.asarray(a, dtype=common).reshape(-1) for a in arrays.values()]
    total = sum(f.size for f in flats)
    pruned = _drop_smallest(np.concatenate(flats) if flats else np.zeros(0, common), math.floor(sparsity * total))
    out, start = {}, 0
    for (name, a), f in zip(arrays.items(), flats):
        a = np.asarray(a)
        out[name] = pruned[start:start + f.size].reshape(a.shape).astype(a.dtype)
        start += f.size
    return out


def clip(x, lo, hi):
    x = np.asarray(x)
    return np.clip(x, None if lo is None else _rounded(lo, x.dtype), None if hi is None else _rounded(hi, x.dtype))


def shrink(x, alpha):
    x = np.asarray(x)
    return np.sign(x) * np.maximum(np.abs(x) - _rounded(alpha, x.dtype), x.dtype.type(0))
