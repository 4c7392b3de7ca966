/* Schedule checking: the rendezvous engine that validates a schedule (every
 * dependency, every message matched, no deadlock) and simulates its timing.
 * Thread-safety: pure functions of their arguments. */
#include "strategies/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/schedule_internal.h"

/* ---------------------------------------------------------------- engine */

/* Runs every stage's list with rendezvous messages. Each stage has a current
 * action and the time it arrived there; a compute action always completes, a
 * message half completes once the neighbour's current action holds the
 * counterpart half, both starting at the later arrival. Every time is then a
 * sum or maximum of earlier ones whatever order the stages are visited in,
 * so the result is exact and deterministic. */
typedef struct {
    const tm_schedule *s;
    const double *fwd, *bwd, *wgt;
    double comm;
    int *pc;                /* (pp,) index of the current action */
    double *t;              /* (pp,) arrival time at the current action */
    unsigned char *done;    /* (pp, 2) halves of the current action done */
    double *hend;           /* (pp, 2) their end times */
    int *queue;             /* (pp,) ring of stages to visit */
    unsigned char *queued;  /* (pp,) */
    int qhead, qlen;
    tm_sched_event *ev;     /* NULL: record nothing */
    int n_ev;
} engine;

static void emit(engine *e, int stage, tm_sched_kind kind, int mb, double start, double end)
{
    if (e->ev != NULL) e->ev[e->n_ev++] = (tm_sched_event){stage, kind, mb, start, end};
}

static void enqueue(engine *e, int s)
{
    if (e->queued[s]) return;
    e->queued[s] = 1;
    e->queue[(e->qhead + e->qlen++) % e->s->pp] = s;
}

/* Advances stage s as far as it can go without waiting. */
static void advance(engine *e, int s)
{
    const tm_schedule *S = e->s;
    while (e->pc[s] < S->len[s]) {
        tm_sched_action a = S->actions[s][e->pc[s]];
        if (a.kind == TM_SCHED_FWD || a.kind == TM_SCHED_BWD || a.kind == TM_SCHED_WGT) {
            double d = e->fwd == NULL             ? 1
                       : a.kind == TM_SCHED_FWD ? e->fwd[s]
                       : a.kind == TM_SCHED_BWD ? e->bwd[s]
                       : e->wgt == NULL         ? 0
                                                : e->wgt[s];
            emit(e, s, a.kind, a.mb, e->t[s], e->t[s] + d);
            e->t[s] += d;
            e->pc[s]++;
            continue;
        }
        tm_sched_kind hk[2], qk[2];
        int hm[2], qm[2];
        int nh = tm__sched_halves(a, hk, hm), all = 1;
        for (int h = 0; h < nh; h++) {
            if (e->done[2 * s + h]) continue;
            int q = s + tm__sched_peer_dir(hk[h]);
            if (e->pc[q] < S->len[q]) {
                int nq = tm__sched_halves(S->actions[q][e->pc[q]], qk, qm);
                for (int g = 0; g < nq; g++) {
                    if (e->done[2 * q + g] || qk[g] != tm__sched_counterpart(hk[h])) continue;
                    double start = e->t[s] > e->t[q] ? e->t[s] : e->t[q];
                    double end = start + e->comm;
                    e->done[2 * s + h] = e->done[2 * q + g] = 1;
                    e->hend[2 * s + h] = e->hend[2 * q + g] = end;
                    emit(e, s, hk[h], hm[h], start, end);
                    emit(e, q, qk[g], qm[g], start, end);
                    enqueue(e, q);
                    break;
                }
            }
            all &= e->done[2 * s + h];
        }
        if (!all) return;
        double end = e->hend[2 * s];
        if (nh == 2 && e->hend[2 * s + 1] > end) end = e->hend[2 * s + 1];
        e->t[s] = end;
        e->done[2 * s] = e->done[2 * s + 1] = 0;
        e->pc[s]++;
    }
}

