/* The run report's figures of the devices: every device's timeline of the
 * recorded step, its memory by tag against the cap and the formula, and
 * the traffic between devices by mesh dimension. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/optimizer.h"
#include "strategies/plan.h"
#include "strategies/report_html_internal.h"
#include "strategies/svg.h"

/* Device labels for a figure: labels[i] points into label[i]. */
typedef struct {
    char (*label)[48];
    const char **labels;
} device_labels;

static int labels_make(device_labels *l, const tm_train_result *r)
{
    l->label = malloc(sizeof *l->label * (size_t)r->n_devices);
    l->labels = malloc(sizeof *l->labels * (size_t)r->n_devices);
    if (l->label == NULL || l->labels == NULL) {
        free(l->label);
        free(l->labels);
        return tm_error(TM_EHOSTMEM, "cannot allocate the report's labels");
    }
    for (int i = 0; i < r->n_devices; i++) {
        tm__html_device_label(&r->devices[i], l->label[i], sizeof l->label[i]);
        l->labels[i] = l->label[i];
    }
    return TM_OK;
}

static void labels_free(device_labels *l)
{
    free(l->label);
    free(l->labels);
}

/* A compute event's box: forward, backward, optimizer or other work. */
static void compute_box(tm_svg_box *b, const tm_event *e)
{
    switch (e->phase) {
    case 'F':
        b->cls = "f";
        snprintf(b->label, sizeof b->label, "F%d", e->mb);
        snprintf(b->tip, sizeof b->tip, "forward, micro-batch %d", e->mb);
        break;
    case 'B':
        b->cls = "b";
        snprintf(b->label, sizeof b->label, "B%d", e->mb);
        snprintf(b->tip, sizeof b->tip, "backward, micro-batch %d", e->mb);
        break;
    case 'W':
        b->cls = "b";
        snprintf(b->label, sizeof b->label, "W%d", e->mb);
        snprintf(b->tip, sizeof b->tip, "weight gradients, micro-batch %d", e->mb);
        break;
    case 'O':
        b->cls = "o";
        snprintf(b->tip, sizeof b->tip, "optimizer");
        break;
    default:
        b->cls = "k";
        snprintf(b->tip, sizeof b->tip, "%s", e->name ? e->name : "compute");
    }
}

static void comm_box(tm_svg_box *b, const tm_event *e)
{
    char bytes[32];
    tm_svg_bytes((double)e->bytes, bytes, sizeof bytes);
    b->cls = "c";
    b->band = 1;
    if (e->engine == TM_ENGINE_RECV && e->peer < 0)
        snprintf(b->tip, sizeof b->tip, "copy from the host, %s", bytes);
    else if (e->engine == TM_ENGINE_RECV)
        snprintf(b->tip, sizeof b->tip, "receive from %d, %s", e->peer, bytes);
    else
        snprintf(b->tip, sizeof b->tip, "%.12s %.8s, %s", e->name ? e->name : "send", e->comm,
                 bytes);
}

int tm__html_timeline(FILE *f, const tm_run_report *run)
{
    const tm_train_result *r = run->res;
    const tm_train_config *c = run->cfg;
    long first = c->trace_first > 0 ? c->trace_first : 1;
    fputs("<h2>Timeline of training step ", f);
    tm_svg_plain(f, "label", "%ld", first);
    fputs("</h2>\n", f);
    if (!r->recorded) {
        fputs("<p class=\"note\">No step was recorded: the run ended before its first recorded "
              "step (--trace-from).</p>\n", f);
        return TM_OK;
    }
    size_t n = 0;
    double t0 = INFINITY, t1 = 0;
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        n += d->n_step_events;
        if (d->rec_start < t0) t0 = d->rec_start;
        if (d->rec_end > t1) t1 = d->rec_end;
    }
    device_labels l;
    TM_CHECK(labels_make(&l, r));
    tm_svg_box *box = calloc(n ? n : 1, sizeof *box);
    if (box == NULL) {
        labels_free(&l);
        return tm_error(TM_EHOSTMEM, "cannot allocate the timeline");
    }
    size_t k = 0;
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        for (size_t j = 0; j < d->n_step_events; j++) {
            const tm_event *e = &d->step_events[j];
            tm_svg_box *b = &box[k++];
            b->lane = i;
            b->start = 1e6 * (e->start - t0);
            b->end = 1e6 * (e->end - t0);
            if (e->engine == TM_ENGINE_COMPUTE) compute_box(b, e);
            else comm_box(b, e);
        }
    }
    fputs("<p class=\"note\">One lane per device, in modeled microseconds from the step's "
          "start (after the gradients are zeroed) to the end of its optimizer. The thin band "
          "under a lane is its communication: collectives, sends, and each message as it "
          "arrives; where the lane is grey the device computes nothing. Boxes carry their "
          "micro-batch where they have room (", f);
    tm_svg_plain(f, "label", "F3: forward of micro-batch 3");
    fputs(").", f);
    if (r->bubble >= 0) {
        fputs(" Pipeline bubble of the run: ", f);
        tm_svg_metric(f, "summary/bubble", "%.6f", r->bubble, "p1");
        fputs("% measured against ", f);
        tm_svg_plain(f, "formula", "%.1f%%",
                     100 * tm_schedule_bubble_theory(c->schedule, c->pp, c->micro_batches));
        fputs(" by the formula ", f);
        tm_svg_plain(f, "formula", "%s",
                     c->schedule == TM_SCHED_SEQUENTIAL ? "(p-1)/p" : "(p-1)/(m+p-1)");
        fputs(".", f);
    }
    fputs("</p>\n", f);
    tm_svg_lanes_spec s = {.id = "timeline", .lanes = r->n_devices, .labels = l.labels,
                           .box = box, .n = (int)k, .t_end = 1e6 * (t1 - t0), .unit = "us",
                           .axis_title = "modeled microseconds"};
    tm_svg_lanes(f, &s);
    free(box);
    labels_free(&l);
    return TM_OK;
}

