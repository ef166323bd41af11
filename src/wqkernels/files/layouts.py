"""The Keras weight-file layouts, detected from content, mapped to a flat list of weight entries.

- ``legacy``: full-model ``.h5`` (Keras 2.x, tf.keras, Keras 3): ``model_weights`` with
  ``layer_names``/``weight_names`` (possibly split into ``name0``, ``name1``, ...) and an optional
  ``optimizer_weights``;
- ``legacy-weights``: the same layer groups at the root (``save_weights`` of Keras 2 / tf.keras);
- ``keras3``: Keras 3 ``.weights.h5`` (``layers/.../vars/<i>``, ``optimizer/vars/<i>``);
- ``packed``: a file written by ``rewrite(..., storage="packed")`` (see :mod:`.packed`).

A ``.keras`` archive is a zip holding a ``keras3`` file as ``model.weights.h5``.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass

import h5py
from h5py import h5g

from .._text import natural_key
from .dtypes import dtype_name, is_bfloat16, is_float
from .errors import KerasFileError
from .h5tree import DatasetInfo, kept_attrs, read_name_list, string_attr
from .roles import KERNEL_ROLES, ModelLayers, channel_axis, parse_config, reduced_axes, var_role, weight_role

PACKED_GROUP = "wqkernels"
KERAS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
#: a model config (config.json or the model_config attribute) is refused above this size: the
#: configs of real models take a few MB (a 255 MB one of ``[{},{},...]`` took 6.7 GB to parse)
MAX_CONFIG_BYTES = 64 << 20
#: ... or with more JSON objects and arrays than this (a layer takes a few dozen)
MAX_CONFIG_ELEMENTS = 4_000_000
#: a .keras member may expand to at most this many times its compressed size (plus 64 MiB):
#: the weights, whose unwritten or pruned datasets compress well, and the others (Keras stores
#: them uncompressed; text assets deflate ~3-10x; a 4 GiB member of a 4.3 MB file took 17.6 s)
MAX_ZIP_RATIO = 1000
MAX_MEMBER_RATIO = 100


@dataclass(frozen=True)
class Entry:
    """One weight dataset: where it is, whose it is, what it is."""

    path: str                 # dataset path inside the weights HDF5 file, no leading slash
    layer: str
    layer_class: str | None
    role: str                 # kernel, bias, gamma, ..., "optimizer", "variable" or "unknown"
    role_source: str          # "config", "names" (guessed from group names), "shape" or "none"
    prunable: bool
    channel_axis: int | None
    shape: tuple
    dtype: str
    reduced: tuple | None = None  # the kernel axes an EinsumDense sums over (roles.reduced_axes)
    own_layer: str | None = None  # in a legacy file, the layer inside the nested model `layer` names

    @property
    def layer_name(self) -> str:
        """The layer the weight belongs to, as the model names it: inside a nested model of a
        legacy file, its own layer (`layer` is the group holding it, the nested model's, as
        Keras stores and loads it)."""
        return self.own_layer or self.layer


def file_path(value, name: str = "path") -> str:
    """A file path argument as a str: a str, bytes (decoded as the OS does) or os.PathLike."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(value))
    raise TypeError(f"{name} must be a file path (str, bytes or os.PathLike), got {type(value).__name__}")


#: other frameworks' files, by name ending, and what says so inside a zip (PyTorch's pickle)
_FOREIGN = {".pt": "PyTorch", ".pth": "PyTorch", ".ckpt": "PyTorch", ".onnx": "ONNX", ".safetensors": "safetensors",
            ".tflite": "TensorFlow Lite", ".pb": "TensorFlow", ".gguf": "GGUF"}


def foreign_error(path: str, members=()) -> KerasFileError | None:
    """The error for a file of another framework (by its name, or a zip's members), else None."""
    kind = _FOREIGN.get(os.path.splitext(path)[1].lower())
    if any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        kind = "PyTorch"
    if kind is None:
        return None
    return KerasFileError(f"{path}: {kind} files are not supported (wqkernels reads Keras .h5, .weights.h5 "
                          f"and .keras files)")


