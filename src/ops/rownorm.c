/* The row-normalization engine: validation, workspace, and the forward/backward passes shared
 * by layer norm, RMS norm, MVN and weight standardization (formulas in ops/rownorm.h).
 *
 * Work decomposition (every sum fixed by R rows and K values per row, never by the thread
 * count):
 *  - forward, K <= NK_BLOCK_ELEMS: each thread takes an equal share of whole rows (a row's
 *    results depend on no other row, and the row kernels give a row the same bits whether
 *    they take it alone or paired, so the split may follow the thread count: balanced shares,
 *    one call of the kernels per pair of rows, no task tail); per row, the statistics from the
 *    moments kernel over the whole row, then the row normalized while it is still in L1.
 *  - forward, K > NK_BLOCK_ELEMS: a task is one block of one row; row statistics come from
 *    nk_moments_blocks (blocks merged in block order).
 *  - dgamma / dbeta are column sums across rows: rows are split into at most RN_ROW_BLOCKS_MAX
 *    fixed row blocks; each block sums its rows in row order into its own partial vector, and
 *    the partials are then added in block order.
 *  - backward, K <= NK_BLOCK_ELEMS: a task is one row block; per row, the row sums and then,
 *    in one more pass over the row while it is in L1/L2, dx and the block's column partials
 *    (x and dy are read from memory once).
 *  - backward, K > NK_BLOCK_ELEMS: row sums from (row, block) partials added in block order;
 *    then a task is one (row block, block) pair writing dx and that block's column partials.
 * Each sum is therefore formed in the same order whatever the thread count.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/row_kernels.h"
#include "ops/rownorm.h"
#include "stats/moments_internal.h"

/* Column sums: at most this many row blocks (bounds the partials to 64 * K * 2 doubles)... */
#define RN_ROW_BLOCKS_MAX 64
/* ...of at least this many rows (partials stay below 1/8 of a float32 input). */
#define RN_ROW_BLOCK_MIN 32
/* Forward, whole rows: statistics for this many rows at a time, then their normalization
 * (the optimized moments kernel interleaves pairs of rows; the rows are still in L1). */
#define RN_FWD_GROUP 2
/* Backward, whole rows: rows per kernel call (the optimized kernels take pairs of rows at
 * once: overlapping dependency chains, one load and store of the column partials per pair). */
#define RN_BWD_GROUP 2
/* Per-row backward coefficients when rows span several blocks: c, a, ka, kx, k0. */
#define RN_COEFS 5

/* ---- validation ------------------------------------------------------------------------- */

nk_status nk_rn_check_data(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                           int min_rank) {
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL", op, name);
    if (t->ndim < min_rank || t->ndim > NK_MAX_DIMS)
        return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s must have rank %d to %d, got rank %d", op, name,
                       min_rank, NK_MAX_DIMS, t->ndim);
    return nk_check_layout(ctx, op, name, t, NULL);
}

nk_status nk_rn_leading_mask(nk_ctx *ctx, const char *op, int axis, int ndim,
                             unsigned *kept_mask) {
    if (axis < -ndim || axis >= ndim)
        return nk_fail(ctx, NK_ERR_VALUE, "%s: axis %d is out of range for rank %d (expected %d to %d)",
                       op, axis, ndim, -ndim, ndim - 1);
    const int a = axis < 0 ? axis + ndim : axis;
    *kept_mask = (1u << a) - 1u;
    return NK_OK;
}

/* Rows R and row length K of x under the kept mask (x validated: no overflow). */
static void rows_of(const nk_tensor *x, unsigned kept_mask, int64_t *R, int64_t *K) {
    int64_t r = 1, k = 1;
    for (int i = 0; i < x->ndim; i++) {
        if ((kept_mask >> i) & 1u)
            r *= x->dims[i];
        else
            k *= x->dims[i];
    }
    *R = r;
    *K = k;
}

/* "[3, 5]": the dims of x's normalized axes. */
static const char *normalized_shape_str(const nk_tensor *x, unsigned kept_mask, char *buf,
                                        size_t n) {
    nk_tensor t;
    memset(&t, 0, sizeof t);
    for (int i = 0; i < x->ndim; i++)
        if (!((kept_mask >> i) & 1u)) t.dims[t.ndim++] = x->dims[i];
    return nk_shape_str(&t, buf, n);
}

