#include "strategies/stage.h"

#include <string.h>

#include "kernels/ops.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"

int tm_stage_create(tm_stage *s, tm_device *dev, tm_comm *tp_comm, const tm_mlp_config *cfg,
                    int l0, int l1, tm_optimizer opt, double momentum)
{
    memset(s, 0, sizeof *s);
    s->dev = dev;
    s->tp_comm = tp_comm;
    s->tp = tm_comm_size(tp_comm);
    s->t = tm_comm_rank(tp_comm);
    s->act = cfg->act;
    s->n = l1 - l0;
    s->in_width = cfg->widths[l0];
    s->out_width = cfg->widths[l1];
    s->has_model_input = l0 == 0;
    TM_CHECK(tm_stage_plan(cfg, l0, l1, s->tp, s->t, s->layer, &s->n_params));
    size_t bytes = s->n_params * sizeof(float);
    s->params = tm_device_alloc(dev, bytes, TM_TAG_PARAM);
    if (s->params == NULL) return TM_ENOMEM;
    s->grads = tm_device_alloc(dev, bytes, TM_TAG_GRAD);
    if (s->grads == NULL) return TM_ENOMEM;
    s->n_opt_state = opt == TM_OPT_ADAMW ? 2 : momentum != 0.0;
    for (int i = 0; i < s->n_opt_state; i++) {
        s->opt_state[i] = tm_device_alloc(dev, bytes, TM_TAG_OPTIMIZER);
        if (s->opt_state[i] == NULL) return TM_ENOMEM;
        /* The optimizers initialise their state on step 1; zeros make a
         * checkpoint taken before any step well defined. */
        memset(s->opt_state[i], 0, bytes);
    }
    return TM_OK;
}

void tm_stage_destroy(tm_stage *s)
{
    if (s->dev == NULL) return;
    for (int i = 0; i < s->n_opt_state; i++) tm_device_free(s->dev, s->opt_state[i]);
    tm_device_free(s->dev, s->grads);
    tm_device_free(s->dev, s->params);
    memset(s, 0, sizeof *s);
}

/* Moves one layer's shard between the full layout and the rank's shard
 * (to_full selects the direction). */
static void copy_layer(const tm_layer_plan *l, const tm_mlp_config *cfg, float *full,
                       float *shard, int to_full, int write_shared)
{
    float *fw = full + tm_mlp_weight_offset(cfg, l->layer);
    float *fb = full + tm_mlp_bias_offset(cfg, l->layer);
    float *sw = shard + l->w_off, *sb = shard + l->b_off;
    if (l->split == TM_SPLIT_ROW) {
        for (int o = 0; o < l->out; o++) {
            float *f = fw + (size_t)o * l->in + l->row0, *h = sw + (size_t)o * l->in_local;
            if (to_full) memcpy(f, h, (size_t)l->in_local * sizeof(float));
            else memcpy(h, f, (size_t)l->in_local * sizeof(float));
        }
        if (to_full && write_shared) memcpy(fb, sb, (size_t)l->out * sizeof(float));
        if (!to_full) memcpy(sb, fb, (size_t)l->out * sizeof(float));
        return;
    }
    /* Column shard (or the whole layer): output rows row0 .. row0 + local,
     * of which those past the real width are padding. */
    int real = l->out - l->row0 < l->out_local ? l->out - l->row0 : l->out_local;
    if (real < 0) real = 0;
    size_t w = (size_t)real * l->in;
    if (to_full) {
        memcpy(fw + (size_t)l->row0 * l->in, sw, w * sizeof(float));
        memcpy(fb + l->row0, sb, (size_t)real * sizeof(float));
        return;
    }
    memcpy(sw, fw + (size_t)l->row0 * l->in, w * sizeof(float));
    memset(sw + w, 0, ((size_t)l->out_local * l->in - w) * sizeof(float));
    memcpy(sb, fb + l->row0, (size_t)real * sizeof(float));
    memset(sb + real, 0, (size_t)(l->out_local - real) * sizeof(float));
}

void tm_stage_shard_from(const tm_stage *s, const tm_mlp_config *cfg, const float *full,
                         float *shard)
{
    for (int i = 0; i < s->n; i++) copy_layer(&s->layer[i], cfg, (float *)full, shard, 0, 0);
}

void tm_stage_shard_to(const tm_stage *s, const tm_mlp_config *cfg, const float *shard,
                       float *full, int write_shared)
{
    for (int i = 0; i < s->n; i++)
        copy_layer(&s->layer[i], cfg, full, (float *)shard, 1, write_shared);
}

/* Which buffers a layer keeps, in floats per row. */
static int keeps_pre(const tm_stage *s, const tm_layer_plan *p)
{
    /* ReLU's backward needs only its output, except after a row-parallel
     * layer, whose all-reduced sum is formed in the pre buffer first. */
    return p->activation && (s->act == TM_ACT_GELU || p->split == TM_SPLIT_ROW);
}