def container(path) -> str:
    """``"hdf5"`` or ``"zip"`` from the first bytes of the file; KerasFileError otherwise."""
    path = file_path(path)
    if not os.path.exists(path):
        raise KerasFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise KerasFileError(f"{path}: is a directory, not a Keras file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise KerasFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head == HDF5_MAGIC or h5py.is_hdf5(path):
        return "hdf5"
    raise foreign_error(path) or KerasFileError(f"{path}: not a Keras file (neither HDF5 nor a .keras zip archive)")


#: the file name endings each format is loaded by, the one to suggest first
NAME_ENDINGS = {"zip": (".keras",), "keras3": (".weights.h5",), "legacy": (".h5", ".hdf5")}
_FORMAT_NAMES = {"zip": "a .keras archive", "keras3": "a Keras 3 .weights.h5 file",
                 "legacy": "a legacy Keras .h5 file"}


def _ending(name: str) -> str:
    """The ending Keras picks the loader by; as Keras, case-sensitive (``x.KERAS`` is no .keras)."""
    name = os.path.basename(name)
    return ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1]


def check_output_name(dst: str, src: str, kind: str, layout: str) -> None:
    """Refuse a destination name whose format differs from the one written (the source's: a
    ``.keras`` archive, a Keras 3 ``.weights.h5`` or a legacy ``.h5``): Keras picks its loader by
    the name.  A name ending like the source's is always accepted (the user's own naming)."""
    fmt = "zip" if kind == "zip" else ("keras3" if layout == "keras3" else "legacy")
    ending = _ending(dst)
    if ending in NAME_ENDINGS[fmt] or (ending and ending == _ending(src)):
        return
    raise KerasFileError(f"{dst}: the output is {_FORMAT_NAMES[fmt]} like its source (wqkernels keeps the "
                         f"format); name it {NAME_ENDINGS[fmt][0]}, as Keras picks its loader by the name")


def name_list(obj, attr: str, where: str, path: str, known: dict | None = None) -> list[str] | None:
    """The Keras list attribute `attr` (``layer_names``, ``weight_names``) of `obj`, at `path`
    in the file, or None when it has none; KerasFileError when it is not a list of names.
    `known`: the attributes of `obj` the walk kept (:func:`~.h5tree.kept_attrs`), else None."""
    names = read_name_list(obj, attr, known)
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)):
        raise KerasFileError(f"{where}: attribute {attr!r} of {path or '/'!r} is not a list of names")
    return names


def weights_layout(f: h5py.File, where: str) -> str:
    """The layout of an open weights HDF5 file (see the module docstring)."""
    if PACKED_GROUP in f and isinstance(f[PACKED_GROUP], h5py.Group):
        return "packed"
    if name_list(f, "layer_names", where, "") is not None:
        return "legacy-weights"
    if "model_weights" in f and isinstance(f["model_weights"], h5py.Group):
        if name_list(f["model_weights"], "layer_names", where, "model_weights") is None:
            raise KerasFileError(f"{where}: unsupported layout: 'model_weights' has no 'layer_names'")
        return "legacy"
    # (a shard of Keras's sharded save may hold only optimizer variables)
    if any(name in f and isinstance(f[name], h5py.Group) for name in ("layers", "vars", "optimizer")):
        return "keras3"
    raise KerasFileError(f"{where}: an HDF5 file, but not a Keras weights file")


def model_config(f: h5py.File, zip_config: bytes | None = None, where: str = "") -> dict | None:
    """The model config: ``config.json`` of a .keras archive or the ``model_config`` attribute;
    None when there is none or it is not usable, KerasFileError beyond what a real model needs."""
    text = zip_config if zip_config is not None else f.attrs.get("model_config")
    if text is None:
        return None
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    if not isinstance(text, bytes):
        return None
    if len(text) > MAX_CONFIG_BYTES or text.count(b"{") + text.count(b"[") > MAX_CONFIG_ELEMENTS:
        raise KerasFileError(f"{where}: the model config holds more than a model needs ({len(text)} bytes); refused")
    try:
        return parse_config(text)
    except RecursionError:
        raise KerasFileError(f"{where}: the model config is nested too deeply; refused") from None


def check_zip_members(zf: zipfile.ZipFile, where: str) -> None:
    """Refuse members that declare far more than they store (zip bombs, assets included), and
    a name stored twice (which of the two Keras reads is the zip reader's choice)."""
    seen = set()
    for info in zf.infolist():
        if info.filename in seen:
            raise KerasFileError(f"{where}: the archive holds {info.filename} twice; refused")
        seen.add(info.filename)
        ratio = MAX_ZIP_RATIO if info.filename == KERAS_MEMBER else MAX_MEMBER_RATIO
        if info.file_size > ratio * max(info.compress_size, 1) + (64 << 20):
            raise KerasFileError(f"{where}: {info.filename} declares {info.file_size} bytes from "
                                 f"{info.compress_size}; refused")


