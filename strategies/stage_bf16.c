/* A stage in bf16 (strategies/stage.h): the weights' bf16 copy, the
 * activations stored in bf16 and expanded around each layer, and, with the
 * fp32 masters on the host, each layer's fp32 view of the copy.
 *
 * The layer kinds compute in fp32 as always (their GEMMs in bf16 through
 * kernels/ops.h); the stage keeps what they produce in bf16 and gives
 * them fp32 copies: transient buffers as wide as the widest layer. */
#include <string.h>

#include "kernels/cost.h"
#include "kernels/ops.h"
#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/status.h"
#include "strategies/stage.h"
#include "strategies/stage_internal.h"

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

/* In bf16: the stage's input and output in fp32, then the other layers'
 * outputs and what every layer keeps in bf16. */
size_t tm__stage_acts_bytes_bf16(const tm_stage *s, int rows)
{
    size_t r = (size_t)rows, h = 0;
    for (int i = 0; i < s->n; i++)
        h += (i < s->n - 1 ? (size_t)s->layer[i].out_w * r : 0) + tm__stage_kept_floats(s, i, rows);
    return ((size_t)s->in_width + (size_t)s->out_width) * r * sizeof(float) + h * sizeof(tm_bf16);
}

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

/* bf16 with the fp32 masters on the host (optimizer offload).
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
        if (n > 0 && tm__stage_block_bytes(n) > most) most = tm__stage_block_bytes(n);
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
            size_t n = tm__stage_kept_floats(s, i, a->rows);
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
    return 2 * (size_t)s->grad_w * (size_t)rows + tm__stage_scratch_floats(s, rows) +
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
    float *xin = scratch + tm__stage_scratch_floats(s, rows), *yout = xin + w, *saved = yout + w;
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
            expand_bf16(s->dev, saved, a->saved16[i], tm__stage_kept_floats(s, i, rows));
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


int tm__stage_forward_bf16(tm_stage *s, tm_stage_acts *a)
{
    gemm_precision(s, 1);
    int st = forward_bf16(s, a);
    gemm_precision(s, 0);
    return st;
}

size_t tm__stage_forward_bytes_bf16(const tm_stage *s, int rows)
{
    return tm__stage_block_bytes(fwd_work_floats(s, rows));
}

int tm__stage_backward_bf16(tm_stage *s, tm_stage_acts *a, float *dy, float *dx,
                            tm_grads_ready_fn ready, void *ctx)
{
    gemm_precision(s, 1);
    int st = backward_bf16(s, a, dy, dx, ready, ctx);
    gemm_precision(s, 0);
    return st;
}

size_t tm__stage_backward_bytes_bf16(const tm_stage *s, int rows)
{
    return tm__stage_block_bytes(bwd_floats_bf16(s, rows));
}
