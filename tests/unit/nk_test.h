/* Shared helpers of the unit tests: the tolerance table, a seeded RNG, test tensors in every
 * layout, comparisons that print the case and seed on failure, and the naive float64 oracle.
 *
 * Oracles used by the tests (never values printed by the code under test):
 *   - exactly representable inputs whose statistics are exact (TOL_EXACT),
 *   - the naive float64 two-pass implementation in support/nk_test.c (nko_*),
 *   - central finite differences in double (test_batchnorm_gradcheck.c).
 *
 * Reproducing a failure: every failure prints the base seed, the salt of the RNG in use and the
 * case (shape, layout, dtype). NK_TEST_SEED=<n> in the environment replaces the base seed. */
#ifndef NK_TEST_H
#define NK_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "normkit.h"

/* ------------------------------------------------------------------------------------------ */
/* Tolerances: the one table. A check passes when |got - want| <= atol + rtol * |want|.         */
/* ------------------------------------------------------------------------------------------ */

/*   id               rtol      atol     reason */
#define NKT_TOLERANCES(X)                                                                        \
    X(TOL_EXACT, 0.0, 0.0,                                                                       \
      "inputs are small dyadic rationals: every sum, mean, deviation and square is exact in "    \
      "double whatever the order, so the result must be exact")                                  \
    X(TOL_F64_STATS, 1e-12, 1e-12,                                                               \
      "double reductions of the same values in another order (fixed blocks + Chan merge vs "     \
      "one pass): random-walk error ~sqrt(M) ulp, ~1e-14 for M ~ 1e5; atol for means near 0 "    \
      "of data with |x| <= ~10")                                                                 \
    X(TOL_F64_RESULT, 1e-12, 1e-12,                                                              \
      "float64 outputs: library and oracle round differently (gamma * invstd folded into one "   \
      "factor, (1-f) r + f b vs r + (b - r) / t): a few ulp of O(10) intermediates")             \
    X(TOL_F32_RESULT, 2.4e-7, 1e-12,                                                             \
      "float32 outputs are a double result rounded once (<= 0.5 ulp = 2^-24 relative); the "     \
      "double results of library and oracle differ in the last bits and may round to "           \
      "neighbouring floats: 2^-22 = 2 ulp; atol covers outputs cancelling to ~0 (|err| ~1e-16)") \
    X(TOL_ILLCOND_VAR, 1e-9, 0.0,                                                                \
      "float32 data with mean 1e4 and std 1e-2 (condition (mean/std)^2 = 1e12): the design "     \
      "requires < 1e-6 (E[x^2]-E[x]^2 in double is off by ~1e-4 here, float32 deviations by "    \
      "~1e-2); two-pass blocks + Chan merge in double measure ~1e-12, 1e-9 keeps 1000x margin")  \
    X(TOL_FMA_TERMS, 4.4408920985006262e-16, 0.0,                                                \
      "optimized element-wise kernels (y = fma(x - m, a, b), dx = fma(kx, x - m, fma(kg, g, "   \
      "k0))) vs the reference's rounded products: each side is within 2u of the exact value, "  \
      "u = 2^-53, times the sum S of the magnitudes of the terms, so |opt - ref| <= rtol * S "   \
      "with rtol = 4u, plus one ulp of the output type when it is float32 (both round the "      \
      "double result once); used as |got - want| <= ulp + rtol * S (test_kernels_sweep.c)")     \
    X(TOL_GRADCHECK, 1e-6, 1e-8,                                                                 \
      "central differences in double with h = 1e-6: truncation ~h^2 f''' ~ 1e-11; rounding of "  \
      "y (1 ulp per element, ~50 elements, loss summed in long double) / 2h gives absolute "     \
      "errors up to ~2e-9 (measured over 100 seeds), hence atol 1e-8 for gradients near 0")

typedef enum nkt_tol_id {
#define NKT_TOL_ENUM(id, rtol, atol, why) id,
    NKT_TOLERANCES(NKT_TOL_ENUM)
#undef NKT_TOL_ENUM
        NKT_TOL_COUNT
} nkt_tol_id;

typedef struct nkt_tol {
    const char *name;
    double rtol, atol;
    const char *reason;
} nkt_tol;

const nkt_tol *nkt_tol_get(nkt_tol_id id);
/* The tolerance for outputs stored as dt (float32 or float64). */
nkt_tol_id nkt_tol_result(nk_dtype dt);

/* ------------------------------------------------------------------------------------------ */
/* Seeded RNG and the case description printed on failure                                       */
/* ------------------------------------------------------------------------------------------ */

#define NKT_DEFAULT_SEED 20240607u

typedef struct nkt_rng {
    uint64_t s;
} nkt_rng;

