/* Bad input to the batch-norm calls: the right status, a message that names the op and the
 * culprit, and nothing written (every output buffer, the running statistics and
 * num_batches_tracked are compared byte for byte with a snapshot taken before the call).
 * Also the documented non-errors: N = 0 is a no-op, non-finite batch statistics warn. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nk_test.h"

#define NBT0 11 /* num_batches_tracked before every call */

/* Every argument of the four calls, valid after bad_reset(); a case breaks one of them. */
typedef struct bad {
    nkt_bn f;
    nk_ctx *ctx, *call_ctx;
    nk_batchnorm_params p;
    const nk_batchnorm_params *pp;
    const nk_tensor *x, *gamma, *beta, *dy, *mean, *var, *yin;
    nk_tensor *y, *sm, *si, *rm, *rv, *dx, *dg, *db;
    int64_t nbt, *nbtp;
    void *ws;
    size_t ws_size;
    /* scratch tensors a case may point an argument at */
    nk_tensor t1, t2;
} bad;

static void bad_reset(bad *b) {
    nkt_bn *f = &b->f;
    b->call_ctx = b->ctx;
    nk_batchnorm_params_default(&b->p);
    b->pp = &b->p;
    b->x = &f->x.t;
    b->gamma = &f->gamma.t;
    b->beta = &f->beta.t;
    b->dy = &f->dy.t;
    b->mean = &f->run_mean.t; /* inference / frozen statistics */
    b->var = &f->run_var.t;
    b->yin = &f->y.t; /* ReLU mask of the backward */
    b->y = &f->y.t;
    b->sm = &f->save_mean.t;
    b->si = &f->save_invstd.t;
    b->rm = &f->run_mean.t;
    b->rv = &f->run_var.t;
    b->dx = &f->dx.t;
    b->dg = &f->dgamma.t;
    b->db = &f->dbeta.t;
    b->nbt = NBT0;
    b->nbtp = &b->nbt;
    b->ws = NULL;
    b->ws_size = 0;
}

static void bad_init(bad *b, const int64_t *dims, int ndim, nk_dtype dt, nkt_layout lay) {
    memset(b, 0, sizeof *b);
    nkt_rng r = nkt_rng_make(77 + (uint64_t)lay);
    nkt_bn_init(&b->f, &r, ndim, dims, dt, dt, lay, 1);
    b->ctx = nkt_ctx(1);
    bad_reset(b);
    /* save_invstd must be usable by the backward calls: give it and y real values */
    double *v = nkt_malloc((size_t)b->f.n * sizeof *v);
    nkt_fill_normal(&r, v, b->f.n, 0.0, 1.0);
    nkt_set(&b->f.y, v);
    free(v);
    double iv[64], mv[64];
    for (int64_t c = 0; c < b->f.C && c < 64; c++) {
        iv[c] = 1.0 + 0.125 * (double)c;
        mv[c] = 0.5 * (double)c;
    }
    nkt_set(&b->f.save_invstd, iv);
    nkt_set(&b->f.save_mean, mv);
}

static void bad_free(bad *b) {
    nkt_bn_free(&b->f);
    nk_ctx_destroy(b->ctx);
}

static nk_status call_train(bad *b) {
    return nk_batchnorm_forward_train(b->call_ctx, b->pp, b->x, b->gamma, b->beta, b->y, b->sm,
                                      b->si, b->rm, b->rv, b->nbtp, b->ws, b->ws_size);
}
static nk_status call_infer(bad *b) {
    return nk_batchnorm_forward_inference(b->call_ctx, b->pp, b->x, b->gamma, b->beta, b->mean,
                                          b->var, b->y);
}
static nk_status call_backward(bad *b) {
    return nk_batchnorm_backward(b->call_ctx, b->pp, b->x, b->dy, b->gamma, b->sm, b->si, b->yin,
                                 b->dx, b->dg, b->db, b->ws, b->ws_size);
}
static nk_status call_frozen(bad *b) {
    return nk_batchnorm_backward_frozen(b->call_ctx, b->pp, b->x, b->dy, b->gamma, b->mean,
                                        b->var, b->yin, b->dx, b->dg, b->db, b->ws, b->ws_size);
}