static size_t layer_floats(const tm_stage *s, const tm_layer_plan *p)
{
    size_t f = 0;
    if (p->split != TM_SPLIT_ROW) f += (size_t)p->out_local;          /* local */
    if (p->split == TM_SPLIT_ROW || p->gather) f += (size_t)p->out;   /* full */
    if (keeps_pre(s, p)) f += p->split == TM_SPLIT_ROW ? (size_t)p->out : (size_t)p->out_local;
    return f;
}

size_t tm_stage_acts_bytes(const tm_stage *s, int rows)
{
    size_t f = (size_t)s->in_width;
    for (int i = 0; i < s->n; i++) f += layer_floats(s, &s->layer[i]);
    return f * (size_t)rows * sizeof(float);
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
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *l = &s->layer[i];
        if (l->split != TM_SPLIT_ROW) {
            a->local[i] = p;
            p += r * l->out_local;
        }
        if (l->split == TM_SPLIT_ROW || l->gather) {
            a->full[i] = p;
            p += r * l->out;
        } else if (l->split == TM_SPLIT_NONE) {
            a->full[i] = a->local[i];
        }
        if (keeps_pre(s, l)) {
            a->pre[i] = p;
            p += r * (l->split == TM_SPLIT_ROW ? l->out : l->out_local);
        }
    }
    a->output = a->full[s->n - 1];
    return TM_OK;
}

void tm_stage_acts_free(tm_stage *s, tm_stage_acts *a)
{
    tm_device_free(s->dev, a->block);
    a->block = NULL;
}

/* The input layer i reads: the stage input, the column half's local
 * output for a row layer, else the previous layer's whole output. */
static const float *layer_input(const tm_stage *s, const tm_stage_acts *a, int i)
{
    if (i == 0) return a->input;
    return s->layer[i].split == TM_SPLIT_ROW ? a->local[i - 1] : a->full[i - 1];
}

static void activate(const tm_stage *s, float *out, const float *pre, size_t n)
{
    if (s->act == TM_ACT_RELU) tm_relu_forward(out, pre, n);
    else tm_gelu_forward(out, pre, n);
}

/* The buffer clears and copies between kernels are device work too: the
 * modeled clock charges their bytes (written, or read and written). */
static void zero(const tm_stage *s, float *p, size_t n)
{
    memset(p, 0, n * sizeof(float));
    tm_clock_charge(s->dev, 0, 4.0 * (double)n);
}

/* out (rows, out) from the tp ranks' shards gathered as [t][rows][local],
 * dropping the padding columns. */
static void compact(float *out, const float *gathered, int rows, int tp, int local, int width)
{
    for (int t = 0; t < tp; t++) {
        int cols = width - t * local < local ? width - t * local : local;
        for (int r = 0; r < rows && cols > 0; r++)
            memcpy(out + (size_t)r * width + (size_t)t * local,
                   gathered + ((size_t)t * rows + r) * local, (size_t)cols * sizeof(float));
    }
}

int tm_stage_forward(tm_stage *s, tm_stage_acts *a)
{
    int rows = a->rows;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *l = &s->layer[i];
        const float *x = layer_input(s, a, i);
        const float *w = s->params + l->w_off, *b = s->params + l->b_off;
        if (l->split == TM_SPLIT_ROW) {
            /* Partial sums over this rank's inputs, summed over the group,
             * then the whole bias once. */
            float *sum = l->activation ? a->pre[i] : a->full[i];
            size_t n = (size_t)rows * l->out;
            tm_linear_forward(sum, x, w, NULL, rows, l->in_local, l->out);
            TM_CHECK(tm_allreduce(s->tp_comm, sum, sum, n, TM_SUM));
            tm_bias_add_forward(sum, b, rows, l->out);
            if (l->activation) activate(s, a->full[i], sum, n);
            continue;
        }
        size_t n = (size_t)rows * l->out_local;
        if (!l->activation) tm_linear_forward(a->local[i], x, w, b, rows, l->in, l->out_local);
        else if (s->act == TM_ACT_RELU && a->pre[i] == NULL)
            tm_linear_relu_forward(a->local[i], x, w, b, rows, l->in, l->out_local);
        else {
            tm_linear_forward(a->pre[i], x, w, b, rows, l->in, l->out_local);
            activate(s, a->local[i], a->pre[i], n);
        }
        if (l->gather) {
            /* The gathered shards need a scratch of (tp, rows, local). */
            float *g = tm_device_alloc(s->dev, n * s->tp * sizeof(float), TM_TAG_ACTIVATION);
            if (g == NULL) return TM_ENOMEM;
            int st = tm_allgather(s->tp_comm, a->local[i], g, n);
            if (st == TM_OK) {
                compact(a->full[i], g, rows, s->tp, l->out_local, l->out);
                tm_clock_charge(s->dev, 0, 8.0 * rows * l->out);
            }
            tm_device_free(s->dev, g);
            TM_CHECK(st);
        }
    }
    return TM_OK;
}

