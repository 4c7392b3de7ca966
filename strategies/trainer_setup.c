/* A device's state for a run: built before the first step (its chunks,
 * ZeRO's shards, offload's host arena, weights, tied groups, the memory
 * probe and the report's formulas), stored back into the host's model
 * state and freed after the last. */
#include "strategies/trainer_device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cost.h"
#include "kernels/gemm.h"
#include "runtime/status.h"
#include "strategies/pipeline.h"

/* Kernels charge the device's modeled clock. */
static void charge(void *ctx, double flops, double bytes) { tm_clock_charge(ctx, flops, bytes); }

static size_t max_of(size_t a, size_t b) { return a > b ? a : b; }

/* Allocates, block by block, what the pipeline executor holds at its peak
 * (strategies/pipeline.c), then frees it: a model that does not fit fails
 * before the first step, with the arena's report. The peak: the schedule's
 * most micro-batches in flight, each one activation block, plus during a
 * backward its scratch, the output gradient (and, on a middle stage, the
 * next one already received) and the input gradient on its way down. With
 * chunks, each block is the largest chunk's. */
static size_t peak_blocks(const device *v, int rows, size_t *size)
{
    size_t scratch = 0, dy = 0, dy2 = 0, dx = 0;
    for (int c = 0; c < v->n_chunks; c++) {
        const tm_stage *s = &v->stage[c];
        int g = c * v->mesh.pp + v->mesh.p, first = g == 0, last = g == v->mesh.pp * v->n_chunks - 1;
        size_t o = (size_t)rows * s->out_width * sizeof(float);
        scratch = max_of(scratch, max_of(tm_stage_backward_bytes(s, rows),
                                         tm_stage_forward_bytes(s, rows)));
        dy = max_of(dy, o);
        if (!last && !first) dy2 = max_of(dy2, o);
        if (!first) dx = max_of(dx, (size_t)rows * s->in_width * sizeof(float));
    }
    size_t n = 0;
    size[n++] = scratch;
    size[n++] = dy;
    if (dy2 > 0) size[n++] = dy2;
    if (dx > 0) size[n++] = dx;
    return n;
}

/* What each micro-batch in flight holds: its activations, and under a
 * split backward its W block too (held from B to W, the block's whole
 * life past B inside the micro-batch's); the largest chunk's. */
static size_t in_flight_bytes(const device *v, int rows)
{
    size_t most = 0;
    for (int c = 0; c < v->n_chunks; c++) {
        size_t w = tm_schedule_splits_backward(v->j->sched.kind)
                       ? tm_stage_wsave_bytes(&v->stage[c], rows) : 0;
        most = max_of(most, tm_stage_acts_bytes(&v->stage[c], rows) + w);
    }
    return most;
}

/* ZeRO's layer in flight: the largest chunk's (0 without ZeRO). */
static size_t zero_transient(const device *v)
{
    size_t most = 0;
    for (int c = 0; c < v->n_chunks && v->zero[c] != NULL; c++)
        most = max_of(most, tm_zero_transient_bytes(v->zero[c]));
    return most;
}

/* The most bytes a layer expanded from the bf16 copy takes while it runs
 * (masters on the host), over the chunks: one layer runs at a time. */
static size_t view_bytes(const device *v)
{
    size_t most = 0;
    for (int c = 0; c < v->n_chunks; c++)
        most = max_of(most, tm_stage_view_bytes(&v->stage[c], 1));
    return most;
}

/* The sum of those blocks: the activation bytes the pipeline holds at its
 * peak, by the formulas. */
static size_t activation_formula(const device *v, int rows)
{
    size_t size[4], n = peak_blocks(v, rows, size);
    size_t f = (size_t)tm_schedule_max_in_flight(&v->j->sched, v->mesh.p) *
               in_flight_bytes(v, rows);
    for (size_t i = 0; i < n; i++) f += size[i];
    return f;
}

/* The probe also holds ZeRO's layer in flight (tag comm) and, with the
 * masters on the host, the layer expanded from the bf16 copy (tag bf16)
 * beside them. */
