/* The GPT's tables and its three layer kinds, each a straight line of
 * kernels in the manner of llm.c's gpt2_forward / gpt2_backward.
 * Dimension letters: B sequences, T positions, C channels, NH heads,
 * V = 256 vocabulary rows; a micro-batch's rows are its B * T tokens. */
#include "strategies/gpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/ops.h"
#include "runtime/status.h"
#include "strategies/rng.h"
#include "strategies/safetensors.h"

#define LN_EPS 1e-5f

const char *tm_gpt_check(const tm_gpt_config *g)
{
    if (g->n_layer < 1 || g->n_layer > TM_GPT_MAX_LAYERS) return "--layers must be 1 to 64";
    if (g->n_head < 1 || g->n_head > TM_GPT_MAX_WIDTH) return "--heads must be 1 to 16384";
    if (g->n_embd < 1 || g->n_embd > TM_GPT_MAX_WIDTH) return "--d-model must be 1 to 16384";
    if (g->block_size < 1 || g->block_size > TM_GPT_MAX_WIDTH)
        return "--context must be 1 to 16384";
    if (g->n_embd % g->n_head != 0) return "--d-model must be a multiple of --heads";
    return NULL;
}

const tm_gpt_config *tm_gpt_of(const tm_model *m)
{
    return strcmp(m->family, "gpt") == 0 ? m->cfg : NULL;
}

static const tm_gpt_config *cfg_of(const tm_layer_plan *p) { return p->model->cfg; }

/* Every GPT layer is held whole; the tensor-parallel split of heads and
 * vocabulary is the next step. */
static int whole_plan(tm_layer_plan *p, const tm_layer_plan *prev, int last)
{
    (void)prev;
    (void)last;
    if (p->tp > 1)
        return tm_error(TM_EINVAL, "the GPT does not run tensor parallel yet (--tp %d)", p->tp);
    for (int k = 0; k < p->layer->n_tensors; k++) p->shard[k].dim = TM_SHARD_WHOLE;
    p->in_w = p->layer->in_width;
    p->out_w = p->layer->out_width;
    p->grad_w = p->in_w > p->out_w ? p->in_w : p->out_w;
    return TM_OK;
}

static double no_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din)
{
    (void)p;
    (void)tp_comm;
    (void)rows;
    (void)din;
    return 0;
}

static float *param(const tm_layer_plan *p, const tm_layer_ctx *c, int k)
{
    return c->params + p->shard[k].off;
}

static float *grad(const tm_layer_plan *p, const tm_layer_ctx *c, int k)
{
    return c->grads + p->shard[k].off;
}

/* ---- the embedding: tokens (int32 rows) -> (rows, C) ------------------- */

enum { E_WTE, E_WPE };

static double embed_flops(const tm_layer *l, int rows) { return (double)rows * l->out_width; }

static size_t no_floats(const tm_layer_plan *p, int rows)
{
    (void)p;
    (void)rows;
    return 0;
}

static int embed_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                         float *out, float *saved)
{
    (void)saved;
    const tm_gpt_config *g = cfg_of(p);
    tm_embedding_forward(out, (const int *)in, param(p, c, E_WTE), param(p, c, E_WPE), c->rows,
                         g->block_size, g->n_embd, 0, TM_GPT_VOCAB);
    return TM_OK;
}

static int embed_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                          const float *out, float *saved, float *dout, float *din, float *scratch)
{
    (void)out;
    (void)saved;
    (void)din;
    (void)scratch;
    const tm_gpt_config *g = cfg_of(p);
    tm_embedding_backward(grad(p, c, E_WTE), grad(p, c, E_WPE), dout, (const int *)in, c->rows,
                          g->block_size, g->n_embd, 0, TM_GPT_VOCAB);
    return TM_OK;
}

static const tm_layer_kind embed_kind = {
    .name = "embedding",
    .plan = whole_plan,
    .flops = embed_flops,
    .saved_floats = no_floats,
    .scratch_floats = no_floats,
    .forward = embed_forward,
    .backward = embed_backward,
    .tp_bytes = no_tp_bytes,
};

/* ---- a block: (rows, C) -> (rows, C) ------------------------------------ */

enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCP_W, FCP_B };

/* What a block's forward keeps for its backward, in one saved region. */
typedef struct {
    float *ln1, *mean1, *rstd1; /* (rows, C), (rows), (rows) */
    float *qkv;                 /* (rows, 3C) */
    float *att;                 /* (B, NH, T, T) softmax weights */
    float *atty;                /* (rows, C) attention output */
    float *res2;                /* (rows, C) residual after attention */
    float *ln2, *mean2, *rstd2;
    float *fch;                 /* (rows, 4C) before GELU */
    float *fch_gelu;            /* (rows, 4C) after */
} block_acts;

