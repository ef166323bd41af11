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
import io
import json
import os
import shutil
import time
import zipfile

import h5py
import numpy as np

from ..statistics import sparsity
from . import atomic, sharded
from .buffers import Buffers
from .dtypes import dtype_name, new_float, stored_values
from .errors import KerasFileError, as_file_errors
from .h5tree import Datasets, copy_attrs, copy_tree
from .layouts import KERAS_MEMBER, Entry, container
from .keras_native import KerasWriter
from .packed import PackedWriter
from .plan import plan
from .recipe import Recipe
from .report import Report, WeightInfo, WeightRow
from .sharded import Shards
from .source import Source
from .transform import prepare, statistics
from .writers import FloatWriter, Writer

__all__ = ["inspect", "load_weights", "rewrite", "restore"]

#: the writer of each storage
WRITERS = {"float32": FloatWriter, "float16": FloatWriter, "packed": PackedWriter, "keras": KerasWriter}


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
    with _open(path) as opened, as_file_errors(path):
        for src in getattr(opened, "sources", [opened]):
            packed = src.packed.tensors if src.packed is not None else {}
            for e in src.entries:
                data = src.values(e)
                zeros = sparsity(data) if data.dtype.kind == "f" else 0.0
                storage = f"packed:{packed[e.path]['bits']}" if e.path in packed else "dataset"
                if e.path in src.quantized:
                    storage = src.quantized[e.path].storage
                out.append(WeightInfo(e.path, e.layer, e.layer_class, e.role, e.prunable, e.shape, e.dtype,
                                      src.stored_bytes(e), zeros, e.role_source, storage))
    return out


def _open(path: str):
    """The open file: a Source, or the Shards of a sharded index."""
    return Shards(path) if sharded.is_index(path) else Source(path)


def load_weights(path) -> dict[str, np.ndarray]:
    """All weight datasets of a Keras file as arrays, keyed by their path in the weights file.

    Packed files are dequantized: the arrays equal those of the ``storage="float32"`` rewrite;
    kernels Keras quantized (int8, int4) are the float32 kernels their layers compute with, in
    the kernel's own shape; bfloat16 weights are float32.

    Examples
    --------
    >>> import wqkernels
    >>> weights = wqkernels.load_weights("model-int4.keras")  # doctest: +SKIP
    >>> weights["layers/dense/vars/0"].dtype  # doctest: +SKIP
    dtype('float32')
    """
    path = os.fspath(path)
    with _open(path) as src, as_file_errors(path):
        return {e.path: src.values(e) for e in src.entries}


# ---- writing ----------------------------------------------------------------------------------

