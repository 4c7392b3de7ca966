/* Suite `attn`: the transformer kernels (kernels/ops_attn.c, ops_embed.c)
 * against double-precision references, every backward against central
 * finite differences of its reference (as tests/test_ops.c does), on shapes
 * that miss the attention kernel's 32-row blocks; the causal mask's exact
 * zeros, the vocabulary range of the embedding, the add-into contract and
 * the cost each call reports; selective recomputation's forward and
 * backward give the same bits as keeping the weights. */
#include "kernels/attn_simd.h"
#include "kernels/cost.h"
#include "kernels/isa.h"
#include "kernels/ops.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/models.h"

/* fp32 kernels against exact double math: a forward is a short chain of
 * roundings, a gradient sums up to a few hundred terms (T = 70). */
#define FWD_TOL 1e-5
#define GRAD_TOL 1e-4
/* Central differences in double: truncation ~h², rounding ~1e-16/h. */
#define FD_STEP 1e-5

/* n random floats in [-scale, scale) into f and, widened, into d. */
static void draw(float *f, double *d, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++) {
        f[i] = (float)(scale * test_uniform());
        if (d != NULL) d[i] = f[i];
    }
}

static void fill_nan(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = NAN;
}

/* Relative error against the larger of |want| and a hundredth of the
 * tensor's largest |want| (an entry that cancels to nearly zero is judged
 * on the tensor's scale); every entry checked, the worst printed. */
static double check(const char *what, const float *got, const double *want, size_t n,
                    double tol)
{
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    double floor_ = fmax(1e-2 * scale, 1e-30);
    for (size_t i = 0; i < n; i++) {
        double err = fabs(got[i] - want[i]) / fmax(fabs(want[i]), floor_);
        if (isnan(got[i])) err = INFINITY;
        cr_expect(err <= tol, "%s[%zu]: got %.9g, want %.9g (rel err %.2e)", what, i, got[i],
                  want[i], err);
        worst = fmax(worst, err);
    }
    printf("attn: %-34s max rel err %.2e\n", what, worst);
    return worst;
}

/* The add-into contract: a second backward call adds the same again. */
static void expect_doubled(const char *what, const float *twice, const float *once, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cr_expect(fabsf(twice[i] - 2.0f * once[i]) <= 1e-5f * (fabsf(once[i]) + 1e-3f),
                  "%s[%zu]: second call gave %.9g, want 2 x %.9g", what, i, twice[i], once[i]);
}

/* ---- cost reports ---- */

typedef struct {
    int calls;
    double flops, bytes;           /* totals */
    double last_flops, last_bytes; /* the last call's */
} cost_log;

static cost_log costs;

static void log_cost(void *ctx, double flops, double bytes)
{
    cost_log *c = ctx;
    c->calls++;
    c->flops += flops;
    c->bytes += bytes;
    c->last_flops = flops;
    c->last_bytes = bytes;
}

static void cost_start(void)
{
    costs = (cost_log){0};
    tm_cost_set_hook(log_cost, &costs);
}

static void cost_stop(void) { tm_cost_set_hook(NULL, NULL); }

/* ---- attention ---- */

typedef struct {
    int B, T, C, NH;
    double *qkv;  /* (B, T, 3C) */
    double *dout; /* (B, T, C) */
    double *out;  /* (B, T, C) the reference's */
    double *att;  /* (B, NH, T, T) */
} attn_case;

/* Head h of sequence b in double: its weights into att and outputs into
 * out; returns its part of the loss sum(dout · out). Every other head is
 * independent of this head's inputs, so a finite difference needs only
 * this one. */
static double attn_head(attn_case *c, int b, int h)
{
    int T = c->T, C = c->C, hs = C / c->NH;
    double scale = 1.0 / sqrt((double)hs), loss = 0;
    double *a = c->att + ((size_t)b * c->NH + h) * T * T;
    for (int t = 0; t < T; t++) {
        const double *q = c->qkv + ((size_t)b * T + t) * 3 * C + h * hs;
        double *row = a + (size_t)t * T, max = -INFINITY, sum = 0;
        for (int j = 0; j < T; j++) {
            row[j] = 0;
            if (j > t) continue;
            const double *k = c->qkv + ((size_t)b * T + j) * 3 * C + C + h * hs;
            for (int i = 0; i < hs; i++) row[j] += q[i] * k[i];
            row[j] *= scale;
            max = fmax(max, row[j]);
        }
        for (int j = 0; j <= t; j++) sum += row[j] = exp(row[j] - max);
        for (int j = 0; j <= t; j++) row[j] /= sum;
        for (int i = 0; i < hs; i++) {
            double y = 0;
            for (int j = 0; j <= t; j++)
                y += row[j] * c->qkv[((size_t)b * T + j) * 3 * C + 2 * C + h * hs + i];
            size_t o = ((size_t)b * T + t) * C + h * hs + i;
            c->out[o] = y;
            loss += c->dout[o] * y;
        }
    }
    return loss;
}

