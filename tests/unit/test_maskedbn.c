/* Masked batch normalization: statistics over the valid positions only, masked-out outputs 0
 * with zero gradient. Masks u8 / float32 / float64 of shape (N, 1, S...), in several layouts.
 * Oracle: float64 formulas written here; finite differences in double at the valid positions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nk_test.h"
#include "support/variants_util.h"

/* ---- float64 oracle ---------------------------------------------------------------------- */
/* x, y, dy: logical (N, C, S); mask: logical (N, 1, S), valid where nonzero. */

static int64_t sp_of(int ndim, const int64_t *dims) {
    int64_t s = 1;
    for (int k = 2; k < ndim; k++) s *= dims[k];
    return s;
}

static int valid_at(const double *mask, int ndim, const int64_t *dims, int64_t i) {
    const int64_t S = sp_of(ndim, dims), C = dims[1];
    const int64_t n = i / (C * S), s = i % S;
    return mask[n * S + s] != 0;
}

static int64_t mo_count(const double *mask, int ndim, const int64_t *dims) {
    const int64_t m = dims[0] * sp_of(ndim, dims);
    int64_t k = 0;
    for (int64_t i = 0; i < m; i++) k += mask[i] != 0;
    return k;
}

static void mo_forward(const nk_batchnorm_params *p, int ndim, const int64_t *dims,
                       const double *x, const double *mask, const double *g, const double *b,
                       double *y, double *mean, double *invstd, double *rm, double *rv,
                       int64_t *nbt) {
    const int64_t C = dims[1], n = nko_numel(ndim, dims), M = mo_count(mask, ndim, dims);
    double *var = calloc((size_t)C, sizeof *var);
    for (int64_t c = 0; c < C; c++) mean[c] = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (valid_at(mask, ndim, dims, i)) mean[nko_channel(ndim, dims, i)] += x[i];
    for (int64_t c = 0; c < C; c++) mean[c] /= (double)M;
    for (int64_t i = 0; i < n; i++)
        if (valid_at(mask, ndim, dims, i)) {
            const int64_t c = nko_channel(ndim, dims, i);
            var[c] += (x[i] - mean[c]) * (x[i] - mean[c]);
        }
    for (int64_t c = 0; c < C; c++) {
        var[c] /= (double)M;
        invstd[c] = 1.0 / sqrt(var[c] + p->eps);
    }
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = nko_channel(ndim, dims, i);
        double v = 0.0;
        if (valid_at(mask, ndim, dims, i)) {
            v = (x[i] - mean[c]) * invstd[c];
            if (p->flags & NK_BN_USE_SCALE) v *= g[c];
            if (p->flags & NK_BN_USE_SHIFT) v += b[c];
            if ((p->flags & NK_BN_FUSE_RELU) && v < 0) v = 0.0;
        }
        y[i] = v;
    }
    if (rm) {
        const double bessel = p->unbiased_running_var ? (double)M / (double)(M - 1) : 1.0;
        double f = p->momentum; /* weight of the batch */
        if (p->momentum_kind == NK_MOMENTUM_ONNX) f = 1.0 - p->momentum;
        if (p->momentum_kind == NK_MOMENTUM_CUMULATIVE) f = 1.0 / (double)(*nbt + 1);
        for (int64_t c = 0; c < C; c++) {
            rm[c] += f * (mean[c] - rm[c]);
            rv[c] += f * (var[c] * bessel - rv[c]);
        }
        if (nbt) *nbt += 1;
    }
    free(var);
}

static void mo_backward(const nk_batchnorm_params *p, int ndim, const int64_t *dims,
                        const double *x, const double *mask, const double *dy, const double *g,
                        const double *mean, const double *invstd, const double *y, double *dx,
                        double *dgamma, double *dbeta) {
    const int64_t C = dims[1], n = nko_numel(ndim, dims), M = mo_count(mask, ndim, dims);
    const int relu = (p->flags & NK_BN_FUSE_RELU) != 0;
    for (int64_t c = 0; c < C; c++) dgamma[c] = dbeta[c] = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (valid_at(mask, ndim, dims, i)) {
            const int64_t c = nko_channel(ndim, dims, i);
            const double gi = relu && y[i] <= 0 ? 0.0 : dy[i];
            dbeta[c] += gi;
            dgamma[c] += gi * (x[i] - mean[c]) * invstd[c];
        }
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = nko_channel(ndim, dims, i);
        dx[i] = 0.0;
        if (!valid_at(mask, ndim, dims, i)) continue;
        const double gi = relu && y[i] <= 0 ? 0.0 : dy[i];
        const double gm = (p->flags & NK_BN_USE_SCALE) ? g[c] : 1.0;
        const double xh = (x[i] - mean[c]) * invstd[c];
        dx[i] = gm * invstd[c] * (gi - dbeta[c] / (double)M - xh * dgamma[c] / (double)M);
    }
}

/* ---- masks of every dtype and layout ------------------------------------------------------- */

typedef struct mk_mask {
    nk_tensor t;
    nkt_buf fb;   /* float masks */
    uint8_t *u8;  /* u8 masks */
    double *v;    /* logical values (N * S) */
} mk_mask;

/* density: probability of a valid position; logical values v[] are 0/1 (float masks use other
 * nonzero values too: nonzero = valid) */
