/* Chooses the group-norm span kernels (kernels/gn_kernels.h) for a call: those of nk_isa_for's
 * instruction set, none for the reference. */
#include "kernels/gn_kernels.h"

#ifdef NK_HAVE_X86_SIMD
extern const nk_gn_kernels nk_gn_avx2_f32, nk_gn_avx2_f64, nk_gn_avx512_f32, nk_gn_avx512_f64;
#endif

const nk_gn_kernels *nk_gn_kernels_for(const nk_ctx *ctx, nk_dtype dt) {
    const int f64 = dt == NK_F64;
    switch (nk_isa_for(ctx)) {
#ifdef NK_HAVE_X86_SIMD
    case NK_ISA_AVX512: return f64 ? &nk_gn_avx512_f64 : &nk_gn_avx512_f32;
    case NK_ISA_AVX2: return f64 ? &nk_gn_avx2_f64 : &nk_gn_avx2_f32;
#endif
    default: return NULL;
    }
}
