/* Optimized batch-norm kernels, instantiated for one element type and one instruction set.
 * Before inclusion: the ISA's vector layer (avx2/vec_avx2.h or avx512/vec_avx512.h), T = the
 * element type, SFX = f32 or f64, TABLE = the name of the table to define.
 *
 * The contract is kernels/kernels.h; the reference is kernels/ref/bn_ref_impl.h. Every value
 * is converted to double on load, as in the reference.
 *  - Element-wise functions (normalize, bwd_apply) vectorize runs of stride 1 and the channels
 *    of rows; the last few values and other strides take the scalar loop written above each
 *    function, which performs the same operations (so the same bits). They use FMA where the
 *    reference rounds a product and then adds (kernels.h, numerics): within a stated bound of
 *    the reference, not its bits.
 *  - The per-channel functions over runs of stride 1 prefetch while they walk a run
 *    (kernels/simd/ahead.h): the channel's next run (NCHW channels are runs of H*W values
 *    C*H*W apart), and in the element-wise passes over small channels the next channel too.
 *  - Reductions deal the values to the 16 lanes of kernels/simd/lanes16.h by their position in
 *    the block: vectors over runs of stride 1 (masked at the ends of a run that does not start
 *    or end on a multiple of 16), scalar code over other strides (the scalar loop above each
 *    function, with l = q % 16), per-row lane accumulators in the rows functions. All three
 *    produce the same lane sums, so the results do not depend on the layout. */
#include <math.h>
#include <stdint.h>

#include "kernels/simd/ahead.h"
#include "kernels/simd/lanes16.h"

#define NK_SCAT2(a, b) a##b
#define NK_SCAT(a, b) NK_SCAT2(a, b)
#define SFN(name) NK_SCAT(name, SFX)
#define LD NK_SCAT(vd_load_, SFX)
#define ST NK_SCAT(vd_store_, SFX)
#define MLD NK_SCAT(vd_maskload_, SFX)
#define SST NK_SCAT(vd_stream_, SFX)
#define NK_UNROLL _Pragma("GCC unroll 8")

/* Rows per tile of the rows reductions (a multiple of 16: 8 rows per lane). */
#define RT 128

/* Address of p[i] for an i that may be negative: the lane 0 of a chunk that starts before a
 * run (only its lanes inside the run are accessed, by a masked load). */
NK_VEC_INLINE const T *SFN(at_)(const T *p, int64_t i) {
    return (const T *)((uintptr_t)p + (uintptr_t)(i * (int64_t)sizeof(T)));
}

/* Lanes [lo, hi) of a 16-lane chunk, restricted to vector k: [l0, l1) in that vector. */
NK_VEC_INLINE int SFN(vec_lanes_)(int lo, int hi, int k, int *l0, int *l1) {
    *l0 = lo - k * VW < 0 ? 0 : lo - k * VW;
    *l1 = hi - k * VW > VW ? VW : hi - k * VW;
    return *l0 < *l1;
}

/* Streaming stores for the outputs of a per-channel pass over `tensors` tensors of view v
 * (inputs and outputs, each C * M elements; kernels.h, NK_STREAM_MIN_BYTES): counted
 * together, as rows_streams_ does, since the pass as a whole does not stay in the last-level
 * cache. One tensor alone (as before) left 32x64x56x56 float32 NCHW (x, y 25.7 MB each)
 * with cached stores, each output line read from memory before its write, in the fused
 * passes whose input comes from L2: 1 thread, ratio to copy/add (medians, alternated with the
 * old build): fwd-train 2.2 -> 1.48, bwd 2.28 -> 1.85, fwd-infer (runs_normalize) 1.02 -> 0.94.
 * Views of runs shorter than NK_AHEAD_MIN_RUN_BYTES count one tensor, as before (128x512x7x7
 * float32 backward, runs of 196 bytes, 1 thread: 4.0 -> 6.7 times an add when its 38 MB of x,
 * dy and dx streamed: partial lines at each run's ends). */
NK_VEC_INLINE int SFN(streams_)(const nk_cview *v, int tensors) {
    if (v->dims[v->nd - 1] * (int64_t)sizeof(T) < NK_AHEAD_MIN_RUN_BYTES) tensors = 1;
    return v->C * v->M * (int64_t)sizeof(T) * tensors >= NK_STREAM_MIN_BYTES;
}

/* Values before q + i is aligned for a streaming store (VW elements), at most n - i. */
NK_VEC_INLINE int64_t SFN(head_)(const T *q, int64_t i, int64_t n) {
    const uintptr_t al = (uintptr_t)(VW * sizeof(T)), mis = (uintptr_t)(q + i) % al;
    if (mis % sizeof(T)) return n - i; /* not even element-aligned: never aligned */
    const int64_t h = mis ? (int64_t)((al - mis) / sizeof(T)) : 0;
    return h < n - i ? h : n - i;
}

/* Prefetch (kernels/simd/ahead.h): the two walkers w[2] of a per-channel kernel and, for each
 * run the kernel walks, the runs they fetch meanwhile (pfr_) in up to 3 tensors: x, dy and
 * ymask, slots 0, 1 and 3 of the view. pfr_ stays in registers: the walkers, which call
 * nk_seg_next, are touched once per run only. */
typedef struct SFN(pfr_) {
    const T *p[2][3];
    int64_t n[2];
} SFN(pfr_);

/* chan: the next-channel walker too (the element-wise passes only, see ahead.h), for
 * channels of several runs (the view's innermost extent shorter than a channel: NCHW with
 * N > 1). A channel of one contiguous run is followed in memory by the next one, which the
 * hardware prefetchers stream (measured on group norm's per-(n, c) passes: with the walkers
 * there, bwd_reduce and bwd_apply 11-15% slower). */
NK_VEC_INLINE void SFN(pf_begin_)(nk_ahead *w, const nk_cview *v, int64_t c, int64_t r0,
                                  int64_t r1, int nts, int chan) {
    if (v->dims[v->nd - 1] * (int64_t)sizeof(T) < NK_AHEAD_MIN_RUN_BYTES) { /* see ahead.h */
        w[0].done = w[1].done = 1;
        return;
    }
    const int runs = v->dims[v->nd - 1] < v->M;
    nk_ahead_begin(&w[0], NK_AHEAD_RUN, v, c, r0, r1, nts * (int64_t)sizeof(T));
    nk_ahead_begin(&w[1], NK_AHEAD_CHANNEL, v, c, r0, r1,
                   chan && runs ? nts * (int64_t)sizeof(T) : NK_AHEAD_CHANNEL_BYTES + 1);
}

/* At the start of each run of the kernel (its values in x end at end): the walkers' next runs
 * in the tensors at b. A next run that starts where this one ends is left to the hardware
 * prefetchers (see pf_begin_). */
NK_VEC_INLINE SFN(pfr_) SFN(pf_run_)(nk_ahead *w, const T *const *b, int nts, const T *end) {
    static const int slot[3] = {0, 1, 3};
    SFN(pfr_) r = {0};
    if (w[0].done && w[1].done) return r; /* no walker (short runs): no calls, nothing to fetch */
    for (int k = 0; k < 2; k++) {
        int64_t off[NK_CV_MAXT];
        r.n[k] = nk_ahead_next(&w[k], off);
        for (int t = 0; t < nts; t++) r.p[k][t] = r.n[k] ? b[t] + off[slot[t]] : b[t];
    }
    if (r.n[0] && r.p[0][0] == end) r.n[0] = 0;
    if (r.n[1] && r.p[1][0] == r.p[0][0]) r.n[1] = 0; /* both at the same run: once */
    return r;
}

/* Prefetches the 16 values at position i of the runs in r (nothing past their ends) in the
 * tensors [t0, t1). */
NK_VEC_INLINE void SFN(pf_fetch_)(const SFN(pfr_) *r, int64_t i, int t0, int t1) {
    for (int k = 0; k < 2; k++) {
        if (i >= r->n[k]) continue;
        for (int t = t0; t < t1; t++) {
            nk_prefetch(r->p[k][t] + i);
            if (sizeof(T) * NK_LANES > 64 && i + (int64_t)(64 / sizeof(T)) < r->n[k])
                nk_prefetch(r->p[k][t] + i + 64 / sizeof(T)); /* 16 doubles: 2 lines */
        }
    }
}

/* 1 if a walker is active (runs long enough, see pf_begin_). */
NK_VEC_INLINE int SFN(pf_on_)(const nk_ahead *w) { return !(w[0].done && w[1].done); }

/* ---- per (channel, block) -------------------------------------------------------------- */

/* Shifted sums, s = the block's first value (kernels.h, numerics); q = position in the block:
 *     for each value: d = (double)x - s;  l = q % 16;  S1[l] += d;  S2[l] = fma(d, d, S2[l]);
 *     S1 = nk_sum16(S1), S2 = nk_sum16(S2);
 *     mean = s + S1 / n;  m2 = S2 - S1 * S1 / n  (0 if negative by rounding) */
static void SFN(mom_finish_)(double s, double S1, double S2, double cnt, double *mean,
                             double *m2) {
    const double q = S2 - S1 * S1 / cnt;
    *mean = s + S1 / cnt;
    *m2 = q < 0.0 ? 0.0 : q; /* NaN stays NaN */
}

/* lanes [lo, hi) of the chunk whose lane 0 is base */
NK_VEC_INLINE void SFN(mom_part_)(const T *base, int lo, int hi, vd vs, vd *a1, vd *a2) {
    NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
        int l0, l1;
        if (!SFN(vec_lanes_)(lo, hi, k, &l0, &l1)) continue;
        const vmask m = vm_range(l0, l1);
        const vd d = vd_sub(MLD(SFN(at_)(base, k * VW), m), vs);
        a1[k] = vd_mask_add(a1[k], m, d);
        a2[k] = vd_mask_fmadd(d, d, a2[k], m);
    }
}

/* One run of stride 1 at block position q into the lane sums; pf: prefetch pr's runs (a
 * constant where it is inlined, so that short runs keep the loop without prefetch code). */
NK_VEC_INLINE void SFN(mom_run_)(const T *p, int64_t n, int64_t q, vd vs, vd *a1, vd *a2,
                                 const SFN(pfr_) *pr, const int pf) {
    int64_t i = 0;
    const int ph = (int)(q % NK_LANES);
    if (ph) { /* the run starts inside a chunk */
        const int hi = n < NK_LANES - ph ? ph + (int)n : NK_LANES;
        SFN(mom_part_)(SFN(at_)(p, -ph), ph, hi, vs, a1, a2);
        i = hi - ph;
    }
    for (; i + NK_LANES <= n; i += NK_LANES) {
        if (pf) SFN(pf_fetch_)(pr, i, 0, 1);
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
            const vd d = vd_sub(LD(p + i + k * VW), vs);
            a1[k] = vd_add(a1[k], d);
            a2[k] = vd_fmadd(d, d, a2[k]);
        }
    }
    if (i < n) SFN(mom_part_)(p + i, 0, (int)(n - i), vs, a1, a2);
}

