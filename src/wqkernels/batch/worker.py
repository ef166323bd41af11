"""The worker side of a batch: process setup, and one file rewritten into an outcome."""
from __future__ import annotations

import signal

from .._text import one_line
from ..files import KerasFileError, Recipe, rewrite
from ..threads import set_max_threads

__all__ = ["init_worker", "rewrite_job", "describe_failure"]


def init_worker(threads: int) -> None:
    """Pool worker setup: Ctrl-C is the parent's business, SIGTERM ends the worker at once (its
    temporary file is removed by the parent), and the kernels share the cores with the other
    workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_max_threads(threads)


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
