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
#include "runtime/collectives.h"
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

/* ---- splitting the GPT over a tensor-parallel group (Megatron-LM) -------
 * Rank t of tp holds heads [t H/tp, (t+1) H/tp) of every block — their
 * rows of c_attn (q, k and v alike), their columns of attn.c_proj — and a
 * tp-th of the MLP's hidden features: c_fc's rows, mlp.c_proj's columns.
 * A block's input is whole on every rank; each projection back to C
 * channels leaves partial sums that one all-reduce completes
 * (Megatron's g; its conjugate f all-reduces the input gradient in the
 * backward). The vocabulary is split too: wte's rows, so the embedding
 * looks up the rank's bytes (others give zeros) and sums over the group,
 * and the tied head computes the rank's logits only; the vocabulary-
 * parallel loss below never gathers them. 256 rows are padded to a
 * multiple of tp with zero rows that never reach the loss.
 * Sequence parallelism (Korthikanti et al.): between the tensor-parallel
 * regions — LayerNorms, residual adds — each rank holds rows/tp of the
 * micro-batch's rows, expressed by widths: C/tp floats per row of the
 * whole micro-batch is (rows/tp, C). Each all-reduce becomes a
 * reduce-scatter into the rank's rows, and an all-gather of the LayerNorm's
 * output opens the next region; LayerNorm parameters then see only the
 * rank's rows, so their gradients are partial (summed over the group each
 * step). The bytes sent are those of the all-reduces. */

/* p->local of every GPT layer. */
enum { L_C, L_H, L_V, L_SP }; /* C/tp, H/tp, vocabulary rows per rank, SP on */

static int sp_of(const tm_layer_plan *p) { return p->local[L_SP]; }

/* Selective recomputation: a block keeps no attention weights. */
static int drops_core(const tm_layer_plan *p)
{
    return p->model->recompute == TM_RECOMPUTE_SELECTIVE;
}

/* Rows of a micro-batch this rank holds outside the tensor-parallel
 * regions: all of them, or its 1/tp under sequence parallelism. */
static int seq_rows(const tm_layer_plan *p, int rows) { return sp_of(p) ? rows / p->tp : rows; }

/* What every GPT layer's plan shares: local sizes, the widths between
 * layers, sequence parallelism's conditions. */
static int plan_common(tm_layer_plan *p)
{
    const tm_gpt_config *g = cfg_of(p);
    /* One rank has no sequence to split: the same run without it (the
     * command line refuses --sequence-parallel without --tp 2 or more). */
    int tp = p->tp, sp = g->sequence_parallel && tp > 1;
    if (sp && g->block_size % tp != 0)
        return tm_error(TM_EINVAL,
                        "--context %d is not divisible by --tp %d (sequence parallelism splits "
                        "every sequence's positions)", g->block_size, tp);
    /* Then C = H hs divides too. */
    if (g->n_head % tp != 0)
        return tm_error(TM_EINVAL, "--heads %d is not divisible by --tp %d (tensor parallelism "
                        "splits attention by heads)", g->n_head, tp);
    p->local[L_C] = g->n_embd / tp;
    p->local[L_H] = g->n_head / tp;
    p->local[L_V] = (TM_GPT_VOCAB + tp - 1) / tp;
    p->local[L_SP] = sp;
    p->in_w = p->out_w = p->grad_w = sp ? p->local[L_C] : g->n_embd;
    return TM_OK;
}

/* Rows [lo, lo + len) of a tensor (of each q/k/v block for c_attn); a
 * no-op on one device, where everything is whole. */
static void split(tm_layer_plan *p, int k, tm_shard_dim dim, int lo, int len)
{
    if (p->tp > 1) p->shard[k] = (tm_shard){.dim = dim, .lo = lo, .len = len};
}

/* A LayerNorm's parameter under sequence parallelism. */
static void seq_partial(tm_layer_plan *p, int k) { p->shard[k].partial = sp_of(p); }

static float *param(const tm_layer_plan *p, const tm_layer_ctx *c, int k)
{
    return c->params + p->shard[k].off;
}

static float *grad(const tm_layer_plan *p, const tm_layer_ctx *c, int k)
{
    return c->grads + p->shard[k].off;
}

/* Megatron's g: the ranks' partial sums (rows, C) in `partial` become the
 * whole — all-reduced in place (out == partial), or reduce-scattered into
 * this rank's rows (out: its rows/tp) under sequence parallelism. */
