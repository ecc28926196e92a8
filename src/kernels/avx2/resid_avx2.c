/* AVX2 kernels of the fused relu(bn(x) + z) for float32 and float64: the template
 * kernels/simd/resid_simd_impl.h over the AVX2 vector layer. Built with this ISA's flags only
 * (CMakeLists.txt) and called only when the CPU supports it (kernels/resid_dispatch.c). */
#include "kernels/resid_kernels.h"
#include "kernels/avx2/vec_avx2.h"

extern const nk_resid_kernels nk_resid_avx2_f32, nk_resid_avx2_f64;

#define T float
#define SFX f32
#define TABLE nk_resid_avx2_f32
#include "kernels/simd/resid_simd_impl.h"
#undef TABLE
#undef SFX
#undef T

#define T double
#define SFX f64
#define TABLE nk_resid_avx2_f64
#include "kernels/simd/resid_simd_impl.h"
#undef TABLE
#undef SFX
#undef T
