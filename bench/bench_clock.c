/* bench_clock: where the modeled clock's defaults come from, and how well
 * modeled time tracks wall time. Measures on this machine (1) the compute
 * rate and memory bandwidth the kernels of a training step reach, kernel by
 * kernel through the cost hook, (2) a link's latency and bandwidth between
 * two devices, and prints them beside the defaults; then (3) trains the
 * Fashion-MNIST demo model with dp = 2 on 2 devices and compares the wall
 * and modeled throughput epoch by epoch. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "kernels/isa.h"
#include "kernels/ops.h"
#include "kernels/optim.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/idx.h"
#include "strategies/mlp.h"
#include "strategies/trainer.h"

static const char usage[] =
    "usage: bench_clock [--model W0,W1,...] [--rows N] [--epochs N] [--data-dir DIR]\n"
    "Measures what the modeled clock's defaults stand for, on this machine:\n"
    "  kernels  the FLOP rate of the compute-bound kernels (GEMMs) and the byte\n"
    "           rate of the bandwidth-bound ones (bias, activations, loss,\n"
    "           optimizer) in the forward, backward and SGD step of --model\n"
    "           (784,256,128,10) at --rows rows (64: the demo's batch 128 over\n"
    "           dp 2), each the median over 50 steps, FLOPs and bytes as the\n"
    "           kernels count them for the modeled clock; first on one thread,\n"
    "           then on two devices at once (the mean of their medians: what\n"
    "           each gets when both cores work, less if they are SMT siblings);\n"
    "  link     one-way latency (half a 32-byte ping-pong) and bandwidth (1 MiB\n"
    "           exchanged both ways at once) between two devices, medians;\n"
    "  tracking the demo model trained with dp 2 on 2 devices for --epochs (3)\n"
    "           epochs: wall and modeled samples/s per epoch and their ratio.\n";

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

/* Per-call timing: each kernel call is timed whole, and the cost hook tells
 * what it charged. A call doing at least 2 FLOPs per byte is compute-bound
 * on any machine we model (the GEMM-led calls here do 20-60; a linear's
 * bias and ReLU ride along in its time), the others bandwidth-bound (under
 * 0.5 FLOPs per byte). */
typedef struct {
    double call_flops, call_bytes; /* charged by the call being timed */
    double flops, flops_s;         /* compute-bound calls */
    double bytes, bytes_s;         /* bandwidth-bound calls */
} kernel_clock;

static _Thread_local kernel_clock kc;

static void on_kernel(void *ctx, double flops, double bytes)
{
    (void)ctx;
    kc.call_flops += flops;
    kc.call_bytes += bytes;
}

#define TIMED(call)                                                            \
    do {                                                                       \
        kc.call_flops = kc.call_bytes = 0;                                     \
        double t0_ = now();                                                    \
        call;                                                                  \
        double dt_ = now() - t0_;                                              \
        if (kc.call_flops >= 2 * kc.call_bytes) {                              \
            kc.flops += kc.call_flops;                                         \
            kc.flops_s += dt_;                                                 \
        } else {                                                               \
            kc.bytes += kc.call_bytes;                                         \
            kc.bytes_s += dt_;                                                 \
        }                                                                      \
    } while (0)

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) * 0x1p-24f - 0.5f;
    }
}

/* One SGD step of the MLP on `rows` rows, kernel by kernel as the trainer's
 * single-device stage runs it. */
static void mlp_step(const tm_mlp_config *m, int rows, float *params, float *grads, float *mom,
                     float **acts, float *dy, float *dx, const int *labels)
{
    int L = m->n_layers;
    for (int l = 0; l < L; l++) {
        const float *w = params + tm_mlp_weight_offset(m, l),
                    *b = params + tm_mlp_bias_offset(m, l);
        if (l < L - 1)
            TIMED(tm_linear_relu_forward(acts[l + 1], acts[l], w, b, rows, m->widths[l],
                                         m->widths[l + 1]));
        else
            TIMED(tm_linear_forward(acts[l + 1], acts[l], w, b, rows, m->widths[l],
                                    m->widths[l + 1]));
    }
    TIMED(tm_softmax_xent_forward_backward(dy, NULL, acts[L], labels, rows, m->widths[L],
                                           1.0f / rows));
    for (int l = L - 1; l >= 0; l--) {
        const float *w = params + tm_mlp_weight_offset(m, l);
        float *dw = grads + tm_mlp_weight_offset(m, l), *db = grads + tm_mlp_bias_offset(m, l);
        float *din = l > 0 ? dx : NULL;
        if (din != NULL) memset(din, 0, (size_t)rows * m->widths[l] * sizeof(float));
        TIMED(tm_linear_backward(din, dw, db, dy, acts[l], w, rows, m->widths[l],
                                 m->widths[l + 1]));
        if (l > 0) {
            TIMED(tm_relu_backward_inplace(dx, acts[l], (size_t)rows * m->widths[l]));
            memcpy(dy, dx, (size_t)rows * m->widths[l] * sizeof(float));
        }
    }
    tm_sgd_params hp = {0.01, 0.9, 5e-4};
    TIMED(tm_sgd_step(params, grads, mom, tm_mlp_param_count(m), hp, 2));
}

