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
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/gpt.h"
#include "strategies/rng.h"

#define LN_EPS 1e-5f
#define V TM_GPT_VOCAB

enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCP_W, FCP_B };

/* The tensors of a GPT as pointers into its full flat buffer. */
typedef struct {
    const tm_gpt_config *g;
    const float *wte, *wpe, *lnf_w, *lnf_b;
    const float *blocks[TM_GPT_MAX_LAYERS][12]; /* each block's tensors, in order */
} weights;

static void bind(weights *w, const tm_model *m, const float *params)
{
    w->g = m->cfg;
    const tm_layer *emb = &m->layers[0], *head = &m->layers[m->n_layers - 1];
    w->wte = params + m->tensors[emb->tensor[0]].off;
    w->wpe = params + m->tensors[emb->tensor[1]].off;
    w->lnf_w = params + m->tensors[head->tensor[0]].off;
    w->lnf_b = params + m->tensors[head->tensor[1]].off;
    for (int l = 0; l < w->g->n_layer; l++)
        for (int k = 0; k < 12; k++)
            w->blocks[l][k] = params + m->tensors[m->layers[1 + l].tensor[k]].off;
}

/* Buffers of a forward over a window of up to T positions. */
typedef struct {
    float *x, *ln, *qkv, *att, *atty, *res2, *fch, *fcg, *lnf;
    float *k, *v; /* the cache: (L, T, C) each */
} work;

static size_t work_floats(const tm_gpt_config *g)
{
    size_t T = (size_t)g->block_size, C = (size_t)g->n_embd, L = (size_t)g->n_layer;
    return T * C * 5 + T * 3 * C + (size_t)g->n_head * T * T + 2 * T * 4 * C + 2 * L * T * C;
}

static void carve(work *b, const tm_gpt_config *g, float *p)
{
    size_t T = (size_t)g->block_size, C = (size_t)g->n_embd, L = (size_t)g->n_layer;
    float **slot[] = {&b->x, &b->ln, &b->atty, &b->res2, &b->lnf, &b->qkv, &b->att,
                      &b->fch, &b->fcg, &b->k, &b->v};
    size_t size[] = {T * C, T * C, T * C, T * C, T * C, T * 3 * C, (size_t)g->n_head * T * T,
                     T * 4 * C, T * 4 * C, L * T * C, L * T * C};
    for (size_t i = 0; i < sizeof size / sizeof size[0]; i++) {
        *slot[i] = p;
        p += size[i];
    }
}

/* The forward of tokens[0 .. n) at positions 0 .. n - 1: keys and values
 * of every block into the cache, the logits of the last position (or of
 * every position when all is set) into logits. */
static void window_forward(const weights *w, work *b, const int *tokens, int n, int all,
                           float *logits)
{
    const tm_gpt_config *g = w->g;
    int C = g->n_embd, T = g->block_size;
    tm_embedding_forward(b->x, tokens, w->wte, w->wpe, n, T, C, 0, V);
    for (int l = 0; l < g->n_layer; l++) {
        const float *const *p = w->blocks[l];
        tm_layernorm_forward(b->ln, NULL, NULL, b->x, p[LN1_W], p[LN1_B], n, C, LN_EPS);
        tm_linear_forward(b->qkv, b->ln, p[ATTN_W], p[ATTN_B], n, C, 3 * C);
        for (int t = 0; t < n; t++) {
            const float *row = b->qkv + (size_t)t * 3 * C;
            memcpy(b->k + ((size_t)l * T + t) * C, row + C, (size_t)C * sizeof(float));
            memcpy(b->v + ((size_t)l * T + t) * C, row + 2 * C, (size_t)C * sizeof(float));
        }
        tm_attention_forward(b->atty, b->att, b->qkv, 1, n, C, g->n_head);
        tm_linear_forward(b->res2, b->atty, p[PROJ_W], NULL, n, C, C);
        tm_bias_residual_forward(b->res2, b->x, p[PROJ_B], n, C);
        tm_layernorm_forward(b->ln, NULL, NULL, b->res2, p[LN2_W], p[LN2_B], n, C, LN_EPS);
        tm_linear_forward(b->fch, b->ln, p[FC_W], p[FC_B], n, C, 4 * C);
        tm_gelu_forward(b->fcg, b->fch, (size_t)n * 4 * C);
        tm_linear_forward(b->x, b->fcg, p[FCP_W], NULL, n, 4 * C, C);
        tm_bias_residual_forward(b->x, b->res2, p[FCP_B], n, C);
    }
    int first = all ? 0 : n - 1, rows = n - first;
    const float *x = b->x + (size_t)first * C;
    tm_layernorm_forward(b->lnf, NULL, NULL, x, w->lnf_w, w->lnf_b, rows, C, LN_EPS);
    tm_linear_forward(logits, b->lnf, w->wte, NULL, rows, C, V);
}

