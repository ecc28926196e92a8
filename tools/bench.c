/*
 * normkit bench - time one normalization op against the memory-bandwidth limit.
 *
 * Each repetition times the op, then a plain memory pass of the same size: a copy y = x for a
 * forward, an add dx = x + dy for a backward (the op's unavoidable traffic: read x, write y;
 * read x and dy, write dx), on the same number of threads. Alternating the two in one run
 * makes their ratio meaningful on a machine shared with other jobs, where absolute times
 * drift. Every buffer, the workspace included, is supplied by the caller and touched before
 * the first timing, so no page fault or allocation is timed.
 *
 * GB/s counts the bytes the op must move (forward: x + y, backward: x + dy + dx; the fused
 * bn-add-relu: forward x + z + y, backward x + y + dy + dx + dz, its baselines y = x + z and
 * dx = x + dy, dz = y + dy), from the median time; the ratio is median(op) / median(baseline). Times print in microseconds so
 * that a per-call overhead (shape 8x64x1x1) is as readable as a 50 MB pass.
 *
 * `--serve` turns the same setup into a worker for bench/compare.py (bench_serve.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "commands.h"

#define BENCH_REPS 20
#define BENCH_WARMUP 2
#define BENCH_ALIGN 64
/* Work per thread of the baseline's chunks (bytes of x). */
#define BENCH_CHUNK (1 << 20)

const char *const BENCH_OP_NAMES[BENCH_NUM_OPS] = {"bn", "ln", "gn", "in", "rms", "bn-add-relu"};
const char *const BENCH_PASS_NAMES[BENCH_NUM_PASSES] = {"fwd-train", "fwd-infer", "bwd"};

static void usage(FILE *f) {
    fprintf(f,
            "usage: normkit bench [options]\n"
            "       normkit bench --serve [--threads T] [--ref]\n\n"
            "Times a normalization op and a plain copy (forward) or add (backward) of the same\n"
            "size, alternately, and prints median and min times in microseconds, GB/s and the\n"
            "ratio op / copy.\n\n"
            "  --op OP           bn, ln, gn, in, rms or bn-add-relu [bn]; bn-add-relu is\n"
            "                    y = max(0, bn(x) + z) (nk_batchnorm_add_relu_*): its GB/s\n"
            "                    count x, z and y (forward) or x, y, dy, dx and dz\n"
            "                    (backward), against y = x + z, resp. dx = x + dy and\n"
            "                    dz = y + dy in one pass\n"
            "  --pass P          fwd-train, fwd-infer or bwd [fwd-train]; for ln, rms and gn\n"
            "                    fwd-infer is the forward without saved statistics\n"
            "  --shape S         NxCxHxW (bn, bn-add-relu, gn, in: N, C, then any spatial\n"
            "                    axes) or RxK (ln, rms: normalized over the last axis)\n"
            "                    [16x256x56x56 or 4096x4096]\n"
            "  --layout L        nchw or nhwc (channels last; bn, bn-add-relu, gn, in) [nchw]\n"
            "  --threads T       threads of the op and of the baseline [1]\n"
            "  --reps R          timed repetitions of each [%d]\n"
            "  --dtype D         f32 or f64 [f32]\n"
            "  --groups G        gn groups [32, or C if C < 32]\n"
            "  --ref             force the scalar reference kernels (as NK_FORCE_REF=1)\n"
            "  --serve           read commands on stdin, answer on stdout (the worker that\n"
            "                    bench/compare.py and `make bench-compare` drive; protocol in\n"
            "                    tools/bench_serve.c); only --threads and --ref apply\n"
            "  --help            this text\n\n"
            "NK_ISA=avx2 (or ref) in the environment caps the instruction set.\n",
            BENCH_REPS);
}