static void SFN(moments_)(const nk_cview *v, const void *xv, int64_t c, int64_t r0, int64_t r1,
                          double *mean, double *m2) {
    const T *x = xv;
    const int64_t sx = v->st[0][v->nd - 1];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, q = 0;
    nk_seg_begin(&it, v, c, r0, r1);
    n = nk_seg_next(&it, off); /* r1 > r0: at least one run */
    const double s = (double)x[off[0]];
    double S1, S2;
    if (sx == 1) {
        const vd vs = vd_set1(s);
        vd a1[NK_LANE_VECS], a2[NK_LANE_VECS];
        nk_ahead pw[2];
        SFN(pf_begin_)(pw, v, c, r0, r1, 1, 0);
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) a1[k] = a2[k] = vd_zero();
        if (SFN(pf_on_)(pw))
            for (; n; q += n, n = nk_seg_next(&it, off)) {
                const T *p = x + off[0];
                const SFN(pfr_) pr = SFN(pf_run_)(pw, &x, 1, p + n);
                SFN(mom_run_)(p, n, q, vs, a1, a2, &pr, 1);
            }
        else
            for (; n; q += n, n = nk_seg_next(&it, off))
                SFN(mom_run_)(x + off[0], n, q, vs, a1, a2, NULL, 0);
        S1 = vd_sum16(a1);
        S2 = vd_sum16(a2);
    } else {
        double t1[NK_LANES] = {0}, t2[NK_LANES] = {0};
        for (; n; q += n, n = nk_seg_next(&it, off)) {
            const T *p = x + off[0];
            for (int64_t i = 0; i < n; i++) {
                const double d = (double)p[i * sx] - s;
                const int l = (int)((q + i) % NK_LANES);
                t1[l] += d;
                t2[l] = fma(d, d, t2[l]);
            }
        }
        S1 = nk_sum16(t1);
        S2 = nk_sum16(t2);
    }
    SFN(mom_finish_)(s, S1, S2, (double)(r1 - r0), mean, m2);
}

/* chan_moments: the blocks of a channel two at a time, side by side. Each block's lane sums
 * form a chain of dependent additions per accumulator (4 vectors with AVX-512: one 16-value
 * step costs an addition's latency however fast the loads), so a channel in L2 (the fused
 * training forward, whose normalize pass fetched it: kernels/simd/ahead.h) was summed at
 * about 50 GB/s; two blocks give two independent sets of chains. Each block's values go to
 * the same lanes in the same order as in moments_ (same bits). Pairs only with 2 vectors per
 * 16 lanes (AVX-512; AVX2's 4 would take all 16 registers) over runs of stride 1 of at least
 * NK_AHEAD_MIN_RUN_BYTES, in channels small enough to be in cache (NK_AHEAD_CHANNEL_BYTES):
 * otherwise block by block with moments_ and its prefetch. */
typedef struct SFN(mstream_) {
    nk_seg_iter it;
    const T *p;       /* the current piece */
    int64_t n, i, q;  /* its length, the values done, its position in the block */
    vd vs, a1[NK_LANE_VECS], a2[NK_LANE_VECS];
    double s;
} SFN(mstream_);

static void SFN(mstream_begin_)(SFN(mstream_) *m, const nk_cview *v, const T *x, int64_t c,
                                int64_t b) {
    int64_t off[NK_CV_MAXT];
    const int64_t r0 = b * NK_BLOCK_ELEMS;
    nk_seg_begin(&m->it, v, c, r0, r0 + NK_BLOCK_ELEMS < v->M ? r0 + NK_BLOCK_ELEMS : v->M);
    m->n = nk_seg_next(&m->it, off);
    m->p = x + off[0];
    m->i = m->q = 0;
    m->s = (double)m->p[0];
    m->vs = vd_set1(m->s);
    NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) m->a1[k] = m->a2[k] = vd_zero();
}

/* To the next piece when the current one is done; 0 when the block is done. */
NK_VEC_INLINE int SFN(mstream_more_)(SFN(mstream_) *m, const T *x) {
    while (m->i == m->n) {
        int64_t off[NK_CV_MAXT];
        m->q += m->n;
        if (!(m->n = nk_seg_next(&m->it, off))) return 0;
        m->p = x + off[0];
        m->i = 0;
    }
    return 1;
}

/* Up to the next multiple of 16 in the block (a run's head) or, with fewer than 16 values
 * left in the piece, the piece's tail: masked parts, as in mom_run_. 1 if it did anything. */
NK_VEC_INLINE int SFN(mstream_edge_)(SFN(mstream_) *m) {
    const int ph = (int)((m->q + m->i) % NK_LANES);
    const int64_t left = m->n - m->i;
    if (!ph && left >= NK_LANES) return 0;
    const int hi = left < NK_LANES - ph ? ph + (int)left : NK_LANES;
    SFN(mom_part_)(SFN(at_)(m->p + m->i, -ph), ph, hi, m->vs, m->a1, m->a2);
    m->i += hi - ph;
    return 1;
}

static void SFN(mstream_end_)(SFN(mstream_) *m, const T *x, double *out) {
    for (; SFN(mstream_more_)(m, x); m->i = m->n)
        SFN(mom_run_)(m->p + m->i, m->n - m->i, m->q + m->i, m->vs, m->a1, m->a2, NULL, 0);
    SFN(mom_finish_)(m->s, vd_sum16(m->a1), vd_sum16(m->a2), (double)(m->q), &out[0], &out[1]);
}

static void SFN(chan_moments_)(const nk_cview *v, const void *xv, int64_t c, int64_t b0,
                               int64_t b1, double *out) {
    const T *x = xv;
    const int in = v->nd - 1;
    int64_t b = b0;
    if (NK_LANE_VECS == 2 && v->st[0][in] == 1 &&
        v->dims[in] * (int64_t)sizeof(T) >= NK_AHEAD_MIN_RUN_BYTES &&
        v->M * (int64_t)sizeof(T) <= NK_AHEAD_CHANNEL_BYTES) {
        for (; b + 1 < b1; b += 2) {
            SFN(mstream_) A, B;
            SFN(mstream_begin_)(&A, v, x, c, b);
            SFN(mstream_begin_)(&B, v, x, c, b + 1);
            while (SFN(mstream_more_)(&A, x) && SFN(mstream_more_)(&B, x)) {
                if (SFN(mstream_edge_)(&A) | SFN(mstream_edge_)(&B)) continue;
                const int64_t la = A.n - A.i, lb = B.n - B.i, l = la < lb ? la : lb;
                const T *pa = A.p + A.i, *pb = B.p + B.i;
                const int64_t e = l - l % NK_LANES;
                /* the sums in registers over the loop (not in A and B, whose addresses the
                 * edge functions take: stored and reloaded at each step, measured slower) */
                vd u1[NK_LANE_VECS], u2[NK_LANE_VECS], w1[NK_LANE_VECS], w2[NK_LANE_VECS];
                const vd vsa = A.vs, vsb = B.vs;
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    u1[k] = A.a1[k], u2[k] = A.a2[k], w1[k] = B.a1[k], w2[k] = B.a2[k];
                }
                for (int64_t i = 0; i < e; i += NK_LANES) {
                    NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                        const vd da = vd_sub(LD(pa + i + k * VW), vsa);
                        const vd db = vd_sub(LD(pb + i + k * VW), vsb);
                        u1[k] = vd_add(u1[k], da);
                        w1[k] = vd_add(w1[k], db);
                        u2[k] = vd_fmadd(da, da, u2[k]);
                        w2[k] = vd_fmadd(db, db, w2[k]);
                    }
                }
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    A.a1[k] = u1[k], A.a2[k] = u2[k], B.a1[k] = w1[k], B.a2[k] = w2[k];
                }
                A.i += e;
                B.i += e;
            }
            SFN(mstream_end_)(&A, x, &out[2 * (b - b0)]);
            SFN(mstream_end_)(&B, x, &out[2 * (b + 1 - b0)]);
        }
    }
    for (; b < b1; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS;
        SFN(moments_)(v, xv, c, r0, r0 + NK_BLOCK_ELEMS < v->M ? r0 + NK_BLOCK_ELEMS : v->M,
                      &out[2 * (b - b0)], &out[2 * (b - b0) + 1]);
    }
}

/* y = fma(x - mean, a, b), then ReLU (kernels.h, numerics: not the reference's bits, which
 * round the product (x - mean) * a before adding b):
 *     for (i = 0; i < n; i++) {
 *         double r = fma((double)x[i * sx] - mean, a, b);
 *         if (relu && r < 0.0) r = 0.0;
 *         y[i * sy] = (T)r;
 *     } */
NK_VEC_INLINE vd SFN(affine_)(vd x, vd m, vd a, vd b) { return vd_fmadd(vd_sub(x, m), a, b); }

NK_VEC_INLINE double SFN(affine1_)(double x, double m, double a, double b, int relu) {
    const double r = fma(x - m, a, b);
    return relu && r < 0.0 ? 0.0 : r;
}

/* The vectors of a run of stride 1 from value i on, 16 values per step (one prefetch step),
 * then VW; returns where it stopped. stream and relu are constants where it is inlined. */
NK_VEC_INLINE int64_t SFN(norm_vec_)(const T *p, T *q, int64_t i, int64_t n, vd vm, vd va, vd vb,
                                     const SFN(pfr_) *pr, const int stream, const int relu) {
    for (; pr && i + NK_LANES <= n; i += NK_LANES) {
        SFN(pf_fetch_)(pr, i, 0, 1);
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
            vd o = SFN(affine_)(LD(p + i + k * VW), vm, va, vb);
            if (relu) o = vd_relu(o);
            if (stream)
                SST(q + i + k * VW, o);
            else
                ST(q + i + k * VW, o);
        }
    }
    for (; i + VW <= n; i += VW) {
        vd o = SFN(affine_)(LD(p + i), vm, va, vb);
        if (relu) o = vd_relu(o);
        if (stream)
            SST(q + i, o);
        else
            ST(q + i, o);
    }
    return i;
}

