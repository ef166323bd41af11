# Allocation kernels: LAMP scores counted into histograms, over float bits (see _keys.pxi).

cdef extern from "_bit_loops.h" nogil:
    int64_t wqk_lamp_histogram[K](const K* x, Py_ssize_t n, int64_t prefix, int64_t* hist, int64_t* below)


def lamp_histogram(const key_t[::1] ranked, int64_t prefix, int64_t[::1] hist, int64_t[::1] below):
    """Count the LAMP scores of `ranked` (magnitudes sorted ascending) by their float32 bits u:
    hist[u >> 16] += 1 when prefix < 0; else below[0] counts u >> 16 < prefix and hist[u & 0xffff]
    those with u >> 16 == prefix.  hist must have 65536 bins and below one.  Returns the number
    of zero scores."""
    cdef int64_t zeros
    with nogil:
        zeros = wqk_lamp_histogram(&ranked[0] if ranked.shape[0] else NULL, ranked.shape[0], prefix,
                                   &hist[0], &below[0])
    return zeros
