/* GELU (tanh approximation) with AVX2 and FMA, eight floats at a time.
 * See kernels/gelu_simd.h for the formulas. */
#include <immintrin.h>

#include "kernels/exp_avx2.h"
#include "kernels/gelu_simd.h"

#define GELU_BETA 0.7978845608028654f
#define GELU_KAPPA 0.044715f

/* With e = exp(-2|u|) and d = 1 / (1 + e): (1 + tanh u) / 2 is d for
 * u >= 0 and e d below, and 1 - tanh² u = 4 e d². Neither subtracts two
 * numbers close to each other, so both keep exp's relative accuracy where
 * GELU is small (x < -2) as well as where it is large. *q = e d². */
static inline __m256 half_one_plus_tanh(__m256 u, __m256 *q)
{
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), u);
    __m256 e = tm__exp_nonpositive_avx2(_mm256_mul_ps(a, _mm256_set1_ps(-2.0f)));
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

/* Full vectors load and store plainly; the last n % 8 elements go through
 * kernels/exp_avx2.h's tail buffer. */
static inline __m256 gelu8(__m256 x)
{
    __m256 q;
    return _mm256_mul_ps(x, half_one_plus_tanh(inner8(x), &q));
}

void tm__gelu_forward_avx2(float *out, const float *inp, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, gelu8(_mm256_loadu_ps(inp + i)));
    if (i < n) tm__store_tail_avx2(out + i, gelu8(tm__load_tail_avx2(inp + i, (long)(n - i))), (long)(n - i));
}

/* GELU'(x): d/dx of x (1 + tanh u) / 2 = (1 + tanh u) / 2 + x (1 - tanh² u)
 * / 2 · du/dx, and x (1 - tanh² u) / 2 = 2 x e d². */
static inline __m256 derivative8(__m256 x)
{
    __m256 one = _mm256_set1_ps(1.0f), q;
    __m256 s = half_one_plus_tanh(inner8(x), &q);
    __m256 right = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), x), q);
    __m256 dinner = _mm256_mul_ps(_mm256_set1_ps(GELU_BETA),
                                  _mm256_fmadd_ps(_mm256_set1_ps(3.0f * GELU_KAPPA),
                                                  _mm256_mul_ps(x, x), one));
    return _mm256_fmadd_ps(right, dinner, s);
}

void tm__gelu_backward_avx2(float *dinp, const float *dout, const float *inp, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = derivative8(_mm256_loadu_ps(inp + i));
        _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), g,
                                                   _mm256_loadu_ps(dinp + i)));
    }
    if (i == n) return;
    __m256 g = derivative8(tm__load_tail_avx2(inp + i, (long)(n - i)));
    tm__store_tail_avx2(dinp + i, _mm256_fmadd_ps(tm__load_tail_avx2(dout + i, (long)(n - i)), g,
                                         tm__load_tail_avx2(dinp + i, (long)(n - i))), (long)(n - i));
}

void tm__gelu_backward_inplace_avx2(float *d, const float *inp, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_loadu_ps(d + i),
                                              derivative8(_mm256_loadu_ps(inp + i))));
    if (i < n)
        tm__store_tail_avx2(d + i, _mm256_mul_ps(tm__load_tail_avx2(d + i, (long)(n - i)),
                                        derivative8(tm__load_tail_avx2(inp + i, (long)(n - i)))), (long)(n - i));
}

void tm__bias_gelu_row_avx2(float *out, float *pre, const float *bias, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_add_ps(_mm256_loadu_ps(pre + i), _mm256_loadu_ps(bias + i));
        _mm256_storeu_ps(pre + i, x);
        _mm256_storeu_ps(out + i, gelu8(x));
    }
    if (i == n) return;
    __m256 x = _mm256_add_ps(tm__load_tail_avx2(pre + i, (long)(n - i)), tm__load_tail_avx2(bias + i, (long)(n - i)));
    tm__store_tail_avx2(pre + i, x, (long)(n - i));
    tm__store_tail_avx2(out + i, gelu8(x), (long)(n - i));
}
