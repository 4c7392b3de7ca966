/* Suite `recompute`: activation recomputation (strategies/layer.h's
 * tm_recompute) trains bitwise the model `none` trains — losses, final
 * parameters and validation loss — for the MLP and the GPT on data,
 * tensor (with and without sequence parallelism) and pipeline parallel
 * meshes under several schedules; what a micro-batch stores falls to the
 * stated formulas (README, "Activation recomputation"); every device's
 * measured activation peak is the one worked out before the run; the
 * modeled clock charges exactly the recomputed FLOPs; a recomputed
 * tensor-parallel forward sends its collectives again, as the traffic
 * formula says; selective on a model without attention is refused. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "runtime/clock.h"
#include "runtime/comm.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/data.h"
#include "strategies/idx.h"
#include "strategies/stage.h"
#include "strategies/trainer.h"
#include "tests/models.h"
#include "tests/training.h"

/* The GPT: 4 blocks of 4 heads, 64 channels, 32 positions (gpt_mesh's). */
#define L 4
#define H 4
#define C 64
#define T 32
#define GPT_BATCH 8
/* The MLP: four linear layers with GELU between them, which keeps its
 * pre-activations (ReLU's backward needs only its output). */
#define MLP "12,16,16,16,10"
#define MLP_BATCH 32
#define STEPS (SANITIZED ? 2 : 5)

static void setup(void) { training_data_load(40000, 36000, 1100, T, 5, 1024, 128, 7); }

static void teardown(void) { training_data_free(); }

static const tm_model *gpt(int sp, tm_recompute r)
{
    return recomputed(gpt_model_sp(L, H, C, T, sp), r);
}

static const tm_model *mlp(tm_recompute r) { return recomputed(mlp_model(MLP, TM_ACT_GELU), r); }

typedef struct {
    int gpt;
    int dp, pp, tp, sp, m;
    tm_schedule_kind k;
    int zero; /* ZeRO stage over dp */
    int v;    /* virtual stages (interleaved-1f1b); 0: none */
} mesh;

static tm_train_config config(const mesh *x, tm_recompute r)
{
    tm_train_config c = {0};
    c.model = x->gpt ? gpt(x->sp, r) : mlp(r);
    c.dp = x->dp;
    c.zero = x->zero;
    c.pp = x->pp;
    c.tp = x->tp;
    c.schedule = x->k;
    c.virtual_stages = x->v;
    c.micro_batches = x->m;
    c.epochs = 10;
    c.max_steps = STEPS;
    c.batch = x->gpt ? GPT_BATCH : MLP_BATCH;
    mesh_recipe(&c);
    return c;
}

typedef struct {
    losses l;
    tm_train_result r;
} run;

static int train(tm_train_config c, run *out)
{
    memset(out, 0, sizeof *out);
    c.ctx = &out->l;
    c.on_step = record;
    char err[2048];
    const tm_data *tr = c.model->tokens ? &gpt_train : &mlp_train;
    const tm_data *te = c.model->tokens ? &gpt_test : &mlp_test;
    int st = tm_train(&c, tr, te, &out->r, err, sizeof err);
    if (st != TM_OK) cr_log_warn("%s", err);
    return st;
}

static void describe(const mesh *x, char *buf, size_t n)
{
    snprintf(buf, n, "%s dp=%d pp=%d tp=%d%s m=%d %s v %d zero %d", x->gpt ? "gpt" : "mlp",
             x->dp, x->pp, x->tp, x->sp ? " SP" : "", x->m, tm_schedule_kind_name(x->k), x->v,
             x->zero);
}

/* Every device's activation peak is the one worked out before the run,
 * and tm_train_predict_activations gives it without running. */
static void expect_peaks(const tm_train_config *c, const tm_train_result *r, const char *what)
{
    size_t *pred = calloc((size_t)(c->pp * c->tp), sizeof *pred);
    cr_assert_not_null(pred);
    const tm_data *tr = c->model->tokens ? &gpt_train : &mlp_train;
    cr_expect_eq(tm_train_predict_activations(c, tr, pred), TM_OK, "%s", tm_error_message());
    for (int d = 0; d < r->n_devices; d++) {
        const tm_device_report *rep = &r->devices[d];
        cr_expect_eq(rep->activation_peak, rep->activation_formula,
                     "%s device %d: activation peak %zu, formula %zu", what, d,
                     rep->activation_peak, rep->activation_formula);
        cr_expect_eq(pred[rep->p * c->tp + rep->t], rep->activation_formula,
                     "%s device %d: predicted %zu, the run's formula %zu", what, d,
                     pred[rep->p * c->tp + rep->t], rep->activation_formula);
    }
    free(pred);
}

