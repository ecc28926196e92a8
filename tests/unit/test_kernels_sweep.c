/* Reference vs optimized kernels (DESIGN.md, test oracle 4): every instruction set this CPU
 * runs against the scalar reference, through the public API, over odd shapes (C = 1, 3, 23, 64;
 * spatial 1x1, 7x7, 17x17; N = 1..5), NCHW / NHWC / strided layouts, pointers one element past
 * an aligned one, in place, float32 and float64, training forward, inference, backward and
 * frozen backward; layer norm and RMS norm rows likewise.
 *
 * Tolerances (nk_test.h's table): optimized kernels compute in double as the reference does and
 * evaluate the element-wise expressions in the same order; only sums are formed in another
 * order (16 position-indexed lanes, kernels/simd/lanes16.h), so statistics differ by a few ulp
 * of double and outputs by at most a rounding step of their type:
 *   data outputs (y, dx):        TOL_F32_RESULT / TOL_F64_RESULT
 *   per-channel / per-row values: TOL_F32_RESULT when stored in float32, else TOL_F64_STATS;
 *                                 dgamma, dbeta of batch norm (sums of M terms that can cancel)
 *                                 as mean terms, sum / M
 *   ill-conditioned variance:    TOL_ILLCOND_VAR (mean 1e4, std 1e-2 in float32)
 * and bitwise equality where the design promises it: across thread counts (1-4), and, for the
 * optimized kernels, across layouts, in place or not, aligned or not, and across instruction
 * sets (the lanes and their merge tree do not depend on any of these). The reference is
 * layout-independent too (its rows kernels add each channel's values in the per-channel order).
 *
 * Failures print the case and the seed (NK_TEST_SEED to reproduce). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h" /* NK_BLOCK_ELEMS, NK_PARALLEL_MIN_ELEMS */
#include "kernels/kernels.h"
#include "support/sweep.h"

#define MAX_ISAS 4

static const char *LAYOUT_NAMES[NKT_NUM_LAYOUTS] = {"NCHW", "NHWC", "strided"};

static nk_ctx *ref_ctx(int threads) {
    nk_ctx *ctx = nkt_ctx(threads);
    assert_int_equal(nk_ctx_set_force_ref(ctx, 1), NK_OK);
    return ctx;
}

/* ---- batch norm: the odd-shape sweep ------------------------------------------------------ */

/* One logical case in every layout, in place or not: the reference within tolerance of
 * nothing but itself across layouts (bitwise), each ISA within tolerance of the reference and
 * bitwise equal to the first ISA's NCHW result. */
static void bn_case(nk_dtype dt, int64_t N, int64_t C, int64_t H, int64_t W, uint64_t salt,
                    int in_place_too) {
    const int64_t dims[4] = {N, C, H, W};
    const nk_dtype vdt = C == 23 ? (dt == NK_F32 ? NK_F64 : NK_F32) : dt; /* mixed sometimes */
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    if ((N + C) % 2) p.flags |= NK_BN_FUSE_RELU;
    if (C == 3) p.flags &= ~NK_BN_USE_SHIFT;
    const char *isas[MAX_ISAS];
    const int nisa = sweep_isas(isas, MAX_ISAS);
    nk_ctx *rctx = ref_ctx(1), *octx = nkt_ctx(1);
    sweep_bn_out ref0, opt0;
    int have0 = 0;
    char d[256];
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++)
        for (int in_place = 0; in_place <= in_place_too; in_place++) {
            const int64_t lead = lay == NKT_CONTIG && !in_place ? 0 : 1;
            nkt_rng r = nkt_rng_make(salt);
            nkt_bn f;
            nkt_bn_init(&f, &r, 4, dims, dt, vdt, (nkt_layout)lay, lead);
            sweep_bn_out ref, opt;
            nkt_case("ref: %s, flags 0x%x%s", nkt_bn_desc(&f, d, sizeof d), p.flags,
                     in_place ? ", in place" : "");
            sweep_bn_run(rctx, &p, &f, in_place, &ref);
            if (have0) {
                nkt_case("ref %s%s vs NCHW: %s", LAYOUT_NAMES[lay], in_place ? " in place" : "",
                         nkt_bn_desc(&f, d, sizeof d));
                sweep_bn_same(&ref, &ref0);
            }
            for (int i = 0; i < nisa; i++) {
                sweep_use_isa(isas[i]);
                nkt_case("%s vs ref: %s, flags 0x%x%s", isas[i], nkt_bn_desc(&f, d, sizeof d),
                         p.flags, in_place ? ", in place" : "");
                NKT_CHECK(!strcmp(nk_ctx_kernels(octx), isas[i]), "kernels %s", nk_ctx_kernels(octx));
                sweep_bn_run(octx, &p, &f, in_place, &opt);
                sweep_bn_close(&opt, &ref, dt, vdt);
                if (have0) {
                    nkt_case("%s %s%s vs %s NCHW: %s", isas[i], LAYOUT_NAMES[lay],
                             in_place ? " in place" : "", isas[0], nkt_bn_desc(&f, d, sizeof d));
                    sweep_bn_same(&opt, &opt0);
                    sweep_bn_free(&opt);
                } else if (i == 0) {
                    opt0 = opt;
                } else {
                    nkt_case("%s vs %s: %s", isas[i], isas[0], nkt_bn_desc(&f, d, sizeof d));
                    sweep_bn_same(&opt, &opt0);
                    sweep_bn_free(&opt);
                }
            }
            sweep_use_isa(NULL);
            if (have0) {
                sweep_bn_free(&ref);
            } else {
                ref0 = ref;
                have0 = 1;
            }
            nkt_bn_free(&f);
        }
    sweep_bn_free(&ref0);
    if (nisa) sweep_bn_free(&opt0);
    nk_ctx_destroy(rctx);
    nk_ctx_destroy(octx);
}

static void bn_sweep(nk_dtype dt) {
    static const int64_t Cs[] = {1, 3, 23, 64}, Ss[] = {1, 7, 17};
    uint64_t salt = dt == NK_F32 ? 1000 : 2000;
    for (size_t ci = 0; ci < sizeof Cs / sizeof Cs[0]; ci++)
        for (size_t si = 0; si < sizeof Ss / sizeof Ss[0]; si++)
            for (int64_t N = 1; N <= 5; N++) bn_case(dt, N, Cs[ci], Ss[si], Ss[si], salt++, 1);
}

static void test_bn_sweep_f32(void **state) {
    (void)state;
    bn_sweep(NK_F32);
}

static void test_bn_sweep_f64(void **state) {
    (void)state;
    bn_sweep(NK_F64);
}

/* Several blocks per channel (runs and rows that end mid-block, a last short block), and
 * channels too large for the fused per-channel backward (x and dy: 1.4 MB in float32) or
 * forward (2.8 MB in float64): the separate passes. In place is covered by the sweep. */
static void test_bn_blocks(void **state) {
    (void)state;
    static const int64_t shapes[][4] = {{3, 5, 61, 67}, {2, 2, 300, 290}, {7, 70, 37, 41}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        assert_true(shapes[k][0] * shapes[k][2] * shapes[k][3] > NK_BLOCK_ELEMS);
        bn_case(NK_F32, shapes[k][0], shapes[k][1], shapes[k][2], shapes[k][3], 3000 + k, 0);
    }
    bn_case(NK_F64, 3, 5, 61, 67, 3100, 0);
    bn_case(NK_F64, 2, 2, 300, 290, 3101, 0);
}

/* Outputs of NK_STREAM_MIN_BYTES or more are written with streaming stores (after a few
 * scalar values up to an aligned address): NCHW (per-channel runs) and NHWC (rows), pointers
 * one element past an aligned one. */
