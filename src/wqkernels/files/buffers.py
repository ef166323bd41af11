"""float32 work arrays reused from one weight to the next."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["Buffers"]


class Buffers:
    """Work arrays by name, reused from one weight to the next: a fresh large array costs a page
    fault per 4 KiB, more than the kernels take to fill it."""

    #: arrays larger than this are dropped by trim(): their page faults cost little beside the
    #: work on them, and the memory matters more
    KEEP_BYTES = 64 << 20

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def trim(self, key: str) -> None:
        """Release the array of `key` if it is large (once its views are gone)."""
        a = self._arrays.get(key)
        if a is not None and a.nbytes > self.KEEP_BYTES:
            del self._arrays[key]

    def get(self, key: str, shape: tuple) -> np.ndarray:
        """A float32 array of `shape` (contents undefined), valid until the next get of `key`."""
        n = math.prod(shape)
        a = self._arrays.get(key)
        if a is None or a.size < n:
            a = self._arrays[key] = np.empty(max(n, 1), np.float32)
        return a[:n].reshape(shape)
