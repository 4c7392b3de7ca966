/* build/fit --model gpt: a GPT too big for one capped device, then every
 * memory remedy alone and the useful combinations under the same cap, as
 * one table: each device's peak by tag as the arena measured it against
 * the prediction worked out before the run (tm_train_predict_memory),
 * whether it fits, the modeled step time and the bytes sent per step. The
 * remedies that fit train a few steps; their losses are checked against
 * one device without a cap (the same model, batch and data order). */
#include "demos/fit/gpt.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/isa.h"
#include "runtime/arena.h"
#include "runtime/cli.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/gpt.h"
#include "strategies/trainer.h"

/* Losses of the remedies that trained against one device's: an fp32
 * remedy reorders sums (tensor-parallel partial sums, data-parallel
 * reductions), never the arithmetic (relative); bf16 rounds the GEMMs'
 * operands and the stored activations (nats, the bound). */
#define LOSS_TOL 1e-4
#define BF16_LOSS_TOL 0.01

static const char usage[] =
    "usage: fit --model gpt [options]\n"
    "Shows a GPT that does not fit on one emulated device, then every memory remedy\n"
    "alone and the useful combinations under the same per-device cap, as one table:\n"
    "each remedy's fullest device, its peak bytes by tag as the arena measured them\n"
    "and the peak predicted before the run, whether it fits, the modeled step time\n"
    "and the bytes it sent in a step. Remedies: activation recomputation (selective,\n"
    "full), gradient accumulation, data parallelism over 4 replicas with ZeRO 0-3,\n"
    "pipeline parallelism (pp=4, 1F1B), tensor parallelism (tp=4) with and\n"
    "without sequence parallelism, optimizer offload, bf16 mixed precision, and\n"
    "useful combinations.\n"
    "Every remedy that fits trains a few steps (AdamW, constant lr 1e-3, clipping\n"
    "at 1.0) and its losses are compared with one device trained without a cap.\n"
    "\n"
    "options:\n"
    "  --model gpt           this story (without it: the MLP's, see fit --help)\n"
    "  --layers L            transformer blocks, at least 4 (4)\n"
    "  --heads H             attention heads, divisible by 4 (4)\n"
    "  --d-model C           channels, a multiple of --heads (256)\n"
    "  --context T           positions per sequence, divisible by 4 (128)\n"
    "  --batch B             sequences per optimizer step, divisible by 8 (16)\n"
    "  --mem-cap SIZE        memory of every device, e.g. 64M, 1G (64M)\n"
    "  --host-mem-cap SIZE   host memory of every device for the offload remedies\n"
    "                        (1G)\n"
    "  --steps N             optimizer steps of every remedy that fits (3)\n"
    "  --predict             under each remedy, the prediction by tag beside the\n"
    "                        measurement and their difference\n"
    "  --text F1,F2,...      text files, concatenated (default: the files of\n"
    "                        /usr/share/games/fortunes, Debian's fortunes package)\n"
    "  -h, --help            this text\n"
    "Exit status: 0 when the story played out (one device ran out of memory, at\n"
    "least one remedy fit, every prediction of fitting came true and every remedy\n"
    "that trained matched one device's losses: within 1e-4 relative in fp32, 0.01\n"
    "nats in bf16), 1 otherwise, 2 on bad usage or unreadable text.\n";

static long parse_positive(const char *flag, const char *v, long max)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || x < 1 || x > max)
        tm_cli_die("%s wants an integer from 1 to %ld, not \"%s\"", flag, max, v);
    return x;
}

static double mib(size_t bytes) { return (double)bytes / (1 << 20); }

/* One remedy: a way to run the same model and batch. */
typedef struct {
    const char *name;
    int dp, pp, tp, micro_batches, zero, sp;
    tm_recompute recompute;
    tm_offload_kind offload;
    tm_precision precision;
} remedy;