static void test_bn_streaming(void **state) {
    (void)state;
    const int64_t dims[4] = {2, 16, 256, 512};
    assert_true(2 * 16 * 256 * 512 * (int64_t)sizeof(double) >= NK_STREAM_MIN_BYTES);
    const char *isas[MAX_ISAS];
    const int nisa = sweep_isas(isas, MAX_ISAS);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    p.flags |= NK_BN_FUSE_RELU;
    nk_ctx *rctx = ref_ctx(2), *octx = nkt_ctx(2);
    sweep_bn_out first, ref; /* the reference once: its layout independence is checked above */
    char d[256];
    for (int lay = NKT_CONTIG; lay <= NKT_CHLAST; lay++) {
        nkt_rng r = nkt_rng_make(7000);
        nkt_bn f;
        nkt_bn_init(&f, &r, 4, dims, NK_F64, NK_F64, (nkt_layout)lay, 1);
        sweep_bn_out opt;
        nkt_case("ref, streaming stores: %s", nkt_bn_desc(&f, d, sizeof d));
        if (lay == NKT_CONTIG) sweep_bn_run(rctx, &p, &f, 0, &ref);
        for (int i = 0; i < nisa; i++) {
            sweep_use_isa(isas[i]);
            nkt_case("%s vs ref, streaming stores: %s", isas[i], nkt_bn_desc(&f, d, sizeof d));
            sweep_bn_run(octx, &p, &f, 0, &opt);
            sweep_bn_close(&opt, &ref, NK_F64, NK_F64);
            if (lay == NKT_CONTIG && i == 0) {
                first = opt;
            } else {
                sweep_bn_same(&opt, &first);
                sweep_bn_free(&opt);
            }
        }
        sweep_use_isa(NULL);
        nkt_bn_free(&f);
    }
    sweep_bn_free(&ref);
    if (nisa) sweep_bn_free(&first);
    nk_ctx_destroy(rctx);
    nk_ctx_destroy(octx);
}

/* ---- precision: float32 data with mean 1e4 and std 1e-2 ----------------------------------- */

static void test_bn_illconditioned(void **state) {
    (void)state;
    const int64_t dims[4] = {4, 3, 100, 90}; /* M = 36000: five blocks */
    const char *isas[MAX_ISAS];
    const int nisa = sweep_isas(isas, MAX_ISAS);
    char d[256];
    for (int lay = 0; lay < NKT_NUM_LAYOUTS; lay++) {
        nkt_rng r = nkt_rng_make(4000);
        nkt_bn f;
        nkt_bn_init(&f, &r, 4, dims, NK_F32, NK_F64, (nkt_layout)lay, 1);
        double *xv = nkt_malloc((size_t)f.n * sizeof(double));
        for (int64_t i = 0; i < f.n; i++) xv[i] = nkt_normal(&r, 1e4, 1e-2);
        nkt_bn_set_x(&f, xv);
        double mean[3], var[3], got[3];
        nko_moments(4, dims, f.xv, mean, var);
        nk_batchnorm_params p;
        nk_batchnorm_params_default(&p);
        p.unbiased_running_var = 0;
        p.momentum = 1.0; /* running_var = the biased batch variance, in float64 */
        nk_ctx *rctx = ref_ctx(1);
        sweep_bn_out ref;
        sweep_bn_run(rctx, &p, &f, 0, &ref);
        for (int i = 0; i < nisa; i++) {
            sweep_use_isa(isas[i]);
            nk_ctx *ctx = nkt_ctx(1);
            sweep_bn_out o;
            nkt_case("%s, mean 1e4 std 1e-2: %s", isas[i], nkt_bn_desc(&f, d, sizeof d));
            sweep_bn_run(ctx, &p, &f, 0, &o);
            for (int c = 0; c < 3; c++) got[c] = o.rv[c];
            NKT_CLOSE("variance vs float64 oracle", got, var, 3, TOL_ILLCOND_VAR);
            sweep_bn_close(&o, &ref, NK_F32, NK_F64);
            sweep_bn_free(&o);
            nk_ctx_destroy(ctx);
        }
        sweep_use_isa(NULL);
        sweep_bn_free(&ref);
        nk_ctx_destroy(rctx);
        free(xv);
        nkt_bn_free(&f);
    }
}

/* ---- element-wise kernels: the stated bound against the reference -------------------------
 * The optimized normalize and bwd_apply use FMA where the reference rounds a product and then
 * adds (kernels.h, numerics), so they are compared value by value with the bound of
 * TOL_FMA_TERMS: |opt - ref| <= ulp + 4u * S, u = 2^-53, S = the sum of the magnitudes of the
 * terms (normalize: |(x - m) a| + |b| + |y|; bwd_apply: |kg g| + |kx (x - m)| + |k0| + |dx|,
 * y and dx exact, from long double), ulp = one float32 step at the larger result (0 for
 * float64). And against the long-double oracle the optimized result must be within its own
 * bound, 2u * S plus half a float32 step: at least as accurate as the reference's bound.
 * x == m must give y = b exactly (a constant channel normalizes to beta). Channels: ordinary
 * data, float32 data with mean 1e4 and std 1e-2 (a = 100: |m a| = 1e6), and outputs that
 * cancel to ~0 (b = -(x_i - m) a for some i). */

#define EW_N 203 /* odd: vectors, then the scalar tail */
#define EW_C 3

/* One float32 step at |v| (0 for float64 outputs). */
static double ew_ulp(nk_dtype dt, double v) {
    if (dt != NK_F32) return 0.0;
    const float f = fabsf((float)v);
    return (double)nextafterf(f, INFINITY) - (double)f;
}

typedef struct ew_data {
    double x[EW_C][EW_N], g[EW_C][EW_N], ym[EW_C][EW_N];
    double m[EW_C], a[EW_C], b[EW_C], kg[EW_C], kx[EW_C], k0[EW_C];
} ew_data;

static void ew_fill(ew_data *d, nk_dtype dt, uint64_t salt) {
    nkt_rng r = nkt_rng_make(salt);
    const double mu[EW_C] = {0.5, 1e4, -0.25}, sd[EW_C] = {3.0, 1e-2, 1.0};
    for (int c = 0; c < EW_C; c++) {
        for (int i = 0; i < EW_N; i++) {
            double xv = nkt_normal(&r, mu[c], sd[c]);
            if (dt == NK_F32) xv = (double)(float)xv;
            d->x[c][i] = xv;
            d->g[c][i] = nkt_normal(&r, 0.0, 1.0);
            if (dt == NK_F32) d->g[c][i] = (double)(float)d->g[c][i];
            d->ym[c][i] = i % 5 == 0 ? 0.0 : nkt_normal(&r, 0.0, 1.0);
        }
        d->m[c] = d->x[c][7]; /* exactly representable: x[7] == m */
        d->x[c][EW_N - 2] = d->m[c];
        d->a[c] = 1.0 / sd[c] * nkt_uniform(&r, 0.5, 1.5);
        d->b[c] = nkt_uniform(&r, -1.0, 1.0);
        d->kg[c] = nkt_uniform(&r, 0.5, 1.5) * d->a[c];
        d->kx[c] = nkt_uniform(&r, -1.0, 1.0) * d->a[c] * d->a[c] * sd[c];
        d->k0[c] = nkt_uniform(&r, -0.1, 0.1) * d->a[c];
    }
    /* cancellation: y = 0 exactly for x[11] of channel 2 (in exact arithmetic) */
    d->b[2] = -(d->x[2][11] - d->m[2]) * d->a[2];
}

static void ew_store(nk_dtype dt, void *dst, const double *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (dt == NK_F32)
            ((float *)dst)[i] = (float)v[i];
        else
            ((double *)dst)[i] = v[i];
    }
}

static double ew_load(nk_dtype dt, const void *src, int64_t i) {
    return dt == NK_F32 ? (double)((const float *)src)[i] : ((const double *)src)[i];
}

