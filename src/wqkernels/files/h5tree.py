"""HDF5 plumbing: a strict walk of untrusted files and an exact tree copy with hooks.

Everything the rewrite does not change is copied at the low level: attributes keep their exact
HDF5 types (fixed-length bytes stay bytes, ASCII stays ASCII), datasets are copied by
``H5Ocopy`` with their filters, chunks and attributes.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import zlib
from collections import Counter
from typing import Callable, NamedTuple

import h5py
import numpy as np
from h5py import h5, h5a, h5d, h5f, h5g, h5l, h5o, h5p, h5s, h5t

from h5py._objects import ObjectID

from .._text import first_line
from ..packing import find_bytes
from .errors import KerasFileError, of_the_file

#: a dataset may declare at most this many bytes beyond 1000x its stored size (hostile files)
UNCHECKED_BYTES = 1 << 26
#: datasets smaller than this stay contiguous when compression is asked for (the chunk index
#: and filter pipeline cost more than they save)
MIN_COMPRESS_BYTES = 16 << 10

#: how a placeholder is told from a dataset: HDF5 never writes its fill value (h5py and Keras
#: leave the default, "if set"), a creation property that copies keep and no attribute shows
PLACEHOLDER_FILL_TIME = h5d.FILL_TIME_NEVER


#: HDF5 global heap collections (where variable-length strings live), as HDF5 1.8-1.14 write
#: them: "GCOL", version 1, 3 reserved bytes, the collection's size (8 bytes), then its objects
_GCOL = b"GCOL\x01\x00\x00\x00"
_OBJECT_HEADER = 16


#: a collection up to this size is walked in memory (read at once); a larger one, which only a
#: damaged size claims, is walked where it lies
_WALKED_IN_MEMORY = 1 << 24


def check_global_heaps(data, where: str) -> None:
    """Refuse global heap collections HDF5 would hang on or read past: HDF5 walks a collection's
    objects by their sizes, and loops for ever on a free-space object of size 0 (one flipped
    byte: every later read of a string attribute hung).  `data` is the file's bytes: bytes, or
    a :class:`FileBytes`; a collection is found by its signature."""
    for at in _signatures(data):
        size = int.from_bytes(data[at + 8:at + 16], "little")
        if 4096 <= size <= len(data) - at:
            if size <= _WALKED_IN_MEMORY:
                _check_collection(data[at:at + size], 0, size, where, at)
            else:
                _check_collection(data, at, size, where, at)


def _signatures(data):
    """The offsets of every collection signature in `data`, in order, found by the kernels' byte
    scan (:func:`~wqkernels.packing.find_bytes`), chunk by chunk for a :class:`FileBytes`."""
    if isinstance(data, FileBytes):
        chunks = data.chunks(len(_GCOL) - 1)
    else:
        view = np.frombuffer(data, np.uint8)
        chunks = [(0, view, len(view))]
    for at, chunk, owned in chunks:
        i = find_bytes(chunk, _GCOL)
        while 0 <= i < owned:
            yield at + i
            i = find_bytes(chunk, _GCOL, i + 1)


def _check_collection(data, start: int, size: int, where: str, offset: int) -> None:
    """One collection (at `start` of `data`, at byte `offset` of the file) walked as HDF5 walks
    it (H5HG__cache_heap_deserialize)."""
    p, end = start + 16, start + size
    while p < end:
        if p + _OBJECT_HEADER > end:  # too small for an object: free space
            return
        index = int.from_bytes(data[p:p + 2], "little")
        length = int.from_bytes(data[p + 8:p + 16], "little")
        need = length if index == 0 else _OBJECT_HEADER + (length + 7) // 8 * 8
        if need == 0 or p + need > end:
            raise KerasFileError(f"{where}: corrupt HDF5 global heap at byte {offset}; refused")
        p += need


class FileBytes:
    """Bytes ``start .. start + size`` of an open binary file, read on demand (``len``, slices,
    :meth:`chunks`; offsets counted from `start`): a scan of a large file through a small buffer,
    which keeps no part of the file mapped in the process (a memory map of a 400 MB model, once
    scanned, counted 400 MB towards its resident memory)."""

    #: bytes read at a time, into one buffer that stays in cache between the read and the scan
    #: (fresh chunks of 4 MiB cost their pages' faults, and came back from memory)
    CHUNK = 1 << 20

    def __init__(self, f, start: int, size: int, crc: bool = False):
        self.f, self.start, self.size = f, start, size
        # with `crc`, the CRC-32 of the bytes a scan by chunks has passed
        self._crc, self._summed = 0, 0 if crc else size

    def crc32(self) -> int:
        """The CRC-32 of all the bytes (made with `crc`; what :meth:`chunks` read is not read
        again)."""
        while self._summed < self.size:
            self._sum(self._summed, self[self._summed:self._summed + self.CHUNK])
        return self._crc

    def _sum(self, at: int, chunk) -> None:
        if at <= self._summed < at + len(chunk):
            self._crc = zlib.crc32(memoryview(chunk)[self._summed - at:], self._crc)
            self._summed = at + len(chunk)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, part: slice) -> bytes:
        a, b = max(part.start or 0, 0), min(part.stop, self.size)
        if b <= a:
            return b""
        self.f.seek(self.start + a)
        return self.f.read(b - a)

    def chunks(self, overlap: int):
        """(offset, uint8 array, owned) over all the bytes, CHUNK at a time into one reused
        buffer, each `overlap` bytes longer into the next (so that a pattern of overlap + 1 bytes
        starting in a chunk lies in it whole; its first `owned` starts are its own, the others
        the next chunk's), summed for the CRC-32 as read.  Each array is valid until the next is
        asked for."""
        buffer = np.empty(self.CHUNK + overlap, np.uint8)
        at = 0
        while at < self.size:
            self.f.seek(self.start + at)
            n = self.f.readinto(memoryview(buffer)[:min(self.CHUNK + overlap, self.size - at)])
            chunk = buffer[:n]
            self._sum(at, chunk)
            yield at, chunk, min(n, self.CHUNK)
            if n < self.CHUNK + overlap:
                return
            at += self.CHUNK


#: HDF5 object headers hold about 64 KB: Keras splits longer name lists into chunks of at most
#: this many bytes, ``name0``, ``name1``, ... (see KERAS_FORMATS.md section 2)
HEADER_LIMIT = 64512
#: the list attributes Keras splits that way
SPLIT_NAMES = ("layer_names", "weight_names")


def _low(obj) -> ObjectID:
    """The low-level id of an h5py object (or the id itself)."""
    return obj if isinstance(obj, ObjectID) else obj.id


def new_group(parent: h5g.GroupID, name: bytes, gcpl) -> h5g.GroupID:
    """A group `name` in `parent` with the creation properties h5py can read off `gcpl` (another
    group's, perhaps of another file): link and attribute creation order, attribute storage
    phases, object times.  A group's own property list also holds where its dense link storage
    lies in its file, and a group created with it could take no member."""
    settings = (gcpl.get_link_creation_order(), gcpl.get_attr_creation_order(), gcpl.get_attr_phase_change(),
                gcpl.get_obj_track_times())
    fresh = _GROUP_CREATE.get(settings)
    if fresh is None:  # (HDF5 copies the list it is given: one serves every group of these settings)
        fresh = _GROUP_CREATE[settings] = h5p.create(h5p.GROUP_CREATE)
        fresh.set_link_creation_order(settings[0])
        fresh.set_attr_creation_order(settings[1])
        fresh.set_attr_phase_change(*settings[2])
        fresh.set_obj_track_times(settings[3])
    return h5g.create(parent, name, gcpl=fresh)


#: the creation property lists of :func:`new_group`, by their settings (a list made afresh for
#: each group cost more than creating the group)
_GROUP_CREATE: dict = {}


def copy_attrs(src, dst, cpl=None) -> None:
    """Copy every attribute of `src` to `dst` (h5py objects or low-level ids) with its exact file
    type and dataspace, in the order h5py lists them (creation order where it is tracked).
    `cpl`: the creation property list of `src`, when the caller has it.

    A name list too long for an object header (a source written with dense attribute storage,
    say 100 k layer names) is split as Keras splits it, where it would not fit."""
    sid_, did = _low(src), _low(dst)
    count = h5a.get_num_attrs(sid_)
    if not count:
        return
    cpl = sid_.get_create_plist() if cpl is None else cpl
    order = h5.INDEX_CRT_ORDER if cpl.get_attr_creation_order() & h5p.CRT_ORDER_TRACKED else h5.INDEX_NAME
    for k in range(count):
        aid = h5a.open(sid_, index=k, index_type=order)
        bname = aid.get_name()
        tid = aid.get_type()
        sid = aid.get_space()
        if sid.get_simple_extent_type() == h5s.NULL:
            h5a.create(did, bname, tid, sid)
            continue
        dtype, memory = _string_dtype(tid) if isinstance(tid, h5t.TypeStringID) else (tid.dtype, None)
        arr = np.empty(sid.shape, dtype=dtype)
        converted = dtype.kind == "O"
        aid.read(arr, mtype=memory) if converted else aid.read(arr, mtype=tid)
        name = bname.decode("utf-8", "surrogateescape")
        if name in SPLIT_NAMES and arr.ndim == 1 and arr.size and aid.get_storage_size() > HEADER_LIMIT:
            split_name_list(dst if hasattr(dst, "attrs") else h5py.Group(did), name, arr)
            continue
        out = h5a.create(did, bname, tid, sid)
        out.write(arr) if converted else out.write(arr, mtype=tid)


#: the NumPy dtype h5py gives a string type, and the memory type it reads a variable-length one
#: with, by (variable length, character set, size), on which alone they depend: h5py makes both
#: afresh for every attribute, which costs more than reading a short one
_STRING_TYPES: dict = {}


def _string_dtype(tid: h5t.TypeStringID) -> tuple:
    """(the dtype of string type `tid` as h5py's ``tid.dtype``, the memory type h5py reads it
    with when it is of variable length, else None: a fixed-length one is read in its own type)."""
    key = (tid.is_variable_str(), tid.get_cset(), tid.get_size())
    known = _STRING_TYPES.get(key)
    if known is None:
        dtype = tid.dtype
        known = _STRING_TYPES[key] = (dtype, h5t.py_create(dtype) if key[0] else None)
    return known


def string_attr(obj, name: str):
    """Attribute `name` of `obj` (an h5py object or a low-level id) as h5py's ``attrs.get``
    returns it, but a scalar string (a Keras ``name``, say) as str, read on low-level handles: h5py's
    attribute read costs more than a small weight's."""
    oid, bname = _low(obj), name.encode("utf-8")
    if not h5a.exists(oid, bname):
        return None
    aid = h5a.open(oid, bname)
    tid = aid.get_type()
    if isinstance(tid, h5t.TypeStringID) and aid.get_space().get_simple_extent_type() == h5s.SCALAR:
        dtype, memory = _string_dtype(tid)
        arr = np.empty((), dtype=dtype)
        aid.read(arr, mtype=memory if dtype.kind == "O" else tid)
        value = arr[()]
        try:
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            pass
    return (h5py.Group(oid) if isinstance(oid, h5g.GroupID) else h5py.Dataset(oid)).attrs.get(name)


def split_name_list(obj, name: str, values: np.ndarray) -> None:
    """Write a list attribute as Keras writes one too long for an object header: fixed-length
    UTF-8 bytes, split by ``np.array_split`` into the fewest chunks of at most HEADER_LIMIT
    bytes, as ``name0``, ``name1``, ..."""
    data = np.asarray([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values])
    chunks = 1
    while any(part.nbytes > HEADER_LIMIT for part in np.array_split(data, chunks)):
        chunks += 1
    for k, part in enumerate(np.array_split(data, chunks)):
        obj.attrs[f"{name}{k}"] = part


def decode(value):
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [decode(v) if isinstance(v, (bytes, np.bytes_)) else str(v) for v in value.reshape(-1)]
    return value


def attr_value(obj, name: str, default=None):
    """Attribute `name` of `obj` (an h5py object or a low-level id) as h5py's ``attrs[name]``
    returns it, or `default` when there is none; strings are read on low-level handles (h5py's
    attribute manager costs more than a small weight's read), anything else through h5py."""
    oid, bname = _low(obj), name.encode("utf-8")
    if not h5a.exists(oid, bname):
        return default
    return _read_attr(oid, h5a.open(oid, bname), name)


def _read_attr(oid, aid: h5a.AttrID, name: str, tid=None):
    """The value of attribute `aid` (`name`, of object `oid`; `tid` its type when the caller has
    it) as :func:`attr_value` returns it."""
    tid, space = aid.get_type() if tid is None else tid, aid.get_space()
    if not isinstance(tid, h5t.TypeStringID) or space.get_simple_extent_type() == h5s.NULL:
        return (h5py.Group(oid) if isinstance(oid, h5g.GroupID) else h5py.Dataset(oid)).attrs[name]
    dtype, memory = _string_dtype(tid)
    arr = np.empty(space.shape, dtype=dtype)
    if dtype.kind == "O":  # variable-length, decoded as h5py decodes them
        aid.read(arr, mtype=memory)
        arr = np.array([v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in arr.flat],
                       dtype=arr.dtype).reshape(arr.shape)
    else:
        aid.read(arr, mtype=tid)
    return arr[()] if arr.ndim == 0 else arr


def read_name_list(obj, name: str, known: dict | None = None) -> list[str] | None:
    """A Keras list attribute of `obj` (an h5py object or a low-level id), also when split into
    ``name0``, ``name1``, ... (the plain name wins).  `known`: the attributes of `obj` a
    :func:`walk` kept (all of those it keeps, so that a name missing there is missing in the
    file), read instead of the file's."""
    value = attr_value(obj, name, _MISSING) if known is None else known.get(name, _MISSING)
    if value is not _MISSING:
        value = decode(value)
        if isinstance(value, str):
            return [value]
        if isinstance(value, np.ndarray):  # the empty float64 array of a weightless layer
            return [] if value.size == 0 else [str(v) for v in value.reshape(-1)]
        return value

    def exists(k):
        return h5a.exists(_low(obj), f"{name}{k}".encode()) if known is None else f"{name}{k}" in known

    if not exists(0):
        return None
    out, k = [], 0
    while exists(k):
        out.extend(read_name_list(obj, f"{name}{k}", known) or [])
        k += 1
    return out


#: what :func:`attr_value` is given for an attribute that is not there
_MISSING = object()


class DatasetInfo(NamedTuple):
    """What the walk learns of a dataset without reading it."""

    shape: tuple
    dtype: np.dtype
    stored: int = 0            # bytes allocated in the file
    placeholder: bool = False  # made by :func:`placeholder` (a packed skeleton's stand-in)
    values: np.ndarray | None = None  # the data, in the machine's byte order, when the walk read it
    contiguous: bool = False   # stored in one block: not chunked (so not filtered), not compact


def dataset_info(dsid: h5d.DatasetID, dcpl=None, tid=None, layout=None, dtype=None) -> DatasetInfo:
    """`dcpl`, `tid` (or its `dtype`) and `layout`: the dataset's creation property list, type and
    layout, when the caller has them already (each low-level handle h5py makes costs more than a
    small weight's read)."""
    dcpl = dsid.get_create_plist() if dcpl is None else dcpl
    if dtype is None:
        dtype = (dsid.get_type() if tid is None else tid).dtype
    layout = dcpl.get_layout() if layout is None else layout
    return DatasetInfo(tuple(int(n) for n in (dsid.shape or ())), dtype, int(dsid.get_storage_size()),
                       dcpl.get_fill_time() == PLACEHOLDER_FILL_TIME, contiguous=layout == h5d.CONTIGUOUS)


#: HDF5 types of NumPy dtypes, made once each (h5py makes one per read or write otherwise)
_MEMORY_TYPES: dict = {}
_FILE_TYPES: dict = {}


def memory_type(dtype: np.dtype) -> h5t.TypeID:
    """The HDF5 type of an array of `dtype` in memory, for a read or write of one."""
    return _type_of(_MEMORY_TYPES, dtype, lambda: h5t.py_create(dtype))


def _type_of(table: dict, dtype: np.dtype, make) -> h5t.TypeID:
    if dtype.metadata is not None:  # (h5py's string and reference dtypes: equal to plain ones)
        return make()
    tid = table.get(dtype)
    if tid is None:
        tid = table[dtype] = make()
    return tid


#: the standard types a Keras file holds, which HDF5 converts safely; anything else (a float with
#: odd bit fields, a variable-length sequence, a reference) is refused before it is read or copied
_FLOATS = tuple(getattr(h5t, f"IEEE_F{bits}{order}") for order in ("LE", "BE") for bits in (32, 16, 64))
_INTEGERS = tuple(getattr(h5t, f"STD_{sign}{bits}{order}") for sign in "IU" for bits in (8, 16, 32, 64)
                  for order in ("LE", "BE"))


def type_problem(tid: h5t.TypeID) -> str | None:
    """Why an HDF5 datatype is not one we read and copy safely, or None when it is."""
    cls = tid.get_class()
    if cls == h5t.FLOAT:
        return None if any(tid.equal(t) for t in _FLOATS) else "a non-standard float type"
    if cls == h5t.INTEGER:
        return None if any(tid.equal(t) for t in _INTEGERS) else "a non-standard integer type"
    if cls == h5t.STRING:  # h5py decodes ASCII and UTF-8 only, and refuses any other character set when read
        return None if tid.get_cset() in (h5t.CSET_ASCII, h5t.CSET_UTF8) else \
            f"a string type of unknown character set (code {tid.get_cset()})"
    if cls == h5t.OPAQUE:
        return None
    if cls == h5t.ENUM:
        return type_problem(tid.get_super())
    if cls == h5t.ARRAY:
        return type_problem(tid.get_super())
    if cls == h5t.COMPOUND:
        for k in range(tid.get_nmembers()):
            problem = type_problem(tid.get_member_type(k))
            if problem is not None:
                return problem
        return None
    if cls == h5t.REFERENCE:
        return "object or region references (they would point into the source file)"
    if cls == h5t.VLEN:
        return "a variable-length sequence type"
    return f"an unsupported HDF5 type class ({cls})"


#: the attributes a :func:`walk` keeps the values of (given `kept`): the name lists of a Keras
#: file, also split (``layer_names0``, ...), and a Keras 3 ``vars`` group's ``name``: read while
#: the walk has their objects open, as a later lookup of each group costs more than the read
KEPT_ATTRS = re.compile(rb"(?:layer_names|weight_names)\d*|name")


def check_attrs(oid, path: str, where: str, kept: dict | None = None) -> None:
    """Refuse attributes of types we do not read or copy safely (before anything reads them).
    With `kept`, the values of the object's KEPT_ATTRS go into ``kept[path]`` (``{name: value}``
    as :func:`attr_value` reads them), which is None when one did not read (a damaged attribute
    is an error only where it is needed: it is read from the file then)."""
    for k in range(h5a.get_num_attrs(oid)):
        aid = h5a.open(oid, index=k)
        tid = aid.get_type()
        problem = type_problem(tid)
        if problem is not None:
            name = aid.get_name().decode("utf-8", "replace")
            raise KerasFileError(f"{where}: attribute {name!r} of {path or '/'!r} has {problem}; refused")
        if kept is not None and KEPT_ATTRS.fullmatch(bname := aid.get_name()):
            values = kept.setdefault(path, {})
            if values is not None:
                name = bname.decode("ascii")
                try:
                    values[name] = _read_attr(oid, aid, name, tid)
                except (OSError, ValueError, TypeError, RuntimeError, KeyError):
                    kept[path] = None


def check_dataset(dsid: h5d.DatasetID, path: str, where: str, exempt: bool = False,
                  types: list | None = None) -> DatasetInfo:
    """Refuse external and virtual datasets, types we do not read safely, and (unless `exempt`)
    declared sizes the stored data cannot back.  `types`: the (type, dtype, problem) of the
    types seen before (a walk's), compared first: comparing two HDF5 types costs a tenth of
    making a NumPy dtype of one."""
    dcpl = dsid.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise KerasFileError(f"{where}: virtual dataset {path!r} refused")
    if dcpl.get_external_count() > 0:
        raise KerasFileError(f"{where}: dataset {path!r} stores its data in external files; refused")
    tid = dsid.get_type()
    dtype, problem = _described(tid, [] if types is None else types)
    if problem is not None:
        raise KerasFileError(f"{where}: dataset {path!r} has {problem}; refused")
    info = dataset_info(dsid, dcpl, dtype=dtype, layout=layout)
    if not exempt:
        check_declared(info, path, where)
    return info


#: :func:`check_dataset` remembers at most this many types of a walk
_TYPES_KEPT = 8


def _described(tid: h5t.TypeID, types: list) -> tuple:
    """(the NumPy dtype of `tid`, :func:`type_problem` of it), from `types` when an equal type is
    there, else made and added to it."""
    for known, dtype, problem in types:
        if tid.equal(known):
            return dtype, problem
    problem = type_problem(tid)
    dtype = tid.dtype if problem is None else None
    if len(types) < _TYPES_KEPT:
        types.append((tid, dtype, problem))
    return dtype, problem


def unbacked_bytes(info: DatasetInfo) -> int:
    """The bytes a dataset declares beyond what its stored data can back (1000 times it: the
    best compression; a never-written dataset backs nothing): reading or copying them costs
    memory and disk the file does not hold."""
    declared = math.prod(info.shape) * info.dtype.itemsize
    return declared if declared > 1000 * info.stored else 0


def check_declared(info: DatasetInfo, path: str, where: str) -> None:
    """Refuse a dataset declaring more than the stored data can back (never-written hostile sizes)."""
    if unbacked_bytes(info) > UNCHECKED_BYTES:
        raise KerasFileError(f"{where}: dataset {path!r} declares {unbacked_bytes(info)} bytes but stores "
                             f"{info.stored}; refused")


def check_total_declared(members: dict, where: str, exempt=frozenset()) -> None:
    """Refuse a file whose datasets together declare more than UNCHECKED_BYTES their stored data
    cannot back (40 never-written kernels of 60 MiB each pass one by one)."""
    total = sum(unbacked_bytes(info) for path, info in members.items() if info is not None and path not in exempt)
    if total > UNCHECKED_BYTES:
        raise KerasFileError(f"{where}: its datasets declare {total} bytes more than they store; refused")


#: with `read_small`, :func:`walk` reads the numbers of each dataset of at most SMALL_BYTES while it
#: has it open, up to SMALL_TOTAL_BYTES in all: opening a small dataset again costs several times
#: reading it
SMALL_BYTES = 4096
SMALL_TOTAL_BYTES = 16 << 20


def walk(group: h5py.Group, where: str, exempt=frozenset(), sizes: bool = True,
         read_small: bool = False, kept: dict | None = None) -> dict[str, DatasetInfo | None]:
    """Check every member below `group` (and `group` itself); return ``{path: DatasetInfo, or
    None for a group}``, depth first in name order.

    Soft and external links are refused, as are objects linked more than once (a hard-link
    cycle, or one dataset under two names: by their link count, and by their address, which a
    damaged count cannot hide), datatypes and attributes we do not read safely
    (:func:`type_problem`); datasets whose path is in `exempt` (the unallocated placeholders of
    a packed skeleton), or all when not `sizes`, skip the size check (:func:`check_declared`).
    With `read_small`, the numbers of small datasets are read once checked (see SMALL_BYTES).
    With `kept` (a dict), the values of each object's KEPT_ATTRS are read once checked, into
    ``kept[path]`` (``{name: value}``, or None when one did not read; an object without any has
    no entry): see :func:`kept_attrs`.

    The walk lists each group's links once (H5Literate) and opens each member in its own
    group, on low-level handles: a lookup by the full path from the root, or h5py's objects,
    cost more than reading the weights of a small model.  Only the groups on the way down to
    the member at hand are open at a time.
    """
    root = group.id
    check_attrs(root, "", where, kept)
    members = {}
    budget = SMALL_TOTAL_BYTES if read_small else 0
    types: list = []  # (see check_dataset)
    seen = {_address(h5o.get_info(root))}
    stack = [(root, "", iter(_links(root, "", where)))]
    while stack:
        gid, prefix, names = stack[-1]
        bname = next(names, None)
        if bname is None:
            stack.pop()
            continue
        try:
            path = prefix + bname.decode("utf-8")
        except UnicodeDecodeError:  # (no Keras name is one; the paths of the file layer are text)
            raise KerasFileError(f"{where}: a member of {prefix.rstrip('/') or '/'!r} has a name that is not "
                                 f"UTF-8 ({bname!r}); refused") from None
        try:
            oid = h5o.open(gid, bname)
            object_info = h5o.get_info(oid)
            if object_info.rc > 1 or _address(object_info) in seen:
                raise KerasFileError(f"{where}: {path!r} is linked more than once (a cycle?); refused")
            seen.add(_address(object_info))
            if isinstance(oid, h5d.DatasetID):
                info = members[path] = check_dataset(oid, path, where, not sizes or path in exempt, types)
                if budget and _small(info) and info.dtype.itemsize * math.prod(info.shape) <= budget:
                    values = _read_early(oid, info)
                    if values is not None:
                        members[path] = info = info._replace(values=values)
                        budget -= values.nbytes
            elif isinstance(oid, h5g.GroupID):
                members[path] = None
                stack.append((oid, path + "/", iter(_links(oid, path, where))))
            else:
                raise KerasFileError(f"{where}: unsupported object at {path!r}")
            if object_info.num_attrs:
                check_attrs(oid, path, where, kept)
        except KerasFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            if not of_the_file(exc):
                raise
            # (a KeyError's text without the quotes of its repr)
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else first_line(exc)
            raise KerasFileError(f"{where}: unreadable object at {path!r}, its HDF5 metadata damaged "
                                 f"({text})") from None
    if sizes:
        check_total_declared(members, where, exempt)
    return members


def kept_attrs(kept: dict | None, path: str) -> dict | None:
    """The KEPT_ATTRS of the object at `path` as the walk that filled `kept` read them (all it
    has of those names), or None when they are to be read from the file (no walk kept them, or
    one did not read)."""
    return None if kept is None else kept.get(path, {})


def _read_early(oid, info: DatasetInfo):
    """A small dataset's values read while the walk has it open, or None when they do not read
    (a damaged chunk, a filter not available): the walk judges structure, and such a dataset is
    an error only where it is read for its values (one the rewrite copies as it is, or drops with
    the optimizer, is not)."""
    try:
        return _read_all(oid, info)
    except (OSError, ValueError, TypeError, RuntimeError):
        return None


def _small(info: DatasetInfo) -> bool:
    """Whether the walk reads a dataset's numbers (see SMALL_BYTES): a small one of a plain number
    type whose data the file holds."""
    return (info.dtype.kind in "fiu" and info.dtype.metadata is None and info.stored > 0 and not info.placeholder
            and info.dtype.itemsize * math.prod(info.shape) <= SMALL_BYTES)


def _read_all(dsid: h5d.DatasetID, info: DatasetInfo) -> np.ndarray:
    """All numbers of a dataset, in the machine's byte order."""
    out = np.empty(info.shape, info.dtype.newbyteorder("="))
    if out.size:
        dsid.read(h5s.ALL, h5s.ALL, out, mtype=memory_type(out.dtype))
    return out


def _address(info) -> tuple:
    """Where an object lives (file and header address): the same object reached twice has one."""
    return info.fileno, info.addr


def _links(gid: h5g.GroupID, path: str, where: str) -> list[bytes]:
    """The names of a group's links in name order; soft, external and user-defined links refused."""
    names = []

    def take(name: bytes, info):  # h5py's iteration callbacks must not raise: they return the error
        if info.type != h5l.TYPE_HARD:
            kind = "external link" if info.type == h5l.TYPE_EXTERNAL else "soft link"
            return KerasFileError(f"{where}: {kind} at {(path + '/' if path else '') + name.decode('utf-8', 'replace')!r} "
                                  f"refused")
        names.append(name)
        return None

    try:
        problem, _ = gid.links.iterate(take, info=True)
    except (OSError, ValueError, RuntimeError) as exc:  # h5py's own decoding of damaged names
        raise KerasFileError(f"{where}: unreadable group {path or '/'!r}, its HDF5 metadata damaged "
                             f"({first_line(exc)})") from None
    if problem is not None:
        raise problem
    return names


#: HDF5's metadata cache of each file we open or write is kept to this size (on-disk bytes; its
#: decoded entries take some 3 times as much memory): HDF5 lets it grow to 32 MB by default,
#: which a walk over 10,000 small datasets filled, 94 MB resident and kept after the file
#: closed, for no gain on a walk that sees each object once or twice
METADATA_CACHE_BYTES = 4 << 20


def bounded(f: h5py.File) -> h5py.File:
    """`f` (just opened or created), its metadata cache bounded by METADATA_CACHE_BYTES."""
    config = f.id.get_mdc_config()
    config.max_size = max(METADATA_CACHE_BYTES, config.min_size)
    config.initial_size = min(config.initial_size, config.max_size)
    f.id.set_mdc_config(config)
    return f


def open_image(image: bytes) -> h5py.File:
    """The HDF5 file whose bytes are `image`, read-only, held by HDF5's core driver (a copy: the
    caller may drop `image`), its metadata cache bounded: HDF5 reads its metadata by memcpy,
    where h5py's file-object driver over a BytesIO made a Python call for each piece (a fifth
    of a walk of 10,000 small weights).  Each image gets a name of its own: HDF5 takes two
    in-memory files of one name for one file, and gave the second the first one's contents."""
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    fapl.set_file_image(image)
    return bounded(h5py.File(h5f.open(f"image-{next(_IMAGES)}".encode(), h5f.ACC_RDONLY, fapl=fapl)))


#: numbers the images :func:`open_image` opens
_IMAGES = itertools.count()


def _open_rw(path: str, flags: int) -> int:
    """open()'s opener for "r+b" that also creates the file (mode 0666 less the umask)."""
    return os.open(path, flags | os.O_CREAT, 0o666)


class _Sink:
    """The file under an HDF5 file being written, for h5py's file-object driver: a write the
    file system refuses (a full disk, a quota) is recorded and the data dropped, so that HDF5
    itself never sees a failed write.  HDF5 does not recover from one: closing the datasets and
    the file failed again, left objects half released, and the process crashed later (when h5py
    freed them, or at exit)."""

    def __init__(self, path: str):
        # unbuffered: a buffer would be flushed by a seek or a read, outside the guard.  Not
        # opened with O_TRUNC ("w+b") when already empty (our temporary files are created empty):
        # ext4 takes a truncation to 0 for a file being replaced, and then allocates and starts
        # writing back all its blocks when it is closed (4-26 ms for 100 MB, in the close)
        self.file = open(path, "r+b", buffering=0, opener=_open_rw)
        if os.fstat(self.file.fileno()).st_size:
            self.file.truncate(0)
        self.error: OSError | None = None
        # HDF5 calls the driver for each piece of metadata (some 3 per object of a file of many
        # small weights): what cannot fail on a file open for writing is the file's own method,
        # without a call of ours around it
        self.seek, self.tell, self.readinto, self.read = self.file.seek, self.file.tell, self.file.readinto, self.file.read

    def write(self, data) -> int:
        size = memoryview(data).nbytes  # (in bytes, whatever the view's item size)
        if self.error is None:
            try:
                written = self.file.write(data)
                if written != size:  # an unbuffered write may write part (up to a size limit)
                    self._write_rest(memoryview(data).cast("B")[written:])
            except OSError as exc:
                self.error = exc
        return size

    def _write_rest(self, view: memoryview) -> None:
        while view.nbytes:
            view = view[self.file.write(view):]

    def _guard(self, call, *args):
        if self.error is None:
            try:
                return call(*args)
            except OSError as exc:
                self.error = exc
        return None

    def truncate(self, size=None) -> int:
        self._guard(self.file.truncate, size)
        return size

    def flush(self) -> None:
        self._guard(self.file.flush)


#: the sinks of the files being written, by HDF5 file number
_SINKS: dict[int, _Sink] = {}


@contextlib.contextmanager
def new_file(path: str):
    """A new HDF5 file at `path` (see :class:`_Sink`), closed when the block ends; OSError
    when the file system refused a write, at once in :func:`copy_tree`, else when it ends."""
    sink = _Sink(path)
    try:
        f = bounded(h5py.File(sink, "w"))
        _SINKS[f.id.fileno] = sink
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):  # the contents no longer matter
                f.close()
            raise
        f.close()
    finally:
        _SINKS.pop(next((k for k, v in _SINKS.items() if v is sink), None), None)
        sink.file.close()
    if sink.error is not None:
        raise sink.error


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
    memory).  `data` is an array of numbers.  The attributes of `like` (the dataset it replaces) are copied over.
    """
    dtype = data.dtype if dtype is None else np.dtype(dtype)
    options = filters(compress, data.size * dtype.itemsize) if data.ndim else {}
    if options:
        options["chunks"] = chunk_shape(data.shape, dtype.itemsize)
        dset = group.create_dataset(name, shape=data.shape, dtype=dtype, **options)
    else:
        dset = h5py.Dataset(_contiguous(group, name, data.shape, dtype))
    write_values(dset, data)
    if like is not None:
        copy_attrs(like, dset)
    return dset


def _contiguous(group: h5py.Group, name: str, shape: tuple, dtype: np.dtype, fill_never: bool = False) -> h5d.DatasetID:
    """A new contiguous dataset, created on low-level handles exactly as h5py's
    ``create_dataset(name, shape=shape, dtype=dtype)`` creates it (no times recorded, attribute
    order as h5py's config says), or with `fill_never` as it does given ``fill_time="never"``,
    without the work of its keyword options: that costs more than writing a small weight.
    (HDF5 copies the property list and the type it is given.)"""
    track = h5.get_config().track_order
    dcpl = _CONTIGUOUS_DCPL.get((track, fill_never))
    if dcpl is None:
        dcpl = _CONTIGUOUS_DCPL[track, fill_never] = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_obj_track_times(False)
        dcpl.set_attr_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED if track else 0)
        if fill_never:
            dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
    tid = _type_of(_FILE_TYPES, dtype, lambda: h5t.py_create(dtype, logical=1))
    return h5d.create(group.id, name.encode("utf-8"), tid, h5s.create_simple(shape), dcpl=dcpl)


#: the creation property lists of :func:`_contiguous`, by h5py's track_order and `fill_never`
_CONTIGUOUS_DCPL: dict = {}


def is_placeholder(dset: h5py.Dataset) -> bool:
    return dset.id.get_create_plist().get_fill_time() == PLACEHOLDER_FILL_TIME


def placeholder(group: h5py.Group, name: str, shape: tuple, dtype,
                like: h5py.Dataset | None = None) -> h5py.Dataset:
    """An unallocated dataset (no data) standing for one stored elsewhere, with `like`'s
    attributes, marked as a placeholder (:data:`PLACEHOLDER_FILL_TIME`)."""
    shape = tuple(shape)  # (h5py sets no fill time on a scalar dataset, nor do we)
    dset = h5py.Dataset(_contiguous(group, name, shape, np.dtype(dtype), fill_never=bool(shape)))
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

    def keeps(self, info: DatasetInfo) -> bool:
        """Whether a dataset the walk describes as `info` is stored as :meth:`copy` would copy
        it, so that a subtree of such datasets is copied at once (:meth:`copy_whole`)."""
        return True

    def copy_whole(self, src: h5g.GroupID, dst: h5g.GroupID, name: bytes, path: str) -> None:
        """An exact copy of member `name` of `src` (a group with everything below it, or a
        dataset; at `path` in the tree copied) as member `name` of `dst`: one H5Ocopy."""
        h5o.copy(src, name, dst, name)


#: hook(dst_group, name, src_dataset) writes the replacement of a dataset (or nothing, to drop it)
Hook = Callable[[h5py.Group, str, h5py.Dataset], None]


def ancestors(paths) -> set:
    """Every group path above each of `paths` (``a/b/c`` -> ``a``, ``a/b``)."""
    return {group for path in paths for group in _prefixes(path)}


def copy_tree(src: h5py.Group, dst: h5py.Group, members: dict, hooks: dict[str, Hook],
              skip: frozenset = frozenset(), out: Datasets = Datasets(), overwrite: dict[str, Hook] = {},
              replace: dict[str, Hook] = {}) -> None:
    """Copy the members of `src` into `dst`: groups recreated with their attributes, datasets
    copied exactly by `out` unless their path (relative to `src`) has a hook; paths in `skip`
    are left out with everything below them.  `members` is the checked :func:`walk` of `src`.

    A subtree holding no hooked or skipped path and only datasets `out` keeps as they are
    (:meth:`Datasets.keeps`) is copied in one H5Ocopy: most of a file of many small weights is
    copied by HDF5 alone, without an object per member here.  The datasets of `overwrite`
    (paths outside `skip`, none of them hooked) are copied so too, each then handed to its hook
    as ``hook(group, name, copy)`` (`name` its path below `group`) to write new values into
    the copy: for a small dataset that keeps its type and layout, creating it and the groups
    above it anew costs more than copying its bytes once more.  The placeholders of `replace`
    (datasets without data) are copied so too, then unlinked from the copy and handed to their
    hook as ``hook(group, name, placeholder)`` to create their dataset anew in `group` (paths
    outside `skip`, none of them hooked, all :func:`replaceable`).  A group holding more than OVERWRITE_RUN of these datasets is recreated
    rather than copied whole, so that each copy is reached while HDF5 still has it in its cache
    (after one copy of 10,000 layers, opening each kernel again cost as much as the copy).
    """
    apart = {path for path, info in members.items()
             if info is not None and not out.keeps(info) and path not in replace and path not in overwrite}
    opened = ancestors(set(hooks) | set(skip) | apart)
    below = Counter(group for path in (*overwrite, *replace) for group in _prefixes(path))
    opened.update(group for group, count in below.items() if count > OVERWRITE_RUN)
    later: dict = {}  # the path copied whole -> the datasets of `overwrite` and `replace` it holds
    for path in (*overwrite, *replace):
        top = next((group for group in _prefixes(path) if group not in opened), path)
        later.setdefault(top, []).append(path)
    sink = _SINKS.get(dst.id.fileno)
    _copy_group(src.id, dst.id, _Copy(hooks, skip, out, opened, apart, sink, overwrite, replace, later), "",
                src.id.get_create_plist())


def replaceable(root: h5py.Group, members: dict, paths) -> set:
    """Those of `paths` whose datasets copy_tree may take as `replace`: placeholders without data
    (`members` is the walk of `root`) in groups that do not list their links in creation order,
    which unlinking one and creating it anew would change."""
    out, tracked = set(), {}
    for path in paths:
        info = members.get(path)
        if not (isinstance(info, DatasetInfo) and info.placeholder and not info.stored):
            continue
        parent = path.rpartition("/")[0]
        if parent not in tracked:
            gid = h5g.open(root.id, parent.encode("utf-8")) if parent else root.id
            tracked[parent] = gid.get_create_plist().get_link_creation_order() & h5p.CRT_ORDER_TRACKED
        if not tracked[parent]:
            out.add(path)
    return out


#: see :func:`copy_tree`
OVERWRITE_RUN = 64


def _prefixes(path: str):
    """The group paths above `path`, from the top (``a/b/c`` -> ``a``, ``a/b``)."""
    at = path.find("/")
    while at >= 0:
        yield path[:at]
        at = path.find("/", at + 1)


class _Copy(NamedTuple):
    """What :func:`_copy_group` does below each group (see :func:`copy_tree`)."""

    hooks: dict
    skip: frozenset
    out: Datasets
    opened: set         # groups recreated, their members copied one by one
    apart: set          # datasets `out` stores its own way
    sink: _Sink | None  # the output file's, when it has one
    overwrite: dict     # path -> hook of a dataset written into its copy
    replace: dict       # path -> hook of a placeholder created anew in place of its copy
    later: dict         # path copied whole -> the paths of `overwrite` and `replace` below it

    def stop_if_full(self) -> None:
        """Raise the output file's write error: a full disk stops the copy at once."""
        if self.sink is not None and self.sink.error is not None:
            raise self.sink.error


def write_values(dset: h5py.Dataset, data: np.ndarray) -> None:
    """Write all of `data` (of the dataset's shape) into `dset`, HDF5 converting its type."""
    if data.size:
        data = np.ascontiguousarray(data)
        dset.id.write(h5s.ALL, h5s.ALL, data, mtype=memory_type(data.dtype))


def _member_names(gid: h5g.GroupID, gcpl) -> list[bytes]:
    """The names of a group's members in the order h5py lists them (of creation where the group
    tracks it, else of name), in one call: the group's iterator asks HDF5 once per name.
    `gcpl`: the group's creation property list."""
    tracked = gcpl.get_link_creation_order() & h5p.CRT_ORDER_TRACKED
    names = []
    gid.links.iterate(names.append, idx_type=h5.INDEX_CRT_ORDER if tracked else h5.INDEX_NAME)
    return names


def _copy_group(src: h5g.GroupID, dst: h5g.GroupID, copy: _Copy, prefix: str, gcpl) -> None:
    """The members of group `src` (at `prefix`; `gcpl` its creation property list) into `dst`,
    on low-level handles: h5py's objects are made only for the hooks and for datasets `out`
    stores its own way.  Each group's property list is fetched once, for its creation, its
    attributes and its members' order (each handle costs about as much as creating a link)."""
    for bname in _member_names(src, gcpl):
        name = bname.decode("utf-8", "surrogateescape")
        path = prefix + name
        if path in copy.skip:
            continue
        copy.stop_if_full()
        if path in copy.opened:  # a group with something below it to rewrite, leave out or store apart
            sub_src = h5g.open(src, bname)
            sub_gcpl = sub_src.get_create_plist()
            sub = new_group(dst, bname, sub_gcpl)
            copy_attrs(sub_src, sub, sub_gcpl)
            _copy_group(sub_src, sub, copy, path + "/", sub_gcpl)
        elif path in copy.hooks:
            copy.hooks[path](h5py.Group(dst), name, h5py.Dataset(h5d.open(src, bname)))
        elif path in copy.apart:
            copy.out.copy(h5py.Group(dst), name, h5py.Dataset(h5d.open(src, bname)))
        else:
            copy.out.copy_whole(src, dst, bname, path)
            for below in copy.later.get(path, ()):
                copy.stop_if_full()
                inner = bname + below[len(path):].encode("utf-8")
                if below in copy.overwrite:
                    copy.overwrite[below](h5py.Group(dst), inner.decode("utf-8", "surrogateescape"),
                                          h5py.Dataset(h5d.open(dst, inner)))
                    continue
                parent, _, leaf = inner.rpartition(b"/")
                group = h5g.open(dst, parent) if parent else dst
                group.unlink(leaf)
                copy.replace[below](h5py.Group(group), leaf.decode("utf-8", "surrogateescape"),
                                    h5py.Dataset(h5d.open(src, inner)))
