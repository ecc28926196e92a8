/* Group-norm span kernels (kernels/gn_kernels.h), instantiated for one element type and one
 * instruction set. Before inclusion: the ISA's vector layer, T = the element type, SFX = f32
 * or f64, TABLE = the name of the table to define.
 *
 * Each function is, instance by instance and block by block, the stride-1 path of its
 * namesake in kernels/simd/bn_simd_impl.h for a run that starts its block (block position 0):
 * full 16-value chunks with plain vector operations, the last partial chunk with masked loads
 * and masked accumulation, vd_sum16's tree, then the same finishing arithmetic; element-wise
 * results by the same FMA expressions (the scalar loop above each function). So the partials
 * and outputs are bitwise those of the per-channel kernels. What the span saves is per-call
 * work: no segment iterator, no prefetch walkers (consecutive instances are consecutive in
 * memory, which the hardware prefetchers stream), no indirect call per (instance, block). */
#include <math.h>
#include <stdint.h>

#include "kernels/simd/lanes16.h"

#define NK_SCAT2(a, b) a##b
#define NK_SCAT(a, b) NK_SCAT2(a, b)
#define SFN(name) NK_SCAT(gn_##name, SFX)
#define LD NK_SCAT(vd_load_, SFX)
#define ST NK_SCAT(vd_store_, SFX)
#define MLD NK_SCAT(vd_maskload_, SFX)
#define SST NK_SCAT(vd_stream_, SFX)
#define MST NK_SCAT(gn_maskstore_, SFX) /* defined by the ISA's gn_<isa>.c */
#define NK_UNROLL _Pragma("GCC unroll 8")

static inline int64_t SFN(min_)(int64_t a, int64_t b) { return a < b ? a : b; }

/* Lanes [0, hi) of a 16-lane chunk, restricted to vector k: the mask of its lanes, 0 if none
 * (bn_simd_impl.h's vec_lanes_ with lo = 0). */
NK_VEC_INLINE int SFN(tail_lanes_)(int hi, int k, vmask *m) {
    const int l1 = hi - k * VW > VW ? VW : hi - k * VW;
    if (l1 <= 0) return 0;
    *m = vm_range(0, l1);
    return 1;
}

/* Values before q is aligned for a streaming store (VW elements), at most n. */
NK_VEC_INLINE int64_t SFN(head_)(const T *q, int64_t n) {
    const uintptr_t al = (uintptr_t)(VW * sizeof(T)), mis = (uintptr_t)q % al;
    if (mis % sizeof(T)) return n; /* not even element-aligned: never aligned */
    const int64_t h = mis ? (int64_t)((al - mis) / sizeof(T)) : 0;
    return h < n ? h : n;
}

/* Lane sums of a batch of blocks wait in 16-value rows of a buffer for gn_sum16x8 (defined by
 * the ISA's gn_<isa>.c), which runs lanes16.h's tree on 8 of them at once (bwd_reduce_: per
 * block, one tree per sum was a third of its time at S = 49). */
#define GN_TREES 8

/* Stores the 16 lane sums a[] in row t. */
NK_VEC_INLINE void SFN(put_lanes_)(double *t, const vd *a) {
    NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) vd_store_f64(t + k * VW, a[k]);
}

/* ---- moments ------------------------------------------------------------------------------
 * per block (n values at p, s = p[0]), q = position in the block:
 *     d = (double)x - s;  l = q % 16;  S1[l] += d;  S2[l] = fma(d, d, S2[l]);
 *     mean = s + S1 / n;  m2 = S2 - S1 * S1 / n  (0 if negative by rounding)
 * One tree per sum here, unlike bwd_reduce_: measured at S = 49, batching the trees (and the
 * divisions) made the forward 25% slower, as the divisions then issue back to back. */
