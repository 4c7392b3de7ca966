/* The optimizers' instruction-set paths, for optim.c and the tests.
 * Thread-safe: pure functions of their arguments (and the cost hook). */
#ifndef TM_OPTIM_INTERNAL_H
#define TM_OPTIM_INTERNAL_H

#include <stddef.h>

#include "kernels/optim.h"

typedef struct {
    float decay;     /* 1 - lr * weight_decay */
    float b1, c1;    /* beta1 and 1 - beta1 */
    float b2, c2;    /* beta2 and 1 - beta2 */
    float step_size; /* lr / (1 - beta1^t) */
    float bc2_sqrt;  /* sqrt(1 - beta2^t) */
    float eps;
} tm__adamw_scalars;

/* tm_sgd_step and tm_adamw_step on the loops of one instruction set
 * (tm_isa): AVX2 and above run the AVX2 build of the loops, the rest the
 * portable one. Every path gives bitwise the same results. */
void tm__sgd_step_isa(int isa, float *param, const float *grad, float *momentum_buf,
                      size_t n, tm_sgd_params hp, long step);
void tm__adamw_step_isa(int isa, float *param, const float *grad, float *m, float *v,
                        size_t n, tm_adamw_params hp, long step);

/* The loops built for AVX2 (optim_avx2.c). */
void tm__sgd_loops_avx2(float *param, const float *grad, float *buf, size_t n, float lr,
                        float mom, float wd, int first);
void tm__adamw_loops_avx2(float *param, const float *grad, float *m, float *v, size_t n,
                          tm__adamw_scalars s, int first);

#endif
