#include "strategies/trainer.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "runtime/collectives.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/checkpoint.h"
#include "strategies/pipeline.h"
#include "strategies/rng.h"
#include "strategies/trainer_internal.h"
#include "strategies/zero.h"


#define MAX_TIED 4 /* tensors held by several pipeline stages */

/* What the host prepares for every device: read-only during the run,
 * except each device's own report slot and the shard copies at the end. */
typedef struct {
    const tm_train_config *cfg;
    const tm_data *train, *test;
    tm_model_state *state;   /* initial weights in, final weights out */
    int resumed;             /* state holds optimizer state and position */
    int first[TM_MAX_LAYERS + 1]; /* model stage g holds layers first[g] ..
                                     first[g+1]-1 (device g % pp's chunk g / pp) */
    tm_schedule sched;
    tm_train_result *result;
    tm_stop *stop;           /* where every device stops early (runtime/stop.h) */
    float *owned;            /* across processes: non-zero where this
                                process's devices stored the state */
} job;

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

double tm_lr_at(const tm_train_config *cfg, long s, long total)
{
    if (cfg->lr_schedule == TM_LR_CONSTANT) return cfg->lr;
    if (s < cfg->warmup_steps) return cfg->lr * (double)(s + 1) / (double)cfg->warmup_steps;
    long end = cfg->lr_decay_steps > 0 ? cfg->lr_decay_steps : total;
    long span = end - cfg->warmup_steps;
    if (span <= 0) return s < end ? cfg->lr : cfg->min_lr;
    double progress = (double)(s - cfg->warmup_steps) / (double)span;
    if (progress > 1) progress = 1;
    return cfg->min_lr + (cfg->lr - cfg->min_lr) * 0.5 * (1.0 + cos(M_PI * progress));
}

int tm__train_chunks(const tm_train_config *cfg)
{
    return cfg->virtual_stages > 1 ? cfg->virtual_stages : 1;
}

int tm__train_split(const tm_train_config *cfg, int *first)
{
    int n = cfg->pp * tm__train_chunks(cfg);
    if (cfg->stages != NULL) return tm_stages_parse(cfg->stages, cfg->model, n, first);
    return tm_stages_balance(cfg->model, n, first);
}

int tm__train_schedule(const tm_train_config *cfg, tm_schedule *out)
{
    return tm_schedule_make_virtual(out, cfg->schedule, cfg->pp, cfg->micro_batches,
                                    tm__train_chunks(cfg));
}

static tm_optim_config optim_of(const tm_train_config *cfg)
{
    return (tm_optim_config){cfg->optimizer, cfg->momentum, cfg->weight_decay, cfg->beta1,
                             cfg->beta2, 1e-8};
}

/* Rows of one micro-batch: its samples' rows (a sequence's tokens). */
static int mb_rows(const tm_train_config *cfg)
{
    return cfg->batch / cfg->dp / cfg->micro_batches * cfg->model->rows_per_sample;
}

static void clock_of(const tm_train_config *cfg, tm_clock_config *out)
{
    const tm_clock_config *c = &cfg->clock;
    if (c->device_gflops == 0 && c->device_gbps == 0 && c->link_gbps == 0 &&
        c->link_latency_us == 0 && c->devices_per_node == 0 && c->inter_node_gbps == 0 &&
        c->inter_node_latency_us == 0)
        tm_clock_config_default(out);
    else
        *out = cfg->clock;
}

/* The model stages (ascending, of n_stages) whose layers use tensor i, into
 * stages (when not NULL); returns their number. More than one: a tied
 * tensor (layers in different stages using one tensor) that each of them
 * holds. */
static int tied_stages(const tm_model *m, const int *first, int n_stages, int i, int *stages)
{
    int n = 0;
    for (int s = 0; s < n_stages; s++) {
        int used = 0;
        for (int l = first[s]; l < first[s + 1] && !used; l++)
            for (int k = 0; k < m->layers[l].n_tensors; k++) used |= m->layers[l].tensor[k] == i;
        if (used && stages != NULL) stages[n] = s;
        n += used;
    }
    return n;
}