static void SFN(normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t c, int64_t r0,
                            int64_t r1, double mean, double a, double b, int relu) {
    const T *x = xv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in];
    const int vec = sx == 1 && sy == 1, stream = vec && SFN(streams_)(v, 2);
    const vd vm = vd_set1(mean), va = vd_set1(a), vb = vd_set1(b);
    nk_seg_iter it;
    nk_ahead pw[2];
    int64_t off[NK_CV_MAXT], n;
    if (vec) SFN(pf_begin_)(pw, v, c, r0, r1, 1, 1);
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0];
        T *q = y + off[1];
        int64_t i = 0;
        if (vec) {
            /* short runs: no prefetch, 8-value steps (pfr NULL) */
            const SFN(pfr_) pr = SFN(pf_run_)(pw, &x, 1, p + n);
            const SFN(pfr_) *pfr = SFN(pf_on_)(pw) ? &pr : NULL;
            if (stream) {
                for (const int64_t h = SFN(head_)(q, 0, n); i < h; i++)
                    q[i] = (T)SFN(affine1_)((double)p[i], mean, a, b, relu);
                i = relu ? SFN(norm_vec_)(p, q, i, n, vm, va, vb, pfr, 1, 1)
                         : SFN(norm_vec_)(p, q, i, n, vm, va, vb, pfr, 1, 0);
            } else {
                i = relu ? SFN(norm_vec_)(p, q, i, n, vm, va, vb, pfr, 0, 1)
                         : SFN(norm_vec_)(p, q, i, n, vm, va, vb, pfr, 0, 0);
            }
        }
        for (; i < n; i++) q[i * sy] = (T)SFN(affine1_)((double)p[i * sx], mean, a, b, relu);
    }
    if (stream) vd_stream_fence();
}

/* q = position in the block:
 *     for each value: g = (double)dy;  if (ym && ym <= 0) g = 0.0;  d = (double)x - mean;
 *                     l = q % 16;  G[l] += g;  GX[l] = fma(g, d, GX[l]);  X[l] += d;
 *     sum_g = nk_sum16(G), sum_gx = nk_sum16(GX), sum_x = nk_sum16(X) */
/* acc + v computed on the FMA pipes: fma(v, 1, acc) rounds v * 1 + acc = v + acc once, the
 * same bits as vd_add. The backward reduction's loop has 4 conversions, a subtraction and 4
 * additions for 2 FMAs per 8 values; on Zen 4 conversions and additions share two pipes and
 * FMAs have two others, so moving the two plain sums over balances them (measured: the
 * in-cache bwd_reduce 9% faster; the same trick in moments, normalize and bwd_apply gained
 * nothing or lost). */
NK_VEC_INLINE vd SFN(acc_)(vd acc, vd v) { return vd_fmadd(v, vd_set1(1.0), acc); }

typedef struct SFN(bwd_acc_) {
    vd g[NK_LANE_VECS], gx[NK_LANE_VECS], x[NK_LANE_VECS];
} SFN(bwd_acc_);

NK_VEC_INLINE void SFN(bwd_part_)(const T *xb, const T *gb, const T *mb, int lo, int hi, vd vm,
                                  SFN(bwd_acc_) *A) {
    NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
        int l0, l1;
        if (!SFN(vec_lanes_)(lo, hi, k, &l0, &l1)) continue;
        const vmask m = vm_range(l0, l1);
        vd g = MLD(SFN(at_)(gb, k * VW), m);
        if (mb) g = vd_zero_where_le0(g, MLD(SFN(at_)(mb, k * VW), m));
        const vd d = vd_sub(MLD(SFN(at_)(xb, k * VW), m), vm);
        A->g[k] = vd_mask_add(A->g[k], m, g);
        A->gx[k] = vd_mask_fmadd(g, d, A->gx[k], m);
        A->x[k] = vd_mask_add(A->x[k], m, d);
    }
}

/* One run of stride 1 at block position q into the lane sums A; pf as in mom_run_. */
NK_VEC_INLINE void SFN(red_run_)(const T *p, const T *g, const T *m, int64_t n, int64_t q, vd vm,
                                 SFN(bwd_acc_) *A, const SFN(pfr_) *pr, const int pf) {
    int64_t i = 0;
    const int ph = (int)(q % NK_LANES);
    if (ph) {
        const int hi = n < NK_LANES - ph ? ph + (int)n : NK_LANES;
        SFN(bwd_part_)(SFN(at_)(p, -ph), SFN(at_)(g, -ph), m ? SFN(at_)(m, -ph) : NULL, ph, hi,
                       vm, A);
        i = hi - ph;
    }
    for (; i + NK_LANES <= n; i += NK_LANES) {
        if (pf) {
            SFN(pf_fetch_)(pr, i, 0, 2);
            if (m) SFN(pf_fetch_)(pr, i, 2, 3);
        }
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
            vd gv = LD(g + i + k * VW);
            if (m) gv = vd_zero_where_le0(gv, LD(m + i + k * VW));
            const vd d = vd_sub(LD(p + i + k * VW), vm);
            A->g[k] = SFN(acc_)(A->g[k], gv);
            A->gx[k] = vd_fmadd(gv, d, A->gx[k]);
            A->x[k] = SFN(acc_)(A->x[k], d);
        }
    }
    if (i < n) SFN(bwd_part_)(p + i, g + i, m ? m + i : NULL, 0, (int)(n - i), vm, A);
}

static void SFN(bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv, const void *ymv,
                             int64_t c, int64_t r0, int64_t r1, double mean, double *sum_g,
                             double *sum_gx, double *sum_x) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], sm = v->st[3][in];
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, q = 0;
    if (sx == 1 && sd == 1 && (!ym || sm == 1)) {
        const vd vm = vd_set1(mean);
        SFN(bwd_acc_) A;
        const T *const bases[3] = {x, dy, ym};
        nk_ahead pw[2];
        SFN(pf_begin_)(pw, v, c, r0, r1, ym ? 3 : 2, 0);
        if (sizeof(T) == 8) pw[0].done = pw[1].done = 1; /* as in bwd_apply_ */
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) A.g[k] = A.gx[k] = A.x[k] = vd_zero();
        const int pfon = SFN(pf_on_)(pw);
        for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off)); q += n) {
            const T *p = x + off[0], *g = dy + off[1];
            const T *m = ym ? ym + off[3] : NULL;
            if (pfon) {
                const SFN(pfr_) pr = SFN(pf_run_)(pw, bases, m ? 3 : 2, p + n);
                SFN(red_run_)(p, g, m, n, q, vm, &A, &pr, 1);
            } else {
                SFN(red_run_)(p, g, m, n, q, vm, &A, NULL, 0);
            }
        }
        *sum_g = vd_sum16(A.g);
        *sum_gx = vd_sum16(A.gx);
        if (sum_x) *sum_x = vd_sum16(A.x);
        return;
    }
    double G[NK_LANES] = {0}, GX[NK_LANES] = {0}, X[NK_LANES] = {0};
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off)); q += n) {
        const T *p = x + off[0], *g = dy + off[1];
        const T *m = ym ? ym + off[3] : NULL;
        for (int64_t i = 0; i < n; i++) {
            double gi = (double)g[i * sd];
            if (m && m[i * sm] <= 0) gi = 0.0;
            const double d = (double)p[i * sx] - mean;
            const int l = (int)((q + i) % NK_LANES);
            G[l] += gi;
            GX[l] = fma(gi, d, GX[l]);
            X[l] += d;
        }
    }
    *sum_g = nk_sum16(G);
    *sum_gx = nk_sum16(GX);
    if (sum_x) *sum_x = nk_sum16(X);
}

/* dx = fma(kx, x - mean, fma(kg, g, k0)) (kernels.h, numerics: not the reference's bits,
 * which round both products and add left to right):
 *     for (i = 0; i < n; i++) {
 *         double g = (double)dy[i * sd];
 *         if (ym && ym[i * sm] <= 0) g = 0.0;
 *         dx[i * so] = (T)fma(kx, (double)x[i * sx] - mean, fma(kg, g, k0));
 *     } */
NK_VEC_INLINE vd SFN(dx_)(vd g, vd x, vd m, vd kg, vd kx, vd k0) {
    return vd_fmadd(kx, vd_sub(x, m), vd_fmadd(kg, g, k0));
}

NK_VEC_INLINE double SFN(dx1_)(const T *g, const T *ym, const T *x, double m, double kg,
                               double kx, double k0) {
    double gi = (double)*g;
    if (ym && *ym <= 0) gi = 0.0;
    return fma(kx, (double)*x - m, fma(kg, gi, k0));
}

/* The vectors of a run of stride 1 from value i on, 16 values per step (one prefetch step),
 * then VW; returns where it stopped. stream is a constant where it is inlined. */
NK_VEC_INLINE int64_t SFN(dx_vec_)(const T *p, const T *g, const T *m, T *o, int64_t i,
                                   int64_t n, vd vm, vd vkg, vd vkx, vd vk0,
                                   const SFN(pfr_) *pr, const int stream) {
    for (; pr && i + NK_LANES <= n; i += NK_LANES) {
        SFN(pf_fetch_)(pr, i, 0, 2);
        if (m) SFN(pf_fetch_)(pr, i, 2, 3);
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
            vd gv = LD(g + i + k * VW);
            if (m) gv = vd_zero_where_le0(gv, LD(m + i + k * VW));
            const vd o8 = SFN(dx_)(gv, LD(p + i + k * VW), vm, vkg, vkx, vk0);
            if (stream)
                SST(o + i + k * VW, o8);
            else
                ST(o + i + k * VW, o8);
        }
    }
    for (; i + VW <= n; i += VW) {
        vd gv = LD(g + i);
        if (m) gv = vd_zero_where_le0(gv, LD(m + i));
        const vd o8 = SFN(dx_)(gv, LD(p + i), vm, vkg, vkx, vk0);
        if (stream)
            SST(o + i, o8);
        else
            ST(o + i, o8);
    }
    return i;
}

