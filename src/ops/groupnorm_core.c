/* The per-(n, group) normalization core of group norm and instance norm; the formulas are in
 * groupnorm_core.h, the derivation in docs/ops/groupnorm.md. */
#include <math.h>
#include <string.h>

#include "kernels/gn_kernels.h"
#include "ops/groupnorm_core.h"

nk_status nk_gn_geom_init(nk_gn_geom *g, const nk_tensor *x, int64_t G) {
    int64_t S = 1, NC;
    for (int i = 2; i < x->ndim; i++)
        if (!nk_mul_i64(S, x->dims[i], &S)) return NK_ERR_OVERFLOW;
    g->N = x->dims[0];
    g->C = x->dims[1];
    g->G = G;
    g->CG = g->C / G;
    g->S = S;
    if (!nk_mul_i64(g->CG, S, &g->K) || !nk_mul_i64(g->N, G, &g->R) ||
        !nk_mul_i64(g->N, g->C, &NC))
        return NK_ERR_OVERFLOW;
    return NK_OK;
}

/* ---- row statistics tensors ------------------------------------------------------------ */

nk_status nk_gn_check_rows(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                           int64_t R) {
    int64_t n;
    nk_status s = nk_check_flat(ctx, op, name, t, &n);
    if (s) return s;
    if (n != R) {
        char shp[160];
        return nk_fail(ctx, NK_ERR_SHAPE,
                       "%s: %s must hold %lld values (one per normalized row), got shape %s (%lld values)",
                       op, name, (long long)R, nk_shape_str(t, shp, sizeof shp), (long long)n);
    }
    return NK_OK;
}

/* ---- the two decompositions ------------------------------------------------------------ *
 * Every reduction is split into the same fixed pieces: block b of instance i = n * C + c
 * (values [b*B, min((b+1)*B, S)) of x[n, c], B = NK_BLOCK_ELEMS), whose partials sit at
 * part[P * (i * nb + b)]. Two ways to produce them:
 *  - per channel (NCHW and every layout that is not channels-innermost): the view kept
 *    (N, C), reduced (S...), one kernel call per (instance, block);
 *  - rows (channels innermost: NHWC and its strided relatives, nk_view_rows): batch norm's
 *    view, kept C, reduced (N, S...), so that row n * S + s holds x[n, :, s]; block b of
 *    sample n is rows [n*S + b*B, n*S + min((b+1)*B, S)) of every channel, reduced by the
 *    rows kernels for a chunk of NK_ROWS_CHUNK channels at a time.
 * The kernels give the same partials both ways (kernels.h), and they are merged in the same
 * fixed order, so the results do not depend on the layout or on the thread count. */

typedef struct gn_run {
    const nk_gn_geom *g;
    const nk_bn_kernels *k;
    nk_cview v;
    int rows;   /* the rows decomposition applies */
    int nt;     /* threads */
    int64_t nb; /* blocks per instance */
    /* span kernels (kernels/gn_kernels.h), or NULL: instance (n, c) of tensor t is the S
     * contiguous values at sbase[t] + n * sn[t] + c * S (elements of es bytes) */
    const nk_gn_kernels *sk;
    char *sbase[4];
    int64_t sn[4];
    size_t es;
    /* the rows reductions of the span kernels (channels innermost), or NULL: element
     * (n, c, s) of tensor t at sbase[t] + n * sn[t] + c + s * sld[t] */
    const nk_gn_kernels *rk;
    int64_t sld[4];
    int stream; /* the element-wise outputs are written with streaming stores */
    /* bytes of one tensor: the fused units stream their output when the op's tensors (x, y;
     * x, dy, dx) together pass NK_STREAM_MIN_BYTES (fused_stream) */
    int64_t bytes;
} gn_run;

/* 1 if every instance (n, c) of t is one run of S values at n * strides[0] + c * S: the
 * spatial axes packed row-major and the channels S apart (NCHW and a batch slice of it). */
static int span_layout(const nk_tensor *t, int64_t S) {
    int64_t want = 1;
    for (int d = t->ndim - 1; d >= 2; d--) {
        if (t->dims[d] != 1 && t->strides[d] != want) return 0;
        want *= t->dims[d];
    }
    return t->dims[1] == 1 || t->strides[1] == S;
}

/* 1 if the channels of t are contiguous and its spatial positions s (row-major over the
 * spatial axes) are *ld apart: element (n, c, s) at n * strides[0] + c + s * ld (NHWC). */
static int rows_layout(const nk_tensor *t, int64_t *ld) {
    if (t->strides[1] != 1) return 0;
    int64_t want = -1;
    *ld = 0;
    for (int d = t->ndim - 1; d >= 2; d--) {
        if (t->dims[d] == 1) continue;
        if (want < 0) {
            *ld = t->strides[d];
        } else if (t->strides[d] != want) {
            return 0;
        }
        want = t->strides[d] * t->dims[d];
    }
    return 1;
}

static void run_init(gn_run *u, const nk_ctx *ctx, const nk_gn_geom *g, int nts,
                     const nk_tensor *const *ts) {
    u->g = g;
    u->k = nk_bn_kernels_for(ctx, ts[0]->dtype);
    u->nb = nk_num_blocks(g->S);
    u->nt = nk_threads_for(ctx, g->N * g->C * g->S);
    nk_cview_init(&u->v, nts, ts);
    u->rows = nk_view_rows(&u->v);
    if (!u->rows) nk_view_init_mask(&u->v, nts, ts, 0x3u);
    u->sk = g->S > 1 && !u->rows ? nk_gn_kernels_for(ctx, ts[0]->dtype) : NULL;
    u->es = nk_dtype_size(ts[0]->dtype);
    u->stream = (int64_t)u->es * g->N * g->C * g->S >= NK_STREAM_MIN_BYTES;
    u->bytes = (int64_t)u->es * g->N * g->C * g->S;
    u->rk = g->S > 1 && u->rows ? nk_gn_kernels_for(ctx, ts[0]->dtype) : NULL;
    for (int t = 0; t < nts; t++) {
        if (u->sk && !span_layout(ts[t], g->S)) u->sk = NULL;
        if (u->rk && !rows_layout(ts[t], &u->sld[t])) u->rk = NULL;
        u->sbase[t] = ts[t]->data;
        u->sn[t] = ts[t]->strides[0];
    }
}

