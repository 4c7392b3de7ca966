/* The optimizers' loops (optim_loops.h) built for AVX2. */
#include "kernels/optim_loops.h"

void tm__sgd_loops_avx2(float *param, const float *grad, float *buf, size_t n, float lr,
                        float mom, float wd, int first)
{
    sgd_loops(param, grad, buf, n, lr, mom, wd, first);
}

void tm__adamw_loops_avx2(float *param, const float *grad, float *m, float *v, size_t n,
                          tm__adamw_scalars s, int first)
{
    adamw_loops(param, grad, m, v, n, s, first);
}
