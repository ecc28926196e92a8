/* The fused residual block y = relu(bn(x) + z) (nk_batchnorm_add_relu_*).
 * Oracles:
 *   - the naive float64 batch norm of support/nk_test.c plus z and max(0, .) in double
 *     (forward; TOL_F32_RESULT / TOL_F64_RESULT, statistics TOL_F64_STATS);
 *   - the textbook backward nko_bn_backward with the ReLU mask of the library's own y (dx,
 *     dgamma, dbeta) and dz = dy where y > 0, else 0, which is exact (TOL_EXACT);
 *   - central finite differences in double of L = sum w y for x, z, gamma, beta
 *     (TOL_GRADCHECK; no pre-activation within KINK_MARGIN of the ReLU's kink);
 *   - the reference kernels: the element-wise passes from the same coefficients give the
 *     reference's bits (inference forward, dz), for odd shapes, every layout, unaligned
 *     pointers and a view large enough for the streaming stores;
 *   - the same call on 1..4 threads, bitwise.
 * Bad input: the status, a message naming the op and the culprit, nothing written. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h" /* NK_PARALLEL_MIN_ELEMS */
#include "nk_test.h"

#define FD_STEP 1e-6     /* central-difference step (see TOL_GRADCHECK) */
#define KINK_MARGIN 1e-3 /* |bn(x) + z| >= this: h = 1e-6 never crosses the ReLU's kink */
#define MAX_REDRAWS 200

/* The batch-norm fixture plus the shortcut z (random, N(0, 1)) and its gradient dz. */
typedef struct ar {
    nkt_bn f;
    nkt_buf z, dz;
    double *zv;
} ar;

static void ar_init(ar *a, nkt_rng *r, int ndim, const int64_t *dims, nk_dtype dt,
                    nkt_layout lay, int64_t lead) {
    nkt_bn_init(&a->f, r, ndim, dims, dt, dt, lay, lead);
    nkt_alloc(&a->z, dt, ndim, dims, lay, lead + 4);
    nkt_alloc(&a->dz, dt, ndim, dims, lay, lead + 5);
    a->zv = nkt_malloc((size_t)a->f.n * sizeof(double));
    nkt_fill_normal(r, a->zv, a->f.n, 0.0, 1.0);
    nkt_set(&a->z, a->zv);
}

static void ar_free(ar *a) {
    nkt_bn_free(&a->f);
    nkt_free(&a->z);
    nkt_free(&a->dz);
    free(a->zv);
}

static nk_status ar_train(nk_ctx *ctx, const nk_batchnorm_params *p, ar *a, int stats) {
    nkt_bn *f = &a->f;
    return nk_batchnorm_add_relu_forward_train(
        ctx, p, &f->x.t, &a->z.t, &f->gamma.t, &f->beta.t, &f->y.t, stats ? &f->save_mean.t : NULL,
        stats ? &f->save_invstd.t : NULL, stats ? &f->run_mean.t : NULL,
        stats ? &f->run_var.t : NULL, NULL, NULL, 0);
}

static nk_status ar_backward(nk_ctx *ctx, const nk_batchnorm_params *p, ar *a) {
    nkt_bn *f = &a->f;
    return nk_batchnorm_add_relu_backward(ctx, p, &f->x.t, &f->dy.t, &f->gamma.t,
                                          &f->save_mean.t, &f->save_invstd.t, &f->y.t, &f->dx.t,
                                          &a->dz.t, &f->dgamma.t, &f->dbeta.t, NULL, 0);
}

/* ---- forward and backward against the float64 formula --------------------------------- */

static const int64_t SHAPES[][4] = {{2, 3, 5, 7}, {4, 1, 3, 3}, {3, 23, 1, 1}, {2, 5, 17, 1},
                                    {1, 3, 7, 7}, {5, 64, 4, 4}};

