/* build/fit: the device-memory story end to end. A model too big for one
 * capped device fails with the arena's out-of-memory report, then trains
 * under the same per-device cap cut into pipeline stages (pp = 4) and into
 * tensor-parallel shards (tp = 4), showing each device's peak memory by tag;
 * with --zero, then over four data-parallel replicas with that ZeRO stage. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demos/fit/gpt.h"
#include "kernels/isa.h"
#include "runtime/arena.h"
#include "runtime/cli.h"
#include "runtime/status.h"
#include "strategies/idx.h"
#include "strategies/mlp.h"
#include "strategies/plan.h"
#include "strategies/report.h"
#include "strategies/schedule.h"
#include "strategies/trainer.h"

/* Both parallel phases split the model four ways. */
#define WAYS 4

static const char usage[] =
    "usage: fit [options]\n"
    "Shows a model that does not fit on one emulated device, then trains it under\n"
    "the same per-device memory cap with pipeline parallelism (pp=4) and with\n"
    "tensor parallelism (tp=4). Three phases:\n"
    "  1. one device: the arena's out-of-memory report, then what one device would\n"
    "     need, measured on an uncapped device over one step, by tag;\n"
    "  2. pp=4, 1F1B schedule: the layers in four FLOP-balanced stages;\n"
    "  3. tp=4: Megatron column / row splits of every layer over four ranks.\n"
    "Phases 2 and 3 train a few steps (SGD, momentum 0.9, constant lr 0.02) and\n"
    "print the loss, samples/s and every device's peak memory by tag.\n"
    "\n"
    "options:\n"
    "  --model W0,W1,...     layer widths, inputs first, classes last; at least four\n"
    "                        layers, hidden widths divisible by 4\n"
    "                        (784,1792,1792,1792,10: 7.8 M parameters); gpt: the\n"
    "                        GPT's story instead, every remedy under one cap (see\n"
    "                        fit --model gpt --help)\n"
    "  --mem-cap SIZE        memory of every device, e.g. 64M, 1G (64M)\n"
    "  --steps N             optimizer steps in phases 2 and 3 (30)\n"
    "  --batch B             samples per optimizer step, in every phase (128)\n"
    "  --micro-batches M     the pipeline's micro-batches in phase 2; B must divide\n"
    "                        by M (4)\n"
    "  --zero S              a fourth phase: data parallel over four replicas with\n"
    "                        ZeRO stage S (1: optimizer state, 2: and gradients, 3:\n"
    "                        and parameters sharded four ways), its memory against\n"
    "                        ZeRO's formula; a phase that runs out of memory says so\n"
    "  --recompute R         activations in every phase: none, or full (a layer\n"
    "                        keeps only its input; its backward re-runs its\n"
    "                        forward); selective is the GPT's (none)\n"
    "  --offload O           every phase: none, or optimizer (each device keeps its\n"
    "                        momentum, its ZeRO shard of it, in host memory; the\n"
    "                        gradients go to the host and the weights come back\n"
    "                        every step) (none)\n"
    "  --host-mem-cap SIZE   host memory of each device for --offload, e.g. 64M\n"
    "  --precision P         every phase in fp32, or bf16: GEMMs on bf16 copies of\n"
    "                        the weights (fp32 accumulation, on any CPU),\n"
    "                        activations stored in bf16 (fp32)\n"
    "  --dataset NAME        fashion-mnist, the only one (fashion-mnist)\n"
    "  --data-dir DIR        where the *-idx?-ubyte.gz files are\n"
    "                        (/usr/share/datasets/fashion-mnist)\n"
    "  -h, --help            this text\n"
    "Exit status: 0 when the story played out (phase 1 ran out of memory, phases 2\n"
    "and 3 trained, phase 4 trained or ran out of memory), 1 otherwise, 2 on bad\n"
    "usage or unreadable data files.\n";

