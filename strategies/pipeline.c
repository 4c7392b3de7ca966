#include "strategies/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "runtime/status.h"

/* Per micro-batch state between its actions. */
typedef struct {
    tm_stage_acts acts; /* from RECV_ACT / FWD until BWD (WGT when split) */
    float *dy;          /* gradient of the stage output: received or the loss's */
    float *dx;          /* gradient of the stage input, until SEND_GRAD */
    float *w;           /* split backward: what W needs, from BWD until WGT */
} mb_state;

typedef struct {
    tm_pipeline_step *ps;
    mb_state *mb;       /* (v, m): chunk c's micro-batch i at c * m + i */
    int p, pp, v, in_flight;
    int backwards[TM_SCHEDULE_MAX_VIRTUAL], weights[TM_SCHEDULE_MAX_VIRTUAL]; /* per chunk */
} run_state;

static int chunks_of(const tm_schedule *s) { return s->v > 1 ? s->v : 1; }

static size_t out_bytes(const tm_pipeline_step *ps, int c)
{
    return (size_t)ps->rows * ps->stage[c].out_width * sizeof(float);
}

static size_t in_bytes(const tm_pipeline_step *ps, int c)
{
    return (size_t)ps->rows * ps->stage[c].in_width * sizeof(float);
}

/* The model stage of chunk c: c * pp + p. */
static int model_stage(const run_state *r, int c) { return c * r->pp + r->p; }

static int is_first(const run_state *r, int c) { return model_stage(r, c) == 0; }

static int is_last(const run_state *r, int c) { return model_stage(r, c) == r->pp * r->v - 1; }

static mb_state *state_of(run_state *r, int c, int mb) { return &r->mb[c * r->ps->sched->m + mb]; }

static int ensure_acts(run_state *r, int c, int mb)
{
    mb_state *m = state_of(r, c, mb);
    if (m->acts.block != NULL) return TM_OK;
    TM_CHECK(tm_stage_acts_alloc(&r->ps->stage[c], r->ps->rows, &m->acts));
    if (++r->in_flight > r->ps->max_in_flight) r->ps->max_in_flight = r->in_flight;
    return TM_OK;
}

static int ensure_dy(run_state *r, int c, int mb)
{
    mb_state *m = state_of(r, c, mb);
    if (m->dy != NULL) return TM_OK;
    m->dy = tm_device_alloc(r->ps->stage[c].dev, out_bytes(r->ps, c), TM_TAG_ACTIVATION);
    return m->dy != NULL ? TM_OK : TM_ENOMEM;
}

static int forward(run_state *r, int c, int mb)
{
    tm_pipeline_step *ps = r->ps;
    TM_CHECK(ensure_acts(r, c, mb));
    mb_state *m = state_of(r, c, mb);
    tm_clock_label(ps->stage[c].dev, 'F', model_stage(r, c), mb);
    if (is_first(r, c)) TM_CHECK(ps->load_input(ps->ctx, mb, m->acts.input));
    return tm_stage_forward(&ps->stage[c], &m->acts);
}

static int backward(run_state *r, int c, int mb)
{
    tm_pipeline_step *ps = r->ps;
    mb_state *m = state_of(r, c, mb);
    tm_stage *s = &ps->stage[c];
    tm_device *dev = s->dev;
    tm_clock_label(dev, 'B', model_stage(r, c), mb);
    if (is_last(r, c)) {
        TM_CHECK(ensure_dy(r, c, mb));
        TM_CHECK(ps->loss(ps->ctx, mb, m->acts.output, m->dy));
    }
    if (!is_first(r, c)) {
        m->dx = tm_device_alloc(dev, in_bytes(ps, c), TM_TAG_ACTIVATION);
        if (m->dx == NULL) return TM_ENOMEM;
    }
    if (tm_schedule_splits_backward(ps->sched->kind)) {
        /* B only: the activations stay for W, with what W needs. */
        size_t wb = tm_stage_wsave_bytes(s, ps->rows);
        if (wb > 0 && (m->w = tm_device_alloc(dev, wb, TM_TAG_ACTIVATION)) == NULL)
            return TM_ENOMEM;
        TM_CHECK(tm_stage_backward_input(s, &m->acts, m->dy, m->dx, m->w));
    } else {
        int last = ++r->backwards[c] == ps->sched->m;
        TM_CHECK(tm_stage_backward(s, &m->acts, m->dy, m->dx, last ? ps->ready : NULL,
                                   ps->ready_ctx[c]));
        tm_stage_acts_free(s, &m->acts);
        r->in_flight--;
    }
    tm_device_free(dev, m->dy);
    m->dy = NULL;
    return TM_OK;
}

