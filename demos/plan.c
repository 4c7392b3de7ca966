/* build/plan: picks the mesh and the memory remedies for a model on N
 * capped devices (strategies/planner.h): every configuration's peak memory
 * predicted from the model's tables, the modeled step time of each that
 * fits from a dry run, the top K by modeled throughput as a table or CSV;
 * --verify runs them for real and puts the measurements beside the
 * predictions. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/arena.h"
#include "runtime/cli.h"
#include "runtime/clock.h"
#include "runtime/status.h"
#include "strategies/data.h"
#include "strategies/gpt.h"
#include "strategies/idx.h"
#include "strategies/mlp.h"
#include "strategies/planner.h"
#include "strategies/recipe.h"
#include "strategies/trainer.h"

static const char usage_head[] =
    "usage: plan --devices N --mem-cap SIZE [options]\n"
    "Searches every way to train a model on N emulated devices of SIZE memory each:\n"
    "dp x tp x pp, micro-batches, pipeline schedule, sequence parallelism,\n"
    "recomputation, ZeRO stage, precision and optimizer offload. Each candidate's\n"
    "peak bytes per device are predicted from the model's tables; each one that fits\n"
    "runs two steps dry (every kernel charges the modeled clock, none computes),\n"
    "which gives its modeled step time exactly. Prints the top K by modeled\n"
    "throughput, as build/train flags with their predicted peak, step time,\n"
    "throughput, bubble and bytes per step by mesh dimension.\n"
    "\n"
    "options:\n"
    "  --devices N           emulated devices (required)\n"
    "  --mem-cap SIZE        memory of each device, e.g. 64M, 1G (required)\n"
    "  --model M             gpt, or the MLP's layer widths, inputs first, classes\n"
    "                        last (784,256,128,10)\n"
    "  --activation A        MLP: relu | gelu (relu)\n"
    "  --layers L            GPT: transformer blocks (4)\n"
    "  --heads H             GPT: attention heads per block (4)\n"
    "  --d-model C           GPT: channels, a multiple of --heads (128)\n"
    "  --context T           GPT: positions per sequence (128)\n"
    "  --batch B             samples (GPT: sequences) per optimizer step (128 / 32)\n"
    "  --host-mem-cap SIZE   host memory of each device: also search optimizer\n"
    "                        offload (not searched without it)\n"
    "  --precision P         fp32 | bf16 | any: the precisions searched (fp32)\n"
    "  --top K               rows of the table (10)\n"
    "  --verify              train each of the top K for real and print the\n"
    "                        measured step time and peak beside the predicted\n"
    "  --steps S             optimizer steps of each --verify run, at least 2 (3)\n"
    "  --csv                 the table for machines on stdout, one row per\n"
    "                        candidate, fitting or not (progress on stderr)\n"
    "modeled time (as build/train):\n";

static const char usage_tail[] =
    "  -h, --help            this text\n"
    "The optimizer is build/train's recipe for the model (MLP: SGD with momentum;\n"
    "GPT: AdamW, clipping at 1.0). Exit status: 0 with a pick; 1 when nothing\n"
    "fits (the line names the smallest cap that would) or the devices allow no\n"
    "valid split (the line names the nearest device counts that do); 2 on bad\n"
    "usage.\n";

static void usage(FILE *f)
{
    fputs(usage_head, f);
    tm_clock_config defaults;
    tm_clock_config_default(&defaults);
    tm_clock_config_usage(f, &defaults);
    fputs(usage_tail, f);
}

static double seconds(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int quiet_progress;

static void progress(void *ctx, int done, int total)
{
    (void)ctx;
    if (!quiet_progress && (done == total || done % 50 == 0))
        fprintf(stderr, "plan: %d of %d dry runs\n", done, total);
}

/* What --verify measured of one candidate. */
typedef struct {
    double step_s;
    size_t peak;
    int ok;
} measured;

static void on_step(void *ctx, const tm_step_info *info)
{
    measured *m = ctx;
    if (info->step == TM_PLAN_STEP) m->step_s = info->modeled_step_s;
}

