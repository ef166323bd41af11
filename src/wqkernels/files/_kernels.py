"""The kernel calls of the file layer, in one place: pruning, bit allocation, error, sparsity.

Pruning and allocation live in :mod:`wqkernels.pruning` and :mod:`wqkernels.allocation`
(issues 3 and 5); the file layer only calls them.
"""
from __future__ import annotations

import importlib
import warnings
from typing import NamedTuple

import numpy as np

from .roles import block_view


def _public(name: str):
    """A public wqkernels function, or None while the module providing it is not there."""
    package = importlib.import_module("wqkernels")
    return getattr(package, name, None)


class _ErrorStats(NamedTuple):
    mse: float
    max_abs: float
    sqnr_db: float


def error(x: np.ndarray, x_hat: np.ndarray):
    """Reconstruction error of `x_hat` against `x`: (mse, max_abs, sqnr_db)."""
    fn = _public("error")
    if fn is not None:
        return fn(x, x_hat)
    # until wqkernels.error lands (issue 3): the same definitions on float32 data; einsum
    # accumulates without BLAS (slowed on some machines) and without temporaries
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    d = np.subtract(np.asarray(x_hat, dtype=np.float32).reshape(-1), x)
    if not d.size:
        return _ErrorStats(0.0, 0.0, float("inf"))
    mse = float(np.einsum("i,i->", d, d)) / d.size
    signal = float(np.einsum("i,i->", x, x)) / d.size
    max_abs = float(max(d.max(), -d.min()))
    sqnr = float("inf") if mse == 0 else (10 * np.log10(signal / mse) if signal > 0 else float("-inf"))
    return _ErrorStats(mse, max_abs, float(sqnr))


def sparsity(x: np.ndarray) -> float:
    """Fraction of exact zeros."""
    fn = _public("sparsity")
    if fn is not None and np.asarray(x).dtype.kind == "f":
        return float(fn(x))
    x = np.asarray(x)
    return float(x.size - np.count_nonzero(x)) / x.size if x.size else 0.0


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
        prune_n_m = _require("prune_n_m", "N:M pruning")
        out = {}
        for e in entries:
            view, axis = block_view(e.shape, e.layer_class, e.role)
            x = np.ascontiguousarray(tensors[e.path], dtype=np.float32).reshape(view)
            out[e.path] = prune_n_m(x, n=n_m[0], m=n_m[1], axis=axis).reshape(e.shape)
        return out
    try:
        from ..allocation import prune_model
    except ImportError:
        prune_model = None
    options = {} if recipe.min_size is None else {"min_size": recipe.min_size}
    floats = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    if prune_model is not None:
        return prune_model(floats, recipe.sparsity, allocation=recipe.allocation, **options)
    if recipe.allocation == "global":
        return _require("prune_global", "global pruning")(floats, sparsity=recipe.sparsity)
    prune = _require("prune", "pruning")
    return {k: prune(v, sparsity=recipe.sparsity) for k, v in floats.items()}


def bits_for_sqnr(x: np.ndarray, recipe, options: dict) -> int:
    """The fewest bits (2..8) whose reconstruction reaches ``recipe.target_sqnr`` dB."""
    try:
        from ..allocation import bits_for_sqnr as chosen
    except ImportError:
        raise NotImplementedError("target_sqnr needs wqkernels.allocation (issue 5), not in this build") from None
    if recipe.method is not None:
        options = dict(options, method=recipe.method)
    return int(chosen(x, recipe.target_sqnr, **options))


def _require(name: str, what: str):
    fn = _public(name)
    if fn is None:
        raise NotImplementedError(f"{what} needs wqkernels.{name} (issue 3), not in this build")
    return fn
