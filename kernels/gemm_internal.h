/* Internal seams of the GEMM: the front (gemm.c) calls the reference and the
 * blocked drivers; the blocked driver calls one ISA's kernel set. Thread-safe:
 * no shared mutable state; packing buffers are per thread. */
#ifndef TM_GEMM_INTERNAL_H
#define TM_GEMM_INTERNAL_H

#include <stddef.h>

#include "kernels/bf16.h"

/* Dimension letters: m = rows of C, n = columns of C, k = the reduced
 * dimension. "op(A)" is A or its transpose as transa says, always (m, k).
 * A packed A sliver holds MR rows of op(A) as (k, MR): element (i, p) at
 * p * MR + i. A packed B sliver holds NR columns of op(B) as (k, NR). Rows
 * and columns past the matrix edge are packed as zeros. */

/* C(m_r, n_r) = alpha * A·B + beta * C for one tile (m_r <= MR, n_r <= NR).
 * beta == 0 never reads C. */
typedef void (*tm__gemm_ukr)(int k, const float *a /* packed (k, MR) */,
                             const float *b /* packed (k, NR) */, float alpha,
                             float beta, float *c /* (m_r, ldc) */, ptrdiff_t ldc,
                             int m_r, int n_r);

/* Packs rows [0, m_cur) of op(A) as consecutive slivers (MR * k floats
 * apart, the last one zero-padded); a points at op(A)(0, 0) of the block,
 * trans says whether A is stored transposed. */
typedef void (*tm__gemm_pack_a)(int trans, int m_cur, int k, const float *a,
                                ptrdiff_t lda, float *dst /* (m_cur/MR, k, MR) */);
/* Packs columns [0, n_cur) of op(B) as consecutive slivers (NR * k floats
 * apart). */
typedef void (*tm__gemm_pack_b)(int trans, int n_cur, int k, const float *b,
                                ptrdiff_t ldb, float *dst /* (n_cur/NR, k, NR) */);

/* A whole product for shapes the packed loops handle badly (one dimension
 * tiny). Returns 0 when it did the product, -1 when the shape is not its
 * kind, so the driver falls back to the packed loops. */
typedef int (*tm__gemm_skinny)(int transa, int transb, int m, int n, int k,
                               float alpha, const float *a, ptrdiff_t lda,
                               const float *b, ptrdiff_t ldb, float beta,
                               float *c, ptrdiff_t ldc);

/* One ISA's kernels and block sizes; the sets form the block-size table in
 * gemm_blocked.c (the bf16 kernel's row is in gemm_bf16.c). */
typedef struct {
    const char *isa;         /* "generic", "avx2", "avx512", "avx512_bf16" */
    int mr, nr;              /* micro-tile */
    int mc, kc, nc;          /* cache blocks: mc % mr == 0, nc % nr == 0 */
    tm__gemm_ukr ukr;
    tm__gemm_pack_a pack_a;
    tm__gemm_pack_b pack_b;
    tm__gemm_skinny skinny;  /* NULL: none */
    /* Tiles straight from an unpacked op(A) over a row-major B (see
     * tm__gemm_unpacked_avx2); NULL: none. */
    void (*unpacked)(int transa, int m, int n, int k, float alpha, const float *a,
                     ptrdiff_t lda, const float *b, ptrdiff_t ldb, float beta,
                     float *c, ptrdiff_t ldc);
} tm__gemm_kernels;

extern const tm__gemm_kernels tm__gemm_kernels_generic;
extern const tm__gemm_kernels tm__gemm_kernels_avx2;
extern const tm__gemm_kernels tm__gemm_kernels_avx512;

/* The fp32 kernel set of an instruction set (avx512_bf16 runs fp32 on the
 * avx512 set), and the one of the active set (tm_isa_active). */
const tm__gemm_kernels *tm__gemm_kernels_for(int isa /* tm_isa */);
const tm__gemm_kernels *tm__gemm_kernels_active(void);