/* W: the parameter gradients; the chunk's last W makes its buckets final. */
static int weights(run_state *r, int c, int mb)
{
    tm_pipeline_step *ps = r->ps;
    mb_state *m = state_of(r, c, mb);
    tm_stage *s = &ps->stage[c];
    tm_clock_label(s->dev, 'W', model_stage(r, c), mb);
    int last = ++r->weights[c] == ps->sched->m;
    TM_CHECK(tm_stage_backward_weight(s, &m->acts, m->w, last ? ps->ready : NULL,
                                      ps->ready_ctx[c]));
    tm_stage_acts_free(s, &m->acts);
    r->in_flight--;
    tm_device_free(s->dev, m->w);
    m->w = NULL;
    return TM_OK;
}

static int send_grad_done(run_state *r, int c, int mb)
{
    mb_state *m = state_of(r, c, mb);
    tm_device_free(r->ps->stage[c].dev, m->dx);
    m->dx = NULL;
    return TM_OK;
}

/* The devices of the model stages after and before this one: the ring's
 * neighbours (with v = 1 never past either end). */
static int next_of(const run_state *r) { return (r->p + 1) % r->pp; }

static int prev_of(const run_state *r) { return (r->p + r->pp - 1) % r->pp; }

static int act(run_state *r, const tm_sched_action *a)
{
    tm_pipeline_step *ps = r->ps;
    tm_comm *comm = ps->pp_comm;
    int c = a->chunk;
    mb_state *m = state_of(r, c, a->mb);
    switch (a->kind) {
    case TM_SCHED_FWD: return forward(r, c, a->mb);
    case TM_SCHED_BWD: return backward(r, c, a->mb);
    case TM_SCHED_WGT: return weights(r, c, a->mb);
    case TM_SCHED_SEND_ACT: return tm_send(comm, m->acts.output, out_bytes(ps, c), next_of(r));
    case TM_SCHED_RECV_ACT:
        TM_CHECK(ensure_acts(r, c, a->mb));
        return tm_recv(comm, m->acts.input, in_bytes(ps, c), prev_of(r));
    case TM_SCHED_SEND_GRAD:
        TM_CHECK(tm_send(comm, m->dx, in_bytes(ps, c), prev_of(r)));
        return send_grad_done(r, c, a->mb);
    case TM_SCHED_RECV_GRAD:
        TM_CHECK(ensure_dy(r, c, a->mb));
        return tm_recv(comm, m->dy, out_bytes(ps, c), next_of(r));
    case TM_SCHED_SEND_ACT_RECV_GRAD:
        TM_CHECK(ensure_dy(r, c, a->mb2));
        return tm_sendrecv(comm, m->acts.output, out_bytes(ps, c), next_of(r),
                           state_of(r, c, a->mb2)->dy, out_bytes(ps, c), next_of(r));
    case TM_SCHED_SEND_GRAD_RECV_ACT:
        TM_CHECK(ensure_acts(r, c, a->mb2));
        TM_CHECK(tm_sendrecv(comm, m->dx, in_bytes(ps, c), prev_of(r),
                             state_of(r, c, a->mb2)->acts.input, in_bytes(ps, c), prev_of(r)));
        return send_grad_done(r, c, a->mb);
    }
    return tm_error(TM_EINVAL, "unknown schedule action %d", (int)a->kind);
}

/* A run of joined message actions (with_next) as one exchange: the
 * receives' buffers first, then every half at once, then the sent input
 * gradients freed. */