static void mask_init(mk_mask *m, nkt_rng *r, nk_dtype dt, int ndim, const int64_t *xdims,
                      nkt_layout lay, double density) {
    memset(m, 0, sizeof *m);
    int64_t d[NK_MAX_DIMS];
    memcpy(d, xdims, (size_t)ndim * sizeof *d);
    d[1] = 1;
    const int64_t n = nko_numel(ndim, d);
    m->v = nkt_malloc((size_t)(n ? n : 1) * sizeof *m->v);
    for (int64_t i = 0; i < n; i++) {
        const int on = nkt_uniform(r, 0, 1) < density;
        m->v[i] = on ? (dt == NK_U8 ? 1.0 : nkt_uniform(r, 0, 1) < 0.5 ? 1.0 : -2.5) : 0.0;
    }
    if (dt != NK_U8) {
        nkt_alloc(&m->fb, dt, ndim, d, lay, 1);
        nkt_set(&m->fb, m->v);
        m->t = m->fb.t;
        return;
    }
    /* u8: contiguous, or every other byte (strided) */
    int64_t st[NK_MAX_DIMS], step = lay == NKT_STRIDED ? 2 : 1, acc = step;
    for (int k = ndim - 1; k >= 0; k--) {
        st[k] = acc;
        acc *= d[k] ? d[k] : 1;
    }
    m->u8 = nkt_malloc((size_t)acc + 1);
    memset(m->u8, 0xA5, (size_t)acc + 1);
    assert_int_equal(nk_tensor_strided(&m->t, m->u8 + 1, NK_U8, ndim, d, st), NK_OK);
    for (int64_t i = 0; i < n; i++) m->u8[1 + nkt_offset(&m->t, i)] = m->v[i] != 0 ? (uint8_t)(1 + i % 200) : 0;
}

static void mask_set_all(mk_mask *m, double v) {
    const int64_t n = nko_numel(m->t.ndim, m->t.dims);
    for (int64_t i = 0; i < n; i++) m->v[i] = v;
    if (m->u8)
        for (int64_t i = 0; i < n; i++) m->u8[1 + nkt_offset(&m->t, i)] = (uint8_t)(v != 0);
    else
        nkt_set(&m->fb, m->v);
}

static void mask_free(mk_mask *m) {
    if (m->fb.buf) nkt_free(&m->fb);
    free(m->u8);
    free(m->v);
}

static const char *mask_name(nk_dtype dt) { return dt == NK_U8 ? "u8" : nkt_dtype_name(dt); }

/* ---- forward -------------------------------------------------------------------------------- */

typedef struct mk_shape {
    int ndim;
    int64_t dims[4];
} mk_shape;

static const mk_shape SHAPES[] = {
    {3, {4, 3, 6}}, {4, {3, 2, 5, 4}}, {2, {9, 4}}, {3, {2, 23, 17}}, {3, {5, 1, 7}},
};
#define NSHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])
static const nk_dtype MASK_DTYPES[] = {NK_U8, NK_F32, NK_F64};

static nk_status mk_forward(nk_ctx *ctx, const nk_batchnorm_params *p, nkt_bn *f, const mk_mask *m,
                            int64_t *nbt) {
    return nk_masked_batchnorm_forward_train(ctx, p, &f->x.t, &m->t, &f->gamma.t, &f->beta.t,
                                             &f->y.t, &f->save_mean.t, &f->save_invstd.t,
                                             &f->run_mean.t, &f->run_var.t, nbt, NULL, 0);
}

static nk_status mk_backward(nk_ctx *ctx, const nk_batchnorm_params *p, nkt_bn *f, const mk_mask *m) {
    return nk_masked_batchnorm_backward(ctx, p, &f->x.t, &m->t, &f->dy.t, &f->gamma.t,
                                        &f->save_mean.t, &f->save_invstd.t, &f->y.t, &f->dx.t,
                                        &f->dgamma.t, &f->dbeta.t, NULL, 0);
}

