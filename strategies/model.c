#include "strategies/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategies/rng.h"

int tm_mlp_parse(const char *spec, tm_mlp_config *out, const char **why)
{
    memset(out, 0, sizeof *out);
    const char *p = spec;
    int n = 0;
    for (;;) {
        if (*p < '0' || *p > '9') {
            *why = "widths must be positive integers separated by commas, e.g. 784,256,128,10";
            return -1;
        }
        errno = 0;
        char *end;
        long v = strtol(p, &end, 10);
        if (errno != 0 || v < 1 || v > TM_MAX_WIDTH) {
            *why = "each width must be between 1 and 1048576";
            return -1;
        }
        if (n > TM_MAX_LAYERS) {
            *why = "too many layers (at most 32 linear layers)";
            return -1;
        }
        out->widths[n++] = (int)v;
        p = end;
        if (*p == '\0') break;
        if (*p != ',') {
            *why = "widths must be positive integers separated by commas, e.g. 784,256,128,10";
            return -1;
        }
        p++;
    }
    if (n < 2) {
        *why = "a model needs at least two widths (inputs and classes)";
        return -1;
    }
    out->n_layers = n - 1;
    return 0;
}

void tm_mlp_format(const tm_mlp_config *cfg, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i <= cfg->n_layers && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%d", i ? "," : "", cfg->widths[i]);
}

int tm_activation_parse(const char *name, tm_activation *out)
{
    if (strcmp(name, "relu") == 0) *out = TM_ACT_RELU;
    else if (strcmp(name, "gelu") == 0) *out = TM_ACT_GELU;
    else return -1;
    return 0;
}

const char *tm_activation_name(tm_activation act) { return act == TM_ACT_GELU ? "gelu" : "relu"; }

size_t tm_mlp_weight_offset(const tm_mlp_config *cfg, int l)
{
    size_t off = 0;
    for (int i = 0; i < l; i++)
        off += (size_t)cfg->widths[i + 1] * ((size_t)cfg->widths[i] + 1);
    return off;
}

size_t tm_mlp_bias_offset(const tm_mlp_config *cfg, int l)
{
    return tm_mlp_weight_offset(cfg, l) + (size_t)cfg->widths[l + 1] * (size_t)cfg->widths[l];
}

size_t tm_mlp_param_count(const tm_mlp_config *cfg)
{
    return tm_mlp_weight_offset(cfg, cfg->n_layers);
}

void tm_mlp_init(const tm_mlp_config *cfg, float *params, uint64_t seed)
{
    for (int l = 0; l < cfg->n_layers; l++) {
        tm_rng r = tm_rng_seed(seed, (uint64_t)l);
        int in = cfg->widths[l], out = cfg->widths[l + 1];
        float bound = 1.0f / sqrtf((float)in);
        float *w = params + tm_mlp_weight_offset(cfg, l), *b = params + tm_mlp_bias_offset(cfg, l);
        for (size_t i = 0; i < (size_t)out * in; i++) w[i] = (2.0f * tm_rng_float(&r) - 1.0f) * bound;
        for (int i = 0; i < out; i++) b[i] = (2.0f * tm_rng_float(&r) - 1.0f) * bound;
    }
}

double tm_mlp_flops_per_sample(const tm_mlp_config *cfg)
{
    double f = 0;
    for (int l = 0; l < cfg->n_layers; l++) f += 2.0 * cfg->widths[l] * cfg->widths[l + 1];
    return 3.0 * f;
}
