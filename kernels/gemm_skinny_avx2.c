/* AVX2 paths for products with one tiny dimension (a 10-class classifier's
 * layer), where packing costs more than it saves: dot products along k for
 * NT with few columns, and unpacked tiles for a row-major B with few rows of
 * C or a short k. */
#include "kernels/gemm_internal.h"

#include <immintrin.h>

/* Below these, packing does not pay: each packed B sliver would serve at
 * most a few tiles of C, or each tile would run only a few steps of k. */
enum { DOT_MAX_N = 15, UNPACKED_MAX_M = 16, UNPACKED_MAX_K = 16 };

#define TM_INLINE static inline __attribute__((always_inline))

/* One 8-wide step of k for row r of the tile against both rows of B. */
#define DOT_ROW(r, load, ptr)                                                 \
    do {                                                                      \
        __m256 x = load(ptr);                                                 \
        s##r##0 = _mm256_fmadd_ps(x, y0, s##r##0);                            \
        s##r##1 = _mm256_fmadd_ps(x, y1, s##r##1);                            \
    } while (0)

/* Rows past R compile away: R is a constant at every call site. */
#define DOT_STEP(load)                                                        \
    do {                                                                      \
        __m256 y0 = load(b0), y1 = load(b1);                                  \
        DOT_ROW(0, load, a0);                                                 \
        DOT_ROW(1, load, a1);                                                 \
        DOT_ROW(2, load, a2);                                                 \
        DOT_ROW(3, load, a3);                                                 \
        if (R > 4) DOT_ROW(4, load, a4);                                      \
        if (R > 5) DOT_ROW(5, load, a5);                                      \
    } while (0)

/* Sums of the lanes of pairs of vectors: lane l of the result is the sum of
 * x's lanes for l even, y's for l odd, within each 128-bit half. */
static inline __m256 pair_sum(__m256 x, __m256 y)
{
    return _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
}

/* Two rows' worth of pair sums folded into one 128-bit half each: lane
 * 2i + j of the result (within each half) is row i's partial sum for
 * column j. */
static inline __m256 quad_sum(__m256 q0, __m256 q1)
{
    return _mm256_add_ps(_mm256_shuffle_ps(q0, q1, 0x44), _mm256_shuffle_ps(q0, q1, 0xEE));
}

/* Two floats in the low half of a vector, loaded and stored through
 * unaligned 64-bit accesses (C's rows need not be 8-byte aligned). */
static inline __m128 load2(const float *p) { return _mm_castsi128_ps(_mm_loadu_si64(p)); }
static inline void store2(float *p, __m128 v) { _mm_storeu_si64(p, _mm_castps_si128(v)); }

/* Stores two rows' results (lanes: row 0 col 0, row 0 col 1, row 1 col 0,
 * row 1 col 1) as 64-bit pairs into C, adding beta times the old values. */
static inline void store_pairs(__m128 v, float beta, float *c, ptrdiff_t ldc)
{
    if (beta != 0.0f) {
        __m128 old = _mm_movelh_ps(load2(c), load2(c + ldc));
        v = _mm_fmadd_ps(_mm_set1_ps(beta), old, v);
    }
    store2(c, v);
    store2(c + ldc, _mm_movehl_ps(v, v));
}

/* An R x 2 tile (R = 4, 5 or 6) of C = alpha * A·B^T + beta * C, each
 * element a dot product of a row of A and a row of B, both contiguous along
 * k. Rows and columns past m_r and n_r repeat row 0 (harmless extra work,
 * never out of bounds) and are not stored. Twelve accumulators leave slack
 * over the eight that the latency of both FMA pipes needs. */