/* Trains the mesh under none and under each of modes; every one must give
 * the bits none gives, store less per micro-batch, and peak where its
 * formula says. */
static void same_bits(const mesh *x, const tm_recompute *modes, int n_modes)
{
    char name[128];
    describe(x, name, sizeof name);
    run ref;
    tm_train_config c0 = config(x, TM_RECOMPUTE_NONE);
    cr_assert_eq(train(c0, &ref), TM_OK, "%s none failed", name);
    cr_assert_eq(ref.l.n, STEPS);
    expect_peaks(&c0, &ref.r, name);
    size_t n = c0.model->n_params;
    for (int i = 0; i < n_modes; i++) {
        const char *mode = tm_recompute_name(modes[i]);
        run got;
        tm_train_config c = config(x, modes[i]);
        int st = train(c, &got);
        cr_expect_eq(st, TM_OK, "%s %s failed", name, mode);
        if (st != TM_OK) continue;
        cr_expect_eq(got.l.n, STEPS);
        cr_expect(memcmp(got.l.loss, ref.l.loss, sizeof ref.l.loss) == 0,
                  "%s %s: losses differ from none's (step 1: %.9g vs %.9g)", name, mode,
                  got.l.loss[0], ref.l.loss[0]);
        cr_expect(memcmp(got.r.params, ref.r.params, n * sizeof(float)) == 0,
                  "%s %s: parameters differ from none's", name, mode);
        cr_expect(got.r.test_loss == ref.r.test_loss, "%s %s: validation loss %.9g vs %.9g",
                  name, mode, got.r.test_loss, ref.r.test_loss);
        /* A stage of layers that keep nothing but their outputs (the
         * MLP's last layer alone) stores what it did. */
        size_t less = 0, more = 0;
        for (int d = 0; d < got.r.n_devices; d++) {
            cr_expect_leq(got.r.devices[d].acts_per_mb, ref.r.devices[d].acts_per_mb,
                          "%s %s device %d stores %zu bytes a micro-batch, none %zu", name,
                          mode, d, got.r.devices[d].acts_per_mb, ref.r.devices[d].acts_per_mb);
            less += got.r.devices[d].acts_per_mb;
            more += ref.r.devices[d].acts_per_mb;
        }
        cr_expect_lt(less, more, "%s %s stores no less than none", name, mode);
        expect_peaks(&c, &got.r, name);
        tm_train_result_free(&got.r);
    }
    tm_train_result_free(&ref.r);
}

/* The GPT in full and selective, the MLP (no attention) in full, on every
 * kind of mesh; under a sanitizer (50 times slower) the marked ones. */
