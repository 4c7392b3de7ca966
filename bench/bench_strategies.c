/* bench_strategies: every way to spread one model — an MLP or the GPT —
 * over N emulated devices — each mesh dp x pp x tp = N, each pipeline
 * schedule, each micro-batch count, the GPT's sequence parallelism on and
 * off, the ZeRO stages asked for — trained for a few steps, ranked by
 * modeled throughput, with the pipeline bubble, the traffic and the memory
 * each one costs.
 * bench/plot_strategies.sh draws the --csv output. */
#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/arena.h"
#include "runtime/cli.h"
#include "runtime/outfile.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/data.h"
#include "strategies/gpt.h"
#include "strategies/idx.h"
#include "strategies/mlp.h"
#include "strategies/planner.h"
#include "strategies/recipe.h"
#include "strategies/report.h"
#include "strategies/report_html.h"
#include "strategies/schedule.h"
#include "strategies/trainer.h"
#include "strategies/zero.h"

static const char usage_head[] =
    "usage: bench_strategies [--devices N] [--model W0,W1,...|gpt] [--layers L] [--heads H]\n"
    "         [--d-model C] [--context T] [--batch B] [--steps N] [--micro-batches LIST]\n"
    "         [--schedules LIST] [--zero LIST] [--mem-cap SIZE] [--recompute R]\n"
    "         [--offload O --host-mem-cap SIZE] [--precision P] [--csv] [--report FILE]\n"
    "         [--space grid|planner] [clock flags]\n"
    "Trains the model for a few steps on every mesh dp x pp x tp = N devices, with\n"
    "every pipeline schedule and micro-batch count, on synthetic data (the MLP:\n"
    "input width and classes from --model; the GPT: bytes of a seeded Markov\n"
    "source), and prints one row per configuration, best first by modeled\n"
    "samples/s. With pp = 1 there is no pipeline and every schedule is the same\n"
    "gradient-accumulation loop, so those meshes run 1f1b only. The GPT runs every\n"
    "mesh with tp > 1 twice, without and with sequence parallelism.\n"
    "  --devices N           devices in every mesh (8)\n"
    "  --model W0,W1,...     the MLP's layer widths, inputs first, classes (2..256)\n"
    "                        last, or gpt (256,256,256,256,256)\n"
    "  --layers, --heads, --d-model, --context\n"
    "                        the GPT's L, H, C and T (4, 4, 128, 128: build/train's)\n"
    "  --batch B             samples (GPT: sequences) per optimizer step, the global\n"
    "                        batch (MLP 128, GPT 32)\n"
    "  --steps N             optimizer steps per configuration (4)\n"
    "  --micro-batches LIST  micro-batch counts per replica, each run where it\n"
    "                        divides the replica's batch (1,2,4,8,16)\n"
    "  --schedules LIST      pipeline schedules for pp > 1 (sequential,gpipe,1f1b,\n"
    "                        grouped,interleaved,zb-h1,zb-h2,interleaved-1f1b);\n"
    "                        interleaved-1f1b runs with 2 to 4 virtual stages where\n"
    "                        the model has a unit (GPT: a block) for each of pp x v\n"
    "                        model stages, micro-batches a multiple of pp (v 1 is\n"
    "                        1f1b)\n"
    "  --zero LIST           ZeRO stages (0 to 3) each mesh with dp > 1 runs with;\n"
    "                        meshes with dp = 1 run without ZeRO (0)\n"
    "  --mem-cap SIZE        device memory the fits column is about, >= 64K (64M)\n"
    "  --recompute R         activation recomputation in every configuration: none,\n"
    "                        full, or selective (the GPT's attention) (none)\n"
    "  --offload O           optimizer offload in every configuration: none, or\n"
    "                        optimizer (each device's optimizer state in host\n"
    "                        memory, the host link's copies in the modeled time;\n"
    "                        not in peak or comm) (none)\n"
    "  --host-mem-cap SIZE   host memory of each device for --offload; a\n"
    "                        configuration whose state does not fit it is skipped\n"
    "  --precision P         every configuration in fp32, or bf16: GEMMs on bf16\n"
    "                        weight copies with fp32 accumulation (AVX512_BF16 or\n"
    "                        the fp32 kernels on rounded operands: any CPU),\n"
    "                        activations stored in bf16 (fp32)\n"
    "  --csv                 print the columns below as CSV with a header row; the\n"
    "                        footer goes to stderr; bubble is empty when pp = 1\n"
    "  --report FILE         also write an HTML page of the sweep (opens offline in\n"
    "                        any browser): throughput, memory against the cap, bubble\n"
    "                        against micro-batches (not with ZeRO stages in --zero)\n"
    "  --space S             grid: the configurations above (the default); planner:\n"
    "                        every configuration build/plan searches (its own\n"
    "                        enumeration: micro-batches, schedules with their virtual\n"
    "                        stages, sequence parallelism, recomputation, ZeRO,\n"
    "                        --precision, offload with --host-mem-cap), each run\n"
    "                        for real for 2 steps and ranked by step 2's modeled\n"
    "                        time, as build/plan ranks them; a config column gives\n"
    "                        its build/train flags (not with --micro-batches,\n"
    "                        --schedules, --zero, --recompute, --offload, --steps,\n"
    "                        --report)\n"
    "modeled time (defaults measured on this machine, as build/train's):\n";

