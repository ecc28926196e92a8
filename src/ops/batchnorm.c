/* Batch normalization: training forward, inference forward, backward (batch and fixed stats),
 * and the fused residual block relu(bn(x) + z) (ResNet's BN, add the shortcut z, ReLU).
 *
 * x: (N, C, S...) any layout; per-channel vectors (C). M = N * prod(S) values per channel.
 *   forward:  mean = sum x / M,  var = sum (x - mean)^2 / M  (biased),  invstd = 1/sqrt(var+eps)
 *             y = (x - mean) * (gamma * invstd) + beta          [max(0, y) with FUSE_RELU]
 *   running:  PyTorch  r <- (1 - m) r + m b     ONNX  r <- m r + (1 - m) b
 *             cumulative  r <- (1 - 1/t) r + (1/t) b,  t = batches seen including this one
 *             b = mean, and var * M / (M - 1) (unbiased) or var (biased) for the variance
 *   backward: g = dy (0 where y <= 0 with FUSE_RELU),  xhat = (x - mean) * invstd
 *             dbeta = sum g,  dgamma = sum g xhat
 *             dx = gamma invstd (g - dbeta / M - xhat dgamma / M)     (batch statistics)
 *             dx = gamma invstd g                                      (fixed statistics)
 *   add+relu: y = max(0, bn(x) + z);  g = dy (0 where y <= 0);  dz = g;  dx as above from g
 *             (the ReLU mask of FUSE_RELU, with the shortcut's gradient written in the same pass)
 * The derivation is in docs/numerics.md.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/resid_kernels.h"
#include "ops/bn_common.h"
#include "stats/moments_internal.h"

static const char *OP = "batchnorm";
static const char *OP_AR = "batchnorm_add_relu";

void nk_batchnorm_params_default(nk_batchnorm_params *p) {
    if (!p) return;
    p->eps = NK_BN_DEFAULT_EPS;
    p->momentum = NK_BN_DEFAULT_MOMENTUM;
    p->momentum_kind = NK_MOMENTUM_PYTORCH;
    p->unbiased_running_var = 1;
    p->flags = NK_BN_USE_SCALE | NK_BN_USE_SHIFT;
}

void nk_batchnorm_params_onnx(nk_batchnorm_params *p) {
    if (!p) return;
    nk_batchnorm_params_default(p);
    p->momentum = NK_BN_ONNX_MOMENTUM;
    p->momentum_kind = NK_MOMENTUM_ONNX;
    p->unbiased_running_var = 0;
}

/* ---- validation ------------------------------------------------------------------------ */

/* Given statistics must give a finite, positive var + eps (a negative or NaN running variance
 * would silently produce NaN outputs). */
static nk_status check_var(nk_ctx *ctx, const char *op, const char *name, const double *var,
                           int64_t C, double eps) {
    for (int64_t c = 0; c < C; c++)
        if (!(var[c] + eps > 0) || !isfinite(var[c]))
            return nk_fail(ctx, NK_ERR_VALUE,
                           "%s: %s[%lld] + eps must be finite and > 0, got %g + %g", op, name,
                           (long long)c, var[c], eps);
    return NK_OK;
}

/* gamma (C) when flags has NK_BN_USE_SCALE, beta (C) with NK_BN_USE_SHIFT: nk_check_affine's
 * checks and messages with the flag names as literals (nk_check_affine formats them with two
 * snprintf calls, ~0.1 us of a 2 us call at 8x64x1x1). */
static nk_status check_affine(nk_ctx *ctx, const char *op, unsigned flags, int64_t C,
                              const nk_tensor *gamma, const nk_tensor *beta) {
    nk_status s = nk_check_vec_if(ctx, op, (flags & NK_BN_USE_SCALE) != 0, "gamma", gamma, C,
                                  " but NK_BN_USE_SCALE is set");
    if (s) return s;
    return nk_check_vec_if(ctx, op, (flags & NK_BN_USE_SHIFT) != 0, "beta", beta, C,
                           " but NK_BN_USE_SHIFT is set");
}

/* The residual z of the add+relu forwards: x's dims and dtype, any layout; y may be z itself
 * (in place) but may not overlap it otherwise. */
static nk_status check_resid(nk_ctx *ctx, const char *op, const nk_tensor *x,
                             const nk_tensor *z, const nk_tensor *y) {
    nk_status s;
    if ((s = nk_check_same_shape(ctx, op, "z", z, "x", x))) return s;
    return nk_check_alias(ctx, op, "y", y, "z", z);
}

/* Staging area for per-channel doubles: NSTAGE arrays of C. */
enum { ST_GAMMA, ST_BETA, ST_MEAN, ST_INVSTD, ST_R0, ST_R1, ST_KG, ST_KX, ST_K0, NSTAGE };

static size_t stage_bytes(int64_t C) { return (size_t)C * NSTAGE * sizeof(double); }

/* One workspace serves the forward and the backward (the size the caller is told). */
static size_t train_ws_bytes(int64_t C, int64_t M) {
    const size_t fwd = nk_bn_fwd_ws_bytes(C, M, NSTAGE), bwd = nk_bn_bwd_ws_bytes(C, M, NSTAGE);
    return fwd > bwd ? fwd : bwd;
}

nk_status nk_batchnorm_workspace_size(const nk_tensor *x, size_t *bytes) {
    if (!x || !bytes) return NK_ERR_NULL;
    nk_status s = nk_check_data(NULL, OP, "x", x);
    if (s) return s;
    *bytes = train_ws_bytes(x->dims[1], nk_bn_values_per_channel(x)) + NK_WS_SLACK;
    return NK_OK;
}

static void load_gamma(const nk_batchnorm_params *p, const nk_tensor *gamma, int64_t C,
                       double *g) {
    nk_vec_load_or(gamma, (p->flags & NK_BN_USE_SCALE) != 0, 1.0, C, g);
}

static void load_affine(const nk_batchnorm_params *p, const nk_tensor *gamma,
                        const nk_tensor *beta, int64_t C, double *g, double *b) {
    load_gamma(p, gamma, C, g);
    nk_vec_load_or(beta, (p->flags & NK_BN_USE_SHIFT) != 0, 0.0, C, b);
}

