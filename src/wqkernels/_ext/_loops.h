/* Innermost element loops over float32 values and codes, called from _quantization.pxi and
 * _packing.pxi (C++: quantize and fake-quantize share one template body); also the thread
 * settings every kernel uses.
 *
 * Each function walks one contiguous run of float32 (or code) elements and does nothing else:
 * the Cython layer splits arrays into runs and threads, the Python layer validates.  The loops
 * are written so that GCC vectorises them, and on x86-64 GCC builds a copy per instruction set
 * and picks one at load time (target_clones), so the default build runs on any x86-64.
 *
 * Exactness: codes are  clamp(rint(x / s) + zp, qmin, qmax)  with a true float32 division and
 * round-half-to-even.  Rounding uses the 1.5 * 2^23 trick on a value first clamped to
 * [qmin - zp, qmax - zp]; both bounds are integers of magnitude <= 255, so clamping before
 * rounding gives the same code, and the trick is exact for |y| < 2^22.  Build with
 * -ffp-contract=off and without -ffast-math so that no operation is fused or reordered.
 */
#ifndef WQK_LOOPS_H
#define WQK_LOOPS_H

#include <stddef.h>
#include <float.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <cmath>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(WQK_NO_CLONES)
#define WQK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WQK_CLONES
#endif
/* For loops that only rank (the scale search): a multiply-add may be fused. */
#if defined(__GNUC__) && !defined(__clang__)
#define WQK_RANKING __attribute__((optimize("fp-contract=fast")))
#else
#define WQK_RANKING
#endif
/* For loops whose compares select (costs within a bound): without it GCC keeps them scalar, as
 * a vector compare might raise a floating-point flag the scalar one would not; nothing here
 * reads those flags, and no result changes. */
#if defined(__GNUC__) && !defined(__clang__)
#define WQK_NO_TRAPS __attribute__((optimize("no-trapping-math")))
#else
#define WQK_NO_TRAPS
#endif

/* Threads: at most wqk_max_threads() per loop, and fewer while the machine is busy (OpenMP's
 * dynamic adjustment, from the load average): a team as large as the machine, on cores that
 * another process also uses, would wait a time slice for its descheduled members at every
 * loop.  The setting belongs to the calling thread (OpenMP ICVs), so set_max_threads renews it. */
#ifdef _OPENMP
#include <omp.h>
static int wqk_max_threads(void) { return omp_get_max_threads(); }
static void wqk_set_max_threads(int n) { omp_set_num_threads(n); omp_set_dynamic(1); }
static void wqk_adapt_threads(void) { omp_set_dynamic(1); }
#else
static int wqk_max_threads(void) { return 1; }
static void wqk_set_max_threads(int n) { (void)n; }
static void wqk_adapt_threads(void) {}
#endif

#define WQK_MAGIC 12582912.0f /* 1.5 * 2^23 */

/* The index of the lowest set bit of a nonzero word. */
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static inline int wqk_ctz64(uint64_t v) { unsigned long i; _BitScanForward64(&i, v); return (int)i; }
#else
static inline int wqk_ctz64(uint64_t v) { return __builtin_ctzll(v); }
#endif

/* A quotient's code as float before its zero point: rint(clamp(y, lo, hi)), never -0 (always
 * inlined: a call per element where the hot loops use it). */
static inline __attribute__((always_inline)) float wqk_round_quotient(float y, float lo, float hi) {
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    return (y + WQK_MAGIC) - WQK_MAGIC;
}

/* A code as float before its zero point: rint(clamp(x / s, lo, hi)). */
static inline float wqk_rounded(float x, float s, float lo, float hi) {
    return wqk_round_quotient(x / s, lo, hi);
}

/* A code as float: lo = qmin - zp, hi = qmax - zp. */
static inline float wqk_code(float x, float s, float zp, float lo, float hi) {
    return wqk_rounded(x, s, lo, hi) + zp;
}

/* Order-preserving integer key of a float's bits: keys compare like the floats, NaN beyond +-Inf. */
static inline int32_t wqk_key(uint32_t b) {
    return (int32_t)(b ^ ((uint32_t)((int32_t)b >> 31) & 0x7fffffffu));
}

/* Asks for the cache lines of `bytes` bytes at p, to be read soon. */
static inline void wqk_prefetch_run(const void *p, ptrdiff_t bytes) {
#if defined(__GNUC__)
    for (ptrdiff_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i);
#else
    (void)p, (void)bytes;
#endif
}

/* p + i, or NULL when p is NULL (an optional pointer moved along with the others). */
template <typename T> static inline T *wqk_offset(T *p, ptrdiff_t i) { return p ? p + i : p; }

/* ---- reductions -------------------------------------------------------------------------- */

/* Elements of x before its first 64-byte boundary (at most n; none when x is not aligned to its
 * element, or for a run shorter than WQK_ALIGN_FROM): the streaming loops below run that head
 * apart, so that their vector loads of x are aligned.  NumPy's large arrays start 16 bytes past
 * a cache line, and 64-byte loads across two lines made lanes loops over rows of 4096 a third
 * slower; rows of 1024 lose more to a second head and tail per row than they gain. */
#define WQK_ALIGN_FROM 2048
template <typename T> static inline ptrdiff_t wqk_head(const T *x, ptrdiff_t n) {
    const uintptr_t a = (uintptr_t)x;
    if (a % sizeof(T) || n < WQK_ALIGN_FROM) return 0;
    const ptrdiff_t h = (ptrdiff_t)(((64 - (a & 63)) & 63) / sizeof(T));
    return h < n ? h : n;
}

/* max over the run of the bits of |x| (>= 0x7f800000 means a NaN or an infinity). */
static inline __attribute__((always_inline)) uint32_t wqk_max_abs_bits_of(const uint32_t *x, ptrdiff_t n,
                                                                          uint32_t acc) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t b = x[i] & 0x7fffffffu;
        acc = b > acc ? b : acc;
    }
    return acc;
}

WQK_CLONES static uint32_t wqk_max_abs_bits(const uint32_t *x, ptrdiff_t n, uint32_t acc) {
    const ptrdiff_t h = wqk_head(x, n);
    return wqk_max_abs_bits_of(x + h, n - h, wqk_max_abs_bits_of(x, h, acc));
}

/* Lane i its own group: acc[i] takes the max bits of |x[i]| (below: lo[i], hi[i] its min and
 * max keys); wqk_key_rows runs them over rows. */
static inline __attribute__((always_inline)) void wqk_max_abs_bits_lanes_of(const uint32_t *x, ptrdiff_t n,
                                                                            uint32_t *acc) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t b = x[i] & 0x7fffffffu;
        acc[i] = b > acc[i] ? b : acc[i];
    }
}

/* min and max of the run as order-preserving keys. */
static inline __attribute__((always_inline)) void wqk_key_range_of(const uint32_t *x, ptrdiff_t n, int32_t *lo,
                                                                   int32_t *hi) {
    int32_t a = *lo, b = *hi;
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t k = wqk_key(x[i]);
        a = k < a ? k : a;
        b = k > b ? k : b;
    }
    *lo = a;
    *hi = b;
}

WQK_CLONES static void wqk_key_range(const uint32_t *x, ptrdiff_t n, int32_t *lo, int32_t *hi) {
    const ptrdiff_t h = wqk_head(x, n);
    wqk_key_range_of(x, h, lo, hi);
    wqk_key_range_of(x + h, n - h, lo, hi);
}

static inline __attribute__((always_inline)) void wqk_key_range_lanes_of(const uint32_t *x, ptrdiff_t n,
                                                                         int32_t *lo, int32_t *hi) {
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t k = wqk_key(x[i]);
        lo[i] = k < lo[i] ? k : lo[i];
        hi[i] = k > hi[i] ? k : hi[i];
    }
}

