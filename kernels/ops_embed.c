/* Token and position embeddings, forward and backward, and the small
 * elementwise helpers of a transformer block (a projection's bias with the
 * residual stream, a gradient reaching a tensor along two paths). */
#include "kernels/ops.h"

#include <string.h>

#include "kernels/cost.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width, so each row loop is a span called on the largest
 * multiple of 16 elements and once on the tail. */
static size_t vec_floor(size_t n) { return n & ~(size_t)15; }

static inline void sum_span(float *restrict out, const float *restrict a,
                            const float *restrict b, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static inline void add_span(float *restrict acc, const float *restrict x,
                            size_t n)
{
    for (size_t i = 0; i < n; i++) acc[i] += x[i];
}

static void add_row(float *restrict acc, const float *restrict x, size_t n)
{
    size_t nv = vec_floor(n);
    add_span(acc, x, nv);
    add_span(acc + nv, x + nv, n - nv);
}

void tm_embedding_forward(float *out, const int *tokens, const float *wte,
                          const float *wpe, int BT, int T, int C, int v0,
                          int V)
{
    size_t c = (size_t)C, nv = vec_floor(c);
    for (int r = 0; r < (tm_cost_dry() ? 0 : BT); r++) {
        float *y = out + (size_t)r * c;
        int row = tokens[r] - v0;
        const float *p = wpe != NULL ? wpe + (size_t)(r % T) * c : NULL;
        if (row < 0 || row >= V) {
            if (p != NULL) memcpy(y, p, c * sizeof(float));
            else memset(y, 0, c * sizeof(float));
            continue;
        }
        const float *w = wte + (size_t)row * c;
        if (p == NULL) {
            memcpy(y, w, c * sizeof(float));
            continue;
        }
        sum_span(y, w, p, nv);
        sum_span(y + nv, w + nv, p + nv, c - nv);
    }
    double n = (double)BT * C;
    tm__cost_charge(n, 4.0 * (3.0 * n + BT));
}

void tm_embedding_backward(float *dwte, float *dwpe, const float *dout,
                           const int *tokens, int BT, int T, int C, int v0,
                           int V)
{
    size_t c = (size_t)C;
    for (int r = 0; r < (tm_cost_dry() ? 0 : BT); r++) {
        const float *d = dout + (size_t)r * c;
        int row = tokens[r] - v0;
        if (row >= 0 && row < V) add_row(dwte + (size_t)row * c, d, c);
        if (dwpe != NULL) add_row(dwpe + (size_t)(r % T) * c, d, c);
    }
    double n = (double)BT * C;
    tm__cost_charge(2.0 * n, 4.0 * (5.0 * n + BT));
}

static inline void bias_residual_span(float *restrict out,
                                      const float *restrict res,
                                      const float *restrict bias, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = out[i] + bias[i] + res[i];
}

void tm_bias_residual_forward(float *out, const float *res,
                              const float *bias, int B, int C)
{
    size_t c = (size_t)C, nv = vec_floor(c);
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        float *y = out + (size_t)b * c;
        const float *x = res + (size_t)b * c;
        if (bias == NULL) {
            add_row(y, x, c);
            continue;
        }
        bias_residual_span(y, x, bias, nv);
        bias_residual_span(y + nv, x + nv, bias + nv, c - nv);
    }
    double n = (double)B * C;
    tm__cost_charge((bias != NULL ? 2.0 : 1.0) * n, 4.0 * (3.0 * n + C));
}

void tm_add_inplace(float *d, const float *dout, size_t n)
{
    if (!tm_cost_dry()) add_row(d, dout, n);
    tm__cost_charge((double)n, 12.0 * (double)n);
}
