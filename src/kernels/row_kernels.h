/* Row-normalization kernels (layer norm, RMS norm, MVN, weight standardization): plain
 * functions over the values [j0, j1) of one row r of a reduction view whose kept axes index
 * the rows and whose reduced axes are the normalized ones. j is the position within the row
 * (the reduced axes' row-major order), so per-position parameters are plain arrays indexed
 * by j. Tensor slots in the view: 0 = x, 1 = y (forward) or dy (backward), 2 = dx.
 * Per-element arithmetic is done in double. Kernels never allocate, print or exit.
 *
 * Optimized kernels (kernels/simd/row_simd_impl.h) do not give the reference's bits: they use
 * fused multiply-adds where the reference rounds twice (normalize, bwd_apply), 16
 * position-indexed lanes for the row sums of moments and bwd_reduce (kernels/simd/lanes16.h)
 * and one pass of shifted sums for moments. Their
 * double results differ from the reference's by a few ulp of double, and float32 outputs by
 * at most one ulp (a double result near a tie between two floats); the tests compare them
 * with TOL_F32_RESULT / TOL_F64_RESULT (tests/unit/nk_test.h). Optimized results are bitwise
 * identical across instruction sets, layouts (vector and scalar paths evaluate the same
 * operations), alignments and thread counts. */
#ifndef NK_ROW_KERNELS_H
#define NK_ROW_KERNELS_H

#include "kernels/kernels.h" /* nk_isa */

typedef struct nk_row_kernels {
    /* mean[i], m2[i] (sum of squared deviations) of the positions [j0, j1) of row r0 + i, for
     * the rows [r0, r1); never E[x^2] - E[x]^2 on raw data (kernels.h, numerics: the
     * reference takes two passes, optimized kernels shifted sums) */
    void (*moments)(const nk_cview *v, const void *x, int64_t r0, int64_t r1, int64_t j0,
                    int64_t j1, double *mean, double *m2);
    /* y = (x - c) * a * gamma[j] + beta[j]; gamma NULL means 1, beta NULL means 0 */
    void (*normalize)(const nk_cview *v, const void *x, void *y, int64_t r, int64_t j0,
                      int64_t j1, double c, double a, const double *gamma, const double *beta);
    /* Rows [r0, r1); for row r0 + i, h = dy * gamma[j], d = x - c[i]:  sum_h[i] = sum h,
     * sum_hd[i] = sum h d, and when sum_d is not NULL sum_d[i] = sum d (corrects a center c
     * that was rounded when it was saved) */
    void (*bwd_reduce)(const nk_cview *v, const void *x, const void *dy, int64_t r0, int64_t r1,
                       int64_t j0, int64_t j1, const double *c, const double *gamma,
                       double *sum_h, double *sum_hd, double *sum_d);
    /* The backward's element-wise pass over the rows [r0, r1) in row order, one read of x and
     * dy for both outputs, dy read before dx is written (dx may be dy); row r0 + i:
     *   dx = ka[i] * h + kx[i] * (x - c[i]) + k0[i],  h = dy * gamma[j]   (dx NULL: skipped)
     *   pg[j] += dy * (x - c[i]) * a[i],  pb[j] += dy                     (either may be NULL) */
    void (*bwd_apply)(const nk_cview *v, const void *x, const void *dy, void *dx, int64_t r0,
                      int64_t r1, int64_t j0, int64_t j1, const double *c, const double *gamma,
                      const double *ka, const double *kx, const double *k0, const double *a,
                      double *pg, double *pb);
    /* Outputs of views of at least NK_STREAM_MIN_BYTES (kernels.h) may be written with
     * streaming stores by normalize and bwd_apply; flush orders them (an SFENCE, nothing in
     * the reference) and is called by each task after its last kernel call, before the
     * outputs can be read by another thread. */
    void (*flush)(void);
} nk_row_kernels;

extern const nk_row_kernels nk_row_ref_f32, nk_row_ref_f64;

/* The row kernels of one instruction set (NULL if isa > nk_isa_supported()). */
const nk_row_kernels *nk_row_kernels_isa(nk_isa isa, nk_dtype dt);

/* The row kernels for dtype dt under the context's policy (reference when forced). */
const nk_row_kernels *nk_row_kernels_for(const nk_ctx *ctx, nk_dtype dt);

#endif