static long parse_positive(const char *flag, const char *v)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || x < 1 || x > (1L << 30))
        tm_cli_die("%s wants a positive integer, not \"%s\"", flag, v);
    return x;
}

static double mib(size_t bytes) { return (double)bytes / (1 << 20); }

/* One run of tm_train and what it reported. */
typedef struct {
    int pp, tp, micro_batches;
    int dp, zero;    /* data parallelism (0: one replica) and its ZeRO stage */
    size_t mem_cap;
    long steps;
    double *loss;    /* (steps) the global batch's loss at every step */
    long n_loss;     /* steps reported so far */
    tm_train_result res;
    int status;
    char error[4096];
} phase;

/* Runs on the reporting device's thread while the host waits in tm_train. */
static void on_step(void *ctx, const tm_step_info *info)
{
    phase *ph = ctx;
    if (info->step <= ph->steps) ph->loss[info->step - 1] = info->loss;
    ph->n_loss = info->step;
}

static void run_phase(phase *ph, const tm_train_config *base, const tm_data *train,
                      const tm_data *test)
{
    tm_train_config cfg = *base;
    cfg.pp = ph->pp;
    cfg.tp = ph->tp;
    if (ph->dp > 0) cfg.dp = ph->dp;
    cfg.zero = ph->zero;
    cfg.micro_batches = ph->micro_batches;
    cfg.mem_cap = ph->mem_cap;
    cfg.max_steps = ph->steps;
    cfg.ctx = ph;
    cfg.on_step = on_step;
    ph->n_loss = 0;
    ph->status = tm_train(&cfg, train, test, &ph->res, ph->error, sizeof ph->error);
}

/* The device whose peak came closest to the cap. */
static const tm_device_report *fullest(const tm_train_result *r)
{
    const tm_device_report *best = &r->devices[0];
    for (int i = 1; i < r->n_devices; i++)
        if (r->devices[i].memory.peak > best->memory.peak) best = &r->devices[i];
    return best;
}

/* Every device's peak bytes by tag and overall, in MiB, and the overall
 * peak as a share of the cap. */
static void memory_table(const tm_train_result *r, size_t cap)
{
    printf("  peak memory per device, MiB (cap %.0f MiB):\n  %-6s %-8s", mib(cap), "device",
           "d,p,t");
    for (int t = 0; t < TM_TAG_COUNT; t++) printf(" %10s", tm_tag_name((tm_tag)t));
    printf(" %10s %7s\n", "peak", "of cap");
    for (int i = 0; i < r->n_devices; i++) {
        const tm_device_report *d = &r->devices[i];
        char coords[40];
        snprintf(coords, sizeof coords, "%d,%d,%d", d->d, d->p, d->t);
        printf("  %-6d %-8s", d->id, coords);
        for (int t = 0; t < TM_TAG_COUNT; t++)
            printf(" %10.2f", mib(t == TM_TAG_HOST ? d->host_memory.peak : d->memory.tag_peak[t]));
        printf(" %10.2f %6.0f%%\n", mib(d->memory.peak), 100.0 * (double)d->memory.peak / (double)cap);
    }
}

/* A size for a sentence: MiB, or KiB below one MiB. */
static const char *size_text(size_t bytes, char *buf, size_t n)
{
    if (bytes < ((size_t)1 << 20)) snprintf(buf, n, "%.1f KiB", (double)bytes / 1024);
    else snprintf(buf, n, "%.2f MiB", mib(bytes));
    return buf;
}

/* "params A + grads B + optimizer C + activations D" of one device; the
 * activation peak is split into the training steps' part and the rest,
 * which is evaluation (it passes the test set through 1000 images at a time). */
