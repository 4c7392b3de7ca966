/* The pipeline executor: runs one stage's action list of a schedule
 * (strategies/schedule.h) for one optimizer step: forwards and backwards of
 * micro-batches through the device's stage, activations and gradients to
 * and from the neighbouring stages over the pp group. The same executor
 * runs every schedule (and pp = 1, where the list is just F and B).
 * Thread-safety: called by the stage's device thread. */
#ifndef TM_PIPELINE_H
#define TM_PIPELINE_H

#include "strategies/schedule.h"
#include "strategies/stage.h"

typedef struct {
    tm_stage *stage;
    tm_comm *pp_comm;        /* rank = stage index */
    const tm_schedule *sched;
    int rows;                /* samples per micro-batch (training) */
    /* First stage: fills x (rows, stage in_width) with micro-batch mb. */
    int (*load_input)(void *ctx, int mb, float *x);
    /* Last stage: the gradient of the loss for micro-batch mb from its
     * logits (rows, classes) into dlogits, adding the rows' loss sum and
     * correct predictions to the context. */
    int (*loss)(void *ctx, int mb, const float *logits, float *dlogits);
    void *ctx;
    /* Given to the backward of the step's last micro-batch: data-parallel
     * gradient buckets are reduced as they become final (may be NULL). */
    tm_grads_ready_fn ready;
    void *ready_ctx;
    int max_in_flight;       /* out: most micro-batches held at once */
} tm_pipeline_step;

/* Runs the stage's list. TM_OK or the first failing status. */
int tm_pipeline_run(tm_pipeline_step *ps);

/* Forward only (evaluation): n_mb micro-batches of rows[mb] samples flow
 * through the stages, the last stage's loss() getting dlogits = NULL. */
int tm_pipeline_infer(tm_pipeline_step *ps, int n_mb, const int *rows);

#endif
