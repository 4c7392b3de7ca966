/* Optimizer offload: with the optimizer state in each device's host arena
 * the run trains bitwise the same model as without (losses, weights and
 * optimizer state, SGD with momentum and AdamW) on one device and on meshes
 * with dp, pp, tp and every ZeRO stage; the device holds no optimizer bytes
 * and the host arena the state's; the host link carries 4 bytes per
 * gradient out and 4 per parameter back, in modeled time bytes / link
 * bandwidth; checkpoints are the one-device checkpoint and resume with or
 * without offload; a host arena too small, or a flag without the other, is
 * refused before anything runs. In bf16 the fp32 masters move to the host
 * arena too: the run stays within the README's bound of bf16 without
 * offload on meshes with dp, pp (1F1B, GPipe, zb-h1), tp with sequence
 * parallelism, recomputation and ZeRO 1, 2 and 3; the device's tags are
 * the predicted ones (param 0); the host link carries 4 bytes out and 2
 * back; checkpoints resume bit for bit; a host arena too small for the
 * masters is refused. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/clock.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/plan.h"
#include "strategies/safetensors.h"
#include "strategies/trainer.h"
#include "strategies/zero.h"
#include "tests/models.h"
#include "tests/training.h"

#define MLP "12,16,16,16,10"
#define STEPS (SANITIZED ? 3 : 12)
#define HOST_CAP ((size_t)16 << 20)

static char ref_path[128], got_path[128], mid_path[128];

static void setup(void)
{
    /* 203 test images: uneven over the replicas. */
    training_data_load(20000, 18000, 300, 16, 5, 1024, 203, 1);
    long pid = (long)getpid();
    snprintf(ref_path, sizeof ref_path, "/tmp/tm_offload_ref_%ld.safetensors", pid);
    snprintf(got_path, sizeof got_path, "/tmp/tm_offload_got_%ld.safetensors", pid);
    snprintf(mid_path, sizeof mid_path, "/tmp/tm_offload_mid_%ld.safetensors", pid);
}

static void teardown(void)
{
    training_data_free();
    unlink(ref_path);
    unlink(got_path);
    unlink(mid_path);
}

/* Clipping and weight decay low enough to bite, so that a wrong norm,
 * decay or moment on any shard shows. */
static tm_train_config config(int gpt, tm_optimizer opt, int dp, int pp, int tp, int m, int zero,
                              int offload)
{
    tm_train_config c = {0};
    c.model = gpt ? gpt_model_sp(2, 2, 16, 16, tp > 1) : mlp_model(MLP, TM_ACT_GELU);
    c.dp = dp;
    c.pp = pp;
    c.tp = tp;
    c.zero = zero;
    c.schedule = TM_SCHED_1F1B;
    c.epochs = 10;
    c.max_steps = STEPS;
    c.batch = gpt ? 8 : 32;
    c.micro_batches = m;
    c.optimizer = opt;
    c.lr = opt == TM_OPT_ADAMW ? 3e-3 : 0.05;
    c.lr_schedule = TM_LR_COSINE;
    c.warmup_steps = 3;
    c.min_lr = 3e-4;
    c.momentum = 0.9;
    c.beta1 = 0.9;
    c.beta2 = 0.99;
    c.weight_decay = 0.1;
    c.clip_grad = gpt ? 0.5 : 0.2;
    c.seed = 5;
    c.shuffle = 1;
    c.mem_cap = 16 << 20;
    if (offload) {
        c.offload = TM_OFFLOAD_OPTIMIZER;
        c.host_mem_cap = HOST_CAP;
    }
    return c;
}

/* Whether two checkpoints hold the same tensors with the same bytes. */
static int same_checkpoint(const char *a_path, const char *b_path)
{
    tm_st_file *a, *b;
    cr_assert_eq(tm_safetensors_open(&a, a_path), TM_OK, "%s", tm_error_message());
    cr_assert_eq(tm_safetensors_open(&b, b_path), TM_OK, "%s", tm_error_message());
    int same = tm_st_count(a) == tm_st_count(b);
    for (int i = 0; same && i < tm_st_count(b); i++) {
        const tm_st_info *tb = tm_st_at(b, i), *ta = tm_st_find(a, tb->name);
        same = ta != NULL && ta->nbytes == tb->nbytes &&
               memcmp(ta->data, tb->data, tb->nbytes) == 0;
        if (!same) cr_log_warn("tensor %s differs", tb->name);
    }
    tm_safetensors_close(a);
    tm_safetensors_close(b);
    return same;
}

