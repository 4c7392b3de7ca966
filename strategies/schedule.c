#include "strategies/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/schedule_internal.h"

static const char *const schedule_names[TM_SCHEDULE_KINDS] = {
    "sequential", "gpipe", "1f1b", "grouped", "interleaved", "zb-h1",
    "interleaved-1f1b", "zb-h2",
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
                    "unknown schedule \"%s\" (sequential, gpipe, 1f1b, grouped, interleaved, "
                    "zb-h1, interleaved-1f1b, zb-h2)",
                    name ? name : "(null)");
}

const char *tm_sched_kind_name(tm_sched_kind kind)
{
    static const char *const names[] = {
        "FWD",       "BWD",       "SEND_ACT",           "RECV_ACT",
        "SEND_GRAD", "RECV_GRAD", "SEND_ACT_RECV_GRAD", "SEND_GRAD_RECV_ACT",
        "WGT",
    };
    if ((unsigned)kind > TM_SCHED_WGT) return "?";
    return names[kind];
}

int tm__sched_is_combined(tm_sched_kind k)
{
    return k == TM_SCHED_SEND_ACT_RECV_GRAD || k == TM_SCHED_SEND_GRAD_RECV_ACT;
}

int tm_sched_action_format(char *buf, size_t n, tm_sched_action a)
{
    const char *name = tm_sched_kind_name(a.kind), *join = a.with_next ? "+" : "";
    char c[16] = "";
    if (a.chunk != 0) snprintf(c, sizeof c, "c%d", a.chunk);
    if (tm__sched_is_combined(a.kind))
        return snprintf(buf, n, "%s(%d%s,%d%s)%s", name, a.mb, c, a.mb2, c, join);
    return snprintf(buf, n, "%s(%d%s)%s", name, a.mb, c, join);
}

/* The message halves of an action as plain kinds with their micro-batches
 * and chunks; returns how many (0 for a compute action). */
int tm__sched_halves(tm_sched_action a, tm_sched_kind kind[2], int mb[2], int chunk[2])
{
    switch (a.kind) {
    case TM_SCHED_SEND_ACT_RECV_GRAD:
        kind[0] = TM_SCHED_SEND_ACT, kind[1] = TM_SCHED_RECV_GRAD;
        mb[0] = a.mb, mb[1] = a.mb2;
        chunk[0] = chunk[1] = a.chunk;
        return 2;
    case TM_SCHED_SEND_GRAD_RECV_ACT:
        kind[0] = TM_SCHED_SEND_GRAD, kind[1] = TM_SCHED_RECV_ACT;
        mb[0] = a.mb, mb[1] = a.mb2;
        chunk[0] = chunk[1] = a.chunk;
        return 2;
    case TM_SCHED_FWD:
    case TM_SCHED_BWD:
    case TM_SCHED_WGT:
        return 0;
    default:
        kind[0] = a.kind, mb[0] = a.mb, chunk[0] = a.chunk;
        return 1;
    }
}

int tm__sched_peer(int pp, int v, int stage, int chunk, tm_sched_kind k, int *peer,
                   int *peer_chunk)
{
    int g = chunk * pp + stage + tm__sched_peer_dir(k);
    if (g < 0 || g >= pp * v) return 0;
    *peer = g % pp;
    *peer_chunk = g / pp;
    return 1;
}

/* Activations go up and gradients down, so a send of activations and a
 * receive of gradients talk to the next stage, the other two to the one
 * before. */
int tm__sched_peer_dir(tm_sched_kind k)
{
    return k == TM_SCHED_SEND_ACT || k == TM_SCHED_RECV_GRAD ? 1 : -1;
}

tm_sched_kind tm__sched_counterpart(tm_sched_kind k)
{
    switch (k) {
    case TM_SCHED_SEND_ACT: return TM_SCHED_RECV_ACT;
    case TM_SCHED_RECV_ACT: return TM_SCHED_SEND_ACT;
    case TM_SCHED_SEND_GRAD: return TM_SCHED_RECV_GRAD;
    default: return TM_SCHED_SEND_GRAD;
    }
}

/* ---------------------------------------------------------------- generation */

int tm_schedule_splits_backward(tm_schedule_kind kind)
{
    return kind == TM_SCHED_ZB_H1 || kind == TM_SCHED_ZB_H2;
}

/* One pass in a stage's compute order. */
enum { PASS_F, PASS_B, PASS_W };
typedef struct {
    int bwd; /* PASS_F, PASS_B or PASS_W */
    int mb;
    int chunk;
} pass;

