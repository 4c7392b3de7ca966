#include "strategies/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"

static const char *const schedule_names[TM_SCHEDULE_KINDS] = {
    "sequential", "gpipe", "1f1b", "grouped", "interleaved",
};

const char *tm_schedule_kind_name(tm_schedule_kind kind)
{
    if ((unsigned)kind >= TM_SCHEDULE_KINDS) return "?";
    return schedule_names[kind];
}

int tm_schedule_kind_parse(const char *name, tm_schedule_kind *out)
{
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++)
        if (name != NULL && strcmp(name, schedule_names[k]) == 0) {
            *out = (tm_schedule_kind)k;
            return TM_OK;
        }
    return tm_error(TM_EINVAL,
                    "unknown schedule \"%s\" (sequential, gpipe, 1f1b, grouped, interleaved)",
                    name ? name : "(null)");
}

const char *tm_sched_kind_name(tm_sched_kind kind)
{
    static const char *const names[] = {
        "FWD",       "BWD",       "SEND_ACT",           "RECV_ACT",
        "SEND_GRAD", "RECV_GRAD", "SEND_ACT_RECV_GRAD", "SEND_GRAD_RECV_ACT",
    };
    if ((unsigned)kind > TM_SCHED_SEND_GRAD_RECV_ACT) return "?";
    return names[kind];
}

static int is_combined(tm_sched_kind k)
{
    return k == TM_SCHED_SEND_ACT_RECV_GRAD || k == TM_SCHED_SEND_GRAD_RECV_ACT;
}

int tm_sched_action_format(char *buf, size_t n, tm_sched_action a)
{
    if (is_combined(a.kind))
        return snprintf(buf, n, "%s(%d,%d)", tm_sched_kind_name(a.kind), a.mb, a.mb2);
    return snprintf(buf, n, "%s(%d)", tm_sched_kind_name(a.kind), a.mb);
}

/* The message halves of an action as plain kinds with their micro-batches;
 * returns how many (0 for a compute action). */
static int halves(tm_sched_action a, tm_sched_kind kind[2], int mb[2])
{
    switch (a.kind) {
    case TM_SCHED_SEND_ACT_RECV_GRAD:
        kind[0] = TM_SCHED_SEND_ACT, kind[1] = TM_SCHED_RECV_GRAD;
        mb[0] = a.mb, mb[1] = a.mb2;
        return 2;
    case TM_SCHED_SEND_GRAD_RECV_ACT:
        kind[0] = TM_SCHED_SEND_GRAD, kind[1] = TM_SCHED_RECV_ACT;
        mb[0] = a.mb, mb[1] = a.mb2;
        return 2;
    case TM_SCHED_FWD:
    case TM_SCHED_BWD:
        return 0;
    default:
        kind[0] = a.kind, mb[0] = a.mb;
        return 1;
    }
}

/* Activations go up and gradients down, so a send of activations and a
 * receive of gradients talk to the next stage, the other two to the one
 * before. */
static int peer_dir(tm_sched_kind k)
{
    return k == TM_SCHED_SEND_ACT || k == TM_SCHED_RECV_GRAD ? 1 : -1;
}

static tm_sched_kind counterpart(tm_sched_kind k)
{
    switch (k) {
    case TM_SCHED_SEND_ACT: return TM_SCHED_RECV_ACT;
    case TM_SCHED_RECV_ACT: return TM_SCHED_SEND_ACT;
    case TM_SCHED_SEND_GRAD: return TM_SCHED_RECV_GRAD;
    default: return TM_SCHED_SEND_GRAD;
    }
}

/* ---------------------------------------------------------------- generation */

/* One forward or backward pass in a stage's compute order. */
typedef struct {
    int bwd;
    int mb;
} pass;

static int min_int(int a, int b) { return a < b ? a : b; }

/* Warm-up of w forwards, then forward/backward pairs, then the remaining
 * backwards: sequential (w = 0), gpipe (w = m) and 1f1b share this shape. */
static int passes_warmup(pass *out, int m, int w)
{
    int n = 0;
    for (int i = 0; i < w; i++) out[n++] = (pass){0, i};
    for (int i = 0; i < m - w; i++) {
        out[n++] = (pass){0, w + i};
        out[n++] = (pass){1, i};
    }
    for (int i = m - w; i < m; i++) out[n++] = (pass){1, i};
    return n;
}