/* A per-position parameter (gamma, beta, dgamma, dbeta): dims equal to the normalized dims of x
 * (any strides), or 1-D of K elements. */
static nk_status check_param(nk_ctx *ctx, const nk_rn_spec *s, const char *name,
                             const nk_tensor *t, const nk_tensor *x, int64_t K) {
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL", s->op, name);
    int ok = t->ndim >= 1 && t->ndim <= NK_MAX_DIMS;
    if (ok && !(t->ndim == 1 && t->dims[0] == K)) {
        int k = 0;
        for (int i = 0; i < x->ndim && ok; i++) {
            if ((s->kept_mask >> i) & 1u) continue;
            ok = k < t->ndim && t->dims[k] == x->dims[i];
            k++;
        }
        ok = ok && k == t->ndim;
    }
    if (!ok) {
        char a[160] = "(bad rank)", b[160];
        if (t->ndim >= 0 && t->ndim <= NK_MAX_DIMS) nk_shape_str(t, a, sizeof a);
        return nk_fail(ctx, NK_ERR_SHAPE,
                       "%s: %s has shape %s but must have the normalized shape %s or [%lld]",
                       s->op, name, a, normalized_shape_str(x, s->kept_mask, b, sizeof b),
                       (long long)K);
    }
    return nk_check_layout(ctx, s->op, name, t, NULL);
}

/* Row statistics: any shape (rank 0 to NK_MAX_DIMS) with exactly R elements. */
static nk_status check_stat(nk_ctx *ctx, const nk_rn_spec *s, const char *name,
                            const nk_tensor *t, int64_t R) {
    int64_t n;
    nk_status st = nk_check_flat(ctx, s->op, name, t, &n);
    if (st) return st;
    if (n != R) {
        char a[160];
        return nk_fail(ctx, NK_ERR_SHAPE,
                       "%s: %s has shape %s (%lld elements) but x has %lld rows (one value per row)",
                       s->op, name, nk_shape_str(t, a, sizeof a), (long long)n, (long long)R);
    }
    return NK_OK;
}

static nk_status check_affine(nk_ctx *ctx, const nk_rn_spec *s, const nk_tensor *x, int64_t K,
                              const nk_tensor *gamma, const nk_tensor *beta, int want_beta) {
    nk_status st;
    if (s->flags & NK_NORM_USE_SCALE) {
        if (!gamma)
            return nk_fail(ctx, NK_ERR_NULL, "%s: gamma is NULL but NK_NORM_USE_SCALE is set", s->op);
        if ((st = check_param(ctx, s, "gamma", gamma, x, K))) return st;
    }
    if (want_beta && (s->flags & NK_NORM_USE_SHIFT)) {
        if (!beta)
            return nk_fail(ctx, NK_ERR_NULL, "%s: beta is NULL but NK_NORM_USE_SHIFT is set", s->op);
        if ((st = check_param(ctx, s, "beta", beta, x, K))) return st;
    }
    return NK_OK;
}

/* ---- decomposition and workspace -------------------------------------------------------- */

typedef struct rn_plan {
    int64_t R, K;
    int64_t nb;          /* blocks per row (1: whole rows per task) */
    int64_t row_tasks;   /* nb > 1: forward (row, block) tasks */
    int64_t rb_rows;     /* rows per row block (column sums) */
    int64_t RB;          /* row blocks */
} rn_plan;

static rn_plan make_plan(int64_t R, int64_t K) {
    rn_plan p;
    p.R = R;
    p.K = K;
    p.nb = nk_num_blocks(K);
    if (p.nb <= 1) {
        p.nb = 1;
        p.row_tasks = 0; /* whole rows: shares per thread (nk_rn_forward) */
    } else {
        p.row_tasks = R * p.nb; /* (row, block) tasks; validated sizes: R * nb <= numel */
    }
    p.rb_rows = (R + RN_ROW_BLOCKS_MAX - 1) / RN_ROW_BLOCKS_MAX;
    if (p.rb_rows < RN_ROW_BLOCK_MIN) p.rb_rows = RN_ROW_BLOCK_MIN;
    p.RB = R == 0 ? 0 : (R + p.rb_rows - 1) / p.rb_rows;
    return p;
}