static int min_int(int a, int b) { return a < b ? a : b; }

/* Warm-up of w forwards, then forward/backward pairs, then the remaining
 * backwards: sequential (w = 0), gpipe (w = m) and 1f1b share this shape. */
static int passes_warmup(pass *out, int m, int w)
{
    int n = 0;
    for (int i = 0; i < w; i++) out[n++] = (pass){0, i, 0};
    for (int i = 0; i < m - w; i++) {
        out[n++] = (pass){0, w + i, 0};
        out[n++] = (pass){1, i, 0};
    }
    for (int i = m - w; i < m; i++) out[n++] = (pass){1, i, 0};
    return n;
}

/* Graphcore's interleaved step table: F(j) at step 2j+s, B(j) at 2j+2p-1-s,
 * merged by step (the two parities never collide). */
static int passes_interleaved(pass *out, int p, int m, int s)
{
    int n = 0, f = 0, b = 0;
    while (f < m || b < m) {
        if (b == m || (f < m && 2 * f + s < 2 * b + 2 * p - 1 - s))
            out[n++] = (pass){0, f++, 0};
        else
            out[n++] = (pass){1, b++, 0};
    }
    return n;
}

/* Zero bubble: a warm-up of w forwards, forward/backward pairs, the rest
 * of the backwards, each backward followed by the W of the micro-batch d
 * backwards before it (none while fewer than d + 1 have run), then the d
 * deferred W's. */
static int passes_zero_bubble(pass *out, int m, int w, int d)
{
    int n = 0, nb = 0, nw = 0;
    for (int i = 0; i < w; i++) out[n++] = (pass){PASS_F, i, 0};
    for (int i = 0; i < m; i++) {
        if (w + i < m) out[n++] = (pass){PASS_F, w + i, 0};
        out[n++] = (pass){PASS_B, nb++, 0};
        if (nb > d) out[n++] = (pass){PASS_W, nw++, 0};
    }
    while (nw < m) out[n++] = (pass){PASS_W, nw++, 0};
    return n;
}

/* zb-h2's warm-up on stage s: 2(p-1-s)+1 forwards. */
static int zb_h2_warmup(int p, int m, int s)
{
    return min_int(2 * (p - 1 - s) + 1, m);
}

/* The micro-batches a zb-h2 stage may hold (forward run, W not): 2p-1. */
static int zb_h2_bound(int p, int m)
{
    return min_int(2 * p - 1, m);
}

/* zb-h2's passes for every stage at once (stage s's 3m at ps + s * 3m,
 * each starting at time at[]): the stages run with unit times F = B = W =
 * 1 and free messages, in time steps. Stage s's forwards and backwards go
 * in a fixed order, a warm-up of w = zb_h2_warmup forwards, then B(i)
 * followed by F(w+i) while there are forwards; at each step a stage runs
 * the next of them if its input is there (and, for a forward, fewer than
 * zb_h2_bound micro-batches are held: their W not run), else its oldest W
 * not yet run, else it waits (never for ever: a stage at the bound has a
 * W to run, as its forwards lead its backwards by less than w). So the W's
 * fill exactly what would be idle, the tail's W's wait until the
 * backwards have gone down, and no stage holds more than the bound.
 * Returns the time the last pass ends, or -1 without host memory. */
static int passes_zb_h2(pass *ps, int *at, int p, int m)
{
    const int unset = -1;
    size_t pm = (size_t)p * m;
    int *fend = malloc(pm * sizeof *fend), *bend = malloc(pm * sizeof *bend);
    int *cnt = calloc(4 * (size_t)p, sizeof *cnt); /* per stage: F, B, W done, passes */
    int t = 0;
    if (fend == NULL || bend == NULL || cnt == NULL) t = -1;
    for (size_t i = 0; t == 0 && i < pm; i++) fend[i] = bend[i] = unset;
    for (int left = p; t >= 0 && left > 0; t++)
        for (int s = 0; s < p; s++) {
            int *nf = &cnt[4 * s], *nb = nf + 1, *nw = nf + 2, *n = nf + 3;
            if (*nw == m) continue;
            int w = zb_h2_warmup(p, m, s), fwd = *nf < m && *nf < w + *nb, ready;
            if (fwd) {
                int in = s == 0 ? 0 : fend[(size_t)(s - 1) * m + *nf];
                ready = in != unset && in <= t && *nf - *nw < zb_h2_bound(p, m);
            } else if (*nb < m) {
                int in = s == p - 1 ? fend[(size_t)s * m + *nb] : bend[(size_t)(s + 1) * m + *nb];
                ready = in != unset && in <= t;
            } else {
                ready = 0;
            }
            size_t k = (size_t)s * 3 * m + *n;
            if (ready && fwd) {
                fend[(size_t)s * m + *nf] = t + 1;
                ps[k] = (pass){PASS_F, (*nf)++, 0};
            } else if (ready) {
                bend[(size_t)s * m + *nb] = t + 1;
                ps[k] = (pass){PASS_B, (*nb)++, 0};
            } else if (*nw < *nb) {
                ps[k] = (pass){PASS_W, (*nw)++, 0};
                left -= *nw == m;
            } else {
                continue;
            }
            at[k] = t;
            (*n)++;
        }
    free(fend), free(bend), free(cnt);
    return t;
}

