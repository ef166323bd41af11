# Pruning kernels: exact magnitude selection, threshold, N:M, channels, clip, shrink.
#
# Magnitude selection (prune by sparsity, prune_global) zeroes the k smallest keys of one or
# more arrays taken as one sequence ("segments"), ties broken by the lower position.  It finds
# the k-th smallest key t and its rank r among the keys equal to t, then the position of the
# r-th key equal to t (the "cut"), and writes y = 0 where key < t, or key == t up to the cut.
# Large inputs take a fast path: evenly spaced samples give a window [lo, hi] of keys that
# holds t with high probability; one pass counts the keys below lo, copies out the keys in
# the window with their positions and (when y is not x) already writes y = (key < guess) ? 0 : x
# by a guess of t inside the window.  t and the cut then come from the small window alone, and
# the window's entries between the guess and t are written again in y.  When the window misses (the counts say so exactly) or for small inputs, a radix select
# over all the keys finds t: histograms of 11-bit digits, most significant first.
#
# Every kernel reports whether its input held an infinity or a NaN (False, or NONFINITE) and
# the Python layer raises; work in place checks before it writes anything.

from libc.string cimport memset, memcpy
from libc.math cimport sqrt, floor, ceil

cdef extern from "_bit_loops.h" nogil:
    void wqk_prefetch(const void* p)
    enum: WQK_SCAN_SLACK
    bint wqk_use_avx512_scan(bint on)
    K wqk_scan[K](const K* x, K* y, Py_ssize_t n, Py_ssize_t reach, K lo, K hi, K guess, int64_t base, K* keys,
                  int64_t* index, int64_t cap, int64_t* counts)
    void wqk_histogram[K](const K* x, Py_ssize_t n, K prefix, int above, int shift, uint32_t mask,
                          int64_t* hist)
    Py_ssize_t wqk_compact[K](const K* x, Py_ssize_t n, K prefix, int above, K* out)
    void wqk_fix_listed[K](const K* x, K* y, K* keys, int64_t* index, Py_ssize_t count,
                           K guess, K t, int64_t cut, int64_t base)
    void* wqk_scratch_take(size_t bytes)
    void wqk_scratch_give(void* p, size_t bytes)
    Py_ssize_t wqk_find_equal[K](const K* x, Py_ssize_t n, K t, int64_t* r)
    K wqk_mask_below[K](const K* x, K* y, Py_ssize_t n, K t, Py_ssize_t cut)
    K wqk_n_m_runs[K](const K* x, K* y, Py_ssize_t runs, int m, int n, K* rank)
    K wqk_n_m_lanes[K](const K* x, K* y, Py_ssize_t lanes, Py_ssize_t stride, int length, int n,
                       K* rank, Py_ssize_t chunk)
    double wqk_norm_run[K](const K* x, Py_ssize_t n, int ord)
    void wqk_norm_lanes[K](const K* x, Py_ssize_t n, int ord, double* acc)
    void wqk_keep_lanes[K](const K* x, K* y, Py_ssize_t n, const K* keep)
    K wqk_clip[K](const K* x, K* y, Py_ssize_t n, K lo, K hi)
    K wqk_shrink[K](const K* x, K* y, Py_ssize_t n, double alpha)

cdef enum:
    RADIX_BITS = 11             # bits per digit of the radix select
    MAX_PARTS = 64              # at most this many threads share a pass
    SAMPLE_AHEAD = 32          # sample runs fetched ahead of use (their loads are cache misses)
    SAMPLE_RUN = 8              # consecutive keys per sample position (one TLB miss each)
    RANK_SCRATCH = 4096         # ranks held at once by the N:M kernel (they stay in L1)
    LANE_CHUNK = 1024           # channels per task when the channel axis is the last one

cdef enum Status:
    DONE = 0
    NONFINITE = -1
    NO_MEMORY = -2

