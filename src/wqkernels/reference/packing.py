"""NumPy reference of pack_bits / unpack_bits: the bit stream spelled out bit by bit."""
from __future__ import annotations

import numpy as np


def pack_bits(values, bits):
    v = np.asarray(values).reshape(-1).astype(np.int64) & ((1 << bits) - 1)
    stream = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")[: -(-v.size * bits // 8)]


def unpack_bits(packed, bits, count, signed=True):
    stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: count * bits]
    v = (stream.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
        return v.astype(np.int8)
    return v.astype(np.uint8)
