"""A kernel seen as the stack of matrices its layer multiplies input rows with."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KernelView"]


@dataclass(frozen=True)
class KernelView:
    """How a kernel maps to matrices ``(groups, inputs, outputs)``: output channel ``c`` of group
    ``g`` is ``rows[:, g, :] @ matrix[g, :, c]``.

    The kernel (any array of ``math.prod(split)`` elements, read in C order) is reshaped to
    `split`, the axes in `flip` are reversed, and the axes are ordered `groups`, `inputs`,
    `outputs`, each set flattened in the order given.

    Parameters
    ----------
    split : tuple of int
        The kernel's shape, with axes split where a group and its channels share one axis.
    groups, inputs, outputs : tuple of int
        Axes of `split`: every axis in exactly one of them.
    flip : tuple of int
        Axes of `split` reversed first (the spatial axes of a transposed convolution).
    segment : int, optional
        N:M runs along the inputs restart every `segment` inputs (default: they run over all).

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.calibration import KernelView
    >>> view = KernelView.depthwise((3, 3, 8, 2))       # (kh, kw, channels, multiplier)
    >>> view.matrix_shape                                # one 9 x 2 matrix per input channel
    (8, 9, 2)
    >>> k = np.arange(144.0).reshape(3, 3, 8, 2)
    >>> bool((view.kernel(view.matrix(k)) == k).all())
    True
    """

    split: tuple
    groups: tuple = ()
    inputs: tuple = (0,)
    outputs: tuple = (1,)
    flip: tuple = ()
    segment: int | None = None

    def __post_init__(self):
        split = tuple(int(n) for n in self.split)
        object.__setattr__(self, "split", split)
        axes = sorted(self.groups + self.inputs + self.outputs)
        if axes != list(range(len(split))) or not set(self.flip) <= set(axes):
            raise ValueError(f"groups {self.groups}, inputs {self.inputs} and outputs {self.outputs} must "
                             f"name each axis of {split} once")
        if self.segment is not None and (self.segment < 1 or self.inputs_size % self.segment):
            raise ValueError(f"segment must divide the {self.inputs_size} inputs, got {self.segment}")

    # ---- the layouts of the common layers -------------------------------------------------

    @classmethod
    def linear(cls, shape: tuple) -> KernelView:
        """The last axis holds the outputs, the others the inputs: Dense ``(in, out)``, Conv
        ``(*kernel, in, out)``, RNN kernels, pointwise kernels."""
        n = len(shape)
        return cls(tuple(shape), (), tuple(range(n - 1)), (n - 1,))

    @classmethod
    def grouped(cls, shape: tuple, groups: int) -> KernelView:
        """A grouped convolution ``(*kernel, in / groups, out)``: group g maps its inputs to
        outputs ``g * out / groups ...`` (the outputs axis is split as (groups, out / groups))."""
        if groups == 1:
            return cls.linear(shape)
        n = len(shape)
        split = tuple(shape[:-1]) + (groups, shape[-1] // groups)
        return cls(split, (n - 1,), tuple(range(n - 1)), (n,))

    @classmethod
    def depthwise(cls, shape: tuple) -> KernelView:
        """A depthwise kernel ``(*kernel, channels, multiplier)``: one group per input channel,
        the kernel taps as inputs, the multiplier as outputs (output ``c * multiplier + j``)."""
        n = len(shape)
        return cls(tuple(shape), (n - 2,), tuple(range(n - 2)), (n - 1,))

    @classmethod
    def transposed(cls, shape: tuple) -> KernelView:
        """A transposed convolution ``(*kernel, out, in)``: the convolution of the stride-dilated
        input with the spatially flipped kernel, inputs ``(*kernel, in)``, N:M runs along `in`."""
        n = len(shape)
        spatial = tuple(range(n - 2))
        return cls(tuple(shape), (), spatial + (n - 1,), (n - 2,), flip=spatial, segment=shape[-1])

    # ---- shapes and conversions -------------------------------------------------------------

    @property
    def size(self) -> int:
        return math.prod(self.split)

    @property
    def inputs_size(self) -> int:
        return math.prod(self.split[a] for a in self.inputs)

    @property
    def matrix_shape(self) -> tuple:
        """(groups, inputs, outputs)."""
        g = math.prod(self.split[a] for a in self.groups)
        c = math.prod(self.split[a] for a in self.outputs)
        return (g, self.inputs_size, c)

    @property
    def _order(self) -> tuple:
        return self.groups + self.inputs + self.outputs

    def matrix(self, kernel, dtype=np.float64) -> np.ndarray:
        """A C-contiguous copy of `kernel` (or of any array of its elements) as the matrices."""
        a = np.asarray(kernel).reshape(self.split)
        if self.flip:
            a = np.flip(a, self.flip)
        return np.ascontiguousarray(a.transpose(self._order), dtype=dtype).reshape(self.matrix_shape)

    def kernel(self, matrix, shape: tuple | None = None, dtype=np.float32) -> np.ndarray:
        """The matrices back as a C-contiguous kernel of `shape` (default: `split`)."""
        a = np.asarray(matrix).reshape(tuple(self.split[i] for i in self._order))
        a = a.transpose(np.argsort(self._order))
        if self.flip:
            a = np.flip(a, self.flip)
        return np.ascontiguousarray(a, dtype=dtype).reshape(self.split if shape is None else shape)