static int reduce_partial(const tm_layer_plan *p, const tm_layer_ctx *c, float *partial,
                          float *out)
{
    size_t n = (size_t)c->rows * cfg_of(p)->n_embd;
    if (!sp_of(p)) return tm_allreduce(c->tp_comm, partial, partial, n, TM_SUM);
    return tm_reduce_scatter(c->tp_comm, partial, out, n / (size_t)p->tp, TM_SUM);
}

/* The offset of this rank's rows in a (rows, C) buffer. */
static size_t own_rows(const tm_layer_plan *p, const tm_layer_ctx *c)
{
    return sp_of(p) ? (size_t)p->t * seq_rows(p, c->rows) * cfg_of(p)->n_embd : 0;
}

/* Under sequence parallelism: the ranks' rows (rows/tp, C each) gathered
 * into full (rows, C); local may already sit at its place in full. */
static int gather_rows(const tm_layer_plan *p, const tm_layer_ctx *c, const float *local,
                       float *full)
{
    return tm_allgather(c->tp_comm, local, full,
                        (size_t)seq_rows(p, c->rows) * cfg_of(p)->n_embd);
}

/* Bytes a member sends in a reduce (all-reduce or reduce-scatter) and in
 * an all-gather of (rows, C), as above. */
static double reduce_bytes(const tm_layer_plan *p, tm_comm *comm, int rows)
{
    size_t n = (size_t)rows * cfg_of(p)->n_embd;
    if (!sp_of(p)) return tm_allreduce_send_bytes(comm, n);
    return (double)(p->tp - 1) * (double)(n / (size_t)p->tp) * sizeof(float);
}

static double gather_bytes(const tm_layer_plan *p, int rows)
{
    return sp_of(p) ? reduce_bytes(p, NULL, rows) : 0;
}

/* Scratch of (rows, C) for partial sums before a reduce-scatter. */
static size_t sp_floats(const tm_layer_plan *p, int rows)
{
    return sp_of(p) ? (size_t)rows * cfg_of(p)->n_embd : 0;
}

/* A transient (rows, C) buffer of the device's arena, under sequence
 * parallelism only (NULL and TM_OK otherwise). */
static int sp_alloc(const tm_layer_plan *p, const tm_layer_ctx *c, float **out)
{
    *out = NULL;
    if (!sp_of(p)) return TM_OK;
    *out = tm_device_alloc(c->dev, sp_floats(p, c->rows) * sizeof(float), TM_TAG_ACTIVATION);
    return *out != NULL ? TM_OK : TM_ENOMEM;
}

static size_t no_floats(const tm_layer_plan *p, int rows)
{
    (void)p;
    (void)rows;
    return 0;
}

/* ---- the embedding: tokens (int32 rows) -> (rows, C) ------------------- */

enum { E_WTE, E_WPE };

static int embed_plan(tm_layer_plan *p, const tm_layer_plan *prev, int last)
{
    (void)prev;
    (void)last;
    TM_CHECK(plan_common(p));
    split(p, E_WTE, TM_SHARD_ROWS, p->t * p->local[L_V], p->local[L_V]);
    p->in_w = 1;
    return TM_OK;
}

static double embed_flops(const tm_layer *l, int rows) { return (double)rows * l->out_width; }

/* Rank 0 adds the positions; another rank's rows hold only its bytes. */
static int embed_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                         float *out, float *saved)
{
    (void)saved;
    const tm_gpt_config *g = cfg_of(p);
    float *tmp;
    TM_CHECK(sp_alloc(p, c, &tmp));
    float *sum = tmp != NULL ? tmp : out;
    int vl = p->local[L_V];
    tm_embedding_forward(sum, (const int *)in, param(p, c, E_WTE),
                         p->t == 0 ? param(p, c, E_WPE) : NULL, c->rows, g->block_size, g->n_embd,
                         p->t * vl, vl);
    int st = reduce_partial(p, c, sum, out);
    tm_device_free(c->dev, tmp);
    return st;
}

/* Every rank adds the whole wpe gradient (the same on each) and its own
 * bytes' rows of wte's, from the whole output gradient. */
