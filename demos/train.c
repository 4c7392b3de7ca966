/* build/train: trains a model — an MLP on Fashion-MNIST or a byte-level GPT
 * on text, either on synthetic data — on a mesh of emulated devices and
 * reports accuracy or validation loss, wall and modeled throughput, the
 * pipeline timeline, memory by tag and traffic by link; the GPT ends with a
 * generated sample. */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "demos/train/progress.h"
#include "kernels/gemm.h"
#include "kernels/isa.h"
#include "runtime/arena.h"
#include "runtime/cli.h"
#include "runtime/outfile.h"
#include "runtime/process.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/generate.h"
#include "strategies/gpt.h"
#include "strategies/idx.h"
#include "strategies/mlp.h"
#include "strategies/report.h"
#include "strategies/report_html.h"
#include "strategies/schedule.h"
#include "strategies/trainer.h"

static const char usage_head[] =
    "usage: train [options]\n"
    "Trains a model on a mesh of emulated devices: an MLP on Fashion-MNIST, or a\n"
    "byte-level GPT (nanoGPT's architecture) on text; either on synthetic data.\n"
    "\n"
    "parallelism (devices = dp x pp x tp; every mesh trains like one device):\n"
    "  --dp N                data-parallel replicas, each takes batch / dp samples (1)\n"
    "  --pp N                pipeline stages (1)\n"
    "  --tp N                tensor-parallel ranks per stage (1)\n"
    "  --sequence-parallel   GPT, with --tp 2 or more: the LayerNorms and residual\n"
    "                        adds between the tensor-parallel regions each take a\n"
    "                        tp-th of the positions (--context must divide by tp)\n"
    "  --zero S              ZeRO over the dp replicas (--dp 2 or more): 0 none,\n"
    "                        1 optimizer state, 2 and gradients, 3 and parameters\n"
    "                        sharded; given (0 too), the run also prints every\n"
    "                        device's memory against ZeRO's formulas (0)\n"
    "  --recompute R         none | full: a layer keeps only its input and its\n"
    "                        backward re-runs its forward | selective (GPT):\n"
    "                        attention's T x T weights are recomputed in the\n"
    "                        backward (none)\n"
    "  --offload O           none | optimizer: each device keeps its optimizer\n"
    "                        state (its ZeRO shard) in host memory; gradients go\n"
    "                        to the host and updated parameters come back over\n"
    "                        its host link every step; prints the offload's\n"
    "                        accounts (none)\n"
    "  --host-mem-cap SIZE   host memory of each device for --offload, e.g. 256M\n"
    "  --precision P         fp32 | bf16: the GEMMs on bf16 copies of the weights\n"
    "                        with fp32 accumulation, activations stored in bf16;\n"
    "                        master weights, gradients and optimizer state stay\n"
    "                        fp32. Every CPU runs it: AVX512_BF16 where present,\n"
    "                        else the fp32 kernels on the rounded operands (fp32)\n"
    "  --devices N           must equal dp x pp x tp when given\n"
    "  --schedule S          sequential | gpipe | 1f1b | grouped | interleaved | zb-h1 |\n"
    "                        zb-h2 | interleaved-1f1b (1f1b)\n"
    "  --virtual-stages V    interleaved-1f1b: V chunks of layers per device, chunk c\n"
    "                        of device p being model stage c x pp + p; micro-batches\n"
    "                        a multiple of pp (1)\n"
    "  --stages L1,L2,...    layers per stage, blocks for the GPT (default: balanced\n"
    "                        by FLOPs); pp x V entries with virtual stages\n"
    "  --fail-device D       test hook: device D fails ...\n"
    "  --fail-step S         ... at optimizer step S\n"
    "\n"
    "model:\n"
    "  --model M             gpt, or the MLP's layer widths, inputs first, classes\n"
    "                        last (784,256,128,10)\n"
    "  --activation A        MLP: relu | gelu between linear layers (relu)\n"
    "  --layers L            GPT: transformer blocks (4)\n"
    "  --heads H             GPT: attention heads per block (4)\n"
    "  --d-model C           GPT: channels, a multiple of --heads (128)\n"
    "  --context T           GPT: positions per sequence (128)\n"
    "optimisation (defaults: the model's recipe, MLP / GPT):\n"
    "  --epochs N            length of the run and of the schedule, in epochs (10; GPT:\n"
    "                        1, or as many as --steps needs)\n"
    "  --steps N             stop after N optimizer steps of this run (no limit)\n"
    "  --batch B             samples (GPT: sequences) per optimizer step (128 / 32)\n"
    "  --micro-batches M     split each replica's batch (B / dp) into M micro-batches\n"
    "                        whose gradients accumulate before one step; with\n"
    "                        pipelining, the pipeline's micro-batches (1)\n"
    "  --optimizer O         sgd | adamw (sgd / adamw)\n"
    "  --lr X                peak learning rate (0.05 for sgd, 0.001 for adamw / 0.001)\n"
    "  --lr-schedule S       constant (same rate every step, no warm-up) |\n"
    "                        cosine (linear warm-up, then cosine decay to --min-lr) (cosine)\n"
    "  --warmup-steps N      warm-up length for cosine (200 / 100)\n"
    "  --min-lr X            where cosine decays to (0 / lr / 10)\n"
    "  --lr-decay-steps N    steps from 0 to the end of the decay, --min-lr after it\n"
    "                        (the length of --epochs)\n"
    "  --momentum X          SGD momentum (0.9)\n"
    "  --beta1 X, --beta2 X  AdamW's moment decays (0.9, 0.999 / 0.9, 0.99)\n"
    "  --weight-decay X      SGD: L2 penalty; AdamW: decoupled decay (5e-4 sgd, 1e-4\n"
    "                        adamw / 0.1 on 2-D tensors only)\n"
    "  --clip-grad X         clip the global gradient norm to X; 0 is off (0 / 1.0)\n"
    "  --seed S              initialisation and data order (1)\n"
    "  --no-shuffle          train in the data's own order\n"
    "data:\n"
    "  --dataset D           fashion-mnist (MLP) | text (GPT) | synthetic: seeded\n"
    "                        inputs of the model's shape (MLP: labels from a random\n"
    "                        linear teacher; GPT: bytes from a random order-1 Markov\n"
    "                        source) (fashion-mnist / text)\n"
    "  --samples N           synthetic: training samples (GPT: windows); the test or\n"
    "                        validation set has N/8 (16384)\n"
    "  --normalize N         MLP: none: pixels in [0,1]; standard: also (x - mean) /\n"
    "                        std with the training set's mean and std (standard)\n"
    "  --data-dir DIR        MLP: where the *-idx?-ubyte.gz files are\n"
    "                        (/usr/share/datasets/fashion-mnist)\n"
    "  --text F1,F2,...      GPT: text files, concatenated (default: the files of\n"
    "                        /usr/share/games/fortunes, Debian's fortunes package)\n"
    "  --val-fraction X      GPT: the last X of the text validates (0.1)\n"
    "  --eval-every N        GPT: evaluate every N steps too (each epoch)\n"
    "  --eval-sequences N    GPT: validate on the first N windows (all)\n"
    "  --sample-tokens N     GPT: bytes generated at the end, 0 for none (200)\n"
    "modeled time (what real devices would take; defaults measured on this machine):\n";

