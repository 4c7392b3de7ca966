/* build/schedule: prints a pipeline-parallel schedule as a terminal timeline
 * (simulated), its bubble beside the theory, each stage's activation memory
 * in micro-batches and, on request, the raw action lists. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "runtime/outfile.h"
#include "runtime/status.h"
#include "strategies/report_html.h"
#include "strategies/schedule.h"

static const char usage[] =
    "usage: schedule [options]\n"
    "Draws a pipeline-parallel training schedule: one row per stage (device),\n"
    "time left to right, simulated with blocking point-to-point messages.\n"
    "\n"
    "  --pp P               pipeline stages (4)\n"
    "  --micro-batches M    micro-batches per step (8)\n"
    "  --schedule NAME      sequential | gpipe | 1f1b | grouped | interleaved | zb-h1 |\n"
    "                       all (1f1b)\n"
    "  --fwd-time X[,X...]  forward time of one micro-batch, one value for every\n"
    "                       stage or one per stage (1)\n"
    "  --bwd-time Y[,Y...]  backward time, likewise (2)\n"
    "  --wgt-time Z[,Z...]  the weight-gradient part W of the backward, likewise, which\n"
    "                       zb-h1 runs apart from the input gradient B = Y - Z\n"
    "                       (half the backward time)\n"
    "  --comm-time Z        time of one message between neighbouring stages (0)\n"
    "  --width N            timeline columns, 10..4096 (enough for every label, up\n"
    "                       to 4096; on a terminal at most its width)\n"
    "  --list               also print each stage's action list\n"
    "  --svg FILE           also draw the schedule into FILE as SVG (one schedule, not\n"
    "                       all)\n"
    "  -h, --help           this text\n"
    "Exit status: 0 success, 1 the schedule failed to build or validate, 2 bad usage.\n";

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "schedule: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see --help)\n");
    va_end(ap);
    exit(2);
}

static long parse_long(const char *flag, const char *v, long min, long max)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || x < min || x > max)
        die_usage("%s wants an integer in %ld..%ld, not \"%s\"", flag, min, max, v);
    return x;
}

static double parse_time(const char *flag, const char *v)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(x) || x < 0)
        die_usage("%s wants times >= 0, not \"%s\"", flag, v);
    return x;
}

/* Fills out (pp) from "X" or "X1,...,Xpp". */
static void parse_times(const char *flag, const char *v, double *out, int pp)
{
    char *copy = strdup(v), *save = NULL;
    if (copy == NULL) die_usage("out of memory");
    int n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == pp) die_usage("%s has more than --pp = %d values", flag, pp);
        out[n++] = parse_time(flag, tok);
    }
    if (n == 1)
        for (int i = 1; i < pp; i++) out[i] = out[0];
    else if (n != pp)
        die_usage("%s wants one value or --pp = %d values, not %d", flag, pp, n);
    free(copy);
}

static void print_lists(const tm_schedule *s)
{
    for (int st = 0; st < s->pp; st++) {
        int col = printf("stage %d (%d actions):", st, s->len[st]);
        for (int i = 0; i < s->len[st]; i++) {
            char name[64];
            int l = tm_sched_action_format(name, sizeof name, s->actions[st][i]);
            if (col + 1 + l > 79) col = printf("\n   ") - 1;
            col += printf(" %s", name);
        }
        printf("\n");
    }
}

/* --svg: the file the schedule is also drawn into, or NULL. */
static const char *svg_path;

/* Writes the simulated schedule as an SVG document to svg_path. Returns 0,
 * or 1 with a message. */
static int write_svg(const tm_schedule *s, const tm_sched_event *ev, int n, double makespan)
{
    tm_outfile *out = NULL;
    FILE *f = NULL;
    int st = tm_outfile_open(&out, svg_path);
    if (st == TM_OK && (f = tm_outfile_stream(out)) == NULL) st = TM_EIO;
    if (st == TM_OK) st = tm_report_schedule_svg(f, s, ev, n, makespan);
    if (st == TM_OK) st = tm_outfile_commit(out);
    else tm_outfile_abandon(out);
    if (st != TM_OK) fprintf(stderr, "schedule: --svg: %s\n", tm_error_message());
    return st != TM_OK;
}

