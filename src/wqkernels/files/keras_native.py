"""Keras 3's own quantized layers: written (``storage="keras"``) and read (files Keras quantized).

Dense, EinsumDense and Embedding layers quantized by Keras 3 (``model.quantize``) keep int8
variables in memory.  :class:`KerasWriter` writes a file in that layout directly: per layer the
codes, scales (and zero points and group indices of sub-channel int4) in the order and dtypes
Keras saves them, and the layer's dtype policy and ``quantization_config`` in the model config
as Keras writes them (``config.json`` of a ``.keras`` archive, the ``model_config`` attribute of
a legacy ``.h5``), so that ``keras.saving.load_model`` builds the quantized layers.  A legacy
``.h5`` (Keras 3's, Keras 2's or tf.keras's) gets the variables under Keras's names in the
kernel's naming style (``kernel:0`` -> ``kernel_scale:0``) and each layer group's
``weight_names`` in the order Keras's legacy loader assigns them (trainable first: the bias, then
the codes, scales, zero points and group indices).  With the default method the variables are
those of ``model.quantize`` bit for bit (:mod:`wqkernels.keras_schemes`).  A grid given in
Keras's layout (a calibration's: :func:`native_grid` of the kernel, rounded onto by
:func:`~wqkernels.calibration.gptq_on_grid` through :func:`grid_values`) is stored as given,
with the codes of the values on it (:func:`on_native_grid`).

Where Keras cannot load a quantized layer, the layer keeps its float dtype with values on the
grid (as ``storage="float32"`` writes them): layers Keras does not quantize (convolutions,
recurrent cells), layers without a config of their own in a ``.keras`` archive (the sublayers of
MultiHeadAttention, which Keras 3.15's ``load_model`` cannot reload quantized, even from its own
files), the layers of a model nested in a legacy ``.h5`` (whose group lists all its layers'
variables together), float16 layers (Keras refuses to quantize float16 compute) and EinsumDense
equations with ``...`` (Keras 3.15 fails on them).  A ``.weights.h5`` or a legacy weights-only
``.h5`` has no config: it loads into a model the user quantized (``model.quantize(mode)``, then
``model.load_weights``), so every Dense and Embedding is written natively and an EinsumDense,
whose scale layout only its equation tells, is refused.

:func:`quantized_layers` reads files Keras quantized: per kernel, the mode, bits, block size and
the variables needed to dequantize it (:class:`QuantizedKernel`).
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field

import h5py
import numpy as np

from .._text import listing, natural_key
from .. import keras_schemes as ks
from ..calibration.rows import einsum_subscripts
from ..quantization import quantize
from .dtypes import BFLOAT16, new_bfloat16, new_float, stored_values
from .errors import KerasFileError
from .h5tree import HEADER_LIMIT, read_name_list, split_name_list, string_attr
from .layouts import CONFIG_MEMBER, Entry
from .roles import ModelLayers, quantization_mode
from .transform import Grid, Measured
from .writers import Writer

__all__ = ["KerasWriter", "NATIVE_CLASSES", "QuantizedKernel", "quantized_layers", "einsum_layout",
           "dequantize_kernel", "native_kernels", "native_grid", "grid_values", "on_native_grid"]

#: the layer classes Keras 3 quantizes to int8/int4, and the role of their kernel
NATIVE_CLASSES = {"Dense": "kernel", "EinsumDense": "kernel", "Embedding": "embeddings",
                  "ReversibleEmbedding": "embeddings"}
#: the classes whose kernel is an embedding table (one scale per row, no bias); a
#: ReversibleEmbedding is written natively when its reverse projection is the tied table itself
EMBEDDINGS = ("Embedding", "ReversibleEmbedding")

_ABSMAX = {"module": "keras.quantizers", "class_name": "AbsMaxQuantizer",
           "config": {"value_range": [-127, 127], "epsilon": 1e-07, "output_dtype": "int8"},
           "registered_name": None}


# ---- EinsumDense equations ---------------------------------------------------------------

@dataclass(frozen=True)
class EinsumLayout:
    """Where the scales of an EinsumDense kernel go: the reduced (contracted) kernel axes, and
    the transpose, expand and squeeze that turn the per-channel scales (kernel-shaped, reduced
    axes of size 1) into the shape Keras stores."""

    reduced: tuple
    transpose: tuple
    expand: tuple
    squeeze: tuple

    def stored_scale(self, scale: np.ndarray) -> np.ndarray:
        if self.transpose:
            scale = np.transpose(scale, self.transpose)
        if self.expand:
            scale = np.expand_dims(scale, self.expand)
        if self.squeeze:
            scale = np.squeeze(scale, self.squeeze)
        return np.ascontiguousarray(scale)

    def kept_scale(self, stored: np.ndarray, keep: tuple) -> np.ndarray:
        """:meth:`stored_scale` undone: a stored scale back in the kernel's axes, of shape `keep`
        (the kernel's, its reduced axes of size 1)."""
        scale = np.asarray(stored)
        if self.squeeze:
            scale = np.expand_dims(scale, self.squeeze)
        if self.expand:
            scale = np.squeeze(scale, self.expand)
        if self.transpose:
            scale = np.transpose(scale, np.argsort(self.transpose))
        return np.ascontiguousarray(scale.reshape(keep))


def einsum_layout(equation: str) -> EinsumLayout | None:
    """The scale layout Keras 3.15 derives from an EinsumDense equation (``"ab,bc->ac"``), or
    None for equations Keras cannot quantize (those with ``...``)."""
    parts = einsum_subscripts(equation)
    if parts is None or "..." in parts[0] + parts[2]:
        return None
    inputs, weights, outputs = parts
    reduced = [i for i, c in enumerate(weights) if c not in outputs]
    expand = [i for i, c in enumerate(outputs) if c not in weights]
    transpose = [weights.index(c) for c in outputs if c in weights]
    # Keras places each reduced axis at the next free expand position; when none is left it
    # squeezes the axis and reuses the position found last (its input-side loop included)
    position = outputs.find(weights[-1])
    input_expand = [i for i, c in enumerate(outputs) if c not in inputs]
    for _ in (i for i, c in enumerate(inputs) if c not in outputs):
        if input_expand:
            position = input_expand.pop(0)
    squeeze = []
    for axis in reduced:
        if expand:
            position = expand.pop(0)
        else:
            squeeze.append(axis)
        transpose.insert(position, axis)
    return EinsumLayout(tuple(reduced), tuple(transpose), tuple(expand), tuple(squeeze))


# ---- what a native layer stores ------------------------------------------------------------

@dataclass(frozen=True)
class NativeKernel:
    """One kernel written in Keras's quantized layout."""

    layer_class: str
    layer: str                # the layer's name
    config: dict | None       # its config in the model config (None: a .weights.h5)
    has_bias: bool
    einsum: EinsumLayout | None = None


def _source_policy(layer_config: dict | None) -> str:
    """The name of the float dtype policy a layer has (its source for a quantized one)."""
    dtype = (layer_config or {}).get("config", {}).get("dtype")
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict) and isinstance(dtype.get("config"), dict):
        return str(dtype["config"].get("name", "float32"))
    return "float32"


