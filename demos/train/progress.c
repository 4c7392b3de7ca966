#include "demos/train/progress.h"

#include <math.h>

#include "runtime/arena.h"

/* Says what --load brought back, before the first step. */
void tm_train_on_start(void *ctx, const tm_start_info *s)
{
    report *r = ctx;
    r->step = s->step;
    if (s->resumed)
        printf("resumed from %s at step %ld (epoch %d, %ld of its %ld steps done): weights, "
               "optimizer state and data order\n",
               r->load, s->step, s->epoch + 1, s->epoch_step, s->steps_per_epoch);
    else if (s->loaded)
        printf("loaded weights from %s (no optimizer state or position in it): starting at "
               "step 0 with a fresh optimizer\n", r->load);
    fflush(stdout);
    if (s->resumed && r->seed_given)
        fprintf(stderr, "train: warning: --seed does nothing when resuming: the weights and the "
                "data order are the checkpoint's\n");
}

/* A JSON number, or null for NaN and the infinities, which JSON cannot
 * spell (a diverged run's loss). */
static void num(FILE *f, const char *fmt, double x)
{
    if (isfinite(x)) fprintf(f, fmt, x);
    else fputs("null", f);
}

void tm_train_on_step(void *ctx, const tm_step_info *s)
{
    report *r = ctx;
    r->step = s->step;
    if (r->history) tm_loss_history_step(r->history, s->step, s->loss);
    if (r->metrics) {
        fprintf(r->metrics, "{\"type\":\"step\",\"step\":%ld,\"loss\":", s->step);
        num(r->metrics, "%.9g", s->loss);
        fputs(",\"lr\":", r->metrics);
        num(r->metrics, "%.9g", s->lr);
        if (s->grad_norm >= 0 || isnan(s->grad_norm)) {
            fputs(",\"grad_norm\":", r->metrics);
            num(r->metrics, "%.9g", s->grad_norm);
        }
        fputs(",\"modeled_step_s\":", r->metrics);
        num(r->metrics, "%.9g", s->modeled_step_s);
        fputs("}\n", r->metrics);
    }
    long left = s->total_steps - s->step;
    double eta = s->samples_per_s > 0 ? (double)left * r->batch / s->samples_per_s : 0;
    const char *unit = r->gpt ? "tokens/s" : "samples/s";
    double rate = s->samples_per_s * r->rows;
    if (r->tty) {
        int width = 30, done = (int)(width * s->epoch_step / s->steps_per_epoch);
        fprintf(stderr, "\repoch %d [%.*s%*s] step %ld/%ld loss %.4f %6.0f %s ETA %3.0fs ",
                s->epoch + 1, done, "==============================", width - done, "", s->step,
                s->total_steps, s->loss, rate, unit, eta);
    } else if (s->step % 100 == 0) {
        printf("step %ld/%ld epoch %d loss %.4f lr %.4g %.0f %s\n", s->step, s->total_steps,
               s->epoch + 1, s->loss, s->lr, rate, unit);
        fflush(stdout);
    }
}

void tm_train_on_eval(void *ctx, const tm_eval_info *e)
{
    report *r = ctx;
    if (r->history) tm_loss_history_eval(r->history, e->step, 0, e->loss, e->acc);
    if (r->tty) fprintf(stderr, "\r%*s\r", 100, "");
    printf("step %ld: val loss %.4f nats/byte, %.4f bits/byte\n", e->step, e->loss,
           e->loss / M_LN2);
    fflush(stdout);
    if (r->metrics) {
        fprintf(r->metrics, "{\"type\":\"eval\",\"step\":%ld,\"val_loss\":", e->step);
        num(r->metrics, "%.9g", e->loss);
        fputs(",\"val_bpb\":", r->metrics);
        num(r->metrics, "%.9g", e->loss / M_LN2);
        fputs("}\n", r->metrics);
    }
}