/* Base seed (NK_TEST_SEED or NKT_DEFAULT_SEED). */
uint64_t nkt_seed(void);
/* An RNG for one case: base seed mixed with salt (printed on failure). */
nkt_rng nkt_rng_make(uint64_t salt);
uint64_t nkt_next(nkt_rng *r);
double nkt_uniform(nkt_rng *r, double lo, double hi);
double nkt_normal(nkt_rng *r, double mean, double sd);
int64_t nkt_randint(nkt_rng *r, int64_t lo, int64_t hi); /* in [lo, hi] */
void nkt_fill_uniform(nkt_rng *r, double *a, int64_t n, double lo, double hi);
void nkt_fill_normal(nkt_rng *r, double *a, int64_t n, double mean, double sd);

/* Sets the description printed with every failure until the next call. */
void nkt_case(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *nkt_case_str(void);
/* Prints the case and seed (used by the failure paths below). */
void nkt_print_context(void);
/* "[a, b, c]" */
const char *nkt_dims_str(int ndim, const int64_t *dims, char *buf, size_t n);
const char *nkt_dtype_name(nk_dtype dt);

/* ------------------------------------------------------------------------------------------ */
/* Test tensors: a buffer larger than the view, filled with a sentinel around it                */
/* ------------------------------------------------------------------------------------------ */

typedef enum nkt_layout {
    NKT_CONTIG,  /* row-major (NCHW family) */
    NKT_CHLAST,  /* channels last (NHWC family) */
    NKT_STRIDED, /* row-major order, innermost stride 2 (every other element), each outer axis
                    padded by one element: no two axes merge, the odometer walks every axis */
    NKT_NUM_LAYOUTS
} nkt_layout;

const char *nkt_layout_name(nkt_layout l);

/* Value every element of a buffer holds before an op writes it (exact in float32). */
#define NKT_SENTINEL (-31415.0)

typedef struct nkt_buf {
    nk_tensor t;       /* the view handed to the library */
    void *buf;         /* owning allocation */
    int64_t buf_elems; /* elements in buf */
    int64_t lead;      /* elements before the view's first element (1 = unaligned pointer) */
    int64_t numel;     /* elements in the view */
    void *snap;        /* copy taken by nkt_snap */
} nkt_buf;

/* Allocates a view of dims in layout lay, its first element `lead` elements into a buffer
 * filled with NKT_SENTINEL. ndim may be 1 (a per-channel vector). */
void nkt_alloc(nkt_buf *b, nk_dtype dt, int ndim, const int64_t *dims, nkt_layout lay,
               int64_t lead);
/* A per-channel vector of n elements (nk_vec), `lead` elements into its buffer. */
void nkt_alloc_vec(nkt_buf *b, nk_dtype dt, int64_t n, int64_t lead);
void nkt_free(nkt_buf *b);
/* Writes logical (row-major) values into the view; v[] is replaced by the stored values
 * (rounded to float32 when dt is float32), so an oracle sees exactly what the library sees. */
void nkt_set(nkt_buf *b, double *v);
/* Reads the view into logical row-major order. */
void nkt_get(const nkt_buf *b, double *v);
/* Element offset (in elements, from t->data) of logical row-major index lin. */
int64_t nkt_offset(const nk_tensor *t, int64_t lin);
/* Fails unless every buffer element outside the view still holds NKT_SENTINEL. */
#define NKT_GAPS_UNTOUCHED(b)                                                                    \
    do {                                                                                         \
        if (!nkt_gaps_untouched(b)) _fail(__FILE__, __LINE__);                                   \
    } while (0)
int nkt_gaps_untouched(const nkt_buf *b);
/* Snapshot of the whole buffer, and comparison with it. */
void nkt_snap(nkt_buf *b);
int nkt_same_as_snap(const nkt_buf *b);

/* ------------------------------------------------------------------------------------------ */
/* Checks                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* 1 if |got[i] - want[i]| <= atol + rtol |want[i]| for all i (NaN only matches NaN); else
 * prints what, the first and the worst offending index, the tolerance, the case and the seed. */
int nkt_close(const char *what, const double *got, const double *want, int64_t n,
              nkt_tol_id tol);
#define NKT_CLOSE(what, got, want, n, tol)                                                       \
    do {                                                                                         \
        if (!nkt_close((what), (got), (want), (n), (tol))) _fail(__FILE__, __LINE__);            \
    } while (0)

int nkt_same_bytes(const char *what, const void *a, const void *b, size_t bytes);
#define NKT_SAME_BYTES(what, a, b, bytes)                                                        \
    do {                                                                                         \
        if (!nkt_same_bytes((what), (a), (b), (bytes))) _fail(__FILE__, __LINE__);               \
    } while (0)

/* Status check printing both names, the context's last error, the case and the seed. */
int nkt_status_is(const char *call, nk_status got, nk_status want, const nk_ctx *ctx);
#define NKT_STATUS(ctx, call, want)                                                              \
    do {                                                                                         \
        if (!nkt_status_is(#call, (call), (want), (ctx))) _fail(__FILE__, __LINE__);             \
    } while (0)
#define NKT_OK(ctx, call) NKT_STATUS(ctx, call, NK_OK)

/* Context message contains every non-NULL needle. */
int nkt_msg_has(const nk_ctx *ctx, const char *needle1, const char *needle2);
#define NKT_MSG_HAS(ctx, n1, n2)                                                                 \
    do {                                                                                         \
        if (!nkt_msg_has((ctx), (n1), (n2))) _fail(__FILE__, __LINE__);                          \
    } while (0)

/* Generic failure with the case and seed. */
#define NKT_FAIL(...)                                                                            \
    do {                                                                                         \
        print_error(__VA_ARGS__);                                                                \
        print_error("\n");                                                                       \
        nkt_print_context();                                                                     \
        _fail(__FILE__, __LINE__);                                                               \
    } while (0)
#define NKT_CHECK(cond, ...)                                                                     \
    do {                                                                                         \
        if (!(cond)) NKT_FAIL("check failed: " #cond ": " __VA_ARGS__);                          \
    } while (0)

/* Allocation that fails the test instead of returning NULL. */
void *nkt_malloc(size_t bytes);
nk_ctx *nkt_ctx(int threads);

/* ------------------------------------------------------------------------------------------ */
/* Naive float64 oracle over logical row-major (N, C, S...) arrays                              */
/* ------------------------------------------------------------------------------------------ */

int64_t nko_numel(int ndim, const int64_t *dims);
/* values per channel: N * prod(S) */
int64_t nko_per_channel(int ndim, const int64_t *dims);
/* channel of logical index i */
int64_t nko_channel(int ndim, const int64_t *dims, int64_t i);

/* Two-pass mean and biased variance per channel. */
void nko_moments(int ndim, const int64_t *dims, const double *x, double *mean, double *var);

/* Training forward (p's flags, eps, momentum convention). gamma / beta are read only when
 * the flags use them. rm, rv (in/out) may be NULL; nbt (in/out) may be NULL. Running
 * statistics are updated only when every batch statistic is finite. */
void nko_bn_train(const nk_batchnorm_params *p, int ndim, const int64_t *dims, const double *x,
                  const double *gamma, const double *beta, double *y, double *mean,
                  double *invstd, double *rm, double *rv, int64_t *nbt);
void nko_bn_infer(const nk_batchnorm_params *p, int ndim, const int64_t *dims, const double *x,
                  const double *gamma, const double *beta, const double *mean,
                  const double *var, double *y);
/* Backward by the textbook formula. batch_stats: mean = the exact batch mean, aux = invstd of
 * the batch (training backward); else mean, aux = var (frozen statistics). y is the forward
 * output (ReLU mask: g = 0 where y <= 0; NaN passes, as torch.relu's backward). */
void nko_bn_backward(const nk_batchnorm_params *p, int ndim, const int64_t *dims,
                     const double *x, const double *dy, const double *gamma, const double *mean,
                     const double *aux, const double *y, int batch_stats, double *dx,
                     double *dgamma, double *dbeta);

/* ------------------------------------------------------------------------------------------ */
/* Batch-norm fixture: every tensor of a forward/backward call, with the stored values          */
/* ------------------------------------------------------------------------------------------ */

typedef struct nkt_bn {
    int ndim;
    int64_t dims[NK_MAX_DIMS];
    nk_dtype dt, vdt; /* data dtype, per-channel vector dtype */
    nkt_layout lay;
    int64_t n, C, M;
    /* data tensors (same dims and layout; x starts `lead` elements into its buffer, y, dy and
     * dx at other offsets): x, dy hold random values, y, dx the sentinel */
    nkt_buf x, y, dy, dx;
    /* per-channel vectors, each one element into its buffer (unaligned): gamma, beta,
     * run_mean, run_var hold random values, the outputs the sentinel */
    nkt_buf gamma, beta, save_mean, save_invstd, run_mean, run_var, dgamma, dbeta;
    /* logical values as stored (what the library sees) */
    double *xv, *dyv, *gv, *bv, *rmv, *rvv;
} nkt_bn;

/* x[n, c, ...] = mu_c + sd_c * N(0, 1) with mu_c in [-3, 3], sd_c in [0.5, 2]; dy ~ N(0, 1);
 * gamma in +-[0.5, 1.5]; beta, running mean in [-1, 1]; running var in [0.5, 2]. */
void nkt_bn_init(nkt_bn *f, nkt_rng *r, int ndim, const int64_t *dims, nk_dtype dt,
                 nk_dtype vdt, nkt_layout lay, int64_t lead);
void nkt_bn_free(nkt_bn *f);
/* Rewrites x (and xv) from new values v (logical order). */
void nkt_bn_set_x(nkt_bn *f, const double *v);
/* "x [2, 3, 4] float32 (vectors float64) channels-last" */
const char *nkt_bn_desc(const nkt_bn *f, char *buf, size_t n);

#endif
