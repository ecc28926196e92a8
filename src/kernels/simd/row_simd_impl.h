/* Optimized row-normalization kernels (layer norm, RMS norm, MVN, weight standardization),
 * instantiated for one element type and one instruction set. Before inclusion: the ISA's
 * vector layer, T = the element type, SFX = f32 or f64, RTABLE = the name of the table.
 *
 * Contract: kernels/row_kernels.h; reference: kernels/ref/row_ref_impl.h. Values are converted
 * to double on load. Element-wise results (normalize, bwd_apply) use fused multiply-adds where
 * the reference rounds twice (the expressions are written above each function), and the sums
 * of moments and bwd_reduce are formed in the 16 lanes of kernels/simd/lanes16.h whatever the
 * layout: all differ from the reference's in the last bits of double. Runs whose strides are
 * not 1 take a scalar loop with the same operations (fma() is the FMA instruction under this
 * file's -mfma), so every layout, alignment and ISA gives the same bits. Where the registers
 * allow (AVX-512), plain rows are taken in pairs whose dependency chains overlap; each row's
 * sums keep their order, so pairing changes no bit. Outputs of large views are written with
 * streaming stores (kernels.h, NK_STREAM_MIN_BYTES), ordered by flush. */
#include <math.h>
#include <stdint.h>

#include "kernels/simd/lanes16.h"

#define NK_RCAT2(a, b) a##b
#define NK_RCAT(a, b) NK_RCAT2(a, b)
#define RFN(name) NK_RCAT(name, SFX)
#define RLD NK_RCAT(vd_load_, SFX)
#define RST NK_RCAT(vd_store_, SFX)
#define RMLD NK_RCAT(vd_maskload_, SFX)
#define RSST NK_RCAT(vd_stream_, SFX)
/* the lane-vector loops fully unrolled, so their accumulators stay in registers */
#define RUNROLL _Pragma("GCC unroll 8")

/* Brings the line of p into L1 (a hint: no fault, no effect on results). The element-wise
 * passes read their run from L1 (the statistics or row-sums pass has just loaded it) and
 * write with streaming stores, so memory would idle on the read side: they prefetch the same
 * position further on, which is a later row when rows are contiguous (the common case), so
 * its loads overlap this row's stores. Both look two runs ahead: a line then has a whole row's
 * time to arrive (for the forward, whose statistics are taken in pairs of rows, the next row
 * is in L1 already). Measured on 8192 x 1024 float32, one thread, CPU time: forward 2.8 ms
 * one run ahead, 2.0 ms two runs ahead; backward 6.5 ms without prefetch, 3.8 ms one run
 * ahead, 3.3 ms two (three: no better). */
#define RPREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
/* elements per 64-byte cache line (a multiple of VW for both element types and ISAs) */
#define RLINE ((int64_t)(64 / sizeof(T)))

/* nk_seg_begin for row r, positions [j0, j1). The common view (one kept axis, one normalized
 * axis: plain rows of a matrix) is set up without nk_seg_begin's divisions, a visible share of
 * a 1024-value row; nk_seg_next then yields the single run as for any view. */
NK_VEC_INLINE void RFN(rseg_begin_)(nk_seg_iter *it, const nk_cview *v, int64_t r, int64_t j0,
                                    int64_t j1) {
    if (v->nk != 1 || v->nd != 1) {
        nk_seg_begin(it, v, r, j0, j1);
        return;
    }
    it->v = v;
    it->remaining = j1 - j0;
    it->idx[0] = j0;
    for (int t = 0; t < v->nt; t++) it->off[t] = r * v->kst[t][0] + j0 * v->st[t][0];
}

/* Streaming stores for the outputs of view v (kernels.h, NK_STREAM_MIN_BYTES): R rows of K. */
NK_VEC_INLINE int RFN(rstreams_)(const nk_cview *v) {
    return v->C * v->M * (int64_t)sizeof(T) >= NK_STREAM_MIN_BYTES;
}

/* Values before q + i is aligned for a streaming store (VW elements), at most n - i. */
NK_VEC_INLINE int64_t RFN(rhead_)(const T *q, int64_t n) {
    const uintptr_t al = (uintptr_t)(VW * sizeof(T)), mis = (uintptr_t)q % al;
    if (mis % sizeof(T)) return n; /* not even element-aligned: never aligned */
    const int64_t h = mis ? (int64_t)((al - mis) / sizeof(T)) : 0;
    return h < n ? h : n;
}

/* ---- row moments ---------------------------------------------------------------------- */

/* Shifted sums of one row, s = the row's first value (kernels.h, numerics: relative error of
 * m2 <= ~K * 2^-53, 1e-12 for K = NK_BLOCK_ELEMS), q = position in [j0, j1):
 *     for each value: d = (double)x - s;  l = q % 16;  S1[l] += d;  S2[l] = fma(d, d, S2[l]);
 *     mean = s + nk_sum16(S1) / n;  m2 = nk_sum16(S2) - nk_sum16(S1)^2 / n  (0 if negative) */