static void check_case(nk_ctx *ctx, const int64_t *dims, nk_dtype dt, nkt_layout lay,
                       unsigned flags, uint64_t salt) {
    nkt_rng r = nkt_rng_make(salt);
    ar a;
    ar_init(&a, &r, 4, dims, dt, lay, 1);
    nkt_bn *f = &a.f;
    char buf[160];
    nkt_case("add_relu %s flags 0x%x", nkt_bn_desc(f, buf, sizeof buf), flags);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    p.flags = flags;
    const int64_t n = f->n, C = f->C;
    double *yo = nkt_malloc((size_t)n * sizeof *yo), *got = nkt_malloc((size_t)n * sizeof *got);
    double *dxo = nkt_malloc((size_t)n * sizeof *dxo), *dzo = nkt_malloc((size_t)n * sizeof *dzo);
    double *mo = nkt_malloc((size_t)C * sizeof *mo), *io = nkt_malloc((size_t)C * sizeof *io);
    double *rmo = nkt_malloc((size_t)C * sizeof *rmo), *rvo = nkt_malloc((size_t)C * sizeof *rvo);
    double *vg = nkt_malloc((size_t)C * sizeof *vg), *dgo = nkt_malloc((size_t)C * sizeof *dgo);
    double *dbo = nkt_malloc((size_t)C * sizeof *dbo);
    memcpy(rmo, f->rmv, (size_t)C * sizeof *rmo);
    memcpy(rvo, f->rvv, (size_t)C * sizeof *rvo);
    nk_batchnorm_params po = p; /* the oracle's batch norm, without its own ReLU */
    po.flags &= ~NK_BN_FUSE_RELU;
    nko_bn_train(&po, 4, dims, f->xv, f->gv, f->bv, yo, mo, io, rmo, rvo, NULL);
    for (int64_t i = 0; i < n; i++) {
        const double s = yo[i] + a.zv[i];
        yo[i] = s < 0.0 ? 0.0 : s;
    }

    NKT_OK(ctx, ar_train(ctx, &p, &a, 1));
    const nkt_tol_id tol = nkt_tol_result(dt);
    nkt_get(&f->y, got);
    NKT_CLOSE("y", got, yo, n, tol);
    nkt_get(&f->save_mean, vg);
    NKT_CLOSE("save_mean", vg, mo, C, dt == NK_F32 ? TOL_F32_RESULT : TOL_F64_STATS);
    nkt_get(&f->save_invstd, vg);
    NKT_CLOSE("save_invstd", vg, io, C, dt == NK_F32 ? TOL_F32_RESULT : TOL_F64_STATS);
    nkt_get(&f->run_mean, vg);
    NKT_CLOSE("running_mean", vg, rmo, C, tol);
    nkt_get(&f->run_var, vg);
    NKT_CLOSE("running_var", vg, rvo, C, tol);
    NKT_GAPS_UNTOUCHED(&f->y);

    /* backward from the library's y (its mask is what the oracle applies) */
    NKT_OK(ctx, ar_backward(ctx, &p, &a));
    nk_batchnorm_params pm = p; /* the oracle's mask from y */
    pm.flags |= NK_BN_FUSE_RELU;
    nkt_get(&f->y, got);
    for (int64_t i = 0; i < n; i++) dzo[i] = got[i] <= 0 ? 0.0 : f->dyv[i];
    /* save_invstd is used as stored (rounded to float32 when the vectors are), the mean is
     * recovered exactly from x by the backward: the oracle takes the same */
    nkt_get(&f->save_invstd, io);
    nko_bn_backward(&pm, 4, dims, f->xv, f->dyv, f->gv, mo, io, got, 1, dxo, dgo, dbo);
    nkt_get(&a.dz, got);
    NKT_CLOSE("dz", got, dzo, n, TOL_EXACT);
    nkt_get(&f->dx, got);
    /* dx sums cancel (sum of dx over a channel is 0): absolute tolerance at the scale of dy */
    NKT_CLOSE("dx", got, dxo, n, dt == NK_F32 ? TOL_F32_RESULT : TOL_F64_RESULT);
    nkt_get(&f->dgamma, vg);
    NKT_CLOSE("dgamma", vg, dgo, C, dt == NK_F32 ? TOL_F32_RESULT : TOL_F64_STATS);
    nkt_get(&f->dbeta, vg);
    NKT_CLOSE("dbeta", vg, dbo, C, dt == NK_F32 ? TOL_F32_RESULT : TOL_F64_STATS);
    NKT_GAPS_UNTOUCHED(&f->dx);
    NKT_GAPS_UNTOUCHED(&a.dz);

    free(yo), free(got), free(dxo), free(dzo), free(mo), free(io), free(rmo), free(rvo);
    free(vg), free(dgo), free(dbo);
    ar_free(&a);
}

