"""The packed storage: integer codes bit-packed, with their scales, in a file Keras refuses.

A packed file is an HDF5 file whose root holds only the group ``wqkernels``::

    wqkernels/            attrs format="wqkernels-packed", version=3, index_bytes, skeleton_bytes
        index             uint8, zlib-compressed JSON: layout, recipe, per quantized tensor its
                          path, shape, bits, axis, block size, offsets into the arrays below and
                          a CRC-32 of the record and its data, and the paths and CRC-32s of the
                          datasets kept in ``datasets``
        skeleton          uint8, xz-compressed image of the HDF5 weights file as the float32
                          rewrite would be, with each quantized dataset and each dataset kept in
                          ``datasets`` left as a placeholder: unallocated, same name, shape, dtype
                          and attributes, marked by its fill time (:func:`~.h5tree.placeholder`)
        codes             uint8, the codes of all quantized tensors, bit-packed, concatenated
        scales            float32, their scales, concatenated
        zero_points       uint8, their zero points (int8 bytes when signed), concatenated;
                          a tensor whose zero points are all 0 (symmetric) stores none
        datasets/         only when there are any: the datasets of the float32 rewrite of 64 KiB
            0, 1, ...     or more that are not quantized (optimizer state, weights the recipe
                          leaves alone) as that rewrite stores them (type, filters, chunks,
                          attributes), in the order of the index's paths

A reader checks that every placeholder has exactly one record or kept dataset and the other
way round, that shapes and dtypes agree, and each tensor's CRC when it is read: a damaged file is
an error naming the weight, never different weights.  Versions 1 and 2 (no marks, no CRCs) are
still read, with every check they allow.

Keras finds neither ``layer_names``/``model_config`` nor ``layers``/``vars`` in it, so
``load_model`` and ``load_weights`` raise instead of loading codes as weights.  Storing all codes
in a few datasets and the small tensors inside one compressed image avoids the kilobyte of HDF5
headers each dataset and group would cost.

The writer streams: codes, scales and zero points are appended as each tensor comes (kept in
memory, then one contiguous dataset, while an array totals under 1 MiB; else written to a dataset
of 1 MiB chunks that grows), large datasets go to ``datasets`` as they are copied, and only the
small rest of the skeleton is held in memory.
"""
from __future__ import annotations

import contextlib
import json
import lzma
import math
import numbers
import zlib

import h5py
import numpy as np

from ..packing import packed_size, unpack_bits
from ..quantization import PackedArray, QuantizedArray
from .errors import KerasFileError
from .h5tree import (DatasetInfo, bounded, check_declared, check_global_heaps, check_total_declared, filters,
                     is_placeholder, new_dataset, new_file, open_image, placeholder, string_attr, walk)
from .layouts import PACKED_GROUP, weights_layout
from .writers import Writer

FORMAT = "wqkernels-packed"
VERSION = 3
#: the skeleton is decompressed into memory: refuse it beyond MAX_SKELETON_BYTES or more than
#: MAX_RATIO times its compressed size (plus 64 MiB)
MAX_SKELETON_BYTES = 1 << 32
MAX_RATIO = 1000
#: the index describes the datasets of the skeleton: its text may take at most this many bytes
#: per dataset of the skeleton (a record takes ~300), plus 1 MiB, before it is parsed
INDEX_BYTES_PER_DATASET = 4096
#: datasets of the skeleton this large or larger are kept in ``datasets``, outside the image
LARGE_BYTES = 64 << 10
#: an array of codes, scales or zero points stays in memory (and contiguous) below this size;
#: beyond, it is written in chunks of this size
CHUNK_BYTES = 1 << 20
#: the arrays of the container: name, dtype
ARRAYS = (("codes", np.uint8), ("scales", np.float32), ("zero_points", np.uint8))
#: preset 9's dictionary; smaller inputs get one just large enough (the same compression, a
#: fraction of the 670 MiB its match finder takes)
XZ_DICT_BYTES = 64 << 20
#: skeletons up to this size are compressed at xz preset 9e; larger ones, which only models of
#: very many small weights have (13.6 MB for 10,000 weights of 16 floats, mostly HDF5 headers),
#: at preset 3 and its 4 MiB dictionary: there 0.36 s against 17 s CPU, the image 10 % larger,
#: the compressor's memory 84 MiB (a dictionary as large as the image took 168 MiB at 10,000
#: weights, and preset 9's 670 MiB beyond)
XZ_EXTREME_BYTES = 4 << 20
#: the codes, scales and zero points of a container are read whole when they are this small
#: (one read instead of one per tensor), else slice by slice
READ_WHOLE_BYTES = 16 << 20


