/* Modeled time of training runs: bitwise reproducible, proportional to the
 * device rate when compute-bound, the pipeline bubble of GPipe and 1F1B
 * against (p-1)/(m+p-1), every schedule's measured makespan against the
 * schedule simulator replayed with the measured pass times, and each
 * device's step traffic, and the formula the run reports, against the
 * bytes worked out here from the model and the algorithms (with both
 * all-reduce algorithms), with its Chrome trace. Runs are a step or a few
 * on synthetic data. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#include "strategies/json.h"
#include "strategies/trainer.h"
#include "tests/models.h"

/* Six equal-cost stages' worth of layers: the 1024 x 1024 GEMMs dominate
 * every stage for pp 2 and 4 (the first and last layers are tiny). */
#define UNIFORM "16,1024,1024,1024,1024,1024,16"
#define MAX_PP 4
#define MAX_MB 16

static tm_dataset train_images, test_images;
static tm_data train_set, test_set;

/* Samples of `dim` inputs and `classes` classes; the test set is small
 * because every run ends with an evaluation. */
static void make_data(int n, int dim, int classes)
{
    cr_assert_eq(tm_dataset_synthetic(&train_images, n, dim, classes, 11, 0), TM_OK, "%s",
                 tm_error_message());
    cr_assert_eq(tm_dataset_synthetic(&test_images, 32, dim, classes, 11, 1), TM_OK, "%s",
                 tm_error_message());
    tm_data_images(&train_set, &train_images);
    tm_data_images(&test_set, &test_images);
}

static void free_data(void)
{
    tm_dataset_free(&train_images);
    tm_dataset_free(&test_images);
}

static tm_train_config config(const char *model, int dp, int pp, int tp, int batch, int m,
                              tm_schedule_kind kind)
{
    tm_train_config c = {0};
    c.model = mlp_model(model, TM_ACT_RELU);
    c.dp = dp;
    c.pp = pp;
    c.tp = tp;
    c.schedule = kind;
    c.epochs = 1;
    c.max_steps = 1;
    c.batch = batch;
    c.micro_batches = m;
    c.optimizer = TM_OPT_SGD;
    c.lr = 0.01;
    c.lr_schedule = TM_LR_CONSTANT;
    c.seed = 5;
    c.shuffle = 1;
    c.mem_cap = (size_t)48 << 20;
    return c;
}

/* Free messages, the default device rates. */
static void free_links(tm_train_config *c)
{
    tm_clock_config_default(&c->clock);
    c->clock.link_gbps = 1e5;
    c->clock.link_latency_us = 0;
}

static void train_ok(const tm_train_config *c, tm_train_result *r)
{
    char err[2048];
    int st = tm_train(c, &train_set, &test_set, r, err, sizeof err);
    cr_assert_eq(st, TM_OK, "dp=%d pp=%d tp=%d %s m=%d: %s: %s", c->dp, c->pp, c->tp,
                 tm_schedule_kind_name(c->schedule), c->micro_batches, tm_err_name(st), err);
}

Test(modeled, times_are_bitwise_identical_run_to_run, .timeout = 120)
{
    make_data(256, 16, 8);
    tm_train_config c = config("16,32,32,32,8", 2, 2, 2, 16, 2, TM_SCHED_1F1B);
    c.max_steps = 3;
    tm_train_result a, b;
    train_ok(&c, &a);
    train_ok(&c, &b);
    cr_assert_eq(a.n_devices, 8);
    cr_assert_eq(b.n_devices, 8);
    cr_expect_gt(a.modeled_seconds, 0.0, "no modeled time");
    cr_expect(memcmp(&a.modeled_seconds, &b.modeled_seconds, sizeof(double)) == 0,
              "modeled_seconds %.17g then %.17g", a.modeled_seconds, b.modeled_seconds);
    cr_expect(memcmp(&a.bubble, &b.bubble, sizeof(double)) == 0, "bubble %.17g then %.17g",
              a.bubble, b.bubble);
    for (int i = 0; i < a.n_devices; i++) {
        const tm_device_report *x = &a.devices[i], *y = &b.devices[i];
        double xs[] = {x->modeled_s, x->compute_s, x->comm_s, x->idle_s, x->comm_busy_s};
        double ys[] = {y->modeled_s, y->compute_s, y->comm_s, y->idle_s, y->comm_busy_s};
        cr_expect(memcmp(xs, ys, sizeof xs) == 0,
                  "device %d: modeled/compute/comm/idle/busy %.17g %.17g %.17g %.17g %.17g then "
                  "%.17g %.17g %.17g %.17g %.17g",
                  i, xs[0], xs[1], xs[2], xs[3], xs[4], ys[0], ys[1], ys[2], ys[3], ys[4]);
        cr_expect(fabs(x->modeled_s - (x->compute_s + x->comm_s + x->idle_s)) <=
                      1e-9 * x->modeled_s,
                  "device %d: modeled %.17g is not compute + comm + idle", i, x->modeled_s);
    }
    cr_expect_eq(a.n_timeline, b.n_timeline, "timeline lengths differ");
    if (a.n_timeline == b.n_timeline)
        cr_expect(memcmp(a.timeline, b.timeline, sizeof *a.timeline * (size_t)a.n_timeline) == 0,
                  "timelines differ");
    tm_train_result_free(&a);
    tm_train_result_free(&b);
    free_data();
}