static int measure_kernels(const tm_mlp_config *m, int rows, double *gflops, double *gbps)
{
    size_t np = tm_mlp_param_count(m), widest = 0;
    for (int l = 0; l <= m->n_layers; l++)
        if ((size_t)m->widths[l] > widest) widest = (size_t)m->widths[l];
    float *params = malloc(np * sizeof(float)), *grads = calloc(np, sizeof(float));
    float *mom = calloc(np, sizeof(float)), *dy = malloc(rows * widest * sizeof(float));
    float *dx = malloc(rows * widest * sizeof(float)), *acts[TM_MAX_LAYERS + 1] = {0};
    int *labels = malloc(sizeof(int) * (size_t)rows),
        ok = params && grads && mom && dy && dx && labels;
    for (int l = 0; ok && l <= m->n_layers; l++) {
        acts[l] = malloc((size_t)rows * m->widths[l] * sizeof(float));
        ok = acts[l] != NULL;
    }
    if (ok) {
        tm_mlp_init(m, params, 1);
        fill(acts[0], (size_t)rows * m->widths[0], 7);
        for (int i = 0; i < rows; i++) labels[i] = i % m->widths[m->n_layers];
        enum { STEPS = 50 };
        double fr[STEPS], br[STEPS];
        tm_cost_set_hook(on_kernel, NULL);
        for (int s = -5; s < STEPS; s++) {
            memset(&kc, 0, sizeof kc);
            mlp_step(m, rows, params, grads, mom, acts, dy, dx, labels);
            if (s < 0) continue; /* warm-up */
            fr[s] = kc.flops / kc.flops_s * 1e-9;
            br[s] = kc.bytes / kc.bytes_s * 1e-9;
        }
        tm_cost_set_hook(NULL, NULL);
        *gflops = median(fr, STEPS);
        *gbps = median(br, STEPS);
    }
    for (int l = 0; l <= m->n_layers; l++) free(acts[l]);
    free(params);
    free(grads);
    free(mom);
    free(dy);
    free(dx);
    free(labels);
    return ok ? 0 : -1;
}

/* The same on both devices of a 2-device world at once: what each device
 * gets when they share the machine (on an SMT pair, about half). */
typedef struct {
    const tm_mlp_config *m;
    int rows;
    double gflops[2], gbps[2];
} pair_kernels;

static int pair_body(tm_device *dev, void *arg)
{
    pair_kernels *p = arg;
    int r = tm_device_id(dev);
    tm_gemm_thread_init();
    TM_CHECK(tm_barrier(tm_device_comm(dev)));
    if (measure_kernels(p->m, p->rows, &p->gflops[r], &p->gbps[r]) != 0)
        return tm_error(TM_EHOSTMEM, "out of host memory");
    return TM_OK;
}

/* --- link: two devices. */
typedef struct {
    double latency_us, gbps;
} link_result;