NK_VEC_INLINE void RFN(rmom_finish_)(double s, const double S1, const double S2, int64_t n,
                                     double *mean, double *m2) {
    const double cnt = (double)n, q = S2 - S1 * S1 / cnt;
    *mean = s + S1 / cnt;
    *m2 = q < 0.0 ? 0.0 : q; /* NaN stays NaN */
}

/* lanes [lo, hi) of the 16-value chunk whose lane 0 is at base */
NK_VEC_INLINE void RFN(rmom_part_)(const T *base, int lo, int hi, vd vs, vd *a1, vd *a2) {
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
        const int l0 = lo - k * VW < 0 ? 0 : lo - k * VW, l1 = hi - k * VW > VW ? VW : hi - k * VW;
        if (l0 >= l1) continue;
        const vmask m = vm_range(l0, l1);
        const int64_t o = (int64_t)k * VW * (int64_t)sizeof(T);
        const vd d = vd_sub(RMLD((const T *)((uintptr_t)base + (uintptr_t)o), m), vs);
        a1[k] = vd_mask_add(a1[k], m, d);
        a2[k] = vd_mask_fmadd(d, d, a2[k], m);
    }
}

/* a whole chunk of 16 values; vns = -s. d = x - s is formed as fma(x, 1, -s): the same
 * correctly rounded difference (the product is exact, one rounding), but on the multiply-add
 * units, while the float-to-double conversions and the sums keep the adders busy (AMD Zen
 * has separate add and multiply-add pipes: this loop alone runs 8-10 % faster on Zen 5; no
 * slower where the units are shared). */
NK_VEC_INLINE void RFN(rmom_chunk_)(const T *p, vd vns, vd *a1, vd *a2) {
    const vd one = vd_set1(1.0);
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
        const vd d = vd_fmadd(RLD(p + k * VW), one, vns);
        a1[k] = vd_add(a1[k], d);
        a2[k] = vd_fmadd(d, d, a2[k]);
    }
}

/* One row whose runs have stride 1 (any number of runs, starting anywhere in a chunk). */
NK_VEC_INLINE void RFN(rmom_row_)(const nk_cview *v, const T *x, int64_t r, int64_t j0,
                                  int64_t j1, double *mean, double *m2) {
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    RFN(rseg_begin_)(&it, v, r, j0, j1);
    n = nk_seg_next(&it, off); /* j1 > j0: at least one run */
    const double s = (double)x[off[0]];
    const vd vs = vd_set1(s), vns = vd_set1(-s);
    vd a1[NK_LANE_VECS], a2[NK_LANE_VECS];
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) a1[k] = a2[k] = vd_zero();
    for (; n; j += n, n = nk_seg_next(&it, off)) {
        const T *p = x + off[0];
        int64_t i = 0;
        const int ph = (int)((j - j0) % NK_LANES);
        if (ph) { /* the run starts inside a chunk: its lane 0 lies ph values before */
            const int hi = n < NK_LANES - ph ? ph + (int)n : NK_LANES;
            RFN(rmom_part_)((const T *)((uintptr_t)p - (uintptr_t)ph * sizeof(T)), ph, hi, vs, a1,
                            a2);
            i = hi - ph;
        }
        for (; i + NK_LANES <= n; i += NK_LANES) RFN(rmom_chunk_)(p + i, vns, a1, a2);
        if (i < n) RFN(rmom_part_)(p + i, 0, (int)(n - i), vs, a1, a2);
    }
    RFN(rmom_finish_)(s, vd_sum16(a1), vd_sum16(a2), j1 - j0, mean, m2);
}

#if NK_LANE_VECS <= 2
/* Two rows of one contiguous run each, interleaved: each row's lanes take its values in the
 * same order as rmom_row_ (the same bits), but the two rows' dependency chains overlap (the
 * FMA latency bounds one row: AVX-512 keeps 2 chains per sum). */
NK_VEC_INLINE void RFN(rmom_pair_)(const T *pa, const T *pb, int64_t n, double *mean,
                                   double *m2) {
    const double sa = (double)pa[0], sb = (double)pb[0];
    const vd vsa = vd_set1(sa), vsb = vd_set1(sb), vnsa = vd_set1(-sa), vnsb = vd_set1(-sb);
    vd a1[NK_LANE_VECS], a2[NK_LANE_VECS], b1[NK_LANE_VECS], b2[NK_LANE_VECS];
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) a1[k] = a2[k] = b1[k] = b2[k] = vd_zero();
    int64_t i = 0;
    for (; i + NK_LANES <= n; i += NK_LANES) {
        RFN(rmom_chunk_)(pa + i, vnsa, a1, a2);
        RFN(rmom_chunk_)(pb + i, vnsb, b1, b2);
    }
    if (i < n) {
        RFN(rmom_part_)(pa + i, 0, (int)(n - i), vsa, a1, a2);
        RFN(rmom_part_)(pb + i, 0, (int)(n - i), vsb, b1, b2);
    }
    RFN(rmom_finish_)(sa, vd_sum16(a1), vd_sum16(a2), n, &mean[0], &m2[0]);
    RFN(rmom_finish_)(sb, vd_sum16(b1), vd_sum16(b2), n, &mean[1], &m2[1]);
}
#endif

