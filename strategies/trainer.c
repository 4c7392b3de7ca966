#include "strategies/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "kernels/optim.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/checkpoint.h"
#include "strategies/rng.h"

/* Evaluation runs in chunks of this many samples. */
#define EVAL_ROWS 1000

typedef struct {
    const tm_train_config *cfg;
    const tm_dataset *train, *test;
    tm_train_result *result;
} job;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double tm_lr_at(const tm_train_config *cfg, long s, long total)
{
    if (cfg->schedule == TM_LR_CONSTANT) return cfg->lr;
    if (s < cfg->warmup_steps) return cfg->lr * (double)(s + 1) / (double)cfg->warmup_steps;
    long span = total - cfg->warmup_steps;
    if (span <= 0) return cfg->lr;
    double progress = (double)(s - cfg->warmup_steps) / (double)span;
    if (progress > 1) progress = 1;
    return cfg->lr * 0.5 * (1.0 + cos(M_PI * progress));
}

int tm_train_check(const tm_train_config *cfg, const tm_dataset *train)
{
    const tm_mlp_config *m = &cfg->model;
    if (cfg->batch < 1) return tm_error(TM_EINVAL, "--batch must be positive");
    if (cfg->micro_batches < 1) return tm_error(TM_EINVAL, "--micro-batches must be positive");
    if (cfg->batch % cfg->micro_batches != 0)
        return tm_error(TM_EINVAL, "--batch %d is not divisible by --micro-batches %d",
                        cfg->batch, cfg->micro_batches);
    if (cfg->epochs < 1) return tm_error(TM_EINVAL, "--epochs must be positive");
    if (cfg->max_steps < 0) return tm_error(TM_EINVAL, "--steps must be positive");
    if (!(cfg->lr > 0) || !isfinite(cfg->lr))
        return tm_error(TM_EINVAL, "--lr must be a positive finite number");
    if (!(cfg->weight_decay >= 0) || !isfinite(cfg->weight_decay))
        return tm_error(TM_EINVAL, "--weight-decay must be a non-negative finite number");
    if (!(cfg->momentum >= 0) || !(cfg->momentum < 1))
        return tm_error(TM_EINVAL, "--momentum must be in [0, 1)");
    if (cfg->warmup_steps < 0) return tm_error(TM_EINVAL, "--warmup-steps must not be negative");
    if (m->widths[0] != train->dim)
        return tm_error(TM_EINVAL, "--model starts with %d inputs but the data has %d",
                        m->widths[0], train->dim);
    if (m->widths[m->n_layers] != train->n_classes)
        return tm_error(TM_EINVAL, "--model ends with %d outputs but the data has %d classes",
                        m->widths[m->n_layers], train->n_classes);
    if (cfg->batch > train->n)
        return tm_error(TM_EINVAL, "--batch %d is larger than the %d training samples", cfg->batch,
                        train->n);
    return TM_OK;
}

/* Copies samples order[0..rows) from host memory into the device's buffers
 * (the host-to-device transfer of a real accelerator). */
static void stage(const tm_dataset *d, const int *order, int rows, float *x, int *labels)
{
    size_t dim = (size_t)d->dim;
    for (int i = 0; i < rows; i++) {
        memcpy(x + (size_t)i * dim, d->images + (size_t)order[i] * dim, dim * sizeof(float));
        labels[i] = d->labels[order[i]];
    }
}

/* The data order of an epoch: a Fisher-Yates shuffle from PCG32 stream
 * 1000 + epoch of the seed, or the files' order. */
