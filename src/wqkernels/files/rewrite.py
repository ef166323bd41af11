"""inspect, load_weights, rewrite and restore Keras weight files with numpy and h5py only.

A weight's way through a rewrite reads in one direction: the :class:`~.source.Source` is opened
read-only; :func:`~.plan.plan` decides which weights are rewritten and how many zeros each gets;
:func:`~.transform.prepare` prunes each in one buffer and says how it is quantized; the storage's
:class:`~.writers.Writer` stores it; the :class:`~.report.Report` records what happened.

`rewrite` and `restore` write a temporary file beside the destination and rename it into place
only once it is complete (:mod:`.atomic`); whatever goes wrong (including KeyboardInterrupt) the
temporary file is removed and the source is untouched.  They keep no global state, so a call can
run in another process.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import zipfile
from collections.abc import Mapping

import h5py
import numpy as np

from ..statistics import sparsity
from . import atomic
from .buffers import Buffers
from .errors import KerasFileError, as_file_errors
from .h5tree import Datasets, copy_attrs, copy_tree
from .layouts import KERAS_MEMBER, Entry, container
from .packed import PackedWriter
from .plan import plan
from .recipe import Recipe
from .report import Report, WeightInfo, WeightRow
from .source import Source
from .transform import Grid, prepare, statistics
from .writers import FloatWriter, Writer

__all__ = ["inspect", "load_weights", "rewrite", "restore"]

#: the writer of each storage
WRITERS = {"float32": FloatWriter, "float16": FloatWriter, "packed": PackedWriter}


# ---- reading ----------------------------------------------------------------------------------

def inspect(path) -> list[WeightInfo]:
    """List the weight datasets of a Keras file with their roles.

    Parameters
    ----------
    path : str or os.PathLike
        A legacy ``.h5``, a Keras 3 ``.weights.h5``, a ``.keras`` archive or a packed file
        (detected from the content, not the name).

    Returns
    -------
    list of WeightInfo
        In file order; `prunable` marks the kernels a rewrite would touch.

    Raises
    ------
    ValueError (KerasFileError)
        The file is missing, unreadable or not a supported Keras file.

    Examples
    --------
    >>> import wqkernels
    >>> [(w.path, w.role, w.shape) for w in wqkernels.inspect("model.h5") if w.prunable]  # doctest: +SKIP
    [('model_weights/dense/dense/kernel', 'kernel', (784, 128)), ...]
    """
    path = os.fspath(path)
    out = []
    with Source(path) as src, as_file_errors(path):
        packed = src.packed.tensors if src.packed is not None else {}
        for e in src.entries:
            data = src.read(e)
            zeros = sparsity(data) if data.dtype.kind == "f" else 0.0
            storage = f"packed:{packed[e.path]['bits']}" if e.path in packed else "dataset"
            out.append(WeightInfo(e.path, e.layer, e.layer_class, e.role, e.prunable, e.shape, e.dtype,
                                  src.stored_bytes(e), zeros, e.role_source, storage))
    return out


def load_weights(path) -> dict[str, np.ndarray]:
    """All weight datasets of a Keras file as arrays, keyed by their path in the weights file.

    Packed files are dequantized: the arrays equal those of the ``storage="float32"`` rewrite.

    Examples
    --------
    >>> import wqkernels
    >>> weights = wqkernels.load_weights("model-int4.keras")  # doctest: +SKIP
    >>> weights["layers/dense/vars/0"].dtype  # doctest: +SKIP
    dtype('float32')
    """
    path = os.fspath(path)
    with Source(path) as src, as_file_errors(path):
        return {e.path: src.read(e) for e in src.entries}


# ---- writing ----------------------------------------------------------------------------------

def rewrite(src, dst, recipe: Recipe | None = None, *, in_place: bool = False, weights: Mapping | None = None,
            grids: Mapping | None = None) -> Report:
    """Prune and/or quantize the kernels of a Keras file and write the result to `dst`.

    Parameters
    ----------
    src, dst : str or os.PathLike
        Source file (any supported layout) and destination (same layout, or packed).
    recipe : Recipe, optional
        What to do; the default Recipe() copies the file.
    in_place : bool
        Allow `dst` to be `src` (still written to a temporary file and renamed).
    weights : mapping, optional
        Weight path (as :func:`inspect` lists it) -> values to start from instead of the file's
        (anything ``np.asarray`` converts, read when the weight is written).  The recipe still
        applies to the weights it selects; others are stored as given, in their dataset's type.
    grids : mapping, optional
        Weight path -> :class:`~wqkernels.files.transform.Grid`: the bits, scale and zero point
        to quantize that weight with (no search), e.g. a calibration's.

    Returns
    -------
    Report
        One row per prunable weight and the totals.

    Examples
    --------
    >>> import wqkernels
    >>> report = wqkernels.rewrite("model.h5", "model-int8.h5", wqkernels.Recipe(bits=8))  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
    >>> report.to_dict()["totals"]["ratio"]  # doctest: +SKIP
    1.0
    """
    recipe = Recipe() if recipe is None else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    for name, given in (("weights", weights), ("grids", grids)):
        if given is not None and not isinstance(given, Mapping):
            raise TypeError(f"{name} must be a mapping of weight paths, got {type(given).__name__}")
    return _write(src, dst, recipe, in_place, restoring=False, overrides=(dict(weights or {}), dict(grids or {})))


def restore(src, dst, *, in_place: bool = False) -> Report:
    """Write a packed file back as a plain Keras file that stock Keras loads.

    Each restored dataset is bit-identical to the ``storage="float32"`` rewrite with the same
    recipe; everything else is copied as it was.

    Examples
    --------
    >>> import wqkernels
    >>> recipe = wqkernels.Recipe(bits=4, storage="packed", strip_optimizer=True)
    >>> wqkernels.rewrite("model.keras", "small.keras", recipe)  # doctest: +SKIP
    >>> wqkernels.restore("small.keras", "model-int4.keras")  # doctest: +SKIP
    """
    return _write(src, dst, Recipe(), in_place, restoring=True)


def _write(src, dst, recipe: Recipe, in_place: bool, restoring: bool, overrides=({}, {})) -> Report:
    start = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    container(src)  # missing, directory or not a Keras file: fail before creating anything
    if atomic.same_file(src, dst) and not in_place:
        raise KerasFileError(f"{dst}: is the source file; give in_place=True (--in-place) to overwrite it")
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise KerasFileError(f"{dst}: is a directory")
    with atomic.written(dst) as tmp:
        with Source(src, tmp_dir=dst_dir) as source, as_file_errors(src):
            if restoring and source.packed is None:
                raise KerasFileError(f"{src}: not a packed file; nothing to restore")
            report = Report(src, dst, source.description, recipe.to_dict(), role_source=source.role_source,
                            size_before=os.path.getsize(src))
            if source.kind == "zip":
                _write_zip(source, tmp, recipe, report, dst_dir, overrides)
            else:
                _write_weights(source, tmp, recipe, report, overrides)
    report.size_after = os.path.getsize(dst)
    report.seconds = time.perf_counter() - start
    return report


def _write_zip(source: Source, tmp: str, recipe: Recipe, report: Report, dst_dir: str, overrides) -> None:
    """A .keras archive: every member copied in order with its compression, the weights rewritten."""
    weights = atomic.scratch_file(dst_dir)
    try:
        _write_weights(source, weights, recipe, report, overrides)
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as out:
            for info in source.zip.infolist():
                new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new.compress_type, new.external_attr = info.compress_type, info.external_attr
                new.comment, new.extra, new.create_system = info.comment, info.extra, info.create_system
                data = open(weights, "rb") if info.filename == KERAS_MEMBER else source.zip.open(info)
                with data, out.open(new, "w", force_zip64=True) as member:
                    shutil.copyfileobj(data, member, 1 << 20)
            out.comment = source.zip.comment
    finally:
        with contextlib.suppress(OSError):
            os.unlink(weights)


def _write_weights(source: Source, tmp: str, recipe: Recipe, report: Report, overrides=({}, {})) -> None:
    """The weights HDF5 file: everything copied, the planned weights transformed."""
    buffers = Buffers()
    work = plan(source, recipe, buffers)  # reads one tensor at a time, before anything is written
    report.notes.extend(work.notes)
    weights, grids = _checked_overrides(source, recipe, work.selected, *overrides)
    writer = WRITERS[recipe.storage](recipe, source.layout)
    rows = {}
    with writer.open(tmp) as f:
        hooks = {}
        for e in work.selected:
            _, given = weights.pop(e.path, (e, None))
            hooks[e.path] = _rewrite_hook(source, e, recipe, work.counts, writer, rows, buffers, given,
                                          grids.get(e.path))
        hooks.update({e.path: _override_hook(source, e, value, recipe, writer) for e, value in weights.values()})
        if source.packed is not None:  # placeholders of a packed source not rewritten
            for e in source.entries:
                if source.is_packed(e) and e.path not in hooks:
                    hooks[e.path] = _restore_hook(source, e, writer, rows)
            for path, dset in source.packed.datasets.items():
                if path not in hooks:
                    hooks[path] = _copy_hook(dset, writer)
        copy_attrs(source.root, f)
        copy_tree(source.root, f, hooks, work.skip, writer)
    for e in source.entries:
        if e.prunable:
            report.rows.append(rows.get(e.path) or _untouched_row(source, e))


def _untouched_row(source: Source, e: Entry) -> WeightRow:
    sp = sparsity(source.read(e))
    nbytes = source.stored_bytes(e)
    return WeightRow(e.path, e.role, e.shape, False, sp, sp, None, None, None, nbytes, nbytes)


def _checked_overrides(source: Source, recipe: Recipe, selected: list, weights: dict, grids: dict):
    """The given weights as {path: (entry, value)} and grids, checked against the file and recipe."""
    entries = {e.path: e for e in source.entries}
    for path in weights:
        e = entries.get(path)
        if e is None or np.dtype(e.dtype).kind != "f":
            raise ValueError(f"weights: {path!r} is not a float weight of {source.path}")
    quantized = {e.path for e in selected} if recipe.quantizes else set()
    for path, grid in grids.items():
        if path not in quantized:
            raise ValueError(f"grids: {path!r} is not a weight the recipe quantizes")
        if not isinstance(grid, Grid):
            raise TypeError(f"grids[{path!r}] must be a Grid, got {type(grid).__name__}")
    return {path: (entries[path], value) for path, value in weights.items()}, grids


def _given(e: Entry, value, dtype=np.float32) -> np.ndarray:
    """A given weight as an array of `dtype` and of its entry's shape."""
    x = np.ascontiguousarray(np.asarray(value), dtype=dtype)
    if x.shape != tuple(e.shape):
        raise ValueError(f"weights[{e.path!r}] has shape {x.shape}, the file's weight {tuple(e.shape)}")
    return x


