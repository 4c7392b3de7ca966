/* Suite `precision`: bf16 mixed precision (strategies/stage.h's
 * tm_precision; README, "bf16 mixed precision"). One device in bf16
 * trains close to fp32; every mesh in bf16 trains what one device in bf16
 * trains, within the bound the README derives from where the roundings
 * happen (pipeline parallelism bit for bit); recomputation in bf16 is
 * bitwise bf16 without it; what a micro-batch stores is the fp32 stage's
 * input and output plus half of the rest, the measured activation peak is
 * the one predicted, and the bf16 weight copy is 2 bytes per parameter of
 * the device's shard. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/plan.h"
#include "strategies/stage.h"
#include "strategies/trainer.h"
#include "tests/models.h"
#include "tests/training.h"

/* The GPT: 4 blocks of 4 heads, 64 channels, 32 positions; the MLP: four
 * GELU layers (as the recompute suite's). */
#define L 4
#define H 4
#define C 64
#define T 32
#define GPT_BATCH 8
#define MLP "12,16,16,16,10"
#define MLP_BATCH 32
#define STEPS (SANITIZED ? 2 : 5)

static void setup(void) { training_data_load(40000, 36000, 1100, T, 5, 1024, 128, 7); }

static void teardown(void) { training_data_free(); }

typedef struct {
    int gpt;
    int dp, pp, tp, sp, m;
    tm_schedule_kind k;
    int zero;
    tm_recompute r;
    int v; /* virtual stages (interleaved-1f1b); 0: none */
} mesh;

static tm_train_config config(const mesh *x, tm_precision prec)
{
    tm_train_config c = {0};
    c.model = recomputed(x->gpt ? gpt_model_sp(L, H, C, T, x->sp)
                                : mlp_model(MLP, TM_ACT_GELU), x->r);
    c.dp = x->dp;
    c.zero = x->zero;
    c.pp = x->pp;
    c.tp = x->tp;
    c.schedule = x->k;
    c.micro_batches = x->m;
    c.precision = prec;
    c.virtual_stages = x->v;
    c.epochs = 10;
    c.max_steps = STEPS;
    c.batch = x->gpt ? GPT_BATCH : MLP_BATCH;
    mesh_recipe(&c);
    return c;
}

typedef struct {
    double loss[STEPS];
    int n;
    tm_train_result r;
} run;

static void record_run(void *ctx, const tm_step_info *s)
{
    run *l = ctx;
    if (l->n < STEPS) l->loss[l->n++] = s->loss;
}

static void train(const mesh *x, tm_precision prec, run *out)
{
    memset(out, 0, sizeof *out);
    tm_train_config c = config(x, prec);
    c.ctx = out;
    c.on_step = record_run;
    char err[2048];
    int st = tm_train(&c, x->gpt ? &gpt_train : &mlp_train, x->gpt ? &gpt_test : &mlp_test,
                      &out->r, err, sizeof err);
    cr_assert_eq(st, TM_OK, "%s", err);
    cr_assert_eq(out->n, STEPS);
}

static void describe(const mesh *x, char *buf, size_t n)
{
    snprintf(buf, n, "%s dp=%d pp=%d tp=%d%s m=%d %s v %d zero %d recompute %s",
             x->gpt ? "gpt" : "mlp", x->dp, x->pp, x->tp, x->sp ? " SP" : "", x->m,
             tm_schedule_kind_name(x->k), x->v, x->zero, tm_recompute_name(x->r));
}

/* The largest difference of the step losses and of the parameters. */
static void diffs(const run *a, const run *b, size_t n_params, double *loss, double *param)
{
    *loss = *param = 0;
    for (int s = 0; s < STEPS; s++) *loss = fmax(*loss, fabs(a->loss[s] - b->loss[s]));
    for (size_t i = 0; i < n_params; i++)
        *param = fmax(*param, fabs((double)a->r.params[i] - (double)b->r.params[i]));
}

/* Every device's activation peak is the one worked out before the run,
 * which tm_train_predict_activations gives without running; the bf16
 * copy of the weights is 2 bytes per parameter the device keeps whole, a
 * block per chunk (none under ZeRO-3, whose gathered layers are rounded as they are
 * packed), and fp32 runs have none. */
/* The bf16 copies of device (p, t): one block per chunk (virtual stages),
 * 2 bytes a parameter. */