int bench_parse_shape(const char *s, bench_opts *o) {
    o->ndim = 0;
    const char *p = s;
    while (*p) {
        if (o->ndim == NK_MAX_DIMS) return 0;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 1) return 0;
        o->dims[o->ndim++] = v;
        if (*end == 'x' || *end == 'X')
            p = end + 1;
        else if (*end == '\0')
            p = end;
        else
            return 0;
    }
    return o->ndim >= 1;
}

int bench_pick(const char *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

int bench_check(bench_opts *o, char *err, size_t errlen) {
    const int rowwise = o->op == OP_LN || o->op == OP_RMS;
    if (rowwise && o->nhwc) {
        snprintf(err, errlen, "--layout nhwc applies to bn, bn-add-relu, gn and in only");
        return 1;
    }
    if (!rowwise && o->ndim < 2) {
        snprintf(err, errlen, "%s needs a shape NxC[xHxW...]", BENCH_OP_NAMES[o->op]);
        return 1;
    }
    if (o->op == OP_GN) {
        const int64_t C = o->dims[1];
        if (!o->groups) o->groups = C < 32 ? C : 32;
        if (C % o->groups) {
            snprintf(err, errlen, "--groups %" PRId64 " does not divide C = %" PRId64, o->groups, C);
            return 1;
        }
    }
    return 0;
}

/* ---- buffers ---------------------------------------------------------------------------- */

static void *alloc_touched(size_t bytes) {
    const size_t sz = (bytes + BENCH_ALIGN - 1) / BENCH_ALIGN * BENCH_ALIGN;
    void *p = aligned_alloc(BENCH_ALIGN, sz ? sz : BENCH_ALIGN);
    if (p) memset(p, 0, sz ? sz : BENCH_ALIGN); /* faults every page in */
    return p;
}

/* Reproducible values with per-channel offsets (LCG; the values only need to be ordinary). */
static void fill(void *p, nk_dtype dt, int64_t n, uint64_t seed, double scale, double shift) {
    uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        const double u = (double)(s >> 11) * 0x1.0p-53 - 0.5;
        const double v = shift + scale * u;
        if (dt == NK_F32)
            ((float *)p)[i] = (float)v;
        else
            ((double *)p)[i] = v;
    }
}

double bench_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- the baselines ---------------------------------------------------------------------- */

/* Threads for a pass of `chunks` chunks: a tiny tensor is one chunk, and waking a second
 * thread for it would time the wake-up, not the memory. */
static int pass_threads(int64_t chunks, int threads) {
    return chunks < threads ? (int)chunks : threads;
}

static void copy_pass(void *dst, const void *src, size_t bytes, int threads) {
    const int64_t chunks = (int64_t)((bytes + BENCH_CHUNK - 1) / BENCH_CHUNK);
    const int nt = pass_threads(chunks, threads);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < chunks; i++) {
        const size_t o = (size_t)i * BENCH_CHUNK;
        memcpy((char *)dst + o, (const char *)src + o, bytes - o < BENCH_CHUNK ? bytes - o : BENCH_CHUNK);
    }
}

/* The add loops, vectorized (omp simd; at -O2 GCC leaves a plain loop scalar) and cloned for
 * AVX-512 / AVX2 / baseline x86-64 like glibc's memcpy, so that the add the backward is
 * compared with runs at the speed the memory allows, not at one scalar add per cycle. */
#define BENCH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
BENCH_CLONES static void add_f32(float *restrict o, const float *restrict x,
                                 const float *restrict y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) o[i] = x[i] + y[i];
}
BENCH_CLONES static void add_f64(double *restrict o, const double *restrict x,
                                 const double *restrict y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) o[i] = x[i] + y[i];
}
BENCH_CLONES static void add2_f32(float *restrict o, float *restrict q, const float *restrict a,
                                  const float *restrict b, const float *restrict g, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        o[i] = a[i] + g[i];
        q[i] = b[i] + g[i];
    }
}
BENCH_CLONES static void add2_f64(double *restrict o, double *restrict q, const double *restrict a,
                                  const double *restrict b, const double *restrict g, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        o[i] = a[i] + g[i];
        q[i] = b[i] + g[i];
    }
}