static int exchange(run_state *r, const tm_sched_action *a, int n)
{
    tm_pipeline_step *ps = r->ps;
    tm_p2p send[TM_EXCHANGE_MAX], recv[TM_EXCHANGE_MAX];
    int n_send = 0, n_recv = 0;
    /* Each action sends at most once and receives at most once. */
    if (n > TM_EXCHANGE_MAX)
        return tm_error(TM_EINVAL, "%d joined message actions, more than an exchange's %d", n,
                        TM_EXCHANGE_MAX);
    for (int k = 0; k < n; k++) {
        int c = a[k].chunk, kind = a[k].kind;
        mb_state *m = state_of(r, c, a[k].mb);
        int combined = kind == TM_SCHED_SEND_ACT_RECV_GRAD || kind == TM_SCHED_SEND_GRAD_RECV_ACT;
        int rmb = combined ? a[k].mb2 : a[k].mb;
        if (kind == TM_SCHED_SEND_ACT || kind == TM_SCHED_SEND_ACT_RECV_GRAD)
            send[n_send++] = (tm_p2p){m->acts.output, out_bytes(ps, c), next_of(r)};
        if (kind == TM_SCHED_SEND_GRAD || kind == TM_SCHED_SEND_GRAD_RECV_ACT)
            send[n_send++] = (tm_p2p){m->dx, in_bytes(ps, c), prev_of(r)};
        if (kind == TM_SCHED_RECV_ACT || kind == TM_SCHED_SEND_GRAD_RECV_ACT) {
            TM_CHECK(ensure_acts(r, c, rmb));
            recv[n_recv++] = (tm_p2p){state_of(r, c, rmb)->acts.input, in_bytes(ps, c),
                                      prev_of(r)};
        }
        if (kind == TM_SCHED_RECV_GRAD || kind == TM_SCHED_SEND_ACT_RECV_GRAD) {
            TM_CHECK(ensure_dy(r, c, rmb));
            recv[n_recv++] = (tm_p2p){state_of(r, c, rmb)->dy, out_bytes(ps, c), next_of(r)};
        }
    }
    TM_CHECK(tm_exchange(ps->pp_comm, send, n_send, recv, n_recv));
    for (int k = 0; k < n; k++)
        if (a[k].kind == TM_SCHED_SEND_GRAD || a[k].kind == TM_SCHED_SEND_GRAD_RECV_ACT)
            send_grad_done(r, a[k].chunk, a[k].mb);
    return TM_OK;
}

/* Frees whatever an interrupted run still holds. */
static void release(run_state *r)
{
    for (int c = 0; c < r->v; c++) {
        tm_stage *s = &r->ps->stage[c];
        for (int i = 0; i < r->ps->sched->m; i++) {
            mb_state *m = state_of(r, c, i);
            if (m->acts.block != NULL) tm_stage_acts_free(s, &m->acts);
            tm_device_free(s->dev, m->dy);
            tm_device_free(s->dev, m->dx);
            tm_device_free(s->dev, m->w);
        }
    }
    free(r->mb);
}