static void ew_check(const char *what, nk_dtype dt, int64_t i, double opt, double ref,
                     long double exact, long double terms) {
    const double rtol = nkt_tol_get(TOL_FMA_TERMS)->rtol, S = (double)terms;
    const double ulp = ew_ulp(dt, fmax(fabs(opt), fabs(ref)));
    NKT_CHECK(fabs(opt - ref) <= ulp + rtol * S, "%s[%lld]: optimized %.17g, reference %.17g, "
              "|diff| %.3g > ulp %.3g + %.3g * S (S = %.6g)", what, (long long)i, opt, ref,
              fabs(opt - ref), ulp, rtol, S);
    const double e = (double)exact, own = 0.5 * ew_ulp(dt, e) + 0.5 * rtol * S;
    NKT_CHECK(fabs(opt - e) <= own + 0.5 * ew_ulp(dt, opt), "%s[%lld]: optimized %.17g, exact %.17g, "
              "|err| %.3g > %.3g", what, (long long)i, opt, e, fabs(opt - e), own);
}

static void ew_case(const nk_bn_kernels *ref, const nk_bn_kernels *opt, const char *isa,
                    nk_dtype dt, uint64_t salt) {
    ew_data *d = nkt_malloc(sizeof *d);
    ew_fill(d, dt, salt);
    const size_t es = nk_dtype_size(dt), bytes = (size_t)EW_C * EW_N * es;
    void *x = nkt_malloc(bytes), *g = nkt_malloc(bytes), *ym = nkt_malloc(bytes);
    void *yr = nkt_malloc(bytes), *yo = nkt_malloc(bytes);
    ew_store(dt, x, &d->x[0][0], EW_C * EW_N);
    ew_store(dt, g, &d->g[0][0], EW_C * EW_N);
    ew_store(dt, ym, &d->ym[0][0], EW_C * EW_N);
    const int64_t dims[4] = {1, EW_C, 1, EW_N};
    nk_tensor tx, tg, tyr, tyo, tym;
    assert_int_equal(nk_tensor_contiguous(&tx, x, dt, 4, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&tg, g, dt, 4, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&tyr, yr, dt, 4, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&tyo, yo, dt, 4, dims), NK_OK);
    assert_int_equal(nk_tensor_contiguous(&tym, ym, dt, 4, dims), NK_OK);
    for (int relu = 0; relu <= 1; relu++) { /* normalize */
        const nk_tensor *ts[2] = {&tx, relu ? &tyo : &tyr};
        nk_cview v;
        nk_cview_init(&v, 2, ts);
        nkt_case("%s normalize vs reference, %s, relu %d, seed salt %llu", isa,
                 nkt_dtype_name(dt), relu, (unsigned long long)salt);
        for (int c = 0; c < EW_C; c++) {
            ref->normalize(&v, x, yr, c, 0, EW_N, d->m[c], d->a[c], d->b[c], relu);
            opt->normalize(&v, x, yo, c, 0, EW_N, d->m[c], d->a[c], d->b[c], relu);
        }
        for (int c = 0; c < EW_C; c++)
            for (int i = 0; i < EW_N; i++) {
                const int64_t k = (int64_t)c * EW_N + i;
                const long double p = ((long double)ew_load(dt, x, k) - d->m[c]) * d->a[c];
                long double e = p + d->b[c];
                const long double S = fabsl(p) + fabsl((long double)d->b[c]) + fabsl(e);
                if (relu && e < 0) e = 0;
                ew_check("y", dt, k, ew_load(dt, yo, k), ew_load(dt, yr, k), e, S);
                if (ew_load(dt, x, k) == d->m[c] && !(relu && d->b[c] < 0))
                    NKT_CHECK(ew_load(dt, yo, k) == (dt == NK_F32 ? (double)(float)d->b[c] : d->b[c]),
                              "y[%lld] for x == mean: %.17g, not beta %.17g", (long long)k,
                              ew_load(dt, yo, k), d->b[c]);
            }
    }
    for (int mask = 0; mask <= 1; mask++) { /* bwd_apply */
        const nk_tensor *ts[4] = {&tx, &tg, &tyr, &tym};
        nk_cview v;
        nk_cview_init(&v, 4, ts);
        nkt_case("%s bwd_apply vs reference, %s, mask %d, seed salt %llu", isa,
                 nkt_dtype_name(dt), mask, (unsigned long long)salt);
        const void *m = mask ? ym : NULL;
        for (int c = 0; c < EW_C; c++) {
            ref->bwd_apply(&v, x, g, m, yr, c, 0, EW_N, d->m[c], d->kg[c], d->kx[c], d->k0[c]);
            opt->bwd_apply(&v, x, g, m, yo, c, 0, EW_N, d->m[c], d->kg[c], d->kx[c], d->k0[c]);
        }
        for (int c = 0; c < EW_C; c++)
            for (int i = 0; i < EW_N; i++) {
                const int64_t k = (int64_t)c * EW_N + i;
                const double gi = mask && ew_load(dt, ym, k) <= 0 ? 0.0 : ew_load(dt, g, k);
                const long double p1 = (long double)d->kg[c] * gi;
                const long double p2 = (long double)d->kx[c] * ((long double)ew_load(dt, x, k) - d->m[c]);
                const long double e = p1 + p2 + d->k0[c];
                const long double S = fabsl(p1) + fabsl(p2) + fabsl((long double)d->k0[c]) + fabsl(e);
                ew_check("dx", dt, k, ew_load(dt, yo, k), ew_load(dt, yr, k), e, S);
            }
    }
    free(x), free(g), free(ym), free(yr), free(yo), free(d);
}

static void test_bn_elementwise_bound(void **state) {
    (void)state;
    for (int isa = NK_ISA_REF + 1; isa <= (int)nk_isa_supported(); isa++)
        for (int dt = NK_F32; dt <= NK_F64; dt++)
            for (uint64_t salt = 8000; salt < 8010; salt++)
                ew_case(dt == NK_F32 ? &nk_bn_ref_f32 : &nk_bn_ref_f64,
                        nk_bn_kernels_isa((nk_isa)isa, (nk_dtype)dt), nk_isa_name((nk_isa)isa),
                        (nk_dtype)dt, salt);
}

/* ---- the runs kernels (kernels.h, nk_view_runs) against the per-channel kernels ------------
 * Each table's runs functions must give every channel of [c0, c1) the bits of its own
 * per-channel function over [r0, r1): the reductions over one block (r0, r1 inside a run or
 * not, several runs, more channels than a group of lane sums), the element-wise functions over
 * any range, in place too, touching nothing outside [r0, r1) x [c0, c1). Views: contiguous
 * NCHW, padded channel and batch strides, a pointer one element past an aligned one, N = 1
 * (one reduced axis), with and without the ReLU mask. */

#define RK_MAXE 40000

typedef struct rk_shape {
    /* strides: HW + pad_c per channel, C (HW + pad_c) + pad_n per n */
    int64_t N, C, HW, pad_c, pad_n;
} rk_shape;

static void rk_fill(nkt_rng *r, nk_dtype dt, void *p, int64_t n, double mu, double sd) {
    for (int64_t i = 0; i < n; i++) {
        const double v = nkt_normal(r, mu, sd);
        if (dt == NK_F32)
            ((float *)p)[i] = (float)v;
        else
            ((double *)p)[i] = v;
    }
}

static int rk_same(nk_dtype dt, const void *a, const void *b, int64_t n, int64_t *where) {
    const size_t es = nk_dtype_size(dt);
    for (int64_t i = 0; i < n; i++)
        if (memcmp((const char *)a + i * es, (const char *)b + i * es, es)) {
            *where = i;
            return 0;
        }
    return 1;
}