static void test_vs_formula(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1), *ref = nkt_ctx(1);
    assert_int_equal(nk_ctx_set_force_ref(ref, 1), NK_OK);
    uint64_t salt = 1;
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
            for (int d = 0; d < 2; d++) {
                const nk_dtype dt = d ? NK_F64 : NK_F32;
                check_case(ctx, SHAPES[s], dt, (nkt_layout)lay, NK_BN_USE_SCALE | NK_BN_USE_SHIFT, salt++);
                check_case(ref, SHAPES[s], dt, (nkt_layout)lay, NK_BN_USE_SCALE | NK_BN_USE_SHIFT, salt++);
                check_case(ctx, SHAPES[s], dt, (nkt_layout)lay, NK_BN_USE_SHIFT | NK_BN_FUSE_RELU, salt++);
            }
    nk_ctx_destroy(ctx);
    nk_ctx_destroy(ref);
}

/* The inference forward: bn with the given statistics, + z, ReLU. */
static void test_inference_vs_formula(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    uint64_t salt = 100;
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
            for (int d = 0; d < 2; d++) {
                const nk_dtype dt = d ? NK_F64 : NK_F32;
                nkt_rng r = nkt_rng_make(salt++);
                ar a;
                ar_init(&a, &r, 4, SHAPES[s], dt, (nkt_layout)lay, 1);
                nkt_bn *f = &a.f;
                char buf[160];
                nkt_case("add_relu inference %s", nkt_bn_desc(f, buf, sizeof buf));
                nk_batchnorm_params p;
                nk_batchnorm_params_default(&p);
                double *yo = nkt_malloc((size_t)f->n * sizeof *yo);
                double *got = nkt_malloc((size_t)f->n * sizeof *got);
                nko_bn_infer(&p, 4, SHAPES[s], f->xv, f->gv, f->bv, f->rmv, f->rvv, yo);
                for (int64_t i = 0; i < f->n; i++) {
                    const double v = yo[i] + a.zv[i];
                    yo[i] = v < 0.0 ? 0.0 : v;
                }
                NKT_OK(ctx, nk_batchnorm_add_relu_forward_inference(
                                ctx, &p, &f->x.t, &a.z.t, &f->gamma.t, &f->beta.t,
                                &f->run_mean.t, &f->run_var.t, &f->y.t));
                nkt_get(&f->y, got);
                NKT_CLOSE("y", got, yo, f->n, nkt_tol_result(dt));
                NKT_GAPS_UNTOUCHED(&f->y);
                free(yo);
                free(got);
                ar_free(&a);
            }
    nk_ctx_destroy(ctx);
}

/* ---- finite differences ------------------------------------------------------------------ */

typedef struct gc {
    nk_ctx *ctx;
    nk_batchnorm_params p;
    ar *a;
    double *y;
} gc;

static long double loss(gc *g) {
    NKT_OK(g->ctx, ar_train(g->ctx, &g->p, g->a, 0));
    nkt_get(&g->a->f.y, g->y);
    long double s = 0.0L;
    for (int64_t i = 0; i < g->a->f.n; i++) s += (long double)g->a->f.dyv[i] * (long double)g->y[i];
    return s;
}

static double central(gc *g, double *v) {
    const double v0 = *v;
    *v = v0 + FD_STEP;
    const long double lp = loss(g);
    *v = v0 - FD_STEP;
    const long double lm = loss(g);
    *v = v0;
    return (double)((lp - lm) / (2.0L * FD_STEP));
}

/* |bn(x) + z| >= KINK_MARGIN everywhere, both sides of the kink present */
static int clear_of_kink(gc *g) {
    nkt_bn *f = &g->a->f;
    nk_batchnorm_params p = g->p;
    p.flags &= ~NK_BN_FUSE_RELU;
    NKT_OK(g->ctx, nk_batchnorm_forward_train(g->ctx, &p, &f->x.t, &f->gamma.t, &f->beta.t,
                                              &f->y.t, NULL, NULL, NULL, NULL, NULL, NULL, 0));
    nkt_get(&f->y, g->y);
    int pos = 0, neg = 0;
    for (int64_t i = 0; i < f->n; i++) {
        const double s = g->y[i] + g->a->zv[i];
        if (fabs(s) < KINK_MARGIN) return 0;
        pos += s > 0;
        neg += s < 0;
    }
    return pos > 0 && neg > 0;
}

