/* build/generate: continues a prompt with a trained GPT from a checkpoint
 * (ours, or nanoGPT's names with --heads), sampling with a key/value cache
 * on an emulated device. The prompt and its continuation go to stdout,
 * escaped where they are not printable UTF-8; statistics go to stderr. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/cli.h"
#include "runtime/status.h"
#include "strategies/checkpoint.h"
#include "strategies/generate.h"
#include "strategies/gpt.h"

static const char usage[] =
    "usage: generate --load FILE [options]\n"
    "Continues a prompt with a GPT checkpoint (build/train --model gpt --save, or a\n"
    "nanoGPT state_dict in safetensors with --heads), one byte at a time with a\n"
    "key/value cache; past the context the window slides.\n"
    "  --load FILE         the checkpoint\n"
    "  --prompt TEXT       the text to continue, at least one byte (a newline)\n"
    "  --tokens N          bytes to generate (200)\n"
    "  --temperature X     0 is greedy: always the most likely byte (0.8)\n"
    "  --top-k K           sample among the K most likely bytes; 0 is all 256 (0)\n"
    "  --seed S            the sampling stream: the same seed, the same text (1)\n"
    "  --heads H           the head count, for a checkpoint without our metadata\n"
    "  --tp N              tensor-parallel devices: each holds its heads' share of\n"
    "                      every block and of the key/value cache (1)\n"
    "  --pp N              pipeline stages, of blocks; one byte at a time flows\n"
    "                      through them (1)\n"
    "  --mem-cap SIZE      memory of each device (512M)\n"
    "  -h, --help          this text\n"
    "stdout: the prompt and its continuation, nothing else; control bytes and bytes\n"
    "that are not valid UTF-8 are written as \\xNN; every mesh prints the same text.\n"
    "stderr: bytes, bytes/s in wall time and in the devices' modeled time.\n"
    "Exit status: 0 success, 1 generation failed (out of device memory), 2 bad\n"
    "usage or an unreadable checkpoint.\n";

static void emit(void *ctx, uint8_t b) { tm_escaper_put(ctx, b, stdout); }

int main(int argc, char **argv)
{
    tm_cli_program("generate");
    const char *load = NULL, *prompt = "\n";
    long tokens = 200, top_k = 0, heads = 0, tp = 1, pp = 1;
    double temperature = 0.8;
    uint64_t seed = 1;
    size_t cap = (size_t)512 << 20;
    enum { O_LOAD = 256, O_PROMPT, O_TOKENS, O_TEMP, O_TOPK, O_SEED, O_HEADS, O_MEM, O_TP, O_PP };
    static const struct option opts[] = {
        {"load", 1, 0, O_LOAD},   {"prompt", 1, 0, O_PROMPT}, {"tokens", 1, 0, O_TOKENS},
        {"temperature", 1, 0, O_TEMP}, {"top-k", 1, 0, O_TOPK}, {"seed", 1, 0, O_SEED},
        {"heads", 1, 0, O_HEADS}, {"mem-cap", 1, 0, O_MEM}, {"tp", 1, 0, O_TP},
        {"pp", 1, 0, O_PP},       {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case O_LOAD: load = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_TOKENS: tokens = tm_cli_long("--tokens", optarg, 0, 100000000); break;
        case O_TEMP: {
            char *end;
            errno = 0;
            temperature = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || errno != 0 || !isfinite(temperature) ||
                temperature < 0)
                tm_cli_die("--temperature wants a finite number >= 0, not \"%s\"", optarg);
            break;
        }
        case O_TOPK: top_k = tm_cli_long("--top-k", optarg, 0, 256); break;
        case O_SEED: seed = (uint64_t)tm_cli_long("--seed", optarg, 0, __LONG_MAX__); break;
        case O_HEADS: heads = tm_cli_long("--heads", optarg, 1, TM_GPT_MAX_WIDTH); break;
        case O_TP: tp = tm_cli_long("--tp", optarg, 1, TM_MAX_DEVICES); break;
        case O_PP: pp = tm_cli_long("--pp", optarg, 1, TM_MAX_DEVICES); break;
        case O_MEM:
            if (tm_parse_size(optarg, &cap) != 0 || cap == 0)
                tm_cli_die("--mem-cap wants a size like 64M or 1G, not \"%s\"", optarg);
            break;
        case 'h': fputs(usage, stdout); return 0;
        default:
            if (optopt) tm_cli_die("option %s needs a value", argv[optind - 1]);
            tm_cli_die("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) tm_cli_die("unexpected argument \"%s\"", argv[optind]);
    if (load == NULL) tm_cli_die("--load FILE is required");
    if (prompt[0] == '\0') tm_cli_die("--prompt needs at least one byte");

    tm_gpt_config g;
    tm_model m;
    if (tm_gpt_config_from_file(load, (int)heads, &g) != TM_OK || tm_gpt_model(&m, &g) != TM_OK) {
        fprintf(stderr, "generate: %s\n", tm_error_message());
        return 2;
    }
    tm_model_state state;
    tm_optim_config none = {.kind = TM_OPT_SGD};
    int resumed, st = tm_model_state_init(&state, &m, &none);
    if (st == TM_OK) st = tm_checkpoint_load(load, &state, TM_LOAD_WEIGHTS, &resumed);
    if (st != TM_OK) {
        fprintf(stderr, "generate: %s\n", tm_error_message());
        tm_model_state_free(&state);
        tm_model_destroy(&m);
        return st == TM_EHOSTMEM ? 1 : 2;
    }
    tm_escaper esc = {{0}, 0, 0};
    tm_generate_config gc = {.model = &m, .params = state.params,
                             .prompt = (const uint8_t *)prompt, .prompt_len = strlen(prompt),
                             .tokens = (int)tokens, .temperature = temperature,
                             .top_k = (int)top_k, .seed = seed, .mem_cap = cap, .tp = (int)tp,
                             .pp = (int)pp, .emit = emit, .ctx = &esc};
    if (tm_generate_check(&gc) != TM_OK) {
        fprintf(stderr, "generate: %s\n", tm_error_message());
        tm_model_state_free(&state);
        tm_model_destroy(&m);
        return 2;
    }
    for (const char *p = prompt; *p; p++) tm_escaper_put(&esc, (uint8_t)*p, stdout);
    tm_generate_stats stats;
    char error[2048];
    st = tm_generate(&gc, &stats, error, sizeof error);
    tm_escaper_flush(&esc, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    tm_model_state_free(&state);
    tm_model_destroy(&m);
    if (st != TM_OK) {
        fprintf(stderr, "generate: %s\n", error);
        return st == TM_EINVAL ? 2 : 1;
    }
    fprintf(stderr, "generate: %d bytes in %.3f s, %.0f bytes/s (modeled %.0f bytes/s)\n",
            stats.tokens, stats.seconds, stats.seconds > 0 ? stats.tokens / stats.seconds : 0,
            stats.modeled_s > 0 ? stats.tokens / stats.modeled_s : 0);
    return 0;
}
