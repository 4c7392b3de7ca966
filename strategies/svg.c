#include "strategies/svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void tm_svg_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default:
            /* Control characters are not allowed in XML at all. */
            if ((unsigned char)*s >= 0x20 || *s == '\n' || *s == '\t') fputc(*s, f);
        }
    }
}

void tm_svg_textf(FILE *f, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    tm_svg_text(f, buf);
}

void tm_svg_bytes(double bytes, char *buf, size_t n)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB"};
    int u = 0;
    while (bytes >= 1024 && u < 3) bytes /= 1024, u++;
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", bytes, unit[u]);
}

void tm_svg_format(double v, const char *show, char *buf, size_t n)
{
    if (!isfinite(v)) {
        snprintf(buf, n, "n/a");
    } else if (show[0] == 'b') {
        tm_svg_bytes(v, buf, n);
    } else if (show[0] == 'p') {
        snprintf(buf, n, "%.*f", atoi(show + 1), 100 * v);
    } else if (show[0] == 'm') {
        snprintf(buf, n, "%.*f", atoi(show + 2), 1e3 * v);
    } else {
        snprintf(buf, n, "%.*f", atoi(show + 1), v);
    }
}

void tm_svg_metric(FILE *f, const char *path, const char *fmt, double v, const char *show)
{
    char file[64] = "null", shown[64];
    if (isfinite(v)) {
        /* The figure as the file holds it: what the page shows is formatted
         * from that, so that the page and the file never differ by a
         * rounding. */
        snprintf(file, sizeof file, fmt, v);
        v = strtod(file, NULL);
    }
    tm_svg_format(v, show, shown, sizeof shown);
    fputs("<span class=\"m\" data-m=\"", f);
    tm_svg_text(f, path);
    fprintf(f, "\" data-v=\"%s\" data-f=\"%s\">%s</span>", file, show, shown);
}

void tm_svg_plain(FILE *f, const char *why, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(f, "<span data-nm=\"%s\">", why);
    tm_svg_text(f, buf);
    fputs("</span>", f);
}