static void test_forward_oracle(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    uint64_t salt = 900;
    for (int s = 0; s < NSHAPES; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
            for (int dti = 0; dti < 2; dti++)
                for (int mi = 0; mi < 3; mi++, salt++) {
                    const nk_dtype dt = dti ? NK_F64 : NK_F32, vdt = (salt & 1) ? NK_F64 : NK_F32;
                    nkt_rng rng = nkt_rng_make(salt);
                    nkt_bn f;
                    nkt_bn_init(&f, &rng, SHAPES[s].ndim, SHAPES[s].dims, dt, vdt, (nkt_layout)lay, 1);
                    mk_mask m;
                    mask_init(&m, &rng, MASK_DTYPES[mi], f.ndim, f.dims, (nkt_layout)((lay + mi) % NKT_NUM_LAYOUTS), 0.7);
                    if (mo_count(m.v, f.ndim, f.dims) < 2) mask_set_all(&m, 1.0);
                    nk_batchnorm_params p;
                    nk_batchnorm_params_default(&p);
                    if (salt % 3 == 1) nk_batchnorm_params_onnx(&p);
                    if (salt % 3 == 2) p.momentum_kind = NK_MOMENTUM_CUMULATIVE;
                    if (salt % 4 == 0) p.flags |= NK_BN_FUSE_RELU;
                    if (salt % 5 == 0) p.flags &= ~NK_BN_USE_SCALE;
                    char desc[256];
                    nkt_case("%s mask %s flags %u kind %d", nkt_bn_desc(&f, desc, sizeof desc),
                             mask_name(MASK_DTYPES[mi]), p.flags, (int)p.momentum_kind);
                    const int64_t C = f.C, n = f.n;
                    double *y = nkt_malloc((size_t)n * sizeof *y), *st = nkt_malloc((size_t)4 * C * sizeof *st);
                    memcpy(st + 2 * C, f.rmv, (size_t)C * sizeof *st);
                    memcpy(st + 3 * C, f.rvv, (size_t)C * sizeof *st);
                    int64_t nbt = 2, nbt_want = 2;
                    mo_forward(&p, f.ndim, f.dims, f.xv, m.v, f.gv, f.bv, y, st, st + C, st + 2 * C, st + 3 * C, &nbt_want);
                    NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, &nbt));
                    double *got = vt_read(&f.y);
                    NKT_CLOSE("y", got, y, n, nkt_tol_result(dt));
                    for (int64_t i = 0; i < n; i++)
                        if (!valid_at(m.v, f.ndim, f.dims, i) && got[i] != 0.0)
                            NKT_FAIL("masked-out y[%lld] = %g, want 0", (long long)i, got[i]);
                    free(got);
                    const char *names[] = {"save_mean", "save_invstd", "running_mean", "running_var"};
                    nkt_buf *bufs[] = {&f.save_mean, &f.save_invstd, &f.run_mean, &f.run_var};
                    for (int k = 0; k < 4; k++) {
                        got = vt_read(bufs[k]);
                        NKT_CLOSE(names[k], got, st + k * C, C, vdt == NK_F32 ? TOL_F32_RESULT : TOL_F64_STATS);
                        free(got);
                    }
                    NKT_CHECK(nbt == nbt_want, "num_batches_tracked %lld", (long long)nbt);
                    NKT_GAPS_UNTOUCHED(&f.y);
                    free(y);
                    free(st);
                    mask_free(&m);
                    nkt_bn_free(&f);
                }
    nk_ctx_destroy(ctx);
}

/* A mask with every position valid gives batch norm (up to rounding). */
static void test_all_valid_is_batchnorm(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    const int64_t dims[] = {3, 4, 5, 6};
    for (int dti = 0; dti < 2; dti++) {
        const nk_dtype dt = dti ? NK_F64 : NK_F32;
        nkt_rng rng = nkt_rng_make(61);
        nkt_bn a, b;
        nkt_bn_init(&a, &rng, 4, dims, dt, NK_F64, NKT_CHLAST, 1);
        rng = nkt_rng_make(61);
        nkt_bn_init(&b, &rng, 4, dims, dt, NK_F64, NKT_CHLAST, 1);
        mk_mask m;
        mask_init(&m, &rng, NK_U8, 4, dims, NKT_CONTIG, 1.0);
        nk_batchnorm_params p;
        nk_batchnorm_params_default(&p);
        nkt_case("all valid, %s", nkt_dtype_name(dt));
        NKT_OK(ctx, mk_forward(ctx, &p, &a, &m, NULL));
        NKT_OK(ctx, nk_batchnorm_forward_train(ctx, &p, &b.x.t, &b.gamma.t, &b.beta.t, &b.y.t,
                                               &b.save_mean.t, &b.save_invstd.t, &b.run_mean.t,
                                               &b.run_var.t, NULL, NULL, 0));
        NKT_OK(ctx, mk_backward(ctx, &p, &a, &m));
        NKT_OK(ctx, nk_batchnorm_backward(ctx, &p, &b.x.t, &b.dy.t, &b.gamma.t, &b.save_mean.t,
                                          &b.save_invstd.t, NULL, &b.dx.t, &b.dgamma.t, &b.dbeta.t,
                                          NULL, 0));
        nkt_buf *pa[] = {&a.y, &a.run_var, &a.dx, &a.dgamma}, *pb[] = {&b.y, &b.run_var, &b.dx, &b.dgamma};
        const char *names[] = {"y", "running_var", "dx", "dgamma"};
        for (int k = 0; k < 4; k++) {
            double *ga = vt_read(pa[k]), *gb = vt_read(pb[k]);
            NKT_CLOSE(names[k], ga, gb, pa[k]->numel, k == 0 || k == 2 ? nkt_tol_result(dt) : TOL_F64_STATS);
            free(ga);
            free(gb);
        }
        mask_free(&m);
        nkt_bn_free(&a);
        nkt_bn_free(&b);
    }
    nk_ctx_destroy(ctx);
}

/* ---- backward -------------------------------------------------------------------------------- */

typedef struct fd_ctx {
    const nk_batchnorm_params *p;
    int ndim;
    const int64_t *dims;
    double *x, *g, *b;
    const double *mask, *dy;
    double *y, *st;
} fd_ctx;

static double fd_loss(void *vp) {
    fd_ctx *c = vp;
    const int64_t C = c->dims[1];
    mo_forward(c->p, c->ndim, c->dims, c->x, c->mask, c->g, c->b, c->y, c->st, c->st + C, NULL, NULL, NULL);
    return vt_dot(c->dy, c->y, nko_numel(c->ndim, c->dims));
}