static nkt_buf *all_bufs(bad *b, int i) {
    nkt_buf *v[12] = {&b->f.x,        &b->f.y,        &b->f.dy,          &b->f.dx,
                      &b->f.gamma,    &b->f.beta,     &b->f.save_mean,   &b->f.save_invstd,
                      &b->f.run_mean, &b->f.run_var,  &b->f.dgamma,      &b->f.dbeta};
    return v[i];
}
static const char *BUF_NAMES[12] = {"x",         "y",        "dy",       "dx",
                                    "gamma",     "beta",     "save_mean", "save_invstd",
                                    "running_mean", "running_var", "dgamma", "dbeta"};

/* Runs call, expects status want, the op's name and the needles in the message, and every
 * buffer and num_batches_tracked unchanged; then resets the arguments. */
static int expect_rejected(bad *b, nk_status (*call)(bad *), const char *call_name,
                           nk_status want, const char *n1, const char *n2) {
    for (int i = 0; i < 12; i++) nkt_snap(all_bufs(b, i));
    const nk_status got = call(b);
    int ok = nkt_status_is(call_name, got, want, b->call_ctx);
    if (ok && b->call_ctx) {
        const char *m = nk_ctx_last_error(b->call_ctx);
        if (strncmp(m, "batchnorm:", 10) != 0) {
            print_error("message \"%s\" does not start with \"batchnorm:\"\n", m);
            nkt_print_context();
            ok = 0;
        }
        if (ok) ok = nkt_msg_has(b->call_ctx, n1, n2);
    }
    for (int i = 0; ok && i < 12; i++)
        if (!nkt_same_as_snap(all_bufs(b, i))) {
            print_error("%s was written by a call that failed with %s\n", BUF_NAMES[i],
                        nk_status_str(got));
            nkt_print_context();
            ok = 0;
        }
    if (ok && b->nbt != NBT0) {
        print_error("num_batches_tracked changed to %lld by a failing call\n", (long long)b->nbt);
        nkt_print_context();
        ok = 0;
    }
    bad_reset(b);
    return ok;
}

#define REJECT(b, call, want, n1, n2)                                                            \
    do {                                                                                         \
        nkt_case("%s: %s", #call, what);                                                         \
        if (!expect_rejected((b), call, #call, (want), (n1), (n2))) _fail(__FILE__, __LINE__);   \
    } while (0)

/* ---- training forward ---------------------------------------------------------------------- */

static void test_train_null(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    const char *what;
    what = "ctx NULL";
    b.call_ctx = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, NULL, NULL);
    what = "params NULL";
    b.pp = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "params", NULL);
    what = "x NULL";
    b.x = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "x", "NULL");
    what = "y NULL";
    b.y = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "y", "NULL");
    what = "x->data NULL";
    b.t1 = b.f.x.t;
    b.t1.data = NULL;
    b.x = &b.t1;
    REJECT(&b, call_train, NK_ERR_NULL, "x->data", NULL);
    what = "y->data NULL";
    b.t1 = b.f.y.t;
    b.t1.data = NULL;
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_NULL, "y->data", NULL);
    what = "gamma NULL with NK_BN_USE_SCALE";
    b.gamma = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "gamma", "NK_BN_USE_SCALE");
    what = "beta NULL with NK_BN_USE_SHIFT";
    b.beta = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "beta", "NK_BN_USE_SHIFT");
    what = "gamma->data NULL";
    b.t1 = b.f.gamma.t;
    b.t1.data = NULL;
    b.gamma = &b.t1;
    REJECT(&b, call_train, NK_ERR_NULL, "gamma", NULL);
    what = "running_mean without running_var";
    b.rv = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "running_mean", "running_var");
    what = "running_var without running_mean";
    b.rm = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "running_mean", "running_var");
    what = "cumulative average without num_batches_tracked";
    b.p.momentum_kind = NK_MOMENTUM_CUMULATIVE;
    b.nbtp = NULL;
    REJECT(&b, call_train, NK_ERR_NULL, "num_batches_tracked", NULL);
    what = "negative num_batches_tracked";
    b.nbt = -1;
    {
        /* expect_rejected checks nbt == NBT0 afterwards: compare with the value given */
        for (int i = 0; i < 12; i++) nkt_snap(all_bufs(&b, i));
        nkt_case("%s", what);
        NKT_STATUS(b.ctx, call_train(&b), NK_ERR_VALUE);
        NKT_MSG_HAS(b.ctx, "num_batches_tracked", NULL);
        NKT_CHECK(b.nbt == -1, "num_batches_tracked changed");
        for (int i = 0; i < 12; i++) NKT_CHECK(nkt_same_as_snap(all_bufs(&b, i)), "%s written", BUF_NAMES[i]);
        bad_reset(&b);
    }
    bad_free(&b);
}

