/* Interleaved 1F1B with virtual stages (strategies/schedule.h): v = 1 is
 * 1F1B action for action; with v > 1 every shape validates, the simulated
 * bubble on equal stages is (p-1)/(v m + p-1), the micro-batches held are
 * the documented bound, the messages are v times the pipeline's, bad
 * arguments and broken lists are refused with a message, and
 * build/schedule --virtual-stages (found in $TM_BIN_DIR) draws it. */
#include <criterion/criterion.h>

#include "runtime/status.h"
#include "strategies/schedule.h"
#include "tests/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int pps[] = {2, 3, 4, 8};
static const int vs[] = {2, 3, 4};
#define N_PPS (int)(sizeof pps / sizeof pps[0])
#define N_VS (int)(sizeof vs / sizeof vs[0])

Test(schedule_virtual, one_chunk_is_exactly_1f1b)
{
    for (int pp = 1; pp <= 8; pp++)
        for (int m = 1; m <= 17; m += 2) {
            tm_schedule a, b;
            cr_assert_eq(tm_schedule_make_virtual(&a, TM_SCHED_INTERLEAVED_1F1B, pp, m, 1), TM_OK);
            cr_assert_eq(tm_schedule_make(&b, TM_SCHED_1F1B, pp, m), TM_OK);
            for (int s = 0; s < pp; s++) {
                cr_expect_eq(a.len[s], b.len[s], "pp %d m %d stage %d", pp, m, s);
                for (int i = 0; i < a.len[s] && i < b.len[s]; i++)
                    cr_expect(memcmp(&a.actions[s][i], &b.actions[s][i], sizeof a.actions[s][i]) == 0,
                              "pp %d m %d stage %d action %d", pp, m, s, i);
                cr_expect_eq(tm_schedule_in_flight_bound(TM_SCHED_INTERLEAVED_1F1B, pp, m, s),
                             tm_schedule_in_flight_bound(TM_SCHED_1F1B, pp, m, s));
            }
            cr_expect_eq(tm_schedule_bubble_theory(TM_SCHED_INTERLEAVED_1F1B, pp, m),
                         tm_schedule_bubble_theory(TM_SCHED_1F1B, pp, m));
            tm_schedule_free(&a);
            tm_schedule_free(&b);
        }
}

/* Counts s's passes per (chunk, kind) and its message halves sent. */
static void count(const tm_schedule *s, int stage, int *fwd, int *bwd, int *sent)
{
    for (int i = 0; i < s->len[stage]; i++) {
        tm_sched_action a = s->actions[stage][i];
        if (a.kind == TM_SCHED_FWD) fwd[a.chunk]++;
        if (a.kind == TM_SCHED_BWD) bwd[a.chunk]++;
        *sent += a.kind == TM_SCHED_SEND_ACT || a.kind == TM_SCHED_SEND_GRAD ||
                 a.kind == TM_SCHED_SEND_ACT_RECV_GRAD || a.kind == TM_SCHED_SEND_GRAD_RECV_ACT;
    }
}

Test(schedule_virtual, every_shape_validates_with_the_documented_bubble_and_memory)
{
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_VS; b++)
            for (int k = 1; k <= 4; k *= 2) {
                int pp = pps[a], v = vs[b], m = k * pp;
                tm_schedule s;
                cr_assert_eq(tm_schedule_make_virtual(&s, TM_SCHED_INTERLEAVED_1F1B, pp, m, v),
                             TM_OK, "%s", tm_error_message());
                cr_expect_eq(s.v, v);
                cr_expect_eq(tm_schedule_validate(&s), TM_OK, "pp %d m %d v %d: %s", pp, m, v,
                             tm_error_message());
                int sent = 0;
                for (int st = 0; st < pp; st++) {
                    int fwd[8] = {0}, bwd[8] = {0};
                    count(&s, st, fwd, bwd, &sent);
                    for (int c = 0; c < v; c++)
                        cr_expect(fwd[c] == m && bwd[c] == m, "pp %d v %d stage %d chunk %d", pp,
                                  v, st, c);
                    cr_expect_eq(tm_schedule_max_in_flight(&s, st),
                                 tm_schedule_in_flight_bound_virtual(s.kind, pp, m, v, st),
                                 "pp %d m %d v %d stage %d", pp, m, v, st);
                }
                /* Each of the pp v - 1 boundaries between model stages
                 * carries every micro-batch's activation and gradient. */
                cr_expect_eq(sent, 2 * m * (pp * v - 1), "pp %d m %d v %d", pp, m, v);
                /* Equal stages: each chunk a v-th of the device's pass, for
                 * two ratios of backward to forward. */
                for (int r = 1; r <= 2; r++) {
                    double f[32], bw[32], makespan;
                    for (int g = 0; g < pp * v; g++) f[g] = 1.0 / v, bw[g] = (double)r / v;
                    tm_sched_event *ev;
                    int n;
                    cr_assert_eq(tm_schedule_simulate(&s, f, bw, 0, &ev, &n, &makespan), TM_OK);
                    double theory = (double)(pp - 1) / (v * m + pp - 1);
                    cr_expect(fabs(tm_schedule_bubble(ev, n, pp, makespan) - theory) < 1e-12,
                              "pp %d m %d v %d r %d: bubble %g, theory %g", pp, m, v, r,
                              tm_schedule_bubble(ev, n, pp, makespan), theory);
                    cr_expect(fabs(tm_schedule_bubble_theory_virtual(s.kind, pp, m, v) - theory) <
                              1e-15);
                    /* The makespan is (m v + p - 1) chunk passes. */
                    cr_expect(fabs(makespan - (m * v + pp - 1) * (1.0 + r) / v) < 1e-9,
                              "pp %d m %d v %d: makespan %g", pp, m, v, makespan);
                    free(ev);
                }
                tm_schedule_free(&s);
            }
}

