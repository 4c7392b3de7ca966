/* Sixteen-lane float vectors for the AVX-512 micro-kernels: one zmm register
 * when the file is compiled for AVX-512, otherwise (TM_SIMD16_TWIN) a pair
 * of ymm halves with the same semantics, so that the very same kernel source
 * also builds for AVX2 and the test suites run it on CPUs without AVX-512.
 * Private to kernels/. */
#ifndef TM_SIMD16_H
#define TM_SIMD16_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TM_INLINE static inline __attribute__((always_inline))

/* The lanes [0, n) of a 16-lane mask (all of them for n >= 16). */
TM_INLINE unsigned v16_lanes(int n) { return n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u; }

/* The 32 bits at p, as a float's bits (a pair of bf16 in the bf16 kernel's
 * packed operands). */
TM_INLINE uint32_t v16_word(const void *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

#if defined(__AVX512F__) && !defined(TM_SIMD16_TWIN)

typedef __m512 v16;

TM_INLINE v16 v16_zero(void) { return _mm512_setzero_ps(); }
TM_INLINE v16 v16_load(const float *p) { return _mm512_loadu_ps(p); }
/* Lanes outside the mask are zero and never read from memory. */
TM_INLINE v16 v16_load_mask(unsigned m, const float *p)
{
    return _mm512_maskz_loadu_ps((__mmask16)m, p);
}
TM_INLINE void v16_store(float *p, v16 v) { _mm512_storeu_ps(p, v); }
/* Lanes outside the mask are never written. */
TM_INLINE void v16_store_mask(float *p, unsigned m, v16 v)
{
    _mm512_mask_storeu_ps(p, (__mmask16)m, v);
}
TM_INLINE v16 v16_bcast(const float *p) { return _mm512_set1_ps(*p); }
TM_INLINE v16 v16_bcast_word(const void *p)
{
    return _mm512_castsi512_ps(_mm512_set1_epi32((int)v16_word(p)));
}
TM_INLINE v16 v16_set1(float x) { return _mm512_set1_ps(x); }
TM_INLINE v16 v16_mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
/* a * b + c, rounded once. */
TM_INLINE v16 v16_fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
#if defined(__AVX512BF16__)
/* vdpbf16ps: each lane of a and b holds a pair of bf16 (low half first);
 * acc += a_hi * b_hi, then acc += a_lo * b_lo, each product exact in fp32
 * and each sum rounded to nearest even, denormals flushed to zero. */
TM_INLINE v16 v16_dpbf16(v16 a, v16 b, v16 acc)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
#endif

#else /* the twin: two AVX2 halves */

typedef struct {
    __m256 lo, hi;
} v16;

/* The eight low bits of m as an AVX2 lane mask. */
TM_INLINE __m256i v16_mask8(unsigned m)
{
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bit), bit);
}
TM_INLINE v16 v16_zero(void) { return (v16){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
TM_INLINE v16 v16_load(const float *p) { return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
TM_INLINE v16 v16_load_mask(unsigned m, const float *p)
{
    return (v16){_mm256_maskload_ps(p, v16_mask8(m)), _mm256_maskload_ps(p + 8, v16_mask8(m >> 8))};
}
TM_INLINE void v16_store(float *p, v16 v)
{
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
TM_INLINE void v16_store_mask(float *p, unsigned m, v16 v)
{
    _mm256_maskstore_ps(p, v16_mask8(m), v.lo);
    _mm256_maskstore_ps(p + 8, v16_mask8(m >> 8), v.hi);
}
TM_INLINE v16 v16_set1(float x) { return (v16){_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
TM_INLINE v16 v16_bcast(const float *p) { return v16_set1(*p); }
TM_INLINE v16 v16_bcast_word(const void *p)
{
    __m256 w = _mm256_castsi256_ps(_mm256_set1_epi32((int)v16_word(p)));
    return (v16){w, w};
}
TM_INLINE v16 v16_mul(v16 a, v16 b) { return (v16){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
TM_INLINE v16 v16_fma(v16 a, v16 b, v16 c)
{
    return (v16){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
/* vdpbf16ps's order of operations (high pair first, then low), with
 * denormals kept rather than flushed. */
TM_INLINE __m256 v8_dpbf16(__m256 a, __m256 b, __m256 acc)
{
    const __m256i hi_half = _mm256_set1_epi32((int)0xffff0000u);
    __m256i ai = _mm256_castps_si256(a), bi = _mm256_castps_si256(b);
    __m256 a_hi = _mm256_castsi256_ps(_mm256_and_si256(ai, hi_half));
    __m256 b_hi = _mm256_castsi256_ps(_mm256_and_si256(bi, hi_half));
    __m256 a_lo = _mm256_castsi256_ps(_mm256_slli_epi32(ai, 16));
    __m256 b_lo = _mm256_castsi256_ps(_mm256_slli_epi32(bi, 16));
    return _mm256_fmadd_ps(a_lo, b_lo, _mm256_fmadd_ps(a_hi, b_hi, acc));
}
TM_INLINE v16 v16_dpbf16(v16 a, v16 b, v16 acc)
{
    return (v16){v8_dpbf16(a.lo, b.lo, acc.lo), v8_dpbf16(a.hi, b.hi, acc.hi)};
}

#endif

/* Stores one row of a tile, two vectors wide: c = alpha * (x0, x1) +
 * beta * c over the lanes of masks m0 and m1. beta == 0 never reads c. */
TM_INLINE void v16_store_row2(float *c, v16 x0, v16 x1, float alpha, float beta,
                              unsigned m0, unsigned m1)
{
    if (alpha != 1.0f) {
        v16 av = v16_set1(alpha);
        x0 = v16_mul(av, x0);
        x1 = v16_mul(av, x1);
    }
    if (m0 == 0xffffu && m1 == 0xffffu) {
        if (beta != 0.0f) {
            v16 bv = v16_set1(beta);
            x0 = v16_fma(bv, v16_load(c), x0);
            x1 = v16_fma(bv, v16_load(c + 16), x1);
        }
        v16_store(c, x0);
        v16_store(c + 16, x1);
        return;
    }
    if (beta != 0.0f) {
        v16 bv = v16_set1(beta);
        x0 = v16_fma(bv, v16_load_mask(m0, c), x0);
        x1 = v16_fma(bv, v16_load_mask(m1, c + 16), x1);
    }
    v16_store_mask(c, m0, x0);
    v16_store_mask(c + 16, m1, x1);
}

#endif
