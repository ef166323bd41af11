"""How much to prune each tensor of a model: the global LAMP allocation, and its defaults.

The defaults were chosen by measuring test accuracy of small trained Keras models after
one-shot pruning and quantization (``benchmarks/fidelity.py``, results in
``benchmarks/FIDELITY.md``):

* ``prune_model(..., allocation="global")`` ranks the weights of all eligible tensors together by
  their LAMP score (layer-adaptive magnitude, Lee et al., ICLR 2021): within a tensor, the weight
  ``w_i`` with the i-th smallest magnitude scores ``w_i^2 / sum_{j >= i} w_j^2``.  The score is a
  per-tensor normalisation of the magnitude that keeps each tensor's order, and it lets small or
  sensitive tensors (first convolution, depthwise kernels, classifier) keep more of their weights
  than a raw global magnitude threshold does.  Mean test accuracy at 75 % / 90 % sparsity on the
  benchmark CNN (float 98.4 %), all with min_size 256: LAMP 98.2 / 89.5 %, raw magnitude
  97.7 / 86.4 %, uniform per-tensor 83.8 / 33.0 %; on a CNN with batch normalisation whose
  classifier holds 71 % of the weights, 82.0 % at 75 % against 42.2 % (raw magnitude) and 36.8 %
  (uniform).  Dividing |w| by the rms of its tensor behaves like the uniform allocation
  (41.9 / 10.1 % on the CNN with every tensor eligible).
* Tensors below a minimum size stay dense (3x3 depthwise kernels, first convolutions, small
  classifiers: a negligible share of the weights, and the most sensitive).  How large depends on
  the allocation, so :func:`default_min_size` gives one per allocation:

  - ``"global"``: ``DEFAULT_MIN_SIZE`` = 256.  LAMP protects small tensors by itself: 0, 256 and
    512 stay within 0.4 points wherever the model still works, while 1024 forces the other
    tensors to be pruned harder: MLP at 75 / 90 % 94.9 / 62.5 % against 95.4 / 76.1 % with 256,
    BN-CNN at 75 % 67.9 % against 82.0 %.
  - ``"uniform"`` and N:M patterns: ``UNIFORM_MIN_SIZE`` = 1024.  Without an adaptive criterion the
    small tensors must be left out: uniform 50 % / 75 % kept 98.7 / 98.0 % on the CNN with 1024
    against 97.0 / 83.8 % with 256 and 93.5 / 35.4 % with 0; 2:4 kept 98.4 % against 96.4 % and
    84.7 %.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

from .. import _core
from .._checks import bits_view, check_float_array, check_fraction, check_int, float_array
from ..pruning import prune

__all__ = ["DEFAULT_MIN_SIZE", "UNIFORM_MIN_SIZE", "ALLOCATIONS", "SparsityWarning", "default_min_size",
           "prune_model", "prune_counts", "count_fraction", "lamp_scores"]

#: Tensors with fewer elements stay dense in :func:`prune_model` with the default "global" allocation.
DEFAULT_MIN_SIZE: int = 256

#: The same for per-tensor schemes: the "uniform" allocation and N:M patterns.
UNIFORM_MIN_SIZE: int = 1024

#: The ways :func:`prune_model` can share the sparsity among tensors.
ALLOCATIONS = ("global", "uniform")


class SparsityWarning(UserWarning):
    """The requested sparsity cannot be reached exactly (too few eligible weights, or more zeros
    than requested already)."""


def default_min_size(allocation: str = "global") -> int:
    """Tensors with fewer elements stay dense by default under `allocation`.

    Parameters
    ----------
    allocation : {"global", "uniform", "n:m"}
        "n:m" stands for N:M structured patterns, which prune every tensor alike as "uniform" does.

    Returns
    -------
    int
        :data:`DEFAULT_MIN_SIZE` for "global", :data:`UNIFORM_MIN_SIZE` otherwise.

    Examples
    --------
    >>> from wqkernels.allocation import default_min_size
    >>> default_min_size(), default_min_size("uniform"), default_min_size("n:m")
    (256, 1024, 1024)
    """
    if allocation not in ALLOCATIONS + ("n:m",):
        raise ValueError(f"allocation must be one of {', '.join(map(repr, ALLOCATIONS + ('n:m',)))}, "
                         f"got {allocation!r}")
    return DEFAULT_MIN_SIZE if allocation == "global" else UNIFORM_MIN_SIZE


def prune_model(tensors: Mapping, sparsity: float, *, allocation: str = "global",
                min_size: int | None = None) -> dict:
    """Prune the prunable tensors of a model to an overall sparsity.

    Exactly ``floor(sparsity * total)`` of all the given weights are zero afterwards (`total`
    counts every element of every tensor, small ones included; zeros already present count),
    whenever the eligible tensors are large enough.  When they are not (or when more weights are
    already zero), the result is as close as possible and a :class:`SparsityWarning` says so.

    Parameters
    ----------
    tensors : mapping of str to array_like of float16, float32 or float64
        The prunable weights (kernels, embeddings), by name; never modified.
    sparsity : float
        Fraction of all the given weights to zero, in [0, 1].
    allocation : {"global", "uniform"}
        ``"global"``: one criterion across the eligible tensors, the LAMP score (each weight's
        square divided by the sum of the squares of the weights of its tensor that are not
        smaller, see :func:`lamp_scores`), so the lowest-scoring weights of the whole model go
        first.  Equal scores: the earlier tensor in dict order first; within a tensor the
        smaller magnitude, then the lower flat (C-order) index.
        ``"uniform"``: the same sparsity in every eligible tensor (the counts differ by at most
        one from ``floor`` so that the total is exact), each by :func:`wqkernels.prune`.
    min_size : int, optional
        Tensors with fewer elements stay dense; 0 prunes all.  Default: ``default_min_size(allocation)``,
        :data:`DEFAULT_MIN_SIZE` (256) for "global", :data:`UNIFORM_MIN_SIZE` (1024) for "uniform".

    Returns
    -------
    dict of str to ndarray
        New arrays with the keys, shapes and dtypes of `tensors`; dense tensors are copies.

    Raises
    ------
    TypeError
        `tensors` is not a mapping or holds a non-float array; `sparsity` or `min_size` is not a
        number.
    ValueError
        `sparsity` outside [0, 1], an unknown `allocation`, a negative `min_size`, or NaN or
        infinity in a tensor.

    Notes
    -----
    :func:`prune_counts` decides how many weights each tensor loses (sorting each eligible
    tensor's magnitudes twice, ``O(n log n)``, with one tensor in memory at a time beyond the
    inputs), and :func:`wqkernels.prune` then zeroes that many smallest magnitudes in each
    tensor (``O(n)`` selections).

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.allocation import prune_model
    >>> rng = np.random.default_rng(0)
    >>> w = {"conv": rng.normal(size=(3, 3, 8, 16)), "dense": rng.normal(size=(256, 10)),
    ...      "tiny": rng.normal(size=(10,))}
    >>> out = prune_model(w, 0.5)
    >>> int(sum(np.count_nonzero(v == 0) for v in out.values()))  # floor(0.5 * 3722)
    1861
    >>> int(np.count_nonzero(out["tiny"] == 0))   # below min_size: dense
    0
    >>> u = prune_model(w, 0.5, allocation="uniform", min_size=0)
    >>> [round(float(np.mean(v == 0)), 2) for v in u.values()]
    [0.5, 0.5, 0.5]
    """
    counts = _prune_counts(tensors, sparsity, allocation, min_size)
    out = {}
    for name, value in tensors.items():
        x = float_array(value, f"tensors[{name!r}]")  # checked finite by prune_counts
        k = counts[name]
        out[name] = prune(x, sparsity=count_fraction(k, x.size)) if k else np.array(x, copy=True)
    return out


def prune_counts(tensors: Mapping, sparsity: float, *, allocation: str = "global",
                 min_size: int | None = None) -> dict:
    """How many weights :func:`prune_model` zeroes in each tensor, holding one tensor at a time.

    For models that do not fit in memory twice: ``prune_model(tensors, ...)[name]`` equals
    ``prune(tensors[name], sparsity=count_fraction(counts[name], size))`` (an unpruned copy where
    the count is 0), so the tensors can be pruned one by one as they are read and written.  The
    values may be anything NumPy converts when asked (an ``h5py.Dataset``, an object with
    ``shape`` and ``__array__``): each is converted when needed and dropped afterwards, twice
    for the eligible tensors under "global", once otherwise.  Sizes come from ``shape`` when
    the value has one.

    Parameters and warnings are those of :func:`prune_model`.

    Returns
    -------
    dict of str to int
        For every key of `tensors`: how many of its weights are to be zeroed (0 for the tensors
        below `min_size`).

    Notes
    -----
    The LAMP score is monotone in the magnitude within a tensor, so the global selection only
    has to decide how many weights each tensor loses.  Each pass sorts one tensor's magnitudes
    and counts its scores (computed in a kernel, not stored) by their float32 bits: the first
    pass into 2^16 bins of the upper 16 bits, which locates the bin holding the cut-off; the
    second into 2^16 bins of the lower bits within that bin, which gives the exact cut-off
    score and how many weights of each tensor fall below it or on it.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.allocation import prune_counts
    >>> rng = np.random.default_rng(0)
    >>> w = {"conv": rng.normal(size=(3, 3, 8, 16)), "dense": rng.normal(size=(256, 10)),
    ...      "tiny": rng.normal(size=(10,))}
    >>> prune_counts(w, 0.5)
    {'conv': 462, 'dense': 1399, 'tiny': 0}
    """
    return _prune_counts(tensors, sparsity, allocation, min_size)


def count_fraction(count: int, size: int) -> float:
    """The sparsity that makes :func:`wqkernels.prune` zero exactly `count` of `size` weights.

    Examples
    --------
    >>> from wqkernels.allocation import count_fraction
    >>> import math
    >>> math.floor(count_fraction(3, 7) * 7), count_fraction(7, 7)
    (3, 1.0)
    """
    return 1.0 if count >= size else (count + 0.5) / size


def _prune_counts(tensors, sparsity, allocation, min_size) -> dict:
    """prune_counts; the warnings point at the caller of its public callers."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of names to arrays, got {type(tensors).__name__}")
    sparsity = check_fraction(sparsity, "sparsity")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(map(repr, ALLOCATIONS))}, got {allocation!r}")
    min_size = default_min_size(allocation) if min_size is None else check_int(min_size, "min_size", 0)
    sizes = {name: _size(value) for name, value in tensors.items()}
    total = sum(sizes.values())
    target = math.floor(sparsity * total)
    eligible = [name for name, size in sizes.items() if size >= max(min_size, 1)]
    fixed_zeros = sum(_zeros(_tensor(tensors[name], name)) for name in sizes if name not in eligible)
    wanted = target - fixed_zeros
    count = min(max(wanted, 0), sum(sizes[name] for name in eligible))
    if count != wanted:
        _warn_unreachable(target, fixed_zeros + count, total)
    if allocation == "global":
        counts, zeros = _lamp_counts(tensors, eligible, count)
    else:
        counts = dict(zip(eligible, _uniform_counts([sizes[name] for name in eligible], count)))
        zeros = {name: _zeros(_tensor(tensors[name], name)) for name in eligible}
    achieved = fixed_zeros + sum(max(counts[name], zeros[name]) for name in eligible)
    if achieved != target and count == wanted:
        _warn_unreachable(target, achieved, total)
    return {name: counts.get(name, 0) for name in tensors}