/* The fused units' element-wise pass (span or rows kernels) of an op of `tensors` tensors
 * streams its output when they together exceed NK_STREAM_MIN_BYTES (the output cannot stay
 * in cache until it is read): measured at 32x64x56x56 float32 (x 25.7 MB, below the
 * threshold alone) on 1 thread, regular stores read every output line for ownership from
 * memory; streamed, forward NHWC 1.75 -> 1.29 ms, NCHW 1.65 -> 1.43 ms, backward NHWC
 * 3.85 -> 3.43 ms, NCHW 2.6 -> 2.0 ms. Tried and dropped: prefetching sample n + 1 into L2
 * (one prefetch per line, 16 rows at a time) during sample n's rows_normalize, so that its
 * moments pass would not wait on memory: no gain with regular stores, and with streaming
 * stores 1.5 -> 2.4 ms (the chunked calls fence every 16 rows). Taking the span kernels'
 * rows passes (streaming) instead of the rows kernels of kernels.h for tensors over the
 * threshold alone: forward no better, backward at 16x256x56x56 NHWC 7.4 -> 8.2 ms. */
static inline int fused_stream(const gn_run *u, int64_t tensors) {
    return u->bytes * tensors >= NK_STREAM_MIN_BYTES;
}

/* Element (n, 0, 0) of tensor t in the rows layout. */
static inline void *rows_at(const gn_run *u, int t, int64_t n) {
    return u->sbase[t] + n * u->sn[t] * (int64_t)u->es;
}

/* Element (n, c, 0) of tensor t in the span layout. */
static inline void *span_at(const gn_run *u, int t, int64_t n, int64_t c) {
    return u->sbase[t] + (n * u->sn[t] + c * u->g->S) * (int64_t)u->es;
}

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* Channel chunk ch of the rows decomposition: [c0, c1). */
static inline void chunk_of(int64_t C, int64_t ch, int64_t *c0, int64_t *c1) {
    *c0 = ch * NK_ROWS_CHUNK;
    *c1 = imin(*c0 + NK_ROWS_CHUNK, C);
}

/* Element-wise rows passes take tasks of whole rows of one sample (the coefficients change
 * with the sample): about one block of values per task; any split gives the same bits. */
static int64_t rows_per_task(int64_t C) {
    const int64_t r = NK_BLOCK_ELEMS / C;
    return r > 0 ? r : 1;
}

/* A unit of work that runs start to end in one task: consecutive rows (n, g) in the
 * per-channel decomposition (unit_rows), a sample in the rows one. The reduction reads the unit's x (and dy), and the
 * element-wise pass reads them again while they are still in cache, instead of from memory
 * after the whole tensor has been reduced. The kernels, blocks and merge order are those of
 * the separate passes, so the bits are the same; the choice (which may use the thread count)
 * only moves work between caches. The units of all threads must fit together in a share of
 * the last-level cache (GN_FUSE_LLC_BYTES: half of the 32 MiB that kernels.h assumes for
 * NK_STREAM_MIN_BYTES); when they do not, the second read comes from memory, as it would in
 * separate passes. Two units per thread at least keep the threads balanced. */
#define GN_FUSE_LLC_BYTES ((int64_t)16 << 20)

/* Rows per per-channel unit: short rows are grouped up to about one block of values (two with
 * the span kernels), so that the latency of a row's statistics (a division and a square root
 * between the kernel calls) overlaps with the other rows' and the task overhead is amortized.
 * Span units of 16384 values: measured at 64x512x7x7, 8x64x28x28 and 32x64x56x56 on 1 thread,
 * 1024 and 2048 (in L1) were 5-20% slower than 8192, 16384 3-10% faster, 32768 no better; a
 * unit's x and dy stay in L2. */
#define GN_SPAN_UNIT_ELEMS 16384
static int64_t unit_rows(const gn_run *u) {
    const int64_t target = u->sk ? GN_SPAN_UNIT_ELEMS : NK_BLOCK_ELEMS, K = u->g->K;
    return K < target ? target / K : 1;
}

static int64_t unit_count(const gn_run *u) {
    return u->rows ? u->g->N : (u->g->R + unit_rows(u) - 1) / unit_rows(u);
}

/* Rows [r0, r1) of per-channel unit w. */
static inline void unit_span(const gn_run *u, const nk_gn_geom *g, int64_t w, int64_t *r0,
                             int64_t *r1) {
    const int64_t ru = unit_rows(u);
    *r0 = w * ru;
    *r1 = imin(*r0 + ru, g->R);
}

/* reread: the tensors the element-wise pass reads again (x; x and dy in the backward) */
static int fuse_units(const gn_run *u, nk_dtype dt, int reread) {
    const int64_t vals = u->rows ? u->g->C * u->g->S : u->g->K * unit_rows(u);
    const int64_t per = (int64_t)nk_dtype_size(dt) * reread * u->nt;
    return vals <= GN_FUSE_LLC_BYTES / per && (u->nt == 1 || unit_count(u) >= 2 * (int64_t)u->nt);
}

