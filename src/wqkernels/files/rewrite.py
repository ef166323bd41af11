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

import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Mapping

import h5py
import numpy as np

from .._text import listing
from ..progress import progress_bar
from ..statistics import histogram, sparsity
from . import atomic, sharded
from .buffers import Buffers
from .dtypes import BFLOAT16, dtype_name, is_float, new_float, stored_values
from .errors import KerasFileError, as_file_errors
from .graph import corrections
from .h5tree import Datasets, ancestors, copy_attrs, copy_tree, replaceable
from .keras_native import KerasWriter
from .layouts import CONFIG_MEMBER, KERAS_MEMBER, Entry, check_output_name, container, file_path
from .packed import PackedWriter
from .plan import plan, planned_reads, skipped, strips_compile_config
from .recipe import Recipe
from .report import HISTOGRAM_BINS, Histogram, Report, WeightInfo, WeightRow
from .sharded import Shards
from .source import Source
from .transform import Grid, prepare, statistics
from .writers import FloatWriter, Writer

__all__ = ["inspect", "load_weights", "rewrite", "restore"]

#: the writer of each storage
WRITERS = {"float32": FloatWriter, "float16": FloatWriter, "packed": PackedWriter, "keras": KerasWriter}


# ---- reading ----------------------------------------------------------------------------------

def inspect(path, *, histograms: bool = False) -> list[WeightInfo]:
    """List the weight datasets of a Keras file with their roles.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        A legacy ``.h5``, a Keras 3 ``.weights.h5``, a ``.keras`` archive or a packed file
        (detected from the content, not the name).
    histograms : bool
        Also count the values of each float weight (optimizer state excepted) in
        :data:`~.report.HISTOGRAM_BINS` equal bins from its smallest to its largest value.

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
    with _open(path) as opened, as_file_errors(path):
        for src in getattr(opened, "sources", [opened]):
            packed = src.packed.tensors if src.packed is not None else {}
            for e in src.entries:
                data = src.values(e)
                is_float = data.dtype.kind == "f"
                zeros = sparsity(data) if is_float else 0.0
                storage = f"packed:{packed[e.path]['bits']}" if e.path in packed else "dataset"
                if e.path in src.quantized:
                    storage = src.quantized[e.path].storage
                counts = None
                if histograms and is_float and data.size and e.role != "optimizer":
                    counts = Histogram.of(*histogram(data, HISTOGRAM_BINS))
                out.append(WeightInfo(e.path, e.layer_name, e.layer_class, e.role, e.prunable, e.shape, e.dtype,
                                      src.stored_bytes(e), zeros, e.role_source, storage, counts))
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
    path = file_path(path)
    with _open(path) as src, as_file_errors(path):
        return {e.path: src.values(e) for e in src.entries}


# ---- writing ----------------------------------------------------------------------------------

def rewrite(src, dst, recipe: Recipe | None = None, *, in_place: bool = False,
            progress: bool = False, histograms: bool = False, weights: Mapping | None = None,
            grids: Mapping | None = None, max_shard_size=None) -> Report:
    """Prune and/or quantize the kernels of a Keras file and write the result to `dst`.

    Parameters
    ----------
    src, dst : str, bytes or os.PathLike
        Source file (any supported layout) and destination (same layout, or packed).
    recipe : Recipe, optional
        What to do; the default Recipe() copies the file.
    in_place : bool
        Allow `dst` to be `src` (still written to a temporary file and renamed).
    progress : bool
        Draw a progress bar by bytes on stderr when it is a terminal (tqdm if installed).
    histograms : bool
        Count each rewritten weight's values before and after in :data:`~.report.HISTOGRAM_BINS`
        equal bins (in the statistics pass: the weights are not read again), for the report's
        page.  It costs a few nanoseconds per value: off by default.
    weights : mapping, optional
        Weight path (as :func:`inspect` lists it) -> values to start from instead of the file's
        (anything ``np.asarray`` converts, read when the weight is written).  The recipe still
        applies to the weights it selects; others are stored as given, in their dataset's type.
        Given weights or grids (a calibration's) turn the recipe's `bn_correction` off.
    grids : mapping, optional
        Weight path -> :class:`~wqkernels.files.transform.Grid`: the bits, scale and zero point
        to quantize that weight with (no search), e.g. a calibration's.
    max_shard_size : float or str, optional
        Write `dst` as a sharded index (``.weights.json``) whose shards hold at most this many
        bytes of variables each, dealt out in order: a number is Keras's ``max_shard_size`` (GB
        of 1024**3 bytes), a string may give a unit (``"500MB"``, ``"2GiB"``).  For a sharded
        source (which otherwise keeps one output shard per source shard) or a Keras 3
        ``.weights.h5``; not with ``storage="packed"``.

    Returns
    -------
    Report
        One row per prunable weight and the totals; with `histograms`, each rewritten weight's
        row holds its :class:`~.report.Histogram`.

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
    max_bytes = None if max_shard_size is None else sharded.shard_bytes(max_shard_size)
    if max_bytes is not None and recipe.storage == "packed":
        raise ValueError("max_shard_size: packed files keep the source's shards; give another storage, or no "
                         "max_shard_size")
    return _write(src, dst, recipe, in_place, restoring=False, progress=progress,
                  bins=HISTOGRAM_BINS if histograms else 0, overrides=(dict(weights or {}), dict(grids or {})),
                  max_bytes=max_bytes)