double tm_svg_tick_step(double max, int ticks, double *top)
{
    if (!(max > 0) || !isfinite(max)) {
        *top = 1;
        return 1;
    }
    double raw = max / (ticks > 0 ? ticks : 1), mag = pow(10, floor(log10(raw))), step;
    double r = raw / mag;
    step = (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
    *top = ceil(max / step - 1e-9) * step;
    return step;
}

/* The colours and shapes every figure shares; a standalone SVG carries them
 * too. */
static const char style[] =
    "text{font:11px sans-serif;fill:#222}"
    ".bl{font-size:10px;fill:#fff;text-anchor:middle;pointer-events:none}"
    ".ax{stroke:#888;stroke-width:1}.grid{stroke:#e4e4e4;stroke-width:1}"
    ".idle{fill:#efefef}.f{fill:#4e79a7}.b{fill:#59a14f}.o{fill:#b07aa1}.k{fill:#9d9d9d}"
    ".c{fill:#f28e2b}"
    ".t0{fill:#4e79a7}.t1{fill:#59a14f}.t2{fill:#b07aa1}.t3{fill:#f28e2b}.t4{fill:#e15759}"
    ".t5{fill:#76b7b2}.t6{fill:#edc948}"
    ".s0{fill:#d62728;stroke:#d62728}.s1{fill:#1f77b4;stroke:#1f77b4}"
    ".s2{fill:#2ca02c;stroke:#2ca02c}.s3{fill:#ff7f0e;stroke:#ff7f0e}"
    ".s4{fill:#9467bd;stroke:#9467bd}.s5{fill:#8c564b;stroke:#8c564b}"
    ".s6{fill:#17becf;stroke:#17becf}.s7{fill:#e377c2;stroke:#e377c2}"
    ".s8{fill:#7f7f7f;stroke:#7f7f7f}"
    ".cap{stroke:#c00;stroke-width:1.5}.far{stroke-dasharray:4 3}.fml{stroke:#000;stroke-width:2}"
    ".tl{fill:none;stroke:#4e79a7;stroke-width:1.2}.ln{fill:none;stroke-width:2}"
    ".th{fill:none;stroke:#000;stroke-width:1.5;stroke-dasharray:6 4}"
    ".th2{fill:none;stroke:#555;stroke-width:1.5;stroke-dasharray:2 3}"
    ".ev{fill:#e15759}.no{opacity:.35}";

void tm_svg_page_begin(FILE *f, const char *title)
{
    fputs("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n"
          "<meta charset=\"utf-8\"/>\n<title>", f);
    tm_svg_text(f, title);
    fprintf(f, "</title>\n<style>\n"
               "body{font:14px/1.45 sans-serif;color:#222;margin:24px auto;max-width:1180px;"
               "padding:0 16px}\n"
               "h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;"
               "border-bottom:1px solid #ddd}\n"
               "p.note{color:#555;margin:4px 0 8px}table{border-collapse:collapse;"
               "font-size:13px}\n"
               "td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}"
               "th{background:#f6f6f6;position:sticky;top:0}\n"
               "td.l,th.l{text-align:left}.kv td{text-align:left}.kv td:first-child{color:#555}\n"
               ".fold{max-height:440px;overflow:auto;border:1px solid #ddd}\n"
               ".wide{overflow-x:auto}.off{color:#c00}\n"
               ".key{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;"
               "vertical-align:-1px}\n"
               "#tip{position:fixed;display:none;background:#fffbe6;border:1px solid #999;"
               "padding:3px 6px;font-size:12px;pointer-events:none;z-index:9}\n"
               "svg{display:block}\n%s\n</style>\n</head>\n<body>\n<div id=\"tip\"></div>\n",
            style);
}

/* Hover: any element with data-tip ("what|start|end", the times in the
 * unit of the nearest data-unit, or plain text) shows it beside the
 * pointer, after the name of its lane (data-l) when it has one. */
static const char script[] =
    "(function(){var t=document.getElementById('tip');"
    "function up(a,e){var n=e.target;while(n&&n.getAttribute&&!n.getAttribute(a))"
    "n=n.parentNode;return n&&n.getAttribute?n:null}"
    "document.addEventListener('mouseover',function(e){var el=up('data-tip',e);"
    "if(!el){t.style.display='none';return}"
    "var p=el.getAttribute('data-tip').split('|'),g=up('data-l',e),"
    "u=up('data-unit',e),s=(g?g.getAttribute('data-l')+': ':'')+p[0];"
    "if(p.length>2)s+=', '+p[1]+' to '+p[2]+' '+(u?u.getAttribute('data-unit'):'');"
    "t.textContent=s;t.style.display='block';t.style.left=(e.clientX+14)+'px';"
    "t.style.top=(e.clientY+14)+'px'});})();";

void tm_svg_page_end(FILE *f)
{
    fprintf(f, "<script>//<![CDATA[\n%s\n//]]></script>\n</body>\n</html>\n", script);
}

/* Lane chart geometry: the labels' column, the plot's width. */
enum { LABEL_W = 170, PLOT_W = 960, AXIS_H = 46, FOLD_LANES = 24 };

static double lane_h(int lanes) { return lanes <= 16 ? 24 : 14; }

static const struct { const char *cls, *name; } legend[] = {
    {"f", "forward"}, {"b", "backward"}, {"o", "optimizer"}, {"k", "other compute"},
    {"c", "communication"}, {"idle", "idle (waiting)"}};

static void lanes_body(FILE *f, const void *spec, double x_of)
{
    const tm_svg_lanes_spec *s = spec;
    double h = lane_h(s->lanes);
    for (int l = 0; l < s->lanes; l++) {
        double y = l * h;
        fputs("<g class=\"lane\" data-l=\"", f);
        tm_svg_text(f, s->labels[l]);
        fprintf(f, "\"><rect class=\"idle\" x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\"/>",
                LABEL_W, y + 1, PLOT_W, h - 2);
        fprintf(f, "<text data-nm=\"label\" x=\"%d\" y=\"%.1f\" text-anchor=\"end\"%s>",
                LABEL_W - 6, y + h / 2 + 4, h < 20 ? " style=\"font-size:10px\"" : "");
        tm_svg_text(f, s->labels[l]);
        fputs("</text>", f);
        for (int i = 0; i < s->n; i++) {
            const tm_svg_box *b = &s->box[i];
            if (b->lane != l) continue;
            double x0 = LABEL_W + b->start * x_of, w = (b->end - b->start) * x_of;
            double by = b->band ? y + h - 6 : y + 2, bh = b->band ? 4 : h - 9;
            if (w < 0.3) w = 0.3; /* an instant still shows */
            fprintf(f, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                       "data-tip=\"", b->cls, x0, by, w, bh);
            tm_svg_text(f, b->tip);
            fprintf(f, "|%.3f|%.3f\"/>", b->start, b->end);
            if (!b->band && b->label[0] && h >= 20 && w >= 7.0 * (double)strlen(b->label) + 2) {
                fprintf(f, "<text class=\"bl\" data-nm=\"label\" x=\"%.1f\" y=\"%.1f\">",
                        x0 + w / 2, by + bh / 2 + 4);
                tm_svg_text(f, b->label);
                fputs("</text>", f);
            }
        }
        fputs("</g>\n", f);
    }
}

/* The time axis at y0, its title and the legend of the classes used. */
static void lanes_axis(FILE *f, const void *spec, double x_of, double y0)
{
    const tm_svg_lanes_spec *s = spec;
    double top, step = tm_svg_tick_step(s->t_end, 10, &top);
    fprintf(f, "<line class=\"ax\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>", LABEL_W, y0,
            LABEL_W + PLOT_W, y0);
    for (int k = 0; k * step <= s->t_end * (1 + 1e-9); k++) {
        double x = LABEL_W + k * step * x_of;
        fprintf(f, "<line class=\"ax\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                   "<text data-nm=\"axis\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>",
                x, y0, x, y0 + 4, x, y0 + 15, k * step);
    }
    fprintf(f, "<text data-nm=\"axis\" x=\"%d\" y=\"%.1f\">", LABEL_W, y0 + 30);
    tm_svg_text(f, s->axis_title);
    fputs("</text>", f);
    double x = LABEL_W + PLOT_W - 10;
    /* The legend, right-aligned on the title's line, last entry first. */
    for (int k = (int)(sizeof legend / sizeof legend[0]) - 1; k >= 0; k--) {
        int used = strcmp(legend[k].cls, "idle") == 0;
        for (int i = 0; i < s->n && !used; i++) used = strcmp(s->box[i].cls, legend[k].cls) == 0;
        if (!used) continue;
        x -= 7.0 * (double)strlen(legend[k].name) + 8;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>", x, y0 + 30, legend[k].name);
        x -= 14;
        fprintf(f, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\"/>",
                legend[k].cls, x, y0 + 21);
        x -= 10;
    }
    fputc('\n', f);
}

static double x_scale(const tm_svg_lanes_spec *s) { return s->t_end > 0 ? PLOT_W / s->t_end : 0; }

/* A figure's body above its axis, in a div with the figure's id: when it
 * folds, the body scrolls in an <svg> of its own above a fixed one holding
 * the axis, so that the axis stays in view; else one <svg> holds both. */
static void figure(FILE *f, int fold, double body_h, double foot_h, const void *spec,
                   double x_of, void (*body)(FILE *, const void *, double),
                   void (*axis)(FILE *, const void *, double, double))
{
    int W = LABEL_W + PLOT_W + 10;
    if (fold) {
        fprintf(f, "<div class=\"fold\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
                   "height=\"%.0f\">\n", W, body_h + 2);
        body(f, spec, x_of);
        fprintf(f, "</svg></div>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
                   "height=\"%.0f\">\n", W, foot_h + 4);
        axis(f, spec, x_of, 1);
    } else {
        fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\">\n", W,
                body_h + foot_h + 4);
        body(f, spec, x_of);
        axis(f, spec, x_of, body_h + 1);
    }
    fputs("</svg>\n</div>\n", f);
}