static size_t bf16_bytes(const tm_train_config *c, int p, int t)
{
    int v = c->virtual_stages > 1 ? c->virtual_stages : 1, first[TM_MAX_LAYERS + 1];
    cr_assert_eq(tm_stages_balance(c->model, c->pp * v, first), TM_OK);
    size_t bytes = 0;
    for (int k = 0; k < v; k++) {
        int g = k * c->pp + p;
        tm_layer_plan plan[TM_MAX_LAYERS];
        size_t n;
        cr_assert_eq(tm_stage_plan(c->model, first[g], first[g + 1], c->tp, t, plan, &n), TM_OK);
        bytes += tm_arena_block_bytes(2 * n);
    }
    return bytes;
}

static void expect_memory(const mesh *x, tm_precision prec, const tm_train_result *r,
                          const char *what)
{
    tm_train_config c = config(x, prec);
    size_t *pred = test_alloc(sizeof(size_t) * (size_t)(c.pp * c.tp));
    cr_expect_eq(tm_train_predict_activations(&c, x->gpt ? &gpt_train : &mlp_train, pred),
                 TM_OK, "%s", tm_error_message());
    for (int d = 0; d < r->n_devices; d++) {
        const tm_device_report *rep = &r->devices[d];
        cr_expect_eq(rep->activation_peak, rep->activation_formula,
                     "%s device %d: activation peak %zu, formula %zu", what, d,
                     rep->activation_peak, rep->activation_formula);
        cr_expect_eq(pred[rep->p * c.tp + rep->t], rep->activation_formula,
                     "%s device %d: predicted %zu, the run's formula %zu", what, d,
                     pred[rep->p * c.tp + rep->t], rep->activation_formula);
        size_t want = prec == TM_PRECISION_BF16 && x->zero < 3
                          ? bf16_bytes(&c, rep->p, rep->t) : 0;
        cr_expect_eq(rep->memory.tag_peak[TM_TAG_BF16], want,
                     "%s device %d: bf16 copy %zu bytes, want %zu (psi %zu)", what, d,
                     rep->memory.tag_peak[TM_TAG_BF16], want, rep->psi);
    }
    free(pred);
}

/* The bound of README, "bf16 mixed precision": a mesh moves each of
 * bf16's roundings by at most one bf16 step (2^-8 relative), twice the
 * half step (2^-9) by which bf16 moves the fp32 value there, so it moves
 * the losses and parameters by at most twice what bf16 moves fp32's on
 * one device (measured here, d), plus fp32's own mesh tolerance (1e-4 for
 * losses, 1e-3 for parameters). */
static double bound(double d, double fp32_tol) { return 2 * d + fp32_tol; }

/* Trains each mesh in bf16 and compares it with one device in bf16 within
 * the bound, the MLP's pure pipelines bit for bit against one device with
 * as many micro-batches (the same operations on the same rows in the same
 * order; the GPT's pipelines add the tied embedding's gradients of the
 * first and last stage in another order); and checks their memory. */
static void meshes(const mesh *all, int n, int gpt)
{
    mesh one = {gpt, 1, 1, 1, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0};
    run f32, b16;
    train(&one, TM_PRECISION_FP32, &f32);
    train(&one, TM_PRECISION_BF16, &b16);
    size_t n_params = config(&one, TM_PRECISION_FP32).model->n_params;
    double dl, dp;
    diffs(&f32, &b16, n_params, &dl, &dp);
    /* bf16 against fp32 on one device: the 0.01 nats for the
     * validation loss, for every step's loss and the validation loss of
     * this short run too. */
    for (int s = 0; s < STEPS; s++)
        cr_expect_leq(fabs(b16.loss[s] - f32.loss[s]), 0.01, "%s step %d: bf16 %.6f, fp32 %.6f",
                      gpt ? "gpt" : "mlp", s + 1, b16.loss[s], f32.loss[s]);
    cr_expect_leq(fabs(b16.r.test_loss - f32.r.test_loss), 0.01, "validation bf16 %.6f fp32 %.6f",
                  b16.r.test_loss, f32.r.test_loss);
    cr_expect_gt(dp, 0, "bf16 trained fp32's parameters bit for bit: no bf16 ran");
    expect_memory(&one, TM_PRECISION_BF16, &b16.r, "one device");
    expect_memory(&one, TM_PRECISION_FP32, &f32.r, "one device fp32");
    for (int i = 0; i < n; i++) {
        const mesh *x = &all[i];
        char name[160];
        describe(x, name, sizeof name);
        run got;
        train(x, TM_PRECISION_BF16, &got);
        expect_memory(x, TM_PRECISION_BF16, &got.r, name);
        if (!gpt && x->dp == 1 && x->tp == 1) {
            mesh same = one;
            same.m = x->m;
            same.r = x->r;
            run ref;
            train(&same, TM_PRECISION_BF16, &ref);
            cr_expect(memcmp(got.loss, ref.loss, sizeof ref.loss) == 0,
                      "%s: losses differ from one device's (step 1: %.9g vs %.9g)", name,
                      got.loss[0], ref.loss[0]);
            cr_expect(memcmp(got.r.params, ref.r.params, n_params * sizeof(float)) == 0,
                      "%s: parameters differ from one device's", name);
            tm_train_result_free(&ref.r);
        }
        double ml, mp;
        diffs(&got, &b16, n_params, &ml, &mp);
        cr_expect_leq(ml, bound(dl, 1e-4), "%s: losses differ by %.3g, bound %.3g", name, ml,
                      bound(dl, 1e-4));
        cr_expect_leq(mp, bound(dp, 1e-3), "%s: parameters differ by %.3g, bound %.3g", name,
                      mp, bound(dp, 1e-3));
        cr_expect_leq(fabs(got.r.test_loss - b16.r.test_loss), bound(dl, 1e-4),
                      "%s: validation loss %.9g vs %.9g", name, got.r.test_loss,
                      b16.r.test_loss);
        tm_train_result_free(&got.r);
    }
    tm_train_result_free(&f32.r);
    tm_train_result_free(&b16.r);
}

