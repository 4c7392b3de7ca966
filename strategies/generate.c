/* Generation: a window forward that fills the key/value cache (prefill),
 * a one-position forward against it (decode), sampling, and the terminal
 * escaper. Dimension letters as in strategies/gpt.c; n is the window's
 * length (at most T). */
#include "strategies/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "kernels/ops.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/comm.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/gpt.h"
#include "strategies/plan.h"
#include "strategies/stage.h"
#include "strategies/rng.h"

#define LN_EPS 1e-5f
#define V TM_GPT_VOCAB

enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCP_W, FCP_B };

/* What one device holds of a GPT for generation: its pipeline stage's
 * layers as its tensor-parallel rank holds them (strategies/gpt.c's
 * split: the rank's heads and MLP features, its rows of the vocabulary),
 * as pointers into its parameters. One device: the whole model. */
typedef struct {
    const tm_gpt_config *g;
    tm_comm *tp_comm;          /* NULL or a group of one: no sums */
    int tp, t, cl, hl, vl;     /* C/tp, NH/tp, vocabulary rows per rank */
    int first_block, n_blocks; /* the blocks held */
    int has_embed, has_head;
    const float *wte, *wpe, *lnf_w, *lnf_b;
    const float *blocks[TM_GPT_MAX_LAYERS][12]; /* each block's tensors, in order */
} weights;

static void sizes(weights *w, const tm_model *m, int tp, int t)
{
    w->g = m->cfg;
    w->tp = tp;
    w->t = t;
    w->cl = w->g->n_embd / tp;
    w->hl = w->g->n_head / tp;
    w->vl = (V + tp - 1) / tp;
}

/* The whole model from its full flat buffer (one device, on the host). */
static void bind_full(weights *w, const tm_model *m, const float *params)
{
    sizes(w, m, 1, 0);
    w->tp_comm = NULL;
    w->first_block = 0;
    w->n_blocks = w->g->n_layer;
    w->has_embed = w->has_head = 1;
    const tm_layer *emb = &m->layers[0], *head = &m->layers[m->n_layers - 1];
    w->wte = params + m->tensors[emb->tensor[0]].off;
    w->wpe = params + m->tensors[emb->tensor[1]].off;
    w->lnf_w = params + m->tensors[head->tensor[0]].off;
    w->lnf_b = params + m->tensors[head->tensor[1]].off;
    for (int l = 0; l < w->n_blocks; l++)
        for (int k = 0; k < 12; k++)
            w->blocks[l][k] = params + m->tensors[m->layers[1 + l].tensor[k]].off;
}

/* A device's stage (its layers' shards in s->params). */
static void bind_stage(weights *w, const tm_stage *s)
{
    const tm_model *m = s->model;
    sizes(w, m, s->tp, s->t);
    w->tp_comm = s->tp_comm;
    w->has_embed = w->has_head = w->n_blocks = 0;
    for (int i = 0; i < s->n; i++) {
        const tm_layer_plan *p = &s->layer[i];
        const float *at[12];
        for (int k = 0; k < p->layer->n_tensors; k++) at[k] = s->params + p->shard[k].off;
        int l = p->layer->index;
        if (l == 0) {
            w->has_embed = 1;
            w->wte = at[0];
            w->wpe = at[1];
        } else if (l == m->n_layers - 1) {
            w->has_head = 1;
            w->lnf_w = at[0];
            w->lnf_b = at[1];
            w->wte = at[2];
        } else {
            if (w->n_blocks == 0) w->first_block = l - 1;
            memcpy(w->blocks[w->n_blocks++], at, sizeof at);
        }
    }
}

/* Megatron's g: the partial sums (n floats) of the ranks, summed. */
static int reduce(const weights *w, float *x, size_t n)
{
    return w->tp > 1 ? tm_allreduce(w->tp_comm, x, x, n, TM_SUM) : TM_OK;
}

/* Buffers of a forward over a window of up to T positions, with this
 * rank's sizes (C' = C/tp channels of attention, 4C' of the MLP). */