static const char usage_tail[] =
    "Columns:\n"
    "  dp pp tp schedule micro_batches   the configuration (schedule: \"interleaved-1f1b\n"
    "                         v2\" with 2 virtual stages)\n"
    "  sp                     the GPT with tp > 1: sequence parallelism (yes/no);\n"
    "                         '-' otherwise (empty in CSV)\n"
    "  modeled_samples_per_s  samples per second of modeled time (what real devices\n"
    "                         would take; the slowest device's time; the sort key)\n"
    "  wall_samples_per_s     samples per second of this machine's training time;\n"
    "                         N device threads share its cores, so it ranks nothing\n"
    "  bubble                 pp > 1: measured fraction of pipeline time not spent\n"
    "                         computing; '-' when pp = 1\n"
    "  comm_bytes_per_device  payload bytes a device sends in one step (mean over\n"
    "                         devices; data, pipeline and tensor traffic together)\n"
    "  peak_bytes_per_device  the largest device's arena high-water mark\n"
    "  zero                   with --zero: the ZeRO stage (the last CSV column)\n"
    "  fits                   yes when the configuration runs with --mem-cap per\n"
    "                         device. Every configuration runs to completion in\n"
    "                         an arena grown as it needs, whatever the cap, so\n"
    "                         every row has its peak; fits is no when the peak\n"
    "                         is above the cap or an arena of the cap or more ran\n"
    "                         out, yes when an arena of at most the cap was\n"
    "                         enough, and otherwise decided by one more run in\n"
    "                         exactly the cap (a run needs a little more than its\n"
    "                         peak: the trainer's up-front activation probe)\n"
    "Configurations whose replica batch the micro-batch count does not divide, or\n"
    "that tm_train_check rejects (a stage without a layer, a width tp does not\n"
    "divide, ...), are skipped and counted in the footer.\n"
    "The GPT trains with its recipe (AdamW, weight decay 0.1, clipping at 1) at a\n"
    "constant lr 1e-3; samples/s count sequences (tokens/s = samples/s x T).\n"
    "Exit status: 0 success, 1 a configuration failed to run, 2 bad usage.\n";

enum { MAX_LIST = 16 };

/* "1,2,4": distinct integers in 1..TM_SCHEDULE_MAX_MB. Returns the count. */
static int parse_counts(const char *v, int *out)
{
    char buf[256];
    if (strlen(v) >= sizeof buf) tm_cli_die("--micro-batches \"%s\" is too long", v);
    strcpy(buf, v);
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (n == MAX_LIST) tm_cli_die("--micro-batches takes at most %d counts", MAX_LIST);
        out[n] = (int)tm_cli_long("--micro-batches", t, 1, TM_SCHEDULE_MAX_MB);
        for (int i = 0; i < n; i++)
            if (out[i] == out[n]) tm_cli_die("--micro-batches names %d twice", out[n]);
        n++;
    }
    if (n == 0) tm_cli_die("--micro-batches wants a list like 1,2,4, not \"%s\"", v);
    return n;
}

static int parse_schedules(const char *v, tm_schedule_kind *out)
{
    char buf[256];
    if (strlen(v) >= sizeof buf) tm_cli_die("--schedules \"%s\" is too long", v);
    strcpy(buf, v);
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (n == TM_SCHEDULE_KINDS || tm_schedule_kind_parse(t, &out[n]) != TM_OK)
            tm_cli_die("--schedules takes distinct names of sequential, gpipe, 1f1b, grouped, "
                       "interleaved, zb-h1, zb-h2 and interleaved-1f1b, not \"%s\"", v);
        for (int i = 0; i < n; i++)
            if (out[i] == out[n]) tm_cli_die("--schedules names %s twice", t);
        n++;
    }
    if (n == 0) tm_cli_die("--schedules wants a list like gpipe,1f1b, not \"%s\"", v);
    return n;
}

/* "0,3": distinct ZeRO stages. Returns the count. */
static int parse_zeros(const char *v, int *out)
{
    int n = 0;
    for (const char *p = v;; p += 2) {
        if (p[0] < '0' || p[0] > '0' + TM_ZERO_MAX || (p[1] != ',' && p[1] != '\0') ||
            n > TM_ZERO_MAX)
            tm_cli_die("--zero takes distinct ZeRO stages 0 to 3 like 0,1,2,3, not \"%s\"", v);
        out[n] = p[0] - '0';
        for (int i = 0; i < n; i++)
            if (out[i] == out[n]) tm_cli_die("--zero names %d twice", out[n]);
        n++;
        if (p[1] == '\0') return n;
    }
}

typedef enum { RAN, SKIP_BATCH, SKIP_CHECK, FAILED } outcome;

