/* How a model is split over a dp x pp x tp mesh: contiguous stages of layers
 * (balanced by FLOPs, or given), and per layer how a tensor-parallel group
 * shares it (Megatron's column / row pairs). Pure functions of their
 * arguments; thread-safe. */
#ifndef TM_PLAN_H
#define TM_PLAN_H

#include <stddef.h>

#include "strategies/model.h"

typedef enum {
    TM_SPLIT_NONE,   /* whole layer on every rank (tp = 1) */
    TM_SPLIT_COLUMN, /* weight rows (output features) and bias split */
    TM_SPLIT_ROW,    /* weight columns (input features) split; bias whole */
} tm_split;

typedef struct {
    int layer;           /* index in the model */
    tm_split split;
    int gather;          /* column split without a row partner in its stage:
                            the outputs are all-gathered over the tp group */
    int in, out;         /* the full layer's widths */
    int in_local;        /* inputs this rank multiplies (ROW: in / tp) */
    int out_local;       /* outputs this rank computes (COLUMN: out_padded / tp) */
    int out_padded;      /* COLUMN: out rounded up to a multiple of tp; the
                            extra rows are zero and their outputs dropped */
    int row0;            /* COLUMN: first output row of this rank's shard;
                            ROW: first input column */
    int activation;      /* the model's activation follows (all but the last) */
    size_t w_off, w_len; /* this rank's weight shard in its flat buffer */
    size_t b_off, b_len; /* its bias (shard or whole) */
} tm_layer_plan;

/* first[s] .. first[s + 1] - 1 are the layers of stage s (first[pp] = n).
 * Balanced: the contiguous split minimising the largest stage's FLOPs. */
int tm_stages_balance(const tm_mlp_config *cfg, int pp, int *first);
/* "2,1,1": layers per stage; must have pp positive entries adding up to
 * the number of layers. TM_OK or TM_EINVAL with a message. */
int tm_stages_parse(const char *spec, const tm_mlp_config *cfg, int pp, int *first);

/* The layers [l0, l1) as tensor-parallel rank t of tp holds them: within
 * the stage, layers pair up as column then row split; a layer left alone
 * is column split and gathered. A paired width that tp does not divide is
 * an error (TM_EINVAL, naming the layer). *n_params: the rank's floats. */
int tm_stage_plan(const tm_mlp_config *cfg, int l0, int l1, int tp, int t, tm_layer_plan *out,
                  size_t *n_params);

#endif
