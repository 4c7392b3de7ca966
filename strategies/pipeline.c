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
    mb_state *mb;
    int p, pp, in_flight, backwards, weights;
} run_state;

static size_t out_bytes(const tm_pipeline_step *ps)
{
    return (size_t)ps->rows * ps->stage->out_width * sizeof(float);
}

static size_t in_bytes(const tm_pipeline_step *ps)
{
    return (size_t)ps->rows * ps->stage->in_width * sizeof(float);
}

static int ensure_acts(run_state *r, int mb)
{
    if (r->mb[mb].acts.block != NULL) return TM_OK;
    TM_CHECK(tm_stage_acts_alloc(r->ps->stage, r->ps->rows, &r->mb[mb].acts));
    if (++r->in_flight > r->ps->max_in_flight) r->ps->max_in_flight = r->in_flight;
    return TM_OK;
}

static int ensure_dy(run_state *r, int mb)
{
    if (r->mb[mb].dy != NULL) return TM_OK;
    r->mb[mb].dy = tm_device_alloc(r->ps->stage->dev, out_bytes(r->ps), TM_TAG_ACTIVATION);
    return r->mb[mb].dy != NULL ? TM_OK : TM_ENOMEM;
}

static int forward(run_state *r, int mb)
{
    tm_pipeline_step *ps = r->ps;
    TM_CHECK(ensure_acts(r, mb));
    tm_clock_label(ps->stage->dev, 'F', r->p, mb);
    if (r->p == 0) TM_CHECK(ps->load_input(ps->ctx, mb, r->mb[mb].acts.input));
    return tm_stage_forward(ps->stage, &r->mb[mb].acts);
}

static int backward(run_state *r, int mb)
{
    tm_pipeline_step *ps = r->ps;
    mb_state *m = &r->mb[mb];
    tm_device *dev = ps->stage->dev;
    tm_clock_label(dev, 'B', r->p, mb);
    if (r->p == r->pp - 1) {
        TM_CHECK(ensure_dy(r, mb));
        TM_CHECK(ps->loss(ps->ctx, mb, m->acts.output, m->dy));
    }
    if (r->p > 0) {
        m->dx = tm_device_alloc(dev, in_bytes(ps), TM_TAG_ACTIVATION);
        if (m->dx == NULL) return TM_ENOMEM;
    }
    if (tm_schedule_splits_backward(ps->sched->kind)) {
        /* B only: the activations stay for W, with what W needs. */
        size_t wb = tm_stage_wsave_bytes(ps->stage, ps->rows);
        if (wb > 0 && (m->w = tm_device_alloc(dev, wb, TM_TAG_ACTIVATION)) == NULL)
            return TM_ENOMEM;
        TM_CHECK(tm_stage_backward_input(ps->stage, &m->acts, m->dy, m->dx, m->w));
    } else {
        int last = ++r->backwards == ps->sched->m;
        TM_CHECK(tm_stage_backward(ps->stage, &m->acts, m->dy, m->dx, last ? ps->ready : NULL,
                                   ps->ready_ctx));
        tm_stage_acts_free(ps->stage, &m->acts);
        r->in_flight--;
    }
    tm_device_free(dev, m->dy);
    m->dy = NULL;
    return TM_OK;
}

/* W: the parameter gradients; the step's last W makes the buckets final. */
static int weights(run_state *r, int mb)
{
    tm_pipeline_step *ps = r->ps;
    mb_state *m = &r->mb[mb];
    tm_clock_label(ps->stage->dev, 'W', r->p, mb);
    int last = ++r->weights == ps->sched->m;
    TM_CHECK(tm_stage_backward_weight(ps->stage, &m->acts, m->w, last ? ps->ready : NULL,
                                      ps->ready_ctx));
    tm_stage_acts_free(ps->stage, &m->acts);
    r->in_flight--;
    tm_device_free(ps->stage->dev, m->w);
    m->w = NULL;
    return TM_OK;
}

static int send_grad_done(run_state *r, int mb)
{
    tm_device_free(r->ps->stage->dev, r->mb[mb].dx);
    r->mb[mb].dx = NULL;
    return TM_OK;
}

static int act(run_state *r, const tm_sched_action *a)
{
    tm_pipeline_step *ps = r->ps;
    tm_comm *c = ps->pp_comm;
    mb_state *m = &r->mb[a->mb];
    switch (a->kind) {
    case TM_SCHED_FWD: return forward(r, a->mb);
    case TM_SCHED_BWD: return backward(r, a->mb);
    case TM_SCHED_WGT: return weights(r, a->mb);
    case TM_SCHED_SEND_ACT: return tm_send(c, m->acts.output, out_bytes(ps), r->p + 1);
    case TM_SCHED_RECV_ACT:
        TM_CHECK(ensure_acts(r, a->mb));
        return tm_recv(c, m->acts.input, in_bytes(ps), r->p - 1);
    case TM_SCHED_SEND_GRAD:
        TM_CHECK(tm_send(c, m->dx, in_bytes(ps), r->p - 1));
        return send_grad_done(r, a->mb);
    case TM_SCHED_RECV_GRAD:
        TM_CHECK(ensure_dy(r, a->mb));
        return tm_recv(c, m->dy, out_bytes(ps), r->p + 1);
    case TM_SCHED_SEND_ACT_RECV_GRAD:
        TM_CHECK(ensure_dy(r, a->mb2));
        return tm_sendrecv(c, m->acts.output, out_bytes(ps), r->p + 1, r->mb[a->mb2].dy,
                           out_bytes(ps), r->p + 1);
    case TM_SCHED_SEND_GRAD_RECV_ACT:
        TM_CHECK(ensure_acts(r, a->mb2));
        TM_CHECK(tm_sendrecv(c, m->dx, in_bytes(ps), r->p - 1, r->mb[a->mb2].acts.input,
                             in_bytes(ps), r->p - 1));
        return send_grad_done(r, a->mb);
    }
    return tm_error(TM_EINVAL, "unknown schedule action %d", (int)a->kind);
}