/* One configuration of the sweep and what it measured. */
typedef struct {
    int dp, pp, tp, m;
    int zero;              /* ZeRO stage over dp */
    int sp;                /* -1: not a GPT with tp > 1; else sequence parallelism */
    tm_schedule_kind schedule;
    int v;                 /* interleaved-1f1b: virtual stages; else 1 */
    int order;             /* position in the sweep: the tie-break of the sort */
    outcome how;
    double modeled_sps, wall_sps;
    double bubble;         /* -1 when pp = 1 */
    double comm_bytes;     /* per device and step, mean over devices */
    size_t peak;           /* max over devices */
    int fits;              /* runs with arenas of --mem-cap */
    int planned;           /* --space planner: pt is the configuration */
    tm_plan_point pt;
    double step_s;         /* --space planner: step TM_PLAN_STEP's modeled time */
} config;

/* The largest arena a configuration starts with. A world prefaults its
 * arenas, which costs about 20 us per 4 KiB page on this VM (0.6 s for
 * 8 x 64 MiB), so a configuration starts small and doubles its arena after
 * each TM_ENOMEM: the retries cost at most what the final arena does, and
 * the peak does not depend on the capacity the run had. */
#define FIRST_ARENA ((size_t)4 << 20)

/* Runs cfg (c's configuration) to completion into c, and decides whether it
 * runs with arenas of cap bytes. Returns TM_OK, or the error with its
 * message in error (TM_EHOSTMEM when the host cannot give the arena it
 * needs). */
static int run_config(tm_train_config cfg, size_t cap, config *c, const tm_data *train,
                      const tm_data *test, char *error, size_t error_size)
{
    tm_train_result r;
    size_t short_of = 0; /* the largest arena that ran out */
    int st;
    cfg.mem_cap = cap < FIRST_ARENA ? cap : FIRST_ARENA;
    while ((st = tm_train(&cfg, train, test, &r, error, error_size)) == TM_ENOMEM &&
           cfg.mem_cap <= SIZE_MAX / 4) {
        tm_train_result_free(&r);
        short_of = cfg.mem_cap;
        cfg.mem_cap *= 2;
    }
    if (st != TM_OK) {
        tm_train_result_free(&r);
        return st;
    }
    c->modeled_sps = r.modeled_samples_per_s;
    c->wall_sps = r.samples_per_s;
    c->bubble = r.bubble;
    double sent = 0;
    for (int i = 0; i < r.n_devices; i++) {
        const tm_device_report *d = &r.devices[i];
        for (int k = 0; k < TM_DIMS; k++) sent += (double)d->step_sent[k];
        if (d->memory.peak > c->peak) c->peak = d->memory.peak;
    }
    c->comm_bytes = sent / r.n_devices;
    tm_train_result_free(&r);
    /* The peak is a lower bound of what a run needs, not the figure: the
     * trainer probes the activation memory its schedule will hold before
     * the first step and leaves the probe out of the peak, and free space
     * can be fragmented. So a peak below cap proves nothing when the arena
     * that worked was larger than cap; a run in exactly cap decides. */
    if (c->peak > cap || short_of >= cap) {
        c->fits = 0;
    } else if (cfg.mem_cap <= cap) {
        c->fits = 1;
    } else {
        cfg.mem_cap = cap;
        st = tm_train(&cfg, train, test, &r, error, error_size);
        tm_train_result_free(&r);
        if (st != TM_OK && st != TM_ENOMEM) return st;
        c->fits = st == TM_OK;
    }
    return TM_OK;
}

#define MAX_VIRTUAL 4 /* the most virtual stages swept */

/* Every mesh (pp, then tp, ascending; dp takes the rest), every schedule
 * (1f1b alone when pp = 1; interleaved-1f1b with each v from 2 to
 * MAX_VIRTUAL that leaves each of pp x v model stages one of the model's
 * units, and micro-batch counts a multiple of pp: v = 1 is 1f1b's row),
 * every micro-batch count, and for the GPT with tp > 1 sequence
 * parallelism off and on. Returns the count written into out (NULL: only
 * counts). */
static int sweep(int devices, int gpt, int units, const tm_schedule_kind *sched, int n_sched,
                 const int *mbs, int n_mbs, const int *zeros, int n_zeros, config *out)
{
    int n = 0;
    for (int pp = 1; pp <= devices; pp++) {
        if (devices % pp != 0) continue;
        for (int tp = 1; tp <= devices / pp; tp++) {
            if (devices / pp % tp != 0) continue;
            int dp = devices / pp / tp, kinds = pp == 1 ? 1 : n_sched, sps = gpt && tp > 1 ? 2 : 1;
            int nz = dp > 1 ? n_zeros : 1;
            for (int k = 0; k < kinds; k++) {
                tm_schedule_kind kind = pp == 1 ? TM_SCHED_1F1B : sched[k];
                int virt = kind == TM_SCHED_INTERLEAVED_1F1B;
                int v_hi = virt ? (units / pp < MAX_VIRTUAL ? units / pp : MAX_VIRTUAL) : 1;
                for (int v = virt ? 2 : 1; v <= v_hi; v++)
                    for (int sp = 0; sp < sps; sp++)
                        for (int z = 0; z < nz; z++)
                            for (int i = 0; i < n_mbs; i++) {
                                if (v > 1 && mbs[i] % pp != 0) continue;
                                if (out != NULL)
                                    out[n] = (config){.dp = dp, .pp = pp, .tp = tp, .m = mbs[i],
                                                      .zero = dp > 1 ? zeros[z] : 0,
                                                      .sp = sps == 2 ? sp : -1, .order = n,
                                                      .bubble = -1, .schedule = kind, .v = v};
                                n++;
                            }
            }
        }
    }
    return n;
}