#: bins of the score histograms: 16 bits of a float32 score at a time
_BINS = 1 << 16


def _lamp_counts(tensors: Mapping, names: list, count: int) -> tuple[dict, dict]:
    """How many weights each named tensor loses to the `count` lowest LAMP scores of all
    (equal scores: the earlier tensor first), and how many of its weights are zero already.

    A tensor also loses every weight whose score is 0 (a zero, or a square that underflows
    against the sum), whatever the count: what selecting scores by value gives.
    """
    top, below = np.zeros(_BINS, np.int64), np.zeros(1, np.int64)
    zero_scores, zeros = {}, {}
    for name in names:
        ranked = _ranked(tensors, name)
        # a zero of ranked's dtype: a Python 0 makes searchsorted cast all of ranked to float64
        zeros[name] = int(np.searchsorted(ranked, ranked.dtype.type(0), side="right"))
        zero_scores[name] = _core.lamp_histogram(bits_view(ranked), -1, top, below)
        del ranked
    selected = dict.fromkeys(names, 0)
    if count:
        prefix = int(np.searchsorted(np.cumsum(top), count))  # the upper bits of the cut-off score
        needed = count - int(top[:prefix].sum())
        low, parts = np.zeros(_BINS, np.int64), {}
        for name in names:
            ranked, hist = _ranked(tensors, name), np.zeros(_BINS, np.int64)
            below[0] = 0
            _core.lamp_histogram(bits_view(ranked), prefix, hist, below)
            del ranked
            bins = np.flatnonzero(hist)
            parts[name] = (int(below[0]), bins, hist[bins])
            low += hist
        cut = int(np.searchsorted(np.cumsum(low), needed))  # the lower bits of the cut-off score
        ties = needed - int(low[:cut].sum())
        for name in names:
            under, bins, counts = parts[name]
            take = min(int(counts[bins == cut].sum()), ties)
            ties -= take
            selected[name] = under + int(counts[bins < cut].sum()) + take
    return {name: max(selected[name], zero_scores[name]) for name in names}, zeros


