/* Self-contained HTML reports (inline SVG, CSS and a little script; nothing
 * loaded from the network): a training run (configuration, loss curve,
 * every device's timeline of the recorded step, memory, traffic, modeled
 * time), a strategy sweep, and a pipeline schedule as a standalone SVG.
 * Every figure the run's metrics file (or the sweep's CSV) also holds is
 * shown as that file writes it and marked with where it is there
 * (strategies/svg.h), so a checker can compare the two.
 * Thread-safety: a history is used by one thread at a time; the writers are
 * plain functions of their arguments. */
#ifndef TM_REPORT_HTML_H
#define TM_REPORT_HTML_H

#include <stdio.h>

#include "strategies/schedule.h"
#include "strategies/trainer.h"

/* The losses of a run as its callbacks report them. */
typedef struct {
    long step;
    double loss;
} tm_loss_point;

typedef struct {
    long step;      /* optimizer steps taken when it ran */
    int epoch;      /* 1-based: an epoch's end (metrics record "epoch"); 0: an
                       evaluation between epochs (record "eval") */
    double loss;    /* test (MLP) or validation (GPT) loss */
    double acc;     /* test accuracy; unused for the GPT */
} tm_eval_point;

typedef struct {
    tm_loss_point *train;
    long n_train, cap_train;
    tm_eval_point *evals;
    long n_evals, cap_evals;
    int failed;     /* an append ran out of host memory (the report then says
                       its curve is incomplete) */
} tm_loss_history;

/* Appends; on allocation failure sets h->failed and drops the point. */
void tm_loss_history_step(tm_loss_history *h, long step, double loss);
void tm_loss_history_eval(tm_loss_history *h, long step, int epoch, double loss, double acc);
void tm_loss_history_free(tm_loss_history *h);

/* What a run report shows besides the trainer's configuration and result. */
typedef struct {
    const tm_train_config *cfg;
    const tm_train_result *res;
    const tm_loss_history *history;
    const char *model;      /* one line: "784,256,128,10 MLP (relu)" */
    const char *data;       /* one line: "Fashion-MNIST: 60000 train / ..." */
    int gpt;                /* validation loss in nats/byte instead of accuracy */
    int rows;               /* rows per sample (the GPT's context): tokens/s */
} tm_run_report;

/* Writes the run's page to f. TM_OK, or TM_EHOSTMEM (f's own write errors
 * are its owner's to find, e.g. at tm_outfile_commit). */
int tm_report_html_run(FILE *f, const tm_run_report *run);

/* One configuration of a strategy sweep (bench_strategies), as its CSV row. */
typedef struct {
    int dp, pp, tp, micro_batches;
    int sp;                 /* the GPT's sequence parallelism: 1 on, 0 off,
                               -1 not a choice (no GPT, or tp = 1) */
    tm_schedule_kind schedule;
    double modeled_sps, wall_sps;
    double bubble;          /* -1 when pp = 1 */
    double comm_bytes;      /* per device and step, mean over devices */
    double peak;            /* bytes, the largest device's */
    int fits;
    int v;                  /* interleaved-1f1b's virtual stages; 0 or 1: none
                               (named "interleaved-1f1b v2", not in the
                               bubble plot's lines) */
} tm_sweep_row;

typedef struct {
    int devices;
    const char *model;
    int batch;
    long steps;
    double cap;             /* bytes per device */
    const tm_clock_config *clock;
    int configurations, skipped, failed;
} tm_sweep_info;

/* The sweep's page: rows best first (as given), CSV row i being rows[i]. */
int tm_report_html_sweep(FILE *f, const tm_sweep_info *info, const tm_sweep_row *rows, int n);

/* A schedule's simulated (or measured) events as a standalone SVG document:
 * one lane per stage, forwards and backwards labelled with their
 * micro-batch, the bubble against its formula. TM_OK or TM_EHOSTMEM. */
int tm_report_schedule_svg(FILE *f, const tm_schedule *s, const tm_sched_event *ev, int n,
                           double makespan);

#endif
