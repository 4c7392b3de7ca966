/* The strategy sweep's page (throughput of every configuration, memory
 * against the cap, the bubble against micro-batches per schedule) and a
 * schedule as a standalone SVG. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/report_html.h"
#include "strategies/svg.h"

/* A schedule's colour class; one past the schedules (grey) for no pipeline. */
static void sched_class(const tm_sweep_row *r, char *buf, size_t n)
{
    snprintf(buf, n, "s%d", r->pp == 1 ? TM_SCHEDULE_KINDS : (int)r->schedule);
}

/* The schedule as the CSV names it: "interleaved-1f1b v2" with virtual
 * stages. */
static void sched_name(const tm_sweep_row *r, char *buf, size_t n)
{
    if (r->v > 1) snprintf(buf, n, "%s v%d", tm_schedule_kind_name(r->schedule), r->v);
    else snprintf(buf, n, "%s", tm_schedule_kind_name(r->schedule));
}

static void row_label(const tm_sweep_row *r, char *buf, size_t n)
{
    const char *sp = r->sp == 1 ? " sp" : "";
    char name[32];
    sched_name(r, name, sizeof name);
    if (r->pp == 1)
        snprintf(buf, n, "dp%d pp%d tp%d m%d%s", r->dp, r->pp, r->tp, r->micro_batches, sp);
    else
        snprintf(buf, n, "dp%d pp%d tp%d %s m%d%s", r->dp, r->pp, r->tp, name, r->micro_batches,
                 sp);
}

enum { RL = 190, TW = 520, MW = 360, RH_BIG = 16, RH_SMALL = 13, FOLD_ROWS = 30 };

/* One row per configuration: its throughput bar, then its peak memory
 * against the cap. */
