/* The classifier's head: fused softmax + cross-entropy (loss and gradient in
 * one pass over the logits) and the accuracy count. */
#include "kernels/ops.h"

#include <assert.h>
#include <math.h>

#include "kernels/cost.h"

/* One row: returns its loss and, if d is not NULL, writes its gradient.
 * Subtracting the row maximum keeps every exponent <= 0, so nothing
 * overflows however large the logits; the loss is then
 * log(sum exp(x - max)) - (x[label] - max), both terms finite. */
static float xent_row(float *restrict d, const float *restrict x, int label,
                      int C, float grad_scale)
{
    float max = x[0];
    for (int c = 1; c < C; c++) max = x[c] > max ? x[c] : max;
    float sum = 0.0f;
    if (d != NULL) {
        for (int c = 0; c < C; c++) {
            d[c] = expf(x[c] - max);
            sum += d[c];
        }
        float scale = grad_scale / sum;
        for (int c = 0; c < C; c++) d[c] *= scale;
        d[label] -= grad_scale;
    } else {
        for (int c = 0; c < C; c++) sum += expf(x[c] - max);
    }
    /* sum >= 1 (the maximum contributes exp(0)), so the log is finite. */
    return logf(sum) - (x[label] - max);
}

float tm_softmax_xent_forward_backward(float *dlogits, float *losses,
                                       const float *logits, const int *labels,
                                       int B, int C, float grad_scale)
{
    double total = 0.0;
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        assert(labels[b] >= 0 && labels[b] < C);
        float *d = dlogits != NULL ? dlogits + (size_t)b * C : NULL;
        float loss = xent_row(d, logits + (size_t)b * C, labels[b], C,
                              grad_scale);
        if (losses != NULL) losses[b] = loss;
        total += loss;
    }
    /* Forward: max, subtract, exp and sum per logit, log and two subtractions
     * per row. The gradient: scale per logit, the one-hot per row. */
    double bc = (double)B * C;
    double flops = 4.0 * bc + 3.0 * B, bytes = 4.0 * (bc + B);
    if (dlogits != NULL) {
        flops += bc + 2.0 * B;
        bytes += 4.0 * bc;
    }
    if (losses != NULL) bytes += 4.0 * B;
    tm__cost_charge(flops, bytes);
    return B > 0 ? (float)(total / B) : 0.0f;
}

int tm_accuracy(const float *logits, const int *labels, int B, int C)
{
    int correct = 0;
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        const float *x = logits + (size_t)b * C;
        /* Strictly greater: the first of equal maxima wins. */
        int best = 0;
        for (int c = 1; c < C; c++)
            if (x[c] > x[best]) best = c;
        correct += best == labels[b];
    }
    double bc = (double)B * C;
    tm__cost_charge(bc, 4.0 * (bc + B));
    return correct;
}

void tm_xent_shard_max(float *max, int *arg, const float *logits, int B, int n, int ld)
{
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        const float *x = logits + (size_t)b * ld;
        int best = n > 0 ? 0 : -1;
        for (int c = 1; c < n; c++)
            if (x[c] > x[best]) best = c;
        max[b] = best >= 0 ? x[best] : -INFINITY;
        if (arg != NULL) arg[b] = best;
    }
    double bn = (double)B * n;
    tm__cost_charge(bn, 4.0 * (bn + B));
}

void tm_xent_shard_forward(float *d, float *sum, float *target, const float *logits,
                           const float *max, const int *labels, int B, int n, int ld, int v0)
{
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        const float *x = logits + (size_t)b * ld;
        float m = max[b], s = 0.0f;
        if (d != NULL) {
            float *e = d + (size_t)b * ld;
            for (int c = 0; c < n; c++) {
                e[c] = expf(x[c] - m);
                s += e[c];
            }
            for (int c = n; c < ld; c++) e[c] = 0.0f;
        } else {
            for (int c = 0; c < n; c++) s += expf(x[c] - m);
        }
        int col = labels[b] - v0;
        sum[b] = s;
        target[b] = col >= 0 && col < n ? x[col] - m : 0.0f;
    }
    double bn = (double)B * n;
    tm__cost_charge(3.0 * bn + B, 4.0 * (bn + 4.0 * B) + (d != NULL ? 4.0 * B * ld : 0));
}

void tm_xent_shard_backward(float *d, const float *sum, const int *labels, int B, int n, int ld,
                            int v0, float grad_scale)
{
    for (int b = 0; b < (tm_cost_dry() ? 0 : B); b++) {
        float *e = d + (size_t)b * ld, scale = grad_scale / sum[b];
        for (int c = 0; c < n; c++) e[c] *= scale;
        int col = labels[b] - v0;
        if (col >= 0 && col < n) e[col] -= grad_scale;
    }
    double bn = (double)B * n;
    tm__cost_charge(bn + 2.0 * B, 4.0 * (2.0 * bn + 2.0 * B));
}