static void SFN(bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv, const void *ymv,
                            void *dxv, int64_t c, int64_t r0, int64_t r1, double mean, double kg,
                            double kx, double k0) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const vd vm = vd_set1(mean), vkg = vd_set1(kg), vkx = vd_set1(kx), vk0 = vd_set1(k0);
    const int vec = sx == 1 && sd == 1 && so == 1 && (!ym || sm == 1);
    const int stream = vec && SFN(streams_)(v, ym ? 4 : 3);
    const T *const bases[3] = {x, dy, ym};
    nk_seg_iter it;
    nk_ahead pw[2];
    int64_t off[NK_CV_MAXT], n;
    if (vec) SFN(pf_begin_)(pw, v, c, r0, r1, ym ? 3 : 2, 1);
    /* float64 backward: measured slower with the walkers than without (16x128x56x56, both
     * orders of alternation: bwd_reduce alone 26%, apply 5-20%, the fused backward 16%),
     * float32 20% faster: no prefetch for 8-byte elements in either backward kernel */
    if (vec && sizeof(T) == 8) pw[0].done = pw[1].done = 1;
    for (nk_seg_begin(&it, v, c, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0], *g = dy + off[1];
        const T *m = ym ? ym + off[3] : NULL;
        T *o = dx + off[2];
        int64_t i = 0;
        if (vec) {
            const SFN(pfr_) pr = SFN(pf_run_)(pw, bases, m ? 3 : 2, p + n);
            const SFN(pfr_) *pfr = SFN(pf_on_)(pw) ? &pr : NULL; /* as in normalize_ */
            if (stream) {
                for (const int64_t h = SFN(head_)(o, 0, n); i < h; i++)
                    o[i] = (T)SFN(dx1_)(g + i, m ? m + i : NULL, p + i, mean, kg, kx, k0);
                i = SFN(dx_vec_)(p, g, m, o, i, n, vm, vkg, vkx, vk0, pfr, 1);
            } else {
                i = SFN(dx_vec_)(p, g, m, o, i, n, vm, vkg, vkx, vk0, pfr, 0);
            }
        }
        for (; i < n; i++)
            o[i * so] = (T)SFN(dx1_)(g + i * sd, m ? m + i * sm : NULL, p + i * sx, mean, kg, kx, k0);
    }
    if (stream) vd_stream_fence();
}

/* ---- runs (kernels.h, nk_view_runs) ------------------------------------------------------
 * The values [r0, r1) of channels [c0, c1) walked run by run (run o holds the values
 * [o L, o L + L) of every channel, L = the innermost extent), and within a run index channel
 * by channel: a contiguous NCHW tensor is read in address order, as a copy reads it, and the
 * hardware prefetchers follow (no walkers, no segment iterator: run o of channel c starts at
 * o * so + c * sc). Each (o, c) piece is the per-channel functions' run code (mom_run_,
 * red_run_, norm_vec_, dx_vec_, the same scalar tails) and a reduction keeps each channel's
 * lane sums in a small array between its pieces: every channel gets exactly the lane sums of
 * the per-channel function, added in the same order, hence its bits. Reductions take the
 * channels RUNS_G at a time (their lane sums: 3 * 16 doubles each, 12 KiB in all). */
#define RUNS_G 32

/* Element offset of value 0 of run o of channel c in tensor t. */
NK_VEC_INLINE int64_t SFN(run_at_)(const nk_cview *v, int t, int64_t o, int64_t c) {
    return (v->nd == 2 ? o * v->st[t][0] : 0) + c * v->kst[t][0];
}

/* The piece of run o inside [r0, r1): values [*lo, *hi) of the run; returns the position of
 * its first value in [r0, r1). */
NK_VEC_INLINE int64_t SFN(piece_)(int64_t L, int64_t o, int64_t r0, int64_t r1, int64_t *lo,
                                  int64_t *hi) {
    *lo = o * L > r0 ? 0 : r0 - o * L;
    *hi = o * L + L < r1 ? L : r1 - o * L;
    return o * L + *lo - r0;
}

/* Software prefetch in the reductions: the fused passes take a few channels at a time
 * (batchnorm.c), so that a run index holds only a few KiB of contiguous data, too little for
 * the hardware prefetchers to ramp up before the walk jumps to the next run index. While a
 * reduction walks piece (o, c) of runs of at most RUNS_PF_BYTES it fetches run o +
 * RUNS_PF_AHEAD of channel c. Measured (64x512x7x7 float32, 1 thread, alternated runs):
 * backward 870 -> 720 us, training forward unchanged; on runs of 3 KiB (28x28) fetching their
 * first KiB made both 3% slower: longer runs are left to the hardware. */
#define RUNS_PF_AHEAD 2
#define RUNS_PF_BYTES 1024

/* 1 if the reductions prefetch runs of view v */
NK_VEC_INLINE int SFN(pf_runs_)(const nk_cview *v) {
    return v->dims[v->nd - 1] * (int64_t)sizeof(T) <= RUNS_PF_BYTES;
}

/* The n values at p. */
NK_VEC_INLINE void SFN(pf_piece_)(const T *p, int64_t n) {
    const char *a = (const char *)p;
    const int64_t bytes = n * (int64_t)sizeof(T);
    for (int64_t k = 0; k < bytes; k += 64) nk_prefetch(a + k);
    nk_prefetch(a + bytes - 1);
}

#if NK_LANE_VECS == 2
/* mom_run_ over the pieces p0, p1 of two channels (the same length and block position) into
 * their lane sums (a1, a2) and (b1, b2): each channel's operations are mom_run_'s, in its
 * order, so the same bits; the two chains of dependent additions run side by side (a piece of
 * a 7x7 run is 3-4 steps of 16 values, too short for the out-of-order window to overlap
 * pieces by itself). Measured (float32, 1 thread, alternated runs): training forward
 * 64x512x7x7 415 -> 384 us, 8x64x28x28 56 -> 55 us; the same pairing in the backward
 * reduction (3 sums per lane set) made it slower (64x512x7x7 710 -> 960 us). AVX-512 only:
 * AVX2 holds a lane set in 4 vectors, and two channels' 16 accumulators would fill its 16
 * registers. */
NK_VEC_INLINE void SFN(mom_run2_)(const T *p0, const T *p1, int64_t n, int64_t q, vd vs0, vd vs1,
                                  vd *a1, vd *a2, vd *b1, vd *b2) {
    int64_t i = 0;
    const int ph = (int)(q % NK_LANES);
    if (ph) {
        const int hi = n < NK_LANES - ph ? ph + (int)n : NK_LANES;
        SFN(mom_part_)(SFN(at_)(p0, -ph), ph, hi, vs0, a1, a2);
        SFN(mom_part_)(SFN(at_)(p1, -ph), ph, hi, vs1, b1, b2);
        i = hi - ph;
    }
    for (; i + NK_LANES <= n; i += NK_LANES) {
        NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
            const vd d = vd_sub(LD(p0 + i + k * VW), vs0), e = vd_sub(LD(p1 + i + k * VW), vs1);
            a1[k] = vd_add(a1[k], d);
            a2[k] = vd_fmadd(d, d, a2[k]);
            b1[k] = vd_add(b1[k], e);
            b2[k] = vd_fmadd(e, e, b2[k]);
        }
    }
    if (i < n) {
        SFN(mom_part_)(p0 + i, 0, (int)(n - i), vs0, a1, a2);
        SFN(mom_part_)(p1 + i, 0, (int)(n - i), vs1, b1, b2);
    }
}
#endif

static void SFN(runs_moments_)(const nk_cview *v, const void *xv, int64_t c0, int64_t c1,
                               int64_t r0, int64_t r1, double *mean, double *m2) {
    const T *x = xv;
    const int64_t L = v->dims[v->nd - 1];
    const int pf = SFN(pf_runs_)(v);
    _Alignas(64) double A[RUNS_G][2][NK_LANES];
    double s[RUNS_G];
    for (int64_t g0 = c0; g0 < c1; g0 += RUNS_G) {
        const int64_t ng = c1 - g0 < RUNS_G ? c1 - g0 : RUNS_G;
        for (int64_t j = 0; j < ng; j++) { /* the shift: the block's first value */
            s[j] = (double)x[SFN(run_at_)(v, 0, r0 / L, g0 + j) + r0 % L];
            for (int l = 0; l < NK_LANES; l++) A[j][0][l] = A[j][1][l] = 0.0;
        }
        for (int64_t o = r0 / L; o * L < r1; o++) {
            int64_t lo, hi;
            const int64_t q = SFN(piece_)(L, o, r0, r1, &lo, &hi);
            const int64_t op = o + RUNS_PF_AHEAD;
            const int64_t np = !pf ? 0 : r1 - op * L < L ? r1 - op * L : L; /* 0 or less: none */
            int64_t j = 0;
#if NK_LANE_VECS == 2
            for (; j + 2 <= ng; j += 2) { /* two channels at once (see mom_run2_) */
                vd a1[NK_LANE_VECS], a2[NK_LANE_VECS], b1[NK_LANE_VECS], b2[NK_LANE_VECS];
                if (np > 0) {
                    SFN(pf_piece_)(x + SFN(run_at_)(v, 0, op, g0 + j), np);
                    SFN(pf_piece_)(x + SFN(run_at_)(v, 0, op, g0 + j + 1), np);
                }
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    a1[k] = vd_load_f64(A[j][0] + k * VW);
                    a2[k] = vd_load_f64(A[j][1] + k * VW);
                    b1[k] = vd_load_f64(A[j + 1][0] + k * VW);
                    b2[k] = vd_load_f64(A[j + 1][1] + k * VW);
                }
                SFN(mom_run2_)(x + SFN(run_at_)(v, 0, o, g0 + j) + lo,
                               x + SFN(run_at_)(v, 0, o, g0 + j + 1) + lo, hi - lo, q,
                               vd_set1(s[j]), vd_set1(s[j + 1]), a1, a2, b1, b2);
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    vd_store_f64(A[j][0] + k * VW, a1[k]);
                    vd_store_f64(A[j][1] + k * VW, a2[k]);
                    vd_store_f64(A[j + 1][0] + k * VW, b1[k]);
                    vd_store_f64(A[j + 1][1] + k * VW, b2[k]);
                }
            }
#endif
            for (; j < ng; j++) {
                vd a1[NK_LANE_VECS], a2[NK_LANE_VECS];
                if (np > 0) SFN(pf_piece_)(x + SFN(run_at_)(v, 0, op, g0 + j), np);
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    a1[k] = vd_load_f64(A[j][0] + k * VW);
                    a2[k] = vd_load_f64(A[j][1] + k * VW);
                }
                SFN(mom_run_)(x + SFN(run_at_)(v, 0, o, g0 + j) + lo, hi - lo, q, vd_set1(s[j]),
                              a1, a2, NULL, 0);
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    vd_store_f64(A[j][0] + k * VW, a1[k]);
                    vd_store_f64(A[j][1] + k * VW, a2[k]);
                }
            }
        }
        for (int64_t j = 0; j < ng; j++) {
            vd a1[NK_LANE_VECS], a2[NK_LANE_VECS];
            NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                a1[k] = vd_load_f64(A[j][0] + k * VW);
                a2[k] = vd_load_f64(A[j][1] + k * VW);
            }
            SFN(mom_finish_)(s[j], vd_sum16(a1), vd_sum16(a2), (double)(r1 - r0),
                             &mean[g0 - c0 + j], &m2[g0 - c0 + j]);
        }
    }
}

