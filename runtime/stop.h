/* Where the devices of a run stop early: an agreement kept by the host,
 * outside the modeled devices (no device memory, no link, no modeled time,
 * no traffic), so that a signal or one device's finding stops every device
 * after the same step and no collective is left waiting for a member.
 * Thread-safety: every function but create and destroy may be called from
 * any thread at once; the lock is held only inside them, never nested. */
#ifndef TM_STOP_H
#define TM_STOP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tm_stop tm_stop;

/* For a run whose steps are numbered from 1 and of which steps up to `done`
 * are behind it (0 for a fresh run, the checkpoint's step after a resume).
 * `request`, when not NULL, is read at every step: non-zero asks for a stop
 * (a signal handler may set it; it is only read here). TM_OK or
 * TM_EHOSTMEM. */
int tm_stop_create(tm_stop **out, long done, const atomic_int *request);
/* NULL is a no-op. */
void tm_stop_destroy(tm_stop *s);

/* A device calls this before each step, its steps in increasing order: 1
 * to take `step`, 0 to stop before it. Once a stop is asked for, the first
 * caller fixes the stop: no step from one past the largest step any device
 * has been allowed to start. Devices may be several steps apart (a device
 * waits only for the neighbours it talks to), and this way every device
 * finishes exactly the steps some device had begun, and no more. */
int tm_stop_begin(tm_stop *s, long step);

/* Asks for a stop after the steps already begun, for a reason found at
 * `step` (why: one line, copied). The reason of the lowest step is kept. */
void tm_stop_fail(tm_stop *s, long step, const char *why);

/* The step of the kept reason, and the reason into why (n bytes), or 0
 * when no device failed. */
long tm_stop_failed(tm_stop *s, char *why, size_t n);

/* The first step no device takes, or 0 while no stop has taken effect. */
long tm_stop_step(tm_stop *s);

/* The request's value that asked for the stop (a signal number), and the
 * process in which it was asked (0 with one process); 0 and -1 when no
 * request asked (a failure, or no stop). */
int tm_stop_requested(tm_stop *s, int *process);

/* Across processes (runtime/process.h): the devices of a run live in
 * several processes, each with its own tm_stop, which agree on one stop
 * step. A process that sees a stop asked (its request, a failure, or
 * another process's word) freezes its frontier — the largest step its
 * devices have been allowed — and tells it, once, to every other process;
 * when all frontiers are known, the stop is one past the largest, the same
 * everywhere. Meanwhile a device that would begin a step past its
 * process's frontier waits (sleeping) for the agreement, or for *abort
 * (then it stops). */
typedef struct {
    int32_t process;   /* who tells */
    int32_t request;   /* the request's value if its request asked, else 0 */
    int64_t started;   /* its frozen frontier */
    int64_t failed;    /* the step of its kept failure, 0 none */
    char why[256];     /* that failure's reason */
} tm_stop_word;
typedef void (*tm_stop_tell_fn)(void *ctx, const tm_stop_word *word);
/* Before any device of the run begins a step. `tell` is called at most
 * once, from a thread that holds the stop's lock: it must only queue the
 * word. */
void tm_stop_span(tm_stop *s, int processes, int me, tm_stop_tell_fn tell, void *ctx,
                  const atomic_int *abort);
/* Another process's word (from whichever thread receives it). */
void tm_stop_heard(tm_stop *s, const tm_stop_word *word);

#endif
