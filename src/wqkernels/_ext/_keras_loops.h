/* Innermost loops of Keras 3's own absmax quantizer (keras.quantizers.abs_max_quantize), called
 * from _keras_schemes.pxi.
 *
 * Keras multiplies by its scale: codes are  q = clip(rint(x * m), lo, hi)  with the multiplier
 * m = qmax / (max|x| + 1e-7) of the element's channel, in float32; the weight Keras computes
 * with is q / m (a true float32 division).  Rounding uses the 1.5 * 2^23 trick on x * m first
 * clamped to [lo, hi] (integers of magnitude <= 127, so clamping first gives the same code).
 *
 * The error of q / m against the weight as read (a: x itself, or x before pruning) is summed in
 * the same visit: a block of codes is made, then its error summed while both are in L1.  The
 * two loops are separate functions because only the sums may be reordered (WQK_SUMS): the same
 * licence on the codes would fold the rounding trick away.
 */
#ifndef WQK_KERAS_LOOPS_H
#define WQK_KERAS_LOOPS_H

#include "_bit_loops.h"

/* elements per block of codes whose error is summed next, while in L1 */
#define WQK_KERAS_BLOCK 1024

/* Codes of n <= WQK_KERAS_BLOCK elements, the multiplier m[i] of each (vector) or m[0] for all,
 * and in v the values Keras computes with. */
WQK_CLONES static void wqk_keras_codes(const float *x, int8_t *q, float *v, ptrdiff_t n, const float *m,
                                       int vector, float lo, float hi) {
    if (vector) {
        for (ptrdiff_t i = 0; i < n; i++) {
            float c = x[i] * m[i];
            c = c < lo ? lo : c;
            c = c > hi ? hi : c;
            c = (c + WQK_MAGIC) - WQK_MAGIC;
            q[i] = (int8_t)(int32_t)c;
            v[i] = c / m[i];
        }
    } else {
        const float s = m[0];
        for (ptrdiff_t i = 0; i < n; i++) {
            float c = x[i] * s;
            c = c < lo ? lo : c;
            c = c > hi ? hi : c;
            c = (c + WQK_MAGIC) - WQK_MAGIC;
            q[i] = (int8_t)(int32_t)c;
            v[i] = c / s;
        }
    }
}

/* sums += [sum a^2, sum (a - v)^2] and sums[2] = max(sums[2], max |a - v|), in float64 (the
 * difference of two float32 is exact there); zeros += [zeros of a, zeros of v].  Finite values. */
WQK_CLONES WQK_SUMS static void wqk_keras_error(const float *a, const float *v, ptrdiff_t n, double *sums,
                                                int64_t *zeros) {
    double sx = 0, se = 0, mx = sums[2];
    int32_t za = 0, zb = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double ai = (double)a[i], d = ai - (double)v[i];
        double ad = d < 0 ? -d : d;
        sx += ai * ai;
        se += d * d;
        mx = ad > mx ? ad : mx;
        za += a[i] == 0.0f;
        zb += v[i] == 0.0f;
    }
    sums[0] += sx;
    sums[1] += se;
    sums[2] = mx;
    zeros[0] += za;
    zeros[1] += zb;
}

/* One run of n elements: codes into q, the values into y unless it is NULL, the error against a
 * added to sums and zeros (see wqk_keras_error); m as for wqk_keras_codes.  y may be x or a:
 * each block's values are copied there once its error is summed. */
static void wqk_keras_absmax_run(const float *x, const float *a, int8_t *q, float *y, ptrdiff_t n, const float *m,
                                 int vector, float lo, float hi, double *sums, int64_t *zeros) {
    float v[WQK_KERAS_BLOCK];
    for (ptrdiff_t i = 0; i < n; i += WQK_KERAS_BLOCK) {
        ptrdiff_t len = n - i < WQK_KERAS_BLOCK ? n - i : WQK_KERAS_BLOCK;
        wqk_keras_codes(x + i, q + i, v, len, vector ? m + i : m, vector, lo, hi);
        wqk_keras_error(a + i, v, len, sums, zeros);
        if (y != NULL)
            memcpy(y + i, v, (size_t)len * sizeof(float));
    }
}

#endif /* WQK_KERAS_LOOPS_H */