def native_kernels(source, recipe) -> tuple[dict, dict]:
    """Which kernels the recipe selects that ``storage="keras"`` writes in Keras's layout.

    Returns
    -------
    (native, kept)
        {kernel path: :class:`NativeKernel`} and, for the other selected kernels, {layer (or
        path): why it stays float}.  A NativeKernel's `config` is the layer's own config in
        ``source.config`` (None without a model config).
    """
    legacy = source.layout in ("legacy", "legacy-weights")
    config = source.config if source.kind == "zip" or source.layout == "legacy" else None
    layers = ModelLayers(config)
    native, kept = {}, {}
    for e in source.entries:
        if not recipe.selects(e):
            continue
        why = _native(source, e, config, layers, legacy)
        if isinstance(why, NativeKernel):
            native[e.path] = why
        else:
            kept[e.layer_name or e.path] = why
    return native, kept


def _native(source, e: Entry, config: dict | None, layers: ModelLayers, legacy: bool):
    """The NativeKernel of entry `e`, or why it stays float."""
    cls = e.layer_class
    if legacy and cls == "MultiHeadAttention" and e.role == "kernel":  # its EinsumDense sublayers
        return "sublayers without a config of their own: Keras 3.15 cannot reload them quantized"
    vars_group = source.root[e.path].parent
    count = sum(isinstance(v, h5py.Dataset) for v in vars_group.values())
    if cls == "ReversibleEmbedding" and count > 1:
        return "untied reverse embeddings: written in Keras's layout only when tied"
    if cls not in NATIVE_CLASSES or e.role != NATIVE_CLASSES[cls]:
        return f"{cls or 'an unknown layer'}: Keras does not quantize it"
    if config is None:
        return NativeKernel(cls, e.layer, None, count > 1 and cls not in EMBEDDINGS, None)
    if legacy:  # a layer group of model_weights: the layer's own name
        name = e.layer
        layer_config = layers.top.get(name) if e.role_source == "config" else None
        if layer_config is not None and layer_config.get("class_name") != cls:
            return "a layer of a nested model: a legacy .h5 gets Keras-native layers at its top level only"
    else:
        name = vars_group.attrs.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        layer_config = layers.find(name) if e.role_source == "config" else None
    if layer_config is None:
        return "a sublayer without a config of its own: Keras 3.15 cannot reload it quantized"
    if layer_config.get("class_name") != cls:
        return f"{cls} subclass"
    if _source_policy(layer_config) in ("float16", "mixed_float16"):
        return "float16 compute: Keras does not quantize it"
    inner = layer_config.get("config", {})
    einsum = None
    if cls == "EinsumDense":
        einsum = einsum_layout(str(inner.get("equation", "")))
        if einsum is None:
            return "an equation with '...': Keras 3.15 cannot quantize it"
    if inner.get("lora_rank"):
        return "LoRA enabled"
    return NativeKernel(cls, str(name), layer_config, count > 1 and cls not in EMBEDDINGS, einsum)


