/* A training run's accounts: the traffic formulas of a step (before the
 * run), and after it what the recorded events say (the first recorded
 * step's pipeline timeline and each device's traffic in that step by mesh
 * dimension) and the run's modeled figures. */
#include <stdlib.h>
#include <string.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#include "strategies/trainer_internal.h"

static int dim_of(const char *comm)
{
    if (strcmp(comm, "dp") == 0) return TM_DIM_DP;
    if (strcmp(comm, "pp") == 0 || strcmp(comm, "emb") == 0) return TM_DIM_PP;
    if (strcmp(comm, "tp") == 0) return TM_DIM_TP;
    return -1;
}

static int recorded(const tm_device_report *r) { return r->rec_ev1 > r->rec_ev0; }

/* The recorded step's events are those its device recorded between the
 * step's start and end (in program order: a send that leaves late, behind
 * earlier ones, still belongs to its step). */
static void traffic(const tm_world *w, tm_device_report *rep, int id)
{
    size_t n;
    const tm_event *ev = tm_world_events(w, id, &n);
    for (size_t i = rep->rec_ev0; i < rep->rec_ev1 && i < n; i++) {
        const tm_event *e = &ev[i];
        int dim = dim_of(e->comm);
        if ((e->engine == TM_ENGINE_COLLECTIVE || e->engine == TM_ENGINE_SEND) && dim >= 0)
            rep->step_sent[dim] += e->sent;
    }
}

