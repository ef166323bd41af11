/* Innermost loops over the bits of float16, float32 and float64 values, called from the pruning,
 * statistics and allocation kernels (_pruning.pxi, _statistics.pxi, _allocation.pxi).
 *
 * Each loop is one C++ template over the unsigned integer K of the float's width (uint16_t,
 * uint32_t, uint64_t); the Cython layer calls it from code generic over its fused type key_t,
 * so every call is type-checked and the compiler instantiates the width it needs.  The bits of
 * |x|, x & ~sign, are a key that orders like the magnitudes of finite values, with +-0 equal and
 * lowest, and +-Inf and NaN above all of them.  Magnitude selection, N:M and threshold pruning
 * therefore never leave the integers; only the norms, shrink and the error statistics convert
 * to floating point.  Loops are written so that GCC vectorises them (checked with
 * -fopt-info-vec); WQK_CLONES (from _loops.h) builds an AVX2/AVX-512 copy of the hot ones.
 */
#ifndef WQK_BIT_LOOPS_H
#define WQK_BIT_LOOPS_H

#include <stdint.h>
#include <string.h>

#include "_loops.h"

#define WQK_ALWAYS_INLINE inline __attribute__((always_inline))
#define WQK_INLINE static WQK_ALWAYS_INLINE

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

/* What the bits of each width stand for: the float type its arithmetic is done in (float16's is
 * float32's, rounded back, as NumPy does), the signed integer of the width, the key of infinity
 * and the conversions between bits and that float type. */
template <typename K> struct wqk_format;

template <> struct wqk_format<uint16_t> {
    typedef float F;
    typedef int16_t SK;
    static constexpr uint16_t inf = 0x7c00u;
    static WQK_ALWAYS_INLINE F to_float(uint16_t b) { return wqk_half_to_float(b); }
    static WQK_ALWAYS_INLINE uint16_t from_float(F f) { return wqk_float_to_half(f); }
};

template <> struct wqk_format<uint32_t> {
    typedef float F;
    typedef int32_t SK;
    static constexpr uint32_t inf = 0x7f800000u;
    static WQK_ALWAYS_INLINE F to_float(uint32_t b) { F f; memcpy(&f, &b, 4); return f; }
    static WQK_ALWAYS_INLINE uint32_t from_float(F f) { uint32_t b; memcpy(&b, &f, 4); return b; }
};

template <> struct wqk_format<uint64_t> {
    typedef double F;
    typedef int64_t SK;
    static constexpr uint64_t inf = 0x7ff0000000000000ull;
    static WQK_ALWAYS_INLINE F to_float(uint64_t b) { F f; memcpy(&f, &b, 8); return f; }
    static WQK_ALWAYS_INLINE uint64_t from_float(F f) { uint64_t b; memcpy(&b, &f, 8); return b; }
};

/* A key's mask, ~sign, and the sign bit. */
template <typename K> WQK_INLINE K wqk_abs_mask() { return (K)~((K)1 << (sizeof(K) * 8 - 1)); }
template <typename K> WQK_INLINE K wqk_sign_bit() { return (K)((K)1 << (sizeof(K) * 8 - 1)); }

/* The magnitude key of a float's bits. */
template <typename K> WQK_INLINE K wqk_magnitude(K bits) { return bits & wqk_abs_mask<K>(); }

/* Whether a key is that of a finite value (keys at or above infinity's are infinities or NaNs). */
template <typename K> WQK_INLINE bool wqk_finite_key(K key) { return key < wqk_format<K>::inf; }

/* A run of a magnitude selection over several arrays taken as one sequence: the bits x (and
 * the output y, or NULL) of positions [base, base + n) of the sequence. */
template <typename K> struct wqk_segment {
    const K *x;
    K *y;
    ptrdiff_t n;
    int64_t base;
};

enum { WQK_BLOCK = 32 }; /* elements per block of the blocked scans */

/* The fused pass of a magnitude selection over one run (global indices base..base+n).
 * With a window [lo, hi] of keys known (from a sample) to hold the k-th smallest key:
 * counts[0] += keys below lo, counts[1] += keys in the window, and while counts[1] <= cap the
 * window's keys and global indices are appended to keys/index.  When y is not NULL, also
 * y = (key < guess) ? +0 : x (y may be written up to `reach` >= n: see wqk_page_end), guess in
 * [lo, hi] being the best guess of the threshold (so that
 * few of the window's entries need writing again once it is known).  Returns the largest key (not finite: a NaN or an infinity).
 * Magnitudes are below the sign bit, so they compare as signed integers.  Where the compiler
 * has vector types (GCC, clang), blocks of 32 are taken a vector at a time: counts and the
 * largest key per lane, summed every WQK_FLUSH blocks, and a bit mask of the window's lanes,
 * whose set bits alone are visited, so a sparse window costs little more than a copy.  The
 * rest, and everything elsewhere, goes one element at a time. */
#if defined(__GNUC__) && !defined(WQK_NO_VECTORS)
#define WQK_VECTORS 1
#endif
enum { WQK_FLUSH = 1024 }; /* blocks counted per lane before the counts are summed */
#ifdef WQK_VECTORS
template <typename T, int Bytes> struct wqk_vector {
    typedef T type __attribute__((vector_size(Bytes)));
};
#endif

