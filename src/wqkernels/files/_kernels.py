"""The kernel calls of the file layer, in one place: pruning, bit allocation, error, sparsity.

Pruning and statistics live in :mod:`wqkernels.pruning` and :mod:`wqkernels.statistics` (issue
3), allocation across tensors in :mod:`wqkernels.allocation` (issue 5); the file layer only
calls them.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..allocation import bits_for_sqnr as allocation_bits_for_sqnr
from ..allocation import default_min_size, prune_model
from ..pruning import prune_n_m
from ..statistics import compare, sparsity
from .roles import block_view

__all__ = ["compare", "sparsity", "prune_tensors", "bits_for_sqnr"]


def prune_tensors(tensors: dict, entries: list, recipe, notes: list) -> dict:
    """Prune the selected tensors as the recipe says: N:M along the input axis, or `sparsity` of
    all of them together, allocated by ``wqkernels.allocation.prune_model``.

    Warnings (an unreachable sparsity) are appended to `notes` instead of being printed.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _prune(tensors, entries, recipe)
    notes.extend(str(w.message) for w in caught)
    return out


def _prune(tensors: dict, entries: list, recipe) -> dict:
    """Tensors under the recipe's min_size (default: the allocation's own) stay dense, but count
    in the total that `sparsity` is a fraction of."""
    n_m = recipe.n_m
    if n_m is not None:
        least = default_min_size("n:m") if recipe.min_size is None else recipe.min_size
        out = {}
        for e in entries:
            if math.prod(e.shape) < least:
                continue
            view, axis = block_view(e.shape, e.layer_class, e.role)
            x = np.ascontiguousarray(tensors[e.path], dtype=np.float32).reshape(view)
            out[e.path] = prune_n_m(x, n=n_m[0], m=n_m[1], axis=axis).reshape(e.shape)
        return out
    floats = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    return prune_model(floats, recipe.sparsity, allocation=recipe.allocation, min_size=recipe.min_size)


def bits_for_sqnr(x: np.ndarray, recipe, options: dict) -> int:
    """The fewest bits (2..8) whose reconstruction reaches ``recipe.target_sqnr`` dB."""
    if recipe.method is not None:
        options = dict(options, method=recipe.method)
    return int(allocation_bits_for_sqnr(x, recipe.target_sqnr, **options))