static int probe_activations(device *v, int rows)
{
    size_t in_flight = (size_t)tm_schedule_max_in_flight(&v->j->sched, v->mesh.p);
    size_t size[6], n = peak_blocks(v, rows, size), n_acts = n;
    size_t comm = zero_transient(v);
    size_t view = v->j->cfg->zero == 2 ? 0 : view_bytes(v);
    if (comm > 0) size[n++] = comm;
    if (view > 0) size[n++] = view;
    void **block = calloc(in_flight + n, sizeof *block);
    if (block == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the memory probe");
    int st = TM_OK;
    for (size_t i = 0; i < in_flight + n && st == TM_OK; i++) {
        size_t bytes = i < in_flight ? in_flight_bytes(v, rows) : size[i - in_flight];
        tm_tag tag = i < in_flight + n_acts ? TM_TAG_ACTIVATION
                     : comm > 0 && i == in_flight + n_acts ? TM_TAG_COMM
                                                           : TM_TAG_BF16;
        block[i] = tm_device_alloc(v->dev, bytes, tag);
        if (block[i] == NULL) st = TM_ENOMEM;
    }
    for (size_t i = 0; i < in_flight + n; i++) tm_device_free(v->dev, block[i]);
    free(block);
    return st;
}

/* The groups of the tensors this stage shares with others, in tensor
 * order on every member. */
static int tied_groups(device *v)
{
    const tm_model *m = v->j->cfg->model;
    const tm_mesh *mesh = &v->mesh;
    for (int i = 0; i < m->n_tensors; i++) {
        int stages[TM_MAX_LAYERS], devices[TM_MAX_LAYERS], chunk = -1;
        int n = tm__train_tied_stages(m, v->j->first, mesh->pp * v->n_chunks, i, stages);
        /* Model stage g is device g % pp's chunk g / pp (tm_train_check
         * keeps a tied tensor's stages on distinct devices). */
        for (int k = 0; k < n; k++) {
            devices[k] = (mesh->d * mesh->pp + stages[k] % mesh->pp) * mesh->tp + mesh->t;
            if (stages[k] % mesh->pp == mesh->p) chunk = stages[k] / mesh->pp;
        }
        if (n < 2 || chunk < 0) continue;
        tied *t = &v->tied[v->n_tied++];
        t->chunk = chunk;
        TM_CHECK(tm_comm_create(v->dev, devices, n, "emb", &t->comm));
        const tm_stage *s = &v->stage[chunk];
        for (int l = 0; l < s->n; l++)
            for (int k = 0; k < s->layer[l].layer->n_tensors; k++)
                if (s->layer[l].layer->tensor[k] == i && s->layer[l].shard[k].owned) {
                    t->off = s->layer[l].shard[k].off;
                    t->count = s->layer[l].shard[k].count;
                }
    }
    return TM_OK;
}

/* Under ZeRO: the host state's shards of chunk c (its layout, in host
 * memory) into its whole parameters (stages 1 and 2) and ZeRO's chunks. */
static int load_zero(device *v, int c)
{
    job *j = v->j;
    tm_stage *s = &v->stage[c];
    size_t n = s->n_params;
    int n_state = j->resumed ? j->state->n_opt_state : 0;
    float *buf = malloc(sizeof(float) * n * (size_t)(1 + n_state)), *state[TM_OPT_MAX_STATE];
    if (buf == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the stage's host copy");
    tm_stage_shard_from(s, j->state->params, buf);
    if (s->params != NULL) memcpy(s->params, buf, n * sizeof(float));
    for (int i = 0; i < n_state; i++) {
        state[i] = buf + (size_t)(1 + i) * n;
        tm_stage_shard_from(s, j->state->opt_state[i], state[i]);
    }
    tm_zero_load(v->zero[c], buf, n_state > 0 ? state : NULL);
    free(buf);
    return TM_OK;
}

float *tm__train_step_grads(const device *v, int c, size_t *n)
{
    if (v->zero[c] != NULL) return tm_zero_grads(v->zero[c], n);
    *n = v->stage[c].n_params;
    return v->stage[c].grads;
}

float *tm__train_tied_grads(const device *v, const tied *t, size_t *count)
{
    if (v->zero[t->chunk] != NULL) return tm_zero_grad_chunk(v->zero[t->chunk], t->off, count);
    *count = t->count;
    return v->stage[t->chunk].grads + t->off;
}

/* Floats the optimizer updates on a stage without ZeRO: the shards it
 * owns (a tied tensor's copy on another stage is updated there). */
static size_t updated_floats(const tm_stage *s)
{
    size_t n = 0;
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->layer[i].layer->n_tensors; k++)
            if (s->layer[i].shard[k].owned) n += s->layer[i].shard[k].count;
    return n;
}

/* The memory formulas of README's "ZeRO" for this device. */
static void memory_formulas(device *v, int rows, tm_device_report *rep)
{
    const tm_train_config *cfg = v->j->cfg;
    tm_optim_config opt = tm__train_optim(cfg);
    size_t n_params = 0;
    for (int c = 0; c < v->n_chunks; c++) n_params += v->stage[c].n_params;
    double psi = (double)n_params, dp = cfg->dp, k = tm_optimizer_state_count(&opt);
    double param = 4 * psi, grad = 4 * psi, state = 4 * k * psi;
    if (cfg->zero >= 1) state /= dp;
    if (cfg->zero >= 2) grad /= dp;
    if (cfg->zero >= 3) param /= dp;
    rep->psi = n_params;
    int bf16 = cfg->precision == TM_PRECISION_BF16;
    int host = tm_offload_on_host(cfg->offload, bf16, TM_TAG_OPTIMIZER);
    int masters = tm_offload_on_host(cfg->offload, bf16, TM_TAG_PARAM);
    rep->host_formula = (host ? state : 0) + (masters ? 4 * psi / (cfg->zero > 0 ? dp : 1) : 0);
    rep->state_formula = (masters ? 0 : param) + grad + (host ? 0 : state);
    /* Each updated parameter's gradient out (4 bytes), and the parameter
     * back: 4 bytes, or its bf16 rounding (2) with the masters on the host. */
    rep->step_host_analytic =
        cfg->offload != TM_OFFLOAD_NONE ? (masters ? 6 : 8) * (double)v->n_updated : 0;
    rep->comm_formula = (double)zero_transient(v);
    size_t targets = v->is_last ? sizeof(int) * (size_t)rows : 0;
    /* The bf16 copy of what the device keeps of the parameters (ZeRO-3:
     * none, or with the masters on the host their shard's), and the layer
     * in flight expanded from it (ZeRO-2 and 3 run every layer on their
     * own view, tag comm). */
    rep->bf16_formula = (v->stage[0].params16 != NULL ? 2 * psi : masters ? 2 * psi / dp : 0) +
                        (cfg->zero == 2 ? 0 : (double)view_bytes(v));
    rep->peak_formula = rep->state_formula + rep->comm_formula + rep->bf16_formula +
                        (double)(activation_formula(v, rows) + targets);
}

/* Chunk c's stage (and under ZeRO its shards' sizes): model stage
 * c * pp + p, its layers first[g] .. first[g+1]-1. */
static int create_chunk(device *v, int c, int n_state, int on_host, int masters)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    int g = c * v->mesh.pp + v->mesh.p, zs = cfg->zero;
    tm_stage *s = &v->stage[c];
    if (zs > 0) {
        TM_CHECK(tm_stage_create_parts(s, v->dev, v->mesh.tp_comm, cfg->model, j->first[g],
                                       j->first[g + 1], zs < 3 && !masters, zs < 2));
        /* ZeRO-1 and 2 with the masters on the host keep the chunk's whole
         * bf16 copy (filled by tm_zero_load); ZeRO-3 its shards'. */
        s->params_on_host = masters && zs < 3;
        if (s->params_on_host) TM_CHECK(tm_stage_set_precision(s, cfg->precision));
        v->n_update[c] = tm_zero_shard_floats(s->layer, s->n, cfg->dp);
    } else if (masters) {
        TM_CHECK(tm_stage_create_parts(s, v->dev, v->mesh.tp_comm, cfg->model, j->first[g],
                                       j->first[g + 1], 0, 1));
        v->n_update[c] = updated_floats(s);
    } else {
        TM_CHECK(tm_stage_create(s, v->dev, v->mesh.tp_comm, cfg->model, j->first[g],
                                 j->first[g + 1], on_host ? 0 : n_state));
        v->n_update[c] = updated_floats(s);
    }
    return TM_OK;
}