static void SFN(runs_normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t c0,
                                 int64_t c1, int64_t r0, int64_t r1, const double *mean,
                                 const double *a, const double *b, int relu) {
    const T *x = xv;
    T *y = yv;
    const int64_t L = v->dims[v->nd - 1];
    const int stream = SFN(streams_)(v, 2);
    for (int64_t o = r0 / L; o * L < r1; o++) {
        int64_t lo, hi;
        SFN(piece_)(L, o, r0, r1, &lo, &hi);
        for (int64_t j = 0; j < c1 - c0; j++) {
            const T *p = x + SFN(run_at_)(v, 0, o, c0 + j);
            T *q = y + SFN(run_at_)(v, 1, o, c0 + j);
            const double mj = mean[j], aj = a[j], bj = b[j];
            const vd vm = vd_set1(mj), va = vd_set1(aj), vb = vd_set1(bj);
            int64_t i = lo;
            if (stream) {
                for (const int64_t h = lo + SFN(head_)(q, lo, hi); i < h; i++)
                    q[i] = (T)SFN(affine1_)((double)p[i], mj, aj, bj, relu);
                i = relu ? SFN(norm_vec_)(p, q, i, hi, vm, va, vb, NULL, 1, 1)
                         : SFN(norm_vec_)(p, q, i, hi, vm, va, vb, NULL, 1, 0);
            } else {
                i = relu ? SFN(norm_vec_)(p, q, i, hi, vm, va, vb, NULL, 0, 1)
                         : SFN(norm_vec_)(p, q, i, hi, vm, va, vb, NULL, 0, 0);
            }
            for (; i < hi; i++) q[i] = (T)SFN(affine1_)((double)p[i], mj, aj, bj, relu);
        }
    }
    if (stream) vd_stream_fence();
}

static void SFN(runs_bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv,
                                  const void *ymv, int64_t c0, int64_t c1, int64_t r0,
                                  int64_t r1, const double *mean, double *sum_g,
                                  double *sum_gx, double *sum_x) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    const int64_t L = v->dims[v->nd - 1];
    const int pf = SFN(pf_runs_)(v);
    _Alignas(64) double A[RUNS_G][3][NK_LANES];
    for (int64_t g0 = c0; g0 < c1; g0 += RUNS_G) {
        const int64_t ng = c1 - g0 < RUNS_G ? c1 - g0 : RUNS_G;
        for (int64_t j = 0; j < ng; j++)
            for (int l = 0; l < NK_LANES; l++) A[j][0][l] = A[j][1][l] = A[j][2][l] = 0.0;
        for (int64_t o = r0 / L; o * L < r1; o++) {
            int64_t lo, hi;
            const int64_t q = SFN(piece_)(L, o, r0, r1, &lo, &hi);
            const int64_t op = o + RUNS_PF_AHEAD;
            const int64_t np = !pf ? 0 : r1 - op * L < L ? r1 - op * L : L; /* 0 or less: none */
            for (int64_t j = 0; j < ng; j++) {
                const int64_t c = g0 + j;
                SFN(bwd_acc_) S;
                if (np > 0) {
                    SFN(pf_piece_)(x + SFN(run_at_)(v, 0, op, c), np);
                    SFN(pf_piece_)(dy + SFN(run_at_)(v, 1, op, c), np);
                    if (ym) SFN(pf_piece_)(ym + SFN(run_at_)(v, 3, op, c), np);
                }
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    S.g[k] = vd_load_f64(A[j][0] + k * VW);
                    S.gx[k] = vd_load_f64(A[j][1] + k * VW);
                    S.x[k] = vd_load_f64(A[j][2] + k * VW);
                }
                const T *p = x + SFN(run_at_)(v, 0, o, c) + lo;
                const T *g = dy + SFN(run_at_)(v, 1, o, c) + lo;
                const T *m = ym ? ym + SFN(run_at_)(v, 3, o, c) + lo : NULL;
                SFN(red_run_)(p, g, m, hi - lo, q, vd_set1(mean[c - c0]), &S, NULL, 0);
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    vd_store_f64(A[j][0] + k * VW, S.g[k]);
                    vd_store_f64(A[j][1] + k * VW, S.gx[k]);
                    vd_store_f64(A[j][2] + k * VW, S.x[k]);
                }
            }
        }
        for (int64_t j = 0; j < ng; j++) {
            vd t[NK_LANE_VECS];
            const int64_t i = g0 - c0 + j;
            NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) t[k] = vd_load_f64(A[j][0] + k * VW);
            sum_g[i] = vd_sum16(t);
            NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) t[k] = vd_load_f64(A[j][1] + k * VW);
            sum_gx[i] = vd_sum16(t);
            NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) t[k] = vd_load_f64(A[j][2] + k * VW);
            if (sum_x) sum_x[i] = vd_sum16(t);
        }
    }
}

static void SFN(runs_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv,
                                 const void *ymv, void *dxv, int64_t c0, int64_t c1, int64_t r0,
                                 int64_t r1, const double *mean, const double *kg,
                                 const double *kx, const double *k0) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    T *dx = dxv;
    const int64_t L = v->dims[v->nd - 1];
    const int stream = SFN(streams_)(v, ym ? 4 : 3);
    for (int64_t o = r0 / L; o * L < r1; o++) {
        int64_t lo, hi;
        SFN(piece_)(L, o, r0, r1, &lo, &hi);
        for (int64_t j = 0; j < c1 - c0; j++) {
            const int64_t c = c0 + j;
            const T *p = x + SFN(run_at_)(v, 0, o, c), *g = dy + SFN(run_at_)(v, 1, o, c);
            const T *m = ym ? ym + SFN(run_at_)(v, 3, o, c) : NULL;
            T *out = dx + SFN(run_at_)(v, 2, o, c);
            const vd vm = vd_set1(mean[j]), vkg = vd_set1(kg[j]), vkx = vd_set1(kx[j]);
            const vd vk0 = vd_set1(k0[j]);
            int64_t i = lo;
            if (stream) {
                for (const int64_t h = lo + SFN(head_)(out, lo, hi); i < h; i++)
                    out[i] = (T)SFN(dx1_)(g + i, m ? m + i : NULL, p + i, mean[j], kg[j], kx[j],
                                          k0[j]);
                i = SFN(dx_vec_)(p, g, m, out, i, hi, vm, vkg, vkx, vk0, NULL, 1);
            } else {
                i = SFN(dx_vec_)(p, g, m, out, i, hi, vm, vkg, vkx, vk0, NULL, 0);
            }
            for (; i < hi; i++)
                out[i] = (T)SFN(dx1_)(g + i, m ? m + i : NULL, p + i, mean[j], kg[j], kx[j],
                                      k0[j]);
        }
    }
    if (stream) vd_stream_fence();
}

#undef RUNS_PF_BYTES
#undef RUNS_PF_AHEAD
#undef RUNS_G

/* ---- rows (channels innermost) ----------------------------------------------------------
 * Vectors run along the channels. Element-wise functions walk blocks of rows panel by panel,
 * a panel's per-channel coefficients held in registers (see RB). Measured in L2 (1024 rows of
 * 64 float32 channels, AVX-512), per row: normalize 10.1 -> 3.9 ns, bwd_apply 12.9 -> 6.5 ns
 * against loading the coefficients from L1 for every vector; rows that form one run (one_run_)
 * took the reductions from 7.4 to 5.2 ns (moments) and 11.7 to 9.0 ns (bwd_reduce).
 * Reductions give each channel exactly the lane sums of the per-channel
 * functions above (lane = the row's position in the block % 16): a panel of up to NK_RPV_*
 * vectors of channels is walked tile by tile (RT rows), and within a tile lane by lane, so a
 * lane's sums stay in registers for its RT / 16 rows and are kept in L1 between tiles; the
 * next tile's rows are prefetched meanwhile (the rows of a chunk are strided in memory). Rows
 * that form one run of a view not in cache take an address-order loop instead (see RAO). */

/* Element offsets of the rows [t0, t1) in every tensor of v: ro[t][i] for row t0 + i. */
static void SFN(tile_rows_)(const nk_cview *v, int64_t t0, int64_t t1, int64_t (*ro)[RT]) {
    const int in = v->nd - 1;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n, i = 0;
    for (nk_seg_begin(&it, v, 0, t0, t1); (n = nk_seg_next(&it, off));)
        for (int64_t r = 0; r < n; r++, i++)
            for (int t = 0; t < v->nt; t++) ro[t][i] = off[t] + r * v->st[t][in];
}

/* Prefetches the `bytes` bytes at p (a strip of one row). */
NK_VEC_INLINE void SFN(prefetch_strip_)(const T *p, int64_t bytes) {
    const char *a = (const char *)p;
    for (int64_t o = 0; o < bytes; o += 64) nk_prefetch(a + o);
    nk_prefetch(a + bytes - 1);
}

/* Rows that form one run (one_run_) of a view of at least RAO_MIN_BYTES per tensor are reduced
 * in address order instead of tile by tile (rmom_ao_, rbwd_ao_): row q (from r0) adds into
 * lane q % 16's sums, which live in L1 (loaded and stored for every row), so each lane still
 * sums its rows in ascending order (the bits of the tile walk); the row RAO rows on is
 * prefetched into L1 (T0). A standalone loop over the 32x64x56x56 float32 backward data
 * (AVX-512, 1 thread) took 1.17 ms this way against 1.57-2.03 ms for the tile walk with its
 * prefetch (the walk's jumps of 16 rows defeat the hardware prefetchers; its rows missed L1),
 * and 9.2 against 12 ns per row in cache. In the library, 32x64x56x56 NHWC backward at 1
 * thread: 3.6-3.8 -> 2.7-3.1 ms. Views in cache keep the tile walk: 64x512x7x7 (6.4 MB,
 * backward) and 8x64x28x28 (1.6 MB, training forward) were 6-12% slower this way; and the
 * moments take it only over whole rows (the panel is the row): on 16x256x56x56 (a quarter of
 * each row per panel) the moments took as long and the normalize pass after them became
 * slower (sampled shares 86-97 + 114-120 -> 94-95 + 145-146; not understood). */
#define RAO 48
#define RAO_MIN_BYTES ((int64_t)16 << 20)
NK_VEC_INLINE int SFN(rao_)(const nk_cview *v) {
    return v->C * v->M * (int64_t)sizeof(T) >= RAO_MIN_BYTES;
}
NK_VEC_INLINE void SFN(prefetch_strip_l1_)(const T *p, int64_t bytes) {
    const char *a = (const char *)p;
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(a + o, _MM_HINT_T0);
    _mm_prefetch(a + bytes - 1, _MM_HINT_T0);
}

