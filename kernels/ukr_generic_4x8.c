/* The portable micro-kernel: a 4x8 tile in plain C, for CPUs without AVX2 and
 * FMA. The compiler vectorises the j loop with whatever the baseline ISA has. */
#include "kernels/gemm_internal.h"

enum { MR = 4, NR = 8 };

void tm__ukr_generic_4x8(int k, const float *a, const float *b, float alpha,
                         float beta, float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    float acc[MR][NR] = {{0}};
    for (int p = 0; p < k; p++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[p * MR + i] * b[p * NR + j];
    for (int i = 0; i < m_r; i++) {
        for (int j = 0; j < n_r; j++) {
            float *cij = &c[i * ldc + j];
            /* beta == 0 must not read C: it may hold NaN. */
            *cij = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *cij;
        }
    }
}