int tm_train_check(const tm_train_config *cfg, const tm_data *train)
{
    const tm_model *m = cfg->model;
    if (cfg->dp < 1 || cfg->pp < 1 || cfg->tp < 1)
        return tm_error(TM_EINVAL, "--dp, --pp and --tp must be positive");
    long n = (long)cfg->dp * cfg->pp * cfg->tp;
    if (n > TM_MAX_DEVICES)
        return tm_error(TM_EINVAL, "dp x pp x tp = %ld devices, more than %d", n, TM_MAX_DEVICES);
    if (cfg->batch < 1) return tm_error(TM_EINVAL, "--batch must be positive");
    if (cfg->micro_batches < 1) return tm_error(TM_EINVAL, "--micro-batches must be positive");
    if (cfg->batch % cfg->dp != 0)
        return tm_error(TM_EINVAL, "--batch %d is not divisible by --dp %d", cfg->batch, cfg->dp);
    if (cfg->batch / cfg->dp % cfg->micro_batches != 0)
        return tm_error(TM_EINVAL,
                        "each replica's batch (%d / dp %d = %d) is not divisible by "
                        "--micro-batches %d", cfg->batch, cfg->dp, cfg->batch / cfg->dp,
                        cfg->micro_batches);
    if (cfg->epochs < 1) return tm_error(TM_EINVAL, "--epochs must be positive");
    if (cfg->max_steps < 0) return tm_error(TM_EINVAL, "--steps must be positive");
    if (!(cfg->lr > 0) || !isfinite(cfg->lr))
        return tm_error(TM_EINVAL, "--lr must be a positive finite number");
    tm_optim_config opt = optim_of(cfg);
    const char *why = tm_optimizer_check(&opt);
    if (why != NULL) return tm_error(TM_EINVAL, "%s", why);
    if (cfg->warmup_steps < 0) return tm_error(TM_EINVAL, "--warmup-steps must not be negative");
    if (!(cfg->min_lr >= 0) || !(cfg->min_lr <= cfg->lr))
        return tm_error(TM_EINVAL, "--min-lr must be between 0 and --lr");
    if (cfg->lr_decay_steps < 0) return tm_error(TM_EINVAL, "--lr-decay-steps must be positive");
    if (!(cfg->clip_grad >= 0) || !isfinite(cfg->clip_grad))
        return tm_error(TM_EINVAL, "--clip-grad must be a non-negative finite number");
    if (cfg->zero < 0 || cfg->zero > TM_ZERO_MAX)
        return tm_error(TM_EINVAL, "--zero is 0, 1, 2 or 3, not %d", cfg->zero);
    if (cfg->zero > 0 && cfg->dp < 2)
        return tm_error(TM_EINVAL, "--zero %d shards over the data-parallel replicas: it needs "
                        "--dp 2 or more", cfg->zero);
    if (cfg->offload != TM_OFFLOAD_NONE && cfg->host_mem_cap == 0)
        return tm_error(TM_EINVAL, "--offload %s keeps the optimizer state in host memory: it "
                        "needs --host-mem-cap", tm_offload_name(cfg->offload));
    if (cfg->offload == TM_OFFLOAD_NONE && cfg->host_mem_cap != 0)
        return tm_error(TM_EINVAL, "--host-mem-cap sizes the host memory of --offload optimizer: "
                        "it needs --offload optimizer");
    if (cfg->precision != TM_PRECISION_FP32 && cfg->precision != TM_PRECISION_BF16)
        return tm_error(TM_EINVAL, "--precision is fp32 or bf16");
    if (cfg->zero >= 2 && cfg->pp > 1 && tm_schedule_splits_backward(cfg->schedule))
        return tm_error(TM_EINVAL, "--schedule %s with --zero %d: ZeRO-2 and 3 reduce each "
                        "layer's gradients as its backward ends, before a deferred W adds "
                        "them; use --zero 1 or another schedule",
                        tm_schedule_kind_name(cfg->schedule), cfg->zero);
    int v = tm__train_chunks(cfg);
    if (cfg->virtual_stages < 0 || cfg->virtual_stages > TM_SCHEDULE_MAX_VIRTUAL)
        return tm_error(TM_EINVAL, "--virtual-stages is 1 to %d, not %d", TM_SCHEDULE_MAX_VIRTUAL,
                        cfg->virtual_stages);
    if (v > 1 && cfg->schedule != TM_SCHED_INTERLEAVED_1F1B)
        return tm_error(TM_EINVAL, "--virtual-stages %d needs --schedule interleaved-1f1b", v);
    if (v > 1 && cfg->pp < 2)
        return tm_error(TM_EINVAL, "--virtual-stages %d needs --pp 2 or more", v);
    if (v > 1 && cfg->micro_batches % cfg->pp != 0)
        return tm_error(TM_EINVAL, "--virtual-stages %d needs --micro-batches a multiple of --pp "
                        "%d (Megatron's order), not %d", v, cfg->pp, cfg->micro_batches);
    int unit[TM_MAX_LAYERS], units = tm_model_units(m, unit);
    if (v > 1 && cfg->pp * v > units)
        return tm_error(TM_EINVAL, "--pp %d x --virtual-stages %d = %d model stages, but the model "
                        "has %d %ss to cut", cfg->pp, v, cfg->pp * v, units,
                        tm_model_unit_name(m));
    if (cfg->eval_every < 0) return tm_error(TM_EINVAL, "--eval-every must be positive");
    tm_clock_config clock;
    clock_of(cfg, &clock);
    TM_CHECK(tm_clock_config_check(&clock));
    if (cfg->trace_first < 0) return tm_error(TM_EINVAL, "--trace-from must be positive");
    if (cfg->trace_steps < 0) return tm_error(TM_EINVAL, "--trace-steps must be positive");
    if (m->in_width != train->width || m->rows_per_sample != train->rows)
        return tm_error(TM_EINVAL, "--model starts with %d inputs but the data has %d",
                        m->in_width * m->rows_per_sample, train->width * train->rows);
    if (m->n_classes != train->n_classes)
        return tm_error(TM_EINVAL, "--model ends with %d outputs but the data has %d classes",
                        m->n_classes, train->n_classes);
    if (cfg->batch > train->n)
        return tm_error(TM_EINVAL, "--batch %d is larger than the %d training samples", cfg->batch,
                        train->n);
    if (cfg->fail_step < 0 ||
        (cfg->fail_step > 0 && (cfg->fail_device < 0 || cfg->fail_device >= n)))
        return tm_error(TM_EINVAL, "--fail-device must name one of the %ld devices", n);
    int first[TM_MAX_LAYERS + 1];
    TM_CHECK(tm__train_split(cfg, first));
    tm_layer_plan plan[TM_MAX_LAYERS];
    size_t params;
    for (int s = 0; s < cfg->pp * v; s++)
        TM_CHECK(tm_stage_plan(m, first[s], first[s + 1], cfg->tp, 0, plan, &params));
    int n_tied = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        int stages[TM_MAX_LAYERS], n = tied_stages(m, first, cfg->pp * v, i, stages);
        n_tied += n > 1;
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++)
                if (stages[a] % cfg->pp == stages[b] % cfg->pp)
                    return tm_error(TM_EINVAL, "--pp %d --virtual-stages %d puts model stages %d "
                                    "and %d, which share a tied tensor, on one device", cfg->pp,
                                    v, stages[a], stages[b]);
    }
    if (n_tied > MAX_TIED)
        return tm_error(TM_EINVAL, "--pp %d puts %d tied tensors on several stages; at most %d",
                        cfg->pp, n_tied, MAX_TIED);
    TM_CHECK(tm__train_host_fits(cfg, first));
    int core = 0;
    for (int l = 0; l < m->n_layers; l++) core |= m->layers[l].kind->has_core;
    if (m->recompute == TM_RECOMPUTE_SELECTIVE && !core)
        return tm_error(TM_EINVAL, "--recompute selective recomputes attention's core, and this "
                        "model has no attention: use --recompute full or none");
    return TM_OK;
}