static void rows_chart(FILE *f, const tm_sweep_info *info, const tm_sweep_row *rows, int n)
{
    double tmax = 0, mmax = 0;
    for (int i = 0; i < n; i++) {
        if (rows[i].modeled_sps > tmax) tmax = rows[i].modeled_sps;
        if (rows[i].peak > mmax) mmax = rows[i].peak;
    }
    /* A cap far above every bar ends the scale before it: dashed there. */
    int far = info->cap > 4 * mmax;
    if (!far && info->cap > mmax) mmax = info->cap;
    double tx = tmax > 0 ? TW / tmax : 0, mx = mmax > 0 ? MW / mmax : 0;
    int rh = n <= 40 ? RH_BIG : RH_SMALL, W = RL + TW + 40 + MW + 20;
    fputs("<p class=\"note\">Best first by modeled samples/s. Colour: the schedule (grey: no "
          "pipeline); faded: does not fit in the memory cap. Right: each configuration's "
          "largest device peak against the cap", f);
    if (far) {
        char b[32];
        tm_svg_bytes(info->cap, b, sizeof b);
        fputs(" (", f);
        tm_svg_plain(f, "config", "%s", b);
        fputs(", far off this scale: dashed at its end)", f);
    }
    fputs(".</p>\n", f);
    fprintf(f, "<div id=\"throughput\" data-rows=\"%d\">%s<svg xmlns=\"http://www.w3.org/2000/svg\""
               " width=\"%d\" height=\"%d\">\n",
            n, n > FOLD_ROWS ? "<div class=\"fold\">" : "", W, n * rh + 2);
    for (int i = 0; i < n; i++) {
        const tm_sweep_row *r = &rows[i];
        char label[64], cls[8], peak[32], capb[32];
        row_label(r, label, sizeof label);
        sched_class(r, cls, sizeof cls);
        tm_svg_bytes(r->peak, peak, sizeof peak);
        tm_svg_bytes(info->cap, capb, sizeof capb);
        double y = i * rh;
        fprintf(f, "<g class=\"bar\" data-l=\"%s\"><text data-nm=\"label\" x=\"%d\" y=\"%.1f\" "
                   "text-anchor=\"end\" style=\"font-size:%dpx\">%s</text>",
                label, RL - 6, y + rh - 4, rh - 4, label);
        fprintf(f, "<rect class=\"%s%s\" x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" "
                   "data-tip=\"%s: %.0f samples/s modeled, %.0f on this machine\"/>",
                cls, r->fits ? "" : " no", RL, y + 2, r->modeled_sps * tx, rh - 4, label,
                r->modeled_sps, r->wall_sps);
        fprintf(f, "<rect class=\"t0%s\" x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" "
                   "data-tip=\"%s: peak %s per device, cap %s: %s\"/></g>\n",
                r->fits ? "" : " no", RL + TW + 40, y + 2, r->peak * mx, rh - 4, label, peak,
                capb, r->fits ? "fits" : "does not fit");
    }
    double cap_x = RL + TW + 40 + (far ? mmax : info->cap) * mx;
    fprintf(f, "<line class=\"cap%s\" x1=\"%.1f\" y1=\"0\" x2=\"%.1f\" y2=\"%d\"/>\n",
            far ? " far" : "", cap_x, cap_x, n * rh);
    fprintf(f, "</svg>%s<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"60\">",
            n > FOLD_ROWS ? "</div>" : "", W);
    double top, step = tm_svg_tick_step(tmax, 5, &top);
    for (int k = 0; k * step <= tmax * (1 + 1e-9); k++)
        fprintf(f, "<text data-nm=\"axis\" x=\"%.1f\" y=\"14\" text-anchor=\"middle\">%g</text>",
                RL + k * step * tx, k * step);
    const char *uname = "MiB";
    double div = mmax >= 1 << 30 ? (uname = "GiB", 1 << 30) : mmax >= 1 << 20 ? 1 << 20
                                                             : (uname = "KiB", 1 << 10);
    step = tm_svg_tick_step(mmax / div, 4, &top);
    for (int k = 0; k * step * div <= mmax * (1 + 1e-9); k++)
        fprintf(f, "<text data-nm=\"axis\" x=\"%.1f\" y=\"14\" text-anchor=\"middle\">%g %s"
                   "</text>", RL + TW + 40 + k * step * div * mx, k * step, uname);
    fprintf(f, "<text x=\"%d\" y=\"32\">modeled samples/s</text><text x=\"%d\" y=\"32\">peak "
               "memory per device</text>", RL, RL + TW + 40);
    static const char *names[TM_SCHEDULE_KINDS + 1] = {
        "sequential", "gpipe", "1f1b", "grouped", "interleaved", "zb-h1", "interleaved-1f1b",
        "zb-h2", "no pipeline"};
    double x = RL;
    for (int k = 0; k <= TM_SCHEDULE_KINDS; k++) {
        fprintf(f, "<rect class=\"s%d\" x=\"%.1f\" y=\"42\" width=\"10\" height=\"10\"/>"
                   "<text data-nm=\"label\" x=\"%.1f\" y=\"51\">%s</text>",
                k, x, x + 14, names[k]);
        x += 30 + 7.0 * (double)strlen(names[k]);
    }
    fprintf(f, "<line class=\"cap%s\" x1=\"%.1f\" y1=\"46\" x2=\"%.1f\" y2=\"46\"/>"
               "<text x=\"%.1f\" y=\"51\">cap%s</text>", far ? " far" : "", x + 10, x + 24, x + 28,
            far ? " (off the scale)" : "");
    fputs("</svg></div>\n", f);
}

/* The bubble against micro-batches for the deepest pipeline (its
 * narrowest tensor parallelism), one line per schedule, beside the
 * formulas. */
