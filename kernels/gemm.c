/* The GEMM front: argument checks, cost reporting, the cases every backend
 * shares (empty C, alpha == 0), backend choice, and the OpenBLAS backend. */
#include "kernels/gemm.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "kernels/cost.h"
#include "kernels/gemm_internal.h"
#include "kernels/isa.h"

/* --- backend selection -------------------------------------------------- */

static const char *const backend_names[] = {
    [TM_GEMM_AUTO] = "auto",
    [TM_GEMM_REF] = "ref",
    [TM_GEMM_BLOCKED] = "blocked",
    [TM_GEMM_OPENBLAS] = "openblas",
};
enum { BACKEND_COUNT = sizeof backend_names / sizeof backend_names[0] };

const char *tm_gemm_backend_name(tm_gemm_backend backend)
{
    if ((unsigned)backend >= BACKEND_COUNT) return "unknown";
    return backend_names[backend];
}

int tm_gemm_backend_parse(const char *name, tm_gemm_backend *out)
{
    if (name == NULL) return -1;
    for (int i = 0; i < BACKEND_COUNT; i++) {
        if (strcmp(name, backend_names[i]) == 0) {
            *out = (tm_gemm_backend)i;
            return 0;
        }
    }
    return -1;
}

static atomic_int process_backend = TM_GEMM_AUTO;
static once_flag env_once = ONCE_FLAG_INIT;

/* TM_GEMM is read once. An unknown value is ignored (auto), since library
 * code cannot print; tm_gemm_backend_parse lets a program check it first. */
static void read_env(void)
{
    tm_gemm_backend b;
    if (tm_gemm_backend_parse(getenv("TM_GEMM"), &b) == 0) atomic_store(&process_backend, (int)b);
}

void tm_gemm_set_backend(tm_gemm_backend backend)
{
    call_once(&env_once, read_env);
    if ((unsigned)backend < BACKEND_COUNT) atomic_store(&process_backend, (int)backend);
}

tm_gemm_backend tm_gemm_get_backend(void)
{
    call_once(&env_once, read_env);
    return (tm_gemm_backend)atomic_load(&process_backend);
}

/* The auto table: which backend runs each shape class, for each kind of
 * blocked kernels. It is static on purpose: choosing by timing at run time
 * would make results depend on machine load, and the backends round
 * differently. bench_gemm filled it on an AMD Zen 5 (OpenBLAS 0.3.21 on its
 * Haswell kernels, one thread; medians, interleaved): with AVX2 kernels the
 * blocked backend was within noise of OpenBLAS or ahead on every square
 * from 256 up and every MLP shape (0.99-1.09x), and 1.3-2.1x ahead on the
 * shapes with one dimension of 10; the portable kernels reach a tenth of
 * OpenBLAS, so without AVX2 every class goes to OpenBLAS. The AVX-512 column
 * follows the AVX2 one: its kernels have not yet been timed on an AVX-512
 * CPU (the machine of their first build had none), and on its thin shapes
 * it runs the same AVX2 paths. */
enum { CLASS_THIN, CLASS_SMALL, CLASS_LARGE, CLASS_COUNT };

static const struct {
    tm_gemm_backend avx512, avx2, generic;
} auto_table[CLASS_COUNT] = {
    [CLASS_THIN] = {TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS}, /* a dimension <= 16 */
    [CLASS_SMALL] = {TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS}, /* m*n*k <= 256^3 */
    [CLASS_LARGE] = {TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS},
};

static int shape_class(int m, int n, int k)
{
    if (m <= 16 || n <= 16 || k <= 16) return CLASS_THIN;
    return (double)m * n * k <= 256.0 * 256 * 256 ? CLASS_SMALL : CLASS_LARGE;
}

tm_gemm_backend tm_gemm_auto_backend(char transa, char transb, int m, int n, int k)
{
    /* Every layout measured alike, so the layout does not enter the class. */
    (void)transa;
    (void)transb;
    int cls = shape_class(m, n, k);
    const tm__gemm_kernels *ks = tm__gemm_kernels_active();
    return ks == &tm__gemm_kernels_avx512 ? auto_table[cls].avx512
           : ks == &tm__gemm_kernels_avx2 ? auto_table[cls].avx2
                                          : auto_table[cls].generic;
}