def lamp_scores(x) -> np.ndarray:
    """The LAMP score of each element of `x`: ``x_i^2 / sum of x_j^2 over |x_j| >= |x_i|``.

    Elements of equal magnitude score the same; zeros score 0 and the largest magnitude scores 1.
    Sums in float64 over the squares in ascending order; returned as float32 of x's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.allocation import lamp_scores
    >>> lamp_scores(np.array([3.0, -1.0, 0.0, 2.0, 1.0]))
    array([1.        , 0.06666667, 0.        , 0.30769232, 0.06666667],
          dtype=float32)
    """
    arr = check_float_array(x)
    magnitudes = np.abs(arr).reshape(-1)
    ranked = np.sort(magnitudes)
    return _sorted_scores(ranked)[np.searchsorted(ranked, magnitudes, side="left")].reshape(arr.shape)


def _sorted_scores(ranked: np.ndarray) -> np.ndarray:
    """LAMP scores (float32) of magnitudes sorted ascending; equal magnitudes score alike."""
    squares = np.square(ranked, dtype=np.float64)
    if not squares.size:
        return squares.astype(np.float32)
    suffix = np.cumsum(squares[::-1])[::-1]  # suffix[i]: sum of squares[i:]
    first = np.arange(squares.size)  # where each run of equal squares starts
    repeated = np.empty(squares.size, dtype=bool)
    repeated[0] = False
    np.equal(squares[1:], squares[:-1], out=repeated[1:])
    first[repeated] = 0
    np.maximum.accumulate(first, out=first)
    np.divide(squares, suffix[first], out=squares, where=squares > 0)
    return squares.astype(np.float32)


