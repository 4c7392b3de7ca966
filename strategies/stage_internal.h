/* Between stage.c and stage_bf16.c only: the block sizes the two share,
 * and the bf16 forward and backward. */
#ifndef TM_STAGE_INTERNAL_H
#define TM_STAGE_INTERNAL_H

#include <stddef.h>

#include "strategies/stage.h"

/* What layer i keeps for its backward in the micro-batch's block: nothing
 * when it is recomputed (strategies/layer.h). */
size_t tm__stage_kept_floats(const tm_stage *s, int i, int rows);
/* The largest scratch a layer's backward asks for. */
size_t tm__stage_scratch_floats(const tm_stage *s, int rows);
/* Bytes of n floats as the arena counts a block of them. */
size_t tm__stage_block_bytes(size_t floats);

/* In bf16: the micro-batch's activation block (tm_stage_acts_bytes), the
 * forward and the backward (with the GEMMs on the bf16 copy while they
 * run), and their working blocks as the arena counts them (without the
 * layers' transient forward blocks). */
size_t tm__stage_acts_bytes_bf16(const tm_stage *s, int rows);
int tm__stage_forward_bf16(tm_stage *s, tm_stage_acts *a);
size_t tm__stage_forward_bytes_bf16(const tm_stage *s, int rows);
int tm__stage_backward_bf16(tm_stage *s, tm_stage_acts *a, float *dy, float *dx,
                            tm_grads_ready_fn ready, void *ctx);
size_t tm__stage_backward_bytes_bf16(const tm_stage *s, int rows);

#endif
