#include "strategies/offload.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/bf16.h"
#include "kernels/cost.h"
#include "runtime/clock.h"
#include "runtime/status.h"

struct tm_offload {
    tm_device *dev;
    tm_arena *arena;                /* host memory, capped by --host-mem-cap */
    float *state[TM_OPT_MAX_STATE]; /* (n) tag host */
    int n_state;
    float *masters;                 /* (n) tag host: bf16 runs' fp32 weights, or NULL */
    uint64_t bytes;                 /* across the host link, both ways */
    double seconds;                 /* modeled time of those copies */
};

int tm_offload_parse(const char *name, tm_offload_kind *out)
{
    if (strcmp(name, "none") == 0) *out = TM_OFFLOAD_NONE;
    else if (strcmp(name, "optimizer") == 0) *out = TM_OFFLOAD_OPTIMIZER;
    else return -1;
    return 0;
}

const char *tm_offload_name(tm_offload_kind kind)
{
    return kind == TM_OFFLOAD_OPTIMIZER ? "optimizer" : "none";
}

int tm_offload_on_host(tm_offload_kind kind, int bf16, tm_tag tag)
{
    return kind == TM_OFFLOAD_OPTIMIZER &&
           (tag == TM_TAG_OPTIMIZER || (bf16 && tag == TM_TAG_PARAM));
}

int tm_offload_create(tm_offload **out, tm_device *dev, size_t cap, int n_state, size_t n,
                      int masters)
{
    tm_offload *o = calloc(1, sizeof *o);
    *out = o;
    if (o == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the offload's tables");
    o->dev = dev;
    TM_CHECK(tm_arena_create(&o->arena, cap, tm_device_id(dev)));
    for (int i = 0; i < n_state; i++) {
        o->state[i] = tm_arena_alloc(o->arena, n * sizeof(float), TM_TAG_HOST);
        if (o->state[i] == NULL)
            return tm_error(TM_EINVAL, "--host-mem-cap is too small for device %d's optimizer "
                            "state (%d buffers of %zu bytes)", tm_device_id(dev), n_state,
                            n * sizeof(float));
        if (!tm_cost_dry()) memset(o->state[i], 0, n * sizeof(float));
        o->n_state = i + 1;
    }
    if (!masters) return TM_OK;
    if ((o->masters = tm_arena_alloc(o->arena, n * sizeof(float), TM_TAG_HOST)) == NULL)
        return tm_error(TM_EINVAL, "--host-mem-cap is too small for device %d's fp32 master "
                        "weights (%zu bytes) beside its optimizer state", tm_device_id(dev),
                        n * sizeof(float));
    if (!tm_cost_dry()) memset(o->masters, 0, n * sizeof(float));
    return TM_OK;
}

void tm_offload_destroy(tm_offload *o)
{
    if (o == NULL) return;
    for (int i = 0; i < o->n_state; i++) tm_arena_free(o->arena, o->state[i]);
    tm_arena_free(o->arena, o->masters);
    tm_arena_destroy(o->arena);
    free(o);
}

void tm_offload_state(const tm_offload *o, float **state)
{
    for (int i = 0; i < TM_OPT_MAX_STATE; i++) state[i] = i < o->n_state ? o->state[i] : NULL;
}

float *tm_offload_masters(const tm_offload *o) { return o->masters; }

/* One copy over the host link of n elements of size bytes each: its bytes
 * and the modeled time it took. */
static void host_link(tm_offload *o, size_t n, size_t size)
{
    tm_clock_stats a, b;
    double bytes = (double)n * (double)size;
    tm_clock_stats_get(o->dev, &a);
    tm_clock_host_copy(o->dev, bytes);
    tm_clock_stats_get(o->dev, &b);
    o->bytes += (uint64_t)bytes;
    o->seconds += b.now - a.now;
}

void tm_offload_grads_out(tm_offload *o, size_t n) { host_link(o, n, sizeof(float)); }

void tm_offload_params_back(tm_offload *o, size_t n)
{
    host_link(o, n, o->masters != NULL ? sizeof(tm_bf16) : sizeof(float));
}

uint64_t tm_offload_bytes(const tm_offload *o) { return o->bytes; }
double tm_offload_seconds(const tm_offload *o) { return o->seconds; }

void tm_offload_stats(const tm_offload *o, tm_arena_stats *out)
{
    tm_arena_stats_get(o->arena, out);
}

void tm_offload_reset_peak(tm_offload *o) { tm_arena_reset_peak(o->arena); }