def restore(src, dst, *, in_place: bool = False, progress: bool = False) -> Report:
    """Write a packed file back as a plain Keras file that stock Keras loads.

    Each restored dataset is bit-identical to the ``storage="float32"`` rewrite with the same
    recipe; everything else is copied as it was.  `in_place` and `progress` are those of
    :func:`rewrite`.

    Examples
    --------
    >>> import wqkernels
    >>> recipe = wqkernels.Recipe(bits=4, storage="packed", strip_optimizer=True)
    >>> wqkernels.rewrite("model.keras", "small.keras", recipe)  # doctest: +SKIP
    >>> wqkernels.restore("small.keras", "model-int4.keras")  # doctest: +SKIP
    """
    return _write(src, dst, Recipe(), in_place, restoring=True, progress=progress, bins=0)


def _write(src, dst, recipe: Recipe, in_place: bool, restoring: bool, progress: bool, bins: int,
           overrides=({}, {}), max_bytes: int | None = None) -> Report:
    start = time.perf_counter()
    src, dst = file_path(src, "src"), file_path(dst, "dst")
    if sharded.is_index(src):
        if any(overrides):
            raise ValueError(f"weights, grids: given for {src}, a sharded index; rewrite its shards' model instead")
        return _write_sharded(src, dst, recipe, in_place, restoring, start, bins, max_bytes)
    container(src)  # missing, directory or not a Keras file: fail before creating anything
    if max_bytes is None and dst.endswith(sharded.INDEX_SUFFIX):
        raise KerasFileError(f"{dst}: a sharded index; give max_shard_size (--max-shard-size) to split {src} into "
                             f"shards")
    if max_bytes is not None:
        return _write_split(src, dst, recipe, in_place, start, bins, overrides, max_bytes)
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
            _refuse_requantizing(source, recipe)
            report = Report(src, dst, source.description, recipe.to_dict(), role_source=source.role_source,
                            size_before=os.path.getsize(src))
            bar = _Progress(source, recipe, progress)
            try:
                if source.kind == "zip":
                    _write_zip(source, tmp, recipe, report, dst_dir, bar, bins, overrides)
                else:
                    _write_weights(source, tmp, recipe, report, bar, bins, overrides=overrides)
            finally:
                bar.close()
    report.size_after = os.path.getsize(dst)
    report.seconds = time.perf_counter() - start
    return report