/* The rows r0, r1 of block b of sample n in the rows decomposition. */
static inline void rows_block(const nk_gn_geom *g, int64_t n, int64_t b, int64_t *r0, int64_t *r1) {
    *r0 = n * g->S + b * NK_BLOCK_ELEMS;
    *r1 = n * g->S + imin((b + 1) * NK_BLOCK_ELEMS, g->S);
}

/* ---- staging --------------------------------------------------------------------------- */

/* gamma/beta staged as doubles, or NULL when the flags leave them out (scale 1, shift 0) */
static const double *load_vec_if(unsigned flags, unsigned bit, const nk_tensor *t, double *dst) {
    if (!(flags & bit)) return NULL;
    nk_vec_load(t, dst);
    return dst;
}

/* ---- forward --------------------------------------------------------------------------- */

/* forward: [moments partials 2 per (n, c, block)][mean R][var R][invstd R][gamma C][beta C]
 *          [per-(n, c) coefficients: mean, a, b (NC each)] */
static size_t fwd_ws_bytes(const nk_gn_geom *g) {
    const size_t nc = (size_t)g->N * (size_t)g->C;
    return (2 * nc * (size_t)nk_num_blocks(g->S) + 3 * (size_t)g->R + 2 * (size_t)g->C +
            3 * nc) * sizeof(double);
}

/* backward: [partials 3 per (n, c, block)][s_g NC][s_gx NC]
 *           [per-(n, c) apply coefficients: mean, kg, kx, k0 (NC each)]
 *           [mean R][invstd R][gamma C][dgamma C][dbeta C] */
#define BWD_PARTS 3 /* sum g, sum g (x - mean), sum (x - mean) */
static size_t bwd_core_bytes(const nk_gn_geom *g) {
    const size_t nc = (size_t)g->N * (size_t)g->C;
    return (BWD_PARTS * nc * (size_t)nk_num_blocks(g->S) + 6 * nc) * sizeof(double);
}

static size_t bwd_ws_bytes(const nk_gn_geom *g) {
    return bwd_core_bytes(g) + (2 * (size_t)g->R + 3 * (size_t)g->C) * sizeof(double);
}

size_t nk_gn_workspace_bytes(const nk_gn_geom *g) {
    const size_t f = fwd_ws_bytes(g), b = bwd_ws_bytes(g);
    return f > b ? f : b;
}

/* Moments partials of the blocks of sample n, channels [c0, c1) (rows decomposition). */
static void mom_rows(const gn_run *u, const void *x, int64_t n, int64_t b, int64_t ch,
                     double *part) {
    const nk_gn_geom *g = u->g;
    int64_t c0, c1, r0, r1;
    chunk_of(g->C, ch, &c0, &c1);
    rows_block(g, n, b, &r0, &r1);
    double mean[NK_ROWS_CHUNK], m2[NK_ROWS_CHUNK];
    u->k->rows_moments(&u->v, x, c0, c1, r0, r1, mean, m2);
    for (int64_t c = c0; c < c1; c++) {
        double *p = &part[2 * ((n * g->C + c) * u->nb + b)];
        p[0] = mean[c - c0];
        p[1] = m2[c - c0];
    }
}

/* Moments partials of every block of instance i (per-channel decomposition). */
static void mom_inst(const gn_run *u, const void *x, int64_t i, double *part) {
    for (int64_t b = 0; b < u->nb; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS;
        double *p = &part[2 * (i * u->nb + b)];
        u->k->moments(&u->v, x, i, r0, imin(r0 + NK_BLOCK_ELEMS, u->g->S), &p[0], &p[1]);
    }
}

/* Row r's statistics from the partials (count n_j, mean m_j, M2_j) of its pieces j, taken in
 * order: the exact two-pass combination
 *   mean = sum n_j m_j / K,   M2 = sum M2_j + sum n_j (m_j - mean)^2
 * which, unlike a chain of Chan updates, needs no division per piece (a row of small channels
 * has as many pieces as channels) and measures every deviation from the final mean. The
 * pieces at p are nrun runs of nb blocks; a run's blocks hold NK_BLOCK_ELEMS values but the
 * last, which holds `last`. */
static void combine_row(const double *p, int64_t nrun, int64_t nb, int64_t last, int64_t K,
                        double eps, double *mean, double *var, double *invstd) {
    if (nrun * nb == 1) { /* one piece (instance norm, S <= B): its moments are the row's */
        *mean = p[0];
        *var = p[1] / (double)K;
        *invstd = 1.0 / sqrt(*var + eps);
        return;
    }
    const double *end = p + 2 * nrun * nb;
    const double full = (double)NK_BLOCK_ELEMS, nl = (double)last;
    double sum = 0.0, m2 = 0.0;
    for (const double *q = p; q < end; q += 2 * nb) { /* one run's blocks */
        for (int64_t b = 0; b < nb - 1; b++) sum += full * q[2 * b];
        sum += nl * q[2 * (nb - 1)];
    }
    const double mu = sum / (double)K;
    for (const double *q = p; q < end; q += 2 * nb) {
        for (int64_t b = 0; b < nb - 1; b++) {
            const double d = q[2 * b] - mu;
            m2 += q[2 * b + 1] + full * d * d;
        }
        const double d = q[2 * (nb - 1)] - mu;
        m2 += q[2 * (nb - 1) + 1] + nl * d * d;
    }
    *mean = mu;
    *var = m2 / (double)K;
    *invstd = 1.0 / sqrt(*var + eps);
}

/* Row r from the per-(n, c, block) pieces of its CG channels (C = G * CG: they start at
 * instance r * CG). */
