/* Instance normalization: nk_instancenorm_forward_train (with and without PyTorch running
 * statistics), forward_inference, backward, workspace_size.
 * Oracles: exact results on dyadic inputs (TOL_EXACT), the naive float64 oracle of
 * support/gn_test.c (gno_*, G = C), central finite differences in double (TOL_GRADCHECK), and
 * group norm with G = C (bitwise: both run the same core).
 * Also: layouts, row-statistics shapes, bitwise equality across 1-4 threads and layouts,
 * in place, caller workspace, the degenerate cases, bad input (nothing written). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h" /* NK_BLOCK_ELEMS, NK_PARALLEL_MIN_ELEMS */
#include "support/gn_test.h"

typedef struct shape {
    int ndim;
    int64_t dims[5];
} shape;

/* spatial 2 / 7 / 17, C = 1 / 3 / 23, ranks 3-5, an instance longer than a block, more
 * channels than one rows chunk (NK_ROWS_CHUNK = 64) */
static const shape SHAPES[] = {
    {3, {2, 3, 7}},       {3, {1, 1, 17}},    {3, {3, 23, 2}},    {4, {2, 3, 4, 5}},
    {4, {1, 4, 1, 7}},    {4, {3, 2, 7, 3}},  {5, {2, 3, 2, 3, 2}}, {3, {2, 2, 9000}},
    {3, {2, 70, 3}},
};
#define NSHAPES (sizeof SHAPES / sizeof SHAPES[0])

static nkt_tol_id tol_of(nk_dtype dt) { return nkt_tol_result(dt); }

static void params(nk_instancenorm_params *p, double eps, double momentum, unsigned flags) {
    nk_instancenorm_params_default(p);
    p->eps = eps;
    p->momentum = momentum;
    p->flags = flags;
}

static void describe(const gnt_fix *f, const nk_instancenorm_params *p, const char *extra) {
    char d[320];
    nkt_case("%s eps %g momentum %g flags 0x%x%s%s", gnt_desc(f, d, sizeof d), p->eps,
             p->momentum, p->flags, extra ? " " : "", extra ? extra : "");
}

static void fixture(gnt_fix *f, nkt_rng *r, const shape *sh, nk_dtype dt, nk_dtype vdt,
                    nk_dtype sdt, nkt_layout lay, gnt_stat_shape ss) {
    gnt_init(f, r, sh->ndim, sh->dims, sh->dims[1], dt, vdt, sdt, lay, ss);
}

static nk_status train(nk_ctx *ctx, const nk_instancenorm_params *p, gnt_fix *f, int track) {
    return nk_instancenorm_forward_train(ctx, p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t,
                                         &f->smean.t, &f->sinv.t, track ? &f->rmean.t : NULL,
                                         track ? &f->rvar.t : NULL, NULL, 0);
}

static nk_status infer(nk_ctx *ctx, const nk_instancenorm_params *p, gnt_fix *f) {
    return nk_instancenorm_forward_inference(ctx, p, &f->x.t, &f->gamma.t, &f->beta.t,
                                             &f->rmean.t, &f->rvar.t, &f->y.t);
}

static nk_status backward(nk_ctx *ctx, const nk_instancenorm_params *p, gnt_fix *f) {
    return nk_instancenorm_backward(ctx, p, &f->x.t, &f->dy.t, &f->gamma.t, &f->smean.t,
                                    &f->sinv.t, &f->dx.t, &f->dgamma.t, &f->dbeta.t, NULL, 0);
}

static const double *scale_of(const nk_instancenorm_params *p, const gnt_fix *f) {
    return (p->flags & NK_NORM_USE_SCALE) ? f->gv : NULL;
}

static const double *shift_of(const nk_instancenorm_params *p, const gnt_fix *f) {
    return (p->flags & NK_NORM_USE_SHIFT) ? f->bv : NULL;
}

/* ---- exact values ------------------------------------------------------------------------- */

/* x (2, 3, 2): instance (n, c) holds m[n,c] -+ 1: mean m, biased var 1, unbiased 2; eps = 0
 * gives invstd 1, y = -+gamma + beta; momentum 0.5 keeps the running update dyadic. */