static void rk_case(const nk_bn_kernels *k, const char *isa, nk_dtype dt, const rk_shape *sh,
                    int64_t c0, int64_t c1, int64_t r0, int64_t r1, uint64_t salt) {
    const size_t es = nk_dtype_size(dt);
    const int64_t sc = sh->HW + sh->pad_c, sn = sh->C * sc + sh->pad_n;
    const int64_t span = sh->N * sn + 1; /* + 1: the unaligned start */
    assert_true(span <= RK_MAXE && c1 - c0 <= 64);
    const int64_t dims[3] = {sh->N, sh->C, sh->HW}, st[3] = {sn, sc, 1};
    char *buf[5];
    for (int t = 0; t < 5; t++) buf[t] = nkt_malloc((size_t)span * es);
    nkt_rng r = nkt_rng_make(salt);
    rk_fill(&r, dt, buf[0], span, 3.0, 2.0);  /* x */
    rk_fill(&r, dt, buf[1], span, 0.0, 1.0);  /* dy */
    rk_fill(&r, dt, buf[3], span, 0.1, 1.0);  /* y: the mask */
    nk_tensor ts_[5];
    const nk_tensor *ts[5];
    for (int t = 0; t < 5; t++) {
        assert_int_equal(nk_tensor_strided(&ts_[t], buf[t] + es, dt, 3, dims, st), NK_OK);
        ts[t] = &ts_[t];
    }
    nk_cview v;
    nk_cview_init(&v, 4, ts);
    NKT_CHECK(nk_view_runs(&v), "view of runs");
    const char *x = buf[0] + es, *dy = buf[1] + es, *ym = buf[3] + es;
    double mean[64], a[64], b[64], kg[64], kx[64], k0[64];
    for (int64_t j = 0; j < c1 - c0; j++) {
        mean[j] = nkt_normal(&r, 3.0, 0.5), a[j] = nkt_uniform(&r, 0.5, 2.0);
        b[j] = nkt_uniform(&r, -1.0, 1.0), kg[j] = nkt_uniform(&r, 0.5, 1.5);
        kx[j] = nkt_uniform(&r, -1.0, 1.0), k0[j] = nkt_uniform(&r, -0.1, 0.1);
    }
    char desc[160];
    snprintf(desc, sizeof desc,
             "%s %s N %lld C %lld HW %lld pads %lld %lld, channels [%lld, %lld), values [%lld, %lld)", isa, nkt_dtype_name(dt), (long long)sh->N, (long long)sh->C,
             (long long)sh->HW, (long long)sh->pad_c, (long long)sh->pad_n, (long long)c0,
             (long long)c1, (long long)r0, (long long)r1);
    if (r1 - r0 <= NK_BLOCK_ELEMS) { /* reductions: one block */
        double m1[64], m2[64];
        nkt_case("runs_moments vs moments: %s", desc);
        k->runs_moments(&v, x, c0, c1, r0, r1, m1, m2);
        for (int64_t c = c0; c < c1; c++) {
            double em, ev;
            k->moments(&v, x, c, r0, r1, &em, &ev);
            NKT_CHECK(!memcmp(&em, &m1[c - c0], 8) && !memcmp(&ev, &m2[c - c0], 8),
                      "channel %lld: (%.17g, %.17g) vs (%.17g, %.17g)", (long long)c, m1[c - c0],
                      m2[c - c0], em, ev);
        }
        for (int mask = 0; mask <= 1; mask++)
            for (int wx = 0; wx <= 1; wx++) {
                double s0[64], s1[64], s2[64];
                nkt_case("runs_bwd_reduce vs bwd_reduce, mask %d, sum_x %d: %s", mask, wx, desc);
                k->runs_bwd_reduce(&v, x, dy, mask ? ym : NULL, c0, c1, r0, r1, mean, s0, s1,
                                   wx ? s2 : NULL);
                for (int64_t c = c0; c < c1; c++) {
                    double e0, e1, e2 = 0.0;
                    k->bwd_reduce(&v, x, dy, mask ? ym : NULL, c, r0, r1, mean[c - c0], &e0,
                                  &e1, wx ? &e2 : NULL);
                    NKT_CHECK(!memcmp(&e0, &s0[c - c0], 8) && !memcmp(&e1, &s1[c - c0], 8) &&
                                  (!wx || !memcmp(&e2, &s2[c - c0], 8)),
                              "channel %lld: (%.17g, %.17g, %.17g) vs (%.17g, %.17g, %.17g)",
                              (long long)c, s0[c - c0], s1[c - c0], wx ? s2[c - c0] : 0.0, e0, e1,
                              e2);
                }
            }
    }
    char *got = nkt_malloc((size_t)span * es), *want = nkt_malloc((size_t)span * es);
    int64_t at = 0;
    for (int relu = 0; relu <= 1; relu++)
        for (int inplace = 0; inplace <= 1; inplace++) { /* normalize: y in slot 1 */
            nkt_case("runs_normalize vs normalize, relu %d, in place %d: %s", relu, inplace, desc);
            char *yb = inplace ? buf[0] : buf[2];
            memcpy(got, buf[0], (size_t)span * es); /* x, kept to restore */
            if (!inplace) rk_fill(&r, dt, yb, span, 7.0, 1.0);
            memcpy(want, yb, (size_t)span * es);
            k->runs_normalize(&v, x, yb + es, c0, c1, r0, r1, mean, a, b, relu);
            char *res = nkt_malloc((size_t)span * es);
            memcpy(res, yb, (size_t)span * es);
            memcpy(yb, want, (size_t)span * es); /* again with the per-channel kernel */
            for (int64_t c = c0; c < c1; c++)
                k->normalize(&v, x, yb + es, c, r0, r1, mean[c - c0], a[c - c0], b[c - c0], relu);
            NKT_CHECK(rk_same(dt, res, yb, span, &at), "element %lld differs", (long long)at);
            memcpy(buf[0], got, (size_t)span * es);
            free(res);
        }
    for (int mask = 0; mask <= 1; mask++)
        for (int inplace = 0; inplace <= 1; inplace++) { /* bwd_apply: dx in slot 2, or dy */
            nkt_case("runs_bwd_apply vs bwd_apply, mask %d, in place %d: %s", mask, inplace, desc);
            char *ob = inplace ? buf[1] : buf[2];
            memcpy(got, buf[1], (size_t)span * es);
            if (!inplace) rk_fill(&r, dt, ob, span, 7.0, 1.0);
            memcpy(want, ob, (size_t)span * es);
            k->runs_bwd_apply(&v, x, dy, mask ? ym : NULL, ob + es, c0, c1, r0, r1, mean, kg, kx,
                              k0);
            char *res = nkt_malloc((size_t)span * es);
            memcpy(res, ob, (size_t)span * es);
            memcpy(ob, want, (size_t)span * es);
            for (int64_t c = c0; c < c1; c++)
                k->bwd_apply(&v, x, dy, mask ? ym : NULL, ob + es, c, r0, r1, mean[c - c0],
                             kg[c - c0], kx[c - c0], k0[c - c0]);
            NKT_CHECK(rk_same(dt, res, ob, span, &at), "element %lld differs", (long long)at);
            memcpy(buf[1], got, (size_t)span * es);
            free(res);
        }
    free(got), free(want);
    for (int t = 0; t < 5; t++) free(buf[t]);
}

static void test_bn_runs_kernels(void **state) {
    (void)state;
    static const rk_shape shapes[] = {
        {5, 3, 49, 0, 0},   /* 7x7: runs of 49, phases of every kind */
        {3, 37, 17, 0, 0},  /* more channels than a group of lane sums */
        {4, 5, 33, 3, 5},   /* padded channels and batch */
        {1, 4, 250, 0, 0},  /* N = 1: one reduced axis */
        {2, 2, 5000, 1, 0}, /* a block boundary inside a run */
    };
    uint64_t salt = 9000;
    for (int isa = NK_ISA_REF; isa <= (int)nk_isa_supported(); isa++)
        for (int dt = NK_F32; dt <= NK_F64; dt++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++, salt++) {
                const rk_shape *sh = &shapes[s];
                const nk_bn_kernels *k = nk_bn_kernels_isa((nk_isa)isa, (nk_dtype)dt);
                const int64_t M = sh->N * sh->HW, C = sh->C;
                const char *name = nk_isa_name((nk_isa)isa);
                rk_case(k, name, (nk_dtype)dt, sh, 0, C, 0, M < NK_BLOCK_ELEMS ? M : NK_BLOCK_ELEMS,
                        salt);
                rk_case(k, name, (nk_dtype)dt, sh, C / 3, C - C / 4, 3, M - 2, salt); /* mid-run */
                rk_case(k, name, (nk_dtype)dt, sh, C - 1, C, M - 1, M, salt);        /* one value */
                if (M > NK_BLOCK_ELEMS)
                    rk_case(k, name, (nk_dtype)dt, sh, 0, C, NK_BLOCK_ELEMS, M, salt); /* block 1 */
                if (sh->N > 1) /* from inside run 1 on */
                    rk_case(k, name, (nk_dtype)dt, sh, 0, C, sh->HW + 1,
                            2 * sh->HW < M ? 2 * sh->HW + 3 : M, salt);
            }
}

