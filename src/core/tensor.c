/* Tensor descriptors: constructors, validation, per-channel and row vectors, the channel view. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

int nk_mul_i64(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

int nk_add_i64(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

size_t nk_dtype_size(nk_dtype dt) {
    return dt == NK_F32 ? sizeof(float) : dt == NK_F64 ? sizeof(double) : dt == NK_U8 ? 1 : 0;
}

static nk_status tensor_header(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                               const int64_t *dims) {
    if (!t || (!dims && ndim > 0)) return NK_ERR_NULL;
    if (ndim < 0 || ndim > NK_MAX_DIMS) return NK_ERR_SHAPE;
    if (!nk_dtype_size(dt)) return NK_ERR_DTYPE;
    memset(t, 0, sizeof *t);
    t->data = data;
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0) return NK_ERR_SHAPE;
        t->dims[i] = dims[i];
    }
    return NK_OK;
}

nk_status nk_tensor_contiguous(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                               const int64_t *dims) {
    nk_status s = tensor_header(t, data, dt, ndim, dims);
    if (s) return s;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->strides[i] = st;
        if (!nk_mul_i64(st, dims[i] ? dims[i] : 1, &st)) return NK_ERR_OVERFLOW;
    }
    return NK_OK;
}

nk_status nk_tensor_channels_last(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                                  const int64_t *dims) {
    if (ndim < 2) return t ? NK_ERR_SHAPE : NK_ERR_NULL;
    nk_status s = tensor_header(t, data, dt, ndim, dims);
    if (s) return s;
    /* memory order: N, D1..Dk, C (C fastest) */
    int64_t st = 1;
    t->strides[1] = 1;
    if (!nk_mul_i64(st, dims[1] ? dims[1] : 1, &st)) return NK_ERR_OVERFLOW;
    for (int i = ndim - 1; i >= 2; i--) {
        t->strides[i] = st;
        if (!nk_mul_i64(st, dims[i] ? dims[i] : 1, &st)) return NK_ERR_OVERFLOW;
    }
    t->strides[0] = st;
    if (!nk_mul_i64(st, dims[0] ? dims[0] : 1, &st)) return NK_ERR_OVERFLOW;
    return NK_OK;
}

nk_status nk_tensor_strided(nk_tensor *t, void *data, nk_dtype dt, int ndim,
                            const int64_t *dims, const int64_t *strides) {
    if (!strides && ndim > 0) return NK_ERR_NULL;
    nk_status s = tensor_header(t, data, dt, ndim, dims);
    if (s) return s;
    for (int i = 0; i < ndim; i++) {
        if (strides[i] < 0) return NK_ERR_VALUE;
        t->strides[i] = strides[i];
    }
    return NK_OK;
}

nk_tensor nk_vec(void *data, nk_dtype dt, int64_t n) {
    nk_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.ndim = 1;
    t.dims[0] = n;
    t.strides[0] = 1;
    return t;
}

nk_status nk_tensor_numel(const nk_tensor *t, int64_t *out) {
    if (!t || !out) return NK_ERR_NULL;
    if (t->ndim < 0 || t->ndim > NK_MAX_DIMS) return NK_ERR_SHAPE;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->dims[i] < 0) return NK_ERR_SHAPE;
        if (!nk_mul_i64(n, t->dims[i], &n)) return NK_ERR_OVERFLOW;
    }
    *out = n;
    return NK_OK;
}