def read_zip_config(zf: zipfile.ZipFile, where: str) -> bytes | None:
    """``config.json`` of a .keras archive, inflated 1 MiB at a time up to MAX_CONFIG_BYTES
    (zipfile's own read inflates up to 2 GiB in one call, whatever the member declares)."""
    try:
        info = zf.getinfo(CONFIG_MEMBER)
    except KeyError:
        return None
    if info.file_size > MAX_CONFIG_BYTES:
        raise KerasFileError(f"{where}: {CONFIG_MEMBER} declares {info.file_size} bytes; refused")
    parts, size = [], 0
    with zf.open(info) as member:
        while True:
            part = member.read(1 << 20)
            if not part:
                return b"".join(parts)
            size += len(part)
            if size > MAX_CONFIG_BYTES:
                raise KerasFileError(f"{where}: {CONFIG_MEMBER} inflates beyond {MAX_CONFIG_BYTES} bytes; refused")
            parts.append(part)


def entries(f: h5py.File, layout: str, config: dict | None, where: str, members: dict,
            kept: dict | None = None) -> list[Entry]:
    """Every weight dataset of the file in file order, with its role; `members` is the checked
    :func:`~.h5tree.walk` of the file, `kept` the attributes it kept, if any."""
    layers = ModelLayers(config)
    if layout in ("legacy", "legacy-weights"):
        return _legacy_entries(f, members, layout, layers, where, kept)
    if layout == "keras3":
        return _keras3_entries(f, members, layers, where, kept)
    raise KerasFileError(f"{where}: unsupported layout {layout!r}")


def _entry(path, info: DatasetInfo, layer, layer_class, role, source, quantized=False, dtype=None,
           einsum: tuple = (None, None), own_layer: str | None = None) -> Entry:
    """One weight; `einsum` is (the layer's config, its group name) for an EinsumDense kernel's
    summed axes (:func:`~.roles.reduced_axes`); `own_layer` that of :class:`Entry`."""
    shape = info.shape
    dtype = str(info.dtype) if dtype is None else dtype
    prunable = role in KERNEL_ROLES and is_float(dtype) and len(shape) >= 2 and not quantized
    reduced = reduced_axes(layer_class, *einsum, len(shape)) if prunable and role == "kernel" else None
    axis = None
    if prunable:
        kept = [a for a in range(len(shape)) if a not in reduced] if reduced is not None else None
        # (an EinsumDense keeping several axes has no one channel axis: see roles.channel_view)
        axis = channel_axis(layer_class, role, len(shape)) if kept is None else kept[0] if len(kept) == 1 else None
    return Entry(path, layer, layer_class, role, source, prunable, axis, shape, dtype, reduced, own_layer)


def _dataset(members: dict, path: str, where: str) -> DatasetInfo:
    """The listed weight at `path`; `members` is the checked walk of the file."""
    path = path.strip("/")
    if path not in members:
        raise KerasFileError(f"{where}: weight {path!r} is listed but missing")
    if members[path] is None:
        raise KerasFileError(f"{where}: weight {path!r} is not a dataset")
    return _numbers(members[path], path, where)


def _numbers(info: DatasetInfo, path: str, where: str) -> DatasetInfo:
    """`info`, of a weight, when its type is one of numbers (or bfloat16's opaque bytes): Keras
    assigns every weight to a variable of numbers, and fails on strings or records."""
    if info.dtype.fields is not None or info.dtype.kind in "OSU":
        what = "records (a compound type)" if info.dtype.fields is not None else "strings"
        raise KerasFileError(f"{where}: weight {path!r} holds {what}, not numbers; refused")
    return info


