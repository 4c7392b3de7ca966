/* build/train: trains an MLP on Fashion-MNIST (or synthetic data) on a mesh
 * of emulated devices and reports accuracy, wall and modeled throughput,
 * the pipeline timeline, memory by tag and traffic by link. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/isa.h"
#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/idx.h"
#include "strategies/report.h"
#include "strategies/schedule.h"
#include "strategies/trainer.h"

static const char usage_head[] =
    "usage: train [options]\n"
    "Trains an MLP on Fashion-MNIST (or synthetic data) on a mesh of emulated devices.\n"
    "\n"
    "parallelism (devices = dp x pp x tp; every mesh trains like one device):\n"
    "  --dp N                data-parallel replicas, each takes batch / dp samples (1)\n"
    "  --pp N                pipeline stages (1)\n"
    "  --tp N                tensor-parallel ranks per stage (1)\n"
    "  --devices N           must equal dp x pp x tp when given\n"
    "  --schedule S          sequential | gpipe | 1f1b | grouped | interleaved (1f1b)\n"
    "  --stages L1,L2,...    layers per stage (default: balanced by FLOPs)\n"
    "  --fail-device D       test hook: device D fails ...\n"
    "  --fail-step S         ... at optimizer step S\n"
    "\n"
    "model and optimisation:\n"
    "  --model W0,W1,...     layer widths, inputs first, classes last (784,256,128,10)\n"
    "  --activation A        relu | gelu between linear layers (relu)\n"
    "  --epochs N            length of the run and of the schedule, in epochs (10)\n"
    "  --steps N             stop after N optimizer steps of this run (no limit)\n"
    "  --batch B             samples per optimizer step (128)\n"
    "  --micro-batches M     split each replica's batch (B / dp) into M micro-batches\n"
    "                        whose gradients accumulate before one step; with\n"
    "                        pipelining, the pipeline's micro-batches (1)\n"
    "  --optimizer O         sgd | adamw (sgd)\n"
    "  --lr X                peak learning rate (0.05 for sgd, 0.001 for adamw)\n"
    "  --lr-schedule S       constant (same rate every step, no warm-up) |\n"
    "                        cosine (linear warm-up, then cosine decay to 0) (cosine)\n"
    "  --warmup-steps N      warm-up length for cosine (200)\n"
    "  --momentum X          SGD momentum (0.9)\n"
    "  --weight-decay X      SGD: L2 penalty; AdamW: decoupled decay (5e-4 sgd, 1e-4 adamw)\n"
    "  --seed S              initialisation and data order (1)\n"
    "  --no-shuffle          train in the files' own order\n"
    "data:\n"
    "  --dataset D           fashion-mnist | synthetic: seeded random inputs of the\n"
    "                        model's input width, labels from a random linear teacher\n"
    "                        with the model's class count (fashion-mnist)\n"
    "  --samples N           synthetic: training samples; the test set has N/8 (16384)\n"
    "  --normalize N         none: pixels in [0,1]; standard: also (x - mean) / std\n"
    "                        with the training set's mean and std (standard)\n"
    "  --data-dir DIR        where the *-idx?-ubyte.gz files are\n"
    "                        (/usr/share/datasets/fashion-mnist)\n"
    "modeled time (what real devices would take; defaults measured on this machine):\n";

static const char usage_tail[] =
    "  --trace FILE          write a Chrome trace (Perfetto, chrome://tracing) of the\n"
    "                        recorded steps\n"
    "  --trace-clock C       modeled | wall: the trace's time axis (modeled)\n"
    "  --trace-from S        first recorded step of this run; the timeline and the\n"
    "                        traffic table show it (1)\n"
    "  --trace-steps N       steps recorded into the trace (1)\n"
    "device and files:\n"
    "  --mem-cap SIZE        memory of each device, e.g. 64M, 1G (64M)\n"
    "  --save FILE           write a safetensors checkpoint at the end\n"
    "  --load FILE           start from a checkpoint (resumes exactly when it holds\n"
    "                        optimizer state; weights only otherwise)\n"
    "  --metrics FILE        write JSON lines: step, epoch and summary records\n"
    "  -h, --help            this text\n"
    "Exit status: 0 success, 1 training failed (e.g. out of device memory),\n"
    "2 bad usage or unreadable input files.\n";

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "train: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see --help)\n");
    va_end(ap);
    exit(2);
}

static long parse_long(const char *flag, const char *v, long min)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || x < min)
        die_usage("%s wants an integer >= %ld, not \"%s\"", flag, min, v);
    return x;
}

static double parse_double(const char *flag, const char *v, double min, int strict)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(x) || x < min ||
        (strict && x <= min))
        die_usage("%s wants a finite number %s %g, not \"%s\"", flag, strict ? ">" : ">=", min, v);
    return x;
}

/* Output written to FILE.tmp.PID and renamed on success, so that a failed
 * run leaves no partial file behind. */
