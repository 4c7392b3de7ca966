/* Elementwise layers: ReLU, GELU (tanh approximation) and the residual add,
 * each forward and backward. */
#include "kernels/ops.h"

#include <math.h>

#include "kernels/cost.h"
#include "kernels/gelu_simd.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width (the "very cheap" cost model), so each loop lives in a
 * span function that is called once on the largest multiple of 16 elements
 * and once on the tail. */
static size_t vec_floor(size_t n) { return n & ~(size_t)15; }

/* PyTorch's constants for approximate='tanh': sqrt(2/pi) and the cubic
 * coefficient. */
#define GELU_BETA 0.7978845608028654f
#define GELU_KAPPA 0.044715f

static inline void relu_span(float *restrict out, const float *restrict inp,
                             size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void tm_relu_forward(float *restrict out, const float *restrict inp, size_t n)
{
    size_t todo = tm_cost_dry() ? 0 : n, nv = vec_floor(todo);
    relu_span(out, inp, nv);
    relu_span(out + nv, inp + nv, todo - nv);
    tm__cost_charge((double)n, 8.0 * n);
}

/* A select rather than a multiply by the mask, so an inf or NaN gradient
 * behind a dead unit becomes 0 as it does in PyTorch's threshold_backward. */
static inline void relu_backward_span(float *restrict dinp,
                                      const float *restrict dout,
                                      const float *restrict out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        /* Loaded unconditionally: a load under the condition is control
         * flow the vectoriser gives up on. */
        float d = dout[i];
        dinp[i] += out[i] > 0.0f ? d : 0.0f;
    }
}

void tm_relu_backward(float *restrict dinp, const float *restrict dout,
                      const float *restrict out, size_t n)
{
    size_t todo = tm_cost_dry() ? 0 : n, nv = vec_floor(todo);
    relu_backward_span(dinp, dout, out, nv);
    relu_backward_span(dinp + nv, dout + nv, out + nv, todo - nv);
    tm__cost_charge(2.0 * n, 16.0 * n);
}

static inline void relu_mask_span(float *restrict d, const float *restrict out,
                                  size_t n)
{
    for (size_t i = 0; i < n; i++) d[i] = out[i] > 0.0f ? d[i] : 0.0f;
}

void tm_relu_backward_inplace(float *restrict d, const float *restrict out,
                              size_t n)
{
    size_t todo = tm_cost_dry() ? 0 : n, nv = vec_floor(todo);
    relu_mask_span(d, out, nv);
    relu_mask_span(d + nv, out + nv, todo - nv);
    tm__cost_charge((double)n, 12.0 * n);
}

/* The reference loops: tanhf is a library call, so they stay scalar. The
 * formulas follow PyTorch's CPU kernel term by term, so the two round alike
 * everywhere but in tanh itself. */
static void gelu_forward_ref(float *restrict out, const float *restrict inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float inner = GELU_BETA * (x + GELU_KAPPA * (x * x * x));
        out[i] = 0.5f * x * (1.0f + tanhf(inner));
    }
}

/* GELU'(x), term by term as PyTorch's kernel forms it. */
static inline float gelu_derivative_ref(float x)
{
    float x_sq = x * x;
    float inner = GELU_BETA * (x + GELU_KAPPA * (x_sq * x));
    float t = tanhf(inner);
    float left_derivative = 0.5f * (1.0f + t);
    float right_derivative = 0.5f * x * (1.0f - t * t);
    float inner_derivative = GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x_sq);
    return left_derivative + right_derivative * inner_derivative;
}

static void gelu_backward_ref(float *restrict dinp, const float *restrict dout,
                              const float *restrict inp, size_t n)
{
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * gelu_derivative_ref(inp[i]);
}

void tm__gelu_forward_isa(tm_isa isa, float *out, const float *inp, size_t n)
{
    if (isa >= TM_ISA_AVX2) tm__gelu_forward_avx2(out, inp, n);
    else gelu_forward_ref(out, inp, n);
}

void tm__gelu_backward_isa(tm_isa isa, float *dinp, const float *dout, const float *inp,
                           size_t n)
{
    if (isa >= TM_ISA_AVX2) tm__gelu_backward_avx2(dinp, dout, inp, n);
    else gelu_backward_ref(dinp, dout, inp, n);
}

static void gelu_backward_inplace_ref(float *restrict d, const float *restrict inp, size_t n)
{
    for (size_t i = 0; i < n; i++) d[i] *= gelu_derivative_ref(inp[i]);
}

void tm__gelu_backward_inplace_isa(tm_isa isa, float *d, const float *inp, size_t n)
{
    if (isa >= TM_ISA_AVX2) tm__gelu_backward_inplace_avx2(d, inp, n);
    else gelu_backward_inplace_ref(d, inp, n);
}

void tm__bias_gelu_forward_isa(tm_isa isa, float *out, float *pre, const float *bias, int B,
                               int C)
{
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * C, *p = pre + (size_t)b * C;
        if (isa >= TM_ISA_AVX2) {
            tm__bias_gelu_row_avx2(o, p, bias, (size_t)C);
            continue;
        }
        for (int c = 0; c < C; c++) p[c] += bias[c];
        gelu_forward_ref(o, p, (size_t)C);
    }
}

void tm_gelu_backward_inplace(float *d, const float *inp, size_t n)
{
    if (!tm_cost_dry()) tm__gelu_backward_inplace_isa(tm_isa_active(), d, inp, n);
    tm__cost_charge(19.0 * n, 12.0 * n);
}

void tm_bias_gelu_forward(float *out, float *pre, const float *bias, int B, int C)
{
    if (!tm_cost_dry()) tm__bias_gelu_forward_isa(tm_isa_active(), out, pre, bias, B, C);
    double n = (double)B * C;
    tm__cost_charge(10.0 * n, 4.0 * (3.0 * n + C));
}

void tm_gelu_forward(float *restrict out, const float *restrict inp, size_t n)
{
    if (!tm_cost_dry()) tm__gelu_forward_isa(tm_isa_active(), out, inp, n);
    tm__cost_charge(9.0 * n, 8.0 * n);
}

void tm_gelu_backward(float *restrict dinp, const float *restrict dout,
                      const float *restrict inp, size_t n)
{
    if (!tm_cost_dry()) tm__gelu_backward_isa(tm_isa_active(), dinp, dout, inp, n);
    tm__cost_charge(20.0 * n, 16.0 * n);
}

static inline void add2_span(float *restrict out, const float *restrict a,
                             const float *restrict b, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void tm_residual_forward(float *restrict out, const float *restrict inp1,
                         const float *restrict inp2, size_t n)
{
    size_t todo = tm_cost_dry() ? 0 : n, nv = vec_floor(todo);
    add2_span(out, inp1, inp2, nv);
    add2_span(out + nv, inp1 + nv, inp2 + nv, todo - nv);
    tm__cost_charge((double)n, 12.0 * n);
}

static inline void residual_backward_span(float *restrict dinp1,
                                          float *restrict dinp2,
                                          const float *restrict dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dinp1[i] += dout[i];
        dinp2[i] += dout[i];
    }
}

void tm_residual_backward(float *restrict dinp1, float *restrict dinp2,
                          const float *restrict dout, size_t n)
{
    size_t todo = tm_cost_dry() ? 0 : n, nv = vec_floor(todo);
    residual_backward_span(dinp1, dinp2, dout, nv);
    residual_backward_span(dinp1 + nv, dinp2 + nv, dout + nv, todo - nv);
    tm__cost_charge(2.0 * n, 20.0 * n);
}
