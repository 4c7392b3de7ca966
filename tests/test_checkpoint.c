/* Suite `checkpoint`: safetensors checkpoints of any model
 * (strategies/checkpoint.h): save and load round trips of the MLP and the
 * GPT with their names (layers.N, nanoGPT's transformer.*, optimizer
 * state) and metadata; a nanoGPT state_dict loading as weights; files of
 * another model, optimizer or corpus refused naming both sides; a new run
 * from any checkpoint's weights starting at step 0. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/status.h"
#include "strategies/checkpoint.h"
#include "strategies/data.h"
#include "strategies/gpt.h"
#include "strategies/safetensors.h"
#include "strategies/trainer.h"
#include "tests/models.h"

static char path[128];

static void make_path(void)
{
    snprintf(path, sizeof path, "/tmp/tm_ckpt_test_%ld.safetensors", (long)getpid());
}

static void remove_path(void) { unlink(path); }

/* A checkpoint at p, written as build/train writes one (tm_outfile). */
static int save(const char *p, const tm_model_state *m)
{
    tm_outfile *o;
    TM_CHECK(tm_outfile_open(&o, p));
    int st = tm_checkpoint_save(o, m);
    if (st != TM_OK) {
        tm_outfile_abandon(o);
        return st;
    }
    return tm_outfile_commit(o);
}

static uint32_t seed_ = 12345;

static float next_float(void)
{
    seed_ = seed_ * 1664525u + 1013904223u;
    return (float)(seed_ >> 8) * 0x1p-24f - 0.5f;
}

static tm_optim_config sgd(double momentum)
{
    return (tm_optim_config){TM_OPT_SGD, momentum, 5e-4, 0.9, 0.999, 1e-8};
}

static tm_optim_config adamw(void)
{
    return (tm_optim_config){TM_OPT_ADAMW, 0, 0.1, 0.9, 0.99, 1e-8};
}

static void set_meta(tm_model_meta *m, const char *key, const char *value)
{
    snprintf(m->key, sizeof m->key, "%s", key);
    snprintf(m->value, sizeof m->value, "%s", value);
}

/* A state with random parameters and optimizer buffers, a position and
 * (corpus != NULL) the data it was trained on. */
static tm_model_state random_state(const tm_model *m, tm_optim_config opt, const char *corpus)
{
    tm_model_state s;
    cr_assert_eq(tm_model_state_init(&s, m, &opt), TM_OK);
    for (size_t i = 0; i < s.n_params; i++) s.params[i] = next_float();
    for (int k = 0; k < s.n_opt_state; k++)
        for (size_t i = 0; i < s.n_params; i++) s.opt_state[k][i] = next_float();
    s.pos = (tm_train_position){.step = 1234, .epoch = 3, .epoch_step = 17,
                                .data_seed = 9007199254740993u};
    if (corpus != NULL) {
        set_meta(&s.data[0], "corpus_files", corpus);
        set_meta(&s.data[1], "corpus_bytes", "2600000");
        set_meta(&s.data[2], "corpus_hash", "0123456789abcdef");
        s.n_data = 3;
    }
    return s;
}

/* A fresh state of the same model, optimizer and data, to load into. */
static tm_model_state empty_like(const tm_model_state *s, tm_optim_config opt)
{
    tm_model_state e;
    cr_assert_eq(tm_model_state_init(&e, s->model, &opt), TM_OK);
    memcpy(e.data, s->data, sizeof e.data);
    e.n_data = s->n_data;
    return e;
}

static void expect_same_state(const tm_model_state *a, const tm_model_state *b)
{
    cr_expect(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0, "parameters differ");
    cr_assert_eq(a->n_opt_state, b->n_opt_state);
    for (int k = 0; k < a->n_opt_state; k++)
        cr_expect(memcmp(a->opt_state[k], b->opt_state[k], a->n_params * sizeof(float)) == 0,
                  "optimizer state %d differs", k);
    cr_expect(a->pos.step == b->pos.step && a->pos.epoch == b->pos.epoch &&
                  a->pos.epoch_step == b->pos.epoch_step && a->pos.data_seed == b->pos.data_seed,
              "position %ld/%d/%ld/%llu, want %ld/%d/%ld/%llu", b->pos.step, b->pos.epoch,
              b->pos.epoch_step, (unsigned long long)b->pos.data_seed, a->pos.step, a->pos.epoch,
              a->pos.epoch_step, (unsigned long long)a->pos.data_seed);
}

