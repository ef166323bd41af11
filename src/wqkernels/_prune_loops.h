/* Innermost loops of the pruning kernels, called from _prune.pxi.
 *
 * They work on the bit patterns of float16, float32 and float64 values, read as unsigned
 * integers of the same width ("K").  The bits of |x|, x & ~sign, are a key that orders like the
 * magnitudes of finite values, with +-0 equal and lowest, and +-Inf and NaN above all of them.
 * Magnitude selection, N:M and threshold pruning therefore never leave the integers; only the
 * norms, shrink and the error statistics convert to floating point.
 *
 * The body below is written once and instantiated for the three widths by including this
 * file into itself; every function gets a _u16, _u32 or _u64 suffix, and wqk_NAME(width, ...)
 * picks the instance for an element width in bytes, so the Cython layer calls one name from
 * code generic over a fused type.  Loops are written so that GCC vectorises them (checked with
 * -fopt-info-vec); WQK_CLONES (from _loops.h) builds an AVX2/AVX-512 copy of the hot ones.
 */
#ifndef WQK_PRUNE_LOOPS_H
#define WQK_PRUNE_LOOPS_H

#include <stdint.h>
#include <string.h>

#include "_loops.h"

#define WQK_INLINE static inline __attribute__((always_inline))

/* Sums whose order may change (statistics, never codes), on finite values checked beforehand. */
#if defined(__GNUC__) && !defined(__clang__)
#define WQK_SUMS __attribute__((optimize("associative-math", "no-signed-zeros", "no-trapping-math", "finite-math-only")))
#else
#define WQK_SUMS
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static inline int wqk_ctz(uint32_t v) { unsigned long i; _BitScanForward(&i, v); return (int)i; }
#define wqk_prefetch(p) ((void)(p))
#define wqk_prefetch_write(p) ((void)(p))
#else
#define wqk_ctz(v) __builtin_ctz(v)
#define wqk_prefetch(p) __builtin_prefetch(p)
#define wqk_prefetch_write(p) __builtin_prefetch(p, 1)
#endif

/* float16 <-> float32 for finite values, exact and round-half-to-even (F. Giesen's method;
 * no F16C needed).  NumPy computes float16 arithmetic the same way: in float32, then rounded. */
WQK_INLINE float wqk_half_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7fffu) << 13, sign = (uint32_t)(h & 0x8000u) << 16;
    float f;
    if ((h & 0x7c00u) == 0) { /* zero or subnormal: an integer multiple of 2^-24 */
        f = (float)(h & 0x3ffu) * 5.9604644775390625e-8f;
        memcpy(&bits, &f, 4);
    } else {
        bits += (uint32_t)(127 - 15) << 23;
    }
    bits |= sign;
    memcpy(&f, &bits, 4);
    return f;
}

WQK_INLINE uint16_t wqk_float_to_half(float f) {
    uint32_t bits, sign;
    memcpy(&bits, &f, 4);
    sign = (bits >> 16) & 0x8000u;
    bits &= 0x7fffffffu;
    if (bits >= 0x47800000u) /* >= 2^16 (NaN is excluded by validation): infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (bits < 0x38800000u) { /* below 2^-14: adding 0.5 rounds to a multiple of 2^-24 */
        float t;
        memcpy(&t, &bits, 4);
        t += 0.5f;
        memcpy(&bits, &t, 4);
        return (uint16_t)(sign | (bits - 0x3f000000u));
    }
    bits += 0xc8000fffu + ((bits >> 13) & 1u); /* rebias the exponent, round half to even */
    return (uint16_t)(sign | (bits >> 13));
}

/* ---- instantiate the body for each width ------------------------------------------------- */
#define WQK_PRUNE_BODY
#define K uint16_t
#define SK int16_t
#define F float
#define W 16
#define KEY_INF 0x7c00u
#define S(name) name##_u16
#define TO_F(b) wqk_half_to_float(b)
#define FROM_F(f) wqk_float_to_half(f)
#include "_prune_loops.h"

WQK_INLINE float wqk_bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
WQK_INLINE uint32_t wqk_float_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
WQK_INLINE double wqk_bits_to_double(uint64_t b) { double f; memcpy(&f, &b, 8); return f; }
WQK_INLINE uint64_t wqk_double_to_bits(double f) { uint64_t b; memcpy(&b, &f, 8); return b; }

#define K uint32_t
#define SK int32_t
#define F float
#define W 32
#define KEY_INF 0x7f800000u
#define S(name) name##_u32
#define TO_F(b) wqk_bits_to_float(b)
#define FROM_F(f) wqk_float_to_bits(f)
#include "_prune_loops.h"

