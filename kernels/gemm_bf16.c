/* The bf16 GEMM's kernel sets, its packers and its five loops. Operands may
 * be fp32 or bf16 each; fp32 ones are packed by the fp32 packers and
 * rounded to bf16 (nearest even) in the packed slivers, so a bf16 copy of a
 * weight is optional and costs no slower packing. */
#include <string.h>

#include "kernels/bf16.h"
#include "kernels/gemm_internal.h"
#include "kernels/isa.h"

/* The AVX512_BF16 row: a 12 x 32 tile as for fp32 (and its fp32 packers),
 * kc counted in bf16 steps (half the bytes of fp32's, so twice the steps
 * for the same L1 share), not yet tuned by measurement. */
const tm__gemm_kernels tm__gemm_kernels_avx512bf16 = {
    .isa = "avx512_bf16", .mr = 12, .nr = 32, .mc = 240, .kc = 512, .nc = 2048,
    .ukr = tm__ukr_avx512bf16_12x32, .pack_a = tm__pack_a_avx2_12,
    .pack_b = tm__pack_b_avx2_32, .skinny = NULL, .unpacked = NULL,
};

const tm__gemm_bf16_kernels tm__gemm_bf16_kernels_avx512bf16 = {
    "avx512_bf16", &tm__gemm_kernels_avx512bf16, tm__gemm_finish_pairs,
    tm__gemm_pack_bf16_pairs, 2};
static const tm__gemm_bf16_kernels fallback_avx512 = {
    "avx512", &tm__gemm_kernels_avx512, tm__gemm_finish_rounded, tm__gemm_pack_bf16_widened, 1};
static const tm__gemm_bf16_kernels fallback_avx2 = {
    "avx2", &tm__gemm_kernels_avx2, tm__gemm_finish_rounded, tm__gemm_pack_bf16_widened, 1};
static const tm__gemm_bf16_kernels fallback_generic = {
    "generic", &tm__gemm_kernels_generic, tm__gemm_finish_rounded, tm__gemm_pack_bf16_widened, 1};

const tm__gemm_bf16_kernels *tm__gemm_bf16_kernels_for(int isa)
{
    switch (isa) {
    case TM_ISA_AVX512_BF16: return &tm__gemm_bf16_kernels_avx512bf16;
    case TM_ISA_AVX512: return &fallback_avx512;
    case TM_ISA_AVX2: return &fallback_avx2;
    default: return &fallback_generic;
    }
}

/* The bits of float u rounded to bf16 (nearest even) in the upper half, a
 * NaN quieted, as tm_bf16_from_float rounds; branch-free, so that the
 * loops below vectorise. */
static inline uint32_t round_hi(uint32_t u)
{
    uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    return (u & 0x7fffffffu) > 0x7f800000u ? u | 0x00400000u : r;
}

/* The finishers' rows are at most this long (the widest tile). */
enum { MAX_TILE = 64 };

/* Every packed float rounded to bf16, in place: the loop runs over words
 * copied out and back (memcpy keeps the float objects' bits without
 * aliasing them), 16 at a time so that gcc -O2 vectorises it. */
void tm__gemm_finish_rounded(int tile, int k, int slivers, float *dst)
{
    size_t n = (size_t)tile * k * slivers;
    uint32_t w[16];
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        memcpy(w, dst + i, sizeof w);
        for (int j = 0; j < 16; j++) w[j] = round_hi(w[j]) & 0xffff0000u;
        memcpy(dst + i, w, sizeof w);
    }
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, dst + i, sizeof u);
        u = round_hi(u) & 0xffff0000u;
        memcpy(dst + i, &u, sizeof u);
    }
}

/* Word (q, i) of a sliver holds steps 2q (low half) and 2q + 1 (high half)
 * of row i, as vdpbf16ps pairs them, an odd k's last step paired with 0.
 * Row q of the result is made from rows 2q and 2q + 1 in place, four words
 * at a time, each chunk read before it is written: row q's chunk i lies in
 * rows already read (q < 2q) or, for q = 0, is the chunk just read. Fixed
 * four-word copies keep the loop free of calls and let it vectorise. */
void tm__gemm_finish_pairs(int tile, int k, int slivers, float *dst)
{
    for (int s = 0; s < slivers; s++) {
        float *d = dst + (size_t)s * tile * k;
        for (int q = 0; 2 * q < k; q++) {
            const float *even = d + 2 * q * tile, *odd = even + tile;
            int has_odd = 2 * q + 1 < k;
            int i = 0;
            for (; i + 4 <= tile; i += 4) {
                uint32_t e[4], o[4] = {0, 0, 0, 0};
                memcpy(e, even + i, sizeof e);
                if (has_odd) memcpy(o, odd + i, sizeof o);
                for (int j = 0; j < 4; j++)
                    e[j] = round_hi(e[j]) >> 16 | (round_hi(o[j]) & 0xffff0000u);
                memcpy(d + q * tile + i, e, sizeof e);
            }
            for (; i < tile; i++) {
                uint32_t e, o = 0;
                memcpy(&e, even + i, sizeof e);
                if (has_odd) memcpy(&o, odd + i, sizeof o);
                e = round_hi(e) >> 16 | (round_hi(o) & 0xffff0000u);
                memcpy(d + q * tile + i, &e, sizeof e);
            }
        }
    }
}

void tm__gemm_pack_bf16_widened(int tile, int rows, int k, const tm_bf16 *src, ptrdiff_t rs,
                                ptrdiff_t cs, float *dst)
{
    for (int r0 = 0; r0 < rows; r0 += tile) {
        float *d = dst + (size_t)r0 * k;
        int r = rows - r0 < tile ? rows - r0 : tile;
        for (int p = 0; p < k; p++) {
            for (int i = 0; i < r; i++) d[p * tile + i] = tm_bf16_to_float(src[(r0 + i) * rs + p * cs]);
            for (int i = r; i < tile; i++) d[p * tile + i] = 0.0f;
        }
    }
}

