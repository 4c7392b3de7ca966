#include "strategies/zero.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cost.h"
#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"

#define MAX_TENSORS (TM_MAX_LAYERS * TM_LAYER_TENSORS)

/* A tensor the stage stores, cut into dp chunks. */
typedef struct {
    size_t off, n;     /* its floats' place in the stage's flat layout, and count */
    size_t q, z;       /* chunk floats ceil(n / dp); this chunk's place in the shards */
    size_t real;       /* floats of this replica's chunk inside the tensor (the
                          rest of the chunk is padding, zero) */
    int decay;         /* weight decay applies to it */
    int first, last;   /* the lowest and highest layer of the stage using it:
                          they differ for a tensor tied within the stage */
    int norm;          /* counted in the global gradient norm on this device */
    int partial;       /* sequence parallelism's partial LayerNorm gradient */
    float *held_p;     /* tied: its gathered parameters, kept from the first of
                          its layers a pass runs to the last (stage 3) */
    float *held_g;     /* tied: the gradient its later layers (in the backward)
                          left for the earlier one, which reduces it once */
} chunk;

struct tm_zero {
    tm_stage *s;
    tm_comm *dp;
    int stage, n_dp, d;
    int n_ten;
    chunk ten[MAX_TENSORS];               /* in layout order */
    int ref[TM_MAX_LAYERS][TM_LAYER_TENSORS]; /* layer i's tensor k: its chunk */
    size_t n_shard;                       /* floats of every shard buffer */
    float *params;                        /* (n_shard) stage 3, tag param, or the
                                             caller's host masters (any stage) */
    int host_masters;                     /* params is the caller's host memory */
    tm_bf16 *params16;                    /* (n_shard) stage 3 with host masters:
                                             their bf16 rounding, tag bf16 */
    float *grads;                         /* (n_shard) stages 2 and 3, tag grad */
    float *state[TM_OPT_MAX_STATE];       /* (n_shard) tag optimizer, or the caller's */
    int n_state;
    int own_state;                        /* state allocated here (not offloaded) */
    /* Each layer as its hooks run it: its tensors one after the other in
     * a view of view_n[i] floats, each tensor's slot dp x q floats (the
     * all-gather's and the reduce-scatter's layout). */
    tm_layer_plan view[TM_MAX_LAYERS];
    size_t view_n[TM_MAX_LAYERS];
    float *pview, *gview;                 /* the layer in flight, tag comm */
    tm_stage_hooks hooks;
};

static size_t chunk_of(size_t n, int dp) { return (n + (size_t)dp - 1) / (size_t)dp; }

size_t tm_zero_shard_floats(const tm_layer_plan *plan, int n, int dp)
{
    size_t f = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < plan[i].layer->n_tensors; k++)
            if (plan[i].shard[k].owned) f += chunk_of(plan[i].shard[k].count, dp);
    return f;
}

static int tied(const chunk *t) { return t->first != t->last; }

/* The chunk tables and the views, from the stage's plan. */
static int build(tm_zero *z)
{
    const tm_stage *s = z->s;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        z->view[i] = *p;
        size_t v = 0;
        for (int k = 0; k < p->layer->n_tensors; k++) {
            const tm_shard *sh = &p->shard[k];
            int e = -1;
            if (sh->owned) {
                e = z->n_ten++;
                chunk *t = &z->ten[e];
                size_t lo;
                t->off = sh->off;
                t->n = sh->count;
                t->q = chunk_of(t->n, z->n_dp);
                t->z = z->n_shard;
                z->n_shard += t->q;
                lo = (size_t)z->d * t->q;
                t->real = t->n > lo ? (t->n - lo < t->q ? t->n - lo : t->q) : 0;
                t->decay = s->model->tensors[p->layer->tensor[k]].decay;
                t->first = i;
                t->norm = tm_stage_norm_counts(s, i, k);
                t->partial = sh->partial;
            }
            /* A tied tensor shares an earlier layer's storage. */
            for (int j = 0; j < z->n_ten && e < 0; j++)
                if (z->ten[j].off == sh->off && z->ten[j].n == sh->count) e = j;
            if (e < 0) return tm_error(TM_EINVAL, "ZeRO: layer %d's tensor %d has no storage", i, k);
            z->ten[e].last = i;
            z->ref[i][k] = e;
            z->view[i].shard[k].off = v;
            v += (size_t)z->n_dp * z->ten[e].q;
        }
        z->view_n[i] = v;
    }
    return TM_OK;
}

