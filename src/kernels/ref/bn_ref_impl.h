/* Reference batch-norm kernels, instantiated for one element type (the specification).
 * Before inclusion: T = element type, SFX = name suffix. */
#define NK_CAT2(a, b) a##b
#define NK_CAT(a, b) NK_CAT2(a, b)
#define FN(name) NK_CAT(name, SFX)

/* x: run at slot 0 of view v, channel c, elements [r0, r1) */
static void FN(moments_)(const nk_cview *v, const void *xv, int64_t c, int64_t r0, int64_t r1,
                         double *mean, double *m2) {
    const T *x = xv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    double sum = 0.0;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        for (int64_t i = 0; i < n; i++) sum += (double)p[i * sx];
    }
    const double mu = sum / (double)(r1 - r0);
    double ss = 0.0;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        for (int64_t i = 0; i < n; i++) {
            const double d = (double)p[i * sx] - mu;
            ss += d * d;
        }
    }
    *mean = mu;
    *m2 = ss;
}

/* moments_ block by block */
static void FN(chan_moments_)(const nk_cview *v, const void *xv, int64_t c, int64_t b0,
                              int64_t b1, double *out) {
    for (int64_t b = b0; b < b1; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS;
        const int64_t r1 = r0 + NK_BLOCK_ELEMS < v->M ? r0 + NK_BLOCK_ELEMS : v->M;
        FN(moments_)(v, xv, c, r0, r1, &out[2 * (b - b0)], &out[2 * (b - b0) + 1]);
    }
}

/* x: slot 0, y: slot 1 */
static void FN(normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t c, int64_t r0,
                           int64_t r1, double mean, double a, double b, int relu) {
    const T *x = xv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        T *q = y + off[1];
        for (int64_t i = 0; i < n; i++) {
            double r = ((double)p[i * sx] - mean) * a + b;
            if (relu && r < 0.0) r = 0.0; /* NaN propagates, as torch.relu */
            q[i * sy] = (T)r;
        }
    }
}

/* x: slot 0, dy: slot 1, ymask: slot 3 (may be NULL) */
static void FN(bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv, const void *ymv,
                            int64_t c, int64_t r0, int64_t r1, double mean, double *sum_g,
                            double *sum_gx, double *sum_x) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], sm = v->st[3][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    double sg = 0.0, sgx = 0.0, s1 = 0.0;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = dy + off[1];
        const T *m = ym ? ym + off[3] : NULL;
        for (int64_t i = 0; i < n; i++) {
            double gi = (double)g[i * sd];
            if (m && m[i * sm] <= 0) gi = 0.0; /* NaN passes the gradient, as torch's relu */
            const double d = (double)p[i * sx] - mean;
            sg += gi;
            sgx += gi * d;
            s1 += d;
        }
    }
    *sum_g = sg;
    *sum_gx = sgx;
    if (sum_x) *sum_x = s1;
}

/* x: slot 0, dy: slot 1, dx: slot 2, ymask: slot 3 (may be NULL) */
static void FN(bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv, const void *ymv,
                           void *dxv, int64_t c, int64_t r0, int64_t r1, double mean, double kg,
                           double kx, double k0) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = dy + off[1];
        const T *m = ym ? ym + off[3] : NULL;
        T *o = dx + off[2];
        for (int64_t i = 0; i < n; i++) {
            double gi = (double)g[i * sd];
            if (m && m[i * sm] <= 0) gi = 0.0;
            o[i * so] = (T)(kg * gi + kx * ((double)p[i * sx] - mean) + k0);
        }
    }
}

/* ---- rows (channels innermost): each channel's values are visited in the same order as by
 * the per-channel functions above, with the same operations, so both give the same bits ---- */

/* x: slot 0; channels [c0, c1) at stride 1 from each row's start */
static void FN(rows_moments_)(const nk_cview *v, const void *xv, int64_t c0, int64_t c1,
                              int64_t r0, int64_t r1, double *mean, double *m2) {
    const T *x = xv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], nc = c1 - c0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (int64_t i = 0; i < nc; i++) mean[i] = m2[i] = 0.0;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0;
            for (int64_t i = 0; i < nc; i++) mean[i] += (double)p[i];
        }
    for (int64_t i = 0; i < nc; i++) mean[i] = mean[i] / (double)(r1 - r0);
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0;
            for (int64_t i = 0; i < nc; i++) {
                const double d = (double)p[i] - mean[i];
                m2[i] += d * d;
            }
        }
}

