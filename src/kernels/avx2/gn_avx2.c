/* AVX2 group-norm span kernels for float32 and float64: the template
 * kernels/simd/gn_simd_impl.h over the AVX2 vector layer. Built with this ISA's flags only
 * (CMakeLists.txt) and called only when the CPU supports it (kernels/gn_dispatch.c). */
#include "kernels/gn_kernels.h"
#include "kernels/avx2/vec_avx2.h"

/* Masked stores of the last partial vector of a run: lanes outside m are not accessed. */
NK_VEC_INLINE void gn_maskstore_f32(float *p, vmask m, vd v) {
    /* the low 32 bits of each 64-bit lane mask, as 4 x 32-bit lanes (as vd_maskload_f32) */
    const __m256i lo32 = _mm256_permutevar8x32_epi32(m, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    _mm_maskstore_ps(p, _mm256_castsi256_si128(lo32), _mm256_cvtpd_ps(v));
}
NK_VEC_INLINE void gn_maskstore_f64(double *p, vmask m, vd v) { _mm256_maskstore_pd(p, m, v); }

/* out[m] = nk_sum16(t + 16 m) for m < 8 (vd_sum16's tree, one sum at a time) */
NK_VEC_INLINE void gn_sum16x8(const double *t, double *out) {
    for (int m = 0; m < 8; m++) {
        const vd a[4] = {_mm256_loadu_pd(t + 16 * m), _mm256_loadu_pd(t + 16 * m + 4),
                         _mm256_loadu_pd(t + 16 * m + 8), _mm256_loadu_pd(t + 16 * m + 12)};
        out[m] = vd_sum16(a);
    }
}

/* a / b per lane (IEEE division: the bits of the scalar one) */
NK_VEC_INLINE vd gn_div(vd a, vd b) { return _mm256_div_pd(a, b); }

extern const nk_gn_kernels nk_gn_avx2_f32, nk_gn_avx2_f64;

#define T float
#define SFX f32
#define TABLE nk_gn_avx2_f32
#include "kernels/simd/gn_simd_impl.h"
#undef TABLE
#undef SFX
#undef T

#define T double
#define SFX f64
#define TABLE nk_gn_avx2_f64
#include "kernels/simd/gn_simd_impl.h"
#undef TABLE
#undef SFX
#undef T
