/* build/train from the outside: bad input is a one-line error with exit
 * status 2, a model that does not fit exits 1 with the OOM report, and no
 * failure leaves a partial output file; a short good run writes its files. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/safetensors.h"
#include "tests/cli.h"

static char metrics[128], ckpt[128], trace[128];

static void paths(void)
{
    cli_setup();
    cli_path(metrics, sizeof metrics, "metrics.jsonl");
    cli_path(ckpt, sizeof ckpt, "ckpt.safetensors");
    cli_path(trace, sizeof trace, "trace.json");
}

static void cleanup(void) { cli_teardown(); }

static int train(const char *args) { return cli_run("train", args); }

Test(train_cli, bad_usage_is_one_line_and_status_2, .init = paths, .fini = cleanup, .timeout = 120)
{
    const char *cases[] = {
        "--frobnicate",
        "--lr -1",
        "--lr nan",
        "--lr inf",
        "--lr 0",
        "--batch 100 --micro-batches 3",
        "--batch 0",
        "--model 784,abc,10",
        "--model 784",
        "--model 784,256,12",
        "--activation tanh",
        "--optimizer rmsprop",
        "--lr-schedule linear",
        "--normalize minmax",
        "--mem-cap 12Q",
        "--momentum 1.5",
        "--epochs -2",
        "--steps",
        "stray-argument",
        "--data-dir /nonexistent-tinymesh-dir",
        "--load /nonexistent-tinymesh-ckpt.safetensors --steps 1",
        "--dp 2 --devices 4",
        "--tp 3",
        "--pp 5",
        "--schedule zigzag",
        "--pp 2 --stages 2,2",
        "--pp 2 --stages 1,1,1",
        "--dp 3",
        "--dp 2 --micro-batches 3",
        "--dp 0",
        "--fail-device 9 --fail-step 2 --dp 2",
        "--dataset imagenet",
        "--dataset synthetic --model 16,32,300",
        "--dataset synthetic --samples 64 --batch 128",
        "--samples 3",
        "--device-gflops 0",
        "--device-gbps -5",
        "--link-gbps nan",
        "--link-latency-us -1",
        "--devices-per-node -2",
        "--inter-node-gbps 0",
        "--inter-node-latency-us inf",
        "--device-gflops 1e-300",
        "--device-gbps 1e300",
        "--link-latency-us 1e9",
        "--trace /nonexistent-tinymesh-dir/trace.json --steps 1",
        "--trace-clock cpu",
        "--trace-from 0",
        "--trace-steps 0",
        "--recompute some",
        "--recompute selective",
        "--precision fp16",
        /* Flags that would do nothing in the combination. */
        "--fail-device 1",
        "--fail-step 2",
        "--samples 100",
        "--dataset synthetic --data-dir /tmp",
        "--dataset synthetic --normalize none",
        "--optimizer adamw --momentum 0.5",
        "--lr-schedule constant --warmup-steps 3",
        "--trace-clock wall",
        "--trace-steps 2",
        /* ZeRO: a stage that does not exist, or nothing to shard over. */
        "--zero 4 --dp 2",
        "--zero x --dp 2",
        "--zero 12 --dp 2",
        "--zero 1",
        "--zero 3 --pp 2",
        /* Optimizer offload: no host memory, too little, nothing to size,
         * a kind that does not exist. */
        "--offload optimizer",
        "--offload optimizer --host-mem-cap 64K --optimizer adamw",
        "--host-mem-cap 64M",
        "--offload none --host-mem-cap 64M",
        "--offload gradients --host-mem-cap 64M",
        "--offload optimizer --host-mem-cap 0",
        /* Virtual stages: out of range, without interleaved-1f1b or a
         * pipeline, m not a multiple of pp, more model stages than layers. */
        "--virtual-stages 0",
        "--virtual-stages 27 --pp 2 --schedule interleaved-1f1b",
        "--virtual-stages 2 --pp 2",
        "--virtual-stages 2 --schedule interleaved-1f1b",
        "--virtual-stages 2 --pp 2 --schedule interleaved-1f1b --micro-batches 3 --batch 96",
        "--virtual-stages 2 --pp 2 --schedule interleaved-1f1b --micro-batches 2",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[1024], first[8192];
        snprintf(args, sizeof args, "%s --metrics %s --save %s", cases[i], metrics, ckpt);
        int st = train(args);
        int lines = cli_lines(cli_err, NULL, first, sizeof first);
        cr_expect_eq(st, 2, "\"%s\": exit %d", cases[i], st);
        cr_expect_eq(lines, 1, "\"%s\": %d lines on stderr", cases[i], lines);
        cr_expect(strncmp(first, "train: ", 7) == 0, "\"%s\": %s", cases[i], first);
        cr_expect(!cli_exists(metrics) && !cli_exists(ckpt), "\"%s\" left a file behind", cases[i]);
    }
}

