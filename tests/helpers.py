"""Shared test helpers: array strategies for hypothesis and exact comparisons."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def assert_bit_equal(a, b, what: str = "arrays") -> None:
    """Same dtype, shape and bits (so -0.0 differs from 0.0 and NaN payloads count)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    va = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.dtype.itemsize)
    vb = np.ascontiguousarray(b).view(np.uint8).reshape(b.size, b.dtype.itemsize)
    diff = np.flatnonzero((va != vb).any(axis=1))
    if diff.size:
        first = diff[0]
        raise AssertionError(f"{what} differ at {diff.size} places; first flat index {first}: "
                             f"{a.reshape(-1)[first]!r} != {b.reshape(-1)[first]!r}")


@st.composite
def float_arrays(draw, min_dims=0, max_dims=4, max_side=9, dtypes=FLOAT_DTYPES, finite=True,
                 ties=True, layouts=True):
    """Float arrays of any dtype and shape, C or Fortran order or strided views.

    Values mix normal numbers, zeros, signed zeros, duplicates and exact ties of a grid so that
    rounding of halves and tie-breaking rules are exercised.
    """
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side))
    elements = st.floats(-1e3, 1e3, width=np.dtype(dtype).itemsize * 8, allow_nan=not finite,
                         allow_infinity=not finite, allow_subnormal=False)
    if ties:
        grid = st.integers(-16, 16).map(lambda k: k / 4)
        elements = st.one_of(elements, grid, st.sampled_from([0.0, -0.0]))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    if layouts and x.ndim >= 1:
        layout = draw(st.sampled_from(["C", "F", "strided", "reversed"]))
        if layout == "F":
            x = np.asfortranarray(x)
        elif layout == "strided":
            big = np.repeat(x, 2, axis=-1)
            x = big[..., ::2]
        elif layout == "reversed":
            x = x[..., ::-1]
    return x


def axes_for(ndim: int):
    """None, or an axis (possibly negative) of an array with ndim dimensions."""
    if ndim == 0:
        return st.none()
    return st.one_of(st.none(), st.integers(-ndim, ndim - 1))
