/* The pipeline executor: runs one device's action list of a schedule
 * (strategies/schedule.h) for one optimizer step: forwards and backwards of
 * micro-batches through the device's stage (its v chunks under virtual
 * stages), activations and gradients to and from the neighbouring devices
 * over the pp group (a ring with v > 1). The same executor runs every
 * schedule (and pp = 1, where the list is just F and B).
 * Thread-safety: called by the stage's device thread. */
#ifndef TM_PIPELINE_H
#define TM_PIPELINE_H

#include "strategies/schedule.h"
#include "strategies/stage.h"

typedef struct {
    tm_stage *stage;         /* (v) the device's chunks: chunk c is model
                                stage c * pp + p (v = 1: the device's stage) */
    tm_comm *pp_comm;        /* rank = device p of the pipeline */
    const tm_schedule *sched;
    int rows;                /* samples per micro-batch (training) */
    /* First stage: fills x (rows, stage in_width) with micro-batch mb. */
    int (*load_input)(void *ctx, int mb, float *x);
    /* Last stage: the gradient of the loss for micro-batch mb from its
     * logits (rows, classes) into dlogits, adding the rows' loss sum and
     * correct predictions to the context. */
    int (*loss)(void *ctx, int mb, const float *logits, float *dlogits);
    void *ctx;
    /* Given to the backward of each chunk's last micro-batch with that
     * chunk's ready_ctx[c]: data-parallel gradient buckets are reduced as
     * they become final (may be NULL). */
    tm_grads_ready_fn ready;
    void *const *ready_ctx;  /* (v) */
    int max_in_flight;       /* out: most chunk passes (micro-batches of a
                                chunk) held at once */
} tm_pipeline_step;

/* Runs the device's list, each action on its chunk; a run of joined
 * message actions (with_next) is one tm_exchange. TM_OK or the first
 * failing status. */
int tm_pipeline_run(tm_pipeline_step *ps);

/* *peak: the most activation bytes device p holds while it runs its list
 * of sched for micro-batches of rows rows, s being its chunks (v of them,
 * as tm_pipeline_step.stage), worked out from the chunks' formulas
 * (strategies/stage.h) and the list itself, as the arena counts blocks:
 * the chunk passes' blocks from their first forward (or receive) to their
 * backward (to their W under a split backward, with
 * the W block from the backward), the output gradients from their receive
 * (or the loss) to the backward, the input gradients from the backward to
 * their send, and at each forward or backward its transient bytes. The
 * loss's own buffer is not counted: the model's loss must use less than
 * the backward's block that follows it (strategies/model.h). TM_OK or
 * TM_EHOSTMEM. */
int tm_pipeline_activation_peak(const tm_stage *s, const tm_schedule *sched, int p, int rows,
                                size_t *peak);

/* Forward only (evaluation): n_mb micro-batches of rows[mb] samples flow
 * through the model stages, one micro-batch through every chunk before the
 * next, the last model stage's loss() getting dlogits = NULL. */
int tm_pipeline_infer(tm_pipeline_step *ps, int n_mb, const int *rows);

#endif