static const remedy remedies[] = {
    {"one device", 1, 1, 1, 1, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"recompute selective", 1, 1, 1, 1, 0, 0, TM_RECOMPUTE_SELECTIVE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"recompute full", 1, 1, 1, 1, 0, 0, TM_RECOMPUTE_FULL, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"accumulate x8", 1, 1, 1, 8, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"full + accumulate x8", 1, 1, 1, 8, 0, 0, TM_RECOMPUTE_FULL, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"dp=4", 4, 1, 1, 1, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"dp=4 ZeRO-1", 4, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"dp=4 ZeRO-2", 4, 1, 1, 1, 2, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"dp=4 ZeRO-3", 4, 1, 1, 1, 3, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"ZeRO-1 + full", 4, 1, 1, 1, 1, 0, TM_RECOMPUTE_FULL, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"pp=4 1F1B m=8", 1, 4, 1, 8, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"tp=4", 1, 1, 4, 1, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"tp=4 + SP", 1, 1, 4, 1, 0, 1, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"tp=4 + SP + full", 1, 1, 4, 1, 0, 1, TM_RECOMPUTE_FULL, TM_OFFLOAD_NONE, TM_PRECISION_FP32},
    {"offload", 1, 1, 1, 1, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_OPTIMIZER, TM_PRECISION_FP32},
    {"offload + full + acc x4", 1, 1, 1, 4, 0, 0, TM_RECOMPUTE_FULL, TM_OFFLOAD_OPTIMIZER, TM_PRECISION_FP32},
    {"ZeRO-3 + offload", 4, 1, 1, 1, 3, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_OPTIMIZER, TM_PRECISION_FP32},
    {"bf16", 1, 1, 1, 1, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_BF16},
    {"bf16 + accumulate x4", 1, 1, 1, 4, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_BF16},
    {"bf16 + dp=4 ZeRO-1", 4, 1, 1, 1, 1, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_NONE, TM_PRECISION_BF16},
    {"bf16 + offload", 1, 1, 1, 1, 0, 0, TM_RECOMPUTE_NONE, TM_OFFLOAD_OPTIMIZER, TM_PRECISION_BF16},
};
#define N_REMEDIES ((int)(sizeof remedies / sizeof remedies[0]))

/* A remedy's run: its prediction, then what tm_train reported. */
typedef struct {
    tm_model net;
    int have_net;
    tm_train_config cfg;
    tm_memory_prediction *pred; /* (pp * tp) */
    int pred_dev;               /* the stage and rank predicted fullest */
    int fits;                   /* it trained under the cap; if not, the
                                   result below is a run without one */
    long steps;
    double *loss;               /* (steps) */
    long n_loss;
    tm_train_result res;
    int status;
    char error[4096];
} run;

static void on_step(void *ctx, const tm_step_info *info)
{
    run *r = ctx;
    if (info->step <= r->steps) r->loss[info->step - 1] = info->loss;
    r->n_loss = info->step;
}

/* The run's configuration: base with the remedy's mesh, ZeRO stage and
 * model (its recomputation and sequence parallelism live in the model). */
static int configure(const remedy *m, run *r, const tm_gpt_config *gc,
                     const tm_train_config *base, tm_train_config *cfg)
{
    tm_gpt_config g = *gc;
    g.sequence_parallel = m->sp;
    if (tm_gpt_model(&r->net, &g) != TM_OK) return TM_EINVAL;
    r->have_net = 1;
    r->net.recompute = m->recompute;
    *cfg = *base;
    cfg->model = &r->net;
    cfg->dp = m->dp;
    cfg->pp = m->pp;
    cfg->tp = m->tp;
    cfg->zero = m->zero;
    cfg->micro_batches = m->micro_batches;
    cfg->offload = m->offload;
    cfg->precision = m->precision;
    if (m->offload == TM_OFFLOAD_NONE) cfg->host_mem_cap = 0;
    cfg->ctx = r;
    cfg->on_step = on_step;
    return TM_OK;
}

static void train(run *r, const tm_train_config *cfg, const tm_data *train_data,
                  const tm_data *val)
{
    r->n_loss = 0;
    r->status = tm_train(cfg, train_data, val, &r->res, r->error, sizeof r->error);
}

/* The device whose peak came highest (measured), or -1 without a run. */
static const tm_device_report *fullest(const run *r)
{
    if (r->status != TM_OK) return NULL;
    const tm_device_report *best = &r->res.devices[0];
    for (int i = 1; i < r->res.n_devices; i++)
        if (r->res.devices[i].memory.peak > best->memory.peak) best = &r->res.devices[i];
    return best;
}

/* A device's measured peak by tag, the activations the training steps'. */
static size_t measured_tag(const tm_device_report *d, int tag)
{
    return tag == TM_TAG_ACTIVATION ? d->activation_peak
           : tag == TM_TAG_HOST         ? d->host_memory.peak
                                        : d->memory.tag_peak[tag];
}

