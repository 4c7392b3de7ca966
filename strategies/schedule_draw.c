/* The bubble of a run and the terminal timeline of its events: nothing here
 * knows how the events were produced, so measured runs draw the same way. */
#include "strategies/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double tm_schedule_bubble(const tm_sched_event *ev, int n, int pp, double makespan)
{
    if (!(makespan > 0) || pp < 1) return 0;
    double busy = 0;
    for (int i = 0; i < n; i++)
        if (ev[i].kind == TM_SCHED_FWD || ev[i].kind == TM_SCHED_BWD || ev[i].kind == TM_SCHED_WGT)
            busy += ev[i].end - ev[i].start;
    return 1 - busy / (pp * makespan);
}

double tm_schedule_bubble_theory(tm_schedule_kind kind, int pp, int m)
{
    return tm_schedule_bubble_theory_virtual(kind, pp, m, 1);
}

double tm_schedule_bubble_theory_virtual(tm_schedule_kind kind, int pp, int m, int v)
{
    if (pp < 1 || m < 1 || v < 1 || (v > 1 && kind != TM_SCHED_INTERLEAVED_1F1B)) return -1;
    switch (kind) {
    case TM_SCHED_SEQUENTIAL: return (double)(pp - 1) / pp;
    case TM_SCHED_GPIPE:
    case TM_SCHED_1F1B:
    case TM_SCHED_GROUPED:
    case TM_SCHED_INTERLEAVED: return (double)(pp - 1) / (m + pp - 1);
    case TM_SCHED_ZB_H1:
    case TM_SCHED_ZB_H2:
        /* zb-h2 reaches zb-h1's makespan at these times, no less: the
         * last stage waits (p-1) F for its first activation all the same.
         * With fewer micro-batches than stages the last one's forward and
         * backward waves, then its W, set the makespan (in units of F). */
        return m >= pp ? (double)(pp - 1) / (3 * m + pp - 1)
                       : 1 - 3.0 * m / (2 * (m + pp - 1) + 1);
    case TM_SCHED_INTERLEAVED_1F1B:
        if (v > 1 && m % pp != 0) return -1;
        return (double)(pp - 1) / ((double)v * m + pp - 1);
    default: return -1;
    }
}

double tm_schedule_zb_h1_bubble(int pp, int m, double f, double b, double w)
{
    if (pp < 1 || m < pp || !(f >= 0) || !(b >= 0) || !(w >= 0)) return -1;
    double most = f > b ? f : b;
    if (f + b - w > most) most = f + b - w;
    double idle = (pp - 1) * most, busy = m * (f + b + w);
    return busy + idle > 0 ? idle / (busy + idle) : 0;
}

static int is_pass(const tm_sched_event *e)
{
    return e->kind == TM_SCHED_FWD || e->kind == TM_SCHED_BWD || e->kind == TM_SCHED_WGT;
}

/* Whether any event belongs to a chunk other than 0. */
static int chunked(const tm_sched_event *ev, int n)
{
    for (int i = 0; i < n; i++)
        if (ev[i].chunk != 0) return 1;
    return 0;
}

/* "F3", or with chunks "F3a" (chunk 0), "F3b" (chunk 1), ... */
static int label(char *buf, size_t n, const tm_sched_event *e, int chunks)
{
    char pass = e->kind == TM_SCHED_FWD ? 'F' : e->kind == TM_SCHED_BWD ? 'B' : 'W';
    if (chunks) return snprintf(buf, n, "%c%d%c", pass, e->mb, 'a' + e->chunk % 26);
    return snprintf(buf, n, "%c%d", pass, e->mb);
}

int tm_schedule_draw_width(const tm_sched_event *ev, int n, double makespan)
{
    double shortest = 0;
    int widest = 0, chunks = chunked(ev, n);
    char buf[32];
    for (int i = 0; i < n; i++) {
        double d = ev[i].end - ev[i].start;
        if (!is_pass(&ev[i]) || !(d > 0)) continue;
        if (shortest == 0 || d < shortest) shortest = d;
        int l = label(buf, sizeof buf, &ev[i], chunks);
        if (l > widest) widest = l;
    }
    if (!(makespan > 0) || shortest == 0) return 80;
    /* The slack keeps an exact ratio like 33.0000001 from adding a column. */
    double w = ceil(makespan / shortest * (widest + 1) - 1e-6);
    return w > TM_SCHEDULE_DRAW_MAX_WIDTH ? TM_SCHEDULE_DRAW_MAX_WIDTH : (int)w;
}

static int column(double t, double scale) { return (int)floor(t * scale + 0.5); }

