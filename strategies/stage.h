/* A device's share of the model: the layers of its pipeline stage as its
 * tensor-parallel rank holds them (strategies/plan.h), with parameters,
 * gradients and optimizer state in its arena, and the forward and backward
 * of a micro-batch through them — each layer's kind does its own work and
 * its own tensor-parallel collectives. Thread-safety: owned by its device. */
#ifndef TM_STAGE_H
#define TM_STAGE_H

#include "kernels/bf16.h"
#include "runtime/comm.h"
#include "strategies/optimizer.h"
#include "strategies/plan.h"

/* Where a layer's tensors are while it runs, when other buffers than the
 * stage's own hold them (ZeRO's shards, strategies/zero.h): begin, before
 * layer i's forward (bwd 0) or backward (bwd 1), may give another plan
 * (its shards' offsets into those buffers) and other c->params and
 * c->grads; end runs after the layer with its status, and returns the
 * status to go on with. */
typedef struct {
    int (*begin)(void *ctx, int i, int bwd, const tm_layer_plan **p, tm_layer_ctx *c);
    int (*end)(void *ctx, int i, int bwd, int st);
    void *ctx;
} tm_stage_hooks;

/* The numbers a run computes with (README, "bf16 mixed precision"). */
typedef enum {
    TM_PRECISION_FP32, /* everything in fp32 */
    TM_PRECISION_BF16, /* the GEMMs on bf16 operands (a bf16 copy of the
                          weights) with fp32 accumulation, the stored
                          activations in bf16; master weights, gradients
                          and optimizer state in fp32 */
} tm_precision;

/* "fp32", "bf16" into *out: 0, or -1 for another name. */
int tm_precision_parse(const char *name, tm_precision *out);
const char *tm_precision_name(tm_precision p);

typedef struct tm_stage {
    tm_device *dev;
    tm_comm *tp_comm;        /* the tensor-parallel group (size tp) */
    const tm_model *model;
    int tp, t;
    int l0, n;               /* layers l0 .. l0 + n - 1 of the model */
    tm_layer_plan layer[TM_MAX_LAYERS];
    int in_width, out_width; /* elements per row entering and leaving the stage */
    int has_model_input;     /* holds layer 0: no input gradient to compute */
    int grad_w;              /* floats per row of a backward gradient buffer */
    size_t n_params;
    float *params;           /* (n_params) tag param: the rank's shards */
    float *grads;            /* (n_params) tag grad, same layout */
    float *opt_state[TM_OPT_MAX_STATE]; /* tag optimizer, same layout */
    int n_opt_state;
    const tm_stage_hooks *hooks; /* NULL: layers run on params and grads */
    tm_precision precision;  /* tm_stage_set_precision; fp32 when created */
    tm_bf16 *params16;       /* (n_params) tag bf16: the rounding of params
                                that feeds the GEMMs (bf16 with params) */
    int params_on_host;      /* params is host memory (optimizer offload in
                                bf16: the fp32 masters; NULL when ZeRO keeps
                                them), which the device never reads: each
                                layer runs on its tensors expanded from
                                params16 (tm_stage_view_bytes), unless hooks
                                give it other buffers */
} tm_stage;

/* Layers [l0, l1) of m on this device, tp rank tm_comm_rank(tp_comm).
 * Allocates parameters, gradients and n_opt_state optimizer buffers
 * (zeroed). TM_ENOMEM carries the arena's report. */
int tm_stage_create(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m, int l0,
                    int l1, int n_opt_state);
/* The stage's plan and widths alone, with no device and no buffers (dev
 * NULL): what the byte counts below read, for predictions before a run.
 * TM_EINVAL as tm_stage_plan. */
int tm_stage_describe(tm_stage *s, const tm_model *m, int l0, int l1, int tp, int t);
/* The same stage for inference: its parameters only (grads NULL). */
int tm_stage_create_weights(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m,
                            int l0, int l1);
/* For ZeRO, which keeps shards of the rest: the parameters only when
 * params is set, the gradients only when grads is set, no optimizer state
 * (NULL where not allocated). */
int tm_stage_create_parts(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m,
                          int l0, int l1, int params, int grads);
void tm_stage_destroy(tm_stage *s);

/* Sets the precision the stage computes and stores activations in; bf16
 * on a stage with parameters (or params_on_host) also allocates their bf16
 * copy (tag bf16) and fills it from params when there are any. Works on a
 * described stage too (the byte counts below follow it). TM_ENOMEM
 * carries the arena's report. */
int tm_stage_set_precision(tm_stage *s, tm_precision p);
/* Rounds the parameters into their bf16 copy (after an optimizer step);
 * does nothing without a copy or without params. */
void tm_stage_refresh_bf16(tm_stage *s);
/* With params_on_host, the most bytes (tag bf16, as the arena counts its
 * blocks) the layer in flight holds besides params16: a layer's tensors
 * expanded to fp32, one slot each, and in its backward (bwd set) a
 * gradient bucket in the same layout; the largest layer's. 0 otherwise
 * (on a described stage, set params_on_host first). */
size_t tm_stage_view_bytes(const tm_stage *s, int bwd);

/* Copies this rank's shard of a full single-device flat buffer (the
 * layout of strategies/model.h) into shard (n_params floats): each tensor's
 * rows or columns, padding rows zero. */
