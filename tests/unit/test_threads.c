/* Determinism: every output of every batch-norm call is bitwise identical (memcmp) for 1, 2, 3
 * and 4 threads, on shapes with many channels, several reduction blocks per channel and
 * enough work to run in parallel; and two contexts used from two threads at once do not
 * interfere. */
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "core/internal.h" /* NK_BLOCK_ELEMS, NK_PARALLEL_MIN_ELEMS */
#include "nk_test.h"

#define MAX_THREADS 4

/* The raw bytes of every output of one thread count. */
typedef struct outputs {
    void *y, *sm, *si, *rm, *rv, *yinf, *dx, *dg, *db, *dxf, *dgf, *dbf;
    int64_t nbt;
} outputs;

static void *dup_buf(const nkt_buf *b) {
    const size_t bytes = (size_t)b->buf_elems * nk_dtype_size(b->t.dtype);
    void *p = nkt_malloc(bytes);
    memcpy(p, b->buf, bytes);
    return p;
}

static void free_outputs(outputs *o) {
    void *all[12] = {o->y, o->sm, o->si, o->rm, o->rv, o->yinf, o->dx, o->dg, o->db, o->dxf, o->dgf, o->dbf};
    for (int i = 0; i < 12; i++) free(all[i]);
}

/* Runs forward train (with running statistics), inference, backward and frozen backward on
 * fresh copies of the fixture's inputs with `threads` threads and records every output. */
static void run_all(nk_ctx *ctx, int threads, const nk_batchnorm_params *p, nkt_bn *f,
                    outputs *o) {
    assert_int_equal(nk_ctx_set_num_threads(ctx, threads), NK_OK);
    /* the same starting running statistics for every thread count */
    nkt_set(&f->run_mean, f->rmv);
    nkt_set(&f->run_var, f->rvv);
    o->nbt = 0;
    NKT_OK(ctx, nk_batchnorm_forward_train(ctx, p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t,
                                           &f->save_mean.t, &f->save_invstd.t, &f->run_mean.t,
                                           &f->run_var.t, &o->nbt, NULL, 0));
    o->y = dup_buf(&f->y);
    o->sm = dup_buf(&f->save_mean);
    o->si = dup_buf(&f->save_invstd);
    o->rm = dup_buf(&f->run_mean);
    o->rv = dup_buf(&f->run_var);
    const nk_tensor *ym = (p->flags & NK_BN_FUSE_RELU) ? &f->y.t : NULL;
    NKT_OK(ctx, nk_batchnorm_backward(ctx, p, &f->x.t, &f->dy.t, &f->gamma.t, &f->save_mean.t,
                                      &f->save_invstd.t, ym, &f->dx.t, &f->dgamma.t, &f->dbeta.t,
                                      NULL, 0));
    o->dx = dup_buf(&f->dx);
    o->dg = dup_buf(&f->dgamma);
    o->db = dup_buf(&f->dbeta);
    NKT_OK(ctx, nk_batchnorm_backward_frozen(ctx, p, &f->x.t, &f->dy.t, &f->gamma.t,
                                             &f->run_mean.t, &f->run_var.t, ym, &f->dx.t,
                                             &f->dgamma.t, &f->dbeta.t, NULL, 0));
    o->dxf = dup_buf(&f->dx);
    o->dgf = dup_buf(&f->dgamma);
    o->dbf = dup_buf(&f->dbeta);
    NKT_OK(ctx, nk_batchnorm_forward_inference(ctx, p, &f->x.t, &f->gamma.t, &f->beta.t,
                                               &f->run_mean.t, &f->run_var.t, &f->y.t));
    o->yinf = dup_buf(&f->y);
}

static void expect_same_outputs(const nkt_bn *f, const outputs *a, const outputs *b) {
    const size_t data = (size_t)f->y.buf_elems * nk_dtype_size(f->dt);
    const size_t dxb = (size_t)f->dx.buf_elems * nk_dtype_size(f->dt);
    const size_t vec = (size_t)f->save_mean.buf_elems * nk_dtype_size(f->vdt);
    NKT_SAME_BYTES("y (training)", a->y, b->y, data);
    NKT_SAME_BYTES("save_mean", a->sm, b->sm, vec);
    NKT_SAME_BYTES("save_invstd", a->si, b->si, vec);
    NKT_SAME_BYTES("running_mean", a->rm, b->rm, vec);
    NKT_SAME_BYTES("running_var", a->rv, b->rv, vec);
    NKT_CHECK(a->nbt == b->nbt, "num_batches_tracked");
    NKT_SAME_BYTES("y (inference)", a->yinf, b->yinf, data);
    NKT_SAME_BYTES("dx", a->dx, b->dx, dxb);
    NKT_SAME_BYTES("dgamma", a->dg, b->dg, vec);
    NKT_SAME_BYTES("dbeta", a->db, b->db, vec);
    NKT_SAME_BYTES("dx (frozen)", a->dxf, b->dxf, dxb);
    NKT_SAME_BYTES("dgamma (frozen)", a->dgf, b->dgf, vec);
    NKT_SAME_BYTES("dbeta (frozen)", a->dbf, b->dbf, vec);
}

