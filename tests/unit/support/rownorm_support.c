/* Test support for the row-normalization tests: see rownorm_support.h. */
#include "support/rownorm_support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t rnt_seed(uint64_t dflt) {
    const char *e = getenv("RNT_SEED");
    return e && *e ? (uint64_t)strtoull(e, NULL, 0) : dflt;
}

void rnt_rng_init(rnt_rng *r, uint64_t seed) { r->s = seed ? seed : 0x9E3779B97F4A7C15ull; }

static uint64_t next_u64(rnt_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

double rnt_uniform(rnt_rng *r) { return (double)(next_u64(r) >> 11) * 0x1.0p-53; }

double rnt_normal(rnt_rng *r) {
    double u = rnt_uniform(r), v = rnt_uniform(r);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

int64_t rnt_numel(const nk_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->dims[i];
    return n;
}

int rnt_alloc(rnt_buf *b, nk_dtype dt, int ndim, const int64_t *dims, int layout) {
    memset(b, 0, sizeof *b);
    int order[NK_MAX_DIMS]; /* memory order, outermost first */
    for (int i = 0; i < ndim; i++) order[i] = i;
    if (layout == RNT_CHLAST && ndim >= 2) {
        int k = 0;
        order[k++] = 0;
        for (int i = 2; i < ndim; i++) order[k++] = i;
        order[k++] = 1;
    } else if (layout == RNT_REVERSED) {
        for (int i = 0; i < ndim; i++) order[i] = ndim - 1 - i;
    }
    const int64_t pad = layout == RNT_PADDED ? 3 : 0;
    int64_t st = 1;
    for (int k = ndim - 1; k >= 0; k--) {
        const int ax = order[k];
        b->t.strides[ax] = st;
        st = st * (dims[ax] ? dims[ax] : 1) + pad;
    }
    b->t.dtype = dt;
    b->t.ndim = ndim;
    for (int i = 0; i < ndim; i++) b->t.dims[i] = dims[i];
    b->numel = rnt_numel(&b->t);
    b->bytes = (size_t)(st + 1) * nk_dtype_size(dt);
    b->mem = malloc(b->bytes);
    if (!b->mem) return -1;
    memset(b->mem, RNT_SENTINEL_BYTE, b->bytes);
    b->t.data = b->mem;
    return 0;
}

void rnt_free(rnt_buf *b) {
    free(b->mem);
    memset(b, 0, sizeof *b);
}

int rnt_untouched(const rnt_buf *b) {
    const unsigned char *p = b->mem;
    for (size_t i = 0; i < b->bytes; i++)
        if (p[i] != RNT_SENTINEL_BYTE) return 0;
    return 1;
}

void *rnt_snapshot(const rnt_buf *b) {
    void *s = malloc(b->bytes);
    if (s) memcpy(s, b->mem, b->bytes);
    return s;
}

int rnt_same_as(const rnt_buf *b, const void *snap) { return memcmp(b->mem, snap, b->bytes) == 0; }

static int64_t offset_of(const nk_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int k = t->ndim - 1; k >= 0; k--) {
        off += (i % t->dims[k]) * t->strides[k];
        i /= t->dims[k];
    }
    return off;
}

double rnt_get(const nk_tensor *t, int64_t i) {
    const int64_t o = offset_of(t, i);
    return t->dtype == NK_F32 ? (double)((const float *)t->data)[o] : ((const double *)t->data)[o];
}

void rnt_set(nk_tensor *t, int64_t i, double v) {
    const int64_t o = offset_of(t, i);
    if (t->dtype == NK_F32)
        ((float *)t->data)[o] = (float)v;
    else
        ((double *)t->data)[o] = v;
}

void rnt_fill_normal(nk_tensor *t, rnt_rng *r, double loc, double scale) {
    const int64_t n = rnt_numel(t);
    for (int64_t i = 0; i < n; i++) rnt_set(t, i, loc + scale * rnt_normal(r));
}

void rnt_to_doubles(const nk_tensor *t, double *dst) {
    const int64_t n = rnt_numel(t);
    for (int64_t i = 0; i < n; i++) dst[i] = rnt_get(t, i);
}

double *rnt_doubles_of(const nk_tensor *t) {
    const int64_t n = rnt_numel(t);
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    rnt_to_doubles(t, d);
    return d;
}

unsigned rnt_leading_mask(int axis, int ndim) {
    const int a = axis < 0 ? axis + ndim : axis;
    return (1u << a) - 1u;
}

void rnt_rows(int ndim, const int64_t *dims, unsigned kept_mask, int64_t *R, int64_t *K) {
    int64_t r = 1, k = 1;
    for (int i = 0; i < ndim; i++) {
        if ((kept_mask >> i) & 1u)
            r *= dims[i];
        else
            k *= dims[i];
    }
    *R = r;
    *K = k;
}

/* For every flat element: its row and its position in the row. */
static void row_map(int ndim, const int64_t *dims, unsigned kept_mask, int64_t n, int64_t *row,
                    int64_t *pos) {
    for (int64_t f = 0; f < n; f++) {
        int64_t idx[NK_MAX_DIMS], rest = f;
        for (int k = ndim - 1; k >= 0; k--) {
            idx[k] = rest % dims[k];
            rest /= dims[k];
        }
        int64_t r = 0, j = 0;
        for (int k = 0; k < ndim; k++) {
            if ((kept_mask >> k) & 1u)
                r = r * dims[k] + idx[k];
            else
                j = j * dims[k] + idx[k];
        }
        row[f] = r;
        pos[f] = j;
    }
}

typedef long double ld;

/* calloc of n (>= 0) elements, at least one (so NULL only means out of memory). */
static void *zalloc(int64_t n, size_t size) {
    return calloc(n > 0 ? (size_t)n : 1u, size);
}

/* Per-row c, a (and std for MVN) in long double. */
static void row_params(int kind, double eps, int64_t R, int64_t K, int64_t n, const int64_t *row,
                       const double *x, ld *c, ld *a, ld *sd) {
    for (int64_t r = 0; r < R; r++) c[r] = a[r] = sd[r] = 0;
    ld *s1 = zalloc(R, sizeof *s1), *s2 = zalloc(R, sizeof *s2);
    for (int64_t f = 0; f < n; f++) s1[row[f]] += x[f];
    for (int64_t r = 0; r < R; r++) s1[r] /= (ld)K; /* mean */
    for (int64_t f = 0; f < n; f++) {
        const ld d = kind == RNT_RMS ? (ld)x[f] : (ld)x[f] - s1[row[f]];
        s2[row[f]] += d * d;
    }
    for (int64_t r = 0; r < R; r++) {
        const ld m2 = s2[r] / (ld)K;
        if (kind == RNT_LN) {
            c[r] = s1[r];
            a[r] = 1.0L / sqrtl(m2 + (ld)eps);
        } else if (kind == RNT_RMS) {
            c[r] = 0;
            a[r] = 1.0L / sqrtl(m2 + (ld)eps);
        } else {
            c[r] = s1[r];
            sd[r] = sqrtl(m2);
            a[r] = 1.0L / (sd[r] + 1e-9L);
        }
    }
    free(s1);
    free(s2);
}

static int64_t numel_of(int ndim, const int64_t *dims) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= dims[i];
    return n;
}

