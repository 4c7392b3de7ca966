/* build/fit from the outside: with a small model and cap the story plays
 * out (phase 1 prints the arena's OOM report, phases 2 and 3 train and print
 * a memory table of four devices under the cap) and exits 0; a model that
 * fits one device exits 1; bad usage is one line on stderr and exit 2. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "runtime/arena.h"
#include "tests/cli.h"

/* Small enough to run in seconds: one device needs about 9.8 MiB, each
 * device of pp=4 or tp=4 about 6.5 MiB (mostly evaluation activations). */
#define SMALL "--model 784,256,256,256,10 --steps 3 --batch 32 --micro-batches 4"

static char out[1 << 16], err[1 << 12];

/* Runs build/fit with args; returns its exit status, output in out / err. */
static int fit(const char *args)
{
    int st = cli_run("fit", args);
    cli_slurp(cli_out, out, sizeof out);
    cli_slurp(cli_err, err, sizeof err);
    return st;
}

/* The text of out from the line holding `from` up to `to` (or the end),
 * copied into buf; "" when `from` is missing. */
static const char *section(const char *from, const char *to, char *buf, size_t n)
{
    buf[0] = '\0';
    const char *a = strstr(out, from);
    if (a == NULL) return buf;
    const char *b = to ? strstr(a, to) : NULL;
    size_t len = b ? (size_t)(b - a) : strlen(a);
    if (len >= n) len = n - 1;
    memcpy(buf, a, len);
    buf[len] = '\0';
    return buf;
}

/* Checks a phase's memory table: four rows, devices 0..3, with pipeline
 * stage p = id (pp) or tensor rank t = id (tp), each peaking under the cap. */
static void expect_table(const char *name, const char *text, int pipeline)
{
    cr_expect(strstr(text, "trained 3 steps") != NULL, "%s did not train:\n%s", name, text);
    cr_expect(strstr(text, "peak memory per device") != NULL, "%s: no table:\n%s", name, text);
    int rows = 0;
    for (const char *line = text; line != NULL && *line; line = strchr(line, '\n')) {
        if (*line == '\n') line++;
        int id, d, p, t, used, ok = 1;
        double tags[TM_TAG_COUNT], peak, share;
        const char *at = line;
        if (sscanf(at, " %d %d,%d,%d%n", &id, &d, &p, &t, &used) != 4) continue;
        /* A column per tag, then the peak and its share of the cap. */
        for (int k = 0; ok && k < TM_TAG_COUNT; k++) {
            at += used;
            ok = sscanf(at, " %lf%n", &tags[k], &used) == 1;
        }
        if (!ok || sscanf(at + used, " %lf %lf%%", &peak, &share) != 2) continue;
        cr_expect_eq(id, rows, "%s: row %d is device %d", name, rows, id);
        cr_expect_eq(d, 0, "%s: device %d has d = %d", name, id, d);
        cr_expect_eq(pipeline ? p : t, id, "%s: device %d coordinates %d,%d,%d", name, id, d, p, t);
        cr_expect_eq(pipeline ? t : p, 0, "%s: device %d coordinates %d,%d,%d", name, id, d, p, t);
        cr_expect(tags[0] > 0 && tags[1] == tags[0] && tags[2] == tags[0],
                  "%s: device %d param / grad / optimizer %.2f %.2f %.2f", name, id, tags[0],
                  tags[1], tags[2]);
        cr_expect(peak > 0 && share <= 100, "%s: device %d peaks at %.2f MiB, %.0f%% of the cap",
                  name, id, peak, share);
        rows++;
    }
    cr_expect_eq(rows, 4, "%s: %d device rows:\n%s", name, rows, text);
}