static const char usage_tail[] =
    "  --trace FILE          write a Chrome trace (Perfetto, chrome://tracing) of the\n"
    "                        recorded steps\n"
    "  --trace-clock C       modeled | wall: the trace's time axis (modeled)\n"
    "  --trace-from S        first recorded step of this run; the timeline and the\n"
    "                        traffic table show it (1)\n"
    "  --trace-steps N       steps recorded into the trace (1)\n"
    "  --links               list every link's traffic (default: sums by mesh\n"
    "                        dimension beyond 8 links)\n"
    "  --report FILE         write an HTML report of the run (one file, opens offline\n"
    "                        in any browser): loss curve, every device's timeline,\n"
    "                        memory, traffic and modeled time\n"
    "device and files:\n"
    "  --mem-cap SIZE        memory of each device, e.g. 64M, 1G (64M / 512M)\n"
    "  --save FILE           write a safetensors checkpoint at the end\n"
    "  --load FILE           start from a checkpoint (resumes exactly when it holds\n"
    "                        optimizer state; weights only otherwise)\n"
    "  --load-weights FILE   start a new run (step 0, fresh optimizer, any data)\n"
    "                        from a checkpoint's weights\n"
    "  --metrics FILE        write JSON lines: step, eval, epoch and summary records\n"
    "                        (non-finite numbers as null)\n"
    "  -h, --help            this text\n";

static const char usage_end[] =
    "Output files are checked before anything starts; a regular file (or a\n"
    "symlink's target) is replaced whole at the end, a device or FIFO is written\n"
    "in place. Ctrl-C (SIGINT) or SIGTERM: every device finishes its step, the\n"
    "checkpoint and metrics of that step are written, exit 130 / 143; a second\n"
    "signal stops at once.\n"
    "Exit status: 0 success, 1 training failed (out of device memory, diverged to\n"
    "NaN or infinity, an output that could not be written), 2 bad usage,\n"
    "unreadable input or unwritable output paths, 130 / 143 interrupted.\n";

/* The limits, from the constants that set them. */
static void print_limits(FILE *f)
{
    fprintf(f,
            "limits: dp x pp x tp <= %d devices and pp <= the model's layers (the GPT's\n"
            "blocks); an MLP of at most %d linear layers of widths 1..%d; a GPT of 1..%d\n"
            "blocks, d_model and context 1..%d; --micro-batches <= %d and\n"
            "pp x micro-batches <= %d; --seed 0..%ld;\n"
            "each device's parameters, gradients and optimizer state within --mem-cap,\n"
            "and devices x --mem-cap within the host's available memory.\n",
            TM_MAX_DEVICES, TM_MLP_MAX_LAYERS, TM_MLP_MAX_WIDTH, TM_GPT_MAX_LAYERS,
            TM_GPT_MAX_WIDTH, TM_SCHEDULE_MAX_MB, TM_SCHEDULE_MAX_WORK, LONG_MAX);
}

/* The training and validation data of the GPT: text (the corpus split at
 * 1 - val_fraction) or synthetic windows. Exits 2 on bad input. */
typedef struct {
    tm_corpus train, val;  /* val: a split of train's bytes, or its own */
    int split;             /* val's bytes are train's tail (not owned) */
    tm_data train_data, val_data;
} text_data;

static void load_text(text_data *t, const char *files, int synthetic, long samples, int T,
                      double val_fraction, uint64_t seed)
{
    memset(t, 0, sizeof *t);
    int st;
    if (synthetic) {
        st = tm_corpus_synthetic(&t->train, (size_t)samples * T + 1, seed, 0);
        if (st == TM_OK) st = tm_corpus_synthetic(&t->val, (size_t)(samples / 8) * T + 1, seed, 1);
    } else {
        st = tm_corpus_load(&t->train, files);
    }
    if (st != TM_OK) {
        fprintf(stderr, "train: %s\n", tm_error_message());
        exit(2);
    }
    const uint8_t *val = t->val.bytes;
    size_t train_len = t->train.len, val_len = t->val.len;
    if (!synthetic) {
        train_len = (size_t)floor((1.0 - val_fraction) * (double)t->train.len);
        val = t->train.bytes + train_len;
        val_len = t->train.len - train_len;
    }
    if (tm_data_text(&t->train_data, t->train.bytes, train_len, T, "training split") != TM_OK ||
        tm_data_text(&t->val_data, val, val_len, T, "validation split") != TM_OK) {
        fprintf(stderr, "train: %s (--text %s)\n", tm_error_message(),
                files ? files : TM_CORPUS_DEFAULT_DIR);
        exit(2);
    }
}

/* The losses --report draws, collected by the callbacks. */
static tm_loss_history history;

/* Everything main holds at its end, whichever model and data it had. */
static void release(text_data *t, tm_dataset *train, tm_dataset *test, tm_model *net)
{
    tm_loss_history_free(&history);
    tm_corpus_free(&t->train);
    tm_corpus_free(&t->val);
    tm_dataset_free(train);
    tm_dataset_free(test);
    tm_model_destroy(net);
}

typedef struct {
    FILE *out;
    tm_escaper esc;
} sample_out;

static void emit_byte(void *ctx, uint8_t b)
{
    sample_out *o = ctx;
    tm_escaper_put(&o->esc, b, o->out);
}

/* The closing sample of a GPT run: a newline as the prompt, then n bytes
 * at temperature 0.8, on one device of the process that reports the run
 * (across processes only it holds the final weights). */