const char *nk_shape_str(const nk_tensor *t, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->dims[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

static const char *dtype_name(nk_dtype dt) {
    return dt == NK_F32 ? "float32" : dt == NK_F64 ? "float64" : "unknown";
}

/* The checks every data tensor and row vector share. neg_stride is the status of a negative
 * stride (see nk_check_rows). */
static nk_status check_layout(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                              nk_status neg_stride, int64_t *numel_out) {
    if (t->dtype != NK_F32 && t->dtype != NK_F64)
        return nk_fail(ctx, NK_ERR_DTYPE, "%s: %s has unsupported dtype %d (float32 or float64)",
                       op, name, (int)t->dtype);
    int64_t numel = 1, maxoff = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->dims[i] < 0)
            return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s has negative dimension %lld at axis %d", op,
                           name, (long long)t->dims[i], i);
        if (t->strides[i] < 0)
            return nk_fail(ctx, neg_stride, "%s: %s has negative stride %lld at axis %d", op,
                           name, (long long)t->strides[i], i);
        if (!nk_mul_i64(numel, t->dims[i], &numel))
            return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: element count of %s overflows int64", op, name);
    }
    for (int i = 0; i < t->ndim && numel; i++) {
        int64_t span;
        if (!nk_mul_i64(t->dims[i] - 1, t->strides[i], &span) || !nk_add_i64(maxoff, span, &maxoff))
            return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: offsets of %s overflow int64", op, name);
    }
    int64_t bytes;
    if (numel && !nk_mul_i64(maxoff + 1, (int64_t)nk_dtype_size(t->dtype), &bytes))
        return nk_fail(ctx, NK_ERR_OVERFLOW, "%s: byte size of %s overflows int64", op, name);
    if (numel && !t->data) return nk_fail(ctx, NK_ERR_NULL, "%s: %s->data is NULL", op, name);
    if (numel_out) *numel_out = numel;
    return NK_OK;
}

nk_status nk_check_layout(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                          int64_t *numel) {
    return check_layout(ctx, op, name, t, NK_ERR_VALUE, numel);
}

nk_status nk_check_data(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t) {
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL", op, name);
    if (t->ndim < 2 || t->ndim > NK_MAX_DIMS)
        return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s must have rank 2 to %d (N, C, ...), got rank %d",
                       op, name, NK_MAX_DIMS, t->ndim);
    return nk_check_layout(ctx, op, name, t, NULL);
}

/* Dims and dtype of t against ref's (no layout check). */
static nk_status check_like_ref(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                                const char *ref_name, const nk_tensor *ref) {
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL", op, name);
    int same = t->ndim == ref->ndim;
    for (int i = 0; same && i < t->ndim; i++) same = t->dims[i] == ref->dims[i];
    if (!same) {
        char a[160], b[160];
        return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s has shape %s but %s has shape %s", op, name,
                       nk_shape_str(t, a, sizeof a), ref_name, nk_shape_str(ref, b, sizeof b));
    }
    if (t->dtype != ref->dtype)
        return nk_fail(ctx, NK_ERR_DTYPE, "%s: %s has dtype %s but %s has dtype %s", op, name,
                       dtype_name(t->dtype), ref_name, dtype_name(ref->dtype));
    return NK_OK;
}

nk_status nk_check_same_shape(nk_ctx *ctx, const char *op, const char *name,
                              const nk_tensor *t, const char *ref_name, const nk_tensor *ref) {
    nk_status s = check_like_ref(ctx, op, name, t, ref_name, ref);
    return s ? s : nk_check_data(ctx, op, name, t);
}

nk_status nk_check_like(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                        const char *ref_name, const nk_tensor *ref) {
    nk_status s = check_like_ref(ctx, op, name, t, ref_name, ref);
    return s ? s : nk_check_layout(ctx, op, name, t, NULL);
}

nk_status nk_check_vec(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                       int64_t n) {
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL", op, name);
    if (t->ndim != 1 || t->dims[0] != n) {
        char a[160];
        return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s must have shape [%lld] (one value per channel), got %s",
                       op, name, (long long)n, nk_shape_str(t, a, sizeof a));
    }
    /* dtype, a non-negative stride, a byte span that fits int64 (a huge stride would make
     * the kernels' offsets wrap), data present when n > 0 */
    return nk_check_layout(ctx, op, name, t, NULL);
}

nk_status nk_check_vec_if(nk_ctx *ctx, const char *op, int required, const char *name,
                          const nk_tensor *t, int64_t n, const char *why) {
    if (!required) return NK_OK;
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL%s", op, name, why);
    return nk_check_vec(ctx, op, name, t, n);
}

nk_status nk_check_opt_vec(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                           int64_t n) {
    return t ? nk_check_vec(ctx, op, name, t, n) : NK_OK;
}

