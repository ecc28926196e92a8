/* Reference row-normalization kernels, instantiated for one element type (the specification).
 * Before inclusion: T = element type, SFX = name suffix. See kernels/row_kernels.h for the
 * contract of each function. */
#define NK_RCAT2(a, b) a##b
#define NK_RCAT(a, b) NK_RCAT2(a, b)
#define RFN(name) NK_RCAT(name, SFX)

/* x: slot 0; rows [r0, r1), positions [j0, j1): two passes per row, as the batch-norm
 * reference (mean, then sum (x - mean)^2) */
static void RFN(row_moments_)(const nk_cview *v, const void *xv, int64_t r0, int64_t r1,
                              int64_t j0, int64_t j1, double *mean, double *m2) {
    const T *x = xv;
    const int64_t sx = v->st[0][v->nd - 1];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (int64_t r = r0; r < r1; r++) {
        double sum = 0.0, ss = 0.0;
        for (nk_seg_begin(&it, v, r, j0, j1); (n = nk_seg_next(&it, off));)
            for (int64_t i = 0; i < n; i++) sum += (double)x[off[0] + i * sx];
        const double mu = sum / (double)(j1 - j0);
        for (nk_seg_begin(&it, v, r, j0, j1); (n = nk_seg_next(&it, off));)
            for (int64_t i = 0; i < n; i++) {
                const double d = (double)x[off[0] + i * sx] - mu;
                ss += d * d;
            }
        mean[r - r0] = mu;
        m2[r - r0] = ss;
    }
}

/* x: slot 0, y: slot 1; row r, positions [j0, j1) */
static void RFN(row_normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t r,
                                int64_t j0, int64_t j1, double c, double a,
                                const double *gamma, const double *beta) {
    const T *x = xv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    for (nk_seg_begin(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
        const T *p = x + off[0];
        T *q = y + off[1];
        /* the same operations in each branch: ((x - c) * a) * gamma + beta */
        const double *gj = gamma ? gamma + j : NULL, *bj = beta ? beta + j : NULL;
        if (gj && bj)
            for (int64_t i = 0; i < n; i++) q[i * sy] = (T)(((double)p[i * sx] - c) * a * gj[i] + bj[i]);
        else if (gj)
            for (int64_t i = 0; i < n; i++) q[i * sy] = (T)(((double)p[i * sx] - c) * a * gj[i]);
        else if (bj)
            for (int64_t i = 0; i < n; i++) q[i * sy] = (T)(((double)p[i * sx] - c) * a + bj[i]);
        else
            for (int64_t i = 0; i < n; i++) q[i * sy] = (T)(((double)p[i * sx] - c) * a);
    }
}

/* x: slot 0, dy: slot 1; one row */
static void RFN(row_bwd_reduce1_)(const nk_cview *v, const void *xv, const void *dyv, int64_t r,
                                  int64_t j0, int64_t j1, double c, const double *gamma,
                                  double *sum_h, double *sum_hd, double *sum_d) {
    const T *x = xv, *dy = dyv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    double sh = 0.0, shd = 0.0, sdd = 0.0;
    for (nk_seg_begin(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
        const T *p = x + off[0], *g = dy + off[1];
        for (int64_t i = 0; i < n; i++) {
            double h = (double)g[i * sd];
            if (gamma) h *= gamma[j + i];
            const double d = (double)p[i * sx] - c;
            sh += h;
            shd += h * d;
            sdd += d;
        }
    }
    *sum_h = sh;
    *sum_hd = shd;
    if (sum_d) *sum_d = sdd;
}

static void RFN(row_bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv, int64_t r0,
                                 int64_t r1, int64_t j0, int64_t j1, const double *c,
                                 const double *gamma, double *sum_h, double *sum_hd,
                                 double *sum_d) {
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i = r - r0;
        RFN(row_bwd_reduce1_)(v, xv, dyv, r, j0, j1, c[i], gamma, &sum_h[i], &sum_hd[i],
                              sum_d ? &sum_d[i] : NULL);
    }
}

/* x: slot 0, dy: slot 1, dx: slot 2 (dx may be dy: each element is read before written;
 * dx NULL: only the column sums); one row */
static void RFN(row_bwd_apply1_)(const nk_cview *v, const void *xv, const void *dyv, void *dxv,
                                 int64_t r, int64_t j0, int64_t j1, double c,
                                 const double *gamma, double ka, double kx, double k0, double a,
                                 double *pg, double *pb) {
    const T *x = xv, *dy = dyv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    for (nk_seg_begin(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
        const T *p = x + off[0], *g = dy + off[1];
        for (int64_t i = 0; i < n; i++) {
            const double gi = (double)g[i * sd];
            if (pg) pg[j + i] += gi * (((double)p[i * sx] - c) * a);
            if (pb) pb[j + i] += gi;
            if (dx) {
                const double h = gamma ? gi * gamma[j + i] : gi;
                dx[off[2] + i * so] = (T)(ka * h + kx * ((double)p[i * sx] - c) + k0);
            }
        }
    }
}

static void RFN(row_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv, void *dxv,
                                int64_t r0, int64_t r1, int64_t j0, int64_t j1, const double *c,
                                const double *gamma, const double *ka, const double *kx,
                                const double *k0, const double *a, double *pg, double *pb) {
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i = r - r0;
        RFN(row_bwd_apply1_)(v, xv, dyv, dxv, r, j0, j1, c[i], gamma, ka[i], kx[i], k0[i], a[i],
                             pg, pb);
    }
}

/* no streaming stores: nothing to order */
static void RFN(row_flush_)(void) {}

const nk_row_kernels RFN(nk_row_ref_) = {RFN(row_moments_), RFN(row_normalize_),
                                         RFN(row_bwd_reduce_), RFN(row_bwd_apply_),
                                         RFN(row_flush_)};

#undef RFN
#undef NK_RCAT
#undef NK_RCAT2