static void RFN(row_moments_)(const nk_cview *v, const void *xv, int64_t r0, int64_t r1,
                              int64_t j0, int64_t j1, double *mean, double *m2) {
    const T *x = xv;
    const int64_t sx = v->st[0][v->nd - 1];
    int64_t r = r0;
#if NK_LANE_VECS <= 2 /* AVX2 has 4 chains per sum already; a pair would fill its 16 registers */
    if (v->nk == 1 && v->nd == 1 && sx == 1) /* plain rows: pairs */
        for (const int64_t ld = v->kst[0][0]; r + 2 <= r1; r += 2) {
            const T *pa = x + r * ld + j0;
            RFN(rmom_pair_)(pa, pa + ld, j1 - j0, mean + (r - r0), m2 + (r - r0));
        }
#endif
    for (; r < r1; r++) {
        if (sx == 1) {
            RFN(rmom_row_)(v, x, r, j0, j1, mean + (r - r0), m2 + (r - r0));
            continue;
        }
        nk_seg_iter it;
        int64_t off[NK_CV_MAXT], n, j = j0;
        double t1[NK_LANES] = {0}, t2[NK_LANES] = {0}, s = 0.0;
        for (RFN(rseg_begin_)(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
            const T *p = x + off[0];
            if (j == j0) s = (double)p[0];
            for (int64_t i = 0; i < n; i++) {
                const double d = (double)p[i * sx] - s;
                const int l = (int)((j - j0 + i) % NK_LANES);
                t1[l] += d;
                t2[l] = fma(d, d, t2[l]);
            }
        }
        RFN(rmom_finish_)(s, nk_sum16(t1), nk_sum16(t2), j1 - j0, mean + (r - r0), m2 + (r - r0));
    }
}

/* ---- normalize ------------------------------------------------------------------------- */

/* One value of normalize: d = x - c (skipped when c is +0: x - (+0) is x for every x, -0
 * included), t = a * gamma (a without gamma), y = fma(d, t, beta) (d * t without beta).
 * The vector loop evaluates the same operations, so strided, unaligned and vector paths agree
 * bitwise. Against the reference's ((x - c) * a) * gamma + beta: one rounding fewer, the
 * product a * gamma rounded instead of (x - c) * a, both in double: the double results differ
 * by a few ulp of double and the float32 outputs by at most one ulp (on a near tie). */
#define RN_ONE(xv, c, a, gj, bj, cent)                                                           \
    ((bj) ? fma((cent) ? (xv) - (c) : (xv), (gj) ? (a) * *(gj) : (a), *(bj))                     \
          : ((cent) ? (xv) - (c) : (xv)) * ((gj) ? (a) * *(gj) : (a)))

/* for (i = 0; i < n; i++) y[i] = (T)RN_ONE((double)x[i], c, a, gamma + i, beta + i, cent);
 * gj, bj, cent and stream are constants at each call site: one loop per combination. */
NK_VEC_INLINE void RFN(rnorm_run_)(const T *p, T *q, int64_t n, double c, double a,
                                   const double *gj, const double *bj, int cent, int stream) {
    const vd vc = vd_set1(c), va = vd_set1(a);
    int64_t i = 0;
    if (stream)
        for (const int64_t h = RFN(rhead_)(q, n); i < h; i++)
            q[i] = (T)RN_ONE((double)p[i], c, a, gj ? gj + i : NULL, bj ? bj + i : NULL, cent);
#define RN_VEC(i)                                                                                \
    do {                                                                                         \
        vd d_ = RLD(p + (i));                                                                    \
        if (cent) d_ = vd_sub(d_, vc);                                                           \
        const vd t_ = gj ? vd_mul(va, vd_load_f64(gj + (i))) : va;                               \
        const vd r_ = bj ? vd_fmadd(d_, t_, vd_load_f64(bj + (i))) : vd_mul(d_, t_);             \
        if (stream)                                                                              \
            RSST(q + (i), r_);                                                                   \
        else                                                                                     \
            RST(q + (i), r_);                                                                    \
    } while (0)
    for (; i + RLINE <= n; i += RLINE) { /* one prefetch per cache line */
        RPREFETCH(p + 2 * n + i);
        RUNROLL for (int k = 0; k < RLINE / VW; k++) RN_VEC(i + k * VW);
    }
    for (; i + VW <= n; i += VW) RN_VEC(i);
#undef RN_VEC
    for (; i < n; i++)
        q[i] = (T)RN_ONE((double)p[i], c, a, gj ? gj + i : NULL, bj ? bj + i : NULL, cent);
}

static void RFN(row_normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t r,
                                int64_t j0, int64_t j1, double c, double a, const double *gamma,
                                const double *beta) {
    const T *x = xv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in];
    const int cent = !(c == 0.0 && !signbit(c));
    const int stream = sx == 1 && sy == 1 && RFN(rstreams_)(v);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    const int plain = v->nk == 1 && v->nd == 1; /* rows of a matrix: one run, no iterator */
    for (RFN(rseg_begin_)(&it, v, r, j0, j1); (n = plain ? it.remaining : nk_seg_next(&it, off));
         j += n) {
        if (plain) {
            off[0] = it.off[0];
            off[1] = it.off[1];
            it.remaining = 0;
        }
        const T *p = x + off[0];
        T *q = y + off[1];
        const double *gj = gamma ? gamma + j : NULL, *bj = beta ? beta + j : NULL;
        if (sx == 1 && sy == 1) {
            /* one instance per combination, so the branches leave the loop; RMS norm (c = 0)
             * has no beta */
            if (stream) {
                if (gj && bj)
                    RFN(rnorm_run_)(p, q, n, c, a, gj, bj, 1, 1);
                else
                    RFN(rnorm_run_)(p, q, n, c, a, gj, bj, cent, 1);
            } else if (gj && bj) {
                RFN(rnorm_run_)(p, q, n, c, a, gj, bj, 1, 0);
            } else if (gj && !cent) {
                RFN(rnorm_run_)(p, q, n, c, a, gj, NULL, 0, 0);
            } else {
                RFN(rnorm_run_)(p, q, n, c, a, gj, bj, cent, 0);
            }
            continue;
        }
        for (int64_t i = 0; i < n; i++)
            q[i * sy] = (T)RN_ONE((double)p[i * sx], c, a, gj ? gj + i : NULL,
                                  bj ? bj + i : NULL, cent);
    }
}