static void gradcheck_case(nkt_layout lay, uint64_t salt) {
    static const int64_t dims[4] = {3, 2, 2, 3};
    nk_ctx *ctx = nkt_ctx(1);
    ar a;
    nkt_rng r = nkt_rng_make(salt);
    ar_init(&a, &r, 4, dims, NK_F64, lay, 0);
    nkt_bn *f = &a.f;
    gc g;
    g.ctx = ctx;
    nk_batchnorm_params_default(&g.p);
    g.a = &a;
    g.y = nkt_malloc((size_t)f->n * sizeof(double));
    int redraws = 0;
    while (!clear_of_kink(&g)) {
        NKT_CHECK(++redraws < MAX_REDRAWS, "no draw clear of the kink");
        nkt_fill_normal(&r, a.zv, f->n, 0.0, 1.0);
        nkt_set(&a.z, a.zv);
    }
    char buf[160];
    nkt_case("add_relu gradcheck %s (redraws %d)", nkt_bn_desc(f, buf, sizeof buf), redraws);
    const int64_t n = f->n, C = f->C;
    double ndx[36], ndz[36], ndg[2], ndb[2], got[36];
    double *x = f->x.t.data, *z = a.z.t.data, *ga = f->gamma.t.data, *be = f->beta.t.data;
    for (int64_t i = 0; i < n; i++) {
        ndx[i] = central(&g, &x[nkt_offset(&f->x.t, i)]);
        ndz[i] = central(&g, &z[nkt_offset(&a.z.t, i)]);
    }
    for (int64_t c = 0; c < C; c++) {
        ndg[c] = central(&g, &ga[c]);
        ndb[c] = central(&g, &be[c]);
    }
    NKT_OK(ctx, ar_train(ctx, &g.p, &a, 1));
    NKT_OK(ctx, ar_backward(ctx, &g.p, &a));
    nkt_get(&f->dx, got);
    NKT_CLOSE("dx", got, ndx, n, TOL_GRADCHECK);
    nkt_get(&a.dz, got);
    NKT_CLOSE("dz", got, ndz, n, TOL_GRADCHECK);
    nkt_get(&f->dgamma, got);
    NKT_CLOSE("dgamma", got, ndg, C, TOL_GRADCHECK);
    nkt_get(&f->dbeta, got);
    NKT_CLOSE("dbeta", got, ndb, C, TOL_GRADCHECK);
    free(g.y);
    ar_free(&a);
    nk_ctx_destroy(ctx);
}

static void test_gradcheck(void **state) {
    (void)state;
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
        for (uint64_t s = 0; s < 3; s++) gradcheck_case((nkt_layout)lay, 200 + 10 * (uint64_t)lay + s);
}

/* ---- reference vs optimized: element-wise passes from the same coefficients ------------- */

/* Inference forward and dz depend only on given values: every ISA gives the reference's bits.
 * dx of the training backward too when the sums agree; they may differ in the last bits, so
 * dx is compared with the result tolerance. */