/* Graphcore's interleaved step table: F(j) at step 2j+s, B(j) at 2j+2p-1-s,
 * merged by step (the two parities never collide). */
static int passes_interleaved(pass *out, int p, int m, int s)
{
    int n = 0, f = 0, b = 0;
    while (f < m || b < m) {
        if (b == m || (f < m && 2 * f + s < 2 * b + 2 * p - 1 - s))
            out[n++] = (pass){0, f++};
        else
            out[n++] = (pass){1, b++};
    }
    return n;
}

static int stage_passes(pass *out, tm_schedule_kind kind, int p, int m, int s)
{
    switch (kind) {
    case TM_SCHED_SEQUENTIAL: return passes_warmup(out, m, 0);
    case TM_SCHED_GPIPE: return passes_warmup(out, m, m);
    case TM_SCHED_1F1B: return passes_warmup(out, m, min_int(p - 1 - s, m));
    default: return passes_interleaved(out, p, m, s);
    }
}

/* Surrounds each pass with its messages — receive just before, send right
 * after — and fuses a send with the next receive when both go to the same
 * neighbour, which is exactly where two neighbours would otherwise send to
 * each other at once. */
static int expand(tm_sched_action *out, const pass *ps, int n, int p, int s)
{
    int k = 0;
    tm_sched_action pending = {0, -1, -1}; /* a send not yet written */
    for (int i = 0; i < n; i++) {
        int mb = ps[i].mb;
        int has_recv = ps[i].bwd ? s < p - 1 : s > 0;
        tm_sched_kind recv = ps[i].bwd ? TM_SCHED_RECV_GRAD : TM_SCHED_RECV_ACT;
        if (pending.mb >= 0 && has_recv && peer_dir(pending.kind) == peer_dir(recv)) {
            out[k++] = (tm_sched_action){pending.kind == TM_SCHED_SEND_ACT
                                             ? TM_SCHED_SEND_ACT_RECV_GRAD
                                             : TM_SCHED_SEND_GRAD_RECV_ACT,
                                         pending.mb, mb};
        } else {
            if (pending.mb >= 0) out[k++] = pending;
            if (has_recv) out[k++] = (tm_sched_action){recv, mb, 0};
        }
        pending.mb = -1;
        out[k++] = (tm_sched_action){ps[i].bwd ? TM_SCHED_BWD : TM_SCHED_FWD, mb, 0};
        if (ps[i].bwd ? s > 0 : s < p - 1)
            pending = (tm_sched_action){ps[i].bwd ? TM_SCHED_SEND_GRAD : TM_SCHED_SEND_ACT, mb, 0};
    }
    if (pending.mb >= 0) out[k++] = pending;
    return k;
}

/* One exchange with one neighbour: the send and / or the receive that are
 * due, fused when both are. */
static int exchange(tm_sched_action *out, int send, int recv, tm_sched_kind sk, int smb, int rmb)
{
    int up = sk == TM_SCHED_SEND_ACT;
    if (send && recv)
        out[0] = (tm_sched_action){up ? TM_SCHED_SEND_ACT_RECV_GRAD : TM_SCHED_SEND_GRAD_RECV_ACT,
                                   smb, rmb};
    else if (send)
        out[0] = (tm_sched_action){sk, smb, 0};
    else if (recv)
        out[0] = (tm_sched_action){up ? TM_SCHED_RECV_GRAD : TM_SCHED_RECV_ACT, rmb, 0};
    return send || recv;
}

/* Graphcore's grouped step table: in step k stage s runs F(k-s), then
 * B(k-2p+2+s). As on the IPU, what a step produces is exchanged at its end
 * and used in the next step: an activation one stage up, a gradient one
 * stage down. Stage s's exchange with s+1 at the end of step k is exactly
 * s+1's exchange with s, so the two are one rendezvous. Every stage trades
 * with the stage above first: the last stage has none, so the exchanges
 * resolve from the top down. Sending each message as soon as it is ready
 * instead would pair s's exchanges with two different steps of s+1 and make
 * every step end wait for the stage above's next one, along the pipeline:
 * 4 stages, 8 micro-batches, F = 1 and B = 2 took 69 time units, not 33. */