static void epoch_order(int *order, int n, uint64_t seed, int epoch, int shuffle)
{
    for (int i = 0; i < n; i++) order[i] = i;
    if (!shuffle) return;
    tm_rng r = tm_rng_seed(seed, 1000u + (uint64_t)epoch);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)tm_rng_below(&r, (uint32_t)i + 1);
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static int evaluate(tm_replica *r, const tm_dataset *d, double *loss, double *acc)
{
    int rows = d->n < EVAL_ROWS ? d->n : EVAL_ROWS;
    float *x = tm_device_alloc(r->dev, (size_t)rows * d->dim * sizeof(float), TM_TAG_ACTIVATION);
    int *labels = tm_device_alloc(r->dev, (size_t)rows * sizeof(int), TM_TAG_ACTIVATION);
    int *order = malloc((size_t)rows * sizeof(int));
    int st = x && labels ? TM_OK : TM_ENOMEM;
    if (order == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate the evaluation order");
    double loss_sum = 0;
    long correct = 0;
    for (int start = 0; st == TM_OK && start < d->n; start += rows) {
        int k = d->n - start < rows ? d->n - start : rows, c;
        double l;
        for (int i = 0; i < k; i++) order[i] = start + i;
        stage(d, order, k, x, labels);
        st = tm_replica_eval(r, x, labels, k, &l, &c);
        loss_sum += l;
        correct += c;
    }
    free(order);
    tm_device_free(r->dev, labels);
    tm_device_free(r->dev, x);
    *loss = loss_sum / d->n;
    *acc = (double)correct / d->n;
    return st;
}

static void optimizer_step(const tm_train_config *cfg, tm_replica *r, double lr, long step)
{
    if (cfg->optimizer == TM_OPT_ADAMW) {
        tm_adamw_params hp = TM_ADAMW_DEFAULTS;
        hp.lr = lr;
        hp.weight_decay = cfg->weight_decay;
        tm_adamw_step(r->params, r->grads, r->opt_state[0], r->opt_state[1], r->n_params, hp,
                      step);
    } else {
        tm_sgd_params hp = {lr, cfg->momentum, cfg->weight_decay};
        tm_sgd_step(r->params, r->grads, r->n_opt_state ? r->opt_state[0] : NULL, r->n_params, hp,
                    step);
    }
}

/* The device's whole run. Everything it allocates for the run is checked
 * before the first step, so a model that does not fit fails at once. */
static int run(tm_device *dev, void *arg)
{
    job *j = arg;
    const tm_train_config *cfg = j->cfg;
    const tm_dataset *train = j->train;
    tm_gemm_thread_init();
    tm_replica r;
    int st = tm_replica_create(&r, dev, &cfg->model, cfg->optimizer, cfg->momentum);
    tm_train_position pos = {0, 0, 0, cfg->seed};
    int resumed = 0;
    if (st == TM_OK && cfg->load_path != NULL)
        st = tm_checkpoint_load(cfg->load_path, &r, cfg->optimizer, &pos, &resumed);
    else if (st == TM_OK)
        tm_mlp_init(&cfg->model, r.params, cfg->seed);
    int micro = cfg->batch / cfg->micro_batches, dim = train->dim;
    float *x = NULL;
    int *labels = NULL, *order = NULL;
    if (st == TM_OK) {
        x = tm_device_alloc(dev, (size_t)micro * dim * sizeof(float), TM_TAG_ACTIVATION);
        labels = tm_device_alloc(dev, (size_t)micro * sizeof(int), TM_TAG_ACTIVATION);
        /* Probe the activation peak of a micro-batch now rather than fail
         * in the middle of the first step. */
        void *probe = x && labels ? tm_device_alloc(dev, tm_replica_activation_bytes(
                                                             &cfg->model, micro),
                                                    TM_TAG_ACTIVATION)
                                  : NULL;
        if (probe == NULL) st = TM_ENOMEM;
        tm_device_free(dev, probe);
        order = malloc((size_t)train->n * sizeof(int));
        if (st == TM_OK && order == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate the data order");
    }
    long per_epoch = train->n / cfg->batch, total = per_epoch * cfg->epochs, taken = 0;
    double train_time = 0, flops0 = tm_cost_totals().flops;
    float grad_scale = 1.0f / (float)cfg->batch;
    while (st == TM_OK && pos.epoch < cfg->epochs &&
           (cfg->max_steps == 0 || taken < cfg->max_steps)) {
        epoch_order(order, train->n, pos.data_seed, pos.epoch, cfg->shuffle);
        double epoch_loss = 0, epoch_time = 0;
        long epoch_steps = 0;
        while (st == TM_OK && pos.epoch_step < per_epoch &&
               (cfg->max_steps == 0 || taken < cfg->max_steps)) {
            double t0 = now_s(), loss_sum = 0, lr = tm_lr_at(cfg, pos.step, total);
            memset(r.grads, 0, r.n_params * sizeof(float));
            const int *batch = order + pos.epoch_step * cfg->batch;
            for (int m = 0; st == TM_OK && m < cfg->micro_batches; m++) {
                double l;
                stage(train, batch + m * micro, micro, x, labels);
                st = tm_replica_train_micro(&r, x, labels, micro, grad_scale, &l);
                loss_sum += l;
            }
            if (st != TM_OK) break;
            pos.step++;
            pos.epoch_step++;
            taken++;
            epoch_steps++;
            optimizer_step(cfg, &r, lr, pos.step);
            double dt = now_s() - t0;
            train_time += dt;
            epoch_time += dt;
            epoch_loss += loss_sum / cfg->batch;
            if (cfg->on_step != NULL) {
                tm_step_info info = {pos.step, pos.epoch, pos.epoch_step, per_epoch, total,
                                     loss_sum / cfg->batch, lr,
                                     (double)taken * cfg->batch / train_time};
                cfg->on_step(cfg->ctx, &info);
            }
        }
        if (st != TM_OK || pos.epoch_step < per_epoch) break;
        tm_epoch_info info = {pos.epoch, epoch_steps ? epoch_loss / epoch_steps : 0, 0, 0,
                              epoch_time > 0 ? (double)epoch_steps * cfg->batch / epoch_time : 0};
        st = evaluate(&r, j->test, &info.test_loss, &info.test_acc);
        if (st == TM_OK && cfg->on_epoch != NULL) cfg->on_epoch(cfg->ctx, &info);
        pos.epoch++;
        pos.epoch_step = 0;
    }
    tm_train_result *res = j->result;
    if (st == TM_OK) st = evaluate(&r, j->test, &res->test_loss, &res->test_acc);
    if (st == TM_OK && cfg->save_path != NULL)
        st = tm_checkpoint_save(cfg->save_path, &r, cfg->optimizer, &pos);
    res->steps = taken;
    res->train_seconds = train_time;
    res->samples_per_s = train_time > 0 ? (double)taken * cfg->batch / train_time : 0;
    res->gflops = train_time > 0 ? (tm_cost_totals().flops - flops0) / train_time * 1e-9 : 0;
    (void)resumed;
    free(order);
    tm_device_free(dev, labels);
    tm_device_free(dev, x);
    tm_replica_destroy(&r);
    tm_arena_stats_get(tm_device_arena(dev), &res->memory);
    return st;
}

int tm_train(const tm_train_config *cfg, const tm_dataset *train, const tm_dataset *test,
             tm_train_result *out, char *error, size_t error_size)
{
    memset(out, 0, sizeof *out);
    error[0] = '\0';
    int st = tm_train_check(cfg, train);
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
        return st;
    }
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = 1;
    wc.mem_cap = cfg->mem_cap;
    tm_world *w;
    st = tm_world_create(&w, &wc);
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
        return st;
    }
    job j = {cfg, train, test, out};
    st = tm_world_run(w, run, &j);
    if (st != TM_OK) snprintf(error, error_size, "%s", tm_world_error(w));
    tm_world_destroy(w);
    return st;
}
