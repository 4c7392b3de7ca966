/* build/schedule: prints a pipeline-parallel schedule as a terminal timeline
 * (simulated), its bubble beside the theory, each stage's activation memory
 * in micro-batches and, on request, the raw action lists. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "runtime/cli.h"
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
    "                       zb-h2 | interleaved-1f1b | all (1f1b)\n"
    "  --virtual-stages V   interleaved-1f1b: V chunks of layers per device, the\n"
    "                       micro-batches a multiple of --pp when V > 1 (1)\n"
    "  --fwd-time X[,X...]  forward time of one micro-batch, one value for every\n"
    "                       stage or one per stage (1); with V > 1 one value is a\n"
    "                       device's whole forward (X/V per chunk), or give one per\n"
    "                       model stage (pp x V, chunk c of device p at c*pp+p)\n"
    "  --bwd-time Y[,Y...]  backward time, likewise (2)\n"
    "  --wgt-time Z[,Z...]  the weight-gradient part W of the backward, likewise, which\n"
    "                       zb-h1 and zb-h2 run apart from the input gradient B = Y - Z\n"
    "                       (half the backward time)\n"
    "  --comm-time Z        time of one message between neighbouring stages (0)\n"
    "  --width N            timeline columns, 10..4096 (enough for every label, up\n"
    "                       to 4096; on a terminal at most its width)\n"
    "  --list               also print each stage's action list\n"
    "  --svg FILE           also draw the schedule into FILE as SVG (one schedule, not\n"
    "                       all)\n"
    "  -h, --help           this text\n"
    "Exit status: 0 success, 1 the schedule failed to build or validate, 2 bad usage.\n";

static double parse_time(const char *flag, const char *v)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(x) || x < 0)
        tm_cli_die("%s wants times >= 0, not \"%s\"", flag, v);
    return x;
}

/* Fills out (pp * vs, one per model stage) from "X" (a device's pass,
 * X / vs per chunk) or "X1,...,Xn" with n = pp * vs. */
static void parse_times(const char *flag, const char *v, double *out, int pp, int vs)
{
    char *copy = strdup(v), *save = NULL;
    if (copy == NULL) tm_cli_die("out of memory");
    int n = 0, want = pp * vs;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == want) tm_cli_die("%s has more than --pp x --virtual-stages = %d values", flag, want);
        out[n++] = parse_time(flag, tok);
    }
    double one = out[0] / vs;
    if (n == 1)
        for (int i = 0; i < want; i++) out[i] = one;
    else if (n != want)
        tm_cli_die("%s wants one value or --pp x --virtual-stages = %d values, not %d", flag, want,
                   n);
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
static int show(tm_schedule_kind kind, int pp, int m, int vs, const double *fwd,
                const double *bwd, const double *wgt, double comm, int width, int list)
{
    tm_schedule s;
    tm_sched_event *ev = NULL;
    int n = 0;
    double makespan = 0;
    /* A split backward: B is the backward less its W. */
    double *b = malloc((size_t)pp * vs * sizeof *b);
    if (b == NULL) tm_cli_die("out of memory");
    int split = tm_schedule_splits_backward(kind);
    for (int i = 0; i < pp * vs; i++) b[i] = split ? bwd[i] - wgt[i] : bwd[i];
    int st = tm_schedule_make_virtual(&s, kind, pp, m, vs);
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
    for (int i = 0; i < pp; i++) {
        double busy = 0;
        for (int c = 0; c < vs; c++) busy += m * (fwd[c * pp + i] + bwd[c * pp + i]);
        if (busy > ideal) ideal = busy;
    }
    printf("makespan %g, ideal %g (all micro-batches on the busiest stage)\n", makespan, ideal);
    printf("micro-batches in flight, max per stage:");
    for (int i = 0; i < pp; i++) printf(" %d", tm_schedule_max_in_flight(&s, i));
    printf("; documented bound:");
    for (int i = 0; i < pp; i++)
        printf(" %d", tm_schedule_in_flight_bound_virtual(kind, pp, m, vs, i));
    printf("\n");
    if (list) print_lists(&s);
    int rc = svg_path != NULL ? write_svg(&s, ev, n, makespan) : 0;
    free(ev);
    tm_schedule_free(&s);
    return rc;
}

