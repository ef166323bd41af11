# Statistics kernels: zeros, and the error of an approximation, over float bits (see _keys.pxi).

from libc.stdlib cimport calloc

cdef extern from "_bit_loops.h" nogil:
    K wqk_error[K](const K* x, const K* x_hat, Py_ssize_t n, double* out, int64_t* zeros)


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


def error_sums(const key_t[::1] x, const key_t[::1] x_hat, double[::1] out, int64_t[::1] zeros):
    """out = [sum x^2, sum (x - x_hat)^2, max |x - x_hat|] in float64, zeros = [zeros of x, zeros
    of x_hat] (+0 or -0).  False if not all finite (the zeros are counted all the same).

    Each chunk of ELEMENT_CHUNK elements is summed on its own and the chunks' sums are added in
    order, so the result does not depend on the number of threads.
    """
    cdef Py_ssize_t n = x.shape[0], chunks = (n + ELEMENT_CHUNK - 1) // ELEMENT_CHUNK, c, start
    cdef double* parts = <double*>calloc(3 * max(chunks, 1), sizeof(double))
    cdef int64_t* counts = <int64_t*>calloc(2 * max(chunks, 1), sizeof(int64_t))
    cdef int bad = 0
    cdef key_t top
    if parts == NULL or counts == NULL:
        free(parts)
        free(counts)
        raise MemoryError()
    with nogil:
        for c in prange(chunks, num_threads=threads_for(n), schedule="static"):
            start = c * ELEMENT_CHUNK
            top = wqk_error(&x[start], &x_hat[start], min(<Py_ssize_t>ELEMENT_CHUNK, n - start),
                            parts + 3 * c, counts + 2 * c)
            bad += not finite_key(top)
        out[0] = out[1] = out[2] = 0.0
        zeros[0] = zeros[1] = 0
        for c in range(chunks):
            out[0] += parts[3 * c]
            out[1] += parts[3 * c + 1]
            out[2] = max(out[2], parts[3 * c + 2])
            zeros[0] += counts[2 * c]
            zeros[1] += counts[2 * c + 1]
    free(parts)
    free(counts)
    return bad == 0
