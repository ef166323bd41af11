"""An open Keras file, read-only: its weights HDF5 file, layout, model config and weight entries."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import zipfile

import h5py
import numpy as np

from .atomic import scratch_file
from .buffers import Buffers
from .dtypes import BFLOAT16, read_float32
from .errors import KerasFileError, as_file_errors, reason
from .h5tree import walk
from .keras_native import dequantize_kernel, quantized_layers
from .layouts import (KERAS_MEMBER, Entry, container, entries, file_path, model_config, read_zip_config,
                      weights_layout)
from .packed import PackedReader

__all__ = ["Source", "MAX_ZIP_RATIO"]

#: a .keras member may expand to at most this many times its compressed size (plus 64 MiB)
MAX_ZIP_RATIO = 1000


class Source:
    """An open Keras file (a context manager).

    A ``.keras`` archive's weights are extracted to a scratch file in `tmp_dir` (HDF5 cannot read
    a zip member in place); a packed file's skeleton is opened in memory and its tensors are
    dequantized on demand.
    """

    def __init__(self, path, tmp_dir: str | None = None):
        self.path = file_path(path)
        self.tmp_dir = tmp_dir
        self.kind = container(self.path)
        self.zip = None
        self.h5 = None
        self.packed = None
        self._tmp = None

    def __enter__(self) -> Source:
        try:
            with as_file_errors(self.path):
                self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        where = self.path
        zip_config = None
        h5_path = self.path
        if self.kind == "zip":
            try:
                self.zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise KerasFileError(f"{where}: corrupt zip archive ({exc})") from None
            names = self.zip.namelist()
            if KERAS_MEMBER not in names:
                raise KerasFileError(f"{where}: a zip archive, but not a .keras file (no {KERAS_MEMBER})")
            zip_config = read_zip_config(self.zip, where)
            info = self.zip.getinfo(KERAS_MEMBER)
            if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) + (64 << 20):
                raise KerasFileError(f"{where}: {KERAS_MEMBER} declares {info.file_size} bytes from "
                                     f"{info.compress_size}; refused")
            self._tmp = scratch_file(self.tmp_dir)
            with open(self._tmp, "wb") as out, self.zip.open(info) as member:
                try:
                    shutil.copyfileobj(member, out, 1 << 20)
                except OSError as exc:  # the scratch file's disk, not the archive
                    raise KerasFileError(f"{where}: cannot extract {KERAS_MEMBER} into "
                                         f"{os.path.dirname(self._tmp)} ({reason(exc)})") from None
            h5_path = self._tmp
        try:
            self.h5 = h5py.File(h5_path, "r")
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "unreadable"
            raise KerasFileError(f"{where}: not a readable HDF5 file, truncated or corrupt ({first})") from None
        members = walk(self.h5, where)  # before anything reads an attribute or a dataset
        layout = weights_layout(self.h5, where)
        self.root = self.h5
        if layout == "packed":
            self.packed = PackedReader(self.h5, where)
            self.root = self.packed.skeleton
            layout = self.packed.layout
            members = self.packed.members
        self.layout = layout
        self.config = model_config(self.root, zip_config)
        self.entries = entries(self.root, layout, self.config, where, members)
        self.quantized = quantized_layers(self.root, self.entries, self.config) if layout == "keras3" else {}
        roles = {path: role for q in self.quantized.values() for path, role in q.roles().items()}
        self.entries = [dataclasses.replace(e, role=roles[e.path]) if e.path in roles else e for e in self.entries]

    @property
    def role_source(self) -> str:
        """Where the layer classes came from: ``config``, ``names`` (guessed), ``shapes``, or a mix."""
        sources = {e.role_source for e in self.entries if e.role not in ("optimizer", "variable")}
        if sources <= {"config"}:
            return "config"
        if self.config is None:
            text = "names (no model config)"
        else:
            text = "config, some guessed from names" if "config" in sources else "names (config not usable)"
        return text + (", shapes where no name says" if "shape" in sources else "")

    @property
    def description(self) -> str:
        text = self.layout + (" in a .keras archive" if self.kind == "zip" else "")
        return text + (" (packed)" if self.packed is not None else "")

    def is_packed(self, entry: Entry) -> bool:
        """Whether the weight of `entry` is stored as packed codes."""
        return self.packed is not None and entry.path in self.packed.tensors

    def read(self, entry: Entry, buffers: Buffers | None = None) -> np.ndarray:
        """The weight as stored (packed tensors dequantized to float32, bfloat16 ones as
        float32); a float32 weight is read into ``buffers`` when given (valid until the next
        read into them)."""
        if self.is_packed(entry):
            return self.packed.read(entry.path)
        dset = self.dataset(entry.path)
        if entry.dtype == BFLOAT16:
            return read_float32(dset)
        if buffers is None or dset.dtype != np.float32 or dset.size == 0:
            return dset[()]
        out = buffers.get("read", dset.shape)
        dset.read_direct(out)
        return out

    def values(self, entry: Entry) -> np.ndarray:
        """The weight's values: :meth:`read` (float16 as float32), or for a kernel Keras quantized,
        the float32 kernel its layer computes with."""
        q = self.quantized.get(entry.path)
        if q is None:
            data = self.read(entry)
            return data.astype(np.float32) if data.dtype == np.float16 else data
        paths = {e.path: e for e in self.entries}
        return dequantize_kernel(self.root, q, lambda p: self.read(paths[p]))

    def stored_bytes(self, entry: Entry) -> int:
        if self.is_packed(entry):
            return self.packed.stored_bytes(entry.path)
        return int(self.dataset(entry.path).id.get_storage_size())

    def dataset(self, path: str) -> h5py.Dataset:
        """The dataset holding the data of `path` (of a packed file: its own, not the placeholder)."""
        return self.root[path] if self.packed is None else self.packed.dataset(path)

    def close(self) -> None:
        for closer in (self.packed, self.h5, self.zip):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self.packed = self.h5 = self.zip = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
