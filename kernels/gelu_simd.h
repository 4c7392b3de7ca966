/* GELU's vector loops (kernels/gelu_avx2.c), chosen by kernels/ops_act.c
 * when the active instruction set (kernels/isa.h) has AVX2; its scalar
 * loops with libm's tanhf are the reference and the fallback.
 * Thread-safe: pure loops. */
#ifndef TM_GELU_SIMD_H
#define TM_GELU_SIMD_H

#include <stddef.h>

#include "kernels/isa.h"

/* The same contract as tm_gelu_forward / tm_gelu_backward, on n elements,
 * without charging the cost hook. With e = exp(-2|u|) from a degree-6
 * polynomial after range reduction (Cephes' expf) and d = 1 / (1 + e), the
 * factor (1 + tanh u) / 2 is d or e d and 1 - tanh² u is 4 e d²: no
 * cancellation, so GELU keeps exp's relative accuracy everywhere. */
void tm__gelu_forward_avx2(float *out, const float *inp, size_t n);
void tm__gelu_backward_avx2(float *dinp, const float *dout, const float *inp, size_t n);
/* d = d · GELU'(inp), and pre += bias then out = GELU(pre) on one row. */
void tm__gelu_backward_inplace_avx2(float *d, const float *inp, size_t n);
void tm__bias_gelu_row_avx2(float *out, float *pre, const float *bias, size_t n);

/* tm_gelu_forward / tm_gelu_backward on a given instruction set's loops
 * (generic: the reference), without charging the cost hook: for tests. */
void tm__gelu_forward_isa(tm_isa isa, float *out, const float *inp, size_t n);
void tm__gelu_backward_isa(tm_isa isa, float *dinp, const float *dout, const float *inp,
                           size_t n);
void tm__gelu_backward_inplace_isa(tm_isa isa, float *d, const float *inp, size_t n);
void tm__bias_gelu_forward_isa(tm_isa isa, float *out, float *pre, const float *bias, int B,
                               int C);

#endif