static size_t block_layout(const tm_gpt_config *g, int rows, float *base, block_acts *a)
{
    size_t r = (size_t)rows, C = (size_t)g->n_embd, T = (size_t)g->block_size;
    size_t sizes[] = {r * C, r, r, r * 3 * C, r / T * g->n_head * T * T, r * C, r * C,
                      r * C, r, r, r * 4 * C, r * 4 * C};
    float **slots[] = {&a->ln1, &a->mean1, &a->rstd1, &a->qkv, &a->att, &a->atty, &a->res2,
                       &a->ln2, &a->mean2, &a->rstd2, &a->fch, &a->fch_gelu};
    size_t off = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (base != NULL) *slots[i] = base + off;
        off += sizes[i];
    }
    return off;
}

/* The four projections, and attention's two products counted over the
 * whole T x T score matrix (the convention of nanoGPT's MFU estimate; the
 * kernels skip the masked half). A block's layer->arg is T. */
static double block_flops(const tm_layer *l, int rows)
{
    double C = l->out_width, T = l->arg;
    return (double)rows * (24.0 * C * C + 4.0 * T * C);
}

static size_t block_saved(const tm_layer_plan *p, int rows)
{
    block_acts a;
    return block_layout(cfg_of(p), rows, NULL, &a);
}

/* A linear layer's backward that writes its input gradient (beta 0)
 * instead of adding to it, so that the buffer needs no clearing first. */
static void linear_backward_into(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, int B, int IN, int OUT)
{
    tm_sgemm('N', 'N', B, IN, OUT, 1.0f, dout, OUT, weight, IN, 0.0f, dinp, IN);
    tm_linear_backward(NULL, dweight, dbias, dout, inp, weight, B, IN, OUT);
}

/* Two (rows, 4C) gradient buffers and one head's score gradients. */
static size_t block_scratch(const tm_layer_plan *p, int rows)
{
    const tm_gpt_config *g = cfg_of(p);
    return 8 * (size_t)rows * g->n_embd + (size_t)g->block_size * g->block_size;
}

static int block_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                         float *out, float *saved)
{
    const tm_gpt_config *g = cfg_of(p);
    int rows = c->rows, C = g->n_embd, T = g->block_size, B = rows / T;
    block_acts a;
    block_layout(g, rows, saved, &a);
    tm_layernorm_forward(a.ln1, a.mean1, a.rstd1, x, param(p, c, LN1_W), param(p, c, LN1_B),
                         rows, C, LN_EPS);
    tm_linear_forward(a.qkv, a.ln1, param(p, c, ATTN_W), param(p, c, ATTN_B), rows, C, 3 * C);
    tm_attention_forward(a.atty, a.att, a.qkv, B, T, C, g->n_head);
    tm_linear_forward(a.res2, a.atty, param(p, c, PROJ_W), NULL, rows, C, C);
    tm_bias_residual_forward(a.res2, x, param(p, c, PROJ_B), rows, C);
    tm_layernorm_forward(a.ln2, a.mean2, a.rstd2, a.res2, param(p, c, LN2_W),
                         param(p, c, LN2_B), rows, C, LN_EPS);
    tm_linear_forward(a.fch, a.ln2, param(p, c, FC_W), NULL, rows, C, 4 * C);
    tm_bias_gelu_forward(a.fch_gelu, a.fch, param(p, c, FC_B), rows, 4 * C);
    tm_linear_forward(out, a.fch_gelu, param(p, c, FCP_W), NULL, rows, 4 * C, C);
    tm_bias_residual_forward(out, a.res2, param(p, c, FCP_B), rows, C);
    return TM_OK;
}