/* Writes the wait-for chain from the first blocked stage into buf. */
static void describe_deadlock(const engine *e, char *buf, size_t n)
{
    const tm_schedule *S = e->s;
    int s = 0;
    while (e->pc[s] == S->len[s]) s++;
    unsigned char *seen = calloc((size_t)S->pp, 1);
    size_t k = (size_t)snprintf(buf, n, "deadlock: stage %d", s);
    for (int first = 1; k < n; first = 0) {
        /* Compute actions never wait, so a blocked action has a half. */
        tm_sched_kind hk[2] = {TM_SCHED_SEND_ACT, TM_SCHED_SEND_ACT};
        int hm[2], h = 0;
        tm_sched_action a = S->actions[s][e->pc[s]];
        int nh = tm__sched_halves(a, hk, hm);
        while (h < nh - 1 && e->done[2 * s + h]) h++;
        int q = s + tm__sched_peer_dir(hk[h]);
        char name[64];
        tm_sched_action_format(name, sizeof name, a);
        k += (size_t)snprintf(buf + k, n - k, "%s%s for stage %d",
                              first ? " waits in " : ", which waits in ", name, q);
        if (seen != NULL) seen[s] = 1;
        if (k >= n || seen == NULL || seen[q]) break;
        if (e->pc[q] == S->len[q]) {
            snprintf(buf + k, n - k, ", which has finished");
            break;
        }
        s = q;
    }
    free(seen);
}

/* Runs s to the end or to a deadlock (TM_EINVAL naming it). NULL fwd / bwd
 * mean unit times, NULL wgt zero W times; ev, n_ev and makespan may be
 * NULL. */
static int run(const tm_schedule *s, const double *fwd, const double *bwd, const double *wgt,
               double comm, tm_sched_event *ev, int *n_ev, double *makespan)
{
    size_t p = (size_t)s->pp;
    engine e = {.s = s, .fwd = fwd, .bwd = bwd, .wgt = wgt, .comm = comm, .ev = ev};
    e.pc = calloc(p, sizeof *e.pc);
    e.t = calloc(p, sizeof *e.t);
    e.done = calloc(2 * p, 1);
    e.hend = calloc(2 * p, sizeof *e.hend);
    e.queue = malloc(p * sizeof *e.queue);
    e.queued = calloc(p, 1);
    int st = TM_OK;
    if (!e.pc || !e.t || !e.done || !e.hend || !e.queue || !e.queued) {
        st = tm_error(TM_EHOSTMEM, "no host memory to run a %d-stage schedule", s->pp);
        goto out;
    }
    for (int i = 0; i < s->pp; i++) enqueue(&e, i);
    while (e.qlen > 0) {
        int i = e.queue[e.qhead];
        e.qhead = (e.qhead + 1) % s->pp;
        e.qlen--;
        e.queued[i] = 0;
        advance(&e, i);
    }
    for (int i = 0; i < s->pp; i++)
        if (e.pc[i] < s->len[i]) {
            char msg[768];
            describe_deadlock(&e, msg, sizeof msg);
            st = tm_error(TM_EINVAL, "%s", msg);
            goto out;
        }
    if (makespan != NULL) {
        *makespan = 0;
        for (int i = 0; i < s->pp; i++)
            if (e.t[i] > *makespan) *makespan = e.t[i];
    }
    if (n_ev != NULL) *n_ev = e.n_ev;
out:
    free(e.pc);
    free(e.t);
    free(e.done);
    free(e.hend);
    free(e.queue);
    free(e.queued);
    return st;
}

/* ---------------------------------------------------------------- validation */