/* Where the page of y that holds entry i ends (an index, at most n), after writing that page's
 * last entry that this pass writes, y = (key < guess) ? +0 : x, as the scan does.  A fresh
 * output's pages are zeroed by the kernel when first written, and on Linux with transparent huge
 * pages (2 MiB, NumPy asks for them) a page first written at its end is left in the cache in the
 * order a forward pass then writes it: a fresh output cost about 4 ms less per 64 MiB here.  On
 * memory already written the one extra store costs nothing.  The caller may own y up to `reach`
 * (>= n) and write all of it later in the same thread (the next arrays of a selection over
 * several): a page ending there is first written with a +0 that is overwritten then. */
template <typename K>
WQK_INLINE ptrdiff_t wqk_page_end(const K *x, K *y, ptrdiff_t i, ptrdiff_t n, ptrdiff_t reach, K guess) {
    const ptrdiff_t page = wqk_page_stop(y, i);
    if (page > n && page <= reach) {
        y[page - 1] = 0;
        return n;
    }
    const ptrdiff_t end = page < n ? page : n;
    const K b = x[end - 1];
    y[end - 1] = (K)(b & wqk_abs_mask<K>()) < guess ? (K)0 : b;
    return end;
}

template <typename K>
WQK_INLINE void wqk_scan_one(const K *x, K *y, ptrdiff_t i, K lo, K hi, K guess, int64_t base, K *keys,
                             int64_t *index, int64_t cap, int64_t *less, int64_t *inside, K *top, const bool write) {
    const K b = x[i], k = b & wqk_abs_mask<K>();
    *less += k < lo;
    *top = k > *top ? k : *top;
    if (write) y[i] = k < guess ? (K)0 : b;
    if (k >= lo && k <= hi) {
        if (*inside < cap) {
            keys[*inside] = k;
            index[*inside] = base + i;
        }
        ++*inside;
    }
}

template <typename K, bool Write>
WQK_INLINE K wqk_scan_impl(const K *__restrict x, K *__restrict y, ptrdiff_t n, K lo, K hi, K guess,
                           int64_t base, K *keys, int64_t *index, int64_t cap, int64_t *counts) {
    int64_t less = counts[0], inside = counts[1];
    K top = 0;
    ptrdiff_t i0 = 0;
#ifdef WQK_VECTORS
    typedef typename wqk_format<K>::SK SK;
    enum { W = 32 / sizeof(K), V = WQK_BLOCK / W }; /* lanes of a 32-byte vector, vectors a block */
    typedef typename wqk_vector<SK, 32>::type SV;
    typedef typename wqk_vector<int32_t, 4 * W>::type MV; /* a bit of the block's mask per lane */
    const SK abs = (SK)wqk_abs_mask<K>();
    SV vlo, vhi, vguess, vtop = {0};
    MV bit[V];
    for (int l = 0; l < W; l++) {
        vlo[l] = (SK)lo;
        vhi[l] = (SK)hi;
        vguess[l] = (SK)guess;
        for (int v = 0; v < V; v++) bit[v][l] = (int32_t)((uint32_t)1 << (v * W + l));
    }
    while (i0 + WQK_BLOCK <= n) {
        SV below = {0};
        ptrdiff_t end = i0 + (n - i0) / WQK_BLOCK * WQK_BLOCK, stop = i0 + (ptrdiff_t)WQK_FLUSH * WQK_BLOCK;
        end = end < stop ? end : stop;
        for (; i0 < end; i0 += WQK_BLOCK) {
            SV any = {0};
            for (int v = 0; v < V; v++) {
                SV b, k, lt, gt;
                memcpy(&b, x + i0 + v * W, sizeof(SV));
                k = b & abs;
                lt = k < vlo;
                gt = k > vhi;
                below -= lt;
                vtop = k > vtop ? k : vtop;
                if (Write) {
                    SV o = b & ~(k < vguess);
                    memcpy(y + i0 + v * W, &o, sizeof(SV));
                }
                any |= ~(lt | gt);
            }
            /* most blocks hold no window key (about 1 % of keys are in it): one test of the
             * block's OR, and only a block that holds one builds its bit mask (x is in L1) */
            uint64_t words[sizeof(SV) / 8];
            memcpy(words, &any, sizeof(SV));
            uint64_t hit = 0;
            for (int w = 0; w < (int)(sizeof(SV) / 8); w++) hit |= words[w];
            if (!hit) continue;
            MV in = {0};
            for (int v = 0; v < V; v++) {
                SV k;
                memcpy(&k, x + i0 + v * W, sizeof(SV));
                k &= abs;
                in |= __builtin_convertvector(~((k < vlo) | (k > vhi)), MV) & bit[v];
            }
            uint32_t mask = 0;
            for (int l = 0; l < W; l++) mask |= (uint32_t)in[l];
            for (; mask; mask &= mask - 1) {
                int j = wqk_ctz(mask);
                if (inside < cap) {
                    keys[inside] = x[i0 + j] & (K)abs;
                    index[inside] = base + i0 + j;
                }
                inside++;
            }
        }
        for (int l = 0; l < W; l++) less += (int64_t)below[l];
    }
    for (int l = 0; l < W; l++) top = (K)vtop[l] > top ? (K)vtop[l] : top;
#endif
    for (; i0 < n; i0++)
        wqk_scan_one(x, y, i0, lo, hi, guess, base, keys, index, cap, &less, &inside, &top, Write);
    counts[0] = less;
    counts[1] = inside;
    return top;
}