def _legacy_entries(f, members: dict, layout, layers: ModelLayers, where, kept: dict | None) -> list[Entry]:
    prefix = "model_weights/" if layout == "legacy" else ""
    root = f["model_weights"] if layout == "legacy" else f
    out = []
    for name in name_list(root, "layer_names", where, prefix.rstrip("/"), kept_attrs(kept, prefix.rstrip("/"))) or []:
        group = f"{prefix}{name}".strip("/")
        if group not in members or members[group] is not None:
            raise KerasFileError(f"{where}: layer group {name!r} listed in layer_names is missing")
        known = kept_attrs(kept, group)
        # (else opened in `root` on a low-level handle: an h5py lookup costs more than a small weight's read)
        layer_group = h5g.open(root.id, name.encode("utf-8", "surrogateescape")) if known is None else None
        for wn in name_list(layer_group, "weight_names", where, group, known) or []:
            path = f"{prefix}{name}/{wn}"
            info = _dataset(members, path, where)
            parts = wn.split("/")[:-1]
            cls, quantized, how, own = layers.resolve(name, parts)
            owner = parts[-1] if parts else name
            config = (layers.find(owner) or layers.find(name)) if how == "config" else None
            out.append(_entry(path, info, name, cls, weight_role(wn), how if cls else "none", quantized,
                              einsum=(config, owner), own_layer=own))
    if "optimizer_weights" in members and members["optimizer_weights"] is None:  # a group
        opt = f["optimizer_weights"]
        for wn in name_list(opt, "weight_names", where, "optimizer_weights", kept_attrs(kept, "optimizer_weights")) or []:
            path = f"optimizer_weights/{wn}"
            out.append(_entry(path, _dataset(members, path, where), "optimizer", None, "optimizer", "names"))
    return out


def _vars_name(f, group: str, names: dict, kept: dict | None) -> str | None:
    """The ``name`` attribute of a ``vars`` group, read once per group (in `names`), as the walk
    kept it (`kept`), else through a low-level handle: an h5py lookup by path costs more than a
    small weight's read."""
    if group not in names:
        known = kept_attrs(kept, group)
        vname = string_attr(h5g.open(f.id, group.encode()), "name") if known is None else known.get("name")
        names[group] = vname.decode() if isinstance(vname, bytes) else (str(vname) if vname is not None else None)
    return names[group]


def check_indices(paths, where: str) -> None:
    """Refuse a ``vars`` group whose variables are not numbered 0 to n-1 (`paths`: the datasets
    of a whole Keras 3 weights file, or of all the shards of a set, where one layer's variables
    may be split over two shards): Keras reads them by index, in order, and the roles of a
    layer's variables are read off their indices (a gap, or a variable renamed, would give its
    neighbours the wrong roles)."""
    indices = defaultdict(set)
    for path in paths:
        group, _, last = path.rpartition("/")
        if (group == "vars" or group.endswith("/vars")) and re.fullmatch(r"\d+", last):
            indices[group].add(int(last))
    for group, found in indices.items():
        if found != set(range(len(found))):
            missing = min(set(range(max(found) + 1)) - found)
            raise KerasFileError(f"{where}: {group!r} has no variable {missing} but has {max(found)}: Keras reads "
                                 f"a layer's variables 0 to n-1 in order; refused")


def _keras3_entries(f, members: dict, layers: ModelLayers, where, kept: dict | None) -> list[Entry]:
    out, names = [], {}
    for path in sorted(members, key=natural_key):
        obj = members[path]
        if obj is None:
            continue
        parts = path.split("/")
        if len(parts) < 2 or parts[-2] != "vars" or not re.fullmatch(r"\d+", parts[-1]):
            continue
        index = int(parts[-1])
        _numbers(obj, path, where)
        if parts[0] == "optimizer":
            out.append(_entry(path, obj, "optimizer", None, "optimizer", "names"))
            continue
        if len(parts) == 2:  # the model's own variables
            out.append(_entry(path, obj, "", None, "variable", "names"))
            continue
        in_cell = len(parts) >= 4 and parts[-3] == "cell"
        owner = parts[-4] if in_cell else parts[-3]
        vname = _vars_name(f, "/".join(parts[:-1]), names, kept)
        cls, quantized, how = layers.class_for_group(owner, None if in_cell else vname)
        role = var_role(cls, index, in_cell)
        if role is None:  # no class for the layer: a float tensor of 2 or more axes is taken for a kernel
            guess = (obj.dtype.kind == "f" or is_bfloat16(f[path])) and len(obj.shape) >= 2
            role, how = ("kernel", "shape") if guess else ("unknown", "none")
        layer = owner if in_cell or vname is None else vname
        dtype = dtype_name(f[path]) if obj.dtype.kind == "V" else None
        config = layers.find(vname) if how == "config" else None
        out.append(_entry(path, obj, layer, cls, role, how, quantized, dtype, einsum=(config, owner)))
    return out