void tm_train_on_epoch(void *ctx, const tm_epoch_info *e)
{
    report *r = ctx;
    if (r->history)
        tm_loss_history_eval(r->history, r->step, e->epoch + 1, e->test_loss, e->test_acc);
    if (r->tty) fprintf(stderr, "\r%*s\r", 100, "");
    if (r->gpt)
        printf("epoch %d: train loss %.4f, val loss %.4f (%.4f bits/byte), %.0f tokens/s "
               "(modeled %.0f", e->epoch + 1, e->train_loss, e->test_loss, e->test_loss / M_LN2,
               e->samples_per_s * r->rows, e->modeled_samples_per_s * r->rows);
    else
        printf("epoch %d: train loss %.4f, test loss %.4f, test accuracy %.2f%%, %.0f samples/s "
               "(modeled %.0f", e->epoch + 1, e->train_loss, e->test_loss, 100 * e->test_acc,
               e->samples_per_s, e->modeled_samples_per_s);
    if (e->bubble >= 0) printf(", bubble %.1f%%", 100 * e->bubble);
    printf(")\n");
    fflush(stdout);
    FILE *f = r->metrics;
    if (f == NULL) return;
    fprintf(f, "{\"type\":\"epoch\",\"epoch\":%d,\"train_loss\":", e->epoch + 1);
    num(f, "%.9g", e->train_loss);
    if (r->gpt) {
        fputs(",\"val_loss\":", f);
        num(f, "%.9g", e->test_loss);
        fputs(",\"val_bpb\":", f);
        num(f, "%.9g", e->test_loss / M_LN2);
        fprintf(f, ",\"tokens_per_s\":%.1f", e->samples_per_s * r->rows);
    } else {
        fputs(",\"test_loss\":", f);
        num(f, "%.9g", e->test_loss);
        fputs(",\"test_acc\":", f);
        num(f, "%.6f", e->test_acc);
    }
    fprintf(f, ",\"samples_per_s\":%.1f,\"modeled_samples_per_s\":%.1f", e->samples_per_s,
            e->modeled_samples_per_s);
    if (e->bubble >= 0) fprintf(f, ",\"bubble\":%.6f", e->bubble);
    fputs("}\n", f);
}

static void json_peaks(FILE *f, const tm_arena_stats *m)
{
    for (int t = 0; t < TM_TAG_COUNT; t++)
        fprintf(f, "%s\"%s\":%zu", t ? "," : "{", tm_tag_name((tm_tag)t), m->tag_peak[t]);
    fputc('}', f);
}

void tm_train_write_summary(FILE *f, const tm_train_result *res, int interrupted, const report *r)
{
    fprintf(f, "{\"type\":\"summary\",\"steps\":%ld,", res->steps);
    if (interrupted) fputs("\"interrupted\":true,", f);
    fprintf(f, "\"samples_per_s\":%.1f,\"modeled_samples_per_s\":%.1f,", res->samples_per_s,
            res->modeled_samples_per_s);
    if (res->bubble >= 0) fprintf(f, "\"bubble\":%.6f,", res->bubble);
    if (r->gpt) {
        fprintf(f, "\"tokens_per_s\":%.1f,\"val_loss\":", res->samples_per_s * r->rows);
        num(f, "%.9g", res->stopped ? NAN : res->test_loss);
        fputs(",\"val_bpb\":", f);
        num(f, "%.9g", res->stopped ? NAN : res->test_loss / M_LN2);
    } else {
        fputs("\"test_acc\":", f);
        num(f, "%.6f", res->stopped ? NAN : res->test_acc);
        fputs(",\"test_loss\":", f);
        num(f, "%.9g", res->stopped ? NAN : res->test_loss);
    }
    fputs(",\"peak_bytes\":", f);
    json_peaks(f, &res->memory);
    fprintf(f, ",\"devices\":[");
    for (int i = 0; i < res->n_devices; i++) {
        const tm_device_report *d = &res->devices[i];
        fprintf(f, "%s{\"id\":%d,\"process\":%d,\"dp\":%d,\"pp\":%d,\"tp\":%d,\"peak_bytes\":",
                i ? "," : "", d->id, d->process, d->d, d->p, d->t);
        json_peaks(f, &d->memory);
        fprintf(f, ",\"peak\":%zu,\"sent_bytes\":%llu,\"modeled_s\":%.9g,\"compute_s\":%.9g,"
                   "\"comm_s\":%.9g,\"idle_s\":%.9g",
                d->memory.peak, (unsigned long long)d->sent_bytes, d->modeled_s, d->compute_s,
                d->comm_s, d->idle_s);
        /* The recorded step's bytes by mesh dimension, and the formulas'. */
        fprintf(f, ",\"step_sent\":{\"dp\":%llu,\"pp\":%llu,\"tp\":%llu},"
                   "\"step_formula\":{\"dp\":%.9g,\"pp\":%.9g,\"tp\":%.9g}}",
                (unsigned long long)d->step_sent[TM_DIM_DP],
                (unsigned long long)d->step_sent[TM_DIM_PP],
                (unsigned long long)d->step_sent[TM_DIM_TP], d->step_analytic[TM_DIM_DP],
                d->step_analytic[TM_DIM_PP], d->step_analytic[TM_DIM_TP]);
    }
    /* Every link's payload bytes over the whole run: [src, dst, bytes]. */
    fputs("],\"links\":[", f);
    for (int i = 0; i < res->n_links; i++)
        fprintf(f, "%s[%d,%d,%llu]", i ? "," : "", res->links[i].src, res->links[i].dst,
                (unsigned long long)res->links[i].bytes);
    fprintf(f, "]}\n");
}
