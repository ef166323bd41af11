"""How sparse an array is, and how far a pruned or quantized array is from the original."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _core
from ._checks import bits_view, check_int, float_array, is_real, nonfinite_error

__all__ = ["ErrorStats", "sparsity", "error", "compare", "histogram", "histogram_edges"]


class ErrorStats(NamedTuple):
    """Reconstruction error of an approximation x_hat of x.

    Attributes
    ----------
    mse : float
        ``mean((x - x_hat) ** 2)``.
    max_abs : float
        ``max(|x - x_hat|)``.
    sqnr_db : float
        Signal-to-quantization-noise ratio ``10 * log10(sum(x ** 2) / sum((x - x_hat) ** 2))``
        in decibels: ``inf`` when x_hat equals x (also when both are all zeros), ``-inf`` when
        x is all zeros and x_hat is not.
    """

    mse: float
    max_abs: float
    sqnr_db: float

    @classmethod
    def of_sums(cls, signal: float, noise: float, max_abs: float, size: int) -> ErrorStats:
        """The error of `size` elements from ``sum(x ** 2)``, ``sum((x - x_hat) ** 2)`` and
        ``max(|x - x_hat|)``; no error when there are none."""
        if size == 0:
            return cls(0.0, 0.0, math.inf)
        return cls(noise / size, max_abs, _sqnr_db(signal, noise))


def sparsity(x) -> float:
    """The fraction of entries of x that are exactly zero (+0.0 or -0.0); 0.0 when x is empty.

    NaN and infinity are allowed here: they are simply not zero.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> wqkernels.sparsity(np.array([0.0, -0.0, 1.5, 0.0], dtype=np.float16))
    0.75
    """
    xc = float_array(x)
    if xc.size == 0:
        return 0.0
    return _core.count_zeros(bits_view(xc)) / xc.size


def error(x, x_hat) -> ErrorStats:
    """Mean squared error, largest absolute error and SQNR of x_hat as an approximation of x.

    Parameters
    ----------
    x, x_hat : array_like of float16, float32 or float64
        The same shape; differing dtypes are compared in the wider one.

    Returns
    -------
    ErrorStats
        For empty arrays ``ErrorStats(0.0, 0.0, inf)``: no error.

    Notes
    -----
    One pass: sums of ``x ** 2`` and ``(x - x_hat) ** 2`` accumulate in float64 (the difference
    of two float16 or float32 values is exact in float64), in chunks of 65536 elements whose
    sums are added in order, so the result does not depend on the number of threads.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32)
    >>> wqkernels.error(x, wqkernels.prune(x, sparsity=0.25))
    ErrorStats(mse=0.0625, max_abs=0.5, sqnr_db=17.558748556724915)
    """
    return compare(x, x_hat)[0]


def compare(x, x_hat, *, bins: int = 0, range=None):
    """:func:`error` of x_hat, and the :func:`sparsity` of x and of x_hat, in one pass; with
    `bins`, also the histograms of x and of x_hat.

    What a rewrite reports for each weight it changes; the same results as the three calls
    (validation and errors included), at the cost of one.

    Parameters
    ----------
    x, x_hat : array_like of float16, float32 or float64
        The same shape; differing dtypes are compared in the wider one.
    bins : int
        0 (the default): no histograms.  Otherwise the number of equal bins over `range`.
    range : (float, float), optional
        The histograms' lower and upper edges; default: the smallest and the largest value of
        x and x_hat.  Values outside it count in the first or the last bin.  A range too narrow
        for the bins (both edges equal, say) is widened by 0.5 on each side, as
        :func:`numpy.histogram` widens an empty range (and where 0.5 is lost in the rounding of
        large edges, by half their magnitude).

    Returns
    -------
    (ErrorStats, float, float)
        The error, the sparsity of x and that of x_hat.
    (ErrorStats, float, float, ndarray, ndarray)
        With `bins`, also the counts (int64 of shape ``(2, bins)``: x's, then x_hat's) and the
        ``bins + 1`` edges (float64).  Counts are those of :func:`numpy.histogram` over the
        values, in float64, clipped to the range: bit for bit, so each sums to the size.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.statistics import compare
    >>> x = np.array([1.0, -2.0, 3.0, 0.0], dtype=np.float32)
    >>> compare(x, np.array([0.0, -2.0, 3.0, 0.0], dtype=np.float32))
    (ErrorStats(mse=0.25, max_abs=1.0, sqnr_db=11.46128035678238), 0.25, 0.5)
    >>> stats, _, _, counts, edges = compare(x, np.array([0.0, -2.0, 3.0, 0.0], np.float32), bins=5)
    >>> counts
    array([[1, 0, 1, 1, 1],
           [1, 0, 2, 0, 1]])
    >>> edges
    array([-2., -1.,  0.,  1.,  2.,  3.])
    """
    xc = float_array(x)
    xh = float_array(x_hat, "x_hat")
    if xc.shape != xh.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {xc.shape} and {xh.shape}")
    bins = check_int(bins, "bins", 0)
    common = np.result_type(xc, xh)
    xc, xh = xc.astype(common, copy=False), xh.astype(common, copy=False)
    edges = histogram_edges(bins, _range(xc, xh) if range is None else range) if bins else _NO_EDGES
    counts = np.zeros((2, bins), dtype=np.int64)
    if xc.size == 0:
        result = ErrorStats(0.0, 0.0, math.inf), 0.0, 0.0
    else:
        sums = np.empty(3, dtype=np.float64)
        zeros = np.empty(2, dtype=np.int64)
        if not _core.error_sums(bits_view(xc), bits_view(xh), sums, zeros, edges, counts.reshape(-1)):
            bad_x = not np.isfinite(xc).all()
            raise nonfinite_error(xc if bad_x else xh, "x" if bad_x else "x_hat")
        stats = ErrorStats.of_sums(*(float(v) for v in sums), xc.size)
        result = stats, int(zeros[0]) / xc.size, int(zeros[1]) / xc.size
    return (*result, counts, edges) if bins else result


#: the edges of no histogram
_NO_EDGES = np.zeros(0, dtype=np.float64)


def histogram(x, bins: int, range=None) -> tuple[np.ndarray, np.ndarray]:
    """The counts of x's values in `bins` equal bins over `range`, and the edges, as
    :func:`compare` counts them (values outside the range in the first or the last bin).

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.statistics import histogram
    >>> histogram(np.array([0.0, 0.5, 2.0, 1.0], np.float32), 2)
    (array([2, 2]), array([0., 1., 2.]))
    """
    bins = check_int(bins, "bins", 1)
    _, _, _, counts, edges = compare(x, x, bins=bins, range=range)
    return counts[0], edges


def histogram_edges(bins: int, range) -> np.ndarray:
    """The ``bins + 1`` equal-width edges (float64) :func:`compare` counts in over `range`.

    Examples
    --------
    >>> from wqkernels.statistics import histogram_edges
    >>> histogram_edges(4, (0, 2))
    array([0. , 0.5, 1. , 1.5, 2. ])
    >>> histogram_edges(2, (1, 1))
    array([0.5, 1. , 1.5])
    """
    bins = check_int(bins, "bins", 1)
    pair = tuple(range) if isinstance(range, (tuple, list, np.ndarray)) else ()
    if len(pair) != 2 or not all(is_real(v) for v in pair):
        raise TypeError(f"range must be a pair of real numbers, got {range!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(hi - lo)):
        raise ValueError(f"range must be finite, got {range!r}")
    if lo > hi:
        raise ValueError(f"range must run from low to high, got {range!r}")
    edges = np.linspace(lo + 0.0, hi + 0.0, bins + 1)  # + 0.0: an edge at zero is +0, whichever zero was given
    for wide in (0.5, 0.5 * max(abs(lo), abs(hi))):  # equal ends, or bins too narrow for the floats
        if (np.diff(edges) > 0).all():
            return edges
        edges = np.linspace(lo - wide, hi + wide, bins + 1)
    if not (math.isfinite(edges[-1] - edges[0]) and (np.diff(edges) > 0).all()):
        raise ValueError(f"range {range!r} cannot be split into {bins} bins")
    return edges


def _range(x: np.ndarray, x_hat: np.ndarray) -> tuple[float, float]:
    """From the smallest to the largest value of the two arrays; (0, 1) when they are empty or
    not finite (then the kernel reports the values that are not, and no histogram is made)."""
    if x.size == 0:
        return 0.0, 1.0
    with np.errstate(invalid="ignore"):
        low, high = float(min(x.min(), x_hat.min())), float(max(x.max(), x_hat.max()))
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (0.0, 1.0)


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