static int same_losses(const losses *a, const losses *b)
{
    if (a->n != b->n) return 0;
    return memcmp(a->loss, b->loss, sizeof(double) * (size_t)a->n) == 0;
}

typedef struct {
    int dp, pp, tp, m, zero;
} mesh;

/* Each mesh without offload, then with it: the same bits. */
static void bitwise(int gpt, tm_optimizer opt, const mesh *meshes, int n)
{
    for (int i = 0; i < n; i++) {
        const mesh *g = &meshes[i];
        losses ref = {0}, got = {0};
        cr_assert_eq(train_run(config(gpt, opt, g->dp, g->pp, g->tp, g->m, g->zero, 0), &ref, ref_path,
                         NULL), TM_OK);
        cr_assert_eq(ref.n, STEPS);
        int st = train_run(config(gpt, opt, g->dp, g->pp, g->tp, g->m, g->zero, 1), &got, got_path, NULL);
        cr_expect_eq(st, TM_OK, "dp=%d pp=%d tp=%d ZeRO-%d with offload failed", g->dp, g->pp,
                     g->tp, g->zero);
        if (st != TM_OK) continue;
        cr_expect(same_losses(&got, &ref), "%s %s dp=%d pp=%d tp=%d ZeRO-%d: losses differ",
                  gpt ? "gpt" : "mlp", tm_optimizer_name(opt), g->dp, g->pp, g->tp, g->zero);
        cr_expect(same_checkpoint(got_path, ref_path),
                  "%s %s dp=%d pp=%d tp=%d ZeRO-%d: checkpoints differ", gpt ? "gpt" : "mlp",
                  tm_optimizer_name(opt), g->dp, g->pp, g->tp, g->zero);
    }
}

static const mesh mlp_full[] = {{1, 1, 1, 1, 0}, {2, 1, 1, 2, 0}, {2, 1, 1, 2, 1},
                                {4, 1, 1, 1, 2}, {2, 2, 1, 2, 3}, {2, 2, 2, 4, 1},
                                {1, 2, 2, 2, 0}};
static const mesh mlp_few[] = {{1, 1, 1, 1, 0}, {2, 2, 1, 2, 3}};
static const mesh gpt_full[] = {{1, 1, 1, 1, 0}, {1, 2, 1, 2, 0}, {2, 1, 2, 2, 1},
                                {2, 2, 1, 2, 2}, {2, 1, 1, 2, 3}, {2, 2, 2, 2, 3}};
static const mesh gpt_few[] = {{1, 2, 1, 2, 0}, {2, 2, 1, 2, 2}};

#define MESHES(full, few) SANITIZED ? few : full, \
    SANITIZED ? (int)(sizeof few / sizeof few[0]) : (int)(sizeof full / sizeof full[0])

/* Interleaved 1F1B with two chunks per device: the host arena holds each
 * chunk's state (ZeRO: its shards) in turn; the same bits as without. */
Test(offload, virtual_stages_are_bitwise_the_run_without, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const mesh meshes[] = {{1, 2, 1, 2, 0}, {2, 2, 1, 2, 1}, {2, 2, 2, 2, 3}};
    for (size_t i = 0; i < sizeof meshes / sizeof meshes[0]; i++) {
        const mesh *g = &meshes[i];
        losses ref = {0}, got = {0};
        tm_train_config a = config(0, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero, 0);
        tm_train_config b = config(0, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero, 1);
        a.schedule = b.schedule = TM_SCHED_INTERLEAVED_1F1B;
        a.virtual_stages = b.virtual_stages = 2;
        cr_assert_eq(train_run(a, &ref, ref_path, NULL), TM_OK);
        cr_assert_eq(train_run(b, &got, got_path, NULL), TM_OK);
        cr_expect(same_losses(&got, &ref), "v 2 dp=%d pp=%d tp=%d ZeRO-%d: losses differ", g->dp,
                  g->pp, g->tp, g->zero);
        cr_expect(same_checkpoint(got_path, ref_path),
                  "v 2 dp=%d pp=%d tp=%d ZeRO-%d: checkpoints differ", g->dp, g->pp, g->tp,
                  g->zero);
    }
}