/* A tick every 1, 2 or 5 times a power of ten, at least 8 columns apart. */
static double tick_step(double scale)
{
    double step = pow(10, floor(log10(8 / scale)));
    while (step * scale < 8) {
        if (step * 2 * scale >= 8) return step * 2;
        if (step * 5 * scale >= 8) return step * 5;
        step *= 10;
    }
    return step;
}

/* Writes event e into its stage's row of the grid. */
static void paint(char *row, int width, double scale, const tm_sched_event *e, int chunks)
{
    int c0 = column(e->start, scale), c1 = column(e->end, scale);
    if (c1 <= c0) c1 = c0 + 1; /* a pass too short for a column still shows */
    if (c0 < 0) c0 = 0;
    if (c1 > width) c1 = width;
    char lab[32];
    int l = label(lab, sizeof lab, e, chunks);
    /* A label cut short would name another micro-batch: write only the
     * pass's letter then. */
    for (int c = c0; c < c1; c++)
        row[c] = l <= c1 - c0 ? (c - c0 < l ? lab[c - c0] : ' ') : lab[0];
}

void tm_schedule_draw(FILE *out, const tm_schedule *s, const tm_sched_event *ev, int n,
                      double makespan, int width)
{
    if (width <= 0) width = tm_schedule_draw_width(ev, n, makespan);
    int digits = snprintf(NULL, 0, "%d", s->pp - 1);
    char *grid = malloc((size_t)s->pp * width);
    char *row = malloc((size_t)width + 16);
    if (grid == NULL || row == NULL) {
        free(grid);
        free(row);
        return;
    }
    double scale = makespan > 0 ? width / makespan : 0;
    int v = s->v > 1 ? s->v : 1, chunks = chunked(ev, n);
    fprintf(out, "%s, %d stage%s, %d micro-batch%s", tm_schedule_kind_name(s->kind), s->pp,
            s->pp == 1 ? "" : "s", s->m, s->m == 1 ? "" : "es");
    if (v > 1) fprintf(out, ", %d virtual stages", v);
    fprintf(out, ", makespan %g\n", makespan);
    memset(grid, '.', (size_t)s->pp * width);
    for (int i = 0; i < n; i++)
        if (is_pass(&ev[i]) && ev[i].stage >= 0 && ev[i].stage < s->pp)
            paint(grid + (size_t)ev[i].stage * width, width, scale, &ev[i], chunks);
    for (int st = 0; st < s->pp; st++)
        fprintf(out, "stage %*d |%.*s|\n", digits, st, width, grid + (size_t)st * width);
    free(grid);
    if (scale > 0) {
        double step = tick_step(scale);
        memset(row, ' ', (size_t)width + 16);
        int free_from = 0;
        for (int k = 0; k * step <= makespan + 1e-9; k++) {
            char num[32];
            int c = column(k * step, scale), l = snprintf(num, sizeof num, "%g", k * step);
            if (c < free_from || c + l > width + 8) continue;
            memcpy(row + c, num, (size_t)l);
            free_from = c + l + 1;
        }
        while (free_from > 0 && row[free_from - 1] == ' ') free_from--;
        fprintf(out, "%*s%.*s\n", 8 + digits, "time ", free_from, row);
    }
    if (tm_schedule_splits_backward(s->kind))
        fprintf(out, "Fi / Bi / Wi: forward / input gradient / weight gradients of micro-batch "
                     "i; '.': idle or in a message; 1 column = %.3g time units\n",
                scale > 0 ? 1 / scale : 0.0);
    else
        fprintf(out, "Fi / Bi: forward / backward of micro-batch i%s; '.': idle or in a message; "
                     "1 column = %.3g time units\n",
                chunks ? " (Fia: in chunk a, Fib: chunk b, ...)" : "", scale > 0 ? 1 / scale : 0.0);
    double theory = tm_schedule_bubble_theory_virtual(s->kind, s->pp, s->m, v);
    fprintf(out, "bubble %.2f%% measured", 100 * tm_schedule_bubble(ev, n, s->pp, makespan));
    if (theory >= 0)
        fprintf(out, ", %.2f%% theory %s for equal stages and free messages", 100 * theory,
                s->kind == TM_SCHED_SEQUENTIAL         ? "(p-1)/p"
                : tm_schedule_splits_backward(s->kind)
                    ? (s->m >= s->pp ? "(p-1)/(3m+p-1) with F = B = W"
                                     : "1-3m/(2(m+p-1)+1) with F = B = W, m < p")
                : v > 1 ? "(p-1)/(v*m+p-1)"
                        : "(p-1)/(m+p-1)");
    fprintf(out, "\n");
    free(row);
}
