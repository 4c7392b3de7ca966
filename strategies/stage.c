#include "strategies/stage.h"

#include <string.h>

#include "kernels/cost.h"
#include "kernels/ops.h"
#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"

int tm_stage_describe(tm_stage *s, const tm_model *m, int l0, int l1, int tp, int t)
{
    memset(s, 0, sizeof *s);
    s->model = m;
    s->tp = tp;
    s->t = t;
    s->l0 = l0;
    s->n = l1 - l0;
    s->has_model_input = l0 == 0;
    TM_CHECK(tm_stage_plan(m, l0, l1, tp, t, s->layer, &s->n_params));
    s->in_width = s->layer[0].in_w;
    s->out_width = s->layer[s->n - 1].out_w;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        int w = p->grad_w > p->in_w ? p->grad_w : p->in_w;
        if (p->out_w > w) w = p->out_w;
        if (w > s->grad_w) s->grad_w = w;
    }
    return TM_OK;
}

/* The plan, then the parameters and gradients each when asked, and
 * n_opt_state optimizer buffers. */
static int create(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m, int l0,
                  int l1, int n_opt_state, int params, int grads)
{
    TM_CHECK(tm_stage_describe(s, m, l0, l1, tm_comm_size(tp_comm), tm_comm_rank(tp_comm)));
    s->dev = dev;
    s->tp_comm = tp_comm;
    size_t bytes = s->n_params * sizeof(float);
    if (params && (s->params = tm_device_alloc(dev, bytes, TM_TAG_PARAM)) == NULL)
        return TM_ENOMEM;
    if (grads && (s->grads = tm_device_alloc(dev, bytes, TM_TAG_GRAD)) == NULL) return TM_ENOMEM;
    s->n_opt_state = n_opt_state;
    for (int i = 0; i < s->n_opt_state; i++) {
        s->opt_state[i] = tm_device_alloc(dev, bytes, TM_TAG_OPTIMIZER);
        if (s->opt_state[i] == NULL) return TM_ENOMEM;
        /* The optimizers initialise their state on step 1; zeros make a
         * checkpoint taken before any step well defined (a dry run has
         * none). */
        if (!tm_cost_dry()) memset(s->opt_state[i], 0, bytes);
    }
    return TM_OK;
}

int tm_stage_create(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m, int l0,
                    int l1, int n_opt_state)
{
    return create(s, dev, tp_comm, m, l0, l1, n_opt_state, 1, 1);
}

int tm_stage_create_weights(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m,
                            int l0, int l1)
{
    return create(s, dev, tp_comm, m, l0, l1, 0, 1, 0);
}

int tm_stage_create_parts(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_model *m,
                          int l0, int l1, int params, int grads)
{
    return create(s, dev, tp_comm, m, l0, l1, 0, params, grads);
}

