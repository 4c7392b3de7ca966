/* bench_gemm: tm_sgemm's backends side by side (ours, OpenBLAS, the
 * reference) and tm_gemm_bf16, on square, MLP, GPT-layer and attention
 * shapes, each against the peak of the instruction set it ran, measured in
 * the same run. Usage: build/bench_gemm [--csv] [--reps N] [--quick]. */
#include <cblas.h>
#include <ctype.h>
#include <getopt.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/bf16.h"
#include "kernels/gemm.h"
#include "kernels/isa.h"

static const char usage[] =
    "usage: bench_gemm [--csv] [--reps N] [--quick] [--help]\n"
    "Times tm_sgemm's backends (blocked = ours, openblas, ref) and the bf16\n"
    "GEMM (backend bf16: tm_gemm_bf16 on bf16 A and B) on square shapes\n"
    "128..2048, the layers of a 784-256-128-10 MLP at batch 128, GPT layers\n"
    "at 1024 and 4096 rows, and per-head attention products (forward NT,\n"
    "backward NN and TN), interleaved per shape, warm, median of N\n"
    "repetitions (default 7). Each runs on the active instruction set (the\n"
    "best of this CPU; TM_ISA=avx2 etc. picks another), and pct_peak is\n"
    "against the peak of the set that ran: the fastest run of an FMA (or\n"
    "vdpbf16ps) throughput loop, sampled between shapes.\n"
    "  --csv     print 'backend,layout,m,n,k,gflops,pct_peak,isa' rows only\n"
    "  --reps N  repetitions per backend and shape (1..1000)\n"
    "  --quick   squares up to 512 and the MLP only, 3 repetitions unless --reps\n"
    "The reference backend is naive and slow: it is timed only where\n"
    "2*m*n*k <= 2^25 (e.g. 256^3 and the smaller MLP layers).\n"
    "Exit status 2 on bad usage or a TM_ISA this CPU does not have.\n";

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

/* name(iters) runs iters rounds of 14 independent chains of op (an FMA, or
 * what the kernels use instead of one) on vectors of type vec, with
 * operands x and y of type arg, and returns GFLOP/s at flops per op. The
 * empty asm statements keep the compiler from folding, reordering or
 * dropping the chains. */
#define PEAK_LOOP(name, isa, vec, arg, one, xv, yv, op, t, flops)             \
    __attribute__((target(isa))) static double name(long iters)               \
    {                                                                         \
        vec a0 = one, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0;   \
        vec a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0; \
        arg x = xv, y = yv;                                                   \
        (void)y;                                                              \
        double t0 = now();                                                    \
        for (long i = 0; i < iters; i++) FMA14(op, t);                        \
        return (double)iters * 14 * (flops) / (now() - t0) * 1e-9;            \
    }

/* The portable kernels are compiled for baseline x86-64: SSE multiplies
 * and adds, no FMA. With 14 accumulators in the 16 xmm registers there is
 * room for one operand and the product only (with two, one accumulator
 * lived on the stack and the loop ran at a third of its speed). */
#define MULADD(acc, p, q) _mm_add_ps(_mm_mul_ps(acc, p), p)
PEAK_LOOP(muladd_loop_sse, "sse2", __m128, __m128, _mm_set1_ps(1.0f), _mm_set1_ps(1e-6f),
          _mm_set1_ps(1e-6f), MULADD, "x", 8)
PEAK_LOOP(fma_loop_avx2, "avx2,fma", __m256, __m256, _mm256_set1_ps(1.0f),
          _mm256_set1_ps(0.999999f), _mm256_set1_ps(1e-6f), _mm256_fmadd_ps, "x", 16)
PEAK_LOOP(fma_loop_avx512, "avx512f,fma", __m512, __m512, _mm512_set1_ps(1.0f),
          _mm512_set1_ps(0.999999f), _mm512_set1_ps(1e-6f), _mm512_fmadd_ps, "v", 32)
