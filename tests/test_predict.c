/* The memory a run will need, predicted before it starts
 * (tm_train_predict_memory), against what every device's arena measured
 * over the training steps: parameters, gradients, optimizer state,
 * activations and workspace to the byte; comm to the byte but for the
 * collectives' small-message copy (at most one 16 KiB block per group a
 * device belongs to); the peak within that too and never more than 2%
 * under the prediction. Over the MLP and the GPT, one device, data,
 * tensor (with and without sequence parallelism) and pipeline
 * parallelism under every schedule, gradient accumulation, activation
 * recomputation, ZeRO 1/2/3, optimizer offload (the host arena's bytes
 * too) and bf16 mixed precision alone and combined (offload with bf16:
 * the fp32 masters in the host arena, the layer in flight tagged bf16),
 * and interleaved 1F1B with virtual stages under them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/trainer.h"
#include "tests/models.h"
#include "tests/training.h"

/* Groups a device belongs to that may keep a small-message copy: its
 * data-parallel, tensor-parallel and tied-embedding groups. */
#define GROUPS 3
#define SCRATCH_BLOCK ((size_t)16 << 10)

static void setup(void) { training_data_load(20000, 18000, 300, 32, 7, 512, 64, 1); }

static void teardown(void) { training_data_free(); }

typedef mesh_setup setup_t;


/* v: virtual stages (interleaved-1f1b), 0 for none. */
static void expect_predicted(const setup_t *s, int v)
{
    tm_train_config c = setup_config(s, 2);
    c.virtual_stages = v;
    const tm_data *train = s->gpt ? &gpt_train : &mlp_train;
    const tm_data *test = s->gpt ? &gpt_test : &mlp_test;
    tm_memory_prediction pred[8];
    cr_assert_leq(c.pp * c.tp, 8);
    cr_assert_eq(tm_train_predict_memory(&c, train, pred), TM_OK, "%s", tm_error_message());
    tm_train_result r;
    char err[4096];
    cr_assert_eq(tm_train(&c, train, test, &r, err, sizeof err), TM_OK, "%s", err);
    char what[160];
    snprintf(what, sizeof what, "%s dp %d pp %d tp %d m %d sp %d zero %d recompute %s %s v %d",
             s->gpt ? "gpt" : "mlp", s->dp, s->pp, s->tp, s->m, s->sp, s->zero,
             tm_recompute_name(s->recompute), tm_schedule_kind_name(s->schedule), v);
    size_t slack = GROUPS * tm_arena_block_bytes(SCRATCH_BLOCK);
    for (int i = 0; i < r.n_devices; i++) {
        const tm_device_report *d = &r.devices[i];
        const tm_memory_prediction *p = &pred[d->p * c.tp + d->t];
        for (int t = 0; t < TM_TAG_COUNT; t++) {
            size_t got = t == TM_TAG_ACTIVATION ? d->activation_peak
                         : t == TM_TAG_HOST         ? d->host_memory.peak
                                                    : d->memory.tag_peak[t];
            if (t == TM_TAG_COMM)
                cr_expect(got >= p->tag[t] && got <= p->tag[t] + slack,
                          "%s device %d: comm %zu bytes, predicted %zu (+ at most %zu)", what,
                          d->id, got, p->tag[t], slack);
            else
                cr_expect_eq(got, p->tag[t], "%s device %d: %s %zu bytes, predicted %zu", what,
                             d->id, tm_tag_name((tm_tag)t), got, p->tag[t]);
        }
        cr_expect(d->memory.peak <= p->peak + slack && (double)d->memory.peak >= 0.98 * (double)p->peak,
                  "%s device %d: peak %zu bytes, predicted %zu", what, d->id, d->memory.peak,
                  p->peak);
    }
    tm_train_result_free(&r);
}

static void expect_all(const setup_t *list, int n)
{
    for (int i = 0; i < n; i++) expect_predicted(&list[i], 0);
}