/* chan_moments (blocks [b0, b1) of one channel, side by side in the optimized kernels) must
 * give each block the bits of moments over it: runs long enough for the paired walk (f32 runs
 * of 600 and 3136 values, runs whose length is not a multiple of 16, so that the two blocks'
 * pieces start at different lane phases), short runs (block by block), padded strides, an
 * unaligned pointer, an odd block count and ranges that start at an odd block. */
static void test_bn_chan_moments(void **state) {
    (void)state;
    static const rk_shape shapes[] = {
        {40, 2, 600, 0, 0},  /* 3 blocks, runs of 2400 bytes in f32 */
        {9, 2, 3136, 7, 3},  /* 56x56, padded: 3.4 blocks */
        {30, 3, 1001, 0, 1}, /* odd runs: pieces at every phase */
        {20, 2, 49, 2, 0},   /* 7x7: short runs */
        {1, 2, 40000, 0, 0}, /* one run: 4.9 blocks */
    };
    uint64_t salt = 9700;
    for (int isa = NK_ISA_REF; isa <= (int)nk_isa_supported(); isa++)
        for (int dt = NK_F32; dt <= NK_F64; dt++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++, salt++) {
                const rk_shape *sh = &shapes[si];
                const nk_bn_kernels *k = nk_bn_kernels_isa((nk_isa)isa, (nk_dtype)dt);
                const size_t es = nk_dtype_size((nk_dtype)dt);
                const int64_t sc = sh->HW + sh->pad_c, sn = sh->C * sc + sh->pad_n;
                const int64_t span = sh->N * sn + 1, M = sh->N * sh->HW, nb = nk_num_blocks(M);
                const int64_t dims[3] = {sh->N, sh->C, sh->HW}, st[3] = {sn, sc, 1};
                char *buf = nkt_malloc((size_t)span * es);
                nkt_rng r = nkt_rng_make(salt);
                rk_fill(&r, (nk_dtype)dt, buf, span, 3.0, 2.0);
                nk_tensor t;
                const nk_tensor *ts[2] = {&t, &t};
                assert_int_equal(nk_tensor_strided(&t, buf + es, (nk_dtype)dt, 3, dims, st), NK_OK);
                nk_cview v;
                nk_cview_init(&v, 2, ts);
                for (int64_t c = 0; c < sh->C; c++)
                    for (int64_t b0 = 0; b0 < 2 && b0 < nb; b0++) {
                        double out[2 * 8];
                        assert_true(nb - b0 <= 8);
                        nkt_case("chan_moments vs moments: %s %s N %lld C %lld HW %lld, channel %lld, blocks [%lld, %lld)",
                                 nk_isa_name((nk_isa)isa), nkt_dtype_name((nk_dtype)dt),
                                 (long long)sh->N, (long long)sh->C, (long long)sh->HW,
                                 (long long)c, (long long)b0, (long long)nb);
                        k->chan_moments(&v, buf + es, c, b0, nb, out);
                        for (int64_t b = b0; b < nb; b++) {
                            const int64_t r0 = b * NK_BLOCK_ELEMS;
                            const int64_t r1 = r0 + NK_BLOCK_ELEMS < M ? r0 + NK_BLOCK_ELEMS : M;
                            double em, ev;
                            k->moments(&v, buf + es, c, r0, r1, &em, &ev);
                            NKT_CHECK(!memcmp(&em, &out[2 * (b - b0)], 8) &&
                                          !memcmp(&ev, &out[2 * (b - b0) + 1], 8),
                                      "block %lld: (%.17g, %.17g) vs (%.17g, %.17g)", (long long)b,
                                      out[2 * (b - b0)], out[2 * (b - b0) + 1], em, ev);
                        }
                    }
                free(buf);
            }
}

/* ---- threads: bitwise equality of the optimized kernels for 1..4 threads ------------------- */

static void threads_case(const int64_t *dims, nk_dtype dt, nkt_layout lay, unsigned flags,
                         uint64_t salt, int best_only) {
    const char *isas[MAX_ISAS];
    const int nisa = sweep_isas(isas, MAX_ISAS);
    nkt_rng r = nkt_rng_make(salt);
    nkt_bn f;
    nkt_bn_init(&f, &r, 4, dims, dt, dt, lay, 1);
    assert_true(f.n >= 4 * NK_PARALLEL_MIN_ELEMS && f.M > NK_BLOCK_ELEMS);
    nk_batchnorm_params p;
    nk_batchnorm_params_default(&p);
    p.flags = flags;
    char d[256];
    for (int i = best_only ? nisa - 1 : 0; i < nisa; i++) {
        sweep_use_isa(isas[i]);
        sweep_bn_out one, o;
        for (int t = 1; t <= 4; t++) {
            nk_ctx *ctx = nkt_ctx(t);
            nkt_case("%s, %d threads vs 1: %s, flags 0x%x", isas[i], t, nkt_bn_desc(&f, d, sizeof d),
                     flags);
            sweep_bn_run(ctx, &p, &f, 0, t == 1 ? &one : &o);
            if (t > 1) {
                sweep_bn_same(&o, &one);
                sweep_bn_free(&o);
            }
            nk_ctx_destroy(ctx);
        }
        sweep_bn_free(&one);
    }
    sweep_use_isa(NULL);
    nkt_bn_free(&f);
}

static void test_bn_threads_bitwise(void **state) {
    (void)state;
    const unsigned ss = NK_BN_USE_SCALE | NK_BN_USE_SHIFT;
    static const int64_t fused[4] = {8, 16, 64, 64}, odd[4] = {4, 12, 80, 70};
    /* channels of 1.3 MB (float32) and 2.6 MB (float64): the unfused passes */
    static const int64_t big[4] = {2, 4, 400, 400}, bigger[4] = {2, 3, 400, 401};
    threads_case(fused, NK_F32, NKT_CONTIG, ss, 5001, 0);
    threads_case(fused, NK_F32, NKT_CHLAST, ss | NK_BN_FUSE_RELU, 5002, 0);
    threads_case(odd, NK_F64, NKT_STRIDED, ss | NK_BN_FUSE_RELU, 5003, 0);
    threads_case(odd, NK_F64, NKT_CHLAST, ss, 5004, 0);
    /* 7x7 runs in groups of channels (batchnorm.c, fuse_group: the group size depends on the
     * thread count), two blocks per channel, the second starting inside a run */
    static const int64_t small[4] = {200, 32, 7, 7};
    threads_case(small, NK_F32, NKT_CONTIG, ss | NK_BN_FUSE_RELU, 5007, 1);
    /* 2 blocks of 64 channels: the rows reductions take half chunks on 4 threads */
    static const int64_t halves[4] = {3, 64, 60, 60};
    threads_case(halves, NK_F32, NKT_CHLAST, ss | NK_BN_FUSE_RELU, 5008, 0);
    threads_case(big, NK_F32, NKT_CONTIG, ss, 5005, 1); /* the best ISA: the same kernels */
    threads_case(bigger, NK_F64, NKT_CONTIG, ss, 5006, 1);
}

/* ---- rows kernels against the per-channel kernels, on views of several runs --------------- */