/* vdpbf16ps: 16 lanes of two bf16 products and their sums, 64 FLOPs. */
#define DPBF16(acc, p, q) _mm512_dpbf16_ps(acc, p, q)
PEAK_LOOP(dp_loop_avx512bf16, "avx512f,avx512bf16", __m512, __m512bh, _mm512_set1_ps(1.0f),
          (__m512bh)_mm512_set1_epi32(0x3f803f80), (__m512bh)_mm512_set1_epi32(0x33803380),
          DPBF16, "v", 64)

/* --- shapes ------------------------------------------------------------ */

typedef struct {
    char ta, tb;
    int m, n, k;
} shape;

/* A linear layer (in -> out) at `rows` rows, weights stored (out, in) as
 * PyTorch does: forward y = x·W^T is NT (rows, out, in); backward dX = dY·W
 * is NN (rows, in, out) and dW = dY^T·X is TN (out, in, rows). */
static int layer_shapes(shape *s, int rows, int in, int out)
{
    s[0] = (shape){'N', 'T', rows, out, in};
    s[1] = (shape){'N', 'N', rows, in, out};
    s[2] = (shape){'T', 'N', out, in, rows};
    return 3;
}

/* The 784-256-128-10 MLP at batch 128; GPT layers (width 384 with its
 * 1536-wide MLP, width 512, the 256-wide head) at 1024 and 4096 rows
 * (tokens); one head's attention at sequence 128 and head size 32: scores
 * S = Q·K^T and dP = dO·V^T (NT 128x128x32), O = P·V and dQ = dS·K (NN
 * 128x32x128), dV = P^T·dO and dK = dS^T·Q (TN 128x32x128). */
static int all_shapes(shape *s, int quick)
{
    static const int squares[] = {128, 256, 512, 1024, 2048};
    static const int mlp[3][2] = {{784, 256}, {256, 128}, {128, 10}};
    static const int gpt[][3] = {{1024, 384, 1536}, {1024, 1536, 384}, {1024, 384, 384},
                                 {1024, 384, 256},  {4096, 512, 512},  {4096, 512, 1536},
                                 {128, 128, 128}};
    int n = 0, count = quick ? 3 : 5;
    for (int i = 0; i < count; i++) {
        int d = squares[i];
        s[n++] = (shape){'N', 'N', d, d, d};
        s[n++] = (shape){'N', 'T', d, d, d};
        s[n++] = (shape){'T', 'N', d, d, d};
    }
    for (int l = 0; l < 3; l++) n += layer_shapes(s + n, 128, mlp[l][0], mlp[l][1]);
    if (quick) return n;
    for (size_t l = 0; l < sizeof gpt / sizeof gpt[0]; l++)
        n += layer_shapes(s + n, gpt[l][0], gpt[l][1], gpt[l][2]);
    s[n++] = (shape){'N', 'T', 128, 128, 32};  /* S = Q·K^T */
    s[n++] = (shape){'N', 'N', 128, 32, 128};  /* O = P·V, dQ = dS·K */
    s[n++] = (shape){'T', 'N', 128, 32, 128};  /* dV = P^T·dO, dK = dS^T·Q */
    return n;
}

/* --- timing ------------------------------------------------------------ */

/* What a row times: a tm_sgemm backend, or the bf16 GEMM. */
enum { B_BLOCKED, B_OPENBLAS, B_BF16, B_REF, B_COUNT };
static const char *const b_names[B_COUNT] = {"blocked", "openblas", "bf16", "ref"};

typedef struct {
    const float *a, *b;
    const tm_bf16 *ah, *bh; /* a and b rounded to bf16 */
    float *c;
} operands;

