/* bench_precision: the GEMMs of one training step of a GPT (build/train's
 * default: 4 blocks, C 128, T 128, 4 heads, 32 sequences) timed in fp32
 * (tm_sgemm) and in bf16 (tm_gemm_bf16: the weights from their bf16 copy,
 * activations rounded as they are packed), the products the layer kinds
 * run, in their shapes and order. With the step time build/train prints,
 * it gives the GEMMs' share of a step and what bf16 can save. Usage:
 * build/bench_precision [--reps N] [--layers L] [--d-model C] [--context T]
 * [--heads H] [--batch B]. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/bf16.h"
#include "kernels/gemm.h"

static const char usage[] =
    "usage: bench_precision [--reps N] [--layers L] [--d-model C] [--context T]\n"
    "                       [--heads H] [--batch B] [--help]\n"
    "Times the GEMMs of one training step of the GPT (defaults: build/train's,\n"
    "4 blocks, C 128, T 128, 4 heads, batch 32 sequences): per block the\n"
    "four linear layers' forward (NT), input gradient (NN) and weight\n"
    "gradient (TN), attention's per-head products in causal blocks of 32\n"
    "rows, and the head's logits; in fp32 (tm_sgemm) and in bf16\n"
    "(tm_gemm_bf16, weights from a bf16 copy, fp32 accumulation), alternated,\n"
    "median of N repetitions (default 5). Prints the thread's CPU ms per step\n"
    "and GFLOP/s per CPU second.\n";

/* The thread's CPU time: on a shared machine, what the GEMMs cost this
 * thread, whatever else runs on the cores. */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

typedef struct {
    int L, C, T, H, B;
    float *x, *y, *w, *att, *d; /* activations, outputs, weights, T x T, grads */
    tm_bf16 *w16;               /* the weights' bf16 copy */
    double flops;               /* of one step's GEMMs */
} step;

/* C = op(A) op(B): fp32, or bf16 with B (a weight when wb) from the copy. */
static void gemm(step *s, int bf16, char ta, char tb, int m, int n, int k, const float *a,
                 int lda, const float *b, int ldb, int wb, float *c, int ldc)
{
    s->flops += 2.0 * m * n * k;
    if (!bf16) {
        tm_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
        return;
    }
    const void *bb = wb ? (const void *)s->w16 : (const void *)b;
    tm_gemm_bf16(ta, tb, m, n, k, 1.0f, a, TM_DTYPE_F32, lda, bb,
                 wb ? TM_DTYPE_BF16 : TM_DTYPE_F32, ldb, 0.0f, c, ldc);
}

/* A linear layer IN -> OUT on r rows: forward, input and weight gradient. */
static void linear(step *s, int bf16, int r, int in, int out)
{
    gemm(s, bf16, 'N', 'T', r, out, in, s->x, in, s->w, in, 1, s->y, out);
    gemm(s, bf16, 'N', 'N', r, in, out, s->d, out, s->w, in, 1, s->y, in);
    gemm(s, bf16, 'T', 'N', out, in, r, s->d, out, s->x, in, 0, s->w, in);
}

/* One head of one sequence, forward and backward, as kernels/ops_attn.c
 * blocks it (rows in blocks of 32 up to the diagonal). */
static void head(step *s, int bf16)
{
    int T = s->T, hs = s->C / s->H, ld = 3 * s->C;
    for (int r0 = 0; r0 < T; r0 += 32) {
        int r1 = r0 + 32 < T ? r0 + 32 : T;
        gemm(s, bf16, 'N', 'T', r1 - r0, r1, hs, s->x, ld, s->x, ld, 0, s->att, T);
        gemm(s, bf16, 'N', 'N', r1 - r0, hs, r1, s->att, T, s->x, ld, 0, s->y, s->C);
        gemm(s, bf16, 'N', 'T', r1 - r0, r1, hs, s->d, s->C, s->x, ld, 0, s->att, T);
        gemm(s, bf16, 'T', 'N', r1 - r0, hs, T - r0, s->att, T, s->d, s->C, 0, s->y, ld);
        gemm(s, bf16, 'N', 'N', r1 - r0, hs, r1, s->att, T, s->x, ld, 0, s->y, ld);
        gemm(s, bf16, 'T', 'N', r1 - r0, hs, T - r0, s->att, T, s->x, ld, 0, s->y, ld);
    }
}