/* Vector k of a panel of np vectors whose last holds wl channels (masked load if wl < VW). */
NK_VEC_INLINE vd SFN(rld_)(const T *p, int k, int np, int wl, vmask ml) {
    return k == np - 1 && wl < VW ? MLD(p, ml) : LD(p);
}
NK_VEC_INLINE vd SFN(rld_f64_)(const double *p, int k, int np, int wl, vmask ml) {
    return k == np - 1 && wl < VW ? vd_maskload_f64(p, ml) : vd_load_f64(p);
}

/* The rows [r0, r1) of a view form one run of rows at a constant stride (NHWC: the whole
 * range): the rows functions then address them as base + i * stride instead of through the
 * offset tables of tile_rows_ (a quarter of the in-cache moments' time). Returns 1 and the
 * run's first element offset of every tensor in off, else 0. */
NK_VEC_INLINE int SFN(one_run_)(const nk_cview *v, int64_t r0, int64_t r1, int64_t *off) {
    nk_seg_iter it;
    nk_seg_begin(&it, v, 0, r0, r1);
    return nk_seg_next(&it, off) == r1 - r0;
}

/* per channel j of the panel, row at block position q (l = q % 16):
 *     d = (double)x[j] - s[j];  S1[l][j] += d;  S2[l][j] = fma(d, d, S2[l][j]);
 * then per channel: nk_sum16 over the lanes and mom_finish_, as moments_.
 * uni: the rows are one run (one_run_): row r0 + i at xr + i * sr (xr at channel cc). */
NK_VEC_INLINE void SFN(rmom_body_)(const nk_cview *v, const T *x, int64_t cc, const int np,
                                   const int wl, int64_t r0, int64_t r1, double *mean,
                                   double *m2, const int uni, const T *xr, int64_t sr) {
    enum { PW = NK_RPV_MOM * VW };
    const vmask ml = vm_range(0, wl);
    const int64_t strip = (int64_t)((np - 1) * VW + wl) * (int64_t)sizeof(T);
    _Alignas(64) double A1[NK_LANES][PW], A2[NK_LANES][PW];
    int64_t ro[2][NK_CV_MAXT][RT];
    vd s[NK_RPV_MOM];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) s[k] = vd_zero();
    int cur = 0;
    if (!uni) {
        SFN(tile_rows_)(v, r0, r1 - r0 < RT ? r1 : r0 + RT, ro[0]);
        xr = x + ro[0][0][0] + cc;
    }
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++)
        if (k < np) s[k] = SFN(rld_)(xr + k * VW, k, np, wl, ml);
    for (int l = 0; l < NK_LANES; l++)
        for (int j = 0; j < np * VW; j++) A1[l][j] = A2[l][j] = 0.0;
    for (int64_t t0 = r0; t0 < r1; t0 += RT, cur ^= 1) {
        const int64_t nr = r1 - t0 < RT ? r1 - t0 : RT, tn = t0 + RT;
        const int64_t nn = tn < r1 ? (r1 - tn < RT ? r1 - tn : RT) : 0; /* rows of the next tile */
        if (!uni && nn) SFN(tile_rows_)(v, tn, tn + nn, ro[cur ^ 1]);
        const int64_t *rc = ro[cur][0], *rn = ro[cur ^ 1][0];
        const T *xt = uni ? xr + (t0 - r0) * sr : NULL;
        for (int l = 0; l < NK_LANES && l < nr; l++) {
            vd a1[NK_RPV_MOM], a2[NK_RPV_MOM];
            NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) a1[k] = a2[k] = vd_zero();
            NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
                a1[k] = vd_load_f64(A1[l] + k * VW);
                a2[k] = vd_load_f64(A2[l] + k * VW);
            }
            for (int64_t i = l; i < nr; i += NK_LANES) {
                const T *p = uni ? xt + i * sr : x + rc[i] + cc;
                if (i < nn) SFN(prefetch_strip_)(uni ? p + RT * sr : x + rn[i] + cc, strip);
                NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
                    const vd d = vd_sub(SFN(rld_)(p + k * VW, k, np, wl, ml), s[k]);
                    a1[k] = vd_add(a1[k], d);
                    a2[k] = vd_fmadd(d, d, a2[k]);
                }
            }
            NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
                vd_store_f64(A1[l] + k * VW, a1[k]);
                vd_store_f64(A2[l] + k * VW, a2[k]);
            }
        }
    }
    _Alignas(64) double sv[PW];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) vd_store_f64(sv + k * VW, s[k]);
    for (int j = 0; j < (np - 1) * VW + wl; j++) {
        double t1[NK_LANES], t2[NK_LANES];
        for (int l = 0; l < NK_LANES; l++) t1[l] = A1[l][j], t2[l] = A2[l][j];
        SFN(mom_finish_)(sv[j], nk_sum16(t1), nk_sum16(t2), (double)(r1 - r0), &mean[j], &m2[j]);
    }
}

/* rmom_body_ over n rows in address order (see RAO): row i at xr + i * sr. */
NK_VEC_INLINE void SFN(rmom_ao_)(const T *xr, int64_t sr, const int np, const int wl, int64_t n,
                                 double *mean, double *m2) {
    enum { PW = NK_RPV_MOM * VW };
    const vmask ml = vm_range(0, wl);
    const int64_t strip = (int64_t)((np - 1) * VW + wl) * (int64_t)sizeof(T);
    _Alignas(64) double A1[NK_LANES][PW], A2[NK_LANES][PW];
    vd s[NK_RPV_MOM];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) s[k] = vd_zero();
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++)
        if (k < np) s[k] = SFN(rld_)(xr + k * VW, k, np, wl, ml);
    for (int l = 0; l < NK_LANES; l++)
        for (int j = 0; j < np * VW; j++) A1[l][j] = A2[l][j] = 0.0;
    for (int64_t q = 0; q < n; q++) {
        const int l = (int)(q % NK_LANES);
        const T *p = xr + q * sr;
        if (q + RAO < n) SFN(prefetch_strip_l1_)(p + RAO * sr, strip);
        NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
            const vd d = vd_sub(SFN(rld_)(p + k * VW, k, np, wl, ml), s[k]);
            vd_store_f64(A1[l] + k * VW, vd_add(vd_load_f64(A1[l] + k * VW), d));
            vd_store_f64(A2[l] + k * VW, vd_fmadd(d, d, vd_load_f64(A2[l] + k * VW)));
        }
    }
    _Alignas(64) double sv[PW];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) vd_store_f64(sv + k * VW, s[k]);
    for (int j = 0; j < (np - 1) * VW + wl; j++) {
        double t1[NK_LANES], t2[NK_LANES];
        for (int l = 0; l < NK_LANES; l++) t1[l] = A1[l][j], t2[l] = A2[l][j];
        SFN(mom_finish_)(sv[j], nk_sum16(t1), nk_sum16(t2), (double)n, &mean[j], &m2[j]);
    }
}

static void SFN(rows_moments_)(const nk_cview *v, const void *xv, int64_t c0, int64_t c1,
                               int64_t r0, int64_t r1, double *mean, double *m2) {
    const T *x = xv;
    const int64_t nvec = (c1 - c0 + VW - 1) / VW, sr = v->st[0][v->nd - 1];
    int64_t off[NK_CV_MAXT];
    const int uni = SFN(one_run_)(v, r0, r1, off);
    for (int64_t pv = 0; pv < nvec; pv += NK_RPV_MOM) {
        const int np = (int)(nvec - pv < NK_RPV_MOM ? nvec - pv : NK_RPV_MOM);
        const int64_t left = c1 - c0 - (pv + np - 1) * VW; /* channels from the last vector on */
        const int wl = (int)(left < VW ? left : VW);
        const int64_t j = pv * VW;
        const T *xr = x + off[0] + c0 + j;
        if (uni && sr == (np - 1) * VW + wl && SFN(rao_)(v)) { /* whole rows, not in cache: RAO */
            if (np == NK_RPV_MOM && wl == VW)
                SFN(rmom_ao_)(xr, sr, NK_RPV_MOM, VW, r1 - r0, mean + j, m2 + j);
            else
                SFN(rmom_ao_)(xr, sr, np, wl, r1 - r0, mean + j, m2 + j);
            continue;
        }
        if (np == NK_RPV_MOM && wl == VW) { /* a full panel: constant shape, no masks */
            if (uni)
                SFN(rmom_body_)(v, x, c0 + j, NK_RPV_MOM, VW, r0, r1, mean + j, m2 + j, 1, xr, sr);
            else
                SFN(rmom_body_)(v, x, c0 + j, NK_RPV_MOM, VW, r0, r1, mean + j, m2 + j, 0, NULL, 0);
        } else {
            if (uni)
                SFN(rmom_body_)(v, x, c0 + j, np, wl, r0, r1, mean + j, m2 + j, 1, xr, sr);
            else
                SFN(rmom_body_)(v, x, c0 + j, np, wl, r0, r1, mean + j, m2 + j, 0, NULL, 0);
        }
    }
}

/* Streaming stores for the outputs of a rows pass over `tensors` tensors of view v (inputs
 * and outputs, each C * M elements): when the pass touches more than the last-level cache
 * (NK_STREAM_MIN_BYTES), a cached output would evict the pass's own input (and a training
 * forward's x, read by the statistics pass just before, would not still be in cache for the
 * normalize). Measured on 32x64x56x56 NHWC float32 (x, y 25.7 MB each), 1 thread: fwd-infer
 * 1.21 -> 1.07 ms, fwd-train 2.08 -> 1.87 ms; smaller tensors lose (8x64x28x28: 50 -> 64 us). */
NK_VEC_INLINE int SFN(rows_streams_)(const nk_cview *v, int tensors) {
    return v->C * v->M * (int64_t)sizeof(T) * tensors >= NK_STREAM_MIN_BYTES;
}

/* 1 if every row's q + j is aligned for a streaming store: the first and the row stride. */
NK_VEC_INLINE int SFN(rows_aligned_)(const T *q, int64_t sq) {
    const uintptr_t al = (uintptr_t)(VW * sizeof(T));
    return (uintptr_t)q % al == 0 && (uintptr_t)(sq * (int64_t)sizeof(T)) % al == 0;
}

/* Rows per block of the element-wise rows functions: a panel's coefficients are loaded into
 * registers once per block and panel, and the block (its rows of every tensor) stays in L1
 * while the panels walk it: at most RB rows and about RB_BYTES. Rows of several panels whose
 * outputs are streamed (tensors from memory) go row by row instead, in address order: by
 * blocks, 16x256x56x56 NHWC float32 fwd-infer took 3.5 ms against 2.3 ms row by row. */
