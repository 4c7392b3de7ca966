/* GELU (tanh approximation) with AVX-512, sixteen floats at a time, the
 * tail under a mask. See kernels/gelu_simd.h for the formulas. */
#include <immintrin.h>

#include "kernels/gelu_simd.h"

#define GELU_BETA 0.7978845608028654f
#define GELU_KAPPA 0.044715f

/* exp(x) for x <= 0, as in kernels/gelu_avx2.c. */
static inline __m512 exp_nonpositive(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx),
                                                   _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* With e = exp(-2|u|) and d = 1 / (1 + e): (1 + tanh u) / 2 is d for
 * u >= 0 and e d below, and 1 - tanh² u = 4 e d². Neither subtracts two
 * numbers close to each other, so both keep exp's relative accuracy where
 * GELU is small (x < -2) as well as where it is large. *q = e d². */
static inline __m512 half_one_plus_tanh(__m512 u, __m512 *q)
{
    __m512 a = _mm512_andnot_ps(_mm512_set1_ps(-0.0f), u);
    __m512 e = exp_nonpositive(_mm512_mul_ps(a, _mm512_set1_ps(-2.0f)));
    __m512 d = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    __m512 ed = _mm512_mul_ps(e, d);
    *q = _mm512_mul_ps(ed, d);
    return _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(u)), d, ed);
}

static inline __m512 inner16(__m512 x)
{
    __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    return _mm512_mul_ps(_mm512_set1_ps(GELU_BETA),
                         _mm512_fmadd_ps(_mm512_set1_ps(GELU_KAPPA), x3, x));
}

static inline __mmask16 lanes(size_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

void tm__gelu_forward_avx512(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, inp + i), q;
        __m512 s = half_one_plus_tanh(inner16(x), &q);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(x, s));
    }
}

/* d/dx of x (1 + tanh u) / 2 = (1 + tanh u) / 2 + x (1 - tanh² u) / 2 · du/dx,
 * and x (1 - tanh² u) / 2 = 2 x e d². */
void tm__gelu_backward_avx512(float *dinp, const float *dout, const float *inp, size_t n)
{
    __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    __m512 beta = _mm512_set1_ps(GELU_BETA), k3 = _mm512_set1_ps(3.0f * GELU_KAPPA);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, inp + i), q;
        __m512 s = half_one_plus_tanh(inner16(x), &q);
        __m512 right = _mm512_mul_ps(_mm512_mul_ps(two, x), q);
        __m512 dinner = _mm512_mul_ps(beta, _mm512_fmadd_ps(k3, _mm512_mul_ps(x, x), one));
        __m512 g = _mm512_fmadd_ps(right, dinner, s);
        __m512 d = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dout + i), g,
                                   _mm512_maskz_loadu_ps(m, dinp + i));
        _mm512_mask_storeu_ps(dinp + i, m, d);
    }
}
