"""Sharded Keras 3 weights: ``x.weights.json`` (an index) and ``x_00000.weights.h5``, ... .

Keras 3's ``save_weights("x.weights.json", max_shard_size=...)`` writes each shard as a Keras 3
``.weights.h5`` holding some of the ``vars`` groups (a group may continue in the next shard) and
an index whose ``weight_map`` names, for each ``vars`` group, the shard or shards holding it.

A rewrite plans over all shards together (global pruning ranks every tensor), then writes one
output shard per source shard, each of the storage asked for and no larger than its source: the
same kind of output, loaded by ``model.load_weights("y.weights.json")``.  Given a maximum shard
size (Keras's ``max_shard_size``: the bytes of the variables a shard holds), the rewritten
weights are dealt out anew instead (:class:`Reshard`), in order, into as many shards as that
takes; a Keras 3 ``.weights.h5`` can be split so too.  One shard is open for writing at a time
and tensors are read one at a time.  The shards are written to temporary files first; only when
all are complete are they renamed into place, the index last, so that nothing names an
incomplete output.  An index written over another removes, once it is in place, the shards the
old one named that it does not (:func:`written_shards`).

The renames are not one step: a crash between them leaves the old index with some of its shards
replaced.  Keras opens ``<base>_00000.weights.h5`` by that name whatever the index says, so the
new shards cannot take names of their own; instead every shard written here and its index carry
one random token (a root attribute of each shard, a key of the index's ``metadata``, which
Keras ignores), and :class:`Shards` refuses an index whose shards do not all carry its token
(none for an index Keras wrote): a mix is said in one line, never read as a model.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import secrets
import stat

import h5py
import numpy as np
from h5py import h5o

from . import atomic
from .errors import KerasFileError
from .h5tree import copy_attrs, new_file, new_group
from .layouts import MAX_CONFIG_BYTES, check_indices
from .source import Source

__all__ = ["is_index", "Shards", "shard_names", "INDEX_SUFFIX", "shard_bytes", "Reshard", "written_shards"]

INDEX_SUFFIX = ".weights.json"
_SHARD = re.compile(r"(.+)_(\d{5,})\.weights\.h5")
#: the name of the token of a set of shards written together: a root attribute of each shard
#: and a key of its index's metadata
SET_TOKEN = "wqkernels_shard_set"


def is_index(path) -> bool:
    """Whether `path` is a sharded-weights index (a JSON object with a ``weight_map``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if head not in (b"{", b" ", b"\n", b"\t", b"\r"):
                return False
            f.seek(0)
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return False
    try:
        index = json.loads(text)
    except ValueError:
        return False
    return isinstance(index, dict) and isinstance(index.get("weight_map"), dict)


def read_index(path: str) -> dict:
    with open(path, "rb") as f:
        text = f.read(MAX_CONFIG_BYTES + 1)
    if len(text) > MAX_CONFIG_BYTES:
        raise KerasFileError(f"{path}: sharded index larger than {MAX_CONFIG_BYTES} bytes; refused")
    try:
        index = json.loads(text)
    except ValueError as exc:
        raise KerasFileError(f"{path}: not a sharded weights index ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise KerasFileError(f"{path}: not a sharded weights index (no weight_map)")
    return index


def _listed(index: dict):
    """Every name the weight map of an index gives (each value a name or a list of names)."""
    for value in index["weight_map"].values():
        yield from value if isinstance(value, list) else [value]


def _beside(name) -> bool:
    """Whether an index's `name` is a file in the index's own directory."""
    return isinstance(name, str) and os.path.basename(name) == name and name not in ("", ".", "..")


def shard_names(path: str, index: dict) -> list[str]:
    """The shard files of an index, in order: every file the weight map names, and the first
    shard (which holds the groups without variables) when it exists."""
    names = set()
    for name in _listed(index):
        if not _beside(name):
            raise KerasFileError(f"{path}: sharded index names {name!r}, not a file beside it; refused")
        names.add(name)
    base = os.path.basename(path)[:-len(INDEX_SUFFIX)] if path.endswith(INDEX_SUFFIX) else None
    first = f"{base}_00000.weights.h5" if base else None
    directory = os.path.dirname(os.path.abspath(path))
    if first and os.path.isfile(os.path.join(directory, first)):
        names.add(first)
    if not names:
        raise KerasFileError(f"{path}: sharded index names no shard")
    for name in names:
        shard = os.path.join(directory, name)
        if not os.path.isfile(shard):
            what = "is not a regular file" if os.path.exists(shard) else "is missing"
            raise KerasFileError(f"{path}: shard {name!r} {what}")

    def order(name):
        m = _SHARD.fullmatch(name)
        return (0, int(m.group(2)), name) if m else (1, 0, name)
    return sorted(names, key=order)


class _Roots:
    """The roots of all shards, for membership tests (``"optimizer" in source.root``)."""

    def __init__(self, sources):
        self.sources = sources

    def __contains__(self, name) -> bool:
        return any(name in s.root for s in self.sources)


class Shards:
    """The shards of an index, opened together (a context manager): the entries of all of them,
    each read through its own shard."""

    def __init__(self, path, tmp_dir: str | None = None):
        self.path = os.fspath(path)
        self.index = read_index(self.path)
        self.directory = os.path.dirname(os.path.abspath(self.path))
        self.names = shard_names(self.path, self.index)
        self.sources: list[Source] = []
        self.tmp_dir = tmp_dir

    def __enter__(self) -> Shards:
        try:
            for name in self.names:
                source = Source(os.path.join(self.directory, name), self.tmp_dir, shard=True).__enter__()
                self.sources.append(source)
                if source.kind != "hdf5" or source.layout != "keras3":
                    raise KerasFileError(f"{self.path}: shard {name!r} is not a Keras 3 weights file")
        except BaseException:
            self.close()
            raise
        self._check_set()
        self._owner = {}
        self.entries = []
        try:
            for source in self.sources:
                for e in source.entries:
                    if e.path in self._owner:
                        raise KerasFileError(f"{self.path}: weight {e.path!r} is in two shards; refused")
                    self._owner[e.path] = source
                    self.entries.append(e)
            check_indices(self._owner, self.path)
        except BaseException:
            self.close()
            raise
        self.root = _Roots(self.sources)
        self.layout = "keras3"
        self.kind = "sharded"
        self.config = None
        self.packed = self.sources[0].packed
        return self

    def _check_set(self) -> None:
        """Refuse shards that do not all carry the token of the index (see the module docstring)."""
        metadata = self.index.get("metadata")
        token = metadata.get(SET_TOKEN) if isinstance(metadata, dict) else None
        for name, source in zip(self.names, self.sources):
            if _token_of(source.h5) != token:
                self.close()
                raise KerasFileError(f"{self.path}: shard {name!r} was not written with this index (a rewrite into it "
                                     f"was stopped while renaming its shards into place); rewrite it again from its "
                                     f"source")

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def members(self) -> dict:
        """The walk's members of every shard ({path: DatasetInfo, None for a group}); a group
        that several shards hold is one."""
        return {path: info for source in self.sources for path, info in source.members.items()}

    def close(self) -> None:
        for source in self.sources:
            source.close()
        self.sources = []

    @property
    def role_source(self) -> str:
        sources = {s.role_source for s in self.sources  # (a shard of optimizer variables has no layer classes)
                   if any(e.role not in ("optimizer", "variable") for e in s.entries)} or {self.sources[0].role_source}
        return sources.pop() if len(sources) == 1 else ", ".join(sorted(sources))

    @property
    def description(self) -> str:
        return f"keras3 in {len(self.sources)} shards" + (" (packed)" if self.packed is not None else "")

    def owner(self, entry) -> Source:
        return self._owner[entry.path]

    def read(self, entry, buffers=None):
        return self._owner[entry.path].read(entry, buffers)

    def values(self, entry):
        return self._owner[entry.path].values(entry)

    def stored_bytes(self, entry) -> int:
        return self._owner[entry.path].stored_bytes(entry)

    @property
    def quantized(self) -> dict:
        out = {}
        for source in self.sources:
            out.update(source.quantized)
        return out

    def is_packed(self, entry) -> bool:
        return self._owner[entry.path].is_packed(entry)

    def size(self) -> int:
        return os.path.getsize(self.path) + sum(os.path.getsize(s.path) for s in self.sources)


def is_output_shard(dst: str, path: str) -> bool:
    """Whether `path` is named like a shard of the output index `dst`, beside it."""
    base = os.path.basename(dst)[:-len(INDEX_SUFFIX)]
    m = _SHARD.fullmatch(os.path.basename(path))
    return m is not None and m.group(1) == base and \
        os.path.dirname(os.path.abspath(path)) == os.path.dirname(os.path.abspath(dst))


def output_names(dst: str, count: int) -> list[str]:
    """The shard files of an output index `dst` (``y.weights.json`` -> ``y_00000.weights.h5``, ...)."""
    if not dst.endswith(INDEX_SUFFIX):
        raise KerasFileError(f"{dst}: a sharded source is written as a sharded index: the destination must end "
                             f"in {INDEX_SUFFIX}")
    base = os.path.basename(dst)[:-len(INDEX_SUFFIX)]
    return [f"{base}_{i:05}.weights.h5" for i in range(count)]


@contextlib.contextmanager
def written_shards(dst: str, names: list[str], keep: tuple = ()):
    """Temporary paths for the shards `names` of the index `dst` (beside it), and the function
    that writes the index (a dict, given the token of the set); all renamed into place when the
    block completes (the index last), all removed whatever goes wrong.

    When `dst` was already an index, the shard files it named that the new one does not are
    removed once the new index is in place: only regular files named as shards of `dst` are
    (``<base>_NNNNN.weights.h5``, whatever else an edited index lists), never a link, a
    directory, a new shard, the index itself or a file of `keep` (the source's shards, unless
    they are being replaced); so are the shards of an earlier set left by a stop after its index
    was renamed into place (:func:`_stale_shards`)."""
    directory = os.path.dirname(os.path.abspath(dst))
    finals = [os.path.join(directory, n) for n in names]
    new = set(names)
    listed = _old_shards(dst)
    surplus = [os.path.join(directory, n) for n in sorted({*listed, *_stale_shards(dst, listed)}) if n not in new]
    temps = []
    try:
        for final in [dst] + finals:  # (the index first: a second rewrite into it is refused naming it)
            temps.append(atomic.claimed(final))
        index_tmp, shard_temps = temps[0], temps[1:]
        token = secrets.token_hex(8)

        def write_index(index: dict) -> None:
            index.setdefault("metadata", {})[SET_TOKEN] = token
            with open(index_tmp, "w") as f:
                json.dump(index, f, indent=4)

        yield shard_temps, write_index
        _mark_shards(shard_temps, token)
        if atomic.STOP.is_set():
            raise KeyboardInterrupt
        for tmp, final in zip(shard_temps + [index_tmp], finals + [dst]):
            atomic.replace(tmp, final)
    finally:  # removes what was not renamed, and releases every temporary file's lock
        for tmp in temps:
            atomic.remove(tmp)
    kept = finals + [dst, *keep]
    for path in surplus:
        if not any(atomic.same_file(path, k) for k in kept):  # (a case-insensitive disk may alias names)
            _remove_regular(path)


def _token_of(f: h5py.File) -> str | None:
    """The set token a shard carries, or None."""
    value = f.attrs.get(SET_TOKEN)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None if value is None else str(value)


def _mark_shards(shard_temps: list[str], token: str) -> None:
    """Give the complete shards the token of their set (replacing any a shard copied from its
    source); their index has it from ``write_index``."""
    for tmp in shard_temps:
        with h5py.File(tmp, "r+", locking=False) as f:
            f.attrs[SET_TOKEN] = np.bytes_(token.encode())


def _old_shards(dst: str) -> list[str]:
    """The shard files an index already at `dst` names beside it (none if it is not an index)."""
    if not is_index(dst):
        return []
    try:
        index = read_index(dst)
    except KerasFileError:
        return []
    directory = os.path.dirname(os.path.abspath(dst))
    return sorted({n for n in _listed(index) if _beside(n) and is_output_shard(dst, os.path.join(directory, n))})


def _stale_shards(dst: str, listed: list[str]) -> list[str]:
    """Files beside `dst` named as its shards that carry a set token (so wqkernels wrote them as
    shards of `dst`) while the index there does not name them (`listed`): the surplus of a rewrite stopped
    between renaming its new index into place and removing the old shards it no longer names.
    A new set's token differs from theirs, so they can never again be read as part of it."""
    directory = os.path.dirname(os.path.abspath(dst))
    try:
        names = [n for n in os.listdir(directory) if n not in listed and is_output_shard(dst, os.path.join(directory, n))]
    except OSError:
        return []
    stale = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with h5py.File(path, "r", locking=False) as f:
                if _token_of(f) is not None:
                    stale.append(name)
        except (OSError, ValueError, RuntimeError):  # not an HDF5 file, unreadable: not ours to remove
            continue
    return stale


def _remove_regular(path: str) -> None:
    """Remove `path` if it is a regular file (not a link to one)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    except (OSError, ValueError):  # (ValueError: a name holding a NUL)
        pass


def output_index(source_index: dict, renames: dict, total_size: int, dropped=frozenset()) -> dict:
    """The index of the output: the source's weight map with its shards renamed, without the
    groups below the top-level members `dropped` (a stripped optimizer) and the shards not
    written (not in `renames`)."""
    weight_map = {}
    for group, value in source_index["weight_map"].items():
        if group.strip("/").split("/")[0] in dropped:
            continue
        if isinstance(value, list):
            value = [renames[v] for v in value if v in renames]
            if value:
                weight_map[group] = value
        elif value in renames:
            weight_map[group] = renames[value]
    return {"metadata": {"total_size": float(total_size)}, "weight_map": weight_map}


#: the units of a maximum shard size: SI and binary multiples of a byte
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*")


def shard_bytes(value, name: str = "max_shard_size") -> int:
    """A maximum shard size in bytes: a number is Keras's ``max_shard_size`` (GB as Keras counts
    them: 1024**3 bytes); a string may give a unit (``"500MB"``, ``"1.5GiB"``, ``"200000B"``;
    without one, the number is Keras's).

    Examples
    --------
    >>> shard_bytes(0.5), shard_bytes("500MB"), shard_bytes("2 GiB"), shard_bytes("1.5")
    (536870912, 500000000, 2147483648, 1610612736)
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, str)):
        raise TypeError(f"{name} must be a number of GB (as Keras's max_shard_size) or a size such as '500MB', "
                        f"got {value!r}")
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.lower())
        if m is None or m.group(2) not in _UNITS:
            raise ValueError(f"{name} must be a size such as 500MB, 1.5GiB or 2 (GB, as Keras's max_shard_size), "
                             f"got {value!r}")
        number, unit = float(m.group(1)), _UNITS[m.group(2)] if m.group(2) else 2**30
    else:
        number, unit = float(value), 2**30
    size = number * unit
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"{name} must be at least one byte, got {value!r}")
    return int(size)