/* The kernels behind the sets, one file per ISA and tile shape. */
void tm__ukr_generic_4x8(int k, const float *a, const float *b, float alpha,
                         float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
void tm__ukr_avx2_6x16(int k, const float *a, const float *b, float alpha,
                       float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
void tm__ukr_avx512_12x32(int k, const float *a, const float *b, float alpha,
                          float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
/* k counts steps of bf16; a and b are slivers of bf16 pairs (gemm_bf16.c). */
void tm__ukr_avx512bf16_12x32(int k, const float *a, const float *b, float alpha,
                              float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
/* The same two kernels built for AVX2 from the same source (simd16.h), with
 * which the test suites check the AVX-512 kernels' logic on any CPU. They
 * are in the test binaries only, never in the library. */
void tm__ukr_avx512_12x32_twin(int k, const float *a, const float *b, float alpha,
                               float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
void tm__ukr_avx512bf16_12x32_twin(int k, const float *a, const float *b, float alpha,
                                   float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
/* The whole product by 6x16 tiles read straight from unpacked operands,
 * for a row-major B (transb 'N'): no packing at all. */
void tm__gemm_unpacked_avx2(int transa, int m, int n, int k, float alpha,
                            const float *a, ptrdiff_t lda, const float *b,
                            ptrdiff_t ldb, float beta, float *c, ptrdiff_t ldc);
void tm__pack_a_avx2_6(int trans, int m_cur, int k, const float *a,
                       ptrdiff_t lda, float *dst);
void tm__pack_b_avx2_16(int trans, int n_cur, int k, const float *b,
                        ptrdiff_t ldb, float *dst);
void tm__pack_a_avx2_12(int trans, int m_cur, int k, const float *a,
                        ptrdiff_t lda, float *dst);
void tm__pack_b_avx2_32(int trans, int n_cur, int k, const float *b,
                        ptrdiff_t ldb, float *dst);
int tm__gemm_skinny_avx2(int transa, int transb, int m, int n, int k,
                         float alpha, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, float beta, float *c,
                         ptrdiff_t ldc);

/* Generic packers of one sliver (m_r <= mr rows, n_r <= nr columns),
 * shared by every kernel set for what it has no faster code for. */
void tm__gemm_pack_a_generic(int mr, int trans, int m_r, int k, const float *a,
                             ptrdiff_t lda, float *dst);
void tm__gemm_pack_b_generic(int nr, int trans, int n_r, int k, const float *b,
                             ptrdiff_t ldb, float *dst);

/* The drivers. The front has already validated the arguments and handled
 * m == 0, n == 0, k == 0 and alpha == 0, so these see a real product. */
void tm__gemm_ref(int transa, int transb, int m, int n, int k, float alpha,
                  const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                  float beta, float *c, ptrdiff_t ldc);
void tm__gemm_blocked(const tm__gemm_kernels *ks, int transa, int transb, int m,
                      int n, int k, float alpha, const float *a, ptrdiff_t lda,
                      const float *b, ptrdiff_t ldb, float beta, float *c,
                      ptrdiff_t ldc);

/* The bf16 GEMM. fp32 operands are packed by the base set's fp32 packers
 * and then finished in place, `slivers` slivers of `tile` rows and k steps
 * at dst; bf16 operands are packed by a converting packer: rows [0, rows)
 * of a matrix whose element (i, p) is src[i * rs + p * cs], into slivers of
 * `tile` rows, tile * k floats' room apart, zero-padded. */
typedef void (*tm__gemm_pack_bf16)(int tile, int rows, int k, const tm_bf16 *src,
                                   ptrdiff_t rs, ptrdiff_t cs, float *dst);
typedef void (*tm__gemm_finish)(int tile, int k, int slivers, float *dst);
typedef struct {
    const char *isa;              /* the instruction set it runs on */
    const tm__gemm_kernels *base; /* micro-kernel, fp32 packers, tile and block sizes */
    tm__gemm_finish finish;       /* turns fp32-packed slivers into the kernel's */
    tm__gemm_pack_bf16 pack;      /* packs bf16 operands for the kernel */
    int k_unit;                   /* k panels are multiples of it (pairs: 2) */
} tm__gemm_bf16_kernels;

/* vdpbf16ps on pairs of bf16 (AVX512_BF16), and the fallback of each
 * fp32 set: operands rounded to bf16 while packing, then the fp32
 * micro-kernel, whose products of bf16 values are exact in fp32. */
extern const tm__gemm_kernels tm__gemm_kernels_avx512bf16;
extern const tm__gemm_bf16_kernels tm__gemm_bf16_kernels_avx512bf16;
/* The bf16 set for an instruction set (tm_isa). */
const tm__gemm_bf16_kernels *tm__gemm_bf16_kernels_for(int isa);
/* Finishers: fp32 slivers to pairs of bf16 in 32-bit words (pairs of k),
 * and to bf16-rounded floats. Packers from bf16 likewise. */
void tm__gemm_finish_pairs(int tile, int k, int slivers, float *dst);
void tm__gemm_finish_rounded(int tile, int k, int slivers, float *dst);
void tm__gemm_pack_bf16_pairs(int tile, int rows, int k, const tm_bf16 *src, ptrdiff_t rs,
                              ptrdiff_t cs, float *dst);
void tm__gemm_pack_bf16_widened(int tile, int rows, int k, const tm_bf16 *src, ptrdiff_t rs,
                                ptrdiff_t cs, float *dst);
/* The five loops for the bf16 GEMM (validated arguments, real product). */
void tm__gemm_bf16_blocked(const tm__gemm_bf16_kernels *ks, int transa, int transb, int m,
                           int n, int k, float alpha, const void *a, int a_bf16,
                           ptrdiff_t lda, const void *b, int b_bf16, ptrdiff_t ldb,
                           float beta, float *c, ptrdiff_t ldc);

/* Splits len into the fewest blocks of at most max, all about the same
 * size rounded up to a multiple of unit. */
int tm__gemm_block_size(int len, int max, int unit);
/* Workspace floats for an A block of mc x kc and a B panel of kc x nc; B
 * comes first and takes *b_floats (a multiple of 16, so the A block after
 * it stays aligned). */
size_t tm__gemm_workspace_floats(int mc, int nc, int kc, size_t *b_floats);

/* The calling thread's packing workspace, at least the given number of
 * floats, 64-byte aligned; grown (never shrunk) on demand and freed when the
 * thread exits. NULL if memory is exhausted. */
float *tm__gemm_workspace(size_t floats);
/* Grows the calling thread's workspace to the largest the kernel set's
 * blocks need and touches every page, so no later call pays for that. */
void tm__gemm_workspace_warm(const tm__gemm_kernels *ks);

#endif
