/* Tests for bf16: the fp32 <-> bf16 conversions (rounding, NaN, infinity,
 * denormals) and tm_gemm_bf16 on every instruction set's path (vdpbf16ps,
 * its AVX2 twin, and the fallback on each fp32 kernel set) against fp64
 * references, over odd shapes, layouts, strides, operand types and
 * threads. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/bf16.h"
#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "kernels/gemm_internal.h"
#include "kernels/isa.h"

#define SENTINEL (-777.25f)
enum { GUARD = 64 };

static uint32_t bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The nearest bf16 by arithmetic, ties to the even mantissa: an oracle
 * written apart from the bit trick it checks. */
static tm_bf16 nearest_bf16(float x)
{
    uint32_t u = bits(x);
    tm_bf16 lo = (tm_bf16)(u >> 16), hi = (tm_bf16)(lo + 1); /* hi: one step away from 0 */
    double dlo = fabs((double)x - tm_bf16_to_float(lo));
    if ((hi & 0x7fff) == 0x7f80) { /* the step up from the largest finite */
        double half_ulp = ldexp(1.0, 127 - 8);
        return fabs((double)x) - fabs((double)tm_bf16_to_float(lo)) < half_ulp ||
                       (fabs((double)x) - fabs((double)tm_bf16_to_float(lo)) == half_ulp &&
                        (lo & 1) == 0)
                   ? lo
                   : hi;
    }
    double dhi = fabs((double)tm_bf16_to_float(hi) - x);
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1) == 0 ? lo : hi;
}

Test(bf16, rounds_to_nearest_even)
{
    unsigned seed = 1;
    int wrong = 0;
    for (long i = 0; i < 2000000; i++) {
        seed = seed * 1664525u + 1013904223u;
        uint32_t u = seed;
        /* Every fourth value sits exactly on a tie, the rest anywhere. */
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;
        float x = from_bits(u);
        if (isnan(x)) continue;
        tm_bf16 got = tm_bf16_from_float(x), want = nearest_bf16(x);
        if (got != want && wrong++ < 10)
            cr_expect_eq(got, want, "%a (0x%08x): got 0x%04x, want 0x%04x", x, u, got, want);
    }
    cr_expect_eq(wrong, 0, "%d values rounded wrongly", wrong);
    /* Ties both ways: 1 + 2^-8 is halfway between 1 and 1 + 2^-7. */
    cr_expect_eq(tm_bf16_from_float(1.0f + 0x1p-8f), 0x3f80);
    cr_expect_eq(tm_bf16_from_float(1.0f + 3 * 0x1p-8f), 0x3f82);
    cr_expect_eq(tm_bf16_from_float(-1.0f - 0x1p-8f), 0xbf80);
}

Test(bf16, keeps_nan_infinity_zero_and_denormals)
{
    cr_expect_eq(tm_bf16_from_float(INFINITY), 0x7f80);
    cr_expect_eq(tm_bf16_from_float(-INFINITY), 0xff80);
    cr_expect_eq(tm_bf16_from_float(0.0f), 0x0000);
    cr_expect_eq(tm_bf16_from_float(-0.0f), 0x8000);
    cr_expect_eq(tm_bf16_from_float(FLT_MAX), 0x7f80, "past the largest bf16: infinity");
    cr_expect_eq(tm_bf16_from_float(from_bits(0x00012345u)), 0x0001, "denormals kept");
    /* NaNs whose payload lives in the low bits only would round into an
     * infinity (or carry into the sign) without the special case. */
    static const uint32_t nans[] = {0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu,
                                    0x7fc00000u, 0x7f80ffffu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        tm_bf16 h = tm_bf16_from_float(from_bits(nans[i]));
        cr_expect(isnan(tm_bf16_to_float(h)), "0x%08x -> 0x%04x is not a NaN", nans[i], h);
        cr_expect_eq(h >> 15, nans[i] >> 31, "0x%08x lost its sign", nans[i]);
    }
    /* Every bf16 converts to fp32 exactly and back unchanged. */
    int wrong = 0;
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float x = tm_bf16_to_float((tm_bf16)h);
        wrong += bits(x) != h << 16;
        wrong += !isnan(x) && tm_bf16_from_float(x) != h;
    }
    cr_expect_eq(wrong, 0);
}