static void stats_row(const gn_run *u, const double *part, int64_t r, double eps, double *mean,
                      double *var, double *invstd) {
    const nk_gn_geom *g = u->g;
    combine_row(&part[2 * r * g->CG * u->nb], g->CG, u->nb, g->S - (u->nb - 1) * NK_BLOCK_ELEMS,
                g->K, eps, &mean[r], &var[r], &invstd[r]);
}

/* One value per (n, c) (S = 1: rank 2, or unit spatial axes). Pieces per (n, c) would cost a
 * kernel call, or a rows kernel's 16-lane tree, per value (~100x a copy); a row's CG values
 * are reduced instead by the per-channel kernel on the view kept (N, G), reduced (CG): one
 * call per block of K values of a row, the same pieces in every layout. */
static void stats_s1(const gn_run *u, const nk_tensor *x, double *part, double eps,
                     nk_gn_fwd *o) {
    const nk_gn_geom *g = u->g;
    nk_vaxis ax[NK_CV_MAXAX];
    int na = 0;
    memset(ax, 0, sizeof ax);
    ax[na].dim = g->N, ax[na].st[0] = x->strides[0], ax[na].kept = 1, na++;
    /* a size-1 axis is dropped by the view; stride 0 keeps G * CG * sC from overflowing */
    ax[na].dim = g->G, ax[na].st[0] = g->G > 1 ? g->CG * x->strides[1] : 0, ax[na].kept = 1, na++;
    ax[na].dim = g->CG, ax[na].st[0] = x->strides[1], ax[na].kept = 0, na++;
    nk_cview v; /* the spatial axes all have size 1: left out */
    nk_view_from_axes(&v, 1, na, ax);
    const int64_t nb = nk_num_blocks(g->K); /* part holds 2 NC >= 2 R nb doubles */
#pragma omp parallel for num_threads(u->nt) schedule(static) if (u->nt > 1)
    for (int64_t t = 0; t < g->R * nb; t++) {
        const int64_t r = t / nb, b0 = (t % nb) * NK_BLOCK_ELEMS;
        u->k->moments(&v, x->data, r, b0, imin(b0 + NK_BLOCK_ELEMS, g->K), &part[2 * t],
                      &part[2 * t + 1]);
    }
#pragma omp parallel for num_threads(u->nt) schedule(static) if (u->nt > 1)
    for (int64_t r = 0; r < g->R; r++)
        combine_row(&part[2 * r * nb], 1, nb, g->K - (nb - 1) * NK_BLOCK_ELEMS, g->K, eps,
                    &o->mean[r], &o->var[r], &o->invstd[r]);
}

/* Per-(n, c) coefficients of sample n from the row statistics:
 * cm = mean[r], ca = gamma[c] * invstd[r], cb = beta[c]. */
static void coeffs_fwd(const nk_gn_geom *g, int64_t n, const double *mean, const double *invstd,
                       const double *gamma, const double *beta, double *cm, double *ca,
                       double *cb) {
    const int64_t i0 = n * g->C;
    for (int64_t r = n * g->G, c = 0; r < (n + 1) * g->G; r++) /* group by group */
        for (const int64_t c1 = c + g->CG; c < c1; c++) {
            cm[i0 + c] = mean[r];
            ca[i0 + c] = gamma ? gamma[c] * invstd[r] : invstd[r];
            cb[i0 + c] = beta ? beta[c] : 0.0;
        }
}

/* y = (x - cm[j]) * ca[j] + cb[j] over rows [r0, r1) of the rows decomposition, j = the
 * coefficients' offset of the rows' sample. */
static void norm_rows(const gn_run *u, const nk_tensor *x, nk_tensor *y, int64_t r0, int64_t r1,
                      const double *cm, const double *ca, const double *cb) {
    u->k->rows_normalize(&u->v, x->data, y->data, 0, u->g->C, r0, r1, cm, ca, cb, 0);
}

static void norm_inst(const gn_run *u, const nk_tensor *x, nk_tensor *y, int64_t i, double cm,
                      double ca, double cb) {
    for (int64_t b = 0; b < u->nb; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS;
        u->k->normalize(&u->v, x->data, y->data, i, r0, imin(r0 + NK_BLOCK_ELEMS, u->g->S), cm,
                        ca, cb, 0);
    }
}

/* y = (x - cm[i]) * ca[i] + cb[i] with i = n * C + c, every (n, c), in separate tasks. */
static void normalize_pass(const gn_run *u, const nk_tensor *x, nk_tensor *y, const double *cm,
                           const double *ca, const double *cb) {
    const nk_gn_geom *g = u->g;
    if (u->rows) {
        const int64_t rt = rows_per_task(g->C), per = (g->S + rt - 1) / rt;
#pragma omp parallel for num_threads(u->nt) schedule(static) if (u->nt > 1)
        for (int64_t t = 0; t < g->N * per; t++) {
            const int64_t n = t / per, r0 = n * g->S + (t % per) * rt;
            norm_rows(u, x, y, r0, imin(r0 + rt, (n + 1) * g->S), cm + n * g->C, ca + n * g->C,
                      cb + n * g->C);
        }
        return;
    }
    const int64_t tasks = g->N * g->C * u->nb;
#pragma omp parallel for num_threads(u->nt) schedule(static) if (u->nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t i = t / u->nb, r0 = (t % u->nb) * NK_BLOCK_ELEMS;
        u->k->normalize(&u->v, x->data, y->data, i, r0, imin(r0 + NK_BLOCK_ELEMS, g->S), cm[i],
                        ca[i], cb[i], 0);
    }
}

