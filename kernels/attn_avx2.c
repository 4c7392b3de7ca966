/* Attention's causal softmax and its backward on one head's T x T
 * weights, eight floats at a time with AVX2 and FMA (kernels/ops_attn.c
 * keeps the scalar loops as the reference and chooses at run time). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attn_simd.h"
#include "kernels/exp_avx2.h"

void tm__softmax_causal_avx2(float *att, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = att + (size_t)t * T;
        long n = t + 1;
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (long j = 0; j < n; j += 8) {
            __m256i k = tm__lanes_avx2(n - j);
            __m256 v = _mm256_maskload_ps(row + j, k);
            m = _mm256_max_ps(m, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v,
                                                  _mm256_castsi256_ps(k)));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        __m256 max = _mm256_set1_ps(_mm_cvtss_f32(h)), sum = _mm256_setzero_ps();
        for (long j = 0; j < n; j += 8) {
            __m256i k = tm__lanes_avx2(n - j);
            __m256 e = tm__exp_nonpositive_avx2(_mm256_sub_ps(_mm256_maskload_ps(row + j, k), max));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(k));
            _mm256_maskstore_ps(row + j, k, e);
            sum = _mm256_add_ps(sum, e);
        }
        __m256 inv = _mm256_set1_ps(1.0f / tm__hsum_avx2(sum));
        for (long j = 0; j < n; j += 8) {
            __m256i k = tm__lanes_avx2(n - j);
            _mm256_maskstore_ps(row + j, k, _mm256_mul_ps(_mm256_maskload_ps(row + j, k), inv));
        }
        memset(row + n, 0, (size_t)(T - n) * sizeof(float));
    }
}

void tm__softmax_causal_backward_avx2(float *d, const float *att, int T)
{
    for (int t = 0; t < T; t++) {
        float *g = d + (size_t)t * T;
        const float *a = att + (size_t)t * T;
        long n = t + 1;
        __m256 acc = _mm256_setzero_ps();
        for (long j = 0; j < n; j += 8) {
            __m256i k = tm__lanes_avx2(n - j);
            acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + j, k), _mm256_maskload_ps(g + j, k), acc);
        }
        __m256 dot = _mm256_set1_ps(tm__hsum_avx2(acc));
        for (long j = 0; j < n; j += 8) {
            __m256i k = tm__lanes_avx2(n - j);
            __m256 v = _mm256_mul_ps(_mm256_maskload_ps(a + j, k),
                                     _mm256_sub_ps(_mm256_maskload_ps(g + j, k), dot));
            _mm256_maskstore_ps(g + j, k, v);
        }
        memset(g + n, 0, (size_t)(T - n) * sizeof(float));
    }
}
