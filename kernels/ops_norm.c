/* LayerNorm over the last dimension, forward (saving mean and rstd) and
 * backward, following nn.LayerNorm and llm.c's layernorm_backward. */
#include "kernels/ops.h"

#include <math.h>

#include "kernels/cost.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width (the "very cheap" cost model), so each per-row loop lives
 * in a span function that is called once on the largest multiple of 16
 * elements and once on the tail. */
static size_t vec_floor(size_t n) { return n & ~(size_t)15; }

/* The row sums in double, in four independent lanes: a single chain of
 * dependent adds would make them, not the arithmetic, the cost of a row. */
static double sum_double(const float *x, int C)
{
    double l[4] = {0, 0, 0, 0};
    int c = 0;
    for (; c + 4 <= C; c += 4)
        for (int k = 0; k < 4; k++) l[k] += x[c + k];
    for (; c < C; c++) l[0] += x[c];
    return (l[0] + l[1]) + (l[2] + l[3]);
}

static double sum_sq_dev_double(const float *x, float m, int C)
{
    double l[4] = {0, 0, 0, 0};
    int c = 0;
    for (; c + 4 <= C; c += 4)
        for (int k = 0; k < 4; k++) {
            double d = x[c + k] - m;
            l[k] += d * d;
        }
    for (; c < C; c++) {
        double d = x[c] - m;
        l[0] += d * d;
    }
    return (l[0] + l[1]) + (l[2] + l[3]);
}

/* The backward's two row sums: of dnorm = weight dout, and of dnorm x the
 * normalised input. */
static void dnorm_sums(const float *x, const float *dy, const float *weight, float m, float s,
                       int C, double *dnorm_sum, double *dnorm_norm_sum)
{
    double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
    int c = 0;
    for (; c + 4 <= C; c += 4)
        for (int k = 0; k < 4; k++) {
            float norm = (x[c + k] - m) * s;
            float dnorm = weight[c + k] * dy[c + k];
            a[k] += dnorm;
            b[k] += (double)dnorm * norm;
        }
    for (; c < C; c++) {
        float norm = (x[c] - m) * s;
        float dnorm = weight[c] * dy[c];
        a[0] += dnorm;
        b[0] += (double)dnorm * norm;
    }
    *dnorm_sum = (a[0] + a[1]) + (a[2] + a[3]);
    *dnorm_norm_sum = (b[0] + b[1]) + (b[2] + b[3]);
}

static inline void normalize_span(float *restrict out, const float *restrict x,
                                  const float *restrict weight,
                                  const float *restrict bias, float m, float s,
                                  size_t n)
{
    for (size_t c = 0; c < n; c++)
        out[c] = (x[c] - m) * s * weight[c] + bias[c];
}

void tm_layernorm_forward(float *out, float *mean, float *rstd,
                          const float *inp, const float *weight,
                          const float *bias, int B, int C, float eps)
{
    size_t nv = vec_floor((size_t)C);
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        const float *x = inp + (size_t)b * C;
        float *y = out + (size_t)b * C;
        /* The moments are summed in double: a float sum over a wide row
         * drifts by about sqrt(C) ulps. */
        float m = (float)(sum_double(x, C) / C);
        float s = 1.0f / sqrtf((float)(sum_sq_dev_double(x, m, C) / C) + eps);
        normalize_span(y, x, weight, bias, m, s, nv);
        normalize_span(y + nv, x + nv, weight + nv, bias + nv, m, s,
                       (size_t)C - nv);
        if (mean != NULL) mean[b] = m;
        if (rstd != NULL) rstd[b] = s;
    }
    double bc = (double)B * C;
    double saved = (mean != NULL ? B : 0) + (rstd != NULL ? B : 0);
    tm__cost_charge(8.0 * bc + 4.0 * B, 4.0 * (2.0 * bc + 2.0 * C + saved));
}

/* The per-element part of the backward, given the row's two means:
 * dinp = rstd · (dnorm - mean(dnorm) - norm · mean(dnorm · norm)) with
 * dnorm = weight · dout, plus the weight and bias gradients. */
static inline void layernorm_backward_span(
    float *restrict dinp, float *restrict dweight, float *restrict dbias,
    const float *restrict dout, const float *restrict x,
    const float *restrict weight, float m, float s, float dnorm_mean,
    float dnorm_norm_mean, size_t n)
{
    for (size_t c = 0; c < n; c++) {
        float norm = (x[c] - m) * s;
        float dnorm = weight[c] * dout[c];
        dbias[c] += dout[c];
        dweight[c] += norm * dout[c];
        dinp[c] += s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
    }
}

void tm_layernorm_backward(float *dinp, float *dweight, float *dbias,
                           const float *dout, const float *inp,
                           const float *weight, const float *mean,
                           const float *rstd, int B, int C)
{
    size_t nv = vec_floor((size_t)C);
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        const float *x = inp + (size_t)b * C;
        const float *dy = dout + (size_t)b * C;
        float *dx = dinp + (size_t)b * C;
        float m = mean[b], s = rstd[b];
        double dnorm_sum, dnorm_norm_sum;
        dnorm_sums(x, dy, weight, m, s, C, &dnorm_sum, &dnorm_norm_sum);
        float dnorm_mean = (float)(dnorm_sum / C);
        float dnorm_norm_mean = (float)(dnorm_norm_sum / C);
        layernorm_backward_span(dx, dweight, dbias, dy, x, weight, m, s,
                                dnorm_mean, dnorm_norm_mean, nv);
        layernorm_backward_span(dx + nv, dweight + nv, dbias + nv, dy + nv,
                                x + nv, weight + nv, m, s, dnorm_mean,
                                dnorm_norm_mean, (size_t)C - nv);
    }
    double bc = (double)B * C;
    tm__cost_charge(17.0 * bc, 4.0 * (4.0 * bc + 5.0 * C + 2.0 * B));
}