/* The keys of WQK_KEY_ROWS rows of WQK_KEY_LANES lanes spaced `stride` apart, into lo and hi
 * (max |x| bits into hi alone when symmetric), held in registers across the rows. */
#define WQK_KEY_ROWS 8
#define WQK_KEY_LANES 64
template <bool Asymmetric>
static inline __attribute__((always_inline)) void wqk_key_block(const uint32_t *x, ptrdiff_t stride, int32_t *lo,
                                                                int32_t *hi) {
    if (Asymmetric) {
        int32_t a[WQK_KEY_LANES], b[WQK_KEY_LANES];
        for (int j = 0; j < WQK_KEY_LANES; j++) { a[j] = lo[j]; b[j] = hi[j]; }
        for (int r = 0; r < WQK_KEY_ROWS; r++)
            for (int j = 0; j < WQK_KEY_LANES; j++) {
                int32_t k = wqk_key(x[r * stride + j]);
                a[j] = k < a[j] ? k : a[j];
                b[j] = k > b[j] ? k : b[j];
            }
        for (int j = 0; j < WQK_KEY_LANES; j++) { lo[j] = a[j]; hi[j] = b[j]; }
    } else {
        uint32_t m[WQK_KEY_LANES];
        for (int j = 0; j < WQK_KEY_LANES; j++) m[j] = (uint32_t)hi[j];
        for (int r = 0; r < WQK_KEY_ROWS; r++)
            for (int j = 0; j < WQK_KEY_LANES; j++) {
                uint32_t b = x[r * stride + j] & 0x7fffffffu;
                m[j] = b > m[j] ? b : m[j];
            }
        for (int j = 0; j < WQK_KEY_LANES; j++) hi[j] = (int32_t)m[j];
    }
}

template <bool Asymmetric>
static inline __attribute__((always_inline)) void wqk_key_lanes_of(const uint32_t *x, ptrdiff_t n, int32_t *lo,
                                                                   int32_t *hi) {
    if (Asymmetric)
        wqk_key_range_lanes_of(x, n, lo, hi);
    else
        wqk_max_abs_bits_lanes_of(x, n, (uint32_t *)hi);
}

/* Keys of `rows` runs of w lanes spaced `stride` apart, lane i its own group: lo[i], hi[i] take
 * its (min, max) keys when asymmetric, else hi[i] its max |x| bits.  WQK_KEY_ROWS rows at a
 * time, so that a lane's keys are loaded and stored once a block of rows and not once a row: a
 * row of 16384 lanes has 64 KiB of them, more than L1 holds beside the rows streaming past. */
template <bool Asymmetric>
static inline __attribute__((always_inline)) void wqk_key_rows_of(const uint32_t *x, ptrdiff_t rows,
                                                                  ptrdiff_t stride, ptrdiff_t w, int32_t *lo,
                                                                  int32_t *hi) {
    const ptrdiff_t h = wqk_head(x, w); /* the same in every row when stride is a multiple of 16 */
    ptrdiff_t r = 0;
    for (; r + WQK_KEY_ROWS <= rows; r += WQK_KEY_ROWS) {
        const uint32_t *p = x + r * stride;
        ptrdiff_t c = h;
        for (; c + WQK_KEY_LANES <= w; c += WQK_KEY_LANES) wqk_key_block<Asymmetric>(p + c, stride, lo + c, hi + c);
        for (int k = 0; k < WQK_KEY_ROWS; k++) {
            wqk_key_lanes_of<Asymmetric>(p + k * stride, h, lo, hi);
            wqk_key_lanes_of<Asymmetric>(p + k * stride + c, w - c, lo + c, hi + c);
        }
    }
    for (; r < rows; r++) {
        wqk_key_lanes_of<Asymmetric>(x + r * stride, h, lo, hi);
        wqk_key_lanes_of<Asymmetric>(x + r * stride + h, w - h, lo + h, hi + h);
    }
}

WQK_CLONES static void wqk_key_rows(const uint32_t *x, ptrdiff_t rows, ptrdiff_t stride, ptrdiff_t w, int asymmetric,
                                    int32_t *lo, int32_t *hi) {
    if (asymmetric)
        wqk_key_rows_of<true>(x, rows, stride, w, lo, hi);
    else
        wqk_key_rows_of<false>(x, rows, stride, w, lo, hi);
}

/* Block sizes common enough that runs of them get loops of their own: the compiler unrolls a
 * loop of known length into whole vectors, where one of unknown length per run of 32 costs more
 * than its elements. */
#define WQK_RUN_LENGTHS(CASE) CASE(16) CASE(32) CASE(64) CASE(128)

/* Keys of `count` runs of `length` (L, when not 0) elements, each its own group: lo[r], hi[r]
 * take run r's (min, max) keys when asymmetric, else hi[r] its max |x| bits. */
template <int L>
static inline __attribute__((always_inline)) void wqk_key_runs_of(const uint32_t *x, ptrdiff_t count,
                                                                  ptrdiff_t length, int asymmetric, int32_t *lo,
                                                                  int32_t *hi) {
    const ptrdiff_t n = L ? L : length;
    for (ptrdiff_t r = 0; r < count; r++) {
        const uint32_t *p = x + r * n;
        if (asymmetric) {
            int32_t a = lo[r], b = hi[r];
            for (ptrdiff_t i = 0; i < n; i++) {
                int32_t k = wqk_key(p[i]);
                a = k < a ? k : a;
                b = k > b ? k : b;
            }
            lo[r] = a;
            hi[r] = b;
        } else {
            uint32_t m = (uint32_t)hi[r];
            for (ptrdiff_t i = 0; i < n; i++) {
                uint32_t b = p[i] & 0x7fffffffu;
                m = b > m ? b : m;
            }
            hi[r] = (int32_t)m;
        }
    }
}

/* Keys of runs one after another (blocks along a contiguous axis), each its own group: run r
 * is `length` elements long (the last one `tail`); klo[r], khi[r] take its (min, max) keys when
 * asymmetric, else khi[r] its max |x| bits. */
WQK_CLONES static void wqk_key_runs(const uint32_t *x, ptrdiff_t count, ptrdiff_t length, ptrdiff_t tail,
                                    int asymmetric, int32_t *lo, int32_t *hi) {
    const ptrdiff_t full = tail == length ? count : count - 1;
    switch (length) {
#define WQK_CASE(L) case L: wqk_key_runs_of<L>(x, full, L, asymmetric, lo, hi); break;
        WQK_RUN_LENGTHS(WQK_CASE)
#undef WQK_CASE
    default: wqk_key_runs_of<0>(x, full, length, asymmetric, lo, hi);
    }
    if (full < count) wqk_key_runs_of<0>(x + full * length, 1, tail, asymmetric, lo + full, hi + full);
}

/* ---- scales ------------------------------------------------------------------------------
 * The scale and zero point of a group clipped to ratio * its range, float32 throughout: lo, hi
 * its min and max, or hi its max |x| when symmetric (codes in [-qmax, qmax]; else in [0, qmax]).
 * A scale that is not positive (a group of zeros) is 1; when b - a overflows float32 the same
 * quotient is taken apart (3.4e38f: a float is above it exactly when it is above 3.4e38). */
static inline __attribute__((always_inline)) void wqk_group_params(float lo, float hi, float ratio, int symmetric,
                                                                   float qmax, float *s, float *zp) {
    if (symmetric) {
        const float scale = (ratio * hi) / qmax;
        *s = scale > 0.0f ? scale : 1.0f;
        *zp = 0.0f;
        return;
    }
    const float a = ratio * (lo < 0.0f ? lo : 0.0f), b = ratio * (hi > 0.0f ? hi : 0.0f);
    float scale = (b - a) / qmax;
    if (scale > 3.4e38f) scale = b / qmax - a / qmax;
    if (!(scale > 0.0f)) scale = 1.0f;
    *s = scale;
    *zp = wqk_rounded(-a, scale, 0.0f, qmax);
}

