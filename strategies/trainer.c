#include "strategies/trainer.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cost.h"
#include "runtime/collectives.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/checkpoint.h"
#include "strategies/pipeline.h"
#include "strategies/rng.h"
#include "strategies/trainer_device.h"
#include "strategies/zero.h"

/* One device's view of a step's data. */
typedef struct {
    tm_device *dev;
    const tm_stage *stage;
    const tm_data *data;
    const int *idx;           /* sample indices of this replica's batch */
    int mb_samples;           /* samples of a micro-batch (evaluation: the
                                 last may be short) */
    const int *eval_samples;  /* evaluation: the samples of each micro-batch */
    int *targets;             /* (rows of a micro-batch) device buffer */
    float grad_scale;
    double loss_sum;          /* summed over the rows this device's loss saw */
    double correct;
} feed;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The data order of an epoch: a Fisher-Yates shuffle from PCG32 stream
 * 1000 + epoch of the seed, or the files' order. */
static void epoch_order(int *order, int n, uint64_t seed, int epoch, int shuffle)
{
    for (int i = 0; i < n; i++) order[i] = i;
    if (!shuffle) return;
    tm_rng r = tm_rng_seed(seed, 1000u + (uint64_t)epoch);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)tm_rng_below(&r, (uint32_t)i + 1);
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* The first stage's input: the micro-batch's samples copied from host
 * memory into the device (the host-to-device copy of a real accelerator). */
static int load_input(void *ctx, int mb, float *x)
{
    feed *f = ctx;
    int n = f->eval_samples ? f->eval_samples[mb] : f->mb_samples;
    if (n == 0) return TM_OK; /* an empty evaluation micro-batch (ZeRO-3) */
    const int *idx = f->idx + (size_t)mb * f->mb_samples;
    size_t per = (size_t)f->data->rows * (size_t)f->data->width;
    for (int i = 0; i < n; i++) tm_data_input(f->data, idx[i], x + (size_t)i * per);
    tm_clock_host_copy(f->dev, (double)n * (double)per * sizeof(float));
    return TM_OK;
}

/* The last stage's loss: targets staged the same way, the model's loss
 * scaled by 1 / (global batch rows), so gradients summed over micro-batches
 * and replicas are those of the global batch's mean loss. */
static int loss(void *ctx, int mb, const float *logits, float *dlogits)
{
    feed *f = ctx;
    int n = f->eval_samples ? f->eval_samples[mb] : f->mb_samples;
    if (n == 0) return TM_OK;
    const int *idx = f->idx + (size_t)mb * f->mb_samples;
    int per = f->data->rows;
    for (int i = 0; i < n; i++) tm_data_targets(f->data, idx[i], f->targets + (size_t)i * per);
    const tm_model *m = f->stage->model;
    tm_layer_ctx c = tm_stage_ctx(f->stage, n * per);
    return m->loss(&f->stage->layer[f->stage->n - 1], &c, dlogits, logits, f->targets, n * per,
                   f->grad_scale, &f->loss_sum, &f->correct);
}

/* Data-parallel gradient buckets: each layer's gradients are all-reduced
 * over the replicas as soon as the last micro-batch's backward has made
 * them final, last layer first (as PyTorch DDP issues its buckets). The
 * losses were scaled by 1 / global batch, so the sum is the mean. */
typedef struct {
    tm_comm *dp_comm;
    float *grads;
} bucket_ctx;

/* In modeled time the buckets run on the communication engine beside the
 * rest of the backward; the optimizer waits for them (tm_clock_sync). */
static int grads_ready(void *ctx, size_t off, size_t len)
{
    bucket_ctx *b = ctx;
    tm_device *dev = tm_comm_owner(b->dp_comm);
    tm_clock_async(dev, 1);
    int st = tm_allreduce(b->dp_comm, b->grads + off, b->grads + off, len, TM_SUM);
    tm_clock_async(dev, 0);
    return st;
}