static void test_train_shapes(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    const char *what;
    what = "x of rank 1";
    b.t1 = b.f.x.t;
    b.t1.ndim = 1;
    b.t2 = b.f.y.t;
    b.t2.ndim = 1;
    b.x = &b.t1;
    b.y = &b.t2;
    REJECT(&b, call_train, NK_ERR_SHAPE, "x", "rank");
    what = "x of rank 0";
    b.t1 = b.f.x.t;
    b.t1.ndim = 0;
    b.x = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "x", "rank");
    what = "x of rank NK_MAX_DIMS + 1";
    b.t1 = b.f.x.t;
    b.t1.ndim = NK_MAX_DIMS + 1;
    b.x = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "x", "rank");
    what = "y with another spatial size";
    b.t1 = b.f.y.t;
    b.t1.dims[3] = 1;
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "y has shape [4, 3, 5, 1]", "x has shape [4, 3, 5, 2]");
    what = "y with another C";
    b.t1 = b.f.y.t;
    b.t1.dims[1] = 2;
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "y", "shape");
    what = "y of another rank";
    b.t1 = b.f.y.t;
    b.t1.ndim = 3;
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "y", "shape");
    what = "gamma of C + 1";
    b.t1 = nk_vec(b.f.gamma.t.data, NK_F32, 4);
    b.gamma = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "gamma", "[3]");
    what = "beta of C - 1";
    b.t1 = nk_vec(b.f.beta.t.data, NK_F32, 2);
    b.beta = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "beta", "[3]");
    what = "gamma of rank 2";
    {
        const int64_t d2[2] = {1, 3};
        assert_int_equal(nk_tensor_contiguous(&b.t1, b.f.gamma.t.data, NK_F32, 2, d2), NK_OK);
    }
    b.gamma = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "gamma", NULL);
    what = "save_mean of C + 1";
    b.t1 = nk_vec(b.f.save_mean.t.data, NK_F32, 4);
    b.sm = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "save_mean", NULL);
    what = "save_invstd of 1";
    b.t1 = nk_vec(b.f.save_invstd.t.data, NK_F32, 1);
    b.si = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "save_invstd", NULL);
    what = "running_mean of C - 1";
    b.t1 = nk_vec(b.f.run_mean.t.data, NK_F32, 2);
    b.rm = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "running_mean", NULL);
    what = "running_var of C + 1";
    b.t1 = nk_vec(b.f.run_var.t.data, NK_F32, 4);
    b.rv = &b.t1;
    REJECT(&b, call_train, NK_ERR_SHAPE, "running_var", NULL);
    what = "negative dim";
    b.t1 = b.f.x.t;
    b.t1.dims[2] = -5;
    b.t2 = b.f.y.t;
    b.t2.dims[2] = -5;
    b.x = &b.t1;
    b.y = &b.t2;
    REJECT(&b, call_train, NK_ERR_SHAPE, "negative", NULL);
    what = "negative stride";
    b.t1 = b.f.x.t;
    b.t1.strides[3] = -1;
    b.x = &b.t1;
    REJECT(&b, call_train, NK_ERR_VALUE, "stride", NULL);
    bad_free(&b);
}

static void test_train_dtypes(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    const char *what;
    what = "y float64, x float32";
    b.t1 = b.f.y.t;
    b.t1.dtype = NK_F64;
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_DTYPE, "dtype", "float64");
    what = "x and y NK_U8 (a mask type, not data)";
    b.t1 = b.f.x.t;
    b.t1.dtype = NK_U8;
    b.t2 = b.f.y.t;
    b.t2.dtype = NK_U8;
    b.x = &b.t1;
    b.y = &b.t2;
    REJECT(&b, call_train, NK_ERR_DTYPE, "x", "dtype");
    what = "x and y of unknown dtype 99";
    b.t1 = b.f.x.t;
    b.t1.dtype = (nk_dtype)99;
    b.t2 = b.f.y.t;
    b.t2.dtype = (nk_dtype)99;
    b.x = &b.t1;
    b.y = &b.t2;
    REJECT(&b, call_train, NK_ERR_DTYPE, "dtype", NULL);
    what = "gamma NK_U8";
    b.t1 = b.f.gamma.t;
    b.t1.dtype = NK_U8;
    b.gamma = &b.t1;
    REJECT(&b, call_train, NK_ERR_DTYPE, "gamma", NULL);
    what = "running_var of dtype 0";
    b.t1 = b.f.run_var.t;
    b.t1.dtype = (nk_dtype)0;
    b.rv = &b.t1;
    REJECT(&b, call_train, NK_ERR_DTYPE, "running_var", NULL);
    bad_free(&b);
}