def _rewrite_hook(source: Source, e: Entry, recipe: Recipe, counts: dict, writer: Writer, rows: dict,
                  buffers: Buffers, given=None, grid: Grid | None = None):
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        original = source.read(e, buffers)
        try:
            start = original if given is None else _given(e, given)
            x, quantization, out = prepare(start, e, recipe, counts, buffers, release=writer.holds_codes, grid=grid)
            stored, nbytes = writer.weight(group, name, dset, e, x, quantization, out)
        except ValueError as exc:  # NaN or infinity in the weights: say which
            raise KerasFileError(f"{source.path}: weight {e.path!r}: {exc}") from None
        # inline, not in a helper thread: batch workers each get their share of the cores
        before, after, mse, sqnr = statistics(original, stored)
        bits = None if quantization is None else quantization.bits
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, before, after, bits, mse, sqnr,
                                 source.stored_bytes(e), nbytes)
    return hook


def _override_hook(source: Source, e: Entry, value, recipe: Recipe, out: Datasets):
    """A weight the recipe leaves alone, stored with the given values in its dataset's type."""
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        try:
            x = _given(e, value, dset.dtype)
        except ValueError as exc:
            raise KerasFileError(f"{source.path}: {exc}") from None
        out.new(group, name, x, recipe.compress, like=dset)
    return hook


def _restore_hook(source: Source, e: Entry, out: Datasets, rows: dict):
    """A packed weight the recipe leaves alone: written back dequantized."""
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        record = source.packed.tensors[e.path]
        x = source.packed.read(e.path)
        written = out.new(group, name, x, record.get("compress", "none"), like=dset)
        sp = sparsity(x)
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, sp, sp, record["bits"], None, None,
                                 source.stored_bytes(e), int(written.id.get_storage_size()))
    return hook


def _copy_hook(dset: h5py.Dataset, out: Datasets):
    """A placeholder of a packed source whose data the container keeps aside: copy that data."""
    def hook(group: h5py.Group, name: str, _placeholder: h5py.Dataset) -> None:
        out.copy(group, name, dset)
    return hook