typedef struct {
    float *x, *ln, *qkv, *att, *atty, *res2, *fch, *fcg, *lnf;
    float *k, *v;     /* the cache: (blocks, T, C') each, the rank's heads */
    float *gathered;  /* (tp, V') the last position's logits of every rank */
} work;

static size_t carve(work *b, const weights *w, float *p)
{
    size_t T = (size_t)w->g->block_size, C = (size_t)w->g->n_embd, cl = (size_t)w->cl;
    size_t L = (size_t)w->n_blocks;
    float **slot[] = {&b->x,   &b->ln,  &b->res2, &b->lnf, &b->atty, &b->qkv,     &b->att,
                      &b->fch, &b->fcg, &b->k,    &b->v,   &b->gathered};
    size_t size[] = {T * C,      T * C,      T * C,      T * C,      T * cl,
                     T * 3 * cl, (size_t)w->hl * T * T, T * 4 * cl, T * 4 * cl,
                     L * T * cl, L * T * cl, (size_t)w->tp * w->vl};
    size_t off = 0;
    for (size_t i = 0; i < sizeof size / sizeof size[0]; i++) {
        if (p != NULL) *slot[i] = p + off;
        off += size[i];
    }
    return off;
}

/* One head's attention of the query at position pos against the cached
 * keys and values 0 .. pos (rows of ld floats). */
static void attend_cached(float *y, const float *q, const float *k, const float *v, int pos,
                          int ld, int hs, float *scores)
{
    float scale = 1.0f / sqrtf((float)hs), max = -INFINITY, sum = 0;
    for (int j = 0; j <= pos; j++) {
        const float *kj = k + (size_t)j * ld;
        float s = 0;
        for (int i = 0; i < hs; i++) s += q[i] * kj[i];
        scores[j] = s * scale;
        max = scores[j] > max ? scores[j] : max;
    }
    for (int j = 0; j <= pos; j++) {
        scores[j] = expf(scores[j] - max);
        sum += scores[j];
    }
    memset(y, 0, (size_t)hs * sizeof(float));
    for (int j = 0; j <= pos; j++) {
        const float *vj = v + (size_t)j * ld;
        float a = scores[j] / sum;
        for (int i = 0; i < hs; i++) y[i] += a * vj[i];
    }
    tm__cost_charge(4.0 * hs * (pos + 1) + 5.0 * (pos + 1), 8.0 * hs * (pos + 1));
}

/* The held blocks over b->x: n rows at positions pos .. pos + n - 1. A
 * window (pos 0) attends within itself and fills the cache; one row at
 * pos > 0 (decode) attends to the cache, which it extends. */
static int blocks_forward(const weights *w, work *b, int n, int pos)
{
    const tm_gpt_config *g = w->g;
    int C = g->n_embd, T = g->block_size, cl = w->cl, hs = C / g->n_head;
    size_t nc = (size_t)n * C;
    for (int l = 0; l < w->n_blocks; l++) {
        const float *const *p = w->blocks[l];
        float *kc = b->k + (size_t)l * T * cl, *vc = b->v + (size_t)l * T * cl;
        tm_layernorm_forward(b->ln, NULL, NULL, b->x, p[LN1_W], p[LN1_B], n, C, LN_EPS);
        tm_linear_forward(b->qkv, b->ln, p[ATTN_W], p[ATTN_B], n, C, 3 * cl);
        for (int r = 0; r < n; r++) {
            const float *row = b->qkv + (size_t)r * 3 * cl;
            memcpy(kc + (size_t)(pos + r) * cl, row + cl, (size_t)cl * sizeof(float));
            memcpy(vc + (size_t)(pos + r) * cl, row + 2 * cl, (size_t)cl * sizeof(float));
        }
        if (pos == 0) {
            tm_attention_forward(b->atty, b->att, b->qkv, 1, n, cl, w->hl);
        } else {
            for (int h = 0; h < w->hl; h++)
                attend_cached(b->atty + (size_t)h * hs, b->qkv + (size_t)h * hs,
                              kc + (size_t)h * hs, vc + (size_t)h * hs, pos, cl, hs, b->att);
        }
        tm_linear_forward(b->res2, b->atty, p[PROJ_W], NULL, n, cl, C);
        TM_CHECK(reduce(w, b->res2, nc));
        tm_bias_residual_forward(b->res2, b->x, p[PROJ_B], n, C);
        tm_layernorm_forward(b->ln, NULL, NULL, b->res2, p[LN2_W], p[LN2_B], n, C, LN_EPS);
        tm_linear_forward(b->fch, b->ln, p[FC_W], p[FC_B], n, C, 4 * cl);
        tm_gelu_forward(b->fcg, b->fch, (size_t)n * 4 * cl);
        tm_linear_forward(b->x, b->fcg, p[FCP_W], NULL, n, 4 * cl, C);
        TM_CHECK(reduce(w, b->x, nc));
        tm_bias_residual_forward(b->x, b->res2, p[FCP_B], n, C);
    }
    return TM_OK;
}