/* Data, tensor (with and without sequence parallelism) and pipeline
 * parallelism under every schedule, ZeRO 1 to 3, recomputation, 3D. */
Test(precision, gpt_every_mesh_trains_like_one_device, .init = setup, .fini = teardown,
     .timeout = 900)
{
    static const mesh all[] = {
        {1, 1, 1, 1, 0, 4, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 2, 1, 1, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 1, 2, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 1, 2, 1, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_GPIPE, 0, TM_RECOMPUTE_FULL, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_GROUPED, 0, TM_RECOMPUTE_SELECTIVE, 0},
        {1, 1, 4, 1, 0, 4, TM_SCHED_INTERLEAVED, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 2, 1, 0, 2, TM_SCHED_SEQUENTIAL, 0, TM_RECOMPUTE_NONE, 0},
        {1, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 1, TM_RECOMPUTE_NONE, 0},
        {1, 2, 1, 2, 1, 2, TM_SCHED_1F1B, 2, TM_RECOMPUTE_FULL, 0},
        {1, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 3, TM_RECOMPUTE_SELECTIVE, 0},
        {1, 1, 1, 4, 1, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 2, 2, 2, 1, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 2, 2, 2, 1, 2, TM_SCHED_1F1B, 3, TM_RECOMPUTE_FULL, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_ZB_H1, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_ZB_H2, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_INTERLEAVED_1F1B, 0, TM_RECOMPUTE_NONE, 2},
        {1, 2, 2, 2, 1, 2, TM_SCHED_INTERLEAVED_1F1B, 1, TM_RECOMPUTE_FULL, 2},
    };
    static const int sanitized[] = {1, 3, 5, 11, 13};
    int n = SANITIZED ? 5 : (int)(sizeof all / sizeof all[0]);
    mesh pick[sizeof all / sizeof all[0]];
    for (int i = 0; i < n; i++) pick[i] = all[SANITIZED ? sanitized[i] : i];
    meshes(pick, n, 1);
}

