/* Pieces shared by batch norm and its variants (batch renorm, masked, streaming, ghost and
 * recurrent batch norm); internal, never installed. The formulas are batch norm's
 * (src/ops/batchnorm.c): with M values per channel,
 *   running:  r <- (1 - f) r + f b,  b = mean, and var * M / (M - 1) (unbiased) or var
 *   backward: per (channel, block) partials {sum g, sum g (x - mu), sum (x - mu)} merged in
 *             block order; the exact mean is mu + sum (x - mu) / M (mu = save_mean, which may
 *             have been rounded to float32). */
#ifndef NK_OPS_BN_COMMON_H
#define NK_OPS_BN_COMMON_H

#include "core/internal.h"

/* Partials per (channel, block) of a backward reduction: sum g, sum g (x - mu), sum (x - mu). */
#define NK_BN_BWD_PARTS 3

/* nk_batchnorm_params: eps finite and >= 0, a known momentum_kind, momentum in [0, 1] when
 * uses_momentum (a running update; PyTorch ignores it elsewhere) and the kind is not
 * cumulative, no flag beyond NK_BN_USE_SCALE | NK_BN_USE_SHIFT | NK_BN_FUSE_RELU. */
nk_status nk_bn_check_params(nk_ctx *ctx, const char *op, const nk_batchnorm_params *p,
                             int uses_momentum);

/* The per-channel arguments of a backward from saved batch statistics: gamma (C) when flags has
 * the scale bit (named by flag_family as in nk_check_affine), save_mean and save_invstd (C),
 * dgamma and dbeta (C) when given. */
nk_status nk_bn_check_bwd_vecs(nk_ctx *ctx, const char *op, const char *flag_family,
                               unsigned flags, int64_t C, const nk_tensor *gamma,
                               const nk_tensor *save_mean, const nk_tensor *save_invstd,
                               const nk_tensor *dgamma, const nk_tensor *dbeta);

/* M = N * prod(spatial): the values of one channel of a validated x. */
int64_t nk_bn_values_per_channel(const nk_tensor *x);

/* Scratch of a forward on the moments engine (block partials, then C moments) followed by
 * nstage per-channel double arrays. */
size_t nk_bn_fwd_ws_bytes(int64_t C, int64_t M, int nstage);
/* Scratch of a backward: NK_BN_BWD_PARTS doubles per (channel, block), then nstage arrays. */
size_t nk_bn_bwd_ws_bytes(int64_t C, int64_t M, int nstage);

/* NK_WARN_NONFINITE_STATS naming channel c's batch statistics. */
nk_status nk_bn_warn_nonfinite(nk_ctx *ctx, const char *op, int64_t c, double mean, double var,
                               double eps);

/* The weight f of this batch in r <- (1 - f) r + f b (see nk_momentum_kind);
 * num_batches_tracked: batches seen before this one (required by NK_MOMENTUM_CUMULATIVE). */
double nk_bn_momentum_weight(const nk_batchnorm_params *p, const int64_t *num_batches_tracked);
/* rm[c] <- (1 - f) rm[c] + f mean[c],  rv[c] <- (1 - f) rv[c] + f var[c] bessel, then stored
 * into running_mean / running_var. rm and rv hold the running statistics as the caller loaded
 * them (before or after writing its outputs: its choice). */
void nk_bn_running_update(double f, double bessel, int64_t C, const double *mean,
                          const double *var, double *rm, double *rv, nk_tensor *running_mean,
                          nk_tensor *running_var);

/* Merges the backward partials of C channels x nb blocks (count values per channel) in block
 * order: mu[c] becomes the exact mean and channel c's block-0 slot part[NK_BN_BWD_PARTS c nb]
 * receives {sum g, sum g (x - mean)}. */
void nk_bn_merge_bwd_parts(double *part, int64_t C, int64_t nb, int64_t count, double *mu);

/* An op built on a public batch-norm function reports that function's error or warning under
 * its own name: "batchnorm: gamma must ..." becomes "<op>: gamma must ...". Returns s. */
nk_status nk_rename_error(nk_ctx *ctx, nk_status s, const char *op);

/* Runs `for (int64_t t = 0; t < n; t++) { body }` on nt threads (static schedule, so each
 * thread takes one contiguous range of tasks), without entering an OpenMP region when nt == 1:
 * even a region whose if() clause is false costs ~0.3 us in libgomp (measured on the 2-core
 * EPYC dev machine: 300 ns against 16 ns for the same 64-iteration loop), most of a tiny
 * call's time. The variable holding the thread count must be named nt. */
#define NK_FOR_TASKS(nt, t, n, ...)                                                              \
    do {                                                                                         \
        if ((nt) > 1) {                                                                          \
            _Pragma("omp parallel for num_threads(nt) schedule(static)")                         \
            for (int64_t t = 0; t < (n); t++) { __VA_ARGS__ }                                    \
        } else {                                                                                 \
            for (int64_t t = 0; t < (n); t++) { __VA_ARGS__ }                                    \
        }                                                                                        \
    } while (0)

#endif