/* The embedding of tokens at positions pos .. pos + n - 1 into b->x: the
 * rank's vocabulary rows (rank 0 adds the positions), summed. */
static int embed_forward(const weights *w, work *b, const int *tokens, int n, int pos)
{
    int C = w->g->n_embd;
    const float *wpe = w->t == 0 ? w->wpe + (size_t)pos * C : NULL;
    /* Rows of a view that starts at pos: T large enough never to wrap. */
    tm_embedding_forward(b->x, tokens, w->wte, wpe, n, w->g->block_size, C, w->t * w->vl,
                         w->vl);
    return reduce(w, b->x, (size_t)n * C);
}

/* ln_f and the logits of the rows [first, n) of b->x: the rank's share
 * (rows, V') into logits, or with tp > 1 gathered over the group into the
 * whole 256 (only for a single row). */
static int head_forward(const weights *w, work *b, int first, int n, float *logits)
{
    int C = w->g->n_embd, rows = n - first;
    tm_layernorm_forward(b->lnf, NULL, NULL, b->x + (size_t)first * C, w->lnf_w, w->lnf_b, rows,
                         C, LN_EPS);
    if (w->tp == 1) {
        tm_linear_forward(logits, b->lnf, w->wte, NULL, rows, C, V);
        return TM_OK;
    }
    float *mine = b->gathered + (size_t)w->t * w->vl;
    tm_linear_forward(mine, b->lnf, w->wte, NULL, 1, C, w->vl);
    TM_CHECK(tm_allgather(w->tp_comm, mine, b->gathered, (size_t)w->vl));
    memcpy(logits, b->gathered, V * sizeof(float));
    return TM_OK;
}

/* The forward of tokens[0 .. n) at positions 0 .. n - 1 (one device):
 * the logits of every position into logits (n, V). */
static int window_logits(const weights *w, work *b, const int *tokens, int n, float *logits)
{
    TM_CHECK(embed_forward(w, b, tokens, n, 0));
    TM_CHECK(blocks_forward(w, b, n, 0));
    return head_forward(w, b, 0, n, logits);
}

/* A draw from softmax(logits / temperature) over the top_k largest (ties
 * with the k-th kept, as torch.topk's threshold keeps them); temperature 0:
 * the largest, lowest byte on ties. */
static int sample(const float *logits, double temperature, int top_k, tm_rng *r)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature == 0) return best;
    float threshold = -INFINITY;
    if (top_k > 0 && top_k < V) {
        float sorted[V];
        memcpy(sorted, logits, sizeof sorted);
        /* Partial selection sort: the k largest first. */
        for (int i = 0; i < top_k; i++) {
            int m = i;
            for (int j = i + 1; j < V; j++)
                if (sorted[j] > sorted[m]) m = j;
            float t = sorted[i];
            sorted[i] = sorted[m];
            sorted[m] = t;
        }
        threshold = sorted[top_k - 1];
    }
    double p[V], sum = 0, top = logits[best] / temperature;
    for (int i = 0; i < V; i++) {
        p[i] = logits[i] >= threshold ? exp(logits[i] / temperature - top) : 0.0;
        sum += p[i];
    }
    double u = ((double)(tm_rng_u32(r) >> 5) * 67108864.0 + (double)(tm_rng_u32(r) >> 6)) *
               0x1p-53 * sum;
    double acc = 0;
    int last = best;
    for (int i = 0; i < V; i++) {
        if (p[i] == 0) continue;
        acc += p[i];
        last = i;
        if (u < acc) return i;
    }
    return last;
}

