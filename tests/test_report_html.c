/* The HTML reports from the outside: build/train --report of 1, 8 and 64
 * devices and of the GPT, bench_strategies --report and build/schedule
 * --svg write well-formed files (always checked), a 64-device page stays
 * under 2 MB, unwritable paths are bad usage before any work, and, where
 * Chromium is installed, scripts/report_check.py opens every page in it and
 * checks what a reader sees against the metrics and the CSV. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/cli.h"
#include "tests/wellformed.h"

/* The runs, each with its device count; the pages and metrics are named
 * after them in the test's directory. */
static const struct {
    const char *name;
    int devices;
    const char *args;
} runs[] = {
    /* A cap close enough to the peak to be drawn on the scale. */
    {"run1", 1,
     "--dataset synthetic --samples 512 --model 32,32,10 --batch 32 --steps 20 --mem-cap 64K"},
    {"run8", 8,
     "--dataset synthetic --samples 1024 --model 64,64,64,64,10 --batch 64 --epochs 2 --dp 2 "
     "--pp 2 --tp 2 --micro-batches 4"},
    {"run64", 64,
     "--dataset synthetic --samples 512 --model 256,256,256,256,256 --batch 256 --steps 2 "
     "--dp 4 --pp 4 --tp 4 --micro-batches 8 --mem-cap 8M"},
    {"gpt", 2,
     "--model gpt --dataset synthetic --samples 256 --layers 2 --heads 2 --d-model 32 "
     "--context 16 --batch 16 --dp 2 --steps 12 --eval-every 4 --sample-tokens 0"},
};
#define N_RUNS (sizeof runs / sizeof runs[0])

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s != NULL && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s != NULL) s[n] = '\0';
    if (len) *len = (size_t)n;
    return s;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

/* Every page of the suite into the test's directory. */
static void make_reports(void)
{
    char args[2048], page[128], csv[128], svg[128];
    for (size_t i = 0; i < N_RUNS; i++) {
        cli_path(page, sizeof page, runs[i].name);
        snprintf(args, sizeof args, "%s --report %s.html --metrics %s.jsonl", runs[i].args, page,
                 page);
        int st = cli_run("train", args);
        cr_assert_eq(st, 0, "train %s: exit %d", args, st);
    }
    cli_path(page, sizeof page, "sweep.html");
    cli_path(csv, sizeof csv, "sweep.csv");
    snprintf(args, sizeof args, "--devices 2 --steps 2 --micro-batches 1,2 --csv --report %s",
             page);
    cr_assert_eq(cli_run("bench_strategies", args), 0, "bench_strategies %s", args);
    cr_assert_eq(rename(cli_out, csv), 0);
    cli_path(svg, sizeof svg, "sched.svg");
    snprintf(args, sizeof args, "--pp 4 --micro-batches 8 --svg %s", svg);
    cr_assert_eq(cli_run("schedule", args), 0, "schedule %s", args);
}

static void expect_wellformed(const char *name, size_t *len_out)
{
    char path[128], why[256];
    size_t len;
    cli_path(path, sizeof path, name);
    char *s = slurp(path, &len);
    cr_assert_not_null(s, "%s was not written", name);
    cr_expect_eq(wellformed(s, len, why, sizeof why), 0, "%s: %s", name, why);
    if (len_out) *len_out = len;
    free(s);
}