void tm__gemm_pack_bf16_pairs(int tile, int rows, int k, const tm_bf16 *src, ptrdiff_t rs,
                              ptrdiff_t cs, float *dst)
{
    for (int r0 = 0; r0 < rows; r0 += tile) {
        uint32_t *d = (uint32_t *)(dst + (size_t)r0 * k);
        int r = rows - r0 < tile ? rows - r0 : tile;
        for (int q = 0; 2 * q < k; q++) {
            for (int i = 0; i < r; i++) {
                const tm_bf16 *x = src + (r0 + i) * rs + 2 * q * cs;
                d[q * tile + i] = x[0] | (2 * q + 1 < k ? (uint32_t)x[cs] << 16 : 0u);
            }
            for (int i = r; i < tile; i++) d[q * tile + i] = 0;
        }
    }
}

/* Element `at` of an fp32 or bf16 array, as a float rounded to bf16. */
static inline float load_rounded(const void *src, int src_bf16, ptrdiff_t at)
{
    return tm_bf16_to_float(src_bf16 ? ((const tm_bf16 *)src)[at]
                                     : tm_bf16_from_float(((const float *)src)[at]));
}

/* Without memory for the workspace: the same products of bf16 values, one
 * element at a time, accumulated in fp32 as the kernels do. */
static void bf16_plain(int transa, int transb, int m, int n, int k, float alpha,
                       const void *a, int a_bf16, ptrdiff_t lda, const void *b, int b_bf16,
                       ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc)
{
    ptrdiff_t a_rs = transa ? 1 : lda, a_cs = transa ? lda : 1;
    ptrdiff_t b_rs = transb ? 1 : ldb, b_cs = transb ? ldb : 1;
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float sum = 0.0f;
            for (int p = 0; p < k; p++)
                sum += load_rounded(a, a_bf16, i * a_rs + p * a_cs) *
                       load_rounded(b, b_bf16, p * b_rs + j * b_cs);
            float *cij = &c[i * ldc + j];
            *cij = beta == 0.0f ? alpha * sum : alpha * sum + beta * *cij;
        }
    }
}

void tm__gemm_bf16_blocked(const tm__gemm_bf16_kernels *kb, int transa, int transb, int m,
                           int n, int k, float alpha, const void *a, int a_bf16,
                           ptrdiff_t lda, const void *b, int b_bf16, ptrdiff_t ldb,
                           float beta, float *c, ptrdiff_t ldc)
{
    const tm__gemm_kernels *ks = kb->base;
    const int mr = ks->mr, nr = ks->nr;
    const int kc = tm__gemm_block_size(k, ks->kc, kb->k_unit);
    const int mc = tm__gemm_block_size(m, ks->mc, mr);
    const int nc = tm__gemm_block_size(n, ks->nc, nr);
    size_t b_floats, floats = tm__gemm_workspace_floats(mc, nc, kc, &b_floats);
    float *ws = tm__gemm_workspace(floats);
    if (ws == NULL) {
        bf16_plain(transa, transb, m, n, k, alpha, a, a_bf16, lda, b, b_bf16, ldb, beta, c, ldc);
        return;
    }
    float *bp = ws, *ap = ws + b_floats;
    const char *a0 = a, *b0 = b;
    size_t a_size = a_bf16 ? sizeof(tm_bf16) : sizeof(float);
    size_t b_size = b_bf16 ? sizeof(tm_bf16) : sizeof(float);
    /* Element (row, col) of op(A) and op(B), however they are stored. */
    ptrdiff_t a_rs = transa ? 1 : lda, a_cs = transa ? lda : 1;
    ptrdiff_t b_rs = transb ? 1 : ldb, b_cs = transb ? ldb : 1;

    for (int jc = 0; jc < n; jc += nc) {
        int ncur = n - jc < nc ? n - jc : nc;
        for (int pc = 0; pc < k; pc += kc) {
            int kcur = k - pc < kc ? k - pc : kc;
            float beta_p = pc == 0 ? beta : 1.0f;
            const char *bsrc = b0 + (pc * b_rs + jc * b_cs) * b_size;
            if (b_bf16) {
                /* B's slivers run along its columns: column j is the
                 * packer's row, k its step. */
                kb->pack(nr, ncur, kcur, (const tm_bf16 *)bsrc, b_cs, b_rs, bp);
            } else {
                ks->pack_b(transb, ncur, kcur, (const float *)bsrc, ldb, bp);
                kb->finish(nr, kcur, (ncur + nr - 1) / nr, bp);
            }
            for (int ic = 0; ic < m; ic += mc) {
                int mcur = m - ic < mc ? m - ic : mc;
                const char *asrc = a0 + (ic * a_rs + pc * a_cs) * a_size;
                if (a_bf16) {
                    kb->pack(mr, mcur, kcur, (const tm_bf16 *)asrc, a_rs, a_cs, ap);
                } else {
                    ks->pack_a(transa, mcur, kcur, (const float *)asrc, lda, ap);
                    kb->finish(mr, kcur, (mcur + mr - 1) / mr, ap);
                }
                for (int jr = 0; jr < ncur; jr += nr)
                    for (int ir = 0; ir < mcur; ir += mr)
                        ks->ukr(kcur, ap + (size_t)ir * kcur, bp + (size_t)jr * kcur, alpha,
                                beta_p, c + (ic + ir) * ldc + jc + jr, ldc,
                                mr < mcur - ir ? mr : mcur - ir, nr < ncur - jr ? nr : ncur - jr);
            }
        }
    }
}
