#include "strategies/report.h"

#include <stdlib.h>
#include <string.h>

void tm_report_bytes(double bytes, char *buf, size_t n)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB"};
    int u = 0;
    while (bytes >= 1024 && u < 3) bytes /= 1024, u++;
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", bytes, unit[u]);
}

/* A run whose devices span processes names each device's process too. */
static int spans(const tm_train_result *r)
{
    return r->n_devices > 0 && r->devices[r->n_devices - 1].process > 0;
}

static int coords_width(const tm_train_result *r) { return spans(r) ? 13 : 9; }
static const char *coords_head(const tm_train_result *r)
{
    return spans(r) ? "(d,p,t) proc" : "(d,p,t)";
}

static void coords(const tm_train_result *r, const tm_device_report *d, char *buf, size_t n)
{
    if (spans(r))
        snprintf(buf, n, "(%d,%d,%d) p%d", d->d, d->p, d->t, d->process);
    else
        snprintf(buf, n, "(%d,%d,%d)", d->d, d->p, d->t);
}

void tm_report_memory(FILE *f, const tm_train_result *r, size_t cap)
{
    char b[32], c[32];
    tm_report_bytes((double)cap, b, sizeof b);
    fprintf(f, "peak memory per device (capacity %s):\n%-8s %-*s", b, "device",
            coords_width(r), coords_head(r));
    for (int t = 0; t < TM_TAG_COUNT; t++) fprintf(f, " %11s", tm_tag_name((tm_tag)t));
    fprintf(f, " %11s %11s %11s %9s %11s\n", "total", "sent", "acts/mb", "in flight",
            "act.formula");
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        coords(r, d, c, sizeof c);
        fprintf(f, "%-8d %-*s", d->id, coords_width(r), c);
        for (int t = 0; t < TM_TAG_COUNT; t++) {
            /* The host tag lives in the host arena (optimizer offload). */
            size_t v = t == TM_TAG_HOST ? d->host_memory.peak : d->memory.tag_peak[t];
            tm_report_bytes((double)v, b, sizeof b);
            fprintf(f, " %11s", b);
        }
        tm_report_bytes((double)d->memory.peak, b, sizeof b);
        fprintf(f, " %11s", b);
        tm_report_bytes((double)d->sent_bytes, b, sizeof b);
        fprintf(f, " %11s", b);
        tm_report_bytes((double)d->acts_per_mb, b, sizeof b);
        fprintf(f, " %11s %9d", b, d->max_in_flight);
        tm_report_bytes((double)d->activation_formula, b, sizeof b);
        fprintf(f, " %11s\n", b);
    }
    fprintf(f, "total: the device's peak; host: the host arena's peak (--offload), never "
               "counted in it\n");
    fprintf(f, "acts/mb: what the stage stores for one micro-batch until its backward, by the "
               "layers' formulas (README); act.formula: the activation peak worked out before "
               "the run from them and the schedule: in flight x acts/mb + the transient "
               "buffers of a forward or a backward\n");
}

static double pct(double part, double whole) { return whole > 0 ? 100 * part / whole : 0; }

/* The device's parameter, gradient and optimizer peaks together. */
static double state_peak(const tm_device_report *d)
{
    const size_t *p = d->memory.tag_peak;
    return (double)(p[TM_TAG_PARAM] + p[TM_TAG_GRAD] + p[TM_TAG_OPTIMIZER]);
}

/* The paper's per-device formula of a ZeRO stage in fp32 terms, k
 * optimizer state buffers of 4 bytes per parameter and `param` bytes per
 * parameter of fp32 weights on the device (0: the masters offloaded). */
static void zero_formula(char *buf, size_t n, int stage, int k, int param)
{
    int whole[] = {param + 4 + 4 * k, param + 4, param, 0};
    int shard[] = {0, 4 * k, 4 + 4 * k, param + 4 + 4 * k};
    if (shard[stage] == 0) snprintf(buf, n, "%d psi", whole[stage]);
    else if (whole[stage] == 0) snprintf(buf, n, "%d psi / dp", shard[stage]);
    else snprintf(buf, n, "%d psi + %d psi / dp", whole[stage], shard[stage]);
}