int tm_precision_parse(const char *name, tm_precision *out)
{
    static const tm_precision all[] = {TM_PRECISION_FP32, TM_PRECISION_BF16};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(name, tm_precision_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -1;
}

const char *tm_precision_name(tm_precision p) { return p == TM_PRECISION_BF16 ? "bf16" : "fp32"; }

int tm_stage_set_precision(tm_stage *s, tm_precision p)
{
    s->precision = p;
    if (p != TM_PRECISION_BF16 || s->dev == NULL || (s->params == NULL && !s->params_on_host) ||
        s->params16 != NULL)
        return TM_OK;
    s->params16 = tm_device_alloc(s->dev, s->n_params * sizeof(tm_bf16), TM_TAG_BF16);
    if (s->params16 == NULL) return TM_ENOMEM;
    tm_stage_refresh_bf16(s);
    return TM_OK;
}

void tm_stage_refresh_bf16(tm_stage *s)
{
    if (s->params16 == NULL || s->params == NULL) return;
    tm_f32_to_bf16(s->params16, s->params, s->n_params);
    tm_clock_charge(s->dev, 0, 6.0 * (double)s->n_params);
}

void tm_stage_destroy(tm_stage *s)
{
    if (s->dev == NULL) return;
    tm_device_free(s->dev, s->params16);
    for (int i = 0; i < s->n_opt_state; i++) tm_device_free(s->dev, s->opt_state[i]);
    tm_device_free(s->dev, s->grads);
    tm_device_free(s->dev, s->params);
    memset(s, 0, sizeof *s);
}

/* Moves one shard between the full layout (f: the tensor's first float)
 * and the rank's buffer (h), to_full choosing the direction. Rows past a
 * group block's real extent are padding: zero in the shard, not in the
 * full tensor. */
static void copy_shard(const tm_tensor *t, const tm_shard *s, float *f, float *h, int to_full)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    if (s->dim == TM_SHARD_WHOLE) {
        if (to_full) memcpy(f, h, rows * cols * sizeof(float));
        else memcpy(h, f, rows * cols * sizeof(float));
        return;
    }
    if (s->dim == TM_SHARD_COLS) {
        for (size_t r = 0; r < rows; r++) {
            float *a = f + r * cols + s->lo, *b = h + r * (size_t)s->len;
            if (to_full) memcpy(a, b, (size_t)s->len * sizeof(float));
            else memcpy(b, a, (size_t)s->len * sizeof(float));
        }
        return;
    }
    size_t block = rows / (size_t)t->groups;
    for (int g = 0; g < t->groups; g++) {
        long real = (long)block - s->lo < s->len ? (long)block - s->lo : s->len;
        size_t n = real > 0 ? (size_t)real * cols : 0;
        float *a = f + (g * block + (size_t)s->lo) * cols, *b = h + (size_t)g * s->len * cols;
        if (to_full) {
            memcpy(a, b, n * sizeof(float));
            continue;
        }
        memcpy(b, a, n * sizeof(float));
        memset(b + n, 0, ((size_t)s->len * cols - n) * sizeof(float));
    }
}

static void copy_all(const tm_stage *s, float *full, float *shard, int to_full, int write_shared)
{
    for (int i = 0; i < s->n && !tm_cost_dry(); i++) {
        const tm_layer_plan *p = &s->layer[i];
        for (int k = 0; k < p->layer->n_tensors; k++) {
            const tm_shard *sh = &p->shard[k];
            const tm_tensor *t = &s->model->tensors[p->layer->tensor[k]];
            if (!sh->owned || (to_full && sh->dim == TM_SHARD_WHOLE && !write_shared)) continue;
            /* A tensor an earlier stage stores too (a tied embedding) is
             * written back from there. */
            if (to_full && t->layer < s->l0) continue;
            copy_shard(t, sh, full + t->off, shard + sh->off, to_full);
        }
    }
}

void tm_stage_shard_from(const tm_stage *s, const float *full, float *shard)
{
    copy_all(s, (float *)full, shard, 0, 0);
}

void tm_stage_shard_to(const tm_stage *s, const float *shard, float *full, int write_shared)
{
    copy_all(s, full, (float *)shard, 1, write_shared);
}

tm_layer_ctx tm_stage_ctx(const tm_stage *s, int rows)
{
    return (tm_layer_ctx){s->dev, s->tp_comm, s->params, s->grads, rows};
}

/* What layer i keeps for its backward in the micro-batch's block: nothing
 * when it is recomputed (strategies/layer.h). */
static size_t kept_floats(const tm_stage *s, int i, int rows)
{
    const tm_layer_plan *p = &s->layer[i];
    return tm_layer_recomputed(p, rows) ? 0 : p->layer->kind->saved_floats(p, rows);
}

/* The largest of what the recomputed layers keep: one region that each
 * of their forwards fills in turn (0: none is recomputed). */
static size_t redo_floats(const tm_stage *s, int rows)
{
    size_t most = 0;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        size_t f = p->layer->kind->saved_floats(p, rows);
        if (tm_layer_recomputed(p, rows) && f > most) most = f;
    }
    return most;
}

/* A layer's transient forward block (0: none). */
static size_t fwd_floats(const tm_layer_plan *p, int rows)
{
    return p->layer->kind->fwd_scratch_floats != NULL ? p->layer->kind->fwd_scratch_floats(p, rows)
                                                      : 0;
}

