/*
 * normkit.h - batch normalization and its family, done properly, in C11.
 *
 * WHAT IT IS
 *   A library of normalization layers (batch norm first) with PyTorch-compatible numbers by
 *   default, ONNX/Keras conventions on request, a full backward pass, and results that are
 *   bitwise identical for any thread count. This header is the manual.
 *
 * EXAMPLE (BatchNorm training step on an NCHW float32 tensor)
 *
 *     nk_ctx *ctx; nk_ctx_create(&ctx);
 *     int64_t dims[4] = {8, 16, 32, 32};
 *     nk_tensor x, y;
 *     nk_tensor_contiguous(&x, xbuf, NK_F32, 4, dims);
 *     nk_tensor_contiguous(&y, ybuf, NK_F32, 4, dims);
 *     nk_tensor g = nk_vec(gamma, NK_F32, 16), b = nk_vec(beta, NK_F32, 16);
 *     nk_tensor rm = nk_vec(run_mean, NK_F32, 16), rv = nk_vec(run_var, NK_F32, 16);
 *     nk_tensor sm = nk_vec(save_mean, NK_F32, 16), si = nk_vec(save_invstd, NK_F32, 16);
 *     nk_batchnorm_params p; nk_batchnorm_params_default(&p);   // PyTorch: eps 1e-5, m 0.1
 *     nk_status s = nk_batchnorm_forward_train(ctx, &p, &x, &g, &b, &y, &sm, &si,
 *                                              &rm, &rv, NULL, NULL, 0);
 *     if (s < 0) fprintf(stderr, "%s\n", nk_ctx_last_error(ctx));
 *     nk_ctx_destroy(ctx);
 *
 * RULES
 *   Errors:    every call that can fail returns nk_status: 0 = OK, negative = error (nothing
 *              was written: outputs and running statistics are untouched), positive = warning
 *              (outputs were written, see the code). A one-line human-readable detail of the
 *              last error or warning is kept in the context: nk_ctx_last_error(ctx). The
 *              library never prints, exits or aborts.
 *   Ownership: the caller owns every buffer. nk_tensor is a non-owning view. Ops that need
 *              scratch space report its size (nk_<op>_workspace_size) and take it as an
 *              argument; passing workspace = NULL lets the context supply it from a buffer it
 *              grows once and keeps (no allocation per call in steady state).
 *   Threads:   a context holds the thread count used by the ops called with it. A context must
 *              not be used by two threads at once; two contexts never interfere. Results are
 *              bitwise identical for any thread count: work is split into fixed blocks that do
 *              not depend on the thread count and partial results are merged in a fixed order.
 *              Small calls (under 65536 elements) and calls made from inside the caller's own
 *              OpenMP parallel region run on the calling thread, so a caller that runs its own
 *              threads is not oversubscribed (a caller with its own pthreads keeps contexts at
 *              1 thread, the default).
 *   Layouts:   tensors carry int64 dims and element strides, so contiguous NCHW-family,
 *              channels-last (NHWC-family) and arbitrary strided views are all accepted.
 *              Channels are on axis 1 for the batch-norm family.
 *   Types:     data tensors are float32 or float64. Per-channel vectors (gamma, beta, running
 *              and saved statistics, gradients of gamma/beta) may each be float32 or float64
 *              independently of the data; internally statistics are accumulated in double.
 *   Optional:  an optional output passed as NULL is skipped.
 */
#ifndef NORMKIT_H
#define NORMKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Only the declarations in this header are exported from the shared library. */
#if defined(NK_BUILDING_LIBRARY) && defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define NK_VERSION_MAJOR 0
#define NK_VERSION_MINOR 1
#define NK_VERSION_PATCH 0

/* Largest tensor rank accepted. */
#define NK_MAX_DIMS 8

/* ------------------------------------------------------------------------------------------ */
/* Status                                                                                       */
/* ------------------------------------------------------------------------------------------ */

typedef enum nk_status {
    NK_OK = 0,
    /* Warnings (> 0): outputs were written. */
    NK_WARN_NONFINITE_STATS = 1, /* batch statistics not finite: y written, running stats kept */
    /* Errors (< 0): nothing was written. */
    NK_ERR_NULL = -1,        /* a required pointer is NULL */
    NK_ERR_SHAPE = -2,       /* rank or shape mismatch */
    NK_ERR_VALUE = -3,       /* a scalar argument out of range (eps, momentum, threads, ...) */
    NK_ERR_OVERFLOW = -4,    /* a size product overflows int64 */
    NK_ERR_DTYPE = -5,       /* unsupported or mismatched element type */
    NK_ERR_DEGENERATE = -6,  /* a reduction has too few values (e.g. 1 value per channel) */
    NK_ERR_WORKSPACE = -7,   /* workspace too small */
    NK_ERR_NOMEM = -8,       /* allocation failed */
    NK_ERR_UNSUPPORTED = -9, /* valid request this build does not implement */
    NK_ERR_IO = -10,         /* file could not be read or written */
    NK_ERR_FORMAT = -11      /* file content malformed, truncated or corrupted */
} nk_status;

/* Short constant name of a status, e.g. "NK_ERR_SHAPE: shape mismatch". Never NULL. */
const char *nk_status_str(nk_status s);

/* ------------------------------------------------------------------------------------------ */
/* Context                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct nk_ctx nk_ctx;

/* Creates a context: 1 thread (or NK_NUM_THREADS from the environment), optimized kernels
 * (reference kernels if NK_FORCE_REF=1 is set in the environment). */