static void ref_vs_opt_case(const int64_t *dims, nk_dtype dt, nkt_layout lay, int64_t lead,
                            uint64_t salt) {
    nk_ctx *opt = nkt_ctx(2), *ref = nkt_ctx(1);
    assert_int_equal(nk_ctx_set_force_ref(ref, 1), NK_OK);
    nkt_rng r = nkt_rng_make(salt);
    ar a;
    ar_init(&a, &r, 4, dims, dt, lay, lead);
    nkt_bn *f = &a.f;
    char buf[160];
    nkt_case("add_relu ref vs %s: %s lead %lld", nk_ctx_kernels(opt), nkt_bn_desc(f, buf, sizeof buf),
             (long long)lead);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    const size_t bytes = (size_t)f->y.buf_elems * nk_dtype_size(dt);
    const size_t bz = (size_t)a.dz.buf_elems * nk_dtype_size(dt);
    void *y_ref = nkt_malloc(bytes), *dz_ref = nkt_malloc(bz);
    double *d0 = nkt_malloc((size_t)f->n * sizeof(double)), *d1 = nkt_malloc((size_t)f->n * sizeof(double));
    for (int k = 0; k < 2; k++) {
        nk_ctx *ctx = k ? opt : ref;
        nkt_set(&f->run_mean, f->rmv); /* the training forwards below update them */
        nkt_set(&f->run_var, f->rvv);
        NKT_OK(ctx, nk_batchnorm_add_relu_forward_inference(ctx, &p, &f->x.t, &a.z.t, &f->gamma.t,
                                                            &f->beta.t, &f->run_mean.t,
                                                            &f->run_var.t, &f->y.t));
        /* the backward's inputs: y and the saved statistics of one (the reference's) forward */
        if (k == 0) {
            memcpy(y_ref, f->y.buf, bytes);
            NKT_OK(ctx, ar_train(ctx, &p, &a, 1));
        } else {
            NKT_SAME_BYTES("inference y", f->y.buf, y_ref, bytes);
            NKT_OK(ref, ar_train(ref, &p, &a, 1));
        }
        NKT_OK(ctx, ar_backward(ctx, &p, &a));
        if (k == 0) {
            memcpy(dz_ref, a.dz.buf, bz);
            nkt_get(&f->dx, d0);
        } else {
            NKT_SAME_BYTES("dz", a.dz.buf, dz_ref, bz);
            nkt_get(&f->dx, d1);
            NKT_CLOSE("dx", d1, d0, f->n, nkt_tol_result(dt));
        }
    }
    free(y_ref), free(dz_ref), free(d0), free(d1);
    ar_free(&a);
    nk_ctx_destroy(opt);
    nk_ctx_destroy(ref);
}

static void test_ref_vs_optimized(void **state) {
    (void)state;
    static const int64_t shapes[][4] = {{2, 1, 7, 7}, {3, 3, 17, 1}, {2, 23, 1, 1},
                                        {2, 23, 7, 3}, {1, 40, 5, 5}, {4, 9, 16, 16}};
    uint64_t salt = 300;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
            for (int d = 0; d < 2; d++)
                for (int64_t lead = 0; lead < 2; lead++)
                    ref_vs_opt_case(shapes[s], d ? NK_F64 : NK_F32, (nkt_layout)lay, lead, salt++);
}

/* Outputs of at least NK_STREAM_MIN_BYTES take the optimized kernels' streaming stores. */
static void test_ref_vs_optimized_streaming(void **state) {
    (void)state;
    static const int64_t dims[4] = {2, 32, 256, 260}; /* 4.26M float32 values: 16.6 MB */
    static const int64_t dims64[4] = {2, 32, 256, 260}; /* float64: 33.3 MB, above 32 MiB */
    ref_vs_opt_case(dims64, NK_F64, NKT_CONTIG, 1, 400);
    ref_vs_opt_case(dims64, NK_F64, NKT_CHLAST, 0, 401);
    ref_vs_opt_case(dims, NK_F32, NKT_CONTIG, 1, 402);
}

/* ---- threads ------------------------------------------------------------------------------ */

