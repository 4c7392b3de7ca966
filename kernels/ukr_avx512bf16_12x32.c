/* The AVX512_BF16 micro-kernel: a 12x32 fp32 tile of C from packed bf16
 * slivers, two steps of k per vdpbf16ps (pairs of k interleaved by the
 * packers of gemm_bf16.c). Built twice: for AVX512_BF16, and as an AVX2
 * twin for tests. */
#include "kernels/gemm_internal.h"

#ifdef TM_SIMD16_TWIN
#define tm__ukr_avx512bf16_12x32 tm__ukr_avx512bf16_12x32_twin
#endif

#define UKR_NAME tile_12x32_bf16
#define UKR_BCAST(p) v16_bcast_word(p)
#define UKR_STEP(x, b, acc) v16_dpbf16(x, b, acc)
#include "kernels/ukr_12x32_body.h"

/* k counts bf16 steps; the slivers hold (k + 1) / 2 words per row or
 * column, an odd k's last pair padded with a zero. */
void tm__ukr_avx512bf16_12x32(int k, const float *a, const float *b, float alpha,
                              float beta, float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    tile_12x32_bf16((k + 1) / 2, a, b, alpha, beta, c, ldc, m_r, n_r);
}