nk_status nk_ctx_create(nk_ctx **out);
void nk_ctx_destroy(nk_ctx *ctx);
/* n >= 1. Ops use at most n threads; results do not depend on n. */
nk_status nk_ctx_set_num_threads(nk_ctx *ctx, int n);
int nk_ctx_get_num_threads(const nk_ctx *ctx);
/* on != 0 forces the scalar reference kernels. */
nk_status nk_ctx_set_force_ref(nk_ctx *ctx, int on);
int nk_ctx_get_force_ref(const nk_ctx *ctx);
/* The kernels the context's calls run: "ref" (forced, or no SIMD kernels for this CPU),
 * "avx2" or "avx512": the best the CPU supports, capped by NK_ISA=ref|avx2|avx512 in the
 * environment (read at each call). Optimized kernels compute in double as the reference does;
 * their sums differ from the reference's in the last bits, and do not depend on the thread
 * count, the layout or the instruction set. Never NULL. */
const char *nk_ctx_kernels(const nk_ctx *ctx);
/* Detail of the last error or warning reported through this context ("" if none). */
const char *nk_ctx_last_error(const nk_ctx *ctx);

/* ------------------------------------------------------------------------------------------ */
/* Tensors                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* NK_U8 is accepted only where a function says so (masks). */
typedef enum nk_dtype { NK_F32 = 1, NK_F64 = 2, NK_U8 = 3 } nk_dtype;

/* Size in bytes of one element (0 for an unknown dtype). */
size_t nk_dtype_size(nk_dtype dt);

/* A non-owning view: element (i0, i1, ...) lives at data + sum(ik * strides[k]) elements.
 * Strides may be any non-negative values (zero strides only for broadcast inputs). */
typedef struct nk_tensor {
    void *data;
    nk_dtype dtype;
    int ndim;
    int64_t dims[NK_MAX_DIMS];
    int64_t strides[NK_MAX_DIMS]; /* in elements, not bytes */
} nk_tensor;

/* Row-major contiguous (NCHW-family when channels are axis 1). */
nk_status nk_tensor_contiguous(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                               const int64_t *dims);
/* Channels-last: dims are given in logical order (N, C, D1..Dk) and memory is ordered
 * (N, D1..Dk, C), as PyTorch's channels_last / channels_last_3d. ndim >= 2. */
nk_status nk_tensor_channels_last(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                                  const int64_t *dims);
/* Arbitrary element strides. */
nk_status nk_tensor_strided(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                            const int64_t *dims, const int64_t *strides);
/* A contiguous 1-D vector of n elements (per-channel parameters and statistics). */
nk_tensor nk_vec(void *data, nk_dtype dt, int64_t n);
/* Number of elements, overflow-checked. */
nk_status nk_tensor_numel(const nk_tensor *t, int64_t *out);

/* ------------------------------------------------------------------------------------------ */
/* Moments engine: mergeable per-channel statistics                                             */
/* ------------------------------------------------------------------------------------------ */

/* Statistics of a set of values: count, mean, M2 = sum (x - mean)^2. The biased variance is
 * m2 / count, the unbiased m2 / (count - 1). */
typedef struct nk_moments {
    int64_t count;
    double mean;
    double m2;
} nk_moments;

/* a <- statistics of the union of the sets described by a and b (Chan et al. merge). */
void nk_moments_merge(nk_moments *a, const nk_moments *b);
/* Resets to the empty set. */
void nk_moments_reset(nk_moments *m, int64_t n);

/* Per-channel moments of x (rank >= 2, channels on axis 1), over every other axis:
 * out[c] for c < C. Computed in fixed blocks merged in a fixed order (bitwise identical for any
 * thread count). If accumulate != 0 the result is merged into out[] (so a data set can be
 * processed batch by batch), otherwise out[] is overwritten. */
nk_status nk_moments_workspace_size(const nk_tensor *x, size_t *bytes);
nk_status nk_moments_per_channel(nk_ctx *ctx, const nk_tensor *x, nk_moments *out,
                                 int accumulate, void *workspace, size_t workspace_size);

/* ------------------------------------------------------------------------------------------ */
/* Batch normalization                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* How the running statistics are updated from a batch (mean_b, var_b):
 *   NK_MOMENTUM_PYTORCH:    r = (1 - m) r + m batch              (PyTorch, cuDNN; m = 0.1)
 *   NK_MOMENTUM_ONNX:       r = m r + (1 - m) batch              (ONNX, Keras/TF; m = 0.9/0.99)
 *   NK_MOMENTUM_CUMULATIVE: r = (1 - 1/t) r + (1/t) batch, t = num_batches_tracked after the
 *                           increment (PyTorch momentum=None: the plain average of all batches)
 */
typedef enum nk_momentum_kind {
    NK_MOMENTUM_PYTORCH = 0,
    NK_MOMENTUM_ONNX = 1,
    NK_MOMENTUM_CUMULATIVE = 2
} nk_momentum_kind;

/* Flags. */
#define NK_BN_USE_SCALE 0x1u /* multiply by gamma (else gamma = 1) */
#define NK_BN_USE_SHIFT 0x2u /* add beta (else beta = 0) */
#define NK_BN_FUSE_RELU 0x4u /* y = max(0, bn(x)); the backward masks dy where y <= 0 */

/* PyTorch's defaults: torch.nn.BatchNorm*d(eps=1e-5, momentum=0.1). */
#define NK_BN_DEFAULT_EPS 1e-5
#define NK_BN_DEFAULT_MOMENTUM 0.1
/* ONNX BatchNormalization's default momentum (weights the old value). */
#define NK_BN_ONNX_MOMENTUM 0.9

