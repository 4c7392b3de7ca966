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
#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/planner.h"
#include "strategies/recipe.h"
#include "strategies/trainer.h"
#include "tests/cli.h"
#include "tests/models.h"
#include "tests/training.h"

#define STEPS 3

static void setup(void) { training_data_load(20000, 18000, 300, 32, 7, 512, 64, 1); }

static void teardown(void) { training_data_free(); }

typedef mesh_setup setup_t;

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


static void run(const setup_t *s, int dry, tm_train_result *r, steps_t *steps)
{
    tm_train_config c = setup_config(s, STEPS);
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
    char what[192];
    snprintf(what, sizeof what, "%s dp %d pp %d tp %d m %d sp %d zero %d recompute %s %s v %d%s%s",
             s->gpt ? "gpt" : "mlp", s->dp, s->pp, s->tp, s->m, s->sp, s->zero,
             tm_recompute_name(s->recompute), tm_schedule_kind_name(s->schedule),
             s->virtual_stages, s->offload ? " offload" : "",
             s->precision == TM_PRECISION_BF16 ? " bf16" : "");
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
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 2, 1, 1, 2, 0, 0, SEL, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 1, 1, 2, 1, 1, 0, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 1, 1, 4, 1, 0, 0, FULL, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_GPIPE, 0, FP32, 1},
        {1, 1, 2, 1, 4, 0, 0, SEL, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H1, 0, FP32, 1},
        {1, 1, 2, 1, 2, 0, 0, NONE, TM_SCHED_SEQUENTIAL, 0, FP32, 1},
        {1, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_GROUPED, 0, FP32, 1},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_INTERLEAVED, 0, FP32, 1},
        {1, 2, 1, 1, 1, 0, 1, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 2, 1, 1, 2, 0, 2, FULL, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 4, 1, 1, 1, 0, 3, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 2, 2, 2, 2, 1, 3, SEL, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 2, 2, 2, 2, 0, 1, NONE, TM_SCHED_ZB_H1, 1, FP32, 1},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 1, FP32, 1},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 0, BF16, 1},
        {1, 2, 1, 2, 1, 1, 1, SEL, TM_SCHED_1F1B, 0, BF16, 1},
        {1, 2, 2, 1, 2, 0, 3, FULL, TM_SCHED_GPIPE, 1, BF16, 1},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_INTERLEAVED_1F1B, 0, FP32, 2},
        {1, 1, 2, 2, 2, 1, 0, FULL, TM_SCHED_INTERLEAVED_1F1B, 0, FP32, 2},
        {1, 2, 2, 1, 2, 0, 1, SEL, TM_SCHED_INTERLEAVED_1F1B, 1, BF16, 2},
    };
    static const setup_t few[] = {
        {1, 2, 2, 2, 2, 1, 3, SEL, TM_SCHED_1F1B, 0, FP32, 1},
        {1, 2, 2, 1, 2, 0, 1, NONE, TM_SCHED_ZB_H1, 1, BF16, 1},
        {1, 2, 2, 1, 2, 0, 1, SEL, TM_SCHED_INTERLEAVED_1F1B, 1, BF16, 2},
    };
    if (SANITIZED) expect_all(few, sizeof few / sizeof few[0]);
    else expect_all(full, sizeof full / sizeof full[0]);
}

