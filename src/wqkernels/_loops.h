/* Innermost element loops of wqkernels, called from _core.pyx.
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
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(WQK_NO_CLONES)
#define WQK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WQK_CLONES
#endif

#ifdef _OPENMP
#include <omp.h>
static int wqk_max_threads(void) { return omp_get_max_threads(); }
static void wqk_set_max_threads(int n) { omp_set_num_threads(n); }
#else
static int wqk_max_threads(void) { return 1; }
static void wqk_set_max_threads(int n) { (void)n; }
#endif

#define WQK_MAGIC 12582912.0f /* 1.5 * 2^23 */

/* A code as float: lo = qmin - zp, hi = qmax - zp. */
static inline float wqk_code(float x, float s, float zp, float lo, float hi) {
    float y = x / s;
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    return ((y + WQK_MAGIC) - WQK_MAGIC) + zp;
}

/* Order-preserving integer key of a float's bits: keys compare like the floats, NaN beyond +-Inf. */
static inline int32_t wqk_key(uint32_t b) {
    return (int32_t)(b ^ ((uint32_t)((int32_t)b >> 31) & 0x7fffffffu));
}

/* ---- reductions -------------------------------------------------------------------------- */

/* max over the run of the bits of |x| (>= 0x7f800000 means a NaN or an infinity). */
WQK_CLONES static uint32_t wqk_max_abs_bits(const uint32_t *x, ptrdiff_t n, uint32_t acc) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t b = x[i] & 0x7fffffffu;
        acc = b > acc ? b : acc;
    }
    return acc;
}

WQK_CLONES static void wqk_max_abs_bits_lanes(const uint32_t *x, ptrdiff_t n, uint32_t *acc) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t b = x[i] & 0x7fffffffu;
        acc[i] = b > acc[i] ? b : acc[i];
    }
}

/* min and max of the run as order-preserving keys. */
WQK_CLONES static void wqk_key_range(const uint32_t *x, ptrdiff_t n, int32_t *lo, int32_t *hi) {
    int32_t a = *lo, b = *hi;
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t k = wqk_key(x[i]);
        a = k < a ? k : a;
        b = k > b ? k : b;
    }
    *lo = a;
    *hi = b;
}

WQK_CLONES static void wqk_key_range_lanes(const uint32_t *x, ptrdiff_t n, int32_t *lo, int32_t *hi) {
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t k = wqk_key(x[i]);
        lo[i] = k < lo[i] ? k : lo[i];
        hi[i] = k > hi[i] ? k : hi[i];
    }
}

/* ---- quantize, fake-quantize, dequantize --------------------------------------------------
 * "uniform" runs share one scale and zero point; "lanes" runs have one per element. */

WQK_CLONES static void wqk_quantize_uniform(const float *x, uint8_t *q, ptrdiff_t n, float s,
                                            float zp, float qmin, float qmax) {
    float lo = qmin - zp, hi = qmax - zp;
    for (ptrdiff_t i = 0; i < n; i++) q[i] = (uint8_t)(int32_t)wqk_code(x[i], s, zp, lo, hi);
}

WQK_CLONES static void wqk_quantize_lanes(const float *x, uint8_t *q, ptrdiff_t n, const float *s,
                                          const float *zp, float qmin, float qmax) {
    for (ptrdiff_t i = 0; i < n; i++)
        q[i] = (uint8_t)(int32_t)wqk_code(x[i], s[i], zp[i], qmin - zp[i], qmax - zp[i]);
}

WQK_CLONES static void wqk_fake_quantize_uniform(const float *x, float *y, ptrdiff_t n, float s,
                                                 float zp, float qmin, float qmax) {
    float lo = qmin - zp, hi = qmax - zp;
    for (ptrdiff_t i = 0; i < n; i++) y[i] = (wqk_code(x[i], s, zp, lo, hi) - zp) * s;
}

