/* The up-front check that the model fits the devices
 * (strategies/trainer_internal.h). */
#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/trainer_internal.h"

int tm__train_fits(const tm_train_config *cfg, const int *first)
{
    /* What tm_stage_create allocates, in its order: the shard's parameters,
     * their gradients, then each optimizer state buffer, all of one size. */
    int n_state = cfg->optimizer == TM_OPT_ADAMW ? 2 : cfg->momentum != 0.0;
    tm_tag tags[4] = {TM_TAG_PARAM, TM_TAG_GRAD, TM_TAG_OPTIMIZER, TM_TAG_OPTIMIZER};
    for (int p = 0; p < cfg->pp; p++)
        for (int t = 0; t < cfg->tp; t++) {
            tm_layer_plan plan[TM_MAX_LAYERS];
            size_t n;
            TM_CHECK(tm_stage_plan(&cfg->model, first[p], first[p + 1], cfg->tp, t, plan, &n));
            /* The arena reserves address space only (nothing is touched),
             * so trying the allocations costs no memory; its report is the
             * one the device itself would give. */
            tm_arena *a;
            TM_CHECK(tm_arena_create(&a, cfg->mem_cap, p * cfg->tp + t));
            int fits = 1;
            for (int i = 0; i < 2 + n_state && fits; i++)
                fits = tm_arena_alloc(a, n * sizeof(float), tags[i]) != NULL;
            tm_arena_destroy(a);
            if (!fits) return TM_ENOMEM;
        }
    return TM_OK;
}
