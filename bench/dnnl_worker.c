/*
 * oneDNN (Debian's libdnnl-dev, 2.6) benchmark worker for bench/compare.py: the same line
 * protocol as `normkit bench --serve` (tools/bench_serve.c), so both are timed the same way.
 *
 *   setup ID OP PASS SHAPE LAYOUT  -> "ok ID <us of one warm call> <impl name>" | "na <why>" | "err <why>"
 *   time ID REPS                   -> "t <us> <us> ..."
 *   free ID                        -> "ok"
 *   quit
 *
 * What is timed, per op:
 *   bn   batch_normalization with use_scale | use_shift: forward_training (writes y, mean,
 *        variance), forward_inference with use_global_stats, backward (dx, dscale, dshift)
 *        from the statistics of one training forward. LAYOUT nchw, nhwc or blocked
 *        (nChw16c, oneDNN's own layout, the reference point).
 *   in   batch_normalization on the (1, N*C, H, W) view of the NCHW tensor, which is exactly
 *        instance norm (one channel per (n, c) plane) with gamma and beta tiled N times; the
 *        per-(n, c) dgamma would still need a sum over N afterwards (C*N adds, not timed).
 *        The view does not exist for NHWC (n and c are not one stride apart): "na".
 *        "blocked" is the view in nChw16c.
 *   ln   layer_normalization over the last axis of (R, K), use_scale | use_shift.
 *   gn, rms: no such primitive in oneDNN 2.6 -> "na".
 * Threads: OpenMP, set once from the command line (oneDNN's Debian build uses the OpenMP
 * runtime and reads omp_get_max_threads at execution).
 *
 * Build: cc -O2 -std=c11 -fopenmp bench/dnnl_worker.c -o build/dnnl_worker -ldnnl
 */
#define _POSIX_C_SOURCE 200809L
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 8
#define MAX_ARGS 12
#define WARMUP 3
#define EPS 1e-5f /* PyTorch's default, the same as the other workers */
#define ALIGN 64

typedef struct {
    int used;
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[MAX_ARGS];
    dnnl_memory_t mems[MAX_ARGS];
    void *bufs[MAX_ARGS];
    int nmems;
} slot;

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void fill(float *p, size_t n, uint64_t seed, double scale, double shift) {
    uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (float)(shift + scale * ((double)(s >> 11) * 0x1.0p-53 - 0.5));
    }
}

static void slot_free(slot *s) {
    if (s->prim) dnnl_primitive_destroy(s->prim);
    for (int i = 0; i < s->nmems; i++) {
        dnnl_memory_destroy(s->mems[i]);
        free(s->bufs[i]);
    }
    memset(s, 0, sizeof *s);
}

/* A caller-owned, page-touched buffer for md, filled with seeded values (seed 0: zeros). */
static dnnl_memory_t add_mem(slot *s, const dnnl_memory_desc_t *md, uint64_t seed, double scale,
                             double shift) {
    const size_t bytes = dnnl_memory_desc_get_size(md);
    const size_t sz = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    void *p = aligned_alloc(ALIGN, sz ? sz : ALIGN);
    if (!p) return NULL;
    memset(p, 0, sz ? sz : ALIGN);
    if (seed) fill(p, bytes / sizeof(float), seed, scale, shift);
    dnnl_memory_t m;
    if (dnnl_memory_create(&m, md, engine, p) != dnnl_success) {
        free(p);
        return NULL;
    }
    s->mems[s->nmems] = m;
    s->bufs[s->nmems++] = p;
    return m;
}

static void arg(slot *s, int kind, dnnl_memory_t m) {
    s->args[s->nargs].arg = kind;
    s->args[s->nargs++].memory = m;
}

/* The arguments of a batch or layer normalization forward (they take the same kinds). */
static void bind_fwd(slot *s, dnnl_memory_t x, dnnl_memory_t y, dnnl_memory_t g, dnnl_memory_t b,
                     dnnl_memory_t mean, dnnl_memory_t var) {
    arg(s, DNNL_ARG_SRC, x);
    arg(s, DNNL_ARG_DST, y);
    arg(s, DNNL_ARG_SCALE, g);
    arg(s, DNNL_ARG_SHIFT, b);
    arg(s, DNNL_ARG_MEAN, mean);
    arg(s, DNNL_ARG_VARIANCE, var);
}