/* --- arguments ---------------------------------------------------------- */

static int is_trans(char t) { return t == 'T' || t == 't'; }
static int valid_trans(char t) { return t == 'N' || t == 'n' || is_trans(t); }
static int max1(int x) { return x > 1 ? x : 1; }

const char *tm_gemm_check(char transa, char transb, int m, int n, int k,
                          const float *a, int lda, const float *b, int ldb,
                          const float *c, int ldc)
{
    if (!valid_trans(transa)) return "transa must be 'N' or 'T'";
    if (!valid_trans(transb)) return "transb must be 'N' or 'T'";
    if (m < 0 || n < 0 || k < 0) return "m, n and k must not be negative";
    if (lda < max1(is_trans(transa) ? m : k))
        return "lda is smaller than a row of A (k for 'N', m for 'T')";
    if (ldb < max1(is_trans(transb) ? k : n))
        return "ldb is smaller than a row of B (n for 'N', k for 'T')";
    if (ldc < max1(n)) return "ldc is smaller than a row of C (n)";
    if (a == NULL && m > 0 && k > 0) return "a is NULL but A is not empty";
    if (b == NULL && k > 0 && n > 0) return "b is NULL but B is not empty";
    if (c == NULL && m > 0 && n > 0) return "c is NULL but C is not empty";
    return NULL;
}

/* --- OpenBLAS ----------------------------------------------------------- */

/* OpenBLAS's pthread build starts its thread pool when the library loads,
 * before main. Every device is already a thread, so the pool would only
 * fight them for cores: one thread per call, and the idle pool shut down.
 * blas_thread_shutdown_ is exported by OpenBLAS but not declared in cblas.h;
 * the weak reference keeps other BLAS builds linking. */
extern int blas_thread_shutdown_(void) __attribute__((weak));
static once_flag openblas_once = ONCE_FLAG_INIT;

static void openblas_single_thread(void)
{
    openblas_set_num_threads(1);
    if (blas_thread_shutdown_ != NULL) blas_thread_shutdown_();
}

static void gemm_openblas(int ta, int tb, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb,
                          float beta, float *c, int ldc)
{
    call_once(&openblas_once, openblas_single_thread);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb,
                beta, c, ldc);
}

/* OpenBLAS's Haswell sgemm packs op(A) in blocks of up to 768 x 384 and
 * op(B) in panels of 384 x n, in a per-thread buffer whose pages are faulted
 * in on first use (the first 256^3 product of a fresh thread lost most of
 * its speed to that).
 * Thin products touch both regions at a fraction of a square's cost: the
 * pairs cover either operand order OpenBLAS may pick for a row-major call,
 * and 2048 is the widest panel the benchmark uses. */
enum { WARM_P = 768, WARM_Q = 384, WARM_R = 2048, WARM_THIN = 16 };

void tm_gemm_thread_init(void)
{
    call_once(&openblas_once, openblas_single_thread);
    float *a = calloc((size_t)WARM_R * WARM_Q, sizeof(float));
    float *b = calloc((size_t)WARM_R * WARM_Q, sizeof(float));
    float *c = malloc((size_t)WARM_R * WARM_THIN * sizeof(float));
    if (a != NULL && b != NULL && c != NULL) {
        static const int shapes[4][2] = {
            {WARM_P, WARM_THIN}, {WARM_THIN, WARM_P}, {WARM_R, WARM_THIN}, {WARM_THIN, WARM_R}};
        for (int i = 0; i < 4; i++) {
            int m = shapes[i][0], n = shapes[i][1];
            gemm_openblas(0, 0, m, n, WARM_Q, 1.0f, a, WARM_Q, b, n, 0.0f, c, n);
        }
    }
    free(a);
    free(b);
    free(c);
    tm__gemm_workspace_warm(tm__gemm_kernels_active());
    tm__gemm_workspace_warm(tm__gemm_bf16_kernels_for(tm_isa_active())->base);
}

