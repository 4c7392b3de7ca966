/* Collectives on communicators with MPI/NCCL semantics on float32 (and raw
 * point-to-point bytes), built on link primitives: ring all-reduce, a direct
 * latency-oriented all-reduce, all-gather, reduce-scatter, broadcast,
 * barrier. Every member of a comm must call the same collectives in the same
 * order. Thread-safety: each call is made by the comm's owner thread. */
#ifndef TM_COLLECTIVES_H
#define TM_COLLECTIVES_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/comm.h"

typedef enum { TM_SUM, TM_AVG } tm_reduce_op;

typedef enum {
    TM_ALGO_AUTO,   /* direct for messages up to 16 KiB where it can run
                       (see tm_allreduce_algo_for), else ring */
    TM_ALGO_RING,   /* reduce-scatter + all-gather around the ring */
    TM_ALGO_DIRECT, /* everyone sends to everyone, sums in rank order */
} tm_allreduce_algo;

/* Payload-free mode (a dry run, beside kernels/cost.h's tm_cost_set_dry):
 * while the calling thread's switch is on, its collectives and
 * point-to-point messages send their headers, stream their byte counts
 * through the rings, charge the modeled clock and count their traffic
 * exactly as usual, but neither copy nor sum the payloads, and the links
 * it creates leave their rings untouched: output buffers keep whatever
 * they held. For runs whose values nobody reads. Off by default. */
void tm_comm_set_dry(int on);
int tm_comm_dry(void);

/* Process-wide override; the initial value comes from the environment
 * variable TM_ALLREDUCE (auto|ring|direct), default auto. */
void tm_allreduce_set_algo(tm_allreduce_algo algo);
tm_allreduce_algo tm_allreduce_get_algo(void);
/* Parses "auto", "ring", "direct"; returns 0, or -1 if unknown. */
int tm_allreduce_algo_parse(const char *name, tm_allreduce_algo *out);

/* The algorithm tm_allreduce uses for count floats on comm (ring or direct),
 * under the current override. Its traffic per member: ring 2(n-1)/n x
 * bytes, direct (n-1) x bytes. A forced direct falls back to the ring on
 * groups of more than 8 or for messages larger than half a ring (less two
 * TM_LINK_ALIGN units), which it could not send in one piece. */
tm_allreduce_algo tm_allreduce_algo_for(const tm_comm *comm, size_t count);
/* How many all-reduces on comm ran with algo (TM_ALGO_RING or
 * TM_ALGO_DIRECT; TM_ALGO_AUTO: both together) since comm was created,
 * counted by the algorithm itself as it starts, so a caller sees what
 * really ran. Calls that move nothing (a group of one, count 0) count
 * under neither. */
uint64_t tm_allreduce_runs(const tm_comm *comm, tm_allreduce_algo algo);

/* All functions return TM_OK, TM_EABORTED (another device failed),
 * TM_EDEADLOCK, TM_EINVAL (mismatched call, with a message naming both
 * sides), TM_ENOMEM or TM_EHOSTMEM. Results are bitwise identical on every
 * member. sendbuf == recvbuf means in place. */

/* recvbuf[i] = op over ranks of sendbuf[i], i < count. */
int tm_allreduce(tm_comm *comm, const float *sendbuf, float *recvbuf,
                 size_t count, tm_reduce_op op);
/* recvbuf (size * count) = concatenation of every rank's sendbuf (count),
 * in rank order. In place: sendbuf == recvbuf + rank * count. */
int tm_allgather(tm_comm *comm, const float *sendbuf, float *recvbuf,
                 size_t count);
/* recvbuf (count) = op over ranks of block `rank` of sendbuf (size * count),
 * like MPI_Reduce_scatter_block. In place: recvbuf == sendbuf + rank*count. */
int tm_reduce_scatter(tm_comm *comm, const float *sendbuf, float *recvbuf,
                      size_t count, tm_reduce_op op);
/* Every rank's buf (count) = root's buf. */
int tm_broadcast(tm_comm *comm, float *buf, size_t count, int root);
/* Returns when every member has entered. */
int tm_barrier(tm_comm *comm);

/* Point-to-point bytes to / from group rank `peer`. A send returns once its
 * bytes are in the ring, so it blocks only while the ring is full. */
int tm_send(tm_comm *comm, const void *buf, size_t bytes, int peer);
int tm_recv(tm_comm *comm, void *buf, size_t bytes, int peer);
/* Sends to `dst` and receives from `src` at once, progressing whichever side
 * can move, so two devices exchanging large messages never deadlock. */
int tm_sendrecv(tm_comm *comm, const void *sendbuf, size_t sendbytes, int dst,
                void *recvbuf, size_t recvbytes, int src);

/* One message of an exchange: bytes to or from group rank peer. */
typedef struct {
    void *buf; /* sends only read it */
    size_t bytes;
    int peer;
} tm_p2p;

#define TM_EXCHANGE_MAX 4
/* Up to TM_EXCHANGE_MAX sends and as many receives at once, with any
 * peers (several with one peer go over its link in list order), taking in
 * whatever has arrived between the sends' pieces and while waiting, so a
 * ring of devices that all exchange with both neighbours never deadlocks
 * (Megatron's batched send_forward_backward_recv_forward_backward). The
 * sends go out one after the other, in list order. TM_EINVAL for more
 * messages or a bad peer. */
int tm_exchange(tm_comm *comm, const tm_p2p *send, int n_send, const tm_p2p *recv, int n_recv);

#endif
