/* Tests for tm_sgemm: every backend and layout against the reference over
 * odd shapes, strides and alpha/beta; O(n^2) checks on large products;
 * concurrency and bitwise reproducibility; cost reporting; bad arguments. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "kernels/gemm_internal.h"
#include "kernels/isa.h"

/* Stored outside every matrix's rows: padding between rows (ld > width)
 * and a guard after the last row must come back untouched. */
#define SENTINEL (-777.25f)
enum { GUARD = 64 };

static float frand(unsigned *seed)
{
    *seed = *seed * 1664525u + 1013904223u;
    return (float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* rows x cols of random values with leading dimension ld, the padding and
 * a guard of GUARD floats after it set to SENTINEL. */
static float *matrix(int rows, int cols, int ld, unsigned *seed)
{
    size_t len = (size_t)rows * ld + GUARD;
    float *m = aligned_alloc(64, (len * sizeof(float) + 63) / 64 * 64);
    cr_assert_not_null(m);
    for (size_t i = 0; i < len; i++) m[i] = SENTINEL;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) m[(size_t)r * ld + c] = frand(seed);
    return m;
}

/* A backend under test: a public backend, or the blocked driver with an
 * explicit kernel set (every instruction set this CPU runs, and the
 * AVX-512 kernels' AVX2 twin, so their logic is tested on any CPU). */
typedef struct {
    const char *name;
    tm_gemm_backend backend;
    const tm__gemm_kernels *kernels; /* non-NULL: call the driver directly */
} impl;

enum { MAX_IMPLS = 8 };
static impl impls[MAX_IMPLS];
static int IMPLS;
static tm__gemm_kernels twin512;

/* The AVX-512 set with the twin micro-kernel; its packers are AVX2. */
static const tm__gemm_kernels *avx512_twin(void)
{
    twin512 = tm__gemm_kernels_avx512;
    twin512.isa = "avx512-twin";
    twin512.ukr = tm__ukr_avx512_12x32_twin;
    return &twin512;
}

static void add_impl(const char *name, tm_gemm_backend be, const tm__gemm_kernels *ks)
{
    cr_assert_lt(IMPLS, MAX_IMPLS);
    impls[IMPLS++] = (impl){name, be, ks};
}

static void init_impls(void)
{
    if (IMPLS > 0) return;
    add_impl("blocked", TM_GEMM_BLOCKED, NULL);
    add_impl("openblas", TM_GEMM_OPENBLAS, NULL);
    add_impl("auto", TM_GEMM_AUTO, NULL);
    add_impl("blocked-generic", TM_GEMM_BLOCKED, &tm__gemm_kernels_generic);
    if (tm_isa_supported(TM_ISA_AVX2)) {
        add_impl("blocked-avx2", TM_GEMM_BLOCKED, &tm__gemm_kernels_avx2);
        add_impl("blocked-avx512-twin", TM_GEMM_BLOCKED, avx512_twin());
    }
    if (tm_isa_supported(TM_ISA_AVX512))
        add_impl("blocked-avx512", TM_GEMM_BLOCKED, &tm__gemm_kernels_avx512);
}

static void run(const impl *im, char ta, char tb, int m, int n, int k, float alpha,
                const float *a, int lda, const float *b, int ldb, float beta, float *c,
                int ldc)
{
    if (im->kernels != NULL && m > 0 && n > 0 && k > 0 && alpha != 0.0f)
        tm__gemm_blocked(im->kernels, ta == 'T', tb == 'T', m, n, k, alpha, a, lda, b,
                         ldb, beta, c, ldc);
    else
        tm_sgemm_backend(im->backend, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Runs one product with every implementation and compares each element with
 * the reference within the classic dot-product bound: (k + 3) float
 * roundings of |alpha| * sum |a||b| + |beta * c|. Also checks that padding
 * and guard are untouched. pad widens every leading dimension. */
static void check_product(char ta, char tb, int m, int n, int k, float alpha,
                          float beta, int pad, int nan_c)
{
    init_impls();
    unsigned seed = (unsigned)(m * 7919 + n * 104729 + k * 31 + pad + (ta << 8) + tb);
    int lda = (ta == 'N' ? k : m) + pad, ldb = (tb == 'N' ? n : k) + pad, ldc = n + pad;
    float *a = matrix(ta == 'N' ? m : k, ta == 'N' ? k : m, lda, &seed);
    float *b = matrix(tb == 'N' ? k : n, tb == 'N' ? n : k, ldb, &seed);
    float *c0 = matrix(m, n, ldc, &seed);
    if (nan_c)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c0[(size_t)i * ldc + j] = NAN;
    size_t clen = (size_t)m * ldc + GUARD;
    float *want = malloc(clen * sizeof(float)), *got = aligned_alloc(64, (clen * 4 + 63) / 64 * 64);
    double *mag = calloc((size_t)m * n + 1, sizeof(double));
    cr_assert(want != NULL && got != NULL && mag != NULL);
    memcpy(want, c0, clen * sizeof(float));
    tm_sgemm_backend(TM_GEMM_REF, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, want, ldc);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                float x = ta == 'N' ? a[(size_t)i * lda + p] : a[(size_t)p * lda + i];
                float y = tb == 'N' ? b[(size_t)p * ldb + j] : b[(size_t)j * ldb + p];
                s += fabs((double)x * y);
            }
            double old = beta == 0.0f ? 0.0 : fabs((double)beta * c0[(size_t)i * ldc + j]);
            mag[(size_t)i * n + j] = fabs(alpha) * s + old;
        }
    }
    for (int v = 0; v < IMPLS; v++) {
        memcpy(got, c0, clen * sizeof(float));
        run(&impls[v], ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, got, ldc);
        int wrong = 0;
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                size_t at = (size_t)i * ldc + j;
                double tol = (k + 3) * (double)FLT_EPSILON * mag[(size_t)i * n + j] + 1e-30;
                int ok = fabs((double)got[at] - want[at]) <= tol;
                if (!ok && wrong++ < 10)
                    cr_expect(ok, "%s %c%c m=%d n=%d k=%d pad=%d alpha=%g beta=%g: "
                              "C(%d,%d) = %.9g, want %.9g (tol %.3g)", impls[v].name,
                              ta, tb, m, n, k, pad, alpha, beta, i, j, got[at], want[at], tol);
            }
            for (int j = n; j < ldc; j++) wrong += got[(size_t)i * ldc + j] != SENTINEL;
        }
        for (size_t g = (size_t)m * ldc; g < clen; g++) wrong += got[g] != SENTINEL;
        cr_expect_eq(wrong, 0, "%s %c%c m=%d n=%d k=%d pad=%d: %d wrong values (or "
                     "padding/guard written)", impls[v].name, ta, tb, m, n, k, pad, wrong);
    }
    free(a);
    free(b);
    free(c0);
    free(want);
    free(got);
    free(mag);
}

