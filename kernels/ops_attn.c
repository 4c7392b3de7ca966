/* Causal self-attention, forward and backward, head by head with the GEMM
 * (llm.c's attention_forward / attention_backward, with the T x T score
 * matrix materialised per head). Causality is used to skip work: rows are
 * taken in blocks of RB, and a block of rows only multiplies against the
 * positions up to its last row, so about half of the score matrix is never
 * computed. The upper triangle of att holds exact zeros, which is what the
 * backward's transposed products rely on. */
#include "kernels/ops.h"

#include <math.h>
#include <string.h>

#include "kernels/attn_simd.h"
#include "kernels/cost.h"
#include "kernels/gemm.h"

/* Rows per block: the blocks' skipped columns save work, their GEMMs must
 * stay large enough to run at speed. */
#define RB 32

/* The reference loops, row by row: softmax over positions 0..t, zeros
 * after; sums in double. */
static void softmax_causal_ref(float *att, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = att + (size_t)t * T;
        float max = row[0];
        for (int j = 1; j <= t; j++) max = row[j] > max ? row[j] : max;
        double sum = 0.0;
        for (int j = 0; j <= t; j++) {
            row[j] = expf(row[j] - max);
            sum += row[j];
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j <= t; j++) row[j] *= inv;
        memset(row + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
    }
}

/* The softmax's backward in place: d (the gradient of the weights a)
 * becomes the gradient of the scores, a (d - sum(a d)) up to position t,
 * zeros after. In exact arithmetic each row of the result sums to zero. */
static void softmax_causal_backward_ref(float *d, const float *a, int T)
{
    for (int t = 0; t < T; t++) {
        float *g = d + (size_t)t * T;
        const float *w = a + (size_t)t * T;
        double sum = 0.0;
        for (int j = 0; j <= t; j++) sum += (double)w[j] * g[j];
        float dot = (float)sum;
        for (int j = 0; j <= t; j++) g[j] = w[j] * (g[j] - dot);
        memset(g + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
    }
}

void tm__softmax_causal_isa(tm_isa isa, float *att, int T)
{
    if (isa >= TM_ISA_AVX2) tm__softmax_causal_avx2(att, T);
    else softmax_causal_ref(att, T);
}

void tm__softmax_causal_backward_isa(tm_isa isa, float *d, const float *att, int T)
{
    if (isa >= TM_ISA_AVX2) tm__softmax_causal_backward_avx2(d, att, T);
    else softmax_causal_backward_ref(d, att, T);
}

/* One head's weights a (T, T): scale q kᵀ on the kept block columns, then
 * the causal softmax. */
static void head_weights(tm_isa isa, float *a, const float *q, const float *k, int T, int hs,
                         int ld, float scale)
{
    for (int r0 = 0; r0 < T; r0 += RB) {
        int r1 = r0 + RB < T ? r0 + RB : T;
        tm_ops_gemm('N', 'T', r1 - r0, r1, hs, scale, q + (size_t)r0 * ld, ld, k, ld, 0.0f,
                    a + (size_t)r0 * T, T);
    }
    if (!tm_cost_dry()) tm__softmax_causal_isa(isa, a, T);
}

/* The softmax's cost: per kept score a max, a subtraction, an exp, a sum
 * and a multiply; every score is read and written. */
static void charge_softmax(int B, int T, int NH)
{
    double kept = (double)B * NH * T * (T + 1) / 2, all = (double)B * NH * T * T;
    tm__cost_charge(5.0 * kept, 8.0 * all);
}

/* The forward with each head's weights at att + head * step: every head's
 * kept (step T x T), or one buffer they all reuse (step 0). */
static void forward(float *out, float *att, size_t step, const float *qkv, int B, int T, int C,
                    int NH)
{
    int hs = C / NH, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    tm_isa isa = tm_isa_active();
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * ld + (size_t)h * hs;
            const float *k = q + C, *v = q + 2 * C;
            float *a = att + ((size_t)b * NH + h) * step;
            float *o = out + (size_t)b * T * C + (size_t)h * hs;
            head_weights(isa, a, q, k, T, hs, ld, scale);
            for (int r0 = 0; r0 < T; r0 += RB) {
                int r1 = r0 + RB < T ? r0 + RB : T;
                tm_ops_gemm('N', 'N', r1 - r0, hs, r1, 1.0f, a + (size_t)r0 * T, T, v, ld, 0.0f,
                            o + (size_t)r0 * C, C);
            }
        }
    }
    charge_softmax(B, T, NH);
}

