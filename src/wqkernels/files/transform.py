"""One weight's transformation: pruned, then quantized, in one float32 buffer beside the original.

The writer of the storage decides what to keep of a quantized weight: its values on the grid
(:meth:`Quantization.values`) or its integer codes (:meth:`Quantization.codes`), or both from
the same scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._checks import count_and_first
from ..allocation import bits_for_sqnr, count_fraction, default_min_size
from ..pruning import prune, prune_n_m
from ..quantization import PackedArray, QuantizedArray, fake_quantize, quantize, quantize_packed
from ..statistics import ErrorStats, compare
from .buffers import Buffers
from .layouts import Entry
from .recipe import Recipe
from .report import Histogram
from .roles import block_view

__all__ = ["Grid", "Quantization", "Measured", "prepare", "statistics"]


class Grid(NamedTuple):
    """A weight's quantization grid given in advance (by a calibration): the bits, and the scale
    and zero point :func:`wqkernels.quantize` takes for the recipe's granularity of the weight."""

    bits: int
    scale: np.ndarray
    zero_point: np.ndarray


class Measured(NamedTuple):
    """A stored weight's error against the weight as read, measured by the writer as it made
    the stored values (which it then need not keep): :func:`~wqkernels.statistics.compare`'s."""

    error: ErrorStats
    before: float   # sparsity of the weight as read
    after: float    # sparsity of the stored values


@dataclass(frozen=True)
class Quantization:
    """How one weight is quantized: viewed as `view`, to `bits` with `method` and `options`."""

    view: tuple
    bits: int
    method: str
    options: dict

    def codes(self, x: np.ndarray) -> QuantizedArray:
        """The integer codes and scales of `x`."""
        return quantize(x.reshape(self.view), self.bits, method=self.method, **self.options)

    def packed(self, x: np.ndarray) -> PackedArray:
        """The codes of :meth:`codes` bit-packed as they are made, with their scales."""
        return quantize_packed(x.reshape(self.view), self.bits, method=self.method, **self.options)

    def values(self, x: np.ndarray, out: np.ndarray, scale=None, zero_point=None) -> np.ndarray:
        """`x` on the quantization grid, written into `out` (which may be x).  Given the `scale`
        and `zero_point` of :meth:`codes`, the values are bit for bit those codes' dequantization,
        and the codes need not be held meanwhile."""
        options = self.options if scale is None else dict(self.options, scale=scale, zero_point=zero_point)
        return fake_quantize(x.reshape(self.view), self.bits, method=self.method, out=out.reshape(self.view),
                             **options).reshape(x.shape)


def prepare(x: np.ndarray, e: Entry, recipe: Recipe, counts: dict, buffers: Buffers,
            release: bool = False, grid: Grid | None = None) -> tuple[np.ndarray, Quantization | None, np.ndarray]:
    """(x pruned, how to quantize it or None, the buffer its values go into).

    Pruned values and quantized ones go into the same buffer, in place: beside the original
    weight, a rewrite holds one array of its size.  With `release` (a writer that keeps codes),
    a large buffer is not kept from the last weight, so it never sits beside the codes.  A
    `grid` fixes the bits, scale and zero point instead of the recipe's search.
    """
    x = _float32_weight(x)
    if release and not recipe.prunes:
        buffers.trim("stored")
    out = buffers.get("stored", e.shape)
    pruned = _prune(x, e, recipe, counts, out) if recipe.prunes else None
    x = x if pruned is None else pruned
    if not recipe.quantizes:
        return x, None, out
    view, options = recipe.layout_for(e)
    if grid is not None:
        options = dict(options, scale=grid.scale, zero_point=grid.zero_point)
        return x, Quantization(view, grid.bits, recipe.method_for(grid.bits), options), out
    if recipe.bits is not None:
        bits = recipe.bits_for(e)
    else:
        search = options if recipe.method is None else dict(options, method=recipe.method)
        bits = int(bits_for_sqnr(x.reshape(view), recipe.target_sqnr, **search))
    return x, Quantization(view, bits, recipe.method_for(bits), options), out


#: the largest float32
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _float32_weight(x: np.ndarray) -> np.ndarray:
    """A weight as contiguous float32; ValueError naming the first value that overflows float32
    (a float64 beyond its range, which would become infinity)."""
    if x.dtype.itemsize > 4 and x.size:
        with np.errstate(invalid="ignore"):
            beyond = np.abs(x) > _FLOAT32_MAX
        if beyond.any():
            count, first = count_and_first(beyond)
            raise ValueError(f"{count} value{'s' if count != 1 else ''} of this {x.dtype} weight "
                             f"overflow{'s' if count == 1 else ''} float32, the first {x[first].item()!r} at index {first}")
    return np.ascontiguousarray(x, dtype=np.float32)


def pruned(x: np.ndarray, e: Entry, recipe: Recipe, counts: dict) -> np.ndarray:
    """A float32 weight pruned as :func:`prepare` prunes it, in a new array (`x` when it stays dense)."""
    out = _prune(x, e, recipe, counts, np.empty_like(x)) if recipe.prunes else None
    return x if out is None else out


def _prune(x: np.ndarray, e: Entry, recipe: Recipe, counts: dict, out: np.ndarray) -> np.ndarray | None:
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
    view, axis = block_view(e.shape, e.layer_class, e.role, e.reduced)
    return prune_n_m(x.reshape(view), n=n_m[0], m=n_m[1], axis=axis, out=out.reshape(view)).reshape(e.shape)


def statistics(original: np.ndarray, stored: np.ndarray | Measured, bins: int) -> tuple:
    """(sparsity before, sparsity after, mse, SQNR dB, Histogram or None) of one rewritten
    weight, in one pass (none when the writer `Measured` it); the histograms of its values before
    and after in `bins` bins, unless 0."""
    if isinstance(stored, Measured):
        return stored.before, stored.after, float(stored.error.mse), float(stored.error.sqnr_db), None
    if not bins:
        stats, before, after = compare(original, stored)
        return before, after, float(stats.mse), float(stats.sqnr_db), None
    stats, before, after, counts, edges = compare(original, stored, bins=bins)
    return before, after, float(stats.mse), float(stats.sqnr_db), Histogram.of(counts, edges)