static int check_actions(const tm_schedule *s)
{
    for (int st = 0; st < s->pp; st++)
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            if ((unsigned)a.kind > TM_SCHED_WGT)
                return tm_error(TM_EINVAL, "stage %d action %d: unknown action kind %d", st, i,
                                (int)a.kind);
            char name[64];
            tm_sched_action_format(name, sizeof name, a);
            if (a.mb < 0 || a.mb >= s->m || (tm__sched_is_combined(a.kind) && (a.mb2 < 0 || a.mb2 >= s->m)))
                return tm_error(TM_EINVAL, "stage %d action %d: %s names a micro-batch outside 0..%d",
                                st, i, name, s->m - 1);
            tm_sched_kind hk[2];
            int hm[2], nh = tm__sched_halves(a, hk, hm);
            for (int h = 0; h < nh; h++) {
                if (st + tm__sched_peer_dir(hk[h]) < 0)
                    return tm_error(TM_EINVAL,
                                    "stage %d action %d: %s on the first stage, which has no "
                                    "stage before it", st, i, name);
                if (st + tm__sched_peer_dir(hk[h]) >= s->pp)
                    return tm_error(TM_EINVAL,
                                    "stage %d action %d: %s on the last stage, which has no "
                                    "stage after it", st, i, name);
            }
        }
    return TM_OK;
}

/* FWD(i) and BWD(i) exactly once on every stage, and WGT(i) when the
 * kind splits the backward (never otherwise); cnt is scratch of 3m. */
static int check_passes(const tm_schedule *s, int *cnt)
{
    static const char *const names[3] = {"FWD", "BWD", "WGT"};
    int split = tm_schedule_splits_backward(s->kind), passes = split ? 3 : 2;
    for (int st = 0; st < s->pp; st++) {
        memset(cnt, 0, 3 * (size_t)s->m * sizeof *cnt);
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            int k = a.kind == TM_SCHED_FWD ? 0 : a.kind == TM_SCHED_BWD ? 1
                    : a.kind == TM_SCHED_WGT ? 2 : -1;
            if (k < 0) continue;
            if (k == 2 && !split)
                return tm_error(TM_EINVAL, "stage %d action %d: WGT(%d) in %s, which does not "
                                "split the backward", st, i, a.mb, tm_schedule_kind_name(s->kind));
            if (++cnt[k * s->m + a.mb] == 2)
                return tm_error(TM_EINVAL, "stage %d action %d: %s(%d) a second time", st, i,
                                names[k], a.mb);
        }
        for (int i = 0; i < passes * s->m; i++)
            if (cnt[i] == 0)
                return tm_error(TM_EINVAL, "stage %d: %s(%d) missing", st, names[i / s->m],
                                i % s->m);
    }
    return TM_OK;
}

/* The halves of kind k on stage st, in order: micro-batches into mb, action
 * indices into at. Returns how many. */
static int collect(const tm_schedule *s, int st, tm_sched_kind k, int *mb, int *at)
{
    int n = 0;
    for (int i = 0; i < s->len[st]; i++) {
        tm_sched_kind hk[2];
        int hm[2], nh = tm__sched_halves(s->actions[st][i], hk, hm);
        for (int h = 0; h < nh; h++)
            if (hk[h] == k) mb[n] = hm[h], at[n++] = i;
    }
    return n;
}

/* The messages `from` sends of kind `sk` are, in order, those `to` receives,
 * each micro-batch's exactly once. cnt is scratch of 2m, seq of 4 * (the
 * longest list). */