static double total_compute(const tm_train_result *r)
{
    double s = 0;
    for (int i = 0; i < r->n_devices; i++) s += r->devices[i].compute_s;
    return s;
}

Test(modeled, halving_the_device_rate_doubles_compute_bound_time, .timeout = 120)
{
    make_data(1024, 64, 16);
    /* GEMMs of 256 rows by 512: compute-bound by 10x at the default rates;
     * the links are fast enough that the data-parallel all-reduce is noise. */
    tm_train_config c = config("64,512,512,16", 2, 1, 1, 512, 1, TM_SCHED_1F1B);
    c.max_steps = 2;
    tm_clock_config_default(&c.clock);
    c.clock.link_gbps = 1e4;
    tm_train_result full, half;
    train_ok(&c, &full);
    c.clock.device_gflops /= 2;
    train_ok(&c, &half);
    double ratio = total_compute(&half) / total_compute(&full);
    double modeled = half.modeled_seconds / full.modeled_seconds;
    cr_log_info("compute %.6g s -> %.6g s (x%.4f), modeled x%.4f", total_compute(&full),
                total_compute(&half), ratio, modeled);
    cr_expect(ratio >= 1.9 && ratio <= 2.05, "half the GFLOP/s: compute x%.4f", ratio);
    tm_train_result_free(&full);
    tm_train_result_free(&half);
    free_data();
}

Test(modeled, gpipe_and_1f1b_bubble_matches_theory, .timeout = 300)
{
    make_data(8 * MAX_MB * 2, 16, 16);
    tm_schedule_kind kinds[] = {TM_SCHED_GPIPE, TM_SCHED_1F1B};
    int pps[] = {2, 4}, ms[] = {4, 8, 16};
    for (int k = 0; k < 2; k++)
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 3; b++) {
                int p = pps[a], m = ms[b];
                tm_train_config c = config(UNIFORM, 1, p, 1, 8 * m, m, kinds[k]);
                free_links(&c);
                tm_train_result r;
                train_ok(&c, &r);
                double theory = (double)(p - 1) / (m + p - 1);
                cr_log_info("%s p=%d m=%d: bubble %.4f, theory %.4f",
                            tm_schedule_kind_name(kinds[k]), p, m, r.bubble, theory);
                cr_expect(fabs(r.bubble - theory) <= 0.1 * theory,
                          "%s p=%d m=%d: bubble %.4f, theory %.4f", tm_schedule_kind_name(kinds[k]),
                          p, m, r.bubble, theory);
                tm_train_result_free(&r);
            }
    free_data();
}

/* Per stage, the mean forward, backward (B) and weight-gradient (W, a
 * split backward only) time of the run's timeline; a pass that waited
 * inside is several events, summed per micro-batch. */