static void bubble_chart(FILE *f, const tm_sweep_row *rows, int n)
{
    int pp = 0, tp = 0, mmax = 1;
    for (int i = 0; i < n; i++)
        if (rows[i].bubble >= 0 && rows[i].pp > pp) pp = rows[i].pp;
    for (int i = 0; i < n; i++)
        if (rows[i].pp == pp && rows[i].bubble >= 0 && (tp == 0 || rows[i].tp < tp))
            tp = rows[i].tp;
    fputs("<h2>Pipeline bubble against micro-batches</h2>\n", f);
    if (pp == 0) {
        fputs("<p class=\"note\">No configuration had a pipeline.</p>\n", f);
        return;
    }
    for (int i = 0; i < n; i++)
        if (rows[i].pp == pp && rows[i].tp == tp && rows[i].micro_batches > mmax)
            mmax = rows[i].micro_batches;
    fputs("<p class=\"note\">The measured bubble of each schedule for ", f);
    tm_svg_plain(f, "config", "pp %d, tp %d", pp, tp);
    fputs(" against the formulas for equal stages and free messages: ", f);
    tm_svg_plain(f, "formula", "(p-1)/(m+p-1)");
    fputs(" (dashed) and sequential's ", f);
    tm_svg_plain(f, "formula", "(p-1)/p");
    fputs(" (dotted).</p>\n", f);
    enum { L = 60, PW = 640, PH = 300 };
    double lmax = log2(mmax) > 0 ? log2(mmax) : 1, sx = PW / lmax;
    fprintf(f, "<div id=\"bubble\" data-pp=\"%d\"><svg xmlns=\"http://www.w3.org/2000/svg\" "
               "width=\"%d\" height=\"%d\">\n", pp, L + PW + 200, PH + 60);
    for (int k = 0; k <= 5; k++)
        fprintf(f, "<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
                   "<text data-nm=\"axis\" x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>",
                L, 10 + PH - k * PH / 5.0, L + PW, 10 + PH - k * PH / 5.0, L - 6,
                14 + PH - k * PH / 5.0, k / 5.0);
    for (int m = 1; m <= mmax; m *= 2)
        fprintf(f, "<text data-nm=\"axis\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>",
                L + log2(m) * sx, PH + 26, m);
    fprintf(f, "<text x=\"%d\" y=\"%d\">micro-batches m per replica (log scale)</text>\n", L,
            PH + 46);
    /* The formulas, sampled along the axis. */
    fputs("<polyline class=\"th\" points=\"", f);
    for (int k = 0; k <= 64; k++) {
        double m = pow(2, lmax * k / 64);
        fprintf(f, "%s%.1f,%.1f", k ? " " : "", L + log2(m) * sx,
                10 + PH - PH * (pp - 1.0) / (m + pp - 1.0));
    }
    double seq = 10 + PH - PH * (pp - 1.0) / pp;
    fprintf(f, "\"/>\n<line class=\"th2\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>\n", L, seq,
            L + PW, seq);
    /* Schedules with equal bubbles (gpipe, 1f1b, grouped and interleaved;
     * zb-h1 and zb-h2 at equal times) coincide: the later ones' points are
     * smaller, so that all stay visible. By tm_schedule_kind. */
    static const int radius[] = {6, 5, 4, 3, 2, 5, 2, 3};
    _Static_assert(sizeof radius / sizeof radius[0] == TM_SCHEDULE_KINDS, "a radius per kind");
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
        int any = 0;
        for (int i = 0; i < n; i++)
            any |= rows[i].pp == pp && rows[i].tp == tp && (int)rows[i].schedule == k &&
                   rows[i].v <= 1;
        if (!any) continue;
        /* The line through the schedule's points, in micro-batch order. */
        fprintf(f, "<polyline class=\"ln s%d\" style=\"fill:none\" points=\"", k);
        const char *sep = "";
        for (int m = 1; m <= mmax; m++)
            for (int i = 0; i < n; i++) {
                const tm_sweep_row *r = &rows[i];
                if (r->pp != pp || r->tp != tp || (int)r->schedule != k ||
                    r->micro_batches != m || r->v > 1)
                    continue;
                fprintf(f, "%s%.1f,%.1f", sep, L + log2(m) * sx, 10 + PH - PH * r->bubble);
                sep = " ";
            }
        fputs("\"/>\n", f);
        for (int i = 0; i < n; i++) {
            const tm_sweep_row *r = &rows[i];
            if (r->pp != pp || r->tp != tp || (int)r->schedule != k || r->v > 1) continue;
            fprintf(f, "<circle class=\"s%d\" cx=\"%.1f\" cy=\"%.1f\" r=\"%d\" data-tip=\"%s, "
                       "m %d: bubble %.4f\"/>",
                    k, L + log2(r->micro_batches) * sx, 10 + PH - PH * r->bubble, radius[k],
                    tm_schedule_kind_name((tm_schedule_kind)k), r->micro_batches, r->bubble);
        }
        fprintf(f, "<rect class=\"s%d\" x=\"%d\" y=\"%d\" width=\"10\" height=\"10\"/>"
                   "<text data-nm=\"label\" x=\"%d\" y=\"%d\">%s</text>\n",
                k, L + PW + 20, 20 + 18 * k, L + PW + 36, 29 + 18 * k,
                tm_schedule_kind_name((tm_schedule_kind)k));
    }
    fputs("</svg></div>\n", f);
}

