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

import os
import shutil
import time
import zipfile

import h5py
import numpy as np

from ..statistics import sparsity
from . import atomic
from .buffers import Buffers
from .errors import KerasFileError, as_file_errors
from .h5tree import Datasets, copy_attrs, copy_tree
from .layouts import KERAS_MEMBER, Entry, check_output_name, container, file_path
from .packed import PackedWriter
from .plan import plan
from .recipe import Recipe
from .report import Report, WeightInfo, WeightRow
from .source import Source
from .transform import prepare, statistics
from .writers import FloatWriter, Writer

__all__ = ["inspect", "load_weights", "rewrite", "restore"]

#: the writer of each storage
WRITERS = {"float32": FloatWriter, "float16": FloatWriter, "packed": PackedWriter}


# ---- reading ----------------------------------------------------------------------------------

def inspect(path) -> list[WeightInfo]:
    """List the weight datasets of a Keras file with their roles.

    Parameters
    ----------
    path : str, bytes or os.PathLike
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
    path = file_path(path)
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
    path = file_path(path)
    with Source(path) as src, as_file_errors(path):
        return {e.path: src.read(e) for e in src.entries}


# ---- writing ----------------------------------------------------------------------------------

def rewrite(src, dst, recipe: Recipe | None = None, *, in_place: bool = False) -> Report:
    """Prune and/or quantize the kernels of a Keras file and write the result to `dst`.

    Parameters
    ----------
    src, dst : str, bytes or os.PathLike
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
    src, dst = file_path(src, "src"), file_path(dst, "dst")
    container(src)  # missing, directory or not a Keras file: fail before creating anything
    if atomic.same_file(src, dst) and not in_place:
        raise KerasFileError(f"{dst}: is the source file; give in_place=True (--in-place) to overwrite it")
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise KerasFileError(f"{dst}: is a directory")
    with atomic.written(dst) as tmp:
        with Source(src, tmp_dir=dst_dir) as source, as_file_errors(src, output=dst):
            if restoring and source.packed is None:
                raise KerasFileError(f"{src}: not a packed file; nothing to restore")
            check_output_name(dst, src, source.kind, source.layout)
            report = Report(src, dst, source.description, recipe.to_dict(), role_source=source.role_source,
                            size_before=os.path.getsize(src))
            if source.kind == "zip":
                _write_zip(source, tmp, recipe, report, dst_dir)
            else:
                _write_weights(source, tmp, recipe, report)
    report.size_after = os.path.getsize(dst)
    report.seconds = time.perf_counter() - start
    return report


def _write_zip(source: Source, tmp: str, recipe: Recipe, report: Report, dst_dir: str) -> None:
    """A .keras archive: every member copied in order with its compression, the weights rewritten."""
    weights = atomic.scratch_file(dst_dir)
    try:
        _write_weights(source, weights, recipe, report)
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
        atomic.remove(weights)


def _write_weights(source: Source, tmp: str, recipe: Recipe, report: Report) -> None:
    """The weights HDF5 file: everything copied, the planned weights transformed."""
    buffers = Buffers()
    work = plan(source, recipe, buffers)  # reads one tensor at a time, before anything is written
    report.notes.extend(work.notes)
    writer = WRITERS[recipe.storage](recipe, source.layout)
    rows = {}
    with writer.open(tmp) as f:
        hooks = {e.path: _rewrite_hook(source, e, recipe, work.counts, writer, rows, buffers)
                 for e in work.selected}
        if source.packed is not None:  # placeholders of a packed source not rewritten
            for e in source.entries:
                if source.is_packed(e) and e.path not in hooks:
                    hooks[e.path] = _restore_hook(source, e, writer, rows)
            for path in source.packed.datasets:
                if path not in hooks:
                    hooks[path] = _copy_hook(source.packed.dataset(path), writer)
        copy_attrs(source.root, f)
        copy_tree(source.root, f, hooks, work.skip, writer)
    for e in source.entries:
        if e.prunable:
            report.rows.append(rows.get(e.path) or _untouched_row(source, e))


def _untouched_row(source: Source, e: Entry) -> WeightRow:
    sp = sparsity(source.read(e))
    nbytes = source.stored_bytes(e)
    return WeightRow(e.path, e.role, e.shape, False, sp, sp, None, None, None, nbytes, nbytes)


def _rewrite_hook(source: Source, e: Entry, recipe: Recipe, counts: dict, writer: Writer, rows: dict,
                  buffers: Buffers):
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        original = source.read(e, buffers)
        try:
            x, quantization, out = prepare(original, e, recipe, counts, buffers, release=writer.holds_codes)
            stored, nbytes = writer.weight(group, name, dset, e, x, quantization, out)
            # inline, not in a helper thread: batch workers each get their share of the cores
            before, after, mse, sqnr = statistics(original, stored)
        except ValueError as exc:  # NaN or infinity in the weights: say which
            raise KerasFileError(f"{source.path}: weight {e.path!r}: {exc}") from None
        bits = None if quantization is None else quantization.bits
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, before, after, bits, mse, sqnr,
                                 source.stored_bytes(e), nbytes)
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
