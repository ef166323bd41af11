"""Sharded Keras 3 weights: ``x.weights.json`` (an index) and ``x_00000.weights.h5``, ... .

Keras 3's ``save_weights("x.weights.json", max_shard_size=...)`` writes each shard as a Keras 3
``.weights.h5`` holding some of the ``vars`` groups (a group may continue in the next shard) and
an index whose ``weight_map`` names, for each ``vars`` group, the shard or shards holding it.

A rewrite plans over all shards together (global pruning ranks every tensor), then writes one
output shard per source shard, each of the storage asked for and no larger than its source: the
same kind of output, loaded by ``model.load_weights("y.weights.json")``.  One shard is open for
writing at a time and tensors are read one at a time.  The shards are written to temporary
files first; only when all are complete are they renamed into place, the index last, so that
nothing names an incomplete output.
"""
from __future__ import annotations

import contextlib
import json
import os
import re

from . import atomic
from .errors import KerasFileError
from .layouts import MAX_CONFIG_BYTES
from .source import Source

__all__ = ["is_index", "Shards", "shard_names", "INDEX_SUFFIX"]

INDEX_SUFFIX = ".weights.json"
_SHARD = re.compile(r"(.+)_(\d{5,})\.weights\.h5")


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


def shard_names(path: str, index: dict) -> list[str]:
    """The shard files of an index, in order: every file the weight map names, and the first
    shard (which holds the groups without variables) when it exists."""
    names = set()
    for value in index["weight_map"].values():
        for name in value if isinstance(value, list) else [value]:
            if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
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
        if not os.path.isfile(os.path.join(directory, name)):
            raise KerasFileError(f"{path}: shard {name!r} is missing")

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
                source = Source(os.path.join(self.directory, name), self.tmp_dir).__enter__()
                self.sources.append(source)
                if source.kind != "hdf5" or source.layout != "keras3":
                    raise KerasFileError(f"{self.path}: shard {name!r} is not a Keras 3 weights file")
        except BaseException:
            self.close()
            raise
        self._owner = {}
        self.entries = []
        for source in self.sources:
            for e in source.entries:
                if e.path in self._owner:
                    raise KerasFileError(f"{self.path}: weight {e.path!r} is in two shards; refused")
                self._owner[e.path] = source
                self.entries.append(e)
        self.root = _Roots(self.sources)
        self.layout = "keras3"
        self.kind = "sharded"
        self.config = None
        self.packed = self.sources[0].packed
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for source in self.sources:
            source.close()
        self.sources = []

    @property
    def role_source(self) -> str:
        sources = {s.role_source for s in self.sources}
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


def output_names(dst: str, count: int) -> list[str]:
    """The shard files of an output index `dst` (``y.weights.json`` -> ``y_00000.weights.h5``, ...)."""
    if not dst.endswith(INDEX_SUFFIX):
        raise KerasFileError(f"{dst}: a sharded source is written as a sharded index: the destination must end "
                             f"in {INDEX_SUFFIX}")
    base = os.path.basename(dst)[:-len(INDEX_SUFFIX)]
    return [f"{base}_{i:05}.weights.h5" for i in range(count)]


@contextlib.contextmanager
def written_shards(dst: str, names: list[str]):
    """Temporary paths for the index `dst` and its shards `names` (beside it); all renamed into
    place when the block completes (the index last), all removed whatever goes wrong."""
    directory = os.path.dirname(os.path.abspath(dst))
    finals = [os.path.join(directory, n) for n in names]
    temps = []
    try:
        for final in finals + [dst]:
            temps.append(atomic.temp_beside(final))
        yield temps[:-1], temps[-1]
        for tmp, final in zip(temps, finals + [dst]):
            atomic.replace(tmp, final)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def output_index(source_index: dict, renames: dict, total_size: int) -> dict:
    """The index of the output: the source's weight map with its shards renamed."""
    weight_map = {}
    for group, value in source_index["weight_map"].items():
        weight_map[group] = [renames[v] for v in value] if isinstance(value, list) else renames[value]
    return {"metadata": {"total_size": float(total_size)}, "weight_map": weight_map}
