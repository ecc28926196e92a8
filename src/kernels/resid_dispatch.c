/* Chooses the kernels of the fused relu(bn(x) + z) for a call: the instruction set of
 * nk_isa_for (kernels/dispatch.c), so they always match the batch-norm kernels of the same
 * call. */
#include "kernels/resid_kernels.h"

#ifdef NK_HAVE_X86_SIMD
extern const nk_resid_kernels nk_resid_avx2_f32, nk_resid_avx2_f64, nk_resid_avx512_f32,
    nk_resid_avx512_f64;
#endif

const nk_resid_kernels *nk_resid_kernels_for(const nk_ctx *ctx, nk_dtype dt) {
    const int f64 = dt == NK_F64;
    switch (nk_isa_for(ctx)) {
#ifdef NK_HAVE_X86_SIMD
    case NK_ISA_AVX512: return f64 ? &nk_resid_avx512_f64 : &nk_resid_avx512_f32;
    case NK_ISA_AVX2: return f64 ? &nk_resid_avx2_f64 : &nk_resid_avx2_f32;
#endif
    default: return f64 ? &nk_resid_ref_f64 : &nk_resid_ref_f32;
    }
}