int main(int argc, char **argv)
{
    tm_cli_program("schedule");
    enum { O_PP = 256, O_MB, O_SCHED, O_VIRTUAL, O_FWD, O_BWD, O_WGT, O_COMM, O_WIDTH, O_LIST,
           O_SVG };
    static const struct option opts[] = {
        {"pp", required_argument, NULL, O_PP},
        {"micro-batches", required_argument, NULL, O_MB},
        {"schedule", required_argument, NULL, O_SCHED},
        {"virtual-stages", required_argument, NULL, O_VIRTUAL},
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
    int pp = 4, m = 8, vs = 1, width = 0, list = 0, all = 0;
    tm_schedule_kind kind = TM_SCHED_1F1B;
    const char *fwd_arg = "1", *bwd_arg = "2", *wgt_arg = NULL;
    double comm = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_PP: pp = (int)tm_cli_long("--pp", optarg, 1, TM_SCHEDULE_MAX_PP); break;
        case O_MB: m = (int)tm_cli_long("--micro-batches", optarg, 1, TM_SCHEDULE_MAX_MB); break;
        case O_SCHED:
            all = strcmp(optarg, "all") == 0;
            if (!all && tm_schedule_kind_parse(optarg, &kind) != TM_OK)
                tm_cli_die("%s", tm_error_message());
            break;
        case O_VIRTUAL:
            vs = (int)tm_cli_long("--virtual-stages", optarg, 1, TM_SCHEDULE_MAX_VIRTUAL);
            break;
        case O_FWD: fwd_arg = optarg; break;
        case O_BWD: bwd_arg = optarg; break;
        case O_WGT: wgt_arg = optarg; break;
        case O_COMM: comm = parse_time("--comm-time", optarg); break;
        case O_WIDTH:
            width = (int)tm_cli_long("--width", optarg, 10, TM_SCHEDULE_DRAW_MAX_WIDTH);
            break;
        case O_LIST: list = 1; break;
        case O_SVG: svg_path = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            tm_cli_die("unknown or incomplete option \"%s\"", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    if (svg_path != NULL && all) tm_cli_die("--svg draws one schedule, not all");
    if (svg_path != NULL && tm_outfile_check(svg_path) != TM_OK) {
        fprintf(stderr, "schedule: --svg: %s\n", tm_error_message());
        return 2;
    }
    if ((long)pp * m * vs > TM_SCHEDULE_MAX_WORK)
        tm_cli_die("--pp x --micro-batches x --virtual-stages is more than %d",
                   TM_SCHEDULE_MAX_WORK);
    if (vs > 1 && !all && kind != TM_SCHED_INTERLEAVED_1F1B)
        tm_cli_die("--virtual-stages %d needs --schedule interleaved-1f1b (or all)", vs);
    if (vs > 1 && pp < 2) tm_cli_die("--virtual-stages %d needs --pp 2 or more", vs);
    if (vs > 1 && m % pp != 0)
        tm_cli_die("--virtual-stages %d needs --micro-batches (%d) to be a multiple of --pp (%d)",
                   vs, m, pp);
    double *fwd = malloc((size_t)pp * vs * sizeof *fwd);
    double *bwd = malloc((size_t)pp * vs * sizeof *bwd);
    double *fwd1 = malloc((size_t)pp * sizeof *fwd1), *bwd1 = malloc((size_t)pp * sizeof *bwd1);
    double *wgt = malloc((size_t)pp * vs * sizeof *wgt);
    if (fwd == NULL || bwd == NULL || fwd1 == NULL || bwd1 == NULL || wgt == NULL)
        tm_cli_die("out of memory");
    parse_times("--fwd-time", fwd_arg, fwd, pp, vs);
    parse_times("--bwd-time", bwd_arg, bwd, pp, vs);
    if (wgt_arg != NULL) parse_times("--wgt-time", wgt_arg, wgt, pp, 1);
    /* The other schedules of "all" run each device's chunks as one stage. */
    for (int i = 0; i < pp; i++) {
        fwd1[i] = bwd1[i] = 0;
        for (int c = 0; c < vs; c++) fwd1[i] += fwd[c * pp + i], bwd1[i] += bwd[c * pp + i];
        if (wgt_arg == NULL) wgt[i] = bwd1[i] / 2;
        if (wgt[i] > bwd1[i])
            tm_cli_die("--wgt-time %g is more than the backward time %g (stage %d)", wgt[i],
                       bwd1[i], i);
    }
    int rc = 0;
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++) {
        if (!all && k != (int)kind) continue;
        if (all && k > 0) printf("\n");
        if (k == TM_SCHED_INTERLEAVED_1F1B)
            rc |= show((tm_schedule_kind)k, pp, m, vs, fwd, bwd, wgt, comm, width, list);
        else
            rc |= show((tm_schedule_kind)k, pp, m, 1, fwd1, bwd1, wgt, comm, width, list);
    }
    free(fwd1);
    free(bwd1);
    free(fwd);
    free(bwd);
    free(wgt);
    return rc;
}