static void test_threads_bitwise(void **state) {
    (void)state;
    static const int64_t shapes[][4] = {{8, 16, 32, 32}, {4, 3, 150, 70}, {64, 40, 6, 6}};
    uint64_t salt = 500;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
            for (int d = 0; d < 2; d++) {
                const nk_dtype dt = d ? NK_F64 : NK_F32;
                nkt_rng r = nkt_rng_make(salt++);
                ar a;
                ar_init(&a, &r, 4, shapes[s], dt, (nkt_layout)lay, 1);
                nkt_bn *f = &a.f;
                char buf[160];
                nkt_case("add_relu threads %s", nkt_bn_desc(f, buf, sizeof buf));
                NKT_CHECK(f->n >= NK_PARALLEL_MIN_ELEMS, "the case must be large enough to thread");
                nk_batchnorm_params p;
                nk_batchnorm_params_default(&p);
                const size_t by = (size_t)f->y.buf_elems * nk_dtype_size(dt);
                const size_t bx = (size_t)f->dx.buf_elems * nk_dtype_size(dt);
                const size_t bz = (size_t)a.dz.buf_elems * nk_dtype_size(dt);
                const size_t bv = (size_t)f->save_mean.buf_elems * nk_dtype_size(dt);
                void *y1 = nkt_malloc(by), *dx1 = nkt_malloc(bx), *dz1 = nkt_malloc(bz);
                void *yi1 = nkt_malloc(bx), *v1 = nkt_malloc(4 * bv);
                for (int t = 1; t <= 4; t++) {
                    nk_ctx *ctx = nkt_ctx(t);
                    nkt_set(&f->run_mean, f->rmv);
                    nkt_set(&f->run_var, f->rvv);
                    NKT_OK(ctx, nk_batchnorm_add_relu_forward_inference(
                                    ctx, &p, &f->x.t, &a.z.t, &f->gamma.t, &f->beta.t,
                                    &f->run_mean.t, &f->run_var.t, &f->dx.t));
                    if (t == 1) memcpy(yi1, f->dx.buf, bx);
                    else NKT_SAME_BYTES("inference y", f->dx.buf, yi1, bx);
                    NKT_OK(ctx, ar_train(ctx, &p, &a, 1));
                    NKT_OK(ctx, ar_backward(ctx, &p, &a));
                    nkt_buf *vs[4] = {&f->save_mean, &f->save_invstd, &f->dgamma, &f->dbeta};
                    if (t == 1) {
                        memcpy(y1, f->y.buf, by);
                        memcpy(dx1, f->dx.buf, bx);
                        memcpy(dz1, a.dz.buf, bz);
                        for (int i = 0; i < 4; i++) memcpy((char *)v1 + i * bv, vs[i]->buf, bv);
                    } else {
                        NKT_SAME_BYTES("y", f->y.buf, y1, by);
                        NKT_SAME_BYTES("dx", f->dx.buf, dx1, bx);
                        NKT_SAME_BYTES("dz", a.dz.buf, dz1, bz);
                        for (int i = 0; i < 4; i++)
                            NKT_SAME_BYTES("per-channel outputs", vs[i]->buf, (char *)v1 + i * bv, bv);
                    }
                    nk_ctx_destroy(ctx);
                }
                free(y1), free(dx1), free(dz1), free(yi1), free(v1);
                ar_free(&a);
            }
}

/* ---- in place, optional outputs ----------------------------------------------------------- */

static void test_in_place_and_optional(void **state) {
    (void)state;
    static const int64_t dims[4] = {3, 5, 6, 7};
    nk_ctx *ctx = nkt_ctx(2);
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
        nkt_rng r = nkt_rng_make(600 + (uint64_t)lay);
        ar a;
        ar_init(&a, &r, 4, dims, NK_F32, (nkt_layout)lay, 1);
        nkt_bn *f = &a.f;
        char buf[160];
        nkt_case("add_relu in place %s", nkt_bn_desc(f, buf, sizeof buf));
        nk_batchnorm_params p;
        nk_batchnorm_params_default(&p);
        const int64_t n = f->n;
        double *want = nkt_malloc((size_t)n * sizeof *want), *got = nkt_malloc((size_t)n * sizeof *got);
        double *dxw = nkt_malloc((size_t)n * sizeof *dxw), *dzw = nkt_malloc((size_t)n * sizeof *dzw);
        NKT_OK(ctx, ar_train(ctx, &p, &a, 1));
        nkt_get(&f->y, want);
        NKT_OK(ctx, ar_backward(ctx, &p, &a));
        nkt_get(&f->dx, dxw);
        nkt_get(&a.dz, dzw);
        /* y in place of z, then of x (x's stats are unchanged by the first) */
        NKT_OK(ctx, nk_batchnorm_add_relu_forward_train(ctx, &p, &f->x.t, &a.z.t, &f->gamma.t,
                                                        &f->beta.t, &a.z.t, NULL, NULL, NULL,
                                                        NULL, NULL, NULL, 0));
        nkt_get(&a.z, got);
        NKT_CLOSE("y in place of z", got, want, n, TOL_EXACT);
        nkt_set(&a.z, a.zv);
        NKT_OK(ctx, nk_batchnorm_add_relu_forward_train(ctx, &p, &f->x.t, &a.z.t, &f->gamma.t,
                                                        &f->beta.t, &f->x.t, NULL, NULL, NULL,
                                                        NULL, NULL, NULL, 0));
        nkt_get(&f->x, got);
        NKT_CLOSE("y in place of x", got, want, n, TOL_EXACT);
        nkt_set(&f->x, f->xv);
        /* dz in place of dy, dx NULL; then dx in place of dy, dz NULL */
        NKT_OK(ctx, nk_batchnorm_add_relu_backward(ctx, &p, &f->x.t, &f->dy.t, &f->gamma.t,
                                                   &f->save_mean.t, &f->save_invstd.t, &f->y.t,
                                                   NULL, &f->dy.t, NULL, NULL, NULL, 0));
        nkt_get(&f->dy, got);
        NKT_CLOSE("dz in place of dy", got, dzw, n, TOL_EXACT);
        nkt_set(&f->dy, f->dyv);
        NKT_OK(ctx, nk_batchnorm_add_relu_backward(ctx, &p, &f->x.t, &f->dy.t, &f->gamma.t,
                                                   &f->save_mean.t, &f->save_invstd.t, &f->y.t,
                                                   &f->dy.t, NULL, NULL, NULL, NULL, 0));
        nkt_get(&f->dy, got);
        NKT_CLOSE("dx in place of dy", got, dxw, n, TOL_EXACT);
        nkt_set(&f->dy, f->dyv);
        /* only the parameter gradients */
        nkt_snap(&f->dx);
        nkt_snap(&a.dz);
        NKT_OK(ctx, nk_batchnorm_add_relu_backward(ctx, &p, &f->x.t, &f->dy.t, &f->gamma.t,
                                                   &f->save_mean.t, &f->save_invstd.t, &f->y.t,
                                                   NULL, NULL, &f->dgamma.t, &f->dbeta.t, NULL, 0));
        NKT_CHECK(nkt_same_as_snap(&f->dx) && nkt_same_as_snap(&a.dz), "dx, dz were not given");
        free(want), free(got), free(dxw), free(dzw);
        ar_free(&a);
    }
    nk_ctx_destroy(ctx);
}