/* Trains k for `steps` steps on req's data: the modeled time of step
 * TM_PLAN_STEP and the fullest device's arena peak. */
static void verify(const tm_plan_request *req, const tm_plan_candidate *k, long steps,
                   const tm_data *test, measured *m)
{
    tm_train_config cfg = tm_plan_config(req, &k->pt);
    cfg.max_steps = steps;
    cfg.ctx = m;
    cfg.on_step = on_step;
    tm_train_result r;
    char err[2048];
    memset(m, 0, sizeof *m);
    if (tm_train(&cfg, req->train, test, &r, err, sizeof err) != TM_OK) {
        fprintf(stderr, "plan: --verify: %s\n", err);
        tm_train_result_free(&r);
        return;
    }
    for (int i = 0; i < r.n_devices; i++)
        if (r.devices[i].memory.peak > m->peak) m->peak = r.devices[i].memory.peak;
    m->ok = 1;
    tm_train_result_free(&r);
}

static double mib(double bytes) { return bytes / (1 << 20); }

static void print_table(const tm_plan_request *req, const tm_plan_candidate *list, int n_rows,
                        const measured *meas, double per_sample, int gpt)
{
    printf("%-4s %-72s %9s %10s %12s %6s %9s %9s %9s %9s", "rank", "configuration (build/train flags)",
           "peak MiB", "step ms", gpt ? "tokens/s" : "samples/s", "bubble", "dp MB", "tp MB",
           "pp MB", "host MB");
    if (meas != NULL) printf(" %10s %9s %8s %8s", "meas. ms", "meas. MiB", "d step", "d peak");
    printf("\n");
    for (int i = 0; i < n_rows; i++) {
        const tm_plan_candidate *k = &list[i];
        char flags[256], bubble[16] = "-";
        tm_plan_flags(&k->pt, flags, sizeof flags);
        if (k->bubble >= 0) snprintf(bubble, sizeof bubble, "%.3f", k->bubble);
        printf("%-4d %-72s %9.2f %10.4f %12.0f %6s %9.3f %9.3f %9.3f %9.3f", i + 1, flags,
               mib((double)k->dry_peak), 1e3 * k->step_s, req->batch * per_sample / k->step_s, bubble,
               1e-6 * k->sent[TM_DIM_DP], 1e-6 * k->sent[TM_DIM_TP], 1e-6 * k->sent[TM_DIM_PP],
               1e-6 * k->host_bytes);
        if (meas != NULL && meas[i].ok)
            printf(" %10.4f %9.2f %7.3f%% %7.3f%%", 1e3 * meas[i].step_s, mib((double)meas[i].peak),
                   100 * (meas[i].step_s / k->step_s - 1),
                   100 * ((double)meas[i].peak / (double)k->dry_peak - 1));
        else if (meas != NULL)
            printf(" %10s %9s %8s %8s", "failed", "-", "-", "-");
        printf("\n");
    }
}

static void print_csv(const tm_plan_candidate *list, int n, const measured *meas, int n_meas,
                      int batch, double per_sample)
{
    printf("config,fits,predicted_step_s,predicted_peak_bytes,measured_step_s,measured_peak_bytes,"
           "predicted_host_peak_bytes,throughput_per_s,bubble,dp_bytes,tp_bytes,pp_bytes,"
           "host_bytes,dominated\n");
    for (int i = 0; i < n; i++) {
        const tm_plan_candidate *k = &list[i];
        char flags[256];
        tm_plan_flags(&k->pt, flags, sizeof flags);
        printf("%s,%d,", flags, k->fits);
        if (k->fits && !k->dominated) printf("%.9g", k->step_s);
        printf(",%zu,", k->dry_peak > 0 ? k->dry_peak : k->peak);
        if (i < n_meas && meas[i].ok) printf("%.9g,%zu", meas[i].step_s, meas[i].peak);
        else printf(",");
        printf(",%zu,", k->host_peak);
        if (k->fits && !k->dominated) {
            printf("%.6g,", batch * per_sample / k->step_s);
            if (k->bubble >= 0) printf("%.4g", k->bubble);
            printf(",%.0f,%.0f,%.0f,%.0f", k->sent[TM_DIM_DP], k->sent[TM_DIM_TP],
                   k->sent[TM_DIM_PP], k->host_bytes);
        } else {
            printf(",,,,,");
        }
        printf(",%d\n", k->dominated);
    }
}

