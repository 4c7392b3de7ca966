/* Pipeline schedules: every generator validates for every shape, each
 * schedule's memory bound and bubble are what its documentation says, the
 * validator rejects each kind of broken list with a message naming it, the
 * simulator is exact and deterministic, the drawer draws what it is given,
 * and build/schedule (found in $TM_BIN_DIR) handles good and bad input. */
#include <criterion/criterion.h>

#include "runtime/status.h"
#include "strategies/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const int pps[] = {1, 2, 3, 4, 8};
static const int ms[] = {1, 2, 3, 4, 8, 16};
#define N_PPS (int)(sizeof pps / sizeof pps[0])
#define N_MS (int)(sizeof ms / sizeof ms[0])

#define A(k, i) ((tm_sched_action){TM_SCHED_##k, i, 0, 0, 0})
#define A2(k, i, j) ((tm_sched_action){TM_SCHED_##k, i, j, 0, 0})

/* A hand-made schedule over caller-owned lists. */
static tm_schedule hand(int pp, int m, int *len, tm_sched_action **acts)
{
    return (tm_schedule){TM_SCHED_GPIPE, pp, m, len, acts, 1};
}

static void expect_invalid(const tm_schedule *s, const char *needle)
{
    tm_error_clear();
    int st = tm_schedule_validate(s);
    cr_expect_eq(st, TM_EINVAL, "expected TM_EINVAL for \"%s\", got %d", needle, st);
    cr_expect(strstr(tm_error_message(), needle) != NULL, "message \"%s\" lacks \"%s\"",
              tm_error_message(), needle);
}

Test(schedule, names_round_trip)
{
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
        tm_schedule_kind got = (tm_schedule_kind)-1;
        cr_expect_eq(tm_schedule_kind_parse(tm_schedule_kind_name(k), &got), TM_OK);
        cr_expect_eq((int)got, k);
    }
    cr_expect_str_eq(tm_schedule_kind_name(TM_SCHED_1F1B), "1f1b");
    cr_expect_str_eq(tm_schedule_kind_name(TM_SCHED_INTERLEAVED), "interleaved");
    tm_schedule_kind got;
    cr_expect_eq(tm_schedule_kind_parse("pipedream", &got), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "\"pipedream\"") != NULL);
    cr_expect_eq(tm_schedule_kind_parse(NULL, &got), TM_EINVAL);
    char buf[64];
    tm_sched_action_format(buf, sizeof buf, A2(SEND_ACT_RECV_GRAD, 3, 1));
    cr_expect_str_eq(buf, "SEND_ACT_RECV_GRAD(3,1)");
    tm_sched_action_format(buf, sizeof buf, A(BWD, 7));
    cr_expect_str_eq(buf, "BWD(7)");
}

Test(schedule, make_rejects_bad_arguments)
{
    tm_schedule s;
    const int bad[][3] = {
        {TM_SCHED_1F1B, 0, 4}, {TM_SCHED_1F1B, 4, 0}, {TM_SCHED_1F1B, -1, 4},
        {TM_SCHED_1F1B, TM_SCHEDULE_MAX_PP + 1, 1}, {TM_SCHED_GPIPE, 1, TM_SCHEDULE_MAX_MB + 1},
        {TM_SCHED_GPIPE, 1024, 257}, {TM_SCHEDULE_KINDS, 2, 2}, {-1, 2, 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tm_error_clear();
        cr_expect_eq(tm_schedule_make(&s, (tm_schedule_kind)bad[i][0], bad[i][1], bad[i][2]),
                     TM_EINVAL, "case %zu", i);
        cr_expect_neq(tm_error_message()[0], '\0', "case %zu has no message", i);
        cr_expect_null(s.len);
        cr_expect_null(s.actions);
        tm_schedule_free(&s);
    }
    tm_schedule_free(NULL);
}

Test(schedule, every_schedule_validates_for_every_shape)
{
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++)
        for (int a = 0; a < N_PPS; a++)
            for (int b = 0; b < N_MS; b++) {
                tm_schedule s;
                int pp = pps[a], m = ms[b];
                cr_assert_eq(tm_schedule_make(&s, k, pp, m), TM_OK);
                cr_expect_eq((int)s.kind, k);
                cr_expect_eq(s.pp, pp);
                cr_expect_eq(s.m, m);
                int st = tm_schedule_validate(&s);
                cr_expect_eq(st, TM_OK, "%s pp=%d m=%d: %s", tm_schedule_kind_name(k), pp, m,
                             tm_error_message());
                for (int i = 0; i < pp; i++) cr_expect_leq(s.len[i], 7 * m);
                tm_schedule_free(&s);
                cr_expect_null(s.actions);
            }
}

/* The FWD / BWD order of one stage as a string like "F0 F1 B0 ". */
static void pass_order(const tm_schedule *s, int stage, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->len[stage] && k < n; i++) {
        tm_sched_action a = s->actions[stage][i];
        if (a.kind == TM_SCHED_FWD || a.kind == TM_SCHED_BWD)
            k += (size_t)snprintf(buf + k, n - k, "%c%d ", a.kind == TM_SCHED_FWD ? 'F' : 'B', a.mb);
    }
}

/* Warm-up of w forwards, then forward/backward pairs, then backwards. */
static void warmup_order(int m, int w, char *buf, size_t n)
{
    size_t k = 0;
    for (int i = 0; i < w; i++) k += (size_t)snprintf(buf + k, n - k, "F%d ", i);
    for (int i = 0; i < m - w; i++) k += (size_t)snprintf(buf + k, n - k, "F%d B%d ", w + i, i);
    for (int i = m - w; i < m; i++) k += (size_t)snprintf(buf + k, n - k, "B%d ", i);
    buf[k] = '\0';
}