static void SFN(moments_)(const void *xv, int64_t S, int64_t ni, double *part) {
    const T *x = xv;
    const int64_t nb = nk_num_blocks(S);
    for (int64_t j = 0; j < ni; j++)
        for (int64_t b = 0; b < nb; b++) {
            const T *p = x + j * S + b * NK_BLOCK_ELEMS;
            const int64_t n = SFN(min_)(NK_BLOCK_ELEMS, S - b * NK_BLOCK_ELEMS);
            const double s = (double)p[0];
            const vd vs = vd_set1(s);
            vd a1[NK_LANE_VECS], a2[NK_LANE_VECS];
            NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) a1[k] = a2[k] = vd_zero();
            int64_t i = 0;
            for (; i + NK_LANES <= n; i += NK_LANES)
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    const vd d = vd_sub(LD(p + i + k * VW), vs);
                    a1[k] = vd_add(a1[k], d);
                    a2[k] = vd_fmadd(d, d, a2[k]);
                }
            if (i < n)
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    vmask m;
                    if (!SFN(tail_lanes_)((int)(n - i), k, &m)) continue;
                    const vd d = vd_sub(MLD(p + i + k * VW, m), vs);
                    a1[k] = vd_mask_add(a1[k], m, d);
                    a2[k] = vd_mask_fmadd(d, d, a2[k], m);
                }
            const double S1 = vd_sum16(a1), S2 = vd_sum16(a2), cnt = (double)n;
            const double q = S2 - S1 * S1 / cnt;
            double *o = &part[2 * (j * nb + b)];
            o[0] = s + S1 / cnt;
            o[1] = q < 0.0 ? 0.0 : q; /* NaN stays NaN */
        }
}

/* ---- normalize ----------------------------------------------------------------------------
 *     y[i] = (T)fma((double)x[i] - mean[j], a[j], b[j]) */
static void SFN(normalize_)(const void *xv, void *yv, int64_t S, int64_t ni, const double *mean,
                            const double *a, const double *b, int stream) {
    const T *x = xv;
    T *y = yv;
    for (int64_t j = 0; j < ni; j++) {
        const T *p = x + j * S;
        T *q = y + j * S;
        const double mj = mean[j], aj = a[j], bj = b[j];
        const vd vm = vd_set1(mj), va = vd_set1(aj), vb = vd_set1(bj);
        int64_t i = 0;
        if (stream) {
            for (const int64_t h = SFN(head_)(q, S); i < h; i++)
                q[i] = (T)fma((double)p[i] - mj, aj, bj);
            for (; i + VW <= S; i += VW) SST(q + i, vd_fmadd(vd_sub(LD(p + i), vm), va, vb));
        } else {
            for (; i + 2 * VW <= S; i += 2 * VW) {
                const vd o0 = vd_fmadd(vd_sub(LD(p + i), vm), va, vb);
                const vd o1 = vd_fmadd(vd_sub(LD(p + i + VW), vm), va, vb);
                ST(q + i, o0);
                ST(q + i + VW, o1);
            }
            for (; i + VW <= S; i += VW) ST(q + i, vd_fmadd(vd_sub(LD(p + i), vm), va, vb));
            if (i < S) {
                const vmask m = vm_range(0, (int)(S - i));
                MST(q + i, m, vd_fmadd(vd_sub(MLD(p + i, m), vm), va, vb));
                continue;
            }
        }
        for (; i < S; i++) q[i] = (T)fma((double)p[i] - mj, aj, bj);
    }
    if (stream) vd_stream_fence();
}

/* ---- backward reduction -------------------------------------------------------------------
 * per block, q = position in the block: g = (double)dy;  d = (double)x - mean[j];  l = q % 16;
 *     G[l] += g;  GX[l] = fma(g, d, GX[l]);  X[l] += d;   then the tree over each.
 * The two plain sums are taken on the FMA pipes as fma(v, 1, acc), the same bits as acc + v
 * (bn_simd_impl.h, acc_). Blocks in batches of 8 (24 sums, 3 trees of 8): the sums of block e
 * of a batch are rows 3e, 3e + 1, 3e + 2, which is where its partials go. */