TM_INLINE void dot_tile(const int R, int k, const float *a, ptrdiff_t lda,
                        const float *b, ptrdiff_t ldb, float alpha, float beta,
                        float *c, ptrdiff_t ldc, int m_r, int n_r)
{
    const float *a0 = a, *a1 = m_r > 1 ? a + lda : a, *a2 = m_r > 2 ? a + 2 * lda : a;
    const float *a3 = m_r > 3 ? a + 3 * lda : a, *a4 = m_r > 4 ? a + 4 * lda : a;
    const float *a5 = m_r > 5 ? a + 5 * lda : a;
    const float *b0 = b, *b1 = n_r > 1 ? b + ldb : b;
    __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00;
    __m256 s20 = s00, s21 = s00, s30 = s00, s31 = s00;
    __m256 s40 = s00, s41 = s00, s50 = s00, s51 = s00;
    int p = 0;
    for (; p + 8 <= k; p += 8) {
#define LOADU(ptr) _mm256_loadu_ps((ptr) + p)
        DOT_STEP(LOADU);
#undef LOADU
    }
    if (p < k) {
        /* The tail: masked loads read only the k % 8 remaining floats and
         * give zeros elsewhere. */
        __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(k - p),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#define LOADM(ptr) _mm256_maskload_ps((ptr) + p, mask)
        DOT_STEP(LOADM);
#undef LOADM
    }
    /* Transpose-and-add: lane 2i + j of sum03 is C(i, j) for rows 0..3, of
     * sum45 for rows 4 and 5 (zeros when R < 6). */
    __m256 r01 = quad_sum(pair_sum(s00, s01), pair_sum(s10, s11));
    __m256 r23 = quad_sum(pair_sum(s20, s21), pair_sum(s30, s31));
    __m256 sum03 = _mm256_add_ps(_mm256_permute2f128_ps(r01, r23, 0x20),
                                 _mm256_permute2f128_ps(r01, r23, 0x31));
    __m128 sum45 = _mm_setzero_ps();
    if (R > 4) {
        __m256 r45 = quad_sum(pair_sum(s40, s41), pair_sum(s50, s51));
        sum45 = _mm_add_ps(_mm256_castps256_ps128(r45), _mm256_extractf128_ps(r45, 1));
    }
    if (alpha != 1.0f) {
        sum03 = _mm256_mul_ps(_mm256_set1_ps(alpha), sum03);
        sum45 = _mm_mul_ps(_mm_set1_ps(alpha), sum45);
    }
    if (m_r == R && n_r == 2) {
        store_pairs(_mm256_castps256_ps128(sum03), beta, c, ldc);
        store_pairs(_mm256_extractf128_ps(sum03, 1), beta, c + 2 * ldc, ldc);
        if (R > 5) {
            store_pairs(sum45, beta, c + 4 * ldc, ldc);
        } else if (R > 4) {
            float *c4 = c + 4 * ldc;
            if (beta != 0.0f)
                sum45 = _mm_fmadd_ps(_mm_set1_ps(beta), load2(c4), sum45);
            store2(c4, sum45);
        }
        return;
    }
    _Alignas(32) float t[12];
    _mm256_store_ps(t, sum03);
    _mm_store_ps(t + 8, sum45);
    for (int i = 0; i < m_r; i++) {
        for (int j = 0; j < n_r; j++) {
            float *cij = &c[i * ldc + j];
            *cij = beta == 0.0f ? t[2 * i + j] : __builtin_fmaf(beta, *cij, t[2 * i + j]);
        }
    }
}

/* C (m, n) = alpha * A (m, k) · B (n, k)^T + beta * C, for few columns. Rows
 * of A are the outer loop so that a tile's rows stay in L1 while every row
 * of B (n * k floats, a few KiB) passes by. Rows are dealt to tiles as
 * evenly as possible (128 = 18 x 6 + 4 x 5). */
static void dot_nt(int m, int n, int k, float alpha, const float *a,
                   ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                   float *c, ptrdiff_t ldc)
{
    int tiles = (m + 5) / 6, base = m / tiles, extra = m % tiles;
    for (int t = 0, i = 0; t < tiles; t++) {
        int m_r = base + (t < extra);
        const float *ai = a + i * lda;
        for (int j = 0; j < n; j += 2) {
            int n_r = n - j < 2 ? n - j : 2;
            const float *bj = b + j * ldb;
            float *cij = c + i * ldc + j;
            if (m_r == 6)
                dot_tile(6, k, ai, lda, bj, ldb, alpha, beta, cij, ldc, m_r, n_r);
            else if (m_r == 5)
                dot_tile(5, k, ai, lda, bj, ldb, alpha, beta, cij, ldc, m_r, n_r);
            else
                dot_tile(4, k, ai, lda, bj, ldb, alpha, beta, cij, ldc, m_r, n_r);
        }
        i += m_r;
    }
}

/* Longer k than this is cut into chunks, the later ones adding into C: a
 * tile's rows of A (dot products) or its sliver of B (unpacked tiles) then
 * stay in L1/L2 however long k is. */
enum { SKINNY_KC = 2048 };

int tm__gemm_skinny_avx2(int transa, int transb, int m, int n, int k,
                         float alpha, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, float beta, float *c,
                         ptrdiff_t ldc)
{
    int dot = !transa && transb && n <= DOT_MAX_N;
    int unpacked = !transb && (m <= UNPACKED_MAX_M || k <= UNPACKED_MAX_K);
    if (!dot && !unpacked) return -1;
    int chunks = (k + SKINNY_KC - 1) / SKINNY_KC, kc = (k + chunks - 1) / chunks;
    for (int p = 0; p < k; p += kc) {
        int kcur = k - p < kc ? k - p : kc;
        float beta_p = p == 0 ? beta : 1.0f;
        /* op(A)(0, p) and op(B)(p, 0). */
        const float *ap = a + p * (transa ? lda : 1), *bp = b + p * (transb ? 1 : ldb);
        if (dot)
            dot_nt(m, n, kcur, alpha, ap, lda, bp, ldb, beta_p, c, ldc);
        else
            tm__gemm_unpacked_avx2(transa, m, n, kcur, alpha, ap, lda, bp, ldb, beta_p, c, ldc);
    }
    return 0;
}