static int check_channel(const tm_schedule *s, int from, tm_sched_kind sk, int to, int *cnt,
                         int *seq, int maxlen)
{
    tm_sched_kind rk = tm__sched_counterpart(sk);
    const char *sn = tm_sched_kind_name(sk), *rn = tm_sched_kind_name(rk);
    int *smb = seq, *sat = seq + maxlen, *rmb = seq + 2 * maxlen, *rat = seq + 3 * maxlen;
    int ns = collect(s, from, sk, smb, sat), nr = collect(s, to, rk, rmb, rat);
    int m = s->m;
    /* Messages pair up in order, so the sends of a micro-batch past the
     * number of its receives are the unreceived ones, and the other way. */
    memset(cnt, 0, 2 * (size_t)m * sizeof *cnt);
    for (int i = 0; i < nr; i++) cnt[m + rmb[i]]++;
    for (int i = 0; i < ns; i++)
        if (++cnt[smb[i]] > cnt[m + smb[i]])
            return tm_error(TM_EINVAL, "stage %d action %d: %s(%d) never received by stage %d",
                            from, sat[i], sn, smb[i], to);
    memset(cnt + m, 0, (size_t)m * sizeof *cnt);
    for (int i = 0; i < nr; i++)
        if (++cnt[m + rmb[i]] > cnt[rmb[i]])
            return tm_error(TM_EINVAL, "stage %d action %d: %s(%d) never sent by stage %d", to,
                            rat[i], rn, rmb[i], from);
    for (int i = 0; i < ns; i++)
        if (smb[i] != rmb[i])
            return tm_error(TM_EINVAL,
                            "stage %d action %d: %s(%d) reaches stage %d as %s(%d) at its action "
                            "%d: messages out of order", from, sat[i], sn, smb[i], to, rn, rmb[i],
                            rat[i]);
    memset(cnt, 0, (size_t)m * sizeof *cnt);
    for (int i = 0; i < ns; i++)
        if (++cnt[smb[i]] == 2)
            return tm_error(TM_EINVAL, "stage %d action %d: %s(%d) a second time", from, sat[i],
                            sn, smb[i]);
    for (int i = 0; i < m; i++)
        if (cnt[i] == 0)
            return tm_error(TM_EINVAL, "stage %d: %s(%d) missing", from, sn, i);
    return TM_OK;
}

enum { P_RA, P_F, P_SA, P_RG, P_B, P_SG, P_W, P_N };

/* Each micro-batch's receive, pass and send in dependency order on every
 * stage; pos is scratch of P_N * m. Reports the earliest offending action. */
static int check_order(const tm_schedule *s, int *pos)
{
    static const tm_sched_kind pk[P_N] = {
        TM_SCHED_RECV_ACT, TM_SCHED_FWD, TM_SCHED_SEND_ACT,
        TM_SCHED_RECV_GRAD, TM_SCHED_BWD, TM_SCHED_SEND_GRAD, TM_SCHED_WGT,
    };
    /* (earlier, later, stage must have the neighbour in this direction);
     * the last: 2 for split backwards only. */
    static const int rule[6][3] = {
        {P_RA, P_F, -1}, {P_F, P_SA, 1}, {P_F, P_B, 0}, {P_RG, P_B, 1}, {P_B, P_SG, -1},
        {P_B, P_W, 2},
    };
    int split = tm_schedule_splits_backward(s->kind);
    int m = s->m;
    for (int st = 0; st < s->pp; st++) {
        memset(pos, -1, (size_t)P_N * m * sizeof *pos);
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            tm_sched_kind hk[2];
            int hm[2], nh = tm__sched_halves(a, hk, hm);
            if (nh == 0) hk[0] = a.kind, hm[0] = a.mb, nh = 1;
            for (int h = 0; h < nh; h++)
                for (int k = 0; k < P_N; k++)
                    if (pk[k] == hk[h]) pos[k * m + hm[h]] = i;
        }
        int worst = -1, wr = 0, wmb = 0;
        for (int i = 0; i < m; i++)
            for (int r = 0; r < 6; r++) {
                int dir = rule[r][2];
                if (dir == 2 && !split) continue;
                if ((dir < 0 && st == 0) || (dir == 1 && st == s->pp - 1)) continue;
                int early = pos[rule[r][1] * m + i];
                if (early < pos[rule[r][0] * m + i] && (worst < 0 || early < worst))
                    worst = early, wr = r, wmb = i;
            }
        if (worst >= 0)
            return tm_error(TM_EINVAL, "stage %d action %d: %s(%d) before %s(%d)", st, worst,
                            tm_sched_kind_name(pk[rule[wr][1]]), wmb,
                            tm_sched_kind_name(pk[rule[wr][0]]), wmb);
    }
    return TM_OK;
}

