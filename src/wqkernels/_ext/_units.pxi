# How an array is split into groups (one scale each) and into units of work.
#
# x is viewed as (outer, n, inner), C order, with the quantization axis in the middle.
# per_axis: one group per index along n, shared by all of outer and inner.
# otherwise: blocks of `block` consecutive indices along n, one group per (o, n // block, i);
#            per-tensor work is a blocked layout too (over the flat array).
# A unit holds whole groups, so units can run on different threads without sharing results:
# one group whose elements are `rows` runs of `length` (a "single" unit); `length` groups side
# by side, one per lane, over `rows` runs (a "lanes" unit); or, for short blocks along a
# contiguous axis, `rows` blocks one after another, each its own group, the last one `tail`
# elements long (a "runs" unit).  In the other kinds tail = length.

from cython.parallel cimport prange, threadid
from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t, uintptr_t
from libc.stdlib cimport malloc, free

cdef extern from "_loops.h" nogil:
    int wqk_max_threads()
    void wqk_set_max_threads(int n)
    void wqk_adapt_threads()

cdef struct Layout:
    Py_ssize_t outer, n, inner, block, nblocks, width, count, chunks
    bint per_axis, lanes, runs

cdef struct Unit:
    Py_ssize_t start, rows, length, stride, group, tail

cdef enum:
    RUN_BLOCK_MAX = 4096    # blocks along a contiguous axis up to this long are grouped into runs
    RUN_ELEMENTS = 16384    # elements of a runs unit (whole blocks; at least one)


cdef Layout make_layout(Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner, Py_ssize_t block,
                        bint per_axis, Py_ssize_t width, bint runs=True) noexcept nogil:
    """The layout of x as (outer, n, inner); `width`: lanes per lanes unit; `runs`: whether
    short blocks along a contiguous axis may share units."""
    cdef Layout L
    L.outer = outer
    L.n = n
    L.inner = inner
    L.block = block if block > 0 else 1
    L.nblocks = (n + L.block - 1) // L.block
    L.width = width
    L.per_axis = per_axis
    L.lanes = (inner == 1) if per_axis else (inner > 1)
    L.runs = runs and not per_axis and inner == 1 and L.block <= RUN_BLOCK_MAX
    L.chunks = max(RUN_ELEMENTS // L.block, 1) if L.runs else 1  # blocks per runs unit
    if per_axis:
        L.count = (n + width - 1) // width if inner == 1 else n
    elif L.runs:
        L.count = outer * ((L.nblocks + L.chunks - 1) // L.chunks)
    elif inner == 1:
        L.count = outer * L.nblocks
    else:
        L.count = outer * L.nblocks * ((inner + width - 1) // width)
    return L


cdef inline Unit unit_at(const Layout* L, Py_ssize_t u) noexcept nogil:
    cdef Unit U
    cdef Py_ssize_t o, j, c0, chunks
    if L.runs:  # runs: L.chunks blocks of a row (fewer at its end)
        chunks = (L.nblocks + L.chunks - 1) // L.chunks
        o = u // chunks
        j = (u % chunks) * L.chunks
        U.rows = min(L.chunks, L.nblocks - j)
        U.start, U.length, U.stride, U.group = o * L.n + j * L.block, L.block, L.block, o * L.nblocks + j
        U.tail = min(L.block, L.n - (j + U.rows - 1) * L.block)
        return U
    if L.per_axis:
        if L.inner == 1:  # lanes: a chunk of columns, all rows
            c0 = u * L.width
            U.start, U.rows, U.stride, U.group = c0, L.outer, L.n, c0
            U.length = min(L.width, L.n - c0)
        else:  # single: index u along the axis, one run per outer index
            U.start, U.rows, U.length, U.stride, U.group = u * L.inner, L.outer, L.inner, L.n * L.inner, u
    elif L.inner == 1:  # single: one block of a row
        o = u // L.nblocks
        j = u % L.nblocks
        U.start, U.rows, U.stride, U.group = o * L.n + j * L.block, 1, 0, u
        U.length = min(L.block, L.n - j * L.block)
    else:  # lanes: a chunk of columns of one block
        chunks = (L.inner + L.width - 1) // L.width
        c0 = (u % chunks) * L.width
        j = (u // chunks) % L.nblocks
        o = u // (chunks * L.nblocks)
        U.start = (o * L.n + j * L.block) * L.inner + c0
        U.rows = min(L.block, L.n - j * L.block)
        U.length = min(L.width, L.inner - c0)
        U.stride = L.inner
        U.group = (o * L.nblocks + j) * L.inner + c0
    U.tail = U.length
    return U


cdef inline Py_ssize_t span_length(const Unit* U) noexcept nogil:
    """The elements from a unit's start to its end (all of them for a runs unit)."""
    return (U.rows - 1) * U.stride + U.tail


cdef inline Py_ssize_t unit_groups(const Layout* L, const Unit* U) noexcept nogil:
    """The number of groups in a unit (consecutive from U.group)."""
    return U.length if L.lanes else (U.rows if L.runs else 1)


cdef inline Py_ssize_t lane_width(Py_ssize_t n, int threads, Py_ssize_t least) noexcept nogil:
    """Lanes per unit: whole rows where possible (contiguous reads), at least one unit a thread."""
    cdef Py_ssize_t w = (n + threads - 1) // threads
    w = (w + 15) // 16 * 16
    return max(least, min(w, <Py_ssize_t>16384))


cdef inline int threads_for(Py_ssize_t size) noexcept nogil:
    """Threads worth starting for `size` elements of streaming work."""
    return 1 if size < (1 << 17) else wqk_max_threads()


cdef inline void* at_phase(void* buf, const void* like) noexcept nogil:
    """The first address from buf on at like's offset in a 64-byte line (buf has 63 bytes to
    spare): a scratch vector read beside x element for element, so that when x's loads are
    aligned (see wqk_head) so are the vector's."""
    return <char*>buf + ((<uintptr_t>like - <uintptr_t>buf) & 63)


def max_threads():
    """The number of threads the kernels use on large arrays (OpenMP's, or 1 without OpenMP)."""
    return wqk_max_threads()


def set_max_threads(int n):
    """Use at most n threads in this thread's calls (OpenMP's omp_set_num_threads; nothing
    without OpenMP), fewer while the machine is busy."""
    wqk_set_max_threads(max(n, 1))


wqk_adapt_threads()  # fewer threads while the machine is busy (see _loops.h)
