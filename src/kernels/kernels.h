/* Kernel tables: plain functions over one block of a reduction view.
 * Tensor slots in the view: 0 = x, 1 = y (forward) or dy (backward), 2 = dx, 3 = y (ReLU mask).
 * Kernels never allocate, print or exit.
 *
 * Two families of functions, for two work decompositions of the same fixed blocks:
 *  - per (channel, block): the values [r0, r1) of one channel c, walked as the view's runs
 *    (a run of stride 1 is the NCHW case, a run of stride C the NHWC case); their runs
 *    variants (see nk_view_runs) take channels [c0, c1) at once, walked run by run;
 *  - rows (channels innermost, see nk_view_rows): rows [r0, r1) of the (M, C) matrix for the
 *    channels [c0, c1), vectorized along the channels. Row r is the r-th value of every
 *    channel, so rows [b*B, (b+1)*B) hold exactly block b of every channel (B =
 *    NK_BLOCK_ELEMS): both decompositions produce the same per-(channel, block) partials.
 *    Every per-channel array argument of a rows function points at channel c0's entry.
 *
 * Numerics (every kernel, every ISA): statistics and per-element arithmetic in double.
 *  - moments: mean and M2 of the block without E[x^2] - E[x]^2 on raw data. The reference
 *    takes two passes (mean, then sum (x - mean)^2); optimized kernels may take one pass of
 *    shifted sums S1 = sum (x - s), S2 = sum (x - s)^2 with s the block's first value:
 *    mean = s + S1/n, M2 = S2 - S1^2/n. Since (s - mean)^2 <= M2, the cancellation costs at
 *    most a factor n = NK_BLOCK_ELEMS: relative error <= ~n * 2^-53 = 1e-12, against the
 *    1e-9 that float32 data with mean 1e4 and std 1e-2 is tested to.
 *  - normalize and bwd_apply: the reference rounds every operation of
 *        y = ((x - mean) * a) + b,   dx = ((kg * g) + (kx * (x - mean))) + k0;
 *    optimized kernels fuse the products with one FMA each:
 *        y = fma(x - mean, a, b),    dx = fma(kx, x - mean, fma(kg, g, k0)),
 *    one rounding fewer per product, so in double they are at least as accurate as the
 *    reference, but not its bits: |opt - ref| <= 4 * 2^-53 * (sum of the magnitudes of the
 *    terms, |(x - mean) a| + |b| + |y|, resp. |kg g| + |kx (x - mean)| + |k0| + |dx|) before
 *    the final rounding to the output type, hence at most one rounding step of float32 apart
 *    beyond that (docs/numerics.md; checked by tests/unit/test_kernels_sweep.c). x == mean
 *    still gives y = b exactly. The element-wise result does not depend on the layout, ISA or
 *    thread count (one expression per value, no sums). The compiler never contracts on its own
 *    (-ffp-contract=off): every FMA is written out.
 *  - optimized sums are formed in 16 lanes indexed by each value's position in its block and
 *    merged by one fixed tree (kernels/simd/lanes16.h), whichever function (per channel or
 *    rows), stride, alignment or instruction set does the work: optimized results are
 *    bitwise identical across layouts and ISAs, as the reference's are across layouts. */
#ifndef NK_KERNELS_H
#define NK_KERNELS_H

#include "core/internal.h"

typedef struct nk_bn_kernels {
    /* ---- per (channel, block) ---- */
    /* mean, m2 of the block's values */
    void (*moments)(const nk_cview *v, const void *x, int64_t c, int64_t r0, int64_t r1,
                    double *mean, double *m2);
    /* y = (x - mean) * a + b, then max(0, y) if relu */
    void (*normalize)(const nk_cview *v, const void *x, void *y, int64_t c, int64_t r0,
                      int64_t r1, double mean, double a, double b, int relu);
    /* g = dy (0 where ymask <= 0 if ymask); sum_g = sum g, sum_gx = sum g * (x - mean),
     * and if sum_x is not NULL, sum_x = sum (x - mean) (to correct a mean that was rounded
     * when it was saved in float32) */
    void (*bwd_reduce)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                       int64_t c, int64_t r0, int64_t r1, double mean, double *sum_g,
                       double *sum_gx, double *sum_x);
    /* dx = kg * g + kx * (x - mean) + k0 */
    void (*bwd_apply)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                      void *dx, int64_t c, int64_t r0, int64_t r1, double mean, double kg,
                      double kx, double k0);
    /* moments of the blocks [b0, b1) of channel c (block b: values [b NK_BLOCK_ELEMS, ...)):
     * out[2 (b - b0)], out[2 (b - b0) + 1] = the mean, m2 of `moments` over block b, bit for
     * bit (the optimized kernels may walk several blocks at once, for channels in cache) */
    void (*chan_moments)(const nk_cview *v, const void *x, int64_t c, int64_t b0, int64_t b1,
                         double *out);
    /* ---- runs (nk_view_runs: NCHW and its padded relatives): the same four over the values
     * [r0, r1) of channels [c0, c1), with the signatures of the rows functions (per-channel
     * arrays point at channel c0's entry). Walked run-major, channels inside (contiguous NCHW
     * in address order); the results of each channel are those of the per-channel function
     * over [r0, r1), bit for bit (the reductions: when [r0, r1) is one block). */
    void (*runs_moments)(const nk_cview *v, const void *x, int64_t c0, int64_t c1, int64_t r0,
                         int64_t r1, double *mean, double *m2);
    void (*runs_normalize)(const nk_cview *v, const void *x, void *y, int64_t c0, int64_t c1,
                           int64_t r0, int64_t r1, const double *mean, const double *a,
                           const double *b, int relu);
    void (*runs_bwd_reduce)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                            int64_t c0, int64_t c1, int64_t r0, int64_t r1, const double *mean,
                            double *sum_g, double *sum_gx, double *sum_x);
    void (*runs_bwd_apply)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                           void *dx, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                           const double *mean, const double *kg, const double *kx,
                           const double *k0);

    /* ---- rows: the same four over rows [r0, r1) of channels [c0, c1) ---- */
    /* mean[i], m2[i] of channel c0 + i over the rows */
    void (*rows_moments)(const nk_cview *v, const void *x, int64_t c0, int64_t c1, int64_t r0,
                         int64_t r1, double *mean, double *m2);
    void (*rows_normalize)(const nk_cview *v, const void *x, void *y, int64_t c0, int64_t c1,
                           int64_t r0, int64_t r1, const double *mean, const double *a,
                           const double *b, int relu);
    /* sum_x may be NULL */
    void (*rows_bwd_reduce)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                            int64_t c0, int64_t c1, int64_t r0, int64_t r1, const double *mean,
                            double *sum_g, double *sum_gx, double *sum_x);
    void (*rows_bwd_apply)(const nk_cview *v, const void *x, const void *dy, const void *ymask,
                           void *dx, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                           const double *mean, const double *kg, const double *kx,
                           const double *k0);
} nk_bn_kernels;