static void test_train_scalars(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F64, NKT_CHLAST);
    const double bad_eps[] = {-1e-5, -INFINITY, INFINITY, NAN, -0x1p-1074};
    for (size_t i = 0; i < sizeof bad_eps / sizeof bad_eps[0]; i++) {
        char w[64];
        snprintf(w, sizeof w, "eps = %g", bad_eps[i]);
        const char *what = w;
        b.p.eps = bad_eps[i];
        REJECT(&b, call_train, NK_ERR_VALUE, "eps", NULL);
        b.p.eps = bad_eps[i];
        REJECT(&b, call_infer, NK_ERR_VALUE, "eps", NULL);
        b.p.eps = bad_eps[i];
        REJECT(&b, call_backward, NK_ERR_VALUE, "eps", NULL);
        b.p.eps = bad_eps[i];
        REJECT(&b, call_frozen, NK_ERR_VALUE, "eps", NULL);
    }
    const double bad_m[] = {-0.1, 1.0000001, 2.0, NAN, INFINITY, -INFINITY};
    for (int onnx = 0; onnx < 2; onnx++)
        for (size_t i = 0; i < sizeof bad_m / sizeof bad_m[0]; i++) {
            char w[64];
            snprintf(w, sizeof w, "%s momentum = %g", onnx ? "ONNX" : "PyTorch", bad_m[i]);
            const char *what = w;
            if (onnx) nk_batchnorm_params_onnx(&b.p);
            b.p.momentum = bad_m[i];
            REJECT(&b, call_train, NK_ERR_VALUE, "momentum", NULL);
        }
    const char *what = "unknown momentum_kind";
    b.p.momentum_kind = (nk_momentum_kind)7;
    REJECT(&b, call_train, NK_ERR_VALUE, "momentum_kind", NULL);
    what = "unknown flag 0x8";
    b.p.flags |= 0x8u;
    REJECT(&b, call_train, NK_ERR_VALUE, "flags", NULL);
    b.p.flags |= 0x80000000u;
    REJECT(&b, call_infer, NK_ERR_VALUE, "flags", NULL);

    /* the momentum is used only by the running update: without running statistics (and in
     * inference and backward) it is ignored, as PyTorch ignores it; so is it by the cumulative
     * average */
    nkt_case("NaN momentum without running statistics");
    b.p.momentum = NAN;
    b.rm = b.rv = NULL;
    NKT_OK(b.ctx, call_train(&b));
    bad_reset(&b);
    b.p.momentum = NAN;
    NKT_OK(b.ctx, call_infer(&b));
    bad_reset(&b);
    b.p.momentum = 5.0;
    b.p.momentum_kind = NK_MOMENTUM_CUMULATIVE;
    NKT_OK(b.ctx, call_train(&b));
    assert_int_equal(b.nbt, NBT0 + 1);
    bad_reset(&b);
    bad_free(&b);
}

static void test_train_one_value_per_channel(void **state) {
    (void)state;
    const int64_t shapes[][4] = {{1, 3, 1, 1}, {1, 3, 0, 0}, {1, 1, 1, 1}};
    const int ranks[] = {4, 2, 4};
    const char *shape_str[] = {"[1, 3, 1, 1]", "[1, 3]", "[1, 1, 1, 1]"};
    for (int s = 0; s < 3; s++)
        for (int dt = NK_F32; dt <= NK_F64; dt++) {
            bad b;
            bad_init(&b, shapes[s], ranks[s], (nk_dtype)dt, NKT_CONTIG);
            const char *what = shape_str[s];
            REJECT(&b, call_train, NK_ERR_DEGENERATE,
                   "expected more than 1 value per channel when training", shape_str[s]);
            b.rm = b.rv = NULL; /* also without running statistics */
            REJECT(&b, call_train, NK_ERR_DEGENERATE,
                   "expected more than 1 value per channel when training", shape_str[s]);
            /* inference and the frozen backward are fine with one value per channel */
            nkt_case("inference with one value per channel %s", shape_str[s]);
            NKT_OK(b.ctx, call_infer(&b));
            NKT_OK(b.ctx, call_frozen(&b));
            bad_free(&b);
        }
    /* zero values per channel with N > 0 is a zero-size reduction */
    const int64_t empty[3] = {2, 3, 0};
    bad b;
    bad_init(&b, empty, 3, NK_F32, NKT_CONTIG);
    const char *what = "[2, 3, 0]";
    REJECT(&b, call_train, NK_ERR_DEGENERATE, "zero-size", "[2, 3, 0]");
    bad_free(&b);
}