typedef struct {
    const tm_generate_config *cfg;
    tm_generate_stats *stats;
    int first[TM_MAX_LAYERS + 1]; /* stage p holds layers first[p] .. first[p+1]-1 */
    double *modeled;              /* each device's modeled time at the end */
} job;

static void charge(void *ctx, double flops, double bytes) { tm_clock_charge(ctx, flops, bytes); }

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* n tokens at positions pos .. pos + n - 1 through the pipeline: the first
 * stage embeds them, each stage runs its blocks and passes the rows on,
 * the last stage's head leaves the last position's logits (V) in logits. */
static int forward(const weights *w, work *b, const tm_mesh *mesh, const int *tokens, int n,
                   int pos, float *logits)
{
    size_t bytes = (size_t)n * w->g->n_embd * sizeof(float);
    if (w->has_embed) TM_CHECK(embed_forward(w, b, tokens, n, pos));
    else TM_CHECK(tm_recv(mesh->pp_comm, b->x, bytes, mesh->p - 1));
    TM_CHECK(blocks_forward(w, b, n, pos));
    if (!w->has_head) return tm_send(mesh->pp_comm, b->x, bytes, mesh->p + 1);
    return head_forward(w, b, n - 1, n, logits);
}

/* The generation loop on one device of the tp x pp mesh. The draws are
 * made in one place — the last stage's tensor-parallel rank 0, from one
 * stream — and each byte drawn is broadcast to every device. */
static int generate(tm_device *dev, job *j, const weights *w, work *b, const tm_mesh *mesh,
                    int *window, float *logits)
{
    const tm_generate_config *cfg = j->cfg;
    int T = w->g->block_size, sampler = w->has_head && mesh->t == 0;
    int root = (mesh->pp - 1) * mesh->tp; /* the sampler's device */
    tm_rng r = tm_rng_seed(cfg->seed, 0);
    /* The window holds the last n <= T bytes; n is where the next one
     * goes. */
    size_t skip = cfg->prompt_len > (size_t)T ? cfg->prompt_len - T : 0;
    int n = (int)(cfg->prompt_len - skip);
    for (int i = 0; i < n; i++) window[i] = cfg->prompt[skip + i];
    TM_CHECK(forward(w, b, mesh, window, n, 0, logits));
    for (int i = 0; i < cfg->tokens; i++) {
        float next = 0; /* the byte, exactly, as a float of the broadcast */
        if (sampler) {
            next = (float)sample(logits, cfg->temperature, cfg->top_k, &r);
            if (i < cfg->logits_rows)
                memcpy(cfg->logits + (size_t)i * V, logits, V * sizeof(float));
            cfg->emit(cfg->ctx, (uint8_t)next);
            j->stats->tokens = i + 1;
        }
        TM_CHECK(tm_broadcast(tm_device_comm(dev), &next, 1, root));
        if (i + 1 == cfg->tokens) break;
        if (n < T) {
            window[n] = (int)next;
            TM_CHECK(forward(w, b, mesh, window + n, 1, n, logits));
            n++;
        } else {
            memmove(window, window + 1, sizeof(int) * (size_t)(T - 1));
            window[T - 1] = (int)next;
            TM_CHECK(forward(w, b, mesh, window, T, 0, logits));
        }
    }
    return TM_OK;
}