static int embed_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *in,
                          const float *out, float *saved, float *dout, float *din, float *scratch)
{
    (void)out;
    (void)saved;
    (void)din;
    const tm_gpt_config *g = cfg_of(p);
    const float *d = dout;
    if (sp_of(p)) {
        TM_CHECK(gather_rows(p, c, dout, scratch));
        d = scratch;
    }
    int vl = p->local[L_V];
    tm_embedding_backward(grad(p, c, E_WTE), grad(p, c, E_WPE), d, (const int *)in, c->rows,
                          g->block_size, g->n_embd, p->t * vl, vl);
    return TM_OK;
}

static double embed_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din)
{
    (void)din;
    return reduce_bytes(p, tp_comm, rows) + gather_bytes(p, rows);
}

static double embed_tp_forward_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows)
{
    return reduce_bytes(p, tp_comm, rows);
}

static const tm_layer_kind embed_kind = {
    .name = "embedding",
    .plan = embed_plan,
    .flops = embed_flops,
    .saved_floats = no_floats,
    .scratch_floats = sp_floats,
    .fwd_scratch_floats = sp_floats,
    .forward = embed_forward,
    .backward = embed_backward,
    .tp_bytes = embed_tp_bytes,
    .tp_forward_bytes = embed_tp_forward_bytes,
};

/* ---- a block: (rows, C) -> (rows, C) ------------------------------------ */

enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCP_W, FCP_B };

static int block_plan(tm_layer_plan *p, const tm_layer_plan *prev, int last)
{
    (void)prev;
    (void)last;
    TM_CHECK(plan_common(p));
    int cl = p->local[L_C], t = p->t;
    split(p, ATTN_W, TM_SHARD_ROWS, t * cl, cl);
    split(p, ATTN_B, TM_SHARD_ROWS, t * cl, cl);
    split(p, PROJ_W, TM_SHARD_COLS, t * cl, cl);
    split(p, FC_W, TM_SHARD_ROWS, t * 4 * cl, 4 * cl);
    split(p, FC_B, TM_SHARD_ROWS, t * 4 * cl, 4 * cl);
    split(p, FCP_W, TM_SHARD_COLS, t * 4 * cl, 4 * cl);
    seq_partial(p, LN1_W);
    seq_partial(p, LN1_B);
    seq_partial(p, LN2_W);
    seq_partial(p, LN2_B);
    return TM_OK;
}

/* What a block's forward keeps for its backward, in one saved region, on
 * tensor-parallel rank t: r rows of the micro-batch, r' = r/tp of them
 * under sequence parallelism (else r), C' = C/tp, NH' = NH/tp. */
typedef struct {
    float *ln1, *mean1, *rstd1; /* (r, C): whole, gathered under SP; (r'), (r') */
    float *qkv;                 /* (r, 3C'): the rank's heads' q, k, v */
    float *att;                 /* (B, NH', T, T) softmax weights; none
                                   under selective recomputation */
    float *atty;                /* (r, C') attention output */
    float *res2;                /* (r', C) residual after attention */
    float *ln2, *mean2, *rstd2; /* as ln1 */
    float *fch;                 /* (r, 4C') before GELU */
    float *fch_gelu;            /* (r, 4C') after */
} block_acts;

static size_t block_layout(const tm_layer_plan *p, int rows, float *base, block_acts *a)
{
    const tm_gpt_config *g = cfg_of(p);
    size_t r = (size_t)rows, rl = (size_t)seq_rows(p, rows), C = (size_t)g->n_embd,
           cl = (size_t)p->local[L_C], T = (size_t)g->block_size;
    size_t att = drops_core(p) ? 0 : r / T * p->local[L_H] * T * T;
    size_t sizes[] = {r * C,  rl,     rl, r * 3 * cl, att,        r * cl,
                      rl * C, r * C,  rl, rl,         r * 4 * cl, r * 4 * cl};
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
    return block_layout(p, rows, NULL, &a);
}

/* A linear layer's backward that writes its input gradient (beta 0)
 * instead of adding to it, so that the buffer needs no clearing first.
 * With keep (a zero-bubble schedule's B), the weight gradients wait for
 * W: keep gets a copy of dout, from which W adds them with the same
 * kernel (linear_weight_grads). */
static void linear_backward_into(const tm_layer_ctx *c, float *dinp, float *dweight, float *dbias,
                                 const float *dout, const float *inp, const float *weight, int B,
                                 int IN, int OUT, float *keep)
{
    tm_ops_gemm('N', 'N', B, IN, OUT, 1.0f, dout, OUT, weight, IN, 0.0f, dinp, IN);
    if (keep != NULL) tm_layer_copy(c, keep, dout, (size_t)B * OUT);
    else tm_linear_backward(NULL, dweight, dbias, dout, inp, weight, B, IN, OUT);
}