/* wqk_group_params of n groups (lo unused when symmetric), in a loop GCC vectorises; s and zp
 * may be lo and hi themselves.  Symmetric zero points are all 0: zp may be NULL, not written. */
WQK_CLONES static void wqk_groups_params(const float *lo, const float *hi, ptrdiff_t n, float ratio, int symmetric,
                                         float qmax, float *s, float *zp) {
    float z;
    if (symmetric && !zp)
        for (ptrdiff_t i = 0; i < n; i++) wqk_group_params(0.0f, hi[i], ratio, 1, qmax, s + i, &z);
    else if (symmetric)
        for (ptrdiff_t i = 0; i < n; i++) wqk_group_params(0.0f, hi[i], ratio, 1, qmax, s + i, zp + i);
    else
        for (ptrdiff_t i = 0; i < n; i++) wqk_group_params(lo[i], hi[i], ratio, 0, qmax, s + i, zp + i);
}

/* ---- quantize, fake-quantize, dequantize --------------------------------------------------
 * "uniform" runs share one scale and zero point; "lanes" runs have one per element; "runs" are
 * runs one after another with one each.  Quantize writes codes as bytes, fake-quantize writes
 * (code - zp) * s: one body for both, over the output's type.  Codes are made by true division:
 * this CPU family divides fast enough that multiplying by 1/s, with the checks exactness would
 * need, is no faster. */

/* Fresh outputs: the kernel zeroes a page when it is first written, and with transparent huge
 * pages (2 MiB; NumPy asks for them on large arrays) a page first written at its end is left in
 * the cache in the order a forward pass then writes it (measured on the prune scan; on
 * last-axis fake-quantize of 64 MiB, about 7% less CPU time).  The index one past the end
 * of the 2 MiB page that holds y[i]. */
enum { WQK_PAGE = 1 << 21 };
template <typename T> static inline ptrdiff_t wqk_page_stop(const T *y, ptrdiff_t i) {
    const uintptr_t at = (uintptr_t)(y + i);
    return i + 1 + (ptrdiff_t)((WQK_PAGE - 1 - (at & (WQK_PAGE - 1))) / sizeof(T));
}

/* Store a code: as a byte (two's complement when signed), or as (code - zp) * s. */
static inline void wqk_put(uint8_t *q, float code, float s, float zp) {
    (void)s;
    (void)zp;
    *q = (uint8_t)(int32_t)code;
}
static inline void wqk_put(float *y, float code, float s, float zp) { *y = (code - zp) * s; }

/* A zero point of 0 (all signed codes) has a loop of its own, a third faster: (y + M) - M is
 * never -0, so adding a zero point of +0 changes no code and no value. */
template <typename Out, bool Zero>
static inline __attribute__((always_inline)) void wqk_quantize_run(const float *x, Out *out, ptrdiff_t n, float s,
                                                                   float zp, float qmin, float qmax) {
    if (Zero) {
        for (ptrdiff_t i = 0; i < n; i++) wqk_put(out + i, wqk_rounded(x[i], s, qmin, qmax), s, 0.0f);
        return;
    }
    const float lo = qmin - zp, hi = qmax - zp;
    for (ptrdiff_t i = 0; i < n; i++) wqk_put(out + i, wqk_code(x[i], s, zp, lo, hi), s, zp);
}

/* Fetching ahead: a unit of groups whose scales are found in the same visit is read twice,
 * from memory for its scales and from the cache for its codes; the second pass computes (a
 * division per element) while the memory idles, so it asks for the next unit's lines as it goes
 * and the next unit's first pass finds them in the cache (int4 blocks of 32 along the last axis
 * of a 64 MiB matrix: a quarter less CPU time on an AMD EPYC with AVX2).  `ahead` is the run
 * that the next unit reads at this one's place (NULL: none), of which the first `ahead_n`
 * elements are fetched; work(i, m) makes the m elements from i, WQK_AHEAD_PIECE at a time, each
 * piece after asking for the lines of the same elements of `ahead`, so that the requests are
 * spread over the work instead of queueing at once. */
enum { WQK_AHEAD_PIECE = 64 };
template <typename Work>
static inline __attribute__((always_inline)) void wqk_ahead(const float *ahead, ptrdiff_t ahead_n, ptrdiff_t n,
                                                            Work work) {
    if (!ahead) {
        work(0, n);
        return;
    }
    for (ptrdiff_t i = 0; i < n; i += WQK_AHEAD_PIECE) {
        const ptrdiff_t m = n - i < WQK_AHEAD_PIECE ? n - i : WQK_AHEAD_PIECE;
        if (i < ahead_n) wqk_prefetch_run(ahead + i, (m < ahead_n - i ? m : ahead_n - i) * (ptrdiff_t)sizeof(float));
        work(i, m);
    }
}

template <typename Out>
WQK_CLONES static void wqk_quantize_uniform(const float *x, Out *out, ptrdiff_t n, float s, float zp, float qmin,
                                            float qmax, const float *ahead, ptrdiff_t ahead_n) {
    const ptrdiff_t h = wqk_head(x, n);
    const float *a = wqk_offset(ahead, h);
    if (zp == 0.0f) {
        wqk_quantize_run<Out, true>(x, out, h, s, zp, qmin, qmax);
        wqk_ahead(a, ahead_n - h, n - h, [=](ptrdiff_t i, ptrdiff_t m) __attribute__((always_inline)) {
            wqk_quantize_run<Out, true>(x + h + i, out + h + i, m, s, zp, qmin, qmax);
        });
    } else {
        wqk_quantize_run<Out, false>(x, out, h, s, zp, qmin, qmax);
        wqk_ahead(a, ahead_n - h, n - h, [=](ptrdiff_t i, ptrdiff_t m) __attribute__((always_inline)) {
            wqk_quantize_run<Out, false>(x + h + i, out + h + i, m, s, zp, qmin, qmax);
        });
    }
}

/* `count` runs of `length` (L, when not 0) elements, run r with scale s[r], zero point zp[r]
 * (zp NULL: all 0). */
template <typename Out, int L>
static inline __attribute__((always_inline)) void wqk_quantize_runs_of(const float *x, Out *out, ptrdiff_t count,
                                                                       ptrdiff_t length, const float *s,
                                                                       const float *zp, float qmin, float qmax,
                                                                       const float *ahead, ptrdiff_t ahead_n) {
    const ptrdiff_t n = L ? L : length;
    for (ptrdiff_t r = 0; r < count; r++) {
        const float *xr = x + r * n, *a = wqk_offset(ahead, r * n);
        const float sr = s[r], zr = zp ? zp[r] : 0.0f;
        Out *o = out + r * n;
        if (zr == 0.0f)
            wqk_ahead(a, ahead_n - r * n, n, [=](ptrdiff_t i, ptrdiff_t m) __attribute__((always_inline)) {
                wqk_quantize_run<Out, true>(xr + i, o + i, m, sr, zr, qmin, qmax);
            });
        else
            wqk_ahead(a, ahead_n - r * n, n, [=](ptrdiff_t i, ptrdiff_t m) __attribute__((always_inline)) {
                wqk_quantize_run<Out, false>(xr + i, o + i, m, sr, zr, qmin, qmax);
            });
    }
}

/* `count` runs of `length` elements one after another (the last one `tail`), run r with
 * scale s[r] and zero point zp[r] (zp NULL: all 0); `ahead` as for wqk_ahead, over the runs
 * taken as one. */