Test(fit_cli, story_plays_out_and_exits_0, .init = cli_setup, .fini = cli_teardown, .timeout = 300)
{
    int st = fit(SMALL " --mem-cap 4M");
    cr_expect_eq(st, 0, "exit %d\n%s%s", st, out, err);
    cr_expect_eq(err[0], '\0', "stderr: %s", err);
    static char p1[1 << 14], p2[1 << 14], p3[1 << 14];
    section("== phase 1", "== phase 2", p1, sizeof p1);
    section("== phase 2", "== phase 3", p2, sizeof p2);
    section("== phase 3", "== summary", p3, sizeof p3);
    cr_expect(strstr(p1, "device 0: out of memory: tried to allocate") != NULL, "phase 1:\n%s", p1);
    cr_expect(strstr(p1, "by tag: param") != NULL, "phase 1:\n%s", p1);
    cr_expect(strstr(p1, "one device would need") != NULL, "phase 1:\n%s", p1);
    cr_expect(strstr(p1, "peak memory per device") == NULL, "phase 1 trained:\n%s", p1);
    expect_table("phase 2", p2, 1);
    expect_table("phase 3", p3, 0);
    cr_expect(strstr(out, "trained the same model") != NULL, "%s", out);
}

/* ZeRO's phase: stage 3 over four replicas trains where one device runs
 * out (SGD with momentum: 12 psi = 3.8 MiB before any activation; 3 psi
 * and the layer in flight sharded), its table against the formulas. */
Test(fit_cli, zero_phase_trains_sharded_under_the_cap, .init = cli_setup, .fini = cli_teardown,
     .timeout = 300)
{
    static char p4[1 << 14];
    int st = fit(SMALL " --mem-cap 4M --zero 3");
    cr_expect_eq(st, 0, "exit %d\n%s%s", st, out, err);
    section("== phase 4", "== summary", p4, sizeof p4);
    cr_expect(strstr(p4, "ZeRO-3") != NULL, "phase 4:\n%s", p4);
    cr_expect(strstr(p4, "trained 3 steps") != NULL, "phase 4:\n%s", p4);
    cr_expect(strstr(p4, "memory against the formulas, ZeRO-3 over dp=4") != NULL, "%s", p4);
    cr_expect(strstr(out, "device 0: out of memory") != NULL, "phase 1 fitted:\n%s", out);
    cr_expect(strstr(out, "ZeRO-3     trained 3 steps") != NULL, "summary:\n%s", out);
}

/* Offload in every phase: the momentum leaves the devices for their host
 * arenas (the memory tables' host column), the phases train as before. */
Test(fit_cli, offload_keeps_the_momentum_in_host_memory, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    static char p2[1 << 14];
    int st = fit(SMALL " --mem-cap 3M --offload optimizer --host-mem-cap 2M");
    cr_expect_eq(st, 0, "exit %d\n%s%s", st, out, err);
    cr_expect(strstr(out, "Every phase offloads the optimizer") != NULL, "%s", out);
    section("== phase 2", "== phase 3", p2, sizeof p2);
    cr_expect(strstr(p2, "optimizer 0.0 KiB") != NULL, "phase 2:\n%s", p2);
    cr_expect(strstr(p2, "in host memory: optimizer") != NULL, "phase 2:\n%s", p2);
    cr_expect(strstr(out, "trained the same model") != NULL, "%s", out);
}

Test(fit_cli, model_that_fits_one_device_exits_1, .init = cli_setup, .fini = cli_teardown, .timeout = 300)
{
    int st = fit(SMALL " --mem-cap 16M");
    cr_expect_eq(st, 1, "exit %d\n%s%s", st, out, err);
    cr_expect(strstr(out, "it fits on one device") != NULL, "%s", out);
    cr_expect(strstr(out, "device 0: out of memory") == NULL, "%s", out);
}

Test(fit_cli, cap_too_small_for_the_split_exits_1, .init = cli_setup, .fini = cli_teardown, .timeout = 300)
{
    int st = fit(SMALL " --mem-cap 2M");
    cr_expect_eq(st, 1, "exit %d\n%s%s", st, out, err);
    static char p2[1 << 14];
    section("== phase 2", "== phase 3", p2, sizeof p2);
    cr_expect(strstr(p2, "FAILED (TM_ENOMEM)") != NULL, "phase 2:\n%s", p2);
    cr_expect(strstr(p2, "out of memory") != NULL, "phase 2:\n%s", p2);
}

