"""Facts shared by the fast functions and their NumPy references: code ranges, the scale-search
grid, and how an array is cut into groups along an axis."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

#: Clipping ratios of ``method="mse"``: 64 evenly spaced in (0.3, 1], largest first, so that
#: ties keep the min/max scale (ratio 1).
MSE_RATIOS = (1.0 - np.arange(64) * (0.7 / 64)).astype(np.float32)
#: Groups of at least MSE_FULL_BELOW elements search the ratios coarse to fine: every 16th from
#: the first, then the two ratios 8 away from the best so far, then 4, 2 and 1 away: 12 of the
#: 64, their error curve being smooth; smaller groups try all.  Either way the first ratio with
#: the least error among those tried wins, so the result is never worse than min/max.
MSE_STEPS = np.array([16, 8, 4, 2, 1], dtype=np.int32)
MSE_FULL_BELOW = 1024

#: Default percentile of ``method="percentile"``.
DEFAULT_PERCENTILE = 99.99


class Scheme(NamedTuple):
    """How codes are laid out for one bit width."""

    qmin: int
    qmax: int
    dtype: type
    symmetric: bool  # narrow signed range and zero point 0
    fixed: bool  # full signed range, scale 2^-frac_bits


def scheme(bits: int, symmetric: bool = True, fixed: bool = False) -> Scheme:
    """The code range and dtype: narrow signed, full signed (fixed point) or unsigned."""
    half = 1 << (bits - 1)
    if fixed:
        return Scheme(-half, half - 1, np.int8, True, True)
    if symmetric:
        return Scheme(-(half - 1), half - 1, np.int8, True, False)
    return Scheme(0, (1 << bits) - 1, np.uint8, False, False)


class Groups(NamedTuple):
    """x viewed as (outer, n, inner) with the quantization axis in the middle.

    per-tensor: axis None; per-axis: block None; blocked: blocks of `block` along the axis.
    """

    shape: tuple
    axis: int | None
    block: int | None
    outer: int
    n: int
    inner: int

    @property
    def scale_shape(self) -> tuple:
        """ONNX's scale shape: () per tensor, (n,) per axis, x's shape with n -> ceil(n / B) blocked."""
        if self.axis is None:
            return ()
        if self.block is None:
            return (self.n,)
        return self.shape[: self.axis] + (-(-self.n // self.block),) + self.shape[self.axis + 1 :]

    @property
    def count(self) -> int:
        return math.prod(self.scale_shape)

    def matrix(self, x: np.ndarray) -> np.ndarray:
        """A (groups, elements) float64 copy of x, short blocks padded with NaN (for percentiles)."""
        x3 = np.asarray(x, dtype=np.float64).reshape(self.outer, self.n, self.inner)
        if self.axis is None:
            return x3.reshape(1, -1)
        if self.block is None:
            return np.moveaxis(x3, 1, 0).reshape(self.n, self.outer * self.inner)
        nb = -(-self.n // self.block)
        padded = np.full((self.outer, nb * self.block, self.inner), np.nan)
        padded[:, : self.n] = x3
        blocks = padded.reshape(self.outer, nb, self.block, self.inner).transpose(0, 1, 3, 2)
        return blocks.reshape(-1, self.block)


def groups(shape: tuple, axis: int | None, block: int | None) -> Groups:
    """The grouping of an array of `shape`; axis must be normalised already."""
    if axis is None:
        return Groups(tuple(shape), None, None, 1, math.prod(shape), 1)
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    return Groups(tuple(shape), axis, block, outer, shape[axis], inner)