static int run(tm_device *dev, void *arg)
{
    job *j = arg;
    const tm_generate_config *cfg = j->cfg;
    int T = ((const tm_gpt_config *)cfg->model->cfg)->block_size;
    tm_gemm_thread_init();
    tm_cost_set_hook(charge, dev);
    tm_mesh mesh = {0};
    tm_stage s = {0};
    float *buf = NULL, *logits = NULL;
    int *window = malloc(sizeof(int) * (size_t)T);
    int st = window != NULL ? TM_OK : tm_error(TM_EHOSTMEM, "cannot allocate the window");
    if (st == TM_OK) st = tm_mesh_create(dev, 1, cfg->pp, cfg->tp, &mesh);
    if (st == TM_OK)
        st = tm_stage_create_weights(&s, dev, mesh.tp_comm, cfg->model, j->first[mesh.p],
                                     j->first[mesh.p + 1]);
    weights w;
    work b;
    if (st == TM_OK) {
        tm_stage_shard_from(&s, cfg->params, s.params);
        tm_clock_host_copy(dev, (double)s.n_params * sizeof(float));
        bind_stage(&w, &s);
        buf = tm_device_alloc(dev, carve(&b, &w, NULL) * sizeof(float), TM_TAG_ACTIVATION);
        logits = tm_device_alloc(dev, V * sizeof(float), TM_TAG_ACTIVATION);
        if (buf == NULL || logits == NULL) st = TM_ENOMEM;
    }
    if (st == TM_OK) {
        carve(&b, &w, buf);
        double t0 = now_s();
        st = generate(dev, j, &w, &b, &mesh, window, logits);
        if (w.has_head && mesh.t == 0) j->stats->seconds = now_s() - t0;
        tm_clock_stats c;
        tm_clock_stats_get(dev, &c);
        j->modeled[tm_device_id(dev)] = c.now;
    }
    free(window);
    tm_device_free(dev, logits);
    tm_device_free(dev, buf);
    tm_stage_destroy(&s);
    tm_mesh_destroy(&mesh);
    tm_cost_set_hook(NULL, NULL);
    return st;
}

/* Checks cfg and splits the model's layers into stages (first). */
static int check(const tm_generate_config *cfg, int *first)
{
    int tp = cfg->tp > 0 ? cfg->tp : 1, pp = cfg->pp > 0 ? cfg->pp : 1;
    if (tm_gpt_of(cfg->model) == NULL)
        return tm_error(TM_EINVAL, "generation needs a GPT, not a %s model", cfg->model->family);
    if (cfg->prompt_len == 0) return tm_error(TM_EINVAL, "the prompt needs at least one byte");
    if (cfg->tokens < 0) return tm_error(TM_EINVAL, "--tokens must not be negative");
    if (!(cfg->temperature >= 0) || !isfinite(cfg->temperature))
        return tm_error(TM_EINVAL, "--temperature must be a finite number >= 0");
    if (cfg->top_k < 0 || cfg->top_k > V)
        return tm_error(TM_EINVAL, "--top-k must be 0 (all) to %d", V);
    if ((long)tp * pp > TM_MAX_DEVICES)
        return tm_error(TM_EINVAL, "--tp %d x --pp %d = %ld devices, more than %d", tp, pp,
                        (long)tp * pp, TM_MAX_DEVICES);
    TM_CHECK(tm_stages_balance(cfg->model, pp, first));
    /* The plans say whether tp can split the model (heads). */
    for (int p = 0; p < pp; p++) {
        tm_layer_plan plan[TM_MAX_LAYERS];
        size_t n;
        TM_CHECK(tm_stage_plan(cfg->model, first[p], first[p + 1], tp, 0, plan, &n));
    }
    return TM_OK;
}

int tm_generate_check(const tm_generate_config *cfg)
{
    int first[TM_MAX_LAYERS + 1];
    return check(cfg, first);
}

