/* The planner's search (strategies/planner.h): enumerate, predict the
 * memory, dry-run what fits, rank. */
#include "strategies/planner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/arena.h"
#include "runtime/status.h"

void tm_plan_models(tm_plan_request *req, tm_model variants[2][3], const tm_model *m,
                    const tm_model *m_sp)
{
    for (int sp = 0; sp < 2; sp++) {
        const tm_model *base = sp ? m_sp : m;
        for (int r = 0; r < 3; r++) {
            req->models[sp][r] = NULL;
            if (base == NULL || (r == TM_RECOMPUTE_SELECTIVE && strcmp(base->family, "gpt") != 0))
                continue;
            variants[sp][r] = *base;
            variants[sp][r].recompute = (tm_recompute)r;
            req->models[sp][r] = &variants[sp][r];
        }
    }
}

tm_train_config tm_plan_config(const tm_plan_request *req, const tm_plan_point *pt)
{
    tm_train_config c = *req->recipe;
    c.model = req->models[pt->sp][pt->recompute];
    c.dp = pt->dp;
    c.pp = pt->pp;
    c.tp = pt->tp;
    c.zero = pt->zero;
    c.schedule = pt->schedule;
    c.virtual_stages = pt->virtual_stages;
    c.micro_batches = pt->micro_batches;
    c.precision = pt->precision;
    c.offload = pt->offload;
    c.host_mem_cap = pt->offload != TM_OFFLOAD_NONE ? req->host_mem_cap : 0;
    c.batch = req->batch;
    c.mem_cap = req->mem_cap;
    c.epochs = 1;
    c.max_steps = TM_PLAN_STEP;
    c.eval_every = 0;
    return c;
}

void tm_plan_flags(const tm_plan_point *pt, char *buf, size_t n)
{
    int k = snprintf(buf, n, "--dp %d --pp %d --tp %d", pt->dp, pt->pp, pt->tp);
#define ADD(...)                                                                    \
    do {                                                                            \
        if (k >= 0 && (size_t)k < n) k += snprintf(buf + k, n - (size_t)k, __VA_ARGS__); \
    } while (0)
    if (pt->micro_batches > 1) ADD(" --micro-batches %d", pt->micro_batches);
    if (pt->pp > 1 && pt->schedule != TM_SCHED_1F1B)
        ADD(" --schedule %s", tm_schedule_kind_name(pt->schedule));
    if (pt->virtual_stages > 1) ADD(" --virtual-stages %d", pt->virtual_stages);
    if (pt->sp) ADD(" --sequence-parallel");
    if (pt->recompute != TM_RECOMPUTE_NONE) ADD(" --recompute %s", tm_recompute_name(pt->recompute));
    if (pt->zero > 0) ADD(" --zero %d", pt->zero);
    if (pt->precision != TM_PRECISION_FP32) ADD(" --precision %s", tm_precision_name(pt->precision));
    if (pt->offload != TM_OFFLOAD_NONE) ADD(" --offload optimizer");
#undef ADD
}

/* Calls visit for every remedy of one mesh, micro-batch count and
 * schedule (pt's settings from the mesh to the virtual stages): sequence
 * parallelism, recomputation, ZeRO, precision, offload. */
static int each_remedy(const tm_plan_request *req, tm_plan_point pt,
                       int (*visit)(void *ctx, const tm_plan_point *pt), void *ctx)
{
    for (pt.sp = 0; pt.sp < (pt.tp > 1 ? 2 : 1); pt.sp++)
        for (int r = 0; r < 3; r++) {
            if (req->models[pt.sp][r] == NULL) continue;
            pt.recompute = (tm_recompute)r;
            for (pt.zero = 0; pt.zero < (pt.dp > 1 ? 4 : 1); pt.zero++)
                for (int pr = 0; pr < 2; pr++) {
                    if (!(req->precisions & (1 << pr))) continue;
                    pt.precision = (tm_precision)pr;
                    for (int o = 0; o < (req->host_mem_cap > 0 ? 2 : 1); o++) {
                        pt.offload = o ? TM_OFFLOAD_OPTIMIZER : TM_OFFLOAD_NONE;
                        int st = visit(ctx, &pt);
                        if (st != 0) return st;
                    }
                }
        }
    return 0;
}

/* Calls visit for every point of the space on `devices` devices (before
 * any check); stops at the first non-zero return and returns it. */
