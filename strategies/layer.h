/* The contract between a model and the machinery that trains it: a model is
 * a table of tensors and a table of layers, each layer of a kind — a small
 * function table (plan, FLOPs, memory, forward, backward, traffic). Plan,
 * stage, pipeline, trainer, checkpoint and optimizer walk these tables and
 * never name a model; the code inside a kind is plain and straight-line.
 * Thread-safety: tables are immutable once built and shared by every device;
 * a kind's functions touch only their arguments, the device's arena and its
 * tensor-parallel communicator. */
#ifndef TM_LAYER_H
#define TM_LAYER_H

#include <stddef.h>

#include "runtime/comm.h"

#define TM_MAX_LAYERS 66    /* layers of one model (a GPT: 64 blocks + embedding + head) */
#define TM_LAYER_TENSORS 12 /* tensors one layer uses at most (a transformer block) */
#define TM_NAME_LEN 64      /* tensor names, NUL included */

/* How a rank's part of a tensor is cut from the whole (Megatron's column
 * parallel linear splits the weight's rows, its row parallel linear the
 * columns). */
typedef enum {
    TM_SHARD_WHOLE, /* every rank of the tensor-parallel group holds it whole */
    TM_SHARD_ROWS,  /* a range of dim 0 (of each group block, see groups) */
    TM_SHARD_COLS,  /* a range of dim 1 */
} tm_shard_dim;

typedef struct {
    char name[TM_NAME_LEN]; /* the checkpoint name (PyTorch's state_dict key) */
    int ndim;               /* 1 or 2 */
    int shape[2];           /* (rows, cols), PyTorch's layout; 1-D: (n, 1) */
    int groups;             /* dim 0 is this many equal blocks that a row split
                               cuts each alone (c_attn's q, k, v: 3); else 1 */
    int decay;              /* weight decay applies to it */
    int layer;              /* the first layer using it: it stores the tensor */
    size_t off;             /* floats before it in the full flat layout */
} tm_tensor;

/* Which stage a layer belongs to when the pipeline is cut: its own unit, or
 * that of its neighbour (the GPT's embedding joins the first block's stage,
 * its head the last's, so --stages and --pp count blocks). */
typedef enum { TM_ATTACH_NONE, TM_ATTACH_NEXT, TM_ATTACH_PREV } tm_attach;

typedef struct tm_layer_kind tm_layer_kind;
typedef struct tm_model tm_model;

/* What a run keeps of a layer's forward for its backward (a way to run
 * the model, not part of it: never saved). */
typedef enum {
    TM_RECOMPUTE_NONE,      /* everything the backward reads */
    TM_RECOMPUTE_FULL,      /* only the layer's input (the previous layer's
                               output); its backward first re-runs its
                               forward (Chen et al. 2016; Megatron's full) */
    TM_RECOMPUTE_SELECTIVE, /* everything but attention's core, the T x T
                               weights, recomputed per head in the backward
                               (Korthikanti et al. 2022) */
} tm_recompute;

typedef struct {
    const tm_layer_kind *kind;
    int index;                       /* in the model */
    int n_tensors;
    int tensor[TM_LAYER_TENSORS];    /* model tensor indices; one used by an
                                        earlier layer is tied to it */
    int in_width, out_width;         /* 4-byte elements per row entering and
                                        leaving (the whole layer's) */
    tm_attach attach;
    int arg;                         /* the kind's own setting (the MLP's
                                        linear: an activation follows) */
} tm_layer;

/* A rank's part of one tensor of a layer, in the device's flat buffers. */
typedef struct {
    tm_shard_dim dim;
    int lo, len;       /* rows (ROWS, of each group block) or columns (COLS)
                          [lo, lo + len); rows past the tensor's real extent
                          are padding: zero, never stored in checkpoints */
    size_t off, count; /* floats in the stage's flat buffers */
    int owned;         /* stored for this layer (else a tied tensor stored
                          by an earlier layer of the stage) */
    int partial;       /* held whole, but each rank's gradient covers only
                          its share of the rows (a LayerNorm under sequence
                          parallelism): summed over the group each step */
} tm_shard;

/* A layer as tensor-parallel rank t of tp holds it in one stage. */
typedef struct {
    const tm_model *model;
    const tm_layer *layer;
    int tp, t;
    int mode;                    /* the kind's choice of split */
    int in_w, out_w;             /* elements per row this rank receives and
                                    passes on (a split hidden layer: its share) */
    int grad_w;                  /* floats per row of a gradient buffer the
                                    backward reads or writes (>= in_w, out_w) */
    int local[4];                /* the kind's local sizes */
    tm_shard shard[TM_LAYER_TENSORS]; /* in layer->tensor order */
    size_t own_off, own_len;     /* the range it stores: its gradient bucket */
} tm_layer_plan;