size_t tm_stage_backward_bytes(const tm_stage *s, int rows)
{
    size_t w = (size_t)s->in_width;
    for (int i = 0; i < s->n; i++) {
        if ((size_t)s->layer[i].out_padded > w) w = (size_t)s->layer[i].out_padded;
        if ((size_t)s->layer[i].in > w) w = (size_t)s->layer[i].in;
    }
    return 3 * w * (size_t)rows * sizeof(float);
}

/* The first of three gradient buffers that is neither x nor y. */
static float *other(float *g[3], const float *x, const float *y)
{
    for (int i = 0; i < 3; i++)
        if (g[i] != x && g[i] != y) return g[i];
    return NULL;
}

/* d (gradient of the activated output, n floats) becomes the gradient of
 * the pre-activation; `into` receives it when d cannot be rewritten. */
static float *activation_backward(const tm_stage *s, float *d, float *into, const float *post,
                                  const float *pre, size_t n)
{
    if (s->act == TM_ACT_RELU) {
        tm_relu_backward_inplace(d, post, n);
        return d;
    }
    zero(s, into, n);
    tm_gelu_backward(into, d, pre, n);
    return into;
}

int tm_stage_backward(tm_stage *s, tm_stage_acts *a, float *dy, float *dx, tm_grads_ready_fn ready,
                      void *ctx)
{
    int rows = a->rows, st = TM_OK;
    float *block = tm_device_alloc(s->dev, tm_stage_backward_bytes(s, rows), TM_TAG_ACTIVATION);
    if (block == NULL) return TM_ENOMEM;
    size_t stride = tm_stage_backward_bytes(s, rows) / 3 / sizeof(float);
    float *g[3] = {block, block + stride, block + 2 * stride};
    float *d = dy;
    for (int i = s->n - 1; i >= 0 && st == TM_OK; i--) {
        const tm_layer_plan *l = &s->layer[i];
        const float *x = layer_input(s, a, i);
        const float *w = s->params + l->w_off;
        float *dw = s->grads + l->w_off, *db = s->grads + l->b_off;
        int want_dx = i > 0 || (!s->has_model_input && dx != NULL);
        if (l->split == TM_SPLIT_ROW) {
            size_t n = (size_t)rows * l->out;
            if (l->activation) d = activation_backward(s, d, other(g, d, NULL), a->full[i], a->pre[i], n);
            float *dloc = other(g, d, NULL);
            zero(s, dloc, (size_t)rows * l->in_local);
            /* The bias is whole on every rank and gets the same gradient
             * everywhere; the input gradient stays split (no comm). */
            tm_linear_backward(dloc, dw, db, d, x, w, rows, l->in_local, l->out);
            d = dloc;
        } else {
            size_t n = (size_t)rows * l->out_local;
            if (l->gather) {
                /* Only this rank's columns of the whole gradient; padding
                 * columns get none. */
                float *dl = other(g, d, NULL);
                int cols = l->out - l->row0 < l->out_local ? l->out - l->row0 : l->out_local;
                if (cols < 0) cols = 0;
                zero(s, dl, n);
                for (int r = 0; r < rows; r++)
                    memcpy(dl + (size_t)r * l->out_local, d + (size_t)r * l->out + l->row0,
                           (size_t)cols * sizeof(float));
                tm_clock_charge(s->dev, 0, 8.0 * rows * cols);
                d = dl;
            }
            if (l->activation) d = activation_backward(s, d, other(g, d, NULL), a->local[i], a->pre[i], n);
            float *dinp = NULL;
            if (want_dx) {
                dinp = i == 0 ? dx : other(g, d, NULL);
                zero(s, dinp, (size_t)rows * l->in);
            }
            tm_linear_backward(dinp, dw, db, d, x, w, rows, l->in, l->out_local);
            /* Column split: each rank's input gradient is a partial sum over
             * its output features (Megatron's conjugate all-reduce). */
            if (dinp != NULL && l->split == TM_SPLIT_COLUMN)
                st = tm_allreduce(s->tp_comm, dinp, dinp, (size_t)rows * l->in, TM_SUM);
            d = dinp;
        }
        if (st == TM_OK && ready != NULL) st = ready(ctx, l->w_off, l->w_len + l->b_len);
    }
    if (st == TM_OK && dx != NULL && !s->has_model_input && d != dx) {
        memcpy(dx, d, (size_t)rows * s->in_width * sizeof(float));
        tm_clock_charge(s->dev, 0, 8.0 * rows * s->in_width);
    }
    tm_device_free(s->dev, block);
    return st;
}
