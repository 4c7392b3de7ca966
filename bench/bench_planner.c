/* bench_planner: the planner (strategies/planner.h) against a
 * run-everything sweep of the same space. For the MLP and the GPT on N
 * devices: the planner's wall time, then every candidate it found valid
 * and fitting (dominated ones too) trained for real for TM_PLAN_STEP
 * steps and timed alone, the sweep's best modeled step against the
 * planner's pick, and a dry step's wall time against a real step's
 * (medians over the candidates, each run's wall time per step). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/gpt.h"
#include "strategies/idx.h"
#include "strategies/mlp.h"
#include "strategies/planner.h"
#include "strategies/recipe.h"
#include "strategies/trainer.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void on_step(void *ctx, const tm_step_info *info)
{
    double *s = ctx;
    if (info->step == TM_PLAN_STEP) *s = info->modeled_step_s;
}

/* One timed run of pt, dry or real: its wall seconds and step time. */
static int timed_run(const tm_plan_request *req, const tm_plan_point *pt, int dry,
                     const tm_data *test, double *wall, double *step)
{
    tm_train_config c = tm_plan_config(req, pt);
    c.dry_run = dry;
    c.ctx = step;
    c.on_step = on_step;
    tm_train_result r;
    char err[2048];
    double t0 = now_s();
    int st = tm_train(&c, req->train, test, &r, err, sizeof err);
    *wall = now_s() - t0;
    if (st != TM_OK) fprintf(stderr, "bench_planner: %s\n", err);
    tm_train_result_free(&r);
    return st;
}

static int bench(const char *name, const tm_model *m, const tm_model *m_sp, const tm_data *train,
                 const tm_data *test, int devices, int batch, size_t cap, int gpt)
{
    tm_model v[2][3];
    tm_plan_request req = {0};
    tm_plan_models(&req, v, m, m_sp);
    tm_train_config recipe = {0};
    tm_clock_config_default(&recipe.clock);
    tm_train_recipe(&recipe, gpt);
    req.train = train;
    req.devices = devices;
    req.batch = batch;
    req.mem_cap = cap;
    req.precisions = 1 << TM_PRECISION_FP32;
    req.recipe = &recipe;
    double t0 = now_s();
    tm_plan_candidate *list;
    int n;
    if (tm_plan_search(&req, &list, &n) != TM_OK) {
        fprintf(stderr, "bench_planner: %s\n", tm_error_message());
        return 1;
    }
    double plan_s = now_s() - t0;
    double *dry = malloc(sizeof(double) * (size_t)n), *real = malloc(sizeof(double) * (size_t)n);
    int n_timed = 0, n_swept = 0, status = 0;
    double sweep_s = 0, best = 0;
    for (int i = 0; dry != NULL && real != NULL && i < n && list[i].fits; i++) {
        double wall, step;
        if (timed_run(&req, &list[i].pt, 0, test, &wall, &step) != TM_OK) {
            status = 1;
            continue;
        }
        sweep_s += wall;
        n_swept++;
        if (n_swept == 1 || step < best) best = step;
        if (list[i].dominated) continue;
        double dwall, dstep;
        if (timed_run(&req, &list[i].pt, 1, test, &dwall, &dstep) != TM_OK) {
            status = 1;
            continue;
        }
        dry[n_timed] = dwall / TM_PLAN_STEP;
        real[n_timed++] = wall / TM_PLAN_STEP;
    }
    char flags[256];
    tm_plan_flags(&list[0].pt, flags, sizeof flags);
    printf("%-28s %4d %6d %6d %9.2f %9.2f %8.4f %10.6f %10.6f %+8.3f%% %9.4f %9.4f  %s\n", name,
           devices, n, n_swept, plan_s, sweep_s, plan_s / sweep_s, 1e3 * list[0].step_s,
           1e3 * best, 100 * (list[0].step_s / best - 1), 1e3 * median(dry, n_timed),
           1e3 * median(real, n_timed), flags);
    fflush(stdout);
    free(dry);
    free(real);
    free(list);
    return status;
}

int main(int argc, char **argv)
{
    int devices = 4, which = 3; /* bit 0: the MLP, bit 1: the GPT */
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && strcmp(argv[i], "--devices") == 0) {
            devices = atoi(argv[i + 1]);
        } else if (i + 1 < argc && strcmp(argv[i], "--model") == 0 &&
                   (strcmp(argv[i + 1], "mlp") == 0 || strcmp(argv[i + 1], "gpt") == 0)) {
            which = argv[i + 1][0] == 'm' ? 1 : 2;
        } else {
            fprintf(stderr, "usage: bench_planner [--devices N] [--model mlp|gpt]\n");
            return 2;
        }
    }
    if (devices < 1 || devices > 64) {
        fprintf(stderr, "bench_planner: --devices is 1 to 64\n");
        return 2;
    }
    printf("%-28s %4s %6s %6s %9s %9s %8s %10s %10s %9s %9s %9s  %s\n", "model", "N", "cands",
           "swept", "plan s", "sweep s", "ratio", "pick ms", "best ms", "pick/best", "dry ms",
           "real ms", "pick");
    int status = 0;
    /* The MLP of build/train, batch 128, on synthetic images. */
    tm_mlp_config mc;
    const char *why;
    tm_model mlp;
    tm_dataset images, test_images;
    if (tm_mlp_parse("784,256,128,10", &mc, &why) != 0 || tm_mlp_model(&mlp, &mc) != TM_OK ||
        tm_dataset_synthetic(&images, 3 * 128, 784, 10, 1, 0) != TM_OK ||
        tm_dataset_synthetic(&test_images, 128, 784, 10, 1, 1) != TM_OK) {
        fprintf(stderr, "bench_planner: %s\n", tm_error_message());
        return 1;
    }
    tm_data train, test;
    tm_data_images(&train, &images);
    tm_data_images(&test, &test_images);
    if (which & 1)
        status |= bench("mlp 784,256,128,10 b128", &mlp, NULL, &train, &test, devices, 128,
                        64 << 20, 0);
    /* The GPT of build/train (L 4, H 4, C 128, T 128), batch 32. */
    tm_gpt_config g = {4, 4, 128, 128, 0}, g_sp = {4, 4, 128, 128, 1};
    tm_model gpt, gpt_sp;
    tm_corpus corpus;
    size_t len = (size_t)(3 * 32 + 2) * 128 + 1;
    tm_data text, text_test;
    if (tm_gpt_model(&gpt, &g) != TM_OK || tm_gpt_model(&gpt_sp, &g_sp) != TM_OK ||
        tm_corpus_synthetic(&corpus, len, 1, 0) != TM_OK ||
        tm_data_text(&text, corpus.bytes, len, 128, "train") != TM_OK) {
        fprintf(stderr, "bench_planner: %s\n", tm_error_message());
        return 1;
    }
    text_test = tm_data_head(&text, 32);
    if (which & 2)
        status |= bench("gpt L4 H4 C128 T128 b32", &gpt, &gpt_sp, &text, &text_test, devices, 32,
                        (size_t)64 << 20, 1);
    tm_model_destroy(&mlp);
    tm_model_destroy(&gpt);
    tm_model_destroy(&gpt_sp);
    tm_corpus_free(&corpus);
    tm_dataset_free(&images);
    tm_dataset_free(&test_images);
    return status;
}