static void test_backward(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    uint64_t salt = 1200;
    for (int s = 0; s < NSHAPES; s++)
        for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
            for (int dti = 0; dti < 2; dti++)
                for (int relu = 0; relu < 2; relu++, salt++) {
                    const nk_dtype dt = dti ? NK_F64 : NK_F32, mdt = MASK_DTYPES[salt % 3];
                    nkt_rng rng = nkt_rng_make(salt);
                    nkt_bn f;
                    nkt_bn_init(&f, &rng, SHAPES[s].ndim, SHAPES[s].dims, dt, NK_F64, (nkt_layout)lay, 1);
                    mk_mask m;
                    mask_init(&m, &rng, mdt, f.ndim, f.dims, (nkt_layout)lay, 0.6);
                    if (mo_count(m.v, f.ndim, f.dims) < 2) mask_set_all(&m, 1.0);
                    nk_batchnorm_params p;
                    nk_batchnorm_params_default(&p);
                    if (relu) p.flags |= NK_BN_FUSE_RELU;
                    char desc[256];
                    nkt_case("%s mask %s relu %d", nkt_bn_desc(&f, desc, sizeof desc), mask_name(mdt), relu);
                    const int64_t C = f.C, n = f.n;
                    /* dy is nonzero at masked positions too: they must not contribute */
                    NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, NULL));
                    NKT_OK(ctx, mk_backward(ctx, &p, &f, &m));
                    double *y = nkt_malloc((size_t)n * sizeof *y), *st = nkt_malloc((size_t)4 * C * sizeof *st);
                    mo_forward(&p, f.ndim, f.dims, f.xv, m.v, f.gv, f.bv, y, st, st + C, NULL, NULL, NULL);
                    double *ys = vt_read(&f.y), *dx = nkt_malloc((size_t)n * sizeof *dx);
                    mo_backward(&p, f.ndim, f.dims, f.xv, m.v, f.dyv, f.gv, st, st + C, ys, dx, st + 2 * C, st + 3 * C);
                    double *got = vt_read(&f.dx);
                    NKT_CLOSE("dx", got, dx, n, nkt_tol_result(dt));
                    for (int64_t i = 0; i < n; i++)
                        if (!valid_at(m.v, f.ndim, f.dims, i) && got[i] != 0.0)
                            NKT_FAIL("masked-out dx[%lld] = %g, want 0", (long long)i, got[i]);
                    free(got);
                    got = vt_read(&f.dgamma);
                    NKT_CLOSE("dgamma", got, st + 2 * C, C, TOL_F64_STATS);
                    free(got);
                    got = vt_read(&f.dbeta);
                    NKT_CLOSE("dbeta", got, st + 3 * C, C, TOL_F64_STATS);
                    free(got);
                    if (dt == NK_F64 && !relu) { /* finite differences at the valid positions */
                        fd_ctx c = {&p, f.ndim, f.dims, f.xv, f.gv, f.bv, m.v, f.dyv, y, st};
                        double *num = nkt_malloc((size_t)(n + 2 * C) * sizeof *num);
                        double *gx = vt_read(&f.dx), *sel = nkt_malloc((size_t)n * sizeof *sel);
                        int64_t k = 0;
                        for (int64_t i = 0; i < n; i++)
                            if (valid_at(m.v, f.ndim, f.dims, i)) {
                                num[k] = vt_fd(&f.xv[i], fd_loss, &c);
                                sel[k++] = gx[i];
                            }
                        NKT_CLOSE("dx (valid positions) vs finite differences", sel, num, k, TOL_GRADCHECK);
                        for (int64_t j = 0; j < C; j++) {
                            num[j] = vt_fd(&f.gv[j], fd_loss, &c);
                            num[C + j] = vt_fd(&f.bv[j], fd_loss, &c);
                        }
                        got = vt_read(&f.dgamma);
                        NKT_CLOSE("dgamma vs finite differences", got, num, C, TOL_GRADCHECK);
                        free(got);
                        got = vt_read(&f.dbeta);
                        NKT_CLOSE("dbeta vs finite differences", got, num + C, C, TOL_GRADCHECK);
                        free(got);
                        free(num);
                        free(gx);
                        free(sel);
                    }
                    free(y);
                    free(st);
                    free(ys);
                    free(dx);
                    mask_free(&m);
                    nkt_bn_free(&f);
                }
    nk_ctx_destroy(ctx);
}

/* dx = dy in place, with and without the fused ReLU. */
static void test_backward_inplace(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    const int64_t dims[] = {4, 3, 10};
    for (int relu = 0; relu < 2; relu++) {
        nkt_rng rng = nkt_rng_make(77);
        nkt_bn f;
        nkt_bn_init(&f, &rng, 3, dims, NK_F32, NK_F32, NKT_STRIDED, 1);
        mk_mask m;
        mask_init(&m, &rng, NK_F32, 3, dims, NKT_CONTIG, 0.5);
        nk_batchnorm_params p;
        nk_batchnorm_params_default(&p);
        if (relu) p.flags |= NK_BN_FUSE_RELU;
        nkt_case("in place, relu %d", relu);
        NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, NULL));
        NKT_OK(ctx, mk_backward(ctx, &p, &f, &m));
        double *dx = vt_read(&f.dx);
        NKT_OK(ctx, nk_masked_batchnorm_backward(ctx, &p, &f.x.t, &m.t, &f.dy.t, &f.gamma.t,
                                                 &f.save_mean.t, &f.save_invstd.t, &f.y.t, &f.dy.t,
                                                 NULL, NULL, NULL, 0));
        double *got = vt_read(&f.dy);
        NKT_CHECK(memcmp(got, dx, (size_t)f.n * sizeof *dx) == 0, "in-place dx differs (relu %d)", relu);
        free(got);
        free(dx);
        mask_free(&m);
        nkt_bn_free(&f);
    }
    nk_ctx_destroy(ctx);
}