#define K uint64_t
#define SK int64_t
#define F double
#define W 64
#define KEY_INF 0x7ff0000000000000ull
#define S(name) name##_u64
#define TO_F(b) wqk_bits_to_double(b)
#define FROM_F(f) wqk_double_to_bits(f)
#include "_prune_loops.h"
#undef WQK_PRUNE_BODY

/* One name per loop, called with the element width in bytes first (a constant where the
 * Cython layer calls it, so only one branch is compiled in); arrays are passed as void
 * pointers and keys as uint64_t. */
#define WQK_BY_WIDTH(name, width, ...) \
    ((width) == 2 ? name##_u16(__VA_ARGS__) : (width) == 4 ? name##_u32(__VA_ARGS__) : name##_u64(__VA_ARGS__))
#define wqk_scan(width, ...) WQK_BY_WIDTH(wqk_scan, width, __VA_ARGS__)
#define wqk_histogram(width, ...) WQK_BY_WIDTH(wqk_histogram, width, __VA_ARGS__)
#define wqk_compact(width, ...) WQK_BY_WIDTH(wqk_compact, width, __VA_ARGS__)
#define wqk_zero_listed(width, ...) WQK_BY_WIDTH(wqk_zero_listed, width, __VA_ARGS__)
#define wqk_find_equal(width, ...) WQK_BY_WIDTH(wqk_find_equal, width, __VA_ARGS__)
#define wqk_mask_below(width, ...) WQK_BY_WIDTH(wqk_mask_below, width, __VA_ARGS__)
#define wqk_count_below(width, ...) WQK_BY_WIDTH(wqk_count_below, width, __VA_ARGS__)
#define wqk_n_m_runs(width, ...) WQK_BY_WIDTH(wqk_n_m_runs, width, __VA_ARGS__)
#define wqk_n_m_lanes(width, ...) WQK_BY_WIDTH(wqk_n_m_lanes, width, __VA_ARGS__)
#define wqk_norm_run(width, ...) WQK_BY_WIDTH(wqk_norm_run, width, __VA_ARGS__)
#define wqk_norm_lanes(width, ...) WQK_BY_WIDTH(wqk_norm_lanes, width, __VA_ARGS__)
#define wqk_keep_lanes(width, ...) WQK_BY_WIDTH(wqk_keep_lanes, width, __VA_ARGS__)
#define wqk_clip(width, ...) WQK_BY_WIDTH(wqk_clip, width, __VA_ARGS__)
#define wqk_shrink(width, ...) WQK_BY_WIDTH(wqk_shrink, width, __VA_ARGS__)
#define wqk_error(width, ...) WQK_BY_WIDTH(wqk_error, width, __VA_ARGS__)
#define wqk_lamp_histogram(width, ...) WQK_BY_WIDTH(wqk_lamp_histogram, width, __VA_ARGS__)

#endif /* WQK_PRUNE_LOOPS_H */


#ifdef WQK_PRUNE_BODY
/* ==== the body, for K = uint16_t / uint32_t / uint64_t ====================================== */

#define ABS ((K)~((K)1 << (W - 1)))  /* key = bits & ABS */
#define SIGN ((K)((K)1 << (W - 1)))
#define BLOCK 32                     /* elements per block of the blocked scans */

/* The fused pass of a magnitude selection over one run (global indices base..base+n).
 * With a window [lo, hi] of keys known (from a sample) to hold the k-th smallest key:
 * counts[0] += keys below lo, counts[1] += keys in the window, and while counts[1] <= cap the
 * window's keys and global indices are appended to keys/index.  When y is not NULL, also
 * y = (key < lo) ? +0 : x.  Returns the largest key (>= KEY_INF: a NaN or an infinity).
 * Blocks of 32 are vectorised into counts and a bit mask of the window's lanes; only the set
 * bits are visited, so a sparse window costs little more than a copy. */
WQK_INLINE K S(wqk_scan_impl)(const K *x, K *y, ptrdiff_t n, K lo, K hi, int64_t base,
                              K *keys, int64_t *index, int64_t cap, int64_t *counts,
                              const int write) {
    const K width = (K)(hi - lo);
    int64_t less = counts[0], inside = counts[1];
    K top = 0;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += BLOCK) {
        ptrdiff_t len = n - i0 < BLOCK ? n - i0 : BLOCK;
        uint32_t below = 0, mask = 0;
        K t = 0;
        if (len == BLOCK) {
            for (int j = 0; j < BLOCK; j++) {
                K b = x[i0 + j], k = b & ABS;
                below += k < lo;
                mask |= (uint32_t)((K)(k - lo) <= width) << j;
                t = k > t ? k : t;
                if (write) y[i0 + j] = k < lo ? (K)0 : b;
            }
        } else {
            for (int j = 0; j < len; j++) {
                K b = x[i0 + j], k = b & ABS;
                below += k < lo;
                mask |= (uint32_t)((K)(k - lo) <= width) << j;
                t = k > t ? k : t;
                if (write) y[i0 + j] = k < lo ? (K)0 : b;
            }
        }
        less += below;
        top = t > top ? t : top;
        for (; mask; mask &= mask - 1) {
            int j = wqk_ctz(mask);
            if (inside < cap) {
                keys[inside] = x[i0 + j] & ABS;
                index[inside] = base + i0 + j;
            }
            inside++;
        }
    }
    counts[0] = less;
    counts[1] = inside;
    return top;
}