static void breakdown(const tm_device_report *d)
{
    const size_t *p = d->memory.tag_peak;
    char a[32], b[32], c[32], e[32];
    printf("params %s + grads %s + optimizer %s + activations %s",
           size_text(p[TM_TAG_PARAM], a, sizeof a), size_text(p[TM_TAG_GRAD], b, sizeof b),
           size_text(p[TM_TAG_OPTIMIZER], c, sizeof c), size_text(p[TM_TAG_ACTIVATION], e, sizeof e));
    if (p[TM_TAG_COMM] + p[TM_TAG_WORKSPACE] > 0)
        printf(" + comm and workspace %s", size_text(p[TM_TAG_COMM] + p[TM_TAG_WORKSPACE], a, sizeof a));
    if (d->host_memory.peak > 0)
        printf("; in host memory: optimizer %s", size_text(d->host_memory.peak, a, sizeof a));
    printf("\n    (activations: %s in the training steps, the rest is evaluation)\n",
           size_text(d->activation_peak, a, sizeof a));
}

/* A multi-line message (an OOM report), indented to sit inside a phase. */
static void print_indented(const char *text)
{
    for (const char *line = text; *line != '\0';) {
        size_t n = strcspn(line, "\n");
        printf("  %.*s\n", (int)n, line);
        line += n + (line[n] == '\n');
    }
}

/* Loss, throughput and memory of a phase that trained, or why it did not.
 * Returns 1 when it trained. */
static int report_training(const phase *ph)
{
    if (ph->status != TM_OK) {
        printf("  FAILED (%s):\n", tm_err_name(ph->status));
        print_indented(ph->error);
        return 0;
    }
    printf("  trained %ld steps: loss %.4f at step 1, %.4f at step %ld; %.0f samples/s\n",
           ph->n_loss, ph->loss[0], ph->loss[ph->n_loss - 1], ph->n_loss, ph->res.samples_per_s);
    memory_table(&ph->res, ph->mem_cap);
    const tm_device_report *d = fullest(&ph->res);
    printf("  it fits: the fullest device (%d) peaks at %.2f MiB of %.0f MiB:\n    ", d->id,
           mib(d->memory.peak), mib(ph->mem_cap));
    breakdown(d);
    return 1;
}

/* Phase 1's second half: the same model on one device without a cap (the
 * cap doubles until it fits), one step, to measure what it would need.
 * Returns the peak bytes, or 0 when the measurement failed. */
static size_t measure_one_device(const tm_train_config *base, const tm_data *train,
                               const tm_data *test, size_t cap, size_t param_bytes)
{
    phase m = {.pp = 1, .tp = 1, .micro_batches = 1, .steps = 1};
    double loss;
    m.loss = &loss;
    m.mem_cap = 4 * param_bytes + cap;
    for (int tries = 0; tries < 6; tries++, m.mem_cap *= 2) {
        run_phase(&m, base, train, test);
        if (m.status != TM_ENOMEM) break;
        tm_train_result_free(&m.res);
    }
    size_t need = 0;
    if (m.status != TM_OK) {
        printf("  (measuring it on an uncapped device failed: %s)\n", m.error);
    } else {
        const tm_device_report *d = &m.res.devices[0];
        need = d->memory.peak;
        printf("  one device would need %.2f MiB, %.1fx the cap (measured without a cap over "
               "one step):\n    ", mib(d->memory.peak), (double)d->memory.peak / (double)cap);
        breakdown(d);
    }
    tm_train_result_free(&m.res);
    return need;
}

/* One line of the summary for a phase that was meant to train. */
static void summary_line(const char *name, const phase *ph)
{
    if (ph->status != TM_OK) {
        printf("  %-10s failed: %s\n", name, tm_strerror(ph->status));
        return;
    }
    const tm_device_report *d = fullest(&ph->res);
    printf("  %-10s trained %ld steps at %.0f samples/s; fullest device %.2f MiB, %.0f%% of "
           "the cap\n", name, ph->n_loss, ph->res.samples_per_s, mib(d->memory.peak),
           100.0 * (double)d->memory.peak / (double)ph->mem_cap);
}