/* Sums a few doubles over a group exactly and in rank order: the
 * all-gather moves their bytes, every member adds them up the same way. */
static int sum_over(tm_comm *comm, double *vals, int n)
{
    int size = tm_comm_size(comm);
    if (size == 1) return TM_OK;
    double *all = malloc(sizeof(double) * (size_t)n * (size_t)size);
    if (all == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate a sum over %d devices", size);
    int st = tm_allgather(comm, (const float *)vals, (float *)all,
                          (size_t)n * sizeof(double) / sizeof(float));
    for (int i = 0; st == TM_OK && i < n; i++) {
        vals[i] = 0;
        for (int d = 0; d < size; d++) vals[i] += all[d * n + i];
    }
    free(all);
    return st;
}

/* Pipelined inference over this replica's share of the test set; on the
 * last stage, *loss and *acc are the whole test set's. */
static int evaluate(device *v, double *loss_out, double *acc)
{
    const tm_data *d = v->j->test;
    int dp = v->mesh.dp, lo = (int)((long)d->n * v->mesh.d / dp),
        hi = (int)((long)d->n * (v->mesh.d + 1) / dp), n = hi - lo;
    /* Evaluation moves micro-batches of the training size, so that the
     * memory it needs is the training's (what the tables teach about). */
    int chunk = v->j->cfg->batch / dp / v->j->cfg->micro_batches;
    int n_mb = (n + chunk - 1) / chunk;
    /* ZeRO-3 gathers every layer's parameters over the replicas in each
     * forward, so all replicas run as many micro-batches, those past a
     * shorter share empty. */
    if (v->zero[0] != NULL && v->j->cfg->zero == 3)
        n_mb = ((d->n + dp - 1) / dp + chunk - 1) / chunk;
    int *idx = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    int *samples = malloc(sizeof(int) * (size_t)(n_mb > 0 ? n_mb : 1));
    int *rows = malloc(sizeof(int) * (size_t)(n_mb > 0 ? n_mb : 1));
    if (idx == NULL || samples == NULL || rows == NULL) {
        free(idx);
        free(samples);
        free(rows);
        return tm_error(TM_EHOSTMEM, "cannot allocate the evaluation order");
    }
    for (int i = 0; i < n; i++) idx[i] = lo + i;
    for (int m = 0; m < n_mb; m++) {
        samples[m] = n - m * chunk < chunk ? n - m * chunk : chunk;
        if (samples[m] < 0) samples[m] = 0;
        rows[m] = samples[m] * d->rows;
    }
    feed f = {.dev = v->dev, .stage = &v->stage[v->n_chunks - 1], .data = d, .idx = idx,
              .mb_samples = chunk, .eval_samples = samples, .targets = v->targets,
              .grad_scale = 1.0f};
    tm_pipeline_step ps = {.stage = v->stage,
                           .pp_comm = v->mesh.pp_comm,
                           .sched = &v->j->sched,
                           .load_input = load_input,
                           .loss = loss,
                           .ctx = &f};
    tm_clock_label(v->dev, 'E', v->mesh.p, -1);
    int st = tm_pipeline_infer(&ps, n_mb, rows);
    tm_clock_label(v->dev, 0, -1, -1);
    double vals[2] = {f.loss_sum, f.correct};
    if (st == TM_OK && v->is_last) st = sum_over(v->mesh.dp_comm, vals, 2);
    *loss_out = vals[0] / ((double)d->n * d->rows);
    *acc = vals[1] / ((double)d->n * d->rows);
    free(idx);
    free(samples);
    free(rows);
    return st;
}

/* Adds one step's modeled time to the device's accounts: s0 at its start,
 * sp as its pipeline starts (after zeroing the gradients), s1 after the
 * pipeline, s2 after the optimizer. */
static void account(device *v, const tm_clock_stats *s0, const tm_clock_stats *sp,
                    const tm_clock_stats *s1, const tm_clock_stats *s2, int first_recorded,
                    size_t ev0, size_t ev1)
{
    tm_device_report *rep = &v->j->result->devices[tm_device_id(v->dev)];
    double busy = s1->compute - sp->compute;
    double start = v->is_first ? sp->now : 0;
    v->last_step = s2->now - s0->now;
    v->ep_modeled += v->last_step;
    v->ep_busy += busy;
    v->ep_start += start;
    v->ep_end += s1->now;
    rep->bubble_busy_s += busy;
    rep->bubble_start_s += start;
    rep->bubble_end_s += s1->now;
    rep->modeled_s += s2->now - s0->now;
    rep->compute_s += s2->compute - s0->compute;
    rep->comm_s += s2->comm_wait - s0->comm_wait;
    rep->idle_s += s2->idle - s0->idle;
    rep->comm_busy_s += s2->comm_busy - s0->comm_busy;
    if (first_recorded) {
        rep->rec_start = sp->now;
        rep->rec_ev0 = ev0;
        rep->rec_ev1 = ev1;
        rep->rec_end = s2->now;
    }
}

/* Clips the gradients to the global norm cfg->clip_grad, PyTorch's
 * clip_grad_norm_: every device sums the squares of the parameters it
 * counts (tm_stage_grad_sq), the sums are added over the tensor- and
 * pipeline-parallel groups (replicas hold the same gradients), and every
 * device scales by the same factor. *norm: the norm before clipping. */
static int clip_grads(device *v, double *norm)
{
    double sq = 0;
    for (int c = 0; c < v->n_chunks; c++)
        sq += v->zero[c] != NULL ? tm_zero_grad_sq(v->zero[c]) : tm_stage_grad_sq(&v->stage[c]);
    TM_CHECK(sum_over(v->mesh.tp_comm, &sq, 1));
    TM_CHECK(sum_over(v->mesh.pp_comm, &sq, 1));
    /* Under ZeRO each replica holds its chunks of the gradient only. */
    if (v->zero[0] != NULL) TM_CHECK(sum_over(v->mesh.dp_comm, &sq, 1));
    *norm = sqrt(sq);
    /* Scaled by the factor even when it is 1 (exact), as PyTorch does, so
     * that the step's modeled time does not depend on the norm. */
    float f = tm_clip_factor(*norm, v->j->cfg->clip_grad);
    for (int c = 0; c < v->n_chunks; c++) {
        if (v->zero[c] != NULL) tm_zero_grad_scale(v->zero[c], f);
        else tm_stage_grad_scale(&v->stage[c], f);
    }
    return TM_OK;
}

/* The optimizer step under offload (ZeRO-Offload): the gradients the
 * device updates go to the host, the update runs on the host's state, the
 * updated parameters come back, and only then (ZeRO 1 and 2) are they
 * all-gathered. The first recorded step keeps its host link accounts. */
static int offload_step(device *v, const tm_optim_config *opt, double lr, long step,
                        int first_recorded)
{
    uint64_t b0 = tm_offload_bytes(v->offload);
    double s0 = tm_offload_seconds(v->offload);
    tm_offload_grads_out(v->offload, v->n_updated);
    for (int c = 0; c < v->n_chunks; c++) {
        if (v->zero[c] != NULL) tm_zero_update(v->zero[c], opt, lr, step);
        else tm_optimizer_step(opt, &v->stage[c], lr, step);
    }
    tm_offload_params_back(v->offload, v->n_updated);
    if (first_recorded) {
        tm_device_report *rep = &v->j->result->devices[tm_device_id(v->dev)];
        rep->step_host = tm_offload_bytes(v->offload) - b0;
        rep->step_host_s = tm_offload_seconds(v->offload) - s0;
    }
    for (int c = 0; c < v->n_chunks && v->zero[c] != NULL; c++)
        TM_CHECK(tm_zero_gather(v->zero[c]));
    return TM_OK;
}

/* One optimizer step on this device, the run's `taken`-th (0-based).
 * *step_loss: the global batch's mean loss (known on the last stage);
 * *grad_norm: the global gradient norm when clipping, else -1. */
static int train_step(device *v, long epoch_step, double lr, long step, long taken,
                      double *step_loss, double *grad_norm)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    int per_replica = cfg->batch / cfg->dp;
    /* 1 for the first recorded step, 2 for the others, 0 when not recorded. */
    long first = cfg->trace_first > 0 ? cfg->trace_first : 1;
    long count = cfg->trace_steps > 0 ? cfg->trace_steps : 1;
    long k = taken + 1 - first; /* this step's place in the recorded window */
    int recorded = k < 0 || k >= count ? 0 : k == 0 ? 1 : 2;
    if (cfg->fail_step > 0 && step == cfg->fail_step && tm_device_id(v->dev) == cfg->fail_device)
        return tm_error(TM_EFAIL, "injected failure at step %ld (--fail-device %d --fail-step %ld)",
                        step, cfg->fail_device, cfg->fail_step);
    tm_clock_stats s0, sp, s1, s2;
    tm_clock_stats_get(v->dev, &s0);
    for (int c = 0; c < v->n_chunks; c++) {
        size_t n_grads;
        float *grads = tm__train_step_grads(v, c, &n_grads);
        if (!cfg->dry_run) memset(grads, 0, n_grads * sizeof(float));
        tm_clock_charge(v->dev, 0, 4.0 * (double)n_grads);
    }
    tm_clock_stats_get(v->dev, &sp);
    int per_sample = cfg->model->rows_per_sample;
    feed f = {.dev = v->dev,
              .stage = &v->stage[v->n_chunks - 1],
              .data = j->train,
              .idx = v->order ? v->order + epoch_step * cfg->batch + v->mesh.d * per_replica : NULL,
              .mb_samples = per_replica / cfg->micro_batches,
              .targets = v->targets,
              .grad_scale = 1.0f / (float)((double)cfg->batch * per_sample)};
    bucket_ctx b[MAX_CHUNKS];
    void *ready_ctx[MAX_CHUNKS];
    for (int c = 0; c < v->n_chunks; c++) {
        b[c] = (bucket_ctx){v->mesh.dp_comm, v->stage[c].grads};
        ready_ctx[c] = cfg->zero == 1 ? (void *)v->zero[c] : &b[c];
    }
    /* ZeRO-1 reduce-scatters the buckets; ZeRO-2 and 3 reduce every
     * micro-batch's gradients as the layers finish (strategies/zero.h). */
    tm_pipeline_step ps = {.stage = v->stage, .pp_comm = v->mesh.pp_comm, .sched = &j->sched,
                           .rows = tm__train_rows(cfg), .load_input = load_input, .loss = loss,
                           .ctx = &f, .ready = cfg->dp > 1 && cfg->zero == 0 ? grads_ready : NULL,
                           .ready_ctx = ready_ctx};
    if (cfg->zero == 1) ps.ready = tm_zero_bucket_ready;
    if (recorded) tm_clock_record(v->dev, 1);
    size_t ev0 = tm_clock_event_count(v->dev);
    int st = tm_pipeline_run(&ps);
    if (st != TM_OK) {
        tm_clock_record(v->dev, 0);
        return st;
    }
    tm_clock_stats_get(v->dev, &s1);
    double l = f.loss_sum;
    if (v->is_last) TM_CHECK(sum_over(v->mesh.dp_comm, &l, 1));
    *step_loss = l / ((double)cfg->batch * per_sample);
    tm_clock_sync(v->dev);
    tm_clock_label(v->dev, 'O', v->mesh.p, -1);
    for (int c = 0; c < v->n_chunks; c++)
        TM_CHECK(v->zero[c] != NULL ? tm_zero_sum_partial(v->zero[c])
                                    : tm_stage_sum_partial(&v->stage[c]));
    for (int i = 0; i < v->n_tied; i++) {
        size_t count;
        float *g = tm__train_tied_grads(v, &v->tied[i], &count);
        TM_CHECK(tm_allreduce(v->tied[i].comm, g, g, count, TM_SUM));
    }
    *grad_norm = -1;
    if (cfg->clip_grad > 0) TM_CHECK(clip_grads(v, grad_norm));
    tm_optim_config opt = tm__train_optim(cfg);
    if (v->offload != NULL) {
        TM_CHECK(offload_step(v, &opt, lr, step, recorded == 1));
    } else {
        for (int c = 0; c < v->n_chunks; c++) {
            if (v->zero[c] != NULL) TM_CHECK(tm_zero_step(v->zero[c], &opt, lr, step));
            else tm_optimizer_step(&opt, &v->stage[c], lr, step);
        }
    }
    for (int c = 0; c < v->n_chunks; c++) tm_stage_refresh_bf16(&v->stage[c]);
    tm_clock_label(v->dev, 0, -1, -1);
    tm_clock_stats_get(v->dev, &s2);
    tm_clock_record(v->dev, 0);
    account(v, &s0, &sp, &s1, &s2, recorded == 1, ev0, tm_clock_event_count(v->dev));
    tm_device_report *rep = &j->result->devices[tm_device_id(v->dev)];
    if (ps.max_in_flight > rep->max_in_flight) rep->max_in_flight = ps.max_in_flight;
    return TM_OK;
}