/* Frees whatever an interrupted run still holds. */
static void release(run_state *r)
{
    tm_device *dev = r->ps->stage->dev;
    for (int i = 0; i < r->ps->sched->m; i++) {
        if (r->mb[i].acts.block != NULL) tm_stage_acts_free(r->ps->stage, &r->mb[i].acts);
        tm_device_free(dev, r->mb[i].dy);
        tm_device_free(dev, r->mb[i].dx);
        tm_device_free(dev, r->mb[i].w);
    }
    free(r->mb);
}

int tm_pipeline_run(tm_pipeline_step *ps)
{
    if (ps->sched->v > 1)
        return tm_error(TM_EINVAL, "the pipeline executor runs one stage per device, not %d "
                        "virtual stages", ps->sched->v);
    run_state r = {ps, calloc((size_t)ps->sched->m, sizeof(mb_state)), tm_comm_rank(ps->pp_comm),
                   tm_comm_size(ps->pp_comm), 0, 0, 0};
    if (r.mb == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the pipeline state");
    ps->max_in_flight = 0;
    int st = TM_OK;
    const tm_sched_action *list = ps->sched->actions[r.p];
    for (int i = 0; st == TM_OK && i < ps->sched->len[r.p]; i++) st = act(&r, &list[i]);
    release(&r);
    return st;
}

/* tm_pipeline_run's allocations, replayed: what each action holds. */
typedef struct {
    char *acts, *dy, *dx, *w; /* (m) held */
    size_t held, peak;
    size_t a, o, i, wb;       /* a micro-batch's block, its output and input
                                 gradients, its W block (split backward) */
} replay;

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

int tm_pipeline_activation_peak(const tm_stage *s, const tm_schedule *sched, int p, int rows,
                                size_t *peak)
{
    int m = sched->m, pp = sched->pp;
    int split = tm_schedule_splits_backward(sched->kind);
    size_t wb = split ? tm_stage_wsave_bytes(s, rows) : 0;
    replay r = {calloc((size_t)m, 1), calloc((size_t)m, 1), calloc((size_t)m, 1),
                calloc((size_t)m, 1), 0, 0,
                tm_arena_block_bytes(tm_stage_acts_bytes(s, rows)),
                tm_arena_block_bytes((size_t)rows * s->out_width * sizeof(float)),
                tm_arena_block_bytes((size_t)rows * s->in_width * sizeof(float)),
                wb > 0 ? tm_arena_block_bytes(wb) : 0};
    size_t fwd = tm_stage_forward_bytes(s, rows), bwd = tm_stage_backward_bytes(s, rows);
    int st = r.acts != NULL && r.dy != NULL && r.dx != NULL && r.w != NULL
                 ? TM_OK : tm_error(TM_EHOSTMEM, "cannot allocate the memory replay");
    for (int k = 0; st == TM_OK && k < sched->len[p]; k++) {
        const tm_sched_action *a = &sched->actions[p][k];
        switch (a->kind) {
        case TM_SCHED_FWD:
            hold(&r, &r.acts[a->mb], r.a, 1);
            at_most(&r, fwd);
            break;
        case TM_SCHED_BWD:
            if (p == pp - 1) hold(&r, &r.dy[a->mb], r.o, 1);
            if (p > 0) hold(&r, &r.dx[a->mb], r.i, 1);
            if (split) hold(&r, &r.w[a->mb], r.wb, 1);
            at_most(&r, bwd);
            if (!split) hold(&r, &r.acts[a->mb], r.a, 0);
            hold(&r, &r.dy[a->mb], r.o, 0);
            break;
        case TM_SCHED_WGT:
            hold(&r, &r.acts[a->mb], r.a, 0);
            hold(&r, &r.w[a->mb], r.wb, 0);
            break;
        case TM_SCHED_SEND_ACT: break;
        case TM_SCHED_RECV_ACT: hold(&r, &r.acts[a->mb], r.a, 1); break;
        case TM_SCHED_SEND_GRAD: hold(&r, &r.dx[a->mb], r.i, 0); break;
        case TM_SCHED_RECV_GRAD: hold(&r, &r.dy[a->mb], r.o, 1); break;
        case TM_SCHED_SEND_ACT_RECV_GRAD: hold(&r, &r.dy[a->mb2], r.o, 1); break;
        case TM_SCHED_SEND_GRAD_RECV_ACT:
            hold(&r, &r.acts[a->mb2], r.a, 1);
            hold(&r, &r.dx[a->mb], r.i, 0);
            break;
        }
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
    int p = tm_comm_rank(ps->pp_comm), pp = tm_comm_size(ps->pp_comm), st = TM_OK;
    tm_stage_acts a;
    for (int mb = 0; st == TM_OK && mb < n_mb; mb++) {
        ps->rows = rows[mb];
        TM_CHECK(tm_stage_acts_alloc(ps->stage, ps->rows, &a));
        if (p == 0) st = ps->load_input(ps->ctx, mb, a.input);
        else st = tm_recv(ps->pp_comm, a.input, in_bytes(ps), p - 1);
        if (st == TM_OK) st = tm_stage_forward(ps->stage, &a);
        if (st == TM_OK && p < pp - 1) st = tm_send(ps->pp_comm, a.output, out_bytes(ps), p + 1);
        if (st == TM_OK && p == pp - 1) st = ps->loss(ps->ctx, mb, a.output, NULL);
        tm_stage_acts_free(ps->stage, &a);
    }
    return st;
}
