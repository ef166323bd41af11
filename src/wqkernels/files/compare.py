"""Two files of the same model compared weight by weight, without Keras.

The weights are read as :func:`wqkernels.load_weights` reads them (packed tensors and kernels
Keras quantized dequantized to the float values a reader gets, sharded saves shard by shard), so
any supported layout and storage compares with any other: a model against its compressed
rewrite, a legacy ``.h5`` against a ``.keras`` archive.  One weight of each file is held at a
time.  The scales, zero points and group indexes of a kernel Keras quantized are part of that
kernel, not weights of their own.

Weights are paired by path; the rest by layer name and position among the layer's weights
(a legacy file lists a layer's weights in the order Keras 3 numbers them: kernel, bias; gamma,
beta, moving mean, moving variance), when their roles agree; then, for the layers of a nested
model (one layer of a legacy file), by the name of the group holding the weight.  Two weights paired with different
shapes, or no pair at all, mean the files are not of the same model: that is an error.  The
optimizer state is not compared (it is counted in the notes).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .._text import natural_key, note_lines, printable, table
from ..progress import progress_bar
from ..statistics import compare as compare_arrays
from ..statistics import error, sparsity
from .errors import KerasFileError, as_file_errors
from .layouts import Entry, file_path
from .report import HISTOGRAM_BINS, Histogram
from .rewrite import _open
from .sharded import Shards

__all__ = ["compare", "Comparison", "WeightComparison"]

#: roles that say nothing of what a weight is (a Keras 3 ``vars/<i>`` of a layer without a table)
_ANY_ROLE = ("other", "unknown", "variable")


@dataclass
class WeightComparison:
    """One weight of the first file against its pair in the second."""

    path: str                   # in the first file
    path_b: str                 # in the second (often the same)
    layer: str
    layer_class: str | None
    role: str
    shape: tuple
    dtype_a: str
    dtype_b: str
    sparsity_a: float | None    # None for integer datasets
    sparsity_b: float | None
    bits_a: int | None          # the bit width of packed or Keras-quantized codes
    bits_b: int | None
    mse: float | None           # None for integer datasets and non-finite values
    max_abs: float | None
    sqnr_db: float | None
    identical: bool             # the same values (-0.0 equals 0.0)
    bytes_a: int
    bytes_b: int
    histogram: Histogram | None = None
    signal: float = 0.0         # sum of the first file's squares, for the totals

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("path", "path_b", "layer", "layer_class", "role", "dtype_a",
                                           "dtype_b", "sparsity_a", "sparsity_b", "bits_a", "bits_b", "mse",
                                           "max_abs", "sqnr_db", "identical", "bytes_a", "bytes_b")}
        d["shape"] = list(self.shape)
        d["sqnr_db"] = _json_float(self.sqnr_db)
        d["histogram"] = None if self.histogram is None else self.histogram.to_dict()
        return d


@dataclass
class Comparison:
    """Every weight of two files compared, the weights found in one file only, and totals."""

    a: str
    b: str
    layout_a: str
    layout_b: str
    rows: list = field(default_factory=list)
    only_a: list = field(default_factory=list)      # paths
    only_b: list = field(default_factory=list)
    size_a: int = 0
    size_b: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def compared(self) -> list:
        """The rows of float weights with finite values: those the totals are made of."""
        return [r for r in self.rows if r.mse is not None]

    @property
    def mse(self) -> float:
        """The mean squared difference over every compared value."""
        rows = self.compared
        n = sum(math.prod(r.shape) for r in rows)
        return sum(r.mse * math.prod(r.shape) for r in rows) / n if n else 0.0

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.compared), default=0.0)

    @property
    def sqnr_db(self) -> float:
        """10 log10 of the sum of the first file's squares over the sum of squared differences."""
        rows = self.compared
        noise = sum(r.mse * math.prod(r.shape) for r in rows)
        signal = sum(r.signal for r in rows)
        if noise == 0:
            return math.inf
        return -math.inf if signal == 0 else 10.0 * math.log10(signal / noise)

    def totals(self) -> dict:
        return {"weights": len(self.rows), "identical": sum(r.identical for r in self.rows),
                "only_in_a": len(self.only_a), "only_in_b": len(self.only_b), "mse": self.mse,
                "max_abs": self.max_abs, "sqnr_db": _json_float(self.sqnr_db), "size_a": self.size_a,
                "size_b": self.size_b, "seconds": self.seconds}

    def to_dict(self) -> dict:
        """JSON-ready: ``a``, ``b``, their layouts, ``weights``, ``only_in_a``, ``only_in_b``,
        ``totals`` and ``notes``."""
        return {"a": self.a, "b": self.b, "layout_a": self.layout_a, "layout_b": self.layout_b,
                "weights": [r.to_dict() for r in self.rows], "only_in_a": list(self.only_a),
                "only_in_b": list(self.only_b), "totals": self.totals(), "notes": list(self.notes)}

    def table(self, weights: bool = True) -> str:
        """A fixed-width text table, one line per weight (unless not `weights`), then the totals."""
        head = ("weight", "shape", "dtype", "sparsity", "bits", "mse", "max |diff|", "SQNR dB")
        lines = []
        for r in self.rows if weights else ():
            name = r.path if r.path == r.path_b else f"{r.path} ~ {r.path_b}"
            dtype = r.dtype_a if r.dtype_a == r.dtype_b else f"{r.dtype_a}/{r.dtype_b}"
            lines.append((name, "x".join(map(str, r.shape)) or "()", dtype,
                          f"{_text(r.sparsity_a, '.2f')}/{_text(r.sparsity_b, '.2f')}",
                          f"{r.bits_a or '-'}/{r.bits_b or '-'}", _text(r.mse, ".3g"), _text(r.max_abs, ".3g"),
                          "=" if r.identical else _text(r.sqnr_db, ".1f")))
        out = table(head, lines) if lines else []
        t = self.totals()
        # (file names, paths and notes escaped like the table's cells: one line each)
        out.append(printable(f"{self.a} ({self.layout_a}) vs {self.b} ({self.layout_b}): {t['weights']} weights compared, "
                   f"{t['identical']} identical; only in the first: {t['only_in_a']}, only in the second: "
                   f"{t['only_in_b']}"))
        out.append(f"total: mse {self.mse:.3g}, max |diff| {self.max_abs:.3g}, SQNR {self.sqnr_db:.1f} dB; "
                   f"size {self.size_a} vs {self.size_b} bytes, {self.seconds:.2f} s")
        out.extend(printable(f"only in the first: {p}") for p in self.only_a)
        out.extend(printable(f"only in the second: {p}") for p in self.only_b)
        out.extend(note_lines(self.notes))
        return "\n".join(out)


