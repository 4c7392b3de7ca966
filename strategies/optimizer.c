#include "strategies/optimizer.h"

#include <math.h>
#include <string.h>

#include "kernels/cost.h"
#include "kernels/optim.h"
#include "strategies/stage.h"

int tm_optimizer_parse(const char *name, tm_optimizer *out)
{
    if (strcmp(name, "sgd") == 0) *out = TM_OPT_SGD;
    else if (strcmp(name, "adamw") == 0) *out = TM_OPT_ADAMW;
    else return -1;
    return 0;
}

const char *tm_optimizer_name(tm_optimizer kind) { return kind == TM_OPT_ADAMW ? "adamw" : "sgd"; }

int tm_optimizer_state_count(const tm_optim_config *c)
{
    return c->kind == TM_OPT_ADAMW ? 2 : c->momentum != 0.0;
}

const char *tm_optimizer_state_name(tm_optimizer kind, int i)
{
    if (kind == TM_OPT_ADAMW) return i == 0 ? "exp_avg" : "exp_avg_sq";
    return "momentum_buffer";
}

const char *tm_optimizer_check(const tm_optim_config *c)
{
    if (!(c->weight_decay >= 0) || !isfinite(c->weight_decay))
        return "--weight-decay must be a non-negative finite number";
    if (c->kind == TM_OPT_SGD) {
        if (!(c->momentum >= 0) || !(c->momentum < 1)) return "--momentum must be in [0, 1)";
        return NULL;
    }
    if (!(c->beta1 >= 0) || !(c->beta1 < 1)) return "--beta1 must be in [0, 1)";
    if (!(c->beta2 >= 0) || !(c->beta2 < 1)) return "--beta2 must be in [0, 1)";
    if (!(c->eps >= 0) || !isfinite(c->eps)) return "AdamW's eps must be a non-negative number";
    return NULL;
}

void tm_optimizer_update(const tm_optim_config *c, float *params, const float *grads,
                         float *const *state, size_t len, int decay, double lr, long step)
{
    double wd = decay ? c->weight_decay : 0.0;
    if (c->kind == TM_OPT_ADAMW) {
        tm_adamw_params hp = {lr, c->beta1, c->beta2, c->eps, wd};
        tm_adamw_step(params, grads, state[0], state[1], len, hp, step);
    } else {
        tm_sgd_params hp = {lr, c->momentum, wd};
        tm_sgd_step(params, grads, state[0], len, hp, step);
    }
}

static void update(const tm_optim_config *c, tm_stage *s, size_t off, size_t len, int decay,
                   double lr, long step)
{
    float *state[TM_OPT_MAX_STATE] = {NULL, NULL};
    for (int i = 0; i < s->n_opt_state; i++) state[i] = s->opt_state[i] + off;
    tm_optimizer_update(c, s->params + off, s->grads + off, state, len, decay, lr, step);
}

void tm_optimizer_step(const tm_optim_config *c, tm_stage *s, double lr, long step)
{
    /* Shards are stored back to back in layer order, so runs of tensors
     * with the same decay flag are contiguous ranges. */
    size_t start = 0, end = 0;
    int flag = -1;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        for (int k = 0; k < p->layer->n_tensors; k++) {
            const tm_shard *sh = &p->shard[k];
            if (!sh->owned || sh->count == 0) continue;
            int d = s->model->tensors[p->layer->tensor[k]].decay;
            if (d != flag || sh->off != end) {
                if (end > start) update(c, s, start, end - start, flag, lr, step);
                start = sh->off;
                flag = d;
            }
            end = sh->off + sh->count;
        }
    }
    if (end > start) update(c, s, start, end - start, flag, lr, step);
}

int tm_stage_norm_counts(const tm_stage *s, int i, int k)
{
    const tm_layer_plan *p = &s->layer[i];
    const tm_shard *sh = &p->shard[k];
    const tm_tensor *t = &s->model->tensors[p->layer->tensor[k]];
    int here = t->layer >= s->l0 && t->layer < s->l0 + s->n;
    return sh->owned && here && !(sh->dim == TM_SHARD_WHOLE && s->t != 0);
}

double tm_stage_grad_sq(const tm_stage *s)
{
    double sum = 0;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        for (int k = 0; k < p->layer->n_tensors; k++) {
            const tm_shard *sh = &p->shard[k];
            if (!tm_stage_norm_counts(s, i, k)) continue;
            const float *g = s->grads + sh->off;
            for (size_t j = 0; j < (tm_cost_dry() ? 0 : sh->count); j++)
                sum += (double)g[j] * g[j];
            tm__cost_charge(2.0 * (double)sh->count, 4.0 * (double)sh->count);
        }
    }
    return sum;
}

void tm_stage_grad_scale(tm_stage *s, float scale)
{
    for (size_t j = 0; j < (tm_cost_dry() ? 0 : s->n_params); j++) s->grads[j] *= scale;
    tm__cost_charge((double)s->n_params, 8.0 * (double)s->n_params);
}

float tm_clip_factor(double norm, double max_norm)
{
    double f = max_norm / (norm + 1e-6);
    return f < 1.0 ? (float)f : 1.0f;
}