WQK_CLONES static K S(wqk_scan)(const void *x_, void *y_, ptrdiff_t n, K lo, K hi, int64_t base,
                                void *keys_, int64_t *index, int64_t cap, int64_t *counts) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    K *keys = (K *)keys_;
    if (y)
        return S(wqk_scan_impl)(x, y, n, lo, hi, base, keys, index, cap, counts, 1);
    return S(wqk_scan_impl)(x, y, n, lo, hi, base, keys, index, cap, counts, 0);
}

/* For listed entries (keys and positions, positions increasing, all inside y's run that starts
 * at position base): y = +0 where key < t, or key == t at a position <= cut.  The writes are
 * scattered, so the cache lines a few entries ahead are fetched early. */
WQK_CLONES static void S(wqk_zero_listed)(void *y_, const void *keys_, const int64_t *index,
                                          ptrdiff_t count, K t, int64_t cut, int64_t base) {
    K *y = (K *)y_;
    const K *keys = (const K *)keys_;
    enum { AHEAD = 16 };
    for (ptrdiff_t c = 0; c < count; c++) {
        if (c + AHEAD < count) wqk_prefetch_write(y + (index[c + AHEAD] - base));
        if (keys[c] < t || (keys[c] == t && index[c] <= cut)) y[index[c] - base] = 0;
    }
}

/* hist[(key >> shift) & mask] += 1 for the keys whose bits above `above` equal prefix. */
static void S(wqk_histogram)(const void *x_, ptrdiff_t n, K prefix, int above, int shift,
                             uint32_t mask, int64_t *hist) {
    const K *x = (const K *)x_;
    for (ptrdiff_t i = 0; i < n; i++) {
        K k = x[i] & ABS;
        if ((K)(k >> above) == prefix) hist[(k >> shift) & mask]++;
    }
}

/* Appends to out the keys whose bits above `above` equal prefix; returns how many. */
static ptrdiff_t S(wqk_compact)(const void *x_, ptrdiff_t n, K prefix, int above, void *out_) {
    const K *x = (const K *)x_;
    K *out = (K *)out_;
    ptrdiff_t m = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        K k = x[i] & ABS;
        out[m] = k;
        m += (K)(k >> above) == prefix;
    }
    return m;
}

/* Index of the r-th (1-based) element whose key is t; if there are fewer, -1 with *r reduced
 * by their number. */
WQK_CLONES static ptrdiff_t S(wqk_find_equal)(const void *x_, ptrdiff_t n, K t, int64_t *r) {
    const K *x = (const K *)x_;
    int64_t need = *r;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += BLOCK) {
        ptrdiff_t len = n - i0 < BLOCK ? n - i0 : BLOCK;
        K count = 0;
        for (ptrdiff_t j = 0; j < len; j++) count += (K)((x[i0 + j] & ABS) == t);
        if ((int64_t)count >= need) {
            for (ptrdiff_t j = 0; j < len; j++)
                if ((x[i0 + j] & ABS) == t && --need == 0) return i0 + j;
        }
        need -= count;
    }
    *r = need;
    return -1;
}

/* y = +0 where key < t, or key == t and the index is below cut; else y = x.  Returns the
 * largest key. */