static void on_plan_step(void *ctx, const tm_step_info *info)
{
    double *s = ctx;
    if (info->step == TM_PLAN_STEP) *s = info->modeled_step_s;
}

/* The schedule column: its name, with the virtual stages when v > 1. */
static void schedule_name(const config *c, char *buf, size_t n)
{
    if (c->v > 1) snprintf(buf, n, "%s v%d", tm_schedule_kind_name(c->schedule), c->v);
    else snprintf(buf, n, "%s", tm_schedule_kind_name(c->schedule));
}

static int by_modeled(const void *x, const void *y)
{
    const config *a = x, *b = y;
    if (a->modeled_sps != b->modeled_sps) return a->modeled_sps < b->modeled_sps ? 1 : -1;
    return (a->order > b->order) - (a->order < b->order);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Decimals that keep three significant digits of a rate (a large GPT runs
 * a few samples per second). */
static int rate_decimals(double v)
{
    return v >= 100 ? 0 : v >= 10 ? 1 : 2;
}

static void print_row(const config *c, int csv, int zero)
{
    char name[32];
    schedule_name(c, name, sizeof name);
    const char *fits = c->fits ? "yes" : "no";
    const char *sp = c->sp < 0 ? "" : c->sp ? "yes" : "no";
    char flags[256] = "";
    if (c->planned) tm_plan_flags(&c->pt, flags, sizeof flags);
    if (csv) {
        printf("%d,%d,%d,%s,%d,%s,%.1f,%.1f,", c->dp, c->pp, c->tp, name, c->m, sp,
               c->modeled_sps, c->wall_sps);
        if (c->bubble >= 0) printf("%.4f", c->bubble);
        printf(",%.0f,%zu,%s", c->comm_bytes, c->peak, fits);
        if (zero) printf(",%d", c->zero);
        if (c->planned) printf(",%s", flags);
        putchar('\n');
        return;
    }
    char bubble[16] = "-", comm[32], peak[32];
    if (c->bubble >= 0) snprintf(bubble, sizeof bubble, "%.3f", c->bubble);
    tm_report_bytes(c->comm_bytes, comm, sizeof comm);
    tm_report_bytes((double)c->peak, peak, sizeof peak);
    printf("%3d %3d %3d  %-19s %4d %3s", c->dp, c->pp, c->tp, name, c->m, c->sp < 0 ? "-" : sp);
    if (zero) printf(" %4d", c->zero);
    printf(" %14.*f %11.*f %7s %13s %11s  %s", rate_decimals(c->modeled_sps), c->modeled_sps,
           rate_decimals(c->wall_sps), c->wall_sps, bubble, comm, peak, fits);
    if (c->planned) printf("%*s%s", c->fits ? 2 : 3, "", flags);
    putchar('\n');
}

/* The distinct reasons tm_train_check gave, with how often. */
typedef struct {
    char text[256];
    int count;
} reason;

/* tm_train_check names build/train's --dp, --pp and --tp; here those are
 * the sweep's coordinates, not flags of this program, so they lose their
 * dashes ("--pp 8 needs ..." reads "pp 8 needs ..."). */
static void drop_mesh_dashes(char *text)
{
    for (char *p = text; (p = strstr(p, "--")) != NULL;) {
        if ((p[2] == 'd' || p[2] == 'p' || p[2] == 't') && p[3] == 'p' && p[4] == ' ')
            memmove(p, p + 2, strlen(p + 2) + 1);
        else
            p += 2;
    }
}

static void note_reason(reason *rs, int *n, int max, const char *text)
{
    char plain[sizeof rs->text];
    snprintf(plain, sizeof plain, "%s", text);
    drop_mesh_dashes(plain);
    text = plain;
    for (int i = 0; i < *n; i++)
        if (strncmp(rs[i].text, text, sizeof rs[i].text - 1) == 0) {
            rs[i].count++;
            return;
        }
    if (*n == max) return;
    snprintf(rs[*n].text, sizeof rs[*n].text, "%s", text);
    rs[(*n)++].count = 1;
}

/* The sweep's HTML page from the rows that ran (best first, as printed);
 * commits or abandons out. TM_OK, or the error with its message. */
static int write_report(tm_outfile *out, const config *cs, int ran, const int *counts,
                        int devices, const char *model, const tm_train_config *base, size_t cap)
{
    tm_sweep_row *rows = calloc(ran > 0 ? (size_t)ran : 1, sizeof *rows);
    FILE *f = rows ? tm_outfile_stream(out) : NULL;
    if (f == NULL) {
        int st = rows ? TM_EIO : tm_error(TM_EHOSTMEM, "cannot allocate the report's rows");
        free(rows);
        tm_outfile_abandon(out);
        return st;
    }
    for (int i = 0; i < ran; i++) {
        const config *c = &cs[i];
        rows[i] = (tm_sweep_row){c->dp,          c->pp,       c->tp,         c->m,
                                 c->sp,          c->schedule, c->modeled_sps, c->wall_sps,
                                 c->bubble,      c->comm_bytes, (double)c->peak, c->fits,
                                 c->v};
    }
    tm_sweep_info info = {devices, model, base->batch, base->max_steps, (double)cap,
                          &base->clock, counts[RAN] + counts[SKIP_BATCH] + counts[SKIP_CHECK] +
                          counts[FAILED], counts[SKIP_BATCH] + counts[SKIP_CHECK], counts[FAILED]};
    int st = tm_report_html_sweep(f, &info, rows, ran);
    free(rows);
    if (st != TM_OK) {
        tm_outfile_abandon(out);
        return st;
    }
    return tm_outfile_commit(out);
}

int main(int argc, char **argv)
{
    tm_cli_program("bench_strategies");
    tm_train_config base = {0};
    const char *model = "256,256,256,256,256", *why;
    int devices = 8, csv = 0, mbs[MAX_LIST] = {1, 2, 4, 8, 16}, n_mbs = 5, n_sched = 8;
    int zeros[TM_ZERO_MAX + 1] = {0}, n_zeros = 1, zero_given = 0;
    tm_schedule_kind sched[TM_SCHEDULE_KINDS] = {TM_SCHED_SEQUENTIAL, TM_SCHED_GPIPE,
                                                 TM_SCHED_1F1B, TM_SCHED_GROUPED,
                                                 TM_SCHED_INTERLEAVED, TM_SCHED_ZB_H1,
                                                 TM_SCHED_ZB_H2, TM_SCHED_INTERLEAVED_1F1B};
    size_t cap = (size_t)64 << 20;
    tm_gpt_config gc = {4, 4, 128, 128, 0};
    int gpt_flag = 0, planner = 0, grid_flag = 0;
    base.batch = 0;
    base.max_steps = 4;
    tm_clock_config_default(&base.clock);
    enum { O_DEVICES = 256, O_MODEL, O_BATCH, O_STEPS, O_MICRO, O_SCHEDULES, O_MEM, O_CSV,
           O_CLOCK, O_LAYERS, O_HEADS, O_DMODEL, O_CONTEXT, O_REPORT, O_ZERO,
           O_RECOMPUTE, O_OFFLOAD, O_HOSTMEM, O_PRECISION, O_SPACE };
    tm_recompute recompute = TM_RECOMPUTE_NONE;
    const char *report_path = NULL;
    static const struct option opts[] = {
        {"devices", 1, 0, O_DEVICES},      {"model", 1, 0, O_MODEL},
        {"layers", 1, 0, O_LAYERS},        {"heads", 1, 0, O_HEADS},
        {"d-model", 1, 0, O_DMODEL},       {"context", 1, 0, O_CONTEXT},
        {"batch", 1, 0, O_BATCH},          {"steps", 1, 0, O_STEPS},
        {"micro-batches", 1, 0, O_MICRO},  {"schedules", 1, 0, O_SCHEDULES},
        {"mem-cap", 1, 0, O_MEM},          {"csv", 0, 0, O_CSV},
        {"device-gflops", 1, 0, O_CLOCK},  {"device-gbps", 1, 0, O_CLOCK},
        {"link-gbps", 1, 0, O_CLOCK},      {"link-latency-us", 1, 0, O_CLOCK},
        {"devices-per-node", 1, 0, O_CLOCK}, {"inter-node-gbps", 1, 0, O_CLOCK},
        {"inter-node-latency-us", 1, 0, O_CLOCK}, {"report", 1, 0, O_REPORT},
        {"zero", 1, 0, O_ZERO},            {"recompute", 1, 0, O_RECOMPUTE},
        {"offload", 1, 0, O_OFFLOAD},      {"host-mem-cap", 1, 0, O_HOSTMEM},
        {"precision", 1, 0, O_PRECISION},  {"space", 1, 0, O_SPACE},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    tm_clock_config *clk = &base.clock;
    opterr = 0;
    for (int c, idx = 0; (c = getopt_long(argc, argv, "h", opts, &idx)) != -1;) {
        gpt_flag |= c >= O_LAYERS && c <= O_CONTEXT;
        grid_flag |= c == O_MICRO || c == O_SCHEDULES || c == O_ZERO || c == O_RECOMPUTE ||
                     c == O_OFFLOAD || c == O_STEPS || c == O_REPORT;
        switch (c) {
        case O_DEVICES: devices = (int)tm_cli_long("--devices", optarg, 1, TM_MAX_DEVICES); break;
        case O_MODEL: model = optarg; break;
        case O_LAYERS:
            gc.n_layer = (int)tm_cli_long("--layers", optarg, 1, TM_GPT_MAX_LAYERS);
            break;
        case O_HEADS: gc.n_head = (int)tm_cli_long("--heads", optarg, 1, TM_GPT_MAX_WIDTH); break;
        case O_DMODEL: gc.n_embd = (int)tm_cli_long("--d-model", optarg, 1, TM_GPT_MAX_WIDTH); break;
        case O_CONTEXT:
            gc.block_size = (int)tm_cli_long("--context", optarg, 1, TM_GPT_MAX_WIDTH);
            break;
        case O_BATCH: base.batch = (int)tm_cli_long("--batch", optarg, 1, INT_MAX / 2); break;
        case O_STEPS: base.max_steps = tm_cli_long("--steps", optarg, 1, 1000000); break;
        case O_MICRO: n_mbs = parse_counts(optarg, mbs); break;
        case O_SCHEDULES: n_sched = parse_schedules(optarg, sched); break;
        case O_ZERO:
            n_zeros = parse_zeros(optarg, zeros);
            zero_given = 1;
            break;
        case O_MEM:
            if (tm_parse_size(optarg, &cap) != 0 || cap < ((size_t)64 << 10))
                tm_cli_die("--mem-cap wants a size of at least 64K, like 64M or 1G, not \"%s\"",
                           optarg);
            break;
        case O_CSV: csv = 1; break;
        case O_SPACE:
            if (strcmp(optarg, "grid") != 0 && strcmp(optarg, "planner") != 0)
                tm_cli_die("--space is grid or planner, not \"%s\"", optarg);
            planner = optarg[0] == 'p';
            break;
        case O_REPORT: report_path = optarg; break;
        case O_RECOMPUTE:
            if (tm_recompute_parse(optarg, &recompute) != 0)
                tm_cli_die("--recompute is none, full or selective, not \"%s\"", optarg);
            break;
        case O_OFFLOAD:
            if (tm_offload_parse(optarg, &base.offload) != 0)
                tm_cli_die("--offload is none or optimizer, not \"%s\"", optarg);
            break;
        case O_HOSTMEM:
            if (tm_parse_size(optarg, &base.host_mem_cap) != 0 || base.host_mem_cap == 0)
                tm_cli_die("--host-mem-cap wants a size like 256M or 1G, not \"%s\"", optarg);
            break;
        case O_PRECISION:
            if (tm_precision_parse(optarg, &base.precision) != 0)
                tm_cli_die("--precision is fp32 or bf16, not \"%s\"", optarg);
            break;
        case O_CLOCK:
            if (tm_clock_config_flag(clk, opts[idx].name, optarg) < 0)
                tm_cli_die("%s", tm_error_message());
            break;
        case 'h':
            fputs(usage_head, stdout);
            tm_clock_config_usage(stdout, clk);
            fputs(usage_tail, stdout);
            return 0;
        default:
            if (optopt) tm_cli_die("option %s needs a value", argv[optind - 1]);
            tm_cli_die("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    int gpt = strcmp(model, "gpt") == 0;
    if (report_path != NULL && (n_zeros > 1 || zeros[0] != 0))
        tm_cli_die("--report draws no ZeRO stages: leave --zero out or give --zero 0");
    if (gpt_flag && !gpt)
        tm_cli_die("--layers, --heads, --d-model and --context go with --model gpt");
    if (base.offload != TM_OFFLOAD_NONE && base.host_mem_cap == 0)
        tm_cli_die("--offload optimizer keeps the optimizer state in host memory: it needs "
                   "--host-mem-cap");
    if (planner && grid_flag)
        tm_cli_die("--space planner searches the planner's space and runs its 2 steps: leave "
                   "--micro-batches, --schedules, --zero, --recompute, --offload, --steps and "
                   "--report out");
    if (base.offload == TM_OFFLOAD_NONE && base.host_mem_cap != 0 && !planner)
        tm_cli_die("--host-mem-cap sizes the host memory of --offload optimizer: it needs "
                   "--offload optimizer");
    if (recompute == TM_RECOMPUTE_SELECTIVE && !gpt)
        tm_cli_die("--recompute selective recomputes attention's core, and the MLP has no "
                   "attention: use --recompute full or none");
    if (base.batch == 0) base.batch = gpt ? 32 : 128;
    tm_mlp_config mlp;
    int classes = 0;
    if (gpt) {
        if ((why = tm_gpt_check(&gc)) != NULL) tm_cli_die("%s", why);
    } else {
        if (tm_mlp_parse(model, &mlp, &why) != 0) tm_cli_die("--model \"%s\": %s", model, why);
        classes = mlp.widths[mlp.n_layers];
        if (classes < 2 || classes > TM_SYNTHETIC_MAX_CLASSES)
            tm_cli_die("--model \"%s\" ends with %d classes; the synthetic data has 2..%d",
                       model, classes, TM_SYNTHETIC_MAX_CLASSES);
    }
    if (tm_clock_config_check(clk) != TM_OK) tm_cli_die("%s", tm_error_message());
    /* A report that could not be written fails now, not after the sweep. */
    if (report_path != NULL && tm_outfile_check(report_path) != TM_OK) {
        fprintf(stderr, "bench_strategies: --report: %s\n", tm_error_message());
        return 2;
    }
    /* One epoch longer than the run, so that no epoch ends inside it: the
     * run's only evaluation is the final one, on a test set of one batch. */
    long samples = (long)base.batch * (base.max_steps + 1);
    if (samples > INT_MAX || (gpt && (samples + 1) * gc.block_size > INT_MAX))
        tm_cli_die("--batch %d x (--steps %ld + 1) samples is too many", base.batch,
                   base.max_steps);
    base.epochs = 1;
    tm_train_recipe(&base, gpt);
    if (!gpt) base.lr = 0.05;

    /* nets[1]: the GPT run with sequence parallelism. */
    tm_model nets[2];
    tm_gpt_config gc_sp = gc;
    gc_sp.sequence_parallel = 1;
    int st = gpt ? tm_gpt_model(&nets[0], &gc) : tm_mlp_model(&nets[0], &mlp);
    if (st == TM_OK && gpt && (st = tm_gpt_model(&nets[1], &gc_sp)) != TM_OK)
        tm_model_destroy(&nets[0]);
    if (st != TM_OK) {
        fprintf(stderr, "bench_strategies: %s\n", tm_error_message());
        return 1;
    }
    nets[0].recompute = nets[1].recompute = recompute;
    base.model = &nets[0];
    tm_dataset train_images = {0}, test_images = {0};
    tm_corpus corpus = {0};
    tm_data train, test;
    if (gpt) {
        int T = gc.block_size;
        size_t train_bytes = (size_t)samples * T + 1, test_bytes = (size_t)base.batch * T + 1;
        st = tm_corpus_synthetic(&corpus, train_bytes + test_bytes, base.seed, 0);
        if (st == TM_OK) st = tm_data_text(&train, corpus.bytes, train_bytes, T, "training");
        if (st == TM_OK)
            st = tm_data_text(&test, corpus.bytes + train_bytes, test_bytes, T, "validation");
    } else {
        st = tm_dataset_synthetic(&train_images, (int)samples, mlp.widths[0], classes,
                                  base.seed, 0);
        if (st == TM_OK)
            st = tm_dataset_synthetic(&test_images, base.batch, mlp.widths[0], classes,
                                      base.seed, 1);
        tm_data_images(&train, &train_images);
        tm_data_images(&test, &test_images);
    }
    if (st != TM_OK) {
        tm_dataset_free(&train_images);
        tm_corpus_free(&corpus);
        tm_model_destroy(&nets[0]);
        if (gpt) tm_model_destroy(&nets[1]);
        fprintf(stderr, "bench_strategies: %s\n", tm_error_message());
        return 2;
    }
    int unit[TM_MAX_LAYERS], units = tm_model_units(&nets[0], unit);
    /* --space planner: the planner's own enumeration, with base as the
     * recipe. */
    tm_model variants[2][3];
    tm_plan_request req = {0};
    tm_plan_point *points = NULL;
    int n;
    if (planner) {
        tm_plan_models(&req, variants, &nets[0], gpt ? &nets[1] : NULL);
        req.train = &train;
        req.devices = devices;
        req.batch = base.batch;
        req.mem_cap = cap;
        req.host_mem_cap = base.host_mem_cap;
        req.precisions = 1 << base.precision;
        req.recipe = &base;
        if (tm_plan_points(&req, &points, &n) != TM_OK) {
            fprintf(stderr, "bench_strategies: %s\n", tm_error_message());
            return 1;
        }
    } else {
        n = sweep(devices, gpt, units, sched, n_sched, mbs, n_mbs, zeros, n_zeros, NULL);
    }
    config *cs = calloc(n > 0 ? (size_t)n : 1, sizeof *cs);
    if (cs == NULL) {
        fprintf(stderr, "bench_strategies: out of host memory\n");
        return 1;
    }
    if (planner) {
        for (int i = 0; i < n; i++) {
            const tm_plan_point *pt = &points[i];
            cs[i] = (config){.dp = pt->dp, .pp = pt->pp, .tp = pt->tp, .m = pt->micro_batches,
                             .zero = pt->zero, .sp = gpt && pt->tp > 1 ? pt->sp : -1,
                             .order = i, .bubble = -1, .schedule = pt->schedule,
                             .v = pt->virtual_stages > 1 ? pt->virtual_stages : 1,
                             .planned = 1, .pt = *pt};
        }
        free(points);
    } else {
        sweep(devices, gpt, units, sched, n_sched, mbs, n_mbs, zeros, n_zeros, cs);
    }
    tm_outfile *html = NULL;
    if (report_path != NULL && tm_outfile_open(&html, report_path) != TM_OK) {
        fprintf(stderr, "bench_strategies: --report: %s\n", tm_error_message());
        free(cs);
        tm_dataset_free(&train_images);
        tm_dataset_free(&test_images);
        tm_corpus_free(&corpus);
        tm_model_destroy(&nets[0]);
        if (gpt) tm_model_destroy(&nets[1]);
        return 2;
    }

    enum { MAX_REASONS = 32 };
    reason reasons[MAX_REASONS];
    int n_reasons = 0, counts[FAILED + 1] = {0}, tty = isatty(STDERR_FILENO);
    char error[2048];
    double t0 = now();
    for (int i = 0; i < n; i++) {
        config *c = &cs[i];
        char sname[32];
        schedule_name(c, sname, sizeof sname);
        if (tty)
            fprintf(stderr, "\r[%d/%d] dp %d pp %d tp %d %s m %d zero %d%s      ", i + 1, n,
                    c->dp, c->pp, c->tp, sname, c->m, c->zero, c->sp == 1 ? " sp" : "");
        tm_train_config cfg = base;
        cfg.dp = c->dp;
        cfg.pp = c->pp;
        cfg.tp = c->tp;
        cfg.schedule = c->schedule;
        cfg.virtual_stages = c->v;
        cfg.micro_batches = c->m;
        cfg.zero = c->zero;
        if (c->sp == 1) cfg.model = &nets[1];
        if (c->planned) {
            cfg = tm_plan_config(&req, &c->pt);
            cfg.ctx = &c->step_s;
            cfg.on_step = on_plan_step;
        }
        if (base.batch % (c->dp * c->m) != 0) {
            c->how = SKIP_BATCH;
        } else if (tm_train_check(&cfg, &train) != TM_OK) {
            c->how = SKIP_CHECK;
            note_reason(reasons, &n_reasons, MAX_REASONS, tm_error_message());
        } else if (run_config(cfg, cap, c, &train, &test, error, sizeof error) != TM_OK) {
            c->how = FAILED;
            if (tty) fprintf(stderr, "\r%*s\r", 60, "");
            fprintf(stderr, "bench_strategies: dp %d pp %d tp %d %s m %d zero %d%s failed: %s\n",
                    c->dp, c->pp, c->tp, sname, c->m, c->zero, c->sp == 1 ? " sp" : "", error);
        }
        /* The planner's measure: step TM_PLAN_STEP's modeled time. */
        if (c->planned && c->how == RAN && c->step_s > 0) c->modeled_sps = base.batch / c->step_s;
        counts[c->how]++;
    }
    double wall = now() - t0;
    if (tty) fprintf(stderr, "\r%*s\r", 60, "");
    tm_dataset_free(&train_images);
    tm_dataset_free(&test_images);
    tm_corpus_free(&corpus);

    /* The configurations that ran first, best first. */
    int ran = 0;
    for (int i = 0; i < n; i++)
        if (cs[i].how == RAN) {
            config t = cs[ran];
            cs[ran++] = cs[i];
            cs[i] = t;
        }
    qsort(cs, (size_t)ran, sizeof *cs, by_modeled);

    char capb[32], name[96];
    tm_report_bytes((double)cap, capb, sizeof capb);
    if (gpt)
        snprintf(name, sizeof name, "gpt (L %d, H %d, C %d, T %d)", gc.n_layer, gc.n_head,
                 gc.n_embd, gc.block_size);
    else
        snprintf(name, sizeof name, "%s", model);
    if (csv) {
        printf("dp,pp,tp,schedule,micro_batches,sp,modeled_samples_per_s,wall_samples_per_s,"
               "bubble,comm_bytes_per_device,peak_bytes_per_device,fits%s%s\n",
               zero_given ? ",zero" : "", planner ? ",config" : "");
    } else {
        if (planner)
            printf("# %d devices, model %s, batch %d, the planner's space (%d steps each, ranked "
                   "by step %d as build/plan ranks), synthetic data, --precision %s\n",
                   devices, name, base.batch, TM_PLAN_STEP, TM_PLAN_STEP,
                   tm_precision_name(base.precision));
        else
            printf("# %d devices, model %s, batch %d, %ld steps per configuration, synthetic "
                   "data, --recompute %s, --offload %s, --precision %s\n",
                   devices, name, base.batch, base.max_steps, tm_recompute_name(recompute),
                   tm_offload_name(base.offload), tm_precision_name(base.precision));
        printf("# modeled clock: %g GFLOP/s and %g GB/s per device, links %g GB/s + %g us",
               clk->device_gflops, clk->device_gbps, clk->link_gbps, clk->link_latency_us);
        if (clk->devices_per_node > 0)
            printf(", %d devices per node, %g GB/s + %g us between nodes", clk->devices_per_node,
                   clk->inter_node_gbps, clk->inter_node_latency_us);
        printf("\n# best first by modeled samples/s; pp = 1 rows ran 1f1b only (no pipeline: "
               "every schedule is the same accumulation loop)\n"
               "# comm = bytes a device sends per step (mean); peak = largest device's arena "
               "peak; fits = runs in %s per device\n", capb);
        printf("%3s %3s %3s  %-19s %4s %3s", "dp", "pp", "tp", "schedule", "mb", "sp");
        if (zero_given) printf(" %4s", "zero");
        printf(" %14s %11s %7s %13s %11s  %s%s\n", "modeled_sps", "wall_sps", "bubble",
               "comm/dev/step", "peak/dev", "fits", planner ? "  config" : "");
    }
    for (int i = 0; i < ran; i++) print_row(&cs[i], csv, zero_given);
    FILE *foot = csv ? stderr : stdout;
    fprintf(foot, "# %d configurations in %.1f s: %d ran, %d skipped (%d batch not divisible by "
                  "dp x micro-batches, %d rejected by tm_train_check), %d failed\n",
            n, wall, counts[RAN], counts[SKIP_BATCH] + counts[SKIP_CHECK], counts[SKIP_BATCH],
            counts[SKIP_CHECK], counts[FAILED]);
    for (int i = 0; i < n_reasons; i++)
        fprintf(foot, "#   rejected %d x: %s\n", reasons[i].count, reasons[i].text);
    int failed = counts[FAILED] != 0;
    if (html != NULL && write_report(html, cs, ran, counts, devices, name, &base, cap) != TM_OK) {
        fprintf(stderr, "bench_strategies: --report: %s\n", tm_error_message());
        failed = 1;
    }
    free(cs);
    tm_model_destroy(&nets[0]);
    if (gpt) tm_model_destroy(&nets[1]);
    return failed;
}
