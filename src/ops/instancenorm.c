/* Instance normalization (Ulyanov et al. 2016; torch.nn.InstanceNorm*d,
 * ONNX InstanceNormalization): group normalization with one channel per group.
 *
 * x: (N, C, S...) any layout, rank >= 3; one row per (n, c) over the S = prod(S...) spatial
 * values.
 *   forward:  mean[n,c], var[n,c] (biased) over the row,  invstd = 1 / sqrt(var + eps)
 *             y = (x - mean[n,c]) * invstd[n,c] * gamma[c] + beta[c]
 *   running:  (PyTorch track_running_stats=True; m = momentum, PyTorch convention)
 *             running_mean[c] = (1 - m) running_mean[c] + m * mean_n(mean[n,c])
 *             running_var[c]  = (1 - m) running_var[c]  + m * mean_n(var[n,c] * S / (S - 1))
 *             (PyTorch runs batch norm on the (1, N*C, S...) view with running statistics
 *             repeated N times, then averages the N updated copies: the same thing)
 *   inference (use_input_stats=False): y = (x - running_mean[c]) / sqrt(running_var[c] + eps)
 *             * gamma[c] + beta[c]
 *   backward: as group norm with G = C (groupnorm_core.h), from the saved row statistics.
 * Training needs S > 1 (one value would normalize to 0 and its unbiased variance is 0/0).
 */
#include <math.h>

#include "ops/groupnorm_core.h"

static const char *OP = "instancenorm";

void nk_instancenorm_params_default(nk_instancenorm_params *p) {
    if (!p) return;
    p->eps = NK_BN_DEFAULT_EPS;           /* torch.nn.InstanceNorm*d: eps 1e-5 ... */
    p->momentum = NK_BN_DEFAULT_MOMENTUM; /* ... momentum 0.1 ... */
    p->flags = 0;                         /* ... affine=False */
}

/* ---- validation ------------------------------------------------------------------------ */

/* The momentum is checked only where it is used (a running update), as PyTorch ignores it
 * elsewhere (and as batch norm does). */
static nk_status check_params(nk_ctx *ctx, const nk_instancenorm_params *p, int uses_momentum) {
    if (!p) return nk_fail(ctx, NK_ERR_NULL, "%s: params is NULL", OP);
    if (!isfinite(p->eps) || p->eps < 0)
        return nk_fail(ctx, NK_ERR_VALUE, "%s: eps must be finite and >= 0, got %g", OP, p->eps);
    if (uses_momentum && (!isfinite(p->momentum) || p->momentum < 0 || p->momentum > 1))
        return nk_fail(ctx, NK_ERR_VALUE, "%s: momentum must be in [0, 1], got %g", OP, p->momentum);
    if (p->flags & ~(unsigned)(NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT))
        return nk_fail(ctx, NK_ERR_VALUE, "%s: unknown flags 0x%x (NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT)",
                       OP, p->flags);
    return NK_OK;
}

/* x: a data tensor with at least one spatial axis */
static nk_status check_x(nk_ctx *ctx, const nk_tensor *x) {
    nk_status s = nk_check_data(ctx, OP, "x", x);
    if (s) return s;
    if (x->ndim < 3) {
        char shp[160];
        return nk_fail(ctx, NK_ERR_SHAPE,
                       "%s: x must have rank 3 to %d (N, C, spatial...), got input of shape %s",
                       OP, NK_MAX_DIMS, nk_shape_str(x, shp, sizeof shp));
    }
    return NK_OK;
}

static int64_t numel_of(const nk_tensor *x) {
    int64_t n;
    nk_tensor_numel(x, &n); /* validated */
    return n;
}

nk_status nk_instancenorm_workspace_size(const nk_tensor *x, size_t *bytes) {
    if (!x || !bytes) return NK_ERR_NULL;
    nk_status s = check_x(NULL, x);
    if (s) return s;
    *bytes = NK_WS_SLACK;
    if (numel_of(x) == 0) return NK_OK; /* nothing is computed */
    nk_gn_geom g;
    if (nk_gn_geom_init(&g, x, x->dims[1])) return NK_ERR_OVERFLOW;
    *bytes += nk_gn_workspace_bytes(&g);
    return NK_OK;
}