/* Every tensor of the model under its own name and shape, each state
 * buffer as optimizer.<name>.<state>, nothing else. */
static void expect_tensors(const tm_st_file *f, const tm_model *m, tm_optimizer kind, int n_state)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        const tm_st_info *x = tm_st_find(f, t->name);
        cr_expect_not_null(x, "no %s", t->name);
        if (x != NULL)
            cr_expect(x->dtype == TM_ST_F32 && x->ndim == t->ndim &&
                          x->shape[0] == (uint64_t)t->shape[0] &&
                          (t->ndim == 1 || x->shape[1] == (uint64_t)t->shape[1]),
                      "%s: ndim %d", t->name, x->ndim);
        for (int k = 0; k < n_state; k++) {
            char name[160];
            snprintf(name, sizeof name, "optimizer.%s.%s", t->name,
                     tm_optimizer_state_name(kind, k));
            cr_expect_not_null(tm_st_find(f, name), "no %s", name);
        }
    }
    cr_expect_eq(tm_st_count(f), m->n_tensors * (1 + n_state));
}

static void expect_meta(const tm_st_file *f, const char *key, const char *want)
{
    const char *got = tm_st_meta_get(f, key);
    cr_expect(got != NULL && strcmp(got, want) == 0, "__metadata__ %s: %s, want %s", key,
              got ? got : "(none)", want);
}

/* ---- round trips ---------------------------------------------------------- */

/* Saves s, resumes it into a fresh state (which must equal s), and returns
 * the file opened, its tensors checked. */
static tm_st_file *round_trip(const tm_model_state *s, tm_optim_config opt)
{
    tm_model_state e = empty_like(s, opt);
    cr_assert_eq(save(path, s), TM_OK, "%s", tm_error_message());
    int resumed = -1;
    cr_assert_eq(tm_checkpoint_load(path, &e, TM_LOAD_RESUME, &resumed), TM_OK, "%s",
                 tm_error_message());
    cr_expect_eq(resumed, 1);
    expect_same_state(s, &e);
    tm_model_state_free(&e);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK);
    expect_tensors(f, s->model, opt.kind, s->n_opt_state);
    return f;
}

Test(checkpoint, mlp_round_trip_for_every_optimizer, .init = make_path, .fini = remove_path)
{
    const tm_model *m = mlp_model("12,16,8,10", TM_ACT_GELU);
    tm_optim_config opts[3] = {sgd(0.9), sgd(0), adamw()};
    const char *states[3] = {"momentum_buffer", NULL, "exp_avg_sq"};
    for (int o = 0; o < 3; o++) {
        tm_model_state s = random_state(m, opts[o], NULL);
        tm_st_file *f = round_trip(&s, opts[o]);
        cr_expect_not_null(tm_st_find(f, "layers.2.bias"));
        if (states[o] != NULL) {
            char name[96];
            snprintf(name, sizeof name, "optimizer.layers.1.weight.%s", states[o]);
            cr_expect_not_null(tm_st_find(f, name), "no %s", name);
        }
        expect_meta(f, "format", "tinymesh");
        expect_meta(f, "model", "12,16,8,10");
        expect_meta(f, "activation", "gelu");
        expect_meta(f, "optimizer", o == 2 ? "adamw" : "sgd");
        expect_meta(f, "step", "1234");
        expect_meta(f, "epoch", "3");
        expect_meta(f, "epoch_step", "17");
        expect_meta(f, "data_seed", "9007199254740993");
        tm_safetensors_close(f);
        tm_model_state_free(&s);
    }
}