def _write_sharded(src: str, dst: str, recipe: Recipe, in_place: bool, restoring: bool, start: float,
                   bins: int, max_bytes: int | None = None) -> Report:
    """A sharded index and its shards: one plan over all shards, one output shard per source
    shard (or, given `max_bytes`, shards of at most that many bytes of variables), everything
    renamed into place once complete (the index last), then the shards an index already at
    `dst` named that the new one does not removed."""
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise KerasFileError(f"{dst}: is a directory")
    with Shards(src, tmp_dir=dst_dir) as shards, as_file_errors(src):
        dropped = frozenset().union(*(skipped(s, recipe) for s in shards.sources))
        # a shard that held nothing but what the rewrite leaves out (Keras puts optimizer variables
        # in shards of their own) is not written: an empty shard is no Keras weights file
        kept = [(n, s) for n, s in zip(shards.names, shards.sources) if not set(s.root) <= dropped]
        kept = kept or [(shards.names[0], shards.sources[0])]
        names = sharded.output_names(dst, len(kept))
        finals = [os.path.join(dst_dir, n) for n in names] + [dst]
        if not in_place and (any(atomic.same_file(s.path, f) for s in shards.sources for f in finals)
                             or atomic.same_file(src, dst)
                             or max_bytes is not None and any(sharded.is_output_shard(dst, s.path)
                                                              for s in shards.sources)):
            raise KerasFileError(f"{dst}: would overwrite the source's shards; give in_place=True (--in-place)")
        if restoring and any(s.packed is None for s in shards.sources):
            raise KerasFileError(f"{src}: not a packed file; nothing to restore")
        _refuse_requantizing(shards, recipe)
        report = Report(src, dst, shards.description, recipe.to_dict(), role_source=shards.role_source,
                        size_before=shards.size())
        buffers = Buffers()
        work = plan(shards, recipe, buffers)
        keep = () if atomic.same_file(src, dst) else tuple(s.path for s in shards.sources)
        if max_bytes is not None:
            finals, writers = _resharded(dst, shards.sources, recipe, report, bins, max_bytes, keep, work, buffers)
        else:
            with sharded.written_shards(dst, names, keep) as (temps, write_index):
                writers = [_write_weights(source, tmp, recipe, report, _Progress(source, recipe, False), bins, work,
                                          buffers) for (_, source), tmp in zip(kept, temps)]
                renames = {name: out for (name, _), out in zip(kept, names)}
                write_index(sharded.output_index(shards.index, renames, sharded.variables_bytes(temps), dropped))
        report.notes = _shard_notes(work.notes + report.notes, writers)
    report.size_after = sum(os.path.getsize(f) for f in finals)
    report.seconds = time.perf_counter() - start
    return report


def _write_split(src: str, dst: str, recipe: Recipe, in_place: bool, start: float, bins: int, overrides,
                 max_bytes: int) -> Report:
    """A Keras 3 .weights.h5 rewritten as a sharded index and shards of at most `max_bytes`
    bytes of variables each (:func:`_resharded`)."""
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise KerasFileError(f"{dst}: is a directory")
    with Source(src, tmp_dir=dst_dir) as source, as_file_errors(src, output=dst):
        if source.kind != "hdf5" or source.layout != "keras3" or source.packed is not None:
            raise KerasFileError(f"{src}: max_shard_size splits Keras 3 weights (a .weights.h5 or a sharded "
                                 f".weights.json), not {source.description}")
        sharded.output_names(dst, 1)  # a destination named as an index
        if not in_place and sharded.is_output_shard(dst, src):
            raise KerasFileError(f"{dst}: would overwrite the source; give in_place=True (--in-place)")
        _refuse_requantizing(source, recipe)
        report = Report(src, dst, source.description, recipe.to_dict(), role_source=source.role_source,
                        size_before=os.path.getsize(src))
        finals, _ = _resharded(dst, [source], recipe, report, bins, max_bytes, (src,), overrides=overrides)
    report.size_after = sum(os.path.getsize(f) for f in finals)
    report.seconds = time.perf_counter() - start
    return report