/* What a forward or backward runs with. */
typedef struct {
    tm_device *dev;
    tm_comm *tp_comm;            /* the tensor-parallel group (size tp) */
    float *params, *grads;       /* the stage's flat buffers */
    int rows;                    /* rows of this micro-batch */
} tm_layer_ctx;

struct tm_layer_kind {
    const char *name;
    /* Chooses how rank p->t of p->tp holds the layer: p->mode, widths and
     * each tensor's shard (dim, lo, len); offsets are the caller's. prev is
     * the previous layer of the stage (NULL for its first); last: no layer
     * follows in the stage. TM_EINVAL with a message when tp cannot split
     * it. */
    int (*plan)(tm_layer_plan *p, const tm_layer_plan *prev, int last);
    /* Forward FLOPs of the whole layer for rows rows (backward: twice). */
    double (*flops)(const tm_layer *l, int rows);
    /* Floats the forward keeps for the backward besides the output, for
     * rows rows on this rank. */
    size_t (*saved_floats)(const tm_layer_plan *p, int rows);
    /* Floats of scratch the backward needs besides its gradient buffers. */
    size_t (*scratch_floats)(const tm_layer_plan *p, int rows);
    /* Floats the forward allocates for itself while it runs (NULL: none);
     * the up-front memory check counts them. */
    size_t (*fwd_scratch_floats)(const tm_layer_plan *p, int rows);
    /* in (rows, in_w) -> out (rows, out_w), keeping what the backward needs
     * in saved. May allocate transient scratch in the device's arena. */
    int (*forward)(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in, float *out,
                   float *saved);
    /* Adds the layer's parameter gradients into c->grads and writes the
     * gradient of its input into din (rows, in_w) unless din is NULL. dout
     * (rows, out_w) is the gradient of its output and may be overwritten. */
    int (*backward)(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                    const float *out, float *saved, float *dout, float *din, float *scratch);
    /* The backward split for zero-bubble schedules (strategies/schedule.h),
     * all three or none (NULL: the kind's backward does all its work in B).
     * backward_input is backward without the parameter gradients (all of
     * them, or those of its GEMMs): it writes din as backward does and
     * keeps in wsave (wsave_floats(p, rows); 0: this layer does not split
     * at these rows) what backward_weight needs to add the rest of the
     * parameter gradients into c->grads later, from the layer's input in
     * and what its forward saved (still held). backward_input then
     * backward_weight give backward's bits: the same kernels, adding into
     * the gradients in the same order. */
    size_t (*wsave_floats)(const tm_layer_plan *p, int rows);
    int (*backward_input)(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                          const float *out, float *saved, float *dout, float *din,
                          float *scratch, float *wsave);
    int (*backward_weight)(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                           const float *saved, const float *wsave);
    /* Payload bytes this rank sends over the tensor-parallel group for one
     * micro-batch of rows rows, forward and backward (din: it computes an
     * input gradient): the traffic formula. */
    double (*tp_bytes)(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din);
    /* The forward's part of tp_bytes, which a full recomputation sends
     * again in the backward. */
    double (*tp_forward_bytes)(const tm_layer_plan *p, tm_comm *tp_comm, int rows);
    /* It keeps an attention core (T x T weights) that selective
     * recomputation drops: saved_floats, forward and backward then do
     * without it. */
    int has_core;
};

/* "none", "full", "selective" into *out: 0, or -1 for another name. */
int tm_recompute_parse(const char *name, tm_recompute *out);
const char *tm_recompute_name(tm_recompute r);
/* Whether a run of the model re-runs this layer's forward in its
 * backward: under full, when the layer keeps something besides its output
 * (otherwise there is nothing to regain). */
int tm_layer_recomputed(const tm_layer_plan *p, int rows);
/* What the layer sends over the tensor-parallel group per micro-batch
 * (the kind's tp_bytes), with its forward's share once more when it is
 * recomputed: the collectives run again. */
double tm_layer_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din);

/* Elements of a shard. */
size_t tm_shard_count(const tm_tensor *t, const tm_shard *s);

/* For kinds: clears or copies n floats of device memory, charging the
 * device's modeled clock for the bytes (buffer work between kernels is
 * device work too). */
void tm_layer_zero(const tm_layer_ctx *c, float *p, size_t n);
void tm_layer_copy(const tm_layer_ctx *c, float *dst, const float *src, size_t n);
/* Payload bytes a member of comm sends in an all-reduce of count floats
 * (ring: 2(n-1)/n x bytes; direct: (n-1) x bytes), for traffic formulas. */
double tm_allreduce_send_bytes(tm_comm *comm, size_t count);

#endif
