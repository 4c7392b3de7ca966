/* For the runtime suites: device buffers fenced by sentinel guards, and a
 * log of what the devices found wrong, reported from the test's own thread.
 * Thread-safety: a guarded buffer belongs to the device thread that made it;
 * any device thread may log a finding, and the test's thread reports them
 * after tm_world_run has joined the devices. */
#ifndef TM_TEST_GUARDED_H
#define TM_TEST_GUARDED_H

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "runtime/world.h"

/* Floats of guard on each side of a buffer: more than the widest store of
 * any element loop (16 floats), so a loop that runs one block too far
 * lands in a guard. */
#define GUARD_FLOATS 32

/* Guard patterns: signalling NaNs, one for inputs and one for outputs.
 * Arithmetic on a signalling NaN returns a quiet one, and a copy keeps the
 * bits, so an overrun that adds or copies a guard of one buffer into the
 * guard of another still changes the latter's bits. */
#define GUARD_IN 0x7f9a5a5au
#define GUARD_OUT 0x7fa5a5a5u

typedef struct {
    float *base;   /* the allocation */
    float *p;      /* the buffer: `count` floats after the front guard */
    size_t count;
    size_t front;  /* floats of guard before p (GUARD_FLOATS + skew) */
    uint32_t bits; /* the guard pattern */
} guarded;

static inline void guard_fill(float *p, size_t n, uint32_t bits)
{
    for (size_t i = 0; i < n; i++) memcpy(p + i, &bits, sizeof bits);
}

/* `count` floats starting `skew` floats past a TM_ARENA_ALIGN boundary,
 * guarded on both sides and filled with the pattern `bits` (so a float the
 * operation never writes is still a guard value). Returns the buffer, or
 * NULL when the arena is full (its report recorded, as tm_device_alloc). */
static inline float *guarded_alloc(tm_device *dev, guarded *g, size_t count, size_t skew,
                                   uint32_t bits)
{
    g->count = count;
    g->front = GUARD_FLOATS + skew;
    g->bits = bits;
    g->base = tm_device_alloc(dev, (g->front + count + GUARD_FLOATS) * sizeof(float),
                              TM_TAG_WORKSPACE);
    if (g->base == NULL) return NULL;
    g->p = g->base + g->front;
    guard_fill(g->base, g->front + count + GUARD_FLOATS, bits);
    return g->p;
}

static inline void guarded_free(tm_device *dev, guarded *g) { tm_device_free(dev, g->base); }

/* Whether p[0] still holds the guard pattern. */
static inline int guard_intact(const float *p, uint32_t bits)
{
    uint32_t got;
    memcpy(&got, p, sizeof got);
    return got == bits;
}

/* What the devices of one run found wrong: every finding counts, the first
 * FINDINGS_SHOWN are kept with their message so that a broken collective
 * does not flood the output. */
#define FINDINGS_SHOWN 8

typedef struct {
    atomic_int count;
    char shown[FINDINGS_SHOWN][160];
} findings;

static inline void found(findings *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void found(findings *f, const char *fmt, ...)
{
    int k = atomic_fetch_add(&f->count, 1);
    if (k >= FINDINGS_SHOWN) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->shown[k], sizeof f->shown[k], fmt, ap);
    va_end(ap);
}

/* Logs every guard float of g that changed; `what` names the buffer. */
static inline void guards_check(findings *f, int device, const char *what, const guarded *g)
{
    size_t back = g->front + g->count;
    for (size_t i = 0; i < g->front; i++)
        if (!guard_intact(g->base + i, g->bits))
            found(f, "device %d: %s: guard float %zu before the start changed", device, what,
                  g->front - i);
    for (size_t i = 0; i < GUARD_FLOATS; i++)
        if (!guard_intact(g->base + back + i, g->bits))
            found(f, "device %d: %s: guard float %zu after the end (count %zu) changed", device,
                  what, i, g->count);
}

/* Logs p[i] != want (compared as values; a guard NaN never equals). */
static inline void value_check(findings *f, int device, const char *what, const float *p,
                               size_t i, float want)
{
    if (p[i] != want)
        found(f, "device %d: %s[%zu] = %g, want %g", device, what, i, (double)p[i],
              (double)want);
}

/* From the test's thread, after the run: one failed check per kept finding
 * and one for the total, all under the label `ctx`. Clears the log. */
static inline void findings_report(findings *f, const char *ctx)
{
    int n = atomic_load(&f->count);
    for (int k = 0; k < n && k < FINDINGS_SHOWN; k++) cr_expect_fail("%s: %s", ctx, f->shown[k]);
    cr_expect_eq(n, 0, "%s: %d wrong values or guards%s", ctx, n,
                 n > FINDINGS_SHOWN ? " (the first ones shown above)" : "");
    atomic_store(&f->count, 0);
}

#endif