/* Chunk c's weights (and, resuming, optimizer state) from the host state;
 * host_state: the host arena's buffers at this chunk's part (offload) or
 * NULL; masters: the host arena's fp32 masters at this chunk's part
 * (offload in bf16) or NULL. */
static int load_chunk(device *v, int c, int n_state, float *const *host_state, float *masters)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    tm_stage *s = &v->stage[c];
    if (cfg->zero > 0) {
        TM_CHECK(tm_zero_create(&v->zero[c], s, v->mesh.dp_comm, cfg->zero, n_state, host_state,
                                masters));
        return load_zero(v, c);
    }
    if (host_state != NULL) {
        /* The chunk's optimizer state, and in bf16 its parameters (the fp32
         * masters: the device keeps their bf16 copy), are the host arena's
         * (same layout); run() hands them back before the stage frees its
         * own buffers. */
        for (int i = 0; i < n_state; i++) s->opt_state[i] = host_state[i];
        s->n_opt_state = n_state;
    }
    if (masters != NULL) {
        s->params = masters;
        s->params_on_host = 1;
    }
    tm_stage_shard_from(s, j->state->params, s->params);
    for (int i = 0; j->resumed && i < s->n_opt_state; i++)
        tm_stage_shard_from(s, j->state->opt_state[i], s->opt_state[i]);
    return TM_OK;
}