Test(schedule, pass_orders_are_the_documented_ones)
{
    char got[1024], want[1024];
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MS; b++) {
            int pp = pps[a], m = ms[b];
            const int warm[][2] = {
                {TM_SCHED_SEQUENTIAL, 0}, {TM_SCHED_GPIPE, 1}, {TM_SCHED_1F1B, 2},
                {TM_SCHED_GROUPED, 3}, {TM_SCHED_INTERLEAVED, 2},
            };
            for (int w = 0; w < 5; w++) {
                tm_schedule s;
                cr_assert_eq(tm_schedule_make(&s, warm[w][0], pp, m), TM_OK);
                for (int st = 0; st < pp; st++) {
                    int depth = warm[w][1] == 0   ? 0
                                : warm[w][1] == 1 ? m
                                : warm[w][1] == 2 ? pp - 1 - st
                                                  : 2 * (pp - 1 - st);
                    warmup_order(m, depth < m ? depth : m, want, sizeof want);
                    pass_order(&s, st, got, sizeof got);
                    cr_expect_str_eq(got, want, "%s pp=%d m=%d stage %d",
                                     tm_schedule_kind_name(warm[w][0]), pp, m, st);
                }
                tm_schedule_free(&s);
            }
        }
}

Test(schedule, interleaved_lists_equal_1f1b)
{
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MS; b++) {
            tm_schedule x, y;
            cr_assert_eq(tm_schedule_make(&x, TM_SCHED_INTERLEAVED, pps[a], ms[b]), TM_OK);
            cr_assert_eq(tm_schedule_make(&y, TM_SCHED_1F1B, pps[a], ms[b]), TM_OK);
            for (int st = 0; st < x.pp; st++) {
                cr_expect_eq(x.len[st], y.len[st]);
                for (int i = 0; i < x.len[st] && i < y.len[st]; i++) {
                    tm_sched_action p = x.actions[st][i], q = y.actions[st][i];
                    int combined = p.kind >= TM_SCHED_SEND_ACT_RECV_GRAD;
                    cr_expect(p.kind == q.kind && p.mb == q.mb && (!combined || p.mb2 == q.mb2),
                              "pp=%d m=%d stage %d action %d", pps[a], ms[b], st, i);
                }
            }
            tm_schedule_free(&x);
            tm_schedule_free(&y);
        }
}

/* 1F1B's steady state exchanges with the next stage in one action, as
 * Megatron's send_forward_recv_backward: a plain SEND_ACT right before a
 * plain RECV_GRAD would deadlock against the stage above. */
Test(schedule, one_f_one_b_uses_combined_exchanges)
{
    tm_schedule s;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_1F1B, 4, 8), TM_OK);
    for (int st = 0; st < 4; st++) {
        int up = 0, down = 0;
        for (int i = 0; i < s.len[st]; i++) {
            up += s.actions[st][i].kind == TM_SCHED_SEND_ACT_RECV_GRAD;
            down += s.actions[st][i].kind == TM_SCHED_SEND_GRAD_RECV_ACT;
            if (i + 1 < s.len[st])
                cr_expect(!(s.actions[st][i].kind == TM_SCHED_SEND_ACT &&
                            s.actions[st][i + 1].kind == TM_SCHED_RECV_GRAD),
                          "stage %d action %d", st, i);
        }
        /* Steady pairs minus the last one, which has no forward to receive. */
        int steady = 8 - (3 - st);
        cr_expect_eq(up, st < 3 ? steady : 0, "stage %d", st);
        cr_expect_eq(down, st > 0 ? steady - 1 : 0, "stage %d", st);
    }
    tm_schedule_free(&s);
}

Test(schedule, max_in_flight_is_the_documented_bound)
{
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++)
        for (int a = 0; a < N_PPS; a++)
            for (int b = 0; b < N_MS; b++) {
                tm_schedule s;
                int pp = pps[a], m = ms[b];
                cr_assert_eq(tm_schedule_make(&s, k, pp, m), TM_OK);
                for (int st = 0; st < pp; st++)
                    cr_expect_eq(tm_schedule_max_in_flight(&s, st),
                                 tm_schedule_in_flight_bound(k, pp, m, st), "%s pp=%d m=%d stage %d",
                                 tm_schedule_kind_name(k), pp, m, st);
                cr_expect_lt(tm_schedule_max_in_flight(&s, pp), 0);
                cr_expect_lt(tm_schedule_max_in_flight(&s, -1), 0);
                tm_schedule_free(&s);
            }
    cr_expect_lt(tm_schedule_in_flight_bound(TM_SCHED_1F1B, 4, 8, 4), 0);
}

/* The memory test: 1F1B's first stage holds at most pp micro-batches
 * however many there are, GPipe holds all of them on every stage. */
Test(schedule, one_f_one_b_memory_stays_bounded_while_gpipe_holds_all)
{
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MS; b++) {
            tm_schedule f, g;
            int pp = pps[a], m = ms[b];
            cr_assert_eq(tm_schedule_make(&f, TM_SCHED_1F1B, pp, m), TM_OK);
            cr_assert_eq(tm_schedule_make(&g, TM_SCHED_GPIPE, pp, m), TM_OK);
            for (int st = 0; st < pp; st++) {
                cr_expect_leq(tm_schedule_max_in_flight(&f, st), pp - st);
                cr_expect_eq(tm_schedule_max_in_flight(&g, st), m);
            }
            cr_expect_eq(tm_schedule_max_in_flight(&f, 0), pp < m ? pp : m);
            tm_schedule_free(&f);
            tm_schedule_free(&g);
        }
}

