/* build/train --model gpt from the outside, on tiny models and data so that
 * every run takes a fraction of a second: it trains and its loss falls,
 * the metrics lines carry the GPT's fields, save / --load / continue is
 * bitwise, --load-weights starts over, bad input is one line on stderr
 * with exit status 2 and no file, and the closing sample never hands a
 * terminal a raw control byte. The binary is found in $TM_BIN_DIR. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/status.h"
#include "strategies/json.h"

#define TINY                                                                                   \
    "--model gpt --layers 1 --d-model 16 --heads 2 --context 16 --batch 4 --eval-sequences 4 " \
    "--sample-tokens 20 --mem-cap 32M"
#define SYNTH TINY " --dataset synthetic --samples 64"

static char out_path[128], err_path[128], metrics[128], ckpt[128], dir[128];

static void setup(void)
{
    long pid = (long)getpid();
    snprintf(out_path, sizeof out_path, "/tmp/tm_gcli_out_%ld", pid);
    snprintf(err_path, sizeof err_path, "/tmp/tm_gcli_err_%ld", pid);
    snprintf(metrics, sizeof metrics, "/tmp/tm_gcli_metrics_%ld.jsonl", pid);
    snprintf(ckpt, sizeof ckpt, "/tmp/tm_gcli_ckpt_%ld.safetensors", pid);
    snprintf(dir, sizeof dir, "/tmp/tm_gcli_dir_%ld", pid);
    mkdir(dir, 0700);
}

static void cleanup(void)
{
    unlink(out_path);
    unlink(err_path);
    unlink(metrics);
    unlink(ckpt);
    const char *files[] = {"short", "empty", "text", "sub"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        if (rmdir(p) != 0) unlink(p);
    }
    rmdir(dir);
}

TestSuite(gpt_cli, .init = setup, .fini = cleanup, .timeout = 120);

/* Runs build/train with args; returns its exit status. */
static int train(const char *args)
{
    const char *bin = getenv("TM_BIN_DIR");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/train %s >%s 2>%s", bin ? bin : "build", args, out_path,
             err_path);
    int st = system(cmd);
    cr_assert(WIFEXITED(st), "train did not exit normally: %s", cmd);
    return WEXITSTATUS(st);
}

/* The whole file, NUL-terminated (n: its length), or NULL. */
static char *slurp(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    if (f == NULL) return NULL;
    size_t cap = 1 << 16, len = 0, got;
    char *b = malloc(cap + 1);
    while ((got = fread(b + len, 1, cap - len, f)) > 0)
        if ((len += got) == cap) b = realloc(b, (cap *= 2) + 1);
    fclose(f);
    b[len] = '\0';
    if (n != NULL) *n = len;
    return b;
}

static void put_file(const char *name, const char *text, size_t n)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    fwrite(text, 1, n, f);
    fclose(f);
}

static int exists(const char *p) { return access(p, F_OK) == 0; }

/* ---- metrics ---------------------------------------------------------------- */

typedef struct {
    tm_json_doc *doc[256];
    char *text[256];
    int n;
} lines;