class PackedWriter(Writer):
    """Writes the packed container at the path given to `open` while the rewrite copies the
    weights file into the in-memory skeleton `open` yields: quantized tensors as they come
    (`weight`), large datasets of the skeleton as they are copied; the index and the compressed
    skeleton when the block ends."""

    holds_codes = True

    @contextlib.contextmanager
    def open(self, path: str):
        with new_file(path) as f:
            self.group = f.create_group(PACKED_GROUP)
            self.group.attrs["format"] = FORMAT
            self.group.attrs["version"] = VERSION
            self.tensors, self.datasets, self.dataset_crcs, self._kept = [], [], [], None
            self._arrays = {name: _GrowingArray(self.group, name, dtype, self.recipe.compress)
                            for name, dtype in ARRAYS}
            with bounded(h5py.File("skeleton", "w", driver="core", backing_store=False, block_size=1 << 22)) as skeleton:
                yield skeleton
                skeleton.flush()
                image = skeleton.id.get_file_image()
            self._finish(image)

    def start(self, source, report) -> None:
        super().start(source, report)
        self._members = source.members  # (the walk's types: h5py's Dataset.dtype costs more than a small weight)

    def weight(self, group, name, like, entry, x, quantization, out, original=None):
        """The codes of one weight appended to the arrays, a placeholder in the skeleton; the
        values returned are the codes' dequantization, made once the codes are written out."""
        codes = quantization.packed(x)
        nbytes = self.add(entry.path, entry.shape, codes, self.recipe.compress)
        scale, zero_point = codes.scale, codes.zero_point
        del codes
        values = quantization.values(x, out, scale, zero_point)
        info = self._members.get(entry.path)
        dtype = info.dtype if info is not None else like.dtype
        placeholder(group, name, entry.shape, dtype, like)  # restored in the weight's own type
        return values, nbytes

    def add(self, path: str, shape: tuple, qa: PackedArray, compress: str) -> int:
        """Append the packed codes of one tensor (quantized on a view of `shape`); returns its stored bytes."""
        scale = np.ascontiguousarray(qa.scale, dtype=np.float32).reshape(-1)
        zero_point = np.ascontiguousarray(qa.zero_point).reshape(-1).view(np.uint8)
        if not zero_point.any():
            zero_point = zero_point[:0]
        record = {
            "path": path, "shape": list(shape), "view_shape": list(qa.shape), "bits": qa.bits,
            "axis": qa.axis, "block_size": qa.block_size, "signed": qa.signed,
            "scale_shape": list(np.shape(qa.scale)), "compress": compress,
        }
        nbytes = 0
        parts = (("codes", qa.packed), ("scales", scale), ("zero_points", zero_point))
        for name, part in parts:
            record[name] = [self._arrays[name].append(part), int(part.size)]
            nbytes += part.nbytes
        record["crc32"] = record_crc(record, [part for _, part in parts])
        self.tensors.append(record)
        return nbytes

    def keeps(self, info: DatasetInfo) -> bool:
        """Small datasets go into the skeleton as they are; large ones (and any with the mark of
        a placeholder, which only ours may have there) into ``datasets``."""
        return (math.prod(info.shape) * info.dtype.itemsize < LARGE_BYTES or not info.shape) and not info.placeholder

    def copy(self, group: h5py.Group, name: str, dset: h5py.Dataset) -> h5py.Dataset:
        """A dataset copied as it is: into the skeleton, or when large (or when it has the mark
        of a placeholder, which only ours may have there) into ``datasets``."""
        if (dset.nbytes < LARGE_BYTES or not dset.ndim) and not is_placeholder(dset):
            return super().copy(group, name, dset)
        return self._kept_crc(super().copy(*self._keep_aside(group, name, dset.shape, dset.dtype, dset), dset))

    def new(self, group: h5py.Group, name: str, data: np.ndarray, compress: str = "none",
            like: h5py.Dataset | None = None, dtype=None) -> h5py.Dataset:
        """A new dataset (of `dtype`, default data's): in the skeleton, or when large in ``datasets``."""
        dtype = data.dtype if dtype is None else np.dtype(dtype)
        if data.size * dtype.itemsize < LARGE_BYTES or not data.ndim:
            return super().new(group, name, data, compress, like, dtype)
        return self._kept_crc(super().new(*self._keep_aside(group, name, data.shape, dtype, like), data, compress,
                                          like, dtype))

    def _kept_crc(self, dset: h5py.Dataset) -> h5py.Dataset:
        """Record the CRC-32 of a dataset just written into ``datasets``."""
        self.dataset_crcs.append(dataset_crc(dset))
        return dset

    def _keep_aside(self, group: h5py.Group, name: str, shape: tuple, dtype, like) -> tuple:
        """Leave a placeholder in the skeleton; returns (group, name) of the dataset in ``datasets``."""
        placeholder(group, name, shape, dtype, like)
        self.datasets.append(f"{group.name}/{name}".lstrip("/"))
        if self._kept is None:
            self._kept = self.group.create_group("datasets")
        return self._kept, str(len(self.datasets) - 1)

    def _finish(self, skeleton) -> None:
        """Complete the arrays, then write the index and the skeleton (bytes of an HDF5 image)."""
        for array in self._arrays.values():
            array.close()
        index = {"format": FORMAT, "version": VERSION, "layout": self.layout, "recipe": self.recipe.to_dict(),
                 "skeleton_bytes": len(skeleton), "tensors": self.tensors, "datasets": self.datasets,
                 "dataset_crc32": self.dataset_crcs}
        text = json.dumps(index).encode()
        self.group.attrs["index_bytes"] = len(text)
        self.group.attrs["skeleton_bytes"] = len(skeleton)
        new_dataset(self.group, "index", np.frombuffer(zlib.compress(text, 9), np.uint8))
        new_dataset(self.group, "skeleton", np.frombuffer(xz_compress(skeleton), np.uint8))