/* The backward's scratch: s1 (r, max(4C', C)), s2 (r, max(3C', C)), under
 * sequence parallelism a gathered (r, C) gradient, and one head's score
 * gradients (T, T), followed under selective recomputation by its
 * recomputed weights (T, T). */
typedef struct {
    float *s1, *s2, *full, *dscores;
} block_scratch_bufs;

static size_t block_scratch_layout(const tm_layer_plan *p, int rows, float *base,
                                   block_scratch_bufs *b)
{
    const tm_gpt_config *g = cfg_of(p);
    size_t r = (size_t)rows, C = (size_t)g->n_embd, cl = (size_t)p->local[L_C],
           T = (size_t)g->block_size;
    size_t sizes[] = {r * (4 * cl > C ? 4 * cl : C), r * (3 * cl > C ? 3 * cl : C),
                      sp_floats(p, rows), (drops_core(p) ? 2 : 1) * T * T};
    float **slots[] = {&b->s1, &b->s2, &b->full, &b->dscores};
    size_t off = 0;
    for (size_t i = 0; i < 4; i++) {
        if (base != NULL) *slots[i] = base + off;
        off += sizes[i];
    }
    return off;
}

static size_t block_scratch(const tm_layer_plan *p, int rows)
{
    block_scratch_bufs b;
    return block_scratch_layout(p, rows, NULL, &b);
}

/* The forward's transient block: the partial sums before a reduce-
 * scatter (SP), then one head's weights (T, T) when they are not kept. */
static size_t block_fwd_scratch(const tm_layer_plan *p, int rows)
{
    size_t T = (size_t)cfg_of(p)->block_size;
    return sp_floats(p, rows) + (drops_core(p) ? T * T : 0);
}

static int block_forward_in(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                            float *out, float *saved, float *tmp, float *weights)
{
    const tm_gpt_config *g = cfg_of(p);
    int rows = c->rows, rl = seq_rows(p, rows), C = g->n_embd, T = g->block_size, B = rows / T;
    int cl = p->local[L_C];
    size_t own = own_rows(p, c);
    block_acts a;
    block_layout(p, rows, saved, &a);
    /* ln_1 over the rank's rows, gathered under SP (f's forward). */
    tm_layernorm_forward(a.ln1 + own, a.mean1, a.rstd1, x, param(p, c, LN1_W),
                         param(p, c, LN1_B), rl, C, LN_EPS);
    if (sp_of(p)) TM_CHECK(gather_rows(p, c, a.ln1 + own, a.ln1));
    /* The rank's heads, then their share of attn.c_proj's sum (g). */
    tm_linear_forward(a.qkv, a.ln1, param(p, c, ATTN_W), param(p, c, ATTN_B), rows, C, 3 * cl);
    if (weights != NULL)
        tm_attention_forward_drop(a.atty, weights, a.qkv, B, T, cl, p->local[L_H]);
    else
        tm_attention_forward(a.atty, a.att, a.qkv, B, T, cl, p->local[L_H]);
    float *sum = tmp != NULL ? tmp : a.res2;
    tm_linear_forward(sum, a.atty, param(p, c, PROJ_W), NULL, rows, cl, C);
    TM_CHECK(reduce_partial(p, c, sum, a.res2));
    tm_bias_residual_forward(a.res2, x, param(p, c, PROJ_B), rl, C);
    /* The MLP the same way: ln_2, c_fc's share and GELU, mlp.c_proj's. */
    tm_layernorm_forward(a.ln2 + own, a.mean2, a.rstd2, a.res2, param(p, c, LN2_W),
                         param(p, c, LN2_B), rl, C, LN_EPS);
    if (sp_of(p)) TM_CHECK(gather_rows(p, c, a.ln2 + own, a.ln2));
    tm_linear_forward(a.fch, a.ln2, param(p, c, FC_W), NULL, rows, C, 4 * cl);
    tm_bias_gelu_forward(a.fch_gelu, a.fch, param(p, c, FC_B), rows, 4 * cl);
    sum = tmp != NULL ? tmp : out;
    tm_linear_forward(sum, a.fch_gelu, param(p, c, FCP_W), NULL, rows, 4 * cl, C);
    TM_CHECK(reduce_partial(p, c, sum, out));
    tm_bias_residual_forward(out, a.res2, param(p, c, FCP_B), rl, C);
    return TM_OK;
}