static float *alloc_zeroed(tm_device *dev, size_t n, tm_tag tag)
{
    float *p = tm_device_alloc(dev, n * sizeof(float), tag);
    if (p != NULL && !tm_cost_dry()) memset(p, 0, n * sizeof(float));
    return p;
}

/* Device copies and sums between kernels charge the modeled clock. */
static void copy(tm_device *dev, float *dst, const float *src, size_t n)
{
    if (!tm_cost_dry()) memcpy(dst, src, n * sizeof(float));
    tm_clock_charge(dev, 0, 8.0 * (double)n);
}

static void add(tm_device *dev, float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < (tm_cost_dry() ? 0 : n); i++) dst[i] += src[i];
    tm_clock_charge(dev, (double)n, 12.0 * (double)n);
}

/* The chunk's place in a stage-layout buffer; any place when the replica
 * has no part of the tensor (its count is 0 then). */
static size_t layout_off(const tm_zero *z, const chunk *t)
{
    return t->off + (t->real > 0 ? (size_t)z->d * t->q : 0);
}

static float *in_layout(const tm_zero *z, float *base, const chunk *t)
{
    return base + layout_off(z, t);
}

static float *param_chunk(const tm_zero *z, const chunk *t)
{
    return z->params != NULL ? z->params + t->z : in_layout(z, z->s->params, t);
}

static float *grad_chunk(const tm_zero *z, const chunk *t)
{
    return z->stage >= 2 ? z->grads + t->z : in_layout(z, z->s->grads, t);
}

/* Tensor t's whole parameters (dp x q floats, padding zero) into slot. */
static int gather(tm_zero *z, const chunk *t, const float *shard, float *slot)
{
    if (t->q == 0) return TM_OK;
    return tm_allgather(z->dp, shard + t->z, slot, t->q);
}

/* Stage 3's layer in flight: gathered from the parameter shard, or with
 * host masters this replica's chunk expanded from their bf16 rounding into
 * its place in slot and gathered in place. */
static int gather_params(tm_zero *z, const chunk *t, float *slot)
{
    if (z->params16 == NULL || t->q == 0) return gather(z, t, z->params, slot);
    float *mine = slot + (size_t)z->d * t->q;
    tm_bf16_to_f32(mine, z->params16 + t->z, t->q);
    tm_clock_charge(z->s->dev, 0, 6.0 * (double)t->q);
    return tm_allgather(z->dp, mine, slot, t->q);
}

/* The replicas' sum of slot (dp x q floats, this replica's gradient of
 * tensor t) reduce-scattered, this replica's chunk added to its gradient
 * shard. On the communication engine, beside the backward, as the
 * data-parallel buckets are. */
static int scatter_add(tm_zero *z, const chunk *t, float *slot)
{
    if (t->q == 0) return TM_OK;
    tm_device *dev = z->s->dev;
    float *mine = slot + (size_t)z->d * t->q;
    tm_clock_async(dev, 1);
    int st = tm_reduce_scatter(z->dp, slot, mine, t->q, TM_SUM);
    tm_clock_async(dev, 0);
    if (st == TM_OK) add(dev, z->grads + t->z, mine, t->q);
    return st;
}

/* Layer i's tensor t into its slot of the parameter view: gathered (stage
 * 3; a tied tensor once per pass, then copied) or copied from the whole
 * parameters (stage 2: a kind finds a tensor's weights and its gradient
 * at one offset, so weights in the stage's layout and a bucket in the
 * view's cannot go together). */
static int fetch(tm_zero *z, chunk *t, float *slot)
{
    tm_device *dev = z->s->dev;
    size_t whole = (size_t)z->n_dp * t->q;
    if (z->stage == 2 && z->host_masters) {
        tm_bf16_to_f32(slot, z->s->params16 + t->off, t->n);
        tm_clock_charge(dev, 0, 6.0 * (double)t->n);
        return TM_OK;
    }
    if (z->stage == 2) {
        copy(dev, slot, z->s->params + t->off, t->n);
        return TM_OK;
    }
    if (!tied(t)) return gather_params(z, t, slot);
    if (t->held_p == NULL) {
        t->held_p = tm_device_alloc(dev, whole * sizeof(float), TM_TAG_COMM);
        if (t->held_p == NULL) return TM_ENOMEM;
        TM_CHECK(gather_params(z, t, t->held_p));
    }
    copy(dev, slot, t->held_p, whole);
    return TM_OK;
}