Test(offload, mlp_sgd_momentum_is_bitwise_the_run_without, .init = setup, .fini = teardown,
     .timeout = 600)
{
    bitwise(0, TM_OPT_SGD, MESHES(mlp_full, mlp_few));
}

Test(offload, mlp_adamw_is_bitwise_the_run_without, .init = setup, .fini = teardown,
     .timeout = 600)
{
    bitwise(0, TM_OPT_ADAMW, MESHES(mlp_full, mlp_few));
}

Test(offload, gpt_adamw_is_bitwise_the_run_without, .init = setup, .fini = teardown,
     .timeout = 900)
{
    bitwise(1, TM_OPT_ADAMW, MESHES(gpt_full, gpt_few));
}

Test(offload, gpt_sgd_momentum_is_bitwise_the_run_without, .init = setup, .fini = teardown,
     .timeout = 900)
{
    static const mesh full[] = {{1, 1, 1, 1, 0}, {2, 2, 1, 2, 1}, {2, 1, 2, 2, 3}};
    static const mesh few[] = {{2, 2, 1, 2, 1}};
    bitwise(1, TM_OPT_SGD, MESHES(full, few));
}

/* ---- memory and traffic --------------------------------------------------- */

static tm_train_result one_step(tm_train_config c)
{
    c.max_steps = 1;
    losses l = {0};
    tm_train_result r;
    cr_assert_eq(train_run(c, &l, NULL, &r), TM_OK, "ZeRO-%d dp=%d pp=%d tp=%d", c.zero, c.dp, c.pp,
                 c.tp);
    return r;
}

/* Floats whose optimizer state device (p, t) keeps: its stage's shard
 * (tm_stage_plan's count), or under ZeRO ceil(n / dp) of each tensor it
 * stores. */
static size_t state_floats(const tm_train_config *c, int p, int t)
{
    int first[TM_MAX_LAYERS + 1];
    cr_assert_eq(tm_stages_balance(c->model, c->pp, first), TM_OK);
    tm_layer_plan plan[TM_MAX_LAYERS];
    size_t n;
    cr_assert_eq(tm_stage_plan(c->model, first[p], first[p + 1], c->tp, t, plan, &n), TM_OK);
    return c->zero > 0 ? tm_zero_shard_floats(plan, first[p + 1] - first[p], c->dp) : n;
}

/* The device holds no optimizer bytes and exactly what it held without
 * offload less the state; the host arena holds k blocks of the state. */
static void memory_moves(int gpt, const mesh *g)
{
    tm_train_config c0 = config(gpt, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero, 0);
    tm_train_config c1 = config(gpt, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero, 1);
    tm_train_result r0 = one_step(c0), r1 = one_step(c1);
    for (int i = 0; i < r1.n_devices; i++) {
        const tm_device_report *a = &r0.devices[i], *b = &r1.devices[i];
        size_t state = 2 * tm_arena_block_bytes(sizeof(float) * state_floats(&c1, b->p, b->t));
        cr_expect_eq(b->memory.tag_peak[TM_TAG_OPTIMIZER], 0, "device %d", i);
        cr_expect_eq(a->memory.tag_peak[TM_TAG_OPTIMIZER], state, "device %d without offload", i);
        cr_expect_eq(b->host_memory.tag_peak[TM_TAG_HOST], state, "device %d's host arena", i);
        cr_expect_eq(b->host_memory.peak, state, "device %d's host arena", i);
        cr_expect_eq(b->memory.tag_peak[TM_TAG_HOST], 0, "device %d: host bytes on the device", i);
        cr_expect_eq(b->memory.peak + state, a->memory.peak, "device %d's peak", i);
        /* The formulas, worked out before the run: 8 psi / dp of AdamW's
         * state moves (ceil(n / dp) per tensor: within a block's rounding
         * of each buffer and the padding). */
        cr_expect_leq(fabs((double)state - b->host_formula), 2.0 * TM_ARENA_ALIGN,
                      "device %d: host %zu against the formula %.0f", i, state, b->host_formula);
        cr_expect_eq(b->state_formula + b->host_formula, a->state_formula, "device %d", i);
        /* The peak's formula moves by what moved (the blocks' rounding
         * apart; README's sizes put both within 2%). */
        double miss0 = (double)a->memory.peak - a->peak_formula,
               miss1 = (double)b->memory.peak - b->peak_formula;
        cr_expect_leq(fabs(miss1 - miss0), 2.0 * TM_ARENA_ALIGN,
                      "device %d: the peak misses its formula by %.0f, %.0f without offload", i,
                      miss1, miss0);
    }
    tm_train_result_free(&r0);
    tm_train_result_free(&r1);
}