/* One head's attention of the query at position pos against the cached
 * keys and values 0 .. pos. */
static void attend_cached(float *y, const float *q, const float *k, const float *v, int pos,
                          int C, int hs, float *scores)
{
    float scale = 1.0f / sqrtf((float)hs), max = -INFINITY, sum = 0;
    for (int j = 0; j <= pos; j++) {
        const float *kj = k + (size_t)j * C;
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
        const float *vj = v + (size_t)j * C;
        float a = scores[j] / sum;
        for (int i = 0; i < hs; i++) y[i] += a * vj[i];
    }
    tm__cost_charge(4.0 * hs * (pos + 1) + 5.0 * (pos + 1), 8.0 * hs * (pos + 1));
}

/* The forward of one token at position pos < T against the cache, which
 * it extends; the logits into logits (V). */
static void decode_forward(const weights *w, work *b, int token, int pos, float *logits)
{
    const tm_gpt_config *g = w->g;
    int C = g->n_embd, T = g->block_size, hs = C / g->n_head;
    const int one[1] = {token};
    /* The embedding of one row at `pos`: position pos of a T-row view. */
    tm_embedding_forward(b->x, one, w->wte, w->wpe + (size_t)pos * C, 1, T, C, 0, V);
    for (int l = 0; l < g->n_layer; l++) {
        const float *const *p = w->blocks[l];
        float *kc = b->k + (size_t)l * T * C, *vc = b->v + (size_t)l * T * C;
        tm_layernorm_forward(b->ln, NULL, NULL, b->x, p[LN1_W], p[LN1_B], 1, C, LN_EPS);
        tm_linear_forward(b->qkv, b->ln, p[ATTN_W], p[ATTN_B], 1, C, 3 * C);
        memcpy(kc + (size_t)pos * C, b->qkv + C, (size_t)C * sizeof(float));
        memcpy(vc + (size_t)pos * C, b->qkv + 2 * C, (size_t)C * sizeof(float));
        for (int h = 0; h < g->n_head; h++)
            attend_cached(b->atty + (size_t)h * hs, b->qkv + (size_t)h * hs, kc + (size_t)h * hs,
                          vc + (size_t)h * hs, pos, C, hs, b->att);
        tm_linear_forward(b->res2, b->atty, p[PROJ_W], NULL, 1, C, C);
        tm_bias_residual_forward(b->res2, b->x, p[PROJ_B], 1, C);
        tm_layernorm_forward(b->ln, NULL, NULL, b->res2, p[LN2_W], p[LN2_B], 1, C, LN_EPS);
        tm_linear_forward(b->fch, b->ln, p[FC_W], p[FC_B], 1, C, 4 * C);
        tm_gelu_forward(b->fcg, b->fch, (size_t)4 * C);
        tm_linear_forward(b->x, b->fcg, p[FCP_W], NULL, 1, 4 * C, C);
        tm_bias_residual_forward(b->x, b->res2, p[FCP_B], 1, C);
    }
    tm_layernorm_forward(b->lnf, NULL, NULL, b->x, w->lnf_w, w->lnf_b, 1, C, LN_EPS);
    tm_linear_forward(logits, b->lnf, w->wte, NULL, 1, C, V);
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
} job;

