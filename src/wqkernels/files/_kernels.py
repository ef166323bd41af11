"""The kernel calls of the file layer, in one place: pruning, bit allocation, error, sparsity.

Pruning and statistics live in :mod:`wqkernels.pruning` and :mod:`wqkernels.statistics` (issue
3), allocation across tensors in :mod:`wqkernels.allocation` (issue 5); the file layer only
calls them.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..pruning import prune, prune_global, prune_n_m
from ..statistics import error, sparsity
from .roles import block_view

__all__ = ["error", "sparsity", "prune_tensors", "bits_for_sqnr"]


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
    n_m = recipe.n_m
    if n_m is not None:
        out = {}
        for e in entries:
            view, axis = block_view(e.shape, e.layer_class, e.role)
            x = np.ascontiguousarray(tensors[e.path], dtype=np.float32).reshape(view)
            out[e.path] = prune_n_m(x, n=n_m[0], m=n_m[1], axis=axis).reshape(e.shape)
        return out
    floats = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    try:
        from ..allocation import prune_model
    except ImportError:  # until issue 5's allocation module is merged: no min_size, plain criteria
        if recipe.allocation == "global":
            return prune_global(floats, sparsity=recipe.sparsity)
        return {k: prune(v, sparsity=recipe.sparsity) for k, v in floats.items()}
    options = {} if recipe.min_size is None else {"min_size": recipe.min_size}
    return prune_model(floats, recipe.sparsity, allocation=recipe.allocation, **options)


def bits_for_sqnr(x: np.ndarray, recipe, options: dict) -> int:
    """The fewest bits (2..8) whose reconstruction reaches ``recipe.target_sqnr`` dB."""
    try:
        from ..allocation import bits_for_sqnr as chosen
    except ImportError:
        raise NotImplementedError("target_sqnr needs wqkernels.allocation (issue 5), not in this build") from None
    if recipe.method is not None:
        options = dict(options, method=recipe.method)
    return int(chosen(x, recipe.target_sqnr, **options))
