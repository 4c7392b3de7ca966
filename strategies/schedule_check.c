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
 * action (or exchange: a run of joined actions) and the time it arrived
 * there; a compute action always completes, a message half completes once
 * the neighbour's current exchange holds the counterpart half, both
 * starting at the later arrival. Every time is then a sum or maximum of
 * earlier ones whatever order the stages are visited in, so the result is
 * exact and deterministic. */
#define HALVES (2 * TM_SCHED_MAX_JOINED) /* of one exchange at most */
typedef struct {
    const tm_schedule *s;
    const double *fwd, *bwd, *wgt;
    double comm;
    int *pc;                /* (pp,) index of the current action */
    double *t;              /* (pp,) arrival time at the current action */
    unsigned char *done;    /* (pp, HALVES) halves of the current exchange done */
    double *hend;           /* (pp, HALVES) their end times */
    int *queue;             /* (pp,) ring of stages to visit */
    unsigned char *queued;  /* (pp,) */
    int qhead, qlen;
    tm_sched_event *ev;     /* NULL: record nothing */
    int n_ev;
} engine;

static void emit(engine *e, int stage, tm_sched_kind kind, int mb, int chunk, double start,
                 double end)
{
    if (e->ev != NULL) e->ev[e->n_ev++] = (tm_sched_event){stage, kind, mb, start, end, chunk};
}

/* The device at the other end of half k of chunk c on device s (the
 * validator has checked that there is one). */
static int peer_of(const tm_schedule *S, int s, int c, tm_sched_kind k)
{
    int q = s, qc;
    tm__sched_peer(S->pp, tm__sched_v(S), s, c, k, &q, &qc);
    return q;
}

/* The message halves of the exchange starting at action i of stage s, in
 * order; *n_act: its actions. Returns how many halves (0 at a compute
 * action). */