static void test_train_overflow(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    const char *what;
    /* element count 2^32 * 3 * 2^32 overflows int64 (the data pointer is never read) */
    what = "element count overflows";
    b.t1 = b.f.x.t;
    b.t1.dims[0] = INT64_C(1) << 32;
    b.t1.dims[2] = INT64_C(1) << 32;
    b.t1.dims[3] = 1;
    b.t2 = b.t1;
    b.t2.data = b.f.y.t.data;
    b.x = &b.t1;
    b.y = &b.t2;
    REJECT(&b, call_train, NK_ERR_OVERFLOW, "x", "overflow");
    b.x = &b.t1;
    b.y = &b.t2;
    REJECT(&b, call_infer, NK_ERR_OVERFLOW, "x", "overflow");
    b.x = &b.t1;
    b.dy = &b.t2;
    REJECT(&b, call_backward, NK_ERR_OVERFLOW, "x", "overflow");
    /* the count fits but the largest offset does not */
    what = "offsets overflow";
    b.t1 = b.f.x.t;
    b.t1.strides[0] = INT64_MAX / 2;
    b.x = &b.t1;
    REJECT(&b, call_train, NK_ERR_OVERFLOW, "x", "overflow");
    /* offsets fit but not in bytes */
    what = "byte size overflows";
    b.t1 = b.f.x.t;
    b.t1.strides[0] = INT64_MAX / 8;
    b.x = &b.t1;
    REJECT(&b, call_train, NK_ERR_OVERFLOW, "x", "overflow");
    /* a per-channel vector whose stride puts its last element beyond int64 bytes */
    what = "gamma byte span overflows";
    b.t1 = b.f.gamma.t;
    b.t1.strides[0] = INT64_MAX / 4;
    b.gamma = &b.t1;
    REJECT(&b, call_train, NK_ERR_OVERFLOW, "gamma", "overflow");
    b.t1 = b.f.gamma.t;
    b.t1.strides[0] = INT64_MAX / 4;
    b.gamma = &b.t1;
    REJECT(&b, call_backward, NK_ERR_OVERFLOW, "gamma", "overflow");
    bad_free(&b);
}

static void test_train_alias(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    const char *what = "y on x's memory in channels-last order";
    assert_int_equal(nk_tensor_channels_last(&b.t1, b.f.x.t.data, NK_F32, 4, dims), NK_OK);
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_VALUE, "y", "x");
    b.y = &b.t1;
    REJECT(&b, call_infer, NK_ERR_VALUE, "y", "x");
    bad_free(&b);
}

/* y overlapping x without being the same view: an element of y is an element of x at another
 * logical index, so writing y would corrupt x before it is read. */
static void test_train_partial_overlap(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    const char *what = "y = x shifted by one element";
    b.t1 = b.f.x.t;
    b.t1.data = (float *)b.f.x.t.data + 1; /* inside x's buffer (it has a sentinel tail) */
    b.y = &b.t1;
    REJECT(&b, call_train, NK_ERR_VALUE, "y", "x");
    bad_free(&b);
}

static void test_train_workspace_too_small(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {4, 3, 5, 2};
    bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
    char ws[16];
    const char *what = "16-byte workspace";
    b.ws = ws;
    b.ws_size = sizeof ws;
    REJECT(&b, call_train, NK_ERR_WORKSPACE, "workspace", NULL);
    b.ws = ws;
    b.ws_size = sizeof ws;
    REJECT(&b, call_backward, NK_ERR_WORKSPACE, "workspace", NULL);
    b.ws = ws;
    b.ws_size = 0;
    REJECT(&b, call_frozen, NK_ERR_WORKSPACE, "workspace", NULL);
    bad_free(&b);
}

/* ---- documented non-errors ---------------------------------------------------------------- */

