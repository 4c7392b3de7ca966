/* The reference GEMM: the plainest loops that can be trusted, kept beside the
 * fast paths as their test oracle (BLIS and llm.c keep theirs the same way). */
#include "kernels/gemm_internal.h"

/* Each element is one dot product accumulated in double, so the oracle's own
 * rounding error is negligible next to the float error it is used to bound. */
void tm__gemm_ref(int transa, int transb, int m, int n, int k, float alpha,
                  const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                  float beta, float *c, ptrdiff_t ldc)
{
    /* op(A)(i, p) and op(B)(p, j) as strides, whichever way they are stored. */
    ptrdiff_t a_rs = transa ? 1 : lda, a_cs = transa ? lda : 1;
    ptrdiff_t b_rs = transb ? 1 : ldb, b_cs = transb ? ldb : 1;
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double sum = 0.0;
            for (int p = 0; p < k; p++)
                sum += (double)a[i * a_rs + p * a_cs] * b[p * b_rs + j * b_cs];
            float *cij = &c[i * ldc + j];
            /* beta == 0 must not read C: it may hold NaN. */
            *cij = beta == 0.0f ? (float)(alpha * sum)
                                : (float)(alpha * sum + (double)beta * *cij);
        }
    }
}