/* The formula's figure for each device: its shard's parameters, gradients
 * and optimizer state (exactly what it allocates for them) and its
 * schedule's most micro-batches in flight times what one stores (the
 * layers' formulas: tm_device_report.acts_per_mb; the backward's transient
 * buffers left out). -1 where it cannot be worked out. */
static void memory_formula(const tm_run_report *run, double *out)
{
    const tm_train_config *c = run->cfg;
    const tm_train_result *r = run->res;
    int first[TM_MAX_LAYERS + 1];
    tm_schedule sched;
    for (int i = 0; i < r->n_devices; i++) out[i] = -1;
    int v = c->virtual_stages > 1 ? c->virtual_stages : 1;
    int st = c->stages ? tm_stages_parse(c->stages, c->model, c->pp * v, first)
                       : tm_stages_balance(c->model, c->pp * v, first);
    if (st != TM_OK ||
        tm_schedule_make_virtual(&sched, c->schedule, c->pp, c->micro_batches, v) != TM_OK)
        return;
    tm_optim_config opt = {c->optimizer, c->momentum, c->weight_decay, c->beta1, c->beta2, 1e-8};
    int states = tm_optimizer_state_count(&opt);
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        tm_layer_plan plan[TM_MAX_LAYERS];
        size_t n_params = 0, chunk;
        /* Device p's chunks: model stages k * pp + p. */
        for (int k = 0; k < v && st == TM_OK; k++) {
            int g = k * c->pp + d->p;
            st = tm_stage_plan(c->model, first[g], first[g + 1], c->tp, d->t, plan, &chunk);
            n_params += chunk;
        }
        if (st != TM_OK) break;
        out[i] = (double)sizeof(float) * (double)n_params * (2 + states) +
                 (double)tm_schedule_max_in_flight(&sched, d->p) * (double)d->acts_per_mb;
    }
    tm_schedule_free(&sched);
}