typedef struct nk_batchnorm_params {
    double eps;                   /* added to the variance inside the square root, >= 0 */
    double momentum;              /* in [0, 1]; ignored for NK_MOMENTUM_CUMULATIVE */
    nk_momentum_kind momentum_kind;
    int unbiased_running_var;     /* 1: running var gets var_b * n/(n-1) (PyTorch), 0: biased */
    unsigned flags;               /* NK_BN_USE_SCALE | NK_BN_USE_SHIFT | NK_BN_FUSE_RELU */
} nk_batchnorm_params;

/* PyTorch: eps 1e-5, momentum 0.1 (PyTorch convention), unbiased running variance, scale and
 * shift used. */
void nk_batchnorm_params_default(nk_batchnorm_params *p);
/* ONNX BatchNormalization-15: eps 1e-5, momentum 0.9 (ONNX convention), biased running
 * variance, scale and shift used. */
void nk_batchnorm_params_onnx(nk_batchnorm_params *p);

/* Scratch bytes nk_batchnorm_forward_train / nk_batchnorm_backward need for this input. */
nk_status nk_batchnorm_workspace_size(const nk_tensor *x, size_t *bytes);

/* Training forward. x, y: (N, C, ...) same dims, any layout; y may alias x exactly (in place).
 *   mean_b, var_b = per-channel mean and biased variance over every axis but 1
 *   y = (x - mean_b) / sqrt(var_b + eps) * gamma + beta        [then max(0, .) if FUSE_RELU]
 * save_mean (C) <- mean_b, save_invstd (C) <- 1 / sqrt(var_b + eps)      (optional)
 * running_mean, running_var (C): updated in place per params (optional: both NULL gives
 *   PyTorch's track_running_stats=False; both or neither must be given).
 * num_batches_tracked: incremented when running statistics are given (optional, required for
 *   NK_MOMENTUM_CUMULATIVE).
 * gamma/beta: (C), required when the flags say they are used.
 * Errors: one value per channel (N * prod(spatial) == 1) is NK_ERR_DEGENERATE. N = 0 is a
 * no-op (nothing touched). Non-finite batch statistics (a NaN/inf input, or eps = 0 with a
 * constant channel) give NK_WARN_NONFINITE_STATS: y and the saved statistics are written, the
 * running statistics and num_batches_tracked are not. */
nk_status nk_batchnorm_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                     const nk_tensor *x, const nk_tensor *gamma,
                                     const nk_tensor *beta, nk_tensor *y,
                                     nk_tensor *save_mean, nk_tensor *save_invstd,
                                     nk_tensor *running_mean, nk_tensor *running_var,
                                     int64_t *num_batches_tracked, void *workspace,
                                     size_t workspace_size);

/* Inference forward with given statistics (running averages, or population statistics):
 *   y = (x - mean) / sqrt(var + eps) * gamma + beta          [then max(0, .) if FUSE_RELU]
 * mean, var (C) required; var + eps must be finite and > 0 (NK_ERR_VALUE otherwise).
 * y may alias x. */
nk_status nk_batchnorm_forward_inference(nk_ctx *ctx, const nk_batchnorm_params *p,
                                         const nk_tensor *x, const nk_tensor *gamma,
                                         const nk_tensor *beta, const nk_tensor *mean,
                                         const nk_tensor *var, nk_tensor *y);

/* Training backward (statistics of the batch, as saved by the forward):
 *   xhat = (x - mean) * invstd,  g = dy (masked by y > 0 if FUSE_RELU)
 *   dbeta = sum g,  dgamma = sum g * xhat
 *   dx = gamma * invstd * (g - dbeta / M - xhat * dgamma / M),   M = N * prod(spatial)
 * save_mean, save_invstd (C) required (from nk_batchnorm_forward_train). The exact batch mean
 * is recovered from x during the reduction (save_mean is only its starting point), so a
 * float32 save_mean of badly scaled data (mean 1e4, std 1e-2) costs no precision.
 * y required with FUSE_RELU (the forward output; g = 0 where y <= 0, NaN passes as in PyTorch),
 * ignored otherwise. dx, dgamma, dbeta each optional and overwritten. dx may alias dy.
 * Workspace: nk_batchnorm_workspace_size(x) covers the forward and the backward. */
nk_status nk_batchnorm_backward(nk_ctx *ctx, const nk_batchnorm_params *p, const nk_tensor *x,
                                const nk_tensor *dy, const nk_tensor *gamma,
                                const nk_tensor *save_mean, const nk_tensor *save_invstd,
                                const nk_tensor *y, nk_tensor *dx, nk_tensor *dgamma,
                                nk_tensor *dbeta, void *workspace, size_t workspace_size);

/* Backward with fixed statistics (frozen BN, use-global-stats, inference-mode gradients):
 * mean and var are constants, so
 *   dx = gamma / sqrt(var + eps) * g,  dgamma = sum g * xhat,  dbeta = sum g.
 * var + eps must be finite and > 0. */
nk_status nk_batchnorm_backward_frozen(nk_ctx *ctx, const nk_batchnorm_params *p,
                                       const nk_tensor *x, const nk_tensor *dy,
                                       const nk_tensor *gamma, const nk_tensor *mean,
                                       const nk_tensor *var, const nk_tensor *y, nk_tensor *dx,
                                       nk_tensor *dgamma, nk_tensor *dbeta, void *workspace,
                                       size_t workspace_size);

/* ---- Fused BN + add + ReLU (the end of a ResNet residual block) ----------------------------
 * y = max(0, bn(x) + z): batch norm of x (as above, same statistics, running update and
 * errors), plus the shortcut z, then ReLU, in one pass over x and z (training forward: plus
 * the statistics pass) instead of three passes and an intermediate tensor. The backward
 * returns the gradients of both inputs in one pass after its reduction:
 *   g = dy masked by y > 0 (NaN y passes, as torch.relu),  dz = g,
 *   dx, dgamma, dbeta = the batch-norm backward of g (as nk_batchnorm_backward).
 * The sum is formed in double before the one rounding to the element type, so float32 results
 * may differ from a float32 framework's relu(bn(x) + z) by one rounding of bn(x).
 * x, z, y (and dy, dx, dz): the same dims and dtype, each in any layout. params as for batch
 * norm; the ReLU is always applied (NK_BN_FUSE_RELU adds nothing). Bad input returns an error
 * and writes nothing; results are bitwise identical for any thread count.
 * Workspace: nk_batchnorm_workspace_size(x) covers the forward and the backward. */