/* ... and of its backward, replacing the forward's */
static void bind_bwd(slot *s, dnnl_memory_t x, dnnl_memory_t mean, dnnl_memory_t var,
                     dnnl_memory_t g, dnnl_memory_t b, dnnl_memory_t dy, dnnl_memory_t dx,
                     dnnl_memory_t dg, dnnl_memory_t db) {
    s->nargs = 0;
    arg(s, DNNL_ARG_SRC, x);
    arg(s, DNNL_ARG_MEAN, mean);
    arg(s, DNNL_ARG_VARIANCE, var);
    arg(s, DNNL_ARG_SCALE, g);
    arg(s, DNNL_ARG_SHIFT, b); /* the backward pd asks for it too (2.6) */
    arg(s, DNNL_ARG_DIFF_DST, dy);
    arg(s, DNNL_ARG_DIFF_SRC, dx);
    arg(s, DNNL_ARG_DIFF_SCALE, dg);
    arg(s, DNNL_ARG_DIFF_SHIFT, db);
}

static int parse_shape(const char *str, dnnl_dims_t d, int *nd) {
    *nd = 0;
    const char *p = str;
    while (*p && *nd < DNNL_MAX_NDIMS) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 1) return 0;
        d[(*nd)++] = v;
        p = *end == 'x' ? end + 1 : end;
        if (*end && *end != 'x') return 0;
    }
    return *nd >= 1 && !*p;
}