Test(train_cli, model_that_does_not_fit_exits_1_with_oom_report, .init = paths, .fini = cleanup,
     .timeout = 120)
{
    char args[1024], first[8192];
    snprintf(args, sizeof args, "--mem-cap 1M --metrics %s --save %s", metrics, ckpt);
    int st = train(args);
    cr_expect_eq(st, 1, "exit %d", st);
    cr_expect_geq(cli_lines(cli_err, "out of memory", first, sizeof first), 1);
    cr_expect_geq(cli_lines(cli_err, "by tag", first, sizeof first), 1);
    cr_expect_eq(cli_lines(cli_out, "step ", first, sizeof first), 0, "it trained");
    cr_expect(!cli_exists(metrics) && !cli_exists(ckpt), "a file was left behind");
}

Test(train_cli, injected_failure_exits_1_naming_device_and_step, .init = paths, .fini = cleanup,
     .timeout = 120)
{
    char args[1024], first[8192];
    snprintf(args, sizeof args,
             "--dp 2 --pp 2 --tp 2 --micro-batches 2 --fail-device 5 --fail-step 3 --metrics %s "
             "--save %s", metrics, ckpt);
    int st = train(args);
    cr_expect_eq(st, 1, "exit %d", st);
    cr_expect_eq(cli_lines(cli_err, "device 5", first, sizeof first), 1, "%s", first);
    cr_expect(strstr(first, "step 3") != NULL, "%s", first);
    cr_expect(!cli_exists(metrics) && !cli_exists(ckpt), "a file was left behind");
}

Test(train_cli, mesh_run_reports_every_device, .init = paths, .fini = cleanup, .timeout = 120)
{
    char args[1024], first[8192];
    snprintf(args, sizeof args, "--dp 2 --tp 2 --steps 3 --metrics %s", metrics);
    cr_assert_eq(train(args), 0);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"summary\"", first, sizeof first), 1);
    for (int id = 0; id < 4; id++) {
        char needle[64];
        snprintf(needle, sizeof needle, "{\"id\":%d,\"process\":0,\"dp\":%d,\"pp\":0,\"tp\":%d,", id, id / 2,
                 id % 2);
        cr_expect(strstr(first, needle) != NULL, "no %s in %s", needle, first);
    }
    /* One row each in the modeled-time, memory and traffic tables. */
    cr_expect_eq(cli_lines(cli_out, "(1,0,1)", first, sizeof first), 3, "table rows");
}

Test(train_cli, short_run_writes_metrics_and_checkpoint, .init = paths, .fini = cleanup,
     .timeout = 120)
{
    char args[1024], first[8192];
    snprintf(args, sizeof args, "--steps 5 --metrics %s --save %s", metrics, ckpt);
    int st = train(args);
    cr_assert_eq(st, 0, "exit %d", st);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"step\"", first, sizeof first), 5);
    cr_expect(strstr(first, "\"step\":1,") != NULL, "%s", first);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"summary\"", first, sizeof first), 1);
    cr_expect(strstr(first, "\"steps\":5") != NULL, "%s", first);
    cr_expect(strstr(first, "\"peak_bytes\":{\"param\":") != NULL, "%s", first);
    cr_expect(cli_exists(ckpt));
    cr_expect_geq(cli_lines(cli_out, "test accuracy", first, sizeof first), 1);
    /* Resume from it for two more steps. */
    snprintf(args, sizeof args, "--steps 2 --load %s", ckpt);
    cr_expect_eq(train(args), 0);
}

