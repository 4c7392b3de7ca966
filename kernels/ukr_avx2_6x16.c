/* The AVX2/FMA micro-kernel: a 6x16 tile of C in twelve ymm accumulators,
 * fed by one broadcast of A and two vectors of B per step of k; over packed
 * slivers, and over unpacked operands for the products that skip packing. */
#include "kernels/gemm_internal.h"

#include <immintrin.h>
#include <math.h>

#define TM_INLINE static inline __attribute__((always_inline))

enum { PREFETCH_MIN_K = 64 };

/* One step of k for row r: broadcast op(A)(r, p) and multiply-add it into
 * the row's two accumulators. */
#define ROW_STEP(r, ptr)                                                      \
    do {                                                                      \
        __m256 x = _mm256_broadcast_ss(ptr);                                  \
        c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                            \
        c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);                            \
    } while (0)

/* One step of k. Rows past R compile away: R is a constant at every call
 * site. Rows 3..5 address from a3 = a + 3 * rsa, so every broadcast is one
 * base + index * scale operand even when rsa is not a constant. */
#define STEP()                                                                \
    do {                                                                      \
        __m256 b0, b1;                                                        \
        if (masked) {                                                         \
            b0 = _mm256_maskload_ps(b, mask0);                                \
            b1 = _mm256_maskload_ps(b + 8, mask1);                            \
        } else {                                                              \
            b0 = _mm256_loadu_ps(b);                                          \
            b1 = _mm256_loadu_ps(b + 8);                                      \
        }                                                                     \
        ROW_STEP(0, a);                                                       \
        if (R > 1) ROW_STEP(1, a + rsa);                                      \
        if (R > 2) ROW_STEP(2, a + 2 * rsa);                                  \
        if (R > 3) ROW_STEP(3, a3);                                           \
        if (R > 4) ROW_STEP(4, a3 + rsa);                                     \
        if (R > 5) ROW_STEP(5, a3 + 2 * rsa);                                 \
    } while (0)

/* Scales row r by alpha, adds beta times the old C row, stores it. */
#define STORE_ROW(r)                                                          \
    do {                                                                      \
        float *cr = c + (r) * ldc;                                            \
        __m256 lo = c##r##0, hi = c##r##1;                                    \
        if (alpha != 1.0f) {                                                  \
            lo = _mm256_mul_ps(av, lo);                                       \
            hi = _mm256_mul_ps(av, hi);                                       \
        }                                                                     \
        if (beta != 0.0f) {                                                   \
            lo = _mm256_fmadd_ps(bv, _mm256_loadu_ps(cr), lo);                \
            hi = _mm256_fmadd_ps(bv, _mm256_loadu_ps(cr + 8), hi);            \
        }                                                                     \
        _mm256_storeu_ps(cr, lo);                                             \
        _mm256_storeu_ps(cr + 8, hi);                                         \
    } while (0)

/* C(R, 16) = alpha * op(A)·B + beta * C with op(A)(i, p) at a[i*rsa + p*csa]
 * and B(p, j) at b[p*rsb + j]. masked loads only the columns mask0/mask1
 * select (zeros elsewhere), for a B that ends inside the tile; C is then a
 * scratch tile the caller trims. The accumulators are named variables, not
 * an array: gcc 12 spilled an array of __m256 to the stack and ran at half
 * speed. */
TM_INLINE void tile(const int R, const int masked, int k, const float *a,
                    ptrdiff_t rsa, ptrdiff_t csa, const float *b, ptrdiff_t rsb,
                    __m256i mask0, __m256i mask1, float alpha, float beta,
                    float *c, ptrdiff_t ldc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00;
    __m256 c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m256 c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a3 = R > 3 ? a + 3 * rsa : a;
    /* A long k gives the prefetch of the C tile time to land before the
     * update; with a short one it would only cost issue slots. */
    if (k >= PREFETCH_MIN_K) {
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + r * ldc + 15), _MM_HINT_T0);
        }
    }
    /* Not unrolled on purpose: on Zen 5 the loop unrolled four times ran at
     * 70% of the FMA peak, the plain one at 95-98%. */
    for (int p = 0; p < k; p++) {
        STEP();
        a += csa;
        a3 += csa;
        b += rsb;
    }
    __m256 av = _mm256_set1_ps(alpha), bv = _mm256_set1_ps(beta);
    STORE_ROW(0);
    if (R > 1) STORE_ROW(1);
    if (R > 2) STORE_ROW(2);
    if (R > 3) STORE_ROW(3);
    if (R > 4) STORE_ROW(4);
    if (R > 5) STORE_ROW(5);
}

/* Adds a scratch tile into C: c = t + beta * c over the (m_r, n_r) corner.
 * The scratch already holds alpha * A·B, rounded as the full-tile path
 * rounds it. */