/* Fused unit (see GN_FUSE_LLC_BYTES): statistics of unit w, then its normalize. */
static void fwd_unit(const gn_run *u, const nk_tensor *x, nk_tensor *y, int64_t w, double eps,
                     const double *gamma, const double *beta, double *part, nk_gn_fwd *o,
                     double *cm, double *ca, double *cb) {
    const nk_gn_geom *g = u->g;
    if (u->rows) { /* sample w */
        const int64_t nch = nk_rows_chunks(g->C);
        if (u->rk)
            u->rk->rows_moments(rows_at(u, 0, w), u->sld[0], g->S, g->C, &part[2 * w * g->C * u->nb]);
        else
            for (int64_t b = 0; b < u->nb; b++)
                for (int64_t ch = 0; ch < nch; ch++) mom_rows(u, x->data, w, b, ch, part);
        for (int64_t r = w * g->G; r < (w + 1) * g->G; r++)
            stats_row(u, part, r, eps, o->mean, o->var, o->invstd);
        coeffs_fwd(g, w, o->mean, o->invstd, gamma, beta, cm, ca, cb);
        const int64_t rt = rows_per_task(g->C), i = w * g->C;
        if (u->rk && !u->stream) {
            u->rk->rows_normalize(rows_at(u, 0, w), u->sld[0], rows_at(u, 1, w), u->sld[1], g->S,
                                  g->C, cm + i, ca + i, cb + i, fused_stream(u, 2));
            return;
        }
        for (int64_t r0 = w * g->S; r0 < (w + 1) * g->S; r0 += rt)
            norm_rows(u, x, y, r0, imin(r0 + rt, (w + 1) * g->S), cm + i, ca + i, cb + i);
        return;
    }
    int64_t r0, r1; /* rows [r0, r1): instances [r0 * CG, r1 * CG) */
    unit_span(u, g, w, &r0, &r1);
    if (u->sk) { /* span kernels, one call per sample's part of the unit */
        const int64_t i0 = r0 * g->CG, i1 = r1 * g->CG;
        for (int64_t a = i0, b; a < i1; a = b) {
            const int64_t n = a / g->C;
            b = imin(i1, (n + 1) * g->C);
            u->sk->moments(span_at(u, 0, n, a - n * g->C), g->S, b - a, &part[2 * a * u->nb]);
        }
        for (int64_t r = r0; r < r1; r++) {
            stats_row(u, part, r, eps, o->mean, o->var, o->invstd);
            const int64_t c0 = (r % g->G) * g->CG, ir = r * g->CG;
            for (int64_t c = c0; c < c0 + g->CG; c++) { /* as coeffs_fwd */
                cm[ir + c - c0] = o->mean[r];
                ca[ir + c - c0] = gamma ? gamma[c] * o->invstd[r] : o->invstd[r];
                cb[ir + c - c0] = beta ? beta[c] : 0.0;
            }
        }
        for (int64_t a = i0, b; a < i1; a = b) {
            const int64_t n = a / g->C, c = a - n * g->C;
            b = imin(i1, (n + 1) * g->C);
            u->sk->normalize(span_at(u, 0, n, c), span_at(u, 1, n, c), g->S, b - a, cm + a,
                             ca + a, cb + a, fused_stream(u, 2));
        }
        return;
    }
    for (int64_t i = r0 * g->CG; i < r1 * g->CG; i++) mom_inst(u, x->data, i, part);
    for (int64_t r = r0; r < r1; r++) stats_row(u, part, r, eps, o->mean, o->var, o->invstd);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t c0 = (r % g->G) * g->CG, i0 = r * g->CG;
        for (int64_t c = c0; c < c0 + g->CG; c++)
            norm_inst(u, x, y, i0 + c - c0, o->mean[r],
                      gamma ? gamma[c] * o->invstd[r] : o->invstd[r], beta ? beta[c] : 0.0);
    }
}

int64_t nk_gn_forward_train(const nk_ctx *ctx, const nk_gn_geom *g, double eps, unsigned flags,
                            const nk_tensor *x, const nk_tensor *gamma, const nk_tensor *beta,
                            nk_tensor *y, void *ws, nk_gn_fwd *o) {
    const int64_t NC = g->N * g->C;
    double *part = ws;
    o->mean = part + 2 * NC * nk_num_blocks(g->S);
    o->var = o->mean + g->R;
    o->invstd = o->var + g->R;
    o->gamma = o->invstd + g->R;
    o->beta = o->gamma + g->C;
    double *cm = o->beta + g->C, *ca = cm + NC, *cb = ca + NC;
    o->scratch = cm;
    const double *gm = load_vec_if(flags, NK_NORM_USE_SCALE, gamma, o->gamma);
    const double *bt = load_vec_if(flags, NK_NORM_USE_SHIFT, beta, o->beta);

    const nk_tensor *ts[2] = {x, y};
    gn_run u;
    run_init(&u, ctx, g, 2, ts);
    if (g->S > 1 && fuse_units(&u, x->dtype, 1)) {
        const int64_t units = unit_count(&u);
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
        for (int64_t w = 0; w < units; w++) fwd_unit(&u, x, y, w, eps, gm, bt, part, o, cm, ca, cb);
    } else {
        if (g->S == 1) {
            stats_s1(&u, x, part, eps, o);
        } else if (u.rows) { /* (sample, block, channel chunk) tasks */
            const int64_t nch = nk_rows_chunks(g->C), per = u.nb * nch;
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
            for (int64_t t = 0; t < g->N * per; t++)
                mom_rows(&u, x->data, t / per, (t % per) / nch, t % nch, part);
        } else {
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
            for (int64_t t = 0; t < NC * u.nb; t++) {
                const int64_t i = t / u.nb, r0 = (t % u.nb) * NK_BLOCK_ELEMS;
                double *p = &part[2 * t];
                u.k->moments(&u.v, x->data, i, r0, imin(r0 + NK_BLOCK_ELEMS, g->S), &p[0], &p[1]);
            }
        }
        if (g->S > 1) {
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
            for (int64_t r = 0; r < g->R; r++)
                stats_row(&u, part, r, eps, o->mean, o->var, o->invstd);
        }
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
        for (int64_t n = 0; n < g->N; n++)
            coeffs_fwd(g, n, o->mean, o->invstd, gm, bt, cm, ca, cb);
        normalize_pass(&u, x, y, cm, ca, cb);
    }
    for (int64_t r = 0; r < g->R; r++) /* a NaN/inf input, or eps = 0 with a constant row */
        if (!(isfinite(o->mean[r]) && isfinite(o->var[r]) && isfinite(o->invstd[r]))) return r;
    return -1;
}

