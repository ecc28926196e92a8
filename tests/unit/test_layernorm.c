/* Layer normalization (nk_layernorm_*) and layer norm over channels (nk_layernorm_channels_*):
 * exact values, random shapes/axes/layouts against the long-double oracle, finite differences,
 * bad input (nothing written), bitwise equality across threads and layouts, in place, empty
 * and degenerate shapes, large means, caller workspaces. Seeds: $RNT_SEED overrides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normkit.h"
#include "support/rownorm_support.h"

static nk_ctx *ctx;

static int setup(void **state) {
    (void)state;
    return nk_ctx_create(&ctx) == NK_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    nk_ctx_destroy(ctx);
    return 0;
}

/* Parameter tensor of K values: form 0 = dims x.dims[a:] (padded strides), 1 = 1-D contiguous,
 * 2 = 1-D with stride 2. */
static void alloc_param(rnt_buf *b, nk_dtype dt, int form, int ndim, const int64_t *dims,
                        unsigned kept_mask, int64_t K) {
    if (form == 0) {
        int64_t nd[NK_MAX_DIMS];
        int n = 0;
        for (int i = 0; i < ndim; i++)
            if (!((kept_mask >> i) & 1u)) nd[n++] = dims[i];
        assert_int_equal(rnt_alloc(b, dt, n, nd, RNT_PADDED), 0);
    } else if (form == 1) {
        assert_int_equal(rnt_alloc(b, dt, 1, &K, RNT_CONTIG), 0);
    } else {
        const int64_t d2[2] = {K, 2};
        assert_int_equal(rnt_alloc(b, dt, 2, d2, RNT_CONTIG), 0);
        b->t.ndim = 1;
        b->t.dims[0] = K;
        b->t.strides[0] = 2;
    }
}

typedef struct ln_case {
    nk_dtype dt;
    int ndim;
    int64_t dims[NK_MAX_DIMS];
    int axis;
    int xlay;
    int gform;
    nk_dtype pdt;
    unsigned flags;
    double eps;
} ln_case;

/* Forward and backward of one case against the oracle. Returns 1 when everything matched. */
static int ln_case_run(const ln_case *c, uint64_t seed) {
    rnt_rng rng;
    rnt_rng_init(&rng, seed);
    const unsigned km = rnt_leading_mask(c->axis, c->ndim);
    int64_t R, K;
    rnt_rows(c->ndim, c->dims, km, &R, &K);
    rnt_buf x, y, g, b, sm, si, dy, dx, dg, db;
    assert_int_equal(rnt_alloc(&x, c->dt, c->ndim, c->dims, c->xlay), 0);
    assert_int_equal(rnt_alloc(&y, c->dt, c->ndim, c->dims, (c->xlay + 1) % RNT_NLAYOUTS), 0);
    assert_int_equal(rnt_alloc(&dy, c->dt, c->ndim, c->dims, (c->xlay + 3) % RNT_NLAYOUTS), 0);
    assert_int_equal(rnt_alloc(&dx, c->dt, c->ndim, c->dims, (c->xlay + 2) % RNT_NLAYOUTS), 0);
    alloc_param(&g, c->pdt, c->gform, c->ndim, c->dims, km, K);
    alloc_param(&b, c->pdt, (c->gform + 1) % 3, c->ndim, c->dims, km, K);
    alloc_param(&dg, c->pdt, (c->gform + 2) % 3, c->ndim, c->dims, km, K);
    alloc_param(&db, NK_F64, c->gform, c->ndim, c->dims, km, K);
    /* ONNX keepdims shape for the mean (float32 ones make the backward recompute the row
     * means), flat [R] for invstd */
    int64_t sdims[NK_MAX_DIMS];
    for (int i = 0; i < c->ndim; i++) sdims[i] = ((km >> i) & 1u) ? c->dims[i] : 1;
    assert_int_equal(rnt_alloc(&sm, c->pdt, c->ndim, sdims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&si, c->dt, 1, &R, RNT_CONTIG), 0);
    rnt_fill_normal(&x.t, &rng, 0.5, 2.0);
    rnt_fill_normal(&g.t, &rng, 1.0, 0.5);
    rnt_fill_normal(&b.t, &rng, 0.0, 1.0);
    rnt_fill_normal(&dy.t, &rng, 0.0, 1.0);

    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    p.axis = c->axis;
    p.eps = c->eps;
    p.flags = c->flags;
    nk_status s = nk_layernorm_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &si.t, NULL, 0);
    if (s != NK_OK) fprintf(stderr, "forward: %s\n", nk_ctx_last_error(ctx));
    assert_int_equal(s, NK_OK);
    s = nk_layernorm_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &si.t, &dx.t, &dg.t, &db.t,
                              NULL, 0);
    if (s != NK_OK) fprintf(stderr, "backward: %s\n", nk_ctx_last_error(ctx));
    assert_int_equal(s, NK_OK);

    const int64_t n = x.numel;
    double *xd = rnt_doubles_of(&x.t), *gd = rnt_doubles_of(&g.t), *bd = rnt_doubles_of(&b.t);
    double *dyd = rnt_doubles_of(&dy.t);
    double *yo = malloc((size_t)(n + 1) * sizeof *yo), *dxo = malloc((size_t)(n + 1) * sizeof *dxo);
    double *s0 = malloc((size_t)(R + 1) * sizeof *s0), *s1 = malloc((size_t)(R + 1) * sizeof *s1);
    double *dgo = malloc((size_t)(K + 1) * sizeof *dgo), *dbo = malloc((size_t)(K + 1) * sizeof *dbo);
    const double *gu = (c->flags & NK_NORM_USE_SCALE) ? gd : NULL;
    const double *bu = (c->flags & NK_NORM_USE_SHIFT) ? bd : NULL;
    rnt_oracle_forward(RNT_LN, c->eps, c->ndim, c->dims, km, xd, gu, bu, yo, s0, s1);
    rnt_oracle_backward(RNT_LN, c->eps, c->ndim, c->dims, km, xd, dyd, gu, dxo, dgo, dbo);
    double *yl = rnt_doubles_of(&y.t), *sml = rnt_doubles_of(&sm.t), *sil = rnt_doubles_of(&si.t);
    double *dxl = rnt_doubles_of(&dx.t), *dgl = rnt_doubles_of(&dg.t), *dbl = rnt_doubles_of(&db.t);
    int ok = rnt_check("layernorm y", seed, yl, yo, n, RNT_TOL_Y, c->dt);
    ok &= rnt_check("layernorm save_mean", seed, sml, s0, R, RNT_TOL_STAT, c->pdt);
    ok &= rnt_check("layernorm save_invstd", seed, sil, s1, R, RNT_TOL_STAT, c->dt);
    ok &= rnt_check("layernorm dx", seed, dxl, dxo, n, RNT_TOL_DX, c->dt);
    /* dgamma uses save_invstd as stored (float32 for float32 data): the coarser dtype rules */
    const nk_dtype coarse = c->dt == NK_F32 || c->pdt == NK_F32 ? NK_F32 : NK_F64;
    ok &= rnt_check("layernorm dgamma", seed, dgl, dgo, K, RNT_TOL_DPARAM, coarse);
    ok &= rnt_check("layernorm dbeta", seed, dbl, dbo, K, RNT_TOL_DPARAM, c->dt);
    if (!ok) {
        fprintf(stderr, "  case: rank %d dims", c->ndim);
        for (int i = 0; i < c->ndim; i++) fprintf(stderr, " %lld", (long long)c->dims[i]);
        fprintf(stderr, " axis %d layout %d gform %d flags %u eps %g\n", c->axis, c->xlay,
                c->gform, c->flags, c->eps);
    }
    free(xd), free(gd), free(bd), free(dyd), free(yo), free(dxo), free(s0), free(s1);
    free(dgo), free(dbo), free(yl), free(sml), free(sil), free(dxl), free(dgl), free(dbl);
    rnt_free(&x), rnt_free(&y), rnt_free(&g), rnt_free(&b), rnt_free(&sm), rnt_free(&si);
    rnt_free(&dy), rnt_free(&dx), rnt_free(&dg), rnt_free(&db);
    return ok;
}