/* ---- training forward ------------------------------------------------------------------- */

nk_status nk_instancenorm_forward_train(nk_ctx *ctx, const nk_instancenorm_params *p,
                                        const nk_tensor *x, const nk_tensor *gamma,
                                        const nk_tensor *beta, nk_tensor *y,
                                        nk_tensor *save_mean, nk_tensor *save_invstd,
                                        nk_tensor *running_mean, nk_tensor *running_var,
                                        void *workspace, size_t workspace_size) {
    if (!ctx) return NK_ERR_NULL;
    nk_clear_error(ctx);
    nk_status s;
    if ((s = check_params(ctx, p, running_mean || running_var))) return s;
    if ((s = check_x(ctx, x))) return s;
    if ((s = nk_check_same_shape(ctx, OP, "y", y, "x", x))) return s;
    if ((s = nk_check_alias(ctx, OP, "y", y, "x", x))) return s;
    const int64_t N = x->dims[0], C = x->dims[1];
    if ((s = nk_check_affine(ctx, OP, "NK_NORM", p->flags, C, gamma, beta))) return s;
    int64_t R;
    if (!nk_mul_i64(N, C, &R))
        return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: the number of rows N * C overflows int64", OP);
    if (save_mean && (s = nk_gn_check_rows(ctx, OP, "save_mean", save_mean, R))) return s;
    if (save_invstd && (s = nk_gn_check_rows(ctx, OP, "save_invstd", save_invstd, R))) return s;
    if (!running_mean != !running_var)
        return nk_fail(ctx, NK_ERR_NULL, "%s: running_mean and running_var must both be given or both be NULL", OP);
    if ((s = nk_check_opt_vec(ctx, OP, "running_mean", running_mean, C))) return s;
    if ((s = nk_check_opt_vec(ctx, OP, "running_var", running_var, C))) return s;

    /* empty batch or no channels: no row to normalize, nothing touched */
    if (N == 0 || C == 0) return NK_OK;
    const int64_t S = numel_of(x) / R; /* values per row; 0 when a spatial axis is 0 */
    char shp[160];
    if (S == 0)
        return nk_fail(ctx, NK_ERR_DEGENERATE,
                       "%s: zero-size reduction: input of shape %s has no spatial elements", OP,
                       nk_shape_str(x, shp, sizeof shp));
    if (S == 1)
        return nk_fail(ctx, NK_ERR_DEGENERATE,
                       "%s: expected more than 1 spatial element when training, got input of shape %s",
                       OP, nk_shape_str(x, shp, sizeof shp));
    nk_gn_geom g;
    if (nk_gn_geom_init(&g, x, C)) return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: sizes of x overflow int64", OP);
    void *ws;
    if ((s = nk_workspace_get(ctx, OP, workspace, workspace_size, nk_gn_workspace_bytes(&g), &ws)))
        return s;
    nk_gn_fwd o;
    const int64_t bad = nk_gn_forward_train(ctx, &g, p->eps, p->flags, x, gamma, beta, y, ws, &o);
    nk_rows_store(save_mean, 0, g.R, o.mean);
    nk_rows_store(save_invstd, 0, g.R, o.invstd);
    if (bad >= 0)
        return nk_fail(ctx, NK_WARN_NONFINITE_STATS,
                       "%s: statistics of sample %lld, channel %lld are not finite (mean %g, var %g); running statistics left unchanged",
                       OP, (long long)(bad / C), (long long)(bad % C), o.mean[bad], o.var[bad]);
    if (!running_mean) return NK_OK;

    /* running update in double; o.gamma and o.beta (C each) are free again */
    double *rm = o.gamma, *rv = o.beta;
    const double m = p->momentum, bessel = (double)S / (double)(S - 1);
    nk_vec_load(running_mean, rm);
    nk_vec_load(running_var, rv);
    /* sums over the batch in a fixed order (n), sample-major loops: contiguous reads */
    double *sm = o.scratch, *sv = sm + C;
    for (int64_t c = 0; c < C; c++) sm[c] = sv[c] = 0.0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            sm[c] += o.mean[n * C + c];
            sv[c] += o.var[n * C + c] * bessel;
        }
    for (int64_t c = 0; c < C; c++) {
        rm[c] = (1.0 - m) * rm[c] + m * (sm[c] / (double)N);
        rv[c] = (1.0 - m) * rv[c] + m * (sv[c] / (double)N);
    }
    nk_vec_store(running_mean, rm);
    nk_vec_store(running_var, rv);
    return NK_OK;
}

