/* The modeled clock's per-device state and the hooks the runtime's
 * communication code calls. Private to runtime/. */
#ifndef TM_CLOCK_INTERNAL_H
#define TM_CLOCK_INTERNAL_H

#include "runtime/clock.h"
#include "runtime/link.h"

typedef struct {
    const tm_clock_config *cfg;
    int id;
    tm_clock_stats s;
    int async;
    char phase;
    int stage, mb;
    /* Recording. */
    int recording;
    double wall0;          /* wall time the run started */
    double wall_mark;      /* wall time the next compute event starts */
    tm_event *events;
    size_t n_events, cap_events;
    size_t last_compute;   /* index + 1 of the last compute event, 0: none */
    size_t dropped;        /* events lost for want of host memory */
    char name[48];
} tm_vclock;

/* Called by the world: at the start of every run, and when it is destroyed. */
void tm__clock_init(tm_vclock *c, const tm_clock_config *cfg, int id, double wall0);
void tm__clock_free(tm_vclock *c);
tm_vclock *tm__device_clock(tm_device *dev);
const tm_vclock *tm__world_clock(const tm_world *world, int id);

/* A collective or send begins on the communication engine: returns its
 * start time. */
double tm__clock_comm_begin(tm_vclock *c);
/* A message of `bytes` leaves on link l at engine time *t: *t becomes the
 * end of its transmission; returns its arrival time. */
double tm__clock_send(tm_vclock *c, tm_link *l, size_t bytes, double *t);
/* The collective that began at `start` ends at `end`; the compute engine
 * waits for it unless asynchronous. */
void tm__clock_comm_end(tm_vclock *c, double start, double end, const char *name,
                        const char *comm, uint64_t bytes, uint64_t sent);
/* A point-to-point send begins on the copy engine: returns its start. */
double tm__clock_send_begin(tm_vclock *c);
/* The send that began at `start` ends at `end`: the compute engine does not
 * wait for it (the bytes are in the ring). */
void tm__clock_send_end(tm_vclock *c, double start, double end, const char *comm,
                        uint64_t bytes);
/* The compute engine receives a message of `bytes` from src arriving at
 * `arrival`: it waits for it if needed. */
void tm__clock_recv(tm_vclock *c, int src, double arrival, const char *comm, uint64_t bytes);

#endif