static const char layouts[4][2] = {{'N', 'N'}, {'N', 'T'}, {'T', 'N'}, {'T', 'T'}};

Test(gemm, odd_shapes_every_layout)
{
    static const int sizes[] = {1, 2, 3, 7, 16, 17, 31, 53, 67};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    int t = 0;
    for (int l = 0; l < 4; l++)
        for (int i = 0; i < NS; i++)
            for (int j = 0; j < NS; j++)
                for (int q = 0; q < NS; q++, t++)
                    check_product(layouts[l][0], layouts[l][1], sizes[i], sizes[j],
                                  sizes[q], t % 2 ? 1.0f : -1.5f, t % 3 ? 0.0f : 0.75f,
                                  t % 5, 0);
}

/* Shapes that cross the blocked driver's cache blocks (mc 192, kc 384, nc
 * 2048) and the special paths for one tiny dimension, with their edges. */
Test(gemm, block_and_path_boundaries)
{
    static const int shapes[][3] = {
        {128, 10, 256}, {128, 10, 128}, {128, 128, 10}, {10, 128, 128},
        {127, 9, 131},  {5, 100, 33},   {200, 17, 5},   {7, 19, 800},
        {197, 33, 401}, {20, 2100, 20}, {13, 9, 4500},  {7, 40, 4500},
        {1, 1, 1000},   {384, 1, 3},    {3, 15, 8},     {6, 16, 16},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int l = 0; l < 4; l++)
            check_product(layouts[l][0], layouts[l][1], shapes[s][0], shapes[s][1],
                          shapes[s][2], 0.5f, s % 2 ? 1.0f : 0.0f, (int)s % 3 * 3, 0);
}