/* ---- work decomposition ---------------------------------------------------------------- */

/* Element-wise passes over a view with the channels innermost (nk_view_rows) take tasks of
 * whole rows: contiguous memory, and any split gives the same bits. */
static int64_t rows_per_task(int64_t C) {
    const int64_t r = NK_BLOCK_ELEMS / C;
    return r > 0 ? r : 1;
}

/* The largest share of a static schedule (OpenMP's: thread i takes a contiguous range of
 * tasks, the first T % nt threads one more) of the rows reduction tasks of w channels, in
 * values. */
static int64_t rows_max_share(int64_t C, int64_t M, int64_t w, int nt) {
    const int64_t nch = (C + w - 1) / w, T = nk_num_blocks(M) * nch, q = T / nt, r = T % nt;
    int64_t best = 0, t = 0;
    for (int i = 0; i < nt; i++) {
        int64_t share = 0;
        for (const int64_t end = t + q + (i < r); t < end; t++) {
            const int64_t b = t / nch, c0 = (t % nch) * w, c1 = c0 + w < C ? c0 + w : C;
            const int64_t rows = M - b * NK_BLOCK_ELEMS < NK_BLOCK_ELEMS ? M - b * NK_BLOCK_ELEMS
                                                                         : NK_BLOCK_ELEMS;
            share += rows * (c1 - c0);
        }
        if (share > best) best = share;
    }
    return best;
}

/* Channels per task of the rows reductions: NK_ROWS_CHUNK, or half of it when that makes the
 * largest thread share smaller by the fraction 1/gain at least. The partials are per (channel,
 * block) whatever the chunk, so the bits do not change. Measured on NHWC float32, 2 threads:
 *  - 8x64x28x28 (one block of 64 channels: one task for 2 threads): fwd-train 53 -> 44 us,
 *    bwd 109 -> 87 us (quarters, 4 tasks, were slower than halves);
 *  - 32x64x56x56 (12.25 blocks: shares of 7 and 5.25 blocks, 6.5 and 5.75 with halves): bwd
 *    1.79 -> 1.56 ms, but fwd-train 0.73 -> 0.79 ms, so gain 16 in the backward's reduction
 *    and 8 (only the one-task case above) in the moments. */
static int64_t rows_chunk(int64_t C, int64_t M, int nt, int64_t gain) {
    if (nt == 1) return NK_ROWS_CHUNK;
    const int64_t full = rows_max_share(C, M, NK_ROWS_CHUNK, nt);
    const int64_t half = rows_max_share(C, M, NK_ROWS_CHUNK / 2, nt);
    return gain * half < (gain - 1) * full ? NK_ROWS_CHUNK / 2 : NK_ROWS_CHUNK;
}

/* Per-channel views (not nk_view_rows) whose channels are small enough to stay in cache are
 * processed channel by channel: a training forward takes the moments of a channel's blocks,
 * merges them and normalizes the channel while it is still in cache; a backward reduces and
 * applies likewise. x (and dy) are then read from memory once instead of twice. The kernels,
 * blocks and merge order are those of the separate passes, so the bits are the same; the
 * choice (which may use the thread count) only moves work between caches. NK_FUSE_MAX_BYTES:
 * the data one channel's fused task touches, chosen to fit a 1 MiB L2. Tasks are whole
 * channels in a static schedule: C >= 2 nt keeps the threads' shares within one channel of
 * each other (and equal when nt divides C, as for every ResNet shape on 1, 2, 4 threads). */
#define NK_FUSE_MAX_BYTES ((int64_t)1 << 20)

static int fuse_channels(const nk_cview *v, nk_dtype dt, int tensors_read, int nt) {
    const int64_t bytes = v->M * (int64_t)nk_dtype_size(dt) * tensors_read;
    return !nk_view_rows(v) && bytes <= NK_FUSE_MAX_BYTES && v->C >= 2 * (int64_t)nt;
}

static inline int64_t block_end(int64_t r0, int64_t M) {
    return r0 + NK_BLOCK_ELEMS < M ? r0 + NK_BLOCK_ELEMS : M;
}

/* Block moments of every channel of slot 0 into ws (2 doubles per (channel, block), the
 * layout of nk_moments_merge_blocks), then merged into mom: nk_moments_blocks' tasks, kernels
 * and order (so its bits), with NK_FOR_TASKS instead of an always-entered OpenMP region. */
static void moments_all(int nt, const nk_bn_kernels *k, const nk_cview *v, const void *x,
                        double *ws, nk_moments *mom) {
    const int64_t C = v->C, M = v->M, nb = nk_num_blocks(M);
    if (nk_view_rows(v)) { /* (row block, channel chunk) tasks, partials per (channel, block) */
        const int64_t cw = rows_chunk(C, M, nt, 8), nch = (C + cw - 1) / cw, tasks = nb * nch;
        NK_FOR_TASKS(nt, t, tasks, {
            const int64_t b = t / nch, c0 = (t % nch) * cw;
            const int64_t c1 = c0 + cw < C ? c0 + cw : C;
            const int64_t r0 = b * NK_BLOCK_ELEMS;
            double mean[NK_ROWS_CHUNK], m2[NK_ROWS_CHUNK];
            k->rows_moments(v, x, c0, c1, r0, block_end(r0, M), mean, m2);
            for (int64_t c = c0; c < c1; c++) {
                ws[2 * (c * nb + b)] = mean[c - c0];
                ws[2 * (c * nb + b) + 1] = m2[c - c0];
            }
        });
    } else {
        NK_FOR_TASKS(nt, t, C * nb, {
            const int64_t c = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
            k->moments(v, x, c, r0, block_end(r0, M), &ws[2 * t], &ws[2 * t + 1]);
        });
    }
    for (int64_t c = 0; c < C; c++) mom[c] = nk_moments_merge_blocks(ws, c, M);
}