/* q = position in the block [j0, j1), sums in the 16 lanes of kernels/simd/lanes16.h:
 *     for each value: d = (double)x - c;  h = (double)dy;  if (gamma) h *= gamma[j];
 *                     l = q % 16;  H[l] += h;  HD[l] = fma(h, d, HD[l]);  D[l] += d;
 *     sum_h = nk_sum16(H), sum_hd = nk_sum16(HD), sum_d = nk_sum16(D)
 * Runs of stride 1 feed the lanes with vectors (masked where a run does not start or end on a
 * multiple of 16); other strides take the scalar loop: the same lane sums either way. wd
 * (sum_d wanted) and wg (gamma given) are constants at each call site. */
NK_VEC_INLINE void RFN(rbr_part_)(const T *xb, const T *gb, const double *gmb, int lo, int hi,
                                  vd vc, vd *ah, vd *ahd, vd *ad, int wd) {
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
        const int l0 = lo - k * VW < 0 ? 0 : lo - k * VW, l1 = hi - k * VW > VW ? VW : hi - k * VW;
        if (l0 >= l1) continue;
        const vmask m = vm_range(l0, l1);
        const int64_t o = (int64_t)k * VW;
        vd h = RMLD((const T *)((uintptr_t)gb + (uintptr_t)(o * (int64_t)sizeof(T))), m);
        if (gmb) h = vd_mul(h, vd_maskload_f64((const double *)((uintptr_t)gmb + (uintptr_t)(o * 8)), m));
        const vd d = vd_sub(RMLD((const T *)((uintptr_t)xb + (uintptr_t)(o * (int64_t)sizeof(T))), m), vc);
        ah[k] = vd_mask_add(ah[k], m, h);
        ahd[k] = vd_mask_fmadd(h, d, ahd[k], m);
        if (wd) ad[k] = vd_mask_add(ad[k], m, d);
    }
}

/* The vector path over the runs of a row whose x and dy runs have stride 1. */
NK_VEC_INLINE void RFN(rbr_vec_)(const nk_cview *v, const T *x, const T *dy, int64_t r,
                                 int64_t j0, int64_t j1, double c, const double *gamma,
                                 double *sum_h, double *sum_hd, double *sum_d, int wd, int wg) {
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    const vd vc = vd_set1(c);
    vd ah[NK_LANE_VECS], ahd[NK_LANE_VECS], ad[NK_LANE_VECS];
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) ah[k] = ahd[k] = ad[k] = vd_zero();
    for (RFN(rseg_begin_)(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
        const T *p = x + off[0], *g = dy + off[1];
        const double *gj = gamma ? gamma + j : NULL;
        int64_t i = 0;
        const int ph = (int)((j - j0) % NK_LANES);
        if (ph) { /* the run starts inside a chunk: its lane 0 lies ph values before */
            const int hi = n < NK_LANES - ph ? ph + (int)n : NK_LANES;
            const uintptr_t back = (uintptr_t)ph;
            RFN(rbr_part_)((const T *)((uintptr_t)p - back * sizeof(T)),
                           (const T *)((uintptr_t)g - back * sizeof(T)),
                           gj ? (const double *)((uintptr_t)gj - back * sizeof(double)) : NULL,
                           ph, hi, vc, ah, ahd, ad, wd);
            i = hi - ph;
        }
        for (; i + NK_LANES <= n; i += NK_LANES)
            RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                vd h = RLD(g + i + k * VW);
                if (wg) h = vd_mul(h, vd_load_f64(gj + i + k * VW));
                const vd d = vd_sub(RLD(p + i + k * VW), vc);
                ah[k] = vd_add(ah[k], h);
                ahd[k] = vd_fmadd(h, d, ahd[k]);
                if (wd) ad[k] = vd_add(ad[k], d);
            }
        if (i < n)
            RFN(rbr_part_)(p + i, g + i, gj ? gj + i : NULL, 0, (int)(n - i), vc, ah, ahd, ad, wd);
    }
    *sum_h = vd_sum16(ah);
    *sum_hd = vd_sum16(ahd);
    if (wd) *sum_d = vd_sum16(ad);
}