/* ---- exact values ------------------------------------------------------------------------ */

static void test_exact(void **state) {
    (void)state;
    /* rows [-2,-2,2,2] and [8,8,12,12]: mean 0 / 10, var 4, invstd 1/2 (eps 0): all exact */
    double x[8] = {-2, -2, 2, 2, 8, 8, 12, 12}, y[8], g[4] = {2, 2, 2, 2}, b[4] = {1, 1, 1, 1};
    double m[2], is[2];
    const int64_t dims[2] = {2, 4};
    nk_tensor tx, ty;
    nk_tensor_contiguous(&tx, x, NK_F64, 2, dims);
    nk_tensor_contiguous(&ty, y, NK_F64, 2, dims);
    nk_tensor tg = nk_vec(g, NK_F64, 4), tb = nk_vec(b, NK_F64, 4);
    nk_tensor tm = nk_vec(m, NK_F64, 2), ti = nk_vec(is, NK_F64, 2);
    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    assert_true(p.eps == 1e-5 && p.axis == -1 && p.flags == (NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT));
    p.eps = 0.0;
    assert_int_equal(nk_layernorm_forward(ctx, &p, &tx, &tg, &tb, &ty, &tm, &ti, NULL, 0), NK_OK);
    const double want[8] = {-1, -1, 3, 3, -1, -1, 3, 3};
    for (int i = 0; i < 8; i++) assert_true(y[i] == want[i]);
    assert_true(m[0] == 0.0 && m[1] == 10.0 && is[0] == 0.5 && is[1] == 0.5);
}

/* ---- random cases ------------------------------------------------------------------------ */

static void test_random_shapes(void **state) {
    (void)state;
    const uint64_t seed0 = rnt_seed(0x1a7e5);
    static const struct {
        int ndim;
        int64_t dims[4];
    } shapes[] = {{1, {7}}, {2, {3, 5}}, {2, {1, 23}}, {3, {2, 3, 5}}, {4, {2, 3, 4, 5}},
                  {4, {2, 1, 7, 3}}, {3, {3, 17, 1}}};
    static const unsigned flagsets[] = {NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT, 0,
                                        NK_NORM_USE_SCALE, NK_NORM_USE_SHIFT};
    int ncase = 0, bad = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int nd = shapes[si].ndim;
        for (int axis = -nd; axis < nd; axis++) {
            for (int dti = 0; dti < 2; dti++) {
                ln_case c;
                memset(&c, 0, sizeof c);
                c.dt = dti ? NK_F64 : NK_F32;
                c.ndim = nd;
                memcpy(c.dims, shapes[si].dims, sizeof shapes[si].dims);
                c.axis = axis;
                c.xlay = ncase % RNT_NLAYOUTS;
                c.gform = ncase % 3;
                c.pdt = (ncase / 3) % 2 ? NK_F64 : c.dt;
                c.flags = flagsets[ncase % 4];
                c.eps = ncase % 5 == 0 ? 0.1 : 1e-5;
                bad += !ln_case_run(&c, seed0 + (uint64_t)ncase);
                ncase++;
            }
        }
    }
    if (bad) fprintf(stderr, "%d of %d cases failed\n", bad, ncase);
    assert_int_equal(bad, 0);
}

/* Rows longer than one block (K > NK_BLOCK_ELEMS): block moments merged, block partials. */
static void test_long_rows(void **state) {
    (void)state;
    const uint64_t seed = rnt_seed(0x10a9);
    ln_case c = {NK_F64, 2, {3, 20000}, -1, RNT_CONTIG, 1, NK_F64,
                 NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT, 1e-5};
    assert_true(ln_case_run(&c, seed));
    ln_case c2 = {NK_F32, 3, {2, 150, 70}, 1, RNT_PADDED, 0, NK_F32, NK_NORM_USE_SCALE, 1e-5};
    /* float32 statistics: the backward recomputes the block-merged row means */
    assert_true(ln_case_run(&c2, seed + 1));
}

/* ---- finite differences ------------------------------------------------------------------ */

/* L = sum w * layernorm(x) with the library forward in double. */
static double ln_loss(const nk_layernorm_params *p, int ndim, const int64_t *dims, double *x,
                      double *g, double *b, const double *w, int64_t n, int64_t K) {
    double *y = malloc((size_t)n * sizeof *y);
    nk_tensor tx, ty;
    nk_tensor_contiguous(&tx, x, NK_F64, ndim, dims);
    nk_tensor_contiguous(&ty, y, NK_F64, ndim, dims);
    nk_tensor tg = nk_vec(g, NK_F64, K), tb = nk_vec(b, NK_F64, K);
    assert_int_equal(nk_layernorm_forward(ctx, p, &tx, &tg, &tb, &ty, NULL, NULL, NULL, 0), NK_OK);
    long double s = 0;
    for (int64_t i = 0; i < n; i++) s += (long double)w[i] * y[i];
    free(y);
    return (double)s;
}

static void fd_grad(double *v, int64_t m, double *out, const nk_layernorm_params *p, int ndim,
                    const int64_t *dims, double *x, double *g, double *b, const double *w,
                    int64_t n, int64_t K) {
    for (int64_t i = 0; i < m; i++) {
        const double v0 = v[i], h = 1e-5 * (fabs(v0) > 1 ? fabs(v0) : 1);
        v[i] = v0 + h;
        const double lp = ln_loss(p, ndim, dims, x, g, b, w, n, K);
        v[i] = v0 - h;
        const double lm = ln_loss(p, ndim, dims, x, g, b, w, n, K);
        v[i] = v0;
        out[i] = (lp - lm) / (2 * h);
    }
}