class KerasWriter(Writer):
    """``storage="keras"``: native layers in Keras's quantized layout, the rest as float32
    storage writes them; in a ``.keras`` archive, ``config.json`` says which layers are quantized.

    A :class:`~.transform.Grid` given for a native kernel (a calibration's) holds the scale and
    zero point as Keras stores them (``kernel_scale``, and ``kernel_zero`` of sub-channel int4;
    zeros for absmax): :func:`native_grid`.
    """

    holds_codes = True

    def start(self, source, report) -> None:
        """Decide which kernels are native (before anything is written); notes for the report."""
        self.legacy = source.layout in ("legacy", "legacy-weights")
        self.config = source.config if source.kind == "zip" or source.layout == "legacy" else None
        self.kind = source.kind
        #: legacy .h5: layer group -> (the kernel's weight name, the names of its quantized variables)
        self.renamed: dict[str, tuple] = {}
        self.config_as_bytes = isinstance(source.root.attrs.get("model_config"), bytes)
        self.native, self.kept = native_kernels(source, self.recipe)
        if self.config is None:
            einsum = [p for p, n in self.native.items() if n.layer_class == "EinsumDense"]
            if einsum:
                raise KerasFileError(f"{source.path}: storage='keras': {einsum[0]!r} is an EinsumDense kernel, whose "
                                     f"scale layout only its equation in the model config tells; rewrite the .keras "
                                     f"file instead, or --exclude it")
        report.notes.extend(self.notes())

    def notes(self, others: tuple = ()) -> list[str]:
        """What the report says of the native layers and those kept float, of this writer's
        file and of the `others` (the KerasWriters of the other shards of one index), each once."""
        writers = (self,) + tuple(others)
        names = sorted({n.layer for w in writers for n in w.native.values()}, key=natural_key)
        kept = dict(sorted(((layer, why) for w in writers for layer, why in w.kept.items()),
                           key=lambda item: natural_key(item[0])))
        bits, block = self.recipe.bits, self.recipe.block_size
        mode = "int8" if bits == 8 else f"int4/{block or -1}"
        notes = [f"Keras-native {mode}: {len(names)} layer{'s' if len(names) != 1 else ''}"
                 + (f" ({listing(names)})" if names else "")]
        by_reason = {}
        for layer, why in kept.items():
            by_reason.setdefault(why, []).append(layer)
        notes += [f"kept float on the {bits}-bit grid: {listing(layers)} ({why})" for why, layers in by_reason.items()]
        if self.config is None:
            how = "'int8'" if bits == 8 else (f"config=keras.quantizers.Int4QuantizationConfig(block_size="
                                              f"{block or -1})")
            notes.append(f"loads with model.quantize({how}) then model.load_weights(...)"
                         + (" (layers kept float must be left out of quantize's filters)" if kept else ""))
        return notes

    # ---- the weights ----

    def stored_dtype(self, entry: Entry) -> str:
        if entry.path in self.native:
            return "int8" if self.recipe.bits == 8 else "int4"
        return entry.dtype if entry.dtype in ("float16", BFLOAT16) else "float32"

    def weight(self, group, name, like, entry, x, quantization, out, original=None):
        native = self.native.get(entry.path)
        dtype = entry.dtype
        if native is None:  # float storage, own dtype
            values = x if quantization is None else quantization.values(x, out)
            values = stored_values(values, dtype, out)
            return values, int(new_float(self, group, name, values, dtype, self.recipe.compress, like).id.get_storage_size())
        bits, block, bfloat16 = quantization.bits, self.recipe.block_size, dtype == BFLOAT16
        if "scale" in quantization.options:  # a grid given in Keras's layout (a calibration's)
            grid = Grid(bits, quantization.options["scale"], quantization.options["zero_point"])
            arrays, values = on_native_grid(native, x, grid, block, bfloat16, out)
        else:
            arrays, values = _native_arrays(native, x, bits, block, quantization.method, bfloat16, out, original)
        slots = self._legacy_slots(entry, name, arrays) if self.legacy else \
            [int(name) + k + (1 if k and native.has_bias else 0) for k in range(len(arrays))]
        nbytes = 0
        for slot, (kind, array) in zip(slots, arrays):
            if kind == "scale" and dtype == BFLOAT16:
                dset = new_bfloat16(group, str(slot), array)
            else:  # (no attributes, as Keras writes them; compressed when asked and large enough)
                dset = self.new(group, str(slot), array, self.recipe.compress)
            nbytes += int(dset.id.get_storage_size())
        if native.config is not None:
            self._quantize_config(native, bits, block)
        return values, nbytes

    def _legacy_slots(self, entry: Entry, name: str, arrays: list) -> list[str]:
        """The dataset names of a kernel's quantized variables in a legacy .h5 layer group, in
        the naming style of the kernel's (``kernel:0`` -> ``kernel_scale:0``); remembers them
        for the group's ``weight_names``."""
        stem, suffix = re.fullmatch(r"(.*?)((?::\d+)?)", name).groups()
        names = variable_names(stem)
        slots = [name] + [names[kind] + suffix for kind, _ in arrays[1:]]
        layer_group = ("model_weights/" if self.layout == "legacy" else "") + entry.layer
        listed = entry.path[len(layer_group) + 1:]  # as weight_names lists it: "dense/kernel:0"
        inner = listed[:-len(name)]
        self.renamed[layer_group] = (listed, [inner + slot for slot in slots])
        return slots

    def _quantize_config(self, native: NativeKernel, bits: int, block: int | None) -> None:
        """The layer's dtype policy and quantization_config as Keras writes them."""
        inner = native.config["config"]
        source = _source_policy(native.config)
        activations = self.recipe.activations
        if activations is None:
            activations = "int8" if bits == 8 else "float"
        quantizer = dict(_ABSMAX) if activations == "int8" else None
        if bits == 8:
            inner["dtype"] = {"module": "keras.dtype_policies", "class_name": "QuantizedDTypePolicy",
                              "config": {"mode": "int8", "source_name": source}, "registered_name": None}
            inner["quantization_config"] = {
                "module": "keras.quantizers", "class_name": "Int8QuantizationConfig",
                "config": {"weight_quantizer": None, "activation_quantizer": quantizer}, "registered_name": None}
        else:
            inner["dtype"] = {"module": "keras.dtype_policies", "class_name": "Int4DTypePolicy",
                              "config": {"mode": f"int4/{block or -1}", "source_name": source},
                              "registered_name": None}
            inner["quantization_config"] = {
                "module": "keras.quantizers", "class_name": "Int4QuantizationConfig",
                "config": {"weight_quantizer": None, "activation_quantizer": quantizer, "block_size": block or -1},
                "registered_name": None}

    @contextlib.contextmanager
    def open(self, path: str):
        """The weights file; in a legacy .h5, once its tree is copied, the native layers' groups
        list their quantized variables in the order Keras assigns them (trainable first: the
        bias, then the kernel's codes, scales, ...), and ``model_config`` has their policies."""
        with super().open(path) as f:
            yield f
            if self.legacy and self.native:
                for group, (kernel, variables) in self.renamed.items():
                    _write_weight_names(f[group], kernel, variables)
                if self.config is not None:
                    text = json.dumps(self.config)
                    f.attrs["model_config"] = np.bytes_(text.encode()) if self.config_as_bytes else text

    def members(self) -> dict:
        """``config.json`` of a .keras archive with the native layers' policies."""
        if self.config is None or not self.native:
            return {}
        return {CONFIG_MEMBER: json.dumps(self.config).encode()}