template <typename Out>
WQK_CLONES static void wqk_quantize_runs(const float *x, Out *out, ptrdiff_t count, ptrdiff_t length,
                                         ptrdiff_t tail, const float *s, const float *zp, float qmin, float qmax,
                                         const float *ahead, ptrdiff_t ahead_n) {
    const ptrdiff_t full = tail == length ? count : count - 1;
    switch (length) {
#define WQK_CASE(L) case L: wqk_quantize_runs_of<Out, L>(x, out, full, L, s, zp, qmin, qmax, ahead, ahead_n); break;
        WQK_RUN_LENGTHS(WQK_CASE)
#undef WQK_CASE
    default: wqk_quantize_runs_of<Out, 0>(x, out, full, length, s, zp, qmin, qmax, ahead, ahead_n);
    }
    if (full < count)
        wqk_quantize_runs_of<Out, 0>(x + full * length, out + full * length, 1, tail, s + full, wqk_offset(zp, full),
                                     qmin, qmax, wqk_offset(ahead, full * length), ahead_n - full * length);
}

/* Element i with scale s[i] and zero point zp[i] (zp NULL: all 0).  s and zp are read as x is,
 * an element per element: given at x's 64-byte phase, their loads are aligned too. */
template <typename Out>
static inline __attribute__((always_inline)) void wqk_quantize_lanes_of(const float *x, Out *out, ptrdiff_t n,
                                                                        const float *s, const float *zp,
                                                                        float qmin, float qmax) {
    if (!zp) {
        for (ptrdiff_t i = 0; i < n; i++) wqk_put(out + i, wqk_rounded(x[i], s[i], qmin, qmax), s[i], 0.0f);
        return;
    }
    for (ptrdiff_t i = 0; i < n; i++) wqk_put(out + i, wqk_code(x[i], s[i], zp[i], qmin - zp[i], qmax - zp[i]), s[i], zp[i]);
}

template <typename Out>
WQK_CLONES static void wqk_quantize_lanes(const float *x, Out *out, ptrdiff_t n, const float *s, const float *zp,
                                          float qmin, float qmax, const float *ahead, ptrdiff_t ahead_n) {
    const ptrdiff_t h = wqk_head(x, n);
    wqk_quantize_lanes_of(x, out, h, s, zp, qmin, qmax);
    wqk_ahead(wqk_offset(ahead, h), ahead_n - h, n - h, [=](ptrdiff_t i, ptrdiff_t m) __attribute__((always_inline)) {
        wqk_quantize_lanes_of(x + h + i, out + h + i, m, s + h + i, wqk_offset(zp, h + i), qmin, qmax);
    });
}

WQK_CLONES static void wqk_dequantize_uniform(const uint8_t *q, float *y, ptrdiff_t n, float s,
                                              float zp, int is_signed) {
    if (is_signed) {
        for (ptrdiff_t i = 0; i < n; i++) y[i] = ((float)(int8_t)q[i] - zp) * s;
    } else {
        for (ptrdiff_t i = 0; i < n; i++) y[i] = ((float)q[i] - zp) * s;
    }
}

WQK_CLONES static void wqk_dequantize_lanes(const uint8_t *q, float *y, ptrdiff_t n, const float *s,
                                            const float *zp, int is_signed) {
    if (is_signed) {
        for (ptrdiff_t i = 0; i < n; i++) y[i] = ((float)(int8_t)q[i] - zp[i]) * s[i];
    } else {
        for (ptrdiff_t i = 0; i < n; i++) y[i] = ((float)q[i] - zp[i]) * s[i];
    }
}

/* `count` runs of `length` codes one after another (the last one `tail`), run r with scale s[r]
 * and zero point zp[r]. */
WQK_CLONES static void wqk_dequantize_runs(const uint8_t *q, float *y, ptrdiff_t count, ptrdiff_t length,
                                           ptrdiff_t tail, const float *s, const float *zp, int is_signed) {
    for (ptrdiff_t r = 0; r < count; r++) {
        const uint8_t *p = q + r * length;
        float *o = y + r * length, sr = s[r], zr = zp[r];
        ptrdiff_t n = r + 1 < count ? length : tail;
        if (is_signed) {
            for (ptrdiff_t i = 0; i < n; i++) o[i] = ((float)(int8_t)p[i] - zr) * sr;
        } else {
            for (ptrdiff_t i = 0; i < n; i++) o[i] = ((float)p[i] - zr) * sr;
        }
    }
}

/* ---- error-minimising scale search --------------------------------------------------------
 * Candidates are ranked by squared error in code units, (round(clamp(y)) - y)^2 with y = x / s
 * taken as x * (1 / s); the caller multiplies by s^2.  This differs from the error of true
 * division only at exact ties: it only ranks; codes are always made by division.  Sums run in
 * WQK_LANES independent partial sums so that the loops vectorise without reassociation flags.
 * This holds while every candidate scale is normal and |x| < FLT_MAX / 4; the caller scores
 * other groups with wqk_candidate_errors_exact. */

#define WQK_LANES 16

/* Clamped to [lo, hi], or with Magnitudes (x >= 0, symmetric bounds) to hi alone: the symmetric
 * grid's error is odd in x (rint and the clamp commute with negation), so |x| has x's error,
 * to the bit, for one operation less. */
template <bool Magnitudes>
static inline float wqk_scaled_sq_error(float x, float inv, float lo, float hi) {
    float y = x * inv, r = Magnitudes ? y : (y < lo ? lo : y);
    r = r > hi ? hi : r;
    r = ((r + WQK_MAGIC) - WQK_MAGIC) - y;
    return r * r;
}

/* acc[c] += scaled squared error of candidate c over a run of one group. */
WQK_CLONES WQK_RANKING static void wqk_candidate_errors(const float *x, ptrdiff_t n, int ncand, const float *inv,
                                            const float *lo, const float *hi, double *acc) {
    for (int c = 0; c < ncand; c++) {
        float part[WQK_LANES] = {0}, tail = 0.0f;
        ptrdiff_t i = 0;
        for (; i + WQK_LANES <= n; i += WQK_LANES)
#pragma GCC unroll 16
            for (int j = 0; j < WQK_LANES; j++) part[j] += wqk_scaled_sq_error<false>(x[i + j], inv[c], lo[c], hi[c]);
        for (; i < n; i++) tail += wqk_scaled_sq_error<false>(x[i], inv[c], lo[c], hi[c]);
        double sum = tail;
        for (int j = 0; j < WQK_LANES; j++) sum += part[j];
        acc[c] += sum;
    }
}

/* acc[c * w + i] += scaled squared error of lane i (its own group) under candidate c, over
 * `rows` runs of w lanes spaced `stride` apart; with Magnitudes, x holds |x| of a symmetric
 * grid (lo unused). */
template <bool Magnitudes>
WQK_CLONES WQK_RANKING static void wqk_candidate_errors_lanes(const float *x, ptrdiff_t rows, ptrdiff_t stride,
                                                  ptrdiff_t w, int ncand, const float *inv,
                                                  const float *lo, const float *hi, float *acc) {
    for (int c = 0; c < ncand; c++) {
        ptrdiff_t i0 = 0;
        for (; i0 + WQK_LANES <= w; i0 += WQK_LANES) {
            const ptrdiff_t k = c * w + i0;
            float part[WQK_LANES] = {0}, iv[WQK_LANES], l[WQK_LANES], h[WQK_LANES];
            for (int j = 0; j < WQK_LANES; j++) { iv[j] = inv[k + j]; l[j] = lo[k + j]; h[j] = hi[k + j]; }
            for (ptrdiff_t r = 0; r < rows; r++)
#pragma GCC unroll 16
                for (int j = 0; j < WQK_LANES; j++)
                    part[j] += wqk_scaled_sq_error<Magnitudes>(x[r * stride + i0 + j], iv[j], l[j], h[j]);
            for (int j = 0; j < WQK_LANES; j++) acc[k + j] += part[j];
        }
        for (; i0 < w; i0++) {
            const ptrdiff_t k = c * w + i0;
            for (ptrdiff_t r = 0; r < rows; r++)
                acc[k] += wqk_scaled_sq_error<Magnitudes>(x[r * stride + i0], inv[k], lo[k], hi[k]);
        }
    }
}