/* float32 save_mean of badly scaled data: the exact mean is recovered from x. */
static void test_backward_float32_saved_mean(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    const int64_t dims[] = {32, 2, 40};
    nkt_rng rng = nkt_rng_make(88);
    nkt_bn f;
    nkt_bn_init(&f, &rng, 3, dims, NK_F32, NK_F32, NKT_CONTIG, 1);
    for (int64_t i = 0; i < f.n; i++) f.xv[i] = 1e4 + nkt_normal(&rng, 0.0, 1e-2);
    nkt_bn_set_x(&f, f.xv);
    mk_mask m;
    mask_init(&m, &rng, NK_U8, 3, dims, NKT_CONTIG, 0.8);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    p.eps = 1e-9;
    nkt_case("mean 1e4, std 1e-2, float32 saved statistics");
    NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, NULL));
    NKT_OK(ctx, mk_backward(ctx, &p, &f, &m));
    double st[8], y[2560], dx[2560];
    mo_forward(&p, 3, dims, f.xv, m.v, f.gv, f.bv, y, st, st + 2, NULL, NULL, NULL);
    double *si = vt_read(&f.save_invstd); /* the stored invstd, the exact mean */
    mo_backward(&p, 3, dims, f.xv, m.v, f.dyv, f.gv, st, si, y, dx, st + 4, st + 6);
    double *got = vt_read(&f.dgamma);
    NKT_CLOSE("dgamma", got, st + 4, 2, TOL_F32_RESULT);
    free(got);
    got = vt_read(&f.dx);
    VT_CLOSE_NORM("dx", got, dx, f.n, TOL_F32_RESULT);
    free(got);
    free(si);
    mask_free(&m);
    nkt_bn_free(&f);
    nk_ctx_destroy(ctx);
}

/* ---- bad input ------------------------------------------------------------------------------- */

