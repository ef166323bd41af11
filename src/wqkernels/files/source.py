"""An open Keras file, read-only: its weights HDF5 file, layout, model config and weight entries."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import shutil
import struct
import zipfile

import h5py
import numpy as np
from h5py import h5d, h5g, h5s

from .atomic import remove, scratch_file
from .buffers import Buffers
from .dtypes import BFLOAT16, read_float32
from .errors import KerasFileError, as_file_errors, reason
from .h5tree import FileBytes, bounded, check_global_heaps, dataset_info, memory_type, walk
from .keras_native import dequantize_kernel, quantized_layers
from .layouts import (KERAS_MEMBER, MAX_ZIP_RATIO, Entry, check_indices, check_zip_members, container, entries, file_path,
                      foreign_error, model_config, read_zip_config,
                      weights_layout)
from .packed import PackedReader

__all__ = ["Source", "MAX_ZIP_RATIO"]


def _check_heaps(path: str, where: str, member: _StoredMember | None = None) -> None:
    """:func:`~.h5tree.check_global_heaps` on the file at `path`, or on the bytes of `member`
    stored in the .keras archive at `path`, whose CRC-32 the same read checks."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = FileBytes(f, *(member.span if member is not None else (0, size)), crc=member is not None)
        if len(data):
            check_global_heaps(data, where)
        if member is not None and data.crc32() != member.info.CRC:
            raise KerasFileError(f"{where}: corrupt zip archive (bad CRC-32 for file {member.info.filename!r})")