/* Bytes the device sent in its first recorded step, over every dimension. */
static double step_sent(const tm_device_report *d)
{
    double s = 0;
    for (int k = 0; k < TM_DIMS; k++) s += (double)d->step_sent[k];
    return s;
}

/* The largest difference of a's losses from ref's, in nats. */
static double max_diff(const run *a, const run *ref)
{
    double worst = 0;
    long n = a->n_loss < ref->n_loss ? a->n_loss : ref->n_loss;
    for (long i = 0; i < n; i++) worst = fmax(worst, fabs(a->loss[i] - ref->loss[i]));
    return worst;
}

static void print_header(void)
{
    printf("%-24s %-7s", "remedy", "device");
    for (int t = 0; t < TM_TAG_COUNT; t++) printf(" %10s", tm_tag_name((tm_tag)t));
    printf(" %9s %9s %6s %4s %9s %10s %9s\n", "peak", "predicted", "diff", "fits", "step ms",
           "sent/step", "loss diff");
}

/* The remedy's line: its fullest device as measured (under the cap, or
 * without it when it ran out of memory) against its prediction, then with
 * --predict the prediction by tag. Returns 1 when the prediction of
 * fitting came true and the losses match one device's (ref). */
static int print_row(const remedy *m, const run *r, const run *ref, size_t cap, int predict)
{
    const tm_device_report *d = fullest(r);
    if (d == NULL) {
        printf("%-24s failed (%s): %s\n", m->name, tm_err_name(r->status), r->error);
        return 0;
    }
    const tm_memory_prediction *p = &r->pred[d->p * m->tp + d->t];
    char where[16];
    snprintf(where, sizeof where, "%d,%d,%d", d->d, d->p, d->t);
    printf("%-24s %-7s", m->name, where);
    for (int t = 0; t < TM_TAG_COUNT; t++) printf(" %10.2f", mib(measured_tag(d, t)));
    double diff = 100.0 * ((double)d->memory.peak - (double)p->peak) / (double)p->peak;
    double loss = max_diff(r, ref);
    double tol = m->precision == TM_PRECISION_BF16 ? BF16_LOSS_TOL : LOSS_TOL * ref->loss[0];
    int fits_pred = r->pred[r->pred_dev].peak <= cap;
    int ok = fits_pred == r->fits && loss <= tol;
    printf(" %9.2f %9.2f %+5.1f%% %4s %9.2f %10.2f %9.1e%s\n", mib(d->memory.peak),
           mib(p->peak), diff, r->fits ? "yes" : "no",
           1e3 * r->res.modeled_seconds / (double)r->res.steps, mib((size_t)step_sent(d)), loss,
           ok ? "" : "  (!)");
    if (!predict) return ok;
    printf("%-24s %-7s", "  predicted", "");
    for (int t = 0; t < TM_TAG_COUNT; t++) printf(" %10.2f", mib(p->tag[t]));
    printf("\n%-24s %-7s", "  difference", "");
    for (int t = 0; t < TM_TAG_COUNT; t++) {
        double meas = (double)measured_tag(d, t), pr = (double)p->tag[t];
        if (pr > 0) printf(" %+9.2f%%", 100.0 * (meas - pr) / pr);
        else printf(" %+7.1fKiB", meas / 1024);
    }
    printf("\n");
    return ok;
}

/* The text's training windows and a few validation windows (evaluation
 * at the end only; it stores no backward activations, so the peaks are
 * the training steps'). */
static void load_text(tm_corpus *c, const char *files, int T, int batch, tm_data *train_data,
                      tm_data *val)
{
    if (tm_corpus_load(c, files) != TM_OK) {
        fprintf(stderr, "fit: %s\n", tm_error_message());
        exit(2);
    }
    size_t train_len = (size_t)(0.9 * (double)c->len);
    if (tm_data_text(train_data, c->bytes, train_len, T, "training split") != TM_OK ||
        tm_data_text(val, c->bytes + train_len, c->len - train_len, T, "validation split") !=
            TM_OK) {
        fprintf(stderr, "fit: %s (--text %s)\n", tm_error_message(),
                files ? files : TM_CORPUS_DEFAULT_DIR);
        tm_corpus_free(c);
        exit(2);
    }
    if (val->n > batch) val->n = batch;
}