Test(gemm, beta_zero_ignores_nan_in_c)
{
    static const int shapes[][3] = {{1, 1, 1}, {17, 31, 7}, {128, 10, 128}, {128, 128, 10},
                                    {10, 128, 128}, {67, 53, 400}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int l = 0; l < 4; l++)
            check_product(layouts[l][0], layouts[l][1], shapes[s][0], shapes[s][1],
                          shapes[s][2], 1.25f, 0.0f, 1, 1);
}

/* alpha == 0 or k == 0: C = beta * C without reading A or B (BLAS), and
 * beta == 0 clears NaN. */
Test(gemm, no_product_scales_c)
{
    float a[4] = {NAN, NAN, NAN, NAN}, b[4] = {NAN, NAN, NAN, NAN};
    init_impls();
    for (int v = 0; v < IMPLS; v++) {
        float c[4] = {1, 2, 3, NAN};
        tm_sgemm_backend(impls[v].backend, 'N', 'N', 2, 2, 2, 0.0f, a, 2, b, 2, 0.0f, c, 2);
        for (int i = 0; i < 4; i++) cr_expect_eq(c[i], 0.0f, "%s alpha=beta=0: c[%d]=%g", impls[v].name, i, c[i]);
        float d[4] = {1, 2, 3, 4};
        tm_sgemm_backend(impls[v].backend, 'T', 'N', 2, 2, 0, 1.0f, a, 2, b, 2, 2.0f, d, 2);
        for (int i = 0; i < 4; i++) cr_expect_eq(d[i], 2.0f * (i + 1), "%s k=0: d[%d]=%g", impls[v].name, i, d[i]);
    }
}

/* The O(n^2) check (BLIS's): with a random vector t, C·t must equal
 * alpha·A·(B·t) + beta·C0·t within a bound relative to k. */
