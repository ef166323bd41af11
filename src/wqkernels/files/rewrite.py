"""inspect, load_weights, rewrite and restore Keras weight files with numpy and h5py only.

Every function opens its source read-only.  `rewrite` and `restore` write a temporary file beside
the destination and rename it into place only once it is complete; whatever goes wrong
(including KeyboardInterrupt) the temporary file is removed and the source is untouched.  They
keep no global state, so a call can run in another process (issue 6's batch rewriting).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import secrets
import shutil
import tempfile
import time
import zipfile
import zlib

import h5py
import numpy as np

from ..quantization import fake_quantize, quantize
from . import _kernels
from .h5tree import Datasets, KerasFileError, copy_attrs, copy_tree, placeholder
from .layouts import (KERAS_MEMBER, Entry, container, entries, model_config, read_zip_config,
                      weights_layout)
from .packed import PackedReader, PackedWriter
from .recipe import Recipe
from .report import Report, WeightInfo, WeightRow

__all__ = ["inspect", "load_weights", "rewrite", "restore"]

#: a .keras member may expand to at most this many times its compressed size (plus 64 MiB)
MAX_ZIP_RATIO = 1000
_FILE_ERRORS = (OSError, KeyError, RuntimeError, zlib.error, zipfile.BadZipFile, EOFError)


@contextlib.contextmanager
def _as_file_errors(where: str):
    """Errors from h5py, zipfile and the OS become one-line KerasFileErrors naming the file."""
    try:
        yield
    except (KerasFileError, NotImplementedError):
        raise
    except _FILE_ERRORS as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror and not text.startswith("Unable"):
            text = exc.strerror
        raise KerasFileError(f"{where}: cannot read or write as a Keras file ({text})") from None


class Source:
    """An open Keras file: its weights HDF5 file, layout, config and entries (a context manager)."""

    def __init__(self, path, tmp_dir: str | None = None):
        self.path = os.fspath(path)
        self.tmp_dir = tmp_dir
        self.kind = container(self.path)
        self.zip = None
        self.h5 = None
        self.packed = None
        self._tmp = None

    def __enter__(self) -> Source:
        try:
            with _as_file_errors(self.path):
                self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        where = self.path
        zip_config = None
        h5_path = self.path
        if self.kind == "zip":
            try:
                self.zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise KerasFileError(f"{where}: corrupt zip archive ({exc})") from None
            names = self.zip.namelist()
            if KERAS_MEMBER not in names:
                raise KerasFileError(f"{where}: a zip archive, but not a .keras file (no {KERAS_MEMBER})")
            zip_config = read_zip_config(self.zip, where)
            info = self.zip.getinfo(KERAS_MEMBER)
            if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) + (64 << 20):
                raise KerasFileError(f"{where}: {KERAS_MEMBER} declares {info.file_size} bytes from "
                                     f"{info.compress_size}; refused")
            fd, self._tmp = tempfile.mkstemp(prefix=".wqkernels-", suffix=".weights.h5", dir=self.tmp_dir)
            with os.fdopen(fd, "wb") as out, self.zip.open(info) as member:
                shutil.copyfileobj(member, out, 1 << 20)
            h5_path = self._tmp
        try:
            self.h5 = h5py.File(h5_path, "r")
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "unreadable"
            raise KerasFileError(f"{where}: not a readable HDF5 file, truncated or corrupt ({first})") from None
        layout = weights_layout(self.h5, where)
        self.root = self.h5
        exempt = frozenset()
        if layout == "packed":
            self.packed = PackedReader(self.h5, where)
            self.root = self.packed.skeleton
            layout = self.packed.layout
            exempt = frozenset(self.packed.tensors) | frozenset(self.packed.datasets)
        self.layout = layout
        self.config = model_config(self.root, zip_config)
        self.entries = entries(self.root, layout, self.config, where, exempt)

    @property
    def role_source(self) -> str:
        """Where the layer classes came from: ``config``, ``names`` (guessed), ``shapes``, or a mix."""
        sources = {e.role_source for e in self.entries if e.role not in ("optimizer", "variable")}
        if sources <= {"config"}:
            return "config"
        if self.config is None:
            text = "names (no model config)"
        else:
            text = "config, some guessed from names" if "config" in sources else "names (config not usable)"
        return text + (", shapes where no name says" if "shape" in sources else "")

    @property
    def description(self) -> str:
        text = self.layout + (" in a .keras archive" if self.kind == "zip" else "")
        return text + (" (packed)" if self.packed is not None else "")

    def read(self, entry: Entry, buffers: "Buffers | None" = None) -> np.ndarray:
        """The weight as stored (packed tensors dequantized to float32); a float32 weight is read
        into ``buffers`` when given (valid until the next read into them)."""
        if self.packed is not None and entry.path in self.packed.tensors:
            return self.packed.read(entry.path)
        dset = self.dataset(entry.path)
        if buffers is None or dset.dtype != np.float32 or dset.size == 0:
            return dset[()]
        out = buffers.get("read", dset.shape)
        dset.read_direct(out)
        return out

    def stored_bytes(self, entry: Entry) -> int:
        if self.packed is not None and entry.path in self.packed.tensors:
            return self.packed.stored_bytes(entry.path)
        return int(self.dataset(entry.path).id.get_storage_size())

    def dataset(self, path: str) -> h5py.Dataset:
        """The dataset holding the data of `path` (of a packed file: its own, not the placeholder)."""
        return self.root[path] if self.packed is None else self.packed.dataset(path)

    def close(self) -> None:
        for closer in (self.packed, self.h5, self.zip):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self.packed = self.h5 = self.zip = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


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
    with Source(path) as src, _as_file_errors(path):
        packed = src.packed.tensors if src.packed is not None else {}
        for e in src.entries:
            data = src.read(e)
            sparsity = _kernels.sparsity(data) if data.dtype.kind == "f" else 0.0
            storage = f"packed:{packed[e.path]['bits']}" if e.path in packed else "dataset"
            out.append(WeightInfo(e.path, e.layer, e.layer_class, e.role, e.prunable, e.shape, e.dtype,
                                  src.stored_bytes(e), sparsity, e.role_source, storage))
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
    with Source(path) as src, _as_file_errors(path):
        return {e.path: src.read(e) for e in src.entries}


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
    container(src)  # missing, directory or not a Keras file: fail before creating anything
    if _same_file(src, dst) and not in_place:
        raise KerasFileError(f"{dst}: is the source file; give in_place=True (--in-place) to overwrite it")
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst):
        raise KerasFileError(f"{dst}: is a directory")
    tmp = _temp_beside(dst, dst_dir)
    try:
        with Source(src, tmp_dir=dst_dir) as source, _as_file_errors(src):
            if restoring and source.packed is None:
                raise KerasFileError(f"{src}: not a packed file; nothing to restore")
            report = Report(src, dst, source.description, recipe.to_dict(), role_source=source.role_source,
                            size_before=os.path.getsize(src))
            if source.kind == "zip":
                _write_zip(source, tmp, recipe, report, dst_dir)
            else:
                _write_weights(source, tmp, recipe, report)
        if os.path.exists(dst):  # overwriting: keep the permissions the file had, and make sure the
            os.chmod(tmp, os.stat(dst).st_mode & 0o7777)  # new data is on disk before the old is gone
            _sync(tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    report.size_after = os.path.getsize(dst)
    report.seconds = time.perf_counter() - start
    return report


def _sync(path: str) -> None:
    """fsync a file: a crash right after it replaces another cannot leave an empty file.  Only
    for replacements (a new file costs nothing if lost: the source is untouched), since it can
    take longer than the rewrite itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(dst: str, dst_dir: str) -> str:
    """Create an empty temporary file next to `dst` (mode 0666 less the umask, like open())."""
    base = os.path.basename(dst)
    for _ in range(100):
        path = os.path.join(dst_dir, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise KerasFileError(f"{dst}: cannot write there ({exc.strerror or exc})") from None
    raise KerasFileError(f"{dst}: cannot create a temporary file beside it")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _write_zip(source: Source, tmp: str, recipe: Recipe, report: Report, dst_dir: str) -> None:
    """A .keras archive: every member copied in order with its compression, the weights rewritten."""
    fd, weights = tempfile.mkstemp(prefix=".wqkernels-", suffix=".weights.h5", dir=dst_dir)
    os.close(fd)
    try:
        _write_weights(source, weights, recipe, report)
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as out:
            for info in source.zip.infolist():
                new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new.compress_type, new.external_attr = info.compress_type, info.external_attr
                new.comment, new.extra, new.create_system = info.comment, info.extra, info.create_system
                if info.filename == KERAS_MEMBER:
                    with open(weights, "rb") as data, out.open(new, "w", force_zip64=True) as member:
                        shutil.copyfileobj(data, member, 1 << 20)
                else:
                    with source.zip.open(info) as data, out.open(new, "w", force_zip64=True) as member:
                        shutil.copyfileobj(data, member, 1 << 20)
            out.comment = source.zip.comment
    finally:
        with contextlib.suppress(OSError):
            os.unlink(weights)


def _write_weights(source: Source, tmp: str, recipe: Recipe, report: Report) -> None:
    """The weights HDF5 file: everything copied, the selected kernels transformed."""
    selected = [e for e in source.entries if recipe.selects(e)]
    changes = recipe.prunes or recipe.quantizes or recipe.storage != "float32" or recipe.compress != "none"
    if not changes:
        selected = []
    buffers = Buffers()
    counts = {}
    if recipe.prunes and selected:  # read one tensor at a time, before anything is written
        candidates = [e for e in source.entries if recipe.selects(e, by_size=False)]
        counts = _kernels.prune_counts(lambda e: source.read(e, buffers), candidates, recipe, report.notes)
    skip = frozenset()
    optimizer = {"keras3": "optimizer", "legacy": "optimizer_weights"}.get(source.layout)
    if recipe.strip_optimizer and optimizer is not None and optimizer in source.root:
        skip = frozenset({optimizer})
        report.notes.append("optimizer state removed")
    if source.role_source != "config":
        report.notes.append(f"roles from {source.role_source}: layer classes guessed from group and "
                            f"dataset names" + ("; float tensors of 2 or more axes in layers no name identifies "
                                                "are taken for kernels, channels last (--exclude keeps them)"
                                                if "shape" in source.role_source else ""))
    rows = {}
    with _weights_file(tmp, recipe, source.layout) as (f, out):
        hooks = {e.path: _transform_hook(source, e, recipe, counts, out, rows, buffers) for e in selected}
        if source.packed is not None:  # placeholders of a packed source not rewritten
            for e in source.entries:
                if e.path in source.packed.tensors and e.path not in hooks:
                    hooks[e.path] = _restore_hook(source, e, out, rows)
            for path, dset in source.packed.datasets.items():
                if path not in hooks:
                    hooks[path] = _copy_hook(dset, out)
        copy_attrs(source.root, f)
        copy_tree(source.root, f, hooks, skip, out)
    for e in source.entries:
        if e.prunable:
            report.rows.append(rows.get(e.path) or _untouched_row(source, e))


@contextlib.contextmanager
def _weights_file(tmp: str, recipe: Recipe, layout: str):
    """(HDF5 file to copy the weights into, where its datasets go): the file at `tmp` itself, or
    for packed storage an in-memory skeleton whose codes and large datasets the PackedWriter
    streams into the container at `tmp`."""
    if recipe.storage != "packed":
        with h5py.File(tmp, "w") as f:
            yield f, Datasets()
        return
    with h5py.File(tmp, "w") as container:
        writer = PackedWriter(container, recipe.compress)
        image = io.BytesIO()
        with h5py.File(image, "w") as skeleton:
            yield skeleton, writer
        writer.finish(image.getbuffer(), layout, recipe.to_dict())


def _untouched_row(source: Source, e: Entry) -> WeightRow:
    data = source.read(e)
    sp = _kernels.sparsity(data)
    nbytes = source.stored_bytes(e)
    return WeightRow(e.path, e.role, e.shape, False, sp, sp, None, None, None, nbytes, nbytes)


class Buffers:
    """float32 work arrays reused from one weight to the next: a fresh large array costs a page
    fault per 4 KiB, more than the kernels take to fill it."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    #: arrays larger than this are dropped by trim(): their page faults cost little beside the
    #: work on them, and the memory matters more
    KEEP_BYTES = 64 << 20

    def trim(self, key: str) -> None:
        """Release the array of `key` if it is large (once its views are gone)."""
        a = self._arrays.get(key)
        if a is not None and a.nbytes > self.KEEP_BYTES:
            del self._arrays[key]

    def get(self, key: str, shape: tuple) -> np.ndarray:
        n = math.prod(shape)
        a = self._arrays.get(key)
        if a is None or a.size < n:
            a = self._arrays[key] = np.empty(max(n, 1), np.float32)
        return a[:n].reshape(shape)


def _transform(x: np.ndarray, e: Entry, recipe: Recipe, counts: dict, buffers: Buffers, codes=None):
    """(values to store for one kernel as float32, its bits, what `codes` returned).

    Pruned values and quantized ones go into the same buffer, in place: beside the original
    weight, a rewrite holds one array of its size.  When packing, ``codes(QuantizedArray)``
    writes the codes out before the dequantized values (for the report) are made, from the same
    scales: the codes and that copy are never held together.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if codes is not None and not recipe.prunes:  # a large buffer is not held beside the codes
        buffers.trim("stored")
    stored = buffers.get("stored", e.shape)
    pruned = _kernels.prune_one(x, e, recipe, counts, out=stored) if recipe.prunes else None
    x = x if pruned is None else pruned
    if not recipe.quantizes:
        return x, None, None
    view, options = recipe.layout_for(e)
    xv, out = x.reshape(view), stored.reshape(view)
    bits = recipe.bits if recipe.bits is not None else _kernels.bits_for_sqnr(xv, recipe, options)
    method = recipe.method_for(bits)
    written = None
    if codes is not None:  # fake_quantize with the codes' scales is, bit for bit, their dequantization
        qa = quantize(xv, bits, method=method, **options)
        written = codes(qa)
        options = dict(options, scale=qa.scale, zero_point=qa.zero_point)
        del qa
    return fake_quantize(xv, bits, method=method, out=out, **options).reshape(e.shape), bits, written


def _half_values(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """x rounded to float16 (as NumPy does), kept as float32 in `out` (which may be x): HDF5
    then writes the float16 dataset from it exactly, and no half-size copy is made."""
    src, dst = x.reshape(-1), out.reshape(-1)
    step = 1 << 20
    for i in range(0, src.size, step):
        dst[i:i + step] = src[i:i + step].astype(np.float16)
    return out


def _statistics(original: np.ndarray, stored: np.ndarray) -> tuple:
    """(sparsity before, sparsity after, mse, SQNR dB) of one rewritten weight, in one pass."""
    stats, before, after = _kernels.compare(original, stored)
    return before, after, float(stats.mse), float(stats.sqnr_db)


def _transform_hook(source: Source, e: Entry, recipe: Recipe, counts: dict, out: Datasets, rows: dict,
                    buffers: Buffers):
    packing = recipe.storage == "packed"

    def codes(qa) -> int:
        return out.add(e.path, e.shape, qa, recipe.compress)

    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        original = source.read(e, buffers)
        try:
            stored, bits, nbytes = _transform(original, e, recipe, counts, buffers, codes if packing else None)
        except ValueError as exc:  # NaN or infinity in the weights: say which
            raise KerasFileError(f"{source.path}: weight {e.path!r}: {exc}") from None
        half = recipe.storage == "float16"
        if half:
            stored = _half_values(stored, buffers.get("stored", e.shape))
        # inline, not in a helper thread: batch workers each get their share of the cores
        stats = _statistics(original, stored)
        if packing:
            placeholder(group, name, e.shape, np.float32, dset)
        else:
            written = out.new(group, name, stored, recipe.compress, like=dset, dtype=np.float16 if half else None)
            nbytes = int(written.id.get_storage_size())
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, *stats[:2], bits, *stats[2:],
                                 source.stored_bytes(e), nbytes)
    return hook


def _restore_hook(source: Source, e: Entry, out: Datasets, rows: dict):
    def hook(group: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        record = source.packed.tensors[e.path]
        x = source.packed.read(e.path)
        written = out.new(group, name, x, record.get("compress", "none"), like=dset)
        sp = _kernels.sparsity(x)
        rows[e.path] = WeightRow(e.path, e.role, e.shape, True, sp, sp, record["bits"], None, None,
                                 source.stored_bytes(e), int(written.id.get_storage_size()))
    return hook


def _copy_hook(dset: h5py.Dataset, out: Datasets):
    """A placeholder of a packed source whose data the container keeps aside: copy that data."""
    def hook(group: h5py.Group, name: str, _placeholder: h5py.Dataset) -> None:
        out.copy(group, name, dset)
    return hook
