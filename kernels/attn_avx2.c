/* Attention's causal softmax and its backward on one head's T x T
 * weights, eight floats at a time with AVX2 and FMA (kernels/ops_attn.c
 * keeps the scalar loops as the reference and chooses at run time). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attn_simd.h"
#include "kernels/exp_avx2.h"

/* Row t of a T x T matrix has n = t + 1 live entries: full vectors load
 * and store plainly, the last n % 8 through kernels/exp_avx2.h's tail
 * buffer. */
void tm__softmax_causal_avx2(float *att, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = att + (size_t)t * T;
        long n = t + 1, full = n & ~7L, left = n - full;
        float max = row[0];
        __m256 m = _mm256_set1_ps(row[0]);
        for (long j = 0; j < full; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(row + j));
        for (long j = full; j < n; j++) max = row[j] > max ? row[j] : max;
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float vmax = _mm_cvtss_f32(h);
        __m256 top = _mm256_set1_ps(vmax > max ? vmax : max), sum = _mm256_setzero_ps();
        for (long j = 0; j < full; j += 8) {
            __m256 e = tm__exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), top));
            _mm256_storeu_ps(row + j, e);
            sum = _mm256_add_ps(sum, e);
        }
        float tail_sum = 0;
        if (left) {
            __m256 e = tm__exp_nonpositive_avx2(
                _mm256_sub_ps(tm__load_tail_avx2(row + full, left), top));
            float t8[8];
            _mm256_storeu_ps(t8, e);
            for (long k = 0; k < left; k++) {
                row[full + k] = t8[k];
                tail_sum += t8[k];
            }
        }
        __m256 inv = _mm256_set1_ps(1.0f / (tm__hsum_avx2(sum) + tail_sum));
        for (long j = 0; j < full; j += 8)
            _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
        if (left)
            tm__store_tail_avx2(row + full,
                                _mm256_mul_ps(tm__load_tail_avx2(row + full, left), inv), left);
        memset(row + n, 0, (size_t)(T - n) * sizeof(float));
    }
}

void tm__softmax_causal_backward_avx2(float *d, const float *att, int T)
{
    for (int t = 0; t < T; t++) {
        float *g = d + (size_t)t * T;
        const float *a = att + (size_t)t * T;
        long n = t + 1, full = n & ~7L, left = n - full;
        __m256 acc = _mm256_setzero_ps();
        for (long j = 0; j < full; j += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(g + j), acc);
        float tail = 0;
        for (long j = full; j < n; j++) tail += a[j] * g[j];
        __m256 dot = _mm256_set1_ps(tm__hsum_avx2(acc) + tail);
        for (long j = 0; j < full; j += 8)
            _mm256_storeu_ps(g + j, _mm256_mul_ps(_mm256_loadu_ps(a + j),
                                                  _mm256_sub_ps(_mm256_loadu_ps(g + j), dot)));
        if (left)
            tm__store_tail_avx2(g + full,
                                _mm256_mul_ps(tm__load_tail_avx2(a + full, left),
                                              _mm256_sub_ps(tm__load_tail_avx2(g + full, left),
                                                            dot)),
                                left);
        memset(g + n, 0, (size_t)(T - n) * sizeof(float));
    }
}
