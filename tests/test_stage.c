/* Suite `stage`: a device's share of a model (strategies/stage.h) and the
 * optimizer over it (strategies/optimizer.h): shards to and from the full
 * layout for every tensor-parallel rank, the activation and backward bytes
 * against the layer kinds' own counts (and the arena), the gradient
 * buckets' ready callbacks, weight decay only where the tensor table asks,
 * the global gradient norm's parts, and PyTorch's clipping factor. Devices
 * record what they see into host buffers; the host thread checks. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/optim.h"
#include "runtime/comm.h"
#include "runtime/status.h"
#include "runtime/world.h"
#include "strategies/gpt.h"
#include "strategies/stage.h"
#include "tests/models.h"

#define MAX_TP 4

static float *random_floats(size_t n, double scale)
{
    float *a = malloc((n ? n : 1) * sizeof(float));
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++) a[i] = (float)(scale * test_uniform());
    return a;
}

static float *nan_floats(size_t n)
{
    float *a = malloc((n ? n : 1) * sizeof(float));
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++) a[i] = NAN;
    return a;
}

static void run_world(int n, tm_device_fn fn, void *arg)
{
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = n;
    wc.mem_cap = 16 << 20;
    tm_world *w;
    cr_assert_eq(tm_world_create(&w, &wc), TM_OK, "%s", tm_error_message());
    int st = tm_world_run(w, fn, arg);
    cr_assert_eq(st, TM_OK, "%s", tm_world_error(w));
    tm_world_destroy(w);
}

/* What a test asks of every device, and what each device (tp rank) saw. */
typedef struct {
    const tm_model *m;
    int tp, l0, l1;          /* the stage: layers [l0, l1) on a 1 x 1 x tp mesh */
    int n_opt;               /* optimizer buffers */
    const float *full;       /* parameters, full layout (or NULL: zeros) */
    const float *full_grad;  /* gradients to shard in (or NULL) */
    int (*body)(tm_device *dev, tm_stage *s, void *job);
    void *ctx;
    tm_layer_plan plan[MAX_TP][TM_MAX_LAYERS];
    size_t n_params[MAX_TP];
} stage_job;

static int stage_dev(tm_device *dev, void *arg)
{
    stage_job *j = arg;
    tm_gemm_thread_init();
    tm_mesh mesh;
    TM_CHECK(tm_mesh_create(dev, 1, 1, j->tp, &mesh));
    tm_stage s;
    int st = tm_stage_create(&s, dev, mesh.tp_comm, j->m, j->l0, j->l1, j->n_opt);
    if (st == TM_OK) {
        memcpy(j->plan[s.t], s.layer, sizeof(tm_layer_plan) * (size_t)s.n);
        j->n_params[s.t] = s.n_params;
        if (j->full != NULL) tm_stage_shard_from(&s, j->full, s.params);
        memset(s.grads, 0, s.n_params * sizeof(float));
        if (j->full_grad != NULL) tm_stage_shard_from(&s, j->full_grad, s.grads);
        st = j->body(dev, &s, j);
    }
    tm_stage_destroy(&s);
    tm_mesh_destroy(&mesh);
    return st;
}

/* ---- shards ------------------------------------------------------------- */

typedef struct {
    float *shard[MAX_TP];    /* each rank's shard_from of the full buffer */
    float *back_shared;      /* shard_to from every rank, rank 0 writing the
                                whole tensors (NaN elsewhere before) */
    float *back_split;       /* shard_to with write_shared 0 everywhere */
} shard_out;

static int shard_body(tm_device *dev, tm_stage *s, void *job)
{
    (void)dev;
    stage_job *j = job;
    shard_out *o = j->ctx;
    /* NaN first: shard_from must write every float, padding included. */
    float *mine = o->shard[s->t];
    for (size_t i = 0; i < s->n_params; i++) mine[i] = NAN;
    tm_stage_shard_from(s, j->full, mine);
    /* The ranks write disjoint parts of the shared buffers. */
    tm_stage_shard_to(s, mine, o->back_shared, s->t == 0);
    tm_stage_shard_to(s, mine, o->back_split, 0);
    return TM_OK;
}