static int block_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                         float *out, float *saved)
{
    size_t n = block_fwd_scratch(p, c->rows);
    float *block = NULL;
    if (n > 0 && (block = tm_device_alloc(c->dev, n * sizeof(float), TM_TAG_ACTIVATION)) == NULL)
        return TM_ENOMEM;
    float *tmp = sp_of(p) ? block : NULL;
    float *weights = drops_core(p) ? block + sp_floats(p, c->rows) : NULL;
    int st = block_forward_in(p, c, x, out, saved, tmp, weights);
    tm_device_free(c->dev, block);
    return st;
}

/* The keys' bias adds the same q.b to every score of a row, which the
 * softmax does not see: its gradient is exactly zero. The sum of c_attn's
 * bias gradient leaves rounding noise of about 1e-12 there, which AdamW
 * (eps 1e-8) would turn into updates of 1e-4 lr; the exact zero keeps the
 * bias where the mathematics leaves it. */
static void zero_key_bias_grad(const tm_layer_plan *p, const tm_layer_ctx *c)
{
    int cl = p->local[L_C];
    memset(grad(p, c, ATTN_B) + cl, 0, (size_t)cl * sizeof(float));
}

/* What a block's B keeps for its W (zero-bubble schedules): the output
 * gradients of its four projections, whole rows (gathered under SP). */
typedef struct {
    float *dfcp, *dfc, *dproj, *dqkv; /* (r, C), (r, 4C'), (r, C), (r, 3C') */
} block_wsave_bufs;

static size_t block_wsave_layout(const tm_layer_plan *p, int rows, float *base,
                                 block_wsave_bufs *w)
{
    size_t r = (size_t)rows, C = (size_t)cfg_of(p)->n_embd, cl = (size_t)p->local[L_C];
    size_t sizes[] = {r * C, r * 4 * cl, r * C, r * 3 * cl};
    float **slots[] = {&w->dfcp, &w->dfc, &w->dproj, &w->dqkv};
    size_t off = 0;
    for (size_t i = 0; i < 4; i++) {
        if (base != NULL) *slots[i] = base + off;
        off += sizes[i];
    }
    return off;
}

/* W reads what the forward saved, which a fully recomputed block keeps
 * only while its B runs: such a block does its whole backward in B. */
static size_t block_wsave(const tm_layer_plan *p, int rows)
{
    block_wsave_bufs w;
    return tm_layer_recomputed(p, rows) ? 0 : block_wsave_layout(p, rows, NULL, &w);
}

/* The whole backward (wsave NULL), or B: everything but the four
 * projections' weight and bias gradients, whose output gradients go to
 * wsave instead. */