static void test_finite_differences(void **state) {
    (void)state;
    const uint64_t seed = rnt_seed(0xfd01);
    static const struct {
        int ndim;
        int64_t dims[3];
        int axis;
    } cases[] = {{3, {2, 3, 4}, -1}, {3, {2, 3, 4}, 1}, {2, {3, 5}, 0}, {1, {6}, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        rnt_rng rng;
        rnt_rng_init(&rng, seed + ci);
        const int nd = cases[ci].ndim;
        const int64_t *dims = cases[ci].dims;
        const unsigned km = rnt_leading_mask(cases[ci].axis, nd);
        int64_t R, K;
        rnt_rows(nd, dims, km, &R, &K);
        const int64_t n = R * K;
        double x[64], g[64], b[64], w[64], dx[64], dg[64], db[64], fx[64], fg[64], fb[64];
        double sm[64], si[64];
        for (int64_t i = 0; i < n; i++) x[i] = rnt_normal(&rng), w[i] = rnt_normal(&rng);
        for (int64_t j = 0; j < K; j++) g[j] = 1 + 0.5 * rnt_normal(&rng), b[j] = rnt_normal(&rng);
        nk_layernorm_params p;
        nk_layernorm_params_default(&p);
        p.axis = cases[ci].axis;
        p.eps = 0.01;
        nk_tensor tx, tw, tdx;
        nk_tensor_contiguous(&tx, x, NK_F64, nd, dims);
        nk_tensor_contiguous(&tw, w, NK_F64, nd, dims);
        nk_tensor_contiguous(&tdx, dx, NK_F64, nd, dims);
        nk_tensor tg = nk_vec(g, NK_F64, K), tb = nk_vec(b, NK_F64, K);
        nk_tensor tdg = nk_vec(dg, NK_F64, K), tdb = nk_vec(db, NK_F64, K);
        nk_tensor tsm = nk_vec(sm, NK_F64, R), tsi = nk_vec(si, NK_F64, R);
        double y[64];
        nk_tensor ty;
        nk_tensor_contiguous(&ty, y, NK_F64, nd, dims);
        assert_int_equal(nk_layernorm_forward(ctx, &p, &tx, &tg, &tb, &ty, &tsm, &tsi, NULL, 0), NK_OK);
        assert_int_equal(nk_layernorm_backward(ctx, &p, &tx, &tw, &tg, &tsm, &tsi, &tdx, &tdg,
                                               &tdb, NULL, 0), NK_OK);
        fd_grad(x, n, fx, &p, nd, dims, x, g, b, w, n, K);
        fd_grad(g, K, fg, &p, nd, dims, x, g, b, w, n, K);
        fd_grad(b, K, fb, &p, nd, dims, x, g, b, w, n, K);
        assert_true(rnt_check("layernorm fd dx", seed + ci, dx, fx, n, RNT_TOL_FD, NK_F64));
        assert_true(rnt_check("layernorm fd dgamma", seed + ci, dg, fg, K, RNT_TOL_FD, NK_F64));
        assert_true(rnt_check("layernorm fd dbeta", seed + ci, db, fb, K, RNT_TOL_FD, NK_F64));
    }
}

/* ---- bad input: an error code, a message naming the op, nothing written ------------------ */

typedef struct bad_env {
    rnt_buf x, y, g, b, sm, si, dy, dx, dg, db;
    nk_layernorm_params p;
} bad_env;

static void bad_env_init(bad_env *e) {
    const int64_t dims[3] = {2, 3, 4}, K = 4, R = 6;
    rnt_rng rng;
    rnt_rng_init(&rng, 7);
    assert_int_equal(rnt_alloc(&e->x, NK_F32, 3, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&e->dy, NK_F32, 3, dims, RNT_CONTIG), 0);
    rnt_fill_normal(&e->x.t, &rng, 0, 1);
    rnt_fill_normal(&e->dy.t, &rng, 0, 1);
    assert_int_equal(rnt_alloc(&e->g, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&e->b, NK_F32, 1, &K, RNT_CONTIG), 0);
    rnt_fill_normal(&e->g.t, &rng, 1, 0.1);
    rnt_fill_normal(&e->b.t, &rng, 0, 0.1);
    assert_int_equal(rnt_alloc(&e->sm, NK_F32, 1, &R, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&e->si, NK_F32, 1, &R, RNT_CONTIG), 0);
    for (int64_t r = 0; r < R; r++) rnt_set(&e->sm.t, r, 0.0), rnt_set(&e->si.t, r, 1.0);
    assert_int_equal(rnt_alloc(&e->y, NK_F32, 3, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&e->dx, NK_F32, 3, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&e->dg, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&e->db, NK_F32, 1, &K, RNT_CONTIG), 0);
    nk_layernorm_params_default(&e->p);
}

static void bad_env_free(bad_env *e) {
    rnt_free(&e->x), rnt_free(&e->y), rnt_free(&e->g), rnt_free(&e->b), rnt_free(&e->sm);
    rnt_free(&e->si), rnt_free(&e->dy), rnt_free(&e->dx), rnt_free(&e->dg), rnt_free(&e->db);
}

static nk_status fwd(bad_env *e, nk_tensor *x, nk_tensor *g, nk_tensor *b, nk_tensor *y,
                     nk_tensor *sm, nk_tensor *si) {
    return nk_layernorm_forward(ctx, &e->p, x, g, b, y, sm, si, NULL, 0);
}

/* The outputs of every failed call are still pure sentinel. */
static void expect_untouched(const bad_env *e) {
    assert_true(rnt_untouched(&e->y) && rnt_untouched(&e->dx) && rnt_untouched(&e->dg) &&
                rnt_untouched(&e->db));
}

#define EXPECT_ERR(call, want)                                                                 \
    do {                                                                                       \
        nk_status s_ = (call);                                                                 \
        if (s_ != (want)) fprintf(stderr, "%s -> %d (%s)\n", #call, (int)s_, nk_ctx_last_error(ctx)); \
        assert_int_equal(s_, (want));                                                          \
        assert_true(strncmp(nk_ctx_last_error(ctx), "layernorm", 9) == 0);                     \
        expect_untouched(&e);                                                                  \
    } while (0)

static void test_bad_input(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    nk_tensor t;
    /* NULLs */
    assert_int_equal(nk_layernorm_forward(NULL, &e.p, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL, NULL, 0), NK_ERR_NULL);
    EXPECT_ERR(nk_layernorm_forward(ctx, NULL, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL, NULL, 0), NK_ERR_NULL);
    EXPECT_ERR(fwd(&e, NULL, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_NULL);
    EXPECT_ERR(fwd(&e, &e.x.t, NULL, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_NULL);
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, NULL, &e.y.t, NULL, NULL), NK_ERR_NULL);
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, NULL, NULL, NULL), NK_ERR_NULL);
    t = e.x.t;
    t.data = NULL;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_NULL);
    /* gamma shape: must be x.dims[axis:] or 1-D of K */
    t = e.g.t;
    t.dims[0] = 3;
    EXPECT_ERR(fwd(&e, &e.x.t, &t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_SHAPE);
    assert_non_null(strstr(nk_ctx_last_error(ctx), "gamma"));
    e.p.axis = 1; /* normalized shape [3, 4], K = 12: a [4] gamma no longer fits */
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_SHAPE);
    assert_non_null(strstr(nk_ctx_last_error(ctx), "[3, 4]"));
    e.p.axis = -1;
    t = e.b.t;
    t.ndim = 2;
    t.dims[0] = 1;
    t.dims[1] = 4;
    t.strides[1] = 1;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &t, &e.y.t, NULL, NULL), NK_ERR_SHAPE);
    /* y shape / dtype */
    t = e.y.t;
    t.dims[2] = 5;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &t, NULL, NULL), NK_ERR_SHAPE);
    t = e.y.t;
    t.dtype = NK_F64;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &t, NULL, NULL), NK_ERR_DTYPE);
    t = e.x.t;
    t.dtype = NK_U8;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_DTYPE);
    t = e.g.t;
    t.dtype = (nk_dtype)7;
    EXPECT_ERR(fwd(&e, &e.x.t, &t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_DTYPE);
    /* axis out of range, eps, flags */
    e.p.axis = 3;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    e.p.axis = -4;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    e.p.axis = -1;
    e.p.eps = -1e-5;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    e.p.eps = NAN;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    e.p.eps = INFINITY;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    e.p.eps = 1e-5;
    e.p.flags = 0x8;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    nk_layernorm_params_default(&e.p);
    /* rank 0 and rank 9 */
    t = e.x.t;
    t.ndim = 0;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_SHAPE);
    t.ndim = 9;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_SHAPE);
    /* negative dims / strides, overflow */
    t = e.x.t;
    t.strides[0] = -1;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_VALUE);
    t = e.x.t;
    t.dims[0] = -2;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_SHAPE);
    t = e.x.t;
    t.dims[0] = INT64_MAX / 2;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_OVERFLOW);
    t = e.x.t;
    t.strides[0] = INT64_MAX / 2;
    EXPECT_ERR(fwd(&e, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL), NK_ERR_OVERFLOW);
    /* row statistics with the wrong element count */
    t = e.sm.t;
    t.dims[0] = 5;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, &t, &e.si.t), NK_ERR_SHAPE);
    assert_non_null(strstr(nk_ctx_last_error(ctx), "save_mean"));
    t = e.si.t;
    t.ndim = 2;
    t.dims[0] = 2;
    t.dims[1] = 2;
    EXPECT_ERR(fwd(&e, &e.x.t, &e.g.t, &e.b.t, &e.y.t, &e.sm.t, &t), NK_ERR_SHAPE);
    /* y overlapping x with other strides */
    t = e.x.t;
    t.strides[2] = 2;
    t.dims[2] = 2;
    nk_tensor xs = e.x.t;
    xs.dims[2] = 2;
    EXPECT_ERR(fwd(&e, &xs, &e.g.t, &e.b.t, &t, NULL, NULL), NK_ERR_VALUE);
    /* workspace too small */
    char small[8];
    EXPECT_ERR(nk_layernorm_forward(ctx, &e.p, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL, small, sizeof small),
               NK_ERR_WORKSPACE);
    /* backward: NULL required statistics, wrong dgamma shape, dy shape, dx aliasing x */
    void *snap_sm = rnt_snapshot(&e.sm), *snap_si = rnt_snapshot(&e.si);
    EXPECT_ERR(nk_layernorm_backward(ctx, &e.p, &e.x.t, &e.dy.t, &e.g.t, NULL, &e.si.t, &e.dx.t, &e.dg.t, &e.db.t, NULL, 0),
               NK_ERR_NULL);
    EXPECT_ERR(nk_layernorm_backward(ctx, &e.p, &e.x.t, &e.dy.t, &e.g.t, &e.sm.t, NULL, &e.dx.t, &e.dg.t, &e.db.t, NULL, 0),
               NK_ERR_NULL);
    EXPECT_ERR(nk_layernorm_backward(ctx, &e.p, &e.x.t, NULL, &e.g.t, &e.sm.t, &e.si.t, &e.dx.t, &e.dg.t, &e.db.t, NULL, 0),
               NK_ERR_NULL);
    t = e.dg.t;
    t.dims[0] = 2;
    EXPECT_ERR(nk_layernorm_backward(ctx, &e.p, &e.x.t, &e.dy.t, &e.g.t, &e.sm.t, &e.si.t, &e.dx.t, &t, &e.db.t, NULL, 0),
               NK_ERR_SHAPE);
    t = e.dy.t;
    t.dims[1] = 2;
    EXPECT_ERR(nk_layernorm_backward(ctx, &e.p, &e.x.t, &t, &e.g.t, &e.sm.t, &e.si.t, &e.dx.t, &e.dg.t, &e.db.t, NULL, 0),
               NK_ERR_SHAPE);
    t = e.x.t;
    t.strides[0] = 1; /* shares x's memory with other strides */
    EXPECT_ERR(nk_layernorm_backward(ctx, &e.p, &e.x.t, &e.dy.t, &e.g.t, &e.sm.t, &e.si.t, &t, &e.dg.t, &e.db.t, NULL, 0),
               NK_ERR_VALUE);
    assert_true(rnt_same_as(&e.sm, snap_sm) && rnt_same_as(&e.si, snap_si));
    free(snap_sm);
    free(snap_si);
    /* channels variant: rank 1 rejected, gamma must have C elements */
    t = e.x.t;
    t.ndim = 1;
    assert_int_equal(nk_layernorm_channels_forward(ctx, &e.p, &t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL, NULL, 0),
                     NK_ERR_SHAPE);
    assert_int_equal(nk_layernorm_channels_forward(ctx, &e.p, &e.x.t, &e.g.t, &e.b.t, &e.y.t, NULL, NULL, NULL, 0),
                     NK_ERR_SHAPE); /* C = 3, gamma has 4 */
    assert_non_null(strstr(nk_ctx_last_error(ctx), "layernorm_channels: gamma"));
    assert_true(rnt_untouched(&e.y));
    /* the size query validates too */
    size_t bytes = 0;
    e.p.axis = 5;
    assert_int_equal(nk_layernorm_workspace_size(&e.p, &e.x.t, &bytes), NK_ERR_VALUE);
    assert_int_equal(nk_layernorm_workspace_size(NULL, &e.x.t, &bytes), NK_ERR_NULL);
    bad_env_free(&e);
}