/* Where element k of a shard sits in its tensor, from the definition in
 * strategies/layer.h: WHOLE is the tensor; COLS is columns [lo, lo + len)
 * of every row; ROWS is rows [lo, lo + len) of each group block, one block
 * after the other. Returns the tensor's index, or -1 for a padding row. */
static long full_index(const tm_tensor *t, const tm_shard *s, size_t k)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    if (s->dim == TM_SHARD_WHOLE) return (long)k;
    if (s->dim == TM_SHARD_COLS) {
        size_t len = (size_t)s->len;
        return (long)(k / len * cols + (size_t)s->lo + k % len);
    }
    size_t block = rows / (size_t)t->groups, per = (size_t)s->len * cols;
    size_t g = k / per, r = k % per / cols, c = k % cols;
    if ((size_t)s->lo + r >= block) return -1;
    return (long)((g * block + (size_t)s->lo + r) * cols + c);
}

static void shard_case(const tm_model *m, int tp, int l0, int l1)
{
    shard_out o;
    float *full = random_floats(m->n_params, 1.0);
    o.back_shared = nan_floats(m->n_params);
    o.back_split = nan_floats(m->n_params);
    for (int t = 0; t < tp; t++) o.shard[t] = nan_floats(2 * m->n_params);
    stage_job *j = calloc(1, sizeof *j);
    *j = (stage_job){.m = m, .tp = tp, .l0 = l0, .l1 = l1, .body = shard_body, .ctx = &o,
                     .full = full};
    run_world(tp, stage_dev, j);

    char *used = calloc(m->n_tensors, 1), *whole = calloc(m->n_tensors, 1);
    int padding = 0;
    for (int t = 0; t < tp; t++) {
        for (int i = 0; i < l1 - l0; i++) {
            const tm_layer_plan *p = &j->plan[t][i];
            for (int k = 0; k < p->layer->n_tensors; k++) {
                const tm_shard *s = &p->shard[k];
                const tm_tensor *ten = &m->tensors[p->layer->tensor[k]];
                used[p->layer->tensor[k]] = 1;
                whole[p->layer->tensor[k]] = s->dim == TM_SHARD_WHOLE;
                for (size_t e = 0; e < s->count; e++) {
                    long f = full_index(ten, s, e);
                    float got = o.shard[t][s->off + e];
                    padding += f < 0;
                    float want = f < 0 ? 0.0f : full[ten->off + (size_t)f];
                    cr_expect(got == want, "tp %d rank %d %s[%zu]: %g, want %g%s", tp, t,
                              ten->name, e, got, want, f < 0 ? " (padding)" : "");
                }
            }
        }
    }
    /* Back to the full layout: every tensor of the stage once, nothing
     * else; without write_shared only the split tensors. A tied tensor
     * that a layer before the stage defines is written back by the stage
     * holding that layer, not this one. */
    for (int i = 0; i < m->n_tensors; i++) used[i] &= m->tensors[i].layer >= l0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        size_t n = (size_t)t->shape[0] * t->shape[1];
        int diff_shared = 0, diff_split = 0;
        for (size_t e = 0; e < n; e++) {
            float f = full[t->off + e], a = o.back_shared[t->off + e],
                  b = o.back_split[t->off + e];
            diff_shared += used[i] ? a != f : !isnan(a);
            diff_split += used[i] && !whole[i] ? b != f : !isnan(b);
        }
        cr_expect_eq(diff_shared, 0, "tp %d [%d, %d) %s: %d floats wrong after shard_to", tp, l0,
                     l1, t->name, diff_shared);
        cr_expect_eq(diff_split, 0, "tp %d [%d, %d) %s: %d floats wrong without write_shared",
                     tp, l0, l1, t->name, diff_split);
    }
    printf("stage: shards of [%d, %d) over tp %d round-trip (%d padding floats)\n", l0, l1, tp,
           padding);
    free(used), free(whole), free(full), free(o.back_shared), free(o.back_split), free(j);
    for (int t = 0; t < tp; t++) free(o.shard[t]);
}