def _resharded(dst: str, sources: list, recipe: Recipe, report: Report, bins: int, max_bytes: int, keep: tuple,
               work=None, buffers: Buffers | None = None, overrides=({}, {})) -> tuple[list[str], list[Writer]]:
    """The `sources` rewritten, each into a scratch file (with `work`, the plan of them all, or
    each planned on its own), then dealt out into the shards of the index `dst`, of at most
    `max_bytes` bytes of variables each (:class:`~.sharded.Reshard`), renamed into place once
    complete (the index last; the old index's surplus shards then removed, but those in `keep`).
    Returns the paths written and the writers."""
    dst_dir = os.path.dirname(os.path.abspath(dst))
    parts = [atomic.scratch_file(dst_dir) for _ in sources]
    try:
        writers = [_write_weights(source, part, recipe, report, _Progress(source, recipe, False), bins, work, buffers,
                                  overrides) for source, part in zip(sources, parts)]
        shards = sharded.Reshard(parts, max_bytes, dst)
        names = sharded.output_names(dst, shards.count)
        with sharded.written_shards(dst, names, keep) as (temps, write_index):
            write_index(sharded.resharded_index(names, weight_map=shards.write(temps), total_size=shards.total))
    finally:
        for part in parts:
            atomic.remove(part)
    return [os.path.join(dst_dir, n) for n in names] + [dst], writers


def _shard_notes(notes: list, writers: list) -> list:
    """A sharded rewrite's notes, each said once: what each shard's Keras-native writer noted
    of its shard, said once of all of them where the first of those notes was."""
    if len(writers) > 1 and isinstance(writers[0], KerasWriter):
        own = {n for w in writers for n in w.notes()}
        merged = writers[0].notes(writers[1:])
        first = next(i for i, n in enumerate(notes) if n in own)
        notes = [n for n in notes[:first] if n not in own] + merged + [n for n in notes[first:] if n not in own]
    return list(dict.fromkeys(notes))


def _refuse_requantizing(source: Source, recipe: Recipe) -> None:
    """Kernels Keras quantized are not quantized again (their float values are gone, and a
    second rounding adds to the first): such a file is only copied."""
    if source.quantized and (recipe.prunes or recipe.quantizes or recipe.storage != "float32"):
        q = next(iter(source.quantized.values()))
        path = next(iter(source.quantized))
        raise KerasFileError(f"{source.path}: {len(source.quantized)} kernel(s) already quantized by Keras ({path!r}: "
                             f"{q.mode}); rewrite the float model instead")


def _write_zip(source: Source, tmp: str, recipe: Recipe, report: Report, dst_dir: str,
               bar: _Progress, bins: int, overrides) -> None:
    """A .keras archive: every member copied in order with its compression, the weights rewritten."""
    weights = atomic.scratch_file(dst_dir)
    try:
        replaced = _write_weights(source, weights, recipe, report, bar, bins, overrides=overrides).members()
        if strips_compile_config(source, recipe):
            config = json.loads(replaced[CONFIG_MEMBER]) if CONFIG_MEMBER in replaced else dict(source.config)
            config.pop("compile_config", None)
            replaced[CONFIG_MEMBER] = json.dumps(config).encode()
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
                if info.filename != KERAS_MEMBER:  # the weights were counted one by one
                    bar.advance(info.file_size)
            out.comment = source.zip.comment
    finally:
        atomic.remove(weights)


#: data-free sparsity from which the rewrite points to calibration on synthetic samples (at 0.9
#: the digits CNNs lose 2-11 points without it and 0.4-2.5 with it; benchmarks/CALIBRATION.md)
HIGH_SPARSITY = 0.8