static void test_bad_input(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    const int64_t dims[] = {3, 4, 5};
    nkt_rng rng = nkt_rng_make(99);
    nkt_bn f;
    nkt_bn_init(&f, &rng, 3, dims, NK_F32, NK_F32, NKT_CONTIG, 1);
    mk_mask m;
    mask_init(&m, &rng, NK_U8, 3, dims, NKT_CONTIG, 0.7);
    nkt_buf *outs[] = {&f.y, &f.save_mean, &f.save_invstd, &f.run_mean, &f.run_var, &f.dx, &f.dgamma, &f.dbeta};
    const char *names[] = {"y", "save_mean", "save_invstd", "running_mean", "running_var", "dx", "dgamma", "dbeta"};
    vt_snap_all(outs, 8);
    nk_batchnorm_params good;
    nk_batchnorm_params_default(&good);
    int64_t nbt = 4;

    nk_tensor m_chan = m.t; /* a per-channel mask (C on axis 1) is not accepted */
    m_chan.dims[1] = 4;
    nk_tensor m_rank = m.t;
    m_rank.ndim = 2;
    nk_tensor m_len = m.t;
    m_len.dims[2] = 4;
    nk_tensor m_dtype = m.t;
    m_dtype.dtype = (nk_dtype)7;
    nk_tensor m_null = m.t;
    m_null.data = NULL;
    nk_tensor short_vec = f.gamma.t;
    short_vec.dims[0] = 2;
    nk_batchnorm_params bad_m = good;
    bad_m.momentum = -0.5;
    struct { const char *what; const nk_batchnorm_params *p; const nk_tensor *mask, *g; nk_status want; const char *msg; } cases[] = {
        {"mask NULL", &good, NULL, &f.gamma.t, NK_ERR_NULL, "mask"},
        {"mask with C channels", &good, &m_chan, &f.gamma.t, NK_ERR_SHAPE, "mask must have x's shape with 1 on axis 1"},
        {"mask rank", &good, &m_rank, &f.gamma.t, NK_ERR_SHAPE, "mask"},
        {"mask length", &good, &m_len, &f.gamma.t, NK_ERR_SHAPE, "mask"},
        {"mask dtype", &good, &m_dtype, &f.gamma.t, NK_ERR_DTYPE, "mask"},
        {"mask data NULL", &good, &m_null, &f.gamma.t, NK_ERR_NULL, "mask->data"},
        {"gamma length", &good, &m.t, &short_vec, NK_ERR_SHAPE, "gamma"},
        {"momentum", &bad_m, &m.t, &f.gamma.t, NK_ERR_VALUE, "momentum"},
        {"params NULL", NULL, &m.t, &f.gamma.t, NK_ERR_NULL, "params"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nkt_case("forward: %s", cases[i].what);
        NKT_STATUS(ctx, nk_masked_batchnorm_forward_train(ctx, cases[i].p, &f.x.t, cases[i].mask, cases[i].g, &f.beta.t, &f.y.t, &f.save_mean.t, &f.save_invstd.t, &f.run_mean.t, &f.run_var.t, &nbt, NULL, 0), cases[i].want);
        NKT_MSG_HAS(ctx, "masked_batchnorm: ", cases[i].msg);
        VT_UNTOUCHED(outs, names, 8);
        if (i != 7) { /* the backward does not use the momentum */
            nkt_case("backward: %s", cases[i].what);
            NKT_STATUS(ctx, nk_masked_batchnorm_backward(ctx, cases[i].p, &f.x.t, cases[i].mask, &f.dy.t, cases[i].g, &f.save_mean.t, &f.save_invstd.t, NULL, &f.dx.t, &f.dgamma.t, &f.dbeta.t, NULL, 0), cases[i].want);
            VT_UNTOUCHED(outs, names, 8);
        }
    }
    /* too few valid positions: none, and one (a forward/backward of 1 value per channel) */
    for (int valid = 0; valid < 2; valid++) {
        mask_set_all(&m, 0.0);
        if (valid) {
            m.u8[1 + 7] = 3;
            m.v[7] = 1;
        }
        nkt_case("%d valid positions", valid);
        NKT_STATUS(ctx, mk_forward(ctx, &good, &f, &m, &nbt), NK_ERR_DEGENERATE);
        NKT_MSG_HAS(ctx, "masked_batchnorm: expected more than 1 valid value per channel", valid ? "has 1 valid" : "has 0 valid");
        NKT_STATUS(ctx, mk_backward(ctx, &good, &f, &m), NK_ERR_DEGENERATE);
        VT_UNTOUCHED(outs, names, 8);
    }
    NKT_CHECK(nbt == 4, "num_batches_tracked changed");
    mask_free(&m);
    nkt_bn_free(&f);
    nk_ctx_destroy(ctx);
}

static void test_empty_and_nonfinite(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    const int64_t d0[] = {0, 3, 4};
    nkt_rng rng = nkt_rng_make(5);
    nkt_bn f;
    nkt_bn_init(&f, &rng, 3, d0, NK_F64, NK_F64, NKT_CONTIG, 1);
    mk_mask m;
    mask_init(&m, &rng, NK_U8, 3, d0, NKT_CONTIG, 0.5);
    nkt_buf *outs[] = {&f.save_mean, &f.save_invstd, &f.run_mean, &f.run_var};
    const char *names[] = {"save_mean", "save_invstd", "running_mean", "running_var"};
    vt_snap_all(outs, 4);
    int64_t nbt = 0;
    nkt_case("N = 0");
    NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, &nbt));
    VT_UNTOUCHED(outs, names, 4);
    NKT_CHECK(nbt == 0, "counter moved");
    NKT_OK(ctx, mk_backward(ctx, &p, &f, &m));
    double *dg = vt_read(&f.dgamma);
    for (int c = 0; c < 3; c++) NKT_CHECK(dg[c] == 0, "dgamma[%d] = %g", c, dg[c]);
    free(dg);
    mask_free(&m);
    nkt_bn_free(&f);

    /* a NaN at a masked-out position is ignored; at a valid one it warns */
    const int64_t d1[] = {4, 2, 3};
    rng = nkt_rng_make(6);
    nkt_bn_init(&f, &rng, 3, d1, NK_F64, NK_F64, NKT_CONTIG, 1);
    mask_init(&m, &rng, NK_U8, 3, d1, NKT_CONTIG, 1.0);
    m.u8[1 + 4] = 0; /* sample 1, position 1 */
    m.v[4] = 0;
    f.xv[1 * 6 + 0 * 3 + 1] = NAN; /* x[1, 0, 1]: masked out */
    nkt_bn_set_x(&f, f.xv);
    nkt_case("NaN at a masked-out position");
    NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, &nbt));
    double *y = vt_read(&f.y);
    for (int64_t i = 0; i < f.n; i++) NKT_CHECK(isfinite(y[i]), "y[%lld] = %g", (long long)i, y[i]);
    free(y);
    f.xv[1 * 6 + 1 * 3 + 2] = NAN; /* x[1, 1, 2]: valid */
    nkt_bn_set_x(&f, f.xv);
    nkt_buf *run[] = {&f.run_mean, &f.run_var};
    const char *rn[] = {"running_mean", "running_var"};
    vt_snap_all(run, 2);
    nkt_case("NaN at a valid position");
    NKT_STATUS(ctx, mk_forward(ctx, &p, &f, &m, &nbt), NK_WARN_NONFINITE_STATS);
    NKT_MSG_HAS(ctx, "masked_batchnorm: batch statistics of channel 1", NULL);
    VT_UNTOUCHED(run, rn, 2);
    mask_free(&m);
    nkt_bn_free(&f);
    nk_ctx_destroy(ctx);
}

/* ---- threads and workspace ---------------------------------------------------------------- */