Test(stage, shards_round_trip_for_every_tp_rank, .timeout = 60)
{
    const tm_model *mlp = mlp_model("12,16,8,10", TM_ACT_RELU);
    for (int tp = 1; tp <= 4; tp *= 2) shard_case(mlp, tp, 0, 3);
    /* A stage starting mid-model: a column/row pair then a lone layer. */
    shard_case(mlp_model("12,16,16,16,10", TM_ACT_RELU), 2, 1, 4);
    const tm_model *gpt = gpt_model(2, 2, 8, 5);
    shard_case(gpt, 1, 0, 4);
    /* The last block and the head: this stage stores its own wte. */
    shard_case(gpt, 1, 2, 4);
}

/* ---- a micro-batch through the stage ------------------------------------ */

/* Token ids for the GPT, floats for the MLP; targets of every row. A
 * function of the row and column alone: every tensor-parallel rank (a
 * thread of its own) stages the same micro-batch. */
static void fill_batch(const tm_model *m, float *in, int *targets, int rows)
{
    for (int r = 0; r < rows; r++) {
        targets[r] = (r * 13 + 5) % m->n_classes;
        for (int k = 0; k < m->in_width; k++) {
            float *x = in + (size_t)r * m->in_width + k;
            if (m->tokens) memcpy(x, &(int){(r * 37 + 11) % 256}, sizeof(int));
            else *x = (float)((r * 131 + k * 71) % 97) / 48.5f - 1.0f;
        }
    }
}

#define MAX_CALLS 16

typedef struct {
    int rows;
    size_t acts_bytes[MAX_TP], backward_bytes[MAX_TP];
    size_t acts_in_use[MAX_TP];   /* the arena's activation bytes the block took */
    size_t backward_peak[MAX_TP]; /* the arena's activation peak during backward */
    int calls[MAX_TP];
    size_t off[MAX_TP][MAX_CALLS], len[MAX_TP][MAX_CALLS];
    float *at_call[MAX_TP][MAX_CALLS]; /* the range's gradients when called */
    float *grads[MAX_TP];              /* the stage's gradients at the end */
} pass_out;

typedef struct {
    tm_stage *s;
    pass_out *o;
} ready_ctx;

static int on_ready(void *ctx, size_t off, size_t len)
{
    ready_ctx *r = ctx;
    int t = r->s->t, k = r->o->calls[t]++;
    if (k >= MAX_CALLS) return tm_error(TM_EINVAL, "too many ready calls");
    r->o->off[t][k] = off;
    r->o->len[t][k] = len;
    r->o->at_call[t][k] = malloc(len * sizeof(float));
    if (r->o->at_call[t][k] == NULL) return tm_error(TM_EHOSTMEM, "no memory");
    memcpy(r->o->at_call[t][k], r->s->grads + off, len * sizeof(float));
    return TM_OK;
}

