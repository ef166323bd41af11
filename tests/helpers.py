"""Shared test helpers: array strategies for hypothesis, exact comparisons, files and the CLI."""
from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import wqkernels
from wqkernels.cli import main

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def default_grid(bits: int, role: str = "kernel") -> dict:
    """What a rewrite with the default recipe at `bits` passes to quantize besides the bits and
    the axis, for a weight of `role`: the grid, the scale search and the rounding."""
    from wqkernels.allocation import default_rounding

    recipe = wqkernels.Recipe(bits=bits)
    return {"symmetric": recipe.symmetric, "method": recipe.method, "rounding": default_rounding(role)}


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


# ---- files and the command line ------------------------------------------------------------

def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(directory) -> set:
    return set(os.listdir(directory))


def hdf5_attrs(obj) -> dict:
    """Attributes with their exact HDF5 types (class, size, cset) and values."""
    out = {}
    for name in obj.attrs:
        aid = h5py.h5a.open(obj.id, name.encode())
        tid = aid.get_type()
        kind = (type(tid).__name__, tid.get_size(),
                tid.get_cset() if isinstance(tid, h5py.h5t.TypeStringID) else None,
                tid.is_variable_str() if isinstance(tid, h5py.h5t.TypeStringID) else None)
        value = obj.attrs[name]
        out[name] = (kind, value.tolist() if isinstance(value, np.ndarray) else value)
    return out


def hdf5_tree(f: h5py.File) -> dict:
    """Every object: groups with attributes, datasets with attributes, dtype, shape and filters."""
    out = {"/": ("group", hdf5_attrs(f))}

    def visit(name, obj):
        if isinstance(obj, h5py.Group):
            out[name] = ("group", hdf5_attrs(obj))
        else:
            out[name] = ("dataset", hdf5_attrs(obj), str(obj.dtype), obj.shape, obj.compression)
    f.visititems(visit)
    return out


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def kernels_of(path) -> dict:
    return {k: v for k, v in wqkernels.load_weights(path).items()
            if k.endswith(("kernel:0", "depthwise_kernel:0"))}


def assert_same_weights(a, b) -> None:
    wa, wb = wqkernels.load_weights(a), wqkernels.load_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert_bit_equal(wa[k], wb[k], k)