static void print_sample(const tm_model *m, const float *params, int n, uint64_t seed,
                         size_t cap)
{
    static const uint8_t prompt[] = "\n";
    sample_out o = {stdout, {{0}, 0, 0}};
    tm_generate_config g = {.model = m, .params = params, .prompt = prompt, .prompt_len = 1,
                            .tokens = n, .temperature = 0.8, .top_k = 0, .seed = seed,
                            .mem_cap = cap, .local = 1, .emit = emit_byte, .ctx = &o};
    tm_generate_stats stats;
    char error[2048];
    printf("sample (%d bytes, temperature 0.8):\n", n);
    int st = tm_generate(&g, &stats, error, sizeof error);
    tm_escaper_flush(&o.esc, stdout);
    printf("\n");
    if (st != TM_OK) fprintf(stderr, "train: the sample failed: %s\n", error);
}

/* Long options (getopt_long's values) and which ones this command gave. */
enum { O_MODEL = 256, O_ACT, O_EPOCHS, O_STEPS, O_BATCH, O_MICRO, O_OPT, O_LR, O_SCHED,
       O_WARMUP, O_MOM, O_WD, O_SEED, O_NOSHUF, O_NORM, O_DATA, O_MEM, O_SAVE, O_LOAD,
       O_METRICS, O_DP, O_PP, O_TP, O_DEVICES, O_SCHEDULE, O_STAGES, O_FAILDEV, O_FAILSTEP,
       O_DATASET, O_SAMPLES, O_CLOCK, O_TRACE, O_TRACE_CLOCK, O_TRACE_FROM, O_TRACE_STEPS,
       O_LINKS, O_LAYERS, O_HEADS, O_DMODEL, O_CONTEXT, O_BETA1, O_BETA2, O_MINLR, O_DECAY,
       O_CLIP, O_TEXT, O_VALFRAC, O_EVALEVERY, O_EVALSEQ, O_SAMPLETOK, O_LOADW, O_SEQPAR,
       O_REPORT, O_ZERO, O_RECOMPUTE, O_OFFLOAD, O_HOSTMEM, O_PRECISION, O_VIRTUAL,
       O_END };
static int given[O_END - O_MODEL];
static int given_nodes, given_inter_node; /* --devices-per-node, --inter-node-* */
#define GIVEN(o) given[(o) - O_MODEL]

static void warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "train: warning: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* A flag that would do nothing in the command's combination is bad usage,
 * or a warning where a sweep may give it on purpose (a schedule for a
 * pipeline of one stage), never silent. */
static void check_combination(const tm_train_config *cfg, int synthetic)
{
    if (GIVEN(O_FAILDEV) != GIVEN(O_FAILSTEP))
        tm_cli_die("--fail-device and --fail-step go together: device D fails at step S");
    if (!synthetic && GIVEN(O_SAMPLES))
        tm_cli_die("--samples is for --dataset synthetic (the real data has its own size)");
    if (synthetic && GIVEN(O_DATA)) tm_cli_die("--data-dir is for --dataset fashion-mnist");
    if (synthetic && GIVEN(O_NORM))
        tm_cli_die("--normalize is for --dataset fashion-mnist (synthetic inputs are standard "
                   "already)");
    if (cfg->optimizer == TM_OPT_ADAMW && GIVEN(O_MOM))
        tm_cli_die("--momentum is for --optimizer sgd (adamw has --beta1 and --beta2)");
    if (cfg->optimizer == TM_OPT_SGD && (GIVEN(O_BETA1) || GIVEN(O_BETA2)))
        tm_cli_die("--beta1 and --beta2 are for --optimizer adamw");
    if (cfg->lr_schedule == TM_LR_CONSTANT && (GIVEN(O_MINLR) || GIVEN(O_DECAY)))
        tm_cli_die("--min-lr and --lr-decay-steps are for --lr-schedule cosine");
    if (cfg->lr_schedule == TM_LR_CONSTANT && GIVEN(O_WARMUP))
        tm_cli_die("--warmup-steps is for --lr-schedule cosine (constant has no warm-up)");
    if (cfg->trace_path == NULL && (GIVEN(O_TRACE_CLOCK) || GIVEN(O_TRACE_STEPS)))
        tm_cli_die("--trace-clock and --trace-steps are for --trace");
    if (cfg->virtual_stages > 1 && cfg->pp == 1)
        tm_cli_die("--virtual-stages %d needs --pp 2 or more", cfg->virtual_stages);
    if (cfg->pp == 1 && GIVEN(O_SCHEDULE))
        warn("--schedule does nothing with --pp 1 (one stage: every schedule is the same "
             "accumulation loop)");
    if (given_inter_node && !given_nodes)
        warn("--inter-node-gbps and --inter-node-latency-us do nothing without "
             "--devices-per-node (all devices are in one node)");
}

/* The first SIGINT or SIGTERM asks every device to stop after the step in
 * flight (tm_train_config.stop_request): the run then saves its checkpoint
 * and metrics and exits 128 + the signal. A second one, a hang-up or a
 * broken pipe ends the process at once, its unfinished outputs' temporary
 * files removed first. The handler runs on the host thread (device threads
 * block these signals) and only touches a lock-free atomic and unlink(2). */
static atomic_int stop_signal;

