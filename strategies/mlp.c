#include "strategies/mlp.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"
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
        if (errno != 0 || v < 1 || v > TM_MLP_MAX_WIDTH) {
            *why = "each width must be between 1 and 1048576";
            return -1;
        }
        if (n > TM_MLP_MAX_LAYERS) {
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

/* ---- the linear layer kind ------------------------------------------------
 * A linear layer (+ the model's activation unless it is the last). Its plan
 * under tensor parallelism, Megatron's recipe: */
enum {
    MODE_WHOLE,  /* tp = 1 */
    MODE_COLUMN, /* weight rows (outputs) and bias split; a ROW layer follows */
    MODE_ROW,    /* weight columns (inputs) split, bias whole: partial sums
                    all-reduced, then the bias once */
    MODE_GATHER, /* column split with no partner left in the stage: its
                    outputs are all-gathered */
};
/* p->local: */
enum { OUT_LOCAL, IN_LOCAL, OUT_PADDED, ROW0 };

static tm_activation act_of(const tm_layer_plan *p)
{
    return ((const tm_mlp_config *)p->model->cfg)->act;
}

static int has_act(const tm_layer_plan *p) { return p->layer->arg; }

/* The full layer's widths. */
static int in_of(const tm_layer_plan *p) { return p->layer->in_width; }
static int out_of(const tm_layer_plan *p) { return p->layer->out_width; }

static int linear_plan(tm_layer_plan *p, const tm_layer_plan *prev, int last)
{
    int in = in_of(p), out = out_of(p), tp = p->tp, t = p->t;
    p->local[OUT_LOCAL] = p->local[OUT_PADDED] = out;
    p->local[IN_LOCAL] = in;
    p->local[ROW0] = 0;
    p->mode = MODE_WHOLE;
    tm_shard *w = &p->shard[0], *b = &p->shard[1];
    w->dim = b->dim = TM_SHARD_WHOLE;
    if (tp > 1 && prev != NULL && prev->mode == MODE_COLUMN) {
        /* The row half of a pair: its inputs are the column half's outputs,
         * already split (the pair's width divides by tp: checked there). */
        p->mode = MODE_ROW;
        p->local[IN_LOCAL] = in / tp;
        p->local[ROW0] = t * p->local[IN_LOCAL];
        *w = (tm_shard){.dim = TM_SHARD_COLS, .lo = p->local[ROW0], .len = p->local[IN_LOCAL]};
    } else if (tp > 1) {
        p->mode = last ? MODE_GATHER : MODE_COLUMN;
        if (!last && out % tp != 0)
            return tm_error(TM_EINVAL,
                            "layer %d has %d outputs, which tp=%d does not divide (a "
                            "column/row pair splits them evenly)", p->layer->index, out, tp);
        p->local[OUT_PADDED] = (out + tp - 1) / tp * tp;
        p->local[OUT_LOCAL] = p->local[OUT_PADDED] / tp;
        p->local[ROW0] = t * p->local[OUT_LOCAL];
        *w = (tm_shard){.dim = TM_SHARD_ROWS, .lo = p->local[ROW0], .len = p->local[OUT_LOCAL]};
        *b = *w;
    }
    p->in_w = p->local[IN_LOCAL];
    p->out_w = p->mode == MODE_COLUMN ? p->local[OUT_LOCAL] : out;
    p->grad_w = in > p->local[OUT_PADDED] ? in : p->local[OUT_PADDED];
    return TM_OK;
}

static double linear_flops(const tm_layer *l, int rows)
{
    return 2.0 * rows * l->in_width * l->out_width;
}

/* The pre-activation is kept when the backward needs it: GELU's, and after
 * a row-parallel layer, whose all-reduced sum is formed there first (ReLU's
 * backward needs only its output). */
static int keeps_pre(const tm_layer_plan *p)
{
    return has_act(p) && (act_of(p) == TM_ACT_GELU || p->mode == MODE_ROW);
}

static size_t pre_floats(const tm_layer_plan *p)
{
    return p->mode == MODE_ROW ? (size_t)out_of(p) : (size_t)p->local[OUT_LOCAL];
}

/* saved: the local output before the gather (GATHER), then the
 * pre-activation (when kept). */
static size_t linear_saved(const tm_layer_plan *p, int rows)
{
    size_t f = p->mode == MODE_GATHER ? (size_t)p->local[OUT_LOCAL] : 0;
    if (keeps_pre(p)) f += pre_floats(p);
    return f * (size_t)rows;
}

static size_t linear_scratch(const tm_layer_plan *p, int rows)
{
    return (size_t)p->grad_w * (size_t)rows;
}

/* A gathered layer's forward gathers every rank's shard, (tp, rows, local). */
static size_t linear_fwd_scratch(const tm_layer_plan *p, int rows)
{
    return p->mode == MODE_GATHER ? (size_t)p->tp * rows * p->local[OUT_LOCAL] : 0;
}

static void activate(const tm_layer_plan *p, float *out, const float *pre, size_t n)
{
    if (act_of(p) == TM_ACT_RELU) tm_relu_forward(out, pre, n);
    else tm_gelu_forward(out, pre, n);
}

/* out (rows, width) from the tp ranks' shards gathered as [t][rows][local],
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

static int linear_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                          float *out, float *saved)
{
    int rows = c->rows, tp = p->tp;
    const float *w = c->params + p->shard[0].off, *b = c->params + p->shard[1].off;
    float *pre = keeps_pre(p) ? saved + (p->mode == MODE_GATHER
                                             ? (size_t)rows * p->local[OUT_LOCAL] : 0)
                              : NULL;
    if (p->mode == MODE_ROW) {
        /* Partial sums over this rank's inputs, summed over the group, then
         * the whole bias once. */
        float *sum = has_act(p) ? pre : out;
        size_t n = (size_t)rows * out_of(p);
        tm_linear_forward(sum, x, w, NULL, rows, p->local[IN_LOCAL], out_of(p));
        TM_CHECK(tm_allreduce(c->tp_comm, sum, sum, n, TM_SUM));
        tm_bias_add_forward(sum, b, rows, out_of(p));
        if (has_act(p)) activate(p, out, sum, n);
        return TM_OK;
    }
    int local = p->local[OUT_LOCAL], in = in_of(p);
    float *loc = p->mode == MODE_GATHER ? saved : out;
    size_t n = (size_t)rows * local;
    if (!has_act(p)) tm_linear_forward(loc, x, w, b, rows, in, local);
    else if (pre == NULL) tm_linear_relu_forward(loc, x, w, b, rows, in, local);
    else {
        tm_linear_forward(pre, x, w, b, rows, in, local);
        activate(p, loc, pre, n);
    }
    if (p->mode != MODE_GATHER) return TM_OK;
    float *g = tm_device_alloc(c->dev, linear_fwd_scratch(p, rows) * sizeof(float),
                               TM_TAG_ACTIVATION);
    if (g == NULL) return TM_ENOMEM;
    int st = tm_allgather(c->tp_comm, loc, g, n);
    if (st == TM_OK) {
        compact(out, g, rows, tp, local, out_of(p));
        tm_clock_charge(c->dev, 0, 8.0 * rows * out_of(p));
    }
    tm_device_free(c->dev, g);
    return st;
}

