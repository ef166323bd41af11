/* Innermost loops of Keras 3's own absmax quantizer (keras.quantizers.abs_max_quantize), called
 * from _keras_schemes.pxi.
 *
 * Keras multiplies by its scale: codes are  q = clip(rint(x * m), lo, hi)  with the multiplier
 * m = qmax / (max|x| + 1e-7) of the element's channel, in float32; the weight Keras computes
 * with is q / m (a true float32 division).  Rounding uses the 1.5 * 2^23 trick on x * m first
 * clamped to [lo, hi] (integers of magnitude <= 127, so clamping first gives the same code).
 *
 * The error of q / m against the weight as read (a: x itself, or x before pruning) is summed in
 * the same visit, by the statistics' own loop (wqk_error of _bit_loops.h, over float bits): a
 * block of codes is made, then its error summed while both are in L1.  The values are stored
 * into the block as bits (memcpy) so that the error loop reads them through the type they were
 * written as; only the sums may be reordered (WQK_SUMS), never the codes, whose rounding trick
 * that licence would fold away.
 */
#ifndef WQK_KERAS_LOOPS_H
#define WQK_KERAS_LOOPS_H

#include "_bit_loops.h"

/* elements per block of codes whose error is summed next, while in L1 */
#define WQK_KERAS_BLOCK 1024

/* Codes of n <= WQK_KERAS_BLOCK elements, the multiplier m[i] of each (vector) or m[0] for all,
 * and in v the bits of the values Keras computes with. */
WQK_CLONES static void wqk_keras_codes(const float *x, int8_t *q, uint32_t *v, ptrdiff_t n, const float *m,
                                       int vector, float lo, float hi) {
    if (vector) {
        for (ptrdiff_t i = 0; i < n; i++) {
            float c = x[i] * m[i];
            c = c < lo ? lo : c;
            c = c > hi ? hi : c;
            c = (c + WQK_MAGIC) - WQK_MAGIC;
            q[i] = (int8_t)(int32_t)c;
            const float value = c / m[i];
            memcpy(&v[i], &value, sizeof value);
        }
    } else {
        const float s = m[0];
        for (ptrdiff_t i = 0; i < n; i++) {
            float c = x[i] * s;
            c = c < lo ? lo : c;
            c = c > hi ? hi : c;
            c = (c + WQK_MAGIC) - WQK_MAGIC;
            q[i] = (int8_t)(int32_t)c;
            const float value = c / s;
            memcpy(&v[i], &value, sizeof value);
        }
    }
}

/* One run of n elements: codes into q, the values into y unless it is NULL, the error against a
 * (float bits) added to sums = [sum a^2, sum (a - v)^2, max |a - v|] and zeros = [zeros of a,
 * zeros of v] (wqk_error's).  m as for wqk_keras_codes.  y may be x or a: each block's values
 * are copied there once its error is summed.  Returns false if a holds NaN or infinity. */
static bool wqk_keras_absmax_run(const float *x, const uint32_t *a, int8_t *q, float *y, ptrdiff_t n,
                                 const float *m, int vector, float lo, float hi, double *sums, int64_t *zeros) {
    uint32_t v[WQK_KERAS_BLOCK];
    bool finite = true;
    for (ptrdiff_t i = 0; i < n; i += WQK_KERAS_BLOCK) {
        ptrdiff_t len = n - i < WQK_KERAS_BLOCK ? n - i : WQK_KERAS_BLOCK;
        wqk_keras_codes(x + i, q + i, v, len, vector ? m + i : m, vector, lo, hi);
        finite = wqk_finite_key(wqk_error<uint32_t>(a + i, v, len, sums, zeros)) && finite;
        if (y != NULL)
            memcpy(y + i, v, (size_t)len * sizeof(float));
    }
    return finite;
}

#endif /* WQK_KERAS_LOOPS_H */