static void trim(const float *t /* (6, 16) */, float beta, float *c,
                 ptrdiff_t ldc, int m_r, int n_r)
{
    for (int i = 0; i < m_r; i++)
        for (int j = 0; j < n_r; j++)
            c[i * ldc + j] = beta == 0.0f ? t[i * 16 + j]
                                          : fmaf(beta, c[i * ldc + j], t[i * 16 + j]);
}

static const __m256i no_mask = {0};

void tm__ukr_avx2_6x16(int k, const float *a, const float *b, float alpha,
                       float beta, float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    if (n_r == 16) {
        /* Packed rows past m_r are zeros; skipping them saves their stores. */
        switch (m_r) {
        case 6: tile(6, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 5: tile(5, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 4: tile(4, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 3: tile(3, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 2: tile(2, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, beta, c, ldc); return;
        default: tile(1, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, beta, c, ldc); return;
        }
    }
    _Alignas(32) float t[6 * 16];
    tile(6, 0, k, a, 1, 6, b, 16, no_mask, no_mask, alpha, 0.0f, t, 16);
    trim(t, beta, c, ldc, m_r, n_r);
}

/* One tile of unpacked operands, any m_r <= 6 and n_r <= 16. */
static void strided_tile(int k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                         const float *b, ptrdiff_t rsb, float alpha, float beta,
                         float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    if (n_r == 16) {
        switch (m_r) {
        case 6: tile(6, 0, k, a, rsa, csa, b, rsb, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 5: tile(5, 0, k, a, rsa, csa, b, rsb, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 4: tile(4, 0, k, a, rsa, csa, b, rsb, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 3: tile(3, 0, k, a, rsa, csa, b, rsb, no_mask, no_mask, alpha, beta, c, ldc); return;
        case 2: tile(2, 0, k, a, rsa, csa, b, rsb, no_mask, no_mask, alpha, beta, c, ldc); return;
        default: tile(1, 0, k, a, rsa, csa, b, rsb, no_mask, no_mask, alpha, beta, c, ldc); return;
        }
    }
    /* A B that ends inside the tile: masked loads never touch memory past
     * column n_r, and rows past m_r are never read either. */
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n_r), lane);
    __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n_r - 8), lane);
    _Alignas(32) float t[6 * 16];
    switch (m_r) {
    case 6: tile(6, 1, k, a, rsa, csa, b, rsb, mask0, mask1, alpha, 0.0f, t, 16); break;
    case 5: tile(5, 1, k, a, rsa, csa, b, rsb, mask0, mask1, alpha, 0.0f, t, 16); break;
    case 4: tile(4, 1, k, a, rsa, csa, b, rsb, mask0, mask1, alpha, 0.0f, t, 16); break;
    case 3: tile(3, 1, k, a, rsa, csa, b, rsb, mask0, mask1, alpha, 0.0f, t, 16); break;
    case 2: tile(2, 1, k, a, rsa, csa, b, rsb, mask0, mask1, alpha, 0.0f, t, 16); break;
    default: tile(1, 1, k, a, rsa, csa, b, rsb, mask0, mask1, alpha, 0.0f, t, 16); break;
    }
    trim(t, beta, c, ldc, m_r, n_r);
}

void tm__gemm_unpacked_avx2(int transa, int m, int n, int k, float alpha,
                            const float *a, ptrdiff_t lda, const float *b,
                            ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    ptrdiff_t rsa = transa ? 1 : lda, csa = transa ? lda : 1;
    /* Rows are dealt to tiles as evenly as possible (128 = 18 x 6 + 4 x 5
     * rather than 21 x 6 + 2): a thin tile has too few accumulators to hide
     * the FMA latency. The common full tiles are inlined here, since with a
     * short k the call and dispatch of each tile would show. */
    int tiles = (m + 5) / 6, base = m / tiles, extra = m % tiles;
    for (int j = 0; j < n; j += 16) {
        int n_r = n - j < 16 ? n - j : 16;
        const float *bj = b + j;
        for (int t = 0, i = 0; t < tiles; t++) {
            int m_r = base + (t < extra);
            const float *ai = a + i * rsa;
            float *cij = c + i * ldc + j;
            if (n_r == 16 && m_r == 6)
                tile(6, 0, k, ai, rsa, csa, bj, ldb, no_mask, no_mask, alpha, beta, cij, ldc);
            else if (n_r == 16 && m_r == 5)
                tile(5, 0, k, ai, rsa, csa, bj, ldb, no_mask, no_mask, alpha, beta, cij, ldc);
            else
                strided_tile(k, ai, rsa, csa, bj, ldb, alpha, beta, cij, ldc, m_r, n_r);
            i += m_r;
        }
    }
}