Test(dry_run, mlp_modeled_time_and_memory_equal_the_real_run, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const setup_t full[] = {
        {0, 1, 1, 1, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {0, 4, 1, 1, 2, 0, 0, FULL, TM_SCHED_1F1B, 0, FP32, 1},
        {0, 1, 1, 2, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {0, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H1, 0, FP32, 1},
        {0, 1, 2, 1, 4, 0, 0, FULL, TM_SCHED_GPIPE, 0, FP32, 1},
        {0, 2, 2, 2, 2, 0, 3, NONE, TM_SCHED_1F1B, 0, FP32, 1},
        {0, 2, 1, 1, 1, 0, 2, NONE, TM_SCHED_1F1B, 1, FP32, 1},
        {0, 2, 2, 1, 2, 0, 1, NONE, TM_SCHED_1F1B, 0, BF16, 1},
        {0, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_INTERLEAVED_1F1B, 0, FP32, 2},
    };
    static const setup_t few[] = {
        {0, 2, 2, 2, 2, 0, 3, NONE, TM_SCHED_1F1B, 1, BF16, 1},
    };
    if (SANITIZED) expect_all(few, sizeof few / sizeof few[0]);
    else expect_all(full, sizeof full / sizeof full[0]);
}

/* The planner against a run-everything sweep: every candidate it finds
 * valid, fitting or not, dominated or not, trained for real under a cap
 * large enough for all; the fastest modeled step of the sweep is the
 * planner's first pick's. */
typedef struct {
    tm_model variants[2][3];
    tm_plan_request req;
    tm_train_config recipe;
} planner_setup;

static void planner_request(planner_setup *p, const tm_model *m, const tm_model *m_sp,
                            const tm_data *train, int devices, int batch, size_t cap)
{
    memset(p, 0, sizeof *p);
    tm_plan_models(&p->req, p->variants, m, m_sp);
    tm_clock_config_default(&p->recipe.clock);
    tm_train_recipe(&p->recipe, strcmp(m->family, "gpt") == 0);
    p->req.train = train;
    p->req.devices = devices;
    p->req.batch = batch;
    p->req.mem_cap = cap;
    p->req.precisions = 1 << TM_PRECISION_FP32;
    p->req.recipe = &p->recipe;
}

static void step_of(void *ctx, const tm_step_info *info)
{
    double *s = ctx;
    if (info->step == TM_PLAN_STEP) *s = info->modeled_step_s;
}

Test(planner, first_pick_is_the_best_of_a_run_everything_sweep, .init = setup, .fini = teardown,
     .timeout = 900)
{
    planner_setup p;
    int devices = SANITIZED ? 2 : 4;
    planner_request(&p, mlp_model(MESH_MLP, TM_ACT_GELU), NULL, &mlp_train, devices, 16,
                    8 << 20);
    tm_plan_candidate *list;
    int n;
    cr_assert_eq(tm_plan_search(&p.req, &list, &n), TM_OK, "%s", tm_error_message());
    cr_assert_gt(n, 10);
    cr_assert(list[0].fits && !list[0].dominated);
    double best = 0;
    int best_i = -1, ran = 0;
    for (int i = 0; i < n; i++) {
        cr_assert(list[i].fits, "candidate %d does not fit 8 MiB", i);
        tm_train_config c = tm_plan_config(&p.req, &list[i].pt);
        double step = 0;
        c.ctx = &step;
        c.on_step = step_of;
        tm_train_result r;
        char err[2048];
        cr_assert_eq(tm_train(&c, &mlp_train, &mlp_test, &r, err, sizeof err), TM_OK, "%s", err);
        tm_train_result_free(&r);
        cr_assert_gt(step, 0);
        ran++;
        if (!list[i].dominated)
            cr_expect_eq(step, list[i].step_s, "candidate %d: real %.17g s, predicted %.17g s", i,
                         step, list[i].step_s);
        if (best_i < 0 || step < best) {
            best = step;
            best_i = i;
        }
    }
    cr_expect_eq(ran, n);
    char a[256], b[256];
    tm_plan_flags(&list[0].pt, a, sizeof a);
    tm_plan_flags(&list[best_i].pt, b, sizeof b);
    cr_expect_eq(list[0].step_s, best, "the pick %s: %.17g s; the sweep's best %s: %.17g s", a,
                 list[0].step_s, b, best);
    free(list);
}

Test(planner, a_tighter_cap_brings_in_a_memory_remedy, .init = setup, .fini = teardown,
     .timeout = 600)
{
    planner_setup p;
    planner_request(&p, gpt_model_sp(4, 4, 32, 32, 0), gpt_model_sp(4, 4, 32, 32, 1), &gpt_train,
                    SANITIZED ? 2 : 4, 16, 64 << 20);
    tm_plan_candidate *roomy, *tight;
    int n_roomy, n_tight;
    cr_assert_eq(tm_plan_search(&p.req, &roomy, &n_roomy), TM_OK, "%s", tm_error_message());
    cr_assert(roomy[0].fits);
    /* Just under the roomy pick's peak, and above the least any needs. */
    p.req.mem_cap = roomy[0].peak - 1;
    cr_assert_eq(tm_plan_search(&p.req, &tight, &n_tight), TM_OK, "%s", tm_error_message());
    cr_assert_eq(n_tight, n_roomy);
    cr_assert(tight[0].fits, "nothing fits %zu bytes", p.req.mem_cap);
    char a[256], b[256];
    tm_plan_flags(&roomy[0].pt, a, sizeof a);
    tm_plan_flags(&tight[0].pt, b, sizeof b);
    cr_expect_leq(tight[0].peak, p.req.mem_cap);
    cr_expect_gt(tight[0].step_s, roomy[0].step_s, "roomy %s, tight %s", a, b);
    /* A remedy: recomputation, ZeRO, pipelining, accumulation, or more
     * of the model split by tensor parallelism. */
    const tm_plan_point *r = &roomy[0].pt, *t = &tight[0].pt;
    int remedy = t->recompute != TM_RECOMPUTE_NONE || t->zero > r->zero || t->pp > r->pp ||
                 t->micro_batches > r->micro_batches || t->tp > r->tp || t->sp > r->sp;
    cr_expect(remedy, "roomy %s, tight %s", a, b);
    cr_log_info("roomy: %s (%zu bytes); tight: %s (%zu bytes)", a, roomy[0].peak, b,
                tight[0].peak);
    free(roomy);
    free(tight);
}

Test(planner, searches_every_virtual_stage_count_the_trainer_accepts, .init = setup,
     .fini = teardown, .timeout = 600)
{
    /* 6 blocks on 2 devices: v = 2 and 3 cut them into 4 and 6 model
     * stages; v = 4 would need 8 blocks. */
    planner_setup p;
    planner_request(&p, gpt_model_sp(6, 4, 32, 32, 0), NULL, &gpt_train, 2, 8, 64 << 20);
    tm_plan_candidate *list;
    int n, seen[TM_SCHEDULE_MAX_VIRTUAL + 1] = {0};
    cr_assert_eq(tm_plan_search(&p.req, &list, &n), TM_OK, "%s", tm_error_message());
    for (int i = 0; i < n; i++) {
        const tm_plan_point *pt = &list[i].pt;
        cr_assert(pt->virtual_stages >= 1 && pt->virtual_stages <= TM_SCHEDULE_MAX_VIRTUAL);
        seen[pt->virtual_stages]++;
        tm_train_config c = tm_plan_config(&p.req, pt);
        cr_expect_eq(tm_train_check(&c, &gpt_train), TM_OK);
        char flags[256], want[64];
        tm_plan_flags(pt, flags, sizeof flags);
        snprintf(want, sizeof want, "--virtual-stages %d", pt->virtual_stages);
        cr_expect_eq(strstr(flags, want) != NULL, pt->virtual_stages > 1, "%s", flags);
        if (pt->virtual_stages > 1) cr_expect_eq(pt->schedule, TM_SCHED_INTERLEAVED_1F1B);
        if (pt->virtual_stages > 1 && list[i].fits && !list[i].dominated) {
            /* Its dry run's step is a real run's. */
            double step = 0;
            c.ctx = &step;
            c.on_step = step_of;
            tm_train_result r;
            char err[2048];
            cr_assert_eq(tm_train(&c, &gpt_train, &gpt_test, &r, err, sizeof err), TM_OK, "%s",
                         err);
            tm_train_result_free(&r);
            cr_expect_eq(step, list[i].step_s, "%s: real %.17g s, predicted %.17g s", flags,
                         step, list[i].step_s);
        }
    }
    cr_expect_gt(seen[2], 0);
    cr_expect_gt(seen[3], 0);
    for (int v = 4; v <= TM_SCHEDULE_MAX_VIRTUAL; v++) cr_expect_eq(seen[v], 0, "v %d", v);
    free(list);
}

/* build/plan from the outside. */
#define SMALL "--devices 2 --model 12,32,10 --batch 8"

/* Splits a CSV line (no quoting: the fields hold none) into at most max
 * fields; returns their count. */
static int csv_fields(char *line, char **field, int max)
{
    int n = 0;
    line[strcspn(line, "\n")] = '\0';
    for (char *p = line; n < max;) {
        field[n++] = p;
        char *comma = strchr(p, ',');
        if (comma == NULL) break;
        *comma = '\0';
        p = comma + 1;
    }
    return n;
}

Test(plan_cli, csv_is_a_header_and_one_row_per_candidate, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    cr_assert_eq(cli_run("plan", SMALL " --mem-cap 5696 --csv"), 0);
    FILE *f = fopen(cli_out, "r");
    cr_assert_not_null(f);
    static char line[4096];
    char *field[32];
    cr_assert_not_null(fgets(line, sizeof line, f));
    int cols = csv_fields(line, field, 32);
    const char *want[] = {"config", "fits", "predicted_step_s", "predicted_peak_bytes",
                          "measured_step_s", "measured_peak_bytes"};
    for (int i = 0; i < 6; i++) cr_expect_str_eq(field[i], want[i]);
    int rows = 0, fitting = 0, seen_unfit = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        cr_assert_eq(csv_fields(line, field, 32), cols, "row %d: %s", rows + 1, line);
        cr_expect(strncmp(field[0], "--dp ", 5) == 0, "config %s", field[0]);
        int fits = atoi(field[1]);
        cr_expect(strcmp(field[1], "0") == 0 || strcmp(field[1], "1") == 0);
        char *end;
        double peak = strtod(field[3], &end);
        cr_expect(*end == '\0' && peak > 0, "peak %s", field[3]);
        if (fits && strcmp(field[cols - 1], "0") == 0) {
            double step = strtod(field[2], &end);
            cr_expect(*end == '\0' && step > 0, "step %s", field[2]);
            cr_expect(peak <= 5696, "%s: %s bytes", field[0], field[3]);
        } else {
            cr_expect_str_eq(field[2], "");
        }
        cr_expect_str_eq(field[4], "");
        cr_expect_str_eq(field[5], "");
        /* Fitting rows first, then the others. */
        if (!fits) seen_unfit = 1;
        cr_expect(!(fits && seen_unfit), "a fitting row after one that does not fit");
        fitting += fits;
        rows++;
    }
    fclose(f);
    cr_expect_gt(fitting, 0);
    cr_expect_gt(rows, fitting, "the rows that do not fit are listed too");
}

Test(plan_cli, verify_measures_what_was_predicted, .init = cli_setup, .fini = cli_teardown,
     .timeout = 300)
{
    cr_assert_eq(cli_run("plan", SMALL " --mem-cap 1M --top 3 --verify --steps 3 --csv"), 0);
    FILE *f = fopen(cli_out, "r");
    cr_assert_not_null(f);
    static char line[4096];
    char *field[32];
    cr_assert_not_null(fgets(line, sizeof line, f));
    int verified = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        csv_fields(line, field, 32);
        if (field[4][0] == '\0') continue;
        double step = atof(field[2]), measured = atof(field[4]);
        double peak = atof(field[3]), measured_peak = atof(field[5]);
        cr_expect(step > 0 && measured == step, "%s: step %s predicted, %s measured", field[0],
                  field[2], field[4]);
        cr_expect(peak > 0 && measured_peak == peak, "%s: peak %s predicted, %s measured",
                  field[0], field[3], field[5]);
        verified++;
    }
    fclose(f);
    cr_expect_eq(verified, 3);
}

