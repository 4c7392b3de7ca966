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

/* Under a sanitizer, whose runs are 50 times slower, each test trains a
 * few meshes that between them take every path (data, tensor, sequence
 * and pipeline parallelism, the tied embedding, every schedule) for 4
 * steps; the full matrix runs in the plain build. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

/* The suite's GPT: 4 blocks of 4 heads, 64 channels, 32 positions. */
#define L 4
#define H 4
#define C 64
#define T 32
#define STEPS (SANITIZED ? 4 : 30)
#define BATCH 8
/* Tolerances sized to the rounding error. Measured here over the 78 runs
 * of the three equivalence tests (AVX2 kernels, AdamW with weight decay
 * 0.1 and clipping at 1.0, 30 steps), the largest relative loss difference
 * from one device was 7.3e-8 and the largest parameter distance 1.5e-5;
 * the limits are about 14 and 7 times those (the bounds, 1e-4 and
 * 1e-3, are far looser). Summing a LayerNorm's gradient over one rank's
 * rows only moves the losses by 1.4e-3 and the parameters by 3.3e-2 (tp 2
 * with sequence parallelism); not summing the tied embedding's gradient
 * over its two stages, by 4.3e-2 and 8.3e-2. */
#define LOSS_TOL 1e-6
#define PARAM_TOL 1e-4

static tm_corpus corpus;
static tm_data train_set, test_set;

/* The GPT's blocks: L, or more for pp x v model stages (virtual stages);
 * every test starts from L (a sanitized build runs them in one process). */
static int blocks = L;

static void setup(void)
{
    blocks = L;
    cr_assert_eq(tm_corpus_synthetic(&corpus, 40000, 5, 0), TM_OK);
    cr_assert_eq(tm_data_text(&train_set, corpus.bytes, 36000, T, "train"), TM_OK);
    cr_assert_eq(tm_data_text(&test_set, corpus.bytes + 36000, 1100, T, "test"), TM_OK);
}

static void teardown(void) { tm_corpus_free(&corpus); }