Test(offload, memory_moves_to_the_host_arena, .init = setup, .fini = teardown, .timeout = 300)
{
    static const mesh meshes[] = {{1, 1, 1, 1, 0}, {2, 1, 1, 1, 1}, {2, 2, 1, 2, 2},
                                  {2, 1, 2, 1, 3}, {1, 2, 2, 2, 0}};
    for (size_t i = 0; i < sizeof meshes / sizeof meshes[0]; i++) {
        memory_moves(0, &meshes[i]);
        memory_moves(1, &meshes[i]);
    }
}

/* 4 bytes per updated parameter out and 4 back, in the recorded step, at
 * bytes / link bandwidth of modeled time; over the mesh every parameter of
 * the model once per replica (tp's replicated tensors on every rank, ZeRO
 * chunks padded to ceil(n / dp)). */
static void traffic(int gpt, const mesh *g)
{
    tm_train_config c = config(gpt, TM_OPT_SGD, g->dp, g->pp, g->tp, g->m, g->zero, 1);
    tm_train_result r = one_step(c);
    cr_assert(r.recorded);
    tm_clock_config clock;
    tm_clock_config_default(&clock);
    double sum = 0;
    for (int i = 0; i < r.n_devices; i++) {
        const tm_device_report *d = &r.devices[i];
        cr_expect_eq((double)d->step_host, d->step_host_analytic, "device %d: %llu against %.0f",
                     i, (unsigned long long)d->step_host, d->step_host_analytic);
        cr_expect_gt(d->step_host, 0, "device %d", i);
        double want = (double)d->step_host / (clock.link_gbps * 1e9);
        cr_expect_leq(fabs(d->step_host_s - want), 1e-9 * want + 1e-15, "device %d: %.9g s", i,
                      d->step_host_s);
        sum += (double)d->step_host;
    }
    /* Without tp, every stage's shard on every replica (a tied tensor
     * held by two stages is updated on both); on one stage each
     * parameter once, or once and its chunk's padding under ZeRO. */
    if (g->tp == 1) {
        double stages = 0;
        for (int p = 0; p < g->pp; p++) stages += (double)state_floats(&c, p, 0);
        cr_expect_eq(sum, 8.0 * g->dp * stages, "%.0f against 8 x %d x %.0f", sum, g->dp, stages);
    }
    if (g->tp == 1 && g->pp == 1) {
        cr_expect_geq(sum, 8.0 * g->dp * (g->zero > 0 ? 1.0 / g->dp : 1.0) *
                           (double)c.model->n_params);
        cr_expect_leq(sum, 8.0 * ((double)c.model->n_params * (g->zero > 0 ? 1 : g->dp) +
                                  (double)c.model->n_tensors * (g->dp - 1)));
    }
    tm_train_result_free(&r);
}

Test(offload, host_traffic_is_the_formula, .init = setup, .fini = teardown, .timeout = 300)
{
    static const mesh meshes[] = {{1, 1, 1, 1, 0}, {1, 2, 1, 2, 0}, {2, 1, 1, 1, 1},
                                  {4, 1, 1, 1, 2}, {2, 2, 1, 2, 3}, {2, 1, 2, 1, 0}};
    for (size_t i = 0; i < sizeof meshes / sizeof meshes[0]; i++) {
        traffic(0, &meshes[i]);
        traffic(1, &meshes[i]);
    }
}

/* ---- checkpoints ------------------------------------------------------------ */

/* Half the steps with offload (or without), the other half resumed from
 * its checkpoint without (or with): the same bits as all the steps in one
 * run, which is the one-device checkpoint. */
