/* A model as data: its tensors and layers (strategies/layer.h) with the full
 * flat layout — every parameter in one buffer, tensor after tensor in the
 * order the layers first use them, tied tensors once (llm.c's layout) — and
 * the few functions that only the model knows: initialisation, the loss and
 * the checkpoint metadata that identifies it. strategies/mlp.h and gpt.h
 * build models; everything else reads them.
 * Thread-safety: built by one thread, then read-only and shared. */
#ifndef TM_MODEL_H
#define TM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "strategies/layer.h"

#define TM_MODEL_META 8 /* checkpoint metadata entries a model writes at most */

typedef struct {
    char key[24];
    char value[1024];
} tm_model_meta;

/* The loss over the model's output rows (rows, last->out_w: all classes,
 * or a tensor-parallel rank's share of them, as the model's last layer
 * holds them) against integer targets, scaled by grad_scale into dlogits
 * (OVERWRITTEN; NULL in evaluation). Adds the rows' summed loss to
 * *loss_sum and, in evaluation, the rows predicted right to *correct. */
typedef int (*tm_loss_fn)(const tm_layer_plan *last, const tm_layer_ctx *c, float *dlogits,
                          const float *logits, const int *targets, int rows, float grad_scale,
                          double *loss_sum, double *correct);

struct tm_model {
    const char *family;         /* "mlp" or "gpt": the checkpoints' "model" family */
    int n_tensors;
    tm_tensor *tensors;         /* (n_tensors) */
    int n_layers;
    tm_layer layers[TM_MAX_LAYERS];
    size_t n_params;            /* floats of the full flat layout */
    int rows_per_sample;        /* rows one sample adds: 1 (an image), T (a sequence) */
    int in_width;               /* elements per input row: pixels, or one token id */
    int tokens;                 /* input rows hold int32 token ids, not floats */
    int n_classes;              /* output width: classes, or the vocabulary */
    void *cfg;                  /* the builder's own configuration */
    tm_recompute recompute;     /* how a run keeps activations (set after
                                   building; not part of the model, never
                                   saved): every layer kind reads it */
    tm_loss_fn loss;
    /* Fills the full flat buffer from seed: the same seed, the same model. */
    void (*init)(const tm_model *m, float *params, uint64_t seed);
    /* The metadata that identifies the model in a checkpoint; returns the
     * entry count (at most TM_MODEL_META). */
    int (*meta)(const tm_model *m, tm_model_meta *out);
    /* Non-zero for a tensor name that files from the model's reference
     * implementation carry and loading skips (nanoGPT's tied lm_head.weight
     * and causal-mask buffers); NULL: none. */
    int (*ignores)(const char *name);
};

/* Starts an empty model of the given family; add tensors and layers, then
 * tm_model_finish. TM_EHOSTMEM. */
int tm_model_begin(tm_model *m, const char *family, int max_tensors);
/* Appends a tensor; returns its index. shape[1] is 1 for a 1-D tensor. */
int tm_model_tensor(tm_model *m, const char *name, int ndim, int rows, int cols, int groups,
                    int decay);
/* Appends a layer using the given tensors; returns it for further fields. */
tm_layer *tm_model_layer(tm_model *m, const tm_layer_kind *kind, int in_width, int out_width,
                         const int *tensors, int n_tensors);
/* Works out each tensor's storing layer and its offset in the full layout.
 * TM_EINVAL when the tables are inconsistent (a bug in a builder). */
int tm_model_finish(tm_model *m);
/* Frees what the builder allocated; a zeroed model is fine. */
void tm_model_destroy(tm_model *m);

/* Index of the tensor called name, or -1. */
int tm_model_find(const tm_model *m, const char *name);

/* The pipeline's units: layers that do not attach to a neighbour. unit[l]
 * is layer l's unit (attached layers take their neighbour's); returns the
 * unit count. */
int tm_model_units(const tm_model *m, int *unit);
/* What a unit is called in messages: "layer" when no layer attaches to a
 * neighbour (every layer is a unit), else "block". */
const char *tm_model_unit_name(const tm_model *m);

/* Forward FLOPs of the whole model for one sample. */
double tm_model_flops_per_sample(const tm_model *m);

/* Softmax cross-entropy over whole output rows (the default loss). */
int tm_loss_softmax_xent(const tm_layer_plan *last, const tm_layer_ctx *c, float *dlogits,
                         const float *logits, const int *targets, int rows, float grad_scale,
                         double *loss_sum, double *correct);

#endif