static int block_backward_input(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                                const float *out, float *saved, float *dout, float *din,
                                float *scratch, float *wsave)
{
    (void)out;
    const tm_gpt_config *g = cfg_of(p);
    int rows = c->rows, rl = seq_rows(p, rows), C = g->n_embd, T = g->block_size, B = rows / T;
    int cl = p->local[L_C];
    size_t own = own_rows(p, c);
    if (din == NULL)
        return tm_error(TM_EINVAL, "a GPT block needs its input gradient (layer %d)",
                        p->layer->index);
    block_acts a;
    block_layout(p, rows, saved, &a);
    block_scratch_bufs s;
    block_scratch_layout(p, rows, scratch, &s);
    block_wsave_bufs w = {NULL, NULL, NULL, NULL};
    if (wsave != NULL) block_wsave_layout(p, rows, wsave, &w);
    /* The MLP: the whole output gradient (gathered under SP: g's backward)
     * reaches mlp.c_proj, GELU, c_fc, whose partial input gradient is
     * summed (f's backward), then ln_2. */
    const float *d = dout;
    if (sp_of(p)) {
        TM_CHECK(gather_rows(p, c, dout, s.full));
        d = s.full;
    }
    linear_backward_into(c, s.s1, grad(p, c, FCP_W), grad(p, c, FCP_B), d, a.fch_gelu,
                         param(p, c, FCP_W), rows, 4 * cl, C, w.dfcp);
    tm_gelu_backward_inplace(s.s1, a.fch, (size_t)rows * 4 * cl);
    linear_backward_into(c, s.s2, grad(p, c, FC_W), grad(p, c, FC_B), s.s1, a.ln2,
                         param(p, c, FC_W), rows, C, 4 * cl, w.dfc);
    TM_CHECK(reduce_partial(p, c, s.s2, s.s2 + own));
    /* The residual stream after attention: dout directly, plus ln_2's. */
    tm_layer_copy(c, din, dout, (size_t)rl * C);
    tm_layernorm_backward(din, grad(p, c, LN2_W), grad(p, c, LN2_B), s.s2 + own, a.res2,
                          param(p, c, LN2_W), a.mean2, a.rstd2, rl, C);
    /* Attention: attn.c_proj, the rank's heads, c_attn, then ln_1. */
    d = din;
    if (sp_of(p)) {
        TM_CHECK(gather_rows(p, c, din, s.full));
        d = s.full;
    }
    linear_backward_into(c, s.s1, grad(p, c, PROJ_W), grad(p, c, PROJ_B), d, a.atty,
                         param(p, c, PROJ_W), rows, cl, C, w.dproj);
    if (drops_core(p))
        tm_attention_backward_recompute(s.s2, s.dscores, s.s1, a.qkv, B, T, cl, p->local[L_H]);
    else
        tm_attention_backward(s.s2, s.dscores, s.s1, a.qkv, a.att, B, T, cl, p->local[L_H]);
    linear_backward_into(c, s.s1, grad(p, c, ATTN_W), grad(p, c, ATTN_B), s.s2, a.ln1,
                         param(p, c, ATTN_W), rows, C, 3 * cl, w.dqkv);
    if (wsave == NULL) zero_key_bias_grad(p, c);
    TM_CHECK(reduce_partial(p, c, s.s1, s.s1 + own));
    tm_layernorm_backward(din, grad(p, c, LN1_W), grad(p, c, LN1_B), s.s1 + own, x,
                          param(p, c, LN1_W), a.mean1, a.rstd1, rl, C);
    return TM_OK;
}

static int block_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                          const float *out, float *saved, float *dout, float *din, float *scratch)
{
    return block_backward_input(p, c, x, out, saved, dout, din, scratch, NULL);
}

/* W: the four projections' weight and bias gradients, in the order the
 * whole backward adds them, from B's output gradients and the inputs the
 * forward saved. */
static int block_backward_weight(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                                 const float *saved, const float *wsave)
{
    (void)x;
    int rows = c->rows, C = cfg_of(p)->n_embd, cl = p->local[L_C];
    block_acts a;
    block_layout(p, rows, (float *)saved, &a);
    block_wsave_bufs w;
    block_wsave_layout(p, rows, (float *)wsave, &w);
    tm_linear_backward(NULL, grad(p, c, FCP_W), grad(p, c, FCP_B), w.dfcp, a.fch_gelu, NULL, rows,
                       4 * cl, C);
    tm_linear_backward(NULL, grad(p, c, FC_W), grad(p, c, FC_B), w.dfc, a.ln2, NULL, rows, C,
                       4 * cl);
    tm_linear_backward(NULL, grad(p, c, PROJ_W), grad(p, c, PROJ_B), w.dproj, a.atty, NULL, rows,
                       cl, C);
    tm_linear_backward(NULL, grad(p, c, ATTN_W), grad(p, c, ATTN_B), w.dqkv, a.ln1, NULL, rows, C,
                       3 * cl);
    zero_key_bias_grad(p, c);
    return TM_OK;
}

/* Per micro-batch: two reduces forward, two backward; under SP an
 * all-gather before each of the four. */
static double block_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din)
{
    (void)din;
    return 4 * (reduce_bytes(p, tp_comm, rows) + gather_bytes(p, rows));
}

/* The forward's two reduces, and under SP its two all-gathers. */
static double block_tp_forward_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows)
{
    return 2 * (reduce_bytes(p, tp_comm, rows) + gather_bytes(p, rows));
}

static const tm_layer_kind block_kind = {
    .name = "block",
    .plan = block_plan,
    .flops = block_flops,
    .saved_floats = block_saved,
    .scratch_floats = block_scratch,
    .fwd_scratch_floats = block_fwd_scratch,
    .forward = block_forward,
    .backward = block_backward,
    .wsave_floats = block_wsave,
    .backward_input = block_backward_input,
    .backward_weight = block_backward_weight,
    .tp_bytes = block_tp_bytes,
    .tp_forward_bytes = block_tp_forward_bytes,
    .has_core = 1,
};

/* ---- the head: ln_f, then logits against the tied wte ----------------- */

