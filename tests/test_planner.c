/* The planner's ground: a dry run (tm_train_config.dry_run, kernels that
 * charge their cost and compute nothing) takes, step by step, bitwise the
 * modeled time of the real run, sends the same bytes per mesh dimension
 * and over the host link, and its arenas reach the same peaks by tag. Over
 * both models, dp/tp/pp, sequence parallelism, every schedule the trainer
 * runs, recomputation, ZeRO 1-3, optimizer offload and bf16. The runs
 * evaluate only after their steps (a real evaluation between steps moves
 * the replicas' clocks apart, a dry run has none). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/trainer.h"
#include "tests/models.h"
#include "tests/training.h"

#define MLP "12,32,32,32,10"
#define STEPS 3

static void setup(void) { training_data_load(20000, 18000, 300, 32, 7, 512, 64, 1); }

static void teardown(void) { training_data_free(); }

typedef struct {
    int gpt, dp, pp, tp, m, sp, zero;
    tm_recompute recompute;
    tm_schedule_kind schedule;
    int offload;
    tm_precision precision;
} setup_t;

/* Every step's modeled time, as on_step reports it. */
typedef struct {
    double step_s[STEPS];
    int n;
} steps_t;

static void on_step(void *ctx, const tm_step_info *info)
{
    steps_t *s = ctx;
    if (s->n < STEPS) s->step_s[s->n++] = info->modeled_step_s;
}

static tm_train_config config(const setup_t *s)
{
    tm_train_config c = {0};
    const tm_model *m = s->gpt ? gpt_model_sp(4, 4, 32, 32, s->sp) : mlp_model(MLP, TM_ACT_GELU);
    c.model = recomputed(m, s->recompute);
    c.dp = s->dp;
    c.pp = s->pp;
    c.tp = s->tp;
    c.zero = s->zero;
    c.schedule = s->schedule;
    c.epochs = 1;
    c.max_steps = STEPS;
    c.batch = s->gpt ? 16 : 64;
    c.micro_batches = s->m;
    adamw(&c, 1e-3, 0.1, 1.0);
    c.lr_schedule = TM_LR_CONSTANT;
    c.seed = 3;
    c.shuffle = 1;
    c.mem_cap = 64 << 20;
    c.precision = s->precision;
    if (s->offload) {
        c.offload = TM_OFFLOAD_OPTIMIZER;
        c.host_mem_cap = 64 << 20;
    }
    return c;
}

static void run(const setup_t *s, int dry, tm_train_result *r, steps_t *steps)
{
    tm_train_config c = config(s);
    c.dry_run = dry;
    c.ctx = steps;
    c.on_step = on_step;
    memset(steps, 0, sizeof *steps);
    char err[4096];
    cr_assert_eq(tm_train(&c, s->gpt ? &gpt_train : &mlp_train, s->gpt ? &gpt_test : &mlp_test, r,
                          err, sizeof err),
                 TM_OK, "%s", err);
    cr_assert_eq(steps->n, STEPS);
}

static void expect_dry_equals_real(const setup_t *s)
{
    tm_train_result real, dry;
    steps_t real_steps, dry_steps;
    run(s, 0, &real, &real_steps);
    run(s, 1, &dry, &dry_steps);
    char what[160];
    snprintf(what, sizeof what, "%s dp %d pp %d tp %d m %d sp %d zero %d recompute %s %s%s%s",
             s->gpt ? "gpt" : "mlp", s->dp, s->pp, s->tp, s->m, s->sp, s->zero,
             tm_recompute_name(s->recompute), tm_schedule_kind_name(s->schedule),
             s->offload ? " offload" : "", s->precision == TM_PRECISION_BF16 ? " bf16" : "");
    for (int i = 0; i < STEPS; i++)
        cr_expect_eq(dry_steps.step_s[i], real_steps.step_s[i],
                     "%s step %d: dry %.17g s, real %.17g s", what, i + 1, dry_steps.step_s[i],
                     real_steps.step_s[i]);
    cr_expect_eq(dry.modeled_seconds, real.modeled_seconds, "%s: dry %.17g s, real %.17g s", what,
                 dry.modeled_seconds, real.modeled_seconds);
    cr_expect_eq(dry.bubble, real.bubble, "%s: bubble dry %g, real %g", what, dry.bubble,
                 real.bubble);
    cr_assert_eq(dry.n_devices, real.n_devices);
    for (int i = 0; i < real.n_devices; i++) {
        const tm_device_report *a = &dry.devices[i], *b = &real.devices[i];
        cr_expect_eq(a->modeled_s, b->modeled_s, "%s device %d", what, i);
        cr_expect_eq(a->compute_s, b->compute_s, "%s device %d", what, i);
        cr_expect_eq(a->comm_s, b->comm_s, "%s device %d", what, i);
        cr_expect_eq(a->idle_s, b->idle_s, "%s device %d", what, i);
        cr_expect_eq(a->flops, b->flops, "%s device %d", what, i);
        for (int d = 0; d < TM_DIMS; d++)
            cr_expect_eq(a->step_sent[d], b->step_sent[d], "%s device %d dim %d", what, i, d);
        cr_expect_eq(a->step_host, b->step_host, "%s device %d", what, i);
        cr_expect_eq(a->activation_peak, b->activation_peak, "%s device %d", what, i);
        /* The arena's peak over the run: the training steps' (the real
         * run's one evaluation, after them, holds no more). */
        for (int t = 0; t < TM_TAG_COUNT; t++)
            cr_expect_eq(a->memory.tag_peak[t], b->memory.tag_peak[t], "%s device %d tag %s",
                         what, i, tm_tag_name((tm_tag)t));
        cr_expect_eq(a->memory.peak, b->memory.peak, "%s device %d: peak dry %zu, real %zu",
                     what, i, a->memory.peak, b->memory.peak);
        cr_expect_eq(a->host_memory.peak, b->host_memory.peak, "%s device %d", what, i);
    }
    tm_train_result_free(&real);
    tm_train_result_free(&dry);
}