int tm_train_predict_activations(const tm_train_config *cfg, const tm_data *train,
                                 size_t *bytes)
{
    TM_CHECK(tm_train_check(cfg, train));
    int first[TM_MAX_LAYERS + 1];
    TM_CHECK(tm__train_split(cfg, first));
    tm_schedule sched;
    TM_CHECK(tm__train_schedule(cfg, &sched));
    int st = TM_OK;
    for (int p = 0; p < cfg->pp && st == TM_OK; p++)
        for (int t = 0; t < cfg->tp && st == TM_OK; t++)
            st = tm__train_activation_peak(cfg, first, &sched, mb_rows(cfg), p, t,
                                           &bytes[p * cfg->tp + t]);
    tm_schedule_free(&sched);
    return st;
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

/* Kernels charge the device's modeled clock. */
static void charge(void *ctx, double flops, double bytes) { tm_clock_charge(ctx, flops, bytes); }

/* A tensor that several stages hold: the group of this device's twins
 * (same d and t) on those stages — Megatron's embedding group — which sums
 * its gradient every step so that the copies stay bitwise equal, and the
 * shard in this stage's buffers (under ZeRO, this replica's chunk of it). */
typedef struct {
    tm_comm *comm;
    int chunk;         /* the device's chunk that holds it */
    size_t off, count;
} tied;

#define MAX_CHUNKS TM_SCHEDULE_MAX_VIRTUAL

/* A device's whole run state. Chunk c (of n_chunks, the run's virtual
 * stages; 1 without) is model stage c * pp + p with its own parameters,
 * gradients, optimizer state (or ZeRO's shards) and buckets. */
typedef struct {
    job *j;
    tm_device *dev;
    tm_mesh mesh;
    int n_chunks;
    tm_stage *stage;   /* (n_chunks) */
    tm_zero *zero[MAX_CHUNKS]; /* --zero 1 to 3: each chunk's shards; else NULL */
    tm_offload *offload; /* --offload optimizer: the host arena, every
                            chunk's state in turn; else NULL */
    size_t n_update[MAX_CHUNKS]; /* floats the optimizer updates per chunk
                                    (its shard) */
    size_t n_updated;  /* their sum */
    int *order;        /* epoch order (host memory), stage 0 and last stage */
    int *targets;      /* device buffer for the loss's targets */
    int is_first, is_last, reporter; /* holds model stage 0, the last */
    tied tied[MAX_TIED];
    int n_tied;
    /* This epoch's modeled training time and bubble accounts. */
    double ep_modeled, ep_busy, ep_start, ep_end;
    double last_step;  /* the last step's modeled time */
} device;

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

static size_t max_of(size_t a, size_t b) { return a > b ? a : b; }

/* Allocates, block by block, what the pipeline executor holds at its peak
 * (strategies/pipeline.c), then frees it: a model that does not fit fails
 * before the first step, with the arena's report. The peak: the schedule's
 * most micro-batches in flight, each one activation block, plus during a
 * backward its scratch, the output gradient (and, on a middle stage, the
 * next one already received) and the input gradient on its way down. With
 * chunks, each block is the largest chunk's. */
static size_t peak_blocks(const device *v, int rows, size_t *size)
{
    size_t scratch = 0, dy = 0, dy2 = 0, dx = 0;
    for (int c = 0; c < v->n_chunks; c++) {
        const tm_stage *s = &v->stage[c];
        int g = c * v->mesh.pp + v->mesh.p, first = g == 0, last = g == v->mesh.pp * v->n_chunks - 1;
        size_t o = (size_t)rows * s->out_width * sizeof(float);
        scratch = max_of(scratch, max_of(tm_stage_backward_bytes(s, rows),
                                         tm_stage_forward_bytes(s, rows)));
        dy = max_of(dy, o);
        if (!last && !first) dy2 = max_of(dy2, o);
        if (!first) dx = max_of(dx, (size_t)rows * s->in_width * sizeof(float));
    }
    size_t n = 0;
    size[n++] = scratch;
    size[n++] = dy;
    if (dy2 > 0) size[n++] = dy2;
    if (dx > 0) size[n++] = dx;
    return n;
}

/* What each micro-batch in flight holds: its activations, and under a
 * split backward its W block too (held from B to W, the block's whole
 * life past B inside the micro-batch's); the largest chunk's. */
static size_t in_flight_bytes(const device *v, int rows)
{
    size_t most = 0;
    for (int c = 0; c < v->n_chunks; c++) {
        size_t w = tm_schedule_splits_backward(v->j->sched.kind)
                       ? tm_stage_wsave_bytes(&v->stage[c], rows) : 0;
        most = max_of(most, tm_stage_acts_bytes(&v->stage[c], rows) + w);
    }
    return most;
}

/* ZeRO's layer in flight: the largest chunk's (0 without ZeRO). */
static size_t zero_transient(const device *v)
{
    size_t most = 0;
    for (int c = 0; c < v->n_chunks && v->zero[c] != NULL; c++)
        most = max_of(most, tm_zero_transient_bytes(v->zero[c]));
    return most;
}

/* The most bytes a layer expanded from the bf16 copy takes while it runs
 * (masters on the host), over the chunks: one layer runs at a time. */
static size_t view_bytes(const device *v)
{
    size_t most = 0;
    for (int c = 0; c < v->n_chunks; c++)
        most = max_of(most, tm_stage_view_bytes(&v->stage[c], 1));
    return most;
}

/* The sum of those blocks: the activation bytes the pipeline holds at its
 * peak, by the formulas. */
static size_t activation_formula(const device *v, int rows)
{
    size_t size[4], n = peak_blocks(v, rows, size);
    size_t f = (size_t)tm_schedule_max_in_flight(&v->j->sched, v->mesh.p) *
               in_flight_bytes(v, rows);
    for (size_t i = 0; i < n; i++) f += size[i];
    return f;
}

/* The probe also holds ZeRO's layer in flight (tag comm) and, with the
 * masters on the host, the layer expanded from the bf16 copy (tag bf16)
 * beside them. */
static int probe_activations(device *v, int rows)
{
    size_t in_flight = (size_t)tm_schedule_max_in_flight(&v->j->sched, v->mesh.p);
    size_t size[6], n = peak_blocks(v, rows, size), n_acts = n;
    size_t comm = zero_transient(v);
    size_t view = v->j->cfg->zero == 2 ? 0 : view_bytes(v);
    if (comm > 0) size[n++] = comm;
    if (view > 0) size[n++] = view;
    void **block = calloc(in_flight + n, sizeof *block);
    if (block == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the memory probe");
    int st = TM_OK;
    for (size_t i = 0; i < in_flight + n && st == TM_OK; i++) {
        size_t bytes = i < in_flight ? in_flight_bytes(v, rows) : size[i - in_flight];
        tm_tag tag = i < in_flight + n_acts ? TM_TAG_ACTIVATION
                     : comm > 0 && i == in_flight + n_acts ? TM_TAG_COMM
                                                           : TM_TAG_BF16;
        block[i] = tm_device_alloc(v->dev, bytes, tag);
        if (block[i] == NULL) st = TM_ENOMEM;
    }
    for (size_t i = 0; i < in_flight + n; i++) tm_device_free(v->dev, block[i]);
    free(block);
    return st;
}

/* The groups of the tensors this stage shares with others, in tensor
 * order on every member. */
static int tied_groups(device *v)
{
    const tm_model *m = v->j->cfg->model;
    const tm_mesh *mesh = &v->mesh;
    for (int i = 0; i < m->n_tensors; i++) {
        int stages[TM_MAX_LAYERS], devices[TM_MAX_LAYERS], chunk = -1;
        int n = tied_stages(m, v->j->first, mesh->pp * v->n_chunks, i, stages);
        /* Model stage g is device g % pp's chunk g / pp (tm_train_check
         * keeps a tied tensor's stages on distinct devices). */
        for (int k = 0; k < n; k++) {
            devices[k] = (mesh->d * mesh->pp + stages[k] % mesh->pp) * mesh->tp + mesh->t;
            if (stages[k] % mesh->pp == mesh->p) chunk = stages[k] / mesh->pp;
        }
        if (n < 2 || chunk < 0) continue;
        tied *t = &v->tied[v->n_tied++];
        t->chunk = chunk;
        TM_CHECK(tm_comm_create(v->dev, devices, n, "emb", &t->comm));
        const tm_stage *s = &v->stage[chunk];
        for (int l = 0; l < s->n; l++)
            for (int k = 0; k < s->layer[l].layer->n_tensors; k++)
                if (s->layer[l].layer->tensor[k] == i && s->layer[l].shard[k].owned) {
                    t->off = s->layer[l].shard[k].off;
                    t->count = s->layer[l].shard[k].count;
                }
    }
    return TM_OK;
}

/* Under ZeRO: the host state's shards of chunk c (its layout, in host
 * memory) into its whole parameters (stages 1 and 2) and ZeRO's chunks. */
static int load_zero(device *v, int c)
{
    job *j = v->j;
    tm_stage *s = &v->stage[c];
    size_t n = s->n_params;
    int n_state = j->resumed ? j->state->n_opt_state : 0;
    float *buf = malloc(sizeof(float) * n * (size_t)(1 + n_state)), *state[TM_OPT_MAX_STATE];
    if (buf == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the stage's host copy");
    tm_stage_shard_from(s, j->state->params, buf);
    if (s->params != NULL) memcpy(s->params, buf, n * sizeof(float));
    for (int i = 0; i < n_state; i++) {
        state[i] = buf + (size_t)(1 + i) * n;
        tm_stage_shard_from(s, j->state->opt_state[i], state[i]);
    }
    tm_zero_load(v->zero[c], buf, n_state > 0 ? state : NULL);
    free(buf);
    return TM_OK;
}

/* The gradients of chunk c the step zeroes, clips and checks: ZeRO's, or
 * the chunk's. */
static float *step_grads(const device *v, int c, size_t *n)
{
    if (v->zero[c] != NULL) return tm_zero_grads(v->zero[c], n);
    *n = v->stage[c].n_params;
    return v->stage[c].grads;
}

/* A tied tensor's gradient as the embedding group sums it. */
static float *tied_grads(const device *v, const tied *t, size_t *count)
{
    if (v->zero[t->chunk] != NULL) return tm_zero_grad_chunk(v->zero[t->chunk], t->off, count);
    *count = t->count;
    return v->stage[t->chunk].grads + t->off;
}

/* Floats the optimizer updates on a stage without ZeRO: the shards it
 * owns (a tied tensor's copy on another stage is updated there). */
static size_t updated_floats(const tm_stage *s)
{
    size_t n = 0;
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->layer[i].layer->n_tensors; k++)
            if (s->layer[i].shard[k].owned) n += s->layer[i].shard[k].count;
    return n;
}

/* The memory formulas of README's "ZeRO" for this device. */
static void memory_formulas(device *v, int rows, tm_device_report *rep)
{
    const tm_train_config *cfg = v->j->cfg;
    tm_optim_config opt = optim_of(cfg);
    size_t n_params = 0;
    for (int c = 0; c < v->n_chunks; c++) n_params += v->stage[c].n_params;
    double psi = (double)n_params, dp = cfg->dp, k = tm_optimizer_state_count(&opt);
    double param = 4 * psi, grad = 4 * psi, state = 4 * k * psi;
    if (cfg->zero >= 1) state /= dp;
    if (cfg->zero >= 2) grad /= dp;
    if (cfg->zero >= 3) param /= dp;
    rep->psi = n_params;
    int bf16 = cfg->precision == TM_PRECISION_BF16;
    int host = tm_offload_on_host(cfg->offload, bf16, TM_TAG_OPTIMIZER);
    int masters = tm_offload_on_host(cfg->offload, bf16, TM_TAG_PARAM);
    rep->host_formula = (host ? state : 0) + (masters ? 4 * psi / (cfg->zero > 0 ? dp : 1) : 0);
    rep->state_formula = (masters ? 0 : param) + grad + (host ? 0 : state);
    /* Each updated parameter's gradient out (4 bytes), and the parameter
     * back: 4 bytes, or its bf16 rounding (2) with the masters on the host. */
    rep->step_host_analytic =
        cfg->offload != TM_OFFLOAD_NONE ? (masters ? 6 : 8) * (double)v->n_updated : 0;
    rep->comm_formula = (double)zero_transient(v);
    size_t targets = v->is_last ? sizeof(int) * (size_t)rows : 0;
    /* The bf16 copy of what the device keeps of the parameters (ZeRO-3:
     * none, or with the masters on the host their shard's), and the layer
     * in flight expanded from it (ZeRO-2 and 3 run every layer on their
     * own view, tag comm). */
    rep->bf16_formula = (v->stage[0].params16 != NULL ? 2 * psi : masters ? 2 * psi / dp : 0) +
                        (cfg->zero == 2 ? 0 : (double)view_bytes(v));
    rep->peak_formula = rep->state_formula + rep->comm_formula + rep->bf16_formula +
                        (double)(activation_formula(v, rows) + targets);
}

/* Chunk c's stage (and under ZeRO its shards' sizes): model stage
 * c * pp + p, its layers first[g] .. first[g+1]-1. */
static int create_chunk(device *v, int c, int n_state, int on_host, int masters)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    int g = c * v->mesh.pp + v->mesh.p, zs = cfg->zero;
    tm_stage *s = &v->stage[c];
    if (zs > 0) {
        TM_CHECK(tm_stage_create_parts(s, v->dev, v->mesh.tp_comm, cfg->model, j->first[g],
                                       j->first[g + 1], zs < 3 && !masters, zs < 2));
        /* ZeRO-1 and 2 with the masters on the host keep the chunk's whole
         * bf16 copy (filled by tm_zero_load); ZeRO-3 its shards'. */
        s->params_on_host = masters && zs < 3;
        if (s->params_on_host) TM_CHECK(tm_stage_set_precision(s, cfg->precision));
        v->n_update[c] = tm_zero_shard_floats(s->layer, s->n, cfg->dp);
    } else if (masters) {
        TM_CHECK(tm_stage_create_parts(s, v->dev, v->mesh.tp_comm, cfg->model, j->first[g],
                                       j->first[g + 1], 0, 1));
        v->n_update[c] = updated_floats(s);
    } else {
        TM_CHECK(tm_stage_create(s, v->dev, v->mesh.tp_comm, cfg->model, j->first[g],
                                 j->first[g + 1], on_host ? 0 : n_state));
        v->n_update[c] = updated_floats(s);
    }
    return TM_OK;
}

/* Chunk c's weights (and, resuming, optimizer state) from the host state;
 * host_state: the host arena's buffers at this chunk's part (offload) or
 * NULL; masters: the host arena's fp32 masters at this chunk's part
 * (offload in bf16) or NULL. */
static int load_chunk(device *v, int c, int n_state, float *const *host_state, float *masters)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    tm_stage *s = &v->stage[c];
    if (cfg->zero > 0) {
        TM_CHECK(tm_zero_create(&v->zero[c], s, v->mesh.dp_comm, cfg->zero, n_state, host_state,
                                masters));
        return load_zero(v, c);
    }
    if (host_state != NULL) {
        /* The chunk's optimizer state, and in bf16 its parameters (the fp32
         * masters: the device keeps their bf16 copy), are the host arena's
         * (same layout); run() hands them back before the stage frees its
         * own buffers. */
        for (int i = 0; i < n_state; i++) s->opt_state[i] = host_state[i];
        s->n_opt_state = n_state;
    }
    if (masters != NULL) {
        s->params = masters;
        s->params_on_host = 1;
    }
    tm_stage_shard_from(s, j->state->params, s->params);
    for (int i = 0; j->resumed && i < s->n_opt_state; i++)
        tm_stage_shard_from(s, j->state->opt_state[i], s->opt_state[i]);
    return TM_OK;
}