/* Modeled samples/s (slowest device) and bubble of the epoch, from every
 * device's accounts (a world all-gather, outside the training steps). */
static int epoch_modeled(device *v, double *samples_per_s, double *bubble, long steps)
{
    int n = tm_device_count(v->dev);
    double mine[4] = {v->ep_modeled, v->ep_busy, v->ep_start, v->ep_end};
    double *all = malloc(sizeof(double) * 4 * (size_t)n);
    if (all == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the epoch's accounts");
    int st = tm_allgather(tm_device_comm(v->dev), (const float *)mine, (float *)all,
                          sizeof mine / (sizeof(float)));
    double slowest = 0;
    for (int i = 0; st == TM_OK && i < n; i++)
        if (all[4 * i] > slowest) slowest = all[4 * i];
    *samples_per_s = slowest > 0 ? (double)steps * v->j->cfg->batch / slowest : 0;
    *bubble = st == TM_OK ? tm__train_bubble(v->j->cfg, all + 1, 4) : -1;
    free(all);
    v->ep_modeled = v->ep_busy = v->ep_start = v->ep_end = 0;
    return st;
}

static int train_loop(device *v)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    tm_train_position pos = j->state->pos;
    long per_epoch = j->train->n / cfg->batch, total = per_epoch * cfg->epochs, taken = 0;
    double train_time = 0, flops0 = tm_cost_totals().flops;
    /* The last evaluation, so that one right before the end serves as the
     * run's final one. */
    long eval_step = -1;
    double eval_loss = 0, eval_acc = 0;
    int st = TM_OK, stopped = 0;
    while (st == TM_OK && pos.epoch < cfg->epochs &&
           (cfg->max_steps == 0 || taken < cfg->max_steps)) {
        if (v->order) epoch_order(v->order, j->train->n, pos.data_seed, pos.epoch, cfg->shuffle);
        double epoch_loss = 0, epoch_time = 0;
        long epoch_steps = 0;
        while (st == TM_OK && pos.epoch_step < per_epoch &&
               (cfg->max_steps == 0 || taken < cfg->max_steps)) {
            if (!tm_stop_begin(j->stop, pos.step + 1)) {
                stopped = 1;
                break;
            }
            double t0 = now_s(), l = 0, norm = -1, lr = tm_lr_at(cfg, pos.step, total);
            st = train_step(v, pos.epoch_step, lr, pos.step + 1, taken, &l, &norm);
            if (st != TM_OK) break;
            /* A dry run's values mean nothing: no guard on them. */
            for (int c = 0; !cfg->dry_run && c < v->n_chunks; c++) {
                size_t n_grads;
                const float *grads = tm__train_step_grads(v, c, &n_grads);
                tm__train_guard(j->stop, pos.step + 1, v->is_last && c == 0, l, grads, n_grads,
                                tm_device_id(v->dev));
            }
            pos.step++;
            pos.epoch_step++;
            taken++;
            epoch_steps++;
            double dt = now_s() - t0;
            train_time += dt;
            epoch_time += dt;
            epoch_loss += l;
            /* Steps past a divergence still run (all devices stop after
             * the same step) but are not reported. */
            long failed = tm_stop_failed(j->stop, NULL, 0);
            if (v->reporter && cfg->on_step != NULL && (failed == 0 || pos.step <= failed)) {
                tm_step_info info = {pos.step, pos.epoch, pos.epoch_step, per_epoch, total, l, lr,
                                     norm, (double)taken * cfg->batch / train_time,
                                     v->last_step};
                cfg->on_step(cfg->ctx, &info);
            }
            /* Evaluations between epochs; the epoch's end has its own. */
            if (cfg->eval_every > 0 && pos.step % cfg->eval_every == 0 &&
                pos.epoch_step < per_epoch && !cfg->dry_run) {
                tm_eval_info e = {pos.step, 0, 0};
                st = evaluate(v, &e.loss, &e.acc);
                eval_step = pos.step;
                eval_loss = e.loss;
                eval_acc = e.acc;
                if (st == TM_OK && v->reporter && cfg->on_eval != NULL &&
                    tm_stop_failed(j->stop, NULL, 0) == 0)
                    cfg->on_eval(cfg->ctx, &e);
            }
        }
        if (st != TM_OK || pos.epoch_step < per_epoch) break;
        tm_epoch_info info = {pos.epoch, epoch_steps ? epoch_loss / epoch_steps : 0, 0, 0,
                              epoch_time > 0 ? (double)epoch_steps * cfg->batch / epoch_time : 0,
                              0, -1};
        st = epoch_modeled(v, &info.modeled_samples_per_s, &info.bubble, epoch_steps);
        if (st == TM_OK && !cfg->dry_run) st = evaluate(v, &info.test_loss, &info.test_acc);
        eval_step = pos.step;
        eval_loss = info.test_loss;
        eval_acc = info.test_acc;
        int reported = st == TM_OK && v->reporter && tm_stop_failed(j->stop, NULL, 0) == 0;
        if (reported && cfg->on_eval != NULL) {
            tm_eval_info e = {pos.step, info.test_loss, info.test_acc};
            cfg->on_eval(cfg->ctx, &e);
        }
        if (reported && cfg->on_epoch != NULL) cfg->on_epoch(cfg->ctx, &info);
        pos.epoch++;
        pos.epoch_step = 0;
    }
    tm_device_report *rep = &j->result->devices[tm_device_id(v->dev)];
    rep->flops = tm_cost_totals().flops - flops0;
    tm_arena_stats mem;
    tm_arena_stats_get(tm_device_arena(v->dev), &mem);
    rep->activation_peak = mem.tag_peak[TM_TAG_ACTIVATION];
    if (v->reporter) {
        tm_train_result *res = j->result;
        res->steps = taken;
        res->train_seconds = train_time;
        res->samples_per_s = train_time > 0 ? (double)taken * cfg->batch / train_time : 0;
    }
    if (st != TM_OK) return st;
    /* A stop ends the run at once: the state is its last step's. */
    if (stopped) {
        if (v->reporter) {
            j->result->stopped = 1;
            j->state->pos = pos;
        }
        return TM_OK;
    }
    if (eval_step != pos.step && !cfg->dry_run) {
        TM_CHECK(evaluate(v, &eval_loss, &eval_acc));
        eval_step = pos.step;
    }
    if (v->reporter) {
        j->result->test_loss = eval_loss;
        j->result->test_acc = eval_acc;
        j->state->pos = pos;
    }
    return TM_OK;
}