static void run(int be, const shape *s, const operands *o, int calls)
{
    static const tm_gemm_backend backend[B_COUNT] = {
        [B_BLOCKED] = TM_GEMM_BLOCKED, [B_OPENBLAS] = TM_GEMM_OPENBLAS, [B_REF] = TM_GEMM_REF};
    int lda = s->ta == 'N' ? s->k : s->m, ldb = s->tb == 'N' ? s->n : s->k;
    for (int i = 0; i < calls; i++) {
        if (be == B_BF16)
            tm_gemm_bf16(s->ta, s->tb, s->m, s->n, s->k, 1.0f, o->ah, TM_DTYPE_BF16, lda, o->bh,
                         TM_DTYPE_BF16, ldb, 0.0f, o->c, s->n);
        else
            tm_sgemm_backend(backend[be], s->ta, s->tb, s->m, s->n, s->k, 1.0f, o->a, lda,
                             o->b, ldb, 0.0f, o->c, s->n);
    }
}

enum { MAX_REPS = 1000, MAX_SHAPES = 64 };

/* blocked, openblas and bf16 everywhere, ref too where it finishes
 * quickly. */
static int backends_for(const shape *s)
{
    return 2.0 * s->m * s->n * s->k <= (double)(1 << 25) ? B_COUNT : B_COUNT - 1;
}

/* Times every backend on one shape, interleaved so a noisy moment hurts all
 * of them alike; returns the median GFLOP/s of each. Small products are
 * timed in batches of calls long enough (about 2 ms) for the clock. */