/* Every line of the metrics file, each parsed as one JSON object. */
static lines read_metrics(void)
{
    lines l = {.n = 0};
    char *all = slurp(metrics, NULL);
    cr_assert_not_null(all, "no metrics file");
    for (char *save = NULL, *s = strtok_r(all, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) {
        cr_assert_lt(l.n, 256);
        cr_assert_eq(tm_json_parse(&l.doc[l.n], s, strlen(s)), TM_OK, "not JSON: %s", s);
        cr_assert_eq(tm_json_root(l.doc[l.n])->type, TM_JSON_OBJECT, "%s", s);
        l.text[l.n++] = strdup(s);
    }
    free(all);
    return l;
}

static void free_metrics(lines *l)
{
    for (int i = 0; i < l->n; i++) {
        tm_json_free(l->doc[i]);
        free(l->text[i]);
    }
}

static const char *type_of(const lines *l, int i)
{
    const tm_json *t = tm_json_get(tm_json_root(l->doc[i]), "type");
    cr_assert(t != NULL && t->type == TM_JSON_STRING, "no \"type\": %s", l->text[i]);
    return t->str;
}

static int has(const lines *l, int i, const char *key)
{
    return tm_json_get(tm_json_root(l->doc[i]), key) != NULL;
}

/* The number under key in line i (a JSON number there, read off its text). */
static double num(const lines *l, int i, const char *key)
{
    const tm_json *v = tm_json_get(tm_json_root(l->doc[i]), key);
    cr_assert(v != NULL && v->type == TM_JSON_NUMBER, "no number \"%s\" in %s", key, l->text[i]);
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    return strtod(strstr(l->text[i], pat) + strlen(pat), NULL);
}

/* The losses of the step lines, in order. */
static int step_losses(const lines *l, double *loss, int max)
{
    int n = 0;
    for (int i = 0; i < l->n; i++)
        if (strcmp(type_of(l, i), "step") == 0 && n < max) loss[n++] = num(l, i, "loss");
    return n;
}

/* ---- runs ------------------------------------------------------------------- */

Test(gpt_cli, trains_and_the_loss_falls)
{
    char args[1024];
    snprintf(args, sizeof args,
             TINY " --dataset synthetic --samples 256 --batch 8 --steps 30 "
                  "--lr 1e-2 --lr-schedule constant --metrics %s", metrics);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    lines l = read_metrics();
    double loss[64];
    int n = step_losses(&l, loss, 64);
    cr_assert_eq(n, 30);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) first += loss[i] / 5, last += loss[n - 1 - i] / 5;
    cr_expect(fabs(loss[0] - log(256)) < 0.05, "the first loss %.4f is not about ln 256", loss[0]);
    cr_expect_lt(last, first - 0.1, "loss %.4f -> %.4f over 30 steps", first, last);
    printf("gpt_cli: loss %.4f -> %.4f over 30 steps\n", first, last);
    free_metrics(&l);
}

Test(gpt_cli, metrics_lines_carry_the_gpts_fields)
{
    /* 64 windows at batch 4: one epoch of 16 steps, evaluated every 5. */
    char args[1024];
    snprintf(args, sizeof args, SYNTH " --epochs 1 --eval-every 5 --metrics %s", metrics);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    lines l = read_metrics();
    int steps = 0, evals = 0, epochs = 0, summaries = 0;
    long eval_steps[8];
    double last_eval = NAN;
    for (int i = 0; i < l.n; i++) {
        const char *t = type_of(&l, i);
        if (strcmp(t, "step") == 0) {
            steps++;
            cr_expect(num(&l, i, "step") == steps && num(&l, i, "grad_norm") > 0 &&
                          isfinite(num(&l, i, "loss")) && has(&l, i, "lr"),
                      "%s", l.text[i]);
        } else if (strcmp(t, "eval") == 0) {
            const tm_json *root = tm_json_root(l.doc[i]);
            cr_expect_eq(root->count, 4, "eval lines: type, step, val_loss, val_bpb: %s",
                         l.text[i]);
            double v = num(&l, i, "val_loss"), b = num(&l, i, "val_bpb");
            cr_expect(v > 0 && fabs(b - v / log(2)) <= 1e-6 * b, "%s", l.text[i]);
            if (evals < 8) eval_steps[evals] = (long)num(&l, i, "step");
            evals++;
            last_eval = v;
        } else if (strcmp(t, "epoch") == 0) {
            epochs++;
            double v = num(&l, i, "val_loss");
            cr_expect(v == last_eval, "the epoch's val_loss %.9g, its eval %.9g", v, last_eval);
            cr_expect(fabs(num(&l, i, "val_bpb") - v / log(2)) <= 1e-6 * v, "%s", l.text[i]);
            cr_expect(num(&l, i, "train_loss") > 0 && num(&l, i, "tokens_per_s") > 0, "%s",
                      l.text[i]);
            cr_expect(!has(&l, i, "test_acc") && !has(&l, i, "test_loss"), "%s", l.text[i]);
        } else if (strcmp(t, "summary") == 0) {
            summaries++;
            double v = num(&l, i, "val_loss");
            cr_expect(v == last_eval, "the summary's val_loss %.9g, the last eval %.9g", v,
                      last_eval);
            cr_expect(fabs(num(&l, i, "val_bpb") - v / log(2)) <= 1e-6 * v, "%s", l.text[i]);
            double tps = num(&l, i, "tokens_per_s"), sps = num(&l, i, "samples_per_s");
            cr_expect(tps > 0 && fabs(tps - 16 * sps) <= 1e-3 * tps + 16,
                      "tokens/s %.1f, 16 x samples/s %.1f", tps, 16 * sps);
            cr_expect(num(&l, i, "steps") == 16 && !has(&l, i, "test_acc"), "%s", l.text[i]);
        } else {
            cr_expect(0, "unknown line %s", l.text[i]);
        }
    }
    cr_expect_eq(steps, 16);
    cr_expect_eq(evals, 4, "evaluations at steps 5, 10, 15 and the epoch's end: %d", evals);
    for (int k = 0; k < 4 && k < evals; k++)
        cr_expect_eq(eval_steps[k], k < 3 ? 5 * (k + 1) : 16, "eval %d at step %ld", k,
                     eval_steps[k]);
    cr_expect_eq(epochs, 1);
    cr_expect_eq(summaries, 1);
    free_metrics(&l);
}