void rnt_oracle_forward(int kind, double eps, int ndim, const int64_t *dims, unsigned kept_mask,
                        const double *x, const double *gamma, const double *beta, double *y,
                        double *s0, double *s1) {
    int64_t R, K;
    rnt_rows(ndim, dims, kept_mask, &R, &K);
    const int64_t n = numel_of(ndim, dims);
    int64_t *row = zalloc(n, sizeof *row), *pos = zalloc(n, sizeof *pos);
    ld *c = zalloc(R, sizeof *c), *a = zalloc(R, sizeof *a);
    ld *sd = zalloc(R, sizeof *sd);
    row_map(ndim, dims, kept_mask, n, row, pos);
    row_params(kind, eps, R, K, n, row, x, c, a, sd);
    for (int64_t f = 0; f < n && y; f++) {
        ld v = ((ld)x[f] - c[row[f]]) * a[row[f]];
        if (gamma) v *= gamma[pos[f]];
        if (beta) v += beta[pos[f]];
        y[f] = (double)v;
    }
    for (int64_t r = 0; r < R; r++) {
        if (s0) s0[r] = (double)c[r];
        if (s1) s1[r] = (double)(kind == RNT_MVN ? sd[r] : a[r]);
    }
    free(row);
    free(pos);
    free(c);
    free(a);
    free(sd);
}

