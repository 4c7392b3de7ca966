/* The AVX-512 fp32 micro-kernel: a 12x32 tile over packed slivers (the
 * layout of BLIS's skx sgemm kernel, 32x12 column-major, turned to our
 * row-major C). Built twice: for AVX-512, and as an AVX2 twin for tests. */
#include "kernels/gemm_internal.h"

#ifdef TM_SIMD16_TWIN
#define tm__ukr_avx512_12x32 tm__ukr_avx512_12x32_twin
#endif

#define UKR_NAME tile_12x32
#define UKR_BCAST(p) v16_bcast(p)
#define UKR_STEP(x, b, acc) v16_fma(x, b, acc)
#include "kernels/ukr_12x32_body.h"

void tm__ukr_avx512_12x32(int k, const float *a, const float *b, float alpha, float beta,
                          float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    tile_12x32(k, a, b, alpha, beta, c, ldc, m_r, n_r);
}
