"""Writing files so that a destination only ever exists whole, and naming the temporary files.

Every output (a rewritten model, a report) is written to a temporary file beside its destination
and renamed into place once complete.  This module owns the names of those files, so that the
batch layer can recognise, and remove, the ones a killed rewrite left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile

from .errors import KerasFileError

__all__ = ["TEMP_PREFIX", "temp_beside", "scratch_file", "is_temporary", "replace", "same_file",
           "written", "write_json"]

#: prefix of our scratch files (a .keras archive's extracted weights), never taken as input
TEMP_PREFIX = ".wqkernels-"
_SCRATCH_SUFFIX = ".weights.h5"
#: ``.<destination name>.<8 random characters>.tmp``
_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def temp_beside(dst: str) -> str:
    """Create an empty temporary file next to `dst` (mode 0666 less the umask, like open())."""
    dst_dir, base = os.path.split(os.path.abspath(dst))
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


def scratch_file(directory: str | None) -> str:
    """A new empty scratch file for a weights HDF5 file, in `directory` (default: the system's)."""
    fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=_SCRATCH_SUFFIX, dir=directory)
    os.close(fd)
    return path


def is_temporary(name: str, destinations: set) -> bool:
    """Whether the file `name` is a temporary file of a write into one of `destinations` (names
    in the same directory) or one of our scratch files."""
    m = _TEMP_NAME.fullmatch(name)
    return (m is not None and m.group(1) in destinations) or (
        name.startswith(TEMP_PREFIX) and name.endswith(_SCRATCH_SUFFIX))


def _sync(path: str) -> None:
    """fsync a file: a crash right after it replaces another cannot leave an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str, dst: str) -> None:
    """Rename the complete `tmp` to `dst`.  Overwriting keeps the permissions the file had, and
    fsyncs the new data before the old is gone; a new destination is not fsynced (it costs
    nothing if lost, and fsync can take longer than the rewrite itself)."""
    if os.path.exists(dst):
        os.chmod(tmp, os.stat(dst).st_mode & 0o7777)
        _sync(tmp)
    os.replace(tmp, dst)


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


@contextlib.contextmanager
def written(dst: str):
    """Yield a temporary path beside `dst`; renamed to `dst` when the block completes, removed
    whatever goes wrong (KeyboardInterrupt included)."""
    tmp = temp_beside(dst)
    try:
        yield tmp
        replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path, document) -> None:
    """Write a JSON document to `path` atomically; OSError (or KerasFileError) when it cannot."""
    path = os.fsdecode(os.fspath(path))
    with written(path) as tmp, open(tmp, "w") as f:
        json.dump(document, f, indent=1)
