# A scan of bytes for a signature, for the file layer's check of a file before HDF5 reads it.

cdef extern from "_loops.h" nogil:
    Py_ssize_t wqk_find_bytes(const uint8_t* data, Py_ssize_t size, const uint8_t* pattern, Py_ssize_t n)


def find_bytes(const uint8_t[::1] data, const uint8_t[::1] pattern, Py_ssize_t start):
    """The first offset >= start of `pattern` (2 bytes or more) in `data`, or -1 (bytes.find's
    answer, at memory speed)."""
    cdef Py_ssize_t at
    if start < 0 or data.shape[0] - start < pattern.shape[0]:
        return -1
    with nogil:
        at = wqk_find_bytes(&data[start], data.shape[0] - start, &pattern[0], pattern.shape[0])
    return at + start if at >= 0 else -1
