/* The GEMM behind every op: fp32 (tm_sgemm), or under the calling thread's
 * bf16 mixed precision tm_gemm_bf16, which rounds both operands to bf16 and
 * accumulates in fp32, reading an operand that lies in the registered
 * master weights (or in a registered fp32 view of them) from their bf16
 * copy instead. */
#include "kernels/ops.h"

#include <stdint.h>

#include "kernels/gemm.h"

/* An fp32 range whose GEMM operands are read from a bf16 copy. */
typedef struct {
    uintptr_t from;      /* first byte of the fp32 floats */
    size_t n;            /* their floats (0: unused) */
    const tm_bf16 *copy; /* (n) their bf16 copy */
} range;

/* Per thread, as the cost hook is: each device thread runs its own stage.
 * Range 0 is the master weights (tm_ops_set_bf16); the others the views
 * tm_ops_map_bf16 adds. */
static _Thread_local struct {
    int on;
    int n_ranges;
    range r[1 + TM_OPS_BF16_VIEWS];
} mode;

void tm_ops_set_bf16(int on, const float *master, const tm_bf16 *copy, size_t n)
{
    mode.on = on;
    mode.n_ranges = 1;
    mode.r[0] = (range){(uintptr_t)master, copy != NULL && master != NULL ? n : 0, copy};
}

int tm_ops_map_bf16(const float *view, const tm_bf16 *copy, size_t n)
{
    if (mode.n_ranges < 1 || mode.n_ranges > TM_OPS_BF16_VIEWS) return -1;
    mode.r[mode.n_ranges++] = (range){(uintptr_t)view, n, copy};
    return 0;
}

void tm_ops_unmap_bf16(void)
{
    if (mode.n_ranges > 1) mode.n_ranges = 1;
}

/* x itself (fp32, rounded as it is packed), or the same element of the
 * bf16 copy when x points into a registered range. */
static const void *operand(const float *x, tm_dtype *type)
{
    uintptr_t u = (uintptr_t)x;
    for (int i = 0; i < mode.n_ranges; i++) {
        const range *r = &mode.r[i];
        if (r->n > 0 && u >= r->from && u < r->from + r->n * sizeof(float)) {
            *type = TM_DTYPE_BF16;
            return r->copy + (u - r->from) / sizeof(float);
        }
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