cdef enum BitsOp:
    THRESHOLD, CLIP, SHRINK, CHECK

# half-width of the sampled window in binomial standard deviations: the sample misses t with
# probability ~0.3 % (then the exact fallback runs, ~4x slower); a wider window copies out
# more keys on every call
cdef double WINDOW_SIGMAS = 3.0


cdef inline int parts_for(int64_t total) noexcept nogil:
    return min(threads_for(total), <int>MAX_PARTS)


cdef inline int64_t part_start(int64_t total, int parts, int p) noexcept nogil:
    """Start of part p when [0, total) is cut into `parts` nearly equal parts."""
    return total * p // parts


cdef inline bint overlap(const Segment[key_t]* s, int64_t a, int64_t b, Py_ssize_t* start,
                         Py_ssize_t* length) noexcept nogil:
    """The piece of segment s inside [a, b) of the whole sequence, if any (offsets into s)."""
    cdef int64_t lo = a if a > s.base else s.base
    cdef int64_t hi = b if b < s.base + s.n else s.base + s.n
    if lo >= hi:
        return False
    start[0] = lo - s.base
    length[0] = hi - lo
    return True


# ---- selection ------------------------------------------------------------------------------

cdef Status radix_select(const Segment[key_t]* runs, Py_ssize_t nruns, int64_t k,
                         int nt, bint check, key_t prefix, int bits, key_t* t_out,
                         int64_t* r_out) noexcept nogil:
    """The k-th smallest key (1-based) of the runs, and its rank r among the keys equal to it.

    MSD radix select: a histogram of the top 11-bit digit, then of the next digit among the
    keys with the chosen prefix, and so on.  Once the keys left are a quarter or less they
    are copied out and the remaining digits are counted on the copy.  All keys share their
    bits above the lowest `bits` (they are `prefix`): start with prefix 0 and bits = width - 1
    for any keys.  With `check` (from the top), the first histogram also tells whether any key
    is an infinity or NaN (NONFINITE).
    """
    cdef int width = sizeof(key_t) * 8
    cdef int digit, shift, above = bits, t, p
    cdef int64_t total = 0, below, bucket, m
    cdef Py_ssize_t i, v, start, length, nbins
    cdef int64_t* hist = <int64_t*>malloc(sizeof(int64_t) * (nt << RADIX_BITS))
    cdef key_t* own = NULL
    cdef key_t* fresh
    cdef Segment[key_t] one
    if hist == NULL:
        return NO_MEMORY
    for i in range(nruns):
        total += runs[i].n
    while bits > 0:
        digit = RADIX_BITS if bits > RADIX_BITS else bits
        shift = bits - digit
        nbins = 1 << digit
        memset(hist, 0, sizeof(int64_t) * (nt << RADIX_BITS))
        for p in prange(nt, num_threads=nt, schedule="static"):
            for i in range(nruns):
                if overlap(&runs[i], part_start(total, nt, p), part_start(total, nt, p + 1), &start, &length):
                    wqk_histogram(runs[i].x + start, length, prefix, above, shift,
                                  nbins - 1, hist + (p << RADIX_BITS))
        for t in range(1, nt):
            for v in range(nbins):
                hist[v] += hist[(t << RADIX_BITS) + v]
        if check and bits == width - 1:
            # infinity's key has no bits below the top digit's: a bucket is all finite or none
            for v in range(nbins):
                if hist[v] and not finite_key(<key_t>(<key_t>v << shift)):
                    free(own)
                    free(hist)
                    return NONFINITE
        below = 0
        v = 0
        while below + hist[v] < k:
            below += hist[v]
            v += 1
        k -= below
        bucket = hist[v]
        prefix = <key_t>((prefix << digit) | <key_t>v)
        above = shift
        bits = shift
        if bits > 0 and bucket * 4 <= total:  # few keys left: copy them out
            fresh = <key_t*>malloc(sizeof(key_t) * (bucket + 1))  # compact writes one past
            if fresh == NULL:
                free(own)
                free(hist)
                return NO_MEMORY
            m = 0
            for i in range(nruns):
                m += wqk_compact(runs[i].x, runs[i].n, prefix, above, fresh + m)
            free(own)
            own = fresh
            one.x = own
            one.y = NULL
            one.n = m
            one.base = 0
            runs = &one
            nruns = 1
            total = m
    free(own)
    free(hist)
    t_out[0] = prefix
    r_out[0] = k
    return DONE


