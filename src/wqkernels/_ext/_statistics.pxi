# Statistics kernels: zeros, and the error of an approximation, over float bits (see _keys.pxi).

from libc.stdlib cimport calloc

cdef extern from "_bit_loops.h" nogil:
    K wqk_error[K](const K* x, const K* x_hat, Py_ssize_t n, double* out, int64_t* zeros)
    K wqk_error_histograms[K](const K* x, const K* x_hat, Py_ssize_t n, double* out, int64_t* zeros,
                              const double* edges, Py_ssize_t bins, int64_t* counts)


def count_zeros(const key_t[::1] x):
    """The number of elements equal to +0 or -0."""
    cdef Py_ssize_t n = x.shape[0], chunks = (n + ELEMENT_CHUNK - 1) // ELEMENT_CHUNK, c, start
    cdef int64_t zeros = 0
    cdef key_t top
    with nogil:
        for c in prange(chunks, num_threads=threads_for(n), schedule="static"):
            start = c * ELEMENT_CHUNK
            top = 0
            zeros += wqk_count_below(&x[start], min(<Py_ssize_t>ELEMENT_CHUNK, n - start), <key_t>1, &top)
    return zeros


def error_sums(const key_t[::1] x, const key_t[::1] x_hat, double[::1] out, int64_t[::1] zeros,
               const double[::1] edges, int64_t[::1] counts):
    """out = [sum x^2, sum (x - x_hat)^2, max |x - x_hat|] in float64, zeros = [zeros of x, zeros
    of x_hat] (+0 or -0).  False if not all finite (the zeros are counted all the same).

    With `edges` (bins + 1 of them; empty: none), also in the same loop counts[:bins] = the
    histogram of x over them and counts[bins:] that of x_hat, each value clipped to the range:
    numpy.histogram's counts (see wqk_bins).  Each thread counts into its own bins, added at the
    end.

    Each chunk of ELEMENT_CHUNK elements is summed on its own and the chunks' sums are added in
    order, so the result does not depend on the number of threads.
    """
    cdef Py_ssize_t n = x.shape[0], chunks = (n + ELEMENT_CHUNK - 1) // ELEMENT_CHUNK, c, start, k
    cdef Py_ssize_t bins = edges.shape[0] - 1 if edges.shape[0] > 1 else 0
    cdef int threads = threads_for(n), t
    cdef double* parts = <double*>calloc(3 * max(chunks, 1), sizeof(double))
    cdef int64_t* found = <int64_t*>calloc(2 * max(chunks, 1), sizeof(int64_t))
    cdef int64_t* local = <int64_t*>calloc(2 * bins * threads, sizeof(int64_t)) if bins else NULL
    cdef int bad = 0
    cdef key_t top
    if parts == NULL or found == NULL or (bins and local == NULL):
        free(parts)
        free(found)
        free(local)
        raise MemoryError()
    with nogil:
        for c in prange(chunks, num_threads=threads, schedule="static"):
            start = c * ELEMENT_CHUNK
            if bins:
                top = wqk_error_histograms(&x[start], &x_hat[start], min(<Py_ssize_t>ELEMENT_CHUNK, n - start),
                                           parts + 3 * c, found + 2 * c, &edges[0], bins,
                                           local + 2 * bins * threadid())
            else:
                top = wqk_error(&x[start], &x_hat[start], min(<Py_ssize_t>ELEMENT_CHUNK, n - start),
                                parts + 3 * c, found + 2 * c)
            bad += not finite_key(top)
        out[0] = out[1] = out[2] = 0.0
        zeros[0] = zeros[1] = 0
        for c in range(chunks):
            out[0] += parts[3 * c]
            out[1] += parts[3 * c + 1]
            out[2] = max(out[2], parts[3 * c + 2])
            zeros[0] += found[2 * c]
            zeros[1] += found[2 * c + 1]
        for k in range(2 * bins):
            counts[k] = 0
            for t in range(threads):
                counts[k] += local[2 * bins * t + k]
    free(parts)
    free(found)
    free(local)
    return bad == 0