void nk_gn_normalize_channels(const nk_ctx *ctx, const nk_gn_geom *g, const nk_tensor *x,
                              nk_tensor *y, const double *mean, const double *a,
                              const double *b) {
    /* the same coefficients in every sample: batch norm's view (kept C, reduced (N, S...)),
     * whose per-channel runs span the samples, so a call covers far more than one (n, c) */
    const nk_tensor *ts[2] = {x, y};
    nk_cview v;
    nk_cview_init(&v, 2, ts);
    const nk_bn_kernels *k = nk_bn_kernels_for(ctx, x->dtype);
    const int64_t C = g->C, M = g->N * g->S;
    const int nt = nk_threads_for(ctx, C * M);
    if (nk_view_rows(&v)) {
        const int64_t rt = rows_per_task(C), tasks = (M + rt - 1) / rt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t t = 0; t < tasks; t++)
            k->rows_normalize(&v, x->data, y->data, 0, C, t * rt, imin((t + 1) * rt, M), mean, a, b, 0);
        return;
    }
    const int64_t nb = nk_num_blocks(M);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t t = 0; t < C * nb; t++) {
        const int64_t c = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
        k->normalize(&v, x->data, y->data, c, r0, imin(r0 + NK_BLOCK_ELEMS, M), mean[c], a[c], b[c], 0);
    }
}

/* ---- backward -------------------------------------------------------------------------- */

typedef struct bwd_bufs {
    double *part, *sg, *sgx;         /* partials; per (n, c): sum g, sum g (x - mean) */
    double *cm, *kg, *kx, *k0;       /* per (n, c) apply coefficients */
    double *mean;                    /* per row: updated to the exact mean */
    const double *invstd, *gamma;
} bwd_bufs;

/* Reduction partials of the blocks of sample n, channels chunk ch (rows decomposition);
 * cm holds the per-(n, c) saved means. */
static void red_rows(const gn_run *u, const nk_tensor *x, const nk_tensor *dy, int64_t n,
                     int64_t b, int64_t ch, const bwd_bufs *w) {
    const nk_gn_geom *g = u->g;
    int64_t c0, c1, r0, r1;
    chunk_of(g->C, ch, &c0, &c1);
    rows_block(g, n, b, &r0, &r1);
    double s0[NK_ROWS_CHUNK], s1[NK_ROWS_CHUNK], s2[NK_ROWS_CHUNK];
    u->k->rows_bwd_reduce(&u->v, x->data, dy->data, NULL, c0, c1, r0, r1,
                          w->cm + n * g->C + c0, s0, s1, s2);
    for (int64_t c = c0; c < c1; c++) {
        double *p = &w->part[BWD_PARTS * ((n * g->C + c) * u->nb + b)];
        p[0] = s0[c - c0];
        p[1] = s1[c - c0];
        p[2] = s2[c - c0];
    }
}

static void red_inst(const gn_run *u, const nk_tensor *x, const nk_tensor *dy, int64_t i,
                     double mean, double *part) {
    for (int64_t b = 0; b < u->nb; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS;
        double *p = &part[BWD_PARTS * (i * u->nb + b)];
        u->k->bwd_reduce(&u->v, x->data, dy->data, NULL, i, r0, imin(r0 + NK_BLOCK_ELEMS, u->g->S),
                         mean, &p[0], &p[1], &p[2]);
    }
}

/* Row r in a fixed order (channel, then block): the sums, the exact mean, and the apply
 * coefficients of its channels. The saved mean may have been rounded to float32 (off by up
 * to ~5% of the std for badly scaled data); sum (x - mean) over the row recovers the true one:
 *   mean' = mean + shift, shift = sum (x - mean) / K,
 *   sum g (x - mean') = sum g (x - mean) - shift * sum g */
static void merge_row_bwd(const nk_gn_geom *g, int64_t nb, int64_t r, const bwd_bufs *w) {
    const int64_t CG = g->CG, i0 = r * CG; /* first (n, c) of the row: C = G * CG */
    const double *gam = w->gamma ? w->gamma + (r % g->G) * CG : NULL; /* gam[i - i0] = gamma[c] */
    double sx = 0.0;
    for (int64_t i = i0; i < i0 + CG; i++) {
        double a0 = 0.0, a1 = 0.0, a2 = 0.0;
        for (int64_t b = 0; b < nb; b++) {
            const double *pt = &w->part[BWD_PARTS * (i * nb + b)];
            a0 += pt[0];
            a1 += pt[1];
            a2 += pt[2];
        }
        w->sg[i] = a0;
        w->sgx[i] = a1;
        sx += a2;
    }
    const double shift = sx / (double)g->K;
    w->mean[r] += shift;
    double a = 0.0, b = 0.0;
    for (int64_t i = i0; i < i0 + CG; i++) {
        w->sgx[i] -= shift * w->sg[i];
        const double gm = gam ? gam[i - i0] : 1.0;
        a += gm * w->sgx[i];
        b += gm * w->sg[i];
    }
    /* dx = kg g + kx (x - mean) + k0 */
    const double K = (double)g->K, is = w->invstd[r];
    for (int64_t i = i0; i < i0 + CG; i++) {
        w->cm[i] = w->mean[r];
        w->kg[i] = (gam ? gam[i - i0] : 1.0) * is;
        w->kx[i] = -is * is * is * a / K;
        w->k0[i] = -is * b / K;
    }
}