static int run(tm_device *dev, void *arg)
{
    device v = {.j = arg, .dev = dev};
    int st = tm__train_setup(&v);
    if (st == TM_OK) st = train_loop(&v);
    if (st == TM_OK && (v.j->cfg->save_path != NULL || v.j->cfg->keep_params))
        st = tm__train_store(&v);
    tm_device_report *rep = &v.j->result->devices[tm_device_id(dev)];
    rep->id = tm_device_id(dev);
    rep->d = v.mesh.d;
    rep->p = v.mesh.p;
    rep->t = v.mesh.t;
    tm__train_teardown(&v);
    return st;
}

static void add_link(const tm_link_stats *s, void *ctx)
{
    tm_train_result *r = ctx;
    r->devices[s->src].sent_bytes += s->bytes;
    tm_link_stats *l = realloc(r->links, sizeof *l * (size_t)(r->n_links + 1));
    if (l == NULL) return; /* the table loses the link; sent_bytes keeps it */
    r->links = l;
    r->links[r->n_links++] = *s;
}

void tm_train_result_free(tm_train_result *r)
{
    free(r->devices);
    free(r->timeline);
    free(r->step_events);
    free(r->links);
    free(r->params);
    r->devices = NULL;
    r->timeline = NULL;
    r->step_events = NULL;
    r->links = NULL;
    r->params = NULL;
    r->n_devices = r->n_timeline = r->n_links = 0;
}