/* An element-wise pass (normalize, backward apply) may take any split of a channel's values:
 * each element's result depends only on it and the channel's coefficients. When the innermost
 * reduced axis holds contiguous runs of at least NK_RUN_TASK_MIN values (NCHW: the H*W of one
 * (n, c)), such a pass takes (outer index, channel) runs as tasks in outer-major order, which
 * walks NCHW memory in address order instead of jumping by C*H*W between the N runs of one
 * channel's block: 16x256x56x56 float32 inference, 1 thread, 5.3 -> 2.4 ms (min of 20).
 * Returns the run length L (tasks are [o L, o L + L) of channel c; M = outer * L), or 0. */
#define NK_RUN_TASK_MIN 1024

static int64_t run_tasks(const nk_cview *v) {
    const int in = v->nd - 1;
    if (nk_view_rows(v) || v->dims[in] < NK_RUN_TASK_MIN) return 0;
    for (int t = 0; t < v->nt; t++)
        if (v->st[t][in] != 1) return 0;
    return v->dims[in];
}

/* Element-wise passes over a runs view (nk_view_runs: NCHW and its padded relatives) take
 * tasks of (run index o, chunk of channels) in that order, which is address order in a
 * contiguous NCHW tensor: each task reads about NK_RUNS_TASK_VALUES contiguous values, however
 * short the runs (7x7: 49 values), with no per-run set-up but two multiplications. */
#define NK_RUNS_TASK_VALUES 16384

/* Channels per element-wise task of a runs view: chunks of about NK_RUNS_TASK_VALUES values,
 * evened out over the channels. */
static int64_t runs_chunk(const nk_cview *v) {
    const int64_t L = v->dims[v->nd - 1], want = (NK_RUNS_TASK_VALUES + L - 1) / L;
    const int64_t n = (v->C + want - 1) / want; /* chunks per run index */
    return (v->C + n - 1) / n;
}

/* The fused per-channel passes of a runs view take groups of channels (a power of two, so
 * that ResNet's C gives equal groups): as many as keep a group's data within
 * NK_FUSE_GROUP_BYTES (an L2 share: the group is read twice and written once), while leaving
 * at least 2 nt groups. Any grouping gives the same bits (the per-(channel, block) partials do
 * not depend on it); NK_FUSE_GROUP_MAX bounds the per-group arrays on the stack. Channels too
 * large to group (G = 1: runs of a few KiB or more) keep the per-channel kernels, whose
 * walkers fetch the next run and the next channel (kernels/simd/ahead.h): measured on
 * 32x64x56x56 float32, 1 thread, the runs kernels with G = 1 were 10-20% slower there.
 * Measured with 64 KiB, 256 KiB, 512 KiB and 1 MiB: 64 KiB leaves 8x64x28x28 ungrouped
 * (backward 82 -> 142 us), 1 MiB slows it (82 -> 92 us); 256 and 512 KiB are within noise. */
#define NK_FUSE_GROUP_BYTES ((int64_t)256 << 10)
#define NK_FUSE_GROUP_MAX 64

static int64_t fuse_group(const nk_cview *v, nk_dtype dt, int tensors_read, int nt) {
    const int64_t per = v->M * (int64_t)nk_dtype_size(dt) * tensors_read;
    int64_t g = 1;
    while (g < NK_FUSE_GROUP_MAX && 2 * g * per <= NK_FUSE_GROUP_BYTES &&
           (v->C + 2 * g - 1) / (2 * g) >= 2 * (int64_t)nt)
        g *= 2;
    return g;
}

/* The statistics of a channel and the factor a = gamma * invstd of its normalize. */
static void channel_coeffs(const nk_moments *m, int64_t M, double eps, double g, double *mean,
                           double *var, double *invstd, double *a) {
    *mean = m->mean;
    *var = m->m2 / (double)M;
    *invstd = 1.0 / sqrt(*var + eps);
    *a = g * *invstd;
}

/* The normalize of a forward: batch norm's kernels, or the residual kernels when z is given
 * (slots: x 0, y 1, z 2). */
typedef struct fwd_pass {
    const nk_bn_kernels *k;
    const nk_resid_kernels *rk; /* NULL without z */
    const nk_cview *v;
    const void *x, *z;
    void *y;
    int relu;
} fwd_pass;

static inline void normalize_block(const fwd_pass *f, int64_t c, int64_t r0, int64_t r1,
                                   double mean, double a, double b) {
    if (f->z)
        f->rk->fwd(f->v, f->x, f->z, f->y, c, r0, r1, mean, a, b);
    else
        f->k->normalize(f->v, f->x, f->y, c, r0, r1, mean, a, b, f->relu);
}

/* y = (x - mean[c]) * a[c] + b[c] (+ z, ReLU) over every block of every channel. Walking
 * the tasks in the reverse order of the statistics pass, so that a tensor larger than the L3
 * would start on data still cached, was measured slower (16x256x56x56 NHWC float32, 1
 * thread, fwd-infer min 4.7 ms against 2.6 ms ascending; groups of 32 or 128 tasks reversed,
 * ascending inside: no gain either): the hardware prefetchers lose more than the L3 gives. */
static void normalize_all(int nt, const fwd_pass *f, const double *mean, const double *a,
                          const double *b) {
    const nk_cview *v = f->v;
    const int64_t C = v->C, M = v->M, nb = nk_num_blocks(M);
    if (nk_view_rows(v)) {
        const int64_t rt = rows_per_task(C), rtasks = (M + rt - 1) / rt;
        NK_FOR_TASKS(nt, t, rtasks, {
            const int64_t r0 = t * rt, r1 = r0 + rt < M ? r0 + rt : M;
            if (f->z)
                f->rk->rows_fwd(v, f->x, f->z, f->y, 0, C, r0, r1, mean, a, b);
            else
                f->k->rows_normalize(v, f->x, f->y, 0, C, r0, r1, mean, a, b, f->relu);
        });
        return;
    }
    if (!f->z && nk_view_runs(v)) {
        const int64_t L = v->dims[v->nd - 1], ch = runs_chunk(v), nch = (C + ch - 1) / ch;
        NK_FOR_TASKS(nt, t, M / L * nch, {
            const int64_t o = t / nch, c0 = t % nch * ch, c1 = c0 + ch < C ? c0 + ch : C;
            f->k->runs_normalize(v, f->x, f->y, c0, c1, o * L, o * L + L, mean + c0, a + c0,
                                 b + c0, f->relu);
        });
        return;
    }
    const int64_t L = run_tasks(v);
    if (L) {
        const int64_t nruns = M / L;
        NK_FOR_TASKS(nt, t, nruns * C, {
            const int64_t o = t / C, c = t % C;
            normalize_block(f, c, o * L, o * L + L, mean[c], a[c], b[c]);
        });
        return;
    }
    NK_FOR_TASKS(nt, t, C * nb, {
        const int64_t c = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
        normalize_block(f, c, r0, block_end(r0, M), mean[c], a[c], b[c]);
    });
}