static void SFN(bwd_reduce_)(const void *xv, const void *dyv, int64_t S, int64_t ni,
                             const double *mean, double *part) {
    const T *x = xv, *dy = dyv;
    const int64_t nb = nk_num_blocks(S), nbt = ni * nb;
    const vd one = vd_set1(1.0);
    _Alignas(64) double t[3 * GN_TREES][NK_LANES];
    int64_t j = 0, b = 0; /* the next block: instance j, block b */
    for (int64_t e0 = 0; e0 < nbt; e0 += GN_TREES) {
        const int ne = (int)SFN(min_)(GN_TREES, nbt - e0);
        for (int e = 0; e < ne; e++) {
            const int64_t o = j * S + b * NK_BLOCK_ELEMS;
            const T *p = x + o, *g = dy + o;
            const int64_t n = SFN(min_)(NK_BLOCK_ELEMS, S - b * NK_BLOCK_ELEMS);
            const vd vm = vd_set1(mean[j]);
            if (++b == nb) b = 0, j++;
            vd ag[NK_LANE_VECS], agx[NK_LANE_VECS], ax[NK_LANE_VECS];
            NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) ag[k] = agx[k] = ax[k] = vd_zero();
            int64_t i = 0;
            for (; i + NK_LANES <= n; i += NK_LANES)
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    const vd gv = LD(g + i + k * VW);
                    const vd d = vd_sub(LD(p + i + k * VW), vm);
                    ag[k] = vd_fmadd(gv, one, ag[k]);
                    agx[k] = vd_fmadd(gv, d, agx[k]);
                    ax[k] = vd_fmadd(d, one, ax[k]);
                }
            if (i < n)
                NK_UNROLL for (int k = 0; k < NK_LANE_VECS; k++) {
                    vmask m;
                    if (!SFN(tail_lanes_)((int)(n - i), k, &m)) continue;
                    const vd gv = MLD(g + i + k * VW, m);
                    const vd d = vd_sub(MLD(p + i + k * VW, m), vm);
                    ag[k] = vd_mask_add(ag[k], m, gv);
                    agx[k] = vd_mask_fmadd(gv, d, agx[k], m);
                    ax[k] = vd_mask_add(ax[k], m, d);
                }
            SFN(put_lanes_)(t[3 * e], ag);
            SFN(put_lanes_)(t[3 * e + 1], agx);
            SFN(put_lanes_)(t[3 * e + 2], ax);
        }
        double *o = &part[3 * e0];
        if (ne == GN_TREES) {
            for (int h = 0; h < 3; h++) gn_sum16x8(&t[h * GN_TREES][0], o + h * GN_TREES);
            continue;
        }
        for (int e = 3 * ne; e < 3 * GN_TREES; e++)
            for (int l = 0; l < NK_LANES; l++) t[e][l] = 0.0;
        double out[3 * GN_TREES];
        for (int h = 0; h < 3; h++) gn_sum16x8(&t[h * GN_TREES][0], out + h * GN_TREES);
        for (int e = 0; e < 3 * ne; e++) o[e] = out[e];
    }
}

/* ---- backward apply -----------------------------------------------------------------------
 *     dx[i] = (T)fma(kx[j], (double)x[i] - mean[j], fma(kg[j], (double)dy[i], k0[j])) */
NK_VEC_INLINE vd SFN(dx_)(vd g, vd x, vd m, vd kg, vd kx, vd k0) {
    return vd_fmadd(kx, vd_sub(x, m), vd_fmadd(kg, g, k0));
}

static void SFN(bwd_apply_)(const void *xv, const void *dyv, void *dxv, int64_t S, int64_t ni,
                            const double *mean, const double *kg, const double *kx,
                            const double *k0, int stream) {
    const T *x = xv, *dy = dyv;
    T *dx = dxv;
    for (int64_t j = 0; j < ni; j++) {
        const T *p = x + j * S, *g = dy + j * S;
        T *q = dx + j * S;
        const double mj = mean[j], gj = kg[j], xj = kx[j], zj = k0[j];
        const vd vm = vd_set1(mj), vkg = vd_set1(gj), vkx = vd_set1(xj), vk0 = vd_set1(zj);
        int64_t i = 0;
        if (stream) {
            for (const int64_t h = SFN(head_)(q, S); i < h; i++)
                q[i] = (T)fma(xj, (double)p[i] - mj, fma(gj, (double)g[i], zj));
            for (; i + VW <= S; i += VW)
                SST(q + i, SFN(dx_)(LD(g + i), LD(p + i), vm, vkg, vkx, vk0));
        } else {
            for (; i + 2 * VW <= S; i += 2 * VW) {
                const vd o0 = SFN(dx_)(LD(g + i), LD(p + i), vm, vkg, vkx, vk0);
                const vd o1 = SFN(dx_)(LD(g + i + VW), LD(p + i + VW), vm, vkg, vkx, vk0);
                ST(q + i, o0);
                ST(q + i + VW, o1);
            }
            for (; i + VW <= S; i += VW) ST(q + i, SFN(dx_)(LD(g + i), LD(p + i), vm, vkg, vkx, vk0));
            if (i < S) {
                const vmask m = vm_range(0, (int)(S - i));
                MST(q + i, m, SFN(dx_)(MLD(g + i, m), MLD(p + i, m), vm, vkg, vkx, vk0));
                continue;
            }
        }
        for (; i < S; i++) q[i] = (T)fma(xj, (double)p[i] - mj, fma(gj, (double)g[i], zj));
    }
    if (stream) vd_stream_fence();
}