static int block_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                          const float *out, float *saved, float *dout, float *din,
                          float *scratch)
{
    (void)out;
    const tm_gpt_config *g = cfg_of(p);
    int rows = c->rows, C = g->n_embd, T = g->block_size, B = rows / T;
    size_t n = (size_t)rows * C, n4 = 4 * n;
    if (din == NULL)
        return tm_error(TM_EINVAL, "a GPT block needs its input gradient (layer %d)",
                        p->layer->index);
    block_acts a;
    block_layout(g, rows, saved, &a);
    float *s1 = scratch, *s2 = scratch + n4, *dscores = scratch + 2 * n4;
    /* The MLP: dout reaches mlp.c_proj, GELU, c_fc, then ln_2. */
    linear_backward_into(s1, grad(p, c, FCP_W), grad(p, c, FCP_B), dout, a.fch_gelu,
                         param(p, c, FCP_W), rows, 4 * C, C);
    tm_gelu_backward_inplace(s1, a.fch, n4);
    linear_backward_into(s2, grad(p, c, FC_W), grad(p, c, FC_B), s1, a.ln2, param(p, c, FC_W),
                         rows, C, 4 * C);
    /* The residual stream after attention: dout directly, plus ln_2's. */
    tm_layer_copy(c, din, dout, n);
    tm_layernorm_backward(din, grad(p, c, LN2_W), grad(p, c, LN2_B), s2, a.res2,
                          param(p, c, LN2_W), a.mean2, a.rstd2, rows, C);
    /* Attention: attn.c_proj, the heads, c_attn, then ln_1. */
    linear_backward_into(s1, grad(p, c, PROJ_W), grad(p, c, PROJ_B), din, a.atty,
                         param(p, c, PROJ_W), rows, C, C);
    tm_attention_backward(s2, dscores, s1, a.qkv, a.att, B, T, C, g->n_head);
    linear_backward_into(s1, grad(p, c, ATTN_W), grad(p, c, ATTN_B), s2, a.ln1,
                         param(p, c, ATTN_W), rows, C, 3 * C);
    /* The keys' bias adds the same q.b to every score of a row, which the
     * softmax does not see: its gradient is exactly zero. The sum above
     * leaves rounding noise of about 1e-12 there, which AdamW (eps 1e-8)
     * would turn into updates of 1e-4 lr; the exact zero keeps the bias
     * where the mathematics leaves it. */
    memset(grad(p, c, ATTN_B) + C, 0, (size_t)C * sizeof(float));
    tm_layernorm_backward(din, grad(p, c, LN1_W), grad(p, c, LN1_B), s1, x, param(p, c, LN1_W),
                          a.mean1, a.rstd1, rows, C);
    return TM_OK;
}

static const tm_layer_kind block_kind = {
    .name = "block",
    .plan = whole_plan,
    .flops = block_flops,
    .saved_floats = block_saved,
    .scratch_floats = block_scratch,
    .forward = block_forward,
    .backward = block_backward,
    .tp_bytes = no_tp_bytes,
};

/* ---- the head: ln_f, then logits against the tied wte ----------------- */

enum { LNF_W, LNF_B, H_WTE };

static double head_flops(const tm_layer *l, int rows)
{
    return 2.0 * rows * l->in_width * l->out_width;
}

/* ln_f's output, mean and rstd. */
static size_t head_saved(const tm_layer_plan *p, int rows)
{
    return (size_t)rows * (cfg_of(p)->n_embd + 2);
}

/* ln_f's output gradient, and its input gradient when the caller wants
 * none (ln_f's parameters still need the LayerNorm backward). */
static size_t head_scratch(const tm_layer_plan *p, int rows)
{
    return 2 * (size_t)rows * cfg_of(p)->n_embd;
}

static int head_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                        float *out, float *saved)
{
    int rows = c->rows, C = cfg_of(p)->n_embd;
    float *lnf = saved, *mean = lnf + (size_t)rows * C, *rstd = mean + rows;
    tm_layernorm_forward(lnf, mean, rstd, x, param(p, c, LNF_W), param(p, c, LNF_B), rows, C,
                         LN_EPS);
    tm_linear_forward(out, lnf, param(p, c, H_WTE), NULL, rows, C, TM_GPT_VOCAB);
    return TM_OK;
}

static int head_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                         const float *out, float *saved, float *dout, float *din,
                         float *scratch)
{
    (void)out;
    int rows = c->rows, C = cfg_of(p)->n_embd;
    size_t n = (size_t)rows * C;
    float *lnf = saved, *mean = lnf + n, *rstd = mean + rows, *dlnf = scratch;
    float *dx = din != NULL ? din : scratch + n;
    linear_backward_into(dlnf, grad(p, c, H_WTE), NULL, dout, lnf, param(p, c, H_WTE), rows, C,
                         TM_GPT_VOCAB);
    tm_layer_zero(c, dx, n);
    tm_layernorm_backward(dx, grad(p, c, LNF_W), grad(p, c, LNF_B), dlnf, x, param(p, c, LNF_W),
                          mean, rstd, rows, C);
    return TM_OK;
}

