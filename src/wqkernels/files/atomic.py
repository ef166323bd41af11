"""Writing files so that a destination only ever exists whole, and naming the temporary files.

Every output (a rewritten model, a report) is written to a temporary file beside its destination
and renamed into place once complete.  This module owns those files: their names (so that they
are recognised and never taken as input) and their locks.  The process writing a temporary file
holds an exclusive ``flock`` on it from the moment it is created; a file whose lock can be taken
is provably abandoned (its writer was killed) and is removed by the next rewrite into the same
directory, while one whose lock is held belongs to a running writer and is left alone.  The
same locks refuse a second rewrite into a destination another process is writing.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import stat
import tempfile
import threading

from .errors import KerasFileError

try:
    import fcntl
except ImportError:  # no flock: nothing is ever proved abandoned, so nothing is removed
    fcntl = None

__all__ = ["TEMP_PREFIX", "STOP", "temp_beside", "scratch_file", "remove", "is_temporary", "remove_abandoned",
           "claimed", "replace", "same_file", "written", "write_json", "STOP_SIGNALS"]

#: set when the user asked the process to stop (the command line's handler of STOP_SIGNALS):
#: no temporary file is renamed into place after that, even when the interrupt was swallowed on
#: its way (in a finaliser, a C callback) and the work went on
STOP = threading.Event()

#: the signals that ask the command line to stop, where the platform has them: Ctrl-C, SIGTERM,
#: and SIGHUP (its terminal closed: by default the process died there, leaving its temporary files)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

#: prefix of our scratch files (a .keras archive's extracted weights), never taken as input
TEMP_PREFIX = ".wqkernels-"
_SCRATCH_SUFFIX = ".weights.h5"
#: ``.<destination name>.<8 random characters>.tmp``
_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")
#: the descriptors holding the locks of our temporary files, by path
_HELD: dict[str, int] = {}


def _create_locked(path: str) -> bool:
    """Create `path` (O_EXCL) and lock it; False when a cleaner took the lock first (it removes
    the file: the caller picks another name).

    An interrupt (KeyboardInterrupt from a signal handler) can come at any instruction, the one
    just after the file was created included: then the file is removed before the interrupt
    goes on (a name of random characters that exists after O_EXCL did not refuse it is ours).
    """
    fd = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError:  # a file system without locks: the file is just never proved abandoned
                pass
        _HELD[path] = fd
    except OSError:  # (FileExistsError among them: another's file, left alone)
        raise
    except BaseException:
        if path in _HELD:
            remove(path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        raise
    return True


def remove(path: str) -> None:
    """Remove one of our temporary files (if still there) and release its lock."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def temp_beside(dst: str) -> str:
    """Create an empty temporary file next to `dst` (mode 0666 less the umask, like open()),
    locked by this process until :func:`remove` (or :func:`written`) releases it."""
    dst_dir, base = os.path.split(os.path.abspath(dst))
    for _ in range(100):
        path = os.path.join(dst_dir, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            if _create_locked(path):
                return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise KerasFileError(f"{dst}: cannot write there ({exc.strerror or exc})") from None
    raise KerasFileError(f"{dst}: cannot create a temporary file beside it")


def scratch_file(directory: str | None) -> str:
    """A new empty scratch file for a weights HDF5 file, in `directory` (default: the system's),
    locked like a temporary file; abandoned scratch files found there are removed first.  HDF5
    must open it with ``locking=False`` (its own lock would conflict with ours)."""
    directory = directory or tempfile.gettempdir()
    remove_abandoned(directory, scratch_only=True)
    for _ in range(100):
        path = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(4)}{_SCRATCH_SUFFIX}")
        with contextlib.suppress(FileExistsError):
            if _create_locked(path):
                return path
    raise OSError(f"cannot create a scratch file in {directory}")


def is_temporary(name: str, destinations: set | None = None, scratch_only: bool = False) -> bool:
    """Whether the file `name` is one of our scratch files or a temporary file of a write into
    one of `destinations` (names in the same directory; None: any)."""
    if name.startswith(TEMP_PREFIX) and name.endswith(_SCRATCH_SUFFIX):
        return True
    m = None if scratch_only else _TEMP_NAME.fullmatch(name)
    return m is not None and (destinations is None or m.group(1) in destinations)