/* Snapshots every buffer of b. */
static void snap_all(bad *b) {
    for (int i = 0; i < 12; i++) nkt_snap(all_bufs(b, i));
}
static int unchanged(bad *b, int i) { return nkt_same_as_snap(all_bufs(b, i)); }
enum { B_X, B_Y, B_DY, B_DX, B_G, B_B, B_SM, B_SI, B_RM, B_RV, B_DG, B_DB };

static void test_empty_batch_is_noop(void **state) {
    (void)state;
    const int64_t dims[4] = {0, 3, 5, 2};
    for (int kind = 0; kind < 3; kind++) {
        bad b;
        bad_init(&b, dims, 4, NK_F32, NKT_CONTIG);
        if (kind == 1) b.p.momentum_kind = NK_MOMENTUM_CUMULATIVE;
        if (kind == 2) nk_batchnorm_params_onnx(&b.p);
        nkt_case("N = 0, momentum kind %d", (int)b.p.momentum_kind);
        snap_all(&b);
        NKT_OK(b.ctx, call_train(&b));
        for (int i = 0; i < 12; i++)
            NKT_CHECK(unchanged(&b, i), "%s written by an empty batch", BUF_NAMES[i]);
        NKT_CHECK(b.nbt == NBT0, "num_batches_tracked counted an empty batch");
        NKT_OK(b.ctx, call_infer(&b));
        bad_free(&b);
    }
}

/* NaN / inf in the batch, or statistics that overflow: y and the saved statistics are written,
 * the running statistics and num_batches_tracked are not. */
static void test_nonfinite_batch_warns(void **state) {
    (void)state;
    const int64_t dims[4] = {4, 3, 5, 2};
    const double poison[] = {NAN, INFINITY, -INFINITY};
    for (int dt = NK_F32; dt <= NK_F64; dt++)
        for (size_t k = 0; k < 4; k++) {
            bad b;
            bad_init(&b, dims, 4, (nk_dtype)dt, NKT_STRIDED);
            double *xv = nkt_malloc((size_t)b.f.n * sizeof *xv);
            memcpy(xv, b.f.xv, (size_t)b.f.n * sizeof *xv);
            /* channel 1 gets the bad values */
            int64_t i1 = -1;
            for (int64_t i = 0; i < b.f.n; i++)
                if (nko_channel(4, dims, i) == 1) {
                    if (i1 < 0) i1 = i;
                    if (k == 3 && dt == NK_F64) xv[i] = (i % 2) ? 1e300 : -1e300; /* var = inf */
                }
            if (k < 3) xv[i1 + 3] = poison[k];
            if (k == 3 && dt == NK_F32) { /* float32 cannot overflow the double variance */
                free(xv);
                bad_free(&b);
                continue;
            }
            nkt_bn_set_x(&b.f, xv);
            nkt_case("%s input, %s value in channel 1", nkt_dtype_name((nk_dtype)dt),
                     k < 3 ? (k == 0 ? "NaN" : "inf") : "+-1e300");
            snap_all(&b);
            NKT_STATUS(b.ctx, call_train(&b), NK_WARN_NONFINITE_STATS);
            NKT_MSG_HAS(b.ctx, "channel 1", "not finite");
            NKT_CHECK(unchanged(&b, B_RM) && unchanged(&b, B_RV), "running statistics updated");
            NKT_CHECK(b.nbt == NBT0, "num_batches_tracked counted a non-finite batch");
            NKT_CHECK(!unchanged(&b, B_Y) && !unchanged(&b, B_SM), "y and save_mean must be written");
            /* the finite channels are normalized correctly */
            double *yo = nkt_malloc((size_t)b.f.n * sizeof *yo), mo[3], io[3];
            nko_bn_train(&b.p, 4, dims, b.f.xv, b.f.gv, b.f.bv, yo, mo, io, NULL, NULL, NULL);
            double *y = nkt_malloc((size_t)b.f.n * sizeof *y);
            nkt_get(&b.f.y, y);
            int64_t m = 0;
            for (int64_t i = 0; i < b.f.n; i++)
                if (nko_channel(4, dims, i) != 1) { /* pack the finite channels */
                    y[m] = y[i];
                    yo[m++] = yo[i];
                }
            NKT_CLOSE("y of the finite channels", y, yo, m, nkt_tol_result((nk_dtype)dt));
            free(y);
            free(yo);
            free(xv);
            bad_free(&b);
        }
    /* eps = 0 and a constant channel: invstd = inf */
    bad b;
    bad_init(&b, dims, 4, NK_F64, NKT_CONTIG);
    double *xv = nkt_malloc((size_t)b.f.n * sizeof *xv);
    memcpy(xv, b.f.xv, (size_t)b.f.n * sizeof *xv);
    for (int64_t i = 0; i < b.f.n; i++)
        if (nko_channel(4, dims, i) == 2) xv[i] = 0.75;
    nkt_bn_set_x(&b.f, xv);
    free(xv);
    b.p.eps = 0.0;
    snap_all(&b);
    nkt_case("eps = 0, constant channel 2");
    NKT_STATUS(b.ctx, call_train(&b), NK_WARN_NONFINITE_STATS);
    NKT_MSG_HAS(b.ctx, "channel 2", NULL);
    NKT_CHECK(unchanged(&b, B_RM) && unchanged(&b, B_RV) && b.nbt == NBT0, "running statistics updated");
    bad_free(&b);
}