enum { LNF_W, LNF_B, H_WTE };

static int head_plan(tm_layer_plan *p, const tm_layer_plan *prev, int last)
{
    (void)prev;
    (void)last;
    TM_CHECK(plan_common(p));
    split(p, H_WTE, TM_SHARD_ROWS, p->t * p->local[L_V], p->local[L_V]);
    seq_partial(p, LNF_W);
    seq_partial(p, LNF_B);
    p->out_w = p->local[L_V];
    if (p->out_w > p->grad_w) p->grad_w = p->out_w;
    return TM_OK;
}

static double head_flops(const tm_layer *l, int rows)
{
    return 2.0 * rows * l->in_width * l->out_width;
}

/* ln_f's output (r, C), whole (gathered under SP); mean and rstd (r'). */
static size_t head_saved(const tm_layer_plan *p, int rows)
{
    return (size_t)rows * cfg_of(p)->n_embd + 2 * (size_t)seq_rows(p, rows);
}

/* ln_f's output gradient (r, C), and its input gradient (r', C) when the
 * caller wants none (ln_f's parameters still need the LayerNorm's
 * backward). */
static size_t head_scratch(const tm_layer_plan *p, int rows)
{
    return ((size_t)rows + seq_rows(p, rows)) * cfg_of(p)->n_embd;
}

static int head_forward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                        float *out, float *saved)
{
    int rows = c->rows, rl = seq_rows(p, rows), C = cfg_of(p)->n_embd;
    size_t own = own_rows(p, c);
    float *lnf = saved, *mean = lnf + (size_t)rows * C, *rstd = mean + rl;
    tm_layernorm_forward(lnf + own, mean, rstd, x, param(p, c, LNF_W), param(p, c, LNF_B), rl, C,
                         LN_EPS);
    if (sp_of(p)) TM_CHECK(gather_rows(p, c, lnf + own, lnf));
    tm_linear_forward(out, lnf, param(p, c, H_WTE), NULL, rows, C, p->out_w);
    return TM_OK;
}

/* B keeps the logits' gradient for W (wte's gradient); a fully
 * recomputed head keeps ln_f's output only while its B runs, so it does
 * its whole backward in B. */
static size_t head_wsave(const tm_layer_plan *p, int rows)
{
    return tm_layer_recomputed(p, rows) ? 0 : (size_t)rows * p->out_w;
}

/* The whole backward (wsave NULL), or B: all but wte's gradient. */
static int head_backward_input(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                               const float *out, float *saved, float *dout, float *din,
                               float *scratch, float *wsave)
{
    (void)out;
    int rows = c->rows, rl = seq_rows(p, rows), C = cfg_of(p)->n_embd;
    size_t n = (size_t)rows * C, nl = (size_t)rl * C, own = own_rows(p, c);
    float *lnf = saved, *mean = lnf + n, *rstd = mean + rl, *dlnf = scratch;
    float *dx = din != NULL ? din : scratch + n;
    linear_backward_into(c, dlnf, grad(p, c, H_WTE), NULL, dout, lnf, param(p, c, H_WTE), rows, C,
                         p->out_w, wsave);
    TM_CHECK(reduce_partial(p, c, dlnf, dlnf + own));
    tm_layer_zero(c, dx, nl);
    tm_layernorm_backward(dx, grad(p, c, LNF_W), grad(p, c, LNF_B), dlnf + own, x,
                          param(p, c, LNF_W), mean, rstd, rl, C);
    return TM_OK;
}

static int head_backward(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                         const float *out, float *saved, float *dout, float *din, float *scratch)
{
    return head_backward_input(p, c, x, out, saved, dout, din, scratch, NULL);
}

static int head_backward_weight(const tm_layer_plan *p, const tm_layer_ctx *c, const float *x,
                                const float *saved, const float *wsave)
{
    (void)x;
    tm_linear_backward(NULL, grad(p, c, H_WTE), NULL, wsave, saved, NULL, c->rows,
                       cfg_of(p)->n_embd, p->out_w);
    return TM_OK;
}

/* Per micro-batch: ln_f's gather (SP), its input gradient's reduce, and
 * the loss the head feeds (gpt_loss): the row maxima all-gathered, the
 * sums and target logits all-reduced. */
static double head_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din)
{
    (void)din;
    double loss = p->tp > 1 ? (double)(p->tp - 1) * rows * sizeof(float) +
                                  tm_allreduce_send_bytes(tp_comm, 2 * (size_t)rows)
                            : 0;
    return reduce_bytes(p, tp_comm, rows) + gather_bytes(p, rows) + loss;
}