/* ---- training forward ------------------------------------------------------------------ */

/* nk_batchnorm_forward_train, and with z the add+relu forward (op names the entry point). */
static nk_status forward_train(nk_ctx *ctx, const char *op, const nk_batchnorm_params *p,
                               const nk_tensor *x, const nk_tensor *z, const nk_tensor *gamma,
                               const nk_tensor *beta, nk_tensor *y, nk_tensor *save_mean,
                               nk_tensor *save_invstd, nk_tensor *running_mean,
                               nk_tensor *running_var, int64_t *num_batches_tracked,
                               void *workspace, size_t workspace_size) {
    if (!ctx) return NK_ERR_NULL;
    nk_clear_error(ctx);
    nk_status s;
    /* the momentum is checked only where it is used (a running update), as PyTorch ignores
     * it elsewhere */
    if ((s = nk_bn_check_params(ctx, op, p, running_mean || running_var))) return s;
    if ((s = nk_check_data(ctx, op, "x", x))) return s;
    if ((s = nk_check_same_shape(ctx, op, "y", y, "x", x))) return s;
    if ((s = nk_check_alias(ctx, op, "y", y, "x", x))) return s;
    if (z && (s = check_resid(ctx, op, x, z, y))) return s;
    const int64_t C = x->dims[1], M = nk_bn_values_per_channel(x);
    if ((s = check_affine(ctx, op, p->flags, C, gamma, beta))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "save_mean", save_mean, C))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "save_invstd", save_invstd, C))) return s;
    if (!running_mean != !running_var)
        return nk_fail(ctx, NK_ERR_NULL, "%s: running_mean and running_var must both be given or both be NULL", op);
    if ((s = nk_check_opt_vec(ctx, op, "running_mean", running_mean, C))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "running_var", running_var, C))) return s;
    const int track = running_mean != NULL;
    if (track && p->momentum_kind == NK_MOMENTUM_CUMULATIVE && !num_batches_tracked)
        return nk_fail(ctx, NK_ERR_NULL, "%s: the cumulative average needs num_batches_tracked", op);
    if (track && num_batches_tracked && *num_batches_tracked < 0)
        return nk_fail(ctx, NK_ERR_VALUE, "%s: num_batches_tracked is negative (%lld)", op,
                       (long long)*num_batches_tracked);

    if (x->dims[0] == 0 || C == 0) return NK_OK; /* empty batch: nothing to do, nothing touched */
    char shp[160];
    if (M == 0)
        return nk_fail(ctx, NK_ERR_DEGENERATE, "%s: zero-size reduction: input of shape %s has no values per channel",
                       op, nk_shape_str(x, shp, sizeof shp));
    if (M == 1)
        return nk_fail(ctx, NK_ERR_DEGENERATE,
                       "%s: expected more than 1 value per channel when training, got input of shape %s",
                       op, nk_shape_str(x, shp, sizeof shp));

    void *wsv;
    if ((s = nk_workspace_get(ctx, op, workspace, workspace_size, train_ws_bytes(C, M), &wsv))) return s;
    double *blocks = wsv;
    nk_moments *mom = (nk_moments *)((char *)wsv + nk_moments_ws_bytes(C, M));
    double *stage = (double *)(mom + C);
    double *g = stage + ST_GAMMA * C, *b = stage + ST_BETA * C, *mean = stage + ST_MEAN * C;
    double *invstd = stage + ST_INVSTD * C, *a = stage + ST_R0 * C, *var = stage + ST_R1 * C;

    const nk_tensor *ts[3] = {x, y, z};
    nk_cview v;
    nk_cview_init(&v, z ? 3 : 2, ts);
    const fwd_pass f = {nk_bn_kernels_for(ctx, x->dtype),
                        z ? nk_resid_kernels_for(ctx, x->dtype) : NULL,
                        &v, x->data, z ? z->data : NULL, y->data,
                        (p->flags & NK_BN_FUSE_RELU) != 0};
    const int nt = nk_threads_for(ctx, C * M);
    load_affine(p, gamma, beta, C, g, b);
    const int64_t G = fuse_group(&v, x->dtype, 1, nt);
    if (!z && G > 1 && nk_view_runs(&v) && fuse_channels(&v, x->dtype, 1, nt)) {
        /* groups of channels: moments of each block, merge, normalize, run by run */
        const int64_t nb = nk_num_blocks(M);
        NK_FOR_TASKS(nt, t, (C + G - 1) / G, {
            const int64_t c0 = t * G, c1 = c0 + G < C ? c0 + G : C;
            double bm[NK_FUSE_GROUP_MAX], bv[NK_FUSE_GROUP_MAX];
            for (int64_t bk = 0; bk < nb; bk++) {
                const int64_t r0 = bk * NK_BLOCK_ELEMS;
                f.k->runs_moments(&v, x->data, c0, c1, r0, block_end(r0, M), bm, bv);
                for (int64_t c = c0; c < c1; c++) {
                    blocks[2 * (c * nb + bk)] = bm[c - c0];
                    blocks[2 * (c * nb + bk) + 1] = bv[c - c0];
                }
            }
            for (int64_t c = c0; c < c1; c++) {
                mom[c] = nk_moments_merge_blocks(blocks, c, M);
                channel_coeffs(&mom[c], M, p->eps, g[c], &mean[c], &var[c], &invstd[c], &a[c]);
            }
            f.k->runs_normalize(&v, x->data, y->data, c0, c1, 0, M, mean + c0, a + c0, b + c0,
                                f.relu);
        });
    } else if (fuse_channels(&v, x->dtype, 1, nt)) {
        const int64_t nb = nk_num_blocks(M);
        NK_FOR_TASKS(nt, c, C, {
            /* the blocks' moments (two at a time: bn_simd_impl.h, chan_moments), merged */
            f.k->chan_moments(&v, x->data, c, 0, nb, blocks + 2 * c * nb);
            mom[c] = nk_moments_merge_blocks(blocks, c, M);
            channel_coeffs(&mom[c], M, p->eps, g[c], &mean[c], &var[c], &invstd[c], &a[c]);
            /* element-wise: the whole channel in one call (walkers set up once, not per block) */
            normalize_block(&f, c, 0, M, mean[c], a[c], b[c]);
        });
    } else {
        moments_all(nt, f.k, &v, x->data, blocks, mom);
        for (int64_t c = 0; c < C; c++)
            channel_coeffs(&mom[c], M, p->eps, g[c], &mean[c], &var[c], &invstd[c], &a[c]);
        normalize_all(nt, &f, mean, a, b);
    }
    /* eps = 0 with a constant channel gives invstd = inf: as unusable as a NaN mean */
    int64_t bad = -1;
    for (int64_t c = 0; c < C && bad < 0; c++)
        if (!(isfinite(mean[c]) && isfinite(var[c]) && isfinite(invstd[c]))) bad = c;
    nk_vec_store(save_mean, mean);
    nk_vec_store(save_invstd, invstd);

    if (bad >= 0) return nk_bn_warn_nonfinite(ctx, op, bad, mean[bad], var[bad], p->eps);
    if (!track) return NK_OK;

    /* running update, in double; a and g are free again and hold the old running values */
    const double bessel = p->unbiased_running_var ? (double)M / (double)(M - 1) : 1.0;
    nk_vec_load(running_mean, g);
    nk_vec_load(running_var, a);
    nk_bn_running_update(nk_bn_momentum_weight(p, num_batches_tracked), bessel, C, mean, var, g,
                         a, running_mean, running_var);
    if (num_batches_tracked) *num_batches_tracked += 1;
    return NK_OK;
}