Test(gpt_cli, save_load_continue_is_bitwise)
{
    char args[1024], straight[6][32], resumed[6][32];
    snprintf(args, sizeof args, SYNTH " --epochs 1 --steps 6 --metrics %s", metrics);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    lines l = read_metrics();
    for (int i = 0; i < 6; i++) {
        const char *s = strstr(l.text[i], "\"loss\":");
        cr_assert_not_null(s);
        snprintf(straight[i], 32, "%.*s", (int)strcspn(s, ","), s);
    }
    free_metrics(&l);
    for (int part = 0; part < 2; part++) {
        if (part == 0)
            snprintf(args, sizeof args, SYNTH " --epochs 1 --steps 3 --save %s --metrics %s", ckpt,
                     metrics);
        else
            snprintf(args, sizeof args, SYNTH " --epochs 1 --steps 3 --load %s --metrics %s", ckpt,
                     metrics);
        cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
        l = read_metrics();
        for (int i = 0; i < 3; i++) {
            const char *s = strstr(l.text[i], "\"loss\":");
            cr_assert_not_null(s);
            snprintf(resumed[3 * part + i], 32, "%.*s", (int)strcspn(s, ","), s);
            cr_expect_eq(num(&l, i, "step"), 3 * part + i + 1);
        }
        free_metrics(&l);
    }
    for (int i = 0; i < 6; i++)
        cr_expect_str_eq(resumed[i], straight[i], "step %d: %s, straight through %s", i + 1,
                         resumed[i], straight[i]);
    char *out = slurp(out_path, NULL);
    cr_expect(strstr(out, "resumed") && strstr(out, "at step 3"), "%s", out);
    free(out);
}

Test(gpt_cli, load_weights_starts_at_step_0_on_any_data)
{
    char args[1024];
    snprintf(args, sizeof args, SYNTH " --steps 3 --save %s", ckpt);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    /* --seed 2 draws another synthetic corpus: resuming is refused... */
    snprintf(args, sizeof args, SYNTH " --steps 2 --seed 2 --load %s --metrics %s", ckpt, metrics);
    cr_expect_eq(train(args), 2);
    char *err = slurp(err_path, NULL);
    cr_expect(strstr(err, "--load-weights") && strchr(err, '\n') == strrchr(err, '\n'), "%s",
              err);
    cr_expect(!exists(metrics), "a refused resume wrote metrics");
    free(err);
    /* ... and its weights start a new run at step 1. */
    snprintf(args, sizeof args, SYNTH " --steps 2 --seed 2 --load-weights %s --metrics %s", ckpt,
             metrics);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    lines l = read_metrics();
    cr_expect_str_eq(type_of(&l, 0), "step");
    cr_expect_eq(num(&l, 0, "step"), 1);
    free_metrics(&l);
    char *out = slurp(out_path, NULL);
    cr_expect(strstr(out, "step 0 with a fresh optimizer") != NULL, "%s", out);
    free(out);
}

