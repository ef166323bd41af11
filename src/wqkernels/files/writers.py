"""Where a rewrite's weights go: one writer per storage, all with the same small interface.

A rewrite copies the weights HDF5 tree of its source into ``writer.open(path)``'s file: groups
and attributes exactly, untouched datasets through :meth:`Writer.copy`, new ones through
:meth:`Writer.new` (both from :class:`~.h5tree.Datasets`), and each rewritten weight through
:meth:`Writer.weight`, which decides what of it to store.  A new storage is one new writer.
"""
from __future__ import annotations

import contextlib
import math

import h5py
import numpy as np

from .dtypes import BFLOAT16, new_float, stored_values
from .h5tree import Datasets, DatasetInfo, filters, new_file, write_values
from .layouts import Entry
from .recipe import Recipe
from .transform import Measured, Quantization

__all__ = ["Writer", "FloatWriter"]


class Writer(Datasets):
    """The interface of the storages (and the plain copy of datasets they share)."""

    #: whether the writer keeps integer codes: the work buffer of the last weight is then
    #: released before the codes are made, so that the two never sit side by side
    holds_codes = False

    def __init__(self, recipe: Recipe, layout: str):
        self.recipe, self.layout = recipe, layout

    @contextlib.contextmanager
    def open(self, path: str):
        """The HDF5 file the weights tree is copied into, complete at `path` when the block ends."""
        with new_file(path) as f:
            yield f

    def start(self, source, report) -> None:
        """Called with the open source before anything is written (a writer may refuse it, or
        add notes to the report)."""

    def stored_dtype(self, entry: Entry) -> str:
        """What a rewritten weight of `entry` is stored as (for the report)."""
        return "codes" if self.holds_codes else entry.dtype

    def members(self) -> dict:
        """Members of a .keras archive to replace once the weights are written: {name: bytes}."""
        return {}

    def weight(self, group: h5py.Group, name: str, like: h5py.Dataset, entry: Entry, x: np.ndarray,
               quantization: Quantization | None, out: np.ndarray,
               original: np.ndarray | None = None) -> tuple[np.ndarray | Measured, int]:
        """Store one rewritten weight `x` (pruned, float32) as ``group[name]`` in place of `like`.

        Given `original` (the weight as read: x before pruning, or x itself), a writer may
        measure the values against it on its way instead of returning them.

        Returns (the float32 values a reader gets back, which may live in `out`, or their
        :class:`~.transform.Measured` error against `original`; bytes stored).
        """
        raise NotImplementedError

    def overwrites(self, entry: Entry, info: DatasetInfo | None) -> bool:
        """Whether the weight of `entry` (whose dataset the walk describes as `info`) is stored
        by writing its new values into an exact copy of its dataset (:meth:`overwrite`)."""
        return False

    def overwrite(self, copy: h5py.Dataset, entry: Entry, x: np.ndarray, quantization: Quantization | None,
                  out: np.ndarray, original: np.ndarray | None = None) -> tuple[np.ndarray | Measured, int]:
        """:meth:`weight`, storing the values by writing them into `copy`, the weight's dataset
        copied exactly into the output (for a writer whose :meth:`overwrites` says so)."""
        raise NotImplementedError


#: a rewritten weight of at most this many bytes, stored as its dataset was, is written into a
#: copy of its dataset: its subtree is then copied in one H5Ocopy, which costs less than creating
#: its groups and the dataset anew; a larger one is created (its bytes are not copied twice)
OVERWRITTEN_BYTES = 1 << 16


class FloatWriter(Writer):
    """``float32`` and ``float16`` storage: the values on the grid, as a dataset stock Keras loads,
    of the weight's own type (float16 and bfloat16 weights stay so), or float16 when asked for
    and no larger."""

    def stored_dtype(self, entry: Entry) -> str:
        dtype = entry.dtype
        if self.recipe.storage == "float16" and dtype not in ("float16", BFLOAT16):
            return "float16"
        return dtype if dtype in ("float16", BFLOAT16) else "float32"

    def weight(self, group, name, like, entry, x, quantization, out, original=None):
        values, dtype = self._values(entry, x, quantization, out)
        dset = new_float(self, group, name, values, dtype, self.recipe.compress, like)
        return values, int(dset.id.get_storage_size())

    def overwrites(self, entry, info):
        """A small dataset, not compressed by the recipe, stored contiguous and allocated with
        exactly the type the values are stored as (so also in the machine's byte order): a copy
        holding the new values is what :meth:`weight` would create."""
        dtype = self.stored_dtype(entry)
        if info is None or dtype == BFLOAT16 or info.placeholder or not info.contiguous:
            return False
        nbytes = math.prod(info.shape) * info.dtype.itemsize
        return (info.dtype == np.dtype(dtype) and info.dtype.metadata is None and 0 < nbytes <= OVERWRITTEN_BYTES
                and info.stored == nbytes and not filters(self.recipe.compress, nbytes))

    def overwrite(self, copy, entry, x, quantization, out, original=None):
        values, _ = self._values(entry, x, quantization, out)
        write_values(copy, values)
        return values, int(copy.id.get_storage_size())

    def _values(self, entry: Entry, x: np.ndarray, quantization: Quantization | None, out: np.ndarray) -> tuple:
        """(the values stored for `x`, in `out` or x, and the dtype name they are stored as)."""
        values = x if quantization is None else quantization.values(x, out)
        dtype = self.stored_dtype(entry)
        return stored_values(values, dtype, out), dtype