template <typename K>
WQK_CLONES static K wqk_scan_portable(const K *x, K *y, ptrdiff_t n, K lo, K hi, K guess, int64_t base,
                                      K *keys, int64_t *index, int64_t cap, int64_t *counts) {
    if (y)
        return wqk_scan_impl<K, true>(x, y, n, lo, hi, guess, base, keys, index, cap, counts);
    return wqk_scan_impl<K, false>(x, y, n, lo, hi, guess, base, keys, index, cap, counts);
}

/* Scratch memory that the calling thread keeps between calls, up to WQK_SCRATCH_KEEP bytes:
 * the pages of a fresh allocation are zeroed by the kernel when first written (2 MiB at a time
 * with transparent huge pages), which cost a selection over 16 Mi keys about as much as writing
 * again its window's wrong entries.  take() hands out the kept block when it is large enough
 * (else a new one), give() keeps the larger of the two blocks it then has, or frees; a nested
 * take() while the block is out gets a block of its own. */
enum { WQK_SCRATCH_KEEP = 1 << 24 };
struct wqk_kept_block {
    void *p = nullptr;
    size_t size = 0;
    ~wqk_kept_block() { free(p); }
};
static thread_local wqk_kept_block wqk_kept;

static void *wqk_scratch_take(size_t bytes) {
    if (wqk_kept.p && wqk_kept.size >= bytes) {
        void *p = wqk_kept.p;
        wqk_kept.p = nullptr;
        wqk_kept.size = 0;
        return p;
    }
    return malloc(bytes);
}

static void wqk_scratch_give(void *p, size_t bytes) {
    if (p == nullptr) return;
    if (bytes > WQK_SCRATCH_KEEP || bytes <= wqk_kept.size) {
        free(p);
        return;
    }
    free(wqk_kept.p);
    wqk_kept.p = p;
    wqk_kept.size = bytes;
}

/* The same pass with AVX-512 (F, BW, VL, DQ), chosen at run time: 16 keys at a time are compared
 * into mask registers, and a step that holds window keys appends them and their positions with a
 * compress and a full-width store (the window is ~1 % of the keys: most steps hold none, and the
 * branch skipping them costs less than three compresses on every step).  The stores write up to WQK_SCAN_SLACK entries past the appended ones (and past cap, where the
 * appending stops): the buffers must have that room.  Only the x86-64 GCC/clang builds have it. */
enum { WQK_SCAN_SLACK = 16 };
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(WQK_NO_VECTORS)
#define WQK_AVX512_SCAN 1
#include <immintrin.h>
#define WQK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,popcnt")))

/* 16 keys of width K as vectors, and what the scan does with them.  The keys of a float are
 * below its sign bit, so unsigned and signed compares agree. */
template <typename K> struct wqk_lanes16;

