/* Kernels of masked batch normalization: batch norm restricted to the valid positions of a
 * mask. Plain functions over one block [r0, r1) of one channel c of a channel view, like
 * kernels.h, with the mask as one more tensor of the view: it has x's dims but a zero stride
 * on the channel axis, so every channel sees the same valid positions. A position is valid
 * where the mask is nonzero.
 *
 * Tensor slots in the view:
 *   forward:  0 = x, 1 = y, 3 = mask
 *   backward: 0 = x, 1 = dy (or the gated gradient), 2 = dx, or the ReLU mask y in the
 *             reduction, 3 = mask
 *   relu_gate: 0 = y, 1 = dy, 2 = g (its own view)
 * Kernels never allocate, print or exit. */
#ifndef NK_MASKED_KERNELS_H
#define NK_MASKED_KERNELS_H

#include "core/internal.h"

typedef struct nk_masked_kernels {
    /* count = valid values of the block, sum = their sum (double) */
    void (*sum)(const nk_cview *v, const void *x, const void *mask, int64_t c, int64_t r0,
                int64_t r1, int64_t *count, double *sum);
    /* ss = sum over the valid values of (x - mean)^2 */
    void (*sqdev)(const nk_cview *v, const void *x, const void *mask, int64_t c, int64_t r0,
                  int64_t r1, double mean, double *ss);
    /* y = (x - mean) * a + b (then max(0, .) if relu) where valid, 0 elsewhere */
    void (*normalize)(const nk_cview *v, const void *x, const void *mask, void *y, int64_t c,
                      int64_t r0, int64_t r1, double mean, double a, double b, int relu);
    /* over the valid values: g = dy (0 where ymask <= 0 if ymask; NaN passes), count,
     * sum g, sum g (x - mean), sum (x - mean) (to recover a mean rounded when saved) */
    void (*bwd_reduce)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                       const void *mask, int64_t c, int64_t r0, int64_t r1, double mean,
                       int64_t *count, double *sum_g, double *sum_gx, double *sum_x);
    /* dx = kg * g + kx * (x - mean) + k0 where valid, 0 elsewhere (g in slot 1) */
    void (*bwd_apply)(const nk_cview *v, const void *x, const void *g, const void *mask,
                      void *dx, int64_t c, int64_t r0, int64_t r1, double mean, double kg,
                      double kx, double k0);
    /* g = 0 where y <= 0, else dy (an exact selection: no rounding; NaN y passes dy, as the
     * ReLU backward of batch norm) */
    void (*relu_gate)(const nk_cview *v, const void *y, const void *dy, void *g, int64_t c,
                      int64_t r0, int64_t r1);
} nk_masked_kernels;

/* The kernels for data dtype dt (float32/float64) and mask dtype mt (u8/float32/float64);
 * NULL for another combination. The context's instruction set (kernels.h, nk_isa_for): the
 * optimized kernels (kernels/simd/masked_simd_impl.h) or the reference. */
const nk_masked_kernels *nk_masked_kernels_for(const nk_ctx *ctx, nk_dtype dt, nk_dtype mt);

#endif