int tm_pipeline_run(tm_pipeline_step *ps)
{
    int v = chunks_of(ps->sched);
    run_state r = {ps, calloc((size_t)ps->sched->m * (size_t)v, sizeof(mb_state)),
                   tm_comm_rank(ps->pp_comm), tm_comm_size(ps->pp_comm), v, 0, {0}, {0}};
    if (r.mb == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the pipeline state");
    ps->max_in_flight = 0;
    int st = TM_OK;
    const tm_sched_action *list = ps->sched->actions[r.p];
    for (int i = 0, n; st == TM_OK && i < ps->sched->len[r.p]; i += n) {
        for (n = 1; list[i + n - 1].with_next && i + n < ps->sched->len[r.p]; n++) {}
        st = n > 1 ? exchange(&r, &list[i], n) : act(&r, &list[i]);
    }
    release(&r);
    return st;
}

/* tm_pipeline_run's allocations, replayed: what each action holds. */
typedef struct {
    char *acts, *dy, *dx, *w; /* (v, m) held */
    size_t held, peak;
    int m;
} replay;

/* Chunk c's sizes: a micro-batch's block, its output and input gradients,
 * its W block (split backward), its forward's and backward's transients. */
typedef struct {
    size_t a, o, i, wb, fwd, bwd;
} chunk_sizes;

static void hold(replay *r, char *flag, size_t bytes, int on)
{
    if (*flag == on) return;
    *flag = (char)on;
    r->held = on ? r->held + bytes : r->held - bytes;
    if (r->held > r->peak) r->peak = r->held;
}

static void at_most(replay *r, size_t transient)
{
    if (r->held + transient > r->peak) r->peak = r->held + transient;
}

/* A message action's receive half: its buffer, taken before the exchange. */
static void take(replay *r, const tm_sched_action *b, const chunk_sizes *z)
{
    int i = b->chunk * r->m + b->mb, j = b->chunk * r->m + b->mb2;
    switch (b->kind) {
    case TM_SCHED_RECV_ACT: hold(r, &r->acts[i], z->a, 1); break;
    case TM_SCHED_RECV_GRAD: hold(r, &r->dy[i], z->o, 1); break;
    case TM_SCHED_SEND_ACT_RECV_GRAD: hold(r, &r->dy[j], z->o, 1); break;
    case TM_SCHED_SEND_GRAD_RECV_ACT: hold(r, &r->acts[j], z->a, 1); break;
    default: break;
    }
}

/* Its send half: a sent input gradient is freed after the exchange. */
static void give_back(replay *r, const tm_sched_action *b, const chunk_sizes *z)
{
    if (b->kind == TM_SCHED_SEND_GRAD || b->kind == TM_SCHED_SEND_GRAD_RECV_ACT)
        hold(r, &r->dx[b->chunk * r->m + b->mb], z->i, 0);
}

int tm_pipeline_activation_peak(const tm_stage *s, const tm_schedule *sched, int p, int rows,
                                size_t *peak)
{
    int m = sched->m, pp = sched->pp, v = chunks_of(sched);
    int split = tm_schedule_splits_backward(sched->kind);
    size_t n = (size_t)m * (size_t)v;
    chunk_sizes z[TM_SCHEDULE_MAX_VIRTUAL];
    for (int c = 0; c < v; c++) {
        size_t wb = split ? tm_stage_wsave_bytes(&s[c], rows) : 0;
        z[c] = (chunk_sizes){tm_arena_block_bytes(tm_stage_acts_bytes(&s[c], rows)),
                             tm_arena_block_bytes((size_t)rows * s[c].out_width * sizeof(float)),
                             tm_arena_block_bytes((size_t)rows * s[c].in_width * sizeof(float)),
                             wb > 0 ? tm_arena_block_bytes(wb) : 0,
                             tm_stage_forward_bytes(&s[c], rows),
                             tm_stage_backward_bytes(&s[c], rows)};
    }
    replay r = {calloc(n, 1), calloc(n, 1), calloc(n, 1), calloc(n, 1), 0, 0, m};
    int st = r.acts != NULL && r.dy != NULL && r.dx != NULL && r.w != NULL
                 ? TM_OK : tm_error(TM_EHOSTMEM, "cannot allocate the memory replay");
    /* A run of joined messages is one exchange: every receive's buffer is
     * taken before any sent gradient is freed (as exchange() does). */
    for (int k = 0, k0 = 0; st == TM_OK && k < sched->len[p]; k++) {
        const tm_sched_action *a = &sched->actions[p][k];
        int c = a->chunk, g = c * pp + p, i = c * m + a->mb;
        const chunk_sizes *zc = &z[c];
        switch (a->kind) {
        case TM_SCHED_FWD:
            hold(&r, &r.acts[i], zc->a, 1);
            at_most(&r, zc->fwd);
            break;
        case TM_SCHED_BWD:
            if (g == pp * v - 1) hold(&r, &r.dy[i], zc->o, 1);
            if (g > 0) hold(&r, &r.dx[i], zc->i, 1);
            if (split) hold(&r, &r.w[i], zc->wb, 1);
            at_most(&r, zc->bwd);
            if (!split) hold(&r, &r.acts[i], zc->a, 0);
            hold(&r, &r.dy[i], zc->o, 0);
            break;
        case TM_SCHED_WGT:
            hold(&r, &r.acts[i], zc->a, 0);
            hold(&r, &r.w[i], zc->wb, 0);
            break;
        default:
            if (a->with_next) continue; /* the run goes on */
            for (int q = k0; q <= k; q++) {
                const tm_sched_action *b = &sched->actions[p][q];
                take(&r, b, &z[b->chunk]);
            }
            for (int q = k0; q <= k; q++) {
                const tm_sched_action *b = &sched->actions[p][q];
                give_back(&r, b, &z[b->chunk]);
            }
            break;
        }
        k0 = k + 1;
    }
    free(r.acts);
    free(r.dy);
    free(r.dx);
    free(r.w);
    *peak = r.peak;
    return st;
}

int tm_pipeline_infer(tm_pipeline_step *ps, int n_mb, const int *rows)
{
    int p = tm_comm_rank(ps->pp_comm), pp = tm_comm_size(ps->pp_comm), v = chunks_of(ps->sched);
    int st = TM_OK;
    tm_stage_acts a;
    /* One micro-batch through every chunk before the next: with v > 1 a
     * wave of them round the ring could fill it and wait on itself. */
    for (int mb = 0; st == TM_OK && mb < n_mb; mb++)
        for (int c = 0; st == TM_OK && c < v; c++) {
            int g = c * pp + p;
            tm_stage *s = &ps->stage[c];
            ps->rows = rows[mb];
            TM_CHECK(tm_stage_acts_alloc(s, ps->rows, &a));
            if (g == 0) st = ps->load_input(ps->ctx, mb, a.input);
            else st = tm_recv(ps->pp_comm, a.input, in_bytes(ps, c), (p + pp - 1) % pp);
            if (st == TM_OK) st = tm_stage_forward(s, &a);
            if (st == TM_OK && g < pp * v - 1)
                st = tm_send(ps->pp_comm, a.output, out_bytes(ps, c), (p + 1) % pp);
            if (st == TM_OK && g == pp * v - 1) st = ps->loss(ps->ctx, mb, a.output, NULL);
            tm_stage_acts_free(s, &a);
        }
    return st;
}