void tm_attention_forward(float *out, float *att, const float *qkv, int B,
                          int T, int C, int NH)
{
    forward(out, att, (size_t)T * T, qkv, B, T, C, NH);
}

void tm_attention_forward_drop(float *out, float *scratch, const float *qkv, int B, int T, int C,
                               int NH)
{
    forward(out, scratch, 0, qkv, B, T, C, NH);
}

/* The backward reading each head's weights from att, or (att NULL)
 * recomputing them into scratch + T x T first, by the forward's own calls
 * on the same operands: the same bits. */
static void backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                     const float *att, int B, int T, int C, int NH)
{
    int hs = C / NH, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    float *d = scratch;
    tm_isa isa = tm_isa_active();
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            size_t off = (size_t)b * T * ld + (size_t)h * hs;
            const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
            const float *a;
            if (att != NULL) {
                a = att + ((size_t)b * NH + h) * T * T;
            } else {
                float *w = scratch + (size_t)T * T;
                head_weights(isa, w, q, k, T, hs, ld, scale);
                a = w;
            }
            const float *g = dout + (size_t)b * T * C + (size_t)h * hs;
            /* d = dout vᵀ on the kept block columns. */
            for (int r0 = 0; r0 < T; r0 += RB) {
                int r1 = r0 + RB < T ? r0 + RB : T;
                tm_ops_gemm('N', 'T', r1 - r0, r1, hs, 1.0f, g + (size_t)r0 * C, C, v, ld, 0.0f,
                            d + (size_t)r0 * T, T);
            }
            /* dv = aᵀ dout: position j gathers from the rows t >= j. */
            for (int c0 = 0; c0 < T; c0 += RB) {
                int c1 = c0 + RB < T ? c0 + RB : T;
                tm_ops_gemm('T', 'N', c1 - c0, hs, T - c0, 1.0f, a + (size_t)c0 * T + c0, T,
                            g + (size_t)c0 * C, C, 0.0f, dv + (size_t)c0 * ld, ld);
            }
            if (!tm_cost_dry()) tm__softmax_causal_backward_isa(isa, d, a, T);
            /* dq = scale d k, dk = scale dᵀ q: each block of rows once. */
            for (int r0 = 0; r0 < T; r0 += RB) {
                int r1 = r0 + RB < T ? r0 + RB : T;
                tm_ops_gemm('N', 'N', r1 - r0, hs, r1, scale, d + (size_t)r0 * T, T, k, ld, 0.0f,
                            dq + (size_t)r0 * ld, ld);
                tm_ops_gemm('T', 'N', r1 - r0, hs, T - r0, scale, d + (size_t)r0 * T + r0, T,
                            q + (size_t)r0 * ld, ld, 0.0f, dk + (size_t)r0 * ld, ld);
            }
        }
    }
    double kept = (double)B * NH * T * (T + 1) / 2, all = (double)B * NH * T * T;
    tm__cost_charge(4.0 * kept, 12.0 * all);
}

void tm_attention_backward(float *dqkv, float *scratch, const float *dout,
                           const float *qkv, const float *att, int B, int T,
                           int C, int NH)
{
    backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
}

void tm_attention_backward_recompute(float *dqkv, float *scratch, const float *dout,
                                     const float *qkv, int B, int T, int C, int NH)
{
    backward(dqkv, scratch, dout, qkv, NULL, B, T, C, NH);
    charge_softmax(B, T, NH);
}