int tm__html_memory(FILE *f, const tm_run_report *run)
{
    const tm_train_result *r = run->res;
    int n = r->n_devices;
    device_labels l;
    TM_CHECK(labels_make(&l, r));
    tm_svg_seg *seg = calloc((size_t)n * TM_TAG_COUNT, sizeof *seg);
    double *formula = malloc(sizeof *formula * (size_t)n);
    if (seg == NULL || formula == NULL) {
        free(seg);
        free(formula);
        labels_free(&l);
        return tm_error(TM_EHOSTMEM, "cannot allocate the memory bars");
    }
    memory_formula(run, formula);
    static const char *cls[TM_TAG_COUNT] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6"};
    const char *names[TM_TAG_COUNT];
    double max = 0, cap = (double)run->cfg->mem_cap;
    for (int t = 0; t < TM_TAG_COUNT; t++) names[t] = tm_tag_name((tm_tag)t);
    for (int i = 0; i < n; i++) {
        const tm_device_report *d = &r->devices[i];
        double sum = 0;
        for (int t = 0; t < TM_TAG_COUNT; t++) {
            tm_svg_seg *g = &seg[i * TM_TAG_COUNT + t];
            char b[32];
            g->cls = cls[t];
            g->v = (double)d->memory.tag_peak[t];
            tm_svg_bytes(g->v, b, sizeof b);
            snprintf(g->tip, sizeof g->tip, "%s: peak %s", names[t], b);
            sum += g->v;
        }
        if (sum > max) max = sum;
        if (formula[i] > max) max = formula[i];
    }
    char capb[32];
    tm_svg_bytes(cap, capb, sizeof capb);
    fputs("<h2>Memory per device</h2>\n<p class=\"note\">Each tag's peak in the device's arena, "
          "stacked (the tags peak at different moments, so the stack can pass the arena's own "
          "peak, in the table); the black tick is the formula: parameters, gradients and "
          "optimizer state of the device's shard plus its schedule's most micro-batches in "
          "flight times the activations one keeps.", f);
    /* A cap far above every bar would squash them to slivers: then the
     * scale ends before it, and it stands dashed at the scale's end. */
    int far = cap > 4 * max;
    if (far) {
        fputs(" The cap, ", f);
        tm_svg_plain(f, "config", "%s", capb);
        fputs(" per device, is far off the scale: dashed at its end.", f);
    } else if (cap > max) {
        max = cap;
    }
    fputs("</p>\n", f);
    char cap_label[80];
    snprintf(cap_label, sizeof cap_label, "cap: %s per device%s", capb,
             far ? ", off the scale" : "");
    tm_svg_bars_spec s = {.id = "memory", .rows = n, .per_row = TM_TAG_COUNT,
                          .labels = l.labels, .seg = seg, .names = names, .max = max,
                          .bytes = 1, .axis_title = "bytes (peak of each tag)",
                          .cap = cap, .cap_label = cap_label, .mark = formula,
                          .mark_label = "formula"};
    tm_svg_bars(f, &s);
    fputs("<div class=\"fold\" style=\"max-height:260px\"><table><tr><th class=\"l\">device</th>",
          f);
    for (int t = 0; t < TM_TAG_COUNT; t++) {
        fputs("<th>", f);
        tm_svg_plain(f, "label", "%s", names[t]);
        fputs("</th>", f);
    }
    fputs("<th>arena peak</th><th>formula</th></tr>\n", f);
    for (int i = 0; i < n; i++) {
        const tm_device_report *d = &r->devices[i];
        char path[80];
        fputs("<tr><td class=\"l\">", f);
        tm_svg_plain(f, "label", "%s", l.label[i]);
        fputs("</td>", f);
        for (int t = 0; t < TM_TAG_COUNT; t++) {
            snprintf(path, sizeof path, "summary/devices/%d/peak_bytes/%s", i, names[t]);
            fputs("<td>", f);
            tm_svg_metric(f, path, "%.0f", (double)d->memory.tag_peak[t], "b");
            fputs("</td>", f);
        }
        snprintf(path, sizeof path, "summary/devices/%d/peak", i);
        fputs("<td>", f);
        tm_svg_metric(f, path, "%.0f", (double)d->memory.peak, "b");
        fputs("</td><td>", f);
        char b[32] = "n/a";
        if (formula[i] >= 0) tm_svg_bytes(formula[i], b, sizeof b);
        tm_svg_plain(f, "formula", "%s", b);
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>\n", f);
    free(seg);
    free(formula);
    labels_free(&l);
    return TM_OK;
}

static const char *dim_name[TM_DIMS + 1] = {"dp", "pp", "tp", "world"};

/* The mesh dimension a link runs along, TM_DIMS for a world link (as
 * strategies/report.c classifies them). */
static int link_dim(const tm_train_result *r, const tm_link_stats *l)
{
    const tm_device_report *a = &r->devices[l->src], *b = &r->devices[l->dst];
    int dd = a->d != b->d, dp = a->p != b->p, dt = a->t != b->t;
    if (dd + dp + dt != 1) return TM_DIMS;
    return dd ? TM_DIM_DP : dp ? TM_DIM_PP : TM_DIM_TP;
}

/* One dimension's matrix: row = sender, column = receiver. */
static void matrix(FILE *f, const tm_train_result *r, int dim)
{
    int n = r->n_devices, links = 0;
    double max = 0, total = 0;
    for (int i = 0; i < r->n_links; i++)
        if (link_dim(r, &r->links[i]) == dim) {
            links++;
            total += (double)r->links[i].bytes;
            if ((double)r->links[i].bytes > max) max = (double)r->links[i].bytes;
        }
    if (links == 0) return;
    double cell = n <= 8 ? 32 : n <= 16 ? 20 : 480.0 / n;
    int every = n <= 16 ? 1 : 8, side = (int)ceil(cell * n);
    char tot[32];
    tm_svg_bytes(total, tot, sizeof tot);
    fprintf(f, "<div class=\"matrix\" data-n=\"%d\" data-dim=\"%s\" style=\"display:inline-block;"
               "margin:0 24px 12px 0;vertical-align:top\"><b>%s</b>: ",
            n, dim_name[dim], dim_name[dim]);
    tm_svg_plain(f, "sum", "%s over %d links", tot, links);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\">\n"
               "<rect class=\"grid-bg\" x=\"36\" y=\"20\" width=\"%d\" height=\"%d\" "
               "fill=\"#f4f4f4\" stroke=\"#ccc\"/>\n",
            side + 44, side + 28, side, side);
    for (int i = 0; i < n; i += every) {
        double p = (i + 0.5) * cell;
        fprintf(f, "<text data-nm=\"axis\" x=\"%.1f\" y=\"15\" text-anchor=\"middle\" "
                   "style=\"font-size:10px\">%d</text><text data-nm=\"axis\" x=\"32\" y=\"%.1f\" "
                   "text-anchor=\"end\" style=\"font-size:10px\">%d</text>",
                36 + p, i, 24 + p, i);
    }
    fputc('\n', f);
    for (int i = 0; i < r->n_links; i++) {
        const tm_link_stats *l = &r->links[i];
        if (link_dim(r, l) != dim) continue;
        char b[32];
        tm_svg_bytes((double)l->bytes, b, sizeof b);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#e15759\" "
                   "fill-opacity=\"%.2f\" data-m=\"summary/links/%d/2\" data-v=\"%llu\" "
                   "data-tip=\"%d sent to %d: %s in %llu messages\"/>\n",
                36 + l->dst * cell, 20 + l->src * cell, cell, cell,
                max > 0 ? 0.15 + 0.85 * (double)l->bytes / max : 0, i,
                (unsigned long long)l->bytes, l->src, l->dst, b,
                (unsigned long long)l->messages);
    }
    fputs("</svg></div>\n", f);
}