/* Forward, loss, backward of one micro-batch, measuring the arena. */
static int pass_body(tm_device *dev, tm_stage *s, void *job)
{
    stage_job *j = job;
    pass_out *o = j->ctx;
    const tm_model *m = j->m;
    int rows = o->rows, t = s->t, st;
    tm_arena *arena = tm_device_arena(dev);
    tm_arena_stats a0, a1, a2;
    o->acts_bytes[t] = tm_stage_acts_bytes(s, rows);
    o->backward_bytes[t] = tm_stage_backward_bytes(s, rows);
    int *targets = malloc(sizeof(int) * (size_t)rows);
    float *dy = tm_device_alloc(dev, (size_t)rows * s->out_width * sizeof(float),
                                TM_TAG_WORKSPACE);
    if (targets == NULL || dy == NULL) return tm_error(TM_EHOSTMEM, "no memory");
    tm_arena_stats_get(arena, &a0);
    tm_stage_acts a;
    TM_CHECK(tm_stage_acts_alloc(s, rows, &a));
    tm_arena_stats_get(arena, &a1);
    o->acts_in_use[t] = a1.tag_in_use[TM_TAG_ACTIVATION] - a0.tag_in_use[TM_TAG_ACTIVATION];
    fill_batch(m, a.input, targets, rows);
    st = tm_stage_forward(s, &a);
    tm_layer_ctx c = tm_stage_ctx(s, rows);
    double sum = 0;
    if (st == TM_OK)
        st = m->loss(&s->layer[s->n - 1], &c, dy, a.output, targets, rows, 1.0f / rows, &sum,
                         NULL);
    tm_arena_reset_peak(arena);
    tm_arena_stats_get(arena, &a1);
    ready_ctx r = {s, o};
    if (st == TM_OK) st = tm_stage_backward(s, &a, dy, NULL, on_ready, &r);
    tm_arena_stats_get(arena, &a2);
    o->backward_peak[t] = a2.tag_peak[TM_TAG_ACTIVATION] - a1.tag_in_use[TM_TAG_ACTIVATION];
    memcpy(o->grads[t], s->grads, s->n_params * sizeof(float));
    tm_stage_acts_free(s, &a);
    tm_device_free(dev, dy);
    free(targets);
    return st;
}

static stage_job *pass_case(const tm_model *m, int tp, int l0, int l1, int rows, pass_out *o)
{
    memset(o, 0, sizeof *o);
    o->rows = rows;
    for (int t = 0; t < tp; t++) o->grads[t] = nan_floats(2 * m->n_params);
    float *full = random_floats(m->n_params, 0.5);
    stage_job *j = calloc(1, sizeof *j);
    *j = (stage_job){.m = m, .tp = tp, .l0 = l0, .l1 = l1, .body = pass_body, .ctx = o,
                     .full = full};
    run_world(tp, stage_dev, j);
    free(full);
    return j;
}

static void pass_free(stage_job *j, pass_out *o)
{
    for (int t = 0; t < j->tp; t++) {
        free(o->grads[t]);
        for (int k = 0; k < o->calls[t]; k++) free(o->at_call[t][k]);
    }
    free(j);
}

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

static void expect_bytes(stage_job *j, pass_out *o, const char *what)
{
    int rows = o->rows, n = j->l1 - j->l0;
    for (int t = 0; t < j->tp; t++) {
        const tm_layer_plan *p = j->plan[t];
        size_t acts = (size_t)p[0].in_w * rows, scratch = 0;
        int grad_w = 0;
        for (int i = 0; i < n; i++) {
            acts += (size_t)p[i].out_w * rows + p[i].layer->kind->saved_floats(&p[i], rows);
            size_t f = p[i].layer->kind->scratch_floats(&p[i], rows);
            scratch = f > scratch ? f : scratch;
            int w = p[i].grad_w > p[i].in_w ? p[i].grad_w : p[i].in_w;
            w = p[i].out_w > w ? p[i].out_w : w;
            grad_w = w > grad_w ? w : grad_w;
        }
        /* As the arena counts the block: whole 64-byte units. */
        size_t back = round64((2 * (size_t)grad_w * rows + scratch) * sizeof(float));
        cr_expect_eq(o->acts_bytes[t], acts * sizeof(float), "%s rank %d: acts %zu, kinds %zu",
                     what, t, o->acts_bytes[t], acts * sizeof(float));
        cr_expect_eq(o->backward_bytes[t], back, "%s rank %d: backward %zu, kinds %zu", what, t,
                     o->backward_bytes[t], back);
        cr_expect_eq(o->acts_in_use[t], round64(o->acts_bytes[t]), "%s rank %d: the arena took %zu",
                     what, t, o->acts_in_use[t]);
        cr_expect_eq(o->backward_peak[t], round64(o->backward_bytes[t]),
                     "%s rank %d: the backward peaked %zu above, want %zu", what, t,
                     o->backward_peak[t], round64(o->backward_bytes[t]));
        printf("stage: %s rank %d: %d rows, activations %zu B, backward %zu B\n", what, t, rows,
               o->acts_bytes[t], o->backward_bytes[t]);
    }
}

