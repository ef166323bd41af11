"""The kernel calls of the file layer, in one place: pruning, bit allocation, error, sparsity.

Pruning and statistics live in :mod:`wqkernels.pruning` and :mod:`wqkernels.statistics` (issue
3), allocation across tensors in :mod:`wqkernels.allocation` (issue 5); the file layer only
calls them.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..allocation import bits_for_sqnr as allocation_bits_for_sqnr
from ..allocation import count_fraction, default_min_size
from ..allocation import prune_counts as allocation_prune_counts
from ..pruning import prune, prune_n_m
from ..statistics import compare, sparsity
from .roles import block_view

__all__ = ["compare", "sparsity", "prune_counts", "prune_one", "bits_for_sqnr"]


def prune_counts(read, entries: list, recipe, notes: list) -> dict:
    """How many weights of each entry magnitude pruning zeroes: `recipe.sparsity` of all of
    them, allocated by :func:`wqkernels.allocation.prune_counts`; ``read(entry)`` is called for
    one tensor at a time, so a model larger than memory can be pruned.  Empty for N:M patterns,
    which need no plan.

    Tensors under the recipe's min_size (default: the allocation's own) stay dense, but count
    in the total that `sparsity` is a fraction of.  Warnings (an unreachable sparsity) are
    appended to `notes` instead of being printed.
    """
    if recipe.n_m is not None:
        return {}
    tensors = {e.path: _OnRequest(read, e) for e in entries}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = allocation_prune_counts(tensors, recipe.sparsity, allocation=recipe.allocation,
                                         min_size=recipe.min_size)
    notes.extend(str(w.message) for w in caught)
    return counts


def prune_one(x: np.ndarray, e, recipe, counts: dict, out: np.ndarray) -> np.ndarray | None:
    """One float32 tensor pruned as the recipe says, written into `out` (which may be x); None
    when it stays dense.  N:M runs along the input axis, on tensors of at least min_size
    (default 1024) weights."""
    n_m = recipe.n_m
    if n_m is None:
        k = counts.get(e.path, 0)
        return prune(x, sparsity=count_fraction(k, x.size), out=out) if k else None
    least = default_min_size("n:m") if recipe.min_size is None else recipe.min_size
    if x.size < least:
        return None
    view, axis = block_view(e.shape, e.layer_class, e.role)
    return prune_n_m(x.reshape(view), n=n_m[0], m=n_m[1], axis=axis, out=out.reshape(view)).reshape(e.shape)


class _OnRequest:
    """A weight of the file, read when NumPy converts it (and not kept)."""

    def __init__(self, read, entry):
        self.read, self.entry, self.shape = read, entry, entry.shape

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.read(self.entry), dtype=dtype)


def bits_for_sqnr(x: np.ndarray, recipe, options: dict) -> int:
    """The fewest bits (2..8) whose reconstruction reaches ``recipe.target_sqnr`` dB."""
    if recipe.method is not None:
        options = dict(options, method=recipe.method)
    return int(allocation_bits_for_sqnr(x, recipe.target_sqnr, **options))
