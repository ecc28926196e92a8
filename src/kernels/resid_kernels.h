/* Kernel table of the fused residual block relu(bn(x) + z) (ResNet's "BN, add the shortcut,
 * ReLU"): one pass over x and z writes y; one pass over x, dy and y writes dx and dz.
 * The blocks, views and decompositions are those of kernels/kernels.h (per (channel, block)
 * over the view's runs, or rows with the channels innermost); the statistics and the backward
 * sums come from the batch-norm kernels (moments, bwd_reduce with ymask = y).
 *
 * Tensor slots: forward  0 = x, 1 = y, 2 = z;
 *               backward 0 = x, 1 = dy, 2 = dx, 3 = y (the ReLU mask), 4 = dz.
 *
 * Numerics (every kernel, every ISA): in double, in this order, without FMA contraction,
 * rounded once to the element type:
 *   forward   r = ((x - mean) * a + b) + z;  y = r < 0 ? 0 : r       (NaN propagates)
 *   backward  g = y <= 0 ? 0 : dy  (NaN y passes, as torch.relu);  dz = g;
 *             dx = kg * g + kx * (x - mean) + k0                     (batch norm's bwd_apply)
 * so the optimized kernels give the reference's bits. */
#ifndef NK_RESID_KERNELS_H
#define NK_RESID_KERNELS_H

#include "kernels/kernels.h"

typedef struct nk_resid_kernels {
    /* ---- per (channel, block) ---- */
    /* x: slot 0, y: slot 1, z: slot 2 */
    void (*fwd)(const nk_cview *v, const void *x, const void *z, void *y, int64_t c, int64_t r0,
                int64_t r1, double mean, double a, double b);
    /* x: slot 0, dy: slot 1, dx: slot 2 (NULL: not written), y: slot 3, dz: slot 4 (NULL: not
     * written) */
    void (*bwd_apply)(const nk_cview *v, const void *x, const void *dy, const void *y, void *dx,
                      void *dz, int64_t c, int64_t r0, int64_t r1, double mean, double kg,
                      double kx, double k0);

    /* ---- rows: channels [c0, c1) of rows [r0, r1); arrays point at channel c0's entry ---- */
    void (*rows_fwd)(const nk_cview *v, const void *x, const void *z, void *y, int64_t c0,
                     int64_t c1, int64_t r0, int64_t r1, const double *mean, const double *a,
                     const double *b);
    void (*rows_bwd_apply)(const nk_cview *v, const void *x, const void *dy, const void *y,
                           void *dx, void *dz, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                           const double *mean, const double *kg, const double *kx,
                           const double *k0);
} nk_resid_kernels;

extern const nk_resid_kernels nk_resid_ref_f32, nk_resid_ref_f64;

/* The residual kernels for dtype dt under the context's policy (as nk_bn_kernels_for). */
const nk_resid_kernels *nk_resid_kernels_for(const nk_ctx *ctx, nk_dtype dt);

#endif