static void vector_check(const impl *im, char ta, char tb, int m, int n, int k)
{
    unsigned seed = 99u + (unsigned)(m + n + k);
    int lda = (ta == 'N' ? k : m) + 3, ldb = (tb == 'N' ? n : k) + 5, ldc = n + 1;
    float alpha = 0.75f, beta = -0.5f;
    float *a = matrix(ta == 'N' ? m : k, ta == 'N' ? k : m, lda, &seed);
    float *b = matrix(tb == 'N' ? k : n, tb == 'N' ? n : k, ldb, &seed);
    float *c = matrix(m, n, ldc, &seed);
    double *t = malloc(sizeof(double) * n), *bt = malloc(sizeof(double) * k);
    double *bt_abs = malloc(sizeof(double) * k), *ct0 = malloc(sizeof(double) * m);
    double *ct0_abs = malloc(sizeof(double) * m);
    cr_assert(t && bt && bt_abs && ct0 && ct0_abs);
    for (int j = 0; j < n; j++) t[j] = frand(&seed);
    for (int p = 0; p < k; p++) {
        bt[p] = bt_abs[p] = 0.0;
        for (int j = 0; j < n; j++) {
            double y = tb == 'N' ? b[(size_t)p * ldb + j] : b[(size_t)j * ldb + p];
            bt[p] += y * t[j];
            bt_abs[p] += fabs(y * t[j]);
        }
    }
    for (int i = 0; i < m; i++) {
        ct0[i] = ct0_abs[i] = 0.0;
        for (int j = 0; j < n; j++) {
            ct0[i] += c[(size_t)i * ldc + j] * t[j];
            ct0_abs[i] += fabs(c[(size_t)i * ldc + j] * t[j]);
        }
    }
    run(im, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    int wrong = 0;
    for (int i = 0; i < m; i++) {
        double want = beta * ct0[i], mag = fabs(beta) * ct0_abs[i], got = 0.0;
        for (int p = 0; p < k; p++) {
            double x = ta == 'N' ? a[(size_t)i * lda + p] : a[(size_t)p * lda + i];
            want += alpha * x * bt[p];
            mag += fabs(alpha * x) * bt_abs[p];
        }
        for (int j = 0; j < n; j++) got += c[(size_t)i * ldc + j] * t[j];
        double tol = (k + 3) * (double)FLT_EPSILON * mag;
        if (!(fabs(got - want) <= tol) && wrong++ < 10)
            cr_expect(0, "%s %c%c %dx%dx%d: (C t)[%d] = %.9g, want %.9g (tol %.3g)",
                      im->name, ta, tb, m, n, k, i, got, want, tol);
    }
    cr_expect_eq(wrong, 0, "%s %c%c %dx%dx%d: %d rows wrong", im->name, ta, tb, m, n, k, wrong);
    free(a);
    free(b);
    free(c);
    free(t);
    free(bt);
    free(bt_abs);
    free(ct0);
    free(ct0_abs);
}

Test(gemm, large_products_random_vector_check, .timeout = 120)
{
    static const int shapes[][3] = {{1000, 1100, 900}, {300, 2100, 500}, {129, 1000, 1500}};
    init_impls();
    for (int v = 0; v < IMPLS; v++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int l = 0; l < 4; l++)
                vector_check(&impls[v], layouts[l][0], layouts[l][1], shapes[s][0],
                             shapes[s][1], shapes[s][2]);
}

/* --- concurrency ------------------------------------------------------- */

enum { THREADS = 8, THREAD_SHAPES = 5, THREAD_ITERS = 3 };
static const struct {
    char ta, tb;
    int m, n, k;
} thread_shapes[THREAD_SHAPES] = {
    {'N', 'N', 64, 48, 80},    {'N', 'T', 128, 10, 128}, {'N', 'N', 128, 128, 10},
    {'T', 'N', 10, 128, 128},  {'T', 'T', 200, 150, 400},
};

typedef struct {
    float *a[THREAD_SHAPES], *b[THREAD_SHAPES];
    float *want[THREAD_SHAPES][MAX_IMPLS]; /* single-threaded results, per impl */
    int mismatches;
} thread_work;

static void *worker(void *arg)
{
    thread_work *w = arg;
    tm_gemm_thread_init();
    for (int it = 0; it < THREAD_ITERS; it++) {
        for (int s = 0; s < THREAD_SHAPES; s++) {
            int m = thread_shapes[s].m, n = thread_shapes[s].n, k = thread_shapes[s].k;
            char ta = thread_shapes[s].ta, tb = thread_shapes[s].tb;
            for (int v = 0; v < IMPLS; v++) {
                float *c = malloc(sizeof(float) * m * n);
                if (c == NULL) {
                    w->mismatches++;
                    continue;
                }
                run(&impls[v], ta, tb, m, n, k, 1.0f, w->a[s], ta == 'N' ? k : m, w->b[s],
                    tb == 'N' ? n : k, 0.0f, c, n);
                w->mismatches += memcmp(c, w->want[s][v], sizeof(float) * m * n) != 0;
                free(c);
            }
        }
    }
    return NULL;
}

/* Eight threads multiply their own data at once, each product three times
 * with every implementation (every instruction set's kernels among them);
 * every result must be bitwise what the same implementation gave
 * single-threaded, which in turn must match the reference. */
Test(gemm, eight_threads_concurrently, .timeout = 60)
{
    static thread_work work[THREADS];
    tm_gemm_thread_init();
    init_impls();
    for (int t = 0; t < THREADS; t++) {
        unsigned seed = 1000u + (unsigned)t;
        for (int s = 0; s < THREAD_SHAPES; s++) {
            int m = thread_shapes[s].m, n = thread_shapes[s].n, k = thread_shapes[s].k;
            char ta = thread_shapes[s].ta, tb = thread_shapes[s].tb;
            int lda = ta == 'N' ? k : m, ldb = tb == 'N' ? n : k;
            work[t].a[s] = matrix(ta == 'N' ? m : k, lda, lda, &seed);
            work[t].b[s] = matrix(tb == 'N' ? k : n, ldb, ldb, &seed);
            float *ref = calloc((size_t)m * n, sizeof(float));
            cr_assert_not_null(ref);
            tm_sgemm_backend(TM_GEMM_REF, ta, tb, m, n, k, 1.0f, work[t].a[s], lda,
                             work[t].b[s], ldb, 0.0f, ref, n);
            for (int v = 0; v < IMPLS; v++) {
                float *c = calloc((size_t)m * n, sizeof(float));
                cr_assert_not_null(c);
                run(&impls[v], ta, tb, m, n, k, 1.0f, work[t].a[s], lda, work[t].b[s], ldb,
                    0.0f, c, n);
                int wrong = 0;
                for (int i = 0; i < m * n; i++)
                    wrong += !(fabsf(c[i] - ref[i]) <= (k + 3) * FLT_EPSILON * k);
                cr_expect_eq(wrong, 0, "thread %d shape %d %s: %d values off the reference",
                             t, s, impls[v].name, wrong);
                work[t].want[s][v] = c;
            }
            free(ref);
        }
    }
    pthread_t tid[THREADS];
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(pthread_create(&tid[t], NULL, worker, &work[t]), 0);
    for (int t = 0; t < THREADS; t++) pthread_join(tid[t], NULL);
    for (int t = 0; t < THREADS; t++) {
        cr_expect_eq(work[t].mismatches, 0, "thread %d: %d results differ from the "
                     "single-threaded ones", t, work[t].mismatches);
        for (int s = 0; s < THREAD_SHAPES; s++) {
            free(work[t].a[s]);
            free(work[t].b[s]);
            for (int v = 0; v < IMPLS; v++) free(work[t].want[s][v]);
        }
    }
}

static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    if (d == NULL) return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* OpenBLAS must never run threads of its own next to the device threads.
 * Its pthread build starts a pool of (threads - 1) when it loads; after
 * tm_gemm_thread_init that pool is gone, OpenBLAS reports one thread, and a
 * large OpenBLAS product starts none. (Criterion's own threads stay.) */
Test(gemm, openblas_runs_no_threads_of_its_own)
{
    int before = thread_count(), pool = openblas_get_num_threads() - 1;
    tm_gemm_thread_init();
    cr_expect_eq(openblas_get_num_threads(), 1);
    cr_expect_eq(thread_count(), before - pool, "threads: %d before init (OpenBLAS pool "
                 "of %d), %d after", before, pool, thread_count());
    unsigned seed = 5;
    float *a = matrix(512, 512, 512, &seed), *b = matrix(512, 512, 512, &seed);
    float *c = matrix(512, 512, 512, &seed);
    tm_sgemm_backend(TM_GEMM_OPENBLAS, 'N', 'N', 512, 512, 512, 1.0f, a, 512, b, 512,
                     0.0f, c, 512);
    cr_expect_eq(thread_count(), before - pool, "threads after a 512^3 OpenBLAS "
                 "product: %d", thread_count());
    free(a);
    free(b);
    free(c);
}

/* --- cost, arguments, selection ---------------------------------------- */

static struct {
    int calls;
    double flops, bytes;
} seen;

static void record(void *ctx, double flops, double bytes)
{
    (void)ctx;
    seen.calls++;
    seen.flops += flops;
    seen.bytes += bytes;
}

Test(gemm, cost_hook_gets_2mnk_once_per_call)
{
    float a[5 * 11] = {0}, b[11 * 7] = {0}, c[5 * 7] = {0};
    tm_cost_set_hook(record, NULL);
    init_impls();
    for (int v = 0; v < IMPLS; v++) {
        for (int beta = 0; beta < 2; beta++) {
            memset(&seen, 0, sizeof seen);
            tm_sgemm_backend(impls[v].backend, 'N', 'T', 5, 7, 11, 1.0f, a, 11, b, 11,
                             (float)beta, c, 7);
            cr_expect_eq(seen.calls, 1, "%s: hook called %d times", impls[v].name, seen.calls);
            cr_expect_eq(seen.flops, 2.0 * 5 * 7 * 11, "%s: %g flops", impls[v].name, seen.flops);
            double bytes = 4.0 * (5 * 11 + 11 * 7 + (beta ? 2 : 1) * 5 * 7);
            cr_expect_eq(seen.bytes, bytes, "%s beta=%d: %g bytes, want %g", impls[v].name,
                         beta, seen.bytes, bytes);
        }
    }
    memset(&seen, 0, sizeof seen);
    tm_sgemm('N', 'N', 5, 7, 11, 1.0f, a, 11, b, 7, 0.0f, c, 7);
    cr_expect_eq(seen.calls, 1);
    cr_expect_eq(seen.flops, 770.0);
    memset(&seen, 0, sizeof seen);
    tm_sgemm('N', 'N', 5, 7, 11, 1.0f, a, 10, b, 7, 0.0f, c, 7); /* lda too small */
    cr_expect_eq(seen.calls, 0, "an invalid call must not be charged");
    tm_cost_set_hook(NULL, NULL);
}

Test(gemm, check_names_bad_arguments)
{
    float x[64] = {0};
    const float *p = x;
    cr_expect_null(tm_gemm_check('N', 'N', 2, 3, 4, p, 4, p, 3, p, 3));
    cr_expect_null(tm_gemm_check('t', 'n', 2, 3, 4, p, 2, p, 3, p, 3));
    cr_expect_null(tm_gemm_check('T', 'T', 2, 3, 4, p, 2, p, 4, p, 3));
    cr_expect_null(tm_gemm_check('N', 'N', 0, 0, 0, NULL, 1, NULL, 1, NULL, 1));
    cr_expect_null(tm_gemm_check('N', 'N', 2, 3, 0, NULL, 1, NULL, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('X', 'N', 2, 3, 4, p, 4, p, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('N', 'C', 2, 3, 4, p, 4, p, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('N', 'N', -1, 3, 4, p, 4, p, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, -4, p, 4, p, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, 4, p, 3, p, 3, p, 3));  /* lda < k */
    cr_expect_not_null(tm_gemm_check('T', 'N', 5, 3, 4, p, 4, p, 3, p, 3));  /* lda < m */
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, 4, p, 4, p, 2, p, 3));  /* ldb < n */
    cr_expect_not_null(tm_gemm_check('N', 'T', 2, 3, 4, p, 4, p, 3, p, 3));  /* ldb < k */
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, 4, p, 4, p, 3, p, 2));  /* ldc < n */
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 0, 4, p, 4, p, 1, p, 0));  /* ldc < 1 */
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, 4, NULL, 4, p, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, 4, p, 4, NULL, 3, p, 3));
    cr_expect_not_null(tm_gemm_check('N', 'N', 2, 3, 4, p, 4, p, 3, NULL, 3));
    const char *msg = tm_gemm_check('N', 'N', 2, 3, 4, p, 3, p, 3, p, 3);
    cr_expect(msg != NULL && strstr(msg, "lda") != NULL, "message: %s", msg ? msg : "(null)");

    float a[8] = {1, 1, 1, 1, 1, 1, 1, 1}, c[6] = {9, 9, 9, 9, 9, 9};
    init_impls();
    for (int v = 0; v < IMPLS; v++) {
        tm_sgemm_backend(impls[v].backend, 'N', 'Q', 2, 3, 4, 1.0f, a, 4, a, 3, 0.0f, c, 3);
        tm_sgemm_backend(impls[v].backend, 'N', 'N', 2, 3, 4, 1.0f, a, 4, a, 3, 0.0f, c, 2);
        tm_sgemm_backend(impls[v].backend, 'N', 'N', 2, 3, 4, 1.0f, NULL, 4, a, 3, 0.0f, c, 3);
        for (int i = 0; i < 6; i++) cr_expect_eq(c[i], 9.0f, "%s touched C on bad arguments", impls[v].name);
    }
}