void tm_report_zero(FILE *f, const tm_train_result *r, const tm_train_config *cfg)
{
    char form[48], b[6][32];
    int k = cfg->optimizer == TM_OPT_ADAMW ? 2 : cfg->momentum != 0.0;
    /* Offloaded optimizer state is the host's (tm_report_offload). */
    int bf16 = cfg->precision == TM_PRECISION_BF16;
    int host = tm_offload_on_host(cfg->offload, bf16, TM_TAG_OPTIMIZER);
    int masters = tm_offload_on_host(cfg->offload, bf16, TM_TAG_PARAM);
    zero_formula(form, sizeof form, cfg->zero, host ? 0 : k, masters ? 0 : 4);
    fprintf(f, "memory against the formulas, ZeRO-%d over dp=%d: parameters, gradients and "
               "optimizer state = %s%s (psi: the device's parameters)\n%-8s %-*s %10s %11s %11s "
               "%6s %11s %11s %11s %11s %6s\n", cfg->zero, cfg->dp, form,
            masters ? " on the device (the optimizer state and fp32 masters offloaded)"
            : host  ? " on the device (the optimizer state offloaded)"
                    : "",
            "device",
            coords_width(r), coords_head(r), "psi", "state", "formula", "diff", "comm",
            "in flight", "peak", "formula", "diff");
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        const size_t *p = d->memory.tag_peak;
        double state = state_peak(d);
        char c[32];
        coords(r, d, c, sizeof c);
        tm_report_bytes(state, b[0], sizeof b[0]);
        tm_report_bytes(d->state_formula, b[1], sizeof b[1]);
        tm_report_bytes((double)p[TM_TAG_COMM], b[2], sizeof b[2]);
        tm_report_bytes(d->comm_formula, b[3], sizeof b[3]);
        tm_report_bytes((double)d->memory.peak, b[4], sizeof b[4]);
        tm_report_bytes(d->peak_formula, b[5], sizeof b[5]);
        fprintf(f, "%-8d %-*s %10zu %11s %11s %+5.1f%% %11s %11s %11s %11s %+5.1f%%\n", d->id,
                coords_width(r), c, d->psi, b[0], b[1], pct(state - d->state_formula,
                d->state_formula), b[2], b[3], b[4], b[5],
                pct((double)d->memory.peak - d->peak_formula, d->peak_formula));
    }
    fprintf(f, "state: the param, grad and optimizer peaks (chunks of ceil(n/dp) floats per "
               "tensor); comm: ZeRO's layer in flight, by formula; peak formula: state + "
               "activations at the pipeline's peak + the layer in flight + the bf16 weight copy\n");
    if (!r->recorded || cfg->zero == 0) return;
    double sent = 0, ar = 0;
    for (int i = 0; i < r->n_devices; i++) {
        sent += (double)r->devices[i].step_sent[TM_DIM_DP];
        ar += r->devices[i].step_allreduce;
    }
    static const char *paper[] = {"", "1 (reduce-scatter + all-gather)",
                                  "1 with one micro-batch ((m+1)/2 with m)",
                                  "1.5 with one micro-batch (1.5 m with m)"};
    tm_report_bytes(sent, b[0], sizeof b[0]);
    tm_report_bytes(ar, b[1], sizeof b[1]);
    fprintf(f, "dp bytes of the recorded step: %s, plain data parallelism's all-reduce %s: "
               "x%.3f (the paper: %s)\n", b[0], b[1], ar > 0 ? sent / ar : 0, paper[cfg->zero]);
}

void tm_report_offload(FILE *f, const tm_train_result *r, const tm_train_config *cfg)
{
    char b[8][32];
    int masters = tm_offload_on_host(cfg->offload, cfg->precision == TM_PRECISION_BF16,
                                     TM_TAG_PARAM);
    fprintf(f, "optimizer offload (%s) against the formulas: host = the optimizer state's "
               "bytes%s; device = %s%s; host traffic per step = 4 bytes per gradient out + %d "
               "per parameter back%s, for each parameter the device updates\n"
               "%-8s %-*s %11s %11s %6s %11s %11s %6s %11s %11s %11s %11s %9s\n",
            tm_offload_name(cfg->offload), masters ? " + the fp32 master weights'" : "",
            masters ? "gradients" : "parameters + gradients",
            cfg->zero > 0 ? " (ZeRO's shards)" : "", masters ? 2 : 4,
            masters ? " (rounded to bf16 on the host)" : "", "device",
            coords_width(r), coords_head(r), "host", "formula", "diff", "device", "formula",
            "diff", "peak", "formula", "host sent", "formula", "host ms");
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        double state = state_peak(d);
        char c[32];
        coords(r, d, c, sizeof c);
        tm_report_bytes((double)d->host_memory.peak, b[0], sizeof b[0]);
        tm_report_bytes(d->host_formula, b[1], sizeof b[1]);
        tm_report_bytes(state, b[2], sizeof b[2]);
        tm_report_bytes(d->state_formula, b[3], sizeof b[3]);
        tm_report_bytes((double)d->memory.peak, b[4], sizeof b[4]);
        tm_report_bytes(d->peak_formula, b[5], sizeof b[5]);
        tm_report_bytes((double)d->step_host, b[6], sizeof b[6]);
        tm_report_bytes(d->step_host_analytic, b[7], sizeof b[7]);
        fprintf(f, "%-8d %-*s %11s %11s %+5.1f%% %11s %11s %+5.1f%% %11s %11s %11s %11s %9.3f\n",
                d->id, coords_width(r), c, b[0], b[1],
                pct((double)d->host_memory.peak - d->host_formula, d->host_formula), b[2], b[3],
                pct(state - d->state_formula, d->state_formula), b[4], b[5], b[6], b[7],
                1e3 * d->step_host_s);
    }
    fprintf(f, "device: the param, grad and optimizer peaks (optimizer 0 when offloaded); peak "
               "formula: device + activations at the pipeline's peak + ZeRO's layer in flight; "
               "host sent and host ms: the recorded step's bytes over the host link (both "
               "ways) and their modeled time (bytes / link bandwidth)\n");
}

