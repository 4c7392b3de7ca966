/* bench_gemm: tm_sgemm's backends side by side (ours, OpenBLAS, the
 * reference) on square and MLP shapes, against the FMA peak measured in the
 * same run. Usage: build/bench_gemm [--csv] [--reps N] [--quick]. */
#include <getopt.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/gemm.h"

static const char usage[] =
    "usage: bench_gemm [--csv] [--reps N] [--quick] [--help]\n"
    "Times tm_sgemm's backends (blocked = ours, openblas, ref) on square\n"
    "shapes 128..2048 and the MLP shapes of a 784-256-128-10 network at batch\n"
    "128 (forward NT, backward NN and TN), interleaved per shape, warm, median\n"
    "of N repetitions (default 7), against the AVX2 FMA peak of the same run\n"
    "(the fastest run of an FMA-throughput loop, sampled between shapes).\n"
    "  --csv     print 'backend,layout,m,n,k,gflops,pct_peak' rows only\n"
    "  --reps N  repetitions per backend and shape (1..1000)\n"
    "  --quick   squares up to 512 only, and 3 repetitions unless --reps\n"
    "The reference backend is naive and slow: it is timed only where\n"
    "2*m*n*k <= 2^25 (e.g. 256^3 and the smaller MLP layers).\n";

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* --- peak: independent FMA chains, enough of them to cover the latency of
 * both FMA pipes, so the loop is bound by FMA throughput alone. */

#define FMA14(op, t)                                                          \
    do {                                                                      \
        a0 = op(a0, x, y); a1 = op(a1, x, y); a2 = op(a2, x, y);              \
        a3 = op(a3, x, y); a4 = op(a4, x, y); a5 = op(a5, x, y);              \
        a6 = op(a6, x, y); a7 = op(a7, x, y); a8 = op(a8, x, y);              \
        a9 = op(a9, x, y); a10 = op(a10, x, y); a11 = op(a11, x, y);          \
        a12 = op(a12, x, y); a13 = op(a13, x, y);                             \
        __asm__ volatile("" : "+" t(a0), "+" t(a1), "+" t(a2), "+" t(a3),     \
                         "+" t(a4), "+" t(a5), "+" t(a6), "+" t(a7));         \
        __asm__ volatile("" : "+" t(a8), "+" t(a9), "+" t(a10), "+" t(a11),   \
                         "+" t(a12), "+" t(a13));                             \
    } while (0)

/* Returns GFLOP/s of iters rounds of 14 eight-wide FMAs. The empty asm
 * statements keep the compiler from folding or reordering the chains. */
__attribute__((target("avx2,fma"))) static double fma_loop_avx2(long iters)
{
    __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0;
    __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-6f);
    double t = now();
    for (long i = 0; i < iters; i++) FMA14(_mm256_fmadd_ps, "x");
    t = now() - t;
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    s = _mm256_add_ps(s, _mm256_add_ps(a12, a13));
    float out[8];
    _mm256_storeu_ps(out, s);
    if (out[0] == 42.0f) puts(""); /* keeps the result alive */
    return (double)iters * 14 * 16 / t * 1e-9;
}

__attribute__((target("avx512f,fma"))) static double fma_loop_avx512(long iters)
{
    __m512 a0 = _mm512_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m512 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0;
    __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-6f);
    double t = now();
    for (long i = 0; i < iters; i++) FMA14(_mm512_fmadd_ps, "v");
    t = now() - t;
    __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    s = _mm512_add_ps(s, _mm512_add_ps(a12, a13));
    if (_mm512_reduce_add_ps(s) == 42.0f) puts("");
    return (double)iters * 14 * 32 / t * 1e-9;
}

/* The fastest of reps runs of about 50 ms each: other load can only slow an
 * FMA loop down, so the fastest run is the closest to the hardware's peak
 * (a median on a busy machine would put GEMMs above 100%). */
static double peak(double (*loop)(long), int reps)
{
    double best = 0.0;
    loop(1000000); /* let the clock ramp up */
    for (int r = 0; r < reps; r++) {
        double g = loop(10000000);
        if (g > best) best = g;
    }
    return best;
}

/* --- shapes ------------------------------------------------------------ */

typedef struct {
    char ta, tb;
    int m, n, k;
} shape;

/* A linear layer (in -> out) at batch 128, weights stored (out, in) as
 * PyTorch does: forward y = x·W^T is NT (128, out, in); backward dX = dY·W
 * is NN (128, in, out) and dW = dY^T·X is TN (out, in, 128). */
static int mlp_shapes(shape *s)
{
    static const int layers[3][2] = {{784, 256}, {256, 128}, {128, 10}};
    int n = 0;
    for (int l = 0; l < 3; l++) {
        int in = layers[l][0], out = layers[l][1];
        s[n++] = (shape){'N', 'T', 128, out, in};
        s[n++] = (shape){'N', 'N', 128, in, out};
        s[n++] = (shape){'T', 'N', out, in, 128};
    }
    return n;
}

static int all_shapes(shape *s, int quick)
{
    static const int squares[] = {128, 256, 512, 1024, 2048};
    int n = 0, count = quick ? 3 : 5;
    for (int i = 0; i < count; i++) {
        int d = squares[i];
        s[n++] = (shape){'N', 'N', d, d, d};
        s[n++] = (shape){'N', 'T', d, d, d};
        s[n++] = (shape){'T', 'N', d, d, d};
    }
    return n + mlp_shapes(s + n);
}

/* --- timing ------------------------------------------------------------ */

typedef struct {
    const float *a, *b;
    float *c;
} operands;

