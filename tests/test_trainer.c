/* Training on one device: the loss falls, two runs with one seed are
 * bitwise identical, M micro-batches equal one batch, checkpoints round-trip
 * and resume exactly, and bad checkpoints fail clearly. Uses a small
 * synthetic dataset so the suite stays fast. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/status.h"
#include "strategies/rng.h"
#include "strategies/safetensors.h"
#include "strategies/trainer.h"
#include "tests/models.h"

#define DIM 20
#define CLASSES 4
#define N 512
#define MAX_STEPS 64

/* Separable data: the class is the argmax of four fixed projections. */
static void make_data(tm_dataset *d, int n, uint64_t seed)
{
    memset(d, 0, sizeof *d);
    d->images = malloc(sizeof(float) * (size_t)n * DIM);
    d->labels = malloc((size_t)n);
    d->n = n;
    d->rows = 4;
    d->cols = 5;
    d->dim = DIM;
    d->n_classes = CLASSES;
    tm_rng r = tm_rng_seed(seed, 7);
    for (int i = 0; i < n; i++) {
        float best = -1e30f;
        for (int k = 0; k < DIM; k++) d->images[i * DIM + k] = 2 * tm_rng_float(&r) - 1;
        for (int c = 0; c < CLASSES; c++) {
            float s = 0;
            for (int k = 0; k < DIM; k++) s += d->images[i * DIM + k] * (float)(((k * 7 + c * 3) % 5) - 2);
            if (s > best) {
                best = s;
                d->labels[i] = (uint8_t)c;
            }
        }
    }
}

typedef struct {
    double loss[MAX_STEPS + 1];
    int n;
} losses;

static void record(void *ctx, const tm_step_info *s)
{
    losses *l = ctx;
    if (l->n <= MAX_STEPS) l->loss[l->n++] = s->loss;
}

static tm_train_config base_config(losses *l)
{
    tm_train_config c = {0};
    c.model = mlp_model("20,32,16,4", TM_ACT_RELU);
    c.epochs = 4;
    c.batch = 32;
    c.micro_batches = 1;
    c.optimizer = TM_OPT_SGD;
    c.lr = 0.1;
    c.lr_schedule = TM_LR_COSINE;
    c.dp = c.pp = c.tp = 1;
    c.schedule = TM_SCHED_1F1B;
    c.warmup_steps = 5;
    c.momentum = 0.9;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.weight_decay = 1e-4;
    c.seed = 42;
    c.shuffle = 1;
    c.mem_cap = 4 << 20;
    c.ctx = l;
    c.on_step = record;
    return c;
}

static tm_dataset train_images, test_images;
static tm_data train_set, test_set;

static void setup(void)
{
    make_data(&train_images, N, 1);
    make_data(&test_images, 256, 2);
    tm_data_images(&train_set, &train_images);
    tm_data_images(&test_set, &test_images);
}

static void teardown(void)
{
    tm_dataset_free(&train_images);
    tm_dataset_free(&test_images);
}

static int run(tm_train_config *c, tm_train_result *res)
{
    char err[2048];
    int st = tm_train(c, &train_set, &test_set, res, err, sizeof err);
    cr_log_info("%s", err);
    tm_train_result_free(res); /* the tests read only the run's totals */
    return st;
}

Test(trainer, loss_decreases_and_learns, .init = setup, .fini = teardown, .timeout = 60)
{
    losses l = {0};
    tm_train_config c = base_config(&l);
    tm_train_result res;
    cr_assert_eq(run(&c, &res), TM_OK);
    cr_expect_eq(res.steps, 4 * (N / 32));
    double first = (l.loss[0] + l.loss[1] + l.loss[2]) / 3;
    double last = (l.loss[l.n - 1] + l.loss[l.n - 2] + l.loss[l.n - 3]) / 3;
    cr_expect_lt(last, 0.5 * first, "loss %.4f -> %.4f", first, last);
    cr_expect_gt(res.test_acc, 0.6, "test accuracy %.3f", res.test_acc);
    cr_expect_gt(res.memory.tag_peak[TM_TAG_PARAM], 0);
    cr_expect_eq(res.memory.tag_peak[TM_TAG_PARAM], res.memory.tag_peak[TM_TAG_GRAD]);
    cr_expect_gt(res.memory.tag_peak[TM_TAG_ACTIVATION], 0);
    cr_expect_eq(res.memory.tag_in_use[TM_TAG_ACTIVATION], 0, "activations freed");
}

