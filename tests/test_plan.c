/* Suite `plan`: how models are cut into pipeline stages (units, balance by
 * FLOPs, --stages) and how a tensor-parallel rank holds each layer (the
 * shard descriptors and their places in the stage's flat buffers), for the
 * MLP (the cuts and Megatron splits it always had) and the GPT (stages
 * count blocks, the tied wte, no tensor parallelism yet). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/gpt.h"
#include "strategies/plan.h"
#include "tests/models.h"

static void expect_first(const int *got, const int *want, int pp, const char *what)
{
    for (int s = 0; s <= pp; s++)
        cr_expect_eq(got[s], want[s], "%s: first[%d] = %d, want %d", what, s, got[s], want[s]);
}

/* ---- units ---------------------------------------------------------------- */

Test(plan, mlp_units_are_its_layers)
{
    const tm_model *m = mlp_model("12,16,8,10", TM_ACT_RELU);
    int unit[TM_MAX_LAYERS];
    cr_assert_eq(tm_model_units(m, unit), 3);
    for (int l = 0; l < 3; l++) cr_expect_eq(unit[l], l);
}

Test(plan, gpt_units_are_its_blocks)
{
    const tm_model *m = gpt_model(3, 2, 8, 4);
    int unit[TM_MAX_LAYERS];
    /* embedding, h.0, h.1, h.2, head: the embedding joins the first
     * block's unit, the head the last's. */
    cr_assert_eq(tm_model_units(m, unit), 3);
    const int want[5] = {0, 0, 1, 2, 2};
    for (int l = 0; l < 5; l++) cr_expect_eq(unit[l], want[l], "layer %d", l);
}

/* ---- balance -------------------------------------------------------------- */

/* The reference split, written out recursively: the first u units in s
 * stages minimising the largest stage's cost, the last stage starting at
 * the earliest unit that achieves it. Returns that cost; starts[] gets the
 * stages' first units. */
static double split_ref(const double *cost, int s, int u, int *starts)
{
    if (s == 0) return u == 0 ? 0 : 1e300;
    double best = 1e300;
    int at = -1, tmp[TM_MAX_LAYERS + 1];
    for (int j = s - 1; j < u; j++) {
        double tail = 0;
        for (int k = j; k < u; k++) tail += cost[k];
        double head = split_ref(cost, s - 1, j, tmp);
        double worst = head > tail ? head : tail;
        if (worst < best) best = worst, at = j;
    }
    split_ref(cost, s - 1, at, starts);
    starts[s - 1] = at;
    return best;
}

