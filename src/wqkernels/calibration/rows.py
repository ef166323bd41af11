"""The input rows of convolutions and einsum layers: what their kernels are multiplied with."""
from __future__ import annotations

import math
import re

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._checks import check_float_array, check_int
from .views import KernelView

__all__ = ["patches", "einsum_view", "einsum_subscripts", "PADDINGS"]

PADDINGS = ("valid", "same", "causal")


def patches(x, kernel_size, strides=1, padding="valid", dilation=1, input_dilation=1, groups: int = 1) -> np.ndarray:
    """The input patches of a channels-last convolution, one row per output position.

    Parameters
    ----------
    x : array_like of float
        ``(n, *spatial, channels)``.
    kernel_size, strides, dilation, input_dilation : int or tuple of int
        Per spatial axis (an int for all); `input_dilation` inserts ``d - 1`` zeros between
        input positions (a transposed convolution is the convolution of its stride-dilated input).
    padding : {"valid", "same", "causal"} or sequence of (before, after)
        "same" pads ``max((out - 1) * stride + span - length, 0)`` with the smaller half before
        (as TensorFlow and JAX do); "causal" pads ``span - 1`` before.
    groups : int
        Channel groups: group g sees channels ``g * channels / groups ...``; depthwise
        convolutions have one group per channel.

    Returns
    -------
    ndarray of float32, ``(n * positions, groups, prod(kernel_size) * channels / groups)``
        Each row in the order of a ``(*kernel_size, channels / groups)`` kernel flattened in C
        order, so that ``rows[:, g] @ kernel_matrix[g]`` is the convolution.

    Examples
    --------
    >>> import numpy as np
    >>> from wqkernels.calibration import patches
    >>> x = np.arange(5.0).reshape(1, 5, 1)
    >>> patches(x, 3, padding="same")[:, 0]
    array([[0., 0., 1.],
           [0., 1., 2.],
           [1., 2., 3.],
           [2., 3., 4.],
           [3., 4., 0.]], dtype=float32)
    """
    x = np.asarray(check_float_array(x), dtype=np.float32)
    if x.ndim < 3:
        raise ValueError(f"x must be (n, *spatial, channels), got shape {x.shape}")
    n, *spatial, channels = x.shape
    d = len(spatial)
    kernel_size = _per_axis(kernel_size, d, "kernel_size")
    strides = _per_axis(strides, d, "strides")
    dilation = _per_axis(dilation, d, "dilation")
    input_dilation = _per_axis(input_dilation, d, "input_dilation")
    groups = check_int(groups, "groups", 1)
    if channels % groups:
        raise ValueError(f"groups must divide the {channels} channels, got {groups}")
    if any(r > 1 for r in input_dilation):
        dilated = np.zeros((n, *[(s - 1) * r + 1 if s else 0 for s, r in zip(spatial, input_dilation)], channels),
                           np.float32)
        dilated[(slice(None), *[slice(None, None, r) for r in input_dilation])] = x
        x, spatial = dilated, list(dilated.shape[1:-1])
    spans = [(k - 1) * r + 1 for k, r in zip(kernel_size, dilation)]
    pads = _pads(padding, spatial, spans, strides)
    x = _padded(x, pads)
    windows = sliding_window_view(x, spans, axis=tuple(range(1, d + 1)))  # (n, *positions, c, *spans)
    windows = windows[(slice(None), *[slice(None, None, s) for s in strides], slice(None),
                       *[slice(None, None, r) for r in dilation])]
    order = (0, *range(1, d + 1), *range(d + 2, 2 * d + 2), d + 1)  # (n, *positions, *kernel, c)
    taps = math.prod(kernel_size)
    rows = np.ascontiguousarray(windows.transpose(order)).reshape(-1, taps, groups, channels // groups)
    return np.ascontiguousarray(rows.transpose(0, 2, 1, 3)).reshape(-1, groups, taps * (channels // groups))


def _per_axis(value, d: int, name: str) -> tuple:
    values = (value,) * d if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != d:
        raise ValueError(f"{name} must have one value per spatial axis ({d}), got {value!r}")
    return tuple(check_int(v, name, 1) for v in values)


def _pads(padding, spatial, spans, strides) -> list:
    if isinstance(padding, str):
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)} or (before, after) pairs, got {padding!r}")
        if padding == "valid":
            return [(0, 0)] * len(spatial)
        if padding == "causal":
            return [(span - 1, 0) for span in spans]
        out = []
        for length, span, s in zip(spatial, spans, strides):
            total = max((-(-length // s) - 1) * s + span - length, 0)
            out.append((total // 2, total - total // 2))
        return out
    pairs = [tuple(int(v) for v in p) for p in padding]
    if len(pairs) != len(spatial) or any(len(p) != 2 for p in pairs):
        raise ValueError(f"padding must have one (before, after) pair per spatial axis, got {padding!r}")
    return pairs


def _padded(x: np.ndarray, pads: list) -> np.ndarray:
    """x padded with zeros; negative padding crops (as JAX allows)."""
    crop = tuple([slice(None)] + [slice(max(-lo, 0), x.shape[i + 1] - max(-hi, 0)) for i, (lo, hi) in enumerate(pads)]
                 + [slice(None)])
    grow = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)]
    return np.pad(x[crop], grow)


def einsum_subscripts(equation) -> tuple[str, str, str] | None:
    """The (input, kernel, output) subscripts of an einsum layer's equation (``"abc,cd->abd"``;
    spaces ignored, an ellipsis kept as ``...`` in the input and output), or None when the
    equation is not of that form."""
    match = re.fullmatch(r"([a-zA-Z.]*),([a-zA-Z]+)->([a-zA-Z.]*)", str(equation or "").replace(" ", ""))
    if match is None:
        return None
    if any(sub.count("...") > 1 or sub.replace("...", "").count(".") for sub in (match[1], match[3])):
        return None
    return match[1], match[2], match[3]


def einsum_view(equation: str, input_ndim: int, kernel_shape: tuple) -> tuple[KernelView, tuple, tuple]:
    """The kernel view of an einsum layer ``y = einsum(equation, x, kernel)``, and how its input
    becomes rows.

    Kernel axes that are also in the input and the output are groups (each index its own
    matrix), those in the input only are the inputs (contracted), those in the output only are
    the outputs.

    Returns
    -------
    (view, order, summed)
        The rows are ``x.sum(axis=summed)`` transposed to `order` and reshaped to
        ``(-1, groups, inputs)`` (`summed`: input axes in neither the kernel nor the output).

    Raises
    ------
    ValueError
        The equation is not of the form ``input,kernel->output``, or the kernel has an axis in
        neither the input nor the output (a sum over a kernel axis is not a linear layer).

    Examples
    --------
    >>> from wqkernels.calibration import einsum_view
    >>> view, order, summed = einsum_view("abc,cde->abde", 3, (16, 4, 8))   # attention's query
    >>> view.matrix_shape, order, summed
    ((1, 16, 32), (0, 1, 2), ())
    """
    parts = einsum_subscripts(equation)
    if parts is None:
        raise ValueError(f"equation must be 'input,kernel->output' (an ellipsis only in the input and output), "
                         f"got {equation!r}")
    x_sub, k_sub, y_sub = parts
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation][:max(input_ndim, 0)]
    if "..." in x_sub:
        extra = "".join(free[:input_ndim - len(x_sub) + 3])
        x_sub, y_sub = x_sub.replace("...", extra), y_sub.replace("...", extra)
    if len(x_sub) != input_ndim or len(k_sub) != len(kernel_shape):
        raise ValueError(f"equation {equation!r} does not fit an input of {input_ndim} axes and a kernel "
                         f"of shape {tuple(kernel_shape)}")
    groups = tuple(i for i, c in enumerate(k_sub) if c in x_sub and c in y_sub)
    inputs = tuple(i for i, c in enumerate(k_sub) if c in x_sub and c not in y_sub)
    outputs = tuple(i for i, c in enumerate(k_sub) if c not in x_sub and c in y_sub)
    if len(groups) + len(inputs) + len(outputs) != len(k_sub):
        raise ValueError(f"equation {equation!r}: a kernel axis in neither the input nor the output")
    summed = tuple(i for i, c in enumerate(x_sub) if c not in k_sub and c not in y_sub)
    dropped = {x_sub[i] for i in summed}
    kept = [c for c in x_sub if c not in dropped]
    batch = [kept.index(c) for c in kept if c not in k_sub]
    order = tuple(batch + [kept.index(k_sub[i]) for i in groups] + [kept.index(k_sub[i]) for i in inputs])
    return KernelView(tuple(kernel_shape), groups, inputs, outputs), order, summed