nk_status nk_check_affine(nk_ctx *ctx, const char *op, const char *flag_family, unsigned flags,
                          int64_t n, const nk_tensor *gamma, const nk_tensor *beta) {
    char why[64];
    snprintf(why, sizeof why, " but %s_USE_SCALE is set", flag_family);
    nk_status s = nk_check_vec_if(ctx, op, (flags & NK_BN_USE_SCALE) != 0, "gamma", gamma, n, why);
    if (s) return s;
    snprintf(why, sizeof why, " but %s_USE_SHIFT is set", flag_family);
    return nk_check_vec_if(ctx, op, (flags & NK_BN_USE_SHIFT) != 0, "beta", beta, n, why);
}

/* [lo, hi) byte range spanned by a validated tensor (empty when it has no elements). */
static void byte_range(const nk_tensor *t, uintptr_t *lo, uintptr_t *hi) {
    int64_t maxoff = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->dims[i] == 0) {
            *lo = *hi = 0;
            return;
        }
        maxoff += (t->dims[i] - 1) * t->strides[i];
    }
    const size_t es = nk_dtype_size(t->dtype);
    *lo = (uintptr_t)t->data;
    *hi = *lo + (uintptr_t)(maxoff + 1) * es;
}

nk_status nk_check_alias(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *out,
                         const char *in_name, const nk_tensor *in) {
    if (!out || !in) return NK_OK;
    int same = out->data == in->data && out->dtype == in->dtype && out->ndim == in->ndim;
    for (int i = 0; same && i < in->ndim; i++) same = out->strides[i] == in->strides[i];
    if (same) return NK_OK; /* exact in place */
    uintptr_t a0, a1, b0, b1;
    byte_range(out, &a0, &a1);
    byte_range(in, &b0, &b1);
    /* Conservative: any overlap of the spanned ranges is refused, even interleaved views that
     * share no element, since the kernels read and write in an order that assumes none. */
    if (a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1)
        return nk_fail(ctx, NK_ERR_VALUE,
                       "%s: %s shares memory with %s without being the same view (only exact in-place is allowed)",
                       op, name, in_name);
    return NK_OK;
}

nk_status nk_check_dy_dx(nk_ctx *ctx, const char *op, const nk_tensor *x, const nk_tensor *dy,
                         const nk_tensor *dx) {
    nk_status s;
    if ((s = nk_check_like(ctx, op, "dy", dy, "x", x))) return s;
    if (!dx) return NK_OK;
    if ((s = nk_check_like(ctx, op, "dx", dx, "x", x))) return s;
    if ((s = nk_check_alias(ctx, op, "dx", dx, "dy", dy))) return s;
    return nk_check_alias(ctx, op, "dx", dx, "x", x);
}

void nk_vec_load(const nk_tensor *v, double *dst) {
    if (!v) return;
    const int64_t n = v->dims[0], s = v->strides[0];
    if (v->dtype == NK_F32) {
        const float *p = v->data;
        for (int64_t i = 0; i < n; i++) dst[i] = p[i * s];
    } else {
        const double *p = v->data;
        for (int64_t i = 0; i < n; i++) dst[i] = p[i * s];
    }
}

void nk_vec_store(nk_tensor *v, const double *src) {
    if (!v) return;
    const int64_t n = v->dims[0], s = v->strides[0];
    if (v->dtype == NK_F32) {
        float *p = v->data;
        for (int64_t i = 0; i < n; i++) p[i * s] = (float)src[i];
    } else {
        double *p = v->data;
        for (int64_t i = 0; i < n; i++) p[i * s] = src[i];
    }
}

void nk_vec_load_or(const nk_tensor *v, int use, double fill, int64_t n, double *dst) {
    if (use)
        nk_vec_load(v, dst);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = fill;
}

void nk_vec_zero(nk_tensor *v) {
    if (!v) return;
    for (int64_t i = 0; i < v->dims[0]; i++) {
        if (v->dtype == NK_F32)
            ((float *)v->data)[i * v->strides[0]] = 0.0f;
        else
            ((double *)v->data)[i * v->strides[0]] = 0.0;
    }
}

/* ---- row vectors -------------------------------------------------------------------------- */

static nk_status check_flat(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                            nk_status neg_stride, int64_t *numel) {
    if (!t) return nk_fail(ctx, NK_ERR_NULL, "%s: %s is NULL", op, name);
    if (t->ndim < 0 || t->ndim > NK_MAX_DIMS)
        return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s has rank %d (0 to %d allowed)", op, name,
                       t->ndim, NK_MAX_DIMS);
    return check_layout(ctx, op, name, t, neg_stride, numel);
}