static void attn_ref(attn_case *c)
{
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++) attn_head(c, b, h);
}

/* d loss / d qkv by central differences, head by head. */
static void attn_fd(attn_case *c, double *grad)
{
    int T = c->T, C = c->C, hs = C / c->NH;
    for (size_t i = 0; i < (size_t)c->B * T * 3 * C; i++) {
        int b = (int)(i / ((size_t)T * 3 * C)), h = (int)(i % (size_t)C) / hs;
        double x0 = c->qkv[i];
        c->qkv[i] = x0 + FD_STEP;
        double up = attn_head(c, b, h);
        c->qkv[i] = x0 - FD_STEP;
        double down = attn_head(c, b, h);
        c->qkv[i] = x0;
        grad[i] = (up - down) / (2 * FD_STEP);
    }
}

static void attention_case(int B, int T, int C, int NH)
{
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C, natt = (size_t)B * NH * T * T;
    float *qkv = test_alloc(nqkv * 4), *out = test_alloc(nout * 4), *att = test_alloc(natt * 4);
    float *dout = test_alloc(nout * 4), *dqkv = test_alloc(nqkv * 4), *dqkv1 = test_alloc(nqkv * 4);
    float *scratch = test_alloc((size_t)T * T * 4);
    attn_case c = {B, T, C, NH, test_alloc(nqkv * 8), test_alloc(nout * 8), test_alloc(nout * 8),
                   test_alloc(natt * 8)};
    double *grad = test_alloc(nqkv * 8);
    char what[64];
    draw(qkv, c.qkv, nqkv, 1.0);
    draw(dout, c.dout, nout, 1.0);

    /* NaN everywhere first: the kernel must write every weight, the masked
     * ones as exact zeros, and read nothing it has not written. */
    fill_nan(out, nout);
    fill_nan(att, natt);
    tm_attention_forward(out, att, qkv, B, T, C, NH);
    attn_ref(&c);
    snprintf(what, sizeof what, "attention out B%d T%d C%d H%d", B, T, C, NH);
    check(what, out, c.out, nout, FWD_TOL);
    snprintf(what, sizeof what, "attention att B%d T%d C%d H%d", B, T, C, NH);
    check(what, att, c.att, natt, FWD_TOL);
    size_t nonzero = 0;
    for (size_t bh = 0; bh < (size_t)B * NH; bh++)
        for (int t = 0; t < T; t++)
            for (int j = t + 1; j < T; j++) {
                float a = att[(bh * T + t) * T + j];
                nonzero += a != 0.0f || signbit(a);
            }
    cr_expect_eq(nonzero, 0, "%zu weights above the diagonal are not +0 (T %d)", nonzero, T);

    /* dqkv is overwritten, every element of it (ops.h): NaN beforehand
     * must not survive, and a second call gives the same bits. */
    fill_nan(scratch, (size_t)T * T);
    fill_nan(dqkv, nqkv);
    tm_attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
    attn_fd(&c, grad);
    snprintf(what, sizeof what, "attention dqkv B%d T%d C%d H%d", B, T, C, NH);
    check(what, dqkv, grad, nqkv, GRAD_TOL);
    memcpy(dqkv1, dqkv, nqkv * 4);
    fill_nan(scratch, (size_t)T * T);
    tm_attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
    cr_expect(memcmp(dqkv, dqkv1, nqkv * 4) == 0, "%s: a second call did not overwrite alike",
              what);

    free(qkv), free(out), free(att), free(dout), free(dqkv), free(dqkv1), free(scratch);
    free(c.qkv), free(c.dout), free(c.out), free(c.att), free(grad);
}

