"""The packed storage: integer codes bit-packed, with their scales, in a file Keras refuses.

A packed file is an HDF5 file whose root holds only the group ``wqkernels``::

    wqkernels/            attrs format="wqkernels-packed", version=1
        index             uint8, zlib-compressed JSON: layout, recipe, and per quantized tensor its
                          path, shape, bits, axis, block size and offsets into the arrays below
        skeleton          uint8, xz-compressed image of the HDF5 weights file as the float32
                          rewrite would be, with each quantized dataset left unallocated (same
                          name, shape and attributes, no data)
        codes             uint8, the codes of all quantized tensors, bit-packed, concatenated
        scales            float32, their scales, concatenated
        zero_points       uint8, their zero points (int8 bytes when signed), concatenated;
                          a tensor whose zero points are all 0 (symmetric) stores none

Keras finds neither ``layer_names``/``model_config`` nor ``layers``/``vars`` in it, so
``load_model`` and ``load_weights`` raise instead of loading codes as weights.  Storing all codes
in a few datasets and the small tensors inside one compressed image avoids the kilobyte of HDF5
headers each dataset and group would cost.
"""
from __future__ import annotations

import io
import json
import lzma
import zlib

import h5py
import numpy as np

from ..packing import pack_bits, packed_size, unpack_bits
from ..quantization import QuantizedArray
from .h5tree import KerasFileError, new_dataset
from .layouts import PACKED_GROUP

FORMAT = "wqkernels-packed"
VERSION = 1
#: the index and the skeleton are decompressed into memory: refuse declared sizes beyond these
#: bounds or more than MAX_RATIO times their compressed size (plus 64 MiB)
MAX_INDEX_BYTES = 256 << 20
MAX_SKELETON_BYTES = 1 << 32
MAX_RATIO = 1000
#: preset 9's dictionary; smaller inputs get one just large enough (the same compression, a
#: fraction of the 670 MiB its match finder takes)
XZ_DICT_BYTES = 64 << 20