static void release(tm_zero *z, float **p)
{
    tm_device_free(z->s->dev, *p);
    *p = NULL;
}

/* Whether layer i's pass runs on the view: stage 3 always, stage 2 in the
 * backward (its gradients go to a bucket of the view's layout) and, with
 * host masters, in the forward too (the device holds no fp32 weights: the
 * view is the layer expanded from their bf16 copy). */
static int in_view(const tm_zero *z, int bwd)
{
    return z->stage == 3 || (z->stage == 2 && (bwd || z->host_masters));
}

/* Before layer i runs on the view: its parameters, and in the backward a
 * zeroed gradient bucket, or for a tied tensor what its later layer left. */
static int layer_begin(void *ctx, int i, int bwd, const tm_layer_plan **p, tm_layer_ctx *c)
{
    tm_zero *z = ctx;
    if (!in_view(z, bwd)) return TM_OK;
    tm_device *dev = z->s->dev;
    const tm_layer_plan *v = &z->view[i];
    z->pview = tm_device_alloc(dev, z->view_n[i] * sizeof(float), TM_TAG_COMM);
    if (z->pview == NULL) return TM_ENOMEM;
    if (bwd) {
        z->gview = alloc_zeroed(dev, z->view_n[i], TM_TAG_COMM);
        if (z->gview == NULL) return TM_ENOMEM;
        tm_clock_charge(dev, 0, 4.0 * (double)z->view_n[i]);
    }
    for (int k = 0; k < v->layer->n_tensors; k++) {
        chunk *t = &z->ten[z->ref[i][k]];
        TM_CHECK(fetch(z, t, z->pview + v->shard[k].off));
        if (bwd && t->held_g != NULL)
            copy(dev, z->gview + v->shard[k].off, t->held_g, (size_t)z->n_dp * t->q);
    }
    *p = v;
    c->params = z->pview;
    c->grads = z->gview;
    return TM_OK;
}

/* After layer i: in the backward, each tensor's gradient reduce-scattered
 * into the shard — a tied tensor's only after the last of its layers, the
 * others keeping it; the views freed, and a tied tensor's gathered
 * parameters after the pass's last layer using them. */
static int layer_end(void *ctx, int i, int bwd, int st)
{
    tm_zero *z = ctx;
    if (!in_view(z, bwd)) return st;
    tm_device *dev = z->s->dev;
    const tm_layer_plan *v = &z->view[i];
    for (int k = 0; k < v->layer->n_tensors; k++) {
        chunk *t = &z->ten[z->ref[i][k]];
        float *slot = bwd ? z->gview + v->shard[k].off : NULL;
        int done = !tied(t) || i == (bwd ? t->first : t->last);
        if (st == TM_OK && bwd && done) {
            st = scatter_add(z, t, slot);
        } else if (st == TM_OK && bwd) {
            size_t whole = (size_t)z->n_dp * t->q;
            if (t->held_g == NULL) t->held_g = tm_device_alloc(dev, whole * sizeof(float),
                                                                TM_TAG_COMM);
            if (t->held_g == NULL) st = TM_ENOMEM;
            else copy(dev, t->held_g, slot, whole);
        }
        if (done) {
            release(z, &t->held_p);
            release(z, &t->held_g);
        }
    }
    release(z, &z->pview);
    release(z, &z->gview);
    return st;
}