/* ---- empty and degenerate ---------------------------------------------------------------- */

static void test_empty_and_degenerate(void **state) {
    (void)state;
    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    const int64_t d0[2] = {0, 4}, K = 4, zero = 0;
    rnt_buf x, y, g, b, sm, dg, db, dy, dx;
    assert_int_equal(rnt_alloc(&x, NK_F32, 2, d0, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&y, NK_F32, 2, d0, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dy, NK_F32, 2, d0, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dx, NK_F32, 2, d0, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&g, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&b, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&sm, NK_F32, 1, &zero, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dg, NK_F64, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&db, NK_F64, 1, &K, RNT_CONTIG), 0);
    x.t.data = y.t.data = NULL; /* empty tensors need no data */
    /* R = 0: a no-op that touches nothing */
    assert_int_equal(nk_layernorm_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &sm.t, NULL, 0), NK_OK);
    assert_true(rnt_untouched(&sm));
    /* backward with no rows: the parameter gradients are empty sums */
    assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &sm.t, &dx.t, &dg.t, &db.t, NULL, 0),
                     NK_OK);
    for (int j = 0; j < 4; j++) assert_true(rnt_get(&dg.t, j) == 0.0 && rnt_get(&db.t, j) == 0.0);
    /* K = 0 with rows: degenerate, nothing written */
    const int64_t d1[2] = {3, 0}, R = 3;
    rnt_buf x1, y1, s1;
    assert_int_equal(rnt_alloc(&x1, NK_F32, 2, d1, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&y1, NK_F32, 2, d1, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&s1, NK_F32, 1, &R, RNT_CONTIG), 0);
    nk_tensor g0 = nk_vec(NULL, NK_F32, 0);
    assert_int_equal(nk_layernorm_forward(ctx, &p, &x1.t, &g0, &g0, &y1.t, &s1.t, NULL, NULL, 0),
                     NK_ERR_DEGENERATE);
    assert_non_null(strstr(nk_ctx_last_error(ctx), "zero-size"));
    assert_true(rnt_untouched(&s1));
    rnt_free(&x), rnt_free(&y), rnt_free(&g), rnt_free(&b), rnt_free(&sm), rnt_free(&dg);
    rnt_free(&db), rnt_free(&dy), rnt_free(&dx), rnt_free(&x1), rnt_free(&y1), rnt_free(&s1);
}