/* acc[c * w + i] += squared error of lane i under candidate c taken as the reference takes it,
 * (double)(code * s - x)^2 with the code made by true division and both operations rounded to
 * float32, over `rows` runs of w lanes spaced `stride` apart (w = 1: one group).  For groups
 * where the ranking above fails: when a candidate scale is subnormal, 1 / s overflows to
 * infinity below 2^-128 and a step of float32's subnormal grid is a large part of s; when |x|
 * nears FLT_MAX, code * s - x itself overflows (to infinity, as in the reference).  Unfused
 * (-ffp-contract=off), as the reference; the square of a float is exact in double. */
static void wqk_candidate_errors_exact(const float *x, ptrdiff_t rows, ptrdiff_t stride, ptrdiff_t w, int ncand,
                                       const float *s, const float *lo, const float *hi, double *acc) {
    for (int c = 0; c < ncand; c++)
        for (ptrdiff_t r = 0; r < rows; r++)
            for (ptrdiff_t i = 0; i < w; i++) {
                const ptrdiff_t k = c * w + i;
                const float v = x[r * stride + i], e = wqk_rounded(v, s[k], lo[k], hi[k]) * s[k] - v;
                acc[k] += (double)e * e;
            }
}

/* Copies `rows` runs of w floats spaced `stride` apart into consecutive rows of w, as |x| when
 * `magnitudes`.  Short runs far apart are not fetched ahead by the hardware: each run asks for
 * the one WQK_ROWS_AHEAD rows on, if it is among the rows + `more` that follow x. */
#define WQK_ROWS_AHEAD 8
WQK_CLONES static void wqk_copy_rows(const float *x, ptrdiff_t rows, ptrdiff_t stride, ptrdiff_t w, int magnitudes,
                                     float *tile, ptrdiff_t more) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *p = x + r * stride;
        if (r + WQK_ROWS_AHEAD < rows + more) wqk_prefetch_run(p + WQK_ROWS_AHEAD * stride, w * (ptrdiff_t)sizeof(float));
        float *t = tile + r * w;
        if (magnitudes)
            for (ptrdiff_t i = 0; i < w; i++) t[i] = std::fabs(p[i]);
        else
            memcpy(t, p, (size_t)w * sizeof(float));
    }
}

/* ---- bit packing ---------------------------------------------------------------------------
 * LSB-first stream: code i occupies bits [i*b, (i+1)*b).  Every 8 codes make exactly b bytes,
 * so one loop serves every width. */

/* Compacts the low b bits of each of the 8 bytes of w into the low 8b bits, byte 0 lowest
 * (three rounds merging neighbouring fields), and the inverse. */
static inline uint64_t wqk_compact8(uint64_t w, int b) {
    w &= 0x0101010101010101ull * ((1u << b) - 1);
    w = (w & 0x00FF00FF00FF00FFull) | ((w & 0xFF00FF00FF00FF00ull) >> (8 - b));
    w = (w & 0x0000FFFF0000FFFFull) | ((w & 0xFFFF0000FFFF0000ull) >> (16 - 2 * b));
    return (w & 0x00000000FFFFFFFFull) | ((w & 0xFFFFFFFF00000000ull) >> (32 - 4 * b));
}

static inline uint64_t wqk_expand8(uint64_t w, int b) {
    const uint64_t m4 = ((uint64_t)1 << (4 * b)) - 1, m2 = 0x0000000100000001ull * ((1u << (2 * b)) - 1),
                   m1 = 0x0001000100010001ull * ((1u << b) - 1);
    w = (w & m4) | ((w >> (4 * b)) & m4) << 32;
    w = (w & m2) | ((w >> (2 * b)) & m2) << 16;
    return (w & m1) | ((w >> b) & m1) << 8;
}

/* Packs whole bytes of codes when B divides 8: byte i holds codes i * 8/B ... (i + 1) * 8/B - 1,
 * the first in the lowest bits (the stream's order), in a loop GCC vectorises; returns how many
 * codes it packed. */
template <int B> static inline ptrdiff_t wqk_pack_bytes(const uint8_t *codes, ptrdiff_t n, uint8_t *out) {
    enum { PER_BYTE = 8 / B };
    const uint8_t mask = (uint8_t)((1u << B) - 1);
    const ptrdiff_t nbytes = n / PER_BYTE;
    for (ptrdiff_t i = 0; i < nbytes; i++) {
        uint8_t v = 0;
        for (int k = 0; k < PER_BYTE; k++) v |= (uint8_t)((codes[i * PER_BYTE + k] & mask) << (k * B));
        out[i] = v;
    }
    return nbytes * PER_BYTE;
}

/* Packs n codes (their low b bits) into ceil(n * b / 8) bytes, writing nothing else.  Widths
 * that divide 8 pack whole bytes at once; the others, and what is left, go 8 codes at a time:
 * each 8 codes become b bytes; whole words store 8 bytes (the next word overwrites the spare
 * ones) while they stay inside the output, the last word only what is its own. */
static inline void wqk_pack_codes(const uint8_t *codes, ptrdiff_t n, int b, uint8_t *out) {
    ptrdiff_t g = 0, nbytes = (n * b + 7) / 8;
    if (b == 2 || b == 4 || b == 8)  /* whole bytes: a multiple of 8 codes, or all of them */
        g = (b == 2 ? wqk_pack_bytes<2>(codes, n, out) : b == 4 ? wqk_pack_bytes<4>(codes, n, out)
                                                            : wqk_pack_bytes<8>(codes, n, out)) / 8;
    uint64_t w;
    for (; (g + 1) * 8 <= n && g * b + 8 <= nbytes; g++) {
        memcpy(&w, codes + g * 8, 8);
        w = wqk_compact8(w, b);
        memcpy(out + g * b, &w, 8);
    }
    for (; g * 8 < n; g++) {
        ptrdiff_t count = n - g * 8 < 8 ? n - g * 8 : 8;
        w = 0;
        memcpy(&w, codes + g * 8, (size_t)count);
        w = wqk_compact8(w, b);
        memcpy(out + g * b, &w, (size_t)((count * b + 7) / 8));
    }
}

/* Packs n codes into ceil(n * b / 8) bytes; returns nonzero if a code does not fit in b bits. */
WQK_CLONES static int wqk_pack(const uint8_t *codes, ptrdiff_t n, int b, int is_signed, uint8_t *out) {
    const uint8_t bias = is_signed ? (uint8_t)(1u << (b - 1)) : 0;
    uint8_t top = 0; /* the largest code once biased to unsigned: it fits if below 2^b */
    for (ptrdiff_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(codes[i] + bias);
        top = c > top ? c : top;
    }
    wqk_pack_codes(codes, n, b, out);
    return (top >> b) != 0;
}

/* stream[i] |= v, atomically: a byte other threads may be OR-ing their codes into. */
static inline void wqk_or_byte(uint8_t *stream, ptrdiff_t i, uint8_t v) {
#if defined(_MSC_VER) && !defined(__clang__)
    _InterlockedOr8((volatile char *)(stream + i), (char)v);
#else
    __atomic_fetch_or(stream + i, v, __ATOMIC_RELAXED);
#endif
}

/* ORs `count` codes, elements first .. first + count - 1 of one group of 8 (first % 8 + count
 * <= 8), into the bytes of the stream that hold them. */
static inline void wqk_or_codes(const uint8_t *codes, ptrdiff_t count, int64_t first, int b, uint8_t *stream) {
    const int k0 = (int)(first % 8);
    uint64_t w = 0;
    memcpy((uint8_t *)&w + k0, codes, (size_t)count);
    w = wqk_compact8(w, b);
    const int64_t base = (first - k0) / 8 * b;
    for (int j = k0 * b / 8; j <= ((k0 + (int)count) * b - 1) / 8; j++)
        wqk_or_byte(stream, base + j, (uint8_t)(w >> (8 * j)));
}