def variable_names(stem: str) -> dict:
    """{kind: name} of a quantized kernel's variables as Keras names them, from the kernel's own
    name (``kernel`` or ``embeddings``)."""
    return {"codes": stem, "scale": f"{stem}_scale", "zero": f"{stem}_zero", "g_idx": "g_idx"}


def _write_weight_names(group: h5py.Group, kernel: str, variables: list) -> None:
    """A legacy layer group's ``weight_names`` with `kernel` replaced by its quantized
    `variables` after the other weights, in the attribute's own string type."""
    names = [n for n in read_name_list(group, "weight_names") or [] if n != kernel] + variables
    listed = [a for a in group.attrs if re.fullmatch(r"weight_names\d*", a)]
    as_bytes = np.asarray(group.attrs[listed[0]]).dtype.kind == "S"  # Keras 2's fixed-length bytes
    for a in listed:
        del group.attrs[a]
    values = np.array([n.encode() for n in names], dtype="S") if as_bytes else np.array(names, dtype=object)
    if sum(len(n.encode()) for n in names) > HEADER_LIMIT:
        split_name_list(group, "weight_names", values)
    elif as_bytes:
        group.attrs["weight_names"] = values
    else:
        group.attrs.create("weight_names", values, dtype=h5py.string_dtype())