void rnt_oracle_backward(int kind, double eps, int ndim, const int64_t *dims,
                         unsigned kept_mask, const double *x, const double *dy,
                         const double *gamma, double *dx, double *dgamma, double *dbeta) {
    int64_t R, K;
    rnt_rows(ndim, dims, kept_mask, &R, &K);
    const int64_t n = numel_of(ndim, dims);
    int64_t *row = zalloc(n, sizeof *row), *pos = zalloc(n, sizeof *pos);
    ld *c = zalloc(R, sizeof *c), *a = zalloc(R, sizeof *a);
    ld *sd = zalloc(R, sizeof *sd);
    ld *sh = zalloc(R, sizeof *sh), *shx = zalloc(R, sizeof *shx);
    ld *dg = zalloc(K, sizeof *dg), *db = zalloc(K, sizeof *db);
    row_map(ndim, dims, kept_mask, n, row, pos);
    row_params(kind, eps, R, K, n, row, x, c, a, sd);
    for (int64_t f = 0; f < n; f++) {
        const int64_t r = row[f];
        const ld xhat = ((ld)x[f] - c[r]) * a[r];
        const ld h = (ld)dy[f] * (gamma ? (ld)gamma[pos[f]] : 1.0L);
        sh[r] += h;
        shx[r] += h * xhat;
        dg[pos[f]] += (ld)dy[f] * xhat;
        db[pos[f]] += dy[f];
    }
    for (int64_t f = 0; f < n && dx; f++) {
        const int64_t r = row[f];
        const ld xhat = ((ld)x[f] - c[r]) * a[r];
        const ld h = (ld)dy[f] * (gamma ? (ld)gamma[pos[f]] : 1.0L);
        const ld mh = sh[r] / (ld)K, mhx = shx[r] / (ld)K;
        ld v;
        if (kind == RNT_LN) /* xhat = (x - mean) invstd */
            v = a[r] * (h - mh - xhat * mhx);
        else if (kind == RNT_RMS) /* xhat = x invrms */
            v = a[r] * (h - xhat * mhx);
        else /* y = (x - mean) / (std + e): the std term scales by (std + e) / std */
            v = a[r] * (h - mh) - (sd[r] > 0 ? a[r] * xhat * mhx / (sd[r] * a[r]) : 0.0L);
        dx[f] = (double)v;
    }
    for (int64_t j = 0; j < K; j++) {
        if (dgamma) dgamma[j] = (double)dg[j];
        if (dbeta) dbeta[j] = (double)db[j];
    }
    free(row);
    free(pos);
    free(c);
    free(a);
    free(sd);
    free(sh);
    free(shx);
    free(dg);
    free(db);
}

double rnt_oracle_loss(int kind, double eps, int ndim, const int64_t *dims, unsigned kept_mask,
                       const double *x, const double *gamma, const double *beta,
                       const double *w) {
    const int64_t n = numel_of(ndim, dims);
    double *y = zalloc(n, sizeof *y);
    rnt_oracle_forward(kind, eps, ndim, dims, kept_mask, x, gamma, beta, y, NULL, NULL);
    ld s = 0;
    for (int64_t f = 0; f < n; f++) s += (ld)w[f] * y[f];
    free(y);
    return (double)s;
}