Test(recompute, trains_bitwise_as_none_on_every_kind_of_mesh, .init = setup, .fini = teardown,
     .timeout = 900)
{
    static const mesh all[] = {
        {1, 1, 1, 1, 0, 1, TM_SCHED_1F1B, 0, 0},        {1, 1, 1, 1, 0, 4, TM_SCHED_1F1B, 0, 0},
        {1, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 0, 0},        {1, 1, 1, 2, 0, 2, TM_SCHED_1F1B, 0, 0},
        {1, 1, 1, 2, 1, 2, TM_SCHED_1F1B, 0, 0},        {1, 1, 1, 4, 1, 1, TM_SCHED_1F1B, 0, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_GPIPE, 0, 0},       {1, 1, 2, 1, 0, 4, TM_SCHED_1F1B, 0, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_GROUPED, 0, 0},     {1, 1, 2, 2, 1, 4, TM_SCHED_SEQUENTIAL, 0, 0},
        {1, 1, 4, 1, 0, 4, TM_SCHED_INTERLEAVED, 0, 0}, {1, 2, 2, 2, 1, 2, TM_SCHED_1F1B, 0, 0},
        {0, 1, 1, 1, 0, 1, TM_SCHED_1F1B, 0, 0},        {0, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 0, 0},
        {0, 1, 1, 2, 0, 2, TM_SCHED_1F1B, 0, 0},        {0, 1, 1, 4, 0, 1, TM_SCHED_1F1B, 0, 0},
        {0, 1, 3, 1, 0, 4, TM_SCHED_GPIPE, 0, 0},       {0, 1, 3, 2, 0, 4, TM_SCHED_1F1B, 0, 0},
        {0, 1, 2, 2, 0, 4, TM_SCHED_GROUPED, 0, 0},     {0, 2, 2, 2, 0, 2, TM_SCHED_INTERLEAVED, 0, 0},
        {1, 1, 4, 1, 0, 4, TM_SCHED_ZB_H1, 0, 0},       {1, 2, 2, 2, 1, 4, TM_SCHED_ZB_H1, 1, 0},
        {0, 1, 3, 2, 0, 4, TM_SCHED_ZB_H1, 0, 0},       {0, 2, 2, 2, 0, 4, TM_SCHED_ZB_H1, 1, 0},
        {1, 1, 2, 1, 0, 4, TM_SCHED_INTERLEAVED_1F1B, 0, 2},
        {1, 2, 2, 2, 1, 2, TM_SCHED_INTERLEAVED_1F1B, 0, 2},
        {0, 2, 2, 2, 0, 2, TM_SCHED_INTERLEAVED_1F1B, 0, 2},
    };
    static const int sanitized[] = {0, 4, 7, 11, 12, 14, 17, 20, 22};
    static const tm_recompute modes[] = {TM_RECOMPUTE_FULL, TM_RECOMPUTE_SELECTIVE};
    int n = SANITIZED ? (int)(sizeof sanitized / sizeof sanitized[0])
                      : (int)(sizeof all / sizeof all[0]);
    for (int i = 0; i < n; i++) {
        const mesh *x = &all[SANITIZED ? sanitized[i] : i];
        same_bits(x, modes, x->gpt ? 2 : 1);
    }
}

/* Under ZeRO a layer's parameters may be gathered for its forward and
 * again for its backward: the recomputed forward runs between the two
 * (on the gathered parameters), so the bits stay ZeRO's without
 * recomputation. */
Test(recompute, trains_bitwise_as_none_under_every_zero_stage, .init = setup,
     .fini = teardown, .timeout = 600)
{
    static const mesh all[] = {
        {1, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 3, 0},  {1, 2, 1, 2, 1, 2, TM_SCHED_1F1B, 2, 0},
        {1, 2, 2, 2, 1, 2, TM_SCHED_1F1B, 3, 0},  {1, 2, 2, 1, 0, 2, TM_SCHED_GPIPE, 1, 0},
        {0, 2, 1, 1, 0, 2, TM_SCHED_1F1B, 3, 0},  {0, 2, 2, 2, 0, 2, TM_SCHED_1F1B, 2, 0},
    };
    static const tm_recompute modes[] = {TM_RECOMPUTE_FULL, TM_RECOMPUTE_SELECTIVE};
    int n = SANITIZED ? 2 : (int)(sizeof all / sizeof all[0]);
    for (int i = 0; i < n; i++) same_bits(&all[i], modes, all[i].gpt ? 2 : 1);
}

/* ---- what a micro-batch stores ------------------------------------------ */

/* The GPT's stage for r rows (README, "Activation recomputation"), in
 * floats: none keeps per block r C (4 + 12/t) + 4 r + r a T / t (sequence
 * parallelism: r C (2 + 14/t) + 4 r / t + r a T / t); selective the same
 * without the weights r a T / t; full only the block's output, r C (r C
 * / t under sequence parallelism). Then the stage's input (r tokens or
 * its boundary rows), the embedding's output, and the head's ln_f output
 * with its statistics (none and selective) and its logits r V/t. */
static size_t gpt_acts(tm_recompute mode, int blocks, int embed, int head, int tp, int sp,
                       size_t r)
{
    size_t c = C, width = sp ? c / tp : c, v = (256 + tp - 1) / tp;
    size_t block = sp ? r * c * 2 + r * c * 14 / tp + 4 * r / tp
                      : r * c * 4 + r * c * 12 / tp + 4 * r;
    if (mode == TM_RECOMPUTE_NONE) block += r * H * T / tp;
    if (mode == TM_RECOMPUTE_FULL) block = r * width;
    size_t n = blocks * block + (embed ? r + r * width : r * width);
    if (head) n += r * v + (mode == TM_RECOMPUTE_FULL ? 0 : r * c + 2 * (sp ? r / tp : r));
    return n * sizeof(float);
}