int tm_zero_create(tm_zero **out, tm_stage *s, tm_comm *dp_comm, int stage, int n_state,
                   float *const *state, float *masters)
{
    tm_zero *z = calloc(1, sizeof *z);
    *out = z;
    if (z == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate ZeRO's tables");
    z->s = s;
    z->dp = dp_comm;
    z->stage = stage;
    z->n_dp = tm_comm_size(dp_comm);
    z->d = tm_comm_rank(dp_comm);
    z->n_state = n_state;
    TM_CHECK(build(z));
    z->host_masters = masters != NULL;
    if (masters != NULL) z->params = masters;
    if (stage == 3 && masters != NULL) {
        z->params16 = tm_device_alloc(s->dev, z->n_shard * sizeof(tm_bf16), TM_TAG_BF16);
        if (z->params16 == NULL) return TM_ENOMEM;
        if (!tm_cost_dry()) memset(z->params16, 0, z->n_shard * sizeof(tm_bf16));
    } else if (stage == 3 && (z->params = alloc_zeroed(s->dev, z->n_shard, TM_TAG_PARAM)) == NULL) {
        return TM_ENOMEM;
    }
    if (stage >= 2 && (z->grads = alloc_zeroed(s->dev, z->n_shard, TM_TAG_GRAD)) == NULL)
        return TM_ENOMEM;
    z->own_state = state == NULL;
    for (int i = 0; i < n_state; i++)
        if ((z->state[i] = state != NULL ? state[i]
                                         : alloc_zeroed(s->dev, z->n_shard, TM_TAG_OPTIMIZER)) == NULL)
            return TM_ENOMEM;
    if (stage >= 2) {
        z->hooks = (tm_stage_hooks){layer_begin, layer_end, z};
        s->hooks = &z->hooks;
    }
    return TM_OK;
}

void tm_zero_destroy(tm_zero *z)
{
    if (z == NULL) return;
    if (z->s->hooks == &z->hooks) z->s->hooks = NULL;
    for (int e = 0; e < z->n_ten; e++) {
        release(z, &z->ten[e].held_p);
        release(z, &z->ten[e].held_g);
    }
    release(z, &z->pview);
    release(z, &z->gview);
    for (int i = 0; z->own_state && i < z->n_state; i++) release(z, &z->state[i]);
    release(z, &z->grads);
    if (z->host_masters) z->params = NULL; /* the caller's */
    tm_device_free(z->s->dev, z->params16);
    release(z, &z->params);
    free(z);
}

void tm_zero_load(tm_zero *z, const float *params, float *const *state)
{
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        size_t lo = (size_t)z->d * t->q;
        if (t->real == 0 || tm_cost_dry()) continue;
        if (z->params != NULL)
            memcpy(z->params + t->z, params + t->off + lo, t->real * sizeof(float));
        for (int i = 0; state != NULL && i < z->n_state; i++)
            memcpy(z->state[i] + t->z, state[i] + t->off + lo, t->real * sizeof(float));
    }
    if (z->params16 != NULL) tm_f32_to_bf16(z->params16, z->params, z->n_shard);
    /* Stages 1 and 2 with host masters: the device's copy of the whole. */
    if (z->host_masters && z->stage < 3) tm_f32_to_bf16(z->s->params16, params, z->s->n_params);
}

/* Gathers one shard buffer's chunks of tensor t into out (stage layout)
 * when out is not NULL. */
static int gather_to(tm_zero *z, const float *shard, const chunk *t, float *out)
{
    if (t->q == 0) return TM_OK;
    float *buf = tm_device_alloc(z->s->dev, (size_t)z->n_dp * t->q * sizeof(float), TM_TAG_COMM);
    if (buf == NULL) return TM_ENOMEM;
    int st = gather(z, t, shard, buf);
    if (st == TM_OK && out != NULL && !tm_cost_dry()) memcpy(out + t->off, buf, t->n * sizeof(float));
    tm_device_free(z->s->dev, buf);
    return st;
}

int tm_zero_store(tm_zero *z, float *params, float *const *state)
{
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        if (z->params != NULL) TM_CHECK(gather_to(z, z->params, t, params));
        for (int i = 0; i < z->n_state; i++)
            TM_CHECK(gather_to(z, z->state[i], t, state != NULL ? state[i] : NULL));
    }
    return TM_OK;
}

float *tm_zero_grads(const tm_zero *z, size_t *n)
{
    *n = z->stage >= 2 ? z->n_shard : z->s->n_params;
    return z->stage >= 2 ? z->grads : z->s->grads;
}

float *tm_zero_grad_chunk(const tm_zero *z, size_t off, size_t *count)
{
    for (int e = 0; e < z->n_ten; e++)
        if (z->ten[e].off == off) {
            *count = z->ten[e].real;
            return grad_chunk(z, &z->ten[e]);
        }
    *count = 0;
    return NULL;
}