/* Bytes of n floats as the arena counts a block of them. */
static size_t block_bytes(size_t floats) { return tm_arena_block_bytes(floats * sizeof(float)); }

/* The largest transient forward block of the layers (only the recomputed
 * ones: recomputed), as the arena counts it; 0 when none has one. */
static size_t fwd_transient(const tm_stage *s, int rows, int recomputed)
{
    size_t most = 0;
    for (int i = 0; i < s->n; i++) {
        size_t f = fwd_floats(&s->layer[i], rows);
        if (f > 0 && (!recomputed || tm_layer_recomputed(&s->layer[i], rows)) &&
            block_bytes(f) > most)
            most = block_bytes(f);
    }
    return most;
}

static int is_bf16(const tm_stage *s) { return s->precision == TM_PRECISION_BF16; }

/* In bf16: the stage's input and output in fp32, then the other layers'
 * outputs and what every layer keeps in bf16. */
static size_t acts_bytes_bf16(const tm_stage *s, int rows)
{
    size_t r = (size_t)rows, h = 0;
    for (int i = 0; i < s->n; i++)
        h += (i < s->n - 1 ? (size_t)s->layer[i].out_w * r : 0) + kept_floats(s, i, rows);
    return ((size_t)s->in_width + (size_t)s->out_width) * r * sizeof(float) + h * sizeof(tm_bf16);
}

size_t tm_stage_acts_bytes(const tm_stage *s, int rows)
{
    if (is_bf16(s)) return acts_bytes_bf16(s, rows);
    size_t f = (size_t)s->in_width * (size_t)rows;
    for (int i = 0; i < s->n; i++)
        f += (size_t)s->layer[i].out_w * (size_t)rows + kept_floats(s, i, rows);
    return f * sizeof(float);
}

int tm_stage_acts_alloc(tm_stage *s, int rows, tm_stage_acts *a)
{
    memset(a, 0, sizeof *a);
    a->rows = rows;
    a->block = tm_device_alloc(s->dev, tm_stage_acts_bytes(s, rows), TM_TAG_ACTIVATION);
    if (a->block == NULL) return TM_ENOMEM;
    float *p = a->block;
    size_t r = (size_t)rows;
    a->input = p;
    p += r * s->in_width;
    if (is_bf16(s)) {
        a->output = a->out[s->n - 1] = p;
        tm_bf16 *h = (tm_bf16 *)(p + r * s->out_width);
        for (int i = 0; i < s->n; i++) {
            if (i < s->n - 1) {
                a->out16[i] = h;
                h += r * s->layer[i].out_w;
            }
            size_t kept = kept_floats(s, i, rows);
            a->saved16[i] = kept > 0 ? h : NULL;
            h += kept;
        }
        return TM_OK;
    }
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *l = &s->layer[i];
        a->out[i] = p;
        p += r * l->out_w;
        size_t kept = kept_floats(s, i, rows);
        a->saved[i] = kept > 0 ? p : NULL;
        p += kept;
    }
    a->output = a->out[s->n - 1];
    return TM_OK;
}

void tm_stage_acts_free(tm_stage *s, tm_stage_acts *a)
{
    tm_device_free(s->dev, a->block);
    a->block = NULL;
}

static const float *layer_input(const tm_stage_acts *a, int i)
{
    return i == 0 ? a->input : a->out[i - 1];
}

/* A recomputed layer's forward fills a transient region (redo) instead
 * of the micro-batch's block; the backward re-runs it. */
/* ---- bf16: activations stored in bf16, expanded around each layer ----
 * The layer kinds compute in fp32 as always (their GEMMs in bf16 through
 * kernels/ops.h); the stage keeps what they produce in bf16 and gives
 * them fp32 copies: transient buffers as wide as the widest layer. */

static size_t scratch_floats(const tm_stage *s, int rows);

/* Floats of the widest input or output of a layer for rows rows. */
static size_t width_floats(const tm_stage *s, int rows)
{
    size_t most = 0;
    for (int i = 0; i < s->n; i++) {
        size_t w = (size_t)(s->layer[i].in_w > s->layer[i].out_w ? s->layer[i].in_w
                                                                   : s->layer[i].out_w);
        if (w > most) most = w;
    }
    return most * (size_t)rows;
}