Test(precision, mlp_every_mesh_trains_like_one_device, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const mesh all[] = {
        {0, 2, 1, 1, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {0, 1, 1, 2, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {0, 1, 1, 4, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_FULL, 0},
        {0, 1, 3, 1, 0, 4, TM_SCHED_GPIPE, 0, TM_RECOMPUTE_NONE, 0},
        {0, 1, 2, 2, 0, 4, TM_SCHED_GROUPED, 0, TM_RECOMPUTE_NONE, 0},
        {0, 2, 2, 2, 0, 2, TM_SCHED_INTERLEAVED, 3, TM_RECOMPUTE_NONE, 0},
        {0, 1, 2, 1, 0, 4, TM_SCHED_ZB_H1, 0, TM_RECOMPUTE_NONE, 0},
        {0, 2, 2, 2, 0, 4, TM_SCHED_ZB_H1, 1, TM_RECOMPUTE_FULL, 0},
        {0, 1, 3, 1, 0, 8, TM_SCHED_ZB_H2, 0, TM_RECOMPUTE_NONE, 0},
        {0, 2, 2, 2, 0, 4, TM_SCHED_ZB_H2, 1, TM_RECOMPUTE_FULL, 0},
        {0, 1, 2, 1, 0, 4, TM_SCHED_INTERLEAVED_1F1B, 0, TM_RECOMPUTE_NONE, 2},
        {0, 2, 2, 2, 0, 2, TM_SCHED_INTERLEAVED_1F1B, 2, TM_RECOMPUTE_FULL, 2},
    };
    meshes(all, SANITIZED ? 3 : (int)(sizeof all / sizeof all[0]), 0);
}

/* Full recomputation in bf16 rounds what it recomputes where the forward
 * rounded it, so it reads the bits the stored activations hold: bitwise
 * bf16 without recomputation, as in fp32. (Selective recomputes the
 * attention weights inside the attention kernel, in fp32 where none
 * stores them in bf16: it is within the bound, in the mesh tests.) */
Test(precision, full_recomputation_is_bitwise_none_in_bf16, .init = setup, .fini = teardown,
     .timeout = 600)
{
    static const mesh all[] = {
        {1, 1, 1, 1, 0, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_FULL, 0},
        {1, 1, 2, 2, 1, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_FULL, 0},
        {1, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 3, TM_RECOMPUTE_FULL, 0},
        {0, 1, 2, 2, 0, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_FULL, 0},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        mesh none = all[i];
        none.r = TM_RECOMPUTE_NONE;
        char name[160];
        describe(&all[i], name, sizeof name);
        run a, b;
        train(&none, TM_PRECISION_BF16, &a);
        train(&all[i], TM_PRECISION_BF16, &b);
        size_t n = config(&none, TM_PRECISION_BF16).model->n_params;
        cr_expect(memcmp(a.loss, b.loss, sizeof a.loss) == 0, "%s: losses differ", name);
        cr_expect(memcmp(a.r.params, b.r.params, n * sizeof(float)) == 0,
                  "%s: parameters differ", name);
        cr_expect(a.r.test_loss == b.r.test_loss, "%s: validation loss differs", name);
        tm_train_result_free(&a.r);
        tm_train_result_free(&b.r);
    }
}

/* What a micro-batch stores in bf16: the stage's input and output in
 * fp32 (what is staged, sent and received, and the logits), everything
 * else in half the bytes of fp32's, to the byte, and the run stores that. */
Test(precision, a_micro_batch_stores_half_of_fp32_but_its_input_and_output, .init = setup,
     .fini = teardown, .timeout = 300)
{
    static const mesh all[] = {
        {1, 1, 1, 1, 0, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {1, 1, 1, 2, 1, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_SELECTIVE, 0},
        {1, 1, 1, 2, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_FULL, 0},
        {0, 1, 1, 2, 0, 1, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
        {0, 1, 1, 1, 0, 2, TM_SCHED_1F1B, 0, TM_RECOMPUTE_NONE, 0},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        const mesh *x = &all[i];
        char name[160];
        describe(x, name, sizeof name);
        tm_train_config c = config(x, TM_PRECISION_BF16);
        c.max_steps = 1;
        tm_train_result r;
        char err[2048];
        cr_assert_eq(tm_train(&c, x->gpt ? &gpt_train : &mlp_train,
                              x->gpt ? &gpt_test : &mlp_test, &r, err, sizeof err),
                     TM_OK, "%s: %s", name, err);
        int rows = c.batch / x->m * c.model->rows_per_sample;
        for (int d = 0; d < r.n_devices; d++) {
            tm_stage s;
            cr_assert_eq(tm_stage_describe(&s, c.model, 0, c.model->n_layers, x->tp,
                                           r.devices[d].t), TM_OK);
            size_t io = ((size_t)s.in_width + (size_t)s.out_width) * (size_t)rows * 4;
            size_t f32 = tm_stage_acts_bytes(&s, rows);
            cr_assert_eq(tm_stage_set_precision(&s, TM_PRECISION_BF16), TM_OK);
            size_t b16 = tm_stage_acts_bytes(&s, rows);
            cr_expect_eq(b16, io + (f32 - io) / 2, "%s device %d: %zu bytes, fp32 %zu", name, d,
                         b16, f32);
            cr_expect_eq(r.devices[d].acts_per_mb, b16, "%s device %d: the run stores %zu, %zu",
                         name, d, r.devices[d].acts_per_mb, b16);
        }
        tm_train_result_free(&r);
    }
}

/* Unknown precisions are refused by name and by value. */
Test(precision, names_parse_and_unknown_values_are_refused)
{
    tm_precision p;
    cr_expect_eq(tm_precision_parse("fp32", &p), 0);
    cr_expect_eq(p, TM_PRECISION_FP32);
    cr_expect_eq(tm_precision_parse("bf16", &p), 0);
    cr_expect_eq(p, TM_PRECISION_BF16);
    cr_expect_eq(tm_precision_parse("fp16", &p), -1);
    cr_expect_eq(tm_precision_parse("BF16", &p), -1);
    cr_expect_str_eq(tm_precision_name(TM_PRECISION_BF16), "bf16");
}