static const tm_layer_kind head_kind = {
    .name = "head",
    .plan = whole_plan,
    .flops = head_flops,
    .saved_floats = head_saved,
    .scratch_floats = head_scratch,
    .forward = head_forward,
    .backward = head_backward,
    .tp_bytes = no_tp_bytes,
};

/* ---- the model ---------------------------------------------------------- */

/* One N(0, std) draw from two uniforms (Box-Muller), computed in double. */
static float normal(tm_rng *r, double std)
{
    double u1 = ((double)tm_rng_u32(r) + 1.0) * 0x1p-32, u2 = (double)tm_rng_u32(r) * 0x1p-32;
    return (float)(std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void tm_gpt_init(const tm_model *m, float *params, uint64_t seed)
{
    const tm_gpt_config *g = m->cfg;
    double std = 0.02, proj_std = 0.02 / sqrt(2.0 * g->n_layer);
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        float *w = params + t->off;
        size_t n = (size_t)t->shape[0] * t->shape[1];
        int is_ln = strstr(t->name, ".ln_") != NULL;
        if (ends_with(t->name, ".bias")) {
            memset(w, 0, n * sizeof(float));
        } else if (is_ln) {
            for (size_t j = 0; j < n; j++) w[j] = 1.0f;
        } else {
            tm_rng r = tm_rng_seed(seed, (uint64_t)i);
            double s = ends_with(t->name, ".c_proj.weight") ? proj_std : std;
            for (size_t j = 0; j < n; j++) w[j] = normal(&r, s);
        }
    }
}

static void gpt_init(const tm_model *m, float *params, uint64_t seed)
{
    tm_gpt_init(m, params, seed);
}

static int gpt_meta(const tm_model *m, tm_model_meta *out)
{
    const tm_gpt_config *g = m->cfg;
    const char *keys[] = {"model", "layers", "heads", "d_model", "context", "vocab"};
    int vals[] = {0, g->n_layer, g->n_head, g->n_embd, g->block_size, TM_GPT_VOCAB};
    for (int i = 0; i < 6; i++) {
        snprintf(out[i].key, sizeof out[i].key, "%s", keys[i]);
        if (i == 0) snprintf(out[i].value, sizeof out[i].value, "gpt");
        else snprintf(out[i].value, sizeof out[i].value, "%d", vals[i]);
    }
    return 6;
}

/* nanoGPT's state_dict has the tied head under its own name too, and the
 * causal masks of its attention modules as buffers. */
static int gpt_ignores(const char *name)
{
    return strcmp(name, "lm_head.weight") == 0 || ends_with(name, ".attn.bias") ||
           ends_with(name, ".attn.masked_bias");
}

int tm_gpt_model(tm_model *m, const tm_gpt_config *g)
{
    const char *why = tm_gpt_check(g);
    if (why != NULL) return tm_error(TM_EINVAL, "%s", why);
    int L = g->n_layer, C = g->n_embd, T = g->block_size, V = TM_GPT_VOCAB;
    TM_CHECK(tm_model_begin(m, "gpt", 4 + 12 * L));
    m->cfg = malloc(sizeof *g);
    if (m->cfg == NULL) {
        tm_model_destroy(m);
        return tm_error(TM_EHOSTMEM, "cannot allocate the model's configuration");
    }
    memcpy(m->cfg, g, sizeof *g);
    int e[2];
    e[0] = tm_model_tensor(m, "transformer.wte.weight", 2, V, C, 1, 1);
    e[1] = tm_model_tensor(m, "transformer.wpe.weight", 2, T, C, 1, 1);
    tm_model_layer(m, &embed_kind, 1, C, e, 2)->attach = TM_ATTACH_NEXT;
    for (int l = 0; l < L; l++) {
        /* name, rows, cols (0: 1-D), q/k/v groups, decay */
        struct { const char *name; int rows, cols, groups, decay; } spec[] = {
            {"ln_1.weight", C, 0, 1, 0},         {"ln_1.bias", C, 0, 1, 0},
            {"attn.c_attn.weight", 3 * C, C, 3, 1}, {"attn.c_attn.bias", 3 * C, 0, 3, 0},
            {"attn.c_proj.weight", C, C, 1, 1},  {"attn.c_proj.bias", C, 0, 1, 0},
            {"ln_2.weight", C, 0, 1, 0},         {"ln_2.bias", C, 0, 1, 0},
            {"mlp.c_fc.weight", 4 * C, C, 1, 1}, {"mlp.c_fc.bias", 4 * C, 0, 1, 0},
            {"mlp.c_proj.weight", C, 4 * C, 1, 1}, {"mlp.c_proj.bias", C, 0, 1, 0},
        };
        int t[12];
        for (int k = 0; k < 12; k++) {
            char name[TM_NAME_LEN];
            snprintf(name, sizeof name, "transformer.h.%d.%s", l, spec[k].name);
            t[k] = tm_model_tensor(m, name, spec[k].cols ? 2 : 1, spec[k].rows, spec[k].cols,
                                   spec[k].groups, spec[k].decay);
        }
        tm_model_layer(m, &block_kind, C, C, t, 12)->arg = T;
    }
    int h[3];
    h[0] = tm_model_tensor(m, "transformer.ln_f.weight", 1, C, 0, 1, 0);
    h[1] = tm_model_tensor(m, "transformer.ln_f.bias", 1, C, 0, 1, 0);
    h[2] = e[0];
    tm_model_layer(m, &head_kind, C, V, h, 3)->attach = TM_ATTACH_PREV;
    m->rows_per_sample = T;
    m->in_width = 1;
    m->tokens = 1;
    m->n_classes = V;
    m->init = gpt_init;
    m->meta = gpt_meta;
    m->ignores = gpt_ignores;
    int st = tm_model_finish(m);
    if (st != TM_OK) tm_model_destroy(m);
    return st;
}

/* A positive count from our metadata, or -1 when absent or malformed. */
static int meta_int(const tm_st_file *f, const char *key)
{
    const char *v = tm_st_meta_get(f, key);
    char *end;
    if (v == NULL) return -1;
    long x = strtol(v, &end, 10);
    return *v != '\0' && *end == '\0' && x > 0 && x <= TM_GPT_MAX_WIDTH ? (int)x : -1;
}

static int shape_of(const tm_st_file *f, const char *path, const char *name, int dim)
{
    const tm_st_info *t = tm_st_find(f, name);
    if (t == NULL || t->ndim != 2)
        return tm_error(TM_EINVAL, "%s: no 2-D tensor %s: not a GPT checkpoint", path, name);
    return (int)t->shape[dim];
}

int tm_gpt_config_from_file(const char *path, int heads, tm_gpt_config *out)
{
    tm_st_file *f;
    TM_CHECK(tm_safetensors_open(&f, path));
    int st = TM_OK;
    tm_gpt_config g = {0};
    const char *model = tm_st_meta_get(f, "model");
    if (model != NULL && strcmp(model, "gpt") != 0) {
        st = tm_error(TM_EINVAL, "%s: holds a model %s, not a GPT", path, model);
    } else if (model != NULL) {
        g = (tm_gpt_config){meta_int(f, "layers"), meta_int(f, "heads"), meta_int(f, "d_model"),
                            meta_int(f, "context")};
        if (g.n_layer < 0 || g.n_head < 0 || g.n_embd < 0 || g.block_size < 0)
            st = tm_error(TM_EFORMAT, "%s: __metadata__ lacks a valid layers, heads, d_model or "
                          "context", path);
        else if (heads > 0 && heads != g.n_head)
            st = tm_error(TM_EINVAL, "%s: saved with heads %d, but --heads is %d", path, g.n_head,
                          heads);
    } else {
        int vocab = shape_of(f, path, "transformer.wte.weight", 0);
        g.n_embd = vocab > 0 ? shape_of(f, path, "transformer.wte.weight", 1) : vocab;
        g.block_size = g.n_embd > 0 ? shape_of(f, path, "transformer.wpe.weight", 0) : g.n_embd;
        if (g.block_size < 0) {
            st = g.block_size;
        } else if (vocab != TM_GPT_VOCAB) {
            st = tm_error(TM_EINVAL, "%s: transformer.wte.weight has %d rows; a byte-level GPT "
                          "has 256", path, vocab);
        } else if (heads <= 0) {
            st = tm_error(TM_EINVAL, "%s: has no tinymesh metadata, and shapes do not tell the "
                          "head count: give --heads", path);
        } else {
            for (;;) {
                char name[TM_NAME_LEN];
                snprintf(name, sizeof name, "transformer.h.%d.ln_1.weight", g.n_layer);
                if (g.n_layer > TM_GPT_MAX_LAYERS || tm_st_find(f, name) == NULL) break;
                g.n_layer++;
            }
            g.n_head = heads;
        }
    }
    tm_safetensors_close(f);
    if (st != TM_OK) return st;
    const char *why = tm_gpt_check(&g);
    if (why != NULL) return tm_error(TM_EINVAL, "%s: %s", path, why);
    *out = g;
    return TM_OK;
}