/* x: slot 0, y: slot 1 */
static void FN(rows_normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t c0,
                                int64_t c1, int64_t r0, int64_t r1, const double *mean,
                                const double *a, const double *b, int relu) {
    const T *x = xv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], nc = c1 - c0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0;
            T *q = y + off[1] + r * sy + c0;
            for (int64_t i = 0; i < nc; i++) {
                double o = ((double)p[i] - mean[i]) * a[i] + b[i];
                if (relu && o < 0.0) o = 0.0;
                q[i] = (T)o;
            }
        }
}

/* x: slot 0, dy: slot 1, ymask: slot 3 (may be NULL) */
static void FN(rows_bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv,
                                 const void *ymv, int64_t c0, int64_t c1, int64_t r0,
                                 int64_t r1, const double *mean, double *sum_g, double *sum_gx,
                                 double *sum_x) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], sm = v->st[3][in], nc = c1 - c0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (int64_t i = 0; i < nc; i++) {
        sum_g[i] = sum_gx[i] = 0.0;
        if (sum_x) sum_x[i] = 0.0;
    }
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0, *g = dy + off[1] + r * sd + c0;
            const T *m = ym ? ym + off[3] + r * sm + c0 : NULL;
            for (int64_t i = 0; i < nc; i++) {
                double gi = (double)g[i];
                if (m && m[i] <= 0) gi = 0.0;
                const double d = (double)p[i] - mean[i];
                sum_g[i] += gi;
                sum_gx[i] += gi * d;
                if (sum_x) sum_x[i] += d;
            }
        }
}

/* x: slot 0, dy: slot 1, dx: slot 2, ymask: slot 3 (may be NULL) */
static void FN(rows_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv,
                                const void *ymv, void *dxv, int64_t c0, int64_t c1, int64_t r0,
                                int64_t r1, const double *mean, const double *kg,
                                const double *kx, const double *k0) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const int64_t nc = c1 - c0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++) {
            const T *p = x + off[0] + r * sx + c0, *g = dy + off[1] + r * sd + c0;
            const T *m = ym ? ym + off[3] + r * sm + c0 : NULL;
            T *o = dx + off[2] + r * so + c0;
            for (int64_t i = 0; i < nc; i++) {
                double gi = (double)g[i];
                if (m && m[i] <= 0) gi = 0.0;
                o[i] = (T)(kg[i] * gi + kx[i] * ((double)p[i] - mean[i]) + k0[i]);
            }
        }
}

/* The runs functions (kernels.h): the per-channel functions channel by channel, so the same
 * results by construction. */
static void FN(runs_moments_)(const nk_cview *v, const void *xv, int64_t c0, int64_t c1,
                              int64_t r0, int64_t r1, double *mean, double *m2) {
    for (int64_t c = c0; c < c1; c++) FN(moments_)(v, xv, c, r0, r1, &mean[c - c0], &m2[c - c0]);
}

static void FN(runs_normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t c0,
                                int64_t c1, int64_t r0, int64_t r1, const double *mean,
                                const double *a, const double *b, int relu) {
    for (int64_t c = c0; c < c1; c++)
        FN(normalize_)(v, xv, yv, c, r0, r1, mean[c - c0], a[c - c0], b[c - c0], relu);
}

static void FN(runs_bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv,
                                 const void *ymv, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                                 const double *mean, double *sum_g, double *sum_gx,
                                 double *sum_x) {
    for (int64_t c = c0; c < c1; c++)
        FN(bwd_reduce_)(v, xv, dyv, ymv, c, r0, r1, mean[c - c0], &sum_g[c - c0],
                        &sum_gx[c - c0], sum_x ? &sum_x[c - c0] : NULL);
}

static void FN(runs_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv,
                                const void *ymv, void *dxv, int64_t c0, int64_t c1, int64_t r0,
                                int64_t r1, const double *mean, const double *kg,
                                const double *kx, const double *k0) {
    for (int64_t c = c0; c < c1; c++)
        FN(bwd_apply_)(v, xv, dyv, ymv, dxv, c, r0, r1, mean[c - c0], kg[c - c0], kx[c - c0],
                       k0[c - c0]);
}

const nk_bn_kernels FN(nk_bn_ref_) = {FN(moments_),      FN(normalize_),      FN(bwd_reduce_),
                                      FN(bwd_apply_),    FN(chan_moments_),
                                      FN(runs_moments_),   FN(runs_normalize_),
                                      FN(runs_bwd_reduce_), FN(runs_bwd_apply_),
                                      FN(rows_moments_), FN(rows_normalize_),
                                      FN(rows_bwd_reduce_), FN(rows_bwd_apply_)};

#undef FN
#undef NK_CAT
#undef NK_CAT2