static void threads_case(int ndim, const int64_t *dims, nk_dtype dt, nkt_layout lay,
                         unsigned flags, uint64_t salt) {
    nkt_rng r = nkt_rng_make(salt);
    nkt_bn f;
    nkt_bn_init(&f, &r, ndim, dims, dt, dt, lay, 0);
    assert_true(f.M > 2 * NK_BLOCK_ELEMS);          /* several blocks per channel */
    assert_true(f.n >= 4 * NK_PARALLEL_MIN_ELEMS);  /* enough work for several threads */
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    p.flags = flags;
    nk_ctx *ctx = nkt_ctx(1);
    outputs ref, cur;
    char d[256];
    for (int t = 1; t <= MAX_THREADS; t++) {
        nkt_case("flags 0x%x, %s, %d threads vs 1", flags, nkt_bn_desc(&f, d, sizeof d), t);
        run_all(ctx, t, &p, &f, t == 1 ? &ref : &cur);
        if (t > 1) {
            expect_same_outputs(&f, &ref, &cur);
            free_outputs(&cur);
        }
    }
    free_outputs(&ref);
    nk_ctx_destroy(ctx);
    nkt_bn_free(&f);
}

static void test_threads_nchw_f32(void **state) {
    (void)state;
    const int64_t dims[4] = {8, 16, 64, 64};
    threads_case(4, dims, NK_F32, NKT_CONTIG, NK_BN_USE_SCALE | NK_BN_USE_SHIFT, 1);
}

static void test_threads_nhwc_f32(void **state) {
    (void)state;
    const int64_t dims[4] = {8, 16, 64, 64};
    threads_case(4, dims, NK_F32, NKT_CHLAST, NK_BN_USE_SCALE | NK_BN_USE_SHIFT | NK_BN_FUSE_RELU, 2);
}

static void test_threads_strided_f64(void **state) {
    (void)state;
    const int64_t dims[4] = {4, 12, 80, 70}; /* M = 22400: three blocks */
    threads_case(4, dims, NK_F64, NKT_STRIDED, NK_BN_USE_SCALE | NK_BN_USE_SHIFT | NK_BN_FUSE_RELU, 3);
}

static void test_threads_rank3_odd_f64(void **state) {
    (void)state;
    const int64_t dims[3] = {9, 23, 1999}; /* odd sizes: blocks end mid-row */
    threads_case(3, dims, NK_F64, NKT_CONTIG, NK_BN_USE_SHIFT, 4);
}

/* ---- two contexts, two threads ------------------------------------------------------------ */

typedef struct job {
    nkt_bn *f;
    int threads, reps;
    void *want_y, *want_dx; /* bytes of the single-threaded results */
    int ok;
} job;

static void *job_run(void *arg) {
    job *j = arg;
    nk_ctx *ctx = NULL;
    j->ok = nk_ctx_create(&ctx) == NK_OK && nk_ctx_set_num_threads(ctx, j->threads) == NK_OK;
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    nkt_bn *f = j->f;
    const size_t data = (size_t)f->y.buf_elems * nk_dtype_size(f->dt);
    const size_t dxb = (size_t)f->dx.buf_elems * nk_dtype_size(f->dt);
    for (int r = 0; j->ok && r < j->reps; r++) {
        j->ok &= nk_batchnorm_forward_train(ctx, &p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t,
                                            &f->save_mean.t, &f->save_invstd.t, NULL, NULL, NULL,
                                            NULL, 0) == NK_OK;
        j->ok &= nk_batchnorm_backward(ctx, &p, &f->x.t, &f->dy.t, &f->gamma.t, &f->save_mean.t,
                                       &f->save_invstd.t, NULL, &f->dx.t, NULL, NULL, NULL,
                                       0) == NK_OK;
        j->ok &= memcmp(f->y.buf, j->want_y, data) == 0 && memcmp(f->dx.buf, j->want_dx, dxb) == 0;
        j->ok &= nk_ctx_get_num_threads(ctx) == j->threads; /* the other context's setting */
    }
    nk_ctx_destroy(ctx);
    return NULL;
}