/* ---- determinism across threads ---------------------------------------------------------- */

/* Runs forward + backward with n threads and returns the concatenated output bytes. */
static void *ln_run_threads(int nth, const int64_t *dims, int ndim, int axis, int layout,
                            size_t *bytes, int channels) {
    rnt_rng rng;
    rnt_rng_init(&rng, 0x7423);
    const unsigned km = channels ? (((1u << ndim) - 1u) & ~2u) : rnt_leading_mask(axis, ndim);
    int64_t R, K;
    rnt_rows(ndim, dims, km, &R, &K);
    rnt_buf x, y, g, b, sm, si, dy, dx, dg, db;
    assert_int_equal(rnt_alloc(&x, NK_F32, ndim, dims, layout), 0);
    assert_int_equal(rnt_alloc(&y, NK_F32, ndim, dims, layout), 0);
    assert_int_equal(rnt_alloc(&dy, NK_F32, ndim, dims, layout), 0);
    assert_int_equal(rnt_alloc(&dx, NK_F32, ndim, dims, layout), 0);
    assert_int_equal(rnt_alloc(&g, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&b, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dg, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&db, NK_F32, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&sm, NK_F32, 1, &R, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&si, NK_F32, 1, &R, RNT_CONTIG), 0);
    rnt_fill_normal(&x.t, &rng, 3.0, 2.0);
    rnt_fill_normal(&dy.t, &rng, 0.0, 1.0);
    rnt_fill_normal(&g.t, &rng, 1.0, 0.3);
    rnt_fill_normal(&b.t, &rng, 0.0, 0.3);
    assert_int_equal(nk_ctx_set_num_threads(ctx, nth), NK_OK);
    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    p.axis = axis;
    if (channels) {
        assert_int_equal(nk_layernorm_channels_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &si.t, NULL, 0), NK_OK);
        assert_int_equal(nk_layernorm_channels_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &si.t, &dx.t, &dg.t, &db.t, NULL, 0),
                         NK_OK);
    } else {
        assert_int_equal(nk_layernorm_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &si.t, NULL, 0), NK_OK);
        assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &si.t, &dx.t, &dg.t, &db.t, NULL, 0),
                         NK_OK);
    }
    assert_int_equal(nk_ctx_set_num_threads(ctx, 1), NK_OK);
    /* y, dx, dg, db, sm, si in logical row-major order, as bytes */
    const int64_t n = x.numel;
    *bytes = (size_t)(2 * n + 2 * K + 2 * R) * sizeof(float);
    float *out = malloc(*bytes), *o = out;
    for (int64_t i = 0; i < n; i++) *o++ = (float)rnt_get(&y.t, i);
    for (int64_t i = 0; i < n; i++) *o++ = (float)rnt_get(&dx.t, i);
    for (int64_t i = 0; i < K; i++) *o++ = (float)rnt_get(&dg.t, i), *o++ = (float)rnt_get(&db.t, i);
    for (int64_t i = 0; i < R; i++) *o++ = (float)rnt_get(&sm.t, i), *o++ = (float)rnt_get(&si.t, i);
    rnt_free(&x), rnt_free(&y), rnt_free(&g), rnt_free(&b), rnt_free(&sm), rnt_free(&si);
    rnt_free(&dy), rnt_free(&dx), rnt_free(&dg), rnt_free(&db);
    return out;
}

static void test_threads_bitwise(void **state) {
    (void)state;
    static const struct {
        int ndim;
        int64_t dims[4];
        int axis;
        int layout;
        int channels;
    } cases[] = {
        {2, {6, 20000}, -1, RNT_CONTIG, 0},   /* long rows: 3 blocks per row */
        {3, {40, 50, 100}, -1, RNT_PADDED, 0},/* 2000 rows: many row tasks and row blocks */
        {4, {4, 16, 30, 40}, 0, RNT_CHLAST, 1}, /* channels variant, 4800 rows of 16 */
        /* plain matrix rows (the optimized kernels' pair paths; the forward splits them into
         * one share per thread): an odd row count, so some share ends on an unpaired row,
         * and rows of 300 = 18 chunks of 16 + 12 */
        {2, {2001, 300}, -1, RNT_CONTIG, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t b1, bn;
        void *ref = ln_run_threads(1, cases[c].dims, cases[c].ndim, cases[c].axis,
                                   cases[c].layout, &b1, cases[c].channels);
        for (int nth = 2; nth <= 4; nth++) {
            void *got = ln_run_threads(nth, cases[c].dims, cases[c].ndim, cases[c].axis,
                                       cases[c].layout, &bn, cases[c].channels);
            assert_int_equal(b1, bn);
            if (memcmp(ref, got, b1) != 0)
                fprintf(stderr, "case %zu: %d threads differ from 1 thread\n", c, nth);
            assert_memory_equal(ref, got, b1);
            free(got);
        }
        free(ref);
    }
}

/* ---- in place ---------------------------------------------------------------------------- */

static void test_in_place(void **state) {
    (void)state;
    const int64_t dims[3] = {3, 4, 10};
    const int64_t K = 40, R = 3;
    rnt_rng rng;
    rnt_rng_init(&rng, 99);
    rnt_buf x, xi, y, g, b, sm, si, dy, dyi, dx;
    assert_int_equal(rnt_alloc(&x, NK_F64, 3, dims, RNT_PADDED), 0);
    assert_int_equal(rnt_alloc(&xi, NK_F64, 3, dims, RNT_PADDED), 0);
    assert_int_equal(rnt_alloc(&y, NK_F64, 3, dims, RNT_PADDED), 0);
    assert_int_equal(rnt_alloc(&dy, NK_F64, 3, dims, RNT_REVERSED), 0);
    assert_int_equal(rnt_alloc(&dyi, NK_F64, 3, dims, RNT_REVERSED), 0);
    assert_int_equal(rnt_alloc(&dx, NK_F64, 3, dims, RNT_REVERSED), 0);
    assert_int_equal(rnt_alloc(&g, NK_F64, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&b, NK_F64, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&sm, NK_F64, 1, &R, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&si, NK_F64, 1, &R, RNT_CONTIG), 0);
    rnt_fill_normal(&x.t, &rng, 1, 2);
    rnt_fill_normal(&dy.t, &rng, 0, 1);
    rnt_fill_normal(&g.t, &rng, 1, 0.2);
    rnt_fill_normal(&b.t, &rng, 0, 0.2);
    memcpy(xi.mem, x.mem, x.bytes);
    memcpy(dyi.mem, dy.mem, dy.bytes);
    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    p.axis = 1;
    assert_int_equal(nk_layernorm_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &si.t, NULL, 0), NK_OK);
    assert_int_equal(nk_layernorm_forward(ctx, &p, &xi.t, &g.t, &b.t, &xi.t, NULL, NULL, NULL, 0), NK_OK);
    assert_memory_equal(xi.mem, y.mem, y.bytes);
    assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &si.t, &dx.t, NULL, NULL, NULL, 0), NK_OK);
    assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &dyi.t, &g.t, &sm.t, &si.t, &dyi.t, NULL, NULL, NULL, 0),
                     NK_OK);
    for (int64_t i = 0; i < x.numel; i++) assert_true(rnt_get(&dyi.t, i) == rnt_get(&dx.t, i));
    rnt_free(&x), rnt_free(&xi), rnt_free(&y), rnt_free(&g), rnt_free(&b), rnt_free(&sm);
    rnt_free(&si), rnt_free(&dy), rnt_free(&dyi), rnt_free(&dx);
}