static void RFN(rbr_one_)(const nk_cview *v, const void *xv, const void *dyv, int64_t r,
                          int64_t j0, int64_t j1, double c, const double *gamma, double *sum_h,
                          double *sum_hd, double *sum_d) {
    const T *x = xv, *dy = dyv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in];
    if (sx == 1 && sd == 1) {
        if (sum_d && gamma)
            RFN(rbr_vec_)(v, x, dy, r, j0, j1, c, gamma, sum_h, sum_hd, sum_d, 1, 1);
        else if (sum_d)
            RFN(rbr_vec_)(v, x, dy, r, j0, j1, c, NULL, sum_h, sum_hd, sum_d, 1, 0);
        else if (gamma)
            RFN(rbr_vec_)(v, x, dy, r, j0, j1, c, gamma, sum_h, sum_hd, NULL, 0, 1);
        else
            RFN(rbr_vec_)(v, x, dy, r, j0, j1, c, NULL, sum_h, sum_hd, NULL, 0, 0);
        return;
    }
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    double H[NK_LANES] = {0}, HD[NK_LANES] = {0}, D[NK_LANES] = {0};
    for (RFN(rseg_begin_)(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
        const T *p = x + off[0], *g = dy + off[1];
        const double *gj = gamma ? gamma + j : NULL;
        for (int64_t i = 0; i < n; i++) {
            double h = (double)g[i * sd];
            if (gj) h *= gj[i];
            const double d = (double)p[i * sx] - c;
            const int l = (int)((j - j0 + i) % NK_LANES);
            H[l] += h;
            HD[l] = fma(h, d, HD[l]);
            D[l] += d;
        }
    }
    *sum_h = nk_sum16(H);
    *sum_hd = nk_sum16(HD);
    if (sum_d) *sum_d = nk_sum16(D);
}

#if NK_LANE_VECS <= 2
/* Two plain rows of n values each (one run of stride 1 from position j0), interleaved: each
 * row's lanes take its values in the order of rbr_vec_ (the same bits), but the two rows'
 * dependency chains overlap. Only where the 2 x 3 sums fit in registers (AVX-512: 12 of 32;
 * AVX2 would need 24 of 16 and goes row by row, with 4 chains per sum already). */
NK_VEC_INLINE void RFN(rbr_pair_)(const T *pa, const T *ga, const T *pb, const T *gb, int64_t n,
                                  const double *gj, const double *c, double *sum_h,
                                  double *sum_hd, double *sum_d, int wd, int wg) {
    const vd vca = vd_set1(c[0]), vcb = vd_set1(c[1]);
    vd ah[NK_LANE_VECS], ahd[NK_LANE_VECS], ad[NK_LANE_VECS];
    vd bh[NK_LANE_VECS], bhd[NK_LANE_VECS], bd[NK_LANE_VECS];
    RUNROLL for (int k = 0; k < NK_LANE_VECS; k++)
        ah[k] = ahd[k] = ad[k] = bh[k] = bhd[k] = bd[k] = vd_zero();
    int64_t i = 0;
    for (; i + NK_LANES <= n; i += NK_LANES)
        RUNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
            const int64_t o = i + k * VW;
            vd h = RLD(ga + o), e = RLD(gb + o);
            if (wg) {
                const vd G = vd_load_f64(gj + o);
                h = vd_mul(h, G);
                e = vd_mul(e, G);
            }
            const vd d = vd_sub(RLD(pa + o), vca), f = vd_sub(RLD(pb + o), vcb);
            ah[k] = vd_add(ah[k], h);
            ahd[k] = vd_fmadd(h, d, ahd[k]);
            bh[k] = vd_add(bh[k], e);
            bhd[k] = vd_fmadd(e, f, bhd[k]);
            if (wd) {
                ad[k] = vd_add(ad[k], d);
                bd[k] = vd_add(bd[k], f);
            }
        }
    if (i < n) {
        RFN(rbr_part_)(pa + i, ga + i, wg ? gj + i : NULL, 0, (int)(n - i), vca, ah, ahd, ad, wd);
        RFN(rbr_part_)(pb + i, gb + i, wg ? gj + i : NULL, 0, (int)(n - i), vcb, bh, bhd, bd, wd);
    }
    sum_h[0] = vd_sum16(ah);
    sum_hd[0] = vd_sum16(ahd);
    sum_h[1] = vd_sum16(bh);
    sum_hd[1] = vd_sum16(bhd);
    if (wd) {
        sum_d[0] = vd_sum16(ad);
        sum_d[1] = vd_sum16(bd);
    }
}
#endif

/* Plain rows (one kept axis, one normalized axis, x and dy of stride 1) go in pairs where
 * rbr_pair_ exists, every other row alone. */