/* ---- channels innermost (NHWC) -----------------------------------------------------------
 * A panel of up to NK_RPV_* vectors of channels at a time, block by block; within a block,
 * tiles of GN_RT rows, and within a tile lane by lane (lane l: the rows at block positions
 * q = l, l + 16, ...), so that a lane's sums for the panel stay in registers while it walks
 * its rows, and wait in L[l] between tiles (L1). Each lane adds its values in position order
 * from 0, as the per-channel kernels do. Then the tree of lanes16.h with vectors along the
 * channels, and the finishing arithmetic with vectors too. The next tile's rows are
 * prefetched meanwhile (rows are ld apart). */
#define GN_RT 128 /* rows per tile, a multiple of 16 */

/* Vector k of a panel of np vectors whose last holds wl channels (masked if wl < VW). */
NK_VEC_INLINE vd SFN(pld_)(const T *p, int k, int np, int wl, vmask ml) {
    return k == np - 1 && wl < VW ? MLD(p, ml) : LD(p);
}

/* t[16][PW]: lanes by row; out[k] = the tree over the lanes of vector k of the panel:
 *     u[l] = t[l] + t[l + 8],  w[l] = u[l] + u[l + 4],  (w[0] + w[2]) + (w[1] + w[3]) */
NK_VEC_INLINE vd SFN(vtree_)(const double *t, int64_t pw, int k) {
    vd u[8], w[4];
    NK_UNROLL for (int l = 0; l < 8; l++)
        u[l] = vd_add(vd_load_f64(t + l * pw + k * VW), vd_load_f64(t + (l + 8) * pw + k * VW));
    NK_UNROLL for (int l = 0; l < 4; l++) w[l] = vd_add(u[l], u[l + 4]);
    return vd_add(vd_add(w[0], w[2]), vd_add(w[1], w[3]));
}

/* Prefetches the panel's strip (bytes) of the row at p. */
NK_VEC_INLINE void SFN(pf_strip_)(const T *p, int64_t bytes) {
    const char *a = (const char *)p;
    for (int64_t o = 0; o < bytes; o += 64) nk_prefetch(a + o);
    nk_prefetch(a + bytes - 1);
}

/* moments of channels [c0, c0 + (np - 1) * VW + wl), rows [r0, r0 + n) (block b):
 *     per channel: s = x[r0];  d = x - s;  S1[l] += d;  S2[l] = fma(d, d, S2[l]);
 *     mean = s + S1 / n,  m2 = max(0, S2 - S1 * S1 / n) (NaN stays NaN) */