static void pass_times(const tm_train_result *r, int pp, int m, double *fwd, double *bwd,
                       double *wgt)
{
    double sum[MAX_PP][3][MAX_MB] = {{{0}}};
    for (int i = 0; i < r->n_timeline; i++) {
        const tm_sched_event *e = &r->timeline[i];
        cr_assert(e->stage >= 0 && e->stage < pp && e->mb >= 0 && e->mb < m,
                  "timeline event %d: stage %d mb %d", i, e->stage, e->mb);
        cr_assert(e->kind == TM_SCHED_FWD || e->kind == TM_SCHED_BWD || e->kind == TM_SCHED_WGT,
                  "timeline event %d: %s", i, tm_sched_kind_name(e->kind));
        int k = e->kind == TM_SCHED_FWD ? 0 : e->kind == TM_SCHED_BWD ? 1 : 2;
        sum[e->stage][k][e->mb] += e->end - e->start;
    }
    for (int s = 0; s < pp; s++) {
        fwd[s] = bwd[s] = wgt[s] = 0;
        for (int i = 0; i < m; i++) {
            cr_expect(sum[s][0][i] > 0 && sum[s][1][i] > 0, "stage %d mb %d: no F or no B", s, i);
            fwd[s] += sum[s][0][i] / m;
            bwd[s] += sum[s][1][i] / m;
            wgt[s] += sum[s][2][i] / m;
        }
    }
}

/* ZB-H1 on equal stages: the measured bubble against the formula's, each
 * stage idling (p-1) max(F, B, F+B-W) of a makespan m(F+B+W) + that, with
 * the run's own F, B and W: their means over the stages in the idle, the
 * busiest stage's sum in the makespan, and each stage's busy time (the
 * first stage copies the input in, the last computes the loss: equal
 * layers make nearly equal stages). And 1F1B's bubble on the same run
 * over two. ZB-H2 against the same formula: at the equal F, B and W of
 * these stages it reaches ZB-H1's makespan (tm_schedule_bubble_theory),
 * no less. */
static void zero_bubble_matches_its_formula(tm_schedule_kind kind)
{
    const char *name = tm_schedule_kind_name(kind);
    make_data(8 * MAX_MB * 2, 16, 16);
    int pps[] = {2, 4}, ms[] = {4, 8, 16};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++) {
            int p = pps[a], m = ms[b];
            tm_train_config c = config(UNIFORM, 1, p, 1, 8 * m, m, kind);
            free_links(&c);
            tm_train_result r, one;
            train_ok(&c, &r);
            double fwd[MAX_PP], bwd[MAX_PP], wgt[MAX_PP];
            pass_times(&r, p, m, fwd, bwd, wgt);
            double f = 0, bb = 0, w = 0, most = 0, busy = 0;
            for (int s = 0; s < p; s++) {
                f += fwd[s] / p, bb += bwd[s] / p, w += wgt[s] / p;
                double t = m * (fwd[s] + bwd[s] + wgt[s]);
                busy += t;
                if (t > most) most = t;
            }
            /* The formula's idle from the mean times, (p-1) max(F, B, F+B-W). */
            double eq = tm_schedule_zb_h1_bubble(p, m, f, bb, w);
            double idle = eq / (1 - eq) * m * (f + bb + w);
            double theory = 1 - busy / (p * (most + idle));
            cr_log_info("%s p=%d m=%d: F %.3g B %.3g W %.3g ms, bubble %.4f, formula %.4f "
                        "(equal stages: %.4f)", name, p, m, 1e3 * f, 1e3 * bb, 1e3 * w, r.bubble,
                        theory, eq);
            cr_expect(fabs(r.bubble - theory) <= 0.1 * theory,
                      "%s p=%d m=%d: bubble %.4f, formula %.4f", name, p, m, r.bubble, theory);
            c.schedule = TM_SCHED_1F1B;
            train_ok(&c, &one);
            cr_log_info("1f1b p=%d m=%d: bubble %.4f", p, m, one.bubble);
            cr_expect_lt(r.bubble, 0.5 * one.bubble, "%s p=%d m=%d: %.4f, 1f1b %.4f", name, p,
                         m, r.bubble, one.bubble);
            tm_train_result_free(&r);
            tm_train_result_free(&one);
        }
    free_data();
}

Test(modeled, zb_h1_bubble_matches_its_formula, .timeout = 300)
{
    zero_bubble_matches_its_formula(TM_SCHED_ZB_H1);
}

Test(modeled, zb_h2_bubble_matches_its_formula, .timeout = 300)
{
    zero_bubble_matches_its_formula(TM_SCHED_ZB_H2);
}