/* Workspace regions, in doubles from the aligned base (nk_moments is three 8-byte fields).
 * The forward-only and backward-only regions overlap: the backward's recentering uses the
 * moment regions before the column and row partials are written. */
typedef struct rn_layout {
    size_t gamma, beta;   /* K each: staged parameters */
    size_t centers;       /* R: row means recomputed by the backward (float32 save_mean) */
    size_t mom_part, mom; /* nb > 1: block partials and merged moments (R) */
    size_t colp;          /* backward: RB * 2K column partials */
    size_t colsum;        /* backward: 2K column sums */
    size_t rowp, rowk;    /* backward, nb > 1: R * nb * 2 partials, R * RN_COEFS coefficients */
    size_t total;         /* doubles */
} rn_layout;

static rn_layout make_layout(const rn_plan *p) {
    rn_layout l;
    const size_t K = (size_t)p->K, R = (size_t)p->R, nb = (size_t)p->nb;
    l.gamma = 0;
    l.beta = K;
    l.centers = 2 * K;
    size_t base = 2 * K + R, fwd = base, bwd = base;
    l.mom_part = l.mom = fwd;
    if (nb > 1) {
        l.mom = fwd + nk_moments_ws_bytes(p->R, p->K) / sizeof(double);
        fwd = l.mom + R * sizeof(nk_moments) / sizeof(double);
    }
    l.colp = bwd;
    l.colsum = l.colp + (size_t)p->RB * 2 * K;
    bwd = l.colsum + 2 * K;
    l.rowp = l.rowk = bwd;
    if (nb > 1) {
        l.rowk = l.rowp + R * nb * 2;
        bwd = l.rowk + R * RN_COEFS;
    }
    l.total = fwd > bwd ? fwd : bwd;
    return l;
}

size_t nk_rn_workspace_size(const nk_rn_spec *s, const nk_tensor *x) {
    int64_t R, K;
    rows_of(x, s->kept_mask, &R, &K);
    const rn_plan p = make_plan(R, K);
    return make_layout(&p).total * sizeof(double) + NK_WS_SLACK;
}

/* ---- per-row and per-position vectors ---------------------------------------------------- */

/* A tensor read or written as a vector of its elements in row-major order (gamma, beta, the
 * saved statistics): base + i * st when they are evenly spaced in memory (every common shape),
 * so the per-row loops need neither nk_rows_load's odometer nor its divisions; else (NULL
 * base) through nk_rows_load / nk_rows_store. */
typedef struct rn_vec {
    const nk_tensor *t; /* NULL: no tensor (an optional output not wanted) */
    char *base;
    int64_t st;
} rn_vec;

static rn_vec vec_of(const nk_tensor *t) {
    rn_vec v = {t, NULL, 1};
    if (!t) return v;
    int64_t st = 1, next = 0;
    int have = 0;
    for (int k = t->ndim - 1; k >= 0; k--) { /* size-1 axes take no step */
        if (t->dims[k] == 1) continue;
        if (have && t->strides[k] != next) return v;
        if (!have) st = t->strides[k];
        next = (have ? next : st) * t->dims[k];
        have = 1;
    }
    v.base = t->data;
    v.st = st;
    return v;
}

static void vec_load(const rn_vec *v, int64_t i0, int64_t n, double *dst) {
    if (!v->t) return;
    if (!v->base) {
        nk_rows_load(v->t, i0, n, dst);
    } else if (v->t->dtype == NK_F32) {
        const float *p = (const float *)(const void *)v->base + i0 * v->st;
        for (int64_t i = 0; i < n; i++) dst[i] = (double)p[i * v->st];
    } else {
        const double *p = (const double *)(const void *)v->base + i0 * v->st;
        for (int64_t i = 0; i < n; i++) dst[i] = p[i * v->st];
    }
}

static void vec_store(const rn_vec *v, int64_t i0, int64_t n, const double *src) {
    if (!v->t) return;
    if (!v->base) {
        nk_rows_store((nk_tensor *)v->t, i0, n, src);
    } else if (v->t->dtype == NK_F32) {
        float *p = (float *)(void *)v->base + i0 * v->st;
        for (int64_t i = 0; i < n; i++) p[i * v->st] = (float)src[i];
    } else {
        double *p = (double *)(void *)v->base + i0 * v->st;
        for (int64_t i = 0; i < n; i++) p[i * v->st] = src[i];
    }
}