static void add_pass(void *dst, const void *a, const void *b, int64_t n, nk_dtype dt, int threads) {
    const int64_t per = BENCH_CHUNK / (int64_t)nk_dtype_size(dt);
    const int64_t chunks = (n + per - 1) / per;
    const int nt = pass_threads(chunks, threads);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t lo = k * per, hi = lo + per < n ? lo + per : n;
        if (dt == NK_F32)
            add_f32((float *)dst + lo, (const float *)a + lo, (const float *)b + lo, hi - lo);
        else
            add_f64((double *)dst + lo, (const double *)a + lo, (const double *)b + lo, hi - lo);
    }
}

/* dx = x + dy, dz = y + dy in one pass: bn-add-relu's backward traffic (read 3, write 2). */
static void add2_pass(void *dx, void *dz, const void *x, const void *y, const void *dy, int64_t n,
                      nk_dtype dt, int threads) {
    const int64_t per = BENCH_CHUNK / (int64_t)nk_dtype_size(dt);
    const int64_t chunks = (n + per - 1) / per;
    const int nt = pass_threads(chunks, threads);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t lo = k * per, hi = lo + per < n ? lo + per : n;
        if (dt == NK_F32)
            add2_f32((float *)dx + lo, (float *)dz + lo, (const float *)x + lo,
                     (const float *)y + lo, (const float *)dy + lo, hi - lo);
        else
            add2_f64((double *)dx + lo, (double *)dz + lo, (const double *)x + lo,
                     (const double *)y + lo, (const double *)dy + lo, hi - lo);
    }
}

void bench_baseline(bench_state *s) {
    const int bwd = s->o.pass == PASS_BWD;
    if (s->o.op == OP_BNAR && bwd)
        add2_pass(s->dxb, s->dzb, s->xb, s->yb, s->dyb, s->numel, s->o.dt, s->o.threads);
    else if (s->o.op == OP_BNAR)
        add_pass(s->yb, s->xb, s->zb, s->numel, s->o.dt, s->o.threads);
    else if (bwd)
        add_pass(s->yb, s->xb, s->dyb, s->numel, s->o.dt, s->o.threads);
    else
        copy_pass(s->yb, s->xb, s->bytes, s->o.threads);
}

const char *bench_baseline_name(const bench_state *s) {
    if (s->o.op == OP_BNAR) return s->o.pass == PASS_BWD ? "add2" : "add";
    return s->o.pass == PASS_BWD ? "add" : "copy";
}

double bench_bytes_moved(const bench_state *s) {
    const int bwd = s->o.pass == PASS_BWD;
    const double tensors = s->o.op == OP_BNAR ? (bwd ? 5.0 : 3.0) : (bwd ? 3.0 : 2.0);
    return (double)s->bytes * tensors;
}

const char *bench_traffic(const bench_state *s) {
    const int bwd = s->o.pass == PASS_BWD;
    if (s->o.op == OP_BNAR) return bwd ? "read x, y, dy, write dx, dz" : "read x, z, write y";
    return bwd ? "read x, dy, write dx" : "read x, write y";
}

/* ---- the op ------------------------------------------------------------------------------ */