static void run_step(step *s, int bf16)
{
    int r = s->B * s->T, C = s->C;
    s->flops = 0;
    for (int l = 0; l < s->L; l++) {
        linear(s, bf16, r, C, 3 * C);
        for (int i = 0; i < s->B * s->H; i++) head(s, bf16);
        linear(s, bf16, r, C, C);
        linear(s, bf16, r, C, 4 * C);
        linear(s, bf16, r, 4 * C, C);
    }
    linear(s, bf16, r, C, 256);
}

static long arg(const char *name, const char *v, long lo, long hi)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "bench_precision: %s wants an integer in %ld..%ld, not \"%s\"\n", name,
                lo, hi, v);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    step s = {.L = 4, .C = 128, .T = 128, .H = 4, .B = 32};
    int reps = 5;
    static const struct option opts[] = {
        {"reps", 1, 0, 'r'},    {"layers", 1, 0, 'L'}, {"d-model", 1, 0, 'C'},
        {"context", 1, 0, 'T'}, {"heads", 1, 0, 'H'},  {"batch", 1, 0, 'B'},
        {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case 'r': reps = (int)arg("--reps", optarg, 1, 1000); break;
        case 'L': s.L = (int)arg("--layers", optarg, 1, 64); break;
        case 'C': s.C = (int)arg("--d-model", optarg, 1, 4096); break;
        case 'T': s.T = (int)arg("--context", optarg, 1, 4096); break;
        case 'H': s.H = (int)arg("--heads", optarg, 1, 4096); break;
        case 'B': s.B = (int)arg("--batch", optarg, 1, 4096); break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            fprintf(stderr, "bench_precision: %s %s (--help lists the options)\n",
                    optopt ? "option needs a value:" : "unknown option", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc || s.C % s.H != 0) {
        fprintf(stderr, "bench_precision: %s\n",
                optind < argc ? "unexpected argument" : "--d-model must divide by --heads");
        return 2;
    }
    size_t r = (size_t)s.B * s.T, wide = 4 * (size_t)s.C > 256 ? 4 * (size_t)s.C : 256;
    size_t nw = wide * (size_t)s.C;
    s.x = malloc(r * wide * sizeof(float));
    s.y = malloc(r * wide * sizeof(float));
    s.d = malloc(r * wide * sizeof(float));
    s.w = malloc(nw * sizeof(float));
    s.att = malloc((size_t)s.T * s.T * sizeof(float));
    s.w16 = malloc(nw * sizeof(tm_bf16));
    if (!s.x || !s.y || !s.d || !s.w || !s.att || !s.w16) {
        fprintf(stderr, "bench_precision: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < r * wide; i++)
        s.x[i] = s.d[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < nw; i++) s.w[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)s.T * s.T; i++) s.att[i] = 1.0f / (float)s.T;
    tm_f32_to_bf16(s.w16, s.w, nw);
    tm_gemm_thread_init();
    double *t[2] = {malloc(sizeof(double) * reps), malloc(sizeof(double) * reps)};
    run_step(&s, 0);
    run_step(&s, 1);
    for (int i = 0; i < reps; i++)
        for (int b = 0; b < 2; b++) {
            double t0 = now();
            run_step(&s, b);
            t[b][i] = now() - t0;
        }
    printf("GPT L=%d C=%d T=%d H=%d, batch %d: %.2f GFLOP of GEMMs per training step; bf16 "
           "kernels: %s\nprecision  CPU ms/step (median of %d)  GFLOP/s\n",
           s.L, s.C, s.T, s.H, s.B, s.flops * 1e-9, tm_gemm_bf16_isa(), reps);
    for (int b = 0; b < 2; b++) {
        qsort(t[b], (size_t)reps, sizeof(double), cmp_double);
        double med = reps % 2 ? t[b][reps / 2] : 0.5 * (t[b][reps / 2 - 1] + t[b][reps / 2]);
        printf("%-9s  %10.1f            %8.1f\n", b ? "bf16" : "fp32", med * 1e3,
               s.flops * 1e-9 / med);
    }
    free(t[0]);
    free(t[1]);
    free(s.x);
    free(s.y);
    free(s.d);
    free(s.w);
    free(s.att);
    free(s.w16);
    return 0;
}