static void apply_rows(const gn_run *u, const nk_tensor *x, const nk_tensor *dy, nk_tensor *dx,
                       int64_t r0, int64_t r1, int64_t n, const bwd_bufs *w) {
    const int64_t i = n * u->g->C;
    u->k->rows_bwd_apply(&u->v, x->data, dy->data, NULL, dx->data, 0, u->g->C, r0, r1, w->cm + i,
                         w->kg + i, w->kx + i, w->k0 + i);
}

static void apply_inst(const gn_run *u, const nk_tensor *x, const nk_tensor *dy, nk_tensor *dx,
                       int64_t i, const bwd_bufs *w) {
    for (int64_t b = 0; b < u->nb; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS;
        u->k->bwd_apply(&u->v, x->data, dy->data, NULL, dx->data, i, r0,
                        imin(r0 + NK_BLOCK_ELEMS, u->g->S), w->cm[i], w->kg[i], w->kx[i], w->k0[i]);
    }
}

/* Fused unit: reduce, merge and (if dx) apply one sample (rows) or one row (per channel). */
static void bwd_unit(const gn_run *u, const nk_tensor *x, const nk_tensor *dy, nk_tensor *dx,
                     int64_t wi, const bwd_bufs *w) {
    const nk_gn_geom *g = u->g;
    if (u->rows) { /* sample wi */
        const int64_t nch = nk_rows_chunks(g->C);
        if (u->rk)
            u->rk->rows_bwd_reduce(rows_at(u, 0, wi), u->sld[0], rows_at(u, 1, wi), u->sld[1], g->S,
                                   g->C, w->cm + wi * g->C,
                                   &w->part[BWD_PARTS * wi * g->C * u->nb]);
        else
            for (int64_t b = 0; b < u->nb; b++)
                for (int64_t ch = 0; ch < nch; ch++) red_rows(u, x, dy, wi, b, ch, w);
        for (int64_t r = wi * g->G; r < (wi + 1) * g->G; r++) merge_row_bwd(g, u->nb, r, w);
        if (!dx) return;
        if (u->rk && !u->stream) {
            const int64_t i = wi * g->C;
            u->rk->rows_bwd_apply(rows_at(u, 0, wi), u->sld[0], rows_at(u, 1, wi), u->sld[1],
                                  rows_at(u, 2, wi), u->sld[2], g->S, g->C, w->cm + i,
                                  w->kg + i, w->kx + i, w->k0 + i, fused_stream(u, 3));
            return;
        }
        const int64_t rt = rows_per_task(g->C);
        for (int64_t r0 = wi * g->S; r0 < (wi + 1) * g->S; r0 += rt)
            apply_rows(u, x, dy, dx, r0, imin(r0 + rt, (wi + 1) * g->S), wi, w);
        return;
    }
    int64_t r0, r1; /* rows [r0, r1): instances [r0 * CG, r1 * CG) */
    unit_span(u, g, wi, &r0, &r1);
    if (u->sk) { /* span kernels, one call per sample's part of the unit */
        const int64_t i0 = r0 * g->CG, i1 = r1 * g->CG;
        for (int64_t a = i0, b; a < i1; a = b) {
            const int64_t n = a / g->C, c = a - n * g->C;
            b = imin(i1, (n + 1) * g->C);
            u->sk->bwd_reduce(span_at(u, 0, n, c), span_at(u, 1, n, c), g->S, b - a, w->cm + a,
                              &w->part[BWD_PARTS * a * u->nb]);
        }
        for (int64_t r = r0; r < r1; r++) merge_row_bwd(g, u->nb, r, w);
        if (!dx) return;
        for (int64_t a = i0, b; a < i1; a = b) {
            const int64_t n = a / g->C, c = a - n * g->C;
            b = imin(i1, (n + 1) * g->C);
            u->sk->bwd_apply(span_at(u, 0, n, c), span_at(u, 1, n, c), span_at(u, 2, n, c),
                             g->S, b - a, w->cm + a, w->kg + a, w->kx + a, w->k0 + a,
                             fused_stream(u, 3));
        }
        return;
    }
    for (int64_t i = r0 * g->CG; i < r1 * g->CG; i++) red_inst(u, x, dy, i, w->cm[i], w->part);
    for (int64_t r = r0; r < r1; r++) merge_row_bwd(g, u->nb, r, w);
    if (dx)
        for (int64_t i = r0 * g->CG; i < r1 * g->CG; i++) apply_inst(u, x, dy, dx, i, w);
}

