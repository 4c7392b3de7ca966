/* The run report's page: configuration and outcome, the loss curve and the
 * modeled time per device; report_html_devices.c draws the rest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/report_html_internal.h"
#include "strategies/svg.h"

/* p (n elements of `size` bytes, capacity *cap) with room for one more:
 * p itself or its reallocation (the capacity doubled from `first`); NULL
 * with h->failed set, p left as it was, when that fails. */
static void *grow(tm_loss_history *h, void *p, long *cap, long n, size_t size, long first)
{
    if (n < *cap) return p;
    long c = *cap ? 2 * *cap : first;
    void *q = realloc(p, size * (size_t)c);
    if (q == NULL) {
        h->failed = 1;
        return NULL;
    }
    *cap = c;
    return q;
}

void tm_loss_history_step(tm_loss_history *h, long step, double loss)
{
    tm_loss_point *p = grow(h, h->train, &h->cap_train, h->n_train, sizeof *p, 1024);
    if (p == NULL) return;
    h->train = p;
    p[h->n_train++] = (tm_loss_point){step, loss};
}

void tm_loss_history_eval(tm_loss_history *h, long step, int epoch, double loss, double acc)
{
    tm_eval_point *p = grow(h, h->evals, &h->cap_evals, h->n_evals, sizeof *p, 64);
    if (p == NULL) return;
    h->evals = p;
    p[h->n_evals++] = (tm_eval_point){step, epoch, loss, acc};
}

void tm_loss_history_free(tm_loss_history *h)
{
    free(h->train);
    free(h->evals);
    memset(h, 0, sizeof *h);
}

void tm__html_device_label(const tm_device_report *d, char *buf, size_t n)
{
    snprintf(buf, n, "device %d (%d,%d,%d)", d->id, d->d, d->p, d->t);
}

/* One row of a key / value table. */
static void kv_begin(FILE *f, const char *key)
{
    fputs("<tr><td>", f);
    tm_svg_text(f, key);
    fputs("</td><td>", f);
}

static void configuration(FILE *f, const tm_run_report *run)
{
    const tm_train_config *c = run->cfg;
    const tm_clock_config *k = &c->clock;
    char cap[32];
    tm_svg_bytes((double)c->mem_cap, cap, sizeof cap);
    fputs("<h2>Configuration</h2>\n<table class=\"kv\">\n", f);
    kv_begin(f, "model");
    tm_svg_plain(f, "config", "%s", run->model);
    fputs("</td></tr>\n", f);
    kv_begin(f, "data");
    tm_svg_plain(f, "config", "%s", run->data);
    fputs("</td></tr>\n", f);
    kv_begin(f, "mesh");
    tm_svg_plain(f, "config", "dp %d x pp %d x tp %d = %d devices", c->dp, c->pp, c->tp,
                 c->dp * c->pp * c->tp);
    if (c->pp > 1)
        tm_svg_plain(f, "config", ", %s schedule", tm_schedule_kind_name(c->schedule));
    fputs("</td></tr>\n", f);
    kv_begin(f, "batch");
    tm_svg_plain(f, "config", "%d %s per step (%d per replica) in %d micro-batch%s", c->batch,
                 run->gpt ? "sequences" : "samples", c->batch / c->dp, c->micro_batches,
                 c->micro_batches == 1 ? "" : "es");
    fputs("</td></tr>\n", f);
    kv_begin(f, "recipe");
    tm_svg_plain(f, "config", "%s, lr %g, %s", c->optimizer == TM_OPT_ADAMW ? "AdamW" : "SGD",
                 c->lr, c->lr_schedule == TM_LR_COSINE ? "cosine schedule" : "constant rate");
    if (c->lr_schedule == TM_LR_COSINE)
        tm_svg_plain(f, "config", " (warm-up %ld steps, down to %g)", c->warmup_steps, c->min_lr);
    tm_svg_plain(f, "config", ", weight decay %g", c->weight_decay);
    if (c->optimizer == TM_OPT_SGD) tm_svg_plain(f, "config", ", momentum %g", c->momentum);
    if (c->clip_grad > 0) tm_svg_plain(f, "config", ", clipping at %g", c->clip_grad);
    tm_svg_plain(f, "config", ", seed %llu", (unsigned long long)c->seed);
    fputs("</td></tr>\n", f);
    kv_begin(f, "length");
    tm_svg_plain(f, "config", "%d epoch%s", c->epochs, c->epochs == 1 ? "" : "s");
    if (c->max_steps > 0) tm_svg_plain(f, "config", ", at most %ld steps", c->max_steps);
    fputs("</td></tr>\n", f);
    kv_begin(f, "device memory");
    tm_svg_plain(f, "config", "%s each", cap);
    fputs("</td></tr>\n", f);
    kv_begin(f, "modeled clock");
    tm_svg_plain(f, "config", "%g GFLOP/s and %g GB/s per device, links %g GB/s + %g us",
                 k->device_gflops, k->device_gbps, k->link_gbps, k->link_latency_us);
    if (k->devices_per_node > 0)
        tm_svg_plain(f, "config", "; %d devices per node, %g GB/s + %g us between nodes",
                     k->devices_per_node, k->inter_node_gbps, k->inter_node_latency_us);
    fputs("</td></tr>\n</table>\n", f);
}