enum {
    O_DEVICES = 256, O_MEM, O_MODEL, O_ACT, O_LAYERS, O_HEADS, O_DMODEL, O_CONTEXT, O_BATCH,
    O_HOSTMEM, O_PRECISION, O_TOP, O_VERIFY, O_STEPS, O_CSV, O_CLOCK
};

int main(int argc, char **argv)
{
    tm_cli_program("plan");
    long devices = 0, top = 10, steps = 3;
    size_t mem_cap = 0, host_mem_cap = 0;
    const char *model = "784,256,128,10", *act = "relu";
    tm_gpt_config gc = {4, 4, 128, 128, 0};
    int batch = 0, verify_top = 0, csv = 0, precisions = 1 << TM_PRECISION_FP32, given_steps = 0;
    tm_train_config recipe = {0};
    tm_clock_config_default(&recipe.clock);
    static const struct option opts[] = {
        {"devices", 1, 0, O_DEVICES},      {"mem-cap", 1, 0, O_MEM},
        {"model", 1, 0, O_MODEL},          {"activation", 1, 0, O_ACT},
        {"layers", 1, 0, O_LAYERS},        {"heads", 1, 0, O_HEADS},
        {"d-model", 1, 0, O_DMODEL},       {"context", 1, 0, O_CONTEXT},
        {"batch", 1, 0, O_BATCH},          {"host-mem-cap", 1, 0, O_HOSTMEM},
        {"precision", 1, 0, O_PRECISION},  {"top", 1, 0, O_TOP},
        {"verify", 0, 0, O_VERIFY},        {"steps", 1, 0, O_STEPS},
        {"csv", 0, 0, O_CSV},              {"device-gflops", 1, 0, O_CLOCK},
        {"device-gbps", 1, 0, O_CLOCK},    {"link-gbps", 1, 0, O_CLOCK},
        {"link-latency-us", 1, 0, O_CLOCK}, {"devices-per-node", 1, 0, O_CLOCK},
        {"inter-node-gbps", 1, 0, O_CLOCK}, {"inter-node-latency-us", 1, 0, O_CLOCK},
        {"help", 0, 0, 'h'},               {0, 0, 0, 0}};
    opterr = 0;
    for (int c, idx = 0; (c = getopt_long(argc, argv, "h", opts, &idx)) != -1;) {
        switch (c) {
        case O_DEVICES: devices = tm_cli_long("--devices", optarg, 1, 4096); break;
        case O_MEM: mem_cap = tm_cli_size("--mem-cap", optarg); break;
        case O_MODEL: model = optarg; break;
        case O_ACT: act = optarg; break;
        case O_LAYERS: gc.n_layer = (int)tm_cli_long("--layers", optarg, 1, 1024); break;
        case O_HEADS: gc.n_head = (int)tm_cli_long("--heads", optarg, 1, 1024); break;
        case O_DMODEL: gc.n_embd = (int)tm_cli_long("--d-model", optarg, 1, 65536); break;
        case O_CONTEXT: gc.block_size = (int)tm_cli_long("--context", optarg, 1, 65536); break;
        case O_BATCH: batch = (int)tm_cli_long("--batch", optarg, 1, 1 << 20); break;
        case O_HOSTMEM: host_mem_cap = tm_cli_size("--host-mem-cap", optarg); break;
        case O_PRECISION: {
            tm_precision p;
            if (strcmp(optarg, "any") == 0) precisions = 1 << TM_PRECISION_FP32 | 1 << TM_PRECISION_BF16;
            else if (tm_precision_parse(optarg, &p) == 0) precisions = 1 << p;
            else tm_cli_die("--precision is fp32, bf16 or any, not \"%s\"", optarg);
            break;
        }
        case O_TOP: top = tm_cli_long("--top", optarg, 1, INT_MAX); break;
        case O_VERIFY: verify_top = 1; break;
        case O_STEPS:
            steps = tm_cli_long("--steps", optarg, TM_PLAN_STEP, 1000);
            given_steps = 1;
            break;
        case O_CSV: csv = 1; break;
        case O_CLOCK:
            if (tm_clock_config_flag(&recipe.clock, opts[idx].name, optarg) < 0)
                tm_cli_die("%s", tm_error_message());
            break;
        case 'h': usage(stdout); return 0;
        default:
            if (optopt != 0 && optopt < 256) tm_cli_die("unknown option -%c", optopt);
            tm_cli_die("unknown or incomplete option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    if (devices == 0) tm_cli_die("--devices is required");
    if (mem_cap == 0) tm_cli_die("--mem-cap is required");
    if (given_steps && !verify_top) tm_cli_die("--steps is --verify's");
    int gpt = strcmp(model, "gpt") == 0;
    const char *why;
    tm_mlp_config mlp;
    if (gpt) {
        if ((why = tm_gpt_check(&gc)) != NULL) tm_cli_die("%s", why);
    } else {
        if (tm_mlp_parse(model, &mlp, &why) != 0) tm_cli_die("--model \"%s\": %s", model, why);
        if (tm_activation_parse(act, &mlp.act) != 0)
            tm_cli_die("--activation is relu or gelu, not \"%s\"", act);
    }
    /* build/train's recipe for the model, the clock as given. */
    tm_train_recipe(&recipe, gpt);
    if (batch == 0) batch = gpt ? 32 : 128;

    /* The models: with and without sequence parallelism, each
     * recomputation. */
    tm_model base[2];
    tm_model variants[2][3];
    tm_plan_request req = {0};
    int n_base = 0;
    for (int sp = 0; sp < (gpt ? 2 : 1); sp++, n_base++) {
        gc.sequence_parallel = sp;
        if ((gpt ? tm_gpt_model(&base[sp], &gc) : tm_mlp_model(&base[sp], &mlp)) != TM_OK) {
            fprintf(stderr, "plan: %s\n", tm_error_message());
            return 2;
        }
    }
    tm_plan_models(&req, variants, &base[0], gpt ? &base[1] : NULL);
    /* Synthetic data of the model's shape: modeled times and memory do not
     * depend on the values. Enough batches for the verification's steps. */
    long n_samples = (long)batch * (verify_top ? steps : TM_PLAN_STEP) + 1;
    tm_corpus corpus = {0};
    tm_dataset images = {0}, test_images = {0};
    tm_data train, test;
    int st;
    if (gpt) {
        size_t len = (size_t)(n_samples + 1) * (size_t)gc.block_size + 1;
        st = tm_corpus_synthetic(&corpus, len, 1, 0);
        if (st == TM_OK) st = tm_data_text(&train, corpus.bytes, len, gc.block_size, "train");
        test = tm_data_head(&train, batch);
    } else {
        st = tm_dataset_synthetic(&images, (int)n_samples, mlp.widths[0],
                                  mlp.widths[mlp.n_layers], 1, 0);
        if (st == TM_OK)
            st = tm_dataset_synthetic(&test_images, batch, mlp.widths[0],
                                      mlp.widths[mlp.n_layers], 1, 1);
        if (st == TM_OK) {
            tm_data_images(&train, &images);
            tm_data_images(&test, &test_images);
        }
    }
    if (st != TM_OK) {
        fprintf(stderr, "plan: %s\n", tm_error_message());
        return 2;
    }
    req.train = &train;
    req.devices = (int)devices;
    req.batch = batch;
    req.mem_cap = mem_cap;
    req.host_mem_cap = host_mem_cap;
    req.precisions = precisions;
    req.recipe = &recipe;
    req.progress = progress;
    double t0 = seconds(CLOCK_MONOTONIC), cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
    tm_plan_candidate *list = NULL;
    int n = 0, status = 0;
    st = tm_plan_search(&req, &list, &n);
    double search_s = seconds(CLOCK_MONOTONIC) - t0;
    double search_cpu_s = seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
    double per_sample = gpt ? gc.block_size : 1;
    measured *meas = NULL;
    int n_meas = 0;
    if (st != TM_OK) {
        fprintf(stderr, "plan: %s\n", tm_error_message());
        status = 1;
    } else if (n == 0) {
        /* The device counts around N that have one. */
        int below = (int)devices - 1, above = (int)devices + 1;
        while (below >= 1 && !tm_plan_any_valid(&req, below)) below--;
        while (above <= 4096 && !tm_plan_any_valid(&req, above)) above++;
        if (below >= 1 && above <= 4096)
            fprintf(stderr, "plan: no valid configuration on %ld devices (batch %d); the "
                    "nearest device counts with one are %d and %d\n", devices, batch, below,
                    above);
        else if (below >= 1 || above <= 4096)
            fprintf(stderr, "plan: no valid configuration on %ld devices (batch %d); the "
                    "nearest device count with one is %d\n", devices, batch,
                    below >= 1 ? below : above);
        else
            fprintf(stderr, "plan: the model has no valid configuration on 1 to 4096 devices "
                    "(batch %d)\n", batch);
        status = 1;
    } else if (!list[0].fits) {
        /* The non-fitting come sorted by the cap they need; that cap is
         * searched again until something fits it (a dry run may show that
         * the collectives' small copies need more). */
        size_t least = list[0].need;
        quiet_progress = 1;
        for (int tries = 0; tries < 4; tries++) {
            tm_plan_candidate *again = NULL;
            int m = 0;
            req.mem_cap = least;
            if (tm_plan_search(&req, &again, &m) != TM_OK || m == 0) {
                free(again);
                break;
            }
            int found = again[0].fits;
            if (!found) least = again[0].need;
            free(again);
            if (found) break;
        }
        fprintf(stderr, "plan: nothing fits %.2f MiB per device among %d configurations; the "
                "smallest cap that fits one is %.2f MiB (--mem-cap %zu)\n", mib((double)mem_cap),
                n, mib((double)least), least);
        status = 1;
    } else {
        int timed = 0, fitting = 0;
        while (timed < n && list[timed].fits && !list[timed].dominated) timed++;
        while (fitting < n && list[fitting].fits) fitting++;
        int rows = (int)(top < timed ? top : timed);
        fprintf(stderr, "plan: %d configurations, %d fit %.2f MiB, %d of them dry-run (the "
                "rest dominated); searched in %.2f s (%.2f s of CPU)\n", n, fitting,
                mib((double)mem_cap), timed, search_s, search_cpu_s);
        if (verify_top) {
            meas = calloc((size_t)rows, sizeof *meas);
            if (meas == NULL) {
                fprintf(stderr, "plan: cannot allocate the measurements\n");
                status = 1;
            }
            for (int i = 0; meas != NULL && i < rows; i++) {
                fprintf(stderr, "plan: verifying %d of %d\n", i + 1, rows);
                verify(&req, &list[i], steps, &test, &meas[i]);
                n_meas = i + 1;
                if (!meas[i].ok) status = 1;
            }
        }
        if (csv) {
            print_csv(list, n, meas, n_meas, batch, per_sample);
        } else {
            if (gpt)
                printf("gpt (layers %d, heads %d, d_model %d, context %d), batch %d, %ld devices "
                       "of %.0f MiB: %d configurations, %d fit; the top %d by modeled "
                       "throughput\n", gc.n_layer, gc.n_head, gc.n_embd, gc.block_size, batch,
                       devices, mib((double)mem_cap), n, fitting, rows);
            else
                printf("mlp %s (%s), batch %d, %ld devices of %.0f MiB: %d configurations, %d "
                       "fit; the top %d by modeled throughput\n", model, act, batch, devices,
                       mib((double)mem_cap), n, fitting, rows);
            print_table(&req, list, rows, meas, per_sample, gpt);
        }
    }
    free(meas);
    free(list);
    for (int i = 0; i < n_base; i++) tm_model_destroy(&base[i]);
    tm_corpus_free(&corpus);
    tm_dataset_free(&images);
    tm_dataset_free(&test_images);
    return status;
}