nk_status nk_check_flat(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                        int64_t *numel) {
    return check_flat(ctx, op, name, t, NK_ERR_VALUE, numel);
}

nk_status nk_check_rows(nk_ctx *ctx, const char *op, const char *name, const nk_tensor *t,
                        int64_t count, const char *what) {
    int64_t n;
    nk_status s = check_flat(ctx, op, name, t, NK_ERR_SHAPE, &n);
    if (s) return s;
    if (n != count) {
        char a[160];
        return nk_fail(ctx, NK_ERR_SHAPE, "%s: %s must have %lld elements (%s), got shape %s", op,
                       name, (long long)count, what, nk_shape_str(t, a, sizeof a));
    }
    return NK_OK;
}

/* Element i of t in row-major order as a multi-index and an offset (one division per axis:
 * for per-row values, never per data element); rows_next steps to i + 1 (an odometer). */
static int64_t rows_seek(const nk_tensor *t, int64_t i, int64_t *idx) {
    int64_t off = 0;
    for (int k = t->ndim - 1; k >= 0; k--) {
        idx[k] = i % t->dims[k];
        i /= t->dims[k];
        off += idx[k] * t->strides[k];
    }
    return off;
}

static int64_t rows_next(const nk_tensor *t, int64_t *idx, int64_t off) {
    for (int k = t->ndim - 1; k >= 0; k--) {
        off += t->strides[k];
        if (++idx[k] < t->dims[k]) break;
        off -= idx[k] * t->strides[k];
        idx[k] = 0;
    }
    return off;
}

/* Element offset of the row-major index i of t (0 for an empty t). */
static int64_t rows_offset(const nk_tensor *t, int64_t i) {
    int64_t idx[NK_MAX_DIMS];
    for (int k = 0; k < t->ndim; k++)
        if (t->dims[k] == 0) return 0;
    return rows_seek(t, i, idx);
}

void nk_rows_load(const nk_tensor *t, int64_t i0, int64_t n, double *dst) {
    if (!t || n <= 0) return; /* n > 0: no axis of t is 0 */
    int64_t idx[NK_MAX_DIMS], off = rows_seek(t, i0, idx);
    if (t->dtype == NK_F32) {
        const float *p = t->data;
        for (int64_t j = 0; j < n; j++, off = rows_next(t, idx, off)) dst[j] = p[off];
    } else {
        const double *p = t->data;
        for (int64_t j = 0; j < n; j++, off = rows_next(t, idx, off)) dst[j] = p[off];
    }
}

void nk_rows_store(nk_tensor *t, int64_t i0, int64_t n, const double *src) {
    if (!t || n <= 0) return;
    int64_t idx[NK_MAX_DIMS], off = rows_seek(t, i0, idx);
    if (t->dtype == NK_F32) {
        float *p = t->data;
        for (int64_t j = 0; j < n; j++, off = rows_next(t, idx, off)) p[off] = (float)src[j];
    } else {
        double *p = t->data;
        for (int64_t j = 0; j < n; j++, off = rows_next(t, idx, off)) p[off] = src[j];
    }
}

int nk_rows_slice(const nk_tensor *t, int64_t i0, int64_t n, nk_tensor *out) {
    const int64_t o0 = rows_offset(t, i0);
    const int64_t st = n > 1 ? rows_offset(t, i0 + 1) - o0 : 1;
    if (st < 0) return 0;
    for (int64_t j = 2; j < n; j++)
        if (rows_offset(t, i0 + j) != o0 + j * st) return 0;
    *out = nk_vec((char *)t->data + o0 * (int64_t)nk_dtype_size(t->dtype), t->dtype, n);
    out->strides[0] = st;
    return 1;
}

/* Drops size-1 axes and merges axis k into the previous kept one where every tensor is
 * contiguous across the pair; returns the number of axes left (at least 1). */