/* Each case is one line on stderr naming only fit's own flags (fit sets
 * the mesh itself), nothing on stdout, and exit 2. */
static void expect_usage_errors(const char *const *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int st = fit(cases[i]);
        size_t len = strlen(err);
        char *nl = strchr(err, '\n');
        cr_expect_eq(st, 2, "\"%s\": exit %d", cases[i], st);
        cr_expect(nl != NULL && (size_t)(nl - err) == len - 1, "\"%s\": not one line: %s", cases[i],
                  err);
        cr_expect(strncmp(err, "fit: ", 5) == 0, "\"%s\": %s", cases[i], err);
        cr_expect(strstr(err, "--pp") == NULL && strstr(err, "--tp") == NULL &&
                      strstr(err, "--dp") == NULL,
                  "\"%s\" names a flag fit does not have: %s", cases[i], err);
        cr_expect_eq(out[0], '\0', "\"%s\" printed: %s", cases[i], out);
    }
}

Test(fit_cli, bad_usage_is_one_line_and_status_2, .init = cli_setup, .fini = cli_teardown, .timeout = 120)
{
    const char *cases[] = {
        "--frobnicate",
        "--steps 0",
        "--steps -3",
        "--steps abc",
        "--batch 0",
        "--micro-batches 0",
        "--batch 100 --micro-batches 3",
        "--mem-cap 12Q",
        "--mem-cap 0",
        "--model 784,abc,10",
        "--model 784,256,10",
        "--model 784,30,30,30,10",
        "--model 100,256,256,256,10",
        "--dataset cifar10",
        "--recompute everything",
        "--recompute selective",
        "--precision half",
        "--data-dir /nonexistent-tinymesh-dir",
        "--steps",
        "stray-argument",
        "--zero 0",
        "--zero 4",
        "--zero two",
        "--zero 3 --batch 66 --micro-batches 2",
        "--offload optimizer",
        "--offload ram --host-mem-cap 8M",
        "--host-mem-cap 8M",
        "--offload optimizer --host-mem-cap 4K",
    };
    expect_usage_errors(cases, sizeof cases / sizeof cases[0]);
}

/* The GPT's story, small: one device needs 2.7 MiB, the remedies 0.5 to
 * 1.9 MiB. */
#define GPT_SMALL "--model gpt --layers 4 --heads 4 --d-model 32 --context 16 --batch 8 --steps 2"

/* The row of the table for remedy `name`: the two numbers before the
 * difference (peak, predicted; the tags' columns come first, however many
 * tags there are) and the fits column after it. */
static int gpt_row(const char *name, double *peak, double *predicted, char *fits)
{
    char key[64], line[512];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *a = strstr(out, key);
    if (a == NULL) return 0;
    a += strlen(key);
    size_t n = strcspn(a, "\n");
    if (n >= sizeof line) return 0;
    memcpy(line, a, n);
    line[n] = '\0';
    double prev[2] = {0, 0};
    for (char *tok = strtok(line, " "); tok != NULL; tok = strtok(NULL, " ")) {
        if (strchr(tok, '%') != NULL) {
            char *f = strtok(NULL, " ");
            if (f == NULL) return 0;
            snprintf(fits, 4, "%s", f);
            *peak = prev[0];
            *predicted = prev[1];
            return 1;
        }
        prev[0] = prev[1];
        prev[1] = strtod(tok, NULL);
    }
    return 0;
}