def _text(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _json_float(value):
    return str(value) if value is not None and not math.isfinite(value) else value


def compare(a, b, *, progress: bool = False) -> Comparison:
    """Compare the weights of two Keras files of the same model.

    Parameters
    ----------
    a, b : str, bytes or os.PathLike
        Any supported files (legacy ``.h5``, ``.weights.h5``, ``.keras``, packed, the index of
        a sharded save), of any storage: packed weights and kernels Keras quantized are
        compared as they dequantize.
    progress : bool
        Draw a progress bar by bytes on stderr when it is a terminal.

    Returns
    -------
    Comparison
        Per weight of `a` paired in `b`: shape, dtypes, sparsities, bits of codes, mse,
        largest absolute difference and SQNR of `b` against `a` (with the histograms of both),
        the weights found in only one of them, and the totals.

    Raises
    ------
    ValueError (KerasFileError)
        A file is missing or unreadable, or the two are not of the same model (a paired weight
        of another shape, or no weight in common).

    Examples
    --------
    >>> from wqkernels.files.compare import compare
    >>> print(compare("model.keras", "model.int4.keras").table())  # doctest: +SKIP
    """
    start = time.perf_counter()
    a, b = file_path(a, "a"), file_path(b, "b")
    with _open(a) as first, _open(b) as second:
        pairs, only_a, only_b = _pairs(first, second)
        comparison = Comparison(a, b, first.description, second.description, only_a=[e.path for e in only_a],
                                only_b=[e.path for e in only_b], size_a=_size(first), size_b=_size(second))
        for name, source in (("first", first), ("second", second)):
            state = [e for e in source.entries if e.role == "optimizer"]
            if state:
                comparison.notes.append(f"optimizer state of the {name} file not compared ({len(state)} tensors)")
        total = sum(_bytes(first, x) + _bytes(second, y) for x, y in pairs)
        bar = progress_bar(None, total, enabled=progress, label=os.path.basename(b))
        try:
            for x, y in pairs:
                comparison.rows.append(_compare(first, x, second, y))
                bar.advance(_bytes(first, x) + _bytes(second, y))
        finally:
            bar.close()
    comparison.seconds = time.perf_counter() - start
    return comparison


def _compare(first, x: Entry, second, y: Entry) -> WeightComparison:
    """One pair of weights, read one after the other."""
    with as_file_errors(first.path):
        va = first.values(x)
    with as_file_errors(second.path):
        vb = second.values(y)
    row = WeightComparison(x.path, y.path, x.layer_name, x.layer_class or y.layer_class,
                           x.role if x.role not in _ANY_ROLE else y.role, _shape(first, x), _dtype(first, x),
                           _dtype(second, y), None, None, _bits(first, x), _bits(second, y), None, None, None,
                           False, _bytes(first, x), _bytes(second, y))
    floats = va.dtype.kind == "f" and vb.dtype.kind == "f"
    if not floats or not (np.isfinite(va).all() and np.isfinite(vb).all()):
        row.sparsity_a = sparsity(va) if va.dtype.kind == "f" else None
        row.sparsity_b = sparsity(vb) if vb.dtype.kind == "f" else None
        row.identical = bool(np.array_equal(va, vb, equal_nan=floats))
        return row
    stats, row.sparsity_a, row.sparsity_b, counts, edges = compare_arrays(va, vb, bins=HISTOGRAM_BINS)
    row.mse, row.max_abs, row.sqnr_db = float(stats.mse), float(stats.max_abs), float(stats.sqnr_db)
    row.identical = row.max_abs == 0
    row.histogram = Histogram.of(counts, edges) if va.size else None
    noise = row.mse * va.size
    if noise == 0:  # no noise to scale: the signal itself
        row.signal = error(va, np.zeros_like(va)).mse * va.size
    elif math.isfinite(row.sqnr_db):
        row.signal = noise * 10.0 ** (row.sqnr_db / 10.0)
    return row


# ---- what each file says of a weight -----------------------------------------------------------
# `source` is an open Source, or the Shards of a sharded save (the same interface, and `owner`).

def _bits(source, entry: Entry) -> int | None:
    """The bit width of a weight stored as packed or Keras-quantized codes, else None."""
    quantized = source.quantized.get(entry.path)
    if quantized is not None:
        return quantized.bits
    if not source.is_packed(entry):
        return None
    owner = source.owner(entry) if isinstance(source, Shards) else source
    return int(owner.packed.tensors[entry.path]["bits"])


def _storage(source, entry: Entry) -> str | None:
    """How a weight is stored when it is not a plain dataset: ``packed:4``, ``keras:int8``, ..."""
    quantized = source.quantized.get(entry.path)
    if quantized is not None:
        return quantized.storage
    return f"packed:{_bits(source, entry)}" if source.is_packed(entry) else None


def _dtype(source, entry: Entry) -> str:
    storage = _storage(source, entry)
    return entry.dtype if storage is None else f"{entry.dtype} ({storage})"


def _shape(source, entry: Entry) -> tuple:
    """The shape of the weight's values (a kernel Keras packed to int4 has half its columns stored)."""
    quantized = source.quantized.get(entry.path)
    return tuple(quantized.kernel_shape) if quantized is not None else tuple(entry.shape)


def _bytes(source, entry: Entry) -> int:
    """Bytes stored for the weight (a kernel Keras quantized: its codes, scales and zero points)."""
    quantized = source.quantized.get(entry.path)
    if quantized is None:
        return source.stored_bytes(entry)
    paths = set(quantized.paths.values())
    return sum(source.stored_bytes(e) for e in source.entries if e.path in paths)


def _parts(source) -> set:
    """The paths of the scales, zero points and group indexes of kernels Keras quantized."""
    return {path for q in source.quantized.values() for path in q.paths.values()} - set(source.quantized)


def _size(source) -> int:
    return source.size() if isinstance(source, Shards) else os.path.getsize(source.path)


# ---- pairing ----------------------------------------------------------------------------------

def _pairs(first, second) -> tuple[list, list, list]:
    """(pairs of entries in the first file's order, entries only in the first, only in the second)."""
    parts_a, parts_b = _parts(first), _parts(second)
    a = [e for e in first.entries if e.role != "optimizer" and e.path not in parts_a]
    b = [e for e in second.entries if e.role != "optimizer" and e.path not in parts_b]
    by_path = {e.path: e for e in b}
    paired = {x.path: by_path[x.path] for x in a if x.path in by_path}
    rest_a = [x for x in a if x.path not in paired]
    taken = {y.path for y in paired.values()}
    rest_b = [y for y in b if y.path not in taken]
    for owner in (_layer, _group):  # the layer's name, then (nested models) the weight's own group
        rest_a = [x for x in rest_a if x.path not in paired]
        rest_b = [y for y in rest_b if y.path not in taken]
        if not (rest_a and rest_b):
            break
        by_place = _by_place(rest_b, second.layout, owner)
        for key, x in _by_place(rest_a, first.layout, owner).items():
            y = by_place.get(key)
            if y is not None and _same_role(x.role, y.role):
                paired[x.path] = y
                taken.add(y.path)
    entries = {x.path: x for x in a}
    for path, y in paired.items():
        x = entries[path]
        if _shape(first, x) != _shape(second, y):
            raise KerasFileError(f"{first.path} and {second.path} are not the same model: weight {x.path!r} is "
                                 f"{_dims(_shape(first, x))} in the first and {y.path!r} is "
                                 f"{_dims(_shape(second, y))} in the second")
    if a and b and not paired:
        raise KerasFileError(f"{first.path} and {second.path} are not the same model: they have no weight in "
                             f"common ({len(a)} and {len(b)} weights, no path or layer name shared)")
    pairs = [(x, paired[x.path]) for x in a if x.path in paired]
    return pairs, [x for x in a if x.path not in paired], [y for y in b if y.path not in taken]


def _layer(e: Entry, layout: str) -> str:
    return e.layer


def _group(e: Entry, layout: str) -> str:
    """The name of the group holding a legacy weight (inside a nested model: its own layer's,
    where the entry's layer is the nested model's); a Keras 3 weight's layer."""
    return e.path.split("/")[-2] if layout != "keras3" and "/" in e.path else e.layer


def _by_place(entries: list, layout: str, owner) -> dict:
    """Entries by (``owner(entry, layout)``, position among that owner's weights): in file
    order for legacy files (Keras's order), by variable number for Keras 3 files (whose walk is
    in name order)."""
    layers: dict[str, list] = {}
    for e in entries:
        layers.setdefault(owner(e, layout), []).append(e)
    out = {}
    for layer, members in layers.items():
        if layout == "keras3":
            members = sorted(members, key=lambda e: natural_key(e.path))
        for k, e in enumerate(members):
            out[(layer, k)] = e
    return out


def _same_role(r: str, s: str) -> bool:
    return r == s or r in _ANY_ROLE or s in _ANY_ROLE


def _dims(shape: tuple) -> str:
    return "x".join(map(str, shape)) or "a scalar"