nk_status bench_run_op(bench_state *s) {
    const bench_opts *o = &s->o;
    nk_ctx *c = s->ctx;
    switch (o->op) {
    case OP_BN: {
        nk_batchnorm_params p;
        nk_batchnorm_params_default(&p);
        if (o->pass == PASS_TRAIN)
            return nk_batchnorm_forward_train(c, &p, &s->x, &s->g, &s->b, &s->y, &s->sm, &s->si,
                                              &s->rm, &s->rv, &s->nbt, s->ws, s->ws_size);
        if (o->pass == PASS_INFER)
            return nk_batchnorm_forward_inference(c, &p, &s->x, &s->g, &s->b, &s->rm, &s->rv, &s->y);
        return nk_batchnorm_backward(c, &p, &s->x, &s->dy, &s->g, &s->sm, &s->si, NULL, &s->dx,
                                     &s->dg, &s->db, s->ws, s->ws_size);
    }
    case OP_BNAR: {
        nk_batchnorm_params p;
        nk_batchnorm_params_default(&p);
        if (o->pass == PASS_TRAIN)
            return nk_batchnorm_add_relu_forward_train(c, &p, &s->x, &s->z, &s->g, &s->b, &s->y,
                                                       &s->sm, &s->si, &s->rm, &s->rv, &s->nbt,
                                                       s->ws, s->ws_size);
        if (o->pass == PASS_INFER)
            return nk_batchnorm_add_relu_forward_inference(c, &p, &s->x, &s->z, &s->g, &s->b,
                                                           &s->rm, &s->rv, &s->y);
        return nk_batchnorm_add_relu_backward(c, &p, &s->x, &s->dy, &s->g, &s->sm, &s->si, &s->y,
                                              &s->dx, &s->dz, &s->dg, &s->db, s->ws, s->ws_size);
    }
    case OP_GN: {
        nk_groupnorm_params p;
        nk_groupnorm_params_default(&p, o->groups);
        if (o->pass == PASS_BWD)
            return nk_groupnorm_backward(c, &p, &s->x, &s->dy, &s->g, &s->sm, &s->si, &s->dx,
                                         &s->dg, &s->db, s->ws, s->ws_size);
        return nk_groupnorm_forward(c, &p, &s->x, &s->g, &s->b, &s->y,
                                    o->pass == PASS_TRAIN ? &s->sm : NULL,
                                    o->pass == PASS_TRAIN ? &s->si : NULL, s->ws, s->ws_size);
    }
    case OP_IN: {
        nk_instancenorm_params p;
        nk_instancenorm_params_default(&p);
        p.flags = NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT;
        if (o->pass == PASS_TRAIN)
            return nk_instancenorm_forward_train(c, &p, &s->x, &s->g, &s->b, &s->y, &s->sm,
                                                 &s->si, NULL, NULL, s->ws, s->ws_size);
        if (o->pass == PASS_INFER)
            return nk_instancenorm_forward_inference(c, &p, &s->x, &s->g, &s->b, &s->rm, &s->rv,
                                                     &s->y);
        return nk_instancenorm_backward(c, &p, &s->x, &s->dy, &s->g, &s->sm, &s->si, &s->dx,
                                        &s->dg, &s->db, s->ws, s->ws_size);
    }
    case OP_LN: {
        nk_layernorm_params p;
        nk_layernorm_params_default(&p);
        if (o->pass == PASS_BWD)
            return nk_layernorm_backward(c, &p, &s->x, &s->dy, &s->g, &s->sm, &s->si, &s->dx,
                                         &s->dg, &s->db, s->ws, s->ws_size);
        return nk_layernorm_forward(c, &p, &s->x, &s->g, &s->b, &s->y,
                                    o->pass == PASS_TRAIN ? &s->sm : NULL,
                                    o->pass == PASS_TRAIN ? &s->si : NULL, s->ws, s->ws_size);
    }
    case OP_RMS: {
        nk_rmsnorm_params p;
        nk_rmsnorm_params_default(&p);
        if (o->pass == PASS_BWD)
            return nk_rmsnorm_backward(c, &p, &s->x, &s->dy, &s->g, &s->si, &s->dx, &s->dg,
                                       s->ws, s->ws_size);
        return nk_rmsnorm_forward(c, &p, &s->x, &s->g, &s->y,
                                  o->pass == PASS_TRAIN ? &s->si : NULL, s->ws, s->ws_size);
    }
    }
    return NK_ERR_VALUE;
}

