/* AVX2 packing for the 6x16 kernel: copies for the layouts that are already
 * contiguous along the sliver, 8x8 register transposes for the others. */
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

/* One sliver of 6 rows of a plainly stored A: 8 steps of k are one 8x8
 * transpose of the 6 rows (plus two rows of zeros), whose 8-float results are
 * stored 6 floats apart, each store's last two lanes overwritten by the next;
 * the final one runs 2 floats past the sliver, into the next sliver or the
 * driver's slack. */
static void pack_a_rows(int k, const float *a, ptrdiff_t lda, float *dst)
{
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        __m256 r0 = _mm256_loadu_ps(a + p), r1 = _mm256_loadu_ps(a + lda + p);
        __m256 r2 = _mm256_loadu_ps(a + 2 * lda + p), r3 = _mm256_loadu_ps(a + 3 * lda + p);
        __m256 r4 = _mm256_loadu_ps(a + 4 * lda + p), r5 = _mm256_loadu_ps(a + 5 * lda + p);
        __m256 r6 = _mm256_setzero_ps(), r7 = r6;
        TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
        float *d = dst + p * 6;
        _mm256_storeu_ps(d, r0);
        _mm256_storeu_ps(d + 6, r1);
        _mm256_storeu_ps(d + 12, r2);
        _mm256_storeu_ps(d + 18, r3);
        _mm256_storeu_ps(d + 24, r4);
        _mm256_storeu_ps(d + 30, r5);
        _mm256_storeu_ps(d + 36, r6);
        _mm256_storeu_ps(d + 42, r7);
    }
    for (; p < k; p++)
        for (int i = 0; i < 6; i++) dst[p * 6 + i] = a[i * lda + p];
}

/* Rows of a stored-transposed A are contiguous along m: eight rows at a time
 * are walked once, left to right, and cut into the slivers, so the reads
 * stream instead of striding down columns (a 4 KiB stride maps every row to
 * the same L1 set). */
enum { PACK_STEPS = 8 };

void tm__pack_a_avx2_6(int trans, int m_cur, int k, const float *a, ptrdiff_t lda,
                       float *dst)
{
    int full = m_cur / 6, edge = m_cur % 6;
    if (!trans) {
        for (int s = 0; s < full; s++)
            pack_a_rows(k, a + s * 6 * lda, lda, dst + (size_t)s * 6 * k);
    } else {
        for (int p0 = 0; p0 < k; p0 += PACK_STEPS) {
            int p1 = p0 + PACK_STEPS < k ? p0 + PACK_STEPS : k;
            for (int s = 0; s < full; s++) {
                float *d = dst + (size_t)s * 6 * k;
                for (int p = p0; p < p1; p++) {
                    const float *src = a + p * lda + s * 6;
                    _mm_storeu_ps(d + p * 6, _mm_loadu_ps(src));
                    _mm_storeu_si64(d + p * 6 + 4, _mm_loadu_si64(src + 4));
                }
            }
        }
    }
    if (edge > 0)
        tm__gemm_pack_a_generic(6, trans, edge, k, a + full * 6 * (trans ? 1 : lda),
                                lda, dst + (size_t)full * 6 * k);
}

/* One sliver of 16 columns of a stored-transposed B: 8 steps of 8 columns
 * are one 8x8 transpose. */
static void pack_b_cols(int k, const float *b, ptrdiff_t ldb, float *dst)
{
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        for (int h = 0; h < 2; h++) {
            const float *src = b + h * 8 * ldb + p;
            __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ldb);
            __m256 r2 = _mm256_loadu_ps(src + 2 * ldb), r3 = _mm256_loadu_ps(src + 3 * ldb);
            __m256 r4 = _mm256_loadu_ps(src + 4 * ldb), r5 = _mm256_loadu_ps(src + 5 * ldb);
            __m256 r6 = _mm256_loadu_ps(src + 6 * ldb), r7 = _mm256_loadu_ps(src + 7 * ldb);
            TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
            float *d = dst + p * 16 + h * 8;
            _mm256_store_ps(d, r0);
            _mm256_store_ps(d + 16, r1);
            _mm256_store_ps(d + 32, r2);
            _mm256_store_ps(d + 48, r3);
            _mm256_store_ps(d + 64, r4);
            _mm256_store_ps(d + 80, r5);
            _mm256_store_ps(d + 96, r6);
            _mm256_store_ps(d + 112, r7);
        }
    }
    for (; p < k; p++)
        for (int j = 0; j < 16; j++) dst[p * 16 + j] = b[j * ldb + p];
}

/* dst is 32-byte aligned and slivers are 16 * k floats apart, so every
 * store to it is aligned. A plainly stored B is walked eight rows at a time,
 * left to right, as the stored-transposed A is. */
void tm__pack_b_avx2_16(int trans, int n_cur, int k, const float *b,
                        ptrdiff_t ldb, float *dst)
{
    int full = n_cur / 16, edge = n_cur % 16;
    if (trans) {
        for (int s = 0; s < full; s++)
            pack_b_cols(k, b + s * 16 * ldb, ldb, dst + (size_t)s * 16 * k);
    } else {
        for (int p0 = 0; p0 < k; p0 += PACK_STEPS) {
            int p1 = p0 + PACK_STEPS < k ? p0 + PACK_STEPS : k;
            for (int s = 0; s < full; s++) {
                float *d = dst + (size_t)s * 16 * k;
                for (int p = p0; p < p1; p++) {
                    const float *src = b + p * ldb + s * 16;
                    _mm256_store_ps(d + p * 16, _mm256_loadu_ps(src));
                    _mm256_store_ps(d + p * 16 + 8, _mm256_loadu_ps(src + 8));
                }
            }
        }
    }
    if (edge > 0)
        tm__gemm_pack_b_generic(16, trans, edge, k, b + full * 16 * (trans ? ldb : 1),
                                ldb, dst + (size_t)full * 16 * k);
}