nk_status nk_batchnorm_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                     const nk_tensor *x, const nk_tensor *gamma,
                                     const nk_tensor *beta, nk_tensor *y,
                                     nk_tensor *save_mean, nk_tensor *save_invstd,
                                     nk_tensor *running_mean, nk_tensor *running_var,
                                     int64_t *num_batches_tracked, void *workspace,
                                     size_t workspace_size) {
    return forward_train(ctx, OP, p, x, NULL, gamma, beta, y, save_mean, save_invstd,
                         running_mean, running_var, num_batches_tracked, workspace,
                         workspace_size);
}

nk_status nk_batchnorm_add_relu_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                              const nk_tensor *x, const nk_tensor *z,
                                              const nk_tensor *gamma, const nk_tensor *beta,
                                              nk_tensor *y, nk_tensor *save_mean,
                                              nk_tensor *save_invstd, nk_tensor *running_mean,
                                              nk_tensor *running_var,
                                              int64_t *num_batches_tracked, void *workspace,
                                              size_t workspace_size) {
    if (ctx && !z) {
        nk_clear_error(ctx);
        return nk_fail(ctx, NK_ERR_NULL, "%s: z is NULL", OP_AR);
    }
    return forward_train(ctx, OP_AR, p, x, z, gamma, beta, y, save_mean, save_invstd,
                         running_mean, running_var, num_batches_tracked, workspace,
                         workspace_size);
}

/* ---- inference forward ----------------------------------------------------------------- */

static nk_status forward_inference(nk_ctx *ctx, const char *op, const nk_batchnorm_params *p,
                                   const nk_tensor *x, const nk_tensor *z,
                                   const nk_tensor *gamma, const nk_tensor *beta,
                                   const nk_tensor *mean, const nk_tensor *var, nk_tensor *y) {
    if (!ctx) return NK_ERR_NULL;
    nk_clear_error(ctx);
    nk_status s;
    if ((s = nk_bn_check_params(ctx, op, p, 0))) return s;
    if ((s = nk_check_data(ctx, op, "x", x))) return s;
    if ((s = nk_check_same_shape(ctx, op, "y", y, "x", x))) return s;
    if ((s = nk_check_alias(ctx, op, "y", y, "x", x))) return s;
    if (z && (s = check_resid(ctx, op, x, z, y))) return s;
    const int64_t C = x->dims[1], M = nk_bn_values_per_channel(x);
    if ((s = check_affine(ctx, op, p->flags, C, gamma, beta))) return s;
    if ((s = nk_check_vec(ctx, op, "mean", mean, C))) return s;
    if ((s = nk_check_vec(ctx, op, "var", var, C))) return s;
    if (M == 0 || C == 0) return NK_OK;

    void *wsv;
    if ((s = nk_workspace_get(ctx, op, NULL, 0, stage_bytes(C), &wsv))) return s;
    double *stage = wsv;
    double *g = stage + ST_GAMMA * C, *b = stage + ST_BETA * C, *mu = stage + ST_MEAN * C;
    double *a = stage + ST_INVSTD * C, *vr = stage + ST_R0 * C;
    load_affine(p, gamma, beta, C, g, b);
    nk_vec_load(mean, mu);
    nk_vec_load(var, vr);
    if ((s = check_var(ctx, op, "var", vr, C, p->eps))) return s;
    for (int64_t c = 0; c < C; c++) a[c] = g[c] / sqrt(vr[c] + p->eps);

    const nk_tensor *ts[3] = {x, y, z};
    nk_cview v;
    nk_cview_init(&v, z ? 3 : 2, ts);
    const fwd_pass f = {nk_bn_kernels_for(ctx, x->dtype),
                        z ? nk_resid_kernels_for(ctx, x->dtype) : NULL,
                        &v, x->data, z ? z->data : NULL, y->data,
                        (p->flags & NK_BN_FUSE_RELU) != 0};
    normalize_all(nk_threads_for(ctx, C * M), &f, mu, a, b);
    return NK_OK;
}

