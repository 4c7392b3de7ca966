/* Suite `gpt`: the GPT of strategies/gpt.c against a double-precision
 * nanoGPT written here (wte + wpe, pre-LayerNorm blocks of causal attention
 * and a GELU-tanh MLP, ln_f, the head tied to wte, mean cross-entropy):
 * the loss and every parameter gradient of one stage holding all layers on
 * a one-device world, against central finite differences of the reference;
 * nanoGPT's initialisation, names, shapes and parameter count; generation
 * with the KV cache against the uncached forward; the terminal escaper. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "runtime/comm.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/generate.h"
#include "strategies/gpt.h"
#include "strategies/stage.h"
#include "tests/models.h"

/* A whole model in fp32 against exact double math: the logits come out of
 * some twenty chained kernels (two LayerNorms per block amplify the
 * rounding of small variances), a gradient goes back through all of them.
 * Wrong formulas miss by orders of magnitude more. */
#define FWD_TOL 1e-4
#define GRAD_TOL 1e-3
/* Central differences in double: truncation ~h², rounding ~1e-16/h. */
#define FD_STEP 1e-5
#define V TM_GPT_VOCAB

static tm_model make_gpt(int L, int H, int C, int T)
{
    tm_gpt_config g = {L, H, C, T, 0};
    tm_model m;
    cr_assert_eq(tm_gpt_model(&m, &g), TM_OK, "%s", tm_error_message());
    return m;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Parameters with some spread (nanoGPT's 0.02 would leave attention nearly
 * uniform and its gradients tiny): weights U(-1.5, 1.5) / sqrt(inputs),
 * the embeddings U(-1, 1), LayerNorm weights 1 + U(-0.3, 0.3), biases
 * U(-0.2, 0.2). */
static void spread_params(const tm_model *m, float *p)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        size_t n = (size_t)t->shape[0] * t->shape[1];
        int ln = strstr(t->name, "ln_") != NULL, bias = ends_with(t->name, ".bias");
        int embedding = strstr(t->name, ".wte.") || strstr(t->name, ".wpe.");
        for (size_t j = 0; j < n; j++) {
            double u = test_uniform();
            p[t->off + j] = (float)(embedding ? u
                                    : bias    ? 0.2 * u
                                    : ln      ? 1 + 0.3 * u
                                              : 1.5 * u / sqrt((double)t->shape[1]));
        }
    }
}

/* ---- the double-precision reference ---------------------------------- */

typedef struct {
    const double *ln1w, *ln1b, *attw, *attb, *projw, *projb;
    const double *ln2w, *ln2b, *fcw, *fcb, *fcpw, *fcpb;
} ref_block;

typedef struct {
    int L, H, C, T, B;
    double *p;                   /* the model's full flat layout, widened */
    const double *wte, *wpe, *lnfw, *lnfb;
    ref_block blk[4];
    const int *tokens, *targets; /* (B T) */
    double *x, *ln, *qkv, *atty, *fc, *logits; /* work */
} ref_gpt;

static const double *ref_tensor(ref_gpt *r, const tm_model *m, const char *name, int l)
{
    char full[TM_NAME_LEN];
    if (l >= 0) snprintf(full, sizeof full, "transformer.h.%d.%s", l, name);
    else snprintf(full, sizeof full, "transformer.%s", name);
    int i = tm_model_find(m, full);
    cr_assert_geq(i, 0, "no tensor %s", full);
    return r->p + m->tensors[i].off;
}

static void ref_init(ref_gpt *r, const tm_model *m, const float *params, int B, const int *tokens,
                     const int *targets)
{
    const tm_gpt_config *g = tm_gpt_of(m);
    cr_assert(g != NULL && g->n_layer <= 4 && g->block_size <= 64);
    size_t BT = (size_t)B * g->block_size, C = (size_t)g->n_embd;
    *r = (ref_gpt){.L = g->n_layer, .H = g->n_head, .C = g->n_embd, .T = g->block_size, .B = B,
                   .tokens = tokens, .targets = targets};
    r->p = test_alloc(m->n_params * sizeof(double));
    for (size_t i = 0; i < m->n_params; i++) r->p[i] = params[i];
    r->wte = ref_tensor(r, m, "wte.weight", -1);
    r->wpe = ref_tensor(r, m, "wpe.weight", -1);
    r->lnfw = ref_tensor(r, m, "ln_f.weight", -1);
    r->lnfb = ref_tensor(r, m, "ln_f.bias", -1);
    for (int l = 0; l < r->L; l++) {
        ref_block *b = &r->blk[l];
        b->ln1w = ref_tensor(r, m, "ln_1.weight", l);
        b->ln1b = ref_tensor(r, m, "ln_1.bias", l);
        b->attw = ref_tensor(r, m, "attn.c_attn.weight", l);
        b->attb = ref_tensor(r, m, "attn.c_attn.bias", l);
        b->projw = ref_tensor(r, m, "attn.c_proj.weight", l);
        b->projb = ref_tensor(r, m, "attn.c_proj.bias", l);
        b->ln2w = ref_tensor(r, m, "ln_2.weight", l);
        b->ln2b = ref_tensor(r, m, "ln_2.bias", l);
        b->fcw = ref_tensor(r, m, "mlp.c_fc.weight", l);
        b->fcb = ref_tensor(r, m, "mlp.c_fc.bias", l);
        b->fcpw = ref_tensor(r, m, "mlp.c_proj.weight", l);
        b->fcpb = ref_tensor(r, m, "mlp.c_proj.bias", l);
    }
    r->x = test_alloc(BT * C * 8);
    r->ln = test_alloc(BT * C * 8);
    r->qkv = test_alloc(BT * 3 * C * 8);
    r->atty = test_alloc(BT * C * 8);
    r->fc = test_alloc(BT * 4 * C * 8);
    r->logits = test_alloc(BT * V * 8);
}