Test(bf16, arrays_convert_like_the_scalars)
{
    float src[67], back[67];
    tm_bf16 mid[67];
    unsigned seed = 9;
    for (int i = 0; i < 67; i++) {
        seed = seed * 1664525u + 1013904223u;
        src[i] = from_bits(seed);
    }
    src[5] = NAN;
    src[6] = -INFINITY;
    for (int n = 0; n <= 40; n++) {
        for (int off = 0; off < 3; off++) {
            memset(mid, 0xaa, sizeof mid);
            tm_f32_to_bf16(mid + off, src + off, (size_t)n);
            tm_bf16_to_f32(back + off, mid + off, (size_t)n);
            for (int i = 0; i < 67; i++) {
                if (i < off || i >= off + n) {
                    cr_expect_eq(mid[i], 0xaaaa, "n=%d off=%d: wrote element %d", n, off, i);
                    continue;
                }
                cr_expect_eq(mid[i], tm_bf16_from_float(src[i]), "n=%d element %d", n, i);
                cr_expect_eq(bits(back[i]), (uint32_t)mid[i] << 16, "n=%d element %d", n, i);
            }
        }
    }
}

/* --- the GEMM ---------------------------------------------------------- */

typedef struct {
    const char *name;
    const tm__gemm_bf16_kernels *kernels; /* NULL: the public tm_gemm_bf16 */
} impl;

enum { MAX_IMPLS = 8 };
static impl impls[MAX_IMPLS];
static int IMPLS;
static tm__gemm_kernels twin_base, twin_fp32;
static tm__gemm_bf16_kernels twin_pairs, twin_fallback;

static void add_impl(const char *name, const tm__gemm_bf16_kernels *ks)
{
    cr_assert_lt(IMPLS, MAX_IMPLS);
    impls[IMPLS++] = (impl){name, ks};
}

/* The public entry, the fallback on every fp32 set this CPU runs, and
 * vdpbf16ps: natively where the CPU has it, and as the AVX2 twin of its
 * micro-kernel everywhere with AVX2 (the packers are portable). */
static void init_impls(void)
{
    if (IMPLS > 0) return;
    add_impl("tm_gemm_bf16", NULL);
    add_impl("fallback-generic", tm__gemm_bf16_kernels_for(TM_ISA_GENERIC));
    if (tm_isa_supported(TM_ISA_AVX2)) {
        add_impl("fallback-avx2", tm__gemm_bf16_kernels_for(TM_ISA_AVX2));
        twin_fp32 = tm__gemm_kernels_avx512;
        twin_fp32.ukr = tm__ukr_avx512_12x32_twin;
        twin_fallback = *tm__gemm_bf16_kernels_for(TM_ISA_AVX512);
        twin_fallback.base = &twin_fp32;
        add_impl("fallback-avx512-twin", &twin_fallback);
        twin_base = tm__gemm_kernels_avx512bf16;
        twin_base.ukr = tm__ukr_avx512bf16_12x32_twin;
        twin_pairs = tm__gemm_bf16_kernels_avx512bf16;
        twin_pairs.base = &twin_base;
        add_impl("avx512_bf16-twin", &twin_pairs);
    }
    if (tm_isa_supported(TM_ISA_AVX512))
        add_impl("fallback-avx512", tm__gemm_bf16_kernels_for(TM_ISA_AVX512));
    if (tm_isa_supported(TM_ISA_AVX512_BF16))
        add_impl("avx512_bf16", tm__gemm_bf16_kernels_for(TM_ISA_AVX512_BF16));
}

static void run(const impl *im, char ta, char tb, int m, int n, int k, float alpha,
                const void *a, tm_dtype at, int lda, const void *b, tm_dtype bt, int ldb,
                float beta, float *c, int ldc)
{
    if (im->kernels != NULL)
        tm__gemm_bf16_blocked(im->kernels, ta == 'T', tb == 'T', m, n, k, alpha, a,
                              at == TM_DTYPE_BF16, lda, b, bt == TM_DTYPE_BF16, ldb, beta, c,
                              ldc);
    else
        tm_gemm_bf16(ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ldc);
}