double rnt_max_abs_diff(const double *a, const double *b, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs(a[i] - b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

double rnt_max_abs(const double *a, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

/* The tolerance table. Oracle: long double on the exact values given to the library, so a
 * comparison sees only the library's own rounding. u32 = 6e-8, u64 = 1.1e-16. */
static const struct {
    double f32, f64;
    const char *reason;
} TOL[RNT_NTOL] = {
    [RNT_TOL_Y] = {1e-6, 1e-13,
                   "y = (x - c) a gamma + beta in double from exact inputs: only the final "
                   "rounding to float32 (0.5 ulp of |y|, 6e-8 of max|y|) matters; float64 gets "
                   "a few roundings of terms up to cond = max|x - c| / std ~ 5 times |y|"},
    [RNT_TOL_STAT] = {1e-6, 1e-13,
                      "statistics accumulated in double (two-pass moments, Chan merge over "
                      "blocks), stored in float32 (6e-8) or float64 (K * u64 for the sums)"},
    [RNT_TOL_DX] = {1e-5, 1e-11,
                    "dx = a (h - mean h - xhat mean(h xhat)): terms up to (1 + cond) max|dx| "
                    "cancel; ~10 roundings of terms ~10x |dx|: 1e-6 (f32 storage dominates) / "
                    "1e-14; 10x margin for the row sums of K terms"},
    [RNT_TOL_DPARAM] = {1e-6, 1e-12,
                        "dgamma = sum_rows g xhat, dbeta = sum_rows g in double, stored once: "
                        "relative to max|.|; random-sign sums of R terms lose at most "
                        "sqrt(R) ~ 10x against the largest element"},
    [RNT_TOL_FD] = {0.0, 1e-6,
                    "central differences with h = 1e-5: truncation h^2 |f'''| ~ 1e-9 and "
                    "rounding u64 |L| / h ~ 1e-10 relative to the gradient; float64 only"},
    [RNT_TOL_BIGMEAN] = {2e-6, 1e-12,
                         "mean 1e4, std 1e-2 in float32 (cond 1e6): exact only if x - mean is "
                         "formed in double; a float32 mean would err by ulp(1e4)/std = 0.05"},
    [RNT_TOL_OPT_REF] = {2.4e-7, 1e-12,
                         "optimized kernels fuse multiply-adds the reference rounds twice and "
                         "sum rows in 16 lanes: doubles differ by a few ulp of the largest term "
                         "(cond ~5 times the result), so a float32 output rounds to the same "
                         "float or a neighbour (2^-22 = 2 ulp of max|.|); float64 outputs and "
                         "the dgamma/dbeta sums of R terms: ~R ulp of double, 1e-12"},
};

double rnt_tol(rnt_tol_key k, nk_dtype dt) { return dt == NK_F64 ? TOL[k].f64 : TOL[k].f32; }

int rnt_check(const char *what, uint64_t seed, const double *got, const double *want, int64_t n,
              rnt_tol_key k, nk_dtype dt) {
    const double scale = rnt_max_abs(want, n), tol = rnt_tol(k, dt);
    const double lim = tol * scale;
    int64_t worst = -1;
    double wd = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs(got[i] - want[i]);
        if (!(d <= lim) && (worst < 0 || !(d <= wd))) {
            worst = i;
            wd = d;
        }
    }
    if (worst < 0) return 1;
    fprintf(stderr,
            "FAIL %s (seed 0x%llx, %s): element %lld got %.17g want %.17g |err| %.3g > %.3g "
            "(tol %.1e x max|want| %.3g; %s)\n",
            what, (unsigned long long)seed, dt == NK_F64 ? "float64" : "float32",
            (long long)worst, got[worst], want[worst], wd, lim, tol, scale, TOL[k].reason);
    return 0;
}

void rnt_fd_grad(double *v, int64_t m, double *out, double (*loss)(void *arg), void *arg) {
    for (int64_t i = 0; i < m; i++) {
        const double v0 = v[i], h = 1e-5 * (fabs(v0) > 1 ? fabs(v0) : 1);
        v[i] = v0 + h;
        const double lp = loss(arg);
        v[i] = v0 - h;
        const double lm = loss(arg);
        v[i] = v0;
        out[i] = (lp - lm) / (2 * h);
    }
}