#define NONE TM_RECOMPUTE_NONE
#define FULL TM_RECOMPUTE_FULL
#define SEL TM_RECOMPUTE_SELECTIVE

Test(predict, gpt_every_remedy_and_mesh, .init = setup, .fini = teardown, .timeout = 600)
{
    static const setup_t full[] = {
        {1, 1, 1, 1, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {1, 1, 1, 1, 4, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 1, 1, 1, 1, 0, 0, SEL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},  {1, 1, 1, 1, 2, 0, 0, FULL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 2, 1, 1, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {1, 2, 1, 1, 2, 0, 1, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 2, 1, 1, 1, 0, 2, FULL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {1, 4, 1, 1, 1, 0, 3, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 1, 1, 2, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {1, 1, 1, 4, 1, 1, 0, SEL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_GPIPE, 0, TM_PRECISION_FP32, 0}, {1, 1, 2, 1, 4, 0, 0, FULL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_GROUPED, 0, TM_PRECISION_FP32, 0},
        {1, 1, 2, 1, 2, 0, 0, NONE, TM_SCHED_SEQUENTIAL, 0, TM_PRECISION_FP32, 0},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_INTERLEAVED, 0, TM_PRECISION_FP32, 0},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H1, 0, TM_PRECISION_FP32, 0},
        {1, 2, 2, 2, 4, 1, 1, SEL, TM_SCHED_ZB_H1, 0, TM_PRECISION_FP32, 0},
        {1, 1, 4, 1, 4, 0, 0, FULL, TM_SCHED_ZB_H1, 1, TM_PRECISION_FP32, 0},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H2, 0, TM_PRECISION_FP32, 0},
        {1, 2, 2, 2, 4, 1, 1, SEL, TM_SCHED_ZB_H2, 0, TM_PRECISION_FP32, 0},
        {1, 1, 4, 1, 8, 0, 0, FULL, TM_SCHED_ZB_H2, 1, TM_PRECISION_FP32, 0},
        {1, 2, 2, 2, 2, 1, 3, SEL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},  {1, 2, 2, 2, 4, 0, 1, FULL, TM_SCHED_GPIPE, 0, TM_PRECISION_FP32, 0},
        {1, 1, 1, 1, 2, 0, 0, FULL, TM_SCHED_1F1B, 1, TM_PRECISION_FP32, 0}, {1, 4, 1, 1, 1, 0, 3, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_FP32, 0},
        {1, 2, 2, 2, 2, 1, 1, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_FP32, 0},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_BF16, 0},
        {1, 2, 1, 2, 1, 1, 1, SEL, TM_SCHED_1F1B, 0, TM_PRECISION_BF16, 0},
        {1, 2, 2, 1, 2, 0, 3, FULL, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
        {1, 2, 2, 2, 2, 1, 0, SEL, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
        {1, 1, 2, 1, 4, 0, 0, FULL, TM_SCHED_ZB_H1, 1, TM_PRECISION_BF16, 0},
        {1, 1, 2, 1, 4, 0, 0, NONE, TM_SCHED_ZB_H2, 0, TM_PRECISION_BF16, 0},
        {1, 4, 1, 1, 1, 0, 3, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
        {1, 2, 1, 2, 2, 1, 1, SEL, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
        {1, 2, 2, 1, 2, 0, 2, FULL, TM_SCHED_GPIPE, 1, TM_PRECISION_BF16, 0},
    };
    static const setup_t few[] = {
        {1, 1, 1, 1, 2, 0, 0, FULL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 2, 2, 2, 2, 1, 3, SEL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {1, 1, 2, 2, 4, 1, 0, NONE, TM_SCHED_ZB_H1, 0, TM_PRECISION_FP32, 0},
        {1, 1, 1, 1, 2, 0, 0, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
    };
    if (SANITIZED) expect_all(few, sizeof few / sizeof few[0]);
    else expect_all(full, sizeof full / sizeof full[0]);
}

Test(predict, mlp_every_remedy_and_mesh, .init = setup, .fini = teardown, .timeout = 600)
{
    static const setup_t full[] = {
        {0, 1, 1, 1, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {0, 1, 1, 1, 4, 0, 0, FULL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {0, 2, 1, 1, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {0, 2, 1, 1, 1, 0, 1, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {0, 4, 1, 1, 2, 0, 2, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {0, 2, 1, 1, 1, 0, 3, FULL, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {0, 1, 1, 2, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}, {0, 1, 4, 1, 4, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {0, 1, 2, 1, 4, 0, 0, FULL, TM_SCHED_GPIPE, 0, TM_PRECISION_FP32, 0}, {0, 2, 2, 2, 2, 0, 3, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
        {0, 1, 2, 2, 2, 0, 0, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_FP32, 0},
        {0, 1, 2, 2, 4, 0, 0, NONE, TM_SCHED_ZB_H1, 0, TM_PRECISION_FP32, 0},
        {0, 1, 4, 1, 8, 0, 0, NONE, TM_SCHED_ZB_H2, 0, TM_PRECISION_FP32, 0},
        {0, 2, 2, 1, 2, 0, 2, NONE, TM_SCHED_GPIPE, 0, TM_PRECISION_BF16, 0},
        {0, 2, 2, 2, 2, 0, 0, FULL, TM_SCHED_GPIPE, 1, TM_PRECISION_BF16, 0},
        {0, 4, 1, 1, 2, 0, 2, NONE, TM_SCHED_1F1B, 1, TM_PRECISION_BF16, 0},
    };
    static const setup_t few[] = {
        {0, 2, 2, 2, 2, 0, 3, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0},
    };
    if (SANITIZED) expect_all(few, sizeof few / sizeof few[0]);
    else expect_all(full, sizeof full / sizeof full[0]);
}

/* Interleaved 1F1B with two chunks per device (pp 2 x v 2 model stages of
 * the 4-layer MLP and the 4-block GPT), alone and under the remedies. */
Test(predict, virtual_stages_under_every_remedy, .init = setup, .fini = teardown, .timeout = 600)
{
#define IL TM_SCHED_INTERLEAVED_1F1B
    static const setup_t full[] = {
        {1, 1, 2, 1, 4, 0, 0, NONE, IL, 0, TM_PRECISION_FP32, 0},
        {1, 2, 2, 2, 2, 1, 1, SEL, IL, 0, TM_PRECISION_FP32, 0},
        {1, 2, 2, 1, 2, 0, 2, NONE, IL, 0, TM_PRECISION_FP32, 0},
        {1, 2, 2, 1, 2, 0, 3, FULL, IL, 1, TM_PRECISION_BF16, 0},
        {1, 1, 2, 2, 4, 0, 0, FULL, IL, 1, TM_PRECISION_BF16, 0},
        {0, 1, 2, 1, 4, 0, 0, NONE, IL, 0, TM_PRECISION_FP32, 0},
        {0, 2, 2, 2, 2, 0, 3, NONE, IL, 1, TM_PRECISION_FP32, 0},
        {0, 2, 2, 1, 2, 0, 2, NONE, IL, 0, TM_PRECISION_BF16, 0},
    };
#undef IL
    int n = SANITIZED ? 2 : (int)(sizeof full / sizeof full[0]);
    for (int i = 0; i < n; i++) expect_predicted(&full[i], 2);
}

Test(predict, bad_configuration_is_refused_like_tm_train_check, .init = setup, .fini = teardown)
{
    setup_t s = {1, 1, 1, 3, 1, 0, 0, NONE, TM_SCHED_1F1B, 0, TM_PRECISION_FP32, 0}; /* 4 heads over tp 3 */
    tm_train_config c = setup_config(&s, 2);
    tm_memory_prediction pred[3];
    cr_expect_eq(tm_train_predict_memory(&c, &gpt_train, pred), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "--tp") != NULL, "%s", tm_error_message());
}