/* The bubble's span runs to the last F, B or W of any stage: the
 * timeline's makespan is its latest pass's end, and the run's bubble (from
 * each device's clock, the latest stage's end) is the timeline's (from
 * the recorded passes) for a one-step run. Under zb-h2 and zb-h1 the last
 * stage's deferred W's may end after stage 0's list. */
Test(modeled, bubble_span_runs_to_the_last_pass_of_any_stage, .timeout = 300)
{
    make_data(8 * 8 * 2, 16, 16);
    static const tm_schedule_kind kinds[] = {TM_SCHED_1F1B, TM_SCHED_ZB_H1, TM_SCHED_ZB_H2};
    for (int k = 0; k < 3; k++)
        for (int p = 2; p <= 4; p += 2) {
            const char *name = tm_schedule_kind_name(kinds[k]);
            tm_train_config c = config("16,256,256,256,256,1024,16", 1, p, 1, 64, 8, kinds[k]);
            free_links(&c);
            tm_train_result r;
            train_ok(&c, &r);
            double last = 0, first_stage_last = 0;
            for (int i = 0; i < r.n_timeline; i++) {
                if (r.timeline[i].end > last) last = r.timeline[i].end;
                if (r.timeline[i].stage == 0 && r.timeline[i].end > first_stage_last)
                    first_stage_last = r.timeline[i].end;
            }
            cr_expect_eq(r.timeline_makespan, last, "%s p=%d", name, p);
            double tl = tm_schedule_bubble(r.timeline, r.n_timeline, p, r.timeline_makespan);
            cr_log_info("%s p=%d: bubble %.6f, timeline's %.6f; stage 0 ends %.6g of %.6g s",
                        name, p, r.bubble, tl, first_stage_last, last);
            cr_expect(fabs(r.bubble - tl) <= 1e-9, "%s p=%d: bubble %.6f, timeline's %.6f", name,
                      p, r.bubble, tl);
            /* Here the zero-bubble steps end on the last stage (its
             * deferred W's): the case a span to stage 0's list cut short. */
            if (kinds[k] != TM_SCHED_1F1B)
                cr_expect_lt(first_stage_last, last, "%s p=%d", name, p);
            tm_train_result_free(&r);
        }
    free_data();
}

Test(modeled, every_schedule_runs_as_the_simulator_predicts, .timeout = 300)
{
    /* Smaller layers than UNIFORM: the comparison uses each stage's own
     * measured times, so the stages need not be equal. */
    make_data(8 * 8 * 2, 16, 16);
    for (int k = 0; k < TM_SCHEDULE_KINDS; k++)
        for (int p = 2; p <= 4; p += 2)
            for (int m = 4; m <= 8; m += 4) {
                tm_schedule_kind kind = (tm_schedule_kind)k;
                const char *name = tm_schedule_kind_name(kind);
                tm_train_config c = config("16,256,256,256,256,256,16", 1, p, 1, 8 * m, m, kind);
                free_links(&c);
                tm_train_result r;
                train_ok(&c, &r);
                double fwd[MAX_PP], bwd[MAX_PP], wgt[MAX_PP];
                pass_times(&r, p, m, fwd, bwd, wgt);
                tm_schedule s;
                cr_assert_eq(tm_schedule_make(&s, kind, p, m), TM_OK);
                tm_sched_event *ev = NULL;
                int n_ev = 0;
                double sim = 0;
                cr_assert_eq(tm_schedule_simulate_split(&s, fwd, bwd, wgt, 0, &ev, &n_ev, &sim),
                             TM_OK, "%s", tm_error_message());
                double got = r.timeline_makespan;
                cr_log_info("%s p=%d m=%d: makespan %.6g s, simulated %.6g s (%+.2f%%)", name, p,
                            m, got, sim, 100 * (got / sim - 1));
                /* With free links the replay is exact up to rounding
                 * (measured: within 0.001%), so 1% is already lenient. */
                cr_expect(fabs(got - sim) <= 0.01 * sim,
                          "%s p=%d m=%d: measured makespan %.6g s, simulator %.6g s", name, p, m,
                          got, sim);
                free(ev);
                tm_schedule_free(&s);
                tm_train_result_free(&r);
            }
    free_data();
}

