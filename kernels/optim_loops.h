/* The optimizers' element loops, as static inline functions that optim.c
 * compiles for baseline x86-64 and optim_avx2.c for AVX2: the same source,
 * so both round alike (the C11 mode never contracts a * b + c into an FMA,
 * and sqrt and division are correctly rounded everywhere), bitwise. Private
 * to kernels/. */
#ifndef TM_OPTIM_LOOPS_H
#define TM_OPTIM_LOOPS_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>

#include "kernels/optim_internal.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width (the "very cheap" cost model), so each update loop lives
 * in a span function that is called once on the largest multiple of 16
 * elements and once on the tail. Its bool arguments are constants at every
 * call site, so inlining leaves a branch-free loop. */
static inline size_t vec_floor(size_t n) { return n & ~(size_t)15; }

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

/* A whole SGD update: buf NULL when momentum is off; first on step 1. */
static inline void sgd_loops(float *restrict param, const float *restrict grad,
                             float *restrict buf, size_t n, float lr, float mom, float wd,
                             bool first)
{
    size_t nv = vec_floor(n), nt = n - nv;
    if (buf == NULL) {
        sgd_span(param, grad, NULL, nv, lr, mom, wd, false, false);
        sgd_span(param + nv, grad + nv, NULL, nt, lr, mom, wd, false, false);
    } else if (first) {
        sgd_span(param, grad, buf, nv, lr, mom, wd, true, true);
        sgd_span(param + nv, grad + nv, buf + nv, nt, lr, mom, wd, true, true);
    } else {
        sgd_span(param, grad, buf, nv, lr, mom, wd, true, false);
        sgd_span(param + nv, grad + nv, buf + nv, nt, lr, mom, wd, true, false);
    }
}

/* On the first step m and v are taken as zero rather than read, and the
 * update then reduces to PyTorch's from zero-initialised state bit for bit:
 * b1 * 0 + c1 * g == c1 * g. The loop vectorises only when the compiler may
 * ignore errno (-fno-math-errno): otherwise sqrtf keeps a call for negative
 * arguments, and the loop runs about four times slower. */
static inline void adamw_span(float *restrict p, const float *restrict g,
                              float *restrict m, float *restrict v, size_t n,
                              tm__adamw_scalars s, bool first)
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

/* A whole AdamW update; first on step 1. */
static inline void adamw_loops(float *restrict param, const float *restrict grad,
                               float *restrict m, float *restrict v, size_t n,
                               tm__adamw_scalars s, bool first)
{
    size_t nv = vec_floor(n), nt = n - nv;
    if (first) {
        adamw_span(param, grad, m, v, nv, s, true);
        adamw_span(param + nv, grad + nv, m + nv, v + nv, nt, s, true);
    } else {
        adamw_span(param, grad, m, v, nv, s, false);
        adamw_span(param + nv, grad + nv, m + nv, v + nv, nt, s, false);
    }
}

#endif