Test(recompute, gpt_stores_what_the_formulas_say, .init = setup, .fini = teardown,
     .timeout = 300)
{
    static const mesh all[] = {{1, 1, 1, 1, 0, 2, TM_SCHED_1F1B, 0, 0}, {1, 1, 1, 2, 0, 2, TM_SCHED_1F1B, 0, 0},
                               {1, 1, 1, 2, 1, 2, TM_SCHED_1F1B, 0, 0}, {1, 1, 2, 2, 1, 2, TM_SCHED_1F1B, 0, 0},
                               {1, 1, 4, 1, 0, 4, TM_SCHED_GPIPE, 0, 0}};
    static const tm_recompute modes[] = {TM_RECOMPUTE_NONE, TM_RECOMPUTE_SELECTIVE,
                                         TM_RECOMPUTE_FULL};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        for (size_t i = 0; i < 3; i++) {
            const mesh *x = &all[k];
            char name[128];
            describe(x, name, sizeof name);
            tm_train_config c = config(x, modes[i]);
            c.max_steps = 1;
            run got;
            cr_assert_eq(train(c, &got), TM_OK, "%s %s", name, tm_recompute_name(modes[i]));
            size_t rows = GPT_BATCH / x->dp / x->m * T;
            for (int d = 0; d < got.r.n_devices; d++) {
                const tm_device_report *rep = &got.r.devices[d];
                size_t want = gpt_acts(modes[i], L / x->pp, rep->p == 0, rep->p == x->pp - 1,
                                       x->tp, x->sp, rows);
                cr_expect_eq(rep->acts_per_mb, want, "%s %s device %d: %zu bytes, formula %zu",
                             name, tm_recompute_name(modes[i]), d, rep->acts_per_mb, want);
                cr_expect_eq(rep->activation_peak, rep->activation_formula,
                             "%s %s device %d: peak %zu, formula %zu", name,
                             tm_recompute_name(modes[i]), d, rep->activation_peak,
                             rep->activation_formula);
            }
            tm_train_result_free(&got.r);
        }
}

/* The MLP keeps its input and every layer's output (the next one's
 * input) either way; none adds GELU's pre-activations, 16 floats per row
 * for each of the three hidden layers, which full recomputes. */
Test(recompute, mlp_stores_what_the_formulas_say, .init = setup, .fini = teardown, .timeout = 120)
{
    mesh x = {0, 1, 1, 1, 0, 2, TM_SCHED_1F1B, 0, 0};
    size_t rows = MLP_BATCH / 2, outputs = rows * (12 + 16 + 16 + 16 + 10);
    run none, full;
    tm_train_config c = config(&x, TM_RECOMPUTE_NONE);
    c.max_steps = 1;
    cr_assert_eq(train(c, &none), TM_OK);
    c = config(&x, TM_RECOMPUTE_FULL);
    c.max_steps = 1;
    cr_assert_eq(train(c, &full), TM_OK);
    cr_expect_eq(none.r.devices[0].acts_per_mb, (outputs + 3 * 16 * rows) * sizeof(float));
    cr_expect_eq(full.r.devices[0].acts_per_mb, outputs * sizeof(float));
    tm_train_result_free(&none.r);
    tm_train_result_free(&full.r);
}

/* ---- the modeled clock -------------------------------------------------- */

/* The kernel FLOPs and modeled compute seconds of one forward of the
 * layers that full recomputation re-runs, measured on a device of its
 * own: each layer's forward timed alone. */
typedef struct {
    const tm_model *m;
    int rows;
    double flops, seconds;
} forward_cost;

static void charge(void *dev, double flops, double bytes) { tm_clock_charge(dev, flops, bytes); }