static nk_status workspace_size(const bench_state *s, size_t *bytes) {
    const bench_opts *o = &s->o;
    switch (o->op) {
    case OP_BN:
    case OP_BNAR: return nk_batchnorm_workspace_size(&s->x, bytes);
    case OP_GN: {
        nk_groupnorm_params p;
        nk_groupnorm_params_default(&p, o->groups);
        return nk_groupnorm_workspace_size(&p, &s->x, bytes);
    }
    case OP_IN: return nk_instancenorm_workspace_size(&s->x, bytes);
    case OP_LN: {
        nk_layernorm_params p;
        nk_layernorm_params_default(&p);
        return nk_layernorm_workspace_size(&p, &s->x, bytes);
    }
    case OP_RMS: {
        nk_rmsnorm_params p;
        nk_rmsnorm_params_default(&p);
        return nk_rmsnorm_workspace_size(&p, &s->x, bytes);
    }
    }
    return NK_ERR_VALUE;
}

static nk_status make_tensor(const bench_opts *o, void *data, nk_tensor *t) {
    if (o->nhwc) return nk_tensor_channels_last(t, data, o->dt, o->ndim, o->dims);
    return nk_tensor_contiguous(t, data, o->dt, o->ndim, o->dims);
}

int bench_setup(bench_state *s, const bench_opts *o, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    s->o = *o;
    const int rowwise = o->op == OP_LN || o->op == OP_RMS;
    int64_t numel = 1;
    for (int i = 0; i < o->ndim; i++) {
        if (o->dims[i] > INT64_MAX / 16 / numel) {
            snprintf(err, errlen, "shape too large");
            return 1;
        }
        numel *= o->dims[i];
    }
    s->numel = numel;
    s->C = rowwise ? o->dims[o->ndim - 1] : o->dims[1];
    s->rows = rowwise ? numel / s->C
              : o->op == OP_BN || o->op == OP_BNAR ? s->C
                               : o->dims[0] * (o->op == OP_GN ? o->groups : s->C);
    const size_t es = nk_dtype_size(o->dt);
    s->bytes = (size_t)numel * es;
    const int bwd = o->pass == PASS_BWD;

    s->xb = alloc_touched(s->bytes);
    s->yb = alloc_touched(s->bytes);
    s->dyb = bwd ? alloc_touched(s->bytes) : NULL;
    /* bn-add-relu: the shortcut z; its backward reads y (the ReLU mask), so dx and dz get
     * buffers of their own */
    const int bnar = o->op == OP_BNAR;
    s->zb = bnar ? alloc_touched(s->bytes) : NULL;
    s->dxb = bnar && bwd ? alloc_touched(s->bytes) : NULL;
    s->dzb = bnar && bwd ? alloc_touched(s->bytes) : NULL;
    if (!s->xb || !s->yb || (bwd && !s->dyb) || (bnar && !s->zb) ||
        (bnar && bwd && (!s->dxb || !s->dzb))) {
        snprintf(err, errlen, "cannot allocate %zu bytes per tensor", s->bytes);
        return 1;
    }
    fill(s->xb, o->dt, numel, 1, 4.0, 1.0);
    if (bwd) fill(s->dyb, o->dt, numel, 2, 2.0, 0.0);
    if (bnar) fill(s->zb, o->dt, numel, 7, 2.0, 0.0); /* y > 0 for about half the values */
    nk_status st;
    if ((st = make_tensor(o, s->xb, &s->x)) || (st = make_tensor(o, s->yb, &s->y)) ||
        (bwd && ((st = make_tensor(o, s->dyb, &s->dy)) ||
                 (st = make_tensor(o, bnar ? s->dxb : s->yb, &s->dx)))) ||
        (bnar && (st = make_tensor(o, s->zb, &s->z))) ||
        (bnar && bwd && (st = make_tensor(o, s->dzb, &s->dz)))) {
        snprintf(err, errlen, "bad shape (%s)", nk_status_str(st));
        return 1;
    }
    /* per-channel (or per-position) parameters and statistics, same dtype as the data */
    nk_tensor *vt[8] = {&s->g, &s->b, &s->rm, &s->rv, &s->sm, &s->si, &s->dg, &s->db};
    for (int i = 0; i < 8; i++) {
        const int64_t n = i == 4 || i == 5 ? s->rows : s->C;
        s->vecs[i] = alloc_touched((size_t)n * es);
        if (!s->vecs[i]) {
            snprintf(err, errlen, "out of memory");
            return 1;
        }
        *vt[i] = nk_vec(s->vecs[i], o->dt, n);
    }
    fill(s->vecs[0], o->dt, s->C, 3, 0.5, 1.0);
    fill(s->vecs[1], o->dt, s->C, 4, 0.5, 0.0);
    fill(s->vecs[2], o->dt, s->C, 5, 0.2, 1.0);
    fill(s->vecs[3], o->dt, s->C, 6, 0.5, 1.5);

    if (nk_ctx_create(&s->ctx) || nk_ctx_set_num_threads(s->ctx, o->threads) ||
        nk_ctx_set_force_ref(s->ctx, o->ref)) {
        snprintf(err, errlen, "cannot create a context with %d threads", o->threads);
        return 1;
    }
    if (workspace_size(s, &s->ws_size)) {
        snprintf(err, errlen, "%s", nk_ctx_last_error(s->ctx));
        return 1;
    }
    s->ws = alloc_touched(s->ws_size);
    if (!s->ws) {
        snprintf(err, errlen, "cannot allocate a %zu-byte workspace", s->ws_size);
        return 1;
    }
    if (bwd) { /* saved statistics from a training forward (written into y, later dx) */
        s->o.pass = PASS_TRAIN;
        st = bench_run_op(s);
        s->o.pass = o->pass;
        if (st < 0) {
            snprintf(err, errlen, "%s", nk_ctx_last_error(s->ctx));
            return 1;
        }
    }
    return 0;
}

