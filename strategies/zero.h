/* ZeRO over the data-parallel group (Rajbhandari et al. 2020; PyTorch FSDP):
 * each replica keeps 1/dp of a stage's optimizer state (stage 1), of its
 * gradients too (stage 2), and of its parameters too (stage 3). Every tensor
 * the stage stores is cut into dp equal chunks of ceil(n / dp) floats (the
 * last padded with zeros), chunk d on replica d, so a tensor held by two
 * pipeline stages (the tied embedding) is cut the same way on both.
 * Gradients are reduce-scattered per tensor — stage 1 once per step, when
 * the layer's bucket is final; stages 2 and 3 after every micro-batch's
 * backward of the layer, from a bucket that lives only while it runs — and
 * each replica updates its chunks; stages 1 and 2 then all-gather the
 * parameters, stage 3 all-gathers a layer's before its forward and again
 * before its backward and frees them after.
 * Thread-safety: a tm_zero belongs to its stage's device thread. */
#ifndef TM_ZERO_H
#define TM_ZERO_H

#include <stddef.h>

#include "runtime/comm.h"
#include "strategies/optimizer.h"
#include "strategies/stage.h"

#define TM_ZERO_MAX 3 /* the highest stage */

typedef struct tm_zero tm_zero;

/* Floats of one replica's shard of the stage's layers (plan[0 .. n)): the
 * sum over the tensors it stores of ceil(count / dp). Pure. */
size_t tm_zero_shard_floats(const tm_layer_plan *plan, int n, int dp);

/* Shards stage s (created without what `stage` shards: tm_stage_create_parts)
 * over dp_comm: allocates this replica's chunks of the optimizer's n_state
 * buffers (tag optimizer, zeroed) unless state gives them (the caller's
 * zeroed buffers of tm_zero_shard_floats floats each, kept by the caller:
 * optimizer offload's host memory), of the gradients (stage >= 2, tag grad)
 * and of the parameters (stage 3, tag param), and for stages 2 and 3 runs
 * the stage's layers through its hooks. With masters (a host buffer of as
 * many floats, optimizer offload in bf16) the replica's fp32 parameter
 * chunks live there and the device keeps their bf16 rounding only: stage
 * 3 its chunks' (tag bf16), which a layer's gather expands (the GEMMs read
 * the same values); stages 1 and 2 the stage's whole copy (s->params16,
 * the stage created without parameters), which the all-gather after the
 * update fills from the replicas' rounded chunks and stage 2's backward
 * expands. TM_OK, TM_ENOMEM with the arena's report, or
 * TM_EHOSTMEM. */
int tm_zero_create(tm_zero **out, tm_stage *s, tm_comm *dp_comm, int stage, int n_state,
                   float *const *state, float *masters);
/* NULL is a no-op. Detaches the hooks. */
void tm_zero_destroy(tm_zero *z);

/* From host buffers in the stage's flat layout (tm_stage_shard_from's):
 * this replica's chunks of the parameters (stage 3) and, when state is not
 * NULL, of each optimizer state buffer. */
void tm_zero_load(tm_zero *z, const float *params, float *const *state);
/* The reverse, collective over the replicas: every replica calls it; where
 * params / state are not NULL (replica 0) they receive the whole stage's
 * parameters (stage 3; stages 1 and 2 hold them whole) and optimizer state
 * in the stage's layout. TM_OK or the collective's error. */
int tm_zero_store(tm_zero *z, float *params, float *const *state);

/* Gradients as the optimizer sees them: this replica's chunks (stages 2 and
 * 3), or the stage's whole buffer (stage 1, whose chunks live in it). */
float *tm_zero_grads(const tm_zero *z, size_t *n);
/* The gradient chunk of the tensor stored at offset off of the stage's
 * layout, and its real floats. */
float *tm_zero_grad_chunk(const tm_zero *z, size_t off, size_t *count);

/* Stage 1's gradient bucket (tm_grads_ready_fn, ctx the tm_zero): the
 * tensors stored in [off, off + len) reduce-scattered over the replicas,
 * each replica's chunk written back in place. */
int tm_zero_bucket_ready(void *ctx, size_t off, size_t len);
/* Sequence parallelism's partial LayerNorm gradients (tm_stage_sum_partial)
 * summed over the tensor-parallel group, chunk by chunk. */
int tm_zero_sum_partial(tm_zero *z);
/* The floats that sum sends (tm_stage_partial_floats' counterpart). */
size_t tm_zero_partial_floats(const tm_zero *z);
/* Sum of the squares of this replica's gradient chunks, each parameter of
 * the model counted once over the mesh when summed over dp, tp and pp. */
double tm_zero_grad_sq(const tm_zero *z);
void tm_zero_grad_scale(tm_zero *z, float scale);

/* One optimizer step on this replica's chunks, then (stages 1 and 2) the
 * parameters all-gathered. TM_OK or the collective's error. */
int tm_zero_step(tm_zero *z, const tm_optim_config *c, double lr, long step);
/* Its two halves, for what runs between them (optimizer offload brings the
 * updated chunks back from the host before the all-gather): the update of
 * this replica's chunks, and the all-gather (stages 1 and 2; stage 3 none;
 * with host masters of their bf16 rounding, into the device's copy). */
void tm_zero_update(tm_zero *z, const tm_optim_config *c, double lr, long step);
int tm_zero_gather(tm_zero *z);

/* Bytes one replica sends over dp for the shards in a step of m
 * micro-batches: per tensor (dp - 1) ceil(n/dp) x 4 for each reduce-scatter
 * and all-gather — stage 1 one of each, stage 2 m reduce-scatters and one
 * all-gather, stage 3 m reduce-scatters and 2m all-gathers. */
double tm_zero_step_bytes(const tm_zero *z, int m);
/* The most bytes (tag comm) ZeRO holds at once during a step: the layer in
 * flight (gathered parameters, its gradient bucket), a tied tensor kept
 * between its two layers, or stages 1 and 2's per-tensor buffers. */
size_t tm_zero_transient_bytes(const tm_zero *z);
/* Before a run, from a stage described without a device (tm_stage_describe)
 * sharded over dp replicas at `stage`, on the replica holding the most:
 * tm_zero_transient_bytes as the arena counts its blocks, and
 * tm_zero_partial_floats. TM_OK, TM_EINVAL, TM_EHOSTMEM. */
int tm_zero_predict(const tm_stage *s, int dp, int stage, size_t *transient_bytes,
                    size_t *partial);

#endif