Test(stage, activation_and_backward_bytes_are_the_kinds_sums, .timeout = 60)
{
    pass_out o;
    stage_job *j = pass_case(mlp_model("12,16,8,10", TM_ACT_GELU), 2, 0, 3, 6, &o);
    expect_bytes(j, &o, "mlp tp 2");
    pass_free(j, &o);
    j = pass_case(mlp_model("12,16,8,10", TM_ACT_RELU), 4, 0, 3, 5, &o);
    expect_bytes(j, &o, "mlp tp 4");
    pass_free(j, &o);

    /* The GPT's kinds against their own formulas: a block keeps ln_1, its
     * mean and rstd, qkv, the attention weights, the attention output,
     * the residual, ln_2 with mean and rstd, c_fc before and after GELU:
     * 15 rC + 4 r + (r / T) H T² floats. */
    enum { L = 2, H = 2, C = 8, T = 5, B = 3, R = B * T };
    const tm_model *m = gpt_model(L, 2, C, T);
    j = pass_case(m, 1, 0, L + 2, R, &o);
    expect_bytes(j, &o, "gpt");
    const tm_layer_plan *p = j->plan[0];
    cr_expect_eq(p[0].layer->kind->saved_floats(&p[0], R), 0, "the embedding keeps nothing");
    cr_expect_eq(p[1].layer->kind->saved_floats(&p[1], R),
                 (size_t)15 * R * C + 4 * R + B * H * T * T);
    cr_expect_eq(p[L + 1].layer->kind->saved_floats(&p[L + 1], R), (size_t)R * (C + 2),
                 "the head keeps ln_f's output, mean and rstd");
    /* The stage's own sum: the token ids, each layer's output, what the
     * kinds keep. */
    size_t want = (size_t)R * (1 + C + L * (C + 15 * C + 4) + 256) + (size_t)L * B * H * T * T +
                  (size_t)R * (C + 2);
    cr_expect_eq(o.acts_bytes[0], want * 4, "gpt acts %zu, want %zu", o.acts_bytes[0], want * 4);
    pass_free(j, &o);
}

/* Each layer that stores parameters reports its own range once, last
 * layer first, with its gradients already final. */
static void expect_ready(stage_job *j, pass_out *o, const char *what)
{
    int n = j->l1 - j->l0;
    for (int t = 0; t < j->tp; t++) {
        const tm_layer_plan *p = j->plan[t];
        int owning = 0;
        for (int i = 0; i < n; i++) owning += p[i].own_len > 0;
        cr_expect_eq(o->calls[t], owning, "%s rank %d: %d calls for %d layers", what, t,
                     o->calls[t], owning);
        for (int k = 0, i = n - 1; k < o->calls[t] && i >= 0; i--) {
            if (p[i].own_len == 0) continue;
            cr_expect(o->off[t][k] == p[i].own_off && o->len[t][k] == p[i].own_len,
                      "%s rank %d call %d: [%zu, +%zu), want layer %d's [%zu, +%zu)", what, t, k,
                      o->off[t][k], o->len[t][k], j->l0 + i, p[i].own_off, p[i].own_len);
            cr_expect(memcmp(o->at_call[t][k], o->grads[t] + p[i].own_off,
                             p[i].own_len * sizeof(float)) == 0,
                      "%s rank %d: layer %d's gradients changed after its call", what, t,
                      j->l0 + i);
            k++;
        }
    }
}

Test(stage, grads_ready_once_per_layer_last_first_with_its_range, .timeout = 60)
{
    pass_out o;
    stage_job *j = pass_case(gpt_model(2, 2, 8, 5), 1, 0, 4, 10, &o);
    /* The head stores ln_f only (wte is the embedding's), and reports
     * first; the embedding's wte comes last, with the head's part in it. */
    expect_ready(j, &o, "gpt");
    cr_expect_eq(o.len[0][0], 16, "the head's range is ln_f: %zu floats", o.len[0][0]);
    cr_expect_eq(o.off[0][3], 0, "the embedding's range starts the stage");
    pass_free(j, &o);
    j = pass_case(mlp_model("12,16,8,10", TM_ACT_RELU), 2, 0, 3, 4, &o);
    expect_ready(j, &o, "mlp tp 2");
    pass_free(j, &o);
}