def _size(value) -> int:
    """Elements of a tensor, from its shape when it has one (without reading it)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return int(np.asarray(value).size)
    return math.prod(int(s) for s in shape)


def _tensor(value, name: str) -> np.ndarray:
    """One tensor as a float16/32/64 array, checked finite."""
    arr = float_array(value, f"tensors[{name!r}]")
    if arr.size and not np.isfinite(arr).all():
        raise _nonfinite(name)
    return arr


def _ranked(tensors: Mapping, name: str) -> np.ndarray:
    """The magnitudes of one tensor, sorted ascending, checked finite (NaN and infinity sort last)."""
    ranked = np.abs(float_array(tensors[name], f"tensors[{name!r}]")).reshape(-1)
    ranked.sort()
    if ranked.size and not np.isfinite(ranked[-1]):
        raise _nonfinite(name)
    return ranked


def _nonfinite(name: str) -> ValueError:
    return ValueError(f"tensors[{name!r}] has NaN or infinite values")


def _zeros(x: np.ndarray) -> int:
    return _core.count_zeros(bits_view(x)) if x.size else 0


def _uniform_counts(sizes: list, count: int) -> list:
    """Split `count` zeros among tensors of `sizes` in proportion, by largest remainder.

    Each tensor gets ``floor(count * size / total)`` and the leftover goes one each to the tensors
    with the largest remainders (ties: the earlier tensor).
    """
    total = sum(sizes)
    base = [count * size // total for size in sizes]
    remainders = [count * size % total for size in sizes]
    leftover = count - sum(base)
    for i in sorted(range(len(sizes)), key=lambda i: -remainders[i])[:leftover]:
        base[i] += 1
    return base


def _warn_unreachable(target: int, achieved: int, total: int) -> None:
    warnings.warn(SparsityWarning(
        f"sparsity: {target} of {total} weights should be zero, {achieved} are "
        f"({achieved / total if total else 0:.4f}); the tensors at or above min_size are too few, "
        "or more weights were zero already"), stacklevel=4)