int tm__html_traffic(FILE *f, const tm_run_report *run)
{
    const tm_train_result *r = run->res;
    const tm_train_config *c = run->cfg;
    fputs("<h2>Traffic</h2>\n<p class=\"note\">Bytes each device sent to each other device "
          "over the whole run (training and evaluation), one matrix per mesh dimension: row "
          "= sender, column = receiver, darker = more.</p>\n", f);
    if (r->n_links == 0) fputs("<p class=\"note\">No device sent anything.</p>\n", f);
    for (int dim = 0; dim <= TM_DIMS; dim++) matrix(f, r, dim);
    long first = c->trace_first > 0 ? c->trace_first : 1;
    fputs("<p class=\"note\">Bytes each device sent in training step ", f);
    tm_svg_plain(f, "label", "%ld", first);
    fputs(", measured against the formulas (dp: each gradient bucket's all-reduce, ring ", f);
    tm_svg_plain(f, "formula", "2(n-1)/n");
    fputs(" or direct ", f);
    tm_svg_plain(f, "formula", "(n-1)");
    fputs(" times its bytes, and the loss's all-gather; pp: every micro-batch's activations "
          "forward and gradients back; tp: each layer's collectives). A measurement that "
          "differs from its formula is red.</p>\n", f);
    if (!r->recorded) {
        fputs("<p class=\"note\">No step was recorded.</p>\n", f);
        return TM_OK;
    }
    fputs("<div class=\"fold\" style=\"max-height:300px\"><table><tr><th class=\"l\">device</th>",
          f);
    for (int k = 0; k < TM_DIMS; k++)
        fprintf(f, "<th>%s measured</th><th>%s formula</th>", dim_name[k], dim_name[k]);
    fputs("</tr>\n", f);
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        char label[48], path[80];
        tm__html_device_label(d, label, sizeof label);
        fputs("<tr><td class=\"l\">", f);
        tm_svg_plain(f, "label", "%s", label);
        fputs("</td>", f);
        for (int k = 0; k < TM_DIMS; k++) {
            int off = fabs((double)d->step_sent[k] - d->step_analytic[k]) > 0.5;
            fprintf(f, "<td%s>", off ? " class=\"off\"" : "");
            snprintf(path, sizeof path, "summary/devices/%d/step_sent/%s", i, dim_name[k]);
            tm_svg_metric(f, path, "%.0f", (double)d->step_sent[k], "b");
            fputs("</td><td>", f);
            snprintf(path, sizeof path, "summary/devices/%d/step_formula/%s", i, dim_name[k]);
            tm_svg_metric(f, path, "%.9g", d->step_analytic[k], "b");
            fputs("</td>", f);
        }
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
    return TM_OK;
}