/* ---- float32 rows with a large mean ------------------------------------------------------ */

static void test_big_mean(void **state) {
    (void)state;
    const uint64_t seed = rnt_seed(0xb16);
    const int64_t dims[2] = {4, 1000}, R = 4, K = 1000, n = 4000;
    rnt_rng rng;
    rnt_rng_init(&rng, seed);
    rnt_buf x, y, dy, dx, sm, si, dg, db;
    assert_int_equal(rnt_alloc(&x, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&y, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dy, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dx, NK_F32, 2, dims, RNT_CONTIG), 0);
    /* statistics saved in float32, as ONNX's Mean and PyTorch's saved mean: the backward must
     * not use the rounded mean (its error is 5 % of the std here) */
    assert_int_equal(rnt_alloc(&sm, NK_F32, 1, &R, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&si, NK_F32, 1, &R, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dg, NK_F64, 1, &K, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&db, NK_F64, 1, &K, RNT_CONTIG), 0);
    rnt_fill_normal(&x.t, &rng, 1e4, 1e-2);
    rnt_fill_normal(&dy.t, &rng, 0, 1);
    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    p.flags = 0;
    p.eps = 0.0;
    assert_int_equal(nk_layernorm_forward(ctx, &p, &x.t, NULL, NULL, &y.t, &sm.t, &si.t, NULL, 0), NK_OK);
    assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &dy.t, NULL, &sm.t, &si.t, &dx.t, &dg.t, &db.t, NULL, 0),
                     NK_OK);
    double *xd = rnt_doubles_of(&x.t), *dyd = rnt_doubles_of(&dy.t), *yd = rnt_doubles_of(&y.t);
    double *dxd = rnt_doubles_of(&dx.t), *dgd = rnt_doubles_of(&dg.t);
    double *yo = malloc(n * sizeof *yo), *dxo = malloc(n * sizeof *dxo), *dgo = malloc(K * sizeof *dgo);
    rnt_oracle_forward(RNT_LN, 0.0, 2, dims, 1u, xd, NULL, NULL, yo, NULL, NULL);
    rnt_oracle_backward(RNT_LN, 0.0, 2, dims, 1u, xd, dyd, NULL, dxo, dgo, NULL);
    assert_true(rnt_check("layernorm big mean y", seed, yd, yo, n, RNT_TOL_BIGMEAN, NK_F32));
    assert_true(rnt_check("layernorm big mean dx", seed, dxd, dxo, n, RNT_TOL_BIGMEAN, NK_F32));
    assert_true(rnt_check("layernorm big mean dgamma", seed, dgd, dgo, K, RNT_TOL_BIGMEAN, NK_F32));
    free(xd), free(dyd), free(yd), free(dxd), free(dgd), free(yo), free(dxo), free(dgo);
    rnt_free(&x), rnt_free(&y), rnt_free(&dy), rnt_free(&dx), rnt_free(&sm), rnt_free(&si);
    rnt_free(&dg), rnt_free(&db);
}

/* ---- optimized vs reference on an output large enough to be streamed ------------------- */

/* 8192 x 1024 float32 (32 MiB, NK_STREAM_MIN_BYTES: the optimized kernels write y and dx with
 * streaming stores) with the data one element past an aligned address (the scalar head before
 * the first aligned store): layer norm and RMS norm, forward and backward (dgamma only too),
 * optimized against the reference kernels (RNT_TOL_OPT_REF), and 1 against 2 threads bitwise.
 * Means of 3 make the float32 saved mean inexact, so the backward re-centers. */
enum { BIG_R = 8192, BIG_K = 1024 };

typedef struct big_out {
    float *y, *dx, *dx2, *sm, *si;
    double *dg, *db, *dg2;
} big_out;

static void big_run(int rms, int force_ref, int threads, const float *x, const float *dy,
                    const double *g, const double *b, big_out *o) {
    const int64_t n = (int64_t)BIG_R * BIG_K, dims[2] = {BIG_R, BIG_K};
    nk_ctx *c;
    assert_int_equal(nk_ctx_create(&c), NK_OK);
    assert_int_equal(nk_ctx_set_force_ref(c, force_ref), NK_OK);
    assert_int_equal(nk_ctx_set_num_threads(c, threads), NK_OK);
    /* + 1: one element past the 64-byte aligned start of each buffer */
    float *ys = aligned_alloc(64, (size_t)(n + 16) * sizeof(float));
    float *dxs = aligned_alloc(64, (size_t)(n + 16) * sizeof(float));
    o->sm = malloc(BIG_R * sizeof(float));
    o->si = malloc(BIG_R * sizeof(float));
    o->dg = malloc(BIG_K * sizeof(double));
    o->db = malloc(BIG_K * sizeof(double));
    o->dg2 = malloc(BIG_K * sizeof(double));
    o->y = ys + 1;
    o->dx = dxs + 1;
    nk_tensor tx, ty, tdy, tdx, tg = nk_vec((void *)g, NK_F64, BIG_K), tb = nk_vec((void *)b, NK_F64, BIG_K);
    nk_tensor tsm = nk_vec(o->sm, NK_F32, BIG_R), tsi = nk_vec(o->si, NK_F32, BIG_R);
    nk_tensor tdg = nk_vec(o->dg, NK_F64, BIG_K), tdb = nk_vec(o->db, NK_F64, BIG_K);
    nk_tensor tdg2 = nk_vec(o->dg2, NK_F64, BIG_K);
    assert_int_equal(nk_tensor_contiguous(&tx, (void *)x, NK_F32, 2, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&tdy, (void *)dy, NK_F32, 2, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&ty, o->y, NK_F32, 2, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&tdx, o->dx, NK_F32, 2, dims), NK_OK);
    if (rms) {
        nk_rmsnorm_params p;
        nk_rmsnorm_params_default(&p);
        assert_int_equal(nk_rmsnorm_forward(c, &p, &tx, &tg, &ty, &tsi, NULL, 0), NK_OK);
        assert_int_equal(nk_rmsnorm_backward(c, &p, &tx, &tdy, &tg, &tsi, &tdx, &tdg, NULL, 0), NK_OK);
        assert_int_equal(nk_rmsnorm_backward(c, &p, &tx, &tdy, &tg, &tsi, NULL, &tdg2, NULL, 0), NK_OK);
        memset(o->sm, 0, BIG_R * sizeof(float));
        memset(o->db, 0, BIG_K * sizeof(double));
    } else {
        nk_layernorm_params p;
        nk_layernorm_params_default(&p);
        assert_int_equal(nk_layernorm_forward(c, &p, &tx, &tg, &tb, &ty, &tsm, &tsi, NULL, 0), NK_OK);
        assert_int_equal(nk_layernorm_backward(c, &p, &tx, &tdy, &tg, &tsm, &tsi, &tdx, &tdg, &tdb,
                                               NULL, 0), NK_OK);
        assert_int_equal(nk_layernorm_backward(c, &p, &tx, &tdy, &tg, &tsm, &tsi, NULL, &tdg2, NULL,
                                               NULL, 0), NK_OK);
    }
    nk_ctx_destroy(c);
}