Test(attn, attention_matches_finite_differences_on_odd_shapes)
{
    /* B, T, C, NH: one position; a few; past one 32-row block by one;
     * past two with a tail; head sizes 1 to 5. */
    const int shapes[][4] = {{2, 1, 6, 2}, {3, 5, 12, 3}, {2, 33, 15, 3}, {2, 70, 8, 4},
                             {1, 64, 5, 5}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        attention_case(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
}

Test(attn, one_position_attends_only_to_itself)
{
    /* Position 0 sees only itself: its output is its own v, whatever q
     * and k hold, and its weight is exactly 1. */
    enum { T = 40, C = 6, NH = 2 };
    static float qkv[T * 3 * C], out[T * C], att[NH * T * T];
    draw(qkv, NULL, T * 3 * C, 3.0);
    tm_attention_forward(out, att, qkv, 1, T, C, NH);
    for (int h = 0; h < NH; h++) cr_expect_eq(att[h * T * T], 1.0f, "head %d", h);
    for (int i = 0; i < C; i++)
        cr_expect_eq(out[i], qkv[2 * C + i], "out[0][%d] %.9g, v %.9g", i, out[i], qkv[2 * C + i]);
}

Test(attn, attention_reports_its_cost)
{
    enum { B = 2, T = 70, C = 8, NH = 2, HS = C / NH };
    static float qkv[B * T * 3 * C], out[B * T * C], att[B * NH * T * T], dout[B * T * C],
        dqkv[B * T * 3 * C], scratch[T * T];
    draw(qkv, NULL, B * T * 3 * C, 1.0);
    draw(dout, NULL, B * T * C, 1.0);
    double kept = (double)B * NH * T * (T + 1) / 2, all = (double)B * NH * T * T;

    /* The softmax's own work last (max, subtract, exp, sum, scale per kept
     * score; every score read and written); before it the GEMMs, which
     * skip most of the masked half but never the kept one. */
    cost_start();
    tm_attention_forward(out, att, qkv, B, T, C, NH);
    cost_stop();
    cr_expect_eq(costs.last_flops, 5 * kept, "softmax flops %g", costs.last_flops);
    cr_expect_eq(costs.last_bytes, 8 * all, "softmax bytes %g", costs.last_bytes);
    double gemm = costs.flops - costs.last_flops;
    cr_expect(gemm >= 2 * 2 * HS * kept && gemm < 2 * 2 * HS * all,
              "forward GEMM flops %g outside [%g, %g)", gemm, 4 * HS * kept, 4 * HS * all);

    cost_start();
    tm_attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
    cost_stop();
    cr_expect_eq(costs.last_flops, 4 * kept, "softmax backward flops %g", costs.last_flops);
    cr_expect_eq(costs.last_bytes, 12 * all, "softmax backward bytes %g", costs.last_bytes);
    gemm = costs.flops - costs.last_flops;
    cr_expect(gemm >= 4 * 2 * HS * kept && gemm < 4 * 2 * HS * all,
              "backward GEMM flops %g outside [%g, %g)", gemm, 8 * HS * kept, 8 * HS * all);
}

/* Selective recomputation's pair: the forward that keeps no weights gives
 * the same output bits, and the backward that recomputes them the same
 * gradient bits, charging the scores' products and the softmax once more
 * (the shapes miss the 32-row blocks). */
Test(attn, recomputed_weights_give_the_same_bits)
{
    const int shapes[][4] = {{2, 33, 15, 3}, {2, 70, 8, 4}, {1, 5, 12, 3}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int B = shapes[i][0], T = shapes[i][1], C = shapes[i][2], NH = shapes[i][3];
        size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C,
               natt = (size_t)B * NH * T * T, tt = (size_t)T * T;
        float *qkv = test_alloc(nqkv * 4), *dout = test_alloc(nout * 4);
        float *out = test_alloc(nout * 4), *out1 = test_alloc(nout * 4);
        float *att = test_alloc(natt * 4), *dqkv = test_alloc(nqkv * 4);
        float *dqkv1 = test_alloc(nqkv * 4), *scratch = test_alloc(2 * tt * 4);
        draw(qkv, NULL, nqkv, 1.0);
        draw(dout, NULL, nout, 1.0);
        tm_attention_forward(out, att, qkv, B, T, C, NH);
        fill_nan(scratch, tt);
        fill_nan(out1, nout);
        tm_attention_forward_drop(out1, scratch, qkv, B, T, C, NH);
        cr_expect(memcmp(out, out1, nout * 4) == 0, "B%d T%d C%d H%d: forward differs", B, T, C,
                  NH);
        tm_attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
        fill_nan(scratch, 2 * tt);
        fill_nan(dqkv1, nqkv);
        cost_start();
        tm_attention_backward_recompute(dqkv1, scratch, dout, qkv, B, T, C, NH);
        cost_stop();
        cr_expect(memcmp(dqkv, dqkv1, nqkv * 4) == 0, "B%d T%d C%d H%d: backward differs", B,
                  T, C, NH);
        double recomputed = costs.flops;
        cost_start();
        tm_attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
        cost_stop();
        /* The scores over the causal blocks of 32 rows, and 5 per kept
         * score. */
        double hs = C / NH, scores = 0, kept = (double)B * NH * T * (T + 1) / 2;
        for (int r0 = 0; r0 < T; r0 += 32) {
            int r1 = r0 + 32 < T ? r0 + 32 : T;
            scores += 2.0 * (r1 - r0) * r1 * hs;
        }
        double want = B * NH * scores + 5 * kept;
        cr_expect_eq(recomputed - costs.flops, want, "B%d T%d C%d H%d: %g more flops, want %g",
                     B, T, C, NH, recomputed - costs.flops, want);
        free(qkv), free(dout), free(out), free(out1), free(att), free(dqkv), free(dqkv1);
        free(scratch);
    }
}

/* ---- embedding ---- */

typedef struct {
    int BT, T, C, v0, V;
    const int *tokens;
    double *wte, *wpe; /* wpe NULL: no positions */
    double *dout, *out;
} embed_case;

static double embed_ref(embed_case *c)
{
    double loss = 0;
    for (int r = 0; r < c->BT; r++) {
        int row = c->tokens[r] - c->v0, held = row >= 0 && row < c->V;
        for (int j = 0; j < c->C; j++) {
            double y = (held ? c->wte[(size_t)row * c->C + j] : 0) +
                       (c->wpe ? c->wpe[(size_t)(r % c->T) * c->C + j] : 0);
            c->out[(size_t)r * c->C + j] = y;
            loss += c->dout[(size_t)r * c->C + j] * y;
        }
    }
    return loss;
}

static void embed_fd(embed_case *c, double *x, size_t n, double *grad)
{
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_STEP;
        double up = embed_ref(c);
        x[i] = x0 - FD_STEP;
        double down = embed_ref(c);
        x[i] = x0;
        grad[i] = (up - down) / (2 * FD_STEP);
    }
}

/* B = 3 sequences of T = 5 positions, C = 19 (a vector block and a tail);
 * this rank holds rows [v0, v0 + V) = [3, 10) of the vocabulary; the
 * tokens repeat and fall on both sides of that range. */
enum { EB = 3, ET = 5, EC = 19, EV0 = 3, EV = 7, EBT = EB * ET };
static const int etokens[EBT] = {3, 9, 0, 5, 5, 12, 10, 2, 3, 3, 7, 255, 9, 4, 6};

static void embedding_case(int with_wpe)
{
    static float wte[EV * EC], wpe[ET * EC], dout[EBT * EC], out[EBT * EC];
    static float dwte[EV * EC], dwpe[ET * EC], dwte1[EV * EC], dwpe1[ET * EC];
    static double rwte[EV * EC], rwpe[ET * EC], rdout[EBT * EC], rout[EBT * EC], g[EV * EC];
    embed_case c = {EBT, ET, EC, EV0, EV, etokens, rwte, with_wpe ? rwpe : NULL, rdout, rout};
    const char *tag = with_wpe ? "" : " (wpe NULL)";
    char what[64];
    draw(wte, rwte, EV * EC, 1.0);
    draw(wpe, rwpe, ET * EC, 1.0);
    draw(dout, rdout, EBT * EC, 1.0);
    fill_nan(out, EBT * EC);

    tm_embedding_forward(out, etokens, wte, with_wpe ? wpe : NULL, EBT, ET, EC, EV0, EV);
    embed_ref(&c);
    snprintf(what, sizeof what, "embedding out%s", tag);
    check(what, out, rout, EBT * EC, FWD_TOL);
    /* A token outside [v0, v0 + V) gets its position alone, exactly (or
     * exact zeros without positions). */
    for (int r = 0; r < EBT; r++) {
        if (etokens[r] >= EV0 && etokens[r] < EV0 + EV) continue;
        for (int j = 0; j < EC; j++) {
            float want = with_wpe ? wpe[(r % ET) * EC + j] : 0.0f;
            cr_expect(out[r * EC + j] == want && !signbit(out[r * EC + j]) == !signbit(want),
                      "row %d (token %d) [%d]: %.9g, want %.9g", r, etokens[r], j,
                      out[r * EC + j], want);
        }
    }

    memset(dwte, 0, sizeof dwte);
    memset(dwpe, 0, sizeof dwpe);
    tm_embedding_backward(dwte, with_wpe ? dwpe : NULL, dout, etokens, EBT, ET, EC, EV0, EV);
    embed_fd(&c, rwte, EV * EC, g);
    snprintf(what, sizeof what, "embedding dwte%s", tag);
    check(what, dwte, g, EV * EC, GRAD_TOL);
    if (with_wpe) {
        embed_fd(&c, rwpe, ET * EC, g);
        check("embedding dwpe", dwpe, g, ET * EC, GRAD_TOL);
    } else {
        for (int i = 0; i < ET * EC; i++) cr_expect_eq(dwpe[i], 0.0f, "dwpe written");
    }
    memcpy(dwte1, dwte, sizeof dwte);
    memcpy(dwpe1, dwpe, sizeof dwpe);
    tm_embedding_backward(dwte, with_wpe ? dwpe : NULL, dout, etokens, EBT, ET, EC, EV0, EV);
    expect_doubled(what, dwte, dwte1, EV * EC);
    expect_doubled("embedding dwpe", dwpe, dwpe1, ET * EC);
}

Test(attn, embedding_matches_finite_differences_over_a_vocabulary_range)
{
    embedding_case(1);
}

Test(attn, embedding_without_positions)
{
    embedding_case(0);
}

Test(attn, embedding_backward_sums_repeated_tokens_in_row_order)
{
    /* Token 5 at rows 0, 1 and 2 of one sequence: dwte[5] is
     * ((0 + d0) + d1) + d2 in float, in that order, exactly. */
    enum { T = 4, C = 3, V = 8 };
    const int tokens[T] = {5, 5, 5, 1};
    const float dout[T * C] = {1e8f, 1, -2, 1, 0.5f, 3, -1e8f, 7, 1e-3f, 9, 9, 9};
    float dwte[V * C] = {0}, dwpe[T * C] = {0};
    tm_embedding_backward(dwte, dwpe, dout, tokens, T, T, C, 0, V);
    for (int j = 0; j < C; j++) {
        float want = ((0.0f + dout[j]) + dout[C + j]) + dout[2 * C + j];
        cr_expect_eq(dwte[5 * C + j], want, "dwte[5][%d] %.9g, want %.9g", j, dwte[5 * C + j],
                     want);
        cr_expect_eq(dwte[1 * C + j], dout[3 * C + j]);
        for (int t = 0; t < T; t++) cr_expect_eq(dwpe[t * C + j], dout[t * C + j]);
    }
    for (int v = 0; v < V; v++)
        for (int j = 0; j < C && v != 5 && v != 1; j++) cr_expect_eq(dwte[v * C + j], 0.0f);
}

Test(attn, embedding_reports_its_cost)
{
    static float wte[EV * EC], wpe[ET * EC], out[EBT * EC], dout[EBT * EC];
    double n = (double)EBT * EC;
    /* One add per element; reads of the wte and wpe rows, the output
     * written, one token id per row. */
    cost_start();
    tm_embedding_forward(out, etokens, wte, wpe, EBT, ET, EC, EV0, EV);
    cost_stop();
    cr_expect(costs.calls == 1 && costs.flops == n && costs.bytes == 4 * (3 * n + EBT),
              "forward: %d calls, %g flops, %g bytes", costs.calls, costs.flops, costs.bytes);
    /* Two adds per element, each gradient row read and written, dout read. */
    cost_start();
    tm_embedding_backward(wte, wpe, dout, etokens, EBT, ET, EC, EV0, EV);
    cost_stop();
    cr_expect(costs.calls == 1 && costs.flops == 2 * n && costs.bytes == 4 * (5 * n + EBT),
              "backward: %d calls, %g flops, %g bytes", costs.calls, costs.flops, costs.bytes);
}

/* ---- bias + residual, add in place ---- */

Test(attn, bias_residual_forward_matches_reference)
{
    enum { B = 7, C = 37 }; /* two vector blocks of 16 and a tail of 5 */
    static float out[B * C], res[B * C], bias[C], base[B * C];
    static double want[B * C], rout[B * C], rres[B * C], rbias[C];
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        draw(base, rout, B * C, 2.0);
        draw(res, rres, B * C, 2.0);
        draw(bias, rbias, C, 2.0);
        memcpy(out, base, sizeof out);
        cost_start();
        tm_bias_residual_forward(out, res, with_bias ? bias : NULL, B, C);
        cost_stop();
        for (int r = 0; r < B; r++)
            for (int j = 0; j < C; j++)
                want[r * C + j] = rout[r * C + j] + rres[r * C + j] + (with_bias ? rbias[j] : 0);
        check(with_bias ? "bias_residual out" : "bias_residual out (no bias)", out, want, B * C,
              FWD_TOL);
        double n = (double)B * C;
        cr_expect(costs.calls == 1 && costs.flops == (with_bias ? 2 : 1) * n &&
                      costs.bytes == 4 * (3 * n + C),
                  "bias %d: %d calls, %g flops, %g bytes", with_bias, costs.calls, costs.flops,
                  costs.bytes);
    }
}