static void RFN(row_bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv, int64_t r0,
                                 int64_t r1, int64_t j0, int64_t j1, const double *c,
                                 const double *gamma, double *sum_h, double *sum_hd,
                                 double *sum_d) {
    int64_t r = r0;
#if NK_LANE_VECS <= 2
    if (v->nk == 1 && v->nd == 1 && v->st[0][0] == 1 && v->st[1][0] == 1) {
        const T *x = xv, *dy = dyv;
        const int64_t lx = v->kst[0][0], lg = v->kst[1][0], n = j1 - j0;
        const double *gj = gamma ? gamma + j0 : NULL;
        for (; r + 2 <= r1; r += 2) {
            const int64_t i = r - r0;
            const T *pa = x + r * lx + j0, *ga = dy + r * lg + j0;
            if (sum_d && gj)
                RFN(rbr_pair_)(pa, ga, pa + lx, ga + lg, n, gj, c + i, sum_h + i, sum_hd + i,
                               sum_d + i, 1, 1);
            else if (sum_d)
                RFN(rbr_pair_)(pa, ga, pa + lx, ga + lg, n, NULL, c + i, sum_h + i, sum_hd + i,
                               sum_d + i, 1, 0);
            else if (gj)
                RFN(rbr_pair_)(pa, ga, pa + lx, ga + lg, n, gj, c + i, sum_h + i, sum_hd + i,
                               NULL, 0, 1);
            else
                RFN(rbr_pair_)(pa, ga, pa + lx, ga + lg, n, NULL, c + i, sum_h + i, sum_hd + i,
                               NULL, 0, 0);
        }
    }
#endif
    for (; r < r1; r++) {
        const int64_t i = r - r0;
        RFN(rbr_one_)(v, xv, dyv, r, j0, j1, c[i], gamma, &sum_h[i], &sum_hd[i],
                      sum_d ? &sum_d[i] : NULL);
    }
}

/* One dx value and the column sums, d = x - c, h = dy * gamma (dy without gamma):
 *     dx = ka * h + fma(kx, d, k0);  pg[j] = fma(dy, d * a, pg[j]);  pb[j] += dy
 * Against the reference's (ka * h + kx * d) + k0 and pg[j] + dy * (d * a): one rounding
 * fewer each; the double results differ by a few ulp of double (of the largest of the terms,
 * as the reference's own error), the float32 dx by at most one ulp on a near tie. ka * h is
 * rounded on its own, not fused: k0 = -ka sum(h) / K is a rounded product too, so h - mean(h)
 * still cancels exactly when it should (K = 1, a row of equal h), as in the reference;
 * fma(ka, h, k0) would leave the rounding error of k0 (~1e-16 |ka h|) instead of 0. dy is read
 * before dx is written (dx may be dy). gj, qg, qb, o and stream are constants at each call
 * site: one loop per combination. */
NK_VEC_INLINE void RFN(rbwd_run_)(const T *p, const T *g, T *o, int64_t n, double c,
                                  const double *gj, double ka, double kx, double k0, double a,
                                  double *qg, double *qb, int stream) {
    const vd vc = vd_set1(c), va = vd_set1(a), vka = vd_set1(ka), vkx = vd_set1(kx),
             vk0 = vd_set1(k0);
    int64_t i = 0;
#define RB_ONE(i)                                                                                \
    do {                                                                                         \
        const double gi = (double)g[i], di = (double)p[i] - c;                                   \
        if (qg) qg[i] = fma(gi, di * a, qg[i]);                                                  \
        if (qb) qb[i] += gi;                                                                     \
        if (o) o[i] = (T)(ka * (gj ? gi * gj[i] : gi) + fma(kx, di, k0));                         \
    } while (0)
    if (stream)
        for (const int64_t h = RFN(rhead_)(o, n); i < h; i++) RB_ONE(i);
#define RB_VEC(i)                                                                                \
    do {                                                                                         \
        const vd gv_ = RLD(g + (i)), d_ = vd_sub(RLD(p + (i)), vc);                              \
        if (qg) vd_store_f64(qg + (i), vd_fmadd(gv_, vd_mul(d_, va), vd_load_f64(qg + (i))));    \
        if (qb) vd_store_f64(qb + (i), vd_add(vd_load_f64(qb + (i)), gv_));                      \
        if (o) {                                                                                 \
            const vd h_ = gj ? vd_mul(gv_, vd_load_f64(gj + (i))) : gv_;                         \
            const vd r_ = vd_add(vd_mul(vka, h_), vd_fmadd(vkx, d_, vk0));                       \
            if (stream)                                                                          \
                RSST(o + (i), r_);                                                               \
            else                                                                                 \
                RST(o + (i), r_);                                                                \
        }                                                                                        \
    } while (0)
    for (; i + RLINE <= n; i += RLINE) { /* one prefetch per cache line and stream */
        RPREFETCH(p + 2 * n + i);
        RPREFETCH(g + 2 * n + i);
        RUNROLL for (int k = 0; k < RLINE / VW; k++) RB_VEC(i + k * VW);
    }
    for (; i + VW <= n; i += VW) RB_VEC(i);
#undef RB_VEC
    for (; i < n; i++) RB_ONE(i);
#undef RB_ONE
}

