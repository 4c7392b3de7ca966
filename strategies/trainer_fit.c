/* The up-front check that the model fits the devices, and the memory
 * worked out before a run (strategies/trainer_internal.h). */
#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/status.h"
#include "strategies/pipeline.h"
#include "strategies/trainer_internal.h"
#include "strategies/zero.h"

/* What tm_stage_create (or ZeRO) allocates for model stage p's rank t, in
 * its order: the shard's parameters, their gradients, each optimizer state
 * buffer, then bf16's copy of the parameters, in bytes, split into the
 * device's blocks (*n_dev) and the host arena's (*n_host; offload). TM_OK or
 * tm_stage_plan's error. */
static int chunk_blocks(const tm_train_config *cfg, const int *first, int p, int t,
                        size_t *dev_bytes, tm_tag *dev_tags, int *n_dev, size_t *host_bytes,
                        int *n_host)
{
    tm_optim_config opt = {cfg->optimizer, cfg->momentum, cfg->weight_decay, cfg->beta1,
                           cfg->beta2, 1e-8};
    int n_state = tm_optimizer_state_count(&opt);
    tm_tag tags[5] = {TM_TAG_PARAM, TM_TAG_GRAD, TM_TAG_OPTIMIZER, TM_TAG_OPTIMIZER,
                      TM_TAG_BF16};
    tm_layer_plan plan[TM_MAX_LAYERS];
    size_t n;
    TM_CHECK(tm_stage_plan(cfg->model, first[p], first[p + 1], cfg->tp, t, plan, &n));
    /* ZeRO keeps 1/dp chunks of the optimizer state (stage 1), the
     * gradients (2) and the parameters (3) instead. */
    size_t shard = cfg->zero > 0 ? tm_zero_shard_floats(plan, first[p + 1] - first[p], cfg->dp)
                                 : n;
    int n_blocks = 2 + n_state, bf16 = cfg->precision == TM_PRECISION_BF16;
    int masters = tm_offload_on_host(cfg->offload, bf16, TM_TAG_PARAM);
    /* Host masters are the replica's chunks under every ZeRO stage. */
    size_t bytes[5] = {cfg->zero >= 3 || (masters && cfg->zero > 0) ? shard : n,
                       cfg->zero >= 2 ? shard : n, cfg->zero >= 1 ? shard : n,
                       cfg->zero >= 1 ? shard : n};
    for (int i = 0; i < 4; i++) bytes[i] *= sizeof(float);
    /* bf16 adds the copy of the parameters the stage holds whole (ZeRO-3
     * holds none: its gathered layers are rounded as the GEMM packs them;
     * with the fp32 masters on the host, it keeps their shard's). */
    if (bf16 && (cfg->zero < 3 || masters)) {
        bytes[n_blocks] = (cfg->zero < 3 ? n : shard) * sizeof(tm_bf16);
        tags[n_blocks++] = TM_TAG_BF16;
    }
    *n_dev = *n_host = 0;
    for (int i = 0; i < n_blocks; i++) {
        if (tm_offload_on_host(cfg->offload, bf16, tags[i])) {
            host_bytes[(*n_host)++] = bytes[i];
        } else {
            dev_bytes[*n_dev] = bytes[i];
            dev_tags[(*n_dev)++] = tags[i];
        }
    }
    return TM_OK;
}

#define MAX_BLOCKS (5 * TM_SCHEDULE_MAX_VIRTUAL)

/* The same for device (p, t): every chunk's device blocks in turn, and the
 * host arena's, one per optimizer state buffer holding every chunk's part
 * (offload's one arena). */
static int state_blocks(const tm_train_config *cfg, const int *first, int p, int t,
                        size_t *dev_bytes, tm_tag *dev_tags, int *n_dev, size_t *host_bytes,
                        int *n_host)
{
    *n_dev = *n_host = 0;
    for (int c = 0; c < tm__train_chunks(cfg); c++) {
        size_t host[5];
        int nd, nh;
        TM_CHECK(chunk_blocks(cfg, first, c * cfg->pp + p, t, dev_bytes + *n_dev,
                              dev_tags + *n_dev, &nd, host, &nh));
        *n_dev += nd;
        for (int i = 0; i < nh; i++) host_bytes[i] = (c == 0 ? 0 : host_bytes[i]) + host[i];
        *n_host = nh;
    }
    return TM_OK;
}

int tm__train_fits(const tm_train_config *cfg, const int *first)
{
    for (int p = 0; p < cfg->pp; p++)
        for (int t = 0; t < cfg->tp; t++) {
            size_t dev[MAX_BLOCKS], host[MAX_BLOCKS];
            tm_tag tags[MAX_BLOCKS];
            int n_dev, n_host;
            TM_CHECK(state_blocks(cfg, first, p, t, dev, tags, &n_dev, host, &n_host));
            TM_CHECK(tm_arena_fits(cfg->mem_cap, p * cfg->tp + t, dev, tags, n_dev));
        }
    return TM_OK;
}

