/* build/train stopped early, from the outside: a signal in the middle of an
 * 8-device run finishes the step in flight on every device, writes a
 * checkpoint that resumes like any other and the metrics summary, says so
 * in one line and exits 128 + the signal; a second signal ends it at once;
 * a diverging run stops with exit 1 naming the step, saves nothing, and
 * keeps metrics that are valid JSON up to the failing step. No temporary
 * file is left behind in any case. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "strategies/json.h"
#include "tests/cli.h"

/* 8 devices on a small synthetic problem: about a thousand steps a second
 * here, 128 steps an epoch, so a run of 50 epochs is long enough to be
 * interrupted and a step number says where it was. */
#define MESH                                                                                    \
    "--dataset synthetic --samples 4096 --model 32,64,64,8 --batch 32 --dp 2 --pp 2 --tp 2 "   \
    "--micro-batches 2 --lr-schedule constant --lr 0.05 "

/* Starts build/train with args in the background, stdout and stderr into
 * cli_out and cli_err; returns its pid. */
static pid_t start_train(const char *args)
{
    char bin[256], cmd[4096];
    cli_program(bin, sizeof bin, "train");
    snprintf(cmd, sizeof cmd, "exec %s %s >%s 2>%s", bin, args, cli_out, cli_err);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    cr_assert_gt(pid, 0);
    return pid;
}

/* Waits (politely: 10 ms naps) until the run has printed `line` on stdout. */
static void wait_for_output(pid_t pid, const char *line)
{
    char first[256];
    for (int i = 0; i < 6000; i++) {
        if (cli_lines(cli_out, line, first, sizeof first) > 0) return;
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "train ended before printing %s", line);
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    cr_assert_fail("train never printed %s", line);
}

/* Starts build/train with args, sends it `sig` (twice with `twice`) once
 * it has printed `line`, and returns its wait status. */
static int interrupt_train(const char *args, const char *line, int sig, int twice)
{
    pid_t pid = start_train(args);
    wait_for_output(pid, line);
    cr_assert_eq(kill(pid, sig), 0);
    if (twice) cr_assert_eq(kill(pid, sig), 0);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return status;
}

/* The step of "interrupted at step S; ..." on stderr, or -1. */
static long interrupted_step(void)
{
    char first[512];
    long step = -1;
    if (cli_lines(cli_err, "interrupted at step ", first, sizeof first) == 1)
        sscanf(first, "interrupted at step %ld;", &step);
    return step;
}

/* Every line of a metrics file parses as JSON; returns how many. */
static int valid_json_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no metrics file %s", path);
    static char line[1 << 16];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        tm_json_doc *doc = NULL;
        cr_expect_eq(tm_json_parse(&doc, line, strlen(line)), 0, "line %d is not JSON: %s", n + 1,
                     line);
        tm_json_free(doc);
        n++;
    }
    fclose(f);
    return n;
}

/* The loss of step `step` in a metrics file, as written (the exact digits). */
static int loss_text(const char *path, long step, char *out, size_t n)
{
    char needle[64], first[1024];
    snprintf(needle, sizeof needle, "{\"type\":\"step\",\"step\":%ld,", step);
    if (cli_lines(path, needle, first, sizeof first) != 1) return -1;
    const char *l = strstr(first, "\"loss\":");
    if (l == NULL) return -1;
    snprintf(out, n, "%.*s", (int)strcspn(l + 7, ","), l + 7);
    return 0;
}

Test(train_stop, sigint_mid_run_saves_a_checkpoint_that_resumes_exactly, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    char ckpt[128], metrics[128], resumed[128], straight[128], args[2048], first[1024];
    cli_path(ckpt, sizeof ckpt, "ckpt.safetensors");
    cli_path(metrics, sizeof metrics, "metrics.jsonl");
    cli_path(resumed, sizeof resumed, "resumed.jsonl");
    cli_path(straight, sizeof straight, "straight.jsonl");
    snprintf(args, sizeof args, MESH "--epochs 50 --save %s --metrics %s", ckpt, metrics);
    int status = interrupt_train(args, "step 200/", SIGINT, 0);
    cr_assert(WIFEXITED(status), "train died of signal %d", WTERMSIG(status));
    cr_expect_eq(WEXITSTATUS(status), 130, "exit %d", WEXITSTATUS(status));
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "stderr: %s", first);
    long s = interrupted_step();
    cr_assert_geq(s, 200, "%s", first);
    char want[256];
    snprintf(want, sizeof want, "interrupted at step %ld; checkpoint written to %s\n", s, ckpt);
    cr_expect_str_eq(first, want);
    cr_expect(cli_exists(ckpt));
    /* The metrics: every step up to S and every epoch it ended (128 steps
     * each), then the summary, all valid JSON. */
    cr_expect_eq(valid_json_lines(metrics), s + s / 128 + 1);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"step\"", first, sizeof first), s);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"summary\"", first, sizeof first), 1);
    char steps[64];
    snprintf(steps, sizeof steps, "{\"type\":\"summary\",\"steps\":%ld,\"interrupted\":true,", s);
    cr_expect(strncmp(first, steps, strlen(steps)) == 0, "%s", first);
    cr_expect_eq(cli_temps_left(), 0);

    /* Resumed for 3 steps, it computes what a run straight through does. */
    snprintf(args, sizeof args, MESH "--epochs 50 --load %s --steps 3 --metrics %s", ckpt,
             resumed);
    cr_assert_eq(cli_run("train", args), 0);
    snprintf(want, sizeof want, "resumed from %s at step %ld (epoch %ld, %ld of its 128 steps", ckpt,
             s, s / 128 + 1, s % 128);
    cr_expect_eq(cli_lines(cli_out, want, first, sizeof first), 1, "no \"%s\"", want);
    snprintf(args, sizeof args, MESH "--epochs 50 --steps %ld --metrics %s", s + 3, straight);
    cr_assert_eq(cli_run("train", args), 0);
    for (long k = s + 1; k <= s + 3; k++) {
        char a[64], b[64];
        cr_assert_eq(loss_text(resumed, k, a, sizeof a), 0, "no step %ld after resuming", k);
        cr_assert_eq(loss_text(straight, k, b, sizeof b), 0, "no step %ld straight through", k);
        cr_expect_str_eq(a, b, "step %ld: resumed loss %s, straight %s", k, a, b);
    }
}