/* A stage asked for no input gradient (dx NULL) still adds every parameter
 * gradient (strategies/layer.h: din may be NULL, the parameters' are added
 * regardless). The GPT's head alone in a stage: its ln_f and wte
 * gradients with and without dx. */
typedef struct {
    int rows;
    const float *x;       /* (rows, C) the head's input */
    float *grads[2];      /* without dx, with dx */
} head_out;

static int head_body(tm_device *dev, tm_stage *s, void *job)
{
    head_out *o = ((stage_job *)job)->ctx;
    int rows = o->rows, targets[64];
    float *dy = tm_device_alloc(dev, (size_t)rows * s->out_width * sizeof(float), TM_TAG_WORKSPACE);
    float *dx = tm_device_alloc(dev, (size_t)rows * s->in_width * sizeof(float), TM_TAG_WORKSPACE);
    if (dy == NULL || dx == NULL || rows > 64) return TM_ENOMEM;
    for (int r = 0; r < rows; r++) targets[r] = (r * 29 + 3) % 256;
    for (int pass = 0; pass < 2; pass++) {
        tm_stage_acts a;
        TM_CHECK(tm_stage_acts_alloc(s, rows, &a));
        memcpy(a.input, o->x, (size_t)rows * s->in_width * sizeof(float));
        memset(s->grads, 0, s->n_params * sizeof(float));
        int st = tm_stage_forward(s, &a);
        tm_layer_ctx c = tm_stage_ctx(s, rows);
        double sum = 0;
        if (st == TM_OK)
            st = s->model->loss(&s->layer[s->n - 1], &c, dy, a.output, targets, rows, 1.0f / rows,
                                &sum, NULL);
        if (st == TM_OK) st = tm_stage_backward(s, &a, dy, pass ? dx : NULL, NULL, NULL);
        memcpy(o->grads[pass], s->grads, s->n_params * sizeof(float));
        tm_stage_acts_free(s, &a);
        TM_CHECK(st);
    }
    tm_device_free(dev, dx);
    tm_device_free(dev, dy);
    return TM_OK;
}

Test(stage, no_input_gradient_still_adds_the_parameter_gradients, .timeout = 60)
{
    enum { L = 2, C = 8, T = 5, ROWS = 2 * T };
    const tm_model *m = gpt_model(L, 2, C, T);
    float *full = random_floats(m->n_params, 0.5), *x = random_floats(ROWS * C, 1.0);
    head_out o = {ROWS, x, {nan_floats(m->n_params), nan_floats(m->n_params)}};
    stage_job *j = calloc(1, sizeof *j);
    *j = (stage_job){.m = m, .tp = 1, .l0 = L + 1, .l1 = L + 2, .full = full, .body = head_body,
                     .ctx = &o};
    run_world(1, stage_dev, j);
    const tm_layer_plan *p = &j->plan[0][0];
    const char *names[3] = {"ln_f.weight", "ln_f.bias", "wte"};
    for (int k = 0; k < 3; k++) {
        const tm_shard *s = &p->shard[k];
        int nonzero = 0, differ = 0;
        for (size_t e = 0; e < s->count; e++) {
            nonzero += o.grads[1][s->off + e] != 0;
            differ += o.grads[0][s->off + e] != o.grads[1][s->off + e];
        }
        cr_expect_gt(nonzero, 0, "%s has no gradient even with dx", names[k]);
        cr_expect_eq(differ, 0, "%s: %d of %zu gradients differ without dx", names[k], differ,
                     s->count);
    }
    free(full), free(x), free(o.grads[0]), free(o.grads[1]), free(j);
}

/* ---- optimizer --------------------------------------------------------- */

typedef struct {
    tm_optim_config opt;
    const float *grad2;          /* the second step's gradients (full) */
    float *params, *state[2];    /* out: after two steps (full layout, tp 1) */
} opt_out;