WQK_CLONES static K S(wqk_mask_below)(const void *x_, void *y_, ptrdiff_t n, K t, ptrdiff_t cut) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    K top = 0;
    cut = cut < 0 ? 0 : (cut > n ? n : cut);
    for (ptrdiff_t i = 0; i < cut; i++) {
        K b = x[i], k = b & ABS;
        top = k > top ? k : top;
        y[i] = k <= t ? (K)0 : b;
    }
    for (ptrdiff_t i = cut; i < n; i++) {
        K b = x[i], k = b & ABS;
        top = k > top ? k : top;
        y[i] = k < t ? (K)0 : b;
    }
    return top;
}

/* The number of keys below t, and (in *top) the largest key. */
WQK_CLONES static int64_t S(wqk_count_below)(const void *x_, ptrdiff_t n, K t, void *top_) {
    const K *x = (const K *)x_;
    K *top = (K *)top_;
    int64_t count = 0;
    K m = *top;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += BLOCK) {
        ptrdiff_t len = n - i0 < BLOCK ? n - i0 : BLOCK;
        K c = 0;
        for (ptrdiff_t j = 0; j < len; j++) {
            K k = x[i0 + j] & ABS;
            c += (K)(k < t);
            m = k > m ? k : m;
        }
        count += c;
    }
    *top = m;
    return count;
}

/* ---- N:M ----------------------------------------------------------------------------------
 * In a run of m elements, element p is kept when fewer than n others outrank it: a larger
 * key, or the same key at a lower position.  Every rank is found before anything is written,
 * so y may be x. */

WQK_INLINE K S(wqk_n_m_runs_impl)(const K *x, K *y, ptrdiff_t runs, int m, int n, K *rank) {
    K top = 0;
    for (ptrdiff_t g = 0; g < runs; g++) {
        const K *a = x + g * m;
        for (int p = 0; p < m; p++) {
            K kp = a[p] & ABS, r = 0;
            for (int l = 0; l < m; l++) {
                K kl = a[l] & ABS;
                r += (K)((kl > kp) | ((kl == kp) & (l < p)));
            }
            rank[p] = r;
            top = kp > top ? kp : top;
        }
        for (int p = 0; p < m; p++) y[g * m + p] = rank[p] < (K)n ? a[p] : (K)0;
    }
    return top;
}

/* The same for a constant small m, RUNS_AT_ONCE runs at a time: their keys are transposed into
 * one row per position so that the ranking is vectorised across runs. */
#define RUNS_AT_ONCE 64
WQK_INLINE K S(wqk_n_m_runs_wide)(const K *x, K *y, ptrdiff_t runs, const int m, int n) {
    K key[8][RUNS_AT_ONCE], keep[8][RUNS_AT_ONCE];
    K top = 0;
    ptrdiff_t g0 = 0;
    for (; g0 + RUNS_AT_ONCE <= runs; g0 += RUNS_AT_ONCE) {
        const K *a = x + g0 * m;
        for (int g = 0; g < RUNS_AT_ONCE; g++)
            for (int p = 0; p < m; p++) key[p][g] = a[g * m + p] & ABS;
        for (int p = 0; p < m; p++) {
            for (int g = 0; g < RUNS_AT_ONCE; g++) {
                K r = 0, kp = key[p][g];
                for (int l = 0; l < m; l++)
                    r += (K)(l < p ? key[l][g] >= kp : (l > p ? key[l][g] > kp : 0));
                keep[p][g] = r < (K)n ? (K)~(K)0 : (K)0;
                top = kp > top ? kp : top;
            }
        }
        for (int g = 0; g < RUNS_AT_ONCE; g++)
            for (int p = 0; p < m; p++) y[g0 * m + g * m + p] = a[g * m + p] & keep[p][g];
    }
    K rank[8];
    K t = S(wqk_n_m_runs_impl)(x + g0 * m, y + g0 * m, runs - g0, m, n, rank);
    return t > top ? t : top;
}
#undef RUNS_AT_ONCE

/* `runs` consecutive runs of m contiguous elements (the axis is the last one); rank holds m.
 * Returns the largest key. */
WQK_CLONES static K S(wqk_n_m_runs)(const void *x_, void *y_, ptrdiff_t runs, int m, int n, void *rank_) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    K *rank = (K *)rank_;
    switch (m) { /* a constant m lets GCC unroll the ranking */
    case 2: return S(wqk_n_m_runs_wide)(x, y, runs, 2, n);
    case 4: return S(wqk_n_m_runs_wide)(x, y, runs, 4, n);
    case 8: return S(wqk_n_m_runs_wide)(x, y, runs, 8, n);
    default: return S(wqk_n_m_runs_impl)(x, y, runs, m, n, rank);
    }
}

