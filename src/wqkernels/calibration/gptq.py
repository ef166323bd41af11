"""GPTQ: weights rounded onto the grid of :func:`wqkernels.quantize` one input at a time, each
rounding error compensated by the weights of the inputs not yet rounded."""
from __future__ import annotations

import numpy as np

from .._checks import check_real
from .._schemes import groups, scheme
from ..quantization import QuantizedArray, quantize
from .solve import Grid, arguments, inverse_cholesky, reconstruct
from .views import KernelView

__all__ = ["gptq", "gptq_on_grid"]


def gptq(w, hessian, bits: int = 4, *, view: KernelView | None = None, symmetric: bool = True,
         axis: int | None = -1, block_size: int | None = None, method: str = "minmax", damping: float = 0.01,
         act_order: bool = False, block: int = 128) -> QuantizedArray:
    """Quantize a kernel so that its layer's outputs on the calibration inputs change least.

    The grid is the one :func:`wqkernels.quantize` gives `w` with the same options: the same
    scales and zero points, per tensor, per `axis` or in blocks, symmetric or asymmetric, found
    by `method`.  Only the rounding differs: the inputs of the layer are taken in order (or by
    decreasing ``H_ii`` with `act_order`), and each input's weights, once rounded, have their
    error ``(w - q) / U_ii`` pushed onto the weights of the inputs still to come, with
    ``UᵀU = (H + λI)⁻¹`` (GPTQ).  Weights that are zero stay zero.

    Parameters
    ----------
    w : array_like of float
        The kernel, in the shape the grid options refer to (e.g. ``(inputs, outputs)``).
    hessian : Hessian or array_like
        The Gram matrix of the layer's inputs, ``(groups, inputs, inputs)`` (or 2-D for one group).
    bits, symmetric, axis, block_size, method
        As for :func:`wqkernels.quantize`; `axis` defaults to the last (one scale per output of
        an ``(inputs, outputs)`` matrix).
    view : KernelView, optional
        How `w` maps to the layer's matrices; default: `w` is ``(inputs, outputs)``.
    damping : float
        λ as a fraction of the mean of H's diagonal.
    act_order : bool
        Round the inputs of largest ``H_ii`` first.
    block : int
        Inputs per lazy block (speed only).

    Returns
    -------
    QuantizedArray
        Codes of w's shape with the grid's scales and zero points:
        ``quantize(q.dequantize(), bits, ..., scale=q.scale, zero_point=q.zero_point)`` gives
        the same codes back.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels import quantize
    >>> from wqkernels.calibration import Hessian
    >>> from wqkernels.calibration.gptq import gptq
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((256, 16)) @ rng.standard_normal((16, 16))   # correlated inputs
    >>> w = rng.standard_normal((16, 8)).astype(np.float32)
    >>> h = Hessian(16); h.add(x)
    >>> q = gptq(w, h, bits=3)
    >>> rtn = quantize(w, bits=3, axis=-1)
    >>> bool((q.scale == rtn.scale).all())                                  # the same grid
    True
    >>> err = lambda v: float(np.square(x @ (v - w)).mean())
    >>> err(q.dequantize()) < err(rtn.dequantize())                          # better outputs
    True
    """
    wf, view, h, damping, block = arguments(w, hessian, view, damping, block)
    grid_of_w = quantize(wf, bits, symmetric=symmetric, axis=axis, block_size=block_size, method=method)
    options = {"symmetric": symmetric, "axis": grid_of_w.axis, "block_size": grid_of_w.block_size}
    sch = scheme(grid_of_w.bits, bool(symmetric))
    grid = Grid(_on_view(_full(grid_of_w.scale, wf.shape, options), view),
                _on_view(_full(grid_of_w.zero_point.astype(np.float32), wf.shape, options), view),
                float(sch.qmin), float(sch.qmax))
    values = _rounded(wf, view, h, grid, damping, act_order, block)
    return quantize(values, grid_of_w.bits, scale=grid_of_w.scale, zero_point=grid_of_w.zero_point, **options)