Test(schedule_virtual, warm_up_is_megatrons)
{
    /* pp 4, v 2: device s warms up with 2(3-s) + 4 forwards, so it holds
     * one more than that at its peak. */
    tm_schedule s;
    cr_assert_eq(tm_schedule_make_virtual(&s, TM_SCHED_INTERLEAVED_1F1B, 4, 8, 2), TM_OK);
    for (int st = 0; st < 4; st++) {
        int w = 0;
        while (w < s.len[st] && s.actions[st][w].kind != TM_SCHED_BWD) w++;
        int fwds = 0;
        for (int i = 0; i < w; i++) fwds += s.actions[st][i].kind == TM_SCHED_FWD;
        /* The first backward follows the first steady forward. */
        cr_expect_eq(fwds, 2 * (3 - st) + 4 + 1, "stage %d", st);
        cr_expect_eq(tm_schedule_in_flight_bound_virtual(s.kind, 4, 8, 2, st), 2 * (3 - st) + 5);
    }
    /* Device 0 runs micro-batches 0..3 through chunk 0, then through chunk 1. */
    char order[256] = "";
    size_t k = 0;
    for (int i = 0, n = 0; i < s.len[0] && n < 10; i++) {
        if (s.actions[0][i].kind != TM_SCHED_FWD) continue;
        k += (size_t)snprintf(order + k, sizeof order - k, "%d%c ", s.actions[0][i].mb,
                              'a' + s.actions[0][i].chunk);
        n++;
    }
    cr_expect_str_eq(order, "0a 1a 2a 3a 0b 1b 2b 3b 4a 5a ");
    tm_schedule_free(&s);
}