def _native_arrays(native: NativeKernel, x: np.ndarray, bits: int, block: int | None, method: str,
                   bfloat16: bool, out: np.ndarray,
                   original: np.ndarray | None = None) -> tuple[list, np.ndarray | Measured]:
    """[(kind, array)] in Keras's order (codes, scale, then zero and g_idx for sub-channel int4)
    and the float32 weight Keras computes with (in `out`), or, given the `original` weight and
    measured against it in the same pass, its Measured error."""
    embedding = native.layer_class in EMBEDDINGS
    if bits == 8 and native.layer_class == "EinsumDense":
        codes, scale, values = _absmax(x, native.einsum.reduced, ks.INT8, method, out, bfloat16, original)
        return [("codes", codes), ("scale", native.einsum.stored_scale(scale))], values
    # Keras flattens an EinsumDense kernel in C order to (product of the reduced axes' sizes, rest)
    rows = math.prod(x.shape[a] for a in native.einsum.reduced) if native.einsum else x.shape[0]
    matrix = x if embedding else x.reshape(rows, -1)
    group_axis = 1 if embedding else 0
    if bits == 8 or block is None:
        codes, scale, values = _absmax(matrix, (group_axis,), ks.INT8 if bits == 8 else ks.INT4, method,
                                       out.reshape(matrix.shape), bfloat16,
                                       None if original is None else original.reshape(matrix.shape))
        stored = codes if bits == 8 else ks.pack_int4(codes, -1)
        return [("codes", stored.reshape(x.shape) if bits == 8 else stored), ("scale", scale.reshape(-1))], \
            values if isinstance(values, Measured) else out
    values = out.reshape(matrix.shape)
    exact = method == "minmax" and not bfloat16  # the values come with the codes
    measured = None
    if exact and original is not None:  # measured as they are made, not kept
        codes, scale, zero, measured = ks.grouped_quantize(matrix, block, group_axis,
                                                           measure=original.reshape(matrix.shape))
    elif method == "minmax":
        codes, scale, zero = ks.grouped_quantize(matrix, block, group_axis, bfloat16=bfloat16,
                                                 values=values if exact else None)
    else:
        qa = quantize(matrix, 4, symmetric=False, axis=group_axis, block_size=block, method=method)
        codes = (qa.values.astype(np.int16) - 8).astype(np.int8)
        scale, zero = qa.scale, (qa.zero_point.astype(np.int16) - 8).astype(np.int8)
    scale = _rounded(scale, bfloat16)
    if not exact:  # the values of the scales as stored
        values[...] = ks.grouped_dequantize(codes, scale, zero, block, group_axis)
    g_idx = (np.arange(matrix.shape[group_axis]) // block).astype(np.float32)
    return [("codes", ks.pack_int4(codes, -1)), ("scale", scale), ("zero", zero), ("g_idx", g_idx)], \
        out if measured is None else Measured(*measured)


def native_grid(native: NativeKernel, w: np.ndarray, bits: int, block: int | None, method: str,
                bfloat16: bool) -> Grid:
    """The grid ``storage="keras"`` gives the float32 kernel `w` (a Grid as
    :class:`KerasWriter` takes it): Keras's scale as it is stored (``kernel_scale``: multipliers
    of absmax, divisors of sub-channel int4) and zero point (``kernel_zero``; int8 zeros of the
    scale's shape for absmax)."""
    arrays = dict(_native_arrays(native, w, bits, block, method, bfloat16, np.empty(w.shape, np.float32))[0])
    scale = arrays["scale"]
    return Grid(bits, scale, arrays.get("zero", np.zeros(scale.shape, np.int8)))


def grid_values(native: NativeKernel, shape: tuple, grid: Grid, block: int | None) -> tuple:
    """A Keras grid weight by weight, for :func:`~wqkernels.calibration.gptq_on_grid`:
    (divisors, zero points, lowest code, highest code), the arrays float32 of the kernel's
    `shape` (absmax's divisor is the inverse of Keras's multiplier)."""
    scale, zero = _grid_arrays(native, shape, grid, block, bfloat16=False)
    low, high = ks.INT8 if grid.bits == 8 else ks.INT4
    if native.layer_class == "EinsumDense" and grid.bits == 8:
        return (np.broadcast_to(np.float32(1) / scale, shape), np.zeros(shape, np.float32), low, high)
    matrix = _matrix_shape(native, shape)
    group_axis = 1 if native.layer_class in EMBEDDINGS else 0
    if grid.bits == 8 or block is None:
        keep = (-1, 1) if group_axis == 1 else (1, -1)
        divisor = np.broadcast_to((np.float32(1) / scale).reshape(keep), matrix)
        return divisor.reshape(shape), np.zeros(shape, np.float32), low, high
    index = np.arange(matrix[group_axis]) // block
    divisor = np.take(scale, index, axis=group_axis)
    points = np.take(zero, index, axis=group_axis).astype(np.float32)
    return divisor.reshape(shape), points.reshape(shape), low, high


def on_native_grid(native: NativeKernel, x: np.ndarray, grid: Grid, block: int | None, bfloat16: bool,
                   out: np.ndarray) -> tuple[list, np.ndarray]:
    """The arrays of kernel `x` on a given Keras `grid` (:func:`native_grid`), in Keras's order,
    and in `out` (returned) the float32 weight Keras computes with from them.  Values already on
    the grid (a calibration's) keep their codes: the codes are those the grid's arithmetic
    rounds them to, the scales those given (bfloat16 weights: rounded to bfloat16, as stored)."""
    scale, zero = _grid_arrays(native, x.shape, grid, block, bfloat16)
    code_range = ks.INT8 if grid.bits == 8 else ks.INT4
    if grid.bits == 8 and native.layer_class == "EinsumDense":
        codes, _ = ks.absmax_quantize(x, native.einsum.reduced, code_range, values=out, scale=scale)
        return [("codes", codes), ("scale", native.einsum.stored_scale(scale))], out
    matrix = x.reshape(_matrix_shape(native, x.shape))
    values = out.reshape(matrix.shape)
    group_axis = 1 if native.layer_class in EMBEDDINGS else 0
    if grid.bits == 8 or block is None:
        keep = (-1, 1) if group_axis == 1 else (1, -1)
        codes, _ = ks.absmax_quantize(matrix, (group_axis,), code_range, values=values, scale=scale.reshape(keep))
        stored = codes.reshape(x.shape) if grid.bits == 8 else ks.pack_int4(codes, -1)
        return [("codes", stored), ("scale", scale)], out
    codes, _, _ = ks.grouped_quantize(matrix, block, group_axis, values=values, scale=scale, zero=zero)
    g_idx = (np.arange(matrix.shape[group_axis]) // block).astype(np.float32)
    return [("codes", ks.pack_int4(codes, -1)), ("scale", scale), ("zero", zero), ("g_idx", g_idx)], out


def _matrix_shape(native: NativeKernel, shape: tuple) -> tuple:
    """The 2-D shape Keras quantizes a kernel of `shape` as (int4, and int8 but EinsumDense's):
    an EinsumDense kernel flattened in C order to (product of the reduced axes' sizes, rest)."""
    if native.layer_class in EMBEDDINGS or native.einsum is None:
        return tuple(shape) if len(shape) == 2 else (shape[0], math.prod(shape[1:]))
    rows = math.prod(shape[a] for a in native.einsum.reduced)
    return rows, math.prod(shape) // max(rows, 1)


def _grid_arrays(native: NativeKernel, shape: tuple, grid: Grid, block: int | None, bfloat16: bool) -> tuple:
    """A given grid's (scale, zero) checked against the shapes Keras stores for a kernel of
    `shape`: int8 EinsumDense's scale as it multiplies the kernel (reduced axes of size 1), the
    others' as stored; bfloat16 weights' scales rounded to bfloat16."""
    rows, cols = _matrix_shape(native, shape)
    embedding = native.layer_class in EMBEDDINGS
    einsum8 = grid.bits == 8 and native.layer_class == "EinsumDense"
    if einsum8:
        keep = tuple(1 if a in native.einsum.reduced else n for a, n in enumerate(shape))
        expected = native.einsum.stored_scale(np.empty(keep, np.float32)).shape
    elif grid.bits == 8 or block is None:
        expected = (rows,) if embedding else (cols,)
    else:
        groups = -(-(cols if embedding else rows) // block)
        expected = (rows, groups) if embedding else (groups, cols)
    scale = np.asarray(grid.scale)
    if scale.shape != expected:
        raise ValueError(f"the given grid's scale must be of shape {expected} ({native.layer}'s kernel_scale), "
                         f"got {scale.shape}")
    zero = np.asarray(grid.zero_point)
    if zero.shape != scale.shape:
        raise ValueError(f"the given grid's zero point must be of the scale's shape {scale.shape}, got {zero.shape}")
    absmax = grid.bits == 8 or block is None
    if absmax and np.any(zero):
        raise ValueError(f"the given grid of {native.layer}'s kernel is symmetric (Keras's absmax): its zero points "
                         f"must be 0")
    scale = np.asarray(scale, np.float32)
    if einsum8:
        scale = native.einsum.kept_scale(scale, keep)
    return _rounded(scale, bfloat16), zero


def _absmax(x: np.ndarray, axes: tuple, code_range: tuple, method: str, values: np.ndarray,
            bfloat16: bool, original: np.ndarray | None = None) -> tuple:
    """Codes and multiplier scales (keepdims, as stored) of Keras's absmax layout, and in `values`
    the weight Keras computes with (returned), or, given the `original` weight (Keras's own
    scales only), its Measured error instead; methods other than minmax choose their own scales
    (ours are divisors: Keras's multiplier is their inverse)."""
    if method == "minmax" and not bfloat16:
        if original is not None:
            codes, scale, measured = ks.absmax_quantize(x, axes, code_range, measure=original)
            return codes, scale, Measured(*measured)
        codes, scale = ks.absmax_quantize(x, axes, code_range, values=values)
        return codes, scale, values
    codes, scale = _other_absmax(x, axes, code_range, method)
    scale = _rounded(scale, bfloat16)
    np.divide(codes, scale, out=values, dtype=np.float32)
    return codes, scale, values


def _other_absmax(x: np.ndarray, axes: tuple, code_range: tuple, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "minmax":
        return ks.absmax_quantize(x, axes, code_range)
    others = tuple(a for a in range(x.ndim) if a not in axes)
    order = tuple(axes) + others
    moved = np.ascontiguousarray(np.transpose(x, order))
    rows = math.prod(moved.shape[:len(axes)])
    qa = quantize(moved.reshape(rows, -1), 8 if code_range == ks.INT8 else 4, axis=1, method=method)
    codes = np.ascontiguousarray(np.transpose(qa.values.reshape(moved.shape), np.argsort(order)))
    keep = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    return codes, (np.float32(1) / qa.scale).astype(np.float32).reshape(keep)


def _rounded(scale: np.ndarray, bfloat16: bool) -> np.ndarray:
    """The scales as Keras stores them: rounded to bfloat16 for bfloat16 weights."""
    return ks.bfloat16_values(ks.bfloat16_bits(scale)).reshape(scale.shape) if bfloat16 else scale


# ---- reading files Keras quantized -----------------------------------------------------------

@dataclass(frozen=True)
class QuantizedKernel:
    """A kernel Keras quantized: how to get its float values back."""

    layer_class: str
    mode: str                 # "int8", "int4/-1", "int4/128", ...
    bits: int
    block_size: int | None
    kernel_shape: tuple       # the float kernel's shape
    paths: dict = field(default_factory=dict)   # role -> dataset path (codes, scale, zero)
    einsum: EinsumLayout | None = None          # an EinsumDense's scale layout, from its equation

    @property
    def storage(self) -> str:
        return f"keras:{self.mode}"

    def roles(self) -> dict:
        """{dataset path: role} of the scale, zero point and group index variables."""
        names = variable_names(NATIVE_CLASSES[self.layer_class])
        return {path: names[kind] for kind, path in self.paths.items() if kind != "codes"}


def quantized_layers(root: h5py.Group, entries: list, config: dict | None,
                     layout: str = "keras3") -> dict[str, QuantizedKernel]:
    """Kernel path -> QuantizedKernel for every layer Keras quantized to int8/int4, from the model
    config (its dtype policy and shapes) or, without one, from the variables' shapes; in a
    Keras 3 file (`layout` ``keras3``) or a legacy .h5 (``legacy``, ``legacy-weights``)."""
    layers = ModelLayers(config)
    by_group: dict[str, list] = {}
    for e in entries:
        parts = e.path.split("/")
        if layout == "keras3" and len(parts) >= 3 and parts[-2] == "vars" or \
                layout != "keras3" and len(parts) >= 2 and e.role != "optimizer":
            by_group.setdefault("/".join(parts[:-1]), []).append(e)
    out = {}
    for group_path, group_entries in by_group.items():
        ordered = _variable_order(group_entries, layout)
        first = ordered[0]
        cls = first.layer_class
        if cls not in NATIVE_CLASSES or first.dtype != "int8":
            continue
        if layout == "keras3":
            name = string_attr(root[group_path], "name")
            name = name if isinstance(name, str) else None  # (an attribute of another type names no layer)
        else:  # the group named after the layer (Keras 2.0's inner group is not: then the layer group's)
            name = group_path.rsplit("/", 1)[-1]
            name = name if layers.find(name) is not None else first.layer
        found = _describe(cls, ordered, layers.find(name), root)
        if found is not None:
            out[first.path] = found
    return out


def _variable_order(group_entries: list, layout: str) -> list:
    """A layer's variables in Keras 3's ``vars`` order (codes, bias, scale, zero, g_idx): by index
    in a Keras 3 file; in a legacy .h5, which lists the bias first, the kernel moved ahead."""
    if layout == "keras3":
        return sorted(group_entries, key=lambda e: int(e.path.rsplit("/", 1)[1]))
    kernel = [e for e in group_entries if e.role == NATIVE_CLASSES.get(e.layer_class)]
    return kernel[:1] + [e for e in group_entries if e not in kernel[:1]]


def _describe(cls: str, ordered: list, layer_config: dict | None, root: h5py.Group) -> QuantizedKernel | None:
    codes = ordered[0]
    mode = quantization_mode(layer_config) if layer_config is not None else None
    embedding = cls in EMBEDDINGS
    bias = 0 if embedding else int(len(ordered) >= 2 and ordered[1].dtype != "int8" and (
        mode is None and len(ordered) in (3, 5) or mode is not None and
        bool((layer_config.get("config", {}).get("use_bias", True) if cls == "Dense"
              else layer_config.get("config", {}).get("bias_axes")))))
    rest = ordered[1 + bias:]
    if not rest:
        return None
    scale_shape = rest[0].shape
    grouped = len(rest) >= 3
    if mode is None:  # no config: from the shapes
        packed = len(codes.shape) == 2 and (grouped or len(scale_shape) == 1 and not embedding and
                                            codes.shape[1] == -(-scale_shape[0] // 2) != scale_shape[0])
        mode = "int8" if not packed else "int4"
    bits = 8 if mode.startswith("int8") else 4
    if not mode.startswith("int"):
        return None
    block = None
    if grouped:
        parsed = mode.split("/")
        if len(parsed) > 1 and parsed[1].isdigit() and int(parsed[1]) > 0:
            block = int(parsed[1])
        else:  # the group index of each row: the block is the count of group 0 (all rows: one group)
            g_idx = np.asarray(root[rest[2].path][()]).reshape(-1)
            block = max(int(np.count_nonzero(g_idx == 0)), 1)
        mode = f"int4/{block}"
    elif bits == 4 and "/" not in mode:
        mode = "int4/-1"
    if bits == 8:
        kernel_shape = codes.shape
    elif embedding:
        # packed along the row: an odd width is only known from g_idx or the config
        width = (layer_config or {}).get("config", {}).get("output_dim")
        kernel_shape = (codes.shape[0], rest[2].shape[0] if grouped else
                        int(width) if isinstance(width, int) and -(-width // 2) == codes.shape[1]
                        else 2 * codes.shape[1])
    else:
        columns = scale_shape[-1]
        rows = rest[2].shape[0] if grouped else codes.shape[0]
        kernel_shape = _einsum_kernel_shape(layer_config, rows, columns) or (rows, columns)
    paths = {"codes": codes.path, "scale": rest[0].path}
    if grouped:
        paths["zero"], paths["g_idx"] = rest[1].path, rest[2].path
    equation = (layer_config or {}).get("config", {}).get("equation") if cls == "EinsumDense" else None
    einsum = einsum_layout(str(equation)) if equation is not None else None
    return QuantizedKernel(cls, mode, bits, block, tuple(kernel_shape), paths, einsum)


def _einsum_kernel_shape(layer_config: dict | None, rows: int, columns: int) -> tuple | None:
    """An int4 EinsumDense kernel's own shape, from the equation, the output shape and the
    build input shape in the config; an axis none of them sizes (a legacy .h5 has no build
    config) takes what is left of the ``rows * columns`` values, when it is the only one."""
    if layer_config is None or layer_config.get("class_name") != "EinsumDense":
        return None
    inner = layer_config.get("config", {})
    parts = einsum_subscripts(inner.get("equation", ""))
    input_shape = (layer_config.get("build_config") or {}).get("input_shape")
    out_shape = inner.get("output_shape")
    if parts is None or "..." in parts[0] + parts[2]:
        return None
    inputs, weights, outputs = parts
    out_shape = [out_shape] if isinstance(out_shape, int) else list(out_shape or [])
    sizes = dict(zip(inputs, input_shape)) if isinstance(input_shape, list) else {}
    sizes.update(dict(zip(outputs[len(outputs) - len(out_shape):], out_shape)))
    try:
        known = {c: int(sizes[c]) for c in weights if sizes.get(c) is not None}
    except (TypeError, ValueError):
        return None
    missing, product = [c for c in weights if c not in known], math.prod(known.values())
    if len(missing) == 1 and product > 0 and rows * columns % product == 0:
        known[missing[0]] = rows * columns // product
    if len(known) != len(weights):
        return None
    shape = tuple(known[c] for c in weights)
    return shape if math.prod(shape) == rows * columns else None


def dequantize_kernel(root: h5py.Group, q: QuantizedKernel, read) -> np.ndarray:
    """The float32 kernel Keras computes with, in the kernel's own shape."""
    codes = read(q.paths["codes"])
    scale = np.asarray(read(q.paths["scale"]), np.float32)
    embedding = q.layer_class in EMBEDDINGS
    if q.bits == 8:
        if embedding:
            scale = scale.reshape(-1, 1)
        elif q.layer_class == "EinsumDense" and q.einsum is not None:
            keep = tuple(1 if a in q.einsum.reduced else n for a, n in enumerate(codes.shape))
            scale = q.einsum.kept_scale(scale, keep)
        elif q.layer_class == "EinsumDense" and scale.ndim != codes.ndim:
            scale = _einsum_keep_scale(scale, codes.shape)
        return ks.absmax_dequantize(codes, scale).reshape(q.kernel_shape)
    axis = 1 if embedding else 0
    length = q.kernel_shape[1] if embedding else math.prod(q.kernel_shape) // codes.shape[0]
    unpacked = ks.unpack_int4(codes, length, -1)
    if q.block_size is None:
        s = scale.reshape(-1, 1) if embedding else scale.reshape(1, -1)
        values = ks.absmax_dequantize(unpacked, s)
    else:
        values = ks.grouped_dequantize(unpacked, scale, read(q.paths["zero"]), q.block_size, axis)
    return values.reshape(q.kernel_shape)


def _einsum_keep_scale(scale: np.ndarray, kernel_shape: tuple) -> np.ndarray:
    """A stored EinsumDense int8 scale broadcast against its kernel, without the equation (a
    weights file): its non-unit dimensions in order are the kernel's channel axes."""
    dims = [n for n in scale.shape if n != 1]
    keep, k = [], 0
    for n in kernel_shape:
        if k < len(dims) and dims[k] == n:
            keep.append(n)
            k += 1
        else:
            keep.append(1)
    return scale.reshape(keep) if math.prod(keep) == scale.size else scale