Test(attn, add_inplace_is_exact_elementwise_sum)
{
    enum { N = 53 };
    static float d[N], dout[N], before[N];
    draw(d, NULL, N, 1e3);
    draw(dout, NULL, N, 1.0);
    memcpy(before, d, sizeof d);
    cost_start();
    tm_add_inplace(d, dout, N);
    cost_stop();
    /* One float addition per element: exactly the rounded double sum. */
    for (int i = 0; i < N; i++)
        cr_expect_eq(d[i], (float)((double)before[i] + dout[i]), "[%d] %.9g + %.9g = %.9g", i,
                     before[i], dout[i], d[i]);
    cr_expect(costs.calls == 1 && costs.flops == N && costs.bytes == 12.0 * N,
              "%d calls, %g flops, %g bytes", costs.calls, costs.flops, costs.bytes);
    tm_add_inplace(d, dout, 0); /* nothing to do */
    for (int i = 0; i < N; i++) cr_expect_eq(d[i], (float)((double)before[i] + dout[i]));
}

/* Every instruction set's softmax loops this CPU can run against the
 * reference loops (the generic set's, sums in double): rows of odd
 * lengths, exact zeros past each row's position, the backward too. */
Test(attn, softmax_every_isa_path_matches_the_reference)
{
    static const int Ts[] = {1, 5, 8, 33, 70, 128};
    for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++) {
        int T = Ts[k];
        size_t n = (size_t)T * T;
        float *ref = test_alloc(n * 4), *got = test_alloc(n * 4), *d0 = test_alloc(n * 4);
        float *dref = test_alloc(n * 4), *dgot = test_alloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            ref[i] = (float)(6 * test_uniform());
            d0[i] = (float)test_uniform();
        }
        memcpy(got, ref, n * 4);
        tm__softmax_causal_isa(TM_ISA_GENERIC, ref, T);
        memcpy(dref, d0, n * 4);
        tm__softmax_causal_backward_isa(TM_ISA_GENERIC, dref, ref, T);
        for (int i = 1; i < TM_ISA_COUNT; i++) {
            tm_isa isa = (tm_isa)i;
            if (!tm_isa_supported(isa)) continue;
            float *scores = test_alloc(n * 4);
            memcpy(scores, got, n * 4);
            tm__softmax_causal_isa(isa, scores, T);
            memcpy(dgot, d0, n * 4);
            tm__softmax_causal_backward_isa(isa, dgot, ref, T);
            for (int t = 0; t < T; t++)
                for (int j = 0; j < T; j++) {
                    size_t e = (size_t)t * T + j;
                    if (j > t) {
                        cr_expect(scores[e] == 0.0f && dgot[e] == 0.0f,
                                  "%s T %d [%d,%d]: not zero past the row", tm_isa_name(isa), T,
                                  t, j);
                        continue;
                    }
                    cr_expect(fabsf(scores[e] - ref[e]) <= 1e-6f * (fabsf(ref[e]) + 1e-3f),
                              "%s T %d att[%d,%d]: %.9g, reference %.9g", tm_isa_name(isa), T, t,
                              j, scores[e], ref[e]);
                    /* a (d - sum(a d)) cancels where d is near the sum:
                     * judged on the row's scale, d and a being at most 1. */
                    cr_expect(fabsf(dgot[e] - dref[e]) <= 1e-6f,
                              "%s T %d d[%d,%d]: %.9g, reference %.9g", tm_isa_name(isa), T, t, j,
                              dgot[e], dref[e]);
                }
            free(scores);
        }
        free(ref), free(got), free(d0), free(dref), free(dgot);
    }
}
