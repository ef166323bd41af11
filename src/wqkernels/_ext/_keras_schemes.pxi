# Keras 3's absmax quantizer: codes by multiplier, and their error, in one pass (see _keras_loops.h).

cdef extern from "_keras_loops.h" nogil:
    bint wqk_keras_absmax_run(const float* x, const uint32_t* a, int8_t* q, float* y, Py_ssize_t n, const float* m,
                              int vector, float lo, float hi, double* sums, int64_t* zeros)


def keras_absmax_codes(const float[::1] x, const uint32_t[::1] original, int8_t[::1] codes, float[::1] values,
                       Py_ssize_t run, Py_ssize_t div, Py_ssize_t mod, bint vector, const float[::1] multiplier,
                       float lo, float hi, double[::1] sums, int64_t[::1] zeros):
    """codes = clip(rint(x * m), lo, hi) and, unless `values` is empty, values = codes / m.

    x is a sequence of runs of `run` elements; run r takes the multipliers from
    ``multiplier[g * run:]`` one per element when `vector`, else ``multiplier[g]`` for all,
    with g = (r // div) % mod.  sums = [sum a^2, sum (a - codes / m)^2, max |a - codes / m|]
    and zeros = [zeros of a, zero codes] with a = `original` (the bits of a float32 array of x's
    shape; may be x's), x finite.  False if `original` is not all finite (its sums then mean
    nothing).

    Whole runs of about ELEMENT_CHUNK elements are summed on their own and the sums added in
    order, so the result does not depend on the number of threads.
    """
    cdef Py_ssize_t size = x.shape[0], runs = size // run if run else 0
    cdef Py_ssize_t per = max(1, <Py_ssize_t>ELEMENT_CHUNK // max(run, 1))
    cdef Py_ssize_t chunks = (runs + per - 1) // per, c, r, g
    cdef double* parts = <double*>calloc(3 * max(chunks, 1), sizeof(double))
    cdef int64_t* found = <int64_t*>calloc(2 * max(chunks, 1), sizeof(int64_t))
    cdef float* y = &values[0] if values.shape[0] else NULL
    cdef int bad = 0
    if parts == NULL or found == NULL:
        free(parts)
        free(found)
        raise MemoryError()
    with nogil:
        for c in prange(chunks, num_threads=threads_for(size), schedule="static"):
            for r in range(c * per, min(runs, (c + 1) * per)):
                g = (r // div) % mod
                bad += not wqk_keras_absmax_run(&x[r * run], &original[r * run], &codes[r * run],
                                                y + r * run if y != NULL else NULL, run,
                                                &multiplier[g * run if vector else g], vector, lo, hi,
                                                parts + 3 * c, found + 2 * c)
        sums[0] = sums[1] = sums[2] = 0.0
        zeros[0] = zeros[1] = 0
        for c in range(chunks):
            sums[0] += parts[3 * c]
            sums[1] += parts[3 * c + 1]
            sums[2] = max(sums[2], parts[3 * c + 2])
            zeros[0] += found[2 * c]
            zeros[1] += found[2 * c + 1]
    free(parts)
    free(found)
    return bad == 0