/* The largest of what any layer keeps, stored or recomputed. */
static size_t saved_most(const tm_stage *s, int rows)
{
    size_t most = 0;
    for (int i = 0; i < s->n; i++) {
        size_t f = s->layer[i].layer->kind->saved_floats(&s->layer[i], rows);
        if (f > most) most = f;
    }
    return most;
}

/* The forward's fp32 work: two outputs in turn (a layer's input is the
 * previous one's output) and what a layer keeps. */
static size_t fwd_work_floats(const tm_stage *s, int rows)
{
    return 2 * width_floats(s, rows) + saved_most(s, rows);
}

/* Layer i's output is the model's (the logits): the loss reads it in fp32. */
static int model_output(const tm_stage *s, int i)
{
    return i == s->n - 1 && s->l0 + s->n == s->model->n_layers;
}

/* Rounds x to bf16 in place (nearest even), keeping the bf16 bits in keep
 * unless it is NULL. */
static void round_bf16(tm_device *dev, float *x, tm_bf16 *keep, size_t n)
{
    /* In chunks that stay in L1 between the two vectorised passes. */
    enum { CHUNK = 2048 };
    tm_bf16 chunk[CHUNK];
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        tm_bf16 *h = keep != NULL ? keep + i : chunk;
        tm_f32_to_bf16(h, x + i, k);
        tm_bf16_to_f32(x + i, h, k);
    }
    tm_clock_charge(dev, 0, (keep != NULL ? 10.0 : 8.0) * (double)n);
}

static void expand_bf16(tm_device *dev, float *dst, const tm_bf16 *src, size_t n)
{
    tm_bf16_to_f32(dst, src, n);
    tm_clock_charge(dev, 0, 6.0 * (double)n);
}

/* ---- bf16 with the fp32 masters on the host (optimizer offload) ----
 * The device holds the weights' bf16 copy only. Before a layer runs, each
 * of its tensors is expanded from the copy into a slot of an fp32 view,
 * which the kinds read as their parameters (the LayerNorms, biases and
 * embeddings thus read the bf16 rounding of theirs) and whose GEMM operands
 * come from the copy itself (tm_ops_map_bf16). A kind adds a tensor's
 * gradient at the offset of its parameters, so a backward runs on a
 * gradient bucket in the view's layout: the layer's gradients copied in
 * before and back after, every addition into them in its usual order.
 * Both are tagged bf16: bytes the device holds because its weights are
 * kept in bf16 (ZeRO's gathered layer in flight is comm). */

_Static_assert(TM_LAYER_TENSORS <= TM_OPS_BF16_VIEWS, "a layer's tensors are all mapped");

typedef struct {
    const tm_layer_plan *layer; /* the layer in the stage's layout; NULL: no view */
    tm_layer_plan plan;         /* the same with its tensors' offsets in the view */
    float *params;              /* (view_floats) the expanded tensors */
    float *grads;               /* (view_floats) the backward's gradient bucket */
} host_view;

static size_t view_floats(const tm_layer_plan *p)
{
    size_t n = 0;
    for (int k = 0; k < p->layer->n_tensors; k++) n += p->shard[k].count;
    return n;
}

size_t tm_stage_view_bytes(const tm_stage *s, int bwd)
{
    size_t most = 0;
    for (int i = 0; s->params_on_host && i < s->n; i++) {
        size_t n = view_floats(&s->layer[i]);
        if (n > 0 && block_bytes(n) > most) most = block_bytes(n);
    }
    return (bwd ? 2 : 1) * most;
}

/* The layer *p about to run on c (unless hooks gave it other buffers) in a
 * view v, *p and c then the view's. */