Test(schedule, validator_rejects_structural_errors)
{
    /* One stage: FWD and BWD of micro-batch 0 and nothing else is valid. */
    tm_sched_action one[3] = {A(FWD, 0), A(BWD, 0)};
    int len1[1] = {2};
    tm_sched_action *l1[1] = {one};
    tm_schedule s = hand(1, 1, len1, l1);
    cr_expect_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
    one[1] = A(BWD, 1);
    expect_invalid(&s, "stage 0 action 1: BWD(1) names a micro-batch outside 0..0");
    one[1] = (tm_sched_action){(tm_sched_kind)42, 0, 0, 0, 0};
    expect_invalid(&s, "stage 0 action 1: unknown action kind 42");
    one[1] = A(BWD, 0), one[2] = A(RECV_ACT, 0), len1[0] = 3;
    expect_invalid(&s, "stage 0 action 2: RECV_ACT(0) on the first stage");
    one[2] = A(SEND_ACT, 0);
    expect_invalid(&s, "stage 0 action 2: SEND_ACT(0) on the last stage");
    one[2] = A(FWD, 0);
    expect_invalid(&s, "stage 0 action 2: FWD(0) a second time");
    len1[0] = 1;
    expect_invalid(&s, "stage 0: BWD(0) missing");
    one[0] = A(BWD, 0), one[1] = A(FWD, 0), len1[0] = 2;
    expect_invalid(&s, "stage 0 action 0: BWD(0) before FWD(0)");
    cr_expect_eq(tm_schedule_validate(NULL), TM_EINVAL);
}

Test(schedule, validator_rejects_message_errors)
{
    /* Two stages, one micro-batch, the sequential lists. */
    tm_sched_action s0[4] = {A(FWD, 0), A2(SEND_ACT_RECV_GRAD, 0, 0), A(BWD, 0)};
    tm_sched_action s1[4] = {A(RECV_ACT, 0), A(FWD, 0), A(BWD, 0), A(SEND_GRAD, 0)};
    int len[2] = {3, 4};
    tm_sched_action *l[2] = {s0, s1};
    tm_schedule s = hand(2, 1, len, l);
    cr_expect_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
    /* The receive dropped: the send is never received. */
    s1[0] = A(FWD, 0), s1[1] = A(BWD, 0), s1[2] = A(SEND_GRAD, 0), len[1] = 3;
    expect_invalid(&s, "stage 0 action 1: SEND_ACT(0) never received by stage 1");
    /* A gradient that nobody sends. */
    s1[0] = A(RECV_ACT, 0), s1[1] = A(FWD, 0), s1[2] = A(BWD, 0), len[1] = 3;
    expect_invalid(&s, "stage 0 action 1: RECV_GRAD(0) never sent by stage 1");
    /* The backward before its gradient arrives (the example in the docs). */
    s1[3] = A(SEND_GRAD, 0), len[1] = 4;
    s0[1] = A(SEND_ACT, 0), s0[2] = A(BWD, 0), s0[3] = A(RECV_GRAD, 0), len[0] = 4;
    expect_invalid(&s, "stage 0 action 2: BWD(0) before RECV_GRAD(0)");
    /* A forward before its activation arrives. */
    s0[2] = A(RECV_GRAD, 0), s0[3] = A(BWD, 0);
    s1[0] = A(FWD, 0), s1[1] = A(RECV_ACT, 0);
    expect_invalid(&s, "stage 1 action 0: FWD(0) before RECV_ACT(0)");
    /* A send before the pass producing it. */
    s1[0] = A(RECV_ACT, 0), s1[1] = A(FWD, 0), s1[2] = A(SEND_GRAD, 0), s1[3] = A(BWD, 0);
    expect_invalid(&s, "stage 1 action 2: SEND_GRAD(0) before BWD(0)");
}

Test(schedule, validator_rejects_out_of_order_messages)
{
    tm_sched_action s0[8] = {A(FWD, 0), A(FWD, 1), A(SEND_ACT, 1), A(SEND_ACT, 0),
                             A(RECV_GRAD, 0), A(BWD, 0), A(RECV_GRAD, 1), A(BWD, 1)};
    tm_sched_action s1[8] = {A(RECV_ACT, 0), A(FWD, 0), A(RECV_ACT, 1), A(FWD, 1),
                             A(BWD, 0), A(SEND_GRAD, 0), A(BWD, 1), A(SEND_GRAD, 1)};
    int len[2] = {8, 8};
    tm_sched_action *l[2] = {s0, s1};
    tm_schedule s = hand(2, 2, len, l);
    expect_invalid(&s, "stage 0 action 2: SEND_ACT(1) reaches stage 1 as RECV_ACT(0) at its "
                       "action 0: messages out of order");
    s0[2] = A(SEND_ACT, 0), s0[3] = A(SEND_ACT, 1);
    cr_expect_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
    /* The same micro-batch sent twice and another never. */
    s0[3] = A(SEND_ACT, 0), s1[2] = A(RECV_ACT, 0);
    expect_invalid(&s, "stage 0 action 3: SEND_ACT(0) a second time");
}

/* Two stages sending to each other at once wait for ever under rendezvous;
 * the same exchange as one combined action goes through. */