#define CHK(call, what)                                                                          \
    do {                                                                                         \
        if ((call) != dnnl_success) {                                                            \
            snprintf(err, errlen, "%s failed", what);                                            \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* Sets up s; returns 0 (ok), 1 (na: err holds why), 2 (error: err holds why). */
static int setup(slot *s, const char *op, const char *pass, const char *shape, const char *layout,
                 char *err, size_t errlen, char *name, size_t namelen) {
    dnnl_dims_t d;
    int nd;
    if (!parse_shape(shape, d, &nd)) {
        snprintf(err, errlen, "bad shape %s", shape);
        return 2;
    }
    const int train = !strcmp(pass, "fwd-train"), infer = !strcmp(pass, "fwd-infer"),
              bwd = !strcmp(pass, "bwd");
    if (!train && !infer && !bwd) {
        snprintf(err, errlen, "bad pass %s", pass);
        return 2;
    }
    if (!strcmp(op, "gn") || !strcmp(op, "rms")) {
        snprintf(err, errlen, "oneDNN 2.6 has no %s primitive",
                 op[0] == 'g' ? "group normalization" : "RMS normalization");
        return 1;
    }
    dnnl_primitive_desc_t fpd = NULL, bpd = NULL;
    dnnl_primitive_t fprim = NULL;
    if (!strcmp(op, "bn") || !strcmp(op, "in")) {
        if (nd != 4) {
            snprintf(err, errlen, "this worker times 4-D NxCxHxW shapes only");
            return 2;
        }
        const int inorm = op[0] == 'i';
        if (inorm && infer) {
            snprintf(err, errlen, "instance norm with running statistics is not timed here");
            return 1;
        }
        dnnl_format_tag_t tag;
        if (!strcmp(layout, "nchw"))
            tag = dnnl_nchw;
        else if (!strcmp(layout, "blocked"))
            tag = dnnl_nChw16c;
        else if (!strcmp(layout, "nhwc") && !inorm)
            tag = dnnl_nhwc;
        else {
            snprintf(err, errlen, inorm && !strcmp(layout, "nhwc")
                                      ? "instance norm as batch norm on the (1, N*C, H, W) view "
                                        "needs NCHW (or blocked) data"
                                      : "no %s layout here", layout);
            return 1;
        }
        dnnl_dims_t v = {d[0], d[1], d[2], d[3]};
        if (inorm) {
            v[0] = 1;
            v[1] = d[0] * d[1];
        }
        dnnl_memory_desc_t data, vec;
        dnnl_dims_t cd = {v[1]};
        CHK(dnnl_memory_desc_init_by_tag(&data, 4, v, dnnl_f32, tag), "data desc");
        CHK(dnnl_memory_desc_init_by_tag(&vec, 1, cd, dnnl_f32, dnnl_a), "vector desc");
        const unsigned flags = dnnl_use_scale | dnnl_use_shift | (infer ? dnnl_use_global_stats : 0);
        dnnl_batch_normalization_desc_t fd;
        CHK(dnnl_batch_normalization_forward_desc_init(
                &fd, infer ? dnnl_forward_inference : dnnl_forward_training, &data, EPS, flags),
            "bn forward desc");
        CHK(dnnl_primitive_desc_create(&fpd, &fd, NULL, engine, NULL), "bn forward pd");
        dnnl_memory_t x = add_mem(s, &data, 1, 4.0, 1.0), y = add_mem(s, &data, 0, 0, 0);
        dnnl_memory_t g = add_mem(s, &vec, 3, 0.5, 1.0), b = add_mem(s, &vec, 4, 0.5, 0.0);
        dnnl_memory_t mean = add_mem(s, &vec, 5, 0.2, 1.0), var = add_mem(s, &vec, 6, 0.5, 1.5);
        if (!x || !y || !g || !b || !mean || !var) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        bind_fwd(s, x, y, g, b, mean, var);
        if (bwd) {
            /* statistics of one training forward, then the backward primitive alone */
            CHK(dnnl_primitive_create(&fprim, fpd), "bn forward primitive");
            CHK(dnnl_primitive_execute(fprim, stream, s->nargs, s->args), "bn forward");
            dnnl_stream_wait(stream);
            dnnl_batch_normalization_desc_t bd;
            CHK(dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &data, &data, EPS,
                                                            dnnl_use_scale | dnnl_use_shift),
                "bn backward desc");
            CHK(dnnl_primitive_desc_create(&bpd, &bd, NULL, engine, fpd), "bn backward pd");
            dnnl_memory_t dy = add_mem(s, &data, 2, 2.0, 0.0), dx = add_mem(s, &data, 0, 0, 0);
            dnnl_memory_t dg = add_mem(s, &vec, 0, 0, 0), db = add_mem(s, &vec, 0, 0, 0);
            if (!dy || !dx || !dg || !db) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            bind_bwd(s, x, mean, var, g, b, dy, dx, dg, db);
        }
    } else if (!strcmp(op, "ln")) {
        if (nd != 2 || strcmp(layout, "rows")) {
            snprintf(err, errlen, "ln: expected RxK with layout rows");
            return 2;
        }
        if (infer) {
            snprintf(err, errlen, "ln is timed as fwd-train and bwd");
            return 1;
        }
        dnnl_memory_desc_t data, vec, stat;
        dnnl_dims_t kd = {d[1]}, rd = {d[0]};
        CHK(dnnl_memory_desc_init_by_tag(&data, 2, d, dnnl_f32, dnnl_ab), "data desc");
        CHK(dnnl_memory_desc_init_by_tag(&vec, 1, kd, dnnl_f32, dnnl_a), "vector desc");
        CHK(dnnl_memory_desc_init_by_tag(&stat, 1, rd, dnnl_f32, dnnl_a), "stat desc");
        const unsigned flags = dnnl_use_scale | dnnl_use_shift;
        dnnl_layer_normalization_desc_t fd;
        CHK(dnnl_layer_normalization_forward_desc_init(&fd, dnnl_forward_training, &data, &stat,
                                                       EPS, flags),
            "ln forward desc");
        CHK(dnnl_primitive_desc_create(&fpd, &fd, NULL, engine, NULL), "ln forward pd");
        dnnl_memory_t x = add_mem(s, &data, 1, 4.0, 1.0), y = add_mem(s, &data, 0, 0, 0);
        dnnl_memory_t g = add_mem(s, &vec, 3, 0.5, 1.0), b = add_mem(s, &vec, 4, 0.5, 0.0);
        dnnl_memory_t mean = add_mem(s, &stat, 0, 0, 0), var = add_mem(s, &stat, 0, 0, 0);
        if (!x || !y || !g || !b || !mean || !var) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        bind_fwd(s, x, y, g, b, mean, var);
        if (bwd) {
            CHK(dnnl_primitive_create(&fprim, fpd), "ln forward primitive");
            CHK(dnnl_primitive_execute(fprim, stream, s->nargs, s->args), "ln forward");
            dnnl_stream_wait(stream);
            dnnl_layer_normalization_desc_t bd;
            CHK(dnnl_layer_normalization_backward_desc_init(&bd, dnnl_backward, &data, &data,
                                                            &stat, EPS, flags),
                "ln backward desc");
            CHK(dnnl_primitive_desc_create(&bpd, &bd, NULL, engine, fpd), "ln backward pd");
            dnnl_memory_t dy = add_mem(s, &data, 2, 2.0, 0.0), dx = add_mem(s, &data, 0, 0, 0);
            dnnl_memory_t dg = add_mem(s, &vec, 0, 0, 0), db = add_mem(s, &vec, 0, 0, 0);
            if (!dy || !dx || !dg || !db) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            bind_bwd(s, x, mean, var, g, b, dy, dx, dg, db);
        }
    } else {
        snprintf(err, errlen, "unknown op %s", op);
        return 2;
    }
    const dnnl_primitive_desc_t pd = bwd ? bpd : fpd;
    CHK(dnnl_primitive_create(&s->prim, pd), "primitive");
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(name, namelen, "%s%s", !strcmp(op, "in") ? "bn-on-1xNCxHxW-view:" : "",
             impl ? impl : "?");
    if (fprim) dnnl_primitive_destroy(fprim);
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    if (bpd) dnnl_primitive_desc_destroy(bpd);
    s->used = 1;
    return 0;
fail:
    if (fprim) dnnl_primitive_destroy(fprim);
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    if (bpd) dnnl_primitive_desc_destroy(bpd);
    slot_free(s);
    return 2;
}

static int run(slot *s) {
    const dnnl_status_t st = dnnl_primitive_execute(s->prim, stream, s->nargs, s->args);
    if (st != dnnl_success) {
        fprintf(stderr, "dnnl_worker: execute: status %d\n", (int)st);
        return 1;
    }
    return dnnl_stream_wait(stream) != dnnl_success;
}

int main(int argc, char **argv) {
    int threads = 1;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    if (threads < 1) {
        fprintf(stderr, "usage: dnnl_worker [--threads T]  (protocol on stdin: see the source)\n");
        return 2;
    }
    omp_set_num_threads(threads);
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        fprintf(stderr, "dnnl_worker: cannot create a CPU engine\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    slot slots[SLOTS];
    memset(slots, 0, sizeof slots);
    char line[512];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[16] = "", a[64] = "", b[64] = "", c[128] = "", d[64] = "";
        int id = -1;
        const int n = sscanf(line, "%15s %d %63s %63s %127s %63s", cmd, &id, a, b, c, d);
        if (n < 1) continue;
        if (!strcmp(cmd, "quit")) break;
        if (n < 2 || id < 0 || id >= SLOTS) {
            printf("err expected '<command> ID ...' with ID in 0..%d\n", SLOTS - 1);
            continue;
        }
        slot *s = &slots[id];
        if (!strcmp(cmd, "setup") && n == 6) {
            slot_free(s);
            char err[256] = "", name[128] = "";
            const int rc = setup(s, a, b, c, d, err, sizeof err, name, sizeof name);
            if (rc) {
                printf("%s %s\n", rc == 1 ? "na" : "err", err);
                continue;
            }
            double warm = 0;
            int bad = 0;
            for (int r = 0; r < WARMUP && !bad; r++) {
                const double t0 = now();
                bad = run(s);
                warm = now() - t0;
            }
            if (bad) {
                slot_free(s);
                printf("err execution failed\n");
            } else {
                printf("ok %d %.3f %s\n", id, 1e6 * warm, name);
            }
        } else if (!strcmp(cmd, "time")) {
            const int reps = atoi(a);
            if (!s->used || reps < 1) {
                printf("err slot not set up or bad reps\n");
                continue;
            }
            double *t = malloc(sizeof(double) * (size_t)reps);
            int bad = !t;
            for (int r = 0; r < reps && !bad; r++) {
                const double t0 = now();
                bad = run(s);
                t[r] = now() - t0;
            }
            if (bad) {
                printf("err execution failed\n");
            } else {
                fputs("t", stdout);
                for (int r = 0; r < reps; r++) printf(" %.3f", 1e6 * t[r]);
                fputc('\n', stdout);
            }
            free(t);
        } else if (!strcmp(cmd, "free")) {
            slot_free(s);
            printf("ok\n");
        } else {
            printf("err unknown command or arguments: %s", line);
        }
    }
    for (int i = 0; i < SLOTS; i++) slot_free(&slots[i]);
    dnnl_stream_destroy(stream);
    dnnl_engine_destroy(engine);
    return 0;
}
