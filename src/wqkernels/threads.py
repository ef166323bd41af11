"""How many OpenMP threads the kernels use.

The kernels also take fewer threads by themselves while the machine is busy (a team of threads
waiting for a descheduled member is slower than one thread).
"""
from __future__ import annotations

from . import _core
from ._checks import check_int

__all__ = ["max_threads", "set_max_threads"]


def max_threads() -> int:
    """The most threads one kernel call uses (1 when the build has no OpenMP).

    Examples
    --------
    >>> import wqkernels
    >>> wqkernels.max_threads() >= 1
    True
    """
    return int(_core.max_threads())


def set_max_threads(n: int) -> None:
    """Use at most `n` threads (>= 1) in each kernel call, for this process.

    Examples
    --------
    >>> import wqkernels
    >>> before = wqkernels.max_threads()
    >>> wqkernels.set_max_threads(1); wqkernels.max_threads()
    1
    >>> wqkernels.set_max_threads(before)
    """
    _core.set_max_threads(check_int(n, "n", 1))