nk_status nk_batchnorm_forward_inference(nk_ctx *ctx, const nk_batchnorm_params *p,
                                         const nk_tensor *x, const nk_tensor *gamma,
                                         const nk_tensor *beta, const nk_tensor *mean,
                                         const nk_tensor *var, nk_tensor *y) {
    return forward_inference(ctx, OP, p, x, NULL, gamma, beta, mean, var, y);
}

nk_status nk_batchnorm_add_relu_forward_inference(nk_ctx *ctx, const nk_batchnorm_params *p,
                                                  const nk_tensor *x, const nk_tensor *z,
                                                  const nk_tensor *gamma, const nk_tensor *beta,
                                                  const nk_tensor *mean, const nk_tensor *var,
                                                  nk_tensor *y) {
    if (ctx && !z) {
        nk_clear_error(ctx);
        return nk_fail(ctx, NK_ERR_NULL, "%s: z is NULL", OP_AR);
    }
    return forward_inference(ctx, OP_AR, p, x, z, gamma, beta, mean, var, y);
}

/* ---- backward -------------------------------------------------------------------------- */

/* dx = kg g + kx (x - mu) + k0 for channel c */
static void bwd_coeffs(int64_t c, int64_t M, int batch_stats, const double *g,
                       const double *invstd, const double *sg, const double *sgx, double *kg,
                       double *kx, double *k0) {
    kg[c] = g[c] * invstd[c];
    kx[c] = k0[c] = 0.0;
    if (batch_stats) {
        kx[c] = -kg[c] * invstd[c] * invstd[c] * sgx[c] / (double)M;
        k0[c] = -kg[c] * sg[c] / (double)M;
    }
}

/* The apply pass of a backward: batch norm's bwd_apply, or the residual kernels' when the
 * shortcut's gradient dz is wanted (slots: x 0, dy 1, dx 2, y 3, dz 4). */
typedef struct bwd_pass {
    const nk_bn_kernels *k;
    const nk_resid_kernels *rk; /* NULL: plain batch norm */
    const nk_cview *v;
    const void *x, *dy, *ym;
    void *dx, *dz;
} bwd_pass;

static inline void apply_block(const bwd_pass *w, int64_t c, int64_t r0, int64_t r1, double mu,
                               double kg, double kx, double k0) {
    if (w->rk)
        w->rk->bwd_apply(w->v, w->x, w->dy, w->ym, w->dx, w->dz, c, r0, r1, mu, kg, kx, k0);
    else
        w->k->bwd_apply(w->v, w->x, w->dy, w->ym, w->dx, c, r0, r1, mu, kg, kx, k0);
}

/* The backward of batch norm (batch or fixed statistics: batch_stats), and with resid the
 * add+relu backward (mask from y, dz = the masked dy). invstd given per channel;
 * mean_t/aux_t are save_mean/save_invstd (batch) or mean/var (fixed). */