def gptq_on_grid(w, hessian, scale, zero_point, qmin: float, qmax: float, *, view: KernelView | None = None,
                 damping: float = 0.01, act_order: bool = False, block: int = 128) -> np.ndarray:
    """Round a kernel onto a grid given weight by weight, so that its layer's outputs on the
    calibration inputs change least.

    Weight ``w`` may take the values ``(q - zero_point) * scale`` for the integers ``q`` in
    ``[qmin, qmax]``, with its own `scale` and `zero_point`: any affine grid, such as the one of a
    storage with a layout of its own (Keras's quantized layers).  The rounding is :func:`gptq`'s:
    ``clip(rint(w / scale) + zero_point, qmin, qmax)``, one input at a time, each error pushed
    onto the inputs still to come.  Weights that are zero stay zero (``q = zero_point``).

    Parameters
    ----------
    w, hessian, view, damping, act_order, block
        As for :func:`gptq`.
    scale, zero_point : array_like of float
        Broadcast against `w`: positive finite scales, zero points in ``[qmin, qmax]``.
    qmin, qmax : float
        The lowest and highest code.

    Returns
    -------
    ndarray of float32
        The rounded kernel, of w's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.calibration import Hessian, gptq_on_grid
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((256, 16)) @ rng.standard_normal((16, 16))
    >>> w = rng.standard_normal((16, 8)).astype(np.float32)
    >>> h = Hessian(16); h.add(x)
    >>> scale = np.abs(w).max(axis=0) / 7                       # one scale per output
    >>> q = gptq_on_grid(w, h, scale, 0, -8, 7)
    >>> bool(np.all(np.rint(q / scale) * scale == q))            # on the grid
    True
    """
    wf, view, h, damping, block = arguments(w, hessian, view, damping, block)
    qmin, qmax = check_real(qmin, "qmin"), check_real(qmax, "qmax")
    if not qmin < qmax:
        raise ValueError(f"qmin must be below qmax, got {qmin} and {qmax}")
    full = []
    for name, a in (("scale", scale), ("zero_point", zero_point)):
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be an array of numbers, got dtype {a.dtype}")
        try:
            a = np.broadcast_to(a.astype(np.float32), wf.shape)
        except ValueError:
            raise ValueError(f"{name} of shape {a.shape} does not broadcast against w of shape {wf.shape}") from None
        full.append(a)
    if not (np.isfinite(full[0]) & (full[0] > 0)).all():
        raise ValueError("scale must be positive and finite")
    if not ((full[1] >= qmin) & (full[1] <= qmax)).all():
        raise ValueError(f"zero_point must be in [{qmin:g}, {qmax:g}]")
    grid = Grid(_on_view(full[0], view), _on_view(full[1], view), qmin, qmax)
    return _rounded(wf, view, h, grid, damping, act_order, block)


def _rounded(wf: np.ndarray, view: KernelView, h: np.ndarray, grid: Grid, damping: float, act_order: bool,
             block: int) -> np.ndarray:
    """The GPTQ loop: `wf` (float32) rounded onto `grid` (matrices of the view) from the Hessian
    `h` (float64, overwritten); float32 of wf's shape."""
    matrix = view.matrix(wf)
    zero = matrix == 0
    order = None
    if act_order:
        idx = np.arange(h.shape[-1])
        order = np.argsort(-h[:, idx, idx], axis=1, kind="stable")  # per group
        matrix, zero = _rows(matrix, order), _rows(zero, order)
        grid = Grid(_rows(grid.scale, order), _rows(grid.zero_point, order), grid.qmin, grid.qmax)
        h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], axis=1), order[:, None, :], axis=2)
    reconstruct(matrix, inverse_cholesky(h, damping), grid=grid, zero=zero, block=block)
    if order is not None:
        matrix = _rows(matrix, np.argsort(order, axis=1))
    return view.kernel(matrix, wf.shape)


def _full(per_group: np.ndarray, shape: tuple, options: dict) -> np.ndarray:
    """A scale or zero point of each group of the grid of :func:`wqkernels.quantize`, one per
    weight (float32, broadcast where it can be)."""
    g = groups(shape, options["axis"], options["block_size"])
    a = np.asarray(per_group, dtype=np.float32)
    if g.axis is None:
        return np.broadcast_to(a, shape)
    if g.block is None:
        return np.broadcast_to(a.reshape([n if i == g.axis else 1 for i, n in enumerate(shape)]), shape)
    return np.repeat(a, g.block, axis=g.axis)[tuple(slice(0, n) for n in shape)]


def _on_view(full: np.ndarray, view: KernelView) -> np.ndarray:
    """One value per weight as float32 matrices of the view (axis 1 of length 1 when it does not
    vary along the inputs)."""
    matrix = view.matrix(full, dtype=np.float32)
    return matrix[:, :1].copy() if (matrix == matrix[:, :1]).all() else matrix


def _rows(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """a's inputs (axis 1) in `order` (one order per group); arrays constant along them unchanged."""
    if a.shape[1] == 1:
        return a
    if a.shape[0] != order.shape[0]:
        a = np.broadcast_to(a, (order.shape[0],) + a.shape[1:])
    return np.take_along_axis(a, order[:, :, None], axis=1)