static void RFN(rbwd_one_)(const nk_cview *v, const void *xv, const void *dyv, void *dxv,
                           int64_t r, int64_t j0, int64_t j1, double c, const double *gamma,
                           double ka, double kx, double k0, double a, double *pg, double *pb) {
    const T *x = xv, *dy = dyv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = dx ? v->st[2][in] : 1;
    const int stream = dx && sx == 1 && sd == 1 && so == 1 && RFN(rstreams_)(v);
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, j = j0;
    for (RFN(rseg_begin_)(&it, v, r, j0, j1); (n = nk_seg_next(&it, off)); j += n) {
        const T *p = x + off[0], *g = dy + off[1];
        T *o = dx ? dx + off[2] : NULL;
        const double *gj = gamma ? gamma + j : NULL;
        double *qg = pg ? pg + j : NULL, *qb = pb ? pb + j : NULL;
        if (sx == 1 && sd == 1 && so == 1) {
            /* the training backward's combinations get their own loops */
            if (o && gj && qg && qb && stream)
                RFN(rbwd_run_)(p, g, o, n, c, gj, ka, kx, k0, a, qg, qb, 1);
            else if (o && gj && qg && qb)
                RFN(rbwd_run_)(p, g, o, n, c, gj, ka, kx, k0, a, qg, qb, 0);
            else if (o && gj && !qg && !qb)
                RFN(rbwd_run_)(p, g, o, n, c, gj, ka, kx, k0, a, NULL, NULL, stream);
            else if (o && !gj && !qg && !qb)
                RFN(rbwd_run_)(p, g, o, n, c, NULL, ka, kx, k0, a, NULL, NULL, stream);
            else
                RFN(rbwd_run_)(p, g, o, n, c, gj, ka, kx, k0, a, qg, qb, stream);
            continue;
        }
        for (int64_t i = 0; i < n; i++) {
            const double gi = (double)g[i * sd], di = (double)p[i * sx] - c;
            if (qg) qg[i] = fma(gi, di * a, qg[i]);
            if (qb) qb[i] += gi;
            if (o) o[i * so] = (T)(ka * (gj ? gi * gj[i] : gi) + fma(kx, di, k0));
        }
    }
}

#if NK_LANE_VECS <= 2
/* rbwd_run_ over two plain rows a and b at once, in row order per value:
 *     pg[j] = fma(dy_b, d_b * a_b, fma(dy_a, d_a * a_a, pg[j]));  pb[j] = (pb[j] + dy_a) + dy_b
 * which are the bits of two rbwd_run_ calls, with one load and store of pg and pb per pair.
 * dx of both rows as rbwd_run_. lx, lg: row strides of x and dy (prefetch: the next pair). */
NK_VEC_INLINE void RFN(rbwd_pair_)(const T *pa, const T *ga, T *oa, const T *pb_, const T *gb,
                                   T *ob, int64_t n, int64_t lx, int64_t lg, const double *c,
                                   const double *gj, const double *ka, const double *kx,
                                   const double *k0, const double *a, double *qg, double *qb,
                                   int stream) {
    const vd vca = vd_set1(c[0]), vaa = vd_set1(a[0]), vkaa = vd_set1(ka[0]),
             vkxa = vd_set1(kx[0]), vk0a = vd_set1(k0[0]);
    const vd vcb = vd_set1(c[1]), vab = vd_set1(a[1]), vkab = vd_set1(ka[1]),
             vkxb = vd_set1(kx[1]), vk0b = vd_set1(k0[1]);
    int64_t i = 0;
#define RB2_ONE(i)                                                                               \
    do {                                                                                         \
        const double ua = (double)ga[i], da = (double)pa[i] - c[0];                              \
        const double ub = (double)gb[i], db = (double)pb_[i] - c[1];                             \
        if (qg) qg[i] = fma(ub, db * a[1], fma(ua, da * a[0], qg[i]));                           \
        if (qb) qb[i] = (qb[i] + ua) + ub;                                                       \
        if (oa) {                                                                                \
            oa[i] = (T)(ka[0] * (gj ? ua * gj[i] : ua) + fma(kx[0], da, k0[0]));                 \
            ob[i] = (T)(ka[1] * (gj ? ub * gj[i] : ub) + fma(kx[1], db, k0[1]));                 \
        }                                                                                        \
    } while (0)
    if (stream) /* the caller checked that oa and ob share their alignment */
        for (const int64_t h = RFN(rhead_)(oa, n); i < h; i++) RB2_ONE(i);
#define RB2_VEC(i)                                                                               \
    do {                                                                                         \
        const vd ua_ = RLD(ga + (i)), da_ = vd_sub(RLD(pa + (i)), vca);                          \
        const vd ub_ = RLD(gb + (i)), db_ = vd_sub(RLD(pb_ + (i)), vcb);                         \
        if (qg) {                                                                                \
            const vd t_ = vd_fmadd(ua_, vd_mul(da_, vaa), vd_load_f64(qg + (i)));                \
            vd_store_f64(qg + (i), vd_fmadd(ub_, vd_mul(db_, vab), t_));                         \
        }                                                                                        \
        if (qb) vd_store_f64(qb + (i), vd_add(vd_add(vd_load_f64(qb + (i)), ua_), ub_));         \
        if (oa) {                                                                                \
            const vd G_ = gj ? vd_load_f64(gj + (i)) : vd_zero();                                \
            const vd ha_ = gj ? vd_mul(ua_, G_) : ua_, hb_ = gj ? vd_mul(ub_, G_) : ub_;         \
            const vd ra_ = vd_add(vd_mul(vkaa, ha_), vd_fmadd(vkxa, da_, vk0a));                 \
            const vd rb_ = vd_add(vd_mul(vkab, hb_), vd_fmadd(vkxb, db_, vk0b));                 \
            if (stream) {                                                                        \
                RSST(oa + (i), ra_);                                                             \
                RSST(ob + (i), rb_);                                                             \
            } else {                                                                             \
                RST(oa + (i), ra_);                                                              \
                RST(ob + (i), rb_);                                                              \
            }                                                                                    \
        }                                                                                        \
    } while (0)
    for (; i + RLINE <= n; i += RLINE) { /* one prefetch per cache line and stream */
        RPREFETCH(pa + 2 * lx + i);
        RPREFETCH(pb_ + 2 * lx + i);
        RPREFETCH(ga + 2 * lg + i);
        RPREFETCH(gb + 2 * lg + i);
        RUNROLL for (int k = 0; k < RLINE / VW; k++) RB2_VEC(i + k * VW);
    }
    for (; i + VW <= n; i += VW) RB2_VEC(i);
#undef RB2_VEC
    for (; i < n; i++) RB2_ONE(i);
#undef RB2_ONE
}
#endif

