/* Optimized kernels of the fused relu(bn(x) + z), instantiated for one element type and one
 * instruction set. Before inclusion: the ISA's vector layer (avx2/vec_avx2.h or
 * avx512/vec_avx512.h), T = the element type, SFX = f32 or f64, TABLE = the table's name.
 *
 * Contract: kernels/resid_kernels.h; reference: kernels/ref/resid_ref_impl.h. Both functions
 * are element-wise: vectors over runs of stride 1 (per channel) or over the channels of a row
 * (rows), the scalar loop written above each function for the rest. The vector code performs
 * the scalar loop's operations in its order, without contraction (-ffp-contract=off on the
 * ISA's files), so every path gives the reference's bits. Outputs of views of at least
 * NK_STREAM_MIN_BYTES are written with streaming stores (kernels.h explains why). */
#include <stdint.h>

#define NK_RSCAT2(a, b) a##b
#define NK_RSCAT(a, b) NK_RSCAT2(a, b)
#define RSFN(name) NK_RSCAT(name, SFX)
#define RLD NK_RSCAT(vd_load_, SFX)
#define RST NK_RSCAT(vd_store_, SFX)
#define RSST NK_RSCAT(vd_stream_, SFX)

NK_VEC_INLINE int RSFN(rstreams_)(const nk_cview *v) {
    return v->C * v->M * (int64_t)sizeof(T) >= NK_STREAM_MIN_BYTES;
}

/* Elements before q is aligned for a streaming store (VW elements), at most n; -1 if q is not
 * even element-aligned (never aligned). */
NK_VEC_INLINE int64_t RSFN(rhead_)(const T *q, int64_t n) {
    const uintptr_t al = (uintptr_t)(VW * sizeof(T)), mis = (uintptr_t)q % al;
    if (mis % sizeof(T)) return -1;
    const int64_t h = mis ? (int64_t)((al - mis) / sizeof(T)) : 0;
    return h < n ? h : n;
}

/* r = (((double)x - mean) * a + b) + (double)z;  y = (T)(r < 0.0 ? 0.0 : r)
 * (vd_relu: MAXPD keeps a NaN r, as the reference's `if (r < 0.0) r = 0.0`) */
NK_VEC_INLINE vd RSFN(fwd_vec_)(vd x, vd z, vd m, vd a, vd b) {
    return vd_relu(vd_add(vd_add(vd_mul(vd_sub(x, m), a), b), z));
}

/* per value (x: slot 0, y: slot 1, z: slot 2):
 *     double r = (((double)x[i * sx] - mean) * a + b) + (double)z[i * sz];
 *     if (r < 0.0) r = 0.0;
 *     y[i * sy] = (T)r; */
static void RSFN(fwd_)(const nk_cview *v, const void *xv, const void *zv, void *yv, int64_t c,
                       int64_t r0, int64_t r1, double mean, double a, double b) {
    const T *x = xv, *z = zv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], sz = v->st[2][in];
    const int vec = sx == 1 && sy == 1 && sz == 1;
    const int stream = vec && RSFN(rstreams_)(v);
    const vd vm = vd_set1(mean), va = vd_set1(a), vb = vd_set1(b);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *s = z + off[2];
        T *q = y + off[1];
        int64_t i = 0;
        if (vec) {
            const int64_t h = stream ? RSFN(rhead_)(q, n) : -1;
            if (h >= 0) {
                for (; i < h; i++) {
                    double r = (((double)p[i] - mean) * a + b) + (double)s[i];
                    if (r < 0.0) r = 0.0;
                    q[i] = (T)r;
                }
                for (; i + VW <= n; i += VW)
                    RSST(q + i, RSFN(fwd_vec_)(RLD(p + i), RLD(s + i), vm, va, vb));
            } else
                for (; i + VW <= n; i += VW)
                    RST(q + i, RSFN(fwd_vec_)(RLD(p + i), RLD(s + i), vm, va, vb));
        }
        for (; i < n; i++) {
            double r = (((double)p[i * sx] - mean) * a + b) + (double)s[i * sz];
            if (r < 0.0) r = 0.0;
            q[i * sy] = (T)r;
        }
    }
    if (stream) vd_stream_fence();
}

