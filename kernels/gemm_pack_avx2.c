/* AVX2 packing for the 6x16 kernel and the AVX-512 12x32 one (whose packing
 * is memory-bound, so 256-bit moves serve it as well): copies for the layouts
 * that are already contiguous along the sliver, 8x8 register transposes for
 * the others. */
#include "kernels/gemm_internal.h"

#include <immintrin.h>

/* Transposes the 8x8 block r0..r7 (rows) in place into columns. */
#define TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7)                             \
    do {                                                                       \
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1); \
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3); \
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5); \
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7); \
        __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE); \
        __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE); \
        __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE); \
        __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE); \
        r0 = _mm256_permute2f128_ps(s0, s4, 0x20);                             \
        r1 = _mm256_permute2f128_ps(s1, s5, 0x20);                             \
        r2 = _mm256_permute2f128_ps(s2, s6, 0x20);                             \
        r3 = _mm256_permute2f128_ps(s3, s7, 0x20);                             \
        r4 = _mm256_permute2f128_ps(s0, s4, 0x31);                             \
        r5 = _mm256_permute2f128_ps(s1, s5, 0x31);                             \
        r6 = _mm256_permute2f128_ps(s2, s6, 0x31);                             \
        r7 = _mm256_permute2f128_ps(s3, s7, 0x31);                             \
    } while (0)

/* One sliver of MR rows (6 or 12) of a plainly stored A: 8 steps of k are
 * one 8x8 transpose per group of up to 8 rows (padded with rows of zeros).
 * With 6 rows the 8-float results are stored 6 floats apart, each store's
 * last two lanes overwritten by the next; the final one runs 2 floats past
 * the sliver, into the next sliver or the driver's slack. With 12 rows the
 * second group's results are stored as their 4 real lanes. */
static inline __attribute__((always_inline)) void pack_a_rows(const int mr, int k,
                                                              const float *a,
                                                              ptrdiff_t lda, float *dst)
{
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        for (int g = 0; g < mr; g += 8) {
            const float *src = a + g * lda + p;
            __m256 z = _mm256_setzero_ps();
            __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lda);
            __m256 r2 = _mm256_loadu_ps(src + 2 * lda), r3 = _mm256_loadu_ps(src + 3 * lda);
            __m256 r4 = g + 4 < mr ? _mm256_loadu_ps(src + 4 * lda) : z;
            __m256 r5 = g + 5 < mr ? _mm256_loadu_ps(src + 5 * lda) : z;
            __m256 r6 = g + 6 < mr ? _mm256_loadu_ps(src + 6 * lda) : z;
            __m256 r7 = g + 7 < mr ? _mm256_loadu_ps(src + 7 * lda) : z;
            TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
            float *d = dst + p * mr + g;
            if (mr - g >= 6) {
                _mm256_storeu_ps(d, r0);
                _mm256_storeu_ps(d + mr, r1);
                _mm256_storeu_ps(d + 2 * mr, r2);
                _mm256_storeu_ps(d + 3 * mr, r3);
                _mm256_storeu_ps(d + 4 * mr, r4);
                _mm256_storeu_ps(d + 5 * mr, r5);
                _mm256_storeu_ps(d + 6 * mr, r6);
                _mm256_storeu_ps(d + 7 * mr, r7);
            } else {
                _mm_storeu_ps(d, _mm256_castps256_ps128(r0));
                _mm_storeu_ps(d + mr, _mm256_castps256_ps128(r1));
                _mm_storeu_ps(d + 2 * mr, _mm256_castps256_ps128(r2));
                _mm_storeu_ps(d + 3 * mr, _mm256_castps256_ps128(r3));
                _mm_storeu_ps(d + 4 * mr, _mm256_castps256_ps128(r4));
                _mm_storeu_ps(d + 5 * mr, _mm256_castps256_ps128(r5));
                _mm_storeu_ps(d + 6 * mr, _mm256_castps256_ps128(r6));
                _mm_storeu_ps(d + 7 * mr, _mm256_castps256_ps128(r7));
            }
        }
    }
    for (; p < k; p++)
        for (int i = 0; i < mr; i++) dst[p * mr + i] = a[i * lda + p];
}

/* Rows of a stored-transposed A are contiguous along m: eight rows at a time
 * are walked once, left to right, and cut into the slivers, so the reads
 * stream instead of striding down columns (a 4 KiB stride maps every row to
 * the same L1 set). */
enum { PACK_STEPS = 8 };