void tm_stage_shard_from(const tm_stage *s, const float *full, float *shard);
/* The reverse, into the full buffer. Tensors held whole on every tp rank
 * are written only when write_shared is set, so that one rank writes them. */
void tm_stage_shard_to(const tm_stage *s, const float *shard, float *full, int write_shared);
/* What tm_stage_shard_to copies, run by run in its order: n floats from
 * shard offset `shard` to full offset `full` (pad: padding floats that
 * follow in the shard, not copied). */
typedef void tm_stage_span_fn(void *ctx, size_t full, size_t shard, size_t n, size_t pad);
void tm_stage_shard_spans(const tm_stage *s, int write_shared, tm_stage_span_fn *fn, void *ctx);

/* The saved activations of one micro-batch between its forward and its
 * backward: one arena block (tag activation). In bf16 the layers' outputs
 * but the stage's last and what they keep are stored in bf16 (out16,
 * saved16; out and saved NULL), the stage's input and output stay fp32:
 * what is staged, sent and received, and the model's logits. */
typedef struct {
    int rows;
    void *block;
    float *input;                /* (rows, in_width): staged or received */
    float *out[TM_MAX_LAYERS];   /* each layer's output (rows, out_w) */
    float *saved[TM_MAX_LAYERS]; /* what each layer keeps for its backward;
                                    NULL when it keeps nothing here (a
                                    recomputed layer: strategies/layer.h) */
    tm_bf16 *out16[TM_MAX_LAYERS];   /* bf16: out of the layers but the last */
    tm_bf16 *saved16[TM_MAX_LAYERS]; /* bf16: saved */
    float *output;               /* (rows, out_width): the stage's output */
} tm_stage_acts;

/* Allocates a micro-batch's activations; fill a->input, then forward. */
int tm_stage_acts_alloc(tm_stage *s, int rows, tm_stage_acts *a);
void tm_stage_acts_free(tm_stage *s, tm_stage_acts *a);
/* Bytes tm_stage_acts_alloc takes for `rows` (the activation memory one
 * micro-batch in flight holds: the stage's input, every layer's output and
 * what the layers keep under the model's tm_recompute). */
size_t tm_stage_acts_bytes(const tm_stage *s, int rows);
/* The most a backward, and a forward, hold at once besides the micro-
 * batch's block, as the arena counts blocks (whole TM_ARENA_ALIGN units):
 * the backward's block (gradient buffers, scratch, the recomputed layers'
 * region) with a recomputed forward's transient; the forward's region of
 * the recomputed layers with the largest transient a layer's forward
 * allocates (0: none). */
size_t tm_stage_backward_bytes(const tm_stage *s, int rows);
size_t tm_stage_forward_bytes(const tm_stage *s, int rows);

/* Forward of a->input through the stage into a->output; a recomputed
 * layer fills a transient region instead of a->saved. */
int tm_stage_forward(tm_stage *s, tm_stage_acts *a);

/* Called after each layer's parameter gradients are final for this
 * backward (last layer first): off and len (floats) in s->grads. */
typedef int (*tm_grads_ready_fn)(void *ctx, size_t off, size_t len);

/* Backward of a micro-batch: dy (rows, out_width) is the gradient of the
 * stage's output (it is used as scratch); a recomputed layer runs its
 * forward again first (rewriting its output with the same bits); adds
 * into s->grads; writes the
 * gradient of the stage's input into dx (rows, in_width) unless dx is NULL
 * or the stage holds the model's input. ready may be NULL. */
int tm_stage_backward(tm_stage *s, tm_stage_acts *a, float *dy, float *dx,
                      tm_grads_ready_fn ready, void *ctx);

/* The backward split for zero-bubble schedules: B, the input gradient
 * (tm_stage_backward's dx) and the whole backward of the layers whose
 * kinds do not split it (strategies/layer.h), keeping in wsave
 * (tm_stage_wsave_bytes) what W needs; then W, the parameter gradients of
 * the layers that split, from a's inputs and wsave, calling ready for
 * every layer's bucket as tm_stage_backward does. Not with hooks (ZeRO-2
 * and 3 reduce each layer's gradients as its backward ends). */
int tm_stage_backward_input(tm_stage *s, tm_stage_acts *a, float *dy, float *dx, float *wsave);
int tm_stage_backward_weight(tm_stage *s, tm_stage_acts *a, const float *wsave,
                             tm_grads_ready_fn ready, void *ctx);
/* Bytes of a micro-batch's W block, from its B to its W (0: no layer of
 * the stage splits its backward). */
size_t tm_stage_wsave_bytes(const tm_stage *s, int rows);

/* Gradients of parameters held whole whose every rank saw only its share
 * of the rows (tm_shard.partial: LayerNorms under sequence parallelism):
 * summed over the tensor-parallel group in one all-reduce, after the
 * backward of a step's last micro-batch. tm_stage_partial_floats: their
 * floats. */
int tm_stage_sum_partial(tm_stage *s);
size_t tm_stage_partial_floats(const tm_stage *s);

/* The layer context for this stage and a micro-batch of rows rows. */
tm_layer_ctx tm_stage_ctx(const tm_stage *s, int rows);

#endif