Test(schedule, validator_finds_rendezvous_deadlock)
{
    tm_sched_action s0[8] = {A(FWD, 0), A(SEND_ACT, 0), A(FWD, 1), A(SEND_ACT, 1),
                             A(RECV_GRAD, 0), A(BWD, 0), A(RECV_GRAD, 1), A(BWD, 1)};
    tm_sched_action s1[8] = {A(RECV_ACT, 0), A(FWD, 0), A(BWD, 0), A(SEND_GRAD, 0),
                             A(RECV_ACT, 1), A(FWD, 1), A(BWD, 1), A(SEND_GRAD, 1)};
    int len[2] = {8, 8};
    tm_sched_action *l[2] = {s0, s1};
    tm_schedule s = hand(2, 2, len, l);
    expect_invalid(&s, "deadlock: stage 0 waits in SEND_ACT(1) for stage 1, which waits in "
                       "SEND_GRAD(0) for stage 0");
    s1[3] = A2(SEND_GRAD_RECV_ACT, 0, 1), s1[4] = A(FWD, 1), s1[5] = A(BWD, 1),
    s1[6] = A(SEND_GRAD, 1), len[1] = 7;
    cr_expect_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
}

static void uniform(double *t, int n, double v)
{
    for (int i = 0; i < n; i++) t[i] = v;
}

Test(schedule, bubble_matches_the_formula)
{
    const double fb[][2] = {{1, 1}, {1, 2}};
    const int kinds[] = {TM_SCHED_GPIPE, TM_SCHED_1F1B, TM_SCHED_GROUPED, TM_SCHED_INTERLEAVED};
    for (int kk = 0; kk < 4; kk++)
        for (int f = 0; f < 2; f++)
            for (int p = 2; p <= 4; p += 2)
                for (int m = 4; m <= 16; m *= 2) {
                    tm_schedule s;
                    double F[4], B[4], makespan;
                    uniform(F, p, fb[f][0]);
                    uniform(B, p, fb[f][1]);
                    tm_sched_event *ev;
                    int n;
                    cr_assert_eq(tm_schedule_make(&s, kinds[kk], p, m), TM_OK);
                    cr_assert_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_OK);
                    double want = (double)(p - 1) / (m + p - 1);
                    cr_expect(fabs(tm_schedule_bubble(ev, n, p, makespan) - want) < 1e-9,
                              "%s p=%d m=%d F=%g B=%g: bubble %g, theory %g",
                              tm_schedule_kind_name(kinds[kk]), p, m, F[0], B[0],
                              tm_schedule_bubble(ev, n, p, makespan), want);
                    cr_expect(fabs(tm_schedule_bubble_theory(kinds[kk], p, m) - want) < 1e-15);
                    cr_expect(fabs(makespan - (m + p - 1) * (F[0] + B[0])) < 1e-9);
                    free(ev);
                    tm_schedule_free(&s);
                }
    cr_expect(fabs(tm_schedule_bubble_theory(TM_SCHED_SEQUENTIAL, 4, 8) - 0.75) < 1e-15);
    cr_expect_lt(tm_schedule_bubble_theory(TM_SCHED_1F1B, 0, 8), 0);
}

/* ZB-H1 with F = B = W: (p-1) F of idle per stage when m >= p, a third of
 * 1F1B's (p-1)(F+B+W) with the same passes; with m < p the waves of the
 * last micro-batch set the makespan. W counts as busy. ZB-H2 reaches the
 * same makespan, the least any schedule reaches when the optimizer waits
 * for every W (the last stage waits (p-1) F for its first activation). */
Test(schedule, zero_bubble_h1_bubble_matches_the_formula)
{
    static const tm_schedule_kind zb[] = {TM_SCHED_ZB_H1, TM_SCHED_ZB_H2};
    for (int p = 1; p <= 8; p++)
        for (int m = 1; m <= 16; m++) {
            tm_schedule s;
            double F[8], B[8], W[8], BW[8], makespan, one;
            uniform(F, p, 1);
            uniform(B, p, 1);
            uniform(W, p, 1);
            uniform(BW, p, 2);
            tm_sched_event *ev;
            int n;
            for (int k = 1; k >= 0; k--) { /* zb-h2, then zb-h1 (its makespan used below) */
                const char *name = tm_schedule_kind_name(zb[k]);
                cr_assert_eq(tm_schedule_make(&s, zb[k], p, m), TM_OK);
                cr_assert_eq(tm_schedule_simulate_split(&s, F, B, W, 0, &ev, &n, &makespan),
                             TM_OK, "%s", tm_error_message());
                double want = m >= p ? 3.0 * m + p - 1 : 2.0 * (m + p - 1) + 1;
                cr_expect(fabs(makespan - want) < 1e-9, "%s p=%d m=%d: makespan %g, want %g",
                          name, p, m, makespan, want);
                double bubble = tm_schedule_bubble(ev, n, p, makespan),
                       theory = tm_schedule_bubble_theory(zb[k], p, m);
                cr_expect(fabs(bubble - theory) < 1e-12, "%s p=%d m=%d: bubble %g, theory %g",
                          name, p, m, bubble, theory);
                free(ev);
                tm_schedule_free(&s);
            }
            /* 1F1B with the same work, B and W as one backward of 2. */
            cr_assert_eq(tm_schedule_make(&s, TM_SCHED_1F1B, p, m), TM_OK);
            cr_assert_eq(tm_schedule_simulate(&s, F, BW, 0, &ev, &n, &one), TM_OK);
            if (m >= p)
                cr_expect(fabs((one - 3.0 * m) - 3 * (makespan - 3.0 * m)) < 1e-9,
                          "p=%d m=%d: 1F1B idles %g per stage, ZB-H1 %g", p, m, one - 3.0 * m,
                          makespan - 3.0 * m);
            free(ev);
            tm_schedule_free(&s);
        }
    cr_expect(fabs(tm_schedule_bubble_theory(TM_SCHED_ZB_H1, 4, 8) - 3.0 / 27) < 1e-15);
    cr_expect(fabs(tm_schedule_bubble_theory(TM_SCHED_ZB_H2, 4, 8) - 3.0 / 27) < 1e-15);
}

