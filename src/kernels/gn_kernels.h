/* Group-norm span kernels: the per-(instance, block) kernels of kernels.h (moments,
 * normalize, bwd_reduce, bwd_apply, slot by slot the same arithmetic) for the common case of
 * group and instance norm where every instance i = (n, c) is one contiguous run of S values
 * and ni consecutive instances follow each other in memory (NCHW): instance j of a span
 * starts at x + j * S. One call covers a whole span (a group's CG channels, or several
 * groups), so the per-call costs of the per-channel kernels (the view's segment iterator,
 * the prefetch walkers, an indirect call) are paid once per span instead of once per
 * (instance, block): at S = 49 (7x7) they were most of the time.
 * The rows_ functions do the same for the channels innermost (NHWC), a sample at a time.
 * Like the rows kernels of kernels.h, the reductions give each channel the lane sums of the
 * per-channel kernels, but they merge the 16 lanes with vectors along the channels (the
 * tree of lanes16.h, the same additions) and finish the moments with vector divisions,
 * where the rows kernels take the tree and the division channel by channel in scalar code:
 * at S = 49 that was as much work as the sums themselves.
 *
 * Results: bitwise those of the optimized per-(instance, block) kernels of the same
 * instruction set on the same values (the same 16 position-indexed lanes per block, the same
 * tree, the same element-wise FMA expressions), hence bitwise identical across layouts and
 * thread counts with the rows kernels too (kernels.h). There is no reference twin: with the
 * reference forced (NK_FORCE_REF=1) group norm uses the reference per-channel kernels.
 *
 * Partials: block b of instance j (values [b*B, min((b+1)*B, S)), B = NK_BLOCK_ELEMS, nb =
 * nk_num_blocks(S) blocks) writes part[P * (j * nb + b) + k], P = 2 (moments: mean, m2) or
 * 3 (bwd_reduce: sum g, sum g (x - mean), sum (x - mean)). Per-instance coefficients are
 * arrays indexed by j. stream: write the output with streaming stores (the caller's choice,
 * NK_STREAM_MIN_BYTES); the bits do not depend on it. */
#ifndef NK_GN_KERNELS_H
#define NK_GN_KERNELS_H

#include "kernels/kernels.h"

typedef struct nk_gn_kernels {
    /* x: (ni, S); part: (ni, nb, 2) */
    void (*moments)(const void *x, int64_t S, int64_t ni, double *part);
    /* x, y: (ni, S); mean, a, b: (ni); y = fma(x - mean[j], a[j], b[j]); y may be x */
    void (*normalize)(const void *x, void *y, int64_t S, int64_t ni, const double *mean,
                      const double *a, const double *b, int stream);
    /* x, dy: (ni, S); mean: (ni); part: (ni, nb, 3) */
    void (*bwd_reduce)(const void *x, const void *dy, int64_t S, int64_t ni, const double *mean,
                       double *part);
    /* x, dy, dx: (ni, S); mean, kg, kx, k0: (ni);
     * dx = fma(kx[j], x - mean[j], fma(kg[j], dy, k0[j])); dx may be x or dy */
    void (*bwd_apply)(const void *x, const void *dy, void *dx, int64_t S, int64_t ni,
                      const double *mean, const double *kg, const double *kx, const double *k0,
                      int stream);

    /* ---- channels innermost (NHWC): one sample, S rows of C channels, row s at x + s * ld
     * (resp. dy + s * ldd), the channels contiguous; block b of channel c is its rows
     * [b*B, min((b+1)*B, S)), partials at part[P * (c * nb + b) + k] as above ---- */
    void (*rows_moments)(const void *x, int64_t ld, int64_t S, int64_t C, double *part);
    /* mean: (C), the mean of each channel's row */
    void (*rows_bwd_reduce)(const void *x, int64_t ld, const void *dy, int64_t ldd, int64_t S,
                            int64_t C, const double *mean, double *part);
    /* the element-wise passes of one sample (rows of C channels, y resp. dx rows ldo apart)
     * with per-channel coefficient arrays of C, as normalize and bwd_apply above; walked a
     * panel of channels at a time down the rows, so that the coefficients stay in registers
     * (the rows kernels of kernels.h reload them from L1 for every row). stream: streaming
     * stores where the output rows are aligned to a vector (else regular stores; the bits are
     * the same). The caller asks for them when the op's tensors together exceed the cache
     * (the fused units of groupnorm_core.c, whose output would otherwise be read for
     * ownership from memory and evict the next unit's input). */
    void (*rows_normalize)(const void *x, int64_t ld, void *y, int64_t ldo, int64_t S, int64_t C,
                           const double *mean, const double *a, const double *b, int stream);
    void (*rows_bwd_apply)(const void *x, int64_t ld, const void *dy, int64_t ldd, void *dx,
                           int64_t ldo, int64_t S, int64_t C, const double *mean,
                           const double *kg, const double *kx, const double *k0, int stream);
} nk_gn_kernels;

/* The span kernels of the context's instruction set for dtype dt, or NULL when it runs the
 * reference (forced, or a CPU without AVX2): the caller then takes the per-channel kernels. */
const nk_gn_kernels *nk_gn_kernels_for(const nk_ctx *ctx, nk_dtype dt);

#endif