static void big_free(big_out *o) {
    free(o->y - 1), free(o->dx - 1), free(o->sm), free(o->si), free(o->dg), free(o->db), free(o->dg2);
}

static int big_close(const char *what, uint64_t seed, const float *got, const float *want,
                     int64_t n) {
    double *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    for (int64_t i = 0; i < n; i++) a[i] = got[i], b[i] = want[i];
    const int ok = rnt_check(what, seed, a, b, n, RNT_TOL_OPT_REF, NK_F32);
    free(a), free(b);
    return ok;
}

static void test_streamed_opt_vs_ref(void **state) {
    (void)state;
    const uint64_t seed = rnt_seed(0x5733);
    const int64_t n = (int64_t)BIG_R * BIG_K;
    rnt_rng rng;
    rnt_rng_init(&rng, seed);
    float *x = malloc((size_t)n * sizeof *x), *dy = malloc((size_t)n * sizeof *dy);
    double *g = malloc(BIG_K * sizeof *g), *b = malloc(BIG_K * sizeof *b);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(3.0 + rnt_normal(&rng));
    for (int64_t i = 0; i < n; i++) dy[i] = (float)rnt_normal(&rng);
    for (int64_t j = 0; j < BIG_K; j++) g[j] = 1.0 + 0.5 * rnt_normal(&rng), b[j] = rnt_normal(&rng);
    for (int rms = 0; rms <= 1; rms++) {
        const char *op = rms ? "rmsnorm" : "layernorm";
        char what[96];
        big_out ref, opt, opt2;
        big_run(rms, 1, 1, x, dy, g, b, &ref);
        big_run(rms, 0, 1, x, dy, g, b, &opt);
        big_run(rms, 0, 2, x, dy, g, b, &opt2);
        snprintf(what, sizeof what, "%s streamed y opt vs ref", op);
        assert_true(big_close(what, seed, opt.y, ref.y, n));
        snprintf(what, sizeof what, "%s streamed dx opt vs ref", op);
        assert_true(big_close(what, seed, opt.dx, ref.dx, n));
        snprintf(what, sizeof what, "%s streamed dgamma opt vs ref", op);
        assert_true(rnt_check(what, seed, opt.dg, ref.dg, BIG_K, RNT_TOL_OPT_REF, NK_F64));
        snprintf(what, sizeof what, "%s streamed dgamma (no dx) opt vs ref", op);
        assert_true(rnt_check(what, seed, opt.dg2, ref.dg, BIG_K, RNT_TOL_OPT_REF, NK_F64));
        snprintf(what, sizeof what, "%s streamed dbeta opt vs ref", op);
        assert_true(rnt_check(what, seed, opt.db, ref.db, BIG_K, RNT_TOL_OPT_REF, NK_F64));
        /* the same sums whether or not dx is wanted, and for any thread count */
        assert_memory_equal(opt.dg, opt.dg2, BIG_K * sizeof(double));
        assert_memory_equal(opt.y, opt2.y, (size_t)n * sizeof(float));
        assert_memory_equal(opt.dx, opt2.dx, (size_t)n * sizeof(float));
        assert_memory_equal(opt.sm, opt2.sm, BIG_R * sizeof(float));
        assert_memory_equal(opt.si, opt2.si, BIG_R * sizeof(float));
        assert_memory_equal(opt.dg, opt2.dg, BIG_K * sizeof(double));
        assert_memory_equal(opt.db, opt2.db, BIG_K * sizeof(double));
        big_free(&ref), big_free(&opt), big_free(&opt2);
    }
    free(x), free(dy), free(g), free(b);
}

/* ---- caller workspace -------------------------------------------------------------------- */

static void test_workspace(void **state) {
    (void)state;
    const int64_t dims[2] = {5, 20000};
    rnt_rng rng;
    rnt_rng_init(&rng, 5);
    rnt_buf x, y1, y2, sm, si, dx1, dx2;
    const int64_t R = 5;
    assert_int_equal(rnt_alloc(&x, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&y1, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&y2, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dx1, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&dx2, NK_F32, 2, dims, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&sm, NK_F32, 1, &R, RNT_CONTIG), 0);
    assert_int_equal(rnt_alloc(&si, NK_F32, 1, &R, RNT_CONTIG), 0);
    rnt_fill_normal(&x.t, &rng, 0, 1);
    nk_layernorm_params p;
    nk_layernorm_params_default(&p);
    p.flags = 0;
    size_t bytes = 0;
    assert_int_equal(nk_layernorm_workspace_size(&p, &x.t, &bytes), NK_OK);
    assert_true(bytes > 0);
    void *ws = malloc(bytes);
    assert_int_equal(nk_layernorm_forward(ctx, &p, &x.t, NULL, NULL, &y1.t, &sm.t, &si.t, ws, bytes), NK_OK);
    assert_int_equal(nk_layernorm_forward(ctx, &p, &x.t, NULL, NULL, &y2.t, NULL, NULL, NULL, 0), NK_OK);
    assert_memory_equal(y1.mem, y2.mem, y1.bytes);
    assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &x.t, NULL, &sm.t, &si.t, &dx1.t, NULL, NULL, ws, bytes),
                     NK_OK);
    assert_int_equal(nk_layernorm_backward(ctx, &p, &x.t, &x.t, NULL, &sm.t, &si.t, &dx2.t, NULL, NULL, ws, bytes / 2),
                     NK_ERR_WORKSPACE);
    assert_true(rnt_untouched(&dx2));
    free(ws);
    rnt_free(&x), rnt_free(&y1), rnt_free(&y2), rnt_free(&sm), rnt_free(&si), rnt_free(&dx1);
    rnt_free(&dx2);
}

/* ---- layer norm over channels ------------------------------------------------------------ */

/* Same values in NCHW, NHWC, padded and reversed layouts give bitwise-identical results (the
 * values of a row are visited in channel order whatever the layout), equal to layer norm over
 * the last axis of the explicitly transposed (N, H, W, C) tensor, and to the oracle. */
