/* Array conversions between fp32 and bf16. */
#include "kernels/bf16.h"

#include "kernels/cost.h"

/* gcc -O2 vectorises a loop only when its trip count is a known multiple of
 * the vector width, so each loop runs once on the largest multiple of 16
 * and once on the tail (as in optim.c). */
static inline void to_bf16_span(tm_bf16 *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = tm_bf16_from_float(src[i]);
}

static inline void to_f32_span(float *restrict dst, const tm_bf16 *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = tm_bf16_to_float(src[i]);
}

void tm_f32_to_bf16(tm_bf16 *dst, const float *src, size_t n)
{
    if (tm_cost_dry()) return;
    size_t nv = n & ~(size_t)15;
    to_bf16_span(dst, src, nv);
    to_bf16_span(dst + nv, src + nv, n - nv);
}

void tm_bf16_to_f32(float *dst, const tm_bf16 *src, size_t n)
{
    if (tm_cost_dry()) return;
    size_t nv = n & ~(size_t)15;
    to_f32_span(dst, src, nv);
    to_f32_span(dst + nv, src + nv, n - nv);
}
