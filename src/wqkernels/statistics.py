"""How sparse an array is, and how far a pruned or quantized array is from the original."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _core
from ._checks import bits_view, float_array, nonfinite_error

__all__ = ["ErrorStats", "sparsity", "error", "compare"]


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


def compare(x, x_hat) -> tuple[ErrorStats, float, float]:
    """:func:`error` of x_hat, and the :func:`sparsity` of x and of x_hat, in one pass.

    What a rewrite reports for each weight it changes; the same results as the three calls
    (validation and errors included), at the cost of one.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.statistics import compare
    >>> x = np.array([1.0, -2.0, 3.0, 0.0], dtype=np.float32)
    >>> compare(x, np.array([0.0, -2.0, 3.0, 0.0], dtype=np.float32))
    (ErrorStats(mse=0.25, max_abs=1.0, sqnr_db=11.46128035678238), 0.25, 0.5)
    """
    xc = float_array(x)
    xh = float_array(x_hat, "x_hat")
    if xc.shape != xh.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {xc.shape} and {xh.shape}")
    common = np.result_type(xc, xh)
    xc, xh = xc.astype(common, copy=False), xh.astype(common, copy=False)
    if xc.size == 0:
        return ErrorStats(0.0, 0.0, math.inf), 0.0, 0.0
    sums = np.empty(3, dtype=np.float64)
    zeros = np.empty(2, dtype=np.int64)
    if not _core.error_sums(bits_view(xc), bits_view(xh), sums, zeros):
        bad_x = not np.isfinite(xc).all()
        raise nonfinite_error(xc if bad_x else xh, "x" if bad_x else "x_hat")
    signal, noise, max_abs = (float(v) for v in sums)
    stats = ErrorStats(noise / xc.size, max_abs, _sqnr_db(signal, noise))
    return stats, int(zeros[0]) / xc.size, int(zeros[1]) / xc.size


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