static int actions_grouped(tm_sched_action *out, int p, int m, int s)
{
    int n = 0;
    /* Step s-1 holds only the receive of stage s's first activation. */
    for (int k = s - 1; k <= m - 1 + 2 * p - 2 - s; k++) {
        int f = k - s, b = k - 2 * p + 2 + s;
        int has_f = f >= 0 && f < m, has_b = b >= 0 && b < m;
        if (has_f) out[n++] = (tm_sched_action){TM_SCHED_FWD, f, 0};
        if (has_b) out[n++] = (tm_sched_action){TM_SCHED_BWD, b, 0};
        n += exchange(out + n, has_f && s < p - 1, s < p - 1 && b + 1 >= 0 && b + 1 < m,
                      TM_SCHED_SEND_ACT, f, b + 1);
        n += exchange(out + n, has_b && s > 0, s > 0 && f + 1 < m, TM_SCHED_SEND_GRAD, b, f + 1);
    }
    return n;
}

int tm_schedule_make(tm_schedule *out, tm_schedule_kind kind, int pp, int m)
{
    memset(out, 0, sizeof *out);
    if ((unsigned)kind >= TM_SCHEDULE_KINDS)
        return tm_error(TM_EINVAL, "unknown schedule kind %d", (int)kind);
    if (pp < 1 || pp > TM_SCHEDULE_MAX_PP)
        return tm_error(TM_EINVAL, "pipeline stages %d outside 1..%d", pp, TM_SCHEDULE_MAX_PP);
    if (m < 1 || m > TM_SCHEDULE_MAX_MB)
        return tm_error(TM_EINVAL, "micro-batches %d outside 1..%d", m, TM_SCHEDULE_MAX_MB);
    if ((long)pp * m > TM_SCHEDULE_MAX_WORK)
        return tm_error(TM_EINVAL, "%d stages x %d micro-batches is more than %d", pp, m,
                        TM_SCHEDULE_MAX_WORK);
    out->kind = kind;
    out->pp = pp;
    out->m = m;
    out->len = calloc((size_t)pp, sizeof *out->len);
    out->actions = calloc((size_t)pp, sizeof *out->actions);
    pass *ps = malloc(2 * (size_t)m * sizeof *ps);
    if (out->len == NULL || out->actions == NULL || ps == NULL) goto nomem;
    for (int s = 0; s < pp; s++) {
        /* At most a receive, the pass and a send for each of the 2m passes. */
        out->actions[s] = malloc(6 * (size_t)m * sizeof **out->actions);
        if (out->actions[s] == NULL) goto nomem;
        if (kind == TM_SCHED_GROUPED) {
            out->len[s] = actions_grouped(out->actions[s], pp, m, s);
        } else {
            int n = stage_passes(ps, kind, pp, m, s);
            out->len[s] = expand(out->actions[s], ps, n, pp, s);
        }
    }
    free(ps);
    return TM_OK;
nomem:
    free(ps);
    tm_schedule_free(out);
    return tm_error(TM_EHOSTMEM, "no host memory for a %d-stage schedule of %d micro-batches",
                    pp, m);
}

