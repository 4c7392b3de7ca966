/* The GEMM behind every op: fp32 (tm_sgemm), or under the calling thread's
 * bf16 mixed precision tm_gemm_bf16, which rounds both operands to bf16 and
 * accumulates in fp32, reading an operand that lies in the registered
 * master weights from their bf16 copy instead. */
#include "kernels/ops.h"

#include <stdint.h>

#include "kernels/gemm.h"

/* Per thread, as the cost hook is: each device thread runs its own stage. */
static _Thread_local struct {
    int on;
    uintptr_t master;    /* first byte of the fp32 master weights */
    size_t n;            /* their floats (0: no copy) */
    const tm_bf16 *copy; /* (n) their bf16 copy */
} mode;

void tm_ops_set_bf16(int on, const float *master, const tm_bf16 *copy, size_t n)
{
    mode.on = on;
    mode.master = (uintptr_t)master;
    mode.copy = copy;
    mode.n = copy != NULL && master != NULL ? n : 0;
}

/* x itself (fp32, rounded as it is packed), or the same element of the
 * bf16 copy when x points into the master weights. */
static const void *operand(const float *x, tm_dtype *type)
{
    uintptr_t u = (uintptr_t)x;
    if (mode.n > 0 && u >= mode.master && u < mode.master + mode.n * sizeof(float)) {
        *type = TM_DTYPE_BF16;
        return mode.copy + (u - mode.master) / sizeof(float);
    }
    *type = TM_DTYPE_F32;
    return x;
}

void tm_ops_gemm(char transa, char transb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (!mode.on) {
        tm_sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    tm_dtype ta, tb;
    const void *pa = operand(a, &ta), *pb = operand(b, &tb);
    tm_gemm_bf16(transa, transb, m, n, k, alpha, pa, ta, lda, pb, tb, ldb, beta, c, ldc);
}