/* Phase 2's layout: which layers each stage holds. */
static void describe_stages(const tm_model *net, const tm_mlp_config *model)
{
    int first[TM_MAX_LAYERS + 1];
    if (tm_stages_balance(net, WAYS, first) != TM_OK) return;
    for (int s = 0; s < WAYS; s++) {
        size_t n = 0;
        printf("  stage %d (device %d): layer%s", s, s, first[s + 1] - first[s] > 1 ? "s" : "");
        for (int l = first[s]; l < first[s + 1]; l++) {
            int in = model->widths[l], out = model->widths[l + 1];
            n += (size_t)in * out + out;
            printf(" %d (%d -> %d)", l, in, out);
        }
        printf(", %.2f MiB of weights\n", mib(n * sizeof(float)));
    }
}

/* Phase 3's layout: how every layer is split over the four ranks. */
static void describe_shards(const tm_model *net)
{
    tm_layer_plan plan[TM_MAX_LAYERS];
    size_t n;
    if (tm_stage_plan(net, 0, net->n_layers, WAYS, 0, plan, &n) != TM_OK) return;
    for (int i = 0; i < net->n_layers; i++) {
        const tm_layer_plan *l = &plan[i];
        int in = l->layer->in_width, out = l->layer->out_width;
        const tm_shard *w = &l->shard[0]; /* the weight, (out, in) */
        printf("  layer %d (%d -> %d): ", l->layer->index, in, out);
        if (w->dim == TM_SHARD_COLS)
            printf("row split, each rank multiplies %d of the %d inputs; outputs all-reduced\n",
                   w->len, in);
        else
            printf("column split, each rank computes %d of the %d outputs%s\n", w->len, out,
                   l->out_w == out ? ", then all-gathered" : "");
    }
    printf("  each rank holds %.2f MiB of weights\n", mib(n * sizeof(float)));
}

/* What the three phases need of fit's own flags, said in their terms (the
 * trainer's checks would name build/train's --pp and --tp, which fit sets
 * itself). */
static void check_story(const tm_mlp_config *m, const char *model, long batch, long micro,
                        int zero)
{
    if (m->n_layers < WAYS)
        tm_cli_die("--model \"%s\" has %d layers; the pipeline phase needs at least %d, one "
                   "per stage", model, m->n_layers, WAYS);
    for (int l = 1; l < m->n_layers; l++)
        if (m->widths[l] % WAYS != 0)
            tm_cli_die("--model \"%s\": hidden width %d does not divide by %d, as the tensor-"
                       "parallel phase needs", model, m->widths[l], WAYS);
    if (batch % micro != 0)
        tm_cli_die("--batch %ld is not divisible by --micro-batches %ld", batch, micro);
    if (zero > 0 && batch % WAYS != 0)
        tm_cli_die("--zero's phase splits --batch %ld over %d replicas: it must divide by %d",
                   batch, WAYS, WAYS);
}

/* Largest relative difference of two loss curves over their common steps. */
static double max_rel_diff(const phase *a, const phase *b)
{
    double worst = 0;
    long n = a->n_loss < b->n_loss ? a->n_loss : b->n_loss;
    for (long i = 0; i < n; i++) {
        double d = fabs(a->loss[i] - b->loss[i]) / fmax(fabs(b->loss[i]), 1e-30);
        if (d > worst) worst = d;
    }
    return worst;
}

