/* The body of the 12x32 AVX-512 micro-kernels, fp32 and bf16 alike: a tile
 * of C in 24 zmm accumulators (two per row), fed per step by one broadcast
 * of A per row and two vectors of B; 24 + 2 + 1 of the 32 registers, and 24
 * independent FMA chains, three times what two pipes of 4-cycle FMAs need.
 * The includer defines UKR_NAME (the function), UKR_BCAST(p) (a word of A
 * to every lane) and UKR_STEP(x, b, acc), the multiply-add of one step; a
 * step is one k for fp32 (a word of packed A or B is a float) and two for
 * bf16 (a word is a pair of bf16). Private to kernels/. */
#include "kernels/simd16.h"

enum { UKR_MR = 12, UKR_NR = 32, UKR_PREFETCH_MIN_STEPS = 64 };

#define UKR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define UKR_DECL(r) v16 c##r##a = v16_zero(), c##r##b = c##r##a;
#define UKR_ROW(r)                                                            \
    {                                                                         \
        v16 x = UKR_BCAST(a + (r));                                      \
        c##r##a = UKR_STEP(x, b0, c##r##a);                                   \
        c##r##b = UKR_STEP(x, b1, c##r##b);                                   \
    }
#define UKR_STORE(r)                                                          \
    if ((r) < m_r) v16_store_row2(c + (r) * ldc, c##r##a, c##r##b, alpha, beta, m0, m1);

/* C(m_r, n_r) = alpha * A·B + beta * C over `steps` steps of the packed
 * slivers a (steps, 12) and b (steps, 32). Rows past m_r are computed from
 * the packed zeros and not stored; columns past n_r are masked off, so edge
 * tiles need no scratch copy. The accumulators are named variables, as in
 * the AVX2 kernel, so that none lives on the stack. */
static void UKR_NAME(int steps, const float *a, const float *b, float alpha, float beta,
                     float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    UKR_ROWS(UKR_DECL)
    if (steps >= UKR_PREFETCH_MIN_STEPS) {
        for (int r = 0; r < m_r; r++) {
            _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + r * ldc + 31), _MM_HINT_T0);
        }
    }
    for (int p = 0; p < steps; p++) {
        v16 b0 = v16_load(b), b1 = v16_load(b + 16);
        UKR_ROWS(UKR_ROW)
        a += UKR_MR;
        b += UKR_NR;
    }
    unsigned m0 = v16_lanes(n_r), m1 = v16_lanes(n_r - 16);
    UKR_ROWS(UKR_STORE)
}

#undef UKR_ROWS
#undef UKR_DECL
#undef UKR_ROW
#undef UKR_STORE
