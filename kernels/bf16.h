/* bfloat16: the upper 16 bits of an IEEE fp32 (8 exponent bits, 7 mantissa
 * bits), and conversions between fp32 and bf16 arrays. Thread-safe: pure
 * functions of their arguments. */
#ifndef TM_BF16_H
#define TM_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t tm_bf16;

/* Element types of the mixed-precision kernels' operands. */
typedef enum {
    TM_DTYPE_F32,  /* float */
    TM_DTYPE_BF16, /* tm_bf16 */
} tm_dtype;

/* Rounds to nearest, ties to even; infinities and zeros keep their sign,
 * values past bf16's largest finite one become infinity, denormals are kept
 * (not flushed), and a NaN stays a NaN (quieted, sign and top payload bits
 * kept) rather than rounding into an infinity. */
static inline tm_bf16 tm_bf16_from_float(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (tm_bf16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (tm_bf16)(u >> 16);
}

/* Exact: every bf16 is an fp32. */
static inline float tm_bf16_to_float(tm_bf16 h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* dst[i] = tm_bf16_from_float(src[i]) for i < n. */
void tm_f32_to_bf16(tm_bf16 *dst, const float *src, size_t n);
/* dst[i] = tm_bf16_to_float(src[i]) for i < n. */
void tm_bf16_to_f32(float *dst, const tm_bf16 *src, size_t n);

#endif