static void test_threads_bitwise(void **state) {
    (void)state;
    const int64_t dims[] = {6, 3, 80, 90}; /* 43200 values per channel: 6 blocks */
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    p.flags |= NK_BN_FUSE_RELU;
    nkt_bn ref;
    nkt_rng rng = nkt_rng_make(123);
    nkt_bn_init(&ref, &rng, 4, dims, NK_F32, NK_F32, NKT_CHLAST, 1);
    mk_mask m;
    mask_init(&m, &rng, NK_U8, 4, dims, NKT_CONTIG, 0.6);
    nkt_case("threads");
    nk_ctx *c1 = nkt_ctx(1);
    NKT_OK(c1, mk_forward(c1, &p, &ref, &m, NULL));
    NKT_OK(c1, mk_backward(c1, &p, &ref, &m));
    nk_ctx_destroy(c1);
    for (int th = 2; th <= VT_MAX_THREADS; th++) {
        nkt_bn f;
        rng = nkt_rng_make(123);
        nkt_bn_init(&f, &rng, 4, dims, NK_F32, NK_F32, NKT_CHLAST, 1);
        nk_ctx *ctx = nkt_ctx(th);
        NKT_OK(ctx, mk_forward(ctx, &p, &f, &m, NULL));
        NKT_OK(ctx, mk_backward(ctx, &p, &f, &m));
        nkt_buf *a[] = {&ref.y, &ref.save_mean, &ref.save_invstd, &ref.run_mean, &ref.run_var, &ref.dx, &ref.dgamma, &ref.dbeta};
        nkt_buf *b[] = {&f.y, &f.save_mean, &f.save_invstd, &f.run_mean, &f.run_var, &f.dx, &f.dgamma, &f.dbeta};
        for (int i = 0; i < 8; i++) {
            char what[64];
            snprintf(what, sizeof what, "output %d with %d threads", i, th);
            NKT_SAME_BYTES(what, a[i]->buf, b[i]->buf, vt_bytes(a[i]));
        }
        nk_ctx_destroy(ctx);
        nkt_bn_free(&f);
    }
    mask_free(&m);
    nkt_bn_free(&ref);
}

/* ---- optimized kernels against the reference ------------------------------------------------
 * The optimized masked kernels (kernels/simd/masked_simd_impl.h) vectorize runs of stride 1
 * (NCHW) and sum in a different order from the reference's running sums: outputs within the
 * result tolerance of the reference (same double expression, sums differing in the last bits),
 * statistics within TOL_F64_STATS when stored in double. Masked-out positions hold NaN in x and
 * dy: they must not leak into any output. Odd spatial sizes leave vector tails and heads. */

static void run_fwd_bwd(nk_ctx *ctx, const nk_batchnorm_params *p, nkt_bn *f, const mk_mask *m) {
    NKT_OK(ctx, mk_forward(ctx, p, f, m, NULL));
    NKT_OK(ctx, mk_backward(ctx, p, f, m));
}

static void test_optimized_vs_reference(void **state) {
    (void)state;
    static const int64_t dims_list[][4] = {{3, 5, 37, 1}, {2, 3, 61, 9}, {4, 1, 1000, 1}};
    for (int di = 0; di < 3; di++)
        for (int mi = 0; mi < 3; mi++)
            for (int dti = 0; dti < 2; dti++)
                for (int relu = 0; relu < 2; relu++) {
                    const nk_dtype dt = dti ? NK_F64 : NK_F32, mt = MASK_DTYPES[mi];
                    const int ndim = dims_list[di][3] == 1 ? 3 : 4;
                    const int64_t *dims = dims_list[di];
                    nk_batchnorm_params p;
                    nk_batchnorm_params_default(&p);
                    if (relu) p.flags |= NK_BN_FUSE_RELU;
                    const uint64_t salt = 900 + (uint64_t)(di * 12 + mi * 4 + dti * 2 + relu);
                    nkt_bn fr, fo;
                    mk_mask m;
                    nkt_rng r1 = nkt_rng_make(salt), r2 = nkt_rng_make(salt);
                    nkt_bn_init(&fr, &r1, ndim, dims, dt, NK_F64, NKT_CONTIG, 1);
                    nkt_bn_init(&fo, &r2, ndim, dims, dt, NK_F64, NKT_CONTIG, 1);
                    mask_init(&m, &r1, mt, ndim, dims, NKT_CONTIG, 0.6);
                    /* NaN where masked out */
                    double *xv = nkt_malloc((size_t)fr.n * sizeof *xv);
                    nkt_get(&fr.x, xv);
                    for (int64_t i = 0; i < fr.n; i++)
                        if (!valid_at(m.v, ndim, dims, i)) xv[i] = NAN;
                    nkt_bn_set_x(&fr, xv);
                    nkt_bn_set_x(&fo, xv);
                    nkt_case("masked optimized vs reference: x %s %s, mask %s, relu %d",
                             nkt_dims_str(ndim, dims, (char[80]){0}, 80), nkt_dtype_name(dt),
                             mask_name(mt), relu);
                    nk_ctx *cr = nkt_ctx(1), *co = nkt_ctx(1);
                    assert_int_equal(nk_ctx_set_force_ref(cr, 1), NK_OK);
                    run_fwd_bwd(cr, &p, &fr, &m);
                    run_fwd_bwd(co, &p, &fo, &m);
                    double *a = nkt_malloc((size_t)fr.n * sizeof *a), *b = nkt_malloc((size_t)fr.n * sizeof *b);
                    nkt_buf *data_r[] = {&fr.y, &fr.dx}, *data_o[] = {&fo.y, &fo.dx};
                    const char *dn[] = {"y", "dx"};
                    for (int k = 0; k < 2; k++) {
                        nkt_get(data_r[k], a);
                        nkt_get(data_o[k], b);
                        for (int64_t i = 0; i < fr.n; i++)
                            if (!valid_at(m.v, ndim, dims, i)) assert_true(b[i] == 0.0);
                        NKT_CLOSE(dn[k], b, a, fr.n, nkt_tol_result(dt));
                    }
                    nkt_buf *st_r[] = {&fr.save_mean, &fr.save_invstd, &fr.dgamma, &fr.dbeta};
                    nkt_buf *st_o[] = {&fo.save_mean, &fo.save_invstd, &fo.dgamma, &fo.dbeta};
                    const char *sn[] = {"save_mean", "save_invstd", "dgamma", "dbeta"};
                    for (int k = 0; k < 4; k++) {
                        nkt_get(st_r[k], a);
                        nkt_get(st_o[k], b);
                        NKT_CLOSE(sn[k], b, a, fr.C, TOL_F64_STATS);
                    }
                    free(a);
                    free(b);
                    free(xv);
                    nk_ctx_destroy(cr);
                    nk_ctx_destroy(co);
                    mask_free(&m);
                    nkt_bn_free(&fr);
                    nkt_bn_free(&fo);
                }
}

