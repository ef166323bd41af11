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
    except (KerasFileError, NotImplementedError):
        raise
    except FILE_ERRORS as exc:
        if output is not None and _write_failure(exc):
            raise KerasFileError(f"{output}: cannot write ({reason(exc)})") from None
        raise KerasFileError(f"{where}: cannot read or write as a Keras file ({reason(exc)})") from None
