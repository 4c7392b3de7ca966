/* A small writer of the HTML reports' parts: escaped text, numbers tied to
 * the figures of a run's metrics, axis ticks, the page's frame (inline CSS
 * and a little script, nothing from the network) and the lane chart that
 * draws timelines. The output is well-formed XML as well as HTML (every
 * element closed, attributes quoted, the script in a CDATA section), so a
 * strict parser can check it. Thread-safety: plain functions of their
 * arguments. */
#ifndef TM_SVG_H
#define TM_SVG_H

#include <stdio.h>

/* Writes s with &, <, >, " and ' escaped (for text and attribute values). */
void tm_svg_text(FILE *f, const char *s);
/* printf into an escaped string. */
void tm_svg_textf(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "1.50 MiB" style, as strategies/report.h prints bytes. */
void tm_svg_bytes(double bytes, char *buf, size_t n);

/* A number shown in a report that is one of the run's recorded figures
 * (the metrics file's, or bench_strategies' CSV): path names it there
 * ("summary/devices/3/compute_s", "epoch/epoch=2/test_acc": a record type,
 * then either a field=value selector or an index or key per level), fmt is
 * the printf format the file writes it with, and show how the page shows
 * it: "fN" fixed N decimals, "pN" a percentage with N decimals, "msN"
 * milliseconds with N decimals, "b" bytes as tm_svg_bytes. The page shows
 * the value as the file holds it (formatted with fmt and read back), so the
 * two agree to the last digit; the element carries path, the file's text
 * and show, for checkers. A non-finite value (the file's null) shows
 * "n/a". */
void tm_svg_metric(FILE *f, const char *path, const char *fmt, double v, const char *show);
/* The same number formatted as `show` into buf (what tm_svg_metric shows). */
void tm_svg_format(double v, const char *show, char *buf, size_t n);
/* A figure that is not one of the recorded ones (a configuration value, a
 * formula, a label), shown as text and marked with why, for checkers:
 * "config", "formula", "axis", "label". */
void tm_svg_plain(FILE *f, const char *why, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Axis ticks: a step of 1, 2 or 5 x 10^k giving about `ticks` intervals
 * over [0, max]; *top is the first multiple of the step at or above max
 * (max > 0; otherwise step 1 and top 1). */
double tm_svg_tick_step(double max, int ticks, double *top);

/* The page's head (title, inline style) and body opening, and its end
 * (the hover script). */
void tm_svg_page_begin(FILE *f, const char *title);
void tm_svg_page_end(FILE *f);

/* One box of a lane chart. */
typedef struct {
    int lane;
    double start, end;  /* in the chart's time unit */
    const char *cls;    /* CSS class: its colour (see tm_svg_page_begin) */
    int band;           /* 0: the lane's main band; 1: its lower, thinner band */
    char label[12];     /* drawn on the box when it fits ("F3") */
    char tip[80];       /* shown on hover before the times ("forward, micro-batch 3") */
} tm_svg_box;

/* A lane chart: one lane per label, boxes on them, a time axis from 0 to
 * t_end in `unit`. Beyond 24 lanes the lanes fold into a scrolling view
 * under a fixed axis. id names the figure (lanes are elements of class
 * "lane", data-lanes holds their count). */
typedef struct {
    const char *id;
    int lanes;
    const char *const *labels; /* (lanes) */
    const tm_svg_box *box;
    int n;
    double t_end;
    const char *unit;          /* "us", ... */
    const char *axis_title;    /* under the axis */
} tm_svg_lanes_spec;

void tm_svg_lanes(FILE *f, const tm_svg_lanes_spec *s);

/* A chart of horizontal stacked bars, one row per label (an element of
 * class "bar"), each row `per_row` segments left to right; a value axis
 * from 0 to max (bytes when `bytes`, else in the unit of axis_title);
 * optionally a cap line over every row and a mark per row. Beyond 24 rows
 * the rows fold into a scrolling view. */
typedef struct {
    const char *cls;
    double v;
    char tip[96];          /* hover text */
} tm_svg_seg;

typedef struct {
    const char *id;
    int rows, per_row;
    const char *const *labels;  /* (rows) */
    const tm_svg_seg *seg;      /* (rows * per_row) */
    const char *const *names;   /* (per_row) the legend, by segment */
    double max;
    int bytes;
    const char *axis_title;
    double cap;                 /* > 0: a red line there (dashed at the end of the
                                   scale when past max), labelled cap_label */
    const char *cap_label;
    const double *mark;         /* (rows) or NULL: a black tick at each (< 0: none) */
    const char *mark_label;
} tm_svg_bars_spec;

void tm_svg_bars(FILE *f, const tm_svg_bars_spec *s);

/* The lane chart as a standalone SVG document (for slides). */
void tm_svg_lanes_document(FILE *f, const tm_svg_lanes_spec *s, const char *title);

#endif