static int each_point(const tm_plan_request *req, int devices,
                      int (*visit)(void *ctx, const tm_plan_point *pt), void *ctx)
{
    for (int dp = 1; dp <= devices; dp++) {
        if (devices % dp != 0 || req->batch % dp != 0) continue;
        for (int tp = 1; tp <= devices / dp; tp++) {
            if ((devices / dp) % tp != 0) continue;
            int pp = devices / dp / tp, per = req->batch / dp;
            for (int m = 1; m <= per && m <= TM_SCHEDULE_MAX_MB; m++) {
                /* Micro-batches: the divisors of the replica's batch that
                 * are powers of two or multiples of the stages. */
                if (per % m != 0 || ((m & (m - 1)) != 0 && m % pp != 0)) continue;
                for (int s = 0; s < (pp > 1 ? TM_SCHEDULE_KINDS : 1); s++) {
                    /* Virtual stages: every count; tm_train_check keeps
                     * those the schedule and the model allow. */
                    for (int v = 1; v <= (pp > 1 ? TM_SCHEDULE_MAX_VIRTUAL : 1); v++) {
                        tm_plan_point pt = {dp, pp, tp, m, 0, 0,
                                            pp > 1 ? (tm_schedule_kind)s : TM_SCHED_1F1B,
                                            TM_RECOMPUTE_NONE, TM_PRECISION_FP32,
                                            TM_OFFLOAD_NONE, v};
                        int st = each_remedy(req, pt, visit, ctx);
                        if (st != 0) return st;
                    }
                }
            }
        }
    }
    return 0;
}

typedef struct {
    const tm_plan_request *req;
    tm_plan_point *list;
    int n, cap;
} collect_ctx;