/* d (gradient of the activated output, n floats) becomes the gradient of
 * the pre-activation; `into` receives it when d cannot be rewritten. */
static float *activation_backward(const tm_layer_plan *p, const tm_layer_ctx *c, float *d,
                                  float *into, const float *post, const float *pre, size_t n)
{
    if (act_of(p) == TM_ACT_RELU) {
        tm_relu_backward_inplace(d, post, n);
        return d;
    }
    tm_layer_zero(c, into, n);
    tm_gelu_backward(into, d, pre, n);
    return into;
}

/* The backward up to the gradient of the layer's local pre-activation
 * outputs: returned, (rows, n_out(p)), in dout or scratch. */
static size_t n_out(const tm_layer_plan *p)
{
    return p->mode == MODE_ROW ? (size_t)out_of(p) : (size_t)p->local[OUT_LOCAL];
}

static float *output_grad(const tm_layer_plan *p, const tm_layer_ctx *c, const float *out,
                          float *saved, float *dout, float *scratch)
{
    int rows = c->rows;
    int local = p->local[OUT_LOCAL];
    const float *pre = keeps_pre(p) ? saved + (p->mode == MODE_GATHER
                                                   ? (size_t)rows * local : 0)
                                    : NULL;
    float *d = dout;
    size_t n = (size_t)rows * n_out(p);
    if (p->mode == MODE_ROW)
        return has_act(p) ? activation_backward(p, c, d, scratch, out, pre, n) : d;
    const float *post = out;
    float *into = scratch;
    if (p->mode == MODE_GATHER) {
        /* Only this rank's columns of the whole gradient; padding columns
         * get none. dout is free from here on and takes the activation's. */
        float *dl = scratch;
        int row0 = p->local[ROW0], width = out_of(p);
        int cols = width - row0 < local ? width - row0 : local;
        if (cols < 0) cols = 0;
        tm_layer_zero(c, dl, n);
        for (int r = 0; r < rows; r++)
            memcpy(dl + (size_t)r * local, d + (size_t)r * width + row0,
                   (size_t)cols * sizeof(float));
        tm_clock_charge(c->dev, 0, 8.0 * rows * cols);
        d = dl;
        post = saved;
        into = dout;
    }
    return has_act(p) ? activation_backward(p, c, d, into, post, pre, n) : d;
}

/* The input gradient from d into din, with dw and db when given (NULL:
 * left for backward_weight): the bias is whole on every rank of a row
 * split and gets the same gradient everywhere, the input gradient staying
 * split (no comm); a column split's input gradient is a partial sum over
 * its output features (Megatron's conjugate all-reduce). */