static int exchange_halves(const tm_schedule *S, int s, int i, tm_sched_kind *k, int *mb, int *c,
                           int *n_act)
{
    int n = 0, j = i;
    do n += tm__sched_halves(S->actions[s][j], k + n, mb + n, c + n);
    while (S->actions[s][j].with_next && ++j < S->len[s]);
    *n_act = j - i + 1;
    return n;
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
            int g = a.chunk * S->pp + s;
            double d = e->fwd == NULL             ? 1
                       : a.kind == TM_SCHED_FWD ? e->fwd[g]
                       : a.kind == TM_SCHED_BWD ? e->bwd[g]
                       : e->wgt == NULL         ? 0
                                                : e->wgt[g];
            emit(e, s, a.kind, a.mb, a.chunk, e->t[s], e->t[s] + d);
            e->t[s] += d;
            e->pc[s]++;
            continue;
        }
        tm_sched_kind hk[HALVES], qk[HALVES];
        int hm[HALVES], qm[HALVES], hc[HALVES], qc[HALVES], na, nqa;
        int nh = exchange_halves(S, s, e->pc[s], hk, hm, hc, &na), all = 1;
        for (int h = 0; h < nh; h++) {
            if (e->done[HALVES * s + h]) continue;
            int q = peer_of(S, s, hc[h], hk[h]);
            if (e->pc[q] < S->len[q]) {
                int nq = exchange_halves(S, q, e->pc[q], qk, qm, qc, &nqa);
                for (int g = 0; g < nq; g++) {
                    if (e->done[HALVES * q + g] || qk[g] != tm__sched_counterpart(hk[h]) ||
                        peer_of(S, q, qc[g], qk[g]) != s)
                        continue;
                    double start = e->t[s] > e->t[q] ? e->t[s] : e->t[q];
                    double end = start + e->comm;
                    e->done[HALVES * s + h] = e->done[HALVES * q + g] = 1;
                    e->hend[HALVES * s + h] = e->hend[HALVES * q + g] = end;
                    emit(e, s, hk[h], hm[h], hc[h], start, end);
                    emit(e, q, qk[g], qm[g], qc[g], start, end);
                    enqueue(e, q);
                    break;
                }
            }
            all &= e->done[HALVES * s + h];
        }
        if (!all) return;
        double end = e->t[s];
        for (int h = 0; h < nh; h++) {
            if (e->hend[HALVES * s + h] > end) end = e->hend[HALVES * s + h];
            e->done[HALVES * s + h] = 0;
        }
        e->t[s] = end;
        e->pc[s] += na;
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
        /* Compute actions never wait, so a blocked exchange has a half. */
        tm_sched_kind hk[HALVES];
        int hm[HALVES], hc[HALVES], na, h = 0;
        int nh = exchange_halves(S, s, e->pc[s], hk, hm, hc, &na);
        while (h < nh - 1 && e->done[HALVES * s + h]) h++;
        int q = peer_of(S, s, hc[h], hk[h]), at = e->pc[s];
        /* The action holding that half. */
        for (int j = 0, seen_h = 0; j < na; j++) {
            tm_sched_kind jk[2];
            int jm[2], jc[2];
            seen_h += tm__sched_halves(S->actions[s][e->pc[s] + j], jk, jm, jc);
            if (seen_h > h) {
                at = e->pc[s] + j;
                break;
            }
        }
        char name[64];
        tm_sched_action_format(name, sizeof name, S->actions[s][at]);
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
    e.done = calloc(HALVES * p, 1);
    e.hend = calloc(HALVES * p, sizeof *e.hend);
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
    for (int st = 0, joined = 0; st < s->pp; st++, joined = 0)
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            if ((unsigned)a.kind > TM_SCHED_WGT)
                return tm_error(TM_EINVAL, "stage %d action %d: unknown action kind %d", st, i,
                                (int)a.kind);
            if (a.with_next && (a.kind == TM_SCHED_FWD || a.kind == TM_SCHED_BWD ||
                                i + 1 == s->len[st] || s->actions[st][i + 1].kind == TM_SCHED_FWD ||
                                s->actions[st][i + 1].kind == TM_SCHED_BWD))
                return tm_error(TM_EINVAL, "stage %d action %d: only a message joins the message "
                                "after it", st, i);
            if (a.with_next && ++joined == TM_SCHED_MAX_JOINED)
                return tm_error(TM_EINVAL, "stage %d action %d: more than %d actions joined", st,
                                i, TM_SCHED_MAX_JOINED);
            if (!a.with_next) joined = 0;
            char name[64];
            tm_sched_action_format(name, sizeof name, a);
            if (a.mb < 0 || a.mb >= s->m || (tm__sched_is_combined(a.kind) && (a.mb2 < 0 || a.mb2 >= s->m)))
                return tm_error(TM_EINVAL, "stage %d action %d: %s names a micro-batch outside 0..%d",
                                st, i, name, s->m - 1);
            if (a.chunk < 0 || a.chunk >= tm__sched_v(s))
                return tm_error(TM_EINVAL, "stage %d action %d: %s names a chunk outside 0..%d",
                                st, i, name, tm__sched_v(s) - 1);
            tm_sched_kind hk[2];
            int hm[2], hc[2], q, qc, nh = tm__sched_halves(a, hk, hm, hc);
            for (int h = 0; h < nh; h++) {
                if (tm__sched_peer(s->pp, tm__sched_v(s), st, hc[h], hk[h], &q, &qc)) continue;
                if (tm__sched_peer_dir(hk[h]) < 0)
                    return tm_error(TM_EINVAL,
                                    "stage %d action %d: %s on the first stage, which has no "
                                    "stage before it", st, i, name);
                return tm_error(TM_EINVAL,
                                "stage %d action %d: %s on the last stage, which has no "
                                "stage after it", st, i, name);
            }
        }
    return TM_OK;
}

/* FWD(i) and BWD(i) exactly once on every stage and chunk, and WGT(i)
 * when the kind splits the backward (never otherwise); cnt is scratch of
 * 3mv. */
static int check_passes(const tm_schedule *s, int *cnt)
{
    static const tm_sched_kind kinds[3] = {TM_SCHED_FWD, TM_SCHED_BWD, TM_SCHED_WGT};
    int mv = s->m * tm__sched_v(s);
    int split = tm_schedule_splits_backward(s->kind), passes = split ? 3 : 2;
    for (int st = 0; st < s->pp; st++) {
        memset(cnt, 0, 3 * (size_t)mv * sizeof *cnt);
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            int k = a.kind == TM_SCHED_FWD ? 0 : a.kind == TM_SCHED_BWD ? 1
                    : a.kind == TM_SCHED_WGT ? 2 : -1;
            if (k < 0) continue;
            char name[64];
            tm_sched_action_format(name, sizeof name, a);
            if (k == 2 && !split)
                return tm_error(TM_EINVAL, "stage %d action %d: %s in %s, which does not split "
                                "the backward", st, i, name, tm_schedule_kind_name(s->kind));
            if (++cnt[k * mv + a.chunk * s->m + a.mb] == 2)
                return tm_error(TM_EINVAL, "stage %d action %d: %s a second time", st, i, name);
        }
        for (int i = 0; i < passes * mv; i++)
            if (cnt[i] == 0) {
                tm_sched_action a = {kinds[i / mv], i % s->m, 0, i % mv / s->m, 0};
                char name[64];
                tm_sched_action_format(name, sizeof name, a);
                return tm_error(TM_EINVAL, "stage %d: %s missing", st, name);
            }
    }
    return TM_OK;
}

