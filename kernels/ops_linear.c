/* Linear layers and bias: the GEMM does the work, the code here keeps the
 * bias and activation from costing a pass of their own where it can. */
#include "kernels/ops.h"

#include <string.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width (the "very cheap" cost model), so each elementwise loop
 * lives in a span function that is called once on the largest multiple of 16
 * elements and once on the tail. */
static size_t vec_floor(size_t n) { return n & ~(size_t)15; }

static inline void relu_inplace_span(float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static inline void add_span(float *restrict acc, const float *restrict x,
                            size_t n)
{
    for (size_t i = 0; i < n; i++) acc[i] += x[i];
}

/* acc[c] += x[b, c] summed over rows: row by row, so the inner loop runs
 * along contiguous memory and vectorises. */
static void add_column_sums(float *restrict acc, const float *restrict x,
                            int B, int C)
{
    size_t nv = vec_floor((size_t)C);
    for (int b = 0; b < B; b++) {
        const float *row = x + (size_t)b * C;
        add_span(acc, row, nv);
        add_span(acc + nv, row + nv, (size_t)C - nv);
    }
}

/* The GEMM part of both forwards. With a bias, each output row starts as a
 * copy of the bias and the GEMM accumulates onto it (beta = 1): the bias then
 * costs one streaming write instead of a read-modify-write pass afterwards. */
static void linear_gemm(float *out, const float *inp, const float *weight,
                        const float *bias, int B, int IN, int OUT)
{
    if (B == 0 || OUT == 0) return;
    int rows = tm_cost_dry() ? 0 : B; /* a dry run computes nothing */
    if (bias != NULL) {
        for (int b = 0; b < rows; b++)
            memcpy(out + (size_t)b * OUT, bias, (size_t)OUT * sizeof(float));
    }
    if (IN == 0) {
        /* An empty product: out is the bias alone (or zero). */
        if (bias == NULL && rows > 0) memset(out, 0, (size_t)B * OUT * sizeof(float));
        return;
    }
    tm_ops_gemm('N', 'T', B, OUT, IN, 1.0f, inp, IN, weight, IN,
                bias != NULL ? 1.0f : 0.0f, out, OUT);
}

void tm_linear_forward(float *out, const float *inp, const float *weight,
                       const float *bias, int B, int IN, int OUT)
{
    linear_gemm(out, inp, weight, bias, B, IN, OUT);
    if (bias != NULL) {
        double bo = (double)B * OUT;
        tm__cost_charge(bo, 4.0 * (OUT + bo));
    }
}

void tm_linear_relu_forward(float *out, const float *inp, const float *weight,
                            const float *bias, int B, int IN, int OUT)
{
    linear_gemm(out, inp, weight, bias, B, IN, OUT);
    size_t n = (size_t)B * OUT, todo = tm_cost_dry() ? 0 : n, nv = vec_floor(todo);
    relu_inplace_span(out, nv);
    relu_inplace_span(out + nv, todo - nv);
    /* ReLU: one comparison per element, out read and written again. */
    double bo = (double)n;
    double flops = bo, bytes = 8.0 * bo;
    if (bias != NULL) {
        flops += bo;
        bytes += 4.0 * (OUT + bo);
    }
    tm__cost_charge(flops, bytes);
}

void tm_linear_backward(float *dinp, float *dweight, float *dbias,
                        const float *dout, const float *inp,
                        const float *weight, int B, int IN, int OUT)
{
    /* With any size zero both products add nothing. */
    if (B > 0 && IN > 0 && OUT > 0) {
        if (dinp != NULL)
            tm_ops_gemm('N', 'N', B, IN, OUT, 1.0f, dout, OUT, weight, IN, 1.0f,
                        dinp, IN);
        if (dweight != NULL)
            tm_ops_gemm('T', 'N', OUT, IN, B, 1.0f, dout, OUT, inp, IN, 1.0f,
                        dweight, IN);
    }
    if (dbias != NULL) tm_bias_add_backward(dbias, dout, B, OUT);
}

void tm_bias_add_forward(float *out, const float *bias, int B, int C)
{
    size_t nv = vec_floor((size_t)C);
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        float *row = out + (size_t)b * C;
        add_span(row, bias, nv);
        add_span(row + nv, bias + nv, (size_t)C - nv);
    }
    double bc = (double)B * C;
    tm__cost_charge(bc, 4.0 * (2.0 * bc + C));
}

void tm_bias_add_backward(float *dbias, const float *dout, int B, int C)
{
    add_column_sums(dbias, dout, tm_cost_dry() ? 0 : B, C);
    double bc = (double)B * C;
    tm__cost_charge(bc, 4.0 * (bc + 2.0 * C));
}
