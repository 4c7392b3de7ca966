/* Attention's vector loops (kernels/attn_avx2.c), chosen by
 * kernels/ops_attn.c when the active instruction set (kernels/isa.h) has
 * AVX2; the scalar loops there are the reference and the fallback.
 * Thread-safe: pure loops. */
#ifndef TM_ATTN_SIMD_H
#define TM_ATTN_SIMD_H

#include "kernels/isa.h"

/* Each row t of att (T x T scores) becomes softmax over its positions
 * 0 .. t, zeros after. */
void tm__softmax_causal_avx2(float *att, int T);
/* Each row t of d (the gradient of the weights att) becomes the gradient
 * of the scores, att (d - sum(att d)) over 0 .. t, zeros after. */
void tm__softmax_causal_backward_avx2(float *d, const float *att, int T);

/* Both on a given instruction set's loops (generic: the reference): for
 * tests. */
void tm__softmax_causal_isa(tm_isa isa, float *att, int T);
void tm__softmax_causal_backward_isa(tm_isa isa, float *d, const float *att, int T);

#endif