/* ---- per-row statistics and coefficients ------------------------------------------------- */

/* From the row's moments: c, a and the two saved statistics. */
static void row_stats(const nk_rn_spec *s, double mean, double m2, int64_t K, double *c,
                      double *a, double *s0, double *s1) {
    const double n = (double)K;
    if (s->kind == NK_RN_RMS) {
        const double ms = m2 / n + mean * mean; /* E[x^2] from the centred moments: no cancellation */
        *c = 0.0;
        *a = 1.0 / sqrt(ms + s->eps);
        *s0 = 0.0;
        *s1 = *a;
    } else if (s->kind == NK_RN_MVN) {
        const double sd = sqrt(m2 / n);
        *c = mean;
        *a = 1.0 / (sd + NK_MVN_STD_EPS);
        *s0 = mean;
        *s1 = sd;
    } else {
        *c = mean;
        *a = 1.0 / sqrt(m2 / n + s->eps);
        *s0 = mean;
        *s1 = *a;
    }
}

/* Forward, whole rows: c, a and the saved statistics of the group of rows from r (at most
 * RN_FWD_GROUP, ending before r1), the group's moments in one kernel call. */
static void fwd_group_stats(const nk_rn_spec *s, const nk_row_kernels *rk, const nk_cview *v,
                            const void *x, int64_t r, int64_t r1, int64_t K, double *c,
                            double *a, double *s0, double *s1) {
    const int64_t m = r + RN_FWD_GROUP < r1 ? RN_FWD_GROUP : r1 - r;
    double mean[RN_FWD_GROUP], m2[RN_FWD_GROUP];
    rk->moments(v, x, r, r + m, 0, K, mean, m2);
    /* all the group's divisions and square roots together: their latencies overlap */
    for (int64_t i = 0; i < m; i++) row_stats(s, mean[i], m2[i], K, &c[i], &a[i], &s0[i], &s1[i]);
}

/* c, a and (MVN) the std of row r from the saved statistics; centers (when not NULL) replaces
 * stat0 by the row means recomputed from x. */
static void row_saved(const nk_rn_spec *s, const rn_vec *stat0, const rn_vec *stat1,
                      const double *centers, int64_t r, double *c, double *a, double *sd) {
    double v1, v0 = 0.0;
    vec_load(stat1, r, 1, &v1);
    if (s->kind != NK_RN_RMS && !centers) vec_load(stat0, r, 1, &v0);
    *c = s->kind == NK_RN_RMS ? 0.0 : centers ? centers[r] : v0;
    *sd = 0.0;
    if (s->kind == NK_RN_MVN) {
        *sd = v1;
        *a = 1.0 / (v1 + NK_MVN_STD_EPS);
    } else {
        *a = v1;
    }
}

/* dx = ka h + kx (x - c) + k0 from the row sums sum_h, sum_hd. */
static void row_coeffs(const nk_rn_spec *s, int64_t K, double a, double sd, double sum_h,
                       double sum_hd, double *ka, double *kx, double *k0) {
    const double n = (double)K;
    if (s->kind == NK_RN_MVN) {
        *ka = a;
        *k0 = -a * sum_h / n;
        *kx = sd > 0.0 ? -sum_hd * a * a / (n * sd) : 0.0;
    } else {
        *ka = a;
        *k0 = s->kind == NK_RN_RMS ? 0.0 : -a * sum_h / n;
        *kx = -a * a * a * sum_hd / n;
    }
}

/* ---- forward ----------------------------------------------------------------------------- */

