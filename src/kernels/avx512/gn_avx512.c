/* AVX-512 group-norm span kernels for float32 and float64: the template
 * kernels/simd/gn_simd_impl.h over the AVX-512 vector layer. Built with this ISA's flags only
 * (CMakeLists.txt) and called only when the CPU supports it (kernels/gn_dispatch.c). */
#include "kernels/gn_kernels.h"
#include "kernels/avx512/vec_avx512.h"

/* Masked stores of the last partial vector of a run: lanes outside m are not accessed. */
NK_VEC_INLINE void gn_maskstore_f32(float *p, vmask m, vd v) {
    _mm256_mask_storeu_ps(p, m, _mm512_cvtpd_ps(v));
}
NK_VEC_INLINE void gn_maskstore_f64(double *p, vmask m, vd v) { _mm512_mask_storeu_pd(p, m, v); }

/* out[m] = nk_sum16(t + 16 m) for m < 8: lanes16.h's tree on 8 sums at once, 128-bit lanes
 * of two sums per vector (each sum sees the same additions of the same operands as in
 * nk_sum16; addition is commutative). */
NK_VEC_INLINE void gn_sum16x8(const double *t, double *out) {
    __m512d w[4];
    for (int p = 0; p < 4; p++) { /* sums A = 2p, B = 2p + 1 */
        const double *a = t + 32 * p;
        const __m512d ua = _mm512_add_pd(_mm512_loadu_pd(a), _mm512_loadu_pd(a + 8));
        const __m512d ub = _mm512_add_pd(_mm512_loadu_pd(a + 16), _mm512_loadu_pd(a + 24));
        /* w = u[0..3] + u[4..7]: [wA0..3, wB0..3] */
        w[p] = _mm512_add_pd(_mm512_shuffle_f64x2(ua, ub, 0x44), _mm512_shuffle_f64x2(ua, ub, 0xEE));
    }
    /* z = (w0 + w2, w1 + w3): [zA, zB, zC, zD] and [zE, zF, zG, zH], 2 values each */
    const __m512d z0 = _mm512_add_pd(_mm512_shuffle_f64x2(w[0], w[1], 0x88),
                                     _mm512_shuffle_f64x2(w[0], w[1], 0xDD));
    const __m512d z1 = _mm512_add_pd(_mm512_shuffle_f64x2(w[2], w[3], 0x88),
                                     _mm512_shuffle_f64x2(w[2], w[3], 0xDD));
    /* z0 + z1 of each sum, in the order A E B F C G D H */
    const __m512d r = _mm512_add_pd(_mm512_unpacklo_pd(z0, z1), _mm512_unpackhi_pd(z0, z1));
    _mm512_storeu_pd(out, _mm512_permutexvar_pd(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), r));
}

/* a / b per lane (IEEE division: the bits of the scalar one) */
NK_VEC_INLINE vd gn_div(vd a, vd b) { return _mm512_div_pd(a, b); }

extern const nk_gn_kernels nk_gn_avx512_f32, nk_gn_avx512_f64;

#define T float
#define SFX f32
#define TABLE nk_gn_avx512_f32
#include "kernels/simd/gn_simd_impl.h"
#undef TABLE
#undef SFX
#undef T

#define T double
#define SFX f64
#define TABLE nk_gn_avx512_f64
#include "kernels/simd/gn_simd_impl.h"
#undef TABLE
#undef SFX
#undef T