Test(fit_cli, gpt_story_every_remedy_measured_against_its_prediction, .init = cli_setup,
     .fini = cli_teardown, .timeout = 600)
{
    int st = fit(GPT_SMALL " --mem-cap 1M --predict");
    cr_expect_eq(st, 0, "exit %d\n%s%s", st, out, err);
    cr_expect(strstr(out, "device 0: out of memory") != NULL, "one device fitted:\n%s", out);
    static const char *names[] = {"one device", "recompute selective", "recompute full",
                                  "accumulate x8", "full + accumulate x8", "dp=4",
                                  "dp=4 ZeRO-1", "dp=4 ZeRO-2", "dp=4 ZeRO-3", "ZeRO-1 + full",
                                  "pp=4 1F1B m=8", "tp=4", "tp=4 + SP", "tp=4 + SP + full",
                                  "offload", "offload + full + acc x4", "ZeRO-3 + offload",
                                  "bf16 + offload"};
    int fitted = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        double peak = 0, predicted = 0;
        char fits[4] = "";
        cr_assert(gpt_row(names[i], &peak, &predicted, fits), "no row %s:\n%s", names[i], out);
        /* The collectives' small-message copy is not predicted: 16 KiB per
         * group at most. */
        cr_expect(peak >= 0.98 * predicted && peak <= predicted + 0.05, "%s: peak %.2f MiB, "
                  "predicted %.2f", names[i], peak, predicted);
        cr_expect_eq(strcmp(fits, "yes") == 0, peak <= 1.0, "%s: %.2f MiB, fits %s", names[i],
                     peak, fits);
        fitted += strcmp(fits, "yes") == 0;
    }
    cr_expect_gt(fitted, 3, "%s", out);
    cr_expect(strstr(out, "  predicted") != NULL && strstr(out, "  difference") != NULL,
              "--predict printed no prediction by tag:\n%s", out);
    cr_expect(strstr(out, "(!)") == NULL, "a row disagrees:\n%s", out);
    cr_expect(strstr(out, "the story played out") != NULL, "%s", out);
}

Test(fit_cli, gpt_story_needs_one_device_out_of_memory, .init = cli_setup, .fini = cli_teardown,
     .timeout = 600)
{
    int st = fit(GPT_SMALL " --mem-cap 3M");
    cr_expect_eq(st, 1, "exit %d\n%s%s", st, out, err);
    cr_expect(strstr(out, "the story did not play out") != NULL, "%s", out);
}

Test(fit_cli, gpt_bad_usage_is_one_line_and_status_2, .init = cli_setup, .fini = cli_teardown,
     .timeout = 120)
{
    const char *cases[] = {
        "--model gpt --heads 3",
        "--model gpt --heads 2 --d-model 32",
        "--model gpt --layers 3",
        "--model gpt --layers 0",
        "--model gpt --context 18",
        "--model gpt --batch 12",
        "--model gpt --mem-cap 12Q",
        "--model gpt --steps 0",
        "--model gpt --text /nonexistent-tinymesh-file",
        "--model gpt --zero 3",
        "--model gpt stray",
        "--model=gpt --model mlp",
    };
    expect_usage_errors(cases, sizeof cases / sizeof cases[0]);
    cr_assert_eq(fit("--model gpt --help"), 0);
    const char *flags[] = {"--layers", "--heads", "--d-model", "--context", "--batch",
                           "--mem-cap", "--steps", "--predict", "--text", "Exit status"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        cr_expect(strstr(out, flags[i]) != NULL, "--help does not mention %s", flags[i]);
}

Test(fit_cli, help_documents_every_flag, .init = cli_setup, .fini = cli_teardown, .timeout = 60)
{
    cr_assert_eq(fit("--help"), 0);
    const char *flags[] = {"--model", "--mem-cap", "--steps", "--batch", "--micro-batches",
                           "--zero", "--recompute", "--offload", "--host-mem-cap", "--precision",
                           "--dataset", "--data-dir", "--help",
                           "Exit status"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        cr_expect(strstr(out, flags[i]) != NULL, "--help does not mention %s", flags[i]);
}