NK_VEC_INLINE void SFN(rmom_panel_)(const T *x, int64_t ld, int64_t c0, const int np,
                                    const int wl, int64_t r0, int64_t n, int64_t nb, int64_t b,
                                    double *part) {
    enum { PW = NK_RPV_MOM * VW };
    const vmask ml = vm_range(0, wl);
    const int64_t strip = (int64_t)((np - 1) * VW + wl) * (int64_t)sizeof(T);
    _Alignas(64) double L1[NK_LANES][PW], L2[NK_LANES][PW];
    vd s[NK_RPV_MOM];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++)
        s[k] = k < np ? SFN(pld_)(x + r0 * ld + c0 + k * VW, k, np, wl, ml) : vd_zero();
    for (int64_t t0 = 0; t0 < n; t0 += GN_RT) {
        const int64_t t1 = SFN(min_)(t0 + GN_RT, n), tn = SFN(min_)(t1 + GN_RT, n);
        for (int l = 0; l < NK_LANES; l++) {
            vd a1[NK_RPV_MOM], a2[NK_RPV_MOM];
            NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) {
                a1[k] = t0 && k < np ? vd_load_f64(L1[l] + k * VW) : vd_zero();
                a2[k] = t0 && k < np ? vd_load_f64(L2[l] + k * VW) : vd_zero();
            }
            for (int64_t q = t0 + l; q < t1; q += NK_LANES) {
                const T *p = x + (r0 + q) * ld + c0;
                if (q + GN_RT < tn) SFN(pf_strip_)(p + GN_RT * ld, strip);
                NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
                    const vd d = vd_sub(SFN(pld_)(p + k * VW, k, np, wl, ml), s[k]);
                    a1[k] = vd_add(a1[k], d);
                    a2[k] = vd_fmadd(d, d, a2[k]);
                }
            }
            NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
                vd_store_f64(L1[l] + k * VW, a1[k]);
                vd_store_f64(L2[l] + k * VW, a2[k]);
            }
        }
    }
    const vd cnt = vd_set1((double)n);
    _Alignas(64) double mean[PW], m2[PW];
    NK_UNROLL for (int k = 0; k < NK_RPV_MOM; k++) if (k < np) {
        const vd S1 = SFN(vtree_)(&L1[0][0], PW, k), S2 = SFN(vtree_)(&L2[0][0], PW, k);
        vd_store_f64(mean + k * VW, vd_add(s[k], gn_div(S1, cnt)));
        vd_store_f64(m2 + k * VW, vd_relu(vd_sub(S2, gn_div(vd_mul(S1, S1), cnt))));
    }
    for (int j = 0; j < (np - 1) * VW + wl; j++) {
        double *o = &part[2 * ((c0 + j) * nb + b)];
        o[0] = mean[j];
        o[1] = m2[j];
    }
}

static void SFN(rows_moments_)(const void *xv, int64_t ld, int64_t S, int64_t C, double *part) {
    const T *x = xv;
    const int64_t nb = nk_num_blocks(S), nvec = (C + VW - 1) / VW;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS, n = SFN(min_)(NK_BLOCK_ELEMS, S - r0);
        for (int64_t pv = 0; pv < nvec; pv += NK_RPV_MOM) {
            const int np = (int)SFN(min_)(nvec - pv, NK_RPV_MOM);
            const int wl = (int)SFN(min_)(C - (pv + np - 1) * VW, VW);
            if (np == NK_RPV_MOM && wl == VW) /* a full panel: constant shape, no masks */
                SFN(rmom_panel_)(x, ld, pv * VW, NK_RPV_MOM, VW, r0, n, nb, b, part);
            else
                SFN(rmom_panel_)(x, ld, pv * VW, np, wl, r0, n, nb, b, part);
        }
    }
}

/* backward sums of channels [c0, c0 + (np - 1) * VW + wl), rows [r0, r0 + n) (block b):
 *     per channel: g = dy;  d = x - mean;  G[l] += g;  GX[l] = fma(g, d, GX[l]);  X[l] += d
 * (the plain sums as fma(v, 1, acc), as bwd_reduce_) */