template <> struct wqk_lanes16<uint16_t> { /* one 256-bit vector; compressed as 32-bit lanes */
    typedef __m256i V;
    static WQK_AVX512 WQK_ALWAYS_INLINE V load(const uint16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V splat(uint16_t v) { return _mm256_set1_epi16((short)v); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V and_(V a, V b) { return _mm256_and_si256(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V sub(V a, V b) { return _mm256_sub_epi16(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V max(V a, V b) { return _mm256_max_epu16(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE __mmask16 lt(V a, V b) { return _mm256_cmplt_epu16_mask(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE __mmask16 le(V a, V b) { return _mm256_cmple_epu16_mask(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE void store_where(uint16_t *p, __mmask16 m, V b) {
        _mm256_storeu_si256((__m256i *)p, _mm256_maskz_mov_epi16(m, b));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE void append(uint16_t *p, __mmask16 m, V k) {
        __m512i wide = _mm512_maskz_compress_epi32(m, _mm512_cvtepu16_epi32(k));
        _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(wide));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE uint16_t top(V a) {
        return (uint16_t)_mm512_reduce_max_epu32(_mm512_cvtepu16_epi32(a));
    }
};

template <> struct wqk_lanes16<uint32_t> { /* one 512-bit vector */
    typedef __m512i V;
    static WQK_AVX512 WQK_ALWAYS_INLINE V load(const uint32_t *p) { return _mm512_loadu_si512(p); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V splat(uint32_t v) { return _mm512_set1_epi32((int)v); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V and_(V a, V b) { return _mm512_and_si512(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V sub(V a, V b) { return _mm512_sub_epi32(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE V max(V a, V b) { return _mm512_max_epu32(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE __mmask16 lt(V a, V b) { return _mm512_cmplt_epu32_mask(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE __mmask16 le(V a, V b) { return _mm512_cmple_epu32_mask(a, b); }
    static WQK_AVX512 WQK_ALWAYS_INLINE void store_where(uint32_t *p, __mmask16 m, V b) {
        _mm512_storeu_si512(p, _mm512_maskz_mov_epi32(m, b));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE void append(uint32_t *p, __mmask16 m, V k) {
        _mm512_storeu_si512(p, _mm512_maskz_compress_epi32(m, k));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE uint32_t top(V a) { return _mm512_reduce_max_epu32(a); }
};

struct wqk_pair512 { __m512i a, b; }; /* 16 keys of 64 bits: lanes 0-7 in a, 8-15 in b */

template <> struct wqk_lanes16<uint64_t> {
    typedef wqk_pair512 V;
    static WQK_AVX512 WQK_ALWAYS_INLINE V load(const uint64_t *p) {
        return V{_mm512_loadu_si512(p), _mm512_loadu_si512(p + 8)};
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE V splat(uint64_t v) {
        return V{_mm512_set1_epi64((long long)v), _mm512_set1_epi64((long long)v)};
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE V and_(V x, V y) { return V{_mm512_and_si512(x.a, y.a), _mm512_and_si512(x.b, y.b)}; }
    static WQK_AVX512 WQK_ALWAYS_INLINE V sub(V x, V y) { return V{_mm512_sub_epi64(x.a, y.a), _mm512_sub_epi64(x.b, y.b)}; }
    static WQK_AVX512 WQK_ALWAYS_INLINE V max(V x, V y) { return V{_mm512_max_epu64(x.a, y.a), _mm512_max_epu64(x.b, y.b)}; }
    static WQK_AVX512 WQK_ALWAYS_INLINE __mmask16 lt(V x, V y) {
        return (__mmask16)(_mm512_cmplt_epu64_mask(x.a, y.a) | (_mm512_cmplt_epu64_mask(x.b, y.b) << 8));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE __mmask16 le(V x, V y) {
        return (__mmask16)(_mm512_cmple_epu64_mask(x.a, y.a) | (_mm512_cmple_epu64_mask(x.b, y.b) << 8));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE void store_where(uint64_t *p, __mmask16 m, V x) {
        _mm512_storeu_si512(p, _mm512_maskz_mov_epi64((__mmask8)m, x.a));
        _mm512_storeu_si512(p + 8, _mm512_maskz_mov_epi64((__mmask8)(m >> 8), x.b));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE void append(uint64_t *p, __mmask16 m, V k) {
        _mm512_storeu_si512(p, _mm512_maskz_compress_epi64((__mmask8)m, k.a));
        _mm512_storeu_si512(p + _mm_popcnt_u32(m & 0xffu), _mm512_maskz_compress_epi64((__mmask8)(m >> 8), k.b));
    }
    static WQK_AVX512 WQK_ALWAYS_INLINE uint64_t top(V x) { return _mm512_reduce_max_epu64(_mm512_max_epu64(x.a, x.b)); }
};

template <typename K, bool Write>
WQK_AVX512 static K wqk_scan_avx512_impl(const K *__restrict x, K *__restrict y, ptrdiff_t n, ptrdiff_t reach,
                                         K lo, K hi, K guess, int64_t base, K *keys, int64_t *index,
                                         int64_t cap, int64_t *counts) {
    typedef wqk_lanes16<K> L;
    typedef typename L::V V;
    int64_t less = counts[0], inside = counts[1];
    const V abs = L::splat(wqk_abs_mask<K>()), vlo = L::splat(lo), span = L::splat((K)(hi - lo)),
            vguess = L::splat(guess);
    const __m512i one = _mm512_set1_epi32(1), sixteen = _mm512_set1_epi64(16);
    V vtop = L::splat(0);
    ptrdiff_t i0 = 0;
    /* positions of the step's lanes 0-7 and 8-15 */
    __m512i at0 = _mm512_add_epi64(_mm512_set1_epi64(base), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    __m512i at1 = _mm512_add_epi64(at0, _mm512_set1_epi64(8));
    while (i0 + 16 <= n) {
        /* one page of y at a time (wqk_page_end), whose last entry is written first; the lanes
         * count below lo in 32 bits, summed after each page */
        const ptrdiff_t end = Write ? wqk_page_end(x, y, i0 + 15, n, reach, guess) : n;
        __m512i below = _mm512_setzero_si512();
        for (; i0 + 16 <= end; i0 += 16) {
            const V b = L::load(x + i0), k = L::and_(b, abs);
            const __mmask16 lt = L::lt(k, vlo), in = L::le(L::sub(k, vlo), span);
            below = _mm512_mask_add_epi32(below, lt, below, one);
            vtop = L::max(vtop, k);
            if (Write) L::store_where(y + i0, (__mmask16)~L::lt(k, vguess), b);
            if (in) { /* append at `inside` while there is room, then keep overwriting the place at cap */
                const int64_t w = inside < cap ? inside : cap;
                L::append(keys + w, in, k);
                _mm512_storeu_si512(index + w, _mm512_maskz_compress_epi64((__mmask8)in, at0));
                _mm512_storeu_si512(index + w + _mm_popcnt_u32(in & 0xffu),
                                    _mm512_maskz_compress_epi64((__mmask8)(in >> 8), at1));
                inside += _mm_popcnt_u32(in);
            }
            at0 = _mm512_add_epi64(at0, sixteen);
            at1 = _mm512_add_epi64(at1, sixteen);
        }
        less += _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(below)),
                                                         _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(below, 1))));
    }
    K top = L::top(vtop);
    for (; i0 < n; i0++)
        wqk_scan_one(x, y, i0, lo, hi, guess, base, keys, index, cap, &less, &inside, &top, Write);
    counts[0] = less;
    counts[1] = inside;
    return top;
}

template <typename K>
WQK_AVX512 static K wqk_scan_avx512(const K *x, K *y, ptrdiff_t n, ptrdiff_t reach, K lo, K hi, K guess,
                                    int64_t base, K *keys, int64_t *index, int64_t cap, int64_t *counts) {
    if (y)
        return wqk_scan_avx512_impl<K, true>(x, y, n, reach, lo, hi, guess, base, keys, index, cap, counts);
    return wqk_scan_avx512_impl<K, false>(x, y, n, reach, lo, hi, guess, base, keys, index, cap, counts);
}

/* Whether this CPU has the AVX-512 the scan needs (checked once). */
static bool wqk_cpu_has_avx512_scan(void) {
    __builtin_cpu_init();
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                            __builtin_cpu_supports("popcnt");
    return has;
}
#else
static bool wqk_cpu_has_avx512_scan(void) { return false; }
#endif

/* Whether the scan takes the AVX-512 path: on where the CPU has it, unless switched off (the
 * tests run both paths on such a machine).  Set before a scan starts, never during one. */
static bool wqk_avx512_scan_on = wqk_cpu_has_avx512_scan();

/* Asks for the AVX-512 scan (on) or the portable one; returns whether the AVX-512 one runs. */
static bool wqk_use_avx512_scan(bool on) {
    wqk_avx512_scan_on = on && wqk_cpu_has_avx512_scan();
    return wqk_avx512_scan_on;
}

template <typename K>
static K wqk_scan(const K *x, K *y, ptrdiff_t n, ptrdiff_t reach, K lo, K hi, K guess, int64_t base, K *keys,
                  int64_t *index, int64_t cap, int64_t *counts) {
#ifdef WQK_AVX512_SCAN
    if (wqk_avx512_scan_on)
        return wqk_scan_avx512<K>(x, y, n, reach, lo, hi, guess, base, keys, index, cap, counts);
#endif
    return wqk_scan_portable<K>(x, y, n, lo, hi, guess, base, keys, index, cap, counts);
}

/* For listed entries (keys and positions, positions increasing, all inside the run of x and y
 * that starts at position base), which the scan wrote as y = (key < guess) ? +0 : x: the entries
 * that go are those with key < t, or key == t at a position <= cut; only the entries between
 * guess and t, which the scan wrote wrongly, are written again.  The keys are in no order: a
 * first loop, without a branch on them, moves the wrong entries' offsets and whether each goes
 * to the front of the lists (which it overwrites); a second writes them, fetching the lines of x
 * and y some entries ahead, as they are scattered over arrays far larger than the cache (a
 * selection of 70 % of 16 Mi keys rewrites some 30,000 entries). */
enum { WQK_FIX_AHEAD = 16 };
template <typename K>
WQK_CLONES static void wqk_fix_listed(const K *x, K *y, K *keys, int64_t *index, ptrdiff_t count, K guess, K t,
                                      int64_t cut, int64_t base) {
    ptrdiff_t m = 0;
    for (ptrdiff_t c = 0; c < count; c++) {
        const K key = keys[c];
        const int64_t at = index[c];
        const bool go = (key < t) | ((key == t) & (at <= cut));
        index[m] = at - base;
        keys[m] = (K)go;
        m += go != (key < guess);
    }
    for (ptrdiff_t i = 0; i < m; i++) {
        if (i + WQK_FIX_AHEAD < m) {
            __builtin_prefetch(x + index[i + WQK_FIX_AHEAD], 0);
            __builtin_prefetch(y + index[i + WQK_FIX_AHEAD], 1);
        }
        y[index[i]] = keys[i] ? (K)0 : x[index[i]];
    }
}

/* hist[(key >> shift) & mask] += 1 for the keys whose bits above `above` equal prefix. */
template <typename K>
static void wqk_histogram(const K *x, ptrdiff_t n, K prefix, int above, int shift, uint32_t mask,
                          int64_t *hist) {
    const K abs = wqk_abs_mask<K>();
    for (ptrdiff_t i = 0; i < n; i++) {
        K k = x[i] & abs;
        if ((K)(k >> above) == prefix) hist[(k >> shift) & mask]++;
    }
}

/* Appends to out the keys whose bits above `above` equal prefix; returns how many. */
template <typename K>
static ptrdiff_t wqk_compact(const K *x, ptrdiff_t n, K prefix, int above, K *out) {
    const K abs = wqk_abs_mask<K>();
    ptrdiff_t m = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        K k = x[i] & abs;
        out[m] = k;
        m += (K)(k >> above) == prefix;
    }
    return m;
}

/* Index of the r-th (1-based) element whose key is t; if there are fewer, -1 with *r reduced
 * by their number. */
template <typename K>
WQK_CLONES static ptrdiff_t wqk_find_equal(const K *x, ptrdiff_t n, K t, int64_t *r) {
    const K abs = wqk_abs_mask<K>();
    int64_t need = *r;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += WQK_BLOCK) {
        ptrdiff_t len = n - i0 < WQK_BLOCK ? n - i0 : WQK_BLOCK;
        K count = 0;
        for (ptrdiff_t j = 0; j < len; j++) count += (K)((x[i0 + j] & abs) == t);
        if ((int64_t)count >= need) {
            for (ptrdiff_t j = 0; j < len; j++)
                if ((x[i0 + j] & abs) == t && --need == 0) return i0 + j;
        }
        need -= count;
    }
    *r = need;
    return -1;
}

/* y = +0 where key < t, or key == t and the index is below cut; else y = x.  Returns the
 * largest key. */
template <typename K>
WQK_CLONES static K wqk_mask_below(const K *x, K *y, ptrdiff_t n, K t, ptrdiff_t cut) {
    const K abs = wqk_abs_mask<K>();
    K top = 0;
    cut = cut < 0 ? 0 : (cut > n ? n : cut);
    for (ptrdiff_t i = 0; i < cut; i++) {
        K b = x[i], k = b & abs;
        top = k > top ? k : top;
        y[i] = k <= t ? (K)0 : b;
    }
    for (ptrdiff_t i = cut; i < n; i++) {
        K b = x[i], k = b & abs;
        top = k > top ? k : top;
        y[i] = k < t ? (K)0 : b;
    }
    return top;
}

/* The number of keys below t, and (in *top) the largest key. */
template <typename K>
WQK_CLONES static int64_t wqk_count_below(const K *x, ptrdiff_t n, K t, K *top) {
    const K abs = wqk_abs_mask<K>();
    int64_t count = 0;
    K m = *top;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += WQK_BLOCK) {
        ptrdiff_t len = n - i0 < WQK_BLOCK ? n - i0 : WQK_BLOCK;
        K c = 0;
        for (ptrdiff_t j = 0; j < len; j++) {
            K k = x[i0 + j] & abs;
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

template <typename K>
WQK_INLINE K wqk_n_m_runs_any(const K *x, K *y, ptrdiff_t runs, int m, int n, K *rank) {
    const K abs = wqk_abs_mask<K>();
    K top = 0;
    for (ptrdiff_t g = 0; g < runs; g++) {
        const K *a = x + g * m;
        for (int p = 0; p < m; p++) {
            K kp = a[p] & abs, r = 0;
            for (int l = 0; l < m; l++) {
                K kl = a[l] & abs;
                r += (K)((kl > kp) | ((kl == kp) & (l < p)));
            }
            rank[p] = r;
            top = kp > top ? kp : top;
        }
        for (int p = 0; p < m; p++) y[g * m + p] = rank[p] < (K)n ? a[p] : (K)0;
    }
    return top;
}

/* The same for a constant small m, WQK_RUNS_AT_ONCE runs at a time: their keys are transposed
 * into one row per position so that the ranking is vectorised across runs. */
enum { WQK_RUNS_AT_ONCE = 64 };
template <typename K>
WQK_INLINE K wqk_n_m_runs_wide(const K *x, K *y, ptrdiff_t runs, const int m, int n) {
    const K abs = wqk_abs_mask<K>();
    K key[8][WQK_RUNS_AT_ONCE], keep[8][WQK_RUNS_AT_ONCE];
    K top = 0;
    ptrdiff_t g0 = 0;
    for (; g0 + WQK_RUNS_AT_ONCE <= runs; g0 += WQK_RUNS_AT_ONCE) {
        const K *a = x + g0 * m;
        for (int g = 0; g < WQK_RUNS_AT_ONCE; g++)
            for (int p = 0; p < m; p++) key[p][g] = a[g * m + p] & abs;
        for (int p = 0; p < m; p++) {
            for (int g = 0; g < WQK_RUNS_AT_ONCE; g++) {
                K r = 0, kp = key[p][g];
                for (int l = 0; l < m; l++)
                    r += (K)(l < p ? key[l][g] >= kp : (l > p ? key[l][g] > kp : 0));
                keep[p][g] = r < (K)n ? (K)~(K)0 : (K)0;
                top = kp > top ? kp : top;
            }
        }
        for (int g = 0; g < WQK_RUNS_AT_ONCE; g++)
            for (int p = 0; p < m; p++) y[g0 * m + g * m + p] = a[g * m + p] & keep[p][g];
    }
    K rank[8];
    K t = wqk_n_m_runs_any(x + g0 * m, y + g0 * m, runs - g0, m, n, rank);
    return t > top ? t : top;
}

/* `runs` consecutive runs of m contiguous elements (the axis is the last one); rank holds m.
 * Returns the largest key. */
template <typename K>
WQK_CLONES static K wqk_n_m_runs(const K *x, K *y, ptrdiff_t runs, int m, int n, K *rank) {
    switch (m) { /* a constant m lets GCC unroll the ranking */
    case 2: return wqk_n_m_runs_wide(x, y, runs, 2, n);
    case 4: return wqk_n_m_runs_wide(x, y, runs, 4, n);
    case 8: return wqk_n_m_runs_wide(x, y, runs, 8, n);
    default: return wqk_n_m_runs_any(x, y, runs, m, n, rank);
    }
}

/* One run of `len` rows of `lanes` contiguous elements, rows `stride` apart, where each lane
 * is a separate run (the axis is not the last one).  rank holds len * chunk elements.
 * Returns the largest key. */
template <typename K>
WQK_CLONES static K wqk_n_m_lanes(const K *x, K *y, ptrdiff_t lanes, ptrdiff_t stride, int len,
                                  int n, K *rank, ptrdiff_t chunk) {
    const K abs = wqk_abs_mask<K>();
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
                    for (ptrdiff_t i = 0; i < c; i++) rp[i] += (K)((xl[i] & abs) >= (xp[i] & abs));
                } else if (l > p) {
                    for (ptrdiff_t i = 0; i < c; i++) rp[i] += (K)((xl[i] & abs) > (xp[i] & abs));
                }
            }
        }
        for (int p = 0; p < len; p++) {
            const K *xp = x + p * stride + i0, *rp = rank + p * chunk;
            K *yp = y + p * stride + i0;
            for (ptrdiff_t i = 0; i < c; i++) {
                K b = xp[i], k = b & abs;
                top = k > top ? k : top;
                yp[i] = rp[i] < (K)n ? b : (K)0;
            }
        }
    }
    return top;
}

/* ---- channels ------------------------------------------------------------------------------
 * Norms accumulate |x| (ord 1) or x^2 (ord 2) in float64, in a fixed order for a given shape. */

template <typename K> WQK_INLINE double wqk_norm_term(K b, int ord) {
    double v = (double)wqk_format<K>::to_float(wqk_magnitude(b));
    return ord == 1 ? v : v * v;
}

/* The sum of the terms of one contiguous run, in 8 interleaved partial sums. */
template <typename K> WQK_CLONES static double wqk_norm_run(const K *x, ptrdiff_t n, int ord) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t i = 0;
    if (ord == 1) {
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += wqk_norm_term(x[i + j], 1);
    } else {
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += wqk_norm_term(x[i + j], 2);
    }
    for (; i < n; i++) acc[0] += wqk_norm_term(x[i], ord);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* acc[i] += the term of x[i]: one row of a (rows, channels) array. */
template <typename K> WQK_CLONES static void wqk_norm_lanes(const K *x, ptrdiff_t n, int ord, double *acc) {
    if (ord == 1) {
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += wqk_norm_term(x[i], 1);
    } else {
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += wqk_norm_term(x[i], 2);
    }
}

/* y = x & keep: keep[i] is all ones or zero. */
template <typename K> WQK_CLONES static void wqk_keep_lanes(const K *x, K *y, ptrdiff_t n, const K *keep) {
    for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] & keep[i];
}

/* ---- clip and shrink ------------------------------------------------------------------- */

/* The bits as a signed integer that compares like the float (+0 and -0 equal). */
template <typename K> WQK_INLINE typename wqk_format<K>::SK wqk_signed(K b) {
    typedef typename wqk_format<K>::SK SK;
    SK m = (SK)wqk_magnitude(b), s = (SK)((SK)b >> (sizeof(K) * 8 - 1));
    return (SK)((m ^ s) - s);
}

/* y = lo where x < lo, hi where x > hi, else x (NumPy's clip: x itself when equal); returns
 * the largest key. */
template <typename K> WQK_CLONES static K wqk_clip(const K *x, K *y, ptrdiff_t n, K lo, K hi) {
    typedef typename wqk_format<K>::SK SK;
    const K abs = wqk_abs_mask<K>();
    SK vlo = wqk_signed(lo), vhi = wqk_signed(hi);
    K top = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        K b = x[i], k = b & abs;
        SK v = wqk_signed(b);
        top = k > top ? k : top;
        y[i] = v < vlo ? lo : (v > vhi ? hi : b);
    }
    return top;
}

/* y = sign(x) * max(|x| - alpha, 0) in x's precision (float16 via float32, as NumPy), with
 * sign(+-0) = 0; alpha is first rounded to that precision.  Returns the largest key. */
template <typename K> WQK_CLONES static K wqk_shrink(const K *x, K *y, ptrdiff_t n, double alpha) {
    typedef wqk_format<K> Format;
    const typename Format::F a = (typename Format::F)alpha;
    const K abs = wqk_abs_mask<K>(), sign = wqk_sign_bit<K>();
    K top = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        K b = x[i], k = b & abs;
        typename Format::F d = Format::to_float(k) - a;
        K mag = d > 0 ? Format::from_float(d) : (K)0;
        K keep_sign = (K)((K)0 - (K)(k != 0)); /* all ones unless x is +-0 */
        top = k > top ? k : top;
        y[i] = mag | (K)(b & sign & keep_sign);
    }
    return top;
}

/* ---- error statistics -------------------------------------------------------------------
 * out[0] += sum x^2, out[1] += sum (x - x_hat)^2, out[2] = max(out[2], |x - x_hat|), in float64;
 * zeros[0] += zeros (+0 or -0) of x, zeros[1] += zeros of x_hat; returns the largest key of
 * either input.  The sums may be reassociated (WQK_SUMS) so that they vectorise: the order is
 * still fixed by the chunking, so results do not depend on threads. */
enum { WQK_ERROR_RUN = 4096 }; /* elements whose zeros a key-sized counter takes (float16's too) */
template <typename K>
WQK_CLONES WQK_SUMS static K wqk_error(const K *x, const K *x_hat, ptrdiff_t n, double *out, int64_t *zeros) {
    typedef wqk_format<K> Format;
    const K abs = wqk_abs_mask<K>();
    double sx = 0, se = 0, mx = 0;
    int64_t za = 0, zb = 0;
    K top = 0;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += WQK_ERROR_RUN) {
        ptrdiff_t len = n - i0 < WQK_ERROR_RUN ? n - i0 : WQK_ERROR_RUN;
        K ca = 0, cb = 0, t = 0; /* per run: its lanes are added up once a run, not every WQK_BLOCK */
        for (ptrdiff_t j = 0; j < len; j++) {
            K ka = x[i0 + j] & abs, kb = x_hat[i0 + j] & abs;
            ca += (K)(ka == 0);
            cb += (K)(kb == 0);
            t = ka > t ? ka : t;
            t = kb > t ? kb : t;
        }
        za += ca;
        zb += cb;
        top = t > top ? t : top;
    }
    zeros[0] += za;
    zeros[1] += zb;
    if (!wqk_finite_key(top))
        return top; /* NaN or infinity: the sums would mean nothing */
    for (ptrdiff_t i = 0; i < n; i++) {
        double a = (double)Format::to_float(x[i]), d = a - (double)Format::to_float(x_hat[i]);
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

/* The bin of v among n equal bins between edges[0] and edges[n] (numpy.linspace's edges), v
 * clipped to that range: bin k holds edges[k] <= v < edges[k + 1], the last also v == edges[n],
 * as in numpy.histogram.  As numpy does, the bin is estimated, here from (v - low) * scale with
 * scale = n / (high - low), and then moved to the one the edges say (near an edge the estimate
 * can be a bin off), so the rounding of the estimate never shows. */
WQK_INLINE ptrdiff_t wqk_bin(double v, const double *edges, ptrdiff_t n, double scale) {
    double low = edges[0], high = edges[n];
    v = v < low ? low : (v > high ? high : v);
    ptrdiff_t k = (ptrdiff_t)((v - low) * scale);
    k = k < 0 ? 0 : (k >= n ? n - 1 : k);
    while (k > 0 && v < edges[k])
        k--;
    while (k < n - 1 && v >= edges[k + 1])
        k++;
    return k;
}

/* wqk_error, and the histograms of x and x_hat over the n bins of `edges` (see wqk_bin):
 * counts[k] += values of x in bin k, counts[n + k] += those of x_hat.  The histograms are
 * counted right after the sums, over the same n elements, still in cache (a chunk), so the
 * data is read from memory once and the sums are wqk_error's to the bit. */
template <typename K>
WQK_CLONES static K wqk_error_histograms(const K *x, const K *x_hat, ptrdiff_t n, double *out, int64_t *zeros,
                                         const double *edges, ptrdiff_t bins, int64_t *counts) {
    typedef wqk_format<K> Format;
    K top = wqk_error(x, x_hat, n, out, zeros);
    if (!wqk_finite_key(top))
        return top;
    double scale = (double)bins / (edges[bins] - edges[0]);
    for (ptrdiff_t i = 0; i < n; i++) {
        counts[wqk_bin((double)Format::to_float(x[i]), edges, bins, scale)]++;
        counts[bins + wqk_bin((double)Format::to_float(x_hat[i]), edges, bins, scale)]++;
    }
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
template <typename K>
static int64_t wqk_lamp_histogram(const K *x, ptrdiff_t n, int64_t prefix, int64_t *hist, int64_t *below) {
    typedef wqk_format<K> Format;
    double s = 0, q = 0, a;
    int64_t zeros = 0;
    if (n > 0) {
        a = (double)Format::to_float(wqk_magnitude(x[n - 1]));
        q = a * a;
    }
    for (ptrdiff_t i = n - 1, j; i >= 0; i = j - 1) { /* q: the square of x[i] */
        double next = q;
        s += q;
        for (j = i; j > 0; j--) { /* the run of equal squares ending at i starts at j */
            a = (double)Format::to_float(wqk_magnitude(x[j - 1]));
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

#endif /* WQK_BIT_LOOPS_H */
