"""A layer's outputs against the float model's: the kernel refitted to them before it is
compressed, and the mean gap a bias can take back after."""
from __future__ import annotations

import numpy as np

from .._checks import as_float32, check_real
from .hessian import Hessian
from .views import KernelView

__all__ = ["refit", "mean_output_error"]


def refit(w, hessian: Hessian, *, view: KernelView | None = None, damping: float = 0.01) -> np.ndarray:
    """The kernel whose outputs on the layer's rows come closest to the float layer's outputs.

    Where the layers before have been compressed, the layer's rows ``X`` are no longer the
    float model's ``X_f``; compressing ``w`` as if ``X w`` were the goal keeps the error they
    bring.  The kernel that fits the float outputs instead, held near `w`, is

        ``argmin_v |X v - X_f w|² + λ |v - w|² = (H + λI)⁻¹ (XᵀX_f w / n + λ w)``

    per group, with ``H = XᵀX / n`` and ``λ = damping · mean(diag H)``; GPTQ or SparseGPT of it
    then aim at the float outputs.  Inputs that are never non-zero in ``X`` keep their weights.

    Parameters
    ----------
    w : array_like of float
        The float kernel.
    hessian : Hessian
        Filled with both the rows and their `targets` (the float model's rows).
    view : KernelView, optional
        How `w` maps to the layer's matrices; default: `w` is ``(inputs, outputs)``.
    damping : float
        λ as a fraction of the mean of H's diagonal.

    Returns
    -------
    ndarray of float32, w's shape

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.calibration import Hessian, refit
    >>> rng = np.random.default_rng(0)
    >>> xf = rng.standard_normal((500, 4))
    >>> x = xf * [1.0, 1.0, 0.5, 1.0]              # the third input arrives at half its size
    >>> h = Hessian(4); h.add(x, targets=xf)
    >>> w = np.ones((4, 1), np.float32)
    >>> refit(w, h, damping=0.0).ravel().round(3)  # its weight doubles
    array([1., 1., 2., 1.], dtype=float32)
    """
    if not isinstance(hessian, Hessian) or hessian.cross() is None:
        raise TypeError("hessian must be a Hessian filled with targets (the float model's rows)")
    wf = as_float32(w, "w")
    view = KernelView.linear(wf.shape) if view is None else view
    if view.size != wf.size or view.matrix_shape[:2] != (hessian.groups, hessian.inputs):
        raise ValueError(f"hessian is of {hessian.groups} group(s) of {hessian.inputs} inputs, the view of "
                         f"{view.matrix_shape[0]} of {view.matrix_shape[1]}")
    damping = check_real(damping, "damping")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    h, cross = hessian.matrix(), hessian.cross()
    matrix = view.matrix(wf)
    idx = np.arange(h.shape[-1])
    diag = h[:, idx, idx]
    lam = damping * diag.mean(axis=1)
    regularised = h + lam[:, None, None] * np.eye(h.shape[-1])
    dead = diag <= 0
    regularised[:, idx, idx] += dead  # a dead input's equation becomes v = w
    rhs = cross @ matrix + (lam[:, None] + dead)[:, :, None] * matrix
    return view.kernel(np.linalg.solve(regularised, rhs), wf.shape)


def mean_output_error(hessian, before, after, view: KernelView | None = None) -> np.ndarray:
    """How much the layer's outputs fall on average from the float layer's to the compressed:
    ``mean(x_f) · before - mean(x) · after`` per group and output, float64 ``(groups, outputs)``.

    ``x_f`` are the float model's rows when the Hessian has them (else the rows themselves, so
    that only the kernel's change counts).  Added to the layer's bias (output
    ``g * outputs + c``), it restores the mean of every output over the calibration inputs.

    Parameters
    ----------
    hessian : Hessian or array_like
        A Hessian, or the mean row ``(groups, inputs)`` (1-D for one group).
    before, after : array_like
        The kernel before and after compression.
    view : KernelView, optional
        As for :func:`refit`.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.calibration import mean_output_error
    >>> mean_output_error([1.0, 2.0], np.eye(2), np.zeros((2, 2)))
    array([[1., 2.]])
    """
    if isinstance(hessian, Hessian):
        mean = hessian.mean
        target = mean if hessian.target_mean is None else hessian.target_mean
    else:
        mean = target = np.asarray(hessian, dtype=np.float64)
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape, got {before.shape} and {after.shape}")
    view = KernelView.linear(before.shape) if view is None else view
    groups, inputs, _ = view.matrix_shape
    if mean.size != groups * inputs:
        raise ValueError(f"the mean row must hold {groups} x {inputs} values for this view, got {mean.size}")
    mean, target = mean.reshape(groups, inputs), target.reshape(groups, inputs)
    return np.einsum("gk,gkc->gc", target, view.matrix(before)) - np.einsum("gk,gkc->gc", mean, view.matrix(after))