NK_VEC_INLINE void SFN(rbwd_panel_)(const T *x, int64_t ld, const T *dy, int64_t ldd,
                                    int64_t c0, const int np, const int wl, int64_t r0,
                                    int64_t n, const double *mean, int64_t nb, int64_t b,
                                    double *part) {
    enum { PW = NK_RPV_BWD * VW };
    const vmask ml = vm_range(0, wl);
    const int64_t strip = (int64_t)((np - 1) * VW + wl) * (int64_t)sizeof(T);
    const vd one = vd_set1(1.0);
    _Alignas(64) double LG[NK_LANES][PW], LGX[NK_LANES][PW], LX[NK_LANES][PW];
    _Alignas(64) double mv[PW] = {0}; /* (np < NK_RPV_BWD: the rest never read) */
    NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np)
        vd_store_f64(mv + k * VW, k == np - 1 && wl < VW ? vd_maskload_f64(mean + c0 + k * VW, ml)
                                                         : vd_load_f64(mean + c0 + k * VW));
    for (int64_t t0 = 0; t0 < n; t0 += GN_RT) {
        const int64_t t1 = SFN(min_)(t0 + GN_RT, n), tn = SFN(min_)(t1 + GN_RT, n);
        for (int l = 0; l < NK_LANES; l++) {
            vd ag[NK_RPV_BWD], agx[NK_RPV_BWD], ax[NK_RPV_BWD];
            NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) {
                ag[k] = t0 && k < np ? vd_load_f64(LG[l] + k * VW) : vd_zero();
                agx[k] = t0 && k < np ? vd_load_f64(LGX[l] + k * VW) : vd_zero();
                ax[k] = t0 && k < np ? vd_load_f64(LX[l] + k * VW) : vd_zero();
            }
            for (int64_t q = t0 + l; q < t1; q += NK_LANES) {
                const T *p = x + (r0 + q) * ld + c0, *g = dy + (r0 + q) * ldd + c0;
                if (q + GN_RT < tn) {
                    SFN(pf_strip_)(p + GN_RT * ld, strip);
                    SFN(pf_strip_)(g + GN_RT * ldd, strip);
                }
                NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
                    const vd gv = SFN(pld_)(g + k * VW, k, np, wl, ml);
                    const vd d = vd_sub(SFN(pld_)(p + k * VW, k, np, wl, ml),
                                        vd_load_f64(mv + k * VW));
                    ag[k] = vd_fmadd(gv, one, ag[k]);
                    agx[k] = vd_fmadd(gv, d, agx[k]);
                    ax[k] = vd_fmadd(d, one, ax[k]);
                }
            }
            NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
                vd_store_f64(LG[l] + k * VW, ag[k]);
                vd_store_f64(LGX[l] + k * VW, agx[k]);
                vd_store_f64(LX[l] + k * VW, ax[k]);
            }
        }
    }
    _Alignas(64) double sg[PW], sgx[PW], sx[PW];
    NK_UNROLL for (int k = 0; k < NK_RPV_BWD; k++) if (k < np) {
        vd_store_f64(sg + k * VW, SFN(vtree_)(&LG[0][0], PW, k));
        vd_store_f64(sgx + k * VW, SFN(vtree_)(&LGX[0][0], PW, k));
        vd_store_f64(sx + k * VW, SFN(vtree_)(&LX[0][0], PW, k));
    }
    for (int j = 0; j < (np - 1) * VW + wl; j++) {
        double *o = &part[3 * ((c0 + j) * nb + b)];
        o[0] = sg[j];
        o[1] = sgx[j];
        o[2] = sx[j];
    }
}

static void SFN(rows_bwd_reduce_)(const void *xv, int64_t ld, const void *dyv, int64_t ldd,
                                  int64_t S, int64_t C, const double *mean, double *part) {
    const T *x = xv, *dy = dyv;
    const int64_t nb = nk_num_blocks(S), nvec = (C + VW - 1) / VW;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * NK_BLOCK_ELEMS, n = SFN(min_)(NK_BLOCK_ELEMS, S - r0);
        for (int64_t pv = 0; pv < nvec; pv += NK_RPV_BWD) {
            const int np = (int)SFN(min_)(nvec - pv, NK_RPV_BWD);
            const int wl = (int)SFN(min_)(C - (pv + np - 1) * VW, VW);
            if (np == NK_RPV_BWD && wl == VW)
                SFN(rbwd_panel_)(x, ld, dy, ldd, pv * VW, NK_RPV_BWD, VW, r0, n, mean, nb, b, part);
            else
                SFN(rbwd_panel_)(x, ld, dy, ldd, pv * VW, np, wl, r0, n, mean, nb, b, part);
        }
    }
}