class Source:
    """An open Keras file (a context manager).

    A ``.keras`` archive's weights are extracted to a scratch file in `tmp_dir` (HDF5 cannot read
    a zip member in place); a packed file's skeleton is opened in memory and its tensors are
    dequantized on demand.
    """

    def __init__(self, path, tmp_dir: str | None = None, shard: bool = False):
        self.path = file_path(path)
        self.shard = shard  # (one of a set: its variables are checked with the whole set's)
        self.tmp_dir = tmp_dir
        self.kind = container(self.path)
        self.zip = None
        self.h5 = None
        self.packed = None
        self.members: dict = {}
        self._tmp = None
        self._window = None
        self._group = None  # (path, handle) of the group :meth:`_open_dataset` opened last

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
            if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) + (64 << 20):
                raise KerasFileError(f"{where}: {KERAS_MEMBER} declares {info.file_size} bytes from "
                                     f"{info.compress_size}; refused")
            h5_path = self._member(info)
        stored = h5_path if isinstance(h5_path, _StoredMember) else None
        _check_heaps(self.path if stored is not None else h5_path, where, stored)
        try:
            self.h5 = bounded(h5py.File(h5_path, "r", locking=False))  # read-only; our writers hold flocks of their own
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "unreadable"
            raise KerasFileError(f"{where}: not a readable HDF5 file, truncated or corrupt ({first})") from None
        kept: dict = {}  # (the name lists, read by the walk)
        members = walk(self.h5, where, read_small=True, kept=kept)  # before anything reads an attribute or a dataset
        layout = weights_layout(self.h5, where)
        self.root = self.h5
        if layout == "packed":
            self.packed = PackedReader(self.h5, where)
            self.root = self.packed.skeleton
            layout = self.packed.layout
            members = self.packed.members
            kept = self.packed.kept
        self.layout = layout
        self.members = members  # {path: DatasetInfo, None for a group}, as the walk found them
        self.config = model_config(self.root, zip_config, where)
        self.entries = entries(self.root, layout, self.config, where, members, kept)
        if layout == "keras3" and not self.shard:
            check_indices([e.path for e in self.entries], where)
        self.quantized = quantized_layers(self.root, self.entries, self.config, layout)
        roles = {path: role for q in self.quantized.values() for path, role in q.roles().items()}
        self.entries = [dataclasses.replace(e, role=roles[e.path]) if e.path in roles else e for e in self.entries]

    def _member(self, info: zipfile.ZipInfo):
        """The weights member, for HDF5 to open: read in place when stored uncompressed (as Keras
        writes it; its CRC checked first), else extracted to a scratch file."""
        window = _StoredMember.of(self.path, info)
        if window is not None:
            self._window = window
            return window
        self._tmp = scratch_file(self.tmp_dir)
        with open(self._tmp, "wb") as out, self.zip.open(info) as member:
            try:
                shutil.copyfileobj(member, out, 1 << 20)
            except OSError as exc:  # the scratch file's disk, not the archive
                raise KerasFileError(f"{self.path}: cannot extract {KERAS_MEMBER} into "
                                     f"{os.path.dirname(self._tmp)} ({reason(exc)})") from None
        return self._tmp

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

    def read(self, entry: Entry, buffers: Buffers | None = None, dsid: h5d.DatasetID | None = None) -> np.ndarray:
        """The weight as stored (packed tensors dequantized to float32, bfloat16 ones as
        float32); a float32 weight is read into ``buffers`` when given (valid until the next
        read into them).  `dsid`: the weight's dataset, when the caller has it open."""
        if self.is_packed(entry):
            return self.packed.read(entry.path)
        info = self.members.get(entry.path) if self.packed is None else None
        if info is None or entry.dtype == BFLOAT16:
            dset = self.dataset(entry.path)
            if entry.dtype == BFLOAT16:
                return read_float32(dset)
            dsid, info = dset.id, dataset_info(dset.id)
        if info.values is not None:  # read by the walk
            return info.values.copy()
        # a dataset of the walk is read through its low-level handle: h5py's Dataset object costs
        # more to make than reading a small weight
        dtype = info.dtype.newbyteorder("=")  # in the machine's byte order (Keras loads big-endian kernels too)
        if buffers is not None and dtype == np.float32 and math.prod(info.shape):
            out = buffers.get("read", info.shape)
        else:
            out = np.empty(info.shape, dtype)
        if out.size:
            (dsid or self._open_dataset(entry.path)).read(h5s.ALL, h5s.ALL, out, mtype=memory_type(dtype))
        return out

    def _open_dataset(self, path: str) -> h5d.DatasetID:
        """A dataset of the walk, opened in its group, which stays open for the next one (the
        weights of a layer follow each other): a lookup from the root costs more than a read."""
        group, _, name = path.rpartition("/")
        if self._group is None or self._group[0] != group:
            self._group = (group, h5g.open(self.root.id, group.encode()) if group else self.root.id)
        return h5d.open(self._group[1], name.encode())

    def values(self, entry: Entry) -> np.ndarray:
        """The weight's values: :meth:`read` (float16 as float32), or for a kernel Keras quantized,
        the float32 kernel its layer computes with."""
        q = self.quantized.get(entry.path)
        if q is None:
            data = self.read(entry)
            return data.astype(np.float32) if data.dtype == np.float16 else data
        paths = {e.path: e for e in self.entries}
        try:
            return dequantize_kernel(self.root, q, lambda p: self.read(paths[p]))
        except (ValueError, TypeError, IndexError) as exc:  # codes, scales and zero points that disagree
            raise KerasFileError(f"{self.path}: {entry.path}: Keras's quantized kernel is inconsistent: "
                                 f"{reason(exc)}") from None

    def stored_bytes(self, entry: Entry) -> int:
        if self.is_packed(entry):
            return self.packed.stored_bytes(entry.path)
        info = self.members.get(entry.path) if self.packed is None else None
        return info.stored if info is not None else int(self.dataset(entry.path).id.get_storage_size())

    def dataset(self, path: str) -> h5py.Dataset:
        """The dataset holding the data of `path` (of a packed file: its own, not the placeholder)."""
        return self.root[path] if self.packed is None else self.packed.dataset(path)

    def close(self) -> None:
        self._group = None  # (released before its file closes)
        for closer in (self.packed, self.h5, self._window, self.zip):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self.packed = self.h5 = self._window = self.zip = None
        if self._tmp is not None:
            remove(self._tmp)
            self._tmp = None


class _StoredMember(io.RawIOBase):
    """A zip member stored uncompressed, as a read-only file of its own (a window on the
    archive) that h5py reads in place."""

    @classmethod
    def of(cls, path: str, info: zipfile.ZipInfo) -> _StoredMember | None:
        """The member's window when it is stored (its CRC is checked with the heap scan, in the
        same read: :func:`_check_heaps`); None when compressed."""
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
            return None
        f = open(path, "rb")
        try:
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise KerasFileError(f"{path}: corrupt zip archive (bad local header of {info.filename})")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            window = cls(f, info.header_offset + 30 + name_len + extra_len, info)
        except BaseException:
            f.close()
            raise
        if window._start + info.file_size > os.fstat(f.fileno()).st_size:
            window.close()
            raise KerasFileError(f"{path}: corrupt zip archive ({info.filename!r} runs past its end)")
        return window

    def __init__(self, f, start: int, info: zipfile.ZipInfo):
        super().__init__()
        self.info = info
        self._f, self._start, self._size, self._pos = f, start, info.file_size, 0

    @property
    def span(self) -> tuple:
        """(offset in the archive, size) of the member's bytes."""
        return self._start, self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(view[:n])
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