Test(checkpoint, gpt_round_trip_with_nanogpt_names, .init = make_path, .fini = remove_path)
{
    const tm_model *m = gpt_model(2, 2, 8, 5);
    tm_model_state s = random_state(m, adamw(), "art,cookie");
    tm_st_file *f = round_trip(&s, adamw());
    /* PyTorch's Linear layout and 1-D vectors, nanoGPT's keys. */
    const struct { const char *name; int ndim; uint64_t rows, cols; } some[] = {
        {"transformer.wte.weight", 2, 256, 8},
        {"transformer.wpe.weight", 2, 5, 8},
        {"transformer.h.1.attn.c_attn.weight", 2, 24, 8},
        {"transformer.h.1.attn.c_attn.bias", 1, 24, 0},
        {"transformer.h.0.mlp.c_fc.weight", 2, 32, 8},
        {"transformer.h.0.mlp.c_proj.weight", 2, 8, 32},
        {"transformer.ln_f.bias", 1, 8, 0},
        {"optimizer.transformer.h.0.ln_2.weight.exp_avg", 1, 8, 0},
        {"optimizer.transformer.wte.weight.exp_avg_sq", 2, 256, 8},
    };
    for (size_t i = 0; i < sizeof some / sizeof some[0]; i++) {
        const tm_st_info *x = tm_st_find(f, some[i].name);
        cr_expect(x != NULL && x->ndim == some[i].ndim && x->shape[0] == some[i].rows &&
                      (some[i].ndim == 1 || x->shape[1] == some[i].cols),
                  "%s", some[i].name);
    }
    cr_expect_null(tm_st_find(f, "lm_head.weight"), "the tied head is stored as wte only");
    const char *meta[][2] = {{"format", "tinymesh"}, {"model", "gpt"}, {"layers", "2"},
                             {"heads", "2"}, {"d_model", "8"}, {"context", "5"},
                             {"vocab", "256"}, {"optimizer", "adamw"}, {"step", "1234"},
                             {"corpus_files", "art,cookie"}, {"corpus_bytes", "2600000"},
                             {"corpus_hash", "0123456789abcdef"}};
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++)
        expect_meta(f, meta[i][0], meta[i][1]);
    tm_safetensors_close(f);
    tm_model_state_free(&s);
}

/* ---- files from elsewhere ---------------------------------------------- */

/* Writes the model's tensors from params under their names (and, extra,
 * more tensors), with no metadata: a state_dict saved from PyTorch. */
typedef struct {
    const char *name;
    int ndim;
    uint64_t shape[4];
} extra_tensor;

static void write_state_dict(const tm_model *m, const float *params, const extra_tensor *extra,
                             int n_extra, const float *extra_data)
{
    int n = m->n_tensors + n_extra;
    tm_st_tensor *t = calloc((size_t)n, sizeof *t);
    uint64_t(*shapes)[2] = calloc((size_t)m->n_tensors, sizeof *shapes);
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *x = &m->tensors[i];
        shapes[i][0] = (uint64_t)x->shape[0];
        shapes[i][1] = (uint64_t)x->shape[1];
        t[i] = (tm_st_tensor){x->name, TM_ST_F32, x->ndim, shapes[i], params + x->off};
    }
    for (int i = 0; i < n_extra; i++)
        t[m->n_tensors + i] = (tm_st_tensor){extra[i].name, TM_ST_F32, extra[i].ndim,
                                             extra[i].shape, extra_data};
    cr_assert_eq(tm_safetensors_write(path, t, n, NULL, 0), TM_OK, "%s", tm_error_message());
    free(t);
    free(shapes);
}

Test(checkpoint, nanogpt_state_dict_loads_as_weights, .init = make_path, .fini = remove_path)
{
    enum { L = 2, C = 8, T = 5 };
    const tm_model *m = gpt_model(L, 2, C, T);
    tm_model_state s = random_state(m, adamw(), NULL), e = empty_like(&s, adamw());
    /* nanoGPT's state_dict: the tied head under its own name, and each
     * block's causal mask as a (1, 1, T, T) buffer. */
    float *mask = calloc(256 * C, sizeof(float));
    for (int i = 0; i < 256 * C; i++) mask[i] = 1;
    const extra_tensor extra[] = {{"lm_head.weight", 2, {256, C}},
                                  {"transformer.h.0.attn.bias", 4, {1, 1, T, T}},
                                  {"transformer.h.1.attn.bias", 4, {1, 1, T, T}}};
    write_state_dict(m, s.params, extra, 3, mask);
    for (int i = 0; i < s.n_opt_state; i++)
        for (size_t k = 0; k < e.n_params; k++) e.opt_state[i][k] = 7;
    int resumed = -1;
    cr_assert_eq(tm_checkpoint_load(path, &e, TM_LOAD_RESUME, &resumed), TM_OK, "%s",
                 tm_error_message());
    cr_expect_eq(resumed, 0, "a file without optimizer state resumes nothing");
    cr_expect(memcmp(s.params, e.params, s.n_params * sizeof(float)) == 0, "weights differ");
    cr_expect_eq(e.opt_state[0][0], 7, "the optimizer state was touched");
    free(mask);
    tm_model_state_free(&s);
    tm_model_state_free(&e);
}