/* Training forward: as nk_batchnorm_forward_train with y = max(0, bn(x) + z). z required;
 * y may alias x or z exactly (in place), nothing else. */
nk_status nk_batchnorm_add_relu_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                              const nk_tensor *x, const nk_tensor *z,
                                              const nk_tensor *gamma, const nk_tensor *beta,
                                              nk_tensor *y, nk_tensor *save_mean,
                                              nk_tensor *save_invstd, nk_tensor *running_mean,
                                              nk_tensor *running_var,
                                              int64_t *num_batches_tracked, void *workspace,
                                              size_t workspace_size);

/* Inference forward: as nk_batchnorm_forward_inference with y = max(0, bn(x) + z), given
 * mean and var (C). y may alias x or z exactly. */
nk_status nk_batchnorm_add_relu_forward_inference(nk_ctx *ctx, const nk_batchnorm_params *p,
                                                  const nk_tensor *x, const nk_tensor *z,
                                                  const nk_tensor *gamma, const nk_tensor *beta,
                                                  const nk_tensor *mean, const nk_tensor *var,
                                                  nk_tensor *y);

/* Training backward from the forward's y (required: its ReLU mask) and saved statistics:
 *   dz = g,  dx = gamma * invstd * (g - dbeta / M - xhat * dgamma / M),
 *   dbeta = sum g,  dgamma = sum g * xhat,   g = dy where y > 0, else 0.
 * dx, dz, dgamma, dbeta each optional and overwritten. dx and dz may each be exactly dy (or
 * x, or y: every element is read before it is written) but may not overlap them otherwise,
 * and dx and dz may not share memory. */
nk_status nk_batchnorm_add_relu_backward(nk_ctx *ctx, const nk_batchnorm_params *p,
                                         const nk_tensor *x, const nk_tensor *dy,
                                         const nk_tensor *gamma, const nk_tensor *save_mean,
                                         const nk_tensor *save_invstd, const nk_tensor *y,
                                         nk_tensor *dx, nk_tensor *dz, nk_tensor *dgamma,
                                         nk_tensor *dbeta, void *workspace,
                                         size_t workspace_size);

/* ------------------------------------------------------------------------------------------ */
/* The normalization family                                                                     */
/* ------------------------------------------------------------------------------------------ */
/* Shared rules for every op below:
 *  - "row statistics" outputs (save_mean, save_invstd, ...) hold one value per normalized slice
 *    ("row"); they may have any shape with that many elements (e.g. ONNX's keepdims shape
 *    [N, 1, 1] or a flat [N]) and are read and written in the row-major order of their dims.
 *  - gamma/beta flags: NK_NORM_USE_SCALE / NK_NORM_USE_SHIFT (same bits as NK_BN_USE_*).
 *  - backward outputs (dx, dgamma, dbeta, ...) are each optional and are overwritten, not
 *    accumulated; dx may alias dy.
 *  - bad input returns an error and writes nothing, as for batch norm; results are bitwise
 *    identical for any thread count.
 *  - nk_<op>_workspace_size reports the scratch of both the forward and the backward. */
#define NK_NORM_USE_SCALE NK_BN_USE_SCALE
#define NK_NORM_USE_SHIFT NK_BN_USE_SHIFT
/* eps value meaning "the machine epsilon of the data type" (PyTorch's eps=None for RMSNorm). */
#define NK_EPS_DTYPE (-1.0)

/* ---- LayerNorm ----------------------------------------------------------------------------
 * Normalized axes [axis, rank): one row per index of the leading axes, K = prod(dims[axis:]).
 *   mean = sum x / K, var = sum (x - mean)^2 / K, invstd = 1 / sqrt(var + eps)
 *   y = (x - mean) * invstd * gamma[j] + beta[j]      (j = position within the row)
 *   backward: xhat = (x - mean) invstd, h = g * gamma
 *     dx = invstd (h - mean_j(h) - xhat mean_j(h xhat)),  dgamma[j] = sum_rows g xhat,
 *     dbeta[j] = sum_rows g
 * x: rank >= 1. gamma, beta: dims equal to x.dims[axis:] (any strides) or 1-D of K elements.
 * save_mean, save_invstd: R = prod(dims[:axis]) values (ONNX's Mean and InvStdDev). A float32
 * save_mean makes the backward recompute the row means from x (no precision lost).
 * R = 0 is a no-op (the backward writes zero dgamma/dbeta); K = 0 with rows is
 * NK_ERR_DEGENERATE. */
typedef struct nk_layernorm_params {
    double eps;     /* >= 0; PyTorch and ONNX default 1e-5 */
    int axis;       /* first normalized axis; negative counts from the end (ONNX); default -1 */
    unsigned flags; /* NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT */
} nk_layernorm_params;
void nk_layernorm_params_default(nk_layernorm_params *p); /* eps 1e-5, axis -1, scale+shift */
nk_status nk_layernorm_workspace_size(const nk_layernorm_params *p, const nk_tensor *x,
                                      size_t *bytes);
nk_status nk_layernorm_forward(nk_ctx *ctx, const nk_layernorm_params *p, const nk_tensor *x,
                               const nk_tensor *gamma, const nk_tensor *beta, nk_tensor *y,
                               nk_tensor *save_mean, nk_tensor *save_invstd, void *workspace,
                               size_t workspace_size);