static void resume_across(int gpt, const mesh *g, int first_offload)
{
    tm_train_config ref = config(gpt, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero, 0);
    losses l = {0};
    cr_assert_eq(train_run(ref, &l, ref_path, NULL), TM_OK);
    tm_train_config a = config(gpt, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero,
                               first_offload);
    a.max_steps = STEPS / 2;
    losses la = {0};
    cr_assert_eq(train_run(a, &la, mid_path, NULL), TM_OK);
    tm_train_config b = config(gpt, TM_OPT_ADAMW, g->dp, g->pp, g->tp, g->m, g->zero,
                               !first_offload);
    b.max_steps = STEPS - STEPS / 2;
    b.load_path = mid_path;
    losses lb = {0};
    cr_assert_eq(train_run(b, &lb, got_path, NULL), TM_OK);
    cr_expect_eq(la.n + lb.n, l.n);
    for (int i = 0; i < l.n && i < la.n + lb.n; i++) {
        double x = i < la.n ? la.loss[i] : lb.loss[i - la.n];
        cr_expect_eq(x, l.loss[i], "step %d", i + 1);
    }
    cr_expect(same_checkpoint(got_path, ref_path), "%s dp=%d pp=%d tp=%d ZeRO-%d, %s first",
              gpt ? "gpt" : "mlp", g->dp, g->pp, g->tp, g->zero,
              first_offload ? "offload" : "no offload");
}

Test(offload, checkpoints_resume_with_and_without_offload, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const mesh one = {1, 1, 1, 1, 0}, zero2 = {2, 2, 1, 2, 2};
    resume_across(0, &one, 1);
    resume_across(0, &one, 0);
    resume_across(1, &one, 1);
    resume_across(1, &zero2, 0);
    /* A one-device checkpoint from an offloaded ZeRO-3 mesh run. */
    resume_across(0, &(mesh){2, 1, 2, 1, 3}, 1);
}

/* ---- bad input -------------------------------------------------------------- */

static void refused(tm_train_config c, const char *needle)
{
    tm_train_result r;
    char err[4096] = "";
    int st = tm_train(&c, &mlp_train, &mlp_test, &r, err, sizeof err);
    cr_expect_eq(st, TM_EINVAL, "%s", err);
    cr_expect(!r.ran, "it ran");
    cr_expect_not_null(strstr(err, needle), "%s", err);
    cr_expect_null(strchr(err, '\n'), "one line: %s", err);
    tm_train_result_free(&r);
}

Test(offload, bad_configurations_are_refused_before_running, .init = setup, .fini = teardown,
     .timeout = 60)
{
    tm_train_config c = config(0, TM_OPT_ADAMW, 1, 1, 1, 1, 0, 1);
    c.host_mem_cap = 0;
    refused(c, "needs --host-mem-cap");
    c = config(0, TM_OPT_ADAMW, 1, 1, 1, 1, 0, 0);
    c.host_mem_cap = HOST_CAP;
    refused(c, "needs --offload optimizer");
    /* AdamW's two buffers of the MLP's 922 parameters take 2 x 3,712 bytes:
     * one fits 4 KiB, both do not; ZeRO-1's halves over 2 replicas do. */
    c = config(0, TM_OPT_ADAMW, 1, 1, 1, 1, 0, 1);
    c.host_mem_cap = 4096;
    refused(c, "is too small: device 0 keeps");
    c = config(0, TM_OPT_ADAMW, 2, 1, 1, 1, 1, 1);
    c.host_mem_cap = 4096;
    losses l = {0};
    c.max_steps = 1;
    cr_expect_eq(train_run(c, &l, NULL, NULL), TM_OK, "half the state fits");
}

/* ---- bf16: the fp32 masters in the host arena -------------------------------- */

typedef struct {
    int gpt, dp, pp, tp, m, zero;
    tm_recompute r;
    tm_schedule_kind k;
} mixed;

static tm_train_config mixed_config(const mixed *x, tm_precision prec, int offload)
{
    tm_train_config c = config(x->gpt, TM_OPT_ADAMW, x->dp, x->pp, x->tp, x->m, x->zero, offload);
    c.model = recomputed(c.model, x->r);
    c.schedule = x->k;
    c.precision = prec;
    c.keep_params = 1;
    return c;
}