static int view_open(tm_stage *s, int bwd, const tm_layer_plan **p, tm_layer_ctx *c,
                     host_view *v)
{
    v->layer = NULL;
    v->params = v->grads = NULL;
    size_t n = view_floats(*p);
    if (!s->params_on_host || c->params != s->params || n == 0) return TM_OK;
    v->layer = *p;
    v->plan = **p;
    if ((v->params = tm_device_alloc(s->dev, n * sizeof(float), TM_TAG_BF16)) == NULL ||
        (bwd && (v->grads = tm_device_alloc(s->dev, n * sizeof(float), TM_TAG_BF16)) == NULL))
        return TM_ENOMEM;
    size_t off = 0;
    for (int k = 0; k < v->layer->layer->n_tensors; k++) {
        const tm_shard *sh = &v->layer->shard[k];
        expand_bf16(s->dev, v->params + off, s->params16 + sh->off, sh->count);
        (void)tm_ops_map_bf16(v->params + off, s->params16 + sh->off, sh->count);
        if (bwd) {
            if (!tm_cost_dry())
                memcpy(v->grads + off, s->grads + sh->off, sh->count * sizeof(float));
            tm_clock_charge(s->dev, 0, 8.0 * (double)sh->count);
        }
        v->plan.shard[k].off = off;
        off += sh->count;
    }
    *p = &v->plan;
    c->params = v->params;
    if (bwd) c->grads = v->grads;
    return TM_OK;
}

/* After the layer: its gradients back into the stage's (when it ran), the
 * view freed. */
static void view_close(tm_stage *s, host_view *v, int st)
{
    if (v->layer == NULL) return;
    for (int k = 0; st == TM_OK && v->grads != NULL && k < v->layer->layer->n_tensors; k++) {
        const tm_shard *sh = &v->layer->shard[k];
        if (!tm_cost_dry())
            memcpy(s->grads + sh->off, v->grads + v->plan.shard[k].off, sh->count * sizeof(float));
        tm_clock_charge(s->dev, 0, 8.0 * (double)sh->count);
    }
    tm_ops_unmap_bf16();
    tm_device_free(s->dev, v->grads);
    tm_device_free(s->dev, v->params);
    v->layer = NULL;
}

/* Every output but the logits is rounded to bf16 where it is produced, so
 * the next layer (on this stage or the next one) reads the values the
 * backward will read. */
static int forward_bf16(tm_stage *s, tm_stage_acts *a)
{
    size_t w = width_floats(s, a->rows);
    float *work = tm_device_alloc(s->dev, fwd_work_floats(s, a->rows) * sizeof(float),
                                  TM_TAG_ACTIVATION);
    if (work == NULL) return TM_ENOMEM;
    float *buf[2] = {work, work + w}, *saved = work + 2 * w;
    const float *x = a->input;
    int st = TM_OK;
    for (int i = 0; i < s->n && st == TM_OK; i++) {
        const tm_layer_plan *p = &s->layer[i];
        tm_layer_ctx c = tm_stage_ctx(s, a->rows);
        float *y = i == s->n - 1 ? a->output : buf[i % 2];
        if (s->hooks != NULL && (st = s->hooks->begin(s->hooks->ctx, i, 0, &p, &c)) != TM_OK)
            break;
        host_view v;
        st = view_open(s, 0, &p, &c, &v);
        if (st == TM_OK) st = p->layer->kind->forward(p, &c, x, y, saved);
        view_close(s, &v, st);
        if (s->hooks != NULL) st = s->hooks->end(s->hooks->ctx, i, 0, st);
        if (st != TM_OK) break;
        if (!model_output(s, i))
            round_bf16(s->dev, y, a->out16[i], (size_t)p->out_w * (size_t)a->rows);
        if (a->saved16[i] != NULL) {
            size_t n = kept_floats(s, i, a->rows);
            tm_f32_to_bf16(a->saved16[i], saved, n);
            tm_clock_charge(s->dev, 0, 6.0 * (double)n);
        }
        x = y;
    }
    tm_device_free(s->dev, work);
    return st;
}

/* The backward's block in bf16: the gradient buffers and scratch as in
 * fp32, then a layer's input, output and what it keeps in fp32. */
static size_t bwd_floats_bf16(const tm_stage *s, int rows)
{
    return 2 * (size_t)s->grad_w * (size_t)rows + scratch_floats(s, rows) +
           2 * width_floats(s, rows) + saved_most(s, rows);
}