Test(train_cli, pipeline_run_reports_modeled_time_timeline_and_trace, .init = paths,
     .fini = cleanup, .timeout = 120)
{
    char args[1024], first[8192];
    snprintf(args, sizeof args,
             "--dataset synthetic --samples 1024 --model 64,64,64,64,8 --pp 2 --dp 2 "
             "--micro-batches 4 --epochs 1 --trace %s --metrics %s", trace, metrics);
    cr_assert_eq(train(args), 0);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"epoch\"", first, sizeof first), 1);
    cr_expect(strstr(first, "\"modeled_samples_per_s\":") != NULL, "%s", first);
    cr_expect(strstr(first, "\"bubble\":0.") != NULL, "%s", first);
    cr_expect_eq(cli_lines(metrics, "\"type\":\"summary\"", first, sizeof first), 1);
    cr_expect(strstr(first, "\"bubble\":0.") != NULL, "%s", first);
    cr_expect(strstr(first, "\"idle_s\":") != NULL, "%s", first);
    cr_expect_eq(cli_lines(cli_out, "modeled time:", first, sizeof first), 1, "no modeled line");
    cr_expect_eq(cli_lines(cli_out, "pipeline timeline", first, sizeof first), 1);
    cr_expect_eq(cli_lines(cli_out, "stage 1 |", first, sizeof first), 1, "timeline row");
    cr_expect_eq(cli_lines(cli_out, "% theory", first, sizeof first), 1, "bubble line");
    cr_expect_eq(cli_lines(cli_out, "measured against the formula", first, sizeof first), 1);
    /* Every device names itself in the trace with its mesh coordinates. */
    for (int id = 0; id < 4; id++) {
        char needle[64];
        snprintf(needle, sizeof needle, "\"device %d (dp%d pp%d tp0)\"", id, id / 2, id % 2);
        cr_expect_eq(cli_lines(trace, needle, first, sizeof first), 1, "no %s", needle);
    }
    cr_expect_geq(cli_lines(trace, "\"ph\":\"X\"", first, sizeof first), 8);
}

Test(train_cli, a_recorded_step_past_the_run_is_said_not_faked, .init = paths, .fini = cleanup,
     .timeout = 120)
{
    char args[1024], first[8192];
    snprintf(args, sizeof args, "--dp 2 --steps 3 --trace-from 5 --trace %s", trace);
    cr_assert_eq(train(args), 0);
    const char *notice = "no step recorded: --trace-from 5 is past this run's 3 steps";
    cr_expect_eq(cli_lines(cli_out, notice, first, sizeof first), 1, "no notice");
    cr_expect_eq(cli_lines(cli_out, "measured against the formula", first, sizeof first), 0,
                 "a traffic table for a step that did not run");
    cr_expect_eq(cli_lines(cli_out, "trace of 0 step(s)", first, sizeof first), 1);
    cr_expect_eq(cli_lines(cli_out, "0 -> 1         dp", first, sizeof first), 1, "link table");
}

