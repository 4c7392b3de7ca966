/* Helpers shared by the schedule generator (schedule.c) and its checker
 * and simulator (schedule_check.c). Thread-safety: pure functions. */
#ifndef TM_SCHEDULE_INTERNAL_H
#define TM_SCHEDULE_INTERNAL_H

#include "strategies/schedule.h"

/* SEND_ACT_RECV_GRAD or SEND_GRAD_RECV_ACT. */
int tm__sched_is_combined(tm_sched_kind k);
/* The message halves of an action as plain kinds with their micro-batches;
 * returns how many (0 for a compute action). */
int tm__sched_halves(tm_sched_action a, tm_sched_kind kind[2], int mb[2]);
/* +1: the message goes to or comes from the next stage; -1: the previous. */
int tm__sched_peer_dir(tm_sched_kind k);
/* The kind the peer runs for the same message (SEND_ACT <-> RECV_ACT, ...). */
tm_sched_kind tm__sched_counterpart(tm_sched_kind k);

#endif
