/* The model: a multi-layer perceptron described by its widths, with all
 * parameters in one flat buffer (llm.c style) laid out layer by layer as
 * weight (OUT, IN) then bias (OUT) — PyTorch's nn.Linear layout.
 * Thread-safety: pure functions of their arguments. */
#ifndef TM_MODEL_H
#define TM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define TM_MAX_LAYERS 32
#define TM_MAX_WIDTH (1 << 20)

typedef enum { TM_ACT_RELU, TM_ACT_GELU } tm_activation;

typedef struct {
    int n_layers;                     /* linear layers */
    int widths[TM_MAX_LAYERS + 1];    /* widths[0] inputs ... widths[n] classes */
    tm_activation act;                /* between linear layers, not after the last */
} tm_mlp_config;

/* Parses "784,256,128,10" (2 to TM_MAX_LAYERS + 1 positive widths, each at
 * most TM_MAX_WIDTH). Returns 0, or -1 with a reason in *why. */
int tm_mlp_parse(const char *spec, tm_mlp_config *out, const char **why);
/* "784,256,128,10" into buf. */
void tm_mlp_format(const tm_mlp_config *cfg, char *buf, size_t size);
/* Parses "relu" / "gelu"; returns 0 or -1. */
int tm_activation_parse(const char *name, tm_activation *out);
const char *tm_activation_name(tm_activation act);

/* Number of floats in the flat parameter buffer. */
size_t tm_mlp_param_count(const tm_mlp_config *cfg);
/* Offsets (in floats) of layer l's weight and bias in the flat buffer. */
size_t tm_mlp_weight_offset(const tm_mlp_config *cfg, int l);
size_t tm_mlp_bias_offset(const tm_mlp_config *cfg, int l);

/* PyTorch's nn.Linear default initialisation: every weight and bias of
 * layer l drawn from U(-1/sqrt(IN_l), 1/sqrt(IN_l)) (kaiming_uniform with
 * a = sqrt(5)), from PCG32 stream l of `seed`, weights row by row, then the
 * bias: the same seed gives the same model everywhere. */
void tm_mlp_init(const tm_mlp_config *cfg, float *params, uint64_t seed);

/* FLOPs of forward (F) and backward (2F) for one sample: the GEMMs only. */
double tm_mlp_flops_per_sample(const tm_mlp_config *cfg);

#endif
