/* Group normalization: nk_groupnorm_forward / backward / workspace_size.
 * Oracles: exact results on dyadic inputs (TOL_EXACT), the naive float64 two-pass oracle of
 * support/gn_test.c (gno_*), and central finite differences in double (TOL_GRADCHECK).
 * Also: every layout and row-statistics shape, bitwise equality across 1-4 threads and across
 * layouts, in place, caller workspace, bad input (nothing written), empty batches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h" /* NK_BLOCK_ELEMS, NK_PARALLEL_MIN_ELEMS: shapes below span them */
#include "kernels/kernels.h" /* NK_STREAM_MIN_BYTES */
#include "support/gn_test.h"

typedef struct shape {
    int ndim;
    int64_t dims[5];
    int64_t G;
} shape;

/* Odd channel counts, spatial 1 / 7 / 17, rank 2 (as PyTorch allows), G = 1 (layer norm over
 * (C, S)), G = C (instance norm), K = 1 (y = beta), rows and channels longer than a block,
 * C = 23 in one group, more channels than one rows chunk (NK_ROWS_CHUNK = 64) with groups
 * that straddle the chunks (CG = 7, 10 groups), S = 1 with rows of 3 blocks. */
static const shape SHAPES[] = {
    {2, {5, 6}, 3},          {2, {4, 6}, 6},          {2, {3, 4}, 1},
    {3, {2, 6, 7}, 2},       {3, {3, 1, 17}, 1},      {3, {1, 23, 5}, 23},
    {3, {2, 4, 1}, 2},       {4, {2, 6, 3, 5}, 3},    {4, {2, 9, 7, 1}, 3},
    {4, {1, 8, 4, 4}, 1},    {5, {2, 4, 2, 3, 3}, 2}, {3, {2, 4, 4100}, 2},
    {3, {1, 2, 9000}, 1},    {3, {2, 23, 7}, 1},      {4, {2, 3, 1, 17}, 3},
    {3, {2, 70, 5}, 10},     {2, {2, 17000}, 1},
};
#define NSHAPES (sizeof SHAPES / sizeof SHAPES[0])

static nkt_tol_id tol_of(nk_dtype dt) { return nkt_tol_result(dt); }

static void params(nk_groupnorm_params *p, int64_t G, double eps, unsigned flags) {
    nk_groupnorm_params_default(p, G);
    p->eps = eps;
    p->flags = flags;
}

static void describe(const gnt_fix *f, const nk_groupnorm_params *p, const char *extra) {
    char d[320];
    nkt_case("%s eps %g flags 0x%x%s%s", gnt_desc(f, d, sizeof d), p->eps, p->flags,
             extra ? " " : "", extra ? extra : "");
}

static nk_status forward(nk_ctx *ctx, const nk_groupnorm_params *p, gnt_fix *f) {
    return nk_groupnorm_forward(ctx, p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t, &f->smean.t,
                                &f->sinv.t, NULL, 0);
}

static nk_status backward(nk_ctx *ctx, const nk_groupnorm_params *p, gnt_fix *f) {
    return nk_groupnorm_backward(ctx, p, &f->x.t, &f->dy.t, &f->gamma.t, &f->smean.t,
                                 &f->sinv.t, &f->dx.t, &f->dgamma.t, &f->dbeta.t, NULL, 0);
}

/* ---- exact values ------------------------------------------------------------------------- */

/* Each row (n, g) of x (2, 4, 2), G = 2, holds m - 2, m + 2 twice (m dyadic): mean m, var 4,
 * and with eps = 0 invstd = 0.5, xhat = +-1, y = +-gamma + beta: all exact. */