static tm_train_result mixed_run(const mixed *x, tm_precision prec, int offload, losses *l)
{
    tm_train_result r;
    memset(l, 0, sizeof *l);
    cr_assert_eq(train_run(mixed_config(x, prec, offload), l, NULL, &r), TM_OK,
                 "%s dp=%d pp=%d tp=%d ZeRO-%d %s offload %d", x->gpt ? "gpt" : "mlp", x->dp,
                 x->pp, x->tp, x->zero, tm_precision_name(prec), offload);
    cr_assert_eq(l->n, STEPS);
    return r;
}

/* The largest difference of the step losses, and of the parameters. */
static void mixed_diffs(const losses *la, const tm_train_result *a, const losses *lb,
                        const tm_train_result *b, size_t n, double *loss, double *param)
{
    *loss = *param = 0;
    for (int s = 0; s < STEPS; s++) *loss = fmax(*loss, fabs(la->loss[s] - lb->loss[s]));
    for (size_t i = 0; i < n; i++)
        *param = fmax(*param, fabs((double)a->params[i] - (double)b->params[i]));
}

/* With the masters on the host the LayerNorm gains, biases and embeddings
 * are read in their bf16 rounding, one more rounding by at most half a
 * bf16 step (2^-9 relative) of the kind bf16 already applies to every GEMM
 * weight; every configuration is held to the tolerance of bf16's meshes
 * (README, "bf16 mixed precision"): twice what bf16 moves fp32's losses
 * and parameters on one device (d, measured here) plus fp32's mesh
 * tolerance (1e-4, 1e-3), against one device in bf16 without offload and
 * against one device with it. It is not bf16 bit for bit (the rounding
 * did happen). */
static void mixed_meshes(int gpt, const mixed *all, int n)
{
    mixed one = {gpt, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B};
    losses lf, lb, lo;
    tm_train_result f = mixed_run(&one, TM_PRECISION_FP32, 0, &lf),
                    b = mixed_run(&one, TM_PRECISION_BF16, 0, &lb),
                    o = mixed_run(&one, TM_PRECISION_BF16, 1, &lo);
    size_t n_params = mixed_config(&one, TM_PRECISION_FP32, 0).model->n_params;
    double dl, dp;
    mixed_diffs(&lf, &f, &lb, &b, n_params, &dl, &dp);
    cr_expect_gt(dp, 0, "bf16 trained fp32's parameters bit for bit");
    for (int i = 0; i < n; i++) {
        const mixed *x = &all[i];
        losses lg;
        tm_train_result g = mixed_run(x, TM_PRECISION_BF16, 1, &lg);
        double ml, mp;
        mixed_diffs(&lg, &g, &lb, &b, n_params, &ml, &mp);
        double tl = 1e-4, tp = 1e-3;
        char what[128];
        snprintf(what, sizeof what, "%s dp=%d pp=%d tp=%d m=%d ZeRO-%d %s %s",
                 gpt ? "gpt" : "mlp", x->dp, x->pp, x->tp, x->m, x->zero,
                 tm_recompute_name(x->r), tm_schedule_kind_name(x->k));
        cr_expect_leq(ml, 2 * dl + tl, "%s: losses differ by %.3g, bound %.3g", what, ml,
                      2 * dl + tl);
        cr_expect_leq(mp, 2 * dp + tp, "%s: parameters differ by %.3g, bound %.3g", what, mp,
                      2 * dp + tp);
        cr_expect_leq(fabs(g.test_loss - b.test_loss), 2 * dl + tl, "%s: validation %.9g vs %.9g",
                      what, g.test_loss, b.test_loss);
        cr_log_info("%s: losses %.3g, parameters %.3g from bf16 (bf16 from fp32: %.3g, %.3g)",
                    what, ml, mp, dl, dp);
        if (x->dp * x->pp * x->tp == 1)
            cr_expect_gt(mp, 0, "%s: the bf16 run's parameters bit for bit", what);
        /* And every mesh against one device with offload + bf16, within
         * the bound of bf16's meshes. */
        mixed_diffs(&lg, &g, &lo, &o, n_params, &ml, &mp);
        cr_expect_leq(ml, 2 * dl + tl, "%s: losses differ from one device's by %.3g", what, ml);
        cr_expect_leq(mp, 2 * dp + tp, "%s: parameters differ from one device's by %.3g", what,
                      mp);
        tm_train_result_free(&g);
    }
    tm_train_result_free(&f);
    tm_train_result_free(&b);
    tm_train_result_free(&o);
}