/* Any F, B and W: each stage idles (p-1) max(F, B, F+B-W) when m >= p. */
Test(schedule, zero_bubble_h1_bubble_for_any_times)
{
    const double fbw[][3] = {{1, 1, 1},   {1, 1, 0.5}, {1, 2, 1},   {2, 2, 1},
                             {1, 0.9, 0.7}, {1, 0.5, 1}, {1, 0.3, 0.5}, {0.5, 1, 1}};
    for (size_t t = 0; t < sizeof fbw / sizeof fbw[0]; t++)
        for (int p = 2; p <= 8; p *= 2)
            for (int m = p; m <= 32; m *= 2) {
                tm_schedule s;
                double F[8], B[8], W[8], makespan;
                uniform(F, p, fbw[t][0]);
                uniform(B, p, fbw[t][1]);
                uniform(W, p, fbw[t][2]);
                tm_sched_event *ev;
                int n;
                cr_assert_eq(tm_schedule_make(&s, TM_SCHED_ZB_H1, p, m), TM_OK);
                cr_assert_eq(tm_schedule_simulate_split(&s, F, B, W, 0, &ev, &n, &makespan),
                             TM_OK);
                double got = tm_schedule_bubble(ev, n, p, makespan),
                       want = tm_schedule_zb_h1_bubble(p, m, F[0], B[0], W[0]);
                cr_expect(fabs(got - want) < 1e-9, "F=%g B=%g W=%g p=%d m=%d: bubble %g, formula %g",
                          F[0], B[0], W[0], p, m, got, want);
                free(ev);
                tm_schedule_free(&s);
            }
    cr_expect_lt(tm_schedule_zb_h1_bubble(4, 3, 1, 1, 1), 0);
    cr_expect_lt(tm_schedule_zb_h1_bubble(4, 8, -1, 1, 1), 0);
}

/* The lists themselves: stage s runs 1F1B's F/B order, each backward k
 * followed by W(k-s) once s have run, the deferred W's at the end. */
Test(schedule, zero_bubble_h1_defers_each_stage_s_ws_by_s)
{
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MS; b++) {
            int pp = pps[a], m = ms[b];
            tm_schedule s;
            cr_assert_eq(tm_schedule_make(&s, TM_SCHED_ZB_H1, pp, m), TM_OK);
            for (int st = 0; st < pp; st++) {
                int nb = 0, nw = 0, w = pp - 1 - st < m ? pp - 1 - st : m;
                char got[2048], want[2048];
                for (int i = 0; i < s.len[st]; i++) {
                    tm_sched_action x = s.actions[st][i];
                    if (x.kind == TM_SCHED_BWD) cr_expect_eq(x.mb, nb++);
                    if (x.kind == TM_SCHED_WGT) {
                        cr_expect_eq(x.mb, nw++, "W's in micro-batch order");
                        /* Deferred by st backwards, or the tail. */
                        cr_expect(nb - x.mb == st + 1 || nb == m, "stage %d W(%d) after %d B's",
                                  st, x.mb, nb);
                    }
                }
                cr_expect_eq(nw, m);
                pass_order(&s, st, got, sizeof got);
                warmup_order(m, w, want, sizeof want);
                cr_expect_str_eq(got, want, "zb-h1 pp=%d m=%d stage %d", pp, m, st);
            }
            tm_schedule_free(&s);
        }
}

/* The lists: stage s starts with min(2(p-1-s)+1, m) forwards, runs F, B
 * and W each in micro-batch order, each W after its B, and holds at most
 * min(2p-1, m) micro-batches (forward run, W not); stage 0 reaches it. */
Test(schedule, zero_bubble_h2_lists_are_the_documented_ones)
{
    for (int p = 1; p <= 12; p++)
        for (int m = 1; m <= 30; m += m < 8 ? 1 : 5) {
            tm_schedule s;
            cr_assert_eq(tm_schedule_make(&s, TM_SCHED_ZB_H2, p, m), TM_OK);
            cr_expect_eq(tm_schedule_validate(&s), TM_OK, "p=%d m=%d: %s", p, m,
                         tm_error_message());
            for (int st = 0; st < p; st++) {
                int nf = 0, nb = 0, nw = 0, first_b = -1, most = 0;
                for (int i = 0; i < s.len[st]; i++) {
                    tm_sched_action x = s.actions[st][i];
                    if (x.kind == TM_SCHED_FWD) cr_expect_eq(x.mb, nf++);
                    if (x.kind == TM_SCHED_BWD && nb++ == 0) first_b = nf;
                    if (x.kind == TM_SCHED_BWD) cr_expect_eq(x.mb, nb - 1);
                    if (x.kind == TM_SCHED_WGT) cr_expect_eq(x.mb, nw++);
                    if (nf - nw > most) most = nf - nw;
                }
                int w = 2 * (p - 1 - st) + 1, bound = 2 * p - 1;
                cr_expect_eq(first_b, w < m ? w : m, "p=%d m=%d stage %d: %d forwards first", p,
                             m, st, first_b);
                cr_expect_eq(nw, m);
                cr_expect_leq(most, bound < m ? bound : m, "p=%d m=%d stage %d", p, m, st);
                cr_expect_eq(most, tm_schedule_max_in_flight(&s, st));
                cr_expect_eq(tm_schedule_in_flight_bound(TM_SCHED_ZB_H2, p, m, st),
                             bound < m ? bound : m);
            }
            cr_expect_eq(tm_schedule_max_in_flight(&s, 0), 2 * p - 1 < m ? 2 * p - 1 : m);
            tm_schedule_free(&s);
        }
}

