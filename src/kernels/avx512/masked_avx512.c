/* AVX-512 masked batch-norm kernels for every (data, mask) type pair: the template
 * kernels/simd/masked_simd_impl.h over the AVX-512 vector layer. Built with this ISA's flags
 * only and called only when the CPU supports it (kernels/ref/masked_ref.c chooses). */

#include "kernels/masked_kernels.h"
#include "kernels/avx512/vec_avx512.h"

extern const nk_masked_kernels nk_masked_avx512_f32_u8, nk_masked_avx512_f32_f32,
    nk_masked_avx512_f32_f64, nk_masked_avx512_f64_u8, nk_masked_avx512_f64_f32,
    nk_masked_avx512_f64_f64;

/* v where m != 0 (unordered compare: a NaN mask value is nonzero, as C's m != 0), else +0 */
NK_VEC_INLINE vd vd_keep_nz(vd v, vd m) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(m, _mm512_setzero_pd(), _CMP_NEQ_UQ), v);
}
NK_VEC_INLINE vd mload_u8(const uint8_t *p) {
    return _mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
}

#define T float
#define MT uint8_t
#define MLOAD mload_u8
#define SFX f32_u8
#define TABLE nk_masked_avx512_f32_u8
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT float
#define MLOAD vd_load_f32
#define SFX f32_f32
#define TABLE nk_masked_avx512_f32_f32
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT double
#define MLOAD vd_load_f64
#define SFX f32_f64
#define TABLE nk_masked_avx512_f32_f64
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#undef T

#define T double
#define MT uint8_t
#define MLOAD mload_u8
#define SFX f64_u8
#define TABLE nk_masked_avx512_f64_u8
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT float
#define MLOAD vd_load_f32
#define SFX f64_f32
#define TABLE nk_masked_avx512_f64_f32
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT double
#define MLOAD vd_load_f64
#define SFX f64_f64
#define TABLE nk_masked_avx512_f64_f64
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#undef T