Test(checkpoint, unknown_tensors_of_the_model_are_refused_by_name,
     .init = make_path, .fini = remove_path)
{
    const tm_model *gpt = gpt_model(2, 2, 8, 5), *mlp = mlp_model("12,16,8,10", TM_ACT_RELU);
    float *junk = calloc(1024, sizeof(float));
    struct { const tm_model *m; extra_tensor x; int refused; } cases[] = {
        {gpt, {"transformer.h.2.ln_1.weight", 1, {8}}, 1},
        {gpt, {"transformer.h.0.attn.c_attn.scale", 1, {8}}, 1},
        {gpt, {"transformer.wte.bias", 1, {8}}, 1},
        {mlp, {"layers.3.weight", 2, {10, 10}}, 1},
        {mlp, {"layers.0.scale", 1, {16}}, 1},
        /* Outside the model's namespace: somebody else's, skipped. */
        {gpt, {"ema.transformer.wte.weight", 1, {8}}, 0},
        {mlp, {"metadata.epoch", 1, {1}}, 0},
        {gpt, {"transformer.h.1.attn.masked_bias", 1, {1}}, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tm_model_state s = random_state(cases[i].m, sgd(0), NULL), e = empty_like(&s, sgd(0));
        write_state_dict(cases[i].m, s.params, &cases[i].x, 1, junk);
        int resumed, st = tm_checkpoint_load(path, &e, TM_LOAD_WEIGHTS, &resumed);
        if (cases[i].refused) {
            cr_expect_eq(st, TM_EINVAL, "%s loaded", cases[i].x.name);
            cr_expect(strstr(tm_error_message(), cases[i].x.name) != NULL, "%s: %s",
                      cases[i].x.name, tm_error_message());
        } else {
            cr_expect_eq(st, TM_OK, "%s: %s", cases[i].x.name, tm_error_message());
        }
        tm_model_state_free(&s);
        tm_model_state_free(&e);
    }
    free(junk);
}

/* ---- mismatches ----------------------------------------------------------- */

/* Saves `from` with opt_from, loads into `to` with opt_to: refused with a
 * message holding both values (or accepted when want_a is NULL). */
static void mismatch(const tm_model *from, tm_optim_config opt_from, const tm_model *to,
                     tm_optim_config opt_to, tm_load_mode mode, const char *want_a,
                     const char *want_b)
{
    tm_model_state s = random_state(from, opt_from, NULL), e;
    cr_assert_eq(save(path, &s), TM_OK);
    cr_assert_eq(tm_model_state_init(&e, to, &opt_to), TM_OK);
    int resumed = -1, st = tm_checkpoint_load(path, &e, mode, &resumed);
    const char *msg = tm_error_message();
    if (want_a == NULL) {
        cr_expect_eq(st, TM_OK, "refused: %s", msg);
        cr_expect_eq(resumed, 0);
    } else {
        cr_expect_eq(st, TM_EINVAL, "loaded; want a refusal naming %s and %s", want_a, want_b);
        cr_expect(strstr(msg, want_a) && strstr(msg, want_b) && !strchr(msg, '\n'),
                  "want %s and %s in one line: %s", want_a, want_b, msg);
        cr_expect(strstr(msg, path) != NULL, "the message names the file: %s", msg);
    }
    tm_model_state_free(&s);
    tm_model_state_free(&e);
}

Test(checkpoint, mismatches_are_refused_naming_both_values, .init = make_path, .fini = remove_path)
{
    const tm_model *relu = mlp_model("12,16,8,10", TM_ACT_RELU);
    const tm_model *gelu = mlp_model("12,16,8,10", TM_ACT_GELU);
    const tm_model *wider = mlp_model("12,16,9,10", TM_ACT_RELU);
    mismatch(relu, sgd(0.9), gelu, sgd(0.9), TM_LOAD_RESUME, "relu", "gelu");
    mismatch(gelu, sgd(0.9), relu, sgd(0.9), TM_LOAD_WEIGHTS, "gelu", "relu");
    mismatch(relu, sgd(0.9), wider, sgd(0.9), TM_LOAD_RESUME, "12,16,8,10", "12,16,9,10");
    mismatch(relu, sgd(0.9), relu, adamw(), TM_LOAD_RESUME, "sgd", "adamw");
    mismatch(relu, adamw(), relu, sgd(0.9), TM_LOAD_RESUME, "adamw", "sgd");
    mismatch(relu, sgd(0.9), relu, sgd(0), TM_LOAD_RESUME, "momentum buffers",
             "--momentum is 0");
    mismatch(relu, sgd(0), relu, sgd(0.9), TM_LOAD_RESUME, "without momentum",
             "momentum is not 0");
    /* Weights only: the optimizer does not matter. */
    mismatch(relu, sgd(0.9), relu, adamw(), TM_LOAD_WEIGHTS, NULL, NULL);
    mismatch(relu, adamw(), relu, sgd(0), TM_LOAD_WEIGHTS, NULL, NULL);

    const tm_model *g = gpt_model(2, 2, 8, 5);
    mismatch(g, adamw(), gpt_model(2, 4, 8, 5), adamw(), TM_LOAD_RESUME, "heads 2", "4");
    mismatch(g, adamw(), gpt_model(2, 2, 16, 5), adamw(), TM_LOAD_WEIGHTS, "d_model 8", "16");
    mismatch(g, adamw(), gpt_model(3, 2, 8, 5), adamw(), TM_LOAD_RESUME, "layers 2", "3");
    mismatch(g, adamw(), gpt_model(2, 2, 8, 6), adamw(), TM_LOAD_RESUME, "context 5", "6");
    mismatch(g, adamw(), relu, adamw(), TM_LOAD_WEIGHTS, "gpt", "12,16,8,10");
    mismatch(relu, adamw(), g, adamw(), TM_LOAD_WEIGHTS, "12,16,8,10", "gpt");
}

Test(checkpoint, a_missing_or_broken_file_fails_cleanly, .init = make_path, .fini = remove_path)
{
    const tm_model *m = mlp_model("12,16,8,10", TM_ACT_RELU);
    tm_model_state e;
    cr_assert_eq(tm_model_state_init(&e, m, &(tm_optim_config){TM_OPT_SGD, 0.9, 0, 0, 0, 0}),
                 TM_OK);
    int resumed;
    cr_expect_eq(tm_checkpoint_load("/nonexistent/ckpt.safetensors", &e, TM_LOAD_RESUME, &resumed),
                 TM_EIO);
    FILE *f = fopen(path, "wb");
    fputs("not a safetensors file", f);
    fclose(f);
    cr_expect_eq(tm_checkpoint_load(path, &e, TM_LOAD_RESUME, &resumed), TM_EFORMAT);
    cr_expect_eq(save("/nonexistent/dir/ckpt.safetensors", &e), TM_EIO);
    tm_model_state_free(&e);
}

/* ---- the corpus ----------------------------------------------------------- */

Test(checkpoint, resuming_on_other_data_points_to_load_weights,
     .init = make_path, .fini = remove_path)
{
    const tm_model *m = gpt_model(1, 2, 8, 5);
    tm_model_state s = random_state(m, adamw(), "art,cookie");
    cr_assert_eq(save(path, &s), TM_OK);
    const char *keys[3] = {"corpus_files", "corpus_bytes", "corpus_hash"};
    const char *other[3] = {"art", "2599999", "fedcba9876543210"};
    for (int k = 0; k < 3; k++) {
        tm_model_state e = empty_like(&s, adamw());
        set_meta(&e.data[k], keys[k], other[k]);
        int resumed = -1;
        cr_expect_eq(tm_checkpoint_load(path, &e, TM_LOAD_RESUME, &resumed), TM_EINVAL,
                     "resumed on other %s", keys[k]);
        const char *msg = tm_error_message();
        cr_expect(strstr(msg, "--load-weights") && strstr(msg, other[k]) &&
                      strstr(msg, s.data[k].value) && strstr(msg, keys[k]),
                  "%s", msg);
        /* The weights of the same file start a new run on any data. */
        cr_expect_eq(tm_checkpoint_load(path, &e, TM_LOAD_WEIGHTS, &resumed), TM_OK, "%s",
                     tm_error_message());
        cr_expect_eq(resumed, 0);
        cr_expect(memcmp(s.params, e.params, s.n_params * sizeof(float)) == 0);
        tm_model_state_free(&e);
    }
    tm_model_state_free(&s);
}

/* The trainer on it: --load-weights starts at step 0 on another corpus,
 * --load resumes the position on the same one. */
typedef struct {
    long first_step;
    int loads, resumed;
} run_log;

static void on_step(void *ctx, const tm_step_info *s)
{
    run_log *l = ctx;
    if (l->first_step == 0) l->first_step = s->step;
}

static void on_start(void *ctx, const tm_start_info *info)
{
    run_log *l = ctx;
    l->loads += info->loaded;
    l->resumed = info->resumed;
}

static int train_text(const tm_model *m, uint64_t corpus_seed, const char *load, int weights,
                      const char *save, run_log *log)
{
    enum { T = 5 };
    tm_corpus c;
    cr_assert_eq(tm_corpus_synthetic(&c, 64 * T + 1, corpus_seed, 0), TM_OK);
    tm_data train, val;
    cr_assert_eq(tm_data_text(&train, c.bytes, c.len, T, "text"), TM_OK);
    val = tm_data_head(&train, 8);
    tm_train_config cfg = {.model = m, .dp = 1, .pp = 1, .tp = 1, .schedule = TM_SCHED_1F1B,
                           .epochs = 1, .max_steps = 3, .batch = 8, .micro_batches = 1,
                           .optimizer = TM_OPT_ADAMW, .lr = 1e-3, .lr_schedule = TM_LR_COSINE,
                           .beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.1, .clip_grad = 1,
                           .seed = 1, .shuffle = 1, .mem_cap = 16 << 20, .load_path = load,
                           .load_weights = weights, .save_path = save, .ctx = log,
                           .on_step = on_step, .on_start = on_start};
    set_meta(&cfg.data_meta[0], "corpus_files", c.files);
    snprintf(cfg.data_meta[1].key, sizeof cfg.data_meta[1].key, "corpus_bytes");
    snprintf(cfg.data_meta[1].value, sizeof cfg.data_meta[1].value, "%zu", c.len);
    snprintf(cfg.data_meta[2].key, sizeof cfg.data_meta[2].key, "corpus_hash");
    snprintf(cfg.data_meta[2].value, sizeof cfg.data_meta[2].value, "%016llx",
             (unsigned long long)c.hash);
    cfg.n_data_meta = 3;
    tm_train_result r;
    char err[2048];
    int st = tm_train(&cfg, &train, &val, &r, err, sizeof err);
    if (st != TM_OK) cr_log_info("%s", err);
    tm_train_result_free(&r);
    tm_corpus_free(&c);
    return st;
}

Test(checkpoint, load_weights_starts_a_new_run_at_step_0,
     .init = make_path, .fini = remove_path, .timeout = 60)
{
    const tm_model *m = gpt_model(1, 2, 8, 5);
    run_log a = {0}, b = {0}, c = {0}, d = {0};
    cr_assert_eq(train_text(m, 1, NULL, 0, path, &a), TM_OK);
    cr_expect_eq(a.first_step, 1);
    /* The same corpus: --load resumes at step 4. */
    cr_expect_eq(train_text(m, 1, path, 0, NULL, &b), TM_OK);
    cr_expect(b.loads == 1 && b.resumed == 1 && b.first_step == 4, "loads %d resumed %d step %ld",
              b.loads, b.resumed, b.first_step);
    /* Another corpus: --load refused, --load-weights from step 1. */
    cr_expect_eq(train_text(m, 2, path, 0, NULL, &c), TM_EINVAL);
    cr_expect_eq(c.first_step, 0, "trained after a refused resume");
    cr_expect_eq(train_text(m, 2, path, 1, NULL, &d), TM_OK);
    cr_expect(d.loads == 1 && d.resumed == 0 && d.first_step == 1, "loads %d resumed %d step %ld",
              d.loads, d.resumed, d.first_step);
}
