"""The loop GPTQ and SparseGPT share: a layer's inputs taken in order, each input's row of weights
fixed (rounded onto a grid, or zeroed), its error pushed onto the rows not yet fixed.

With ``U`` the upper Cholesky factor of ``H⁻¹`` (``UᵀU = H⁻¹``), fixing row i with error
``e = (w_i - q_i) / U_ii`` and subtracting ``U_ij · e`` from every later row j is the optimal
update of the remaining weights for the squared output error (the Optimal Brain Surgeon step).
Rows are processed in lazy blocks: within a block the updates are rank one, the rows after it
get the block's errors in one matrix product.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import as_float32, check_int, check_real, nonfinite_error
from .hessian import Hessian
from .views import KernelView

__all__ = ["Grid", "arguments", "inverse_cholesky", "reconstruct", "on_grid", "nm_block"]

#: damping is multiplied by 10 up to this many times while the Cholesky factorisation fails
_RETRIES = 6


class Grid(NamedTuple):
    """Each weight's quantization grid: scale and zero point (float32, broadcastable to the
    ``(groups, inputs, outputs)`` matrices; axis 1 of length 1 or the inputs), code range."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: float
    qmax: float

    def row(self, i: int) -> tuple:
        def pick(a):
            return a[:, i] if a.shape[1] > 1 else a[:, 0]
        return pick(self.scale), pick(self.zero_point)


def on_grid(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: float, qmax: float) -> np.ndarray:
    """x rounded onto the grid in float32, exactly as :func:`wqkernels.fake_quantize` does:
    ``(clip(rint(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``."""
    q = np.rint(x.astype(np.float32) / scale) + zero_point
    np.clip(q, np.float32(qmin), np.float32(qmax), out=q)
    return (q - zero_point) * scale


def inverse_cholesky(h: np.ndarray, damping: float) -> np.ndarray:
    """U upper triangular with ``UᵀU = (H + λI)⁻¹`` per group, float64; `h` (float64
    ``(groups, k, k)``) is overwritten.

    Inputs that are never non-zero (a zero diagonal) get 1 on the diagonal, so their weights
    are rounded on their own; ``λ = damping · mean(diag H)`` keeps the factorisation stable and
    is raised tenfold while it fails.
    """
    idx = np.arange(h.shape[-1])
    diag = h[:, idx, idx]
    diag[diag <= 0] = 1.0
    lam = max(float(damping), 1e-10) * diag.mean(axis=1)
    h[:, idx, idx] = diag + lam[:, None]
    for attempt in range(_RETRIES + 1):
        try:
            lower = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:
            if attempt == _RETRIES:
                raise ValueError("the Hessian is not positive definite even with damping "
                                 f"{damping * 10 ** _RETRIES:g}") from None
            h[:, idx, idx] += 9 * lam[:, None]
            lam = lam * 10
    inverse = np.linalg.inv(lower)
    del lower
    hinv = np.matmul(inverse.transpose(0, 2, 1), inverse)
    del inverse
    return np.linalg.cholesky(hinv).transpose(0, 2, 1)


