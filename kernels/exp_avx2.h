/* exp on eight floats with AVX2 and FMA, for the vector loops that need
 * it (GELU's tanh, attention's softmax), and their tails. Include only from files compiled
 * for AVX2 (names holding "avx2"). Thread-safe: pure. */
#ifndef TM_EXP_AVX2_H
#define TM_EXP_AVX2_H

#include <immintrin.h>

/* exp(x) for x <= 0: Cephes' expf (round-to-nearest range reduction by
 * ln 2 in two parts, a degree-6 polynomial, about 1 ulp), inputs below -87
 * clamped so that the result stays a normal float (NaN becomes e^-87). */
static inline __m256 tm__exp_nonpositive_avx2(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx),
                                                   _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* The first left < 8 floats at p as a vector (zeros after), and back: a
 * loop's tail goes through a buffer on the stack, since AMD's masked
 * stores are microcoded and cost more than the arithmetic. */
static inline __m256 tm__load_tail_avx2(const float *p, long left)
{
    float t[8] = {0};
    for (long k = 0; k < left; k++) t[k] = p[k];
    return _mm256_loadu_ps(t);
}

static inline void tm__store_tail_avx2(float *p, __m256 v, long left)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    for (long k = 0; k < left; k++) p[k] = t[k];
}

/* The sum of the eight lanes. */
static inline float tm__hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#endif