/* A zb-h2 list with one W moved before its B, one W dropped, or two
 * activations sent out of order is rejected. */
Test(schedule, validator_rejects_a_wrong_zb_h2_list)
{
    tm_schedule s;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_ZB_H2, 4, 8), TM_OK);
    cr_assert_eq(tm_schedule_validate(&s), TM_OK);
    tm_sched_action *l = s.actions[1];
    int b = -1, w = -1, sa[2] = {-1, -1}, n = 0;
    for (int i = 0; i < s.len[1]; i++) {
        if (l[i].kind == TM_SCHED_BWD && l[i].mb == 2) b = i;
        if (l[i].kind == TM_SCHED_WGT && l[i].mb == 2) w = i;
        if (l[i].kind == TM_SCHED_SEND_ACT && n < 2) sa[n++] = i;
    }
    cr_assert(b >= 0 && w > b && n == 2);
    tm_sched_action keep = l[w];
    memmove(l + b + 1, l + b, (size_t)(w - b) * sizeof *l);
    l[b] = keep;
    expect_invalid(&s, "WGT(2) before BWD(2)");
    memmove(l + b, l + b + 1, (size_t)(w - b) * sizeof *l);
    l[w] = keep;
    cr_assert_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
    s.len[1]--;
    l[w] = l[s.len[1]], l[s.len[1]] = keep;
    expect_invalid(&s, "stage 1: WGT(");
    l[s.len[1]] = l[w], l[w] = keep;
    s.len[1]++;
    cr_assert_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
    int mb = l[sa[0]].mb;
    l[sa[0]].mb = l[sa[1]].mb, l[sa[1]].mb = mb;
    expect_invalid(&s, "SEND_ACT(1) reaches stage 2 as RECV_ACT(0) at its action 0: messages "
                       "out of order");
    tm_schedule_free(&s);
}

Test(schedule, validator_checks_each_w_once_after_its_b)
{
    /* One stage, zb-h1: F0 B0 W0 is valid. */
    tm_sched_action one[4] = {A(FWD, 0), A(BWD, 0), A(WGT, 0)};
    int len1[1] = {3};
    tm_sched_action *l1[1] = {one};
    tm_schedule s = {TM_SCHED_ZB_H1, 1, 1, len1, l1, 1};
    cr_expect_eq(tm_schedule_validate(&s), TM_OK, "%s", tm_error_message());
    len1[0] = 2;
    expect_invalid(&s, "stage 0: WGT(0) missing");
    len1[0] = 4, one[3] = A(WGT, 0);
    expect_invalid(&s, "stage 0 action 3: WGT(0) a second time");
    one[1] = A(WGT, 0), one[2] = A(BWD, 0), len1[0] = 3;
    expect_invalid(&s, "stage 0 action 1: WGT(0) before BWD(0)");
    one[1] = A(BWD, 0), one[2] = A(WGT, 1);
    expect_invalid(&s, "stage 0 action 2: WGT(1) names a micro-batch outside 0..0");
    /* A schedule that does not split its backward has no W. */
    one[2] = A(WGT, 0);
    s.kind = TM_SCHED_1F1B;
    expect_invalid(&s, "stage 0 action 2: WGT(0) in 1f1b, which does not split the backward");
}

Test(schedule, sequential_makespan_is_the_sum_of_all_passes)
{
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MS; b++) {
            int pp = pps[a], m = ms[b];
            double F[8], B[8], sum = 0, makespan;
            for (int i = 0; i < pp; i++) F[i] = 1 + 0.25 * i, B[i] = 2 + 0.5 * i, sum += F[i] + B[i];
            tm_schedule s;
            tm_sched_event *ev;
            int n;
            cr_assert_eq(tm_schedule_make(&s, TM_SCHED_SEQUENTIAL, pp, m), TM_OK);
            cr_assert_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_OK);
            cr_expect(fabs(makespan - m * sum) < 1e-9, "pp=%d m=%d: %g, want %g", pp, m,
                      makespan, m * sum);
            free(ev);
            tm_schedule_free(&s);
        }
}

/* Every pass once with its own duration, one at a time per stage, after
 * whatever it depends on plus a message; messages have their duration. */
