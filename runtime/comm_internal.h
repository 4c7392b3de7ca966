/* The communicator's representation, shared by comm.c and collectives.c
 * only. Thread-safety: a tm_comm belongs to its owner device thread. */
#ifndef TM_COMM_INTERNAL_H
#define TM_COMM_INTERNAL_H

#include "runtime/comm.h"

struct tm_comm {
    tm_device *dev;       /* owner */
    tm_world *world;
    tm_waiter *waiter;    /* the owner's wait state */
    int rank;             /* owner's rank in the group */
    int size;
    int *devices;         /* device id of each group rank */
    tm_link **to;         /* link owner -> rank r, looked up on first use */
    tm_link **from;       /* link rank r -> owner */
    uint32_t id;          /* same on every member; checked in each message */
    uint32_t seq;         /* collectives issued so far (same on members) */
    uint32_t splits;      /* tm_comm_split calls so far (same on members) */
    char name[16];
    void *scratch;        /* arena block (tag comm) for in-place direct
                             all-reduce, allocated on first need */
    size_t scratch_bytes;
    uint64_t sent;        /* payload bytes sent by the current collective */
    uint64_t allreduce_runs[3]; /* all-reduces run, by tm_allreduce_algo
                              (counted by the algorithm that ran) */
};

/* Link towards / from group rank r. */
int tm__comm_to(tm_comm *comm, int r, tm_link **out);
int tm__comm_from(tm_comm *comm, int r, tm_link **out);
/* Creates a comm with the given id (used by split). */
int tm__comm_create_id(tm_device *dev, const int *devices, int n, const char *name,
                       uint32_t id, tm_comm **out);

#endif