/* Plain rows (as row_bwd_reduce_, and dx of stride 1) go in pairs where rbwd_pair_ exists,
 * unless streaming stores would need different scalar heads in the two rows. */
static void RFN(row_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv, void *dxv,
                                int64_t r0, int64_t r1, int64_t j0, int64_t j1, const double *c,
                                const double *gamma, const double *ka, const double *kx,
                                const double *k0, const double *a, double *pg, double *pb) {
    int64_t r = r0;
#if NK_LANE_VECS <= 2
    if (v->nk == 1 && v->nd == 1 && v->st[0][0] == 1 && v->st[1][0] == 1 &&
        (!dxv || v->st[2][0] == 1)) {
        const T *x = xv, *dy = dyv;
        T *dx = dxv;
        const int64_t lx = v->kst[0][0], lg = v->kst[1][0], lo = dx ? v->kst[2][0] : 0;
        const int64_t n = j1 - j0;
        const int stream = dx && RFN(rstreams_)(v);
        const double *gj = gamma ? gamma + j0 : NULL;
        double *qg = pg ? pg + j0 : NULL, *qb = pb ? pb + j0 : NULL;
        if (!stream || lo % VW == 0)
            for (; r + 2 <= r1; r += 2) {
                const int64_t i = r - r0;
                const T *pa = x + r * lx + j0, *ga = dy + r * lg + j0;
                T *oa = dx ? dx + r * lo + j0 : NULL, *ob = dx ? oa + lo : NULL;
                /* the training backward's combinations get their own loops */
                if (oa && gj && qg && qb && stream)
                    RFN(rbwd_pair_)(pa, ga, oa, pa + lx, ga + lg, ob, n, lx, lg, c + i, gj,
                                    ka + i, kx + i, k0 + i, a + i, qg, qb, 1);
                else if (oa && gj && qg && qb)
                    RFN(rbwd_pair_)(pa, ga, oa, pa + lx, ga + lg, ob, n, lx, lg, c + i, gj,
                                    ka + i, kx + i, k0 + i, a + i, qg, qb, 0);
                else
                    RFN(rbwd_pair_)(pa, ga, oa, pa + lx, ga + lg, ob, n, lx, lg, c + i, gj,
                                    ka + i, kx + i, k0 + i, a + i, qg, qb, stream);
            }
    }
#endif
    for (; r < r1; r++) {
        const int64_t i = r - r0;
        RFN(rbwd_one_)(v, xv, dyv, dxv, r, j0, j1, c[i], gamma, ka[i], kx[i], k0[i], a[i], pg,
                       pb);
    }
}

/* Orders the streaming stores of the calls before it (an SFENCE): called at the end of each
 * task, not of each row. */
static void RFN(row_flush_)(void) { vd_stream_fence(); }

const nk_row_kernels RTABLE = {RFN(row_moments_), RFN(row_normalize_), RFN(row_bwd_reduce_),
                               RFN(row_bwd_apply_), RFN(row_flush_)};

#undef RMLD
#undef RSST
#undef RUNROLL
#undef RPREFETCH
#undef RLINE
#undef RN_ONE
#undef RST
#undef RLD
#undef RFN
#undef NK_RCAT
#undef NK_RCAT2