/* dx = kg * g + kx * (x - mean) + k0 (batch norm's bwd_apply, same order) */
NK_VEC_INLINE vd RSFN(rdx_)(vd g, vd x, vd m, vd kg, vd kx, vd k0) {
    return vd_add(vd_add(vd_mul(kg, g), vd_mul(kx, vd_sub(x, m))), k0);
}

/* One vector of the backward at element i of a run: every read before the writes, so dx or
 * dz may be the same view as dy. */
NK_VEC_INLINE void RSFN(bwd_vec_)(const T *p, const T *g, const T *m, T *o, T *oz, int64_t i,
                                  vd vm, vd vkg, vd vkx, vd vk0, int stream) {
    const vd gv = vd_zero_where_le0(RLD(g + i), RLD(m + i));
    const vd d = RSFN(rdx_)(gv, RLD(p + i), vm, vkg, vkx, vk0);
    if (stream) {
        if (oz) RSST(oz + i, gv);
        if (o) RSST(o + i, d);
    } else {
        if (oz) RST(oz + i, gv);
        if (o) RST(o + i, d);
    }
}

/* per value (x: slot 0, dy: 1, dx: 2, y: 3, dz: 4; dx or dz NULL: not written):
 *     double g = (double)dy[i * sd];
 *     if (y[i * sm] <= 0) g = 0.0;
 *     dz[i * sz] = (T)g;
 *     dx[i * so] = (T)(kg * g + kx * ((double)x[i * sx] - mean) + k0); */
static void RSFN(bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv, const void *yv,
                             void *dxv, void *dzv, int64_t c, int64_t r0, int64_t r1,
                             double mean, double kg, double kx, double k0) {
    const T *x = xv, *dy = dyv, *ym = yv;
    T *dx = dxv, *dz = dzv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const int64_t sz = v->st[4][in];
    const int vec = sx == 1 && sd == 1 && sm == 1 && (!dx || so == 1) && (!dz || sz == 1);
    const int stream = vec && RSFN(rstreams_)(v);
    const vd vm = vd_set1(mean), vkg = vd_set1(kg), vkx = vd_set1(kx), vk0 = vd_set1(k0);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = dy + off[1], *m = ym + off[3];
        T *o = dx ? dx + off[2] : NULL, *oz = dz ? dz + off[4] : NULL;
        int64_t i = 0;
        if (vec) {
            /* stream only when both outputs reach alignment at the same element */
            int64_t h = -1;
            if (stream) {
                const int64_t ho = o ? RSFN(rhead_)(o, n) : -2, hz = oz ? RSFN(rhead_)(oz, n) : -2;
                h = ho == -2 ? hz : hz == -2 ? ho : ho == hz ? ho : -1;
            }
            for (int64_t e = h < 0 ? 0 : h; i < e; i++) {
                double gi = (double)g[i];
                if (m[i] <= 0) gi = 0.0;
                const double xi = (double)p[i];
                if (oz) oz[i] = (T)gi;
                if (o) o[i] = (T)(kg * gi + kx * (xi - mean) + k0);
            }
            for (; i + VW <= n; i += VW) RSFN(bwd_vec_)(p, g, m, o, oz, i, vm, vkg, vkx, vk0, h >= 0);
        }
        for (; i < n; i++) {
            double gi = (double)g[i * sd];
            if (m[i * sm] <= 0) gi = 0.0;
            const double xi = (double)p[i * sx];
            if (oz) oz[i * sz] = (T)gi;
            if (o) o[i * so] = (T)(kg * gi + kx * (xi - mean) + k0);
        }
    }
    if (stream) vd_stream_fence();
}

/* ---- rows (channels innermost): vectors along the channels of each row, the per-channel
 * coefficients in L1; the same per-element operations as above ---- */