/* The rows as a table, every number as the CSV holds it. */
static void rows_table(FILE *f, const tm_sweep_row *rows, int n)
{
    fputs("<div class=\"fold\" style=\"max-height:360px\"><table id=\"rows\"><tr><th>dp</th>"
          "<th>pp</th><th>tp</th><th class=\"l\">schedule</th><th>mb</th><th class=\"l\">sp</th>"
          "<th>modeled samples/s</th><th>wall samples/s</th><th>bubble</th><th>comm/dev/step</th><th>peak/dev</th>"
          "<th class=\"l\">fits</th></tr>\n", f);
    for (int i = 0; i < n; i++) {
        const tm_sweep_row *r = &rows[i];
        char path[48];
        static const char *ints[4] = {"dp", "pp", "tp", "micro_batches"};
        int iv[4] = {r->dp, r->pp, r->tp, r->micro_batches};
        fputs("<tr>", f);
        for (int k = 0; k < 4; k++) {
            if (k == 3) {
                char name[32];
                sched_name(r, name, sizeof name);
                fputs("<td class=\"l\">", f);
                tm_svg_plain(f, "label", "%s", name);
                fputs("</td>", f);
            }
            snprintf(path, sizeof path, "csv/%d/%s", i, ints[k]);
            fputs("<td>", f);
            tm_svg_metric(f, path, "%.0f", iv[k], "f0");
            fputs("</td>", f);
        }
        fprintf(f, "<td class=\"l\">%s</td>", r->sp < 0 ? "-" : r->sp ? "yes" : "no");
        static const char *dbl[5] = {"modeled_samples_per_s", "wall_samples_per_s", "bubble",
                                     "comm_bytes_per_device", "peak_bytes_per_device"};
        static const char *fmt[5] = {"%.1f", "%.1f", "%.4f", "%.0f", "%.0f"};
        static const char *show[5] = {"f0", "f0", "f3", "b", "b"};
        double dv[5] = {r->modeled_sps, r->wall_sps, r->bubble, r->comm_bytes, r->peak};
        for (int k = 0; k < 5; k++) {
            fputs("<td>", f);
            snprintf(path, sizeof path, "csv/%d/%s", i, dbl[k]);
            if (k == 2 && r->bubble < 0) fputs("-", f);
            else tm_svg_metric(f, path, fmt[k], dv[k], show[k]);
            fputs("</td>", f);
        }
        fprintf(f, "<td class=\"l\">%s</td></tr>\n", r->fits ? "yes" : "no");
    }
    fputs("</table></div>\n", f);
}

int tm_report_html_sweep(FILE *f, const tm_sweep_info *info, const tm_sweep_row *rows, int n)
{
    char title[256], cap[32];
    snprintf(title, sizeof title, "tinymesh strategy sweep: %d devices, model %s", info->devices,
             info->model);
    tm_svg_bytes(info->cap, cap, sizeof cap);
    tm_svg_page_begin(f, title);
    fputs("<h1>", f);
    tm_svg_plain(f, "config", "%s", title);
    fputs("</h1>\n<p class=\"note\">", f);
    const tm_clock_config *k = info->clock;
    tm_svg_plain(f, "config",
                 "Every mesh dp x pp x tp = %d, schedule and micro-batch count, trained %ld "
                 "steps of batch %d on synthetic data; memory cap %s per device; modeled clock "
                 "%g GFLOP/s and %g GB/s per device, links %g GB/s + %g us. %d configurations: "
                 "%d ran, %d skipped, %d failed.",
                 info->devices, info->steps, info->batch, cap, k->device_gflops,
                 k->device_gbps, k->link_gbps, k->link_latency_us, info->configurations, n,
                 info->skipped, info->failed);
    fputs(" Modeled samples/s are what real devices would do and the same on every run; wall "
          "samples/s are this machine's, whose cores all the devices share. Hover for "
          "values.</p>\n<h2>Throughput and memory of every configuration</h2>\n", f);
    rows_chart(f, info, rows, n);
    bubble_chart(f, rows, n);
    fputs("<h2>The measurements</h2>\n", f);
    rows_table(f, rows, n);
    tm_svg_page_end(f);
    return TM_OK;
}