def _count(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class PackedWriter:
    """Collects quantized tensors, then writes the packed container."""

    def __init__(self, compress: str = "none"):
        self.compress = compress
        self.tensors = []
        self._codes, self._scales, self._zero_points = [], [], []
        self._offsets = [0, 0, 0]

    def add(self, path: str, shape: tuple, qa: QuantizedArray, compress: str) -> int:
        """Record the codes of one tensor (quantized on a view of `shape`); returns its stored bytes."""
        codes = pack_bits(qa.values, qa.bits)
        scale = np.ascontiguousarray(qa.scale, dtype=np.float32).reshape(-1)
        zero_point = np.ascontiguousarray(qa.zero_point).reshape(-1).view(np.uint8)
        if not zero_point.any():
            zero_point = zero_point[:0]
        self.tensors.append({
            "path": path, "shape": list(shape), "view_shape": list(qa.shape), "bits": qa.bits,
            "axis": qa.axis, "block_size": qa.block_size, "signed": qa.values.dtype == np.int8,
            "scale_shape": list(np.shape(qa.scale)), "compress": compress,
            "codes": [self._offsets[0], int(codes.size)],
            "scales": [self._offsets[1], int(scale.size)],
            "zero_points": [self._offsets[2], int(zero_point.size)],
        })
        for k, part, store in ((0, codes, self._codes), (1, scale, self._scales), (2, zero_point, self._zero_points)):
            store.append(part)
            self._offsets[k] += part.size
        return codes.nbytes + scale.nbytes + zero_point.nbytes

    def write(self, f: h5py.File, skeleton: bytes, layout: str, recipe: dict) -> None:
        group = f.create_group(PACKED_GROUP)
        group.attrs["format"] = FORMAT
        group.attrs["version"] = VERSION
        index = {"format": FORMAT, "version": VERSION, "layout": layout, "recipe": recipe,
                 "skeleton_bytes": len(skeleton), "tensors": self.tensors}
        text = json.dumps(index).encode()
        group.attrs["index_bytes"] = len(text)
        new_dataset(group, "index", np.frombuffer(zlib.compress(text, 9), np.uint8))
        new_dataset(group, "skeleton", np.frombuffer(xz_compress(skeleton), np.uint8))
        for name, parts, dtype in (("codes", self._codes, np.uint8), ("scales", self._scales, np.float32),
                                   ("zero_points", self._zero_points, np.uint8)):
            data = np.concatenate(parts) if parts else np.zeros(0, dtype)
            new_dataset(group, name, data.astype(dtype, copy=False), self.compress if _gains(data) else "none")


def _gains(data: np.ndarray, sample: int = 1 << 16) -> bool:
    """Whether compressing `data` saves at least a tenth, judged on a sample (dense codes of
    well-spread weights are near their entropy already; pruned ones compress well)."""
    head = data[:sample].tobytes()
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
        try:
            fmt = group.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT:
                raise KerasFileError(f"{where}: group {PACKED_GROUP!r} is not a wqkernels packed container")
            self._arrays = {}
            for name in ("index", "skeleton", "codes", "scales", "zero_points"):
                obj = group.get(name, getlink=True)
                if not isinstance(obj, h5py.HardLink) or not isinstance(group[name], h5py.Dataset) \
                        or group[name].ndim != 1:
                    raise KerasFileError(f"{where}: packed container lacks a proper {name!r} dataset")
                self._arrays[name] = group[name]
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
        except (KeyError, TypeError, ValueError, zlib.error, lzma.LZMAError, EOFError) as exc:
            if isinstance(exc, KerasFileError):
                raise
            raise KerasFileError(f"{where}: corrupt packed container ({type(exc).__name__}: {exc})") from None
        self.skeleton = h5py.File(io.BytesIO(raw), "r")

    def _check(self, t: dict) -> dict:
        """Offsets and sizes of one index record must agree with each other and the arrays."""
        count = _count(t["shape"])
        if _count(t["view_shape"]) != count or t["codes"][1] != packed_size(count, t["bits"]):
            raise KerasFileError(f"{self.where}: packed record of {t['path']!r} is inconsistent")
        for name in ("codes", "scales", "zero_points"):
            off, n = (int(v) for v in t[name])
            if off < 0 or n < 0 or off + n > self._arrays[name].size:
                raise KerasFileError(f"{self.where}: packed record of {t['path']!r} points outside {name!r}")
        if _count(t["scale_shape"]) != t["scales"][1] or t["zero_points"][1] not in (0, t["scales"][1]):
            raise KerasFileError(f"{self.where}: packed record of {t['path']!r} has bad scales")
        return t

    def stored_bytes(self, path: str) -> int:
        t = self.tensors[path]
        return t["codes"][1] + 4 * t["scales"][1] + t["zero_points"][1]

    def quantized(self, path: str) -> QuantizedArray:
        t = self.tensors[path]
        (co, cn), (so, sn), (zo, zn) = t["codes"], t["scales"], t["zero_points"]
        values = unpack_bits(self._arrays["codes"][co:co + cn], t["bits"], _count(t["shape"]), t["signed"])
        scale = self._arrays["scales"][so:so + sn].astype(np.float32, copy=False)
        dtype = np.int8 if t["signed"] else np.uint8
        zero_point = self._arrays["zero_points"][zo:zo + zn].view(dtype) if zn else np.zeros(sn, dtype)
        return QuantizedArray(values.reshape(t["view_shape"]), scale.reshape(t["scale_shape"]),
                              zero_point.reshape(t["scale_shape"]), t["bits"], t["axis"], t["block_size"])

    def read(self, path: str) -> np.ndarray:
        """The dequantized float32 tensor, in its original shape."""
        return self.quantized(path).dequantize().reshape(self.tensors[path]["shape"])

    def close(self) -> None:
        self.skeleton.close()