int tm__train_setup(device *v)
{
    job *j = v->j;
    const tm_train_config *cfg = j->cfg;
    /* The GEMM libraries' warm-up (wall time only): a dry run runs none. */
    if (!cfg->dry_run) tm_gemm_thread_init();
    tm_cost_set_hook(charge, v->dev);
    tm_cost_set_dry(cfg->dry_run);
    tm_comm_set_dry(cfg->dry_run);
    TM_CHECK(tm_mesh_create(v->dev, cfg->dp, cfg->pp, cfg->tp, &v->mesh));
    int p = v->mesh.p;
    v->is_first = p == 0;
    v->is_last = p == cfg->pp - 1;
    v->reporter = v->mesh.d == 0 && v->is_last && v->mesh.t == 0;
    char name[48];
    snprintf(name, sizeof name, "device %d (dp%d pp%d tp%d)", tm_device_id(v->dev), v->mesh.d, p,
             v->mesh.t);
    tm_clock_set_name(v->dev, name);
    tm_optim_config opt = tm__train_optim(cfg);
    int n_state = tm_optimizer_state_count(&opt);
    int bf16 = cfg->precision == TM_PRECISION_BF16;
    int on_host = tm_offload_on_host(cfg->offload, bf16, TM_TAG_OPTIMIZER);
    /* bf16 under offload: the fp32 masters live in the host arena too. */
    int masters = tm_offload_on_host(cfg->offload, bf16, TM_TAG_PARAM);
    v->stage = calloc((size_t)tm__train_chunks(cfg), sizeof *v->stage);
    if (v->stage == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the device's chunks");
    v->n_chunks = tm__train_chunks(cfg);
    for (int c = 0; c < v->n_chunks; c++) {
        TM_CHECK(create_chunk(v, c, n_state, on_host, masters));
        v->n_updated += v->n_update[c];
    }
    /* Offload: one host arena, its state buffers (and masters) cut into the
     * chunks' parts (ZeRO's shards, or the chunks' whole state). */
    float *host_state[TM_OPT_MAX_STATE] = {NULL, NULL}, *host_masters = NULL;
    size_t host_n = 0;
    for (int c = 0; c < v->n_chunks; c++)
        host_n += cfg->zero > 0 ? v->n_update[c] : v->stage[c].n_params;
    if (on_host) {
        TM_CHECK(tm_offload_create(&v->offload, v->dev, cfg->host_mem_cap, n_state, host_n,
                                   masters));
        tm_offload_state(v->offload, host_state);
        if (masters) host_masters = tm_offload_masters(v->offload);
    }
    size_t off = 0;
    for (int c = 0; c < v->n_chunks; c++) {
        float *part[TM_OPT_MAX_STATE] = {NULL, NULL};
        for (int i = 0; on_host && i < n_state; i++) part[i] = host_state[i] + off;
        TM_CHECK(load_chunk(v, c, n_state, on_host ? part : NULL,
                            host_masters != NULL ? host_masters + off : NULL));
        off += cfg->zero > 0 ? v->n_update[c] : v->stage[c].n_params;
        TM_CHECK(tm_stage_set_precision(&v->stage[c], cfg->precision));
    }
    int rows = tm__train_rows(cfg);
    if (v->is_last) {
        v->targets = tm_device_alloc(v->dev, sizeof(int) * (size_t)rows, TM_TAG_ACTIVATION);
        if (v->targets == NULL) return TM_ENOMEM;
    }
    if (v->is_first || v->is_last) {
        v->order = malloc(sizeof(int) * (size_t)j->train->n);
        if (v->order == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the data order");
    }
    TM_CHECK(tied_groups(v));
    TM_CHECK(probe_activations(v, rows));
    tm_arena_reset_peak(tm_device_arena(v->dev));
    if (v->offload != NULL) tm_offload_reset_peak(v->offload);
    double tied_bytes = 0;
    for (int i = 0; i < v->n_tied; i++) {
        size_t count;
        tm__train_tied_grads(v, &v->tied[i], &count);
        tied_bytes += tm_allreduce_send_bytes(v->tied[i].comm, count);
    }
    tm_device_report *rep = &j->result->devices[tm_device_id(v->dev)];
    TM_CHECK(tm__train_activation_peak(cfg, j->first, &j->sched, rows, p, v->mesh.t,
                                       &rep->activation_formula));
    tm__train_formulas(cfg, v->stage, v->zero, &v->mesh, rows, tied_bytes, rep);
    for (int c = 0; c < v->n_chunks; c++)
        rep->acts_per_mb = max_of(rep->acts_per_mb, tm_stage_acts_bytes(&v->stage[c], rows));
    memory_formulas(v, rows, rep);
    return TM_OK;
}

/* Under ZeRO: replica 0 gathers chunk c's parameters (stage 3) and
 * optimizer state from every replica into host buffers in the chunk's
 * layout (*host: NULL on the other replicas, which only send). */
static int gather_zero(device *v, int c, float **host, float **state)
{
    size_t n = v->stage[c].n_params;
    int n_state = v->j->state->n_opt_state;
    *host = NULL;
    if (v->mesh.d == 0) {
        *host = malloc(sizeof(float) * n * (size_t)(1 + n_state));
        if (*host == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the stage's host copy");
        for (int i = 0; i < n_state; i++) state[i] = *host + (size_t)(1 + i) * n;
    }
    return tm_zero_store(v->zero[c], *host, *host != NULL ? state : NULL);
}

/* Across processes the model state reaches the writing process over the
 * links: replica 0's devices in the other processes send each chunk's
 * stored runs to the reporting device, which writes them into its
 * process's host state (the checkpoint's). Per sender and chunk: the runs'
 * count; their full-layout offsets and lengths (uint64 pairs); then, run
 * after run, the weights' floats and each optimizer state's. */
typedef struct {
    uint64_t *pair;    /* (n) full offset, length */
    size_t *from;      /* (n) shard offset */
    size_t n, cap, floats;
    int failed;        /* out of host memory */
} run_list;

/* A run that continues the last one in both layouts (a weight and its
 * bias) extends it. */
static void add_run(void *ctx, size_t full, size_t shard, size_t n, size_t pad)
{
    run_list *r = ctx;
    (void)pad;
    if (n == 0 || r->failed) return;
    r->floats += n;
    if (r->n > 0 && r->pair[2 * (r->n - 1)] + r->pair[2 * r->n - 1] == full &&
        r->from[r->n - 1] + r->pair[2 * r->n - 1] == shard) {
        r->pair[2 * r->n - 1] += n;
        return;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        uint64_t *pair = realloc(r->pair, sizeof *pair * 2 * cap);
        if (pair != NULL) r->pair = pair;
        size_t *from = pair != NULL ? realloc(r->from, sizeof *from * cap) : NULL;
        if (from == NULL) {
            r->failed = 1;
            return;
        }
        r->from = from;
        r->cap = cap;
    }
    r->pair[2 * r->n] = full;
    r->pair[2 * r->n + 1] = n;
    r->from[r->n++] = shard;
}

static int send_chunk(device *v, int to, const tm_stage *s, const float *params,
                      float *const *state)
{
    tm_comm *world = tm_device_comm(v->dev);
    int n_state = v->j->state->n_opt_state;
    run_list r = {0};
    tm_stage_shard_spans(s, v->mesh.t == 0, add_run, &r);
    float *buf = r.failed ? NULL : malloc(sizeof(float) * (r.floats ? r.floats : 1));
    int st = buf == NULL ? tm_error(TM_EHOSTMEM, "cannot allocate the state's gather") : TM_OK;
    uint64_t count = r.n;
    if (st == TM_OK) st = tm_send(world, &count, sizeof count, to);
    if (st == TM_OK && count > 0) st = tm_send(world, r.pair, sizeof *r.pair * 2 * r.n, to);
    for (int k = -1; st == TM_OK && count > 0 && k < n_state; k++) {
        const float *src = k < 0 ? params : state[k];
        float *o = buf;
        for (size_t i = 0; i < r.n; i++) {
            memcpy(o, src + r.from[i], sizeof(float) * r.pair[2 * i + 1]);
            o += r.pair[2 * i + 1];
        }
        st = tm_send(world, buf, sizeof(float) * r.floats, to);
    }
    free(buf);
    free(r.pair);
    free(r.from);
    return st;
}

static int recv_chunk(device *v, int from)
{
    tm_comm *world = tm_device_comm(v->dev);
    tm_model_state *state = v->j->state;
    uint64_t count = 0, *pair = NULL;
    float *buf = NULL;
    TM_CHECK(tm_recv(world, &count, sizeof count, from));
    if (count == 0) return TM_OK;
    size_t floats = 0;
    pair = count <= SIZE_MAX / 16 ? malloc(sizeof *pair * 2 * count) : NULL;
    int st = pair == NULL ? tm_error(TM_EHOSTMEM, "cannot allocate the state's gather") : TM_OK;
    if (st == TM_OK) st = tm_recv(world, pair, sizeof *pair * 2 * count, from);
    /* One device's runs are disjoint: together within the model. */
    for (uint64_t i = 0; st == TM_OK && i < count; i++) {
        if (pair[2 * i] > state->n_params || pair[2 * i + 1] > state->n_params - pair[2 * i] ||
            pair[2 * i + 1] > state->n_params - floats)
            st = tm_error(TM_EINVAL, "device %d sent runs outside the model's %zu floats", from,
                          state->n_params);
        floats += pair[2 * i + 1];
    }
    if (st == TM_OK && (buf = malloc(sizeof(float) * (floats ? floats : 1))) == NULL)
        st = tm_error(TM_EHOSTMEM, "cannot allocate the state's gather");
    for (int k = -1; st == TM_OK && k < state->n_opt_state; k++) {
        st = tm_recv(world, buf, sizeof(float) * floats, from);
        float *dst = k < 0 ? state->params : state->opt_state[k];
        const float *in = buf;
        for (uint64_t i = 0; st == TM_OK && i < count; i++) {
            memcpy(dst + pair[2 * i], in, sizeof(float) * pair[2 * i + 1]);
            in += pair[2 * i + 1];
        }
    }
    free(buf);
    free(pair);
    return st;
}

/* The reporting device's side: chunk c of every sender, in device order
 * (replica 0 holds devices 0 .. pp * tp - 1). */
static int recv_chunks(device *v)
{
    tm_world *w = tm_device_world(v->dev);
    for (int i = 0; i < v->mesh.pp * v->mesh.tp; i++)
        if (!tm_world_is_local(w, i)) TM_CHECK(recv_chunk(v, i));
    return TM_OK;
}

/* Copies chunk c's shards back into the host model state: replica 0 only
 * (under ZeRO, after gathering the other replicas' chunks), and the parts
 * every tp rank holds whole from rank 0 only; across processes, over the
 * links to the writing process (above). */
static int store_chunk(device *v, int c)
{
    job *j = v->j;
    const tm_stage *s = &v->stage[c];
    float *host = NULL, *state[TM_OPT_MAX_STATE];
    for (int i = 0; i < TM_OPT_MAX_STATE; i++) state[i] = s->opt_state[i];
    int st = v->zero[c] != NULL ? gather_zero(v, c, &host, state) : TM_OK;
    if (st != TM_OK || v->mesh.d != 0) {
        free(host);
        return st;
    }
    const float *params = s->params != NULL ? s->params : host;
    int to = tm_train_reporter(j->cfg);
    if (j->gather && !tm_world_is_local(tm_device_world(v->dev), to)) {
        st = send_chunk(v, to, s, params, state);
        free(host);
        return st;
    }
    int shared = v->mesh.t == 0;
    tm_stage_shard_to(s, params, j->state->params, shared);
    for (int i = 0; i < j->state->n_opt_state; i++)
        tm_stage_shard_to(s, state[i], j->state->opt_state[i], shared);
    free(host);
    return j->gather && v->reporter ? recv_chunks(v) : TM_OK;
}

/* Every chunk's shards back into the host model state. */
int tm__train_store(device *v)
{
    /* Every device has read its initial shard before any writes back. */
    TM_CHECK(tm_barrier(tm_device_comm(v->dev)));
    for (int c = 0; c < v->n_chunks; c++) TM_CHECK(store_chunk(v, c));
    return TM_OK;
}

/* Frees what tm__train_setup made (every chunk, ZeRO's and offload's state,
 * the tied groups, the mesh) and ends the device's report: its host arena
 * and its arena's accounts. */
void tm__train_teardown(device *v)
{
    tm_device_report *rep = &v->j->result->devices[tm_device_id(v->dev)];
    free(v->order);
    tm_device_free(v->dev, v->targets);
    tm_cost_set_hook(NULL, NULL);
    tm_cost_set_dry(0);
    tm_comm_set_dry(0);
    for (int c = 0; c < v->n_chunks; c++) tm_zero_destroy(v->zero[c]);
    if (v->offload != NULL) {
        tm_offload_stats(v->offload, &rep->host_memory);
        /* The chunks' optimizer state (and host masters) were the host
         * arena's, not their own. */
        for (int c = 0; c < v->n_chunks; c++) {
            for (int i = 0; i < v->stage[c].n_opt_state; i++) v->stage[c].opt_state[i] = NULL;
            v->stage[c].n_opt_state = 0;
            if (v->stage[c].params_on_host) v->stage[c].params = NULL;
        }
    }
    tm_offload_destroy(v->offload);
    for (int c = 0; c < v->n_chunks; c++) tm_stage_destroy(&v->stage[c]);
    free(v->stage);
    for (int i = 0; i < v->n_tied; i++) tm_comm_destroy(v->tied[i].comm);
    tm_mesh_destroy(&v->mesh);
    tm_arena_stats_get(tm_device_arena(v->dev), &rep->memory);
}
