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
    for (int b = 0; b < B; b++) {
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
    for (int b = 0; b < B; b++) {
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