/* Packs n codes, elements first .. first + n - 1 of a b-bit stream, into the stream, so that
 * spans of the stream may be packed at once by several threads: the bytes that hold only
 * these codes are stored, those shared with the codes around them (when first or first + n is
 * not a multiple of 8) are OR-ed in atomically and must start at zero.  The codes of whole
 * groups of 8 start on a byte. */
WQK_CLONES static void wqk_pack_span(const uint8_t *codes, ptrdiff_t n, int64_t first, int b, uint8_t *stream) {
    ptrdiff_t head = (ptrdiff_t)((8 - first % 8) % 8);
    head = head < n ? head : n;
    if (head) wqk_or_codes(codes, head, first, b, stream);
    const ptrdiff_t whole = (n - head) / 8 * 8, rest = n - head - whole;
    wqk_pack_codes(codes + head, whole, b, stream + (first + head) / 8 * b);
    if (rest) wqk_or_codes(codes + head + whole, rest, first + head + whole, b, stream);
}

/* The inverse of wqk_pack_bytes: unpacks the codes of whole bytes; returns how many. */
template <int B> static inline ptrdiff_t wqk_unpack_bytes(const uint8_t *packed, ptrdiff_t n, uint8_t *codes) {
    enum { PER_BYTE = 8 / B };
    const uint8_t mask = (uint8_t)((1u << B) - 1);
    const ptrdiff_t nbytes = n / PER_BYTE;
    for (ptrdiff_t i = 0; i < nbytes; i++)
        for (int k = 0; k < PER_BYTE; k++) codes[i * PER_BYTE + k] = (uint8_t)((packed[i] >> (k * B)) & mask);
    return nbytes * PER_BYTE;
}

/* Unpacks n codes of b bits; signed codes are sign-extended to bytes. */
WQK_CLONES static void wqk_unpack(const uint8_t *packed, ptrdiff_t n, int b, int is_signed, uint8_t *codes) {
    ptrdiff_t g = 0, nbytes = (n * b + 7) / 8;
    if (b == 2 || b == 4 || b == 8)
        g = (b == 2 ? wqk_unpack_bytes<2>(packed, n, codes) : b == 4 ? wqk_unpack_bytes<4>(packed, n, codes)
                                                                : wqk_unpack_bytes<8>(packed, n, codes)) / 8;
    uint64_t w;
    for (; (g + 1) * 8 <= n && g * b + 8 <= nbytes; g++) {
        memcpy(&w, packed + g * b, 8);
        w = wqk_expand8(w, b);
        memcpy(codes + g * 8, &w, 8);
    }
    for (; g * 8 < n; g++) {
        ptrdiff_t count = n - g * 8 < 8 ? n - g * 8 : 8;
        w = 0;
        memcpy(&w, packed + g * b, (size_t)((count * b + 7) / 8));
        w = wqk_expand8(w, b);
        memcpy(codes + g * 8, &w, (size_t)count);
    }
    if (is_signed) {
        const uint8_t h = (uint8_t)(1u << (b - 1));
        for (ptrdiff_t i = 0; i < n; i++) codes[i] = (uint8_t)((codes[i] ^ h) - h);
    }
}

/* The code of quotient y = x / s as a Code: wqk_code's, to the bit (two's complement when signed). */
template <typename Code> static inline __attribute__((always_inline)) Code wqk_code_of(float y, float zp, float lo, float hi) {
    return (Code)(int32_t)(wqk_round_quotient(y, lo, hi) + zp);
}

/* Sum-preserving rounding of a tile of `w` groups, codes and all: each member's code is made
 * (wqk_code, from the same quotient) in the pass that adds up the residuals, written to q, and
 * then moved.  Member (r, c) of group j
 * (r < rows, c < length; C order within the group) is at j * lane + r * row + c; channels
 * side by side (length 1, lane 1) are read a row across the groups at a time (wqk_sums_columns),
 * the others copied into `e` and `code`, rows * length entries per group.
 * Per group, with r = x / s (float32) + zp and e = r - q in float64, summed in member order: the
 * fewest codes, at most |rint(sum e)|, move one step towards the sum, those of least cost
 * 1 - 2 * dir * e (the least added squared error), equal costs the earlier member; a code at the
 * end of the grid in that direction does not move.  A bound on the costs keeps few candidates,
 * and a selection (no sort) picks among them: linear time on average.
 * Scratch: e and code of w * (rows * length + WQK_SUM_PAD) entries, moves of rows * length.
 * Code: int8_t (signed codes) or uint8_t. */
struct wqk_move {
    double cost;
    ptrdiff_t at;
};

static inline bool wqk_cheaper(const wqk_move &a, const wqk_move &b) {
    return a.cost < b.cost || (a.cost == b.cost && a.at < b.at);
}

/* wqk_cheaper as a type of its own, so that the selection inlines it (a function pointer is
 * called every comparison) */
struct wqk_cheaper_order {
    bool operator()(const wqk_move &a, const wqk_move &b) const { return wqk_cheaper(a, b); }
};
static const wqk_cheaper_order wqk_cheaper_than = {};

/* The candidates of a group of m members for `want` moves: in `moves`, those whose cost(t) is
 * within a bound, raised from 8 * want / m until there are `want` of them or every movable
 * member is one (costs of unclipped codes lie in [0, 2], about uniformly: the first bound takes
 * about 4 * want; a code that cannot move costs HUGE_VAL, never taken); returns how many. */
template <typename Cost>
static inline __attribute__((always_inline)) ptrdiff_t wqk_candidates(ptrdiff_t m, ptrdiff_t want, Cost cost,
                                                                      wqk_move *moves) {
    double bound = 8.0 * (double)want / (double)m;
    for (;;) {
        const bool all = bound >= 2.0;
        const double limit = all ? DBL_MAX : bound;
        ptrdiff_t n = 0;
        for (ptrdiff_t t = 0; t < m; t++) {
            const double c = cost(t);
            if (!(c <= limit)) continue;
            moves[n].cost = c;
            moves[n].at = t;
            n++;
        }
        if (n >= want || all) return n;
        bound *= 4.0;
    }
}

/* The `want` cheapest of n candidates (fewer if there are fewer), moved to the front of
 * `moves` (wqk_cheaper: equal costs the earlier member); returns how many. */
static inline ptrdiff_t wqk_cheapest(wqk_move *moves, ptrdiff_t n, ptrdiff_t want) {
    const ptrdiff_t take = want < n ? want : n;
    if (take < n) std::nth_element(moves, moves + take, moves + n, wqk_cheaper_than);
    return take;
}

#define WQK_SUM_LANES 64 /* groups of a tile, at most */
/* Scratch entries between the end of one group's e and code and the start of the next: groups
 * a power of two apart would share cache sets (9 lines apart for e, 72 bytes for code, a group
 * of 4096 members maps its neighbours' rows to other sets). */
#define WQK_SUM_PAD 72

/* The rule of wqk_preserve_sums for one group whose first bound left too few candidates, or
 * more than its list holds: its m members' residuals e(t) (Residual: residual[t * ys] itself;
 * else ((double)residual[t * ys] + zp) - code[t * ys], from the float32 quotients), the bound
 * raised until it takes `want` of them, then a selection; the chosen members' codes at
 * q + t * row move one step. */
