# Float bits as keys: what the pruning, statistics and allocation kernels share.
#
# Arrays arrive as 1-D views of their bits: uint16, uint32 or uint64 for float16, float32 and
# float64.  The fused type key_t is the one way these kernels are generic over the width: each
# def function is compiled once per key_t, and the loops of _bit_loops.h are C++ templates that
# take key_t pointers, so every call is type-checked.  A key is bits & ~sign: keys order like
# the magnitudes, +-0 is the smallest, and keys that are not finite are infinities or NaNs.

from libc.stdint cimport uint16_t, uint64_t

ctypedef fused key_t:
    uint16_t
    uint32_t
    uint64_t

cdef extern from "_bit_loops.h" nogil:
    cdef cppclass Segment "wqk_segment"[K]:
        const K* x      # bits to read
        K* y            # output bits, or NULL
        Py_ssize_t n
        int64_t base    # position of x[0] in the whole sequence
    K magnitude "wqk_magnitude"[K](K bits)
    bint finite_key "wqk_finite_key"[K](K key)
    int64_t wqk_count_below[K](const K* x, Py_ssize_t n, K t, K* top)

cdef enum:
    ELEMENT_CHUNK = 1 << 16     # elements per task of element-wise loops
