/*
 * normkit bench --serve: a persistent benchmark worker for bench/compare.py.
 *
 * compare.py interleaves several implementations (normkit, PyTorch, oneDNN) in one run; each
 * is a long-lived process with the same line protocol, so starting a process, loading a
 * library or faulting buffers in never lands inside a timing. One command per line on stdin,
 * one answer line on stdout:
 *
 *   setup ID OP PASS SHAPE LAYOUT  allocate, fill seeded data, warm up (op and baseline)
 *                                  -> "ok ID <us of one warm call>" | "na <why>" | "err <why>"
 *   time ID REPS                   -> "t <us> <us> ..." : REPS calls of the op, each timed
 *   base ID REPS                   -> the same for the copy (forward) / add (backward) pass of
 *                                     that slot's size, on the same threads
 *   free ID                        -> "ok"
 *   quit                           (or end of input)
 *
 * ID is a slot 0..BENCH_SLOTS-1, so a case can hold NCHW and NHWC buffers at once. OP, PASS
 * are bench's names (bn, fwd-train, ...); SHAPE is 16x256x56x56; LAYOUT is nchw, nhwc or rows
 * (ln, rms). The thread count is the worker's (--threads), as PyTorch's and oneDNN's are.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define BENCH_SLOTS 8
#define BENCH_SERVE_WARMUP 3
#define BENCH_MAX_REPS 100000

static void reply_times(bench_state *s, int reps, int baseline) {
    double *t = malloc(sizeof(double) * (size_t)reps);
    if (!t) {
        printf("err out of memory\n");
        return;
    }
    for (int r = 0; r < reps; r++) {
        const double t0 = bench_now();
        nk_status st = NK_OK;
        if (baseline)
            bench_baseline(s);
        else
            st = bench_run_op(s);
        t[r] = bench_now() - t0;
        if (st < 0) {
            printf("err %s\n", nk_ctx_last_error(s->ctx));
            free(t);
            return;
        }
    }
    /* printed after the loop, so no stdio work sits between two timed calls */
    fputs("t", stdout);
    for (int r = 0; r < reps; r++) printf(" %.3f", 1e6 * t[r]);
    fputc('\n', stdout);
    free(t);
}

static void do_setup(bench_state *slots, int *used, int id, const char *op, const char *pass,
                     const char *shape, const char *layout, int threads, int ref) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.threads = threads;
    o.ref = ref;
    o.dt = NK_F32;
    const int k = bench_pick(op, BENCH_OP_NAMES, BENCH_NUM_OPS);
    const int p = bench_pick(pass, BENCH_PASS_NAMES, BENCH_NUM_PASSES);
    if (k < 0 || p < 0 || !bench_parse_shape(shape, &o)) {
        printf("err bad op, pass or shape\n");
        return;
    }
    o.op = (bench_op)k;
    o.pass = (bench_pass)p;
    const int rowwise = o.op == OP_LN || o.op == OP_RMS;
    if (!strcmp(layout, "nhwc")) {
        o.nhwc = 1;
    } else if (strcmp(layout, rowwise ? "rows" : "nchw")) {
        printf("na normkit has no %s layout for %s\n", layout, op);
        return;
    }
    char err[256];
    if (bench_check(&o, err, sizeof err)) {
        printf("err %s\n", err);
        return;
    }
    if (used[id]) bench_teardown(&slots[id]);
    used[id] = 0;
    if (bench_setup(&slots[id], &o, err, sizeof err)) {
        bench_teardown(&slots[id]);
        printf("err %s\n", err);
        return;
    }
    double warm = 0;
    for (int r = 0; r < BENCH_SERVE_WARMUP; r++) {
        const double t0 = bench_now();
        const nk_status st = bench_run_op(&slots[id]);
        warm = bench_now() - t0;
        bench_baseline(&slots[id]);
        if (st < 0) {
            printf("err %s\n", nk_ctx_last_error(slots[id].ctx));
            bench_teardown(&slots[id]);
            return;
        }
    }
    used[id] = 1;
    printf("ok %d %.3f %s\n", id, 1e6 * warm, nk_ctx_kernels(slots[id].ctx));
}

int bench_serve(int threads, int ref) {
    bench_state slots[BENCH_SLOTS];
    int used[BENCH_SLOTS] = {0};
    char line[512];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        char cmd[16] = "", a[64] = "", b[64] = "", c[128] = "", d[64] = "";
        int id = -1;
        const int n = sscanf(line, "%15s %d %63s %63s %127s %63s", cmd, &id, a, b, c, d);
        if (n < 1) continue;
        if (!strcmp(cmd, "quit")) break;
        if (n < 2 || id < 0 || id >= BENCH_SLOTS) {
            printf("err expected '<command> ID ...' with ID in 0..%d\n", BENCH_SLOTS - 1);
            continue;
        }
        if (!strcmp(cmd, "setup")) {
            if (n < 6)
                printf("err usage: setup ID OP PASS SHAPE LAYOUT\n");
            else
                do_setup(slots, used, id, a, b, c, d, threads, ref);
        } else if (!strcmp(cmd, "time") || !strcmp(cmd, "base")) {
            const int reps = n >= 3 ? atoi(a) : 0;
            if (!used[id])
                printf("err slot %d is not set up\n", id);
            else if (reps < 1 || reps > BENCH_MAX_REPS)
                printf("err reps must be 1..%d\n", BENCH_MAX_REPS);
            else
                reply_times(&slots[id], reps, cmd[0] == 'b');
        } else if (!strcmp(cmd, "free")) {
            if (used[id]) bench_teardown(&slots[id]);
            used[id] = 0;
            printf("ok\n");
        } else {
            printf("err unknown command '%s'\n", cmd);
        }
    }
    for (int i = 0; i < BENCH_SLOTS; i++)
        if (used[i]) bench_teardown(&slots[i]);
    return 0;
}