static void on_signal(int sig)
{
    int none = 0;
    if ((sig == SIGINT || sig == SIGTERM) &&
        atomic_compare_exchange_strong(&stop_signal, &none, sig))
        return;
    tm_outfile_discard_temps();
    signal(sig, SIG_DFL);
    raise(sig); /* delivered, and fatal, as the handler returns */
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* Interrupted system calls resume: the first signal only sets a flag. */
    sa.sa_flags = SA_RESTART;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

int main(int argc, char **argv)
{
    tm_cli_program("train");
    /* Under mpirun, process 0 speaks until the mesh says which one reports. */
    if (tm_process_init() != TM_OK) {
        fprintf(stderr, "train: %s\n", tm_error_message());
        return 1;
    }
    tm_process_output(0);
    catch_signals();
    tm_train_config cfg = {0};
    const char *model = "784,256,128,10", *act = "relu", *why;
    const char *data_dir = TM_DATASET_DEFAULT_DIR, *metrics_path = NULL, *text = NULL;
    const char *report_path = NULL;
    double lr = -1, wd = -1, val_fraction = 0.1;
    int normalize = 1, sample_tokens = 200;
    long eval_sequences = 0;
    tm_gpt_config gc = {4, 4, 128, 128, 0};
    tm_recompute recompute = TM_RECOMPUTE_NONE;
    cfg.epochs = 10;
    cfg.micro_batches = 1;
    cfg.lr_schedule = TM_LR_COSINE;
    cfg.dp = cfg.pp = cfg.tp = 1;
    cfg.schedule = TM_SCHED_1F1B;
    long devices = 0;
    int every_link = 0;
    cfg.momentum = 0.9;
    cfg.beta1 = 0.9;
    cfg.seed = 1;
    cfg.shuffle = 1;
    tm_clock_config_default(&cfg.clock);
    const char *dataset = NULL;
    long samples = 16384;
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
        {"virtual-stages", 1, 0, O_VIRTUAL},
        {"fail-device", 1, 0, O_FAILDEV},  {"fail-step", 1, 0, O_FAILSTEP},
        {"dataset", 1, 0, O_DATASET},      {"samples", 1, 0, O_SAMPLES},
        {"device-gflops", 1, 0, O_CLOCK},  {"device-gbps", 1, 0, O_CLOCK},
        {"link-gbps", 1, 0, O_CLOCK},      {"link-latency-us", 1, 0, O_CLOCK},
        {"devices-per-node", 1, 0, O_CLOCK}, {"inter-node-gbps", 1, 0, O_CLOCK},
        {"inter-node-latency-us", 1, 0, O_CLOCK}, {"trace", 1, 0, O_TRACE},
        {"trace-clock", 1, 0, O_TRACE_CLOCK}, {"trace-from", 1, 0, O_TRACE_FROM},
        {"trace-steps", 1, 0, O_TRACE_STEPS}, {"links", 0, 0, O_LINKS},
        {"layers", 1, 0, O_LAYERS},        {"heads", 1, 0, O_HEADS},
        {"d-model", 1, 0, O_DMODEL},       {"context", 1, 0, O_CONTEXT},
        {"beta1", 1, 0, O_BETA1},          {"beta2", 1, 0, O_BETA2},
        {"min-lr", 1, 0, O_MINLR},         {"lr-decay-steps", 1, 0, O_DECAY},
        {"clip-grad", 1, 0, O_CLIP},       {"text", 1, 0, O_TEXT},
        {"val-fraction", 1, 0, O_VALFRAC}, {"eval-every", 1, 0, O_EVALEVERY},
        {"eval-sequences", 1, 0, O_EVALSEQ}, {"sample-tokens", 1, 0, O_SAMPLETOK},
        {"load-weights", 1, 0, O_LOADW},   {"sequence-parallel", 0, 0, O_SEQPAR},
        {"report", 1, 0, O_REPORT},        {"zero", 1, 0, O_ZERO},
        {"recompute", 1, 0, O_RECOMPUTE},  {"offload", 1, 0, O_OFFLOAD},
        {"host-mem-cap", 1, 0, O_HOSTMEM}, {"precision", 1, 0, O_PRECISION},
        {"help", 0, 0, 'h'},               {0, 0, 0, 0}};
    opterr = 0;
    for (int c, idx = 0; (c = getopt_long(argc, argv, "h", opts, &idx)) != -1;) {
        if (c >= O_MODEL && c < O_END) GIVEN(c) = 1;
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_ACT: act = optarg; break;
        case O_EPOCHS: cfg.epochs = (int)tm_cli_long("--epochs", optarg, 1, INT_MAX); break;
        case O_STEPS: cfg.max_steps = tm_cli_long("--steps", optarg, 1, LONG_MAX); break;
        case O_BATCH: cfg.batch = (int)tm_cli_long("--batch", optarg, 1, INT_MAX); break;
        case O_MICRO:
            cfg.micro_batches = (int)tm_cli_long("--micro-batches", optarg, 1, TM_SCHEDULE_MAX_MB);
            break;
        case O_OPT:
            if (tm_optimizer_parse(optarg, &cfg.optimizer) != 0)
                tm_cli_die("--optimizer is sgd or adamw, not \"%s\"", optarg);
            break;
        case O_LR: lr = tm_cli_double("--lr", optarg, 0, 1); break;
        case O_SCHED:
            if (strcmp(optarg, "constant") == 0) cfg.lr_schedule = TM_LR_CONSTANT;
            else if (strcmp(optarg, "cosine") == 0) cfg.lr_schedule = TM_LR_COSINE;
            else tm_cli_die("--lr-schedule is constant or cosine, not \"%s\"", optarg);
            break;
        case O_WARMUP: cfg.warmup_steps = tm_cli_long("--warmup-steps", optarg, 0, LONG_MAX); break;
        case O_MOM: cfg.momentum = tm_cli_double("--momentum", optarg, 0, 0); break;
        case O_WD: wd = tm_cli_double("--weight-decay", optarg, 0, 0); break;
        case O_SEED: cfg.seed = (uint64_t)tm_cli_long("--seed", optarg, 0, LONG_MAX); break;
        case O_NOSHUF: cfg.shuffle = 0; break;
        case O_NORM:
            if (strcmp(optarg, "none") == 0) normalize = 0;
            else if (strcmp(optarg, "standard") == 0) normalize = 1;
            else tm_cli_die("--normalize is none or standard, not \"%s\"", optarg);
            break;
        case O_DATA: data_dir = optarg; break;
        case O_MEM:
            if (tm_parse_size(optarg, &cfg.mem_cap) != 0 || cfg.mem_cap == 0)
                tm_cli_die("--mem-cap wants a size like 64M or 1G, not \"%s\"", optarg);
            break;
        case O_SAVE: cfg.save_path = optarg; break;
        case O_LOAD: cfg.load_path = optarg; break;
        case O_LOADW:
            cfg.load_path = optarg;
            cfg.load_weights = 1;
            break;
        case O_METRICS: metrics_path = optarg; break;
        case O_SEQPAR: gc.sequence_parallel = 1; break;
        case O_REPORT: report_path = optarg; break;
        case O_RECOMPUTE:
            if (tm_recompute_parse(optarg, &recompute) != 0)
                tm_cli_die("--recompute is none, full or selective, not \"%s\"", optarg);
            break;
        case O_OFFLOAD:
            if (tm_offload_parse(optarg, &cfg.offload) != 0)
                tm_cli_die("--offload is none or optimizer, not \"%s\"", optarg);
            break;
        case O_HOSTMEM:
            if (tm_parse_size(optarg, &cfg.host_mem_cap) != 0 || cfg.host_mem_cap == 0)
                tm_cli_die("--host-mem-cap wants a size like 256M or 1G, not \"%s\"", optarg);
            break;
        case O_PRECISION:
            if (tm_precision_parse(optarg, &cfg.precision) != 0)
                tm_cli_die("--precision is fp32 or bf16, not \"%s\"", optarg);
            break;
        case O_DP: cfg.dp = (int)tm_cli_long("--dp", optarg, 1, TM_MAX_DEVICES); break;
        case O_PP: cfg.pp = (int)tm_cli_long("--pp", optarg, 1, TM_MAX_DEVICES); break;
        case O_TP: cfg.tp = (int)tm_cli_long("--tp", optarg, 1, TM_MAX_DEVICES); break;
        case O_DEVICES: devices = tm_cli_long("--devices", optarg, 1, TM_MAX_DEVICES); break;
        case O_ZERO:
            if (strlen(optarg) != 1 || optarg[0] < '0' || optarg[0] > '3')
                tm_cli_die("--zero is 0, 1, 2 or 3, not \"%s\"", optarg);
            cfg.zero = optarg[0] - '0';
            break;
        case O_SCHEDULE:
            if (tm_schedule_kind_parse(optarg, &cfg.schedule) != 0)
                tm_cli_die(
                    "--schedule is sequential, gpipe, 1f1b, grouped, interleaved, zb-h1, zb-h2 "
                    "or interleaved-1f1b, not \"%s\"",
                    optarg);
            break;
        case O_VIRTUAL:
            cfg.virtual_stages =
                (int)tm_cli_long("--virtual-stages", optarg, 1, TM_SCHEDULE_MAX_VIRTUAL);
            break;
        case O_STAGES: cfg.stages = optarg; break;
        case O_FAILDEV:
            cfg.fail_device = (int)tm_cli_long("--fail-device", optarg, 0, TM_MAX_DEVICES - 1);
            break;
        case O_FAILSTEP: cfg.fail_step = tm_cli_long("--fail-step", optarg, 1, LONG_MAX); break;
        case O_DATASET:
            if (strcmp(optarg, "fashion-mnist") != 0 && strcmp(optarg, "synthetic") != 0 &&
                strcmp(optarg, "text") != 0)
                tm_cli_die("--dataset is fashion-mnist, text or synthetic, not \"%s\"", optarg);
            dataset = optarg;
            break;
        case O_SAMPLES: samples = tm_cli_long("--samples", optarg, 8, INT_MAX); break;
        case O_CLOCK:
            if (tm_clock_config_flag(&cfg.clock, opts[idx].name, optarg) < 0)
                tm_cli_die("%s", tm_error_message());
            given_nodes |= strcmp(opts[idx].name, "devices-per-node") == 0;
            given_inter_node |= strncmp(opts[idx].name, "inter-node-", 11) == 0;
            break;
        case O_TRACE: cfg.trace_path = optarg; break;
        case O_TRACE_CLOCK:
            if (strcmp(optarg, "modeled") == 0) cfg.trace_wall = 0;
            else if (strcmp(optarg, "wall") == 0) cfg.trace_wall = 1;
            else tm_cli_die("--trace-clock is modeled or wall, not \"%s\"", optarg);
            break;
        case O_TRACE_FROM:
            cfg.trace_first = tm_cli_long("--trace-from", optarg, 1, LONG_MAX);
            break;
        case O_LINKS: every_link = 1; break;
        case O_TRACE_STEPS:
            cfg.trace_steps = tm_cli_long("--trace-steps", optarg, 1, LONG_MAX);
            break;
        case O_LAYERS:
            gc.n_layer = (int)tm_cli_long("--layers", optarg, 1, TM_GPT_MAX_LAYERS);
            break;
        case O_HEADS: gc.n_head = (int)tm_cli_long("--heads", optarg, 1, TM_GPT_MAX_WIDTH); break;
        case O_DMODEL:
            gc.n_embd = (int)tm_cli_long("--d-model", optarg, 1, TM_GPT_MAX_WIDTH);
            break;
        case O_CONTEXT:
            gc.block_size = (int)tm_cli_long("--context", optarg, 1, TM_GPT_MAX_WIDTH);
            break;
        case O_BETA1: cfg.beta1 = tm_cli_double("--beta1", optarg, 0, 0); break;
        case O_BETA2: cfg.beta2 = tm_cli_double("--beta2", optarg, 0, 0); break;
        case O_MINLR: cfg.min_lr = tm_cli_double("--min-lr", optarg, 0, 0); break;
        case O_DECAY:
            cfg.lr_decay_steps = tm_cli_long("--lr-decay-steps", optarg, 1, LONG_MAX);
            break;
        case O_CLIP: cfg.clip_grad = tm_cli_double("--clip-grad", optarg, 0, 0); break;
        case O_TEXT: text = optarg; break;
        case O_VALFRAC: val_fraction = tm_cli_double("--val-fraction", optarg, 0, 1); break;
        case O_EVALEVERY: cfg.eval_every = tm_cli_long("--eval-every", optarg, 1, LONG_MAX); break;
        case O_EVALSEQ: eval_sequences = tm_cli_long("--eval-sequences", optarg, 1, INT_MAX); break;
        case O_SAMPLETOK:
            sample_tokens = (int)tm_cli_long("--sample-tokens", optarg, 0, 100000000);
            break;
        case 'h':
            fputs(usage_head, stdout);
            tm_clock_config_usage(stdout, &cfg.clock);
            fputs(usage_tail, stdout);
            print_limits(stdout);
            fputs(usage_end, stdout);
            return 0;
        default:
            if (optopt) tm_cli_die("option %s needs a value", argv[optind - 1]);
            tm_cli_die("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    char isa_msg[160];
    if (tm_isa_check_env(isa_msg, sizeof isa_msg) != 0) tm_cli_die("%s", isa_msg);
    if (GIVEN(O_LOAD) && GIVEN(O_LOADW)) tm_cli_die("--load and --load-weights exclude each other");
    int gpt = strcmp(model, "gpt") == 0;
    static const struct { int flag; const char *name; } gpt_only[] = {
        {O_LAYERS, "--layers"}, {O_HEADS, "--heads"}, {O_DMODEL, "--d-model"},
        {O_CONTEXT, "--context"}, {O_TEXT, "--text"}, {O_VALFRAC, "--val-fraction"},
        {O_EVALSEQ, "--eval-sequences"}, {O_SAMPLETOK, "--sample-tokens"},
        {O_SEQPAR, "--sequence-parallel"}};
    static const struct { int flag; const char *name; } mlp_only[] = {
        {O_ACT, "--activation"}, {O_NORM, "--normalize"}, {O_DATA, "--data-dir"}};
    for (size_t i = 0; !gpt && i < sizeof gpt_only / sizeof gpt_only[0]; i++)
        if (GIVEN(gpt_only[i].flag)) tm_cli_die("%s goes with --model gpt", gpt_only[i].name);
    for (size_t i = 0; gpt && i < sizeof mlp_only / sizeof mlp_only[0]; i++)
        if (GIVEN(mlp_only[i].flag)) tm_cli_die("%s goes with an MLP --model", mlp_only[i].name);
    if (dataset == NULL) dataset = gpt ? "text" : "fashion-mnist";
    int synthetic = strcmp(dataset, "synthetic") == 0;
    if (gpt && strcmp(dataset, "fashion-mnist") == 0)
        tm_cli_die("--dataset fashion-mnist is for the MLP; the GPT takes text or synthetic");
    if (!gpt && strcmp(dataset, "text") == 0) tm_cli_die("--dataset text is for --model gpt");
    if (GIVEN(O_TEXT) && synthetic) tm_cli_die("--text goes with --dataset text");

    /* The model's recipe for what the command leaves out. */
    if (!GIVEN(O_OPT)) cfg.optimizer = gpt ? TM_OPT_ADAMW : TM_OPT_SGD;
    int adamw = cfg.optimizer == TM_OPT_ADAMW;
    cfg.lr = lr > 0 ? lr : gpt || adamw ? 1e-3 : 0.05;
    cfg.weight_decay = wd >= 0 ? wd : gpt ? 0.1 : adamw ? 1e-4 : 5e-4;
    if (!GIVEN(O_BETA2)) cfg.beta2 = gpt ? 0.99 : 0.999;
    if (!GIVEN(O_WARMUP)) cfg.warmup_steps = gpt ? 100 : 200;
    if (!GIVEN(O_MINLR)) cfg.min_lr = gpt ? cfg.lr / 10 : 0;
    if (!GIVEN(O_CLIP)) cfg.clip_grad = gpt ? 1.0 : 0;
    if (!GIVEN(O_BATCH)) cfg.batch = gpt ? 32 : 128;
    if (!GIVEN(O_MEM)) cfg.mem_cap = (size_t)(gpt ? 512 : 64) << 20;
    if (cfg.momentum >= 1) tm_cli_die("--momentum must be below 1");
    if (cfg.beta1 >= 1 || cfg.beta2 >= 1) tm_cli_die("--beta1 and --beta2 must be below 1");
    if (val_fraction >= 1) tm_cli_die("--val-fraction must be below 1");
    if (cfg.min_lr > cfg.lr) tm_cli_die("--min-lr %g is above --lr %g", cfg.min_lr, cfg.lr);
    if (gc.sequence_parallel && cfg.tp < 2)
        tm_cli_die("--sequence-parallel needs --tp 2 or more (it splits the sequence over the "
                   "tensor-parallel ranks)");
    long mesh = (long)cfg.dp * cfg.pp * cfg.tp;
    if (devices != 0 && devices != mesh)
        tm_cli_die("--devices %ld but dp x pp x tp = %d x %d x %d = %ld", devices, cfg.dp, cfg.pp,
                   cfg.tp, mesh);
    /* Under mpirun the processes run equal blocks of devices; the one that
     * runs the reporting device (replica 0's last stage) prints and writes
     * the metrics. */
    int procs = tm_process_count();
    if (mesh % procs != 0)
        tm_cli_die("%ld devices do not split evenly over %d processes", mesh, procs);
    int reporter = tm_train_reporter(&cfg) / (int)(mesh / procs);
    tm_process_output(reporter);
    if (tm_process_rank() != reporter) metrics_path = NULL;
    if ((mesh / procs) % cfg.tp != 0)
        warn("tensor-parallel groups of %d span processes of %ld devices: their collectives "
             "cross the slowest links", cfg.tp, mesh / procs);

    tm_model net;
    tm_mlp_config mlp;
    if (gpt) {
        if ((why = tm_gpt_check(&gc)) != NULL) tm_cli_die("%s", why);
        if ((long)gc.block_size * samples > (long)INT_MAX)
            tm_cli_die("--samples %ld windows of --context %d are too many bytes", samples,
                       gc.block_size);
    } else {
        if (tm_mlp_parse(model, &mlp, &why) != 0) tm_cli_die("--model \"%s\": %s", model, why);
        if (tm_activation_parse(act, &mlp.act) != 0)
            tm_cli_die("--activation is relu or gelu, not \"%s\"", act);
    }
    check_combination(&cfg, synthetic);
    /* Fail now rather than after training if an output cannot be written. */
    tm_cli_output("--metrics", metrics_path);
    tm_cli_output("--report", report_path);
    tm_cli_output("--save", cfg.save_path);
    tm_cli_output("--trace", cfg.trace_path);
    if ((gpt ? tm_gpt_model(&net, &gc) : tm_mlp_model(&net, &mlp)) != TM_OK) {
        fprintf(stderr, "train: %s\n", tm_error_message());
        return 1;
    }
    net.recompute = recompute;
    cfg.model = &net;
    tm_dataset train = {0}, test = {0};
    text_data td = {0};
    tm_data train_data, test_data;
    int st = TM_OK;
    if (gpt) {
        load_text(&td, text, synthetic, samples, gc.block_size, val_fraction, cfg.seed);
        train_data = td.train_data;
        test_data = td.val_data;
        if (eval_sequences > 0) test_data = tm_data_head(&test_data, (int)eval_sequences);
        const tm_corpus *c = &td.train;
        snprintf(cfg.data_meta[0].key, sizeof cfg.data_meta[0].key, "corpus_files");
        snprintf(cfg.data_meta[0].value, sizeof cfg.data_meta[0].value, "%s", c->files);
        snprintf(cfg.data_meta[1].key, sizeof cfg.data_meta[1].key, "corpus_bytes");
        snprintf(cfg.data_meta[1].value, sizeof cfg.data_meta[1].value, "%zu", c->len);
        snprintf(cfg.data_meta[2].key, sizeof cfg.data_meta[2].key, "corpus_hash");
        snprintf(cfg.data_meta[2].value, sizeof cfg.data_meta[2].value, "%016llx",
                 (unsigned long long)c->hash);
        cfg.n_data_meta = 3;
        /* The GPT's run is as long as --steps asks, unless --epochs says. */
        long per_epoch = train_data.n / cfg.batch;
        if (!GIVEN(O_EPOCHS))
            cfg.epochs = cfg.max_steps > 0 && per_epoch > 0
                             ? (int)((cfg.max_steps + per_epoch - 1) / per_epoch) : 1;
    } else {
        const tm_mlp_config *m = &mlp;
        st = synthetic ? tm_dataset_synthetic(&train, (int)samples, m->widths[0],
                                              m->widths[m->n_layers], cfg.seed, 0)
                       : tm_dataset_load(&train, data_dir, "train");
        if (st == TM_OK)
            st = synthetic ? tm_dataset_synthetic(&test, (int)(samples / 8), m->widths[0],
                                                  m->widths[m->n_layers], cfg.seed, 1)
                           : tm_dataset_load(&test, data_dir, "t10k");
        if (st != TM_OK) {
            tm_dataset_free(&train);
            tm_model_destroy(&net);
            fprintf(stderr, "train: %s\n", tm_error_message());
            return 2;
        }
        tm_data_images(&train_data, &train);
        tm_data_images(&test_data, &test);
    }
    if (tm_train_check(&cfg, &train_data) != TM_OK) tm_cli_die("%s", tm_error_message());
    if (normalize && !synthetic && !gpt) {
        double mean, std;
        tm_dataset_stats(&train, &mean, &std);
        if (tm_dataset_standardize(&train, mean, std) != TM_OK ||
            tm_dataset_standardize(&test, mean, std) != TM_OK) {
            fprintf(stderr, "train: %s\n", tm_error_message());
            return 2;
        }
    }

    tm_outfile *metrics = NULL;
    FILE *mf = NULL;
    if (metrics_path != NULL &&
        (tm_outfile_open(&metrics, metrics_path) != TM_OK ||
         (mf = tm_outfile_stream(metrics)) == NULL)) {
        fprintf(stderr, "train: --metrics: %s\n", tm_error_message());
        tm_outfile_abandon(metrics);
        release(&td, &train, &test, &net);
        return 2;
    }
    tm_outfile *html = NULL;
    if (report_path != NULL && tm_outfile_open(&html, report_path) != TM_OK) {
        fprintf(stderr, "train: --report: %s\n", tm_error_message());
        tm_outfile_abandon(metrics);
        release(&td, &train, &test, &net);
        return 2;
    }
    report rep = {mf, isatty(STDERR_FILENO), cfg.batch, 0, cfg.load_path, net.rows_per_sample,
                  gpt, html ? &history : NULL, GIVEN(O_SEED)};
    cfg.ctx = &rep;
    cfg.on_step = tm_train_on_step;
    cfg.on_epoch = tm_train_on_epoch;
    cfg.on_eval = gpt ? tm_train_on_eval : NULL;
    cfg.on_start = tm_train_on_start;
    cfg.keep_params = gpt && sample_tokens > 0;
    /* "batch 128 (64 per replica) in 4 micro-batches": each part only when
     * it says something. */
    char replica[48] = "", micro[48] = "";
    if (cfg.dp > 1) snprintf(replica, sizeof replica, " (%d per replica)", cfg.batch / cfg.dp);
    if (cfg.micro_batches > 1)
        snprintf(micro, sizeof micro, " in %d micro-batches", cfg.micro_batches);
    /* The same, in a line each, for --report. */
    char model_line[192], data_line[320];
    if (gpt) {
        snprintf(model_line, sizeof model_line,
                 "GPT (layers %d, heads %d, d_model %d, context %d; %.2f M parameters)",
                 gc.n_layer, gc.n_head, gc.n_embd, gc.block_size, 1e-6 * (double)net.n_params);
        snprintf(data_line, sizeof data_line, "%.200s: %d train / %d validation windows",
                 synthetic ? "synthetic text" : text ? text : "the fortunes corpus",
                 train_data.n, test_data.n);
    } else {
        snprintf(model_line, sizeof model_line, "%.120s MLP (%s)", model, act);
        snprintf(data_line, sizeof data_line, "%s: %d train / %d test samples",
                 synthetic ? "synthetic data" : "Fashion-MNIST", train.n, test.n);
    }
    if (gpt) {
        long decay = cfg.lr_decay_steps > 0 ? cfg.lr_decay_steps
                                            : (long)(train_data.n / cfg.batch) * cfg.epochs;
        printf("training gpt (layers %d, heads %d, d_model %d, context %d; %.2f M parameters) on "
               "%s: %d train / %d validation windows of %d bytes, batch %d sequences (%d tokens)"
               "%s%s, %s lr %g, %s schedule to %g over %ld steps, device memory %zu MiB\n",
               gc.n_layer, gc.n_head, gc.n_embd, gc.block_size, 1e-6 * (double)net.n_params,
               synthetic ? "synthetic text" : text ? text : "the fortunes corpus", train_data.n,
               test_data.n, gc.block_size + 1, cfg.batch, cfg.batch * gc.block_size, replica,
               micro, adamw ? "adamw" : "sgd", cfg.lr,
               cfg.lr_schedule == TM_LR_COSINE ? "cosine" : "constant", cfg.min_lr, decay,
               cfg.mem_cap >> 20);
    } else {
        printf("training %s (%s) on %s: %d train / %d test samples, batch %d%s%s, %s lr %g, %s "
               "schedule, device memory %zu MiB\n",
               model, act, synthetic ? "synthetic data" : "Fashion-MNIST", train.n, test.n,
               cfg.batch, replica, micro, adamw ? "adamw" : "sgd", cfg.lr,
               cfg.lr_schedule == TM_LR_COSINE ? "cosine" : "constant", cfg.mem_cap >> 20);
    }
    char chunks[48] = "";
    if (cfg.virtual_stages > 1)
        snprintf(chunks, sizeof chunks, " with %d virtual stages", cfg.virtual_stages);
    if (mesh > 1)
        printf("mesh: %ld devices = dp %d x pp %d x tp %d, %s schedule%s%s\n", mesh, cfg.dp,
               cfg.pp, cfg.tp, tm_schedule_kind_name(cfg.schedule), chunks,
               cfg.zero == 1 ? ", ZeRO-1" : cfg.zero == 2 ? ", ZeRO-2" : cfg.zero == 3 ? ", ZeRO-3"
                                                                                     : "");
    if (recompute != TM_RECOMPUTE_NONE)
        printf("activation recomputation: %s\n", tm_recompute_name(recompute));
    if (cfg.offload != TM_OFFLOAD_NONE)
        printf("optimizer offload: the optimizer state%s in %zu MiB of host memory per device\n",
               cfg.precision == TM_PRECISION_BF16 ? " and the fp32 master weights" : "",
               cfg.host_mem_cap >> 20);
    if (cfg.precision != TM_PRECISION_FP32)
        printf("precision: %s (GEMM kernels: %s)\n", tm_precision_name(cfg.precision),
               tm_gemm_bf16_isa());
    fflush(stdout);
    tm_train_result res;
    char error[2048];
    cfg.stop_request = &stop_signal;
    if (atomic_load(&stop_signal) != 0) {
        fprintf(stderr, "train: interrupted before training; nothing written\n");
        tm_outfile_abandon(metrics);
        tm_outfile_abandon(html);
        release(&td, &train, &test, &net);
        return 128 + atomic_load(&stop_signal);
    }
    st = tm_train(&cfg, &train_data, &test_data, &res, error, sizeof error);
    if (rep.tty) fprintf(stderr, "\r%*s\r", 100, "");
    if (st != TM_OK) {
        /* A diverged run's metrics are kept: every step up to the failing
         * one, whose non-finite values are null. */
        if (st == TM_ENONFINITE && metrics != NULL && tm_outfile_commit(metrics) != TM_OK)
            fprintf(stderr, "train: --metrics: %s\n", tm_error_message());
        else if (st != TM_ENONFINITE)
            tm_outfile_abandon(metrics);
        tm_outfile_abandon(html);
        fprintf(stderr, "train: %s\n", error);
        /* Before the devices ran, a bad input file is bad usage; after, a
         * failure to write an output is the run's failure. */
        int usage = !res.ran && (st == TM_EINVAL || st == TM_EFORMAT || st == TM_EIO);
        tm_train_result_free(&res);
        release(&td, &train, &test, &net);
        return usage ? 2 : 1;
    }
    /* Across processes the signal may have reached another process: all
     * stopped after the same step, and all end as it does. */
    int sig = atomic_load(&stop_signal);
    if (res.stopped && res.stop_request != 0) sig = res.stop_request;
    char where[64] = "";
    if (sig != 0 && tm_process_count() > 1)
        snprintf(where, sizeof where, " (%s in process %d)", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 res.stop_process);
    if (mf != NULL) {
        tm_train_write_summary(mf, &res, sig != 0, &rep);
        if (tm_outfile_commit(metrics) != TM_OK) {
            fprintf(stderr, "train: --metrics: %s\n", tm_error_message());
            tm_outfile_abandon(html);
            tm_train_result_free(&res);
            release(&td, &train, &test, &net);
            return 1;
        }
    }
    if (html != NULL) {
        tm_run_report page = {&cfg, &res, &history, model_line, data_line, gpt,
                              net.rows_per_sample};
        FILE *hf = tm_outfile_stream(html);
        int hs = hf == NULL ? TM_EIO : tm_report_html_run(hf, &page);
        if (hs == TM_OK) hs = tm_outfile_commit(html);
        else tm_outfile_abandon(html);
        if (hs != TM_OK) {
            fprintf(stderr, "train: --report: %s\n", tm_error_message());
            tm_train_result_free(&res);
            release(&td, &train, &test, &net);
            return 1;
        }
    }
    if (sig != 0) {
        if (cfg.save_path != NULL)
            fprintf(stderr, "interrupted at step %ld%s; checkpoint written to %s\n", rep.step,
                    where, cfg.save_path);
        else
            fprintf(stderr, "interrupted at step %ld%s; no checkpoint written (no --save)\n",
                    rep.step, where);
        tm_train_result_free(&res);
        release(&td, &train, &test, &net);
        return 128 + sig;
    }
    double rows = net.rows_per_sample;
    if (gpt)
        printf("val loss %.4f nats/byte (%.4f bits/byte) after %ld steps; %.0f tokens/s; "
               "%.1f GFLOP/s\n", res.test_loss, res.test_loss / M_LN2, res.steps,
               res.samples_per_s * rows, res.gflops);
    else
        printf("test accuracy %.2f%% after %ld steps; %.0f samples/s; %.1f GFLOP/s\n",
               100 * res.test_acc, res.steps, res.samples_per_s, res.gflops);
    tm_report_modeled(stdout, &res, &cfg);
    if (cfg.pp > 1) tm_report_timeline(stdout, &res, &cfg);
    tm_report_memory(stdout, &res, cfg.mem_cap);
    if (GIVEN(O_ZERO)) tm_report_zero(stdout, &res, &cfg);
    if (cfg.offload != TM_OFFLOAD_NONE) tm_report_offload(stdout, &res, &cfg);
    tm_report_traffic(stdout, &res, &cfg, every_link);
    if (!every_link && res.n_links > 8)
        printf("(--links lists each of the %d links)\n", res.n_links);
    if (cfg.trace_path != NULL) {
        long first = cfg.trace_first > 0 ? cfg.trace_first : 1;
        long count = cfg.trace_steps > 0 ? cfg.trace_steps : 1;
        long recorded = res.steps - first + 1 < count ? res.steps - first + 1 : count;
        printf("trace of %ld step(s) in %s time written to %s\n", recorded > 0 ? recorded : 0,
               cfg.trace_wall ? "wall" : "modeled", cfg.trace_path);
    }
    if (html != NULL) printf("report written to %s\n", report_path);
    if (res.params != NULL) {
        fflush(stdout);
        print_sample(&net, res.params, sample_tokens, cfg.seed, cfg.mem_cap);
    }
    tm_train_result_free(&res);
    release(&td, &train, &test, &net);
    return 0;
}