void tm_svg_lanes(FILE *f, const tm_svg_lanes_spec *s)
{
    fprintf(f, "<div id=\"%s\" data-lanes=\"%d\" data-unit=\"", s->id, s->lanes);
    tm_svg_text(f, s->unit);
    fputs("\">\n", f);
    figure(f, s->lanes > FOLD_LANES, lane_h(s->lanes) * s->lanes, AXIS_H, s, x_scale(s),
           lanes_body, lanes_axis);
}

void tm_svg_lanes_document(FILE *f, const tm_svg_lanes_spec *s, const char *title)
{
    double x_of = x_scale(s), h = lane_h(s->lanes) * s->lanes;
    int W = LABEL_W + PLOT_W + 10;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\" "
               "viewBox=\"0 0 %d %.0f\" id=\"%s\" data-lanes=\"%d\">\n<style>%s"
               "svg{background:#fff}</style>\n<title>",
            W, h + AXIS_H + 34, W, h + AXIS_H + 34, s->id, s->lanes, style);
    tm_svg_text(f, title);
    fprintf(f, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n"
               "<text x=\"%d\" y=\"18\" style=\"font-size:14px\">", LABEL_W);
    tm_svg_text(f, title);
    fputs("</text>\n<g transform=\"translate(0,28)\">\n", f);
    lanes_body(f, s, x_of);
    lanes_axis(f, s, x_of, h + 1);
    fputs("</g>\n</svg>\n", f);
}

/* Bars: rows of this height, a value axis in nice units. */
enum { BAR_H = 18, BAR_H_SMALL = 12 };

/* The unit of a byte axis reaching max: its divisor and name. */
static double byte_unit(double max, const char **name)
{
    static const char *names[] = {"B", "KiB", "MiB", "GiB"};
    double d = 1;
    int u = 0;
    while (max >= 1024 * d && u < 3) d *= 1024, u++;
    *name = names[u];
    return d;
}

