/* Single-precision GEMM, row-major: C = alpha * op(A) * op(B) + beta * C, with
 * reference, blocked (our own) and OpenBLAS backends. Thread-safe: any number
 * of threads may call tm_sgemm concurrently on different C. */
#ifndef TM_GEMM_H
#define TM_GEMM_H

#include "kernels/bf16.h"

typedef enum {
    TM_GEMM_AUTO,     /* per-shape default from the static table in gemm.c */
    TM_GEMM_REF,      /* naive triple loop: the test oracle */
    TM_GEMM_BLOCKED,  /* packed panels around a register-blocked micro-kernel */
    TM_GEMM_OPENBLAS, /* cblas_sgemm, one thread */
} tm_gemm_backend;

/* transa/transb are 'N' or 'T'. op(A) is (m, k): A is (m, k) with lda >= k
 * when 'N', (k, m) with lda >= m when 'T'; op(B) is (k, n) likewise; C is
 * (m, n) with ldc >= n. beta == 0 ignores C's previous contents (NaN too).
 * Uses the process-wide backend (tm_gemm_set_backend / TM_GEMM). */
void tm_sgemm(char transa, char transb, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta,
              float *c, int ldc);

/* The same with an explicit backend (tests and benchmarks). */
void tm_sgemm_backend(tm_gemm_backend backend, char transa, char transb, int m,
                      int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, float beta, float *c, int ldc);

/* NULL when the arguments are valid, else a message naming the first bad
 * one: a transpose flag, a negative size, a leading dimension below its
 * row's width (BLAS: at least 1), or a NULL pointer to a non-empty matrix.
 * tm_sgemm does nothing (and charges no cost) on invalid arguments; callers
 * that take shapes from users check first. */
const char *tm_gemm_check(char transa, char transb, int m, int n, int k,
                          const float *a, int lda, const float *b, int ldb,
                          const float *c, int ldc);

/* The backend TM_GEMM_AUTO runs for this shape: a fixed table (gemm.c), never
 * a run-time measurement, so results are bitwise reproducible. */
tm_gemm_backend tm_gemm_auto_backend(char transa, char transb, int m, int n,
                                     int k);

/* The instruction set of the blocked backend's fp32 kernels: "avx512",
 * "avx2" or "generic", from the active set (kernels/isa.h: the best this
 * CPU runs, or TM_ISA's pick); avx512_bf16 runs fp32 on "avx512". */
const char *tm_gemm_blocked_isa(void);

/* C = alpha * op(A) * op(B) + beta * C with A and B each fp32 or bf16
 * (a_type, b_type; leading dimensions in elements) and C fp32: every
 * operand is rounded to bf16 (nearest even) as it is packed, products of
 * bf16 values are exact in fp32 and are accumulated in fp32. Layouts, beta
 * == 0 and the argument checks as tm_sgemm (an unknown type does nothing).
 * Runs vdpbf16ps where the active instruction set is avx512_bf16, else the
 * fp32 kernels on the rounded operands: the same results up to the order
 * of the additions (and vdpbf16ps flushing denormals). The error against
 * the exact product of the unrounded operands is within about 2^-8 * (2 +
 * k * 2^-16) of sum |a||b| (the two roundings of each factor, then fp32
 * accumulation): k * 2^-8 for any k >= 2. */
void tm_gemm_bf16(char transa, char transb, int m, int n, int k, float alpha,
                  const void *a, tm_dtype a_type, int lda, const void *b, tm_dtype b_type,
                  int ldb, float beta, float *c, int ldc);

/* The instruction set tm_gemm_bf16 runs: "avx512_bf16" (vdpbf16ps), or the
 * fp32 kernels' set it falls back to. */
const char *tm_gemm_bf16_isa(void);

/* Process-wide backend; the initial value comes from the environment
 * variable TM_GEMM (auto|ref|blocked|openblas; unset or anything else means
 * auto), read on first use. */
void tm_gemm_set_backend(tm_gemm_backend backend);
tm_gemm_backend tm_gemm_get_backend(void);
const char *tm_gemm_backend_name(tm_gemm_backend backend);
/* Parses "auto", "ref", "blocked", "openblas"; returns 0, or -1 if unknown. */
int tm_gemm_backend_parse(const char *name, tm_gemm_backend *out);

/* Prepares the calling thread for GEMM: makes OpenBLAS single-threaded and
 * shuts down the thread pool it starts when it loads (once per process), and
 * touches OpenBLAS's and the blocked backend's per-thread work buffers so
 * the first real call runs at full speed. Call on every thread that will
 * multiply (each device thread); threads may call it concurrently. */
void tm_gemm_thread_init(void);

#endif