int tm_report_schedule_svg(FILE *f, const tm_schedule *s, const tm_sched_event *ev, int n,
                           double makespan)
{
    tm_svg_box *box = calloc(n > 0 ? (size_t)n : 1, sizeof *box);
    char(*label)[24] = malloc(sizeof *label * (size_t)s->pp);
    const char **labels = malloc(sizeof *labels * (size_t)s->pp);
    if (box == NULL || label == NULL || labels == NULL) {
        free(box);
        free(label);
        free(labels);
        return tm_error(TM_EHOSTMEM, "cannot allocate the schedule's picture");
    }
    for (int i = 0; i < s->pp; i++) {
        snprintf(label[i], sizeof label[i], "stage %d", i);
        labels[i] = label[i];
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        const tm_sched_event *e = &ev[i];
        int fwd = e->kind == TM_SCHED_FWD, bwd = e->kind == TM_SCHED_BWD || e->kind == TM_SCHED_WGT;
        /* Free messages (--comm-time 0) take no time: nothing to draw. */
        if (!fwd && !bwd && e->end <= e->start) continue;
        tm_svg_box *b = &box[k++];
        b->lane = e->stage;
        b->start = e->start;
        b->end = e->end;
        b->cls = fwd ? "f" : bwd ? "b" : "c";
        b->band = !fwd && !bwd;
        /* With virtual stages a pass names its chunk as the timeline does:
         * F3a for chunk 0, F3b for chunk 1, ... */
        char pass = fwd ? 'F' : e->kind == TM_SCHED_WGT ? 'W' : 'B';
        if ((fwd || bwd) && s->v > 1)
            snprintf(b->label, sizeof b->label, "%c%d%c", pass, e->mb, 'a' + e->chunk % 26);
        else if (fwd || bwd)
            snprintf(b->label, sizeof b->label, "%c%d", pass, e->mb);
        int at = snprintf(b->tip, sizeof b->tip, "%s, micro-batch %d",
                          tm_sched_kind_name(e->kind), e->mb);
        if (s->v > 1) snprintf(b->tip + at, sizeof b->tip - (size_t)at, ", chunk %d", e->chunk);
    }
    char title[160];
    int v = s->v > 1 ? s->v : 1;
    double theory = tm_schedule_bubble_theory_virtual(s->kind, s->pp, s->m, v);
    int len = snprintf(title, sizeof title, "%s: %d stages, %d micro-batches",
                       tm_schedule_kind_name(s->kind), s->pp, s->m);
    if (v > 1) len += snprintf(title + len, sizeof title - (size_t)len, ", %d virtual stages", v);
    len += snprintf(title + len, sizeof title - (size_t)len, "; bubble %.1f%%",
                    100 * tm_schedule_bubble(ev, n, s->pp, makespan));
    if (theory >= 0)
        snprintf(title + len, sizeof title - (size_t)len, " (formula %.1f%%)", 100 * theory);
    tm_svg_lanes_spec spec = {.id = "schedule", .lanes = s->pp, .labels = labels, .box = box,
                              .n = k, .t_end = makespan, .unit = "",
                              .axis_title = "time (the unit of --fwd-time and --bwd-time)"};
    tm_svg_lanes_document(f, &spec, title);
    free(box);
    free(label);
    free(labels);
    return TM_OK;
}
