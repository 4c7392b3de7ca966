/* What build/train says while it trains (demos/train/progress.c): the
 * progress lines or bar, the validation and epoch lines, and the metrics
 * file's JSON lines (README, "Metrics"). */
#ifndef TM_DEMOS_TRAIN_PROGRESS_H
#define TM_DEMOS_TRAIN_PROGRESS_H

#include <stdio.h>

#include "strategies/report_html.h"
#include "strategies/trainer.h"

typedef struct {
    FILE *metrics;   /* or NULL */
    int tty;         /* progress bar instead of log lines */
    int batch;
    long step;       /* the last step reported (the start's after a resume) */
    const char *load; /* --load, for on_start */
    int rows;        /* rows per sample: 1, or the GPT's context */
    int gpt;         /* report tokens and validation loss */
    tm_loss_history *history; /* for --report, or NULL */
    int seed_given;  /* --seed was given (a resume ignores it) */
} report;

/* The trainer's callbacks (strategies/trainer.h), ctx a report. */
void tm_train_on_start(void *ctx, const tm_start_info *s);
void tm_train_on_step(void *ctx, const tm_step_info *s);
/* Validation of the GPT: nats per byte and bits per byte. */
void tm_train_on_eval(void *ctx, const tm_eval_info *e);
void tm_train_on_epoch(void *ctx, const tm_epoch_info *e);

/* The metrics' last line. An interrupted run says so and has no test
 * accuracy (it stopped before the final evaluation). */
void tm_train_write_summary(FILE *f, const tm_train_result *res, int interrupted,
                            const report *r);

#endif