def nm_block(block: int, m: int, segment: int) -> int:
    """A lazy block length at which N:M runs (of m, restarting every `segment` inputs) never
    straddle two blocks when that is possible near `block`."""
    if segment % m == 0:
        return max(block // m, 1) * m
    return max(block // segment, 1) * segment if segment <= block else max(block // m, 1) * m


def reconstruct(w: np.ndarray, u: np.ndarray, *, grid: Grid | None = None, zero: np.ndarray | None = None,
                count: int | None = None, n_m: tuple | None = None, block: int = 128) -> None:
    """Fix the rows of `w` (float64 ``(groups, inputs, outputs)``, updated in place) in order.

    Parameters
    ----------
    w, u : ndarray
        The weights and :func:`inverse_cholesky` of their Hessian.
    grid : Grid, optional
        Round every weight onto it.
    zero : ndarray of bool, optional
        Weights that must be zero (they stay zero; their error is pushed on like any other).
    count : int, optional
        Zero exactly this many weights in all (the `zero` ones first, never fewer than those):
        each lazy block takes its share, its weights of least ``w² / U_ii²`` (SparseGPT's
        adaptive mask).
    n_m : (n, m, segment), optional
        Keep at most n of every run of m consecutive inputs, runs restarting every `segment`
        inputs; a short run of length L keeps ``min(n, L)``.  Chosen as each run starts.
    block : int
        Rows per lazy block.
    """
    groups, k, c = w.shape
    mask = np.zeros(w.shape, dtype=bool) if zero is None else zero.copy()
    pivots = np.ascontiguousarray(u[:, np.arange(k), np.arange(k)])  # (groups, k)
    if count is not None:
        forced_rows = mask.sum(axis=(0, 2))  # zeros that must stay, per input
        picks = max(count - int(forced_rows.sum()), 0)  # zeros still to choose beyond them
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, u1 = w[:, i1:i2], u[:, i1:i2, i1:i2]
        if count is not None:
            picks -= _choose(w1, pivots[:, i1:i2], mask, i1, i2, picks, k)
        errors = np.empty(w1.shape)
        for i in range(i2 - i1):
            r = i1 + i
            if n_m is not None and r % n_m[2] % n_m[1] == 0:
                _choose_run(w, pivots, mask, r, n_m)
            x = w1[:, i].copy()
            q = x.copy() if grid is None else on_grid(x, *grid.row(r), grid.qmin, grid.qmax).astype(np.float64)
            q[mask[:, r]] = 0.0
            e = (x - q) / pivots[:, r, None]
            w1[:, i] = q
            if i + 1 < i2 - i1:
                w1[:, i + 1:] -= u1[:, i, i + 1:, None] * e[:, None, :]
            errors[:, i] = e
        if i2 < k:
            w[:, i2:] -= np.matmul(u[:, i1:i2, i2:].transpose(0, 2, 1), errors)


def _choose(w1, pivots1, mask, i1, i2, picks, k) -> int:
    """Mark the block's share of the `picks` zeros still to choose (beyond those forced), by
    least saliency; returns how many it marked."""
    block_mask = mask[:, i1:i2]
    free_here = block_mask.size - int(block_mask.sum())
    free_rest = mask[:, i1:].size - int(mask[:, i1:].sum())
    share = picks if i2 == k else int(round(picks * free_here / max(free_rest, 1)))
    share = min(share, free_here)
    if share <= 0:
        return 0
    saliency = (w1 / pivots1[:, :, None]) ** 2
    saliency[block_mask] = np.inf  # already zero: not chosen again
    chosen = np.argpartition(saliency.reshape(-1), share - 1)[:share]
    flat = np.zeros(block_mask.size, dtype=bool)
    flat[chosen] = True
    mask[:, i1:i2] |= flat.reshape(block_mask.shape)
    return share


def _choose_run(w, pivots, mask, r, n_m) -> None:
    """Mark the weights of least saliency of the run of inputs starting at r."""
    n, m, segment = n_m
    end = min(r + m, (r // segment + 1) * segment)
    drop = (end - r) - min(n, end - r)
    if drop <= 0:
        return
    saliency = (w[:, r:end] / pivots[:, r:end, None]) ** 2
    saliency[mask[:, r:end]] = -1.0  # zeros that must stay count among the dropped
    order = np.argsort(saliency, axis=1, kind="stable")[:, :drop]
    run = mask[:, r:end]
    np.put_along_axis(run, order, True, axis=1)
    mask[:, r:end] = run


def arguments(w, hessian, view, damping, block) -> tuple:
    """The arguments GPTQ and SparseGPT share, checked: (w as float32, view, H as float64
    ``(groups, inputs, inputs)``, damping, block)."""
    wf = as_float32(w, "w")
    if not np.isfinite(wf).all():
        raise nonfinite_error(wf, "w")
    if view is None:
        if wf.ndim != 2:
            raise ValueError(f"w must be a 2-D (inputs, outputs) matrix unless a view is given, got shape {wf.shape}")
        view = KernelView.linear(wf.shape)
    elif not isinstance(view, KernelView):
        raise TypeError(f"view must be a KernelView, got {type(view).__name__}")
    if view.size != wf.size:
        raise ValueError(f"view is of a kernel of {view.size} weights, w has {wf.size}")
    groups, k, _ = view.matrix_shape
    h = hessian.matrix() if isinstance(hessian, Hessian) else np.asarray(hessian)
    if h.dtype.kind not in "fiu":
        raise TypeError(f"hessian must be a Hessian or an array of real numbers, got dtype {h.dtype}")
    h = np.array(h, dtype=np.float64)  # a copy: the factorisation overwrites it
    if h.ndim == 2:
        h = h[None]
    if h.shape != (groups, k, k):
        raise ValueError(f"hessian must be of shape ({groups}, {k}, {k})" + (f" or ({k}, {k})" if groups == 1 else "")
                         + f" for this view, got {h.shape}")
    if not np.isfinite(h).all():
        raise nonfinite_error(h, "hessian")
    damping = check_real(damping, "damping")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    return wf, view, h, damping, check_int(block, "block", 1)