Test(trainer, same_seed_is_bitwise_identical, .init = setup, .fini = teardown, .timeout = 60)
{
    const char *opts[] = {"sgd", "adamw"};
    for (int o = 0; o < 2; o++) {
        losses a = {0}, b = {0};
        tm_train_config ca = base_config(&a), cb = base_config(&b);
        ca.optimizer = cb.optimizer = o ? TM_OPT_ADAMW : TM_OPT_SGD;
        ca.lr = cb.lr = o ? 1e-2 : 0.1;
        ca.model = cb.model = mlp_model("20,32,16,4", o ? TM_ACT_GELU : TM_ACT_RELU);
        tm_train_result r;
        cr_assert_eq(run(&ca, &r), TM_OK);
        cr_assert_eq(run(&cb, &r), TM_OK);
        cr_assert_eq(a.n, b.n);
        cr_expect(memcmp(a.loss, b.loss, sizeof a.loss) == 0, "%s: losses differ", opts[o]);
        /* The same run but for the seed must differ, so the seed is used. */
        losses c = {0};
        tm_train_config cc = ca;
        cc.ctx = &c;
        cc.seed = ca.seed + 1;
        cr_assert_eq(run(&cc, &r), TM_OK);
        cr_assert_eq(c.n, a.n);
        cr_expect(memcmp(a.loss, c.loss, sizeof a.loss) != 0, "%s: another seed, same losses",
                  opts[o]);
    }
}

Test(trainer, micro_batches_equal_one_batch, .init = setup, .fini = teardown, .timeout = 60)
{
    losses one = {0};
    tm_train_config c1 = base_config(&one);
    c1.max_steps = 30;
    tm_train_result r;
    cr_assert_eq(run(&c1, &r), TM_OK);
    int ms[] = {2, 4, 8, 32};
    for (size_t k = 0; k < sizeof ms / sizeof ms[0]; k++) {
        losses acc = {0};
        tm_train_config cm = base_config(&acc);
        cm.max_steps = 30;
        cm.micro_batches = ms[k];
        cr_assert_eq(run(&cm, &r), TM_OK);
        cr_assert_eq(acc.n, one.n);
        for (int i = 0; i < one.n; i++)
            cr_expect_leq(fabs(acc.loss[i] - one.loss[i]), 1e-4 * fabs(one.loss[i]),
                          "M=%d step %d: %.8f vs %.8f", ms[k], i + 1, acc.loss[i], one.loss[i]);
    }
}

static char path[256];

static void tmp_path(const char *what)
{
    snprintf(path, sizeof path, "/tmp/tm_test_%s_%ld.safetensors", what, (long)getpid());
}

Test(trainer, save_load_continue_is_bitwise_identical, .init = setup, .fini = teardown,
     .timeout = 60)
{
    for (int o = 0; o < 2; o++) {
        /* 40 steps straight, or 25 (ending mid-epoch) + save + load + 15. */
        losses straight = {0}, first = {0}, second = {0};
        tm_train_config c = base_config(&straight);
        c.optimizer = o ? TM_OPT_ADAMW : TM_OPT_SGD;
        c.lr = o ? 1e-2 : 0.1;
        c.max_steps = 40;
        tm_train_result r;
        cr_assert_eq(run(&c, &r), TM_OK);
        tmp_path("resume");
        c.ctx = &first;
        c.max_steps = 25;
        c.save_path = path;
        cr_assert_eq(run(&c, &r), TM_OK);
        c.ctx = &second;
        c.max_steps = 15;
        c.save_path = NULL;
        c.load_path = path;
        c.seed = 999; /* the checkpoint's data order wins */
        cr_assert_eq(run(&c, &r), TM_OK);
        cr_assert_eq(first.n + second.n, straight.n);
        cr_expect(memcmp(first.loss, straight.loss, sizeof(double) * 25) == 0);
        cr_expect(memcmp(second.loss, straight.loss + 25, sizeof(double) * 15) == 0,
                  "optimizer %d: resumed losses differ: %.9g vs %.9g", o, second.loss[0],
                  straight.loss[25]);
        unlink(path);
    }
}

Test(trainer, checkpoint_names_and_shapes_are_pytorch_style, .init = setup, .fini = teardown,
     .timeout = 60)
{
    losses l = {0};
    tm_train_config c = base_config(&l);
    c.max_steps = 3;
    tmp_path("names");
    c.save_path = path;
    tm_train_result r;
    cr_assert_eq(run(&c, &r), TM_OK);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK, "%s", tm_error_message());
    const tm_st_info *w = tm_st_find(f, "layers.1.weight");
    cr_assert_not_null(w);
    cr_expect_eq(w->ndim, 2);
    cr_expect_eq(w->shape[0], 16);
    cr_expect_eq(w->shape[1], 32);
    cr_expect_not_null(tm_st_find(f, "layers.2.bias"));
    cr_expect_not_null(tm_st_find(f, "optimizer.layers.0.weight.momentum_buffer"));
    cr_expect_str_eq(tm_st_meta_get(f, "step"), "3");
    cr_expect_str_eq(tm_st_meta_get(f, "model"), "20,32,16,4");
    tm_safetensors_close(f);
    unlink(path);
}