int tm_generate(const tm_generate_config *cfg, tm_generate_stats *stats, char *error,
                size_t error_size)
{
    memset(stats, 0, sizeof *stats);
    error[0] = '\0';
    tm_generate_config mesh = *cfg;
    mesh.tp = cfg->tp > 0 ? cfg->tp : 1;
    mesh.pp = cfg->pp > 0 ? cfg->pp : 1;
    int n = mesh.tp * mesh.pp;
    job j = {&mesh, stats, {0}, NULL};
    int st = check(cfg, j.first);
    if (st == TM_OK) {
        j.modeled = calloc((size_t)n, sizeof *j.modeled);
        if (j.modeled == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate the device clocks");
    }
    tm_world *w = NULL;
    if (st == TM_OK) {
        tm_world_config wc;
        tm_world_config_default(&wc);
        wc.n_devices = n;
        wc.mem_cap = cfg->mem_cap;
        wc.local = cfg->local;
        st = tm_world_create(&w, &wc);
    }
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
        free(j.modeled);
        return st;
    }
    st = tm_world_run(w, run, &j);
    if (st != TM_OK) snprintf(error, error_size, "%s", tm_world_error(w));
    for (int i = 0; i < n; i++)
        if (j.modeled[i] > stats->modeled_s) stats->modeled_s = j.modeled[i];
    tm_world_destroy(w);
    free(j.modeled);
    return st;
}

int tm_generate_logits(const tm_model *m, const float *params, const uint8_t *bytes, int len,
                       float *logits)
{
    const tm_gpt_config *g = tm_gpt_of(m);
    if (g == NULL || len < 1 || len > g->block_size)
        return tm_error(TM_EINVAL, "a window of 1 to --context bytes of a GPT");
    weights w;
    work b;
    bind_full(&w, m, params);
    float *buf = malloc(carve(&b, &w, NULL) * sizeof(float));
    int *tokens = malloc(sizeof(int) * (size_t)len);
    if (buf == NULL || tokens == NULL) {
        free(buf);
        free(tokens);
        return tm_error(TM_EHOSTMEM, "cannot allocate the forward's buffers");
    }
    for (int i = 0; i < len; i++) tokens[i] = bytes[i];
    carve(&b, &w, buf);
    int st = window_logits(&w, &b, tokens, len, logits);
    free(buf);
    free(tokens);
    return st;
}

/* ---- the terminal escaper ---------------------------------------------- */

static void put_escaped(const uint8_t *b, int n, FILE *out)
{
    for (int i = 0; i < n; i++) fprintf(out, "\\x%02x", b[i]);
}

/* Bytes a sequence starting with lead needs in all (0: not a lead byte). */
static int seq_len(uint8_t lead)
{
    if (lead < 0x80) return 1;
    if (lead >= 0xc2 && lead <= 0xdf) return 2;
    if (lead >= 0xe0 && lead <= 0xef) return 3;
    if (lead >= 0xf0 && lead <= 0xf4) return 4;
    return 0;
}

/* Whether a complete sequence is valid UTF-8 (no overlong form, surrogate
 * or value past U+10FFFF) and printable (not a C1 control). */
static int printable(const uint8_t *s, int n)
{
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if (n == 2) return !(s[0] == 0xc2 && s[1] < 0xa0);
    if (n == 3) {
        if (s[0] == 0xe0 && s[1] < 0xa0) return 0;
        if (s[0] == 0xed && s[1] >= 0xa0) return 0;
        return 1;
    }
    if (s[0] == 0xf0 && s[1] < 0x90) return 0;
    if (s[0] == 0xf4 && s[1] >= 0x90) return 0;
    return 1;
}

void tm_escaper_put(tm_escaper *e, uint8_t byte, FILE *out)
{
    if (e->n > 0 && (byte & 0xc0) != 0x80) tm_escaper_flush(e, out);
    if (e->n == 0) {
        if (byte < 0x80) {
            if ((byte < 0x20 && byte != '\n' && byte != '\t') || byte == 0x7f)
                put_escaped(&byte, 1, out);
            else
                fputc(byte, out);
            return;
        }
        e->need = seq_len(byte);
        if (e->need == 0) {
            put_escaped(&byte, 1, out);
            return;
        }
    }
    /* n < need <= 4 here; the mask says so to the compiler. */
    e->pending[e->n++ & 3] = byte;
    if (e->n < e->need) return;
    if (printable(e->pending, e->n)) fwrite(e->pending, 1, (size_t)e->n, out);
    else put_escaped(e->pending, e->n, out);
    e->n = 0;
}

void tm_escaper_flush(tm_escaper *e, FILE *out)
{
    put_escaped(e->pending, e->n, out);
    e->n = 0;
}