/* One run of `len` rows of `lanes` contiguous elements, rows `stride` apart, where each lane
 * is a separate run (the axis is not the last one).  rank holds len * chunk elements.
 * Returns the largest key. */
WQK_CLONES static K S(wqk_n_m_lanes)(const void *x_, void *y_, ptrdiff_t lanes, ptrdiff_t stride,
                                     int len, int n, void *rank_, ptrdiff_t chunk) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    K *rank = (K *)rank_;
    K top = 0;
    for (ptrdiff_t i0 = 0; i0 < lanes; i0 += chunk) {
        ptrdiff_t c = lanes - i0 < chunk ? lanes - i0 : chunk;
        for (int p = 0; p < len; p++) {
            const K *xp = x + p * stride + i0;
            K *rp = rank + p * chunk;
            for (ptrdiff_t i = 0; i < c; i++) rp[i] = 0;
            for (int l = 0; l < len; l++) {
                const K *xl = x + l * stride + i0;
                if (l < p) {
                    for (ptrdiff_t i = 0; i < c; i++) rp[i] += (K)((xl[i] & ABS) >= (xp[i] & ABS));
                } else if (l > p) {
                    for (ptrdiff_t i = 0; i < c; i++) rp[i] += (K)((xl[i] & ABS) > (xp[i] & ABS));
                }
            }
        }
        for (int p = 0; p < len; p++) {
            const K *xp = x + p * stride + i0, *rp = rank + p * chunk;
            K *yp = y + p * stride + i0;
            for (ptrdiff_t i = 0; i < c; i++) {
                K b = xp[i], k = b & ABS;
                top = k > top ? k : top;
                yp[i] = rp[i] < (K)n ? b : (K)0;
            }
        }
    }
    return top;
}

/* ---- channels ------------------------------------------------------------------------------
 * Norms accumulate |x| (ord 1) or x^2 (ord 2) in float64, in a fixed order for a given shape. */

WQK_INLINE double S(wqk_norm_term)(K b, int ord) {
    double v = (double)TO_F((K)(b & ABS));
    return ord == 1 ? v : v * v;
}

/* The sum of the terms of one contiguous run, in 8 interleaved partial sums. */
WQK_CLONES static double S(wqk_norm_run)(const void *x_, ptrdiff_t n, int ord) {
    const K *x = (const K *)x_;
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t i = 0;
    if (ord == 1) {
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += S(wqk_norm_term)(x[i + j], 1);
    } else {
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += S(wqk_norm_term)(x[i + j], 2);
    }
    for (; i < n; i++) acc[0] += S(wqk_norm_term)(x[i], ord);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* acc[i] += the term of x[i]: one row of a (rows, channels) array. */
WQK_CLONES static void S(wqk_norm_lanes)(const void *x_, ptrdiff_t n, int ord, double *acc) {
    const K *x = (const K *)x_;
    if (ord == 1) {
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += S(wqk_norm_term)(x[i], 1);
    } else {
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += S(wqk_norm_term)(x[i], 2);
    }
}

/* y = x & keep: keep[i] is all ones or zero. */
WQK_CLONES static void S(wqk_keep_lanes)(const void *x_, void *y_, ptrdiff_t n, const void *keep_) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    const K *keep = (const K *)keep_;
    for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] & keep[i];
}

/* ---- clip and shrink ------------------------------------------------------------------- */

/* The bits as a signed integer that compares like the float (+0 and -0 equal). */
WQK_INLINE SK S(wqk_signed)(K b) {
    SK m = (SK)(b & ABS), s = (SK)((SK)b >> (W - 1));
    return (SK)((m ^ s) - s);
}

/* y = lo where x < lo, hi where x > hi, else x (NumPy's clip: x itself when equal); returns
 * the largest key. */
WQK_CLONES static K S(wqk_clip)(const void *x_, void *y_, ptrdiff_t n, K lo, K hi) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    SK vlo = S(wqk_signed)(lo), vhi = S(wqk_signed)(hi);
    K top = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        K b = x[i], k = b & ABS;
        SK v = S(wqk_signed)(b);
        top = k > top ? k : top;
        y[i] = v < vlo ? lo : (v > vhi ? hi : b);
    }
    return top;
}

/* y = sign(x) * max(|x| - alpha, 0) in x's precision (float16 via float32, as NumPy), with
 * sign(+-0) = 0; returns the largest key. */