def _variable_bytes(dset: h5py.Dataset) -> int:
    """A variable's bytes as Keras counts them towards a shard: its elements times their size."""
    return int(math.prod(dset.shape)) * dset.dtype.itemsize


def variables_bytes(paths: list[str]) -> int:
    """The bytes of all variables of the weights files `paths`, as Keras counts them for an
    index's ``total_size``."""
    total = 0
    for path in paths:
        with h5py.File(path, "r", locking=False) as f:
            def visit(_, obj):
                nonlocal total
                if isinstance(obj, h5py.Dataset):
                    total += _variable_bytes(obj)
            f.visititems(visit)
    return total


class Reshard:
    """The datasets of the weights files `parts` (the rewritten shards, or one file), in order,
    dealt into shards of at most `max_bytes` bytes of variables each: planned on construction
    (:attr:`count` shards; a variable larger than `max_bytes` is refused, as Keras refuses it),
    written by :meth:`write`."""

    def __init__(self, parts: list[str], max_bytes: int, where: str):
        self.parts = parts
        self.order = []  # (part index, dataset path, bytes)
        self.groups = {}  # every group path, in order of the parts (a dict: a set that keeps its order)
        for k, part in enumerate(parts):
            with h5py.File(part, "r", locking=False) as f:
                def visit(path, obj, k=k):
                    if isinstance(obj, h5py.Dataset):
                        self.order.append((k, path, _variable_bytes(obj)))
                    else:
                        self.groups.setdefault(path)
                f.visititems(visit)
        self.shard_of, count, filled = [], 0, 0
        for _, path, nbytes in self.order:
            if nbytes > max_bytes:
                raise KerasFileError(f"{where}: weight {path!r} has {nbytes} bytes, more than the largest shard "
                                     f"({max_bytes} bytes); give a larger max_shard_size")
            if count == 0 or filled + nbytes > max_bytes:
                count, filled = count + 1, 0
            filled += nbytes
            self.shard_of.append(count - 1)
        self.count = max(count, 1)

    @property
    def total(self) -> int:
        """The bytes of all variables."""
        return sum(n for _, _, n in self.order)

    def write(self, temps: list[str]) -> list:
        """Write the shards into `temps` (:attr:`count` paths); returns the weight map's items.

        Every dataset is copied exactly (HDF5's object copy: type, filters, attributes) under
        its path, with the groups on its way (and their attributes, from the first part that
        has them); the first shard also holds every group (those without variables among them),
        as Keras's first shard does."""
        sources = [h5py.File(p, "r", locking=False) for p in self.parts]
        weight_map: dict[str, list] = {}
        try:
            for s, tmp in enumerate(temps):
                with new_file(tmp) as out:
                    copy_attrs(sources[0], out)
                    for path in self.groups if s == 0 else ():
                        _group(out, sources, path)
                    for (k, path, _), shard in zip(self.order, self.shard_of):
                        if shard != s:
                            continue
                        parent, _, name = path.rpartition("/")
                        group = _group(out, sources, parent) if parent else out
                        h5o.copy(sources[k][path].id, b".", group.id, name.encode("utf-8"))
                        names = weight_map.setdefault("/" + parent, [])
                        if s not in names:
                            names.append(s)
        finally:
            for f in sources:
                f.close()
        return list(weight_map.items())


def _group(out: h5py.File, sources: list, path: str) -> h5py.Group:
    """The group at `path` of `out`, made (with the groups above it) like the first source's."""
    if path in out:
        return out[path]
    parent, _, name = path.rpartition("/")
    above = _group(out, sources, parent) if parent else out
    like = next(f[path] for f in sources if path in f)
    group = h5py.Group(new_group(above.id, name.encode("utf-8"), like.id.get_create_plist()))
    copy_attrs(like, group)
    return group


def resharded_index(names: list[str], weight_map: list, total_size: int) -> dict:
    """The index of resharded output: each vars group's shard (a list when it spans several)."""
    return {"metadata": {"total_size": float(total_size)},
            "weight_map": {group: names[s[0]] if len(s) == 1 else [names[i] for i in s] for group, s in weight_map}}