static void test_exact(void **state) {
    (void)state;
    const int64_t dims[3] = {2, 3, 2};
    const double m[6] = {0.5, -3.25, 10.0, 0.0, 1.75, -6.0};
    const double gam[3] = {1.5, -0.5, 2.0}, bet[3] = {0.5, -1.0, 0.125};
    const double rm0[3] = {0.25, 1.0, -2.0}, rv0[3] = {1.0, 0.5, 4.0};
    for (int dt = NK_F32; dt <= NK_F64; dt++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
            nkt_rng r = nkt_rng_make(1);
            gnt_fix f;
            gnt_init(&f, &r, 3, dims, 3, (nk_dtype)dt, (nk_dtype)dt, (nk_dtype)dt,
                     (nkt_layout)lay, GNT_STAT_NG);
            double x[12], y[12], want[12];
            for (int64_t i = 0; i < 12; i++) {
                x[i] = m[i / 2] + (i % 2 ? 1.0 : -1.0);
                want[i] = (i % 2 ? 1.0 : -1.0) * gam[(i / 2) % 3] + bet[(i / 2) % 3];
            }
            gnt_set_x(&f, x);
            memcpy(f.gv, gam, sizeof gam), memcpy(f.bv, bet, sizeof bet);
            memcpy(f.rmv, rm0, sizeof rm0), memcpy(f.rvv, rv0, sizeof rv0);
            nkt_set(&f.gamma, f.gv), nkt_set(&f.beta, f.bv);
            nkt_set(&f.rmean, f.rmv), nkt_set(&f.rvar, f.rvv);
            nk_instancenorm_params p;
            params(&p, 0.0, 0.5, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
            describe(&f, &p, "exact");
            nk_ctx *ctx = nkt_ctx(1);
            NKT_OK(ctx, train(ctx, &p, &f, 1));
            nkt_get(&f.y, y);
            NKT_CLOSE("y", y, want, 12, TOL_EXACT);
            double sm[6], si[6], ones[6] = {1, 1, 1, 1, 1, 1}, rm[3], rv[3], wrm[3], wrv[3];
            nkt_get(&f.smean, sm);
            nkt_get(&f.sinv, si);
            NKT_CLOSE("save_mean", sm, m, 6, TOL_EXACT);
            NKT_CLOSE("save_invstd", si, ones, 6, TOL_EXACT);
            for (int c = 0; c < 3; c++) {
                wrm[c] = 0.5 * rm0[c] + 0.5 * (m[c] + m[3 + c]) / 2;
                wrv[c] = 0.5 * rv0[c] + 0.5 * 2.0; /* unbiased var 1 * 2 / (2 - 1) */
            }
            nkt_get(&f.rmean, rm);
            nkt_get(&f.rvar, rv);
            NKT_CLOSE("running_mean", rm, wrm, 3, TOL_EXACT);
            NKT_CLOSE("running_var", rv, wrv, 3, TOL_EXACT);
            nk_ctx_destroy(ctx);
            gnt_free(&f);
        }
}

/* ---- random values against the oracle ---------------------------------------------------- */

static void test_random_vs_oracle(void **state) {
    (void)state;
    static const double EPS[] = {1e-5, 0.1, 0.0, 1e-3};
    static const double MOM[] = {0.1, 0.0, 1.0, 0.5, 0.01};
    static const unsigned FLAGS[] = {0, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT, NK_NORM_USE_SCALE,
                                     NK_NORM_USE_SHIFT};
    unsigned k = 0;
    nk_ctx *ctx = nkt_ctx(2);
    for (size_t s = 0; s < NSHAPES; s++)
        for (int dt = NK_F32; dt <= NK_F64; dt++)
            for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++, k++) {
                nkt_rng r = nkt_rng_make(100 + k);
                gnt_fix f;
                fixture(&f, &r, &SHAPES[s], (nk_dtype)dt, (k & 1) ? NK_F32 : NK_F64,
                        (k & 2) ? NK_F32 : NK_F64, (nkt_layout)lay,
                        (gnt_stat_shape)(k % GNT_NUM_STAT_SHAPES));
                const gno_geom *g = &f.g;
                const int track = k % 3 != 2;
                nk_instancenorm_params p;
                params(&p, EPS[k % 4], MOM[k % 5], FLAGS[k % 4]);
                describe(&f, &p, track ? "running stats" : "no running stats");

                /* training forward */
                NKT_OK(ctx, train(ctx, &p, &f, track));
                double *want = nkt_malloc((size_t)g->numel * sizeof(double));
                double *wm = nkt_malloc((size_t)g->R * sizeof(double));
                double *wv = nkt_malloc((size_t)g->R * sizeof(double));
                double *wi = nkt_malloc((size_t)g->R * sizeof(double));
                gno_forward(g, p.eps, f.xv, scale_of(&p, &f), shift_of(&p, &f), want, wm, wv, wi);
                double *y = gnt_read(&f.y), *sm = gnt_read(&f.smean), *si = gnt_read(&f.sinv);
                NKT_CLOSE("y", y, want, g->numel, tol_of(f.dt));
                NKT_CLOSE("save_mean", sm, wm, g->R, tol_of(f.sdt));
                NKT_CLOSE("save_invstd", si, wi, g->R, tol_of(f.sdt));
                double *rm = gnt_read(&f.rmean), *rv = gnt_read(&f.rvar);
                if (track) gno_in_running(g, p.momentum, wm, wv, f.rmv, f.rvv);
                NKT_CLOSE("running_mean", rm, f.rmv, g->C, tol_of(f.vdt));
                NKT_CLOSE("running_var", rv, f.rvv, g->C, tol_of(f.vdt));
                NKT_GAPS_UNTOUCHED(&f.y);
                NKT_GAPS_UNTOUCHED(&f.smean);
                NKT_GAPS_UNTOUCHED(&f.rvar);

                /* backward from the saved statistics as stored */
                NKT_OK(ctx, backward(ctx, &p, &f));
                double *wdx = nkt_malloc((size_t)g->numel * sizeof(double));
                double *wdg = nkt_malloc((size_t)g->C * sizeof(double));
                double *wdb = nkt_malloc((size_t)g->C * sizeof(double));
                double *cdg = nkt_malloc((size_t)g->C * sizeof(double));
                double *cdb = nkt_malloc((size_t)g->C * sizeof(double));
                double *cdx = nkt_malloc((size_t)g->numel * sizeof(double));
                gno_backward(g, f.xv, f.dyv, scale_of(&p, &f), si, wdx, wdg, wdb, cdx, cdg, cdb);
                double *dx = gnt_read(&f.dx), *dg = gnt_read(&f.dgamma), *db = gnt_read(&f.dbeta);
                GNT_CLOSE_SCALED("dx", dx, wdx, cdx, g->numel, tol_of(f.dt));
                GNT_CLOSE_SCALED("dgamma", dg, wdg, cdg, g->C, tol_of(f.vdt));
                GNT_CLOSE_SCALED("dbeta", db, wdb, cdb, g->C, tol_of(f.vdt));
                NKT_GAPS_UNTOUCHED(&f.dx);

                /* inference with the (updated) running statistics */
                NKT_OK(ctx, infer(ctx, &p, &f));
                double *rm2 = gnt_read(&f.rmean), *rv2 = gnt_read(&f.rvar);
                gno_forward_fixed(g, p.eps, f.xv, scale_of(&p, &f), shift_of(&p, &f), rm2, rv2,
                                  want);
                free(y);
                y = gnt_read(&f.y);
                NKT_CLOSE("y (inference)", y, want, g->numel, tol_of(f.dt));
                NKT_SAME_BYTES("running_mean after inference", rm2, rm, (size_t)g->C * sizeof(double));

                free(want), free(wm), free(wv), free(wi), free(y), free(sm), free(si);
                free(rm), free(rv), free(rm2), free(rv2);
                free(wdx), free(wdg), free(wdb), free(cdg), free(cdb), free(cdx), free(dx), free(dg), free(db);
                gnt_free(&f);
            }
    nk_ctx_destroy(ctx);
}

