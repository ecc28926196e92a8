/* Reference (scalar) masked batch-norm kernels, for every (data, mask) type pair, and the
 * dispatch of the masked kernels of every instruction set. As in bn_ref.c, statistics and
 * per-element arithmetic are done in double. */
#include <stdint.h>

#include "kernels/kernels.h"
#include "kernels/masked_kernels.h"

#define T float
#define MT uint8_t
#define SFX f32_u8
#include "masked_ref_impl.h"
#undef MT
#undef SFX
#define MT float
#define SFX f32_f32
#include "masked_ref_impl.h"
#undef MT
#undef SFX
#define MT double
#define SFX f32_f64
#include "masked_ref_impl.h"
#undef MT
#undef SFX
#undef T

#define T double
#define MT uint8_t
#define SFX f64_u8
#include "masked_ref_impl.h"
#undef MT
#undef SFX
#define MT float
#define SFX f64_f32
#include "masked_ref_impl.h"
#undef MT
#undef SFX
#define MT double
#define SFX f64_f64
#include "masked_ref_impl.h"
#undef MT
#undef SFX
#undef T

#ifdef NK_HAVE_X86_SIMD
extern const nk_masked_kernels nk_masked_avx2_f32_u8, nk_masked_avx2_f32_f32,
    nk_masked_avx2_f32_f64, nk_masked_avx2_f64_u8, nk_masked_avx2_f64_f32, nk_masked_avx2_f64_f64,
    nk_masked_avx512_f32_u8, nk_masked_avx512_f32_f32, nk_masked_avx512_f32_f64,
    nk_masked_avx512_f64_u8, nk_masked_avx512_f64_f32, nk_masked_avx512_f64_f64;
#endif

/* The instruction set of nk_isa_for (the reference when the context forces it). */
const nk_masked_kernels *nk_masked_kernels_for(const nk_ctx *ctx, nk_dtype dt, nk_dtype mt) {
    static const nk_masked_kernels *const table[NK_ISA_COUNT][2][3] = {
        {{&nk_masked_ref_f32_u8, &nk_masked_ref_f32_f32, &nk_masked_ref_f32_f64},
         {&nk_masked_ref_f64_u8, &nk_masked_ref_f64_f32, &nk_masked_ref_f64_f64}},
#ifdef NK_HAVE_X86_SIMD
        {{&nk_masked_avx2_f32_u8, &nk_masked_avx2_f32_f32, &nk_masked_avx2_f32_f64},
         {&nk_masked_avx2_f64_u8, &nk_masked_avx2_f64_f32, &nk_masked_avx2_f64_f64}},
        {{&nk_masked_avx512_f32_u8, &nk_masked_avx512_f32_f32, &nk_masked_avx512_f32_f64},
         {&nk_masked_avx512_f64_u8, &nk_masked_avx512_f64_f32, &nk_masked_avx512_f64_f64}},
#endif
    };
    const int d = dt == NK_F32 ? 0 : dt == NK_F64 ? 1 : -1;
    const int m = mt == NK_U8 ? 0 : mt == NK_F32 ? 1 : mt == NK_F64 ? 2 : -1;
    if (d < 0 || m < 0) return NULL;
    const nk_isa isa = nk_isa_for(ctx);
    const nk_masked_kernels *k = table[isa][d][m];
    return k ? k : table[NK_ISA_REF][d][m]; /* a build without the SIMD kernels */
}