def _write_weights(source: Source, tmp: str, recipe: Recipe, report: Report, bar: _Progress, bins: int,
                   work=None, buffers: Buffers | None = None, overrides=({}, {})) -> Writer:
    """The weights HDF5 file: everything copied, the planned weights transformed (with histograms
    in `bins` bins unless 0; `work`: the plan of all shards, for one shard; `overrides`: the given
    weights and grids of :func:`rewrite`); returns the writer (which may replace other members of
    a .keras archive)."""
    buffers = Buffers() if buffers is None else buffers
    writer = WRITERS[recipe.storage](recipe, source.layout)
    writer.start(source, report)
    if work is None:
        work = plan(source, recipe, buffers, bar.advance)  # reads one tensor at a time, before anything is written
        report.notes.extend(work.notes)
    given, grids = overrides
    if not given and not grids:  # (a calibration's weights are corrected by its own data)
        given, corrected = corrections(source, recipe, work.counts, work.selected, buffers)
        if corrected:
            report.notes.append("BatchNorm statistics corrected the pruned outputs of " + listing(corrected))
            if isinstance(recipe.sparsity, float) and recipe.sparsity >= HIGH_SPARSITY and source.config is not None:
                report.notes.append(f"sparsity {recipe.sparsity:g} without data costs small networks several points "
                                    f"of accuracy: --calibration synthetic (wqkernels[keras]) calibrates on samples "
                                    f"made from the BatchNorm statistics, and recovers most of them")
    weights, grids = _checked_overrides(source, recipe, work.selected, given, grids)
    rows = {}
    with writer.open(tmp) as f:
        hooks, overwritten = {}, {}
        for e in work.selected:
            _, given = weights.pop(e.path, (e, None))
            overwrite = writer.overwrites(e, source.members.get(e.path)) if source.packed is None else False
            (overwritten if overwrite else hooks)[e.path] = _rewrite_hook(
                source, e, recipe, work.counts, writer, rows, buffers, bins, given, grids.get(e.path), overwrite)
        hooks.update({e.path: _override_hook(source, e, value, recipe, writer) for e, value in weights.values()})
        restored = {}
        if source.packed is not None:  # placeholders of a packed source not rewritten
            for e in source.entries:
                if source.is_packed(e) and e.path not in hooks:
                    restored[e.path] = _restore_hook(source, e, writer, rows)
            for path in source.packed.datasets:
                if path not in hooks:
                    hooks[path] = _copy_hook(source.packed.dataset(path), writer)
        replaced = replaceable(source.root, source.members, restored)
        hooks.update((path, hook) for path, hook in restored.items() if path not in replaced)
        copy_attrs(source.root, f)
        # (an overwritten or replaced weight is counted on the progress bar with the subtree copied around it)
        copy_tree(source.root, f, source.members, bar.counting(hooks), work.skip, _Counted(writer, bar), overwritten,
                  {path: restored[path] for path in replaced})
    for e in source.entries:
        if e.prunable:
            report.rows.append(rows.get(e.path) or _untouched_row(source, e))
    return writer


def _untouched_row(source: Source, e: Entry) -> WeightRow:
    sp = sparsity(source.read(e))
    nbytes = source.stored_bytes(e)
    return WeightRow(e.path, e.role, e.shape, False, sp, sp, None, None, None, nbytes, nbytes,
                     e.dtype, e.layer_name, e.layer_class)


def _checked_overrides(source: Source, recipe: Recipe, selected: list, weights: dict, grids: dict):
    """The given weights as {path: (entry, value)} and grids, checked against the file and recipe."""
    entries = {e.path: e for e in source.entries}
    for path in weights:
        e = entries.get(path)
        if e is None or not is_float(e.dtype):
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
                  buffers: Buffers, bins: int, given=None, grid: Grid | None = None, overwrite: bool = False):
    """The hook of a weight the recipe rewrites; with `overwrite`, the hook of copy_tree's
    `overwrite`, given the dataset's exact copy in the output (:meth:`Writer.overwrites`)."""
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        original = source.read(e, buffers, dset.id if source.packed is None else None)
        try:
            start = original if given is None else _given(e, given)
            x, quantization, out = prepare(start, e, recipe, counts, buffers, release=writer.holds_codes, grid=grid)
            # histograms need the values; else a writer may measure them as it makes them
            if overwrite:
                stored, nbytes = writer.overwrite(dset, e, x, quantization, out, None if bins else original)
            else:
                stored, nbytes = writer.weight(group, name, dset, e, x, quantization, out, None if bins else original)
            # inline, not in a helper thread: batch workers each get their share of the cores
            before, after, mse, sqnr, histograms = statistics(original, stored, bins)
        except ValueError as exc:  # NaN or infinity in the weights: say which
            raise KerasFileError(f"{source.path}: weight {e.path!r}: {exc}") from None
        bits = None if quantization is None else quantization.bits
        stored = writer.stored_dtype(e)
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, before, after, bits, mse, sqnr,
                                 source.stored_bytes(e), nbytes, e.dtype if stored == e.dtype else f"{e.dtype}->{stored}",
                                 e.layer_name, e.layer_class, histograms)
    return hook