int tm_fit_gpt(int argc, char **argv)
{
    tm_gpt_config gc = {4, 4, 256, 128, 0};
    long batch = 16, steps = 3;
    size_t cap = (size_t)64 << 20, host_cap = (size_t)1 << 30;
    int predict = 0;
    const char *text = NULL;
    enum { O_MODEL = 256, O_LAYERS, O_HEADS, O_DMODEL, O_CONTEXT, O_BATCH, O_MEM, O_HOST_MEM,
           O_STEPS, O_PREDICT, O_TEXT };
    static const struct option opts[] = {
        {"model", 1, 0, O_MODEL},       {"layers", 1, 0, O_LAYERS},
        {"heads", 1, 0, O_HEADS},       {"d-model", 1, 0, O_DMODEL},
        {"context", 1, 0, O_CONTEXT},   {"batch", 1, 0, O_BATCH},
        {"mem-cap", 1, 0, O_MEM},       {"host-mem-cap", 1, 0, O_HOST_MEM},
        {"steps", 1, 0, O_STEPS},
        {"predict", 0, 0, O_PREDICT},   {"text", 1, 0, O_TEXT},
        {"help", 0, 0, 'h'},            {0, 0, 0, 0}};
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case O_MODEL:
            if (strcmp(optarg, "gpt") != 0) tm_cli_die("--model is gpt here, not \"%s\"", optarg);
            break;
        case O_LAYERS: gc.n_layer = (int)parse_positive("--layers", optarg, TM_GPT_MAX_LAYERS); break;
        case O_HEADS: gc.n_head = (int)parse_positive("--heads", optarg, TM_GPT_MAX_WIDTH); break;
        case O_DMODEL: gc.n_embd = (int)parse_positive("--d-model", optarg, TM_GPT_MAX_WIDTH); break;
        case O_CONTEXT:
            gc.block_size = (int)parse_positive("--context", optarg, TM_GPT_MAX_WIDTH);
            break;
        case O_BATCH: batch = parse_positive("--batch", optarg, 1L << 20); break;
        case O_MEM:
            if (tm_parse_size(optarg, &cap) != 0 || cap < TM_ARENA_ALIGN)
                tm_cli_die("--mem-cap wants a size like 64M or 1G, not \"%s\"", optarg);
            break;
        case O_HOST_MEM:
            if (tm_parse_size(optarg, &host_cap) != 0 || host_cap < TM_ARENA_ALIGN)
                tm_cli_die("--host-mem-cap wants a size like 256M or 1G, not \"%s\"", optarg);
            break;
        case O_STEPS: steps = parse_positive("--steps", optarg, 1L << 20); break;
        case O_PREDICT: predict = 1; break;
        case O_TEXT: text = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            if (optopt) tm_cli_die("option %s needs a value", argv[optind - 1]);
            tm_cli_die("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    const char *why = tm_gpt_check(&gc);
    if (why != NULL) tm_cli_die("%s", why);
    if (gc.n_layer < 4) tm_cli_die("--layers %d: the pipeline remedy needs 4 blocks", gc.n_layer);
    if (gc.n_head % 4 != 0)
        tm_cli_die("--heads %d does not divide by 4, as the tensor-parallel remedies need",
                   gc.n_head);
    if (gc.block_size % 4 != 0)
        tm_cli_die("--context %d does not divide by 4, as sequence parallelism needs",
                   gc.block_size);
    if (batch % 8 != 0)
        tm_cli_die("--batch %ld does not divide by 8 (accumulation x8, 4 replicas, 8 "
                   "micro-batches)", batch);
    char isa_msg[160];
    if (tm_isa_check_env(isa_msg, sizeof isa_msg) != 0) tm_cli_die("%s", isa_msg);

    tm_corpus corpus;
    tm_data train_data, val;
    load_text(&corpus, text, gc.block_size, (int)batch, &train_data, &val);
    if (train_data.n < batch * steps) {
        tm_corpus_free(&corpus);
        tm_cli_die("the text has %d windows of %d bytes, fewer than --batch x --steps",
                   train_data.n, gc.block_size + 1);
    }
    tm_train_config base = {.dp = 1, .pp = 1, .tp = 1, .schedule = TM_SCHED_1F1B, .epochs = 1,
                            .max_steps = steps, .batch = (int)batch, .micro_batches = 1,
                            .optimizer = TM_OPT_ADAMW, .lr = 1e-3, .lr_schedule = TM_LR_CONSTANT,
                            .beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.1, .clip_grad = 1.0,
                            .seed = 1, .shuffle = 1, .mem_cap = cap,
                            .host_mem_cap = host_cap};

    run runs[N_REMEDIES];
    memset(runs, 0, sizeof runs);
    int status = 0;
    /* Every configuration is checked and predicted before anything runs. */
    for (int i = 0; i < N_REMEDIES && status == 0; i++) {
        const remedy *m = &remedies[i];
        run *r = &runs[i];
        r->steps = steps;
        r->loss = calloc((size_t)steps, sizeof(double));
        r->pred = calloc((size_t)m->pp * m->tp, sizeof *r->pred);
        if (r->loss == NULL || r->pred == NULL) {
            fprintf(stderr, "fit: cannot allocate the record of %s\n", m->name);
            status = 2;
        } else if (configure(m, r, &gc, &base, &r->cfg) != TM_OK ||
                   tm_train_predict_memory(&r->cfg, &train_data, r->pred) != TM_OK) {
            fprintf(stderr, "fit: %s: %s\n", m->name, tm_error_message());
            status = 2;
        }
        for (int k = 1; status == 0 && k < m->pp * m->tp; k++)
            if (r->pred[k].peak > r->pred[r->pred_dev].peak) r->pred_dev = k;
    }
    if (status == 0) {
        size_t params = runs[0].net.n_params;
        printf("Does a GPT of %d blocks, %d heads, %d channels, context %d (%.2f M parameters)\n"
               "train on %.0f MiB devices, %ld sequences per step? AdamW keeps four copies of\n"
               "the weights (weights, gradients, two moments): %.2f MiB before any activation.\n"
               "Each remedy runs under the cap; one that runs out of memory runs again without\n"
               "it, to measure what it needs.\n",
               gc.n_layer, gc.n_head, gc.n_embd, gc.block_size, 1e-6 * (double)params, mib(cap),
               batch, mib(16 * params));
    }
    for (int i = 0; i < N_REMEDIES && status == 0; i++) {
        run *r = &runs[i];
        printf("running: %s\n", remedies[i].name);
        fflush(stdout);
        train(r, &r->cfg, &train_data, &val);
        r->fits = r->status == TM_OK;
        if (r->status != TM_ENOMEM) continue;
        if (i == 0) {
            printf("  it does not fit; the arena's report:\n");
            for (const char *line = r->error; *line != '\0';) {
                size_t n = strcspn(line, "\n");
                printf("    %.*s\n", (int)n, line);
                line += n + (line[n] == '\n');
            }
        }
        tm_train_result_free(&r->res);
        tm_train_config roomy = r->cfg;
        roomy.mem_cap = r->pred[r->pred_dev].peak + ((size_t)64 << 20);
        train(r, &roomy, &train_data, &val);
    }
    if (status == 0) {
        printf("\nevery remedy under %.0f MiB per device, its fullest device, MiB (peak: the "
               "arena's; predicted: before the run, tm_train_predict_memory):\n", mib(cap));
        print_header();
        int agree = 1, fitted = 0;
        for (int i = 0; i < N_REMEDIES; i++) {
            agree &= print_row(&remedies[i], &runs[i], &runs[0], cap, predict);
            fitted += runs[i].fits;
        }
        printf("activation: the training steps' peak; step ms: modeled (a step of the slowest "
               "device); sent/step: MiB\nthe device sent over links in step 1; loss diff: largest "
               "difference from one device's losses over %ld steps, nats\n(fp32 within 1e-4 "
               "relative, bf16 within 0.01)\n", steps);
        int story = !runs[0].fits && fitted > 0 && agree;
        printf("%s\n", story ? "the story played out: one device runs out of memory, the "
                               "remedies that fit train the same model"
                             : "the story did not play out (see the rows marked (!))");
        status = story ? 0 : 1;
    }
    for (int i = 0; i < N_REMEDIES; i++) {
        tm_train_result_free(&runs[i].res);
        free(runs[i].loss);
        free(runs[i].pred);
        if (runs[i].have_net) tm_model_destroy(&runs[i].net);
    }
    tm_corpus_free(&corpus);
    return status;
}