nk_status nk_layernorm_backward(nk_ctx *ctx, const nk_layernorm_params *p, const nk_tensor *x,
                                const nk_tensor *dy, const nk_tensor *gamma,
                                const nk_tensor *save_mean, const nk_tensor *save_invstd,
                                nk_tensor *dx, nk_tensor *dgamma, nk_tensor *dbeta,
                                void *workspace, size_t workspace_size);

/* LayerNorm over the channel axis of an (N, C, ...) tensor in any layout, without a transpose
 * (ConvNeXt's "LayerNorm2d"): one row per (n, spatial position), K = C, gamma/beta (C).
 * p->axis is ignored. save_mean, save_invstd: N * prod(spatial) values. */
nk_status nk_layernorm_channels_workspace_size(const nk_tensor *x, size_t *bytes);
nk_status nk_layernorm_channels_forward(nk_ctx *ctx, const nk_layernorm_params *p,
                                        const nk_tensor *x, const nk_tensor *gamma,
                                        const nk_tensor *beta, nk_tensor *y,
                                        nk_tensor *save_mean, nk_tensor *save_invstd,
                                        void *workspace, size_t workspace_size);
nk_status nk_layernorm_channels_backward(nk_ctx *ctx, const nk_layernorm_params *p,
                                         const nk_tensor *x, const nk_tensor *dy,
                                         const nk_tensor *gamma, const nk_tensor *save_mean,
                                         const nk_tensor *save_invstd, nk_tensor *dx,
                                         nk_tensor *dgamma, nk_tensor *dbeta, void *workspace,
                                         size_t workspace_size);

/* ---- GroupNorm (PyTorch, ONNX GroupNormalization-21) --------------------------------------
 * x (N, C, ...), C divisible by num_groups G; one row per (n, g) over the C/G channels of the
 * group and every spatial position. gamma, beta per channel (C).
 *   y = (x - mean[n,g]) * invstd[n,g] * gamma[c] + beta[c]
 * save_mean, save_invstd: N * G values. x rank 2..8; y may alias x. One value per group is
 * allowed (y = beta); zero values per group with N > 0 is NK_ERR_DEGENERATE; N = 0 is a no-op
 * (the backward writes zero dgamma/dbeta). Non-finite row statistics give
 * NK_WARN_NONFINITE_STATS (y written). The backward recovers the exact row means from x. */
typedef struct nk_groupnorm_params {
    double eps;         /* >= 0; default 1e-5 */
    int64_t num_groups; /* >= 1, divides C */
    unsigned flags;     /* NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT */
} nk_groupnorm_params;
void nk_groupnorm_params_default(nk_groupnorm_params *p, int64_t num_groups);
nk_status nk_groupnorm_workspace_size(const nk_groupnorm_params *p, const nk_tensor *x,
                                      size_t *bytes);
nk_status nk_groupnorm_forward(nk_ctx *ctx, const nk_groupnorm_params *p, const nk_tensor *x,
                               const nk_tensor *gamma, const nk_tensor *beta, nk_tensor *y,
                               nk_tensor *save_mean, nk_tensor *save_invstd, void *workspace,
                               size_t workspace_size);
nk_status nk_groupnorm_backward(nk_ctx *ctx, const nk_groupnorm_params *p, const nk_tensor *x,
                                const nk_tensor *dy, const nk_tensor *gamma,
                                const nk_tensor *save_mean, const nk_tensor *save_invstd,
                                nk_tensor *dx, nk_tensor *dgamma, nk_tensor *dbeta,
                                void *workspace, size_t workspace_size);

/* ---- InstanceNorm (PyTorch InstanceNorm*d, ONNX InstanceNormalization) --------------------
 * One row per (n, c) over the spatial axes. gamma, beta (C) optional by flags (PyTorch's
 * affine=False default: flags 0). Running statistics (PyTorch track_running_stats=True):
 *   r = (1 - m) r + m * mean_n(stat[n, c]), the variance unbiased over the spatial count.
 * Training needs more than one spatial value per instance (NK_ERR_DEGENERATE otherwise).
 * save_mean, save_invstd: N * C values. x rank 3..8. Running statistics both or neither; the
 * momentum is checked only when they are given; inference needs running_var + eps > 0.
 * N = 0 or C = 0 is a no-op; non-finite statistics warn and leave the running ones untouched. */
typedef struct nk_instancenorm_params {
    double eps;      /* >= 0; default 1e-5 */
    double momentum; /* in [0, 1], PyTorch convention; default 0.1 */
    unsigned flags;  /* NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT */
} nk_instancenorm_params;
void nk_instancenorm_params_default(nk_instancenorm_params *p); /* 1e-5, 0.1, flags 0 */
nk_status nk_instancenorm_workspace_size(const nk_tensor *x, size_t *bytes);
nk_status nk_instancenorm_forward_train(nk_ctx *ctx, const nk_instancenorm_params *p,
                                        const nk_tensor *x, const nk_tensor *gamma,
                                        const nk_tensor *beta, nk_tensor *y,
                                        nk_tensor *save_mean, nk_tensor *save_invstd,
                                        nk_tensor *running_mean, nk_tensor *running_var,
                                        void *workspace, size_t workspace_size);
/* Inference with running statistics (PyTorch use_input_stats=False). */
nk_status nk_instancenorm_forward_inference(nk_ctx *ctx, const nk_instancenorm_params *p,
                                            const nk_tensor *x, const nk_tensor *gamma,
                                            const nk_tensor *beta, const nk_tensor *running_mean,
                                            const nk_tensor *running_var, nk_tensor *y);
