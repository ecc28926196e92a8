/* The per-(n, group) normalization core shared by group norm and instance norm (= group norm
 * with one channel per group). The compute functions take validated inputs and never fail,
 * allocate or report; the check helpers and nk_gn_backward_op validate and report.
 *
 * x (N, C, S...) in any layout, G groups of CG = C / G consecutive channels, S = prod(S...),
 * one row per (n, g) of K = CG * S values; row r = n * G + g; instance i = n * C + c.
 *   statistics: moments of every (instance, block) of NK_BLOCK_ELEMS values of x[n, c], then
 *               per row, in (channel, block) order, Chan's merge: mean[r], var[r] = M2 / K.
 *   normalize:  per instance, y = (x - mean[r]) * a + b with a = gamma[c] * invstd[r],
 *               b = beta[c].
 *   backward:   per (instance, block) s_g = sum g, s_gx = sum g (x - mean) and sum (x - mean),
 *               which recovers the exact row mean from x when the saved one was rounded
 *               (float32); per row A = sum_{c in g} gamma_c s_gx[n,c],
 *               B = sum_{c in g} gamma_c s_g[n,c]:
 *                 dx = gamma_c invstd g - invstd^3 A / K (x - mean) - invstd B / K   (bwd_apply)
 *                 dgamma_c = sum_n invstd[n,g] s_gx[n,c],  dbeta_c = sum_n s_g[n,c]
 * The kernels run per (instance, block) on the view kept (N, C), reduced (S...), or, when the
 * channels are innermost (NHWC), as the rows kernels over x[n] seen as an (S, C) matrix; both
 * give the same per-(instance, block) partials (kernels.h), merged in the same fixed order, so
 * results are bitwise identical for any thread count and for every memory layout of the same
 * logical tensor.
 */
#ifndef NK_GROUPNORM_CORE_H
#define NK_GROUPNORM_CORE_H

#include "kernels/kernels.h"

typedef struct nk_gn_geom {
    int64_t N, C, G;
    int64_t CG; /* channels per group, C / G */
    int64_t S;  /* values per (n, c): prod(dims[2:]), 1 for rank 2 */
    int64_t K;  /* values per row: CG * S */
    int64_t R;  /* rows: N * G */
} nk_gn_geom;

/* Fills g from a validated x with G dividing C. Every product is checked: NK_ERR_OVERFLOW is
 * possible only for an empty x (a zero axis lets the others be huge), which the ops handle
 * before computing the geometry. */
nk_status nk_gn_geom_init(nk_gn_geom *g, const nk_tensor *x, int64_t G);

/* ---- row statistics tensors ("save_mean", "save_invstd"): R values in any shape ---- */

/* t must hold exactly R values: nk_check_flat (any rank 0..NK_MAX_DIMS, float32/float64) and
 * the count. Read and written with nk_rows_load / nk_rows_store. */
nk_status nk_gn_check_rows(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                           int64_t R);

/* ---- compute (inputs validated; N, C and every spatial axis > 0) ---- */

/* Scratch of the training forward and of the backward (the larger of the two), in bytes. */
size_t nk_gn_workspace_bytes(const nk_gn_geom *g);

/* Training forward: row statistics, then y. On return the arrays of o point into ws:
 * mean, var (biased), invstd (R each), gamma, beta (C each), scratch (3 N C); gamma, beta
 * and scratch are free for the caller's reuse.
 * Returns the first row whose statistics are not finite, or -1. */
typedef struct nk_gn_fwd {
    double *mean, *var, *invstd, *gamma, *beta, *scratch;
} nk_gn_fwd;
int64_t nk_gn_forward_train(const nk_ctx *ctx, const nk_gn_geom *g, double eps, unsigned flags,
                            const nk_tensor *x, const nk_tensor *gamma, const nk_tensor *beta,
                            nk_tensor *y, void *ws, nk_gn_fwd *o);

/* y = (x - mean[c]) * a[c] + b[c]: per-channel coefficients, the same for every sample
 * (instance norm's inference from running statistics). y may alias x exactly. */
void nk_gn_normalize_channels(const nk_ctx *ctx, const nk_gn_geom *g, const nk_tensor *x,
                              nk_tensor *y, const double *mean, const double *a,
                              const double *b);

/* The whole backward of both ops after their own parameter checks (op names the messages,
 * G the groups: C for instance norm): validates x, dy, dx, gamma, the saved row statistics
 * and dgamma/dbeta, then computes. An empty x gives dgamma = dbeta = 0. */
nk_status nk_gn_backward_op(nk_ctx *ctx, const char *op, int64_t G, unsigned flags,
                            const nk_tensor *x, const nk_tensor *dy, const nk_tensor *gamma,
                            const nk_tensor *save_mean, const nk_tensor *save_invstd,
                            nk_tensor *dx, nk_tensor *dgamma, nk_tensor *dbeta,
                            void *workspace, size_t workspace_size);

#endif
