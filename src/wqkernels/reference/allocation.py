"""NumPy reference of prune_model / lamp_scores / bits_for_sqnr: sort, concatenate, mask."""
from __future__ import annotations

import math

import numpy as np

from .quantization import fake_quantize


def lamp_scores(x):
    """w^2 / (sum of v^2 over |v| >= |w|), the sums taken over the squares in ascending order."""
    x = np.asarray(x)
    magnitudes = np.abs(x).reshape(-1)
    ranked = np.sort(magnitudes)
    squares = ranked.astype(np.float64) ** 2
    suffix = np.cumsum(squares[::-1])[::-1]  # suffix[i] = sum of squares[i:]
    values, first = np.unique(squares, return_index=True)  # where each distinct value starts
    denominators = suffix[first][np.searchsorted(values, squares)]
    scores = np.zeros(squares.size)
    nonzero = squares > 0
    scores[nonzero] = squares[nonzero] / denominators[nonzero]
    return scores.astype(np.float32)[np.searchsorted(ranked, magnitudes)].reshape(x.shape)


def _zero_smallest(values, k):
    """Boolean mask of the k smallest values (ties: lower flat index first)."""
    order = np.argsort(values, kind="stable")
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def prune_model(tensors, sparsity, *, allocation="global", min_size=None):
    if min_size is None:
        min_size = 256 if allocation == "global" else 1024
    arrays = {name: np.asarray(x) for name, x in tensors.items()}
    total = sum(x.size for x in arrays.values())
    target = math.floor(sparsity * total)
    eligible = [n for n, x in arrays.items() if x.size >= max(min_size, 1)]
    fixed = sum(int(np.count_nonzero(x == 0)) for n, x in arrays.items() if n not in eligible)
    sizes = [arrays[n].size for n in eligible]
    count = min(max(target - fixed, 0), sum(sizes))
    out = {n: x.copy() for n, x in arrays.items()}
    if not eligible:
        return out
    if allocation == "global":
        # order: score, then tensor (dict order), then magnitude, then flat index;
        # zero scores (zeros, or underflow) are taken whatever the count
        scores = np.concatenate([lamp_scores(arrays[n]).reshape(-1) for n in eligible])
        tensor = np.concatenate([np.full(size, i) for i, size in enumerate(sizes)])
        magnitude = np.concatenate([np.abs(arrays[n]).astype(np.float64).reshape(-1) for n in eligible])
        index = np.concatenate([np.arange(size) for size in sizes])
        order = np.lexsort((index, magnitude, tensor, scores))
        mask = np.zeros(scores.size, dtype=bool)
        mask[order[:max(count, int(np.count_nonzero(scores == 0)))]] = True
        start = 0
        for n, size in zip(eligible, sizes):
            flat = out[n].reshape(-1)
            flat[mask[start:start + size]] = 0
            start += size
        return out
    # uniform: floor of the proportional share, leftovers to the largest remainders
    shares = [(count * size // sum(sizes), count * size % sum(sizes)) for size in sizes]
    counts = [q for q, _ in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-shares[i][1], i))
    for i in by_remainder[:count - sum(counts)]:
        counts[i] += 1
    for n, k in zip(eligible, counts):
        flat = out[n].reshape(-1)
        flat[_zero_smallest(np.abs(arrays[n]).reshape(-1), k)] = 0
    return out


def bits_for_sqnr(x, target_db, **quantize_options):
    x = np.asarray(x)
    xd = x.astype(np.float64)
    for bits in range(2, 9):
        symmetric = quantize_options.get("symmetric", True)
        options = {"method": "mse" if bits <= 3 and symmetric else "minmax", **quantize_options}
        x_hat = fake_quantize(x, bits, **options).astype(np.float64)
        noise = np.sum((xd - x_hat) ** 2)
        if noise == 0 or 10 * np.log10(np.sum(xd ** 2) / noise) >= target_db:
            return bits
    return 8
