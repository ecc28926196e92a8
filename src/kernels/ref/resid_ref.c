/* Reference (scalar) kernels of the fused relu(bn(x) + z): always built, the specification the
 * optimized kernels (kernels/simd/resid_simd_impl.h) are checked against. */
#include "kernels/resid_kernels.h"

#define T float
#define SFX f32
#include "resid_ref_impl.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "resid_ref_impl.h"
#undef T
#undef SFX
