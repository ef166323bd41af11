"""Prune float arrays: exact magnitude selection, threshold, N:M, whole channels, one global
threshold over many arrays; clip and soft-threshold (shrink) them.

Every function takes float16, float32 or float64 arrays of any shape and memory order and
returns a new array of the same dtype and shape, or writes into ``out`` (which may be ``x``
itself, to work in place).  The input is never modified otherwise.  Pruned entries become
``+0.0``; existing zeros, ``+0.0`` and ``-0.0`` alike, are the smallest magnitudes and count
toward the target.  Ties between equal magnitudes go to the lower flat (C-order) index first.
NaN and infinity are refused with a ValueError.

Selection works on the bit patterns of ``|x|`` (``bits & ~sign``), which order exactly like the
magnitudes, and never sorts: see :func:`prune` for the algorithm.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from . import _core
from ._checks import (BITS, bits_view, check_fraction, check_int, check_real, float_array, nonfinite_error,
                      normalize_axis)

__all__ = ["prune", "prune_n_m", "prune_channels", "prune_global", "clip", "shrink"]

#: arrays of at least this many elements select through a sampled window (see prune)
SAMPLE_MIN = 1 << 18
#: at most this many samples are taken to place the window
SAMPLE_SIZE = 1 << 16


def prune(x, sparsity: float | None = None, *, threshold: float | None = None,
          out: np.ndarray | None = None) -> np.ndarray:
    """Zero the smallest magnitudes of x: an exact fraction of them, or those below a threshold.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
        Any shape and memory order.
    sparsity : float in [0, 1]
        Zero exactly ``k = floor(sparsity * x.size)`` entries (the product taken in float64,
        as Python does): the k smallest ``|x|``, ties broken by the lower flat (C-order) index.
    threshold : float >= 0, keyword only
        Instead of `sparsity`: zero where ``|x| < threshold`` and keep ``|x| >= threshold``
        (TensorFlow Model Optimization's rule).  The threshold is first rounded to x's dtype,
        as NumPy does with a Python float, so this is ``np.abs(x) < x.dtype.type(threshold)``.
    out : ndarray, optional
        Where to write the result: x's dtype and shape, writeable; may be x itself.

    Returns
    -------
    ndarray
        x with the selected entries set to +0.0 (`out` if given).

    Raises
    ------
    TypeError
        x is not an array of real floats, or both or neither of sparsity and threshold given.
    ValueError
        sparsity outside [0, 1], a negative or NaN threshold, NaN or infinity in x, or an
        unsuitable `out`.

    Notes
    -----
    The selection is exact and O(n) expected, without sorting.  The keys are the bits of
    ``|x|`` as unsigned integers, which order like the magnitudes.  The k-th smallest key t
    and the number r of keys equal to t that go are found; then the r-th key equal to t in
    C order marks the cut, and one pass writes ``0`` where ``key < t``, or ``key == t`` up to
    the cut.  On large arrays (``SAMPLE_MIN`` elements or more) up to ``SAMPLE_SIZE`` evenly
    spaced samples give a window of keys that holds t with high probability; one pass then
    counts the keys below the window, copies out the keys inside it (about 1.5 % of them,
    with their positions) and writes the output, and t comes from the copy alone.  When the
    counts show the window missed, or on small arrays, a radix select (histograms of 11-bit
    digits of the keys, most significant first) over all keys finds t instead.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.array([0.5, -0.1, 0.0, 2.0, -0.1, 1.0], dtype=np.float32)
    >>> wqkernels.prune(x, sparsity=0.4)  # floor(0.4 * 6) = 2: the 0.0, then the first -0.1
    array([ 0.5,  0. ,  0. ,  2. , -0.1,  1. ], dtype=float32)
    >>> wqkernels.prune(x, threshold=0.5)
    array([0.5, 0. , 0. , 2. , 0. , 1. ], dtype=float32)
    >>> y = wqkernels.prune(x, sparsity=0.5, out=x)  # in place
    >>> y is x
    True
    """
    if (sparsity is None) == (threshold is None):
        raise TypeError("prune takes exactly one of sparsity and threshold")
    xc = float_array(x)
    if sparsity is not None:
        k = math.floor(check_fraction(sparsity, "sparsity") * xc.size)
    else:
        t = _rounded(_nonnegative(threshold, "threshold"), xc.dtype)
    y, inplace, finish = _output(out, x, xc)
    if xc.size:
        if sparsity is not None:
            finite = _core.prune_rank([bits_view(xc)], bits_view(y), k, inplace, SAMPLE_SIZE, SAMPLE_MIN)
        else:
            finite = _core.prune_threshold(bits_view(xc), bits_view(y), _bits_of(t, xc.dtype), inplace)
        if not finite:
            raise nonfinite_error(xc)
    return finish(y)


def prune_n_m(x, n: int = 2, m: int = 4, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """N:M structured sparsity: in every run of m consecutive elements along `axis` keep the
    n largest magnitudes and zero the rest.

    Runs start at index 0 of the axis; a short last run keeps ``min(n, its length)``.  Ties
    keep the lower index.  2:4 is what sparse tensor cores accelerate.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
        At least one dimension.
    n, m : int
        ``0 <= n <= m``, ``m >= 1``.
    axis : int
        The axis the runs follow (negative counts from the end).
    out : ndarray, optional
        As in :func:`prune`; may be x itself.

    Notes
    -----
    Each element's rank within its run is counted by comparing it with the other m - 1
    (O(m) per element, vectorised across runs), so the result is exact for any m, but large
    m cost in proportion.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.array([[1.0, -3.0, 2.0, 0.5, 4.0, 4.0]])
    >>> wqkernels.prune_n_m(x, 2, 4)
    array([[ 0., -3.,  2.,  0.,  4.,  4.]])
    >>> wqkernels.prune_n_m(x, 1, 2, axis=1)
    array([[ 0., -3.,  2.,  0.,  4.,  0.]])
    """
    xc = float_array(x)
    m = check_int(m, "m", 1)
    n = check_int(n, "n", 0)
    if n > m:
        raise ValueError(f"n must be <= m, got n={n} and m={m}")
    axis = normalize_axis(axis, xc.ndim)
    y, inplace, finish = _output(out, x, xc)
    if xc.size:
        length = xc.shape[axis]
        m = min(m, length)  # a run longer than the axis is the whole axis
        n = min(n, m)
        outer, inner = math.prod(xc.shape[:axis]), math.prod(xc.shape[axis + 1:])
        if not _core.prune_n_m_into(bits_view(xc), bits_view(y), outer, length, inner, m, n, inplace):
            raise nonfinite_error(xc)
    return finish(y)


def prune_channels(x, sparsity: float, axis: int = -1, ord: int = 2, *,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Zero whole slices along `axis`: the ``floor(sparsity * x.shape[axis])`` with the smallest
    L1 or L2 norm, ties broken by the lower index.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
        At least one dimension.
    sparsity : float in [0, 1]
        Fraction of the slices to zero.
    axis : int
        The channel axis: slice ``i`` is ``x.take(i, axis)``.
    ord : {1, 2}
        L1 (sum of ``|x|``) or L2 norm.
    out : ndarray, optional
        As in :func:`prune`; may be x itself.

    Notes
    -----
    Norms are accumulated in float64 in an order fixed by the shape (L2 is ranked by its
    square); slices whose norms differ by less than that sum's rounding may rank either way.
    The slices to zero are then chosen with the same exact radix select as :func:`prune`.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> x = np.array([[1.0, -0.1, 3.0], [1.0, 0.2, -3.0]], dtype=np.float32)
    >>> wqkernels.prune_channels(x, 0.5, axis=1)
    array([[ 1.,  0.,  3.],
           [ 1.,  0., -3.]], dtype=float32)
    >>> wqkernels.prune_channels(x, 0.5, axis=0, ord=1)
    array([[ 0. ,  0. ,  0. ],
           [ 1. ,  0.2, -3. ]], dtype=float32)
    """
    xc = float_array(x)
    fraction = check_fraction(sparsity, "sparsity")
    axis = normalize_axis(axis, xc.ndim)
    if isinstance(ord, (bool, np.bool_)) or ord not in (1, 2):
        raise ValueError(f"ord must be 1 or 2, got {ord!r}")
    y, inplace, finish = _output(out, x, xc)
    if xc.size:
        channels = xc.shape[axis]
        outer, inner = math.prod(xc.shape[:axis]), math.prod(xc.shape[axis + 1:])
        norms = np.empty(channels, dtype=np.float64)
        k = math.floor(fraction * channels)
        if not _core.prune_channels_into(bits_view(xc), bits_view(y), outer, channels, inner, int(ord), k,
                                         inplace, norms):
            raise nonfinite_error(xc)
    return finish(y)


def prune_global(arrays: Mapping, sparsity: float) -> dict:
    """One magnitude selection across many arrays: exactly ``floor(sparsity * total size)``
    entries become zero overall, the smallest ``|x|`` of all the arrays together.

    Ties are broken by the order of the mapping, then by C order within an array, as if the
    arrays were flattened and concatenated.  The selection is the one of :func:`prune`, with
    the keys of all arrays counted together; no array is copied or concatenated.

    Parameters
    ----------
    arrays : mapping of name -> array_like of float16, float32 or float64
        E.g. the weights of a model's layers.  With mixed dtypes magnitudes are compared in
        the widest one (exactly: widening a float is exact).
    sparsity : float in [0, 1]

    Returns
    -------
    dict
        The same keys, in the same order, each a new array of its input's dtype and shape
        (arrays of the widest dtype are views into one buffer that holds them all).

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> w = {"a": np.array([0.3, -2.0]), "b": np.array([[0.1, 1.0], [-0.3, 5.0]])}
    >>> pruned = wqkernels.prune_global(w, 0.5)
    >>> pruned["a"], pruned["b"]
    (array([ 0., -2.]), array([[0., 1.],
           [0., 5.]]))
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of names to arrays, got {type(arrays).__name__}")
    fraction = check_fraction(sparsity, "sparsity")
    originals = {name: float_array(a, f"arrays[{name!r}]") for name, a in arrays.items()}
    if not originals:
        return {}
    common = np.result_type(*originals.values())
    xs = {name: a.astype(common, copy=False) for name, a in originals.items()}
    total = sum(a.size for a in xs.values())
    k = math.floor(fraction * total)
    out = np.empty(total, dtype=common)  # all outputs in one buffer: one allocation, one write pass
    if total and not _core.prune_rank([bits_view(a) for a in xs.values()], bits_view(out), k, False,
                                      SAMPLE_SIZE, SAMPLE_MIN):
        name = next(name for name, a in xs.items() if a.size and not np.isfinite(a).all())
        raise nonfinite_error(xs[name], f"arrays[{name!r}]")
    starts = np.cumsum([0] + [a.size for a in xs.values()]).tolist()
    return {name: out[start:start + a.size].reshape(a.shape).astype(originals[name].dtype, copy=False)
            for (name, a), start in zip(xs.items(), starts)}


def clip(x, lo: float | None, hi: float | None, *, out: np.ndarray | None = None) -> np.ndarray:
    """Limit x to [lo, hi]: ``lo`` where ``x < lo``, ``hi`` where ``x > hi``, else x.

    The bounds are rounded to x's dtype first, and an entry equal to a bound keeps its own
    bits (+0.0 and -0.0 compare equal), as with ``np.clip(x, lo, hi)``.  None leaves that side
    open.

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> wqkernels.clip(np.array([-2.0, 0.5, 3.0], dtype=np.float32), -1, 1)
    array([-1. ,  0.5,  1. ], dtype=float32)
    """
    xc = float_array(x)
    inf = np.inf
    low = -inf if lo is None else _rounded(check_real(lo, "lo"), xc.dtype)
    high = inf if hi is None else _rounded(check_real(hi, "hi"), xc.dtype)
    if low > high:
        raise ValueError(f"lo must be <= hi, got lo={lo!r} and hi={hi!r}")
    y, inplace, finish = _output(out, x, xc)
    if xc.size and not _core.clip_into(bits_view(xc), bits_view(y), _bits_of(low, xc.dtype),
                                       _bits_of(high, xc.dtype), inplace):
        raise nonfinite_error(xc)
    return finish(y)


def shrink(x, alpha: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """Soft-threshold x: ``sign(x) * max(|x| - alpha, 0)``, so no weight crosses zero.

    Computed in x's precision with alpha rounded to x's dtype (float16 through float32, as
    NumPy), bit for bit ``np.sign(x) * np.maximum(np.abs(x) - alpha, 0)``: entries within alpha
    of zero become ``+0.0`` (``-0.0`` when negative).

    Examples
    --------
    >>> import numpy as np, wqkernels
    >>> wqkernels.shrink(np.array([-2.0, 0.25, 1.5]), 0.5)
    array([-1.5,  0. ,  1. ])
    """
    xc = float_array(x)
    a = _rounded(_nonnegative(alpha, "alpha"), xc.dtype)
    y, inplace, finish = _output(out, x, xc)
    if xc.size and not _core.shrink_into(bits_view(xc), bits_view(y), float(a), inplace):
        raise nonfinite_error(xc)
    return finish(y)


# ---- validation and plumbing ------------------------------------------------------------------

def _nonnegative(value, name: str) -> float:
    value = check_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _rounded(value: float, dtype: np.dtype) -> float:
    """value rounded to dtype (to infinity beyond its range), as NumPy casts a Python float."""
    with np.errstate(over="ignore"):
        return float(np.asarray(value, dtype=dtype))


def _bits_of(value: float, dtype: np.dtype) -> int:
    """The bits of value (representable in dtype) as an unsigned integer; for value >= 0 this
    is its magnitude key."""
    return int(np.asarray(value, dtype=dtype).view(BITS[np.dtype(dtype)]))


def _output(out, x, xc: np.ndarray):
    """Where to write: (y, inplace, finish).

    y is a C-contiguous array of xc's dtype and shape that the kernel writes; inplace says y is
    xc itself; finish(y) returns what the caller returns (copying into a non-contiguous out).
    """
    if out is None:
        return np.empty_like(xc), False, lambda y: y
    if not isinstance(out, np.ndarray) or out.dtype != xc.dtype or out.shape != xc.shape \
            or not out.flags.writeable:
        raise ValueError(f"out must be a writeable array of dtype {xc.dtype} and shape {xc.shape}, "
                         f"got {_describe(out)}")
    if out.flags.c_contiguous:
        if not np.may_share_memory(out, xc):
            return out, False, lambda y: y
        if out.__array_interface__["data"][0] == xc.__array_interface__["data"][0]:
            return out, True, lambda y: y
        raise ValueError("out overlaps x without being x")
    # a strided out: compute into a fresh array, then copy (x may be out)
    return np.empty_like(xc), False, lambda y: (np.copyto(out, y), out)[1]


def _describe(out) -> str:
    if isinstance(out, np.ndarray):
        return f"dtype {out.dtype}, shape {out.shape}" + ("" if out.flags.writeable else ", read-only")
    return type(out).__name__