static void fill_sentinel(void *p, nk_dtype dt, int64_t n) {
    for (int64_t e = 0; e < n; e++)
        if (dt == NK_F32)
            ((float *)p)[e] = (float)NKT_SENTINEL;
        else
            ((double *)p)[e] = NKT_SENTINEL;
}

/* Channels-last views whose rows are not one run (each W-line padded: the rows kernels walk
 * the rows through offset tables) and dense ones (one run: base + i * stride), for every
 * instruction set: rows_moments / rows_bwd_reduce give each channel the bits of moments /
 * bwd_reduce, rows_normalize / rows_bwd_apply write the bits of normalize / bwd_apply (the
 * same expression per value), over sub-ranges of rows and of channels (C = 3, 23, 64, 67:
 * partial vectors and panels), with and without the ReLU mask, and leave the padding alone. */
static void rows_kernels_case(nk_isa isa, nk_dtype dt, int64_t C, int64_t pad, uint64_t salt) {
    const int64_t N = 2, H = 3, W = 37, Wp = W + pad, M = N * H * W;
    const int64_t dims[4] = {N, C, H, W}, st[4] = {H * Wp * C, 1, Wp * C, C};
    const int64_t len = N * H * Wp * C;
    const size_t es = dt == NK_F32 ? sizeof(float) : sizeof(double);
    const nk_bn_kernels *k = nk_bn_kernels_isa(isa, dt);
    nkt_rng r = nkt_rng_make(salt);
    void *buf[6];
    nk_tensor t[6];
    for (int i = 0; i < 6; i++) { /* x, dy, dx, ym; then the per-channel kernels' dx, y */
        buf[i] = nkt_malloc((size_t)len * es);
        for (int64_t e = 0; e < len; e++) {
            const double val = i == 3 ? nkt_uniform(&r, -1, 1) : nkt_normal(&r, 1, 2);
            if (dt == NK_F32)
                ((float *)buf[i])[e] = (float)val;
            else
                ((double *)buf[i])[e] = val;
        }
        t[i].data = buf[i];
        t[i].dtype = dt;
        t[i].ndim = 4;
        memcpy(t[i].dims, dims, sizeof dims);
        memcpy(t[i].strides, st, sizeof st);
    }
    const nk_tensor *ts[4] = {&t[0], &t[1], &t[2], &t[3]};
    nk_cview v;
    nk_cview_init(&v, 4, ts);
    assert_true(nk_view_rows(&v));
    double *mean = nkt_malloc((size_t)C * 5 * sizeof(double)), *a = mean + C, *b = a + C,
           *kx = b + C, *k0 = kx + C;
    double *rm = nkt_malloc((size_t)C * 3 * sizeof(double)), *r2 = rm + C, *r3 = r2 + C;
    for (int64_t c = 0; c < C; c++) {
        mean[c] = nkt_uniform(&r, -1, 1);
        a[c] = nkt_uniform(&r, 0.5, 2);
        b[c] = nkt_uniform(&r, -1, 1);
        kx[c] = nkt_uniform(&r, -1, 1);
        k0[c] = nkt_uniform(&r, -1, 1);
    }
    const int64_t ranges[3][2] = {{0, M}, {5, M - 3}, {W - 2, W + 3}};
    const int64_t chans[2][2] = {{0, C}, {1, C > 2 ? C - 1 : C}};
    for (int ri = 0; ri < 3; ri++)
        for (int ci = 0; ci < 2; ci++)
            for (int masked = 0; masked <= 1; masked++) {
                const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
                const int64_t c0 = chans[ci][0], c1 = chans[ci][1];
                const void *ym = masked ? buf[3] : NULL;
                nkt_case("%s rows kernels: C %lld, pad %lld, %s, rows [%lld, %lld), channels "
                         "[%lld, %lld)%s", nk_isa_name(isa), (long long)C, (long long)pad,
                         dt == NK_F32 ? "float32" : "float64", (long long)r0, (long long)r1,
                         (long long)c0, (long long)c1, masked ? ", mask" : "");
                k->rows_moments(&v, buf[0], c0, c1, r0, r1, rm, r2);
                for (int64_t c = c0; c < c1; c++) {
                    double m1, m2;
                    k->moments(&v, buf[0], c, r0, r1, &m1, &m2);
                    NKT_CHECK(!memcmp(&m1, &rm[c - c0], 8) && !memcmp(&m2, &r2[c - c0], 8),
                              "moments of channel %lld: %.17g %.17g vs %.17g %.17g", (long long)c,
                              rm[c - c0], r2[c - c0], m1, m2);
                }
                k->rows_bwd_reduce(&v, buf[0], buf[1], ym, c0, c1, r0, r1, mean + c0, rm, r2, r3);
                for (int64_t c = c0; c < c1; c++) {
                    double sg, sgx, sx;
                    k->bwd_reduce(&v, buf[0], buf[1], ym, c, r0, r1, mean[c], &sg, &sgx, &sx);
                    NKT_CHECK(!memcmp(&sg, &rm[c - c0], 8) && !memcmp(&sgx, &r2[c - c0], 8) &&
                                  !memcmp(&sx, &r3[c - c0], 8),
                              "bwd_reduce of channel %lld", (long long)c);
                }
                /* rows into slot 2 (dx), per channel into buf[4] through a view of the same
                 * strides, then compared element by element (padding included) */
                fill_sentinel(buf[2], dt, len);
                fill_sentinel(buf[4], dt, len);
                k->rows_bwd_apply(&v, buf[0], buf[1], ym, buf[2], c0, c1, r0, r1, mean + c0,
                                  a + c0, kx + c0, k0 + c0);
                nk_cview w = v;
                const void *x4 = buf[0];
                for (int64_t c = c0; c < c1; c++)
                    k->bwd_apply(&w, x4, buf[1], ym, buf[4], c, r0, r1, mean[c], a[c], kx[c], k0[c]);
                NKT_CHECK(!memcmp(buf[2], buf[4], (size_t)len * es), "bwd_apply");
                fill_sentinel(buf[2], dt, len);
                fill_sentinel(buf[5], dt, len);
                k->rows_normalize(&v, buf[0], buf[2], c0, c1, r0, r1, mean + c0, a + c0, b + c0,
                                  masked);
                for (int64_t c = c0; c < c1; c++) {
                    /* normalize writes slot 1: a view with y = buf[5] there */
                    const nk_tensor *ty[2] = {&t[0], &t[5]};
                    nk_cview vy;
                    nk_cview_init(&vy, 2, ty);
                    k->normalize(&vy, buf[0], buf[5], c, r0, r1, mean[c], a[c], b[c], masked);
                }
                NKT_CHECK(!memcmp(buf[2], buf[5], (size_t)len * es), "normalize");
            }
    for (int i = 0; i < 6; i++) free(buf[i]);
    free(mean);
    free(rm);
}

static void test_bn_rows_kernels(void **state) {
    (void)state;
    static const int64_t Cs[] = {3, 23, 64, 67};
    uint64_t salt = 9000;
    for (int isa = NK_ISA_AVX2; isa <= (int)nk_isa_supported(); isa++)
        for (int d = 0; d < 2; d++)
            for (size_t ci = 0; ci < sizeof Cs / sizeof Cs[0]; ci++)
                for (int64_t pad = 0; pad <= 2; pad += 2)
                    rows_kernels_case((nk_isa)isa, d ? NK_F64 : NK_F32, Cs[ci], pad, salt++);
}

/* Dense channels-last views of at least 16 MiB per tensor: the rows reductions walk the rows
 * in address order there (bn_simd_impl.h, RAO) and must still give each channel the bits of
 * moments / bwd_reduce on the same values in NCHW, over whole blocks, a range starting off a
 * multiple of 16, the tail, all or some channels (C = 64: whole-row panels; 67: a partial
 * panel), with and without the ReLU mask, for every instruction set. (A lane assignment
 * rotated, l = (q + k) % 16, or multiplied by an odd number gives the same bits by design:
 * nk_sum16's pairs are the cosets of 8Z16, 4Z16, 2Z16, which those maps permute, and each
 * addition is commutative. Any other wrong assignment, e.g. lanes 1 and 2 swapped, fails.) */