/* Each layer's input, output and saved buffers expanded to fp32 (a
 * recomputed layer's forward run again and rounded as in the forward, so
 * that recomputation reads the bits a stored layer would), then its
 * backward as in fp32. */
static int backward_bf16(tm_stage *s, tm_stage_acts *a, float *dy, float *dx,
                         tm_grads_ready_fn ready, void *ctx)
{
    int rows = a->rows, st = TM_OK;
    size_t r = (size_t)rows, w = width_floats(s, rows);
    float *block = tm_device_alloc(s->dev, bwd_floats_bf16(s, rows) * sizeof(float),
                                   TM_TAG_ACTIVATION);
    if (block == NULL) return TM_ENOMEM;
    size_t stride = (size_t)s->grad_w * r;
    float *g[2] = {block, block + stride}, *scratch = block + 2 * stride;
    float *xin = scratch + scratch_floats(s, rows), *yout = xin + w, *saved = yout + w;
    float *d = dy;
    for (int i = s->n - 1; i >= 0 && st == TM_OK; i--) {
        const tm_layer_plan *p = &s->layer[i];
        tm_layer_ctx c = tm_stage_ctx(s, rows);
        float *din = g[i % 2];
        if (i == 0) din = s->has_model_input ? NULL : dx;
        if (s->hooks != NULL) st = s->hooks->begin(s->hooks->ctx, i, 1, &p, &c);
        if (st != TM_OK) break;
        host_view v;
        st = view_open(s, 1, &p, &c, &v);
        const float *x = a->input;
        if (i > 0) {
            expand_bf16(s->dev, xin, a->out16[i - 1], (size_t)s->layer[i - 1].out_w * r);
            x = xin;
        }
        float *y = i == s->n - 1 ? a->output : yout;
        size_t out_n = (size_t)p->out_w * r;
        if (a->saved16[i] != NULL) {
            expand_bf16(s->dev, saved, a->saved16[i], kept_floats(s, i, rows));
            if (i < s->n - 1) expand_bf16(s->dev, y, a->out16[i], out_n);
        } else if (st == TM_OK && tm_layer_recomputed(p, rows)) {
            st = p->layer->kind->forward(p, &c, x, y, saved);
            if (!model_output(s, i)) round_bf16(s->dev, y, NULL, out_n);
            round_bf16(s->dev, saved, NULL, p->layer->kind->saved_floats(p, rows));
        } else if (i < s->n - 1) {
            expand_bf16(s->dev, y, a->out16[i], out_n);
        }
        if (st == TM_OK)
            st = p->layer->kind->backward(p, &c, x, y, saved, d, din, scratch);
        view_close(s, &v, st);
        if (s->hooks != NULL) st = s->hooks->end(s->hooks->ctx, i, 1, st);
        if (st == TM_OK && ready != NULL && p->own_len > 0)
            st = ready(ctx, p->own_off, p->own_len);
        d = din;
    }
    tm_device_free(s->dev, block);
    return st;
}

/* The layers' GEMMs run in bf16 on the stage's weight copy while its
 * forward or backward runs (kernels/ops.h), and in fp32 after. */
static void gemm_precision(const tm_stage *s, int on)
{
    if (on) tm_ops_set_bf16(1, s->params, s->params16, s->n_params);
    else tm_ops_set_bf16(0, NULL, NULL, 0);
}

int tm_stage_forward(tm_stage *s, tm_stage_acts *a)
{
    if (is_bf16(s)) {
        gemm_precision(s, 1);
        int st = forward_bf16(s, a);
        gemm_precision(s, 0);
        return st;
    }
    size_t redo = redo_floats(s, a->rows);
    float *region = NULL;
    if (redo > 0 && (region = tm_device_alloc(s->dev, redo * sizeof(float),
                                              TM_TAG_ACTIVATION)) == NULL)
        return TM_ENOMEM;
    int st = TM_OK;
    for (int i = 0; i < s->n && st == TM_OK; i++) {
        const tm_layer_plan *p = &s->layer[i];
        tm_layer_ctx c = tm_stage_ctx(s, a->rows);
        float *saved = a->saved[i] != NULL ? a->saved[i] : region;
        if (s->hooks != NULL && (st = s->hooks->begin(s->hooks->ctx, i, 0, &p, &c)) != TM_OK)
            break;
        st = p->layer->kind->forward(p, &c, layer_input(a, i), a->out[i], saved);
        if (s->hooks != NULL) st = s->hooks->end(s->hooks->ctx, i, 0, st);
    }
    tm_device_free(s->dev, region);
    return st;
}