/* ln_f's all-gather (SP); the loss is not part of the recomputed forward. */
static double head_tp_forward_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows)
{
    (void)tp_comm;
    return gather_bytes(p, rows);
}

static const tm_layer_kind head_kind = {
    .name = "head",
    .plan = head_plan,
    .flops = head_flops,
    .saved_floats = head_saved,
    .scratch_floats = head_scratch,
    .forward = head_forward,
    .backward = head_backward,
    .wsave_floats = head_wsave,
    .backward_input = head_backward_input,
    .backward_weight = head_backward_weight,
    .tp_bytes = head_tp_bytes,
    .tp_forward_bytes = head_tp_forward_bytes,
};

/* ---- the vocabulary-parallel loss --------------------------------------- */

/* Softmax cross-entropy over the logits the tensor-parallel ranks hold
 * between them, never gathered (Megatron's vocab_parallel_cross_entropy):
 * the rows' maxima all-gathered (each rank takes the largest), then their
 * sums of exponentials and target logits all-reduced in one message. On
 * one device, the whole-row loss itself. */
static int gpt_loss_in(const tm_layer_plan *last, const tm_layer_ctx *c, float *dlogits,
                       const float *logits, const int *targets, int rows, float grad_scale,
                       double *loss_sum, double *correct, float *buf)
{
    int tp = last->tp, t = last->t, ld = last->out_w, v0 = t * ld;
    int n = TM_GPT_VOCAB - v0 < ld ? TM_GPT_VOCAB - v0 : ld;
    if (n < 0) n = 0;
    size_t r = (size_t)rows;
    float *maxima = buf, *max = buf + r * tp, *sum = max + r, *target = sum + r;
    int *arg = (int *)(target + r);
    tm_xent_shard_max(maxima + (size_t)t * r, arg, logits, rows, n, ld);
    TM_CHECK(tm_allgather(c->tp_comm, maxima + (size_t)t * r, maxima, r));
    for (size_t i = 0; i < r; i++) {
        max[i] = maxima[i];
        for (int k = 1; k < tp; k++)
            if (maxima[k * r + i] > max[i]) max[i] = maxima[k * r + i];
    }
    tm_xent_shard_forward(dlogits, sum, target, logits, max, targets, rows, n, ld, v0);
    TM_CHECK(tm_allreduce(c->tp_comm, sum, sum, 2 * r, TM_SUM));
    if (dlogits != NULL)
        tm_xent_shard_backward(dlogits, sum, targets, rows, n, ld, v0, grad_scale);
    double total = 0;
    for (size_t i = 0; i < r; i++) total += logf(sum[i]) - target[i];
    *loss_sum += (float)(total / rows) * (double)rows;
    if (dlogits != NULL || correct == NULL) return TM_OK;
    /* The prediction is the first of the row's largest logits: on the
     * first rank whose maximum is the row's. */
    float right = 0;
    for (size_t i = 0; i < r; i++) {
        int owner = 0;
        while (owner < tp - 1 && maxima[owner * r + i] != max[i]) owner++;
        right += owner == t && arg[i] + v0 == targets[i];
    }
    TM_CHECK(tm_allreduce(c->tp_comm, &right, &right, 1, TM_SUM));
    *correct += right;
    return TM_OK;
}

static int gpt_loss(const tm_layer_plan *last, const tm_layer_ctx *c, float *dlogits,
                    const float *logits, const int *targets, int rows, float grad_scale,
                    double *loss_sum, double *correct)
{
    if (last->tp == 1)
        return tm_loss_softmax_xent(last, c, dlogits, logits, targets, rows, grad_scale,
                                    loss_sum, correct);
    /* Smaller than the head's backward scratch, which the memory probe
     * counts. */
    size_t floats = (size_t)rows * (last->tp + 4);
    float *buf = tm_device_alloc(c->dev, floats * sizeof(float), TM_TAG_ACTIVATION);
    if (buf == NULL) return TM_ENOMEM;
    int st = gpt_loss_in(last, c, dlogits, logits, targets, rows, grad_scale, loss_sum, correct,
                         buf);
    tm_device_free(c->dev, buf);
    return st;
}

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
    m->loss = gpt_loss;
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
                            meta_int(f, "context"), 0};
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