static void test_exact(void **state) {
    (void)state;
    const int64_t dims[3] = {2, 4, 2};
    const double gam[4] = {1.5, -0.5, 2.0, 0.25}, bet[4] = {0.5, -1.0, 0.125, 3.0};
    const double m[4] = {0.5, -3.25, 10.0, 0.0}; /* row means */
    const double pm[4] = {-2, 2, 2, -2};         /* deviations of the 4 values of a row */
    for (int dt = NK_F32; dt <= NK_F64; dt++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
            nkt_rng r = nkt_rng_make(1);
            gnt_fix f;
            gnt_init(&f, &r, 3, dims, 2, (nk_dtype)dt, NK_F64, (nk_dtype)dt, (nkt_layout)lay,
                     GNT_STAT_FLAT);
            double x[16], y[16], want[16];
            for (int64_t i = 0; i < 16; i++) {
                const int64_t row = gno_row(&f.g, i), c = gno_chan(&f.g, i);
                const int64_t j = (c % 2) * 2 + i % 2; /* position within the row */
                x[i] = m[row] + pm[j];
                want[i] = (pm[j] > 0 ? 1.0 : -1.0) * gam[c] + bet[c];
            }
            gnt_set_x(&f, x);
            memcpy(f.gv, gam, sizeof gam);
            memcpy(f.bv, bet, sizeof bet);
            nkt_set(&f.gamma, f.gv);
            nkt_set(&f.beta, f.bv);
            nk_groupnorm_params p;
            params(&p, 2, 0.0, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
            describe(&f, &p, "exact");
            nk_ctx *ctx = nkt_ctx(1);
            NKT_OK(ctx, forward(ctx, &p, &f));
            nkt_get(&f.y, y);
            NKT_CLOSE("y", y, want, 16, TOL_EXACT);
            double sm[4], si[4], half[4] = {0.5, 0.5, 0.5, 0.5};
            nkt_get(&f.smean, sm);
            nkt_get(&f.sinv, si);
            NKT_CLOSE("save_mean", sm, m, 4, TOL_EXACT);
            NKT_CLOSE("save_invstd", si, half, 4, TOL_EXACT);
            NKT_GAPS_UNTOUCHED(&f.y);
            NKT_GAPS_UNTOUCHED(&f.smean);
            nk_ctx_destroy(ctx);
            gnt_free(&f);
        }
}

/* ---- random values against the oracle ---------------------------------------------------- */

/* One configuration per (shape, dtype, layout): the vector dtype, statistics dtype and shape,
 * eps and flags rotate with a counter so that every combination appears somewhere. */
typedef struct config {
    nk_dtype vdt, sdt;
    gnt_stat_shape ss;
    double eps;
    unsigned flags;
} config;

static config config_of(unsigned k) {
    static const double eps[] = {1e-5, 0.1, 0.0, 1e-3};
    config c;
    c.vdt = (k & 1) ? NK_F32 : NK_F64;
    c.sdt = (k & 2) ? NK_F32 : NK_F64;
    c.ss = (gnt_stat_shape)(k % GNT_NUM_STAT_SHAPES);
    c.eps = eps[k % 4];
    c.flags = (k % 5 == 4) ? 0u : (k % 5 == 3) ? NK_NORM_USE_SCALE
                                                : (NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    return c;
}

static void check_forward(nk_ctx *ctx, gnt_fix *f, const nk_groupnorm_params *p) {
    const gno_geom *g = &f->g;
    NKT_OK(ctx, forward(ctx, p, f));
    double *want = nkt_malloc((size_t)g->numel * sizeof *want);
    double *wm = nkt_malloc((size_t)g->R * sizeof *wm), *wi = nkt_malloc((size_t)g->R * sizeof *wi);
    gno_forward(g, p->eps, f->xv, (p->flags & NK_NORM_USE_SCALE) ? f->gv : NULL,
                (p->flags & NK_NORM_USE_SHIFT) ? f->bv : NULL, want, wm, NULL, wi);
    double *y = gnt_read(&f->y), *sm = gnt_read(&f->smean), *si = gnt_read(&f->sinv);
    NKT_CLOSE("y", y, want, g->numel, tol_of(f->dt));
    NKT_CLOSE("save_mean", sm, wm, g->R, tol_of(f->sdt));
    NKT_CLOSE("save_invstd", si, wi, g->R, tol_of(f->sdt));
    NKT_GAPS_UNTOUCHED(&f->y);
    NKT_GAPS_UNTOUCHED(&f->smean);
    NKT_GAPS_UNTOUCHED(&f->sinv);
    free(want);
    free(wm);
    free(wi);
    free(y);
    free(sm);
    free(si);
}

/* Backward after the forward of f; the oracle gets the invstd the library was handed. */
static void check_backward(nk_ctx *ctx, gnt_fix *f, const nk_groupnorm_params *p) {
    const gno_geom *g = &f->g;
    NKT_OK(ctx, backward(ctx, p, f));
    double *is = gnt_read(&f->sinv);
    double *wdx = nkt_malloc((size_t)g->numel * sizeof *wdx);
    double *wdg = nkt_malloc((size_t)g->C * sizeof *wdg), *wdb = nkt_malloc((size_t)g->C * sizeof *wdb);
    double *cdg = nkt_malloc((size_t)g->C * sizeof *cdg), *cdb = nkt_malloc((size_t)g->C * sizeof *cdb);
    double *cdx = nkt_malloc((size_t)g->numel * sizeof *cdx);
    gno_backward(g, f->xv, f->dyv, (p->flags & NK_NORM_USE_SCALE) ? f->gv : NULL, is, wdx, wdg,
                 wdb, cdx, cdg, cdb);
    double *dx = gnt_read(&f->dx), *dg = gnt_read(&f->dgamma), *db = gnt_read(&f->dbeta);
    GNT_CLOSE_SCALED("dx", dx, wdx, cdx, g->numel, tol_of(f->dt));
    GNT_CLOSE_SCALED("dgamma", dg, wdg, cdg, g->C, tol_of(f->vdt));
    GNT_CLOSE_SCALED("dbeta", db, wdb, cdb, g->C, tol_of(f->vdt));
    NKT_GAPS_UNTOUCHED(&f->dx);
    NKT_GAPS_UNTOUCHED(&f->dgamma);
    NKT_GAPS_UNTOUCHED(&f->dbeta);
    free(is);
    free(wdx);
    free(wdg);
    free(wdb);
    free(cdg);
    free(cdb);
    free(cdx);
    free(dx);
    free(dg);
    free(db);
}

static void test_random_vs_oracle(void **state) {
    (void)state;
    unsigned k = 0;
    nk_ctx *ctx = nkt_ctx(2);
    for (size_t s = 0; s < NSHAPES; s++)
        for (int dt = NK_F32; dt <= NK_F64; dt++)
            for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++, k++) {
                const shape *sh = &SHAPES[s];
                const config c = config_of(k);
                nkt_rng r = nkt_rng_make(100 + k);
                gnt_fix f;
                gnt_init(&f, &r, sh->ndim, sh->dims, sh->G, (nk_dtype)dt, c.vdt, c.sdt,
                         (nkt_layout)lay, c.ss);
                nk_groupnorm_params p;
                /* eps = 0 with one value per row is 0 / 0 (test_nonfinite) */
                params(&p, sh->G, f.g.K == 1 && c.eps == 0.0 ? 1e-5 : c.eps, c.flags);
                describe(&f, &p, NULL);
                check_forward(ctx, &f, &p);
                check_backward(ctx, &f, &p);
                gnt_free(&f);
            }
    nk_ctx_destroy(ctx);
}

/* float32 data with mean 1e4 and std 1e-2 per row, statistics saved in float32: the saved mean
 * is off by up to ulp(1e4)/2 = 5% of the std; the backward recovers the exact mean from x. */
static void test_backward_badly_scaled(void **state) {
    (void)state;
    const int64_t dims[4] = {2, 6, 9, 11};
    nkt_rng r = nkt_rng_make(7);
    gnt_fix f;
    gnt_init(&f, &r, 4, dims, 3, NK_F32, NK_F32, NK_F32, NKT_CHLAST, GNT_STAT_FLAT);
    double *x = nkt_malloc((size_t)f.g.numel * sizeof *x);
    for (int64_t i = 0; i < f.g.numel; i++) x[i] = nkt_normal(&r, 1e4, 1e-2);
    gnt_set_x(&f, x);
    nk_groupnorm_params p;
    params(&p, 3, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    describe(&f, &p, "mean 1e4 std 1e-2");
    nk_ctx *ctx = nkt_ctx(1);
    check_forward(ctx, &f, &p);
    check_backward(ctx, &f, &p);
    nk_ctx_destroy(ctx);
    free(x);
    gnt_free(&f);
}

/* ---- finite differences ------------------------------------------------------------------- */

typedef struct fd_ctx {
    nk_ctx *ctx;
    gnt_fix *f;
    const nk_groupnorm_params *p;
    double *x, *gamma, *beta; /* the variables, logical order */
} fd_ctx;

/* L = sum dy * y(x, gamma, beta), summed in long double */
static long double loss(void *vc) {
    fd_ctx *c = vc;
    gnt_fix *f = c->f;
    nkt_set(&f->x, c->x);
    nkt_set(&f->gamma, c->gamma);
    nkt_set(&f->beta, c->beta);
    nk_status s = nk_groupnorm_forward(c->ctx, c->p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t,
                                       NULL, NULL, NULL, 0);
    if (s != NK_OK) NKT_FAIL("forward failed: %s", nk_ctx_last_error(c->ctx));
    double *y = gnt_read(&f->y);
    long double L = 0.0L;
    for (int64_t i = 0; i < f->g.numel; i++) L += (long double)f->dyv[i] * (long double)y[i];
    free(y);
    return L;
}

static void test_gradcheck(void **state) {
    (void)state;
    static const shape FD[] = {{3, {2, 4, 3}, 2}, {2, {3, 6}, 3}, {4, {2, 3, 2, 2}, 1},
                               {3, {2, 3, 4}, 3}};
    const double h = 1e-6;
    nk_ctx *ctx = nkt_ctx(1);
    unsigned k = 0;
    for (size_t s = 0; s < sizeof FD / sizeof FD[0]; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++, k++) {
            const shape *sh = &FD[s];
            nkt_rng r = nkt_rng_make(300 + k);
            gnt_fix f;
            gnt_init(&f, &r, sh->ndim, sh->dims, sh->G, NK_F64, NK_F64, NK_F64, (nkt_layout)lay,
                     (gnt_stat_shape)(k % GNT_NUM_STAT_SHAPES));
            nk_groupnorm_params p;
            params(&p, sh->G, k % 2 ? 1e-5 : 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
            describe(&f, &p, "gradcheck");
            /* analytic gradients at the point */
            NKT_OK(ctx, forward(ctx, &p, &f));
            NKT_OK(ctx, backward(ctx, &p, &f));
            const int64_t n = f.g.numel, C = f.g.C;
            fd_ctx c = {ctx, &f, &p, nkt_malloc((size_t)n * sizeof(double)),
                        nkt_malloc((size_t)C * sizeof(double)), nkt_malloc((size_t)C * sizeof(double))};
            gnt_check_fd_gradients(&f, h, loss, &c, c.x, c.gamma, c.beta);
            free(c.x), free(c.gamma), free(c.beta);
            gnt_free(&f);
        }
    nk_ctx_destroy(ctx);
}

/* ---- determinism: threads and layouts ----------------------------------------------------- */

/* Every output of a forward + backward, read in logical order. */
typedef struct outputs {
    double *y, *sm, *si, *dx, *dg, *db;
} outputs;

static outputs run_all(int threads, nkt_layout lay, nk_dtype dt, const shape *sh, int64_t salt) {
    nkt_rng r = nkt_rng_make((uint64_t)salt);
    gnt_fix f;
    gnt_init(&f, &r, sh->ndim, sh->dims, sh->G, dt, NK_F32, NK_F32, lay, GNT_STAT_NG);
    nk_groupnorm_params p;
    params(&p, sh->G, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    char extra[64];
    snprintf(extra, sizeof extra, "threads %d", threads);
    describe(&f, &p, extra);
    nk_ctx *ctx = nkt_ctx(threads);
    NKT_OK(ctx, forward(ctx, &p, &f));
    NKT_OK(ctx, backward(ctx, &p, &f));
    outputs o = {gnt_read(&f.y), gnt_read(&f.smean), gnt_read(&f.sinv), gnt_read(&f.dx),
                 gnt_read(&f.dgamma), gnt_read(&f.dbeta)};
    nk_ctx_destroy(ctx);
    gnt_free(&f);
    return o;
}

static void free_outputs(outputs *o) {
    free(o->y), free(o->sm), free(o->si), free(o->dx), free(o->dg), free(o->db);
}

/* Results are bitwise identical for 1..4 threads and for every layout of the same logical
 * tensor: the per-(n, c, block) partials are the same whether the per-channel kernels or (with
 * the channels innermost) the rows kernels or (NCHW) the span kernels produce them, and they
 * are merged in one order.
 * The shapes make every thread count take both the fused per-unit tasks and the separate
 * passes somewhere (units are fused when they fit in a cache share, >= 2 units per thread). */
static void test_threads_and_layouts_bitwise(void **state) {
    (void)state;
    static const shape SH[] = {
        /* S = 9312 > NK_BLOCK_ELEMS (2 blocks per (n, c)); K = 18624 */
        {4, {2, 6, 96, 97}, 3},
        /* C = 72: two rows chunks (64 + 8); 4 samples: fused on 1-2 threads, not on 3-4 */
        {3, {4, 72, 300}, 8},
        /* one sample, C = 68 (64 + 4), 17 channels per group, S = 8200: the rows blocks of
         * the sample are 8192 and 8 rows */
        {3, {1, 68, 8200}, 4},
        /* S = 1: the statistics come from whole rows (stats_s1), 2 blocks per row */
        {2, {4, 20000}, 2},
        {4, {12000, 6, 1, 1}, 3},
        /* short instances, where NCHW takes the span kernels (kernels/gn_kernels.h) over
         * whole groups per call: S = 49 (3 chunks of 16 and 1 value) with 3 channels per
         * group, S = 7 (one partial chunk) with G = C, S = 23 with 10 channels per group */
        {4, {24, 60, 7, 7}, 20},
        {3, {48, 230, 7}, 230},
        {3, {9, 320, 23}, 32},
    };
    for (size_t s = 0; s < sizeof SH / sizeof SH[0]; s++) {
        const shape *sh = &SH[s];
        int64_t n = 1, S = 1;
        for (int i = 0; i < sh->ndim; i++) n *= sh->dims[i];
        for (int i = 2; i < sh->ndim; i++) S *= sh->dims[i];
        assert_true(n >= NK_PARALLEL_MIN_ELEMS && (S > 256 || S == 1 || S < 64));
        const int64_t C = sh->dims[1], R = sh->dims[0] * sh->G;
        for (int dt = NK_F32; dt <= NK_F64; dt++) {
            outputs ref = run_all(1, NKT_CONTIG, (nk_dtype)dt, sh, 11);
            for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
                for (int t = 1; t <= 4; t++) {
                    if (lay == NKT_CONTIG && t == 1) continue;
                    outputs o = run_all(t, (nkt_layout)lay, (nk_dtype)dt, sh, 11);
                    NKT_SAME_BYTES("y", o.y, ref.y, (size_t)n * sizeof(double));
                    NKT_SAME_BYTES("save_mean", o.sm, ref.sm, (size_t)R * sizeof(double));
                    NKT_SAME_BYTES("save_invstd", o.si, ref.si, (size_t)R * sizeof(double));
                    NKT_SAME_BYTES("dx", o.dx, ref.dx, (size_t)n * sizeof(double));
                    NKT_SAME_BYTES("dgamma", o.dg, ref.dg, (size_t)C * sizeof(double));
                    NKT_SAME_BYTES("dbeta", o.db, ref.db, (size_t)C * sizeof(double));
                    free_outputs(&o);
                }
            free_outputs(&ref);
        }
    }
}

/* ---- streaming stores ----------------------------------------------------------------------- */

/* Sample n of t (a view of dims[0] = 1 into t's buffer); per: values per sample of a flat
 * statistics tensor (0: t holds data tensors, sliced by strides[0]). */
static nk_tensor sample_of(const nk_tensor *t, int64_t n, int64_t per) {
    nk_tensor s = *t;
    const int64_t off = per ? n * per : n * t->strides[0];
    s.data = (char *)t->data + off * (int64_t)nk_dtype_size(t->dtype);
    s.dims[0] = per ? per : 1;
    return s;
}

/* Reallocates b's view (float32, lay) 64-byte aligned, as a framework's tensors are (the
 * fixture's outputs sit a few elements into their buffers): the rows kernels stream only to
 * aligned rows. */
static void realloc_aligned(nkt_buf *b, const int64_t *dims, nkt_layout lay) {
    nkt_free(b);
    nkt_alloc(b, NK_F32, 4, dims, lay, 16);
    const int64_t back = (int64_t)((uintptr_t)b->t.data % 64) / 4;
    assert_true((uintptr_t)b->t.data % 4 == 0 && back < 16);
    b->t.data = (char *)b->t.data - back * 4;
    b->lead -= back;
}

/* A copy of b's whole buffer (bytes). */
static double *raw_copy(const nkt_buf *b, size_t bytes) {
    double *c = nkt_malloc(bytes);
    memcpy(c, b->buf, bytes);
    return c;
}

/* Tensors of at least NK_STREAM_MIN_BYTES write their element-wise outputs with streaming
 * stores (the span kernels' stream argument, the rows kernels' own choice), which must not
 * change the bits. Group norm is per sample, so each sample alone (below the threshold, regular
 * stores) must give the same y, statistics and dx bitwise; dgamma and dbeta are the sums over
 * the samples in sample order (exact in float64 from the per-sample sums: 0 + a is a).
 * float32 4 x 64 x 127 x 261 (33.9 MB > 32 MiB; 8.5 MB per sample): S = 33147 is odd, so NCHW
 * instances start unaligned (the streaming stores' scalar head and tail); NCHW takes fused
 * span units; NHWC the fused rows units on 1 thread (streaming through the rows kernels) and
 * the separate passes on 2 (units of 2 x 8.5 MB exceed the fusing cache share); the samples
 * alone take the fused units with regular stores. float32 3 x 64 x 127 x 255 NHWC (x 24.9 MB,
 * x and y 49.7 MB): the fused rows units' own streaming stores (x, y and dx rows aligned;
 * the backward fused on 1 thread: 2 x 8.3 MB units fit the 16 MB share). */
static void test_streaming_stores(void **state) {
    (void)state;
    static const int64_t DIMS[2][4] = {{4, 64, 127, 261}, {3, 64, 127, 255}};
    const int64_t C = 64, G = 32;
    nk_groupnorm_params p;
    params(&p, G, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    for (int sh = 0; sh < 2; sh++)
    for (int lay = NKT_CONTIG + sh; lay <= NKT_CHLAST; lay++) {
        const int64_t *dims = DIMS[sh], N = dims[0];
        nkt_rng r = nkt_rng_make(41);
        gnt_fix f;
        gnt_init(&f, &r, 4, dims, G, NK_F32, NK_F64, NK_F64, (nkt_layout)lay, GNT_STAT_FLAT);
        if (sh == 1) {
            realloc_aligned(&f.y, dims, (nkt_layout)lay);
            realloc_aligned(&f.dx, dims, (nkt_layout)lay);
        }
        const int64_t n = f.g.numel;
        if (sh == 0) /* x alone streams */
            assert_true(n * 4 >= NK_STREAM_MIN_BYTES && n / N * 4 * 3 < NK_STREAM_MIN_BYTES);
        else /* x and y (x, dy and dx) together stream, not a sample's */
            assert_true(n * 4 < NK_STREAM_MIN_BYTES && n * 4 * 2 >= NK_STREAM_MIN_BYTES &&
                        n / N * 4 * 3 < NK_STREAM_MIN_BYTES);
        /* y and dx compared as raw buffers (the views' bytes and the gaps between them) */
        const size_t yb = (size_t)f.y.buf_elems * 4, xb = (size_t)f.dx.buf_elems * 4;
        outputs ref = {0};
        for (int t = 1; t <= 2 - sh; t++) { /* (the second shape fuses on 1 thread only) */
            char extra[64];
            snprintf(extra, sizeof extra, "streaming stores, threads %d", t);
            describe(&f, &p, extra);
            nk_ctx *ctx = nkt_ctx(t);
            NKT_OK(ctx, forward(ctx, &p, &f));
            NKT_OK(ctx, backward(ctx, &p, &f));
            outputs o = {raw_copy(&f.y, yb), gnt_read(&f.smean), gnt_read(&f.sinv),
                         raw_copy(&f.dx, xb), gnt_read(&f.dgamma), gnt_read(&f.dbeta)};
            /* each sample alone, written over the same buffers (the same values again) */
            double *dg = nkt_malloc((size_t)C * sizeof(double)), *db = nkt_malloc((size_t)C * sizeof(double));
            for (int64_t c = 0; c < C; c++) dg[c] = db[c] = 0.0;
            for (int64_t s = 0; s < N; s++) {
                const nk_tensor x = sample_of(&f.x.t, s, 0), dy = sample_of(&f.dy.t, s, 0);
                nk_tensor sm = sample_of(&f.smean.t, s, G), si = sample_of(&f.sinv.t, s, G);
                nk_tensor y = sample_of(&f.y.t, s, 0), dx = sample_of(&f.dx.t, s, 0);
                NKT_OK(ctx, nk_groupnorm_forward(ctx, &p, &x, &f.gamma.t, &f.beta.t, &y, &sm, &si,
                                                 NULL, 0));
                NKT_OK(ctx, nk_groupnorm_backward(ctx, &p, &x, &dy, &f.gamma.t, &sm, &si, &dx,
                                                  &f.dgamma.t, &f.dbeta.t, NULL, 0));
                double *a = gnt_read(&f.dgamma), *b = gnt_read(&f.dbeta);
                for (int64_t c = 0; c < C; c++) dg[c] += a[c], db[c] += b[c];
                free(a), free(b);
            }
            outputs q = {raw_copy(&f.y, yb), gnt_read(&f.smean), gnt_read(&f.sinv),
                         raw_copy(&f.dx, xb), dg, db};
            NKT_SAME_BYTES("y streamed vs per sample", o.y, q.y, yb);
            NKT_SAME_BYTES("save_mean", o.sm, q.sm, (size_t)N * G * sizeof(double));
            NKT_SAME_BYTES("save_invstd", o.si, q.si, (size_t)N * G * sizeof(double));
            NKT_SAME_BYTES("dx streamed vs per sample", o.dx, q.dx, xb);
            NKT_SAME_BYTES("dgamma", o.dg, q.dg, (size_t)C * sizeof(double));
            NKT_SAME_BYTES("dbeta", o.db, q.db, (size_t)C * sizeof(double));
            free_outputs(&q);
            if (t == 1) {
                ref = o;
            } else { /* and the thread counts agree */
                NKT_SAME_BYTES("y 2 threads", o.y, ref.y, yb);
                NKT_SAME_BYTES("dx 2 threads", o.dx, ref.dx, xb);
                NKT_SAME_BYTES("dgamma 2 threads", o.dg, ref.dg, (size_t)C * sizeof(double));
                free_outputs(&o);
            }
            nk_ctx_destroy(ctx);
        }
        NKT_GAPS_UNTOUCHED(&f.y);
        NKT_GAPS_UNTOUCHED(&f.dx);
        free_outputs(&ref);
        gnt_free(&f);
    }
}

/* ---- in place and workspace --------------------------------------------------------------- */

static void test_in_place(void **state) {
    (void)state;
    const int64_t dims[4] = {2, 6, 5, 3};
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
        nkt_rng r = nkt_rng_make(21);
        gnt_fix f;
        gnt_init(&f, &r, 4, dims, 2, NK_F32, NK_F64, NK_F64, (nkt_layout)lay, GNT_STAT_FLAT);
        nk_groupnorm_params p;
        params(&p, 2, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
        describe(&f, &p, "in place");
        nk_ctx *ctx = nkt_ctx(1);
        const int64_t n = f.g.numel;
        /* out of place first */
        NKT_OK(ctx, forward(ctx, &p, &f));
        NKT_OK(ctx, backward(ctx, &p, &f));
        double *y = gnt_read(&f.y), *dx = gnt_read(&f.dx);
        /* dx = dy in place */
        NKT_OK(ctx, nk_groupnorm_backward(ctx, &p, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                          &f.sinv.t, &f.dy.t, NULL, NULL, NULL, 0));
        double *got = gnt_read(&f.dy);
        NKT_SAME_BYTES("dx written over dy", got, dx, (size_t)n * sizeof(double));
        free(got);
        /* dx = x in place (the backward reads x before writing each element) */
        nkt_set(&f.dy, f.dyv);
        NKT_OK(ctx, nk_groupnorm_backward(ctx, &p, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                          &f.sinv.t, &f.x.t, NULL, NULL, NULL, 0));
        got = gnt_read(&f.x);
        NKT_SAME_BYTES("dx written over x", got, dx, (size_t)n * sizeof(double));
        free(got);
        /* y = x in place */
        nkt_set(&f.x, f.xv);
        NKT_OK(ctx, nk_groupnorm_forward(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t, &f.x.t, NULL,
                                         NULL, NULL, 0));
        got = gnt_read(&f.x);
        NKT_SAME_BYTES("y written over x", got, y, (size_t)n * sizeof(double));
        NKT_GAPS_UNTOUCHED(&f.x);
        free(got);
        free(y);
        free(dx);
        nk_ctx_destroy(ctx);
        gnt_free(&f);
    }
}

static void test_workspace(void **state) {
    (void)state;
    const int64_t dims[3] = {3, 4, 10000}; /* 2 blocks per (n, c) and per row */
    nkt_rng r = nkt_rng_make(31);
    gnt_fix f;
    gnt_init(&f, &r, 3, dims, 2, NK_F64, NK_F64, NK_F64, NKT_CONTIG, GNT_STAT_FLAT);
    nk_groupnorm_params p;
    params(&p, 2, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    describe(&f, &p, "caller workspace");
    size_t bytes = 0;
    assert_int_equal(nk_groupnorm_workspace_size(&p, &f.x.t, &bytes), NK_OK);
    assert_true(bytes > NK_WS_SLACK);
    char *ws = nkt_malloc(bytes + 1);
    nk_ctx *ctx = nkt_ctx(3);
    /* an unaligned pointer with exactly the reported size works for both directions */
    NKT_OK(ctx, nk_groupnorm_forward(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t, &f.y.t, &f.smean.t,
                                     &f.sinv.t, ws + 1, bytes));
    NKT_OK(ctx, nk_groupnorm_backward(ctx, &p, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                      &f.sinv.t, &f.dx.t, &f.dgamma.t, &f.dbeta.t, ws + 1, bytes));
    /* the same as with the context's scratch */
    double *y = gnt_read(&f.y), *dx = gnt_read(&f.dx);
    NKT_OK(ctx, forward(ctx, &p, &f));
    NKT_OK(ctx, backward(ctx, &p, &f));
    double *y2 = gnt_read(&f.y), *dx2 = gnt_read(&f.dx);
    NKT_SAME_BYTES("y", y, y2, (size_t)f.g.numel * sizeof(double));
    NKT_SAME_BYTES("dx", dx, dx2, (size_t)f.g.numel * sizeof(double));
    /* too small: an error, nothing written */
    gnt_snap_all(&f);
    NKT_STATUS(ctx, nk_groupnorm_forward(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t, &f.y.t,
                                         &f.smean.t, &f.sinv.t, ws, 64),
               NK_ERR_WORKSPACE);
    NKT_MSG_HAS(ctx, "groupnorm:", "workspace");
    NKT_STATUS(ctx, nk_groupnorm_backward(ctx, &p, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                          &f.sinv.t, &f.dx.t, &f.dgamma.t, &f.dbeta.t, ws, 64),
               NK_ERR_WORKSPACE);
    assert_true(gnt_all_untouched(&f));
    /* workspace_size argument checks */
    assert_int_equal(nk_groupnorm_workspace_size(NULL, &f.x.t, &bytes), NK_ERR_NULL);
    assert_int_equal(nk_groupnorm_workspace_size(&p, &f.x.t, NULL), NK_ERR_NULL);
    p.num_groups = 3;
    assert_int_equal(nk_groupnorm_workspace_size(&p, &f.x.t, &bytes), NK_ERR_VALUE);
    free(y), free(dx), free(y2), free(dx2), free(ws);
    nk_ctx_destroy(ctx);
    gnt_free(&f);
}

/* ---- bad input ---------------------------------------------------------------------------- */

enum { FWD, BWD };

typedef struct bad_case {
    const char *name;
    int which;
    nk_status want;
    const char *needle;
} bad_case;

/* Applies case i to copies of the fixture's views and parameters, then calls. */
static nk_status call_bad(nk_ctx *ctx, int i, gnt_fix *f, const bad_case **bc) {
    static const bad_case CASES[] = {
        {"params NULL", FWD, NK_ERR_NULL, "params is NULL"},
        {"eps < 0", FWD, NK_ERR_VALUE, "eps"},
        {"eps NaN", BWD, NK_ERR_VALUE, "eps"},
        {"num_groups 0", FWD, NK_ERR_VALUE, "num_groups must be >= 1"},
        {"C % G != 0", FWD, NK_ERR_VALUE, "divisible by num_groups (4)"},
        {"C % G != 0 (backward)", BWD, NK_ERR_VALUE, "divisible by num_groups"},
        {"unknown flag (fused ReLU)", FWD, NK_ERR_VALUE, "unknown flags"},
        {"x NULL", FWD, NK_ERR_NULL, "x is NULL"},
        {"x rank 1", FWD, NK_ERR_SHAPE, "rank"},
        {"x dtype u8", FWD, NK_ERR_DTYPE, "dtype"},
        {"y NULL", FWD, NK_ERR_NULL, "y is NULL"},
        {"y shape", FWD, NK_ERR_SHAPE, "y has shape"},
        {"y dtype", FWD, NK_ERR_DTYPE, "y has dtype"},
        {"y overlaps x", FWD, NK_ERR_VALUE, "shares memory"},
        {"gamma NULL with scale", FWD, NK_ERR_NULL, "gamma is NULL"},
        {"gamma length", FWD, NK_ERR_SHAPE, "gamma must have shape [6]"},
        {"beta NULL with shift", FWD, NK_ERR_NULL, "beta is NULL"},
        {"beta dtype", FWD, NK_ERR_DTYPE, "beta"},
        {"save_mean count", FWD, NK_ERR_SHAPE, "save_mean must hold 4 values"},
        {"save_invstd data NULL", FWD, NK_ERR_NULL, "save_invstd->data"},
        {"save_mean negative stride", FWD, NK_ERR_VALUE, "negative stride"},
        {"zero-size reduction", FWD, NK_ERR_DEGENERATE, "zero-size reduction"},
        {"backward save_mean NULL", BWD, NK_ERR_NULL, "save_mean is NULL"},
        {"backward save_invstd count", BWD, NK_ERR_SHAPE, "save_invstd must hold 4 values"},
        {"backward dy shape", BWD, NK_ERR_SHAPE, "dy has shape"},
        {"backward dx dtype", BWD, NK_ERR_DTYPE, "dx has dtype"},
        {"backward dx overlaps dy", BWD, NK_ERR_VALUE, "shares memory"},
        {"backward dgamma length", BWD, NK_ERR_SHAPE, "dgamma must have shape [6]"},
        {"backward gamma NULL with scale", BWD, NK_ERR_NULL, "gamma is NULL"},
    };
    const int ncases = (int)(sizeof CASES / sizeof CASES[0]);
    if (i >= ncases) return 1;
    *bc = &CASES[i];
    nk_groupnorm_params p, *pp = &p;
    params(&p, 2, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    nk_tensor x = f->x.t, y = f->y.t, dy = f->dy.t, dx = f->dx.t, gm = f->gamma.t, bt = f->beta.t;
    nk_tensor sm = f->smean.t, si = f->sinv.t, dg = f->dgamma.t, db = f->dbeta.t;
    nk_tensor *px = &x, *py = &y, *pdy = &dy, *pdx = &dx, *pg = &gm, *pb = &bt, *psm = &sm,
              *psi = &si, *pdg = &dg;
    int64_t zero_dims[4] = {2, 6, 0, 3};
    nk_tensor zx, zy;
    switch (i) {
    case 0: pp = NULL; break;
    case 1: p.eps = -1.0; break;
    case 2: p.eps = NAN; break;
    case 3: p.num_groups = 0; break;
    case 4: case 5: p.num_groups = 4; break;
    case 6: p.flags |= NK_BN_FUSE_RELU; break;
    case 7: px = NULL; break;
    case 8: x.ndim = 1; break;
    case 9: x.dtype = NK_U8; break;
    case 10: py = NULL; break;
    case 11: y.dims[3] += 1; break;
    case 12: y.dtype = y.dtype == NK_F32 ? NK_F64 : NK_F32; break;
    case 13: y.data = x.data, y.strides[3] += 1; break; /* same memory, other strides */
    case 14: pg = NULL; break;
    case 15: gm.dims[0] = 5; break;
    case 16: pb = NULL; break;
    case 17: bt.dtype = NK_U8; break;
    case 18: sm.dims[0] = 5; sm.ndim = 1; break;
    case 19: si.data = NULL; break;
    case 20: sm.strides[0] = -1; break;
    case 21:
        nk_tensor_contiguous(&zx, f->x.t.data, f->x.t.dtype, 4, zero_dims);
        nk_tensor_contiguous(&zy, f->y.t.data, f->y.t.dtype, 4, zero_dims);
        px = &zx, py = &zy;
        break;
    case 22: psm = NULL; break;
    case 23: si.ndim = 1, si.dims[0] = 8, si.strides[0] = 1; break;
    case 24: dy.dims[2] -= 1; break;
    case 25: dx.dtype = dx.dtype == NK_F32 ? NK_F64 : NK_F32; break;
    case 26: dx.data = dy.data, dx.strides[2] += 1; break;
    case 27: dg.dims[0] = 7; break;
    case 28: pg = NULL; break;
    }
    if (CASES[i].which == FWD)
        return nk_groupnorm_forward(ctx, pp, px, pg, pb, py, psm, psi, NULL, 0);
    return nk_groupnorm_backward(ctx, pp, px, pdy, pg, psm, psi, pdx, pdg, &db, NULL, 0);
}

static void test_bad_input(void **state) {
    (void)state;
    const int64_t dims[4] = {2, 6, 3, 5}; /* G = 2: 4 rows */
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
        nkt_rng r = nkt_rng_make(41);
        gnt_fix f;
        gnt_init(&f, &r, 4, dims, 2, NK_F32, NK_F64, NK_F32, (nkt_layout)lay, GNT_STAT_KEEPDIM);
        nk_ctx *ctx = nkt_ctx(2);
        /* saved statistics for the backward cases */
        nk_groupnorm_params p;
        params(&p, 2, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
        NKT_OK(ctx, forward(ctx, &p, &f));
        for (int i = 0;; i++) {
            const bad_case *bc = NULL;
            gnt_snap_all(&f);
            nk_status s = call_bad(ctx, i, &f, &bc);
            if (!bc) break;
            char d[320];
            nkt_case("%s (%s)", bc->name, gnt_desc(&f, d, sizeof d));
            NKT_STATUS(ctx, s, bc->want);
            NKT_MSG_HAS(ctx, "groupnorm: ", bc->needle);
            if (!gnt_all_untouched(&f)) fail();
        }
        assert_int_equal(nk_groupnorm_forward(NULL, &p, &f.x.t, &f.gamma.t, &f.beta.t, &f.y.t,
                                              NULL, NULL, NULL, 0), NK_ERR_NULL);
        nk_ctx_destroy(ctx);
        gnt_free(&f);
    }
}

/* ---- empty batches and non-finite statistics ---------------------------------------------- */

static void test_empty(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(2);
    nk_groupnorm_params p;
    params(&p, 2, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    /* N = 0: a no-op that touches nothing; the backward's parameter gradients are 0 */
    const int64_t d0[4] = {0, 4, 3, 3};
    nkt_rng r = nkt_rng_make(51);
    gnt_fix f;
    gnt_init(&f, &r, 4, d0, 2, NK_F32, NK_F32, NK_F32, NKT_CHLAST, GNT_STAT_FLAT);
    describe(&f, &p, "N = 0");
    gnt_snap_all(&f);
    NKT_OK(ctx, forward(ctx, &p, &f));
    assert_true(gnt_all_untouched(&f));
    NKT_OK(ctx, backward(ctx, &p, &f));
    double zeros[4] = {0, 0, 0, 0}, got[4];
    nkt_get(&f.dgamma, got);
    NKT_CLOSE("dgamma of an empty batch", got, zeros, 4, TOL_EXACT);
    nkt_get(&f.dbeta, got);
    NKT_CLOSE("dbeta of an empty batch", got, zeros, 4, TOL_EXACT);
    size_t bytes = 0;
    assert_int_equal(nk_groupnorm_workspace_size(&p, &f.x.t, &bytes), NK_OK);
    gnt_free(&f);
    /* a zero spatial axis with N > 0: the forward is a zero-size reduction, the backward
     * gives empty sums */
    const int64_t d1[3] = {2, 4, 0};
    gnt_init(&f, &r, 3, d1, 2, NK_F64, NK_F64, NK_F64, NKT_CONTIG, GNT_STAT_FLAT);
    describe(&f, &p, "spatial 0");
    gnt_snap_all(&f);
    NKT_STATUS(ctx, forward(ctx, &p, &f), NK_ERR_DEGENERATE);
    NKT_MSG_HAS(ctx, "groupnorm: zero-size reduction", "[2, 4, 0]");
    assert_true(gnt_all_untouched(&f));
    NKT_OK(ctx, backward(ctx, &p, &f));
    nkt_get(&f.dgamma, got);
    NKT_CLOSE("dgamma of an empty reduction", got, zeros, 4, TOL_EXACT);
    gnt_free(&f);
    nk_ctx_destroy(ctx);
}

/* K = 1 (rank 2, G = C): every value is its row's mean, y = beta, as PyTorch. */
static void test_one_value_per_group(void **state) {
    (void)state;
    const int64_t d[2] = {3, 5};
    nkt_rng r = nkt_rng_make(61);
    gnt_fix f;
    gnt_init(&f, &r, 2, d, 5, NK_F64, NK_F64, NK_F64, NKT_CHLAST, GNT_STAT_FLAT);
    nk_groupnorm_params p;
    params(&p, 5, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    describe(&f, &p, "K = 1");
    nk_ctx *ctx = nkt_ctx(1);
    NKT_OK(ctx, forward(ctx, &p, &f));
    double y[15], want[15];
    nkt_get(&f.y, y);
    for (int i = 0; i < 15; i++) want[i] = f.bv[i % 5];
    NKT_CLOSE("y", y, want, 15, TOL_EXACT);
    nk_ctx_destroy(ctx);
    gnt_free(&f);
}

static void test_nonfinite(void **state) {
    (void)state;
    const int64_t d[3] = {2, 4, 6};
    nkt_rng r = nkt_rng_make(71);
    gnt_fix f;
    gnt_init(&f, &r, 3, d, 2, NK_F32, NK_F32, NK_F32, NKT_CONTIG, GNT_STAT_FLAT);
    f.xv[3 * 6 + 2] = INFINITY; /* sample 0, channel 3: row 1 */
    gnt_set_x(&f, f.xv);
    nk_groupnorm_params p;
    params(&p, 2, 1e-5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    describe(&f, &p, "inf in row 1");
    nk_ctx *ctx = nkt_ctx(1);
    NKT_STATUS(ctx, forward(ctx, &p, &f), NK_WARN_NONFINITE_STATS);
    NKT_MSG_HAS(ctx, "groupnorm: statistics of row 1", "not finite");
    /* the other rows are still normalized */
    double *y = gnt_read(&f.y), want[48];
    gno_forward(&f.g, p.eps, f.xv, f.gv, f.bv, want, NULL, NULL, NULL);
    NKT_CLOSE("y of row 0", y, want, 12, TOL_F32_RESULT);
    free(y);
    /* eps = 0 with a constant row: invstd is infinite */
    for (int64_t i = 0; i < 48; i++) f.xv[i] = 1.0;
    gnt_set_x(&f, f.xv);
    p.eps = 0.0;
    NKT_STATUS(ctx, forward(ctx, &p, &f), NK_WARN_NONFINITE_STATS);
    nk_ctx_destroy(ctx);
    gnt_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_random_vs_oracle),
        cmocka_unit_test(test_backward_badly_scaled),
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_threads_and_layouts_bitwise),
        cmocka_unit_test(test_streaming_stores),
        cmocka_unit_test(test_in_place),
        cmocka_unit_test(test_workspace),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_one_value_per_group),
        cmocka_unit_test(test_nonfinite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