size_t tm_stage_forward_bytes(const tm_stage *s, int rows)
{
    if (is_bf16(s)) return block_bytes(fwd_work_floats(s, rows)) + fwd_transient(s, rows, 0);
    size_t redo = redo_floats(s, rows);
    return (redo > 0 ? block_bytes(redo) : 0) + fwd_transient(s, rows, 0);
}

/* Two gradient buffers that the layers pass between them (each layer's
 * input gradient is the next one down's output gradient), then the largest
 * scratch a layer's backward asks for. */
static size_t scratch_floats(const tm_stage *s, int rows)
{
    size_t most = 0;
    for (int i = 0; i < s->n; i++) {
        size_t f = s->layer[i].layer->kind->scratch_floats(&s->layer[i], rows);
        if (f > most) most = f;
    }
    return most;
}

/* The backward's block: the two gradient buffers, the largest scratch,
 * and the region the recomputed layers' forwards fill again. */
static size_t bwd_floats(const tm_stage *s, int rows)
{
    return 2 * (size_t)s->grad_w * (size_t)rows + scratch_floats(s, rows) + redo_floats(s, rows);
}

size_t tm_stage_backward_bytes(const tm_stage *s, int rows)
{
    if (is_bf16(s)) return block_bytes(bwd_floats_bf16(s, rows)) + fwd_transient(s, rows, 1);
    return block_bytes(bwd_floats(s, rows)) + fwd_transient(s, rows, 1);
}

/* Layer i's share of the W block (NULL: its kind does not split). */
/* What a layer keeps from its B for its W: nothing when its kind does not
 * split the backward, or in bf16, where the stage expands a layer's stored
 * activations around its whole backward, which then runs in B. */
static size_t wsave_floats(const tm_stage *s, const tm_layer_plan *p, int rows)
{
    if (is_bf16(s) || p->layer->kind->backward_weight == NULL) return 0;
    return p->layer->kind->wsave_floats(p, rows);
}

size_t tm_stage_wsave_bytes(const tm_stage *s, int rows)
{
    size_t f = 0;
    for (int i = 0; i < s->n; i++) f += wsave_floats(s, &s->layer[i], rows);
    return f * sizeof(float);
}

/* The backward, whole (wsave NULL) or, for the layers whose kinds split
 * it, its B part, keeping each one's share of wsave for W. */
static int backward(tm_stage *s, tm_stage_acts *a, float *dy, float *dx, float *wsave,
                    tm_grads_ready_fn ready, void *ctx)
{
    if (is_bf16(s)) {
        gemm_precision(s, 1);
        int st = backward_bf16(s, a, dy, dx, ready, ctx);
        gemm_precision(s, 0);
        return st;
    }
    int rows = a->rows, st = TM_OK;
    float *block = tm_device_alloc(s->dev, bwd_floats(s, rows) * sizeof(float), TM_TAG_ACTIVATION);
    if (block == NULL) return TM_ENOMEM;
    size_t stride = (size_t)s->grad_w * (size_t)rows;
    float *g[2] = {block, block + stride}, *scratch = block + 2 * stride;
    float *region = scratch + scratch_floats(s, rows);
    float *d = dy;
    size_t woff = wsave != NULL ? tm_stage_wsave_bytes(s, rows) / sizeof(float) : 0;
    for (int i = s->n - 1; i >= 0 && st == TM_OK; i--) {
        const tm_layer_plan *p = &s->layer[i];
        tm_layer_ctx c = tm_stage_ctx(s, rows);
        float *din = g[i % 2];
        if (i == 0) din = s->has_model_input ? NULL : dx;
        if (s->hooks != NULL) st = s->hooks->begin(s->hooks->ctx, i, 1, &p, &c);
        if (st != TM_OK) break;
        float *saved = a->saved[i];
        /* The forward again, on the same input with the same kernels (and,
         * under ZeRO-3, the layer's gathered parameters): it writes the
         * layer's output with the bits it already holds (its readers are
         * done with it) and refills what the backward reads. */
        if (saved == NULL && tm_layer_recomputed(p, rows)) {
            saved = region;
            st = p->layer->kind->forward(p, &c, layer_input(a, i), a->out[i], saved);
        }
        size_t w = wsave != NULL ? wsave_floats(s, p, rows) : 0;
        woff -= w;
        if (st == TM_OK && w > 0)
            st = p->layer->kind->backward_input(p, &c, layer_input(a, i), a->out[i], saved, d,
                                                din, scratch, wsave + woff);
        else if (st == TM_OK)
            st = p->layer->kind->backward(p, &c, layer_input(a, i), a->out[i], saved, d, din,
                                          scratch);
        if (s->hooks != NULL) st = s->hooks->end(s->hooks->ctx, i, 1, st);
        if (st == TM_OK && ready != NULL && p->own_len > 0)
            st = ready(ctx, p->own_off, p->own_len);
        d = din;
    }
    tm_device_free(s->dev, block);
    return st;
}