/* Device s's warm-up under interleaved-1f1b: Megatron's 2(p-1-s) + (v-1)p
 * forwards with v > 1; 1F1B's p-1-s with v = 1, so that it is 1F1B. */
static int interleaved_warmup(int p, int m, int v, int s)
{
    int w = v == 1 ? p - 1 - s : 2 * (p - 1 - s) + (v - 1) * p;
    return min_int(w, m * v);
}

/* The k-th of a device's m * v forwards (or backwards) under interleaved-
 * 1f1b, Megatron's order: micro-batches in groups of p, each group through
 * the chunks in turn (backwards: the last chunk first). */
static pass virtual_pass(int bwd, int k, int p, int v)
{
    int at = k % (p * v), chunk = at / p;
    return (pass){bwd, k / (p * v) * p + at % p, bwd ? v - 1 - chunk : chunk};
}

/* Warm-up of w forwards, then forward/backward pairs, then the rest of the
 * backwards, over the m * v passes in virtual_pass's order. */
static int passes_virtual(pass *out, int p, int m, int v, int s)
{
    int n = 0, mv = m * v, w = interleaved_warmup(p, m, v, s);
    for (int i = 0; i < w; i++) out[n++] = virtual_pass(0, i, p, v);
    for (int i = 0; i < mv - w; i++) {
        out[n++] = virtual_pass(0, w + i, p, v);
        out[n++] = virtual_pass(1, i, p, v);
    }
    for (int i = mv - w; i < mv; i++) out[n++] = virtual_pass(1, i, p, v);
    return n;
}

static int stage_passes(pass *out, tm_schedule_kind kind, int p, int m, int v, int s)
{
    switch (kind) {
    case TM_SCHED_SEQUENTIAL: return passes_warmup(out, m, 0);
    case TM_SCHED_GPIPE: return passes_warmup(out, m, m);
    case TM_SCHED_1F1B: return passes_warmup(out, m, min_int(p - 1 - s, m));
    case TM_SCHED_ZB_H1: return passes_zero_bubble(out, m, min_int(p - 1 - s, m), s);
    case TM_SCHED_INTERLEAVED_1F1B: return passes_virtual(out, p, m, v, s);
    default: return passes_interleaved(out, p, m, s);
    }
}

/* Surrounds each pass with its messages — receive just before, send right
 * after — and fuses a send with the next receive when both go to the same
 * neighbour, which is exactly where two neighbours would otherwise send to
 * each other at once. W passes have no message: they go after a send and
 * before the next receive, and before the combined exchange when the two
 * fuse (between them they would split the pair, and two neighbours could
 * each wait in its send). */
static int put_ws(tm_sched_action *out, const pass *ps, int w0, int nw)
{
    for (int j = 0; j < nw; j++)
        out[j] = (tm_sched_action){TM_SCHED_WGT, ps[w0 + j].mb, 0, 0, 0};
    return nw;
}

