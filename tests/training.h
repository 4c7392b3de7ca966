/* What the training suites share: whether the build is sanitized (the
 * suites then run fewer, shorter configurations), the synthetic data they
 * train on (a text corpus for the GPT, images for the MLP; each suite sizes
 * its own), a recorder of every step's loss, a run on that data, the
 * common AdamW recipe and the predict and planner suites' configurations.
 * The data are file-scope, one set per suite, loaded by its .init. */
#ifndef TM_TEST_TRAINING_H
#define TM_TEST_TRAINING_H

#include <criterion/criterion.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/idx.h"
#include "strategies/trainer.h"
#include "tests/models.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

static tm_corpus corpus;
static tm_data gpt_train, gpt_test;
static tm_dataset mlp_train_images, mlp_test_images;
static tm_data mlp_train, mlp_test;

/* Synthetic text of text_len bytes from seed: its first train_len bytes
 * in windows of T for training, the next test_len to test; synthetic
 * images of 12 pixels in 10 classes from mlp_seed, mlp_n to train on and
 * mlp_test_n to test. */
static inline void training_data_load(size_t text_len, size_t train_len, size_t test_len, int T,
                                      uint64_t seed, int mlp_n, int mlp_test_n,
                                      uint64_t mlp_seed)
{
    cr_assert_eq(tm_corpus_synthetic(&corpus, text_len, seed, 0), TM_OK);
    cr_assert_eq(tm_data_text(&gpt_train, corpus.bytes, train_len, T, "train"), TM_OK);
    cr_assert_eq(tm_data_text(&gpt_test, corpus.bytes + train_len, test_len, T, "test"), TM_OK);
    cr_assert_eq(tm_dataset_synthetic(&mlp_train_images, mlp_n, 12, 10, mlp_seed, 0), TM_OK);
    cr_assert_eq(tm_dataset_synthetic(&mlp_test_images, mlp_test_n, 12, 10, mlp_seed, 1), TM_OK);
    tm_data_images(&mlp_train, &mlp_train_images);
    tm_data_images(&mlp_test, &mlp_test_images);
}

static inline void training_data_free(void)
{
    tm_corpus_free(&corpus);
    tm_dataset_free(&mlp_train_images);
    tm_dataset_free(&mlp_test_images);
}

#define LOSSES_MAX 64

/* Every step's loss, in order (on_step's record with ctx a losses). */
typedef struct {
    double loss[LOSSES_MAX];
    int n;
} losses;

static inline void record(void *ctx, const tm_step_info *s)
{
    losses *l = ctx;
    if (l->n < LOSSES_MAX) l->loss[l->n++] = s->loss;
}

/* Trains c on the suite's data for its model, recording the losses in l
 * and saving the checkpoint to save (or not: NULL); the result goes to
 * keep (or is freed: NULL). Returns tm_train's status, its message logged. */
static inline int train_run(tm_train_config c, losses *l, const char *save,
                            tm_train_result *keep)
{
    c.ctx = l;
    c.on_step = record;
    c.save_path = save;
    char err[4096];
    tm_train_result r;
    int gpt = strcmp(c.model->family, "gpt") == 0;
    int st = tm_train(&c, gpt ? &gpt_train : &mlp_train, gpt ? &gpt_test : &mlp_test, &r, err,
                      sizeof err);
    if (st != TM_OK) cr_log_warn("%s", err);
    if (keep != NULL) *keep = r;
    else tm_train_result_free(&r);
    return st;
}

/* AdamW (betas 0.9, 0.99) at lr with decoupled weight decay wd and the
 * global gradient norm clipped to clip. */
static inline void adamw(tm_train_config *c, double lr, double wd, double clip)
{
    c->optimizer = TM_OPT_ADAMW;
    c->lr = lr;
    c->beta1 = 0.9;
    c->beta2 = 0.99;
    c->weight_decay = wd;
    c->clip_grad = clip;
}

/* One configuration of the predict and planner suites: the GPT (L 4, H 4,
 * C 32, T 32, batch 16) or the MLP MESH_MLP (batch 64), a mesh and its
 * remedies. */
#define MESH_MLP "12,32,32,32,10"

typedef struct {
    int gpt, dp, pp, tp, m, sp, zero;
    tm_recompute recompute;
    tm_schedule_kind schedule;
    int offload;
    tm_precision precision;
    int virtual_stages;    /* 0 or 1: none */
} mesh_setup;

/* Its run of `steps` steps: AdamW (lr 1e-3, decay 0.1, clipping at 1.0)
 * at a constant rate, seed 3, shuffled, 64 MiB devices (and 64 MiB of
 * host memory each under offload). */
static inline tm_train_config setup_config(const mesh_setup *s, long steps)
{
    tm_train_config c = {0};
    const tm_model *m =
        s->gpt ? gpt_model_sp(4, 4, 32, 32, s->sp) : mlp_model(MESH_MLP, TM_ACT_GELU);
    c.model = recomputed(m, s->recompute);
    c.dp = s->dp;
    c.pp = s->pp;
    c.tp = s->tp;
    c.zero = s->zero;
    c.schedule = s->schedule;
    c.virtual_stages = s->virtual_stages;
    c.epochs = 1;
    c.max_steps = steps;
    c.batch = s->gpt ? 16 : 64;
    c.micro_batches = s->m;
    adamw(&c, 1e-3, 0.1, 1.0);
    c.lr_schedule = TM_LR_CONSTANT;
    c.seed = 3;
    c.shuffle = 1;
    c.mem_cap = 64 << 20;
    c.precision = s->precision;
    if (s->offload) {
        c.offload = TM_OFFLOAD_OPTIMIZER;
        c.host_mem_cap = 64 << 20;
    }
    return c;
}

/* The recompute and precision suites' runs: AdamW (lr 3e-3, decay 0.1,
 * clipping at 1.0) on a cosine schedule from 2 warm-up steps to 3e-4,
 * seed 3, shuffled, 64 MiB devices, the final weights kept. */
static inline void mesh_recipe(tm_train_config *c)
{
    adamw(c, 3e-3, 0.1, 1.0);
    c->min_lr = 3e-4;
    c->lr_schedule = TM_LR_COSINE;
    c->warmup_steps = 2;
    c->seed = 3;
    c->shuffle = 1;
    c->mem_cap = 64 << 20;
    c->keep_params = 1;
}

#endif
