"""Weight dtypes as Keras stores them: float16/32/64 as themselves, bfloat16 as an opaque 2-byte
HDF5 type with the attribute ``dtype="bfloat16"``."""
from __future__ import annotations

import h5py
import numpy as np

from .._checks import count_and_first
from ..keras_schemes import bfloat16_bits, bfloat16_values, round_bfloat16
from .h5tree import filters

__all__ = ["BFLOAT16", "dtype_name", "is_float", "read_float32", "stored_values", "new_float", "new_bfloat16"]

BFLOAT16 = "bfloat16"
_SLICE = 1 << 20


def is_bfloat16(dset: h5py.Dataset) -> bool:
    """Whether `dset` holds bfloat16 numbers (2-byte opaque data marked as Keras marks them)."""
    if dset.dtype.kind != "V" or dset.dtype.itemsize != 2:
        return False
    value = dset.attrs.get("dtype")
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return value == BFLOAT16


def dtype_name(dset: h5py.Dataset) -> str:
    """``"bfloat16"`` or the NumPy name of the dataset's type."""
    return BFLOAT16 if is_bfloat16(dset) else str(dset.dtype)


def is_float(name: str) -> bool:
    """Whether a dtype name (as :func:`dtype_name` gives it, either byte order) is a float type
    the kernels compute on: float16/32/64 or bfloat16."""
    if name == BFLOAT16:
        return True
    try:
        dtype = np.dtype(name)
    except TypeError:
        return False
    return dtype.kind == "f" and dtype.itemsize in (2, 4, 8)


def read_float32(dset: h5py.Dataset) -> np.ndarray:
    """A bfloat16 dataset's numbers as float32."""
    raw = np.empty(dset.shape, np.uint16)
    if raw.size:
        dset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=dset.id.get_type())
    return bfloat16_values(raw)


def stored_values(values: np.ndarray, name: str, out: np.ndarray) -> np.ndarray:
    """float32 `values` as a dataset of type `name` returns them (float16 and bfloat16 rounded,
    to nearest even), written into `out` (which may be values)."""
    if name not in ("float16", BFLOAT16):
        return values
    src, dst = values.reshape(-1), out.reshape(-1)
    for i in range(0, src.size, _SLICE):
        part = src[i:i + _SLICE]
        if name == "float16":
            _check_float16_range(part, values)
            dst[i:i + _SLICE] = part.astype(np.float16)
        else:
            dst[i:i + _SLICE] = round_bfloat16(part)
    return out


#: the smallest magnitude float16 rounds to infinity (halfway between its largest, 65504, and 2^16)
_FLOAT16_OVERFLOW = 65520.0


def _check_float16_range(part: np.ndarray, values: np.ndarray) -> None:
    """ValueError naming the first value of `values` that float16 would store as infinity, once a
    slice `part` of it holds one; checked before each slice's cast, which may overwrite `values`
    (the slices before hold none, cast or not)."""
    if not part.size or -_FLOAT16_OVERFLOW < part.min() and part.max() < _FLOAT16_OVERFLOW:  # (no temporaries)
        return
    beyond = np.abs(values) >= _FLOAT16_OVERFLOW
    if beyond.any():  # (part may only hold a NaN)
        count, first = count_and_first(beyond)
        raise ValueError(f"{count} value{'s' if count != 1 else ''} of this weight "
                         f"overflow{'s' if count == 1 else ''} float16 (largest {np.finfo(np.float16).max.item():g}), "
                         f"the first {values[first].item()!r} at index {first}; store it as float32")


def new_float(datasets, group: h5py.Group, name: str, values: np.ndarray, dtype: str, compress: str,
              like: h5py.Dataset | None) -> h5py.Dataset:
    """float32 `values` as a dataset of type `dtype` (a :func:`dtype_name`) made by `datasets`
    (an :class:`~.h5tree.Datasets`), with the attributes of `like`."""
    if dtype != BFLOAT16:
        return datasets.new(group, name, values, compress, like=like, dtype=np.dtype(dtype))
    dset = new_bfloat16(group, name, values, **filters(compress, values.size * 2))
    if like is not None:
        for key, value in like.attrs.items():
            if key not in dset.attrs:
                dset.attrs[key] = value
    return dset


def new_bfloat16(group: h5py.Group, name: str, values: np.ndarray, **options) -> h5py.Dataset:
    """A bfloat16 dataset as Keras writes one, from float32 `values` (rounded to nearest even)."""
    bits = bfloat16_bits(values)
    dset = group.create_dataset(name, data=bits.view("V2"), **options)
    dset.attrs["dtype"] = BFLOAT16
    return dset
