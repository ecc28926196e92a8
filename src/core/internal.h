/* Internal declarations shared by the library's modules (never installed). */
#ifndef NK_INTERNAL_H
#define NK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "normkit.h"

#define NK_ERR_MSG_LEN 512
/* Reported workspace sizes include this much room to align the caller's pointer. */
#define NK_WS_SLACK 64

struct nk_ctx {
    int num_threads;
    int force_ref;
    char last_error[NK_ERR_MSG_LEN];
    void *scratch; /* grown on demand when an op is called with workspace = NULL */
    size_t scratch_size;
};

/* Records "fmt..." as the context's last error and returns s. ctx may be NULL. */
nk_status nk_fail(nk_ctx *ctx, nk_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Clears the last error. */
void nk_clear_error(nk_ctx *ctx);

/* Resolves the workspace of an op needing `need` bytes: the caller's (checked for size) or
 * the context's scratch buffer. *out receives a 64-byte aligned pointer. */
nk_status nk_workspace_get(nk_ctx *ctx, const char *op, void *ws, size_t ws_size, size_t need,
                           void **out);

/* Overflow-checked int64 arithmetic: return 0 on overflow. */
int nk_mul_i64(int64_t a, int64_t b, int64_t *out);
int nk_add_i64(int64_t a, int64_t b, int64_t *out);

/* Formats dims as "[a, b, c]" into buf. */
const char *nk_shape_str(const nk_tensor *t, char *buf, size_t n);

/* Validates the layout of t, whatever its rank (checked by the caller): float32/float64,
 * non-negative dims and strides, element count, largest offset and byte size within int64,
 * data present when non-empty. *numel (may be NULL) receives the element count. */
nk_status nk_check_layout(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                          int64_t *numel);
/* Validates a data tensor: not NULL, rank 2..NK_MAX_DIMS (N, C, ...), nk_check_layout. */
nk_status nk_check_data(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t);
/* Validates that t has exactly the dims and dtype of ref, then as nk_check_data. */
nk_status nk_check_same_shape(nk_ctx *ctx, const char *op, const char *name,
                              const nk_tensor *t, const char *ref_name, const nk_tensor *ref);
/* As nk_check_same_shape for a tensor of any rank (the layout checked by nk_check_layout). */
nk_status nk_check_like(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                        const char *ref_name, const nk_tensor *ref);

/* Validates a per-channel vector: rank 1, length n, float32/float64, data present. */
nk_status nk_check_vec(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                       int64_t n);
/* nk_check_vec when `required`; a NULL t is then "<op>: <name> is NULL<why>". */
nk_status nk_check_vec_if(nk_ctx *ctx, const char *op, int required, const char *name,
                          const nk_tensor *t, int64_t n, const char *why);
/* An optional per-channel vector: NULL passes, anything else is nk_check_vec'd. */
nk_status nk_check_opt_vec(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                           int64_t n);
/* gamma (n) when flags has the scale bit, beta (n) when it has the shift bit (NK_BN_USE_* and
 * NK_NORM_USE_* are the same bits; pass flags & NK_BN_USE_SCALE where there is no beta). A
 * NULL one is "<op>: gamma is NULL but <flag_family>_USE_SCALE is set", flag_family being
 * "NK_BN" or "NK_NORM", the names the op's documentation uses. */
nk_status nk_check_affine(nk_ctx *ctx, const char *op, const char *flag_family, unsigned flags,
                          int64_t n, const nk_tensor *gamma, const nk_tensor *beta);
/* Rejects an output that shares memory with `in` unless it is the same view (in place). */
nk_status nk_check_alias(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *out,
                         const char *in_name, const nk_tensor *in);
/* A backward's dy (x's dims and dtype) and optional dx (the same, sharing no memory with dy or
 * x unless it is the same view: dx may be computed in place of dy). x validated. */
nk_status nk_check_dy_dx(nk_ctx *ctx, const char *op, const nk_tensor *x, const nk_tensor *dy,
                         const nk_tensor *dx);

/* Per-channel vectors are read and written through double staging arrays. */
void nk_vec_load(const nk_tensor *v, double *dst);  /* v may be NULL: nothing */
void nk_vec_store(nk_tensor *v, const double *src); /* v may be NULL: nothing */
/* dst[0..n) <- v when `use`, else `fill` (1 for an unused gamma, 0 for an unused beta). */
void nk_vec_load_or(const nk_tensor *v, int use, double fill, int64_t n, double *dst);
/* Writes 0 into every element of v (NULL: nothing). */
void nk_vec_zero(nk_tensor *v);

/* ---- row vectors ----
 * Per-row statistics (save_mean of layer/group norm, ...), per-slice parameters (weight
 * norm's g) and per-slot running statistics may have any shape with the right number of
 * elements (ONNX's keepdims [N, 1, 1], PyTorch's weight_g (O, 1, 1, 1), a flat [N]); their
 * elements are taken in the row-major order of their dims. */

/* Not NULL, rank 0..NK_MAX_DIMS, nk_check_layout; *numel (may be NULL) receives the count,
 * which the caller compares with the count it needs. */
nk_status nk_check_flat(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                        int64_t *numel);
/* nk_check_flat with exactly `count` elements; `what` completes "must have N elements (what)".
 * A negative stride is NK_ERR_SHAPE here (the weight norm, cosine, ghost and recurrent ops have
 * always reported it so), NK_ERR_VALUE in every other check. */
nk_status nk_check_rows(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                        int64_t count, const char *what);
/* load: dst[j] = t[i0 + j], store: t[i0 + j] = src[j], for j < n (t may be NULL: nothing). */
void nk_rows_load(const nk_tensor *t, int64_t i0, int64_t n, double *dst);
void nk_rows_store(nk_tensor *t, int64_t i0, int64_t n, const double *src);
/* The elements [i0, i0 + n) of t as a 1-D view, when they are evenly spaced in memory (true
 * for every shape whose trailing axes hold whole rows: (R, C), flat (R * C), (R, C, 1, 1),
 * any strides). Returns 0 when they are not (e.g. a row split over two padded axes). */
int nk_rows_slice(const nk_tensor *t, int64_t i0, int64_t n, nk_tensor *out);

/* ---- reduction view: a tensor set seen as I instances of M values each ----
 * The axes of the tensors are split into kept axes (they index the instance: the channel for
 * batch norm, (n, c) for instance norm, (n, group) for group norm, the leading axes for layer
 * norm) and reduced axes (they index the values of one instance). On both sides size-1 axes are
 * dropped and adjacent axes are merged when every tensor of the set allows it, so typical
 * layouts become one or two loops: BN on NCHW -> (N: stride C*HW) x (HW: stride 1); on NHWC ->
 * (N*H*W: stride C). The values of an instance are visited in a fixed order (the reduced axes'
 * row-major order), which is what makes the fixed-block reductions deterministic. */
#define NK_CV_MAXT 5 /* the fused BN + add + ReLU backward: x, dy, dx, y, dz */
#define NK_CV_MAXAX (NK_MAX_DIMS + 1) /* group norm splits the channel axis in two */

/* One axis of a view before merging: its size, each tensor's stride, kept or reduced. */
typedef struct nk_vaxis {
    int64_t dim;
    int64_t st[NK_CV_MAXT];
    int kept;
} nk_vaxis;

typedef struct nk_cview {
    int nt;                               /* tensors in the set */
    int nk;                               /* kept axes after merging, outermost first */
    int64_t kdims[NK_CV_MAXAX];
    int64_t kst[NK_CV_MAXT][NK_CV_MAXAX];
    int nd;                               /* reduced axes after merging, outermost first */
    int64_t dims[NK_CV_MAXAX];
    int64_t st[NK_CV_MAXT][NK_CV_MAXAX];  /* element strides of each tensor along dims */
    int64_t C;                            /* instances (channels for batch norm) */
    int64_t M;                            /* values per instance */
} nk_cview;

/* The view of nt tensors of identical dims (already validated) from explicit axes, in the
 * tensors' axis order (naxes <= NK_CV_MAXAX). */
void nk_view_from_axes(nk_cview *v, int nt, int naxes, const nk_vaxis *ax);
/* Batch-norm view: axis 1 kept, every other axis reduced. */
void nk_cview_init(nk_cview *v, int nt, const nk_tensor *const *ts);
/* Kept axes are those whose bit is set in kept_mask (bit i = axis i). */
void nk_view_init_mask(nk_cview *v, int nt, const nk_tensor *const *ts, unsigned kept_mask);

/* Walks the values r in [r0, r1) of instance c (in the fixed order of the view) as runs
 * ("segments") of consecutive innermost values. */
typedef struct nk_seg_iter {
    const nk_cview *v;
    int64_t idx[NK_CV_MAXAX];
    int64_t off[NK_CV_MAXT];
    int64_t remaining;
} nk_seg_iter;
void nk_seg_begin(nk_seg_iter *it, const nk_cview *v, int64_t c, int64_t r0, int64_t r1);
/* Returns the next run length (0 when done); off[t] is the run's first element offset in
 * tensor t; the run advances by v->st[t][v->nd - 1] per element. */
int64_t nk_seg_next(nk_seg_iter *it, int64_t *off);

/* Fixed reduction block: the values of a channel are split into blocks of this many elements,
 * whatever the thread count; partial results are merged in block order. */
#define NK_BLOCK_ELEMS 8192
static inline int64_t nk_num_blocks(int64_t M) { return M == 0 ? 0 : (M + NK_BLOCK_ELEMS - 1) / NK_BLOCK_ELEMS; }

/* Work below this many elements runs on one thread (thread start-up would dominate). A call
 * made from inside the caller's own OpenMP parallel region also runs on one thread: the
 * caller's threads already occupy the cores, and nested teams would oversubscribe them (results
 * do not change: the blocks are the same for any thread count). */
#define NK_PARALLEL_MIN_ELEMS 65536
static inline int nk_threads_for(const nk_ctx *ctx, int64_t elems) {
    if (elems < NK_PARALLEL_MIN_ELEMS || ctx->num_threads == 1) return 1;
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
#endif
    return ctx->num_threads;
}

#endif