int tm_zero_bucket_ready(void *ctx, size_t off, size_t len)
{
    tm_zero *z = ctx;
    tm_device *dev = z->s->dev;
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        if (t->off < off || t->off >= off + len || t->q == 0) continue;
        size_t whole = (size_t)z->n_dp * t->q;
        float *buf = tm_device_alloc(dev, whole * sizeof(float), TM_TAG_COMM);
        if (buf == NULL) return TM_ENOMEM;
        copy(dev, buf, z->s->grads + t->off, t->n);
        if (!tm_cost_dry()) memset(buf + t->n, 0, (whole - t->n) * sizeof(float));
        float *mine = buf + (size_t)z->d * t->q;
        tm_clock_async(dev, 1);
        int st = tm_reduce_scatter(z->dp, buf, mine, t->q, TM_SUM);
        tm_clock_async(dev, 0);
        if (st == TM_OK) copy(dev, in_layout(z, z->s->grads, t), mine, t->real);
        tm_device_free(dev, buf);
        TM_CHECK(st);
    }
    return TM_OK;
}

/* The partial gradients' chunks packed into buf (to_buf) or back; returns
 * their floats (buf NULL: counts). */
static size_t each_partial(const tm_zero *z, float *buf, int to_buf)
{
    size_t n = 0;
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        if (!t->partial) continue;
        float *g = grad_chunk(z, t);
        if (tm_cost_dry()) {
            /* Nothing to move: only the count. */
        } else if (buf != NULL && to_buf) memcpy(buf + n, g, t->real * sizeof(float));
        else if (buf != NULL) memcpy(g, buf + n, t->real * sizeof(float));
        n += t->real;
    }
    return n;
}

size_t tm_zero_partial_floats(const tm_zero *z) { return each_partial(z, NULL, 0); }

int tm_zero_sum_partial(tm_zero *z)
{
    size_t n = tm_zero_partial_floats(z);
    if (n == 0 || z->s->tp == 1) return TM_OK;
    float *buf = tm_device_alloc(z->s->dev, n * sizeof(float), TM_TAG_WORKSPACE);
    if (buf == NULL) return TM_ENOMEM;
    each_partial(z, buf, 1);
    int st = tm_allreduce(z->s->tp_comm, buf, buf, n, TM_SUM);
    if (st == TM_OK) each_partial(z, buf, 0);
    tm_clock_charge(z->s->dev, 0, 16.0 * (double)n);
    tm_device_free(z->s->dev, buf);
    return st;
}

double tm_zero_grad_sq(const tm_zero *z)
{
    double sum = 0;
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        if (!t->norm) continue;
        const float *g = grad_chunk(z, t);
        for (size_t j = 0; j < t->real; j++) sum += (double)g[j] * g[j];
        tm_clock_charge(z->s->dev, 2.0 * (double)t->real, 4.0 * (double)t->real);
    }
    return sum;
}

void tm_zero_grad_scale(tm_zero *z, float scale)
{
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        float *g = grad_chunk(z, t);
        for (size_t j = 0; j < (tm_cost_dry() ? 0 : t->real); j++) g[j] *= scale;
        tm_clock_charge(z->s->dev, (double)t->real, 8.0 * (double)t->real);
    }
}

/* Stages 1 and 2: tensor t's updated chunks all-gathered from every
 * replica into the whole parameters; with host masters, the host's bf16
 * rounding of this replica's chunk (what came back over the host link)
 * gathered, in fp32 as ever, into the device's bf16 copy of the whole. */
static int gather_back(tm_zero *z, const chunk *t)
{
    if (t->q == 0) return TM_OK;
    tm_device *dev = z->s->dev;
    size_t whole = (size_t)z->n_dp * t->q;
    float *buf = tm_device_alloc(dev, whole * sizeof(float), TM_TAG_COMM);
    if (buf == NULL) return TM_ENOMEM;
    float *mine = buf + (size_t)z->d * t->q;
    if (z->host_masters) {
        tm_bf16 *back = z->s->params16 + layout_off(z, t);
        tm_f32_to_bf16(back, param_chunk(z, t), t->real);
        tm_bf16_to_f32(mine, back, t->real);
        tm_clock_charge(dev, 0, 6.0 * (double)t->real);
    } else {
        copy(dev, mine, param_chunk(z, t), t->real);
    }
    if (!tm_cost_dry()) memset(mine + t->real, 0, (t->q - t->real) * sizeof(float));
    int st = tm_allgather(z->dp, mine, buf, t->q);
    if (st == TM_OK && z->host_masters) {
        tm_f32_to_bf16(z->s->params16 + t->off, buf, t->n);
        tm_clock_charge(dev, 0, 6.0 * (double)t->n);
    } else if (st == TM_OK) {
        copy(dev, z->s->params + t->off, buf, t->n);
    }
    tm_device_free(dev, buf);
    return st;
}