/* ---- inference ----------------------------------------------------------------------------- */

static void test_inference_bad(void **state) {
    (void)state;
    bad b;
    const int64_t dims[3] = {4, 3, 7};
    bad_init(&b, dims, 3, NK_F64, NKT_CONTIG);
    const char *what;
    what = "ctx NULL";
    b.call_ctx = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, NULL, NULL);
    what = "params NULL";
    b.pp = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, "params", NULL);
    what = "x NULL";
    b.x = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, "x", NULL);
    what = "y NULL";
    b.y = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, "y", NULL);
    what = "mean NULL";
    b.mean = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, "mean", NULL);
    what = "var NULL";
    b.var = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, "var", NULL);
    what = "gamma NULL with NK_BN_USE_SCALE";
    b.gamma = NULL;
    REJECT(&b, call_infer, NK_ERR_NULL, "gamma", NULL);
    what = "x of rank 1";
    b.t1 = b.f.x.t;
    b.t1.ndim = 1;
    b.x = &b.t1;
    REJECT(&b, call_infer, NK_ERR_SHAPE, "rank", NULL);
    what = "mean of C + 1";
    b.t1 = nk_vec(b.f.run_mean.t.data, NK_F64, 4);
    b.mean = &b.t1;
    REJECT(&b, call_infer, NK_ERR_SHAPE, "mean", NULL);
    what = "y of another shape";
    b.t1 = b.f.y.t;
    b.t1.dims[2] = 6;
    b.y = &b.t1;
    REJECT(&b, call_infer, NK_ERR_SHAPE, "y", NULL);
    what = "y float32, x float64";
    b.t1 = b.f.y.t;
    b.t1.dtype = NK_F32;
    b.y = &b.t1;
    REJECT(&b, call_infer, NK_ERR_DTYPE, "y", NULL);
    /* var + eps must be finite and > 0 */
    const double bad_var[] = {-1.0, NAN, INFINITY, -1e-5};
    for (size_t i = 0; i < sizeof bad_var / sizeof bad_var[0]; i++) {
        char w[64];
        snprintf(w, sizeof w, "var[2] = %g (eps 1e-5)", bad_var[i]);
        what = w;
        double *vv = b.f.run_var.t.data;
        vv[2] = bad_var[i];
        REJECT(&b, call_infer, NK_ERR_VALUE, "var", NULL);
        REJECT(&b, call_frozen, NK_ERR_VALUE, "var", NULL);
        vv[2] = 1.0;
    }
    what = "var[0] = 0 with eps = 0";
    ((double *)b.f.run_var.t.data)[0] = 0.0;
    b.p.eps = 0.0;
    REJECT(&b, call_infer, NK_ERR_VALUE, "var", NULL);
    bad_free(&b);
}

/* ---- backward ------------------------------------------------------------------------------ */

