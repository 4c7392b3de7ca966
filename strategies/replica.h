/* A whole model on one device: parameters, gradients and optimizer state in
 * the device's arena (tagged), forward and backward of a micro-batch, and
 * inference. Thread-safety: a replica belongs to its device's thread. */
#ifndef TM_REPLICA_H
#define TM_REPLICA_H

#include "runtime/world.h"
#include "strategies/model.h"

typedef enum { TM_OPT_SGD, TM_OPT_ADAMW } tm_optimizer;

typedef struct {
    tm_mlp_config cfg;
    tm_device *dev;
    size_t n_params;
    float *params;     /* (n_params) tag param */
    float *grads;      /* (n_params) tag grad */
    float *opt_state[2]; /* SGD: momentum (or none); AdamW: exp_avg, exp_avg_sq; tag optimizer */
    int n_opt_state;
    int max_rows;      /* largest micro-batch the activation buffers hold */
} tm_replica;

/* Allocates parameters, gradients and optimizer state for `opt` (momentum
 * buffers only when momentum != 0). On TM_ENOMEM the thread's message is the
 * arena's OOM report. */
int tm_replica_create(tm_replica *r, tm_device *dev, const tm_mlp_config *cfg,
                      tm_optimizer opt, double momentum);
void tm_replica_destroy(tm_replica *r);

/* Bytes of activation memory one micro-batch of `rows` needs (inputs,
 * labels, every layer's output, and the backward's gradient buffers). */
size_t tm_replica_activation_bytes(const tm_mlp_config *cfg, int rows);

/* One micro-batch: forward, softmax cross-entropy, backward adding into the
 * gradients. grad_scale is 1/global batch so that micro-batch gradients sum
 * to the gradient of the mean loss. *loss_sum receives the sum of the rows'
 * losses. Activations are allocated here (tag activation) and freed before
 * returning. x and labels are the staged micro-batch in the device arena. */
int tm_replica_train_micro(tm_replica *r, const float *x /* (rows, IN) */,
                           const int *labels /* (rows) */, int rows, float grad_scale,
                           double *loss_sum);

/* Inference without storing activations for backward: the loss sum and the
 * number of correct predictions over `rows` staged samples. */
int tm_replica_eval(tm_replica *r, const float *x, const int *labels, int rows,
                    double *loss_sum, int *correct);

#endif