static void outcome(FILE *f, const tm_run_report *run)
{
    const tm_train_result *r = run->res;
    const tm_loss_history *h = run->history;
    fputs("<h2>Outcome</h2>\n<table class=\"kv\">\n", f);
    kv_begin(f, "steps taken");
    tm_svg_metric(f, "summary/steps", "%.0f", (double)r->steps, "f0");
    if (r->stopped) fputs(" (stopped early by a signal: no final evaluation)", f);
    fputs("</td></tr>\n", f);
    if (h->n_train > 0) {
        const tm_loss_point *last = &h->train[h->n_train - 1];
        char path[64];
        snprintf(path, sizeof path, "step/step=%ld/loss", last->step);
        kv_begin(f, "last training loss");
        tm_svg_metric(f, path, "%.9g", last->loss, "f4");
        tm_svg_plain(f, "label", " (step %ld)", last->step);
        fputs("</td></tr>\n", f);
    }
    double final_loss = r->stopped ? NAN : r->test_loss;
    if (run->gpt) {
        kv_begin(f, "validation loss");
        tm_svg_metric(f, "summary/val_loss", "%.9g", final_loss, "f4");
        fputs(" nats/byte (", f);
        tm_svg_metric(f, "summary/val_bpb", "%.9g", final_loss / M_LN2, "f4");
        fputs(" bits/byte)</td></tr>\n", f);
    } else {
        kv_begin(f, "test accuracy");
        tm_svg_metric(f, "summary/test_acc", "%.6f", r->stopped ? NAN : r->test_acc, "p2");
        fputs("% (test loss ", f);
        tm_svg_metric(f, "summary/test_loss", "%.9g", final_loss, "f4");
        fputs(")</td></tr>\n", f);
    }
    kv_begin(f, "throughput");
    tm_svg_metric(f, "summary/modeled_samples_per_s", "%.1f", r->modeled_samples_per_s, "f0");
    fprintf(f, " %s/s modeled (what as many real devices would do), ",
            run->gpt ? "sequences" : "samples");
    if (run->gpt) {
        tm_svg_metric(f, "summary/tokens_per_s", "%.1f", r->samples_per_s * run->rows, "f0");
        fputs(" tokens/s on this machine</td></tr>\n", f);
    } else {
        tm_svg_metric(f, "summary/samples_per_s", "%.1f", r->samples_per_s, "f0");
        fputs(" samples/s on this machine</td></tr>\n", f);
    }
    if (r->bubble >= 0) {
        const tm_train_config *c = run->cfg;
        kv_begin(f, "pipeline bubble");
        tm_svg_metric(f, "summary/bubble", "%.6f", r->bubble, "p1");
        fputs("% of the pipeline's device time, measured; ", f);
        tm_svg_plain(f, "formula", "%.1f%%",
                     100 * tm_schedule_bubble_theory(c->schedule, c->pp, c->micro_batches));
        fputs(" by the formula for equal stages and free messages</td></tr>\n", f);
    }
    fputs("</table>\n", f);
}

/* At most this many vertices in the training curve: more steps are
 * averaged in equal groups. */
enum { CURVE_POINTS = 4000, CW = 960, CH = 280, CL = 60 };