/* ---- bad input ---------------------------------------------------------------------------- */

/* Every output of the fixture unchanged since the snapshot. */
static void snap_all(ar *a) {
    nkt_buf *b[] = {&a->f.y, &a->f.dx, &a->dz, &a->f.save_mean, &a->f.save_invstd,
                    &a->f.run_mean, &a->f.run_var, &a->f.dgamma, &a->f.dbeta, &a->z, &a->f.dy};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) nkt_snap(b[i]);
}
static int untouched(ar *a) {
    nkt_buf *b[] = {&a->f.y, &a->f.dx, &a->dz, &a->f.save_mean, &a->f.save_invstd,
                    &a->f.run_mean, &a->f.run_var, &a->f.dgamma, &a->f.dbeta, &a->z, &a->f.dy};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        if (!nkt_same_as_snap(b[i])) return 0;
    return 1;
}

#define EXPECT_BAD(call, status, n1, n2)                                                         \
    do {                                                                                         \
        snap_all(&a);                                                                            \
        NKT_STATUS(ctx, call, status);                                                           \
        NKT_MSG_HAS(ctx, n1, n2);                                                                \
        NKT_CHECK(untouched(&a), "outputs written on error: %s", #call);                         \
    } while (0)

static void test_bad_input(void **state) {
    (void)state;
    static const int64_t dims[4] = {2, 3, 4, 5}, other[4] = {2, 3, 5, 4}, one[4] = {1, 3, 1, 1};
    nk_ctx *ctx = nkt_ctx(1);
    nkt_rng r = nkt_rng_make(700);
    ar a;
    ar_init(&a, &r, 4, dims, NK_F32, NKT_CONTIG, 1);
    nkt_bn *f = &a.f;
    nkt_case("add_relu bad input");
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    nk_tensor zbad = a.z.t, ypart = a.z.t, dzpart = f->dy.t;
    const nk_tensor *X = &f->x.t, *G = &f->gamma.t, *B = &f->beta.t;
    /* forward: z missing, of another shape or dtype, y overlapping z without being it */
    EXPECT_BAD(nk_batchnorm_add_relu_forward_train(ctx, &p, X, NULL, G, B, &f->y.t, NULL, NULL, NULL, NULL, NULL, NULL, 0),
               NK_ERR_NULL, "batchnorm_add_relu", "z");
    memcpy(zbad.dims, other, sizeof other);
    assert_int_equal(nk_tensor_contiguous(&zbad, a.z.t.data, NK_F32, 4, other), NK_OK);
    EXPECT_BAD(nk_batchnorm_add_relu_forward_train(ctx, &p, X, &zbad, G, B, &f->y.t, NULL, NULL, NULL, NULL, NULL, NULL, 0),
               NK_ERR_SHAPE, "batchnorm_add_relu", "z");
    EXPECT_BAD(nk_batchnorm_add_relu_forward_inference(ctx, &p, X, &zbad, G, B, &f->run_mean.t, &f->run_var.t, &f->y.t),
               NK_ERR_SHAPE, "batchnorm_add_relu", "z");
    zbad = a.z.t;
    zbad.dtype = NK_F64;
    {
        nk_status s = nk_batchnorm_add_relu_forward_train(ctx, &p, X, &zbad, G, B, &f->y.t, NULL, NULL, NULL, NULL, NULL, NULL, 0);
        NKT_CHECK(s < 0, "a float64 z with a float32 x must fail");
        NKT_MSG_HAS(ctx, "batchnorm_add_relu", "z");
    }
    ypart.data = (float *)a.z.t.data + 1; /* overlaps z, not the same view */
    EXPECT_BAD(nk_batchnorm_add_relu_forward_train(ctx, &p, X, &a.z.t, G, B, &ypart, NULL, NULL, NULL, NULL, NULL, NULL, 0),
               NK_ERR_VALUE, "batchnorm_add_relu", "z");
    /* the rules of batch norm, under the new name */
    EXPECT_BAD(nk_batchnorm_add_relu_forward_train(ctx, &p, X, &a.z.t, NULL, B, &f->y.t, NULL, NULL, NULL, NULL, NULL, NULL, 0),
               NK_ERR_NULL, "batchnorm_add_relu", "gamma");
    {
        ar o;
        nkt_rng r1 = nkt_rng_make(701);
        ar_init(&o, &r1, 4, one, NK_F32, NKT_CONTIG, 1);
        snap_all(&a);
        NKT_STATUS(ctx, ar_train(ctx, &p, &o, 1), NK_ERR_DEGENERATE);
        NKT_MSG_HAS(ctx, "batchnorm_add_relu: expected more than 1 value per channel", NULL);
        ar_free(&o);
    }
    NKT_OK(ctx, ar_train(ctx, &p, &a, 1)); /* valid y and statistics for the backward */
    /* backward: y missing, dx == dz, dz overlapping x, dz of another shape */
    const nk_tensor *DY = &f->dy.t, *SM = &f->save_mean.t, *SI = &f->save_invstd.t;
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, NULL, &f->dx.t, &a.dz.t, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_NULL, "batchnorm_add_relu", "y");
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, &f->y.t, &f->dx.t, &f->dx.t, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_VALUE, "dx and dz", NULL);
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, &f->y.t, &f->dy.t, &f->dy.t, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_VALUE, "dx and dz", NULL);
    dzpart = *X;
    dzpart.data = (float *)X->data + 1;
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, &f->y.t, &f->dx.t, &dzpart, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_VALUE, "dz", "x");
    dzpart = f->y.t;
    dzpart.data = (float *)f->y.t.data + 1;
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, &f->y.t, &f->dx.t, &dzpart, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_VALUE, "dz", "y");
    dzpart = f->dy.t;
    dzpart.data = (float *)f->dy.t.data + 2;
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, &f->y.t, &f->dx.t, &dzpart, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_VALUE, "dz", "dy");
    zbad = a.dz.t;
    assert_int_equal(nk_tensor_contiguous(&zbad, a.dz.t.data, NK_F32, 4, other), NK_OK);
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, SM, SI, &f->y.t, &f->dx.t, &zbad, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_SHAPE, "batchnorm_add_relu", "dz");
    EXPECT_BAD(nk_batchnorm_add_relu_backward(ctx, &p, X, DY, G, NULL, SI, &f->y.t, &f->dx.t, &a.dz.t, &f->dgamma.t, &f->dbeta.t, NULL, 0),
               NK_ERR_NULL, "batchnorm_add_relu", "save_mean");
    NKT_STATUS(NULL, nk_batchnorm_add_relu_backward(NULL, &p, X, DY, G, SM, SI, &f->y.t, &f->dx.t, &a.dz.t, NULL, NULL, NULL, 0),
               NK_ERR_NULL);
    ar_free(&a);
    nk_ctx_destroy(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_formula),
        cmocka_unit_test(test_inference_vs_formula),
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_ref_vs_optimized),
        cmocka_unit_test(test_ref_vs_optimized_streaming),
        cmocka_unit_test(test_threads_bitwise),
        cmocka_unit_test(test_in_place_and_optional),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