static int input_grad(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                      const float *d, float *din, float *dw, float *db)
{
    int rows = c->rows;
    const float *w = c->params + p->shard[0].off;
    int in = p->mode == MODE_ROW ? p->local[IN_LOCAL] : in_of(p);
    if (din != NULL) tm_layer_zero(c, din, (size_t)rows * in);
    tm_linear_backward(din, dw, db, d, x, w, rows, in, (int)n_out(p));
    if (din != NULL && p->mode != MODE_WHOLE && p->mode != MODE_ROW)
        return tm_allreduce(c->tp_comm, din, din, (size_t)rows * in_of(p), TM_SUM);
    return TM_OK;
}

static int linear_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                           const float *out, float *saved, float *dout, float *din,
                           float *scratch)
{
    float *d = output_grad(p, c, out, saved, dout, scratch);
    return input_grad(p, c, x, d, din, c->grads + p->shard[0].off, c->grads + p->shard[1].off);
}

/* W keeps the gradient of the local pre-activation outputs. */
static size_t linear_wsave(const tm_layer_plan *p, int rows) { return (size_t)rows * n_out(p); }

static int linear_backward_input(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                                 const float *out, float *saved, float *dout, float *din,
                                 float *scratch, float *wsave)
{
    float *d = output_grad(p, c, out, saved, dout, scratch);
    tm_layer_copy(c, wsave, d, linear_wsave(p, c->rows));
    return input_grad(p, c, x, d, din, NULL, NULL);
}

static int linear_backward_weight(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                                  const float *saved, const float *wsave)
{
    (void)saved;
    int in = p->mode == MODE_ROW ? p->local[IN_LOCAL] : in_of(p);
    tm_linear_backward(NULL, c->grads + p->shard[0].off, c->grads + p->shard[1].off, wsave, x,
                       NULL, c->rows, in, (int)n_out(p));
    return TM_OK;
}

/* Per micro-batch, in the forward: a row layer all-reduces its output, a
 * gathered layer all-gathers its shard (Megatron's g). */
static double linear_tp_forward_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows)
{
    if (p->mode == MODE_ROW) return tm_allreduce_send_bytes(tp_comm, (size_t)rows * out_of(p));
    if (p->mode == MODE_GATHER)
        return (double)(p->tp - 1) * rows * p->local[OUT_LOCAL] * sizeof(float);
    return 0;
}

/* Then in the backward a column-split layer that passes an input gradient
 * down all-reduces it (Megatron's f). */
static double linear_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din)
{
    double b = linear_tp_forward_bytes(p, tp_comm, rows);
    if (din && (p->mode == MODE_COLUMN || p->mode == MODE_GATHER))
        b += tm_allreduce_send_bytes(tp_comm, (size_t)rows * in_of(p));
    return b;
}

static const tm_layer_kind linear_kind = {
    .name = "linear",
    .plan = linear_plan,
    .flops = linear_flops,
    .saved_floats = linear_saved,
    .scratch_floats = linear_scratch,
    .fwd_scratch_floats = linear_fwd_scratch,
    .forward = linear_forward,
    .backward = linear_backward,
    .wsave_floats = linear_wsave,
    .backward_input = linear_backward_input,
    .backward_weight = linear_backward_weight,
    .tp_bytes = linear_tp_bytes,
    .tp_forward_bytes = linear_tp_forward_bytes,
};

/* ---- the model --------------------------------------------------------- */

static void mlp_init(const tm_model *m, float *params, uint64_t seed)
{
    tm_mlp_init(m->cfg, params, seed);
}

static int mlp_meta(const tm_model *m, tm_model_meta *out)
{
    const tm_mlp_config *cfg = m->cfg;
    snprintf(out[0].key, sizeof out[0].key, "model");
    tm_mlp_format(cfg, out[0].value, sizeof out[0].value);
    snprintf(out[1].key, sizeof out[1].key, "activation");
    snprintf(out[1].value, sizeof out[1].value, "%s", tm_activation_name(cfg->act));
    return 2;
}

int tm_mlp_model(tm_model *m, const tm_mlp_config *cfg)
{
    TM_CHECK(tm_model_begin(m, "mlp", 2 * cfg->n_layers));
    m->cfg = malloc(sizeof *cfg);
    if (m->cfg == NULL) {
        tm_model_destroy(m);
        return tm_error(TM_EHOSTMEM, "cannot allocate the model's configuration");
    }
    memcpy(m->cfg, cfg, sizeof *cfg);
    for (int l = 0; l < cfg->n_layers; l++) {
        char name[TM_NAME_LEN];
        int in = cfg->widths[l], out = cfg->widths[l + 1], t[2];
        snprintf(name, sizeof name, "layers.%d.weight", l);
        t[0] = tm_model_tensor(m, name, 2, out, in, 1, 1);
        snprintf(name, sizeof name, "layers.%d.bias", l);
        t[1] = tm_model_tensor(m, name, 1, out, 1, 1, 1);
        tm_layer *ly = tm_model_layer(m, &linear_kind, in, out, t, 2);
        ly->arg = l < cfg->n_layers - 1;
    }
    m->rows_per_sample = 1;
    m->in_width = cfg->widths[0];
    m->n_classes = cfg->widths[cfg->n_layers];
    m->init = mlp_init;
    m->meta = mlp_meta;
    int st = tm_model_finish(m);
    if (st != TM_OK) tm_model_destroy(m);
    return st;
}
