"""The Gram matrix of a layer's input rows, accumulated one batch at a time."""
from __future__ import annotations

import numpy as np

from .._checks import check_int, nonfinite_error

__all__ = ["Hessian"]

#: rows multiplied at once: bounds the float32 temporaries of a batch of patches
_ROWS = 1 << 14


class Hessian:
    """``H = XᵀX / n`` and the mean row of the inputs of a layer, per group of output channels.

    Rows are added in batches (:meth:`add`); only the ``(groups, inputs, inputs)`` sums are kept.
    The products are float32 matrix products of at most 16384 rows, summed in float64.  Given
    with each batch the rows the float model gives the layer (`targets`, row for row), it also
    keeps ``XᵀX_f / n`` and their mean, for :func:`refit` and :func:`mean_output_error`.

    Parameters
    ----------
    inputs : int
        Length of a row (the layer's inputs: features, or kernel taps times channels).
    groups : int
        Independent groups (a depthwise convolution's channels), each with its own rows.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.calibration import Hessian
    >>> h = Hessian(3)
    >>> h.add(np.array([[1.0, 0.0, 2.0], [1.0, 2.0, 0.0]]))
    >>> h.matrix()[0]
    array([[1., 1., 1.],
           [1., 2., 0.],
           [1., 0., 2.]])
    >>> h.mean[0]
    array([1., 1., 1.])
    """

    def __init__(self, inputs: int, groups: int = 1):
        self.inputs = check_int(inputs, "inputs", 1)
        self.groups = check_int(groups, "groups", 1)
        self._sum = np.zeros((self.groups, self.inputs, self.inputs))
        self._total = np.zeros((self.groups, self.inputs))
        self._cross = self._target_total = None
        self.count = 0

    def add(self, rows, targets=None) -> None:
        """Add input rows: ``(n, inputs)`` with one group, or ``(n, groups, inputs)``; and the
        float model's rows for the same outputs, of the same shape (always, or never)."""
        x = self._checked(rows, "rows")
        t = None if targets is None else self._checked(targets, "targets")
        if t is not None and t.shape != x.shape:
            raise ValueError(f"targets must have the shape of rows {x.shape}, got {t.shape}")
        if self.count and (t is None) != (self._cross is None):
            raise ValueError("give targets with every batch of rows or with none")
        if t is not None and self._cross is None:
            self._cross = np.zeros_like(self._sum)
            self._target_total = np.zeros_like(self._total)
        for start in range(0, x.shape[0], _ROWS):
            part = self._part(x, start, "rows")
            self._sum += np.matmul(part.transpose(0, 2, 1), part)
            self._total += part.sum(axis=1, dtype=np.float64)
            if t is not None:
                target = self._part(t, start, "targets")
                self._cross += np.matmul(part.transpose(0, 2, 1), target)
                self._target_total += target.sum(axis=1, dtype=np.float64)
        self.count += x.shape[0]

    def _checked(self, rows, name: str) -> np.ndarray:
        x = np.asarray(rows)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be real numbers, got dtype {x.dtype}")
        if x.ndim == 2 and self.groups == 1:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[1:] != (self.groups, self.inputs):
            raise ValueError(f"{name} must be of shape (n, {self.groups}, {self.inputs})"
                             + (f" or (n, {self.inputs})" if self.groups == 1 else "") + f", got {x.shape}")
        return x

    @staticmethod
    def _part(x: np.ndarray, start: int, name: str) -> np.ndarray:
        """Rows start.. of x, float32, as (groups, n, inputs)."""
        part = np.ascontiguousarray(x[start:start + _ROWS], dtype=np.float32)
        if not np.isfinite(part).all():
            raise nonfinite_error(part, name)
        return part.transpose(1, 0, 2)

    def matrix(self) -> np.ndarray:
        """``XᵀX / n`` per group, float64 ``(groups, inputs, inputs)``; zeros before any row."""
        return self._sum / max(self.count, 1)

    def cross(self) -> np.ndarray | None:
        """``XᵀX_f / n`` per group (rows against the targets), or None without targets."""
        return None if self._cross is None else self._cross / max(self.count, 1)

    @property
    def mean(self) -> np.ndarray:
        """The mean row per group, float64 ``(groups, inputs)``."""
        return self._total / max(self.count, 1)

    @property
    def target_mean(self) -> np.ndarray | None:
        """The mean target row per group, or None without targets."""
        return None if self._target_total is None else self._target_total / max(self.count, 1)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._sum, self._total, self._cross, self._target_total) if a is not None)
