/* Reference kernels of relu(bn(x) + z), instantiated for one element type (the specification;
 * contract in kernels/resid_kernels.h). Before inclusion: T = element type, SFX = suffix. */
#define NK_RCAT2(a, b) a##b
#define NK_RCAT(a, b) NK_RCAT2(a, b)
#define RFN(name) NK_RCAT(name, SFX)

/* x: slot 0, y: slot 1, z: slot 2; channel c, values [r0, r1) */
static void RFN(fwd_)(const nk_cview *v, const void *xv, const void *zv, void *yv, int64_t c,
                      int64_t r0, int64_t r1, double mean, double a, double b) {
    const T *x = xv, *z = zv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], sz = v->st[2][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *s = z + off[2];
        T *q = y + off[1];
        for (int64_t i = 0; i < n; i++) {
            double r = (((double)p[i * sx] - mean) * a + b) + (double)s[i * sz];
            if (r < 0.0) r = 0.0; /* NaN propagates, as torch.relu */
            q[i * sy] = (T)r;
        }
    }
}

/* x: slot 0, dy: slot 1, dx: slot 2, y: slot 3, dz: slot 4; dx or dz may be NULL */
static void RFN(bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv, const void *yv,
                            void *dxv, void *dzv, int64_t c, int64_t r0, int64_t r1, double mean,
                            double kg, double kx, double k0) {
    const T *x = xv, *dy = dyv, *ym = yv;
    T *dx = dxv, *dz = dzv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const int64_t sz = v->st[4][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = dy + off[1], *m = ym + off[3];
        T *o = dx ? dx + off[2] : NULL, *oz = dz ? dz + off[4] : NULL;
        for (int64_t i = 0; i < n; i++) {
            double gi = (double)g[i * sd];
            if (m[i * sm] <= 0) gi = 0.0; /* NaN passes the gradient, as torch's relu */
            const double xi = (double)p[i * sx];
            if (oz) oz[i * sz] = (T)gi; /* written after every read of this element */
            if (o) o[i * so] = (T)(kg * gi + kx * (xi - mean) + k0);
        }
    }
}

/* ---- rows (channels innermost): the same operations per element ---- */

static void RFN(rows_fwd_)(const nk_cview *v, const void *xv, const void *zv, void *yv,
                           int64_t c0, int64_t c1, int64_t r0, int64_t r1, const double *mean,
                           const double *a, const double *b) {
    const T *x = xv, *z = zv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], sz = v->st[2][in], nc = c1 - c0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0, *s = z + off[2] + r * sz + c0;
            T *q = y + off[1] + r * sy + c0;
            for (int64_t i = 0; i < nc; i++) {
                double o = (((double)p[i] - mean[i]) * a[i] + b[i]) + (double)s[i];
                if (o < 0.0) o = 0.0;
                q[i] = (T)o;
            }
        }
}

static void RFN(rows_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv,
                                 const void *yv, void *dxv, void *dzv, int64_t c0, int64_t c1,
                                 int64_t r0, int64_t r1, const double *mean, const double *kg,
                                 const double *kx, const double *k0) {
    const T *x = xv, *dy = dyv, *ym = yv;
    T *dx = dxv, *dz = dzv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const int64_t sz = v->st[4][in], nc = c1 - c0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0, *g = dy + off[1] + r * sd + c0;
            const T *m = ym + off[3] + r * sm + c0;
            T *o = dx ? dx + off[2] + r * so + c0 : NULL;
            T *oz = dz ? dz + off[4] + r * sz + c0 : NULL;
            for (int64_t i = 0; i < nc; i++) {
                double gi = (double)g[i];
                if (m[i] <= 0) gi = 0.0;
                const double xi = (double)p[i];
                if (oz) oz[i] = (T)gi;
                if (o) o[i] = (T)(kg[i] * gi + kx[i] * (xi - mean[i]) + k0[i]);
            }
        }
}

const nk_resid_kernels RFN(nk_resid_ref_) = {RFN(fwd_), RFN(bwd_apply_), RFN(rows_fwd_),
                                             RFN(rows_bwd_apply_)};

#undef RFN
#undef NK_RCAT
#undef NK_RCAT2