/* Instance norm is group norm with G = C: bitwise the same outputs. */
static void test_equals_groupnorm(void **state) {
    (void)state;
    for (size_t s = 0; s < NSHAPES; s++) {
        nkt_rng r = nkt_rng_make(200 + s);
        gnt_fix f;
        fixture(&f, &r, &SHAPES[s], s % 2 ? NK_F32 : NK_F64, NK_F64, NK_F64,
                (nkt_layout)(s % NKT_NUM_LAYOUTS), GNT_STAT_FLAT);
        const int64_t n = f.g.numel, C = f.g.C;
        nk_instancenorm_params p;
        params(&p, 1e-5, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
        describe(&f, &p, "vs groupnorm G = C");
        nk_ctx *ctx = nkt_ctx(2);
        NKT_OK(ctx, train(ctx, &p, &f, 0));
        NKT_OK(ctx, backward(ctx, &p, &f));
        double *y = gnt_read(&f.y), *si = gnt_read(&f.sinv), *dx = gnt_read(&f.dx);
        double *dg = gnt_read(&f.dgamma);
        nk_groupnorm_params gp;
        nk_groupnorm_params_default(&gp, C);
        NKT_OK(ctx, nk_groupnorm_forward(ctx, &gp, &f.x.t, &f.gamma.t, &f.beta.t, &f.y.t,
                                         &f.smean.t, &f.sinv.t, NULL, 0));
        NKT_OK(ctx, nk_groupnorm_backward(ctx, &gp, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                          &f.sinv.t, &f.dx.t, &f.dgamma.t, &f.dbeta.t, NULL, 0));
        double *y2 = gnt_read(&f.y), *si2 = gnt_read(&f.sinv), *dx2 = gnt_read(&f.dx);
        double *dg2 = gnt_read(&f.dgamma);
        NKT_SAME_BYTES("y", y, y2, (size_t)n * sizeof(double));
        NKT_SAME_BYTES("save_invstd", si, si2, (size_t)f.g.R * sizeof(double));
        NKT_SAME_BYTES("dx", dx, dx2, (size_t)n * sizeof(double));
        NKT_SAME_BYTES("dgamma", dg, dg2, (size_t)C * sizeof(double));
        free(y), free(si), free(dx), free(dg), free(y2), free(si2), free(dx2), free(dg2);
        nk_ctx_destroy(ctx);
        gnt_free(&f);
    }
}

/* ---- finite differences ------------------------------------------------------------------- */

typedef struct fd_ctx {
    nk_ctx *ctx;
    gnt_fix *f;
    const nk_instancenorm_params *p;
    double *x, *gamma, *beta;
} fd_ctx;

static long double loss(void *vc) {
    fd_ctx *c = vc;
    gnt_fix *f = c->f;
    nkt_set(&f->x, c->x);
    nkt_set(&f->gamma, c->gamma);
    nkt_set(&f->beta, c->beta);
    nk_status s = nk_instancenorm_forward_train(c->ctx, c->p, &f->x.t, &f->gamma.t, &f->beta.t,
                                                &f->y.t, NULL, NULL, NULL, NULL, NULL, 0);
    if (s != NK_OK) NKT_FAIL("forward failed: %s", nk_ctx_last_error(c->ctx));
    double *y = gnt_read(&f->y);
    long double L = 0.0L;
    for (int64_t i = 0; i < f->g.numel; i++) L += (long double)f->dyv[i] * (long double)y[i];
    free(y);
    return L;
}

static void test_gradcheck(void **state) {
    (void)state;
    static const shape FD[] = {{3, {2, 3, 4}}, {4, {2, 2, 2, 3}}, {3, {3, 1, 5}}};
    const double h = 1e-6;
    nk_ctx *ctx = nkt_ctx(1);
    unsigned k = 0;
    for (size_t s = 0; s < sizeof FD / sizeof FD[0]; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++, k++) {
            nkt_rng r = nkt_rng_make(300 + k);
            gnt_fix f;
            fixture(&f, &r, &FD[s], NK_F64, NK_F64, NK_F64, (nkt_layout)lay,
                    (gnt_stat_shape)(k % GNT_NUM_STAT_SHAPES));
            nk_instancenorm_params p;
            params(&p, k % 2 ? 1e-5 : 0.1, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
            describe(&f, &p, "gradcheck");
            NKT_OK(ctx, train(ctx, &p, &f, 0));
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

/* ---- determinism -------------------------------------------------------------------------- */

typedef struct outputs {
    double *y, *sm, *si, *rm, *rv, *dx, *dg, *db, *yi;
} outputs;

static outputs run_all(int threads, nkt_layout lay, nk_dtype dt, const shape *sh) {
    nkt_rng r = nkt_rng_make(11);
    gnt_fix f;
    fixture(&f, &r, sh, dt, NK_F32, NK_F64, lay, GNT_STAT_KEEPDIM);
    nk_instancenorm_params p;
    params(&p, 1e-5, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    char extra[64];
    snprintf(extra, sizeof extra, "threads %d", threads);
    describe(&f, &p, extra);
    nk_ctx *ctx = nkt_ctx(threads);
    NKT_OK(ctx, train(ctx, &p, &f, 1));
    NKT_OK(ctx, backward(ctx, &p, &f));
    outputs o = {gnt_read(&f.y), gnt_read(&f.smean), gnt_read(&f.sinv), gnt_read(&f.rmean),
                 gnt_read(&f.rvar), gnt_read(&f.dx), gnt_read(&f.dgamma), gnt_read(&f.dbeta),
                 NULL};
    NKT_OK(ctx, infer(ctx, &p, &f));
    o.yi = gnt_read(&f.y);
    nk_ctx_destroy(ctx);
    gnt_free(&f);
    return o;
}

static void free_outputs(outputs *o) {
    free(o->y), free(o->sm), free(o->si), free(o->rm), free(o->rv);
    free(o->dx), free(o->dg), free(o->db), free(o->yi);
}

/* Bitwise identical for 1..4 threads and every layout (see test_groupnorm.c: the per-channel,
 * span and rows kernels give the same per-(n, c, block) partials); the shapes take both the
 * fused per-unit tasks and the separate passes. */
static void test_threads_and_layouts_bitwise(void **state) {
    (void)state;
    static const shape SH[] = {
        {4, {2, 3, 100, 120}}, /* S = 12000 > NK_BLOCK_ELEMS (2 blocks each) */
        {3, {4, 72, 300}},     /* two rows chunks (64 + 8), 4 samples */
        {3, {1, 68, 8200}},    /* one sample, C = 64 + 4, rows blocks of 8192 and 8 rows */
        /* short instances, where NCHW takes the span kernels (kernels/gn_kernels.h) over
         * many (n, c) per call: S = 49 (3 chunks of 16 and 1 value), S = 7 (one partial
         * chunk), S = 23; units of whole rows that straddle samples */
        {4, {24, 60, 7, 7}},
        {3, {48, 230, 7}},
        {3, {9, 330, 23}},
    };
    for (size_t s = 0; s < sizeof SH / sizeof SH[0]; s++) {
        const shape *sh = &SH[s];
        size_t numel = 1;
        for (int i = 0; i < sh->ndim; i++) numel *= (size_t)sh->dims[i];
        assert_true(numel >= NK_PARALLEL_MIN_ELEMS);
        const size_t n = numel * sizeof(double), C = (size_t)sh->dims[1] * sizeof(double),
                     R = (size_t)(sh->dims[0] * sh->dims[1]) * sizeof(double);
        for (int dt = NK_F32; dt <= NK_F64; dt++) {
            outputs ref = run_all(1, NKT_CONTIG, (nk_dtype)dt, sh);
            for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
                for (int t = 1; t <= 4; t++) {
                    if (lay == NKT_CONTIG && t == 1) continue;
                    outputs o = run_all(t, (nkt_layout)lay, (nk_dtype)dt, sh);
                    NKT_SAME_BYTES("y", o.y, ref.y, n);
                    NKT_SAME_BYTES("save_mean", o.sm, ref.sm, R);
                    NKT_SAME_BYTES("save_invstd", o.si, ref.si, R);
                    NKT_SAME_BYTES("running_mean", o.rm, ref.rm, C);
                    NKT_SAME_BYTES("running_var", o.rv, ref.rv, C);
                    NKT_SAME_BYTES("dx", o.dx, ref.dx, n);
                    NKT_SAME_BYTES("dgamma", o.dg, ref.dg, C);
                    NKT_SAME_BYTES("dbeta", o.db, ref.db, C);
                    NKT_SAME_BYTES("y (inference)", o.yi, ref.yi, n);
                    free_outputs(&o);
                }
            free_outputs(&ref);
        }
    }
}

/* ---- in place, workspace ------------------------------------------------------------------ */

static void test_in_place_and_workspace(void **state) {
    (void)state;
    static const shape sh = {4, {2, 3, 5, 4}};
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
        nkt_rng r = nkt_rng_make(21);
        gnt_fix f;
        fixture(&f, &r, &sh, NK_F32, NK_F32, NK_F32, (nkt_layout)lay, GNT_STAT_FLAT);
        nk_instancenorm_params p;
        params(&p, 1e-5, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
        describe(&f, &p, "in place");
        nk_ctx *ctx = nkt_ctx(1);
        const int64_t n = f.g.numel;
        size_t bytes = 0;
        assert_int_equal(nk_instancenorm_workspace_size(&f.x.t, &bytes), NK_OK);
        char *ws = nkt_malloc(bytes + 1);
        NKT_OK(ctx, nk_instancenorm_forward_train(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t,
                                                  &f.y.t, &f.smean.t, &f.sinv.t, NULL, NULL,
                                                  ws + 1, bytes));
        NKT_OK(ctx, nk_instancenorm_backward(ctx, &p, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                             &f.sinv.t, &f.dx.t, NULL, NULL, ws + 1, bytes));
        double *y = gnt_read(&f.y), *dx = gnt_read(&f.dx);
        NKT_OK(ctx, nk_instancenorm_backward(ctx, &p, &f.x.t, &f.dy.t, &f.gamma.t, &f.smean.t,
                                             &f.sinv.t, &f.dy.t, NULL, NULL, NULL, 0));
        double *got = gnt_read(&f.dy);
        NKT_SAME_BYTES("dx written over dy", got, dx, (size_t)n * sizeof(double));
        free(got);
        NKT_OK(ctx, nk_instancenorm_forward_train(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t,
                                                  &f.x.t, NULL, NULL, NULL, NULL, NULL, 0));
        got = gnt_read(&f.x);
        NKT_SAME_BYTES("y written over x", got, y, (size_t)n * sizeof(double));
        NKT_GAPS_UNTOUCHED(&f.x);
        free(got);
        /* inference in place */
        nkt_set(&f.x, f.xv);
        NKT_OK(ctx, infer(ctx, &p, &f));
        free(y);
        y = gnt_read(&f.y);
        NKT_OK(ctx, nk_instancenorm_forward_inference(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t,
                                                      &f.rmean.t, &f.rvar.t, &f.x.t));
        got = gnt_read(&f.x);
        NKT_SAME_BYTES("inference y written over x", got, y, (size_t)n * sizeof(double));
        free(got);
        /* too small a workspace: nothing written */
        nkt_set(&f.x, f.xv);
        gnt_snap_all(&f);
        NKT_STATUS(ctx, nk_instancenorm_forward_train(ctx, &p, &f.x.t, &f.gamma.t, &f.beta.t,
                                                      &f.y.t, &f.smean.t, &f.sinv.t, &f.rmean.t,
                                                      &f.rvar.t, ws, 8),
                   NK_ERR_WORKSPACE);
        NKT_MSG_HAS(ctx, "instancenorm:", "workspace");
        assert_true(gnt_all_untouched(&f));
        free(y), free(dx), free(ws);
        nk_ctx_destroy(ctx);
        gnt_free(&f);
    }
}

/* ---- degenerate shapes, empty batches, non-finite statistics ------------------------------ */

static void test_degenerate(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    nk_instancenorm_params p;
    params(&p, 1e-5, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    nkt_rng r = nkt_rng_make(51);
    gnt_fix f;
    /* one spatial value per instance: an error in training (as PyTorch), fine in inference */
    static const shape one = {4, {2, 3, 1, 1}};
    fixture(&f, &r, &one, NK_F32, NK_F32, NK_F32, NKT_CHLAST, GNT_STAT_FLAT);
    describe(&f, &p, "S = 1");
    gnt_snap_all(&f);
    NKT_STATUS(ctx, train(ctx, &p, &f, 1), NK_ERR_DEGENERATE);
    NKT_MSG_HAS(ctx, "instancenorm: expected more than 1 spatial element when training",
                "got input of shape [2, 3, 1, 1]");
    assert_true(gnt_all_untouched(&f));
    NKT_OK(ctx, infer(ctx, &p, &f));
    double y[6], want[6];
    nkt_get(&f.y, y);
    gno_forward_fixed(&f.g, p.eps, f.xv, f.gv, f.bv, f.rmv, f.rvv, want);
    NKT_CLOSE("y (inference, S = 1)", y, want, 6, TOL_F32_RESULT);
    gnt_free(&f);

    /* a zero spatial axis: zero-size reduction in training; inference and backward are
     * empty (the parameter gradients are empty sums) */
    static const shape zero = {3, {2, 3, 0}};
    fixture(&f, &r, &zero, NK_F64, NK_F64, NK_F64, NKT_CONTIG, GNT_STAT_FLAT);
    describe(&f, &p, "S = 0");
    gnt_snap_all(&f);
    NKT_STATUS(ctx, train(ctx, &p, &f, 1), NK_ERR_DEGENERATE);
    NKT_MSG_HAS(ctx, "instancenorm: zero-size reduction", "[2, 3, 0]");
    assert_true(gnt_all_untouched(&f));
    NKT_OK(ctx, infer(ctx, &p, &f));
    assert_true(gnt_all_untouched(&f));
    NKT_OK(ctx, backward(ctx, &p, &f));
    double z[3], zeros[3] = {0, 0, 0};
    nkt_get(&f.dgamma, z);
    NKT_CLOSE("dgamma of an empty reduction", z, zeros, 3, TOL_EXACT);
    gnt_free(&f);

    /* N = 0 and C = 0: no instance, nothing touched (running statistics included) */
    static const shape empty[2] = {{3, {0, 3, 5}}, {3, {2, 0, 5}}};
    for (int i = 0; i < 2; i++) {
        fixture(&f, &r, &empty[i], NK_F32, NK_F32, NK_F32, NKT_STRIDED, GNT_STAT_FLAT);
        describe(&f, &p, "empty");
        gnt_snap_all(&f);
        NKT_OK(ctx, train(ctx, &p, &f, 1));
        NKT_OK(ctx, infer(ctx, &p, &f));
        assert_true(gnt_all_untouched(&f));
        size_t bytes;
        assert_int_equal(nk_instancenorm_workspace_size(&f.x.t, &bytes), NK_OK);
        gnt_free(&f);
    }

    /* rank 2 is refused by every entry point (no spatial axis) */
    static const shape r2 = {2, {4, 3}};
    fixture(&f, &r, &r2, NK_F32, NK_F32, NK_F32, NKT_CONTIG, GNT_STAT_FLAT);
    describe(&f, &p, "rank 2");
    gnt_snap_all(&f);
    NKT_STATUS(ctx, train(ctx, &p, &f, 1), NK_ERR_SHAPE);
    NKT_MSG_HAS(ctx, "instancenorm: x must have rank 3", "[4, 3]");
    NKT_STATUS(ctx, infer(ctx, &p, &f), NK_ERR_SHAPE);
    NKT_STATUS(ctx, backward(ctx, &p, &f), NK_ERR_SHAPE);
    size_t bytes;
    assert_int_equal(nk_instancenorm_workspace_size(&f.x.t, &bytes), NK_ERR_SHAPE);
    assert_true(gnt_all_untouched(&f));
    gnt_free(&f);
    nk_ctx_destroy(ctx);
}

static void test_nonfinite(void **state) {
    (void)state;
    static const shape sh = {3, {2, 3, 6}};
    nkt_rng r = nkt_rng_make(71);
    gnt_fix f;
    fixture(&f, &r, &sh, NK_F64, NK_F64, NK_F64, NKT_CHLAST, GNT_STAT_FLAT);
    f.xv[4 * 6 + 1] = NAN; /* sample 1, channel 1 */
    gnt_set_x(&f, f.xv);
    nk_instancenorm_params p;
    params(&p, 1e-5, 0.1, 0);
    describe(&f, &p, "NaN in (1, 1)");
    nk_ctx *ctx = nkt_ctx(1);
    nkt_snap(&f.rmean);
    nkt_snap(&f.rvar);
    NKT_STATUS(ctx, train(ctx, &p, &f, 1), NK_WARN_NONFINITE_STATS);
    NKT_MSG_HAS(ctx, "instancenorm: statistics of sample 1, channel 1", "running statistics left unchanged");
    assert_true(nkt_same_as_snap(&f.rmean) && nkt_same_as_snap(&f.rvar));
    double *y = gnt_read(&f.y), want[36];
    gno_forward(&f.g, p.eps, f.xv, NULL, NULL, want, NULL, NULL, NULL);
    NKT_CLOSE("y of sample 0", y, want, 18, TOL_F64_RESULT);
    free(y);
    nk_ctx_destroy(ctx);
    gnt_free(&f);
}

/* ---- bad input ---------------------------------------------------------------------------- */

enum { TRAIN, INFER, BWD };

typedef struct bad_case {
    const char *name;
    int which;
    nk_status want;
    const char *needle;
} bad_case;

static nk_status call_bad(nk_ctx *ctx, int i, gnt_fix *f, const bad_case **bc) {
    static const bad_case CASES[] = {
        {"params NULL", TRAIN, NK_ERR_NULL, "params is NULL"},
        {"eps < 0", INFER, NK_ERR_VALUE, "eps must be finite"},
        {"momentum > 1", TRAIN, NK_ERR_VALUE, "momentum must be in [0, 1]"},
        {"momentum NaN with running statistics", TRAIN, NK_ERR_VALUE, "momentum"},
        {"unknown flag", TRAIN, NK_ERR_VALUE, "unknown flags"},
        {"x NULL", TRAIN, NK_ERR_NULL, "x is NULL"},
        {"y shape", TRAIN, NK_ERR_SHAPE, "y has shape"},
        {"y same memory other strides", INFER, NK_ERR_VALUE, "shares memory"},
        {"gamma NULL with scale", TRAIN, NK_ERR_NULL, "gamma is NULL"},
        {"beta length", INFER, NK_ERR_SHAPE, "beta must have shape [3]"},
        {"running_mean without running_var", TRAIN, NK_ERR_NULL, "both be given"},
        {"running_var length", TRAIN, NK_ERR_SHAPE, "running_var must have shape [3]"},
        {"save_mean count", TRAIN, NK_ERR_SHAPE, "save_mean must hold 6 values"},
        {"save_invstd dtype", TRAIN, NK_ERR_DTYPE, "save_invstd"},
        {"inference running_mean NULL", INFER, NK_ERR_NULL, "running_mean is NULL"},
        {"inference running_var + eps <= 0", INFER, NK_ERR_VALUE, "running_var[2] + eps"},
        {"backward save_invstd NULL", BWD, NK_ERR_NULL, "save_invstd is NULL"},
        {"backward dbeta dtype", BWD, NK_ERR_DTYPE, "dbeta"},
        {"backward dx shape", BWD, NK_ERR_SHAPE, "dx has shape"},
    };
    const int ncases = (int)(sizeof CASES / sizeof CASES[0]);
    if (i >= ncases) return 1;
    *bc = &CASES[i];
    nk_instancenorm_params p, *pp = &p;
    params(&p, 1e-5, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
    nk_tensor x = f->x.t, y = f->y.t, dy = f->dy.t, dx = f->dx.t, gm = f->gamma.t, bt = f->beta.t;
    nk_tensor sm = f->smean.t, si = f->sinv.t, dg = f->dgamma.t, db = f->dbeta.t;
    nk_tensor rm = f->rmean.t, rv = f->rvar.t;
    nk_tensor *px = &x, *pg = &gm, *prm = &rm, *prv = &rv, *psi = &si;
    switch (i) {
    case 0: pp = NULL; break;
    case 1: p.eps = -1e-5; break;
    case 2: p.momentum = 1.5; break;
    case 3: p.momentum = NAN; break;
    case 4: p.flags = 0x4; break;
    case 5: px = NULL; break;
    case 6: y.dims[1] = 4; break;
    case 7: y.data = x.data, y.strides[2] += 1; break;
    case 8: pg = NULL; break;
    case 9: bt.dims[0] = 2; break;
    case 10: prv = NULL; break;
    case 11: rv.dims[0] = 4; break;
    case 12: sm.dims[0] = 5, sm.ndim = 1; break;
    case 13: si.dtype = NK_U8; break;
    case 14: prm = NULL; break;
    case 15: {
        double v[3] = {1.0, 0.5, -1.0}; /* running_var[2] + eps < 0 */
        nkt_set(&f->rvar, v);
        nkt_snap(&f->rvar); /* this change is the case's, not the call's */
        break;
    }
    case 16: psi = NULL; break;
    case 17: db.dtype = NK_U8; break;
    case 18: dx.ndim = 3; break;
    }
    switch (CASES[i].which) {
    case TRAIN:
        return nk_instancenorm_forward_train(ctx, pp, px, pg, &bt, &y, &sm, psi, prm, prv, NULL, 0);
    case INFER:
        return nk_instancenorm_forward_inference(ctx, pp, px, pg, &bt, prm, prv, &y);
    default:
        return nk_instancenorm_backward(ctx, pp, px, &dy, pg, &sm, psi, &dx, &dg, &db, NULL, 0);
    }
}

static void test_bad_input(void **state) {
    (void)state;
    static const shape sh = {4, {2, 3, 4, 5}};
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
        nkt_rng r = nkt_rng_make(41);
        gnt_fix f;
        fixture(&f, &r, &sh, NK_F32, NK_F32, NK_F64, (nkt_layout)lay, GNT_STAT_NG);
        nk_ctx *ctx = nkt_ctx(2);
        nk_instancenorm_params p;
        params(&p, 1e-5, 0.1, NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT);
        NKT_OK(ctx, train(ctx, &p, &f, 0)); /* saved statistics for the backward cases */
        for (int i = 0;; i++) {
            const bad_case *bc = NULL;
            gnt_snap_all(&f);
            nk_status s = call_bad(ctx, i, &f, &bc);
            if (!bc) break;
            char d[320];
            nkt_case("%s (%s)", bc->name, gnt_desc(&f, d, sizeof d));
            NKT_STATUS(ctx, s, bc->want);
            NKT_MSG_HAS(ctx, "instancenorm: ", bc->needle);
            if (!gnt_all_untouched(&f)) fail();
        }
        nk_ctx_destroy(ctx);
        gnt_free(&f);
    }
}

/* As PyTorch (and batch norm), the momentum is validated only where a running update uses it. */
static void test_momentum_checked_only_when_used(void **state) {
    (void)state;
    static const shape sh = {3, {2, 3, 4}};
    nkt_rng r = nkt_rng_make(81);
    gnt_fix f;
    fixture(&f, &r, &sh, NK_F32, NK_F32, NK_F32, NKT_CONTIG, GNT_STAT_FLAT);
    nk_instancenorm_params p;
    params(&p, 1e-5, 7.0, 0);
    describe(&f, &p, "momentum out of range");
    nk_ctx *ctx = nkt_ctx(1);
    NKT_OK(ctx, train(ctx, &p, &f, 0));
    NKT_OK(ctx, infer(ctx, &p, &f));
    NKT_OK(ctx, backward(ctx, &p, &f));
    gnt_snap_all(&f);
    NKT_STATUS(ctx, train(ctx, &p, &f, 1), NK_ERR_VALUE);
    NKT_MSG_HAS(ctx, "instancenorm: momentum must be in [0, 1]", "7");
    assert_true(gnt_all_untouched(&f));
    nk_ctx_destroy(ctx);
    gnt_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_random_vs_oracle),
        cmocka_unit_test(test_equals_groupnorm),
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_threads_and_layouts_bitwise),
        cmocka_unit_test(test_in_place_and_workspace),
        cmocka_unit_test(test_degenerate),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_momentum_checked_only_when_used),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
