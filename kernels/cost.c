#include "kernels/cost.h"

#include <stddef.h>

static _Thread_local tm_cost_hook hook_fn;
static _Thread_local void *hook_ctx;
static _Thread_local tm_cost totals;
static _Thread_local int dry;

void tm_cost_set_hook(tm_cost_hook hook, void *ctx)
{
    hook_fn = hook;
    hook_ctx = ctx;
}

tm_cost tm_cost_totals(void) { return totals; }

void tm_cost_reset(void) { totals = (tm_cost){0, 0}; }

void tm_cost_set_dry(int on) { dry = on != 0; }

int tm_cost_dry(void) { return dry; }

void tm__cost_charge(double flops, double bytes)
{
    totals.flops += flops;
    totals.bytes += bytes;
    if (hook_fn != NULL) hook_fn(hook_ctx, flops, bytes);
}
