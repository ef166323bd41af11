"""HDF5 plumbing: a strict walk of untrusted files and an exact tree copy with hooks.

Everything the rewrite does not change is copied at the low level: attributes keep their exact
HDF5 types (fixed-length bytes stay bytes, ASCII stays ASCII), datasets are copied by
``H5Ocopy`` with their filters, chunks and attributes.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5l, h5o, h5s, h5t

from .errors import KerasFileError

#: a dataset may declare at most this many bytes beyond 1000x its stored size (hostile files)
UNCHECKED_BYTES = 1 << 26
#: datasets smaller than this stay contiguous when compression is asked for (the chunk index
#: and filter pipeline cost more than they save)
MIN_COMPRESS_BYTES = 16 << 10


def copy_attrs(src, dst) -> None:
    """Copy every attribute of `src` to `dst` with its exact file type and dataspace."""
    for name in src.attrs:
        bname = name.encode("utf-8") if isinstance(name, str) else name
        aid = h5a.open(src.id, bname)
        tid = aid.get_type()
        sid = aid.get_space()
        out = h5a.create(dst.id, bname, tid, sid)
        if sid.get_simple_extent_type() == h5s.NULL:
            continue
        vlen_str = isinstance(tid, h5t.TypeStringID) and tid.is_variable_str()
        arr = np.empty(sid.shape, dtype=tid.dtype)
        if vlen_str or tid.dtype.kind == "O":
            aid.read(arr)
            out.write(arr)
        else:
            aid.read(arr, mtype=tid)
            out.write(arr, mtype=tid)


def decode(value):
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [decode(v) if isinstance(v, (bytes, np.bytes_)) else str(v) for v in value.reshape(-1)]
    return value


def read_name_list(obj, name: str) -> list[str] | None:
    """A Keras list attribute, also when split into ``name0``, ``name1``, ... (the plain name wins)."""
    if name in obj.attrs:
        value = decode(obj.attrs[name])
        if isinstance(value, str):
            return [value]
        if isinstance(value, np.ndarray):  # the empty float64 array of a weightless layer
            return [] if value.size == 0 else [str(v) for v in value.reshape(-1)]
        return value
    if f"{name}0" not in obj.attrs:
        return None
    out, k = [], 0
    while f"{name}{k}" in obj.attrs:
        out.extend(read_name_list(obj, f"{name}{k}") or [])
        k += 1
    return out


class DatasetInfo(NamedTuple):
    """What the walk learns of a dataset without reading it."""

    shape: tuple
    dtype: np.dtype


def dataset_info(dsid: h5d.DatasetID) -> DatasetInfo:
    return DatasetInfo(tuple(int(n) for n in (dsid.shape or ())), dsid.dtype)


def check_dataset(dsid: h5d.DatasetID, path: str, where: str) -> DatasetInfo:
    """Refuse external and virtual datasets, and declared sizes the stored data cannot back."""
    dcpl = dsid.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL:
        raise KerasFileError(f"{where}: virtual dataset {path!r} refused")
    if dcpl.get_external_count() > 0:
        raise KerasFileError(f"{where}: dataset {path!r} stores its data in external files; refused")
    info = dataset_info(dsid)
    declared = math.prod(info.shape) * info.dtype.itemsize
    stored = dsid.get_storage_size()
    if declared > UNCHECKED_BYTES and declared > 1000 * stored:
        raise KerasFileError(f"{where}: dataset {path!r} declares {declared} bytes but stores "
                             f"{stored}; refused")
    return info


def walk(group: h5py.Group, where: str, exempt=frozenset()) -> dict[str, DatasetInfo | None]:
    """Check every member below `group`; return ``{path: DatasetInfo, or None for a group}``,
    depth first in name order.

    Soft and external links are refused, as are objects linked more than once (a hard-link
    cycle, or one dataset under two names); datasets whose path is in `exempt` (the unallocated
    placeholders of a packed skeleton) skip the size check.  The traversal runs in HDF5 (one
    H5Lvisit, one H5Ovisit) on low-level handles: h5py's objects cost more to make than reading
    the weights of a small model.
    """
    # h5py's visit callbacks must not raise: they return the error, which stops the visit
    def check_link(name: bytes, info):
        if info.type != h5l.TYPE_HARD:
            kind = "external link" if info.type == h5l.TYPE_EXTERNAL else "soft link"
            return KerasFileError(f"{where}: {kind} at {name.decode('utf-8', 'replace')!r} refused")
        return None

    members = {}

    def check_object(name: bytes, info):
        path = name.decode("utf-8", "replace")
        if path == ".":
            return None
        if info.rc > 1:
            return KerasFileError(f"{where}: {path!r} is linked more than once (a cycle?); refused")
        if info.type == h5o.TYPE_DATASET:
            try:
                dsid = h5d.open(group.id, name)
                members[path] = dataset_info(dsid) if path in exempt else check_dataset(dsid, path, where)
            except (KerasFileError, OSError, ValueError) as exc:
                return exc
        elif info.type == h5o.TYPE_GROUP:
            members[path] = None
        else:
            return KerasFileError(f"{where}: unsupported object at {path!r}")
        return None

    for problem in (group.id.links.visit(check_link, info=True),
                    h5o.visit(group.id, check_object, info=True)):
        if problem is not None:
            raise problem
    return members


def filters(compress: str, nbytes: int) -> dict:
    """h5py's creation options for `compress` on a dataset of `nbytes`: none below
    MIN_COMPRESS_BYTES."""
    if compress == "none" or nbytes < MIN_COMPRESS_BYTES:
        return {}
    return {"compression": "gzip", "shuffle": True} if compress == "gzip" else {"compression": "lzf"}


#: compressed datasets are chunked in runs of whole trailing rows of about this many bytes: HDF5
#: keeps memory for every chunk it has written, so a few large chunks keep less than many of
#: h5py's 64 KiB guess, for the same file size
CHUNK_BYTES = 1 << 20


def chunk_shape(shape: tuple, itemsize: int, target: int = CHUNK_BYTES) -> tuple:
    """Chunks of about `target` bytes, each a contiguous run of the C-ordered array: whole
    trailing axes, as many slices of the first split axis as fit, single index before it."""
    chunk = [1] * len(shape)
    for i in range(len(shape)):
        inner = itemsize * math.prod(shape[i + 1:])
        if inner <= target:
            chunk[i] = max(1, min(int(shape[i]), target // inner))
            chunk[i + 1:] = shape[i + 1:]
            break
    return tuple(int(c) for c in chunk)


def new_dataset(group: h5py.Group, name: str, data: np.ndarray, compress: str = "none",
                like: h5py.Dataset | None = None, dtype=None) -> h5py.Dataset:
    """Create a dataset with `data`, compressed when asked and large enough to gain.

    With `dtype`, the dataset has that type and HDF5 converts `data` as it writes (no copy in
    memory).  The attributes of `like` (the dataset it replaces) are copied over.
    """
    dtype = data.dtype if dtype is None else np.dtype(dtype)
    options = filters(compress, data.size * dtype.itemsize) if data.ndim else {}
    if options:
        options["chunks"] = chunk_shape(data.shape, dtype.itemsize)
    if dtype == data.dtype:
        dset = group.create_dataset(name, data=data, **options)
    else:
        dset = group.create_dataset(name, shape=data.shape, dtype=dtype, **options)
        if data.size:
            dset.write_direct(np.ascontiguousarray(data))
    if like is not None:
        copy_attrs(like, dset)
    return dset


def placeholder(group: h5py.Group, name: str, shape: tuple, dtype,
                like: h5py.Dataset | None = None) -> h5py.Dataset:
    """An unallocated dataset (no data) standing for one stored elsewhere, with `like`'s attributes."""
    dset = group.create_dataset(name, shape=shape, dtype=dtype)
    if like is not None:
        copy_attrs(like, dset)
    return dset