Test(gemm, backend_names_parse_both_ways)
{
    for (int b = TM_GEMM_AUTO; b <= TM_GEMM_OPENBLAS; b++) {
        tm_gemm_backend out = TM_GEMM_AUTO;
        cr_expect_eq(tm_gemm_backend_parse(tm_gemm_backend_name((tm_gemm_backend)b), &out), 0);
        cr_expect_eq((int)out, b);
    }
    tm_gemm_backend out;
    cr_expect_eq(tm_gemm_backend_parse("bogus", &out), -1);
    cr_expect_eq(tm_gemm_backend_parse(NULL, &out), -1);
    cr_expect_str_eq(tm_gemm_backend_name(TM_GEMM_OPENBLAS), "openblas");
}

/* Bitwise comparison of tm_sgemm (process backend) with one backend. */
static int same_as(tm_gemm_backend be, char ta, char tb, int m, int n, int k)
{
    unsigned seed = 77;
    int lda = ta == 'N' ? k : m, ldb = tb == 'N' ? n : k;
    float *a = matrix(ta == 'N' ? m : k, lda, lda, &seed);
    float *b = matrix(tb == 'N' ? k : n, ldb, ldb, &seed);
    float *c1 = calloc((size_t)m * n, sizeof(float)), *c2 = calloc((size_t)m * n, sizeof(float));
    cr_assert(c1 != NULL && c2 != NULL);
    tm_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c1, n);
    tm_sgemm_backend(be, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c2, n);
    int same = memcmp(c1, c2, sizeof(float) * m * n) == 0;
    free(a);
    free(b);
    free(c1);
    free(c2);
    return same;
}