template <typename Code, bool Residual>
static void wqk_sums_group(const float *residual, const Code *code, ptrdiff_t ys, ptrdiff_t m, float zp, double k,
                           float qmin, float qmax, Code *q, ptrdiff_t row, wqk_move *moves) {
    const double dir = k > 0.0 ? 1.0 : -1.0;
    const Code edge = (Code)(k > 0.0 ? qmax : qmin);
    const ptrdiff_t want = std::fabs(k) < (double)m ? (ptrdiff_t)std::fabs(k) : m;
    const ptrdiff_t n = wqk_candidates(m, want, [&](ptrdiff_t t) {
        const Code c = code[t * ys];
        const double e = Residual ? (double)residual[t * ys] : ((double)residual[t * ys] + (double)zp) - (double)c;
        return c == edge ? HUGE_VAL : 1.0 - 2.0 * dir * e;
    }, moves);
    const ptrdiff_t take = wqk_cheapest(moves, n, want);
    const int step = k > 0.0 ? 1 : -1;
    for (ptrdiff_t i = 0; i < take; i++) q[moves[i].at * row] = (Code)(q[moves[i].at * row] + step);
}

/* Quotients below this magnitude leave a float32 residual y - rint(clamp(y)) that is exact:
 * unclamped, y and its code are within a factor 2 (Sterbenz), or the code is 0; clamped, the
 * difference is a multiple of y's unit in the last place no larger than 2 |y|. */
#define WQK_EXACT_RESIDUAL 8388608.0f /* 2^23 */

/* wqk_preserve_sums for channels side by side (member r of group j at r * row + j, w <= 64
 * groups; W: w when it is known), in two passes over the tile and no transpose.  The first
 * takes each member's float32 quotient x / s, makes its code (into code and q), and adds the
 * residuals up in member order, a row at a time across the groups (vectorised); the second
 * makes each member's cost from what the first kept, to the bit, and lists per group those
 * within its first bound (a compare a member, a branch per 8 groups of a row): about 4 * want
 * of m.  A group whose list is short of `want`, or full, takes the rule again on its own
 * (wqk_sums_group).  Scratch: rows * w floats and codes, lists of `cap` moves a group.
 *
 * Residual: every zero point is 0, so that ((double)y + zp) - code, the reference's residual,
 * is the float32 y - code whenever that is exact (WQK_EXACT_RESIDUAL): the first pass keeps
 * the residuals (floats: half the conversions and twice the lanes of doubles), and the second
 * lists the members whose float32 residual is within a bound a little wider than the group's,
 * then takes those whose cost, in float64, is within the group's own.  Returns false, before
 * the second pass, when a quotient is too large for that (the caller then runs the tile
 * without Residual); the codes written meanwhile are made again.  Without Residual the first
 * pass keeps the quotients, and the costs are made from them as the reference makes them, for
 * the members whose float32 residual y - (code - zp) is within the wider bound (a float32
 * compare a member, not float64 costs: the file layer's asymmetric grids take this path).  That
 * residual is exact below WQK_EXACT_RESIDUAL; beyond, its code is clamped and its residual so
 * far past any bound (|e| > 2^22) that rounding it lists the member or not as its exact one. */
#ifndef WQK_SUM_AHEAD
#define WQK_SUM_AHEAD 8
#endif
template <typename Code, int W, bool Residual>
static inline __attribute__((always_inline)) bool wqk_sums_columns(const float *x, Code *q, ptrdiff_t w0,
                                                                   ptrdiff_t rows, ptrdiff_t row, const float *s,
                                                                   const float *zp, float qmin, float qmax, float *y,
                                                                   Code *code, wqk_move *lists, ptrdiff_t cap,
                                                                   wqk_move *moves) {
    const ptrdiff_t w = W ? W : w0;
    double total[WQK_SUM_LANES] = {0.0};
    float lo[WQK_SUM_LANES], hi[WQK_SUM_LANES]; /* each group's code bounds before its zero point */
    float top[WQK_SUM_LANES] = {0.0f};          /* Residual: each group's largest |quotient| */
    for (ptrdiff_t j = 0; j < w; j++) {
        lo[j] = qmin - zp[j];
        hi[j] = qmax - zp[j];
    }
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *xr = x + r * row;
        Code *qr = q + r * row;
        if (r + WQK_SUM_AHEAD < rows) { /* short runs far apart: not fetched ahead by the hardware */
            wqk_prefetch_run(xr + WQK_SUM_AHEAD * row, w * (ptrdiff_t)sizeof(float));
            wqk_prefetch_run(qr + WQK_SUM_AHEAD * row, w * (ptrdiff_t)sizeof(Code));
        }
        float *yr = y + r * w;
        Code *__restrict cr = code + r * w; /* (codes are bytes, which may alias anything) */
        if (Residual) {
            for (ptrdiff_t j = 0; j < w; j++) {
                const float v = xr[j] / s[j], a = v < 0.0f ? -v : v; /* (std::fabs: a call here) */
                const float c = wqk_round_quotient(v, lo[j], hi[j]);
                cr[j] = (Code)(int32_t)c;
                yr[j] = v - c;
                total[j] += (double)yr[j];
                top[j] = a > top[j] ? a : top[j];
            }
        } else {
            for (ptrdiff_t j = 0; j < w; j++) {
                const float v = xr[j] / s[j];
                yr[j] = v;
                cr[j] = wqk_code_of<Code>(v, zp[j], lo[j], hi[j]);
                total[j] += ((double)v + (double)zp[j]) - (double)cr[j];
            }
        }
        memcpy(qr, cr, (size_t)w * sizeof(Code));
    }
    if (Residual) {
        float most = 0.0f;
        for (ptrdiff_t j = 0; j < w; j++) most = top[j] > most ? top[j] : most;
        if (!(most < WQK_EXACT_RESIDUAL)) return false;
    }
    double limit[WQK_SUM_LANES], dir[WQK_SUM_LANES], k[WQK_SUM_LANES], edge[WQK_SUM_LANES];
    float fdir[WQK_SUM_LANES], least[WQK_SUM_LANES]; /* Residual: listed when fdir * e >= least */
    ptrdiff_t want[WQK_SUM_LANES], count[WQK_SUM_LANES];
    bool active = false;
    for (ptrdiff_t j = 0; j < w; j++) {
        k[j] = std::nearbyint(total[j]);
        dir[j] = k[j] > 0.0 ? 1.0 : -1.0;
        edge[j] = (double)(Code)(k[j] > 0.0 ? qmax : qmin); /* compared as doubles: the loop below vectorises */
        want[j] = std::fabs(k[j]) < (double)rows ? (ptrdiff_t)std::fabs(k[j]) : rows;
        /* costs of unclipped codes lie about uniformly in [0, 2]: a bound that takes want plus
         * three standard deviations and 4 on average is short of want about once in a thousand */
        const double bound = 2.0 * ((double)want[j] + 3.0 * std::sqrt((double)want[j]) + 4.0) / (double)rows;
        limit[j] = k[j] == 0.0 ? -HUGE_VAL : bound >= 2.0 ? DBL_MAX : bound; /* none, or the first bound */
        count[j] = 0;
        active |= k[j] != 0.0;
        /* cost 1 - 2 * dir * e <= limit asks dir * e >= (1 - limit) / 2: in float32, a bound
         * 2^-20 lower (many units in the last place of any residual near it) lists a few more */
        fdir[j] = (float)dir[j];
        least[j] = k[j] == 0.0 ? HUGE_VALF : limit[j] == DBL_MAX ? -HUGE_VALF
                                                                 : (float)((1.0 - limit[j]) / 2.0 - 0x1p-20);
    }
    if (!active) return true;
    uint8_t hit[WQK_SUM_LANES] = {0};
    double cost[WQK_SUM_LANES];
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *yr = y + r * w;
        const Code *cr = code + r * w;
        if (Residual) {
            for (ptrdiff_t j = 0; j < w; j++) hit[j] = fdir[j] * yr[j] >= least[j];
        } else { /* the float32 residual y - (code - zp), exact below WQK_EXACT_RESIDUAL */
            for (ptrdiff_t j = 0; j < w; j++) hit[j] = fdir[j] * (yr[j] - ((float)cr[j] - zp[j])) >= least[j];
        }
        for (ptrdiff_t j0 = 0; j0 < w; j0 += 8) {
            uint64_t h; /* 8 groups' hits, a byte each (0 or 1): taken lowest first */
            memcpy(&h, hit + j0, 8);
            while (h) {
                const ptrdiff_t j = j0 + (wqk_ctz64(h) >> 3);
                h &= h - 1;
                { /* listed by the wider float32 bound: the group's own, exactly */
                    const double c = (double)cr[j], e = Residual ? (double)yr[j] : ((double)yr[j] + (double)zp[j]) - c;
                    cost[j] = c == edge[j] ? HUGE_VAL : 1.0 - 2.0 * dir[j] * e;
                    if (!(cost[j] <= limit[j])) continue;
                }
                if (count[j] < cap) {
                    lists[j * cap + count[j]].cost = cost[j];
                    lists[j * cap + count[j]].at = r;
                }
                count[j]++;
            }
        }
    }
    for (ptrdiff_t j = 0; j < w; j++) {
        if (k[j] == 0.0) continue;
        const ptrdiff_t n = count[j];
        if (n > cap || (n < want[j] && limit[j] != DBL_MAX)) { /* the list overflowed, or too few */
            wqk_sums_group<Code, Residual>(y + j, code + j, w, rows, zp[j], k[j], qmin, qmax, q + j, row, moves);
            continue;
        }
        wqk_move *list = lists + j * cap;
        const ptrdiff_t take = wqk_cheapest(list, n, want[j]);
        const int step = k[j] > 0.0 ? 1 : -1;
        for (ptrdiff_t i = 0; i < take; i++) q[list[i].at * row + j] = (Code)(q[list[i].at * row + j] + step);
    }
    return true;
}