def _abandoned(path: str):
    """An open descriptor holding the lock of `path` when its writer is gone, else None."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:  # held by a running writer (or no locks here: nothing is proved)
        os.close(fd)
        return None


def remove_abandoned(directory: str, destinations: set | None = None, scratch_only: bool = False) -> int:
    """Remove the temporary files of killed writers in `directory` (of writes into
    `destinations` when given); files whose writer still holds its lock stay.  Returns how many."""
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        if path in _HELD or not is_temporary(name, destinations, scratch_only):
            continue
        fd = _abandoned(path)
        if fd is not None:
            try:  # removed while locked: a writer creating this name now fails its own lock
                os.unlink(path)
                removed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return removed


def _target(dst: str) -> str:
    """The file a write to `dst` lands in: through a symbolic link, its target (the link is kept,
    as by Keras, h5py or the shell writing through it; renaming over the link would replace it
    with a regular file, and two names of one file would be two destinations), else `dst`."""
    return os.path.realpath(dst) if os.path.islink(dst) else dst


def _check_regular(dst: str) -> None:
    """Refuse a destination that exists and is not a regular file (a FIFO, a device such as
    /dev/null, a socket): renaming over it would replace it."""
    try:
        mode = os.stat(dst).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise KerasFileError(f"{dst}: is {kind}, not a regular file; refused (it would be replaced)")


def _check_alone(dst: str, tmp: str) -> None:
    """Refuse to write `dst` while another process writes it (holds the lock of another
    temporary file of it); abandoned ones (and abandoned scratch files) are removed first."""
    directory, base = os.path.split(os.path.abspath(dst))
    remove_abandoned(directory, {base})
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        found = _TEMP_NAME.fullmatch(name)
        if found and found.group(1) == base and path != tmp and path not in _HELD:
            raise KerasFileError(f"{dst}: another process is writing it right now; refused (try again "
                                 f"once it is done)")


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
    nothing if lost, and fsync can take longer than the rewrite itself).  Through a symbolic
    link, its target is replaced."""
    dst = _target(dst)
    if os.path.exists(dst):
        os.chmod(tmp, os.stat(dst).st_mode & 0o7777)
        _sync(tmp)
    os.replace(tmp, dst)


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # (ValueError: a name holding a NUL)
        return os.path.abspath(a) == os.path.abspath(b)


@contextlib.contextmanager
def _directory_locked(dst: str):
    """Hold an flock on the directory of `dst`, so that creating a temporary file and looking
    for another writer's happen as one step (where it cannot be opened or locked: unlocked)."""
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(dst)) or ".", os.O_RDONLY)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def claimed(dst: str) -> str:
    """A temporary file beside `dst` (:func:`temp_beside`) that holds `dst` for this process:
    abandoned temporary files of `dst` are removed first, and a destination that is not a
    regular file, or that another process is writing, is refused (KerasFileError; nothing is
    left); through a symbolic link, all of this is beside its target.  Renamed with
    :func:`replace`, released with :func:`remove`."""
    dst = _target(dst)
    _check_regular(dst)
    with _directory_locked(dst):  # (two writers starting at once: each would see the other's file)
        tmp = temp_beside(dst)
        try:
            _check_alone(dst, tmp)
        except BaseException:
            remove(tmp)
            raise
    return tmp


@contextlib.contextmanager
def written(dst: str):
    """Yield a temporary path beside `dst` (:func:`claimed`); renamed to `dst` when the block
    completes, removed whatever goes wrong (KeyboardInterrupt included)."""
    dst = _target(dst)  # (once: the temporary file and the rename agree even if the link changes)
    tmp = claimed(dst)
    try:
        yield tmp
        if STOP.is_set():
            raise KeyboardInterrupt
        replace(tmp, dst)
    except BaseException:
        remove(tmp)
        raise
    remove(tmp)  # (renamed: only the lock is left to release)


def write_json(path, document) -> None:
    """Write a JSON document to `path` atomically; OSError (or KerasFileError) when it cannot."""
    path = os.fsdecode(os.fspath(path))
    with written(path) as tmp, open(tmp, "w") as f:
        json.dump(document, f, indent=1)