static inline __attribute__((always_inline)) void pack_a(const int mr, int trans, int m_cur,
                                                         int k, const float *a,
                                                         ptrdiff_t lda, float *dst)
{
    int full = m_cur / mr, edge = m_cur % mr;
    if (!trans) {
        for (int s = 0; s < full; s++)
            pack_a_rows(mr, k, a + s * mr * lda, lda, dst + (size_t)s * mr * k);
    } else {
        for (int p0 = 0; p0 < k; p0 += PACK_STEPS) {
            int p1 = p0 + PACK_STEPS < k ? p0 + PACK_STEPS : k;
            for (int s = 0; s < full; s++) {
                float *d = dst + (size_t)s * mr * k;
                for (int p = p0; p < p1; p++) {
                    const float *src = a + p * lda + s * mr;
                    _mm_storeu_ps(d + p * mr, _mm_loadu_ps(src));
                    if (mr == 12) _mm256_storeu_ps(d + p * mr + 4, _mm256_loadu_ps(src + 4));
                    else _mm_storeu_si64(d + p * mr + 4, _mm_loadu_si64(src + 4));
                }
            }
        }
    }
    if (edge > 0)
        tm__gemm_pack_a_generic(mr, trans, edge, k, a + full * mr * (trans ? 1 : lda),
                                lda, dst + (size_t)full * mr * k);
}

void tm__pack_a_avx2_6(int trans, int m_cur, int k, const float *a, ptrdiff_t lda,
                       float *dst)
{
    pack_a(6, trans, m_cur, k, a, lda, dst);
}

void tm__pack_a_avx2_12(int trans, int m_cur, int k, const float *a, ptrdiff_t lda,
                        float *dst)
{
    pack_a(12, trans, m_cur, k, a, lda, dst);
}

/* One sliver of NR columns (16 or 32) of a stored-transposed B: 8 steps of 8
 * columns are one 8x8 transpose. */
static inline __attribute__((always_inline)) void pack_b_cols(const int nr, int k,
                                                              const float *b,
                                                              ptrdiff_t ldb, float *dst)
{
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        for (int h = 0; h < nr / 8; h++) {
            const float *src = b + h * 8 * ldb + p;
            __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ldb);
            __m256 r2 = _mm256_loadu_ps(src + 2 * ldb), r3 = _mm256_loadu_ps(src + 3 * ldb);
            __m256 r4 = _mm256_loadu_ps(src + 4 * ldb), r5 = _mm256_loadu_ps(src + 5 * ldb);
            __m256 r6 = _mm256_loadu_ps(src + 6 * ldb), r7 = _mm256_loadu_ps(src + 7 * ldb);
            TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
            float *d = dst + p * nr + h * 8;
            _mm256_store_ps(d, r0);
            _mm256_store_ps(d + nr, r1);
            _mm256_store_ps(d + 2 * nr, r2);
            _mm256_store_ps(d + 3 * nr, r3);
            _mm256_store_ps(d + 4 * nr, r4);
            _mm256_store_ps(d + 5 * nr, r5);
            _mm256_store_ps(d + 6 * nr, r6);
            _mm256_store_ps(d + 7 * nr, r7);
        }
    }
    for (; p < k; p++)
        for (int j = 0; j < nr; j++) dst[p * nr + j] = b[j * ldb + p];
}

/* dst is 32-byte aligned and slivers are NR * k floats apart, so every
 * store to it is aligned. A plainly stored B is walked eight rows at a time,
 * left to right, as the stored-transposed A is. */
static inline __attribute__((always_inline)) void pack_b(const int nr, int trans, int n_cur,
                                                         int k, const float *b,
                                                         ptrdiff_t ldb, float *dst)
{
    int full = n_cur / nr, edge = n_cur % nr;
    if (trans) {
        for (int s = 0; s < full; s++)
            pack_b_cols(nr, k, b + s * nr * ldb, ldb, dst + (size_t)s * nr * k);
    } else {
        for (int p0 = 0; p0 < k; p0 += PACK_STEPS) {
            int p1 = p0 + PACK_STEPS < k ? p0 + PACK_STEPS : k;
            for (int s = 0; s < full; s++) {
                float *d = dst + (size_t)s * nr * k;
                for (int p = p0; p < p1; p++) {
                    const float *src = b + p * ldb + s * nr;
                    for (int h = 0; h < nr; h += 8)
                        _mm256_store_ps(d + p * nr + h, _mm256_loadu_ps(src + h));
                }
            }
        }
    }
    if (edge > 0)
        tm__gemm_pack_b_generic(nr, trans, edge, k, b + full * nr * (trans ? ldb : 1),
                                ldb, dst + (size_t)full * nr * k);
}

void tm__pack_b_avx2_16(int trans, int n_cur, int k, const float *b, ptrdiff_t ldb,
                        float *dst)
{
    pack_b(16, trans, n_cur, k, b, ldb, dst);
}

void tm__pack_b_avx2_32(int trans, int n_cur, int k, const float *b, ptrdiff_t ldb,
                        float *dst)
{
    pack_b(32, trans, n_cur, k, b, ldb, dst);
}