nk_status nk_rn_forward(nk_ctx *ctx, const nk_rn_spec *s, const nk_tensor *x,
                        const nk_tensor *gamma, const nk_tensor *beta, nk_tensor *y,
                        nk_tensor *stat0, nk_tensor *stat1, void *workspace,
                        size_t workspace_size) {
    const char *op = s->op;
    nk_status st;
    if ((st = nk_check_like(ctx, op, "y", y, "x", x))) return st;
    if ((st = nk_check_alias(ctx, op, "y", y, "x", x))) return st;
    int64_t R, K;
    rows_of(x, s->kept_mask, &R, &K);
    if ((st = check_affine(ctx, s, x, K, gamma, beta, 1))) return st;
    if (stat0 && s->stat0 && (st = check_stat(ctx, s, s->stat0, stat0, R))) return st;
    if (stat1 && (st = check_stat(ctx, s, s->stat1, stat1, R))) return st;
    if (!s->stat0) stat0 = NULL;
    if (R == 0) return NK_OK; /* no rows: nothing to do, nothing touched */
    if (K == 0) {
        char shp[160];
        return nk_fail(ctx, NK_ERR_DEGENERATE,
                       "%s: zero-size rows: input of shape %s has no values to normalize per row",
                       op, nk_shape_str(x, shp, sizeof shp));
    }

    const rn_plan p = make_plan(R, K);
    const rn_layout l = make_layout(&p);
    void *wsv;
    if ((st = nk_workspace_get(ctx, op, workspace, workspace_size, l.total * sizeof(double), &wsv)))
        return st;
    double *ws = wsv;
    const double *g = NULL, *b = NULL;
    if (s->flags & NK_NORM_USE_SCALE) {
        const rn_vec vg = vec_of(gamma);
        vec_load(&vg, 0, K, ws + l.gamma);
        g = ws + l.gamma;
    }
    if (s->flags & NK_NORM_USE_SHIFT) {
        const rn_vec vb = vec_of(beta);
        vec_load(&vb, 0, K, ws + l.beta);
        b = ws + l.beta;
    }

    const nk_tensor *ts[2] = {x, y};
    nk_cview v;
    nk_view_init_mask(&v, 2, ts, s->kept_mask);
    const nk_bn_kernels *mk = nk_bn_kernels_for(ctx, x->dtype);
    const nk_row_kernels *rk = nk_row_kernels_for(ctx, x->dtype);
    const int nt = nk_threads_for(ctx, R * K);
    const void *xd = x->data;
    void *yd = y->data;

    const rn_vec v0 = vec_of(stat0), v1 = vec_of(stat1);
    if (p.nb == 1) {
        const int64_t per = ((R + nt - 1) / nt + 1) / 2 * 2; /* rows per thread, even */
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t t = 0; t < nt; t++) {
            const int64_t r0 = t * per;
            const int64_t r1 = r0 + per < R ? r0 + per : R;
            for (int64_t rg = r0; rg < r1; rg += RN_FWD_GROUP) {
                const int64_t re = rg + RN_FWD_GROUP < r1 ? rg + RN_FWD_GROUP : r1;
                double c[RN_FWD_GROUP], a[RN_FWD_GROUP], s0[RN_FWD_GROUP], s1[RN_FWD_GROUP];
                fwd_group_stats(s, rk, &v, xd, rg, r1, K, c, a, s0, s1);
                for (int64_t r = rg; r < re; r++)
                    rk->normalize(&v, xd, yd, r, 0, K, c[r - rg], a[r - rg], g, b);
                vec_store(&v0, rg, re - rg, s0);
                vec_store(&v1, rg, re - rg, s1);
            }
            rk->flush();
        }
        return NK_OK;
    }

    nk_moments *mom = (nk_moments *)(ws + l.mom);
    nk_moments_blocks(ctx, mk, &v, xd, ws + l.mom_part, mom);
    const int64_t nb = p.nb;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t t = 0; t < p.row_tasks; t++) {
        const int64_t r = t / nb, j0 = (t % nb) * NK_BLOCK_ELEMS;
        const int64_t j1 = j0 + NK_BLOCK_ELEMS < K ? j0 + NK_BLOCK_ELEMS : K;
        double c, a, s0, s1;
        row_stats(s, mom[r].mean, mom[r].m2, K, &c, &a, &s0, &s1);
        rk->normalize(&v, xd, yd, r, j0, j1, c, a, g, b);
        if (j0 == 0) {
            vec_store(&v0, r, 1, &s0);
            vec_store(&v1, r, 1, &s1);
        }
        rk->flush();
    }
    return NK_OK;
}

/* ---- backward ---------------------------------------------------------------------------- */