static void rows_big_case(nk_isa isa, nk_dtype dt, int64_t C, uint64_t salt) {
    const size_t es = dt == NK_F32 ? sizeof(float) : sizeof(double);
    const int64_t HW = ((int64_t)17 << 20) / (int64_t)es / 64, len = C * HW, M = HW;
    const int64_t dims[4] = {1, C, 1, HW}, st[4] = {len, 1, len, C};
    const nk_bn_kernels *k = nk_bn_kernels_isa(isa, dt);
    nkt_rng r = nkt_rng_make(salt);
    void *buf[4];
    nk_tensor t[4];
    for (int i = 0; i < 4; i++) { /* x, dy, dx (unused), ym */
        buf[i] = nkt_malloc((size_t)len * es);
        for (int64_t e = 0; e < len; e++) {
            const double val = i == 3 ? nkt_uniform(&r, -1, 1) : nkt_normal(&r, 1, 2);
            if (dt == NK_F32)
                ((float *)buf[i])[e] = (float)val;
            else
                ((double *)buf[i])[e] = val;
        }
        t[i].data = buf[i];
        t[i].dtype = dt;
        t[i].ndim = 4;
        memcpy(t[i].dims, dims, sizeof dims);
        memcpy(t[i].strides, st, sizeof st);
    }
    const nk_tensor *ts[4] = {&t[0], &t[1], &t[2], &t[3]};
    nk_cview v;
    nk_cview_init(&v, 4, ts);
    assert_true(nk_view_rows(&v));
    /* The same values in NCHW (each channel one contiguous run): the per-channel kernels on this
     * view are the independent oracle. On the NHWC view itself they could share code with the
     * rows kernels, and a wrong lane assignment in both would go unseen. */
    void *nbuf[4];
    nk_tensor tn[4];
    const int64_t stn[4] = {len, HW, HW, 1};
    for (int i = 0; i < 4; i++) {
        nbuf[i] = nkt_malloc((size_t)len * es);
        for (int64_t c = 0; c < C; c++)
            for (int64_t q = 0; q < HW; q++)
                memcpy((char *)nbuf[i] + (size_t)(c * HW + q) * es,
                       (const char *)buf[i] + (size_t)(q * C + c) * es, es);
        tn[i] = t[i];
        tn[i].data = nbuf[i];
        memcpy(tn[i].strides, stn, sizeof stn);
    }
    const nk_tensor *tsn[4] = {&tn[0], &tn[1], &tn[2], &tn[3]};
    nk_cview vn;
    nk_cview_init(&vn, 4, tsn);
    assert_false(nk_view_rows(&vn));
    double *mean = nkt_malloc((size_t)C * sizeof(double));
    double *rm = nkt_malloc((size_t)C * 3 * sizeof(double)), *r2 = rm + C, *r3 = r2 + C;
    for (int64_t c = 0; c < C; c++) mean[c] = nkt_uniform(&r, -1, 1);
    const int64_t ranges[4][2] = {{0, NK_BLOCK_ELEMS},
                                  {NK_BLOCK_ELEMS, 2 * NK_BLOCK_ELEMS},
                                  {5, NK_BLOCK_ELEMS + 37},
                                  {M - 1000, M}};
    const int64_t chans[2][2] = {{0, C}, {1, C - 1}};
    for (int ri = 0; ri < 4; ri++)
        for (int ci = 0; ci < 2; ci++)
            for (int masked = 0; masked <= 1; masked++) {
                const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
                const int64_t c0 = chans[ci][0], c1 = chans[ci][1];
                const void *ym = masked ? buf[3] : NULL, *ymn = masked ? nbuf[3] : NULL;
                nkt_case("%s big rows reductions: C %lld, %s, rows [%lld, %lld), channels "
                         "[%lld, %lld)%s", nk_isa_name(isa), (long long)C,
                         dt == NK_F32 ? "float32" : "float64", (long long)r0, (long long)r1,
                         (long long)c0, (long long)c1, masked ? ", mask" : "");
                if (!masked) {
                    k->rows_moments(&v, buf[0], c0, c1, r0, r1, rm, r2);
                    for (int64_t c = c0; c < c1; c++) {
                        double m1, m2;
                        k->moments(&vn, nbuf[0], c, r0, r1, &m1, &m2);
                        NKT_CHECK(!memcmp(&m1, &rm[c - c0], 8) && !memcmp(&m2, &r2[c - c0], 8),
                                  "moments of channel %lld", (long long)c);
                    }
                }
                k->rows_bwd_reduce(&v, buf[0], buf[1], ym, c0, c1, r0, r1, mean + c0, rm, r2, r3);
                for (int64_t c = c0; c < c1; c++) {
                    double sg, sgx, sx;
                    k->bwd_reduce(&vn, nbuf[0], nbuf[1], ymn, c, r0, r1, mean[c], &sg, &sgx, &sx);
                    NKT_CHECK(!memcmp(&sg, &rm[c - c0], 8) && !memcmp(&sgx, &r2[c - c0], 8) &&
                                  !memcmp(&sx, &r3[c - c0], 8),
                              "bwd_reduce of channel %lld", (long long)c);
                }
            }
    for (int i = 0; i < 4; i++) free(buf[i]), free(nbuf[i]);
    free(mean);
    free(rm);
}

static void test_bn_rows_big(void **state) {
    (void)state;
    uint64_t salt = 9500;
    for (int isa = NK_ISA_AVX2; isa <= (int)nk_isa_supported(); isa++)
        for (int d = 0; d < 2; d++)
            for (int64_t C = 64; C <= 67; C += 3)
                rows_big_case((nk_isa)isa, d ? NK_F64 : NK_F32, C, salt++);
}

/* The rows element-wise kernels stream their outputs when the pass's tensors together reach
 * NK_STREAM_MIN_BYTES and the rows are aligned (64-byte aligned buffers here, C = 72: every
 * row aligned for both instruction sets): the bits of the per-channel kernels (which do not
 * stream these strided runs), the mask and ReLU included. */
static void test_bn_rows_streaming(void **state) {
    (void)state;
    const int64_t C = 72, HW = 61000, len = C * HW;
    const int64_t dims[4] = {1, C, 1, HW}, st[4] = {len, 1, len, C};
    assert_true(2 * len * (int64_t)sizeof(float) >= NK_STREAM_MIN_BYTES);
    nkt_rng r = nkt_rng_make(9500);
    float *buf[5];
    nk_tensor t[5];
    for (int i = 0; i < 5; i++) { /* x, dy, rows output, ym, per-channel output */
        buf[i] = aligned_alloc(64, (size_t)len * sizeof(float));
        assert_non_null(buf[i]);
        for (int64_t e = 0; e < len; e++) buf[i][e] = (float)nkt_normal(&r, 0.5, 1);
        t[i].data = buf[i];
        t[i].dtype = NK_F32;
        t[i].ndim = 4;
        memcpy(t[i].dims, dims, sizeof dims);
        memcpy(t[i].strides, st, sizeof st);
    }
    double co[4][72];
    for (int q = 0; q < 4; q++)
        for (int64_t c = 0; c < C; c++) co[q][c] = nkt_uniform(&r, -1, 1);
    const nk_tensor *tb[4] = {&t[0], &t[1], &t[2], &t[3]}, *tf[4] = {&t[0], &t[1], &t[4], &t[3]};
    nk_cview vb, vf;
    nk_cview_init(&vb, 4, tb);
    nk_cview_init(&vf, 4, tf);
    for (int isa = NK_ISA_AVX2; isa <= (int)nk_isa_supported(); isa++) {
        const nk_bn_kernels *k = nk_bn_kernels_isa((nk_isa)isa, NK_F32);
        for (int masked = 0; masked <= 1; masked++) {
            const void *ym = masked ? buf[3] : NULL;
            nkt_case("%s rows streaming stores, C %lld, %lld rows%s", nk_isa_name((nk_isa)isa),
                     (long long)C, (long long)HW, masked ? ", mask / relu" : "");
            k->rows_bwd_apply(&vb, buf[0], buf[1], ym, buf[2], 0, C, 0, HW, co[0], co[1], co[2],
                              co[3]);
            for (int64_t c = 0; c < C; c++)
                k->bwd_apply(&vf, buf[0], buf[1], ym, buf[4], c, 0, HW, co[0][c], co[1][c],
                             co[2][c], co[3][c]);
            NKT_CHECK(!memcmp(buf[2], buf[4], (size_t)len * sizeof(float)), "bwd_apply");
            k->rows_normalize(&vb, buf[0], buf[2], 0, C, 0, HW, co[0], co[1], co[2], masked);
            for (int64_t c = 0; c < C; c++) /* every slot has the same strides: y in buf[4] */
                k->normalize(&vf, buf[0], buf[4], c, 0, HW, co[0][c], co[1][c], co[2][c], masked);
            NKT_CHECK(!memcmp(buf[2], buf[4], (size_t)len * sizeof(float)), "normalize");
        }
    }
    for (int i = 0; i < 5; i++) free(buf[i]);
}