int main(int argc, char **argv)
{
    tm_cli_program("fit");
    for (int i = 1; i < argc; i++)
        if ((strcmp(argv[i], "--model") == 0 && i + 1 < argc && strcmp(argv[i + 1], "gpt") == 0) ||
            strcmp(argv[i], "--model=gpt") == 0)
            return tm_fit_gpt(argc, argv);
    const char *model = "784,1792,1792,1792,10", *data_dir = TM_DATASET_DEFAULT_DIR, *why;
    size_t cap = (size_t)64 << 20;
    long steps = 30, batch = 128, micro = 4;
    int zero = 0;
    enum { O_MODEL = 256, O_MEM, O_STEPS, O_BATCH, O_MICRO, O_DATASET, O_DATA, O_ZERO,
           O_RECOMPUTE, O_OFFLOAD, O_HOSTMEM, O_PRECISION };
    tm_offload_kind offload = TM_OFFLOAD_NONE;
    size_t host_cap = 0;
    tm_recompute recompute = TM_RECOMPUTE_NONE;
    tm_precision precision = TM_PRECISION_FP32;
    static const struct option opts[] = {
        {"model", 1, 0, O_MODEL},     {"mem-cap", 1, 0, O_MEM},
        {"steps", 1, 0, O_STEPS},     {"batch", 1, 0, O_BATCH},
        {"micro-batches", 1, 0, O_MICRO}, {"dataset", 1, 0, O_DATASET},
        {"data-dir", 1, 0, O_DATA},   {"zero", 1, 0, O_ZERO},
        {"recompute", 1, 0, O_RECOMPUTE}, {"offload", 1, 0, O_OFFLOAD},
        {"host-mem-cap", 1, 0, O_HOSTMEM}, {"precision", 1, 0, O_PRECISION},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_MEM:
            if (tm_parse_size(optarg, &cap) != 0 || cap < TM_ARENA_ALIGN)
                tm_cli_die("--mem-cap wants a size like 64M or 1G, not \"%s\"", optarg);
            break;
        case O_STEPS: steps = parse_positive("--steps", optarg); break;
        case O_BATCH: batch = parse_positive("--batch", optarg); break;
        case O_MICRO: micro = parse_positive("--micro-batches", optarg); break;
        case O_DATASET:
            if (strcmp(optarg, "fashion-mnist") != 0)
                tm_cli_die("--dataset is fashion-mnist, not \"%s\"", optarg);
            break;
        case O_DATA: data_dir = optarg; break;
        case O_ZERO:
            if (strlen(optarg) != 1 || optarg[0] < '1' || optarg[0] > '3')
                tm_cli_die("--zero is 1, 2 or 3 (the ZeRO stage of the fourth phase), not \"%s\"",
                           optarg);
            zero = optarg[0] - '0';
            break;
        case O_RECOMPUTE:
            if (tm_recompute_parse(optarg, &recompute) != 0)
                tm_cli_die("--recompute is none, full or selective, not \"%s\"", optarg);
            break;
        case O_OFFLOAD:
            if (tm_offload_parse(optarg, &offload) != 0)
                tm_cli_die("--offload is none or optimizer, not \"%s\"", optarg);
            break;
        case O_HOSTMEM:
            if (tm_parse_size(optarg, &host_cap) != 0 || host_cap == 0)
                tm_cli_die("--host-mem-cap wants a size like 64M or 1G, not \"%s\"", optarg);
            break;
        case O_PRECISION:
            if (tm_precision_parse(optarg, &precision) != 0)
                tm_cli_die("--precision is fp32 or bf16, not \"%s\"", optarg);
            break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            if (optopt) tm_cli_die("option %s needs a value", argv[optind - 1]);
            tm_cli_die("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    char isa_msg[160];
    if (tm_isa_check_env(isa_msg, sizeof isa_msg) != 0) tm_cli_die("%s", isa_msg);

    tm_train_config base = {.dp = 1, .pp = 1, .tp = 1, .schedule = TM_SCHED_1F1B,
                            .batch = (int)batch, .micro_batches = 1, .optimizer = TM_OPT_SGD,
                            .lr = 0.02, .lr_schedule = TM_LR_CONSTANT, .momentum = 0.9,
                            .weight_decay = 5e-4, .seed = 1, .shuffle = 1,
                            .precision = precision};
    tm_mlp_config mlp;
    tm_model net;
    if (tm_mlp_parse(model, &mlp, &why) != 0) tm_cli_die("--model \"%s\": %s", model, why);
    check_story(&mlp, model, batch, micro, zero);
    if (tm_mlp_model(&net, &mlp) != TM_OK) {
        fprintf(stderr, "fit: %s\n", tm_error_message());
        return 1;
    }
    net.recompute = recompute;
    base.model = &net;
    base.beta1 = 0.9;
    base.beta2 = 0.999;
    base.offload = offload;
    base.host_mem_cap = host_cap;
    tm_dataset train_images = {0}, test_images = {0};
    if (tm_dataset_load(&train_images, data_dir, "train") != TM_OK ||
        tm_dataset_load(&test_images, data_dir, "t10k") != TM_OK) {
        fprintf(stderr, "fit: %s\n", tm_error_message());
        tm_model_destroy(&net);
        return 2;
    }
    tm_data train, test;
    tm_data_images(&train, &train_images);
    tm_data_images(&test, &test_images);
    /* The learning rate is constant, so the schedule's length only has to
     * cover the steps. */
    long per_epoch = train.n / batch > 0 ? train.n / batch : 1;
    base.epochs = (int)((steps + per_epoch - 1) / per_epoch);
    phase one = {.pp = 1, .tp = 1, .micro_batches = 1, .mem_cap = cap, .steps = steps};
    phase pipe = {.pp = WAYS, .tp = 1, .micro_batches = (int)micro, .mem_cap = cap, .steps = steps};
    phase tens = {.pp = 1, .tp = WAYS, .micro_batches = 1, .mem_cap = cap, .steps = steps};
    phase zph = {.pp = 1, .tp = 1, .micro_batches = 1, .dp = WAYS, .zero = zero, .mem_cap = cap,
                 .steps = steps};
    phase *all[] = {&one, &pipe, &tens, &zph};
    const char *names[] = {"one device", "pp=4", "tp=4", "dp=4 ZeRO"};
    int phases = zero > 0 ? 4 : 3;
    for (int i = 0; i < phases; i++) {
        tm_train_config c = base;
        c.pp = all[i]->pp;
        c.tp = all[i]->tp;
        if (all[i]->dp > 0) c.dp = all[i]->dp;
        c.zero = all[i]->zero;
        c.micro_batches = all[i]->micro_batches;
        if (tm_train_check(&c, &train) != TM_OK) {
            tm_dataset_free(&train_images);
            tm_dataset_free(&test_images);
            tm_cli_die("%s: %s", names[i], tm_error_message());
        }
    }
    for (int i = 0; i < phases; i++) {
        all[i]->loss = calloc((size_t)steps, sizeof(double));
        if (all[i]->loss == NULL) {
            fprintf(stderr, "fit: cannot allocate the loss record of %ld steps\n", steps);
            return 2;
        }
    }
    double mean, std;
    tm_dataset_stats(&train_images, &mean, &std);
    if (tm_dataset_standardize(&train_images, mean, std) != TM_OK ||
        tm_dataset_standardize(&test_images, mean, std) != TM_OK) {
        fprintf(stderr, "fit: %s\n", tm_error_message());
        return 2;
    }

    size_t param_bytes = tm_mlp_param_count(&mlp) * sizeof(float);
    printf("Does %s (%.2f M parameters, %.2f MiB as float32) train on a %.0f MiB device?\n"
           "SGD with momentum keeps three copies of it: the weights, their gradients and the\n"
           "momentum buffer, %.2f MiB before any activation.\n",
           model, 1e-6 * (double)(param_bytes / sizeof(float)), mib(param_bytes), mib(cap),
           mib(3 * param_bytes));
    if (recompute != TM_RECOMPUTE_NONE)
        printf("Every phase runs with activation recomputation: %s.\n",
               tm_recompute_name(recompute));
    if (offload != TM_OFFLOAD_NONE)
        printf("Every phase offloads the optimizer: each device keeps its momentum in %.0f MiB "
               "of host memory.\n", mib(host_cap));
    if (precision != TM_PRECISION_FP32)
        printf("Every phase runs in %s mixed precision.\n", tm_precision_name(precision));

    printf("\n== phase 1: one device, %.0f MiB ==\n", mib(cap));
    fflush(stdout);
    run_phase(&one, &base, &train, &test);
    int oom = one.status == TM_ENOMEM;
    size_t need = 0;
    if (oom) {
        print_indented(one.error);
        need = measure_one_device(&base, &train, &test, cap, param_bytes);
    } else if (one.status == TM_OK) {
        printf("  it fits on one device, so there is nothing to show: raise --model or lower "
               "--mem-cap\n");
        memory_table(&one.res, cap);
    } else {
        printf("  FAILED (%s):\n", tm_err_name(one.status));
        print_indented(one.error);
    }

    printf("\n== phase 2: pipeline parallel, pp=4, 1F1B schedule, %d micro-batches, %.0f MiB per "
           "device ==\n", pipe.micro_batches, mib(cap));
    printf("  every device keeps only its stage's weights, gradients and momentum:\n");
    describe_stages(&net, &mlp);
    fflush(stdout);
    run_phase(&pipe, &base, &train, &test);
    int pipe_ok = report_training(&pipe);

    printf("\n== phase 3: tensor parallel, tp=4 (Megatron), %.0f MiB per device ==\n", mib(cap));
    printf("  every device keeps a quarter of every layer:\n");
    describe_shards(&net);
    fflush(stdout);
    run_phase(&tens, &base, &train, &test);
    int tens_ok = report_training(&tens);

    int zero_ok = 1;
    if (zero > 0) {
        printf("\n== phase 4: data parallel, dp=4, ZeRO-%d, %.0f MiB per device ==\n", zero,
               mib(cap));
        printf("  every replica takes a quarter of each batch and keeps a quarter of the %s;\n"
               "  gradients are reduce-scattered, each replica updates its quarter%s\n",
               zero == 1 ? "momentum (weights and gradients whole)"
               : zero == 2 ? "momentum and gradients (weights whole)"
                           : "momentum, gradients and weights",
               zero == 3 ? ", and each layer's weights are all-gathered before it runs"
                         : ", and the weights are all-gathered");
        fflush(stdout);
        run_phase(&zph, &base, &train, &test);
        if (report_training(&zph)) {
            tm_train_config c = base;
            c.dp = WAYS;
            c.zero = zero;
            tm_report_zero(stdout, &zph.res, &c);
        }
        zero_ok = zph.status == TM_OK || zph.status == TM_ENOMEM;
    }

    printf("\n== summary ==\n");
    if (oom && need > 0)
        printf("  %-10s out of memory: it needs %.2f MiB, %.0f%% of the cap\n", "one device",
               mib(need), 100.0 * (double)need / (double)cap);
    else
        printf("  %-10s %s\n", "one device",
               oom ? "out of memory" : "did not run out of memory (not the story)");
    summary_line("pp=4", &pipe);
    summary_line("tp=4", &tens);
    if (zero > 0) summary_line(zero == 1 ? "ZeRO-1" : zero == 2 ? "ZeRO-2" : "ZeRO-3", &zph);
    if (pipe_ok && tens_ok)
        printf("  pp=4 and tp=4 trained the same model: their losses agree to %.1e (relative)\n"
               "  at every step; only the order of floating-point sums differs\n",
               max_rel_diff(&pipe, &tens));
    for (int i = 0; i < phases; i++) {
        tm_train_result_free(&all[i]->res);
        free(all[i]->loss);
    }
    tm_dataset_free(&train_images);
    tm_dataset_free(&test_images);
    tm_model_destroy(&net);
    return oom && pipe_ok && tens_ok && zero_ok ? 0 : 1;
}