/* The halves of kind k of chunk c on stage st, in order: micro-batches
 * into mb, action indices into at. Returns how many. */
static int collect(const tm_schedule *s, int st, tm_sched_kind k, int c, int *mb, int *at)
{
    int n = 0;
    for (int i = 0; i < s->len[st]; i++) {
        tm_sched_kind hk[2];
        int hm[2], hc[2], nh = tm__sched_halves(s->actions[st][i], hk, hm, hc);
        for (int h = 0; h < nh; h++)
            if (hk[h] == k && hc[h] == c) mb[n] = hm[h], at[n++] = i;
    }
    return n;
}

/* The messages of kind `sk` model stage `g` sends (to g + 1 for
 * activations, g - 1 for gradients) are, in order, those the other end
 * receives, each micro-batch's exactly once. Stages are named by device,
 * model stage g being device g mod pp's chunk g / pp. cnt is scratch of 2m,
 * seq of 4 * (the longest list). */
static int check_channel(const tm_schedule *s, int g, tm_sched_kind sk, int *cnt, int *seq,
                         int maxlen)
{
    tm_sched_kind rk = tm__sched_counterpart(sk);
    int h = g + tm__sched_peer_dir(sk), from = g % s->pp, to = h % s->pp;
    const char *sn = tm_sched_kind_name(sk), *rn = tm_sched_kind_name(rk);
    int *smb = seq, *sat = seq + maxlen, *rmb = seq + 2 * maxlen, *rat = seq + 3 * maxlen;
    int ns = collect(s, from, sk, g / s->pp, smb, sat);
    int nr = collect(s, to, rk, h / s->pp, rmb, rat);
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

/* One message half as the link from one device to another carries it: the
 * receiving end's kind, micro-batch and chunk, and the action. */
typedef struct {
    tm_sched_kind kind;
    int mb, chunk, at;
} carried;

/* The halves of device st's list that travel over the link between st and
 * `other`: its sends there (send 1, named as the receiver will see them) or
 * its receives from there (send 0). Returns how many. */
static int carried_by(const tm_schedule *s, int st, int other, int send, carried *out)
{
    int n = 0;
    for (int i = 0; i < s->len[st]; i++) {
        tm_sched_kind hk[2];
        int hm[2], hc[2], q, qc, nh = tm__sched_halves(s->actions[st][i], hk, hm, hc);
        for (int h = 0; h < nh; h++) {
            int is_send = hk[h] == TM_SCHED_SEND_ACT || hk[h] == TM_SCHED_SEND_GRAD;
            if (is_send != send || !tm__sched_peer(s->pp, tm__sched_v(s), st, hc[h], hk[h], &q, &qc) ||
                q != other)
                continue;
            out[n++] = send ? (carried){tm__sched_counterpart(hk[h]), hm[h], qc, i}
                            : (carried){hk[h], hm[h], hc[h], i};
        }
    }
    return n;
}

/* A link is one first-in first-out channel from one device to the next or
 * the one before: with chunks it carries several model stages' messages,
 * and with two devices both activations and gradients, and both ends must
 * agree on their order. (With v = 1 each link carries one channel, which
 * check_channel has checked.) */
static int check_links(const tm_schedule *s, int maxlen)
{
    carried *snd = malloc(2 * (size_t)maxlen * sizeof *snd);
    carried *rcv = malloc(2 * (size_t)maxlen * sizeof *rcv);
    int st = snd != NULL && rcv != NULL
                 ? TM_OK : tm_error(TM_EHOSTMEM, "no host memory to check the links");
    for (int from = 0; st == TM_OK && from < s->pp; from++)
        for (int d = 1; st == TM_OK && d >= -1; d -= 2) {
            int to = (from + d + s->pp) % s->pp;
            if (to == from || (d < 0 && to == (from + 1) % s->pp)) continue;
            int ns = carried_by(s, from, to, 1, snd), nr = carried_by(s, to, from, 0, rcv);
            for (int i = 0; i < ns && i < nr; i++) {
                if (snd[i].kind == rcv[i].kind && snd[i].mb == rcv[i].mb &&
                    snd[i].chunk == rcv[i].chunk)
                    continue;
                char a[64], b[64];
                tm_sched_action_format(a, sizeof a, s->actions[from][snd[i].at]);
                tm_sched_action_format(b, sizeof b, s->actions[to][rcv[i].at]);
                st = tm_error(TM_EINVAL,
                              "stage %d action %d: %s reaches stage %d at its action %d, %s: "
                              "messages out of order on the link", from, snd[i].at, a, to,
                              rcv[i].at, b);
                break;
            }
        }
    free(snd);
    free(rcv);
    return st;
}

enum { P_RA, P_F, P_SA, P_RG, P_B, P_SG, P_W, P_N };

/* Each micro-batch's receive, pass and send in dependency order on every
 * stage and chunk; pos is scratch of P_N * m * v. Reports the earliest
 * offending action. */
static int check_order(const tm_schedule *s, int *pos)
{
    static const tm_sched_kind pk[P_N] = {
        TM_SCHED_RECV_ACT, TM_SCHED_FWD, TM_SCHED_SEND_ACT,
        TM_SCHED_RECV_GRAD, TM_SCHED_BWD, TM_SCHED_SEND_GRAD, TM_SCHED_WGT,
    };
    /* (earlier, later, model stage must have the neighbour in this
     * direction); the last: 2 for split backwards only. */
    static const int rule[6][3] = {
        {P_RA, P_F, -1}, {P_F, P_SA, 1}, {P_F, P_B, 0}, {P_RG, P_B, 1}, {P_B, P_SG, -1},
        {P_B, P_W, 2},
    };
    int split = tm_schedule_splits_backward(s->kind);
    int m = s->m, mv = s->m * tm__sched_v(s), last = s->pp * tm__sched_v(s) - 1;
    for (int st = 0; st < s->pp; st++) {
        memset(pos, -1, (size_t)P_N * mv * sizeof *pos);
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            tm_sched_kind hk[2];
            int hm[2], hc[2], nh = tm__sched_halves(a, hk, hm, hc);
            if (nh == 0) hk[0] = a.kind, hm[0] = a.mb, hc[0] = a.chunk, nh = 1;
            for (int h = 0; h < nh; h++)
                for (int k = 0; k < P_N; k++)
                    if (pk[k] == hk[h]) pos[k * mv + hc[h] * m + hm[h]] = i;
        }
        int worst = -1, wr = 0, wmb = 0;
        for (int i = 0; i < mv; i++)
            for (int r = 0; r < 6; r++) {
                int dir = rule[r][2], g = i / m * s->pp + st;
                if (dir == 2 && !split) continue;
                if ((dir < 0 && g == 0) || (dir == 1 && g == last)) continue;
                int early = pos[rule[r][1] * mv + i];
                if (early < pos[rule[r][0] * mv + i] && (worst < 0 || early < worst))
                    worst = early, wr = r, wmb = i;
            }
        if (worst >= 0) {
            char a[64], b[64];
            tm_sched_action_format(a, sizeof a,
                                   (tm_sched_action){pk[rule[wr][1]], wmb % m, 0, wmb / m, 0});
            tm_sched_action_format(b, sizeof b,
                                   (tm_sched_action){pk[rule[wr][0]], wmb % m, 0, wmb / m, 0});
            return tm_error(TM_EINVAL, "stage %d action %d: %s before %s", st, worst, a, b);
        }
    }
    return TM_OK;
}