static int expand(tm_sched_action *out, const pass *ps, int n, int p, int s)
{
    int k = 0, w0 = 0, nw = 0; /* W passes held back: ps[w0 .. w0 + nw) */
    tm_sched_action pending = {0, -1, -1, 0, 0}; /* a send not yet written */
    for (int i = 0; i < n; i++) {
        int mb = ps[i].mb;
        if (ps[i].bwd == PASS_W) {
            if (pending.mb < 0) out[k++] = (tm_sched_action){TM_SCHED_WGT, mb, 0, 0, 0};
            else if (nw++ == 0) w0 = i;
            continue;
        }
        int has_recv = ps[i].bwd ? s < p - 1 : s > 0;
        tm_sched_kind recv = ps[i].bwd ? TM_SCHED_RECV_GRAD : TM_SCHED_RECV_ACT;
        if (pending.mb >= 0 && has_recv && tm__sched_peer_dir(pending.kind) == tm__sched_peer_dir(recv)) {
            k += put_ws(out + k, ps, w0, nw);
            out[k++] = (tm_sched_action){pending.kind == TM_SCHED_SEND_ACT
                                             ? TM_SCHED_SEND_ACT_RECV_GRAD
                                             : TM_SCHED_SEND_GRAD_RECV_ACT,
                                         pending.mb, mb, 0, 0};
        } else {
            if (pending.mb >= 0) out[k++] = pending;
            k += put_ws(out + k, ps, w0, nw);
            if (has_recv) out[k++] = (tm_sched_action){recv, mb, 0, 0, 0};
        }
        pending.mb = -1;
        nw = 0;
        out[k++] = (tm_sched_action){ps[i].bwd ? TM_SCHED_BWD : TM_SCHED_FWD, mb, 0, 0, 0};
        if (ps[i].bwd ? s > 0 : s < p - 1)
            pending = (tm_sched_action){ps[i].bwd ? TM_SCHED_SEND_GRAD : TM_SCHED_SEND_ACT, mb, 0, 0, 0};
    }
    if (pending.mb >= 0) out[k++] = pending;
    k += put_ws(out + k, ps, w0, nw);
    return k;
}

/* Appends the message of `kind` for pass `ps` to the exchange at out[*k] when
 * its model stage has that neighbour. */
static void join(tm_sched_action *out, int *k, tm_sched_kind kind, const pass *ps, int p, int v,
                 int s)
{
    int q, qc;
    if (ps == NULL || !tm__sched_peer(p, v, s, ps->chunk, kind, &q, &qc)) return;
    out[(*k)++] = (tm_sched_action){kind, ps->mb, 0, ps->chunk, 1};
}

/* Megatron's interleaved schedule as lists: the passes go in steps (a
 * warm-up forward, a steady forward and backward, a cool-down backward),
 * and after each step one exchange with both neighbours sends what the step
 * produced and receives what the next step needs, in the order activation
 * sent, gradient sent, activation received, gradient received (so that
 * with two devices, where one link carries both kinds, both ends agree). A
 * step's receives all come before it, so its forward may wait for the
 * gradient its backward needs, as in Megatron. */
static int actions_virtual(tm_sched_action *out, const pass *ps, int n, int p, int v, int s)
{
    /* ps: w warm-up forwards, then pairs, then w cool-down backwards. */
    int k = 0, w = interleaved_warmup(p, n / 2 / v, v, s);
    const pass *pf = NULL, *pb = NULL; /* the step before */
    for (int i = 0;;) {
        const pass *f = NULL, *b = NULL;
        int len = i >= w && i < n - w ? 2 : 1;
        for (int j = i; j < i + len && j < n; j++) *(ps[j].bwd ? &b : &f) = &ps[j];
        int k0 = k;
        join(out, &k, TM_SCHED_SEND_ACT, pf, p, v, s);
        join(out, &k, TM_SCHED_SEND_GRAD, pb, p, v, s);
        join(out, &k, TM_SCHED_RECV_ACT, f, p, v, s);
        join(out, &k, TM_SCHED_RECV_GRAD, b, p, v, s);
        if (k > k0) out[k - 1].with_next = 0;
        if (i >= n) return k;
        if (f != NULL) out[k++] = (tm_sched_action){TM_SCHED_FWD, f->mb, 0, f->chunk, 0};
        if (b != NULL) out[k++] = (tm_sched_action){TM_SCHED_BWD, b->mb, 0, b->chunk, 0};
        pf = f, pb = b;
        i += len;
    }
}

/* One exchange with one neighbour: the send and / or the receive that are
 * due, fused when both are. */
static int exchange(tm_sched_action *out, int send, int recv, tm_sched_kind sk, int smb, int rmb)
{
    int up = sk == TM_SCHED_SEND_ACT;
    if (send && recv)
        out[0] = (tm_sched_action){up ? TM_SCHED_SEND_ACT_RECV_GRAD : TM_SCHED_SEND_GRAD_RECV_ACT,
                                   smb, rmb, 0, 0};
    else if (send)
        out[0] = (tm_sched_action){sk, smb, 0, 0, 0};
    else if (recv)
        out[0] = (tm_sched_action){up ? TM_SCHED_RECV_GRAD : TM_SCHED_RECV_ACT, rmb, 0, 0, 0};
    return send || recv;
}

