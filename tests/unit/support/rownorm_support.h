/* Test support for the row-normalization tests (layer norm, RMS norm, MVN, weight
 * standardization): seeded random numbers, tensors in several layouts with sentinel-filled
 * memory, element access by row-major index, and an independent float64 oracle written with
 * plain index loops (no library code). Every name starts with rnt_. */
#ifndef RNT_SUPPORT_H
#define RNT_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#include "normkit.h"

/* ---- random numbers (xorshift64*, seeded) ---- */
typedef struct rnt_rng {
    uint64_t s;
} rnt_rng;
/* Seed: $RNT_SEED if set, else `dflt`. Printed by the tests when they fail. */
uint64_t rnt_seed(uint64_t dflt);
void rnt_rng_init(rnt_rng *r, uint64_t seed);
double rnt_uniform(rnt_rng *r); /* [0, 1) */
double rnt_normal(rnt_rng *r);

/* ---- tensors ---- */
enum rnt_layout {
    RNT_CONTIG = 0,  /* row-major */
    RNT_CHLAST = 1,  /* channels-last (axis 1 fastest), rank >= 2 */
    RNT_REVERSED = 2,/* axes in reverse memory order (column-major) */
    RNT_PADDED = 3,  /* row-major with a gap of 3 elements after every innermost run and row */
    RNT_NLAYOUTS = 4
};
#define RNT_SENTINEL_BYTE 0xA5

typedef struct rnt_buf {
    void *mem;      /* allocation, filled with RNT_SENTINEL_BYTE */
    size_t bytes;
    int64_t numel;
    nk_tensor t;    /* the view */
} rnt_buf;

/* Allocates a tensor of dims in the given layout, memory filled with the sentinel byte.
 * Returns 0 on success. ndim may be 0 (scalar). */
int rnt_alloc(rnt_buf *b, nk_dtype dt, int ndim, const int64_t *dims, int layout);
void rnt_free(rnt_buf *b);
/* Every byte of the allocation still holds the sentinel. */
int rnt_untouched(const rnt_buf *b);
/* Copy of the allocation's bytes (to check "unchanged" on initialized buffers). */
void *rnt_snapshot(const rnt_buf *b);
int rnt_same_as(const rnt_buf *b, const void *snap);

/* Element at row-major flat index i of t (any rank, any strides). */
double rnt_get(const nk_tensor *t, int64_t i);
void rnt_set(nk_tensor *t, int64_t i, double v);
int64_t rnt_numel(const nk_tensor *t);
/* t[i] = loc + scale * N(0, 1) for every element; values rounded to t's dtype. */
void rnt_fill_normal(nk_tensor *t, rnt_rng *r, double loc, double scale);
/* dst[i] = element i of t (row-major) as double. */
void rnt_to_doubles(const nk_tensor *t, double *dst);
/* The same in a new malloc'd array (at least one element). */
double *rnt_doubles_of(const nk_tensor *t);

/* ---- oracle: rows = indices of the kept axes, K = values over the others ---- */
enum rnt_kind { RNT_LN = 0, RNT_RMS = 1, RNT_MVN = 2 };

/* The mask of the leading (row) axes when normalizing from `axis` (negative: from the end). */
unsigned rnt_leading_mask(int axis, int ndim);
/* Rows and row length of dims under kept_mask. */
void rnt_rows(int ndim, const int64_t *dims, unsigned kept_mask, int64_t *R, int64_t *K);
/* Forward in long double. x: row-major values of a tensor of dims; gamma/beta: K values in the
 * normalized axes' row-major order, or NULL. y: numel values (row-major of dims); s0, s1: R
 * values (LN: mean, invstd; RMS: -, invrms; MVN: mean, std), each may be NULL. */
void rnt_oracle_forward(int kind, double eps, int ndim, const int64_t *dims, unsigned kept_mask,
                        const double *x, const double *gamma, const double *beta, double *y,
                        double *s0, double *s1);
/* Backward by the closed-form gradient, in long double (checked against finite differences
 * by the tests). Outputs may be NULL. */
void rnt_oracle_backward(int kind, double eps, int ndim, const int64_t *dims,
                         unsigned kept_mask, const double *x, const double *dy,
                         const double *gamma, double *dx, double *dgamma, double *dbeta);
/* sum_i w[i] * y[i] of the oracle forward (the loss used for finite differences). */
double rnt_oracle_loss(int kind, double eps, int ndim, const int64_t *dims, unsigned kept_mask,
                       const double *x, const double *gamma, const double *beta,
                       const double *w);

/* ---- THE tolerance table of the row-normalization tests (reasons in rownorm_support.c) ----
 * A comparison passes when max|got - want| <= tol * max|want| (elementwise, scaled by the
 * largest expected magnitude of the compared array). */
typedef enum rnt_tol_key {
    RNT_TOL_Y = 0,     /* forward output vs the long-double oracle */
    RNT_TOL_STAT,      /* saved row statistics */
    RNT_TOL_DX,        /* dx vs the closed-form oracle */
    RNT_TOL_DPARAM,    /* dgamma, dbeta */
    RNT_TOL_FD,        /* library backward vs central finite differences of the library forward */
    RNT_TOL_BIGMEAN,   /* float32 rows with mean 1e4 and std 1e-2 */
    RNT_TOL_OPT_REF,   /* optimized kernels vs the reference kernels, same inputs */
    RNT_NTOL
} rnt_tol_key;
double rnt_tol(rnt_tol_key k, nk_dtype dt);
/* Compares and, on failure, prints what, the seed, the worst index and the values. 1 = pass. */
int rnt_check(const char *what, uint64_t seed, const double *got, const double *want, int64_t n,
              rnt_tol_key k, nk_dtype dt);

/* out[i] = (loss(v + h e_i) - loss(v - h e_i)) / 2h, h = 1e-5 max(1, |v_i|), for i < m;
 * loss(arg) must read v. */
void rnt_fd_grad(double *v, int64_t m, double *out, double (*loss)(void *arg), void *arg);

/* max_i |a[i] - b[i]| and max_i |b[i]| */
double rnt_max_abs_diff(const double *a, const double *b, int64_t n);
double rnt_max_abs(const double *a, int64_t n);

#endif
