/* The up-front check that the model fits the devices, and the activation
 * peak worked out before a run (strategies/trainer_internal.h). */
#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/pipeline.h"
#include "strategies/trainer_internal.h"
#include "strategies/zero.h"

int tm__train_fits(const tm_train_config *cfg, const int *first)
{
    /* What tm_stage_create allocates, in its order: the shard's parameters,
     * their gradients, then each optimizer state buffer, all of one size. */
    tm_optim_config opt = {cfg->optimizer, cfg->momentum, cfg->weight_decay, cfg->beta1,
                           cfg->beta2, 1e-8};
    int n_state = tm_optimizer_state_count(&opt);
    tm_tag tags[5] = {TM_TAG_PARAM, TM_TAG_GRAD, TM_TAG_OPTIMIZER, TM_TAG_OPTIMIZER,
                      TM_TAG_BF16};
    for (int p = 0; p < cfg->pp; p++)
        for (int t = 0; t < cfg->tp; t++) {
            tm_layer_plan plan[TM_MAX_LAYERS];
            size_t n;
            TM_CHECK(tm_stage_plan(cfg->model, first[p], first[p + 1], cfg->tp, t, plan, &n));
            /* ZeRO keeps 1/dp chunks of the optimizer state (stage 1), the
             * gradients (2) and the parameters (3) instead. */
            size_t shard = cfg->zero > 0 ? tm_zero_shard_floats(plan, first[p + 1] - first[p],
                                                                 cfg->dp) : n;
            size_t bytes[5] = {cfg->zero >= 3 ? shard : n, cfg->zero >= 2 ? shard : n,
                               cfg->zero >= 1 ? shard : n, cfg->zero >= 1 ? shard : n};
            for (int i = 0; i < 4; i++) bytes[i] *= sizeof(float);
            /* bf16 adds the copy of the parameters the stage holds whole
             * (ZeRO-3 holds none: its gathered layers are rounded as the
             * GEMM packs them). */
            int n_blocks = 2 + n_state;
            if (cfg->precision == TM_PRECISION_BF16 && cfg->zero < 3) {
                bytes[n_blocks] = n * sizeof(tm_bf16);
                tags[n_blocks++] = TM_TAG_BF16;
            }
            TM_CHECK(tm_arena_fits(cfg->mem_cap, p * cfg->tp + t, bytes, tags, n_blocks));
        }
    return TM_OK;
}

int tm__train_activation_peak(const tm_train_config *cfg, const int *first,
                              const tm_schedule *sched, int rows, int p, int t, size_t *bytes)
{
    tm_stage s;
    TM_CHECK(tm_stage_describe(&s, cfg->model, first[p], first[p + 1], cfg->tp, t));
    TM_CHECK(tm_stage_set_precision(&s, cfg->precision));
    TM_CHECK(tm_pipeline_activation_peak(&s, sched, p, rows, bytes));
    /* The last stage's targets, held through the run. */
    if (p == cfg->pp - 1) *bytes += tm_arena_block_bytes(sizeof(int) * (size_t)rows);
    return TM_OK;
}