static void RSFN(rows_fwd_)(const nk_cview *v, const void *xv, const void *zv, void *yv,
                            int64_t c0, int64_t c1, int64_t r0, int64_t r1, const double *mean,
                            const double *a, const double *b) {
    const T *x = xv, *z = zv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], sz = v->st[2][in], nc = c1 - c0;
    const int stream = RSFN(rstreams_)(v);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0, *s = z + off[2] + r * sz + c0;
            T *q = y + off[1] + r * sy + c0;
            int64_t i = 0;
            const int64_t h = stream ? RSFN(rhead_)(q, nc) : -1;
            for (; i < h; i++) {
                double o = (((double)p[i] - mean[i]) * a[i] + b[i]) + (double)s[i];
                if (o < 0.0) o = 0.0;
                q[i] = (T)o;
            }
            for (; i + VW <= nc; i += VW) {
                const vd o = RSFN(fwd_vec_)(RLD(p + i), RLD(s + i), vd_load_f64(mean + i),
                                            vd_load_f64(a + i), vd_load_f64(b + i));
                if (h >= 0)
                    RSST(q + i, o);
                else
                    RST(q + i, o);
            }
            for (; i < nc; i++) {
                double o = (((double)p[i] - mean[i]) * a[i] + b[i]) + (double)s[i];
                if (o < 0.0) o = 0.0;
                q[i] = (T)o;
            }
        }
    if (stream) vd_stream_fence();
}

static void RSFN(rows_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv,
                                  const void *yv, void *dxv, void *dzv, int64_t c0, int64_t c1,
                                  int64_t r0, int64_t r1, const double *mean, const double *kg,
                                  const double *kx, const double *k0) {
    const T *x = xv, *dy = dyv, *ym = yv;
    T *dx = dxv, *dz = dzv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const int64_t sz = v->st[4][in], nc = c1 - c0;
    const int stream = RSFN(rstreams_)(v);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0, *g = dy + off[1] + r * sd + c0;
            const T *m = ym + off[3] + r * sm + c0;
            T *o = dx ? dx + off[2] + r * so + c0 : NULL;
            T *oz = dz ? dz + off[4] + r * sz + c0 : NULL;
            int64_t h = -1, i = 0;
            if (stream) {
                const int64_t ho = o ? RSFN(rhead_)(o, nc) : -2, hz = oz ? RSFN(rhead_)(oz, nc) : -2;
                h = ho == -2 ? hz : hz == -2 ? ho : ho == hz ? ho : -1;
            }
            for (; i < h; i++) {
                double gi = (double)g[i];
                if (m[i] <= 0) gi = 0.0;
                const double xi = (double)p[i];
                if (oz) oz[i] = (T)gi;
                if (o) o[i] = (T)(kg[i] * gi + kx[i] * (xi - mean[i]) + k0[i]);
            }
            for (; i + VW <= nc; i += VW) {
                const vd gv = vd_zero_where_le0(RLD(g + i), RLD(m + i));
                const vd d = RSFN(rdx_)(gv, RLD(p + i), vd_load_f64(mean + i), vd_load_f64(kg + i),
                                        vd_load_f64(kx + i), vd_load_f64(k0 + i));
                if (h >= 0) {
                    if (oz) RSST(oz + i, gv);
                    if (o) RSST(o + i, d);
                } else {
                    if (oz) RST(oz + i, gv);
                    if (o) RST(o + i, d);
                }
            }
            for (; i < nc; i++) {
                double gi = (double)g[i];
                if (m[i] <= 0) gi = 0.0;
                const double xi = (double)p[i];
                if (oz) oz[i] = (T)gi;
                if (o) o[i] = (T)(kg[i] * gi + kx[i] * (xi - mean[i]) + k0[i]);
            }
        }
    if (stream) vd_stream_fence();
}

const nk_resid_kernels TABLE = {RSFN(fwd_), RSFN(bwd_apply_), RSFN(rows_fwd_),
                                RSFN(rows_bwd_apply_)};

#undef RSST
#undef RST
#undef RLD
#undef RSFN
#undef NK_RSCAT
#undef NK_RSCAT2