Test(schedule_virtual, make_rejects_bad_arguments)
{
    tm_schedule s;
    struct {
        tm_schedule_kind kind;
        int pp, m, v;
        const char *needle;
    } bad[] = {
        {TM_SCHED_1F1B, 4, 8, 2, "need the interleaved-1f1b schedule"},
        {TM_SCHED_GPIPE, 4, 8, 2, "need the interleaved-1f1b schedule"},
        {TM_SCHED_INTERLEAVED_1F1B, 1, 8, 2, "at least 2 pipeline stages"},
        {TM_SCHED_INTERLEAVED_1F1B, 4, 6, 2, "a multiple of the pipeline stages"},
        {TM_SCHED_INTERLEAVED_1F1B, 4, 8, 0, "virtual stages 0 outside"},
        {TM_SCHED_INTERLEAVED_1F1B, 4, 8, TM_SCHEDULE_MAX_VIRTUAL + 1, "outside"},
        {TM_SCHED_INTERLEAVED_1F1B, 512, 512, 4, "more than"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tm_error_clear();
        cr_expect_eq(tm_schedule_make_virtual(&s, bad[i].kind, bad[i].pp, bad[i].m, bad[i].v),
                     TM_EINVAL, "case %zu", i);
        cr_expect(strstr(tm_error_message(), bad[i].needle) != NULL, "case %zu: %s", i,
                  tm_error_message());
        cr_expect_null(s.actions);
    }
    cr_expect_lt(tm_schedule_in_flight_bound_virtual(TM_SCHED_1F1B, 4, 8, 2, 0), 0);
    cr_expect_lt(tm_schedule_bubble_theory_virtual(TM_SCHED_INTERLEAVED_1F1B, 4, 6, 2), 0);
}

static void expect_invalid(const tm_schedule *s, const char *needle)
{
    tm_error_clear();
    int st = tm_schedule_validate(s);
    cr_expect_eq(st, TM_EINVAL, "expected TM_EINVAL for \"%s\", got %d", needle, st);
    cr_expect(strstr(tm_error_message(), needle) != NULL, "message \"%s\" lacks \"%s\"",
              tm_error_message(), needle);
}

/* Index of the first action of `kind` for (mb, chunk) on stage st. */
static int find(const tm_schedule *s, int st, tm_sched_kind kind, int mb, int chunk)
{
    for (int i = 0; i < s->len[st]; i++)
        if (s->actions[st][i].kind == kind && s->actions[st][i].mb == mb &&
            s->actions[st][i].chunk == chunk)
            return i;
    return -1;
}

Test(schedule_virtual, validator_rejects_broken_rings)
{
    tm_schedule s;
    cr_assert_eq(tm_schedule_make_virtual(&s, TM_SCHED_INTERLEAVED_1F1B, 2, 2, 2), TM_OK);
    cr_assert_eq(tm_schedule_validate(&s), TM_OK);

    /* A chunk the schedule does not have. */
    int f = find(&s, 0, TM_SCHED_FWD, 1, 1);
    cr_assert_geq(f, 0);
    s.actions[0][f].chunk = 2;
    expect_invalid(&s, "names a chunk outside 0..1");
    s.actions[0][f].chunk = 1;

    /* A forward joined to what follows it. */
    s.actions[0][f].with_next = 1;
    expect_invalid(&s, "only a message joins the message after it");
    s.actions[0][f].with_next = 0;

    /* The last device's chunk 0 sends its activation round the ring to
     * device 0's chunk 1: dropping device 0's receive leaves it unmatched. */
    int r = find(&s, 0, TM_SCHED_RECV_ACT, 0, 1);
    cr_assert_geq(r, 0);
    tm_sched_action keep = s.actions[0][r];
    s.actions[0][r].kind = TM_SCHED_RECV_GRAD;
    expect_invalid(&s, "never received by stage 0");
    s.actions[0][r] = keep;

    /* Device 0's sends of micro-batches 0 and 1 to device 1 swapped: the
     * receiver gets them in the other order. */
    int a0 = find(&s, 0, TM_SCHED_SEND_ACT, 0, 0), a1 = find(&s, 0, TM_SCHED_SEND_ACT, 1, 0);
    cr_assert(a0 >= 0 && a1 >= 0);
    s.actions[0][a0].mb = 1, s.actions[0][a1].mb = 0;
    expect_invalid(&s, "messages out of order");
    s.actions[0][a0].mb = 0, s.actions[0][a1].mb = 1;
    cr_expect_eq(tm_schedule_validate(&s), TM_OK);

    /* An exchange split into two blocking halves: every device sends round
     * the ring at once. */
    tm_schedule t;
    cr_assert_eq(tm_schedule_make_virtual(&t, TM_SCHED_INTERLEAVED_1F1B, 3, 3, 2), TM_OK);
    int split = 0;
    for (int st = 0; st < 3; st++)
        for (int i = 0; i < t.len[st]; i++)
            if (t.actions[st][i].with_next) t.actions[st][i].with_next = 0, split++;
    cr_expect_gt(split, 0);
    expect_invalid(&t, "deadlock: stage ");
    tm_schedule_free(&t);
    tm_schedule_free(&s);
}

Test(schedule_virtual, simulate_uses_each_model_stages_time)
{
    /* pp 2, v 2: model stages 0..3; making model stage 3 (device 1, chunk
     * 1) slow lengthens device 1's busy time by m times the difference. */
    tm_schedule s;
    cr_assert_eq(tm_schedule_make_virtual(&s, TM_SCHED_INTERLEAVED_1F1B, 2, 4, 2), TM_OK);
    double f[4] = {1, 1, 1, 3}, b[4] = {2, 2, 2, 2}, makespan;
    tm_sched_event *ev;
    int n;
    cr_assert_eq(tm_schedule_simulate(&s, f, b, 0.25, &ev, &n, &makespan), TM_OK);
    double busy[2] = {0, 0};
    for (int i = 0; i < n; i++) {
        if (ev[i].kind != TM_SCHED_FWD && ev[i].kind != TM_SCHED_BWD) continue;
        double want = ev[i].kind == TM_SCHED_FWD ? f[ev[i].chunk * 2 + ev[i].stage] : 2;
        cr_expect(fabs(ev[i].end - ev[i].start - want) < 1e-12);
        busy[ev[i].stage] += ev[i].end - ev[i].start;
    }
    cr_expect(fabs(busy[0] - 4 * 6) < 1e-12);
    cr_expect(fabs(busy[1] - 4 * 8) < 1e-12);
    cr_expect_geq(makespan, busy[1]);
    free(ev);
    tm_schedule_free(&s);
}

Test(schedule_virtual, draw_names_the_chunks)
{
    tm_schedule s;
    cr_assert_eq(tm_schedule_make_virtual(&s, TM_SCHED_INTERLEAVED_1F1B, 2, 2, 2), TM_OK);
    double f[4] = {0.5, 0.5, 0.5, 0.5}, b[4] = {1, 1, 1, 1}, makespan;
    tm_sched_event *ev;
    int n;
    cr_assert_eq(tm_schedule_simulate(&s, f, b, 0, &ev, &n, &makespan), TM_OK);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    tm_schedule_draw(out, &s, ev, n, makespan, 0);
    fclose(out);
    cr_expect(strstr(text, "interleaved-1f1b, 2 stages, 2 micro-batches, 2 virtual stages") != NULL,
              "%s", text);
    cr_expect(strstr(text, "stage 0 |F0a F1a F0b F1b ") != NULL, "%s", text);
    cr_expect(strstr(text, "(p-1)/(v*m+p-1)") != NULL, "%s", text);
    char want[64];
    snprintf(want, sizeof want, "bubble %.2f%% measured, %.2f%% theory", 100.0 / 5, 100.0 / 5);
    cr_expect(strstr(text, want) != NULL, "%s", text);
    free(text);
    free(ev);
    tm_schedule_free(&s);
}

/* build/schedule with args; its stdout into out, its stderr into err. */
static int run_cli(const char *args, char *out, size_t n_out, char *err, size_t n_err)
{
    int st = cli_run("schedule", args);
    cli_slurp(cli_out, out, n_out);
    cli_slurp(cli_err, err, n_err);
    return st;
}

Test(schedule_virtual, cli_draws_virtual_stages_and_rejects_bad_usage, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    static char out[1 << 16], err[4096];
    cr_expect_eq(run_cli("--pp 4 --micro-batches 8 --schedule interleaved-1f1b --virtual-stages 2 "
                         "--list", out, sizeof out, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(out, "bubble 15.79% measured, 15.79% theory (p-1)/(v*m+p-1)") != NULL, "%s",
              out);
    cr_expect(strstr(out, "in flight, max per stage: 11 9 7 5; documented bound: 11 9 7 5") != NULL,
              "%s", out);
    cr_expect(strstr(out, "RECV_ACT(0c1)") != NULL, "%s", out);
    /* One value is a device's whole pass: the same makespan as 1f1b's
     * passes would give, less its bubble. */
    cr_expect(strstr(out, "makespan 28.5, ideal 24") != NULL, "%s", out);
    cr_expect_eq(run_cli("--pp 2 --micro-batches 2 --virtual-stages 2 --fwd-time 1,1,1,3", out,
                         sizeof out, err, sizeof err), 2);
    cr_expect_eq(run_cli("--pp 2 --micro-batches 2 --virtual-stages 2 --schedule interleaved-1f1b "
                         "--fwd-time 1,1,1,3", out, sizeof out, err, sizeof err), 0, "%s", err);
    /* The SVG names the chunks and the virtual stages too. */
    char svg[160], args[320];
    cli_path(svg, sizeof svg, "schedule.svg");
    snprintf(args, sizeof args, "--pp 2 --micro-batches 2 --schedule interleaved-1f1b "
             "--virtual-stages 2 --svg %s", svg);
    cr_expect_eq(run_cli(args, out, sizeof out, err, sizeof err), 0, "%s", err);
    cr_assert(cli_exists(svg));
    cli_slurp(svg, out, sizeof out);
    cr_expect(strstr(out, ">F0b<") != NULL, "no F0b in the SVG");
    cr_expect(strstr(out, "2 virtual stages; bubble 20.0% (formula 20.0%)") != NULL,
              "no title in the SVG");
    const char *bad[] = {
        "--virtual-stages 2",
        "--schedule interleaved-1f1b --virtual-stages 2 --micro-batches 6",
        "--schedule interleaved-1f1b --virtual-stages 2 --pp 1",
        "--schedule interleaved-1f1b --virtual-stages 0",
        "--schedule interleaved-1f1b --virtual-stages 27",
        "--schedule interleaved-1f1b --virtual-stages 2 --fwd-time 1,2,3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(run_cli(bad[i], out, sizeof out, err, sizeof err), 2, "%s", bad[i]);
        cr_expect(strncmp(err, "schedule: ", 10) == 0, "%s: %s", bad[i], err);
        char *nl = strchr(err, '\n');
        cr_expect(nl != NULL && nl[1] == '\0', "%s: not one line: %s", bad[i], err);
    }
}