static void test_two_contexts_two_threads(void **state) {
    (void)state;
    const int64_t da[4] = {4, 8, 48, 48}, db[4] = {6, 5, 30, 70};
    nkt_bn fa, fb;
    nkt_rng ra = nkt_rng_make(10), rb = nkt_rng_make(11);
    nkt_bn_init(&fa, &ra, 4, da, NK_F32, NK_F32, NKT_CHLAST, 0);
    nkt_bn_init(&fb, &rb, 4, db, NK_F64, NK_F64, NKT_CONTIG, 0);
    nkt_bn *fs[2] = {&fa, &fb};
    job jobs[2];
    nk_ctx *ctx = nkt_ctx(1);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    for (int i = 0; i < 2; i++) { /* single-threaded reference, one context */
        nkt_bn *f = fs[i];
        NKT_OK(ctx, nk_batchnorm_forward_train(ctx, &p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t,
                                               &f->save_mean.t, &f->save_invstd.t, NULL, NULL,
                                               NULL, NULL, 0));
        NKT_OK(ctx, nk_batchnorm_backward(ctx, &p, &f->x.t, &f->dy.t, &f->gamma.t, &f->save_mean.t,
                                          &f->save_invstd.t, NULL, &f->dx.t, NULL, NULL, NULL, 0));
        jobs[i] = (job){f, i == 0 ? 2 : 3, 3, dup_buf(&f->y), dup_buf(&f->dx), 0};
    }
    nk_ctx_destroy(ctx);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, job_run, &jobs[i]), 0);
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    nkt_case("two contexts (2 and 3 threads) from two threads at once");
    for (int i = 0; i < 2; i++) {
        NKT_CHECK(jobs[i].ok, "job %d: results differ from its single-threaded run", i);
        free(jobs[i].want_y);
        free(jobs[i].want_dx);
    }
    nkt_bn_free(&fa);
    nkt_bn_free(&fb);
}

/* A caller running its own OpenMP team (with nesting allowed) calls with a 4-thread context
 * from each of its threads: the results are those of the single-threaded run. (That such calls
 * start no nested team is nk_threads_for's rule; this checks that the path stays correct.) */
static void test_inside_caller_parallel_region(void **state) {
    (void)state;
#ifdef _OPENMP
    const int64_t da[4] = {4, 8, 48, 48}, db[4] = {6, 5, 30, 70};
    nkt_bn fa, fb;
    nkt_rng ra = nkt_rng_make(20), rb = nkt_rng_make(21);
    nkt_bn_init(&fa, &ra, 4, da, NK_F32, NK_F32, NKT_CONTIG, 0);
    nkt_bn_init(&fb, &rb, 4, db, NK_F64, NK_F64, NKT_CHLAST, 0);
    nkt_bn *fs[2] = {&fa, &fb};
    job jobs[2];
    nk_ctx *ctx = nkt_ctx(1);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    for (int i = 0; i < 2; i++) {
        nkt_bn *f = fs[i];
        NKT_OK(ctx, nk_batchnorm_forward_train(ctx, &p, &f->x.t, &f->gamma.t, &f->beta.t, &f->y.t,
                                               &f->save_mean.t, &f->save_invstd.t, NULL, NULL,
                                               NULL, NULL, 0));
        NKT_OK(ctx, nk_batchnorm_backward(ctx, &p, &f->x.t, &f->dy.t, &f->gamma.t, &f->save_mean.t,
                                          &f->save_invstd.t, NULL, &f->dx.t, NULL, NULL, NULL, 0));
        jobs[i] = (job){f, 4, 2, dup_buf(&f->y), dup_buf(&f->dx), 0};
    }
    nk_ctx_destroy(ctx);
    const int levels = omp_get_max_active_levels();
    omp_set_max_active_levels(4);
#pragma omp parallel for num_threads(2)
    for (int i = 0; i < 2; i++) job_run(&jobs[i]);
    omp_set_max_active_levels(levels);
    nkt_case("two 4-thread contexts called from the caller's 2-thread OpenMP team");
    for (int i = 0; i < 2; i++) {
        NKT_CHECK(jobs[i].ok, "job %d: results differ from its single-threaded run", i);
        free(jobs[i].want_y);
        free(jobs[i].want_dx);
    }
    nkt_bn_free(&fa);
    nkt_bn_free(&fb);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_nchw_f32),
        cmocka_unit_test(test_threads_nhwc_f32),
        cmocka_unit_test(test_threads_strided_f64),
        cmocka_unit_test(test_threads_rank3_odd_f64),
        cmocka_unit_test(test_two_contexts_two_threads),
        cmocka_unit_test(test_inside_caller_parallel_region),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