typedef struct {
    double loss[31];
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
    c.model = gpt_model_sp(blocks, H, C, T, sp);
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
static void check_mesh(const run *ref, int dp, int pp, int tp, int sp, tm_schedule_kind k, int v,
                       worst *w)
{
    int m = BATCH / dp < 4 ? BATCH / dp : 4;
    run got;
    tm_train_config c = config(dp, pp, tp, sp, m, k);
    c.virtual_stages = v;
    int st = train(c, &got, NULL);
    char name[64];
    snprintf(name, sizeof name, "%s v %d", tm_schedule_kind_name(k), v);
    cr_expect_eq(st, TM_OK, "dp=%d pp=%d tp=%d%s %s failed", dp, pp, tp, sp ? " SP" : "", name);
    if (st != TM_OK) return;
    cr_expect_eq(got.l.n, STEPS);
    double loss = 0;
    for (int i = 0; i < got.l.n && i < ref->l.n; i++)
        loss = fmax(loss, fabs(got.l.loss[i] - ref->l.loss[i]) / ref->l.loss[i]);
    double params = param_distance(got.params, ref->params, gpt_model(blocks, H, C, T)->n_params);
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

/* The meshes a sanitized build trains: (dp, tp, sequence parallelism,
 * schedule) for each pp. */
static const struct { int pp, dp, tp, sp; tm_schedule_kind k; int v; } sanitized[] = {
    {1, 2, 2, 1, TM_SCHED_1F1B, 1},     {1, 1, 4, 0, TM_SCHED_1F1B, 1},
    {2, 2, 2, 1, TM_SCHED_1F1B, 1},     {2, 1, 2, 0, TM_SCHED_GPIPE, 1},
    {2, 4, 1, 0, TM_SCHED_GROUPED, 1},  {2, 1, 4, 1, TM_SCHED_SEQUENTIAL, 1},
    {4, 1, 2, 1, TM_SCHED_INTERLEAVED, 1}, {4, 2, 1, 0, TM_SCHED_1F1B, 1},
    {4, 2, 1, 0, TM_SCHED_ZB_H1, 1},    {2, 2, 2, 1, TM_SCHED_INTERLEAVED_1F1B, 2},
    {2, 1, 2, 1, TM_SCHED_ZB_H2, 1},
};

/* Every mesh with pp stages (each schedule when pp > 1, interleaved-1f1b
 * with each v up to max_v), with and without sequence parallelism where
 * tp > 1 (sanitized: the list above). */
static void every_mesh(int pp, int max_v)
{
    run ref;
    reference(&ref);
    const int ways[] = {1, 2, 4};
    worst w = {0, 0, 0};
    int want = 0;
    for (size_t i = 0; SANITIZED && i < sizeof sanitized / sizeof sanitized[0]; i++)
        if (sanitized[i].pp == pp) {
            check_mesh(&ref, sanitized[i].dp, pp, sanitized[i].tp, sanitized[i].sp,
                       sanitized[i].k, sanitized[i].v, &w);
            want++;
        }
    for (int a = 0; !SANITIZED && a < 3; a++)
        for (int b = 0; b < 3; b++) {
            int dp = ways[a], tp = ways[b];
            if (dp * pp * tp > 8) continue;
            for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
                if (pp == 1 && k != TM_SCHED_1F1B) continue;
                int vs = k == TM_SCHED_INTERLEAVED_1F1B ? max_v : 1;
                for (int v = 1; v <= vs; v++)
                    for (int sp = 0; sp <= (tp > 1); sp++) {
                        /* Virtual stages want micro-batches a multiple of pp. */
                        if (v > 1 && (BATCH / dp < 4 ? BATCH / dp : 4) % pp != 0) continue;
                        check_mesh(&ref, dp, pp, tp, sp, (tm_schedule_kind)k, v, &w);
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

/* ZB-H1 runs 1F1B's passes with the blocks' and the head's backward split
 * into B and W (their projections' weight gradients deferred), the W's
 * of a stage in micro-batch order: the same kernels add into every
 * gradient in the same order, so it trains to 1F1B's bits — with data,
 * tensor and sequence parallelism, and with recomputation (a fully
 * recomputed layer does its whole backward in B). zb-h2 likewise: the same
 * B's and W's in the same micro-batch order, placed elsewhere. */
static void zero_bubble_trains_bitwise_as_1f1b(tm_schedule_kind kind)
{
    static const struct { int dp, pp, tp, sp, m; tm_recompute r; } meshes[] = {
        {1, 2, 1, 0, 4, TM_RECOMPUTE_NONE},      {1, 4, 1, 0, 8, TM_RECOMPUTE_NONE},
        {2, 2, 2, 1, 4, TM_RECOMPUTE_NONE},      {1, 2, 2, 0, 4, TM_RECOMPUTE_SELECTIVE},
        {1, 2, 1, 0, 4, TM_RECOMPUTE_FULL},      {1, 4, 2, 1, 2, TM_RECOMPUTE_NONE},
    };
    size_t n = SANITIZED ? 2 : sizeof meshes / sizeof meshes[0];
    for (size_t i = 0; i < n; i++) {
        int dp = meshes[i].dp, pp = meshes[i].pp, tp = meshes[i].tp, sp = meshes[i].sp;
        tm_train_config ca = config(dp, pp, tp, sp, meshes[i].m, TM_SCHED_1F1B);
        ca.model = recomputed(ca.model, meshes[i].r);
        tm_train_config cb = ca;
        cb.schedule = kind;
        run a, b;
        cr_assert_eq(train(ca, &a, NULL), TM_OK);
        cr_assert_eq(train(cb, &b, NULL), TM_OK);
        const char *rc = tm_recompute_name(meshes[i].r), *name = tm_schedule_kind_name(kind);
        cr_expect_eq(a.l.n, b.l.n);
        for (int k = 0; k < a.l.n && k < b.l.n; k++)
            cr_expect_eq(a.l.loss[k], b.l.loss[k],
                         "%s dp=%d pp=%d tp=%d sp=%d recompute %s step %d: %.9g vs %.9g", name,
                         dp, pp, tp, sp, rc, k, a.l.loss[k], b.l.loss[k]);
        size_t np = gpt_model(L, H, C, T)->n_params;
        cr_expect_eq(memcmp(a.params, b.params, np * sizeof(float)), 0,
                     "%s dp=%d pp=%d tp=%d sp=%d recompute %s: parameters differ by %.3g", name,
                     dp, pp, tp, sp, rc, param_distance(b.params, a.params, np));
        free(a.params);
        free(b.params);
    }
}

Test(gpt_mesh, zb_h1_trains_bitwise_as_1f1b, .init = setup, .fini = teardown, .timeout = 900)
{
    zero_bubble_trains_bitwise_as_1f1b(TM_SCHED_ZB_H1);
}

Test(gpt_mesh, zb_h2_trains_bitwise_as_1f1b, .init = setup, .fini = teardown, .timeout = 900)
{
    zero_bubble_trains_bitwise_as_1f1b(TM_SCHED_ZB_H2);
}

Test(gpt_mesh, data_and_tensor_parallel_equal_one_device, .init = setup, .fini = teardown,
     .timeout = 900)
{
    every_mesh(1, 1);
}

Test(gpt_mesh, two_stages_equal_one_device, .init = setup, .fini = teardown, .timeout = 900)
{
    every_mesh(2, 2);
}

Test(gpt_mesh, four_stages_equal_one_device, .init = setup, .fini = teardown, .timeout = 900)
{
    every_mesh(4, 1);
}

/* Virtual stages on four devices need eight blocks: interleaved-1f1b with
 * v 2 on pp 4, and v 4 on pp 2, with data and tensor parallelism (and
 * sequence parallelism), against one device running the same GPT. */
Test(gpt_mesh, virtual_stages_equal_one_device, .init = setup, .fini = teardown, .timeout = 900)
{
    blocks = 8;
    run ref;
    reference(&ref);
    static const struct { int pp, dp, tp, sp, v; } meshes[] = {
        {4, 1, 1, 0, 2}, {4, 2, 1, 0, 2}, {4, 1, 2, 1, 2}, {2, 1, 1, 0, 4}, {2, 2, 2, 1, 4},
        {2, 1, 4, 0, 3},
    };
    worst w = {0, 0, 0};
    int n = SANITIZED ? 2 : (int)(sizeof meshes / sizeof meshes[0]);
    for (int i = 0; i < n; i++)
        check_mesh(&ref, meshes[i].dp, meshes[i].pp, meshes[i].tp, meshes[i].sp,
                   TM_SCHED_INTERLEAVED_1F1B, meshes[i].v, &w);
    cr_expect_eq(w.runs, n);
    printf("gpt mesh virtual stages: worst of %d runs: loss %.3g, parameters %.3g\n", w.runs,
           w.loss, w.params);
    free(ref.params);
}

/* ---- memory ------------------------------------------------------------- */

/* One training step's device reports. */
static tm_train_result one_step(int dp, int pp, int tp, int sp, int m)
{
    tm_train_config c = config(dp, pp, tp, sp, m, TM_SCHED_1F1B);
    c.max_steps = 1;
    c.keep_params = 0;
    run got;
    tm_train_result r;
    cr_assert_eq(train(c, &got, &r), TM_OK, "dp=%d pp=%d tp=%d", dp, pp, tp);
    return r;
}

/* Parameter floats of a device: the tensors it holds whole, and a tp-th of
 * those split (wte by vocabulary rows, padded to a multiple of tp). */
static size_t expected_params(int blocks, int embed, int head, int tp)
{
    size_t c = C, vl = (256 + tp - 1) / tp;
    size_t whole = 6 * c, split = 12 * c * c + 7 * c; /* per block */
    size_t n = blocks * (whole + split / tp);
    if (embed) n += vl * c + (size_t)T * c;
    if (head) n += 2 * c + (embed ? 0 : vl * c);
    return n;
}

/* What the stage stores for one micro-batch of r rows (README, "Splitting
 * a transformer"): per block r C (4 + 12/t) + 4 r + r a T / t floats, and
 * under sequence parallelism r C (2 + 14/t) + 4 r / t + r a T / t; the
 * stage's input, the embedding's output, the head's ln_f (r C, its mean
 * and rstd) and logits (r V/t). */
static size_t expected_acts(int blocks, int embed, int head, int tp, int sp, size_t r)
{
    size_t c = C, per_block = sp ? r * c * 2 + r * c * 14 / tp + 4 * r / tp
                                 : r * c * 4 + r * c * 12 / tp + 4 * r;
    size_t width = sp ? c / tp : c, n = blocks * (per_block + r * H * T / tp);
    n += embed ? r + r * width : r * width;
    if (head) n += r * c + 2 * (sp ? r / tp : r) + r * ((256 + tp - 1) / tp);
    return n * sizeof(float);
}

Test(gpt_mesh, memory_splits_as_the_plan_says, .init = setup, .fini = teardown, .timeout = 300)
{
    int rows = BATCH / 2 * T; /* two micro-batches */
    struct { int pp, tp, sp; } meshes[] = {{1, 1, 0}, {1, 2, 0}, {1, 2, 1}, {1, 4, 1},
                                           {4, 1, 0}, {2, 2, 1}};
    size_t plain_tp2 = 0, sp_tp2 = 0;
    for (size_t k = 0; k < sizeof meshes / sizeof meshes[0]; k++) {
        int pp = meshes[k].pp, tp = meshes[k].tp, sp = meshes[k].sp;
        tm_train_result r = one_step(1, pp, tp, sp, 2);
        for (int d = 0; d < r.n_devices; d++) {
            const tm_device_report *rep = &r.devices[d];
            int blocks = L / pp, embed = rep->p == 0, head = rep->p == pp - 1;
            size_t params = expected_params(blocks, embed, head, tp);
            size_t acts = expected_acts(blocks, embed, head, tp, sp, (size_t)rows);
            cr_expect_eq(rep->memory.tag_peak[TM_TAG_PARAM], params * sizeof(float),
                         "pp=%d tp=%d%s device %d: %zu parameter bytes, expected %zu", pp, tp,
                         sp ? " SP" : "", d, rep->memory.tag_peak[TM_TAG_PARAM],
                         params * sizeof(float));
            cr_expect_eq(rep->acts_per_mb, acts, "pp=%d tp=%d%s device %d: %zu bytes a micro-batch"
                         ", expected %zu", pp, tp, sp ? " SP" : "", d, rep->acts_per_mb, acts);
            /* What is held at the peak: the micro-batches in flight, and
             * more (the backward's buffers). */
            cr_expect_gt(rep->activation_peak, (size_t)rep->max_in_flight * rep->acts_per_mb);
        }
        if (pp == 1 && tp == 2) *(sp ? &sp_tp2 : &plain_tp2) = r.devices[0].acts_per_mb;
        tm_train_result_free(&r);
    }
    /* tp halves what the blocks' matrices take; sequence parallelism takes
     * a further share of the activations (LayerNorm inputs, residuals). */
    cr_expect_lt(sp_tp2, plain_tp2, "sequence parallelism saved nothing: %zu vs %zu", sp_tp2,
                 plain_tp2);
}

/* ---- traffic ------------------------------------------------------------ */

Test(gpt_mesh, step_traffic_equals_the_formulas, .init = setup, .fini = teardown, .timeout = 300)
{
    static const char *dim_name[TM_DIMS] = {"dp", "pp", "tp"};
    struct { int dp, pp, tp, sp; } meshes[] = {{1, 1, 2, 0}, {1, 1, 4, 1}, {2, 2, 2, 1},
                                               {1, 4, 2, 0}, {2, 2, 1, 0}, {1, 2, 4, 1}};
    static const tm_allreduce_algo algos[] = {TM_ALGO_AUTO, TM_ALGO_RING};
    for (size_t a = 0; a < 2; a++)
        for (size_t k = 0; k < sizeof meshes / sizeof meshes[0]; k++) {
            tm_allreduce_set_algo(algos[a]);
            tm_train_result r = one_step(meshes[k].dp, meshes[k].pp, meshes[k].tp, meshes[k].sp,
                                         2);
            cr_assert(r.recorded);
            for (int d = 0; d < r.n_devices; d++)
                for (int dim = 0; dim < TM_DIMS; dim++) {
                    double sent = (double)r.devices[d].step_sent[dim];
                    double want = r.devices[d].step_analytic[dim];
                    /* Ring segments round to whole floats. */
                    cr_expect(fabs(sent - want) <= 64 + 1e-6 * want,
                              "%s mesh (%d,%d,%d)%s device %d %s: sent %.0f, formula %.1f",
                              a ? "ring" : "auto", meshes[k].dp, meshes[k].pp, meshes[k].tp,
                              meshes[k].sp ? " SP" : "", d, dim_name[dim], sent, want);
                }
            /* Something crossed every dimension the mesh has. */
            if (meshes[k].tp > 1) cr_expect_gt(r.devices[0].step_sent[TM_DIM_TP], 0);
            if (meshes[k].pp > 1) cr_expect_gt(r.devices[0].step_sent[TM_DIM_PP], 0);
            if (meshes[k].dp > 1) cr_expect_gt(r.devices[0].step_sent[TM_DIM_DP], 0);
            tm_train_result_free(&r);
        }
    tm_allreduce_set_algo(TM_ALGO_AUTO);
}

/* The formula worked by hand for tp = 2 over rings, where an all-reduce of
 * n floats sends 2 (tp - 1) / tp x 4n = 4n bytes: per micro-batch of r
 * rows, 4 per block, the embedding's and ln_f's input gradient's, all of
 * (r, C); the loss's all-gather of r maxima and all-reduce of 2r sums and
 * target logits; per step, clipping's all-gathered double. */
/* Virtual stages: every chunk's boundary messages, by the formulas; the
 * pipeline sends 2m(p v - 1) messages a step against 1F1B's 2m(p - 1). */
Test(gpt_mesh, virtual_stage_traffic_equals_the_formulas, .init = setup, .fini = teardown,
     .timeout = 300)
{
    static const char *dim_name[TM_DIMS] = {"dp", "pp", "tp"};
    struct { int dp, tp, sp; } meshes[] = {{1, 1, 0}, {2, 2, 1}};
    for (size_t k = 0; k < sizeof meshes / sizeof meshes[0]; k++) {
        double pp_bytes[2] = {0, 0};
        for (int v = 1; v <= 2; v++) {
            tm_train_config c = config(meshes[k].dp, 2, meshes[k].tp, meshes[k].sp, 2,
                                       TM_SCHED_INTERLEAVED_1F1B);
            c.virtual_stages = v;
            c.max_steps = 1;
            c.keep_params = 0;
            run got;
            tm_train_result r;
            cr_assert_eq(train(c, &got, &r), TM_OK);
            cr_assert(r.recorded);
            for (int d = 0; d < r.n_devices; d++) {
                for (int dim = 0; dim < TM_DIMS; dim++) {
                    double sent = (double)r.devices[d].step_sent[dim];
                    double want = r.devices[d].step_analytic[dim];
                    cr_expect(fabs(sent - want) <= 64 + 1e-6 * want,
                              "v %d mesh (%d,2,%d)%s device %d %s: sent %.0f, formula %.1f", v,
                              meshes[k].dp, meshes[k].tp, meshes[k].sp ? " SP" : "", d,
                              dim_name[dim], sent, want);
                }
                pp_bytes[v - 1] += (double)r.devices[d].step_sent[TM_DIM_PP];
            }
            tm_train_result_free(&r);
        }
        /* v 2 adds 2 m p (v - 1) = 8 boundary messages per pipeline (dp x
         * tp of them), each a micro-batch's (BATCH / dp / m) x T rows of C
         * floats (a tp-th of them under sequence parallelism); the tied
         * embedding's sum and clipping's are the same in both. */
        int dp = meshes[k].dp, tp = meshes[k].tp;
        double msg = (double)BATCH / dp / 2 * T * C * sizeof(float) / (meshes[k].sp ? tp : 1);
        double more = 8 * msg * dp * tp;
        cr_expect(fabs(pp_bytes[1] - pp_bytes[0] - more) <= 1e-9 * more,
                  "mesh %zu: pp bytes %.0f with v 2, %.0f with v 1, want %.0f more", k,
                  pp_bytes[1], pp_bytes[0], more);
    }
}

Test(gpt_mesh, tensor_parallel_traffic_by_hand, .init = setup, .fini = teardown, .timeout = 60)
{
    tm_allreduce_set_algo(TM_ALGO_RING);
    tm_train_result r = one_step(1, 1, 2, 0, 2);
    tm_allreduce_set_algo(TM_ALGO_AUTO);
    double rows = BATCH / 2 * T, ar = 4.0 * rows * C;
    double want = 2 * ((4 * L + 2) * ar + 4 * rows + 4 * 2 * rows) + sizeof(double);
    for (int d = 0; d < 2; d++)
        cr_expect_eq((double)r.devices[d].step_sent[TM_DIM_TP], want,
                     "device %d sent %llu bytes, %.0f by hand", d,
                     (unsigned long long)r.devices[d].step_sent[TM_DIM_TP], want);
    tm_train_result_free(&r);
}