Test(gpt_cli, trains_on_text_files_and_the_default_corpus)
{
    char text[4000], args[1024];
    for (size_t i = 0; i < sizeof text; i++) text[i] = "the quick brown fox jumps. "[i % 27];
    put_file("text", text, sizeof text);
    snprintf(args, sizeof args, TINY " --text %s/text --steps 3 --save %s", dir, ckpt);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    /* 0.9 of 4000 bytes train: (3600 - 1) / 16 = 224 windows; 4 validate. */
    char *out = slurp(out_path, NULL);
    cr_expect(strstr(out, "224 train / 4 validation windows") != NULL, "%s", out);
    free(out);
    snprintf(args, sizeof args, TINY " --steps 2 --metrics %s", metrics);
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    out = slurp(out_path, NULL);
    cr_expect(strstr(out, "the fortunes corpus") != NULL, "%s", out);
    free(out);
}

Test(gpt_cli, bad_input_is_one_line_and_status_2)
{
    put_file("short", "twenty bytes of text", 20);
    put_file("empty", "", 0);
    char sub[256];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0700);
    struct { const char *args; const char *says; } cases[] = {
        {SYNTH " --heads 3", "multiple of --heads"},
        {SYNTH " --d-model 10 --heads 4", "multiple of --heads"},
        {SYNTH " --layers 0", "--layers"},
        {SYNTH " --context 0", "--context"},
        {TINY " --text DIR/missing", "DIR/missing"},
        {TINY " --text DIR/sub", "DIR/sub"},
        {TINY " --text DIR/empty", "DIR/empty"},
        {TINY " --text DIR/short", "validation split"},
        {TINY " --text DIR/short --context 30", "training split"},
        {SYNTH " --dataset fashion-mnist", "fashion-mnist"},
        {SYNTH " --layers 2 --pp 3", "block"},
        {SYNTH " --layers 2 --pp 2 --stages 2,1", "--stages"},
        {SYNTH " --tp 3", "--heads 2 is not divisible by --tp 3"},
        {SYNTH " --tp 4 --heads 4 --sequence-parallel --context 18", "--context 18"},
        {SYNTH " --sequence-parallel", "--sequence-parallel needs --tp 2"},
        {SYNTH " --recompute partial", "--recompute is none, full or selective"},
        {SYNTH " --precision bfloat16", "--precision is fp32 or bf16, not \"bfloat16\""},
        {"--recompute selective --steps 1", "has no attention"},
        {"--sequence-parallel --steps 1", "--sequence-parallel goes with --model gpt"},
        {SYNTH " --activation gelu", "--activation"},
        {SYNTH " --normalize none", "--normalize"},
        {SYNTH " --data-dir /tmp", "--data-dir"},
        {"--layers 2 --steps 1", "--layers goes with --model gpt"},
        {"--heads 2 --steps 1", "--heads"},
        {"--d-model 16 --steps 1", "--d-model"},
        {"--context 16 --steps 1", "--context"},
        {"--text /etc/hostname --steps 1", "--text"},
        {"--val-fraction 0.2 --steps 1", "--val-fraction"},
        {"--eval-sequences 4 --steps 1", "--eval-sequences"},
        {"--sample-tokens 4 --steps 1", "--sample-tokens"},
        {"--dataset text --steps 1", "--dataset text"},
        {SYNTH " --text DIR/short", "--text"},
        {TINY " --text DIR/short --samples 64", "--samples"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* DIR stands for the test's directory. */
        char args[2048], with_dir[1024], *at;
        snprintf(with_dir, sizeof with_dir, "%s", cases[i].args);
        while ((at = strstr(with_dir, "DIR")) != NULL) {
            char rest[1024];
            snprintf(rest, sizeof rest, "%s", at + 3);
            snprintf(at, sizeof with_dir - (size_t)(at - with_dir), "%s%s", dir, rest);
        }
        snprintf(args, sizeof args, "%s --metrics %s --save %s", with_dir, metrics, ckpt);
        int st = train(args);
        char *err = slurp(err_path, NULL);
        char want[512];
        snprintf(want, sizeof want, "%s", cases[i].says);
        if (strncmp(want, "DIR", 3) == 0)
            snprintf(want, sizeof want, "%s%s", dir, cases[i].says + 3);
        cr_expect_eq(st, 2, "\"%s\": exit %d", with_dir, st);
        cr_expect(strncmp(err, "train: ", 7) == 0 && strchr(err, '\n') == err + strlen(err) - 1,
                  "\"%s\": not one line: %s", with_dir, err);
        cr_expect(strstr(err, want) != NULL, "\"%s\": %s does not say %s", with_dir, err, want);
        cr_expect(!exists(metrics) && !exists(ckpt), "\"%s\" left a file behind", with_dir);
        free(err);
    }
}