/* TM_GEMM is read on first use, so these two need a process of their own:
 * Criterion gives each test one, and the exit code carries the verdict
 * (the TSan build's in-process stand-in skips tests that expect one). */
enum { VERDICT_OK = 3, VERDICT_WRONG = 4 };

Test(gemm, environment_variable_sets_initial_backend, .exit_code = VERDICT_OK)
{
    setenv("TM_GEMM", "ref", 1);
    int ok = tm_gemm_get_backend() == TM_GEMM_REF && same_as(TM_GEMM_REF, 'N', 'T', 33, 20, 40);
    exit(ok ? VERDICT_OK : VERDICT_WRONG);
}

Test(gemm, unknown_environment_value_means_auto, .exit_code = VERDICT_OK)
{
    setenv("TM_GEMM", "fastest", 1);
    exit(tm_gemm_get_backend() == TM_GEMM_AUTO ? VERDICT_OK : VERDICT_WRONG);
}

Test(gemm, set_backend_switches_tm_sgemm)
{
    static const tm_gemm_backend order[] = {TM_GEMM_REF, TM_GEMM_OPENBLAS, TM_GEMM_BLOCKED};
    for (int i = 0; i < 3; i++) {
        tm_gemm_set_backend(order[i]);
        cr_expect_eq(tm_gemm_get_backend(), order[i]);
        cr_expect(same_as(order[i], 'N', 'T', 33, 20, 40), "tm_sgemm after set %s",
                  tm_gemm_backend_name(order[i]));
    }
}

