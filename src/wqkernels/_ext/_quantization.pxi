# Quantization kernels: group statistics, scale search, quantize, fake-quantize, dequantize,
# sum-preserving rounding.

from libc.float cimport FLT_MAX, FLT_MIN
from libc.stdint cimport int8_t
from libc.string cimport memcpy, memset

cdef extern from "_loops.h" nogil:
    uint32_t wqk_max_abs_bits(const uint32_t* x, Py_ssize_t n, uint32_t acc)
    void wqk_key_range(const uint32_t* x, Py_ssize_t n, int32_t* lo, int32_t* hi)
    void wqk_key_rows(const uint32_t* x, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t w, int asymmetric,
                      int32_t* lo, int32_t* hi)
    int32_t wqk_key(uint32_t b)
    void wqk_key_runs(const uint32_t* x, Py_ssize_t count, Py_ssize_t length, Py_ssize_t tail, int asymmetric,
                      int32_t* lo, int32_t* hi)
    # Out: uint8_t (codes) or float (fake-quantized values)
    # ahead: the next unit's elements at these ones' place, fetched as these are made (NULL: none)
    void wqk_quantize_uniform[Out](const float* x, Out* out, Py_ssize_t n, float s, float zp, float qmin, float qmax,
                                   const float* ahead, Py_ssize_t ahead_n)
    void wqk_quantize_runs[Out](const float* x, Out* out, Py_ssize_t count, Py_ssize_t length, Py_ssize_t tail,
                                const float* s, const float* zp, float qmin, float qmax, const float* ahead,
                                Py_ssize_t ahead_n)
    void wqk_quantize_lanes[Out](const float* x, Out* out, Py_ssize_t n, const float* s, const float* zp,
                                 float qmin, float qmax, const float* ahead, Py_ssize_t ahead_n)
    Py_ssize_t wqk_page_stop[T](const T* y, Py_ssize_t i)
    T* wqk_offset[T](T* p, Py_ssize_t i)  # p + i, or NULL when p is NULL
    void wqk_dequantize_uniform(const uint8_t* q, float* y, Py_ssize_t n, float s, float zp, int is_signed)
    void wqk_dequantize_runs(const uint8_t* q, float* y, Py_ssize_t count, Py_ssize_t length, Py_ssize_t tail,
                             const float* s, const float* zp, int is_signed)
    void wqk_dequantize_lanes(const uint8_t* q, float* y, Py_ssize_t n, const float* s, const float* zp, int is_signed)
    void wqk_pack_span(const uint8_t* codes, Py_ssize_t n, int64_t first, int b, uint8_t* stream)
    void wqk_candidate_errors(const float* x, Py_ssize_t n, int ncand, const float* inv, const float* lo, const float* hi, double* acc)
    void wqk_candidate_errors_exact(const float* x, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t w, int ncand,
                                    const float* s, const float* lo, const float* hi, double* acc)
    ctypedef struct wqk_move:
        pass
    # Code: int8_t (signed codes) or uint8_t
    void wqk_preserve_sums[Code](const float* x, Code* q, Py_ssize_t w, Py_ssize_t lane, Py_ssize_t rows,
                                 Py_ssize_t row, Py_ssize_t length, const float* s,
                                 const float* zp, float qmin, float qmax, double* e, Code* code, wqk_move* moves)
    # the errors of x, or with "magnitudes" of |x| on a symmetric grid (lo unused)
    void wqk_candidate_errors_lanes "wqk_candidate_errors_lanes<false>"(
        const float* x, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t w, int ncand, const float* inv, const float* lo,
        const float* hi, float* acc)
    void wqk_candidate_magnitude_errors_lanes "wqk_candidate_errors_lanes<true>"(
        const float* x, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t w, int ncand, const float* inv, const float* lo,
        const float* hi, float* acc)
    void wqk_group_params(float lo, float hi, float ratio, int symmetric, float qmax, float* s, float* zp)
    void wqk_groups_params(const float* lo, const float* hi, Py_ssize_t n, float ratio, int symmetric, float qmax,
                           float* s, float* zp)
    void wqk_copy_rows(const float* x, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t w, int magnitudes, float* tile,
                       Py_ssize_t more)

cdef enum:
    LANE_WIDTH = 1024       # least lanes per unit for streaming loops
    SEARCH_WIDTH = 256      # lanes per unit in the scale search, at most (rows of 1 KiB)
    SEARCH_TILE = 1 << 18   # elements of a lanes unit copied once for all its passes, at most (1 MiB)
    SEARCH_CHUNK = 4096     # elements of a run scored against every candidate while in cache
    SEARCH_ROWS = 32        # rows of a lanes unit scored against every candidate while in cache
    SUM_TILE = 1 << 18      # members of the groups of a sum-preserving tile (64 groups of 4096: rows of 256 bytes)
    SUM_LANES = 64          # groups of a sum-preserving tile, at most (WQK_SUM_LANES)
    SUM_PAD = 72            # scratch entries after each group's (WQK_SUM_PAD)


cdef inline float key_to_float(int32_t k) noexcept nogil:
    cdef uint32_t b = <uint32_t>wqk_key(<uint32_t>k)  # the key map is its own inverse
    cdef float f
    memcpy(&f, &b, sizeof(float))
    return f