nk_status nk_instancenorm_backward(nk_ctx *ctx, const nk_instancenorm_params *p,
                                   const nk_tensor *x, const nk_tensor *dy,
                                   const nk_tensor *gamma, const nk_tensor *save_mean,
                                   const nk_tensor *save_invstd, nk_tensor *dx,
                                   nk_tensor *dgamma, nk_tensor *dbeta, void *workspace,
                                   size_t workspace_size);

/* ---- RMSNorm (PyTorch torch.nn.RMSNorm, ONNX RMSNormalization-23) -------------------------
 * Rows as for LayerNorm (axes [axis, rank)), no mean subtraction, no shift:
 *   invrms = 1 / sqrt(sum x^2 / K + eps),  y = x * invrms * gamma[j]
 *   backward: h = g * gamma, dx = invrms (h - x invrms^2 mean_j(h x)),
 *             dgamma[j] = sum_rows g x invrms
 * eps = NK_EPS_DTYPE uses the data type's machine epsilon (PyTorch's default eps=None).
 * save_invrms: R values. */
typedef struct nk_rmsnorm_params {
    double eps;     /* >= 0 or NK_EPS_DTYPE (default) */
    int axis;       /* default -1 */
    unsigned flags; /* NK_NORM_USE_SCALE (NK_NORM_USE_SHIFT is an error: RMSNorm has no shift) */
} nk_rmsnorm_params;
void nk_rmsnorm_params_default(nk_rmsnorm_params *p); /* NK_EPS_DTYPE, axis -1, scale */
nk_status nk_rmsnorm_workspace_size(const nk_rmsnorm_params *p, const nk_tensor *x,
                                    size_t *bytes);
nk_status nk_rmsnorm_forward(nk_ctx *ctx, const nk_rmsnorm_params *p, const nk_tensor *x,
                             const nk_tensor *gamma, nk_tensor *y, nk_tensor *save_invrms,
                             void *workspace, size_t workspace_size);
nk_status nk_rmsnorm_backward(nk_ctx *ctx, const nk_rmsnorm_params *p, const nk_tensor *x,
                              const nk_tensor *dy, const nk_tensor *gamma,
                              const nk_tensor *save_invrms, nk_tensor *dx, nk_tensor *dgamma,
                              void *workspace, size_t workspace_size);

/* ---- MeanVarianceNormalization (ONNX) ------------------------------------------------------
 * Rows over the axes whose bit is set in axes_mask (ONNX default axes [0, 2, 3]):
 *   std = sqrt(sum (x - mean)^2 / K),  y = (x - mean) / (std + 1e-9)   (1e-9 outside the sqrt)
 *   backward: s = std + 1e-9, dx = (g - mean(g)) / s - (x - mean) sum(g (x - mean)) / (K s^2 std)
 *             (the last term is 0 where std = 0)
 * save_mean, save_std: R values (rows = index over the other axes). */
#define NK_MVN_STD_EPS 1e-9
typedef struct nk_mvn_params {
    unsigned axes_mask; /* bit i: axis i is reduced; default (1<<0)|(1<<2)|(1<<3) */
} nk_mvn_params;
void nk_mvn_params_default(nk_mvn_params *p);
nk_status nk_mvn_workspace_size(const nk_mvn_params *p, const nk_tensor *x, size_t *bytes);
nk_status nk_mvn_forward(nk_ctx *ctx, const nk_mvn_params *p, const nk_tensor *x, nk_tensor *y,
                         nk_tensor *save_mean, nk_tensor *save_std, void *workspace,
                         size_t workspace_size);
nk_status nk_mvn_backward(nk_ctx *ctx, const nk_mvn_params *p, const nk_tensor *x,
                          const nk_tensor *dy, const nk_tensor *save_mean,
                          const nk_tensor *save_std, nk_tensor *dx, void *workspace,
                          size_t workspace_size);

/* ---- Batch Renormalization (Ioffe 2017) ----------------------------------------------------
 * With batch statistics (mean_b, sigma_b = sqrt(var_b + eps)) and running ones
 * (sigma = sqrt(running_var + eps)):
 *   r = clip(sigma_b / sigma, 1/rmax, rmax),  d = clip((mean_b - running_mean) / sigma, -dmax, dmax)
 *   y = ((x - mean_b) / sigma_b * r + d) * gamma + beta
 * r and d are constants for the backward (stop-gradient), so
 *   dx = gamma r invstd (g - mean(g) - xhat mean(g xhat)),  dgamma = sum g (xhat r + d)
 * Running statistics are then updated as batch norm's (PyTorch convention, unbiased variance).
 * running_mean, running_var are required. save_r, save_d: (C), optional in the forward,
 * required by the backward. Inference: nk_batchnorm_forward_inference with running stats.
 * running_var + eps must be finite and > 0; rmax/dmax may be INFINITY (no clipping). The
 * backward checks only eps and flags of p. nk_batchnorm_workspace_size(x) is enough scratch for
 * the forward and the backward. */
typedef struct nk_batchrenorm_params {
    double eps;      /* default 1e-5 */
    double momentum; /* PyTorch convention, default 0.01 (the paper's update rate) */
    double rmax;     /* >= 1 */
    double dmax;     /* >= 0 */
    unsigned flags;  /* NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT */
} nk_batchrenorm_params;
void nk_batchrenorm_params_default(nk_batchrenorm_params *p); /* rmax 1, dmax 0 (= BN) */
/* The paper's schedule: rmax = 1, dmax = 0 for the first 5000 steps, then linear ramps
 * reaching rmax = 3 at step 40000 and dmax = 5 at step 25000 (constant after). */
