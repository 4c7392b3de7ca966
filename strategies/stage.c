#include "strategies/stage.h"

#include <string.h>

#include "kernels/cost.h"
#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"
#include "strategies/stage_internal.h"

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

void tm_stage_destroy(tm_stage *s)
{
    if (s->dev == NULL) return;
    tm_device_free(s->dev, s->params16);
    for (int i = 0; i < s->n_opt_state; i++) tm_device_free(s->dev, s->opt_state[i]);
    tm_device_free(s->dev, s->grads);
    tm_device_free(s->dev, s->params);
    memset(s, 0, sizeof *s);
}

/* The runs of one shard (tensor t's first float at full offset f, the
 * shard's at h), in order: each n floats alike in the full layout and the
 * rank's buffer, then pad floats of the buffer that are padding (rows past
 * a group block's real extent: zero in the shard, absent from the full
 * tensor). */
static void shard_spans(const tm_tensor *t, const tm_shard *s, size_t f, size_t h,
                        tm_stage_span_fn *fn, void *ctx)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    if (s->dim == TM_SHARD_WHOLE) {
        fn(ctx, f, h, rows * cols, 0);
        return;
    }
    if (s->dim == TM_SHARD_COLS) {
        for (size_t r = 0; r < rows; r++)
            fn(ctx, f + r * cols + (size_t)s->lo, h + r * (size_t)s->len, (size_t)s->len, 0);
        return;
    }
    size_t block = rows / (size_t)t->groups;
    for (int g = 0; g < t->groups; g++) {
        long real = (long)block - s->lo < s->len ? (long)block - s->lo : s->len;
        size_t n = real > 0 ? (size_t)real * cols : 0;
        fn(ctx, f + (g * block + (size_t)s->lo) * cols, h + (size_t)g * s->len * cols, n,
           (size_t)s->len * cols - n);
    }
}

/* Every owned shard's runs; to_full: only those written back (tensors
 * held whole on every tp rank when write_shared, a tied tensor from the
 * first stage that stores it). */
static void spans(const tm_stage *s, int to_full, int write_shared, tm_stage_span_fn *fn,
                  void *ctx)
{
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        for (int k = 0; k < p->layer->n_tensors; k++) {
            const tm_shard *sh = &p->shard[k];
            const tm_tensor *t = &s->model->tensors[p->layer->tensor[k]];
            if (!sh->owned || (to_full && sh->dim == TM_SHARD_WHOLE && !write_shared)) continue;
            /* A tensor an earlier stage stores too (a tied embedding) is
             * written back from there. */
            if (to_full && t->layer < s->l0) continue;
            shard_spans(t, sh, t->off, sh->off, fn, ctx);
        }
    }
}

typedef struct {
    float *full, *shard;
} copy_ctx;

static void span_to_full(void *ctx, size_t full, size_t shard, size_t n, size_t pad)
{
    copy_ctx *c = ctx;
    (void)pad;
    memcpy(c->full + full, c->shard + shard, n * sizeof(float));
}

static void span_from_full(void *ctx, size_t full, size_t shard, size_t n, size_t pad)
{
    copy_ctx *c = ctx;
    memcpy(c->shard + shard, c->full + full, n * sizeof(float));
    memset(c->shard + shard + n, 0, pad * sizeof(float));
}

void tm_stage_shard_from(const tm_stage *s, const float *full, float *shard)
{
    copy_ctx c = {(float *)full, shard};
    if (!tm_cost_dry()) spans(s, 0, 0, span_from_full, &c);
}

void tm_stage_shard_to(const tm_stage *s, const float *shard, float *full, int write_shared)
{
    copy_ctx c = {full, (float *)shard};
    if (!tm_cost_dry()) spans(s, 1, write_shared, span_to_full, &c);
}

void tm_stage_shard_spans(const tm_stage *s, int write_shared, tm_stage_span_fn *fn, void *ctx)
{
    spans(s, 1, write_shared, fn, ctx);
}

