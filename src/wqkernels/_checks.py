"""Argument checks shared by the public functions: one-line errors that name the parameter, and
the float arrays (and their bit views) the kernels take."""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

#: The float dtypes the pruning and statistics kernels take, with the unsigned integer of their
#: width: the kernels read a float array through its bits.
BITS = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def check_float_array(x, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of real floats, of any of the float dtypes, unconverted."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be an array of real floats, got dtype {arr.dtype}")
    return arr


def as_float32(x, name: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous float32 array (no copy when it already is one).

    Real floating arrays (float16/32/64, longdouble) are accepted; anything else raises TypeError.
    """
    arr = check_float_array(x, name)
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, refused by the caller
        return np.asarray(arr, dtype=np.float32, order="C")


def float_array(x, name: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous float16, float32 or float64 array (no copy when it already is one)."""
    arr = np.asarray(x)
    if arr.dtype not in BITS:
        raise TypeError(f"{name} must be an array of float16, float32 or float64, got dtype {arr.dtype}")
    return np.asarray(arr, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)


def bits_view(a: np.ndarray) -> np.ndarray:
    """The flat bits of a C-contiguous float array of :data:`BITS`, as the unsigned integer of its width."""
    return a.reshape(-1).view(BITS[a.dtype])


def count_and_first(mask: np.ndarray) -> tuple[int, tuple]:
    """How many elements of boolean `mask` are set, and the index of the first (for errors that
    say how many values are bad and where the first is)."""
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(mask.ravel())), mask.shape))
    return int(np.count_nonzero(mask)), first


def nonfinite_error(x: np.ndarray, name: str = "x") -> ValueError:
    """The error for an array holding NaN or infinity: how many, and where the first is."""
    count, first = count_and_first(~np.isfinite(x))
    where = f"at index {first}" if x.ndim else "(a 0-d array)"
    return ValueError(f"{name} has {count} NaN or infinite value{'s' if count != 1 else ''}; the first is "
                      f"{x[first].item()!r} {where}")


def check_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """An integer parameter (bools refused) within [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = operator.index(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return value


def check_real(value, name: str) -> float:
    """A real number (bools refused, NaN refused) as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def is_real(value) -> bool:
    """Whether `value` is a real number and not a bool (for checks whose message is their own)."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)


def check_bits(bits) -> int:
    """Bit widths the kernels support: 2 to 8."""
    return check_int(bits, "bits", 2, 8)


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """A valid axis index in [0, ndim); negative values count from the end."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def check_fraction(value, name: str) -> float:
    """A real number in [0, 1]."""
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value
