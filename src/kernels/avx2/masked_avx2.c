/* AVX2 masked batch-norm kernels for every (data, mask) type pair: the template
 * kernels/simd/masked_simd_impl.h over the AVX2 vector layer. Built with this ISA's flags
 * only and called only when the CPU supports it (kernels/ref/masked_ref.c chooses). */
#include <string.h>

#include "kernels/masked_kernels.h"
#include "kernels/avx2/vec_avx2.h"

/* v where m != 0 (unordered compare: a NaN mask value is nonzero, as C's m != 0), else +0 */
NK_VEC_INLINE vd vd_keep_nz(vd v, vd m) {
    return _mm256_and_pd(v, _mm256_cmp_pd(m, _mm256_setzero_pd(), _CMP_NEQ_UQ));
}
NK_VEC_INLINE vd mload_u8(const uint8_t *p) {
    int32_t w;
    memcpy(&w, p, sizeof w); /* VW = 4 bytes, any alignment */
    return _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(w)));
}

#define NK_MASKED_TABLE(sfx) nk_masked_avx2_##sfx
#include "kernels/simd/masked_instances.h"