/* Interleaved 1F1B with v chunks per device on equal model stages (eight
 * equal 1024-wide layers, one or two per model stage): the bubble against
 * (p-1)/(v m + p-1), and the measured makespan against the simulator's
 * replay with each model stage's measured mean F and B. */
#define DEEP_UNIFORM "16,1024,1024,1024,1024,1024,1024,1024,1024,1024,16"

Test(modeled, interleaved_1f1b_bubble_and_replay, .timeout = 300)
{
    make_data(8 * MAX_MB * 2, 16, 16);
    static const struct { int p, v, m; } runs[] = {{2, 2, 4}, {2, 2, 8}, {2, 4, 4}, {2, 4, 8},
                                                   {4, 2, 4}, {4, 2, 8}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        int p = runs[i].p, v = runs[i].v, m = runs[i].m, g_n = p * v;
        tm_train_config c = config(DEEP_UNIFORM, 1, p, 1, 8 * m, m, TM_SCHED_INTERLEAVED_1F1B);
        c.virtual_stages = v;
        free_links(&c);
        tm_train_result r;
        train_ok(&c, &r);
        double theory = tm_schedule_bubble_theory_virtual(TM_SCHED_INTERLEAVED_1F1B, p, m, v);
        /* Each model stage's mean F and B: device e->stage's chunk e->chunk. */
        double fwd[8] = {0}, bwd[8] = {0};
        for (int k = 0; k < r.n_timeline; k++) {
            const tm_sched_event *e = &r.timeline[k];
            int g = e->chunk * p + e->stage;
            cr_assert(g >= 0 && g < g_n, "event %d: stage %d chunk %d", k, e->stage, e->chunk);
            if (e->kind == TM_SCHED_FWD) fwd[g] += (e->end - e->start) / m;
            else bwd[g] += (e->end - e->start) / m;
        }
        tm_schedule s;
        cr_assert_eq(tm_schedule_make_virtual(&s, TM_SCHED_INTERLEAVED_1F1B, p, m, v), TM_OK);
        tm_sched_event *ev = NULL;
        int n_ev = 0;
        double sim = 0;
        cr_assert_eq(tm_schedule_simulate(&s, fwd, bwd, 0, &ev, &n_ev, &sim), TM_OK, "%s",
                     tm_error_message());
        double got = r.timeline_makespan;
        cr_log_info("interleaved-1f1b p=%d v=%d m=%d: bubble %.4f, theory %.4f; makespan %.6g s, "
                    "simulated %.6g s (%+.3f%%)", p, v, m, r.bubble, theory, got, sim,
                    100 * (got / sim - 1));
        printf("interleaved-1f1b p=%d v=%d m=%d: bubble %.4f, theory %.4f; makespan %.6g s, "
               "simulated %.6g s (%+.3f%%)\n", p, v, m, r.bubble, theory, got, sim,
               100 * (got / sim - 1));
        cr_expect(fabs(r.bubble - theory) <= 0.1 * theory,
                  "p=%d v=%d m=%d: bubble %.4f, theory %.4f", p, v, m, r.bubble, theory);
        cr_expect(fabs(got - sim) <= 0.01 * sim, "p=%d v=%d m=%d: makespan %.6g s, simulator %.6g s",
                  p, v, m, got, sim);
        free(ev);
        tm_schedule_free(&s);
        tm_train_result_free(&r);
    }
    free_data();
}

/* Reads a trace file and returns how many distinct pids below `n` name a
 * process; *bad counts events with a pid outside [0, n). */