/* zb-h2 as lists. Its warm-ups are deeper than the stage above's, so a
 * message sent as soon as its pass ends would wait, with rendezvous
 * messages, until the stage above reached it, holding up the forwards
 * behind it. Instead each message goes at the time step (of passes_zb_h2)
 * its receiver's pass starts, on both stages: at each step a stage makes
 * its exchange with the stage above (activation sent, gradient received),
 * then the one with the stage below (gradient sent, activation received),
 * then starts its pass. The last stage has no stage above, so each step's
 * exchanges resolve from the top down, whatever the times. */
static int make_zb_h2(tm_schedule *out)
{
    int p = out->pp, m = out->m, *grid = NULL;
    pass *ps = malloc(3 * (size_t)p * m * sizeof *ps);
    int *at = malloc(3 * (size_t)p * m * sizeof *at);
    int T = ps != NULL && at != NULL ? passes_zb_h2(ps, at, p, m) : -1;
    if (T > 0) grid = malloc((size_t)p * T * sizeof *grid); /* stage's pass at each step */
    if (grid == NULL) {
        free(ps), free(at);
        return -1;
    }
    for (size_t i = 0; i < (size_t)p * T; i++) grid[i] = -1;
    for (size_t k = 0; k < 3 * (size_t)p * m; k++) grid[k / (3 * (size_t)m) * T + at[k]] = (int)k;
    for (int s = 0; s < p; s++) {
        tm_sched_action *o = out->actions[s];
        int n = 0;
        for (int t = 0; t < T; t++) {
            const pass *up = s < p - 1 && grid[(size_t)(s + 1) * T + t] >= 0
                                 ? &ps[grid[(size_t)(s + 1) * T + t]] : NULL;
            const pass *dn = s > 0 && grid[(size_t)(s - 1) * T + t] >= 0
                                 ? &ps[grid[(size_t)(s - 1) * T + t]] : NULL;
            const pass *me = grid[(size_t)s * T + t] >= 0 ? &ps[grid[(size_t)s * T + t]] : NULL;
            int me_f = me != NULL && me->bwd == PASS_F, me_b = me != NULL && me->bwd == PASS_B;
            n += exchange(o + n, up != NULL && up->bwd == PASS_F, s < p - 1 && me_b,
                          TM_SCHED_SEND_ACT, up ? up->mb : 0, me ? me->mb : 0);
            n += exchange(o + n, dn != NULL && dn->bwd == PASS_B, s > 0 && me_f,
                          TM_SCHED_SEND_GRAD, dn ? dn->mb : 0, me ? me->mb : 0);
            if (me != NULL)
                o[n++] = (tm_sched_action){me_f ? TM_SCHED_FWD : me_b ? TM_SCHED_BWD
                                                                      : TM_SCHED_WGT,
                                           me->mb, 0, 0, 0};
        }
        out->len[s] = n;
    }
    free(ps), free(at), free(grid);
    return 0;
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
        if (has_f) out[n++] = (tm_sched_action){TM_SCHED_FWD, f, 0, 0, 0};
        if (has_b) out[n++] = (tm_sched_action){TM_SCHED_BWD, b, 0, 0, 0};
        n += exchange(out + n, has_f && s < p - 1, s < p - 1 && b + 1 >= 0 && b + 1 < m,
                      TM_SCHED_SEND_ACT, f, b + 1);
        n += exchange(out + n, has_b && s > 0, s > 0 && f + 1 < m, TM_SCHED_SEND_GRAD, b, f + 1);
    }
    return n;
}

int tm_schedule_make(tm_schedule *out, tm_schedule_kind kind, int pp, int m)
{
    return tm_schedule_make_virtual(out, kind, pp, m, 1);
}

