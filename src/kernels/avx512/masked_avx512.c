/* AVX-512 masked batch-norm kernels for every (data, mask) type pair: the template
 * kernels/simd/masked_simd_impl.h over the AVX-512 vector layer. Built with this ISA's flags
 * only and called only when the CPU supports it (kernels/ref/masked_ref.c chooses). */
#include "kernels/masked_kernels.h"
#include "kernels/avx512/vec_avx512.h"

/* v where m != 0 (unordered compare: a NaN mask value is nonzero, as C's m != 0), else +0 */
NK_VEC_INLINE vd vd_keep_nz(vd v, vd m) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(m, _mm512_setzero_pd(), _CMP_NEQ_UQ), v);
}
NK_VEC_INLINE vd mload_u8(const uint8_t *p) {
    return _mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
}

#define NK_MASKED_TABLE(sfx) nk_masked_avx512_##sfx
#include "kernels/simd/masked_instances.h"