int tm_stage_backward(tm_stage *s, tm_stage_acts *a, float *dy, float *dx, tm_grads_ready_fn ready,
                      void *ctx)
{
    return backward(s, a, dy, dx, NULL, ready, ctx);
}

int tm_stage_backward_input(tm_stage *s, tm_stage_acts *a, float *dy, float *dx, float *wsave)
{
    return backward(s, a, dy, dx, wsave, NULL, NULL);
}

int tm_stage_backward_weight(tm_stage *s, tm_stage_acts *a, const float *wsave,
                             tm_grads_ready_fn ready, void *ctx)
{
    int rows = a->rows, st = TM_OK;
    size_t woff = tm_stage_wsave_bytes(s, rows) / sizeof(float);
    for (int i = s->n - 1; i >= 0 && st == TM_OK; i--) {
        const tm_layer_plan *p = &s->layer[i];
        size_t w = wsave_floats(s, p, rows);
        woff -= w;
        if (w > 0) {
            tm_layer_ctx c = tm_stage_ctx(s, rows);
            st = p->layer->kind->backward_weight(p, &c, layer_input(a, i), a->saved[i],
                                                 wsave + woff);
        }
        if (st == TM_OK && ready != NULL && p->own_len > 0)
            st = ready(ctx, p->own_off, p->own_len);
    }
    return st;
}

/* Copies the gradients of the shards marked partial into buf (to_buf) or
 * back, packed in layer order; returns their floats (buf NULL: counts). */
static size_t each_partial(const tm_stage *s, float *buf, int to_buf)
{
    size_t n = 0;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        for (int k = 0; k < p->layer->n_tensors; k++) {
            const tm_shard *sh = &p->shard[k];
            if (!sh->owned || !sh->partial) continue;
            float *g = s->grads + sh->off;
            if (tm_cost_dry()) {
                /* Nothing to move: only the count. */
            } else if (buf != NULL && to_buf) memcpy(buf + n, g, sh->count * sizeof(float));
            else if (buf != NULL) memcpy(g, buf + n, sh->count * sizeof(float));
            n += sh->count;
        }
    }
    return n;
}

size_t tm_stage_partial_floats(const tm_stage *s) { return each_partial(s, NULL, 0); }

int tm_stage_sum_partial(tm_stage *s)
{
    size_t n = tm_stage_partial_floats(s);
    if (n == 0 || s->tp == 1) return TM_OK;
    float *buf = tm_device_alloc(s->dev, n * sizeof(float), TM_TAG_WORKSPACE);
    if (buf == NULL) return TM_ENOMEM;
    each_partial(s, buf, 1);
    int st = tm_allreduce(s->tp_comm, buf, buf, n, TM_SUM);
    if (st == TM_OK) each_partial(s, buf, 0);
    tm_clock_charge(s->dev, 0, 16.0 * (double)n);
    tm_device_free(s->dev, buf);
    return st;
}