static int merge_axes(int n, int nt, int64_t *dims, int64_t (*st)[NK_CV_MAXAX]) {
    int out = -1;
    for (int k = 0; k < n; k++) {
        if (dims[k] == 1) continue;
        int ok = out >= 0;
        for (int t = 0; ok && t < nt; t++) ok = st[t][out] == st[t][k] * dims[k];
        if (ok) {
            dims[out] *= dims[k];
        } else {
            out++;
            dims[out] = dims[k];
        }
        for (int t = 0; t < nt; t++) st[t][out] = st[t][k];
    }
    if (out < 0) { /* every axis has size 1: one value */
        dims[0] = 1;
        for (int t = 0; t < nt; t++) st[t][0] = 0;
        out = 0;
    }
    return out + 1;
}

void nk_view_from_axes(nk_cview *v, int nt, int naxes, const nk_vaxis *ax) {
    memset(v, 0, sizeof *v);
    v->nt = nt;
    v->C = 1;
    v->M = 1;
    for (int i = 0; i < naxes; i++) {
        if (ax[i].kept) {
            v->kdims[v->nk] = ax[i].dim;
            for (int t = 0; t < nt; t++) v->kst[t][v->nk] = ax[i].st[t];
            v->nk++;
            v->C *= ax[i].dim; /* validated: cannot overflow */
        } else {
            v->dims[v->nd] = ax[i].dim;
            for (int t = 0; t < nt; t++) v->st[t][v->nd] = ax[i].st[t];
            v->nd++;
            v->M *= ax[i].dim;
        }
    }
    if (v->C == 0 || v->M == 0) return; /* empty: nothing will be walked */
    v->nk = merge_axes(v->nk, nt, v->kdims, v->kst);
    v->nd = merge_axes(v->nd, nt, v->dims, v->st);
}

void nk_view_init_mask(nk_cview *v, int nt, const nk_tensor *const *ts, unsigned kept_mask) {
    nk_vaxis ax[NK_CV_MAXAX];
    const int nd = ts[0]->ndim;
    for (int i = 0; i < nd; i++) {
        ax[i].dim = ts[0]->dims[i];
        ax[i].kept = (kept_mask >> i) & 1u;
        for (int t = 0; t < nt; t++) ax[i].st[t] = ts[t]->strides[i];
    }
    nk_view_from_axes(v, nt, nd, ax);
}

void nk_cview_init(nk_cview *v, int nt, const nk_tensor *const *ts) {
    nk_view_init_mask(v, nt, ts, 1u << 1);
}

void nk_seg_begin(nk_seg_iter *it, const nk_cview *v, int64_t c, int64_t r0, int64_t r1) {
    it->v = v;
    it->remaining = r1 - r0;
    for (int t = 0; t < v->nt; t++) it->off[t] = 0;
    for (int k = v->nk - 1; k >= 0; k--) { /* instance index -> kept multi-index */
        const int64_t i = c % v->kdims[k];
        c /= v->kdims[k];
        for (int t = 0; t < v->nt; t++) it->off[t] += i * v->kst[t][k];
    }
    int64_t r = r0;
    for (int k = v->nd - 1; k >= 0; k--) {
        it->idx[k] = r % v->dims[k];
        r /= v->dims[k];
        for (int t = 0; t < v->nt; t++) it->off[t] += it->idx[k] * v->st[t][k];
    }
}

int64_t nk_seg_next(nk_seg_iter *it, int64_t *off) {
    if (it->remaining <= 0) return 0;
    const nk_cview *v = it->v;
    const int in = v->nd - 1;
    int64_t len = v->dims[in] - it->idx[in];
    if (len > it->remaining) len = it->remaining;
    for (int t = 0; t < v->nt; t++) off[t] = it->off[t];
    it->remaining -= len;
    if (it->remaining == 0) return len;
    /* advance the odometer by len along the innermost axis (ends exactly at its end) */
    it->idx[in] += len;
    for (int t = 0; t < v->nt; t++) it->off[t] += len * v->st[t][in];
    for (int k = in; k > 0 && it->idx[k] == v->dims[k]; k--) {
        for (int t = 0; t < v->nt; t++)
            it->off[t] += v->st[t][k - 1] - v->dims[k] * v->st[t][k];
        it->idx[k] = 0;
        it->idx[k - 1]++;
    }
    return len;
}
