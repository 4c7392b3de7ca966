/* The optimizers as the trainer and checkpoints see them: kinds, their
 * state buffers and names (PyTorch's: momentum_buffer, exp_avg,
 * exp_avg_sq), a step over a stage's flat buffers with weight decay only
 * where the model's tensor table allows it, and gradient clipping by the
 * global norm. The element loops are kernels/optim.c's.
 * Thread-safety: each call touches only the stage it is given. */
#ifndef TM_OPTIMIZER_H
#define TM_OPTIMIZER_H

#include <stddef.h>

#define TM_OPT_MAX_STATE 2 /* state buffers per parameter at most */

typedef enum { TM_OPT_SGD, TM_OPT_ADAMW } tm_optimizer;

typedef struct {
    tm_optimizer kind;
    double momentum;     /* SGD: 0 keeps no momentum buffer */
    double weight_decay; /* SGD: L2 term; AdamW: decoupled; on tensors with decay set */
    double beta1, beta2; /* AdamW */
    double eps;          /* AdamW */
} tm_optim_config;

/* "sgd" / "adamw": 0, or -1 for anything else. */
int tm_optimizer_parse(const char *name, tm_optimizer *out);
const char *tm_optimizer_name(tm_optimizer kind);
/* State buffers per parameter: AdamW 2, SGD 1 with momentum, else 0. */
int tm_optimizer_state_count(const tm_optim_config *c);
/* Name of state buffer i (0-based) as PyTorch's state_dict calls it. */
const char *tm_optimizer_state_name(tm_optimizer kind, int i);
/* NULL when the hyper-parameters are valid, else a one-line reason. */
const char *tm_optimizer_check(const tm_optim_config *c);

struct tm_stage;

/* One step over len parameters with their gradients and state buffers
 * (state[i] NULL past tm_optimizer_state_count), weight decay when decay
 * is set: the update every caller shares (a stage's, ZeRO's shards). */
void tm_optimizer_update(const tm_optim_config *c, float *params, const float *grads,
                         float *const *state, size_t len, int decay, double lr, long step);

/* One optimizer step (1-based `step`, learning rate lr) over the stage's
 * parameters, weight decay applied to the tensors whose table entry has
 * decay set (one call per run of equal flags). */
void tm_optimizer_step(const tm_optim_config *c, struct tm_stage *s, double lr, long step);

/* Whether tensor k of the stage's layer i counts in the global gradient
 * norm on this device, so that each parameter of the model counts once over
 * the mesh: a tensor held whole by every tp rank counts on rank 0 only, a
 * tied copy only where the tensor is stored. */
int tm_stage_norm_counts(const struct tm_stage *s, int i, int k);
/* Sum of the squares of the stage's gradients that count. */
double tm_stage_grad_sq(const struct tm_stage *s);
/* Multiplies every gradient of the stage by scale. */
void tm_stage_grad_scale(struct tm_stage *s, float scale);

/* PyTorch's clip_grad_norm_: the factor gradients are multiplied by for a
 * global norm, max_norm / (norm + 1e-6) clamped to at most 1. */
float tm_clip_factor(double norm, double max_norm);

#endif