def record_crc(record: dict, parts) -> int:
    """CRC-32 of an index record (its other fields, canonical JSON) and of its arrays' bytes."""
    meta = {k: v for k, v in record.items() if k != "crc32"}
    crc = zlib.crc32(json.dumps(meta, sort_keys=True).encode())
    for part in parts:
        crc = zlib.crc32(np.ascontiguousarray(part).view(np.uint8).reshape(-1), crc)
    return crc


def dataset_crc(dset: h5py.Dataset) -> int:
    """CRC-32 of a dataset's values as stored, read in slices of about CHUNK_BYTES."""
    crc = zlib.crc32(f"{dset.shape} {dset.dtype.str}".encode())
    if dset.size == 0:
        return crc
    if dset.ndim == 0:
        return zlib.crc32(_bytes_of(dset[()]), crc)
    step = max(1, CHUNK_BYTES // max(1, dset.nbytes // dset.shape[0]))
    for i in range(0, dset.shape[0], step):
        crc = zlib.crc32(_bytes_of(dset[i:i + step]), crc)
    return crc


def _bytes_of(values) -> bytes:
    """The bytes of an array read from HDF5 (variable-length strings by their text)."""
    arr = np.asarray(values)
    if arr.dtype.hasobject:
        return repr(arr.tolist()).encode()
    return np.ascontiguousarray(arr).view(np.uint8).tobytes()


class _GrowingArray:
    """A 1-D array of the container appended to part by part: held in memory while it totals under
    CHUNK_BYTES (then written as one contiguous dataset: no chunk index, nothing rounded up to
    a chunk), else written through as a chunked dataset that grows."""

    def __init__(self, group: h5py.Group, name: str, dtype, compress: str):
        self.group, self.name, self.dtype, self.compress = group, name, np.dtype(dtype), compress
        self.size = 0
        self._parts = []
        self._dset = None

    def append(self, part: np.ndarray) -> int:
        """Append `part` (of the array's dtype); returns its offset."""
        offset = self.size
        self.size += part.size
        if self._dset is not None:
            self._write(part)
            return offset
        self._parts.append(part)
        if self.size * self.dtype.itemsize >= CHUNK_BYTES:
            self._dset = self.group.create_dataset(
                self.name, shape=(0,), maxshape=(None,), dtype=self.dtype,
                chunks=(CHUNK_BYTES // self.dtype.itemsize,), **self._filters())
            for p in self._parts:
                self._write(p)
            self._parts = []
        return offset

    def _write(self, part: np.ndarray) -> None:
        if part.size:
            n = self._dset.shape[0]
            self._dset.resize((n + part.size,))
            self._dset[n:] = part

    def _filters(self) -> dict:
        """The compression asked for, if a sample of the first parts shows it gains."""
        return filters(self.compress, self.size * self.dtype.itemsize) if _gains(self._parts) else {}

    def close(self) -> None:
        if self._dset is None:
            data = np.concatenate([np.zeros(0, self.dtype), *self._parts])
            new_dataset(self.group, self.name, data, self.compress if _gains(self._parts) else "none")


def _gains(parts: list, sample: int = 1 << 16) -> bool:
    """Whether compressing an array that starts with `parts` saves at least a tenth, judged on its
    first `sample` elements (dense codes of well-spread weights are near their entropy already;
    pruned ones compress well)."""
    head = np.concatenate([p[:sample] for p in parts] or [np.zeros(0, np.uint8)])[:sample].tobytes()
    return len(zlib.compress(head, 1)) < 0.9 * len(head)


def xz_compress(data) -> bytes:
    """`data` as xz at preset 9e, the dictionary no larger than `data` needs: preset 9 allocates
    a 64 MiB dictionary and its match finder (~670 MiB) whatever the input; beyond
    XZ_EXTREME_BYTES at preset 3 (see there)."""
    if len(data) > XZ_EXTREME_BYTES:
        chain = [{"id": lzma.FILTER_LZMA2, "preset": 3}]
    else:
        dict_size = min(XZ_DICT_BYTES, max(4096, 1 << (len(data) - 1).bit_length()))
        chain = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=chain)


class PackedReader:
    """Reads a packed container (whose HDF5 file has been walked, so its attributes are safe to
    read): the skeleton as an in-memory HDF5 file, checked against the index; tensors on demand,
    checked against their CRCs.  `members` is the checked walk of the skeleton."""

    def __init__(self, f: h5py.File, where: str):
        self.where = where
        group = f[PACKED_GROUP]
        fmt = string_attr(group, "format")
        if not isinstance(fmt, str) or fmt != FORMAT:
            raise KerasFileError(f"{where}: group {PACKED_GROUP!r} is not a wqkernels packed container")
        self.version = _attr_int(group, "version", where, default=0)
        if self.version > VERSION:
            raise KerasFileError(f"{where}: packed format version {self.version} is newer "
                                 f"than this wqkernels reads ({VERSION})")
        self._arrays, self._whole = {}, {}
        for name in ("index", "skeleton", "codes", "scales", "zero_points"):
            self._arrays[name] = _member(group, name, h5py.Dataset, where)
            if self._arrays[name].ndim != 1 or self._arrays[name].dtype.kind not in "uf":
                raise KerasFileError(f"{where}: packed container lacks a proper {name!r} dataset")
        raw = self._skeleton_image(group)
        check_global_heaps(raw, where)
        self.skeleton = open_image(raw)
        del raw
        try:
            self._open(group)
        except BaseException:
            self.skeleton.close()
            raise

    def _skeleton_image(self, group: h5py.Group) -> bytes:
        """The skeleton decompressed, bounded by its compressed size (xz checks its own CRC-64)."""
        stored = self._arrays["skeleton"]
        bound = min(MAX_SKELETON_BYTES, MAX_RATIO * stored.size + (64 << 20))
        x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            raw = x.decompress(stored[()].tobytes(), bound)
        except lzma.LZMAError as exc:
            raise KerasFileError(f"{self.where}: packed skeleton is corrupt (its xz data does not "
                                 f"decompress: {exc})") from None
        if not x.eof or not raw:
            raise KerasFileError(f"{self.where}: packed skeleton is corrupt or larger than its stored "
                                 f"size allows")
        declared = _attr_int(group, "skeleton_bytes", self.where, default=None)
        if declared is not None and declared != len(raw):
            raise KerasFileError(f"{self.where}: packed skeleton is corrupt (its size differs from the declared)")
        self._skeleton_bytes = len(raw)
        return raw

    def _open(self, group: h5py.Group) -> None:
        """Walk the skeleton, parse the index within a bound set by it, check one against the other."""
        where = self.where
        self.kept: dict = {}  # (the skeleton's name lists, see h5tree.walk)
        self.members = walk(self.skeleton, where, sizes=False, kept=self.kept)  # sizes checked once placeholders are known
        index = self._index(group, sum(info is not None for info in self.members.values()))
        if _index_int(index.get("skeleton_bytes", self._skeleton_bytes), "skeleton_bytes", where) != self._skeleton_bytes:
            raise KerasFileError(f"{where}: packed index does not describe this skeleton")
        tensors, paths = index.get("tensors"), index.get("datasets", [])
        if not isinstance(tensors, list) or not isinstance(paths, list):
            raise KerasFileError(f"{where}: packed index lists no proper tensors or datasets")
        self.tensors = {}
        for t in tensors:
            t = self._check(t)
            if t["path"] in self.tensors:
                raise KerasFileError(f"{where}: packed index has two records for {t['path']!r}")
            self.tensors[t["path"]] = t
        crcs = index.get("dataset_crc32") if self.version >= 3 else None
        if self.version >= 3 and (not isinstance(crcs, list) or len(crcs) != len(paths)):
            raise KerasFileError(f"{where}: packed index lists no proper dataset checksums")
        self._crcs = {}
        self.datasets = self._kept(group, paths, crcs)
        self._check_placeholders()
        for path, info in self.members.items():
            if info is not None and path not in self.tensors and path not in self.datasets:
                check_declared(info, path, where)
        check_total_declared(self.members, where, frozenset(self.tensors) | frozenset(self.datasets))
        self.layout = str(index.get("layout"))
        if weights_layout(self.skeleton, where) != self.layout:
            raise KerasFileError(f"{where}: packed index says layout {self.layout!r}, its skeleton holds "
                                 f"{weights_layout(self.skeleton, where)!r}")
        self.recipe = index.get("recipe", {})

    def _index(self, group: h5py.Group, datasets: int) -> dict:
        """The index, inflated and parsed only within what `datasets` of the skeleton can need."""
        bound = INDEX_BYTES_PER_DATASET * datasets + (1 << 20)
        size = _attr_int(group, "index_bytes", self.where)
        if not 0 < size <= bound or self._arrays["index"].size > bound:
            raise KerasFileError(f"{self.where}: packed index declares {size} bytes for {datasets} datasets; refused")
        d = zlib.decompressobj()
        try:
            text = d.decompress(self._arrays["index"][()].tobytes(), size)
        except zlib.error as exc:
            raise KerasFileError(f"{self.where}: packed index is corrupt (it does not inflate: {exc})") from None
        if len(text) != size or d.unconsumed_tail or not d.eof:
            raise KerasFileError(f"{self.where}: packed index is corrupt")
        try:
            index = json.loads(text)
        except ValueError:  # (not UTF-8, or not JSON)
            raise KerasFileError(f"{self.where}: packed index is corrupt (not JSON)") from None
        if not isinstance(index, dict):
            raise KerasFileError(f"{self.where}: packed index is corrupt")
        return index

    def _check(self, t) -> dict:
        """One index record: its fields of the right types, consistent with each other and the
        arrays (the codes' CRC is checked when they are read)."""
        where = self.where
        if not isinstance(t, dict) or not isinstance(t.get("path"), str):
            raise KerasFileError(f"{where}: packed index has a record without a path")
        path = t["path"]
        bad = KerasFileError(f"{where}: packed record of {path!r} is inconsistent")
        try:
            shape, view, scale_shape = (_ints(t[k], k) for k in ("shape", "view_shape", "scale_shape"))
            bits = _int(t["bits"], "bits")
            axis = None if t["axis"] is None else _int(t["axis"], "axis")
            block = None if t["block_size"] is None else _int(t["block_size"], "block_size")
            spans = {name: _ints(t[name], name) for name, _ in ARRAYS}
            if self.version >= 3:
                _int(t["crc32"], "crc32")
            elif "crc32" in t:  # a version 3 record: the version was damaged, not older
                raise ValueError("crc32")
        except (KeyError, TypeError, ValueError):
            raise bad from None
        count = math.prod(shape)
        if not 2 <= bits <= 8 or not isinstance(t.get("signed"), bool) or math.prod(view) != count \
                or (axis is not None and not 0 <= axis < max(len(view), 1)) or (block is not None and block < 1) \
                or any(len(v) != 2 for v in spans.values()) or spans["codes"][1] != packed_size(count, bits):
            raise bad
        for name, (off, n) in spans.items():
            if off + n > self._arrays[name].size:
                raise KerasFileError(f"{where}: packed record of {path!r} points outside {name!r}")
        if math.prod(scale_shape) != spans["scales"][1] or spans["zero_points"][1] not in (0, spans["scales"][1]):
            raise KerasFileError(f"{where}: packed record of {path!r} has bad scales")
        return t

    def _kept(self, group: h5py.Group, paths: list, crcs) -> dict[str, h5py.Dataset]:
        """The datasets kept outside the skeleton by path; each must match its placeholder."""
        kept = _member(group, "datasets", h5py.Group, self.where) if paths else None
        out = {}
        for k, path in enumerate(paths):
            dset = _member(kept, str(k), h5py.Dataset, self.where)
            stub = self.members.get(path) if isinstance(path, str) else None
            if not isinstance(stub, DatasetInfo) or path in self.tensors or path in out \
                    or (stub.shape, stub.dtype) != (dset.shape, dset.dtype):
                raise KerasFileError(f"{self.where}: packed dataset {k} does not match the skeleton's {path!r}")
            out[path] = dset
            if crcs is not None:
                self._crcs[path] = _index_int(crcs[k], "dataset_crc32", self.where)
        return out

    def _check_placeholders(self) -> None:
        """Every record and kept dataset has an empty placeholder of its shape and dtype; from
        version 3, every placeholder has one of them."""
        for path, t in self.tensors.items():
            stub = self.members.get(path)
            if not isinstance(stub, DatasetInfo) or not _weight_dtype(stub.dtype) or stub.shape != tuple(t["shape"]) \
                    or stub.stored or (self.version >= 3 and not stub.placeholder):
                raise KerasFileError(f"{self.where}: packed record of {path!r} does not match the skeleton's "
                                     f"dataset there")
        for path in self.datasets:
            stub = self.members[path]
            if stub.stored or (self.version >= 3 and not stub.placeholder):
                raise KerasFileError(f"{self.where}: packed dataset for {path!r} does not match the "
                                     f"skeleton's dataset there")
        if self.version >= 3:
            for path, info in self.members.items():
                if info is not None and info.placeholder and path not in self.tensors and path not in self.datasets:
                    raise KerasFileError(f"{self.where}: weight {path!r} has no data in the packed container "
                                         f"(its record is missing)")

    def stored_bytes(self, path: str) -> int:
        t = self.tensors[path]
        return t["codes"][1] + 4 * t["scales"][1] + t["zero_points"][1]

    def quantized(self, path: str) -> QuantizedArray:
        """The codes, scales and zero points of `path`, checked against the record's CRC."""
        t = self.tensors[path]
        (co, cn), (so, sn), (zo, zn) = t["codes"], t["scales"], t["zero_points"]
        packed = self._array("codes")[co:co + cn]
        scale = self._array("scales")[so:so + sn].astype(np.float32, copy=False)
        zero_point = self._array("zero_points")[zo:zo + zn].astype(np.uint8, copy=False)
        if self.version >= 3 and record_crc(t, (packed, scale, zero_point)) != t["crc32"]:
            raise KerasFileError(f"{self.where}: weight {path!r} is corrupt in the packed container "
                                 f"(checksum mismatch)")
        # (the record's fields were checked by _check: only how they fit together is left)
        values = unpack_bits(packed, t["bits"], math.prod(t["shape"]), t["signed"])
        dtype = np.int8 if t["signed"] else np.uint8
        zero_point = zero_point.view(dtype) if zn else np.zeros(sn, dtype)
        try:
            return QuantizedArray(values.reshape(t["view_shape"]), scale.reshape(t["scale_shape"]),
                                  zero_point.reshape(t["scale_shape"]), t["bits"], t["axis"], t["block_size"])
        except ValueError as exc:  # scales that do not fit the codes' groups
            raise KerasFileError(f"{self.where}: packed record of {path!r} is inconsistent ({exc})") from None

    def _array(self, name: str):
        """The array `name` of the container: read into memory at its first use when no larger
        than READ_WHOLE_BYTES (a slice of the dataset per tensor costs more than a small
        tensor's dequantization), else the dataset itself, read slice by slice."""
        if name not in self._whole:
            dset = self._arrays[name]
            self._whole[name] = dset[()] if dset.size * dset.dtype.itemsize <= READ_WHOLE_BYTES else dset
        return self._whole[name]

    def read(self, path: str) -> np.ndarray:
        """The dequantized float32 tensor, in its original shape."""
        return self.quantized(path).dequantize().reshape(self.tensors[path]["shape"])

    def dataset(self, path: str) -> h5py.Dataset:
        """The dataset holding the data of `path` (not quantized): kept aside (checked against
        its CRC the first time), or the skeleton's."""
        if path not in self.datasets:
            return self.skeleton[path]
        dset = self.datasets[path]
        crc = self._crcs.pop(path, None)
        if crc is not None and dataset_crc(dset) != crc:
            raise KerasFileError(f"{self.where}: weight {path!r} is corrupt in the packed container "
                                 f"(checksum mismatch)")
        return dset

    def close(self) -> None:
        self.skeleton.close()


#: what :func:`_attr_int` is given for an attribute that must be there
_REQUIRED = object()


def _int(value, name: str) -> int:
    """An integer field of the index or an attribute (bools and floats refused)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} is not an integer")
    return int(value)


def _index_int(value, name: str, where: str) -> int:
    """An integer field of the index, or a KerasFileError saying it is not one."""
    try:
        return _int(value, name)
    except TypeError:
        raise KerasFileError(f"{where}: packed index field {name!r} is not an integer") from None


def _attr_int(group: h5py.Group, name: str, where: str, default=_REQUIRED):
    """An integer attribute of the container's group (`default` when it has none; without a
    default, a KerasFileError), or a KerasFileError saying it is not one."""
    if name not in group.attrs:
        if default is _REQUIRED:
            raise KerasFileError(f"{where}: packed container lacks its {name!r} attribute")
        return default
    try:
        return _int(group.attrs[name], name)
    except TypeError:
        raise KerasFileError(f"{where}: packed container's {name!r} attribute is not an integer") from None


def _ints(values, name: str) -> list[int]:
    """A list of non-negative integers of the index."""
    if not isinstance(values, list):
        raise TypeError(f"{name} is not a list")
    out = [_int(v, name) for v in values]
    if any(v < 0 for v in out):
        raise ValueError(f"{name} has a negative value")
    return out


def _weight_dtype(dtype: np.dtype) -> bool:
    """Whether a placeholder's dtype is one a quantized weight is stored in: float32, float16, or
    bfloat16 (an opaque 2-byte type)."""
    return (dtype.kind == "f" and dtype.itemsize in (2, 4)) or (dtype.kind == "V" and dtype.itemsize == 2)


def _member(group: h5py.Group | None, name: str, kind: type, where: str):
    """``group[name]``, which must be a `kind` (Dataset or Group) linked there by a hard link."""
    if group is None or not isinstance(group.get(name, getlink=True), h5py.HardLink) \
            or not isinstance(group[name], kind):
        raise KerasFileError(f"{where}: packed container lacks a proper {name!r} {kind.__name__.lower()}")
    return group[name]