static void ref_free(ref_gpt *r)
{
    free(r->p), free(r->x), free(r->ln), free(r->qkv), free(r->atty), free(r->fc);
    free(r->logits);
}

static void layernorm(double *y, const double *x, const double *w, const double *b, int n, int C)
{
    for (int r = 0; r < n; r++) {
        const double *xr = x + (size_t)r * C;
        double mean = 0, var = 0;
        for (int j = 0; j < C; j++) mean += xr[j] / C;
        for (int j = 0; j < C; j++) var += (xr[j] - mean) * (xr[j] - mean) / C;
        double rstd = 1 / sqrt(var + 1e-5);
        for (int j = 0; j < C; j++) y[(size_t)r * C + j] = (xr[j] - mean) * rstd * w[j] + b[j];
    }
}

/* y (n, out) = x (n, in) · wᵀ + b (b may be NULL); add: y += instead. */
static void linear(double *y, const double *x, const double *w, const double *b, int n, int in,
                   int out, int add)
{
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) {
            double acc = b ? b[o] : 0;
            for (int i = 0; i < in; i++) acc += x[(size_t)r * in + i] * w[(size_t)o * in + i];
            y[(size_t)r * out + o] = add ? y[(size_t)r * out + o] + acc : acc;
        }
}

static double gelu(double x)
{
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* nanoGPT's forward; returns the mean cross-entropy, logits in r->logits. */
static double ref_forward(ref_gpt *r)
{
    int C = r->C, T = r->T, BT = r->B * T, hs = C / r->H;
    for (int i = 0; i < BT; i++)
        for (int j = 0; j < C; j++)
            r->x[(size_t)i * C + j] =
                r->wte[(size_t)r->tokens[i] * C + j] + r->wpe[(i % T) * C + j];
    for (int l = 0; l < r->L; l++) {
        const ref_block *b = &r->blk[l];
        layernorm(r->ln, r->x, b->ln1w, b->ln1b, BT, C);
        linear(r->qkv, r->ln, b->attw, b->attb, BT, C, 3 * C, 0);
        for (int s = 0; s < r->B; s++)
            for (int h = 0; h < r->H; h++)
                for (int t = 0; t < T; t++) {
                    const double *q = r->qkv + ((size_t)s * T + t) * 3 * C + h * hs;
                    double a[64], max = -INFINITY, sum = 0;
                    for (int j = 0; j <= t; j++) {
                        const double *k = r->qkv + ((size_t)s * T + j) * 3 * C + C + h * hs;
                        a[j] = 0;
                        for (int i = 0; i < hs; i++) a[j] += q[i] * k[i] / sqrt((double)hs);
                        max = fmax(max, a[j]);
                    }
                    for (int j = 0; j <= t; j++) sum += a[j] = exp(a[j] - max);
                    for (int i = 0; i < hs; i++) {
                        double y = 0;
                        for (int j = 0; j <= t; j++) {
                            const double *v = r->qkv + ((size_t)s * T + j) * 3 * C + 2 * C;
                            y += a[j] / sum * v[h * hs + i];
                        }
                        r->atty[((size_t)s * T + t) * C + h * hs + i] = y;
                    }
                }
        linear(r->x, r->atty, b->projw, b->projb, BT, C, C, 1);
        layernorm(r->ln, r->x, b->ln2w, b->ln2b, BT, C);
        linear(r->fc, r->ln, b->fcw, b->fcb, BT, C, 4 * C, 0);
        for (size_t i = 0; i < (size_t)BT * 4 * C; i++) r->fc[i] = gelu(r->fc[i]);
        linear(r->x, r->fc, b->fcpw, b->fcpb, BT, 4 * C, C, 1);
    }
    layernorm(r->ln, r->x, r->lnfw, r->lnfb, BT, C);
    linear(r->logits, r->ln, r->wte, NULL, BT, C, V, 0);
    double loss = 0;
    for (int i = 0; i < BT; i++) {
        const double *z = r->logits + (size_t)i * V;
        double max = z[0], sum = 0;
        for (int v = 1; v < V; v++) max = fmax(max, z[v]);
        for (int v = 0; v < V; v++) sum += exp(z[v] - max);
        loss += (log(sum) + max - z[r->targets[i]]) / BT;
    }
    return loss;
}

/* ---- one stage of every layer on a one-device world ------------------ */

typedef struct {
    const tm_model *m;
    const float *params;        /* full layout */
    const int *tokens, *targets;
    int rows;
    float *grads, *logits;      /* out: full layout; (rows, V) */
    double loss;                /* out: the mean over the rows */
} stage_job;

static int stage_run(tm_device *dev, void *arg)
{
    stage_job *j = arg;
    tm_gemm_thread_init();
    tm_mesh mesh;
    TM_CHECK(tm_mesh_create(dev, 1, 1, 1, &mesh));
    tm_stage s;
    tm_stage_acts a = {0};
    float *dlogits = NULL;
    int st = tm_stage_create(&s, dev, mesh.tp_comm, j->m, 0, j->m->n_layers, 0);
    if (st == TM_OK) st = tm_stage_acts_alloc(&s, j->rows, &a);
    if (st == TM_OK) {
        dlogits = tm_device_alloc(dev, (size_t)j->rows * V * sizeof(float), TM_TAG_ACTIVATION);
        if (dlogits == NULL) st = TM_ENOMEM;
    }
    if (st == TM_OK) {
        tm_stage_shard_from(&s, j->params, s.params);
        memset(s.grads, 0, s.n_params * sizeof(float));
        memcpy(a.input, j->tokens, (size_t)j->rows * sizeof(int));
        st = tm_stage_forward(&s, &a);
    }
    if (st == TM_OK) {
        memcpy(j->logits, a.output, (size_t)j->rows * V * sizeof(float));
        tm_layer_ctx c = tm_stage_ctx(&s, j->rows);
        double sum = 0;
        st = j->m->loss(&s.layer[s.n - 1], &c, dlogits, a.output, j->targets, j->rows,
                        1.0f / (float)j->rows, &sum, NULL);
        j->loss = sum / j->rows;
    }
    if (st == TM_OK) st = tm_stage_backward(&s, &a, dlogits, NULL, NULL, NULL);
    if (st == TM_OK) tm_stage_shard_to(&s, s.grads, j->grads, 1);
    tm_device_free(dev, dlogits);
    if (a.block != NULL) tm_stage_acts_free(&s, &a);
    tm_stage_destroy(&s);
    tm_mesh_destroy(&mesh);
    return st;
}

static void run_one_device(tm_device_fn fn, void *arg)
{
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = 1;
    wc.mem_cap = 16 << 20;
    tm_world *w;
    cr_assert_eq(tm_world_create(&w, &wc), TM_OK, "%s", tm_error_message());
    int st = tm_world_run(w, fn, arg);
    cr_assert_eq(st, TM_OK, "%s", tm_world_error(w));
    tm_world_destroy(w);
}

/* Worst relative error of got against want, each judged against the
 * larger of |want| and a hundredth of the tensor's largest |want|. */
static double rel_err(const float *got, const double *want, size_t n, const char *name,
                      double tol)
{
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    double floor_ = fmax(1e-2 * scale, 1e-30);
    for (size_t i = 0; i < n; i++) {
        double err = fabs(got[i] - want[i]) / fmax(fabs(want[i]), floor_);
        if (!isfinite(got[i])) err = INFINITY;
        cr_expect(err <= tol, "%s[%zu]: got %.9g, want %.9g (rel err %.2e)", name, i, got[i],
                  want[i], err);
        worst = fmax(worst, err);
    }
    return worst;
}

enum { GL = 2, GH = 2, GC = 8, GT = 5, GB = 2, GBT = GB * GT };

Test(gpt, loss_and_every_gradient_match_a_double_reference, .timeout = 120)
{
    tm_model m = make_gpt(GL, GH, GC, GT);
    float *params = test_alloc(m.n_params * 4), *grads = test_alloc(m.n_params * 4);
    float *logits = test_alloc((size_t)GBT * V * 4), *window = test_alloc((size_t)GT * V * 4);
    double *fd = test_alloc(m.n_params * 8);
    spread_params(&m, params);
    /* Token 7 repeats within and across sequences; 255 and 0 too. */
    const int tokens[GBT] = {7, 200, 7, 0, 255, 13, 7, 7, 99, 42};
    const int targets[GBT] = {200, 7, 0, 255, 13, 7, 7, 99, 42, 1};
    stage_job j = {&m, params, tokens, targets, GBT, grads, logits, 0};
    run_one_device(stage_run, &j);

    ref_gpt r;
    ref_init(&r, &m, params, GB, tokens, targets);
    double want = ref_forward(&r);
    cr_expect(fabs(j.loss - want) <= FWD_TOL * want, "loss %.9g, reference %.9g", j.loss, want);
    printf("gpt: loss %.9g, reference %.9g (rel err %.2e)\n", j.loss, want,
           fabs(j.loss - want) / want);
    printf("gpt: logits max rel err %.2e\n",
           rel_err(logits, r.logits, (size_t)GBT * V, "logits", FWD_TOL));
    /* The generation's uncached forward computes the same logits. */
    uint8_t bytes[GT];
    for (int t = 0; t < GT; t++) bytes[t] = (uint8_t)tokens[GT + t];
    cr_assert_eq(tm_generate_logits(&m, params, bytes, GT, window), TM_OK);
    printf("gpt: tm_generate_logits max rel err %.2e\n",
           rel_err(window, r.logits + (size_t)GT * V, (size_t)GT * V, "window logits", FWD_TOL));

    for (size_t i = 0; i < m.n_params; i++) {
        double x0 = r.p[i];
        r.p[i] = x0 + FD_STEP;
        double up = ref_forward(&r);
        r.p[i] = x0 - FD_STEP;
        double down = ref_forward(&r);
        r.p[i] = x0;
        fd[i] = (up - down) / (2 * FD_STEP);
    }
    double kind_worst[3] = {0};
    const char *kinds[3] = {"embedding", "block", "head"};
    for (int i = 0; i < m.n_tensors; i++) {
        const tm_tensor *t = &m.tensors[i];
        size_t n = (size_t)t->shape[0] * t->shape[1];
        double e = rel_err(grads + t->off, fd + t->off, n, t->name, GRAD_TOL);
        const char *kind = m.layers[t->layer].kind->name;
        printf("gpt: [%-9s] %-36s max rel err %.2e\n", kind, t->name, e);
        for (int k = 0; k < 3; k++)
            if (strcmp(kind, kinds[k]) == 0) kind_worst[k] = fmax(kind_worst[k], e);
    }
    for (int k = 0; k < 3; k++) printf("gpt: %-9s max rel err %.2e\n", kinds[k], kind_worst[k]);
    /* The keys' bias: a constant added to a row of scores, which the
     * softmax does not see — exactly zero by design (strategies/gpt.c). */
    for (int l = 0; l < GL; l++) {
        char name[TM_NAME_LEN];
        snprintf(name, sizeof name, "transformer.h.%d.attn.c_attn.bias", l);
        const tm_tensor *t = &m.tensors[tm_model_find(&m, name)];
        for (int c = 0; c < GC; c++) {
            cr_expect(grads[t->off + GC + c] == 0.0f, "%s k[%d]: %g", name, c,
                      grads[t->off + GC + c]);
            cr_expect(grads[t->off + c] != 0.0f && grads[t->off + 2 * GC + c] != 0.0f,
                      "%s: the q and v parts have gradients", name);
        }
    }
    ref_free(&r);
    free(params), free(grads), free(logits), free(window), free(fd);
    tm_model_destroy(&m);
}

/* ---- initialisation, names, shapes ----------------------------------- */

Test(gpt, init_follows_nanogpt)
{
    enum { L = 3, C = 64, T = 64 };
    tm_model m = make_gpt(L, 4, C, T);
    float *a = test_alloc(m.n_params * 4), *b = test_alloc(m.n_params * 4), *c = test_alloc(m.n_params * 4);
    tm_gpt_init(&m, a, 5);
    tm_gpt_init(&m, b, 5);
    tm_gpt_init(&m, c, 6);
    cr_expect(memcmp(a, b, m.n_params * 4) == 0, "the same seed, another model");
    size_t same = 0, random = 0;
    for (int i = 0; i < m.n_tensors; i++) {
        const tm_tensor *t = &m.tensors[i];
        size_t n = (size_t)t->shape[0] * t->shape[1];
        const float *w = a + t->off;
        if (ends_with(t->name, ".bias") || strstr(t->name, "ln_") != NULL) {
            float want = ends_with(t->name, ".bias") ? 0.0f : 1.0f;
            for (size_t k = 0; k < n; k++)
                cr_expect(w[k] == want, "%s[%zu] = %g, want %g", t->name, k, w[k], want);
            continue;
        }
        double want = ends_with(t->name, ".c_proj.weight") ? 0.02 / sqrt(2.0 * L) : 0.02;
        double sum = 0, sq = 0;
        size_t within = 0;
        for (size_t k = 0; k < n; k++) {
            sum += w[k];
            sq += (double)w[k] * w[k];
            within += fabs(w[k]) <= want;
            same += w[k] == c[t->off + k];
        }
        random += n;
        double mean = sum / n, std = sqrt(sq / n - mean * mean);
        /* n >= 4096 draws: the std within 5%, the mean within 4 standard
         * errors, and a normal's 68.3% within one std (a uniform's: 57.7%). */
        cr_expect(fabs(std / want - 1) < 0.05, "%s: std %.5f, want %.5f", t->name, std, want);
        cr_expect(fabs(mean) < 4 * want / sqrt((double)n), "%s: mean %.2e", t->name, mean);
        cr_expect(fabs((double)within / n - 0.6827) < 0.025, "%s: %.3f within one std", t->name,
                  (double)within / n);
        printf("gpt: init %-34s n %6zu std %.5f (want %.5f) mean %+.1e\n", t->name, n, std, want,
               mean);
    }
    cr_expect_lt(same, random / 100, "seeds 5 and 6 share %zu of %zu draws", same, random);
    /* Each tensor draws from its own stream: wpe does not repeat wte. */
    const tm_tensor *wte = &m.tensors[tm_model_find(&m, "transformer.wte.weight")];
    const tm_tensor *wpe = &m.tensors[tm_model_find(&m, "transformer.wpe.weight")];
    cr_expect(memcmp(a + wte->off, a + wpe->off, 16 * sizeof(float)) != 0);
    free(a), free(b), free(c);
    tm_model_destroy(&m);
}

Test(gpt, names_shapes_and_parameter_count_are_nanogpts)
{
    enum { L = 2, C = 8, T = 5 };
    tm_model m = make_gpt(L, 2, C, T);
    typedef struct {
        const char *name;
        int ndim, rows, cols;
    } spec;
    spec want[4 + 12 * L] = {{"transformer.wte.weight", 2, V, C},
                             {"transformer.wpe.weight", 2, T, C}};
    int n = 2;
    for (int l = 0; l < L; l++) {
        struct { const char *suffix; int ndim, rows, cols; } block[12] = {
            {"ln_1.weight", 1, C, 1},         {"ln_1.bias", 1, C, 1},
            {"attn.c_attn.weight", 2, 3 * C, C}, {"attn.c_attn.bias", 1, 3 * C, 1},
            {"attn.c_proj.weight", 2, C, C},  {"attn.c_proj.bias", 1, C, 1},
            {"ln_2.weight", 1, C, 1},         {"ln_2.bias", 1, C, 1},
            {"mlp.c_fc.weight", 2, 4 * C, C}, {"mlp.c_fc.bias", 1, 4 * C, 1},
            {"mlp.c_proj.weight", 2, C, 4 * C}, {"mlp.c_proj.bias", 1, C, 1}};
        for (int k = 0; k < 12; k++) {
            char *name = test_alloc(TM_NAME_LEN);
            snprintf(name, TM_NAME_LEN, "transformer.h.%d.%s", l, block[k].suffix);
            want[n++] = (spec){name, block[k].ndim, block[k].rows, block[k].cols};
        }
    }
    want[n++] = (spec){"transformer.ln_f.weight", 1, C, 1};
    want[n++] = (spec){"transformer.ln_f.bias", 1, C, 1};
    cr_assert_eq(m.n_tensors, n, "%d tensors (lm_head.weight is wte, not a tensor)", m.n_tensors);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const tm_tensor *t = &m.tensors[i];
        cr_expect_str_eq(t->name, want[i].name);
        cr_expect(t->ndim == want[i].ndim && t->shape[0] == want[i].rows &&
                      t->shape[1] == want[i].cols,
                  "%s: ndim %d shape (%d, %d)", t->name, t->ndim, t->shape[0], t->shape[1]);
        /* Weight decay on the 2-D tensors only (nanoGPT's optimizer groups). */
        cr_expect_eq(t->decay, want[i].ndim == 2, "%s: decay %d", t->name, t->decay);
        cr_expect_eq(t->off, off, "%s at %zu, want %zu", t->name, t->off, off);
        off += (size_t)want[i].rows * want[i].cols;
    }
    for (int i = 2; i < 2 + 12 * L; i++) free((char *)want[i].name);
    /* nanoGPT's count: 256 C + T C + L (12 C² + 13 C) + 2 C, wte once. */
    cr_expect_eq(m.n_params, (size_t)V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C);
    cr_expect_eq(m.n_params, off);
    /* The layers: the embedding, a block each, the head sharing wte. */
    cr_assert_eq(m.n_layers, L + 2);
    cr_expect_str_eq(m.layers[0].kind->name, "embedding");
    cr_expect_str_eq(m.layers[L + 1].kind->name, "head");
    const tm_layer *head = &m.layers[L + 1];
    cr_expect_eq(head->tensor[head->n_tensors - 1], m.layers[0].tensor[0], "the head ties wte");
    cr_expect(m.tokens && m.in_width == 1 && m.rows_per_sample == T && m.n_classes == V);
    /* And what the checkpoints skip from nanoGPT's state_dict. */
    cr_expect(m.ignores("lm_head.weight") && m.ignores("transformer.h.1.attn.bias"));
    cr_expect(!m.ignores("transformer.h.1.attn.c_attn.bias"));
    tm_model_destroy(&m);
}