Test(offload, bf16_trains_within_the_bound_of_bf16_without_offload, .init = setup,
     .fini = teardown, .timeout = 900)
{
    static const mixed gpt_all[] = {
        {1, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 1, 2, 1, 4, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 1, 2, 1, 4, 0, TM_RECOMPUTE_NONE, TM_SCHED_ZB_H1},
        {1, 1, 1, 2, 1, 0, TM_RECOMPUTE_SELECTIVE, TM_SCHED_1F1B},
        {1, 2, 1, 1, 2, 0, TM_RECOMPUTE_FULL, TM_SCHED_1F1B},
        {1, 2, 1, 1, 2, 3, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 2, 2, 2, 2, 3, TM_RECOMPUTE_FULL, TM_SCHED_1F1B},
        {1, 1, 2, 2, 2, 0, TM_RECOMPUTE_SELECTIVE, TM_SCHED_GPIPE},
        {1, 2, 1, 2, 2, 1, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 2, 2, 1, 2, 2, TM_RECOMPUTE_FULL, TM_SCHED_1F1B},
        {1, 4, 1, 1, 1, 2, TM_RECOMPUTE_SELECTIVE, TM_SCHED_1F1B},
    };
    static const mixed mlp_all[] = {
        {0, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 2, 2, 1, 2, 0, TM_RECOMPUTE_FULL, TM_SCHED_1F1B},
        {0, 2, 1, 2, 1, 3, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 2, 2, 1, 2, 1, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 4, 1, 1, 1, 2, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
    };
    mixed_meshes(1, gpt_all, SANITIZED ? 3 : (int)(sizeof gpt_all / sizeof gpt_all[0]));
    mixed_meshes(0, mlp_all, SANITIZED ? 1 : (int)(sizeof mlp_all / sizeof mlp_all[0]));
}

/* Every device's tags as tm_train_predict_memory has them (param and
 * optimizer 0 on the device; the host arena the masters and AdamW's two
 * buffers, of the stage's shard or ZeRO-3's chunks; bf16 the copy of
 * those and the layer in flight), and the host link 4 bytes per updated
 * parameter out and 2 back. */
static void mixed_memory(const mixed *x)
{
    tm_train_config c = mixed_config(x, TM_PRECISION_BF16, 1);
    tm_memory_prediction pred[8];
    cr_assert_leq(c.pp * c.tp, 8);
    cr_assert_eq(tm_train_predict_memory(&c, x->gpt ? &gpt_train : &mlp_train, pred), TM_OK,
                 "%s", tm_error_message());
    tm_train_result r = one_step(c);
    for (int i = 0; i < r.n_devices; i++) {
        const tm_device_report *d = &r.devices[i];
        const tm_memory_prediction *p = &pred[d->p * c.tp + d->t];
        size_t n = state_floats(&c, d->p, d->t);
        size_t block = tm_arena_block_bytes(n * sizeof(float));
        cr_expect_eq(d->memory.tag_peak[TM_TAG_PARAM], 0, "device %d: param on the device", i);
        cr_expect_eq(d->memory.tag_peak[TM_TAG_OPTIMIZER], 0, "device %d", i);
        cr_expect_eq(d->host_memory.peak, 3 * block, "device %d's host arena", i);
        cr_expect_eq(p->tag[TM_TAG_HOST], 3 * block, "device %d's predicted host arena", i);
        cr_expect_geq(d->memory.tag_peak[TM_TAG_BF16], tm_arena_block_bytes(n * sizeof(tm_bf16)),
                      "device %d", i);
        for (int t = 0; t < TM_TAG_COUNT; t++)
            if (t != TM_TAG_HOST && t != TM_TAG_ACTIVATION && t != TM_TAG_COMM)
                cr_expect_eq(d->memory.tag_peak[t], p->tag[t], "device %d: %s %zu, predicted %zu",
                             i, tm_tag_name((tm_tag)t), d->memory.tag_peak[t], p->tag[t]);
        cr_expect_eq(d->activation_peak, p->tag[TM_TAG_ACTIVATION], "device %d", i);
        /* The formula: 12 psi (/ dp), within the blocks' rounding and
         * ZeRO's chunk padding. */
        double pad = (double)n - (double)d->psi / (c.zero > 0 ? c.dp : 1);
        cr_expect_leq(fabs((double)d->host_memory.peak - d->host_formula),
                      3.0 * TM_ARENA_ALIGN + 12.0 * pad, "device %d: host %zu, formula %.0f", i,
                      d->host_memory.peak, d->host_formula);
        cr_expect_eq((double)d->step_host, 6.0 * (double)n, "device %d: %llu host bytes for %zu",
                     i, (unsigned long long)d->step_host, n);
        cr_expect_eq((double)d->step_host, d->step_host_analytic, "device %d", i);
    }
    tm_train_result_free(&r);
}

Test(offload, bf16_masters_and_state_live_on_the_host, .init = setup, .fini = teardown,
     .timeout = 300)
{
    static const mixed all[] = {
        {1, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 1, 2, 2, 2, 0, TM_RECOMPUTE_FULL, TM_SCHED_1F1B},
        {1, 2, 1, 1, 1, 3, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 2, 1, 2, 1, 1, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 2, 2, 1, 2, 2, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 2, 2, 1, 2, 0, TM_RECOMPUTE_NONE, TM_SCHED_ZB_H1},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mixed_memory(&all[i]);
}

Test(offload, bf16_host_cap_too_small_for_the_masters_is_refused, .init = setup,
     .fini = teardown, .timeout = 60)
{
    mixed one = {0, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B};
    /* AdamW's two buffers of the MLP's 922 parameters fit 8 KiB; with the
     * masters (a third 3,712-byte block) they do not. */
    tm_train_config c = mixed_config(&one, TM_PRECISION_FP32, 1);
    c.host_mem_cap = 8192;
    c.max_steps = 1;
    losses l = {0};
    cr_expect_eq(train_run(c, &l, NULL, NULL), TM_OK, "fp32: the state fits");
    c.precision = TM_PRECISION_BF16;
    refused(c, "optimizer state and fp32 master weights in host memory");
}

/* Half the steps, then the rest resumed from the checkpoint (the fp32
 * masters, gathered from the host arenas): the same bits as one run, the
 * device's bf16 copy being rounded from the masters again on loading. */
static void mixed_resume(const mixed *x)
{
    losses l = {0}, la = {0}, lb = {0};
    cr_assert_eq(train_run(mixed_config(x, TM_PRECISION_BF16, 1), &l, ref_path, NULL), TM_OK);
    tm_train_config a = mixed_config(x, TM_PRECISION_BF16, 1);
    a.max_steps = STEPS / 2;
    cr_assert_eq(train_run(a, &la, mid_path, NULL), TM_OK);
    tm_train_config b = mixed_config(x, TM_PRECISION_BF16, 1);
    b.max_steps = STEPS - STEPS / 2;
    b.load_path = mid_path;
    cr_assert_eq(train_run(b, &lb, got_path, NULL), TM_OK);
    cr_expect_eq(la.n + lb.n, l.n);
    for (int i = 0; i < l.n && i < la.n + lb.n; i++)
        cr_expect_eq(i < la.n ? la.loss[i] : lb.loss[i - la.n], l.loss[i], "step %d", i + 1);
    cr_expect(same_checkpoint(got_path, ref_path), "%s dp=%d pp=%d tp=%d ZeRO-%d",
              x->gpt ? "gpt" : "mlp", x->dp, x->pp, x->tp, x->zero);
}

Test(offload, bf16_checkpoints_resume_bitwise, .init = setup, .fini = teardown, .timeout = 300)
{
    static const mixed all[] = {
        {1, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {1, 2, 2, 1, 2, 1, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 2, 1, 1, 1, 2, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
        {0, 2, 1, 2, 1, 3, TM_RECOMPUTE_NONE, TM_SCHED_1F1B},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mixed_resume(&all[i]);
}