template <typename Code>
WQK_CLONES WQK_NO_TRAPS static void wqk_preserve_sums(const float *x, Code *q, ptrdiff_t w, ptrdiff_t lane, ptrdiff_t rows, ptrdiff_t row,
                              ptrdiff_t length, const float *s, const float *zp, float qmin,
                              float qmax, double *e, Code *code, wqk_move *moves) {
    const ptrdiff_t m = rows * length, ld = m + WQK_SUM_PAD; /* members; scratch entries a group */
    if (length == 1 && lane == 1) { /* channels side by side (a Dense kernel's columns): two passes */
        float *y = (float *)e; /* the scratch of e: quotients, then the lists of candidates */
        const ptrdiff_t used = (w * m + 1) / 2 + 1; /* doubles, rounded up */
        const ptrdiff_t cap = (w * ld - used) * (ptrdiff_t)sizeof(double) / (ptrdiff_t)sizeof(wqk_move) / w;
        wqk_move *lists = (wqk_move *)(e + used);
        bool zero = true; /* every zero point 0: the residuals are float32 differences (see wqk_sums_columns) */
        for (ptrdiff_t j = 0; j < w; j++) zero &= zp[j] == 0.0f;
        if (zero && (w == WQK_SUM_LANES
                         ? wqk_sums_columns<Code, WQK_SUM_LANES, true>(x, q, w, rows, row, s, zp, qmin, qmax, y, code,
                                                                       lists, cap, moves)
                         : wqk_sums_columns<Code, 0, true>(x, q, w, rows, row, s, zp, qmin, qmax, y, code, lists, cap,
                                                           moves)))
            return;
        if (w == WQK_SUM_LANES)
            wqk_sums_columns<Code, WQK_SUM_LANES, false>(x, q, w, rows, row, s, zp, qmin, qmax, y, code, lists, cap,
                                                         moves);
        else
            wqk_sums_columns<Code, 0, false>(x, q, w, rows, row, s, zp, qmin, qmax, y, code, lists, cap, moves);
        return;
    }
    double total[WQK_SUM_LANES] = {0.0}; /* each group's members are met in their order */
    for (ptrdiff_t r = 0; r < rows; r++)
        for (ptrdiff_t j = 0; j < w; j++) {
            const float sj = s[j];
            const double zj = (double)zp[j];
            double sum = total[j];
            const float lo = qmin - zp[j], hi = qmax - zp[j];
            for (ptrdiff_t c = 0; c < length; c++) {
                const ptrdiff_t at = j * lane + r * row + c, t = j * ld + r * length + c;
                const float y = x[at] / sj;
                code[t] = q[at] = wqk_code_of<Code>(y, zp[j], lo, hi);
                e[t] = ((double)y + zj) - (double)code[t];
                sum += e[t];
            }
            total[j] = sum;
        }
    for (ptrdiff_t j = 0; j < w; j++) {
        const double k = std::nearbyint(total[j]);
        if (k == 0.0) continue;
        double *cost = e + j * ld; /* each member's e, made its cost in place */
        const Code *cj = code + j * ld;
        const double dir = k > 0.0 ? 1.0 : -1.0;
        const Code edge = (Code)(k > 0.0 ? qmax : qmin); /* a code there does not move that way */
        const ptrdiff_t want = std::fabs(k) < (double)m ? (ptrdiff_t)std::fabs(k) : m;
        for (ptrdiff_t t = 0; t < m; t++) /* a code that cannot move costs more than any */
            cost[t] = cj[t] == edge ? HUGE_VAL : 1.0 - 2.0 * dir * cost[t];
        const ptrdiff_t n = wqk_candidates(m, want, [cost](ptrdiff_t t) { return cost[t]; }, moves);
        const ptrdiff_t take = wqk_cheapest(moves, n, want);
        const int step = k > 0.0 ? 1 : -1;
        for (ptrdiff_t i = 0; i < take; i++) {
            const ptrdiff_t t = moves[i].at;
            Code *p = q + j * lane + (t / length) * row + t % length;
            *p = (Code)(*p + step);
        }
    }
}

/* ---- bytes ----------------------------------------------------------------------------------
 * The first offset of the n-byte pattern (n >= 2) in size bytes of data, or -1: the starts
 * where its first and last bytes both match are found WQK_FIND_RUN at a time (a loop GCC
 * vectorises, which also ORs them together: in varied data such as a file's bytes almost every
 * run has none, and costs no branch but that one), then compared whole.  For short signatures in
 * varied data: where most starts match at both ends, each is compared whole, O(size * n)
 * (bytes.find stays linear). */
#define WQK_FIND_RUN 512
WQK_CLONES static ptrdiff_t wqk_find_bytes(const uint8_t *data, ptrdiff_t size, const uint8_t *pat, ptrdiff_t n) {
    const uint8_t first = pat[0], last = pat[n - 1];
    const ptrdiff_t starts = size - n + 1; /* start offsets that leave room for the pattern */
    ptrdiff_t i = 0;
    for (; i + WQK_FIND_RUN <= starts; i += WQK_FIND_RUN) {
        uint8_t hit[WQK_FIND_RUN], any = 0;
        for (int j = 0; j < WQK_FIND_RUN; j++) {
            hit[j] = (uint8_t)((data[i + j] == first) & (data[i + j + n - 1] == last));
            any |= hit[j];
        }
        if (!any)
            continue;
        for (int j0 = 0; j0 < WQK_FIND_RUN; j0 += 8) {
            uint64_t h; /* 8 starts' hits, a byte each: lowest first */
            memcpy(&h, hit + j0, 8);
            while (h) {
                const ptrdiff_t at = i + j0 + (wqk_ctz64(h) >> 3);
                h &= h - 1;
                if (memcmp(data + at, pat, (size_t)n) == 0) return at;
            }
        }
    }
    for (; i < starts; i++)
        if (data[i] == first && memcmp(data + i, pat, (size_t)n) == 0) return i;
    return -1;
}

#endif