/* Stage p's forward and backward passes on device (d 0, p, t 0). */
static int timeline(const tm_world *w, const tm_train_config *cfg, tm_train_result *res)
{
    const tm_device_report *s0 = &res->devices[0];
    size_t total = 0, n;
    for (int p = 0; p < cfg->pp; p++) {
        tm_world_events(w, p * cfg->tp, &n);
        total += n;
    }
    res->timeline = malloc(sizeof *res->timeline * (total ? total : 1));
    if (res->timeline == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the timeline");
    double t0 = s0->rec_start;
    for (int p = 0; p < cfg->pp; p++) {
        const tm_device_report *r = &res->devices[p * cfg->tp];
        const tm_event *ev = tm_world_events(w, p * cfg->tp, &n);
        for (size_t i = r->rec_ev0; i < r->rec_ev1 && i < n; i++) {
            const tm_event *e = &ev[i];
            if (e->engine != TM_ENGINE_COMPUTE ||
                (e->phase != 'F' && e->phase != 'B' && e->phase != 'W'))
                continue;
            tm_sched_kind k = e->phase == 'F'   ? TM_SCHED_FWD
                              : e->phase == 'B' ? TM_SCHED_BWD
                                                : TM_SCHED_WGT;
            /* The label's stage is the model stage: chunk e->stage / pp. */
            res->timeline[res->n_timeline++] = (tm_sched_event){p, k, e->mb, e->start - t0,
                                                                e->end - t0, e->stage / cfg->pp};
        }
    }
    /* To the last F, B or W of any stage. */
    for (int i = 0; i < res->n_timeline; i++)
        if (res->timeline[i].end > res->timeline_makespan)
            res->timeline_makespan = res->timeline[i].end;
    return TM_OK;
}

/* Every device's events of the recorded step, copied out of the world
 * (which the run destroys) into res->step_events. */
static int keep_events(const tm_world *w, tm_train_result *res)
{
    size_t total = 0, n;
    for (int i = 0; i < res->n_devices; i++)
        total += res->devices[i].rec_ev1 - res->devices[i].rec_ev0;
    res->step_events = malloc(sizeof *res->step_events * (total ? total : 1));
    if (res->step_events == NULL) return tm_error(TM_EHOSTMEM, "cannot keep the step's events");
    tm_event *out = res->step_events;
    for (int i = 0; i < res->n_devices; i++) {
        tm_device_report *r = &res->devices[i];
        const tm_event *ev = tm_world_events(w, i, &n);
        size_t k = r->rec_ev1 <= n ? r->rec_ev1 - r->rec_ev0 : 0;
        memcpy(out, ev + r->rec_ev0, sizeof *out * k);
        r->step_events = out;
        r->n_step_events = k;
        out += k;
    }
    return TM_OK;
}

int tm__train_observe(const tm_world *w, const tm_train_config *cfg, tm_train_result *res)
{
    for (int i = 0; i < res->n_devices; i++)
        if (!recorded(&res->devices[i])) return TM_OK;
    res->recorded = 1;
    for (int i = 0; i < res->n_devices; i++) traffic(w, &res->devices[i], i);
    TM_CHECK(keep_events(w, res));
    return timeline(w, cfg, res);
}

/* What one training step should send, by the formulas, from the plan:
 * pipeline stages pass each micro-batch's activations forward and its
 * gradients back; data parallelism all-reduces every layer's gradient
 * bucket once (under ZeRO: the reduce-scatters and all-gathers of
 * tm_zero_step_bytes instead), plus the loss's all-gather on the last
 * stage; tensor parallelism sends what each layer's kind says it does per
 * micro-batch (its tp_bytes, forward and backward), then once a step the
 * shards marked partial (sequence parallelism's replicated parameters); a tensor tied across stages sums its
 * gradient over its stages (counted with pp); clipping sums one double over
 * the tp and pp groups (and dp under ZeRO) by an all-gather. */
void tm__train_formulas(const tm_train_config *cfg, const tm_stage *stage, tm_zero *const *zero,
                        const tm_mesh *mesh, int rows, double tied_bytes, tm_device_report *rep)
{
    int v = tm__train_chunks(cfg), n_stages = mesh->pp * v;
    double dp = 0, tp = 0, pp = 0, allreduce = 0;
    for (int c = 0; c < v; c++) {
        const tm_stage *s = &stage[c];
        int g = c * mesh->pp + mesh->p, is_first = g == 0, is_last = g == n_stages - 1;
        double width = (is_last ? 0 : s->out_width) + (is_first ? 0 : s->in_width), chunk_tp = 0;
        pp += (double)cfg->micro_batches * rows * width * sizeof(float);
        for (int i = 0; i < s->n; i++) {
            const tm_layer_plan *l = &s->layer[i];
            allreduce += tm_allreduce_send_bytes(mesh->dp_comm, l->own_len);
            chunk_tp += tm_layer_tp_bytes(l, mesh->tp_comm, rows, i > 0 || !is_first);
        }
        tp += chunk_tp * cfg->micro_batches;
        size_t partial = zero[c] != NULL ? tm_zero_partial_floats(zero[c])
                                         : tm_stage_partial_floats(s);
        tp += tm_allreduce_send_bytes(mesh->tp_comm, partial);
        dp += zero[c] != NULL ? tm_zero_step_bytes(zero[c], cfg->micro_batches) : 0;
    }
    rep->step_allreduce = allreduce;
    if (zero[0] == NULL) dp = allreduce;
    if (mesh->p == mesh->pp - 1 && cfg->dp > 1) dp += (cfg->dp - 1) * sizeof(double);
    pp += tied_bytes;
    if (cfg->clip_grad > 0) {
        tp += (cfg->tp - 1) * sizeof(double);
        pp += (cfg->pp - 1) * sizeof(double);
        if (zero[0] != NULL) dp += (cfg->dp - 1) * sizeof(double);
    }
    rep->step_analytic[TM_DIM_DP] = dp;
    rep->step_analytic[TM_DIM_PP] = pp;
    rep->step_analytic[TM_DIM_TP] = tp;
}

double tm__train_bubble(const tm_train_config *cfg, const double *acc, int stride)
{
    double busy = 0, span = 0;
    int pp = cfg->pp, tp = cfg->tp;
    for (int r = 0; r < cfg->dp * tp; r++) { /* replica d, tp rank t */
        const double *first = acc + (size_t)stride * (r / tp * pp * tp + r % tp);
        double end = first[2];
        for (int p = 0; p < pp; p++) {
            const double *a = first + (size_t)stride * p * tp;
            busy += a[0];
            if (a[2] > end) end = a[2];
        }
        span += pp * (end - first[1]);
    }
    return pp > 1 && span > 0 ? 1 - busy / span : -1;
}

/* The run's modeled figures from the device reports. */
void tm__train_summarize(const tm_train_config *cfg, tm_train_result *r)
{
    double *acc = malloc(3 * sizeof *acc * (size_t)r->n_devices);
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        if (d->modeled_s > r->modeled_seconds) r->modeled_seconds = d->modeled_s;
        if (acc != NULL)
            memcpy(acc + 3 * i, (double[3]){d->bubble_busy_s, d->bubble_start_s, d->bubble_end_s},
                   sizeof(double[3]));
    }
    r->modeled_samples_per_s =
        r->modeled_seconds > 0 ? (double)r->steps * cfg->batch / r->modeled_seconds : 0;
    r->bubble = acc != NULL ? tm__train_bubble(cfg, acc, 3) : -1;
    free(acc);
}