/* A float32 save_mean is the double row mean rounded: for rows with a large mean and a small
 * spread (mean 1e4, std 1e-2) its error, ulp(1e4) / 2 = 5e-4, is 5 % of the std and would
 * shift every x - mean. The backward therefore re-centers such rows on their exact mean:
 *  - whole rows: from the saved c0, the row sums pass also forms S = sum (x - c0) (each term
 *    exact in double: two floats within 2^29 of each other), so c = c0 + S / K is the row mean
 *    to a few ulp of double and sum h (x - c) = sum h (x - c0) - (c - c0) sum h (the
 *    correction is ~1e-3 of the sum at most: no cancellation). No extra pass over x.
 *  - rows of several blocks: the means are recomputed by nk_moments_blocks, as the forward. */

/* Adds the row blocks' column partials in block order into ws[colsum] (dgamma, dbeta):
 *     sum[j] = ((0 + part_0[j]) + part_1[j]) + ... + part_{RB-1}[j]
 * Columns are taken RN_MERGE_COLS at a time with their running sums in registers (one read
 * of each partial, one store per sum, instead of a load and a store of the sum per block),
 * and the column chunks are split over the threads: each sum keeps its order. */
#define RN_MERGE_COLS 8
static void merge_columns(const nk_ctx *ctx, const rn_plan *p, const rn_layout *l, double *ws) {
    const int64_t K = p->K, RB = p->RB, n2 = 2 * K; /* dgamma's K sums then dbeta's */
    const double *colp = ws + l->colp;
    double *sum = ws + l->colsum;
    const int64_t chunks = (n2 + RN_MERGE_COLS - 1) / RN_MERGE_COLS;
    const int nt = nk_threads_for(ctx, RB * n2);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t q = 0; q < chunks; q++) {
        const int64_t j0 = q * RN_MERGE_COLS;
        const int64_t m = n2 - j0 < RN_MERGE_COLS ? n2 - j0 : RN_MERGE_COLS;
        double acc[RN_MERGE_COLS] = {0};
        for (int64_t rb = 0; rb < RB; rb++) { /* fixed order: block 0, 1, ... */
            const double *pp = colp + rb * n2 + j0;
            if (m == RN_MERGE_COLS)
                for (int i = 0; i < RN_MERGE_COLS; i++) acc[i] += pp[i];
            else
                for (int64_t i = 0; i < m; i++) acc[i] += pp[i];
        }
        for (int64_t i = 0; i < m; i++) sum[j0 + i] = acc[i];
    }
}

/* The partials of row block rb over positions [j0, j1), zeroed (NULL when not wanted). */
static void block_partials(const rn_plan *p, const rn_layout *l, double *ws, int64_t rb,
                           int64_t j0, int64_t j1, int want_g, int want_b, double **pg,
                           double **pb) {
    double *base = ws + l->colp + rb * 2 * p->K;
    *pg = want_g ? base : NULL;
    *pb = want_b ? base + p->K : NULL;
    if (*pg) memset(*pg + j0, 0, (size_t)(j1 - j0) * sizeof(double));
    if (*pb) memset(*pb + j0, 0, (size_t)(j1 - j0) * sizeof(double));
}

typedef struct rn_bwd {
    const nk_rn_spec *s;
    const rn_plan *p;
    const rn_layout *l;
    double *ws;
    const nk_cview *v;
    const nk_row_kernels *rk;
    int recenter;            /* re-center on the row means (float32 saved means) */
    const void *x, *dy;
    void *dx;                /* NULL: no dx */
    rn_vec stat0, stat1;
    const double *g;         /* staged gamma or NULL */
    int want_g, want_b;
} rn_bwd;

/* Whole rows (K <= NK_BLOCK_ELEMS), one pass: a task is one row block of the column sums; per
 * row, the row sums (bwd_reduce) then dx and the block's column partials (bwd_apply) while
 * the row is still in L1/L2, so x and dy are read from memory once. */
