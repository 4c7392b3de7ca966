/* GELU (tanh approximation) with AVX2 and FMA, eight floats at a time.
 * See kernels/gelu_simd.h for the formulas. */
#include <immintrin.h>

#include "kernels/gelu_simd.h"

#define GELU_BETA 0.7978845608028654f
#define GELU_KAPPA 0.044715f

/* exp(x) for x <= 0: Cephes' expf (round-to-nearest range reduction by
 * ln 2 in two parts, a degree-6 polynomial), inputs below -87 clamped so
 * that the result stays a normal float. */
static inline __m256 exp_nonpositive(__m256 x)
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

/* With e = exp(-2|u|) and d = 1 / (1 + e): (1 + tanh u) / 2 is d for
 * u >= 0 and e d below, and 1 - tanh² u = 4 e d². Neither subtracts two
 * numbers close to each other, so both keep exp's relative accuracy where
 * GELU is small (x < -2) as well as where it is large. *q = e d². */
static inline __m256 half_one_plus_tanh(__m256 u, __m256 *q)
{
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), u);
    __m256 e = exp_nonpositive(_mm256_mul_ps(a, _mm256_set1_ps(-2.0f)));
    __m256 d = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    __m256 ed = _mm256_mul_ps(e, d);
    *q = _mm256_mul_ps(ed, d);
    return _mm256_blendv_ps(d, ed, u);
}

static inline __m256 inner8(__m256 x)
{
    __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    return _mm256_mul_ps(_mm256_set1_ps(GELU_BETA),
                         _mm256_fmadd_ps(_mm256_set1_ps(GELU_KAPPA), x3, x));
}

/* The first `left` of eight lanes (all eight from 8 on), for the tail. */
static inline __m256i lanes(size_t left)
{
    int n = left >= 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void tm__gelu_forward_avx2(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = lanes(n - i);
        __m256 x = _mm256_maskload_ps(inp + i, m), q;
        __m256 s = half_one_plus_tanh(inner8(x), &q);
        _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(x, s));
    }
}

/* d/dx of x (1 + tanh u) / 2 = (1 + tanh u) / 2 + x (1 - tanh² u) / 2 · du/dx,
 * and x (1 - tanh² u) / 2 = 2 x e d². */
void tm__gelu_backward_avx2(float *dinp, const float *dout, const float *inp, size_t n)
{
    __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    __m256 beta = _mm256_set1_ps(GELU_BETA), k3 = _mm256_set1_ps(3.0f * GELU_KAPPA);
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = lanes(n - i);
        __m256 x = _mm256_maskload_ps(inp + i, m), q;
        __m256 s = half_one_plus_tanh(inner8(x), &q);
        __m256 right = _mm256_mul_ps(_mm256_mul_ps(two, x), q);
        __m256 dinner = _mm256_mul_ps(beta, _mm256_fmadd_ps(k3, _mm256_mul_ps(x, x), one));
        __m256 g = _mm256_fmadd_ps(right, dinner, s);
        __m256 d = _mm256_fmadd_ps(_mm256_maskload_ps(dout + i, m), g,
                                   _mm256_maskload_ps(dinp + i, m));
        _mm256_maskstore_ps(dinp + i, m, d);
    }
}
