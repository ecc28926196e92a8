/* Optimized masked batch-norm kernels for one element type, one mask type and one instruction
 * set. Before inclusion: the ISA's vector layer, T = element type, MT = mask element type,
 * SFX = name suffix, TABLE = the table to define, and
 *     vd   MLOAD(const MT *p)   the VW mask values at p as doubles
 *     vd   vd_keep_nz(vd v, vd m)   v where m != 0 (NaN counts as nonzero, as C's m != 0), else +0
 *
 * The contract is kernels/masked_kernels.h, the reference kernels/ref/masked_ref_impl.h.
 * Runs of stride 1 (x, y/dy/dx and mask all contiguous: NCHW) are vectorized; the last values
 * of a run and other strides take the scalar loop of the reference (the same operations).
 *  - Element-wise kernels (normalize, bwd_apply, relu_gate) evaluate the reference's expression
 *    in the reference's order in double (-ffp-contract=off): the reference's bits.
 *  - Sums are kept in 2 * VW-lane vector accumulators and reduced once per block, so their
 *    order differs from the reference's single running sum: results agree to a few ulp of the
 *    sums (tests/unit/test_maskedbn.c states the tolerance). The order depends only on the
 *    block (fixed, kernels.h), never on the thread count. */
#include <stdint.h>

#define NK_MSCAT2(a, b) a##b
#define NK_MSCAT(a, b) NK_MSCAT2(a, b)
#define MSF(name) NK_MSCAT(name, SFX)

/* one vector of x: vd_load_f32 or vd_load_f64 by sizeof(T) */
static inline __attribute__((always_inline)) vd MSF(ldx_)(const T *p) {
    return sizeof(T) == 4 ? vd_load_f32((const float *)(const void *)p)
                          : vd_load_f64((const double *)(const void *)p);
}
static inline __attribute__((always_inline)) void MSF(stx_)(T *p, vd v) {
    if (sizeof(T) == 4)
        vd_store_f32((float *)(void *)p, v);
    else
        vd_store_f64((double *)(void *)p, v);
}

/* lane sum of two accumulators (any fixed order will do: see the header) */
static inline double MSF(hsum_)(vd a, vd b) {
    _Alignas(64) double t[VW];
    vd_store_f64(t, vd_add(a, b));
    double s = 0.0;
    for (int i = 0; i < VW; i++) s += t[i];
    return s;
}

static void MSF(msum_)(const nk_cview *v, const void *xv, const void *mv, int64_t c, int64_t r0,
                       int64_t r1, int64_t *count, double *sum) {
    const T *x = xv;
    const MT *mk = mv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sm = v->st[3][in];
    const vd one = vd_set1(1.0);
    vd s0 = vd_zero(), s1 = vd_zero(), n0 = vd_zero(), n1 = vd_zero();
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, cnt = 0;
    double s = 0.0;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        const MT *m = mk + off[3];
        int64_t i = 0;
        if (sx == 1 && sm == 1)
            for (; i + 2 * VW <= n; i += 2 * VW) {
                const vd m0 = MLOAD(m + i), m1 = MLOAD(m + i + VW);
                s0 = vd_add(s0, vd_keep_nz(MSF(ldx_)(p + i), m0));
                s1 = vd_add(s1, vd_keep_nz(MSF(ldx_)(p + i + VW), m1));
                n0 = vd_add(n0, vd_keep_nz(one, m0));
                n1 = vd_add(n1, vd_keep_nz(one, m1));
            }
        for (; i < n; i++)
            if (m[i * sm] != 0) {
                s += (double)p[i * sx];
                cnt++;
            }
    }
    /* the lane counts are exact integers in double (< 2^53) */
    *count = cnt + (int64_t)MSF(hsum_)(n0, n1);
    *sum = MSF(hsum_)(s0, s1) + s;
}

static void MSF(msqdev_)(const nk_cview *v, const void *xv, const void *mv, int64_t c,
                         int64_t r0, int64_t r1, double mean, double *ss) {
    const T *x = xv;
    const MT *mk = mv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sm = v->st[3][in];
    const vd vm = vd_set1(mean);
    vd a0 = vd_zero(), a1 = vd_zero();
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    double s = 0.0;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        const MT *m = mk + off[3];
        int64_t i = 0;
        if (sx == 1 && sm == 1)
            for (; i + 2 * VW <= n; i += 2 * VW) {
                const vd d0 = vd_keep_nz(vd_sub(MSF(ldx_)(p + i), vm), MLOAD(m + i));
                const vd d1 = vd_keep_nz(vd_sub(MSF(ldx_)(p + i + VW), vm), MLOAD(m + i + VW));
                a0 = vd_fmadd(d0, d0, a0);
                a1 = vd_fmadd(d1, d1, a1);
            }
        for (; i < n; i++)
            if (m[i * sm] != 0) {
                const double d = (double)p[i * sx] - mean;
                s += d * d;
            }
    }
    *ss = MSF(hsum_)(a0, a1) + s;
}

