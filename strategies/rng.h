/* Seeded random numbers for initialisation and data order: PCG32 (O'Neill,
 * "PCG: A Family of Simple Fast Space-Efficient Statistically Good
 * Algorithms"), the same stream on every platform. Thread-safety: a tm_rng
 * is plain state; each user owns its own. */
#ifndef TM_RNG_H
#define TM_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state; /* advances with every draw */
    uint64_t inc;   /* stream selector, always odd */
} tm_rng;

/* Stream `stream` of seed `seed`: different streams are independent. */
static inline uint32_t tm_rng_u32(tm_rng *r)
{
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ULL + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

static inline tm_rng tm_rng_seed(uint64_t seed, uint64_t stream)
{
    tm_rng r = {0, (stream << 1u) | 1u};
    tm_rng_u32(&r);
    r.state += seed;
    tm_rng_u32(&r);
    return r;
}

/* Uniform in [0, 1) with 24 random bits (every value exact in float). */
static inline float tm_rng_float(tm_rng *r) { return (float)(tm_rng_u32(r) >> 8) * 0x1p-24f; }

/* Uniform integer in [0, n) without modulo bias (Lemire's method). */
static inline uint32_t tm_rng_below(tm_rng *r, uint32_t n)
{
    uint64_t m = (uint64_t)tm_rng_u32(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)tm_rng_u32(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

#endif