static int link_body(tm_device *dev, void *arg)
{
    link_result *out = arg;
    tm_comm *c = tm_device_comm(dev);
    int r = tm_comm_rank(c), peer = 1 - r;
    enum { PINGS = 2000, EXCHANGES = 200 };
    /* Each device its own samples; rank 0's are the ones reported. */
    static double ping[2][PINGS], xchg[2][EXCHANGES];
    size_t big = (size_t)1 << 20;
    char small[32] = {0};
    float *a = tm_device_alloc(dev, big, TM_TAG_COMM), *b = tm_device_alloc(dev, big, TM_TAG_COMM);
    if (a == NULL || b == NULL) return TM_ENOMEM;
    memset(a, 1, big);
    for (int i = 0; i < PINGS; i++) {
        double t0 = now();
        if (r == 0) {
            TM_CHECK(tm_send(c, small, sizeof small, peer));
            TM_CHECK(tm_recv(c, small, sizeof small, peer));
        } else {
            TM_CHECK(tm_recv(c, small, sizeof small, peer));
            TM_CHECK(tm_send(c, small, sizeof small, peer));
        }
        ping[r][i] = (now() - t0) / 2;
    }
    for (int i = 0; i < EXCHANGES; i++) {
        TM_CHECK(tm_barrier(c));
        double t0 = now();
        TM_CHECK(tm_sendrecv(c, a, big, peer, b, big, peer));
        xchg[r][i] = now() - t0;
    }
    if (r == 0) {
        out->latency_us = 1e6 * median(ping[0], PINGS);
        out->gbps = (double)big / median(xchg[0], EXCHANGES) * 1e-9;
    }
    tm_device_free(dev, a);
    tm_device_free(dev, b);
    return TM_OK;
}

static int run_pair(tm_device_fn fn, void *arg)
{
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = 2;
    wc.mem_cap = (size_t)8 << 20;
    tm_world *w;
    int st = tm_world_create(&w, &wc);
    if (st == TM_OK) st = tm_world_run(w, fn, arg);
    if (st != TM_OK)
        fprintf(stderr, "bench_clock: %s\n", w ? tm_world_error(w) : tm_error_message());
    tm_world_destroy(w);
    return st;
}

/* --- tracking: wall against modeled, epoch by epoch. */
typedef struct {
    double wall[64], modeled[64];
    int n;
} epochs;

static void on_epoch(void *ctx, const tm_epoch_info *e)
{
    epochs *x = ctx;
    if (x->n < 64) {
        x->wall[x->n] = e->samples_per_s;
        x->modeled[x->n] = e->modeled_samples_per_s;
        x->n++;
    }
}