static int setup(device *v)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    /* The GEMM libraries' warm-up (wall time only): a dry run runs none. */
    if (!cfg->dry_run) tm_gemm_thread_init();
    tm_cost_set_hook(charge, v->dev);
    tm_cost_set_dry(cfg->dry_run);
    TM_CHECK(tm_mesh_create(v->dev, cfg->dp, cfg->pp, cfg->tp, &v->mesh));
    int p = v->mesh.p;
    v->is_first = p == 0;
    v->is_last = p == cfg->pp - 1;
    v->reporter = v->mesh.d == 0 && v->is_last && v->mesh.t == 0;
    char name[48];
    snprintf(name, sizeof name, "device %d (dp%d pp%d tp%d)", tm_device_id(v->dev), v->mesh.d, p,
             v->mesh.t);
    tm_clock_set_name(v->dev, name);
    tm_optim_config opt = optim_of(cfg);
    int n_state = tm_optimizer_state_count(&opt);
    int bf16 = cfg->precision == TM_PRECISION_BF16;
    int on_host = tm_offload_on_host(cfg->offload, bf16, TM_TAG_OPTIMIZER);
    /* bf16 under offload: the fp32 masters live in the host arena too. */
    int masters = tm_offload_on_host(cfg->offload, bf16, TM_TAG_PARAM);
    v->stage = calloc((size_t)tm__train_chunks(cfg), sizeof *v->stage);
    if (v->stage == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the device's chunks");
    v->n_chunks = tm__train_chunks(cfg);
    for (int c = 0; c < v->n_chunks; c++) {
        TM_CHECK(create_chunk(v, c, n_state, on_host, masters));
        v->n_updated += v->n_update[c];
    }
    /* Offload: one host arena, its state buffers (and masters) cut into the
     * chunks' parts (ZeRO's shards, or the chunks' whole state). */
    float *host_state[TM_OPT_MAX_STATE] = {NULL, NULL}, *host_masters = NULL;
    size_t host_n = 0;
    for (int c = 0; c < v->n_chunks; c++)
        host_n += cfg->zero > 0 ? v->n_update[c] : v->stage[c].n_params;
    if (on_host) {
        TM_CHECK(tm_offload_create(&v->offload, v->dev, cfg->host_mem_cap, n_state, host_n,
                                   masters));
        tm_offload_state(v->offload, host_state);
        if (masters) host_masters = tm_offload_masters(v->offload);
    }
    size_t off = 0;
    for (int c = 0; c < v->n_chunks; c++) {
        float *part[TM_OPT_MAX_STATE] = {NULL, NULL};
        for (int i = 0; on_host && i < n_state; i++) part[i] = host_state[i] + off;
        TM_CHECK(load_chunk(v, c, n_state, on_host ? part : NULL,
                            host_masters != NULL ? host_masters + off : NULL));
        off += cfg->zero > 0 ? v->n_update[c] : v->stage[c].n_params;
        TM_CHECK(tm_stage_set_precision(&v->stage[c], cfg->precision));
    }
    int rows = mb_rows(cfg);
    if (v->is_last) {
        v->targets = tm_device_alloc(v->dev, sizeof(int) * (size_t)rows, TM_TAG_ACTIVATION);
        if (v->targets == NULL) return TM_ENOMEM;
    }
    if (v->is_first || v->is_last) {
        v->order = malloc(sizeof(int) * (size_t)j->train->n);
        if (v->order == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the data order");
    }
    TM_CHECK(tied_groups(v));
    TM_CHECK(probe_activations(v, rows));
    tm_arena_reset_peak(tm_device_arena(v->dev));
    if (v->offload != NULL) tm_offload_reset_peak(v->offload);
    double tied_bytes = 0;
    for (int i = 0; i < v->n_tied; i++) {
        size_t count;
        tied_grads(v, &v->tied[i], &count);
        tied_bytes += tm_allreduce_send_bytes(v->tied[i].comm, count);
    }
    tm_device_report *rep = &j->result->devices[tm_device_id(v->dev)];
    TM_CHECK(tm__train_activation_peak(cfg, j->first, &j->sched, rows, p, v->mesh.t,
                                       &rep->activation_formula));
    tm__train_formulas(cfg, v->stage, v->zero, &v->mesh, rows, tied_bytes, rep);
    for (int c = 0; c < v->n_chunks; c++)
        rep->acts_per_mb = max_of(rep->acts_per_mb, tm_stage_acts_bytes(&v->stage[c], rows));
    memory_formulas(v, rows, rep);
    return TM_OK;
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
        float *grads = step_grads(v, c, &n_grads);
        memset(grads, 0, n_grads * sizeof(float));
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
                           .rows = mb_rows(cfg), .load_input = load_input, .loss = loss,
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
        float *g = tied_grads(v, &v->tied[i], &count);
        TM_CHECK(tm_allreduce(v->tied[i].comm, g, g, count, TM_SUM));
    }
    *grad_norm = -1;
    if (cfg->clip_grad > 0) TM_CHECK(clip_grads(v, grad_norm));
    tm_optim_config opt = optim_of(cfg);
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
                const float *grads = step_grads(v, c, &n_grads);
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

/* Under ZeRO: replica 0 gathers chunk c's parameters (stage 3) and
 * optimizer state from every replica into host buffers in the chunk's
 * layout (*host: NULL on the other replicas, which only send). */
static int gather_zero(device *v, int c, float **host, float **state)
{
    size_t n = v->stage[c].n_params;
    int n_state = v->j->state->n_opt_state;
    *host = NULL;
    if (v->mesh.d == 0) {
        *host = malloc(sizeof(float) * n * (size_t)(1 + n_state));
        if (*host == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the stage's host copy");
        for (int i = 0; i < n_state; i++) state[i] = *host + (size_t)(1 + i) * n;
    }
    return tm_zero_store(v->zero[c], *host, *host != NULL ? state : NULL);
}

/* Copies chunk c's shards back into the host model state: replica 0 only
 * (under ZeRO, after gathering the other replicas' chunks), and the parts
 * every tp rank holds whole from rank 0 only. */
static int store_chunk(device *v, int c)
{
    job *j = v->j;
    const tm_stage *s = &v->stage[c];
    float *host = NULL, *state[TM_OPT_MAX_STATE];
    for (int i = 0; i < TM_OPT_MAX_STATE; i++) state[i] = s->opt_state[i];
    int st = v->zero[c] != NULL ? gather_zero(v, c, &host, state) : TM_OK;
    if (st != TM_OK || v->mesh.d != 0) {
        free(host);
        return st;
    }
    int shared = v->mesh.t == 0;
    tm_stage_shard_to(s, s->params != NULL ? s->params : host, j->state->params, shared);
    if (j->owned != NULL) {
        float *ones = malloc(sizeof(float) * s->n_params);
        if (ones == NULL) {
            free(host);
            return tm_error(TM_EHOSTMEM, "cannot allocate the ownership marks");
        }
        for (size_t i = 0; i < s->n_params; i++) ones[i] = 1;
        tm_stage_shard_to(s, ones, j->owned, shared);
        free(ones);
    }
    for (int i = 0; i < j->state->n_opt_state; i++)
        tm_stage_shard_to(s, state[i], j->state->opt_state[i], shared);
    free(host);
    return TM_OK;
}

/* Every chunk's shards back into the host model state. */
static int store(device *v)
{
    /* Every device has read its initial shard before any writes back. */
    TM_CHECK(tm_barrier(tm_device_comm(v->dev)));
    for (int c = 0; c < v->n_chunks; c++) TM_CHECK(store_chunk(v, c));
    return TM_OK;
}

static int run(tm_device *dev, void *arg)
{
    device v = {.j = arg, .dev = dev};
    int st = setup(&v);
    if (st == TM_OK) st = train_loop(&v);
    if (st == TM_OK && (v.j->cfg->save_path != NULL || v.j->cfg->keep_params)) st = store(&v);
    tm_device_report *rep = &v.j->result->devices[tm_device_id(dev)];
    rep->id = tm_device_id(dev);
    rep->d = v.mesh.d;
    rep->p = v.mesh.p;
    rep->t = v.mesh.t;
    free(v.order);
    tm_device_free(dev, v.targets);
    tm_cost_set_hook(NULL, NULL);
    tm_cost_set_dry(0);
    for (int c = 0; c < v.n_chunks; c++) tm_zero_destroy(v.zero[c]);
    if (v.offload != NULL) {
        tm_offload_stats(v.offload, &rep->host_memory);
        /* The chunks' optimizer state (and host masters) were the host
         * arena's, not their own. */
        for (int c = 0; c < v.n_chunks; c++) {
            for (int i = 0; i < v.stage[c].n_opt_state; i++) v.stage[c].opt_state[i] = NULL;
            v.stage[c].n_opt_state = 0;
            if (v.stage[c].params_on_host) v.stage[c].params = NULL;
        }
    }
    tm_offload_destroy(v.offload);
    for (int c = 0; c < v.n_chunks; c++) tm_stage_destroy(&v.stage[c]);
    free(v.stage);
    for (int i = 0; i < v.n_tied; i++) tm_comm_destroy(v.tied[i].comm);
    tm_mesh_destroy(&v.mesh);
    tm_arena_stats_get(tm_device_arena(dev), &rep->memory);
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
    tm_optim_config opt = optim_of(cfg);
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
    clock_of(cfg, &wc.clock);
    wc.stop = j.stop;
    if (st == TM_OK) st = tm_world_create(&w, &wc);
    int split = st == TM_OK && tm_world_device_count_local(w) < n;
    /* Across processes the one that runs the reporting device writes the
     * checkpoint and the trace, once. */
    if (split && !tm_world_is_local(w, (cfg->pp - 1) * cfg->tp)) {
        tm_outfile_abandon(save);
        tm_outfile_abandon(trace);
        save = trace = NULL;
    }
    if (split && (cfg->save_path != NULL || cfg->keep_params)) {
        j.owned = calloc(state.n_params, sizeof(float));
        if (j.owned == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate the ownership marks");
    }
    if (st != TM_OK) {
        snprintf(error, error_size, "%s", tm_error_message());
    } else {
        out->ran = 1;
        st = tm_world_run(w, run, &j);
        if (st != TM_OK) snprintf(error, error_size, "%s", tm_world_error(w));
        if (st == TM_OK) st = tm__train_share(w, cfg, out, &state, j.owned, j.stop);
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
    if (st == TM_OK && cfg->keep_params) {
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
    free(j.owned);
    tm_stop_destroy(j.stop);
    tm_model_state_free(&state);
    tm_schedule_free(&j.sched);
    return st;
}