WQK_CLONES static void wqk_fake_quantize_lanes(const float *x, float *y, ptrdiff_t n, const float *s,
                                               const float *zp, float qmin, float qmax) {
    for (ptrdiff_t i = 0; i < n; i++)
        y[i] = (wqk_code(x[i], s[i], zp[i], qmin - zp[i], qmax - zp[i]) - zp[i]) * s[i];
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

/* ---- error-minimising scale search --------------------------------------------------------
 * The search ranks candidates by squared error computed with a multiply by 1/s (which differs
 * from true division only at exact ties): it only chooses; codes are always made by division. */

static inline float wqk_sq_error(float x, float inv, float s, float lo, float hi) {
    float y = x * inv;
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    float e = x - ((y + WQK_MAGIC) - WQK_MAGIC) * s;
    return e * e;
}

/* acc[c] += sum over the run of the squared error of candidate c (one group). */
WQK_CLONES static void wqk_candidate_errors(const float *x, ptrdiff_t n, int ncand, const float *inv,
                                            const float *s, const float *zp, float qmin,
                                            float qmax, double *acc) {
    for (int c = 0; c < ncand; c++) {
        float sum = 0.0f, ic = inv[c], sc = s[c], lo = qmin - zp[c], hi = qmax - zp[c];
        for (ptrdiff_t i = 0; i < n; i++) sum += wqk_sq_error(x[i], ic, sc, lo, hi);
        acc[c] += sum;
    }
}

/* acc[c * w + i] += squared error of lane i (its own group) under candidate c. */
WQK_CLONES static void wqk_candidate_errors_lanes(const float *x, ptrdiff_t w, int ncand,
                                                  const float *inv, const float *s,
                                                  const float *lo, const float *hi, float *acc) {
    for (int c = 0; c < ncand; c++) {
        const float *ic = inv + c * w, *sc = s + c * w, *lc = lo + c * w, *hc = hi + c * w;
        float *ac = acc + c * w;
        for (ptrdiff_t i = 0; i < w; i++) ac[i] += wqk_sq_error(x[i], ic[i], sc[i], lc[i], hc[i]);
    }
}

/* ---- bit packing ---------------------------------------------------------------------------
 * LSB-first stream: code i occupies bits [i*b, (i+1)*b).  Every 8 codes make exactly b bytes,
 * so one loop serves every width. */

static inline uint32_t wqk_sign_extend(uint32_t low, int b) {
    return (uint32_t)(uint8_t)(int8_t)((int32_t)(low << (32 - b)) >> (32 - b));
}

/* Packs n codes; returns nonzero if any code does not fit in b bits (signed or unsigned). */
WQK_CLONES static int wqk_pack(const uint8_t *codes, ptrdiff_t n, int b, int is_signed, uint8_t *out) {
    const uint32_t mask = (1u << b) - 1;
    uint32_t bad = 0;
    for (ptrdiff_t g = 0; g * 8 < n; g++) {
        ptrdiff_t count = n - g * 8 < 8 ? n - g * 8 : 8;
        uint64_t v = 0;
        for (ptrdiff_t j = 0; j < count; j++) {
            uint32_t c = codes[g * 8 + j], low = c & mask;
            bad |= (is_signed ? wqk_sign_extend(low, b) : low) ^ c;
            v |= (uint64_t)low << (j * b);
        }
        memcpy(out + g * b, &v, (size_t)((count * b + 7) / 8));
    }
    return bad != 0;
}

WQK_CLONES static void wqk_unpack(const uint8_t *packed, ptrdiff_t n, int b, int is_signed, uint8_t *codes) {
    const uint64_t mask = ((uint64_t)1 << b) - 1;
    for (ptrdiff_t g = 0; g * 8 < n; g++) {
        ptrdiff_t count = n - g * 8 < 8 ? n - g * 8 : 8;
        uint64_t v = 0;
        memcpy(&v, packed + g * b, (size_t)((count * b + 7) / 8));
        for (ptrdiff_t j = 0; j < count; j++) {
            uint32_t low = (uint32_t)((v >> (j * b)) & mask);
            codes[g * 8 + j] = (uint8_t)(is_signed ? wqk_sign_extend(low, b) : low);
        }
    }
}

#endif