cdef inline void init_keys(int32_t* klo, int32_t* khi, Py_ssize_t count, bint asymmetric) noexcept nogil:
    cdef Py_ssize_t g
    for g in range(count):
        klo[g] = 0x7fffffff
        khi[g] = -0x7fffffff - 1 if asymmetric else 0


cdef void unit_keys(const uint32_t* bits, const Layout* L, const Unit* U, bint asymmetric,
                    int32_t* klo, int32_t* khi) noexcept nogil:
    """Accumulate the keys of a unit's groups (klo, khi point at its first group)."""
    cdef Py_ssize_t r
    cdef const uint32_t* p
    if L.runs:
        wqk_key_runs(bits + U.start, U.rows, U.length, U.tail, asymmetric, klo, khi)
        return
    if L.lanes:
        wqk_key_rows(bits + U.start, U.rows, U.stride, U.length, asymmetric, klo, khi)
        return
    for r in range(U.rows):
        p = bits + U.start + r * U.stride
        if asymmetric:
            wqk_key_range(p, U.length, klo, khi)
        else:
            khi[0] = <int32_t>wqk_max_abs_bits(p, U.length, <uint32_t>khi[0])


cdef bint keys_to_stats(const int32_t* klo, const int32_t* khi, Py_ssize_t count, bint asymmetric,
                        float* lo, float* hi) noexcept nogil:
    """Keys to floats: (min, max), or max|x| in hi; False if a group holds NaN or infinity."""
    cdef Py_ssize_t g
    cdef bint finite = True
    for g in range(count):
        if khi[g] >= <int32_t>0x7f800000 or (asymmetric and klo[g] <= wqk_key(0xff800000u)):
            finite = False
        if asymmetric:  # an empty group keeps its initial keys: report 0
            lo[g] = key_to_float(klo[g]) if klo[g] != 0x7fffffff else 0.0
            hi[g] = key_to_float(khi[g]) if khi[g] != -0x7fffffff - 1 else 0.0
        else:
            hi[g] = key_to_float(khi[g])  # non-negative bits are their own key
    return finite


cdef bint stats_pass(const float* x, Py_ssize_t size, const Layout* L, bint asymmetric,
                     Py_ssize_t ngroups, float* lo, float* hi) noexcept nogil:
    """One pass over x: every group's statistics; False if x holds NaN or infinity."""
    cdef void* blo = malloc(sizeof(int32_t) * max(ngroups, 1) + 64)
    cdef void* bhi = malloc(sizeof(int32_t) * max(ngroups, 1) + 64)
    cdef int32_t* klo = <int32_t*>at_phase(blo, x)  # lanes: group i beside element i of a row
    cdef int32_t* khi = <int32_t*>at_phase(bhi, x)
    cdef Py_ssize_t u
    cdef Unit U
    cdef bint finite
    if blo == NULL or bhi == NULL:
        free(blo); free(bhi)
        return False
    init_keys(klo, khi, ngroups, asymmetric)
    for u in prange(L.count, num_threads=threads_for(size), schedule="static"):
        U = unit_at(L, u)
        unit_keys(<const uint32_t*>x, L, &U, asymmetric, klo + U.group, khi + U.group)
    finite = keys_to_stats(klo, khi, ngroups, asymmetric, lo, hi)
    free(blo)
    free(bhi)
    return finite


def group_stats(const float[::1] x, Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner,
                Py_ssize_t block, bint per_axis, bint asymmetric, float[::1] lo, float[::1] hi):
    """Per group: hi = max|x| (symmetric), or lo = min x and hi = max x.  Returns all-finite."""
    cdef int nt = threads_for(x.shape[0])
    cdef Layout L = make_layout(outer, n, inner, block, per_axis, lane_width(inner if inner > 1 else n, nt, LANE_WIDTH))
    cdef bint finite
    with nogil:
        finite = stats_pass(&x[0] if x.shape[0] else NULL, x.shape[0], &L, asymmetric, hi.shape[0], &lo[0], &hi[0])
    return finite


def scales_from_stats(const float[::1] lo, const float[::1] hi, float ratio, bint symmetric,
                      float qmax, float[::1] scale, float[::1] zero_point):
    """The min/max scale and zero point of every group from its statistics."""
    with nogil:
        wqk_groups_params(&lo[0], &hi[0], hi.shape[0], ratio, symmetric, qmax, &scale[0], &zero_point[0])


