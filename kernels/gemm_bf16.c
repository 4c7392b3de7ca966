/* The bf16 GEMM's kernel sets, its converting packers and its five loops.
 * Operands may be fp32 or bf16 each; fp32 ones are rounded to bf16 (nearest
 * even) while they are packed, so a bf16 copy of a weight is optional. */
#include "kernels/bf16.h"
#include "kernels/gemm_internal.h"
#include "kernels/isa.h"

/* The AVX512_BF16 row: a 12 x 32 tile as for fp32, kc counted in bf16
 * steps (half the bytes of fp32's, so twice the steps for the same L1
 * share), not yet tuned by measurement. */
const tm__gemm_kernels tm__gemm_kernels_avx512bf16 = {
    .isa = "avx512_bf16", .mr = 12, .nr = 32, .mc = 240, .kc = 512, .nc = 2048,
    .ukr = tm__ukr_avx512bf16_12x32, .pack_a = NULL, .pack_b = NULL,
    .skinny = NULL, .unpacked = NULL,
};

const tm__gemm_bf16_kernels tm__gemm_bf16_kernels_avx512bf16 = {
    "avx512_bf16", &tm__gemm_kernels_avx512bf16, tm__gemm_pack_bf16_pairs, 2};
static const tm__gemm_bf16_kernels fallback_avx512 = {
    "avx512", &tm__gemm_kernels_avx512, tm__gemm_pack_bf16_rounded, 1};
static const tm__gemm_bf16_kernels fallback_avx2 = {
    "avx2", &tm__gemm_kernels_avx2, tm__gemm_pack_bf16_rounded, 1};
static const tm__gemm_bf16_kernels fallback_generic = {
    "generic", &tm__gemm_kernels_generic, tm__gemm_pack_bf16_rounded, 1};

const tm__gemm_bf16_kernels *tm__gemm_bf16_kernels_for(int isa)
{
    switch (isa) {
    case TM_ISA_AVX512_BF16: return &tm__gemm_bf16_kernels_avx512bf16;
    case TM_ISA_AVX512: return &fallback_avx512;
    case TM_ISA_AVX2: return &fallback_avx2;
    default: return &fallback_generic;
    }
}

/* Element `at` of an fp32 or bf16 array, as bf16. The flag is a constant
 * where the packers inline it, so their loops have no branch on it. */
static inline tm_bf16 load_bf16(const void *src, int src_bf16, ptrdiff_t at)
{
    return src_bf16 ? ((const tm_bf16 *)src)[at] : tm_bf16_from_float(((const float *)src)[at]);
}

static inline __attribute__((always_inline)) void pack_rounded(int tile, const int src_bf16,
                                                               int rows, int k,
                                                               const void *src, ptrdiff_t rs,
                                                               ptrdiff_t cs, float *dst)
{
    for (int r0 = 0; r0 < rows; r0 += tile) {
        float *d = dst + (size_t)r0 * k;
        int r = rows - r0 < tile ? rows - r0 : tile;
        for (int p = 0; p < k; p++) {
            for (int i = 0; i < r; i++)
                d[p * tile + i] = tm_bf16_to_float(load_bf16(src, src_bf16, (r0 + i) * rs + p * cs));
            for (int i = r; i < tile; i++) d[p * tile + i] = 0.0f;
        }
    }
}

void tm__gemm_pack_bf16_rounded(int tile, int src_bf16, int rows, int k, const void *src,
                                ptrdiff_t rs, ptrdiff_t cs, float *dst)
{
    if (src_bf16)
        pack_rounded(tile, 1, rows, k, src, rs, cs, dst);
    else
        pack_rounded(tile, 0, rows, k, src, rs, cs, dst);
}

/* Word (q, i) of a sliver holds elements (i, 2q) in its low half and
 * (i, 2q + 1) in its high half, as vdpbf16ps pairs them. */
static inline __attribute__((always_inline)) void pack_pairs(int tile, const int src_bf16,
                                                             int rows, int k, const void *src,
                                                             ptrdiff_t rs, ptrdiff_t cs,
                                                             float *dst)
{
    int pairs = k / 2;
    for (int r0 = 0; r0 < rows; r0 += tile) {
        uint32_t *d = (uint32_t *)(dst + (size_t)r0 * k);
        int r = rows - r0 < tile ? rows - r0 : tile;
        for (int q = 0; q < pairs; q++) {
            for (int i = 0; i < r; i++) {
                ptrdiff_t at = (r0 + i) * rs + 2 * q * cs;
                d[q * tile + i] = load_bf16(src, src_bf16, at) |
                                  (uint32_t)load_bf16(src, src_bf16, at + cs) << 16;
            }
            for (int i = r; i < tile; i++) d[q * tile + i] = 0;
        }
        if (k % 2) {
            for (int i = 0; i < r; i++)
                d[pairs * tile + i] = load_bf16(src, src_bf16, (r0 + i) * rs + (k - 1) * cs);
            for (int i = r; i < tile; i++) d[pairs * tile + i] = 0;
        }
    }
}

void tm__gemm_pack_bf16_pairs(int tile, int src_bf16, int rows, int k, const void *src,
                              ptrdiff_t rs, ptrdiff_t cs, float *dst)
{
    if (src_bf16)
        pack_pairs(tile, 1, rows, k, src, rs, cs, dst);
    else
        pack_pairs(tile, 0, rows, k, src, rs, cs, dst);
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
                sum += tm_bf16_to_float(load_bf16(a, a_bf16, i * a_rs + p * a_cs)) *
                       tm_bf16_to_float(load_bf16(b, b_bf16, p * b_rs + j * b_cs));
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
            /* B's slivers run along its columns: column j is the packer's
             * row, k its step. */
            kb->pack(nr, b_bf16, ncur, kcur, b0 + (pc * b_rs + jc * b_cs) * b_size, b_cs,
                     b_rs, bp);
            for (int ic = 0; ic < m; ic += mc) {
                int mcur = m - ic < mc ? m - ic : mc;
                kb->pack(mr, a_bf16, mcur, kcur, a0 + (ic * a_rs + pc * a_cs) * a_size, a_rs,
                         a_cs, ap);
                for (int jr = 0; jr < ncur; jr += nr)
                    for (int ir = 0; ir < mcur; ir += mr)
                        ks->ukr(kcur, ap + (size_t)ir * kcur, bp + (size_t)jr * kcur, alpha,
                                beta_p, c + (ic + ir) * ldc + jc + jr, ldc,
                                mr < mcur - ir ? mr : mcur - ir, nr < ncur - jr ? nr : ncur - jr);
            }
        }
    }
}
