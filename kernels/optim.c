/* SGD and AdamW as flat loops over a parameter range, written so that the
 * compiler vectorises them and so that they round as PyTorch's do. */
#include "kernels/optim.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>

#include "kernels/cost.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width (the "very cheap" cost model), so each update loop lives
 * in a span function that is called once on the largest multiple of 16
 * elements and once on the tail. Its bool arguments are constants at every
 * call site, so inlining leaves a branch-free loop. */
static size_t vec_floor(size_t n) { return n & ~(size_t)15; }

static inline void sgd_span(float *restrict p, const float *restrict g,
                            float *restrict buf, size_t n, float lr, float mom,
                            float wd, bool use_momentum, bool first)
{
    for (size_t i = 0; i < n; i++) {
        float d = g[i] + wd * p[i];
        if (use_momentum) {
            /* PyTorch clones d into a new buffer on the first step. */
            d = first ? d : mom * buf[i] + d;
            buf[i] = d;
        }
        p[i] = p[i] + -lr * d;
    }
}

void tm_sgd_step(float *restrict param, const float *restrict grad,
                 float *restrict momentum_buf, size_t n, tm_sgd_params hp,
                 long step)
{
    assert(step >= 1);
    float lr = (float)hp.lr, mom = (float)hp.momentum;
    float wd = (float)hp.weight_decay;
    size_t nv = vec_floor(n), nt = n - nv;
    if (hp.momentum == 0.0) {
        sgd_span(param, grad, NULL, nv, lr, mom, wd, false, false);
        sgd_span(param + nv, grad + nv, NULL, nt, lr, mom, wd, false, false);
        tm__cost_charge(4.0 * n, 12.0 * n);
        return;
    }
    assert(momentum_buf != NULL);
    float *buf = momentum_buf; /* short enough for the calls to fit a line */
    if (step == 1) {
        sgd_span(param, grad, buf, nv, lr, mom, wd, true, true);
        sgd_span(param + nv, grad + nv, buf + nv, nt, lr, mom, wd, true, true);
    } else {
        sgd_span(param, grad, buf, nv, lr, mom, wd, true, false);
        sgd_span(param + nv, grad + nv, buf + nv, nt, lr, mom, wd, true,
                 false);
    }
    tm__cost_charge(6.0 * n, 20.0 * n);
}

const char *tm_sgd_params_check(tm_sgd_params hp)
{
    /* Written as !(x >= 0) so that NaN is rejected too. */
    if (!(hp.lr >= 0.0)) return "SGD learning rate must be >= 0";
    if (!(hp.momentum >= 0.0)) return "SGD momentum must be >= 0";
    if (!(hp.weight_decay >= 0.0)) return "SGD weight decay must be >= 0";
    return NULL;
}

typedef struct {
    float decay;     /* 1 - lr * weight_decay */
    float b1, c1;    /* beta1 and 1 - beta1 */
    float b2, c2;    /* beta2 and 1 - beta2 */
    float step_size; /* lr / (1 - beta1^t) */
    float bc2_sqrt;  /* sqrt(1 - beta2^t) */
    float eps;
} adamw_scalars;

/* On the first step m and v are taken as zero rather than read, and the
 * update then reduces to PyTorch's from zero-initialised state bit for bit:
 * b1 * 0 + c1 * g == c1 * g. The loop vectorises only when the compiler may
 * ignore errno (-fno-math-errno): otherwise sqrtf keeps a call for negative
 * arguments, and the loop runs about four times slower. */
static inline void adamw_span(float *restrict p, const float *restrict g,
                              float *restrict m, float *restrict v, size_t n,
                              adamw_scalars s, bool first)
{
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = first ? s.c1 * gi : s.b1 * m[i] + s.c1 * gi;
        float vi = first ? s.c2 * gi * gi : s.b2 * v[i] + s.c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
        /* addcdiv's order: (value * m) / denom. */
        p[i] = p[i] * s.decay + -s.step_size * mi / denom;
    }
}

void tm_adamw_step(float *restrict param, const float *restrict grad,
                   float *restrict m, float *restrict v, size_t n,
                   tm_adamw_params hp, long step)
{
    assert(step >= 1 && m != NULL && v != NULL);
    double t = (double)step;
    adamw_scalars s = {
        .decay = (float)(1.0 - hp.lr * hp.weight_decay),
        .b1 = (float)hp.beta1,
        .c1 = (float)(1.0 - hp.beta1),
        .b2 = (float)hp.beta2,
        .c2 = (float)(1.0 - hp.beta2),
        .step_size = (float)(hp.lr / (1.0 - pow(hp.beta1, t))),
        .bc2_sqrt = (float)sqrt(1.0 - pow(hp.beta2, t)),
        .eps = (float)hp.eps,
    };
    size_t nv = vec_floor(n), nt = n - nv;
    if (step == 1) {
        adamw_span(param, grad, m, v, nv, s, true);
        adamw_span(param + nv, grad + nv, m + nv, v + nv, nt, s, true);
    } else {
        adamw_span(param, grad, m, v, nv, s, false);
        adamw_span(param + nv, grad + nv, m + nv, v + nv, nt, s, false);
    }
    /* Per element: decay 1, m 3, v 4, sqrt, divide and eps 3, the update 3;
     * param, m and v are read and written, grad read. */
    tm__cost_charge(14.0 * n, 28.0 * n);
}

const char *tm_adamw_params_check(tm_adamw_params hp)
{
    if (!(hp.lr >= 0.0)) return "AdamW learning rate must be >= 0";
    if (!(hp.beta1 >= 0.0 && hp.beta1 < 1.0))
        return "AdamW beta1 must be in [0, 1)";
    if (!(hp.beta2 >= 0.0 && hp.beta2 < 1.0))
        return "AdamW beta2 must be in [0, 1)";
    if (!(hp.eps >= 0.0)) return "AdamW eps must be >= 0";
    if (!(hp.weight_decay >= 0.0))
        return "AdamW weight decay must be >= 0";
    return NULL;
}