int tm_schedule_make_virtual(tm_schedule *out, tm_schedule_kind kind, int pp, int m, int v)
{
    memset(out, 0, sizeof *out);
    if ((unsigned)kind >= TM_SCHEDULE_KINDS)
        return tm_error(TM_EINVAL, "unknown schedule kind %d", (int)kind);
    if (pp < 1 || pp > TM_SCHEDULE_MAX_PP)
        return tm_error(TM_EINVAL, "pipeline stages %d outside 1..%d", pp, TM_SCHEDULE_MAX_PP);
    if (m < 1 || m > TM_SCHEDULE_MAX_MB)
        return tm_error(TM_EINVAL, "micro-batches %d outside 1..%d", m, TM_SCHEDULE_MAX_MB);
    if (v < 1 || v > TM_SCHEDULE_MAX_VIRTUAL)
        return tm_error(TM_EINVAL, "virtual stages %d outside 1..%d", v, TM_SCHEDULE_MAX_VIRTUAL);
    if (v > 1 && kind != TM_SCHED_INTERLEAVED_1F1B)
        return tm_error(TM_EINVAL, "virtual stages (%d) need the interleaved-1f1b schedule, not %s",
                        v, tm_schedule_kind_name(kind));
    if (v > 1 && pp < 2)
        return tm_error(TM_EINVAL, "virtual stages (%d) need at least 2 pipeline stages", v);
    if (v > 1 && m % pp != 0)
        return tm_error(TM_EINVAL,
                        "interleaved-1f1b with %d virtual stages needs the micro-batches (%d) to "
                        "be a multiple of the pipeline stages (%d)", v, m, pp);
    if ((long)pp * m * v > TM_SCHEDULE_MAX_WORK)
        return tm_error(TM_EINVAL, "%d stages x %d micro-batches x %d virtual stages is more than %d",
                        pp, m, v, TM_SCHEDULE_MAX_WORK);
    out->kind = kind;
    out->pp = pp;
    out->m = m;
    out->v = v;
    out->len = calloc((size_t)pp, sizeof *out->len);
    out->actions = calloc((size_t)pp, sizeof *out->actions);
    pass *ps = malloc(3 * (size_t)m * v * sizeof *ps);
    if (out->len == NULL || out->actions == NULL || ps == NULL) goto nomem;
    for (int s = 0; s < pp; s++) {
        /* At most a receive, the pass and a send for each of the 2mv passes
         * F and B, and m W's. */
        out->actions[s] = malloc(7 * (size_t)m * v * sizeof **out->actions);
        if (out->actions[s] == NULL) goto nomem;
        if (kind == TM_SCHED_ZB_H2) {
            if (s == pp - 1 && make_zb_h2(out) != 0) goto nomem;
        } else if (kind == TM_SCHED_GROUPED) {
            out->len[s] = actions_grouped(out->actions[s], pp, m, s);
        } else {
            int n = stage_passes(ps, kind, pp, m, v, s);
            out->len[s] = v > 1 ? actions_virtual(out->actions[s], ps, n, pp, v, s)
                                : expand(out->actions[s], ps, n, pp, s);
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
    /* A micro-batch is held until its W when the backward is split. */
    tm_sched_kind last = tm_schedule_splits_backward(s->kind) ? TM_SCHED_WGT : TM_SCHED_BWD;
    int live = 0, peak = 0;
    for (int i = 0; i < s->len[stage]; i++) {
        tm_sched_kind k = s->actions[stage][i].kind;
        if (k == TM_SCHED_FWD && ++live > peak) peak = live;
        if (k == last && live > 0) live--;
    }
    return peak;
}

int tm_schedule_in_flight_bound(tm_schedule_kind kind, int pp, int m, int stage)
{
    return tm_schedule_in_flight_bound_virtual(kind, pp, m, 1, stage);
}

int tm_schedule_in_flight_bound_virtual(tm_schedule_kind kind, int pp, int m, int v, int stage)
{
    if ((unsigned)kind >= TM_SCHEDULE_KINDS || pp < 1 || m < 1 || stage < 0 || stage >= pp ||
        v < 1 || (v > 1 && kind != TM_SCHED_INTERLEAVED_1F1B))
        return tm_error(TM_EINVAL, "no bound for schedule %d, pp %d, m %d, v %d, stage %d",
                        (int)kind, pp, m, v, stage);
    switch (kind) {
    case TM_SCHED_SEQUENTIAL: return 1;
    case TM_SCHED_GPIPE: return m;
    case TM_SCHED_GROUPED: return min_int(2 * (pp - stage) - 1, m);
    case TM_SCHED_ZB_H1: return min_int(pp, m);
    case TM_SCHED_ZB_H2: return zb_h2_bound(pp, m);
    case TM_SCHED_INTERLEAVED_1F1B:
        return min_int(interleaved_warmup(pp, m, v, stage) + 1, m * v);
    default: return min_int(pp - stage, m);
    }
}
