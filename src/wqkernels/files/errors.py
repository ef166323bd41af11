"""The file layer's error, and how the errors of h5py, zipfile and the OS become it."""
from __future__ import annotations

import contextlib
import errno
import re
import zipfile
import zlib

from .._text import first_line

__all__ = ["KerasFileError", "as_file_errors", "reason"]

#: what h5py, zipfile, zlib and the OS raise on unreadable or unwritable files
FILE_ERRORS = (OSError, KeyError, RuntimeError, zlib.error, zipfile.BadZipFile, EOFError)
#: the operating system's error inside HDF5's text (which spans several lines)
_HDF5_OS_ERROR = re.compile(r"errno = (\d+), error message = '([^']*)'")
#: errors of a write that only the destination's file system causes
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def reason(exc: BaseException) -> str:
    """An error of h5py, zipfile or the OS as one short line: the operating system's own words
    when it caused the error (HDF5 buries them in a multi-line text), else the first line."""
    found = _HDF5_OS_ERROR.search(str(exc))
    if found:
        return found.group(2)
    if isinstance(exc, OSError) and exc.strerror:
        return first_line(OSError(exc.strerror))
    return first_line(exc)


def of_the_file(exc: BaseException) -> bool:
    """Whether an error met while reading a file is the file's.  h5py raises KeyError and
    TypeError on a header it cannot read (a damaged message, a name that is not UTF-8...), and
    zipfile a KeyError for a member an archive lacks; the same errors raised by our own code are
    a fault of ours, to be shown as one and not blamed on the file.  Other errors are the file's."""
    if not isinstance(exc, (KeyError, TypeError)):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    # by the raising module's name, not its file's (zipfile is a package from Python 3.12 on)
    module = "" if tb is None else tb.tb_frame.f_globals.get("__name__", "")
    return module.partition(".")[0] in ("h5py", "zipfile")


def _write_failure(exc: BaseException) -> bool:
    found = _HDF5_OS_ERROR.search(str(exc))
    code = int(found.group(1)) if found else getattr(exc, "errno", None)
    return code in _WRITE_ERRNOS


class KerasFileError(ValueError):
    """A file that cannot be read or written as a Keras weights file; the message names it."""


@contextlib.contextmanager
def as_file_errors(where: str, output: str | None = None):
    """Errors from h5py, zipfile and the OS become one-line KerasFileErrors naming the file: the
    `output` being written when its file system failed (full, read-only), else `where`."""
    try:
        yield
    except KerasFileError:
        raise
    except NotImplementedError as exc:  # zipfile: a compression method or zip version it lacks
        raise KerasFileError(f"{where}: uses what this reader does not support ({reason(exc)})") from None
    except FILE_ERRORS as exc:
        if not of_the_file(exc):
            raise
        if output is not None and _write_failure(exc):
            raise KerasFileError(f"{output}: cannot write ({reason(exc)})") from None
        raise KerasFileError(f"{where}: cannot read or write as a Keras file ({reason(exc)})") from None