static void bwd_whole_rows(const nk_ctx *ctx, const rn_bwd *b) {
    const rn_plan *p = b->p;
    const int64_t K = p->K, R = p->R;
    const int nt = nk_threads_for(ctx, R * K);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t rb = 0; rb < p->RB; rb++) {
        double *pg, *pb;
        block_partials(p, b->l, b->ws, rb, 0, K, b->want_g, b->want_b, &pg, &pb);
        const int64_t r0 = rb * p->rb_rows, r1 = r0 + p->rb_rows < R ? r0 + p->rb_rows : R;
        for (int64_t rg = r0; rg < r1; rg += RN_BWD_GROUP) {
            const int64_t m = rg + RN_BWD_GROUP < r1 ? RN_BWD_GROUP : r1 - rg;
            double c[RN_BWD_GROUP], a[RN_BWD_GROUP], sd[RN_BWD_GROUP];
            double ka[RN_BWD_GROUP] = {0}, kx[RN_BWD_GROUP] = {0}, k0[RN_BWD_GROUP] = {0};
            for (int64_t i = 0; i < m; i++)
                row_saved(b->s, &b->stat0, &b->stat1, NULL, rg + i, &c[i], &a[i], &sd[i]);
            if (b->dx || b->recenter) {
                double sh[RN_BWD_GROUP], shd[RN_BWD_GROUP], sdx[RN_BWD_GROUP];
                b->rk->bwd_reduce(b->v, b->x, b->dy, rg, rg + m, 0, K, c, b->g, sh, shd,
                                  b->recenter ? sdx : NULL);
                for (int64_t i = 0; i < m; i++) {
                    if (b->recenter) {
                        const double c1 = c[i] + sdx[i] / (double)K;
                        shd[i] -= (c1 - c[i]) * sh[i];
                        c[i] = c1;
                    }
                    if (b->dx) row_coeffs(b->s, K, a[i], sd[i], sh[i], shd[i], &ka[i], &kx[i], &k0[i]);
                }
            }
            b->rk->bwd_apply(b->v, b->x, b->dy, b->dx, rg, rg + m, 0, K, c, b->g, ka, kx, k0, a,
                             pg, pb);
        }
        b->rk->flush();
    }
}

/* Rows of several blocks (K > NK_BLOCK_ELEMS): (row, block) tasks form the block partials of
 * the row sums, added in block order per row into the row's coefficients; then a task is one
 * (row block, block) pair, writing dx and the column partials of that block's positions. */
static void bwd_blocked_rows(const nk_ctx *ctx, const rn_bwd *b, const double *centers) {
    const rn_plan *p = b->p;
    const int64_t K = p->K, R = p->R, nb = p->nb;
    const int nt = nk_threads_for(ctx, R * K);
    double *part = b->ws + b->l->rowp, *coef = b->ws + b->l->rowk;
    if (b->dx) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t t = 0; t < R * nb; t++) {
            const int64_t r = t / nb, j0 = (t % nb) * NK_BLOCK_ELEMS;
            const int64_t j1 = j0 + NK_BLOCK_ELEMS < K ? j0 + NK_BLOCK_ELEMS : K;
            double c, a, sd;
            row_saved(b->s, &b->stat0, &b->stat1, centers, r, &c, &a, &sd);
            b->rk->bwd_reduce(b->v, b->x, b->dy, r, r + 1, j0, j1, &c, b->g, &part[2 * t],
                              &part[2 * t + 1], NULL);
        }
    }
    for (int64_t r = 0; r < R; r++) { /* c, a, ka, kx, k0; block partials added in order */
        double sd, *k = coef + RN_COEFS * r;
        row_saved(b->s, &b->stat0, &b->stat1, centers, r, &k[0], &k[1], &sd);
        k[2] = k[3] = k[4] = 0.0;
        if (!b->dx) continue;
        double sh = 0.0, shd = 0.0;
        for (int64_t bb = 0; bb < nb; bb++) {
            sh += part[2 * (r * nb + bb)];
            shd += part[2 * (r * nb + bb) + 1];
        }
        row_coeffs(b->s, K, k[1], sd, sh, shd, &k[2], &k[3], &k[4]);
    }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t t = 0; t < p->RB * nb; t++) {
        const int64_t rb = t / nb, j0 = (t % nb) * NK_BLOCK_ELEMS;
        const int64_t j1 = j0 + NK_BLOCK_ELEMS < K ? j0 + NK_BLOCK_ELEMS : K;
        double *pg, *pb;
        block_partials(p, b->l, b->ws, rb, j0, j1, b->want_g, b->want_b, &pg, &pb);
        const int64_t r0 = rb * p->rb_rows, r1 = r0 + p->rb_rows < R ? r0 + p->rb_rows : R;
        for (int64_t r = r0; r < r1; r++) {
            const double *k = coef + RN_COEFS * r;
            b->rk->bwd_apply(b->v, b->x, b->dy, b->dx, r, r + 1, j0, j1, &k[0], b->g, &k[2],
                             &k[3], &k[4], &k[1], pg, pb);
        }
        b->rk->flush();
    }
}