#define RB 32
#define RB_BYTES 16384
NK_VEC_INLINE int64_t SFN(rblock_)(int64_t nc, int tensors) {
    const int64_t r = RB_BYTES / (nc * (int64_t)sizeof(T) * tensors);
    return r < 1 ? 1 : r > RB ? RB : r;
}

/* Channels [j, j + np VW) (np full vectors, coefficients in registers) of n rows. */
NK_VEC_INLINE void SFN(rnorm_panel_)(const T *p, T *q, int64_t sx, int64_t sy, int64_t n,
                                     const double *mean, const double *a, const double *b,
                                     const int np, const int relu, const int stream) {
    vd vm[NK_RPV_MOM], va[NK_RPV_MOM], vb[NK_RPV_MOM];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) vm[k] = va[k] = vb[k] = vd_zero();
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
        vm[k] = vd_load_f64(mean + k * VW);
        va[k] = vd_load_f64(a + k * VW);
        vb[k] = vd_load_f64(b + k * VW);
    }
    for (int64_t r = 0; r < n; r++) {
        const T *pr = p + r * sx;
        T *qr = q + r * sy;
        NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
            vd o = SFN(affine_)(LD(pr + k * VW), vm[k], va[k], vb[k]);
            if (relu) o = vd_relu(o);
            if (stream)
                SST(qr + k * VW, o);
            else
                ST(qr + k * VW, o);
        }
    }
}

/* n rows at p, q (strides sx, sy) of channels [0, nc) (pointers at channel c0). */
NK_VEC_INLINE void SFN(rnorm_rows_)(const T *p, T *q, int64_t sx, int64_t sy, int64_t n,
                                    int64_t nc, const double *mean, const double *a,
                                    const double *b, const int relu, const int stream) {
    enum { PW = NK_RPV_MOM * VW };
    /* nf: channels in full vectors; rb: see RB (rows of one panel or streamed: row by row) */
    const int64_t nf = nc / VW * VW, rb = stream && nc > PW ? 1 : SFN(rblock_)(nc, 2);
    for (int64_t r0 = 0; r0 < n; r0 += rb) {
        const int64_t nr = n - r0 < rb ? n - r0 : rb;
        const T *pb = p + r0 * sx;
        T *qb = q + r0 * sy;
        int64_t j = 0;
        for (; j + PW <= nf; j += PW)
            SFN(rnorm_panel_)(pb + j, qb + j, sx, sy, nr, mean + j, a + j, b + j, NK_RPV_MOM,
                              relu, stream);
        if (j < nf)
            SFN(rnorm_panel_)(pb + j, qb + j, sx, sy, nr, mean + j, a + j, b + j,
                              (int)((nf - j) / VW), relu, stream);
        if (nf < nc)
            for (int64_t r = 0; r < nr; r++)
                for (int64_t i = nf; i < nc; i++)
                    qb[r * sy + i] = (T)SFN(affine1_)((double)pb[r * sx + i], mean[i], a[i],
                                                      b[i], relu);
    }
}

/* for each row: for (i = 0; i < nc; i++) {
 *     double o = fma((double)x[i] - mean[i], a[i], b[i]);
 *     if (relu && o < 0.0) o = 0.0;
 *     y[i] = (T)o;
 * } */
static void SFN(rows_normalize_)(const nk_cview *v, const void *xv, void *yv, int64_t c0,
                                 int64_t c1, int64_t r0, int64_t r1, const double *mean,
                                 const double *a, const double *b, int relu) {
    const T *x = xv;
    T *y = yv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sy = v->st[1][in], nc = c1 - c0;
    const int stream = SFN(rows_streams_)(v, 2);
    int streamed = 0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0] + c0;
        T *q = y + off[1] + c0;
        if (stream && SFN(rows_aligned_)(q, sy)) {
            streamed = 1;
            if (relu)
                SFN(rnorm_rows_)(p, q, sx, sy, n, nc, mean, a, b, 1, 1);
            else
                SFN(rnorm_rows_)(p, q, sx, sy, n, nc, mean, a, b, 0, 1);
        } else if (relu) {
            SFN(rnorm_rows_)(p, q, sx, sy, n, nc, mean, a, b, 1, 0);
        } else {
            SFN(rnorm_rows_)(p, q, sx, sy, n, nc, mean, a, b, 0, 0);
        }
    }
    if (streamed) vd_stream_fence();
}

/* per channel j of the panel, row at block position q (l = q % 16):
 *     g = (double)dy[j];  if (ym && ym[j] <= 0) g = 0.0;  d = (double)x[j] - mean[j];
 *     G[l][j] += g;  GX[l][j] = fma(g, d, GX[l][j]);  X[l][j] += d;
 * then per channel: nk_sum16 over the lanes, as bwd_reduce_.
 * uni: the rows are one run (one_run_): row r0 + i at b[t] + i * sr[t] in x, dy, ym (t = 0,
 * 1, 2; pointers at channel cc). */
NK_VEC_INLINE void SFN(rbwd_body_)(const nk_cview *v, const T *x, const T *dy, const T *ym,
                                   int64_t cc, const int np, const int wl, int64_t r0,
                                   int64_t r1, const double *mean, double *sum_g,
                                   double *sum_gx, double *sum_x, const int uni,
                                   const T *const *b, const int64_t *sr) {
    enum { PW = NK_RPV_BWD * VW };
    const vmask ml = vm_range(0, wl);
    const int64_t strip = (int64_t)((np - 1) * VW + wl) * (int64_t)sizeof(T);
    _Alignas(64) double G[NK_LANES][PW], GX[NK_LANES][PW], X[NK_LANES][PW];
    int64_t ro[2][NK_CV_MAXT][RT];
    int cur = 0;
    for (int l = 0; l < NK_LANES; l++)
        for (int j = 0; j < np * VW; j++) G[l][j] = GX[l][j] = X[l][j] = 0.0;
    if (!uni) SFN(tile_rows_)(v, r0, r1 - r0 < RT ? r1 : r0 + RT, ro[0]);
    for (int64_t t0 = r0; t0 < r1; t0 += RT, cur ^= 1) {
        const int64_t nr = r1 - t0 < RT ? r1 - t0 : RT, tn = t0 + RT;
        const int64_t nn = tn < r1 ? (r1 - tn < RT ? r1 - tn : RT) : 0;
        if (!uni && nn) SFN(tile_rows_)(v, tn, tn + nn, ro[cur ^ 1]);
        const int64_t(*rc)[RT] = ro[cur], (*rn)[RT] = ro[cur ^ 1];
        for (int l = 0; l < NK_LANES && l < nr; l++) {
            vd ag[NK_RPV_BWD], agx[NK_RPV_BWD], ax[NK_RPV_BWD];
            NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) ag[k] = agx[k] = ax[k] = vd_zero();
            NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
                ag[k] = vd_load_f64(G[l] + k * VW);
                agx[k] = vd_load_f64(GX[l] + k * VW);
                ax[k] = vd_load_f64(X[l] + k * VW);
            }
            for (int64_t i = l; i < nr; i += NK_LANES) {
                const T *p, *g, *m;
                if (uni) {
                    const int64_t q = t0 - r0 + i;
                    p = b[0] + q * sr[0];
                    g = b[1] + q * sr[1];
                    m = ym ? b[2] + q * sr[2] : NULL;
                    if (i < nn) {
                        SFN(prefetch_strip_)(p + RT * sr[0], strip);
                        SFN(prefetch_strip_)(g + RT * sr[1], strip);
                        if (ym) SFN(prefetch_strip_)(m + RT * sr[2], strip);
                    }
                } else {
                    p = x + rc[0][i] + cc;
                    g = dy + rc[1][i] + cc;
                    m = ym ? ym + rc[3][i] + cc : NULL;
                    if (i < nn) {
                        SFN(prefetch_strip_)(x + rn[0][i] + cc, strip);
                        SFN(prefetch_strip_)(dy + rn[1][i] + cc, strip);
                        if (ym) SFN(prefetch_strip_)(ym + rn[3][i] + cc, strip);
                    }
                }
                NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
                    vd gv = SFN(rld_)(g + k * VW, k, np, wl, ml);
                    if (m) gv = vd_zero_where_le0(gv, SFN(rld_)(m + k * VW, k, np, wl, ml));
                    const vd d = vd_sub(SFN(rld_)(p + k * VW, k, np, wl, ml),
                                        SFN(rld_f64_)(mean + k * VW, k, np, wl, ml));
                    ag[k] = SFN(acc_)(ag[k], gv);
                    agx[k] = vd_fmadd(gv, d, agx[k]);
                    ax[k] = SFN(acc_)(ax[k], d);
                }
            }
            NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
                vd_store_f64(G[l] + k * VW, ag[k]);
                vd_store_f64(GX[l] + k * VW, agx[k]);
                vd_store_f64(X[l] + k * VW, ax[k]);
            }
        }
    }
    for (int j = 0; j < (np - 1) * VW + wl; j++) {
        double tg[NK_LANES], tgx[NK_LANES], tx[NK_LANES];
        for (int l = 0; l < NK_LANES; l++) tg[l] = G[l][j], tgx[l] = GX[l][j], tx[l] = X[l][j];
        sum_g[j] = nk_sum16(tg);
        sum_gx[j] = nk_sum16(tgx);
        if (sum_x) sum_x[j] = nk_sum16(tx);
    }
}

/* rbwd_body_ over n rows in address order (see RAO): row i at b[t] + i * sr[t]. */
NK_VEC_INLINE void SFN(rbwd_ao_)(const T *ym, const int np, const int wl, int64_t n,
                                 const double *mean, double *sum_g, double *sum_gx,
                                 double *sum_x, const T *const *b, const int64_t *sr) {
    enum { PW = NK_RPV_BWD * VW };
    const vmask ml = vm_range(0, wl);
    const int64_t strip = (int64_t)((np - 1) * VW + wl) * (int64_t)sizeof(T);
    _Alignas(64) double G[NK_LANES][PW], GX[NK_LANES][PW], X[NK_LANES][PW];
    for (int l = 0; l < NK_LANES; l++)
        for (int j = 0; j < np * VW; j++) G[l][j] = GX[l][j] = X[l][j] = 0.0;
    for (int64_t q = 0; q < n; q++) {
        const int l = (int)(q % NK_LANES);
        const T *p = b[0] + q * sr[0], *g = b[1] + q * sr[1], *m = ym ? b[2] + q * sr[2] : NULL;
        if (q + RAO < n) {
            SFN(prefetch_strip_l1_)(p + RAO * sr[0], strip);
            SFN(prefetch_strip_l1_)(g + RAO * sr[1], strip);
            if (ym) SFN(prefetch_strip_l1_)(m + RAO * sr[2], strip);
        }
        NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
            vd gv = SFN(rld_)(g + k * VW, k, np, wl, ml);
            if (m) gv = vd_zero_where_le0(gv, SFN(rld_)(m + k * VW, k, np, wl, ml));
            const vd d = vd_sub(SFN(rld_)(p + k * VW, k, np, wl, ml),
                                SFN(rld_f64_)(mean + k * VW, k, np, wl, ml));
            vd_store_f64(G[l] + k * VW, SFN(acc_)(vd_load_f64(G[l] + k * VW), gv));
            vd_store_f64(GX[l] + k * VW, vd_fmadd(gv, d, vd_load_f64(GX[l] + k * VW)));
            vd_store_f64(X[l] + k * VW, SFN(acc_)(vd_load_f64(X[l] + k * VW), d));
        }
    }
    for (int j = 0; j < (np - 1) * VW + wl; j++) {
        double tg[NK_LANES], tgx[NK_LANES], tx[NK_LANES];
        for (int l = 0; l < NK_LANES; l++) tg[l] = G[l][j], tgx[l] = GX[l][j], tx[l] = X[l][j];
        sum_g[j] = nk_sum16(tg);
        sum_gx[j] = nk_sum16(tgx);
        if (sum_x) sum_x[j] = nk_sum16(tx);
    }
}