Test(gpt_cli, a_model_that_does_not_fit_exits_1_before_training)
{
    /* Parameters, gradients and AdamW's state fit in 300 KiB; a micro-batch's
     * activations and its backward do not: refused before the first step. */
    char args[1024];
    snprintf(args, sizeof args, SYNTH " --steps 2 --mem-cap 300K --metrics %s --save %s",
             metrics, ckpt);
    cr_expect_eq(train(args), 1);
    char *err = slurp(err_path, NULL), *out = slurp(out_path, NULL);
    cr_expect(strstr(err, "out of memory") && strstr(err, "by tag") && strstr(err, "activation"),
              "%s", err);
    cr_expect(strstr(out, "loss") == NULL && strstr(out, "sample (") == NULL, "it trained: %s",
              out);
    cr_expect(!exists(metrics) && !exists(ckpt), "a file was left behind");
    free(err);
    free(out);
}

/* Whether s holds only what a terminal may be given: valid UTF-8, no C0
 * control but newline and tab, no DEL, no C1 control. */
static int terminal_safe(const char *s, size_t n, size_t *bad)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int c1 = c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] < 0xa0;
        if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f || c1) {
            *bad = i;
            return 0;
        }
    }
    *bad = n;
    return tm_json_utf8_valid(s, n);
}

Test(gpt_cli, the_sample_holds_no_raw_control_bytes)
{
    char args[1024];
    /* A barely trained model samples all 256 byte values alike. */
    snprintf(args, sizeof args, SYNTH " --steps 2 --sample-tokens 400");
    cr_assert_eq(train(args), 0, "%s", slurp(err_path, NULL));
    size_t n;
    char *out = slurp(out_path, &n);
    const char *head = "sample (400 bytes, temperature 0.8):\n", *s = strstr(out, head);
    cr_assert_not_null(s, "no sample in %s", out);
    s += strlen(head);
    size_t len = n - (size_t)(s - out), bad;
    cr_expect(terminal_safe(s, len, &bad), "raw byte 0x%02x at %zu of the sample",
              bad < len ? (unsigned char)s[bad] : 0, bad);
    cr_expect(strstr(s, "\\x") != NULL, "400 bytes of a random model and nothing escaped: %s", s);
    cr_expect_gt(len, 100);
    free(out);
    /* --sample-tokens 0: no sample at all. */
    snprintf(args, sizeof args, SYNTH " --steps 1 --sample-tokens 0");
    cr_assert_eq(train(args), 0);
    out = slurp(out_path, NULL);
    cr_expect_null(strstr(out, "sample ("), "%s", out);
    free(out);
}