class Datasets:
    """Where the datasets of a copy go: into the destination groups themselves.  (The packed
    writer, a subclass, moves large ones out of its in-memory skeleton.)"""

    def copy(self, group: h5py.Group, name: str, dset: h5py.Dataset) -> h5py.Dataset:
        """An exact copy of `dset` (type, filters, chunks, attributes) as ``group[name]``."""
        h5o.copy(dset.id, b".", group.id, name.encode("utf-8"))
        return group[name]

    def new(self, group: h5py.Group, name: str, data: np.ndarray, compress: str = "none",
            like: h5py.Dataset | None = None, dtype=None) -> h5py.Dataset:
        """A dataset with `data`, as :func:`new_dataset` makes it."""
        return new_dataset(group, name, data, compress, like, dtype)


#: hook(dst_group, name, src_dataset) writes the replacement of a dataset (or nothing, to drop it)
Hook = Callable[[h5py.Group, str, h5py.Dataset], None]


def copy_tree(src: h5py.Group, dst: h5py.Group, hooks: dict[str, Hook], skip: frozenset = frozenset(),
              out: Datasets = Datasets(), prefix: str = "") -> None:
    """Copy the members of `src` into `dst`: groups recreated with their attributes, datasets
    copied exactly by `out` unless their path (relative to the root of the walk) has a hook;
    paths in `skip` are left out with everything below them.
    """
    for name in src:
        path = prefix + name
        if path in skip:
            continue
        obj = src[name]
        if isinstance(obj, h5py.Group):  # same creation properties: link/attribute order tracking
            sub = h5py.Group(h5g.create(dst.id, name.encode("utf-8"), gcpl=obj.id.get_create_plist()))
            copy_attrs(obj, sub)
            copy_tree(obj, sub, hooks, skip, out, path + "/")
        elif path in hooks:
            hooks[path](dst, name, obj)
        else:
            out.copy(dst, name, obj)
