"""The file layer's error, and how the errors of h5py, zipfile and the OS become it."""
from __future__ import annotations

import contextlib
import zipfile
import zlib

from .._text import first_line

__all__ = ["KerasFileError", "as_file_errors"]

#: what h5py, zipfile, zlib and the OS raise on unreadable or unwritable files
FILE_ERRORS = (OSError, KeyError, RuntimeError, zlib.error, zipfile.BadZipFile, EOFError)


class KerasFileError(ValueError):
    """A file that cannot be read or written as a Keras weights file; the message names it."""


@contextlib.contextmanager
def as_file_errors(where: str):
    """Errors from h5py, zipfile and the OS become one-line KerasFileErrors naming the file."""
    try:
        yield
    except (KerasFileError, NotImplementedError):
        raise
    except FILE_ERRORS as exc:
        text = first_line(exc)
        if isinstance(exc, OSError) and exc.strerror and not text.startswith("Unable"):
            text = exc.strerror
        raise KerasFileError(f"{where}: cannot read or write as a Keras file ({text})") from None
