/* How a model is split over a dp x pp x tp mesh: contiguous stages of
 * layers (balanced by FLOPs, or given), and per layer how a rank of the
 * tensor-parallel group holds it (its kind decides: strategies/layer.h),
 * with each tensor's place in the device's flat buffers.
 * Pure functions of their arguments; thread-safe. */
#ifndef TM_PLAN_H
#define TM_PLAN_H

#include <stddef.h>

#include "strategies/model.h"

/* Stage s holds layers first[s] .. first[s + 1] - 1 (first[pp] = layers).
 * Stages are cut between the model's units (tm_model_units: layers that do
 * not attach to a neighbour). Balanced: the contiguous split minimising the
 * largest stage's FLOPs. */
int tm_stages_balance(const tm_model *m, int pp, int *first);
/* "2,1,1": units per stage; must have pp positive entries adding up to the
 * number of units. TM_OK or TM_EINVAL with a message. */
int tm_stages_parse(const char *spec, const tm_model *m, int pp, int *first);

/* The layers [l0, l1) as tensor-parallel rank t of tp holds them, each
 * tensor placed in the stage's flat buffers layer by layer (a tensor tied
 * to an earlier layer of the stage shares its place). *n_params: the
 * rank's floats. TM_EINVAL (naming the layer) when tp cannot split one. */
int tm_stage_plan(const tm_model *m, int l0, int l1, int tp, int t, tm_layer_plan *out,
                  size_t *n_params);

#endif