/* ---- instruction sets and dispatch ---- */

typedef enum nk_isa {
    NK_ISA_REF = 0,    /* the scalar reference: always built, the specification */
    NK_ISA_AVX2 = 1,   /* AVX2 + FMA */
    NK_ISA_AVX512 = 2, /* AVX-512 F, BW, DQ, VL + FMA */
    NK_ISA_COUNT
} nk_isa;

/* Caps the instruction set for every context (e.g. NK_ISA=avx2 to compare with AVX-512 on
 * the same machine): "ref", "avx2" or "avx512"; other values are ignored. Read at each
 * dispatch, so it applies to contexts that already exist. */
#define NK_ENV_ISA "NK_ISA"

const char *nk_isa_name(nk_isa isa);
/* The best instruction set this build has kernels for and this CPU (and OS) supports. */
nk_isa nk_isa_supported(void);
/* The instruction set a call with ctx runs: NK_ISA_REF when the context forces the reference,
 * else nk_isa_supported() capped by NK_ISA. */
nk_isa nk_isa_for(const nk_ctx *ctx);

extern const nk_bn_kernels nk_bn_ref_f32, nk_bn_ref_f64;

/* The batch-norm kernels of one instruction set (NULL if isa > nk_isa_supported()). */
const nk_bn_kernels *nk_bn_kernels_isa(nk_isa isa, nk_dtype dt);
/* The kernels for dtype dt under the context's policy (reference when forced). */
const nk_bn_kernels *nk_bn_kernels_for(const nk_ctx *ctx, nk_dtype dt);

/* Outputs of the batch- and group-norm element-wise kernels (normalize, bwd_apply) are written
 * with streaming stores by the optimized kernels when the tensors the pass touches together
 * (x and y; x, dy, dx and the mask) span at least this many bytes (the NCHW kernels count one
 * tensor when runs are shorter than NK_AHEAD_MIN_RUN_BYTES, where streaming would leave partial
 * lines at every run end): the output does not stay in a last-level cache for the next layer
 * anyway, and streaming saves the read of each output line before its write (a third of a
 * forward's memory traffic). 32 MiB: the L3 of current server parts per socket or CCD cluster
 * is 32 MiB or more. Store kinds never change a result. */
#define NK_STREAM_MIN_BYTES ((int64_t)32 << 20)

/* ---- the runs decomposition ---- */

/* 1 if the runs functions apply to view v: a single kept axis (the channels), the innermost
 * reduced axis of stride 1 in every tensor (runs of L = dims[nd - 1] contiguous values) and at
 * most one reduced axis outside it (the run index o; NCHW -> (N) x (H*W)). Value r of channel
 * c of tensor t is then at element (r / L) * st[t][0] + c * kst[t][0] + r % L (nd == 2), or
 * c * kst[t][0] + r (nd == 1). */
static inline int nk_view_runs(const nk_cview *v) {
    if (v->nk != 1 || v->nd < 1 || v->nd > 2 || v->M == 0) return 0;
    for (int t = 0; t < v->nt; t++)
        if (v->st[t][v->nd - 1] != 1) return 0;
    return 1;
}

/* ---- the rows decomposition ---- */

/* Channels per rows task: a task covers one block of rows (NK_BLOCK_ELEMS rows, the same
 * blocks as the per-channel decomposition) and one chunk of channels. 64 float32 channels
 * are 4 cache lines per row. */
#define NK_ROWS_CHUNK 64
static inline int64_t nk_rows_chunks(int64_t C) { return (C + NK_ROWS_CHUNK - 1) / NK_ROWS_CHUNK; }

/* 1 if the rows functions apply to view v: a single kept axis (the channels) of stride 1 in
 * every tensor of the view, and reduced values that are not themselves contiguous (channels
 * innermost: NHWC and its strided relatives). */
static inline int nk_view_rows(const nk_cview *v) {
    if (v->nk != 1 || v->C < 2 || v->M == 0) return 0;
    for (int t = 0; t < v->nt; t++)
        if (v->kst[t][0] != 1 || v->st[t][v->nd - 1] == 1) return 0;
    return 1;
}

#endif
