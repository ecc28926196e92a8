/* normkit bench: one normalization op set up on caller-owned buffers, its timed call and the
 * same-size memory pass it is compared with. Shared by the one-shot CLI (bench.c) and the
 * line-protocol worker that bench/compare.py drives (bench_serve.c). */
#ifndef NK_TOOLS_BENCH_H
#define NK_TOOLS_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "normkit.h"

/* OP_BNAR: batch norm fused with a residual add and ReLU (nk_batchnorm_add_relu_*) */
typedef enum { OP_BN, OP_LN, OP_GN, OP_IN, OP_RMS, OP_BNAR } bench_op;
typedef enum { PASS_TRAIN, PASS_INFER, PASS_BWD } bench_pass;

#define BENCH_NUM_OPS 6
#define BENCH_NUM_PASSES 3
extern const char *const BENCH_OP_NAMES[BENCH_NUM_OPS];     /* bn ln gn in rms bn-add-relu */
extern const char *const BENCH_PASS_NAMES[BENCH_NUM_PASSES]; /* fwd-train fwd-infer bwd */

typedef struct {
    bench_op op;
    bench_pass pass;
    int ndim;
    int64_t dims[NK_MAX_DIMS];
    int nhwc;
    int threads, ref;
    nk_dtype dt;
    int64_t groups; /* gn; 0 = default (32, or C if C < 32) */
} bench_opts;

typedef struct {
    bench_opts o;
    nk_ctx *ctx;
    int64_t numel;
    size_t bytes; /* of one data tensor */
    void *xb, *yb, *dyb;
    void *zb, *dxb, *dzb; /* bn-add-relu: z; backward dx and dz (y is its input, the mask) */
    nk_tensor x, y, dy, dx, z, dz;
    int64_t C, rows; /* per-parameter length; rows of the saved statistics */
    void *vecs[8];   /* gamma beta rmean rvar smean sinv dgamma dbeta */
    nk_tensor g, b, rm, rv, sm, si, dg, db;
    void *ws;
    size_t ws_size;
    int64_t nbt;
} bench_state;

/* "16x256x56x56" -> o->dims; 0 on a malformed shape. */
int bench_parse_shape(const char *s, bench_opts *o);
/* Index of s in names[0..n), or -1. */
int bench_pick(const char *s, const char *const *names, int n);
/* Checks the op/shape/layout combination and fills the default groups; 0 if fine, else writes
 * a reason into err. */
int bench_check(bench_opts *o, char *err, size_t errlen);

/* Allocates and touches every buffer, fills seeded data, creates the context and (for a
 * backward) runs a training forward for the saved statistics. 0 on success, else writes a
 * reason into err and leaves s safe to pass to bench_teardown. */
int bench_setup(bench_state *s, const bench_opts *o, char *err, size_t errlen);
nk_status bench_run_op(bench_state *s);
/* The same-size memory pass with the op's unavoidable traffic, on o.threads threads: y = x
 * (forward), dx = x + dy (backward); bn-add-relu: y = x + z (forward), dx = x + dy and
 * dz = y + dy in one pass (backward). */
void bench_baseline(bench_state *s);
/* "copy", "add" or "add2": the name of that pass. */
const char *bench_baseline_name(const bench_state *s);
void bench_teardown(bench_state *s);

/* Bytes the op must move: forward x + y, backward x + dy + dx; bn-add-relu forward x + z + y,
 * backward x + y + dy + dx + dz (bench_traffic names them). */
double bench_bytes_moved(const bench_state *s);
const char *bench_traffic(const bench_state *s);
double bench_now(void);

/* `normkit bench --serve`: the line protocol on stdin/stdout (see bench_serve.c). */
int bench_serve(int threads, int ref);

#endif
