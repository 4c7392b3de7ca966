/* The benchmark programs from the outside: their messages name their own
 * flags, never another program's (bench_collectives once suggested
 * lowering --mem-cap, which it does not have; bench_strategies' footer
 * named build/train's --pp for the configurations it swept). */
#include <criterion/criterion.h>
#include <string.h>

#include "tests/cli.h"

Test(bench_cli, bench_collectives_too_large_a_ring_names_its_own_flags, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    char first[1024];
    int st = cli_run("bench_collectives", "--ring-bytes 1G --devices 64 --sizes 4K --iters 1");
    cr_expect_neq(st, 0);
    cr_expect_eq(cli_lines(cli_err, "bench_collectives: 64 devices:", first, sizeof first), 1);
    cr_expect(strstr(first, "of link rings (1.00 GiB each)") != NULL, "%s", first);
    cr_expect(strstr(first, "--ring-bytes") != NULL, "%s", first);
    cr_expect(strstr(first, "--mem-cap") == NULL, "%s", first);
}

Test(bench_cli, bench_strategies_footer_names_no_flag_it_lacks, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    char first[1024];
    /* Four layers: the pp = 8 meshes are rejected. */
    int st = cli_run("bench_strategies", "--devices 8 --micro-batches 1 --schedules 1f1b");
    cr_expect_eq(st, 0);
    cr_expect_eq(cli_lines(cli_out, "rejected 1 x: pp 8 needs", first, sizeof first), 1, "%s",
                 first);
    cr_expect_eq(cli_lines(cli_out, "--pp", first, sizeof first), 0, "%s", first);
}

Test(bench_cli, bench_strategies_sweeps_zero_stages_where_dp_allows, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    char first[1024];
    /* Two devices: dp 2 runs with each stage, pp 2 and tp 2 without. */
    int st = cli_run("bench_strategies", "--devices 2 --micro-batches 1 --schedules 1f1b "
                                         "--zero 0,3 --csv");
    cr_expect_eq(st, 0);
    cr_expect_eq(cli_lines(cli_out, "fits,zero", first, sizeof first), 1, "%s", first);
    cr_expect_eq(cli_lines(cli_out, "2,1,1,1f1b,", first, sizeof first), 2, "%s", first);
    cr_expect_eq(cli_lines(cli_out, ",yes,3", first, sizeof first) +
                     cli_lines(cli_out, ",no,3", first, sizeof first), 1, "%s", first);
    const char *bad[] = {"--zero 4", "--zero 1,1", "--zero 0,", "--zero 1 --report x.html"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(cli_run("bench_strategies", bad[i]), 2, "%s", bad[i]);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s: %s", bad[i], first);
    }
}

Test(bench_cli, bench_strategies_space_planner_runs_build_plans_candidates, .init = cli_setup,
     .fini = cli_teardown, .timeout = 300)
{
    char first[1024], best[256];
    const char *model = "--devices 2 --model 12,32,10 --batch 8 --mem-cap 1M --csv";
    char args[256];
    snprintf(args, sizeof args, "%s --space planner", model);
    cr_assert_eq(cli_run("bench_strategies", args), 0);
    int rows = cli_lines(cli_out, "--dp ", first, sizeof first);
    cr_expect_eq(cli_lines(cli_out, "fits,config", first, sizeof first), 1, "%s", first);
    cr_expect_eq(cli_lines(cli_out, ",no,", first, sizeof first), 0, "%s", first);
    /* The first row (the best step 2) carries its flags last. */
    cr_assert_eq(cli_lines(cli_out, NULL, first, sizeof first), rows + 1);
    FILE *f = fopen(cli_out, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(first, sizeof first, f));
    cr_assert_not_null(fgets(first, sizeof first, f));
    fclose(f);
    first[strcspn(first, "\n")] = '\0';
    snprintf(best, sizeof best, "%s", strrchr(first, ',') + 1);
    /* The same candidates, and the planner's first pick is that best. */
    cr_assert_eq(cli_run("plan", model), 0);
    cr_expect_eq(cli_lines(cli_out, "--dp ", first, sizeof first), rows);
    f = fopen(cli_out, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(first, sizeof first, f));
    cr_assert_not_null(fgets(first, sizeof first, f));
    fclose(f);
    cr_expect(strncmp(first, best, strlen(best)) == 0 && first[strlen(best)] == ',',
              "bench_strategies' best %s, build/plan's pick %s", best, first);
    cr_expect_eq(cli_run("bench_strategies", "--space planner --zero 1"), 2);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s", first);
    cr_expect_eq(cli_run("bench_strategies", "--space all"), 2);
}

Test(bench_cli, bench_strategies_bad_recompute_or_offload_is_one_line_and_status_2, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    char first[1024];
    const char *cases[][2] = {{"--recompute some", "--recompute is none, full or selective"},
                              {"--offload optimizer", "it needs --host-mem-cap"},
                              {"--host-mem-cap 8M", "it needs --offload optimizer"},
                              {"--offload disk --host-mem-cap 8M", "--offload is none or"},
                              {"--recompute selective", "has no attention"},
                              {"--precision fp8", "--precision is fp32 or bf16"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = cli_run("bench_strategies", cases[i][0]);
        cr_expect_eq(st, 2, "%s: exit %d", cases[i][0], st);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s: %s", cases[i][0],
                     first);
        cr_expect(strstr(first, cases[i][1]) != NULL, "%s: %s", cases[i][0], first);
    }
}

Test(bench_cli, bench_precision_bad_usage_is_one_line_and_status_2, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    char first[1024];
    const char *cases[][2] = {{"--reps 0", "--reps wants an integer"},
                              {"--d-model 130 --heads 4", "--d-model must divide by --heads"},
                              {"--precision bf16", "unknown option --precision"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = cli_run("bench_precision", cases[i][0]);
        cr_expect_eq(st, 2, "%s: exit %d", cases[i][0], st);
        cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s: %s", cases[i][0],
                     first);
        cr_expect(strstr(first, cases[i][1]) != NULL, "%s: %s", cases[i][0], first);
    }
}