void nk_batchrenorm_schedule(int64_t step, double *rmax, double *dmax);
nk_status nk_batchrenorm_forward_train(nk_ctx *ctx, const nk_batchrenorm_params *p,
                                       const nk_tensor *x, const nk_tensor *gamma,
                                       const nk_tensor *beta, nk_tensor *y,
                                       nk_tensor *save_mean, nk_tensor *save_invstd,
                                       nk_tensor *save_r, nk_tensor *save_d,
                                       nk_tensor *running_mean, nk_tensor *running_var,
                                       void *workspace, size_t workspace_size);
nk_status nk_batchrenorm_backward(nk_ctx *ctx, const nk_batchrenorm_params *p,
                                  const nk_tensor *x, const nk_tensor *dy,
                                  const nk_tensor *gamma, const nk_tensor *save_mean,
                                  const nk_tensor *save_invstd, const nk_tensor *save_r,
                                  const nk_tensor *save_d, nk_tensor *dx, nk_tensor *dgamma,
                                  nk_tensor *dbeta, void *workspace, size_t workspace_size);

/* ---- Ghost (virtual) batch normalization ----------------------------------------------------
 * The batch is split along N into sub-batches of virtual_batch samples (the last may be
 * smaller); each is batch-normalized with its own statistics; the running statistics are
 * updated once per sub-batch, in order. save_mean, save_invstd: (ceil(N / virtual_batch), C)
 * = G * C values, sub-batch major (each row of C values evenly spaced in memory).
 * Scratch: nk_batchnorm_workspace_size(x) for the forward; the backward needs that plus
 * 4 * C * sizeof(double) + 8 bytes. */
nk_status nk_ghost_batchnorm_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                           int64_t virtual_batch, const nk_tensor *x,
                                           const nk_tensor *gamma, const nk_tensor *beta,
                                           nk_tensor *y, nk_tensor *save_mean,
                                           nk_tensor *save_invstd, nk_tensor *running_mean,
                                           nk_tensor *running_var, int64_t *num_batches_tracked,
                                           void *workspace, size_t workspace_size);
nk_status nk_ghost_batchnorm_backward(nk_ctx *ctx, const nk_batchnorm_params *p,
                                      int64_t virtual_batch, const nk_tensor *x,
                                      const nk_tensor *dy, const nk_tensor *gamma,
                                      const nk_tensor *save_mean, const nk_tensor *save_invstd,
                                      const nk_tensor *y, nk_tensor *dx, nk_tensor *dgamma,
                                      nk_tensor *dbeta, void *workspace, size_t workspace_size);

/* ---- Masked batch normalization -----------------------------------------------------------
 * mask: NK_U8 (or float, nonzero = valid) with x's dims but 1 on axis 1 (e.g. (N, 1, L) for
 * padded sequences). Statistics use only the valid positions (M = their count, > 1 required);
 * valid outputs are batch norm's, masked-out outputs are 0 and get zero gradient (values at
 * masked positions, NaN included, are never read into the statistics). No inference function:
 * use nk_batchnorm_forward_inference and zero the masked positions.
 * nk_batchnorm_workspace_size(x) is enough scratch for the forward and the backward. */
nk_status nk_masked_batchnorm_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                            const nk_tensor *x, const nk_tensor *mask,
                                            const nk_tensor *gamma, const nk_tensor *beta,
                                            nk_tensor *y, nk_tensor *save_mean,
                                            nk_tensor *save_invstd, nk_tensor *running_mean,
                                            nk_tensor *running_var,
                                            int64_t *num_batches_tracked, void *workspace,
                                            size_t workspace_size);
nk_status nk_masked_batchnorm_backward(nk_ctx *ctx, const nk_batchnorm_params *p,
                                       const nk_tensor *x, const nk_tensor *mask,
                                       const nk_tensor *dy, const nk_tensor *gamma,
                                       const nk_tensor *save_mean, const nk_tensor *save_invstd,
                                       const nk_tensor *y, nk_tensor *dx, nk_tensor *dgamma,
                                       nk_tensor *dbeta, void *workspace, size_t workspace_size);

/* ---- Recurrent batch normalization (Cooijmans et al. 2016) --------------------------------
 * Separate running statistics per time step: running_mean, running_var and
 * num_batches_tracked hold t_max slots ((t_max, C) and (t_max)); step t uses slot
 * min(t, t_max - 1), so steps beyond t_max reuse the last slot. gamma, beta are shared across
 * steps; the paper advises initialising gamma to 0.1 (NK_RECURRENT_BN_GAMMA_INIT) so the
 * recurrent nonlinearity starts in its linear range. The backward is nk_batchnorm_backward.
 * The running statistics may have any shape with t_max * C values. t < 0 or t_max < 1 is
 * NK_ERR_VALUE. */
#define NK_RECURRENT_BN_GAMMA_INIT 0.1
nk_status nk_recurrent_batchnorm_forward_train(nk_ctx *ctx, const nk_batchnorm_params *p,
                                               int64_t t, int64_t t_max, const nk_tensor *x,
                                               const nk_tensor *gamma, const nk_tensor *beta,
                                               nk_tensor *y, nk_tensor *save_mean,
                                               nk_tensor *save_invstd, nk_tensor *running_mean,
                                               nk_tensor *running_var,
                                               int64_t *num_batches_tracked, void *workspace,
                                               size_t workspace_size);
nk_status nk_recurrent_batchnorm_forward_inference(nk_ctx *ctx, const nk_batchnorm_params *p,
                                                   int64_t t, int64_t t_max,
                                                   const nk_tensor *x, const nk_tensor *gamma,
                                                   const nk_tensor *beta,
                                                   const nk_tensor *running_mean,
                                                   const nk_tensor *running_var, nk_tensor *y);

