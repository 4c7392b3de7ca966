#include "strategies/layer.h"

#include <string.h>

#include "runtime/clock.h"
#include "runtime/collectives.h"

size_t tm_shard_count(const tm_tensor *t, const tm_shard *s)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    if (s->dim == TM_SHARD_ROWS) return (size_t)t->groups * (size_t)s->len * cols;
    if (s->dim == TM_SHARD_COLS) return rows * (size_t)s->len;
    return rows * cols;
}

void tm_layer_zero(const tm_layer_ctx *c, float *p, size_t n)
{
    memset(p, 0, n * sizeof(float));
    tm_clock_charge(c->dev, 0, 4.0 * (double)n);
}

void tm_layer_copy(const tm_layer_ctx *c, float *dst, const float *src, size_t n)
{
    memcpy(dst, src, n * sizeof(float));
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