int tm_train(const tm_train_config *cfg, const tm_data *train, const tm_data *test,
             tm_train_result *out, char *error, size_t error_size)
{
    memset(out, 0, sizeof *out);
    error[0] = '\0';
    job j = {.cfg = cfg, .train = train, .test = test, .result = out};
    tm_model_state state = {0};
    tm_world *w = NULL;
    tm_outfile *save = NULL, *trace = NULL;
    int n = cfg->dp * cfg->pp * cfg->tp, st = tm_train_check(cfg, train);
    /* Outputs first: a path that cannot be written fails before any work,
     * and a device or FIFO is opened once, now, and written at the end. */
    if (st == TM_OK && cfg->save_path != NULL) st = tm_outfile_open(&save, cfg->save_path);
    if (st == TM_OK && cfg->trace_path != NULL) st = tm_outfile_open(&trace, cfg->trace_path);
    if (st == TM_OK) st = tm__train_split(cfg, j.first);
    if (st == TM_OK) st = tm__train_schedule(cfg, &j.sched);
    if (st == TM_OK) st = tm_schedule_validate(&j.sched);
    tm_optim_config opt = tm__train_optim(cfg);
    /* Before the host spends memory and time on the model's state. */
    if (st == TM_OK) st = tm__train_fits(cfg, j.first);
    if (st == TM_OK) st = tm_model_state_init(&state, cfg->model, &opt);
    state.n_data = cfg->n_data_meta;
    memcpy(state.data, cfg->data_meta, sizeof state.data);
    if (st == TM_OK && cfg->load_path != NULL) {
        st = tm_checkpoint_load(cfg->load_path, &state,
                                cfg->load_weights ? TM_LOAD_WEIGHTS : TM_LOAD_RESUME, &j.resumed);
    } else if (st == TM_OK && !cfg->dry_run) {
        /* A dry run's weights stay the state's zeros: nothing reads them. */
        cfg->model->init(cfg->model, state.params, cfg->seed);
    }
    if (!j.resumed) state.pos = (tm_train_position){0, 0, 0, cfg->seed};
    j.state = &state;
    if (st == TM_OK) st = tm_stop_create(&j.stop, state.pos.step, cfg->stop_request);
    if (st == TM_OK && cfg->on_start != NULL) {
        tm_start_info info = {state.pos.step, state.pos.epoch, state.pos.epoch_step,
                              train->n / cfg->batch, cfg->load_path != NULL, j.resumed};
        cfg->on_start(cfg->ctx, &info);
    }
    if (st == TM_OK) {
        out->devices = calloc((size_t)n, sizeof *out->devices);
        out->n_devices = n;
        if (out->devices == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate device reports");
    }
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = n;
    wc.mem_cap = cfg->mem_cap;
    /* A dry run touches only the pages its copies write: the cap's whole
     * range need not be faulted in first (wall time only). */
    wc.prefault = !cfg->dry_run;
    tm__train_clock(cfg, &wc.clock);
    wc.stop = j.stop;
    if (st == TM_OK) st = tm_world_create(&w, &wc);
    int split = st == TM_OK && tm_world_device_count_local(w) < n;
    /* Across processes the one that runs the reporting device writes the
     * checkpoint and the trace, once, and only it holds the final weights. */
    int writer = !split || tm_world_is_local(w, tm_train_reporter(cfg));
    if (!writer) {
        tm_outfile_abandon(save);
        tm_outfile_abandon(trace);
        save = trace = NULL;
    }
    j.gather = split && !cfg->dry_run && (cfg->save_path != NULL || cfg->keep_params);
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
    } else {
        out->ran = 1;
        st = tm_world_run(w, run, &j);
        if (st != TM_OK) snprintf(error, error_size, "%s", tm_world_error(w));
        if (st == TM_OK) st = tm__train_share(w, cfg, out, &state, j.stop);
        out->stop_request = tm_stop_requested(j.stop, &out->stop_process);
        if (st != TM_OK && error[0] == '\0') snprintf(error, error_size, "%s", tm_error_message());
        tm_world_links(w, add_link, out);
        out->memory = out->devices[0].memory;
        for (int i = 0; i < n; i++) out->gflops += out->devices[i].flops;
        out->gflops = out->train_seconds > 0 ? out->gflops / out->train_seconds * 1e-9 : 0;
        tm__train_summarize(cfg, out);
        if (st == TM_OK) st = tm__train_observe(w, cfg, out);
        if (st != TM_OK && error[0] == '\0') snprintf(error, error_size, "%s", tm_error_message());
        char why[256];
        long failed = st == TM_OK ? tm_stop_failed(j.stop, why, sizeof why) : 0;
        if (failed > 0) {
            st = TM_ENONFINITE;
            snprintf(error, error_size, "training diverged at step %ld: %s; no checkpoint written",
                     failed, why);
        }
    }
    if (st == TM_OK && save != NULL) {
        st = tm_checkpoint_save(save, &state);
        if (st == TM_OK) st = tm_outfile_commit(save);
        else tm_outfile_abandon(save);
        save = NULL;
        if (st != TM_OK) snprintf(error, error_size, "%s", tm_error_message());
    }
    if (st == TM_OK && cfg->keep_params && writer) {
        out->params = state.params;
        state.params = NULL;
    }
    /* After the checkpoint: a trace that cannot be written loses no state. */
    if (st == TM_OK && trace != NULL) {
        st = tm_world_trace_write(w, trace, cfg->trace_wall);
        if (st == TM_OK) st = tm_outfile_commit(trace);
        else tm_outfile_abandon(trace);
        trace = NULL;
        if (st != TM_OK) snprintf(error, error_size, "%s", tm_error_message());
    }
    tm_outfile_abandon(save);
    tm_outfile_abandon(trace);
    tm_world_destroy(w);
    tm_stop_destroy(j.stop);
    tm_model_state_free(&state);
    tm_schedule_free(&j.sched);
    return st;
}