static int opt_body(tm_device *dev, tm_stage *s, void *job)
{
    (void)dev;
    stage_job *j = job;
    opt_out *o = j->ctx;
    tm_optimizer_step(&o->opt, s, 0.01, 1);
    tm_stage_shard_from(s, o->grad2, s->grads);
    tm_optimizer_step(&o->opt, s, 0.02, 2);
    tm_stage_shard_to(s, s->params, o->params, 1);
    for (int i = 0; i < s->n_opt_state; i++) tm_stage_shard_to(s, s->opt_state[i], o->state[i], 1);
    return TM_OK;
}

/* Two steps on one device, against the kernels called tensor by tensor
 * with the tensor's decay flag. */
static void optimizer_case(const tm_model *m, tm_optim_config opt, const char *what)
{
    size_t n = m->n_params;
    float *full = random_floats(n, 1.0), *g1 = random_floats(n, 1.0), *g2 = random_floats(n, 1.0);
    int n_state = tm_optimizer_state_count(&opt);
    opt_out o = {opt, g2, nan_floats(n), {nan_floats(n), nan_floats(n)}};
    stage_job *j = calloc(1, sizeof *j);
    *j = (stage_job){.m = m, .tp = 1, .l0 = 0, .l1 = m->n_layers, .n_opt = n_state,
                     .full = full, .full_grad = g1, .body = opt_body, .ctx = &o};
    run_world(1, stage_dev, j);

    float *st[2] = {calloc(n, 4), calloc(n, 4)};
    int decayed = 0, kept = 0;
    for (long step = 1; step <= 2; step++) {
        double lr = 0.01 * step;
        for (int i = 0; i < m->n_tensors; i++) {
            const tm_tensor *t = &m->tensors[i];
            size_t off = t->off, len = (size_t)t->shape[0] * t->shape[1];
            double wd = t->decay ? opt.weight_decay : 0;
            const float *g = (step == 1 ? g1 : g2) + off;
            if (step == 1) t->decay ? decayed++ : kept++;
            if (opt.kind == TM_OPT_ADAMW)
                tm_adamw_step(full + off, g, st[0] + off, st[1] + off, len,
                              (tm_adamw_params){lr, opt.beta1, opt.beta2, opt.eps, wd}, step);
            else
                tm_sgd_step(full + off, g, n_state ? st[0] + off : NULL, len,
                            (tm_sgd_params){lr, opt.momentum, wd}, step);
        }
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        size_t off = t->off, len = (size_t)t->shape[0] * t->shape[1];
        cr_expect(memcmp(o.params + off, full + off, len * 4) == 0,
                  "%s %s (decay %d): parameters differ from the kernel's", what, t->name,
                  t->decay);
        for (int s = 0; s < n_state; s++)
            cr_expect(memcmp(o.state[s] + off, st[s] + off, len * 4) == 0, "%s %s: %s differs",
                      what, t->name, tm_optimizer_state_name(opt.kind, s));
    }
    printf("stage: %s: %d tensors decayed, %d not\n", what, decayed, kept);
    free(full), free(g1), free(g2), free(o.params), free(o.state[0]), free(o.state[1]);
    free(st[0]), free(st[1]), free(j);
}

Test(stage, optimizer_decays_only_the_tensors_marked_for_it, .timeout = 60)
{
    /* The GPT: AdamW's decay on wte, wpe and the Linear weights, none on
     * biases and LayerNorm parameters. */
    optimizer_case(gpt_model(2, 2, 8, 5),
                   (tm_optim_config){TM_OPT_ADAMW, 0, 0.1, 0.9, 0.99, 1e-8}, "gpt adamw");
    /* The MLP decays every tensor, biases too (PyTorch's default). */
    const tm_model *mlp = mlp_model("12,16,8,10", TM_ACT_RELU);
    optimizer_case(mlp, (tm_optim_config){TM_OPT_SGD, 0.9, 5e-4, 0, 0, 0}, "mlp sgd");
    optimizer_case(mlp, (tm_optim_config){TM_OPT_SGD, 0, 5e-4, 0, 0, 0}, "mlp sgd no momentum");
    optimizer_case(mlp, (tm_optim_config){TM_OPT_ADAMW, 0, 1e-2, 0.9, 0.999, 1e-8}, "mlp adamw");
}

