/* The vector layer of the AVX-512 kernels: a vector of VW doubles (vd) and the few operations
 * the kernel templates in kernels/simd/ use. Elements are converted to double on load and
 * back on store, so every ISA computes in double as the reference does.
 * Compiled only with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma (CMakeLists.txt). */
#ifndef NK_VEC_AVX512_H
#define NK_VEC_AVX512_H

#include <immintrin.h>

typedef __m512d vd;
typedef __mmask8 vmask;
#define VW 8 /* doubles per vector */
/* Vectors of channels whose lane sums the rows reductions keep in registers: moments (2 sums
 * each: 16 of 32 registers) and backward (3 sums each: 24 of 32). */
#define NK_RPV_MOM 8
#define NK_RPV_BWD 8

#define NK_VEC_INLINE static inline __attribute__((always_inline))

/* Brings the cache line of p into L2 (a hint: no fault, no effect on results). L2 rather than
 * L1: a tile's strips would evict the lane sums and the tile being read (measured on the
 * rows moments of 16x256x56x56 NHWC float32: no prefetch 7.9 GB/s, to L1 8.4, to L2 14.3,
 * the NCHW path 15.8). */
NK_VEC_INLINE void nk_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T1); }
NK_VEC_INLINE vd vd_zero(void) { return _mm512_setzero_pd(); }
NK_VEC_INLINE vd vd_set1(double a) { return _mm512_set1_pd(a); }
NK_VEC_INLINE vd vd_load_f32(const float *p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
NK_VEC_INLINE vd vd_load_f64(const double *p) { return _mm512_loadu_pd(p); }
/* (float) rounding of each lane: cvtpd2ps rounds to nearest even, as the C cast */
NK_VEC_INLINE void vd_store_f32(float *p, vd v) { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v)); }
NK_VEC_INLINE void vd_store_f64(double *p, vd v) { _mm512_storeu_pd(p, v); }
/* Streaming (non-temporal) stores: p aligned to VW * sizeof(element) bytes; the data goes to
 * memory without being read first (no read-for-ownership) and without evicting the cache. */
NK_VEC_INLINE void vd_stream_f32(float *p, vd v) { _mm256_stream_ps(p, _mm512_cvtpd_ps(v)); }
NK_VEC_INLINE void vd_stream_f64(double *p, vd v) { _mm512_stream_pd(p, v); }
NK_VEC_INLINE void vd_stream_fence(void) { _mm_sfence(); }
NK_VEC_INLINE vd vd_add(vd a, vd b) { return _mm512_add_pd(a, b); }
NK_VEC_INLINE vd vd_sub(vd a, vd b) { return _mm512_sub_pd(a, b); }
NK_VEC_INLINE vd vd_mul(vd a, vd b) { return _mm512_mul_pd(a, b); }
/* a * b + c with one rounding (kernels.h, numerics: sums and the element-wise expressions) */
NK_VEC_INLINE vd vd_fmadd(vd a, vd b, vd c) { return _mm512_fmadd_pd(a, b, c); }
/* r < 0 ? 0 : r per lane. MAXPD returns its second operand when either is NaN or both are
 * zeros, so NaN propagates and -0 stays -0, as the reference's `if (r < 0.0) r = 0.0`. */
NK_VEC_INLINE vd vd_relu(vd r) { return _mm512_max_pd(_mm512_setzero_pd(), r); }
/* m <= 0 ? 0 : g per lane (an ordered compare: a NaN m keeps g, as the reference) */
NK_VEC_INLINE vd vd_zero_where_le0(vd g, vd m) {
    const __mmask8 le = _mm512_cmp_pd_mask(m, _mm512_setzero_pd(), _CMP_LE_OQ);
    return _mm512_maskz_mov_pd(_knot_mask8(le), g);
}

/* ---- partial vectors: lanes lo <= l < hi (0 <= lo < hi <= VW) ---- */
NK_VEC_INLINE vmask vm_range(int lo, int hi) {
    return (vmask)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}
/* masked-off lanes read as 0 and are never accessed (no fault past either end of a buffer) */
NK_VEC_INLINE vd vd_maskload_f32(const float *p, vmask m) {
    return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, p));
}
NK_VEC_INLINE vd vd_maskload_f64(const double *p, vmask m) { return _mm512_maskz_loadu_pd(m, p); }
/* acc + d in the lanes of m, acc elsewhere */
NK_VEC_INLINE vd vd_mask_add(vd acc, vmask m, vd d) { return _mm512_mask_add_pd(acc, m, acc, d); }
/* a * b + acc (one rounding) in the lanes of m, acc elsewhere */
NK_VEC_INLINE vd vd_mask_fmadd(vd a, vd b, vd acc, vmask m) {
    return _mm512_mask3_fmadd_pd(a, b, acc, m);
}

/* ---- the 16 lanes of kernels/simd/lanes16.h in 2 vectors: lanes 0-7, 8-15 ---- */
#define NK_LANE_VECS 2
/* nk_sum16's tree: u = a0 + a1, w = low + high half of u, z = low + high half of w, z0 + z1 */
NK_VEC_INLINE double vd_sum16(const vd *a) {
    const vd u = _mm512_add_pd(a[0], a[1]);
    const __m256d w = _mm256_add_pd(_mm512_castpd512_pd256(u), _mm512_extractf64x4_pd(u, 1));
    const __m128d z = _mm_add_pd(_mm256_castpd256_pd128(w), _mm256_extractf128_pd(w, 1));
    return _mm_cvtsd_f64(_mm_add_sd(z, _mm_unpackhi_pd(z, z)));
}

#endif