/* ---- Weight standardization (Qiao et al. 2019) ---------------------------------------------
 * w (O, ...): each output channel o standardized over its K = prod(dims[1:]) weights:
 *   w_hat = (w - mean_o) / sqrt(var_o + eps)      (biased variance, eps inside the sqrt)
 * backward as LayerNorm without affine. save_mean, save_invstd: (O), optional in the forward,
 * required by the backward. w has rank 2..8. Scratch comes from the context. */
nk_status nk_weight_standardize_forward(nk_ctx *ctx, double eps, const nk_tensor *w,
                                        nk_tensor *w_hat, nk_tensor *save_mean,
                                        nk_tensor *save_invstd);
nk_status nk_weight_standardize_backward(nk_ctx *ctx, double eps, const nk_tensor *w,
                                         const nk_tensor *dw_hat, const nk_tensor *save_mean,
                                         const nk_tensor *save_invstd, nk_tensor *dw);

/* ---- Weight normalization (Salimans & Kingma 2016; PyTorch weight_norm) --------------------
 * w = g * v / ||v||, the norm over every axis but `dim` (PyTorch's dim=0 default: one norm
 * per output row); dim = NK_WEIGHT_NORM_WHOLE takes one norm over the whole tensor.
 * g: v.dims[dim] values (1 value for the whole-tensor norm). save_norm: as g. v has rank >= 1.
 * NOTE: dim = -1 is the last axis here; PyTorch's weight_norm(dim=-1) means the whole tensor.
 * A slice whose norm is 0 is NK_ERR_DEGENERATE.
 *   backward: dg = sum(dw v) / ||v||,  dv = g / ||v|| (dw - v sum(dw v) / ||v||^2) */
#define NK_WEIGHT_NORM_WHOLE (-1000)
nk_status nk_weight_norm_forward(nk_ctx *ctx, int dim, const nk_tensor *v, const nk_tensor *g,
                                 nk_tensor *w, nk_tensor *save_norm);
nk_status nk_weight_norm_backward(nk_ctx *ctx, int dim, const nk_tensor *v, const nk_tensor *g,
                                  const nk_tensor *dw, const nk_tensor *save_norm,
                                  nk_tensor *dv, nk_tensor *dg);

/* ---- Cosine normalization for a linear layer (Luo et al. 2017) -----------------------------
 * x (N, I), w (O, I), y (N, O):  y[n,o] = (w_o . x_n) / (|w_o| |x_n|),  |v| = sqrt(v.v + eps)
 * save_xnorm (N), save_wnorm (O) optional in the forward, required by the backward.
 * y must not share memory with x or w; an all-zero row with eps = 0 is NK_ERR_DEGENERATE. */
nk_status nk_cosine_linear_forward(nk_ctx *ctx, double eps, const nk_tensor *x,
                                   const nk_tensor *w, nk_tensor *y, nk_tensor *save_xnorm,
                                   nk_tensor *save_wnorm);
nk_status nk_cosine_linear_backward(nk_ctx *ctx, double eps, const nk_tensor *x,
                                    const nk_tensor *w, const nk_tensor *dy,
                                    const nk_tensor *save_xnorm, const nk_tensor *save_wnorm,
                                    nk_tensor *dx, nk_tensor *dw);

/* ---- Streaming normalization (after Liao et al. 2016), simplest useful form ----------------
 * For online learning (batch size 1 works): per-channel statistics of everything seen so far
 * are kept in running_mean, running_var (biased) and *count (values seen). Each call first
 * merges the batch's M values per channel into them with weight w = M / (count + M) (the exact
 * running average) until w falls below momentum, then with w = momentum (an exponential
 * average that forgets):
 *   mean' = (1 - w) mean + w mean_b,  var' = (1 - w) var + w var_b + w (1 - w) (mean_b - mean)^2
 * then normalizes the batch with the updated statistics: y = (x - mean') invstd' gamma + beta.
 * The statistics are treated as constants by the backward (dx = gamma invstd' g): it does not
 * back-propagate through them, and it keeps no short/long-term split or gradient
 * normalization from the paper. save_mean, save_invstd: (C). momentum must be in (0, 1]. The
 * state is not read while *count = 0; a corrupted state (count > 0 with a negative or
 * non-finite variance) is NK_ERR_VALUE; on a warning the state is kept; an empty batch is a
 * no-op. nk_batchnorm_workspace_size(x) is enough scratch for the forward and the backward. */
typedef struct nk_streamnorm_params {
    double eps;      /* default 1e-5 */
    double momentum; /* in (0, 1], the smallest weight of a new batch; default 0.01 */
    unsigned flags;  /* NK_NORM_USE_SCALE | NK_NORM_USE_SHIFT */
} nk_streamnorm_params;
void nk_streamnorm_params_default(nk_streamnorm_params *p);
nk_status nk_streamnorm_forward(nk_ctx *ctx, const nk_streamnorm_params *p, const nk_tensor *x,
                                const nk_tensor *gamma, const nk_tensor *beta, nk_tensor *y,
                                nk_tensor *running_mean, nk_tensor *running_var,
                                int64_t *count, nk_tensor *save_mean, nk_tensor *save_invstd,
                                void *workspace, size_t workspace_size);
nk_status nk_streamnorm_backward(nk_ctx *ctx, const nk_streamnorm_params *p,
                                 const nk_tensor *x, const nk_tensor *dy,
                                 const nk_tensor *gamma, const nk_tensor *save_mean,
                                 const nk_tensor *save_invstd, nk_tensor *dx, nk_tensor *dgamma,
                                 nk_tensor *dbeta, void *workspace, size_t workspace_size);

#if defined(NK_BUILDING_LIBRARY) && defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* NORMKIT_H */
