/* Helpers shared by the schedule generator (schedule.c) and its checker
 * and simulator (schedule_check.c). Thread-safety: pure functions. */
#ifndef TM_SCHEDULE_INTERNAL_H
#define TM_SCHEDULE_INTERNAL_H

#include "strategies/schedule.h"

/* The schedule's chunks per device: a list built by hand with v left 0
 * has one. */
static inline int tm__sched_v(const tm_schedule *s) { return s->v > 1 ? s->v : 1; }
/* SEND_ACT_RECV_GRAD or SEND_GRAD_RECV_ACT. */
int tm__sched_is_combined(tm_sched_kind k);
/* The message halves of an action as plain kinds with their micro-batches
 * and chunks; returns how many (0 for a compute action). */
int tm__sched_halves(tm_sched_action a, tm_sched_kind kind[2], int mb[2], int chunk[2]);
/* +1: the message goes to or comes from the next stage; -1: the previous. */
int tm__sched_peer_dir(tm_sched_kind k);
/* The device and chunk at the other end of message kind k of chunk `chunk`
 * on device `stage` (of pp devices with v chunks each) into *peer and
 * *peer_chunk; returns 0 when there is none (the message would leave the
 * model's first or last stage). */
int tm__sched_peer(int pp, int v, int stage, int chunk, tm_sched_kind k, int *peer,
                   int *peer_chunk);
/* The kind the peer runs for the same message (SEND_ACT <-> RECV_ACT, ...). */
tm_sched_kind tm__sched_counterpart(tm_sched_kind k);

#endif