def _override_hook(source: Source, e: Entry, value, recipe: Recipe, out: Datasets):
    """A weight the recipe leaves alone, stored with the given values in its dataset's type."""
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        bfloat16 = dtype_name(dset) == BFLOAT16  # (opaque bytes: given as float32, rounded)
        try:
            x = _given(e, value, np.float32 if bfloat16 else dset.dtype)
        except ValueError as exc:
            raise KerasFileError(f"{source.path}: {exc}") from None
        if bfloat16:
            new_float(out, group, name, stored_values(x, BFLOAT16, x), BFLOAT16, recipe.compress, like=dset)
        else:
            out.new(group, name, x, recipe.compress, like=dset)
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
                                 source.stored_bytes(e), int(written.id.get_storage_size()), f"codes->{dtype}",
                                 e.layer_name, e.layer_class)
    return hook


def _copy_hook(dset: h5py.Dataset, out: Datasets):
    """A placeholder of a packed source whose data the container keeps aside: copy that data."""
    def hook(group: h5py.Group, name: str, _placeholder: h5py.Dataset) -> None:
        out.copy(group, name, dset)
    return hook


# ---- progress ---------------------------------------------------------------------------------

class _Progress:
    """A rewrite's progress bar over the stored bytes it reads: the pruning plan's reads, then
    each weight as it is written or copied, then the other members of a .keras archive."""

    def __init__(self, source: Source, recipe: Recipe, enabled: bool):
        self.sizes = {e.path: source.stored_bytes(e) for e in source.entries} if enabled else {}
        self._below = {}  # group path -> the stored bytes of the weights below it
        for path, n in self.sizes.items():
            for group in ancestors((path,)):
                self._below[group] = self._below.get(group, 0) + n
        skip = skipped(source, recipe)
        total = sum(n for path, n in self.sizes.items() if not any(path.startswith(p + "/") for p in skip))
        if enabled:
            total += planned_reads(source, recipe)
            if source.kind == "zip":
                total += sum(i.file_size for i in source.zip.infolist() if i.filename != KERAS_MEMBER)
        self.bar = progress_bar(None, total, enabled=enabled, label=os.path.basename(source.path))
        self.advance = self.bar.advance

    def weight(self, path: str) -> None:
        """The weight at `path` is written."""
        self.advance(self.sizes.get(path, 0))

    def subtree(self, path: str) -> None:
        """The object at `path` is copied with everything below it."""
        self.advance(self.sizes.get(path, 0) + self._below.get(path, 0))

    def counting(self, hooks: dict) -> dict:
        """`hooks`, each counting its weight once it has run."""
        def counted(path, hook):
            def run(group, name, dset):
                hook(group, name, dset)
                self.weight(path)
            return run
        return {path: counted(path, hook) for path, hook in hooks.items()} if self.sizes else hooks

    def close(self) -> None:
        self.bar.close()


class _Counted(Datasets):
    """A writer whose copies of untouched datasets count on a rewrite's progress bar."""

    def __init__(self, writer: Writer, bar: _Progress):
        self.writer, self.bar = writer, bar

    def copy(self, group: h5py.Group, name: str, dset: h5py.Dataset) -> h5py.Dataset:
        out = self.writer.copy(group, name, dset)
        self.bar.weight(dset.name.lstrip("/"))
        return out

    def new(self, *args, **kwargs) -> h5py.Dataset:
        return self.writer.new(*args, **kwargs)

    def keeps(self, info) -> bool:
        return self.writer.keeps(info)

    def copy_whole(self, src, dst, name: bytes, path: str) -> None:
        self.writer.copy_whole(src, dst, name, path)
        self.bar.subtree(path)