/* NCHW (the vectorized path): bitwise identical outputs for 1 to 4 threads */
static void test_threads_bitwise_nchw(void **state) {
    (void)state;
    const int64_t dims[] = {5, 3, 97, 91}; /* 44135 values per channel: 6 blocks */
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    nkt_bn ref;
    nkt_rng rng = nkt_rng_make(321);
    nkt_bn_init(&ref, &rng, 4, dims, NK_F32, NK_F32, NKT_CONTIG, 1);
    mk_mask m;
    mask_init(&m, &rng, NK_F32, 4, dims, NKT_CONTIG, 0.7);
    nkt_case("threads, NCHW");
    nk_ctx *c1 = nkt_ctx(1);
    run_fwd_bwd(c1, &p, &ref, &m);
    nk_ctx_destroy(c1);
    for (int th = 2; th <= VT_MAX_THREADS; th++) {
        nkt_bn f;
        rng = nkt_rng_make(321);
        nkt_bn_init(&f, &rng, 4, dims, NK_F32, NK_F32, NKT_CONTIG, 1);
        nk_ctx *ctx = nkt_ctx(th);
        run_fwd_bwd(ctx, &p, &f, &m);
        nkt_buf *a[] = {&ref.y, &ref.save_mean, &ref.save_invstd, &ref.dx, &ref.dgamma, &ref.dbeta};
        nkt_buf *b[] = {&f.y, &f.save_mean, &f.save_invstd, &f.dx, &f.dgamma, &f.dbeta};
        for (int i = 0; i < 6; i++) {
            char what[64];
            snprintf(what, sizeof what, "output %d with %d threads", i, th);
            NKT_SAME_BYTES(what, a[i]->buf, b[i]->buf, vt_bytes(a[i]));
        }
        nk_ctx_destroy(ctx);
        nkt_bn_free(&f);
    }
    mask_free(&m);
    nkt_bn_free(&ref);
}

static void test_workspace_bn_size(void **state) {
    (void)state;
    nk_ctx *ctx = nkt_ctx(1);
    const int64_t spatial[] = {1000, 2600, 4200};
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    for (int i = 0; i < 3; i++) {
        const int64_t dims[] = {5, 1 + 3 * i, spatial[i]};
        nkt_rng rng = nkt_rng_make(50 + (uint64_t)i);
        nkt_bn f;
        nkt_bn_init(&f, &rng, 3, dims, NK_F64, NK_F64, NKT_CONTIG, 1);
        mk_mask m;
        mask_init(&m, &rng, NK_U8, 3, dims, NKT_CONTIG, 0.5);
        size_t bytes = 0;
        assert_int_equal(nk_batchnorm_workspace_size(&f.x.t, &bytes), NK_OK);
        char *raw = nkt_malloc(bytes + 8), *ws = raw + 8;
        nkt_case("workspace %zu bytes, x [5, %lld, %lld]", bytes, (long long)dims[1], (long long)spatial[i]);
        NKT_OK(ctx, nk_masked_batchnorm_forward_train(ctx, &p, &f.x.t, &m.t, &f.gamma.t, &f.beta.t, &f.y.t,
                                                      &f.save_mean.t, &f.save_invstd.t, &f.run_mean.t,
                                                      &f.run_var.t, NULL, ws, bytes));
        NKT_OK(ctx, nk_masked_batchnorm_backward(ctx, &p, &f.x.t, &m.t, &f.dy.t, &f.gamma.t, &f.save_mean.t,
                                                 &f.save_invstd.t, NULL, &f.dx.t, &f.dgamma.t, &f.dbeta.t,
                                                 ws, bytes));
        free(raw);
        mask_free(&m);
        nkt_bn_free(&f);
    }
    nk_ctx_destroy(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_oracle),
        cmocka_unit_test(test_all_valid_is_batchnorm),
        cmocka_unit_test(test_backward),
        cmocka_unit_test(test_backward_inplace),
        cmocka_unit_test(test_backward_float32_saved_mean),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_empty_and_nonfinite),
        cmocka_unit_test(test_threads_bitwise),
        cmocka_unit_test(test_workspace_bn_size),
        cmocka_unit_test(test_optimized_vs_reference),
        cmocka_unit_test(test_threads_bitwise_nchw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