tm_layer_ctx tm_stage_ctx(const tm_stage *s, int rows)
{
    return (tm_layer_ctx){s->dev, s->tp_comm, s->params, s->grads, rows};
}

/* What layer i keeps for its backward in the micro-batch's block: nothing
 * when it is recomputed (strategies/layer.h). */
size_t tm__stage_kept_floats(const tm_stage *s, int i, int rows)
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

size_t tm__stage_block_bytes(size_t floats) { return tm_arena_block_bytes(floats * sizeof(float)); }

/* The largest transient forward block of the layers (only the recomputed
 * ones: recomputed), as the arena counts it; 0 when none has one. */
static size_t fwd_transient(const tm_stage *s, int rows, int recomputed)
{
    size_t most = 0;
    for (int i = 0; i < s->n; i++) {
        size_t f = fwd_floats(&s->layer[i], rows);
        if (f > 0 && (!recomputed || tm_layer_recomputed(&s->layer[i], rows)) &&
            tm__stage_block_bytes(f) > most)
            most = tm__stage_block_bytes(f);
    }
    return most;
}

static int is_bf16(const tm_stage *s) { return s->precision == TM_PRECISION_BF16; }

size_t tm_stage_acts_bytes(const tm_stage *s, int rows)
{
    if (is_bf16(s)) return tm__stage_acts_bytes_bf16(s, rows);
    size_t f = (size_t)s->in_width * (size_t)rows;
    for (int i = 0; i < s->n; i++)
        f += (size_t)s->layer[i].out_w * (size_t)rows + tm__stage_kept_floats(s, i, rows);
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
            size_t kept = tm__stage_kept_floats(s, i, rows);
            a->saved16[i] = kept > 0 ? h : NULL;
            h += kept;
        }
        return TM_OK;
    }
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *l = &s->layer[i];
        a->out[i] = p;
        p += r * l->out_w;
        size_t kept = tm__stage_kept_floats(s, i, rows);
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
int tm_stage_forward(tm_stage *s, tm_stage_acts *a)
{
    if (is_bf16(s)) return tm__stage_forward_bf16(s, a);
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
    if (is_bf16(s)) return tm__stage_forward_bytes_bf16(s, rows) + fwd_transient(s, rows, 0);
    size_t redo = redo_floats(s, rows);
    return (redo > 0 ? tm__stage_block_bytes(redo) : 0) + fwd_transient(s, rows, 0);
}

/* Two gradient buffers that the layers pass between them (each layer's
 * input gradient is the next one down's output gradient), then the largest
 * scratch a layer's backward asks for. */
size_t tm__stage_scratch_floats(const tm_stage *s, int rows)
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
    return 2 * (size_t)s->grad_w * (size_t)rows + tm__stage_scratch_floats(s, rows) +
           redo_floats(s, rows);
}

size_t tm_stage_backward_bytes(const tm_stage *s, int rows)
{
    if (is_bf16(s)) return tm__stage_backward_bytes_bf16(s, rows) + fwd_transient(s, rows, 1);
    return tm__stage_block_bytes(bwd_floats(s, rows)) + fwd_transient(s, rows, 1);
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
    if (is_bf16(s)) return tm__stage_backward_bf16(s, a, dy, dx, ready, ctx);
    int rows = a->rows, st = TM_OK;
    float *block = tm_device_alloc(s->dev, bwd_floats(s, rows) * sizeof(float), TM_TAG_ACTIVATION);
    if (block == NULL) return TM_ENOMEM;
    size_t stride = (size_t)s->grad_w * (size_t)rows;
    float *g[2] = {block, block + stride}, *scratch = block + 2 * stride;
    float *region = scratch + tm__stage_scratch_floats(s, rows);
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
            /* A dry run moves nothing: only the count. */
            if (buf != NULL && !tm_cost_dry()) {
                if (to_buf) memcpy(buf + n, g, sh->count * sizeof(float));
                else memcpy(g, buf + n, sh->count * sizeof(float));
            }
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
