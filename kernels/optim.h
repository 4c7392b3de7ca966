/* Optimizers on flat buffers: SGD with momentum and AdamW, with PyTorch's
 * semantics. Thread-safe: calls touch only their arguments (and cost hook). */
#ifndef TM_OPTIM_H
#define TM_OPTIM_H

#include <stddef.h>

/* Every step function updates n parameters in place from their gradients,
 * with optimizer state the caller owns: flat float buffers of the same
 * length as the parameters. Because nothing ties a call to a whole model,
 * one call can update every parameter of a model (llm.c keeps them in one
 * allocation) and a sharded optimizer can update just its slice, passing
 * param + offset, grad + offset, state + offset and the slice length.
 *
 * step is the 1-based number of the step being taken, as in PyTorch's state.
 * On step 1 the state buffers are initialised here, whatever they held before
 * (so arena memory need not be zeroed); later steps read what the previous
 * step left.
 *
 * Hyper-parameters are doubles, as PyTorch's are Python floats: scalars
 * derived from them (1 - lr * weight_decay, the bias corrections) are formed
 * in double and rounded to float once, as PyTorch does.
 *
 * The step functions cannot fail. Hyper-parameters come from users, so they
 * are validated once, before training, with tm_*_params_check; a step below 1
 * or a missing state buffer can only be a bug and asserts. */

typedef struct {
    double lr;           /* learning rate, >= 0 */
    double momentum;     /* >= 0; 0 disables the momentum buffer */
    double weight_decay; /* L2 penalty added to the gradient, >= 0 */
} tm_sgd_params;

/* torch.optim.SGD with dampening 0 and nesterov off:
 *   d = grad + weight_decay · param
 *   buf = d on step 1, else momentum · buf + d   (only when momentum != 0)
 *   param -= lr · buf   (or lr · d without momentum)
 * momentum_buf may be NULL when momentum == 0. */
void tm_sgd_step(float *param,        /* (n) */
                 const float *grad,   /* (n) */
                 float *momentum_buf, /* (n) or NULL */
                 size_t n, tm_sgd_params hp, long step);

/* NULL if hp is valid, else a sentence naming the first bad field (the
 * ranges PyTorch enforces); the caller turns it into its own error. */
const char *tm_sgd_params_check(tm_sgd_params hp);

typedef struct {
    double lr;           /* learning rate, >= 0 */
    double beta1;        /* first-moment decay, in [0, 1) */
    double beta2;        /* second-moment decay, in [0, 1) */
    double eps;          /* added to the denominator, >= 0 */
    double weight_decay; /* decoupled decay, >= 0 */
} tm_adamw_params;

/* torch.optim.AdamW's defaults. */
#define TM_ADAMW_DEFAULTS                                                      \
    ((tm_adamw_params){.lr = 1e-3,                                             \
                       .beta1 = 0.9,                                           \
                       .beta2 = 0.999,                                         \
                       .eps = 1e-8,                                            \
                       .weight_decay = 1e-2})

/* torch.optim.AdamW (amsgrad off), with t = step:
 *   param *= 1 - lr · weight_decay
 *   m = beta1 · m + (1 - beta1) · grad
 *   v = beta2 · v + (1 - beta2) · grad²
 *   param -= lr / (1 - beta1^t) · m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * which is p -= lr · mhat / (sqrt(vhat) + eps) with eps applied as PyTorch
 * applies it. m and v start at zero on step 1. */
void tm_adamw_step(float *param,      /* (n) */
                   const float *grad, /* (n) */
                   float *m,          /* (n) first moment */
                   float *v,          /* (n) second moment */
                   size_t n, tm_adamw_params hp, long step);

/* NULL if hp is valid, else a sentence naming the first bad field. */
const char *tm_adamw_params_check(tm_adamw_params hp);

#endif