/* ---- the global norm ----------------------------------------------------- */

typedef struct {
    double sq[MAX_TP], scaled[MAX_TP];
} norm_out;

static int norm_body(tm_device *dev, tm_stage *s, void *job)
{
    (void)dev;
    norm_out *o = ((stage_job *)job)->ctx;
    o->sq[s->t] = tm_stage_grad_sq(s);
    tm_stage_grad_scale(s, 0.5f);
    o->scaled[s->t] = tm_stage_grad_sq(s);
    return TM_OK;
}

/* Sum over the ranks of one stage's grad_sq, against the sum of squares
 * of the full gradients of the tensors counted. */
static void norm_case(const tm_model *m, int tp, int l0, int l1, const char *what)
{
    float *g = random_floats(m->n_params, 1.0);
    norm_out o = {{0}, {0}};
    stage_job *j = calloc(1, sizeof *j);
    *j = (stage_job){.m = m, .tp = tp, .l0 = l0, .l1 = l1, .full_grad = g, .body = norm_body,
                     .ctx = &o};
    /* Large whole tensors, so that counting one twice shows. */
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].ndim == 1)
            for (int e = 0; e < m->tensors[i].shape[0]; e++) g[m->tensors[i].off + e] *= 10;
    run_world(tp, stage_dev, j);
    double want = 0, got = 0, scaled = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        if (t->layer < l0 || t->layer >= l1) continue; /* stored by another stage */
        for (size_t e = 0; e < (size_t)t->shape[0] * t->shape[1]; e++)
            want += (double)g[t->off + e] * g[t->off + e];
    }
    for (int t = 0; t < tp; t++) got += o.sq[t], scaled += o.scaled[t];
    cr_expect(fabs(got - want) <= 1e-12 * want, "%s: ranks sum %.12g, the tensors %.12g", what,
              got, want);
    cr_expect(fabs(scaled - 0.25 * got) <= 1e-12 * got, "%s: after scaling by 0.5: %.12g", what,
              scaled);
    printf("stage: %s: grad_sq %.9g over %d rank(s)\n", what, got, tp);
    free(g), free(j);
}

Test(stage, grad_sq_counts_every_parameter_once, .timeout = 60)
{
    const tm_model *mlp = mlp_model("12,16,8,10", TM_ACT_RELU);
    /* tp 2: the row layer's bias is whole on both ranks; tp 4: padding. */
    for (int tp = 1; tp <= 4; tp *= 2) {
        char what[32];
        snprintf(what, sizeof what, "mlp tp %d", tp);
        norm_case(mlp, tp, 0, 3, what);
    }
    const tm_model *gpt = gpt_model(2, 2, 8, 5);
    norm_case(gpt, 1, 0, 4, "gpt");
    /* A stage holding the head without the embedding keeps a copy of wte
     * that the embedding's stage counts. */
    norm_case(gpt, 1, 2, 4, "gpt last block and head");
}

Test(stage, clip_factor_is_pytorchs)
{
    /* torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm
     * + 1e-6), clamped to at most 1. */
    const double cases[][2] = {{2, 1}, {10, 1}, {1, 1}, {0.5, 1}, {0, 1}, {3.7, 0.25},
                               {1e-7, 1e-7}, {INFINITY, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double norm = cases[i][0], max = cases[i][1], want = fmin(max / (norm + 1e-6), 1.0);
        float got = tm_clip_factor(norm, max);
        cr_expect(fabs(got - want) <= 1e-7 * want, "norm %g max %g: %.9g, want %.9g", norm, max,
                  got, want);
    }
    cr_expect_lt(tm_clip_factor(1, 1), 1.0f, "a norm at the limit still scales by 1/(1+1e-6)");
    cr_expect_eq(tm_clip_factor(0.999, 1), 1.0f);
}