static void time_shape(const shape *s, const operands *o, int nbe, int reps, double *gflops)
{
    double flops = 2.0 * s->m * s->n * s->k;
    int calls = (int)(4e6 / flops * 50) + 1; /* ~2 ms at 100 GFLOP/s */
    static double t[B_COUNT][MAX_REPS];
    for (int b = 0; b < nbe; b++) run(b, s, o, 1); /* warm caches */
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < nbe; i++) {
            /* Alternate the order too, so neither backend always runs
             * right after the other has warmed (or cooled) the caches. */
            int b = r % 2 ? nbe - 1 - i : i;
            int nc = b == B_REF ? 1 : calls;
            double t0 = now();
            run(b, s, o, nc);
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

static tm_bf16 *to_bf16(const float *x, size_t n)
{
    tm_bf16 *h = aligned_alloc(64, (n * sizeof *h + 63) / 64 * 64);
    if (h != NULL) tm_f32_to_bf16(h, x, n);
    return h;
}

/* The instruction sets whose peaks a row may be read against. */
typedef struct {
    double sse, avx2, avx512, bf16; /* GFLOP/s, best of the run; 0: not run */
} peaks;

static void sample_peaks(peaks *p, int reps, long iters)
{
    for (int r = 0; r < reps; r++) {
        double g = muladd_loop_sse(iters);
        if (g > p->sse) p->sse = g;
        if (tm_isa_supported(TM_ISA_AVX2) && (g = fma_loop_avx2(iters)) > p->avx2) p->avx2 = g;
        if (tm_isa_supported(TM_ISA_AVX512) && (g = fma_loop_avx512(iters)) > p->avx512)
            p->avx512 = g;
        if (tm_isa_supported(TM_ISA_AVX512_BF16) && (g = dp_loop_avx512bf16(iters)) > p->bf16)
            p->bf16 = g;
    }
}

/* OpenBLAS names the kernels it chose at load time (OPENBLAS_CORETYPE
 * overrides its own cpuid check); the ISA column reads them as ours. */
static const char *openblas_isa(void)
{
    static char name[32];
    const char *core = openblas_get_corename();
    size_t i = 0;
    for (; core != NULL && core[i] != '\0' && i + 1 < sizeof name; i++)
        name[i] = (char)tolower((unsigned char)core[i]);
    name[i] = '\0';
    if (strcmp(name, "skylakex") == 0 || strcmp(name, "cooperlake") == 0 ||
        strcmp(name, "sapphirerapids") == 0)
        return "avx512";
    if (strcmp(name, "haswell") == 0 || strcmp(name, "zen") == 0) return "avx2";
    return name;
}

/* The peak a set's rows are read against: the fp32 kernels' FMAs, the bf16
 * kernel's vdpbf16ps, the portable kernels' SSE multiply-adds. */
static double peak_of(const char *isa, const peaks *p)
{
    if (strcmp(isa, "avx512_bf16") == 0) return p->bf16;
    if (strcmp(isa, "avx512") == 0) return p->avx512;
    if (strcmp(isa, "avx2") == 0) return p->avx2;
    return p->sse;
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
    char msg[160];
    if (tm_isa_check_env(msg, sizeof msg) != 0) {
        fprintf(stderr, "bench_gemm: %s\n", msg);
        return 2;
    }
    if (reps < 0) reps = quick ? 3 : 7;

    tm_gemm_thread_init();
    peaks pk = {0};
    muladd_loop_sse(1000000); /* let the clock ramp up */
    sample_peaks(&pk, 9, 10000000);

    static shape shapes[MAX_SHAPES];
    static double g[MAX_SHAPES][B_COUNT];
    int ns = all_shapes(shapes, quick);
    size_t big = 4096 * 1536;
    unsigned seed = 12345;
    operands o = {random_matrix(big, &seed), random_matrix(big, &seed), NULL, NULL,
                  random_matrix(big, &seed)};
    if (o.a != NULL && o.b != NULL) {
        o.ah = to_bf16(o.a, big);
        o.bh = to_bf16(o.b, big);
    }
    if (o.a == NULL || o.b == NULL || o.c == NULL || o.ah == NULL || o.bh == NULL) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        return 1;
    }
    for (int i = 0; i < ns; i++) {
        time_shape(&shapes[i], &o, backends_for(&shapes[i]), reps, g[i]);
        /* One more peak sample per shape: the peak is the best seen over
         * the whole run, so a busy moment at the start cannot lower it. */
        sample_peaks(&pk, 1, 10000000);
    }

    const char *isa[B_COUNT] = {tm_gemm_blocked_isa(), openblas_isa(), tm_gemm_bf16_isa(),
                                "generic"};
    if (csv) {
        puts("backend,layout,m,n,k,gflops,pct_peak,isa");
    } else {
        printf("peaks (1 core, best of the run, GFLOP/s): sse mul+add %.1f", pk.sse);
        if (pk.avx2 > 0) printf(", avx2 fma %.1f", pk.avx2);
        if (pk.avx512 > 0) printf(", avx512 fma %.1f", pk.avx512);
        if (pk.bf16 > 0) printf(", avx512_bf16 vdpbf16ps %.1f", pk.bf16);
        printf("\nkernels: blocked %s, bf16 %s, openblas %s (core %s); pct_peak against the "
               "peak of each row's isa\nmedian of %d, interleaved, warm\n\n",
               isa[B_BLOCKED], isa[B_BF16], isa[B_OPENBLAS], openblas_get_corename(), reps);
        printf("%-9s %-6s %5s %5s %5s %8s %8s  %-12s %s\n", "backend", "layout", "m", "n",
               "k", "gflops", "pct_peak", "isa", "blocked/openblas");
    }
    for (int i = 0; i < ns; i++) {
        const shape *s = &shapes[i];
        for (int b = 0; b < backends_for(s); b++) {
            double pct = 100.0 * g[i][b] / peak_of(isa[b], &pk);
            if (csv) {
                printf("%s,%c%c,%d,%d,%d,%.2f,%.1f,%s\n", b_names[b], s->ta, s->tb, s->m, s->n,
                       s->k, g[i][b], pct, isa[b]);
            } else {
                printf("%-9s %c%c     %5d %5d %5d %8.1f %8.1f  %-12s", b_names[b], s->ta,
                       s->tb, s->m, s->n, s->k, g[i][b], pct, isa[b]);
                if (b == B_BLOCKED) printf(" %.2f", g[i][B_BLOCKED] / g[i][B_OPENBLAS]);
                putchar('\n');
            }
        }
    }
    free((void *)o.a);
    free((void *)o.b);
    free((void *)o.ah);
    free((void *)o.bh);
    free(o.c);
    return 0;
}