/* Builds, simulates and draws one schedule. Returns 0 or 1. */
static int show(tm_schedule_kind kind, int pp, int m, const double *fwd, const double *bwd,
                const double *wgt, double comm, int width, int list)
{
    tm_schedule s;
    tm_sched_event *ev = NULL;
    int n = 0;
    double makespan = 0;
    /* A split backward: B is the backward less its W. */
    double *b = malloc((size_t)pp * sizeof *b);
    if (b == NULL) die_usage("out of memory");
    int split = tm_schedule_splits_backward(kind);
    for (int i = 0; i < pp; i++) b[i] = split ? bwd[i] - wgt[i] : bwd[i];
    int st = tm_schedule_make(&s, kind, pp, m);
    if (st == TM_OK)
        st = tm_schedule_simulate_split(&s, fwd, b, split ? wgt : NULL, comm, &ev, &n, &makespan);
    free(b);
    if (st != TM_OK) {
        fprintf(stderr, "schedule: %s: %s\n", tm_schedule_kind_name(kind), tm_error_message());
        tm_schedule_free(&s);
        return 1;
    }
    if (width <= 0) {
        width = tm_schedule_draw_width(ev, n, makespan);
        /* A terminal gets a timeline as wide as it is; a pipe or a file
         * gets every label, however wide the lines. */
        struct winsize ws;
        if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col) {
            int room = ws.ws_col - 10 - snprintf(NULL, 0, "%d", pp - 1);
            if (width > room) width = room > 20 ? room : 20;
        }
    }
    tm_schedule_draw(stdout, &s, ev, n, makespan, width);
    double ideal = 0;
    for (int i = 0; i < pp; i++)
        if (m * (fwd[i] + bwd[i]) > ideal) ideal = m * (fwd[i] + bwd[i]);
    printf("makespan %g, ideal %g (all micro-batches on the busiest stage)\n", makespan, ideal);
    printf("micro-batches in flight, max per stage:");
    for (int i = 0; i < pp; i++) printf(" %d", tm_schedule_max_in_flight(&s, i));
    printf("; documented bound:");
    for (int i = 0; i < pp; i++) printf(" %d", tm_schedule_in_flight_bound(kind, pp, m, i));
    printf("\n");
    if (list) print_lists(&s);
    int rc = svg_path != NULL ? write_svg(&s, ev, n, makespan) : 0;
    free(ev);
    tm_schedule_free(&s);
    return rc;
}

int main(int argc, char **argv)
{
    enum { O_PP = 256, O_MB, O_SCHED, O_FWD, O_BWD, O_WGT, O_COMM, O_WIDTH, O_LIST, O_SVG };
    static const struct option opts[] = {
        {"pp", required_argument, NULL, O_PP},
        {"micro-batches", required_argument, NULL, O_MB},
        {"schedule", required_argument, NULL, O_SCHED},
        {"fwd-time", required_argument, NULL, O_FWD},
        {"bwd-time", required_argument, NULL, O_BWD},
        {"wgt-time", required_argument, NULL, O_WGT},
        {"comm-time", required_argument, NULL, O_COMM},
        {"width", required_argument, NULL, O_WIDTH},
        {"list", no_argument, NULL, O_LIST},
        {"svg", required_argument, NULL, O_SVG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int pp = 4, m = 8, width = 0, list = 0, all = 0;
    tm_schedule_kind kind = TM_SCHED_1F1B;
    const char *fwd_arg = "1", *bwd_arg = "2", *wgt_arg = NULL;
    double comm = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_PP: pp = (int)parse_long("--pp", optarg, 1, TM_SCHEDULE_MAX_PP); break;
        case O_MB: m = (int)parse_long("--micro-batches", optarg, 1, TM_SCHEDULE_MAX_MB); break;
        case O_SCHED:
            all = strcmp(optarg, "all") == 0;
            if (!all && tm_schedule_kind_parse(optarg, &kind) != TM_OK)
                die_usage("%s", tm_error_message());
            break;
        case O_FWD: fwd_arg = optarg; break;
        case O_BWD: bwd_arg = optarg; break;
        case O_WGT: wgt_arg = optarg; break;
        case O_COMM: comm = parse_time("--comm-time", optarg); break;
        case O_WIDTH:
            width = (int)parse_long("--width", optarg, 10, TM_SCHEDULE_DRAW_MAX_WIDTH);
            break;
        case O_LIST: list = 1; break;
        case O_SVG: svg_path = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            die_usage("unknown or incomplete option \"%s\"", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("unexpected argument \"%s\"", argv[optind]);
    if (svg_path != NULL && all) die_usage("--svg draws one schedule, not all");
    if (svg_path != NULL && tm_outfile_check(svg_path) != TM_OK) {
        fprintf(stderr, "schedule: --svg: %s\n", tm_error_message());
        return 2;
    }
    if ((long)pp * m > TM_SCHEDULE_MAX_WORK)
        die_usage("--pp x --micro-batches is more than %d", TM_SCHEDULE_MAX_WORK);
    double *fwd = malloc((size_t)pp * sizeof *fwd), *bwd = malloc((size_t)pp * sizeof *bwd);
    double *wgt = malloc((size_t)pp * sizeof *wgt);
    if (fwd == NULL || bwd == NULL || wgt == NULL) die_usage("out of memory");
    parse_times("--fwd-time", fwd_arg, fwd, pp);
    parse_times("--bwd-time", bwd_arg, bwd, pp);
    if (wgt_arg != NULL) parse_times("--wgt-time", wgt_arg, wgt, pp);
    for (int i = 0; i < pp; i++) {
        if (wgt_arg == NULL) wgt[i] = bwd[i] / 2;
        if (wgt[i] > bwd[i])
            die_usage("--wgt-time %g is more than the backward time %g (stage %d)", wgt[i],
                      bwd[i], i);
    }
    int rc = 0;
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
        if (!all && k != (int)kind) continue;
        if (all && k > 0) printf("\n");
        rc |= show((tm_schedule_kind)k, pp, m, fwd, bwd, wgt, comm, width, list);
    }
    free(fwd);
    free(bwd);
    free(wgt);
    return rc;
}