static nk_status backward_common(nk_ctx *ctx, const char *op, const nk_batchnorm_params *p,
                                 const nk_tensor *x, const nk_tensor *dy,
                                 const nk_tensor *gamma, const nk_tensor *mean_t,
                                 const char *mean_name, const nk_tensor *aux_t,
                                 const char *aux_name, const nk_tensor *y, nk_tensor *dx,
                                 nk_tensor *dz, int resid, nk_tensor *dgamma, nk_tensor *dbeta,
                                 void *workspace, size_t workspace_size, int batch_stats) {
    if (!ctx) return NK_ERR_NULL;
    nk_clear_error(ctx);
    nk_status s;
    if ((s = nk_bn_check_params(ctx, op, p, 0))) return s;
    if ((s = nk_check_data(ctx, op, "x", x))) return s;
    if ((s = nk_check_same_shape(ctx, op, "dy", dy, "x", x))) return s;
    const int relu = resid || (p->flags & NK_BN_FUSE_RELU) != 0;
    if (relu) {
        if (!y)
            return nk_fail(ctx, NK_ERR_NULL, resid ? "%s: the backward needs the forward output y (its ReLU mask)"
                                                   : "%s: backward with NK_BN_FUSE_RELU needs the forward output y",
                           op);
        if ((s = nk_check_same_shape(ctx, op, "y", y, "x", x))) return s;
    }
    if (dx) {
        if ((s = nk_check_same_shape(ctx, op, "dx", dx, "x", x))) return s;
        if ((s = nk_check_alias(ctx, op, "dx", dx, "dy", dy))) return s;
        if ((s = nk_check_alias(ctx, op, "dx", dx, "x", x))) return s;
        if (resid && (s = nk_check_alias(ctx, op, "dx", dx, "y", y))) return s;
    }
    if (dz) { /* the same rules as dx, and never dx's memory */
        if ((s = nk_check_same_shape(ctx, op, "dz", dz, "x", x))) return s;
        if ((s = nk_check_alias(ctx, op, "dz", dz, "dy", dy))) return s;
        if ((s = nk_check_alias(ctx, op, "dz", dz, "x", x))) return s;
        if ((s = nk_check_alias(ctx, op, "dz", dz, "y", y))) return s;
        if (dx && (dx->data == dz->data || nk_check_alias(NULL, op, "dz", dz, "dx", dx)))
            return nk_fail(ctx, NK_ERR_VALUE, "%s: dx and dz share memory (they are two different gradients)", op);
    }
    const int64_t C = x->dims[1], M = nk_bn_values_per_channel(x);
    if ((s = check_affine(ctx, op, p->flags & NK_BN_USE_SCALE, C, gamma, NULL))) return s;
    if ((s = nk_check_vec(ctx, op, mean_name, mean_t, C))) return s;
    if ((s = nk_check_vec(ctx, op, aux_name, aux_t, C))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "dgamma", dgamma, C))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "dbeta", dbeta, C))) return s;
    if (C == 0) return NK_OK;

    void *wsv;
    /* the size the caller was told (the forward's, which covers this one) */
    if ((s = nk_workspace_get(ctx, op, workspace, workspace_size, train_ws_bytes(C, M), &wsv))) return s;
    const int64_t nb = nk_num_blocks(M);
    double *part = wsv;
    double *stage = part + NK_BN_BWD_PARTS * C * nb;
    double *g = stage + ST_GAMMA * C, *mu = stage + ST_MEAN * C, *invstd = stage + ST_INVSTD * C;
    double *sg = stage + ST_R0 * C, *sgx = stage + ST_R1 * C, *tmp = stage + ST_BETA * C;
    double *kg = stage + ST_KG * C, *kx = stage + ST_KX * C, *k0 = stage + ST_K0 * C;
    nk_vec_load(mean_t, mu);
    nk_vec_load(aux_t, tmp);
    if (!batch_stats && (s = check_var(ctx, op, aux_name, tmp, C, p->eps))) return s;
    for (int64_t c = 0; c < C; c++) invstd[c] = batch_stats ? tmp[c] : 1.0 / sqrt(tmp[c] + p->eps);
    load_gamma(p, gamma, C, g);

    if (M == 0) { /* empty batch: the gradients of the parameters are empty sums */
        for (int64_t c = 0; c < C; c++) sg[c] = sgx[c] = 0.0;
        nk_vec_store(dgamma, sgx);
        nk_vec_store(dbeta, sg);
        return NK_OK;
    }

    const nk_tensor *ts[5] = {x, dy, dx ? dx : x, relu ? y : x, dz ? dz : x};
    nk_cview v;
    nk_cview_init(&v, resid ? 5 : 4, ts);
    const bwd_pass w = {nk_bn_kernels_for(ctx, x->dtype),
                        resid ? nk_resid_kernels_for(ctx, x->dtype) : NULL,
                        &v, x->data, dy->data, relu ? y->data : NULL,
                        dx ? dx->data : NULL, dz ? dz->data : NULL};
    const nk_bn_kernels *k = w.k;
    const int rows = nk_view_rows(&v), apply = dx || dz;
    const int nt = nk_threads_for(ctx, C * M);
    const int need_sums = batch_stats || dgamma || dbeta;
    /* Partials: {sum g, sum g (x - mu), sum (x - mu)} per (channel, block), the last one 0
     * with fixed statistics (whose mean is exact), merged by nk_bn_merge_bwd_parts. */
    const int64_t G = fuse_group(&v, x->dtype, 2 + relu, nt);
    if (apply && !w.rk && G > 1 && nk_view_runs(&v) && fuse_channels(&v, x->dtype, 2 + relu, nt)) {
        /* groups of channels: reduce each block, merge, apply, run by run */
        NK_FOR_TASKS(nt, t, (C + G - 1) / G, {
            const int64_t c0 = t * G, c1 = c0 + G < C ? c0 + G : C;
            if (need_sums) {
                double s0[NK_FUSE_GROUP_MAX], s1[NK_FUSE_GROUP_MAX], s2[NK_FUSE_GROUP_MAX];
                for (int64_t bk = 0; bk < nb; bk++) {
                    const int64_t r0 = bk * NK_BLOCK_ELEMS;
                    k->runs_bwd_reduce(&v, x->data, dy->data, w.ym, c0, c1, r0, block_end(r0, M),
                                       mu + c0, s0, s1, batch_stats ? s2 : NULL);
                    for (int64_t c = c0; c < c1; c++) {
                        double *pt = &part[NK_BN_BWD_PARTS * (c * nb + bk)];
                        pt[0] = s0[c - c0];
                        pt[1] = s1[c - c0];
                        pt[2] = batch_stats ? s2[c - c0] : 0.0;
                    }
                }
                for (int64_t c = c0; c < c1; c++) {
                    double *pc = &part[NK_BN_BWD_PARTS * c * nb];
                    nk_bn_merge_bwd_parts(pc, 1, nb, M, &mu[c]);
                    sg[c] = pc[0];
                    sgx[c] = pc[1];
                }
            }
            for (int64_t c = c0; c < c1; c++)
                bwd_coeffs(c, M, batch_stats, g, invstd, sg, sgx, kg, kx, k0);
            k->runs_bwd_apply(&v, w.x, w.dy, w.ym, w.dx, c0, c1, 0, M, mu + c0, kg + c0,
                              kx + c0, k0 + c0);
        });
    } else if (apply && fuse_channels(&v, x->dtype, 2 + relu, nt)) {
        /* channel by channel: reduce, merge, apply while x and dy are in cache */
        NK_FOR_TASKS(nt, c, C, {
            double *pc = &part[NK_BN_BWD_PARTS * c * nb];
            if (need_sums) {
                for (int64_t bk = 0; bk < nb; bk++) {
                    const int64_t r0 = bk * NK_BLOCK_ELEMS;
                    double *pt = &pc[NK_BN_BWD_PARTS * bk];
                    pt[2] = 0.0;
                    k->bwd_reduce(&v, x->data, dy->data, w.ym, c, r0, block_end(r0, M), mu[c],
                                  &pt[0], &pt[1], batch_stats ? &pt[2] : NULL);
                }
                nk_bn_merge_bwd_parts(pc, 1, nb, M, &mu[c]);
                sg[c] = pc[0];
                sgx[c] = pc[1];
            }
            bwd_coeffs(c, M, batch_stats, g, invstd, sg, sgx, kg, kx, k0);
            /* element-wise: the whole channel in one call, as in forward_train (16x256x56x56
             * float32, 1 thread: 1.51 -> 1.41 times an add) */
            apply_block(&w, c, 0, M, mu[c], kg[c], kx[c], k0[c]);
        });
    } else {
        if (need_sums) {
            if (rows) { /* (row block, channel chunk) tasks; partials where the per-channel go */
                const int64_t cw = rows_chunk(C, M, nt, 16), nch = (C + cw - 1) / cw;
                NK_FOR_TASKS(nt, t, nb * nch, {
                    const int64_t bk = t / nch, c0 = (t % nch) * cw;
                    const int64_t c1 = c0 + cw < C ? c0 + cw : C;
                    const int64_t r0 = bk * NK_BLOCK_ELEMS;
                    double s0[NK_ROWS_CHUNK], s1[NK_ROWS_CHUNK], s2[NK_ROWS_CHUNK];
                    k->rows_bwd_reduce(&v, x->data, dy->data, w.ym, c0, c1, r0, block_end(r0, M),
                                       mu + c0, s0, s1, batch_stats ? s2 : NULL);
                    for (int64_t c = c0; c < c1; c++) {
                        double *pt = &part[NK_BN_BWD_PARTS * (c * nb + bk)];
                        pt[0] = s0[c - c0];
                        pt[1] = s1[c - c0];
                        pt[2] = batch_stats ? s2[c - c0] : 0.0;
                    }
                });
            } else {
                NK_FOR_TASKS(nt, t, C * nb, {
                    const int64_t c = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
                    double *pt = &part[NK_BN_BWD_PARTS * t];
                    pt[2] = 0.0;
                    k->bwd_reduce(&v, x->data, dy->data, w.ym, c, r0, block_end(r0, M), mu[c],
                                  &pt[0], &pt[1], batch_stats ? &pt[2] : NULL);
                });
            }
            nk_bn_merge_bwd_parts(part, C, nb, M, mu);
            for (int64_t c = 0; c < C; c++) {
                sg[c] = part[NK_BN_BWD_PARTS * c * nb];
                sgx[c] = part[NK_BN_BWD_PARTS * c * nb + 1];
            }
        }
        if (apply) {
            for (int64_t c = 0; c < C; c++)
                bwd_coeffs(c, M, batch_stats, g, invstd, sg, sgx, kg, kx, k0);
            /* the apply pass reads x, dy and y again (ascending: see normalize_all); dx and dz
             * are written after the reads of each element, so either may be dy itself */
            if (rows) {
                const int64_t rt = rows_per_task(C), rtasks = (M + rt - 1) / rt;
                NK_FOR_TASKS(nt, t, rtasks, {
                    const int64_t r0 = t * rt, r1 = r0 + rt < M ? r0 + rt : M;
                    if (w.rk)
                        w.rk->rows_bwd_apply(&v, w.x, w.dy, w.ym, w.dx, w.dz, 0, C, r0, r1, mu,
                                             kg, kx, k0);
                    else
                        k->rows_bwd_apply(&v, w.x, w.dy, w.ym, w.dx, 0, C, r0, r1, mu, kg, kx,
                                          k0);
                });
            } else if (!w.rk && nk_view_runs(&v)) { /* address order, as in normalize_all */
                const int64_t L = v.dims[v.nd - 1], ch = runs_chunk(&v), nch = (C + ch - 1) / ch;
                NK_FOR_TASKS(nt, t, M / L * nch, {
                    const int64_t o = t / nch, c0 = t % nch * ch, c1 = c0 + ch < C ? c0 + ch : C;
                    k->runs_bwd_apply(&v, w.x, w.dy, w.ym, w.dx, c0, c1, o * L, o * L + L,
                                      mu + c0, kg + c0, kx + c0, k0 + c0);
                });
            } else if (run_tasks(&v)) { /* address order, as in normalize_all */
                const int64_t L = run_tasks(&v), nruns = M / L;
                NK_FOR_TASKS(nt, t, nruns * C, {
                    const int64_t o = t / C, c = t % C;
                    apply_block(&w, c, o * L, o * L + L, mu[c], kg[c], kx[c], k0[c]);
                });
            } else {
                NK_FOR_TASKS(nt, t, C * nb, {
                    const int64_t c = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
                    apply_block(&w, c, r0, block_end(r0, M), mu[c], kg[c], kx[c], k0[c]);
                });
            }
        }
    }
    if (dgamma) {
        for (int64_t c = 0; c < C; c++) tmp[c] = sgx[c] * invstd[c];
        nk_vec_store(dgamma, tmp);
    }
    nk_vec_store(dbeta, sg);
    return NK_OK;
}