int tm_schedule_validate(const tm_schedule *s)
{
    if (s == NULL || s->len == NULL || s->actions == NULL)
        return tm_error(TM_EINVAL, "empty schedule");
    if (s->pp < 1 || s->pp > TM_SCHEDULE_MAX_PP || s->m < 1 || s->m > TM_SCHEDULE_MAX_MB)
        return tm_error(TM_EINVAL, "schedule of %d stages and %d micro-batches", s->pp, s->m);
    int maxlen = 1;
    for (int st = 0; st < s->pp; st++) {
        if (s->len[st] < 0 || (s->len[st] > 0 && s->actions[st] == NULL))
            return tm_error(TM_EINVAL, "stage %d: no action list", st);
        if (s->len[st] > maxlen) maxlen = s->len[st];
    }
    TM_CHECK(check_actions(s));
    int *cnt = malloc((size_t)P_N * s->m * sizeof *cnt); /* >= 3m for check_passes */
    int *seq = malloc(4 * (size_t)maxlen * sizeof *seq);
    int st = TM_OK;
    if (cnt == NULL || seq == NULL) {
        st = tm_error(TM_EHOSTMEM, "no host memory to validate a schedule");
        goto out;
    }
    st = check_passes(s, cnt);
    for (int i = 0; st == TM_OK && i + 1 < s->pp; i++) {
        st = check_channel(s, i, TM_SCHED_SEND_ACT, i + 1, cnt, seq, maxlen);
        if (st == TM_OK) st = check_channel(s, i + 1, TM_SCHED_SEND_GRAD, i, cnt, seq, maxlen);
    }
    if (st == TM_OK) st = check_order(s, cnt);
    if (st == TM_OK) st = run(s, NULL, NULL, NULL, 0, NULL, NULL, NULL);
out:
    free(cnt);
    free(seq);
    return st;
}

/* ---------------------------------------------------------------- simulation */

static int event_cmp(const void *pa, const void *pb)
{
    const tm_sched_event *a = pa, *b = pb;
    if (a->stage != b->stage) return a->stage < b->stage ? -1 : 1;
    if (a->start != b->start) return a->start < b->start ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
    return (a->mb > b->mb) - (a->mb < b->mb);
}

static int bad_time(double x) { return !isfinite(x) || x < 0; }

int tm_schedule_simulate(const tm_schedule *s, const double *fwd_time, const double *bwd_time,
                         double comm_time, tm_sched_event **events, int *n_events,
                         double *makespan)
{
    return tm_schedule_simulate_split(s, fwd_time, bwd_time, NULL, comm_time, events, n_events,
                                      makespan);
}

int tm_schedule_simulate_split(const tm_schedule *s, const double *fwd_time,
                               const double *bwd_time, const double *wgt_time, double comm_time,
                               tm_sched_event **events, int *n_events, double *makespan)
{
    if (events != NULL) *events = NULL;
    if (events == NULL || n_events == NULL || makespan == NULL || fwd_time == NULL ||
        bwd_time == NULL)
        return tm_error(TM_EINVAL, "simulate needs times and somewhere to put the events");
    TM_CHECK(tm_schedule_validate(s));
    for (int i = 0; i < s->pp; i++)
        if (bad_time(fwd_time[i]) || bad_time(bwd_time[i]) ||
            (wgt_time != NULL && bad_time(wgt_time[i])))
            return tm_error(TM_EINVAL, "stage %d: forward time %g / backward time %g / W time %g "
                            "is not a finite time >= 0", i, fwd_time[i], bwd_time[i],
                            wgt_time != NULL ? wgt_time[i] : 0.0);
    if (bad_time(comm_time))
        return tm_error(TM_EINVAL, "message time %g is not a finite time >= 0", comm_time);
    size_t n = 0;
    for (int st = 0; st < s->pp; st++)
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_kind hk[2];
            int hm[2], nh = tm__sched_halves(s->actions[st][i], hk, hm);
            n += nh ? (size_t)nh : 1;
        }
    tm_sched_event *ev = malloc(n * sizeof *ev);
    if (ev == NULL) return tm_error(TM_EHOSTMEM, "no host memory for %zu events", n);
    int st = run(s, fwd_time, bwd_time, wgt_time, comm_time, ev, n_events, makespan);
    if (st != TM_OK) {
        free(ev);
        return st;
    }
    qsort(ev, (size_t)*n_events, sizeof *ev, event_cmp);
    *events = ev;
    return TM_OK;
}