static void bars_axis(FILE *f, const void *spec, double x_of, double y0)
{
    const tm_svg_bars_spec *s = spec;
    const char *uname = "";
    double div = s->bytes ? byte_unit(s->max, &uname) : 1, top;
    double step = tm_svg_tick_step(s->max / div, 8, &top);
    fprintf(f, "<line class=\"ax\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>", LABEL_W, y0,
            LABEL_W + PLOT_W, y0);
    for (int k = 0; k * step * div <= s->max * (1 + 1e-9); k++) {
        double x = LABEL_W + k * step * div * x_of;
        fprintf(f, "<line class=\"ax\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                   "<text data-nm=\"axis\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g%s%s"
                   "</text>",
                x, y0, x, y0 + 4, x, y0 + 15, k * step, *uname ? " " : "", uname);
    }
    fprintf(f, "<text data-nm=\"axis\" x=\"%d\" y=\"%.1f\">", LABEL_W, y0 + 30);
    tm_svg_text(f, s->axis_title);
    fputs("</text>", f);
    double x = LABEL_W + PLOT_W - 10;
    for (int k = s->per_row - 1; k >= 0; k--) {
        x -= 7.0 * (double)strlen(s->names[k]) + 8;
        fprintf(f, "<text data-nm=\"label\" x=\"%.1f\" y=\"%.1f\">", x, y0 + 30);
        tm_svg_text(f, s->names[k]);
        fprintf(f, "</text><rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\"/>",
                s->seg[k].cls, x - 14, y0 + 21);
        x -= 24;
    }
    double ly = y0 + 43;
    if (s->cap > 0) {
        fprintf(f, "<line class=\"cap%s\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
                   "<text data-nm=\"config\" x=\"%d\" y=\"%.1f\">", s->cap > s->max ? " far" : "",
                LABEL_W, ly - 4, LABEL_W + 14, ly - 4, LABEL_W + 20, ly);
        tm_svg_text(f, s->cap_label);
        fputs("</text>", f);
        ly += 14;
    }
    if (s->mark != NULL) {
        fprintf(f, "<line class=\"fml\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
                   "<text x=\"%d\" y=\"%.1f\">", LABEL_W + 7, ly - 9, LABEL_W + 7, ly + 1,
                LABEL_W + 20, ly);
        tm_svg_text(f, s->mark_label);
        fputs("</text>", f);
    }
    fputc('\n', f);
}

static void bars_body(FILE *f, const void *spec, double x_of)
{
    const tm_svg_bars_spec *s = spec;
    int h = s->rows <= 16 ? BAR_H : BAR_H_SMALL;
    for (int r = 0; r < s->rows; r++) {
        double y = r * h, x = LABEL_W;
        fputs("<g class=\"bar\" data-l=\"", f);
        tm_svg_text(f, s->labels[r]);
        fprintf(f, "\"><text data-nm=\"label\" x=\"%d\" y=\"%.1f\" text-anchor=\"end\"%s>",
                LABEL_W - 6, y + h / 2.0 + 4, h < BAR_H ? " style=\"font-size:10px\"" : "");
        tm_svg_text(f, s->labels[r]);
        fputs("</text>", f);
        for (int k = 0; k < s->per_row; k++) {
            const tm_svg_seg *g = &s->seg[r * s->per_row + k];
            double w = g->v * x_of;
            if (w <= 0) continue;
            fprintf(f, "<rect class=\"%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" "
                       "data-tip=\"", g->cls, x, y + 2, w, h - 4);
            tm_svg_text(f, g->tip);
            fputs("\"/>", f);
            x += w;
        }
        if (s->mark != NULL && s->mark[r] >= 0) {
            double mx = LABEL_W + s->mark[r] * x_of;
            fprintf(f, "<line class=\"fml\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", mx,
                    y, mx, y + h);
        }
        fputs("</g>\n", f);
    }
    if (s->cap > 0) {
        /* A cap off the scale stands dashed at its end. */
        int far = s->cap > s->max;
        double cx = LABEL_W + (far ? s->max : s->cap) * x_of;
        fprintf(f, "<line class=\"cap%s\" x1=\"%.1f\" y1=\"0\" x2=\"%.1f\" y2=\"%d\"/>\n",
                far ? " far" : "", cx, cx, s->rows * h);
    }
}

void tm_svg_bars(FILE *f, const tm_svg_bars_spec *s)
{
    int h = (s->rows <= 16 ? BAR_H : BAR_H_SMALL) * s->rows;
    int foot = AXIS_H + (s->cap > 0 ? 14 : 0) + (s->mark != NULL ? 14 : 0);
    fprintf(f, "<div id=\"%s\" data-rows=\"%d\">\n", s->id, s->rows);
    figure(f, s->rows > FOLD_LANES, h, foot, s, s->max > 0 ? PLOT_W / s->max : 0, bars_body,
           bars_axis);
}