static void expect_all(const setup_t *list, int n)
{
    for (int i = 0; i < n; i++) expect_dry_equals_real(&list[i]);
}

#define NONE TM_RECOMPUTE_NONE
#define FULL TM_RECOMPUTE_FULL
#define SEL TM_RECOMPUTE_SELECTIVE
#define FP32 TM_PRECISION_FP32
#define BF16 TM_PRECISION_BF16

Test(dry_run, gpt_modeled_time_and_memory_equal_the_real_run, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const setup_t full[] = {
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 0, FP32},
        {1, 2, 1, 1, 2, 0, 0, SEL, TM_SCHED_1F1B, 0, FP32},
        {1, 1, 1, 2, 1, 1, 0, NONE, TM_SCHED_1F1B, 0, FP32},
        {1, 1, 1, 4, 1, 0, 0, FULL, TM_SCHED_1F1B, 0, FP32},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_GPIPE, 0, FP32},
        {1, 1, 2, 1, 4, 0, 0, SEL, TM_SCHED_1F1B, 0, FP32},
        {1, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H1, 0, FP32},
        {1, 1, 2, 1, 2, 0, 0, NONE, TM_SCHED_SEQUENTIAL, 0, FP32},
        {1, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_GROUPED, 0, FP32},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_INTERLEAVED, 0, FP32},
        {1, 2, 1, 1, 1, 0, 1, NONE, TM_SCHED_1F1B, 0, FP32},
        {1, 2, 1, 1, 2, 0, 2, FULL, TM_SCHED_1F1B, 0, FP32},
        {1, 4, 1, 1, 1, 0, 3, NONE, TM_SCHED_1F1B, 0, FP32},
        {1, 2, 2, 2, 2, 1, 3, SEL, TM_SCHED_1F1B, 0, FP32},
        {1, 2, 2, 2, 2, 0, 1, NONE, TM_SCHED_ZB_H1, 1, FP32},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 1, FP32},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 0, BF16},
        {1, 2, 1, 2, 1, 1, 1, SEL, TM_SCHED_1F1B, 0, BF16},
        {1, 2, 2, 1, 2, 0, 3, FULL, TM_SCHED_GPIPE, 1, BF16},
    };
    static const setup_t few[] = {
        {1, 2, 2, 2, 2, 1, 3, SEL, TM_SCHED_1F1B, 0, FP32},
        {1, 2, 2, 1, 2, 0, 2, NONE, TM_SCHED_ZB_H1, 1, BF16},
    };
    if (SANITIZED) expect_all(few, sizeof few / sizeof few[0]);
    else expect_all(full, sizeof full / sizeof full[0]);
}

Test(dry_run, mlp_modeled_time_and_memory_equal_the_real_run, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const setup_t full[] = {
        {0, 1, 1, 1, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, FP32},
        {0, 4, 1, 1, 2, 0, 0, FULL, TM_SCHED_1F1B, 0, FP32},
        {0, 1, 1, 2, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, FP32},
        {0, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H1, 0, FP32},
        {0, 1, 2, 1, 4, 0, 0, FULL, TM_SCHED_GPIPE, 0, FP32},
        {0, 2, 2, 2, 2, 0, 3, NONE, TM_SCHED_1F1B, 0, FP32},
        {0, 2, 1, 1, 1, 0, 2, NONE, TM_SCHED_1F1B, 1, FP32},
        {0, 2, 2, 1, 2, 0, 1, NONE, TM_SCHED_1F1B, 0, BF16},
    };
    static const setup_t few[] = {
        {0, 2, 2, 2, 2, 0, 3, NONE, TM_SCHED_1F1B, 1, BF16},
    };
    if (SANITIZED) expect_all(few, sizeof few / sizeof few[0]);
    else expect_all(full, sizeof full / sizeof full[0]);
}