static void run(tm_gemm_backend be, const shape *s, const operands *o, int calls)
{
    int lda = s->ta == 'N' ? s->k : s->m, ldb = s->tb == 'N' ? s->n : s->k;
    for (int i = 0; i < calls; i++)
        tm_sgemm_backend(be, s->ta, s->tb, s->m, s->n, s->k, 1.0f, o->a, lda,
                         o->b, ldb, 0.0f, o->c, s->n);
}

enum { MAX_BACKENDS = 3, MAX_REPS = 1000, MAX_SHAPES = 32 };

/* blocked and openblas everywhere, ref too where it finishes quickly. */
static int backends_for(const shape *s)
{
    return 2.0 * s->m * s->n * s->k <= (double)(1 << 25) ? 3 : 2;
}

/* Times every backend on one shape, interleaved so a noisy moment hurts all
 * of them alike; returns the median GFLOP/s of each. Small products are
 * timed in batches of calls long enough (about 2 ms) for the clock. */
static void time_shape(const shape *s, const operands *o, const tm_gemm_backend *be,
                       int nbe, int reps, double *gflops)
{
    double flops = 2.0 * s->m * s->n * s->k;
    int calls = (int)(4e6 / flops * 50) + 1; /* ~2 ms at 100 GFLOP/s */
    static double t[MAX_BACKENDS][MAX_REPS];
    for (int b = 0; b < nbe; b++) run(be[b], s, o, 1); /* warm caches */
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < nbe; i++) {
            /* Alternate the order too, so neither backend always runs
             * right after the other has warmed (or cooled) the caches. */
            int b = r % 2 ? nbe - 1 - i : i;
            int nc = be[b] == TM_GEMM_REF ? 1 : calls;
            double t0 = now();
            run(be[b], s, o, nc);
            t[b][r] = flops * nc / (now() - t0) * 1e-9;
        }
    }
    for (int b = 0; b < nbe; b++) gflops[b] = median(t[b], reps);
}

/* 64-byte aligned, as every block of a device arena is (TM_ARENA_ALIGN). */
static float *random_matrix(size_t n, unsigned *seed)
{
    float *m = aligned_alloc(64, n * sizeof *m);
    if (m == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        m[i] = (float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    return m;
}

int main(int argc, char **argv)
{
    int csv = 0, quick = 0, reps = -1;
    static const struct option opts[] = {
        {"csv", no_argument, NULL, 'c'},   {"reps", required_argument, NULL, 'r'},
        {"quick", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        char *end;
        switch (ch) {
        case 'c': csv = 1; break;
        case 'q': quick = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'r':
            reps = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || reps < 1 || reps > MAX_REPS) {
                fprintf(stderr, "bench_gemm: --reps wants 1..%d, got '%s'\n", MAX_REPS, optarg);
                return 2;
            }
            break;
        default:
            fprintf(stderr, "bench_gemm: bad option '%s' (try --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench_gemm: unexpected argument '%s' (try --help)\n", argv[optind]);
        return 2;
    }
    if (reps < 0) reps = quick ? 3 : 7;

    tm_gemm_thread_init();
    double pk = peak(fma_loop_avx2, 9);
    int has512 = __builtin_cpu_supports("avx512f");
    double pk512 = has512 ? peak(fma_loop_avx512, 9) : 0.0;

    static shape shapes[MAX_SHAPES];
    static double g[MAX_SHAPES][MAX_BACKENDS];
    int ns = all_shapes(shapes, quick);
    size_t big = 2048 * 2048;
    unsigned seed = 12345;
    operands o = {random_matrix(big, &seed), random_matrix(big, &seed), random_matrix(big, &seed)};
    if (o.a == NULL || o.b == NULL || o.c == NULL) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        return 1;
    }
    const tm_gemm_backend be[MAX_BACKENDS] = {TM_GEMM_BLOCKED, TM_GEMM_OPENBLAS, TM_GEMM_REF};
    for (int i = 0; i < ns; i++) {
        time_shape(&shapes[i], &o, be, backends_for(&shapes[i]), reps, g[i]);
        /* One more peak sample per shape: the peak is the best seen over
         * the whole run, so a busy moment at the start cannot lower it. */
        double p = fma_loop_avx2(10000000);
        if (p > pk) pk = p;
    }

    if (csv) {
        puts("backend,layout,m,n,k,gflops,pct_peak");
    } else {
        printf("peak (AVX2 FMA loop, 1 core, best of the run): %.1f GFLOP/s; "
               "pct_peak is against it\n", pk);
        if (has512) printf("AVX-512 FMA loop (for reference, not used): %.1f GFLOP/s\n", pk512);
        printf("blocked kernels: %s; median of %d, interleaved, warm\n\n",
               tm_gemm_blocked_isa(), reps);
        printf("%-9s %-6s %5s %5s %5s %8s %8s  %s\n", "backend", "layout", "m", "n",
               "k", "gflops", "pct_peak", "blocked/openblas");
    }
    for (int i = 0; i < ns; i++) {
        const shape *s = &shapes[i];
        for (int b = 0; b < backends_for(s); b++) {
            const char *name = tm_gemm_backend_name(be[b]);
            if (csv) {
                printf("%s,%c%c,%d,%d,%d,%.2f,%.1f\n", name, s->ta, s->tb, s->m, s->n,
                       s->k, g[i][b], 100.0 * g[i][b] / pk);
            } else {
                printf("%-9s %c%c     %5d %5d %5d %8.1f %8.1f", name, s->ta, s->tb,
                       s->m, s->n, s->k, g[i][b], 100.0 * g[i][b] / pk);
                if (b == 0) printf("  %.2f", g[i][0] / g[i][1]);
                putchar('\n');
            }
        }
    }
    free((void *)o.a);
    free((void *)o.b);
    free(o.c);
    return 0;
}
