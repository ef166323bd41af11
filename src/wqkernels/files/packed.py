"""The packed storage: integer codes bit-packed, with their scales, in a file Keras refuses.

A packed file is an HDF5 file whose root holds only the group ``wqkernels``::

    wqkernels/            attrs format="wqkernels-packed", version=2
        index             uint8, zlib-compressed JSON: layout, recipe, per quantized tensor its
                          path, shape, bits, axis, block size and offsets into the arrays below,
                          and the paths of the datasets kept in ``datasets``
        skeleton          uint8, xz-compressed image of the HDF5 weights file as the float32
                          rewrite would be, with each quantized dataset and each dataset kept in
                          ``datasets`` left unallocated (same name, shape, dtype and attributes,
                          no data)
        codes             uint8, the codes of all quantized tensors, bit-packed, concatenated
        scales            float32, their scales, concatenated
        zero_points       uint8, their zero points (int8 bytes when signed), concatenated;
                          a tensor whose zero points are all 0 (symmetric) stores none
        datasets/         only when there are any: the datasets of the float32 rewrite of 64 KiB
            0, 1, ...     or more that are not quantized (optimizer state, weights the recipe
                          leaves alone) as that rewrite stores them (type, filters, chunks,
                          attributes), in the order of the index's paths

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
import io
import json
import lzma
import math
import zlib

import h5py
import numpy as np

from ..packing import pack_bits, packed_size, unpack_bits
from ..quantization import QuantizedArray
from .errors import KerasFileError
from .h5tree import check_dataset, filters, new_dataset, placeholder
from .layouts import PACKED_GROUP
from .writers import Writer

FORMAT = "wqkernels-packed"
VERSION = 2
#: the index and the skeleton are decompressed into memory: refuse declared sizes beyond these
#: bounds or more than MAX_RATIO times their compressed size (plus 64 MiB)
MAX_INDEX_BYTES = 256 << 20
MAX_SKELETON_BYTES = 1 << 32
MAX_RATIO = 1000
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


class PackedWriter(Writer):
    """Writes the packed container at the path given to `open` while the rewrite copies the
    weights file into the in-memory skeleton `open` yields: quantized tensors as they come
    (`weight`), large datasets of the skeleton as they are copied; the index and the compressed
    skeleton when the block ends."""

    holds_codes = True

    @contextlib.contextmanager
    def open(self, path: str):
        with h5py.File(path, "w") as f:
            self.group = f.create_group(PACKED_GROUP)
            self.group.attrs["format"] = FORMAT
            self.group.attrs["version"] = VERSION
            self.tensors, self.datasets, self._kept = [], [], None
            self._arrays = {name: _GrowingArray(self.group, name, dtype, self.recipe.compress)
                            for name, dtype in ARRAYS}
            image = io.BytesIO()
            with h5py.File(image, "w") as skeleton:
                yield skeleton
            self._finish(image.getbuffer())

    def weight(self, group, name, like, entry, x, quantization, out):
        """The codes of one weight appended to the arrays, a placeholder in the skeleton; the
        values returned are the codes' dequantization, made once the codes are written out."""
        codes = quantization.codes(x)
        nbytes = self.add(entry.path, entry.shape, codes, self.recipe.compress)
        scale, zero_point = codes.scale, codes.zero_point
        del codes
        values = quantization.values(x, out, scale, zero_point)
        placeholder(group, name, entry.shape, like.dtype, like)  # restored in the weight's own type
        return values, nbytes

    def add(self, path: str, shape: tuple, qa: QuantizedArray, compress: str) -> int:
        """Append the codes of one tensor (quantized on a view of `shape`); returns its stored bytes."""
        scale = np.ascontiguousarray(qa.scale, dtype=np.float32).reshape(-1)
        zero_point = np.ascontiguousarray(qa.zero_point).reshape(-1).view(np.uint8)
        if not zero_point.any():
            zero_point = zero_point[:0]
        record = {
            "path": path, "shape": list(shape), "view_shape": list(qa.shape), "bits": qa.bits,
            "axis": qa.axis, "block_size": qa.block_size, "signed": qa.values.dtype == np.int8,
            "scale_shape": list(np.shape(qa.scale)), "compress": compress,
        }
        nbytes = 0
        # 8-bit codes are their own packing: written as they are, without a copy
        codes = qa.values.reshape(-1).view(np.uint8) if qa.bits == 8 else pack_bits(qa.values, qa.bits)
        for name, part in (("codes", codes), ("scales", scale), ("zero_points", zero_point)):
            record[name] = [self._arrays[name].append(part), int(part.size)]
            nbytes += part.nbytes
        self.tensors.append(record)
        return nbytes

    def copy(self, group: h5py.Group, name: str, dset: h5py.Dataset) -> h5py.Dataset:
        """A dataset copied as it is: into the skeleton, or when large into ``datasets``."""
        if dset.nbytes < LARGE_BYTES or not dset.ndim:
            return super().copy(group, name, dset)
        return super().copy(*self._keep_aside(group, name, dset.shape, dset.dtype, dset), dset)

    def new(self, group: h5py.Group, name: str, data: np.ndarray, compress: str = "none",
            like: h5py.Dataset | None = None, dtype=None) -> h5py.Dataset:
        """A new dataset (of `dtype`, default data's): in the skeleton, or when large in ``datasets``."""
        dtype = data.dtype if dtype is None else np.dtype(dtype)
        if data.size * dtype.itemsize < LARGE_BYTES or not data.ndim:
            return super().new(group, name, data, compress, like, dtype)
        return super().new(*self._keep_aside(group, name, data.shape, dtype, like), data, compress, like, dtype)

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
                 "skeleton_bytes": len(skeleton), "tensors": self.tensors, "datasets": self.datasets}
        text = json.dumps(index).encode()
        self.group.attrs["index_bytes"] = len(text)
        new_dataset(self.group, "index", np.frombuffer(zlib.compress(text, 9), np.uint8))
        new_dataset(self.group, "skeleton", np.frombuffer(xz_compress(skeleton), np.uint8))


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
    a 64 MiB dictionary and its match finder (~670 MiB) whatever the input."""
    dict_size = min(XZ_DICT_BYTES, max(4096, 1 << (len(data) - 1).bit_length()))
    chain = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=chain)


class PackedReader:
    """Reads a packed container: the skeleton as an in-memory HDF5 file, tensors on demand."""

    def __init__(self, f: h5py.File, where: str):
        self.where = where
        group = f[PACKED_GROUP]
        with _corrupt_as_error(where):
            fmt = group.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT:
                raise KerasFileError(f"{where}: group {PACKED_GROUP!r} is not a wqkernels packed container")
            if int(group.attrs.get("version", 0)) > VERSION:
                raise KerasFileError(f"{where}: packed format version {group.attrs['version']} is newer "
                                     f"than this wqkernels reads ({VERSION})")
            self._arrays = {}
            for name in ("index", "skeleton", "codes", "scales", "zero_points"):
                self._arrays[name] = _member(group, name, h5py.Dataset, where)
                if self._arrays[name].ndim != 1:
                    raise KerasFileError(f"{where}: packed container lacks a proper {name!r} dataset")
            size = int(group.attrs["index_bytes"])
            if not 0 < size <= MAX_INDEX_BYTES or self._arrays["index"].size > MAX_INDEX_BYTES:
                raise KerasFileError(f"{where}: packed index declares {size} bytes")
            d = zlib.decompressobj()
            text = d.decompress(self._arrays["index"][()].tobytes(), size)
            if len(text) != size or d.unconsumed_tail:
                raise KerasFileError(f"{where}: packed index is corrupt")
            index = json.loads(text)
            size = int(index["skeleton_bytes"])
            bound = min(MAX_SKELETON_BYTES, MAX_RATIO * self._arrays["skeleton"].size + (64 << 20))
            if not 0 < size <= bound:
                raise KerasFileError(f"{where}: packed skeleton declares {size} bytes")
            x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            raw = x.decompress(self._arrays["skeleton"][()].tobytes(), size)
            if len(raw) != size or not x.eof:
                raise KerasFileError(f"{where}: packed skeleton is corrupt")
            self.layout = str(index["layout"])
            self.recipe = index.get("recipe", {})
            self.tensors = {t["path"]: self._check(t) for t in index["tensors"]}
        self.skeleton = h5py.File(io.BytesIO(raw), "r")
        try:
            with _corrupt_as_error(where):
                self.datasets = self._kept(group, index.get("datasets", []))
        except BaseException:
            self.skeleton.close()
            raise

    def _kept(self, group: h5py.Group, paths: list) -> dict[str, h5py.Dataset]:
        """The datasets kept outside the skeleton by path; each must match its placeholder."""
        if not isinstance(paths, list):
            raise KerasFileError(f"{self.where}: packed index lists no proper datasets")
        kept = _member(group, "datasets", h5py.Group, self.where) if paths else None
        out = {}
        for k, path in enumerate(paths):
            dset = _member(kept, str(k), h5py.Dataset, self.where)
            stub = self.skeleton.get(path) if isinstance(path, str) and path else None
            if not isinstance(stub, h5py.Dataset) or stub.name != "/" + path or path in self.tensors \
                    or path in out or (stub.shape, stub.dtype) != (dset.shape, dset.dtype):
                raise KerasFileError(f"{self.where}: packed dataset {k} does not match the skeleton's {path!r}")
            check_dataset(dset.id, f"{PACKED_GROUP}/datasets/{k}", self.where)
            out[path] = dset
        return out

    def _check(self, t: dict) -> dict:
        """Offsets and sizes of one index record must agree with each other and the arrays."""
        count = math.prod(t["shape"])
        if math.prod(t["view_shape"]) != count or t["codes"][1] != packed_size(count, t["bits"]):
            raise KerasFileError(f"{self.where}: packed record of {t['path']!r} is inconsistent")
        for name in ("codes", "scales", "zero_points"):
            off, n = (int(v) for v in t[name])
            if off < 0 or n < 0 or off + n > self._arrays[name].size:
                raise KerasFileError(f"{self.where}: packed record of {t['path']!r} points outside {name!r}")
        if math.prod(t["scale_shape"]) != t["scales"][1] or t["zero_points"][1] not in (0, t["scales"][1]):
            raise KerasFileError(f"{self.where}: packed record of {t['path']!r} has bad scales")
        return t

    def stored_bytes(self, path: str) -> int:
        t = self.tensors[path]
        return t["codes"][1] + 4 * t["scales"][1] + t["zero_points"][1]

    def quantized(self, path: str) -> QuantizedArray:
        t = self.tensors[path]
        (co, cn), (so, sn), (zo, zn) = t["codes"], t["scales"], t["zero_points"]
        values = unpack_bits(self._arrays["codes"][co:co + cn], t["bits"], math.prod(t["shape"]), t["signed"])
        scale = self._arrays["scales"][so:so + sn].astype(np.float32, copy=False)
        dtype = np.int8 if t["signed"] else np.uint8
        zero_point = self._arrays["zero_points"][zo:zo + zn].view(dtype) if zn else np.zeros(sn, dtype)
        return QuantizedArray(values.reshape(t["view_shape"]), scale.reshape(t["scale_shape"]),
                              zero_point.reshape(t["scale_shape"]), t["bits"], t["axis"], t["block_size"])

    def read(self, path: str) -> np.ndarray:
        """The dequantized float32 tensor, in its original shape."""
        return self.quantized(path).dequantize().reshape(self.tensors[path]["shape"])

    def dataset(self, path: str) -> h5py.Dataset:
        """The dataset holding the data of `path` (not quantized): kept aside, or the skeleton's."""
        return self.datasets[path] if path in self.datasets else self.skeleton[path]

    def close(self) -> None:
        self.skeleton.close()


def _member(group: h5py.Group | None, name: str, kind: type, where: str):
    """``group[name]``, which must be a `kind` (Dataset or Group) linked there by a hard link."""
    if group is None or not isinstance(group.get(name, getlink=True), h5py.HardLink) \
            or not isinstance(group[name], kind):
        raise KerasFileError(f"{where}: packed container lacks a proper {name!r} {kind.__name__.lower()}")
    return group[name]


@contextlib.contextmanager
def _corrupt_as_error(where: str):
    """Malformed content (missing keys, wrong types, bad compressed data) becomes a KerasFileError."""
    try:
        yield
    except KerasFileError:
        raise
    except (KeyError, TypeError, ValueError, zlib.error, lzma.LZMAError, EOFError) as exc:
        raise KerasFileError(f"{where}: corrupt packed container ({type(exc).__name__}: {exc})") from None