Test(schedule, simulated_events_respect_every_dependency)
{
    const double comm = 0.5;
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
        tm_schedule s;
        double F[4] = {1, 1.5, 2, 1}, B[4] = {2, 3, 2.5, 2}, W[4] = {0.5, 1, 1.5, 0.75};
        double makespan;
        tm_sched_event *ev;
        int n, split = tm_schedule_splits_backward(k);
        cr_assert_eq(tm_schedule_make(&s, k, 4, 8), TM_OK);
        cr_assert_eq(tm_schedule_simulate_split(&s, F, B, split ? W : NULL, comm, &ev, &n,
                                                &makespan), TM_OK);
        double fend[4][8], bend[4][8], fstart[4][8], bstart[4][8], last_end[4] = {0};
        int seen[4][2][8] = {{{0}}}, wseen[4][8] = {{0}};
        for (int i = 0; i < n; i++) {
            tm_sched_event e = ev[i];
            cr_assert(e.stage >= 0 && e.stage < 4 && e.mb >= 0 && e.mb < 8);
            if (i > 0 && ev[i - 1].stage == e.stage) cr_expect_geq(e.start, ev[i - 1].start);
            cr_expect_leq(e.end, makespan + 1e-12);
            if (e.kind == TM_SCHED_WGT) {
                /* W after its B, alone on the stage's engine. */
                cr_expect(split, "%s has a W", tm_schedule_kind_name(k));
                wseen[e.stage][e.mb]++;
                cr_expect(fabs(e.end - e.start - W[e.stage]) < 1e-12);
                cr_expect_geq(e.start, last_end[e.stage] - 1e-12, "passes overlap");
                cr_expect_geq(e.start, bend[e.stage][e.mb] - 1e-12, "W before its B");
                last_end[e.stage] = e.end;
            } else if (e.kind == TM_SCHED_FWD || e.kind == TM_SCHED_BWD) {
                int bw = e.kind == TM_SCHED_BWD;
                seen[e.stage][bw][e.mb]++;
                cr_expect(fabs(e.end - e.start - (bw ? B : F)[e.stage]) < 1e-12);
                cr_expect_geq(e.start, last_end[e.stage] - 1e-12, "passes overlap");
                last_end[e.stage] = e.end;
                (bw ? bstart : fstart)[e.stage][e.mb] = e.start;
                (bw ? bend : fend)[e.stage][e.mb] = e.end;
            } else {
                cr_expect(fabs(e.end - e.start - comm) < 1e-12);
            }
        }
        for (int st = 0; st < 4; st++)
            for (int i = 0; i < 8; i++) {
                cr_expect_eq(seen[st][0][i], 1);
                cr_expect_eq(seen[st][1][i], 1);
                cr_expect_eq(wseen[st][i], split);
                cr_expect_geq(bstart[st][i], fend[st][i] - 1e-12);
                if (st > 0) cr_expect_geq(fstart[st][i], fend[st - 1][i] + comm - 1e-12);
                if (st < 3) cr_expect_geq(bstart[st][i], bend[st + 1][i] + comm - 1e-12);
            }
        free(ev);
        tm_schedule_free(&s);
    }
}

Test(schedule, simulate_is_deterministic_and_exact)
{
    tm_schedule s;
    double F[4] = {1, 1.5, 2, 1}, B[4] = {2, 3, 2.5, 2}, m1, m2;
    tm_sched_event *e1, *e2;
    int n1, n2;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_1F1B, 4, 16), TM_OK);
    cr_assert_eq(tm_schedule_simulate(&s, F, B, 0.25, &e1, &n1, &m1), TM_OK);
    cr_assert_eq(tm_schedule_simulate(&s, F, B, 0.25, &e2, &n2, &m2), TM_OK);
    cr_expect_eq(n1, n2);
    cr_expect_eq(m1, m2);
    for (int i = 0; i < n1 && i < n2; i++)
        cr_expect(e1[i].stage == e2[i].stage && e1[i].kind == e2[i].kind &&
                      e1[i].mb == e2[i].mb && e1[i].start == e2[i].start && e1[i].end == e2[i].end,
                  "event %d differs", i);
    free(e1);
    free(e2);
    tm_schedule_free(&s);
    /* Two stages, one micro-batch: F0, a message, F1, B1, a message, B0. */
    double F2[2] = {1, 2}, B2[2] = {3, 4}, makespan;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_SEQUENTIAL, 2, 1), TM_OK);
    cr_assert_eq(tm_schedule_simulate(&s, F2, B2, 0.5, &e1, &n1, &makespan), TM_OK);
    cr_expect_eq(makespan, 1 + 0.5 + 2 + 4 + 0.5 + 3);
    free(e1);
    tm_schedule_free(&s);
}

Test(schedule, simulate_rejects_bad_input)
{
    tm_schedule s;
    double F[2] = {1, 1}, B[2] = {2, 2}, makespan;
    tm_sched_event *ev = (tm_sched_event *)&s;
    int n;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_GPIPE, 2, 2), TM_OK);
    F[1] = -1;
    cr_expect_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_EINVAL);
    cr_expect_null(ev);
    F[1] = NAN;
    cr_expect_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_EINVAL);
    F[1] = 1;
    cr_expect_eq(tm_schedule_simulate(&s, F, B, INFINITY, &ev, &n, &makespan), TM_EINVAL);
    cr_expect_eq(tm_schedule_simulate(&s, NULL, B, 0, &ev, &n, &makespan), TM_EINVAL);
    s.actions[1][0] = A(FWD, 0); /* drops stage 1's first receive */
    cr_expect_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_EINVAL);
    cr_expect_null(ev);
    tm_schedule_free(&s);
}

Test(schedule, bubble_counts_only_compute)
{
    tm_sched_event ev[3] = {
        {0, TM_SCHED_FWD, 0, 0, 1, 0}, {0, TM_SCHED_SEND_ACT, 0, 1, 2, 0}, {1, TM_SCHED_BWD, 0, 2, 4, 0},
    };
    cr_expect(fabs(tm_schedule_bubble(ev, 3, 2, 4) - (1 - 3.0 / 8)) < 1e-15);
    cr_expect_eq(tm_schedule_bubble(ev, 3, 2, 0), 0);
}

/* Draws into memory and returns the text (free() it). */
static char *draw(const tm_schedule *s, const tm_sched_event *ev, int n, double makespan,
                  int width)
{
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    cr_assert_not_null(f);
    tm_schedule_draw(f, s, ev, n, makespan, width);
    fclose(f);
    return text;
}