/* Writes a checkpoint with the given tensors by hand. */
static void write_weights(const char *p, const char *model, int drop, int wrong_shape)
{
    tm_mlp_config cfg;
    const char *why;
    tm_mlp_parse(model, &cfg, &why);
    float *data = calloc(tm_mlp_param_count(&cfg), sizeof(float));
    tm_st_tensor t[2 * TM_MLP_MAX_LAYERS];
    uint64_t shapes[2 * TM_MLP_MAX_LAYERS][2];
    char names[2 * TM_MLP_MAX_LAYERS][32];
    int n = 0;
    for (int l = 0; l < cfg.n_layers; l++) {
        for (int b = 0; b < 2; b++) {
            if (n == drop) {
                drop = -1;
                continue;
            }
            snprintf(names[n], 32, "layers.%d.%s", l, b ? "bias" : "weight");
            shapes[n][0] = (uint64_t)cfg.widths[l + 1] + (uint64_t)(wrong_shape && l == 1);
            shapes[n][1] = (uint64_t)cfg.widths[l];
            t[n] = (tm_st_tensor){names[n], TM_ST_F32, b ? 1 : 2, shapes[n],
                                  data + (b ? tm_mlp_bias_offset(&cfg, l) : tm_mlp_weight_offset(&cfg, l))};
            n++;
        }
    }
    float *big = NULL;
    if (wrong_shape) {
        big = calloc(tm_mlp_param_count(&cfg) + 1000, sizeof(float));
        for (int i = 0; i < n; i++) t[i].data = big;
    }
    cr_assert_eq(tm_safetensors_write(p, t, n, NULL, 0), TM_OK, "%s", tm_error_message());
    free(big);
    free(data);
}

Test(trainer, weights_only_file_loads_with_fresh_optimizer, .init = setup, .fini = teardown,
     .timeout = 60)
{
    tmp_path("weights");
    write_weights(path, "20,32,16,4", -1, 0);
    losses l = {0};
    tm_train_config c = base_config(&l);
    c.max_steps = 2;
    c.load_path = path;
    tm_train_result r;
    cr_expect_eq(run(&c, &r), TM_OK);
    /* All-zero weights: the first loss is exactly log(4). */
    cr_expect_float_eq(l.loss[0], log(4.0), 1e-6);
    unlink(path);
}

Test(trainer, mismatched_checkpoints_fail_clearly, .init = setup, .fini = teardown, .timeout = 60)
{
    struct {
        const char *model;
        int drop, wrong_shape;
        const char *expect;
    } cases[] = {
        {"20,32,16,4", 3, 0, "no tensor \"layers.1.bias\""},
        {"20,32,16,4", -1, 1, "layers.1.weight"},
        {"20,32,16,16,4", -1, 0, "layers.2.weight: shape [16, 16] in file"},
        {"20,32,16,4,4", -1, 0, "\"layers.3.weight\" is not in a model"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tmp_path("bad");
        write_weights(path, cases[i].model, cases[i].drop, cases[i].wrong_shape);
        losses l = {0};
        tm_train_config c = base_config(&l);
        c.load_path = path;
        tm_train_result r;
        char err[2048];
        int st = tm_train(&c, &train_set, &test_set, &r, err, sizeof err);
        tm_train_result_free(&r);
        cr_expect_neq(st, TM_OK, "case %zu loaded", i);
        cr_expect(strstr(err, cases[i].expect) != NULL, "case %zu: %s", i, err);
        cr_expect_eq(l.n, 0, "case %zu trained", i);
        unlink(path);
    }
    losses l = {0};
    tm_train_config c = base_config(&l);
    c.load_path = "/nonexistent/ckpt.safetensors";
    tm_train_result r;
    cr_expect_eq(run(&c, &r), TM_EIO);
}

Test(trainer, model_too_big_fails_before_training, .init = setup, .fini = teardown,
     .timeout = 60)
{
    losses l = {0};
    tm_train_config c = base_config(&l);
    c.model = mlp_model("20,1024,1024,4", TM_ACT_RELU);
    c.mem_cap = 8 << 20;
    tm_train_result r;
    char err[2048];
    int st = tm_train(&c, &train_set, &test_set, &r, err, sizeof err);
    tm_train_result_free(&r);
    cr_expect_eq(st, TM_ENOMEM);
    cr_expect(strstr(err, "out of memory") != NULL, "%s", err);
    cr_expect(strstr(err, "by tag") != NULL, "%s", err);
    cr_expect_eq(l.n, 0);
}

Test(trainer, bad_configs_are_refused, .init = setup, .fini = teardown)
{
    losses l = {0};
    tm_train_config c = base_config(&l);
    c.micro_batches = 3;
    cr_expect_eq(tm_train_check(&c, &train_set), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "divisible") != NULL);
    c = base_config(&l);
    c.lr = NAN;
    cr_expect_eq(tm_train_check(&c, &train_set), TM_EINVAL);
    c = base_config(&l);
    c.model = mlp_model("21,32,16,4", TM_ACT_RELU);
    cr_expect_eq(tm_train_check(&c, &train_set), TM_EINVAL);
    c = base_config(&l);
    c.batch = N + 1;
    cr_expect_eq(tm_train_check(&c, &train_set), TM_EINVAL);
}