Test(report_html, pages_are_well_formed_with_a_lane_per_device, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    make_reports();
    for (size_t i = 0; i < N_RUNS; i++) {
        char name[64], path[128], want[64];
        size_t len;
        snprintf(name, sizeof name, "%s.html", runs[i].name);
        expect_wellformed(name, &len);
        cli_path(path, sizeof path, name);
        char *s = slurp(path, NULL);
        cr_assert_not_null(s);
        int n = runs[i].devices;
        cr_expect_eq(count(s, "<g class=\"lane\""), n, "%s: lanes", name);
        snprintf(want, sizeof want, "data-rows=\"%d\"", n);
        cr_expect_eq(count(s, want), 2, "%s: memory and modeled-time bars", name);
        snprintf(want, sizeof want, "class=\"matrix\" data-n=\"%d\"", n);
        cr_expect(n == 1 || count(s, want) >= 1, "%s: no %d x %d matrix", name, n, n);
        /* Offline: the only addresses are XML namespaces, which load nothing. */
        cr_expect_eq(count(s, "http"), count(s, "http://www.w3.org/"), "%s refers to the network",
                     name);
        /* The 64-device page is the large one. */
        cr_expect(len < 2u << 20, "%s is %zu bytes", name, len);
        free(s);
    }
    expect_wellformed("sweep.html", NULL);
    expect_wellformed("sched.svg", NULL);
}

Test(report_html, a_run_without_a_recorded_step_still_has_its_page, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    char args[1024], page[128];
    cli_path(page, sizeof page, "late.html");
    snprintf(args, sizeof args,
             "--dataset synthetic --samples 256 --model 16,16,4 --batch 32 --steps 2 --pp 2 "
             "--trace-from 5 --report %s", page);
    cr_assert_eq(cli_run("train", args), 0);
    expect_wellformed("late.html", NULL);
    char *s = slurp(page, NULL);
    cr_assert_not_null(s);
    cr_expect(strstr(s, "No step was recorded") != NULL);
    free(s);
}

/* A path in a directory that does not exist, for each program's flag. */
Test(report_html, unwritable_paths_fail_before_any_work, .init = cli_setup, .fini = cli_teardown,
     .timeout = 120)
{
    char missing[128], args[512], first[1024];
    cli_path(missing, sizeof missing, "no-such-dir/out");
    const struct {
        const char *prog, *flag, *prefix;
    } cases[] = {{"bench_strategies", "--devices 2 --report", "bench_strategies: --report:"},
                 {"schedule", "--svg", "schedule: --svg:"}};
    for (size_t i = 0; i < 2; i++) {
        snprintf(args, sizeof args, "%s %s", cases[i].flag, missing);
        int st = cli_run(cases[i].prog, args);
        cr_expect_eq(st, 2, "%s %s: exit %d", cases[i].prog, args, st);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s", cases[i].prog);
        cr_expect(strncmp(first, cases[i].prefix, strlen(cases[i].prefix)) == 0, "%s", first);
        cr_expect_eq(cli_lines(cli_out, NULL, first, sizeof first), 0, "it started: %s", first);
    }
    snprintf(args, sizeof args, "--schedule all --svg %s/s.svg", cli_dir);
    cr_expect_eq(cli_run("schedule", args), 2, "--svg with --schedule all");
}

/* The browser check runs where Chromium is (CI installs it with
 * scripts/deps.sh browser); elsewhere the test says it skipped. */
Test(report_html, every_page_reads_right_in_chromium, .init = cli_setup, .fini = cli_teardown,
     .timeout = 600)
{
    if (access("/usr/bin/chromium", X_OK) != 0)
        cr_skip_test("Chromium is not installed (scripts/deps.sh browser installs it)");
    make_reports();
    char cmd[4096], item[256];
    int n = snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/report_check.py");
    for (size_t i = 0; i < N_RUNS; i++) {
        snprintf(item, sizeof item, " run:%s/%s.html:%s/%s.jsonl", cli_dir, runs[i].name, cli_dir,
                 runs[i].name);
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, "%s", item);
    }
    snprintf(cmd + n, sizeof cmd - (size_t)n,
             " sweep:%s/sweep.html:%s/sweep.csv svg:%s/sched.svg:4 >%s/check.log 2>&1", cli_dir,
             cli_dir, cli_dir, cli_dir);
    int st = system(cmd);
    char log[128];
    cli_path(log, sizeof log, "check.log");
    char *out = slurp(log, NULL);
    cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "report_check failed:\n%s",
              out ? out : "(no output)");
    free(out);
}