Test(plan, mlp_balance_minimises_the_largest_stage_earliest_cut_on_ties)
{
    struct { const char *model; int pp; int first[5]; } cases[] = {
        /* 784·256 outweighs the rest: it stands alone. */
        {"784,256,128,10", 2, {0, 1, 3}},
        {"784,256,128,10", 3, {0, 1, 2, 3}},
        {"784,256,128,10", 1, {0, 3}},
        /* Equal layers: the last stage starts as early as a best split
         * allows (2,2), (1,1,2), (1,2). */
        {"8,8,8,8,8", 2, {0, 2, 4}},
        {"8,8,8,8,8", 3, {0, 1, 2, 4}},
        {"8,8,8,8", 2, {0, 1, 3}},
        /* The small head layer rides with its neighbour. */
        {"64,64,64,64,8", 3, {0, 1, 2, 4}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const tm_model *m = mlp_model(cases[i].model, TM_ACT_RELU);
        int first[TM_MAX_LAYERS + 1];
        cr_assert_eq(tm_stages_balance(m, cases[i].pp, first), TM_OK, "%s", tm_error_message());
        char what[64];
        snprintf(what, sizeof what, "%s pp %d", cases[i].model, cases[i].pp);
        expect_first(first, cases[i].first, cases[i].pp, what);
    }
}

Test(plan, mlp_balance_agrees_with_the_reference_on_random_models)
{
    unsigned x = 12345;
    for (int trial = 0; trial < 60; trial++) {
        int n = 2 + trial % 7;
        char spec[256];
        int len = 0;
        double cost[TM_MAX_LAYERS];
        int w[TM_MAX_LAYERS + 1];
        for (int i = 0; i <= n; i++) {
            x = x * 1103515245u + 12345u;
            /* Few distinct widths, so that ties happen. */
            w[i] = 1 + (int)(x >> 16) % 4 * 16;
            len += snprintf(spec + len, sizeof spec - (size_t)len, "%s%d", i ? "," : "", w[i]);
        }
        for (int i = 0; i < n; i++) cost[i] = (double)w[i] * w[i + 1];
        const tm_model *m = mlp_model(spec, TM_ACT_RELU);
        test_model_count--; /* reuse the slot: only plans are taken from it */
        for (int pp = 1; pp <= n; pp++) {
            int first[TM_MAX_LAYERS + 1], want[TM_MAX_LAYERS + 1];
            cr_assert_eq(tm_stages_balance(m, pp, first), TM_OK);
            split_ref(cost, pp, n, want);
            want[pp] = n;
            char what[300];
            snprintf(what, sizeof what, "%s pp %d", spec, pp);
            expect_first(first, want, pp, what);
        }
        tm_model_destroy((tm_model *)m);
    }
}

Test(plan, gpt_balance_counts_blocks_with_embedding_first_and_head_last)
{
    /* C 16, T 16: a block costs 24 C² + 4 T C = 7168 FLOPs a row, the
     * head 2 C 256 = 8192, the embedding C = 16. With the head the last
     * unit weighs 15360, so two stages cut 3 + 1 blocks. */
    const tm_model *m = gpt_model(4, 2, 16, 16);
    int first[TM_MAX_LAYERS + 1];
    cr_assert_eq(tm_stages_balance(m, 2, first), TM_OK, "%s", tm_error_message());
    expect_first(first, (int[]){0, 4, 6}, 2, "gpt pp 2");
    cr_assert_eq(tm_stages_balance(m, 4, first), TM_OK);
    expect_first(first, (int[]){0, 2, 3, 4, 6}, 4, "gpt pp 4");
    cr_assert_eq(tm_stages_balance(m, 1, first), TM_OK);
    expect_first(first, (int[]){0, 6}, 1, "gpt pp 1");
    /* The same cut by the reference over the units' FLOPs. */
    double cost[4] = {0};
    int unit[TM_MAX_LAYERS], want[5];
    tm_model_units(m, unit);
    for (int l = 0; l < m->n_layers; l++)
        cost[unit[l]] += m->layers[l].kind->flops(&m->layers[l], 1);
    cr_expect(cost[0] == 7184 && cost[1] == 7168 && cost[3] == 15360, "unit costs %g %g %g %g",
              cost[0], cost[1], cost[2], cost[3]);
    split_ref(cost, 2, 4, want);
    cr_expect_eq(want[1], 3, "the reference cuts before block %d", want[1]);

    cr_expect_eq(tm_stages_balance(m, 5, first), TM_EINVAL);
    const char *msg = tm_error_message();
    cr_expect(strstr(msg, "--pp 5") && strstr(msg, "4 stages") && strstr(msg, "block"), "%s", msg);
    cr_expect_eq(tm_stages_balance(m, 0, first), TM_EINVAL);
}

/* ---- --stages ------------------------------------------------------------- */

Test(plan, stages_parse_counts_layers_or_blocks)
{
    const tm_model *mlp = mlp_model("12,16,16,16,10", TM_ACT_RELU), *gpt = gpt_model(4, 2, 8, 4);
    int first[TM_MAX_LAYERS + 1];
    cr_assert_eq(tm_stages_parse("2,1,1", mlp, 3, first), TM_OK, "%s", tm_error_message());
    expect_first(first, (int[]){0, 2, 3, 4}, 3, "mlp 2,1,1");
    cr_assert_eq(tm_stages_parse("1,3", gpt, 2, first), TM_OK, "%s", tm_error_message());
    expect_first(first, (int[]){0, 2, 6}, 2, "gpt 1,3");
    cr_assert_eq(tm_stages_parse("2,2", gpt, 2, first), TM_OK);
    expect_first(first, (int[]){0, 3, 6}, 2, "gpt 2,2");
    cr_assert_eq(tm_stages_parse("1,1,1,1", gpt, 4, first), TM_OK);
    expect_first(first, (int[]){0, 2, 3, 4, 6}, 4, "gpt 1,1,1,1");

    struct { const tm_model *m; const char *spec; int pp; const char *says; } bad[] = {
        {mlp, "2,1", 2, "adds up to 3 layers but the model has 4"},
        {gpt, "2,1", 2, "adds up to 3 blocks but the model has 4"},
        {gpt, "2,1,1", 2, "more than the pipeline's 2 stages"},
        {gpt, "4", 2, "lists 1 stages but the pipeline has 2"},
        {gpt, "0,4", 2, "positive block counts"},
        {mlp, "2,x", 2, "positive layer counts"},
        {mlp, "-1,5", 2, "positive layer counts"},
        {mlp, "", 1, "lists 0 stages"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(tm_stages_parse(bad[i].spec, bad[i].m, bad[i].pp, first), TM_EINVAL,
                     "\"%s\" accepted", bad[i].spec);
        cr_expect(strstr(tm_error_message(), bad[i].says) != NULL, "\"%s\": %s", bad[i].spec,
                  tm_error_message());
    }
}

/* ---- shards --------------------------------------------------------------- */

/* The placement rules every plan keeps: each stored shard follows the
 * previous one, a layer stores [own_off, own_off + own_len), counts are
 * the shard's elements, the rank's floats add up. */
static void expect_contiguous(const tm_model *m, const tm_layer_plan *p, int n, size_t n_params,
                              const char *what)
{
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cr_expect_eq(p[i].own_off, off, "%s layer %d own_off %zu, want %zu", what, i,
                     p[i].own_off, off);
        for (int k = 0; k < p[i].layer->n_tensors; k++) {
            const tm_shard *s = &p[i].shard[k];
            const tm_tensor *t = &m->tensors[p[i].layer->tensor[k]];
            cr_expect_eq(s->count, tm_shard_count(t, s), "%s %s count", what, t->name);
            if (!s->owned) continue;
            cr_expect_eq(s->off, off, "%s %s at %zu, want %zu", what, t->name, s->off, off);
            off += s->count;
        }
        cr_expect_eq(p[i].own_len, off - p[i].own_off, "%s layer %d own_len", what, i);
    }
    cr_expect_eq(n_params, off, "%s: %zu floats, shards add up to %zu", what, n_params, off);
}

static void expect_shard(const tm_shard *s, tm_shard_dim dim, int lo, int len, const char *what)
{
    cr_expect(s->dim == dim && (dim == TM_SHARD_WHOLE || (s->lo == lo && s->len == len)),
              "%s: dim %d lo %d len %d, want dim %d lo %d len %d", what, s->dim, s->lo, s->len,
              dim, lo, len);
}

Test(plan, mlp_one_device_holds_the_full_layout)
{
    const tm_model *m = mlp_model("12,16,8,10", TM_ACT_GELU);
    tm_layer_plan p[3];
    size_t n;
    cr_assert_eq(tm_stage_plan(m, 0, 3, 1, 0, p, &n), TM_OK, "%s", tm_error_message());
    cr_expect_eq(n, m->n_params);
    cr_expect_eq(n, (size_t)16 * 13 + 8 * 17 + 10 * 9);
    expect_contiguous(m, p, 3, n, "tp 1");
    for (int l = 0; l < 3; l++)
        for (int k = 0; k < 2; k++) {
            const tm_tensor *t = &m->tensors[p[l].layer->tensor[k]];
            expect_shard(&p[l].shard[k], TM_SHARD_WHOLE, 0, 0, t->name);
            cr_expect_eq(p[l].shard[k].off, t->off, "%s: the stage's place is the model's",
                         t->name);
        }
    cr_expect(p[0].in_w == 12 && p[0].out_w == 16 && p[2].in_w == 8 && p[2].out_w == 10);
}

/* 12 -> 16 -> 8 -> 10 in one stage: layer 0 column split (rows of weight
 * and bias), layer 1 its row partner (weight columns, bias whole), layer 2
 * left alone: column split and gathered, 10 rows padded to a multiple of
 * tp (tp 4: 3 + 3 + 3 + 1 real rows). */
Test(plan, mlp_pairs_columns_with_rows_and_gathers_the_last_layer)
{
    const tm_model *m = mlp_model("12,16,8,10", TM_ACT_RELU);
    int tps[2] = {2, 4};
    for (int i = 0; i < 2; i++) {
        int tp = tps[i], l0 = 16 / tp, l2 = (10 + tp - 1) / tp;
        size_t split_total[6] = {0};
        for (int t = 0; t < tp; t++) {
            tm_layer_plan p[3];
            size_t n;
            char what[64];
            snprintf(what, sizeof what, "tp %d rank %d", tp, t);
            cr_assert_eq(tm_stage_plan(m, 0, 3, tp, t, p, &n), TM_OK, "%s", tm_error_message());
            expect_contiguous(m, p, 3, n, what);
            expect_shard(&p[0].shard[0], TM_SHARD_ROWS, t * l0, l0, "column weight");
            expect_shard(&p[0].shard[1], TM_SHARD_ROWS, t * l0, l0, "column bias");
            expect_shard(&p[1].shard[0], TM_SHARD_COLS, t * l0, l0, "row weight");
            expect_shard(&p[1].shard[1], TM_SHARD_WHOLE, 0, 0, "row bias");
            expect_shard(&p[2].shard[0], TM_SHARD_ROWS, t * l2, l2, "gathered weight");
            expect_shard(&p[2].shard[1], TM_SHARD_ROWS, t * l2, l2, "gathered bias");
            cr_expect_eq(p[1].shard[1].count, 8, "%s: the row layer's bias is whole", what);
            /* Widths: the column half passes its share on, the row half
             * takes it and gives whole rows, the gathered layer too. */
            cr_expect(p[0].in_w == 12 && p[0].out_w == l0, "%s: layer 0 %d -> %d", what,
                      p[0].in_w, p[0].out_w);
            cr_expect(p[1].in_w == l0 && p[1].out_w == 8, "%s: layer 1 %d -> %d", what, p[1].in_w,
                      p[1].out_w);
            cr_expect(p[2].in_w == 8 && p[2].out_w == 10, "%s: layer 2 %d -> %d", what, p[2].in_w,
                      p[2].out_w);
            cr_expect_geq(p[2].grad_w, l2 * tp, "%s: gradient rows hold the padded width", what);
            for (int l = 0, j = 0; l < 3; l++)
                for (int k = 0; k < 2; k++, j++) split_total[j] += p[l].shard[k].count;
        }
        /* Over the ranks the splits cover each tensor once, the gathered
         * layer with its padding rows. */
        const size_t want[6] = {16 * 12, 16, 8 * 16, (size_t)8 * tp, (size_t)l2 * tp * 8,
                                (size_t)l2 * tp};
        for (int j = 0; j < 6; j++)
            cr_expect_eq(split_total[j], want[j], "tp %d tensor %d: %zu floats over the ranks",
                         tp, j, split_total[j]);
    }
}

Test(plan, mlp_stage_boundaries_decide_the_pairs)
{
    const tm_model *m = mlp_model("12,16,16,16,10", TM_ACT_RELU);
    tm_layer_plan p[4];
    size_t n;
    /* Four layers in one stage: two column/row pairs, nothing gathered. */
    cr_assert_eq(tm_stage_plan(m, 0, 4, 2, 1, p, &n), TM_OK);
    tm_shard_dim dims[4] = {TM_SHARD_ROWS, TM_SHARD_COLS, TM_SHARD_ROWS, TM_SHARD_COLS};
    for (int l = 0; l < 4; l++) cr_expect_eq(p[l].shard[0].dim, dims[l], "layer %d", l);
    cr_expect_eq(p[3].out_w, 10);
    /* A stage of layers 1-2 pairs them; a stage of layer 3 alone gathers. */
    cr_assert_eq(tm_stage_plan(m, 1, 3, 2, 0, p, &n), TM_OK);
    cr_expect(p[0].shard[0].dim == TM_SHARD_ROWS && p[1].shard[0].dim == TM_SHARD_COLS);
    cr_assert_eq(tm_stage_plan(m, 3, 4, 2, 1, p, &n), TM_OK);
    expect_shard(&p[0].shard[0], TM_SHARD_ROWS, 5, 5, "lone layer");
    expect_contiguous(m, p, 1, n, "lone layer");
    /* A pair's width that tp does not divide is refused, naming it. */
    const tm_model *odd = mlp_model("12,10,8", TM_ACT_RELU);
    cr_expect_eq(tm_stage_plan(odd, 0, 2, 4, 0, p, &n), TM_EINVAL);
    const char *msg = tm_error_message();
    cr_expect(strstr(msg, "layer 0") && strstr(msg, "10 outputs") && strstr(msg, "tp=4"), "%s",
              msg);
    /* Alone in its stage the same layer is gathered, padding allowed. */
    cr_expect_eq(tm_stage_plan(odd, 0, 1, 4, 3, p, &n), TM_OK, "%s", tm_error_message());
    expect_shard(&p[0].shard[0], TM_SHARD_ROWS, 9, 3, "padded lone layer");
}

/* ---- the GPT -------------------------------------------------------------- */

Test(plan, gpt_tied_wte_is_stored_once_per_stage)
{
    const tm_model *m = gpt_model(2, 2, 8, 5);
    tm_layer_plan p[4];
    size_t n;
    cr_assert_eq(tm_stage_plan(m, 0, 4, 1, 0, p, &n), TM_OK, "%s", tm_error_message());
    cr_expect_eq(n, m->n_params, "one stage holds the model once");
    expect_contiguous(m, p, 4, n, "gpt");
    const tm_shard *emb = &p[0].shard[0], *head = &p[3].shard[2];
    cr_expect(emb->owned && !head->owned, "wte owned by the embedding (%d), not the head (%d)",
              emb->owned, head->owned);
    cr_expect_eq(head->off, emb->off, "the head reads wte at %zu, the embedding at %zu",
                 head->off, emb->off);
    cr_expect_eq(head->count, (size_t)256 * 8);
    /* The head stores only ln_f. */
    cr_expect_eq(p[3].own_len, (size_t)2 * 8);
    for (int l = 0; l < 4; l++)
        for (int k = 0; k < p[l].layer->n_tensors; k++) {
            const tm_tensor *t = &m->tensors[p[l].layer->tensor[k]];
            expect_shard(&p[l].shard[k], TM_SHARD_WHOLE, 0, 0, t->name);
            cr_expect_eq(p[l].shard[k].off, t->off, "%s: the stage's place is the model's",
                         t->name);
        }
    cr_expect(p[0].in_w == 1 && p[0].out_w == 8 && p[3].in_w == 8 && p[3].out_w == 256);
    /* A stage without the embedding stores its own copy of wte. */
    cr_assert_eq(tm_stage_plan(m, 2, 4, 1, 0, p, &n), TM_OK);
    cr_expect(p[1].shard[2].owned, "the head's stage must hold wte");
    expect_contiguous(m, p, 2, n, "last stage");
    cr_expect_eq(n, (size_t)(12 * 8 * 8 + 13 * 8) + 2 * 8 + 256 * 8, "block, ln_f, wte: %zu", n);
}

Test(plan, gpt_tensor_parallelism_needs_heads_it_divides)
{
    const tm_model *m = gpt_model(2, 2, 8, 5);
    tm_layer_plan p[4];
    size_t n;
    cr_expect_eq(tm_stage_plan(m, 0, 4, 2, 0, p, &n), TM_OK, "tp 2: %s", tm_error_message());
    int tps[2] = {3, 4};
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(tm_stage_plan(m, 0, 4, tps[i], 0, p, &n), TM_EINVAL, "tp %d planned", tps[i]);
        char want[32];
        snprintf(want, sizeof want, "--tp %d", tps[i]);
        const char *msg = tm_error_message();
        cr_expect(strstr(msg, "--heads 2") && strstr(msg, want), "%s", msg);
    }
}