static int measure_forward(tm_device *dev, void *arg)
{
    forward_cost *f = arg;
    tm_gemm_thread_init();
    tm_cost_set_hook(charge, dev);
    tm_mesh mesh;
    TM_CHECK(tm_mesh_create(dev, 1, 1, 1, &mesh));
    tm_stage s;
    int st = tm_stage_create(&s, dev, mesh.tp_comm, f->m, 0, f->m->n_layers, 0);
    float *full = calloc(f->m->n_params, sizeof(float));
    tm_stage_acts a = {0};
    if (st == TM_OK && full == NULL) st = tm_error(TM_EHOSTMEM, "no memory");
    if (st == TM_OK) {
        f->m->init(f->m, full, 1);
        tm_stage_shard_from(&s, full, s.params);
        st = tm_stage_acts_alloc(&s, f->rows, &a);
    }
    if (st == TM_OK) memset(a.input, 0, (size_t)f->rows * s.in_width * sizeof(float));
    tm_layer_ctx c = tm_stage_ctx(&s, f->rows);
    for (int i = 0; st == TM_OK && i < s.n; i++) {
        const tm_layer_plan *p = &s.layer[i];
        tm_clock_stats c0, c1;
        tm_cost k0 = tm_cost_totals();
        tm_clock_stats_get(dev, &c0);
        st = p->layer->kind->forward(p, &c, i == 0 ? a.input : a.out[i - 1], a.out[i],
                                     a.saved[i]);
        tm_clock_stats_get(dev, &c1);
        if (p->layer->kind->saved_floats(p, f->rows) > 0) {
            f->flops += tm_cost_totals().flops - k0.flops;
            f->seconds += c1.compute - c0.compute;
        }
    }
    if (a.block != NULL) tm_stage_acts_free(&s, &a);
    free(full);
    tm_stage_destroy(&s);
    tm_mesh_destroy(&mesh);
    tm_cost_set_hook(NULL, NULL);
    return st;
}

static forward_cost recomputed_forward(const tm_model *m, int rows)
{
    forward_cost f = {m, rows, 0, 0};
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.mem_cap = 64 << 20;
    tm_world *w;
    cr_assert_eq(tm_world_create(&w, &wc), TM_OK, "%s", tm_error_message());
    cr_assert_eq(tm_world_run(w, measure_forward, &f), TM_OK, "%s", tm_world_error(w));
    tm_world_destroy(w);
    return f;
}

/* On one device: full's steps cost exactly one more forward of the
 * recomputed layers per micro-batch, in FLOPs and in modeled compute
 * time; selective's, per block and head of every sequence, the scores'
 * products over the causal blocks of 32 rows and the softmax's 5 FLOPs
 * per kept score. */
static void expect_recomputed_cost(const tm_model *none, const tm_model *with, double flops,
                                   double seconds, int m, const char *what)
{
    mesh x = {none->tokens, 1, 1, 1, 0, m, TM_SCHED_1F1B, 0, 0};
    tm_train_config c = config(&x, TM_RECOMPUTE_NONE);
    c.model = none;
    run a, b;
    cr_assert_eq(train(c, &a), TM_OK);
    c.model = with;
    cr_assert_eq(train(c, &b), TM_OK);
    const tm_device_report *ra = &a.r.devices[0], *rb = &b.r.devices[0];
    double want = (double)STEPS * m * flops;
    cr_expect_eq(rb->flops - ra->flops, want, "%s: %.0f more FLOPs, %.0f recomputed", what,
                 rb->flops - ra->flops, want);
    double dt = rb->compute_s - ra->compute_s;
    if (seconds > 0)
        cr_expect(fabs(dt - STEPS * m * seconds) <= 1e-9 * rb->compute_s,
                  "%s: %.9g modeled seconds more, the recomputed kernels take %.9g", what, dt,
                  STEPS * m * seconds);
    else
        cr_expect_gt(dt, 0, "%s: the modeled step took no longer", what);
    printf("recompute: %s: %.3g more FLOPs per step (%.1f%%), modeled compute +%.1f%%\n", what,
           want / STEPS, 100 * (rb->flops - ra->flops) / ra->flops, 100 * dt / ra->compute_s);
    tm_train_result_free(&a.r);
    tm_train_result_free(&b.r);
}