void bench_teardown(bench_state *s) {
    if (s->ctx) nk_ctx_destroy(s->ctx);
    for (int i = 0; i < 8; i++) free(s->vecs[i]);
    free(s->ws);
    free(s->xb);
    free(s->yb);
    free(s->dyb);
    free(s->zb);
    free(s->dxb);
    free(s->dzb);
    memset(s, 0, sizeof *s);
}

/* ---- the one-shot CLI ------------------------------------------------------------------- */

static int bench_run(const bench_opts *o, int reps) {
    bench_state s;
    char err[256];
    if (bench_setup(&s, o, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        bench_teardown(&s);
        return 1;
    }
    double *top = malloc(sizeof(double) * (size_t)reps);
    double *tbase = malloc(sizeof(double) * (size_t)reps);
    if (!top || !tbase) {
        fprintf(stderr, "bench: out of memory\n");
        free(top);
        free(tbase);
        bench_teardown(&s);
        return 1;
    }
    int rc = 0;
    for (int r = -BENCH_WARMUP; r < reps; r++) {
        const double t0 = bench_now();
        const nk_status st = bench_run_op(&s);
        const double t1 = bench_now();
        if (st < 0) {
            fprintf(stderr, "bench: %s\n", nk_ctx_last_error(s.ctx));
            rc = 1;
            break;
        }
        bench_baseline(&s);
        const double t2 = bench_now();
        if (r >= 0) {
            top[r] = t1 - t0;
            tbase[r] = t2 - t1;
        }
    }
    if (!rc) {
        const double moved = bench_bytes_moved(&s);
        qsort(top, (size_t)reps, sizeof *top, cmp_double);
        qsort(tbase, (size_t)reps, sizeof *tbase, cmp_double);
        const double mop = top[reps / 2], mbase = tbase[reps / 2];
        const int rowwise = o->op == OP_LN || o->op == OP_RMS;
        const char *base = bench_baseline_name(&s);
        char shape[128];
        size_t k = 0;
        for (int i = 0; i < o->ndim && k < sizeof shape; i++)
            k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%" PRId64, i ? "x" : "", o->dims[i]);
        printf("%s %s %s %s %s threads %d kernels %s reps %d\n", BENCH_OP_NAMES[o->op],
               BENCH_PASS_NAMES[o->pass], shape, rowwise ? "rows" : o->nhwc ? "nhwc" : "nchw",
               o->dt == NK_F32 ? "float32" : "float64", o->threads, nk_ctx_kernels(s.ctx), reps);
        printf("  op      median %10.1f us  min %10.1f us  %7.2f GB/s  (%s, %.3f MB)\n", 1e6 * mop,
               1e6 * top[0], moved / mop * 1e-9, bench_traffic(&s), moved * 1e-6);
        printf("  %-6s  median %10.1f us  min %10.1f us  %7.2f GB/s\n", base, 1e6 * mbase,
               1e6 * tbase[0], moved / mbase * 1e-9);
        printf("  ratio op / %s (medians) %.2f\n", base, mop / mbase);
    }
    free(top);
    free(tbase);
    bench_teardown(&s);
    return rc;
}

int nk_cmd_bench(int argc, char **argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.op = OP_BN;
    o.pass = PASS_TRAIN;
    o.threads = 1;
    o.dt = NK_F32;
    int reps = BENCH_REPS, serve = 0;
    const char *shape = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--ref")) {
            o.ref = 1;
            continue;
        }
        if (!strcmp(a, "--serve")) {
            serve = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench: %s needs a value (see 'normkit bench --help')\n", a);
            return 2;
        }
        i++;
        int bad = 0;
        if (!strcmp(a, "--op")) {
            const int k = bench_pick(v, BENCH_OP_NAMES, BENCH_NUM_OPS);
            bad = k < 0;
            o.op = (bench_op)(bad ? 0 : k);
        } else if (!strcmp(a, "--pass")) {
            const int k = bench_pick(v, BENCH_PASS_NAMES, BENCH_NUM_PASSES);
            bad = k < 0;
            o.pass = (bench_pass)(bad ? 0 : k);
        } else if (!strcmp(a, "--shape")) {
            shape = v;
        } else if (!strcmp(a, "--layout")) {
            bad = strcmp(v, "nchw") && strcmp(v, "nhwc");
            o.nhwc = !strcmp(v, "nhwc");
        } else if (!strcmp(a, "--threads")) {
            o.threads = atoi(v);
            bad = o.threads < 1 || o.threads > 1024;
        } else if (!strcmp(a, "--reps")) {
            reps = atoi(v);
            bad = reps < 1;
        } else if (!strcmp(a, "--dtype")) {
            bad = strcmp(v, "f32") && strcmp(v, "f64");
            o.dt = !strcmp(v, "f64") ? NK_F64 : NK_F32;
        } else if (!strcmp(a, "--groups")) {
            o.groups = atoll(v);
            bad = o.groups < 1;
        } else {
            fprintf(stderr, "bench: unknown option '%s' (see 'normkit bench --help')\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "bench: bad value '%s' for %s (see 'normkit bench --help')\n", v, a);
            return 2;
        }
    }
    if (serve) return bench_serve(o.threads, o.ref);
    const int rowwise = o.op == OP_LN || o.op == OP_RMS;
    if (!shape) shape = rowwise ? "4096x4096" : "16x256x56x56";
    if (!bench_parse_shape(shape, &o)) {
        fprintf(stderr, "bench: bad --shape '%s' (e.g. 16x256x56x56)\n", shape);
        return 2;
    }
    char err[256];
    if (bench_check(&o, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        return 2;
    }
    return bench_run(&o, reps);
}