Test(gpt, bad_configurations_name_their_flag)
{
    struct { tm_gpt_config g; const char *flag; } cases[] = {
        {{0, 2, 8, 5, 0}, "--layers"},     {{65, 2, 8, 5, 0}, "--layers"},
        {{1, 0, 8, 5, 0}, "--heads"},      {{1, 3, 8, 5, 0}, "--d-model must be a multiple of --heads"},
        {{1, 2, 0, 5, 0}, "--d-model"},    {{1, 2, 8, 0, 0}, "--context"},
        {{1, 2, 8, 16385, 0}, "--context"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *why = tm_gpt_check(&cases[i].g);
        cr_expect(why != NULL && strstr(why, cases[i].flag) != NULL, "case %zu: %s", i,
                  why ? why : "(accepted)");
        tm_model m;
        cr_expect_eq(tm_gpt_model(&m, &cases[i].g), TM_EINVAL, "case %zu built", i);
    }
    cr_expect_null(tm_gpt_check(&(tm_gpt_config){64, 4, 128, 16384, 0}));
}

/* ---- generation -------------------------------------------------------- */

enum { NL = 2, NH = 2, NC = 16, NT = 8 };

typedef struct {
    uint8_t bytes[512];
    int n;
} sink;

static void collect(void *ctx, uint8_t b)
{
    sink *s = ctx;
    cr_assert_lt(s->n, (int)sizeof s->bytes);
    s->bytes[s->n++] = b;
}

static sink generate(const tm_model *m, const float *params, const char *prompt, int tokens,
                     double temperature, int top_k, uint64_t seed)
{
    sink s = {.n = 0};
    tm_generate_config g = {.model = m, .params = params, .prompt = (const uint8_t *)prompt,
                            .prompt_len = strlen(prompt), .tokens = tokens,
                            .temperature = temperature, .top_k = top_k, .seed = seed,
                            .mem_cap = 16 << 20, .emit = collect, .ctx = &s};
    tm_generate_stats stats;
    char error[1024];
    cr_assert_eq(tm_generate(&g, &stats, error, sizeof error), TM_OK, "%s", error);
    cr_expect_eq(stats.tokens, tokens);
    cr_expect_eq(s.n, tokens);
    cr_expect(tokens == 0 || stats.modeled_s > 0, "modeled %g s", stats.modeled_s);
    return s;
}

/* The uncached logits of the last position after prompt + the first i
 * generated bytes, over the last T of them (the sliding window). */
static void window_logits(const tm_model *m, const float *params, const char *prompt,
                          const sink *s, int i, float *logits)
{
    uint8_t seq[600];
    size_t n = strlen(prompt);
    memcpy(seq, prompt, n);
    memcpy(seq + n, s->bytes, (size_t)i);
    n += (size_t)i;
    int T = tm_gpt_of(m)->block_size, len = n < (size_t)T ? (int)n : T;
    float all[NT * V];
    cr_assert_eq(tm_generate_logits(m, params, seq + n - len, len, all), TM_OK);
    memcpy(logits, all + (size_t)(len - 1) * V, V * sizeof(float));
}

/* The rank of byte b among logits (0: the largest), counting only bytes
 * clearly above it (by more than tol, the paths' rounding). */
static int rank_of(const float *logits, int b, float tol)
{
    int above = 0;
    for (int v = 0; v < V; v++) above += logits[v] > logits[b] + tol;
    return above;
}

Test(gpt, greedy_generation_with_the_cache_equals_the_uncached_argmax, .timeout = 60)
{
    tm_model m = make_gpt(NL, NH, NC, NT);
    float *params = test_alloc(m.n_params * 4), logits[V];
    spread_params(&m, params);
    /* A short prompt (the cache fills, then the window slides past T), one
     * of T - 1 bytes (one cached step, then the slide), one of exactly T
     * (the slide at once) and one longer than T (only its last T bytes
     * condition). */
    const char *prompts[] = {"abc", "1234567", "12345678", "a prompt past T"};
    for (int p = 0; p < 4; p++) {
        sink s = generate(&m, params, prompts[p], 24, 0.0, 0, 1);
        int clear = 0;
        for (int i = 0; i < s.n; i++) {
            window_logits(&m, params, prompts[p], &s, i, logits);
            int best = 0, second = -1;
            for (int v = 1; v < V; v++)
                if (logits[v] > logits[best]) best = v;
            for (int v = 0; v < V; v++)
                if (v != best && (second < 0 || logits[v] > logits[second])) second = v;
            /* Exactly the argmax where it is clear; within the two paths'
             * rounding of it otherwise. */
            if (logits[best] - logits[second] > 1e-4f) {
                clear++;
                cr_expect_eq(s.bytes[i], best, "prompt %d byte %d: %d, argmax %d", p, i,
                             s.bytes[i], best);
            } else {
                cr_expect_eq(rank_of(logits, s.bytes[i], 1e-4f), 0, "prompt %d byte %d", p, i);
            }
        }
        cr_expect_geq(clear, s.n - 2, "only %d of %d steps had a clear argmax", clear, s.n);
    }
    free(params);
    tm_model_destroy(&m);
}

Test(gpt, sampling_is_seeded_and_top_k_keeps_the_k_largest, .timeout = 60)
{
    tm_model m = make_gpt(NL, NH, NC, NT);
    float *params = test_alloc(m.n_params * 4), logits[V];
    /* nanoGPT's initialisation: logits close together, so sampling at
     * temperature 1 spreads over many bytes. */
    tm_gpt_init(&m, params, 3);
    sink a = generate(&m, params, "\n", 40, 1.0, 0, 7);
    sink b = generate(&m, params, "\n", 40, 1.0, 0, 7);
    sink c = generate(&m, params, "\n", 40, 1.0, 0, 8);
    cr_expect(memcmp(a.bytes, b.bytes, 40) == 0, "the same seed gave other text");
    cr_expect(memcmp(a.bytes, c.bytes, 40) != 0, "seeds 7 and 8 gave the same text");
    int distinct = 0;
    for (int v = 0; v < V; v++) distinct += memchr(a.bytes, v, 40) != NULL;
    cr_expect_gt(distinct, 20, "40 draws at temperature 1 hit only %d bytes", distinct);

    /* top_k 1 at any temperature is greedy. */
    sink greedy = generate(&m, params, "\n", 40, 0.0, 0, 7);
    sink top1 = generate(&m, params, "\n", 40, 1.0, 1, 9);
    cr_expect(memcmp(greedy.bytes, top1.bytes, 40) == 0, "top_k 1 is not greedy");

    /* top_k 3: every draw among its window's three largest logits. */
    sink top3 = generate(&m, params, "\n", 40, 1.0, 3, 7);
    int not_first = 0;
    for (int i = 0; i < top3.n; i++) {
        window_logits(&m, params, "\n", &top3, i, logits);
        int r = rank_of(logits, top3.bytes[i], 1e-5f);
        cr_expect_lt(r, 3, "byte %d (%d) ranks %d", i, top3.bytes[i], r);
        not_first += r > 0;
    }
    cr_expect_gt(not_first, 0, "top_k 3 always drew the largest");
    free(params);
    tm_model_destroy(&m);
}

Test(gpt, generation_refuses_bad_configurations, .timeout = 60)
{
    tm_model m = make_gpt(1, 1, 4, 4);
    float *params = test_alloc(m.n_params * 4);
    tm_gpt_init(&m, params, 1);
    sink s = {.n = 0};
    struct { int tokens; double temperature; int top_k; size_t prompt_len; const char *says; }
    cases[] = {{-1, 0, 0, 1, "--tokens"},   {5, -0.5, 0, 1, "--temperature"},
               {5, NAN, 0, 1, "--temperature"}, {5, 1, 257, 1, "--top-k"},
               {5, 1, -1, 1, "--top-k"},    {5, 1, 0, 0, "prompt"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tm_generate_config g = {.model = &m, .params = params, .prompt = (const uint8_t *)"x",
                                .prompt_len = cases[i].prompt_len, .tokens = cases[i].tokens,
                                .temperature = cases[i].temperature, .top_k = cases[i].top_k,
                                .seed = 1, .mem_cap = 1 << 20, .emit = collect, .ctx = &s};
        tm_generate_stats stats;
        char error[1024];
        cr_expect_eq(tm_generate(&g, &stats, error, sizeof error), TM_EINVAL, "case %zu", i);
        cr_expect(strstr(error, cases[i].says) != NULL, "case %zu: %s", i, error);
    }
    cr_expect_eq(s.n, 0, "bytes emitted by a refused configuration");
    sink none = generate(&m, params, "x", 0, 0.8, 0, 1);
    cr_expect_eq(none.n, 0);
    /* The uncached forward takes 1 to T bytes. */
    float logits[5 * V];
    cr_expect_eq(tm_generate_logits(&m, params, (const uint8_t *)"abcde", 5, logits), TM_EINVAL);
    cr_expect_eq(tm_generate_logits(&m, params, (const uint8_t *)"", 0, logits), TM_EINVAL);
    free(params);
    tm_model_destroy(&m);
}

/* The same text from every mesh: the KV cache split by heads over tp, the
 * blocks in pp stages, the draws in one place from one stream; and the
 * logits each draw was made from within 1e-4 of one device's. */
Test(gpt, generation_on_a_mesh_prints_what_one_device_prints, .timeout = 120)
{
    enum { ML = 4, MH = 4, MC = 32, MT = 16, TOKENS = 40, ROWS = 12 };
    tm_model m = make_gpt(ML, MH, MC, MT);
    float *params = test_alloc(m.n_params * 4);
    tm_gpt_init(&m, params, 5);
    static const int meshes[][2] = {{1, 1}, {2, 1}, {4, 1}, {1, 2}, {1, 4}, {2, 2}, {4, 2}};
    sink one = {.n = 0};
    float one_logits[ROWS * V], got_logits[ROWS * V];
    for (size_t k = 0; k < sizeof meshes / sizeof meshes[0]; k++) {
        sink s = {.n = 0};
        /* A prompt of 10 bytes: the cache fills, then the window slides. */
        tm_generate_config g = {.model = &m, .params = params,
                                .prompt = (const uint8_t *)"0123456789", .prompt_len = 10,
                                .tokens = TOKENS, .temperature = 1.0, .seed = 11,
                                .mem_cap = 16 << 20, .tp = meshes[k][0], .pp = meshes[k][1],
                                .logits = k == 0 ? one_logits : got_logits,
                                .logits_rows = ROWS, .emit = collect, .ctx = &s};
        tm_generate_stats stats;
        char error[1024];
        cr_assert_eq(tm_generate(&g, &stats, error, sizeof error), TM_OK, "tp %d pp %d: %s",
                     meshes[k][0], meshes[k][1], error);
        cr_expect_eq(s.n, TOKENS);
        cr_expect_gt(stats.modeled_s, 0);
        if (k == 0) {
            one = s;
            continue;
        }
        cr_expect(memcmp(s.bytes, one.bytes, TOKENS) == 0, "tp %d pp %d: other text",
                  meshes[k][0], meshes[k][1]);
        double worst = 0;
        for (int i = 0; i < ROWS * V; i++)
            worst = fmax(worst, fabs((double)got_logits[i] - one_logits[i]));
        cr_expect_leq(worst, 1e-4, "tp %d pp %d: logits differ by %g", meshes[k][0],
                      meshes[k][1], worst);
    }
    /* Meshes the model cannot take: heads 4 over tp 3, 5 stages of 4 blocks. */
    static const int bad[][2] = {{3, 1}, {1, 5}};
    for (size_t k = 0; k < 2; k++) {
        tm_generate_config g = {.model = &m, .params = params, .prompt = (const uint8_t *)"x",
                                .prompt_len = 1, .tokens = 4, .seed = 1, .mem_cap = 16 << 20,
                                .tp = bad[k][0], .pp = bad[k][1], .emit = collect, .ctx = &one};
        tm_generate_stats stats;
        char error[1024];
        cr_expect_eq(tm_generate_check(&g), TM_EINVAL);
        cr_expect_eq(tm_generate(&g, &stats, error, sizeof error), TM_EINVAL);
        cr_expect(strstr(error, k == 0 ? "--heads 4" : "--pp 5") != NULL, "%s", error);
    }
    free(params);
    tm_model_destroy(&m);
}

/* ---- the terminal escaper ---------------------------------------------- */

/* The bytes through a tm_escaper (flushed at the end), as a string. */
static char *escape(const uint8_t *in, size_t n, int flush)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    tm_escaper e = {{0}, 0, 0};
    for (size_t i = 0; i < n; i++) tm_escaper_put(&e, in[i], f);
    if (flush) tm_escaper_flush(&e, f);
    fclose(f);
    return buf;
}

/* The length of the valid UTF-8 sequence at s (decoded to its code point:
 * no overlong form, surrogate or value past U+10FFFF), or 0. */
static int utf8_valid_len(const uint8_t *s, size_t n)
{
    int len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    if (len == 0 || s[0] >= 0xf8 || (size_t)len > n) return 0;
    uint32_t cp = s[0] & (0x7f >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return 0;
    return len;
}

/* What a terminal may be given: printable characters, \n and \t as they
 * are; C0 controls, DEL, C1 controls (U+0080-U+009F) and every byte of
 * no valid character as \xNN. */
static char *escape_ref(const uint8_t *s, size_t n)
{
    char *out = test_alloc(4 * n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int len = s[i] < 0x80 ? 1 : utf8_valid_len(s + i, n - i);
        int control = len == 1 ? (s[i] < 0x20 && s[i] != '\n' && s[i] != '\t') || s[i] == 0x7f
                               : len == 2 && s[i] == 0xc2 && s[i + 1] < 0xa0;
        if (len == 0 || control) {
            k += (size_t)sprintf(out + k, "\\x%02x", s[i]);
            i++;
            continue;
        }
        memcpy(out + k, s + i, (size_t)len);
        k += (size_t)len;
        i += (size_t)len;
    }
    out[k] = '\0';
    return out;
}

Test(gpt, escaper_passes_printable_utf8_and_escapes_the_rest)
{
    struct { const char *in; const char *want; } cases[] = {
        {"plain text\n\twith tab", "plain text\n\twith tab"},
        {"bell\a cr\r esc\x1b[31m nul", "bell\\x07 cr\\x0d esc\\x1b[31m nul"},
        {"del\x7f", "del\\x7f"},
        {"\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
         "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
        {"c1 \xc2\x80 \xc2\x9b \xc2\x9f nbsp \xc2\xa0",
         "c1 \\xc2\\x80 \\xc2\\x9b \\xc2\\x9f nbsp \xc2\xa0"},
        {"overlong \xc0\xaf \xc1\xbf \xe0\x80\xaf \xf0\x80\x80\xaf",
         "overlong \\xc0\\xaf \\xc1\\xbf \\xe0\\x80\\xaf \\xf0\\x80\\x80\\xaf"},
        {"surrogate \xed\xa0\x80 last-before \xed\x9f\xbf",
         "surrogate \\xed\\xa0\\x80 last-before \xed\x9f\xbf"},
        {"max \xf4\x8f\xbf\xbf past \xf4\x90\x80\x80 \xf5\x80\x80\x80",
         "max \xf4\x8f\xbf\xbf past \\xf4\\x90\\x80\\x80 \\xf5\\x80\\x80\\x80"},
        {"stray \x80\xbf lead-then-ascii \xe2\x82z",
         "stray \\x80\\xbf lead-then-ascii \\xe2\\x82z"},
        {"lead-then-lead \xe2\xe2\x82\xac", "lead-then-lead \\xe2\xe2\x82\xac"},
        {"\xff\xfe", "\\xff\\xfe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = escape((const uint8_t *)cases[i].in, strlen(cases[i].in), 1);
        cr_expect_str_eq(got, cases[i].want, "case %zu", i);
        free(got);
    }
    /* A NUL byte (strlen cannot carry it). */
    char *got = escape((const uint8_t *)"a\0b", 3, 1);
    cr_expect_str_eq(got, "a\\x00b");
    free(got);
}

Test(gpt, escaper_holds_an_incomplete_tail_until_flushed)
{
    const uint8_t euro[3] = {0xe2, 0x82, 0xac};
    char *held = escape(euro, 2, 0), *flushed = escape(euro, 2, 1), *whole = escape(euro, 3, 0);
    cr_expect_str_eq(held, "", "an incomplete character was written early: %s", held);
    cr_expect_str_eq(flushed, "\\xe2\\x82");
    cr_expect_str_eq(whole, "\xe2\x82\xac");
    free(held), free(flushed), free(whole);
    /* Flushing with nothing pending, or twice, writes nothing. */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    tm_escaper e = {{0}, 0, 0};
    tm_escaper_flush(&e, f);
    tm_escaper_put(&e, 0xf0, f);
    tm_escaper_flush(&e, f);
    tm_escaper_flush(&e, f);
    tm_escaper_put(&e, 'x', f);
    fclose(f);
    cr_expect_str_eq(buf, "\\xf0x");
    free(buf);
}

Test(gpt, escaper_agrees_with_a_reference_on_random_bytes)
{
    /* Bytes drawn mostly from the interesting ones: ASCII, controls, leads
     * and continuation bytes at the edges of the valid ranges. */
    const uint8_t pool[] = {'a', '\n', '\t', 0x00, 0x1b, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                            0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xef, 0xf0, 0xf4,
                            0xf5, 0xff};
    int mismatches = 0;
    for (int trial = 0; trial < 20000; trial++) {
        uint8_t s[12];
        size_t n = 1 + (size_t)((test_uniform() + 1) * 5.99);
        for (size_t i = 0; i < n; i++) {
            double u = (test_uniform() + 1) / 2;
            s[i] = u < 0.8 ? pool[(size_t)(u / 0.8 * sizeof pool)] : (uint8_t)(u * 1e6);
        }
        char *got = escape(s, n, 1), *want = escape_ref(s, n);
        if (strcmp(got, want) != 0 && mismatches++ < 5)
            cr_expect_str_eq(got, want, "trial %d (%zu bytes)", trial, n);
        free(got), free(want);
    }
    cr_expect_eq(mismatches, 0, "%d of 20000 random strings escaped differently", mismatches);
}