int tm_schedule_validate(const tm_schedule *s)
{
    if (s == NULL || s->len == NULL || s->actions == NULL)
        return tm_error(TM_EINVAL, "empty schedule");
    if (s->pp < 1 || s->pp > TM_SCHEDULE_MAX_PP || s->m < 1 || s->m > TM_SCHEDULE_MAX_MB ||
        s->v < 0 || s->v > TM_SCHEDULE_MAX_VIRTUAL || (s->v > 1 && s->pp < 2))
        return tm_error(TM_EINVAL, "schedule of %d stages, %d micro-batches and %d virtual stages",
                        s->pp, s->m, s->v);
    int maxlen = 1;
    for (int st = 0; st < s->pp; st++) {
        if (s->len[st] < 0 || (s->len[st] > 0 && s->actions[st] == NULL))
            return tm_error(TM_EINVAL, "stage %d: no action list", st);
        if (s->len[st] > maxlen) maxlen = s->len[st];
    }
    TM_CHECK(check_actions(s));
    int *cnt = malloc((size_t)P_N * s->m * tm__sched_v(s) * sizeof *cnt);
    int *seq = malloc(4 * (size_t)maxlen * sizeof *seq);
    int st = TM_OK;
    if (cnt == NULL || seq == NULL) {
        st = tm_error(TM_EHOSTMEM, "no host memory to validate a schedule");
        goto out;
    }
    st = check_passes(s, cnt);
    for (int g = 0; st == TM_OK && g + 1 < s->pp * tm__sched_v(s); g++) {
        st = check_channel(s, g, TM_SCHED_SEND_ACT, cnt, seq, maxlen);
        if (st == TM_OK) st = check_channel(s, g + 1, TM_SCHED_SEND_GRAD, cnt, seq, maxlen);
    }
    if (st == TM_OK) st = check_links(s, maxlen);
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
    for (int i = 0; i < s->pp * tm__sched_v(s); i++)
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
            int hm[2], hc[2], nh = tm__sched_halves(s->actions[st][i], hk, hm, hc);
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
