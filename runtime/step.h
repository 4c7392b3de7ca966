/* One step of a collective algorithm over links: a message received,
 * combined with local data, stored and forwarded, with its header checked
 * and its modeled time kept. Private to runtime/ (collectives.c, p2p.c).
 * Thread-safety: called by the communicator's owner thread. */
#ifndef TM_STEP_H
#define TM_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/comm_internal.h"

typedef enum {
    OP_ALLREDUCE = 1,
    OP_ALLGATHER,
    OP_REDUCE_SCATTER,
    OP_BROADCAST,
    OP_BARRIER,
    OP_P2P,
} op_kind;

/* One step of an algorithm: optionally receive a message from `in`, combine
 * it with `local`, store the result in `dst` and forward it to `out` — the
 * primitives of NCCL's ring (send, recv-reduce-send, recv-reduce-copy-send,
 * recv-copy-send, recv) are the combinations of these fields. */
typedef struct {
    tm_link *in;           /* receive from (NULL: nothing received) */
    tm_link *out;          /* send to (NULL: nothing sent) */
    int in_rank, out_rank; /* group ranks of the peers, for messages */
    const void *local;     /* added to the received data when reduce, else
                              the data sent when nothing is received */
    void *dst;             /* result stored here (NULL: not stored) */
    size_t bytes;
    int reduce;            /* result = received + local (float32) */
    float scale;           /* result *= scale when != 1 (avg, last step) */
    int nt;                /* non-temporal stores into dst */
    int indep;             /* what is sent does not depend on what is
                              received (modeled time: sent before) */
} step;

const char *tm__op_name(uint32_t kind);
/* Sends the step's header on s->out: the message leaves at engine time *t,
 * which becomes the end of its transmission (runtime/clock.h). */
int tm__step_send_header(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *t);
/* Reads the next header from s->in and checks it against what the step
 * expects (TM_EINVAL naming both sides); *arrival: its modeled arrival. */
int tm__step_recv_header(tm_comm *c, uint32_t kind, uint32_t seq, const step *s,
                         double *arrival);
/* Moves bytes [from, to) of the step's message through the links. */
int tm__step_transfer(tm_comm *c, const step *s, size_t from, size_t to);
/* The whole step: headers, payload and padding; *t is the communication
 * engine's modeled time, advanced past the step. */
int tm__step_run(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *t);

#endif