void tm_schedule_free(tm_schedule *s)
{
    if (s == NULL) return;
    if (s->actions != NULL)
        for (int i = 0; i < s->pp; i++) free(s->actions[i]);
    free(s->actions);
    free(s->len);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- memory */

int tm_schedule_max_in_flight(const tm_schedule *s, int stage)
{
    if (s == NULL || stage < 0 || stage >= s->pp)
        return tm_error(TM_EINVAL, "stage %d outside the schedule", stage);
    int live = 0, peak = 0;
    for (int i = 0; i < s->len[stage]; i++) {
        tm_sched_kind k = s->actions[stage][i].kind;
        if (k == TM_SCHED_FWD && ++live > peak) peak = live;
        if (k == TM_SCHED_BWD && live > 0) live--;
    }
    return peak;
}

int tm_schedule_in_flight_bound(tm_schedule_kind kind, int pp, int m, int stage)
{
    if ((unsigned)kind >= TM_SCHEDULE_KINDS || pp < 1 || m < 1 || stage < 0 || stage >= pp)
        return tm_error(TM_EINVAL, "no bound for schedule %d, pp %d, m %d, stage %d", (int)kind,
                        pp, m, stage);
    switch (kind) {
    case TM_SCHED_SEQUENTIAL: return 1;
    case TM_SCHED_GPIPE: return m;
    case TM_SCHED_GROUPED: return min_int(2 * (pp - stage) - 1, m);
    default: return min_int(pp - stage, m);
    }
}

/* ---------------------------------------------------------------- engine */

/* Runs every stage's list with rendezvous messages. Each stage has a current
 * action and the time it arrived there; a compute action always completes, a
 * message half completes once the neighbour's current action holds the
 * counterpart half, both starting at the later arrival. Every time is then a
 * sum or maximum of earlier ones whatever order the stages are visited in,
 * so the result is exact and deterministic. */
typedef struct {
    const tm_schedule *s;
    const double *fwd, *bwd;
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
        if (a.kind == TM_SCHED_FWD || a.kind == TM_SCHED_BWD) {
            double d = e->fwd == NULL ? 1 : a.kind == TM_SCHED_FWD ? e->fwd[s] : e->bwd[s];
            emit(e, s, a.kind, a.mb, e->t[s], e->t[s] + d);
            e->t[s] += d;
            e->pc[s]++;
            continue;
        }
        tm_sched_kind hk[2], qk[2];
        int hm[2], qm[2];
        int nh = halves(a, hk, hm), all = 1;
        for (int h = 0; h < nh; h++) {
            if (e->done[2 * s + h]) continue;
            int q = s + peer_dir(hk[h]);
            if (e->pc[q] < S->len[q]) {
                int nq = halves(S->actions[q][e->pc[q]], qk, qm);
                for (int g = 0; g < nq; g++) {
                    if (e->done[2 * q + g] || qk[g] != counterpart(hk[h])) continue;
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
        int nh = halves(a, hk, hm);
        while (h < nh - 1 && e->done[2 * s + h]) h++;
        int q = s + peer_dir(hk[h]);
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
 * mean unit times; ev, n_ev and makespan may be NULL. */
static int run(const tm_schedule *s, const double *fwd, const double *bwd, double comm,
               tm_sched_event *ev, int *n_ev, double *makespan)
{
    size_t p = (size_t)s->pp;
    engine e = {.s = s, .fwd = fwd, .bwd = bwd, .comm = comm, .ev = ev};
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
            if ((unsigned)a.kind > TM_SCHED_SEND_GRAD_RECV_ACT)
                return tm_error(TM_EINVAL, "stage %d action %d: unknown action kind %d", st, i,
                                (int)a.kind);
            char name[64];
            tm_sched_action_format(name, sizeof name, a);
            if (a.mb < 0 || a.mb >= s->m || (is_combined(a.kind) && (a.mb2 < 0 || a.mb2 >= s->m)))
                return tm_error(TM_EINVAL, "stage %d action %d: %s names a micro-batch outside 0..%d",
                                st, i, name, s->m - 1);
            tm_sched_kind hk[2];
            int hm[2], nh = halves(a, hk, hm);
            for (int h = 0; h < nh; h++) {
                if (st + peer_dir(hk[h]) < 0)
                    return tm_error(TM_EINVAL,
                                    "stage %d action %d: %s on the first stage, which has no "
                                    "stage before it", st, i, name);
                if (st + peer_dir(hk[h]) >= s->pp)
                    return tm_error(TM_EINVAL,
                                    "stage %d action %d: %s on the last stage, which has no "
                                    "stage after it", st, i, name);
            }
        }
    return TM_OK;
}

/* FWD(i) and BWD(i) exactly once on every stage; cnt is scratch of 2m. */
static int check_passes(const tm_schedule *s, int *cnt)
{
    for (int st = 0; st < s->pp; st++) {
        memset(cnt, 0, 2 * (size_t)s->m * sizeof *cnt);
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            if (a.kind != TM_SCHED_FWD && a.kind != TM_SCHED_BWD) continue;
            if (++cnt[(a.kind == TM_SCHED_BWD) * s->m + a.mb] == 2)
                return tm_error(TM_EINVAL, "stage %d action %d: %s(%d) a second time", st, i,
                                tm_sched_kind_name(a.kind), a.mb);
        }
        for (int i = 0; i < 2 * s->m; i++)
            if (cnt[i] == 0)
                return tm_error(TM_EINVAL, "stage %d: %s(%d) missing", st,
                                i < s->m ? "FWD" : "BWD", i % s->m);
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
        int hm[2], nh = halves(s->actions[st][i], hk, hm);
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
    tm_sched_kind rk = counterpart(sk);
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

enum { P_RA, P_F, P_SA, P_RG, P_B, P_SG, P_N };

/* Each micro-batch's receive, pass and send in dependency order on every
 * stage; pos is scratch of P_N * m. Reports the earliest offending action. */
static int check_order(const tm_schedule *s, int *pos)
{
    static const tm_sched_kind pk[P_N] = {
        TM_SCHED_RECV_ACT, TM_SCHED_FWD, TM_SCHED_SEND_ACT,
        TM_SCHED_RECV_GRAD, TM_SCHED_BWD, TM_SCHED_SEND_GRAD,
    };
    /* (earlier, later, stage must have the neighbour in this direction) */
    static const int rule[5][3] = {
        {P_RA, P_F, -1}, {P_F, P_SA, 1}, {P_F, P_B, 0}, {P_RG, P_B, 1}, {P_B, P_SG, -1},
    };
    int m = s->m;
    for (int st = 0; st < s->pp; st++) {
        memset(pos, -1, (size_t)P_N * m * sizeof *pos);
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_action a = s->actions[st][i];
            tm_sched_kind hk[2];
            int hm[2], nh = halves(a, hk, hm);
            if (nh == 0) hk[0] = a.kind, hm[0] = a.mb, nh = 1;
            for (int h = 0; h < nh; h++)
                for (int k = 0; k < P_N; k++)
                    if (pk[k] == hk[h]) pos[k * m + hm[h]] = i;
        }
        int worst = -1, wr = 0, wmb = 0;
        for (int i = 0; i < m; i++)
            for (int r = 0; r < 5; r++) {
                int dir = rule[r][2];
                if ((dir < 0 && st == 0) || (dir > 0 && st == s->pp - 1)) continue;
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
    int *cnt = malloc((size_t)P_N * s->m * sizeof *cnt);
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
    if (st == TM_OK) st = run(s, NULL, NULL, 0, NULL, NULL, NULL);
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
    if (events != NULL) *events = NULL;
    if (events == NULL || n_events == NULL || makespan == NULL || fwd_time == NULL ||
        bwd_time == NULL)
        return tm_error(TM_EINVAL, "simulate needs times and somewhere to put the events");
    TM_CHECK(tm_schedule_validate(s));
    for (int i = 0; i < s->pp; i++)
        if (bad_time(fwd_time[i]) || bad_time(bwd_time[i]))
            return tm_error(TM_EINVAL, "stage %d: forward time %g / backward time %g is not a "
                            "finite time >= 0", i, fwd_time[i], bwd_time[i]);
    if (bad_time(comm_time))
        return tm_error(TM_EINVAL, "message time %g is not a finite time >= 0", comm_time);
    size_t n = 0;
    for (int st = 0; st < s->pp; st++)
        for (int i = 0; i < s->len[st]; i++) {
            tm_sched_kind hk[2];
            int hm[2], nh = halves(s->actions[st][i], hk, hm);
            n += nh ? (size_t)nh : 1;
        }
    tm_sched_event *ev = malloc(n * sizeof *ev);
    if (ev == NULL) return tm_error(TM_EHOSTMEM, "no host memory for %zu events", n);
    int st = run(s, fwd_time, bwd_time, comm_time, ev, n_events, makespan);
    if (st != TM_OK) {
        free(ev);
        return st;
    }
    qsort(ev, (size_t)*n_events, sizeof *ev, event_cmp);
    *events = ev;
    return TM_OK;
}