static float frand(unsigned *seed)
{
    *seed = *seed * 1664525u + 1013904223u;
    return (float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* A rows x cols matrix with leading dimension ld, padding and a guard set
 * to SENTINEL; *rounded gets the same values rounded to bf16 and *half the
 * bf16 array itself (padding and guard likewise). */
static float *matrix(int rows, int cols, int ld, unsigned *seed, float **rounded,
                     tm_bf16 **half)
{
    size_t len = (size_t)rows * ld + GUARD;
    float *m = malloc(len * sizeof(float));
    *rounded = malloc(len * sizeof(float));
    *half = malloc(len * sizeof(tm_bf16));
    cr_assert(m != NULL && *rounded != NULL && *half != NULL);
    for (size_t i = 0; i < len; i++) m[i] = SENTINEL;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) m[(size_t)r * ld + c] = frand(seed);
    tm_f32_to_bf16(*half, m, len);
    tm_bf16_to_f32(*rounded, *half, len);
    return m;
}

/* One product on every implementation and operand-type pair. Two bounds,
 * both relative to |alpha| sum |a||b| + |beta c|: against the product of
 * the bf16-rounded operands in fp64, the fp32 accumulation's (k + 3)
 * roundings (this is what catches a wrong element, however small); against
 * the product of the unrounded operands, bf16's bound max(k, 2) * 2^-8
 * (each factor rounded once: 2 * 2^-8 per product). */
static void check(char ta, char tb, int m, int n, int k, float alpha, float beta, int pad,
                  int nan_c, int types)
{
    init_impls();
    unsigned seed = (unsigned)(m * 7919 + n * 104729 + k * 31 + pad + (ta << 8) + tb);
    int lda = (ta == 'N' ? k : m) + pad, ldb = (tb == 'N' ? n : k) + pad, ldc = n + pad;
    float *ar, *br, *cr;
    tm_bf16 *ah, *bh, *ch;
    float *a = matrix(ta == 'N' ? m : k, ta == 'N' ? k : m, lda, &seed, &ar, &ah);
    float *b = matrix(tb == 'N' ? k : n, tb == 'N' ? n : k, ldb, &seed, &br, &bh);
    float *c0 = matrix(m, n, ldc, &seed, &cr, &ch);
    if (nan_c)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c0[(size_t)i * ldc + j] = NAN;
    size_t clen = (size_t)m * ldc + GUARD;
    float *got = malloc(clen * sizeof(float));
    double *exact = malloc(((size_t)m * n + 1) * sizeof(double));
    double *of_rounded = malloc(((size_t)m * n + 1) * sizeof(double));
    double *mag = malloc(((size_t)m * n + 1) * sizeof(double));
    double *mag_r = malloc(((size_t)m * n + 1) * sizeof(double));
    cr_assert(got && exact && of_rounded && mag && mag_r);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0, sr = 0, g = 0, gr = 0;
            for (int p = 0; p < k; p++) {
                size_t ai = ta == 'N' ? (size_t)i * lda + p : (size_t)p * lda + i;
                size_t bi = tb == 'N' ? (size_t)p * ldb + j : (size_t)j * ldb + p;
                s += (double)a[ai] * b[bi];
                g += fabs((double)a[ai] * b[bi]);
                sr += (double)ar[ai] * br[bi];
                gr += fabs((double)ar[ai] * br[bi]);
            }
            double old = beta == 0.0f ? 0.0 : (double)beta * c0[(size_t)i * ldc + j];
            size_t at = (size_t)i * n + j;
            exact[at] = alpha * s + old;
            of_rounded[at] = alpha * sr + old;
            mag[at] = fabs(alpha) * g;
            mag_r[at] = fabs(alpha) * gr + fabs(old);
        }
    }
    for (int v = 0; v < IMPLS; v++) {
        /* types: bit 0 A in bf16, bit 1 B in bf16; rotate through them. */
        int t = (types + v) % 4;
        tm_dtype at = t & 1 ? TM_DTYPE_BF16 : TM_DTYPE_F32;
        tm_dtype bt = t & 2 ? TM_DTYPE_BF16 : TM_DTYPE_F32;
        const void *aa = t & 1 ? (const void *)ah : a, *bb = t & 2 ? (const void *)bh : b;
        memcpy(got, c0, clen * sizeof(float));
        run(&impls[v], ta, tb, m, n, k, alpha, aa, at, lda, bb, bt, ldb, beta, got, ldc);
        int wrong = 0;
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                size_t at_c = (size_t)i * ldc + j, at_r = (size_t)i * n + j;
                double tol_r = (k + 3) * (double)FLT_EPSILON * mag_r[at_r] + 1e-30;
                double tol = (k > 2 ? k : 2) * 0x1p-8 * mag[at_r] + tol_r;
                int ok = fabs(got[at_c] - of_rounded[at_r]) <= tol_r &&
                         fabs(got[at_c] - exact[at_r]) <= tol;
                if (!ok && wrong++ < 10)
                    cr_expect(ok, "%s %c%c m=%d n=%d k=%d pad=%d A %s B %s: C(%d,%d) = %.9g, "
                              "want %.9g (rounded operands, tol %.3g), %.9g (exact, tol %.3g)",
                              impls[v].name, ta, tb, m, n, k, pad, t & 1 ? "bf16" : "f32",
                              t & 2 ? "bf16" : "f32", i, j, got[at_c], of_rounded[at_r],
                              tol_r, exact[at_r], tol);
            }
            for (int j = n; j < ldc; j++) wrong += got[(size_t)i * ldc + j] != SENTINEL;
        }
        for (size_t g = (size_t)m * ldc; g < clen; g++) wrong += got[g] != SENTINEL;
        cr_expect_eq(wrong, 0, "%s %c%c m=%d n=%d k=%d pad=%d: %d wrong values (or "
                     "padding/guard written)", impls[v].name, ta, tb, m, n, k, pad, wrong);
    }
    free(a); free(ar); free(ah);
    free(b); free(br); free(bh);
    free(c0); free(cr); free(ch);
    free(got); free(exact); free(of_rounded); free(mag); free(mag_r);
}

