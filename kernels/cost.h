/* Kernel cost reporting: every kernel tells a per-thread hook how many FLOPs
 * it performed and how many bytes it moved (the runtime's modeled clock and
 * MFU figures listen there). Thread-safe: hook and totals are per thread. */
#ifndef TM_COST_H
#define TM_COST_H

/* Called once per kernel invocation with its FLOPs and bytes moved. */
typedef void (*tm_cost_hook)(void *ctx, double flops, double bytes);

/* Installs hook (NULL removes it) for the calling thread. */
void tm_cost_set_hook(tm_cost_hook hook, void *ctx);

typedef struct {
    double flops; /* floating-point operations (an FMA counts as 2) */
    double bytes; /* bytes read plus bytes written, counted once each */
} tm_cost;

/* The calling thread's running totals since the last tm_cost_reset(). */
tm_cost tm_cost_totals(void);
void tm_cost_reset(void);

/* Cost only (a dry run): while the calling thread's switch is on, every
 * kernel charges the FLOPs and bytes it charges when it computes and
 * returns without computing; what it would write keeps what it held (a
 * loss or a count comes back 0). The modeled clock depends only on these
 * charges and the program's order, so a dry step's modeled time is a real
 * step's. Off by default. */
void tm_cost_set_dry(int on);
int tm_cost_dry(void);

/* For kernels: adds to the totals and calls the thread's hook. */
void tm__cost_charge(double flops, double bytes);

#endif