nk_status nk_batchnorm_backward(nk_ctx *ctx, const nk_batchnorm_params *p, const nk_tensor *x,
                                const nk_tensor *dy, const nk_tensor *gamma,
                                const nk_tensor *save_mean, const nk_tensor *save_invstd,
                                const nk_tensor *y, nk_tensor *dx, nk_tensor *dgamma,
                                nk_tensor *dbeta, void *workspace, size_t workspace_size) {
    return backward_common(ctx, OP, p, x, dy, gamma, save_mean, "save_mean", save_invstd,
                           "save_invstd", y, dx, NULL, 0, dgamma, dbeta, workspace,
                           workspace_size, 1);
}

nk_status nk_batchnorm_backward_frozen(nk_ctx *ctx, const nk_batchnorm_params *p,
                                       const nk_tensor *x, const nk_tensor *dy,
                                       const nk_tensor *gamma, const nk_tensor *mean,
                                       const nk_tensor *var, const nk_tensor *y, nk_tensor *dx,
                                       nk_tensor *dgamma, nk_tensor *dbeta, void *workspace,
                                       size_t workspace_size) {
    return backward_common(ctx, OP, p, x, dy, gamma, mean, "mean", var, "var", y, dx, NULL, 0,
                           dgamma, dbeta, workspace, workspace_size, 0);
}

nk_status nk_batchnorm_add_relu_backward(nk_ctx *ctx, const nk_batchnorm_params *p,
                                         const nk_tensor *x, const nk_tensor *dy,
                                         const nk_tensor *gamma, const nk_tensor *save_mean,
                                         const nk_tensor *save_invstd, const nk_tensor *y,
                                         nk_tensor *dx, nk_tensor *dz, nk_tensor *dgamma,
                                         nk_tensor *dbeta, void *workspace,
                                         size_t workspace_size) {
    return backward_common(ctx, OP_AR, p, x, dy, gamma, save_mean, "save_mean", save_invstd,
                           "save_invstd", y, dx, dz, 1, dgamma, dbeta, workspace,
                           workspace_size, 1);
}