/* Element-wise passes over one sample, channels innermost: tiles of GN_ER rows, and in a tile
 * panels of GN_EP vectors of channels with their coefficients in registers, down the tile's
 * rows: a coefficient is loaded once per GN_ER rows instead of once per row, and the tile's
 * rows are still walked close to memory order (measured at 64x512x7x7: whole-sample panels,
 * down all 49 rows, were 15% slower than the rows kernels; at 8x64x28x28 faster). The last
 * vector of the last panel may be partial: masked loads and stores. */
#define GN_EP (NK_RPV_BWD / 2)
#define GN_ER 16

NK_VEC_INLINE vd SFN(cld_)(const double *p, int k, int np, int wl, vmask ml) {
    return k == np - 1 && wl < VW ? vd_maskload_f64(p, ml) : vd_load_f64(p);
}
/* st: a streaming store (the caller checked the alignment) but for a partial last vector */
NK_VEC_INLINE void SFN(pst_)(T *p, vd v, int k, int np, int wl, vmask ml, const int st) {
    if (k == np - 1 && wl < VW)
        MST(p, ml, v);
    else if (st)
        SST(p, v);
    else
        ST(p, v);
}

/* 1 if the output rows (ldo apart from y) can take streaming stores at every vector of a
 * panel: y and the rows aligned to a vector of T (the panels start at multiples of VW). */
NK_VEC_INLINE int SFN(can_stream_)(const T *y, int64_t ldo) {
    const uintptr_t al = (uintptr_t)(VW * sizeof(T));
    return (uintptr_t)y % al == 0 && ((uintptr_t)ldo * sizeof(T)) % al == 0;
}

/*     y[c] = (T)fma((double)x[c] - mean[c], a[c], b[c]) */
NK_VEC_INLINE void SFN(rnorm_panel_)(const T *x, int64_t ld, T *y, int64_t ldo, int64_t s0, int64_t S,
                                     int64_t c0, const int np, const int wl, const double *mean,
                                     const double *a, const double *b, const int st) {
    const vmask ml = vm_range(0, wl);
    vd vm[GN_EP], va[GN_EP], vb[GN_EP];
    NK_UNROLL for (int k = 0; k < GN_EP; k++) {
        vm[k] = k < np ? SFN(cld_)(mean + c0 + k * VW, k, np, wl, ml) : vd_zero();
        va[k] = k < np ? SFN(cld_)(a + c0 + k * VW, k, np, wl, ml) : vd_zero();
        vb[k] = k < np ? SFN(cld_)(b + c0 + k * VW, k, np, wl, ml) : vd_zero();
    }
    for (int64_t s = s0; s < S; s++) {
        const T *p = x + s * ld + c0;
        T *q = y + s * ldo + c0;
        NK_UNROLL for (int k = 0; k < GN_EP; k++) if (k < np) {
            const vd o = vd_fmadd(vd_sub(SFN(pld_)(p + k * VW, k, np, wl, ml), vm[k]), va[k], vb[k]);
            SFN(pst_)(q + k * VW, o, k, np, wl, ml, st);
        }
    }
}

static void SFN(rows_normalize_)(const void *xv, int64_t ld, void *yv, int64_t ldo, int64_t S,
                                 int64_t C, const double *mean, const double *a,
                                 const double *b, int stream) {
    const T *x = xv;
    T *y = yv;
    const int64_t nvec = (C + VW - 1) / VW;
    const int st = stream && SFN(can_stream_)(y, ldo);
    for (int64_t s0 = 0; s0 < S; s0 += GN_ER) {
        const int64_t s1 = SFN(min_)(s0 + GN_ER, S);
        for (int64_t pv = 0; pv < nvec; pv += GN_EP) {
            const int np = (int)SFN(min_)(nvec - pv, GN_EP);
            const int wl = (int)SFN(min_)(C - (pv + np - 1) * VW, VW);
            if (np == GN_EP && wl == VW && st)
                SFN(rnorm_panel_)(x, ld, y, ldo, s0, s1, pv * VW, GN_EP, VW, mean, a, b, 1);
            else if (np == GN_EP && wl == VW)
                SFN(rnorm_panel_)(x, ld, y, ldo, s0, s1, pv * VW, GN_EP, VW, mean, a, b, 0);
            else
                SFN(rnorm_panel_)(x, ld, y, ldo, s0, s1, pv * VW, np, wl, mean, a, b, st);
        }
    }
    if (st) vd_stream_fence();
}