static void test_backward_bad(void **state) {
    (void)state;
    bad b;
    const int64_t dims[4] = {3, 3, 4, 5};
    bad_init(&b, dims, 4, NK_F32, NKT_CHLAST);
    const char *what;
    nk_status (*calls[2])(bad *) = {call_backward, call_frozen};
    const char *names[2] = {"nk_batchnorm_backward", "nk_batchnorm_backward_frozen"};
    for (int k = 0; k < 2; k++) {
        nk_status (*call)(bad *) = calls[k];
#define REJECT_K(want, n1, n2)                                                                   \
    do {                                                                                         \
        nkt_case("%s: %s", names[k], what);                                                      \
        if (!expect_rejected(&b, call, names[k], (want), (n1), (n2))) _fail(__FILE__, __LINE__); \
    } while (0)
        what = "ctx NULL";
        b.call_ctx = NULL;
        REJECT_K(NK_ERR_NULL, NULL, NULL);
        what = "params NULL";
        b.pp = NULL;
        REJECT_K(NK_ERR_NULL, "params", NULL);
        what = "x NULL";
        b.x = NULL;
        REJECT_K(NK_ERR_NULL, "x", NULL);
        what = "dy NULL";
        b.dy = NULL;
        REJECT_K(NK_ERR_NULL, "dy", NULL);
        what = "gamma NULL with NK_BN_USE_SCALE";
        b.gamma = NULL;
        REJECT_K(NK_ERR_NULL, "gamma", NULL);
        what = k == 0 ? "save_mean NULL" : "mean NULL";
        if (k == 0) b.sm = NULL; else b.mean = NULL;
        REJECT_K(NK_ERR_NULL, "mean", NULL);
        what = k == 0 ? "save_invstd NULL" : "var NULL";
        if (k == 0) b.si = NULL; else b.var = NULL;
        REJECT_K(NK_ERR_NULL, k == 0 ? "save_invstd" : "var", NULL);
        what = "FUSE_RELU without y";
        b.p.flags |= NK_BN_FUSE_RELU;
        b.yin = NULL;
        REJECT_K(NK_ERR_NULL, "NK_BN_FUSE_RELU", "y");
        what = "dy of another shape";
        b.t1 = b.f.dy.t;
        b.t1.dims[0] = 2;
        b.dy = &b.t1;
        REJECT_K(NK_ERR_SHAPE, "dy", NULL);
        what = "dx of another shape";
        b.t1 = b.f.dx.t;
        b.t1.dims[3] = 4;
        b.dx = &b.t1;
        REJECT_K(NK_ERR_SHAPE, "dx", NULL);
        what = "FUSE_RELU with y of another shape";
        b.p.flags |= NK_BN_FUSE_RELU;
        b.t1 = b.f.y.t;
        b.t1.dims[1] = 2;
        b.yin = &b.t1;
        REJECT_K(NK_ERR_SHAPE, "y", NULL);
        what = "dx float64, x float32";
        b.t1 = b.f.dx.t;
        b.t1.dtype = NK_F64;
        b.dx = &b.t1;
        REJECT_K(NK_ERR_DTYPE, "dx", NULL);
        what = "dgamma of C + 1";
        b.t1 = nk_vec(b.f.dgamma.t.data, NK_F32, 4);
        b.dg = &b.t1;
        REJECT_K(NK_ERR_SHAPE, "dgamma", NULL);
        what = "dbeta of rank 2";
        {
            const int64_t d2[2] = {3, 1};
            assert_int_equal(nk_tensor_contiguous(&b.t1, b.f.dbeta.t.data, NK_F32, 2, d2), NK_OK);
        }
        b.db = &b.t1;
        REJECT_K(NK_ERR_SHAPE, "dbeta", NULL);
        what = "x of rank 1";
        b.t1 = b.f.x.t;
        b.t1.ndim = 1;
        b.x = &b.t1;
        REJECT_K(NK_ERR_SHAPE, "rank", NULL);
        what = "dx on dy's memory with other strides";
        assert_int_equal(nk_tensor_contiguous(&b.t1, b.f.dy.t.data, NK_F32, 4, dims), NK_OK);
        b.dx = &b.t1;
        REJECT_K(NK_ERR_VALUE, "dx", "dy");
        what = "dx on x's memory with other strides";
        assert_int_equal(nk_tensor_contiguous(&b.t1, b.f.x.t.data, NK_F32, 4, dims), NK_OK);
        b.dx = &b.t1;
        REJECT_K(NK_ERR_VALUE, "dx", "x");
#undef REJECT_K
    }
    bad_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_null),
        cmocka_unit_test(test_train_shapes),
        cmocka_unit_test(test_train_dtypes),
        cmocka_unit_test(test_train_scalars),
        cmocka_unit_test(test_train_one_value_per_channel),
        cmocka_unit_test(test_train_overflow),
        cmocka_unit_test(test_train_alias),
        cmocka_unit_test(test_train_partial_overlap),
        cmocka_unit_test(test_train_workspace_too_small),
        cmocka_unit_test(test_empty_batch_is_noop),
        cmocka_unit_test(test_nonfinite_batch_warns),
        cmocka_unit_test(test_inference_bad),
        cmocka_unit_test(test_backward_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
