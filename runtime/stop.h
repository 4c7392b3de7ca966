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

#endif