static void SFN(rows_bwd_reduce_)(const nk_cview *v, const void *xv, const void *dyv,
                                  const void *ymv, int64_t c0, int64_t c1, int64_t r0,
                                  int64_t r1, const double *mean, double *sum_g,
                                  double *sum_gx, double *sum_x) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    const int in = v->nd - 1;
    const int64_t nvec = (c1 - c0 + VW - 1) / VW;
    const int64_t sr[3] = {v->st[0][in], v->st[1][in], v->st[3][in]};
    int64_t off[NK_CV_MAXT];
    const int uni = SFN(one_run_)(v, r0, r1, off);
    for (int64_t pv = 0; pv < nvec; pv += NK_RPV_BWD) {
        const int np = (int)(nvec - pv < NK_RPV_BWD ? nvec - pv : NK_RPV_BWD);
        const int64_t left = c1 - c0 - (pv + np - 1) * VW; /* channels from the last vector on */
        const int wl = (int)(left < VW ? left : VW);
        const int64_t j = pv * VW;
        double *sx = sum_x ? sum_x + j : NULL;
        const T *b[3] = {x + off[0] + c0 + j, dy + off[1] + c0 + j,
                         ym ? ym + off[3] + c0 + j : NULL};
        if (uni && SFN(rao_)(v)) { /* not in cache: see RAO */
            if (np == NK_RPV_BWD && wl == VW)
                SFN(rbwd_ao_)(ym, NK_RPV_BWD, VW, r1 - r0, mean + j, sum_g + j, sum_gx + j, sx,
                              b, sr);
            else
                SFN(rbwd_ao_)(ym, np, wl, r1 - r0, mean + j, sum_g + j, sum_gx + j, sx, b, sr);
            continue;
        }
        if (np == NK_RPV_BWD && wl == VW) {
            if (uni)
                SFN(rbwd_body_)(v, x, dy, ym, c0 + j, NK_RPV_BWD, VW, r0, r1, mean + j,
                                sum_g + j, sum_gx + j, sx, 1, b, sr);
            else
                SFN(rbwd_body_)(v, x, dy, ym, c0 + j, NK_RPV_BWD, VW, r0, r1, mean + j,
                                sum_g + j, sum_gx + j, sx, 0, b, sr);
        } else {
            if (uni)
                SFN(rbwd_body_)(v, x, dy, ym, c0 + j, np, wl, r0, r1, mean + j, sum_g + j,
                                sum_gx + j, sx, 1, b, sr);
            else
                SFN(rbwd_body_)(v, x, dy, ym, c0 + j, np, wl, r0, r1, mean + j, sum_g + j,
                                sum_gx + j, sx, 0, b, sr);
        }
    }
}

/* Vectors of channels per panel of rows_bwd_apply (4 coefficients each in registers). */
#define RPA (NK_RPV_BWD / 2)

/* Channels [j, j + np VW) (np full vectors, coefficients in registers) of n rows. */
NK_VEC_INLINE void SFN(rapp_panel_)(const T *p, const T *g, const T *m, T *o, int64_t sx,
                                    int64_t sd, int64_t sm, int64_t so, int64_t n,
                                    const double *mean, const double *kg, const double *kx,
                                    const double *k0, const int np, const int stream) {
    vd vm[RPA], vkg[RPA], vkx[RPA], vk0[RPA];
    NK_UNROLL for (int k = 0; k < RPA; k++) vm[k] = vkg[k] = vkx[k] = vk0[k] = vd_zero();
    NK_UNROLL for (int k = 0; k < RPA; k++) if (k < np) {
        vm[k] = vd_load_f64(mean + k * VW);
        vkg[k] = vd_load_f64(kg + k * VW);
        vkx[k] = vd_load_f64(kx + k * VW);
        vk0[k] = vd_load_f64(k0 + k * VW);
    }
    for (int64_t r = 0; r < n; r++) {
        const T *pr = p + r * sx, *gr = g + r * sd, *mr = m ? m + r * sm : NULL;
        T *orow = o + r * so;
        NK_UNROLL for (int k = 0; k < RPA; k++) if (k < np) {
            vd gv = LD(gr + k * VW);
            if (m) gv = vd_zero_where_le0(gv, LD(mr + k * VW));
            const vd o8 = SFN(dx_)(gv, LD(pr + k * VW), vm[k], vkg[k], vkx[k], vk0[k]);
            if (stream)
                SST(orow + k * VW, o8);
            else
                ST(orow + k * VW, o8);
        }
    }
}

/* n rows (strides sx, sd, sm, so) of channels [0, nc) (pointers at channel c0). */
NK_VEC_INLINE void SFN(rapp_rows_)(const T *p, const T *g, const T *m, T *o, int64_t sx,
                                   int64_t sd, int64_t sm, int64_t so, int64_t n, int64_t nc,
                                   const double *mean, const double *kg, const double *kx,
                                   const double *k0, const int stream) {
    enum { PW = RPA * VW };
    /* row by row also for rows of more than 2 panels: 64x512x7x7 NHWC float32 (in L3), blocks
     * of 2 to 5 rows took 0.29-0.43 ms against 0.30 ms row by row */
    const int64_t nf = nc / VW * VW;
    const int64_t rb = (stream && nc > PW) || nc > 2 * PW ? 1 : SFN(rblock_)(nc, m ? 4 : 3);
    for (int64_t r0 = 0; r0 < n; r0 += rb) {
        const int64_t nr = n - r0 < rb ? n - r0 : rb;
        const T *pb = p + r0 * sx, *gb = g + r0 * sd, *mb = m ? m + r0 * sm : NULL;
        T *ob = o + r0 * so;
        int64_t j = 0;
        for (; j + PW <= nf; j += PW)
            SFN(rapp_panel_)(pb + j, gb + j, mb ? mb + j : NULL, ob + j, sx, sd, sm, so, nr,
                             mean + j, kg + j, kx + j, k0 + j, RPA, stream);
        if (j < nf)
            SFN(rapp_panel_)(pb + j, gb + j, mb ? mb + j : NULL, ob + j, sx, sd, sm, so, nr,
                             mean + j, kg + j, kx + j, k0 + j, (int)((nf - j) / VW), stream);
        if (nf < nc)
            for (int64_t r = 0; r < nr; r++)
                for (int64_t i = nf; i < nc; i++)
                    ob[r * so + i] = (T)SFN(dx1_)(gb + r * sd + i, mb ? mb + r * sm + i : NULL,
                                                  pb + r * sx + i, mean[i], kg[i], kx[i], k0[i]);
    }
}

/* for each row: for (i = 0; i < nc; i++) {
 *     double g = (double)dy[i];
 *     if (ym && ym[i] <= 0) g = 0.0;
 *     dx[i] = (T)fma(kx[i], (double)x[i] - mean[i], fma(kg[i], g, k0[i]));
 * } */
static void SFN(rows_bwd_apply_)(const nk_cview *v, const void *xv, const void *dyv,
                                 const void *ymv, void *dxv, int64_t c0, int64_t c1, int64_t r0,
                                 int64_t r1, const double *mean, const double *kg,
                                 const double *kx, const double *k0) {
    const T *x = xv, *dy = dyv, *ym = ymv;
    T *dx = dxv;
    const int in = v->nd - 1;
    const int64_t sx = v->st[0][in], sd = v->st[1][in], so = v->st[2][in], sm = v->st[3][in];
    const int64_t nc = c1 - c0;
    const int stream = SFN(rows_streams_)(v, ym ? 4 : 3);
    int streamed = 0;
    nk_seg_iter it;
    int64_t off[NK_CV_MAXT], n;
    for (nk_seg_begin(&it, v, 0, r0, r1); (n = nk_seg_next(&it, off));) {
        const T *p = x + off[0] + c0, *g = dy + off[1] + c0;
        const T *m = ym ? ym + off[3] + c0 : NULL;
        T *o = dx + off[2] + c0;
        if (stream && SFN(rows_aligned_)(o, so)) {
            streamed = 1;
            if (m)
                SFN(rapp_rows_)(p, g, m, o, sx, sd, sm, so, n, nc, mean, kg, kx, k0, 1);
            else
                SFN(rapp_rows_)(p, g, NULL, o, sx, sd, sm, so, n, nc, mean, kg, kx, k0, 1);
        } else if (m) {
            SFN(rapp_rows_)(p, g, m, o, sx, sd, sm, so, n, nc, mean, kg, kx, k0, 0);
        } else {
            SFN(rapp_rows_)(p, g, NULL, o, sx, sd, sm, so, n, nc, mean, kg, kx, k0, 0);
        }
    }
    if (streamed) vd_stream_fence();
}

const nk_bn_kernels TABLE = {SFN(moments_),      SFN(normalize_),      SFN(bwd_reduce_),
                             SFN(bwd_apply_),    SFN(chan_moments_),
                             SFN(runs_moments_),   SFN(runs_normalize_),
                             SFN(runs_bwd_reduce_), SFN(runs_bwd_apply_),
                             SFN(rows_moments_), SFN(rows_normalize_),
                             SFN(rows_bwd_reduce_), SFN(rows_bwd_apply_)};

#undef RPA
#undef RB_BYTES
#undef RB
#undef RAO_MIN_BYTES
#undef RAO
#undef RT
#undef NK_UNROLL
#undef SST
#undef MLD
#undef ST
#undef LD
#undef SFN
#undef NK_SCAT
#undef NK_SCAT2
