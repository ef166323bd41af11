"""The worker side of a batch: process setup, and one file rewritten into an outcome."""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading

from .._text import one_line
from ..files import KerasFileError, Recipe, rewrite
from ..files.atomic import STOP_SIGNALS
from ..threads import set_max_threads

__all__ = ["init_worker", "rewrite_job", "describe_failure"]


def init_worker(threads: int) -> None:
    """Pool worker setup: Ctrl-C and SIGHUP are the parent's business, SIGTERM ends the worker
    at once (its temporary file is removed by the parent), the worker ends when its parent dies,
    and the kernels share the cores with the other workers."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.SIG_IGN)
    set_max_threads(threads)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        threading.Thread(target=_end_with, args=(parent.sentinel,), daemon=True, name="wqkernels-parent").start()


def _end_with(sentinel) -> None:
    """Wait for the parent's death (SIGKILL: no chance to stop us), then end this worker as its
    SIGTERM would: a hard kill of a batch leaves no worker running on, holding its output
    streams (its temporary file is removed by the next batch into the directory)."""
    multiprocessing.connection.wait([sentinel])
    os.kill(os.getpid(), signal.SIGTERM)


def rewrite_job(source: str, destination: str, recipe: Recipe, histograms: bool = False) -> tuple:
    """Rewrite one file: ``("ok", Report)`` or ``("failed", one-line error)``; runs in a worker."""
    try:
        return "ok", rewrite(source, destination, recipe, histograms=histograms)
    except Exception as exc:  # noqa: BLE001 -- one bad file must not stop the batch
        return "failed", describe_failure(exc, source)


def describe_failure(exc: BaseException, source: str) -> str:
    """An error as one line naming the file."""
    text = one_line(exc, typed=not isinstance(exc, (KerasFileError, NotImplementedError)))
    return text if source in text else f"{source}: {text}"