int tm__train_host_fits(const tm_train_config *cfg, const int *first)
{
    if (cfg->offload == TM_OFFLOAD_NONE) return TM_OK;
    for (int p = 0; p < cfg->pp; p++)
        for (int t = 0; t < cfg->tp; t++) {
            size_t dev[MAX_BLOCKS], host[MAX_BLOCKS], need = 0;
            tm_tag tags[MAX_BLOCKS], host_tags[5] = {TM_TAG_HOST, TM_TAG_HOST, TM_TAG_HOST,
                                                     TM_TAG_HOST, TM_TAG_HOST};
            int n_dev, n_host;
            TM_CHECK(state_blocks(cfg, first, p, t, dev, tags, &n_dev, host, &n_host));
            if (tm_arena_fits(cfg->host_mem_cap, p * cfg->tp + t, host, host_tags, n_host) ==
                TM_OK)
                continue;
            for (int i = 0; i < n_host; i++) need += tm_arena_block_bytes(host[i]);
            return tm_error(TM_EINVAL, "--host-mem-cap %.2f MiB is too small: device %d keeps "
                            "%.2f MiB of optimizer state%s in host memory",
                            (double)cfg->host_mem_cap / (1 << 20), p * cfg->tp + t,
                            (double)need / (1 << 20),
                            tm_offload_on_host(cfg->offload,
                                               cfg->precision == TM_PRECISION_BF16, TM_TAG_PARAM)
                                ? " and fp32 master weights" : "");
        }
    return TM_OK;
}

int tm__train_activation_peak(const tm_train_config *cfg, const int *first,
                              const tm_schedule *sched, int rows, int p, int t, size_t *bytes)
{
    int v = tm__train_chunks(cfg);
    tm_stage *s = calloc((size_t)v, sizeof *s);
    if (s == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the device's chunks");
    int st = TM_OK;
    for (int c = 0; c < v && st == TM_OK; c++) {
        int g = c * cfg->pp + p;
        st = tm_stage_describe(&s[c], cfg->model, first[g], first[g + 1], cfg->tp, t);
        if (st == TM_OK) st = tm_stage_set_precision(&s[c], cfg->precision);
    }
    if (st == TM_OK) st = tm_pipeline_activation_peak(s, sched, p, rows, bytes);
    free(s);
    TM_CHECK(st);
    /* The last stage's targets, held through the run. */
    if (p == cfg->pp - 1) *bytes += tm_arena_block_bytes(sizeof(int) * (size_t)rows);
    return TM_OK;
}

int tm_train_predict_memory(const tm_train_config *cfg, const tm_data *train,
                            tm_memory_prediction *out)
{
    size_t *acts = malloc(sizeof(size_t) * (size_t)cfg->pp * (size_t)cfg->tp);
    if (acts == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the prediction");
    int st = tm_train_predict_activations(cfg, train, acts);
    int first[TM_MAX_LAYERS + 1];
    if (st == TM_OK) st = tm__train_split(cfg, first);
    for (int p = 0; p < cfg->pp && st == TM_OK; p++)
        for (int t = 0; t < cfg->tp && st == TM_OK; t++) {
            tm_memory_prediction *m = &out[p * cfg->tp + t];
            memset(m, 0, sizeof *m);
            size_t dev[MAX_BLOCKS], host[MAX_BLOCKS];
            tm_tag tags[MAX_BLOCKS];
            int n_dev, n_host;
            if ((st = state_blocks(cfg, first, p, t, dev, tags, &n_dev, host, &n_host))) break;
            for (int i = 0; i < n_dev; i++) m->tag[tags[i]] += tm_arena_block_bytes(dev[i]);
            for (int i = 0; i < n_host; i++) m->tag[TM_TAG_HOST] += tm_arena_block_bytes(host[i]);
            /* The chunks take their turns with ZeRO's layer in flight and
             * the partial sums: the largest counts. */
            size_t transient = 0, partial = 0, view = 0;
            for (int c = 0; c < tm__train_chunks(cfg) && st == TM_OK; c++) {
                tm_stage s;
                int g = c * cfg->pp + p;
                if ((st = tm_stage_describe(&s, cfg->model, first[g], first[g + 1], cfg->tp, t)))
                    break;
                size_t tr = 0, pa = tm_stage_partial_floats(&s);
                if (cfg->zero > 0 && (st = tm_zero_predict(&s, cfg->dp, cfg->zero, &tr, &pa)))
                    break;
                /* The layer in flight expanded from the bf16 copy when the
                 * masters are on the host (ZeRO-2 and 3 run every layer on
                 * their own view instead). */
                s.params_on_host = cfg->zero < 2 && tm_offload_on_host(cfg->offload,
                                       cfg->precision == TM_PRECISION_BF16, TM_TAG_PARAM);
                size_t vw = tm_stage_view_bytes(&s, 1);
                if (tr > transient) transient = tr;
                if (pa > partial) partial = pa;
                if (vw > view) view = vw;
            }
            if (st != TM_OK) break;
            m->tag[TM_TAG_ACTIVATION] = acts[p * cfg->tp + t];
            m->tag[TM_TAG_COMM] = transient;
            m->tag[TM_TAG_BF16] += view;
            if (cfg->tp > 1 && partial > 0)
                m->tag[TM_TAG_WORKSPACE] = tm_arena_block_bytes(partial * sizeof(float));
            for (int g = 0; g < TM_TAG_COUNT; g++) m->peak += g == TM_TAG_HOST ? 0 : m->tag[g];
        }
    free(acts);
    return st;
}