def rewrite(src, dst, recipe: Recipe | None = None, *, in_place: bool = False) -> Report:
    """Prune and/or quantize the kernels of a Keras file and write the result to `dst`.

    Parameters
    ----------
    src, dst : str or os.PathLike
        Source file (any supported layout) and destination (same layout, or packed).
    recipe : Recipe, optional
        What to do; the default Recipe() copies the file.
    in_place : bool
        Allow `dst` to be `src` (still written to a temporary file and renamed).

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
    return _write(src, dst, recipe, in_place, restoring=False)


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


def _write(src, dst, recipe: Recipe, in_place: bool, restoring: bool) -> Report:
    start = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    if sharded.is_index(src):
        return _write_sharded(src, dst, recipe, in_place, restoring, start)
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
            _refuse_requantizing(source, recipe)
            report = Report(src, dst, source.description, recipe.to_dict(), role_source=source.role_source,
                            size_before=os.path.getsize(src))
            if source.kind == "zip":
                _write_zip(source, tmp, recipe, report, dst_dir)
            else:
                _write_weights(source, tmp, recipe, report)
    report.size_after = os.path.getsize(dst)
    report.seconds = time.perf_counter() - start
    return report


def _write_sharded(src: str, dst: str, recipe: Recipe, in_place: bool, restoring: bool, start: float) -> Report:
    """A sharded index and its shards: one plan over all shards, one output shard per source
    shard, everything renamed into place once complete (the index last)."""
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise KerasFileError(f"{dst}: is a directory")
    with Shards(src, tmp_dir=dst_dir) as shards, as_file_errors(src):
        names = sharded.output_names(dst, len(shards.sources))
        finals = [os.path.join(dst_dir, n) for n in names] + [dst]
        if not in_place and any(atomic.same_file(s.path, f) for s in shards.sources for f in finals) \
                or not in_place and atomic.same_file(src, dst):
            raise KerasFileError(f"{dst}: would overwrite the source's shards; give in_place=True (--in-place)")
        if restoring and any(s.packed is None for s in shards.sources):
            raise KerasFileError(f"{src}: not a packed file; nothing to restore")
        _refuse_requantizing(shards, recipe)
        report = Report(src, dst, shards.description, recipe.to_dict(), role_source=shards.role_source,
                        size_before=shards.size())
        buffers = Buffers()
        work = plan(shards, recipe, buffers)
        with sharded.written_shards(dst, names) as (temps, index_tmp):
            for source, tmp in zip(shards.sources, temps):
                _write_weights(source, tmp, recipe, report, work, buffers)
            total = sum(os.path.getsize(t) for t in temps)
            index = sharded.output_index(shards.index, dict(zip(shards.names, names)), total)
            with open(index_tmp, "w") as f:
                json.dump(index, f, indent=4)
        report.notes = list(dict.fromkeys(work.notes + report.notes))
    report.size_after = sum(os.path.getsize(f) for f in finals)
    report.seconds = time.perf_counter() - start
    return report


def _refuse_requantizing(source: Source, recipe: Recipe) -> None:
    """Kernels Keras quantized are not quantized again (their float values are gone, and a
    second rounding adds to the first): such a file is only copied."""
    if source.quantized and (recipe.prunes or recipe.quantizes or recipe.storage != "float32"):
        q = next(iter(source.quantized.values()))
        path = next(iter(source.quantized))
        raise KerasFileError(f"{source.path}: {len(source.quantized)} kernel(s) already quantized by Keras ({path!r}: "
                             f"{q.mode}); rewrite the float model instead")


def _write_zip(source: Source, tmp: str, recipe: Recipe, report: Report, dst_dir: str) -> None:
    """A .keras archive: every member copied in order with its compression, the weights rewritten."""
    weights = atomic.scratch_file(dst_dir)
    try:
        replaced = _write_weights(source, weights, recipe, report).members()
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as out:
            for info in source.zip.infolist():
                new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new.compress_type, new.external_attr = info.compress_type, info.external_attr
                new.comment, new.extra, new.create_system = info.comment, info.extra, info.create_system
                if info.filename == KERAS_MEMBER:
                    data = open(weights, "rb")
                elif info.filename in replaced:
                    data = io.BytesIO(replaced[info.filename])
                else:
                    data = source.zip.open(info)
                with data, out.open(new, "w", force_zip64=True) as member:
                    shutil.copyfileobj(data, member, 1 << 20)
            out.comment = source.zip.comment
    finally:
        with contextlib.suppress(OSError):
            os.unlink(weights)


def _write_weights(source: Source, tmp: str, recipe: Recipe, report: Report, work=None,
                   buffers: Buffers | None = None) -> Writer:
    """The weights HDF5 file: everything copied, the planned weights transformed (`work`: the
    plan of all shards, for one shard); returns the writer (which may replace other members of
    a .keras archive)."""
    buffers = Buffers() if buffers is None else buffers
    writer = WRITERS[recipe.storage](recipe, source.layout)
    writer.start(source, report)
    if work is None:
        work = plan(source, recipe, buffers)  # reads one tensor at a time, before anything is written
        report.notes.extend(work.notes)
    rows = {}
    with writer.open(tmp) as f:
        hooks = {e.path: _rewrite_hook(source, e, recipe, work.counts, writer, rows, buffers)
                 for e in work.selected}
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
    return writer


def _untouched_row(source: Source, e: Entry) -> WeightRow:
    sp = sparsity(source.read(e))
    nbytes = source.stored_bytes(e)
    return WeightRow(e.path, e.role, e.shape, False, sp, sp, None, None, None, nbytes, nbytes, e.dtype)


def _rewrite_hook(source: Source, e: Entry, recipe: Recipe, counts: dict, writer: Writer, rows: dict,
                  buffers: Buffers):
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        original = source.read(e, buffers)
        try:
            x, quantization, out = prepare(original, e, recipe, counts, buffers, release=writer.holds_codes)
            stored, nbytes = writer.weight(group, name, dset, e, x, quantization, out)
        except ValueError as exc:  # NaN or infinity in the weights: say which
            raise KerasFileError(f"{source.path}: weight {e.path!r}: {exc}") from None
        # inline, not in a helper thread: batch workers each get their share of the cores
        before, after, mse, sqnr = statistics(original, stored)
        bits = None if quantization is None else quantization.bits
        stored = writer.stored_dtype(e)
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, before, after, bits, mse, sqnr,
                                 source.stored_bytes(e), nbytes, e.dtype if stored == e.dtype else f"{e.dtype}->{stored}")
    return hook


def _restore_hook(source: Source, e: Entry, out: Datasets, rows: dict):
    """A packed weight the recipe leaves alone: written back dequantized."""
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        record = source.packed.tensors[e.path]
        x = source.packed.read(e.path)
        dtype = dtype_name(dset) if dset.dtype.kind == "V" else ("float16" if dset.dtype == np.float16 else "float32")
        x = stored_values(x, dtype, x)
        written = new_float(out, group, name, x, dtype, record.get("compress", "none"), like=dset)
        sp = sparsity(x)
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, sp, sp, record["bits"], None, None,
                                 source.stored_bytes(e), int(written.id.get_storage_size()), f"codes->{dtype}")
    return hook


def _copy_hook(dset: h5py.Dataset, out: Datasets):
    """A placeholder of a packed source whose data the container keeps aside: copy that data."""
    def hook(group: h5py.Group, name: str, _placeholder: h5py.Dataset) -> None:
        out.copy(group, name, dset)
    return hook