void tm_report_modeled(FILE *f, const tm_train_result *r, const tm_train_config *cfg)
{
    if (r->steps == 0) return;
    fprintf(f, "modeled time: %.0f samples/s (step %.3f ms), wall %.0f samples/s (step %.3f ms)",
            r->modeled_samples_per_s, 1e3 * r->modeled_seconds / r->steps, r->samples_per_s,
            1e3 * r->train_seconds / r->steps);
    if (r->bubble >= 0) fprintf(f, ", bubble %.1f%%", 100 * r->bubble);
    fprintf(f, "\n%-8s %-*s %10s %8s %8s %8s %8s\n", "device", coords_width(r), coords_head(r),
            "step ms", "compute", "comm", "idle", "sending");
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        char c[32];
        coords(r, d, c, sizeof c);
        double s = d->modeled_s;
        fprintf(f, "%-8d %-*s %10.3f %7.1f%% %7.1f%% %7.1f%% %7.1f%%\n", d->id, coords_width(r), c,
                1e3 * s / r->steps, pct(d->compute_s, s), pct(d->comm_s, s), pct(d->idle_s, s),
                pct(d->comm_busy_s, s));
    }
    fprintf(f, "compute: kernels; comm: waiting for own transfers; idle: waiting for other "
               "devices; sending: the communication and copy engines' time on links, "
               "overlapped or not (dp=%d pp=%d tp=%d)\n", cfg->dp, cfg->pp, cfg->tp);
}

static const char *dim_name[TM_DIMS] = {"dp", "pp", "tp"};

/* The mesh dimension a link runs along, or -1 (a world-communicator link). */
static int link_dim(const tm_train_result *r, const tm_link_stats *l)
{
    const tm_device_report *a = &r->devices[l->src], *b = &r->devices[l->dst];
    int dd = a->d != b->d, dp = a->p != b->p, dt = a->t != b->t;
    if (dd + dp + dt != 1) return -1;
    return dd ? TM_DIM_DP : dp ? TM_DIM_PP : TM_DIM_TP;
}

static void cell(FILE *f, uint64_t measured, double analytic)
{
    char a[32], b[32];
    tm_report_bytes((double)measured, a, sizeof a);
    tm_report_bytes(analytic, b, sizeof b);
    fprintf(f, " %11s %11s", a, b);
}

/* The recorded step's bytes per device and dimension against the formulas. */
static void step_traffic(FILE *f, const tm_train_result *r, const tm_train_config *cfg,
                         long first)
{
    fprintf(f, "bytes sent in training step %ld, measured against the formula:\n%-8s %-*s", first,
            "device", coords_width(r), coords_head(r));
    int host = cfg->offload != TM_OFFLOAD_NONE;
    for (int k = 0; k < TM_DIMS; k++) fprintf(f, " %8s meas.  formula", dim_name[k]);
    if (host) fprintf(f, " %8s meas.  formula", "host");
    fputc('\n', f);
    uint64_t tot[TM_DIMS] = {0}, host_tot = 0;
    double ana[TM_DIMS] = {0}, host_ana = 0;
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        char c[32];
        coords(r, d, c, sizeof c);
        fprintf(f, "%-8d %-*s", d->id, coords_width(r), c);
        for (int k = 0; k < TM_DIMS; k++) {
            cell(f, d->step_sent[k], d->step_analytic[k]);
            tot[k] += d->step_sent[k];
            ana[k] += d->step_analytic[k];
        }
        if (host) cell(f, d->step_host, d->step_host_analytic);
        host_tot += d->step_host;
        host_ana += d->step_host_analytic;
        fputc('\n', f);
    }
    fprintf(f, "%-18s", "total");
    for (int k = 0; k < TM_DIMS; k++) cell(f, tot[k], ana[k]);
    if (host) cell(f, host_tot, host_ana);
    fprintf(f, "\nformulas: dp: each gradient bucket once, ring 2(n-1)/n x bytes (direct, under "
               "16 KiB: (n-1) x bytes), + the loss's all-gather; pp: every micro-batch's "
               "activations forward and gradients back; tp: ring all-reduce 2(n-1)/n, all-gather "
               "(n-1)/n of each collective's bytes%s\n",
            !host ? ""
            : cfg->precision == TM_PRECISION_BF16
                ? "; host (--offload, the host link, both ways): 4 bytes per gradient out and "
                  "2 per parameter back (its bf16 rounding) for each parameter the device updates"
                : "; host (--offload, the host link, both ways): 4 bytes per gradient out and "
                  "4 per parameter back for each parameter the device updates");
    if (cfg->zero > 0)
        fprintf(f, "ZeRO-%d: dp sends no bucket all-reduce but per tensor of n floats "
                   "(dp-1) ceil(n/dp) x 4 bytes per reduce-scatter or all-gather: %s\n",
                cfg->zero, cfg->zero == 1 ? "one of each per step"
                : cfg->zero == 2 ? "a reduce-scatter per micro-batch, an all-gather per step"
                                 : "a reduce-scatter and two all-gathers per micro-batch");
}

