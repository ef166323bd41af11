"""Planning a batch: which files, and where each lands; nothing is written."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..files.atomic import TEMP_PREFIX

if TYPE_CHECKING:
    from .result import BatchResult

__all__ = ["SUFFIXES", "Job", "BatchError", "plan", "identity", "file_size"]

#: files taken from directories and glob patterns (a file named directly may have any name)
SUFFIXES = (".h5", ".hdf5", ".keras")


class BatchError(ValueError):
    """The batch cannot start (missing sources, name collisions), or some files failed.

    When files failed, `result` holds the :class:`BatchResult` of the whole batch.
    """

    def __init__(self, message: str, result: BatchResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Job:
    """One file to rewrite: where it comes from, where it goes, its size in bytes."""

    source: str
    destination: str
    size: int = 0


def plan(srcs, out_dir, *, recursive: bool = False) -> list[Job]:
    """The files to rewrite and their destinations in `out_dir`; nothing is written.

    A file named directly lands as ``out_dir/<its name>``; files found in a directory (only
    ``.h5``, ``.hdf5`` and ``.keras`` files, descending into subdirectories if `recursive`) keep
    their path relative to it; glob patterns are expanded (``**`` descends), each match treated
    as if named directly.  `out_dir`, when inside a source directory, is not scanned.

    Raises
    ------
    BatchError
        A source that does not exist or a pattern that matches nothing, two files that would
        land on the same destination, a destination that is a source, or nothing to do; every
        problem is listed.
    """
    srcs = [srcs] if isinstance(srcs, (str, bytes, os.PathLike)) else list(srcs)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BatchError(f"{out_dir}: the output directory exists and is not a directory")
    out_real = os.path.realpath(out_dir)
    problems, pairs = [], []
    for src in srcs:
        src = os.fspath(src)
        if os.path.isdir(src):
            pairs.extend(_scan(src, recursive, out_real))
        elif os.path.exists(src):
            pairs.append((src, os.path.basename(src)))
        elif glob.has_magic(src):
            matches = [m for m in sorted(glob.glob(src, recursive=True)) if not _inside(m, out_real)]
            if not matches:
                problems.append(f"{src}: matches no file")
            for m in matches:
                if os.path.isdir(m):
                    pairs.extend(_scan(m, recursive, out_real))
                elif _candidate(os.path.basename(m)):
                    pairs.append((m, os.path.basename(m)))
        else:
            problems.append(f"{src}: no such file or directory")

    jobs, seen, by_destination = [], set(), {}
    sources = {identity(s) for s, _ in pairs}
    for src, rel in pairs:
        dst = os.path.join(out_dir, rel)
        key = os.path.normcase(os.path.abspath(dst))
        if (os.path.abspath(src), key) in seen:
            continue  # the same file reached twice (named and inside a named directory)
        seen.add((os.path.abspath(src), key))
        by_destination.setdefault(key, []).append(src)
        if identity(dst) in sources:
            problems.append(f"{dst}: would overwrite a source file")
        jobs.append(Job(src, dst, file_size(src)))
    for key, group in by_destination.items():
        if len(group) > 1:
            problems.append(f"{key}: would be written from {len(group)} files: {', '.join(group)}")
    if problems:
        raise BatchError(f"nothing was rewritten: {len(problems)} problem(s) with the sources\n"
                         + "\n".join(problems))
    if not jobs:
        raise BatchError(f"no Keras files ({', '.join(SUFFIXES)}) in {', '.join(map(os.fspath, srcs))}"
                         + ("" if recursive else " (--recursive descends into subdirectories)"))
    return jobs


def _candidate(name: str) -> bool:
    """A supported file name that is not one of our temporary files."""
    return name.lower().endswith(SUFFIXES) and not name.startswith(TEMP_PREFIX)


def _inside(path: str, directory_real: str) -> bool:
    real = os.path.realpath(path)
    return real == directory_real or real.startswith(directory_real.rstrip(os.sep) + os.sep)


def _scan(top: str, recursive: bool, out_real: str):
    """(path, path relative to top) of the candidate files in `top`, sorted, out_real left out."""
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if recursive and not _inside(os.path.join(root, d), out_real))
        for name in sorted(files):
            path = os.path.join(root, name)
            if _candidate(name) and os.path.isfile(path):
                yield path, os.path.relpath(path, top)


def identity(path: str):
    """(device, inode) of an existing file, else its real path: equal for the same file."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.normcase(os.path.realpath(path))
    return st.st_dev, st.st_ino


def file_size(path: str) -> int:
    """Bytes of the file at `path`, 0 when there is none."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
