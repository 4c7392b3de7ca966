/* build/schedule from the outside: written into a pipe or a file (not a
 * terminal), the timeline keeps every label, however wide its lines; it
 * used to be cut to 160 columns, dropping most labels of a long schedule. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "tests/cli.h"

/* The micro-batches whose forward (F) and backward (B) labels appear whole
 * on the timeline row of `stage`, as bit sets over 0..63. */
static void labels_of(int stage, unsigned long long *fwd, unsigned long long *bwd)
{
    char needle[32], row[1 << 14];
    snprintf(needle, sizeof needle, "stage %d |", stage);
    *fwd = *bwd = 0;
    cr_assert_eq(cli_lines(cli_out, needle, row, sizeof row), 1, "no row for stage %d", stage);
    for (const char *p = strchr(row, '|') + 1; *p; p++) {
        if ((*p != 'F' && *p != 'B') || !isdigit((unsigned char)p[1])) continue;
        int mb = 0;
        const char *q = p + 1;
        for (; isdigit((unsigned char)*q); q++) mb = mb * 10 + (*q - '0');
        if (mb < 64) *(*p == 'F' ? fwd : bwd) |= 1ull << mb;
        p = q - 1;
    }
}

Test(schedule_cli, a_pipe_gets_every_label_of_every_schedule, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    const char *kinds[] = {"sequential", "gpipe", "1f1b", "grouped", "interleaved"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        char args[128];
        snprintf(args, sizeof args, "--pp 4 --micro-batches 32 --schedule %s", kinds[k]);
        cr_assert_eq(cli_run("schedule", args), 0, "%s", args);
        for (int s = 0; s < 4; s++) {
            unsigned long long f, b, all = (1ull << 32) - 1;
            labels_of(s, &f, &b);
            cr_expect_eq(f, all, "%s stage %d: forward labels %#llx of %#llx", kinds[k], s, f,
                         all);
            cr_expect_eq(b, all, "%s stage %d: backward labels %#llx of %#llx", kinds[k], s, b,
                         all);
        }
    }
}

Test(schedule_cli, an_explicit_width_is_kept, .init = cli_setup, .fini = cli_teardown,
     .timeout = 60)
{
    char row[1 << 14];
    cr_assert_eq(cli_run("schedule", "--pp 2 --micro-batches 4 --width 40"), 0);
    cr_assert_eq(cli_lines(cli_out, "stage 1 |", row, sizeof row), 1);
    cr_expect_eq(strlen(row), strlen("stage 1 |") + 40 + strlen("|\n"), "%s", row);
}