/* mean (R) is updated in place to the exact row mean recovered from x */
static void backward(const nk_ctx *ctx, const nk_gn_geom *g, const nk_tensor *x,
                     const nk_tensor *dy, nk_tensor *dx, double *mean, const double *invstd,
                     const double *gamma, double *ws, double *dgamma, double *dbeta) {
    const int64_t N = g->N, C = g->C, G = g->G, CG = g->CG, NC = N * C;
    const int64_t nb = nk_num_blocks(g->S);
    bwd_bufs w;
    w.part = ws;
    w.sg = w.part + BWD_PARTS * NC * nb;
    w.sgx = w.sg + NC;
    w.cm = w.sgx + NC;
    w.kg = w.cm + NC;
    w.kx = w.kg + NC;
    w.k0 = w.kx + NC;
    w.mean = mean;
    w.invstd = invstd;
    w.gamma = gamma;
    const nk_tensor *ts[4] = {x, dy, dx ? dx : x, x}; /* slot 3 (ReLU mask) unused */
    gn_run u;
    run_init(&u, ctx, g, 4, ts);
    /* the reductions take per-(n, c) means: the saved mean of the row of each (n, c) */
    for (int64_t r = 0; r < g->R; r++) /* row r holds instances [r * CG, (r + 1) * CG) */
        for (int64_t i = r * CG; i < (r + 1) * CG; i++) w.cm[i] = mean[r];

    /* apply reads x and dy, then writes dx at the same element: dx may alias either exactly */
    if (fuse_units(&u, x->dtype, 2)) {
        const int64_t units = unit_count(&u);
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
        for (int64_t wi = 0; wi < units; wi++) bwd_unit(&u, x, dy, dx, wi, &w);
    } else {
        if (u.rows) {
            const int64_t nch = nk_rows_chunks(C), per = nb * nch;
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
            for (int64_t t = 0; t < N * per; t++)
                red_rows(&u, x, dy, t / per, (t % per) / nch, t % nch, &w);
        } else {
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
            for (int64_t t = 0; t < NC * nb; t++) {
                const int64_t i = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
                double *pt = &w.part[BWD_PARTS * t];
                u.k->bwd_reduce(&u.v, x->data, dy->data, NULL, i, r0,
                                imin(r0 + NK_BLOCK_ELEMS, g->S), w.cm[i], &pt[0], &pt[1], &pt[2]);
            }
        }
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
        for (int64_t r = 0; r < g->R; r++) merge_row_bwd(g, nb, r, &w);
        if (dx) {
            if (u.rows) {
                const int64_t rt = rows_per_task(C), per = (g->S + rt - 1) / rt;
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
                for (int64_t t = 0; t < N * per; t++) {
                    const int64_t n = t / per, r0 = n * g->S + (t % per) * rt;
                    apply_rows(&u, x, dy, dx, r0, imin(r0 + rt, (n + 1) * g->S), n, &w);
                }
            } else {
#pragma omp parallel for num_threads(u.nt) schedule(static) if (u.nt > 1)
                for (int64_t t = 0; t < NC * nb; t++) {
                    const int64_t i = t / nb, r0 = (t % nb) * NK_BLOCK_ELEMS;
                    u.k->bwd_apply(&u.v, x->data, dy->data, NULL, dx->data, i, r0,
                                   imin(r0 + NK_BLOCK_ELEMS, g->S), w.cm[i], w.kg[i], w.kx[i],
                                   w.k0[i]);
                }
            }
        }
    }
    /* per channel, in a fixed order over n (sample-major loops: contiguous reads) */
    for (int64_t c = 0; c < C; c++) dgamma[c] = dbeta[c] = 0.0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t gr = 0, c = 0; gr < G; gr++) {
            const double is = invstd[n * G + gr];
            for (const int64_t c1 = c + CG; c < c1; c++) {
                dgamma[c] += is * w.sgx[n * C + c];
                dbeta[c] += w.sg[n * C + c];
            }
        }
}
nk_status nk_gn_backward_op(nk_ctx *ctx, const char *op, int64_t G, unsigned flags,
                            const nk_tensor *x, const nk_tensor *dy, const nk_tensor *gamma,
                            const nk_tensor *save_mean, const nk_tensor *save_invstd,
                            nk_tensor *dx, nk_tensor *dgamma, nk_tensor *dbeta,
                            void *workspace, size_t workspace_size) {
    nk_status s;
    if ((s = nk_check_data(ctx, op, "x", x))) return s;
    if ((s = nk_check_dy_dx(ctx, op, x, dy, dx))) return s;
    const int64_t N = x->dims[0], C = x->dims[1];
    if ((s = nk_check_affine(ctx, op, "NK_NORM", flags & NK_NORM_USE_SCALE, C, gamma, NULL))) return s;
    int64_t R;
    if (!nk_mul_i64(N, G, &R))
        return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: the number of rows N * groups overflows int64", op);
    if ((s = nk_gn_check_rows(ctx, op, "save_mean", save_mean, R))) return s;
    if ((s = nk_gn_check_rows(ctx, op, "save_invstd", save_invstd, R))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "dgamma", dgamma, C))) return s;
    if ((s = nk_check_opt_vec(ctx, op, "dbeta", dbeta, C))) return s;

    if (!dx && !dgamma && !dbeta) return NK_OK; /* nothing asked */
    int64_t numel;
    nk_tensor_numel(x, &numel); /* validated */
    if (numel == 0) { /* no values: dx is empty, the parameter gradients are empty sums */
        nk_vec_zero(dgamma);
        nk_vec_zero(dbeta);
        return NK_OK;
    }
    nk_gn_geom g;
    if (nk_gn_geom_init(&g, x, G))
        return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: sizes of x overflow int64", op);
    void *wsv;
    if ((s = nk_workspace_get(ctx, op, workspace, workspace_size, bwd_ws_bytes(&g), &wsv))) return s;
    double *st = (double *)((char *)wsv + bwd_core_bytes(&g));
    double *mean = st, *invstd = mean + g.R, *gm = invstd + g.R, *dg = gm + C, *db = dg + C;
    nk_rows_load(save_mean, 0, g.R, mean);
    nk_rows_load(save_invstd, 0, g.R, invstd);
    backward(ctx, &g, x, dy, dx, mean, invstd, load_vec_if(flags, NK_NORM_USE_SCALE, gamma, gm),
             wsv, dg, db);
    nk_vec_store(dgamma, dg);
    nk_vec_store(dbeta, db);
    return NK_OK;
}