static const char layouts[4][2] = {{'N', 'N'}, {'N', 'T'}, {'T', 'N'}, {'T', 'T'}};

Test(bf16, gemm_odd_shapes_every_layout, .timeout = 120)
{
    static const int sizes[] = {1, 2, 3, 7, 16, 17, 31, 53, 67};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    int t = 0;
    for (int l = 0; l < 4; l++)
        for (int i = 0; i < NS; i++)
            for (int j = 0; j < NS; j++)
                for (int q = 0; q < NS; q++, t++)
                    check(layouts[l][0], layouts[l][1], sizes[i], sizes[j], sizes[q],
                          t % 2 ? 1.0f : -1.5f, t % 3 ? 0.0f : 0.75f, t % 5, 0, t);
}

/* Shapes past every block (bf16 kc 512 in steps of pairs, mc 240, nc
 * 2048; the fp32 sets' 384/256 and 192/240) with odd k in the last panel. */
Test(bf16, gemm_block_boundaries, .timeout = 120)
{
    static const int shapes[][3] = {{250, 70, 1027}, {13, 2100, 9}, {128, 256, 784},
                                    {241, 33, 513},  {7, 40, 1500}, {128, 10, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int l = 0; l < 4; l++)
            check(layouts[l][0], layouts[l][1], shapes[s][0], shapes[s][1], shapes[s][2], 0.5f,
                  s % 2 ? 1.0f : 0.0f, (int)s % 3 * 3, 0, (int)s + l);
}

Test(bf16, gemm_beta_zero_ignores_nan_in_c)
{
    for (int l = 0; l < 4; l++)
        check(layouts[l][0], layouts[l][1], 37, 45, 29, 1.25f, 0.0f, 1, 1, l);
}

/* A NaN or an infinity in A reaches exactly its row of C, on every path
 * (the bf16 rounding keeps both). */
Test(bf16, gemm_nan_and_infinity_propagate)
{
    init_impls();
    enum { M = 14, N = 35, K = 9 };
    float a[M * K], b[K * N], c[M * N];
    unsigned seed = 3;
    for (int i = 0; i < M * K; i++) a[i] = frand(&seed);
    for (int i = 0; i < K * N; i++) b[i] = 0.5f + 0.25f * frand(&seed);
    a[3 * K + 4] = NAN;
    a[9 * K + 8] = INFINITY;
    for (int v = 0; v < IMPLS; v++) {
        run(&impls[v], 'N', 'N', M, N, K, 1.0f, a, TM_DTYPE_F32, K, b, TM_DTYPE_F32, N, 0.0f,
            c, N);
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
                float x = c[i * N + j];
                if (i == 3) cr_expect(isnan(x), "%s C(3,%d) = %g", impls[v].name, j, x);
                else if (i == 9) cr_expect(isinf(x) && x > 0, "%s C(9,%d) = %g", impls[v].name, j, x);
                else cr_expect(isfinite(x), "%s C(%d,%d) = %g", impls[v].name, i, j, x);
            }
        }
    }
}

/* Eight threads at once, each product three times on every path: bitwise
 * what the same path gave single-threaded. */
