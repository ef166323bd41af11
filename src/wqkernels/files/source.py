"""An open Keras file, read-only: its weights HDF5 file, layout, model config and weight entries."""
from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import zipfile

import h5py
import numpy as np

from .atomic import remove, scratch_file
from .buffers import Buffers
from .errors import KerasFileError, as_file_errors, reason
from .h5tree import check_global_heaps, walk
from .layouts import (KERAS_MEMBER, MAX_ZIP_RATIO, Entry, check_zip_members, container, entries, file_path,
                      foreign_error, model_config, read_zip_config,
                      weights_layout)
from .packed import PackedReader

__all__ = ["Source", "MAX_ZIP_RATIO"]


def _check_heaps(path: str, where: str) -> None:
    """:func:`~.h5tree.check_global_heaps` on the file at `path`, mapped into memory."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            check_global_heaps(data, where)


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
            except (zipfile.BadZipFile, UnicodeDecodeError) as exc:  # (a member name that is not UTF-8)
                raise KerasFileError(f"{where}: corrupt zip archive ({exc})") from None
            names = self.zip.namelist()
            if KERAS_MEMBER not in names:
                raise foreign_error(where, names) or KerasFileError(f"{where}: a zip archive, but not a .keras file (no {KERAS_MEMBER})")
            check_zip_members(self.zip, where)
            zip_config = read_zip_config(self.zip, where)
            info = self.zip.getinfo(KERAS_MEMBER)
            self._tmp = scratch_file(self.tmp_dir)
            with open(self._tmp, "wb") as out, self.zip.open(info) as member:
                try:
                    shutil.copyfileobj(member, out, 1 << 20)
                except OSError as exc:  # the scratch file's disk, not the archive
                    raise KerasFileError(f"{where}: cannot extract {KERAS_MEMBER} into "
                                         f"{os.path.dirname(self._tmp)} ({reason(exc)})") from None
            h5_path = self._tmp
        _check_heaps(h5_path, where)
        try:
            self.h5 = h5py.File(h5_path, "r", locking=False if self._tmp else None)
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
        self.config = model_config(self.root, zip_config, where)
        self.entries = entries(self.root, layout, self.config, where, members)

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
        """The weight as stored (packed tensors dequantized to float32); a float32 weight is read
        into ``buffers`` when given (valid until the next read into them)."""
        if self.is_packed(entry):
            return self.packed.read(entry.path)
        dset = self.dataset(entry.path)
        if buffers is None or dset.dtype != np.float32 or dset.size == 0:
            data = dset[()]  # in the machine's byte order (Keras loads big-endian kernels too)
            return data.astype(data.dtype.newbyteorder("=")) if data.dtype.byteorder == ">" else data
        out = buffers.get("read", dset.shape)
        dset.read_direct(out)
        return out

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
            remove(self._tmp)
            self._tmp = None
