/* The row-normalization engine shared by layer norm (also over channels), RMS norm, mean-variance
 * normalization and weight standardization (internal, never installed).
 *
 * A "row" is one index of the kept axes; its K values are those of the normalized axes, visited
 * in their row-major order (j = 0..K-1). Every op is, per row r with statistics (c_r, a_r):
 *   y = (x - c_r) * a_r * gamma[j] + beta[j]
 *     layer norm / weight std.:  c = mean, a = 1 / sqrt(var + eps)
 *     RMS norm:                  c = 0,    a = 1 / sqrt(mean(x^2) + eps)
 *     MVN:                       c = mean, a = 1 / (std + 1e-9)
 *   backward (h = g * gamma, d = x - c, sums over the row):
 *     dx = ka h + kx d + k0  with
 *     layer norm: ka = a, k0 = -a sum(h) / K, kx = -a^3 sum(h d) / K
 *     RMS norm:   ka = a, k0 = 0,             kx = -a^3 sum(h d) / K
 *     MVN:        ka = 1/s, k0 = -sum(h) / (K s), kx = -sum(h d) / (K s^2 std)  (0 if std = 0),
 *                 s = std + 1e-9
 *     dgamma[j] = sum_rows g d a,  dbeta[j] = sum_rows g
 *   c and a come from the saved statistics, except that a float32 saved mean c0 is replaced
 *   by the row's exact mean (its rounding would shift every d for badly scaled rows):
 *   c = c0 + sum(x - c0) / K, from the row-sums pass (ops/rownorm.c).
 * The thin op files validate their parameters, build an nk_rn_spec and call the engine, which
 * validates the tensors, writes nothing on error, and is bitwise deterministic for any thread
 * count (docs/ops/layernorm.md has the derivation). */
#ifndef NK_OPS_ROWNORM_H
#define NK_OPS_ROWNORM_H

#include "core/internal.h"

typedef enum nk_rn_kind {
    NK_RN_LAYER = 0, /* mean and variance; also weight standardization */
    NK_RN_RMS = 1,   /* root mean square, no centering */
    NK_RN_MVN = 2    /* mean and std, 1e-9 added to the std */
} nk_rn_kind;

typedef struct nk_rn_spec {
    const char *op;       /* name in error messages: "layernorm", ... */
    nk_rn_kind kind;
    unsigned kept_mask;   /* bit i set: axis i indexes the rows; the others are normalized */
    double eps;           /* resolved value (>= 0); unused by MVN */
    unsigned flags;       /* NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT */
    const char *stat0;    /* name of the first row-statistics tensor, NULL if the op has none */
    const char *stat1;    /* name of the second one */
} nk_rn_spec;

/* Validates a data tensor of rank min_rank..NK_MAX_DIMS (float dtype, non-negative dims and
 * strides, sizes within int64, data present when non-empty). */
nk_status nk_rn_check_data(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                           int min_rank);

/* Workspace bytes (forward and backward) for x, which must be valid; includes NK_WS_SLACK. */
size_t nk_rn_workspace_size(const nk_rn_spec *s, const nk_tensor *x);

/* x must have been validated by the caller (nk_rn_check_data); everything else is checked
 * here. stat0/stat1 are the row statistics (R values each, any shape, optional). */
nk_status nk_rn_forward(nk_ctx *ctx, const nk_rn_spec *s, const nk_tensor *x,
                        const nk_tensor *gamma, const nk_tensor *beta, nk_tensor *y,
                        nk_tensor *stat0, nk_tensor *stat1, void *workspace,
                        size_t workspace_size);

/* stat1 is required, stat0 too unless s->stat0 is NULL. dx, dgamma, dbeta optional. */
nk_status nk_rn_backward(nk_ctx *ctx, const nk_rn_spec *s, const nk_tensor *x,
                         const nk_tensor *dy, const nk_tensor *gamma, const nk_tensor *stat0,
                         const nk_tensor *stat1, nk_tensor *dx, nk_tensor *dgamma,
                         nk_tensor *dbeta, void *workspace, size_t workspace_size);

/* Resolves a normalization start axis (negative counts from the end) for rank ndim: the
 * mask of the leading (row) axes, or an NK_ERR_VALUE failure naming op. */
nk_status nk_rn_leading_mask(nk_ctx *ctx, const char *op, int axis, int ndim,
                             unsigned *kept_mask);

#endif