def search_scales(const float[::1] x, Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner,
                  Py_ssize_t block, bint per_axis, const float[::1] lo, const float[::1] hi,
                  const float[::1] ratios, const int32_t[::1] steps, Py_ssize_t full_below,
                  bint symmetric, float qmin, float qmax, float[::1] scale, float[::1] zero_point):
    """Per group, the clipping ratio whose fake-quantization has the least squared error.

    Groups of fewer than `full_below` elements try every ratio.  Larger ones try every
    steps[0]-th from the first; then, for each later step, the ratios that many apart around
    the best so far, as many on each side as fit inside the previous step (steps decrease,
    each dividing the one before).  The first ratio with the least error among those tried wins.
    A unit holding a group that scored_exactly names scores all its groups as the reference does.
    """
    cdef Py_ssize_t rows = outer if per_axis else min(block, n)  # of a lanes unit
    cdef Layout L = make_layout(outer, n, inner, block, per_axis, search_width(rows), False)
    cdef int ncand = ratios.shape[0]
    cdef int nt = threads_for(x.shape[0] * ncand // 8)
    cdef Py_ssize_t u
    cdef int c
    cdef float least_ratio = ratios[0]
    with nogil:
        for c in range(ncand):
            least_ratio = min(least_ratio, ratios[c])
        for u in prange(L.count, num_threads=nt, schedule="dynamic"):
            search_unit(&x[0], &L, u, &lo[0], &hi[0], &ratios[0], ncand, least_ratio, &steps[0], steps.shape[0],
                        full_below, symmetric, qmin, qmax, &scale[0], &zero_point[0])


cdef inline Py_ssize_t search_width(Py_ssize_t rows) noexcept nogil:
    """Lanes per unit of the search: as many as SEARCH_TILE holds over `rows` rows, so that the
    unit is read from memory once for all the passes (16 to SEARCH_WIDTH, a multiple of 16)."""
    return min(<Py_ssize_t>SEARCH_WIDTH, max(16, SEARCH_TILE // max(rows, 1) // 16 * 16))


cdef struct Slots:
    # per slot (a candidate tried) and lane: its candidate (-1: none), inverse scale, scale,
    # zero point, code bounds and error (exact: in acc, per slot and lane); per lane the best so far
    int* cand
    float* inv
    float* s
    float* zp
    float* blo
    float* bhi
    float* err
    double* acc
    int* best
    double* best_e
    float* tile
    bint whole  # tile holds the whole unit (copied once, by the first pass), else SEARCH_ROWS rows at a time
    bint filled  # the whole unit is in the tile
    bint magnitudes  # the tile holds |x|: a symmetric grid's error is the same, for less work
    bint exact  # errors as the reference takes them (wqk_candidate_errors_exact), for every lane


cdef void set_slot(Slots* S, Py_ssize_t w, int slot, Py_ssize_t i, int c, float lo, float hi,
                   const float* ratios, bint symmetric, float qmin, float qmax) noexcept nogil:
    """Slot `slot` of lane i tries candidate c (c < 0: nothing; it repeats ratio 0, ignored)."""
    cdef Py_ssize_t k = slot * w + i
    S.cand[k] = c
    wqk_group_params(lo, hi, ratios[c if c >= 0 else 0], symmetric, qmax if symmetric else qmax - qmin,
                 &S.s[k], &S.zp[k])
    S.inv[k] = 1.0 / S.s[k]
    S.blo[k] = qmin - S.zp[k]
    S.bhi[k] = qmax - S.zp[k]
    S.err[k] = 0.0


cdef inline bint scored_exactly(float lo, float hi, float least_ratio, bint symmetric, float top) noexcept nogil:
    """Whether a group's candidates must be scored as the reference scores them: some
    candidate scale is subnormal (the least is at least (least_ratio * max|x|) / top, rounded
    alike), or |x| reaches FLT_MAX / 4.  A group of zeros has scale 1 for every candidate."""
    cdef float m = hi if symmetric else max(-lo, hi)
    return m >= FLT_MAX / 4 or (m > 0 and (least_ratio * m) / top < FLT_MIN)


cdef inline void lanes_errors(const Slots* S, const float* tile, Py_ssize_t rows, Py_ssize_t w,
                              int nslot) noexcept nogil:
    if S.exact:
        wqk_candidate_errors_exact(tile, rows, w, w, nslot, S.s, S.blo, S.bhi, S.acc)
    elif S.magnitudes:
        wqk_candidate_magnitude_errors_lanes(tile, rows, w, w, nslot, S.inv, S.blo, S.bhi, S.err)
    else:
        wqk_candidate_errors_lanes(tile, rows, w, w, nslot, S.inv, S.blo, S.bhi, S.err)


cdef void score_slots(const float* x, const Layout* L, const Unit* U, Py_ssize_t w, int nslot,
                      Slots* S) noexcept nogil:
    """The error of the first `nslot` slots over the unit's groups, then each lane's best: the
    least error, the first candidate among equals."""
    cdef Py_ssize_t r, m, c0, k, i
    cdef int j
    cdef double e
    cdef bint exact = S.exact, lanes = L.lanes  # locals: the stores below might alias them
    for k in range(nslot * (w if exact else 1)):
        S.acc[k] = 0.0
    if L.lanes:  # rows copied together (rows of a large power-of-two stride share cache sets)
        r = 0
        while r < U.rows:
            m = min(<Py_ssize_t>SEARCH_ROWS, U.rows - r)
            if S.filled:
                lanes_errors(S, S.tile + r * w, m, w, nslot)
            else:
                wqk_copy_rows(x + U.start + r * U.stride, m, U.stride, w, S.magnitudes,
                              S.tile + r * w if S.whole else S.tile, U.rows - r - m)
                lanes_errors(S, S.tile + r * w if S.whole else S.tile, m, w, nslot)
            r += m
        S.filled = S.whole
    else:
        for r in range(U.rows):
            c0 = 0
            while c0 < U.length:
                m = min(<Py_ssize_t>SEARCH_CHUNK, U.length - c0)
                if S.exact:
                    wqk_candidate_errors_exact(x + U.start + r * U.stride + c0, m, 1, 1, nslot, S.s, S.blo, S.bhi,
                                               S.acc)
                else:
                    wqk_candidate_errors(x + U.start + r * U.stride + c0, m, nslot, S.inv, S.blo, S.bhi, S.acc)
                c0 += m
    for i in range(w):
        for j in range(nslot):
            k = j * w + i
            if S.cand[k] < 0:
                continue
            if exact:
                e = S.acc[k]
            else:
                e = (S.err[k] if lanes else S.acc[j]) * (<double>S.s[k] * S.s[k])
            if S.best[i] < 0 or e < S.best_e[i] or (e == S.best_e[i] and S.cand[k] < S.best[i]):
                S.best[i], S.best_e[i] = S.cand[k], e


cdef void search_unit(const float* x, const Layout* L, Py_ssize_t u, const float* lo, const float* hi,
                      const float* ratios, int ncand, float least_ratio, const int32_t* steps,
                      Py_ssize_t nsteps, Py_ssize_t full_below, bint symmetric, float qmin, float qmax,
                      float* scale, float* zero_point) noexcept nogil:
    """The search of search_scales on the groups of unit u."""
    cdef Unit U = unit_at(L, u)
    cdef Py_ssize_t w = U.length if L.lanes else 1, i, k, level
    cdef Py_ssize_t size = U.rows if L.lanes else U.rows * U.length  # elements per group
    cdef bint full = size < full_below or nsteps == 0 or steps[0] <= 1
    cdef int first = ncand if full else (ncand + steps[0] - 1) // steps[0], nslot = first, j, c, span
    cdef Slots S
    if not full:
        for level in range(1, nsteps):
            nslot = max(nslot, 2 * (steps[level - 1] // steps[level] - 1))
    S.whole = L.lanes and not full and U.rows * w <= SEARCH_TILE  # several passes: one read of x
    S.magnitudes = L.lanes and symmetric and qmin == -qmax  # |x| scores only a grid symmetric about 0
    cdef Py_ssize_t tile_rows = U.rows if S.whole else SEARCH_ROWS
    S.exact = False
    for i in range(w):
        S.exact = S.exact or scored_exactly(lo[U.group + i], hi[U.group + i], least_ratio, symmetric,
                                            qmax if symmetric else qmax - qmin)
    cdef char* buf = <char*>malloc((sizeof(int) + 7 * sizeof(float)) * nslot * w
                                   + sizeof(double) * nslot * (w if S.exact else 1)
                                   + (sizeof(int) + sizeof(double)) * w + sizeof(float) * tile_rows * w)
    if buf == NULL:
        return  # out of memory: the min/max scales already in place stay
    S.acc = <double*>buf
    S.best_e = S.acc + nslot * (w if S.exact else 1)
    S.cand = <int*>(S.best_e + w)
    S.best = S.cand + nslot * w
    S.inv = <float*>(S.best + w)
    S.s = S.inv + nslot * w
    S.zp = S.s + nslot * w
    S.blo = S.zp + nslot * w
    S.bhi = S.blo + nslot * w
    S.err = S.bhi + nslot * w
    S.tile = S.err + nslot * w
    S.filled = False
    for i in range(w):
        S.best[i] = -1
        for j in range(first):  # all candidates, or every steps[0]-th
            c = j if full else j * steps[0]
            set_slot(&S, w, j, i, c if c < ncand else -1, lo[U.group + i], hi[U.group + i], ratios,
                     symmetric, qmin, qmax)
    score_slots(x, L, &U, w, first, &S)
    for level in range(1, 0 if full else nsteps):  # then around each lane's best, finer
        span = steps[level - 1] // steps[level] - 1  # candidates on each side
        for i in range(w):
            for j in range(2 * span):
                k = S.best[i] + ((j - span) if j < span else (j - span + 1)) * steps[level]
                set_slot(&S, w, j, i, k if 0 <= k < ncand else -1,
                         lo[U.group + i], hi[U.group + i], ratios, symmetric, qmin, qmax)
        score_slots(x, L, &U, w, 2 * span, &S)
    for i in range(w):
        wqk_group_params(lo[U.group + i], hi[U.group + i], ratios[S.best[i]], symmetric,
                     qmax if symmetric else qmax - qmin, &scale[U.group + i], &zero_point[U.group + i])
    free(buf)


cdef enum Op:
    QUANTIZE, FAKE_QUANTIZE, DEQUANTIZE, QUANTIZE_PACKED

cdef enum:
    FUSE_BYTES = 1 << 20    # a unit this small is read once: its scales, then its codes, in cache
    PACK_PIECE = 16384      # codes made at a time before they are packed (a unit row holds at most this many)


cdef inline const float* lane_zero_points(const float* zp, bint is_signed) noexcept nogil:
    """The zero points a lanes loop takes: NULL for signed codes, whose zero points are all 0."""
    if is_signed:
        return NULL
    return zp


cdef inline const float* row_ahead(const float* x, const Unit* V, Py_ssize_t r) noexcept nogil:
    """Row r of unit V, the next one, which the same row of this unit fetches as it is made (see
    wqk_ahead); NULL when V is NULL or has no such row."""
    if V == NULL or r >= V.rows:
        return NULL
    return x + V.start + r * V.stride


cdef inline void unit_span(Op op, bint lanes, const float* x, uint8_t* q, float* y, Py_ssize_t p, Py_ssize_t m,
                           const float* s, const float* zp, float qmin, float qmax, bint is_signed,
                           const float* ahead=NULL, Py_ssize_t ahead_n=0) noexcept nogil:
    """The m elements from p of one run of a unit: lanes, element p + i with s[i] and zp[i]; else
    all with s[0] and zp[0] (zp NULL: zero points 0).  Quantizing, the first ahead_n elements of
    `ahead` are fetched."""
    if op == QUANTIZE:
        if lanes:
            wqk_quantize_lanes(x + p, q + p, m, s, lane_zero_points(zp, is_signed), qmin, qmax, ahead, ahead_n)
        else:
            wqk_quantize_uniform(x + p, q + p, m, s[0], zp[0] if zp != NULL else 0.0, qmin, qmax, ahead, ahead_n)
    elif op == FAKE_QUANTIZE:
        if lanes:
            wqk_quantize_lanes(x + p, y + p, m, s, lane_zero_points(zp, is_signed), qmin, qmax, ahead, ahead_n)
        else:
            wqk_quantize_uniform(x + p, y + p, m, s[0], zp[0] if zp != NULL else 0.0, qmin, qmax, ahead, ahead_n)
    elif lanes:
        wqk_dequantize_lanes(q + p, y + p, m, s, zp, is_signed)
    else:
        wqk_dequantize_uniform(q + p, y + p, m, s[0], zp[0], is_signed)


cdef Py_ssize_t page_first(Op op, const Layout* L, const Unit* U, const float* x, uint8_t* q, float* y,
                           const float* s, const float* zp, float qmin, float qmax, bint is_signed,
                           Py_ssize_t i) noexcept nogil:
    """Writes the unit's last element in the output page that holds element i (see
    wqk_page_stop), before the unit's runs there are written in order; returns where that page
    ends.  The element is the unit's own, with its final value: no other thread writes it."""
    cdef Py_ssize_t stop = wqk_page_stop(q, i) if op == QUANTIZE else wqk_page_stop(y, i)
    cdef Py_ssize_t r = min(U.rows - 1, (stop - 1 - U.start) // U.stride) if U.stride > 0 else 0
    cdef Py_ssize_t p = U.start + r * U.stride  # the unit's last run that starts inside the page
    cdef Py_ssize_t c = min(p + U.length, stop) - 1 - p
    unit_span(op, L.lanes, x, q, y, p + c, 1, s + c if L.lanes else s, wqk_offset(zp, c) if L.lanes else zp, qmin,
              qmax, is_signed)
    return stop


cdef void unit_rows(Op op, const Layout* L, const Unit* U, const Unit* V, const float* x, uint8_t* q, float* y,
                    const float* s, const float* zp, float qmin, float qmax, bint is_signed) noexcept nogil:
    """The element loop over a unit's runs (s, zp point at the unit's first group), fetching the
    next unit V (NULL: none) as it goes.  A unit of runs far apart (the rows of a lanes unit)
    writes each output page it enters at its end first (page_first)."""
    cdef Py_ssize_t r, p, stop = 0  # the end of the output page page_first wrote last
    cdef const float* ahead
    cdef Py_ssize_t ahead_n
    if L.runs:
        ahead, ahead_n = row_ahead(x, V, 0), span_length(V) if V != NULL else 0
        if op == QUANTIZE:
            wqk_quantize_runs(x + U.start, q + U.start, U.rows, U.length, U.tail, s, zp, qmin, qmax, ahead, ahead_n)
        elif op == FAKE_QUANTIZE:
            wqk_quantize_runs(x + U.start, y + U.start, U.rows, U.length, U.tail, s, zp, qmin, qmax, ahead, ahead_n)
        else:
            wqk_dequantize_runs(q + U.start, y + U.start, U.rows, U.length, U.tail, s, zp, is_signed)
        return
    for r in range(U.rows):
        p = U.start + r * U.stride
        if U.rows > 1 and p + U.length > stop:
            stop = page_first(op, L, U, x, q, y, s, zp, qmin, qmax, is_signed, p + U.length - 1)
        unit_span(op, L.lanes, x, q, y, p, U.length, s, zp, qmin, qmax, is_signed, row_ahead(x, V, r),
                  V.length if V != NULL else 0)


cdef void unit_packed(const Layout* L, const Unit* U, const Unit* V, const float* x, uint8_t* stream,
                      uint8_t* codes, const float* s, const float* zp, float qmin, float qmax, bint is_signed,
                      int bits) noexcept nogil:
    """A unit's codes made a piece at a time into `codes` (PACK_PIECE bytes, in cache), each
    piece then packed into its place in the b-bit stream; the next unit V (NULL: none) is
    fetched as they are made."""
    cdef Py_ssize_t r, p, c, m, ahead_n
    cdef const float* ahead
    if L.runs:  # its blocks are one contiguous span
        wqk_quantize_runs(x + U.start, codes, U.rows, U.length, U.tail, s, zp, qmin, qmax, row_ahead(x, V, 0),
                          span_length(V) if V != NULL else 0)
        wqk_pack_span(codes, span_length(U), U.start, bits, stream)
        return
    for r in range(U.rows):
        p = U.start + r * U.stride
        ahead = row_ahead(x, V, r)
        ahead_n = V.length if V != NULL else 0
        if L.lanes:
            wqk_quantize_lanes(x + p, codes, U.length, s, lane_zero_points(zp, is_signed), qmin, qmax, ahead, ahead_n)
            wqk_pack_span(codes, U.length, p, bits, stream)
            continue
        c = 0
        while c < U.length:  # pieces after the first start on a byte of the stream
            m = min(<Py_ssize_t>PACK_PIECE - (p + c) % 8, U.length - c)
            wqk_quantize_uniform(x + p + c, codes, m, s[0], zp[0] if zp != NULL else 0.0, qmin, qmax,
                                 wqk_offset(ahead, c), ahead_n - c)
            wqk_pack_span(codes, m, p + c, bits, stream)
            c += m


cdef inline void zero_cut(uint8_t* stream, Py_ssize_t nbytes, int64_t first, Py_ssize_t n, int bits) noexcept nogil:
    """Zeroes the bytes of the groups of 8 codes that the span of codes first .. first + n - 1
    cuts at either end (of the nbytes of the stream)."""
    cdef int64_t at
    if first % 8:
        at = first // 8 * bits
        memset(stream + at, 0, min(<int64_t>bits, nbytes - at))
    if (first + n) % 8:
        at = (first + n) // 8 * bits
        memset(stream + at, 0, min(<int64_t>bits, nbytes - at))


cdef void zero_shared(const Layout* L, uint8_t* stream, Py_ssize_t nbytes, int bits) noexcept nogil:
    """Zeroes the bytes of the stream that unit_packed's pieces share, which they OR their codes
    into (wqk_pack_span): those of the groups of 8 codes that a row or span boundary cuts.  Pieces
    store every other byte whole."""
    cdef Py_ssize_t u, r
    cdef Unit U
    for u in range(L.count):
        U = unit_at(L, u)
        if L.runs:
            zero_cut(stream, nbytes, U.start, span_length(&U), bits)
        else:
            for r in range(U.rows):
                zero_cut(stream, nbytes, U.start + r * U.stride, U.length, bits)


cdef inline Py_ssize_t fit_scratch(const Layout* L) noexcept nogil:
    """Bytes of unit_fit's scratch: keys and statistics of a unit's groups, at most."""
    cdef Py_ssize_t w = L.width if L.lanes else (L.chunks if L.runs else 1)
    return (sizeof(int32_t) * 2 * w + 128 + sizeof(float) * 2 * w + 63) // 64 * 64


cdef bint unit_fit(const float* x, const Layout* L, const Unit* U, bint symmetric, float qmin,
                   float qmax, float* s, float* zp, void* scratch) noexcept nogil:
    """The min/max scale and zero point of a unit's groups (zp NULL when symmetric: not written);
    False if one holds NaN or infinity.  `scratch`: fit_scratch(L) bytes."""
    cdef Py_ssize_t w = unit_groups(L, U)
    cdef int32_t* klo = <int32_t*>at_phase(scratch, x + U.start)  # lanes: group i beside element i of a row
    cdef int32_t* khi = <int32_t*>at_phase(klo + w, x + U.start)
    cdef float* stats = <float*>(<char*>scratch + sizeof(int32_t) * 2 * w + 128)
    cdef bint finite
    init_keys(klo, khi, w, not symmetric)
    unit_keys(<const uint32_t*>x, L, U, not symmetric, klo, khi)
    finite = keys_to_stats(klo, khi, w, not symmetric, stats, stats + w)
    wqk_groups_params(stats, stats + w, w, 1.0, symmetric, qmax if symmetric else qmax - qmin, s, zp)
    return finite


cdef int elementwise(Op op, const float* x, uint8_t* q, float* y, Py_ssize_t size,
                      Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner, Py_ssize_t block,
                      bint per_axis, float* s, float* zp, float qmin, float qmax,
                      bint is_signed, bint fit, int bits=8) noexcept nogil:
    """Quantize, quantize into a `bits`-bit stream (q, of ceil(size * bits / 8) bytes, which need
    not be zeroed), fake-quantize or dequantize.
    With `fit`, first set every group's min/max scale (symmetric when is_signed): in the same
    visit of each unit when units fit in cache, else in a pass of its own.  Making signed codes,
    whose zero points are all 0, zp is neither read nor written (a fresh array of zeros stays
    untouched: no page of it is faulted in).  Returns 1, or 0 if x holds NaN or infinity (fit
    only), or -1 if scratch memory cannot be allocated."""
    cdef int nt = threads_for(size)
    cdef Layout L = make_layout(outer, n, inner, block, per_axis, lane_width(inner if inner > 1 else n, nt, LANE_WIDTH))
    cdef Unit U, V
    cdef Py_ssize_t u, ngroups = n if per_axis else outer * L.nblocks * inner
    cdef float* zp_codes = <float*>NULL if is_signed and op != DEQUANTIZE else zp  # the zero points the codes use
    cdef int bad = 0
    cdef bint fused = fit and L.count > 0
    cdef uint8_t* codes = NULL  # per thread, PACK_PIECE codes of QUANTIZE_PACKED
    if op == QUANTIZE_PACKED:
        codes = <uint8_t*>malloc(<size_t>PACK_PIECE * nt)
        if codes == NULL:
            return -1
        zero_shared(&L, q, (size * bits + 7) // 8, bits)
    cdef char* fitting = NULL  # per thread, unit_fit's scratch
    if fused:
        U = unit_at(&L, 0)
        fused = U.rows * U.length * sizeof(float) <= FUSE_BYTES
    if fused:
        fitting = <char*>malloc(fit_scratch(&L) * nt)
        if fitting == NULL:
            free(codes)
            return -1
    if fit and not fused:
        if not stats_pass(x, size, &L, not is_signed, ngroups, zp, s):
            free(codes)
            return False
        wqk_groups_params(zp, s, ngroups, 1.0, is_signed, qmax if is_signed else qmax - qmin, s, zp_codes)
    cdef const float* ls = s  # the scales and zero points the loops read
    cdef const float* lz = zp_codes
    cdef void* phased = NULL
    if L.lanes and not fused and x != NULL:  # read beside x: copies at x's phase (see at_phase)
        phased = malloc(sizeof(float) * 2 * ngroups + 128)
        if phased != NULL:
            ls = <float*>at_phase(phased, x)
            lz = <float*>at_phase(<void*>(ls + ngroups), x) if zp_codes != NULL else <float*>NULL
            memcpy(<void*>ls, s, sizeof(float) * ngroups)
            if lz != NULL:
                memcpy(<void*>lz, zp_codes, sizeof(float) * ngroups)
    for u in prange(L.count, num_threads=nt, schedule="static"):
        U = unit_at(&L, u)
        if fused and not unit_fit(x, &L, &U, is_signed, qmin, qmax, s + U.group, wqk_offset(zp_codes, U.group),
                                  fitting + fit_scratch(&L) * threadid()):
            bad += 1
        if fused and u + 1 < L.count:  # read twice, in cache the second time: fetch the next unit then
            V = unit_at(&L, u + 1)
        if op == QUANTIZE_PACKED:
            unit_packed(&L, &U, &V if fused and u + 1 < L.count else NULL, x, q,
                        codes + <Py_ssize_t>PACK_PIECE * threadid(), ls + U.group, wqk_offset(lz, U.group), qmin,
                        qmax, is_signed, bits)
        else:
            unit_rows(op, &L, &U, &V if fused and u + 1 < L.count else NULL, x, q, y, ls + U.group,
                      wqk_offset(lz, U.group), qmin, qmax, is_signed)
    free(phased)
    free(codes)
    free(fitting)
    return bad == 0


def quantize_into(const float[::1] x, uint8_t[::1] codes, Py_ssize_t outer, Py_ssize_t n,
                  Py_ssize_t inner, Py_ssize_t block, bint per_axis, float[::1] scale,
                  float[::1] zero_point, float qmin, float qmax, bint fit=False):
    """codes = clamp(rint(x / scale) + zero_point, qmin, qmax), as bytes (two's complement).

    With fit, scale and zero_point are outputs: each group's min/max ones (symmetric when
    qmin < 0).  Signed codes (qmin < 0) have zero points 0: zero_point is neither read nor
    written then.  Returns False if x holds NaN or infinity (then nothing written is meaningful).
    """
    cdef int ok
    if x.shape[0] == 0:
        return True
    with nogil:
        ok = elementwise(QUANTIZE, &x[0], &codes[0], NULL, x.shape[0], outer, n, inner, block, per_axis,
                         &scale[0], &zero_point[0], qmin, qmax, qmin < 0, fit)
    if ok < 0:
        raise MemoryError()
    return ok == 1


def quantize_packed_into(const float[::1] x, uint8_t[::1] stream, Py_ssize_t outer, Py_ssize_t n,
                         Py_ssize_t inner, Py_ssize_t block, bint per_axis, float[::1] scale,
                         float[::1] zero_point, float qmin, float qmax, int bits, bint fit=False):
    """The codes of quantize_into packed into a `bits`-bit stream (pack_into's), one piece at a
    time in cache: x read once, the stream written once (its prior contents do not matter).
    Returns as quantize_into does; raises MemoryError when scratch memory cannot be allocated."""
    cdef int ok
    if x.shape[0] == 0:
        return True
    with nogil:
        ok = elementwise(QUANTIZE_PACKED, &x[0], &stream[0], NULL, x.shape[0], outer, n, inner, block,
                         per_axis, &scale[0], &zero_point[0], qmin, qmax, qmin < 0, fit, bits)
    if ok < 0:
        raise MemoryError()
    return ok == 1


def fake_quantize_into(const float[::1] x, float[::1] out, Py_ssize_t outer, Py_ssize_t n,
                       Py_ssize_t inner, Py_ssize_t block, bint per_axis, float[::1] scale,
                       float[::1] zero_point, float qmin, float qmax, bint fit=False):
    """out = (code - zero_point) * scale, in one pass; `fit` as for quantize_into."""
    cdef int ok
    if x.shape[0] == 0:
        return True
    with nogil:
        ok = elementwise(FAKE_QUANTIZE, &x[0], NULL, &out[0], x.shape[0], outer, n, inner, block,
                         per_axis, &scale[0], &zero_point[0], qmin, qmax, qmin < 0, fit)
    if ok < 0:
        raise MemoryError()
    return ok == 1


def dequantize_into(const uint8_t[::1] codes, float[::1] out, Py_ssize_t outer, Py_ssize_t n,
                    Py_ssize_t inner, Py_ssize_t block, bint per_axis, const float[::1] scale,
                    const float[::1] zero_point, bint is_signed):
    """out = (code - zero_point) * scale; codes are int8 when is_signed, else uint8."""
    if codes.shape[0] == 0:
        return
    with nogil:
        elementwise(DEQUANTIZE, NULL, <uint8_t*>&codes[0], &out[0], codes.shape[0], outer, n, inner,
                    block, per_axis, <float*>&scale[0], <float*>&zero_point[0], 0.0, 0.0, is_signed, False)


cdef struct SumTile:
    Py_ssize_t start, w, lane, rows, row, length, group


cdef SumTile sum_tile(Py_ssize_t t, Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner, Py_ssize_t block,
                      bint per_axis, Py_ssize_t lanes) noexcept nogil:
    """Tile t of sum-preserving rounding: up to `lanes` groups side by side (see wqk_preserve_sums;
    elem is 1 throughout).  Per axis: channels j0.. of `outer` runs of `inner`; blocks across a
    strided axis: groups (o, b, i0..) of one member per row; blocks along a contiguous axis: the
    full blocks b0.. of slice o, or its short last block alone."""
    cdef SumTile T
    cdef Py_ssize_t nb = (n + block - 1) // block, per, o, b, i0, full
    if per_axis:
        T.group = t * lanes
        T.w, T.lane = min(lanes, n - T.group), inner
        T.rows, T.row, T.length = outer, n * inner, inner
        T.start = T.group * inner
    elif inner > 1:
        per = (inner + lanes - 1) // lanes
        i0, b, o = (t % per) * lanes, (t // per) % nb, t // (per * nb)
        T.w, T.lane = min(lanes, inner - i0), 1
        T.rows, T.row, T.length = min(block, n - b * block), inner, 1
        T.start = o * n * inner + b * block * inner + i0
        T.group = (o * nb + b) * inner + i0
    else:
        full = n // block
        per = (full + lanes - 1) // lanes + (1 if n % block else 0)
        o, b = t // per, (t % per) * lanes
        T.rows, T.row = 1, 0
        if b < full:
            T.w, T.lane, T.length = min(lanes, full - b), block, block
        else:
            b, T.w, T.lane, T.length = full, 1, block, n - full * block
        T.start = o * n + b * block
        T.group = o * nb + b
    return T


cdef void sum_tile_codes(const float* x, uint8_t* codes, SumTile T, const float* scale, const float* zero_point,
                         float qmin, float qmax, double* e, uint8_t* code, wqk_move* moves, Py_ssize_t scratch,
                         Py_ssize_t size, int own) noexcept nogil:
    """The sum-preserving codes of tile T, made with the scratch of thread `own`."""
    e += own * scratch
    code += own * scratch
    moves += own * size
    if qmin < 0:
        wqk_preserve_sums[int8_t](x + T.start, <int8_t*>(codes + T.start), T.w, T.lane, T.rows, T.row, T.length,
                                  scale + T.group, zero_point + T.group, qmin, qmax, e, <int8_t*>code, moves)
    else:
        wqk_preserve_sums[uint8_t](x + T.start, codes + T.start, T.w, T.lane, T.rows, T.row, T.length,
                                   scale + T.group, zero_point + T.group, qmin, qmax, e, code, moves)


def quantize_sums_into(const float[::1] x, uint8_t[::1] codes, Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner,
                       Py_ssize_t block, bint per_axis, const float[::1] scale, const float[::1] zero_point,
                       float qmin, float qmax):
    """codes = the sum-preserving rounding of x, group by group (one scale each; a per-tensor
    group is one block of the whole array): the codes of quantize_into, made in the pass that
    adds up their residuals, then the fewest moved one step so that each group's codes sum to
    the integer nearest the sum of x / scale + zero_point (see wqk_preserve_sums).  Codes are
    int8 when qmin < 0, else uint8; x is finite."""
    cdef Py_ssize_t size, lanes, tiles, t
    cdef int nt
    cdef double* e
    cdef uint8_t* code
    cdef wqk_move* moves
    if x.shape[0] == 0:
        return
    size = outer * inner if per_axis else min(block, n)  # members of a group
    lanes = max(1, min(<Py_ssize_t>SUM_LANES, SUM_TILE // max(size, 1)))
    if per_axis:
        tiles = (n + lanes - 1) // lanes
    elif inner > 1:
        tiles = outer * ((n + block - 1) // block) * ((inner + lanes - 1) // lanes)
    else:
        tiles = outer * ((n // block + lanes - 1) // lanes + (1 if n % block else 0))
    nt = <int>min(<Py_ssize_t>threads_for(x.shape[0]), tiles)
    e = <double*>malloc(sizeof(double) * lanes * (size + SUM_PAD) * nt)
    code = <uint8_t*>malloc(lanes * (size + SUM_PAD) * nt)
    moves = <wqk_move*>malloc(sizeof(wqk_move) * size * nt)
    if e == NULL or code == NULL or moves == NULL:
        free(e)
        free(code)
        free(moves)
        raise MemoryError()
    with nogil:
        for t in prange(tiles, num_threads=nt, schedule="dynamic"):
            sum_tile_codes(&x[0], &codes[0], sum_tile(t, outer, n, inner, block, per_axis, lanes), &scale[0],
                           &zero_point[0], qmin, qmax, e, code, moves, lanes * (size + SUM_PAD), size, threadid())
    free(e)
    free(code)
    free(moves)