nk_status nk_rn_backward(nk_ctx *ctx, const nk_rn_spec *s, const nk_tensor *x,
                         const nk_tensor *dy, const nk_tensor *gamma, const nk_tensor *stat0,
                         const nk_tensor *stat1, nk_tensor *dx, nk_tensor *dgamma,
                         nk_tensor *dbeta, void *workspace, size_t workspace_size) {
    const char *op = s->op;
    nk_status st;
    if ((st = nk_check_dy_dx(ctx, op, x, dy, dx))) return st;
    int64_t R, K;
    rows_of(x, s->kept_mask, &R, &K);
    if ((st = check_affine(ctx, s, x, K, gamma, NULL, 0))) return st;
    if (s->stat0 && (st = check_stat(ctx, s, s->stat0, stat0, R))) return st;
    if ((st = check_stat(ctx, s, s->stat1, stat1, R))) return st;
    if (dgamma && (st = check_param(ctx, s, "dgamma", dgamma, x, K))) return st;
    if (dbeta && (st = check_param(ctx, s, "dbeta", dbeta, x, K))) return st;
    if (R > 0 && K == 0) {
        char shp[160];
        return nk_fail(ctx, NK_ERR_DEGENERATE,
                       "%s: zero-size rows: input of shape %s has no values to normalize per row",
                       op, nk_shape_str(x, shp, sizeof shp));
    }
    if (!dx && !dgamma && !dbeta) return NK_OK;

    const rn_plan p = make_plan(R, K);
    const rn_layout l = make_layout(&p);
    void *wsv;
    if ((st = nk_workspace_get(ctx, op, workspace, workspace_size, l.total * sizeof(double), &wsv)))
        return st;
    double *ws = wsv;
    if (R == 0) { /* no rows: the parameter gradients are empty sums */
        for (int64_t j = 0; j < K; j++) ws[l.colsum + j] = 0.0;
        nk_rows_store(dgamma, 0, K, ws + l.colsum);
        nk_rows_store(dbeta, 0, K, ws + l.colsum);
        return NK_OK;
    }
    const double *g = NULL;
    if (s->flags & NK_NORM_USE_SCALE) {
        const rn_vec vg = vec_of(gamma);
        vec_load(&vg, 0, K, ws + l.gamma);
        g = ws + l.gamma;
    }
    const nk_tensor *ts[3] = {x, dy, dx ? dx : dy};
    nk_cview v;
    nk_view_init_mask(&v, 3, ts, s->kept_mask);
    const nk_row_kernels *rk = nk_row_kernels_for(ctx, x->dtype);
    const int recenter = s->kind != NK_RN_RMS && stat0->dtype == NK_F32;
    const rn_bwd b = {s, &p, &l, ws, &v, rk, recenter,
                      x->data, dy->data, dx ? dx->data : NULL, vec_of(stat0), vec_of(stat1), g,
                      dgamma != NULL, dbeta != NULL};
    if (p.nb == 1) {
        bwd_whole_rows(ctx, &b);
    } else {
        const double *centers = NULL;
        if (recenter) {
            nk_moments *mom = (nk_moments *)(ws + l.mom);
            nk_moments_blocks(ctx, nk_bn_kernels_for(ctx, x->dtype), &v, x->data, ws + l.mom_part,
                              mom);
            for (int64_t r = 0; r < R; r++) ws[l.centers + r] = mom[r].mean;
            centers = ws + l.centers;
        }
        bwd_blocked_rows(ctx, &b, centers);
    }
    if (dgamma || dbeta) {
        merge_columns(ctx, &p, &l, ws);
        const rn_vec vg = vec_of(dgamma), vb = vec_of(dbeta);
        vec_store(&vg, 0, K, ws + l.colsum);
        vec_store(&vb, 0, K, ws + l.colsum + K);
    }
    return NK_OK;
}