void tm_report_traffic(FILE *f, const tm_train_result *r, const tm_train_config *cfg,
                       int every_link)
{
    long first = cfg->trace_first > 0 ? cfg->trace_first : 1;
    if (r->recorded)
        step_traffic(f, r, cfg, first);
    else
        fprintf(f, "no step recorded: --trace-from %ld is past this run's %ld step%s\n", first,
                r->steps, r->steps == 1 ? "" : "s");
    /* A few links read at a glance; more (8 devices of 3D already use 28)
     * are summed by dimension unless every one is asked for. */
    int by_link = every_link || r->n_links <= 8;
    fprintf(f, "links over the whole run (training and evaluation)%s:\n",
            by_link ? "" : ", by mesh dimension");
    fprintf(f, "%-14s %-6s %12s %10s\n", by_link ? "link" : "dimension", "dim", "bytes",
            "messages");
    uint64_t bytes[TM_DIMS + 1] = {0}, msgs[TM_DIMS + 1] = {0};
    int links[TM_DIMS + 1] = {0};
    for (int i = 0; i < r->n_links; i++) {
        const tm_link_stats *l = &r->links[i];
        int k = link_dim(r, l), slot = k < 0 ? TM_DIMS : k;
        bytes[slot] += l->bytes;
        msgs[slot] += l->messages;
        links[slot]++;
        if (!by_link) continue;
        char name[32], b[32];
        snprintf(name, sizeof name, "%d -> %d", l->src, l->dst);
        tm_report_bytes((double)l->bytes, b, sizeof b);
        fprintf(f, "%-14s %-6s %12s %10llu\n", name, k < 0 ? "world" : dim_name[k], b,
                (unsigned long long)l->messages);
    }
    if (by_link) return;
    for (int k = 0; k <= TM_DIMS; k++) {
        if (links[k] == 0) continue;
        char name[32], b[32];
        snprintf(name, sizeof name, "%d links", links[k]);
        tm_report_bytes((double)bytes[k], b, sizeof b);
        fprintf(f, "%-14s %-6s %12s %10llu\n", name, k == TM_DIMS ? "world" : dim_name[k], b,
                (unsigned long long)msgs[k]);
    }
}

void tm_report_timeline(FILE *f, const tm_train_result *r, const tm_train_config *cfg)
{
    if (r->n_timeline == 0) return;
    tm_schedule s;
    if (tm_schedule_make_virtual(&s, cfg->schedule, cfg->pp, cfg->micro_batches,
                                 cfg->virtual_stages > 1 ? cfg->virtual_stages : 1) != 0)
        return;
    tm_sched_event *ev = malloc(sizeof *ev * (size_t)r->n_timeline);
    if (ev == NULL) {
        tm_schedule_free(&s);
        return;
    }
    for (int i = 0; i < r->n_timeline; i++) {
        ev[i] = r->timeline[i];
        ev[i].start *= 1e6;
        ev[i].end *= 1e6;
    }
    double makespan = r->timeline_makespan * 1e6;
    int width = tm_schedule_draw_width(ev, r->n_timeline, makespan);
    if (width > 100) width = 100;
    long first = cfg->trace_first > 0 ? cfg->trace_first : 1;
    fprintf(
        f, "pipeline timeline of training step %ld (modeled microseconds; replica 0, tp rank 0):\n",
        first);
    tm_schedule_draw(f, &s, ev, r->n_timeline, makespan, width);
    free(ev);
    tm_schedule_free(&s);
}