/* auto picks from a fixed table: for each shape class the backend the
 * table in gemm.c names for the active kernels (written out again here, so
 * that a change to the table must be a change to this test too), and so
 * bitwise the same result for a shape every time. */
Test(gemm, auto_follows_its_table)
{
    cr_assert_eq(unsetenv("TM_GEMM"), 0);
    tm_gemm_set_backend(TM_GEMM_AUTO);
    static const struct {
        int m, n, k;
        tm_gemm_backend avx512, avx2, generic;
    } table[] = {
        {128, 10, 128, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS},  /* thin */
        {10, 128, 128, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS},  /* thin */
        {128, 128, 16, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS},  /* thin */
        {128, 256, 512, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS}, /* small */
        {256, 256, 256, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS}, /* small */
        {128, 256, 784, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS}, /* large */
        {300, 300, 300, TM_GEMM_BLOCKED, TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS}, /* large */
    };
    const char *isa = tm_gemm_blocked_isa();
    for (size_t s = 0; s < sizeof table / sizeof table[0]; s++) {
        int m = table[s].m, n = table[s].n, k = table[s].k;
        tm_gemm_backend want = strcmp(isa, "avx512") == 0 ? table[s].avx512
                               : strcmp(isa, "avx2") == 0 ? table[s].avx2
                                                          : table[s].generic;
        for (int l = 0; l < 3; l++) {
            char ta = layouts[l][0], tb = layouts[l][1];
            tm_gemm_backend be = tm_gemm_auto_backend(ta, tb, m, n, k);
            cr_expect_eq(be, want, "%c%c %dx%dx%d on %s: auto picked %s, the table says %s",
                         ta, tb, m, n, k, isa, tm_gemm_backend_name(be),
                         tm_gemm_backend_name(want));
            cr_expect(same_as(be, ta, tb, m, n, k), "%c%c %dx%dx%d", ta, tb, m, n, k);
        }
    }
}

/* --- instruction sets ----------------------------------------------------- */

Test(gemm, isa_names_parse_both_ways)
{
    for (int i = 0; i < TM_ISA_COUNT; i++) {
        tm_isa out = TM_ISA_COUNT;
        cr_expect_eq(tm_isa_parse(tm_isa_name((tm_isa)i), &out), 0);
        cr_expect_eq((int)out, i);
    }
    tm_isa out;
    cr_expect_eq(tm_isa_parse("sse9", &out), -1);
    cr_expect_eq(tm_isa_parse(NULL, &out), -1);
    cr_expect_str_eq(tm_isa_name(TM_ISA_AVX512_BF16), "avx512_bf16");
    cr_expect_str_eq(tm_isa_name(TM_ISA_COUNT), "unknown");
}

/* Each set includes the ones below it, the best is supported, and the
 * detection agrees with the compiler's own cpuid check (which does not
 * look at the OS's XCR0, hence only one way for AVX-512). */