WQK_CLONES static K S(wqk_shrink)(const void *x_, void *y_, ptrdiff_t n, F alpha) {
    const K *x = (const K *)x_;
    K *y = (K *)y_;
    K top = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        K b = x[i], k = b & ABS;
        F d = TO_F(k) - alpha;
        K mag = d > 0 ? FROM_F(d) : (K)0;
        top = k > top ? k : top;
        y[i] = mag | (k ? (K)(b & SIGN) : (K)0);
    }
    return top;
}

/* ---- error statistics -------------------------------------------------------------------
 * out[0] += sum x^2, out[1] += sum (x - x_hat)^2, out[2] = max(out[2], |x - x_hat|), in float64;
 * zeros[0] += zeros (+0 or -0) of x, zeros[1] += zeros of x_hat; returns the largest key of
 * either input.  The sums may be reassociated (WQK_SUMS) so that they vectorise: the order is
 * still fixed by the chunking, so results do not depend on threads. */
WQK_CLONES WQK_SUMS static K S(wqk_error)(const void *x_, const void *x_hat_, ptrdiff_t n, double *out,
                                          int64_t *zeros) {
    const K *x = (const K *)x_;
    const K *x_hat = (const K *)x_hat_;
    double sx = 0, se = 0, mx = 0;
    int64_t za = 0, zb = 0;
    K top = 0;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += BLOCK) {
        ptrdiff_t len = n - i0 < BLOCK ? n - i0 : BLOCK;
        K ca = 0, cb = 0;
        for (ptrdiff_t j = 0; j < len; j++) {
            K ka = x[i0 + j] & ABS, kb = x_hat[i0 + j] & ABS;
            ca += (K)(ka == 0);
            cb += (K)(kb == 0);
            top = ka > top ? ka : top;
            top = kb > top ? kb : top;
        }
        za += ca;
        zb += cb;
    }
    zeros[0] += za;
    zeros[1] += zb;
    if (top >= KEY_INF)
        return top; /* NaN or infinity: the sums would mean nothing */
    for (ptrdiff_t i = 0; i < n; i++) {
        double a = (double)TO_F(x[i]), d = a - (double)TO_F(x_hat[i]);
        double ad = d < 0 ? -d : d;
        sx += a * a;
        se += d * d;
        mx = ad > mx ? ad : mx;
    }
    out[0] += sx;
    out[1] += se;
    out[2] = mx > out[2] ? mx : out[2];
    return top;
}

/* ---- LAMP scores --------------------------------------------------------------------------
 * The LAMP scores of magnitudes x[0..n) sorted ascending, exactly as allocation._sorted_scores
 * computes them with NumPy: squares in double, suffix sums added one at a time from the end,
 * each run of equal squares divided by the suffix sum at its first element, rounded to float.
 * The scores are counted, not stored, by their float bits u: hist[u >> 16] when prefix < 0;
 * otherwise *below counts those with u >> 16 < prefix and hist[u & 0xffff] those with
 * u >> 16 == prefix.  Returns the number of zero scores.  Sequential: the sums' order is fixed
 * (no WQK_SUMS), and the caller's sort costs far more. */
static int64_t S(wqk_lamp_histogram)(const void *x_, ptrdiff_t n, int64_t prefix, int64_t *hist,
                                     int64_t *below) {
    const K *x = (const K *)x_;
    double s = 0, q = 0, a;
    int64_t zeros = 0;
    if (n > 0) {
        a = (double)TO_F(x[n - 1] & ABS);
        q = a * a;
    }
    for (ptrdiff_t i = n - 1, j; i >= 0; i = j - 1) { /* q: the square of x[i] */
        double next = q;
        s += q;
        for (j = i; j > 0; j--) { /* the run of equal squares ending at i starts at j */
            a = (double)TO_F(x[j - 1] & ABS);
            next = a * a;
            if (next != q)
                break;
            s += q;
        }
        float score = q > 0 ? (float)(q / s) : 0.0f;
        uint32_t u;
        memcpy(&u, &score, 4);
        int64_t run = i - j + 1;
        zeros += u == 0 ? run : 0;
        if (prefix < 0)
            hist[u >> 16] += run;
        else if ((int64_t)(u >> 16) < prefix)
            *below += run;
        else if ((int64_t)(u >> 16) == prefix)
            hist[u & 0xffffu] += run;
        q = next; /* each square is computed once */
    }
    return zeros;
}

#undef ABS
#undef SIGN
#undef BLOCK
/* the parameters of this instance: the next one defines its own */
#undef K
#undef SK
#undef F
#undef W
#undef KEY_INF
#undef S
#undef TO_F
#undef FROM_F
#endif /* WQK_PRUNE_BODY */
