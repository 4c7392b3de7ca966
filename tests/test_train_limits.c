/* build/train at its limits, from the outside: more than 64 data-parallel
 * replicas run to the end (256 devices is the bar); a model that cannot fit
 * a device is refused before the host spends memory on it; refusals name
 * the real limit, and --help lists the limits. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "tests/cli.h"

/* The summary line of a metrics file, into line. */
static void summary(const char *metrics, char *line, size_t n)
{
    cr_assert_eq(cli_lines(metrics, "\"type\":\"summary\"", line, n), 1, "no summary in %s",
                 metrics);
}

/* dp replicas of a tiny model, one sample each per step, small arenas (the
 * devices touch all of theirs when they start). */
static void run_replicas(int dp)
{
    char metrics[128], args[1024];
    static char line[1 << 20];
    cli_path(metrics, sizeof metrics, "metrics.jsonl");
    snprintf(args, sizeof args,
             "--dataset synthetic --samples %d --model 16,16,4 --batch %d --dp %d --steps 3 "
             "--mem-cap 1M --metrics %s",
             8 * dp, dp, dp, metrics);
    int st = cli_run("train", args);
    char first[1024];
    cli_lines(cli_err, NULL, first, sizeof first);
    cr_assert_eq(st, 0, "--dp %d: exit %d: %s", dp, st, first);
    summary(metrics, line, sizeof line);
    cr_expect(strstr(line, "\"steps\":3,") != NULL, "--dp %d: %.200s", dp, line);
    char last[64];
    snprintf(last, sizeof last, "{\"id\":%d,\"process\":0,\"dp\":%d,\"pp\":0,\"tp\":0,", dp - 1, dp - 1);
    cr_expect(strstr(line, last) != NULL, "--dp %d: no device %d in the summary", dp, dp - 1);
    cr_expect(strstr(line, "\"test_acc\":null") == NULL, "--dp %d: not evaluated", dp);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"step\"", first, sizeof first), 3);
}

Test(train_limits, sixty_five_replicas_run_to_the_end, .init = cli_setup, .fini = cli_teardown,
     .timeout = 300)
{
    run_replicas(65);
}

Test(train_limits, two_hundred_fifty_six_replicas_run_to_the_end, .init = cli_setup,
     .fini = cli_teardown, .timeout = 600)
{
    run_replicas(256);
}

Test(train_limits, a_model_that_cannot_fit_is_refused_before_the_host_holds_it,
     .init = cli_setup, .fini = cli_teardown, .timeout = 120)
{
    /* 833 M parameters: 3.1 GiB each for weights, gradients and momentum,
     * against a 64 MiB device. The refusal must come before the host
     * allocates (and initialises) the model: the run's peak resident
     * memory stays far below one copy. */
    char first[1024];
    int st = cli_run("train", "--dataset synthetic --samples 1024 --model 784,1048576,10 "
                              "--steps 1");
    cr_expect_eq(st, 1, "exit %d", st);
    cr_expect_eq(cli_lines(cli_err, "device 0: out of memory: tried to allocate 3.11 GiB", first,
                           sizeof first),
                 1, "%s", first);
    cr_expect_eq(cli_lines(cli_err, "by tag: param", first, sizeof first), 1);
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    cr_expect_lt(ru.ru_maxrss, 256 * 1024, "the run held %ld KiB", ru.ru_maxrss);
    /* Two layers of 2^20, 1.1 T parameters: refused the same way; and with
     * a cap that would take it, the host cannot, and says how many
     * parameters it could not hold (it said 0). */
    const char *huge = "--dataset synthetic --samples 1024 --model 784,1048576,1048576,10 "
                       "--steps 1";
    const char *caps[] = {"", "--mem-cap 16T"};
    const char *says[] = {"tried to allocate 4.00 TiB (4401385177128 bytes",
                          "cannot allocate 1100346294282 parameters"};
    /* Under AddressSanitizer a 4 TiB calloc is a fatal report unless the
     * allocator may return NULL, as libc's does: let it, for the child. */
    char asan[512];
    const char *was = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "%s%sallocator_may_return_null=1", was ? was : "", was ? ":" : "");
    setenv("ASAN_OPTIONS", asan, 1);
    for (int i = 0; i < 2; i++) {
        char args[256];
        snprintf(args, sizeof args, "%s %s", huge, caps[i]);
        st = cli_run("train", args);
        cr_expect_eq(st, 1, "%s: exit %d", caps[i], st);
        cr_expect_eq(cli_lines(cli_err, says[i], first, sizeof first), 1, "%s", first);
    }
}

Test(train_limits, refusals_name_the_real_limit, .init = cli_setup, .fini = cli_teardown,
     .timeout = 120)
{
    const struct {
        const char *args, *says;
    } cases[] = {
        {"--seed -1", "--seed wants an integer in 0..9223372036854775807"},
        {"--seed 9223372036854775808", "--seed wants an integer in 0..9223372036854775807"},
        {"--dp 1025", "--dp wants an integer in 1..1024"},
        {"--dp 32 --pp 2 --tp 32", "1024"},
        {"--batch 3000000000", "--batch wants an integer in 1..2147483647"},
        {"--epochs 3000000000", "--epochs wants an integer in 1..2147483647"},
        {"--micro-batches 70000", "--micro-batches wants an integer in 1..65536"},
        {"--fail-device 1024 --fail-step 1", "--fail-device wants an integer in 0..1023"},
        {"--model 784,2000000,10", "between 1 and 1048576"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char first[1024];
        int st = cli_run("train", cases[i].args);
        cr_expect_eq(st, 2, "%s: exit %d", cases[i].args, st);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s", cases[i].args);
        cr_expect(strstr(first, cases[i].says) != NULL, "%s: %s", cases[i].args, first);
    }
}

Test(train_limits, help_lists_the_limits, .init = cli_setup, .fini = cli_teardown,
     .timeout = 60)
{
    char first[1024];
    cr_assert_eq(cli_run("train", "--help"), 0);
    const char *limits[] = {"<= 1024 devices", "32 linear layers", "1..1048576", "<= 65536",
                            "--seed 0..9223372036854775807", "within --mem-cap"};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
        cr_expect_eq(cli_lines(cli_out, limits[i], first, sizeof first), 1, "--help lacks \"%s\"",
                     limits[i]);
}

Test(train_limits, a_device_too_large_for_the_host_is_told_in_figures, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    char first[1024];
    int st = cli_run("train", "--dataset synthetic --model 16,16,4 --steps 1 --mem-cap 1T");
    cr_expect_eq(st, 1, "exit %d", st);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1);
    cr_expect(strstr(first, "1 device x 1.00 TiB of device memory") != NULL, "%s", first);
    cr_expect(strstr(first, "--devices") == NULL, "one device is told to lower --devices: %s",
              first);
}
