#include "strategies/layer.h"

#include <string.h>

#include "kernels/cost.h"
#include "runtime/clock.h"
#include "runtime/collectives.h"
#include "strategies/model.h"

size_t tm_shard_count(const tm_tensor *t, const tm_shard *s)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    if (s->dim == TM_SHARD_ROWS) return (size_t)t->groups * (size_t)s->len * cols;
    if (s->dim == TM_SHARD_COLS) return rows * (size_t)s->len;
    return rows * cols;
}

void tm_layer_zero(const tm_layer_ctx *c, float *p, size_t n)
{
    if (!tm_cost_dry()) memset(p, 0, n * sizeof(float));
    tm_clock_charge(c->dev, 0, 4.0 * (double)n);
}

void tm_layer_copy(const tm_layer_ctx *c, float *dst, const float *src, size_t n)
{
    if (!tm_cost_dry()) memcpy(dst, src, n * sizeof(float));
    tm_clock_charge(c->dev, 0, 8.0 * (double)n);
}

double tm_allreduce_send_bytes(tm_comm *comm, size_t count)
{
    int n = tm_comm_size(comm);
    double bytes = (double)count * sizeof(float);
    if (n == 1 || count == 0) return 0;
    return tm_allreduce_algo_for(comm, count) == TM_ALGO_DIRECT ? (n - 1) * bytes
                                                                : 2.0 * (n - 1) / n * bytes;
}

int tm_recompute_parse(const char *name, tm_recompute *out)
{
    static const tm_recompute all[] = {TM_RECOMPUTE_NONE, TM_RECOMPUTE_FULL,
                                       TM_RECOMPUTE_SELECTIVE};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(name, tm_recompute_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -1;
}

const char *tm_recompute_name(tm_recompute r)
{
    return r == TM_RECOMPUTE_FULL ? "full" : r == TM_RECOMPUTE_SELECTIVE ? "selective" : "none";
}

int tm_layer_recomputed(const tm_layer_plan *p, int rows)
{
    return p->model->recompute == TM_RECOMPUTE_FULL && p->layer->kind->saved_floats(p, rows) > 0;
}

double tm_layer_tp_bytes(const tm_layer_plan *p, tm_comm *tp_comm, int rows, int din)
{
    double b = p->layer->kind->tp_bytes(p, tp_comm, rows, din);
    if (tm_layer_recomputed(p, rows)) b += p->layer->kind->tp_forward_bytes(p, tp_comm, rows);
    return b;
}