static void charge(void *ctx, double flops, double bytes) { tm_clock_charge(ctx, flops, bytes); }

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int run(tm_device *dev, void *arg)
{
    job *j = arg;
    const tm_generate_config *cfg = j->cfg;
    const tm_model *m = cfg->model;
    const tm_gpt_config *g = m->cfg;
    int T = g->block_size;
    tm_gemm_thread_init();
    tm_cost_set_hook(charge, dev);
    float *params = tm_device_alloc(dev, m->n_params * sizeof(float), TM_TAG_PARAM);
    float *buf = tm_device_alloc(dev, work_floats(g) * sizeof(float), TM_TAG_ACTIVATION);
    float *logits = tm_device_alloc(dev, (size_t)T * V * sizeof(float), TM_TAG_ACTIVATION);
    int *window = malloc(sizeof(int) * (size_t)T);
    int st = params && buf && logits ? TM_OK : TM_ENOMEM;
    if (st == TM_OK && window == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate the window");
    if (st == TM_OK) {
        memcpy(params, cfg->params, m->n_params * sizeof(float));
        tm_clock_host_copy(dev, (double)m->n_params * sizeof(float));
        weights w;
        work b;
        bind(&w, m, params);
        carve(&b, g, buf);
        tm_rng r = tm_rng_seed(cfg->seed, 0);
        /* The window holds the last n <= T bytes; pos is where the next
         * one goes. */
        size_t skip = cfg->prompt_len > (size_t)T ? cfg->prompt_len - T : 0;
        int n = (int)(cfg->prompt_len - skip);
        for (int i = 0; i < n; i++) window[i] = cfg->prompt[skip + i];
        double t0 = now_s();
        window_forward(&w, &b, window, n, 0, logits);
        for (int i = 0; i < cfg->tokens; i++) {
            int next = sample(logits, cfg->temperature, cfg->top_k, &r);
            cfg->emit(cfg->ctx, (uint8_t)next);
            j->stats->tokens = i + 1;
            if (i + 1 == cfg->tokens) break;
            if (n < T) {
                window[n] = next;
                decode_forward(&w, &b, next, n, logits);
                n++;
            } else {
                memmove(window, window + 1, sizeof(int) * (size_t)(T - 1));
                window[T - 1] = next;
                window_forward(&w, &b, window, T, 0, logits);
            }
        }
        j->stats->seconds = now_s() - t0;
        tm_clock_stats s;
        tm_clock_stats_get(dev, &s);
        j->stats->modeled_s = s.now;
    }
    free(window);
    tm_device_free(dev, logits);
    tm_device_free(dev, buf);
    tm_device_free(dev, params);
    tm_cost_set_hook(NULL, NULL);
    return st;
}

int tm_generate(const tm_generate_config *cfg, tm_generate_stats *stats, char *error,
                size_t error_size)
{
    memset(stats, 0, sizeof *stats);
    error[0] = '\0';
    int st = TM_OK;
    if (tm_gpt_of(cfg->model) == NULL)
        st = tm_error(TM_EINVAL, "generation needs a GPT, not a %s model", cfg->model->family);
    else if (cfg->prompt_len == 0)
        st = tm_error(TM_EINVAL, "the prompt needs at least one byte");
    else if (cfg->tokens < 0)
        st = tm_error(TM_EINVAL, "--tokens must not be negative");
    else if (!(cfg->temperature >= 0) || !isfinite(cfg->temperature))
        st = tm_error(TM_EINVAL, "--temperature must be a finite number >= 0");
    else if (cfg->top_k < 0 || cfg->top_k > V)
        st = tm_error(TM_EINVAL, "--top-k must be 0 (all) to %d", V);
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
        return st;
    }
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = 1;
    wc.mem_cap = cfg->mem_cap;
    tm_world *w;
    st = tm_world_create(&w, &wc);
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
        return st;
    }
    job j = {cfg, stats};
    st = tm_world_run(w, run, &j);
    if (st != TM_OK) snprintf(error, error_size, "%s", tm_world_error(w));
    tm_world_destroy(w);
    return st;
}

int tm_generate_logits(const tm_model *m, const float *params, const uint8_t *bytes, int len,
                       float *logits)
{
    const tm_gpt_config *g = tm_gpt_of(m);
    if (g == NULL || len < 1 || len > g->block_size)
        return tm_error(TM_EINVAL, "a window of 1 to --context bytes of a GPT");
    float *buf = malloc(work_floats(g) * sizeof(float));
    int *tokens = malloc(sizeof(int) * (size_t)len);
    if (buf == NULL || tokens == NULL) {
        free(buf);
        free(tokens);
        return tm_error(TM_EHOSTMEM, "cannot allocate the forward's buffers");
    }
    for (int i = 0; i < len; i++) tokens[i] = bytes[i];
    weights w;
    work b;
    bind(&w, m, params);
    carve(&b, g, buf);
    window_forward(&w, &b, tokens, len, 1, logits);
    free(buf);
    free(tokens);
    return TM_OK;
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
