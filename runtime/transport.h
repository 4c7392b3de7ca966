/* Transports: how the two ends of a link reach each other, a small function
 * table in the manner of NCCL's ncclTransport. Every transport hands a
 * device the same ring (runtime/link.h), so the collectives never know
 * which one carries their bytes; what differs is where the ring lives and
 * who moves its bytes:
 *   ring  both devices in this process: a ring in process memory;
 *   shm   two processes of one host: a ring in an MPI-3 shared-memory
 *         window both map, written and read in place as the first;
 *   mpi   two hosts (or any pair with TM_TRANSPORT=mpi): a ring at each
 *         end, and a progress thread per process that carries the bytes
 *         between them with nonblocking MPI sends and receives.
 * Private to runtime/. Thread-safety: connect may be called by any device
 * thread (the world serialises it); disconnect only when no run is going. */
#ifndef TM_TRANSPORT_H
#define TM_TRANSPORT_H

#include <stddef.h>

#include "runtime/link.h"
#include "runtime/world.h"

typedef struct tm_transport {
    const char *name;
    /* This process's handle on the link src -> dst, one of whose ends is
     * a device of this process. TM_OK, or TM_EHOSTMEM with a message. */
    int (*connect)(tm_world *w, int src, int dst, tm_link **out);
    void (*disconnect)(tm_world *w, tm_link *link);
} tm_transport;

extern const tm_transport tm__transport_ring;

/* A world's share of the job when it spans processes (runtime/mpi.c). */
typedef struct tm_mpi_world tm_mpi_world;

/* Collective over the job's processes, in the same order in each: the
 * shared-memory window of the world's links between processes of one host
 * and the communicators of its point-to-point links. */
int tm__mpi_world_create(tm_world *w, int n_devices, size_t ring_bytes, tm_mpi_world **out);
void tm__mpi_world_destroy(tm_mpi_world *m);
/* The transport between two devices of which at least one is remote. */
const tm_transport *tm__mpi_transport(tm_mpi_world *m, int src, int dst);
/* A failure that started in this process: every other process hears of it
 * (through the progress thread) and aborts its devices. Any thread. */
void tm__mpi_abort(tm_mpi_world *m, int who, int status, const char *message);
/* This process's word in the run's stop agreement, for every other process
 * (through the progress thread). Any thread; at most once per world. */
void tm__mpi_stop_tell(tm_mpi_world *m, const tm_stop_word *word);
/* Every process's `bytes` at `mine`, in process order, into all (P x
 * bytes). Collective; it waits sleeping, so a process that is still
 * computing keeps its cores. TM_OK or TM_ESYS. */
int tm__mpi_allgather(tm_mpi_world *m, const void *mine, size_t bytes, void *all);
/* The same with a size per process: *out (malloc'd) holds every process's
 * bytes in order, counts[p] of them from process p. */
int tm__mpi_allgatherv(tm_mpi_world *m, const void *mine, size_t bytes, void **out,
                       size_t *counts);

/* This process's index among the processes of its host, and their count
 * (0 and 1 with one process), for thread placement. */
void tm__process_host_slot(int *index, int *count);

/* World hooks for the transports. */
tm_mpi_world *tm__world_mpi(tm_world *w);
size_t tm__world_ring(const tm_world *w);
/* A failure reported by another process: aborts this one's devices. */
void tm__world_fail_remote(tm_world *w, int who, int status, const char *message);
/* Another process's word in the stop agreement of the world's run. */
void tm__world_stop_heard(tm_world *w, const tm_stop_word *word);

#endif