/* --- the entry points --------------------------------------------------- */

/* The products with no product to form (an empty C, k == 0, alpha == 0):
 * returns 1 when done, having set C = beta * C where there is a C; beta ==
 * 0 clears C even if it held NaN (BLAS semantics), for every backend and
 * precision alike. */
static int no_product(int m, int n, int k, float alpha, float beta, float *c, int ldc)
{
    if (m == 0 || n == 0) return 1;
    if (k != 0 && alpha != 0.0f) return 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            c[(ptrdiff_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(ptrdiff_t)i * ldc + j];
    return 1;
}

static void gemm_run(tm_gemm_backend backend, char transa, char transb, int m, int n, int k,
                     float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                     float *c, int ldc)
{
    if (tm_cost_dry() || no_product(m, n, k, alpha, beta, c, ldc)) return;
    int ta = is_trans(transa), tb = is_trans(transb);
    if (backend == TM_GEMM_AUTO) backend = tm_gemm_auto_backend(transa, transb, m, n, k);
    switch (backend) {
    case TM_GEMM_REF:
        tm__gemm_ref(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        break;
    case TM_GEMM_OPENBLAS:
        gemm_openblas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        break;
    default:
        tm__gemm_blocked(tm__gemm_kernels_active(), ta, tb, m, n, k, alpha, a,
                         lda, b, ldb, beta, c, ldc);
        break;
    }
}

void tm_sgemm_backend(tm_gemm_backend backend, char transa, char transb, int m,
                      int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, float beta, float *c, int ldc)
{
    /* Invalid arguments are a caller's bug that tm_gemm_check names; the
     * call then does nothing rather than touch memory it was not given. */
    if (tm_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc) != NULL) return;
    gemm_run(backend, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    /* Charged once done, as every kernel is, so that a listener timing the
     * kernels (the modeled clock's wall-time trace) sees its end. */
    double mn = (double)m * n;
    tm__cost_charge(2.0 * mn * k,
                    sizeof(float) * ((double)m * k + (double)k * n +
                                     (beta != 0.0f ? 2.0 : 1.0) * mn));
}

void tm_sgemm(char transa, char transb, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta,
              float *c, int ldc)
{
    tm_sgemm_backend(tm_gemm_get_backend(), transa, transb, m, n, k, alpha, a,
                     lda, b, ldb, beta, c, ldc);
}

void tm_gemm_bf16(char transa, char transb, int m, int n, int k, float alpha,
                  const void *a, tm_dtype a_type, int lda, const void *b, tm_dtype b_type,
                  int ldb, float beta, float *c, int ldc)
{
    if (tm_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc) != NULL) return;
    if ((a_type != TM_DTYPE_F32 && a_type != TM_DTYPE_BF16) ||
        (b_type != TM_DTYPE_F32 && b_type != TM_DTYPE_BF16))
        return;
    if (!tm_cost_dry() && !no_product(m, n, k, alpha, beta, c, ldc))
        tm__gemm_bf16_blocked(tm__gemm_bf16_kernels_for(tm_isa_active()), is_trans(transa),
                              is_trans(transb), m, n, k, alpha, a, a_type == TM_DTYPE_BF16,
                              lda, b, b_type == TM_DTYPE_BF16, ldb, beta, c, ldc);
    double mn = (double)m * n;
    double a_bytes = a_type == TM_DTYPE_BF16 ? sizeof(tm_bf16) : sizeof(float);
    double b_bytes = b_type == TM_DTYPE_BF16 ? sizeof(tm_bf16) : sizeof(float);
    tm__cost_charge(2.0 * mn * k, a_bytes * m * k + b_bytes * k * n +
                                      sizeof(float) * (beta != 0.0f ? 2.0 : 1.0) * mn);
}

const char *tm_gemm_bf16_isa(void)
{
    return tm__gemm_bf16_kernels_for(tm_isa_active())->isa;
}

const char *tm_gemm_blocked_isa(void) { return tm__gemm_kernels_active()->isa; }