static int trace_pids(const char *path, int n, int *bad)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "no trace at %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    cr_assert_not_null(text);
    cr_assert_eq(fread(text, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    tm_json_doc *doc = NULL;
    cr_assert_eq(tm_json_parse(&doc, text, (size_t)len), TM_OK, "trace %s: %s", path,
                 tm_error_message());
    const tm_json *events = tm_json_get(tm_json_root(doc), "traceEvents");
    cr_assert(events != NULL && events->type == TM_JSON_ARRAY, "%s: no traceEvents", path);
    int seen[64] = {0}, distinct = 0;
    *bad = 0;
    for (const tm_json *e = events->child; e != NULL; e = e->next) {
        const tm_json *pid = tm_json_get(e, "pid"), *name = tm_json_get(e, "name");
        if (pid == NULL || !pid->is_uint || pid->uint >= (uint64_t)n) {
            ++*bad;
            continue;
        }
        if (name != NULL && name->type == TM_JSON_STRING &&
            strcmp(name->str, "process_name") == 0 && seen[pid->uint]++ == 0)
            distinct++;
    }
    tm_json_free(doc);
    free(text);
    return distinct;
}

/* The model of the traffic test and its layer widths, inputs first. */
#define TRAFFIC_MODEL "16,100,102,64,8"
static const int traffic_widths[] = {16, 100, 102, 64, 8};

/* What one device should send in one training step, per mesh dimension,
 * worked out here from the widths and the definitions of the algorithms,
 * and how far a correct run may be from it: a ring all-reduce cuts its
 * vector into n segments of whole floats and a member sends all but one in
 * each half, so it sends 2(n-1)/n x the bytes give or take less than two
 * floats (exactly when n = 2: all but one of two segments twice is the
 * whole vector). */
typedef struct {
    double bytes[TM_DIMS];
    double slack[TM_DIMS];
} traffic;

static void add_allreduce(traffic *e, int dim, int n, double count, tm_allreduce_algo algo)
{
    if (n == 1 || count == 0) return;
    double bytes = count * sizeof(float);
    if (algo == TM_ALGO_DIRECT) {
        /* One hop: the whole vector to each of the n - 1 others. */
        e->bytes[dim] += (n - 1) * bytes;
        return;
    }
    e->bytes[dim] += 2.0 * (n - 1) / n * bytes;
    if (n > 2) e->slack[dim] += 2 * sizeof(float);
}

typedef struct {
    int dp, pp, tp;
    const char *stages; /* layers per stage */
    int slow;           /* a slow link: pipeline sends queue behind each
                           other and leave after their step's compute */
} traffic_mesh;

/* Device (d, p, t) of mesh m, `mb` micro-batches of `rows` rows, every
 * all-reduce run with `algo`. Pipeline: per micro-batch, the stage's output
 * activations go up and its input gradient down, whole on every tp rank.
 * Tensor parallelism (Megatron): within a stage layers pair up as column
 * split then row split; a layer left alone is column split (padded to a
 * multiple of tp) and its output all-gathered. Per micro-batch, a row-split
 * layer all-reduces its output; a column-split layer all-reduces its input
 * gradient unless it is the model's first layer. Data parallelism: every
 * layer's gradient shard is all-reduced once, and the last stage
 * all-gathers the step's loss (a double). */
static traffic expected_traffic(const traffic_mesh *m, int p, int mb, int rows,
                                tm_allreduce_algo algo)
{
    traffic e = {{0}, {0}};
    int l0 = 0, len = 0;
    const char *spec = m->stages;
    for (int s = 0; s <= p; s++) {
        l0 += len;
        len = (int)strtol(spec, (char **)&spec, 10);
        if (*spec == ',') spec++;
    }
    int l1 = l0 + len, tp = m->tp;
    if (p < m->pp - 1) e.bytes[TM_DIM_PP] += (double)mb * rows * traffic_widths[l1] * sizeof(float);
    if (p > 0) e.bytes[TM_DIM_PP] += (double)mb * rows * traffic_widths[l0] * sizeof(float);
    for (int l = l0; l < l1; l++) {
        int in = traffic_widths[l], out = traffic_widths[l + 1], k = l - l0;
        double shard = (double)in * out + out;
        if (tp > 1 && k % 2 == 1) {
            shard = (double)out * (in / tp) + out;
            for (int i = 0; i < mb; i++) add_allreduce(&e, TM_DIM_TP, tp, (double)rows * out, algo);
        } else if (tp > 1) {
            int local = (out + tp - 1) / tp;
            shard = (double)local * in + local;
            if (k == len - 1)
                e.bytes[TM_DIM_TP] += (double)mb * (tp - 1) * rows * local * sizeof(float);
            for (int i = 0; l > 0 && i < mb; i++)
                add_allreduce(&e, TM_DIM_TP, tp, (double)rows * in, algo);
        }
        add_allreduce(&e, TM_DIM_DP, m->dp, shard, algo);
    }
    if (p == m->pp - 1) e.bytes[TM_DIM_DP] += (m->dp - 1) * sizeof(double);
    return e;
}

Test(modeled, step_traffic_matches_the_formulas, .timeout = 300)
{
    static const char *dim_name[TM_DIMS] = {"dp", "pp", "tp"};
    make_data(256, 16, 8);
    /* Stages given, so that the expectation does not depend on the FLOP
     * balancing; the "1,3" splits leave a layer alone in a stage (gathered,
     * padded on tp = 3: 100 -> 3 x 34 and 8 -> 3 x 3). Odd widths: the ring
     * segments do not divide evenly. */
    static const traffic_mesh meshes[] = {
        {2, 1, 1, "4", 0},   {1, 2, 1, "2,2", 0}, {2, 2, 1, "2,2", 0},   {4, 1, 1, "4", 0},
        {2, 2, 2, "2,2", 0}, {1, 1, 2, "4", 0},   {1, 2, 3, "1,3", 0},   {2, 2, 2, "1,3", 0},
        {1, 3, 1, "1,1,2", 1}};
    /* Every message of this model fits the default rings (1 MiB up to 16
     * devices), so a forced direct all-reduce runs direct throughout. */
    static const tm_allreduce_algo algos[] = {TM_ALGO_RING, TM_ALGO_DIRECT};
    char dir[] = "/tmp/tm_modeled_XXXXXX", path[256];
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/trace.json", dir);
    for (size_t a = 0; a < sizeof algos / sizeof algos[0]; a++)
        for (size_t i = 0; i < sizeof meshes / sizeof meshes[0]; i++) {
            const traffic_mesh *m = &meshes[i];
            int n = m->dp * m->pp * m->tp, batch = m->slow ? 64 : 32, mb = m->slow ? 8 : 2;
            tm_allreduce_set_algo(algos[a]);
            tm_train_config c = config(TRAFFIC_MODEL, m->dp, m->pp, m->tp, batch, mb,
                                       m->slow ? TM_SCHED_GPIPE : TM_SCHED_1F1B);
            c.stages = m->stages;
            if (m->slow) {
                tm_clock_config_default(&c.clock);
                c.clock.link_gbps = 0.05;
            }
            c.trace_path = path;
            tm_train_result r;
            train_ok(&c, &r);
            cr_assert_eq(r.n_devices, n);
            for (int d = 0; d < n; d++) {
                const tm_device_report *rep = &r.devices[d];
                traffic e = expected_traffic(m, rep->p, mb, batch / m->dp / mb, algos[a]);
                for (int dim = 0; dim < TM_DIMS; dim++) {
                    double want = e.bytes[dim], sent = (double)rep->step_sent[dim];
                    cr_expect(fabs(sent - want) <= e.slack[dim],
                              "%s mesh (%d,%d,%d) stages %s device %d %s: sent %.0f bytes, "
                              "expected %.1f +- %.0f",
                              algos[a] == TM_ALGO_RING ? "ring" : "direct", m->dp, m->pp, m->tp,
                              m->stages, d, dim_name[dim], sent, want, e.slack[dim]);
                    /* The formula the run reports (README) is the same
                     * expectation, before rounding to whole floats. */
                    cr_expect(fabs(rep->step_analytic[dim] - want) <= 1e-9 * want,
                              "%s mesh (%d,%d,%d) stages %s device %d %s: reported formula "
                              "%.1f, expected %.1f",
                              algos[a] == TM_ALGO_RING ? "ring" : "direct", m->dp, m->pp, m->tp,
                              m->stages, d, dim_name[dim], rep->step_analytic[dim], want);
                }
            }
            int bad, pids = trace_pids(path, n, &bad);
            cr_expect_eq(pids, n, "mesh (%d,%d,%d): %d named pids in the trace", m->dp, m->pp,
                         m->tp, pids);
            cr_expect_eq(bad, 0, "mesh (%d,%d,%d): %d trace events with a bad pid", m->dp, m->pp,
                         m->tp, bad);
            unlink(path);
            tm_train_result_free(&r);
        }
    tm_allreduce_set_algo(TM_ALGO_AUTO);
    cr_expect_eq(rmdir(dir), 0, "%s: %s", dir, strerror(errno));
    free_data();
}