cdef int64_t find_equal(const Segment[key_t]* segs, Py_ssize_t nseg, key_t t,
                        int64_t r) noexcept nogil:
    """Position (in the whole sequence) of the r-th key equal to t, in order; -1 if r <= 0."""
    cdef Py_ssize_t s, i
    if r <= 0:
        return -1
    for s in range(nseg):
        i = wqk_find_equal(segs[s].x, segs[s].n, t, &r)
        if i >= 0:
            return segs[s].base + i
    return -1


cdef bint mask_segments(const Segment[key_t]* segs, Py_ssize_t nseg, int64_t total,
                        key_t t, int64_t cut) noexcept nogil:
    """y = 0 where key < t, or key == t at a position <= cut; else x.  False if a key is not finite."""
    cdef int nt = parts_for(total), p, bad = 0
    cdef Py_ssize_t s, start, length
    cdef key_t top
    for p in prange(nt, num_threads=nt, schedule="static"):
        top = 0
        for s in range(nseg):
            if overlap(&segs[s], part_start(total, nt, p), part_start(total, nt, p + 1), &start, &length):
                top = max(top, wqk_mask_below(segs[s].x + start, segs[s].y + start,
                                              length, t, cut + 1 - (segs[s].base + start)))
        bad += not finite_key(top)
    return bad == 0


cdef bint check_segments(const Segment[key_t]* segs, Py_ssize_t nseg,
                         int64_t total) noexcept nogil:
    """False if a key is an infinity or NaN (a read-only pass, for work in place)."""
    cdef int nt = parts_for(total), p, bad = 0
    cdef Py_ssize_t s, start, length
    cdef key_t top
    for p in prange(nt, num_threads=nt, schedule="static"):
        top = 0
        for s in range(nseg):
            if overlap(&segs[s], part_start(total, nt, p), part_start(total, nt, p + 1), &start, &length):
                wqk_count_below(segs[s].x + start, length, <key_t>0, &top)
        bad += not finite_key(top)
    return bad == 0


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """A well-mixed function of z (splitmix64's finaliser): cheap, fixed pseudo-random numbers."""
    z = (z + <uint64_t>0x9e3779b97f4a7c15ULL) * <uint64_t>0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 30)) * <uint64_t>0x94d049bb133111ebULL
    return z ^ (z >> 31)


