/* Attention's vector loops (kernels/attn_avx2.c), chosen at run time by
 * kernels/ops_attn.c where the CPU has AVX2 and FMA; the scalar loops there
 * are the reference and the fallback. Thread-safe: pure loops. */
#ifndef TM_ATTN_SIMD_H
#define TM_ATTN_SIMD_H

/* Each row t of att (T x T scores) becomes softmax over its positions
 * 0 .. t, zeros after. */
void tm__softmax_causal_avx2(float *att, int T);
/* Each row t of d (the gradient of the weights att) becomes the gradient
 * of the scores, att (d - sum(att d)) over 0 .. t, zeros after. */
void tm__softmax_causal_backward_avx2(float *d, const float *att, int T);

#endif
