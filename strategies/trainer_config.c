/* What derives from a run's configuration before anything runs: its
 * checks (tm_train_check), its model stages, schedule, optimizer, clock and
 * learning rate, and the activation peaks it predicts. */
#include "strategies/trainer.h"

#include <math.h>

#include "runtime/status.h"
#include "strategies/trainer_internal.h"
#include "strategies/zero.h"

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

int tm_train_reporter(const tm_train_config *cfg) { return (cfg->pp - 1) * cfg->tp; }

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

tm_optim_config tm__train_optim(const tm_train_config *cfg)
{
    return (tm_optim_config){cfg->optimizer, cfg->momentum, cfg->weight_decay, cfg->beta1,
                             cfg->beta2, 1e-8};
}

int tm__train_rows(const tm_train_config *cfg)
{
    return cfg->batch / cfg->dp / cfg->micro_batches * cfg->model->rows_per_sample;
}

void tm__train_clock(const tm_train_config *cfg, tm_clock_config *out)
{
    const tm_clock_config *c = &cfg->clock;
    if (c->device_gflops == 0 && c->device_gbps == 0 && c->link_gbps == 0 &&
        c->link_latency_us == 0 && c->devices_per_node == 0 && c->inter_node_gbps == 0 &&
        c->inter_node_latency_us == 0)
        tm_clock_config_default(out);
    else
        *out = cfg->clock;
}

int tm__train_tied_stages(const tm_model *m, const int *first, int n_stages, int i, int *stages)
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
    tm_optim_config opt = tm__train_optim(cfg);
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
    tm__train_clock(cfg, &clock);
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
        int stages[TM_MAX_LAYERS], n = tm__train_tied_stages(m, first, cfg->pp * v, i, stages);
        n_tied += n > 1;
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++)
                if (stages[a] % cfg->pp == stages[b] % cfg->pp)
                    return tm_error(TM_EINVAL, "--pp %d --virtual-stages %d puts model stages %d "
                                    "and %d, which share a tied tensor, on one device", cfg->pp,
                                    v, stages[a], stages[b]);
    }
    if (n_tied > TM__TRAIN_MAX_TIED)
        return tm_error(TM_EINVAL, "--pp %d puts %d tied tensors on several stages; at most %d",
                        cfg->pp, n_tied, TM__TRAIN_MAX_TIED);
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
            st = tm__train_activation_peak(cfg, first, &sched, tm__train_rows(cfg), p, t,
                                           &bytes[p * cfg->tp + t]);
    tm_schedule_free(&sched);
    return st;
}