/*     dx[c] = (T)fma(kx[c], (double)x[c] - mean[c], fma(kg[c], (double)dy[c], k0[c])) */
NK_VEC_INLINE void SFN(rapply_panel_)(const T *x, int64_t ld, const T *dy, int64_t ldd, T *dx,
                                      int64_t ldo, int64_t s0, int64_t S, int64_t c0, const int np,
                                      const int wl, const double *mean, const double *kg,
                                      const double *kx, const double *k0, const int st) {
    const vmask ml = vm_range(0, wl);
    vd vm[GN_EP], vg[GN_EP], vx[GN_EP], v0[GN_EP];
    NK_UNROLL for (int k = 0; k < GN_EP; k++) {
        vm[k] = k < np ? SFN(cld_)(mean + c0 + k * VW, k, np, wl, ml) : vd_zero();
        vg[k] = k < np ? SFN(cld_)(kg + c0 + k * VW, k, np, wl, ml) : vd_zero();
        vx[k] = k < np ? SFN(cld_)(kx + c0 + k * VW, k, np, wl, ml) : vd_zero();
        v0[k] = k < np ? SFN(cld_)(k0 + c0 + k * VW, k, np, wl, ml) : vd_zero();
    }
    for (int64_t s = s0; s < S; s++) {
        const T *p = x + s * ld + c0, *g = dy + s * ldd + c0;
        T *q = dx + s * ldo + c0;
        NK_UNROLL for (int k = 0; k < GN_EP; k++) if (k < np) {
            const vd o = SFN(dx_)(SFN(pld_)(g + k * VW, k, np, wl, ml),
                                  SFN(pld_)(p + k * VW, k, np, wl, ml), vm[k], vg[k], vx[k], v0[k]);
            SFN(pst_)(q + k * VW, o, k, np, wl, ml, st);
        }
    }
}

static void SFN(rows_bwd_apply_)(const void *xv, int64_t ld, const void *dyv, int64_t ldd,
                                 void *dxv, int64_t ldo, int64_t S, int64_t C,
                                 const double *mean, const double *kg, const double *kx,
                                 const double *k0, int stream) {
    const T *x = xv, *dy = dyv;
    T *dx = dxv;
    const int64_t nvec = (C + VW - 1) / VW;
    const int st = stream && SFN(can_stream_)(dx, ldo);
    for (int64_t s0 = 0; s0 < S; s0 += GN_ER) {
        const int64_t s1 = SFN(min_)(s0 + GN_ER, S);
        for (int64_t pv = 0; pv < nvec; pv += GN_EP) {
            const int np = (int)SFN(min_)(nvec - pv, GN_EP);
            const int wl = (int)SFN(min_)(C - (pv + np - 1) * VW, VW);
            if (np == GN_EP && wl == VW && st)
                SFN(rapply_panel_)(x, ld, dy, ldd, dx, ldo, s0, s1, pv * VW, GN_EP, VW, mean, kg,
                                   kx, k0, 1);
            else if (np == GN_EP && wl == VW)
                SFN(rapply_panel_)(x, ld, dy, ldd, dx, ldo, s0, s1, pv * VW, GN_EP, VW, mean, kg,
                                   kx, k0, 0);
            else
                SFN(rapply_panel_)(x, ld, dy, ldd, dx, ldo, s0, s1, pv * VW, np, wl, mean, kg, kx,
                                   k0, st);
        }
    }
    if (st) vd_stream_fence();
}

const nk_gn_kernels TABLE = {SFN(moments_),      SFN(normalize_), SFN(bwd_reduce_),
                             SFN(bwd_apply_),    SFN(rows_moments_), SFN(rows_bwd_reduce_),
                             SFN(rows_normalize_), SFN(rows_bwd_apply_)};

#undef NK_UNROLL
#undef GN_ER
#undef GN_EP
#undef GN_RT
#undef GN_TREES
#undef MST
#undef SST
#undef MLD
#undef ST
#undef LD
#undef SFN
#undef NK_SCAT
#undef NK_SCAT2
