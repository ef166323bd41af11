"""The output directory of a batch: its lock, and the temporary files killed rewrites left there."""
from __future__ import annotations

import contextlib
import os

from ..files.atomic import TEMP_PREFIX, remove_abandoned
from .plan import BatchError, Job

__all__ = ["LOCK_NAME", "output_lock", "remove_leftovers"]

LOCK_NAME = TEMP_PREFIX + "batch.lock"


@contextlib.contextmanager
def output_lock(out_dir: str):
    """Hold an exclusive lock on `out_dir` for the batch; yields whether it is held (False where
    the platform or file system has no locks).  A second batch into the same directory is refused:
    it would remove the first one's temporary files."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    path = os.path.join(out_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BatchError(f"{out_dir}: cannot write into the output directory ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"{out_dir}: another batch rewrite is writing into this directory") from None
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still locked: a waiting batch then opens a new file
    finally:
        os.close(fd)


def remove_leftovers(jobs: list[Job]) -> int:
    """Remove the temporary files killed rewrites left beside our destinations: only those whose
    writer is provably gone (see :mod:`wqkernels.files.atomic`, which names and locks them), so
    that a single rewrite running there keeps its own."""
    names_by_dir: dict[str, set] = {}
    for job in jobs:
        d, name = os.path.split(os.path.abspath(job.destination))
        names_by_dir.setdefault(d, set()).add(name)
    return sum(remove_abandoned(d, names) for d, names in names_by_dir.items())