void tm_zero_update(tm_zero *z, const tm_optim_config *c, double lr, long step)
{
    for (int e = 0; e < z->n_ten; e++) {
        const chunk *t = &z->ten[e];
        if (t->real == 0) continue;
        float *state[TM_OPT_MAX_STATE] = {NULL, NULL};
        for (int i = 0; i < z->n_state; i++) state[i] = z->state[i] + t->z;
        tm_optimizer_update(c, param_chunk(z, t), grad_chunk(z, t), state, t->real, t->decay, lr,
                            step);
    }
}

int tm_zero_gather(tm_zero *z)
{
    for (int e = 0; z->stage < 3 && e < z->n_ten; e++) TM_CHECK(gather_back(z, &z->ten[e]));
    /* Host masters: the host rounds the updated chunks, which come back as
     * the device's bf16 copy (the host link's bytes are the caller's). */
    if (z->params16 != NULL) {
        tm_f32_to_bf16(z->params16, z->params, z->n_shard);
        tm_clock_charge(z->s->dev, 0, 6.0 * (double)z->n_shard);
    }
    return TM_OK;
}

int tm_zero_step(tm_zero *z, const tm_optim_config *c, double lr, long step)
{
    tm_zero_update(z, c, lr, step);
    return tm_zero_gather(z);
}

double tm_zero_step_bytes(const tm_zero *z, int m)
{
    double per = 0;
    for (int e = 0; e < z->n_ten; e++)
        per += (double)(z->n_dp - 1) * (double)z->ten[e].q * sizeof(float);
    double times = z->stage == 1 ? 2 : z->stage == 2 ? m + 1 : 3.0 * m;
    return per * times;
}

/* The most bytes (tag comm) ZeRO holds at once during a step, as floats
 * (block 0) or as the arena counts its blocks (block 1). */
static size_t transient(const tm_zero *z, int block)
{
#define BYTES(n) (block ? tm_arena_block_bytes((n) * sizeof(float)) : (n) * sizeof(float))
    size_t most = 0;
    /* Stages 1 and 2: one tensor's buffer at a time (buckets, gathers). */
    for (int e = 0; z->stage < 3 && e < z->n_ten; e++)
        if (BYTES((size_t)z->n_dp * z->ten[e].q) > most) most = BYTES((size_t)z->n_dp * z->ten[e].q);
    if (z->stage == 1) return most;
    /* Stages 2 and 3, the backward (stage 3's forward holds less): the
     * layer's parameter view and gradient bucket, and the tied tensors
     * held across it — gathered parameters (stage 3) from the first of
     * their layers to the last, gradients from the later one on. */
    for (int i = 0; i < z->s->n; i++) {
        size_t live = 2 * BYTES(z->view_n[i]);
        for (int e = 0; e < z->n_ten; e++) {
            const chunk *t = &z->ten[e];
            if (!tied(t) || i < t->first || i > t->last) continue;
            size_t whole = BYTES((size_t)z->n_dp * t->q);
            live += (z->stage == 3 ? whole : 0) + (i < t->last ? whole : 0);
        }
        if (live > most) most = live;
    }
    return most;
#undef BYTES
}

size_t tm_zero_transient_bytes(const tm_zero *z) { return transient(z, 0); }

int tm_zero_predict(const tm_stage *s, int dp, int stage, size_t *transient_bytes,
                    size_t *partial)
{
    tm_zero *z = calloc(1, sizeof *z);
    if (z == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate ZeRO's tables");
    z->s = (tm_stage *)s; /* build() only reads the stage */
    z->n_dp = dp;
    z->stage = stage;
    int st = build(z);
    if (st == TM_OK) {
        *transient_bytes = transient(z, 1);
        *partial = each_partial(z, NULL, 0);
    }
    free(z);
    return st;
}