static void loss_curve(FILE *f, const tm_run_report *run)
{
    const tm_loss_history *h = run->history;
    fputs("<h2>Loss</h2>\n", f);
    if (h->n_train == 0) {
        fputs("<p class=\"note\">No training step was taken.</p>\n", f);
        return;
    }
    long s0 = h->train[0].step - 1, s1 = h->train[h->n_train - 1].step;
    double lo = INFINITY, hi = 0;
    for (long i = 0; i < h->n_train + h->n_evals; i++) {
        double l = i < h->n_train ? h->train[i].loss : h->evals[i - h->n_train].loss;
        if (!isfinite(l)) continue;
        if (l < lo) lo = l;
        if (l > hi) hi = l;
    }
    if (!(lo <= hi)) lo = hi = 0;
    /* The axis spans the losses' range in whole ticks, so that a curve that
     * moves little still shows its moves. */
    double top, ystep = tm_svg_tick_step(hi - lo > 0 ? hi - lo : hi > 0 ? hi : 1, 6, &top);
    double bottom = floor(lo / ystep) * ystep, xtop;
    top = ceil(hi / ystep) * ystep;
    if (top <= bottom) top = bottom + ystep;
    double xstep = tm_svg_tick_step((double)(s1 - s0), 10, &xtop);
    if (xstep < 1) xstep = 1; /* steps are whole */
    double sx = (double)CW / (double)(s1 - s0), sy = CH / (top - bottom);
    long group = (h->n_train + CURVE_POINTS - 1) / CURVE_POINTS;
    const char *what = run->gpt ? "validation loss (nats/byte)" : "test loss";
    fprintf(f, "<p class=\"note\">Training loss of every step%s (the mean over the step's "
               "batch%s), and the %s of every evaluation.</p>\n",
            group > 1 ? ", averaged over groups of steps" : "",
            run->gpt ? ", nats per byte" : "", what);
    fprintf(f, "<div id=\"loss\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
               "height=\"%d\">\n", CL + CW + 20, CH + 60);
    for (int k = 0; bottom + k * ystep <= top + 1e-9 * ystep; k++) {
        double y = 10 + CH - k * ystep * sy;
        fprintf(f, "<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
                   "<text data-nm=\"axis\" x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>",
                CL, y, CL + CW, y, CL - 6, y + 4, bottom + k * ystep);
    }
    for (int k = 0; k * xstep <= (double)(s1 - s0) * (1 + 1e-9); k++) {
        double x = CL + k * xstep * sx;
        fprintf(f, "<line class=\"ax\" x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>"
                   "<text data-nm=\"axis\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>",
                x, 10 + CH, x, 14 + CH, x, 26 + CH, (double)s0 + k * xstep);
    }
    fprintf(f, "<text data-nm=\"axis\" x=\"%d\" y=\"%d\">optimizer step</text>", CL, CH + 44);
    fputs("<polyline class=\"tl\" points=\"", f);
    for (long i = 0; i < h->n_train; i += group) {
        double sum = 0, step = 0;
        long n = 0;
        for (long j = i; j < i + group && j < h->n_train; j++, n++) {
            sum += h->train[j].loss;
            step += (double)h->train[j].step;
        }
        double y = sum / (double)n;
        if (!isfinite(y)) break; /* a diverged run's curve ends there */
        fprintf(f, "%s%.1f,%.1f", i ? " " : "", CL + (step / (double)n - (double)s0) * sx,
                10 + CH - (y - bottom) * sy);
    }
    fputs("\"/>\n", f);
    for (long i = 0; i < h->n_evals; i++) {
        const tm_eval_point *e = &h->evals[i];
        if (!isfinite(e->loss)) continue;
        fprintf(f, "<circle class=\"ev\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" data-tip=\"",
                CL + (double)(e->step - s0) * sx, 10 + CH - (e->loss - bottom) * sy);
        if (run->gpt)
            tm_svg_textf(f, "step %ld: validation loss %.4f nats/byte", e->step, e->loss);
        else
            tm_svg_textf(f, "step %ld: test loss %.4f, accuracy %.2f%%", e->step, e->loss,
                         100 * e->acc);
        fputs("\"/>\n", f);
    }
    fprintf(f, "<line class=\"tl\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>"
               "<text x=\"%d\" y=\"%d\">training loss</text>"
               "<circle class=\"ev\" cx=\"%d\" cy=\"%d\" r=\"4\"/><text x=\"%d\" y=\"%d\">",
            CL + CW - 330, CH + 40, CL + CW - 310, CH + 40, CL + CW - 304, CH + 44,
            CL + CW - 200, CH + 40, CL + CW - 192, CH + 44);
    tm_svg_text(f, what);
    fputs("</text>\n</svg></div>\n", f);
    if (h->failed)
        fputs("<p class=\"note off\">Out of host memory: the curve misses points.</p>\n", f);
    if (h->n_evals == 0) return;
    /* The evaluations as numbers, as the metrics hold them. */
    fprintf(f, "<div class=\"fold\" style=\"max-height:240px\"><table><tr><th>step</th>"
               "<th>%s</th>%s</tr>\n",
            what, run->gpt ? "<th>bits/byte</th>" : "<th>accuracy %</th>");
    for (long i = 0; i < h->n_evals; i++) {
        const tm_eval_point *e = &h->evals[i];
        char rec[48], path[96];
        if (e->epoch > 0) snprintf(rec, sizeof rec, "epoch/epoch=%d", e->epoch);
        else snprintf(rec, sizeof rec, "eval/step=%ld", e->step);
        fputs("<tr><td>", f);
        tm_svg_plain(f, "label", "%ld", e->step);
        fputs("</td><td>", f);
        snprintf(path, sizeof path, "%s/%s", rec, run->gpt ? "val_loss" : "test_loss");
        tm_svg_metric(f, path, "%.9g", e->loss, "f4");
        fputs("</td><td>", f);
        if (run->gpt) {
            snprintf(path, sizeof path, "%s/val_bpb", rec);
            tm_svg_metric(f, path, "%.9g", e->loss / M_LN2, "f4");
        } else {
            snprintf(path, sizeof path, "%s/test_acc", rec);
            tm_svg_metric(f, path, "%.6f", e->acc, "p2");
        }
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

/* Each device's modeled time of the run's training steps: compute,
 * communication (waiting for its own transfers), idle (waiting for
 * others). */
static int modeled_time(FILE *f, const tm_run_report *run)
{
    const tm_train_result *r = run->res;
    int n = r->n_devices;
    fputs("<h2>Modeled time per device</h2>\n<p class=\"note\">The modeled time of all the "
          "run's training steps on each device: computing (kernels), communicating (waiting for "
          "its own transfers) and idle (waiting for other devices).</p>\n", f);
    char(*label)[48] = malloc(sizeof *label * (size_t)n);
    const char **labels = malloc(sizeof *labels * (size_t)n);
    tm_svg_seg *seg = calloc((size_t)n * 3, sizeof *seg);
    if (label == NULL || labels == NULL || seg == NULL) {
        free(label);
        free(labels);
        free(seg);
        return tm_error(TM_EHOSTMEM, "cannot allocate the report's bars");
    }
    double max = 0;
    static const char *cls[3] = {"f", "c", "idle"};
    static const char *names[3] = {"compute", "communication", "idle"};
    for (int i = 0; i < n; i++) {
        const tm_device_report *d = &r->devices[i];
        tm__html_device_label(d, label[i], sizeof label[i]);
        labels[i] = label[i];
        double v[3] = {d->compute_s, d->comm_s, d->idle_s};
        for (int k = 0; k < 3; k++) {
            tm_svg_seg *g = &seg[3 * i + k];
            g->cls = cls[k];
            g->v = 1e3 * v[k];
            snprintf(g->tip, sizeof g->tip, "%s %.3f ms (%.1f%%)", names[k], 1e3 * v[k],
                     d->modeled_s > 0 ? 100 * v[k] / d->modeled_s : 0);
        }
        if (1e3 * d->modeled_s > max) max = 1e3 * d->modeled_s;
    }
    tm_svg_bars_spec s = {.id = "modeled", .rows = n, .per_row = 3, .labels = labels,
                          .seg = seg, .names = names, .max = max,
                          .axis_title = "modeled milliseconds, all training steps"};
    tm_svg_bars(f, &s);
    fputs("<div class=\"fold\" style=\"max-height:260px\"><table><tr><th class=\"l\">device</th>"
          "<th>modeled ms</th><th>compute ms</th><th>comm ms</th><th>idle ms</th></tr>\n", f);
    static const char *field[4] = {"modeled_s", "compute_s", "comm_s", "idle_s"};
    for (int i = 0; i < n; i++) {
        const tm_device_report *d = &r->devices[i];
        double v[4] = {d->modeled_s, d->compute_s, d->comm_s, d->idle_s};
        fputs("<tr><td class=\"l\">", f);
        tm_svg_plain(f, "label", "%s", label[i]);
        fputs("</td>", f);
        for (int k = 0; k < 4; k++) {
            char path[64];
            snprintf(path, sizeof path, "summary/devices/%d/%s", i, field[k]);
            fputs("<td>", f);
            tm_svg_metric(f, path, "%.9g", v[k], "ms3");
            fputs("</td>", f);
        }
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
    free(label);
    free(labels);
    free(seg);
    return TM_OK;
}

int tm_report_html_run(FILE *f, const tm_run_report *run)
{
    const tm_train_config *c = run->cfg;
    char title[256];
    snprintf(title, sizeof title, "tinymesh run: %s on %d device%s", run->model,
             run->res->n_devices, run->res->n_devices == 1 ? "" : "s");
    tm_svg_page_begin(f, title);
    fputs("<h1>", f);
    tm_svg_plain(f, "config", "%s", title);
    fputs("</h1>\n<p class=\"note\">", f);
    tm_svg_plain(f, "config", "dp %d x pp %d x tp %d", c->dp, c->pp, c->tp);
    fputs(" emulated devices. Modeled times are what real devices with the modeled clock's "
          "rates would take; they are the same on every run of the same command. Hover over a "
          "figure for its values.</p>\n", f);
    configuration(f, run);
    outcome(f, run);
    loss_curve(f, run);
    int st = tm__html_timeline(f, run);
    if (st == TM_OK) st = tm__html_memory(f, run);
    if (st == TM_OK) st = tm__html_traffic(f, run);
    if (st == TM_OK) st = modeled_time(f, run);
    tm_svg_page_end(f);
    return st;
}
