/* The world's and its devices' insides, shared by world.c (creating the
 * devices, running them) and world_end.c (how a run ends: the first
 * failure, the deadlock watchdog, and across processes the agreement on
 * the outcome). Not part of the runtime's interface. */
#ifndef TM_WORLD_INTERNAL_H
#define TM_WORLD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "runtime/clock_internal.h"
#include "runtime/comm.h"
#include "runtime/transport.h"
#include "runtime/world.h"

struct tm_device {
    tm_world *world;
    int id;
    tm_arena *arena;
    tm_comm *comm;          /* all devices; made anew for every run */
    tm_waiter waiter;
    pthread_t thread;
    int status;             /* what fn returned in the last run */
    int prefaulted;
    atomic_int done;        /* fn has returned in this run */
    tm_vclock clock;        /* modeled time and trace events of the run */
};

struct tm_world {
    tm_world_config cfg;
    int n;
    int lo, hi;                 /* this process's devices: [lo, hi) */
    tm_mpi_world *mpi;          /* the other processes' share, or NULL */
    int spoiled;                /* a run across processes failed: the rings
                                   between them may hold half a message */
    tm_link_stats *all_links;   /* across processes: every link's traffic
                                   in the last run, gathered at its end */
    int n_all_links;
    tm_device *devices;
    _Atomic(tm_link *) *links;  /* n * n, [src * n + dst], created lazily */
    pthread_mutex_t link_lock;  /* serialises link creation only */
    size_t ring_bytes;
    atomic_size_t link_memory;
    int pinned;
    int place0, placed;         /* placement index of device lo, of all the
                                   host's devices */

    atomic_int abort;           /* raised by the first failure */
    atomic_int failed;          /* device id of the first failure, -1 none,
                                   -2 the watchdog */
    pthread_mutex_t fail_lock;  /* guards the first failure's record below
                                   (written by fail_as, read by tm__world_agree) */
    int origin;                 /* the first failure started in this process */
    int status;                 /* the first failure's status */
    char error[2048];           /* the first failure's message */

    tm_device_fn fn;
    void *arg;
    pthread_mutex_t done_lock;  /* guards n_done for done_cond */
    pthread_cond_t done_cond;
    int n_done;
};

/* Records the first failure (who: a device id, or -2 for the world itself)
 * and wakes every waiter; across processes, tells the others. */
void tm__world_fail(tm_world *w, int who, int status, const char *message);
/* Seconds on the monotonic clock. */
double tm__world_now(void);
/* The host thread's part of a run: waits for its devices, watching for a
 * deadlock meanwhile. */
void tm__world_watch(tm_world *w);
/* Across processes: every process ends the run with the same status and
 * message, every link's traffic and every device's modeled accounts. */
int tm__world_agree(tm_world *w);

#endif