/* ---- inference forward ------------------------------------------------------------------ */

nk_status nk_instancenorm_forward_inference(nk_ctx *ctx, const nk_instancenorm_params *p,
                                            const nk_tensor *x, const nk_tensor *gamma,
                                            const nk_tensor *beta, const nk_tensor *running_mean,
                                            const nk_tensor *running_var, nk_tensor *y) {
    if (!ctx) return NK_ERR_NULL;
    nk_clear_error(ctx);
    nk_status s;
    if ((s = check_params(ctx, p, 0))) return s;
    if ((s = check_x(ctx, x))) return s;
    if ((s = nk_check_same_shape(ctx, OP, "y", y, "x", x))) return s;
    if ((s = nk_check_alias(ctx, OP, "y", y, "x", x))) return s;
    const int64_t C = x->dims[1];
    if ((s = nk_check_affine(ctx, OP, "NK_NORM", p->flags, C, gamma, beta))) return s;
    if ((s = nk_check_vec(ctx, OP, "running_mean", running_mean, C))) return s;
    if ((s = nk_check_vec(ctx, OP, "running_var", running_var, C))) return s;
    if (numel_of(x) == 0) return NK_OK;

    nk_gn_geom g;
    if (nk_gn_geom_init(&g, x, C)) return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: sizes of x overflow int64", OP);
    void *ws; /* no workspace argument: the context's scratch, 3 arrays of C */
    if ((s = nk_workspace_get(ctx, OP, NULL, 0, 3 * (size_t)C * sizeof(double), &ws))) return s;
    double *mean = ws, *a = mean + C, *b = a + C;
    nk_vec_load(running_mean, mean);
    nk_vec_load(running_var, a);
    for (int64_t c = 0; c < C; c++) {
        if (!(a[c] + p->eps > 0) || !isfinite(a[c])) /* as batch norm's inference */
            return nk_fail(ctx, NK_ERR_VALUE,
                           "%s: running_var[%lld] + eps must be finite and > 0, got %g + %g", OP,
                           (long long)c, a[c], p->eps);
        a[c] = 1.0 / sqrt(a[c] + p->eps);
    }
    /* a = gamma * invstd, b = beta (the training forward's coefficients) */
    if (p->flags & NK_NORM_USE_SCALE) {
        nk_vec_load(gamma, b);
        for (int64_t c = 0; c < C; c++) a[c] = b[c] * a[c];
    }
    if (p->flags & NK_NORM_USE_SHIFT)
        nk_vec_load(beta, b);
    else
        for (int64_t c = 0; c < C; c++) b[c] = 0.0;
    nk_gn_normalize_channels(ctx, &g, x, y, mean, a, b);
    return NK_OK;
}

/* ---- backward --------------------------------------------------------------------------- */

nk_status nk_instancenorm_backward(nk_ctx *ctx, const nk_instancenorm_params *p,
                                   const nk_tensor *x, const nk_tensor *dy,
                                   const nk_tensor *gamma, const nk_tensor *save_mean,
                                   const nk_tensor *save_invstd, nk_tensor *dx,
                                   nk_tensor *dgamma, nk_tensor *dbeta, void *workspace,
                                   size_t workspace_size) {
    if (!ctx) return NK_ERR_NULL;
    nk_clear_error(ctx);
    nk_status s;
    if ((s = check_params(ctx, p, 0))) return s;
    if ((s = check_x(ctx, x))) return s;
    return nk_gn_backward_op(ctx, OP, x->dims[1], p->flags, x, dy, gamma, save_mean,
                             save_invstd, dx, dgamma, dbeta, workspace, workspace_size);
}
