/* Internal seams of the GEMM: the front (gemm.c) calls the reference and the
 * blocked drivers; the blocked driver calls one ISA's kernel set. Thread-safe:
 * no shared mutable state; packing buffers are per thread. */
#ifndef TM_GEMM_INTERNAL_H
#define TM_GEMM_INTERNAL_H

#include <stddef.h>

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
 * gemm_blocked.c. */
typedef struct {
    const char *isa;         /* "avx2", "generic" */
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

/* The best kernel set this CPU runs (cpuid, decided once). */
const tm__gemm_kernels *tm__gemm_kernels_best(void);

/* The kernels behind the sets, one file per ISA and tile shape. */
void tm__ukr_generic_4x8(int k, const float *a, const float *b, float alpha,
                         float beta, float *c, ptrdiff_t ldc, int m_r, int n_r);
void tm__ukr_avx2_6x16(int k, const float *a, const float *b, float alpha,
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

/* The calling thread's packing workspace, at least the given number of
 * floats, 64-byte aligned; grown (never shrunk) on demand and freed when the
 * thread exits. NULL if memory is exhausted. */
float *tm__gemm_workspace(size_t floats);
/* Grows the calling thread's workspace to the largest the kernel set's
 * blocks need and touches every page, so no later call pays for that. */
void tm__gemm_workspace_warm(const tm__gemm_kernels *ks);

#endif