Test(train_cli, flags_that_do_nothing_here_are_warned_about, .init = paths, .fini = cleanup,
     .timeout = 120)
{
    char args[1024], first[1024];
    const char *tiny = "--dataset synthetic --samples 256 --model 16,16,4 --batch 32";
    snprintf(args, sizeof args, "%s --steps 1 --schedule gpipe --inter-node-gbps 3 --save %s",
             tiny, ckpt);
    cr_assert_eq(train(args), 0);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 2, "%s", first);
    cr_expect_eq(cli_lines(cli_err, "train: warning: --schedule does nothing with --pp 1", first,
                           sizeof first),
                 1);
    cr_expect_eq(cli_lines(cli_err, "train: warning: --inter-node-gbps", first, sizeof first), 1);
    /* Resuming takes the checkpoint's seed, so --seed would do nothing. */
    snprintf(args, sizeof args, "%s --steps 1 --load %s --seed 5", tiny, ckpt);
    cr_assert_eq(train(args), 0);
    cr_expect_eq(cli_lines(cli_err, "train: warning: --seed does nothing when resuming", first,
                           sizeof first),
                 1, "%s", first);
    cr_expect_eq(cli_lines(cli_out, "resumed from ", first, sizeof first), 1);
    cr_expect_eq(cli_lines(cli_out, "loaded weights from ", first, sizeof first), 0, "%s", first);
}

Test(train_cli, the_demo_mesh_prints_what_a_newcomer_reads, .init = paths, .fini = cleanup,
     .timeout = 120)
{
    char first[1024];
    const char *demo = "--dp 2 --pp 2 --tp 2 --micro-batches 4 --steps 3";
    cr_assert_eq(train(demo), 0);
    cr_expect_eq(cli_lines(cli_out, "batch 128 (64 per replica) in 4 micro-batches,", first,
                           sizeof first),
                 1, "%s", first);
    /* 24 links are summed by dimension, with a pointer to the full list. */
    cr_expect_eq(cli_lines(cli_out, " -> ", first, sizeof first), 0, "a link row: %s", first);
    cr_expect_eq(cli_lines(cli_out, "8 links        dp", first, sizeof first), 1);
    cr_expect_eq(cli_lines(cli_out, "(--links lists each of the 24 links)", first, sizeof first),
                 1);
    int lines = cli_lines(cli_out, NULL, first, sizeof first);
    cr_expect_leq(lines, 55, "%d lines", lines);
    char args[256];
    snprintf(args, sizeof args, "%s --links", demo);
    cr_assert_eq(train(args), 0);
    cr_expect_eq(cli_lines(cli_out, " -> ", first, sizeof first), 24);
    cr_expect_eq(cli_lines(cli_out, "--links lists", first, sizeof first), 0);
    /* One replica, one micro-batch: just the batch. */
    cr_assert_eq(train("--dataset synthetic --samples 256 --model 16,16,4 --batch 32 --steps 1"),
                 0);
    cr_expect_eq(cli_lines(cli_out, "batch 32, sgd", first, sizeof first), 1, "%s", first);
}

Test(train_cli, load_says_what_it_brought_back, .init = paths, .fini = cleanup, .timeout = 120)
{
    /* A file with weights only, as PyTorch would write for 16,16,4. */
    static float w0[16 * 16], b0[16], w1[4 * 16], b1[4];
    const tm_st_tensor t[] = {
        {"layers.0.weight", TM_ST_F32, 2, (uint64_t[]){16, 16}, w0},
        {"layers.0.bias", TM_ST_F32, 1, (uint64_t[]){16}, b0},
        {"layers.1.weight", TM_ST_F32, 2, (uint64_t[]){4, 16}, w1},
        {"layers.1.bias", TM_ST_F32, 1, (uint64_t[]){4}, b1},
    };
    cr_assert_eq(tm_safetensors_write(ckpt, t, 4, NULL, 0), TM_OK, "%s", tm_error_message());
    char args[1024], first[1024], want[512];
    snprintf(args, sizeof args,
             "--dataset synthetic --samples 256 --model 16,16,4 --batch 32 --steps 1 --load %s",
             ckpt);
    cr_assert_eq(train(args), 0);
    snprintf(want, sizeof want,
             "loaded weights from %s (no optimizer state or position in it): starting at step 0 "
             "with a fresh optimizer\n",
             ckpt);
    cr_expect_eq(cli_lines(cli_out, "loaded weights from", first, sizeof first), 1);
    cr_expect_str_eq(first, want);
    cr_expect_eq(cli_lines(cli_out, "resumed from", first, sizeof first), 0);
}