/* ---- layer norm and RMS norm rows ---------------------------------------------------------- */

/* x (R, A, B) normalized over (A, B): rows of K = 1 .. 2 blocks + 6 values; strided, a row is
 * A runs of B values, whose block positions do not start on a multiple of 16. */
static void test_rows_sweep(void **state) {
    (void)state;
    static const int64_t AB[][2] = {{1, 1}, {1, 3}, {1, 23}, {1, 64}, {4, 25}, {7, 9},
                                    {3, 5465}};
    static const int64_t Rs[] = {1, 5, 17};
    assert_true(AB[6][0] * AB[6][1] > 2 * NK_BLOCK_ELEMS);
    const char *isas[MAX_ISAS];
    const int nisa = sweep_isas(isas, MAX_ISAS);
    nk_ctx *rctx = ref_ctx(1), *octx = nkt_ctx(2);
    uint64_t salt = 6000;
    for (int op = SWEEP_LN; op <= SWEEP_RMS; op++)
        for (int dt = NK_F32; dt <= NK_F64; dt++)
            for (size_t ki = 0; ki < sizeof AB / sizeof AB[0]; ki++)
                for (size_t ri = 0; ri < sizeof Rs / sizeof Rs[0]; ri++, salt++) {
                    if (AB[ki][0] * AB[ki][1] > NK_BLOCK_ELEMS && Rs[ri] > 5) continue; /* time */
                    sweep_row_out ref0, opt0;
                    for (int v = 0; v < 4; v++) { /* contiguous, strided, unaligned, in place */
                        const sweep_row_case c = {(sweep_row_op)op, (nk_dtype)dt, Rs[ri],
                                                  AB[ki][0], AB[ki][1],
                                                  v == 1 ? NKT_STRIDED : NKT_CONTIG, v >= 2,
                                                  v == 3, salt};
                        const char *what = op == SWEEP_LN ? "layernorm" : "rmsnorm";
                        const char *var[4] = {"contiguous", "strided", "unaligned", "in place"};
                        sweep_row_out ref, opt;
                        nkt_case("%s ref x [%lld, %lld, %lld] %s %s", what, (long long)c.R,
                                 (long long)c.A, (long long)c.B, nkt_dtype_name(c.dt), var[v]);
                        sweep_row_run(rctx, &c, &ref);
                        if (v) sweep_row_same(&ref, &ref0);
                        for (int i = 0; i < nisa; i++) {
                            sweep_use_isa(isas[i]);
                            nkt_case("%s %s vs ref x [%lld, %lld, %lld] %s %s", what, isas[i],
                                     (long long)c.R, (long long)c.A, (long long)c.B,
                                     nkt_dtype_name(c.dt), var[v]);
                            sweep_row_run(octx, &c, &opt);
                            sweep_row_close(&opt, &ref, c.dt);
                            if (v || i) {
                                sweep_row_same(&opt, &opt0);
                                sweep_row_free(&opt);
                            } else {
                                opt0 = opt;
                            }
                        }
                        sweep_use_isa(NULL);
                        if (v)
                            sweep_row_free(&ref);
                        else
                            ref0 = ref;
                    }
                    sweep_row_free(&ref0);
                    if (nisa) sweep_row_free(&opt0);
                }
    nk_ctx_destroy(rctx);
    nk_ctx_destroy(octx);
}

/* ---- kernel selection -------------------------------------------------------------------- */

static void test_selection(void **state) {
    (void)state;
    nkt_case("kernel selection");
    nk_ctx *ctx = nkt_ctx(1);
    const char *best = nk_isa_name(nk_isa_supported());
    sweep_use_isa(NULL);
    NKT_CHECK(!strcmp(nk_ctx_kernels(ctx), best), "default %s, best %s", nk_ctx_kernels(ctx), best);
    assert_int_equal(nk_ctx_set_force_ref(ctx, 1), NK_OK);
    NKT_CHECK(!strcmp(nk_ctx_kernels(ctx), "ref"), "forced: %s", nk_ctx_kernels(ctx));
    assert_int_equal(nk_ctx_set_force_ref(ctx, 0), NK_OK);
    sweep_use_isa("ref");
    NKT_CHECK(!strcmp(nk_ctx_kernels(ctx), "ref"), "NK_ISA=ref: %s", nk_ctx_kernels(ctx));
    sweep_use_isa("no-such-isa"); /* ignored */
    NKT_CHECK(!strcmp(nk_ctx_kernels(ctx), best), "NK_ISA=no-such-isa: %s", nk_ctx_kernels(ctx));
    sweep_use_isa("avx512"); /* a cap, never more than the CPU has */
    NKT_CHECK(!strcmp(nk_ctx_kernels(ctx), best), "NK_ISA=avx512: %s", nk_ctx_kernels(ctx));
    if (nk_isa_supported() >= NK_ISA_AVX2) {
        sweep_use_isa("avx2");
        NKT_CHECK(!strcmp(nk_ctx_kernels(ctx), "avx2"), "NK_ISA=avx2: %s", nk_ctx_kernels(ctx));
    }
    for (int i = 0; i < NK_ISA_COUNT; i++) { /* every table exists up to the supported ISA */
        const int have = i <= (int)nk_isa_supported();
        NKT_CHECK(!nk_bn_kernels_isa((nk_isa)i, NK_F32) == !have, "bn table %d", i);
        NKT_CHECK(!nk_bn_kernels_isa((nk_isa)i, NK_F64) == !have, "bn table %d", i);
    }
    sweep_use_isa(NULL);
    nk_ctx_destroy(ctx);
}

int main(void) {
    unsetenv(NK_ENV_ISA); /* every case chooses its instruction set itself */
    const char *isas[MAX_ISAS];
    const int nisa = sweep_isas(isas, MAX_ISAS);
    printf("[ INFO     ] optimized kernels on this CPU:");
    for (int i = 0; i < nisa; i++) printf(" %s", isas[i]);
    printf("%s\n", nisa ? "" : " none (the reference alone is checked)");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_bn_sweep_f32),
        cmocka_unit_test(test_bn_sweep_f64),
        cmocka_unit_test(test_bn_blocks),
        cmocka_unit_test(test_bn_streaming),
        cmocka_unit_test(test_bn_illconditioned),
        cmocka_unit_test(test_bn_elementwise_bound),
        cmocka_unit_test(test_bn_runs_kernels),
        cmocka_unit_test(test_bn_chan_moments),
        cmocka_unit_test(test_bn_threads_bitwise),
        cmocka_unit_test(test_bn_rows_kernels),
        cmocka_unit_test(test_bn_rows_big),
        cmocka_unit_test(test_bn_rows_streaming),
        cmocka_unit_test(test_rows_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
