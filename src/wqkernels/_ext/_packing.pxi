# Bit packing: an LSB-first stream of b-bit codes.

cdef extern from "_loops.h" nogil:
    int wqk_pack(const uint8_t* codes, Py_ssize_t n, int b, int is_signed, uint8_t* out)
    void wqk_unpack(const uint8_t* packed, Py_ssize_t n, int b, int is_signed, uint8_t* codes)

cdef enum:
    PACK_CHUNK = 1 << 16    # codes per thread task; a multiple of 8, so chunks start on bytes


def pack_into(const uint8_t[::1] codes, int bits, bint is_signed, uint8_t[::1] out):
    """Packs codes (bytes, two's complement when signed) into out; returns False if one does not fit."""
    cdef Py_ssize_t n = codes.shape[0], t, tasks = (n + PACK_CHUNK - 1) // PACK_CHUNK, start
    cdef int bad = 0
    if n == 0:
        return True
    with nogil:
        for t in prange(tasks, num_threads=threads_for(n), schedule="static"):
            start = t * PACK_CHUNK
            bad += wqk_pack(&codes[start], min(<Py_ssize_t>PACK_CHUNK, n - start), bits, is_signed,
                            &out[start // 8 * bits])
    return bad == 0


def unpack_into(const uint8_t[::1] packed, int bits, bint is_signed, uint8_t[::1] codes):
    """Unpacks codes.shape[0] codes of `bits` bits from packed."""
    cdef Py_ssize_t n = codes.shape[0], t, tasks = (n + PACK_CHUNK - 1) // PACK_CHUNK, start
    if n == 0:
        return
    with nogil:
        for t in prange(tasks, num_threads=threads_for(n), schedule="static"):
            start = t * PACK_CHUNK
            wqk_unpack(&packed[start // 8 * bits], min(<Py_ssize_t>PACK_CHUNK, n - start), bits,
                       is_signed, &codes[start])


# A scan of bytes for a signature (packing.find_bytes; the file layer checks files with it).
cdef extern from "_loops.h" nogil:
    Py_ssize_t wqk_find_bytes(const uint8_t* data, Py_ssize_t size, const uint8_t* pattern, Py_ssize_t n)


def find_bytes(const uint8_t[::1] data, const uint8_t[::1] pattern, Py_ssize_t start):
    """The first offset >= start of `pattern` (2 bytes or more) in `data`, or -1 (bytes.find's
    answer; fast for short patterns, see wqk_find_bytes)."""
    cdef Py_ssize_t at
    if start < 0 or data.shape[0] - start < pattern.shape[0]:
        return -1
    with nogil:
        at = wqk_find_bytes(&data[start], data.shape[0] - start, &pattern[0], pattern.shape[0])
    return at + start if at >= 0 else -1