typedef struct {
    const char *path;
    char tmp[4096];
    FILE *f;
} out_file;

static void out_open(out_file *o, const char *path)
{
    o->path = path;
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%ld", path, (long)getpid());
    o->f = fopen(o->tmp, "w");
    if (o->f == NULL) {
        fprintf(stderr, "train: cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
}

static int out_commit(out_file *o)
{
    int ok = fflush(o->f) == 0 && fsync(fileno(o->f)) == 0;
    ok = fclose(o->f) == 0 && ok;
    if (ok && rename(o->tmp, o->path) == 0) return 0;
    fprintf(stderr, "train: cannot write %s: %s\n", o->path, strerror(errno));
    unlink(o->tmp);
    return -1;
}

static void out_abandon(out_file *o)
{
    if (o->f == NULL) return;
    fclose(o->f);
    unlink(o->tmp);
}

typedef struct {
    FILE *metrics;   /* or NULL */
    int tty;         /* progress bar instead of log lines */
    int batch;
} report;

static void on_step(void *ctx, const tm_step_info *s)
{
    report *r = ctx;
    if (r->metrics)
        fprintf(r->metrics,
                "{\"type\":\"step\",\"step\":%ld,\"loss\":%.9g,\"lr\":%.9g,"
                "\"modeled_step_s\":%.9g}\n",
                s->step, s->loss, s->lr, s->modeled_step_s);
    long left = s->total_steps - s->step;
    double eta = s->samples_per_s > 0 ? (double)left * r->batch / s->samples_per_s : 0;
    if (r->tty) {
        int width = 30, done = (int)(width * s->epoch_step / s->steps_per_epoch);
        fprintf(stderr, "\repoch %d [%.*s%*s] step %ld/%ld loss %.4f %6.0f samples/s ETA %3.0fs ",
                s->epoch + 1, done, "==============================", width - done, "", s->step,
                s->total_steps, s->loss, s->samples_per_s, eta);
    } else if (s->step % 100 == 0) {
        printf("step %ld/%ld epoch %d loss %.4f lr %.4g %.0f samples/s\n", s->step, s->total_steps,
               s->epoch + 1, s->loss, s->lr, s->samples_per_s);
        fflush(stdout);
    }
}

static void on_epoch(void *ctx, const tm_epoch_info *e)
{
    report *r = ctx;
    if (r->tty) fprintf(stderr, "\r%*s\r", 100, "");
    printf("epoch %d: train loss %.4f, test loss %.4f, test accuracy %.2f%%, %.0f samples/s "
           "(modeled %.0f", e->epoch + 1, e->train_loss, e->test_loss, 100 * e->test_acc,
           e->samples_per_s, e->modeled_samples_per_s);
    if (e->bubble >= 0) printf(", bubble %.1f%%", 100 * e->bubble);
    printf(")\n");
    fflush(stdout);
    if (r->metrics) {
        fprintf(r->metrics,
                "{\"type\":\"epoch\",\"epoch\":%d,\"train_loss\":%.9g,\"test_loss\":%.9g,"
                "\"test_acc\":%.6f,\"samples_per_s\":%.1f,\"modeled_samples_per_s\":%.1f",
                e->epoch + 1, e->train_loss, e->test_loss, e->test_acc, e->samples_per_s,
                e->modeled_samples_per_s);
        if (e->bubble >= 0) fprintf(r->metrics, ",\"bubble\":%.6f", e->bubble);
        fprintf(r->metrics, "}\n");
    }
}

static void json_peaks(FILE *f, const tm_arena_stats *m)
{
    for (int t = 0; t < TM_TAG_COUNT; t++)
        fprintf(f, "%s\"%s\":%zu", t ? "," : "{", tm_tag_name((tm_tag)t), m->tag_peak[t]);
    fputc('}', f);
}

int main(int argc, char **argv)
{
    tm_train_config cfg = {0};
    const char *model = "784,256,128,10", *act = "relu", *why;
    const char *data_dir = TM_DATASET_DEFAULT_DIR, *metrics_path = NULL;
    double lr = -1, wd = -1;
    int normalize = 1;
    cfg.epochs = 10;
    cfg.batch = 128;
    cfg.micro_batches = 1;
    cfg.optimizer = TM_OPT_SGD;
    cfg.lr_schedule = TM_LR_COSINE;
    cfg.dp = cfg.pp = cfg.tp = 1;
    cfg.schedule = TM_SCHED_1F1B;
    long devices = 0;
    cfg.warmup_steps = 200;
    cfg.momentum = 0.9;
    cfg.seed = 1;
    cfg.shuffle = 1;
    cfg.mem_cap = (size_t)64 << 20;
    tm_clock_config_default(&cfg.clock);
    const char *dataset = "fashion-mnist";
    long samples = 16384;
    enum { O_MODEL = 256, O_ACT, O_EPOCHS, O_STEPS, O_BATCH, O_MICRO, O_OPT, O_LR, O_SCHED,
           O_WARMUP, O_MOM, O_WD, O_SEED, O_NOSHUF, O_NORM, O_DATA, O_MEM, O_SAVE, O_LOAD,
           O_METRICS, O_DP, O_PP, O_TP, O_DEVICES, O_SCHEDULE, O_STAGES, O_FAILDEV, O_FAILSTEP,
           O_DATASET, O_SAMPLES, O_CLOCK, O_TRACE, O_TRACE_CLOCK, O_TRACE_FROM, O_TRACE_STEPS };
    static const struct option opts[] = {
        {"model", 1, 0, O_MODEL},          {"activation", 1, 0, O_ACT},
        {"epochs", 1, 0, O_EPOCHS},        {"steps", 1, 0, O_STEPS},
        {"batch", 1, 0, O_BATCH},          {"micro-batches", 1, 0, O_MICRO},
        {"optimizer", 1, 0, O_OPT},        {"lr", 1, 0, O_LR},
        {"lr-schedule", 1, 0, O_SCHED},    {"warmup-steps", 1, 0, O_WARMUP},
        {"momentum", 1, 0, O_MOM},         {"weight-decay", 1, 0, O_WD},
        {"seed", 1, 0, O_SEED},            {"no-shuffle", 0, 0, O_NOSHUF},
        {"normalize", 1, 0, O_NORM},       {"data-dir", 1, 0, O_DATA},
        {"mem-cap", 1, 0, O_MEM},          {"save", 1, 0, O_SAVE},
        {"load", 1, 0, O_LOAD},            {"metrics", 1, 0, O_METRICS},
        {"dp", 1, 0, O_DP},                {"pp", 1, 0, O_PP},
        {"tp", 1, 0, O_TP},                {"devices", 1, 0, O_DEVICES},
        {"schedule", 1, 0, O_SCHEDULE},    {"stages", 1, 0, O_STAGES},
        {"fail-device", 1, 0, O_FAILDEV},  {"fail-step", 1, 0, O_FAILSTEP},
        {"dataset", 1, 0, O_DATASET},      {"samples", 1, 0, O_SAMPLES},
        {"device-gflops", 1, 0, O_CLOCK},  {"device-gbps", 1, 0, O_CLOCK},
        {"link-gbps", 1, 0, O_CLOCK},      {"link-latency-us", 1, 0, O_CLOCK},
        {"devices-per-node", 1, 0, O_CLOCK}, {"inter-node-gbps", 1, 0, O_CLOCK},
        {"inter-node-latency-us", 1, 0, O_CLOCK}, {"trace", 1, 0, O_TRACE},
        {"trace-clock", 1, 0, O_TRACE_CLOCK}, {"trace-from", 1, 0, O_TRACE_FROM},
        {"trace-steps", 1, 0, O_TRACE_STEPS},
        {"help", 0, 0, 'h'},               {0, 0, 0, 0}};
    opterr = 0;
    for (int c, idx = 0; (c = getopt_long(argc, argv, "h", opts, &idx)) != -1;) {
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_ACT: act = optarg; break;
        case O_EPOCHS: cfg.epochs = (int)parse_long("--epochs", optarg, 1); break;
        case O_STEPS: cfg.max_steps = parse_long("--steps", optarg, 1); break;
        case O_BATCH: cfg.batch = (int)parse_long("--batch", optarg, 1); break;
        case O_MICRO: cfg.micro_batches = (int)parse_long("--micro-batches", optarg, 1); break;
        case O_OPT:
            if (strcmp(optarg, "sgd") == 0) cfg.optimizer = TM_OPT_SGD;
            else if (strcmp(optarg, "adamw") == 0) cfg.optimizer = TM_OPT_ADAMW;
            else die_usage("--optimizer is sgd or adamw, not \"%s\"", optarg);
            break;
        case O_LR: lr = parse_double("--lr", optarg, 0, 1); break;
        case O_SCHED:
            if (strcmp(optarg, "constant") == 0) cfg.lr_schedule = TM_LR_CONSTANT;
            else if (strcmp(optarg, "cosine") == 0) cfg.lr_schedule = TM_LR_COSINE;
            else die_usage("--lr-schedule is constant or cosine, not \"%s\"", optarg);
            break;
        case O_WARMUP: cfg.warmup_steps = parse_long("--warmup-steps", optarg, 0); break;
        case O_MOM: cfg.momentum = parse_double("--momentum", optarg, 0, 0); break;
        case O_WD: wd = parse_double("--weight-decay", optarg, 0, 0); break;
        case O_SEED: cfg.seed = (uint64_t)parse_long("--seed", optarg, 0); break;
        case O_NOSHUF: cfg.shuffle = 0; break;
        case O_NORM:
            if (strcmp(optarg, "none") == 0) normalize = 0;
            else if (strcmp(optarg, "standard") == 0) normalize = 1;
            else die_usage("--normalize is none or standard, not \"%s\"", optarg);
            break;
        case O_DATA: data_dir = optarg; break;
        case O_MEM:
            if (tm_parse_size(optarg, &cfg.mem_cap) != 0 || cfg.mem_cap == 0)
                die_usage("--mem-cap wants a size like 64M or 1G, not \"%s\"", optarg);
            break;
        case O_SAVE: cfg.save_path = optarg; break;
        case O_LOAD: cfg.load_path = optarg; break;
        case O_METRICS: metrics_path = optarg; break;
        case O_DP: cfg.dp = (int)parse_long("--dp", optarg, 1); break;
        case O_PP: cfg.pp = (int)parse_long("--pp", optarg, 1); break;
        case O_TP: cfg.tp = (int)parse_long("--tp", optarg, 1); break;
        case O_DEVICES: devices = parse_long("--devices", optarg, 1); break;
        case O_SCHEDULE:
            if (tm_schedule_kind_parse(optarg, &cfg.schedule) != 0)
                die_usage(
                    "--schedule is sequential, gpipe, 1f1b, grouped or interleaved, not \"%s\"",
                    optarg);
            break;
        case O_STAGES: cfg.stages = optarg; break;
        case O_FAILDEV: cfg.fail_device = (int)parse_long("--fail-device", optarg, 0); break;
        case O_FAILSTEP: cfg.fail_step = parse_long("--fail-step", optarg, 1); break;
        case O_DATASET:
            if (strcmp(optarg, "fashion-mnist") != 0 && strcmp(optarg, "synthetic") != 0)
                die_usage("--dataset is fashion-mnist or synthetic, not \"%s\"", optarg);
            dataset = optarg;
            break;
        case O_SAMPLES: samples = parse_long("--samples", optarg, 8); break;
        case O_CLOCK:
            if (tm_clock_config_flag(&cfg.clock, opts[idx].name, optarg) < 0)
                die_usage("%s", tm_error_message());
            break;
        case O_TRACE: cfg.trace_path = optarg; break;
        case O_TRACE_CLOCK:
            if (strcmp(optarg, "modeled") == 0) cfg.trace_wall = 0;
            else if (strcmp(optarg, "wall") == 0) cfg.trace_wall = 1;
            else die_usage("--trace-clock is modeled or wall, not \"%s\"", optarg);
            break;
        case O_TRACE_FROM: cfg.trace_first = parse_long("--trace-from", optarg, 1); break;
        case O_TRACE_STEPS: cfg.trace_steps = parse_long("--trace-steps", optarg, 1); break;
        case 'h':
            fputs(usage_head, stdout);
            tm_clock_config_usage(stdout, &cfg.clock);
            fputs(usage_tail, stdout);
            return 0;
        default:
            if (optopt) die_usage("option %s needs a value", argv[optind - 1]);
            die_usage("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("unexpected argument \"%s\"", argv[optind]);
    char isa_msg[160];
    if (tm_isa_check_env(isa_msg, sizeof isa_msg) != 0) die_usage("%s", isa_msg);
    if (tm_mlp_parse(model, &cfg.model, &why) != 0) die_usage("--model \"%s\": %s", model, why);
    if (tm_activation_parse(act, &cfg.model.act) != 0)
        die_usage("--activation is relu or gelu, not \"%s\"", act);
    int adamw = cfg.optimizer == TM_OPT_ADAMW;
    cfg.lr = lr > 0 ? lr : adamw ? 1e-3 : 0.05;
    cfg.weight_decay = wd >= 0 ? wd : adamw ? 1e-4 : 5e-4;
    if (cfg.momentum >= 1) die_usage("--momentum must be below 1");
    long mesh = (long)cfg.dp * cfg.pp * cfg.tp;
    if (devices != 0 && devices != mesh)
        die_usage("--devices %ld but dp x pp x tp = %d x %d x %d = %ld", devices, cfg.dp, cfg.pp,
                  cfg.tp, mesh);

    if (samples > INT_MAX) die_usage("--samples %ld is too many", samples);
    /* Fail now rather than after training if the trace cannot be written. */
    if (cfg.trace_path != NULL && tm_trace_path_check(cfg.trace_path) != TM_OK) {
        fprintf(stderr, "train: %s\n", tm_error_message());
        return 2;
    }
    tm_dataset train = {0}, test = {0};
    int synthetic = strcmp(dataset, "synthetic") == 0;
    const tm_mlp_config *m = &cfg.model;
    int st = synthetic
                 ? tm_dataset_synthetic(&train, (int)samples, m->widths[0],
                                        m->widths[m->n_layers], cfg.seed, 0)
                 : tm_dataset_load(&train, data_dir, "train");
    if (st == TM_OK)
        st = synthetic ? tm_dataset_synthetic(&test, (int)(samples / 8), m->widths[0],
                                              m->widths[m->n_layers], cfg.seed, 1)
                       : tm_dataset_load(&test, data_dir, "t10k");
    if (st != TM_OK) {
        tm_dataset_free(&train);
        fprintf(stderr, "train: %s\n", tm_error_message());
        return 2;
    }
    if (tm_train_check(&cfg, &train) != TM_OK) die_usage("%s", tm_error_message());
    if (normalize && !synthetic) {
        double mean, std;
        tm_dataset_stats(&train, &mean, &std);
        if (tm_dataset_standardize(&train, mean, std) != TM_OK ||
            tm_dataset_standardize(&test, mean, std) != TM_OK) {
            fprintf(stderr, "train: %s\n", tm_error_message());
            return 2;
        }
    }

    out_file metrics = {0};
    if (metrics_path != NULL) out_open(&metrics, metrics_path);
    report rep = {metrics.f, isatty(STDERR_FILENO), cfg.batch};
    cfg.ctx = &rep;
    cfg.on_step = on_step;
    cfg.on_epoch = on_epoch;
    printf("training %s (%s) on %s: %d train / %d test samples, batch %d in %d "
           "micro-batch(es), %s lr %g, %s schedule, device memory %zu MiB\n",
           model, act, synthetic ? "synthetic data" : "Fashion-MNIST", train.n, test.n, cfg.batch,
           cfg.micro_batches, adamw ? "adamw" : "sgd", cfg.lr,
           cfg.lr_schedule == TM_LR_COSINE ? "cosine" : "constant", cfg.mem_cap >> 20);
    if (mesh > 1)
        printf("mesh: %ld devices = dp %d x pp %d x tp %d, %s schedule\n", mesh, cfg.dp, cfg.pp,
               cfg.tp, tm_schedule_kind_name(cfg.schedule));
    fflush(stdout);
    tm_train_result res;
    char error[2048];
    st = tm_train(&cfg, &train, &test, &res, error, sizeof error);
    if (rep.tty) fprintf(stderr, "\r%*s\r", 100, "");
    tm_dataset_free(&train);
    tm_dataset_free(&test);
    if (st != TM_OK) {
        out_abandon(&metrics);
        tm_train_result_free(&res);
        fprintf(stderr, "train: %s\n", error);
        return st == TM_EINVAL || st == TM_EFORMAT || st == TM_EIO ? 2 : 1;
    }
    if (metrics.f != NULL) {
        fprintf(metrics.f, "{\"type\":\"summary\",\"steps\":%ld,\"samples_per_s\":%.1f,"
                           "\"modeled_samples_per_s\":%.1f,",
                res.steps, res.samples_per_s, res.modeled_samples_per_s);
        if (res.bubble >= 0) fprintf(metrics.f, "\"bubble\":%.6f,", res.bubble);
        fprintf(metrics.f, "\"test_acc\":%.6f,\"peak_bytes\":", res.test_acc);
        json_peaks(metrics.f, &res.memory);
        fprintf(metrics.f, ",\"devices\":[");
        for (int i = 0; i < res.n_devices; i++) {
            const tm_device_report *d = &res.devices[i];
            fprintf(metrics.f, "%s{\"id\":%d,\"dp\":%d,\"pp\":%d,\"tp\":%d,\"peak_bytes\":",
                    i ? "," : "", d->id, d->d, d->p, d->t);
            json_peaks(metrics.f, &d->memory);
            fprintf(metrics.f,
                    ",\"sent_bytes\":%llu,\"modeled_s\":%.9g,\"compute_s\":%.9g,"
                    "\"comm_s\":%.9g,\"idle_s\":%.9g}",
                    (unsigned long long)d->sent_bytes, d->modeled_s, d->compute_s, d->comm_s,
                    d->idle_s);
        }
        fprintf(metrics.f, "]}\n");
        if (out_commit(&metrics) != 0) {
            tm_train_result_free(&res);
            return 1;
        }
    }
    printf("test accuracy %.2f%% after %ld steps; %.0f samples/s; %.1f GFLOP/s\n",
           100 * res.test_acc, res.steps, res.samples_per_s, res.gflops);
    tm_report_modeled(stdout, &res, &cfg);
    if (cfg.pp > 1) tm_report_timeline(stdout, &res, &cfg);
    tm_report_memory(stdout, &res, cfg.mem_cap);
    tm_report_traffic(stdout, &res, &cfg);
    if (cfg.trace_path != NULL) {
        long first = cfg.trace_first > 0 ? cfg.trace_first : 1;
        long count = cfg.trace_steps > 0 ? cfg.trace_steps : 1;
        long recorded = res.steps - first + 1 < count ? res.steps - first + 1 : count;
        printf("trace of %ld step(s) in %s time written to %s\n", recorded > 0 ? recorded : 0,
               cfg.trace_wall ? "wall" : "modeled", cfg.trace_path);
    }
    tm_train_result_free(&res);
    return 0;
}