cdef Status sample_window(const Segment[key_t]* segs, Py_ssize_t nseg, int64_t total,
                          int64_t k, Py_ssize_t size, key_t* lo, key_t* hi,
                          int64_t* expected) noexcept nogil:
    """Keys lo <= hi such that the k-th smallest key is in [lo, hi] with high probability.

    The sequence is cut into size / SAMPLE_RUN strata and a run of SAMPLE_RUN keys (one cache
    line) is taken at a pseudo-random place in each, so that a period in the data (such as
    columns of different scale) cannot bias the sample; lo and hi are the sample's order
    statistics WINDOW_SIGMAS binomial standard deviations below and above rank
    k * size / total.  `expected` is about how many keys of the whole sequence fall in the
    window.
    """
    cdef Py_ssize_t runs = max(size // SAMPLE_RUN, 1), i, j, s = 0, s_read = 0, s_key
    cdef key_t* sample
    cdef int64_t ring[SAMPLE_AHEAD]  # where the next runs start, already being fetched
    cdef int64_t a, g, r, rank_lo, rank_hi
    cdef uint64_t stratum
    cdef double p, centre, spread
    cdef Segment[key_t] one
    cdef Status status = DONE
    size = runs * SAMPLE_RUN
    sample = <key_t*>malloc(sizeof(key_t) * size)
    if sample == NULL:
        return NO_MEMORY
    for j in range(runs + SAMPLE_AHEAD):
        if j < runs:
            a = j * total // runs
            stratum = (j + 1) * total // runs - a
            if stratum >> 32:
                g = a + <int64_t>(mix64(j) % stratum)
            else:  # a multiply instead of a division
                g = a + <int64_t>(((mix64(j) >> 32) * stratum) >> 32)
            g -= g % SAMPLE_RUN  # never below the previous run's start
            ring[j % SAMPLE_AHEAD] = g
            while segs[s].base + segs[s].n <= g:
                s += 1
            wqk_prefetch(<const key_t*>segs[s].x + (g - segs[s].base))
        if j >= SAMPLE_AHEAD:
            g = ring[(j - SAMPLE_AHEAD) % SAMPLE_AHEAD]
            while segs[s_read].base + segs[s_read].n <= g:
                s_read += 1
            s_key = s_read
            if g + SAMPLE_RUN <= segs[s_read].base + segs[s_read].n:  # the run is in one segment
                for i in range(SAMPLE_RUN):
                    sample[(j - SAMPLE_AHEAD) * SAMPLE_RUN + i] = \
                        magnitude(segs[s_read].x[g - segs[s_read].base + i])
                continue
            for i in range(SAMPLE_RUN):  # the run crosses into the next segments
                g = min(ring[(j - SAMPLE_AHEAD) % SAMPLE_AHEAD] + i, total - 1)
                while segs[s_key].base + segs[s_key].n <= g:
                    s_key += 1
                sample[(j - SAMPLE_AHEAD) * SAMPLE_RUN + i] = \
                    magnitude(segs[s_key].x[g - segs[s_key].base])
    one.x = sample
    one.y = NULL
    one.n = size
    one.base = 0
    p = <double>k / total
    centre = p * size
    spread = WINDOW_SIGMAS * sqrt(size * p * (1.0 - p)) + 1.0
    rank_lo = <int64_t>floor(centre - spread)
    rank_hi = <int64_t>ceil(centre + spread)
    lo[0] = 0
    hi[0] = magnitude(<key_t>~(<key_t>0))
    if rank_lo >= 1:
        status = radix_select(&one, 1, rank_lo, 1, False, <key_t>0, sizeof(key_t) * 8 - 1, lo, &r)
    if status == DONE and rank_hi <= size:
        status = radix_select(&one, 1, rank_hi, 1, False, <key_t>0, sizeof(key_t) * 8 - 1, hi, &r)
    free(sample)
    rank_lo = max(rank_lo, <int64_t>0)
    rank_hi = min(rank_hi, <int64_t>size)
    expected[0] = <int64_t>(<double>(rank_hi - rank_lo + 1) / size * total)
    return status


cdef void fix_window(const Segment[key_t]* segs, Py_ssize_t nseg, key_t* keys,
                     int64_t* index, Py_ssize_t count, key_t guess, key_t t,
                     int64_t cut) noexcept nogil:
    """Write again in y the window entries the scan wrote by `guess` instead of t: those that
    go are key < t, or key == t at a position <= cut."""
    cdef Py_ssize_t s, first = 0, last
    for s in range(nseg):
        last = first
        while last < count and index[last] < segs[s].base + segs[s].n:
            last += 1
        wqk_fix_listed(segs[s].x, segs[s].y, keys + first, index + first, last - first, guess, t,
                       cut, segs[s].base)
        first = last


cdef Status prune_rank_segments(const Segment[key_t]* segs, Py_ssize_t nseg,
                                int64_t total, int64_t k, bint inplace, Py_ssize_t sample_size,
                                int64_t sample_min) noexcept nogil:
    """Zero the k smallest keys of the segments (ties: lower position first) into their y.

    Returns NONFINITE (before writing anything, when in place) if a key is an infinity or NaN.
    """
    cdef int nt = parts_for(total), p, bits
    cdef key_t lo, hi, guess, t = 0, top = 0
    cdef int64_t r, cut = -1, less = 0, inside = 0, cap, room, expected
    cdef size_t scratch
    cdef bint scanned_into_y = not inplace, copied_out
    cdef Py_ssize_t s, c, start, length
    cdef Status status
    cdef key_t* keys
    cdef int64_t* index
    cdef int64_t counts[2 * MAX_PARTS]  # per part: keys below lo, keys in the window
    cdef key_t tops[MAX_PARTS]
    cdef Segment[key_t] cand[MAX_PARTS]       # per part: its window entries (keys, in order)

    if k <= 0:  # nothing goes: a copy, with the finiteness check
        if inplace:
            return DONE if check_segments(segs, nseg, total) else NONFINITE
        return DONE if mask_segments(segs, nseg, total, 0, -1) else NONFINITE

    if total < sample_min or sample_size <= 0:
        status = radix_select(segs, nseg, k, nt, True, <key_t>0, sizeof(key_t) * 8 - 1, &t, &r)
        if status == DONE:
            mask_segments(segs, nseg, total, t, find_equal(segs, nseg, t, r))
        return status

    status = sample_window(segs, nseg, total, k, min(<int64_t>sample_size, total),
                           &lo, &hi, &expected)
    if status != DONE:
        return status
    # the scan writes y by this guess of t; in a window of ~1 % of the keys their values are
    # about evenly spread, so its middle is about the sample's estimate and only the entries
    # between it and t are written again
    guess = lo + (hi - lo) // 2
    # room per part for twice the expected window: all of it may fall in one part; one key
    # value needs no room (its ties are found by a scan)
    cap = 0 if lo == hi else min(2 * expected + 1024, total // nt + 1)  # a part holds no more
    room = cap + WQK_SCAN_SLACK  # the scan may store this far past what it appends
    # one block: the positions (8-byte aligned) first, then the keys
    scratch = (sizeof(int64_t) + sizeof(key_t)) * nt * room
    index = <int64_t*>wqk_scratch_take(scratch)
    if index == NULL:
        return NO_MEMORY
    keys = <key_t*>(index + nt * room)
    memset(counts, 0, sizeof(counts))
    for p in prange(nt, num_threads=nt, schedule="static"):
        tops[p] = 0
        for s in range(nseg):
            if overlap(&segs[s], part_start(total, nt, p), part_start(total, nt, p + 1), &start, &length):
                tops[p] = max(tops[p], wqk_scan(
                    <const key_t*>segs[s].x + start,
                    <key_t*>segs[s].y + start if scanned_into_y else NULL, length,
                    part_start(total, nt, p + 1) - (segs[s].base + start), lo, hi, guess,
                    segs[s].base + start, keys + p * room, index + p * room, cap, counts + 2 * p))
    copied_out = True
    for p in range(nt):
        top = max(top, tops[p])
        less += counts[2 * p]
        inside += counts[2 * p + 1]
        copied_out = copied_out and counts[2 * p + 1] <= cap
        cand[p].x = keys + p * room
        cand[p].y = NULL
        cand[p].n = min(counts[2 * p + 1], cap)
        cand[p].base = 0 if p == 0 else cand[p - 1].base + cand[p - 1].n
    if not finite_key(top):
        status = NONFINITE
    elif less < k <= less + inside and copied_out:  # t is in the window: select there
        bits = 0  # the window's keys share their bits above the highest bit where lo and hi differ
        while (lo ^ hi) >> bits:
            bits += 1
        status = radix_select(cand, nt, k - less, 1, False, lo >> bits, bits, &t, &r)
        for p in range(nt if status == DONE else 0):  # the entries are in sequence order
            for c in range(cand[p].n):
                if keys[p * room + c] == t:
                    r -= 1
                    if r == 0:
                        cut = index[p * room + c]
                        break
            if r == 0:
                break
    elif less < k <= less + inside and lo == hi:
        t = lo
        cut = find_equal(segs, nseg, t, k - less)
        copied_out = False
    else:  # the sample missed, or the window overflowed: select over everything
        copied_out = False
        status = radix_select(segs, nseg, k, nt, False, <key_t>0, sizeof(key_t) * 8 - 1, &t, &r)
        if status == DONE:
            cut = find_equal(segs, nseg, t, r)
    if status == DONE and copied_out and scanned_into_y:
        # y holds (key < guess) ? 0 : x already; write again the window's entries it got wrong
        for p in prange(nt, num_threads=nt, schedule="static"):
            fix_window(segs, nseg, keys + p * room, index + p * room, cand[p].n, guess, t, cut)
    elif status == DONE:
        mask_segments(segs, nseg, total, t, cut)
    wqk_scratch_give(index, scratch)
    return status


def prune_rank(list xs, key_t[::1] y, int64_t k, bint inplace, Py_ssize_t sample_size, int64_t sample_min):
    """Zero the k smallest magnitudes of the arrays xs taken as one sequence, into y.

    xs: 1-D uint16/uint32/uint64 views of float bits, all of y's width; y: their outputs one
    after another (so one write pass, and one allocation, serves them all), or xs[0] itself
    when inplace (one array).  Windows come from `sample_size` samples when the total is at
    least `sample_min`.  Returns False (y unspecified, x untouched) if x holds a NaN or Inf.
    """
    cdef Py_ssize_t nseg = len(xs), i
    cdef const key_t[::1] xv
    cdef int64_t total = 0
    cdef Status status
    cdef Segment[key_t]* segs
    if nseg == 0 or y.shape[0] == 0:
        return True
    segs = <Segment[key_t]*>malloc(sizeof(Segment[key_t]) * nseg)
    if segs == NULL:
        raise MemoryError()
    try:
        for i in range(nseg):  # the list holds the arrays: the pointers outlive each view
            xv = xs[i]
            segs[i].n = xv.shape[0]
            segs[i].x = &xv[0] if xv.shape[0] else NULL
            segs[i].y = &y[total]
            segs[i].base = total
            total += xv.shape[0]
        with nogil:
            status = prune_rank_segments(segs, nseg, total, k, inplace, sample_size, sample_min)
    finally:
        free(segs)
    if status == NO_MEMORY:
        raise MemoryError()
    return status == DONE


def use_avx512_scan(bint on):
    """Ask for the AVX-512 scan of magnitude selection (on) or the portable one; returns whether
    the AVX-512 one now runs (only where the CPU has it).  Both give the same results."""
    return wqk_use_avx512_scan(on)


# ---- element-wise: threshold, clip, shrink ------------------------------------------------

cdef bint map_bits(BitsOp op, const key_t* x, key_t* y, Py_ssize_t n,
                      key_t a, key_t b, double alpha) noexcept nogil:
    """One element-wise pass in chunks over threads; False if a key is an infinity or NaN."""
    cdef Py_ssize_t chunks = (n + ELEMENT_CHUNK - 1) // ELEMENT_CHUNK, c, start, length
    cdef int bad = 0
    cdef key_t top
    for c in prange(chunks, num_threads=threads_for(n), schedule="static"):
        start = c * ELEMENT_CHUNK
        length = min(<Py_ssize_t>ELEMENT_CHUNK, n - start)
        top = 0
        if op == THRESHOLD:
            top = wqk_mask_below(x + start, y + start, length, a, 0)
        elif op == CLIP:
            top = wqk_clip(x + start, y + start, length, a, b)
        elif op == SHRINK:
            top = wqk_shrink(x + start, y + start, length, alpha)
        else:
            wqk_count_below(x + start, length, <key_t>0, &top)
        bad += not finite_key(top)
    return bad == 0


cdef bint run_elementwise(BitsOp op, const key_t[::1] x, key_t[::1] y, uint64_t a, uint64_t b,
                          double alpha, bint inplace) noexcept nogil:
    if x.shape[0] == 0:
        return True
    if inplace and not map_bits(CHECK, &x[0], NULL, x.shape[0], 0, 0, 0.0):
        return False
    return map_bits(op, &x[0], &y[0], x.shape[0], <key_t>a, <key_t>b, alpha)


def prune_threshold(const key_t[::1] x, key_t[::1] y, uint64_t threshold, bint inplace):
    """y = 0 where the key is below `threshold` (a key), else x.  False if x is not all finite."""
    cdef bint finite
    with nogil:
        finite = run_elementwise(THRESHOLD, x, y, threshold, 0, 0.0, inplace)
    return finite


def clip_into(const key_t[::1] x, key_t[::1] y, uint64_t lo, uint64_t hi, bint inplace):
    """y = lo where x < lo, hi where x > hi, else x (lo, hi: bits).  False if x is not all finite."""
    cdef bint finite
    with nogil:
        finite = run_elementwise(CLIP, x, y, lo, hi, 0.0, inplace)
    return finite


def shrink_into(const key_t[::1] x, key_t[::1] y, double alpha, bint inplace):
    """y = sign(x) * max(|x| - alpha, 0) in x's precision.  False if x is not all finite."""
    cdef bint finite
    with nogil:
        finite = run_elementwise(SHRINK, x, y, 0, 0, alpha, inplace)
    return finite


# ---- N:M -----------------------------------------------------------------------------------

def prune_n_m_into(const key_t[::1] x, key_t[::1] y, Py_ssize_t outer, Py_ssize_t length,
                   Py_ssize_t inner, int m, int n, bint inplace):
    """x as (outer, length, inner): in every run of m along the middle axis keep the n largest.

    The last run of each line may be shorter.  False if x is not all finite.
    """
    cdef Py_ssize_t size = x.shape[0], groups = (length + m - 1) // m, full = length // m
    cdef Py_ssize_t tasks, task, o, g, per_task, first, count, chunk
    cdef int nt = threads_for(size), bad = 0, run
    cdef key_t top
    cdef key_t* rank
    if size == 0:
        return True
    if inplace:
        with nogil:
            bad = not map_bits(CHECK, &x[0], NULL, size, 0, 0, 0.0)
        if bad:
            return False
    with nogil:
        if inner == 1 and length % m == 0:  # one sequence of runs: split it into tasks
            per_task = max(ELEMENT_CHUNK // m, 1)
            count = size // m
            tasks = (count + per_task - 1) // per_task
            for task in prange(tasks, num_threads=nt, schedule="static"):
                rank = <key_t*>malloc(sizeof(key_t) * m)
                first = task * per_task
                if rank == NULL:
                    bad += 1
                else:
                    top = wqk_n_m_runs(&x[first * m], &y[first * m], min(per_task, count - first), m, n, rank)
                    bad += not finite_key(top)
                    free(rank)
        elif inner == 1:  # rows with a short last run
            for o in prange(outer, num_threads=nt, schedule="static"):
                rank = <key_t*>malloc(sizeof(key_t) * m)
                if rank == NULL:
                    bad += 1
                else:
                    top = wqk_n_m_runs(&x[o * length], &y[o * length], full, m, n, rank)
                    if length > full * m:
                        top = max(top, wqk_n_m_runs(&x[o * length + full * m], &y[o * length + full * m],
                                                    1, <int>(length - full * m), n, rank))
                    bad += not finite_key(top)
                    free(rank)
        else:  # each run is `inner` lanes of up to m rows
            chunk = max(RANK_SCRATCH // m, 16)
            tasks = outer * groups
            for task in prange(tasks, num_threads=nt, schedule="static"):
                o = task // groups
                g = task % groups
                run = <int>min(<Py_ssize_t>m, length - g * m)
                rank = <key_t*>malloc(sizeof(key_t) * run * chunk)
                first = (o * length + g * m) * inner
                if rank == NULL:
                    bad += 1
                else:
                    top = wqk_n_m_lanes(&x[first], &y[first], inner, inner, run, n, rank, chunk)
                    bad += not finite_key(top)
                    free(rank)
        if bad:  # a NaN or infinity, or no memory for the ranks
            bad = 1 if map_bits(CHECK, &x[0], NULL, size, 0, 0, 0.0) else 2
    if bad == 1:
        raise MemoryError()
    return bad == 0


# ---- channels --------------------------------------------------------------------------------

def prune_channels_into(const key_t[::1] x, key_t[::1] y, Py_ssize_t outer, Py_ssize_t channels,
                        Py_ssize_t inner, int ord, int64_t k, bint inplace, double[::1] norms):
    """x as (outer, channels, inner): zero the k channels of least L1/L2 norm (ties: lower index).

    norms receives, per channel, the sum of |x| (ord 1) or of x^2 (ord 2) in float64.  False
    if x is not all finite.
    """
    cdef Py_ssize_t size = x.shape[0], c, o, c0, task
    cdef int nt = threads_for(size)
    cdef uint64_t t = 0
    cdef int64_t r, cut = -1
    cdef Segment[uint64_t] ranked
    cdef Status status = DONE
    cdef key_t* keep
    if size == 0 or channels == 0:
        return True
    cdef bint finite
    with nogil:
        finite = map_bits(CHECK, &x[0], NULL, size, 0, 0, 0.0)
    if not finite:
        return False
    keep = <key_t*>malloc(sizeof(key_t) * channels)
    if keep == NULL:
        raise MemoryError()
    with nogil:
        memset(&norms[0], 0, sizeof(double) * channels)
        if inner == 1:  # lanes: a chunk of channels over all rows (a fixed order per channel)
            for c0 in prange(0, channels, LANE_CHUNK, num_threads=nt, schedule="static"):
                for o in range(outer):
                    wqk_norm_lanes(&x[o * channels + c0], min(<Py_ssize_t>LANE_CHUNK, channels - c0),
                                   ord, &norms[c0])
        else:
            for c in prange(channels, num_threads=nt, schedule="static"):
                for o in range(outer):
                    norms[c] += wqk_norm_run(&x[(o * channels + c) * inner], inner, ord)
        # the norms are non-negative doubles: their bits are keys of the same order
        ranked.x = <const uint64_t*>&norms[0]
        ranked.y = NULL
        ranked.n = channels
        ranked.base = 0
        if k > 0:
            status = radix_select(&ranked, 1, k, 1, False, <uint64_t>0, 63, &t, &r)
            cut = find_equal(&ranked, 1, t, r)
        for c in range(channels):
            keep[c] = 0 if k > 0 and (ranked.x[c] < t or (ranked.x[c] == t and c <= cut)) else <key_t>~(<key_t>0)
        if status == DONE and inner == 1:
            for o in prange(outer, num_threads=nt, schedule="static"):
                wqk_keep_lanes(&x[o * channels], &y[o * channels], channels, keep)
        elif status == DONE:
            for task in prange(outer * channels, num_threads=nt, schedule="static"):
                if not keep[task % channels]:
                    memset(&y[task * inner], 0, sizeof(key_t) * inner)
                elif not inplace:
                    memcpy(&y[task * inner], &x[task * inner], sizeof(key_t) * inner)
    free(keep)
    if status == NO_MEMORY:
        raise MemoryError()
    return True