static void test_channels_layouts(void **state) {
    (void)state;
    const uint64_t seed = rnt_seed(0xc4a7);
    const int64_t dims[4] = {2, 5, 3, 7}, C = 5, R = 2 * 3 * 7, n = 2 * 5 * 3 * 7;
    const unsigned km = 0xfu & ~2u;
    for (int dti = 0; dti < 2; dti++) {
        const nk_dtype dt = dti ? NK_F64 : NK_F32;
        rnt_rng rng;
        rnt_rng_init(&rng, seed + (uint64_t)dti);
        double *xv = malloc(n * sizeof *xv), *dyv = malloc(n * sizeof *dyv);
        for (int64_t i = 0; i < n; i++) xv[i] = rnt_normal(&rng) * 2 + 1, dyv[i] = rnt_normal(&rng);
        rnt_buf g, b;
        assert_int_equal(rnt_alloc(&g, dt, 1, &C, RNT_CONTIG), 0);
        assert_int_equal(rnt_alloc(&b, dt, 1, &C, RNT_CONTIG), 0);
        rnt_fill_normal(&g.t, &rng, 1, 0.3);
        rnt_fill_normal(&b.t, &rng, 0, 0.3);
        double *res[RNT_NLAYOUTS + 1];
        nk_layernorm_params p;
        nk_layernorm_params_default(&p);
        p.axis = 2; /* ignored by the channels variant */
        for (int lay = 0; lay <= RNT_NLAYOUTS; lay++) {
            /* lay == RNT_NLAYOUTS: plain layer norm on the transposed (N, H, W, C) copy */
            const int64_t tdims[4] = {2, 3, 7, 5};
            const int trans = lay == RNT_NLAYOUTS;
            rnt_buf x, y, dy, dx, sm, si, dg, db;
            assert_int_equal(rnt_alloc(&x, dt, 4, trans ? tdims : dims, trans ? RNT_CONTIG : lay), 0);
            assert_int_equal(rnt_alloc(&y, dt, 4, trans ? tdims : dims, trans ? RNT_CONTIG : lay), 0);
            assert_int_equal(rnt_alloc(&dy, dt, 4, trans ? tdims : dims, trans ? RNT_CONTIG : lay), 0);
            assert_int_equal(rnt_alloc(&dx, dt, 4, trans ? tdims : dims, trans ? RNT_CONTIG : lay), 0);
            assert_int_equal(rnt_alloc(&sm, NK_F64, 1, &R, RNT_CONTIG), 0);
            assert_int_equal(rnt_alloc(&si, NK_F64, 1, &R, RNT_CONTIG), 0);
            assert_int_equal(rnt_alloc(&dg, NK_F64, 1, &C, RNT_CONTIG), 0);
            assert_int_equal(rnt_alloc(&db, NK_F64, 1, &C, RNT_CONTIG), 0);
            for (int64_t i = 0; i < n; i++) { /* i: NCHW row-major index */
                int64_t w = i % 7, h = (i / 7) % 3, c = (i / 21) % 5, nn = i / 105;
                const int64_t t = ((nn * 3 + h) * 7 + w) * 5 + c;
                rnt_set(&x.t, trans ? t : i, xv[i]);
                rnt_set(&dy.t, trans ? t : i, dyv[i]);
            }
            nk_status s1, s2;
            if (trans) {
                p.axis = -1;
                s1 = nk_layernorm_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &si.t, NULL, 0);
                s2 = nk_layernorm_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &si.t, &dx.t, &dg.t, &db.t, NULL, 0);
            } else {
                s1 = nk_layernorm_channels_forward(ctx, &p, &x.t, &g.t, &b.t, &y.t, &sm.t, &si.t, NULL, 0);
                s2 = nk_layernorm_channels_backward(ctx, &p, &x.t, &dy.t, &g.t, &sm.t, &si.t, &dx.t, &dg.t, &db.t, NULL, 0);
            }
            assert_int_equal(s1, NK_OK);
            assert_int_equal(s2, NK_OK);
            double *r = malloc((size_t)(2 * n + 2 * R + 2 * C) * sizeof *r);
            for (int64_t i = 0; i < n; i++) {
                int64_t w = i % 7, h = (i / 7) % 3, c = (i / 21) % 5, nn = i / 105;
                const int64_t t = ((nn * 3 + h) * 7 + w) * 5 + c;
                r[i] = rnt_get(&y.t, trans ? t : i);
                r[n + i] = rnt_get(&dx.t, trans ? t : i);
            }
            rnt_to_doubles(&sm.t, r + 2 * n);
            rnt_to_doubles(&si.t, r + 2 * n + R);
            rnt_to_doubles(&dg.t, r + 2 * n + 2 * R);
            rnt_to_doubles(&db.t, r + 2 * n + 2 * R + C);
            res[lay] = r;
            rnt_free(&x), rnt_free(&y), rnt_free(&dy), rnt_free(&dx), rnt_free(&sm);
            rnt_free(&si), rnt_free(&dg), rnt_free(&db);
        }
        const size_t nbytes = (size_t)(2 * n + 2 * R + 2 * C) * sizeof(double);
        for (int lay = 1; lay <= RNT_NLAYOUTS; lay++) assert_memory_equal(res[0], res[lay], nbytes);
        /* oracle on the NCHW values: rows (n, h, w), K = C */
        double *gd = rnt_doubles_of(&g.t), *bd = rnt_doubles_of(&b.t);
        double *xr = malloc(n * sizeof *xr), *dyr = malloc(n * sizeof *dyr);
        for (int64_t i = 0; i < n; i++) xr[i] = (double)(dt == NK_F32 ? (float)xv[i] : xv[i]);
        for (int64_t i = 0; i < n; i++) dyr[i] = (double)(dt == NK_F32 ? (float)dyv[i] : dyv[i]);
        double *yo = malloc(n * sizeof *yo), *dxo = malloc(n * sizeof *dxo);
        double *s0 = malloc(R * sizeof *s0), *s1 = malloc(R * sizeof *s1);
        double *dgo = malloc(C * sizeof *dgo), *dbo = malloc(C * sizeof *dbo);
        rnt_oracle_forward(RNT_LN, 1e-5, 4, dims, km, xr, gd, bd, yo, s0, s1);
        rnt_oracle_backward(RNT_LN, 1e-5, 4, dims, km, xr, dyr, gd, dxo, dgo, dbo);
        assert_true(rnt_check("layernorm_channels y", seed, res[0], yo, n, RNT_TOL_Y, dt));
        assert_true(rnt_check("layernorm_channels dx", seed, res[0] + n, dxo, n, RNT_TOL_DX, dt));
        assert_true(rnt_check("layernorm_channels mean", seed, res[0] + 2 * n, s0, R, RNT_TOL_STAT, NK_F64));
        assert_true(rnt_check("layernorm_channels invstd", seed, res[0] + 2 * n + R, s1, R, RNT_TOL_STAT, NK_F64));
        assert_true(rnt_check("layernorm_channels dgamma", seed, res[0] + 2 * n + 2 * R, dgo, C, RNT_TOL_DPARAM, NK_F64));
        assert_true(rnt_check("layernorm_channels dbeta", seed, res[0] + 2 * n + 2 * R + C, dbo, C, RNT_TOL_DPARAM, NK_F64));
        for (int lay = 0; lay <= RNT_NLAYOUTS; lay++) free(res[lay]);
        free(xv), free(dyv), free(gd), free(bd), free(xr), free(dyr), free(yo), free(dxo);
        free(s0), free(s1), free(dgo), free(dbo);
        rnt_free(&g), rnt_free(&b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_random_shapes),
        cmocka_unit_test(test_long_rows),
        cmocka_unit_test(test_finite_differences),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_empty_and_degenerate),
        cmocka_unit_test(test_threads_bitwise),
        cmocka_unit_test(test_in_place),
        cmocka_unit_test(test_big_mean),
        cmocka_unit_test(test_streamed_opt_vs_ref),
        cmocka_unit_test(test_workspace),
        cmocka_unit_test(test_channels_layouts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