Test(plan_cli, impossible_requests_exit_1_with_what_would_work, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    char first[512];
    cr_expect_eq(cli_run("plan", SMALL " --mem-cap 1K"), 1);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s", first);
    const char *at = strstr(first, "--mem-cap ");
    cr_assert_not_null(at, "%s", first);
    long cap = atol(at + strlen("--mem-cap "));
    cr_assert_gt(cap, 1024);
    /* The cap it names fits something; a byte less (past the next rows'
     * needs) may not. */
    char args[256];
    snprintf(args, sizeof args, SMALL " --mem-cap %ld --top 1", cap);
    cr_expect_eq(cli_run("plan", args), 0, "--mem-cap %ld", cap);
    cr_expect_eq(cli_run("plan", "--devices 7 --model 12,32,10 --batch 1 --mem-cap 1M"), 1);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1);
    cr_expect(strstr(first, "6 and 8") != NULL, "%s", first);
}

Test(plan_cli, bad_usage_is_one_line_and_status_2, .init = cli_setup, .fini = cli_teardown,
     .timeout = 120)
{
    const char *bad[] = {"--mem-cap 1M",
                         "--devices 2",
                         "--devices 0 --mem-cap 1M",
                         "--devices 2 --mem-cap lots",
                         "--devices 2 --mem-cap 1M --bogus",
                         "--devices 2 --mem-cap 1M --precision fp8",
                         "--devices 2 --mem-cap 1M --steps 3",
                         "--devices 2 --mem-cap 1M --verify --steps 1",
                         "--devices 2 --mem-cap 1M --model 12,x",
                         "--devices 2 --mem-cap 1M --model gpt --heads 3 --d-model 32",
                         "--devices 2 --mem-cap 1M --link-gbps -1",
                         "--devices 2 --mem-cap 1M extra"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char first[512];
        cr_expect_eq(cli_run("plan", bad[i]), 2, "plan %s", bad[i]);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "plan %s: %s", bad[i],
                     first);
        cr_expect_eq(cli_lines(cli_out, NULL, first, sizeof first), 0, "plan %s", bad[i]);
    }
}
