"""SparseGPT: weights zeroed by their saliency for the layer's outputs, the others adjusted to
make up for them."""
from __future__ import annotations

import math

import numpy as np

from .._checks import check_fraction, check_int
from .solve import arguments, inverse_cholesky, nm_block, reconstruct
from .views import KernelView

__all__ = ["sparsegpt"]


def sparsegpt(w, hessian, sparsity: float | None = None, *, n: int | None = None, m: int | None = None,
              view: KernelView | None = None, damping: float = 0.01, block: int = 128) -> np.ndarray:
    """Prune a kernel so that its layer's outputs on the calibration inputs change least.

    The layer's inputs are taken in order; in each lazy block of them the block's share of the
    zeros goes to the weights of least saliency ``w² / U_ii²`` (``UᵀU = (H + λI)⁻¹``), and
    every zeroed weight's error is pushed onto the weights of the inputs still to come
    (SparseGPT).  Weights that are zero already stay zero and count among the zeros.

    Parameters
    ----------
    w : array_like of float
        The kernel.
    hessian : Hessian or array_like
        The Gram matrix of the layer's inputs, ``(groups, inputs, inputs)`` (or 2-D).
    sparsity : float, optional
        Zero exactly ``floor(sparsity * w.size)`` weights (as :func:`wqkernels.prune` does), or
        the zeros already there when they are more.
    n, m : int, optional
        Instead: keep at most n of every m consecutive inputs of each output (N:M along the
        inputs, runs restarting every ``view.segment`` inputs; a short last run keeps
        ``min(n, its length)``), as :func:`wqkernels.prune_n_m` along the input axis.
    view : KernelView, optional
        How `w` maps to the layer's matrices; default: `w` is ``(inputs, outputs)``.
    damping, block
        As for :func:`gptq`.

    Returns
    -------
    ndarray of float32, w's shape

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels import prune
    >>> from wqkernels.calibration import Hessian
    >>> from wqkernels.calibration.sparsegpt import sparsegpt
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((256, 16)) @ rng.standard_normal((16, 16))
    >>> w = rng.standard_normal((16, 8)).astype(np.float32)
    >>> h = Hessian(16); h.add(x)
    >>> y = sparsegpt(w, h, 0.5)
    >>> int((y == 0).sum())
    64
    >>> err = lambda v: float(np.square(x @ (v - w)).mean())
    >>> err(y) < err(prune(w, 0.5))
    True
    """
    wf, view, h, damping, block = arguments(w, hessian, view, damping, block)
    matrix = view.matrix(wf)
    inputs = matrix.shape[1]
    if (sparsity is None) == (n is None and m is None):
        raise ValueError("give sparsity, or n and m, not both")
    if sparsity is not None:
        count = math.floor(check_fraction(sparsity, "sparsity") * wf.size)
        reconstruct(matrix, inverse_cholesky(h, damping), zero=matrix == 0, count=count, block=block)
    else:
        if n is None or m is None:
            raise ValueError("N:M pruning needs both n and m")
        m = check_int(m, "m", 1)
        n = check_int(n, "n", 0, m)
        segment = view.segment or inputs
        reconstruct(matrix, inverse_cholesky(h, damping), zero=matrix == 0, n_m=(n, m, segment),
                    block=nm_block(block, m, segment))
    return view.kernel(matrix, wf.shape)