Test(gemm, isa_support_is_ordered_and_follows_cpuid)
{
    unsetenv("TM_ISA");
    tm_isa best = tm_isa_best();
    cr_expect(tm_isa_supported(TM_ISA_GENERIC));
    for (int i = 0; i < TM_ISA_COUNT; i++)
        cr_expect_eq(tm_isa_supported((tm_isa)i), i <= (int)best, "%s", tm_isa_name((tm_isa)i));
    cr_expect_not(tm_isa_supported(TM_ISA_COUNT));
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    cr_expect_eq(tm_isa_supported(TM_ISA_AVX2), avx2);
    if (tm_isa_supported(TM_ISA_AVX512)) cr_expect(__builtin_cpu_supports("avx512f"));
    cr_expect_eq(tm_isa_active(), best);
    cr_expect_eq(tm_isa_check_env(NULL, 0), 0);
    cr_expect_str_eq(tm_gemm_blocked_isa(), tm__gemm_kernels_for(best)->isa);
}

/* Bitwise comparison of the blocked backend with the driver on one set. */
static int blocked_runs(const tm__gemm_kernels *ks, char ta, char tb, int m, int n, int k)
{
    unsigned seed = 78;
    int lda = ta == 'N' ? k : m, ldb = tb == 'N' ? n : k;
    float *a = matrix(ta == 'N' ? m : k, lda, lda, &seed);
    float *b = matrix(tb == 'N' ? k : n, ldb, ldb, &seed);
    float *c1 = calloc((size_t)m * n, sizeof(float)), *c2 = calloc((size_t)m * n, sizeof(float));
    cr_assert(c1 != NULL && c2 != NULL);
    tm_sgemm_backend(TM_GEMM_BLOCKED, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c1, n);
    tm__gemm_blocked(ks, ta == 'T', tb == 'T', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c2, n);
    int same = memcmp(c1, c2, sizeof(float) * m * n) == 0;
    free(a);
    free(b);
    free(c1);
    free(c2);
    return same;
}

/* TM_ISA is read once, so each case runs in a process of its own. */
Test(gemm, tm_isa_picks_a_lower_set, .exit_code = VERDICT_OK)
{
    setenv("TM_ISA", "generic", 1);
    int ok = tm_isa_check_env(NULL, 0) == 0 && tm_isa_active() == TM_ISA_GENERIC &&
             strcmp(tm_gemm_blocked_isa(), "generic") == 0 &&
             strcmp(tm_gemm_bf16_isa(), "generic") == 0 &&
             blocked_runs(&tm__gemm_kernels_generic, 'N', 'N', 40, 50, 60);
    exit(ok ? VERDICT_OK : VERDICT_WRONG);
}

/* The message names the value and every set this CPU has; the kernels run
 * the best set meanwhile (never an instruction the CPU lacks). */
static int refused(const char *value)
{
    setenv("TM_ISA", value, 1);
    char msg[160];
    if (tm_isa_check_env(msg, sizeof msg) != -1) return 0;
    char have[64];
    snprintf(have, sizeof have, "this CPU has %s", tm_isa_name(TM_ISA_GENERIC));
    int ok = strstr(msg, value) != NULL && strstr(msg, have) != NULL &&
             strstr(msg, tm_isa_name(tm_isa_best())) != NULL && strchr(msg, '\n') == NULL;
    return ok && tm_isa_active() == tm_isa_best() &&
           blocked_runs(tm__gemm_kernels_for(tm_isa_best()), 'T', 'N', 40, 50, 60);
}

Test(gemm, tm_isa_unknown_name_is_refused, .exit_code = VERDICT_OK)
{
    exit(refused("avx1024") ? VERDICT_OK : VERDICT_WRONG);
}

/* The highest set is beyond every CPU but one that has it all, which must
 * then accept it. */
Test(gemm, tm_isa_beyond_this_cpu_is_refused, .exit_code = VERDICT_OK)
{
    const char *top = tm_isa_name(TM_ISA_AVX512_BF16);
    if (refused(top)) exit(VERDICT_OK);
    int all = tm_isa_best() == TM_ISA_AVX512_BF16 && tm_isa_check_env(NULL, 0) == 0 &&
              tm_isa_active() == TM_ISA_AVX512_BF16;
    exit(all ? VERDICT_OK : VERDICT_WRONG);
}