Test(train_stop, sigterm_exits_143_without_a_save, .init = cli_setup, .fini = cli_teardown,
     .timeout = 300)
{
    char metrics[128], args[2048];
    cli_path(metrics, sizeof metrics, "metrics.jsonl");
    snprintf(args, sizeof args, MESH "--epochs 50 --metrics %s", metrics);
    int status = interrupt_train(args, "step 100/", SIGTERM, 0);
    cr_assert(WIFEXITED(status), "train died of signal %d", WTERMSIG(status));
    cr_expect_eq(WEXITSTATUS(status), 143);
    long s = interrupted_step();
    cr_expect_geq(s, 100);
    char first[512];
    cr_expect(cli_lines(cli_err, "no checkpoint written (no --save)", first, sizeof first) == 1,
              "stderr: %s", first);
    cr_expect_eq(valid_json_lines(metrics), s + s / 128 + 1);
    cr_expect_eq(cli_temps_left(), 0);
}

Test(train_stop, a_second_signal_ends_the_run_at_once_and_leaves_no_temporary,
     .init = cli_setup, .fini = cli_teardown, .timeout = 300)
{
    char ckpt[128], metrics[128], args[2048];
    cli_path(ckpt, sizeof ckpt, "ckpt.safetensors");
    cli_path(metrics, sizeof metrics, "metrics.jsonl");
    snprintf(args, sizeof args, MESH "--epochs 50 --save %s --metrics %s", ckpt, metrics);
    int status = interrupt_train(args, "step 100/", SIGINT, 1);
    /* Either the second signal ended it, or the run was quicker and
     * finished with 130; never a half-written file. */
    cr_expect((WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) ||
                  (WIFEXITED(status) && WEXITSTATUS(status) == 130),
              "status %#x", status);
    cr_expect_eq(cli_temps_left(), 0, "a temporary file was left behind");
    if (WIFSIGNALED(status)) cr_expect(!cli_exists(metrics), "a metrics file appeared");
}

Test(train_stop, a_diverging_run_stops_naming_the_step_and_saves_nothing, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    char ckpt[128], metrics[128], args[2048], first[1024];
    cli_path(ckpt, sizeof ckpt, "ckpt.safetensors");
    cli_path(metrics, sizeof metrics, "metrics.jsonl");
    const char *lr[] = {"1e30", "1e6"};
    for (int i = 0; i < 2; i++) {
        snprintf(args, sizeof args,
                 "--dataset synthetic --samples 4096 --model 32,64,64,8 --batch 32 --dp 2 --pp 2 "
                 "--tp 2 --micro-batches 2 --lr-schedule constant --lr %s --epochs 2 "
                 "--save %s --metrics %s",
                 lr[i], ckpt, metrics);
        int st = cli_run("train", args);
        cr_expect_eq(st, 1, "--lr %s: exit %d", lr[i], st);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "--lr %s", lr[i]);
        long s = -1;
        char what[256] = "";
        sscanf(first, "train: training diverged at step %ld: %255[^\n]", &s, what);
        cr_expect_gt(s, 0, "--lr %s: %s", lr[i], first);
        cr_expect(strstr(what, " is nan") != NULL || strstr(what, " is inf") != NULL,
                  "--lr %s: %s", lr[i], first);
        cr_expect(!cli_exists(ckpt), "--lr %s: a checkpoint was written", lr[i]);
        /* Metrics: valid JSON, every step up to the failing one and none
         * after, no summary. */
        cr_expect_eq(valid_json_lines(metrics), s, "--lr %s", lr[i]);
        cr_expect_eq(cli_lines(metrics, "\"type\":\"step\"", first, sizeof first), s);
        cr_expect_eq(cli_lines(metrics, "\"type\":\"summary\"", first, sizeof first), 0);
        char last[64];
        snprintf(last, sizeof last, "{\"type\":\"step\",\"step\":%ld,", s);
        cr_expect_eq(cli_lines(metrics, last, first, sizeof first), 1, "no step %ld", s);
        if (strstr(what, "loss") != NULL)
            cr_expect(strstr(first, "\"loss\":null") != NULL, "--lr %s: %s", lr[i], first);
        cr_expect_eq(cli_temps_left(), 0);
        unlink(metrics);
    }
}