static int track(const char *dir, int n_epochs)
{
    tm_dataset train = {0}, test = {0};
    if (tm_dataset_load(&train, dir, "train") != TM_OK ||
        tm_dataset_load(&test, dir, "t10k") != TM_OK) {
        fprintf(stderr, "bench_clock: %s\n", tm_error_message());
        tm_dataset_free(&train);
        return 2;
    }
    double mean, sd;
    tm_dataset_stats(&train, &mean, &sd);
    tm_dataset_standardize(&train, mean, sd);
    tm_dataset_standardize(&test, mean, sd);
    epochs x = {0};
    tm_train_config cfg = {0};
    const char *why;
    tm_mlp_config mlp;
    tm_model net;
    tm_mlp_parse("784,256,128,10", &mlp, &why);
    if (tm_mlp_model(&net, &mlp) != TM_OK) {
        fprintf(stderr, "bench_clock: %s\n", tm_error_message());
        return 1;
    }
    cfg.model = &net;
    cfg.beta1 = 0.9;
    cfg.beta2 = 0.999;
    cfg.dp = 2;
    cfg.pp = cfg.tp = 1;
    cfg.schedule = TM_SCHED_1F1B;
    cfg.epochs = n_epochs;
    cfg.batch = 128;
    cfg.micro_batches = 1;
    cfg.optimizer = TM_OPT_SGD;
    cfg.lr = 0.05;
    cfg.lr_schedule = TM_LR_COSINE;
    cfg.warmup_steps = 200;
    cfg.momentum = 0.9;
    cfg.weight_decay = 5e-4;
    cfg.seed = 1;
    cfg.shuffle = 1;
    cfg.mem_cap = (size_t)64 << 20;
    cfg.ctx = &x;
    cfg.on_epoch = on_epoch;
    tm_train_result res;
    char err[2048];
    tm_data train_data, test_data;
    tm_data_images(&train_data, &train);
    tm_data_images(&test_data, &test);
    int st = tm_train(&cfg, &train_data, &test_data, &res, err, sizeof err);
    tm_dataset_free(&train);
    tm_dataset_free(&test);
    tm_model_destroy(&net);
    if (st != TM_OK) {
        fprintf(stderr, "bench_clock: %s\n", err);
        tm_train_result_free(&res);
        return 1;
    }
    double ratio[64];
    printf("\ntracking: 784,256,128,10, dp 2 on 2 devices, batch 128, default clock\n");
    printf("%-6s %14s %16s %14s\n", "epoch", "wall_sps", "modeled_sps", "wall/modeled");
    for (int i = 0; i < x.n; i++) {
        ratio[i] = x.wall[i] / x.modeled[i];
        printf("%-6d %14.0f %16.0f %14.3f\n", i + 1, x.wall[i], x.modeled[i], ratio[i]);
    }
    printf("median wall/modeled step-time ratio %.3f (modeled step %.3f ms)\n",
           1 / median(ratio, x.n), 1e3 * res.modeled_seconds / (double)res.steps);
    tm_train_result_free(&res);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = "784,256,128,10", *dir = TM_DATASET_DEFAULT_DIR, *why;
    int rows = 64, n_epochs = 3;
    static const struct option opts[] = {{"model", 1, 0, 'm'}, {"rows", 1, 0, 'r'},
                                         {"epochs", 1, 0, 'e'}, {"data-dir", 1, 0, 'd'},
                                         {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        char *end = NULL;
        switch (c) {
        case 'm': model = optarg; break;
        case 'r': rows = (int)strtol(optarg, &end, 10); break;
        case 'e': n_epochs = (int)strtol(optarg, &end, 10); break;
        case 'd': dir = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            fprintf(stderr, "bench_clock: bad option %s (see --help)\n", argv[optind - 1]);
            return 2;
        }
        if (end != NULL && (*end != '\0' || end == optarg)) {
            fprintf(stderr, "bench_clock: %s wants a number, not \"%s\"\n", argv[optind - 2],
                    optarg);
            return 2;
        }
    }
    if (optind < argc || rows < 1 || rows > 1 << 16 || n_epochs < 1 || n_epochs > 64) {
        fprintf(stderr,
                "bench_clock: bad arguments: --rows 1..65536, --epochs 1..64 (see --help)\n");
        return 2;
    }
    char isa_msg[160];
    if (tm_isa_check_env(isa_msg, sizeof isa_msg) != 0) {
        fprintf(stderr, "bench_clock: %s\n", isa_msg);
        return 2;
    }
    tm_mlp_config m;
    if (tm_mlp_parse(model, &m, &why) != 0) {
        fprintf(stderr, "bench_clock: --model \"%s\": %s\n", model, why);
        return 2;
    }
    tm_clock_config def;
    tm_clock_config_default(&def);
    tm_gemm_thread_init();
    double gflops, gbps;
    if (measure_kernels(&m, rows, &gflops, &gbps) != 0) {
        fprintf(stderr, "bench_clock: out of host memory\n");
        return 1;
    }
    pair_kernels pair = {&m, rows, {0, 0}, {0, 0}};
    if (run_pair(pair_body, &pair) != TM_OK) return 1;
    link_result link = {0};
    if (run_pair(link_body, &link) != TM_OK) return 1;
    printf("%-22s %12s %12s %8s\n", "quantity", "measured", "default", "ratio");
    printf("%-22s %12.1f %12.1f %8.2f\n", "device_gflops", gflops, def.device_gflops,
           gflops / def.device_gflops);
    printf("%-22s %12.1f %12.1f %8.2f\n", "device_gbps", gbps, def.device_gbps,
           gbps / def.device_gbps);
    double pg = 0.5 * (pair.gflops[0] + pair.gflops[1]), pb = 0.5 * (pair.gbps[0] + pair.gbps[1]);
    printf("%-22s %12.1f %12.1f %8.2f\n", "device_gflops, 2 busy", pg, def.device_gflops,
           pg / def.device_gflops);
    printf("%-22s %12.1f %12.1f %8.2f\n", "device_gbps, 2 busy", pb, def.device_gbps,
           pb / def.device_gbps);
    printf("%-22s %12.1f %12.1f %8.2f\n", "link_gbps", link.gbps, def.link_gbps,
           link.gbps / def.link_gbps);
    printf("%-22s %12.2f %12.2f %8.2f\n", "link_latency_us", link.latency_us, def.link_latency_us,
           link.latency_us / def.link_latency_us);
    return track(dir, n_epochs);
}