Test(schedule, draw_shows_one_labelled_row_per_stage)
{
    tm_schedule s;
    double F[4] = {1, 1, 1, 1}, B[4] = {2, 2, 2, 2}, makespan;
    tm_sched_event *ev;
    int n;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_1F1B, 4, 8), TM_OK);
    cr_assert_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_OK);
    cr_expect_eq(tm_schedule_draw_width(ev, n, makespan), 99);
    char *text = draw(&s, ev, n, makespan, 0);
    /* Three columns a time unit: stage 0 forwards 0..3, waits for B0 at 15. */
    cr_expect(strstr(text, "stage 0 |F0 F1 F2 F3 ...............") != NULL, "%s", text);
    cr_expect(strstr(text, "stage 3 |.........F0 B0    F1 B1 ") != NULL, "%s", text);
    cr_expect(strstr(text, "B7    ..................|\n") != NULL, "%s", text);
    cr_expect(strstr(text, "bubble 27.27% measured, 27.27% theory") != NULL, "%s", text);
    cr_expect(strstr(text, "1f1b, 4 stages, 8 micro-batches, makespan 33") != NULL, "%s", text);
    int rows = 0;
    for (char *p = strstr(text, "stage "); p; p = strstr(p + 1, "stage ")) {
        char *bar = strchr(p, '|'), *end = strchr(p, '\n');
        cr_assert(bar && end);
        cr_expect_eq(end - bar, 99 + 2, "row %d is not 99 columns wide", rows);
        rows++;
    }
    cr_expect_eq(rows, 4);
    free(text);
    free(ev);
    tm_schedule_free(&s);
}

/* A label that does not fit would name another micro-batch when cut short,
 * so a narrow cell shows only its pass's letter. */
Test(schedule, draw_narrow_cells_show_letters_only)
{
    tm_schedule s;
    double F[1] = {1}, B[1] = {1}, makespan;
    tm_sched_event *ev;
    int n;
    cr_assert_eq(tm_schedule_make(&s, TM_SCHED_SEQUENTIAL, 1, 16), TM_OK);
    cr_assert_eq(tm_schedule_simulate(&s, F, B, 0, &ev, &n, &makespan), TM_OK);
    char *text = draw(&s, ev, n, makespan, 32);
    cr_expect(strstr(text, "stage 0 |FBFBFBFBFBFBFBFBFBFBFBFBFBFBFBFB|\n") != NULL, "%s", text);
    free(text);
    text = draw(&s, ev, n, makespan, 96);
    cr_expect(strstr(text, "stage 0 |F0 B0 F1 B1 ") != NULL, "%s", text);
    cr_expect(strstr(text, "F15B15|\n") != NULL, "%s", text);
    free(text);
    free(ev);
    tm_schedule_free(&s);
}

/* Runs build/schedule with args, output into files; returns the status. */
static int run_cli(const char *args, char *out, size_t n_out, char *err, size_t n_err)
{
    const char *dir = getenv("TM_BIN_DIR");
    char o[64], e[64], cmd[1024];
    snprintf(o, sizeof o, "/tmp/tm_sched_out_%ld", (long)getpid());
    snprintf(e, sizeof e, "/tmp/tm_sched_err_%ld", (long)getpid());
    snprintf(cmd, sizeof cmd, "%s/schedule %s >%s 2>%s", dir ? dir : "build", args, o, e);
    int st = system(cmd);
    cr_assert(WIFEXITED(st), "%s", cmd);
    FILE *f = fopen(o, "r");
    size_t k = f ? fread(out, 1, n_out - 1, f) : 0;
    out[k] = '\0';
    if (f) fclose(f);
    f = fopen(e, "r");
    k = f ? fread(err, 1, n_err - 1, f) : 0;
    err[k] = '\0';
    if (f) fclose(f);
    unlink(o);
    unlink(e);
    return WEXITSTATUS(st);
}

Test(schedule, cli_prints_timeline_and_rejects_bad_usage, .timeout = 60)
{
    static char out[1 << 16], err[4096];
    cr_expect_eq(run_cli("--pp 4 --micro-batches 8 --schedule 1f1b --list", out, sizeof out, err,
                         sizeof err), 0, "%s", err);
    cr_expect(strstr(out, "stage 3 |") != NULL, "%s", out);
    cr_expect(strstr(out, "in flight, max per stage: 4 3 2 1; documented bound: 4 3 2 1") != NULL,
              "%s", out);
    cr_expect(strstr(out, "stage 1 (") != NULL && strstr(out, "SEND_ACT_RECV_GRAD(") != NULL,
              "%s", out);
    cr_expect_eq(run_cli("--schedule all --pp 2 --micro-batches 2", out, sizeof out, err,
                         sizeof err), 0, "%s", err);
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++)
        cr_expect(strstr(out, tm_schedule_kind_name(k)) != NULL, "%s", out);
    const char *bad[] = {
        "--pp 0", "--pp x", "--micro-batches -3", "--schedule zigzag", "--fwd-time -1",
        "--fwd-time 1,2 --pp 4", "--bwd-time nan", "--comm-time inf", "--frobnicate", "stray",
        "--width 5", "--pp 1024 --micro-batches 65536",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(run_cli(bad[i], out, sizeof out, err, sizeof err), 2, "%s", bad[i]);
        cr_expect(strncmp(err, "schedule: ", 10) == 0, "%s: %s", bad[i], err);
        char *nl = strchr(err, '\n');
        cr_expect(nl != NULL && nl[1] == '\0', "%s: not one line: %s", bad[i], err);
    }
}
