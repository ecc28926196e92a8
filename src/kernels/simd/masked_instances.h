/* Every (data, mask) type pair of the masked kernels, instantiated from masked_simd_impl.h for
 * one instruction set. Before inclusion: the ISA's vector layer, vd_keep_nz, mload_u8 (VW mask
 * bytes as doubles) and NK_MASKED_TABLE(sfx), the name of the table for type pair sfx. */
extern const nk_masked_kernels NK_MASKED_TABLE(f32_u8), NK_MASKED_TABLE(f32_f32),
    NK_MASKED_TABLE(f32_f64), NK_MASKED_TABLE(f64_u8), NK_MASKED_TABLE(f64_f32),
    NK_MASKED_TABLE(f64_f64);

#define T float
#define MT uint8_t
#define MLOAD mload_u8
#define SFX f32_u8
#define TABLE NK_MASKED_TABLE(f32_u8)
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT float
#define MLOAD vd_load_f32
#define SFX f32_f32
#define TABLE NK_MASKED_TABLE(f32_f32)
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT double
#define MLOAD vd_load_f64
#define SFX f32_f64
#define TABLE NK_MASKED_TABLE(f32_f64)
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
#define TABLE NK_MASKED_TABLE(f64_u8)
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT float
#define MLOAD vd_load_f32
#define SFX f64_f32
#define TABLE NK_MASKED_TABLE(f64_f32)
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#define MT double
#define MLOAD vd_load_f64
#define SFX f64_f64
#define TABLE NK_MASKED_TABLE(f64_f64)
#include "kernels/simd/masked_simd_impl.h"
#undef TABLE
#undef SFX
#undef MLOAD
#undef MT
#undef T