enum { THREADS = 8, TM_ = 70, TN_ = 90, TK_ = 300 };
static float t_a[TM_ * TK_], t_b[TK_ * TN_], t_want[MAX_IMPLS][TM_ * TN_];
static int t_mismatch[THREADS];

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    tm_gemm_thread_init();
    float *c = malloc(sizeof t_want[0]);
    if (c == NULL) {
        t_mismatch[id]++;
        return NULL;
    }
    for (int it = 0; it < 3; it++) {
        for (int v = 0; v < IMPLS; v++) {
            run(&impls[v], 'N', 'T', TM_, TN_, TK_, 1.0f, t_a, TM_DTYPE_F32, TK_, t_b,
                TM_DTYPE_F32, TK_, 0.0f, c, TN_);
            t_mismatch[id] += memcmp(c, t_want[v], sizeof t_want[v]) != 0;
        }
    }
    free(c);
    return NULL;
}

Test(bf16, gemm_bitwise_the_same_on_every_thread, .timeout = 60)
{
    init_impls();
    unsigned seed = 77;
    for (int i = 0; i < TM_ * TK_; i++) t_a[i] = frand(&seed);
    for (int i = 0; i < TK_ * TN_; i++) t_b[i] = frand(&seed);
    for (int v = 0; v < IMPLS; v++)
        run(&impls[v], 'N', 'T', TM_, TN_, TK_, 1.0f, t_a, TM_DTYPE_F32, TK_, t_b, TM_DTYPE_F32,
            TK_, 0.0f, t_want[v], TN_);
    pthread_t tid[THREADS];
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(pthread_create(&tid[t], NULL, worker, (void *)(intptr_t)t), 0);
    for (int t = 0; t < THREADS; t++) pthread_join(tid[t], NULL);
    for (int t = 0; t < THREADS; t++)
        cr_expect_eq(t_mismatch[t], 0, "thread %d: %d results differ", t, t_mismatch[t]);
}

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

/* 2mnk FLOPs once per call, bytes by element size; bad arguments (a bad
 * layout, a short leading dimension, an unknown type) touch nothing and
 * charge nothing; alpha == 0 and beta == 0 clear C without reading A or B. */
Test(bf16, gemm_cost_arguments_and_no_product)
{
    tm_bf16 a[5 * 11] = {0};
    float b[11 * 7] = {0}, c[5 * 7];
    tm_cost_set_hook(record, NULL);
    memset(&seen, 0, sizeof seen);
    tm_gemm_bf16('N', 'T', 5, 7, 11, 1.0f, a, TM_DTYPE_BF16, 11, b, TM_DTYPE_F32, 11, 1.0f, c, 7);
    cr_expect_eq(seen.calls, 1);
    cr_expect_eq(seen.flops, 2.0 * 5 * 7 * 11);
    cr_expect_eq(seen.bytes, 2.0 * 5 * 11 + 4.0 * 11 * 7 + 8.0 * 5 * 7);
    for (int i = 0; i < 35; i++) c[i] = 9.0f;
    memset(&seen, 0, sizeof seen);
    tm_gemm_bf16('N', 'Q', 5, 7, 11, 1.0f, a, TM_DTYPE_BF16, 11, b, TM_DTYPE_F32, 11, 0.0f, c, 7);
    tm_gemm_bf16('N', 'T', 5, 7, 11, 1.0f, a, TM_DTYPE_BF16, 10, b, TM_DTYPE_F32, 11, 0.0f, c, 7);
    tm_gemm_bf16('N', 'T', 5, 7, 11, 1.0f, a, (tm_dtype)7, 11, b, TM_DTYPE_F32, 11, 0.0f, c, 7);
    cr_expect_eq(seen.calls, 0, "invalid calls must not be charged");
    for (int i = 0; i < 35; i++) cr_expect_eq(c[i], 9.0f, "C touched on bad arguments");
    tm_cost_set_hook(NULL, NULL);
    float nan_ab[4] = {NAN, NAN, NAN, NAN}, d[4] = {1, 2, NAN, 4};
    tm_gemm_bf16('N', 'N', 2, 2, 2, 0.0f, nan_ab, TM_DTYPE_F32, 2, nan_ab, TM_DTYPE_F32, 2,
                 0.0f, d, 2);
    for (int i = 0; i < 4; i++) cr_expect_eq(d[i], 0.0f, "alpha = beta = 0: d[%d] = %g", i, d[i]);
}