static int collect(void *ctx, const tm_plan_point *pt)
{
    collect_ctx *c = ctx;
    tm_train_config cfg = tm_plan_config(c->req, pt);
    if (tm_train_check(&cfg, c->req->train) != TM_OK) return 0;
    if (c->n == c->cap) {
        int cap = c->cap > 0 ? 2 * c->cap : 256;
        tm_plan_point *l = realloc(c->list, sizeof *l * (size_t)cap);
        if (l == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the candidates");
        c->list = l;
        c->cap = cap;
    }
    c->list[c->n++] = *pt;
    return 0;
}

int tm_plan_points(const tm_plan_request *req, tm_plan_point **out, int *n)
{
    collect_ctx c = {req, NULL, 0, 0};
    int st = each_point(req, req->devices, collect, &c);
    if (st != TM_OK) {
        free(c.list);
        return st;
    }
    *out = c.list;
    *n = c.n;
    return TM_OK;
}

/* The predicted peaks of k, and whether it fits the caps. */
static int predict(const tm_plan_request *req, tm_plan_candidate *k)
{
    tm_train_config cfg = tm_plan_config(req, &k->pt);
    int n = cfg.pp * cfg.tp;
    tm_memory_prediction *pred = malloc(sizeof *pred * (size_t)n);
    if (pred == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the prediction");
    int st = tm_train_predict_memory(&cfg, req->train, pred);
    for (int i = 0; st == TM_OK && i < n; i++) {
        if (pred[i].peak > k->peak) k->peak = pred[i].peak;
        if (pred[i].tag[TM_TAG_HOST] > k->host_peak) k->host_peak = pred[i].tag[TM_TAG_HOST];
    }
    free(pred);
    k->need = k->peak;
    k->fits = k->peak <= req->mem_cap &&
              (k->pt.offload == TM_OFFLOAD_NONE || k->host_peak <= req->host_mem_cap);
    return st;
}

static void on_step(void *ctx, const tm_step_info *info)
{
    double *step_s = ctx;
    if (info->step == TM_PLAN_STEP) *step_s = info->modeled_step_s;
}

/* The dry run of a fitting candidate: its step time, bubble and traffic. */
static int dry_run(const tm_plan_request *req, tm_plan_candidate *k)
{
    tm_train_config cfg = tm_plan_config(req, &k->pt);
    cfg.dry_run = 1;
    cfg.trace_first = TM_PLAN_STEP; /* the traffic accounts of that step */
    cfg.ctx = &k->step_s;
    cfg.on_step = on_step;
    tm_train_result r;
    char err[2048];
    int st = tm_train(&cfg, req->train, req->train, &r, err, sizeof err);
    if (st == TM_ENOMEM) {
        /* Three groups (data, tensor parallel, tied embeddings), one small
         * copy each at most. */
        k->fits = 0;
        k->oom = 1;
        k->need = k->peak + 3 * tm_arena_block_bytes(16 << 10);
        tm_train_result_free(&r);
        return TM_OK;
    }
    if (st != TM_OK) {
        char flags[256];
        tm_plan_flags(&k->pt, flags, sizeof flags);
        tm_train_result_free(&r);
        return tm_error(st, "the dry run of %s failed: %s", flags, err);
    }
    k->bubble = r.bubble;
    for (int i = 0; i < r.n_devices; i++) {
        if (r.devices[i].memory.peak > k->dry_peak) k->dry_peak = r.devices[i].memory.peak;
        for (int d = 0; d < TM_DIMS; d++) k->sent[d] += (double)r.devices[i].step_sent[d];
        k->host_bytes += (double)r.devices[i].step_host;
    }
    tm_train_result_free(&r);
    return TM_OK;
}

/* 2 dry-run, 1 dominated, 0 not fitting. */
static int group(const tm_plan_candidate *k) { return k->fits ? 2 - k->dominated : 0; }

static int by_rank(const void *a, const void *b)
{
    const tm_plan_candidate *x = a, *y = b;
    if (group(x) != group(y)) return group(y) - group(x);
    if (group(x) == 2 && x->step_s != y->step_s) return x->step_s < y->step_s ? -1 : 1;
    if (x->need != y->need) return x->need < y->need ? -1 : 1;
    /* The enumeration's order among equals (qsort is not stable). */
    return x->order - y->order;
}

int tm_plan_search(const tm_plan_request *req, tm_plan_candidate **out, int *n)
{
    tm_plan_point *points;
    int n_points;
    TM_CHECK(tm_plan_points(req, &points, &n_points));
    struct {
        tm_plan_candidate *list;
        int n;
    } c = {calloc(n_points > 0 ? (size_t)n_points : 1, sizeof(tm_plan_candidate)), n_points};
    if (c.list == NULL) {
        free(points);
        return tm_error(TM_EHOSTMEM, "cannot allocate the candidates");
    }
    for (int i = 0; i < c.n; i++) {
        c.list[i].pt = points[i];
        c.list[i].order = i;
        c.list[i].bubble = -1;
    }
    free(points);
    int st = TM_OK, fitting = 0;
    for (int i = 0; st == TM_OK && i < c.n; i++) {
        st = predict(req, &c.list[i]);
        fitting += c.list[i].fits;
    }
    /* In the enumeration's order, so that the plain twin of a point with
     * recomputation or offload (the same point without either, enumerated
     * before it) has had its dry run: the point is dominated when the twin
     * still fits after it. */
    for (int i = 0, done = 0; st == TM_OK && i < c.n; i++) {
        tm_plan_candidate *k = &c.list[i];
        if (!k->fits) continue;
        if (k->pt.recompute != TM_RECOMPUTE_NONE || k->pt.offload != TM_OFFLOAD_NONE) {
            tm_plan_point plain = k->pt;
            plain.recompute = TM_RECOMPUTE_NONE;
            plain.offload = TM_OFFLOAD_NONE;
            for (int j = 0; j < i && !k->dominated; j++)
                k->dominated = c.list[j].fits && memcmp(&c.list[j].pt, &plain, sizeof plain) == 0;
        }
        if (!k->dominated) st = dry_run(req, k);
        if (req->progress != NULL) req->progress(req->ctx, ++done, fitting);
    }
    if (st != TM_OK) {
        free(c.list);
        return st;
    }
    if (c.n > 0) qsort(c.list, (size_t)c.n, sizeof *c.list, by_rank);
    *out = c.list;
    *n = c.n;
    return TM_OK;
}

static int any_valid(void *ctx, const tm_plan_point *pt)
{
    const tm_plan_request *req = ctx;
    tm_train_config cfg = tm_plan_config(req, pt);
    return tm_train_check(&cfg, req->train) == TM_OK;
}

int tm_plan_any_valid(const tm_plan_request *req, int devices)
{
    return each_point(req, devices, any_valid, (void *)req) != 0;
}