static void MSF(mnormalize_)(const nk_cview *v, const void *xv, const void *mv, void *yv,
                             int64_t c, int64_t r0, int64_t r1, double mean, double a, double b,
                             int relu) {
    const T *x = xv;
    const MT *mk = mv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], sm = v->st[3][in];
    const vd vm = vd_set1(mean), va = vd_set1(a), vb = vd_set1(b);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        const MT *m = mk + off[3];
        T *q = y + off[1];
        int64_t i = 0;
        if (sx == 1 && sy == 1 && sm == 1)
            for (; i + VW <= n; i += VW) {
                vd r = vd_add(vd_mul(vd_sub(MSF(ldx_)(p + i), vm), va), vb);
                if (relu) r = vd_relu(r);
                MSF(stx_)(q + i, vd_keep_nz(r, MLOAD(m + i)));
            }
        for (; i < n; i++) {
            double r = 0.0;
            if (m[i * sm] != 0) {
                r = ((double)p[i * sx] - mean) * a + b;
                if (relu && r < 0.0) r = 0.0;
            }
            q[i * sy] = (T)r;
        }
    }
}

static void MSF(mbwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv,
                              const void *ymv, const void *mv, int64_t c, int64_t r0,
                              int64_t r1, double mean, int64_t *count, double *sum_g,
                              double *sum_gx, double *sum_x) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    const MT *mk = mv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], sy = v->st[2][in], sm = v->st[3][in];
    const vd vm = vd_set1(mean), one = vd_set1(1.0);
    vd ag = vd_zero(), agx = vd_zero(), ax = vd_zero(), an = vd_zero();
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, cnt = 0;
    double sg = 0.0, sgx = 0.0, s1 = 0.0;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = dy + off[1];
        const T *yy = ym ? ym + off[2] : NULL;
        const MT *m = mk + off[3];
        int64_t i = 0;
        if (sx == 1 && sd == 1 && sm == 1 && (!yy || sy == 1))
            for (; i + VW <= n; i += VW) {
                const vd mm = MLOAD(m + i);
                vd gv = MSF(ldx_)(g + i);
                if (yy) gv = vd_zero_where_le0(gv, MSF(ldx_)(yy + i));
                gv = vd_keep_nz(gv, mm);
                const vd d = vd_keep_nz(vd_sub(MSF(ldx_)(p + i), vm), mm);
                ag = vd_add(ag, gv);
                agx = vd_fmadd(gv, d, agx);
                ax = vd_add(ax, d);
                an = vd_add(an, vd_keep_nz(one, mm));
            }
        for (; i < n; i++) {
            if (m[i * sm] == 0) continue;
            cnt++;
            double gi = (double)g[i * sd];
            if (yy && yy[i * sy] <= 0) gi = 0.0;
            const double d = (double)p[i * sx] - mean;
            sg += gi;
            sgx += gi * d;
            s1 += d;
        }
    }
    *count = cnt + (int64_t)MSF(hsum_)(an, vd_zero());
    *sum_g = MSF(hsum_)(ag, vd_zero()) + sg;
    *sum_gx = MSF(hsum_)(agx, vd_zero()) + sgx;
    *sum_x = MSF(hsum_)(ax, vd_zero()) + s1;
}

static void MSF(mbwd_apply_)(const nk_cview *v, const void *xv, const void *gv, const void *mv,
                             void *dxv, int64_t c, int64_t r0, int64_t r1, double mean,
                             double kg, double kx, double k0) {
    const T *x = xv, *gg = gv;
    const MT *mk = mv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sg = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const vd vm = vd_set1(mean), vkg = vd_set1(kg), vkx = vd_set1(kx), vk0 = vd_set1(k0);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = gg + off[1];
        const MT *m = mk + off[3];
        T *o = dx + off[2];
        int64_t i = 0;
        if (sx == 1 && sg == 1 && so == 1 && sm == 1)
            for (; i + VW <= n; i += VW) {
                const vd r = vd_add(vd_add(vd_mul(vkg, MSF(ldx_)(g + i)),
                                           vd_mul(vkx, vd_sub(MSF(ldx_)(p + i), vm))),
                                    vk0);
                MSF(stx_)(o + i, vd_keep_nz(r, MLOAD(m + i)));
            }
        for (; i < n; i++) {
            double r = 0.0;
            if (m[i * sm] != 0) r = kg * (double)g[i * sg] + kx * ((double)p[i * sx] - mean) + k0;
            o[i * so] = (T)r;
        }
    }
}

/* an exact selection: the same bits as the reference whatever the order */
static void MSF(mrelu_gate_)(const nk_cview *v, const void *yv, const void *dyv, void *gv,
                             int64_t c, int64_t r0, int64_t r1) {
    const T *y = yv, *dy = dyv;
    T *g = gv;
    const int in = v->nd - 1;
    const int64_t sy = v->st[0][in], sd = v->st[1][in], sg = v->st[2][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *a = y + off[0], *b = dy + off[1];
        T *o = g + off[2];
        int64_t i = 0;
        if (sy == 1 && sd == 1 && sg == 1)
            for (; i + VW <= n; i += VW)
                MSF(stx_)(o + i, vd_zero_where_le0(MSF(ldx_)(b + i), MSF(ldx_)(a + i)));
        for (; i < n; i++) o[i * sg] = a[i * sy] <= 0 ? (T)0 : b[i * sd];
    }
}

const nk_masked_kernels TABLE = {MSF(msum_),       MSF(msqdev_),      MSF(mnormalize_),
                                 MSF(mbwd_reduce_), MSF(mbwd_apply_), MSF(mrelu_gate_)};

#undef MSF
#undef NK_MSCAT
#undef NK_MSCAT2