Test(recompute, the_clock_charges_the_recomputed_flops, .init = setup, .fini = teardown,
     .timeout = 300)
{
    int m = 2, gpt_rows = GPT_BATCH / m * T, mlp_rows = MLP_BATCH / m;
    forward_cost g = recomputed_forward(gpt(0, TM_RECOMPUTE_NONE), gpt_rows);
    expect_recomputed_cost(gpt(0, TM_RECOMPUTE_NONE), gpt(0, TM_RECOMPUTE_FULL), g.flops,
                           g.seconds, m, "gpt full");
    forward_cost f = recomputed_forward(mlp(TM_RECOMPUTE_NONE), mlp_rows);
    expect_recomputed_cost(mlp(TM_RECOMPUTE_NONE), mlp(TM_RECOMPUTE_FULL), f.flops, f.seconds, m,
                           "mlp full");
    double hs = C / H, B = gpt_rows / T, scores = 0;
    for (int r0 = 0; r0 < T; r0 += 32) {
        int r1 = r0 + 32 < T ? r0 + 32 : T;
        scores += 2.0 * (r1 - r0) * r1 * hs;
    }
    double sel = L * B * H * (scores + 5.0 * T * (T + 1) / 2);
    expect_recomputed_cost(gpt(0, TM_RECOMPUTE_NONE), gpt(0, TM_RECOMPUTE_SELECTIVE), sel, 0, m,
                           "gpt selective");
}

/* ---- traffic ------------------------------------------------------------ */

/* A recomputed tensor-parallel forward runs its collectives again: each
 * device's step traffic is what the formula says, and no less than none's
 * (a column-split layer's forward sends nothing), more in all. */
Test(recompute, a_recomputed_forward_sends_its_collectives_again, .init = setup,
     .fini = teardown, .timeout = 300)
{
    static const mesh all[] = {{1, 1, 1, 2, 0, 2, TM_SCHED_1F1B, 0, 0}, {1, 1, 1, 2, 1, 2, TM_SCHED_1F1B, 0, 0},
                               {1, 1, 2, 2, 1, 2, TM_SCHED_1F1B, 0, 0}, {0, 1, 1, 2, 0, 2, TM_SCHED_1F1B, 0, 0},
                               {0, 1, 3, 2, 0, 2, TM_SCHED_GPIPE, 0, 0}};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        const mesh *x = &all[k];
        char name[128];
        describe(x, name, sizeof name);
        run none, full;
        tm_train_config c = config(x, TM_RECOMPUTE_NONE);
        c.max_steps = 1;
        cr_assert_eq(train(c, &none), TM_OK, "%s", name);
        c = config(x, TM_RECOMPUTE_FULL);
        c.max_steps = 1;
        cr_assert_eq(train(c, &full), TM_OK, "%s", name);
        cr_assert(none.r.recorded && full.r.recorded);
        uint64_t more = 0, less = 0;
        for (int d = 0; d < full.r.n_devices; d++) {
            const tm_device_report *a = &none.r.devices[d], *b = &full.r.devices[d];
            more += b->step_sent[TM_DIM_TP];
            less += a->step_sent[TM_DIM_TP];
            double sent = (double)b->step_sent[TM_DIM_TP], want = b->step_analytic[TM_DIM_TP];
            cr_expect(fabs(sent - want) <= 64 + 1e-6 * want,
                      "%s device %d: full sent %.0f tensor-parallel bytes, formula %.1f", name, d,
                      sent, want);
            cr_expect_geq(b->step_sent[TM_DIM_TP], a->step_sent[TM_DIM_TP],
                          "%s device %d: full sent less than none", name, d);
            cr_expect_eq(b->step_sent[TM_DIM_DP], a->step_sent[TM_DIM_DP]);
            cr_expect_eq(b->step_sent[TM_DIM_PP], a->step_sent[TM_DIM_PP]);
        }
        cr_expect_gt(more, less, "%s: full sent no more than none", name);
        tm_train_result_free(&none.r);
        tm_train_result_free(&full.r);
    }
}

/* ---- bad input ---------------------------------------------------------- */

Test(recompute, selective_without_attention_is_refused, .init = setup, .fini = teardown,
     .timeout = 30)
{
    mesh x = {0, 1, 1, 1, 0, 1, TM_SCHED_1F1B, 0, 0};
    tm_train_config c = config(&x, TM_RECOMPUTE_SELECTIVE);
    cr_expect_eq(tm_train_check(&c, &mlp_train), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "--recompute selective") != NULL, "%s",
              tm_error_message());
    tm_recompute r;
    cr_expect_eq(tm_recompute_parse("partial", &r), -1);
    cr_expect_eq(tm_recompute_parse("selective", &r), 0);
    cr_expect_eq(r, TM_RECOMPUTE_SELECTIVE);
}
